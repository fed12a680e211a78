//! Process life: SIGTERM drains in-flight requests, the drain timeout cuts the rest, idle
//! connections are closed, and `portico dev` answers the curl line it prints.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{
    Backend, Edge, Proc, TempDir, config, connect, free_ports, read_one_response, run_bounded,
    runtime, wait_for_close,
};

const SLOW: &str = r#"
apis:
  - id: life
    kind: http
    routes:
      - key: GET /slow/{ms}
        integration:
          type: http_proxy
          uri: http://${stageVariables.b}/slow?ms={ms}
          timeout_ms: 10000
      - key: GET /fast
        integration:
          type: mock
          body: fast
    stages:
      - name: prod
        variables:
          b: "{B}"
"#;

fn refused(edge: &Edge) -> bool {
    match TcpStream::connect_timeout(&edge.addr, Duration::from_secs(1)) {
        Err(e) => e.kind() == std::io::ErrorKind::ConnectionRefused,
        Ok(_) => false,
    }
}

#[test]
fn sigterm_lets_in_flight_requests_finish_then_exits_zero() {
    let backend = Backend::start();
    let mut edge = Edge::builder(&config(SLOW, backend.addr))
        .arg("--drain-timeout-ms", "5000")
        .start();
    let rt = runtime();
    let in_flight = {
        let req = common::request(&edge, "GET", "life", "/prod/slow/1500", &[], "");
        let addr = edge.addr;
        rt.spawn(async move { common::send(addr, req).await })
    };
    let in_flight_h2 = {
        let req = http::Request::builder()
            .uri(edge.url("life", "/prod/slow/1500"))
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .unwrap();
        let addr = edge.addr;
        rt.spawn(async move { common::send_h2(addr, vec![req]).await })
    };
    // An idle keep-alive connection must not hold the shutdown up.
    let mut idle = connect(edge.addr, Duration::from_secs(5));
    write!(
        idle,
        "GET /prod/fast HTTP/1.1\r\nHost: {}\r\n\r\n",
        edge.host("life")
    )
    .unwrap();
    assert_eq!(read_one_response(&mut idle).unwrap().status, 200);
    assert!(
        backend.wait_started(2, Duration::from_secs(5)),
        "the slow requests never reached the backend"
    );
    let term_at = Instant::now();
    edge.signal("TERM");

    // The idle connection is closed at once, not after the in-flight requests.
    let closed = wait_for_close(&mut idle, Duration::from_millis(700))
        .expect("an idle keep-alive connection stayed open during the drain");
    assert!(closed < Duration::from_millis(700));

    // While the requests drain: no new connections, and /readyz says draining.
    std::thread::sleep(Duration::from_millis(100));
    assert!(
        refused(&edge),
        "a new connection was accepted after SIGTERM"
    );
    let (ready, body) = edge.ops_get("/readyz");
    assert_eq!(ready, 503, "readyz while draining: {body}");
    assert!(
        edge.wait_exit(Duration::from_millis(1)).is_none(),
        "exited with a request in flight"
    );

    let resp = rt
        .block_on(async { tokio::time::timeout(Duration::from_secs(10), in_flight).await })
        .expect("the in-flight request did not finish")
        .expect("task")
        .expect("the in-flight request failed");
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.json()["path"], "/slow");
    assert!(
        term_at.elapsed() >= Duration::from_millis(1000),
        "answered too early to have been in flight"
    );
    let h2 = rt
        .block_on(async { tokio::time::timeout(Duration::from_secs(10), in_flight_h2).await })
        .expect("the in-flight h2 request did not finish")
        .expect("task")
        .expect("the in-flight h2 request failed");
    assert_eq!(h2[0].status, 200, "{}", h2[0].text());

    let status = edge
        .wait_exit(Duration::from_secs(5))
        .expect("the edge did not exit after draining");
    assert!(status.success(), "exit status {status}");
    assert!(term_at.elapsed() < Duration::from_secs(4));
    assert!(refused(&edge), "a connection was accepted after exit");
    // The in-flight request was access-logged before exit.
    assert!(
        edge.stdout
            .wait_for(Duration::from_secs(1), |l| l
                .contains("\"/prod/slow/1500\"")
                && l.contains("\"status\":200"))
            .is_some(),
        "no access log line for the drained request:\n{}",
        edge.stdout.joined()
    );
}

