//! One JSON line per request, with AWS-like context field names.
//!
//! Lines are formatted into a per-thread buffer and written in batches (when the buffer fills,
//! and by each worker every [`FLUSH_INTERVAL`]), so logging costs no syscall per request and
//! lines from different workers never interleave mid-line.

use std::cell::RefCell;
use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{HeaderValue, Method, Version};

pub const FLUSH_INTERVAL: Duration = Duration::from_millis(100);
const FLUSH_AT_BYTES: usize = 64 * 1024;
const MAX_PATH_LOGGED: usize = 2048;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessLogTarget {
    Off,
    Stdout,
    File(PathBuf),
}

impl std::str::FromStr for AccessLogTarget {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "off" => AccessLogTarget::Off,
            "stdout" | "-" => AccessLogTarget::Stdout,
            "" => return Err("empty access log target: use stdout, off or a file path".into()),
            path => AccessLogTarget::File(PathBuf::from(path)),
        })
    }
}

#[derive(Debug)]
enum Sink {
    Off,
    Stdout,
    File(Mutex<File>),
}

#[derive(Debug, Clone)]
pub struct AccessLog {
    sink: Arc<Sink>,
}

thread_local! {
    static BUFFER: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(FLUSH_AT_BYTES + 4096));
}

/// What one request did, filled in as the pipeline runs.
#[derive(Debug)]
pub struct AccessRecord {
    pub request_id: HeaderValue,
    pub source_ip: IpAddr,
    pub method: Method,
    pub path: http::uri::PathAndQuery,
    pub protocol: Version,
    pub request_time: SystemTime,
    pub api_id: Option<Arc<str>>,
    pub stage: Option<Arc<str>>,
    pub route_key: Option<Arc<str>>,
    pub status: u16,
    pub integration_latency: Option<Duration>,
    pub error_type: Option<&'static str>,
}

impl AccessLog {
    pub fn open(target: &AccessLogTarget) -> std::io::Result<AccessLog> {
        let sink = match target {
            AccessLogTarget::Off => Sink::Off,
            AccessLogTarget::Stdout => Sink::Stdout,
            AccessLogTarget::File(p) => Sink::File(Mutex::new(
                OpenOptions::new().create(true).append(true).open(p)?,
            )),
        };
        Ok(AccessLog {
            sink: Arc::new(sink),
        })
    }

    pub fn is_off(&self) -> bool {
        matches!(*self.sink, Sink::Off)
    }

    /// The wall-clock time to log for a request starting now: only read when lines are
    /// written (a clock read per request is worth saving when they are not).
    pub fn request_time(&self) -> SystemTime {
        if self.is_off() {
            UNIX_EPOCH
        } else {
            SystemTime::now()
        }
    }

    pub fn record(&self, r: &AccessRecord, response_length: u64, latency: Duration) {
        if self.is_off() {
            return;
        }
        let full = BUFFER.with(|b| {
            let mut b = b.borrow_mut();
            format_line(&mut b, r, response_length, latency);
            b.len() >= FLUSH_AT_BYTES
        });
        if full {
            self.flush_thread();
        }
    }

    /// Writes this thread's buffered lines.
    pub fn flush_thread(&self) {
        let lines = BUFFER.with(|b| std::mem::take(&mut *b.borrow_mut()));
        if lines.is_empty() {
            return;
        }
        let result = match &*self.sink {
            Sink::Off => Ok(()),
            Sink::Stdout => {
                let mut out = std::io::stdout().lock();
                out.write_all(&lines).and_then(|_| out.flush())
            }
            Sink::File(f) => f
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .write_all(&lines),
        };
        if let Err(e) = result {
            tracing::warn!(error = %e, "access log write failed; lines dropped");
        }
        BUFFER.with(|b| {
            let mut b = b.borrow_mut();
            if b.capacity() == 0 {
                *b = lines;
                b.clear();
            }
        });
    }
}

