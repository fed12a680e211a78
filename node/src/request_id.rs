//! Request ids: the client's `x-request-id` when it is well formed, else a fresh UUID-shaped id.

use http::header::{HeaderName, HeaderValue};

use crate::fields::Fields;

pub static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

pub fn for_request(fields: &Fields) -> HeaderValue {
    match fields.value("x-request-id") {
        Some(v) if well_formed(v.as_bytes()) => v,
        _ => generate(),
    }
}

fn well_formed(id: &[u8]) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || b"-_.:".contains(c))
}

/// A random version-4 UUID.
pub fn generate() -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut bytes = fastrand::u128(..).to_be_bytes();
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let mut out = [b'-'; 36];
    let mut at = 0;
    for (i, b) in bytes.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            at += 1;
        }
        out[at] = HEX[(b >> 4) as usize];
        out[at + 1] = HEX[(b & 0xf) as usize];
        at += 2;
    }
    // Only hex digits and dashes: always a valid header value.
    HeaderValue::from_bytes(&out).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generates_uuid_v4_shape_and_keeps_valid_client_ids() {
        let id = generate();
        let s = id.to_str().unwrap();
        assert_eq!(s.len(), 36);
        assert_eq!(&s[14..15], "4");
        assert_ne!(generate(), id);

        let mut h = http::HeaderMap::new();
        h.insert(&REQUEST_ID, HeaderValue::from_static("client-abc.1"));
        assert_eq!(for_request(&Fields::from_map(&h)), "client-abc.1");
        h.insert(&REQUEST_ID, HeaderValue::from_static("has space"));
        assert_ne!(for_request(&Fields::from_map(&h)), "has space");
    }
}
