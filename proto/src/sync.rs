//! Config sync between edges and control nodes: the messages, the per-edge filter, and the
//! edge's view of the config with the one function that applies an update to it.
//!
//! One bidirectional QUIC stream per session (ALPN [`ALPN_SYNC`], mutual TLS):
//!
//! ```text
//! edge                                   control node
//!  | Hello{id, region, versions, rev R}  ->|
//!  |<- Welcome{node, protocol version}     |   or Refused{reason}, then the stream ends
//!  |<- Update{base R or none, rev S, ...}  |   changes since R, or a full snapshot
//!  | Ack{S} / Nack{S, reason}            ->|
//!  |<- Update{base S, rev T, ...}          |   each new revision, once the last is answered
//!  | Heartbeat{rev}  <->  Heartbeat{rev}   |   both ways, every interval
//! ```
//!
//! Enrolment (ALPN [`ALPN_ENROL`]) is one request and one answer on a stream of a connection
//! the edge opens without a client certificate, trusting the control node's certificate only
//! if it chains to the CA pinned in its join token.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::model::{Api, Deployment, Document, EndpointMode};
use crate::validate::{MAX_APIS, is_region};

/// ALPN of config sync between an edge and a control node.
pub const ALPN_SYNC: &[u8] = b"portico-sync/1";
/// ALPN of edge enrolment (the only protocol a peer without a certificate may speak).
pub const ALPN_ENROL: &[u8] = b"portico-enrol/1";

/// The server name every control node's certificate carries, and the name edges dial them by
/// (an edge knows control nodes by address, not by node id).
pub const CONTROL_SERVER_NAME: &str = "control.portico.internal";

/// QUIC application close code: the control node refuses this peer (unknown or revoked edge,
/// wrong certificate for the protocol). The close reason says why.
pub const CLOSE_FORBIDDEN: u32 = 0x11;
/// QUIC application close code: the peer sent an oversized or malformed frame.
pub const CLOSE_BAD_INPUT: u32 = 0x12;

/// The sync protocol version this build speaks. A control node serves edges from
/// [`MIN_PROTOCOL_VERSION`] up to its own version, each in the edge's version; an edge newer
/// than the control node is refused (upgrade control nodes first).
pub const PROTOCOL_VERSION: u32 = 1;
/// The oldest edge protocol this build's control node still serves.
pub const MIN_PROTOCOL_VERSION: u32 = 1;

/// Largest frame an edge may send (hello, acks, heartbeats, enrolment requests).
pub const MAX_EDGE_FRAME: usize = 64 * 1024;
/// Largest frame a control node may send (a full snapshot of every API an edge serves).
pub const MAX_CONTROL_FRAME: usize = 64 * 1024 * 1024;
/// Longest text (nack reasons, refusals, versions) either side keeps from the other.
pub const MAX_REASON_BYTES: usize = 4096;

