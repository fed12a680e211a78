//! HTTP/1.1 on a client connection: one loop per connection reads a request head, runs the
//! pipeline in the connection's own task and writes the response, then takes the next request
//! (pipelined ones in order).
//!
//! Hand-written instead of hyper's server for the same reason as the backend client
//! (`upstream/http1.rs`; the framing fields, chunk decoder and body writer both use are in
//! `wire.rs`):
//! hyper's HTTP/1 server around the service was about a third of the edge's user-space
//! instructions per proxied request (bench/callgrind.sh): its dispatcher, a new read buffer per
//! request, the auto-detection and I/O wrappers.
//!
//! Framing follows RFC 9112: a request with a transfer coding other than one `chunked`, with
//! `Transfer-Encoding` in HTTP/1.0, with both a length and a coding, or with a bad length is
//! answered 400 (501 for an unknown coding) and the connection is closed. A response leaves the
//! connection open only if the request's body was read to its end; otherwise `connection:
//! close` is sent, and what the client still sends is read and thrown away for a moment before
//! the socket closes, so that the kernel does not reset the connection under the response.

use std::cell::RefCell;
use std::future::poll_fn;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use http::{Method, StatusCode, Uri, Version};
use http_body::{Body, Frame, SizeHint};
use tokio::io::AsyncWrite;
use tokio::net::TcpStream;

use super::ConnState;
use crate::body::{self, ResponseBody};
use crate::fields::{Fields, content_length, name_is, write_field};
use crate::pipeline;
use crate::request::ClientRequest;
use crate::request_id::REQUEST_ID;
use crate::tcp::Tcp;
use crate::wire::{self, BodyFraming, Chunked, Decoded, Decoder, Framing, ProtocolError};
use crate::worker::Worker;

/// Request header fields allowed (hyper's default, which the edge had before).
const MAX_HEADERS: usize = 100;
/// How long, and how many bytes, of a request body nobody read are thrown away before a
/// connection closes after its response.
const LINGER_TIME: Duration = Duration::from_secs(1);
const LINGER_BYTES: usize = 1024 * 1024;
/// Response body bytes thrown away for a response that has no body on the wire (HEAD, 204,
/// 304) before the body is dropped instead.
const DISCARD_BYTES: u64 = 64 * 1024;

const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// The connection, as the loop and the current request's body share it.
struct Wire {
    io: Tcp,
    /// Bytes read and not consumed yet: the rest of a head, body bytes, pipelined requests.
    buf: BytesMut,
    /// Where the current request's body stands.
    body: Decoder,
    /// Bytes of a `100 Continue` still owed to the client. It is sent when the body is first
    /// read, so a request refused before that (413, 404) never invites its body.
    continue_left: usize,
}

fn lock(wire: &Mutex<Wire>) -> MutexGuard<'_, Wire> {
    // Only this connection's task takes the lock, and nothing in it panics while holding it.
    wire.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Serves HTTP/1.1 on `io` until the client closes, a response ends the connection, or the
/// connection is closing (drain, idle) between requests. `buf` holds bytes already read.
pub(super) async fn serve(
    io: TcpStream,
    buf: BytesMut,
    state: Arc<ConnState>,
    worker: Arc<Worker>,
) {
    let shared = Arc::new(Mutex::new(Wire {
        io: Tcp::new(io),
        buf,
        body: Decoder::Done,
        continue_left: 0,
    }));
    let max_head = worker.settings.max_header_bytes;
    // The response head, and the bytes of a response as they are gathered for a write.
    let mut out = Vec::with_capacity(1024);
    let mut scratch = Vec::new();
    loop {
        let head = match read_head(&shared, &state, max_head).await {
            Ok(Some(head)) => head,
            Ok(None) => return,
            Err(refused) => {
                tracing::debug!(peer = %state.peer, reason = refused.reason, "request refused");
                out.clear();
                encode_refusal(&mut out, refused.status);
                let mut empty = ResponseBody::empty();
                let empty_framing = BodyFraming::Empty { declare: false };
                if wire::write_message(
                    &mut Writer(&shared),
                    &out,
                    &mut scratch,
                    &mut empty,
                    empty_framing,
                )
                .await
                .is_ok()
                {
                    linger(&shared).await;
                }
                return;
            }
        };
        let version = head.version;
        let head_request = head.method == Method::HEAD;
        let body = {
            let mut wire = lock(&shared);
            wire.body = head.body;
            wire.continue_left = if head.expect_continue {
                CONTINUE.len()
            } else {
                0
            };
            RequestBody {
                wire: shared.clone(),
                done: head.body == Decoder::Done,
            }
        };
        let request = ClientRequest {
            method: head.method,
            uri: head.uri,
            version,
            fields: head.fields,
            body: body::RequestBody::Http1(body),
        };
        let response = match pipeline::handle(&worker, &state, request).await {
            Ok(response) => response,
            Err(never) => match never {},
        };
        let body_read = {
            let mut wire = lock(&shared);
            // A client that was not invited to send its body is not invited now.
            wire.continue_left = 0;
            wire.body == Decoder::Done
        };
        let keep_alive = head.keep_alive && body_read && !state.closing();

        let (parts, mut body) = response.into_parts();
        let (framing, keep_alive) = encode_head(
            &mut out,
            &parts,
            &body,
            Exchange {
                version,
                head_request,
                keep_alive,
            },
        );
        if framing == (BodyFraming::Empty { declare: false }) {
            discard(&mut body).await;
        }
        let written =
            wire::write_message(&mut Writer(&shared), &out, &mut scratch, &mut body, framing).await;
        // The request's books close here (access log, metrics, in-flight count).
        drop(body);
        drop(parts);
        state.touch();
        if let Err(e) = written {
            tracing::debug!(peer = %state.peer, error = ?e, "response not written whole");
            return;
        }
        if !keep_alive {
            if !body_read || !lock(&shared).buf.is_empty() {
                linger(&shared).await;
            }
            return;
        }
    }
}

