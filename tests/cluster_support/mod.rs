//! A control-plane cluster of real `portico control` processes on loopback, for the end-to-end
//! tests in `tests/cluster.rs`: start, join, kill, stop, restart and leave nodes; call the admin
//! API over raw HTTP/1.1; run a background writer that records which writes were acknowledged;
//! and check what every node ends up holding.
//!
//! Every wait is bounded, every process is killed on drop, the data directories are removed.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use serde_json::{Value, json};

use crate::common::{BIN, Lines, Proc, RawResponse, TempDir, parse_raw_response, run_bounded};

/// The nodes' log filter: openraft narrates every replication step at INFO.
pub const LOG_FILTER: &str = "info,openraft=warn";
/// The bound on one admin API exchange (the server's own bound is about 6 s).
pub const HTTP_TIMEOUT: Duration = Duration::from_secs(15);
/// The bound on a CLI command.
pub const CLI_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a started node may take until its admin API answers.
pub const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a joining node may take to print `Joined`.
pub const JOIN_TIMEOUT: Duration = Duration::from_secs(45);
/// How long a cluster may take to elect a leader and agree on its applied index.
pub const CONVERGE_TIMEOUT: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------------------------
// Admin API over raw HTTP/1.1
// ---------------------------------------------------------------------------------------------

/// One request on a new connection (`Connection: close`), bounded by [`HTTP_TIMEOUT`].
pub fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    headers: &[(&str, &str)],
    body: &str,
) -> Result<RawResponse> {
    let started = Instant::now();
    let mut tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    tcp.set_read_timeout(Some(HTTP_TIMEOUT))?;
    tcp.set_write_timeout(Some(HTTP_TIMEOUT))?;
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    if let Some(t) = token {
        head.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    if !headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("content-type"))
    {
        head.push_str("Content-Type: application/json\r\n");
    }
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    tcp.write_all(head.as_bytes())?;
    tcp.write_all(body.as_bytes())?;
    let mut raw = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        let n = tcp.read(&mut chunk)?;
        if n == 0 {
            break;
        }
        raw.extend_from_slice(&chunk[..n]);
        if started.elapsed() > HTTP_TIMEOUT {
            bail!("{method} {path} on {addr}: no complete answer within {HTTP_TIMEOUT:?}");
        }
    }
    parse_raw_response(&raw)
}

/// The body as text, for assertion messages.
pub fn text(r: &RawResponse) -> String {
    String::from_utf8_lossy(&r.body).into_owned()
}

/// An API whose single mock route answers `marker`, so a stored copy shows which write made it.
pub fn api_json(id: &str, marker: &str) -> String {
    json!({
        "id": id,
        "kind": "http",
        "routes": [{"key": "GET /x", "integration": {"type": "mock", "status": 200, "body": marker}}],
        "stages": [{"name": "s"}],
    })
    .to_string()
}

/// The marker [`api_json`] stored in an API as the admin API returns it.
pub fn marker_of(api: &Value) -> Option<&str> {
    api["routes"][0]["integration"]["body"].as_str()
}

/// A free loopback UDP port (the Raft transport is QUIC).
pub fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("bind udp 127.0.0.1:0")
        .port()
}

/// A free loopback TCP port, distinct from `avoid`.
fn free_tcp_port(avoid: &[u16]) -> u16 {
    loop {
        let p = crate::common::free_port();
        if !avoid.contains(&p) {
            return p;
        }
    }
}

/// Extracts the first `ptk_...` token from a CLI's output.
pub fn find_token(text: &str) -> Option<String> {
    let start = text.find("ptk_")?;
    let token: String = text[start..]
        .chars()
        .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
        .collect();
    (token.len() > 10).then_some(token)
}

// ---------------------------------------------------------------------------------------------
// Nodes and clusters
// ---------------------------------------------------------------------------------------------

/// One control node: its data directory, addresses, and the process currently running it.
pub struct Node {
    pub id: u64,
    pub dir: PathBuf,
    pub raft: SocketAddr,
    pub admin: SocketAddr,
    proc: Option<Proc>,
    /// Output of every run, oldest first: (label, stdout, stderr).
    runs: Vec<(String, Lines, Lines)>,
}

