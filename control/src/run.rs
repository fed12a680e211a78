//! Starting a control node from its data directory: the files `init` writes, and the tasks
//! `start` runs (store, QUIC endpoint with Raft, admin API). `start_with_endpoint` runs the same
//! node on an endpoint (and optionally an admin listener) the caller made: simulations do.
//!
//! ```text
//! DIR/node.json      id, cluster name, addresses
//! DIR/ca.pem         the cluster CA certificate
//! DIR/ca.key         the cluster CA key (0600)
//! DIR/node.pem       this node's certificate, issued by the CA
//! DIR/node.key       its key (0600)
//! DIR/raft/          the Raft store: the log in wal/, the vote and snapshots in raft.redb
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::admin::{self, Backend};
use crate::node::{ControlNode, NodeConfig, NodeError, raft_config};
use crate::raft::Raft;
use crate::raft::store;
use crate::state::{Applied, CaRecord, Command, Role};
use crate::sync::{EnrolService, SyncService, SyncTiming};
use crate::transport::{
    self, ALPN_ENROL, ALPN_RAFT, ALPN_SYNC, AlpnRouter, ClusterCa, QuicRaftNetwork, RaftService,
    ServeLimits, TlsIdentity, TransportLimits,
};

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("{path}: {message}")]
    Files { path: String, message: String },
    #[error("{0} is already initialized; start it with `portico control start --data {0}`")]
    AlreadyInitialized(String),
    #[error("{0} is not initialized; run `portico control init --data {0}` first")]
    NotInitialized(String),
    #[error(transparent)]
    Node(#[from] NodeError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("{0}")]
    Other(String),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct NodeFile {
    id: u64,
    cluster_name: String,
    raft_addr: SocketAddr,
    admin_addr: SocketAddr,
    #[serde(default)]
    admin_tls: bool,
}

fn files_error(path: &Path, e: impl std::fmt::Display) -> RunError {
    RunError::Files {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}

fn write_private(path: &Path, contents: &str) -> Result<(), RunError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| files_error(path, e))?;
    f.write_all(contents.as_bytes())
        .and_then(|_| f.sync_all())
        .map_err(|e| files_error(path, e))
}

fn read(path: &Path) -> Result<String, RunError> {
    std::fs::read_to_string(path).map_err(|e| files_error(path, e))
}

pub fn is_initialized(dir: &Path) -> bool {
    dir.join("node.json").exists()
}

/// Refuses a directory that already holds a node; creates it otherwise.
fn prepare_new_dir(dir: &Path) -> Result<(), RunError> {
    if is_initialized(dir) {
        return Err(RunError::AlreadyInitialized(dir.display().to_string()));
    }
    std::fs::create_dir_all(dir).map_err(|e| files_error(dir, e))
}

/// Creates the cluster CA and this node's identity (node 1) in `dir`.
pub fn init(
    dir: &Path,
    cluster_name: &str,
    raft_addr: SocketAddr,
    admin_addr: SocketAddr,
    admin_tls: bool,
) -> Result<NodeConfig, RunError> {
    prepare_new_dir(dir)?;
    let ca = ClusterCa::generate(cluster_name).map_err(|e| RunError::Other(e.to_string()))?;
    let mut hosts = vec![raft_addr.ip().to_string()];
    if admin_addr.ip() != raft_addr.ip() {
        hosts.push(admin_addr.ip().to_string());
    }
    let node = ca
        .issue_node(1, &hosts)
        .map_err(|e| RunError::Other(e.to_string()))?;
    write_private(&dir.join("ca.key"), &ca.key_pem())?;
    let file = NodeFile {
        id: 1,
        cluster_name: cluster_name.to_string(),
        raft_addr,
        admin_addr,
        admin_tls,
    };
    write_identity(dir, ca.cert_pem(), &node.cert_pem, &node.key_pem, &file)
}

