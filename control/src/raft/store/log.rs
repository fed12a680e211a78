//! The Raft log, the vote and the log pointers ([`RaftLogStorage`]): entries and the commit
//! pointer in the segment files of [`Wal`], the vote and the purged pointer in redb.
//!
//! Writes go to one thread of their own, in order, and the writes that queue up meanwhile are
//! written and fsynced together (group commit). A leader's own entries are acknowledged to
//! openraft when they are queued, not when they are durable: openraft 0.9 replicates an entry
//! only after the leader's append reports it flushed, so waiting would put the leader's fsync
//! and the follower's one after the other in every commit. Raft still needs a majority of
//! durable copies before anything depends on an entry, so nothing does until the leader's copy
//! is durable too:
//! - the state machine applies an entry only then ([`LogDurability`]), and every answer to a
//!   client (a write's result, a linearizable read) waits for the apply;
//! - the commit index the leader sends is never beyond its durable log
//!   (`transport::raft_net`), so no follower applies an entry earlier either;
//! - membership entries are the exception: they take effect when appended, not when applied,
//!   so a leader's membership entries are acknowledged only once durable.
//!
//! A follower's entries are acknowledged only once durable, as usual. A leader that crashes
//! before its write lands loses only entries that nobody has applied or been told about. A
//! leader whose write fails (a full or failing disk) stops writing, and the apply that waits for
//! those entries fails rather than waiting for ever: that stops openraft on the node, which no
//! longer heartbeats, so the others elect a leader (`run::Running::raft_stopped` then ends the
//! process). Without it the node would go on leading, committing nothing, when its last write
//! before the failure was the commit index that openraft had already handed over.
//!
//! This leans on two facts of openraft 0.9.25 (read in its source, not promised by its API): the
//! leader's flush callback feeds only its own replication progress, and followers learn the
//! commit index only from AppendEntries. Re-check both before upgrading openraft.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use openraft::storage::{LogFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::{AnyError, EntryPayload, OptionalSend, StorageIOError};
use redb::{Database, Durability, ReadableDatabase};
use tokio::sync::{Notify, oneshot, watch};

use super::wal::Wal;
use super::{Ctx, INLINE, LogSummary, META, blocking, encode, encode_entry, key, lock, read_meta};
use crate::raft::{Entry, LogId, NodeId, StorageError, TypeConfig, Vote};

/// Bytes of entries queued for the writer before `append` waits for it; also the size at which
/// the writer stops adding queued appends to a group and writes it (`run_writer`).
const MAX_QUEUED_BYTES: usize = 64 * 1024 * 1024;

/// The log store. Cloning is cheap: clones share the files and the writer, and a clone is what
/// openraft gets as its log reader.
#[derive(Clone)]
pub struct LogStore {
    /// `None` when storage runs inline (simulations): every write is then done in the call.
    /// First, so that it is dropped first: the last clone's drop waits for the writer's queued
    /// writes ([`WriterHandle`]'s `Drop`) before this store lets go of the database.
    writer: Option<Arc<WriterHandle>>,
    db: Arc<Database>,
    wal: Arc<Wal>,
    durability: LogDurability,
    /// This node's id once known (0: unknown, so never a leader's early acknowledgement).
    node_id: Arc<AtomicU64>,
    /// The vote last saved or read: the vote this node appends under.
    vote: Arc<Mutex<Option<Vote>>>,
}

/// The end of a log that acknowledges its leader's own entries early
/// ([`LogStore::acknowledge_early`]): the last entry durable on this node, watched. A leader
/// sends no commit index beyond it.
#[derive(Clone)]
pub struct DurableLog(watch::Receiver<Option<LogId>>);

impl DurableLog {
    /// The last durable entry, with everything before it.
    pub fn last(&self) -> Option<LogId> {
        *self.0.borrow()
    }

    /// Waits until more is durable; `false` once the log is closed.
    pub async fn changed(&mut self) -> bool {
        self.0.changed().await.is_ok()
    }
}