impl Node {
    pub fn is_running(&self) -> bool {
        self.proc.is_some()
    }

    /// The stderr of the current (or last) run.
    pub fn stderr(&self) -> Lines {
        self.runs.last().map(|r| r.2.clone()).unwrap_or_default()
    }

    pub fn stdout(&self) -> Lines {
        self.runs.last().map(|r| r.1.clone()).unwrap_or_default()
    }
}

/// A cluster of control nodes; `nodes[i]` is addressed by its index in the tests.
pub struct Cluster {
    pub nodes: Vec<Node>,
    /// The initial admin token.
    pub token: String,
    /// A token with the join role.
    pub join_token: String,
    snapshot_logs: Option<u64>,
    dir: TempDir,
}

impl Cluster {
    /// Initializes node 1, starts it, and joins nodes 2..=n one at a time.
    pub fn start(n: usize) -> Cluster {
        Cluster::start_with(n, None)
    }

    /// Like [`Cluster::start`], every node running with `--snapshot-logs N` when given.
    pub fn start_with(n: usize, snapshot_logs: Option<u64>) -> Cluster {
        Cluster::start_prepared(n, snapshot_logs, |_| {})
    }

    /// Like [`Cluster::start_with`], with `prepare` run on node 1's (the first leader's) data
    /// directory, created empty, before `control init` fills it: to mount a file system there.
    pub fn start_prepared(
        n: usize,
        snapshot_logs: Option<u64>,
        prepare: impl FnOnce(&Path),
    ) -> Cluster {
        assert!(n >= 1);
        let dir = TempDir::new("portico-cluster");
        std::fs::create_dir_all(dir.path().join("n1")).expect("create node 1's directory");
        prepare(&dir.path().join("n1"));
        let mut last = String::new();
        let mut init = None;
        for attempt in 0..3 {
            let node_dir = dir.path().join("n1");
            // Its contents only: it may be a mount point.
            empty_dir(&node_dir);
            let raft = SocketAddr::from(([127, 0, 0, 1], free_udp_port()));
            let admin = SocketAddr::from(([127, 0, 0, 1], free_tcp_port(&[raft.port()])));
            let out = run_bounded(
                Command::new(BIN)
                    .args(["control", "init", "--data"])
                    .arg(&node_dir)
                    .args(["--cluster-name", "e2e", "--raft-listen"])
                    .arg(raft.to_string())
                    .arg("--admin-listen")
                    .arg(admin.to_string())
                    .env("PORTICO_LOG", LOG_FILTER)
                    .env_remove("PORTICO_LOG_FORMAT"),
                CLI_TIMEOUT,
            )
            .expect("run portico control init");
            let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
            match (out.status.success(), find_token(&stdout)) {
                (true, Some(token)) => {
                    init = Some((node_dir, raft, admin, token));
                    break;
                }
                _ => {
                    last = format!(
                        "attempt {attempt}: {}\nstdout:\n{stdout}\nstderr:\n{}",
                        out.status,
                        String::from_utf8_lossy(&out.stderr)
                    );
                }
            }
        }
        let Some((node_dir, raft, admin, token)) = init else {
            panic!("portico control init failed 3 times; last: {last}");
        };
        let mut cluster = Cluster {
            nodes: vec![Node {
                id: 1,
                dir: node_dir,
                raft,
                admin,
                proc: None,
                runs: Vec::new(),
            }],
            token,
            join_token: String::new(),
            snapshot_logs,
            dir,
        };
        cluster.restart(0);
        cluster.wait_leader(CONVERGE_TIMEOUT);

        let out = cluster.cli(&[
            "token",
            "create",
            "e2e-join",
            "--role",
            "join",
            "--server",
            &admin.to_string(),
        ]);
        assert!(out.status.success(), "token create: {}", output_text(&out));
        let first = String::from_utf8_lossy(&out.stdout)
            .lines()
            .next()
            .unwrap_or("")
            .trim()
            .to_string();
        assert!(first.starts_with("ptk_"), "token create printed {first:?}");
        cluster.join_token = first;

        for _ in 1..n {
            cluster.join_next();
        }
        cluster
    }

