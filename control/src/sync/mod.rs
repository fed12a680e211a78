//! Config distribution to edges: enrolment ([`enrol`]), the sync session each connected edge
//! holds with a control node ([`session`]), the filtered "changes since revision R" it is
//! served ([`changes`]), and this node's record of its sessions ([`registry`]).
//!
//! The messages are `portico_proto::sync`; the QUIC endpoint, TLS and frames are the
//! control transport's ([`crate::transport`]).

pub mod changes;
pub mod enrol;
pub mod registry;
pub mod session;

pub use changes::{edge_update, full_config};
pub use enrol::EnrolService;
pub use registry::{EdgeSession, EdgeSessions};
pub use session::{SyncService, SyncTiming};
