//! Tests of the Raft storage: openraft's conformance suite, restart (the state machine comes
//! back from the snapshot plus openraft's replay of the log), snapshots, corruption, torn
//! writes, and the upgrades from format versions 1 and 2.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use openraft::storage::{RaftLogStorage, RaftLogStorageExt, RaftStateMachine, StorageHelper};
use openraft::testing::{StoreBuilder, Suite};
use openraft::{
    AnyError, CommittedLeaderId, EntryPayload, Membership, RaftLogReader, RaftSnapshotBuilder,
    StorageIOError,
};
use portico_proto::{
    Api, ApiKind, DEFAULT_INTEGRATION_TIMEOUT_MS, Integration, IntegrationType, Route,
};
use redb::{Database, ReadableTable};

use super::{
    DurableLog, FILE_NAME, FORMAT_VERSION, FORMAT_VERSION_LOG_IN_REDB,
    FORMAT_VERSION_PERSISTED_STATE, LOG, LogStore, META, SM, StateMachineStore, StoreError,
    WAL_DIR,
};
use super::{encode, encode_entry, encode_image, key, open, wal};
use crate::raft::{Entry, LogId, Member, SnapshotMeta, StorageError, StoredMembership, Vote};
use crate::state::{Applied, Command, Proposal};

/// A unique directory under the system temp dir, removed on drop.
pub(crate) struct TempDir(PathBuf);

