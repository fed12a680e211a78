//! The replicated state and the pure function that applies commands to it.
//!
//! `apply` is total and deterministic: no clock, randomness, environment or I/O. Everything that
//! varies (ids, timestamps) is stamped by the leader into the [`Proposal`] before it is proposed,
//! so every replica that applies the same log reaches the same state, byte for byte. An invalid
//! command becomes a recorded rejection, never a panic, and leaves the state as it was (only the
//! revision moves, because the entry was applied).

use std::sync::Arc;

use imbl::OrdMap;

use portico_proto::{Api, Deployment, Document, Stage, ValidationErrors};
use serde::{Deserialize, Serialize};

/// A command as proposed by the leader: stamped with the time the leader accepted it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Proposal {
    /// Milliseconds since the Unix epoch, from the leader's clock.
    pub at_ms: u64,
    pub command: Command,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Command {
    /// Creates or replaces the APIs (with their stages) and deployments of a document, all or
    /// nothing. Objects not in the document are left alone. A stage the document leaves
    /// without a deployment keeps the one it has (set by `portico deploy`).
    ApplyDocument {
        document: Document,
    },
    /// Creates or replaces one API. `if_revision`: `Some(0)` means "must not exist",
    /// `Some(r)` means "must be at revision r" (optimistic concurrency).
    PutApi {
        api: Api,
        if_revision: Option<u64>,
    },
    DeleteApi {
        id: String,
        if_revision: Option<u64>,
    },
    /// Freezes the API's current definition as deployment `id` (stamped by the leader) and, when
    /// `stage` is set, points that stage at it.
    Deploy {
        api: String,
        id: String,
        description: String,
        stage: Option<String>,
    },
    CreateToken {
        token: TokenRecord,
    },
    DeleteToken {
        id: String,
    },
    /// Replicates the cluster CA so that whichever node leads can issue certificates to
    /// joining nodes and edges. Set once at bootstrap; setting it again to the same value is
    /// a no-op, to another value a rejection.
    SetClusterCa {
        ca: CaRecord,
    },
    /// Records the admission of a control node; the entry's index becomes its node id.
    AdmitMember {
        raft_addr: String,
        admin_addr: String,
    },
    /// Records an edge's enrolment with a token of role `edge`; its id is
    /// `{region}-{entry index}`, unique for the life of the cluster.
    EnrolEdge {
        region: String,
        token_id: String,
    },
    /// Revokes an edge: control nodes refuse its connections from then on.
    RemoveEdge {
        id: String,
    },
}

/// An enrolled edge. Revoked edges stay recorded, so their certificates stay refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EdgeRecord {
    pub id: String,
    pub region: String,
    /// The join token it enrolled with.
    pub token_id: String,
    pub enrolled_at_ms: u64,
    pub revoked_at_ms: Option<u64>,
}

/// How many API deletions the state remembers for edges' "changes since" (older ones are
/// forgotten and an edge behind them gets a full snapshot).
pub const MAX_TOMBSTONES: usize = 10_000;

/// A control node admitted to the cluster (its id is the key: the admission's log index).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Admission {
    pub raft_addr: String,
    pub admin_addr: String,
    pub at_ms: u64,
}

/// The cluster CA. Its key is replicated to every control node (as etcd's peer CA is kept on
/// every member): control nodes are the trust root of the cluster.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaRecord {
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for CaRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaRecord")
            .field("cert_pem", &self.cert_pem)
            .finish_non_exhaustive()
    }
}

/// What applying one entry did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Applied {
    Done { revision: u64 },
    Rejected { revision: u64, rejection: Rejection },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum Rejection {
    /// The command's content is invalid; each message names its field path.
    #[error("{}", .0.join("; "))]
    Invalid(Vec<String>),
    #[error("{kind} {id:?} not found")]
    NotFound { kind: String, id: String },
    /// An `if_revision` precondition failed.
    #[error("{kind} {id:?} is at revision {actual}, not {expected}")]
    Conflict {
        kind: String,
        id: String,
        expected: u64,
        actual: u64,
    },
    #[error("{kind} {id:?} already exists")]
    AlreadyExists { kind: String, id: String },
}

