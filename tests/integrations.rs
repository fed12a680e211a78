//! Integration types and backend failures: non-proxy `http` mappings, `mock`, timeouts (504,
//! and its custom gateway response) and unreachable backends (502).

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{Backend, Edge, config, free_port, get, request, runtime, send};

const NON_PROXY: &str = r#"
apis:
  - id: orders
    kind: http
    routes:
      - key: POST /orders/{code}
        integration:
          type: http
          uri: http://${stageVariables.b}/status/{code}?fixed=1
          method: PUT
          request_parameters:
            integration.request.header.x-customer: method.request.header.x-customer-id
            integration.request.header.x-order: method.request.path.code
            integration.request.header.x-rid: context.requestId
            integration.request.header.x-region: stageVariables.region
            integration.request.querystring.source: "'gateway'"
            integration.request.querystring.q: method.request.querystring.want
          responses:
            - selection_pattern: "5\\d\\d"
              status: 503
              headers:
                retry-after: "'5'"
            - selection_pattern: "404"
              status: 410
            - status: 201
              headers:
                location: integration.response.header.location
                x-static: "'fixed'"
      - key: GET /health
        integration:
          type: mock
          status: 202
          headers:
            content-type: application/json
            x-mock: "yes"
            x-request-id: "from-mock"
          body: '{"status":"ok"}'
      - key: ANY /empty
        integration:
          type: mock
    stages:
      - name: prod
        variables:
          b: "{B}"
          region: eu-1
"#;

#[test]
fn non_proxy_http_maps_request_parameters_and_response_statuses() {
    let backend = Backend::start();
    let edge = Edge::start(&config(NON_PROXY, backend.addr));
    let rt = runtime();
    rt.block_on(async {
        let post = |code: &str| {
            send(
                edge.addr,
                request(
                    &edge,
                    "POST",
                    "orders",
                    &format!("/prod/orders/{code}?want=hello&other=x"),
                    &[
                        ("x-customer-id", "c-42"),
                        ("x-unmapped", "must not pass"),
                        ("x-request-id", "np-1"),
                        ("content-type", "text/plain"),
                    ],
                    "abc",
                ),
            )
        };

        // The default response mapping: 201, with a header from the backend and a static one.
        let r = post("200").await.unwrap();
        assert_eq!(r.status, 201, "{}", r.text());
        assert_eq!(r.header("location"), Some("/created/status/200"));
        assert_eq!(r.header("x-static"), Some("fixed"));
        assert_eq!(r.header("x-backend-only"), None, "unmapped backend header");
        assert_eq!(r.header("content-type"), Some("application/json"));
        let echo = r.json();
        assert_eq!(echo["method"], "PUT", "the integration's method");
        assert_eq!(echo["path"], "/status/200");
        let query: Vec<&str> = echo["query"].as_str().unwrap().split('&').collect();
        assert!(query.contains(&"fixed=1"), "{query:?}");
        assert!(query.contains(&"source=gateway"), "{query:?}");
        assert!(query.contains(&"q=hello"), "{query:?}");
        assert!(
            !query
                .iter()
                .any(|p| p.starts_with("other") || p.starts_with("want")),
            "unmapped query parameters must not pass: {query:?}"
        );
        let h = &echo["headers"];
        assert_eq!(h["x-customer"], "c-42");
        assert_eq!(h["x-order"], "200");
        assert_eq!(h["x-rid"], "np-1");
        assert_eq!(h["x-region"], "eu-1");
        assert_eq!(h["content-type"], "text/plain");
        assert!(h.get("x-unmapped").is_none(), "{h}");
        assert!(h.get("x-customer-id").is_none(), "{h}");
        assert_eq!(echo["bodyLength"], 3);

        // A selection pattern: 5xx from the backend → 503 with a static header.
        let r = post("502").await.unwrap();
        assert_eq!(r.status, 503, "{}", r.text());
        assert_eq!(r.header("retry-after"), Some("5"));
        assert_eq!(r.header("location"), None);

        // An exact pattern.
        let r = post("404").await.unwrap();
        assert_eq!(r.status, 410, "{}", r.text());

        // A status no pattern names falls to the default.
        let r = post("418").await.unwrap();
        assert_eq!(r.status, 201, "{}", r.text());
    });
}

