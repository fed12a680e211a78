//! A client's request as the pipeline reads it, whichever protocol brought it.

use http::header::HeaderName;
use http::{Method, Uri, Version};

use crate::body::RequestBody;
use crate::fields::Fields;

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
            // HTTP/2 has no `Connection` field (hyper refuses a request with one), but `TE`
            // may come.
            fields: Fields::from_map_where(&parts.headers, |name| !is_hop_by_hop(name)),
            body: RequestBody::Http2(body),
        }
    }
}

static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

fn is_hop_by_hop(name: &HeaderName) -> bool {
    use http::header;
    name == header::CONNECTION
        || name == header::TE
        || name == header::TRAILER
        || name == header::TRANSFER_ENCODING
        || name == header::UPGRADE
        || name == header::PROXY_AUTHENTICATE
        || name == KEEP_ALIVE
        || name == PROXY_CONNECTION
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
        let f = Fields::from_map_where(&h, |name| !is_hop_by_hop(name));
        assert_eq!(f.len(), 1);
        assert_eq!(f.get("x-kept"), Some(&b"1"[..]));
    }
}
