//! Listeners and connections: thread-per-core workers, limits, idle timeout, graceful drain.
//!
//! Each worker thread runs a single-threaded tokio runtime with its own `SO_REUSEPORT` listener
//! and backend pool, so a request is served start to end on one core with no cross-thread
//! wake-ups (measured at +6..29 % CPU per request for a work-stealing runtime). With a private
//! listener configured, every worker accepts on both, under the same connection limit, and
//! each connection remembers which one it came in on ([`Listener`]).
//!
//! HTTP/1.1 is served by the edge's own connection loop ([`http1`]); a connection that opens
//! with the HTTP/2 preface (h2c with prior knowledge) is handed to hyper's HTTP/2 server.

pub mod http1;

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use hyper::server::conn::http2;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, Semaphore, watch};

use crate::access_log::{AccessLog, FLUSH_INTERVAL};
use crate::metrics::Metrics;
use crate::pipeline;
use crate::request::ClientRequest;
use crate::request_id::REQUEST_ID;
use crate::settings::EdgeSettings;
use crate::store::ConfigStore;
use crate::upstream::{UpstreamPool, backend_tls_config};
use crate::wire::poll_read_buf;
use crate::worker::Worker;

/// Which listener a connection came in on; it decides which APIs the connection can reach.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    /// `--listen`: APIs with `endpoint: edge` or `regional`.
    Public,
    /// `--private-listen`: APIs with `endpoint: private`, and only those.
    Private,
}

/// Per-connection state the pipeline and the idle watchdog share.
pub struct ConnState {
    pub peer: SocketAddr,
    pub listener: Listener,
    /// The peer's IP as a header value, built once per connection for X-Forwarded-For.
    pub peer_ip: http::HeaderValue,
    pub in_flight: AtomicU32,
    /// Bytes moved or a request ended since the idle watchdog last looked. A flag, not a
    /// timestamp: it is set several times per request, and reading the clock each time cost
    /// more than the rest of the bookkeeping (the watchdog keeps the time instead).
    active: AtomicBool,
    /// When the first byte of an HTTP/1 request head arrived on an otherwise idle connection;
    /// 0 while no head is pending. HTTP/2 connections never set it: their frames are not
    /// request heads.
    head_started_ms: AtomicU64,
    is_h2: AtomicBool,
    /// The connection is to close (drain, idle timeout): HTTP/1 takes no further request.
    closing: AtomicBool,
}

/// Milliseconds since the first call, plus one: never 0, which `head_started_ms` reads as "no
/// head pending" (a head arriving in the first millisecond of the process was never timed out).
fn now_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1
}

impl ConnState {
    fn new(peer: SocketAddr, listener: Listener) -> ConnState {
        ConnState {
            peer,
            listener,
            peer_ip: http::HeaderValue::from_str(&peer.ip().to_string())
                .unwrap_or_else(|_| http::HeaderValue::from_static("unknown")),
            in_flight: AtomicU32::new(0),
            active: AtomicBool::new(true),
            head_started_ms: AtomicU64::new(0),
            is_h2: AtomicBool::new(false),
            closing: AtomicBool::new(false),
        }
    }

    /// Called when a request's head has been parsed.
    pub fn request_started(&self) {
        self.in_flight.fetch_add(1, Relaxed);
        self.head_started_ms.store(0, Relaxed);
    }

    /// Part of a request head is in: starts the header-read clock if it is not running.
    fn head_arriving(&self) {
        if self.in_flight.load(Relaxed) == 0 && self.head_started_ms.load(Relaxed) == 0 {
            self.head_started_ms.store(now_ms(), Relaxed);
        }
    }

    fn closing(&self) -> bool {
        self.closing.load(Relaxed)
    }

    /// An HTTP/1 connection waiting for a request that has not begun: closing it now loses
    /// nothing.
    fn between_requests(&self) -> bool {
        !self.is_h2.load(Relaxed)
            && self.in_flight.load(Relaxed) == 0
            && self.head_started_ms.load(Relaxed) == 0
    }

