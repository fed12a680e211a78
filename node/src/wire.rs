//! HTTP/1.1 on the wire, shared by the edge's server (`server/http1.rs`) and its backend
//! client (`upstream/http1.rs`): the fields that decide a message's framing, the body
//! decoder, the body writer and socket reads. Each side parses and writes its own heads.

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use http::header::HeaderName;
use http_body::{Body, Frame};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use crate::fields::{Fields, Span, content_length, is_hop_by_hop, name_is};

/// A backend's response head, or a chunked body's trailer section, larger than this is refused
/// (hyper's client allowed about 400 KiB; 64 KiB is what common servers accept in the other
/// direction).
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
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
                    match content_length(item) {
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
            _ => is_hop_by_hop(name),
        }
    }

    /// Whether `Connection` named this field, which then goes no further.
    fn named(&self, name: &[u8]) -> bool {
        self.named
            .iter()
            .any(|n| name_is(name, n.as_str().as_bytes()))
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

/// `1a;ext=1\r` → 26. The line ends with CR (its LF is already cut off).
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

/// Reads once from `io` into `buf`, with room for at least 1 KiB; the number of bytes read
/// (0: the peer closed).
pub fn poll_read_buf<R: AsyncRead + Unpin>(
    io: &mut R,
    buf: &mut BytesMut,
    cx: &mut Context<'_>,
) -> Poll<io::Result<usize>> {
    if buf.capacity() - buf.len() < 1024 {
        buf.reserve(READ_CHUNK);
    }
    tokio_util::io::poll_read_buf(Pin::new(io), cx, buf)
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
