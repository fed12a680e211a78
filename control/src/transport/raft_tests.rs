//! Raft over real QUIC endpoints on 127.0.0.1: in-process `openraft::Raft` instances with the
//! in-memory test store, each serving `portico-raft/1` on its own endpoint.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use openraft::{Config, SnapshotPolicy, Vote};
use quinn::Endpoint;

use super::ca::ClusterCa;
use super::frame::{FrameError, encode_frame, read_frame, write_frame};
use super::raft_net::QuicRaftNetwork;
use super::raft_server::{RaftRequest, RaftResponse, serve_raft};
use super::server::ServeLimits;
use super::test_support::{install_crypto, node_client_endpoint, node_endpoint, within};
use super::tls::{TlsIdentity, TransportLimits, client_config, client_crypto};
use super::{ALPN_RAFT, close_code, node_dns_name, stream_code};
use crate::raft::store::tests::TempDir;
use crate::raft::store::{self, LogStore, StateReader};
use crate::raft::{Member, NodeId, Raft};
use crate::state::{Applied, Command, Proposal, Role, TokenRecord};

const WAIT: Duration = Duration::from_secs(20);

struct Node {
    id: NodeId,
    raft: Raft,
    state: StateReader,
    log: LogStore,
    endpoint: Endpoint,
    _dir: TempDir,
}

impl Node {
    fn member(&self) -> Member {
        Member {
            raft_addr: self.endpoint.local_addr().unwrap().to_string(),
            admin_addr: "127.0.0.1:7070".into(),
        }
    }
}

fn raft_config(snapshot_every: Option<u64>) -> Arc<Config> {
    let mut config = Config {
        cluster_name: "transport-test".into(),
        heartbeat_interval: 100,
        election_timeout_min: 400,
        election_timeout_max: 800,
        ..Default::default()
    };
    if let Some(n) = snapshot_every {
        config.snapshot_policy = SnapshotPolicy::LogsSinceLast(n);
        config.max_in_snapshot_log_to_keep = 0;
        config.purge_batch_size = 1;
    }
    Arc::new(config.validate().unwrap())
}

async fn start_node(ca: &ClusterCa, id: NodeId, snapshot_every: Option<u64>) -> Node {
    let (endpoint, client) = node_endpoint(ca, id);
    let dir = TempDir::new("transport");
    let (log, sm) = store::open(dir.path()).await.unwrap();
    // As `run::start` sets a node up: a leader acknowledges its own entries early, and sends
    // no commit index beyond its durable log.
    let durable = log.acknowledge_early(id);
    let network = QuicRaftNetwork::with_durable_log(id, endpoint.clone(), client, durable);
    let state = sm.reader();
    let raft = Raft::new(id, raft_config(snapshot_every), network, log.clone(), sm)
        .await
        .unwrap();
    tokio::spawn(serve_raft(
        endpoint.clone(),
        raft.clone(),
        ServeLimits::default(),
    ));
    Node {
        id,
        raft,
        state,
        log,
        endpoint,
        _dir: dir,
    }
}

async fn start_cluster(ca: &ClusterCa, size: u64, snapshot_every: Option<u64>) -> Vec<Node> {
    let mut nodes = Vec::new();
    for id in 1..=size {
        nodes.push(start_node(ca, id, snapshot_every).await);
    }
    let members: BTreeMap<NodeId, Member> = nodes.iter().map(|n| (n.id, n.member())).collect();
    nodes[0].raft.initialize(members).await.unwrap();
    nodes
}

async fn leader(nodes: &[Node]) -> NodeId {
    let metrics = within(
        WAIT,
        nodes[0]
            .raft
            .wait(None)
            .metrics(|m| m.current_leader.is_some(), "a leader is elected"),
    )
    .await
    .unwrap();
    metrics.current_leader.unwrap()
}

fn token(i: u32) -> Proposal {
    Proposal {
        at_ms: 1_700_000_000_000 + u64::from(i),
        command: Command::CreateToken {
            token: TokenRecord {
                id: format!("tok-{i}"),
                name: format!("token {i}"),
                role: Role::Viewer,
                secret_sha256: format!("{i:064x}"),
            },
        },
    }
}

/// Writes through the leader, following a ForwardToLeader once if leadership moved.
async fn write(nodes: &[Node], proposal: Proposal) -> u64 {
    let mut target = leader(nodes).await;
    for _ in 0..5 {
        let node = nodes.iter().find(|n| n.id == target).unwrap();
        match within(WAIT, node.raft.client_write(proposal.clone())).await {
            Ok(response) => {
                assert!(
                    matches!(response.data, Applied::Done { .. }),
                    "{:?}",
                    response.data
                );
                return response.log_id.index;
            }
            Err(e) => match e.forward_to_leader::<Member>().and_then(|f| f.leader_id) {
                Some(next) => target = next,
                None => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    target = leader(nodes).await;
                }
            },
        }
    }
    panic!("no leader accepted the write");
}

