//! Snapshots of the state: a versioned bincode encoding, and a digest that two replicas with the
//! same state share.

use serde::{Deserialize, Serialize};

use crate::state::State;

/// Snapshots outlive binaries: the format is versioned, and new versions are added as new
/// variants, never by changing an old one.
#[derive(Serialize, Deserialize)]
enum Encoded {
    V1(State),
}

/// Snapshots larger than this are refused when read back (a peer's snapshot is untrusted input).
pub const MAX_SNAPSHOT_BYTES: usize = 512 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("cannot encode the state: {0}")]
    Encode(#[from] bincode::error::EncodeError),
    #[error("the snapshot is corrupt or of an unknown version: {0}")]
    Decode(#[from] bincode::error::DecodeError),
    #[error("the snapshot has {0} trailing bytes")]
    Trailing(usize),
}

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<MAX_SNAPSHOT_BYTES>()
}

impl State {
    pub fn snapshot(&self) -> Result<Vec<u8>, SnapshotError> {
        Ok(bincode::serde::encode_to_vec(
            Encoded::V1(self.clone()),
            config(),
        )?)
    }

    pub fn restore(bytes: &[u8]) -> Result<State, SnapshotError> {
        let (encoded, read): (Encoded, usize) = bincode::serde::decode_from_slice(bytes, config())?;
        if read != bytes.len() {
            return Err(SnapshotError::Trailing(bytes.len() - read));
        }
        match encoded {
            Encoded::V1(state) => Ok(state),
        }
    }

    /// SHA-256 of the snapshot encoding, hex. Ordered maps make it canonical.
    pub fn digest(&self) -> String {
        let bytes = self.snapshot().unwrap_or_default();
        let d = ring::digest::digest(&ring::digest::SHA256, &bytes);
        d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
    }
}
