//! Measurements for `bench/propagation.sh`: config propagation from the control plane to edges,
//! and an edge's cold start from its last-known-good file.
//!
//! Standard library only, so that the script builds it with a bare `rustc -O` and it stays out
//! of the workspace (like `bench/raft_load.rs`).
//!
//! `seed`: creates `--apis K` APIs (`PUT /v1/apis/{id}`), so that the measured writes update a
//! store of a fixed size.
//!
//! `propagate`: sequential writes, one at a time, each `PUT /v1/apis/{id}` on one keep-alive
//! HTTP/1.1 connection to the admin API. When the write's answer has been read (the
//! acknowledgement, time A), its `revision` R is taken from the answer, and every edge is asked
//! `GET /status?wait_revision=R`: a long poll that answers as soon as the edge serves revision R
//! or later (at once if it already does; after 30 s at most). Each edge has its own keep-alive
//! connection to its ops listener; the main thread writes the requests to all of them right
//! after A, and one thread per connection, blocked reading, takes the time its answer has been
//! read. The write's propagation time is the time of the last edge's answer minus A. The next
//! write starts after that. With `--apis K` write `i` replaces API `i % K` (content that differs
//! on every write); with 0 every write creates a new API.
//!
//! Printed per run: the propagation time (`p50_us` ... of the last edge), `first_` (the first
//! edge to answer), `ack_` (the write itself: request sent to acknowledgement read),
//! `dispatch_` (A to the last request written: this client's own delay), `late` (writes for
//! which some edge did not serve R within the 30 s bound), `client_cpu_ms` (this process,
//! warm-up included); then per label, every edge answer's own time (`edge_`) and how often the
//! slowest edge had that label (`slowest_in`).
//!
//! `coldstart`: starts the given edge command `--reps` times (the control plane is down, the
//! data directory holds a last-known-good file), and measures from just before the process is
//! spawned to the end of the first `200` answer to a proxied request on its public listener
//! (polled: a connection attempt every `--poll-us`); then kills the process (SIGKILL) and waits
//! for it. A backend for the proxied route runs in this process (`--backend`).
//!
//! Each mode prints `key=value` figures (latency in microseconds); it exits non-zero only when
//! it cannot run (bad arguments, nothing reachable, an edge that stops answering), never on a
//! threshold.
//!
//! ```text
//! propagation_load seed --admin HOST:PORT --token ptk_... --apis 100 [--object-bytes 300]
//! propagation_load propagate --admin HOST:PORT --token ptk_... --edges FILE --writes 300 \
//!                  --warmup 20 --tag p10 [--apis 100] [--object-bytes 300]
//!     (FILE: one edge per line: `OPS_HOST:PORT LABEL`, LABEL e.g. the control node it syncs from)
//! propagation_load coldstart --listen HOST:PORT --host cold.portico.localhost --path /s/x \
//!                  --expect ok --backend HOST:PORT --reps 20 [--poll-us 250] [--log FILE] \
//!                  -- /path/to/portico edge ...
//! ```

#[path = "cpu.rs"]
mod cpu;
#[path = "http1.rs"]
mod http1;

use cpu::own_cpu_ms;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

fn usage(msg: &str) -> ! {
    eprintln!("propagation_load: {msg}");
    eprintln!(
        "usage: propagation_load seed|propagate|coldstart [flags] (see the comment at the top of bench/propagation_load.rs)"
    );
    std::process::exit(2);
}

fn fail(msg: &str) -> ! {
    eprintln!("propagation_load: {msg}");
    std::process::exit(1);
}

#[derive(Default)]
struct Args {
    admin: String,
    token: String,
    edges: String,
    writes: u64,
    warmup: u64,
    tag: String,
    apis: u64,
    object_bytes: usize,
    listen: String,
    host: String,
    path: String,
    expect: String,
    backend: String,
    reps: u64,
    poll_us: u64,
    log: String,
    command: Vec<String>,
}

