//! Edge enrolment (`portico-enrol/1`): an edge with a join token and no certificate yet sends
//! one [`EnrolRequest`]; the leader records the edge in the replicated state (its id is
//! `{region}-{log index}`) and signs the public key of the edge's request with the cluster CA.
//! A follower answers with the leader's address. The private key never leaves the edge.

use std::sync::Arc;
use std::time::Duration;

use portico_proto::sync::{
    EnrolRequest, EnrolResponse, JoinToken, MAX_EDGE_FRAME, PROTOCOL_VERSION, bounded_text,
};
use quinn::Connection;

use crate::admin::auth::authenticate_token;
use crate::admin::{Backend, ProposeError};
use crate::node::ControlNode;
use crate::state::{Applied, Command, Role, State};
use crate::transport::frame::{read_frame, write_frame};
use crate::transport::server::{ConnectionTask, ProtocolHandler};
use crate::transport::{ClusterCa, PeerIdentity, close_code};

const ENROL_TIMEOUT: Duration = Duration::from_secs(10);

/// The join token an operator hands to `portico edge --join-token`: an edge-role token with
/// the cluster CA's fingerprint, so the edge can check the control node before it trusts it.
/// `None` while the cluster has no CA.
pub fn join_token(state: &State, token: &str) -> Option<String> {
    let ca = state.cluster_ca.as_ref()?;
    let der = crate::transport::ca::pem_der(&ca.cert_pem)?;
    Some(JoinToken::format(
        token,
        &crate::transport::ca_fingerprint(&der),
    ))
}

/// Mints an edge-role token on the cluster (leader only) and returns its join token.
pub async fn mint_join_token(node: &ControlNode, name: &str) -> Result<String, ProposeError> {
    let minted = crate::admin::auth::mint(name, Role::Edge)
        .map_err(|e| ProposeError::Internal(e.to_string()))?;
    match node
        .propose(Command::CreateToken {
            token: minted.record,
        })
        .await?
    {
        Applied::Done { .. } => join_token(&node.state.load(), &minted.token)
            .ok_or_else(|| ProposeError::Internal("the cluster has no CA yet".into())),
        Applied::Rejected { rejection, .. } => Err(ProposeError::Rejected(rejection)),
    }
}

pub struct EnrolService {
    pub node: Arc<ControlNode>,
}

impl ProtocolHandler for EnrolService {
    fn serve_connection(&self, conn: Connection, peer: PeerIdentity) -> ConnectionTask {
        let node = self.node.clone();
        Box::pin(async move {
            if peer != PeerIdentity::Anonymous {
                tracing::info!(%peer, "enrolment with a certificate: the edge is already enrolled");
            }
            let exchange = async {
                let (mut send, mut recv) = conn.accept_bi().await.ok()?;
                let answer = match read_frame::<EnrolRequest>(&mut recv, MAX_EDGE_FRAME).await {
                    Ok(request) => enrol(&node, request).await,
                    Err(e) => {
                        tracing::warn!(error = %e, "malformed enrolment request");
                        EnrolResponse::Refused {
                            reason: format!("malformed enrolment request: {e}"),
                        }
                    }
                };
                write_frame(&mut send, &answer).await.ok()?;
                let _ = send.finish();
                let _ = send.stopped().await;
                Some(())
            };
            if tokio::time::timeout(ENROL_TIMEOUT, exchange).await.is_err() {
                conn.close(close_code::FORBIDDEN, b"enrolment timed out");
            }
        })
    }
}

async fn enrol(node: &ControlNode, request: EnrolRequest) -> EnrolResponse {
    let refused = |reason: String| {
        tracing::warn!(region = %bounded_text(&request.region), %reason, "edge enrolment refused");
        EnrolResponse::Refused { reason }
    };
    if request.protocol_version > PROTOCOL_VERSION {
        return refused(format!(
            "the edge speaks sync protocol {}, this control node at most {PROTOCOL_VERSION}: upgrade the control plane first",
            request.protocol_version
        ));
    }
    let state = node.state.load();
    let token_id = match authenticate_token(&state, &request.token) {
        Ok((id, Role::Edge)) => id,
        Ok(_) => {
            return refused(
                "the join token is not an edge token (create one with --role edge)".into(),
            );
        }
        Err(_) if node.leader_elsewhere().is_some() => {
            // A token minted moments ago may not have reached this follower: the leader decides.
            return EnrolResponse::NotLeader {
                leader: node.leader_raft_addr(),
            };
        }
        Err(_) => return refused("the join token is unknown or malformed".into()),
    };
    let Some(ca) = state.cluster_ca.as_ref() else {
        return refused("the cluster has no CA yet".into());
    };
    let ca = match ClusterCa::from_pem(&ca.cert_pem, &ca.key_pem) {
        Ok(ca) => ca,
        Err(e) => return refused(format!("the cluster CA cannot be loaded: {e}")),
    };
    // Checked before anything is recorded: a bad request leaves no trace in the state.
    if let Err(e) = rcgen::CertificateSigningRequestParams::from_der(
        &rustls_pki_types::CertificateSigningRequestDer::from(request.csr_der.as_slice()),
    ) {
        return refused(format!("the certificate signing request is invalid: {e}"));
    }
    let command = Command::EnrolEdge {
        region: request.region.clone(),
        token_id,
    };
    let revision = match node.propose(command).await {
        Ok(Applied::Done { revision }) => revision,
        Ok(Applied::Rejected { rejection, .. }) => return refused(rejection.to_string()),
        Err(ProposeError::NotLeader { .. }) => {
            return EnrolResponse::NotLeader {
                leader: node.leader_raft_addr(),
            };
        }
        Err(e) => return refused(format!("the cluster could not record the edge: {e}")),
    };
    let edge_id = format!("{}-{revision}", request.region);
    match ca.issue_edge_for_csr(&edge_id, &request.region, &request.csr_der) {
        Ok(issued) => {
            tracing::info!(edge = %edge_id, version = %bounded_text(&request.software_version), "edge enrolled");
            EnrolResponse::Granted {
                edge_id,
                region: request.region,
                cluster_name: node.config.cluster_name.clone(),
                cert_pem: issued.cert_pem,
                ca_pem: ca.cert_pem().to_string(),
            }
        }
        Err(e) => refused(format!("issuing the edge certificate failed: {e}")),
    }
}
