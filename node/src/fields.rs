//! Header fields as a message carried them: spans of one shared buffer (the head as it was
//! read, for HTTP/1.1), names in the sender's case, looked up without regard to case.
//!
//! The request pipeline and the HTTP/1.1 paths use this instead of `http::HeaderMap`: a
//! proxied request reads three or four fields and forwards the rest untouched, and building,
//! hashing and dropping a map for that cost more than parsing the head (bench/callgrind.sh).
//! A `HeaderMap` is built only where a library needs one (hyper's HTTP/2, the `http`
//! integration's response mappings).
//!
//! Every field in a `Fields` is valid by construction: HTTP/1.1 heads are checked by the
//! parser (field names are tokens, values have no control characters but tab), and the other
//! constructors take `HeaderName`s and `HeaderValue`s.

use bytes::{Bytes, BytesMut};
use http::header::{HeaderMap, HeaderName, HeaderValue};

/// Where a field's name and value lie in the buffer: (name start, name end, value start,
/// value end).
pub(crate) type Span = (usize, usize, usize, usize);

#[derive(Debug, Clone, Default)]
pub struct Fields {
    bytes: Bytes,
    spans: Vec<Span>,
}

impl Fields {
    /// `spans` must lie within `bytes` and name fields a parser has checked.
    pub(crate) fn from_spans(bytes: Bytes, spans: Vec<Span>) -> Fields {
        Fields { bytes, spans }
    }

    /// The fields of a header map, in its order.
    pub fn from_map(map: &HeaderMap) -> Fields {
        Fields::from_map_where(map, |_| true)
    }

    /// The fields of a header map whose names `keep` accepts, in the map's order.
    pub fn from_map_where(map: &HeaderMap, keep: impl Fn(&HeaderName) -> bool) -> Fields {
        let mut b = FieldsBuilder::with_capacity(map.len(), 36 * map.len());
        for (name, value) in map {
            if keep(name) {
                b.push(name, value);
            }
        }
        b.finish()
    }

    /// The fields in order, each with its whole line when the buffer holds it as written.
    pub fn fields(&self) -> impl Iterator<Item = Field<'_>> {
        self.spans.iter().map(|&(ns, ne, vs, ve)| {
            let b = &self.bytes;
            let canonical =
                vs == ne + 2 && &b[ne..vs] == b": " && b.get(ve..ve + 2) == Some(&b"\r\n"[..]);
            Field {
                name: &b[ns..ne],
                value: &b[vs..ve],
                line: canonical.then(|| &b[ns..ve + 2]),
            }
        })
    }

    /// The first value of the field `name` (lowercase), in any case.
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.get_all(name).next()
    }

    /// Every value of the field `name` (lowercase), in order.
    pub fn get_all<'a, 'n>(
        &'a self,
        name: &'n str,
    ) -> impl Iterator<Item = &'a [u8]> + use<'a, 'n> {
        self.values_of(name).map(|(vs, ve)| &self.bytes[vs..ve])
    }

    /// The first value of `name` as a header value sharing this buffer.
    pub fn value(&self, name: &str) -> Option<HeaderValue> {
        let (vs, ve) = self.values_of(name).next()?;
        HeaderValue::from_maybe_shared(self.bytes.slice(vs..ve)).ok()
    }

    /// The first value of `name`, sharing this buffer, as the parser checked it.
    pub fn raw_value(&self, name: &str) -> Option<Bytes> {
        let (vs, ve) = self.values_of(name).next()?;
        Some(self.bytes.slice(vs..ve))
    }

    /// Where the values of the field `name` (lowercase) lie, in order.
    fn values_of<'a, 'n>(
        &'a self,
        name: &'n str,
    ) -> impl Iterator<Item = (usize, usize)> + use<'a, 'n> {
        let name = name.as_bytes();
        self.spans
            .iter()
            .filter(move |&&(ns, ne, ..)| name_is(&self.bytes[ns..ne], name))
            .map(|&(_, _, vs, ve)| (vs, ve))
    }

    /// Appends the fields to `map`, except those `map` already has (the gateway's own win).
    pub fn append_to(&self, map: &mut HeaderMap) {
        let own: Vec<HeaderName> = map.keys().cloned().collect();
        for &(ns, ne, vs, ve) in &self.spans {
            let Ok(name) = HeaderName::from_bytes(&self.bytes[ns..ne]) else {
                continue;
            };
            if own.contains(&name) {
                continue;
            }
            if let Ok(value) = HeaderValue::from_maybe_shared(self.bytes.slice(vs..ve)) {
                map.append(name, value);
            }
        }
    }
}

