//! The edge's own HTTP/1.1 server against raw TCP and curl: pipelining, `Expect:
//! 100-continue`, HTTP/1.0 keep-alive rules, HEAD, framing errors answered 400, and the head
//! limits (431, the header-read timeout).

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::{Backend, Edge, RawResponse, config, connect, parse_raw_response, wait_for_close};

const PROXY: &str = r#"
apis:
  - id: api
    kind: http
    routes:
      - key: ANY /echo/{proxy+}
        integration:
          type: http_proxy
          uri: http://${stageVariables.b}/{proxy}
      - key: GET /mock
        integration: { type: mock, body: mocked }
    stages:
      - name: prod
        variables:
          b: "{B}"
"#;

/// Reads `n` responses with content-length bodies, keeping what follows each one.
fn read_responses(tcp: &mut TcpStream, n: usize) -> Vec<RawResponse> {
    let mut raw = Vec::new();
    let mut out = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    while out.len() < n {
        if let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map_or(0, |v| v.trim().parse().unwrap());
            if raw.len() >= end + 4 + len {
                out.push(parse_raw_response(&raw[..end + 4 + len]).unwrap());
                raw.drain(..end + 4 + len);
                continue;
            }
        }
        let got = tcp.read(&mut chunk).expect("read");
        assert!(
            got > 0,
            "closed after {} responses: {:?}",
            out.len(),
            String::from_utf8_lossy(&raw)
        );
        raw.extend_from_slice(&chunk[..got]);
    }
    assert!(raw.is_empty(), "more than asked for: {raw:?}");
    out
}

/// Reads one response that ends the connection: it says `Connection: close`, then closes.
fn read_final_response(tcp: &mut TcpStream) -> RawResponse {
    let r = read_responses(tcp, 1).remove(0);
    assert_eq!(r.header("connection"), Some("close"), "status {}", r.status);
    wait_for_close(tcp, Duration::from_secs(3))
        .unwrap_or_else(|e| panic!("not closed after the {}: {e}", r.status));
    r
}

fn edge_and_backend() -> (Edge, Backend) {
    let backend = Backend::start();
    let edge = Edge::start(&config(PROXY, backend.addr));
    (edge, backend)
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let (edge, _backend) = edge_and_backend();
    let host = edge.host("api");
    let mut tcp = connect(edge.addr, Duration::from_secs(5));
    let mut burst = String::new();
    for i in 0..5 {
        burst.push_str(&format!(
            "POST /prod/echo/p{i} HTTP/1.1\r\nHost: {host}\r\nx-request-id: pipe-{i}\r\nContent-Length: {}\r\n\r\nbody{i}",
            5
        ));
        burst.push_str(&format!(
            "GET /prod/mock HTTP/1.1\r\nHost: {host}\r\nx-request-id: mock-{i}\r\n\r\n"
        ));
    }
    tcp.write_all(burst.as_bytes()).unwrap();
    let responses = read_responses(&mut tcp, 10);
    for i in 0..5 {
        let echo = &responses[2 * i];
        assert_eq!(echo.status, 200);
        assert_eq!(
            echo.header("x-request-id"),
            Some(format!("pipe-{i}").as_str())
        );
        assert_eq!(echo.json()["path"], format!("/p{i}"));
        assert_eq!(echo.json()["bodyLength"], 5);
        let mock = &responses[2 * i + 1];
        assert_eq!(
            mock.header("x-request-id"),
            Some(format!("mock-{i}").as_str())
        );
        assert_eq!(mock.body, b"mocked");
        assert!(mock.header("date").is_some(), "a date field");
    }
}