/// What the state machine waits on before applying: the log's durable end, how far a leader's
/// entries were acknowledged before they were durable, and whether a log write failed.
#[derive(Clone)]
pub struct LogDurability {
    durable: watch::Receiver<Option<LogId>>,
    early_upto: Arc<AtomicU64>,
    failed: Arc<watch::Sender<Failure>>,
}

impl LogDurability {
    /// Waits until the entries up to `index` that were acknowledged early are durable. Fails
    /// when a log write fails first: those entries then never become durable here, and an
    /// apply that waited for them would hold this node as a leader that commits nothing
    /// (heartbeats go on, so no other node stands for election). The failure stops openraft
    /// on this node instead, and the others elect a leader.
    pub(super) async fn wait(&self, index: u64) -> Result<(), AnyError> {
        let need = index.min(self.early_upto.load(Ordering::Acquire));
        if need == 0 {
            return Ok(());
        }
        let mut durable = self.durable.clone();
        let mut failed = self.failed.subscribe();
        tokio::select! {
            // Durable first: a write that failed after these entries landed does not matter here.
            biased;
            reached = durable.wait_for(|d| d.is_some_and(|d| d.index >= need)) => reached
                .map(|_| ())
                .map_err(|_| AnyError::error("the log writer stopped")),
            failure = failed.wait_for(Option::is_some) => Err(AnyError::error(format!(
                "writing the Raft log failed before entry {need}, acknowledged early as leader, was durable ({})",
                failure.ok().and_then(|f| f.clone()).unwrap_or_default()
            ))),
        }
    }
}

/// The first failed log write's error, once there is one: nothing is written after it.
type Failure = Option<String>;

/// Refuses a write once an earlier one failed.
fn refuse_after_failure(failed: &watch::Sender<Failure>) -> Result<(), AnyError> {
    match &*failed.borrow() {
        Some(reason) => Err(AnyError::error(format!(
            "an earlier log write failed ({reason}); this node stops writing"
        ))),
        None => Ok(()),
    }
}

/// Work for the writer thread, done in the order sent.
enum Job {
    Append {
        entries: Vec<(LogId, Vec<u8>)>,
        bytes: usize,
        /// `None` when already acknowledged (a leader's own entries).
        callback: Option<LogFlushed<TypeConfig>>,
    },
    Committed(Option<LogId>),
    /// Anything else (truncate, purge): run after everything before it is written.
    Run(
        Box<dyn FnOnce() -> Result<(), AnyError> + Send>,
        oneshot::Sender<Result<(), AnyError>>,
    ),
}

/// The sending end of the writer thread, owned only through the `Arc` in [`LogStore`] (the
/// sender is never cloned, and no job holds a store).
struct WriterHandle {
    /// `None` only once dropped: dropping it closes the channel, which ends the thread.
    tx: Option<mpsc::Sender<Job>>,
    thread: Option<std::thread::JoinHandle<()>>,
    backlog: Arc<Backlog>,
    /// The first failed write's error: nothing is written after it.
    failed: Arc<watch::Sender<Failure>>,
}

/// Closes the channel and waits for the writer thread to finish what is queued, so that once
/// the last store clone is gone (and with it the database) no log write is still to come: a
/// store opened again over the same directory never races the old one's writes. This blocks the
/// dropping thread (a tokio worker, say) until the queue is written: normally little or nothing
/// is queued by then (at worst `MAX_QUEUED_BYTES` and a job in progress).
impl Drop for WriterHandle {
    fn drop(&mut self) {
        drop(self.tx.take());
        let Some(thread) = self.thread.take() else {
            return;
        };
        // Joining itself would deadlock. It cannot happen (jobs hold no store), but is cheap to
        // rule out.
        if thread.thread().id() == std::thread::current().id() {
            return;
        }
        if thread.join().is_err() {
            tracing::error!("the Raft log writer thread panicked");
        }
    }
}