    /// How long a request head has been arriving without being complete.
    fn head_pending_for(&self) -> Duration {
        match self.head_started_ms.load(Relaxed) {
            0 => Duration::ZERO,
            started => Duration::from_millis(now_ms().saturating_sub(started)),
        }
    }

    pub fn touch(&self) {
        self.active.store(true, Relaxed);
    }

    /// Whether the connection was touched since the last call, or has a request in flight.
    fn was_active(&self) -> bool {
        self.active.swap(false, Relaxed) || self.in_flight.load(Relaxed) > 0
    }
}

/// A running edge data plane.
pub struct EdgeServer {
    shutdown: watch::Sender<bool>,
    threads: Vec<std::thread::JoinHandle<()>>,
    local_addr: SocketAddr,
    private_addr: Option<SocketAddr>,
}

impl EdgeServer {
    /// The public listener's address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The private listener's address, when there is one.
    pub fn private_addr(&self) -> Option<SocketAddr> {
        self.private_addr
    }

    /// Stops accepting, lets in-flight requests finish (up to the drain timeout), and waits for
    /// every worker to exit. Blocking: call it from a blocking context.
    pub fn shutdown(self) {
        let _ = self.shutdown.send(true);
        for t in self.threads {
            let _ = t.join();
        }
    }
}

/// Binds the listeners and starts the workers.
pub fn start(
    settings: Arc<EdgeSettings>,
    config: Arc<ConfigStore>,
    metrics: Arc<Metrics>,
    access_log: AccessLog,
) -> io::Result<EdgeServer> {
    let mut extra_roots = Vec::new();
    for path in &settings.backend_ca_files {
        use rustls_pki_types::pem::PemObject;
        for cert in rustls_pki_types::CertificateDer::pem_file_iter(path)
            .map_err(|e| io::Error::other(format!("{}: {e}", path.display())))?
        {
            extra_roots
                .push(cert.map_err(|e| io::Error::other(format!("{}: {e}", path.display())))?);
        }
    }
    let tls = backend_tls_config(&extra_roots).map_err(io::Error::other)?;

    let workers = settings.workers.max(1);
    let (local_addr, public) = bind_per_worker(settings.listen, workers)?;
    let (private_addr, private) = match settings.private_listen {
        // Sockets on one address with SO_REUSEPORT share the connections: the private APIs
        // would answer on the public address.
        Some(addr) if addr == local_addr => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("the private listener {addr} is the public listener's address"),
            ));
        }
        Some(addr) => {
            let (bound, sockets) = bind_per_worker(addr, workers).map_err(|e| {
                io::Error::new(e.kind(), format!("the private listener {addr}: {e}"))
            })?;
            (Some(bound), sockets.into_iter().map(Some).collect())
        }
        None => (None, (0..workers).map(|_| None).collect::<Vec<_>>()),
    };
    metrics.set_listeners(local_addr, private_addr);

    let (shutdown, shutdown_rx) = watch::channel(false);
    let per_worker_connections = settings.max_connections.div_ceil(workers).max(1);
    let mut threads = Vec::with_capacity(workers);
    for (i, (public, private)) in public.into_iter().zip(private).enumerate() {
        let worker = Arc::new(Worker {
            settings: settings.clone(),
            config: config.clone(),
            metrics: metrics.clone(),
            access_log: access_log.clone(),
            pool: Arc::new(UpstreamPool::new(
                settings.backend_idle_timeout,
                tls.clone(),
            )),
        });
        let shutdown_rx = shutdown_rx.clone();
        let thread = std::thread::Builder::new()
            .name(format!("portico-edge-{i}"))
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        tracing::error!(error = %e, worker = i, "cannot start worker runtime");
                        return;
                    }
                };
                runtime.block_on(run_worker(
                    public,
                    private,
                    worker,
                    per_worker_connections,
                    shutdown_rx,
                ));
            })?;
        threads.push(thread);
    }
    Ok(EdgeServer {
        shutdown,
        threads,
        local_addr,
        private_addr,
    })
}