fn format_line(out: &mut Vec<u8>, r: &AccessRecord, length: u64, latency: Duration) {
    let mut s = String::with_capacity(384);
    s.push_str("{\"requestId\":");
    json_str(&mut s, &String::from_utf8_lossy(r.request_id.as_bytes()));
    let _ = write!(s, ",\"sourceIp\":\"{}\",\"httpMethod\":", r.source_ip);
    json_str(&mut s, r.method.as_str());
    s.push_str(",\"path\":");
    let path = r.path.as_str();
    json_str(&mut s, &path[..floor_char_boundary(path, MAX_PATH_LOGGED)]);
    s.push_str(",\"apiId\":");
    json_opt(&mut s, r.api_id.as_deref());
    s.push_str(",\"stage\":");
    json_opt(&mut s, r.stage.as_deref());
    s.push_str(",\"routeKey\":");
    json_opt(&mut s, r.route_key.as_deref());
    let protocol = match r.protocol {
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_2 => "HTTP/2.0",
        _ => "HTTP/1.1",
    };
    let epoch_ms = r
        .request_time
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis();
    let _ = write!(
        s,
        ",\"status\":{},\"protocol\":\"{protocol}\",\"responseLength\":{length},\"requestTime\":\"{}\",\"requestTimeEpoch\":{epoch_ms},\"integrationLatency\":",
        r.status,
        rfc3339_millis(r.request_time)
    );
    match r.integration_latency {
        Some(d) => {
            let _ = write!(s, "{:.3}", d.as_secs_f64() * 1e3);
        }
        None => s.push_str("null"),
    }
    let _ = write!(
        s,
        ",\"latency\":{:.3},\"errorType\":",
        latency.as_secs_f64() * 1e3
    );
    json_opt(&mut s, r.error_type);
    s.push_str("}\n");
    out.extend_from_slice(s.as_bytes());
}

fn floor_char_boundary(s: &str, max: usize) -> usize {
    if s.len() <= max {
        return s.len();
    }
    (0..=max)
        .rev()
        .find(|i| s.is_char_boundary(*i))
        .unwrap_or(0)
}

fn json_opt(s: &mut String, v: Option<&str>) {
    match v {
        Some(v) => json_str(s, v),
        None => s.push_str("null"),
    }
}

fn json_str(s: &mut String, v: &str) {
    s.push('"');
    for c in v.chars() {
        match c {
            '"' => s.push_str("\\\""),
            '\\' => s.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(s, "\\u{:04x}", c as u32);
            }
            c => s.push(c),
        }
    }
    s.push('"');
}

/// `2026-11-22T10:04:05.123Z`, computed without a date library.
pub fn rfc3339_millis(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Howard Hinnant's civil-from-days.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_a_parseable_line() {
        let r = AccessRecord {
            request_id: HeaderValue::from_static("abc"),
            source_ip: "127.0.0.1".parse().unwrap(),
            method: Method::GET,
            path: "/prod/a\"b?x=1"
                .parse()
                .unwrap_or_else(|_| "/p".parse().unwrap()),
            protocol: Version::HTTP_2,
            request_time: UNIX_EPOCH + Duration::from_millis(1_795_000_000_123),
            api_id: Some("demo".into()),
            stage: None,
            route_key: Some("GET /a".into()),
            status: 200,
            integration_latency: Some(Duration::from_micros(1500)),
            error_type: None,
        };
        let mut out = Vec::new();
        format_line(&mut out, &r, 42, Duration::from_millis(2));
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["requestId"], "abc");
        assert_eq!(v["status"], 200);
        assert_eq!(v["protocol"], "HTTP/2.0");
        assert_eq!(v["responseLength"], 42);
        assert_eq!(v["integrationLatency"], 1.5);
        assert_eq!(v["stage"], serde_json::Value::Null);
        assert_eq!(v["requestTime"], "2026-11-18T11:06:40.123Z");
    }
}
