//! Keep-alive connections to backends, one pool per worker thread, and the HTTP/1.1 exchange
//! on them ([`http1`]).
//!
//! Each worker runs its own single-threaded runtime, so its pool is only ever touched from one
//! thread (the mutex is never contended) and a connection's I/O stays on the core that uses it.
//! A request is written and its response read by the request's own task; the response body
//! ([`BackendBody`]) owns the connection while it streams and puts it back into the pool when
//! its last byte has been read. The pool key is precomputed at config compile time.

pub(crate) mod http1;

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http::Response;
use http_body::{Body, Frame, SizeHint};
use rustc_hash::FxHashMap;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::body::UpstreamBody;
use crate::compile::Backend;
use crate::error::IntegrationError;
use crate::fields::Fields;
use crate::tcp::Tcp;
use crate::wire::{self, Decoded, Decoder, ProtocolError, SendError};
pub use http1::RequestHead;

/// Idle connections kept per backend per worker.
const MAX_IDLE_PER_BACKEND: usize = 256;

pub struct UpstreamPool {
    idle: Mutex<FxHashMap<Arc<str>, Vec<Idle>>>,
    idle_timeout_ms: u64,
    /// Milliseconds since `started`, as of the last [`UpstreamPool::tick`]: a connection's
    /// idle age needs no finer clock, and reading the real one at every checkout and return
    /// cost two clock reads per request.
    now_ms: AtomicU64,
    started: Instant,
    tls: tokio_rustls::TlsConnector,
}

struct Idle {
    conn: Connection,
    /// `now_ms` when the connection was returned.
    since_ms: u64,
}

/// One backend connection and the bytes read from it but not yet consumed.
struct Connection {
    io: Stream,
    buf: BytesMut,
}

enum Stream {
    Tcp(Tcp),
    Tls(Box<tokio_rustls::client::TlsStream<Tcp>>),
}

impl UpstreamPool {
    pub fn new(idle_timeout: Duration, tls: Arc<rustls::ClientConfig>) -> UpstreamPool {
        UpstreamPool {
            idle: Mutex::new(FxHashMap::default()),
            idle_timeout_ms: u64::try_from(idle_timeout.as_millis()).unwrap_or(u64::MAX),
            now_ms: AtomicU64::new(0),
            started: Instant::now(),
            tls: tokio_rustls::TlsConnector::from(tls),
        }
    }

    /// Sends `req` on a pooled connection, or a new one, and reads the response head. A pooled
    /// connection the backend closed while it was idle fails before any response byte; the
    /// request is then sent once more on a fresh connection if that is safe (see below), so
    /// backend keep-alive expiry never surfaces as a client error.
    pub async fn send(
        self: &Arc<Self>,
        backend: &Backend,
        head: RequestHead<'_>,
        body: &mut UpstreamBody,
    ) -> Result<Response<BackendBody>, IntegrationError> {
        let framing = http1::request_framing(head.method, head.headers, body.is_end_stream())
            .map_err(|reason| IntegrationError::ClientBody {
                reason: reason.into(),
            })?;
        let head_request = *head.method == http::Method::HEAD;
        let idempotent = head.method.is_idempotent();
        let head = {
            let mut bytes = Vec::with_capacity(512);
            http1::encode_head(&mut bytes, &head, framing);
            bytes
        };

        // Allocated only for a request with a body.
        let mut scratch = Vec::new();
        let mut pooled = self.checkout(&backend.key);
        loop {
            let reused = pooled.is_some();
            let mut conn = match pooled.take() {
                Some(c) => c,
                // Boxed: the TLS handshake makes this future large, and it is the rare path.
                None => Box::pin(self.connect(backend)).await?,
            };
            let failure =
                match wire::write_message(&mut conn.io, &head, &mut scratch, body, framing).await {
                    Ok(()) => match conn.read_head(head_request).await {
                        Ok(head) => return Ok(self.response(backend, conn, head)),
                        // The request went out whole, and the backend may have seen it before it
                        // closed: only a bodiless request of an idempotent method goes again (as
                        // nginx's proxy_next_upstream does by default).
                        Err(ReadError::Closed(reason)) => Failure::Stale {
                            reason,
                            replayable: framing.is_empty() && idempotent,
                        },
                        Err(ReadError::Io(e)) => Failure::Backend(e.to_string()),
                        Err(ReadError::Protocol(e)) => Failure::Backend(e.to_string()),
                    },
                    Err(SendError::Write { error, body_sent }) => Failure::Stale {
                        reason: error.to_string(),
                        replayable: !body_sent,
                    },
                    Err(SendError::Body(e)) => return Err(client_body_error(e)),
                    Err(SendError::BodyLength) => {
                        return Err(IntegrationError::ClientBody {
                            reason: "the body does not match its Content-Length".into(),
                        });
                    }
                };
            match failure {
                Failure::Stale {
                    replayable: true, ..
                } if reused => continue,
                Failure::Stale { reason, .. } | Failure::Backend(reason) => {
                    return Err(IntegrationError::Backend {
                        backend: backend.key.to_string(),
                        reason,
                    });
                }
            }
        }
    }