/// What an edge tells a control node when a session starts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// Must match the identity in the edge's certificate.
    pub edge_id: String,
    pub region: String,
    /// The edge's build, e.g. `0.1.0` (shown to operators).
    pub software_version: String,
    pub protocol_version: u32,
    /// The revision the edge serves (0: none). The answer is the changes since it.
    pub revision: u64,
    /// Whether the edge has a private listener (it then receives private APIs).
    pub private_listener: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum EdgeMessage {
    Hello(Hello),
    /// The edge applied and persisted this revision and now serves it.
    Ack {
        revision: u64,
    },
    /// The edge refused this revision and keeps serving the one it had.
    Nack {
        revision: u64,
        reason: String,
    },
    /// The revision the edge serves.
    Heartbeat {
        revision: u64,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ControlMessage {
    /// The session is accepted, in `protocol_version`.
    Welcome {
        node_id: u64,
        protocol_version: u32,
    },
    /// The session is refused (version skew, revoked or unknown edge, identity mismatch); the
    /// control node finishes the stream after it.
    Refused {
        reason: String,
    },
    Update(ConfigUpdate),
    /// The revision the control node has applied (an edge behind it is lagging).
    Heartbeat {
        revision: u64,
    },
}

/// The changes that take an edge from revision `base` to `revision`, or (with no base) its
/// whole config at `revision`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigUpdate {
    pub base: Option<u64>,
    pub revision: u64,
    pub changes: Vec<ConfigChange>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ConfigChange {
    /// Creates or replaces an API, with every deployment its stages point at.
    PutApi {
        api: Api,
        deployments: Vec<Deployment>,
    },
    /// Removes an API and its deployments (a no-op when the edge does not have it).
    DeleteApi { id: String },
}

/// Which edges receive an API: see [`EndpointMode`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EdgeFilter {
    pub region: String,
    pub private_listener: bool,
}

impl EdgeFilter {
    pub fn admits(&self, api: &Api) -> bool {
        let in_region = api.region.as_deref().is_none_or(|r| r == self.region);
        match api.endpoint {
            EndpointMode::Edge => true,
            EndpointMode::Regional => in_region,
            EndpointMode::Private => self.private_listener && in_region,
        }
    }
}

/// Why an edge refuses an update. The edge nacks with this text and keeps its config.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpdateError {
    #[error(
        "update to revision {revision} is based on revision {base}, but this edge is at {have}"
    )]
    WrongBase { base: u64, have: u64, revision: u64 },
    #[error("update to revision {revision} would move this edge back from revision {have}")]
    Backwards { revision: u64, have: u64 },
    #[error("update to revision {revision} holds {count} APIs, more than the limit of {MAX_APIS}")]
    TooMany { revision: u64, count: usize },
    #[error(
        "update to revision {revision}: deployment {deployment:?} is for API {owner:?}, sent with API {api:?}"
    )]
    ForeignDeployment {
        revision: u64,
        api: String,
        deployment: String,
        owner: String,
    },
}

/// What an edge holds: the APIs it serves and the deployments their stages point at, at a
/// revision. Built only by [`EdgeView::apply`], so a delta from R and a fresh snapshot at the
/// same revision give the same view.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EdgeView {
    pub revision: u64,
    pub apis: BTreeMap<String, Api>,
    /// By API id, then deployment id.
    pub deployments: BTreeMap<String, BTreeMap<String, Deployment>>,
}

impl EdgeView {
    /// The view after `update`, or why the update does not fit this view. Checks only the
    /// shape of the update; the caller validates the resulting document before serving it.
    pub fn apply(&self, update: &ConfigUpdate) -> Result<EdgeView, UpdateError> {
        let mut next = match update.base {
            None => EdgeView::default(),
            Some(base) if base == self.revision => self.clone(),
            Some(base) => {
                return Err(UpdateError::WrongBase {
                    base,
                    have: self.revision,
                    revision: update.revision,
                });
            }
        };
        if update.revision < self.revision {
            return Err(UpdateError::Backwards {
                revision: update.revision,
                have: self.revision,
            });
        }
        next.revision = update.revision;
        for change in &update.changes {
            match change {
                ConfigChange::DeleteApi { id } => {
                    next.apis.remove(id);
                    next.deployments.remove(id);
                }
                ConfigChange::PutApi { api, deployments } => {
                    let mut pinned = BTreeMap::new();
                    for d in deployments {
                        if d.api != api.id {
                            return Err(UpdateError::ForeignDeployment {
                                revision: update.revision,
                                api: api.id.clone(),
                                deployment: d.id.clone(),
                                owner: d.api.clone(),
                            });
                        }
                        pinned.insert(d.id.clone(), d.clone());
                    }
                    next.apis.insert(api.id.clone(), api.clone());
                    next.deployments.insert(api.id.clone(), pinned);
                }
            }
            if next.apis.len() > MAX_APIS {
                return Err(UpdateError::TooMany {
                    revision: update.revision,
                    count: next.apis.len(),
                });
            }
        }
        Ok(next)
    }

