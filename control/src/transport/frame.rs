//! Frames on QUIC streams: the codec is [`portico_proto::frame`] (length prefix, envelope
//! version, bincode body); this module reads and writes it on quinn streams.

use portico_proto::frame::{CodecError, LENGTH_BYTES, decode_body, frame_length};
use quinn::{ReadExactError, RecvStream, SendStream};
use serde::Serialize;
use serde::de::DeserializeOwned;

pub use portico_proto::frame::{FRAME_VERSION, encode_frame};

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error(transparent)]
    Codec(#[from] CodecError),
    #[error("stream closed before a frame")]
    Closed,
    #[error("stream closed in the middle of a frame ({got} of {expected} bytes)")]
    Truncated { expected: u64, got: u64 },
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
    let len = frame_length(prefix, max_len)?;
    let mut frame = vec![0u8; len];
    match recv.read_exact(&mut frame).await {
        Ok(()) => {}
        Err(ReadExactError::FinishedEarly(got)) => {
            return Err(FrameError::Truncated {
                expected: len as u64,
                got: got as u64,
            });
        }
        Err(ReadExactError::ReadError(e)) => return Err(e.into()),
    }
    Ok(decode_body(&frame)?)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::transport::ca::ClusterCa;
    use crate::transport::node_dns_name;
    use crate::transport::test_support::{
        echo_server, install_crypto, node_client_endpoint, within,
    };

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