impl TempDir {
    pub(crate) fn new(tag: &str) -> TempDir {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let path = std::env::temp_dir().join(format!(
            "portico-raft-store-{tag}-{}-{nanos}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }

    pub(crate) fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

struct Builder;

impl StoreBuilder<crate::raft::TypeConfig, LogStore, StateMachineStore, TempDir> for Builder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachineStore), StorageError> {
        let dir = TempDir::new("suite");
        let (log, sm) = open(dir.path()).await.map_err(|e| StorageError::IO {
            source: StorageIOError::write(AnyError::new(&e)),
        })?;
        Ok((dir, log, sm))
    }
}

#[test]
fn openraft_storage_suite() {
    // The suite makes a tokio runtime per case: it must not run inside one.
    Suite::test_all(Builder).unwrap();
}

fn log_id(term: u64, index: u64) -> LogId {
    LogId::new(CommittedLeaderId::new(term, 1), index)
}

fn blank(term: u64, index: u64) -> Entry {
    Entry {
        log_id: log_id(term, index),
        payload: EntryPayload::Blank,
    }
}

fn membership(term: u64, index: u64) -> Entry {
    let nodes: BTreeMap<u64, Member> = [(
        1,
        Member {
            raft_addr: "127.0.0.1:7001".to_string(),
            admin_addr: "127.0.0.1:8001".to_string(),
        },
    )]
    .into();
    Entry {
        log_id: log_id(term, index),
        payload: EntryPayload::Membership(Membership::new(vec![BTreeSet::from([1])], nodes)),
    }
}

fn normal(term: u64, index: u64, command: Command) -> Entry {
    Entry {
        log_id: log_id(term, index),
        payload: EntryPayload::Normal(Proposal {
            at_ms: 1_700_000_000_000 + index,
            command,
        }),
    }
}

pub(super) fn api(id: &str) -> Api {
    Api {
        id: id.to_string(),
        name: String::new(),
        description: String::new(),
        kind: ApiKind::Http,
        endpoint: Default::default(),
        region: None,
        routes: vec![Route {
            key: "GET /hello".to_string(),
            integration: Integration {
                kind: IntegrationType::Mock,
                uri: None,
                method: None,
                timeout_ms: DEFAULT_INTEGRATION_TIMEOUT_MS,
                request_parameters: BTreeMap::new(),
                responses: Vec::new(),
                status: Some(200),
                headers: BTreeMap::new(),
                body: Some(format!("hello from {id}")),
            },
        }],
        gateway_responses: BTreeMap::new(),
        stages: Vec::new(),
    }
}

fn put(id: &str) -> Command {
    Command::PutApi {
        api: api(id),
        if_revision: None,
    }
}

/// A log as openraft writes it, from index 0 (the initial membership): then blank, membership,
/// put a, put b, delete a, put c. `sample_log()[i]` has index `i`.
fn sample_log() -> Vec<Entry> {
    vec![
        membership(0, 0),
        blank(1, 1),
        membership(1, 2),
        normal(1, 3, put("a")),
        normal(1, 4, put("b")),
        normal(
            2,
            5,
            Command::DeleteApi {
                id: "a".to_string(),
                if_revision: None,
            },
        ),
        normal(2, 6, put("c")),
    ]
}

fn done(revisions: impl IntoIterator<Item = u64>) -> Vec<Applied> {
    revisions
        .into_iter()
        .map(|revision| Applied::Done { revision })
        .collect()
}

async fn digest(sm: &StateMachineStore) -> String {
    sm.reader().read(|s| s.digest())
}

/// What openraft does first when a `Raft` starts over the store: read the vote and the log
/// pointers, and re-apply the committed entries after the state machine's snapshot.
async fn start_up(log: &mut LogStore, sm: &mut StateMachineStore) {
    StorageHelper::new(log, sm)
        .get_initial_state()
        .await
        .unwrap();
}

/// The names in the `state_machine` table.
fn state_machine_records(dir: &Path) -> Vec<String> {
    let db = Database::create(dir.join(FILE_NAME)).unwrap();
    let txn = redb::ReadableDatabase::begin_read(&db).unwrap();
    let table = txn.open_table(SM).unwrap();
    table
        .iter()
        .unwrap()
        .map(|item| item.unwrap().0.value().to_string())
        .collect()
}

#[tokio::test]
async fn restart_restores_vote_committed_log_and_state() {
    let dir = TempDir::new("restart");
    let entries = sample_log();
    let vote = Vote::new_committed(2, 1);

    let (mut log, mut sm) = open(dir.path()).await.unwrap();
    let reader = sm.reader();
    assert_eq!(reader.applied(), 0);
    log.save_vote(&vote).await.unwrap();
    log.blocking_append(entries.clone()).await.unwrap();
    log.save_committed(Some(log_id(2, 5))).await.unwrap();

    // A waiter for revision 5 is woken by the batch that applies it.
    let waiter = tokio::spawn({
        let reader = reader.clone();
        async move {
            let at = reader.wait_applied(5).await.unwrap();
            (
                at,
                reader.read(|s| s.apis.keys().cloned().collect::<Vec<_>>()),
            )
        }
    });
    assert_eq!(
        sm.apply(entries[..3].to_vec()).await.unwrap(),
        done([0, 1, 2])
    );
    assert_eq!(
        sm.apply(entries[3..6].to_vec()).await.unwrap(),
        done([3, 4, 5])
    );
    assert_eq!(waiter.await.unwrap(), (5, vec!["b".to_string()]));
    assert_eq!(reader.applied(), 5);
    reader.read(|s| {
        assert_eq!(s.revision, 5);
        assert_eq!(s.apis["b"].revision, 4);
    });
    let applied = sm.applied_state().await.unwrap();
    assert_eq!(applied.0, Some(log_id(2, 5)));
    assert_eq!(applied.1.log_id(), &Some(log_id(1, 2)));
    let before = digest(&sm).await;
    let log_state = log.get_log_state().await.unwrap();
    assert_eq!(log_state.last_log_id, Some(log_id(2, 6)));
    assert_eq!(log_state.last_purged_log_id, None);
    drop((log, sm));

    // Once the state machine is gone, waiting for what it never applied fails.
    assert_eq!(reader.wait_applied(100).await, Err(super::StoreClosed));

    // Applying wrote nothing: without a snapshot, the state machine table is empty.
    assert!(state_machine_records(dir.path()).is_empty());

    let (mut log, mut sm) = open(dir.path()).await.unwrap();
    // The vote comes back, but not as an established leader's (see `read_vote`).
    assert_eq!(log.read_vote().await.unwrap(), Some(Vote::new(2, 1)));
    assert_eq!(log.read_committed().await.unwrap(), Some(log_id(2, 5)));
    let reopened = log.get_log_state().await.unwrap();
    assert_eq!(reopened.last_log_id, log_state.last_log_id);
    assert_eq!(reopened.last_purged_log_id, log_state.last_purged_log_id);
    assert_eq!(log.try_get_log_entries(..).await.unwrap(), entries);
    assert_eq!(
        log.get_log_reader()
            .await
            .try_get_log_entries(3..5)
            .await
            .unwrap(),
        entries[3..5]
    );
    // The state machine starts from the last snapshot (none yet): empty.
    let empty = crate::state::State::default().digest();
    assert_eq!(
        sm.applied_state().await.unwrap(),
        (None, StoredMembership::default())
    );
    assert_eq!(digest(&sm).await, empty);
    assert_eq!(sm.reader().applied(), 0);

    // openraft's start-up re-applies the log up to the committed log id, not beyond it.
    let reader = sm.reader();
    start_up(&mut log, &mut sm).await;
    assert_eq!(sm.applied_state().await.unwrap(), applied);
    assert_eq!(digest(&sm).await, before);
    assert_eq!(reader.applied(), 5);

    // And it carries on from there.
    assert_eq!(sm.apply(entries[6..].to_vec()).await.unwrap(), done([6]));
    sm.reader().read(|s| {
        assert_eq!(s.revision, 6);
        assert!(s.apis.contains_key("c"));
    });
}

#[tokio::test]
async fn truncate_removes_the_tail_and_survives_restart() {
    let dir = TempDir::new("truncate");
    let entries = sample_log();
    let (mut log, _sm) = open(dir.path()).await.unwrap();
    log.blocking_append(entries.clone()).await.unwrap();
    log.truncate(log_id(2, 5)).await.unwrap();
    assert_eq!(log.try_get_log_entries(..).await.unwrap(), entries[..5]);
    drop((log, _sm));
    let (mut log, _sm) = open(dir.path()).await.unwrap();
    let state = log.get_log_state().await.unwrap();
    assert_eq!(state.last_log_id, Some(log_id(1, 4)));
    assert_eq!(log.try_get_log_entries(..).await.unwrap(), entries[..5]);
}

/// Deterministic pseudo-random bytes (xorshift64).
fn garbage(len: usize, mut seed: u64) -> Vec<u8> {
    (0..len)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed as u8
        })
        .collect()
}