    /// The view as a declarative document, which the edge validates and compiles.
    pub fn to_document(&self) -> Document {
        Document {
            apis: self.apis.values().cloned().collect(),
            deployments: self
                .deployments
                .values()
                .flat_map(|m| m.values().cloned())
                .collect(),
        }
    }
}

/// The deployments an API's stages point at: what an edge needs beside the API itself.
pub fn pinned_deployment_ids(api: &Api) -> impl Iterator<Item = &str> {
    api.stages.iter().filter_map(|s| s.deployment.as_deref())
}

/// An edge asking to join: the join token, its region, and a certificate signing request for
/// a key it generated (the private key never leaves the edge).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrolRequest {
    /// The admin-API token part of the join token (role `edge`).
    pub token: String,
    pub region: String,
    /// PKCS#10, DER. Only its public key is used; the control node sets the identity.
    pub csr_der: Vec<u8>,
    pub software_version: String,
    pub protocol_version: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum EnrolResponse {
    Granted {
        edge_id: String,
        region: String,
        cluster_name: String,
        /// The edge's certificate, PEM.
        cert_pem: String,
        /// The cluster CA's certificate, PEM (the pin in the join token matched it).
        ca_pem: String,
    },
    /// Only the leader enrols; ask it at this QUIC address.
    NotLeader {
        leader: Option<String>,
    },
    Refused {
        reason: String,
    },
}

/// An edge join token as an operator passes it: the admin-API token and the SHA-256 of the
/// cluster CA certificate (DER), so the edge can trust the control node it enrols with before
/// it has the CA. Written `{token}.{64 hex digits}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinToken {
    pub token: String,
    pub ca_sha256: [u8; 32],
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JoinTokenError {
    #[error(
        "the join token must be TOKEN.CA-SHA256 (as `portico token create NAME --role edge` prints it)"
    )]
    Shape,
    #[error("the CA fingerprint in the join token must be 64 hex digits")]
    Fingerprint,
}

impl JoinToken {
    pub fn parse(s: &str) -> Result<JoinToken, JoinTokenError> {
        let (token, pin) = s.trim().rsplit_once('.').ok_or(JoinTokenError::Shape)?;
        if token.is_empty() {
            return Err(JoinTokenError::Shape);
        }
        if pin.len() != 64 || !pin.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(JoinTokenError::Fingerprint);
        }
        let mut ca_sha256 = [0u8; 32];
        for (i, byte) in ca_sha256.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&pin[2 * i..2 * i + 2], 16)
                .map_err(|_| JoinTokenError::Fingerprint)?;
        }
        Ok(JoinToken {
            token: token.to_string(),
            ca_sha256,
        })
    }

    pub fn format(token: &str, ca_sha256: &[u8; 32]) -> String {
        let hex: String = ca_sha256.iter().map(|b| format!("{b:02x}")).collect();
        format!("{token}.{hex}")
    }
}

/// Checks the fields of a hello that the control node relies on.
pub fn check_hello(hello: &Hello) -> Result<(), String> {
    if !is_region(&hello.region) {
        return Err(format!("region {:?} is not a valid region", hello.region));
    }
    if hello.software_version.len() > 64 {
        return Err("software_version is longer than 64 bytes".into());
    }
    Ok(())
}

