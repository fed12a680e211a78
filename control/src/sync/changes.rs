//! "Changes since revision R", filtered for one edge: what a control node sends an edge.
//!
//! Every API carries the revision that last changed it, and deletions are remembered (up to
//! [`crate::state::MAX_TOMBSTONES`]), so the changes since R are: the APIs deleted after R,
//! then every API changed after R, sent whole when the edge may serve it and as a deletion when
//! it may not (its endpoint mode or region may have changed). An API is sent with the
//! deployments its stages pin, which are immutable. An edge too far behind, or new, gets its
//! whole config instead.

use portico_proto::sync::{ConfigChange, ConfigUpdate, EdgeFilter, pinned_deployment_ids};
use portico_proto::{Api, Deployment};

use crate::state::State;

/// The update that takes an edge at `since` (0: nothing) to the state's revision.
pub fn edge_update(state: &State, since: u64, filter: &EdgeFilter) -> ConfigUpdate {
    let complete = since > 0 && since >= state.tombstone_floor && since <= state.revision;
    if !complete {
        return full_config(state, filter);
    }
    let mut changes: Vec<ConfigChange> = state
        .api_tombstones
        .range(since + 1..)
        .flat_map(|(_, ids)| ids.iter())
        .map(|id| ConfigChange::DeleteApi { id: id.clone() })
        .collect();
    for api in state.apis.values().filter(|a| a.revision > since) {
        changes.push(if filter.admits(&api.value) {
            put_api(state, &api.value)
        } else {
            ConfigChange::DeleteApi {
                id: api.value.id.clone(),
            }
        });
    }
    ConfigUpdate {
        base: Some(since),
        revision: state.revision,
        changes,
    }
}

/// Everything the edge may serve, at the state's revision.
pub fn full_config(state: &State, filter: &EdgeFilter) -> ConfigUpdate {
    ConfigUpdate {
        base: None,
        revision: state.revision,
        changes: state
            .apis
            .values()
            .filter(|a| filter.admits(&a.value))
            .map(|a| put_api(state, &a.value))
            .collect(),
    }
}

fn put_api(state: &State, api: &Api) -> ConfigChange {
    let stored = state.deployments.get(&api.id);
    let mut deployments: Vec<Deployment> = pinned_deployment_ids(api)
        .filter_map(|id| {
            stored
                .and_then(|m| m.get(id))
                .map(|d| d.value.as_ref().clone())
        })
        .collect();
    // Two stages may pin the same deployment.
    deployments.sort_by(|a, b| a.id.cmp(&b.id));
    deployments.dedup_by(|a, b| a.id == b.id);
    ConfigChange::PutApi {
        api: api.clone(),
        deployments,
    }
}
