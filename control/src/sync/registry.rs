//! What this control node knows of the edges connected to it: their revision, heartbeats and
//! last refusal. In memory only (each node knows its own sessions); the admin API merges every
//! node's view into `portico cluster edges`.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// One edge as a control node sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EdgeSession {
    pub id: String,
    pub region: String,
    /// The control node serving it.
    pub node: u64,
    pub remote: String,
    pub software_version: String,
    pub protocol_version: u32,
    pub private_listener: bool,
    /// The revision the edge last acknowledged (or announced).
    pub revision: u64,
    pub connected: bool,
    pub connected_at_ms: u64,
    /// When the edge was last heard from (any message), Unix milliseconds.
    pub last_seen_ms: u64,
    /// The last revision the edge refused, and why.
    pub last_nack: Option<(u64, String)>,
}

/// Sessions by edge id. A session that ends stays listed as disconnected, so operators see
/// when an edge was last heard from.
#[derive(Debug, Default)]
pub struct EdgeSessions {
    sessions: Mutex<BTreeMap<String, EdgeSession>>,
}

/// The wall clock in Unix milliseconds: what operators read (last seen), and what the leader
/// stamps into proposals. Never used to time anything.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl EdgeSessions {
    fn update(&self, id: &str, f: impl FnOnce(&mut EdgeSession)) {
        let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = sessions.get_mut(id) {
            f(s);
        }
    }

    pub fn connected(&self, session: EdgeSession) {
        let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        sessions.insert(session.id.clone(), session);
    }

    /// Marks the edge heard from, at `revision`.
    pub fn seen(&self, id: &str, revision: u64) {
        self.update(id, |s| {
            s.revision = revision;
            s.last_seen_ms = now_ms();
        });
    }

    pub fn nacked(&self, id: &str, revision: u64, reason: String) {
        self.update(id, |s| {
            s.last_nack = Some((revision, reason));
            s.last_seen_ms = now_ms();
        });
    }

    /// Ends the session, unless a newer one for the same edge replaced it.
    pub fn disconnected(&self, id: &str, connected_at_ms: u64) {
        self.update(id, |s| {
            if s.connected_at_ms == connected_at_ms {
                s.connected = false;
            }
        });
    }

    pub fn list(&self) -> Vec<EdgeSession> {
        let sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        sessions.values().cloned().collect()
    }

    /// Prometheus text: sessions and each connected edge's lag behind `applied`.
    pub fn render_metrics(&self, applied: u64, out: &mut String) {
        let sessions = self.list();
        let connected = sessions.iter().filter(|s| s.connected).count();
        let _ = writeln!(
            out,
            "# HELP portico_sync_edges_connected Edges with a sync session on this node.\n\
             # TYPE portico_sync_edges_connected gauge\n\
             portico_sync_edges_connected {connected}"
        );
        let _ = writeln!(
            out,
            "# HELP portico_sync_edge_lag_revisions How far each connected edge's revision is behind this node's.\n\
             # TYPE portico_sync_edge_lag_revisions gauge"
        );
        for s in sessions.iter().filter(|s| s.connected) {
            let _ = writeln!(
                out,
                "portico_sync_edge_lag_revisions{{edge=\"{}\",region=\"{}\"}} {}",
                s.id,
                s.region,
                applied.saturating_sub(s.revision)
            );
        }
    }
}
