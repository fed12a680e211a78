//! What the sync client reports: for `/status` and Prometheus (`portico_sync_*`).

use std::fmt::Write;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};

#[derive(Debug, Default)]
pub struct SyncStatus {
    connected: AtomicBool,
    control_node: AtomicU64,
    /// The newest revision a control node said it has applied.
    control_revision: AtomicU64,
    /// The revision of the last update applied from a control node.
    applied_revision: AtomicU64,
    sessions: AtomicU64,
    updates_applied: AtomicU64,
    updates_refused: AtomicU64,
    lkg_failures: AtomicU64,
    control_addr: Mutex<Option<SocketAddr>>,
}

/// `/status`'s `sync` object.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SyncReport {
    pub connected: bool,
    pub control_node: Option<u64>,
    pub control_addr: Option<String>,
    pub control_revision: u64,
    pub applied_revision: u64,
    pub lag_revisions: u64,
    pub updates_applied: u64,
    pub updates_refused: u64,
    pub last_known_good_failures: u64,
}

impl SyncStatus {
    pub fn connected(&self, node: u64, addr: SocketAddr) {
        self.connected.store(true, Relaxed);
        self.control_node.store(node, Relaxed);
        self.sessions.fetch_add(1, Relaxed);
        *self.control_addr.lock().unwrap_or_else(|e| e.into_inner()) = Some(addr);
    }

    pub fn disconnected(&self) {
        self.connected.store(false, Relaxed);
    }

    pub fn control_revision(&self, revision: u64) {
        self.control_revision.fetch_max(revision, Relaxed);
    }

    pub fn update_applied(&self, revision: u64) {
        self.updates_applied.fetch_add(1, Relaxed);
        self.applied_revision.fetch_max(revision, Relaxed);
        self.control_revision.fetch_max(revision, Relaxed);
    }

    pub fn update_refused(&self) {
        self.updates_refused.fetch_add(1, Relaxed);
    }

    pub fn lkg_failed(&self) {
        self.lkg_failures.fetch_add(1, Relaxed);
    }

    pub fn is_connected(&self) -> bool {
        self.connected.load(Relaxed)
    }

    pub fn report(&self, serving_revision: u64) -> SyncReport {
        let connected = self.connected.load(Relaxed);
        let control_revision = self.control_revision.load(Relaxed);
        SyncReport {
            connected,
            control_node: connected.then(|| self.control_node.load(Relaxed)),
            control_addr: self
                .control_addr
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .map(|a| a.to_string()),
            control_revision,
            applied_revision: self.applied_revision.load(Relaxed),
            lag_revisions: control_revision.saturating_sub(serving_revision),
            updates_applied: self.updates_applied.load(Relaxed),
            updates_refused: self.updates_refused.load(Relaxed),
            last_known_good_failures: self.lkg_failures.load(Relaxed),
        }
    }

    /// Prometheus text; `serving_revision` is the config revision in use.
    pub fn render(&self, serving_revision: u64, out: &mut String) {
        let r = self.report(serving_revision);
        let series = [
            (
                "portico_sync_connected",
                "gauge",
                "Whether a sync session with a control node is up.",
                u64::from(r.connected),
            ),
            (
                "portico_sync_control_revision",
                "gauge",
                "The newest revision a control node reported.",
                r.control_revision,
            ),
            (
                "portico_sync_lag_revisions",
                "gauge",
                "How many revisions the serving config is behind the control plane.",
                r.lag_revisions,
            ),
            (
                "portico_sync_sessions_total",
                "counter",
                "Sync sessions started.",
                self.sessions.load(Relaxed),
            ),
            (
                "portico_sync_updates_applied_total",
                "counter",
                "Updates applied from control nodes.",
                r.updates_applied,
            ),
            (
                "portico_sync_updates_refused_total",
                "counter",
                "Updates refused (nacked) as invalid.",
                r.updates_refused,
            ),
            (
                "portico_sync_last_known_good_failures_total",
                "counter",
                "Last-known-good files that could not be written or read.",
                r.last_known_good_failures,
            ),
        ];
        for (name, kind, help, value) in series {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        }
    }
}