async fn current_meta(sm: &mut StateMachineStore) -> Option<SnapshotMeta> {
    sm.get_current_snapshot().await.unwrap().map(|s| s.meta)
}

#[tokio::test]
async fn snapshot_purge_reopen_install_and_refuse_corrupt() {
    let dir = TempDir::new("snapshot");
    let entries = sample_log();
    let (mut log, mut sm) = open(dir.path()).await.unwrap();
    assert!(sm.get_current_snapshot().await.unwrap().is_none());
    log.blocking_append(entries[..6].to_vec()).await.unwrap();
    sm.apply(entries[..5].to_vec()).await.unwrap();

    let snapshot = sm
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();
    let meta = snapshot.meta.clone();
    let data = snapshot.snapshot.into_inner();
    assert_eq!(meta.last_log_id, Some(log_id(1, 4)));
    assert_eq!(meta.last_membership.log_id(), &Some(log_id(1, 2)));
    let at_snapshot = digest(&sm).await;

    log.purge(log_id(1, 4)).await.unwrap();
    log.save_committed(Some(log_id(2, 5))).await.unwrap();
    sm.apply(entries[5..6].to_vec()).await.unwrap();
    let after = digest(&sm).await;
    assert_ne!(after, at_snapshot);
    drop((log, sm));

    // Reopen: the log is compacted, the state machine is the snapshot, and the log after it is
    // re-applied at start-up.
    let (mut log, mut sm) = open(dir.path()).await.unwrap();
    let state = log.get_log_state().await.unwrap();
    assert_eq!(state.last_purged_log_id, Some(log_id(1, 4)));
    assert_eq!(state.last_log_id, Some(log_id(2, 5)));
    assert_eq!(log.try_get_log_entries(..).await.unwrap(), entries[5..6]);
    assert_eq!(digest(&sm).await, at_snapshot);
    assert_eq!(sm.reader().applied(), 4);
    assert_eq!(
        sm.applied_state().await.unwrap(),
        (meta.last_log_id, meta.last_membership.clone())
    );
    let current = sm.get_current_snapshot().await.unwrap().unwrap();
    assert_eq!(current.meta, meta);
    assert_eq!(current.snapshot.into_inner(), data);
    start_up(&mut log, &mut sm).await;
    assert_eq!(digest(&sm).await, after);
    assert_eq!(sm.applied_state().await.unwrap().0, Some(log_id(2, 5)));

    // A newer snapshot, then purging everything: the purged id is the last log id, and the
    // state comes back from the snapshot alone.
    let newer = sm
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap()
        .meta;
    assert_eq!(newer.last_log_id, Some(log_id(2, 5)));
    log.purge(log_id(2, 5)).await.unwrap();
    let state = log.get_log_state().await.unwrap();
    assert_eq!(state.last_log_id, Some(log_id(2, 5)));
    assert!(log.try_get_log_entries(..).await.unwrap().is_empty());
    drop((log, sm));
    let (mut log, mut sm) = open(dir.path()).await.unwrap();
    assert_eq!(digest(&sm).await, after);
    start_up(&mut log, &mut sm).await;
    assert_eq!(digest(&sm).await, after);
    assert_eq!(current_meta(&mut sm).await, Some(newer.clone()));

    // A new member installs the snapshot: the state is restored from it.
    let dir2 = TempDir::new("snapshot-install");
    let (_log2, mut sm2) = open(dir2.path()).await.unwrap();
    let reader2 = sm2.reader();
    let mut received = sm2.begin_receiving_snapshot().await.unwrap();
    received.get_mut().extend_from_slice(&data);
    sm2.install_snapshot(&meta, received).await.unwrap();
    assert_eq!(digest(&sm2).await, at_snapshot);
    assert_eq!(reader2.applied(), 4);
    let (last_applied, membership) = sm2.applied_state().await.unwrap();
    assert_eq!(last_applied, meta.last_log_id);
    assert_eq!(membership, meta.last_membership);
    assert_eq!(current_meta(&mut sm2).await, Some(meta.clone()));
    drop((_log2, sm2));
    let (_log2, mut sm2) = open(dir2.path()).await.unwrap();
    assert_eq!(digest(&sm2).await, at_snapshot);
    assert_eq!(
        sm2.applied_state().await.unwrap(),
        (last_applied, membership)
    );
    assert_eq!(current_meta(&mut sm2).await, Some(meta.clone()));
    drop((_log2, sm2));
    assert_eq!(
        state_machine_records(dir2.path()),
        [key::SNAPSHOT_DATA, key::SNAPSHOT_META]
    );

    // Corrupt snapshots fail and leave everything as it was.
    let mut mismatched = meta.clone();
    mismatched.last_log_id = Some(log_id(3, 9));
    mismatched.snapshot_id = "mismatched".to_string();
    let other_membership = StoredMembership::new(
        Some(log_id(3, 8)),
        Membership::new(vec![BTreeSet::from([7])], ()),
    );
    let cases: Vec<(SnapshotMeta, Vec<u8>)> = vec![
        (meta.clone(), garbage(4096, 0x9e37_79b9_7f4a_7c15)),
        (meta.clone(), garbage(3, 7)),
        (meta.clone(), Vec::new()),
        (meta.clone(), data[..data.len() - 1].to_vec()),
        (meta.clone(), [data.as_slice(), &[0]].concat()),
        (mismatched, data.clone()),
        (
            SnapshotMeta {
                last_membership: other_membership,
                ..meta.clone()
            },
            data.clone(),
        ),
    ];
    for (i, (bad_meta, bytes)) in cases.into_iter().enumerate() {
        let before = (
            digest(&sm).await,
            sm.applied_state().await.unwrap(),
            current_meta(&mut sm).await,
            sm.reader().applied(),
        );
        let result = sm
            .install_snapshot(&bad_meta, Box::new(Cursor::new(bytes)))
            .await;
        assert!(result.is_err(), "case {i} was accepted");
        let after = (
            digest(&sm).await,
            sm.applied_state().await.unwrap(),
            current_meta(&mut sm).await,
            sm.reader().applied(),
        );
        assert_eq!(before, after, "case {i} changed the state");
    }
    drop((log, sm));
    let (_log, mut sm) = open(dir.path()).await.unwrap();
    assert_eq!(digest(&sm).await, after);
    assert_eq!(current_meta(&mut sm).await, Some(newer));
}