#[test]
fn the_drain_timeout_bounds_shutdown() {
    let backend = Backend::start();
    let mut edge = Edge::builder(&config(SLOW, backend.addr))
        .arg("--drain-timeout-ms", "300")
        .start();
    let rt = runtime();
    let in_flight = {
        let req = common::request(&edge, "GET", "life", "/prod/slow/5000", &[], "");
        let addr = edge.addr;
        rt.spawn(async move { common::send(addr, req).await })
    };
    assert!(backend.wait_started(1, Duration::from_secs(5)));
    let term_at = Instant::now();
    edge.signal("TERM");
    let status = edge
        .wait_exit(Duration::from_secs(4))
        .expect("the edge outlived its drain timeout");
    let took = term_at.elapsed();
    assert!(status.success(), "exit status {status}");
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_secs(3),
        "exited {took:?} after SIGTERM with a 300 ms drain timeout"
    );
    let result = rt
        .block_on(async { tokio::time::timeout(Duration::from_secs(5), in_flight).await })
        .expect("the cut request did not end")
        .expect("task");
    assert!(
        result.is_err() || result.as_ref().is_ok_and(|r| r.status != 200),
        "a request cut by the drain timeout cannot succeed: {result:?}"
    );
}

#[test]
fn idle_keep_alive_connections_are_closed() {
    let backend = Backend::start();
    let edge = Edge::builder(&config(SLOW, backend.addr))
        .arg("--idle-timeout-ms", "300")
        .start();
    let host = edge.host("life");
    let ask = |tcp: &mut TcpStream| {
        write!(tcp, "GET /prod/fast HTTP/1.1\r\nHost: {host}\r\n\r\n").unwrap();
        let r = read_one_response(tcp).unwrap();
        assert_eq!((r.status, r.body.as_slice()), (200, &b"fast"[..]));
    };

    // A keep-alive connection that goes quiet after one request.
    let mut tcp = connect(edge.addr, Duration::from_secs(5));
    ask(&mut tcp);
    let closed_after = wait_for_close(&mut tcp, Duration::from_secs(2))
        .expect("the idle connection was not closed within 2 s");
    assert!(
        closed_after >= Duration::from_millis(200),
        "closed after {closed_after:?}: sooner than the 300 ms idle timeout"
    );

    // A connection that never sends a byte.
    let mut tcp = connect(edge.addr, Duration::from_secs(5));
    wait_for_close(&mut tcp, Duration::from_secs(2))
        .expect("a connection without a request was not closed within 2 s");

    // An h2c connection that goes quiet after a request is closed too.
    let rt = runtime();
    let closed_after = rt.block_on(async {
        let tcp = tokio::net::TcpStream::connect(edge.addr).await.unwrap();
        let (mut sender, conn) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(tcp),
        )
        .await
        .unwrap();
        let conn = tokio::spawn(conn);
        let req = http::Request::builder()
            .uri(edge.url("life", "/prod/fast"))
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .unwrap();
        let resp = sender.send_request(req).await.unwrap();
        assert_eq!(resp.status(), 200);
        let _ = http_body_util::BodyExt::collect(resp.into_body()).await;
        let idle_since = Instant::now();
        tokio::time::timeout(Duration::from_secs(2), conn)
            .await
            .map(|_| idle_since.elapsed())
    });
    let closed_after = closed_after.expect("the idle h2c connection was not closed within 2 s");
    assert!(
        closed_after >= Duration::from_millis(200),
        "{closed_after:?}"
    );

    // A busy connection is not idle: 12 requests 100 ms apart, all on one connection.
    let mut tcp = connect(edge.addr, Duration::from_secs(5));
    for _ in 0..12 {
        ask(&mut tcp);
        std::thread::sleep(Duration::from_millis(100));
    }
    ask(&mut tcp);

    // A request that takes longer than the idle timeout is not idle either.
    let mut tcp = connect(edge.addr, Duration::from_secs(5));
    write!(tcp, "GET /prod/slow/800 HTTP/1.1\r\nHost: {host}\r\n\r\n").unwrap();
    let r = read_one_response(&mut tcp).expect("a slow request was cut by the idle timeout");
    assert_eq!(r.status, 200);
    assert_eq!(edge.metric("portico_connections_total"), 5.0);
    drop(tcp);
    assert_eq!(
        edge.wait_metric("portico_connections_open", 0.0, Duration::from_secs(2)),
        0.0,
        "connections are counted closed"
    );
}

