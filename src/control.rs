//! `portico control init|start`: a control node of the Raft-replicated config store.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Subcommand;
use portico_control::run;

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
    },
    /// Run an initialized control node until SIGTERM.
    Start {
        #[arg(long, default_value = "portico-control")]
        data: PathBuf,
    },
}

pub fn run(command: ControlCommand) -> Result<()> {
    match command {
        ControlCommand::Init {
            data,
            cluster_name,
            raft_listen,
            admin_listen,
        } => control_runtime()?.block_on(async move {
            let config = run::init(&data, &cluster_name, raft_listen, admin_listen)?;
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
        ControlCommand::Start { data } => control_runtime()?.block_on(async move {
            let config = run::load_config(&data)?;
            let running = run::start(config)
                .await
                .with_context(|| format!("cannot start the control node in {}", data.display()))?;
            wait_for_shutdown(None).await?;
            running.shutdown().await;
            Ok(())
        }),
    }
}
