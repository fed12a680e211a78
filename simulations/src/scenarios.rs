//! The scenarios. Each takes a seed, which decides the link latencies, the operator's writes and
//! the fault timing, and returns an [`Outcome`] or the first invariant it saw violated.
//!
//! Every step of every scenario checks (see [`crate::check`]): no edge goes back a revision or
//! stops serving; every revision an edge serves was applied by some control node (so committed),
//! with the content that state has for the edge's region; two nodes never apply different states
//! at one revision. At the end: every acknowledged write is in the final state, and every edge
//! and control node is at the same final revision within [`CONVERGENCE`] of the last write.

use std::time::Duration;

use crate::cluster::WritePlan;
use crate::harness::{Harness, Setup};
use crate::{EdgeOutcome, ErrorKind, Outcome, SimError};

/// How long after the last write (or a heal) every edge must be at the cluster's revision.
pub const CONVERGENCE: Duration = Duration::from_secs(15);
/// How long the cluster has to elect a leader, enrol the edges and have them serve.
const STARTUP: Duration = Duration::from_secs(15);

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Partition one edge from every control node while writes continue, then heal.
///
/// The edge keeps serving what it had (checked after every step), and within
/// [`CONVERGENCE`] of the heal it serves at least the revision the cluster had at the heal.
pub fn partition_heal(seed: u64) -> Result<Outcome, SimError> {
    let mut plan = fastrand::Rng::with_seed(seed);
    let partition_at = ms(6_000 + plan.u64(..3_000));
    // Longer than the sessions' silence timeout (5 s), so both sides give up on the session.
    let heal_at = partition_at + ms(6_000 + plan.u64(..6_000));
    let writes = WritePlan::between(
        ms(2_500),
        heal_at + ms(2_000 + plan.u64(..3_000)),
        ms(150 + plan.u64(..250)),
    );
    let mut h = Harness::new(Setup {
        scenario: "partition",
        seed,
        edge_regions: vec!["eu".into(), "us".into(), "eu".into()],
        writes,
        snapshot_logs: portico_control::node::DEFAULT_SNAPSHOT_LOGS,
    })?;
    h.run_until(STARTUP, "every edge serving a config", |h| {
        h.edges_loaded(3)
    })?;
    h.run_to(partition_at)?;
    let victim = plan.usize(..h.edges.len());
    let id = h.edges[victim].id.clone();
    h.partition_edge(victim, true);
    // Sampled after every step meanwhile: the edge keeps serving, never goes back.
    h.run_to(heal_at)?;
    h.partition_edge(victim, false);
    let target = h.shared.recorder.max_applied();
    let caught_up = h.run_until(
        heal_at + CONVERGENCE,
        &format!("edge {id} catching up with revision {target} after the heal"),
        |h| h.edges[victim].revision() >= target,
    )?;
    h.event(format!(
        "edge {id} at revision {target} or later after the heal"
    ));
    let mut outcome = finish(&mut h)?;
    outcome.recovered_after = Some(caught_up - heal_at);
    Ok(outcome)
}

/// Crash the leader while writes flow, let the others elect a new one, restart the old leader.
///
/// Whatever the edges serve meanwhile was applied by some node; within [`CONVERGENCE`] of the
/// crash every edge (those of the crashed node too, through another node) serves a revision
/// committed after it; afterwards all three nodes and every edge agree.
pub fn leader_crash(seed: u64) -> Result<Outcome, SimError> {
    let mut plan = fastrand::Rng::with_seed(seed);
    let crash_at = ms(5_000 + plan.u64(..3_000));
    let restart_at = crash_at + ms(4_000 + plan.u64(..4_000));
    let writes = WritePlan::between(
        ms(2_500),
        restart_at + ms(3_000 + plan.u64(..3_000)),
        ms(100 + plan.u64(..200)),
    );
    let mut h = Harness::new(Setup {
        scenario: "leader-crash",
        seed,
        edge_regions: vec!["eu".into(), "us".into(), "eu".into()],
        writes,
        // Small, so that snapshots are built, logs purged, and a restarted node may need one.
        snapshot_logs: 32,
    })?;
    h.run_until(STARTUP, "every edge serving a config", |h| {
        h.edges_loaded(3)
    })?;
    h.run_to(crash_at)?;
    h.run_until(crash_at + ms(5_000), "a leader to crash", |h| {
        h.leader().is_some()
    })?;
    let leader = h.leader().expect("checked just above");
    let (crashed_at, before) = (h.now(), h.shared.recorder.max_applied());
    h.crash_control(leader);
    h.run_until(h.now() + ms(10_000), "a new leader", |h| {
        h.leader().is_some()
    })?;
    let new = h.leader().expect("checked just above");
    h.event(format!("control node {new} leads"));
    h.run_to(restart_at)?;
    h.restart_control(leader);
    let mut outcome = finish(&mut h)?;
    // Failover: every edge serves a revision committed after the crash, within the bound (the
    // edges of the crashed node notice its silence, then connect to another node).
    let mut resumed = Duration::ZERO;
    for edge in &h.edges {
        let first_after = edge
            .revisions
            .iter()
            .find(|(r, at)| *r > before && *at >= crashed_at)
            .map(|(_, at)| *at - crashed_at);
        match first_after {
            Some(after) if after <= CONVERGENCE => resumed = resumed.max(after),
            _ => {
                return Err(h.fail(
                    ErrorKind::Invariant,
                    format!(
                        "edge {} served nothing newer than revision {before} within {CONVERGENCE:?} of the crash",
                        edge.id
                    ),
                ));
            }
        }
    }
    outcome.recovered_after = Some(resumed);
    Ok(outcome)
}

/// Waits for the operator to finish, then for every node and edge to agree on one revision;
/// checks that no acknowledged write was lost; sums up.
fn finish(h: &mut Harness) -> Result<Outcome, SimError> {
    let limit = h.now() + ms(60_000);
    let writes_done = h.run_until(limit, "the operator finishing its writes", |h| {
        h.writes_done().is_some()
    })?;
    let controls = h.shared.controls.len();
    h.run_until(
        writes_done + CONVERGENCE,
        "every control node and edge at one revision",
        |h| {
            let nodes = h.shared.nodes.lock().map(|n| n.len()).unwrap_or(0);
            match h.shared.agreed_revision() {
                Some(r) => nodes == controls && h.edges.iter().all(|e| e.revision() == r),
                None => false,
            }
        },
    )?;
    let final_revision = h.shared.agreed_revision().unwrap_or(0);
    h.check_writes(final_revision)?;
    let writes = h.writes();
    // When the first control node applied the final revision.
    let applied_at = h
        .shared
        .recorder
        .at(final_revision)
        .map_or(writes_done, |a| a.at);
    let edges = h
        .edges
        .iter()
        .map(|e| EdgeOutcome {
            id: e.id.clone(),
            revisions: e.revisions.iter().map(|(r, _)| *r).collect(),
            converged_after: e
                .reached(final_revision)
                .map_or(Duration::ZERO, |at| at.saturating_sub(applied_at)),
        })
        .collect();
    if h.edges.iter().any(|e| e.revision() != final_revision) {
        return Err(h.fail(ErrorKind::Invariant, "an edge is not at the final revision"));
    }
    Ok(Outcome {
        scenario: h.scenario,
        seed: h.seed,
        final_revision,
        writes_acked: writes.iter().filter(|w| w.acked.is_some()).count(),
        writes_unacked: writes
            .iter()
            .filter(|w| w.acked.is_none() && !w.rejected)
            .count(),
        events: h.events.clone(),
        edges,
        recovered_after: None,
        finished_at: h.now(),
    })
}
