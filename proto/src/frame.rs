//! Length-prefixed frames, the envelope of every protocol between Portico processes (Raft
//! between control nodes, config sync between edges and control nodes). Pure codec: the
//! crates that own the streams read and write the bytes.
//!
//! ```text
//! +----------------+-----------------+--------------------------------------+
//! | length: u32 BE | version: u16 BE | body: bincode 2 (serde, standard)    |
//! +----------------+-----------------+--------------------------------------+
//!                  \________________ length bytes ______________________/
//! ```
//!
//! The version is the envelope's: how the body is encoded. Messages themselves evolve by
//! appending enum variants, by a protocol version negotiated inside the protocol (sync's
//! hello), or by a new ALPN protocol (`portico-raft/2`). A reader checks the length against
//! its limit before allocating anything ([`frame_length`]), decodes with a bincode size limit
//! proportional to the frame, and refuses trailing bytes ([`decode_body`]).

use serde::Serialize;
use serde::de::DeserializeOwned;

/// The envelope version this build writes and reads.
pub const FRAME_VERSION: u16 = 1;

/// Bytes of the length prefix.
pub const LENGTH_BYTES: usize = 4;
const VERSION_BYTES: usize = 2;

/// How much memory decoding may claim per byte of body (bincode's `with_limit` counts decoded
/// sizes: a one-byte varint `u64` claims 8 bytes).
const DECODE_EXPANSION: usize = 16;

/// The most memory decoding any one frame may claim.
pub const MAX_DECODE_CLAIM: usize = 1 << 30;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    #[error("frame too large: {len} bytes > limit of {max} bytes")]
    TooLarge { len: u64, max: u64 },
    #[error("malformed frame: {0}")]
    Malformed(String),
    #[error("malformed frame: {0} trailing bytes after the message")]
    Trailing(usize),
    #[error("unknown frame version {0} (this build reads version {FRAME_VERSION})")]
    UnknownVersion(u16),
    #[error("cannot encode the message: {0}")]
    Encode(String),
}

fn config() -> bincode::config::Configuration {
    bincode::config::standard()
}

/// Decodes with a bincode limit proportional to the body's size, so a small frame cannot make
/// the decoder allocate much (bincode allocates a byte string's claimed length before reading
/// it). The limit is const generic, hence the tiers; the last one caps every frame.
fn decode_limited<T: DeserializeOwned>(
    body: &[u8],
) -> Result<(T, usize), bincode::error::DecodeError> {
    macro_rules! decode_within {
        ($limit:expr) => {
            bincode::serde::decode_from_slice(body, config().with_limit::<{ $limit }>())
        };
    }
    let budget = body.len().saturating_mul(DECODE_EXPANSION);
    if budget <= 64 << 10 {
        decode_within!(64 << 10)
    } else if budget <= 1 << 20 {
        decode_within!(1 << 20)
    } else if budget <= 16 << 20 {
        decode_within!(16 << 20)
    } else if budget <= 256 << 20 {
        decode_within!(256 << 20)
    } else {
        decode_within!(MAX_DECODE_CLAIM)
    }
}

/// Encodes `msg` as one complete frame, header included.
pub fn encode_frame<T: Serialize>(msg: &T) -> Result<Vec<u8>, CodecError> {
    let mut buf = Vec::with_capacity(64);
    buf.extend_from_slice(&[0; LENGTH_BYTES]);
    buf.extend_from_slice(&FRAME_VERSION.to_be_bytes());
    bincode::serde::encode_into_std_write(msg, &mut buf, config())
        .map_err(|e| CodecError::Encode(e.to_string()))?;
    let len = buf.len() - LENGTH_BYTES;
    let len32 = u32::try_from(len).map_err(|_| CodecError::TooLarge {
        len: len as u64,
        max: u64::from(u32::MAX),
    })?;
    buf[..LENGTH_BYTES].copy_from_slice(&len32.to_be_bytes());
    Ok(buf)
}

