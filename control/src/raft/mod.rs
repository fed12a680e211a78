//! The openraft adapter: type configuration, and (in submodules) storage and network. Nothing
//! openraft-specific leaks into [`crate::state`].

use std::io::Cursor;

use serde::{Deserialize, Serialize};

mod runtime;
pub mod store;

pub use runtime::{ElectionRng, SeededTokio, seed_election_rng};

openraft::declare_raft_types!(
    /// Portico's Raft types: log entries carry leader-stamped [`crate::state::Proposal`]s and
    /// applying one answers with [`crate::state::Applied`].
    pub TypeConfig:
        D = crate::state::Proposal,
        R = crate::state::Applied,
        NodeId = u64,
        Node = Member,
        // tokio, with election timeouts from a generator simulations can seed.
        AsyncRuntime = SeededTokio,
);

/// What the cluster knows about a member, replicated in the membership config.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// QUIC address for Raft and edge sync (`host:port`, UDP).
    pub raft_addr: String,
    /// Admin API address (`host:port`), where followers forward writes.
    pub admin_addr: String,
}

pub type NodeId = u64;
pub type Raft = openraft::Raft<TypeConfig>;
pub type LogId = openraft::LogId<NodeId>;
pub type Vote = openraft::Vote<NodeId>;
pub type Entry = openraft::Entry<TypeConfig>;
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, Member>;
pub type StoredMembership = openraft::StoredMembership<NodeId, Member>;
pub type StorageError = openraft::StorageError<NodeId>;

// Keeps the macro's default `SnapshotData = Cursor<Vec<u8>>` in scope.
#[allow(dead_code)]
type SnapshotData = Cursor<Vec<u8>>;
