//! The state machine ([`RaftStateMachine`]), its snapshots, and a read handle for the rest of the
//! control plane.

use std::io::Cursor;
use std::sync::Arc;

use arc_swap::ArcSwap;
use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{AnyError, EntryPayload, OptionalSend, RaftSnapshotBuilder, StorageIOError};
use redb::{Database, ReadableDatabase, ReadableTable};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::{
    Ctx, Image, LogDurability, MAX_RECORD_BYTES, SM, blocking, decode, decode_image, encode,
    encode_image, key,
};
use crate::raft::{Entry, LogId, SnapshotMeta, StorageError, StoredMembership, TypeConfig};
use crate::state::{Applied, State};

/// The state machine: the in-memory [`State`] (published to readers through an [`ArcSwap`]),
/// the last applied log id and the last applied membership. Nothing of it is written when a
/// batch is applied: it is persisted as snapshots only, and rebuilt at start-up from the stored
/// snapshot and the log (see the module docs of [`super`]).
pub struct StateMachineStore {
    db: Arc<Database>,
    /// A leader's entries may be acknowledged before they are durable; none is applied before.
    log: LogDurability,
    state: Arc<ArcSwap<State>>,
    last_applied: Option<LogId>,
    membership: StoredMembership,
    applied: watch::Sender<u64>,
}

/// A cheap, cloneable, concurrent read handle on the applied state.
///
/// The state is published before the revision is announced, so once [`Self::applied`] (or the
/// watch) says `R`, [`Self::read`] sees a state at revision `R` or later.
#[derive(Clone)]
pub struct StateReader {
    state: Arc<ArcSwap<State>>,
    applied: watch::Receiver<u64>,
}

/// The state machine was dropped (the Raft node shut down) while waiting on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the state machine was shut down")]
pub struct StoreClosed;

impl StateReader {
    /// Runs `f` on the current state. Wait-free; `f` should not hold on for long, since the
    /// state it sees may be replaced meanwhile (it stays valid, just older).
    pub fn read<R>(&self, f: impl FnOnce(&State) -> R) -> R {
        f(&self.state.load())
    }

    /// The current state, to keep (e.g. across an await).
    pub fn load(&self) -> Arc<State> {
        self.state.load_full()
    }

    /// The revision (log index) of the last applied entry; 0 before any.
    pub fn applied(&self) -> u64 {
        *self.applied.borrow()
    }

    /// A receiver of the applied revision, e.g. to push changes to edges.
    pub fn watch(&self) -> watch::Receiver<u64> {
        self.applied.clone()
    }

    /// Waits until the applied revision is at least `revision`, and returns it.
    pub async fn wait_applied(&self, revision: u64) -> Result<u64, StoreClosed> {
        let mut rx = self.applied.clone();
        let seen = rx
            .wait_for(|applied| *applied >= revision)
            .await
            .map_err(|_| StoreClosed)?;
        Ok(*seen)
    }
}

/// The current snapshot's metadata, stored beside its data (the image bytes).
#[derive(Serialize, Deserialize)]
enum SnapshotRecord {
    V1(SnapshotMeta),
}

impl StateMachineStore {
    /// A state machine at the stored snapshot, or empty without one.
    pub(super) fn new(
        db: Arc<Database>,
        image: Option<Image>,
        log: LogDurability,
    ) -> StateMachineStore {
        let image = image.unwrap_or_else(|| Image {
            last_applied: None,
            membership: StoredMembership::default(),
            state: State::default(),
        });
        let revision = image.last_applied.map_or(0, |l| l.index);
        StateMachineStore {
            db,
            log,
            state: Arc::new(ArcSwap::from_pointee(image.state)),
            last_applied: image.last_applied,
            membership: image.membership,
            applied: watch::Sender::new(revision),
        }
    }

    /// A read handle on the applied state, for the admin API and edge sync.
    pub fn reader(&self) -> StateReader {
        StateReader {
            state: self.state.clone(),
            applied: self.applied.subscribe(),
        }
    }

    /// The last applied log id.
    pub fn last_applied(&self) -> Option<LogId> {
        self.last_applied
    }