/// Writes `value` under `name` in `table`, straight into the database file.
fn poke(dir: &Path, f: impl FnOnce(&redb::WriteTransaction)) {
    let db = Database::create(dir.join(FILE_NAME)).unwrap();
    let txn = db.begin_write().unwrap();
    f(&txn);
    txn.commit().unwrap();
}

/// The log's segment files, oldest first.
pub(super) fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir.join(WAL_DIR))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "wal"))
        .collect();
    files.sort();
    files
}

/// (offset, length) of each record's body in a segment.
fn records(bytes: &[u8]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut at = 0;
    while at + 8 <= bytes.len() {
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        if len == 0 {
            break;
        }
        out.push((at + 8, len));
        at += 8 + len;
    }
    out
}

pub(super) fn records_end(bytes: &[u8]) -> usize {
    records(bytes).last().map_or(0, |(at, len)| at + len)
}

fn last_record(bytes: &[u8]) -> (usize, usize) {
    *records(bytes).last().unwrap()
}

pub(super) fn write_at(path: &Path, offset: usize, bytes: &[u8]) {
    use std::os::unix::fs::FileExt;
    let file = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    file.write_all_at(bytes, offset as u64).unwrap();
}

/// Entries 1..=n, each a new API, in term 1.
fn numbered_log(n: u64) -> Vec<Entry> {
    (1..=n)
        .map(|i| normal(1, i, put(&format!("api-{i}"))))
        .collect()
}