/// One `SO_REUSEPORT` socket per worker on `addr`; the first resolves port 0 for the others.
fn bind_per_worker(
    addr: SocketAddr,
    workers: usize,
) -> io::Result<(SocketAddr, Vec<std::net::TcpListener>)> {
    let first = bind_reuseport(addr)?;
    let bound = first.local_addr()?;
    let mut sockets = vec![first];
    for _ in 1..workers {
        sockets.push(bind_reuseport(bound)?);
    }
    Ok((bound, sockets))
}

fn bind_reuseport(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

fn h2_builder(settings: &EdgeSettings) -> http2::Builder<TokioExecutor> {
    let mut builder = http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .max_concurrent_streams(settings.max_h2_streams)
        .max_header_list_size(u32::try_from(settings.max_header_bytes).unwrap_or(u32::MAX))
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(20));
    builder
}

/// Counts a worker's open connections so that shutdown can wait for them.
#[derive(Default)]
struct Tracker {
    open: AtomicUsize,
    closed: Notify,
}

struct Tracked(Arc<Tracker>, Arc<Metrics>);

impl Drop for Tracked {
    fn drop(&mut self) {
        self.1.connections_open.fetch_sub(1, Relaxed);
        if self.0.open.fetch_sub(1, Relaxed) == 1 {
            self.0.closed.notify_waiters();
        }
    }
}

async fn run_worker(
    public: std::net::TcpListener,
    private: Option<std::net::TcpListener>,
    worker: Arc<Worker>,
    max_connections: usize,
    mut shutdown: watch::Receiver<bool>,
) {
    let (public, private) = match (
        TcpListener::from_std(public),
        private.map(TcpListener::from_std).transpose(),
    ) {
        (Ok(public), Ok(private)) => (public, private),
        (Err(e), _) | (_, Err(e)) => {
            tracing::error!(error = %e, "cannot register listener");
            return;
        }
    };
    let h2 = Arc::new(h2_builder(&worker.settings));
    let permits = Arc::new(Semaphore::new(max_connections));
    let tracker = Arc::new(Tracker::default());

    let housekeeping = tokio::spawn({
        let worker = worker.clone();
        async move {
            let mut flush = tokio::time::interval(FLUSH_INTERVAL);
            let mut ticks = 0u64;
            loop {
                flush.tick().await;
                worker.access_log.flush_thread();
                worker.pool.tick();
                ticks += 1;
                if ticks.is_multiple_of(100) {
                    worker.pool.sweep();
                }
            }
        }
    });

    loop {
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
            _ = shutdown.changed() => break,
        };
        // Both listeners share the permits: the connection limit is the edge's, not each
        // listener's. `select!` polls its branches in random order, so neither starves.
        let (accepted, listener) = tokio::select! {
            r = public.accept() => (r, Listener::Public),
            r = accept_if_some(private.as_ref()) => (r, Listener::Private),
            _ = shutdown.changed() => break,
        };
        let (tcp, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, ?listener, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        tracker.open.fetch_add(1, Relaxed);
        worker.metrics.connections_open.fetch_add(1, Relaxed);
        worker.metrics.connections_total.fetch_add(1, Relaxed);
        let guard = Tracked(tracker.clone(), worker.metrics.clone());
        tokio::spawn(serve_connection(
            tcp,
            peer,
            listener,
            worker.clone(),
            h2.clone(),
            shutdown.clone(),
            (permit, guard),
        ));
    }
    drop(public);
    drop(private);

    // Drain: connections (from either listener) got the shutdown signal and close once their
    // requests are done.
    let drained = async {
        loop {
            let closed = tracker.closed.notified();
            if tracker.open.load(Relaxed) == 0 {
                return;
            }
            closed.await;
        }
    };
    if tokio::time::timeout(worker.settings.drain_timeout, drained)
        .await
        .is_err()
    {
        tracing::warn!(
            open = tracker.open.load(Relaxed),
            "drain timeout reached; closing remaining connections"
        );
    }
    housekeeping.abort();
    worker.access_log.flush_thread();
}