    /// Publishes a new applied state: readers first, then the revision watch.
    fn publish(
        &mut self,
        state: Arc<State>,
        last_applied: Option<LogId>,
        membership: StoredMembership,
    ) {
        self.state.store(state);
        self.last_applied = last_applied;
        self.membership = membership;
        self.applied
            .send_replace(last_applied.map_or(0, |l| l.index));
    }
}

fn io(e: StorageIOError<u64>) -> StorageError {
    StorageError::IO { source: e }
}

/// Builds snapshots from a view of the state taken when the builder was made.
pub struct SnapshotBuilder {
    db: Arc<Database>,
    state: Arc<State>,
    last_applied: Option<LogId>,
    membership: StoredMembership,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let db = self.db.clone();
        let state = self.state.clone();
        let last_applied = self.last_applied;
        let membership = self.membership.clone();
        let (meta, data) = blocking(move || {
            let data = encode_image(&last_applied, &membership, &state)?;
            let txn = db.begin_write().ctx("starting a write transaction")?;
            let meta = {
                let mut sm = txn.open_table(SM).ctx("opening the state machine table")?;
                let seq = match sm
                    .get(key::SNAPSHOT_SEQ)
                    .ctx("reading the snapshot counter")?
                {
                    Some(v) => decode::<u64, MAX_RECORD_BYTES>(v.value(), "the snapshot counter")?,
                    None => 0,
                } + 1;
                let seq_bytes = encode(&seq)?;
                sm.insert(key::SNAPSHOT_SEQ, seq_bytes.as_slice())
                    .ctx("writing the snapshot counter")?;
                let snapshot_id = match last_applied {
                    Some(l) => format!("{}-{}-{seq}", l.leader_id, l.index),
                    None => format!("--{seq}"),
                };
                let meta = SnapshotMeta {
                    last_log_id: last_applied,
                    last_membership: membership,
                    snapshot_id,
                };
                // A snapshot installed meanwhile may be newer than this view: keep the newest.
                let current = read_snapshot_meta(&sm)?;
                if current.is_none_or(|c| c.last_log_id <= last_applied) {
                    store_snapshot(&mut sm, &meta, &data)?;
                }
                meta
            };
            txn.commit().ctx("committing the snapshot")?;
            Ok((meta, data))
        })
        .await
        .map_err(|e| io(StorageIOError::write_snapshot(None, e)))?;
        tracing::info!(snapshot_id = %meta.snapshot_id, last_log_id = ?meta.last_log_id, bytes = data.len(), "built a snapshot");
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

fn read_snapshot_meta(
    sm: &impl ReadableTable<&'static str, &'static [u8]>,
) -> Result<Option<SnapshotMeta>, AnyError> {
    match sm
        .get(key::SNAPSHOT_META)
        .ctx("reading the snapshot metadata")?
    {
        Some(v) => {
            let SnapshotRecord::V1(meta) =
                decode::<SnapshotRecord, MAX_RECORD_BYTES>(v.value(), "the snapshot metadata")?;
            Ok(Some(meta))
        }
        None => Ok(None),
    }
}

/// Loads the stored snapshot as the state machine to start from, checking that its content
/// matches its metadata.
pub(super) fn load_snapshot(db: &Database) -> Result<Option<Image>, AnyError> {
    let txn = db.begin_read().ctx("reading the snapshot")?;
    let sm = txn.open_table(SM).ctx("reading the snapshot")?;
    let Some(meta) = read_snapshot_meta(&sm)? else {
        return Ok(None);
    };
    let data = sm
        .get(key::SNAPSHOT_DATA)
        .ctx("reading the snapshot data")?
        .ok_or_else(|| AnyError::error("the snapshot metadata has no data"))?;
    let image = decode_image(data.value())?;
    check_image(&image, &meta)?;
    Ok(Some(image))
}

/// A snapshot's content must be what its metadata says it is.
fn check_image(image: &Image, meta: &SnapshotMeta) -> Result<(), AnyError> {
    if image.last_applied != meta.last_log_id || image.membership != meta.last_membership {
        return Err(AnyError::error(format!(
            "the snapshot's content (last applied {:?}, membership {:?}) does not match its metadata (last log id {:?}, membership {:?})",
            image.last_applied, image.membership, meta.last_log_id, meta.last_membership
        )));
    }
    Ok(())
}

fn store_snapshot(
    sm: &mut redb::Table<&'static str, &'static [u8]>,
    meta: &SnapshotMeta,
    data: &[u8],
) -> Result<(), AnyError> {
    let record = encode(&SnapshotRecord::V1(meta.clone()))?;
    sm.insert(key::SNAPSHOT_META, record.as_slice())
        .ctx("writing the snapshot metadata")?;
    sm.insert(key::SNAPSHOT_DATA, data)
        .ctx("writing the snapshot data")?;
    Ok(())
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        Ok((self.last_applied, self.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Applied>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        if entries.is_empty() {
            return Ok(Vec::new());
        }
        if let Some(last) = entries.last() {
            self.log
                .wait(last.log_id.index)
                .await
                .map_err(|e| io(StorageIOError::write_state_machine(e)))?;
        }
        // In memory only: the entries are durable in the log, which is replayed after a restart.
        // There is no I/O here, but `State::apply` validates what a command carries, which for
        // a whole document takes time in proportion to its size, so the batch runs on the
        // blocking pool rather than hold up the runtime's worker (Raft heartbeats, the admin
        // API) meanwhile.
        let mut state = self.state.load_full();
        let mut last_applied = self.last_applied;
        let mut membership = self.membership.clone();
        let (state, last_applied, membership, replies) = blocking(move || {
            // Readers hold the published state; this batch works on a copy of it.
            let s = Arc::make_mut(&mut state);
            let mut replies = Vec::with_capacity(entries.len());
            for entry in entries {
                let index = entry.log_id.index;
                last_applied = Some(entry.log_id);
                match entry.payload {
                    EntryPayload::Normal(proposal) => replies.push(s.apply(index, &proposal)),
                    EntryPayload::Blank => {
                        s.revision = index;
                        replies.push(Applied::Done { revision: index });
                    }
                    EntryPayload::Membership(m) => {
                        membership = StoredMembership::new(Some(entry.log_id), m);
                        s.revision = index;
                        replies.push(Applied::Done { revision: index });
                    }
                }
            }
            Ok((state, last_applied, membership, replies))
        })
        .await
        .map_err(|e| io(StorageIOError::write_state_machine(e)))?;
        self.publish(state, last_applied, membership);
        Ok(replies)
    }

    async fn get_snapshot_builder(&mut self) -> SnapshotBuilder {
        SnapshotBuilder {
            db: self.db.clone(),
            state: self.state.load_full(),
            last_applied: self.last_applied,
            membership: self.membership.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let data = snapshot.into_inner();
        let db = self.db.clone();
        let meta = meta.clone();
        let signature = meta.signature();
        let image = blocking(move || {
            // Validate fully before touching anything.
            let image = decode_image(&data)?;
            check_image(&image, &meta)?;
            // Stored durably: after a restart the state machine starts from this snapshot.
            let txn = db.begin_write().ctx("starting a write transaction")?;
            {
                let mut sm = txn.open_table(SM).ctx("opening the state machine table")?;
                store_snapshot(&mut sm, &meta, &data)?;
            }
            txn.commit().ctx("committing the installed snapshot")?;
            Ok(image)
        })
        .await
        .map_err(|e| io(StorageIOError::read_snapshot(Some(signature.clone()), e)))?;
        tracing::info!(snapshot = %signature.snapshot_id, last_log_id = ?image.last_applied, "installed a snapshot");
        self.publish(Arc::new(image.state), image.last_applied, image.membership);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        let db = self.db.clone();
        let current = blocking(move || {
            let txn = db.begin_read().ctx("starting a read transaction")?;
            let sm = txn.open_table(SM).ctx("opening the state machine table")?;
            let Some(meta) = read_snapshot_meta(&sm)? else {
                return Ok(None);
            };
            let data = sm
                .get(key::SNAPSHOT_DATA)
                .ctx("reading the snapshot data")?
                .ok_or_else(|| AnyError::error("the snapshot metadata has no data"))?
                .value()
                .to_vec();
            Ok(Some((meta, data)))
        })
        .await
        .map_err(|e| io(StorageIOError::read_snapshot(None, e)))?;
        Ok(current.map(|(meta, data)| Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        }))
    }
}
