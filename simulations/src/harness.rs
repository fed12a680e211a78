//! The driver: owns the simulation, steps it one millisecond at a time, samples every edge after
//! each step ([`crate::check`]), starts edges as the operator enrols them, and injects faults.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use portico_control::transport::ClusterCa;
use portico_node::{ConfigStore, Metrics};
use portico_proto::sync::EdgeFilter;

use crate::check::{EdgeWatch, Recorder};
use crate::cluster::{
    CLUSTER_NAME, CONTROL_PORT, ControlSpec, SLOTS, Shared, WritePlan, WriteRecord, control_host,
    edge_host, lock, operator,
};
use crate::net::fnv1a;
use crate::{ErrorKind, SimError};

/// How a simulation is set up.
#[derive(Debug, Clone)]
pub struct Setup {
    pub scenario: &'static str,
    pub seed: u64,
    /// One edge per entry, in that region.
    pub edge_regions: Vec<String>,
    pub writes: WritePlan,
    /// A control node snapshots (and purges its log) every this many entries.
    pub snapshot_logs: u64,
}

/// The driver: owns the simulation, steps it, samples the edges, injects faults.
pub struct Harness {
    pub scenario: &'static str,
    pub seed: u64,
    /// The driver's own choices (fault timing); the hosts have generators of their own.
    pub rng: fastrand::Rng,
    pub sim: turmoil::Sim<'static>,
    pub shared: Arc<Shared>,
    pub edges: Vec<EdgeWatch>,
    /// The edges' host names, by index in `edges`.
    pub edge_hosts: Vec<String>,
    /// What the driver did, and when.
    pub events: Vec<(Duration, String)>,
    ca: ClusterCa,
    _data: tempfile::TempDir,
}

fn setup_error(setup: &Setup, e: impl std::fmt::Display) -> SimError {
    SimError {
        scenario: setup.scenario,
        seed: setup.seed,
        at: Duration::ZERO,
        kind: ErrorKind::Setup,
        message: e.to_string(),
    }
}

/// Where data directories go: memory when the machine has a tmpfs at `/dev/shm` (every Raft
/// append is an fsync), else the system's temporary directory.
fn data_root() -> PathBuf {
    let shm = PathBuf::from("/dev/shm");
    if shm.is_dir() {
        shm
    } else {
        std::env::temp_dir()
    }
}

impl Harness {
    pub fn new(setup: Setup) -> Result<Harness, SimError> {
        // One thread runs every node: this makes their election timeouts a function of the seed,
        // and running their storage work on it (not on tokio's blocking pool, whose tasks finish
        // at wall-clock moments) keeps the order of events within a simulated instant fixed.
        portico_control::raft::seed_election_rng(setup.seed);
        portico_control::raft::store::run_inline_on_this_thread(true);
        let _ = rustls::crypto::ring::default_provider().install_default();
        let data = tempfile::Builder::new()
            .prefix("portico-sim-")
            .tempdir_in(data_root())
            .map_err(|e| setup_error(&setup, e))?;
        let ca = ClusterCa::generate(CLUSTER_NAME).map_err(|e| setup_error(&setup, e))?;

        let mut sim = turmoil::Builder::new()
            .rng_seed(setup.seed)
            .simulation_duration(Duration::from_secs(3600))
            .tick_duration(Duration::from_millis(1))
            .min_message_latency(Duration::from_millis(5))
            .max_message_latency(Duration::from_millis(5))
            .udp_capacity(4096)
            .build();
        let mut controls = Vec::new();
        for id in 1..=3u64 {
            let host = format!("control-{id}");
            let ip = sim.lookup(host.as_str());
            let dir = data.path().join(&host);
            std::fs::create_dir_all(&dir).map_err(|e| setup_error(&setup, e))?;
            let issued = ca
                .issue_node(id, &[ip.to_string()])
                .map_err(|e| setup_error(&setup, e))?;
            for (name, pem) in [
                ("ca.pem", ca.cert_pem()),
                ("node.pem", issued.cert_pem.as_str()),
                ("node.key", issued.key_pem.as_str()),
            ] {
                std::fs::write(dir.join(name), pem).map_err(|e| setup_error(&setup, e))?;
            }
            controls.push(ControlSpec {
                id,
                host,
                addr: SocketAddr::new(ip, CONTROL_PORT),
                dir,
            });
        }
        let shared = Arc::new(Shared {
            seed: setup.seed,
            ca_pem: ca.cert_pem().to_string(),
            controls,
            snapshot_logs: setup.snapshot_logs,
            nodes: Mutex::default(),
            starts: Mutex::default(),
            recorder: Recorder::default(),
            enrolled: Mutex::default(),
            writes: Mutex::default(),
            writes_done: Mutex::default(),
        });
        for spec in &shared.controls {
            let (id, shared) = (spec.id, shared.clone());
            sim.host(spec.host.as_str(), move || control_host(id, shared.clone()));
        }
        sim.client(
            "operator",
            operator(
                shared.clone(),
                setup.edge_regions.clone(),
                setup.writes.clone(),
            ),
        );
        let mut harness = Harness {
            scenario: setup.scenario,
            seed: setup.seed,
            rng: fastrand::Rng::with_seed(setup.seed ^ fnv1a(b"driver")),
            sim,
            shared,
            edges: Vec::new(),
            edge_hosts: Vec::new(),
            events: Vec::new(),
            ca,
            _data: data,
        };
        for i in 0..harness.shared.controls.len() {
            for j in 0..i {
                let (a, b) = (
                    harness.shared.controls[i].host.clone(),
                    harness.shared.controls[j].host.clone(),
                );
                // Between control nodes: 1 to 10 ms.
                harness.set_latency(&a, &b, 1..=10);
            }
        }
        Ok(harness)
    }

