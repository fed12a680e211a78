//! Tests of the redb Raft storage: openraft's conformance suite, restart (the state machine
//! comes back from the snapshot plus openraft's replay of the log), snapshots, corruption, and
//! the upgrade from format version 1.

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
    FILE_NAME, FORMAT_VERSION, FORMAT_VERSION_PERSISTED_STATE, LOG, LogStore, META, SM,
    StateMachineStore, StoreError,
};
use super::{encode, encode_image, key, open};
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
    assert_eq!(log.read_vote().await.unwrap(), Some(vote));
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

#[tokio::test]
async fn corrupt_records_are_errors_not_panics() {
    let entries = sample_log();

    // A corrupt entry at the end of the log: open refuses the file.
    let dir = TempDir::new("corrupt-tail");
    let (mut log, _sm) = open(dir.path()).await.unwrap();
    log.blocking_append(entries.clone()).await.unwrap();
    drop((log, _sm));
    poke(dir.path(), |txn| {
        let mut t = txn.open_table(LOG).unwrap();
        t.insert(6, garbage(64, 1).as_slice()).unwrap();
    });
    let err = open(dir.path()).await.err().unwrap();
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");

    // A corrupt entry in the middle: reading it is an error.
    let dir = TempDir::new("corrupt-middle");
    let (mut log, _sm) = open(dir.path()).await.unwrap();
    log.blocking_append(entries.clone()).await.unwrap();
    drop((log, _sm));
    poke(dir.path(), |txn| {
        let mut t = txn.open_table(LOG).unwrap();
        t.insert(3, [0xff; 9].as_slice()).unwrap();
    });
    let (mut log, _sm) = open(dir.path()).await.unwrap();
    let err = log.try_get_log_entries(2..5).await.unwrap_err();
    assert!(err.to_string().contains("log entry 3"), "{err}");
    assert_eq!(log.try_get_log_entries(4..).await.unwrap(), entries[4..]);
    drop((log, _sm));

    // A hole in the log: refused.
    poke(dir.path(), |txn| {
        let mut t = txn.open_table(LOG).unwrap();
        t.remove(3).unwrap();
    });
    let err = open(dir.path()).await.err().unwrap();
    assert!(err.to_string().contains("hole"), "{err}");

    // An entry stored under the wrong index: refused.
    let dir = TempDir::new("corrupt-index");
    let (mut log, _sm) = open(dir.path()).await.unwrap();
    log.blocking_append(entries.clone()).await.unwrap();
    drop((log, _sm));
    poke(dir.path(), |txn| {
        let mut t = txn.open_table(LOG).unwrap();
        let moved = t.get(6).unwrap().unwrap().value().to_vec();
        t.insert(7, moved.as_slice()).unwrap();
        t.remove(6).unwrap();
    });
    let err = open(dir.path()).await.err().unwrap();
    assert!(err.to_string().contains("has log id"), "{err}");

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
async fn a_version_1_file_is_upgraded_and_rebuilt_from_its_snapshot_and_log() {
    let entries = sample_log();
    // The state after the whole log, as a reference.
    let reference = TempDir::new("upgrade-reference");
    let (_log, mut sm) = open(reference.path()).await.unwrap();
    sm.apply(entries.clone()).await.unwrap();
    let expected = digest(&sm).await;
    drop((_log, sm));

    // What version 1 left: a snapshot at 4, the log after it, the committed id, and the image
    // after the last applied batch.
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
    log.save_committed(Some(log_id(2, 6))).await.unwrap();
    sm.apply(entries[5..].to_vec()).await.unwrap();
    let image = sm
        .reader()
        .read(|s| encode_image(&Some(log_id(2, 6)), &StoredMembership::default(), s).unwrap());
    drop((log, sm));
    poke(dir.path(), |txn| {
        let mut meta = txn.open_table(META).unwrap();
        let v = encode(&FORMAT_VERSION_PERSISTED_STATE).unwrap();
        meta.insert(key::FORMAT, v.as_slice()).unwrap();
        let mut t = txn.open_table(SM).unwrap();
        t.insert(key::APPLIED_V1, image.as_slice()).unwrap();
    });

    let (mut log, mut sm) = open(dir.path()).await.unwrap();
    assert_eq!(sm.reader().applied(), 4);
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
}
