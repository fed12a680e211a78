//! What an `http_proxy` route forwards (method, path, query, headers, bodies) and what it must
//! not (hop-by-hop headers, bodies over the limit), over HTTP/1.1 and h2c.

mod common;

use std::io::Write;
use std::time::Duration;

use bytes::Bytes;
use common::{
    Backend, ChunkedBody, Edge, checksum, config, connect, pattern_body, read_one_response,
    request, runtime, send, send_h2,
};
use http::Request;
use http_body_util::Full;

const PROXY: &str = r#"
apis:
  - id: api
    kind: http
    routes:
      - key: ANY /echo/{proxy+}
        integration:
          type: http_proxy
          uri: http://${stageVariables.b}/{proxy}
      - key: ANY /hop
        integration:
          type: http_proxy
          uri: http://${stageVariables.b}/hop
    stages:
      - name: prod
        variables:
          b: "{B}"
"#;

fn header<'a>(echo: &'a serde_json::Value, name: &str) -> Option<&'a str> {
    echo["headers"][name].as_str()
}

#[test]
fn forwards_method_path_query_headers_and_body() {
    let backend = Backend::start();
    let edge = Edge::start(&config(PROXY, backend.addr));
    let rt = runtime();
    rt.block_on(async {
        let body = b"{\"hello\":\"world\"}";
        let r = send(
            edge.addr,
            request(
                &edge,
                "PATCH",
                "api",
                "/prod/echo/a/b?x=1&y=two%20words&x=3",
                &[
                    ("x-custom", "custom value"),
                    ("content-type", "application/json"),
                    ("accept", "text/plain"),
                    ("user-agent", "e2e-test/1"),
                ],
                &body[..],
            ),
        )
        .await
        .unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        let echo = r.json();
        assert_eq!(echo["method"], "PATCH");
        assert_eq!(echo["path"], "/a/b");
        assert_eq!(echo["query"], "x=1&y=two%20words&x=3");
        assert_eq!(header(&echo, "x-custom"), Some("custom value"));
        assert_eq!(header(&echo, "content-type"), Some("application/json"));
        assert_eq!(header(&echo, "accept"), Some("text/plain"));
        assert_eq!(header(&echo, "user-agent"), Some("e2e-test/1"));
        assert_eq!(echo["bodyLength"], body.len());
        assert_eq!(echo["checksum"], checksum(body));
        // The backend is addressed as itself; the original host travels in X-Forwarded-Host.
        let backend_host = backend.addr.to_string();
        assert_eq!(header(&echo, "host"), Some(backend_host.as_str()));
        assert_eq!(
            header(&echo, "x-forwarded-host"),
            Some(edge.host("api").as_str())
        );
        assert_eq!(header(&echo, "x-forwarded-for"), Some("127.0.0.1"));
        assert_eq!(header(&echo, "x-forwarded-proto"), Some("http"));
        // The backend's own headers come back to the client.
        assert_eq!(r.header("x-backend-only"), Some("yes"));
        assert_eq!(r.header("location"), Some("/created/a/b"));

        // A prior X-Forwarded-For is extended, not replaced.
        let r = send(
            edge.addr,
            request(
                &edge,
                "GET",
                "api",
                "/prod/echo/xff",
                &[("x-forwarded-for", "203.0.113.7")],
                Bytes::new(),
            ),
        )
        .await
        .unwrap();
        assert_eq!(
            header(&r.json(), "x-forwarded-for"),
            Some("203.0.113.7, 127.0.0.1")
        );

        // Methods without a body are forwarded too.
        for method in ["GET", "DELETE", "OPTIONS", "PUT", "POST"] {
            let r = send(
                edge.addr,
                request(&edge, method, "api", "/prod/echo/m", &[], Bytes::new()),
            )
            .await
            .unwrap();
            assert_eq!(r.status, 200);
            assert_eq!(r.json()["method"], method);
            assert_eq!(r.json()["bodyLength"], 0);
        }
    });
}