#[tokio::test]
async fn purge_deletes_whole_old_segments_and_keeps_the_rest() {
    let dir = TempDir::new("purge-segments");
    let many = numbered_log(150);
    let (mut log, _sm) = open(dir.path()).await.unwrap();
    for e in &many {
        log.blocking_append([e.clone()]).await.unwrap();
    }
    log.save_committed(Some(log_id(1, 150))).await.unwrap();
    let before = segments(dir.path()).len();
    log.purge(log_id(1, 120)).await.unwrap();
    let after = segments(dir.path()).len();
    assert!(
        after < before,
        "{before} segments before the purge, {after} after"
    );
    assert_eq!(log.try_get_log_entries(..).await.unwrap(), many[120..]);
    drop((log, _sm));
    let (mut log, _sm) = open(dir.path()).await.unwrap();
    assert_eq!(log.try_get_log_entries(..).await.unwrap(), many[120..]);
    assert_eq!(log.read_committed().await.unwrap(), Some(log_id(1, 150)));
    let state = log.get_log_state().await.unwrap();
    assert_eq!(state.last_purged_log_id, Some(log_id(1, 120)));
    assert_eq!(state.last_log_id, Some(log_id(1, 150)));
    // Everything purged: the log is empty and continues after the purged id.
    log.purge(log_id(1, 150)).await.unwrap();
    assert!(log.try_get_log_entries(..).await.unwrap().is_empty());
    let next = normal(1, 151, put("next"));
    log.blocking_append([next.clone()]).await.unwrap();
    drop((log, _sm));
    let (mut log, _sm) = open(dir.path()).await.unwrap();
    assert_eq!(log.try_get_log_entries(..).await.unwrap(), vec![next]);
}

