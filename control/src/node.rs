//! A running control node: Raft over QUIC, the redb store, and the admin API's view of both.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use openraft::ChangeMembers;
use openraft::error::{CheckIsLeaderError, ClientWriteError, RaftError};
use serde_json::{Value, json};

use crate::admin::{Backend, JoinGrant, ProposeError, WRITE_TIMEOUT};
use crate::raft::store::{self, StateReader};
use crate::raft::{Member, NodeId, Raft};
use crate::state::{Applied, Command, Proposal, State};
use crate::sync::EdgeSessions;
use crate::sync::registry::now_ms;

/// Timing that elects a new leader well within 2 s of a crash on a LAN, without spurious
/// elections from a busy 2-core machine.
pub fn raft_config(cluster_name: &str, snapshot_logs: u64) -> openraft::Config {
    openraft::Config {
        cluster_name: cluster_name.to_string(),
        heartbeat_interval: 100,
        election_timeout_min: 500,
        election_timeout_max: 1000,
        // Snapshots keep restarts and catching-up members fast; the state is small.
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(snapshot_logs.max(1)),
        max_in_snapshot_log_to_keep: (snapshot_logs / 4).max(1),
        ..Default::default()
    }
}

#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub id: NodeId,
    pub cluster_name: String,
    pub data_dir: PathBuf,
    pub raft_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    /// A snapshot is taken after this many log entries, and the log before it purged.
    pub snapshot_logs: u64,
    /// The admin API speaks HTTPS, with this node's certificate from the cluster CA.
    pub admin_tls: bool,
}

pub const DEFAULT_SNAPSHOT_LOGS: u64 = 2_000;

impl NodeConfig {
    pub fn member(&self) -> Member {
        Member {
            raft_addr: self.raft_addr.to_string(),
            admin_addr: if self.admin_tls {
                format!("https://{}", self.admin_addr)
            } else {
                self.admin_addr.to_string()
            },
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("storage: {0}")]
    Store(#[from] store::StoreError),
    #[error("raft: {0}")]
    Raft(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

pub struct ControlNode {
    pub config: NodeConfig,
    pub raft: Raft,
    pub state: StateReader,
    /// The edges connected to this node.
    pub edges: Arc<EdgeSessions>,
    /// Trust for other members' HTTPS admin APIs (asking them for their edges).
    pub admin_client_tls: Option<Arc<rustls::ClientConfig>>,
}

impl ControlNode {
    pub fn new(config: NodeConfig, raft: Raft, state: StateReader) -> ControlNode {
        ControlNode {
            config,
            raft,
            state,
            edges: Arc::default(),
            admin_client_tls: None,
        }
    }

    /// Makes this node the only voter of a new cluster. Idempotent on an initialized node.
    pub async fn initialize_single(&self) -> Result<(), NodeError> {
        // Asked first: openraft logs an error for initializing an initialized node.
        if self.raft.is_initialized().await.unwrap_or(false) {
            return Ok(());
        }
        let members = BTreeMap::from([(self.config.id, self.config.member())]);
        match self.raft.initialize(members).await {
            Ok(()) => Ok(()),
            Err(RaftError::APIError(openraft::error::InitializeError::NotAllowed(_))) => Ok(()),
            Err(e) => Err(NodeError::Raft(e.to_string())),
        }
    }

    /// Waits until some node is leader (bounded).
    pub async fn wait_for_leader(&self, within: Duration) -> Option<NodeId> {
        let mut metrics = self.raft.metrics();
        let wait = async {
            loop {
                if let Some(l) = metrics.borrow().current_leader {
                    return l;
                }
                if metrics.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
        };
        tokio::time::timeout(within, wait).await.ok()
    }

    /// The leader's QUIC address, when one is known (where edges enrol).
    pub fn leader_raft_addr(&self) -> Option<String> {
        self.leader_member().map(|m| m.raft_addr)
    }

    fn leader_admin(&self) -> Option<String> {
        self.leader_member().map(|m| m.admin_addr)
    }

    fn leader_member(&self) -> Option<Member> {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        let leader = m.current_leader?;
        m.membership_config.membership().get_node(&leader).cloned()
    }

    fn is_leader(&self) -> bool {
        self.raft.metrics().borrow().current_leader == Some(self.config.id)
    }
}

impl ControlNode {
    /// Applies a membership change, bounded in time like any write.
    async fn change_members(
        &self,
        change: ChangeMembers<NodeId, Member>,
        retain: bool,
    ) -> Result<(), ProposeError> {
        if !self.is_leader() {
            return Err(ProposeError::NotLeader {
                leader_admin: self.leader_admin(),
            });
        }
        match tokio::time::timeout(
            WRITE_TIMEOUT * 2,
            self.raft.change_membership(change, retain),
        )
        .await
        {
            Err(_) => Err(ProposeError::NoQuorum),
            Ok(Ok(_)) => Ok(()),
            Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f)))) => {
                Err(ProposeError::NotLeader {
                    leader_admin: f.leader_node.map(|n| n.admin_addr),
                })
            }
            Ok(Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e)))) => {
                Err(ProposeError::Rejected(crate::state::Rejection::Invalid(
                    vec![format!("membership: {e}")],
                )))
            }
            Ok(Err(e)) => Err(ProposeError::Internal(e.to_string())),
        }
    }

    fn members(&self) -> BTreeMap<NodeId, Member> {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        m.membership_config
            .membership()
            .nodes()
            .map(|(id, n)| (*id, n.clone()))
            .collect()
    }
}

