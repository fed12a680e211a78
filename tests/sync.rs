//! End-to-end tests of config distribution: real `portico control` nodes and real
//! `portico edge --control ...` processes on loopback (enrolment, per-region filtering,
//! `deploy --wait`, a control plane outage under load, last-known-good on disk, revocation),
//! and raw QUIC clients playing a stranger or a misbehaving edge.
//!
//! Every wait is bounded; processes are killed and data directories removed on drop. Timings are
//! printed, never asserted.

mod cluster_support;
mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use cluster_support::{CONVERGE_TIMEOUT, Cluster, http, text};
use common::{
    Edge, EdgeBuilder, RawResponse, TempDir, ops_get, parse_raw_response, read_one_response,
};
use portico_proto::frame::{decode_body, encode_frame, frame_length};
use portico_proto::sync::{
    ALPN_SYNC, CLOSE_BAD_INPUT, CLOSE_FORBIDDEN, CONTROL_SERVER_NAME, ControlMessage, EdgeMessage,
    Hello, MAX_CONTROL_FRAME, MAX_EDGE_FRAME,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::Value;

/// How long one request to an edge may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// `/status?wait_revision=R` answers within 30 s; the socket waits a little longer.
const LONG_POLL_TIMEOUT: Duration = Duration::from_secs(40);
/// How long a raw QUIC exchange may take before the test fails instead of hanging.
const QUIC_TIMEOUT: Duration = Duration::from_secs(10);
const LKG_FILE: &str = "last-known-good.bin";

// ---------------------------------------------------------------------------------------------
// Edges that sync with the control plane
// ---------------------------------------------------------------------------------------------

/// A `portico edge --control ...` whose data directory (identity, last-known-good) and ports
/// outlive its process, so it can be killed and started again where it was.
struct SyncedEdge {
    /// Declared first, so the process is killed before its data directory is removed.
    edge: Option<Edge>,
    id: String,
    region: String,
    controls: String,
    data: TempDir,
    /// Public and ops.
    ports: Vec<u16>,
}

impl SyncedEdge {
    /// Enrols a new edge in `region` with the join token, and waits until it is ready (it has
    /// applied its first config from a control node).
    fn enrol(cluster: &Cluster, join_token: &str, region: &str) -> SyncedEdge {
        let data = TempDir::new("portico-edge-data");
        let controls = cluster.control_addrs();
        let edge = builder(&controls, data.path())
            .arg("--region", region)
            .arg("--join-token", join_token)
            .start();
        let identity: Value = serde_json::from_str(
            &std::fs::read_to_string(data.path().join("identity/identity.json"))
                .expect("the edge wrote identity/identity.json"),
        )
        .expect("identity.json is JSON");
        let id = identity["edge_id"].as_str().expect("edge_id").to_string();
        assert!(
            edge.stdout
                .wait_for(Duration::from_secs(2), |l| l
                    .contains(&format!("Enrolled as edge {id} in region {region}")))
                .is_some(),
            "no enrolment line for {id}: {}",
            edge.stdout.joined()
        );
        SyncedEdge {
            id,
            region: region.to_string(),
            controls,
            data,
            ports: vec![edge.addr.port(), edge.ops.port()],
            edge: Some(edge),
        }
    }

    fn edge(&self) -> &Edge {
        self.edge.as_ref().expect("the edge runs")
    }

    /// `kill -9`.
    fn kill(&mut self) {
        drop(self.edge.take().expect("the edge runs"));
    }

    /// Starts the edge again on its ports with only `--control` and `--data` (it has its
    /// identity), without waiting for anything.
    fn spawn(&mut self) -> &Edge {
        assert!(self.edge.is_none(), "edge {} is already running", self.id);
        let edge = builder(&self.controls, self.data.path()).spawn_on(&self.ports);
        self.edge.insert(edge)
    }

    fn identity_dir(&self) -> PathBuf {
        self.data.path().join("identity")
    }

    fn status(&self) -> Value {
        self.edge().status_json()
    }

    /// The last lines the edge logged, for failure messages.
    fn log_tail(&self) -> String {
        let lines = self.edge().stderr.snapshot();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    /// Long-polls `/status?wait_revision=R` and asserts the edge serves at least revision R.
    fn wait_revision(&self, revision: u64) -> Value {
        let path = format!("/status?wait_revision={revision}");
        let ops = self.edge().ops;
        let r = http_get(ops, &ops.to_string(), &path)
            .unwrap_or_else(|e| panic!("GET {path} on edge {}: {e:#}", self.id));
        assert_eq!(r.status, 200, "{path}: {}", text(&r));
        let status = r.json();
        assert!(
            status["revision"].as_u64() >= Some(revision),
            "edge {} does not serve revision {revision} after 30 s: {status:#}\nlog:\n{}",
            self.id,
            self.log_tail()
        );
        status
    }

    /// `GET path` of API `api`; panics if the edge does not answer.
    fn get(&self, api: &str, path: &str) -> RawResponse {
        let edge = self.edge();
        http_get(edge.addr, &edge.host(api), path)
            .unwrap_or_else(|e| panic!("GET {path} of {api} on edge {}: {e:#}", self.id))
    }
}

fn builder(controls: &str, data: &Path) -> EdgeBuilder {
    Edge::controlled()
        .workers(1)
        .arg("--control", controls)
        .arg("--data", &data.display().to_string())
}

/// One GET on a new connection (`Connection: close`), bounded; long polls wait longer.
fn http_get(addr: SocketAddr, host: &str, path: &str) -> anyhow::Result<RawResponse> {
    let mut tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).context("connect")?;
    let timeout = if path.contains("wait_revision") {
        LONG_POLL_TIMEOUT
    } else {
        REQUEST_TIMEOUT
    };
    tcp.set_read_timeout(Some(timeout))?;
    tcp.set_write_timeout(Some(REQUEST_TIMEOUT))?;
    write!(
        tcp,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    tcp.read_to_end(&mut raw).context("read the response")?;
    parse_raw_response(&raw)
}

/// Polls `check` every 50 ms until it returns `Ok`, for at most `timeout`; the panic shows the
/// last `Err` (what was seen instead).
fn wait_until<T>(timeout: Duration, what: &str, mut check: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        match check() {
            Ok(v) => return v,
            Err(seen) if Instant::now() > deadline => {
                panic!("{what}: not within {timeout:?}; last seen: {seen}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// `/status` once its `sync.connected` is `connected`, else what it shows.
fn connected_is(edge: &SyncedEdge, connected: bool) -> Result<Value, String> {
    let status = edge.status();
    if status["sync"]["connected"] == connected {
        Ok(status)
    } else {
        Err(status.to_string())
    }
}

/// The revision of a 200 answer to a write.
fn revision_of(r: &RawResponse) -> u64 {
    assert_eq!(r.status, 200, "write: {}", text(r));
    r.json()["revision"]
        .as_u64()
        .unwrap_or_else(|| panic!("no revision in {}", text(r)))
}

/// `portico ARGS --server ADDR` with the admin token; asserts it succeeds and returns stdout.
fn cli_ok(c: &Cluster, server: SocketAddr, args: &[&str]) -> String {
    c.cli_ok(&server.to_string(), args)
}

/// `portico cluster edges -o json`, by edge id.
fn cluster_edges(c: &Cluster, server: SocketAddr) -> (Value, Vec<Value>) {
    let answer: Value =
        serde_json::from_str(&cli_ok(c, server, &["cluster", "edges", "-o", "json"]))
            .expect("cluster edges -o json prints JSON");
    let items = answer["items"].as_array().cloned().unwrap_or_default();
    (answer, items)
}

fn edge_row<'a>(items: &'a [Value], id: &str) -> &'a Value {
    items
        .iter()
        .find(|e| e["id"] == id)
        .unwrap_or_else(|| panic!("edge {id} is not listed: {items:#?}"))
}

// ---------------------------------------------------------------------------------------------
// A client that loads an edge with keep-alive requests
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Default)]
struct LoadLog {
    ok: usize,
    failed: usize,
    /// The first few failures.
    failures: Vec<String>,
    connections: usize,
}

/// GETs one URL in a loop on a keep-alive connection (a new one only after an error or a
/// `Connection: close`), from a thread of its own, until stopped.
struct Load {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<LoadLog>>,
}

impl Load {
    fn start(addr: SocketAddr, host: String, path: &str, expect_body: &str) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let request = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n");
        let expect_body = expect_body.to_string();
        let handle = std::thread::spawn(move || {
            let mut log = LoadLog::default();
            let mut conn: Option<TcpStream> = None;
            let fail = |log: &mut LoadLog, why: String| {
                log.failed += 1;
                if log.failures.len() < 10 {
                    log.failures.push(why);
                }
            };
            while !stopping.load(Ordering::SeqCst) {
                if conn.is_none() {
                    match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
                        Ok(tcp) => {
                            tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                            tcp.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
                            log.connections += 1;
                            conn = Some(tcp);
                        }
                        Err(e) => {
                            fail(&mut log, format!("connect: {e}"));
                            std::thread::sleep(Duration::from_millis(20));
                            continue;
                        }
                    }
                }
                let tcp = conn.as_mut().expect("connected");
                let answer = tcp
                    .write_all(request.as_bytes())
                    .map_err(anyhow::Error::from)
                    .and_then(|()| read_one_response(tcp));
                match answer {
                    Ok(r) if r.status == 200 && r.body == expect_body.as_bytes() => {
                        log.ok += 1;
                        if r.header("connection") == Some("close") {
                            conn = None;
                        }
                    }
                    Ok(r) => {
                        fail(
                            &mut log,
                            format!("{} {}", r.status, String::from_utf8_lossy(&r.body)),
                        );
                        conn = None;
                    }
                    Err(e) => {
                        fail(&mut log, format!("{e:#}"));
                        conn = None;
                    }
                }
                // About 300 requests a second: enough to see any gap, little CPU on 2 cores.
                std::thread::sleep(Duration::from_millis(3));
            }
            log
        });
        Load {
            stop,
            handle: Some(handle),
        }
    }

    fn stop(mut self) -> LoadLog {
        self.stop.store(true, Ordering::SeqCst);
        self.handle
            .take()
            .expect("running")
            .join()
            .expect("the load thread panicked")
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Raw QUIC clients
// ---------------------------------------------------------------------------------------------

fn install_crypto() {
    // Another test in this process may have installed it already.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// What an enrolled edge keeps in `DATA/identity`.
struct EdgeFiles {
    ca: CertificateDer<'static>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl EdgeFiles {
    fn read(dir: &Path) -> EdgeFiles {
        let ca = CertificateDer::from_pem_file(dir.join("ca.pem")).expect("identity/ca.pem");
        let chain = CertificateDer::pem_file_iter(dir.join("edge.pem"))
            .expect("identity/edge.pem")
            .collect::<Result<Vec<_>, _>>()
            .expect("identity/edge.pem holds certificates");
        let key = PrivateKeyDer::from_pem_file(dir.join("edge.key")).expect("identity/edge.key");
        EdgeFiles { ca, chain, key }
    }
}

/// A quinn client configuration for `portico-sync/1` that trusts `ca` and presents `client`
/// (a certificate chain and its key), or no certificate.
fn sync_client(
    ca: &CertificateDer<'static>,
    client: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
) -> quinn::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone()).expect("CA certificate");
    let builder = rustls::ClientConfig::builder_with_protocol_versions(&[&rustls::version::TLS13])
        .with_root_certificates(roots);
    let mut tls = match client {
        Some((chain, key)) => builder
            .with_client_auth_cert(chain, key)
            .expect("client certificate"),
        None => builder.with_no_client_auth(),
    };
    tls.alpn_protocols = vec![ALPN_SYNC.to_vec()];
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls).expect("QUIC TLS config");
    quinn::ClientConfig::new(Arc::new(quic))
}

