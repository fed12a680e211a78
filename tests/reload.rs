//! Config reloads: under continuous load with no failed request (file watching and SIGHUP),
//! and invalid files at start-up and on reload.

mod common;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{Backend, Edge, get, runtime};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// Version `v` of the file: `/version` answers `v{v}`, and from version 3 on `/added` exists.
fn versioned(v: u32, backend: &Backend) -> String {
    let added = if v >= 3 {
        "      - key: GET /added\n        integration:\n          type: mock\n          body: added\n"
    } else {
        ""
    };
    format!(
        r#"
apis:
  - id: live
    kind: http
    routes:
      - key: GET /version
        integration:
          type: mock
          headers:
            content-type: text/plain
          body: v{v}
      - key: ANY /echo/{{proxy+}}
        integration:
          type: http_proxy
          uri: http://${{stageVariables.b}}/r{v}/{{proxy}}
{added}    stages:
      - name: prod
        variables:
          b: "{b}"
"#,
        b = backend.addr
    )
}

/// What the load generator saw.
#[derive(Default)]
struct LoadReport {
    ok: AtomicUsize,
    failures: Mutex<Vec<String>>,
    versions: Mutex<BTreeSet<String>>,
    /// `r{v}` prefixes the backend saw for the proxied route.
    proxied: Mutex<BTreeSet<String>>,
}

/// Hammers `/version` and a proxied route from `clients` tasks until `stop` is set.
fn start_load(
    rt: &tokio::runtime::Runtime,
    edge: &Edge,
    clients: usize,
    stop: Arc<AtomicBool>,
    report: Arc<LoadReport>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let host = edge.host("live");
    let base = format!("http://{}", edge.addr);
    (0..clients)
        .map(|i| {
            let (client, host, base) = (client.clone(), host.clone(), base.clone());
            let (stop, report) = (stop.clone(), report.clone());
            rt.spawn(async move {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let proxied = n.is_multiple_of(2);
                    let path = if proxied {
                        format!("/prod/echo/c{i}/{n}")
                    } else {
                        "/prod/version".to_string()
                    };
                    let req = http::Request::builder()
                        .uri(format!("{base}{path}"))
                        .header("host", &host)
                        .body(Full::new(Bytes::new()))
                        .unwrap();
                    let result = tokio::time::timeout(Duration::from_secs(5), async {
                        let resp = client.request(req).await.map_err(|e| format!("{e:?}"))?;
                        let status = resp.status();
                        let body = resp
                            .into_body()
                            .collect()
                            .await
                            .map_err(|e| format!("body: {e}"))?
                            .to_bytes();
                        Ok::<_, String>((status, body))
                    })
                    .await;
                    match result {
                        Ok(Ok((status, body))) if status.is_success() => {
                            report.ok.fetch_add(1, Ordering::Relaxed);
                            let body = String::from_utf8_lossy(&body).into_owned();
                            if proxied {
                                let echo: serde_json::Value =
                                    serde_json::from_str(&body).unwrap_or_default();
                                let prefix = echo["path"]
                                    .as_str()
                                    .and_then(|p| p.split('/').nth(1))
                                    .unwrap_or("?")
                                    .to_string();
                                report.proxied.lock().unwrap().insert(prefix);
                            } else {
                                report.versions.lock().unwrap().insert(body);
                            }
                        }
                        Ok(Ok((status, body))) => report.failures.lock().unwrap().push(format!(
                            "{path}: {status} {}",
                            String::from_utf8_lossy(&body)
                        )),
                        Ok(Err(e)) => report.failures.lock().unwrap().push(format!("{path}: {e}")),
                        Err(_) => report
                            .failures
                            .lock()
                            .unwrap()
                            .push(format!("{path}: timed out")),
                    }
                }
            })
        })
        .collect()
}