/// Writes a node's certificate, key, the CA certificate and, last (its presence means the
/// directory is complete), `node.json`.
fn write_identity(
    dir: &Path,
    ca_cert_pem: &str,
    cert_pem: &str,
    key_pem: &str,
    file: &NodeFile,
) -> Result<NodeConfig, RunError> {
    write_private(&dir.join("node.key"), key_pem)?;
    for (name, pem) in [("ca.pem", ca_cert_pem), ("node.pem", cert_pem)] {
        std::fs::write(dir.join(name), pem).map_err(|e| files_error(&dir.join(name), e))?;
    }
    let json = serde_json::to_string_pretty(file).map_err(|e| RunError::Other(e.to_string()))?;
    std::fs::write(dir.join("node.json"), json)
        .map_err(|e| files_error(&dir.join("node.json"), e))?;
    load_config(dir)
}

/// Writes the identity a leader granted a joining node into `dir`.
pub fn write_joined(
    dir: &Path,
    grant: &admin::JoinGrant,
    raft_addr: SocketAddr,
    admin_addr: SocketAddr,
    admin_tls: bool,
) -> Result<NodeConfig, RunError> {
    prepare_new_dir(dir)?;
    let file = NodeFile {
        id: grant.node_id,
        cluster_name: grant.cluster_name.clone(),
        raft_addr,
        admin_addr,
        admin_tls,
    };
    write_identity(
        dir,
        &grant.ca_cert_pem,
        &grant.cert_pem,
        &grant.key_pem,
        &file,
    )
}

pub fn load_config(dir: &Path) -> Result<NodeConfig, RunError> {
    if !is_initialized(dir) {
        return Err(RunError::NotInitialized(dir.display().to_string()));
    }
    let path = dir.join("node.json");
    let file: NodeFile = serde_json::from_str(&read(&path)?).map_err(|e| files_error(&path, e))?;
    Ok(NodeConfig {
        id: file.id,
        cluster_name: file.cluster_name,
        data_dir: dir.to_path_buf(),
        raft_addr: file.raft_addr,
        admin_addr: file.admin_addr,
        snapshot_logs: crate::node::DEFAULT_SNAPSHOT_LOGS,
        admin_tls: file.admin_tls,
    })
}

/// A started control node and the addresses it actually listens on (the admin address is only
/// configured when it was started without an admin listener).
pub struct Running {
    pub node: Arc<ControlNode>,
    pub admin_addr: SocketAddr,
    pub raft_addr: SocketAddr,
    endpoint: quinn::Endpoint,
}

impl Running {
    /// Resolves, with the reason, once Raft has stopped on this node by itself. openraft stops
    /// for good on a storage error (a log write that failed, say), and a node whose Raft has
    /// stopped can neither write nor serve current reads: its process should exit, so that a
    /// supervisor restarts it (the log is replayed from disk) and edges move to another node.
    pub async fn raft_stopped(&self) -> String {
        let mut metrics = self.node.raft.metrics();
        let stopped = metrics.wait_for(|m| m.running_state.is_err()).await;
        // The metrics channel closes only when Raft has stopped too, reason unknown.
        stopped
            .ok()
            .and_then(|m| m.running_state.as_ref().err().map(ToString::to_string))
            .unwrap_or_else(|| "Raft stopped".to_string())
    }

    pub async fn shutdown(self) {
        let _ = self.node.raft.shutdown().await;
        self.endpoint.close(0u32.into(), b"shutting down");
    }
}

/// The TLS of a control node's QUIC endpoint, from the certificates in its data directory: the
/// server side offers Raft, sync and enrolment (edges without a certificate yet may connect for
/// enrolment only); the client side dials other members for Raft.
pub struct EndpointTls {
    pub server: Arc<rustls::ServerConfig>,
    pub client: Arc<rustls::ClientConfig>,
}