/// Splits a command line the way a shell would for the simple lines the banner prints:
/// whitespace separates, single quotes group.
fn shell_words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut quoted = false;
    let mut in_word = false;
    for c in line.chars() {
        match c {
            '\'' => {
                quoted = !quoted;
                in_word = true;
            }
            c if c.is_whitespace() && !quoted => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            c => {
                word.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        words.push(word);
    }
    words
}

/// Starts `portico dev` on free ports and returns it once its banner's `Try:` line is out.
fn start_dev(data: &TempDir) -> (Proc, u16, String) {
    let mut last = String::new();
    for _ in 0..3 {
        let ports = free_ports(3);
        let listen = format!("127.0.0.1:{}", ports[0]);
        let ops = format!("127.0.0.1:{}", ports[1]);
        let admin = format!("127.0.0.1:{}", ports[2]);
        let dev = Proc::spawn(&[
            "--log-format",
            "json",
            "dev",
            "--listen",
            &listen,
            "--ops-listen",
            &ops,
            "--admin-listen",
            &admin,
            "--data",
            data.path().to_str().unwrap(),
        ]);
        if let Some(line) = dev
            .stdout
            .wait_for(Duration::from_secs(10), |l| l.contains("Try:"))
        {
            return (dev, ports[0], line);
        }
        last = dev.stderr.joined();
        if !last.contains("cannot listen") && !last.contains("Address already in use") {
            break;
        }
    }
    panic!("portico dev printed no Try: line; stderr:\n{last}");
}

#[test]
fn portico_dev_answers_the_curl_line_it_prints() {
    let data = TempDir::new("portico-dev");
    let (dev, port, try_line) = start_dev(&data);
    let command = try_line.split_once("Try:").unwrap().1.trim();
    let words = shell_words(command);
    assert_eq!(words[0], "curl", "{try_line}");
    assert!(
        command.contains(&format!(":{port}/")),
        "the printed line uses the listening port {port}: {try_line}"
    );

    let out = run_bounded(
        std::process::Command::new(&words[0]).args(&words[1..]),
        Duration::from_secs(10),
    )
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{command} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status_line = stdout.lines().next().unwrap_or_default();
    assert!(
        status_line.starts_with("HTTP/1.1 200"),
        "{command} answered {status_line:?}:\n{stdout}"
    );
    assert!(stdout.contains("Hello from Portico"), "{stdout}");
    assert!(
        stdout.to_ascii_lowercase().contains("x-request-id:"),
        "{stdout}"
    );

    // The banner's echo line works too, through the built-in echo backend.
    let echo_line = dev
        .stdout
        .wait_for(Duration::from_secs(2), |l| l.contains("Echo:"))
        .expect("no Echo: line in the banner");
    let words = shell_words(echo_line.split_once("Echo:").unwrap().1.trim());
    let out = run_bounded(
        std::process::Command::new(&words[0]).args(&words[1..]),
        Duration::from_secs(10),
    )
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(stdout.starts_with("HTTP/1.1 200"), "{stdout}");
    let body = stdout.rsplit_once("\n").map(|(_, b)| b).unwrap_or_default();
    let echo: serde_json::Value = serde_json::from_str(body)
        .unwrap_or_else(|e| panic!("echo body is not JSON ({e}): {stdout}"));
    assert_eq!(echo["body"], "hello", "{echo}");
    assert_eq!(echo["query"], "q=1", "{echo}");

    // The banner's metrics line shows both requests.
    let metrics_line = dev
        .stdout
        .wait_for(Duration::from_secs(2), |l| l.contains("Metrics:"))
        .expect("no Metrics: line in the banner");
    let words = shell_words(metrics_line.split_once("Metrics:").unwrap().1.trim());
    let series = "portico_requests_total{api=\"demo\",stage=\"dev\"} 2";
    let deadline = Instant::now() + Duration::from_secs(3);
    let metrics = loop {
        let out = run_bounded(
            std::process::Command::new(&words[0]).args(&words[1..]),
            Duration::from_secs(10),
        )
        .unwrap();
        let metrics = String::from_utf8_lossy(&out.stdout).into_owned();
        if metrics.contains(series) || Instant::now() > deadline {
            break metrics;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(metrics.contains(series), "{metrics}");

    // The admin token was written to the data directory, and the CLI finds it there to read
    // the demo API back from the dev control node.
    assert!(data.path().join("admin.token").is_file());
    let admin_line = dev
        .stdout
        .wait_for(Duration::from_secs(1), |l| l.contains("Admin:"))
        .expect("an Admin: line");
    let admin = admin_line
        .split("http://")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .expect("the admin address");
    let out = run_bounded(
        std::process::Command::new(env!("CARGO_BIN_EXE_portico"))
            .args([
                "get",
                "apis",
                "--output",
                "json",
                "--server",
                admin,
                "--dev-data",
            ])
            .arg(data.path())
            .env_remove("PORTICO_TOKEN"),
        Duration::from_secs(10),
    )
    .unwrap();
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{listed}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(listed.contains("\"id\": \"demo\""), "{listed}");
    drop(dev);
}
