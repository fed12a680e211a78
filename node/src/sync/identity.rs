//! The edge's identity in its cluster: enrolment with a join token, and the files it keeps
//! (`identity.json`, `ca.pem`, `edge.pem`, `edge.key`) in its data directory.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use portico_proto::sync::{
    CONTROL_SERVER_NAME, EnrolRequest, EnrolResponse, JoinToken, MAX_EDGE_FRAME, PROTOCOL_VERSION,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};

use super::tls::{enrol_client_config, sha256};
use super::wire::{read_frame, write_frame};
use crate::persist::{write_atomically, write_private};

/// Who this edge is, as its certificate says, and what it presents to control nodes.
#[derive(Debug)]
pub struct EdgeIdentity {
    pub edge_id: String,
    pub region: String,
    pub cluster_name: String,
    pub ca: CertificateDer<'static>,
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

#[derive(Serialize, Deserialize)]
struct IdentityFile {
    edge_id: String,
    region: String,
    cluster_name: String,
}

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("{path}: {message}")]
    File { path: String, message: String },
    #[error("enrolment refused by {control}: {reason}")]
    Refused { control: SocketAddr, reason: String },
    #[error("no control node could be reached to enrol ({0})")]
    Unreachable(String),
    #[error("{0}")]
    Other(String),
}

fn file_error(path: &Path, e: impl std::fmt::Display) -> IdentityError {
    IdentityError::File {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}

impl EdgeIdentity {
    /// The identity saved in `dir`, or `None` when the edge has not enrolled yet.
    pub fn load(dir: &Path) -> Result<Option<EdgeIdentity>, IdentityError> {
        let meta = dir.join("identity.json");
        if !meta.exists() {
            return Ok(None);
        }
        let text = std::fs::read_to_string(&meta).map_err(|e| file_error(&meta, e))?;
        let file: IdentityFile = serde_json::from_str(&text).map_err(|e| file_error(&meta, e))?;
        let ca_path = dir.join("ca.pem");
        let ca = CertificateDer::from_pem_file(&ca_path).map_err(|e| file_error(&ca_path, e))?;
        let cert_path = dir.join("edge.pem");
        let chain = CertificateDer::pem_file_iter(&cert_path)
            .map_err(|e| file_error(&cert_path, e))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| file_error(&cert_path, e))?;
        let key_path = dir.join("edge.key");
        let key = PrivateKeyDer::from_pem_file(&key_path).map_err(|e| file_error(&key_path, e))?;
        Ok(Some(EdgeIdentity {
            edge_id: file.edge_id,
            region: file.region,
            cluster_name: file.cluster_name,
            ca,
            chain,
            key,
        }))
    }

    /// Enrols with the first control node in `controls` that answers (following it to the
    /// leader), then saves the identity in `dir`. The key is generated here and never sent.
    pub async fn enrol(
        endpoint: &quinn::Endpoint,
        controls: &[SocketAddr],
        join: &JoinToken,
        region: &str,
        dir: &Path,
    ) -> Result<EdgeIdentity, IdentityError> {
        let key = rcgen::KeyPair::generate().map_err(|e| IdentityError::Other(e.to_string()))?;
        let csr = rcgen::CertificateParams::new(Vec::<String>::new())
            .and_then(|p| p.serialize_request(&key))
            .map_err(|e| IdentityError::Other(format!("certificate request: {e}")))?;
        let request = EnrolRequest {
            token: join.token.clone(),
            region: region.to_string(),
            csr_der: csr.der().to_vec(),
            software_version: crate::VERSION.to_string(),
            protocol_version: PROTOCOL_VERSION,
        };
        let config = enrol_client_config(join.ca_sha256, Duration::from_secs(10))
            .map_err(|e| IdentityError::Other(e.to_string()))?;
        let mut queue: Vec<SocketAddr> = controls.to_vec();
        let mut failures = Vec::new();
        let mut hops = 0;
        while let Some(control) = (!queue.is_empty()).then(|| queue.remove(0)) {
            let answer = tokio::time::timeout(
                Duration::from_secs(15),
                ask(endpoint, &config, control, &request),
            )
            .await
            .unwrap_or_else(|_| Err("no answer within 15 s".into()));
            match answer {
                Ok(EnrolResponse::Granted {
                    edge_id,
                    region,
                    cluster_name,
                    cert_pem,
                    ca_pem,
                }) => {
                    let ca = CertificateDer::from_pem_slice(ca_pem.as_bytes()).map_err(|e| {
                        IdentityError::Other(format!("the CA certificate sent: {e}"))
                    })?;
                    if sha256(ca.as_ref()) != join.ca_sha256 {
                        return Err(IdentityError::Other(
                            "the CA certificate sent does not match the join token's fingerprint"
                                .into(),
                        ));
                    }
                    let chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
                        .collect::<Result<Vec<_>, _>>()
                        .map_err(|e| IdentityError::Other(format!("the certificate sent: {e}")))?;
                    save(
                        dir,
                        &edge_id,
                        &region,
                        &cluster_name,
                        &ca_pem,
                        &cert_pem,
                        &key.serialize_pem(),
                    )?;
                    tracing::info!(edge = %edge_id, %region, %control, "enrolled");
                    return Ok(EdgeIdentity {
                        edge_id,
                        region,
                        cluster_name,
                        ca,
                        chain,
                        key: PrivateKeyDer::from_pem_slice(key.serialize_pem().as_bytes())
                            .map_err(|e| IdentityError::Other(e.to_string()))?,
                    });
                }
                Ok(EnrolResponse::Refused { reason }) => {
                    return Err(IdentityError::Refused { control, reason });
                }
                Ok(EnrolResponse::NotLeader { leader }) => {
                    hops += 1;
                    match leader.and_then(|l| l.parse::<SocketAddr>().ok()) {
                        Some(leader) if hops <= 5 => queue.insert(0, leader),
                        _ => {
                            failures.push(format!("{control}: not the leader, and no leader known"))
                        }
                    }
                }
                Err(e) => failures.push(format!("{control}: {e}")),
            }
        }
        Err(IdentityError::Unreachable(failures.join("; ")))
    }
}

