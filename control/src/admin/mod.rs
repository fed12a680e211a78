//! The admin API: JSON over HTTP under `/v1/`, bearer tokens with roles.
//!
//! Any control node answers. Writes, and reads that ask for linearizability (the default), run
//! on the leader: a follower forwards the request as it came and relays the answer. With no
//! leader (no quorum) the answer is 503 with `Retry-After`, within a bounded time.

pub mod auth;
pub mod client;
pub mod edges;
mod openapi;
mod routes;

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::json;
use tokio::net::TcpListener;

use crate::raft::{Member, NodeId};
use crate::state::{Applied, Command, Rejection, State};

pub use routes::handle;

/// Request bodies larger than this are refused (a declarative document is at most 16 MiB).
pub const MAX_BODY: usize = portico_proto::document::MAX_DOCUMENT_BYTES + 64 * 1024;
/// How long a write may wait for its commit before the client is told to retry.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// Marks a request a follower forwarded, so it is never forwarded twice.
pub const FORWARDED: &str = "x-portico-forwarded";

/// What the admin API needs from the control node it runs on.
pub trait Backend: Send + Sync + 'static {
    /// The applied state, as of now on this node.
    fn state(&self) -> Arc<State>;
    /// Proposes a command (this node must be the leader) and waits until it is applied here.
    fn propose(
        &self,
        command: Command,
    ) -> impl Future<Output = Result<Applied, ProposeError>> + Send;
    /// Waits until this node's state reflects every write committed before the call.
    fn read_barrier(&self) -> impl Future<Output = Result<(), ProposeError>> + Send;
    /// Members, leader, term, indexes and lag, as JSON.
    fn cluster_status(&self) -> serde_json::Value;
    /// `None` on the leader; otherwise where the leader's admin API is, when one is known.
    fn leader_elsewhere(&self) -> Option<Option<String>>;
    /// Admits a new control node as a learner and issues its certificate (leader only).
    fn join(&self, member: Member) -> impl Future<Output = Result<JoinGrant, ProposeError>> + Send;
    /// Makes a learner a voter (leader only).
    fn promote(&self, id: NodeId) -> impl Future<Output = Result<(), ProposeError>> + Send;
    /// Removes a member, voter or learner (leader only).
    fn remove_member(&self, id: NodeId) -> impl Future<Output = Result<(), ProposeError>> + Send;
    /// The edges connected to this node, as JSON (`{"node", "items"}`).
    fn local_edges(&self) -> serde_json::Value;
    /// Every enrolled edge with the freshest status any member reports (see [`edges`]); asks
    /// the other members with the caller's `authorization`.
    fn cluster_edges(
        &self,
        authorization: Option<String>,
    ) -> impl Future<Output = serde_json::Value> + Send;
    /// Prometheus text of this node's metrics.
    fn metrics(&self) -> String;
}

/// What a joining node needs to start: its id and identity in the cluster.
#[derive(Clone, serde::Serialize, serde::Deserialize)]
pub struct JoinGrant {
    pub node_id: NodeId,
    pub cluster_name: String,
    pub ca_cert_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
    /// The leader's applied revision when the node was admitted.
    pub revision: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ProposeError {
    /// This node is not the leader; the leader's admin address when one is known.
    #[error("this node is not the leader")]
    NotLeader { leader_admin: Option<String> },
    #[error("no quorum: the write could not be committed in time")]
    NoQuorum,
    #[error("{0}")]
    Rejected(Rejection),
    #[error("{0}")]
    Internal(String),
}

/// TLS for the admin API: the certificate to serve with (HTTPS when set), and trust for the
/// leader's certificate when forwarding.
#[derive(Clone)]
pub struct AdminTls {
    pub server: Option<Arc<rustls::ServerConfig>>,
    pub client: Option<Arc<rustls::ClientConfig>>,
}

pub async fn serve<B: Backend>(listener: TcpListener, backend: Arc<B>, tls: AdminTls) {
    let acceptor = tls.server.clone().map(tokio_rustls::TlsAcceptor::from);
    let forward_tls = tls.client.clone();
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "admin accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let (backend, acceptor, forward_tls) =
            (backend.clone(), acceptor.clone(), forward_tls.clone());
        tokio::spawn(async move {
            let result = match acceptor {
                None => serve_connection(tcp, backend, forward_tls).await,
                Some(acceptor) => {
                    match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await
                    {
                        Ok(Ok(stream)) => serve_connection(stream, backend, forward_tls).await,
                        Ok(Err(e)) => Err(e.to_string()),
                        Err(_) => Err("TLS handshake timed out".to_string()),
                    }
                }
            };
            if let Err(e) = result {
                tracing::debug!(peer = %peer, error = %e, "admin connection error");
            }
        });
    }
}