#[tokio::test]
async fn corrupt_records_are_errors_not_panics() {
    let entries = sample_log();

    // A torn last write (a record cut short, or failing its checksum): dropped at open, and
    // zeroed, so the log carries on from there.
    let dir = TempDir::new("torn");
    let (mut log, _sm) = open(dir.path()).await.unwrap();
    log.blocking_append(entries.clone()).await.unwrap();
    drop((log, _sm));
    let last = segments(dir.path()).pop().unwrap();
    let bytes = std::fs::read(&last).unwrap();
    let end = records_end(&bytes);
    write_at(&last, end, &[100, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7]);
    let (mut log, _sm) = open(dir.path()).await.unwrap();
    assert_eq!(log.try_get_log_entries(..).await.unwrap(), entries);
    drop((log, _sm));
    // The last entry's record with its final byte flipped: that entry is gone.
    let (body_at, body_len) = last_record(&std::fs::read(&last).unwrap());
    write_at(&last, body_at + body_len - 1, &[0x5a]);
    let (mut log, _sm) = open(dir.path()).await.unwrap();
    assert_eq!(log.try_get_log_entries(..).await.unwrap(), entries[..6]);
    log.blocking_append(entries[6..].to_vec()).await.unwrap();
    drop((log, _sm));
    let (mut log, _sm) = open(dir.path()).await.unwrap();
    assert_eq!(log.try_get_log_entries(..).await.unwrap(), entries);
    drop((log, _sm));

    // Damage anywhere else is corruption: open refuses the store and says where.
    let many = numbered_log(150);
    let dir = TempDir::new("corrupt-old-segment");
    let (mut log, _sm) = open(dir.path()).await.unwrap();
    for e in &many {
        log.blocking_append([e.clone()]).await.unwrap();
    }
    drop((log, _sm));
    let files = segments(dir.path());
    assert!(files.len() > 2, "the test log spans segments: {files:?}");
    write_at(&files[0], 20, &[0xff, 0xfe]);
    let err = open(dir.path()).await.err().unwrap();
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
    assert!(err.to_string().contains("checksum"), "{err}");

    // A record whose checksum holds but whose content does not decode, an entry out of
    // sequence, and an unknown kind of record, each at the end of the log: refused.
    let unknown_kind = 9;
    assert!(![wal::KIND_ENTRY, wal::KIND_TRUNCATE, wal::KIND_COMMITTED].contains(&unknown_kind));
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (
            wal::raw_record(wal::KIND_ENTRY, &garbage(64, 1)),
            "decoding",
        ),
        (
            wal::raw_record(
                wal::KIND_ENTRY,
                &encode_entry(&normal(2, 9, put("z"))).unwrap(),
            ),
            "hole",
        ),
        (wal::raw_record(unknown_kind, b"x"), "unknown record kind"),
    ];
    for (record, expected) in cases {
        let dir = TempDir::new("corrupt-record");
        let (mut log, _sm) = open(dir.path()).await.unwrap();
        log.blocking_append(entries.clone()).await.unwrap();
        drop((log, _sm));
        let last = segments(dir.path()).pop().unwrap();
        let end = records_end(&std::fs::read(&last).unwrap());
        write_at(&last, end, &record);
        let err = open(dir.path()).await.err().unwrap();
        assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
        assert!(err.to_string().contains(expected), "{expected}: {err}");
    }

    // A corrupt vote and a corrupt state machine image: refused.
    let dir = TempDir::new("corrupt-meta");
    drop(open(dir.path()).await.unwrap());
    poke(dir.path(), |txn| {
        let mut t = txn.open_table(META).unwrap();
        t.insert(key::VOTE, garbage(5, 3).as_slice()).unwrap();
    });
    let err = open(dir.path()).await.err().unwrap();
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");

    // A corrupt snapshot, one whose content contradicts its metadata, and metadata without
    // data: refused.
    let dir = TempDir::new("corrupt-snapshot");
    let (mut log, mut sm) = open(dir.path()).await.unwrap();
    log.blocking_append(entries.clone()).await.unwrap();
    sm.apply(entries[..4].to_vec()).await.unwrap();
    sm.get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();
    drop((log, sm));
    let (_log, sm) = open(dir.path()).await.unwrap();
    let good = sm.reader().read(|s| s.digest());
    drop((_log, sm));
    let stored = |name: &'static str| {
        let db = Database::create(dir.path().join(FILE_NAME)).unwrap();
        let txn = redb::ReadableDatabase::begin_read(&db).unwrap();
        let t = txn.open_table(SM).unwrap();
        t.get(name).unwrap().unwrap().value().to_vec()
    };
    let data = stored(key::SNAPSHOT_DATA);
    let other = encode_image(
        &Some(log_id(1, 2)),
        &StoredMembership::default(),
        &crate::state::State::default(),
    )
    .unwrap();
    type Breaking<'a> = Box<dyn Fn(&redb::WriteTransaction) + 'a>;
    let broken: Vec<Breaking> = vec![
        Box::new(|txn| {
            let mut t = txn.open_table(SM).unwrap();
            t.insert(key::SNAPSHOT_DATA, &data[..data.len() / 2])
                .unwrap();
        }),
        Box::new(|txn| {
            let mut t = txn.open_table(SM).unwrap();
            t.insert(key::SNAPSHOT_DATA, other.as_slice()).unwrap();
        }),
        Box::new(|txn| {
            let mut t = txn.open_table(SM).unwrap();
            t.remove(key::SNAPSHOT_DATA).unwrap();
        }),
        Box::new(|txn| {
            let mut t = txn.open_table(SM).unwrap();
            t.insert(key::SNAPSHOT_META, garbage(40, 11).as_slice())
                .unwrap();
        }),
    ];
    for (i, breaking) in broken.iter().enumerate() {
        let meta = stored(key::SNAPSHOT_META);
        poke(dir.path(), |txn| breaking(txn));
        let err = open(dir.path()).await.err().unwrap();
        assert!(matches!(err, StoreError::Corrupt { .. }), "case {i}: {err}");
        poke(dir.path(), |txn| {
            let mut t = txn.open_table(SM).unwrap();
            t.insert(key::SNAPSHOT_DATA, data.as_slice()).unwrap();
            t.insert(key::SNAPSHOT_META, meta.as_slice()).unwrap();
        });
        let (_log, sm) = open(dir.path()).await.unwrap();
        assert_eq!(digest(&sm).await, good, "case {i}");
    }

    // A file from a future format version: refused with a clear error.
    let dir = TempDir::new("future-format");
    drop(open(dir.path()).await.unwrap());
    poke(dir.path(), |txn| {
        let mut t = txn.open_table(META).unwrap();
        let v = encode(&(FORMAT_VERSION + 1)).unwrap();
        t.insert(key::FORMAT, v.as_slice()).unwrap();
    });
    let err = open(dir.path()).await.err().unwrap();
    assert!(
        matches!(err, StoreError::UnsupportedFormat { found, .. } if found == FORMAT_VERSION + 1),
        "{err}"
    );
}

#[tokio::test]
async fn oversized_entries_are_refused_before_they_are_written() {
    let dir = TempDir::new("oversized");
    let (mut log, _sm) = open(dir.path()).await.unwrap();
    let mut big = api("big");
    big.routes[0].integration.body = Some("x".repeat(super::MAX_ENCODED_ENTRY_BYTES));
    let entry = normal(
        1,
        1,
        Command::PutApi {
            api: big,
            if_revision: None,
        },
    );
    assert!(log.blocking_append([entry]).await.is_err());
    assert!(log.try_get_log_entries(..).await.unwrap().is_empty());
}