/// Whether the field name `name` is `lower` (a lowercase field name) in any case.
///
/// Field names are tokens (RFC 9110 §5.1), which the parsers check: no byte of one differs
/// from a lowercase letter, digit or `-` by the 0x20 bit alone unless it is that letter in
/// upper case. So setting that bit is enough, eight bytes at a time: every field of every
/// head is compared against the names the edge looks for, and the byte-wise
/// `eq_ignore_ascii_case` took several times as many instructions.
pub fn name_is(name: &[u8], lower: &[u8]) -> bool {
    if name.len() != lower.len() {
        return false;
    }
    let word = |b: &[u8]| u64::from_ne_bytes(b.try_into().unwrap_or_default());
    let (mut a, mut b) = (name.chunks_exact(8), lower.chunks_exact(8));
    for (x, y) in (&mut a).zip(&mut b) {
        if word(x) | 0x2020_2020_2020_2020 != word(y) {
            return false;
        }
    }
    a.remainder()
        .iter()
        .zip(b.remainder())
        .all(|(&x, &y)| x | 0x20 == y)
}

/// Whether `name` is a connection-level field (RFC 9110 §7.6.1, with the obsolete ones proxies
/// still meet), which never crosses a proxy. `Connection` may name more.
pub fn is_hop_by_hop(name: &[u8]) -> bool {
    const NAMES: [&str; 8] = [
        "connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "proxy-authenticate",
        "keep-alive",
        "proxy-connection",
    ];
    // By length first: most fields are none of these, and are told so by one comparison.
    matches!(name.len(), 2 | 7 | 10 | 16 | 17 | 18)
        && NAMES.iter().any(|n| name_is(name, n.as_bytes()))
}

/// A Content-Length value (RFC 9110 §8.6): digits, with surrounding whitespace allowed.
pub fn content_length(value: &[u8]) -> Option<u64> {
    let digits = value.trim_ascii();
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0u64, |n, &d| {
        if !d.is_ascii_digit() {
            return None;
        }
        n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

/// One field of a [`Fields`].
pub struct Field<'a> {
    pub name: &'a [u8],
    pub value: &'a [u8],
    /// `name: value\r\n` as the buffer holds it, when it does (a head without extra
    /// whitespace, or a built `Fields`): written with one copy instead of four.
    line: Option<&'a [u8]>,
}

impl Field<'_> {
    /// Appends the field's line to a head.
    pub fn write(&self, out: &mut Vec<u8>) {
        match self.line {
            Some(line) => out.extend_from_slice(line),
            None => write_field(out, self.name, self.value),
        }
    }
}

/// Appends one `name: value` line to a head.
pub fn write_field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.reserve(name.len() + value.len() + 4);
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Builds a [`Fields`] one field at a time, into one buffer, each field as a whole line.
struct FieldsBuilder {
    bytes: BytesMut,
    spans: Vec<Span>,
}

impl FieldsBuilder {
    fn with_capacity(fields: usize, bytes: usize) -> FieldsBuilder {
        FieldsBuilder {
            bytes: BytesMut::with_capacity(bytes),
            spans: Vec::with_capacity(fields),
        }
    }

    fn push(&mut self, name: &HeaderName, value: &HeaderValue) {
        let ns = self.bytes.len();
        self.bytes.extend_from_slice(name.as_str().as_bytes());
        let ne = self.bytes.len();
        self.bytes.extend_from_slice(b": ");
        self.bytes.extend_from_slice(value.as_bytes());
        let ve = self.bytes.len();
        self.bytes.extend_from_slice(b"\r\n");
        self.spans.push((ns, ne, ne + 2, ve));
    }

