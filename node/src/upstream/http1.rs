//! HTTP/1.1 on a backend connection, run inside the request's own task: write the request
//! head and stream its body, read the response head, decode the response body as it is read.
//!
//! Hand-written instead of hyper's `client::conn::http1` because that client runs each
//! connection in a task of its own: every request and every response body frame crossed tasks
//! through channels, which cost about a third of the edge's user-space instructions per
//! proxied request (bench/callgrind.sh).

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{HeaderName, HeaderValue};

use crate::fields::{Fields, Span, name_is, write_field};
use http::{Method, StatusCode, Version};
use http_body::{Body, Frame};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};

/// A response head larger than this is refused (hyper's client allowed about 400 KiB; 64 KiB
/// is what common servers accept in the other direction).
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
/// More response header fields than this are refused.
pub const MAX_HEADERS: usize = 128;
/// A chunk-size line (with extensions) longer than this is refused.
const MAX_CHUNK_LINE: usize = 4096;
/// Bytes asked of the socket per read.
const READ_CHUNK: usize = 16 * 1024;
/// Request body bytes gathered before they are written.
const WRITE_BATCH: usize = 64 * 1024;

/// How a message body is delimited on the wire (a request to a backend, or a response to a
/// client).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFraming {
    /// No body: nothing follows the head. `declare`: the head says so with
    /// `Content-Length: 0` (a POST, PUT or PATCH without a body, as hyper's client sent: some
    /// servers refuse those methods without a length).
    Empty { declare: bool },
    /// The head carries `Content-Length`; the body is sent as it comes.
    Length(u64),
    /// Length unknown: `Transfer-Encoding: chunked` is added to the head.
    Chunked,
    /// Length unknown and no chunked coding: the body ends when the connection closes (a
    /// response to an HTTP/1.0 client).
    UntilClose,
}

impl BodyFraming {
    pub fn is_empty(self) -> bool {
        matches!(self, BodyFraming::Empty { .. })
    }
}

/// Picks the request body's framing from its headers and the body itself.
pub fn request_framing(
    method: &Method,
    headers: &Fields,
    body_is_empty: bool,
) -> Result<BodyFraming, &'static str> {
    if let Some(v) = headers.get("content-length") {
        let n = std::str::from_utf8(v)
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .ok_or("the request's Content-Length is not a number")?;
        return Ok(if n == 0 {
            BodyFraming::Empty { declare: false }
        } else {
            BodyFraming::Length(n)
        });
    }
    if body_is_empty {
        return Ok(BodyFraming::Empty {
            declare: matches!(*method, Method::POST | Method::PUT | Method::PATCH),
        });
    }
    Ok(BodyFraming::Chunked)
}

/// A request head for a backend.
pub struct RequestHead<'a> {
    pub method: &'a Method,
    /// Path and query.
    pub path: &'a str,
    /// The client's fields (connection-level ones already removed); any named in `set` are
    /// left out.
    pub headers: &'a Fields,
    /// The fields this hop sets, written after the client's. Written straight into the head
    /// rather than inserted into `headers`: five map insertions cost more than the rest of
    /// building the head.
    pub set: &'a [(&'a HeaderName, &'a HeaderValue)],
}

