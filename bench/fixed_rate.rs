//! Open-loop HTTP/1.1 load at a fixed rate, for bench/proxy.sh's latency phase.
//!
//! Why not oha: on this 2-core machine oha could not hold 38,000 requests a second on its one
//! core. Against the backend alone (no proxy) it reported p50 1.6 ms and p99 225 ms, using 44%
//! of the core, so the phase measured the load generator. This one is a single thread on
//! epoll, waking when the next request is due (see bench/README.md for its figures).
//!
//! Usage: fixed_rate ADDR HOST PATH RATE SECONDS CONNECTIONS
//!
//! Each connection has its own schedule, as in wrk2: connection c sends its k-th request at
//! start + (k x CONNECTIONS + c) / RATE. Latency is measured from that scheduled time, not from
//! when the request was written, so a request that had to wait (its connection was still
//! waiting for the previous answer) counts the wait: no coordinated omission.
//!
//! Prints one line: `p50_us p99_us answers_per_second bad requests`. `requests` counts every
//! request of the schedule; `bad` those that failed (no answer: a failed connection is
//! reopened) or were answered other than 2xx. A failed request, or one never sent because the
//! run stopped after ten seconds without an answer, enters the percentiles as infinitely slow
//! (4294967295), so failures cannot flatter them. Answers must carry a Content-Length (chunked
//! answers count as failed).
//!
//! Linux 5.11 and glibc 2.35 or later (`epoll_pwait2`).
//!
//! One `rustc -O` build with no dependencies, like the other generators; the few system calls
//! std does not wrap (epoll, prctl) are declared here (x86_64 and aarch64).

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::os::fd::AsRawFd;

#[cfg_attr(target_arch = "x86_64", repr(C, packed))]
#[cfg_attr(not(target_arch = "x86_64"), repr(C))]
#[derive(Clone, Copy)]
struct EpollEvent {
    events: u32,
    data: u64,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct Timespec {
    sec: i64,
    nsec: i64,
}

unsafe extern "C" {
    fn epoll_create1(flags: i32) -> i32;
    fn epoll_ctl(epfd: i32, op: i32, fd: i32, event: *mut EpollEvent) -> i32;
    fn epoll_pwait2(
        epfd: i32,
        events: *mut EpollEvent,
        max: i32,
        timeout: *const Timespec,
        sigmask: *const u8,
    ) -> i32;
    fn clock_gettime(clock: i32, ts: *mut Timespec) -> i32;
    fn prctl(option: i32, arg: u64, ...) -> i32;
}

const CLOCK_MONOTONIC: i32 = 1;
const EPOLL_CTL_ADD: i32 = 1;
const EPOLL_CTL_DEL: i32 = 2;
const EPOLLIN: u32 = 0x1;
const PR_SET_TIMERSLACK: i32 = 29;
/// How long a wait may last when nothing is due: the answers still in flight at the end.
const IDLE_WAIT_NS: u64 = 10_000_000_000;

fn now_ns() -> u64 {
    let mut ts = Timespec::default();
    // SAFETY: ts is a valid, writable timespec.
    unsafe { clock_gettime(CLOCK_MONOTONIC, &mut ts) };
    ts.sec as u64 * 1_000_000_000 + ts.nsec as u64
}

struct Conn {
    stream: Option<TcpStream>,
    /// The scheduled time of the request in flight, if one is.
    in_flight: Option<u64>,
    /// Index of this connection's next request in its own schedule.
    next: u64,
    buf: Vec<u8>,
}

struct Generator {
    epfd: i32,
    addr: String,
    request: Vec<u8>,
    conns: Vec<Conn>,
    start: u64,
    /// Nanoseconds between two requests of one connection.
    period: f64,
    /// Nanoseconds between two requests overall.
    gap: f64,
    per_conn: u64,
    /// One per request of the schedule once it is over; u32::MAX for a failed one.
    latencies_us: Vec<u32>,
    non_2xx: u64,
    failed: u64,
}

impl Generator {
    fn due(&self, c: usize) -> u64 {
        self.start + (self.conns[c].next as f64 * self.period + c as f64 * self.gap) as u64
    }

