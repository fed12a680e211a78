//! Write load for `bench/raft.sh`: the same logical writes to etcd (v3 JSON gateway) or to
//! Portico (admin API), from C clients, each on its own keep-alive HTTP/1.1 connection.
//!
//! Standard library only, so that the script builds it with a bare `rustc -O` and it stays out
//! of the workspace. Every write is a distinct object: a small API definition as JSON (about
//! `--object-bytes` bytes), sent to Portico as `PUT /v1/apis/{id}` and stored in etcd as the
//! value of the key `apis/{id}`. Both answer only after a quorum commit.
//!
//! With `--keys K`, write `i` goes to object `i % K` instead (an update, with content that still
//! differs from write to write), so that the stored state stays small.
//!
//! Latency is measured per write from just before the request is written to the socket to when
//! the whole response has been read. Prints one line of `key=value` figures; exits non-zero only
//! when it cannot run (bad arguments, nothing reachable), never on a threshold.
//!
//! ```text
//! raft_load --system etcd|portico --addr 127.0.0.1:2379 [--token ptk_...] \
//!           --writes 1000 --clients 1 --tag r1s [--object-bytes 300] [--warmup 50] [--keys K]
//! ```

#[path = "cpu.rs"]
mod cpu;
#[path = "http1.rs"]
mod http1;

use cpu::own_cpu_ms;
use std::io::{BufReader, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Clone, Copy, PartialEq)]
enum System {
    Etcd,
    Portico,
}

#[derive(Clone)]
struct Args {
    system: System,
    addr: String,
    token: String,
    writes: u64,
    clients: u64,
    tag: String,
    object_bytes: usize,
    warmup: u64,
    /// 0: every write is a new object; K: writes cycle over K objects.
    keys: u64,
}

fn usage(msg: &str) -> ! {
    eprintln!("raft_load: {msg}");
    eprintln!(
        "usage: raft_load --system etcd|portico --addr HOST:PORT [--token T] --writes N --clients C --tag T [--object-bytes B] [--warmup W] [--keys K]"
    );
    std::process::exit(2);
}