impl Rejection {
    fn invalid(errors: ValidationErrors) -> Rejection {
        Rejection::Invalid(errors.0.iter().map(|e| e.to_string()).collect())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Reads and writes everything.
    Admin,
    /// Reads everything except tokens; writes nothing.
    Viewer,
    /// May only join a control node to the cluster.
    Join,
    /// May only enrol edges (over QUIC, with the CA fingerprint: see `portico token create`).
    Edge,
}

/// An admin API bearer token. Only a hash of the secret is replicated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    pub id: String,
    pub name: String,
    pub role: Role,
    /// Hex SHA-256 of the secret.
    pub secret_sha256: String,
}

/// An object with the bookkeeping every stored object carries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Versioned<T> {
    /// The revision (log index) that last changed it.
    pub revision: u64,
    pub created_at_ms: u64,
    pub updated_at_ms: u64,
    /// Shared: copying the state (each write works on a copy while readers hold the last one)
    /// copies pointers, not every API.
    pub value: Arc<T>,
}

/// Everything the control plane replicates.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct State {
    /// The log index of the last applied entry.
    pub revision: u64,
    pub apis: OrdMap<String, Versioned<Api>>,
    /// By API id, then deployment id.
    pub deployments: OrdMap<String, OrdMap<String, Versioned<Deployment>>>,
    pub tokens: OrdMap<String, Versioned<TokenRecord>>,
    pub cluster_ca: Option<CaRecord>,
    /// Every control node ever admitted by `join`, by node id.
    pub admissions: OrdMap<u64, Admission>,
    /// Every edge ever enrolled, by id.
    pub edges: OrdMap<String, EdgeRecord>,
    /// Deleted API ids by the revision that deleted them, the latest [`MAX_TOMBSTONES`].
    pub api_tombstones: OrdMap<u64, Vec<String>>,
    /// The newest revision whose deletions were forgotten: "changes since R" is complete only
    /// for R at or after it.
    pub tombstone_floor: u64,
}

impl State {
    /// Applies the entry at log `index`. Total: every input gives a state and an answer.
    pub fn apply(&mut self, index: u64, proposal: &Proposal) -> Applied {
        self.revision = index;
        // Every command checks everything before it changes anything, so it is applied in
        // place: a rejection leaves the state as it was (the property tests hold it to that).
        match self.apply_command(index, proposal.at_ms, &proposal.command) {
            Ok(()) => Applied::Done { revision: index },
            Err(rejection) => Applied::Rejected {
                revision: index,
                rejection,
            },
        }
    }

    /// Checks a command against the current state without changing it: what the leader runs
    /// before proposing, so an operator gets the error at once.
    pub fn validate(&self, command: &Command) -> Result<(), Rejection> {
        let mut scratch = self.clone();
        scratch.apply_command(self.revision + 1, 0, command)
    }