    fn response(
        self: &Arc<Self>,
        backend: &Backend,
        conn: Connection,
        head: http1::Head,
    ) -> Response<BackendBody> {
        let http1::Head {
            parts,
            fields,
            framing,
            reusable,
        } = head;
        let mut body = BackendBody {
            fields: Some(fields),
            conn: Some(conn),
            decoder: framing,
            release: reusable.then(|| (self.clone(), backend.key.clone())),
        };
        if body.decoder == Decoder::Done {
            body.finish();
        }
        Response::from_parts(parts, body)
    }

    fn checkout(&self, key: &str) -> Option<Connection> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let list = idle.get_mut(key)?;
        let now = self.now_ms.load(Relaxed);
        while let Some(mut c) = list.pop() {
            if now.saturating_sub(c.since_ms) < self.idle_timeout_ms && c.conn.is_quiet() {
                return Some(c.conn);
            }
        }
        None
    }

    fn put(&self, key: Arc<str>, conn: Connection) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let list = idle.entry(key).or_default();
        if list.len() >= MAX_IDLE_PER_BACKEND {
            list.remove(0);
        }
        list.push(Idle {
            conn,
            since_ms: self.now_ms.load(Relaxed),
        });
    }

    /// Moves the pool's clock on; the owner calls it every few tens of milliseconds, which is
    /// how far past the idle timeout a connection may be used.
    pub fn tick(&self) {
        let elapsed = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.now_ms.store(elapsed, Relaxed);
    }

    /// Drops connections idle for longer than the idle timeout or closed by the backend; run
    /// periodically.
    pub fn sweep(&self) {
        self.tick();
        let now = self.now_ms.load(Relaxed);
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        for list in idle.values_mut() {
            list.retain_mut(|c| {
                now.saturating_sub(c.since_ms) < self.idle_timeout_ms && c.conn.is_quiet()
            });
        }
        idle.retain(|_, l| !l.is_empty());
    }

    async fn connect(&self, backend: &Backend) -> Result<Connection, IntegrationError> {
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
        let tcp = Tcp::new(tcp);
        let io = if backend.https {
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
            Stream::Tls(Box::new(tls))
        } else {
            Stream::Tcp(tcp)
        };
        Ok(Connection {
            io,
            buf: BytesMut::with_capacity(8 * 1024),
        })
    }
}

enum Failure {
    /// Writing failed, or the backend closed or reset the connection before answering
    /// anything: a pooled connection it had given up on. `replayable`: none of the client's
    /// body was taken yet, so the request can be sent again.
    Stale {
        reason: String,
        replayable: bool,
    },
    Backend(String),
}

enum ReadError {
    /// The connection closed or was reset before the first byte of a response.
    Closed(String),
    Io(io::Error),
    Protocol(ProtocolError),
}

fn reset(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionReset
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionAborted
    )
}

/// The size limit (from `http_body_util::Limited`) and a client that broke off its upload,
/// told apart; the caller fills in the limit.
fn client_body_error(e: Box<dyn std::error::Error + Send + Sync>) -> IntegrationError {
    if e.is::<http_body_util::LengthLimitError>() {
        IntegrationError::BodyTooLarge { limit: 0 }
    } else {
        IntegrationError::ClientBody {
            reason: e.to_string(),
        }
    }
}

