//! Routing end to end: which route a request reaches, what the backend is asked for, and the
//! 404s of requests that reach nothing.

mod common;

use common::{Backend, Edge, config, get, request, runtime, send};

const ROUTES: &str = r#"
apis:
  - id: shop
    kind: http
    routes:
      # Declared in reverse precedence on purpose: the file order must not matter.
      - key: $default
        integration:
          type: http_proxy
          uri: http://${stageVariables.b}
      - key: GET /items/{proxy+}
        integration:
          type: http_proxy
          uri: http://${stageVariables.b}/greedy/{proxy}
      - key: GET /items/{id}
        integration:
          type: http_proxy
          uri: http://${stageVariables.b}/param/{id}
      - key: GET /items/special
        integration:
          type: http_proxy
          uri: http://${stageVariables.b}/exact
      - key: GET /items/{id}/reviews/{review}
        integration:
          type: http_proxy
          uri: http://${stageVariables.b}/review/{review}/of/{id}
      - key: ANY /things/{id}
        integration:
          type: http_proxy
          uri: http://${stageVariables.b}/any/{id}
      - key: POST /things/{id}
        integration:
          type: http_proxy
          uri: http://${stageVariables.b}/post/{id}
    stages:
      - name: prod
        variables:
          b: "{B}"
  - id: strict
    kind: http
    routes:
      - key: GET /only
        integration:
          type: mock
          body: only
      - key: POST /writes
        integration:
          type: mock
          body: written
    stages:
      - name: prod
      - name: beta
"#;

/// The path and query the backend saw, from its echo.
fn backend_target(body: &serde_json::Value) -> (String, Option<String>) {
    (
        body["path"].as_str().unwrap_or_default().to_string(),
        body["query"].as_str().map(str::to_string),
    )
}

#[test]
fn route_precedence_exact_param_greedy_default_and_any() {
    let backend = Backend::start();
    let edge = Edge::start(&config(ROUTES, backend.addr));
    let rt = runtime();
    rt.block_on(async {
        // (method, request path, backend path, backend query)
        let cases: &[(&str, &str, &str, Option<&str>)] = &[
            // exact beats {param}
            ("GET", "/prod/items/special", "/exact", None),
            // {param} beats {proxy+}
            ("GET", "/prod/items/42", "/param/42", None),
            (
                "GET",
                "/prod/items/42?x=1&y=two",
                "/param/42",
                Some("x=1&y=two"),
            ),
            // path parameter values reach the backend as sent (still percent-encoded)
            ("GET", "/prod/items/a%20b", "/param/a%20b", None),
            // two parameters, rendered in the template's order
            ("GET", "/prod/items/7/reviews/3", "/review/3/of/7", None),
            // greedy takes every remaining segment
            ("GET", "/prod/items/42/x/y", "/greedy/42/x/y", None),
            (
                "GET",
                "/prod/items/special/deeper",
                "/greedy/special/deeper",
                None,
            ),
            // explicit methods beat ANY on the same path, ANY takes the rest
            ("POST", "/prod/things/9", "/post/9", None),
            ("GET", "/prod/things/9", "/any/9", None),
            ("DELETE", "/prod/things/9", "/any/9", None),
            // $default gets what nothing else matched, with the full path and query
            (
                "GET",
                "/prod/other/deep/path?q=1",
                "/other/deep/path",
                Some("q=1"),
            ),
            // a method without a route at a matching path falls through to $default
            ("DELETE", "/prod/items/42", "/items/42", None),
            ("GET", "/prod", "/", None),
        ];
        for (method, path, want_path, want_query) in cases {
            let r = send(
                edge.addr,
                request(&edge, method, "shop", path, &[], bytes::Bytes::new()),
            )
            .await
            .unwrap();
            assert_eq!(r.status, 200, "{method} {path}: {}", r.text());
            let (got_path, got_query) = backend_target(&r.json());
            assert_eq!(
                (got_path.as_str(), got_query.as_deref()),
                (*want_path, *want_query),
                "{method} {path} reached the wrong backend target"
            );
            assert_eq!(r.json()["method"], *method, "{method} {path}: method");
        }
    });
    // Every case above reached the backend exactly once.
    assert_eq!(backend.seen().len(), 13);
}

