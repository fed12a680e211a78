//! What the scenarios check, and the records they check it against.
//!
//! - [`Recorder`]: every state a control node publishes, by revision. A revision a node has
//!   applied is committed; two nodes that applied the same revision must hold the same state.
//! - [`EdgeWatch`]: each edge's serving revision, sampled after every simulation step. It never
//!   goes backwards, a loaded edge stays loaded, and every revision an edge serves must be one
//!   some control node applied, with exactly that state's content for the edge's filter.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use portico_control::State;
use portico_node::{ConfigStore, EdgeConfig};
use portico_proto::sync::EdgeFilter;

/// What an edge serves, reduced to what the checks compare: API id → stage → route keys.
pub type Served = BTreeMap<String, BTreeMap<String, Vec<String>>>;

/// What an edge with `filter` should serve when it is at the state's revision.
pub fn served_by_state(state: &State, filter: &EdgeFilter) -> Served {
    let mut served = Served::new();
    for api in state.apis.values().map(|a| &a.value) {
        if !filter.admits(api) {
            continue;
        }
        let stages = api
            .stages
            .iter()
            .map(|stage| {
                let routes = match &stage.deployment {
                    None => &api.routes,
                    Some(id) => match state.deployments.get(&api.id).and_then(|d| d.get(id)) {
                        Some(d) => &d.value.snapshot.routes,
                        None => &api.routes,
                    },
                };
                let mut keys: Vec<String> = routes.iter().map(|r| r.key.clone()).collect();
                keys.sort();
                (stage.name.clone(), keys)
            })
            .collect();
        served.insert(api.id.clone(), stages);
    }
    served
}

/// What an edge's compiled config serves.
pub fn served_by_edge(config: &EdgeConfig) -> Served {
    config
        .apis
        .iter()
        .map(|(id, api)| {
            let stages = api
                .stages
                .iter()
                .map(|(name, stage)| {
                    let mut keys: Vec<String> =
                        stage.routes.iter().map(|r| r.key.to_string()).collect();
                    keys.sort();
                    (name.clone(), keys)
                })
                .collect();
            (id.clone(), stages)
        })
        .collect()
}

/// A state some control node published.
#[derive(Clone)]
pub struct AppliedState {
    pub state: Arc<State>,
    /// The node that published it first, and when (simulated time).
    pub node: u64,
    pub at: Duration,
}

#[derive(Default)]
struct Records {
    revisions: BTreeMap<u64, AppliedState>,
    /// Per node, the last revision it published (a restarted node starts again from its
    /// snapshot, so this may go back after a restart; the edges may not).
    nodes: BTreeMap<u64, u64>,
    violations: Vec<String>,
}

/// Every state the control nodes publish (fed by a task on each node; see `cluster`).
#[derive(Default)]
pub struct Recorder {
    records: Mutex<Records>,
}

impl Recorder {
    fn lock(&self) -> std::sync::MutexGuard<'_, Records> {
        self.records.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Node `node` published `state` at `at`.
    pub fn published(&self, node: u64, state: Arc<State>, at: Duration) {
        let mut records = self.lock();
        let revision = state.revision;
        records.nodes.insert(node, revision);
        match records.revisions.get(&revision) {
            None => {
                records
                    .revisions
                    .insert(revision, AppliedState { state, node, at });
            }
            Some(first) if *first.state == *state => {}
            Some(first) => {
                let message = format!(
                    "control nodes {} and {node} applied different states at revision {revision}",
                    first.node
                );
                records.violations.push(message);
            }
        }
    }

    /// The state at `revision`, if a node applied it.
    pub fn at(&self, revision: u64) -> Option<AppliedState> {
        self.lock().revisions.get(&revision).cloned()
    }

    /// The highest revision any node applied (and so the cluster committed).
    pub fn max_applied(&self) -> u64 {
        self.lock()
            .revisions
            .keys()
            .next_back()
            .copied()
            .unwrap_or(0)
    }

    /// The last revision each node published.
    pub fn node_revisions(&self) -> BTreeMap<u64, u64> {
        self.lock().nodes.clone()
    }

    pub fn take_violations(&self) -> Vec<String> {
        std::mem::take(&mut self.lock().violations)
    }
}

/// One edge as the checks follow it.
pub struct EdgeWatch {
    pub id: String,
    pub filter: EdgeFilter,
    pub store: Arc<ConfigStore>,
    /// Each revision it served, and from when (simulated time).
    pub revisions: Vec<(u64, Duration)>,
    loaded: bool,
}

impl EdgeWatch {
    pub fn new(id: String, filter: EdgeFilter, store: Arc<ConfigStore>) -> EdgeWatch {
        EdgeWatch {
            id,
            filter,
            store,
            revisions: Vec::new(),
            loaded: false,
        }
    }

    /// The revision it serves now (0: none yet).
    pub fn revision(&self) -> u64 {
        self.revisions.last().map_or(0, |(r, _)| *r)
    }

    pub fn is_loaded(&self) -> bool {
        self.loaded
    }