    /// A fixed latency for the link, drawn from `range` (ms) by the seed and the link's ends.
    /// Fixed latencies keep a run a function of its seed even if the number of packets varies
    /// (turmoil draws a variable latency from one generator for every packet of every link).
    fn set_latency(&mut self, a: &str, b: &str, range: std::ops::RangeInclusive<u64>) {
        let (lo, hi) = if a < b { (a, b) } else { (b, a) };
        let mut rng = fastrand::Rng::with_seed(self.seed ^ fnv1a(format!("{lo}|{hi}").as_bytes()));
        let ms = rng.u64(range);
        self.sim.set_link_latency(a, b, Duration::from_millis(ms));
    }

    pub fn now(&self) -> Duration {
        self.sim.elapsed()
    }

    pub fn fail(&self, kind: ErrorKind, message: impl Into<String>) -> SimError {
        SimError {
            scenario: self.scenario,
            seed: self.seed,
            at: self.now(),
            kind,
            message: message.into(),
        }
    }

    pub fn event(&mut self, what: impl Into<String>) {
        let what = what.into();
        tracing::info!(at = ?self.now(), "{what}");
        self.events.push((self.now(), what));
    }

    /// One simulation step (1 ms), then every check that runs after each step.
    pub fn step(&mut self) -> Result<(), SimError> {
        if let Err(e) = self.sim.step() {
            return Err(self.fail(ErrorKind::Simulation, e.to_string()));
        }
        if let Some(v) = self.shared.recorder.take_violations().into_iter().next() {
            return Err(self.fail(ErrorKind::Invariant, v));
        }
        self.start_enrolled_edges()?;
        let now = self.now();
        for edge in &mut self.edges {
            if let Err(message) = edge.sample(now, &self.shared.recorder) {
                return Err(SimError {
                    scenario: self.scenario,
                    seed: self.seed,
                    at: now,
                    kind: ErrorKind::Invariant,
                    message,
                });
            }
        }
        Ok(())
    }

    /// Steps until `done` holds; an invariant violation if it does not by `deadline`.
    pub fn run_until(
        &mut self,
        deadline: Duration,
        what: &str,
        mut done: impl FnMut(&Harness) -> bool,
    ) -> Result<Duration, SimError> {
        while !done(self) {
            if self.now() >= deadline {
                return Err(self.fail(
                    ErrorKind::Invariant,
                    format!("{what} did not happen by {deadline:?}"),
                ));
            }
            self.step()?;
        }
        Ok(self.now())
    }

    /// Steps until `at`.
    pub fn run_to(&mut self, at: Duration) -> Result<(), SimError> {
        while self.now() < at {
            self.step()?;
        }
        Ok(())
    }