    fn open(&mut self, c: usize) {
        let stream = TcpStream::connect(&self.addr)
            .and_then(|s| s.set_nodelay(true).map(|()| s))
            .and_then(|s| s.set_nonblocking(true).map(|()| s));
        self.conns[c].stream = match stream {
            Ok(s) => {
                let mut ev = EpollEvent {
                    events: EPOLLIN,
                    data: c as u64,
                };
                // SAFETY: a valid epoll fd, an open socket and a valid event.
                unsafe { epoll_ctl(self.epfd, EPOLL_CTL_ADD, s.as_raw_fd(), &mut ev) };
                Some(s)
            }
            Err(_) => None,
        };
        self.conns[c].buf.clear();
    }

    fn fail(&mut self, c: usize) {
        if let Some(s) = self.conns[c].stream.take() {
            let mut ev = EpollEvent { events: 0, data: 0 };
            // SAFETY: as in open; the socket is still open here.
            unsafe { epoll_ctl(self.epfd, EPOLL_CTL_DEL, s.as_raw_fd(), &mut ev) };
        }
        if self.conns[c].in_flight.take().is_some() {
            self.failed += 1;
            self.latencies_us.push(u32::MAX);
        }
    }

    /// Sends connection c's next request if it is due and the connection is free.
    fn send_if_due(&mut self, c: usize, now: u64) {
        let conn = &self.conns[c];
        if conn.in_flight.is_some() || conn.next >= self.per_conn || self.due(c) > now {
            return;
        }
        let due = self.due(c);
        self.conns[c].next += 1;
        if self.conns[c].stream.is_none() {
            self.open(c);
        }
        let sent = match self.conns[c].stream.as_mut() {
            // A request this small fits any socket buffer: a short write is a failure.
            Some(s) => matches!(s.write(&self.request), Ok(n) if n == self.request.len()),
            None => false,
        };
        self.conns[c].in_flight = Some(due);
        if !sent {
            self.fail(c);
        }
    }

    fn read(&mut self, c: usize) {
        // One read per readiness: epoll is level-triggered, so whatever is left is reported
        // again, and a second read would mostly cost a system call to learn there is nothing.
        let mut chunk = [0u8; 16 * 1024];
        let Some(s) = self.conns[c].stream.as_mut() else { return };
        match s.read(&mut chunk) {
            Ok(0) => return self.fail(c),
            Ok(n) => self.conns[c].buf.extend_from_slice(&chunk[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => return,
            Err(_) => return self.fail(c),
        }
        match parse(&self.conns[c].buf) {
            Parsed::Partial => {}
            Parsed::Bad => self.fail(c),
            Parsed::Done { status, len, close } => {
                self.conns[c].buf.drain(..len);
                if let Some(due) = self.conns[c].in_flight.take() {
                    let us = (now_ns().saturating_sub(due) / 1000).min(u32::MAX as u64);
                    self.latencies_us.push(us as u32);
                    if !(200..300).contains(&status) {
                        self.non_2xx += 1;
                    }
                }
                if close {
                    self.fail(c);
                }
            }
        }
    }
}

enum Parsed {
    Partial,
    Bad,
    Done { status: u16, len: usize, close: bool },
}

fn parse(buf: &[u8]) -> Parsed {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Parsed::Partial;
    };
    let Ok(head) = std::str::from_utf8(&buf[..end]) else {
        return Parsed::Bad;
    };
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse::<u16>().ok());
    let (mut length, mut close) = (None, false);
    for line in lines {
        let Some((name, value)) = line.split_once(':') else { continue };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            length = value.parse::<usize>().ok();
        } else if name.eq_ignore_ascii_case("connection") {
            close = value.eq_ignore_ascii_case("close");
        }
    }
    match (status, length) {
        (Some(status), Some(n)) if buf.len() >= end + 4 + n => Parsed::Done {
            status,
            len: end + 4 + n,
            close,
        },
        (Some(_), Some(_)) => Parsed::Partial,
        _ => Parsed::Bad,
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 7 {
        eprintln!("usage: fixed_rate ADDR HOST PATH RATE SECONDS CONNECTIONS");
        std::process::exit(2);
    }
    let num = |i: usize, what: &str| -> f64 {
        args[i].parse::<f64>().ok().filter(|v| *v > 0.0).unwrap_or_else(|| {
            eprintln!("{what} must be a positive number, got {:?}", args[i]);
            std::process::exit(2)
        })
    };
    let rate = num(4, "RATE");
    let seconds = num(5, "SECONDS");
    let n = num(6, "CONNECTIONS") as usize;
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: fixed_rate\r\n\r\n",
        args[3], args[2]
    );
    // SAFETY: plain system calls with valid arguments. A timer slack of 1 ns makes the
    // kernel wake this thread when a send is due rather than up to 50 µs later.
    let epfd = unsafe {
        prctl(PR_SET_TIMERSLACK, 1);
        epoll_create1(0)
    };
    if epfd < 0 {
        eprintln!("epoll_create1 failed");
        std::process::exit(1);
    }