#[test]
fn a_miss_is_a_404_naming_the_api_stage_and_path() {
    let backend = Backend::start();
    let edge = Edge::start(&config(ROUTES, backend.addr));
    let rt = runtime();
    rt.block_on(async {
        let r = get(&edge, "strict", "/prod/nothing/here").await.unwrap();
        assert_eq!(r.status, 404, "{}", r.text());
        assert_eq!(r.header("content-type"), Some("application/json"));
        let body = r.json();
        let message = body["message"].as_str().unwrap();
        assert!(message.contains("no route"), "{message}");
        assert!(message.contains("\"strict\""), "names the API: {message}");
        assert!(message.contains("\"prod\""), "names the stage: {message}");
        assert!(message.contains("GET /nothing/here"), "{message}");
        assert_eq!(body["type"], "RESOURCE_NOT_FOUND");
        assert_eq!(body["requestId"], r.request_id());

        // The other stage is named when the miss happens there.
        let r = get(&edge, "strict", "/beta/nothing").await.unwrap();
        assert_eq!(r.status, 404);
        let message = r.json()["message"].as_str().unwrap().to_string();
        assert!(
            message.contains("\"beta\"") && message.contains("no route"),
            "{message}"
        );

        // A path whose only route has another method says which methods it accepts.
        let r = get(&edge, "strict", "/prod/writes").await.unwrap();
        assert_eq!(r.status, 404);
        let message = r.json()["message"].as_str().unwrap().to_string();
        assert!(
            message.contains("POST"),
            "lists the allowed method: {message}"
        );

        // An unknown stage names the known ones.
        let r = get(&edge, "strict", "/gamma/only").await.unwrap();
        assert_eq!(r.status, 404);
        let body = r.json();
        let message = body["message"].as_str().unwrap();
        assert!(message.contains("\"gamma\""), "{message}");
        assert!(message.contains("beta, prod"), "{message}");
        assert_eq!(body["type"], "RESOURCE_NOT_FOUND");

        // An unknown API.
        let r = get(&edge, "nosuchapi", "/prod/only").await.unwrap();
        assert_eq!(r.status, 404);
        let message = r.json()["message"].as_str().unwrap().to_string();
        assert!(message.contains("nosuchapi"), "{message}");

        // A Host outside the domain suffix.
        let r = send(
            edge.addr,
            http::Request::builder()
                .uri("/prod/only")
                .header("host", "example.com")
                .body(http_body_util::Full::new(bytes::Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
        assert_eq!(r.status, 404);
        assert_eq!(r.json()["type"], "RESOURCE_NOT_FOUND");
        r.request_id();

        // And the routes that exist still answer.
        let r = get(&edge, "strict", "/prod/only").await.unwrap();
        assert_eq!((r.status, r.text().as_str()), (200, "only"));
    });
    assert!(backend.seen().is_empty(), "no miss may reach a backend");
}

const ROOT_STAGE: &str = r#"
apis:
  - id: root
    kind: http
    routes:
      - key: GET /hello
        integration:
          type: mock
          body: hello from ${stage}
      - key: GET /v2/hello
        integration:
          type: mock
          body: a route named like a stage
    stages:
      - name: $default
      - name: v2
"#;

#[test]
fn the_default_stage_serves_the_root_path_and_named_stages_their_prefix() {
    let edge = Edge::start(ROOT_STAGE);
    let rt = runtime();
    rt.block_on(async {
        let r = get(&edge, "root", "/hello").await.unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        // A named stage takes its prefix first.
        let r = get(&edge, "root", "/v2/hello").await.unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.text(), "hello from ${stage}");
        let r = get(&edge, "root", "/missing").await.unwrap();
        assert_eq!(r.status, 404);
        let message = r.json()["message"].as_str().unwrap().to_string();
        assert!(message.contains("$default"), "{message}");
    });
    // Both stages count apart.
    assert_eq!(
        edge.wait_metric(
            "portico_requests_total{api=\"root\",stage=\"$default\"}",
            2.0,
            std::time::Duration::from_secs(2)
        ),
        2.0
    );
    assert_eq!(
        edge.wait_metric(
            "portico_requests_total{api=\"root\",stage=\"v2\"}",
            1.0,
            std::time::Duration::from_secs(2)
        ),
        1.0
    );
}

/// RFC 9112 §3.2: an HTTP/1.1 request with no Host, or with two, is answered 400, never routed
/// by whichever Host came first.
#[test]
fn requests_with_no_or_two_host_headers_get_400() {
    use std::io::{Read, Write};
    let edge = Edge::start(
        r#"
apis:
  - id: shop
    kind: http
    routes:
      - key: GET /x
        integration: { type: mock, body: "ok" }
    stages: [{name: s}]
"#,
    );
    let ask = |head: &str| {
        let mut tcp = std::net::TcpStream::connect(edge.addr).unwrap();
        tcp.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        write!(tcp, "GET /s/x HTTP/1.1\r\n{head}Connection: close\r\n\r\n").unwrap();
        let mut answer = String::new();
        let _ = tcp.read_to_string(&mut answer);
        answer
    };
    let one = ask("Host: shop.portico.localhost\r\n");
    assert!(one.starts_with("HTTP/1.1 200"), "{one}");
    let two = ask("Host: other.portico.localhost\r\nHost: shop.portico.localhost\r\n");
    assert!(two.starts_with("HTTP/1.1 400"), "{two}");
    assert!(two.contains("2 Host headers"), "{two}");
    let none = ask("");
    assert!(none.starts_with("HTTP/1.1 400"), "{none}");
    assert!(none.contains("no Host header"), "{none}");
}

const ENDPOINTS: &str = r#"
apis:
  - id: shop
    kind: http
    routes:
      - key: GET /items
        integration: { type: http_proxy, uri: "http://{B}/shop" }
    stages: [{name: prod}]
  - id: local
    kind: http
    endpoint: regional
    region: eu-1
    routes:
      - key: GET /items
        integration: { type: http_proxy, uri: "http://{B}/local" }
    stages: [{name: prod}]
  - id: vault
    kind: http
    endpoint: private
    routes:
      - key: GET /secrets
        integration: { type: http_proxy, uri: "http://{B}/vault" }
    gateway_responses:
      RESOURCE_NOT_FOUND:
        status: 418
        body: '{"vault": "$context.error.message"}'
    stages: [{name: prod}, {name: beta}]
"#;

/// A private API answers only on the private listener, which answers nothing else; on the wrong
/// listener an API gets exactly what an API that does not exist gets.
#[test]
fn private_apis_only_on_the_private_listener_and_nothing_else_there() {
    let backend = Backend::start();
    let edge = Edge::builder(&config(ENDPOINTS, backend.addr))
        .private_listener()
        .start();
    let private = edge.private.expect("a private listener");
    let rt = runtime();
    rt.block_on(async {
        let on = |addr, api: &'static str, path: &'static str| {
            let req = request(&edge, "GET", api, path, &[], bytes::Bytes::new());
            async move { send(addr, req).await.unwrap() }
        };
        // A miss as the client sees it, with the API's name and the request id taken out.
        let miss = |r: &common::Resp, api: &str| {
            (
                r.status,
                r.header("content-type").map(str::to_string),
                r.text().replace(api, "API").replace(&r.request_id(), "ID"),
            )
        };

        // Served where they belong.
        let r = on(private, "vault", "/prod/secrets").await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.json()["path"], "/vault");
        for api in ["shop", "local"] {
            let r = on(edge.addr, api, "/prod/items").await;
            assert_eq!(r.status, 200, "{api}: {}", r.text());
            assert_eq!(r.json()["path"], format!("/{api}"));
        }
        // The private API's own gateway responses do apply on the private listener.
        let r = on(private, "vault", "/prod/nothing").await;
        assert_eq!(r.status, 418, "{}", r.text());

        // Unknown on the public listener: not its routes, stages or gateway responses.
        let r = on(edge.addr, "nosuchapi", "/prod/secrets").await;
        assert_eq!(r.status, 404);
        assert_eq!(r.json()["type"], "RESOURCE_NOT_FOUND");
        let unknown = miss(&r, "nosuchapi");
        for path in ["/prod/secrets", "/prod/nothing", "/gamma/secrets"] {
            let r = on(edge.addr, "vault", path).await;
            assert_eq!(
                miss(&r, "vault"),
                unknown,
                "vault {path} on the public listener"
            );
        }

        // And the private listener knows nothing but private APIs.
        let r = on(private, "nosuchapi", "/prod/items").await;
        assert_eq!(r.status, 404);
        assert_eq!(r.json()["type"], "RESOURCE_NOT_FOUND");
        let unknown = miss(&r, "nosuchapi");
        for api in ["shop", "local"] {
            for path in ["/prod/items", "/gamma/items"] {
                let r = on(private, api, path).await;
                assert_eq!(
                    miss(&r, api),
                    unknown,
                    "{api} {path} on the private listener"
                );
            }
        }
    });
    let seen: Vec<String> = backend.seen().iter().map(|s| s.path.clone()).collect();
    assert_eq!(seen.len(), 3, "only the three served requests: {seen:?}");

    // /status says where the edge listens.
    let status = edge.status_json();
    assert_eq!(status["listeners"]["public"], edge.addr.to_string());
    assert_eq!(status["listeners"]["private"], private.to_string());
    assert_eq!(status["apis"], 3, "{status}");
}

#[test]
fn without_a_private_listener_private_apis_answer_nowhere() {
    let backend = Backend::start();
    let edge = Edge::start(&config(ENDPOINTS, backend.addr));
    let rt = runtime();
    rt.block_on(async {
        let r = get(&edge, "vault", "/prod/secrets").await.unwrap();
        assert_eq!(r.status, 404, "{}", r.text());
        assert_eq!(r.json()["message"], "no API \"vault\" is served here");
        let r = get(&edge, "shop", "/prod/items").await.unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
    });
    let status = edge.status_json();
    assert_eq!(status["listeners"]["public"], edge.addr.to_string());
    assert!(status["listeners"].get("private").is_none(), "{status}");
    assert_eq!(backend.seen().len(), 1);
}
