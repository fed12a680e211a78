//! portico-control: the control plane. The replicated state machine ([`state`]) is a pure
//! function of the log; snapshots ([`snapshot`]) are versioned encodings of it.

pub mod admin;
pub mod node;
pub mod raft;
pub mod run;
pub mod snapshot;
pub mod state;
pub mod sync;
pub mod transport;

pub use state::{Applied, Command, Proposal, Rejection, Role, State, TokenRecord, Versioned};

#[cfg(test)]
mod state_tests;