/// `METHOD path HTTP/1.1`, the fields, and the framing field the body needs.
pub fn encode_head(out: &mut Vec<u8>, head: &RequestHead<'_>, framing: BodyFraming) {
    out.extend_from_slice(head.method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(head.path.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for f in head.headers.fields() {
        if !head
            .set
            .iter()
            .any(|(set, _)| name_is(f.name, set.as_str().as_bytes()))
        {
            f.write(out);
        }
    }
    for (name, value) in head.set {
        write_field(out, name.as_str().as_bytes(), value.as_bytes());
    }
    match framing {
        BodyFraming::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        BodyFraming::Empty { declare: true } => out.extend_from_slice(b"content-length: 0\r\n"),
        _ => {}
    }
    out.extend_from_slice(b"\r\n");
}

/// Why a request could not be sent.
#[derive(Debug)]
pub enum SendError {
    /// The client's body failed (its error, e.g. the size limit).
    Body(Box<dyn std::error::Error + Send + Sync>),
    /// The client's body did not match its declared length.
    BodyLength,
    /// Writing to the backend failed; `body_sent` says whether any body byte was taken from
    /// the client (then the request cannot be sent again).
    Write { error: io::Error, body_sent: bool },
}

/// Writes the head and streams the body (a request to a backend, or a response to a client).
/// Small bodies go out with the head in one write; whatever has been gathered is written and
/// flushed whenever the body has nothing ready, and at the end. The flushes matter for TLS: a
/// TLS stream may keep written data in its buffer when the socket is full, until it is
/// flushed. `scratch` gathers the bytes: a connection that keeps one saves an allocation per
/// message.
pub async fn write_message<W, B>(
    io: &mut W,
    head: &[u8],
    scratch: &mut Vec<u8>,
    body: &mut B,
    framing: BodyFraming,
) -> Result<(), SendError>
where
    W: AsyncWrite + Unpin,
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let write_err = |error, body_sent| SendError::Write { error, body_sent };
    if framing.is_empty() {
        io.write_all(head).await.map_err(|e| write_err(e, false))?;
        return io.flush().await.map_err(|e| write_err(e, false));
    }
    let out = scratch;
    out.clear();
    out.reserve(head.len() + 1024);
    out.extend_from_slice(head);
    let mut unflushed = false;
    let mut sent: u64 = 0;
    loop {
        let next = poll_fn(|cx| match Pin::new(&mut *body).poll_frame(cx) {
            Poll::Pending if !out.is_empty() || unflushed => Poll::Ready(Next::Flush),
            Poll::Pending => Poll::Pending,
            Poll::Ready(frame) => Poll::Ready(Next::Frame(frame)),
        })
        .await;
        let data = match next {
            Next::Flush => {
                io.write_all(out)
                    .await
                    .map_err(|e| write_err(e, sent > 0))?;
                io.flush().await.map_err(|e| write_err(e, sent > 0))?;
                out.clear();
                unflushed = false;
                continue;
            }
            Next::Frame(None) => break,
            Next::Frame(Some(Err(e))) => return Err(SendError::Body(e.into())),
            // Trailers of a client's body are not forwarded.
            Next::Frame(Some(Ok(frame))) => match frame.into_data() {
                Ok(data) if !data.is_empty() => data,
                _ => continue,
            },
        };
        sent += data.len() as u64;
        match framing {
            BodyFraming::Length(n) if sent > n => return Err(SendError::BodyLength),
            BodyFraming::Chunked => {
                out.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
            }
            _ => {}
        }
        if out.len() + data.len() > WRITE_BATCH {
            // Large pieces go out as they are instead of being copied.
            io.write_all(out).await.map_err(|e| write_err(e, true))?;
            out.clear();
            io.write_all(&data).await.map_err(|e| write_err(e, true))?;
            unflushed = true;
        } else {
            out.extend_from_slice(&data);
        }
        if framing == BodyFraming::Chunked {
            out.extend_from_slice(b"\r\n");
        }
    }
    match framing {
        BodyFraming::Length(n) if sent != n => return Err(SendError::BodyLength),
        BodyFraming::Chunked => out.extend_from_slice(b"0\r\n\r\n"),
        _ => {}
    }
    io.write_all(out)
        .await
        .map_err(|e| write_err(e, sent > 0))?;
    io.flush().await.map_err(|e| write_err(e, sent > 0))
}

enum Next<E> {
    Flush,
    Frame(Option<Result<Frame<Bytes>, E>>),
}

/// What was wrong with what the backend sent.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    #[error("the backend's response head is malformed: {0}")]
    Malformed(httparse::Error),
    #[error("the backend's response head exceeds {MAX_HEAD_BYTES} bytes")]
    HeadTooLarge,
    #[error("the backend's response head has a bad header: {0}")]
    BadHeader(&'static str),
    #[error("the backend answered 101 Switching Protocols, which is not supported")]
    Upgrade,
    #[error("the backend's chunked body is malformed: {0}")]
    BadChunk(&'static str),
    #[error("the backend closed the connection before the response ended")]
    Truncated,
}

/// A parsed response head, and how its body is delimited.
pub struct Head {
    /// The response without its connection-level fields (RFC 9110 §7.6.1): `Connection`, the
    /// fields it names, `Keep-Alive`, `Transfer-Encoding` and the like describe this
    /// connection and are consumed here, never forwarded. Its header map is empty: the
    /// fields are in `fields`.
    pub parts: http::response::Parts,
    pub fields: Fields,
    pub framing: Decoder,
    /// The connection may carry another request once this response's body is read.
    pub reusable: bool,
}

/// What the framing of a message depends on, gathered while its fields are read.
#[derive(Default)]
pub(crate) struct Framing {
    pub close: bool,
    /// `Connection: keep-alive` (what keeps an HTTP/1.0 connection open).
    pub keep_alive: bool,
    pub transfer_encoding: bool,
    pub chunked_last: bool,
    /// Transfer codings named, over all `Transfer-Encoding` fields.
    pub codings: usize,
    pub length: Option<u64>,
    pub bad_length: bool,
    /// Fields that `Connection` names besides `close` and `keep-alive`.
    named: Vec<HeaderName>,
}

impl Framing {
    /// Takes in a connection-level field; false if `name` (any case) is an end-to-end one.
    pub fn consume(&mut self, name: &[u8], value: &[u8]) -> bool {
        let is = |known: &str| name_is(name, known.as_bytes());
        // By length first: most fields are none of these, and are told so by one comparison.
        match name.len() {
            14 if is("content-length") => {
                for item in value.split(|&b| b == b',') {
                    let item = item.trim_ascii();
                    let n = std::str::from_utf8(item)
                        .ok()
                        .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
                        .and_then(|s| s.parse::<u64>().ok());
                    match n {
                        Some(n) if self.length.is_none_or(|l| l == n) => self.length = Some(n),
                        _ => self.bad_length = true,
                    }
                }
                // End-to-end: the client needs it as much as this hop does.
                false
            }
            17 if is("transfer-encoding") => {
                self.transfer_encoding = true;
                self.chunked_last = last_token_is(value, b"chunked");
                self.codings += tokens(value).filter(|t| !t.is_empty()).count();
                true
            }
            10 if is("connection") => {
                for token in tokens(value).filter(|t| !t.is_empty()) {
                    if token.eq_ignore_ascii_case(b"close") {
                        self.close = true;
                    } else if token.eq_ignore_ascii_case(b"keep-alive") {
                        self.keep_alive = true;
                    } else if let Ok(named) = HeaderName::from_bytes(token) {
                        self.named.push(named);
                    }
                }
                true
            }
            2 | 7 | 10 | 16 | 18 => {
                is("te")
                    || is("trailer")
                    || is("upgrade")
                    || is("keep-alive")
                    || is("proxy-connection")
                    || is("proxy-authenticate")
            }
            _ => false,
        }
    }

    /// Whether `Connection` named this field, which then goes no further.
    fn named(&self, name: &[u8]) -> bool {
        self.named
            .iter()
            .any(|n| name_is(name, n.as_str().as_bytes()))
    }
}

/// Parses a complete response head off the front of `buf`; `Ok(None)` if more bytes are
/// needed. Interim (1xx) responses are consumed and skipped.
pub fn parse_head(buf: &mut BytesMut, head_request: bool) -> Result<Option<Head>, ProtocolError> {
    loop {
        // Uninitialised: zeroing 128 entries cost more than parsing a small head.
        let mut headers =
            [const { std::mem::MaybeUninit::<httparse::Header>::uninit() }; MAX_HEADERS];
        let mut resp = httparse::Response::new(&mut []);
        let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(
            &mut resp,
            buf,
            &mut headers,
        );
        let len = match parsed {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD_BYTES => {
                return Err(ProtocolError::HeadTooLarge);
            }
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(httparse::Error::TooManyHeaders) => {
                return Err(ProtocolError::BadHeader("more than 128 header fields"));
            }
            Err(e) => return Err(ProtocolError::Malformed(e)),
        };
        if len > MAX_HEAD_BYTES {
            return Err(ProtocolError::HeadTooLarge);
        }
        // httparse guarantees a code and a version once complete.
        let code = resp.code.unwrap_or(0);
        let version = resp.version.unwrap_or(0);
        if code == 101 {
            return Err(ProtocolError::Upgrade);
        }
        if (100..200).contains(&code) {
            buf.advance(len);
            continue;
        }
        let status = StatusCode::from_u16(code).map_err(|_| ProtocolError::BadHeader("status"))?;
        let spans = header_spans(buf, resp.headers);
        let head = buf.split_to(len).freeze();
        let mut framing = Framing {
            close: version == 0,
            ..Framing::default()
        };
        let fields = end_to_end(head, spans, &mut framing);
        let mut response = http::Response::new(());
        *response.status_mut() = status;
        *response.version_mut() = if version == 0 {
            Version::HTTP_10
        } else {
            Version::HTTP_11
        };
        let (parts, ()) = response.into_parts();
        return response_framing(parts, fields, &framing, head_request).map(Some);
    }
}

pub(crate) fn header_spans(buf: &[u8], headers: &[httparse::Header<'_>]) -> Vec<Span> {
    let base = buf.as_ptr() as usize;
    headers
        .iter()
        .map(|h| {
            let name = h.name.as_ptr() as usize - base;
            let value = h.value.as_ptr() as usize - base;
            (name, name + h.name.len(), value, value + h.value.len())
        })
        .collect()
}

/// The end-to-end fields of a head: the connection-level ones are taken into `framing`, and
/// those that `Connection` names are dropped.
pub(crate) fn end_to_end(head: Bytes, mut spans: Vec<Span>, framing: &mut Framing) -> Fields {
    spans.retain(|&(ns, ne, vs, ve)| !framing.consume(&head[ns..ne], &head[vs..ve]));
    if !framing.named.is_empty() {
        spans.retain(|&(ns, ne, ..)| !framing.named(&head[ns..ne]));
    }
    Fields::from_spans(head, spans)
}

/// RFC 9112 §6.3: how the body of this response is delimited.
fn response_framing(
    parts: http::response::Parts,
    fields: Fields,
    f: &Framing,
    head_request: bool,
) -> Result<Head, ProtocolError> {
    let status = parts.status.as_u16();
    let (framing, reusable) = if head_request || status == 204 || status == 304 {
        (Decoder::Done, !f.close)
    } else if f.transfer_encoding && f.chunked_last {
        // A length next to a transfer coding is a smuggling risk: the coding wins and the
        // connection is not used again (RFC 9112 §6.3, item 3).
        (
            Decoder::Chunked(Chunked::Size),
            !f.close && f.length.is_none() && !f.bad_length,
        )
    } else if f.transfer_encoding {
        (Decoder::Eof, false)
    } else if f.bad_length {
        return Err(ProtocolError::BadHeader("Content-Length"));
    } else {
        match f.length {
            Some(0) => (Decoder::Done, !f.close),
            Some(n) => (Decoder::Length(n), !f.close),
            None => (Decoder::Eof, false),
        }
    };
    Ok(Head {
        parts,
        fields,
        framing,
        reusable,
    })
}

fn tokens(v: &[u8]) -> impl Iterator<Item = &[u8]> {
    v.split(|&b| b == b',').map(|t| t.trim_ascii())
}

fn last_token_is(v: &[u8], token: &[u8]) -> bool {
    tokens(v)
        .filter(|t| !t.is_empty())
        .last()
        .is_some_and(|t| t.eq_ignore_ascii_case(token))
}

/// Where the body decoder stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decoder {
    /// This many body bytes are still to come.
    Length(u64),
    Chunked(Chunked),
    /// Until the backend closes the connection.
    Eof,
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chunked {
    /// Expecting a chunk-size line.
    Size,
    /// Inside a chunk with this many bytes left.
    Data(u64),
    /// Expecting the CRLF after a chunk's data.
    DataEnd,
    /// After the last chunk: trailer lines up to an empty one, and the bytes seen so far.
    Trailers(usize),
}

/// One step of decoding.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded {
    Data(Bytes),
    NeedMore,
    End,
}

impl Decoder {
    /// Takes what it can from `buf`. `Eof` bodies take everything; the caller ends them when
    /// the connection closes.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded, ProtocolError> {
        loop {
            match self {
                Decoder::Done => return Ok(Decoded::End),
                Decoder::Length(left) => {
                    let Some((data, rest)) = take(left, buf) else {
                        return Ok(Decoded::NeedMore);
                    };
                    if rest == 0 {
                        *self = Decoder::Done;
                    }
                    return Ok(Decoded::Data(data));
                }
                Decoder::Eof => {
                    if buf.is_empty() {
                        return Ok(Decoded::NeedMore);
                    }
                    return Ok(Decoded::Data(buf.split().freeze()));
                }
                Decoder::Chunked(state) => match state {
                    Chunked::Size => {
                        let Some(eol) = buf.iter().position(|&b| b == b'\n') else {
                            if buf.len() > MAX_CHUNK_LINE {
                                return Err(ProtocolError::BadChunk("chunk-size line too long"));
                            }
                            return Ok(Decoded::NeedMore);
                        };
                        if eol > MAX_CHUNK_LINE {
                            return Err(ProtocolError::BadChunk("chunk-size line too long"));
                        }
                        let size = chunk_size(&buf[..eol])?;
                        buf.advance(eol + 1);
                        *state = if size == 0 {
                            Chunked::Trailers(0)
                        } else {
                            Chunked::Data(size)
                        };
                    }
                    Chunked::Data(left) => {
                        let Some((data, rest)) = take(left, buf) else {
                            return Ok(Decoded::NeedMore);
                        };
                        if rest == 0 {
                            *state = Chunked::DataEnd;
                        }
                        return Ok(Decoded::Data(data));
                    }
                    Chunked::DataEnd => {
                        if buf.len() < 2 {
                            return Ok(Decoded::NeedMore);
                        }
                        if &buf[..2] != b"\r\n" {
                            return Err(ProtocolError::BadChunk("no CRLF after chunk data"));
                        }
                        buf.advance(2);
                        *state = Chunked::Size;
                    }
                    Chunked::Trailers(seen) => {
                        let Some(eol) = buf.iter().position(|&b| b == b'\n') else {
                            if *seen + buf.len() > MAX_HEAD_BYTES {
                                return Err(ProtocolError::BadChunk("trailers too large"));
                            }
                            return Ok(Decoded::NeedMore);
                        };
                        *seen += eol + 1;
                        if *seen > MAX_HEAD_BYTES {
                            return Err(ProtocolError::BadChunk("trailers too large"));
                        }
                        let empty = buf[..eol] == *b"\r" || eol == 0;
                        // Trailer fields are dropped: hyper's server would forward them only
                        // to clients that asked with `TE: trailers`.
                        buf.advance(eol + 1);
                        if empty {
                            *self = Decoder::Done;
                        }
                    }
                },
            }
        }
    }
}

/// `1a;ext=1\r` → 26. The line ends with CR (its LF is already cut off).
/// Up to `left` bytes off the front of `buf`, and how many are left after them; `None` when
/// `buf` is empty.
fn take(left: &mut u64, buf: &mut BytesMut) -> Option<(Bytes, u64)> {
    if buf.is_empty() {
        return None;
    }
    let n = (*left).min(buf.len() as u64) as usize;
    *left -= n as u64;
    Some((buf.split_to(n).freeze(), *left))
}

fn chunk_size(line: &[u8]) -> Result<u64, ProtocolError> {
    let line = line
        .strip_suffix(b"\r")
        .ok_or(ProtocolError::BadChunk("chunk-size line without CRLF"))?;
    let digits_end = line
        .iter()
        .position(|b| !b.is_ascii_hexdigit())
        .unwrap_or(line.len());
    let (digits, rest) = line.split_at(digits_end);
    if digits.is_empty() || digits.len() > 15 {
        return Err(ProtocolError::BadChunk("bad chunk size"));
    }
    let rest = rest.trim_ascii_start();
    if !rest.is_empty() && rest[0] != b';' {
        return Err(ProtocolError::BadChunk("bad chunk size"));
    }
    let mut size = 0u64;
    for &d in digits {
        // At most 15 hex digits: no overflow.
        size = size * 16 + (d as char).to_digit(16).unwrap_or(0) as u64;
    }
    Ok(size)
}

/// Reads once from `io` into `buf`; the number of bytes read (0: the peer closed).
pub fn poll_read_buf<R: AsyncRead + Unpin>(
    io: &mut R,
    buf: &mut BytesMut,
    cx: &mut Context<'_>,
) -> Poll<io::Result<usize>> {
    if buf.capacity() - buf.len() < 1024 {
        buf.reserve(READ_CHUNK);
    }
    let spare = buf.spare_capacity_mut();
    let mut read = ReadBuf::uninit(spare);
    match Pin::new(io).poll_read(cx, &mut read) {
        Poll::Ready(Ok(())) => {
            let n = read.filled().len();
            // SAFETY: `poll_read` initialised the first `n` bytes of the spare capacity.
            unsafe { buf.set_len(buf.len() + n) };
            Poll::Ready(Ok(n))
        }
        Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
        Poll::Pending => Poll::Pending,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderMap;
    use http::header;

    fn head(raw: &str, head_request: bool) -> Result<Option<Head>, ProtocolError> {
        let mut buf = BytesMut::from(raw.as_bytes());
        parse_head(&mut buf, head_request)
    }

    #[test]
    fn frames_responses_by_rfc_9112() {
        let h = head("HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n", false)
            .unwrap()
            .unwrap();
        assert_eq!(h.framing, Decoder::Length(3));
        assert!(h.reusable);
        let h = head(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            false,
        )
        .unwrap()
        .unwrap();
        assert_eq!(h.framing, Decoder::Chunked(Chunked::Size));
        let h = head("HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n", false)
            .unwrap()
            .unwrap();
        assert_eq!(h.framing, Decoder::Eof);
        assert!(!h.reusable);
        let h = head("HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n", true)
            .unwrap()
            .unwrap();
        assert_eq!(h.framing, Decoder::Done);
        let h = head(
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
            false,
        )
        .unwrap()
        .unwrap();
        assert!(!h.reusable, "length and coding together");
        let h = head(
            "HTTP/1.1 200 OK\r\nConnection: keep-alive, x-secret\r\nx-secret: 1\r\nKeep-Alive: timeout=5\r\nx-kept: 1\r\nContent-Length: 0\r\n\r\n",
            false,
        )
        .unwrap()
        .unwrap();
        let mut names: Vec<&[u8]> = h.fields.iter().map(|(n, _)| n).collect();
        names.sort_unstable();
        assert_eq!(
            names,
            [&b"Content-Length"[..], b"x-kept"],
            "connection-level fields consumed"
        );
        let mut map = HeaderMap::new();
        map.insert("x-kept", HeaderValue::from_static("gateway"));
        h.fields.append_to(&mut map);
        assert_eq!(map.get_all("x-kept").iter().count(), 1, "the map's own win");
        assert_eq!(map["content-length"], "0");
        assert!(head("HTTP/1.1 200 OK\r\nContent-Length: 1, 2\r\n\r\n", false).is_err());
        assert!(head("HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", false).is_err());
        assert!(
            head("HTTP/1.1 200 OK\r\nContent-Len", false)
                .unwrap()
                .is_none()
        );
        assert!(head("HTTP/1.1 101 Switching\r\n\r\n", false).is_err());
    }

    #[test]
    fn skips_interim_responses() {
        let mut buf = BytesMut::from(
            &b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n"[..],
        );
        let h = parse_head(&mut buf, false).unwrap().unwrap();
        assert_eq!(h.parts.status, 201);
        assert!(buf.is_empty());
    }

    #[test]
    fn refuses_oversized_heads() {
        let big = format!("HTTP/1.1 200 OK\r\nx: {}\r\n", "a".repeat(MAX_HEAD_BYTES));
        assert!(matches!(
            head(&big, false),
            Err(ProtocolError::HeadTooLarge)
        ));
    }

    fn decode_all(raw: &[u8], split: usize) -> Result<(Vec<u8>, BytesMut), ProtocolError> {
        let mut d = Decoder::Chunked(Chunked::Size);
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for piece in raw.chunks(split) {
            buf.extend_from_slice(piece);
            loop {
                match d.decode(&mut buf)? {
                    Decoded::Data(b) => out.extend_from_slice(&b),
                    Decoded::NeedMore => break,
                    Decoded::End => return Ok((out, buf)),
                }
            }
        }
        Err(ProtocolError::Truncated)
    }

    #[test]
    fn decodes_chunked_bodies_split_anywhere() {
        let raw =
            b"5;ext=1\r\nhello\r\n1A\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nx-t: 1\r\n\r\nNEXT";
        for split in 1..raw.len() {
            let (body, rest) = decode_all(raw, split).unwrap();
            assert_eq!(body, b"helloabcdefghijklmnopqrstuvwxyz", "split {split}");
            // What follows the message stays in the buffer (it makes the connection unusable).
            assert!(b"NEXT".starts_with(&rest), "split {split}");
        }
    }

    #[test]
    fn refuses_bad_chunks() {
        assert!(decode_all(b"z\r\n", 8).is_err());
        assert!(decode_all(b"5\r\nhelloXX0\r\n\r\n", 64).is_err());
        assert!(decode_all(b"1234567890abcdef0\r\n", 64).is_err());
        assert!(decode_all(b"5\nhello\r\n0\r\n\r\n", 64).is_err());
        let long = format!("1;{}\r\n", "e".repeat(MAX_CHUNK_LINE));
        assert!(decode_all(long.as_bytes(), 64).is_err());
    }

    #[test]
    fn length_bodies_stop_at_their_length() {
        let mut d = Decoder::Length(3);
        let mut buf = BytesMut::from(&b"ok\nHTTP"[..]);
        assert_eq!(
            d.decode(&mut buf).unwrap(),
            Decoded::Data(Bytes::from("ok\n"))
        );
        assert_eq!(d.decode(&mut buf).unwrap(), Decoded::End);
        assert_eq!(&buf[..], b"HTTP");
    }

    #[test]
    fn request_framing_follows_the_headers() {
        let h = Fields::default();
        assert_eq!(
            request_framing(&Method::GET, &h, true).unwrap(),
            BodyFraming::Empty { declare: false }
        );
        assert_eq!(
            request_framing(&Method::POST, &h, true).unwrap(),
            BodyFraming::Empty { declare: true }
        );
        assert_eq!(
            request_framing(&Method::POST, &h, false).unwrap(),
            BodyFraming::Chunked
        );
        // The client's Host in its own case: the one this hop sets replaces it all the same.
        let h = Fields::from_spans(
            Bytes::from_static(b"content-length12Host client"),
            vec![(0, 14, 14, 16), (16, 20, 21, 27)],
        );
        assert_eq!(
            request_framing(&Method::POST, &h, false).unwrap(),
            BodyFraming::Length(12)
        );
        let host = HeaderValue::from_static("backend");
        let head = RequestHead {
            method: &Method::POST,
            path: "/a?b",
            headers: &h,
            set: &[(&header::HOST, &host)],
        };
        let mut out = Vec::new();
        encode_head(&mut out, &head, BodyFraming::Length(12));
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "POST /a?b HTTP/1.1\r\ncontent-length: 12\r\nhost: backend\r\n\r\n"
        );
        let mut out = Vec::new();
        let h = Fields::default();
        let head = RequestHead {
            method: &Method::PUT,
            path: "/",
            headers: &h,
            set: &[],
        };
        encode_head(&mut out, &head, BodyFraming::Empty { declare: true });
        assert_eq!(out, b"PUT / HTTP/1.1\r\ncontent-length: 0\r\n\r\n");
    }
}