/// The sessions a member serves (`GET /v1/cluster/edges?scope=local`), within a second.
async fn member_edges(
    admin_addr: &str,
    tls: Option<Arc<rustls::ClientConfig>>,
    authorization: Option<String>,
) -> Result<Vec<crate::sync::EdgeSession>, String> {
    use bytes::Bytes;
    use http_body_util::Full;
    let mut req = http::Request::get("/v1/cluster/edges?scope=local&consistency=stale").header(
        http::header::HOST,
        crate::admin::client::parse_target(admin_addr).1,
    );
    if let Some(a) = authorization {
        req = req.header(http::header::AUTHORIZATION, a);
    }
    let req = req
        .body(Full::new(Bytes::new()))
        .map_err(|e| e.to_string())?;
    let resp = crate::admin::client::send(admin_addr, tls.as_ref(), req, Duration::from_secs(1))
        .await
        .map_err(|e| e.to_string())?;
    if !resp.status().is_success() {
        return Err(format!("answered {}", resp.status()));
    }
    #[derive(serde::Deserialize)]
    struct Local {
        items: Vec<crate::sync::EdgeSession>,
    }
    serde_json::from_slice::<Local>(resp.body())
        .map(|l| l.items)
        .map_err(|e| format!("malformed answer: {e}"))
}

impl Backend for ControlNode {
    fn state(&self) -> Arc<State> {
        self.state.load()
    }