impl Connection {
    /// True when nothing has arrived on an idle connection: no data and no close. Tokio keeps
    /// the socket's readiness, so this costs no system call unless the socket became readable.
    fn is_quiet(&mut self) -> bool {
        if !self.buf.is_empty() {
            return false;
        }
        let mut cx = Context::from_waker(Waker::noop());
        let mut probe = [0u8; 1];
        let mut read = ReadBuf::new(&mut probe);
        matches!(
            Pin::new(&mut self.io).poll_read(&mut cx, &mut read),
            Poll::Pending
        )
    }

    async fn read_head(&mut self, head_request: bool) -> Result<http1::Head, ReadError> {
        let mut received = !self.buf.is_empty();
        loop {
            if received
                && let Some(head) =
                    http1::parse_head(&mut self.buf, head_request).map_err(ReadError::Protocol)?
            {
                return Ok(head);
            }
            let read =
                std::future::poll_fn(|cx| wire::poll_read_buf(&mut self.io, &mut self.buf, cx))
                    .await;
            match read {
                Ok(0) if received => return Err(ReadError::Protocol(ProtocolError::Truncated)),
                Ok(0) => return Err(ReadError::Closed("closed the connection".into())),
                Ok(_) => received = true,
                Err(e) if !received && reset(&e) => return Err(ReadError::Closed(e.to_string())),
                Err(e) => return Err(ReadError::Io(e)),
            }
        }
    }
}

/// A backend response body, decoded as it is read. It holds the connection while it streams
/// and returns it to the pool once the last byte is in, if the response allows reuse and
/// nothing follows it; a body dropped half-read drops its connection.
pub struct BackendBody {
    /// The response's fields, until they are written or moved into a header map.
    fields: Option<Fields>,
    conn: Option<Connection>,
    decoder: Decoder,
    release: Option<(Arc<UpstreamPool>, Arc<str>)>,
}

/// A backend body that could not be read to its end.
#[derive(Debug, thiserror::Error)]
pub enum BackendBodyError {
    #[error("reading the backend's response body failed: {0}")]
    Io(#[from] io::Error),
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
}

impl BackendBody {
    /// The backend's end-to-end response fields, unless they were moved into a header map.
    pub fn fields(&self) -> Option<&Fields> {
        self.fields.as_ref()
    }

    /// Moves the backend's fields into `headers`, for code that needs a header map; fields
    /// `headers` already has are the caller's own and stay as they are.
    pub fn move_fields_into(&mut self, headers: &mut http::HeaderMap) {
        if let Some(fields) = self.fields.take() {
            fields.append_to(headers);
        }
    }

    fn finish(&mut self) {
        self.decoder = Decoder::Done;
        if let (Some(conn), Some((pool, key))) = (self.conn.take(), self.release.take())
            && conn.buf.is_empty()
        {
            pool.put(key, conn);
        }
    }
}

impl Body for BackendBody {
    type Data = Bytes;
    type Error = BackendBodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BackendBodyError>>> {
        let this = &mut *self;
        loop {
            let Some(conn) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            match this.decoder.decode(&mut conn.buf) {
                Ok(Decoded::Data(data)) => {
                    if this.decoder == Decoder::Done {
                        this.finish();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Ok(Decoded::End) => {
                    this.finish();
                    return Poll::Ready(None);
                }
                Ok(Decoded::NeedMore) => {}
                Err(e) => {
                    this.conn = None;
                    return Poll::Ready(Some(Err(e.into())));
                }
            }
            match wire::poll_read_buf(&mut conn.io, &mut conn.buf, cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(0)) if this.decoder == Decoder::Eof => {
                    this.release = None;
                    this.finish();
                    return Poll::Ready(None);
                }
                Poll::Ready(Ok(0)) => {
                    this.conn = None;
                    return Poll::Ready(Some(Err(ProtocolError::Truncated.into())));
                }
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(e)) => {
                    this.conn = None;
                    return Poll::Ready(Some(Err(e.into())));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.decoder == Decoder::Done
    }

    fn size_hint(&self) -> SizeHint {
        match self.decoder {
            Decoder::Length(n) => SizeHint::with_exact(n),
            Decoder::Done => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write(cx, data),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, data),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
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