#[test]
fn expect_100_continue_invites_the_body_only_when_it_is_read() {
    let backend = Backend::start();
    let edge = Edge::builder(&config(PROXY, backend.addr))
        .arg("--max-body-bytes", "1000")
        .start();
    let host = edge.host("api");
    let mut tcp = connect(edge.addr, Duration::from_secs(5));
    write!(
        tcp,
        "PUT /prod/echo/c HTTP/1.1\r\nHost: {host}\r\nExpect: 100-continue\r\nContent-Length: 11\r\n\r\n"
    )
    .unwrap();
    let mut interim = [0u8; 25];
    tcp.read_exact(&mut interim).unwrap();
    assert_eq!(&interim, b"HTTP/1.1 100 Continue\r\n\r\n");
    tcp.write_all(b"hello world").unwrap();
    let r = read_responses(&mut tcp, 1).remove(0);
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["bodyLength"], 11);

    // Over the limit: refused at once, no invitation; the connection closes since the body
    // was never read.
    write!(
        tcp,
        "PUT /prod/echo/c HTTP/1.1\r\nHost: {host}\r\nExpect: 100-continue\r\nContent-Length: 5000\r\n\r\n"
    )
    .unwrap();
    assert_eq!(read_final_response(&mut tcp).status, 413);

    // curl sends Expect: 100-continue for large bodies and waits for the invitation.
    let dir = common::TempDir::new("expect");
    let file = dir.path().join("body");
    std::fs::write(&file, vec![b'x'; 900]).unwrap();
    let out = common::run_bounded(
        std::process::Command::new("curl")
            .args(["-sS", "--max-time", "5", "--expect100-timeout", "4"])
            .args(["-H", "Expect: 100-continue", "--data-binary"])
            .arg(format!("@{}", file.display()))
            .arg(edge.url("api", "/prod/echo/curl")),
        Duration::from_secs(10),
    )
    .unwrap();
    assert!(out.status.success(), "{:?}", out);
    let echo: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(echo["bodyLength"], 900);
}

#[test]
fn bad_framing_is_answered_400_and_closes() {
    let (edge, backend) = edge_and_backend();
    let host = edge.host("api");
    let cases = [
        "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
        "Content-Length: 5\r\nContent-Length: 6\r\n",
        "Content-Length: five\r\n",
        "Transfer-Encoding: identity\r\n",
    ];
    for fields in cases {
        let mut tcp = connect(edge.addr, Duration::from_secs(5));
        write!(
            tcp,
            "POST /prod/echo/x HTTP/1.1\r\nHost: {host}\r\n{fields}\r\nhello"
        )
        .unwrap();
        let r = read_responses(&mut tcp, 1).remove(0);
        assert_eq!(r.status, 400, "{fields:?}");
        assert_eq!(r.header("connection"), Some("close"), "{fields:?}");
        wait_for_close(&mut tcp, Duration::from_secs(3)).expect("closed");
    }
    let mut tcp = connect(edge.addr, Duration::from_secs(5));
    tcp.write_all(b"GET /prod/mock HTTP/1.1\r\nHost: x\r\nbad header line\r\n\r\n")
        .unwrap();
    assert_eq!(read_responses(&mut tcp, 1)[0].status, 400);

    // A bad chunk size is found while the body streams: 400 from the gateway.
    let mut tcp = connect(edge.addr, Duration::from_secs(5));
    write!(
        tcp,
        "POST /prod/echo/x HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n"
    )
    .unwrap();
    let r = read_responses(&mut tcp, 1).remove(0);
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["type"], "BAD_REQUEST_BODY");
    assert_eq!(backend.started(), 0, "nothing reached the backend");

    // A chunked body done right passes.
    let mut tcp = connect(edge.addr, Duration::from_secs(5));
    write!(
        tcp,
        "POST /prod/echo/x HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nx-trailer: 1\r\n\r\n"
    )
    .unwrap();
    let r = read_responses(&mut tcp, 1).remove(0);
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["bodyLength"], 11);
}

#[test]
fn http_1_0_closes_unless_asked_to_keep_alive() {
    let (edge, _backend) = edge_and_backend();
    let host = edge.host("api");
    let mut tcp = connect(edge.addr, Duration::from_secs(5));
    write!(tcp, "GET /prod/mock HTTP/1.0\r\nHost: {host}\r\n\r\n").unwrap();
    let mut all = Vec::new();
    tcp.read_to_end(&mut all)
        .expect("closed after the response");
    let r = parse_raw_response(&all).unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.body, b"mocked");

    let mut tcp = connect(edge.addr, Duration::from_secs(5));
    for _ in 0..3 {
        write!(
            tcp,
            "GET /prod/echo/ten HTTP/1.0\r\nHost: {host}\r\nConnection: keep-alive\r\n\r\n"
        )
        .unwrap();
        let r = read_responses(&mut tcp, 1).remove(0);
        assert_eq!(r.status, 200);
        assert_eq!(r.header("connection"), Some("keep-alive"));
    }

    // curl -0 speaks HTTP/1.0.
    let out = common::run_bounded(
        std::process::Command::new("curl")
            .args(["-sS", "-0", "--max-time", "5", "-w", "\n%{http_version}"])
            .arg(edge.url("api", "/prod/echo/curl")),
        Duration::from_secs(10),
    )
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{stdout} {:?}", out.stderr);
    let (json, version) = stdout.rsplit_once('\n').unwrap();
    assert_eq!(version, "1", "curl reports HTTP/1.0 as 1");
    let echo: serde_json::Value = serde_json::from_str(json).unwrap();
    assert_eq!(echo["path"], "/curl");
}

