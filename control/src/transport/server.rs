//! The accept loop of a control node's QUIC endpoint: one task per connection, dispatched by
//! the negotiated ALPN protocol to a [`ProtocolHandler`], after the peer certificate's
//! identity has been read.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use quinn::{Connection, Endpoint, Incoming};
use tracing::Instrument;

use super::ca::{IdentityError, PeerIdentity, peer_identity};
use super::close_code;

/// What a handler returns for one connection: runs until the connection is done.
pub type ConnectionTask = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// Serves the connections of one ALPN protocol. The TLS layer has verified the peer's chain
/// against the cluster CA; the handler decides whether `peer` may speak its protocol.
pub trait ProtocolHandler: Send + Sync + 'static {
    fn serve_connection(&self, conn: Connection, peer: PeerIdentity) -> ConnectionTask;
}

/// ALPN protocol name → handler. The server's TLS configuration should offer exactly
/// [`AlpnRouter::protocols`].
#[derive(Clone, Default)]
pub struct AlpnRouter {
    handlers: HashMap<Vec<u8>, Arc<dyn ProtocolHandler>>,
    /// Protocols a peer without a certificate may speak (the TLS layer lets such peers in
    /// only when the server's verifier allows it: [`super::tls::server_crypto_with_enrolment`]).
    anonymous: HashSet<Vec<u8>>,
}

impl fmt::Debug for AlpnRouter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<String> = self
            .protocols()
            .iter()
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .collect();
        f.debug_struct("AlpnRouter")
            .field("protocols", &names)
            .finish()
    }
}

impl AlpnRouter {
    pub fn new() -> Self {
        Self::default()
    }

    /// Routes connections that negotiated `alpn` to `handler` (replacing any previous one).
    pub fn route(mut self, alpn: &[u8], handler: impl ProtocolHandler) -> Self {
        self.handlers.insert(alpn.to_vec(), Arc::new(handler));
        self
    }

    /// Routes `alpn` to `handler`, for peers without a certificate too (they reach the handler
    /// as [`PeerIdentity::Anonymous`]).
    pub fn route_anonymous(mut self, alpn: &[u8], handler: impl ProtocolHandler) -> Self {
        self.anonymous.insert(alpn.to_vec());
        self.route(alpn, handler)
    }

    /// The routed protocols, sorted.
    pub fn protocols(&self) -> Vec<Vec<u8>> {
        let mut protocols: Vec<Vec<u8>> = self.handlers.keys().cloned().collect();
        protocols.sort();
        protocols
    }

    fn handler(&self, alpn: &[u8]) -> Option<&Arc<dyn ProtocolHandler>> {
        self.handlers.get(alpn)
    }
}

/// Limits of the accept loop.
#[derive(Debug, Clone)]
pub struct ServeLimits {
    /// Connections served at once; more are refused.
    pub max_connections: usize,
    /// Of those, connections without a certificate (enrolling edges) served at once, so that
    /// strangers cannot take the slots members and edges need.
    pub max_anonymous: usize,
}

impl Default for ServeLimits {
    fn default() -> Self {
        ServeLimits {
            max_connections: 1024,
            max_anonymous: 64,
        }
    }
}

/// Accepts connections on `endpoint` until it is closed ([`Endpoint::close`]), serving each in a
/// task of its own. Nothing one connection does can end the loop.
pub async fn serve(endpoint: Endpoint, router: AlpnRouter, limits: ServeLimits) {
    let router = Arc::new(router);
    let permits = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let anonymous = Arc::new(tokio::sync::Semaphore::new(limits.max_anonymous));
    while let Some(incoming) = endpoint.accept().await {
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            tracing::warn!(
                remote = %incoming.remote_address(),
                max_connections = limits.max_connections,
                "refusing a connection: too many connections"
            );
            incoming.refuse();
            continue;
        };
        let span = tracing::info_span!(
            "quic_conn",
            remote = %incoming.remote_address(),
            alpn = tracing::field::Empty,
            peer = tracing::field::Empty,
        );
        let (router, anonymous) = (router.clone(), anonymous.clone());
        tokio::spawn(
            async move {
                accept_connection(incoming, &router, &anonymous).await;
                drop(permit);
            }
            .instrument(span),
        );
    }
    tracing::debug!("endpoint closed, accept loop done");
}

async fn accept_connection(
    incoming: Incoming,
    router: &AlpnRouter,
    anonymous: &Arc<tokio::sync::Semaphore>,
) {
    // The handshake is bounded by the transport's idle timeout.
    let conn = match incoming.await {
        Ok(conn) => conn,
        Err(e) => {
            tracing::info!(error = %e, "handshake failed");
            return;
        }
    };
    let Some(alpn) = negotiated_alpn(&conn) else {
        tracing::warn!("no ALPN protocol negotiated");
        conn.close(close_code::NO_PROTOCOL, b"no application protocol");
        return;
    };
    let span = tracing::Span::current();
    span.record("alpn", String::from_utf8_lossy(&alpn).as_ref());
    let peer = match connection_identity(&conn) {
        Ok(peer) => peer,
        Err(IdentityError::NoCertificate) if router.anonymous.contains(&alpn) => {
            PeerIdentity::Anonymous
        }
        Err(e) => {
            tracing::warn!(error = %e, "peer certificate has no usable identity");
            conn.close(close_code::FORBIDDEN, b"no portico identity in certificate");
            return;
        }
    };
    span.record("peer", tracing::field::display(&peer));
    let Some(handler) = router.handler(&alpn) else {
        tracing::warn!("no handler for the negotiated protocol");
        conn.close(close_code::NO_PROTOCOL, b"unsupported application protocol");
        return;
    };
    tracing::debug!("connection established");
    let _anonymous_permit = if peer == PeerIdentity::Anonymous {
        match anonymous.clone().try_acquire_owned() {
            Ok(permit) => Some(permit),
            Err(_) => {
                tracing::warn!("refusing a connection without a certificate: too many at once");
                conn.close(
                    close_code::FORBIDDEN,
                    b"too many connections without a certificate",
                );
                return;
            }
        }
    } else {
        None
    };
    handler.serve_connection(conn, peer).await;
}

/// The ALPN protocol the handshake settled on.
pub fn negotiated_alpn(conn: &Connection) -> Option<Vec<u8>> {
    conn.handshake_data()?
        .downcast::<quinn::crypto::rustls::HandshakeData>()
        .ok()?
        .protocol
}

/// The identity in the peer's (already verified) end-entity certificate.
pub fn connection_identity(conn: &Connection) -> Result<PeerIdentity, IdentityError> {
    let chain = conn
        .peer_identity()
        .and_then(|any| {
            any.downcast::<Vec<rustls_pki_types::CertificateDer<'static>>>()
                .ok()
        })
        .ok_or(IdentityError::NoCertificate)?;
    let leaf = chain.first().ok_or(IdentityError::NoCertificate)?;
    peer_identity(leaf)
}
