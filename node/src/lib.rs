//! portico-node: the edge. Listeners, the router, the request pipeline, integrations, the
//! backend pool, metrics and access logs, and the config store that feeds them.
//!
//! Where to start: [`pipeline`] is the request path, phase by phase; [`server`] owns sockets
//! and connections; [`compile`] turns the operator's model into what the pipeline reads;
//! [`sync`] keeps the config in step with the control plane.

pub mod access_log;
pub mod body;
pub mod compile;
pub mod error;
pub mod fields;
pub mod integration;
pub mod metrics;
pub mod ops;
pub mod persist;
pub mod pipeline;
pub mod request;
pub mod request_id;
pub mod router;
pub mod server;
pub mod settings;
pub mod store;
pub mod sync;
pub mod tcp;
pub mod upstream;
pub mod wire;
pub mod worker;

pub use access_log::{AccessLog, AccessLogTarget};
pub use compile::EdgeConfig;
pub use metrics::Metrics;
pub use server::{EdgeServer, start};
pub use settings::EdgeSettings;
pub use store::ConfigStore;

/// This build's version, as edges report it to control nodes.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