impl WriterHandle {
    fn start(wal: Arc<Wal>, failed: Arc<watch::Sender<Failure>>) -> Result<WriterHandle, AnyError> {
        let (tx, rx) = mpsc::channel();
        let backlog = Arc::new(Backlog::default());
        let thread = std::thread::Builder::new()
            .name("raft-log-writer".into())
            .spawn({
                let backlog = backlog.clone();
                let failed = failed.clone();
                move || run_writer(&wal, &rx, &backlog, &failed)
            })
            .ctx("starting the log writer thread")?;
        Ok(WriterHandle {
            tx: Some(tx),
            thread: Some(thread),
            backlog,
            failed,
        })
    }

    fn send(&self, job: Job) -> Result<(), AnyError> {
        refuse_after_failure(&self.failed)?;
        self.tx
            .as_ref()
            .ok_or_else(|| AnyError::error("the log writer stopped"))?
            .send(job)
            .map_err(|_| AnyError::error("the log writer stopped"))
    }

    /// Runs `f` on the writer, after everything queued before it.
    async fn run(
        &self,
        f: impl FnOnce() -> Result<(), AnyError> + Send + 'static,
    ) -> Result<(), AnyError> {
        let (tx, rx) = oneshot::channel();
        self.send(Job::Run(Box::new(f), tx))?;
        rx.await
            .map_err(|_| AnyError::error("the log writer stopped"))?
    }
}

/// Bytes of entries queued for the writer thread and not yet written.
#[derive(Default)]
struct Backlog {
    bytes: AtomicUsize,
    /// Woken whenever bytes leave the queue.
    drained: Notify,
}

impl Backlog {
    fn add(&self, bytes: usize) {
        self.bytes.fetch_add(bytes, Ordering::AcqRel);
    }

    fn remove(&self, bytes: usize) {
        self.bytes.fetch_sub(bytes, Ordering::AcqRel);
        self.drained.notify_waiters();
    }

    /// Waits until at most `max` bytes are queued.
    async fn wait_below(&self, max: usize) {
        loop {
            // Registered before the check, so a drain between the two is not missed.
            let drained = self.drained.notified();
            if self.bytes.load(Ordering::Acquire) <= max {
                return;
            }
            drained.await;
        }
    }
}

/// The writer thread: takes every job queued, writes consecutive appends (and the latest commit
/// pointer) with one write and one fsync, and runs other jobs in between, in order.
fn run_writer(
    wal: &Wal,
    rx: &mpsc::Receiver<Job>,
    backlog: &Backlog,
    failed: &watch::Sender<Failure>,
) {
    #[derive(Default)]
    struct Group {
        entries: Vec<(LogId, Vec<u8>)>,
        bytes: usize,
        committed: Option<Option<LogId>>,
        callbacks: Vec<LogFlushed<TypeConfig>>,
    }
    let flush = |group: &mut Group| {
        let group = std::mem::take(group);
        let result = refuse_after_failure(failed)
            .and_then(|()| wal.append_with(group.committed, &group.entries));
        backlog.remove(group.bytes);
        if let Err(e) = &result {
            // Entries may have been acknowledged before this write: nothing may go on. Later
            // refusals only repeat the first failure, which stays the one reported.
            failed.send_if_modified(|first| {
                if first.is_some() {
                    return false;
                }
                tracing::error!(error = %e, "writing the Raft log failed; this node stops writing");
                *first = Some(e.to_string());
                true
            });
        }
        for callback in group.callbacks {
            callback.log_io_completed(
                result
                    .as_ref()
                    .map(|_| ())
                    .map_err(|e| std::io::Error::other(e.to_string())),
            );
        }
    };
    let mut group = Group::default();
    while let Ok(first) = rx.recv() {
        let mut next = Some(first);
        while let Some(job) = next {
            match job {
                Job::Append {
                    entries,
                    bytes,
                    callback,
                } => {
                    group.entries.extend(entries);
                    group.bytes += bytes;
                    group.callbacks.extend(callback);
                }
                Job::Committed(c) => group.committed = Some(c),
                Job::Run(f, reply) => {
                    flush(&mut group);
                    let result = refuse_after_failure(failed).and_then(|()| f());
                    let _ = reply.send(result);
                }
            }
            next = if group.bytes < MAX_QUEUED_BYTES {
                rx.try_recv().ok()
            } else {
                None
            };
        }
        flush(&mut group);
    }
}