#[test]
fn request_ids_reach_the_backend_and_client_ids_are_kept() {
    let backend = Backend::start();
    let edge = Edge::start(&config(PROXY, backend.addr));
    let rt = runtime();
    rt.block_on(async {
        // A generated id: on the response and at the backend, the same.
        let r = common::get(&edge, "api", "/prod/echo/id").await.unwrap();
        let id = r.request_id();
        assert_eq!(id.len(), 36, "a UUID-shaped id: {id}");
        assert_eq!(header(&r.json(), "x-request-id"), Some(id.as_str()));
        let r2 = common::get(&edge, "api", "/prod/echo/id").await.unwrap();
        assert_ne!(r2.request_id(), id, "every request gets its own id");

        // A valid client id is kept end to end.
        let r = send(
            edge.addr,
            request(
                &edge,
                "GET",
                "api",
                "/prod/echo/id",
                &[("x-request-id", "client-id_1.2:3")],
                Bytes::new(),
            ),
        )
        .await
        .unwrap();
        assert_eq!(r.request_id(), "client-id_1.2:3");
        assert_eq!(header(&r.json(), "x-request-id"), Some("client-id_1.2:3"));

        // An id with characters outside the allowed set is replaced, on both sides.
        let r = send(
            edge.addr,
            request(
                &edge,
                "GET",
                "api",
                "/prod/echo/id",
                &[("x-request-id", "bad id!<script>")],
                Bytes::new(),
            ),
        )
        .await
        .unwrap();
        let id = r.request_id();
        assert_ne!(id, "bad id!<script>");
        assert_eq!(header(&r.json(), "x-request-id"), Some(id.as_str()));

        // Gateway errors carry the id too, in the header and in the body.
        let r = send(
            edge.addr,
            request(
                &edge,
                "GET",
                "api",
                "/prod/missing",
                &[("x-request-id", "err-id-1")],
                Bytes::new(),
            ),
        )
        .await
        .unwrap();
        assert_eq!(r.status, 404);
        assert_eq!(r.request_id(), "err-id-1");
        assert_eq!(r.json()["requestId"], "err-id-1");
    });
}

#[test]
fn hop_by_hop_headers_are_not_forwarded_either_way() {
    let backend = Backend::start();
    let edge = Edge::start(&config(PROXY, backend.addr));
    let rt = runtime();
    rt.block_on(async {
        let hop_headers = [
            ("connection", "keep-alive, x-drop-me"),
            ("x-drop-me", "secret"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("te", "trailers"),
            ("x-keep-me", "kept"),
        ];
        // Control: sent straight to the backend, these headers do arrive.
        let direct = send(
            backend.addr,
            request(&edge, "GET", "api", "/hop", &hop_headers, Bytes::new()),
        )
        .await
        .unwrap();
        let direct = direct.json();
        for name in ["x-drop-me", "keep-alive", "proxy-connection", "te"] {
            assert!(header(&direct, name).is_some(), "control lacks {name}");
        }

        let r = send(
            edge.addr,
            request(&edge, "GET", "api", "/prod/hop", &hop_headers, Bytes::new()),
        )
        .await
        .unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        let echo = r.json();
        let sent = echo["headers"].as_object().unwrap();
        for name in ["x-drop-me", "keep-alive", "proxy-connection", "te"] {
            assert!(
                !sent.contains_key(name),
                "{name} reached the backend: {sent:?}"
            );
        }
        if let Some(c) = header(&echo, "connection") {
            assert!(!c.contains("x-drop-me"), "connection forwarded: {c}");
        }
        assert_eq!(header(&echo, "x-keep-me"), Some("kept"));

        // The backend's hop-by-hop response headers stop at the edge as well.
        assert_eq!(r.header("x-backend-secret"), None, "{:?}", r.headers);
        assert_eq!(r.header("proxy-connection"), None, "{:?}", r.headers);
        assert_ne!(
            r.header("keep-alive"),
            Some("timeout=99"),
            "{:?}",
            r.headers
        );
        assert_eq!(r.header("x-backend-only"), Some("yes"));
    });
}

#[test]
fn a_5_mib_body_and_a_chunked_body_arrive_intact() {
    let backend = Backend::start();
    let edge = Edge::start(&config(PROXY, backend.addr));
    let rt = runtime();
    rt.block_on(async {
        let big = pattern_body(5 * 1024 * 1024, 0x5eed);
        let r = send(
            edge.addr,
            request(
                &edge,
                "PUT",
                "api",
                "/prod/echo/upload",
                &[("content-type", "application/octet-stream")],
                big.clone(),
            ),
        )
        .await
        .unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        let echo = r.json();
        assert_eq!(echo["bodyLength"], big.len());
        assert_eq!(echo["checksum"], checksum(&big));
        assert_eq!(header(&echo, "content-length"), Some("5242880"));

        // Chunked: no content-length, frames of uneven sizes.
        let data = pattern_body(777_777, 0xc0ffee);
        let req = Request::builder()
            .method("POST")
            .uri("/prod/echo/chunked")
            .header("host", edge.host("api"))
            .body(ChunkedBody::new(&data, &[1, 4096, 65_537, 10, 300_000]))
            .unwrap();
        let r = send(edge.addr, req).await.unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        let echo = r.json();
        assert_eq!(echo["bodyLength"], data.len());
        assert_eq!(echo["checksum"], checksum(&data));
        assert_eq!(echo["method"], "POST");

        // And an empty chunked body.
        let req = Request::builder()
            .method("POST")
            .uri("/prod/echo/empty")
            .header("host", edge.host("api"))
            .body(ChunkedBody::new(&[], &[1]))
            .unwrap();
        let r = send(edge.addr, req).await.unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.json()["bodyLength"], 0);
    });
}