/// The length a prefix claims, checked against `max_len` before the reader allocates for it:
/// the prefix is the peer's claim, not a fact.
pub fn frame_length(prefix: [u8; LENGTH_BYTES], max_len: usize) -> Result<usize, CodecError> {
    let len = u32::from_be_bytes(prefix);
    if u64::from(len) > max_len as u64 {
        return Err(CodecError::TooLarge {
            len: u64::from(len),
            max: max_len as u64,
        });
    }
    Ok(len as usize)
}

/// Decodes what follows the length prefix: the version and the body, exactly.
pub fn decode_body<T: DeserializeOwned>(frame: &[u8]) -> Result<T, CodecError> {
    let Some((version, body)) = frame.split_first_chunk::<VERSION_BYTES>() else {
        return Err(CodecError::Malformed(format!(
            "{} bytes is shorter than the version field",
            frame.len()
        )));
    };
    let version = u16::from_be_bytes(*version);
    if version != FRAME_VERSION {
        return Err(CodecError::UnknownVersion(version));
    }
    let (msg, read): (T, usize) =
        decode_limited(body).map_err(|e| CodecError::Malformed(e.to_string()))?;
    if read != body.len() {
        return Err(CodecError::Trailing(body.len() - read));
    }
    Ok(msg)
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    enum Msg {
        Hello { name: String, n: u64 },
        Bytes(Vec<u8>),
    }

    #[test]
    fn frames_round_trip() {
        let msg = Msg::Hello {
            name: "node".into(),
            n: 300,
        };
        let frame = encode_frame(&msg).unwrap();
        let prefix: [u8; 4] = frame[..4].try_into().unwrap();
        assert_eq!(frame_length(prefix, 1024).unwrap(), frame.len() - 4);
        assert_eq!(&frame[4..6], &FRAME_VERSION.to_be_bytes());
        assert_eq!(decode_body::<Msg>(&frame[4..]).unwrap(), msg);
    }

    #[test]
    fn golden_bytes_of_version_1() {
        // Freezes the wire format: change it only with a new FRAME_VERSION.
        let frame = encode_frame(&Msg::Hello {
            name: "a".into(),
            n: 1,
        })
        .unwrap();
        assert_eq!(frame, vec![0, 0, 0, 6, 0, 1, 0, 1, b'a', 1]);
    }

    #[test]
    fn an_oversized_claim_is_refused_before_allocation() {
        assert_eq!(
            frame_length((1u32 << 30).to_be_bytes(), 16),
            Err(CodecError::TooLarge {
                len: 1 << 30,
                max: 16
            })
        );
    }

    #[test]
    fn bad_bodies_are_clean_errors() {
        assert!(matches!(
            decode_body::<Msg>(&[0]),
            Err(CodecError::Malformed(_))
        ));
        assert!(matches!(
            decode_body::<Msg>(&[0, 2, 0]),
            Err(CodecError::UnknownVersion(2))
        ));
        assert!(matches!(
            decode_body::<Msg>(&[0, 1, 0xff, 0xff, 0xff]),
            Err(CodecError::Malformed(_))
        ));
        // A valid message followed by one more byte.
        let mut frame = encode_frame(&Msg::Bytes(vec![1])).unwrap();
        frame.push(0);
        assert!(matches!(
            decode_body::<Msg>(&frame[4..]),
            Err(CodecError::Trailing(1))
        ));
        // A string claiming more than a small frame's decode budget is refused before bincode
        // allocates it.
        let mut body = vec![0, 1, 0, 0xfc];
        body.extend_from_slice(&(1u32 << 20).to_le_bytes());
        match decode_body::<Msg>(&body) {
            Err(CodecError::Malformed(e)) => assert!(e.contains("LimitExceeded"), "{e}"),
            other => panic!("{other:?}"),
        }
        // Large frames get a larger budget.
        let big = Msg::Bytes(vec![7; 2 << 20]);
        let frame = encode_frame(&big).unwrap();
        assert_eq!(decode_body::<Msg>(&frame[4..]).unwrap(), big);
    }
}