    fn apply_command(&mut self, index: u64, at: u64, command: &Command) -> Result<(), Rejection> {
        match command {
            Command::ApplyDocument { document } => self.apply_document(index, at, document),
            Command::PutApi { api, if_revision } => {
                check_precondition(
                    "api",
                    &api.id,
                    self.apis.get(&api.id).map(|a| a.revision),
                    *if_revision,
                )?;
                let document = Document {
                    apis: vec![api.clone()],
                    deployments: Vec::new(),
                };
                self.apply_document(index, at, &document)
            }
            Command::DeleteApi { id, if_revision } => {
                let current = self.apis.get(id).map(|a| a.revision);
                if current.is_none() {
                    return Err(Rejection::NotFound {
                        kind: "api".into(),
                        id: id.clone(),
                    });
                }
                check_precondition("api", id, current, *if_revision)?;
                self.apis.remove(id);
                self.deployments.remove(id);
                self.api_tombstones
                    .entry(index)
                    .or_default()
                    .push(id.clone());
                while self.api_tombstones.len() > MAX_TOMBSTONES {
                    if let Some(&(revision, _)) = self.api_tombstones.get_min() {
                        self.api_tombstones.remove(&revision);
                        self.tombstone_floor = revision;
                    }
                }
                Ok(())
            }
            Command::Deploy {
                api,
                id,
                description,
                stage,
            } => self.deploy(index, at, api, id, description, stage.as_deref()),
            Command::CreateToken { token } => {
                if self.tokens.contains_key(&token.id) {
                    return Err(Rejection::AlreadyExists {
                        kind: "token".into(),
                        id: token.id.clone(),
                    });
                }
                if token.secret_sha256.len() != 64
                    || !token.secret_sha256.bytes().all(|b| b.is_ascii_hexdigit())
                {
                    return Err(Rejection::Invalid(vec![
                        "secret_sha256: must be 64 hex digits".into(),
                    ]));
                }
                if token.name.len() > 256 {
                    return Err(Rejection::Invalid(vec![
                        "name: at most 256 characters".into(),
                    ]));
                }
                self.tokens.insert(
                    token.id.clone(),
                    Versioned {
                        revision: index,
                        created_at_ms: at,
                        updated_at_ms: at,
                        value: Arc::new(token.clone()),
                    },
                );
                Ok(())
            }
            Command::SetClusterCa { ca } => match &self.cluster_ca {
                Some(existing) if existing == ca => Ok(()),
                Some(_) => Err(Rejection::AlreadyExists {
                    kind: "cluster CA".into(),
                    id: "ca".into(),
                }),
                None => {
                    if !ca.cert_pem.contains("BEGIN CERTIFICATE")
                        || !ca.key_pem.contains("PRIVATE KEY")
                    {
                        return Err(Rejection::Invalid(vec![
                            "ca: expected a PEM certificate and a PEM private key".into(),
                        ]));
                    }
                    self.cluster_ca = Some(ca.clone());
                    Ok(())
                }
            },
            Command::AdmitMember {
                raft_addr,
                admin_addr,
            } => {
                if raft_addr.len() > 256 || admin_addr.len() > 256 {
                    return Err(Rejection::Invalid(vec![
                        "member: addresses are at most 256 characters".into(),
                    ]));
                }
                self.admissions.insert(
                    index,
                    Admission {
                        raft_addr: raft_addr.clone(),
                        admin_addr: admin_addr.clone(),
                        at_ms: at,
                    },
                );
                Ok(())
            }
            Command::EnrolEdge { region, token_id } => {
                if !portico_proto::validate::is_region(region) {
                    return Err(Rejection::Invalid(vec![format!(
                        "region: {region:?} must be 1 to 63 of a-z, 0-9 and '-', not starting or ending with '-'"
                    )]));
                }
                if self.tokens.get(token_id).map(|t| t.value.role) != Some(Role::Edge) {
                    return Err(Rejection::NotFound {
                        kind: "edge join token".into(),
                        id: token_id.clone(),
                    });
                }
                let id = format!("{region}-{index}");
                self.edges.insert(
                    id.clone(),
                    EdgeRecord {
                        id,
                        region: region.clone(),
                        token_id: token_id.clone(),
                        enrolled_at_ms: at,
                        revoked_at_ms: None,
                    },
                );
                Ok(())
            }
            Command::RemoveEdge { id } => match self.edges.get_mut(id) {
                Some(edge) => {
                    edge.revoked_at_ms.get_or_insert(at);
                    Ok(())
                }
                None => Err(Rejection::NotFound {
                    kind: "edge".into(),
                    id: id.clone(),
                }),
            },
            Command::DeleteToken { id } => match self.tokens.remove(id) {
                Some(_) => Ok(()),
                None => Err(Rejection::NotFound {
                    kind: "token".into(),
                    id: id.clone(),
                }),
            },
        }
    }

