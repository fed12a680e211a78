//! rustls and quinn configuration for the control transport: mutual TLS 1.3 where both sides
//! trust only the cluster CA, ALPN chosen by the caller, and bounded QUIC transport limits.

use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::ca::Issued;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{what} is not valid PEM: {source}")]
    Pem {
        what: &'static str,
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("client certificate verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    #[error("the TLS configuration has no cipher suite QUIC can use: {0}")]
    Quic(#[from] quinn::crypto::rustls::NoInitialCipherSuite),
    #[error("transport limits: {0}")]
    Limits(String),
}

/// What a node presents and trusts: its certificate chain and key, and the cluster CA.
#[derive(Debug)]
pub struct TlsIdentity {
    ca: CertificateDer<'static>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl Clone for TlsIdentity {
    fn clone(&self) -> Self {
        TlsIdentity {
            ca: self.ca.clone(),
            chain: self.chain.clone(),
            key: self.key.clone_key(),
        }
    }
}

impl TlsIdentity {
    pub fn from_pem(ca_cert_pem: &str, cert_pem: &str, key_pem: &str) -> Result<Self, TlsError> {
        let ca = CertificateDer::from_pem_slice(ca_cert_pem.as_bytes()).map_err(|source| {
            TlsError::Pem {
                what: "the CA certificate",
                source,
            }
        })?;
        let chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|source| TlsError::Pem {
                what: "the certificate",
                source,
            })?;
        if chain.is_empty() {
            return Err(TlsError::Pem {
                what: "the certificate",
                source: rustls_pki_types::pem::Error::NoItemsFound,
            });
        }
        let key =
            PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|source| TlsError::Pem {
                what: "the private key",
                source,
            })?;
        Ok(TlsIdentity { ca, chain, key })
    }

    pub fn from_issued(ca_cert_pem: &str, issued: &Issued) -> Result<Self, TlsError> {
        Self::from_pem(ca_cert_pem, &issued.cert_pem, &issued.key_pem)
    }

    fn roots(&self) -> Result<Arc<RootCertStore>, TlsError> {
        let mut roots = RootCertStore::empty();
        roots.add(self.ca.clone())?;
        Ok(Arc::new(roots))
    }
}

/// The process-wide provider when one is installed (`main` installs ring), else ring.
fn provider() -> Arc<CryptoProvider> {
    CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::ring::default_provider()))
}

