//! Length-prefixed frames on QUIC streams, shared by every control-plane protocol.
//!
//! ```text
//! +----------------+-----------------+--------------------------------------+
//! | length: u32 BE | version: u16 BE | body: bincode 2 (serde, standard)    |
//! +----------------+-----------------+--------------------------------------+
//!                  \________________ length bytes ______________________/
//! ```
//!
//! The version is the envelope's: how the body is encoded. Messages themselves evolve by
//! appending enum variants, or by a new ALPN protocol (`portico-raft/2`). A reader checks the
//! length against its limit before allocating anything, decodes with a bincode size limit
//! proportional to the frame, and refuses trailing bytes.

use quinn::{ReadExactError, RecvStream, SendStream};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// The envelope version this build writes and reads.
pub const FRAME_VERSION: u16 = 1;

const LENGTH_BYTES: usize = 4;
const VERSION_BYTES: usize = 2;

/// How much memory decoding may claim per byte of body (bincode's `with_limit` counts decoded
/// sizes: a one-byte varint `u64` claims 8 bytes).
const DECODE_EXPANSION: usize = 16;

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

/// The most memory decoding any one frame may claim.
pub const MAX_DECODE_CLAIM: usize = 1 << 30;

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("frame too large: {len} bytes > limit of {max} bytes")]
    TooLarge { len: u64, max: u64 },
    #[error("malformed frame: {0}")]
    Malformed(String),
    #[error("malformed frame: {0} trailing bytes after the message")]
    Trailing(usize),
    #[error("unknown frame version {0} (this build reads version {FRAME_VERSION})")]
    UnknownVersion(u16),
    #[error("stream closed before a frame")]
    Closed,
    #[error("stream closed in the middle of a frame ({got} of {expected} bytes)")]
    Truncated { expected: u64, got: u64 },
    #[error("cannot encode the message: {0}")]
    Encode(#[from] bincode::error::EncodeError),
    #[error("stream read failed: {0}")]
    Read(#[from] quinn::ReadError),
    #[error("stream write failed: {0}")]
    Write(#[from] quinn::WriteError),
}

impl FrameError {
    /// Whether the error means the whole connection is gone (rather than just this stream).
    pub fn connection_lost(&self) -> Option<&quinn::ConnectionError> {
        match self {
            FrameError::Read(quinn::ReadError::ConnectionLost(e))
            | FrameError::Write(quinn::WriteError::ConnectionLost(e)) => Some(e),
            _ => None,
        }
    }
}

/// Encodes `msg` as one complete frame, header included.
pub fn encode_frame<T: Serialize>(msg: &T) -> Result<Vec<u8>, FrameError> {
    let mut buf = Vec::with_capacity(64);
    buf.extend_from_slice(&[0; LENGTH_BYTES]);
    buf.extend_from_slice(&FRAME_VERSION.to_be_bytes());
    bincode::serde::encode_into_std_write(msg, &mut buf, config())?;
    let len = buf.len() - LENGTH_BYTES;
    let len32 = u32::try_from(len).map_err(|_| FrameError::TooLarge {
        len: len as u64,
        max: u64::from(u32::MAX),
    })?;
    buf[..LENGTH_BYTES].copy_from_slice(&len32.to_be_bytes());
    Ok(buf)
}

/// Decodes what follows the length prefix: the version and the body, exactly.
pub fn decode_body<T: DeserializeOwned>(frame: &[u8]) -> Result<T, FrameError> {
    let Some((version, body)) = frame.split_first_chunk::<VERSION_BYTES>() else {
        return Err(FrameError::Malformed(format!(
            "{} bytes is shorter than the version field",
            frame.len()
        )));
    };
    let version = u16::from_be_bytes(*version);
    if version != FRAME_VERSION {
        return Err(FrameError::UnknownVersion(version));
    }
    let (msg, read): (T, usize) =
        decode_limited(body).map_err(|e| FrameError::Malformed(e.to_string()))?;
    if read != body.len() {
        return Err(FrameError::Trailing(body.len() - read));
    }
    Ok(msg)
}

/// Writes `msg` as one frame. Does not finish the stream.
pub async fn write_frame<T: Serialize>(send: &mut SendStream, msg: &T) -> Result<(), FrameError> {
    let frame = encode_frame(msg)?;
    send.write_all(&frame).await?;
    Ok(())
}

/// Reads one frame of at most `max_len` bytes (version and body) and decodes it.
/// [`FrameError::Closed`] means the peer finished the stream cleanly before a frame began.
pub async fn read_frame<T: DeserializeOwned>(
    recv: &mut RecvStream,
    max_len: usize,
) -> Result<T, FrameError> {
    let mut prefix = [0u8; LENGTH_BYTES];
    match recv.read_exact(&mut prefix).await {
        Ok(()) => {}
        Err(ReadExactError::FinishedEarly(0)) => return Err(FrameError::Closed),
        Err(ReadExactError::FinishedEarly(got)) => {
            return Err(FrameError::Truncated {
                expected: LENGTH_BYTES as u64,
                got: got as u64,
            });
        }
        Err(ReadExactError::ReadError(e)) => return Err(e.into()),
    }
    let len = u32::from_be_bytes(prefix);
    // Checked before anything is allocated: the prefix is the peer's claim, not a fact.
    if u64::from(len) > max_len as u64 {
        return Err(FrameError::TooLarge {
            len: u64::from(len),
            max: max_len as u64,
        });
    }
    let mut frame = vec![0u8; len as usize];
    match recv.read_exact(&mut frame).await {
        Ok(()) => {}
        Err(ReadExactError::FinishedEarly(got)) => {
            return Err(FrameError::Truncated {
                expected: u64::from(len),
                got: got as u64,
            });
        }
        Err(ReadExactError::ReadError(e)) => return Err(e.into()),
    }
    decode_body(&frame)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde::Deserialize;

    use super::*;
    use crate::transport::ca::ClusterCa;
    use crate::transport::node_dns_name;
    use crate::transport::test_support::{
        echo_server, install_crypto, node_client_endpoint, within,
    };

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    enum Msg {
        Hello { name: String, n: u64 },
        Bytes(Vec<u8>),
    }

    #[test]
    fn frames_round_trip_without_io() {
        let msg = Msg::Hello {
            name: "node".into(),
            n: 300,
        };
        let frame = encode_frame(&msg).unwrap();
        let len = u32::from_be_bytes(frame[..4].try_into().unwrap()) as usize;
        assert_eq!(len, frame.len() - 4);
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
    fn bad_bodies_are_clean_errors() {
        assert!(matches!(
            decode_body::<Msg>(&[0]),
            Err(FrameError::Malformed(_))
        ));
        assert!(matches!(
            decode_body::<Msg>(&[0, 2, 0]),
            Err(FrameError::UnknownVersion(2))
        ));
        assert!(matches!(
            decode_body::<Msg>(&[0, 1, 0xff, 0xff, 0xff]),
            Err(FrameError::Malformed(_))
        ));
        // A valid message followed by one more byte.
        let mut frame = encode_frame(&Msg::Bytes(vec![1])).unwrap();
        frame.push(0);
        assert!(matches!(
            decode_body::<Msg>(&frame[4..]),
            Err(FrameError::Trailing(1))
        ));
        // A string claiming more than a small frame's decode budget is refused before bincode
        // allocates it.
        let mut body = vec![0, 1, 0, 0xfc];
        body.extend_from_slice(&(1u32 << 20).to_le_bytes());
        match decode_body::<Msg>(&body) {
            Err(FrameError::Malformed(e)) => assert!(e.contains("LimitExceeded"), "{e}"),
            other => panic!("{other:?}"),
        }
        // Large frames get a larger budget.
        let big = Msg::Bytes(vec![7; 2 << 20]);
        let frame = encode_frame(&big).unwrap();
        assert_eq!(decode_body::<Msg>(&frame[4..]).unwrap(), big);
    }

    /// Opens a stream, writes `bytes` raw, finishes, and reads the echo server's reply.
    async fn raw_exchange(conn: &quinn::Connection, bytes: &[u8]) -> Result<String, FrameError> {
        let (mut send, mut recv) = conn.open_bi().await.map_err(quinn::ReadError::from)?;
        send.write_all(bytes).await?;
        let _ = send.finish();
        read_frame::<String>(&mut recv, 1024).await
    }

    #[tokio::test]
    async fn frames_over_quic_and_bad_streams_do_not_hurt_the_connection() {
        install_crypto();
        let ca = ClusterCa::generate("test").unwrap();
        let (server, _) = echo_server(&ca, 1).await;
        let (client, config) = node_client_endpoint(&ca, 2);
        let conn = within(Duration::from_secs(10), async {
            client
                .connect_with(config, server, &node_dns_name(1))
                .unwrap()
                .await
        })
        .await
        .unwrap();

        let good = encode_frame(&"hello".to_string()).unwrap();
        let reply = within(Duration::from_secs(10), raw_exchange(&conn, &good)).await;
        assert_eq!(reply.unwrap(), "hello");

        // The echo server reads with a 64-byte limit: a 4 GiB claim is refused at once.
        let reply = within(
            Duration::from_secs(10),
            raw_exchange(&conn, &[0xff, 0xff, 0xff, 0xff, 0, 1]),
        )
        .await;
        assert!(reply.is_err(), "{reply:?}");

        // Garbage inside a well-sized frame.
        let reply = within(
            Duration::from_secs(10),
            raw_exchange(&conn, &[0, 0, 0, 5, 0, 1, 0xff, 0xff, 0xff]),
        )
        .await;
        assert!(reply.is_err(), "{reply:?}");

        // A frame cut short.
        let reply = within(
            Duration::from_secs(10),
            raw_exchange(&conn, &[0, 0, 0, 9, 0]),
        )
        .await;
        assert!(reply.is_err(), "{reply:?}");

        // The same connection still serves good streams, several at once.
        let replies = within(Duration::from_secs(10), async {
            let mut tasks = Vec::new();
            for i in 0..8 {
                let conn = conn.clone();
                tasks.push(tokio::spawn(async move {
                    let frame = encode_frame(&format!("m{i}")).unwrap();
                    raw_exchange(&conn, &frame).await.unwrap()
                }));
            }
            let mut out = Vec::new();
            for t in tasks {
                out.push(t.await.unwrap());
            }
            out
        })
        .await;
        assert_eq!(replies, (0..8).map(|i| format!("m{i}")).collect::<Vec<_>>());
        assert!(conn.close_reason().is_none());
    }

    #[tokio::test]
    async fn an_oversized_prefix_is_reported_with_its_size() {
        install_crypto();
        let ca = ClusterCa::generate("test").unwrap();
        let (server, _) = crate::transport::test_support::frame_sink(&ca, 1, 16).await;
        let (client, config) = node_client_endpoint(&ca, 2);
        let result = within(Duration::from_secs(10), async {
            let conn = client
                .connect_with(config, server, &node_dns_name(1))
                .unwrap()
                .await
                .unwrap();
            let (mut send, mut recv) = conn.open_bi().await.unwrap();
            // Claims 1 GiB but sends nothing more: the reader must not wait for or allocate it.
            send.write_all(&(1u32 << 30).to_be_bytes()).await.unwrap();
            read_frame::<String>(&mut recv, 1024).await.unwrap()
        })
        .await;
        assert_eq!(
            result,
            "frame too large: 1073741824 bytes > limit of 16 bytes"
        );
    }
}
