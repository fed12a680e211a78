//! The edge's HTTP/1.1 backend client against a scripted raw-TCP backend: body framings
//! (chunked, close-delimited), connection reuse, pooled connections the backend closes, and
//! backends that break the protocol.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::time::Duration;

use common::{Edge, config, get, runtime};

const PROXY: &str = r#"
apis:
  - id: api
    kind: http
    routes:
      - key: ANY /{proxy+}
        integration:
          type: http_proxy
          uri: http://{B}/{proxy}
    stages:
      - name: s
"#;

/// A backend that answers each path with a fixed script, written by hand so that it can do
/// what well-behaved servers do not. Counts the connections it accepted.
struct Scripted {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
}

impl Scripted {
    fn start() -> Scripted {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        std::thread::spawn(move || {
            for tcp in listener.incoming().flatten() {
                count.fetch_add(1, SeqCst);
                std::thread::spawn(move || serve(tcp));
            }
        });
        Scripted { addr, accepted }
    }

    fn accepted(&self) -> usize {
        self.accepted.load(SeqCst)
    }
}

/// Reads one request head (requests here have no body); `None` when the peer closed.
fn read_head(tcp: &mut TcpStream) -> Option<String> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match tcp.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => return None,
        }
    }
    Some(String::from_utf8_lossy(&head).into_owned())
}

fn serve(mut tcp: TcpStream) {
    let pause = || std::thread::sleep(Duration::from_millis(20));
    // Set by /arm: the next request on this connection is read and left unanswered.
    let mut armed = false;
    while let Some(head) = read_head(&mut tcp) {
        if armed {
            return;
        }
        let path = head.split_whitespace().nth(1).unwrap_or("").to_string();
        let ok =
            |tcp: &mut TcpStream| tcp.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok");
        let result = match path.as_str() {
            "/chunked" => (|| {
                tcp.write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n4\r\nab")?;
                pause();
                tcp.write_all(b"cd\r\n6;ext=1\r\nefghij\r")?;
                pause();
                tcp.write_all(b"\n0\r\nx-trailer: t\r\n\r\n")
            })(),
            "/eof" => {
                let _ = (|| {
                    tcp.write_all(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\nuntil")?;
                    pause();
                    tcp.write_all(b"-close")
                })();
                return;
            }
            "/keep-then-close" => {
                let _ = ok(&mut tcp);
                // No `Connection: close`: the edge pools the connection, which then goes away.
                return;
            }
            "/arm" => {
                armed = true;
                ok(&mut tcp)
            }
            "/conflicting-length" => tcp
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\nok"),
            "/garbage" => tcp.write_all(b"SPDY/9 what\r\n\r\n"),
            "/huge-head" => {
                let filler = "a".repeat(70 * 1024);
                tcp.write_all(format!("HTTP/1.1 200 OK\r\nx-filler: {filler}\r\n\r\n").as_bytes())
            }
            "/truncated" => {
                let _ = tcp.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n12345");
                return;
            }
            "/no-content" => tcp.write_all(b"HTTP/1.1 204 No Content\r\n\r\n"),
            _ => ok(&mut tcp),
        };
        if result.is_err() {
            return;
        }
    }
}

fn edge_for(backend: &Scripted) -> Edge {
    Edge::builder(&config(PROXY, backend.addr))
        .workers(1)
        .start()
}

#[test]
fn chunked_and_close_delimited_bodies_arrive_whole_and_chunked_connections_are_reused() {
    let backend = Scripted::start();
    let edge = edge_for(&backend);
    let rt = runtime();
    rt.block_on(async {
        for _ in 0..3 {
            let r = get(&edge, "api", "/s/chunked").await.unwrap();
            assert_eq!(r.status, 200);
            assert_eq!(r.text(), "abcdefghij");
        }
        assert_eq!(
            backend.accepted(),
            1,
            "one connection for every chunked response"
        );
        let r = get(&edge, "api", "/s/no-content").await.unwrap();
        assert_eq!(r.status, 204);
        assert_eq!(backend.accepted(), 1, "a 204 leaves the connection usable");

        let r = get(&edge, "api", "/s/eof").await.unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.text(), "until-close");
        let r = get(&edge, "api", "/s/plain").await.unwrap();
        assert_eq!(r.text(), "ok");
    });
}

#[test]
fn pooled_connections_the_backend_closed_are_not_client_errors() {
    let backend = Scripted::start();
    let edge = edge_for(&backend);
    let rt = runtime();
    rt.block_on(async {
        // The backend closes right after each answer; the next request finds the pooled
        // connection closed, noticed or not yet noticed.
        for i in 0..20 {
            let r = get(&edge, "api", "/s/keep-then-close").await.unwrap();
            assert_eq!(r.status, 200, "request {i}: {}", r.text());
            if i % 2 == 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        // The backend reads the next request on a pooled connection and closes without a
        // word: a GET is sent again on a fresh connection.
        let before = backend.accepted();
        let r = get(&edge, "api", "/s/arm").await.unwrap();
        assert_eq!(r.status, 200);
        let r = get(&edge, "api", "/s/after-arm").await.unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.text(), "ok");
        assert_eq!(backend.accepted(), before + 2);
    });
}