/// A certificate that looks like an edge's (same name and region layout) from a CA of its own.
fn foreign_edge_certificate(
    edge_id: &str,
    region: &str,
) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
    let ca_key = rcgen::KeyPair::generate().expect("CA key");
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "portico cluster CA impostor");
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
    ca.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let key = rcgen::KeyPair::generate().expect("edge key");
    let mut leaf = rcgen::CertificateParams::new(vec![format!("edge-{edge_id}.portico.internal")])
        .expect("edge params");
    leaf.distinguished_name
        .push(rcgen::DnType::OrganizationalUnitName, region);
    leaf.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let cert = leaf
        .signed_by(&key, &issuer)
        .expect("sign the edge certificate");
    let key = PrivatePkcs8KeyDer::from(key.serialize_der());
    (vec![cert.der().clone()], key.into())
}

fn hello_frame(edge_id: &str, region: &str, protocol_version: u32) -> Vec<u8> {
    encode_frame(&EdgeMessage::Hello(Hello {
        edge_id: edge_id.to_string(),
        region: region.to_string(),
        software_version: "raw-test-client".to_string(),
        protocol_version,
        revision: 0,
        private_listener: false,
    }))
    .expect("encode hello")
}

/// Reads one frame from the control node.
async fn read_control(recv: &mut quinn::RecvStream) -> Result<ControlMessage, String> {
    let mut prefix = [0u8; 4];
    recv.read_exact(&mut prefix)
        .await
        .map_err(|e| format!("reading a frame: {e}"))?;
    let len = frame_length(prefix, MAX_CONTROL_FRAME).map_err(|e| e.to_string())?;
    let mut frame = vec![0u8; len];
    recv.read_exact(&mut frame)
        .await
        .map_err(|e| format!("reading a frame: {e}"))?;
    decode_body(&frame).map_err(|e| e.to_string())
}