const LIMIT: usize = 1024 * 1024;

#[test]
fn bodies_over_the_limit_get_413_with_content_length_or_chunked() {
    let backend = Backend::start();
    let edge = Edge::builder(&config(PROXY, backend.addr))
        .arg("--max-body-bytes", &LIMIT.to_string())
        .start();
    let host = edge.host("api");

    // A declared length over the limit: refused before any byte of the body is read.
    let mut tcp = connect(edge.addr, Duration::from_secs(5));
    write!(
        tcp,
        "POST /prod/echo/big HTTP/1.1\r\nHost: {host}\r\nx-request-id: too-big-1\r\nContent-Length: {}\r\n\r\n",
        2 * LIMIT
    )
    .unwrap();
    let r = read_one_response(&mut tcp).unwrap();
    assert_eq!(r.status, 413, "{:?}", String::from_utf8_lossy(&r.body));
    let body = r.json();
    assert_eq!(body["type"], "REQUEST_TOO_LARGE");
    assert_eq!(body["requestId"], "too-big-1");
    assert_eq!(r.header("x-request-id"), Some("too-big-1"));
    let message = body["message"].as_str().unwrap();
    assert!(
        message.contains(&LIMIT.to_string()),
        "names the limit: {message}"
    );
    assert_eq!(backend.started(), 0, "the backend must not be called");

    // A chunked body that grows past the limit: cut off with a 413 as well. The body stops one
    // byte past the limit and the client then waits for the answer.
    let mut tcp = connect(edge.addr, Duration::from_secs(5));
    write!(
        tcp,
        "POST /prod/echo/big HTTP/1.1\r\nHost: {host}\r\nx-request-id: too-big-2\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    .unwrap();
    let piece = vec![b'a'; 64 * 1024];
    for _ in 0..LIMIT / piece.len() {
        write!(tcp, "{:x}\r\n", piece.len()).unwrap();
        tcp.write_all(&piece).unwrap();
        tcp.write_all(b"\r\n").unwrap();
    }
    tcp.write_all(b"1\r\nz\r\n").unwrap();
    tcp.flush().unwrap();
    let r = read_one_response(&mut tcp).unwrap();
    assert_eq!(r.status, 413, "{:?}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["type"], "REQUEST_TOO_LARGE");
    assert_eq!(r.header("x-request-id"), Some("too-big-2"));
    drop(tcp);

    // A body of exactly the limit passes, declared or chunked.
    let rt = runtime();
    rt.block_on(async {
        let exact = pattern_body(LIMIT, 42);
        let r = send(
            edge.addr,
            request(&edge, "POST", "api", "/prod/echo/exact", &[], exact.clone()),
        )
        .await
        .unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.json()["checksum"], checksum(&exact));
        let req = Request::builder()
            .method("POST")
            .uri("/prod/echo/exact-chunked")
            .header("host", edge.host("api"))
            .body(ChunkedBody::new(&exact, &[100_000]))
            .unwrap();
        let r = send(edge.addr, req).await.unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.json()["checksum"], checksum(&exact));
    });
}

