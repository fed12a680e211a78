//! portico-simulations: the real control and edge code on turmoil's simulated network and clock.
//!
//! Each simulated host (three control nodes, a few edges, an operator) is a turmoil host with its
//! own tokio runtime on simulated time; QUIC runs over turmoil UDP ([`net`]). A seed decides
//! everything the simulation chooses: link latencies, the operator's writes, fault timing, and the
//! control nodes' election timeouts. The driver ([`harness::Harness`]) steps the simulation one
//! millisecond at a time and checks the edges after every step ([`check`]); the scenarios are in
//! [`scenarios`]. How to run and replay: `docs/simulations.md`.

pub mod check;
pub mod cluster;
pub mod harness;
pub mod net;
pub mod scenarios;

use std::fmt;
use std::time::Duration;

/// A scenario: a name and the function that runs it for a seed.
#[derive(Clone, Copy)]
pub struct Scenario {
    pub name: &'static str,
    pub about: &'static str,
    pub run: fn(u64) -> Result<Outcome, SimError>,
}

pub const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "partition",
        about: "partition an edge from every control node while writes continue, then heal",
        run: scenarios::partition_heal,
    },
    Scenario {
        name: "leader-crash",
        about: "crash the leader while writes flow, then restart it",
        run: scenarios::leader_crash,
    },
];

pub fn scenario(name: &str) -> Option<Scenario> {
    SCENARIOS.iter().copied().find(|s| s.name == name)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The simulation could not be set up (temporary directory, certificates).
    Setup,
    /// A host's software failed, or turmoil did.
    Simulation,
    /// A checked property did not hold.
    Invariant,
}

/// Why a run failed, with what is needed to replay it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimError {
    pub scenario: &'static str,
    pub seed: u64,
    /// Simulated time.
    pub at: Duration,
    pub kind: ErrorKind,
    pub message: String,
}

impl fmt::Display for SimError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.kind {
            ErrorKind::Setup => "setup failed",
            ErrorKind::Simulation => "simulation failed",
            ErrorKind::Invariant => "invariant violated",
        };
        write!(
            f,
            "{} seed {} at {:.3} s: {kind}: {} (replay: cargo run -p portico-simulations --bin simulate -- --scenario {} --seed {})",
            self.scenario,
            self.seed,
            self.at.as_secs_f64(),
            self.message,
            self.scenario,
            self.seed
        )
    }
}

impl std::error::Error for SimError {}

/// One edge at the end of a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EdgeOutcome {
    pub id: String,
    /// Every revision it served, in order.
    pub revisions: Vec<u64>,
    /// From the first control node applying the final revision to this edge serving it
    /// (simulated time).
    pub converged_after: Duration,
}

/// What a run did: the summary two runs of one seed are compared by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub scenario: &'static str,
    pub seed: u64,
    /// The revision every control node and edge ended at.
    pub final_revision: u64,
    pub writes_acked: usize,
    /// Writes whose outcome the operator never learned (they may or may not have committed).
    pub writes_unacked: usize,
    /// What the driver did and saw, with simulated times.
    pub events: Vec<(Duration, String)>,
    pub edges: Vec<EdgeOutcome>,
    /// How long the fault's recovery took: `partition`, from the heal to the edge serving the
    /// revision the cluster had then; `leader-crash`, from the crash to every edge serving a
    /// revision committed after it.
    pub recovered_after: Option<Duration>,
    /// Simulated time at the end of the run.
    pub finished_at: Duration,
}

/// The order of what happened, without when: each edge's revisions, the driver's events, the
/// writes' fate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trace {
    pub final_revision: u64,
    pub writes_acked: usize,
    pub writes_unacked: usize,
    pub events: Vec<String>,
    pub edges: Vec<(String, Vec<u64>)>,
}

/// The part of an outcome that is a pure function of the seed and the invariants: whether the
/// run passed, and where every edge ended. See `docs/simulations.md` on determinism.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub final_revision: u64,
    pub edges: Vec<(String, u64)>,
}

impl Outcome {
    pub fn verdict(&self) -> Verdict {
        Verdict {
            final_revision: self.final_revision,
            edges: self
                .edges
                .iter()
                .map(|e| (e.id.clone(), e.revisions.last().copied().unwrap_or(0)))
                .collect(),
        }
    }

    pub fn trace(&self) -> Trace {
        Trace {
            final_revision: self.final_revision,
            writes_acked: self.writes_acked,
            writes_unacked: self.writes_unacked,
            events: self.events.iter().map(|(_, e)| e.clone()).collect(),
            edges: self
                .edges
                .iter()
                .map(|e| (e.id.clone(), e.revisions.clone()))
                .collect(),
        }
    }

    /// A stable hash of the [`Trace`].
    pub fn trace_digest(&self) -> u64 {
        net::fnv1a(format!("{:?}", self.trace()).as_bytes())
    }

    /// A stable hash of the whole outcome (every revision each edge served, every event time).
    pub fn digest(&self) -> u64 {
        net::fnv1a(format!("{self:?}").as_bytes())
    }

    /// One line: verdict, final revisions, convergence times and both digests.
    pub fn summary(&self) -> String {
        let edges: Vec<String> = self
            .edges
            .iter()
            .map(|e| {
                format!(
                    "{}@{} ({} revisions, +{:.3}s)",
                    e.id,
                    e.revisions.last().copied().unwrap_or(0),
                    e.revisions.len(),
                    e.converged_after.as_secs_f64()
                )
            })
            .collect();
        let recovered = self
            .recovered_after
            .map(|d| format!(", recovered {:.3} s after the fault", d.as_secs_f64()))
            .unwrap_or_default();
        format!(
            "{} seed {}: ok, final revision {}, writes {} acked / {} unknown, edges {}{recovered}, ended at {:.3} s, trace {:016x}, digest {:016x}",
            self.scenario,
            self.seed,
            self.final_revision,
            self.writes_acked,
            self.writes_unacked,
            edges.join(" "),
            self.finished_at.as_secs_f64(),
            self.trace_digest(),
            self.digest()
        )
    }
}