impl LogStore {
    pub(super) fn new(db: Arc<Database>, wal: Wal) -> Result<LogStore, AnyError> {
        let wal = Arc::new(wal);
        let failed = Arc::new(watch::Sender::new(None));
        let writer = if INLINE.with(std::cell::Cell::get) {
            None
        } else {
            Some(Arc::new(WriterHandle::start(wal.clone(), failed.clone())?))
        };
        Ok(LogStore {
            db,
            durability: LogDurability {
                durable: wal.durable(),
                early_upto: Arc::new(AtomicU64::new(0)),
                failed,
            },
            wal,
            writer,
            node_id: Arc::new(AtomicU64::new(0)),
            vote: Arc::new(Mutex::new(None)),
        })
    }

    /// Tells the store that it is node `id`'s, so that while `id` leads, its own entries are
    /// acknowledged before they are durable (see the module docs). That is safe only if no
    /// follower hears of a commit beyond the leader's durable log: the returned [`DurableLog`]
    /// is for the network that clamps it (`QuicRaftNetwork::with_durable_log`).
    #[must_use = "without the DurableLog in the network, followers may apply entries the leader can still lose"]
    pub fn acknowledge_early(&self, id: NodeId) -> DurableLog {
        self.node_id.store(id, Ordering::Release);
        DurableLog(self.durability.durable.clone())
    }

    pub(super) fn durability(&self) -> LogDurability {
        self.durability.clone()
    }

    /// Whether entries appended now are this node's own, as an established leader.
    fn leading(&self) -> bool {
        let me = self.node_id.load(Ordering::Acquire);
        let vote = lock(&self.vote);
        me != 0 && vote.is_some_and(|v| v.committed && v.leader_id.node_id == me)
    }

    /// Reads the vote and the log's ends for the start-up log line (replay has already checked
    /// that the log has no hole and starts after the purged prefix).
    pub(super) fn check(&self) -> Result<LogSummary, AnyError> {
        let txn = self.db.begin_read().ctx("reading the log metadata")?;
        let meta = txn.open_table(META).ctx("reading the log metadata")?;
        let vote: Option<Vote> = read_meta(&meta, key::VOTE)?;
        let last_purged: Option<LogId> = read_meta(&meta, key::LAST_PURGED)?;
        Ok(LogSummary {
            vote,
            committed: self.wal.committed(),
            last_purged,
            entries: self.wal.written_len(),
        })
    }

    /// Blocks the writer thread (after what is queued) until the returned sender is used or
    /// dropped, so that tests can look at entries between their append and their write.
    #[cfg(test)]
    pub(crate) fn hold_writer(&self) -> std::sync::mpsc::Sender<()> {
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let (reply, _) = oneshot::channel();
        if let Some(w) = &self.writer {
            let _ = w.send(Job::Run(
                Box::new(move || {
                    let _ = rx.recv();
                    Ok(())
                }),
                reply,
            ));
        }
        tx
    }

    /// Makes every log write from now on fail, as a failing disk would.
    #[cfg(test)]
    pub(crate) fn fail_writes(&self) {
        self.wal.fail_writes();
    }

    /// Runs a write on the writer thread after everything queued, or inline.
    async fn run_write(
        &self,
        f: impl FnOnce() -> Result<(), AnyError> + Send + 'static,
    ) -> Result<(), AnyError> {
        match &self.writer {
            Some(w) => w.run(f).await,
            None => f(),
        }
    }

