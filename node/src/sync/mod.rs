//! Config from the control plane: enrolment and the edge's identity ([`identity`]), the sync
//! session ([`client`]), last-known-good on disk ([`lkg`]), TLS ([`tls`]), frames on QUIC
//! streams ([`wire`]) and what it all reports ([`status`]).
//!
//! The messages are `portico_proto::sync`; the control node's side is `portico_control::sync`.

pub mod client;
pub mod identity;
pub mod lkg;
pub mod status;
pub mod tls;
pub mod wire;

pub use client::{SyncClient, SyncTiming};
pub use identity::{EdgeIdentity, IdentityError};
pub use status::{SyncReport, SyncStatus};