fn parse_args(mut it: impl Iterator<Item = String>) -> Args {
    let mut a = Args {
        writes: 300,
        warmup: 20,
        tag: "p".into(),
        apis: 100,
        object_bytes: 300,
        reps: 20,
        poll_us: 250,
        ..Args::default()
    };
    while let Some(flag) = it.next() {
        if flag == "--" {
            a.command = it.by_ref().collect();
            break;
        }
        let value = it
            .next()
            .unwrap_or_else(|| usage(&format!("{flag} needs a value")));
        let number = |v: &str| {
            v.parse::<u64>()
                .unwrap_or_else(|_| usage(&format!("{flag}: {v}")))
        };
        match flag.as_str() {
            "--admin" => a.admin = value,
            "--token" => a.token = value,
            "--edges" => a.edges = value,
            "--writes" => a.writes = number(&value),
            "--warmup" => a.warmup = number(&value),
            "--tag" => a.tag = value,
            "--apis" => a.apis = number(&value),
            "--object-bytes" => a.object_bytes = number(&value) as usize,
            "--listen" => a.listen = value,
            "--host" => a.host = value,
            "--path" => a.path = value,
            "--expect" => a.expect = value,
            "--backend" => a.backend = value,
            "--reps" => a.reps = number(&value),
            "--poll-us" => a.poll_us = number(&value),
            "--log" => a.log = value,
            other => usage(&format!("unknown flag {other}")),
        }
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

// ---------------------------------------------------------------------------------------------
// HTTP/1.1 on one keep-alive connection
// ---------------------------------------------------------------------------------------------

struct Conn {
    reader: BufReader<TcpStream>,
}

impl Conn {
    fn open(addr: &str, timeout: Duration) -> std::io::Result<Conn> {
        let stream = TcpStream::connect(addr)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(timeout))?;
        Ok(Conn {
            reader: BufReader::with_capacity(64 * 1024, stream),
        })
    }

    fn send(&mut self, req: &[u8]) -> std::io::Result<()> {
        self.reader.get_mut().write_all(req)
    }

    /// Reads one whole response; returns the status, the body and whether the server will
    /// close the connection.
    fn read_response(&mut self) -> std::io::Result<(u16, Vec<u8>, bool)> {
        http1::read_response(&mut self.reader)
    }
}

/// The number under the top-level key `key` of a JSON object (a small scanner: strings and
/// nesting are tracked, nothing else is validated).
fn top_level_u64(json: &[u8], key: &str) -> Option<u64> {
    let mut depth = 0usize;
    let mut i = 0;
    while i < json.len() {
        match json[i] {
            b'{' | b'[' => depth += 1,
            b'}' | b']' => depth = depth.saturating_sub(1),
            b'"' => {
                let start = i + 1;
                i += 1;
                while i < json.len() && json[i] != b'"' {
                    if json[i] == b'\\' {
                        i += 1;
                    }
                    i += 1;
                }
                let name = &json[start..i.min(json.len())];
                if depth == 1 && name == key.as_bytes() {
                    let mut j = i + 1;
                    while j < json.len() && json[j].is_ascii_whitespace() {
                        j += 1;
                    }
                    if j < json.len() && json[j] == b':' {
                        j += 1;
                        while j < json.len() && json[j].is_ascii_whitespace() {
                            j += 1;
                        }
                        let digits: String = json[j..]
                            .iter()
                            .take_while(|c| c.is_ascii_digit())
                            .map(|&c| c as char)
                            .collect();
                        return digits.parse().ok();
                    }
                }
            }
            _ => {}
        }
        i += 1;
    }
    None
}

fn lossy(body: &[u8]) -> String {
    String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned()
}

// ---------------------------------------------------------------------------------------------
// Writes
// ---------------------------------------------------------------------------------------------

/// The body of write `i`: an API definition as JSON, about `bytes` bytes, with a mock route
/// whose body differs on every write. Its id is `b-{slot}` (`slot` = `i % apis`, or `i`).
fn api_write(tag: &str, i: u64, apis: u64, bytes: usize) -> (String, String) {
    let slot = if apis > 0 { i % apis } else { i };
    let id = if apis > 0 {
        format!("b-{slot:05}")
    } else {
        format!("b{tag}-{slot:07}")
    };
    let fill = format!("{id} {tag} w{i}");
    let head = format!(
        r#"{{"id":"{id}","kind":"http","routes":[{{"key":"GET /x","integration":{{"type":"mock","status":200,"body":""#
    );
    let tail = r#""}}],"stages":[{"name":"prod"}]}"#;
    let pad = bytes.saturating_sub(head.len() + tail.len());
    let mut body = String::with_capacity(pad + fill.len());
    while body.len() < pad {
        body.push_str(&fill);
        body.push(' ');
    }
    body.truncate(pad.max(fill.len()));
    (id, format!("{head}{body}{tail}"))
}

fn put_request(admin: &str, token: &str, id: &str, json: &str) -> Vec<u8> {
    format!(
        "PUT /v1/apis/{id} HTTP/1.1\r\nHost: {admin}\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{json}",
        json.len()
    )
    .into_bytes()
}

/// One write on `conn` (reopened if needed); returns the acknowledged revision.
fn write_api(
    conn: &mut Option<Conn>,
    args: &Args,
    i: u64,
    tag: &str,
) -> Result<(u64, Duration, Instant), String> {
    let (id, json) = api_write(tag, i, args.apis, args.object_bytes);
    let req = put_request(&args.admin, &args.token, &id, &json);
    if conn.is_none() {
        *conn = Some(
            Conn::open(&args.admin, Duration::from_secs(30))
                .map_err(|e| format!("connect to {}: {e}", args.admin))?,
        );
    }
    let c = conn.as_mut().expect("opened above");
    let start = Instant::now();
    let result = c.send(&req).and_then(|_| c.read_response());
    let acked = Instant::now();
    match result {
        Ok((status, body, close)) => {
            if close {
                *conn = None;
            }
            if !(200..300).contains(&status) {
                return Err(format!(
                    "PUT /v1/apis/{id}: HTTP {status}: {}",
                    lossy(&body)
                ));
            }
            let revision = top_level_u64(&body, "revision")
                .ok_or_else(|| format!("no revision in the answer: {}", lossy(&body)))?;
            Ok((revision, acked - start, acked))
        }
        Err(e) => {
            *conn = None;
            Err(format!("PUT /v1/apis/{id}: {e}"))
        }
    }
}

fn seed(args: &Args) {
    if args.admin.is_empty() || args.token.is_empty() {
        usage("seed needs --admin and --token");
    }
    let mut conn = None;
    let mut last = 0;
    for i in 0..args.apis {
        match write_api(&mut conn, args, i, "seed") {
            Ok((revision, _, _)) => last = revision,
            Err(e) => fail(&e),
        }
    }
    println!("seeded={} revision={last}", args.apis);
}

// ---------------------------------------------------------------------------------------------
// Propagation
// ---------------------------------------------------------------------------------------------

/// What an edge's reader thread reports: one answer, or why its connection failed.
struct Answer {
    edge: usize,
    /// Which connection of that edge it came from (reconnecting counts up).
    generation: u64,
    /// When the whole answer had been read (or the read failed).
    done: Instant,
    /// The revision the edge reported serving.
    result: Result<u64, String>,
    /// The server closes the connection after this answer.
    closing: bool,
}

/// One edge's keep-alive connection to its ops listener: the main thread writes the requests,
/// so that they all leave right after the acknowledgement; a thread per connection reads the
/// answers (each blocks until its edge answers) and reports them.
struct EdgeConn {
    writer: TcpStream,
    generation: u64,
    /// Reopen before the next request.
    stale: bool,
}

fn open_edge(
    idx: usize,
    addr: &str,
    generation: u64,
    tx: &mpsc::Sender<Answer>,
) -> Result<EdgeConn, String> {
    let stream = TcpStream::connect(addr).map_err(|e| format!("edge {addr}: connect: {e}"))?;
    stream
        .set_nodelay(true)
        .and_then(|_| stream.set_read_timeout(Some(Duration::from_secs(40))))
        .map_err(|e| format!("edge {addr}: {e}"))?;
    let reader = stream
        .try_clone()
        .map_err(|e| format!("edge {addr}: {e}"))?;
    let tx = tx.clone();
    let name = addr.to_string();
    std::thread::Builder::new()
        .name(format!("edge{idx}"))
        .spawn(move || {
            let mut conn = Conn {
                reader: BufReader::with_capacity(16 * 1024, reader),
            };
            loop {
                let read = conn.read_response();
                let done = Instant::now();
                let (result, closing) = match read {
                    Ok((200, body, close)) => (
                        top_level_u64(&body, "revision")
                            .ok_or_else(|| format!("edge {name}: no revision in {}", lossy(&body))),
                        close,
                    ),
                    Ok((status, body, _)) => (
                        Err(format!("edge {name}: HTTP {status}: {}", lossy(&body))),
                        true,
                    ),
                    Err(e) => (Err(format!("edge {name}: {e}")), true),
                };
                let answer = Answer {
                    edge: idx,
                    generation,
                    done,
                    result,
                    closing,
                };
                if tx.send(answer).is_err() || closing {
                    return;
                }
            }
        })
        .map_err(|e| format!("cannot start a thread: {e}"))?;
    Ok(EdgeConn {
        writer: stream,
        generation,
        stale: false,
    })
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    // Nearest rank.
    let rank = ((p / 100.0) * sorted.len() as f64).ceil().max(1.0) as usize;
    sorted[rank.min(sorted.len()) - 1]
}

fn summary(prefix: &str, mut ns: Vec<u64>) -> String {
    ns.sort_unstable();
    let us = |v: u64| v / 1000;
    let mean = if ns.is_empty() {
        0
    } else {
        ns.iter().sum::<u64>() / ns.len() as u64
    };
    format!(
        "{prefix}p50_us={} {prefix}p90_us={} {prefix}p99_us={} {prefix}max_us={} {prefix}mean_us={}",
        us(percentile(&ns, 50.0)),
        us(percentile(&ns, 90.0)),
        us(percentile(&ns, 99.0)),
        us(ns.last().copied().unwrap_or(0)),
        us(mean),
    )
}

fn propagate(args: &Args) {
    if args.admin.is_empty() || args.token.is_empty() || args.edges.is_empty() {
        usage("propagate needs --admin, --token and --edges");
    }
    let list = std::fs::read_to_string(&args.edges)
        .unwrap_or_else(|e| fail(&format!("cannot read {}: {e}", args.edges)));
    let edges: Vec<(String, String)> = list
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let mut parts = l.split_whitespace();
            let addr = parts.next().unwrap_or_default().to_string();
            let label = parts.next().unwrap_or("-").to_string();
            (addr, label)
        })
        .collect();
    if edges.is_empty() {
        usage("--edges lists no edge");
    }
    let (answers_tx, answers) = mpsc::channel::<Answer>();
    let mut conns = Vec::new();
    for (idx, (addr, _)) in edges.iter().enumerate() {
        conns.push(open_edge(idx, addr, 0, &answers_tx).unwrap_or_else(|e| fail(&e)));
    }
    let mut reconnects = 0u64;
    // (Re)opens edge `i`'s connection and writes `req` on it; returns when it was written.
    let send = |conns: &mut Vec<EdgeConn>, i: usize, req: &[u8], reconnects: &mut u64| {
        for attempt in 0..2 {
            if conns[i].stale {
                let generation = conns[i].generation + 1;
                conns[i] =
                    open_edge(i, &edges[i].0, generation, &answers_tx).unwrap_or_else(|e| fail(&e));
                *reconnects += 1;
            }
            match conns[i].writer.write_all(req) {
                Ok(()) => return Instant::now(),
                Err(_) if attempt == 0 => {
                    conns[i].stale = true;
                }
                Err(e) => fail(&format!("edge {}: {e}", edges[i].0)),
            }
        }
        unreachable!("the second attempt returns or fails")
    };

    let mut admin = None;
    // Per measured write: the last edge's answer, the first edge's, the last request written.
    let mut all_ns = Vec::new();
    let mut first_ns = Vec::new();
    let mut ack_ns = Vec::new();
    let mut dispatch_ns = Vec::new();
    // Per edge answer: its own propagation time, by label.
    let mut per_edge_ns: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    // Which label the slowest edge had, per write.
    let mut slowest_by_label: BTreeMap<String, u64> = BTreeMap::new();
    let mut late = 0u64;
    let mut errors = 0u64;
    let mut first_error = None;
    let started = Instant::now();
    let total = args.warmup + args.writes;
    for n in 0..total {
        let measured = n >= args.warmup;
        // Distinct content per phase (tag) and write.
        let (revision, ack, acked) = match write_api(&mut admin, args, n, &args.tag) {
            Ok(w) => w,
            Err(e) => {
                errors += 1;
                first_error.get_or_insert(e);
                if errors > 10 {
                    fail(&format!(
                        "too many failed writes; the first: {}",
                        first_error.unwrap_or_default()
                    ));
                }
                continue;
            }
        };
        let requests: Vec<Vec<u8>> = edges
            .iter()
            .map(|(addr, _)| {
                format!("GET /status?wait_revision={revision} HTTP/1.1\r\nHost: {addr}\r\n\r\n")
                    .into_bytes()
            })
            .collect();
        let mut last_sent = acked;
        for i in 0..edges.len() {
            last_sent = send(&mut conns, i, &requests[i], &mut reconnects);
        }
        let mut last = acked;
        let mut first: Option<Instant> = None;
        let mut slowest_label = String::new();
        let mut write_late = false;
        let mut answered = vec![false; edges.len()];
        let mut pending = edges.len();
        let mut retried = vec![false; edges.len()];
        while pending > 0 {
            let a = answers
                .recv()
                .unwrap_or_else(|_| fail("every edge connection ended"));
            if a.generation != conns[a.edge].generation || answered[a.edge] {
                continue; // from a connection already replaced
            }
            if a.closing {
                conns[a.edge].stale = true;
            }
            let served = match a.result {
                Ok(r) => r,
                Err(e) => {
                    // The connection failed while waiting: ask again once on a new one.
                    if retried[a.edge] {
                        fail(&e);
                    }
                    retried[a.edge] = true;
                    send(&mut conns, a.edge, &requests[a.edge], &mut reconnects);
                    continue;
                }
            };
            answered[a.edge] = true;
            pending -= 1;
            if served < revision {
                // The long poll gave up (30 s) before the edge served the revision.
                write_late = true;
            }
            if a.done >= last {
                last = a.done;
                slowest_label = edges[a.edge].1.clone();
            }
            first = Some(first.map_or(a.done, |f| f.min(a.done)));
            if measured {
                per_edge_ns
                    .entry(edges[a.edge].1.clone())
                    .or_default()
                    .push((a.done - acked).as_nanos() as u64);
            }
        }
        if !measured {
            continue;
        }
        if write_late {
            late += 1;
        }
        all_ns.push((last - acked).as_nanos() as u64);
        first_ns.push((first.unwrap_or(acked) - acked).as_nanos() as u64);
        ack_ns.push(ack.as_nanos() as u64);
        dispatch_ns.push((last_sent - acked).as_nanos() as u64);
        *slowest_by_label.entry(slowest_label).or_default() += 1;
    }
    let elapsed = started.elapsed();
    let ok = all_ns.len();
    println!(
        "edges={} writes={} ok={ok} errors={errors} late={late} reconnects={reconnects} {} {} {} {} elapsed_s={:.3} client_cpu_ms={}",
        edges.len(),
        args.writes,
        summary("", all_ns),
        summary("first_", first_ns),
        summary("ack_", ack_ns),
        summary("dispatch_", dispatch_ns),
        elapsed.as_secs_f64(),
        own_cpu_ms(),
    );
    for (label, ns) in per_edge_ns {
        let edges_with_label = edges.iter().filter(|(_, l)| *l == label).count();
        println!(
            "  by_label label={label} edges={edges_with_label} answers={} slowest_in={} {}",
            ns.len(),
            slowest_by_label.get(&label).copied().unwrap_or(0),
            summary("edge_", ns),
        );
    }
    if let Some(e) = first_error {
        eprintln!("propagation_load: {errors} failed writes; the first: {e}");
    }
}

