//! Durable Raft storage, in the node's storage directory:
//! - `wal/`: the log entries and the commit pointer, in append-only segment files ([`wal`]).
//! - `raft.redb`, one redb database: the vote, the last purged log id and the state machine's
//!   snapshot. Tables:
//!   - `meta`: the file format version, the vote, the last purged log id.
//!   - `state_machine`: `snapshot_meta` / `snapshot_data`, the current snapshot (a state machine
//!     image: a small versioned header with last-applied and membership, followed by
//!     [`State::snapshot`] bytes); `snapshot_seq`, a counter that keeps snapshot ids unique.
//!
//! Durability: the log is the truth and the state machine is persisted only as snapshots, the
//! standard design. What a commit costs on disk is one `fdatasync` per node: the one that makes
//! the appended entries durable (shared by every append queued meanwhile).
//! - `save_vote`, `truncate` and `purge` are durable (fsync) before they are reported done, and
//!   so is `append`, except for a leader's own entries other than membership changes: those are
//!   reported flushed when queued, and nothing is applied, answered or sent as committed until
//!   they are durable (see the module docs of `log`).
//! - `apply` writes nothing: it changes the in-memory [`State`] only. Writing the whole image
//!   after every batch would cost an fsync and O(state size) per write.
//! - `build_snapshot` and `install_snapshot` store the image durably. openraft purges the log
//!   only up to a snapshot it has built or installed, so the log always holds every entry after
//!   the stored snapshot.
//! - At start-up the state machine is the stored snapshot (`applied_state()` answers its log id
//!   and membership), and openraft re-applies the log entries after it up to the saved
//!   `committed` log id before the node serves anything; the rest is re-applied once the
//!   commit index is learned again (as follower, from the leader; a node never resumes leading
//!   after a restart, see `read_vote`).
//! - `save_committed` writes without fsync (see [`LogStore`]'s `save_committed` for why that
//!   is safe).
//!
//! Every decode has a size limit and a corrupt record becomes a [`StorageError`], never a panic.

mod log;
#[cfg(test)]
mod raft_tests;
mod state_machine;
#[cfg(test)]
pub(crate) mod tests;
mod wal;

use std::cell::Cell;
use std::fmt::Display;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use openraft::AnyError;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

pub use log::{DurableLog, LogDurability, LogStore};
pub use state_machine::{SnapshotBuilder, StateMachineStore, StateReader, StoreClosed};

use super::{Entry, LogId, StoredMembership, Vote};
use crate::state::State;

/// The database file inside the node's storage directory.
pub const FILE_NAME: &str = "raft.redb";

/// Bumped when the layout of the tables changes incompatibly. Version 1 also stored the state
/// machine image after every applied batch (`state_machine/applied`); version 2 keeps only
/// snapshots; version 3 keeps the log and the commit pointer in segment files ([`wal`]) instead
/// of the `log` table. `open` upgrades older files: it drops the version 1 image (its snapshot
/// and log hold everything the image did) and moves a version 1 or 2 log into segment files.
const FORMAT_VERSION: u64 = 3;
const FORMAT_VERSION_PERSISTED_STATE: u64 = 1;
const FORMAT_VERSION_LOG_IN_REDB: u64 = 2;

/// The directory of the log's segment files, beside the database file.
pub const WAL_DIR: &str = "wal";

/// Upper bound on what decoding one log entry may claim. bincode counts a varint as the size of
/// its type, so a claim is at most 8 times the encoded size: [`MAX_ENCODED_ENTRY_BYTES`] is what
/// `append` accepts, so that everything written can be read back.
const MAX_ENTRY_CLAIM: usize = 256 * 1024 * 1024;
/// The largest encoded log entry `append` accepts (32 MiB: documents are at most 16 MiB of JSON).
pub const MAX_ENCODED_ENTRY_BYTES: usize = MAX_ENTRY_CLAIM / 8;
/// Limit for small records: vote, log ids, snapshot metadata, image headers (membership).
const MAX_RECORD_BYTES: usize = 16 * 1024 * 1024;

const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const SM: TableDefinition<&str, &[u8]> = TableDefinition::new("state_machine");

mod key {
    pub const FORMAT: &str = "format";
    pub const VOTE: &str = "vote";
    pub const COMMITTED: &str = "committed";
    pub const LAST_PURGED: &str = "last_purged";
    /// Version 1 only: the state machine image after the last applied batch.
    pub const APPLIED_V1: &str = "applied";
    pub const SNAPSHOT_META: &str = "snapshot_meta";
    pub const SNAPSHOT_DATA: &str = "snapshot_data";
    pub const SNAPSHOT_SEQ: &str = "snapshot_seq";
}

