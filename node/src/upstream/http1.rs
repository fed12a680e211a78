//! HTTP/1.1 on a backend connection, run inside the request's own task: the request head and
//! the response head (the framing, body decoding and writing it shares with the server are in
//! `wire.rs`).
//!
//! Hand-written instead of hyper's `client::conn::http1` because that client runs each
//! connection in a task of its own: every request and every response body frame crossed tasks
//! through channels, which cost about a third of the edge's user-space instructions per
//! proxied request (bench/callgrind.sh).

use bytes::{Buf, BytesMut};
use http::header::HeaderName;
use http::{Method, StatusCode, Version};

use crate::fields::{Fields, content_length, name_is, write_field};
use crate::wire::{
    BodyFraming, Chunked, Decoder, Framing, MAX_HEAD_BYTES, ProtocolError, end_to_end, header_spans,
};

/// More response header fields than this are refused.
pub const MAX_HEADERS: usize = 128;

/// Picks the request body's framing from its headers and the body itself.
pub fn request_framing(
    method: &Method,
    headers: &Fields,
    body_is_empty: bool,
) -> Result<BodyFraming, &'static str> {
    if let Some(v) = headers.get("content-length") {
        let n = content_length(v).ok_or("the request's Content-Length is not a number")?;
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
    pub set: &'a [(&'a HeaderName, &'a [u8])],
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
        write_field(out, name.as_str().as_bytes(), value);
    }
    match framing {
        BodyFraming::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        BodyFraming::Empty { declare: true } => out.extend_from_slice(b"content-length: 0\r\n"),
        _ => {}
    }
    out.extend_from_slice(b"\r\n");
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
        let mut framing = Framing::default();
        // A connection that answered in HTTP/1.0 is not reused.
        framing.close = version == 0;
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

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http::HeaderMap;
    use http::header::{self, HeaderValue};

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
        let mut names: Vec<&[u8]> = h.fields.fields().map(|f| f.name).collect();
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
            set: &[(&header::HOST, host.as_bytes())],
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
