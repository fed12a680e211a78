//! The server side of Raft over QUIC (`portico-raft/1`): each bidirectional stream carries one
//! [`RaftRequest`] frame and gets one [`RaftResponse`] frame back. Only control nodes may speak
//! it, and a node may only send requests in its own name.

use std::time::Duration;

use openraft::error::{InstallSnapshotError, RaftError};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use quinn::{Connection, RecvStream, SendStream};
use serde::{Deserialize, Serialize};
use tracing::Instrument;

use super::ca::PeerIdentity;
use super::frame::{FrameError, read_frame, write_frame};
use super::server::{AlpnRouter, ConnectionTask, ProtocolHandler, ServeLimits, serve};
use super::{ALPN_RAFT, close_code, stream_code};
use crate::raft::{NodeId, Raft, TypeConfig};

/// The largest request frame a server reads. Snapshots travel in chunks (openraft's
/// `snapshot_max_chunk_size`, 3 MiB by default); an append-entries batch that would exceed
/// this is split by the sender (see [`super::raft_net`]).
pub const MAX_RAFT_REQUEST: usize = 64 * 1024 * 1024;
/// The largest response frame a client reads: responses carry votes, log ids and errors.
pub const MAX_RAFT_RESPONSE: usize = 1024 * 1024;

/// One Raft RPC, as sent on a `portico-raft/1` stream.
#[derive(Debug, Serialize, Deserialize)]
pub enum RaftRequest {
    AppendEntries(AppendEntriesRequest<TypeConfig>),
    Vote(VoteRequest<NodeId>),
    InstallSnapshot(InstallSnapshotRequest<TypeConfig>),
}

/// The answer to a [`RaftRequest`]: the remote `Raft`'s result, errors included.
#[derive(Debug, Serialize, Deserialize)]
pub enum RaftResponse {
    AppendEntries(Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>),
    Vote(Result<VoteResponse<NodeId>, RaftError<NodeId>>),
    InstallSnapshot(
        Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>,
    ),
}

impl RaftRequest {
    pub fn kind(&self) -> &'static str {
        match self {
            RaftRequest::AppendEntries(_) => "append_entries",
            RaftRequest::Vote(_) => "vote",
            RaftRequest::InstallSnapshot(_) => "install_snapshot",
        }
    }

    /// The node the request speaks for: the leader or candidate whose vote it carries.
    pub fn sender(&self) -> Option<NodeId> {
        let vote = match self {
            RaftRequest::AppendEntries(rpc) => &rpc.vote,
            RaftRequest::Vote(rpc) => &rpc.vote,
            RaftRequest::InstallSnapshot(rpc) => &rpc.vote,
        };
        vote.leader_id().voted_for()
    }
}

/// How long a server waits for a stream's request frame.
pub const RAFT_REQUEST_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// The `portico-raft/1` handler for an [`AlpnRouter`].
#[derive(Clone)]
pub struct RaftService {
    raft: Raft,
    max_request: usize,
    read_timeout: Duration,
}

impl RaftService {
    pub fn new(raft: Raft) -> Self {
        RaftService {
            raft,
            max_request: MAX_RAFT_REQUEST,
            read_timeout: RAFT_REQUEST_READ_TIMEOUT,
        }
    }

    /// Overrides [`MAX_RAFT_REQUEST`].
    pub fn with_max_request(mut self, bytes: usize) -> Self {
        self.max_request = bytes;
        self
    }

    /// Overrides [`RAFT_REQUEST_READ_TIMEOUT`].
    pub fn with_read_timeout(mut self, timeout: Duration) -> Self {
        self.read_timeout = timeout;
        self
    }

    async fn run(self, conn: Connection, peer: PeerIdentity) {
        let PeerIdentity::Node(peer_id) = peer else {
            tracing::warn!("refusing Raft from a peer that is not a control node");
            conn.close(close_code::FORBIDDEN, b"raft requires a node certificate");
            return;
        };
        loop {
            let (send, recv) = match conn.accept_bi().await {
                Ok(streams) => streams,
                Err(e) => {
                    tracing::debug!(error = %e, "raft connection done");
                    return;
                }
            };
            let span = tracing::debug_span!("raft_rpc", stream = %send.id());
            tokio::spawn(
                self.clone()
                    .serve_stream(peer_id, send, recv)
                    .instrument(span),
            );
        }
    }

    /// Serves one stream. Every failure stays inside the stream: it is logged and the stream
    /// is reset, and the connection and its other streams carry on.
    async fn serve_stream(self, peer: NodeId, mut send: SendStream, mut recv: RecvStream) {
        let read = read_frame::<RaftRequest>(&mut recv, self.max_request);
        let request = match tokio::time::timeout(self.read_timeout, read).await {
            Ok(Ok(request)) => request,
            Err(_) => {
                tracing::warn!(timeout = ?self.read_timeout, "no Raft request in time; resetting the stream");
                let _ = recv.stop(stream_code::BAD_FRAME);
                let _ = send.reset(stream_code::BAD_FRAME);
                return;
            }
            Ok(Err(e)) => {
                log_bad_request(&e);
                let _ = recv.stop(stream_code::BAD_FRAME);
                let _ = send.reset(stream_code::BAD_FRAME);
                return;
            }
        };
        if request.sender() != Some(peer) {
            tracing::warn!(
                rpc = request.kind(),
                claimed = ?request.sender(),
                "refusing a Raft request sent in another node's name"
            );
            let _ = send.reset(stream_code::FORBIDDEN);
            return;
        }
        tracing::trace!(rpc = request.kind(), "raft request");
        let response = match request {
            RaftRequest::AppendEntries(rpc) => {
                RaftResponse::AppendEntries(self.raft.append_entries(rpc).await)
            }
            RaftRequest::Vote(rpc) => RaftResponse::Vote(self.raft.vote(rpc).await),
            RaftRequest::InstallSnapshot(rpc) => {
                RaftResponse::InstallSnapshot(self.raft.install_snapshot(rpc).await)
            }
        };
        if let Err(e) = write_frame(&mut send, &response).await {
            // Usually the client gave up (its RPC timed out) and stopped the stream.
            tracing::debug!(error = %e, "cannot send the Raft response");
            return;
        }
        let _ = send.finish();
    }
}

fn log_bad_request(e: &FrameError) {
    match e {
        FrameError::Closed | FrameError::Read(_) => {
            tracing::debug!(error = %e, "raft stream ended without a request")
        }
        _ => tracing::warn!(error = %e, "bad Raft request frame; resetting the stream"),
    }
}

impl ProtocolHandler for RaftService {
    fn serve_connection(&self, conn: Connection, peer: PeerIdentity) -> ConnectionTask {
        Box::pin(self.clone().run(conn, peer))
    }
}

/// Serves Raft alone on `endpoint` until it is closed. Use [`AlpnRouter`] and
/// [`super::serve`] directly to serve more protocols on the same endpoint.
pub async fn serve_raft(endpoint: quinn::Endpoint, raft: Raft, limits: ServeLimits) {
    let router = AlpnRouter::new().route(ALPN_RAFT, RaftService::new(raft));
    serve(endpoint, router, limits).await
}
