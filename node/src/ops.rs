//! The ops listener: `/metrics` (Prometheus), `/healthz`, `/readyz`, `/status`.
//!
//! Bound to loopback by default; it shows config sources and errors, so keep it private.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

use crate::metrics::{Listeners, Metrics};
use crate::store::{ConfigStore, LoadStatus};

#[derive(Clone)]
pub struct Ops {
    pub config: Arc<ConfigStore>,
    pub metrics: Arc<Metrics>,
    /// Cleared when the edge starts draining, so load balancers stop sending traffic.
    pub accepting: Arc<AtomicBool>,
    /// Config sync with the control plane, when the edge has one.
    pub sync: Option<Arc<crate::sync::SyncStatus>>,
}

pub async fn serve(listener: TcpListener, ops: Ops) {
    loop {
        let (tcp, _) = match listener.accept().await {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "ops accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let ops = ops.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let ops = ops.clone();
                async move {
                    if let Some(revision) = wait_revision(&req) {
                        // Long poll: answer once this revision serves, or after a bound.
                        let mut serving = ops.config.subscribe();
                        let _ =
                            tokio::time::timeout(MAX_WAIT, serving.wait_for(|r| *r >= revision))
                                .await;
                    }
                    Ok::<_, Infallible>(answer(&ops, &req))
                }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(10))
                .serve_connection(TokioIo::new(tcp), service);
            let _ = conn.await;
        });
    }
}

/// The longest `/status?wait_revision=R` waits before answering with what serves.
const MAX_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// `R` of `/status?wait_revision=R`.
fn wait_revision(req: &Request<Incoming>) -> Option<u64> {
    req.uri()
        .query()?
        .split('&')
        .find_map(|pair| pair.strip_prefix("wait_revision="))?
        .parse()
        .ok()
}

/// `/status`: the config's load status and where the data plane listens.
#[derive(serde::Serialize)]
struct Status {
    #[serde(flatten)]
    config: LoadStatus,
    listeners: Option<Listeners>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sync: Option<crate::sync::SyncReport>,
}

fn answer(ops: &Ops, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n");
    }
    match req.uri().path() {
        "/metrics" => {
            let mut body = ops.metrics.render();
            if let Some(sync) = &ops.sync {
                sync.render(ops.config.current().revision, &mut body);
            }
            let mut r = text(StatusCode::OK, body);
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            r
        }
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" => {
            if !ops.config.is_loaded() {
                text(StatusCode::SERVICE_UNAVAILABLE, "no config loaded yet\n")
            } else if !ops.accepting.load(Relaxed) {
                text(StatusCode::SERVICE_UNAVAILABLE, "draining\n")
            } else {
                text(StatusCode::OK, "ready\n")
            }
        }
        "/status" => {
            let body = serde_json::to_string_pretty(&Status {
                config: ops.config.status(),
                listeners: ops.metrics.listeners(),
                sync: ops
                    .sync
                    .as_ref()
                    .map(|s| s.report(ops.config.current().revision)),
            })
            .unwrap_or_default();
            let mut r = text(StatusCode::OK, body);
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("application/json"),
            );
            r
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: try /metrics, /healthz, /readyz or /status\n",
        ),
    }
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r
}