/// A request head that is answered with `status` and the end of the connection.
#[derive(Debug)]
struct Refused {
    status: StatusCode,
    reason: &'static str,
}

fn refuse(status: StatusCode, reason: &'static str) -> Refused {
    Refused { status, reason }
}

/// A parsed request head.
#[derive(Debug)]
struct Head {
    method: Method,
    uri: Uri,
    version: Version,
    /// End-to-end fields; the connection-level ones are in `body` and `keep_alive`.
    fields: Fields,
    body: Decoder,
    keep_alive: bool,
    expect_continue: bool,
}

/// Reads until a whole request head is in; `Ok(None)` when the client closed (or the
/// connection is closing) before one began.
async fn read_head(
    shared: &Mutex<Wire>,
    state: &ConnState,
    max_head: usize,
) -> Result<Option<Head>, Refused> {
    loop {
        {
            let mut wire = lock(shared);
            if !wire.buf.is_empty() {
                if let Some(head) = parse_request(&mut wire.buf, max_head)? {
                    return Ok(Some(head));
                }
                // Only an incomplete head starts the header-read clock: a complete one is
                // handed to the pipeline without waiting.
                state.head_arriving();
            } else if state.closing() {
                return Ok(None);
            }
        }
        let read = poll_fn(|cx| {
            let mut wire = lock(shared);
            let wire = &mut *wire;
            wire::poll_read_buf(&mut wire.io, &mut wire.buf, cx)
        })
        .await;
        match read {
            // Closed or reset, between requests or in the middle of a head: nobody to answer.
            Ok(0) | Err(_) => return Ok(None),
            Ok(_) => state.touch(),
        }
    }
}

/// Parses a request head off the front of `buf`; `Ok(None)` if more bytes are needed.
fn parse_request(buf: &mut BytesMut, max_head: usize) -> Result<Option<Head>, Refused> {
    let too_large = || {
        refuse(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "head too large",
        )
    };
    // Uninitialised: zeroing 100 entries costs more than parsing a small head.
    let mut fields = [const { MaybeUninit::<httparse::Header>::uninit() }; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    let len = match httparse::ParserConfig::default().parse_request_with_uninit_headers(
        &mut req,
        buf,
        &mut fields,
    ) {
        Ok(httparse::Status::Complete(len)) if len > max_head => return Err(too_large()),
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() > max_head => return Err(too_large()),
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(refuse(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "too many header fields",
            ));
        }
        Err(_) => return Err(refuse(StatusCode::BAD_REQUEST, "malformed head")),
    };
    let bad = |reason| refuse(StatusCode::BAD_REQUEST, reason);
    // httparse guarantees a method, a path and a version once complete.
    let method = Method::from_bytes(req.method.unwrap_or_default().as_bytes())
        .map_err(|_| bad("bad method"))?;
    let version = match req.version {
        Some(1) => Version::HTTP_11,
        _ => Version::HTTP_10,
    };
    let path = req.path.unwrap_or_default();
    let path_start = path.as_ptr() as usize - buf.as_ptr() as usize;
    let path_span = path_start..path_start + path.len();
    let spans = wire::header_spans(buf, req.headers);
    let raw = buf.split_to(len).freeze();
    let uri = Uri::from_maybe_shared(raw.slice(path_span)).map_err(|_| bad("bad target"))?;
    let mut framing = Framing::default();
    let fields = wire::end_to_end(raw, spans, &mut framing);

    let body = request_body(&framing, version)?;
    let keep_alive = if version == Version::HTTP_11 {
        !framing.close
    } else {
        framing.keep_alive && !framing.close
    };
    let expect_continue = version == Version::HTTP_11
        && body != Decoder::Done
        && fields
            .get("expect")
            .is_some_and(|v| v.eq_ignore_ascii_case(b"100-continue"));
    Ok(Some(Head {
        method,
        uri,
        version,
        fields,
        body,
        keep_alive,
        expect_continue,
    }))
}