pub fn endpoint_tls(dir: &Path) -> Result<EndpointTls, RunError> {
    let identity = TlsIdentity::from_pem(
        &read(&dir.join("ca.pem"))?,
        &read(&dir.join("node.pem"))?,
        &read(&dir.join("node.key"))?,
    )
    .map_err(|e| RunError::Other(format!("node certificate: {e}")))?;
    let server =
        transport::server_crypto_with_enrolment(&identity, &[ALPN_RAFT, ALPN_SYNC, ALPN_ENROL])
            .map_err(|e| RunError::Other(e.to_string()))?;
    let client = transport::client_crypto(&identity, &[ALPN_RAFT])
        .map_err(|e| RunError::Other(e.to_string()))?;
    Ok(EndpointTls { server, client })
}

/// Binds the QUIC endpoint (UDP, `config.raft_addr`) and the admin API (TCP,
/// `config.admin_addr`), then starts the node on them ([`start_with_endpoint`]).
pub async fn start(mut config: NodeConfig) -> Result<Running, RunError> {
    let tls = endpoint_tls(&config.data_dir)?;
    let limits = TransportLimits::default();
    let endpoint =
        transport::bind_endpoint(config.raft_addr, tls.server, tls.client.clone(), &limits)
            .map_err(|e| RunError::Other(e.to_string()))?;
    // With port 0 in the file, the membership records the port actually bound.
    config.raft_addr = endpoint
        .local_addr()
        .map_err(|e| RunError::Other(e.to_string()))?;
    let admin_listener = tokio::net::TcpListener::bind(config.admin_addr)
        .await
        .map_err(|source| RunError::Listen {
            addr: config.admin_addr,
            source,
        })?;
    start_with_endpoint(config, endpoint, tls.client, Some(admin_listener)).await
}

/// Starts a node on a QUIC endpoint made by the caller: the store in `config.data_dir`, Raft,
/// edge sync and enrolment on `endpoint`, and the admin API on `admin_listener` when there is
/// one. This is how simulations run a node over a simulated network.
///
/// `endpoint` must accept with [`EndpointTls::server`] and be reachable at `config.raft_addr`
/// (the address the membership records); Raft dials peers with `client_tls`
/// ([`EndpointTls::client`]). Without an admin listener, [`Running::admin_addr`] is
/// `config.admin_addr` and nothing listens there.
pub async fn start_with_endpoint(
    mut config: NodeConfig,
    endpoint: quinn::Endpoint,
    client_tls: Arc<rustls::ClientConfig>,
    admin_listener: Option<tokio::net::TcpListener>,
) -> Result<Running, RunError> {
    let dir: PathBuf = config.data_dir.clone();
    let raft_addr = config.raft_addr;
    let client_config = transport::tls::client_config(client_tls, &TransportLimits::default())
        .map_err(|e| RunError::Other(e.to_string()))?;

    let (log, state_machine) = store::open(&dir.join("raft"))
        .await
        .map_err(NodeError::from)?;
    let reader = state_machine.reader();
    let durable = log.acknowledge_early(config.id);
    let network = QuicRaftNetwork::with_durable_log(
        config.id,
        endpoint.clone(),
        client_config,
        durable.clone(),
    );
    let held_back = network.clone();
    let raft_config = raft_config(&config.cluster_name, config.snapshot_logs)
        .validate()
        .map_err(|e| RunError::Other(e.to_string()))?;
    let raft = Raft::new(
        config.id,
        Arc::new(raft_config),
        network,
        log,
        state_machine,
    )
    .await
    .map_err(|e| NodeError::Raft(e.to_string()))?;
    // A commit index held back until the leader's log was durable reaches the followers with
    // the next heartbeat; this sends that heartbeat as soon as the log catches up, rather than
    // up to a heartbeat interval later. Ends when the log is closed.
    tokio::spawn({
        let raft = raft.clone();
        let mut durable = durable;
        async move {
            while durable.changed().await {
                if held_back.take_held_back() && raft.trigger().heartbeat().await.is_err() {
                    break;
                }
            }
        }
    });

    if let Some(listener) = &admin_listener {
        config.admin_addr = listener
            .local_addr()
            .map_err(|e| RunError::Other(e.to_string()))?;
    }
    let admin_addr = config.admin_addr;
    let ca_pem = read(&dir.join("ca.pem"))?;
    let admin_client_tls = admin::client::client_tls(&ca_pem).map_err(RunError::Other)?;
    let mut node = ControlNode::new(config, raft.clone(), reader.clone());
    node.admin_client_tls = Some(admin_client_tls.clone());
    let node = Arc::new(node);

    let router = AlpnRouter::new()
        .route(ALPN_RAFT, RaftService::new(raft))
        .route(
            ALPN_SYNC,
            SyncService {
                node_id: node.config.id,
                state: reader,
                sessions: node.edges.clone(),
                timing: SyncTiming::default(),
            },
        )
        .route_anonymous(ALPN_ENROL, EnrolService { node: node.clone() });
    tokio::spawn(transport::serve(
        endpoint.clone(),
        router,
        ServeLimits::default(),
    ));

    if let Some(listener) = admin_listener {
        let tls = admin::AdminTls {
            server: if node.config.admin_tls {
                Some(admin_server_tls(&dir)?)
            } else {
                None
            },
            client: Some(admin_client_tls),
        };
        tokio::spawn(admin::serve(listener, node.clone(), tls));
    }
    tracing::info!(node = node.config.id, raft = %raft_addr, admin = %admin_addr, "control node started");
    Ok(Running {
        node,
        admin_addr,
        raft_addr,
        endpoint,
    })
}