fn wait_version_seen(report: &LoadReport, v: u32, timeout: Duration) -> bool {
    let want = format!("v{v}");
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if report.versions.lock().unwrap().contains(&want) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

/// Rewrites the file five times under load; `sighup` decides how the edge learns of it.
fn reload_under_load(sighup: bool) {
    let backend = Backend::start();
    let edge = Edge::builder(&versioned(1, &backend))
        .watch_ms(if sighup { 0 } else { 100 })
        .start();
    let rt = runtime();
    let before = rt.block_on(get(&edge, "live", "/prod/added")).unwrap();
    assert_eq!(before.status, 404, "/added does not exist in version 1");

    let stop = Arc::new(AtomicBool::new(false));
    let report = Arc::new(LoadReport::default());
    let started = Instant::now();
    let tasks = start_load(&rt, &edge, 4, stop.clone(), report.clone());
    assert!(
        wait_version_seen(&report, 1, Duration::from_secs(5)),
        "load never saw v1"
    );
    let last = 6;
    for v in 2..=last {
        std::thread::sleep(Duration::from_millis(150));
        edge.write_config(&versioned(v, &backend));
        if sighup {
            // With watching off, the new file is not picked up until SIGHUP.
            std::thread::sleep(Duration::from_millis(250));
            assert!(
                !report.versions.lock().unwrap().contains(&format!("v{v}")),
                "v{v} was served before SIGHUP with --watch-interval-ms 0"
            );
            edge.signal("HUP");
        }
        assert!(
            wait_version_seen(&report, v, Duration::from_secs(5)),
            "v{v} never became visible; stderr:\n{}",
            edge.stderr.joined()
        );
    }
    // Keep the load on the final config for a while, ~3 s in all.
    let min_run = Duration::from_secs(3);
    if let Some(rest) = min_run.checked_sub(started.elapsed()) {
        std::thread::sleep(rest);
    }
    stop.store(true, Ordering::Relaxed);
    rt.block_on(async {
        for t in tasks {
            tokio::time::timeout(Duration::from_secs(10), t)
                .await
                .expect("a load task did not stop")
                .expect("a load task panicked");
        }
    });

    let failures = report.failures.lock().unwrap().clone();
    let ok = report.ok.load(Ordering::Relaxed);
    eprintln!("{ok} requests succeeded, {} failed", failures.len());
    assert!(
        failures.is_empty(),
        "{} of {} requests failed during reloads, e.g. {:?}",
        failures.len(),
        failures.len() + ok,
        &failures[..failures.len().min(5)]
    );
    assert!(ok >= 200, "only {ok} requests in ~3 s of load");
    let versions = report.versions.lock().unwrap().clone();
    let want: BTreeSet<String> = (1..=last).map(|v| format!("v{v}")).collect();
    assert_eq!(
        versions, want,
        "every revision was served, and nothing else"
    );
    let proxied = report.proxied.lock().unwrap().clone();
    assert!(
        proxied.contains("r1") && proxied.contains(&format!("r{last}")),
        "the proxied route followed the reloads: {proxied:?}"
    );

    // The route added in version 3 is served, and the edge reports the final revision.
    let added = rt.block_on(get(&edge, "live", "/prod/added")).unwrap();
    assert_eq!((added.status, added.text().as_str()), (200, "added"));
    let status = edge.status_json();
    assert_eq!(status["revision"], u64::from(last), "{status}");
    assert!(status["last_error"].is_null(), "{status}");
    assert_eq!(
        edge.metric("portico_config_reloads_total{result=\"ok\"}"),
        f64::from(last)
    );
    assert_eq!(
        edge.metric("portico_config_reloads_total{result=\"error\"}"),
        0.0
    );
}

#[test]
fn reload_by_file_watch_under_load_loses_no_request() {
    reload_under_load(false);
}

#[test]
fn reload_by_sighup_under_load_loses_no_request() {
    reload_under_load(true);
}

const BAD_URI: &str = r#"
apis:
  - id: bad
    kind: http
    routes:
      - key: GET /ok
        integration:
          type: mock
      - key: GET /broken
        integration:
          type: http_proxy
          uri: ftp://example.com/x
    stages:
      - name: prod
"#;

const UNKNOWN_FIELD: &str = r#"
apis:
  - id: bad
    kind: http
    routes:
      - key: GET /ok
        integration:
          type: mock
          timout_ms: 100
    stages:
      - name: prod
"#;

const BAD_JSON: &str = r#"{"apis": [{"id": "bad", "kind": "http", "routes": [
  {"key": "GET /ok", "integration": {"type": "mock"}},
  {"key": "GET /t", "integration": {"type": "http_proxy", "uri": "http://h/", "timeout_ms": 1}}
], "stages": [{"name": "prod"}]}]}"#;