#[tokio::test]
async fn version_1_and_2_files_are_upgraded_and_rebuilt_from_their_snapshot_and_log() {
    for version in [FORMAT_VERSION_PERSISTED_STATE, FORMAT_VERSION_LOG_IN_REDB] {
        upgrade_from(version).await;
    }
}

async fn upgrade_from(version: u64) {
    let entries = sample_log();
    // The state after the whole log, as a reference.
    let reference = TempDir::new("upgrade-reference");
    let (_log, mut sm) = open(reference.path()).await.unwrap();
    sm.apply(entries.clone()).await.unwrap();
    let expected = digest(&sm).await;
    drop((_log, sm));

    // What versions 1 and 2 left: a snapshot at 4, the log after it in the `log` table, the
    // committed id in `meta`, and (version 1) the image after the last applied batch. The
    // segment files written meanwhile stand for an upgrade that was cut short.
    let dir = TempDir::new("upgrade");
    let (mut log, mut sm) = open(dir.path()).await.unwrap();
    log.blocking_append(entries.clone()).await.unwrap();
    sm.apply(entries[..5].to_vec()).await.unwrap();
    sm.get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();
    log.purge(log_id(1, 4)).await.unwrap();
    sm.apply(entries[5..].to_vec()).await.unwrap();
    let image = sm
        .reader()
        .read(|s| encode_image(&Some(log_id(2, 6)), &StoredMembership::default(), s).unwrap());
    drop((log, sm));
    poke(dir.path(), |txn| {
        let mut meta = txn.open_table(META).unwrap();
        let v = encode(&version).unwrap();
        meta.insert(key::FORMAT, v.as_slice()).unwrap();
        let committed = encode(&Some(log_id(2, 6))).unwrap();
        meta.insert(key::COMMITTED, committed.as_slice()).unwrap();
        let mut t = txn.open_table(LOG).unwrap();
        for e in &entries[5..] {
            t.insert(e.log_id.index, encode_entry(e).unwrap().as_slice())
                .unwrap();
        }
        if version == FORMAT_VERSION_PERSISTED_STATE {
            let mut t = txn.open_table(SM).unwrap();
            t.insert(key::APPLIED_V1, image.as_slice()).unwrap();
        }
    });

    let (mut log, mut sm) = open(dir.path()).await.unwrap();
    assert_eq!(sm.reader().applied(), 4);
    assert_eq!(log.try_get_log_entries(..).await.unwrap(), entries[5..]);
    assert_eq!(log.read_committed().await.unwrap(), Some(log_id(2, 6)));
    start_up(&mut log, &mut sm).await;
    assert_eq!(digest(&sm).await, expected);
    assert_eq!(sm.reader().applied(), 6);
    drop((log, sm));
    assert!(!state_machine_records(dir.path()).contains(&key::APPLIED_V1.to_string()));
    let db = Database::create(dir.path().join(FILE_NAME)).unwrap();
    let txn = redb::ReadableDatabase::begin_read(&db).unwrap();
    let meta = txn.open_table(META).unwrap();
    let format: u64 = super::read_meta(&meta, key::FORMAT).unwrap().unwrap();
    assert_eq!(format, FORMAT_VERSION);
    assert!(txn.open_table(LOG).is_err(), "the old log table is gone");
}

fn spawn_append(log: &LogStore, entries: Vec<Entry>) -> tokio::task::JoinHandle<()> {
    let mut log = log.clone();
    tokio::spawn(async move { log.blocking_append(entries).await.unwrap() })
}

/// Whether `f` is ready when polled once, now.
fn ready_now<F: std::future::Future>(f: F) -> bool {
    let mut f = std::pin::pin!(f);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    f.as_mut().poll(&mut cx).is_ready()
}

/// Whether `task` is still running after a moment's wait.
async fn still_running<T>(task: &tokio::task::JoinHandle<T>) -> bool {
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    !task.is_finished()
}