    pub fn admin(&self, i: usize) -> SocketAddr {
        self.nodes[i].admin
    }

    pub fn admins(&self) -> Vec<SocketAddr> {
        self.nodes.iter().map(|n| n.admin).collect()
    }

    /// Every node's QUIC address (Raft, edge sync and enrolment), as `portico edge --control`
    /// takes them.
    pub fn control_addrs(&self) -> String {
        let addrs: Vec<String> = self.nodes.iter().map(|n| n.raft.to_string()).collect();
        addrs.join(",")
    }

    /// Mints an edge join token (`portico token create NAME --role edge` through a running
    /// node): the first line it prints.
    pub fn edge_join_token(&self, name: &str) -> String {
        let server = self.admin(*self.running().first().expect("a running node"));
        let out = self.cli(&[
            "token",
            "create",
            name,
            "--role",
            "edge",
            "--server",
            &server.to_string(),
        ]);
        assert!(out.status.success(), "token create: {}", output_text(&out));
        let stdout = String::from_utf8_lossy(&out.stdout);
        let first = stdout.lines().next().unwrap_or("").trim().to_string();
        assert!(first.starts_with("ptk_"), "token create printed {stdout:?}");
        first
    }

    pub fn running(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|i| self.nodes[*i].is_running())
            .collect()
    }

    fn snapshot_args(&self) -> Vec<String> {
        match self.snapshot_logs {
            Some(n) => vec!["--snapshot-logs".into(), n.to_string()],
            None => Vec::new(),
        }
    }

    fn spawn(&mut self, i: usize, label: &str, args: Vec<String>) {
        assert!(
            self.nodes[i].proc.is_none(),
            "node {} is already running",
            self.nodes[i].id
        );
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let proc = Proc::spawn_env(&args, &[("PORTICO_LOG", LOG_FILTER)]);
        let node = &mut self.nodes[i];
        node.runs
            .push((label.to_string(), proc.stdout.clone(), proc.stderr.clone()));
        node.proc = Some(proc);
    }

    /// Joins a new node (`control join`), waiting for its `Joined ... as node N.` line; returns
    /// its index. The seed is the newest running node, so from the third node on the join and
    /// the promotion go through a follower, which forwards them to the leader.
    pub fn join_next(&mut self) -> usize {
        self.wait_leader(CONVERGE_TIMEOUT);
        let seed = self.admin(*self.running().last().expect("a running node"));
        let i = self.nodes.len();
        let dir = self.dir.path().join(format!("n{}", i + 1));
        let mut taken: Vec<u16> = self
            .nodes
            .iter()
            .flat_map(|n| [n.raft.port(), n.admin.port()])
            .collect();
        let raft_port = loop {
            let p = free_udp_port();
            if !taken.contains(&p) {
                break p;
            }
        };
        taken.push(raft_port);
        let raft = SocketAddr::from(([127, 0, 0, 1], raft_port));
        let admin = SocketAddr::from(([127, 0, 0, 1], free_tcp_port(&taken)));
        self.nodes.push(Node {
            id: 0,
            dir: dir.clone(),
            raft,
            admin,
            proc: None,
            runs: Vec::new(),
        });
        let mut args: Vec<String> = vec![
            "control".into(),
            "join".into(),
            "--data".into(),
            dir.display().to_string(),
            "--seed".into(),
            seed.to_string(),
            "--join-token".into(),
            self.join_token.clone(),
            "--raft-listen".into(),
            raft.to_string(),
            "--admin-listen".into(),
            admin.to_string(),
        ];
        args.extend(self.snapshot_args());
        self.spawn(i, "join", args);
        let deadline = Instant::now() + JOIN_TIMEOUT;
        let line = loop {
            let proc = self.nodes[i].proc.as_mut().unwrap();
            if let Some(l) = proc
                .stdout
                .wait_for(Duration::from_millis(100), |l| l.contains("Joined cluster"))
            {
                break l;
            }
            if let Ok(Some(status)) = proc.child.try_wait() {
                std::thread::sleep(Duration::from_millis(50));
                panic!(
                    "control join (node at {admin}) exited with {status} before joining\nstdout:\n{}\nstderr:\n{}",
                    proc.stdout.joined(),
                    proc.stderr.joined()
                );
            }
            if Instant::now() > deadline {
                panic!(
                    "control join (node at {admin}) printed no Joined line within {JOIN_TIMEOUT:?}\nstderr:\n{}",
                    proc.stderr.joined()
                );
            }
        };
        let id: u64 = line
            .trim_end_matches('.')
            .rsplit(' ')
            .next()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no node id in {line:?}"));
        self.nodes[i].id = id;
        i
    }

    /// Starts (or restarts) node `i` with `control start` and waits until its admin API answers.
    pub fn restart(&mut self, i: usize) {
        let mut args: Vec<String> = vec![
            "control".into(),
            "start".into(),
            "--data".into(),
            self.nodes[i].dir.display().to_string(),
        ];
        args.extend(self.snapshot_args());
        self.spawn(i, "start", args);
        self.wait_ready(i);
    }

    /// Waits until node `i`'s admin API answers its local status.
    pub fn wait_ready(&mut self, i: usize) {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if self.status(i).is_some() {
                return;
            }
            let node = &mut self.nodes[i];
            let proc = node.proc.as_mut().expect("the node runs");
            if let Ok(Some(status)) = proc.child.try_wait() {
                std::thread::sleep(Duration::from_millis(50));
                panic!(
                    "node {} exited with {status} while starting\nstderr:\n{}",
                    node.id,
                    proc.stderr.joined()
                );
            }
            if Instant::now() > deadline {
                panic!(
                    "node {}'s admin API did not answer within {READY_TIMEOUT:?}\nstderr:\n{}",
                    node.id,
                    proc.stderr.joined()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The exit status of node `i`'s process if it ends by itself within `timeout`.
    pub fn wait_exit(&mut self, i: usize, timeout: Duration) -> Option<ExitStatus> {
        let proc = self.nodes[i].proc.as_mut().expect("the node runs");
        let status = proc.wait_exit(timeout)?;
        self.nodes[i].proc = None;
        Some(status)
    }

    /// `kill -9`.
    pub fn kill(&mut self, i: usize) {
        let mut proc = self.nodes[i].proc.take().expect("the node runs");
        let _ = proc.child.kill();
        let _ = proc.child.wait();
    }

    /// SIGTERM, then waits (bounded) for the exit; returns its status.
    pub fn stop(&mut self, i: usize) -> ExitStatus {
        let mut proc = self.nodes[i].proc.take().expect("the node runs");
        proc.signal("TERM");
        match proc.wait_exit(Duration::from_secs(20)) {
            Some(status) => status,
            None => panic!(
                "node {} did not exit within 20 s of SIGTERM\nstderr:\n{}",
                self.nodes[i].id,
                proc.stderr.joined()
            ),
        }
    }

    /// `portico control leave --data DIR` (through the node's own admin API).
    pub fn leave(&self, i: usize) -> String {
        let out = run_bounded(
            self.command(&["control", "leave", "--data"])
                .arg(&self.nodes[i].dir),
            CLI_TIMEOUT,
        )
        .expect("run portico control leave");
        assert!(
            out.status.success(),
            "control leave of node {}: {}",
            self.nodes[i].id,
            output_text(&out)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A `portico` command with the admin token, run in the cluster's directory.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(BIN);
        cmd.args(args)
            .current_dir(self.dir.path())
            .env("PORTICO_TOKEN", &self.token)
            .env("PORTICO_LOG", LOG_FILTER)
            .env_remove("PORTICO_LOG_FORMAT")
            .env_remove("PORTICO_SERVER");
        cmd
    }

    /// Runs a CLI command (bounded) with the admin token.
    pub fn cli(&self, args: &[&str]) -> Output {
        run_bounded(&mut self.command(args), CLI_TIMEOUT)
            .unwrap_or_else(|e| panic!("portico {args:?}: {e:#}"))
    }

    /// `portico ARGS --server SERVER` with the admin token; asserts it succeeds and returns
    /// its stdout.
    pub fn cli_ok(&self, server: &str, args: &[&str]) -> String {
        let mut all = args.to_vec();
        all.extend(["--server", server]);
        let out = self.cli(&all);
        assert!(
            out.status.success(),
            "portico {args:?}: {}",
            output_text(&out)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    // -- admin API -----------------------------------------------------------------------------

    /// A request to node `i` with the admin token.
    pub fn call(&self, i: usize, method: &str, path: &str, body: &str) -> Result<RawResponse> {
        http(self.admin(i), method, path, Some(&self.token), &[], body)
    }

    /// `PUT /v1/apis/{id}` of [`api_json`] on node `i`.
    pub fn put_api(&self, i: usize, id: &str, marker: &str) -> Result<RawResponse> {
        self.call(i, "PUT", &format!("/v1/apis/{id}"), &api_json(id, marker))
    }

    /// Puts an API through node `i`, retrying 503s and connection errors (bounded).
    pub fn put_api_retrying(&self, i: usize, id: &str, marker: &str) -> RawResponse {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let last = match self.put_api(i, id, marker) {
                Ok(r) if r.status != 503 => return r,
                Ok(r) => format!("503 {}", text(&r)),
                Err(e) => format!("{e:#}"),
            };
            if Instant::now() > deadline {
                panic!(
                    "PUT {id} through node {} kept failing: {last}",
                    self.nodes[i].id
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Node `i`'s own view (`?consistency=stale`): leader, term, applied, members; `None` when it
    /// does not answer 200.
    pub fn status(&self, i: usize) -> Option<Value> {
        let r = self
            .call(i, "GET", "/v1/cluster/status?consistency=stale", "")
            .ok()?;
        (r.status == 200).then(|| r.json())
    }

    /// Node `i`'s APIs as it holds them locally (`?consistency=stale`), by id.
    pub fn apis_stale(&self, i: usize) -> BTreeMap<String, Value> {
        let r = self
            .call(i, "GET", "/v1/apis?consistency=stale", "")
            .unwrap_or_else(|e| panic!("GET /v1/apis on node {}: {e:#}", self.nodes[i].id));
        assert_eq!(r.status, 200, "GET /v1/apis: {}", text(&r));
        r.json()["items"]
            .as_array()
            .expect("items")
            .iter()
            .map(|item| {
                (
                    item["api"]["id"].as_str().unwrap().to_string(),
                    item.clone(),
                )
            })
            .collect()
    }

    /// The index of the node every running node agrees is the leader (which itself says it
    /// leads), waiting up to `timeout`.
    pub fn wait_leader(&self, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some((leader, _)) = self.agreement() {
                return leader;
            }
            if Instant::now() > deadline {
                panic!(
                    "no agreed leader within {timeout:?}; statuses: {:?}",
                    self.statuses()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until every running node names the same leader and has applied the same index;
    /// returns (leader index, applied index).
    pub fn wait_converged(&self, timeout: Duration) -> (usize, u64) {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some((leader, Some(applied))) = self.agreement() {
                return (leader, applied);
            }
            if Instant::now() > deadline {
                panic!(
                    "the running nodes did not converge within {timeout:?}; statuses: {:?}",
                    self.statuses()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until a linearizable read through node `i` answers 200 (the leader can confirm
    /// its leadership with a quorum); returns how long that took.
    pub fn wait_available(&self, i: usize, timeout: Duration) -> Duration {
        let started = Instant::now();
        loop {
            let last = match self.call(i, "GET", "/v1/apis", "") {
                Ok(r) if r.status == 200 => return started.elapsed(),
                Ok(r) => format!("{} {}", r.status, text(&r)),
                Err(e) => format!("{e:#}"),
            };
            if started.elapsed() > timeout {
                panic!(
                    "node {} answered no linearizable read within {timeout:?}; last: {last}; statuses: {:?}",
                    self.nodes[i].id,
                    self.statuses()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn statuses(&self) -> Vec<(u64, Option<Value>)> {
        self.running()
            .into_iter()
            .map(|i| {
                let s = self.status(i).map(|s| {
                    json!({"leader": s["leader"], "term": s["term"], "applied": s["applied"],
                        "state": s["state"], "members": s["members"].as_array().map(Vec::len)})
                });
                (self.nodes[i].id, s)
            })
            .collect()
    }

    /// `Some((leader index, Some(applied)))` when all running nodes agree on the leader (and
    /// the applied index, else `None` in the second place).
    fn agreement(&self) -> Option<(usize, Option<u64>)> {
        let running = self.running();
        let statuses: Vec<Value> = running
            .iter()
            .map(|i| self.status(*i))
            .collect::<Option<_>>()?;
        let leader_id = statuses.first()?["leader"].as_u64()?;
        if statuses
            .iter()
            .any(|s| s["leader"].as_u64() != Some(leader_id))
        {
            return None;
        }
        let leader = running
            .iter()
            .zip(&statuses)
            .find(|(i, _)| self.nodes[**i].id == leader_id)?;
        if leader.1["state"] != "Leader" {
            return None;
        }
        let applied = statuses.first()?["applied"].as_u64();
        let same = statuses.iter().all(|s| s["applied"].as_u64() == applied);
        Some((*leader.0, if same { applied } else { None }))
    }

    /// Every output line of every run of every node, labelled, for a failure message.
    pub fn dump_logs(&self, tail: usize) -> String {
        let mut out = String::new();
        for node in &self.nodes {
            for (label, stdout, stderr) in &node.runs {
                out.push_str(&format!(
                    "---- node {} ({label}) at {}\n",
                    node.id, node.admin
                ));
                for l in stdout.snapshot() {
                    out.push_str(&format!("  out: {l}\n"));
                }
                let err = stderr.snapshot();
                for l in &err[err.len().saturating_sub(tail)..] {
                    out.push_str(&format!("  err: {l}\n"));
                }
            }
        }
        out
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut proc) = node.proc.take() {
                let _ = proc.child.kill();
                let _ = proc.child.wait();
            }
        }
        if std::thread::panicking() {
            eprintln!("{}", self.dump_logs(40));
        }
    }
}

pub fn output_text(out: &Output) -> String {
    format!(
        "{}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

// ---------------------------------------------------------------------------------------------
// A background writer and the checker of what it wrote
// ---------------------------------------------------------------------------------------------

/// One acknowledged (200) write.
#[derive(Debug, Clone)]
pub struct Ack {
    pub id: String,
    pub sent: Instant,
    pub done: Instant,
    pub via: SocketAddr,
}

/// What a [`Writer`] did.
#[derive(Debug, Clone, Default)]
pub struct WriteLog {
    /// Every id a PUT was sent for (acknowledged or not).
    pub attempted: BTreeSet<String>,
    pub acked: Vec<Ack>,
    /// 503s and connection errors.
    pub failures: usize,
    pub last_failure: Option<String>,
    /// Any other answer: (id, status, body).
    pub unexpected: Vec<(String, u16, String)>,
}

impl WriteLog {
    pub fn acked_ids(&self) -> BTreeSet<String> {
        self.acked.iter().map(|a| a.id.clone()).collect()
    }

    /// The first acknowledged write that was sent at or after `t`.
    pub fn first_ack_sent_after(&self, t: Instant) -> Option<&Ack> {
        self.acked
            .iter()
            .filter(|a| a.sent >= t)
            .min_by_key(|a| a.done)
    }
}

/// PUTs `{prefix}1`, `{prefix}2`, ... one after the other through `targets`, moving to the next
/// target after a 503 or a connection error; each id is attempted once.
pub struct Writer {
    stop: Arc<AtomicBool>,
    log: Arc<Mutex<WriteLog>>,
    handle: Option<JoinHandle<()>>,
}

impl Writer {
    pub fn start(prefix: &str, targets: Vec<SocketAddr>, token: &str) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let log = Arc::new(Mutex::new(WriteLog::default()));
        let (stop2, log2, prefix, token) = (
            stop.clone(),
            log.clone(),
            prefix.to_string(),
            token.to_string(),
        );
        let handle = std::thread::spawn(move || {
            let mut n = 0u64;
            let mut cur = 0usize;
            while !stop2.load(Ordering::SeqCst) {
                n += 1;
                let id = format!("{prefix}{n}");
                let via = targets[cur % targets.len()];
                log2.lock().unwrap().attempted.insert(id.clone());
                let sent = Instant::now();
                let answer = http(
                    via,
                    "PUT",
                    &format!("/v1/apis/{id}"),
                    Some(&token),
                    &[],
                    &api_json(&id, &id),
                );
                let done = Instant::now();
                let mut log = log2.lock().unwrap();
                let ok = match answer {
                    Ok(r) if r.status == 200 => {
                        if r.json()["api"]["id"] == id.as_str() {
                            log.acked.push(Ack {
                                id,
                                sent,
                                done,
                                via,
                            });
                        } else {
                            log.unexpected.push((id, 200, text(&r)));
                        }
                        true
                    }
                    Ok(r) if r.status == 503 => {
                        log.failures += 1;
                        log.last_failure = Some(format!("503 via {via}: {}", text(&r)));
                        false
                    }
                    Ok(r) => {
                        log.unexpected.push((id, r.status, text(&r)));
                        false
                    }
                    Err(e) => {
                        log.failures += 1;
                        log.last_failure = Some(format!("via {via}: {e:#}"));
                        false
                    }
                };
                drop(log);
                if ok {
                    std::thread::sleep(Duration::from_millis(5));
                } else {
                    cur += 1;
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        });
        Writer {
            stop,
            log,
            handle: Some(handle),
        }
    }

    pub fn log(&self) -> WriteLog {
        self.log.lock().unwrap().clone()
    }

    /// Waits (bounded) until a write sent at or after `t` is acknowledged.
    pub fn wait_ack_sent_after(&self, t: Instant, timeout: Duration) -> Option<Ack> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(a) = self.log().first_ack_sent_after(t) {
                return Some(a.clone());
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Stops the writer (after its request in flight, bounded by [`HTTP_TIMEOUT`]).
    pub fn stop(mut self) -> WriteLog {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            h.join().expect("the writer thread panicked");
        }
        self.log()
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// Checks the writes of `log` (ids starting with `prefix`) on each of `nodes`, read locally:
/// every acknowledged write is there with its own content, nothing is there that was never
/// attempted, and all the nodes hold exactly the same objects. Returns how many each holds.
pub fn check_writes(cluster: &Cluster, nodes: &[usize], prefix: &str, log: &WriteLog) -> usize {
    let acked = log.acked_ids();
    let mut first: Option<(u64, BTreeMap<String, Value>)> = None;
    let mut held = 0;
    for &i in nodes {
        let id = cluster.nodes[i].id;
        let apis: BTreeMap<String, Value> = cluster
            .apis_stale(i)
            .into_iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .collect();
        let missing: Vec<&String> = acked.iter().filter(|a| !apis.contains_key(*a)).collect();
        assert!(
            missing.is_empty(),
            "node {id} lacks {} acknowledged writes: {missing:?}",
            missing.len()
        );
        let phantom: Vec<&String> = apis
            .keys()
            .filter(|k| !log.attempted.contains(*k))
            .collect();
        assert!(
            phantom.is_empty(),
            "node {id} holds writes never attempted: {phantom:?}"
        );
        for (k, item) in &apis {
            assert_eq!(
                marker_of(&item["api"]),
                Some(k.as_str()),
                "node {id}: API {k} has another write's content: {item}"
            );
        }
        held = apis.len();
        match &first {
            None => first = Some((id, apis)),
            Some((first_id, theirs)) => {
                let differ: Vec<&String> = theirs
                    .keys()
                    .chain(apis.keys())
                    .filter(|k| theirs.get(*k) != apis.get(*k))
                    .collect();
                assert!(
                    differ.is_empty(),
                    "nodes {first_id} and {id} differ on {differ:?}"
                );
            }
        }
    }
    held
}

fn empty_dir(dir: &Path) {
    let Ok(items) = std::fs::read_dir(dir) else {
        return;
    };
    for item in items.flatten() {
        let path = item.path();
        let _ = if path.is_dir() {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
    }
}
