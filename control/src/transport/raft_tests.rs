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
use crate::raft::store::{self, StateReader};
use crate::raft::{Member, NodeId, Raft};
use crate::state::{Applied, Command, Proposal, Role, TokenRecord};

const WAIT: Duration = Duration::from_secs(20);

struct Node {
    id: NodeId,
    raft: Raft,
    state: StateReader,
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
    let network = QuicRaftNetwork::new(id, endpoint.clone(), client);
    let dir = TempDir::new("transport");
    let (log, sm) = store::open(dir.path()).await.unwrap();
    let state = sm.reader();
    let raft = Raft::new(id, raft_config(snapshot_every), network, log, sm)
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
