//! A client's request as the pipeline reads it, whichever protocol brought it.

use http::{HeaderMap, Method, Uri, Version};

use crate::body::RequestBody;
use crate::fields::{Fields, is_hop_by_hop};

pub struct ClientRequest {
    pub method: Method,
    pub uri: Uri,
    pub version: Version,
    /// End-to-end fields only: the protocol layer has taken the connection-level ones
    /// (RFC 9110 §7.6.1).
    pub fields: Fields,
    pub body: RequestBody,
}

impl ClientRequest {
    /// An HTTP/2 request as hyper hands it over.
    pub fn from_http2(req: http::Request<hyper::body::Incoming>) -> ClientRequest {
        let (parts, body) = req.into_parts();
        ClientRequest {
            method: parts.method,
            uri: parts.uri,
            version: parts.version,
            fields: end_to_end(&parts.headers),
            body: RequestBody::Http2(body),
        }
    }
}

/// The fields of an HTTP/2 request that may cross a proxy. HTTP/2 has no `Connection` field
/// (hyper refuses a request with one), but `TE` may come.
fn end_to_end(map: &HeaderMap) -> Fields {
    Fields::from_map_where(map, |name| !is_hop_by_hop(name.as_str().as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::{self, HeaderValue};

    #[test]
    fn http2_hop_by_hop_fields_stay_here() {
        let mut h = http::HeaderMap::new();
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("5"));
        let f = end_to_end(&h);
        assert_eq!(f.fields().count(), 1);
        assert_eq!(f.get("x-kept"), Some(&b"1"[..]));
    }
}