/// A server configuration that requires a client certificate issued by the cluster CA and
/// offers the given ALPN protocols (e.g. [`super::ALPN_RAFT`], [`super::ALPN_SYNC`]).
pub fn server_crypto(
    identity: &TlsIdentity,
    alpn: &[&[u8]],
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let provider = provider();
    let verifier =
        WebPkiClientVerifier::builder_with_provider(identity.roots()?, provider.clone()).build()?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(identity.chain.clone(), identity.key.clone_key())?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// Like [`server_crypto`], but a client may also connect without a certificate: that is how a
/// new edge reaches enrolment. A certificate, when presented, must still be the cluster CA's;
/// the accept loop lets anonymous peers speak only the protocols routed for them
/// ([`super::server::AlpnRouter::route_anonymous`]). The server sends the CA certificate after
/// its own, so an enrolling edge can check it against the fingerprint in its join token.
pub fn server_crypto_with_enrolment(
    identity: &TlsIdentity,
    alpn: &[&[u8]],
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let provider = provider();
    let verifier = WebPkiClientVerifier::builder_with_provider(identity.roots()?, provider.clone())
        .allow_unauthenticated()
        .build()?;
    let mut chain = identity.chain.clone();
    chain.push(identity.ca.clone());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, identity.key.clone_key())?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// A client configuration that presents the node's certificate, trusts only the cluster CA,
/// and offers the given ALPN protocols.
pub fn client_crypto(
    identity: &TlsIdentity,
    alpn: &[&[u8]],
) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(identity.roots()?)
        .with_client_auth_cert(identity.chain.clone(), identity.key.clone_key())?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// QUIC limits shared by both directions of a connection.
#[derive(Debug, Clone)]
pub struct TransportLimits {
    /// Pings on an otherwise idle connection, so NATs and the peer's idle timer stay open.
    pub keep_alive: Duration,
    /// A connection that hears nothing for this long is dead (also bounds the handshake).
    pub idle_timeout: Duration,
    /// Concurrent bidirectional streams a peer may open (one per RPC).
    pub max_bidi_streams: u32,
    /// Concurrent unidirectional streams a peer may open.
    pub max_uni_streams: u32,
    /// Unacknowledged bytes per stream.
    pub stream_receive_window: u32,
    /// Unacknowledged bytes per connection.
    pub receive_window: u32,
}

impl Default for TransportLimits {
    fn default() -> Self {
        TransportLimits {
            keep_alive: Duration::from_secs(2),
            idle_timeout: Duration::from_secs(10),
            max_bidi_streams: 256,
            max_uni_streams: 16,
            stream_receive_window: 8 * 1024 * 1024,
            receive_window: 32 * 1024 * 1024,
        }
    }
}

impl TransportLimits {
    pub fn transport_config(&self) -> Result<Arc<quinn::TransportConfig>, TlsError> {
        let idle = quinn::IdleTimeout::try_from(self.idle_timeout)
            .map_err(|e| TlsError::Limits(format!("idle_timeout: {e}")))?;
        let mut transport = quinn::TransportConfig::default();
        transport
            .keep_alive_interval(Some(self.keep_alive))
            .max_idle_timeout(Some(idle))
            .max_concurrent_bidi_streams(self.max_bidi_streams.into())
            .max_concurrent_uni_streams(self.max_uni_streams.into())
            .stream_receive_window(self.stream_receive_window.into())
            .receive_window(self.receive_window.into());
        Ok(Arc::new(transport))
    }
}

/// The quinn server configuration for `crypto` (from [`server_crypto`]).
pub fn server_config(
    crypto: Arc<rustls::ServerConfig>,
    limits: &TransportLimits,
) -> Result<quinn::ServerConfig, TlsError> {
    let mut config =
        quinn::ServerConfig::with_crypto(Arc::new(QuicServerConfig::try_from(crypto)?));
    config.transport_config(limits.transport_config()?);
    Ok(config)
}

/// The quinn client configuration for `crypto` (from [`client_crypto`]).
pub fn client_config(
    crypto: Arc<rustls::ClientConfig>,
    limits: &TransportLimits,
) -> Result<quinn::ClientConfig, TlsError> {
    let mut config = quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(crypto)?));
    config.transport_config(limits.transport_config()?);
    Ok(config)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::transport::ca::{ClusterCa, PeerIdentity};
    use crate::transport::frame::{read_frame, write_frame};
    use crate::transport::test_support::{
        echo_server, install_crypto, node_client_endpoint, within,
    };
    use crate::transport::{ALPN_RAFT, node_dns_name};

    /// Connects with `client` and runs one echo exchange; the error if any step fails.
    async fn echo_once(
        client: &quinn::Endpoint,
        config: quinn::ClientConfig,
        server: std::net::SocketAddr,
        server_name: &str,
    ) -> Result<String, String> {
        let conn = client
            .connect_with(config, server, server_name)
            .map_err(|e| e.to_string())?
            .await
            .map_err(|e| e.to_string())?;
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
        write_frame(&mut send, &"ping".to_string())
            .await
            .map_err(|e| e.to_string())?;
        send.finish().map_err(|e| e.to_string())?;
        read_frame::<String>(&mut recv, 1024)
            .await
            .map_err(|e| e.to_string())
    }

    /// Asserts the handshake is refused by TLS: either side closes the connection with a QUIC
    /// crypto error (0x100 + TLS alert). In TLS 1.3 the client may finish its side of the
    /// handshake before the server has checked its certificate, so wait for the close.
    async fn assert_refused(
        client: &quinn::Endpoint,
        config: quinn::ClientConfig,
        server: std::net::SocketAddr,
        server_name: &str,
    ) {
        let error = within(Duration::from_secs(10), async {
            match client
                .connect_with(config, server, server_name)
                .unwrap()
                .await
            {
                Err(e) => e,
                Ok(conn) => conn.closed().await,
            }
        })
        .await;
        let code: u64 = match &error {
            quinn::ConnectionError::TransportError(e) => e.code.into(),
            quinn::ConnectionError::ConnectionClosed(c) => c.error_code.into(),
            other => panic!("not a TLS refusal: {other:?}"),
        };
        assert!((0x100..0x200).contains(&code), "not a TLS refusal: {error}");
    }

    #[tokio::test]
    async fn a_ca_issued_client_connects_and_others_are_refused() {
        install_crypto();
        let ca = ClusterCa::generate("test").unwrap();
        let (server_addr, seen) = echo_server(&ca, 1).await;
        let limits = TransportLimits::default();

        // A node certificate from the cluster CA: accepted, and the server sees who it is.
        let (endpoint, config) = node_client_endpoint(&ca, 2);
        let reply = within(
            Duration::from_secs(10),
            echo_once(&endpoint, config, server_addr, &node_dns_name(1)),
        )
        .await;
        assert_eq!(reply, Ok("ping".to_string()));
        assert_eq!(seen.lock().unwrap().clone(), vec![PeerIdentity::Node(2)]);

        // No client certificate: the server refuses the handshake.
        let mut roots = RootCertStore::empty();
        roots.add(ca.cert_der().clone()).unwrap();
        let mut anonymous = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        anonymous.alpn_protocols = vec![ALPN_RAFT.to_vec()];
        let anonymous = client_config(Arc::new(anonymous), &limits).unwrap();
        assert_refused(&endpoint, anonymous, server_addr, &node_dns_name(1)).await;

        // A certificate from another CA (that trusts ours, so only the server can refuse it).
        let other = ClusterCa::generate("other").unwrap();
        let foreign = other.issue_node(2, &[]).unwrap();
        let identity =
            TlsIdentity::from_pem(ca.cert_pem(), &foreign.cert_pem, &foreign.key_pem).unwrap();
        let foreign =
            client_config(client_crypto(&identity, &[ALPN_RAFT]).unwrap(), &limits).unwrap();
        assert_refused(&endpoint, foreign, server_addr, &node_dns_name(1)).await;

        // A client that trusts another CA refuses our server.
        let issued = other.issue_node(2, &[]).unwrap();
        let identity = TlsIdentity::from_issued(other.cert_pem(), &issued).unwrap();
        let distrustful =
            client_config(client_crypto(&identity, &[ALPN_RAFT]).unwrap(), &limits).unwrap();
        assert_refused(&endpoint, distrustful, server_addr, &node_dns_name(1)).await;

        // The wrong server name (node 3 dialled, node 1 answers) is refused by the client.
        let (_, config) = node_client_endpoint(&ca, 2);
        assert_refused(&endpoint, config, server_addr, &node_dns_name(3)).await;

        // Only the good client ever reached the handler.
        assert_eq!(seen.lock().unwrap().len(), 1);
    }
}