/// Opens the store as node 1, the established leader of term 2 (its own normal entries are
/// then acknowledged before they are durable), with `sample_log()[..3]` written: a batch with
/// membership entries, so acknowledged only once durable.
async fn open_as_leader(dir: &Path) -> (LogStore, StateMachineStore, DurableLog) {
    let (mut log, sm) = open(dir).await.unwrap();
    let durable = log.acknowledge_early(1);
    log.save_vote(&Vote::new_committed(2, 1)).await.unwrap();
    log.blocking_append(sample_log()[..3].to_vec())
        .await
        .unwrap();
    (log, sm, durable)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leaders_entries_are_acknowledged_before_they_are_durable_but_not_applied() {
    let dir = TempDir::new("early");
    let entries = sample_log();
    let (mut log, mut sm, durable) = open_as_leader(dir.path()).await;
    let within = std::time::Duration::from_secs(10);
    assert_eq!(durable.last().map(|d| d.index), Some(2));

    // With the writer held, the leader's own normal entries are acknowledged and readable at
    // once, but they are not durable, and they cannot be applied.
    let release = log.hold_writer();
    tokio::time::timeout(within, log.blocking_append(entries[3..5].to_vec()))
        .await
        .expect("a leader's own entries are acknowledged before they are written")
        .unwrap();
    assert_eq!(log.try_get_log_entries(..).await.unwrap(), entries[..5]);
    assert_eq!(durable.last().map(|d| d.index), Some(2));
    // What the state machine waits on before applying: ready for the durable entries, not for
    // the ones acknowledged early (deterministic, unlike the timed check below).
    let durability = log.durability();
    assert!(
        ready_now(durability.wait(2)),
        "durable entries must not wait"
    );
    assert!(
        !ready_now(durability.wait(3)),
        "an early-acknowledged entry counted as durable"
    );
    assert!(
        !ready_now(durability.wait(4)),
        "an early-acknowledged entry counted as durable"
    );
    let apply = tokio::spawn({
        let first = entries[..5].to_vec();
        async move {
            let applied = sm.apply(first).await.unwrap();
            (sm, applied)
        }
    });
    assert!(still_running(&apply).await, "applied before it was durable");

    // A membership entry is acknowledged only once durable, even from the leader.
    let change = membership(2, 5);
    let append = spawn_append(&log, vec![change.clone()]);
    assert!(
        still_running(&append).await,
        "a membership entry acknowledged early"
    );

    drop(release);
    let (mut sm, applied) = tokio::time::timeout(within, apply).await.unwrap().unwrap();
    assert_eq!(applied, done([0, 1, 2, 3, 4]));
    assert!(ready_now(durability.wait(4)), "durable once written");
    tokio::time::timeout(within, append).await.unwrap().unwrap();
    assert_eq!(durable.last().map(|d| d.index), Some(5));

    // A follower's entries are acknowledged only once durable.
    log.save_vote(&Vote::new_committed(3, 2)).await.unwrap();
    let release = log.hold_writer();
    let last = normal(3, 6, put("c"));
    let append = spawn_append(&log, vec![last.clone()]);
    assert!(
        still_running(&append).await,
        "a follower acknowledged early"
    );
    drop(release);
    tokio::time::timeout(within, append).await.unwrap().unwrap();
    assert_eq!(
        sm.apply(vec![change.clone(), last.clone()]).await.unwrap(),
        done([5, 6])
    );
    drop((log, sm));
    let (mut log, _sm) = open(dir.path()).await.unwrap();
    let mut expected = entries[..5].to_vec();
    expected.extend([change, last]);
    assert_eq!(log.try_get_log_entries(..).await.unwrap(), expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_write_fails_the_apply_that_waited_for_entries_acknowledged_early() {
    let dir = TempDir::new("early-fail");
    let entries = sample_log();
    let (mut log, mut sm, _durable) = open_as_leader(dir.path()).await;
    let within = std::time::Duration::from_secs(10);

    let release = log.hold_writer();
    log.fail_writes();
    tokio::time::timeout(within, log.blocking_append(entries[3..5].to_vec()))
        .await
        .expect("a leader's own entries are acknowledged before they are written")
        .unwrap();
    let durability = log.durability();
    let apply = tokio::spawn(async move { sm.apply(entries[..5].to_vec()).await });
    assert!(still_running(&apply).await, "applied before it was durable");

    drop(release);
    let applied = tokio::time::timeout(within, apply)
        .await
        .expect("the apply still waits for entries whose write failed")
        .unwrap();
    let e = applied.expect_err("applied entries that were never durable");
    assert!(e.to_string().contains("writing the Raft log failed"), "{e}");
    // Entries that were durable before the failure still count as such.
    assert!(ready_now(durability.wait(2)));
    let late = tokio::time::timeout(within, durability.wait(4))
        .await
        .unwrap();
    assert!(
        late.is_err(),
        "an entry whose write failed counted as durable"
    );
    // Nothing is written after a failure.
    let again = log.blocking_append(vec![normal(2, 5, put("z"))]).await;
    assert!(again.is_err(), "appended after a failed write");
}
