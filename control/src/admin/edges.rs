//! `GET /v1/cluster/edges`: every enrolled edge with its sync status. Each control node knows
//! only the sessions it serves, so the node that answers asks every member for its own
//! (`?scope=local`) and merges them with the enrolment records in the replicated state.

use serde_json::{Value, json};

use crate::state::State;
use crate::sync::EdgeSession;

/// One row per enrolled edge, from the freshest report of it: a connected session wins over a
/// closed one, then the most recently heard from.
pub fn merge(state: &State, reports: &[EdgeSession], unreachable: &[String], now_ms: u64) -> Value {
    let items: Vec<Value> = state
        .edges
        .values()
        .map(|edge| {
            let best = reports
                .iter()
                .filter(|s| s.id == edge.id)
                .max_by_key(|s| (s.connected, s.last_seen_ms));
            let status = match (edge.revoked_at_ms, best) {
                (Some(_), _) => "revoked",
                (None, Some(s)) if s.connected => "connected",
                (None, Some(_)) => "disconnected",
                (None, None) => "unknown",
            };
            json!({
                "id": edge.id,
                "region": edge.region,
                "status": status,
                "revision": best.map(|s| s.revision),
                "lag": best.map(|s| state.revision.saturating_sub(s.revision)),
                "last_seen_ms": best.map(|s| s.last_seen_ms),
                "last_seen_ago_ms": best.map(|s| now_ms.saturating_sub(s.last_seen_ms)),
                "software_version": best.map(|s| s.software_version.clone()),
                "protocol_version": best.map(|s| s.protocol_version),
                "private_listener": best.map(|s| s.private_listener),
                "node": best.map(|s| s.node),
                "remote": best.map(|s| s.remote.clone()),
                "last_nack": best.and_then(|s| s.last_nack.as_ref()).map(|(r, why)| json!({"revision": r, "reason": why})),
                "enrolled_at_ms": edge.enrolled_at_ms,
                "revoked_at_ms": edge.revoked_at_ms,
            })
        })
        .collect();
    json!({
        "revision": state.revision,
        "items": items,
        // Members whose sessions are missing from this answer: their edges may show stale.
        "unreachable_nodes": unreachable,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::EdgeRecord;

    fn session(id: &str, node: u64, revision: u64, connected: bool, seen: u64) -> EdgeSession {
        EdgeSession {
            id: id.into(),
            region: "eu".into(),
            node,
            remote: "127.0.0.1:1".into(),
            software_version: "0.1.0".into(),
            protocol_version: 1,
            private_listener: false,
            revision,
            connected,
            connected_at_ms: 0,
            last_seen_ms: seen,
            last_nack: None,
        }
    }

    #[test]
    fn the_live_session_wins_and_every_enrolled_edge_is_listed() {
        let mut state = State {
            revision: 10,
            ..State::default()
        };
        for (id, revoked) in [("eu-1", None), ("eu-2", None), ("eu-3", Some(5))] {
            state.edges.insert(
                id.into(),
                EdgeRecord {
                    id: id.into(),
                    region: "eu".into(),
                    token_id: "t".into(),
                    enrolled_at_ms: 1,
                    revoked_at_ms: revoked,
                },
            );
        }
        // eu-1 moved from node 1 (closed, later timestamp) to node 2 (live).
        let reports = [
            session("eu-1", 1, 4, false, 900),
            session("eu-1", 2, 8, true, 800),
        ];
        let merged = merge(&state, &reports, &["node 3".into()], 1000);
        let items = merged["items"].as_array().unwrap();
        assert_eq!(items.len(), 3);
        assert_eq!(items[0]["status"], "connected");
        assert_eq!(items[0]["node"], 2);
        assert_eq!(items[0]["lag"], 2);
        assert_eq!(items[1]["status"], "unknown");
        assert_eq!(items[2]["status"], "revoked");
        assert_eq!(merged["unreachable_nodes"][0], "node 3");
    }
}
