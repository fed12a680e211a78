//! Keep-alive connections to backends, one pool per worker thread.
//!
//! Each worker runs its own single-threaded runtime, so its pool is only ever touched from one
//! thread (the mutex is never contended) and a connection's I/O stays on the core that uses it.
//! Built on hyper's `client::conn::http1` directly: the pool key is precomputed at config
//! compile time, and no URI is re-parsed per request.

use std::error::Error as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use rustc_hash::FxHashMap;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;

use crate::body::UpstreamBody;
use crate::compile::Backend;
use crate::error::IntegrationError;

/// Idle connections kept per backend per worker.
const MAX_IDLE_PER_BACKEND: usize = 256;

pub struct UpstreamPool {
    idle: Mutex<FxHashMap<Arc<str>, Vec<Idle>>>,
    idle_timeout: Duration,
    tls: tokio_rustls::TlsConnector,
}

struct Idle {
    sender: SendRequest<UpstreamBody>,
    since: Instant,
}

/// A connection on loan for one request; [`PooledConnection::release`] gives it back once the
/// response body has been read to the end.
pub struct PooledConnection {
    pool: Arc<UpstreamPool>,
    key: Arc<str>,
    sender: SendRequest<UpstreamBody>,
}

impl PooledConnection {
    pub fn release(self) {
        self.pool.put(self.key, self.sender);
    }
}

impl UpstreamPool {
    pub fn new(idle_timeout: Duration, tls: Arc<rustls::ClientConfig>) -> UpstreamPool {
        UpstreamPool {
            idle: Mutex::new(FxHashMap::default()),
            idle_timeout,
            tls: tokio_rustls::TlsConnector::from(tls),
        }
    }

    /// Sends `req` on a pooled connection, or a new one. A pooled connection that turns out to
    /// be closed gets the request back unsent from hyper; it is then sent once more on a fresh
    /// connection, so backend keep-alive expiry never surfaces as a client error.
    pub async fn send(
        self: &Arc<Self>,
        backend: &Backend,
        mut req: Request<UpstreamBody>,
    ) -> Result<(Response<Incoming>, PooledConnection), IntegrationError> {
        let mut pooled = self.checkout(&backend.key);
        loop {
            let reused = pooled.is_some();
            let mut sender = match pooled.take() {
                Some(s) => s,
                // Boxed: the TLS handshake makes this future large, and it is the rare path.
                None => Box::pin(self.connect(backend)).await?,
            };
            if sender.ready().await.is_err() && reused {
                continue;
            }
            match sender.try_send_request(req).await {
                Ok(resp) => {
                    let conn = PooledConnection {
                        pool: self.clone(),
                        key: backend.key.clone(),
                        sender,
                    };
                    return Ok((resp, conn));
                }
                Err(mut e) => match e.take_message() {
                    Some(unsent) if reused => req = unsent,
                    _ => return Err(classify(backend, e.into_error())),
                },
            }
        }
    }

    fn checkout(&self, key: &str) -> Option<SendRequest<UpstreamBody>> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let list = idle.get_mut(key)?;
        while let Some(c) = list.pop() {
            if c.sender.is_ready() && c.since.elapsed() < self.idle_timeout {
                return Some(c.sender);
            }
        }
        None
    }

    fn put(&self, key: Arc<str>, sender: SendRequest<UpstreamBody>) {
        if sender.is_closed() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let list = idle.entry(key).or_default();
        if list.len() >= MAX_IDLE_PER_BACKEND {
            list.remove(0);
        }
        list.push(Idle {
            sender,
            since: Instant::now(),
        });
    }

    /// Drops connections idle for longer than the idle timeout; run periodically.
    pub fn sweep(&self) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        for list in idle.values_mut() {
            list.retain(|c| !c.sender.is_closed() && c.since.elapsed() < self.idle_timeout);
        }
        idle.retain(|_, l| !l.is_empty());
    }

    async fn connect(
        &self,
        backend: &Backend,
    ) -> Result<SendRequest<UpstreamBody>, IntegrationError> {
        let port = backend
            .authority
            .port_u16()
            .unwrap_or(if backend.https { 443 } else { 80 });
        let host = backend.authority.host();
        // Bracketed IPv6 literals connect without the brackets.
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let tcp =
            TcpStream::connect((host, port))
                .await
                .map_err(|e| IntegrationError::Connect {
                    backend: backend.key.to_string(),
                    reason: e.to_string(),
                })?;
        let _ = tcp.set_nodelay(true);
        let handshake = if backend.https {
            let name =
                ServerName::try_from(host.to_string()).map_err(|e| IntegrationError::Connect {
                    backend: backend.key.to_string(),
                    reason: format!("{host:?} is not a valid TLS server name: {e}"),
                })?;
            let tls = self
                .tls
                .connect(name, tcp)
                .await
                .map_err(|e| IntegrationError::Connect {
                    backend: backend.key.to_string(),
                    reason: format!("TLS handshake failed: {e}"),
                })?;
            spawn_connection(http1::handshake(TokioIo::new(tls)).await)
        } else {
            spawn_connection(http1::handshake(TokioIo::new(tcp)).await)
        };
        handshake.map_err(|e| IntegrationError::Connect {
            backend: backend.key.to_string(),
            reason: e.to_string(),
        })
    }
}

fn spawn_connection<C>(
    handshake: hyper::Result<(SendRequest<UpstreamBody>, C)>,
) -> hyper::Result<SendRequest<UpstreamBody>>
where
    C: std::future::Future<Output = hyper::Result<()>> + Send + 'static,
{
    let (sender, conn) = handshake?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "backend connection closed with an error");
        }
    });
    Ok(sender)
}

/// Tells a request body that broke the size limit, and one the client broke off, from a
/// failing backend. hyper reports errors of the body it was sending as "user" errors.
fn classify(backend: &Backend, e: hyper::Error) -> IntegrationError {
    let mut source = e.source();
    while let Some(s) = source {
        if s.is::<http_body_util::LengthLimitError>() {
            // The caller knows the limit and fills it in.
            return IntegrationError::BodyTooLarge { limit: 0 };
        }
        source = s.source();
    }
    match e.source() {
        Some(s) if e.is_user() => IntegrationError::ClientBody {
            reason: s.to_string(),
        },
        _ => IntegrationError::Backend {
            backend: backend.key.to_string(),
            reason: describe(&e),
        },
    }
}

fn describe(e: &hyper::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}

/// Trust for HTTPS backends: the Mozilla roots plus any operator-supplied CA certificates.
pub fn backend_tls_config(
    extra_roots: &[rustls_pki_types::CertificateDer<'static>],
) -> Result<Arc<rustls::ClientConfig>, rustls::Error> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    for cert in extra_roots {
        roots.add(cert.clone())?;
    }
    let mut config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