    async fn read_meta_record<T: serde::de::DeserializeOwned + Send + 'static>(
        &self,
        name: &'static str,
    ) -> Result<Option<T>, AnyError> {
        let db = self.db.clone();
        blocking(move || {
            let txn = db.begin_read().ctx("starting a read transaction")?;
            let meta = txn.open_table(META).ctx("opening the meta table")?;
            read_meta(&meta, name)
        })
        .await
    }

    /// Writes one `meta` record durably (fsync) on the blocking pool.
    async fn write_meta_record(&self, name: &'static str, bytes: Vec<u8>) -> Result<(), AnyError> {
        let db = self.db.clone();
        blocking(move || {
            let mut txn = db.begin_write().ctx("starting a write transaction")?;
            txn.set_durability(Durability::Immediate)
                .ctx("setting the transaction's durability")?;
            {
                let mut meta = txn.open_table(META).ctx("opening the meta table")?;
                meta.insert(name, bytes.as_slice())
                    .ctx(format!("writing {name}"))?;
            }
            txn.commit().ctx(format!("committing {name}"))
        })
        .await
    }
}

/// `range` as bounds for [`Wal::read`], with an included start, or `None` when it is empty.
fn index_bounds(range: &impl RangeBounds<u64>) -> Option<(Bound<u64>, Bound<u64>)> {
    let start = match range.start_bound() {
        Bound::Included(&s) => s,
        Bound::Excluded(&s) => s.checked_add(1)?,
        Bound::Unbounded => 0,
    };
    let end = match range.end_bound() {
        Bound::Included(&e) if e < start => return None,
        Bound::Excluded(&e) if e <= start => return None,
        Bound::Included(&e) => Bound::Included(e),
        Bound::Excluded(&e) => Bound::Excluded(e),
        Bound::Unbounded => Bound::Unbounded,
    };
    Some((Bound::Included(start), end))
}