    /// Samples the edge's config store at `now`: checks the invariants, records a new revision.
    pub fn sample(&mut self, now: Duration, recorder: &Recorder) -> Result<(), String> {
        let loaded = self.store.is_loaded();
        if self.loaded && !loaded {
            return Err(format!("edge {} stopped serving a config", self.id));
        }
        self.loaded = loaded;
        if !loaded {
            return Ok(());
        }
        let config = self.store.current();
        let revision = config.revision;
        let previous = self.revision();
        if revision < previous {
            return Err(format!(
                "edge {} went back from revision {previous} to {revision}",
                self.id
            ));
        }
        if revision == previous {
            return Ok(());
        }
        let Some(applied) = recorder.at(revision) else {
            return Err(format!(
                "edge {} serves revision {revision}, which no control node has applied (the highest applied is {})",
                self.id,
                recorder.max_applied()
            ));
        };
        let expected = served_by_state(&applied.state, &self.filter);
        let served = served_by_edge(&config);
        if served != expected {
            return Err(format!(
                "edge {} serves something else than the cluster's revision {revision} for region {}: serves {served:?}, the cluster has {expected:?}",
                self.id, self.filter.region
            ));
        }
        self.revisions.push((revision, now));
        Ok(())
    }

    /// When it first served `revision` or later.
    pub fn reached(&self, revision: u64) -> Option<Duration> {
        self.revisions
            .iter()
            .find(|(r, _)| *r >= revision)
            .map(|(_, at)| *at)
    }
}

#[cfg(test)]
mod tests {
    use portico_control::{Command, Proposal};
    use portico_node::Metrics;

    use super::*;
    use crate::cluster::api_for;

    fn state_after(writes: &[(usize, u64)]) -> State {
        let mut state = State::default();
        for (i, (slot, k)) in writes.iter().enumerate() {
            let command = Command::PutApi {
                api: api_for(*slot, *k),
                if_revision: None,
            };
            state.apply(i as u64 + 1, &Proposal { at_ms: 0, command });
        }
        state
    }

    fn eu() -> EdgeFilter {
        EdgeFilter {
            region: "eu".into(),
            private_listener: false,
        }
    }

    fn serving(store: &ConfigStore, state: &State, filter: &EdgeFilter) {
        let view = portico_control::sync::full_config(state, filter);
        let view = portico_proto::sync::EdgeView::default()
            .apply(&view)
            .expect("a full config applies");
        store
            .apply_at(&view.to_document(), state.revision, "test")
            .expect("the view compiles");
    }

    #[test]
    fn the_filtered_view_is_what_an_edge_serves() {
        // Slot 2 is regional in us: an eu edge does not get it.
        let state = state_after(&[(0, 0), (1, 1), (2, 2)]);
        let served = served_by_state(&state, &eu());
        assert_eq!(served.keys().collect::<Vec<_>>(), ["a0", "a1"]);
        assert_eq!(served["a1"]["prod"], ["GET /health", "GET /w1"]);

        let store = Arc::new(ConfigStore::new(Arc::new(Metrics::default())));
        serving(&store, &state, &eu());
        assert_eq!(served_by_edge(&store.current()), served);
    }

    #[test]
    fn an_edge_serving_an_unapplied_revision_or_other_content_is_caught() {
        let recorder = Recorder::default();
        let applied = state_after(&[(0, 0), (0, 1)]);
        recorder.published(1, Arc::new(applied.clone()), Duration::ZERO);

        // Revision 3 was never applied by any node.
        let ahead = Arc::new(ConfigStore::new(Arc::new(Metrics::default())));
        serving(&ahead, &state_after(&[(0, 0), (0, 1), (0, 2)]), &eu());
        let mut watch = EdgeWatch::new("eu-1".into(), eu(), ahead);
        let error = watch.sample(Duration::ZERO, &recorder).unwrap_err();
        assert!(
            error.contains("which no control node has applied"),
            "{error}"
        );

        // Revision 2 with other content than the cluster's revision 2.
        let other = Arc::new(ConfigStore::new(Arc::new(Metrics::default())));
        serving(&other, &state_after(&[(0, 0), (0, 5)]), &eu());
        let mut watch = EdgeWatch::new("eu-1".into(), eu(), other);
        let error = watch.sample(Duration::ZERO, &recorder).unwrap_err();
        assert!(error.contains("serves something else"), "{error}");

        // The right content: recorded.
        let good = Arc::new(ConfigStore::new(Arc::new(Metrics::default())));
        serving(&good, &applied, &eu());
        let mut watch = EdgeWatch::new("eu-1".into(), eu(), good);
        watch.sample(Duration::from_millis(3), &recorder).unwrap();
        assert_eq!(watch.revisions, [(2, Duration::from_millis(3))]);
    }

    #[test]
    fn two_nodes_with_different_states_at_one_revision_are_caught() {
        let recorder = Recorder::default();
        recorder.published(1, Arc::new(state_after(&[(0, 0)])), Duration::ZERO);
        recorder.published(2, Arc::new(state_after(&[(0, 0)])), Duration::ZERO);
        assert!(recorder.take_violations().is_empty());
        recorder.published(3, Arc::new(state_after(&[(0, 9)])), Duration::ZERO);
        assert_eq!(recorder.take_violations().len(), 1);
    }
}