#[test]
fn an_invalid_file_at_start_up_exits_non_zero_naming_the_field() {
    let cases = [
        ("portico.yaml", BAD_URI, "apis[0].routes[1].integration.uri"),
        (
            "portico.yaml",
            UNKNOWN_FIELD,
            "apis[0].routes[0].integration.timout_ms",
        ),
        (
            "portico.json",
            BAD_JSON,
            "apis[0].routes[1].integration.timeout_ms",
        ),
    ];
    for (file, text, path) in cases {
        let mut edge = Edge::builder(text).file_name(file).spawn();
        let status = edge
            .wait_exit(Duration::from_secs(10))
            .unwrap_or_else(|| panic!("the edge kept running with an invalid {file}"));
        assert!(
            !status.success(),
            "exit status {status} for an invalid file"
        );
        let stderr = edge
            .stderr
            .wait_for(Duration::from_secs(2), |l| l.contains(path));
        assert!(
            stderr.is_some(),
            "stderr does not name {path}:\n{}",
            edge.stderr.joined()
        );
    }
}

const GOOD_V1: &str = r#"
apis:
  - id: bad
    kind: http
    routes:
      - key: GET /ok
        integration:
          type: mock
          body: v1
      - key: GET /broken
        integration:
          type: mock
          body: not broken yet
    stages:
      - name: prod
"#;

#[test]
fn an_invalid_file_on_reload_is_rejected_and_the_old_config_keeps_serving() {
    let edge = Edge::builder(GOOD_V1).watch_ms(100).start();
    let rt = runtime();
    let status = edge.status_json();
    assert_eq!(status["revision"], 1);
    assert!(status["last_error"].is_null());
    let errors = "portico_config_reloads_total{result=\"error\"}";
    assert_eq!(edge.metric(errors), 0.0);

    // 1. A validation error.
    edge.write_config(BAD_URI);
    let logged = edge
        .stderr
        .wait_for(Duration::from_secs(5), |l| {
            l.contains("apis[0].routes[1].integration.uri")
        })
        .unwrap_or_else(|| panic!("no rejection on stderr:\n{}", edge.stderr.joined()));
    let logged: serde_json::Value = serde_json::from_str(&logged).expect("a JSON log line");
    assert_eq!(logged["level"], "ERROR", "{logged}");
    assert_eq!(edge.wait_metric(errors, 1.0, Duration::from_secs(2)), 1.0);
    let status = edge.status_json();
    assert_eq!(status["revision"], 1, "{status}");
    let last_error = status["last_error"].as_str().unwrap_or_default();
    assert!(
        last_error.contains("apis[0].routes[1].integration.uri"),
        "/status last_error: {status}"
    );
    rt.block_on(async {
        let r = get(&edge, "bad", "/prod/ok").await.unwrap();
        assert_eq!((r.status, r.text().as_str()), (200, "v1"));
        let r = get(&edge, "bad", "/prod/broken").await.unwrap();
        assert_eq!((r.status, r.text().as_str()), (200, "not broken yet"));
    });

    // 2. A parse error, found through SIGHUP as well as the watcher.
    let from = edge.stderr.len();
    edge.write_config(UNKNOWN_FIELD);
    edge.signal("HUP");
    assert!(
        edge.stderr
            .wait_for_from(from, Duration::from_secs(5), |l| l
                .contains("apis[0].routes[0].integration.timout_ms"))
            .is_some(),
        "no rejection on stderr:\n{}",
        edge.stderr.joined()
    );
    // The watcher and SIGHUP may both have read it.
    let deadline = Instant::now() + Duration::from_secs(2);
    while edge.metric(errors) < 2.0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(edge.metric(errors) >= 2.0);
    let status = edge.status_json();
    assert_eq!(status["revision"], 1, "{status}");
    assert!(
        status["last_error"]
            .as_str()
            .unwrap_or_default()
            .contains("timout_ms"),
        "{status}"
    );
    let r = rt.block_on(get(&edge, "bad", "/prod/ok")).unwrap();
    assert_eq!((r.status, r.text().as_str()), (200, "v1"));
    assert_eq!(edge.ops_get("/readyz").0, 200, "still ready");

    // 3. A good file again: served, and the error is cleared.
    edge.write_config(&GOOD_V1.replace("body: v1", "body: v2"));
    let r = rt
        .block_on(common::eventually_get(
            &edge,
            "bad",
            "/prod/ok",
            Duration::from_secs(5),
            |r| r.text() == "v2",
        ))
        .unwrap();
    assert_eq!(r.text(), "v2");
    let status = edge.status_json();
    assert_eq!(status["revision"], 2, "{status}");
    assert!(status["last_error"].is_null(), "{status}");
    assert_eq!(
        edge.metric("portico_config_reloads_total{result=\"ok\"}"),
        2.0
    );
}