async fn ask(
    endpoint: &quinn::Endpoint,
    config: &quinn::ClientConfig,
    control: SocketAddr,
    request: &EnrolRequest,
) -> Result<EnrolResponse, String> {
    let conn = endpoint
        .connect_with(config.clone(), control, CONTROL_SERVER_NAME)
        .map_err(|e| e.to_string())?
        .await
        .map_err(|e| e.to_string())?;
    // The control node's reason when it closed the connection (e.g. too many enrolling at
    // once) says more than the stream error it caused.
    let why = |e: String| match conn.close_reason() {
        Some(quinn::ConnectionError::ApplicationClosed(close)) => {
            format!(
                "closed by the control node: {}",
                String::from_utf8_lossy(&close.reason)
            )
        }
        _ => e,
    };
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| why(e.to_string()))?;
    write_frame(&mut send, request)
        .await
        .map_err(|e| why(e.to_string()))?;
    let _ = send.finish();
    let answer = read_frame::<EnrolResponse>(&mut recv, MAX_EDGE_FRAME)
        .await
        .map_err(|e| why(e.to_string()));
    conn.close(0u32.into(), b"enrolled");
    answer
}

fn save(
    dir: &Path,
    edge_id: &str,
    region: &str,
    cluster_name: &str,
    ca_pem: &str,
    cert_pem: &str,
    key_pem: &str,
) -> Result<(), IdentityError> {
    std::fs::create_dir_all(dir).map_err(|e| file_error(dir, e))?;
    let path = dir.join("edge.key");
    write_private(&path, key_pem.as_bytes()).map_err(|e| file_error(&path, e))?;
    for (name, contents) in [("ca.pem", ca_pem), ("edge.pem", cert_pem)] {
        let path = dir.join(name);
        write_atomically(&path, contents.as_bytes()).map_err(|e| file_error(&path, e))?;
    }
    // Written last: its presence means the identity is complete.
    let meta = serde_json::to_vec_pretty(&IdentityFile {
        edge_id: edge_id.to_string(),
        region: region.to_string(),
        cluster_name: cluster_name.to_string(),
    })
    .map_err(|e| IdentityError::Other(e.to_string()))?;
    let path = dir.join("identity.json");
    write_atomically(&path, &meta).map_err(|e| file_error(&path, e))
}
