//! Prometheus metrics of the edge.
//!
//! Hand-written rather than the `metrics` facade: every per-request update is a relaxed atomic
//! add on a handle the compiled stage already holds (no label hashing, no allocation, no upkeep
//! task), and the text format is a few lines to render.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Upper bounds of the latency buckets, in microseconds.
const BUCKETS_US: [u64; 16] = [
    250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000,
    2_500_000, 5_000_000, 10_000_000, 30_000_000,
];

#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [AtomicU64; BUCKETS_US.len()],
    sum_us: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    pub fn record(&self, d: Duration) {
        let us = d.as_micros().min(u64::MAX as u128) as u64;
        if let Some(i) = BUCKETS_US.iter().position(|b| us <= *b) {
            self.buckets[i].fetch_add(1, Relaxed);
        }
        self.sum_us.fetch_add(us, Relaxed);
        self.count.fetch_add(1, Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0;
        for (i, bound) in BUCKETS_US.iter().enumerate() {
            cumulative += self.buckets[i].load(Relaxed);
            let le = *bound as f64 / 1e6;
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{le}\"}} {cumulative}");
        }
        let count = self.count.load(Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {count}");
        let sum = self.sum_us.load(Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum{{{labels}}} {sum}");
        let _ = writeln!(out, "{name}_count{{{labels}}} {count}");
    }
}

/// Counters of one API stage; kept across config reloads so counters never go backwards.
#[derive(Debug, Default)]
pub struct StageMetrics {
    pub requests: AtomicU64,
    pub client_errors: AtomicU64,
    pub server_errors: AtomicU64,
    pub latency: Histogram,
    pub integration_latency: Histogram,
}

impl StageMetrics {
    pub fn observe(&self, status: u16, latency: Duration, integration: Option<Duration>) {
        self.requests.fetch_add(1, Relaxed);
        match status {
            400..=499 => self.client_errors.fetch_add(1, Relaxed),
            500..=599 => self.server_errors.fetch_add(1, Relaxed),
            _ => 0,
        };
        self.latency.record(latency);
        if let Some(d) = integration {
            self.integration_latency.record(d);
        }
    }
}

#[derive(Debug, Default)]
pub struct Metrics {
    stages: Mutex<BTreeMap<(String, String), Arc<StageMetrics>>>,
    /// Requests that matched no API or stage.
    pub unmatched: Arc<StageMetrics>,
    pub reloads_ok: AtomicU64,
    pub reloads_failed: AtomicU64,
    pub config_revision: AtomicU64,
    pub connections_open: AtomicI64,
    pub connections_total: AtomicU64,
    /// Where the edge listens, once bound: `portico_listener_info` and `/status` show it.
    listeners: Mutex<Option<Listeners>>,
}

/// The data-plane listeners' bound addresses (port 0 resolved).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Listeners {
    pub public: SocketAddr,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub private: Option<SocketAddr>,
}

impl Metrics {
    /// The handle for an API stage, created on first use.
    pub fn stage(&self, api: &str, stage: &str) -> Arc<StageMetrics> {
        let mut stages = self.stages.lock().unwrap_or_else(|p| p.into_inner());
        stages
            .entry((api.to_string(), stage.to_string()))
            .or_default()
            .clone()
    }

    /// Called by [`crate::server::start`] once the listeners are bound.
    pub fn set_listeners(&self, public: SocketAddr, private: Option<SocketAddr>) {
        *self.listeners.lock().unwrap_or_else(|p| p.into_inner()) =
            Some(Listeners { public, private });
    }