/// Why the store could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot create the Raft storage directory {path}: {source}")]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot open the Raft database {path}: {source}")]
    Open {
        path: PathBuf,
        source: redb::DatabaseError,
    },
    #[error("Raft database {path}: {source}")]
    Database { path: PathBuf, source: redb::Error },
    #[error("the Raft database {path} is corrupt: {detail}")]
    Corrupt { path: PathBuf, detail: String },
    #[error(
        "the Raft database {path} has format version {found}; this binary reads version {FORMAT_VERSION}"
    )]
    UnsupportedFormat { path: PathBuf, found: u64 },
    #[error("the storage task failed: {0}")]
    Task(String),
}

/// Opens (or creates) the node's Raft storage in `dir`, reloading the vote, the log pointers and
/// the last persisted state machine. Checks the records it reloads, so a corrupt file is an error
/// here rather than later.
pub async fn open(dir: &Path) -> Result<(LogStore, StateMachineStore), StoreError> {
    let dir = dir.to_path_buf();
    if INLINE.with(Cell::get) {
        return open_blocking(&dir);
    }
    tokio::task::spawn_blocking(move || open_blocking(&dir))
        .await
        .map_err(|e| StoreError::Task(e.to_string()))?
}

fn open_blocking(dir: &Path) -> Result<(LogStore, StateMachineStore), StoreError> {
    std::fs::create_dir_all(dir).map_err(|source| StoreError::CreateDir {
        path: dir.to_path_buf(),
        source,
    })?;
    let path = dir.join(FILE_NAME);
    let db = Database::create(&path).map_err(|source| StoreError::Open {
        path: path.clone(),
        source,
    })?;
    let db_err = |e: redb::Error| StoreError::Database {
        path: path.clone(),
        source: e,
    };
    let corrupt = |e: AnyError| StoreError::Corrupt {
        path: path.clone(),
        detail: e.to_string(),
    };

    // Create the tables and check the format version.
    let txn = db.begin_write().map_err(|e| db_err(e.into()))?;
    let found = {
        txn.open_table(SM).map_err(|e| db_err(e.into()))?;
        let meta = txn.open_table(META).map_err(|e| db_err(e.into()))?;
        match meta.get(key::FORMAT).map_err(|e| db_err(e.into()))? {
            Some(v) => Some(
                decode::<u64, MAX_RECORD_BYTES>(v.value(), "format version").map_err(corrupt)?,
            ),
            None => None,
        }
    };
    txn.commit().map_err(|e| db_err(e.into()))?;
    let wal_dir = dir.join(WAL_DIR);
    match found {
        Some(FORMAT_VERSION) => {}
        Some(old @ (FORMAT_VERSION_PERSISTED_STATE | FORMAT_VERSION_LOG_IN_REDB)) => {
            upgrade(&db, &wal_dir, old).map_err(corrupt)?;
            tracing::info!(path = %path.display(), "upgraded the Raft database from format version {old} to {FORMAT_VERSION}: the log moved to {}", wal_dir.display());
        }
        Some(found) => {
            return Err(StoreError::UnsupportedFormat {
                path: path.clone(),
                found,
            });
        }
        None => {
            // A new database: record the format version. The log directory is not checked
            // here; whatever segment files it holds are replayed below as this store's log.
            let txn = db.begin_write().map_err(|e| db_err(e.into()))?;
            {
                let mut meta = txn.open_table(META).map_err(|e| db_err(e.into()))?;
                let v = encode(&FORMAT_VERSION).map_err(corrupt)?;
                meta.insert(key::FORMAT, v.as_slice())
                    .map_err(|e| db_err(e.into()))?;
            }
            txn.commit().map_err(|e| db_err(e.into()))?;
        }
    }

    let db = Arc::new(db);
    let last_purged = {
        let txn = db.begin_read().map_err(|e| db_err(e.into()))?;
        let meta = txn.open_table(META).map_err(|e| db_err(e.into()))?;
        read_meta::<LogId>(&meta, key::LAST_PURGED).map_err(corrupt)?
    };
    let wal = wal::Wal::open(&wal_dir, last_purged).map_err(|e| StoreError::Corrupt {
        path: wal_dir.clone(),
        detail: e.to_string(),
    })?;
    let log = LogStore::new(db.clone(), wal).map_err(|e| StoreError::Task(e.to_string()))?;
    let summary = log.check().map_err(corrupt)?;
    let image = state_machine::load_snapshot(&db).map_err(corrupt)?;
    let sm = StateMachineStore::new(db, image, log.durability());
    tracing::info!(
        path = %path.display(),
        vote = ?summary.vote,
        committed = ?summary.committed,
        last_purged = ?summary.last_purged,
        log_entries = summary.entries,
        snapshot = ?sm.last_applied(),
        "opened the Raft store; openraft re-applies the committed entries after the snapshot"
    );
    Ok((log, sm))
}

