//! Helpers for the transport's tests: real QUIC endpoints on 127.0.0.1, bounded waits.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use quinn::Endpoint;

use super::ca::{ClusterCa, PeerIdentity};
use super::frame::{read_frame, write_frame};
use super::server::{AlpnRouter, ConnectionTask, ProtocolHandler, ServeLimits, serve};
use super::tls::{TlsIdentity, TransportLimits, client_config, client_crypto, server_crypto};
use super::{ALPN_RAFT, bind_endpoint, stream_code};

pub(crate) fn install_crypto() {
    // Another test may have installed it already.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Awaits `fut`, failing the test if it takes longer than `limit`.
pub(crate) async fn within<F: Future>(limit: Duration, fut: F) -> F::Output {
    match tokio::time::timeout(limit, fut).await {
        Ok(out) => out,
        Err(_) => panic!("timed out after {limit:?}"),
    }
}

pub(crate) fn node_identity(ca: &ClusterCa, node_id: u64) -> TlsIdentity {
    let issued = ca.issue_node(node_id, &["127.0.0.1".into()]).unwrap();
    TlsIdentity::from_issued(ca.cert_pem(), &issued).unwrap()
}

/// An endpoint on 127.0.0.1 that serves and dials `portico-raft/1` as node `node_id`.
pub(crate) fn node_endpoint(ca: &ClusterCa, node_id: u64) -> (Endpoint, quinn::ClientConfig) {
    let identity = node_identity(ca, node_id);
    let limits = TransportLimits::default();
    let client_tls = client_crypto(&identity, &[ALPN_RAFT]).unwrap();
    let endpoint = bind_endpoint(
        "127.0.0.1:0".parse().unwrap(),
        server_crypto(&identity, &[ALPN_RAFT]).unwrap(),
        client_tls.clone(),
        &limits,
    )
    .unwrap();
    (endpoint, client_config(client_tls, &limits).unwrap())
}

/// A client-only endpoint with node `node_id`'s certificate, and its client configuration.
pub(crate) fn node_client_endpoint(
    ca: &ClusterCa,
    node_id: u64,
) -> (Endpoint, quinn::ClientConfig) {
    let identity = node_identity(ca, node_id);
    let config = client_config(
        client_crypto(&identity, &[ALPN_RAFT]).unwrap(),
        &TransportLimits::default(),
    )
    .unwrap();
    let endpoint = Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    (endpoint, config)
}

/// Echoes each stream's one `String` frame, read with a limit of `max` bytes. A bad frame
/// resets the stream, or, with `reply_errors`, is answered with the error's text.
#[derive(Clone)]
struct Echo {
    max: usize,
    reply_errors: bool,
    seen: Arc<Mutex<Vec<PeerIdentity>>>,
}

impl ProtocolHandler for Echo {
    fn serve_connection(&self, conn: quinn::Connection, peer: PeerIdentity) -> ConnectionTask {
        self.seen.lock().unwrap().push(peer);
        let this = self.clone();
        Box::pin(async move {
            while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                let this = this.clone();
                tokio::spawn(async move {
                    let reply = match read_frame::<String>(&mut recv, this.max).await {
                        Ok(msg) => msg,
                        Err(e) if this.reply_errors => e.to_string(),
                        Err(_) => {
                            let _ = send.reset(stream_code::BAD_FRAME);
                            return;
                        }
                    };
                    if write_frame(&mut send, &reply).await.is_ok() {
                        let _ = send.finish();
                    }
                });
            }
        })
    }
}

async fn start_echo(ca: &ClusterCa, node_id: u64, echo: Echo) -> SocketAddr {
    let (endpoint, _) = node_endpoint(ca, node_id);
    let addr = endpoint.local_addr().unwrap();
    let router = AlpnRouter::new().route(ALPN_RAFT, echo);
    tokio::spawn(serve(endpoint, router, ServeLimits::default()));
    addr
}

/// An echo server (frames up to 64 bytes) as node `node_id`; records the identities it served.
pub(crate) async fn echo_server(
    ca: &ClusterCa,
    node_id: u64,
) -> (SocketAddr, Arc<Mutex<Vec<PeerIdentity>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let echo = Echo {
        max: 64,
        reply_errors: false,
        seen: seen.clone(),
    };
    (start_echo(ca, node_id, echo).await, seen)
}

/// A server that answers each frame (up to `max` bytes) with it, or with its error's text.
pub(crate) async fn frame_sink(
    ca: &ClusterCa,
    node_id: u64,
    max: usize,
) -> (SocketAddr, Arc<Mutex<Vec<PeerIdentity>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let echo = Echo {
        max,
        reply_errors: true,
        seen: seen.clone(),
    };
    (start_echo(ca, node_id, echo).await, seen)
}