    /// `None` until the data plane is listening.
    pub fn listeners(&self) -> Option<Listeners> {
        *self.listeners.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        let stages: Vec<_> = {
            let stages = self.stages.lock().unwrap_or_else(|p| p.into_inner());
            stages.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
        };
        let all = stages
            .iter()
            .map(|((a, s), m)| (labels(a, s), m.as_ref()))
            .chain(std::iter::once((labels("", ""), self.unmatched.as_ref())))
            .collect::<Vec<_>>();

        type Counter = fn(&StageMetrics) -> &AtomicU64;
        let counters: [(&str, &str, Counter); 3] = [
            (
                "portico_requests_total",
                "Requests received, by API and stage.",
                |m| &m.requests,
            ),
            (
                "portico_responses_4xx_total",
                "Responses with a 4xx status.",
                |m| &m.client_errors,
            ),
            (
                "portico_responses_5xx_total",
                "Responses with a 5xx status.",
                |m| &m.server_errors,
            ),
        ];
        for (name, help, get) in counters {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for (l, m) in &all {
                let _ = writeln!(out, "{name}{{{l}}} {}", get(m).load(Relaxed));
            }
        }
        type Hist = fn(&StageMetrics) -> &Histogram;
        let histograms: [(&str, &str, Hist); 2] = [
            (
                "portico_request_duration_seconds",
                "Time from request to the end of the response.",
                |m| &m.latency,
            ),
            (
                "portico_integration_duration_seconds",
                "Time the backend took to answer with headers.",
                |m| &m.integration_latency,
            ),
        ];
        for (name, help, get) in histograms {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
            for (l, m) in &all {
                get(m).render(&mut out, name, l);
            }
        }
        let gauges = [
            (
                "portico_config_reloads_total{result=\"ok\"}",
                self.reloads_ok.load(Relaxed) as i64,
            ),
            (
                "portico_config_reloads_total{result=\"error\"}",
                self.reloads_failed.load(Relaxed) as i64,
            ),
            (
                "portico_config_revision",
                self.config_revision.load(Relaxed) as i64,
            ),
            (
                "portico_connections_open",
                self.connections_open.load(Relaxed),
            ),
            (
                "portico_connections_total",
                self.connections_total.load(Relaxed) as i64,
            ),
        ];
        let _ = writeln!(
            out,
            "# TYPE portico_config_reloads_total counter\n# TYPE portico_config_revision gauge\n# TYPE portico_connections_open gauge\n# TYPE portico_connections_total counter"
        );
        for (name, v) in gauges {
            let _ = writeln!(out, "{name} {v}");
        }
        if let Some(l) = self.listeners() {
            let _ = writeln!(
                out,
                "# HELP portico_listener_info The data-plane listeners and their addresses.\n# TYPE portico_listener_info gauge\nportico_listener_info{{listener=\"public\",address=\"{}\"}} 1",
                l.public
            );
            if let Some(private) = l.private {
                let _ = writeln!(
                    out,
                    "portico_listener_info{{listener=\"private\",address=\"{private}\"}} 1"
                );
            }
        }
        out
    }
}

fn labels(api: &str, stage: &str) -> String {
    format!("api=\"{}\",stage=\"{}\"", escape(api), escape(stage))
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listener_info_appears_once_bound() {
        let m = Metrics::default();
        assert!(!m.render().contains("portico_listener_info"));
        let public = SocketAddr::from(([0, 0, 0, 0], 8080));
        m.set_listeners(public, None);
        let text = m.render();
        assert!(
            text.contains("portico_listener_info{listener=\"public\",address=\"0.0.0.0:8080\"} 1")
        );
        assert!(!text.contains("listener=\"private\""), "{text}");
        m.set_listeners(public, Some(SocketAddr::from(([10, 0, 0, 5], 8081))));
        assert!(
            m.render().contains(
                "portico_listener_info{listener=\"private\",address=\"10.0.0.5:8081\"} 1"
            )
        );
    }

    #[test]
    fn renders_cumulative_buckets_and_survives_lookups() {
        let m = Metrics::default();
        let s = m.stage("a", "prod");
        s.observe(
            200,
            Duration::from_micros(300),
            Some(Duration::from_micros(100)),
        );
        s.observe(503, Duration::from_millis(20), None);
        assert!(Arc::ptr_eq(&s, &m.stage("a", "prod")));
        let text = m.render();
        assert!(
            text.contains("portico_requests_total{api=\"a\",stage=\"prod\"} 2"),
            "{text}"
        );
        assert!(text.contains("portico_responses_5xx_total{api=\"a\",stage=\"prod\"} 1"));
        assert!(text.contains(
            "portico_request_duration_seconds_bucket{api=\"a\",stage=\"prod\",le=\"0.0005\"} 1"
        ));
        assert!(text.contains(
            "portico_request_duration_seconds_bucket{api=\"a\",stage=\"prod\",le=\"0.025\"} 2"
        ));
        assert!(
            text.contains("portico_integration_duration_seconds_count{api=\"a\",stage=\"prod\"} 1")
        );
    }
}