/// Brings a format version 1 or 2 store to the current version. The log moves from the `log`
/// table into segment files; the segment files are complete and durable before the database
/// says version 3, so an upgrade cut short is simply done again (from a fresh log directory).
fn upgrade(db: &Database, wal_dir: &Path, from: u64) -> Result<(), AnyError> {
    if wal_dir.exists() {
        std::fs::remove_dir_all(wal_dir).ctx(format!(
            "removing the unfinished upgrade in {}",
            wal_dir.display()
        ))?;
    }
    let txn = db.begin_read().ctx("reading the log to upgrade")?;
    let meta = txn.open_table(META).ctx("reading the log metadata")?;
    let last_purged: Option<LogId> = read_meta(&meta, key::LAST_PURGED)?;
    let committed: Option<Option<LogId>> = read_meta(&meta, key::COMMITTED)?;
    let wal = wal::Wal::open(wal_dir, last_purged)?;
    wal.save_committed(committed.flatten())?;
    match txn.open_table(LOG) {
        Ok(log) => {
            let mut batch = Vec::new();
            let mut batch_bytes = 0;
            for item in log.iter().ctx("reading the log")? {
                let (k, v) = item.ctx("reading a log entry")?;
                let entry = decode_entry(k.value(), v.value())?;
                batch_bytes += v.value().len();
                batch.push((entry.log_id, v.value().to_vec()));
                if batch_bytes > 16 * 1024 * 1024 {
                    wal.append(&batch)?;
                    batch.clear();
                    batch_bytes = 0;
                }
            }
            wal.append(&batch)?;
        }
        Err(redb::TableError::TableDoesNotExist(_)) => {}
        Err(e) => return Err(AnyError::new(&e).add_context(|| "reading the log")),
    }
    wal.sync()?;
    drop(txn);

    let txn = db.begin_write().ctx("starting the upgrade")?;
    {
        let mut meta = txn.open_table(META).ctx("opening the meta table")?;
        if from == FORMAT_VERSION_PERSISTED_STATE {
            let mut sm = txn.open_table(SM).ctx("opening the state machine table")?;
            sm.remove(key::APPLIED_V1)
                .ctx("removing the version 1 state image")?;
        }
        meta.remove(key::COMMITTED)
            .ctx("removing the old commit pointer")?;
        let v = encode(&FORMAT_VERSION)?;
        meta.insert(key::FORMAT, v.as_slice())
            .ctx("writing the format version")?;
    }
    txn.delete_table(LOG).ctx("removing the old log table")?;
    txn.commit().ctx("committing the upgrade")
}

/// What `open` found in the log, for its log line.
struct LogSummary {
    vote: Option<Vote>,
    committed: Option<LogId>,
    last_purged: Option<LogId>,
    entries: u64,
}

/// The state machine as carried in a snapshot: a header, then the [`State::snapshot`] bytes.
struct Image {
    last_applied: Option<LogId>,
    membership: StoredMembership,
    state: State,
}

/// The header of an [`Image`]. New versions are new variants.
#[derive(Serialize, Deserialize)]
enum ImageHeader {
    V1 {
        last_applied: Option<LogId>,
        membership: StoredMembership,
    },
}

fn encode_image(
    last_applied: &Option<LogId>,
    membership: &StoredMembership,
    state: &State,
) -> Result<Vec<u8>, AnyError> {
    let mut out = encode(&ImageHeader::V1 {
        last_applied: *last_applied,
        membership: membership.clone(),
    })?;
    let state = state.snapshot().ctx("encoding the state machine")?;
    out.extend_from_slice(&state);
    Ok(out)
}