    /// Starts a host for each edge the operator enrolled since the last step.
    fn start_enrolled_edges(&mut self) -> Result<(), SimError> {
        let enrolled: Vec<(String, String)> = lock(&self.shared.enrolled)
            .iter()
            .skip(self.edges.len())
            .cloned()
            .collect();
        for (id, region) in enrolled {
            let host = format!("edge-{}", self.edges.len() + 1);
            let issued = self
                .ca
                .issue_edge(&id, &region)
                .map_err(|e| self.fail(ErrorKind::Setup, e.to_string()))?;
            let store = Arc::new(ConfigStore::new(Arc::new(Metrics::default())));
            let (shared, edge_store, edge_id, edge_region, edge_host_name) = (
                self.shared.clone(),
                store.clone(),
                id.clone(),
                region.clone(),
                host.clone(),
            );
            let identity = (issued.cert_pem, issued.key_pem);
            self.sim.host(host.as_str(), move || {
                edge_host(
                    edge_id.clone(),
                    edge_region.clone(),
                    edge_host_name.clone(),
                    identity.clone(),
                    edge_store.clone(),
                    shared.clone(),
                )
            });
            let controls: Vec<String> = self
                .shared
                .controls
                .iter()
                .map(|c| c.host.clone())
                .collect();
            for control in controls {
                // Between an edge and a control node: 5 to 40 ms.
                self.set_latency(&host, &control, 5..=40);
            }
            self.event(format!("edge {id} ({region}) starts on {host}"));
            let filter = EdgeFilter {
                region,
                private_listener: false,
            };
            self.edges.push(EdgeWatch::new(id, filter, store));
            self.edge_hosts.push(host);
        }
        Ok(())
    }

    /// The leading control node's id, if one leads.
    pub fn leader(&self) -> Option<u64> {
        self.shared.leader().map(|n| n.config.id)
    }

    pub fn control_host(&self, id: u64) -> String {
        format!("control-{id}")
    }

    /// Crashes a control node: its tasks and sockets vanish; its data directory stays.
    pub fn crash_control(&mut self, id: u64) {
        lock(&self.shared.nodes).remove(&id);
        let host = self.control_host(id);
        self.sim.crash(host.as_str());
        self.event(format!("crash control node {id}"));
    }

    /// Starts a crashed control node again from its data directory.
    pub fn restart_control(&mut self, id: u64) {
        let host = self.control_host(id);
        self.sim.bounce(host.as_str());
        self.event(format!("restart control node {id}"));
    }

    /// Cuts (or restores) every link between edge `index` and the control nodes.
    pub fn partition_edge(&mut self, index: usize, cut: bool) {
        let edge = self.edge_hosts[index].clone();
        for control in self.shared.controls.iter().map(|c| c.host.clone()) {
            if cut {
                self.sim.partition(edge.as_str(), control.as_str());
            } else {
                self.sim.repair(edge.as_str(), control.as_str());
            }
        }
        let id = self.edges[index].id.clone();
        let what = if cut { "partition" } else { "heal" };
        self.event(format!("{what} edge {id} from every control node"));
    }

    /// Every edge serves a config.
    pub fn edges_loaded(&self, count: usize) -> bool {
        self.edges.len() == count && self.edges.iter().all(|e| e.is_loaded())
    }

    pub fn writes_done(&self) -> Option<Duration> {
        *lock(&self.shared.writes_done)
    }

    pub fn writes(&self) -> Vec<WriteRecord> {
        lock(&self.shared.writes).clone()
    }

    /// Checks that no acknowledged write was lost: in the state at `revision`, each API slot
    /// holds what its last acknowledged write made it, or what a later attempted write did.
    pub fn check_writes(&self, revision: u64) -> Result<(), SimError> {
        let state = self
            .shared
            .recorder
            .at(revision)
            .ok_or_else(|| {
                self.fail(
                    ErrorKind::Invariant,
                    format!("revision {revision} was never applied"),
                )
            })?
            .state;
        let writes = self.writes();
        for slot in 0..SLOTS {
            let mine: Vec<&WriteRecord> = writes.iter().filter(|w| w.slot == slot).collect();
            let Some(last_acked) = mine.iter().rev().find(|w| w.acked.is_some()) else {
                continue;
            };
            let possible = |w: &&&WriteRecord| w.k >= last_acked.k && !w.rejected;
            let api = state.apis.get(&format!("a{slot}"));
            let ok = match api {
                Some(api) => mine
                    .iter()
                    .filter(possible)
                    .any(|w| !w.delete && api.value.description == format!("write {}", w.k)),
                None => mine.iter().filter(possible).any(|w| w.delete),
            };
            if !ok {
                let held = api.map_or("nothing".to_string(), |a| a.value.description.clone());
                return Err(self.fail(
                    ErrorKind::Invariant,
                    format!(
                        "acknowledged write {} (slot a{slot}, revision {}) was lost: revision {revision} holds {held}",
                        last_acked.k,
                        last_acked.acked.unwrap_or(0)
                    ),
                ));
            }
        }
        Ok(())
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        portico_control::raft::store::run_inline_on_this_thread(false);
    }
}
