//! `portico edge --control ...`: an edge that takes its config from the control plane.
//!
//! Start-up order is what makes it statically stable: the last-known-good config (if any) is
//! compiled and the listeners serve it before any control node is contacted; enrolment (first
//! start only) and sync follow, and a control plane that never answers changes nothing.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use portico_node::sync::{EdgeIdentity, IdentityError, SyncClient};
use portico_node::{ConfigStore, Metrics};
use portico_proto::sync::JoinToken;

use crate::cli::EdgeArgs;
use crate::edge::{Running, control_runtime, wait_for_shutdown};

const LKG_FILE: &str = "last-known-good.bin";

pub fn run(args: EdgeArgs) -> Result<()> {
    let settings = Arc::new(args.listen.settings());
    let metrics = Arc::new(Metrics::default());
    let store = Arc::new(ConfigStore::new(metrics.clone()));
    let controls_arg = args.control.clone().unwrap_or_default();
    let identity_dir = args.data.join("identity");
    std::fs::create_dir_all(&args.data)
        .with_context(|| format!("cannot create the data directory {}", args.data.display()))?;

    control_runtime()?.block_on(async move {
        let controls = resolve(&controls_arg).await?;
        // One client endpoint for enrolment and sync; its socket's port is ephemeral.
        let bind: SocketAddr = if controls.iter().all(|a| a.is_ipv4()) {
            "0.0.0.0:0".parse()?
        } else {
            "[::]:0".parse()?
        };
        let endpoint =
            quinn::Endpoint::client(bind).context("cannot open a UDP socket for QUIC")?;

        let identity = match EdgeIdentity::load(&identity_dir)? {
            Some(identity) => {
                if let Some(region) = &args.region
                    && *region != identity.region
                {
                    bail!(
                        "this edge is enrolled as {} in region {}, not {region}; use another --data directory to enrol a new edge",
                        identity.edge_id,
                        identity.region
                    );
                }
                identity
            }
            None => enrol(&args, &endpoint, &controls, &identity_dir).await?,
        };
        let (mut client, status) = SyncClient::for_identity(
            endpoint.clone(),
            &identity,
            controls,
            settings.private_listen.is_some(),
            store.clone(),
            Some(args.data.join(LKG_FILE)),
        )?;
        match client.boot_from_lkg() {
            Ok(Some(revision)) => tracing::info!(revision, "serving the last-known-good config until a control node answers"),
            Ok(None) => tracing::info!("no last-known-good config yet: waiting for a control node"),
            Err(e) => tracing::error!(error = %e, "the last-known-good config cannot be used; waiting for a control node instead"),
        }
        let running = Running::start(settings, store, metrics, Some(status)).await?;
        tracing::info!(edge = %identity.edge_id, region = %identity.region, "edge started");
        let sync = tokio::spawn(client.run());
        wait_for_shutdown(None).await?;
        sync.abort();
        running.shutdown().await;
        endpoint.close(0u32.into(), b"edge stopping");
        Ok(())
    })
}

async fn resolve(controls: &[String]) -> Result<Vec<SocketAddr>> {
    let mut out = Vec::new();
    for control in controls.iter().map(|c| c.trim()).filter(|c| !c.is_empty()) {
        let with_port = if control.parse::<SocketAddr>().is_ok()
            || control
                .rsplit_once(':')
                .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
        {
            control.to_string()
        } else {
            format!("{control}:7443")
        };
        let addrs = tokio::net::lookup_host(&with_port)
            .await
            .with_context(|| format!("cannot resolve the control node {control}"))?;
        out.extend(addrs.take(1));
    }
    if out.is_empty() {
        bail!("--control names no control node");
    }
    Ok(out)
}

async fn enrol(
    args: &EdgeArgs,
    endpoint: &quinn::Endpoint,
    controls: &[SocketAddr],
    dir: &Path,
) -> Result<EdgeIdentity> {
    let (Some(token), Some(region)) = (&args.join_token, &args.region) else {
        bail!(
            "{} holds no edge identity: enrol with --region REGION --join-token TOKEN (from `portico token create NAME --role edge`)",
            args.data.display()
        );
    };
    let join = JoinToken::parse(token)?;
    if !portico_proto::validate::is_region(region) {
        bail!(
            "--region {region:?} must be 1 to 63 of a-z, 0-9 and '-', not starting or ending with '-'"
        );
    }
    // A cluster that is down or busy (the leader admits a bounded number of enrolling edges
    // at once) is waited for; a refusal (bad token, version skew) is final.
    let mut backoff = Duration::from_millis(250);
    let identity = loop {
        match EdgeIdentity::enrol(endpoint, controls, &join, region, dir).await {
            Ok(identity) => break identity,
            Err(e @ IdentityError::Unreachable(_)) => {
                let wait = backoff.mul_f64(0.5 + fastrand::f64() / 2.0);
                tracing::warn!(error = %e, retry_in_ms = wait.as_millis() as u64, "enrolment did not get through; retrying");
                tokio::time::sleep(wait).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
            Err(e) => return Err(e).context("enrolment failed"),
        }
    };
    println!(
        "Enrolled as edge {} in region {} of cluster {}.",
        identity.edge_id, identity.region, identity.cluster_name
    );
    Ok(identity)
}
