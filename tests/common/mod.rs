//! Shared harness of the end-to-end tests: the real `portico` binary on loopback, an in-process
//! test backend, and small HTTP clients (HTTP/1.1, h2c and raw TCP).
//!
//! Every wait in here is bounded; nothing can hang a test.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, Result, anyhow, bail};
use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};

pub const BIN: &str = env!("CARGO_BIN_EXE_portico");
pub const SUFFIX: &str = "portico.localhost";

/// How long the edge may take to become ready.
pub const START_TIMEOUT: Duration = Duration::from_secs(10);
/// The bound on any single client exchange.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------------
// Ports, names, temp files
// ---------------------------------------------------------------------------------------------

/// A loopback port that was free a moment ago (bind to port 0, read it, drop the socket).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

/// `n` distinct free ports: every socket is held until all are chosen.
pub fn free_ports(n: usize) -> Vec<u16> {
    let held: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0"))
        .collect();
    held.iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect()
}

/// A name no other test (in this or another process) uses.
pub fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    format!(
        "{prefix}-{}-{}-{nanos}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// A directory under the system temp dir, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(prefix: &str) -> TempDir {
        let dir = std::env::temp_dir().join(unique_name(prefix));
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Replaces a file atomically (write a sibling, then rename), the way editors save.
pub fn write_atomically(path: &Path, text: &str) {
    let tmp = path.with_extension(format!("tmp-{}", unique_name("w")));
    std::fs::write(&tmp, text).expect("write temp config");
    std::fs::rename(&tmp, path).expect("rename config into place");
}

// ---------------------------------------------------------------------------------------------
// Captured output
// ---------------------------------------------------------------------------------------------

/// Lines a child wrote to one of its pipes, collected by a reader thread.
#[derive(Clone, Default)]
pub struct Lines(Arc<(Mutex<Vec<String>>, Condvar)>);

impl Lines {
    fn capture<R: Read + Send + 'static>(pipe: R) -> Lines {
        let lines = Lines::default();
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                let (buf, cv) = &*sink.0;
                buf.lock().unwrap().push(line);
                cv.notify_all();
            }
        });
        lines
    }

    pub fn snapshot(&self) -> Vec<String> {
        self.0.0.lock().unwrap().clone()
    }

    pub fn joined(&self) -> String {
        self.snapshot().join("\n")
    }

    pub fn len(&self) -> usize {
        self.0.0.lock().unwrap().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The first line (from index `from` on) that satisfies `pred`, waiting up to `timeout`.
    pub fn wait_for_from(
        &self,
        from: usize,
        timeout: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> Option<String> {
        let deadline = Instant::now() + timeout;
        let (buf, cv) = &*self.0;
        let mut guard = buf.lock().unwrap();
        loop {
            if let Some(l) = guard.iter().skip(from).find(|l| pred(l)) {
                return Some(l.clone());
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            guard = cv.wait_timeout(guard, deadline - now).unwrap().0;
        }
    }

    pub fn wait_for(&self, timeout: Duration, pred: impl Fn(&str) -> bool) -> Option<String> {
        self.wait_for_from(0, timeout, pred)
    }

    /// Lines that parse as JSON objects.
    pub fn json_lines(&self) -> Vec<serde_json::Value> {
        self.snapshot()
            .iter()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v.is_object())
            .collect()
    }
}

// ---------------------------------------------------------------------------------------------
// The edge process
// ---------------------------------------------------------------------------------------------

/// How to start `portico edge`.
pub struct EdgeBuilder {
    /// The config file's text; `None` for an edge that takes its config from control nodes.
    config: Option<String>,
    file_name: String,
    watch_ms: u64,
    workers: usize,
    private: bool,
    args: Vec<String>,
}

impl EdgeBuilder {
    /// File watching interval; 0 (the default here) leaves reloads to SIGHUP.
    pub fn watch_ms(mut self, ms: u64) -> Self {
        self.watch_ms = ms;
        self
    }

    pub fn workers(mut self, n: usize) -> Self {
        self.workers = n;
        self
    }

    /// Also listen privately (`--private-listen`), on a port of its own: [`Edge::private`].
    pub fn private_listener(mut self) -> Self {
        self.private = true;
        self
    }

    /// Any other flag, e.g. `.arg("--max-body-bytes", "1048576")`.
    pub fn arg(mut self, flag: &str, value: &str) -> Self {
        self.args.push(flag.to_string());
        self.args.push(value.to_string());
        self
    }

    /// The config file's name, e.g. `api.json` to have it parsed as JSON.
    pub fn file_name(mut self, name: &str) -> Self {
        self.file_name = name.to_string();
        self
    }

    /// Spawns the edge and waits (bounded) until `/readyz` answers 200. A port that was taken
    /// between choosing and binding it is retried with fresh ports.
    pub fn start(self) -> Edge {
        let mut last_err = String::new();
        for _ in 0..3 {
            match self.try_start() {
                Ok(edge) => return edge,
                Err((retry, err)) => {
                    if !retry {
                        panic!("the edge did not start: {err}");
                    }
                    last_err = err;
                }
            }
        }
        panic!("the edge did not start after 3 attempts: {last_err}");
    }

    /// Spawns the edge and returns without waiting for readiness (for start-up failures).
    pub fn spawn(self) -> Edge {
        self.spawn_on(&self.free_ports())
    }

    /// Public, ops and (if asked for) private.
    fn free_ports(&self) -> Vec<u16> {
        free_ports(if self.private { 3 } else { 2 })
    }

    /// Spawns the edge on these ports (public, ops, and private if asked for) without waiting
    /// for readiness, e.g. to restart an edge where it was.
    pub fn spawn_on(&self, ports: &[u16]) -> Edge {
        let dir = TempDir::new("portico-e2e");
        let config_path = dir.path().join(&self.file_name);
        if let Some(config) = &self.config {
            std::fs::write(&config_path, config).expect("write config");
        }
        let addr: SocketAddr = ([127, 0, 0, 1], ports[0]).into();
        let ops: SocketAddr = ([127, 0, 0, 1], ports[1]).into();
        let private = ports
            .get(2)
            .map(|port| SocketAddr::from(([127, 0, 0, 1], *port)));
        let mut args: Vec<String> = vec!["--log-format".into(), "json".into(), "edge".into()];
        if self.config.is_some() {
            args.extend(["--config".into(), config_path.display().to_string()]);
        }
        args.extend([
            "--listen".into(),
            addr.to_string(),
            "--ops-listen".into(),
            ops.to_string(),
            "--workers".into(),
            self.workers.to_string(),
            "--watch-interval-ms".into(),
            self.watch_ms.to_string(),
        ]);
        if let Some(p) = private {
            args.extend(["--private-listen".into(), p.to_string()]);
        }
        args.extend(self.args.iter().cloned());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Edge {
            proc: Proc::spawn(&args),
            addr,
            ops,
            private,
            config_path,
            _dir: dir,
        }
    }

    fn try_start(&self) -> std::result::Result<Edge, (bool, String)> {
        let mut edge = self.spawn_on(&self.free_ports());
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(Some(status)) = edge.child.try_wait() {
                // Let the reader threads catch the last lines.
                std::thread::sleep(Duration::from_millis(50));
                let err = edge.stderr.joined();
                let retry = err.contains("cannot listen") || err.contains("Address already in use");
                return Err((retry, format!("exited with {status}; stderr:\n{err}")));
            }
            if let Ok((200, _)) = ops_get_once(edge.ops, "/readyz") {
                return Ok(edge);
            }
            if Instant::now() > deadline {
                return Err((
                    false,
                    format!(
                        "/readyz not 200 within {START_TIMEOUT:?}; stderr:\n{}",
                        edge.stderr.joined()
                    ),
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A running `portico edge`, killed when dropped.
pub struct Edge {
    /// The process: its output lines, signals and exit (through `Deref`).
    proc: Proc,
    /// The public listener.
    pub addr: SocketAddr,
    /// The ops listener.
    pub ops: SocketAddr,
    /// The private listener, if [`EdgeBuilder::private_listener`] asked for one.
    pub private: Option<SocketAddr>,
    pub config_path: PathBuf,
    _dir: TempDir,
}

impl Edge {
    pub fn builder(config: &str) -> EdgeBuilder {
        EdgeBuilder {
            config: Some(config.to_string()),
            file_name: "portico.yaml".to_string(),
            watch_ms: 0,
            workers: 2,
            private: false,
            args: Vec::new(),
        }
    }

    pub fn start(config: &str) -> Edge {
        Edge::builder(config).start()
    }

    /// An edge without a config file, for one that syncs with control nodes: pass `--control`,
    /// `--data` and the rest with [`EdgeBuilder::arg`].
    pub fn controlled() -> EdgeBuilder {
        EdgeBuilder {
            config: None,
            ..Edge::builder("")
        }
    }

    /// `{api}.portico.localhost:{port}`, the Host that addresses an API.
    pub fn host(&self, api: &str) -> String {
        format!("{api}.{SUFFIX}:{}", self.addr.port())
    }

    /// `http://{api}.portico.localhost:{port}{path}`
    pub fn url(&self, api: &str, path: &str) -> String {
        format!("http://{}{path}", self.host(api))
    }

    /// Replaces the config file atomically.
    pub fn write_config(&self, text: &str) {
        write_atomically(&self.config_path, text);
    }

    pub fn ops_get(&self, path: &str) -> (u16, String) {
        ops_get(self.ops, path).unwrap_or_else(|e| panic!("GET ops {path}: {e:#}"))
    }

    pub fn status_json(&self) -> serde_json::Value {
        let (status, body) = self.ops_get("/status");
        assert_eq!(status, 200, "/status: {body}");
        serde_json::from_str(&body).expect("/status is JSON")
    }

    pub fn metrics(&self) -> String {
        let (status, body) = self.ops_get("/metrics");
        assert_eq!(status, 200, "/metrics: {body}");
        body
    }

    /// One sample, e.g. `metric("portico_requests_total{api=\"a\",stage=\"prod\"}")`; 0 when
    /// absent.
    pub fn metric(&self, series: &str) -> f64 {
        metric_value(&self.metrics(), series).unwrap_or(0.0)
    }

    /// Waits (bounded) until `series` equals `want`; returns the last value seen.
    pub fn wait_metric(&self, series: &str, want: f64, timeout: Duration) -> f64 {
        let deadline = Instant::now() + timeout;
        loop {
            let v = self.metric(series);
            if v == want || Instant::now() > deadline {
                return v;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl std::ops::Deref for Edge {
    type Target = Proc;
    fn deref(&self) -> &Proc {
        &self.proc
    }
}

impl std::ops::DerefMut for Edge {
    fn deref_mut(&mut self) -> &mut Proc {
        &mut self.proc
    }
}

/// The value of `series` (its full name with labels) in a Prometheus text page.
pub fn metric_value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .filter_map(|l| l.strip_prefix(series))
        .find_map(|rest| rest.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

/// A `portico` child process other than `edge` (e.g. `portico dev`), killed when dropped.
pub struct Proc {
    pub child: Child,
    pub stdout: Lines,
    pub stderr: Lines,
}

impl Proc {
    pub fn spawn(args: &[&str]) -> Proc {
        Proc::spawn_env(args, &[("PORTICO_LOG", "info")])
    }

    /// Like [`Proc::spawn`], with these environment variables set (e.g. another `PORTICO_LOG`).
    pub fn spawn_env(args: &[&str], env: &[(&str, &str)]) -> Proc {
        let mut cmd = Command::new(BIN);
        cmd.args(args).env_remove("PORTICO_LOG_FORMAT");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn portico");
        let stdout = Lines::capture(child.stdout.take().unwrap());
        let stderr = Lines::capture(child.stderr.take().unwrap());
        Proc {
            child,
            stdout,
            stderr,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal with `kill -SIG PID`.
    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{sig} {} failed", self.pid());
    }

    /// The exit status, if the process ends within `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs a command with a deadline; kills it when the deadline passes.
pub fn run_bounded(cmd: &mut Command, timeout: Duration) -> Result<std::process::Output> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("spawn")?;
    let out = Lines::capture(child.stdout.take().unwrap());
    let err = Lines::capture(child.stderr.take().unwrap());
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{cmd:?} did not finish within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    // The pipes close with the process; give the reader threads a moment to drain them.
    std::thread::sleep(Duration::from_millis(50));
    Ok(std::process::Output {
        status,
        stdout: out.joined().into_bytes(),
        stderr: err.joined().into_bytes(),
    })
}

// ---------------------------------------------------------------------------------------------
// Blocking HTTP/1.1 over a raw TCP stream (ops listener, idle and limit tests)
// ---------------------------------------------------------------------------------------------

fn ops_get_once(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    tcp.set_read_timeout(Some(Duration::from_secs(5)))?;
    tcp.set_write_timeout(Some(Duration::from_secs(5)))?;
    write!(
        tcp,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    tcp.read_to_end(&mut raw)?;
    let resp = parse_raw_response(&raw)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()))?;
    Ok((
        resp.status,
        String::from_utf8_lossy(&resp.body).into_owned(),
    ))
}

/// A GET on the ops listener; retried briefly while it is not up.
pub fn ops_get(addr: SocketAddr, path: &str) -> Result<(u16, String)> {
    let mut last = None;
    for _ in 0..20 {
        match ops_get_once(addr, path) {
            Ok(r) => return Ok(r),
            Err(e) => last = Some(e),
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(anyhow!("GET {path} on {addr}: {:?}", last))
}

/// A response read off a raw socket.
#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    /// Lower-cased names.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

/// Splits a complete response (headers and a content-length body, or the rest).
pub fn parse_raw_response(raw: &[u8]) -> Result<RawResponse> {
    let end = find(raw, b"\r\n\r\n").ok_or_else(|| anyhow!("no end of headers"))?;
    let head = std::str::from_utf8(&raw[..end])?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow!("bad status line {status_line:?}"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let mut body = raw[end + 4..].to_vec();
    if let Some(len) = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse::<usize>().ok())
    {
        body.truncate(len);
    }
    Ok(RawResponse {
        status,
        headers,
        body,
    })
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Reads exactly one response with a content-length body from `tcp` (the connection stays
/// usable). Bounded by the socket's read timeout.
pub fn read_one_response(tcp: &mut TcpStream) -> Result<RawResponse> {
    let mut raw = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        if let Some(end) = find(&raw, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase();
            let len = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .ok_or_else(|| anyhow!("response without content-length: {head}"))?;
            if raw.len() >= end + 4 + len {
                return parse_raw_response(&raw[..end + 4 + len]);
            }
        }
        let n = tcp.read(&mut chunk).context("read response")?;
        if n == 0 {
            bail!(
                "connection closed mid-response after {} bytes: {:?}",
                raw.len(),
                String::from_utf8_lossy(&raw)
            );
        }
        raw.extend_from_slice(&chunk[..n]);
    }
}

/// Connects with read/write timeouts set.
pub fn connect(addr: SocketAddr, timeout: Duration) -> TcpStream {
    let tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).expect("connect");
    tcp.set_read_timeout(Some(timeout)).unwrap();
    tcp.set_write_timeout(Some(timeout)).unwrap();
    tcp
}

/// Waits (bounded) for the peer to close: `Ok(elapsed)` on EOF or reset, `Err` if the deadline
/// passes or data arrives.
pub fn wait_for_close(tcp: &mut TcpStream, timeout: Duration) -> Result<Duration> {
    let started = Instant::now();
    tcp.set_read_timeout(Some(timeout))?;
    let mut buf = [0u8; 1024];
    match tcp.read(&mut buf) {
        Ok(0) => Ok(started.elapsed()),
        Ok(n) => bail!(
            "unexpected data instead of a close: {:?}",
            String::from_utf8_lossy(&buf[..n])
        ),
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::ConnectionAborted
            ) =>
        {
            Ok(started.elapsed())
        }
        Err(e) => bail!("no close within {timeout:?}: {e}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Bodies and checksums
// ---------------------------------------------------------------------------------------------

/// FNV-1a 64 of `data`, as 16 hex digits.
pub fn checksum(data: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in data {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// `len` deterministic pseudo-random bytes (so a dropped or reordered chunk changes the sum).
pub fn pattern_body(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// A request body of several frames and no known length, so HTTP/1.1 sends it chunked.
pub struct ChunkedBody {
    chunks: std::collections::VecDeque<Bytes>,
}

impl ChunkedBody {
    pub fn new(data: &[u8], sizes: &[usize]) -> ChunkedBody {
        let mut chunks = std::collections::VecDeque::new();
        let mut rest = data;
        let mut i = 0;
        while !rest.is_empty() {
            let n = sizes[i % sizes.len()].min(rest.len()).max(1);
            chunks.push_back(Bytes::copy_from_slice(&rest[..n]));
            rest = &rest[n..];
            i += 1;
        }
        ChunkedBody { chunks }
    }
}

impl Body for ChunkedBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<std::result::Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.chunks.pop_front().map(|c| Ok(Frame::data(c))))
    }

    fn is_end_stream(&self) -> bool {
        self.chunks.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

// ---------------------------------------------------------------------------------------------
// The test backend
// ---------------------------------------------------------------------------------------------

/// What the backend saw of one request.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    pub headers: BTreeMap<String, String>,
    pub body_len: usize,
}

#[derive(Default)]
struct BackendState {
    started: AtomicUsize,
    seen: Mutex<Vec<Seen>>,
}

/// An HTTP/1.1 backend on 127.0.0.1 with its own runtime.
///
/// * any path: 200 and a JSON echo of method, path, query, headers, body length and checksum;
/// * `/slow?ms=N`: the same after sleeping N ms;
/// * `/status/N[/...]`: the same with status N;
/// * `/hop[/...]`: the same with hop-by-hop response headers that a proxy must drop;
/// * `/close[/...]`: the same, then the backend closes the connection;
/// * `/bytes?n=N`: N bytes of `pattern_body(N, 99)`, nothing else.
///
/// Every echo also carries `location: /created{path}`, `x-backend-only: yes` and
/// `x-request-id: from-backend`, which the edge must replace with the request's own id.
pub struct Backend {
    pub addr: SocketAddr,
    state: Arc<BackendState>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Backend {
    pub fn start() -> Backend {
        Backend::start_on(0)
    }

    /// A backend on a given port (0: any), e.g. to restart one where the last one was.
    pub fn start_on(port: u16) -> Backend {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("backend runtime");
        let state = Arc::new(BackendState::default());
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind(("127.0.0.1", port)))
            .expect("bind backend");
        let addr = listener.local_addr().unwrap();
        let st = state.clone();
        runtime.spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let st = st.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| backend_answer(st.clone(), req));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), service)
                        .await;
                });
            }
        });
        Backend {
            addr,
            state,
            runtime: Some(runtime),
        }
    }

    /// Requests whose handling started (before any sleep).
    pub fn started(&self) -> usize {
        self.state.started.load(Ordering::SeqCst)
    }

    /// Requests fully received (body read).
    pub fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().unwrap().clone()
    }

    /// Waits (bounded) until at least `n` requests have started.
    pub fn wait_started(&self, n: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while self.started() < n {
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        true
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

async fn backend_answer(
    state: Arc<BackendState>,
    req: Request<Incoming>,
) -> std::result::Result<Response<Full<Bytes>>, Infallible> {
    state.started.fetch_add(1, Ordering::SeqCst);
    let (parts, body) = req.into_parts();
    let body = match body.collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            let mut r = Response::new(Full::new(Bytes::from(format!("body error: {e}"))));
            *r.status_mut() = StatusCode::BAD_REQUEST;
            return Ok(r);
        }
    };
    let path = parts.uri.path().to_string();
    let query = parts.uri.query().map(str::to_string);
    let mut headers = BTreeMap::new();
    for (k, v) in &parts.headers {
        let v = String::from_utf8_lossy(v.as_bytes()).into_owned();
        headers
            .entry(k.to_string())
            .and_modify(|prev: &mut String| {
                prev.push_str(", ");
                prev.push_str(&v);
            })
            .or_insert(v);
    }
    state.seen.lock().unwrap().push(Seen {
        method: parts.method.to_string(),
        path: path.clone(),
        query: query.clone(),
        headers: headers.clone(),
        body_len: body.len(),
    });

    let param = |name: &str| -> Option<u64> {
        query
            .as_deref()?
            .split('&')
            .find_map(|p| p.strip_prefix(name)?.strip_prefix('='))
            .and_then(|v| v.parse().ok())
    };
    if path.starts_with("/bytes") {
        let n = param("n").unwrap_or(0) as usize;
        let mut r = Response::new(Full::new(Bytes::from(pattern_body(n, 99))));
        r.headers_mut()
            .insert("content-type", "application/octet-stream".parse().unwrap());
        return Ok(r);
    }
    if path.starts_with("/slow") {
        let ms = param("ms").unwrap_or(1000);
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    let status = path
        .strip_prefix("/status/")
        .and_then(|rest| rest.split('/').next())
        .and_then(|code| code.parse::<u16>().ok())
        .and_then(|code| StatusCode::from_u16(code).ok())
        .unwrap_or(StatusCode::OK);
    let echo = serde_json::json!({
        "method": parts.method.as_str(),
        "path": path,
        "query": query,
        "headers": headers,
        "bodyLength": body.len(),
        "checksum": checksum(&body),
        "version": format!("{:?}", parts.version),
    });
    let mut r = Response::new(Full::new(Bytes::from(echo.to_string())));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert("content-type", "application/json".parse().unwrap());
    h.insert("location", format!("/created{path}").parse().unwrap());
    h.insert("x-backend-only", "yes".parse().unwrap());
    h.insert("x-request-id", "from-backend".parse().unwrap());
    if path.starts_with("/close") {
        h.insert("connection", "close".parse().unwrap());
    }
    if path.starts_with("/hop") {
        h.insert("connection", "x-backend-secret".parse().unwrap());
        h.insert("x-backend-secret", "1".parse().unwrap());
        h.insert("keep-alive", "timeout=99".parse().unwrap());
        h.insert("proxy-connection", "keep-alive".parse().unwrap());
    }
    Ok(r)
}

// ---------------------------------------------------------------------------------------------
// Async clients
// ---------------------------------------------------------------------------------------------

/// A multi-threaded runtime for a test's client side.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("client runtime")
}

/// A response with its whole body.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub version: http::Version,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body (status {}) is not JSON ({e}): {}",
                self.status,
                self.text()
            )
        })
    }

    /// The request id header, which every response must have.
    pub fn request_id(&self) -> String {
        self.header("x-request-id")
            .unwrap_or_else(|| panic!("no x-request-id on {self:?}"))
            .to_string()
    }
}

async fn collect(resp: Response<Incoming>) -> Result<Resp> {
    let (parts, body) = resp.into_parts();
    let body = body
        .collect()
        .await
        .context("read response body")?
        .to_bytes();
    Ok(Resp {
        status: parts.status.as_u16(),
        version: parts.version,
        headers: parts.headers,
        body,
    })
}

/// Sends one request on a new HTTP/1.1 connection, headers exactly as given (set `Host`).
pub async fn send<B>(addr: SocketAddr, req: Request<B>) -> Result<Resp>
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let exchange = async {
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .context("connect")?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .context("handshake")?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let resp = sender.send_request(req).await.context("send request")?;
        collect(resp).await
    };
    tokio::time::timeout(REQUEST_TIMEOUT, exchange)
        .await
        .map_err(|_| anyhow!("no response within {REQUEST_TIMEOUT:?}"))?
}

/// A request to `path` of API `api` on the edge, with extra headers and a body.
pub fn request(
    edge: &Edge,
    method: &str,
    api: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Request<Full<Bytes>> {
    let mut b = Request::builder()
        .method(method)
        .uri(path)
        .header("host", edge.host(api));
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(Full::new(body.into())).expect("build request")
}

/// `GET path` on API `api`.
pub async fn get(edge: &Edge, api: &str, path: &str) -> Result<Resp> {
    send(
        edge.addr,
        request(edge, "GET", api, path, &[], Bytes::new()),
    )
    .await
}

/// Sends requests over one h2c (prior knowledge) connection, all at once.
pub async fn send_h2(addr: SocketAddr, reqs: Vec<Request<Full<Bytes>>>) -> Result<Vec<Resp>> {
    let exchange = async {
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .context("connect")?;
        let (sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
                .await
                .context("h2 handshake")?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let mut tasks = Vec::new();
        for req in reqs {
            let mut sender = sender.clone();
            tasks.push(tokio::spawn(async move {
                sender.ready().await.context("h2 ready")?;
                let resp = sender.send_request(req).await.context("h2 send")?;
                collect(resp).await
            }));
        }
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.context("h2 task")??);
        }
        Ok(out)
    };
    tokio::time::timeout(REQUEST_TIMEOUT, exchange)
        .await
        .map_err(|_| anyhow!("no h2 responses within {REQUEST_TIMEOUT:?}"))?
}

/// Polls (bounded) until `check` passes on a fresh `GET`; returns the last response.
pub async fn eventually_get(
    edge: &Edge,
    api: &str,
    path: &str,
    timeout: Duration,
    check: impl Fn(&Resp) -> bool,
) -> Result<Resp> {
    let deadline = Instant::now() + timeout;
    loop {
        let r = get(edge, api, path).await?;
        if check(&r) || Instant::now() > deadline {
            return Ok(r);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Builds a config from YAML lines with `{B}` replaced by the backend address.
pub fn config(template: &str, backend: SocketAddr) -> String {
    template.replace("{B}", &backend.to_string())
}