async fn serve_connection<IO, B>(
    io: IO,
    backend: Arc<B>,
    forward_tls: Option<Arc<rustls::ClientConfig>>,
) -> Result<(), String>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    B: Backend,
{
    let service = service_fn(move |req| {
        let (backend, forward_tls) = (backend.clone(), forward_tls.clone());
        async move { Ok::<_, Infallible>(respond(backend, forward_tls, req).await) }
    });
    hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(10))
        .max_buf_size(64 * 1024)
        .serve_connection(TokioIo::new(io), service)
        .await
        .map_err(|e| e.to_string())
}

async fn respond<B: Backend>(
    backend: Arc<B>,
    forward_tls: Option<Arc<rustls::ClientConfig>>,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    let body = match Limited::new(body, MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                &format!("the request body could not be read or exceeds {MAX_BODY} bytes: {e}"),
                &[],
            );
        }
    };
    let req = Request::from_parts(parts, body);
    match routes::handle(backend.as_ref(), &req).await {
        Outcome::Done(response) => response,
        Outcome::Forward { leader_admin } => {
            forward(&req, leader_admin, forward_tls.as_ref()).await
        }
    }
}

/// What a route handler decided.
pub enum Outcome {
    Done(Response<Full<Bytes>>),
    /// Only the leader can answer; relay the request to it.
    Forward {
        leader_admin: Option<String>,
    },
}

async fn forward(
    req: &Request<Bytes>,
    leader_admin: Option<String>,
    tls: Option<&Arc<rustls::ClientConfig>>,
) -> Response<Full<Bytes>> {
    let Some(leader) = leader_admin else {
        return unavailable("no leader is known (no quorum?); retry shortly");
    };
    if req.headers().contains_key(FORWARDED) {
        return unavailable("leadership is changing; retry shortly");
    }
    let mut out = Request::builder()
        .method(req.method())
        .uri(req.uri().path_and_query().map_or("/", |p| p.as_str()))
        .header(header::HOST, client::parse_target(&leader).1)
        .header(FORWARDED, "1");
    for name in [
        header::AUTHORIZATION,
        header::CONTENT_TYPE,
        header::IF_MATCH,
    ] {
        if let Some(v) = req.headers().get(&name) {
            out = out.header(name, v);
        }
    }
    let Ok(out) = out.body(Full::new(req.body().clone())) else {
        return unavailable("the request could not be forwarded");
    };
    match client::send(&leader, tls, out, WRITE_TIMEOUT + Duration::from_secs(1)).await {
        Ok(resp) => resp.map(Full::new),
        Err(e) => unavailable(&format!("the leader at {leader} could not be reached: {e}")),
    }
}

pub fn json_response(status: StatusCode, value: &serde_json::Value) -> Response<Full<Bytes>> {
    let mut body = serde_json::to_vec_pretty(value).unwrap_or_default();
    body.push(b'\n');
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// `{"error": {"type", "message", "fields": [{"path", "message"}]}}`.
pub fn error(
    status: StatusCode,
    kind: &str,
    message: &str,
    fields: &[(String, String)],
) -> Response<Full<Bytes>> {
    let fields: Vec<_> = fields
        .iter()
        .map(|(p, m)| json!({"path": p, "message": m}))
        .collect();
    json_response(
        status,
        &json!({"error": {"type": kind, "message": message, "fields": fields}}),
    )
}

pub fn unavailable(message: &str) -> Response<Full<Bytes>> {
    let mut r = error(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message, &[]);
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    r
}
