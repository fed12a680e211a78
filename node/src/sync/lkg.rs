//! Last-known-good: the config an edge last applied, on disk, so that it boots and serves
//! without any control node (static stability).
//!
//! ```text
//! "PORTICO-LKG\0" | format: u16 BE | SHA-256 of payload: 32 bytes | payload length: u64 BE | payload
//! ```
//! The payload is a frame ([`portico_proto::frame`]) holding a [`LastKnownGood`]. A file that
//! fails any check is reported as corrupt, never served.

use std::path::Path;

use portico_proto::frame::{decode_body, encode_frame};
use portico_proto::sync::{EdgeFilter, EdgeView};
use serde::{Deserialize, Serialize};

use super::tls::sha256;
use crate::persist::write_atomically;

const MAGIC: &[u8; 12] = b"PORTICO-LKG\0";
const FORMAT: u16 = 1;
const HEADER: usize = MAGIC.len() + 2 + 32 + 8;
/// Larger files are refused unread.
pub const MAX_LKG_BYTES: u64 = 512 * 1024 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastKnownGood {
    pub edge_id: String,
    /// What the view was filtered for: an edge whose listeners changed asks for a fresh one.
    pub filter: EdgeFilter,
    pub view: EdgeView,
}

#[derive(Debug, thiserror::Error)]
pub enum LkgError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} is corrupt: {reason}")]
    Corrupt { path: String, reason: String },
}

pub fn save(path: &Path, lkg: &LastKnownGood) -> Result<(), LkgError> {
    let write_error = |source| LkgError::Write {
        path: path.display().to_string(),
        source,
    };
    let payload = encode_frame(lkg).map_err(|e| write_error(std::io::Error::other(e)))?;
    let mut bytes = Vec::with_capacity(HEADER + payload.len());
    bytes.extend_from_slice(MAGIC);
    bytes.extend_from_slice(&FORMAT.to_be_bytes());
    bytes.extend_from_slice(&sha256(&payload));
    bytes.extend_from_slice(&(payload.len() as u64).to_be_bytes());
    bytes.extend_from_slice(&payload);
    write_atomically(path, &bytes).map_err(write_error)
}

/// The saved config, `None` when there is none, or why the file cannot be trusted.
pub fn load(path: &Path) -> Result<Option<LastKnownGood>, LkgError> {
    let name = path.display().to_string();
    let corrupt = |reason: String| LkgError::Corrupt {
        path: name.clone(),
        reason,
    };
    let len = match std::fs::metadata(path) {
        Ok(m) => m.len(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(LkgError::Read { path: name, source }),
    };
    if len > MAX_LKG_BYTES {
        return Err(corrupt(format!(
            "{len} bytes, more than the limit of {MAX_LKG_BYTES}"
        )));
    }
    let bytes = std::fs::read(path).map_err(|source| LkgError::Read {
        path: name.clone(),
        source,
    })?;
    if bytes.len() < HEADER || &bytes[..MAGIC.len()] != MAGIC {
        return Err(corrupt("not a last-known-good file (bad header)".into()));
    }
    let mut at = MAGIC.len();
    let format = u16::from_be_bytes([bytes[at], bytes[at + 1]]);
    at += 2;
    if format != FORMAT {
        return Err(corrupt(format!(
            "unknown format {format} (this build reads {FORMAT})"
        )));
    }
    let checksum = &bytes[at..at + 32];
    at += 32;
    let mut declared = [0u8; 8];
    declared.copy_from_slice(&bytes[at..at + 8]);
    at += 8;
    let payload = &bytes[at..];
    if u64::from_be_bytes(declared) != payload.len() as u64 {
        return Err(corrupt(format!(
            "truncated: {} payload bytes, the header says {}",
            payload.len(),
            u64::from_be_bytes(declared)
        )));
    }
    if sha256(payload) != checksum {
        return Err(corrupt("checksum mismatch".into()));
    }
    if payload.len() < 4 {
        return Err(corrupt("empty payload".into()));
    }
    decode_body(&payload[4..])
        .map(Some)
        .map_err(|e| corrupt(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> LastKnownGood {
        LastKnownGood {
            edge_id: "eu-7".into(),
            filter: EdgeFilter {
                region: "eu".into(),
                private_listener: false,
            },
            view: EdgeView {
                revision: 42,
                ..EdgeView::default()
            },
        }
    }

    #[test]
    fn round_trips_and_detects_every_kind_of_damage() {
        let dir = std::env::temp_dir().join(format!("portico-lkg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("lkg");
        assert!(load(&path).unwrap().is_none());
        save(&path, &sample()).unwrap();
        assert_eq!(load(&path).unwrap(), Some(sample()));

        let good = std::fs::read(&path).unwrap();
        let damaged = |f: &dyn Fn(&mut Vec<u8>)| {
            let mut bytes = good.clone();
            f(&mut bytes);
            std::fs::write(&path, &bytes).unwrap();
            match load(&path) {
                Err(LkgError::Corrupt { reason, .. }) => reason,
                other => panic!("{other:?}"),
            }
        };
        assert!(damaged(&|b| b[0] = b'X').contains("bad header"));
        assert!(damaged(&|b| *b.last_mut().unwrap() ^= 1).contains("checksum"));
        assert!(damaged(&|b| b.truncate(b.len() - 1)).contains("truncated"));
        assert!(damaged(&|b| b.truncate(10)).contains("bad header"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
