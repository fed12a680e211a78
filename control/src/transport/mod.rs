//! The control plane's transport: one QUIC endpoint per control node, mutual TLS with
//! certificates from the cluster CA ([`ca`]), protocols separated by ALPN ([`server`]),
//! length-prefixed versioned bincode frames ([`frame`]), and Raft on top ([`raft_net`] is the
//! client side, [`raft_server`] the server side).

pub mod ca;
pub mod frame;
pub mod raft_net;
pub mod raft_server;
pub mod server;
pub mod tls;

#[cfg(test)]
mod raft_tests;
#[cfg(test)]
pub(crate) mod test_support;

use std::net::SocketAddr;
use std::sync::Arc;

pub use ca::{
    CONTROL_DNS_NAME, CaError, ClusterCa, IdentityError, Issued, PeerIdentity, ca_fingerprint,
    edge_dns_name, node_dns_name, peer_identity,
};
pub use frame::{FrameError, encode_frame, read_frame, write_frame};
pub use raft_net::QuicRaftNetwork;
pub use raft_server::{RaftRequest, RaftResponse, RaftService, serve_raft};
pub use server::{AlpnRouter, ProtocolHandler, ServeLimits, connection_identity, serve};
pub use tls::{
    TlsError, TlsIdentity, TransportLimits, client_crypto, server_crypto,
    server_crypto_with_enrolment,
};

/// ALPN of Raft between control nodes.
pub const ALPN_RAFT: &[u8] = b"portico-raft/1";
pub use portico_proto::sync::{ALPN_ENROL, ALPN_SYNC};

/// Application error codes a server closes a connection with.
pub mod close_code {
    use quinn::VarInt;
    /// The client and server share no protocol, or the server has no handler for it.
    pub const NO_PROTOCOL: VarInt = VarInt::from_u32(0x10);
    /// The peer's identity may not speak the negotiated protocol.
    pub const FORBIDDEN: VarInt = VarInt::from_u32(portico_proto::sync::CLOSE_FORBIDDEN);
    /// The peer sent an oversized or malformed frame, or broke the protocol.
    pub const BAD_INPUT: VarInt = VarInt::from_u32(portico_proto::sync::CLOSE_BAD_INPUT);
}

/// Application error codes a stream is reset or stopped with.
pub mod stream_code {
    use quinn::VarInt;
    /// The frame was oversized, malformed or of an unknown version.
    pub const BAD_FRAME: VarInt = VarInt::from_u32(0x20);
    /// The request is not allowed from this peer.
    pub const FORBIDDEN: VarInt = VarInt::from_u32(0x21);
}

#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("cannot bind the QUIC endpoint to {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Binds a UDP socket and builds an endpoint that both accepts (with `server_tls`) and connects
/// (with `client_tls` as its default client configuration). Simulations build theirs with
/// [`tls::server_config`], [`tls::client_config`] and `Endpoint::new_with_abstract_socket`.
pub fn bind_endpoint(
    addr: SocketAddr,
    server_tls: Arc<rustls::ServerConfig>,
    client_tls: Arc<rustls::ClientConfig>,
    limits: &TransportLimits,
) -> Result<quinn::Endpoint, EndpointError> {
    let server = tls::server_config(server_tls, limits)?;
    let client = tls::client_config(client_tls, limits)?;
    let mut endpoint = quinn::Endpoint::server(server, addr)
        .map_err(|source| EndpointError::Bind { addr, source })?;
    endpoint.set_default_client_config(client);
    Ok(endpoint)
}
