//! `portico dev`: one command, no set-up, offline. A control node (single voter, data in a local
//! directory) and an edge in one process, with a demo API whose routes answer from a mock
//! integration and from a built-in echo backend; then it prints where to call it.
//!
//! The edge reads the control node's applied state in-process (the QUIC distribution to remote
//! edges is the next step); either way it compiles and swaps in each new revision atomically.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, Result};
use portico_control::admin::Backend;
use portico_control::state::{Applied, Command};
use portico_control::{node::ControlNode, run};
use portico_node::{ConfigStore, Metrics};
use portico_proto::{Format, parse_document};

use crate::admin_client::DEV_TOKEN_FILE;
use crate::cli::DevArgs;
use crate::edge::{Running, control_runtime, wait_for_shutdown};

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

        tokio::spawn(feed_edge(control.node.clone(), edge_config.clone()));
        wait_until_loaded(&edge_config).await?;
        let running = Running::start(settings.clone(), edge_config, metrics, None).await?;
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
        wait_for_shutdown(None).await?;
        running.shutdown().await;
        control.shutdown().await;
        Ok(())
    })
}

/// Compiles every applied revision of the control node's state into the edge's config.
async fn feed_edge(node: Arc<ControlNode>, edge: Arc<ConfigStore>) {
    let mut applied = node.state.watch();
    loop {
        let revision = *applied.borrow_and_update();
        let document = node.state.load().to_document();
        if let Err(e) = edge.apply_at(&document, revision, "control plane") {
            tracing::error!(revision, error = %e, "the edge rejected a revision; it keeps serving the previous one");
        }
        if applied.changed().await.is_err() {
            return;
        }
    }
}

async fn wait_until_loaded(edge: &ConfigStore) -> Result<()> {
    for _ in 0..200 {
        if edge.is_loaded() {
            return Ok(());
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    anyhow::bail!("the edge received no config from the control node within 2 s")
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