async fn wait_applied(node: &Node, index: u64) {
    within(
        WAIT,
        node.raft
            .wait(None)
            .applied_index_at_least(Some(index), format!("node {} applies {index}", node.id)),
    )
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_elect_a_leader_and_replicate_over_quic() {
    install_crypto();
    let ca = ClusterCa::generate("test").unwrap();
    let nodes = start_cluster(&ca, 3, None).await;
    leader(&nodes).await;

    let mut last = 0;
    for i in 0..5 {
        last = write(&nodes, token(i)).await;
    }
    for node in &nodes {
        wait_applied(node, last).await;
        let state = node.state.load();
        let ids: Vec<&String> = state.tokens.keys().collect();
        assert_eq!(
            ids,
            vec!["tok-0", "tok-1", "tok-2", "tok-3", "tok-4"],
            "node {}",
            node.id
        );
    }
    let digests: Vec<String> = nodes.iter().map(|n| n.state.load().digest()).collect();
    assert!(digests.windows(2).all(|w| w[0] == w[1]), "{digests:?}");

    // A follower goes away: the two others still commit (the leader backs off from it).
    let leader_id = leader(&nodes).await;
    let follower = nodes.iter().find(|n| n.id != leader_id).unwrap();
    follower.raft.shutdown().await.unwrap();
    follower.endpoint.close(0u32.into(), b"test stops the node");
    let rest: Vec<&Node> = nodes.iter().filter(|n| n.id != follower.id).collect();
    let index = write(&nodes, token(5)).await;
    for node in rest {
        wait_applied(node, index).await;
        assert!(node.state.load().tokens.contains_key("tok-5"));
    }
}

/// A leader whose disk fails after it acknowledged its own entry early must step out of the
/// way: it can commit nothing more, and while it kept heartbeating no one else would stand.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_whose_log_write_fails_stops_and_the_others_elect_a_new_one() {
    install_crypto();
    let ca = ClusterCa::generate("test").unwrap();
    let nodes = start_cluster(&ca, 3, None).await;
    let first = write(&nodes, token(0)).await;
    for node in &nodes {
        wait_applied(node, first).await;
    }

    let old = leader(&nodes).await;
    let failing = nodes.iter().find(|n| n.id == old).unwrap();
    // The leader acknowledges its entry to itself and replicates it while its write waits;
    // a follower's copy commits it, so the leader queues the new commit index, the last thing
    // it writes, before the write fails. After that it has nothing left to write and would
    // never learn of the failure from a write of its own.
    let release = failing.log.hold_writer();
    failing.log.fail_writes();
    let answer = tokio::spawn({
        let raft = failing.raft.clone();
        async move { raft.client_write(token(1)).await }
    });
    let next = first + 1;
    within(
        WAIT,
        failing.raft.wait(None).metrics(
            |m| {
                m.replication.as_ref().is_some_and(|r| {
                    r.len() == 3
                        && r.values()
                            .all(|matched| matched.is_some_and(|m| m.index >= next))
                })
            },
            "both followers hold the entry",
        ),
    )
    .await
    .unwrap();
    drop(release);
    // Never applied there: its answer is an error, not a hang.
    let answer = within(WAIT, answer).await.unwrap();
    assert!(answer.is_err(), "a write whose log write failed succeeded");

    // No further write is needed for the others to notice: no other call reaches the failed
    // leader, so only its stopped heartbeats can tell them.
    let rest: Vec<&Node> = nodes.iter().filter(|n| n.id != old).collect();
    for node in &rest {
        within(
            WAIT,
            node.raft.wait(None).metrics(
                |m| m.current_leader.is_some_and(|l| l != old),
                "a leader other than the failed one",
            ),
        )
        .await
        .unwrap();
    }
    // Not `write`: it asks nodes[0], which may be the stopped leader, where the leader is.
    let new = rest[0].raft.metrics().borrow().current_leader.unwrap();
    let new_leader = rest.iter().find(|n| n.id == new).unwrap();
    let index = within(WAIT, new_leader.raft.client_write(token(2)))
        .await
        .unwrap()
        .log_id
        .index;
    for node in &rest {
        wait_applied(node, index).await;
        assert!(node.state.load().tokens.contains_key("tok-2"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_learner_catches_up_from_a_snapshot_sent_over_quic() {
    install_crypto();
    let ca = ClusterCa::generate("test").unwrap();
    let nodes = start_cluster(&ca, 1, Some(3)).await;
    let mut last = 0;
    for i in 0..10 {
        last = write(&nodes, token(i)).await;
    }
    // Wait until the log has been purged behind a snapshot, so the learner needs the snapshot.
    within(
        WAIT,
        nodes[0]
            .raft
            .wait(None)
            .metrics(|m| m.purged.is_some_and(|p| p.index >= 3), "log purged"),
    )
    .await
    .unwrap();

    let learner = start_node(&ca, 2, Some(3)).await;
    let added = within(WAIT, nodes[0].raft.add_learner(2, learner.member(), true))
        .await
        .unwrap();
    // Both have applied everything, the membership change included.
    let applied = added.log_id.index;
    assert!(applied > last);
    wait_applied(&nodes[0], applied).await;
    wait_applied(&learner, applied).await;
    assert_eq!(learner.state.load().tokens.len(), 10);
    let (a, b) = (learner.state.load(), nodes[0].state.load());
    assert_eq!(
        a.digest(),
        b.digest(),
        "learner {a:?}\nleader {b:?}\napplied {applied}"
    );
    let snapshot = learner.raft.metrics().borrow().snapshot;
    assert!(snapshot.is_some(), "the learner installed a snapshot");
}

/// One raw exchange on a new stream of `conn`: `bytes` out, one response frame back.
async fn raw(conn: &quinn::Connection, bytes: &[u8]) -> Result<RaftResponse, FrameError> {
    let (mut send, mut recv) = conn.open_bi().await.map_err(quinn::ReadError::from)?;
    send.write_all(bytes).await?;
    let _ = send.finish();
    read_frame(&mut recv, 1 << 20).await
}

fn vote_from(node: NodeId) -> RaftRequest {
    RaftRequest::Vote(openraft::raft::VoteRequest {
        vote: Vote::new(0, node),
        last_log_id: None,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_raft_server_survives_bad_streams_and_refuses_strangers() {
    install_crypto();
    let ca = ClusterCa::generate("test").unwrap();
    let nodes = start_cluster(&ca, 1, None).await;
    leader(&nodes).await;
    let server = nodes[0].endpoint.local_addr().unwrap();

    // A node that is not a member connects; its streams are served one by one.
    let (client, config) = node_client_endpoint(&ca, 9);
    let conn = within(WAIT, async {
        client
            .connect_with(config, server, &node_dns_name(1))
            .unwrap()
            .await
            .unwrap()
    })
    .await;

    // Garbage in a well-sized frame: that stream is reset.
    let bad = within(WAIT, raw(&conn, &[0, 0, 0, 4, 0, 1, 0xff, 0xff])).await;
    assert!(
        matches!(bad, Err(FrameError::Read(quinn::ReadError::Reset(code))) if code == stream_code::BAD_FRAME),
        "{bad:?}"
    );
    // A length prefix over 64 MiB: reset at once, without waiting for (or allocating) the body.
    let big = within(WAIT, raw(&conn, &(100u32 << 20).to_be_bytes())).await;
    assert!(
        matches!(big, Err(FrameError::Read(quinn::ReadError::Reset(code))) if code == stream_code::BAD_FRAME),
        "{big:?}"
    );
    // A request in another node's name.
    let forged = within(WAIT, raw(&conn, &encode_frame(&vote_from(1)).unwrap())).await;
    assert!(
        matches!(forged, Err(FrameError::Read(quinn::ReadError::Reset(code))) if code == stream_code::FORBIDDEN),
        "{forged:?}"
    );
    // The same connection still serves a good request.
    let good = within(WAIT, raw(&conn, &encode_frame(&vote_from(9)).unwrap())).await;
    match good {
        Ok(RaftResponse::Vote(Ok(response))) => assert!(!response.vote_granted),
        other => panic!("{other:?}"),
    }
    assert!(conn.close_reason().is_none());

    // An edge may not speak Raft: its connection is closed.
    let edge = ca.issue_edge("e1", "eu-west").unwrap();
    let identity = TlsIdentity::from_issued(ca.cert_pem(), &edge).unwrap();
    let edge_config = client_config(
        client_crypto(&identity, &[ALPN_RAFT]).unwrap(),
        &TransportLimits::default(),
    )
    .unwrap();
    let reason = within(WAIT, async {
        let conn = client
            .connect_with(edge_config, server, &node_dns_name(1))
            .unwrap()
            .await
            .unwrap();
        if let Ok((mut send, _recv)) = conn.open_bi().await {
            let _ = write_frame(&mut send, &vote_from(9)).await;
        }
        conn.closed().await
    })
    .await;
    assert!(
        matches!(&reason, quinn::ConnectionError::ApplicationClosed(c) if c.error_code == close_code::FORBIDDEN),
        "{reason:?}"
    );

    // The cluster is unharmed.
    let index = write(&nodes, token(1)).await;
    wait_applied(&nodes[0], index).await;
}