/// RFC 9112 §6.3 for requests: no length and no coding means no body.
fn request_body(framing: &Framing, version: Version) -> Result<Decoder, Refused> {
    let bad = |reason| refuse(StatusCode::BAD_REQUEST, reason);
    if framing.transfer_encoding {
        if version == Version::HTTP_10 {
            return Err(bad("Transfer-Encoding in an HTTP/1.0 request"));
        }
        // Both would let two parsers disagree on where the request ends (smuggling).
        if framing.length.is_some() || framing.bad_length {
            return Err(bad("both Content-Length and Transfer-Encoding"));
        }
        if !framing.chunked_last {
            return Err(bad("the last transfer coding is not chunked"));
        }
        if framing.codings != 1 {
            return Err(refuse(
                StatusCode::NOT_IMPLEMENTED,
                "a transfer coding other than chunked",
            ));
        }
        return Ok(Decoder::Chunked(Chunked::Size));
    }
    if framing.bad_length {
        return Err(bad("bad Content-Length"));
    }
    Ok(match framing.length {
        None | Some(0) => Decoder::Done,
        Some(n) => Decoder::Length(n),
    })
}

/// What the response head depends on besides the response.
struct Exchange {
    version: Version,
    head_request: bool,
    keep_alive: bool,
}

/// Writes the response head into `out`; the body's framing, and whether the connection stays
/// open.
fn encode_head(
    out: &mut Vec<u8>,
    parts: &http::response::Parts,
    body: &ResponseBody,
    exchange: Exchange,
) -> (BodyFraming, bool) {
    let status = parts.status;
    out.clear();
    status_line(out, exchange.version, status);
    let request_id = body.request_id();
    let mut fields = HeadWriter {
        own_id: request_id.is_some(),
        ..HeadWriter::default()
    };
    for (name, value) in &parts.headers {
        let (name, value) = (name.as_str().as_bytes(), value.as_bytes());
        if fields.admit(name, value) {
            write_field(out, name, value);
        }
    }
    // A proxied response's fields, straight from the backend's head; the gateway's own (in the
    // header map) replace the backend's of the same name.
    if let Some(raw) = body.backend_fields() {
        for f in raw.fields() {
            if !parts
                .headers
                .keys()
                .any(|own| name_is(f.name, own.as_str().as_bytes()))
                && fields.admit(f.name, f.value)
            {
                f.write(out);
            }
        }
    }
    let HeadWriter {
        dated, declared, ..
    } = fields;
    if !dated {
        date(out);
    }
    if let Some(id) = request_id {
        write_field(out, REQUEST_ID.as_str().as_bytes(), id.as_bytes());
    }

    let mut keep_alive = exchange.keep_alive;
    let sized = |n: u64| {
        if n == 0 {
            BodyFraming::Empty { declare: false }
        } else {
            BodyFraming::Length(n)
        }
    };
    let no_body = exchange.head_request
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let (framing, length) = if no_body {
        let length = declared.filter(|_| status != StatusCode::NO_CONTENT);
        (BodyFraming::Empty { declare: false }, length)
    } else if let Some(n) = declared {
        (sized(n), Some(n))
    } else if let Some(n) = body.size_hint().exact() {
        (sized(n), Some(n))
    } else if exchange.version == Version::HTTP_11 {
        (BodyFraming::Chunked, None)
    } else {
        // An HTTP/1.0 client knows no chunked coding: the body ends with the connection.
        keep_alive = false;
        (BodyFraming::UntilClose, None)
    };
    if let Some(n) = length {
        out.extend_from_slice(b"content-length: ");
        decimal(out, n);
        out.extend_from_slice(b"\r\n");
    }
    if framing == BodyFraming::Chunked {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    if !keep_alive {
        out.extend_from_slice(b"connection: close\r\n");
    } else if exchange.version == Version::HTTP_10 {
        out.extend_from_slice(b"connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");
    (framing, keep_alive)
}

/// What the response head's fields say about its framing.
#[derive(Default)]
struct HeadWriter {
    dated: bool,
    /// The response's Content-Length, when it is a number; kept as it is, since it may differ
    /// from the body's (a HEAD request).
    declared: Option<u64>,
    /// The edge writes the request id itself: any `x-request-id` the response carries is
    /// dropped.
    own_id: bool,
}

impl HeadWriter {
    /// Whether a response field is written as it is: the framing and connection fields are
    /// this hop's own (Content-Length is noted, and written with the framing).
    fn admit(&mut self, name: &[u8], value: &[u8]) -> bool {
        let is = |known: &str| name_is(name, known.as_bytes());
        match name.len() {
            14 if is("content-length") => {
                self.declared = content_length(value);
                false
            }
            10 | 17 if is("connection") || is("transfer-encoding") => false,
            12 if self.own_id && is("x-request-id") => false,
            4 if is("date") => {
                self.dated = true;
                true
            }
            _ => true,
        }
    }
}

/// The answer to a refused head: no body, and the connection closes.
fn encode_refusal(out: &mut Vec<u8>, status: StatusCode) {
    status_line(out, Version::HTTP_11, status);
    out.extend_from_slice(b"content-length: 0\r\nconnection: close\r\n");
    date(out);
    out.extend_from_slice(b"\r\n");
}

/// `HTTP/1.1 200 OK`. An HTTP/1.0 client gets its own version back, as hyper's server
/// answered.
fn status_line(out: &mut Vec<u8>, version: Version, status: StatusCode) {
    out.extend_from_slice(if version == Version::HTTP_10 {
        b"HTTP/1.0 "
    } else {
        b"HTTP/1.1 "
    });
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
}

fn decimal(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

/// The `date` field (RFC 9110 §6.6.1: an origin server with a clock sends one), formatted once
/// per second per thread.
fn date(out: &mut Vec<u8>) {
    thread_local! {
        static DATE: RefCell<(u64, String)> = const { RefCell::new((0, String::new())) };
    }
    let now = SystemTime::now();
    let second = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    DATE.with_borrow_mut(|(at, text)| {
        if *at != second || text.is_empty() {
            *text = httpdate::fmt_http_date(now);
            *at = second;
        }
        write_field(out, b"date", text.as_bytes());
    });
}

/// Polls a body that goes out without its bytes (HEAD, 204, 304) to its end, so that a backend
/// connection under it returns to its pool; a long one is dropped instead.
async fn discard(body: &mut ResponseBody) {
    let mut seen = 0u64;
    while seen <= DISCARD_BYTES {
        match poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx)).await {
            Some(Ok(frame)) => seen += frame.data_ref().map_or(0, |d| d.len() as u64),
            _ => return,
        }
    }
}

/// Ends the connection without a reset: no more writes, then what the client still sends is
/// read and thrown away, for a bounded time and number of bytes.
async fn linger(shared: &Mutex<Wire>) {
    let _ = poll_fn(|cx| Pin::new(&mut lock(shared).io).poll_shutdown(cx)).await;
    let mut discarded = 0usize;
    let drain = poll_fn(|cx| {
        let mut wire = lock(shared);
        let wire = &mut *wire;
        loop {
            wire.buf.clear();
            match wire::poll_read_buf(&mut wire.io, &mut wire.buf, cx) {
                Poll::Ready(Ok(n)) if n > 0 && discarded + n < LINGER_BYTES => discarded += n,
                Poll::Ready(_) => return Poll::Ready(()),
                Poll::Pending => return Poll::Pending,
            }
        }
    });
    let _ = tokio::time::timeout(LINGER_TIME, drain).await;
}

/// Writes through the shared connection.
struct Writer<'a>(&'a Mutex<Wire>);