#[test]
fn h2c_prior_knowledge_clients_are_proxied() {
    let backend = Backend::start();
    let edge = Edge::start(&config(PROXY, backend.addr));
    let rt = runtime();
    rt.block_on(async {
        let body = pattern_body(200_000, 7);
        let mut reqs = Vec::new();
        for i in 0..8 {
            reqs.push(
                Request::builder()
                    .method("POST")
                    .uri(edge.url("api", &format!("/prod/echo/h2/{i}?n={i}")))
                    .header("x-stream", i.to_string())
                    .body(Full::new(Bytes::from(body.clone())))
                    .unwrap(),
            );
        }
        let resps = send_h2(edge.addr, reqs).await.unwrap();
        assert_eq!(resps.len(), 8);
        for (i, r) in resps.iter().enumerate() {
            assert_eq!(r.version, http::Version::HTTP_2);
            assert_eq!(r.status, 200, "{}", r.text());
            let echo = r.json();
            assert_eq!(echo["path"], format!("/h2/{i}"));
            assert_eq!(echo["query"], format!("n={i}"));
            assert_eq!(header(&echo, "x-stream"), Some(i.to_string().as_str()));
            assert_eq!(echo["checksum"], checksum(&body));
            assert_eq!(
                header(&echo, "x-forwarded-host"),
                Some(edge.host("api").as_str())
            );
            // The backend is spoken to in HTTP/1.1.
            assert_eq!(echo["version"], "HTTP/1.1");
            assert_eq!(header(&echo, "x-request-id"), Some(r.request_id().as_str()));
        }

        // A gateway error over h2 is the same JSON.
        let resps = send_h2(
            edge.addr,
            vec![
                Request::builder()
                    .uri(edge.url("api", "/prod/nowhere"))
                    .body(Full::new(Bytes::new()))
                    .unwrap(),
            ],
        )
        .await
        .unwrap();
        assert_eq!(resps[0].status, 404);
        assert_eq!(resps[0].json()["type"], "RESOURCE_NOT_FOUND");
    });

    // curl's own h2c client agrees.
    let out = common::run_bounded(
        std::process::Command::new("curl")
            .arg("-sS")
            .arg("--http2-prior-knowledge")
            .arg("--max-time")
            .arg("5")
            .arg("-w")
            .arg("\n%{http_version} %{http_code}")
            .arg(edge.url("api", "/prod/echo/curl?via=curl")),
        Duration::from_secs(10),
    )
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "curl failed: {stdout} {:?}",
        out.stderr
    );
    let (json, tail) = stdout.rsplit_once('\n').unwrap();
    assert_eq!(tail, "2 200", "{stdout}");
    let echo: serde_json::Value = serde_json::from_str(json).unwrap();
    assert_eq!(echo["path"], "/curl");
    assert_eq!(echo["query"], "via=curl");
}

#[test]
fn large_responses_stream_back_intact_and_head_has_no_body() {
    let backend = Backend::start();
    let edge = Edge::start(&config(PROXY, backend.addr));
    let rt = runtime();
    rt.block_on(async {
        let n = 3 * 1024 * 1024 + 17;
        let r = send(
            edge.addr,
            request(
                &edge,
                "GET",
                "api",
                &format!("/prod/echo/bytes?n={n}"),
                &[("x-request-id", "big-response")],
                Bytes::new(),
            ),
        )
        .await
        .unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.body.len(), n);
        assert_eq!(checksum(&r.body), checksum(&pattern_body(n, 99)));
        assert_eq!(r.header("content-type"), Some("application/octet-stream"));

        // HEAD: the backend's headers, no body.
        let r = send(
            edge.addr,
            request(&edge, "HEAD", "api", "/prod/echo/head", &[], Bytes::new()),
        )
        .await
        .unwrap();
        assert_eq!(r.status, 200);
        assert!(r.body.is_empty());
        assert_eq!(r.header("x-backend-only"), Some("yes"));

        // The host's API label is matched case-insensitively.
        let r = send(
            edge.addr,
            Request::builder()
                .uri("/prod/echo/case")
                .header(
                    "host",
                    format!("API.Portico.Localhost:{}", edge.addr.port()),
                )
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.json()["path"], "/case");
    });
    // The access log counts the streamed bytes.
    let line = edge
        .stdout
        .wait_for(Duration::from_secs(3), |l| l.contains("big-response"))
        .expect("no access log line");
    let l: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(l["responseLength"], 3 * 1024 * 1024 + 17, "{l}");
}

#[test]
fn curl_uploads_with_expect_100_continue_arrive_intact() {
    let backend = Backend::start();
    let edge = Edge::start(&config(PROXY, backend.addr));
    let dir = common::TempDir::new("portico-upload");
    let file = dir.path().join("upload.bin");
    let data = pattern_body(3 * 1024 * 1024 + 5, 0xfeed);
    std::fs::write(&file, &data).unwrap();
    // curl sends `Expect: 100-continue` for bodies over 1 MiB and waits for the interim answer.
    let out = common::run_bounded(
        std::process::Command::new("curl")
            .arg("-sS")
            .arg("--max-time")
            .arg("8")
            .arg("-H")
            .arg("Expect: 100-continue")
            .arg("--data-binary")
            .arg(format!("@{}", file.display()))
            .arg(edge.url("api", "/prod/echo/curl-upload")),
        Duration::from_secs(10),
    )
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "curl failed: {} {stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    let echo: serde_json::Value =
        serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("not the echo ({e}): {stdout}"));
    assert_eq!(echo["method"], "POST");
    assert_eq!(echo["bodyLength"], data.len());
    assert_eq!(echo["checksum"], checksum(&data));
}

