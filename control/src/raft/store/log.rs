//! The Raft log, the vote and the log pointers ([`RaftLogStorage`]).

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::{AnyError, OptionalSend, StorageIOError};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, WriteTransaction};

use super::{
    Ctx, LOG, LogSummary, META, blocking, decode_entry, encode, encode_entry, key, log_len,
    read_meta,
};
use crate::raft::{Entry, LogId, StorageError, TypeConfig, Vote};

/// The log store. Cloning is cheap: clones share the database, and a clone is what openraft gets
/// as its log reader (reads run in their own MVCC read transactions).
#[derive(Clone)]
pub struct LogStore {
    db: Arc<Database>,
}

impl LogStore {
    pub(super) fn new(db: Arc<Database>) -> LogStore {
        LogStore { db }
    }

    /// Reads and decodes every pointer and both ends of the log, and checks that the log has no
    /// hole and starts after the purged prefix.
    pub(super) fn check(&self) -> Result<LogSummary, AnyError> {
        let txn = self.db.begin_read().ctx("reading the log")?;
        let meta = txn.open_table(META).ctx("reading the log metadata")?;
        let vote: Option<Vote> = read_meta(&meta, key::VOTE)?;
        let committed: Option<Option<LogId>> = read_meta(&meta, key::COMMITTED)?;
        let last_purged: Option<LogId> = read_meta(&meta, key::LAST_PURGED)?;
        let log = txn.open_table(LOG).ctx("reading the log")?;
        let entries = log_len(&log)?;
        let first = match log.first().ctx("reading the first log entry")? {
            Some((k, v)) => Some(decode_entry(k.value(), v.value())?.log_id),
            None => None,
        };
        let last = match log.last().ctx("reading the last log entry")? {
            Some((k, v)) => Some(decode_entry(k.value(), v.value())?.log_id),
            None => None,
        };
        if let (Some(first), Some(last)) = (first, last)
            && last.index - first.index + 1 != entries
        {
            return Err(AnyError::error(format!(
                "the log has a hole: {entries} entries from index {} to {}",
                first.index, last.index
            )));
        }
        if let (Some(first), Some(purged)) = (first, last_purged)
            && first.index <= purged.index
        {
            return Err(AnyError::error(format!(
                "log entry {first} is at or before the purged log id {purged}"
            )));
        }
        Ok(LogSummary {
            vote,
            committed: committed.flatten(),
            last_purged,
            entries,
        })
    }

    /// Runs one durable write transaction on the blocking pool.
    async fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&WriteTransaction) -> Result<T, AnyError> + Send + 'static,
    ) -> Result<T, AnyError> {
        self.write_with(Durability::Immediate, f).await
    }

    /// Runs one write transaction with the given durability on the blocking pool.
    async fn write_with<T: Send + 'static>(
        &self,
        durability: Durability,
        f: impl FnOnce(&WriteTransaction) -> Result<T, AnyError> + Send + 'static,
    ) -> Result<T, AnyError> {
        let db = self.db.clone();
        blocking(move || {
            let mut txn = db.begin_write().ctx("starting a write transaction")?;
            txn.set_durability(durability)
                .ctx("setting the transaction's durability")?;
            let out = f(&txn)?;
            txn.commit().ctx("committing a write transaction")?;
            Ok(out)
        })
        .await
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

    async fn write_meta_record(
        &self,
        name: &'static str,
        bytes: Vec<u8>,
        durability: Durability,
    ) -> Result<(), AnyError> {
        self.write_with(durability, move |txn| {
            let mut meta = txn.open_table(META).ctx("opening the meta table")?;
            meta.insert(name, bytes.as_slice())
                .ctx(format!("writing {name}"))?;
            Ok(())
        })
        .await
    }
}