/// Cuts text from a peer to [`MAX_REASON_BYTES`] on a character boundary.
pub fn bounded_text(s: &str) -> String {
    let mut end = s.len().min(MAX_REASON_BYTES);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ApiKind, ApiSnapshot, Stage};

    fn api(id: &str, endpoint: EndpointMode, region: Option<&str>) -> Api {
        Api {
            id: id.into(),
            name: String::new(),
            description: String::new(),
            kind: ApiKind::Http,
            endpoint,
            region: region.map(str::to_string),
            routes: vec![],
            gateway_responses: Default::default(),
            stages: vec![],
        }
    }

    fn deployment(api: &str, id: &str) -> Deployment {
        Deployment {
            id: id.into(),
            api: api.into(),
            description: String::new(),
            snapshot: ApiSnapshot {
                kind: ApiKind::Http,
                routes: vec![],
                gateway_responses: Default::default(),
            },
        }
    }

    #[test]
    fn filters_follow_endpoint_modes() {
        let eu = EdgeFilter {
            region: "eu".into(),
            private_listener: false,
        };
        let us_private = EdgeFilter {
            region: "us".into(),
            private_listener: true,
        };
        let everywhere = api("a", EndpointMode::Edge, None);
        let eu_only = api("b", EndpointMode::Regional, Some("eu"));
        let private = api("c", EndpointMode::Private, None);
        let private_eu = api("d", EndpointMode::Private, Some("eu"));
        assert!(eu.admits(&everywhere) && us_private.admits(&everywhere));
        assert!(eu.admits(&eu_only) && !us_private.admits(&eu_only));
        assert!(!eu.admits(&private) && us_private.admits(&private));
        assert!(!eu.admits(&private_eu) && !us_private.admits(&private_eu));
    }

    #[test]
    fn updates_apply_in_order_and_refuse_what_does_not_fit() {
        let mut a = api("a", EndpointMode::Edge, None);
        a.stages.push(Stage {
            name: "prod".into(),
            description: String::new(),
            deployment: Some("d1".into()),
            auto_deploy: false,
            variables: Default::default(),
        });
        let snapshot = ConfigUpdate {
            base: None,
            revision: 5,
            changes: vec![ConfigChange::PutApi {
                api: a.clone(),
                deployments: vec![deployment("a", "d1")],
            }],
        };
        let view = EdgeView::default().apply(&snapshot).unwrap();
        assert_eq!(view.revision, 5);
        assert_eq!(view.to_document().deployments.len(), 1);
        assert!(view.to_document().validate().is_ok());

        let delete = ConfigUpdate {
            base: Some(5),
            revision: 7,
            changes: vec![ConfigChange::DeleteApi { id: "a".into() }],
        };
        let after = view.apply(&delete).unwrap();
        assert!(after.apis.is_empty() && after.deployments.is_empty());

        // A delta from another base, an older revision, a foreign deployment: refused.
        assert!(matches!(
            after.apply(&delete),
            Err(UpdateError::WrongBase {
                base: 5,
                have: 7,
                ..
            })
        ));
        let older = ConfigUpdate {
            base: None,
            revision: 6,
            changes: vec![],
        };
        assert!(matches!(
            after.apply(&older),
            Err(UpdateError::Backwards { .. })
        ));
        let foreign = ConfigUpdate {
            base: Some(7),
            revision: 8,
            changes: vec![ConfigChange::PutApi {
                api: api("b", EndpointMode::Edge, None),
                deployments: vec![deployment("a", "d1")],
            }],
        };
        assert!(matches!(
            after.apply(&foreign),
            Err(UpdateError::ForeignDeployment { .. })
        ));
    }

    #[test]
    fn join_tokens_round_trip_and_bad_ones_say_why() {
        let pin = [0xabu8; 32];
        let s = JoinToken::format("ptk_01_secret", &pin);
        let parsed = JoinToken::parse(&s).unwrap();
        assert_eq!(parsed.token, "ptk_01_secret");
        assert_eq!(parsed.ca_sha256, pin);
        assert_eq!(
            JoinToken::parse("ptk_01_secret"),
            Err(JoinTokenError::Shape)
        );
        assert_eq!(
            JoinToken::parse("ptk_01_secret.abc"),
            Err(JoinTokenError::Fingerprint)
        );
    }

    #[test]
    fn peer_text_is_bounded_on_a_char_boundary() {
        let long = "é".repeat(MAX_REASON_BYTES);
        let cut = bounded_text(&long);
        assert!(cut.len() <= MAX_REASON_BYTES && cut.chars().all(|c| c == 'é'));
    }
}