#[test]
fn a_request_that_may_have_been_seen_is_not_sent_twice() {
    let backend = Scripted::start();
    let edge = edge_for(&backend);
    let rt = runtime();
    rt.block_on(async {
        let r = get(&edge, "api", "/s/arm").await.unwrap();
        assert_eq!(r.status, 200);
        let before = backend.accepted();
        let req = common::request(&edge, "POST", "api", "/s/post", &[], "");
        let r = common::send(edge.addr, req).await.unwrap();
        assert_eq!(r.status, 502, "{}", r.text());
        assert_eq!(r.json()["type"], "INTEGRATION_FAILURE");
        assert_eq!(backend.accepted(), before, "not sent again");
    });
}

#[test]
fn backends_that_break_the_protocol_get_502_and_the_edge_keeps_serving() {
    let backend = Scripted::start();
    let edge = edge_for(&backend);
    let rt = runtime();
    rt.block_on(async {
        for path in ["/s/conflicting-length", "/s/garbage", "/s/huge-head"] {
            let r = get(&edge, "api", path).await.unwrap();
            assert_eq!(r.status, 502, "{path}: {}", r.text());
            assert_eq!(r.json()["type"], "INTEGRATION_FAILURE", "{path}");
        }
        // The head was sent before the backend broke off: the client's response breaks off
        // too instead of looking complete.
        assert!(get(&edge, "api", "/s/truncated").await.is_err());
        let r = get(&edge, "api", "/s/fine").await.unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.text(), "ok");
    });
}

/// An HTTPS backend (rustls, blocking) with a certificate for `localhost` from a test CA;
/// returns its address and the CA in PEM. It answers every request with the length of the
/// body it read (Content-Length bodies), slowly, so that a large upload fills the socket.
fn tls_backend() -> (SocketAddr, String) {
    let ca_key = rcgen::KeyPair::generate().expect("CA key");
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "portico test backend CA");
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
    ca.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    let ca_pem = ca.self_signed(&ca_key).expect("CA certificate").pem();
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let key = rcgen::KeyPair::generate().expect("backend key");
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .expect("backend params")
        .signed_by(&key, &issuer)
        .expect("backend certificate");
    let key = rustls_pki_types::PrivatePkcs8KeyDer::from(key.serialize_der());
    let _ = rustls::crypto::ring::default_provider().install_default();
    let config = Arc::new(
        rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(vec![cert.der().clone()], key.into())
            .expect("server config"),
    );
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for tcp in listener.incoming().flatten() {
            let config = config.clone();
            std::thread::spawn(move || {
                let conn = rustls::ServerConnection::new(config).expect("TLS session");
                let mut tls = rustls::StreamOwned::new(conn, tcp);
                loop {
                    let mut head = Vec::new();
                    let mut byte = [0u8; 1];
                    while !head.ends_with(b"\r\n\r\n") {
                        match tls.read(&mut byte) {
                            Ok(1) => head.push(byte[0]),
                            _ => return,
                        }
                    }
                    let head = String::from_utf8_lossy(&head).to_lowercase();
                    let length: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length: "))
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(0);
                    let mut body = vec![0u8; length];
                    for piece in body.chunks_mut(16 * 1024) {
                        std::thread::sleep(Duration::from_millis(2));
                        if tls.read_exact(piece).is_err() {
                            return;
                        }
                    }
                    let answer = length.to_string();
                    let response = format!(
                        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{answer}",
                        answer.len()
                    );
                    if tls.write_all(response.as_bytes()).is_err() || tls.flush().is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, ca_pem)
}

#[test]
fn https_backends_get_requests_and_large_bodies_whole() {
    let (addr, ca_pem) = tls_backend();
    let dir = common::TempDir::new("backend-ca");
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca_pem).expect("write CA");
    let config = PROXY.replace("http://{B}", &format!("https://localhost:{}", addr.port()));
    let edge = Edge::builder(&config)
        .workers(1)
        .arg("--backend-ca", &ca_file.display().to_string())
        .start();
    let rt = runtime();
    rt.block_on(async {
        for _ in 0..3 {
            let r = get(&edge, "api", "/s/small").await.unwrap();
            assert_eq!(r.status, 200, "{}", r.text());
            assert_eq!(r.text(), "0");
        }
        // Larger than the socket buffers, so that TLS writes meet a full socket.
        let big = common::pattern_body(9 * 1024 * 1024, 7);
        let req = common::request(&edge, "POST", "api", "/s/upload", &[], big.clone());
        let r = common::send(edge.addr, req).await.unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.text(), big.len().to_string());
        let r = get(&edge, "api", "/s/after").await.unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
    });
}
