//! Command-line arguments.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use portico_node::{AccessLogTarget, EdgeSettings};

#[derive(Parser, Debug)]
#[command(
    name = "portico",
    version,
    about = "A self-hosted, edge-distributed API gateway"
)]
pub struct Cli {
    /// Format of Portico's own logs on stderr (access logs have their own setting).
    #[arg(
        long,
        global = true,
        value_enum,
        default_value = "json",
        env = "PORTICO_LOG_FORMAT"
    )]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(ValueEnum, Clone, Debug)]
pub enum LogFormat {
    Json,
    Text,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run an edge node that serves the APIs of a declarative file (YAML or JSON); reloads on
    /// SIGHUP and when the file changes.
    Edge(EdgeArgs),
    /// Run everything in one process with a demo API; no set-up.
    Dev(DevArgs),
    /// A control node of the replicated config store.
    #[command(subcommand)]
    Control(crate::control::ControlCommand),
    /// Create or update what a declarative file describes (idempotent).
    Apply(crate::commands::ApplyArgs),
    /// Show APIs, deployments or tokens.
    Get(crate::commands::GetArgs),
    /// Delete an API (with its deployments) or a token.
    Delete(crate::commands::DeleteArgs),
    /// Freeze an API's current definition as a deployment and point a stage at it.
    Deploy(crate::commands::DeployArgs),
    /// The control plane's members and health.
    #[command(subcommand)]
    Cluster(crate::commands::ClusterCommand),
    /// Admin API tokens.
    #[command(subcommand)]
    Token(crate::commands::TokenCommand),
}

#[derive(Args, Debug)]
#[command(
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true,
    group = clap::ArgGroup::new("source").required(true).args(["config", "control"])
)]
pub struct EdgeArgs {
    #[command(subcommand)]
    pub action: Option<EdgeAction>,
    /// Serve the APIs of this declarative file (YAML or JSON), standalone.
    #[arg(long, short = 'c', conflicts_with_all = ["control", "join_token"])]
    pub config: Option<PathBuf>,
    /// How often to check the file for changes, in milliseconds; 0 turns watching off (SIGHUP
    /// still reloads).
    #[arg(long, default_value_t = 1000)]
    pub watch_interval_ms: u64,
    /// Take the config from these control nodes (QUIC, HOST:PORT, comma-separated; any
    /// member, followers included).
    #[arg(long, value_delimiter = ',')]
    pub control: Option<Vec<String>>,
    /// The edge's region: it receives edge-optimized APIs and the regional APIs of its region.
    #[arg(long, requires = "control")]
    pub region: Option<String>,
    /// A join token (`portico token create NAME --role edge`); needed only the first time,
    /// while the data directory holds no identity.
    #[arg(long, env = "PORTICO_JOIN_TOKEN", requires = "control")]
    pub join_token: Option<String>,
    /// Where the edge keeps its identity and last-known-good config.
    #[arg(long, default_value = "portico-edge")]
    pub data: PathBuf,
    #[command(flatten)]
    pub listen: ListenArgs,
}

#[derive(Subcommand, Debug)]
pub enum EdgeAction {
    /// Revoke an enrolled edge: control nodes refuse its connections from then on.
    Remove(crate::commands::EdgeRemoveArgs),
}

#[derive(Args, Debug)]
pub struct DevArgs {
    /// Where the dev node keeps its files (the control node's store and the admin token).
    #[arg(long, default_value = ".portico-dev")]
    pub data: PathBuf,
    /// Admin API address of the dev control node.
    #[arg(long, default_value = "127.0.0.1:7070")]
    pub admin_listen: SocketAddr,
    #[command(flatten)]
    pub listen: ListenArgs,
}

/// The edge's listeners, limits and timeouts.
#[derive(Args, Debug)]
pub struct ListenArgs {
    /// Public HTTP listener (HTTP/1.1 and h2c).
    #[arg(long, default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,
    /// Private HTTP listener (same protocols): the only one serving APIs with `endpoint:
    /// private`, and it serves nothing else. Off unless set.
    #[arg(long)]
    pub private_listen: Option<SocketAddr>,
    /// Ops listener: /metrics, /healthz, /readyz, /status.
    #[arg(long, default_value = "127.0.0.1:9090")]
    pub ops_listen: SocketAddr,
    /// Worker threads (one runtime and listener each); defaults to the number of CPUs.
    #[arg(long)]
    pub workers: Option<usize>,
    /// APIs answer at {api-id}.{suffix}.
    #[arg(long, default_value = "portico.localhost")]
    pub domain_suffix: String,
    /// Access log: stdout, off, or a file path (appended).
    #[arg(long, default_value = "stdout")]
    pub access_log: AccessLogTarget,
    #[arg(long, default_value_t = 10 * 1024 * 1024)]
    pub max_body_bytes: u64,
    #[arg(long, default_value_t = 16 * 1024)]
    pub max_header_bytes: usize,
    #[arg(long, default_value_t = 10_000)]
    pub header_read_timeout_ms: u64,
    #[arg(long, default_value_t = 60_000)]
    pub idle_timeout_ms: u64,
    #[arg(long, default_value_t = 10_000)]
    pub max_connections: usize,
    /// How long in-flight requests may run after SIGTERM before connections are cut.
    #[arg(long, default_value_t = 30_000)]
    pub drain_timeout_ms: u64,
    /// Extra CA certificates (PEM) trusted for HTTPS backends; repeatable.
    #[arg(long)]
    pub backend_ca: Vec<PathBuf>,
}

impl ListenArgs {
    pub fn settings(&self) -> EdgeSettings {
        use std::time::Duration;
        let defaults = EdgeSettings::default();
        EdgeSettings {
            listen: self.listen,
            private_listen: self.private_listen,
            ops_listen: self.ops_listen,
            workers: self.workers.unwrap_or(defaults.workers).max(1),
            domain_suffix: self.domain_suffix.trim_matches('.').to_ascii_lowercase(),
            access_log: self.access_log.clone(),
            max_body_bytes: self.max_body_bytes,
            max_header_bytes: self.max_header_bytes,
            header_read_timeout: Duration::from_millis(self.header_read_timeout_ms.max(1)),
            idle_timeout: Duration::from_millis(self.idle_timeout_ms.max(1)),
            max_connections: self.max_connections.max(1),
            drain_timeout: Duration::from_millis(self.drain_timeout_ms),
            backend_ca_files: self.backend_ca.clone(),
            ..defaults
        }
    }
}