#[test]
fn h2_bodies_over_the_limit_get_413() {
    let backend = Backend::start();
    let edge = Edge::builder(&config(PROXY, backend.addr))
        .arg("--max-body-bytes", &LIMIT.to_string())
        .start();
    let rt = runtime();
    rt.block_on(async {
        let resps = send_h2(
            edge.addr,
            vec![
                Request::builder()
                    .method("POST")
                    .uri(edge.url("api", "/prod/echo/h2-big"))
                    .body(Full::new(Bytes::from(pattern_body(LIMIT + 1, 3))))
                    .unwrap(),
                Request::builder()
                    .method("POST")
                    .uri(edge.url("api", "/prod/echo/h2-ok"))
                    .body(Full::new(Bytes::from(pattern_body(LIMIT, 3))))
                    .unwrap(),
            ],
        )
        .await
        .unwrap();
        assert_eq!(resps[0].status, 413, "{}", resps[0].text());
        assert_eq!(resps[0].json()["type"], "REQUEST_TOO_LARGE");
        assert_eq!(resps[1].status, 200, "{}", resps[1].text());
        assert_eq!(resps[1].json()["bodyLength"], LIMIT);
    });
}

/// RFC 9110 §5.3: several `X-Forwarded-For` fields are one comma-separated list; every earlier
/// hop must survive, in order, before the client's own address.
#[test]
fn every_x_forwarded_for_field_is_kept() {
    let backend = Backend::start();
    let edge = Edge::start(&config(PROXY, backend.addr));
    let rt = runtime();
    rt.block_on(async {
        let r = send(
            edge.addr,
            request(
                &edge,
                "GET",
                "api",
                "/prod/echo/xff",
                &[
                    ("x-forwarded-for", "203.0.113.7"),
                    ("x-forwarded-for", "198.51.100.9"),
                ],
                Bytes::new(),
            ),
        )
        .await
        .unwrap();
        assert_eq!(
            header(&r.json(), "x-forwarded-for"),
            Some("203.0.113.7, 198.51.100.9, 127.0.0.1")
        );
    });
}

#[test]
fn backends_that_close_or_keep_connections_both_work_back_to_back() {
    let backend = Backend::start();
    let edge = Edge::builder(&config(PROXY, backend.addr))
        .workers(1)
        .start();
    let rt = runtime();
    rt.block_on(async {
        // One client connection, so every request lands on the same worker and its pool.
        let tcp = tokio::net::TcpStream::connect(edge.addr).await.unwrap();
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
                .await
                .unwrap();
        tokio::spawn(conn);
        for i in 0..60 {
            let path = if i % 3 == 0 {
                "/prod/echo/close"
            } else {
                "/prod/echo/keep"
            };
            sender.ready().await.unwrap();
            let resp = sender
                .send_request(request(&edge, "GET", "api", path, &[], Bytes::new()))
                .await
                .unwrap_or_else(|e| panic!("request {i} ({path}): {e}"));
            let status = resp.status();
            let body = http_body_util::BodyExt::collect(resp.into_body())
                .await
                .unwrap()
                .to_bytes();
            assert_eq!(
                status,
                200,
                "request {i} ({path}): {}",
                String::from_utf8_lossy(&body)
            );
        }
    });
    assert_eq!(backend.seen().len(), 60);
}

#[test]
fn a_restarted_backend_is_reached_without_errors() {
    let backend = Backend::start();
    let port = backend.addr.port();
    let edge = Edge::builder(&config(PROXY, backend.addr))
        .workers(1)
        .start();
    let rt = runtime();
    // Warm the edge's pool with a few keep-alive connections.
    rt.block_on(async {
        for _ in 0..5 {
            let r = common::get(&edge, "api", "/prod/echo/warm").await.unwrap();
            assert_eq!(r.status, 200);
        }
    });
    // The backend goes away (its connections close) and comes back on the same port.
    drop(backend);
    std::thread::sleep(Duration::from_millis(100));
    let backend = Backend::start_on(port);
    rt.block_on(async {
        for i in 0..5 {
            let r = common::get(&edge, "api", "/prod/echo/again").await.unwrap();
            assert_eq!(r.status, 200, "request {i} after the restart: {}", r.text());
        }
    });
    assert_eq!(backend.seen().len(), 5);
}