#[test]
fn head_responses_have_no_body_and_keep_the_connection() {
    let (edge, _backend) = edge_and_backend();
    let host = edge.host("api");
    let mut tcp = connect(edge.addr, Duration::from_secs(5));
    write!(tcp, "HEAD /prod/echo/h HTTP/1.1\r\nHost: {host}\r\n\r\n").unwrap();
    let mut raw = Vec::new();
    let mut chunk = [0u8; 4096];
    while !raw.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tcp.read(&mut chunk).unwrap();
        assert!(n > 0, "closed");
        raw.extend_from_slice(&chunk[..n]);
    }
    let head = String::from_utf8_lossy(&raw).to_string();
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(head.ends_with("\r\n\r\n"), "no body after a HEAD: {head:?}");
    // The same connection goes on.
    write!(tcp, "GET /prod/mock HTTP/1.1\r\nHost: {host}\r\n\r\n").unwrap();
    let r = read_responses(&mut tcp, 1).remove(0);
    assert_eq!(r.body, b"mocked");

    // `Connection: close` is honoured.
    write!(
        tcp,
        "GET /prod/mock HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    read_final_response(&mut tcp);
}

#[test]
fn oversized_heads_get_431_and_slow_heads_are_cut_off() {
    let backend = Backend::start();
    let edge = Edge::builder(&config(PROXY, backend.addr))
        .arg("--max-header-bytes", "4096")
        .arg("--header-read-timeout-ms", "300")
        .start();
    let host = edge.host("api");

    let mut tcp = connect(edge.addr, Duration::from_secs(5));
    let big = "a".repeat(5000);
    write!(
        tcp,
        "GET /prod/mock HTTP/1.1\r\nHost: {host}\r\nx-big: {big}\r\n\r\n"
    )
    .unwrap();
    assert_eq!(read_final_response(&mut tcp).status, 431);

    let mut tcp = connect(edge.addr, Duration::from_secs(5));
    let many: String = (0..101).map(|i| format!("x-{i}: 1\r\n")).collect();
    write!(tcp, "GET /prod/mock HTTP/1.1\r\nHost: {host}\r\n{many}\r\n").unwrap();
    assert_eq!(read_responses(&mut tcp, 1)[0].status, 431);

    // Just under the limits: served.
    let mut tcp = connect(edge.addr, Duration::from_secs(5));
    let many: String = (0..98).map(|i| format!("x-{i}: 1\r\n")).collect();
    write!(tcp, "GET /prod/mock HTTP/1.1\r\nHost: {host}\r\n{many}\r\n").unwrap();
    assert_eq!(read_responses(&mut tcp, 1)[0].status, 200);

    // A head that never ends is cut off after the header-read timeout, not the idle one.
    let mut tcp = connect(edge.addr, Duration::from_secs(5));
    write!(tcp, "GET /prod/mock HTTP/1.1\r\nHost: {host}\r\n").unwrap();
    let closed = wait_for_close(&mut tcp, Duration::from_secs(3))
        .unwrap_or_else(|e| panic!("a slow head was not cut: {e}\n{}", edge.stderr.joined()));
    assert!(
        closed >= Duration::from_millis(250),
        "cut after {closed:?}, before the 300 ms header-read timeout"
    );
    // Between requests on a kept-alive connection, the header-read clock does not run.
    let mut tcp = connect(edge.addr, Duration::from_secs(5));
    write!(tcp, "GET /prod/mock HTTP/1.1\r\nHost: {host}\r\n\r\n").unwrap();
    assert_eq!(read_responses(&mut tcp, 1)[0].status, 200);
    std::thread::sleep(Duration::from_millis(600));
    write!(tcp, "GET /prod/mock HTTP/1.1\r\nHost: {host}\r\n\r\n").unwrap();
    assert_eq!(read_responses(&mut tcp, 1)[0].status, 200);
}