fn io(e: StorageIOError<u64>) -> StorageError {
    StorageError::IO { source: e }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let Some(bounds) = index_bounds(&range) else {
            return Ok(Vec::new());
        };
        // Inline, not on the blocking pool: the leader reads each new entry back to replicate
        // it, the file pages are in the page cache, and a hop to another thread would cost
        // more than the read.
        self.wal
            .read(bounds)
            .map_err(|e| io(StorageIOError::read_logs(e)))
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last_purged: Option<LogId> = self
            .read_meta_record(key::LAST_PURGED)
            .await
            .map_err(|e| io(StorageIOError::read_logs(e)))?;
        let last = self.wal.last();
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id: last.or(last_purged),
        })
    }

    async fn get_log_reader(&mut self) -> LogStore {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        let bytes = encode(vote).map_err(|e| io(StorageIOError::write_vote(e)))?;
        // A vote must survive a crash, or this node could vote twice in one term.
        self.write_meta_record(key::VOTE, bytes)
            .await
            .map_err(|e| io(StorageIOError::write_vote(e)))?;
        *lock(&self.vote) = Some(*vote);
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        let vote: Option<Vote> = self
            .read_meta_record(key::VOTE)
            .await
            .map_err(|e| io(StorageIOError::read_vote(e)))?;
        // Reloaded as a plain vote, never as an established leader: openraft 0.9 would let a
        // node that restarts with its own committed vote resume leading its old term at once,
        // and such a leader serves linearizable reads from the saved commit pointer, which is
        // not fsynced (see `save_committed`). As a follower it must win a new term first, and
        // the blank entry that opens that term commits everything acknowledged before. Safe for
        // Raft: the node still voted for that leader in that term, so it cannot vote twice.
        let vote = vote.map(|v| Vote::new(v.leader_id.term, v.leader_id.node_id));
        *lock(&self.vote) = vote;
        Ok(vote)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        // Not fsynced: the next append's fsync makes it durable. openraft 0.9 awaits this
        // between commit and apply, so an fsync here would be a second one in every write's
        // path; it is queued and goes out with the next write. A pointer lost in a
        // crash only means that fewer entries are re-applied at start-up; the rest are applied
        // once the commit index is learned again. The one reader that needed it durable, a
        // leader resuming its term after a restart, no longer exists (see `read_vote`).
        let result = match &self.writer {
            Some(w) => w.send(Job::Committed(committed)),
            None => self.wal.save_committed(committed),
        };
        result.map_err(|e| io(StorageIOError::write(e)))
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self.wal.committed())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        let mut encoded = Vec::with_capacity(entries.len());
        let mut bytes = 0;
        for entry in &entries {
            match encode_entry(entry) {
                Ok(b) => {
                    bytes += b.len();
                    encoded.push((entry.log_id, b));
                }
                Err(e) => {
                    callback.log_io_completed(Err(std::io::Error::other(e.to_string())));
                    return Err(io(StorageIOError::write_log_entry(entry.log_id, e)));
                }
            }
        }
        let Some(last) = entries.last().map(|e| e.log_id) else {
            callback.log_io_completed(Ok(()));
            return Ok(());
        };
        let Some(writer) = &self.writer else {
            // Inline: written and fsynced here, then acknowledged.
            let result = self.wal.append(&encoded);
            callback.log_io_completed(
                result
                    .as_ref()
                    .map(|_| ())
                    .map_err(|e| std::io::Error::other(e.to_string())),
            );
            return result.map_err(|e| io(StorageIOError::write_logs(e)));
        };
        writer.backlog.wait_below(MAX_QUEUED_BYTES).await;
        let first = entries[0].log_id.index;
        // Membership entries change who forms a majority from the moment they are appended, so
        // a leader counts its own copy of one only once it is durable.
        let early = self.leading()
            && !entries
                .iter()
                .any(|e| matches!(e.payload, EntryPayload::Membership(_)));
        // Readable from now on, for the replication that follows this call.
        self.wal.add_pending(entries);
        let callback = if early {
            // Before the write: see the module docs for why this is safe.
            self.durability
                .early_upto
                .fetch_max(last.index, Ordering::AcqRel);
            callback.log_io_completed(Ok(()));
            None
        } else {
            Some(callback)
        };
        writer.backlog.add(bytes);
        let sent = writer.send(Job::Append {
            entries: encoded,
            bytes,
            callback,
        });
        if let Err(e) = sent {
            writer.backlog.remove(bytes);
            self.wal.drop_pending(first);
            return Err(io(StorageIOError::write_logs(e)));
        }
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        tracing::debug!(%log_id, "truncating the log");
        let wal = self.wal.clone();
        self.run_write(move || wal.truncate(log_id.index))
            .await
            .map_err(|e| io(StorageIOError::write_logs(e)))
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        tracing::debug!(%log_id, "purging the log");
        let db = self.db.clone();
        let wal = self.wal.clone();
        self.run_write(move || {
            // The purged pointer is durable before any segment goes, so a restart never finds
            // the log starting later than it says.
            let txn = db.begin_write().ctx("starting a write transaction")?;
            {
                let mut meta = txn.open_table(META).ctx("opening the meta table")?;
                let previous: Option<LogId> = read_meta(&meta, key::LAST_PURGED)?;
                // Never move the purged pointer backwards.
                if previous.is_none_or(|p| p < log_id) {
                    let bytes = encode(&log_id)?;
                    meta.insert(key::LAST_PURGED, bytes.as_slice())
                        .ctx("writing the purged log id")?;
                }
            }
            txn.commit().ctx("committing the purged log id")?;
            wal.purge(log_id.index)
        })
        .await
        .map_err(|e| io(StorageIOError::write_logs(e)))
    }
}

#[cfg(test)]
mod backlog_tests {
    use super::Backlog;

    #[tokio::test]
    async fn an_append_over_the_limit_waits_until_the_writer_drains_below_it() {
        let backlog = std::sync::Arc::new(Backlog::default());
        backlog.add(100);
        let waiting = tokio::spawn({
            let backlog = backlog.clone();
            async move { backlog.wait_below(50).await }
        });
        tokio::task::yield_now().await;
        backlog.remove(40);
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "went on with 60 bytes queued");
        backlog.remove(10);
        tokio::time::timeout(std::time::Duration::from_secs(10), waiting)
            .await
            .expect("still waiting with 50 bytes queued")
            .unwrap();
        backlog.wait_below(50).await;
    }
}