    fn finish(self) -> Fields {
        Fields {
            bytes: self.bytes.freeze(),
            spans: self.spans,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookups_ignore_case_and_keep_order() {
        let head = Bytes::from_static(b"Host: a\r\nX-Forwarded-For: 1\r\nx-forwarded-for: 2\r\n");
        let spans = vec![(0, 4, 6, 7), (9, 24, 26, 27), (29, 44, 46, 47)];
        let f = Fields::from_spans(head, spans);
        assert_eq!(f.get("host"), Some(&b"a"[..]));
        assert_eq!(
            f.get_all("x-forwarded-for").collect::<Vec<_>>(),
            vec![&b"1"[..], &b"2"[..]]
        );
        assert_eq!(f.get("hos"), None);
        assert_eq!(f.value("host").unwrap(), "a");
        let mut map = HeaderMap::new();
        f.append_to(&mut map);
        assert_eq!(map.get_all("x-forwarded-for").iter().count(), 2);
        let back = Fields::from_map(&map);
        assert_eq!(back.fields().count(), 3);
        assert_eq!(
            back.fields().next().map(|f| (f.name, f.value)),
            Some((&b"host"[..], &b"a"[..]))
        );
        let mut out = Vec::new();
        for field in f.fields().chain(back.fields()) {
            field.write(&mut out);
        }
        assert_eq!(
            out,
            b"Host: a\r\nX-Forwarded-For: 1\r\nx-forwarded-for: 2\r\nhost: a\r\nx-forwarded-for: 1\r\nx-forwarded-for: 2\r\n"
        );
    }

    #[test]
    fn fields_not_written_canonically_are_rewritten() {
        // "X-A:1" (no space) and "X-B:  2" (two): their lines cannot be copied as they are.
        let head = Bytes::from_static(b"X-A:1\r\nX-B:  2\r\nX-C: 3");
        let f = Fields::from_spans(head, vec![(0, 3, 4, 5), (7, 10, 13, 14), (16, 19, 21, 22)]);
        let mut out = Vec::new();
        for field in f.fields() {
            field.write(&mut out);
        }
        assert_eq!(out, b"X-A: 1\r\nX-B: 2\r\nX-C: 3\r\n");
    }

    #[test]
    fn hop_by_hop_names_and_content_lengths() {
        for name in [
            "Connection",
            "TE",
            "keep-alive",
            "Proxy-Connection",
            "Transfer-Encoding",
        ] {
            assert!(is_hop_by_hop(name.as_bytes()), "{name}");
        }
        for name in ["content-length", "x-te", "connections", "host"] {
            assert!(!is_hop_by_hop(name.as_bytes()), "{name}");
        }
        assert_eq!(content_length(b" 12 "), Some(12));
        assert_eq!(content_length(b"0"), Some(0));
        for bad in [
            &b""[..],
            b" ",
            b"+5",
            b"-1",
            b"1 2",
            b"0x10",
            b"99999999999999999999",
        ] {
            assert_eq!(content_length(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn names_compare_without_case() {
        assert!(name_is(b"Content-Length", b"content-length"));
        assert!(name_is(b"X-FORWARDED-FOR", b"x-forwarded-for"));
        assert!(name_is(b"te", b"te"));
        assert!(!name_is(b"Content-Lengt", b"content-length"));
        assert!(!name_is(b"content-lengtH2", b"content-length3"));
        assert!(!name_is(b"Content-Lengtx", b"content-length"));
        assert!(!name_is(b"connection", b"keep-alive"));
        assert!(!name_is(b"x_request_id", b"x-request-id"));
    }

    #[test]
    fn append_to_keeps_the_maps_own_fields() {
        let mut own = HeaderMap::new();
        own.insert("content-type", HeaderValue::from_static("text/plain"));
        let mut theirs = HeaderMap::new();
        theirs.insert("content-type", HeaderValue::from_static("text/html"));
        theirs.insert("server", HeaderValue::from_static("x"));
        Fields::from_map(&theirs).append_to(&mut own);
        assert_eq!(own["content-type"], "text/plain");
        assert_eq!(own["server"], "x");
    }
}
