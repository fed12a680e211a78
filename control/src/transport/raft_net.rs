//! The client side of Raft over QUIC: openraft's `RaftNetworkFactory` and `RaftNetwork`.
//!
//! One QUIC connection per peer, shared by every client openraft makes for it, dialled at
//! `Member.raft_addr` with the server name `node-{id}.portico.internal` (so the peer must hold
//! that node's certificate). Each RPC opens one bidirectional stream: a [`RaftRequest`] frame
//! out, a [`RaftResponse`] frame back. Connections are established in a task of their own, so
//! an RPC that times out does not abort a handshake the next RPC could use.
//!
//! Errors are mapped so openraft backs off where it should: a peer that cannot be reached or
//! whose connection was lost is `Unreachable`; a failed stream on a live connection is
//! `Network` (retried at once); an RPC past its deadline is `Timeout`; an error the remote
//! `Raft` returned is `RemoteError`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use openraft::error::{
    InstallSnapshotError, NetworkError, PayloadTooLarge, RPCError, RaftError, RemoteError, Timeout,
    Unreachable,
};
use openraft::network::{Backoff, RPCOption, RPCTypes, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use quinn::{Connection, Endpoint};
use tokio::sync::watch;

use super::ca::node_dns_name;
use super::frame::{FrameError, encode_frame, read_frame};
use super::raft_server::{MAX_RAFT_REQUEST, MAX_RAFT_RESPONSE, RaftRequest, RaftResponse};
use crate::raft::store::DurableLog;
use crate::raft::{LogId, Member, NodeId, TypeConfig};

/// How long resolving a peer's address may take.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

type RpcResult<T, E> = Result<T, RPCError<NodeId, Member, E>>;

#[derive(Debug, thiserror::Error)]
enum Failure {
    #[error("cannot resolve {addr:?}: {reason}")]
    Resolve { addr: String, reason: String },
    #[error("cannot connect to node {target} at {addr}: {source}")]
    Connect {
        target: NodeId,
        addr: SocketAddr,
        #[source]
        source: quinn::ConnectError,
    },
    #[error("handshake with node {target} at {addr} failed: {source}")]
    Handshake {
        target: NodeId,
        addr: SocketAddr,
        #[source]
        source: quinn::ConnectionError,
    },
    #[error("connection to node {target} lost: {source}")]
    Lost {
        target: NodeId,
        #[source]
        source: quinn::ConnectionError,
    },
    #[error("raft stream to node {target}: {source}")]
    Stream {
        target: NodeId,
        #[source]
        source: FrameError,
    },
    #[error("node {target} answered a {sent} request with a {got} response")]
    Mismatch {
        target: NodeId,
        sent: &'static str,
        got: &'static str,
    },
    #[error("no connection to node {target} at {addr} within {waited:?}")]
    NotConnected {
        target: NodeId,
        addr: String,
        waited: Duration,
    },
    #[error("connection attempt to node {0} was abandoned")]
    Abandoned(NodeId),
    /// The outcome of a connection attempt shared by several RPCs.
    #[error(transparent)]
    Shared(Arc<Failure>),
}

impl Failure {
    /// Unreachable peers make openraft back off; anything else on a live connection is retried.
    fn into_rpc_error<E: std::error::Error>(self) -> RPCError<NodeId, Member, E> {
        match &self {
            Failure::Resolve { .. }
            | Failure::Connect { .. }
            | Failure::Handshake { .. }
            | Failure::Lost { .. }
            | Failure::NotConnected { .. }
            | Failure::Abandoned(_)
            | Failure::Shared(_) => RPCError::Unreachable(Unreachable::new(&self)),
            Failure::Stream { source, .. } if source.connection_lost().is_some() => {
                RPCError::Unreachable(Unreachable::new(&self))
            }
            Failure::Stream { .. } | Failure::Mismatch { .. } => {
                RPCError::Network(NetworkError::new(&self))
            }
        }
    }
}

/// One connection attempt, and the connection once it is up. Shared by all RPCs to a peer.
struct Attempt {
    addr: String,
    result: watch::Receiver<Option<Result<Connection, Arc<Failure>>>>,
}

#[derive(Default)]
struct Peer {
    attempt: Mutex<Option<Attempt>>,
}

struct Shared {
    node_id: NodeId,
    /// This node's last durable log entry, when its log acknowledges a leader's entries before
    /// they are durable (`raft::store::log`): the commit index sent is never beyond it.
    durable: Option<DurableLog>,
    /// A commit index was held back since [`QuicRaftNetwork::take_held_back`] was last called.
    held_back: AtomicBool,
    endpoint: Endpoint,
    client_config: quinn::ClientConfig,
    peers: Mutex<HashMap<NodeId, Arc<Peer>>>,
}

/// openraft's network factory over QUIC. Cheap to clone; clones share connections.
#[derive(Clone)]
pub struct QuicRaftNetwork {
    shared: Arc<Shared>,
}

impl QuicRaftNetwork {
    /// `node_id` is this node's id (reported in timeouts); `client_config` must offer
    /// [`super::ALPN_RAFT`] and present this node's certificate.
    pub fn new(node_id: NodeId, endpoint: Endpoint, client_config: quinn::ClientConfig) -> Self {
        Self::build(node_id, endpoint, client_config, None)
    }

    /// Like [`Self::new`], for a node whose log acknowledges its own entries early as leader:
    /// no commit index sent goes beyond `durable`.
    pub fn with_durable_log(
        node_id: NodeId,
        endpoint: Endpoint,
        client_config: quinn::ClientConfig,
        durable: DurableLog,
    ) -> Self {
        Self::build(node_id, endpoint, client_config, Some(durable))
    }

    fn build(
        node_id: NodeId,
        endpoint: Endpoint,
        client_config: quinn::ClientConfig,
        durable: Option<DurableLog>,
    ) -> Self {
        QuicRaftNetwork {
            shared: Arc::new(Shared {
                node_id,
                durable,
                held_back: AtomicBool::new(false),
                endpoint,
                client_config,
                peers: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Whether a commit index was held back since the last call: once the log is durable
    /// further, a heartbeat carries it to the followers.
    pub fn take_held_back(&self) -> bool {
        self.shared.held_back.swap(false, Ordering::AcqRel)
    }

    fn peer(&self, target: NodeId) -> Arc<Peer> {
        let mut peers = self
            .shared
            .peers
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        peers.entry(target).or_default().clone()
    }
}

impl RaftNetworkFactory<TypeConfig> for QuicRaftNetwork {
    type Network = QuicRaftClient;

    async fn new_client(&mut self, target: NodeId, node: &Member) -> QuicRaftClient {
        QuicRaftClient {
            shared: self.shared.clone(),
            peer: self.peer(target),
            target,
            member: node.clone(),
        }
    }
}

/// Sends RPCs to one peer.
pub struct QuicRaftClient {
    shared: Arc<Shared>,
    peer: Arc<Peer>,
    target: NodeId,
    member: Member,
}

impl QuicRaftClient {
    /// The peer's connection: the cached one if it is alive and for the current address, else
    /// the attempt in flight, else a new attempt.
    async fn connection(&self) -> Result<Connection, Arc<Failure>> {
        let mut result = {
            let mut slot = self
                .peer
                .attempt
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let reusable = slot
                .as_ref()
                .filter(|a| a.addr == self.member.raft_addr)
                .filter(|a| match &*a.result.borrow() {
                    None => true,
                    Some(Ok(conn)) => conn.close_reason().is_none(),
                    Some(Err(_)) => false,
                });
            match reusable {
                Some(attempt) => attempt.result.clone(),
                None => {
                    if let Some(Attempt { result, .. }) = slot.take()
                        && let Some(Ok(old)) = &*result.borrow()
                    {
                        old.close(0u32.into(), b"reconnecting");
                    }
                    let attempt = self.start_attempt();
                    let result = attempt.result.clone();
                    *slot = Some(attempt);
                    result
                }
            }
        };
        let outcome = match result.wait_for(Option::is_some).await {
            Ok(done) => done.clone(),
            Err(_) => None,
        };
        outcome.unwrap_or_else(|| Err(Arc::new(Failure::Abandoned(self.target))))
    }

    fn start_attempt(&self) -> Attempt {
        let (tx, rx) = watch::channel(None);
        let endpoint = self.shared.endpoint.clone();
        let config = self.shared.client_config.clone();
        let target = self.target;
        let addr = self.member.raft_addr.clone();
        tokio::spawn(async move {
            let outcome = connect(&endpoint, config, target, &addr).await;
            match &outcome {
                Ok(conn) => tracing::debug!(target, remote = %conn.remote_address(), "connected"),
                Err(e) => tracing::debug!(target, error = %e, "cannot connect"),
            }
            let _ = tx.send(Some(outcome.map_err(Arc::new)));
        });
        Attempt {
            addr: self.member.raft_addr.clone(),
            result: rx,
        }
    }

    /// Sends one encoded request frame and reads the response, within the RPC's deadline. A
    /// deadline that passes before the peer is even connected means it is unreachable (so
    /// openraft backs off); one that passes on a live connection is a timeout.
    async fn exchange<E: std::error::Error>(
        &self,
        frame: Vec<u8>,
        action: RPCTypes,
        option: &RPCOption,
    ) -> RpcResult<RaftResponse, E> {
        let deadline = option.soft_ttl();
        let connected = AtomicBool::new(false);
        match tokio::time::timeout(deadline, self.send_and_receive(frame, &connected)).await {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(failure)) => {
                tracing::debug!(target = self.target, error = %failure, "raft rpc failed");
                Err(failure.into_rpc_error())
            }
            Err(_) if !connected.load(Ordering::Relaxed) => Err(Failure::NotConnected {
                target: self.target,
                addr: self.member.raft_addr.clone(),
                waited: deadline,
            }
            .into_rpc_error()),
            Err(_) => Err(RPCError::Timeout(Timeout {
                action,
                id: self.shared.node_id,
                target: self.target,
                timeout: deadline,
            })),
        }
    }

    async fn send_and_receive(
        &self,
        frame: Vec<u8>,
        connected: &AtomicBool,
    ) -> Result<RaftResponse, Failure> {
        let target = self.target;
        let conn = self.connection().await.map_err(Failure::Shared)?;
        connected.store(true, Ordering::Relaxed);
        let (mut send, mut recv) = conn
            .open_bi()
            .await
            .map_err(|source| Failure::Lost { target, source })?;
        let stream = |source: FrameError| match source.connection_lost() {
            Some(lost) => Failure::Lost {
                target,
                source: lost.clone(),
            },
            None => Failure::Stream { target, source },
        };
        send.write_all(&frame)
            .await
            .map_err(|e| stream(FrameError::Write(e)))?;
        let _ = send.finish();
        read_frame::<RaftResponse>(&mut recv, MAX_RAFT_RESPONSE)
            .await
            .map_err(stream)
    }

    // The error type is the one openraft's `RaftNetwork` methods return.
    #[allow(clippy::result_large_err)]
    fn encode<E: std::error::Error>(&self, request: &RaftRequest) -> RpcResult<Vec<u8>, E> {
        encode_frame(request).map_err(|source| {
            Failure::Stream {
                target: self.target,
                source: source.into(),
            }
            .into_rpc_error()
        })
    }

    fn remote<E: std::error::Error>(&self, e: E) -> RPCError<NodeId, Member, E> {
        RPCError::RemoteError(RemoteError::new_with_node(
            self.target,
            self.member.clone(),
            e,
        ))
    }

    fn mismatch<E: std::error::Error>(
        &self,
        sent: &'static str,
        got: &RaftResponse,
    ) -> RPCError<NodeId, Member, E> {
        let got = match got {
            RaftResponse::AppendEntries(_) => "append_entries",
            RaftResponse::Vote(_) => "vote",
            RaftResponse::InstallSnapshot(_) => "install_snapshot",
        };
        Failure::Mismatch {
            target: self.target,
            sent,
            got,
        }
        .into_rpc_error()
    }
}

/// Resolves `addr` and completes a handshake with the node that holds `target`'s certificate.
async fn connect(
    endpoint: &Endpoint,
    config: quinn::ClientConfig,
    target: NodeId,
    addr: &str,
) -> Result<Connection, Failure> {
    let remote = resolve(endpoint, addr).await?;
    let connecting = endpoint
        .connect_with(config, remote, &node_dns_name(target))
        .map_err(|source| Failure::Connect {
            target,
            addr: remote,
            source,
        })?;
    // Bounded by the transport's idle timeout.
    connecting.await.map_err(|source| Failure::Handshake {
        target,
        addr: remote,
        source,
    })
}

/// `host:port` to a socket address, preferring the endpoint's address family.
async fn resolve(endpoint: &Endpoint, addr: &str) -> Result<SocketAddr, Failure> {
    if let Ok(socket) = addr.parse::<SocketAddr>() {
        return Ok(socket);
    }
    let failed = |reason: String| Failure::Resolve {
        addr: addr.to_string(),
        reason,
    };
    let found: Vec<SocketAddr> =
        tokio::time::timeout(RESOLVE_TIMEOUT, tokio::net::lookup_host(addr))
            .await
            .map_err(|_| failed("timed out".into()))?
            .map_err(|e| failed(e.to_string()))?
            .collect();
    let v6 = endpoint.local_addr().map(|a| a.is_ipv6()).unwrap_or(false);
    found
        .iter()
        .find(|a| a.is_ipv6() == v6)
        .or(found.first())
        .copied()
        .ok_or_else(|| failed("no addresses".into()))
}

impl RaftNetwork<TypeConfig> for QuicRaftClient {
    async fn append_entries(
        &mut self,
        mut rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<NodeId>, RaftError<NodeId>> {
        if let Some(durable) = &self.shared.durable
            && hold_back_commit(&mut rpc.leader_commit, durable.last())
        {
            self.shared.held_back.store(true, Ordering::Release);
        }
        let entries = rpc.entries.len() as u64;
        let frame = self.encode(&RaftRequest::AppendEntries(rpc))?;
        if frame.len() > MAX_RAFT_REQUEST {
            // openraft retries at once with fewer entries (one entry too large is unreachable).
            return Err(PayloadTooLarge::new_entries_hint((entries / 2).max(1)).into());
        }
        match self
            .exchange(frame, RPCTypes::AppendEntries, &option)
            .await?
        {
            RaftResponse::AppendEntries(result) => result.map_err(|e| self.remote(e)),
            other => Err(self.mismatch("append_entries", &other)),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>> {
        let frame = self.encode(&RaftRequest::InstallSnapshot(rpc))?;
        match self
            .exchange(frame, RPCTypes::InstallSnapshot, &option)
            .await?
        {
            RaftResponse::InstallSnapshot(result) => result.map_err(|e| self.remote(e)),
            other => Err(self.mismatch("install_snapshot", &other)),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<NodeId>, RaftError<NodeId>> {
        let frame = self.encode(&RaftRequest::Vote(rpc))?;
        match self.exchange(frame, RPCTypes::Vote, &option).await? {
            RaftResponse::Vote(result) => result.map_err(|e| self.remote(e)),
            other => Err(self.mismatch("vote", &other)),
        }
    }

    /// 100 ms, doubling up to 2 s, while a peer stays unreachable.
    fn backoff(&self) -> Backoff {
        Backoff::new((0u32..).map(|i| {
            Duration::from_millis(100)
                .saturating_mul(1u32 << i.min(5))
                .min(Duration::from_secs(2))
        }))
    }
}

/// Lowers the commit index a leader sends to its durable log end; says whether it did.
fn hold_back_commit(leader_commit: &mut Option<LogId>, durable: Option<LogId>) -> bool {
    if *leader_commit > durable {
        *leader_commit = durable;
        return true;
    }
    false
}

#[cfg(test)]
mod hold_back_tests {
    use super::{LogId, hold_back_commit};

    fn id(term: u64, index: u64) -> Option<LogId> {
        Some(LogId::new(openraft::CommittedLeaderId::new(term, 1), index))
    }

    #[test]
    fn the_commit_index_sent_never_passes_the_durable_log() {
        let mut commit = id(2, 9);
        assert!(hold_back_commit(&mut commit, id(2, 7)));
        assert_eq!(commit, id(2, 7));
        let mut commit = id(2, 9);
        assert!(hold_back_commit(&mut commit, None));
        assert_eq!(commit, None);
        for durable in [id(2, 9), id(2, 12)] {
            let mut commit = id(2, 9);
            assert!(!hold_back_commit(&mut commit, durable));
            assert_eq!(commit, id(2, 9));
        }
    }
}