    fn apply_document(
        &mut self,
        index: u64,
        at: u64,
        document: &Document,
    ) -> Result<(), Rejection> {
        // Stages the document leaves unpinned keep the deployment `portico deploy` gave them.
        let mut incoming = document.clone();
        for api in &mut incoming.apis {
            if let Some(existing) = self.apis.get(&api.id) {
                for stage in &mut api.stages {
                    if stage.deployment.is_none() {
                        stage.deployment = existing
                            .value
                            .stages
                            .iter()
                            .find(|s| s.name == stage.name)
                            .and_then(|s| s.deployment.clone());
                    }
                }
            }
        }
        // Validate what the document touches, as it will be stored: its APIs, the stored APIs
        // its deployments belong to, and those APIs' stored deployments (a stage may pin one
        // stored earlier). APIs it does not touch were valid when stored and stay so.
        let mut seen = std::collections::BTreeSet::new();
        for (i, api) in incoming.apis.iter().enumerate() {
            if !seen.insert(api.id.as_str()) {
                return Err(Rejection::Invalid(vec![format!(
                    "apis[{i}].id: API id {:?} is used twice",
                    api.id
                )]));
            }
        }
        let touched: std::collections::BTreeSet<&str> = incoming
            .apis
            .iter()
            .map(|a| a.id.as_str())
            .chain(incoming.deployments.iter().map(|d| d.api.as_str()))
            .collect();
        let mut world = Document::default();
        for id in &touched {
            match incoming.apis.iter().find(|a| a.id == *id) {
                Some(api) => world.apis.push(api.clone()),
                None => {
                    if let Some(stored) = self.apis.get(*id) {
                        world.apis.push(stored.value.as_ref().clone());
                    }
                }
            }
            if let Some(stored) = self.deployments.get(*id) {
                world
                    .deployments
                    .extend(stored.values().map(|d| d.value.as_ref().clone()));
            }
        }
        for d in &incoming.deployments {
            if let Some(existing) = self.deployments.get(&d.api).and_then(|m| m.get(&d.id)) {
                if *existing.value != *d {
                    return Err(Rejection::Invalid(vec![format!(
                        "deployments: deployment {:?} of API {:?} already exists with other content; deployments are immutable",
                        d.id, d.api
                    )]));
                }
            } else {
                world.deployments.push(d.clone());
            }
        }
        world
            .validate()
            .map_err(|e| Rejection::invalid(remap_paths(e, &world, &incoming)))?;

        for api in incoming.apis {
            let changed = self.apis.get(&api.id).is_none_or(|old| *old.value != api);
            if !changed {
                continue;
            }
            let definition_changed = self
                .apis
                .get(&api.id)
                .is_none_or(|old| old.value.snapshot() != api.snapshot());
            let created = self.apis.get(&api.id).map_or(at, |old| old.created_at_ms);
            let id = api.id.clone();
            self.apis.insert(
                id.clone(),
                Versioned {
                    revision: index,
                    created_at_ms: created,
                    updated_at_ms: at,
                    value: Arc::new(api),
                },
            );
            if definition_changed {
                self.auto_deploy(index, at, &id);
            }
        }
        for d in incoming.deployments {
            let slot = self.deployments.entry(d.api.clone()).or_default();
            slot.entry(d.id.clone()).or_insert(Versioned {
                revision: index,
                created_at_ms: at,
                updated_at_ms: at,
                value: Arc::new(d),
            });
        }
        Ok(())
    }

    /// Stages with `auto_deploy` follow every change of their API's definition with a new
    /// deployment, so each change stays in the history and can be rolled back to.
    fn auto_deploy(&mut self, index: u64, at: u64, api_id: &str) {
        let Some(api) = self.apis.get(api_id) else {
            return;
        };
        if !api.value.stages.iter().any(|s| s.auto_deploy) {
            return;
        }
        let id = format!("auto-{index}");
        let deployment = Deployment {
            id: id.clone(),
            api: api_id.to_string(),
            description: "automatic deployment".to_string(),
            snapshot: api.value.snapshot(),
        };
        self.deployments
            .entry(api_id.to_string())
            .or_default()
            .insert(
                id.clone(),
                Versioned {
                    revision: index,
                    created_at_ms: at,
                    updated_at_ms: at,
                    value: Arc::new(deployment),
                },
            );
        if let Some(api) = self.apis.get_mut(api_id) {
            for stage in Arc::make_mut(&mut api.value)
                .stages
                .iter_mut()
                .filter(|s| s.auto_deploy)
            {
                stage.deployment = Some(id.clone());
            }
        }
    }