/// Accepts on `listener`; never completes when there is none.
async fn accept_if_some(listener: Option<&TcpListener>) -> io::Result<(TcpStream, SocketAddr)> {
    match listener {
        Some(l) => l.accept().await,
        None => std::future::pending().await,
    }
}

async fn serve_connection<G: Send + 'static>(
    tcp: TcpStream,
    peer: SocketAddr,
    listener: Listener,
    worker: Arc<Worker>,
    h2: Arc<http2::Builder<TokioExecutor>>,
    shutdown: watch::Receiver<bool>,
    _guards: G,
) {
    let state = Arc::new(ConnState::new(peer, listener));
    let idle_timeout = worker.settings.idle_timeout;
    let header_timeout = worker.settings.header_read_timeout;
    let (close_tx, close_rx) = tokio::sync::oneshot::channel();
    let conn = serve_http(tcp, state.clone(), worker, h2, close_rx);
    tokio::pin!(conn);
    // The deadlines and the shutdown signal are watched by a task of their own: polled inside
    // this loop, they would be polled again on every wake-up of the connection (a watch
    // receiver and a random start for `select!` cost about 600 instructions per request).
    let (verdict_tx, mut verdict) = tokio::sync::oneshot::channel();
    let watchdog = tokio::spawn(watch_deadlines(
        state.clone(),
        idle_timeout,
        header_timeout,
        shutdown,
        verdict_tx,
    ));
    // Taken (and sent) once the connection is to close; the verdict is then spent.
    let mut close_tx = Some(close_tx);
    loop {
        tokio::select! {
            biased;
            () = conn.as_mut() => break,
            v = &mut verdict, if close_tx.is_some() => match v {
                Ok(Deadline::HeadTooSlow) => {
                    // A client that trickles its request head (or never finishes it) is cut
                    // off outright: there is no request to finish.
                    tracing::debug!(peer = %peer, "request head not complete in time; closing");
                    break;
                }
                Ok(Deadline::Close) | Err(_) => {
                    // HTTP/1 takes no further request and closes between requests at once;
                    // HTTP/2 sends GOAWAY and lets its streams finish.
                    state.closing.store(true, Relaxed);
                    if let Some(tx) = close_tx.take() {
                        let _ = tx.send(());
                    }
                    if state.between_requests() {
                        break;
                    }
                }
            },
        }
    }
    watchdog.abort();
}

/// The connection preface of HTTP/2 with prior knowledge (RFC 9113 §3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Reads until the first bytes tell HTTP/2's preface from an HTTP/1 request, then serves the
/// connection with that protocol.
async fn serve_http(
    mut tcp: TcpStream,
    state: Arc<ConnState>,
    worker: Arc<Worker>,
    h2: Arc<http2::Builder<TokioExecutor>>,
    close: tokio::sync::oneshot::Receiver<()>,
) {
    let mut buf = BytesMut::new();
    loop {
        let n = buf.len().min(H2_PREFACE.len());
        if buf[..n] != H2_PREFACE[..n] || n == H2_PREFACE.len() {
            break;
        }
        if n > 0 {
            state.head_arriving();
        }
        match std::future::poll_fn(|cx| poll_read_buf(&mut tcp, &mut buf, cx)).await {
            Ok(0) | Err(_) => return,
            Ok(_) => state.touch(),
        }
    }
    if buf.starts_with(H2_PREFACE) {
        serve_h2(tcp, buf, state, worker, h2, close).await;
    } else {
        http1::serve(tcp, buf, state, worker).await;
    }
}