    async fn propose(&self, command: Command) -> Result<Applied, ProposeError> {
        if !self.is_leader() {
            return Err(ProposeError::NotLeader {
                leader_admin: self.leader_admin(),
            });
        }
        // The same validation `apply` runs, here first: a clear error without a log entry.
        self.state
            .load()
            .validate(&command)
            .map_err(ProposeError::Rejected)?;
        let proposal = Proposal {
            at_ms: now_ms(),
            command,
        };
        match tokio::time::timeout(WRITE_TIMEOUT, self.raft.client_write(proposal)).await {
            Err(_) => Err(ProposeError::NoQuorum),
            Ok(Ok(resp)) => Ok(resp.data),
            Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f)))) => {
                Err(ProposeError::NotLeader {
                    leader_admin: f.leader_node.map(|n| n.admin_addr),
                })
            }
            Ok(Err(e)) => Err(ProposeError::Internal(e.to_string())),
        }
    }

    async fn read_barrier(&self) -> Result<(), ProposeError> {
        match tokio::time::timeout(WRITE_TIMEOUT, self.raft.ensure_linearizable()).await {
            Err(_) => Err(ProposeError::NoQuorum),
            Ok(Ok(_)) => Ok(()),
            Ok(Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f)))) => {
                Err(ProposeError::NotLeader {
                    leader_admin: f.leader_node.map(|n| n.admin_addr),
                })
            }
            Ok(Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(_)))) => {
                Err(ProposeError::NoQuorum)
            }
            Ok(Err(e)) => Err(ProposeError::Internal(e.to_string())),
        }
    }

    fn leader_elsewhere(&self) -> Option<Option<String>> {
        (!self.is_leader()).then(|| self.leader_admin())
    }

    async fn join(&self, member: Member) -> Result<JoinGrant, ProposeError> {
        if !self.is_leader() {
            return Err(ProposeError::NotLeader {
                leader_admin: self.leader_admin(),
            });
        }
        let members = self.members();
        if let Some((id, _)) = members
            .iter()
            .find(|(_, m)| m.raft_addr == member.raft_addr)
        {
            return Err(ProposeError::Rejected(
                crate::state::Rejection::AlreadyExists {
                    kind: "member".into(),
                    id: format!("{id} at {}", member.raft_addr),
                },
            ));
        }
        let state = self.state.load();
        let ca = state
            .cluster_ca
            .as_ref()
            .ok_or_else(|| ProposeError::Internal("the cluster has no CA yet".into()))?;
        let ca = crate::transport::ClusterCa::from_pem(&ca.cert_pem, &ca.key_pem)
            .map_err(|e| ProposeError::Internal(format!("cluster CA: {e}")))?;
        // The id is the log index of the admission: unique for the life of the cluster, so a
        // departed node's id (and certificate) is never handed to another.
        let id = match self
            .propose(Command::AdmitMember {
                raft_addr: member.raft_addr.clone(),
                admin_addr: member.admin_addr.clone(),
            })
            .await?
        {
            Applied::Done { revision } => revision,
            Applied::Rejected { rejection, .. } => return Err(ProposeError::Rejected(rejection)),
        };
        // The certificate serves both Raft and (with HTTPS) the admin API: both addresses.
        let mut hosts = Vec::new();
        for addr in [
            member.raft_addr.as_str(),
            crate::admin::client::parse_target(&member.admin_addr).1,
        ] {
            let ip = addr
                .parse::<SocketAddr>()
                .map(|a| a.ip().to_string())
                .map_err(|e| ProposeError::Internal(format!("{addr}: {e}")))?;
            if !hosts.contains(&ip) {
                hosts.push(ip);
            }
        }
        let issued = ca
            .issue_node(id, &hosts)
            .map_err(|e| ProposeError::Internal(format!("issuing the node certificate: {e}")))?;
        // Not blocking: the node starts only after it has its certificate, and replication to
        // it retries until then.
        self.change_members(
            ChangeMembers::AddNodes(BTreeMap::from([(id, member)])),
            true,
        )
        .await?;
        Ok(JoinGrant {
            node_id: id,
            cluster_name: self.config.cluster_name.clone(),
            ca_cert_pem: ca.cert_pem().to_string(),
            cert_pem: issued.cert_pem,
            key_pem: issued.key_pem,
            revision: self.state.applied(),
        })
    }

    async fn promote(&self, id: NodeId) -> Result<(), ProposeError> {
        if !self.members().contains_key(&id) {
            return Err(ProposeError::Rejected(crate::state::Rejection::NotFound {
                kind: "member".into(),
                id: id.to_string(),
            }));
        }
        self.change_members(ChangeMembers::AddVoterIds([id].into()), true)
            .await
    }

    async fn remove_member(&self, id: NodeId) -> Result<(), ProposeError> {
        if !self.members().contains_key(&id) {
            return Err(ProposeError::Rejected(crate::state::Rejection::NotFound {
                kind: "member".into(),
                id: id.to_string(),
            }));
        }
        let voters: Vec<NodeId> = self
            .raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .voter_ids()
            .collect();
        if voters.contains(&id) {
            if voters.len() == 1 {
                return Err(ProposeError::Rejected(crate::state::Rejection::Invalid(
                    vec!["membership: the last voter cannot be removed".into()],
                )));
            }
            self.change_members(ChangeMembers::RemoveVoters([id].into()), false)
                .await?;
        }
        if self.members().contains_key(&id) {
            self.change_members(ChangeMembers::RemoveNodes([id].into()), false)
                .await?;
        }
        Ok(())
    }

    fn local_edges(&self) -> Value {
        json!({"node": self.config.id, "items": self.edges.list()})
    }

    async fn cluster_edges(&self, authorization: Option<String>) -> Value {
        let mut reports = self.edges.list();
        let mut unreachable = Vec::new();
        // Asked together: a slow member costs its timeout once.
        let mut asks = tokio::task::JoinSet::new();
        for (id, member) in self.members() {
            if id == self.config.id {
                continue;
            }
            let (tls, authorization) = (self.admin_client_tls.clone(), authorization.clone());
            asks.spawn(async move {
                (
                    id,
                    member_edges(&member.admin_addr, tls, authorization).await,
                )
            });
        }
        while let Some(joined) = asks.join_next().await {
            let Ok((id, answer)) = joined else { continue };
            match answer {
                Ok(mut sessions) => reports.append(&mut sessions),
                Err(e) => {
                    tracing::debug!(node = id, error = %e, "a member did not report its edges");
                    unreachable.push(format!("node {id}: {e}"));
                }
            }
        }
        crate::admin::edges::merge(&self.state.load(), &reports, &unreachable, now_ms())
    }

    fn metrics(&self) -> String {
        let applied = self.state.applied();
        let mut out = format!(
            "# HELP portico_control_applied_revision The last revision this node applied.\n\
             # TYPE portico_control_applied_revision gauge\n\
             portico_control_applied_revision {applied}\n"
        );
        self.edges.render_metrics(applied, &mut out);
        out
    }

    fn cluster_status(&self) -> Value {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        let last_log = m.last_log_index.unwrap_or(0);
        let membership = m.membership_config.membership();
        let voters: Vec<NodeId> = membership.voter_ids().collect();
        let replication = m.replication.clone().unwrap_or_default();
        let members: Vec<Value> = membership
            .nodes()
            .map(|(id, node)| {
                let matched = if *id == self.config.id {
                    m.last_log_index
                } else {
                    replication.get(id).and_then(|l| l.map(|l| l.index))
                };
                json!({
                    "id": id,
                    "role": if Some(*id) == m.current_leader { "leader" } else if voters.contains(id) { "voter" } else { "learner" },
                    "raft_addr": node.raft_addr,
                    "admin_addr": node.admin_addr,
                    // Known on the leader only; followers report their own index.
                    "matched": matched,
                    "lag": matched.map(|i| last_log.saturating_sub(i)),
                })
            })
            .collect();
        // The commit index is what a majority of voters hold; only the leader knows their
        // matched indexes, a follower reports what it has applied.
        let committed = if m.current_leader == Some(self.config.id) {
            let mut held: Vec<u64> = voters
                .iter()
                .map(|v| {
                    if *v == self.config.id {
                        last_log
                    } else {
                        replication
                            .get(v)
                            .and_then(|l| l.map(|l| l.index))
                            .unwrap_or(0)
                    }
                })
                .collect();
            held.sort_unstable_by(|a, b| b.cmp(a));
            held.get(voters.len() / 2).copied()
        } else {
            m.last_applied.map(|l| l.index)
        };
        json!({
            "cluster": self.config.cluster_name,
            "node": self.config.id,
            "leader": m.current_leader,
            "term": m.current_term,
            "committed": committed,
            "applied": m.last_applied.map(|l| l.index),
            "last_log": m.last_log_index,
            "state": format!("{:?}", m.state),
            "revision": self.state.applied(),
            "members": members,
        })
    }
}
