//! Calling an admin API, over HTTP or HTTPS: used by followers forwarding to the leader and by
//! the CLI. An address is `host:port` (HTTP) or `https://host:port`.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};

/// Answers larger than this are cut off with an error.
pub const MAX_ANSWER: usize = 64 * 1024 * 1024;

/// An admin API address, split into whether it speaks TLS and its `host:port`.
pub fn parse_target(target: &str) -> (bool, &str) {
    match target.strip_prefix("https://") {
        Some(rest) => (true, rest.trim_end_matches('/')),
        None => (
            false,
            target
                .strip_prefix("http://")
                .unwrap_or(target)
                .trim_end_matches('/'),
        ),
    }
}

/// Trust for HTTPS admin APIs: the cluster CA, whose certificates the nodes serve.
pub fn client_tls(ca_pem: &str) -> Result<Arc<rustls::ClientConfig>, String> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        let cert = cert.map_err(|e| format!("CA certificate: {e}"))?;
        roots
            .add(cert)
            .map_err(|e| format!("CA certificate: {e}"))?;
    }
    if roots.is_empty() {
        return Err("no CA certificate found".into());
    }
    let mut config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Sends one request to `target` and reads the whole answer, within `within`.
pub async fn send(
    target: &str,
    tls: Option<&Arc<rustls::ClientConfig>>,
    req: Request<Full<Bytes>>,
    within: Duration,
) -> std::io::Result<Response<Bytes>> {
    let (https, addr) = parse_target(target);
    let exchange = async {
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        if !https {
            return exchange(tcp, req).await.map_err(|e| {
                std::io::Error::other(format!(
                    "{e} (if the server speaks HTTPS, use https://{addr})"
                ))
            });
        }
        let tls = tls.ok_or_else(|| {
            std::io::Error::other(format!(
                "{target} speaks HTTPS: trust the cluster CA with PORTICO_CA_CERT=PATH/ca.pem"
            ))
        })?;
        let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let name = ServerName::try_from(host.to_string()).map_err(std::io::Error::other)?;
        let stream = tokio_rustls::TlsConnector::from(tls.clone())
            .connect(name, tcp)
            .await?;
        exchange(stream, req).await
    };
    tokio::time::timeout(within, exchange).await.map_err(|_| {
        std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("{target} did not answer within {within:?}"),
        )
    })?
}

async fn exchange<IO>(io: IO, req: Request<Full<Bytes>>) -> std::io::Result<Response<Bytes>>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake::<_, Full<Bytes>>(TokioIo::new(io))
            .await
            .map_err(std::io::Error::other)?;
    tokio::spawn(conn);
    let resp = sender
        .send_request(req)
        .await
        .map_err(std::io::Error::other)?;
    let (parts, body) = resp.into_parts();
    let body = Limited::new(body, MAX_ANSWER)
        .collect()
        .await
        .map_err(std::io::Error::other)?
        .to_bytes();
    Ok(Response::from_parts(parts, body))
}
