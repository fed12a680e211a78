//! The store under a real `openraft::Raft`: one voter, so no network is ever used. Restarts
//! come back to the same state through openraft's start-up replay of the log after the stored
//! snapshot, including after a snapshot and a purge, and when the committed pointer is missing
//! (a damaged meta record, or a store written by an older version).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{AnyError, Config, SnapshotPolicy};

use super::tests::{self, TempDir, api};
use super::{StateReader, StoreError, open};
use crate::raft::{Member, NodeId, Raft, TypeConfig};
use crate::state::{Applied, Command, Proposal, State};

const WAIT: Duration = Duration::from_secs(20);

/// A network for a cluster of one: there is never anyone to call.
struct NoNetwork;

struct NoPeer;

fn no_peer<E: std::error::Error>() -> RPCError<NodeId, Member, E> {
    RPCError::Network(NetworkError::new(&AnyError::error(
        "a single-node test cluster has no peers",
    )))
}

impl RaftNetworkFactory<TypeConfig> for NoNetwork {
    type Network = NoPeer;

    async fn new_client(&mut self, _target: NodeId, _node: &Member) -> NoPeer {
        NoPeer
    }
}

impl RaftNetwork<TypeConfig> for NoPeer {
    async fn append_entries(
        &mut self,
        _rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, Member, RaftError<NodeId>>> {
        Err(no_peer())
    }

    async fn install_snapshot(
        &mut self,
        _rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, Member, RaftError<NodeId, InstallSnapshotError>>,
    > {
        Err(no_peer())
    }

    async fn vote(
        &mut self,
        _rpc: VoteRequest<NodeId>,
        _option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, Member, RaftError<NodeId>>> {
        Err(no_peer())
    }
}

fn config() -> Arc<Config> {
    let config = Config {
        cluster_name: "store-test".into(),
        heartbeat_interval: 100,
        election_timeout_min: 300,
        election_timeout_max: 600,
        // Snapshots only when the test asks; then the whole log up to it is purged.
        snapshot_policy: SnapshotPolicy::Never,
        max_in_snapshot_log_to_keep: 0,
        purge_batch_size: 1,
        ..Default::default()
    };
    Arc::new(config.validate().unwrap())
}

/// Opens the store in `dir` (waiting for the previous instance's tasks to let go of the file)
/// and starts a Raft node 1 over it.
async fn start(dir: &TempDir) -> (Raft, StateReader) {
    let deadline = Instant::now() + WAIT;
    let (log, sm) = loop {
        match open(dir.path()).await {
            Ok(store) => break store,
            Err(StoreError::Open {
                source: redb::DatabaseError::DatabaseAlreadyOpen,
                ..
            }) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("{e}"),
        }
    };
    let reader = sm.reader();
    let raft = Raft::new(1, config(), NoNetwork, log, sm).await.unwrap();
    (raft, reader)
}

async fn stop(raft: Raft) {
    raft.shutdown().await.unwrap();
}

async fn wait_leader(raft: &Raft) {
    raft.wait(Some(WAIT))
        .metrics(|m| m.current_leader == Some(1), "node 1 leads")
        .await
        .unwrap();
}

async fn put(raft: &Raft, i: u64) -> u64 {
    let proposal = Proposal {
        at_ms: 1_700_000_000_000 + i,
        command: Command::PutApi {
            api: api(&format!("api-{i}")),
            if_revision: None,
        },
    };
    let response = raft.client_write(proposal).await.unwrap();
    assert!(
        matches!(response.data, Applied::Done { .. }),
        "{:?}",
        response.data
    );
    response.log_id.index
}

fn digest(reader: &StateReader) -> String {
    reader.read(State::digest)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_replays_its_log_to_the_same_state() {
    let dir = TempDir::new("raft-replay");

    // A new single-node cluster takes 20 writes.
    let (raft, reader) = start(&dir).await;
    let me = Member {
        raft_addr: "127.0.0.1:7443".into(),
        admin_addr: "127.0.0.1:7070".into(),
    };
    raft.initialize(BTreeMap::from([(1, me)])).await.unwrap();
    wait_leader(&raft).await;
    let mut last = 0;
    for i in 0..20 {
        last = put(&raft, i).await;
    }
    assert_eq!(reader.applied(), last);
    let first_digest = digest(&reader);
    stop(raft).await;

    // Restart with no snapshot: `Raft::new` re-applies the whole log before it returns.
    let (raft, reader) = start(&dir).await;
    assert_eq!(reader.applied(), last);
    assert_eq!(digest(&reader), first_digest);
    wait_leader(&raft).await;

    // More writes, a snapshot, the log purged up to it, and writes after it.
    for i in 20..30 {
        last = put(&raft, i).await;
    }
    raft.trigger().snapshot().await.unwrap();
    let snapshot_at = last;
    raft.wait(Some(WAIT))
        .metrics(
            |m| m.snapshot.map(|s| s.index) == Some(snapshot_at),
            "a snapshot at the last write",
        )
        .await
        .unwrap();
    raft.wait(Some(WAIT))
        .metrics(
            |m| m.purged.map(|p| p.index) == Some(snapshot_at),
            "the log purged up to the snapshot",
        )
        .await
        .unwrap();
    for i in 30..35 {
        last = put(&raft, i).await;
    }
    let second_digest = digest(&reader);
    stop(raft).await;

    // Restart: the snapshot, then the five entries after it, replayed before `Raft::new` returns.
    let (raft, reader) = start(&dir).await;
    assert_eq!(reader.applied(), last);
    assert_eq!(digest(&reader), second_digest);
    wait_leader(&raft).await;
    let metrics = raft.metrics().borrow().clone();
    assert_eq!(metrics.purged.map(|p| p.index), Some(snapshot_at));
    assert_eq!(metrics.snapshot.map(|s| s.index), Some(snapshot_at));
    stop(raft).await;

    // Without a committed pointer the node starts from the snapshot, and the entries after it
    // are applied again once they are committed again.
    {
        let last = tests::segments(dir.path()).pop().unwrap();
        let end = tests::records_end(&std::fs::read(&last).unwrap());
        let none = super::encode(&None::<crate::raft::LogId>).unwrap();
        tests::write_at(
            &last,
            end,
            &super::wal::raw_record(super::wal::KIND_COMMITTED, &none),
        );
    }
    let (raft, reader) = start(&dir).await;
    assert_eq!(reader.applied(), snapshot_at);
    wait_leader(&raft).await;
    reader.wait_applied(last).await.unwrap();
    // A new term may have added a blank entry, which moves only the revision.
    let mut state = (*reader.load()).clone();
    state.revision = last;
    assert_eq!(state.digest(), second_digest);
    let after_crash = put(&raft, 35).await;
    assert!(after_crash > last);
    assert!(reader.read(|s| s.apis.contains_key("api-35")));
    stop(raft).await;
}