/// Breaking the file and then restoring exactly the content being served makes it valid again:
/// the store sees it is unchanged from the serving revision, and `/status` must stop reporting
/// the rejection.
#[test]
fn restoring_the_served_file_clears_last_error() {
    let edge = Edge::builder(GOOD_V1).watch_ms(100).start();
    edge.write_config(BAD_URI);
    assert!(
        edge.stderr
            .wait_for(Duration::from_secs(5), |l| l
                .contains("apis[0].routes[1].integration.uri"))
            .is_some(),
        "the broken file was not rejected"
    );
    assert!(edge.status_json()["last_error"].is_string());

    // `git checkout portico.yaml`: back to what is serving.
    edge.write_config(GOOD_V1);
    edge.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut status = edge.status_json();
    while !status["last_error"].is_null() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        status = edge.status_json();
    }
    assert!(
        status["last_error"].is_null(),
        "the file is valid and serving, yet /status reports: {status}"
    );
}

#[test]
fn reloads_add_and_remove_apis_and_stages_and_keep_counters() {
    let one = r#"
apis:
  - id: first
    kind: http
    routes:
      - key: GET /ping
        integration:
          type: mock
          body: first
    stages:
      - name: prod
"#;
    let two = r#"
apis:
  - id: second
    kind: http
    routes:
      - key: GET /ping
        integration:
          type: mock
          body: second
    stages:
      - name: prod
      - name: beta
"#;
    let edge = Edge::builder(one).watch_ms(100).start();
    let rt = runtime();
    rt.block_on(async {
        for _ in 0..3 {
            assert_eq!(
                get(&edge, "first", "/prod/ping").await.unwrap().text(),
                "first"
            );
        }
    });
    let first = "portico_requests_total{api=\"first\",stage=\"prod\"}";
    assert_eq!(edge.wait_metric(first, 3.0, Duration::from_secs(2)), 3.0);

    edge.write_config(two);
    rt.block_on(async {
        let r =
            common::eventually_get(&edge, "second", "/beta/ping", Duration::from_secs(5), |r| {
                r.status == 200
            })
            .await
            .unwrap();
        assert_eq!((r.status, r.text().as_str()), (200, "second"));
        let r = get(&edge, "first", "/prod/ping").await.unwrap();
        assert_eq!(r.status, 404, "a removed API is gone: {}", r.text());
        assert!(
            r.json()["message"].as_str().unwrap().contains("first"),
            "{}",
            r.text()
        );
    });
    assert_eq!(edge.status_json()["apis"], 1);

    // Back to the first file: its counters continue where they were.
    edge.write_config(one);
    rt.block_on(async {
        let r = common::eventually_get(&edge, "first", "/prod/ping", Duration::from_secs(5), |r| {
            r.status == 200
        })
        .await
        .unwrap();
        assert_eq!(r.text(), "first");
    });
    // The request is counted after its response is written, so wait for it.
    let v = edge.wait_metric(first, 4.0, Duration::from_secs(2));
    assert_eq!(v, 4.0, "the counter did not continue across reloads: {v}");
}