/// Connects to the control node (bounded); the handshake's error if it fails.
async fn connect(
    endpoint: &quinn::Endpoint,
    config: quinn::ClientConfig,
    control: SocketAddr,
) -> Result<quinn::Connection, quinn::ConnectionError> {
    let connecting = endpoint
        .connect_with(config, control, CONTROL_SERVER_NAME)
        .expect("start a QUIC connection");
    tokio::time::timeout(QUIC_TIMEOUT, connecting)
        .await
        .expect("the QUIC handshake neither completed nor failed within 10 s")
}

/// Opens the session stream, writes `bytes`, and reads the control node's first frame.
async fn send_and_read(conn: &quinn::Connection, bytes: &[u8]) -> Result<ControlMessage, String> {
    let exchange = async {
        let (mut send, mut recv) = conn
            .open_bi()
            .await
            .map_err(|e| format!("opening a stream: {e}"))?;
        send.write_all(bytes)
            .await
            .map_err(|e| format!("writing: {e}"))?;
        read_control(&mut recv).await
    };
    tokio::time::timeout(QUIC_TIMEOUT, exchange)
        .await
        .unwrap_or_else(|_| Err("no frame and no close within 10 s".into()))
}

/// How the connection ended, waiting (bounded) for the control node to end it.
async fn closed(conn: &quinn::Connection) -> quinn::ConnectionError {
    tokio::time::timeout(QUIC_TIMEOUT, conn.closed())
        .await
        .expect("the control node did not close the connection within 10 s")
}

