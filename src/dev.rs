//! `portico dev`: one command, no set-up, offline. Starts an edge with a demo API whose routes
//! answer from a mock integration and from a built-in echo backend, then prints where to call it.

use std::sync::Arc;

use anyhow::{Context, Result};
use portico_node::{ConfigStore, Metrics};
use portico_proto::{Format, parse_document};

use crate::cli::DevArgs;
use crate::edge::{Running, control_runtime, wait_for_shutdown};

const DEMO: &str = include_str!("../docs/examples/demo.yaml");

pub fn run(args: DevArgs) -> Result<()> {
    std::fs::create_dir_all(&args.data)
        .with_context(|| format!("cannot create the data directory {}", args.data.display()))?;
    let settings = Arc::new(args.listen.settings());
    let metrics = Arc::new(Metrics::default());
    let store = Arc::new(ConfigStore::new(metrics.clone()));

    control_runtime()?.block_on(async move {
        let echo = crate::echo::start()
            .await
            .context("cannot start the echo backend")?;
        let text = DEMO.replace("127.0.0.1:9999", &echo.to_string());
        let doc =
            parse_document(&text, Format::Yaml).map_err(|e| anyhow::anyhow!("demo API: {e}"))?;
        let copy = args.data.join("demo-api.yaml");
        std::fs::write(&copy, &text).with_context(|| format!("cannot write {}", copy.display()))?;
        store
            .apply(&doc, "portico dev demo API")
            .map_err(|e| anyhow::anyhow!("{e}"))?;

        let running = Running::start(settings.clone(), store, metrics).await?;
        let port = running.local_addr().port();
        let base = format!("http://demo.{}:{port}/dev", settings.domain_suffix);
        println!(
            "\nPortico dev is running: an edge serving the demo API.\n\n  \
             Try:      curl -i {base}/hello\n  \
             Echo:     curl -i {base}/echo/anything?q=1 -d 'hello'\n  \
             Metrics:  curl http://{}/metrics\n  \
             The demo API's definition: {} (serve your own with `portico edge --config FILE`)\n\n\
             Access log lines follow. Ctrl-C stops.\n",
            settings.ops_listen,
            copy.display()
        );
        wait_for_shutdown(None).await?;
        running.shutdown().await;
        Ok(())
    })
}