/// HTTP/2 on a connection whose first bytes, `read`, were its preface.
async fn serve_h2(
    tcp: TcpStream,
    read: BytesMut,
    state: Arc<ConnState>,
    worker: Arc<Worker>,
    h2: Arc<http2::Builder<TokioExecutor>>,
    close: tokio::sync::oneshot::Receiver<()>,
) {
    state.is_h2.store(true, Relaxed);
    state.head_started_ms.store(0, Relaxed);
    let io = TokioIo::new(ActivityIo {
        read: read.freeze(),
        inner: tcp,
        state: state.clone(),
    });
    let service = {
        let state = state.clone();
        service_fn(move |req: http::Request<hyper::body::Incoming>| {
            let (worker, state) = (worker.clone(), state.clone());
            async move {
                let req = ClientRequest::from_http2(req);
                let mut response = pipeline::handle(&worker, &state, req).await?;
                // hyper writes the fields from the header map only.
                let (mut parts, mut body) = response.into_parts();
                if let Some(id) = body.request_id() {
                    parts.headers.insert(&REQUEST_ID, id.clone());
                }
                body.move_fields_into(&mut parts.headers);
                response = http::Response::from_parts(parts, body);
                Ok::<_, std::convert::Infallible>(response)
            }
        })
    };
    let conn = h2.serve_connection(io, service);
    tokio::pin!(conn);
    let ended = tokio::select! {
        r = conn.as_mut() => Some(r),
        _ = close => None,
    };
    let result = match ended {
        Some(result) => result,
        None => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(peer = %state.peer, error = %e, "connection ended with an error");
    }
}

enum Deadline {
    /// Shutdown, or the connection was idle too long: close it without cutting a request.
    Close,
    HeadTooSlow,
}

/// Wakes a few times per deadline (cheap on tokio's timer wheel) and reports the first one
/// that passes, or the shutdown signal.
async fn watch_deadlines(
    state: Arc<ConnState>,
    idle_timeout: Duration,
    header_timeout: Duration,
    mut shutdown: watch::Receiver<bool>,
    verdict: tokio::sync::oneshot::Sender<Deadline>,
) {
    let mut tick = tokio::time::interval(
        (idle_timeout.min(header_timeout) / 4).max(Duration::from_millis(10)),
    );
    // Activity is seen at the ticks, so an idle connection closes up to one tick (a quarter
    // of the timeout) after the timeout passes, never before.
    let mut last_active = Instant::now();
    let mut shutting_down = *shutdown.borrow_and_update();
    while !shutting_down {
        tokio::select! {
            _ = tick.tick() => {}
            // A closed channel means the server is gone: close as well.
            changed = shutdown.changed() => shutting_down = changed.is_err() || *shutdown.borrow(),
        }
        if state.head_pending_for() >= header_timeout {
            let _ = verdict.send(Deadline::HeadTooSlow);
            return;
        }
        if state.was_active() {
            last_active = Instant::now();
        } else if last_active.elapsed() >= idle_timeout {
            break;
        }
    }
    let _ = verdict.send(Deadline::Close);
}

/// An HTTP/2 connection's socket: marks the connection active whenever bytes move, for the
/// idle watchdog, and first gives back the bytes read to recognise the protocol.
struct ActivityIo {
    read: Bytes,
    inner: TcpStream,
    state: Arc<ConnState>,
}

impl AsyncRead for ActivityIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.read.is_empty() {
            let n = self.read.len().min(buf.remaining());
            buf.put_slice(&self.read[..n]);
            self.read.advance(n);
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.state.touch();
        }
        polled
    }
}

impl AsyncWrite for ActivityIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.state.touch();
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.state.touch();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};

    use portico_proto::{Format, parse_document};

    use super::*;
    use crate::access_log::AccessLogTarget;

    const APIS: &str = r#"