// ---------------------------------------------------------------------------------------------
// Cold start
// ---------------------------------------------------------------------------------------------

/// A trivial HTTP/1.1 keep-alive backend: answers every request `200 ok\n`.
fn backend(addr: &str) {
    let listener =
        TcpListener::bind(addr).unwrap_or_else(|e| fail(&format!("cannot bind {addr}: {e}")));
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let _ = stream.set_nodelay(true);
                let Ok(write_half) = stream.try_clone() else {
                    return;
                };
                let mut writer = write_half;
                let mut reader = BufReader::new(stream);
                let mut line = String::new();
                loop {
                    // Request line and headers; a body is not expected (GET).
                    line.clear();
                    match reader.read_line(&mut line) {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {}
                    }
                    loop {
                        line.clear();
                        match reader.read_line(&mut line) {
                            Ok(0) | Err(_) => return,
                            Ok(_) if line.trim_end().is_empty() => break,
                            Ok(_) => {}
                        }
                    }
                    if writer
                        .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Type: text/plain\r\n\r\nok\n")
                        .is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
}

/// One GET on a new connection; the status and body, or why not.
fn probe(addr: &str, host: &str, path: &str) -> std::io::Result<(u16, Vec<u8>)> {
    let mut c = Conn::open(addr, Duration::from_secs(5))?;
    c.send(format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes())?;
    let (status, body, _) = c.read_response()?;
    Ok((status, body))
}

fn coldstart(args: &Args) {
    if args.listen.is_empty()
        || args.host.is_empty()
        || args.path.is_empty()
        || args.backend.is_empty()
        || args.command.is_empty()
    {
        usage("coldstart needs --listen, --host, --path, --backend and -- COMMAND");
    }
    backend(&args.backend);
    // The backend answers before any edge starts.
    match probe(&args.backend, "backend", "/") {
        Ok((200, _)) => {}
        other => fail(&format!("the backend does not answer: {other:?}")),
    }
    if TcpStream::connect(&args.listen).is_ok() {
        fail(&format!("{} is already taken", args.listen));
    }
    let poll = Duration::from_micros(args.poll_us.max(1));
    let deadline = Duration::from_secs(20);
    let mut ready_ns = Vec::new();
    let mut listening_ns = Vec::new();
    let mut attempts = Vec::new();
    let mut reps = Vec::new();
    for rep in 0..args.reps {
        let log = if args.log.is_empty() {
            Stdio::null()
        } else {
            match std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&args.log)
            {
                Ok(f) => Stdio::from(f),
                Err(e) => fail(&format!("cannot open {}: {e}", args.log)),
            }
        };
        let start = Instant::now();
        let mut child = Command::new(&args.command[0])
            .args(&args.command[1..])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| fail(&format!("cannot start {}: {e}", args.command[0])));
        let mut listening = None;
        let mut tries = 0u64;
        let mut last_answer = String::from("connection refused");
        let ready = loop {
            tries += 1;
            match probe(&args.listen, &args.host, &args.path) {
                Ok((status, body)) => {
                    let now = Instant::now();
                    listening.get_or_insert(now);
                    last_answer = format!("HTTP {status}: {}", lossy(&body));
                    if status == 200
                        && (args.expect.is_empty()
                            || String::from_utf8_lossy(&body).trim() == args.expect)
                    {
                        break Some(now);
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {}
                Err(e) => {
                    // Accepted, then closed or timed out: listening, not serving yet.
                    listening.get_or_insert_with(Instant::now);
                    last_answer = e.to_string();
                }
            }
            if let Ok(Some(status)) = child.try_wait() {
                eprintln!("propagation_load: the edge exited during start-up: {status}");
                break None;
            }
            if start.elapsed() > deadline {
                break None;
            }
            std::thread::sleep(poll);
        };
        let _ = child.kill();
        let _ = child.wait();
        let Some(ready) = ready else {
            fail(&format!(
                "rep {rep}: no 200 {:?} from {} within {deadline:?}; the last answer: {last_answer} (log: {})",
                args.expect, args.listen, args.log
            ));
        };
        // The port must be free again before the next start.
        let free_by = Instant::now() + Duration::from_secs(5);
        while TcpStream::connect(&args.listen).is_ok() {
            if Instant::now() > free_by {
                fail(&format!(
                    "{} still accepts after the edge was killed",
                    args.listen
                ));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let r = (ready - start).as_nanos() as u64;
        let l = (listening.unwrap_or(ready) - start).as_nanos() as u64;
        reps.push(format!("{:.1}", r as f64 / 1e6));
        ready_ns.push(r);
        listening_ns.push(l);
        attempts.push(tries);
        // Let the machine settle between starts.
        std::thread::sleep(Duration::from_millis(200));
    }
    attempts.sort_unstable();
    println!(
        "reps={} {} {} poll_us={} median_attempts={}",
        args.reps,
        summary("ready_", ready_ns),
        summary("listening_", listening_ns),
        args.poll_us,
        percentile(&attempts, 50.0),
    );
    println!("  per_rep_ready_ms={}", reps.join(","));
}

fn main() {
    let mut it = std::env::args().skip(1);
    let mode = it.next().unwrap_or_else(|| usage("no mode"));
    let args = parse_args(it);
    match mode.as_str() {
        "seed" => seed(&args),
        "propagate" => propagate(&args),
        "coldstart" => coldstart(&args),
        other => usage(&format!("unknown mode {other}")),
    }
}