fn parse_args() -> Args {
    let mut a = Args {
        system: System::Etcd,
        addr: String::new(),
        token: String::new(),
        writes: 1000,
        clients: 1,
        tag: "t".into(),
        object_bytes: 300,
        warmup: 50,
        keys: 0,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it
            .next()
            .unwrap_or_else(|| usage(&format!("{flag} needs a value")));
        let number = |v: &str| {
            v.parse::<u64>()
                .unwrap_or_else(|_| usage(&format!("{flag}: {v}")))
        };
        match flag.as_str() {
            "--system" => {
                a.system = match value.as_str() {
                    "etcd" => System::Etcd,
                    "portico" => System::Portico,
                    other => usage(&format!("unknown system {other}")),
                }
            }
            "--addr" => a.addr = value,
            "--token" => a.token = value,
            "--writes" => a.writes = number(&value),
            "--clients" => a.clients = number(&value).max(1),
            "--tag" => a.tag = value,
            "--object-bytes" => a.object_bytes = number(&value) as usize,
            "--warmup" => a.warmup = number(&value),
            "--keys" => a.keys = number(&value),
            other => usage(&format!("unknown flag {other}")),
        }
    }
    if a.addr.is_empty() {
        usage("--addr is required");
    }
    if a.system == System::Portico && a.token.is_empty() {
        usage("--token is required for portico");
    }
    if !a
        .tag
        .bytes()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
    {
        usage("--tag must be lowercase letters and digits");
    }
    a
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

fn base64(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(B64[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The object of write `i`: an API definition as JSON, padded to about `bytes` bytes. Its id is
/// `i`'s, or with `keys` > 0 that of `i % keys`; the content always differs per write.
fn object(tag: &str, i: u64, keys: u64, bytes: usize) -> (String, String) {
    let slot = if keys > 0 { i % keys } else { i };
    let id = format!("b{tag}-{slot:07}");
    let fill = format!("{id} w{i}");
    let head = format!(
        r#"{{"id":"{id}","kind":"http","routes":[{{"key":"GET /x","integration":{{"type":"mock","status":200,"body":""#
    );
    let tail = r#""}}],"stages":[{"name":"s"}]}"#;
    let pad = bytes.saturating_sub(head.len() + tail.len());
    // Deterministic, distinct per write: the id, then filler.
    let mut body = String::with_capacity(pad);
    while body.len() < pad {
        body.push_str(&fill);
        body.push(' ');
    }
    body.truncate(pad);
    (id, format!("{head}{body}{tail}"))
}

fn request(args: &Args, i: u64) -> Vec<u8> {
    let (id, json) = object(&args.tag, i, args.keys, args.object_bytes);
    let (method, path, body, auth) = match args.system {
        System::Etcd => {
            let body = format!(
                r#"{{"key":"{}","value":"{}"}}"#,
                base64(format!("apis/{id}").as_bytes()),
                base64(json.as_bytes())
            );
            ("POST", "/v3/kv/put".to_string(), body, String::new())
        }
        System::Portico => (
            "PUT",
            format!("/v1/apis/{id}"),
            json,
            format!("Authorization: Bearer {}\r\n", args.token),
        ),
    };
    format!(
        "{method} {path} HTTP/1.1\r\nHost: {}\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        args.addr,
        body.len()
    )
    .into_bytes()
}

struct Conn {
    reader: BufReader<TcpStream>,
}

impl Conn {
    fn open(addr: &str) -> std::io::Result<Conn> {
        let stream = TcpStream::connect(addr)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        Ok(Conn {
            reader: BufReader::with_capacity(64 * 1024, stream),
        })
    }

    /// Sends one request and reads the whole response; returns the status and the body.
    fn exchange(&mut self, req: &[u8]) -> std::io::Result<(u16, Vec<u8>)> {
        self.reader.get_mut().write_all(req)?;
        let (status, body, close) = http1::read_response(&mut self.reader)?;
        let bad = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_string());
        if close {
            return Err(bad("the server closed the connection"));
        }
        Ok((status, body))
    }
}

struct Outcome {
    latencies_ns: Vec<u64>,
    errors: u64,
    first_error: Option<String>,
}

/// One client: its own connection; takes write numbers from `next` until `end`.
fn client(args: &Args, next: &AtomicU64, end: u64) -> Outcome {
    let mut out = Outcome {
        latencies_ns: Vec::new(),
        errors: 0,
        first_error: None,
    };
    let mut conn: Option<Conn> = None;
    loop {
        let i = next.fetch_add(1, Ordering::Relaxed);
        if i >= end {
            return out;
        }
        let req = request(args, i);
        if conn.is_none() {
            match Conn::open(&args.addr) {
                Ok(c) => conn = Some(c),
                Err(e) => {
                    out.errors += 1;
                    out.first_error.get_or_insert(format!("connect: {e}"));
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                }
            }
        }
        let c = conn.as_mut().expect("connected above");
        let start = Instant::now();
        let result = c.exchange(&req);
        let took = start.elapsed();
        match result {
            Ok((status, _)) if (200..300).contains(&status) => {
                out.latencies_ns.push(took.as_nanos() as u64);
            }
            Ok((status, body)) => {
                out.errors += 1;
                out.first_error.get_or_insert(format!(
                    "HTTP {status}: {}",
                    String::from_utf8_lossy(&body[..body.len().min(300)])
                ));
            }
            Err(e) => {
                out.errors += 1;
                out.first_error.get_or_insert(e.to_string());
                conn = None;
            }
        }
    }
}

/// Runs writes `[first, first + count)` with `clients` clients.
fn run(args: &Args, first: u64, count: u64, clients: u64) -> (Outcome, Duration) {
    let next = Arc::new(AtomicU64::new(first));
    let merged = Arc::new(Mutex::new(Outcome {
        latencies_ns: Vec::with_capacity(count as usize),
        errors: 0,
        first_error: None,
    }));
    let start = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..clients {
            let next = next.clone();
            let merged = merged.clone();
            s.spawn(move || {
                let o = client(args, &next, first + count);
                let mut m = merged.lock().unwrap_or_else(|e| e.into_inner());
                m.latencies_ns.extend(o.latencies_ns);
                m.errors += o.errors;
                if m.first_error.is_none() {
                    m.first_error = o.first_error;
                }
            });
        }
    });
    let elapsed = start.elapsed();
    let outcome = Arc::try_unwrap(merged)
        .ok()
        .expect("all clients joined")
        .into_inner()
        .unwrap_or_else(|e| e.into_inner());
    (outcome, elapsed)
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    // Nearest rank.
    let rank = ((p / 100.0) * sorted.len() as f64).ceil().max(1.0) as usize;
    sorted[rank.min(sorted.len()) - 1] as f64 / 1000.0
}

fn main() {
    let args = parse_args();
    // Warm-up writes (not measured) open the connections and warm both sides' caches.
    let base = 1_000_000;
    if args.warmup > 0 {
        let (w, _) = run(&args, base, args.warmup, args.clients);
        if w.latencies_ns.is_empty() {
            eprintln!(
                "raft_load: no warm-up write succeeded: {}",
                w.first_error.unwrap_or_default()
            );
            std::process::exit(1);
        }
    }
    let (mut o, elapsed) = run(&args, 0, args.writes, args.clients);
    o.latencies_ns.sort_unstable();
    let ok = o.latencies_ns.len();
    let mean = if ok == 0 {
        f64::NAN
    } else {
        o.latencies_ns.iter().sum::<u64>() as f64 / ok as f64 / 1000.0
    };
    let max = o
        .latencies_ns
        .last()
        .map_or(f64::NAN, |v| *v as f64 / 1000.0);
    println!(
        "system={} clients={} writes={} ok={ok} errors={} p50_us={:.0} p90_us={:.0} p99_us={:.0} mean_us={mean:.0} max_us={max:.0} wps={:.0} elapsed_s={:.3} client_cpu_ms={}",
        match args.system {
            System::Etcd => "etcd",
            System::Portico => "portico",
        },
        args.clients,
        args.writes,
        o.errors,
        percentile(&o.latencies_ns, 50.0),
        percentile(&o.latencies_ns, 90.0),
        percentile(&o.latencies_ns, 99.0),
        ok as f64 / elapsed.as_secs_f64(),
        elapsed.as_secs_f64(),
        own_cpu_ms(),
    );
    if let Some(e) = o.first_error {
        eprintln!("raft_load: {} errors; the first: {e}", o.errors);
    }
}