/// `[start, end)` as redb bounds, or `None` when the range is empty.
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
        let db = self.db.clone();
        blocking(move || {
            let txn = db.begin_read().ctx("starting a read transaction")?;
            let log = txn.open_table(LOG).ctx("opening the log table")?;
            let mut entries = Vec::new();
            for item in log.range(bounds).ctx("reading log entries")? {
                let (k, v) = item.ctx("reading a log entry")?;
                entries.push(decode_entry(k.value(), v.value())?);
            }
            Ok(entries)
        })
        .await
        .map_err(|e| io(StorageIOError::read_logs(e)))
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let db = self.db.clone();
        blocking(move || {
            let txn = db.begin_read().ctx("starting a read transaction")?;
            let meta = txn.open_table(META).ctx("opening the meta table")?;
            let last_purged: Option<LogId> = read_meta(&meta, key::LAST_PURGED)?;
            let log = txn.open_table(LOG).ctx("opening the log table")?;
            let last = match log.last().ctx("reading the last log entry")? {
                Some((k, v)) => Some(decode_entry(k.value(), v.value())?.log_id),
                None => last_purged,
            };
            Ok(LogState {
                last_purged_log_id: last_purged,
                last_log_id: last,
            })
        })
        .await
        .map_err(|e| io(StorageIOError::read_logs(e)))
    }

    async fn get_log_reader(&mut self) -> LogStore {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        let bytes = encode(vote).map_err(|e| io(StorageIOError::write_vote(e)))?;
        // A vote must survive a crash, or this node could vote twice in one term.
        self.write_meta_record(key::VOTE, bytes, Durability::Immediate)
            .await
            .map_err(|e| io(StorageIOError::write_vote(e)))
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        self.read_meta_record(key::VOTE)
            .await
            .map_err(|e| io(StorageIOError::read_vote(e)))
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        // Durable (fsync), although openraft 0.9 calls the commit pointer optional: a leader
        // that restarts resumes its old term, and it serves linearizable reads from the later of
        // its term's first entry and this saved pointer. Were a crash to lose the pointer, that
        // leader could answer a read without a write it had acknowledged (the end-to-end test
        // `linearizable_reads_after_a_crash_of_every_node_see_every_acknowledged_write` caught
        // exactly that). The price is one more fsync per commit on each node.
        let bytes = encode(&committed).map_err(|e| io(StorageIOError::write(e)))?;
        self.write_meta_record(key::COMMITTED, bytes, Durability::Immediate)
            .await
            .map_err(|e| io(StorageIOError::write(e)))
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        let committed: Option<Option<LogId>> = self
            .read_meta_record(key::COMMITTED)
            .await
            .map_err(|e| io(StorageIOError::read(e)))?;
        Ok(committed.flatten())
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
        let mut encoded = Vec::new();
        for entry in entries {
            match encode_entry(&entry) {
                Ok(bytes) => encoded.push((entry.log_id.index, bytes)),
                Err(e) => {
                    callback.log_io_completed(Err(std::io::Error::other(e.to_string())));
                    return Err(io(StorageIOError::write_log_entry(entry.log_id, e)));
                }
            }
        }
        // The callback fires inside the task, right after the durable commit: the entries are on
        // disk (and readable) by then, even if this future is dropped meanwhile.
        let db = self.db.clone();
        blocking(move || {
            let written = (|| {
                let txn = db.begin_write().ctx("starting a write transaction")?;
                {
                    let mut log = txn.open_table(LOG).ctx("opening the log table")?;
                    for (index, bytes) in &encoded {
                        log.insert(*index, bytes.as_slice())
                            .ctx(format!("writing log entry {index}"))?;
                    }
                }
                txn.commit().ctx("committing appended log entries")
            })();
            match written {
                Ok(()) => {
                    callback.log_io_completed(Ok(()));
                    Ok(())
                }
                Err(e) => {
                    callback.log_io_completed(Err(std::io::Error::other(e.to_string())));
                    Err(e)
                }
            }
        })
        .await
        .map_err(|e| io(StorageIOError::write_logs(e)))
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        tracing::debug!(%log_id, "truncating the log");
        self.write(move |txn| {
            let mut log = txn.open_table(LOG).ctx("opening the log table")?;
            log.retain_in(log_id.index.., |_, _| false)
                .ctx(format!("deleting log entries from {}", log_id.index))
        })
        .await
        .map_err(|e| io(StorageIOError::write_logs(e)))
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        tracing::debug!(%log_id, "purging the log");
        self.write(move |txn| {
            let mut meta = txn.open_table(META).ctx("opening the meta table")?;
            let previous: Option<LogId> = read_meta(&meta, key::LAST_PURGED)?;
            // Never move the purged pointer backwards.
            if previous.is_none_or(|p| p < log_id) {
                let bytes = encode(&log_id)?;
                meta.insert(key::LAST_PURGED, bytes.as_slice())
                    .ctx("writing the purged log id")?;
            }
            let mut log = txn.open_table(LOG).ctx("opening the log table")?;
            log.retain_in(..=log_id.index, |_, _| false)
                .ctx(format!("deleting log entries up to {}", log_id.index))
        })
        .await
        .map_err(|e| io(StorageIOError::write_logs(e)))
    }
}
