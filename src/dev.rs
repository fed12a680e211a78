//! `portico dev`: one command, no set-up, offline. A control node (single voter, data in a local
//! directory) and an edge in one process, with a demo API whose routes answer from a mock
//! integration and from a built-in echo backend; then it prints where to call it.
//!
//! The edge takes its config the way every edge does: enrolled with a join token, over QUIC
//! with mutual TLS from the control node (in the same process), with a last-known-good copy in
//! the data directory.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, Result};
use std::path::Path;

use portico_control::admin::Backend;
use portico_control::run;
use portico_control::state::{Applied, Command};
use portico_control::sync::enrol::mint_join_token;
use portico_node::sync::{EdgeIdentity, SyncClient, SyncStatus};
use portico_node::{ConfigStore, EdgeSettings, Metrics};
use portico_proto::sync::JoinToken;
use portico_proto::{Format, parse_document};

use crate::admin_client::DEV_TOKEN_FILE;
use crate::cli::DevArgs;
use crate::control::wait_for_shutdown_or_raft_stop;
use crate::edge::{Running, control_runtime};

const DEMO: &str = include_str!("../docs/examples/demo.yaml");

pub fn run(args: DevArgs) -> Result<()> {
    std::fs::create_dir_all(&args.data)
        .with_context(|| format!("cannot create the data directory {}", args.data.display()))?;
    let settings = Arc::new(args.listen.settings());
    let metrics = Arc::new(Metrics::default());
    let edge_config = Arc::new(ConfigStore::new(metrics.clone()));

    control_runtime()?.block_on(async move {
        let control_dir = args.data.join("control");
        let config = if run::is_initialized(&control_dir) {
            let mut config = run::load_config(&control_dir)?;
            config.admin_addr = args.admin_listen;
            config
        } else {
            let raft: SocketAddr = "127.0.0.1:0".parse()?;
            run::init(&control_dir, "portico-dev", raft, args.admin_listen, false)?
        };
        let control = run::start(config).await?;
        let token_path = args.data.join(DEV_TOKEN_FILE);
        if let Some(token) = run::bootstrap_single(&control.node).await? {
            write_token(&token_path, &token)?;
        }

        // The demo API, pointed at this run's echo backend (its port changes every run).
        let echo = crate::echo::start()
            .await
            .context("cannot start the echo backend")?;
        let text = DEMO.replace("127.0.0.1:9999", &echo.to_string());
        let document =
            parse_document(&text, Format::Yaml).map_err(|e| anyhow::anyhow!("demo API: {e}"))?;
        match control
            .node
            .propose(Command::ApplyDocument { document })
            .await
        {
            Ok(Applied::Done { .. }) => {}
            Ok(Applied::Rejected { rejection, .. }) => {
                anyhow::bail!("demo API rejected: {rejection}")
            }
            Err(e) => anyhow::bail!("demo API not applied: {e}"),
        }

        let edge = start_edge(&args.data, &control, &settings, edge_config.clone()).await?;
        wait_until_loaded(&edge_config).await?;
        let running =
            Running::start(settings.clone(), edge_config, metrics, Some(edge.status)).await?;
        let port = running.local_addr().port();
        let base = format!("http://demo.{}:{port}/dev", settings.domain_suffix);
        println!(
            "\nPortico dev is running: a control node and an edge, serving the demo API.\n\n  \
             Try:      curl -i {base}/hello\n  \
             Echo:     curl -i {base}/echo/anything?q=1 -d 'hello'\n  \
             Admin:    http://{} (token in {}; the CLI finds it there: portico get apis)\n  \
             Metrics:  curl http://{}/metrics\n\n\
             Change the API with `portico apply -f FILE`; the edge follows within milliseconds.\n\
             Access log lines follow. Ctrl-C stops.\n",
            control.admin_addr,
            token_path.display(),
            settings.ops_listen,
        );
        let raft_stopped = wait_for_shutdown_or_raft_stop(&control).await?;
        running.shutdown().await;
        control.shutdown().await;
        match raft_stopped {
            Some(reason) => anyhow::bail!("Raft stopped in the control node: {reason}"),
            None => Ok(()),
        }
    })
}

struct DevEdge {
    status: Arc<SyncStatus>,
}

/// Enrols the dev edge on first run (its identity stays in DATA/edge) and starts its sync with
/// the control node.
async fn start_edge(
    data: &Path,
    control: &run::Running,
    settings: &EdgeSettings,
    store: Arc<ConfigStore>,
) -> Result<DevEdge> {
    let dir = data.join("edge");
    let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse()?)
        .context("cannot open a UDP socket for QUIC")?;
    let controls = vec![control.raft_addr];
    let identity = match EdgeIdentity::load(&dir.join("identity"))? {
        Some(identity) => identity,
        None => {
            let join = mint_join_token(&control.node, "portico dev edge")
                .await
                .map_err(|e| anyhow::anyhow!("cannot mint the dev edge's join token: {e}"))?;
            let join = JoinToken::parse(&join)?;
            EdgeIdentity::enrol(&endpoint, &controls, &join, "dev", &dir.join("identity"))
                .await
                .context("the dev edge could not enrol")?
        }
    };
    let (mut client, status) = SyncClient::for_identity(
        endpoint,
        &identity,
        controls,
        settings.private_listen.is_some(),
        store,
        Some(dir.join("last-known-good.bin")),
    )?;
    if let Err(e) = client.boot_from_lkg() {
        tracing::warn!(error = %e, "ignoring the dev edge's last-known-good config");
    }
    tokio::spawn(client.run());
    Ok(DevEdge { status })
}

async fn wait_until_loaded(edge: &ConfigStore) -> Result<()> {
    let mut serving = edge.subscribe();
    let loaded = serving.wait_for(|revision| *revision > 0);
    match tokio::time::timeout(std::time::Duration::from_secs(5), loaded).await {
        Ok(Ok(_)) => Ok(()),
        _ => anyhow::bail!("the edge received no config from the control node within 5 s"),
    }
}

fn write_token(path: &std::path::Path, token: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    f.write_all(token.as_bytes())?;
    Ok(())
}