    let per_conn = (seconds * rate / n as f64).round() as u64;
    let mut g = Generator {
        epfd,
        addr: args[1].clone(),
        request: request.into_bytes(),
        conns: (0..n)
            .map(|_| Conn {
                stream: None,
                in_flight: None,
                next: 0,
                buf: Vec::new(),
            })
            .collect(),
        start: 0,
        period: n as f64 * 1e9 / rate,
        gap: 1e9 / rate,
        per_conn,
        latencies_us: Vec::with_capacity(per_conn as usize * n),
        non_2xx: 0,
        failed: 0,
    };
    for c in 0..n {
        g.open(c);
    }
    g.start = now_ns() + 50_000_000;
    let mut events = [EpollEvent { events: 0, data: 0 }; 64];
    loop {
        let now = now_ns();
        for c in 0..n {
            g.send_if_due(c, now);
        }
        let finished = g
            .conns
            .iter()
            .all(|c| c.next >= per_conn && c.in_flight.is_none());
        if finished {
            break;
        }
        // Until the earliest send still to come on a free connection, or an answer.
        let next = (0..n)
            .filter(|&c| g.conns[c].in_flight.is_none() && g.conns[c].next < per_conn)
            .map(|c| g.due(c))
            .min();
        let wait = next.map_or(IDLE_WAIT_NS, |t| t.saturating_sub(now_ns()));
        let timeout = Timespec {
            sec: (wait / 1_000_000_000) as i64,
            nsec: (wait % 1_000_000_000) as i64,
        };
        // SAFETY: events is a valid buffer of 64 entries, timeout a valid timespec.
        let ready =
            unsafe { epoll_pwait2(epfd, events.as_mut_ptr(), 64, &timeout, std::ptr::null()) };
        if ready < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == ErrorKind::Interrupted {
                continue;
            }
            eprintln!("epoll_pwait2 failed: {e}");
            std::process::exit(1);
        }
        if ready == 0 && next.is_none() {
            // Ten seconds without an answer: what is in flight failed, and what was still to
            // be sent counts as failed too.
            for c in 0..n {
                g.fail(c);
                let unsent = per_conn - g.conns[c].next;
                g.failed += unsent;
                g.latencies_us
                    .extend(std::iter::repeat_n(u32::MAX, unsent as usize));
            }
            break;
        }
        for ev in &events[..ready.max(0) as usize] {
            let data = ev.data;
            g.read(data as usize);
        }
    }
    let elapsed = (now_ns().saturating_sub(g.start)) as f64 / 1e9;
    let answered = g.latencies_us.len() as u64 - g.failed;
    let mut all = std::mem::take(&mut g.latencies_us);
    all.sort_unstable();
    let pct = |p: f64| -> u32 {
        if all.is_empty() {
            return 0;
        }
        all[((all.len() as f64 * p).ceil() as usize).clamp(1, all.len()) - 1]
    };
    println!(
        "{} {} {:.0} {} {}",
        pct(0.50),
        pct(0.99),
        answered as f64 / elapsed.max(1e-9),
        g.failed + g.non_2xx,
        all.len()
    );
}