apis:
  - id: open
    kind: http
    routes: [{ key: GET /x, integration: { type: mock, body: public } }]
    stages: [{ name: s }]
  - id: inner
    kind: http
    endpoint: private
    routes: [{ key: GET /x, integration: { type: mock, body: private } }]
    stages: [{ name: s }]
"#;

    fn serve(settings: EdgeSettings) -> io::Result<EdgeServer> {
        let metrics = Arc::new(Metrics::default());
        let store = Arc::new(ConfigStore::new(metrics.clone()));
        store
            .apply(&parse_document(APIS, Format::Yaml).unwrap(), "test")
            .unwrap();
        let access_log = AccessLog::open(&AccessLogTarget::Off).unwrap();
        start(Arc::new(settings), store, metrics, access_log)
    }

    /// Sends `GET /s/x` for `api` on `tcp` and reads the response: (status line, body).
    fn ask(tcp: &mut std::net::TcpStream, api: &str) -> (String, String) {
        write!(
            tcp,
            "GET /s/x HTTP/1.1\r\nHost: {api}.portico.localhost\r\n\r\n"
        )
        .unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let n = tcp.read(&mut buf).unwrap();
            assert!(
                n > 0,
                "closed mid-response: {}",
                String::from_utf8_lossy(&got)
            );
            got.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&got).to_string();
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let length: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length: "))
                    .expect("a content-length")
                    .parse()
                    .unwrap();
                if body.len() >= length {
                    let status = head.lines().next().unwrap_or_default().to_string();
                    return (status, body.to_string());
                }
            }
        }
    }

    fn connect(addr: SocketAddr) -> std::net::TcpStream {
        let tcp = std::net::TcpStream::connect(addr).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        tcp
    }

    #[test]
    fn every_worker_serves_both_listeners_and_shutdown_drains_both() {
        let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
        let server = serve(EdgeSettings {
            listen: loopback,
            private_listen: Some(loopback),
            workers: 2,
            drain_timeout: Duration::from_secs(30),
            ..EdgeSettings::default()
        })
        .unwrap();
        let public = server.local_addr();
        let private = server.private_addr().expect("a private listener");
        assert_ne!(public, private);

        // Several connections each, so that both workers' sockets take some.
        for _ in 0..8 {
            let ok = ("HTTP/1.1 200 OK".to_string(), "public".to_string());
            assert_eq!(ask(&mut connect(public), "open"), ok);
            let ok = ("HTTP/1.1 200 OK".to_string(), "private".to_string());
            assert_eq!(ask(&mut connect(private), "inner"), ok);
            assert!(ask(&mut connect(public), "inner").0.contains(" 404 "));
            assert!(ask(&mut connect(private), "open").0.contains(" 404 "));
        }

        // Idle keep-alive connections on both listeners are closed by the drain, which then
        // ends well before its timeout.
        let mut kept = [connect(public), connect(private)];
        ask(&mut kept[0], "open");
        ask(&mut kept[1], "inner");
        let started = Instant::now();
        server.shutdown();
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "shutdown waited {:?}",
            started.elapsed()
        );
        for tcp in &mut kept {
            let mut rest = Vec::new();
            assert_eq!(tcp.read_to_end(&mut rest).unwrap(), 0, "closed by the edge");
        }
        for addr in [public, private] {
            assert!(
                std::net::TcpStream::connect(addr).is_err(),
                "{addr} still accepts"
            );
        }
    }

    #[test]
    fn the_private_listener_may_not_share_the_public_address() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap();
        drop(taken);
        let err = match serve(EdgeSettings {
            listen: addr,
            private_listen: Some(addr),
            workers: 1,
            ..EdgeSettings::default()
        }) {
            Ok(_) => panic!("started with both listeners on {addr}"),
            Err(e) => e,
        };
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        assert!(
            err.to_string().contains("public listener's address"),
            "{err}"
        );
    }
}