fn decode_image(bytes: &[u8]) -> Result<Image, AnyError> {
    let (header, read): (ImageHeader, usize) = bincode::serde::decode_from_slice(
        bytes,
        bincode::config::standard().with_limit::<MAX_RECORD_BYTES>(),
    )
    .ctx("decoding the state machine image header")?;
    let state = State::restore(&bytes[read..]).ctx("decoding the state machine")?;
    let ImageHeader::V1 {
        last_applied,
        membership,
    } = header;
    Ok(Image {
        last_applied,
        membership,
        state,
    })
}

/// Log entries are stored in a version envelope too: logs outlive binaries. (The `log` table of
/// format versions 1 and 2 is read only to upgrade it.)
#[derive(Serialize)]
enum EntryRef<'a> {
    V1(&'a Entry),
}

#[derive(Deserialize)]
enum StoredEntry {
    V1(Entry),
}

fn encode_entry(entry: &Entry) -> Result<Vec<u8>, AnyError> {
    let bytes = encode(&EntryRef::V1(entry))?;
    if bytes.len() > MAX_ENCODED_ENTRY_BYTES {
        return Err(AnyError::error(format!(
            "log entry {} encodes to {} bytes, more than the {} allowed",
            entry.log_id,
            bytes.len(),
            MAX_ENCODED_ENTRY_BYTES
        )));
    }
    Ok(bytes)
}

/// Decodes a stored entry without checking its index (replay learns the index from it).
fn decode_stored_entry(bytes: &[u8], what: &str) -> Result<Entry, AnyError> {
    let StoredEntry::V1(entry) = decode::<StoredEntry, MAX_ENTRY_CLAIM>(bytes, what)?;
    Ok(entry)
}

/// Decodes the stored entry expected at `index`.
fn decode_entry(index: u64, bytes: &[u8]) -> Result<Entry, AnyError> {
    let entry = decode_stored_entry(bytes, &format!("log entry {index}"))?;
    if entry.log_id.index != index {
        return Err(AnyError::error(format!(
            "log entry stored at index {index} has log id {}",
            entry.log_id
        )));
    }
    Ok(entry)
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, AnyError> {
    bincode::serde::encode_to_vec(value, bincode::config::standard()).ctx("encoding a record")
}

/// Decodes a whole record, refusing trailing bytes and claims beyond `LIMIT`.
fn decode<T: DeserializeOwned, const LIMIT: usize>(
    bytes: &[u8],
    what: &str,
) -> Result<T, AnyError> {
    let (value, read): (T, usize) =
        bincode::serde::decode_from_slice(bytes, bincode::config::standard().with_limit::<LIMIT>())
            .map_err(|e| AnyError::new(&e).add_context(|| format!("decoding {what}")))?;
    if read != bytes.len() {
        return Err(AnyError::error(format!(
            "decoding {what}: {} trailing bytes",
            bytes.len() - read
        )));
    }
    Ok(value)
}

/// Locks `m`, ignoring poisoning: a panic while it was held does not make every later storage
/// call panic too.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Adds what was being done to a storage error.
trait Ctx<T> {
    fn ctx(self, what: impl Display) -> Result<T, AnyError>;
}

impl<T, E: std::error::Error + 'static> Ctx<T> for Result<T, E> {
    fn ctx(self, what: impl Display) -> Result<T, AnyError> {
        self.map_err(|e| AnyError::new(&e).add_context(|| what))
    }
}

thread_local! {
    static INLINE: Cell<bool> = const { Cell::new(false) };
}

/// Makes the storage work of nodes driven from the calling thread run on that thread instead of
/// tokio's blocking pool. For deterministic simulations only, which run every node on one thread:
/// a blocking-pool task finishes at a wall-clock moment, which reorders the tasks of one
/// simulated instant from run to run. A server must not: every fsync would stall its runtime.
pub fn run_inline_on_this_thread(inline: bool) {
    INLINE.with(|i| i.set(inline));
}

/// Runs synchronous redb work (which may fsync) off the async runtime (unless
/// [`run_inline_on_this_thread`]).
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, AnyError> + Send + 'static,
) -> Result<T, AnyError> {
    if INLINE.with(Cell::get) {
        return f();
    }
    tokio::task::spawn_blocking(f)
        .await
        .ctx("the storage task failed")?
}

/// Reads one `meta` record.
fn read_meta<T: DeserializeOwned>(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    name: &str,
) -> Result<Option<T>, AnyError> {
    match table.get(name).ctx(format!("reading {name}"))? {
        Some(v) => Ok(Some(decode::<T, MAX_RECORD_BYTES>(v.value(), name)?)),
        None => Ok(None),
    }
}