#[test]
fn mock_integrations_answer_from_the_gateway() {
    let backend = Backend::start();
    let edge = Edge::start(&config(NON_PROXY, backend.addr));
    let rt = runtime();
    rt.block_on(async {
        let r = get(&edge, "orders", "/prod/health").await.unwrap();
        assert_eq!(r.status, 202);
        assert_eq!(r.header("x-mock"), Some("yes"));
        assert_eq!(r.header("content-type"), Some("application/json"));
        assert_eq!(r.json(), serde_json::json!({"status": "ok"}));
        // The edge's request id replaces the one the mock sets, and is the only one.
        assert_ne!(r.request_id(), "from-mock");
        assert_eq!(r.headers.get_all("x-request-id").iter().count(), 1);

        // A mock with nothing set: 200, empty body, any method.
        let r = send(
            edge.addr,
            request(&edge, "DELETE", "orders", "/prod/empty", &[], Bytes::new()),
        )
        .await
        .unwrap();
        assert_eq!(r.status, 200);
        assert!(r.body.is_empty());
        r.request_id();
    });
    assert!(backend.seen().is_empty(), "a mock never calls a backend");
}

const SLOW: &str = r#"
apis:
  - id: slow
    kind: http
    routes:
      - key: GET /slow
        integration:
          type: http_proxy
          uri: http://${stageVariables.b}/slow?ms=2000
          timeout_ms: 200
      - key: GET /quick
        integration:
          type: http_proxy
          uri: http://${stageVariables.b}/slow?ms=50
          timeout_ms: 1000
      - key: GET /down
        integration:
          type: http_proxy
          uri: http://127.0.0.1:{DOWN}/nobody
    stages:
      - name: prod
        variables:
          b: "{B}"
  - id: custom
    kind: http
    routes:
      - key: GET /slow
        integration:
          type: http_proxy
          uri: http://${stageVariables.b}/slow?ms=2000
          timeout_ms: 200
      - key: GET /down
        integration:
          type: http_proxy
          uri: http://127.0.0.1:{DOWN}/nobody
    gateway_responses:
      INTEGRATION_TIMEOUT:
        status: 599
        headers:
          retry-after: "7"
          x-failed-request: $context.requestId
        body: '{"oops":"$context.requestId","kind":"$context.error.responseType","why":"$context.error.message"}'
      RESOURCE_NOT_FOUND:
        body: '{"notFound":"$context.error.message"}'
    stages:
      - name: prod
        variables:
          b: "{B}"
"#;

fn slow_config(backend: &Backend, down: u16) -> String {
    config(SLOW, backend.addr).replace("{DOWN}", &down.to_string())
}

#[test]
fn a_slow_backend_gets_504_and_the_custom_gateway_response_applies() {
    let backend = Backend::start();
    let edge = Edge::start(&slow_config(&backend, free_port()));
    let rt = runtime();
    rt.block_on(async {
        let started = Instant::now();
        let r = get(&edge, "slow", "/prod/slow").await.unwrap();
        let took = started.elapsed();
        assert_eq!(r.status, 504, "{}", r.text());
        assert!(
            took >= Duration::from_millis(190) && took < Duration::from_millis(1500),
            "the timeout is 200 ms, the answer came after {took:?}"
        );
        let body = r.json();
        assert_eq!(body["type"], "INTEGRATION_TIMEOUT");
        assert_eq!(body["requestId"], r.request_id());
        let message = body["message"].as_str().unwrap();
        assert!(
            message.contains(&backend.addr.to_string()) && message.contains("200ms"),
            "names the backend and the timeout: {message}"
        );

        // Under the timeout, the same backend answers.
        let r = get(&edge, "slow", "/prod/quick").await.unwrap();
        assert_eq!(r.status, 200, "{}", r.text());

        // The API with a custom INTEGRATION_TIMEOUT response.
        let r = send(
            edge.addr,
            request(
                &edge,
                "GET",
                "custom",
                "/prod/slow",
                &[("x-request-id", "custom-timeout-1")],
                Bytes::new(),
            ),
        )
        .await
        .unwrap();
        assert_eq!(r.status, 599, "{}", r.text());
        assert_eq!(r.header("retry-after"), Some("7"));
        assert_eq!(r.header("x-failed-request"), Some("custom-timeout-1"));
        assert_eq!(r.request_id(), "custom-timeout-1");
        let body = r.json();
        assert_eq!(body["oops"], "custom-timeout-1");
        assert_eq!(body["kind"], "INTEGRATION_TIMEOUT");
        assert!(
            body["why"].as_str().unwrap().contains("did not answer"),
            "{body}"
        );

        // A message with quotes in it stays valid JSON inside a custom body; the status stays
        // the type's default when the override sets none.
        let r = get(&edge, "custom", "/prod/missing").await.unwrap();
        assert_eq!(r.status, 404, "{}", r.text());
        let not_found = r.json()["notFound"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        assert!(
            not_found.contains("API \"custom\"") && not_found.contains("no route"),
            "{not_found}"
        );
        // Only that API is customized.
        let r = get(&edge, "slow", "/prod/missing").await.unwrap();
        assert_eq!(r.json()["type"], "RESOURCE_NOT_FOUND");
    });
}

#[test]
fn an_unreachable_backend_gets_502_naming_it() {
    let backend = Backend::start();
    let down = free_port();
    let edge = Edge::start(&slow_config(&backend, down));
    let rt = runtime();
    rt.block_on(async {
        let started = Instant::now();
        let r = get(&edge, "slow", "/prod/down").await.unwrap();
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "a refused connect is quick"
        );
        assert_eq!(r.status, 502, "{}", r.text());
        assert_eq!(r.header("content-type"), Some("application/json"));
        let body = r.json();
        assert_eq!(body["type"], "INTEGRATION_FAILURE");
        assert_eq!(body["requestId"], r.request_id());
        let message = body["message"].as_str().unwrap();
        assert!(
            message.contains(&format!("127.0.0.1:{down}")),
            "names the backend: {message}"
        );
        assert!(message.contains("connect"), "says what failed: {message}");

        // The other API overrides only INTEGRATION_TIMEOUT: its 502 is the standard one.
        let r = get(&edge, "custom", "/prod/down").await.unwrap();
        assert_eq!(r.status, 502, "{}", r.text());
        assert_eq!(r.json()["type"], "INTEGRATION_FAILURE");
        assert_eq!(r.header("retry-after"), None);
    });
}

