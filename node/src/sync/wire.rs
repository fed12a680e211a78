//! Frames on the edge's QUIC streams: [`portico_proto::frame`]'s codec read and written on
//! quinn streams, with the reader's size limit checked before anything is allocated.

use portico_proto::frame::{CodecError, LENGTH_BYTES, decode_body, encode_frame, frame_length};
use quinn::{ReadExactError, RecvStream, SendStream};
use serde::Serialize;
use serde::de::DeserializeOwned;

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error(transparent)]
    Codec(#[from] CodecError),
    #[error("the control node ended the stream")]
    Closed,
    #[error("the stream ended in the middle of a frame")]
    Truncated,
    #[error("stream read failed: {0}")]
    Read(#[from] quinn::ReadError),
    #[error("stream write failed: {0}")]
    Write(#[from] quinn::WriteError),
}

pub async fn write_frame<T: Serialize>(send: &mut SendStream, msg: &T) -> Result<(), WireError> {
    send.write_all(&encode_frame(msg)?).await?;
    Ok(())
}

pub async fn read_frame<T: DeserializeOwned>(
    recv: &mut RecvStream,
    max_len: usize,
) -> Result<T, WireError> {
    let exact = |e: ReadExactError, at_start: bool| match e {
        ReadExactError::FinishedEarly(0) if at_start => WireError::Closed,
        ReadExactError::FinishedEarly(_) => WireError::Truncated,
        ReadExactError::ReadError(e) => WireError::Read(e),
    };
    let mut prefix = [0u8; LENGTH_BYTES];
    recv.read_exact(&mut prefix)
        .await
        .map_err(|e| exact(e, true))?;
    let mut frame = vec![0u8; frame_length(prefix, max_len)?];
    recv.read_exact(&mut frame)
        .await
        .map_err(|e| exact(e, false))?;
    Ok(decode_body(&frame)?)
}