    fn deploy(
        &mut self,
        index: u64,
        at: u64,
        api_id: &str,
        id: &str,
        description: &str,
        stage: Option<&str>,
    ) -> Result<(), Rejection> {
        let Some(api) = self.apis.get(api_id) else {
            return Err(Rejection::NotFound {
                kind: "api".into(),
                id: api_id.to_string(),
            });
        };
        if !portico_proto::validate::is_object_id(id) {
            return Err(Rejection::Invalid(vec![format!(
                "id: {id:?} must be 1 to 128 letters, digits, '-', '_' or '.'"
            )]));
        }
        if description.len() > 1024 {
            return Err(Rejection::Invalid(vec![
                "description: at most 1024 characters".into(),
            ]));
        }
        if self
            .deployments
            .get(api_id)
            .is_some_and(|m| m.contains_key(id))
        {
            return Err(Rejection::AlreadyExists {
                kind: "deployment".into(),
                id: id.to_string(),
            });
        }
        if let Some(stage) = stage
            && !api.value.stages.iter().any(|s| s.name == stage)
        {
            return Err(Rejection::NotFound {
                kind: "stage".into(),
                id: format!("{api_id}/{stage}"),
            });
        }
        let deployment = Deployment {
            id: id.to_string(),
            api: api_id.to_string(),
            description: description.to_string(),
            snapshot: api.value.snapshot(),
        };
        self.deployments
            .entry(api_id.to_string())
            .or_default()
            .insert(
                id.to_string(),
                Versioned {
                    revision: index,
                    created_at_ms: at,
                    updated_at_ms: at,
                    value: Arc::new(deployment),
                },
            );
        if let Some(stage_name) = stage
            && let Some(api) = self.apis.get_mut(api_id)
        {
            if let Some(s) = Arc::make_mut(&mut api.value)
                .stages
                .iter_mut()
                .find(|s| s.name == stage_name)
            {
                s.deployment = Some(id.to_string());
            }
            api.revision = index;
            api.updated_at_ms = at;
        }
        Ok(())
    }

    /// The served model as a declarative document: what edges compile.
    pub fn to_document(&self) -> Document {
        Document {
            apis: self
                .apis
                .values()
                .map(|a| a.value.as_ref().clone())
                .collect(),
            deployments: self
                .deployments
                .values()
                .flat_map(|m| m.values().map(|d| d.value.as_ref().clone()))
                .collect(),
        }
    }

    pub fn stage(&self, api: &str, stage: &str) -> Option<&Stage> {
        self.apis
            .get(api)?
            .value
            .stages
            .iter()
            .find(|s| s.name == stage)
    }
}

fn check_precondition(
    kind: &'static str,
    id: &str,
    current: Option<u64>,
    expected: Option<u64>,
) -> Result<(), Rejection> {
    match (expected, current) {
        (None, _) => Ok(()),
        (Some(0), None) => Ok(()),
        (Some(0), Some(_)) => Err(Rejection::AlreadyExists {
            kind: kind.into(),
            id: id.to_string(),
        }),
        (Some(e), Some(a)) if e == a => Ok(()),
        (Some(e), a) => Err(Rejection::Conflict {
            kind: kind.into(),
            id: id.to_string(),
            expected: e,
            actual: a.unwrap_or(0),
        }),
    }
}

/// Validation runs over the whole world (stored objects plus the incoming ones), so its paths
/// index into that; rewrite `apis[i]`/`deployments[i]` to the incoming document's own indexes,
/// which is what the operator wrote.
fn remap_paths(
    errors: ValidationErrors,
    world: &Document,
    incoming: &Document,
) -> ValidationErrors {
    let remap = |path: &str| -> String {
        for (prefix, ids, own) in [
            (
                "apis[",
                world.apis.iter().map(|a| a.id.clone()).collect::<Vec<_>>(),
                incoming
                    .apis
                    .iter()
                    .map(|a| a.id.clone())
                    .collect::<Vec<_>>(),
            ),
            (
                "deployments[",
                world
                    .deployments
                    .iter()
                    .map(|d| format!("{}/{}", d.api, d.id))
                    .collect(),
                incoming
                    .deployments
                    .iter()
                    .map(|d| format!("{}/{}", d.api, d.id))
                    .collect(),
            ),
        ] {
            if let Some(rest) = path.strip_prefix(prefix)
                && let Some((n, tail)) = rest.split_once(']')
                && let Some(key) = n.parse::<usize>().ok().and_then(|i| ids.get(i))
            {
                return match own.iter().position(|k| k == key) {
                    Some(j) => format!("{prefix}{j}]{tail}"),
                    None => {
                        format!("(stored {}{key:?}){tail}", &prefix[..prefix.len() - 1])
                    }
                };
            }
        }
        path.to_string()
    };
    ValidationErrors(
        errors
            .0
            .into_iter()
            .map(|mut e| {
                e.path = remap(&e.path);
                e
            })
            .collect(),
    )
}
