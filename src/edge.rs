//! `portico edge`: a standalone edge serving a declarative file, and the process plumbing
//! (runtime, ops listener, signals, drain) that `portico dev` shares.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::Duration;

use anyhow::{Context, Result};
use portico_node::{AccessLog, ConfigStore, EdgeServer, EdgeSettings, Metrics, ops, store};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;

use crate::cli::EdgeArgs;

pub fn run(args: EdgeArgs) -> Result<()> {
    match (&args.config, &args.control) {
        (Some(config), _) => run_file(config.clone(), args),
        (None, Some(_)) => crate::synced_edge::run(args),
        (None, None) => anyhow::bail!("give the edge --config FILE or --control HOST:PORT"),
    }
}

fn run_file(config: std::path::PathBuf, args: EdgeArgs) -> Result<()> {
    let settings = Arc::new(args.listen.settings());
    let metrics = Arc::new(Metrics::default());
    let store = Arc::new(ConfigStore::new(metrics.clone()));
    // A file that is wrong at start-up is fatal: there is no older config to fall back on.
    store
        .load_file(&config)
        .map_err(|e| anyhow::anyhow!("{e}"))
        .context("the config file was rejected")?;

    control_runtime()?.block_on(async move {
        let (reload_tx, reload_rx) = mpsc::channel(1);
        let interval =
            (args.watch_interval_ms > 0).then(|| Duration::from_millis(args.watch_interval_ms));
        tokio::spawn(store::watch_file(
            store.clone(),
            config,
            interval,
            reload_rx,
        ));
        let running = Running::start(settings, store, metrics, None).await?;
        wait_for_shutdown(Some(reload_tx)).await?;
        running.shutdown().await;
        Ok(())
    })
}

/// Control work (signals, file watching, the ops listener) runs on a small runtime of its own,
/// apart from the edge workers.
pub fn control_runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("portico-control")
        .enable_all()
        .build()
        .context("cannot start the control runtime")
}

/// An edge data plane with its ops listener.
pub struct Running {
    server: EdgeServer,
    accepting: Arc<AtomicBool>,
    pub settings: Arc<EdgeSettings>,
}

impl Running {
    pub async fn start(
        settings: Arc<EdgeSettings>,
        config: Arc<ConfigStore>,
        metrics: Arc<Metrics>,
        sync: Option<Arc<portico_node::sync::SyncStatus>>,
    ) -> Result<Running> {
        let access_log =
            AccessLog::open(&settings.access_log).context("cannot open the access log")?;
        let ops_listener = tokio::net::TcpListener::bind(settings.ops_listen)
            .await
            .with_context(|| format!("cannot listen on {} (ops)", settings.ops_listen))?;
        let ops_addr = ops_listener.local_addr()?;
        let server = portico_node::start(
            settings.clone(),
            config.clone(),
            metrics.clone(),
            access_log,
        )
        .with_context(|| format!("cannot listen on {}", settings.listen))?;
        let accepting = Arc::new(AtomicBool::new(true));
        tokio::spawn(ops::serve(
            ops_listener,
            ops::Ops {
                config: config.clone(),
                metrics,
                accepting: accepting.clone(),
                sync,
            },
        ));
        tracing::info!(
            listen = %server.local_addr(),
            ops = %ops_addr,
            workers = settings.workers,
            revision = config.current().revision,
            "edge serving"
        );
        Ok(Running {
            server,
            accepting,
            settings,
        })
    }

    pub fn local_addr(&self) -> std::net::SocketAddr {
        self.server.local_addr()
    }

    /// Stops accepting and waits for in-flight requests (bounded by the drain timeout).
    pub async fn shutdown(self) {
        self.accepting.store(false, Relaxed);
        tracing::info!(
            drain_timeout_ms = self.settings.drain_timeout.as_millis() as u64,
            "draining"
        );
        let server = self.server;
        let _ = tokio::task::spawn_blocking(move || server.shutdown()).await;
        tracing::info!("stopped");
    }
}

/// Returns on SIGTERM or SIGINT; forwards SIGHUP to `reload`.
pub async fn wait_for_shutdown(reload: Option<mpsc::Sender<()>>) -> Result<()> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    loop {
        tokio::select! {
            _ = term.recv() => return Ok(()),
            _ = int.recv() => return Ok(()),
            _ = hup.recv() => match &reload {
                Some(tx) => {
                    tracing::info!("SIGHUP: reloading config");
                    let _ = tx.try_send(());
                }
                None => tracing::info!("SIGHUP ignored: nothing to reload"),
            },
        }
    }
}