/// The application close code, when the peer closed the connection with one.
fn application_code(e: &quinn::ConnectionError) -> Option<u64> {
    match e {
        quinn::ConnectionError::ApplicationClosed(c) => Some(c.error_code.into_inner()),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------------
// The tests
// ---------------------------------------------------------------------------------------------

const TWO_APIS: &str = r#"apis:
  - id: everywhere
    kind: http
    routes:
      - key: GET /hello
        integration: {type: mock, status: 200, body: hello from everywhere}
    stages:
      - name: prod
  - id: usonly
    kind: http
    endpoint: regional
    region: us
    routes:
      - key: GET /hello
        integration: {type: mock, status: 200, body: hello from us}
    stages:
      - name: prod
"#;

/// Two edges enrol with one join token; each receives the edge-optimized API, only the us edge
/// the regional API of us. `deploy --wait` returns once both serve the deployment, and
/// `cluster edges` shows both connected at the latest revision.
#[test]
fn edges_enrol_and_receive_the_apis_of_their_region() {
    let c = Cluster::start(1);
    let admin = c.admin(0);
    let join = c.edge_join_token("edges");
    let started = Instant::now();
    let eu = SyncedEdge::enrol(&c, &join, "eu");
    let us = SyncedEdge::enrol(&c, &join, "us");
    eprintln!("two edges enrolled and ready in {:?}", started.elapsed());
    assert!(
        eu.id.starts_with("eu-") && us.id.starts_with("us-"),
        "{} {}",
        eu.id,
        us.id
    );
    assert_ne!(eu.id, us.id);
    for file in ["identity.json", "ca.pem", "edge.pem", "edge.key"] {
        assert!(eu.identity_dir().join(file).is_file(), "no identity/{file}");
    }
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(eu.identity_dir().join("edge.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "edge.key is readable by others: {mode:o}");
    }

    let file = c.dir().join("apis.yaml");
    std::fs::write(&file, TWO_APIS).unwrap();
    cli_ok(&c, admin, &["apply", "-f", &file.display().to_string()]);
    let deploy_started = Instant::now();
    let out = cli_ok(
        &c,
        admin,
        &[
            "deploy",
            "everywhere",
            "--stage",
            "prod",
            "--wait",
            "--wait-timeout",
            "20",
        ],
    );
    eprintln!(
        "deploy --wait returned after {:?}: {out}",
        deploy_started.elapsed()
    );
    let revision: u64 = out
        .lines()
        .find_map(|l| l.strip_prefix("deployed everywhere as "))
        .and_then(|l| l.rsplit("revision ").next())
        .and_then(|r| r.trim().parse().ok())
        .unwrap_or_else(|| panic!("no revision in the deploy output: {out}"));
    assert!(
        out.contains(&format!("all 2 edges serve revision {revision}")),
        "{out}"
    );
    // --wait returned: both edges already serve it (no waiting here).
    for e in [&eu, &us] {
        let status = e.status();
        assert!(
            status["revision"].as_u64() >= Some(revision),
            "deploy --wait returned before edge {} served revision {revision}: {status:#}",
            e.id
        );
        assert_eq!(status["sync"]["connected"], true, "{status:#}");
        assert_eq!(status["last_error"], Value::Null, "{status:#}");
    }

    // The us edge serves both APIs.
    for (api, body) in [
        ("everywhere", "hello from everywhere"),
        ("usonly", "hello from us"),
    ] {
        let r = us.get(api, "/prod/hello");
        assert_eq!((r.status, text(&r).as_str()), (200, body), "us edge, {api}");
    }
    assert_eq!(us.status()["apis"], 2);
    // The eu edge serves the edge API and does not hold the regional one.
    let r = eu.get("everywhere", "/prod/hello");
    assert_eq!(
        (r.status, text(&r).as_str()),
        (200, "hello from everywhere")
    );
    let r = eu.get("usonly", "/prod/hello");
    assert_eq!(r.status, 404, "eu edge serves the us API: {}", text(&r));
    assert!(text(&r).contains("usonly"), "{}", text(&r));
    let status = eu.status();
    assert_eq!(
        status["apis"], 1,
        "the eu edge holds more than the edge API: {status:#}"
    );

    // The control plane sees both, connected, at the latest revision.
    let (answer, items) = cluster_edges(&c, admin);
    assert_eq!(answer["revision"], revision, "{answer:#}");
    assert_eq!(items.len(), 2, "{answer:#}");
    for (e, region) in [(&eu, "eu"), (&us, "us")] {
        let row = edge_row(&items, &e.id);
        assert_eq!(row["region"], region, "{row:#}");
        assert_eq!(row["status"], "connected", "{row:#}");
        assert_eq!(row["revision"], revision, "{row:#}");
        assert_eq!(row["lag"], 0, "{row:#}");
        assert_eq!(e.region, region);
    }
    let table = cli_ok(&c, admin, &["cluster", "edges"]);
    assert!(table.contains(&eu.id) && table.contains(&us.id), "{table}");
    let metrics = http(admin, "GET", "/metrics", None, &[], "").expect("GET /metrics");
    assert!(
        text(&metrics).contains("portico_sync_edges_connected 2"),
        "{}",
        text(&metrics)
    );
    let edge_metrics = eu.edge().metrics();
    for series in ["portico_sync_connected 1", "portico_sync_lag_revisions 0"] {
        assert!(edge_metrics.contains(series), "{series}: {edge_metrics}");
    }
}

/// Every control node is killed while a client loads both edges: not one request fails. An edge
/// restarted while the control plane is still down serves its last config from its first
/// request on. Once the control nodes are back, every edge converges on a new write.
#[test]
fn edges_serve_through_a_control_plane_outage_and_converge_after_it() {
    let mut c = Cluster::start(3);
    let join = c.edge_join_token("edges");
    let mut eu = SyncedEdge::enrol(&c, &join, "eu");
    let us = SyncedEdge::enrol(&c, &join, "us");
    let leader = c.wait_leader(CONVERGE_TIMEOUT);
    let before = revision_of(&c.put_api_retrying(leader, "steady", "before the outage"));
    for e in [&eu, &us] {
        e.wait_revision(before);
    }

    let loads: Vec<Load> = [&eu, &us]
        .iter()
        .map(|e| {
            Load::start(
                e.edge().addr,
                e.edge().host("steady"),
                "/s/x",
                "before the outage",
            )
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    for i in 0..3 {
        c.kill(i);
    }
    let killed = Instant::now();
    // The edges notice the control plane is gone; the load goes on meanwhile.
    for e in [&eu, &us] {
        wait_until(
            Duration::from_secs(30),
            "the edge notices the outage",
            || connected_is(e, false),
        );
    }
    let noticed = killed.elapsed();
    std::thread::sleep(Duration::from_secs(1));
    let logs: Vec<LoadLog> = loads.into_iter().map(Load::stop).collect();
    for (e, log) in [&eu, &us].iter().zip(&logs) {
        eprintln!(
            "edge {}: {} requests answered, {} failed, on {} connection(s), across the kill of \
             every control node (both edges noticed within {noticed:?})",
            e.id, log.ok, log.failed, log.connections
        );
        assert_eq!(
            log.failed, 0,
            "requests to edge {} failed during the outage: {:?}",
            e.id, log.failures
        );
        assert!(log.ok > 100, "too few requests to mean anything: {log:?}");
        assert_eq!(e.edge().ops_get("/readyz").0, 200);
    }

    // Restart the eu edge with the control plane still down: it serves its last-known-good
    // config from its first request on.
    eu.kill();
    let spawned = Instant::now();
    let edge = eu.spawn();
    let (opened, first) = loop {
        match TcpStream::connect_timeout(&edge.addr, Duration::from_millis(200)) {
            Ok(mut tcp) => {
                let opened = spawned.elapsed();
                tcp.set_read_timeout(Some(REQUEST_TIMEOUT)).unwrap();
                write!(
                    tcp,
                    "GET /s/x HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
                    edge.host("steady")
                )
                .unwrap();
                let mut raw = Vec::new();
                tcp.read_to_end(&mut raw).expect("the first request");
                break (opened, parse_raw_response(&raw).expect("a response"));
            }
            Err(_) if spawned.elapsed() < Duration::from_secs(15) => {
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(e) => panic!(
                "the restarted edge did not listen within 15 s: {e}\n{}",
                edge.stderr.joined()
            ),
        }
    };
    eprintln!(
        "restarted edge {} without a control plane: port open {} ms after spawn, first \
         response {} ms after spawn",
        eu.id,
        opened.as_millis(),
        spawned.elapsed().as_millis()
    );
    assert_eq!(
        (first.status, text(&first).as_str()),
        (200, "before the outage"),
        "the first request after the restart failed\n{}",
        eu.log_tail()
    );
    let status = eu.status();
    assert_eq!(status["revision"], before, "{status:#}");
    assert_eq!(status["source"], "last-known-good", "{status:#}");
    assert_eq!(status["sync"]["connected"], false, "{status:#}");
    assert_eq!(eu.edge().ops_get("/readyz").0, 200);

    // The control plane returns; a new write reaches every edge.
    for i in 0..3 {
        c.restart(i);
    }
    let leader = c.wait_leader(CONVERGE_TIMEOUT);
    let returned = Instant::now();
    let after = revision_of(&c.put_api_retrying(leader, "after", "after the outage"));
    for e in [&eu, &us] {
        let status = e.wait_revision(after);
        eprintln!(
            "edge {} serves revision {} {:?} after the control plane returned (write at {after})",
            e.id,
            status["revision"],
            returned.elapsed()
        );
        let r = e.get("after", "/s/x");
        assert_eq!((r.status, text(&r).as_str()), (200, "after the outage"));
        let r = e.get("steady", "/s/x");
        assert_eq!((r.status, text(&r).as_str()), (200, "before the outage"));
    }
}

/// A last-known-good file damaged while the edge was down (and the control plane too) is
/// reported, never served; once a control node answers, the edge converges and serves.
#[test]
fn a_corrupt_last_known_good_is_reported_and_replaced_from_the_control_plane() {
    let mut c = Cluster::start(1);
    let join = c.edge_join_token("edges");
    let mut eu = SyncedEdge::enrol(&c, &join, "eu");
    let revision = revision_of(&c.put_api_retrying(0, "steady", "kept"));
    eu.wait_revision(revision);
    assert_eq!(eu.get("steady", "/s/x").status, 200);

    eu.kill();
    c.kill(0);
    let path = eu.data.path().join(LKG_FILE);
    let mut bytes = std::fs::read(&path).expect("the edge wrote its last-known-good file");
    assert!(bytes.len() > 100, "{} bytes", bytes.len());
    let middle = bytes.len() / 2;
    for b in &mut bytes[middle..middle + 8] {
        *b ^= 0xff;
    }
    std::fs::write(&path, &bytes).unwrap();

    let edge = eu.spawn();
    let ops = edge.ops;
    wait_until(
        Duration::from_secs(10),
        "the ops listener answers",
        || match ops_get(ops, "/healthz") {
            Ok((200, _)) => Ok(()),
            other => Err(format!("{other:?}")),
        },
    );
    let status = eu.status();
    let last_error = status["last_error"].as_str().unwrap_or_default();
    assert!(
        last_error.contains(LKG_FILE) && last_error.contains("corrupt"),
        "/status does not report the corrupt file: {status:#}"
    );
    assert_eq!(status["revision"], 0, "{status:#}");
    assert_eq!(status["apis"], 0, "{status:#}");
    let logged = eu.edge().stderr.wait_for(Duration::from_secs(5), |l| {
        l.contains("ERROR") && l.contains("corrupt")
    });
    assert!(logged.is_some(), "no error logged:\n{}", eu.log_tail());
    let (code, body) = eu.edge().ops_get("/readyz");
    assert_eq!(code, 503, "/readyz with no usable config: {body}");
    let r = eu.get("steady", "/s/x");
    assert_eq!(r.status, 404, "served from a corrupt file: {}", text(&r));
    assert_eq!(
        eu.edge()
            .metric("portico_sync_last_known_good_failures_total"),
        1.0
    );

    c.restart(0);
    c.wait_leader(CONVERGE_TIMEOUT);
    let returned = Instant::now();
    let status = eu.wait_revision(revision);
    eprintln!(
        "edge {} replaced its corrupt last-known-good {:?} after the control node returned",
        eu.id,
        returned.elapsed()
    );
    assert_eq!(status["last_error"], Value::Null, "{status:#}");
    assert_eq!(eu.edge().ops_get("/readyz").0, 200);
    let r = eu.get("steady", "/s/x");
    assert_eq!((r.status, text(&r).as_str()), (200, "kept"));
    // The file is whole again.
    let rewritten = std::fs::read(&path).unwrap();
    assert_ne!(rewritten, bytes, "the corrupt file was not replaced");
}

/// Raw QUIC clients: no certificate, another CA's certificate, an oversized frame, a malformed
/// frame and a hello from a newer protocol are each refused in their own way, while the real
/// edges keep receiving new revisions.
#[test]
fn sync_refuses_strangers_bad_frames_and_newer_protocols() {
    install_crypto();
    let c = Cluster::start(1);
    let join = c.edge_join_token("edges");
    let eu = SyncedEdge::enrol(&c, &join, "eu");
    let us = SyncedEdge::enrol(&c, &join, "us");
    let control = c.nodes[0].raft;
    let files = EdgeFiles::read(&eu.identity_dir());
    let stderr = c.nodes[0].stderr();

    let runtime = common::runtime();
    runtime.block_on(async {
        let endpoint =
            quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).expect("client endpoint");
        let hello = hello_frame(&eu.id, &eu.region, 1);

        // No client certificate: TLS lets it in (enrolment needs that), sync does not.
        let config = sync_client(&files.ca, None);
        let conn = connect(&endpoint, config, control)
            .await
            .expect("a handshake without a client certificate completes");
        let answer = send_and_read(&conn, &hello).await;
        assert!(
            answer.is_err(),
            "a peer without a certificate got {answer:?}"
        );
        let end = closed(&conn).await;
        assert_eq!(
            application_code(&end),
            Some(u64::from(CLOSE_FORBIDDEN)),
            "no certificate: {end}"
        );

        // A certificate from another CA (one that names the same edge): refused by TLS.
        let config = sync_client(
            &files.ca,
            Some(foreign_edge_certificate(&eu.id, &eu.region)),
        );
        let end = match connect(&endpoint, config, control).await {
            Err(e) => e,
            Ok(conn) => {
                // In TLS 1.3 the client may finish first; the server's verdict follows.
                let answer = send_and_read(&conn, &hello).await;
                assert!(answer.is_err(), "another CA's certificate got {answer:?}");
                closed(&conn).await
            }
        };
        let code: u64 = match &end {
            quinn::ConnectionError::TransportError(e) => e.code.into(),
            quinn::ConnectionError::ConnectionClosed(c) => c.error_code.into(),
            other => panic!("another CA's certificate was not refused by TLS: {other}"),
        };
        assert!(
            (0x100..0x200).contains(&code),
            "not a TLS refusal: {end} (code {code:#x})"
        );

        let identity = || Some((files.chain.clone(), files.key.clone_key()));

        // The enrolled identity, but a length prefix beyond the 64 KiB an edge may send.
        let conn = connect(&endpoint, sync_client(&files.ca, identity()), control)
            .await
            .expect("the enrolled identity connects");
        let mut oversized = (MAX_EDGE_FRAME as u32 + 1).to_be_bytes().to_vec();
        oversized.extend_from_slice(&[0u8; 256]);
        let answer = send_and_read(&conn, &oversized).await;
        assert!(answer.is_err(), "an oversized frame got {answer:?}");
        let end = closed(&conn).await;
        assert_eq!(
            application_code(&end),
            Some(u64::from(CLOSE_BAD_INPUT)),
            "oversized frame: {end}"
        );

        // A frame of the right size whose body is no message.
        let conn = connect(&endpoint, sync_client(&files.ca, identity()), control)
            .await
            .expect("the enrolled identity connects");
        let malformed = [0, 0, 0, 5, 0, 1, 0x07, 0xde, 0xad];
        let answer = send_and_read(&conn, &malformed).await;
        assert!(answer.is_err(), "a malformed frame got {answer:?}");
        let end = closed(&conn).await;
        assert_eq!(
            application_code(&end),
            Some(u64::from(CLOSE_BAD_INPUT)),
            "malformed frame: {end}"
        );

        // An edge newer than the control plane: refused, with what to do about it.
        let conn = connect(&endpoint, sync_client(&files.ca, identity()), control)
            .await
            .expect("the enrolled identity connects");
        let answer = send_and_read(&conn, &hello_frame(&eu.id, &eu.region, 99)).await;
        match answer {
            Ok(ControlMessage::Refused { reason }) => {
                assert!(
                    reason.contains("upgrade the control plane"),
                    "the refusal does not say what to do: {reason}"
                );
            }
            other => panic!("a hello with protocol 99 got {other:?}"),
        }
        conn.close(0u32.into(), b"done");
        endpoint.close(0u32.into(), b"done");
        let _ = tokio::time::timeout(Duration::from_secs(2), endpoint.wait_idle()).await;
    });

    for what in ["frame too large", "malformed frame"] {
        let line = stderr.wait_for(Duration::from_secs(5), |l| {
            l.contains("ERROR") && l.contains("bad input") && l.contains(what)
        });
        assert!(
            line.is_some(),
            "the control node logged no error for the {what}:\n{}",
            stderr.joined()
        );
    }

    // The real edges never noticed.
    let revision = revision_of(&c.put_api_retrying(0, "later", "still syncing"));
    for e in [&eu, &us] {
        e.wait_revision(revision);
        let r = e.get("later", "/s/x");
        assert_eq!((r.status, text(&r).as_str()), (200, "still syncing"));
        eprintln!(
            "edge {}: {} sync session(s) over the test",
            e.id,
            e.edge().metric("portico_sync_sessions_total")
        );
    }
}

/// `portico edge remove` revokes an edge: its sessions are refused from then on, `cluster
/// edges` shows it revoked, it no longer holds back `deploy --wait`, and it keeps serving the
/// config it had.
#[test]
fn a_revoked_edge_is_refused_and_keeps_serving_its_last_config() {
    let c = Cluster::start(1);
    let admin = c.admin(0);
    let join = c.edge_join_token("edges");
    let eu = SyncedEdge::enrol(&c, &join, "eu");
    let us = SyncedEdge::enrol(&c, &join, "us");
    let first = revision_of(&c.put_api_retrying(0, "steady", "v1"));
    for e in [&eu, &us] {
        e.wait_revision(first);
    }

    let out = cli_ok(&c, admin, &["edge", "remove", &eu.id]);
    assert!(out.contains(&format!("edge {} revoked", eu.id)), "{out}");
    let status = wait_until(
        Duration::from_secs(15),
        "the revoked edge's session ends",
        || {
            let s = connected_is(&eu, false)?;
            let refused = s["last_error"]
                .as_str()
                .is_some_and(|e| e.contains("revoked"));
            if refused { Ok(s) } else { Err(s.to_string()) }
        },
    );
    assert_eq!(status["revision"], first, "{status:#}");
    let stderr = c.nodes[0].stderr();
    assert!(
        stderr
            .wait_for(Duration::from_secs(5), |l| l.contains("edge revoked"))
            .is_some(),
        "the control node did not log the revocation:\n{}",
        stderr.joined()
    );

    let (_, items) = cluster_edges(&c, admin);
    assert_eq!(edge_row(&items, &eu.id)["status"], "revoked", "{items:#?}");
    assert_eq!(
        edge_row(&items, &us.id)["status"],
        "connected",
        "{items:#?}"
    );

    // New revisions reach the other edge only, and the revoked one does not hold a deploy.
    let second = revision_of(&c.put_api_retrying(0, "steady", "v2"));
    us.wait_revision(second);
    let out = cli_ok(
        &c,
        admin,
        &[
            "deploy",
            "steady",
            "--stage",
            "s",
            "--wait",
            "--wait-timeout",
            "20",
        ],
    );
    assert!(out.contains("all 1 edges serve revision"), "{out}");
    let r = us.get("steady", "/s/x");
    assert_eq!((r.status, text(&r).as_str()), (200, "v2"));

    // The revoked edge keeps serving what it had, and stays refused.
    let r = eu.get("steady", "/s/x");
    assert_eq!((r.status, text(&r).as_str()), (200, "v1"));
    let status = eu.status();
    assert_eq!(status["revision"], first, "{status:#}");
    assert_eq!(status["sync"]["connected"], false, "{status:#}");
    assert_eq!(eu.edge().ops_get("/readyz").0, 200);
    assert_eq!(eu.edge().metric("portico_sync_connected"), 0.0);
}