impl AsyncWrite for Writer<'_> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut lock(self.0).io).poll_write(cx, data)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut lock(self.0).io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut lock(self.0).io).poll_shutdown(cx)
    }
}

/// Why a request body could not be read.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("the request body is malformed: {0}")]
    Malformed(&'static str),
    #[error("the client closed the connection before the request body ended")]
    Truncated,
    #[error("reading the request body failed: {0}")]
    Io(#[from] io::Error),
}

/// A request body, decoded as it is read from the client's connection.
pub struct RequestBody {
    wire: Arc<Mutex<Wire>>,
    done: bool,
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        if self.done {
            return Poll::Ready(None);
        }
        let this = &mut *self;
        let mut wire = lock(&this.wire);
        let wire = &mut *wire;
        while wire.continue_left > 0 {
            let from = CONTINUE.len() - wire.continue_left;
            match Pin::new(&mut wire.io).poll_write(cx, &CONTINUE[from..]) {
                Poll::Ready(Ok(0)) => {
                    let e = io::Error::from(io::ErrorKind::WriteZero);
                    return Poll::Ready(Some(Err(e.into())));
                }
                Poll::Ready(Ok(n)) => wire.continue_left -= n,
                Poll::Ready(Err(e)) => return Poll::Ready(Some(Err(e.into()))),
                Poll::Pending => return Poll::Pending,
            }
        }
        loop {
            match wire.body.decode(&mut wire.buf) {
                Ok(Decoded::Data(data)) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                Ok(Decoded::End) => {
                    this.done = true;
                    return Poll::Ready(None);
                }
                Ok(Decoded::NeedMore) => {}
                Err(ProtocolError::BadChunk(reason)) => {
                    return Poll::Ready(Some(Err(BodyError::Malformed(reason))));
                }
                Err(_) => return Poll::Ready(Some(Err(BodyError::Malformed("bad framing")))),
            }
            match wire::poll_read_buf(&mut wire.io, &mut wire.buf, cx) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Some(Err(BodyError::Truncated))),
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Some(Err(e.into()))),
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }

    fn size_hint(&self) -> SizeHint {
        match lock(&self.wire).body {
            Decoder::Length(left) if !self.done => SizeHint::with_exact(left),
            _ if self.done => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(raw: &str) -> Result<Option<Head>, Refused> {
        parse_request(&mut BytesMut::from(raw.as_bytes()), 16 * 1024)
    }

    fn refused(raw: &str) -> StatusCode {
        match parse(raw) {
            Err(r) => r.status,
            Ok(_) => panic!("accepted: {raw:?}"),
        }
    }

    #[test]
    fn frames_requests_by_rfc_9112() {
        let h = parse("GET /a?b HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(h.uri.path_and_query().unwrap().as_str(), "/a?b");
        assert_eq!(h.fields.get("host"), Some(&b"x"[..]));
        assert_eq!(h.body, Decoder::Done);
        assert!(h.keep_alive);
        let h = parse("POST / HTTP/1.1\r\nContent-Length: 5\r\nConnection: close\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(h.body, Decoder::Length(5));
        assert!(!h.keep_alive);
        assert!(h.fields.get("connection").is_none());
        assert_eq!(h.fields.get("content-length"), Some(&b"5"[..]));
        let h = parse("GET / HTTP/1.1\r\nConnection: x-secret\r\nX-Secret: 1\r\nTE: trailers\r\nx-kept: 1\r\n\r\n")
            .unwrap()
            .unwrap();
        let names: Vec<&[u8]> = h.fields.fields().map(|f| f.name).collect();
        assert_eq!(names, [&b"x-kept"[..]], "connection-level fields stay here");
        let h =
            parse("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nExpect: 100-continue\r\n\r\n")
                .unwrap()
                .unwrap();
        assert_eq!(h.body, Decoder::Chunked(Chunked::Size));
        assert!(h.expect_continue);
        let h = parse("GET / HTTP/1.0\r\n\r\n").unwrap().unwrap();
        assert!(!h.keep_alive);
        let h = parse("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(h.keep_alive);
        assert!(parse("GET / HTTP/1.1\r\nHost: x\r\n").unwrap().is_none());

        let bad = StatusCode::BAD_REQUEST;
        assert_eq!(
            refused("POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"),
            bad
        );
        assert_eq!(
            refused("POST / HTTP/1.1\r\nContent-Length: 5, 6\r\n\r\n"),
            bad
        );
        assert_eq!(
            refused("POST / HTTP/1.1\r\nContent-Length: -5\r\n\r\n"),
            bad
        );
        assert_eq!(
            refused("POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n"),
            bad
        );
        assert_eq!(
            refused("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n"),
            bad
        );
        assert_eq!(
            refused("POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"),
            StatusCode::NOT_IMPLEMENTED
        );
        assert_eq!(refused("GET / HTTP/1.1\r\nbad header\r\n\r\n"), bad);
        let many: String = (0..101).map(|i| format!("x-{i}: 1\r\n")).collect();
        assert_eq!(
            refused(&format!("GET / HTTP/1.1\r\n{many}\r\n")),
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
        );
        let long = format!("GET / HTTP/1.1\r\nx: {}\r\n", "a".repeat(16 * 1024));
        assert_eq!(refused(&long), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    }

    #[test]
    fn writes_numbers() {
        let mut out = Vec::new();
        decimal(&mut out, 0);
        out.push(b' ');
        decimal(&mut out, 18_446_744_073_709_551_615);
        assert_eq!(out, b"0 18446744073709551615");
    }
}
