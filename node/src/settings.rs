//! The edge's own settings: listeners, limits and timeouts. (What it serves is the config.)

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::access_log::AccessLogTarget;

#[derive(Debug, Clone)]
pub struct EdgeSettings {
    pub listen: SocketAddr,
    /// The private listener: the only one that serves APIs with `endpoint: private`, and it
    /// serves nothing else. `None`: this edge serves no private APIs.
    pub private_listen: Option<SocketAddr>,
    pub ops_listen: SocketAddr,
    /// Worker threads, each with its own runtime, listener (SO_REUSEPORT) and backend pool.
    pub workers: usize,
    /// APIs answer at `{api-id}.{domain_suffix}`.
    pub domain_suffix: String,
    pub access_log: AccessLogTarget,
    pub max_body_bytes: u64,
    /// Request line plus headers (HTTP/1.1), or the header list (HTTP/2).
    pub max_header_bytes: usize,
    pub header_read_timeout: Duration,
    /// A connection with no request in flight and no bytes moving for this long is closed.
    pub idle_timeout: Duration,
    pub max_connections: usize,
    pub max_h2_streams: u32,
    /// How long in-flight requests may take to finish after SIGTERM.
    pub drain_timeout: Duration,
    pub backend_idle_timeout: Duration,
    /// Extra CA certificates (PEM files) trusted for HTTPS backends.
    pub backend_ca_files: Vec<PathBuf>,
}

impl Default for EdgeSettings {
    fn default() -> Self {
        EdgeSettings {
            listen: SocketAddr::from(([0, 0, 0, 0], 8080)),
            private_listen: None,
            ops_listen: SocketAddr::from(([127, 0, 0, 1], 9090)),
            workers: std::thread::available_parallelism().map_or(1, |n| n.get()),
            domain_suffix: "portico.localhost".to_string(),
            access_log: AccessLogTarget::Stdout,
            max_body_bytes: 10 * 1024 * 1024,
            max_header_bytes: 16 * 1024,
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_connections: 10_000,
            max_h2_streams: 256,
            drain_timeout: Duration::from_secs(30),
            backend_idle_timeout: Duration::from_secs(30),
            backend_ca_files: Vec::new(),
        }
    }
}
