//! The access log (one JSON line per request on stdout) and the Prometheus metrics.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use common::{Backend, Edge, Resp, config, free_port, metric_value, request, runtime, send};
use serde_json::Value;

const API: &str = r#"
apis:
  - id: logs
    kind: http
    routes:
      - key: ANY /echo/{proxy+}
        integration:
          type: http_proxy
          uri: http://${stageVariables.b}/{proxy}
      - key: GET /mock
        integration:
          type: mock
          status: 201
          body: created
      - key: GET /slow
        integration:
          type: http_proxy
          uri: http://${stageVariables.b}/slow?ms=150
      - key: GET /down
        integration:
          type: http_proxy
          uri: http://127.0.0.1:{DOWN}/
    stages:
      - name: prod
        variables:
          b: "{B}"
"#;

/// Milliseconds since the epoch of `2026-11-22T04:48:24.142Z`.
fn rfc3339_to_epoch_ms(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() != 24 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[23] != b'Z' {
        return None;
    }
    let n = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (y, m, d) = (n(0..4)?, n(5..7)?, n(8..10)?);
    let (hh, mm, ss, ms) = (n(11..13)?, n(14..16)?, n(17..19)?, n(20..23)?);
    // Days from civil (Howard Hinnant).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(((days * 86_400 + hh * 3600 + mm * 60 + ss) * 1000) + ms)
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

#[test]
fn access_log_lines_and_metrics_describe_each_request() {
    let backend = Backend::start();
    let text = config(API, backend.addr).replace("{DOWN}", &free_port().to_string());
    let edge = Edge::start(&text);
    let series = |name: &str| format!("{name}{{api=\"logs\",stage=\"prod\"}}");

    // Before any request: the stage's series exist, at zero.
    let before = edge.metrics();
    assert_eq!(
        metric_value(&before, &series("portico_requests_total")),
        Some(0.0),
        "{before}"
    );
    let unmatched_before =
        metric_value(&before, "portico_requests_total{api=\"\",stage=\"\"}").unwrap_or(0.0);

    let started_ms = now_ms();
    let rt = runtime();
    // (id, method, api, path, body)
    let calls: &[(&str, &str, &str, &str, &str)] = &[
        ("log-1", "GET", "logs", "/prod/echo/one?x=1", ""),
        ("log-2", "POST", "logs", "/prod/echo/two", "12345"),
        ("log-3", "GET", "logs", "/prod/mock", ""),
        ("log-4", "GET", "logs", "/prod/nope", ""),
        ("log-5", "GET", "logs", "/prod/down", ""),
        ("log-6", "GET", "logs", "/prod/slow", ""),
        ("log-7", "GET", "nosuchapi", "/prod/x", ""),
    ];
    let mut responses: BTreeMap<&str, Resp> = BTreeMap::new();
    rt.block_on(async {
        for (id, method, api, path, body) in calls {
            let r = send(
                edge.addr,
                request(
                    &edge,
                    method,
                    api,
                    path,
                    &[("x-request-id", id)],
                    Bytes::from(body.to_string()),
                ),
            )
            .await
            .unwrap();
            assert_eq!(r.request_id(), *id);
            responses.insert(id, r);
        }
    });
    let statuses: Vec<u16> = calls.iter().map(|c| responses[c.0].status).collect();
    assert_eq!(statuses, [200, 200, 201, 404, 502, 200, 404]);

    // One line per request, flushed within a bounded time.
    let logged = |lines: &[Value]| {
        calls
            .iter()
            .all(|c| lines.iter().any(|v| v["requestId"] == c.0))
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    while !logged(&edge.stdout.json_lines()) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let lines = edge.stdout.json_lines();
    assert!(
        logged(&lines),
        "not every request was logged:\n{}",
        edge.stdout.joined()
    );
    assert_eq!(
        lines.len(),
        edge.stdout.len(),
        "stdout has only JSON lines:\n{}",
        edge.stdout.joined()
    );
    let line = |id: &str| -> &Value {
        let found: Vec<&Value> = lines.iter().filter(|v| v["requestId"] == id).collect();
        assert_eq!(found.len(), 1, "one line for {id}: {found:?}");
        found[0]
    };
    let end_ms = now_ms();

    for (id, method, api, path, _) in calls {
        let l = line(id);
        let r = &responses[id];
        assert_eq!(l["sourceIp"], "127.0.0.1", "{l}");
        assert_eq!(l["httpMethod"], *method, "{l}");
        assert_eq!(l["path"], *path, "{l}");
        assert_eq!(l["status"], r.status, "{l}");
        assert_eq!(l["protocol"], "HTTP/1.1", "{l}");
        assert_eq!(l["responseLength"], r.body.len(), "{l}");
        let epoch = l["requestTimeEpoch"].as_i64().expect("requestTimeEpoch");
        assert!(
            epoch >= started_ms - 1000 && epoch <= end_ms + 1000,
            "requestTimeEpoch {epoch} is not now: {l}"
        );
        let time = l["requestTime"].as_str().expect("requestTime");
        assert_eq!(
            rfc3339_to_epoch_ms(time),
            Some(epoch),
            "requestTime {time} disagrees with requestTimeEpoch: {l}"
        );
        let latency = l["latency"].as_f64().expect("latency is a number");
        assert!(latency >= 0.0, "{l}");
        if *api == "logs" {
            assert_eq!(l["apiId"], "logs", "{l}");
            assert_eq!(l["stage"], "prod", "{l}");
        } else {
            assert!(l["apiId"].is_null() && l["stage"].is_null(), "{l}");
        }
        match l["integrationLatency"].as_f64() {
            Some(il) => assert!(il > 0.0 && il <= latency, "{l}"),
            None => assert!(l["integrationLatency"].is_null(), "{l}"),
        }
    }
    // Per-request specifics.
    for id in ["log-1", "log-2"] {
        assert_eq!(line(id)["routeKey"], "ANY /echo/{proxy+}");
        assert!(line(id)["integrationLatency"].is_f64(), "{}", line(id));
        assert!(line(id)["errorType"].is_null());
    }
    assert_eq!(line("log-3")["routeKey"], "GET /mock");
    assert!(
        line("log-3")["integrationLatency"].is_null(),
        "a mock calls no backend"
    );
    assert_eq!(line("log-3")["responseLength"], 7);
    assert!(line("log-4")["routeKey"].is_null());
    assert_eq!(line("log-4")["errorType"], "RESOURCE_NOT_FOUND");
    assert_eq!(line("log-5")["routeKey"], "GET /down");
    assert_eq!(line("log-5")["errorType"], "INTEGRATION_FAILURE");
    let slow = line("log-6");
    assert!(
        slow["integrationLatency"].as_f64().unwrap() >= 150.0,
        "the backend slept 150 ms: {slow}"
    );
    assert!(slow["latency"].as_f64().unwrap() >= 150.0, "{slow}");
    assert_eq!(line("log-7")["errorType"], "RESOURCE_NOT_FOUND");

    // Metrics: six requests for logs/prod, one 4xx and one 5xx; the unknown API counts apart.
    assert_eq!(
        edge.wait_metric(
            &series("portico_requests_total"),
            6.0,
            Duration::from_secs(2)
        ),
        6.0
    );
    let text = edge.metrics();
    let m = |name: &str| metric_value(&text, &series(name));
    assert_eq!(m("portico_responses_4xx_total"), Some(1.0), "{text}");
    assert_eq!(m("portico_responses_5xx_total"), Some(1.0), "{text}");
    assert_eq!(
        m("portico_request_duration_seconds_count"),
        Some(6.0),
        "{text}"
    );
    assert_eq!(
        m("portico_integration_duration_seconds_count"),
        Some(3.0),
        "echo twice and slow once: {text}"
    );
    let sum = m("portico_integration_duration_seconds_sum").unwrap();
    assert!(sum >= 0.15, "the slow call alone took 150 ms: {sum}");
    assert_eq!(
        metric_value(&text, "portico_requests_total{api=\"\",stage=\"\"}"),
        Some(unmatched_before + 1.0),
        "{text}"
    );
    assert!(metric_value(&text, "portico_connections_total").unwrap() >= 7.0);

    // They keep counting.
    rt.block_on(async {
        for path in ["/prod/nope2", "/prod/down"] {
            let r = common::get(&edge, "logs", path).await.unwrap();
            assert!(r.status >= 400);
        }
    });
    assert_eq!(
        edge.wait_metric(
            &series("portico_requests_total"),
            8.0,
            Duration::from_secs(2)
        ),
        8.0
    );
    let text = edge.metrics();
    let m = |name: &str| metric_value(&text, &series(name));
    assert_eq!(m("portico_responses_4xx_total"), Some(2.0), "{text}");
    assert_eq!(m("portico_responses_5xx_total"), Some(2.0), "{text}");
}

#[test]
fn h2_requests_are_logged_as_http2() {
    let backend = Backend::start();
    let text = config(API, backend.addr).replace("{DOWN}", &free_port().to_string());
    let edge = Edge::start(&text);
    let rt = runtime();
    let resps = rt
        .block_on(common::send_h2(
            edge.addr,
            vec![
                http::Request::builder()
                    .uri(edge.url("logs", "/prod/mock"))
                    .header("x-request-id", "h2-log-1")
                    .body(http_body_util::Full::new(Bytes::new()))
                    .unwrap(),
            ],
        ))
        .unwrap();
    assert_eq!(resps[0].status, 201);
    let line = edge
        .stdout
        .wait_for(Duration::from_secs(3), |l| l.contains("h2-log-1"))
        .expect("no access log line for the h2 request");
    let l: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(l["protocol"], "HTTP/2.0", "{l}");
    assert_eq!(l["routeKey"], "GET /mock", "{l}");
    assert_eq!(l["responseLength"], 7, "{l}");
}

#[test]
fn the_access_log_can_be_turned_off_or_written_to_a_file() {
    let backend = Backend::start();
    let text = config(API, backend.addr).replace("{DOWN}", &free_port().to_string());
    let dir = common::TempDir::new("portico-log");
    let file = dir.path().join("access.log");
    let to_file = Edge::builder(&text)
        .arg("--access-log", file.to_str().unwrap())
        .start();
    let off = Edge::builder(&text).arg("--access-log", "off").start();
    let rt = runtime();
    rt.block_on(async {
        for edge in [&to_file, &off] {
            let r = common::get(edge, "logs", "/prod/mock").await.unwrap();
            assert_eq!(r.status, 201);
        }
    });
    // The file gets the line (bounded wait for the 100 ms flush).
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    let content = loop {
        let content = std::fs::read_to_string(&file).unwrap_or_default();
        if content.contains("GET /mock") || std::time::Instant::now() > deadline {
            break content;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let l: Value = serde_json::from_str(content.lines().next().unwrap_or_default())
        .unwrap_or_else(|e| panic!("access log file ({e}): {content:?}"));
    assert_eq!(l["routeKey"], "GET /mock");
    assert!(to_file.stdout.is_empty(), "{}", to_file.stdout.joined());
    // Off: nothing on stdout, yet the request is counted.
    std::thread::sleep(Duration::from_millis(300));
    assert!(off.stdout.is_empty(), "{}", off.stdout.joined());
    assert_eq!(
        off.metric("portico_requests_total{api=\"logs\",stage=\"prod\"}"),
        1.0
    );
}

#[test]
fn ops_endpoints_answer() {
    let edge = Edge::start(&config(API, "127.0.0.1:9".parse().unwrap()).replace("{DOWN}", "9"));
    assert_eq!(edge.ops_get("/healthz"), (200, "ok\n".to_string()));
    assert_eq!(edge.ops_get("/readyz").0, 200);
    let (status, body) = edge.ops_get("/nope");
    assert_eq!(status, 404, "{body}");
    let status = edge.status_json();
    assert_eq!(status["revision"], 1, "{status}");
    assert_eq!(status["apis"], 1, "{status}");
    assert!(status["loaded_at"].is_string(), "{status}");
    assert!(
        status["source"]
            .as_str()
            .unwrap_or_default()
            .ends_with("portico.yaml"),
        "{status}"
    );
    let metrics = edge.metrics();
    assert_eq!(metric_value(&metrics, "portico_config_revision"), Some(1.0));
    assert_eq!(
        metric_value(&metrics, "portico_config_reloads_total{result=\"ok\"}"),
        Some(1.0)
    );
}
