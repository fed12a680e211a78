//! `portico control init|start`: a control node of the Raft-replicated config store.

use std::net::SocketAddr;
use std::path::PathBuf;

use std::time::Duration;

use anyhow::{Context, Result};
use bytes::Bytes;
use clap::Subcommand;
use http::Method;
use portico_control::admin;
use portico_control::run;

use crate::admin_client::AdminClient;
use crate::edge::{control_runtime, wait_for_shutdown};

#[derive(Subcommand, Debug)]
pub enum ControlCommand {
    /// Create a new cluster: its CA, this node (node 1) as its only voter, and the first admin
    /// token, which is printed once.
    Init {
        #[arg(long, default_value = "portico-control")]
        data: PathBuf,
        #[arg(long, default_value = "portico")]
        cluster_name: String,
        /// QUIC (UDP) address for Raft and edge sync.
        #[arg(long, default_value = "127.0.0.1:7443")]
        raft_listen: SocketAddr,
        /// Admin API address.
        #[arg(long, default_value = "127.0.0.1:7070")]
        admin_listen: SocketAddr,
        /// Serve the admin API over HTTPS with this node's certificate from the cluster CA
        /// (clients trust DIR/ca.pem: PORTICO_CA_CERT=DIR/ca.pem).
        #[arg(long)]
        admin_tls: bool,
    },
    /// Run an initialized control node until SIGTERM.
    Start {
        #[arg(long, default_value = "portico-control")]
        data: PathBuf,
        #[arg(long, default_value_t = portico_control::node::DEFAULT_SNAPSHOT_LOGS)]
        snapshot_logs: u64,
    },
    /// Join an existing cluster (as a learner, then a voter once caught up), then run until
    /// SIGTERM. Later restarts use `portico control start`.
    Join {
        #[arg(long, default_value = "portico-control")]
        data: PathBuf,
        /// The admin API of any member.
        #[arg(long)]
        seed: String,
        /// A token with the join role (`portico token create NAME --role join`).
        #[arg(long, env = "PORTICO_JOIN_TOKEN")]
        join_token: String,
        /// This node's QUIC address, as the other members reach it (a fixed port).
        #[arg(long)]
        raft_listen: SocketAddr,
        #[arg(long)]
        admin_listen: SocketAddr,
        /// Take a snapshot (and compact the log) every this many entries.
        #[arg(long, default_value_t = portico_control::node::DEFAULT_SNAPSHOT_LOGS)]
        snapshot_logs: u64,
        /// Serve the admin API over HTTPS (see `init --admin-tls`).
        #[arg(long)]
        admin_tls: bool,
        /// Stay a learner: replicate everything but never vote.
        #[arg(long)]
        learner: bool,
    },
    /// Remove this node from its cluster (uses PORTICO_TOKEN, an admin token); stop its process
    /// afterwards.
    Leave {
        #[arg(long, default_value = "portico-control")]
        data: PathBuf,
        /// The admin API of any member; this node's own by default.
        #[arg(long)]
        server: Option<String>,
    },
}

pub fn run(command: ControlCommand) -> Result<()> {
    match command {
        ControlCommand::Init {
            data,
            cluster_name,
            raft_listen,
            admin_listen,
            admin_tls,
        } => control_runtime()?.block_on(async move {
            let config = run::init(&data, &cluster_name, raft_listen, admin_listen, admin_tls)?;
            let running = run::start(config).await?;
            let token = run::bootstrap_single(&running.node).await?;
            running.shutdown().await;
            println!("Initialized cluster {cluster_name:?} in {}.", data.display());
            if let Some(token) = token {
                println!("\nAdmin token (shown only now; store it, e.g. export PORTICO_TOKEN=...):\n\n  {token}\n");
            }
            println!("Start the node with: portico control start --data {}", data.display());
            Ok(())
        }),
        ControlCommand::Join {
            data,
            seed,
            join_token,
            raft_listen,
            admin_listen,
            snapshot_logs,
            admin_tls,
            learner,
        } => control_runtime()?.block_on(async move {
            if raft_listen.port() == 0 || admin_listen.port() == 0 {
                anyhow::bail!("a joining node needs fixed ports: the members record its addresses");
            }
            let client = AdminClient::with_token(&seed, &join_token)?;
            let admin_addr = if admin_tls { format!("https://{admin_listen}") } else { admin_listen.to_string() };
            let body = serde_json::json!({"raft_addr": raft_listen.to_string(), "admin_addr": admin_addr});
            let grant = client
                .ok(Method::POST, "/v1/cluster/join", "application/json", Bytes::from(body.to_string()))
                .await
                .context("the cluster refused to admit this node")?;
            let grant: admin::JoinGrant = serde_json::from_value(grant).context("the join answer is malformed")?;
            let mut config = run::write_joined(&data, &grant, raft_listen, admin_listen, admin_tls)?;
            config.snapshot_logs = snapshot_logs;
            let running = run::start(config).await?;
            // Vote only once caught up, so that adding this node never stalls commits.
            let caught_up = tokio::time::timeout(Duration::from_secs(60), running.node.state.wait_applied(grant.revision)).await;
            if !matches!(caught_up, Ok(Ok(_))) {
                anyhow::bail!("this node did not catch up with the cluster within 60 s; it stays a learner");
            }
            if learner {
                println!("Joined cluster {:?} as node {} (learner).", grant.cluster_name, grant.node_id);
            } else {
                let path = format!("/v1/cluster/members/{}/promote", grant.node_id);
                client
                    .ok(Method::POST, &path, "application/json", Bytes::new())
                    .await
                    .context("promoting this node to voter failed; it stays a learner")?;
                println!("Joined cluster {:?} as node {}.", grant.cluster_name, grant.node_id);
            }
            run_until_stopped(running).await
        }),
        ControlCommand::Leave { data, server } => control_runtime()?.block_on(async move {
            let config = run::load_config(&data)?;
            let server = server.unwrap_or_else(|| config.member().admin_addr);
            let token = std::env::var("PORTICO_TOKEN").context("set PORTICO_TOKEN to an admin token")?;
            let client = AdminClient::with_token(&server, &token)?;
            let path = format!("/v1/cluster/members/{}", config.id);
            client.ok(Method::DELETE, &path, "application/json", Bytes::new()).await?;
            println!("Node {} left the cluster; stop its process now.", config.id);
            Ok(())
        }),
        ControlCommand::Start { data, snapshot_logs } => control_runtime()?.block_on(async move {
            let mut config = run::load_config(&data)?;
            config.snapshot_logs = snapshot_logs;
            let running = run::start(config)
                .await
                .with_context(|| format!("cannot start the control node in {}", data.display()))?;
            run_until_stopped(running).await
        }),
    }
}

/// Serves until SIGTERM or SIGINT, or until Raft stops on this node by itself; then the
/// process exits with an error, for its supervisor to restart it.
async fn run_until_stopped(running: run::Running) -> Result<()> {
    let raft_stopped = wait_for_shutdown_or_raft_stop(&running).await?;
    running.shutdown().await;
    match raft_stopped {
        Some(reason) => anyhow::bail!(
            "Raft stopped on this node: {reason}; restart it once the cause is fixed (its log is replayed from disk)"
        ),
        None => Ok(()),
    }
}

/// Waits for SIGTERM or SIGINT (`None`), or for Raft to stop on this control node by itself
/// (`Some(reason)`).
pub async fn wait_for_shutdown_or_raft_stop(control: &run::Running) -> Result<Option<String>> {
    tokio::select! {
        signalled = wait_for_shutdown(None) => signalled.map(|()| None),
        reason = control.raft_stopped() => Ok(Some(reason)),
    }
}