/// The fallbacks are spelled `DEFAULT_4XX` and `DEFAULT_5XX` (AWS's names, as documented in
/// docs/configuration.md), and apply to types without their own override.
#[test]
fn default_4xx_and_5xx_gateway_responses_use_the_documented_names() {
    let down = free_port();
    let text = format!(
        r#"
apis:
  - id: fallback
    kind: http
    routes:
      - key: GET /down
        integration:
          type: http_proxy
          uri: http://127.0.0.1:{down}/nobody
    gateway_responses:
      DEFAULT_5XX:
        headers:
          x-default: "5xx"
      DEFAULT_4XX:
        status: 400
        headers:
          x-default: "4xx"
    stages:
      - name: prod
"#
    );
    // Today this panics: the edge exits at start-up with "unknown variant `DEFAULT_5XX`".
    let edge = Edge::start(&text);
    let rt = runtime();
    rt.block_on(async {
        let r = get(&edge, "fallback", "/prod/down").await.unwrap();
        assert_eq!(r.status, 502, "{}", r.text());
        assert_eq!(r.header("x-default"), Some("5xx"));
        let r = get(&edge, "fallback", "/prod/missing").await.unwrap();
        assert_eq!(r.status, 400, "{}", r.text());
        assert_eq!(r.header("x-default"), Some("4xx"));
        assert_eq!(r.json()["type"], "RESOURCE_NOT_FOUND");
    });
}

/// A query value mapped into the integration's query string arrives percent-encoded and must
/// reach the backend encoded once: `want=hello%21` (the value `hello!`) becomes `q=hello%21`,
/// not `q=hello%2521`.
#[test]
fn mapped_query_values_are_not_encoded_twice() {
    let backend = Backend::start();
    let edge = Edge::start(&config(NON_PROXY, backend.addr));
    let rt = runtime();
    rt.block_on(async {
        let r = send(
            edge.addr,
            request(
                &edge,
                "POST",
                "orders",
                "/prod/orders/200?want=hello%21",
                &[],
                Bytes::new(),
            ),
        )
        .await
        .unwrap();
        assert_eq!(r.status, 201, "{}", r.text());
        let echo = r.json();
        let query: Vec<&str> = echo["query"].as_str().unwrap().split('&').collect();
        assert!(
            query.contains(&"q=hello%21"),
            "the backend must get the value hello! once encoded: {query:?}"
        );
    });
}

/// A mock must read the request body before answering: otherwise the connection closes with
/// the body still arriving, and a client uploading to a mock route gets its 201 but a failed
/// send (`curl: (55) Send failure: Broken pipe`).
#[test]
fn a_mock_route_accepts_an_uploaded_body_cleanly() {
    let backend = Backend::start();
    let edge = Edge::start(&config(NON_PROXY, backend.addr));
    let dir = common::TempDir::new("portico-mock-upload");
    let file = dir.path().join("body.bin");
    std::fs::write(&file, common::pattern_body(3 * 1024 * 1024, 11)).unwrap();
    let out = common::run_bounded(
        std::process::Command::new("curl")
            .args([
                "-sS",
                "--max-time",
                "8",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
            ])
            // No `Expect: 100-continue`: the body follows the headers at once, as most clients do.
            .args(["-H", "Expect:", "-X", "POST", "--data-binary"])
            .arg(format!("@{}", file.display()))
            .arg(edge.url("orders", "/prod/empty")),
        Duration::from_secs(10),
    )
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(stdout, "200", "status");
    assert!(
        out.status.success(),
        "curl got {stdout} but failed: {} ({})",
        String::from_utf8_lossy(&out.stderr),
        out.status
    );
}