/// HTTPS for the admin API with this node's certificate (issued for its addresses).
fn admin_server_tls(dir: &Path) -> Result<Arc<rustls::ServerConfig>, RunError> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let cert_path = dir.join("node.pem");
    let key_path = dir.join("node.key");
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cert_path)
        .map_err(|e| files_error(&cert_path, e))?
        .collect::<Result<_, _>>()
        .map_err(|e| files_error(&cert_path, e))?;
    let key = PrivateKeyDer::from_pem_file(&key_path).map_err(|e| files_error(&key_path, e))?;
    let mut config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| files_error(&cert_path, e))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Makes a freshly initialized node the single voter of its cluster and, when the cluster has
/// no token yet, mints the first admin token. Returns that token (to be shown once).
pub async fn bootstrap_single(node: &ControlNode) -> Result<Option<String>, RunError> {
    node.initialize_single().await?;
    if node
        .wait_for_leader(Duration::from_secs(10))
        .await
        .is_none()
    {
        return Err(RunError::Other("no leader was elected within 10 s".into()));
    }
    // The leader applies a blank entry on election; wait for it so the state is current.
    let _ = node.read_barrier().await;
    if node.state().cluster_ca.is_none() {
        let dir = &node.config.data_dir;
        let ca = CaRecord {
            cert_pem: read(&dir.join("ca.pem"))?,
            key_pem: read(&dir.join("ca.key"))?,
        };
        match node.propose(Command::SetClusterCa { ca }).await {
            Ok(Applied::Done { .. }) => {}
            Ok(Applied::Rejected { rejection, .. }) => {
                return Err(RunError::Other(rejection.to_string()));
            }
            Err(e) => return Err(RunError::Other(e.to_string())),
        }
    }
    if !node.state().tokens.is_empty() {
        return Ok(None);
    }
    let minted = admin::auth::mint("initial admin", Role::Admin)
        .map_err(|e| RunError::Other(e.to_string()))?;
    match node
        .propose(Command::CreateToken {
            token: minted.record,
        })
        .await
    {
        Ok(Applied::Done { .. }) => Ok(Some(minted.token)),
        Ok(Applied::Rejected { rejection, .. }) => Err(RunError::Other(rejection.to_string())),
        Err(e) => Err(RunError::Other(e.to_string())),
    }
}
