//! The simulated deployment's software: three control nodes and some edges on turmoil hosts, and
//! an operator that enrols the edges and writes. The driver is [`crate::harness::Harness`].
//!
//! - Control nodes run `portico_control::run::start_with_endpoint` on a [`crate::net`] endpoint,
//!   with their redb store in a temporary directory of their own that survives a crash, so a
//!   restarted node recovers from its own disk. Node 1 initializes the cluster with all three
//!   members at once (certificates from one `ClusterCa`).
//! - The operator (a turmoil client) calls the leader's `Backend::propose` directly: an edge
//!   token, one `EnrolEdge` per edge (its id is `{region}-{revision}`, as enrolment makes it),
//!   then a stream of API writes.
//! - Edges run `portico_node::sync::SyncClient` with a certificate issued by the cluster CA for
//!   that id, and serve from a `ConfigStore` the driver samples.
//!
//! Every host runs on the driver's thread; the mutexes below only satisfy `Send` bounds.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use portico_control::admin::{Backend, ProposeError};
use portico_control::node::{ControlNode, NodeConfig};
use portico_control::raft::Member;
use portico_control::run;
use portico_control::state::TokenRecord;
use portico_control::{Applied, Command, Role};
use portico_node::ConfigStore;
use portico_node::sync::tls::sync_client_config;
use portico_node::sync::{SyncClient, SyncStatus};
use portico_proto::sync::EdgeFilter;
use portico_proto::{Api, Format, parse_document};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::check::Recorder;
use crate::net::{self, fnv1a};

/// The port every control node's QUIC endpoint listens on.
pub const CONTROL_PORT: u16 = 7443;
pub(crate) const CLUSTER_NAME: &str = "sim";
const EDGE_TOKEN_ID: &str = "simedge";
/// The API slots writes go to, and which edges receive each: everywhere, eu only, us only,
/// everywhere.
pub(crate) const SLOTS: usize = 4;

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One control node's fixed identity: host, address, data directory.
pub struct ControlSpec {
    pub id: u64,
    pub host: String,
    pub addr: SocketAddr,
    pub dir: PathBuf,
}

impl ControlSpec {
    fn member(&self) -> Member {
        Member {
            raft_addr: self.addr.to_string(),
            admin_addr: SocketAddr::new(self.addr.ip(), 9000).to_string(),
        }
    }
}

/// One write of the operator, and what came of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteRecord {
    pub k: u64,
    pub slot: usize,
    pub delete: bool,
    /// The revision that applied it, once acknowledged.
    pub acked: Option<u64>,
    /// Refused by validation (a delete of an API that is not there): no effect.
    pub rejected: bool,
    pub attempts: u32,
}

/// When the operator writes: `count` writes from `from`, `interval` apart (after each write is
/// answered). A count, not an end time: how many writes a run makes does not depend on timing.
#[derive(Debug, Clone)]
pub struct WritePlan {
    pub from: Duration,
    pub count: u64,
    pub interval: Duration,
}

impl WritePlan {
    /// About as many writes as fit between `from` and `until`.
    pub fn between(from: Duration, until: Duration, interval: Duration) -> WritePlan {
        let span = until.saturating_sub(from).as_millis() as u64;
        let count = span / (interval.as_millis() as u64).max(1);
        WritePlan {
            from,
            count,
            interval,
        }
    }
}

/// What the hosts and the driver share.
pub struct Shared {
    pub seed: u64,
    pub ca_pem: String,
    pub controls: Vec<ControlSpec>,
    pub snapshot_logs: u64,
    /// Running control nodes by id (a crashed node is removed by the driver).
    pub nodes: Mutex<BTreeMap<u64, Arc<ControlNode>>>,
    /// How many times each control node has started (a restart draws fresh connection ids).
    pub starts: Mutex<BTreeMap<u64, u32>>,
    pub recorder: Recorder,
    /// Edges the operator enrolled: id and region, in order.
    pub enrolled: Mutex<Vec<(String, String)>>,
    pub writes: Mutex<Vec<WriteRecord>>,
    /// When the operator finished writing (simulated time).
    pub writes_done: Mutex<Option<Duration>>,
}

impl Shared {
    /// The running node that leads (the highest term, should two believe they do).
    pub fn leader(&self) -> Option<Arc<ControlNode>> {
        lock(&self.nodes)
            .values()
            .filter_map(|node| {
                let metrics = node.raft.metrics();
                let m = metrics.borrow();
                (m.current_leader == Some(node.config.id)).then(|| (m.current_term, node.clone()))
            })
            .max_by_key(|(term, _)| *term)
            .map(|(_, node)| node)
    }

    /// The revision the running nodes agree on, if they all applied the same one.
    pub fn agreed_revision(&self) -> Option<u64> {
        let nodes = lock(&self.nodes);
        let mut revisions = nodes.values().map(|n| n.state.applied());
        let first = revisions.next()?;
        revisions.all(|r| r == first).then_some(first)
    }
}

/// Simulated time, as the hosts see it.
fn sim_now() -> Duration {
    turmoil::sim_elapsed().unwrap_or_default()
}

/// A control node's software: start on a simulated endpoint, initialize the cluster (node 1),
/// publish every applied state to the recorder, run until crashed.
pub(crate) async fn control_host(id: u64, shared: Arc<Shared>) -> turmoil::Result {
    let spec = shared
        .controls
        .iter()
        .find(|c| c.id == id)
        .ok_or("unknown control node")?;
    let start = {
        let mut starts = lock(&shared.starts);
        let n = starts.entry(id).or_default();
        *n += 1;
        *n
    };
    let tls = run::endpoint_tls(&spec.dir)?;
    let label = format!("{}#{start}", spec.host);
    let endpoint = net::control_endpoint(spec.addr, &tls, shared.seed, &label).await?;
    let config = NodeConfig {
        id,
        cluster_name: CLUSTER_NAME.into(),
        data_dir: spec.dir.clone(),
        raft_addr: spec.addr,
        admin_addr: SocketAddr::new(spec.addr.ip(), 9000),
        snapshot_logs: shared.snapshot_logs,
        admin_tls: false,
    };
    let running = run::start_with_endpoint(config, endpoint, tls.client, None).await?;
    let node = running.node.clone();
    if id == 1 {
        let members: BTreeMap<u64, Member> =
            shared.controls.iter().map(|c| (c.id, c.member())).collect();
        // Refused once the log is not empty (a restart): that is fine.
        if let Err(e) = node.raft.initialize(members).await {
            tracing::info!(error = %e, "not initializing the cluster");
        }
    }
    lock(&shared.nodes).insert(id, node.clone());
    let reader = node.state.clone();
    let recorder = shared.clone();
    tokio::spawn(async move {
        let mut applied = reader.watch();
        loop {
            recorder.recorder.published(id, reader.load(), sim_now());
            if applied.changed().await.is_err() {
                return;
            }
        }
    });
    let _running = running;
    std::future::pending::<()>().await;
    Ok(())
}

/// An edge's software: sync with the control nodes into `store`, forever.
pub(crate) async fn edge_host(
    id: String,
    region: String,
    host: String,
    identity: (String, String),
    store: Arc<ConfigStore>,
    shared: Arc<Shared>,
) -> turmoil::Result {
    let ip = turmoil::lookup(host.as_str());
    let endpoint = net::edge_endpoint(ip, shared.seed, &host).await?;
    let ca = CertificateDer::from_pem_slice(shared.ca_pem.as_bytes())?;
    let chain = CertificateDer::pem_slice_iter(identity.0.as_bytes()).collect::<Result<_, _>>()?;
    let key = PrivateKeyDer::from_pem_slice(identity.1.as_bytes())?;
    let client_config = sync_client_config(&ca, chain, key, Duration::from_secs(10))?;
    let controls = shared.controls.iter().map(|c| c.addr).collect();
    let filter = EdgeFilter {
        region,
        private_listener: false,
    };
    let mut client = SyncClient::new(
        endpoint,
        client_config,
        controls,
        id,
        filter,
        store,
        None,
        Arc::new(SyncStatus::default()),
    );
    client.rng = fastrand::Rng::with_seed(shared.seed ^ fnv1a(host.as_bytes()));
    client.run().await;
    Ok(())
}

/// The API write `k` puts into `slot`: its route keys name the write, so every write changes
/// what edges serve.
pub fn api_for(slot: usize, k: u64) -> Api {
    let placement = match slot {
        1 => "    endpoint: regional\n    region: eu\n",
        2 => "    endpoint: regional\n    region: us\n",
        _ => "    endpoint: edge\n",
    };
    let yaml = format!(
        "apis:\n  - id: a{slot}\n    description: write {k}\n    kind: http\n{placement}    routes:\n      - key: GET /w{k}\n        integration:\n          type: mock\n          status: 200\n      - key: GET /health\n        integration:\n          type: mock\n          status: 204\n    stages:\n      - name: prod\n"
    );
    let mut doc = parse_document(&yaml, Format::Yaml).expect("the write template is valid");
    doc.apis.remove(0)
}

/// Proposes `command` on the leader, retrying (100 ms apart, about 8 s in all) while there is
/// none or it cannot commit. `Ok(None)`: validation refused it.
async fn propose(shared: &Shared, command: Command) -> (Result<Option<u64>, String>, u32) {
    let mut last = String::from("no leader");
    for attempt in 1..=80 {
        if let Some(leader) = shared.leader() {
            match leader.propose(command.clone()).await {
                Ok(Applied::Done { revision }) => return (Ok(Some(revision)), attempt),
                Ok(Applied::Rejected { .. }) | Err(ProposeError::Rejected(_)) => {
                    return (Ok(None), attempt);
                }
                Err(e) => last = e.to_string(),
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    (Err(last), 80)
}

/// The operator: enrol the edges, then make the planned writes.
pub(crate) async fn operator(
    shared: Arc<Shared>,
    regions: Vec<String>,
    plan: WritePlan,
) -> turmoil::Result {
    let token = TokenRecord {
        id: EDGE_TOKEN_ID.into(),
        name: "simulated edges".into(),
        role: Role::Edge,
        secret_sha256: "0".repeat(64),
    };
    propose(&shared, Command::CreateToken { token }).await.0?;
    for region in regions {
        let command = Command::EnrolEdge {
            region: region.clone(),
            token_id: EDGE_TOKEN_ID.into(),
        };
        let revision = propose(&shared, command)
            .await
            .0?
            .ok_or("the edge enrolment was refused")?;
        lock(&shared.enrolled).push((format!("{region}-{revision}"), region));
    }
    let mut rng = fastrand::Rng::with_seed(shared.seed ^ fnv1a(b"operator"));
    if let Some(wait) = plan.from.checked_sub(sim_now()) {
        tokio::time::sleep(wait).await;
    }
    let mut exists = [false; SLOTS];
    for k in 0..plan.count {
        let slot = rng.usize(..SLOTS);
        let delete = exists[slot] && rng.u8(..100) < 15;
        let command = if delete {
            Command::DeleteApi {
                id: format!("a{slot}"),
                if_revision: None,
            }
        } else {
            Command::PutApi {
                api: api_for(slot, k),
                if_revision: None,
            }
        };
        let (result, attempts) = propose(&shared, command).await;
        let (acked, rejected) = match result {
            Ok(Some(revision)) => (Some(revision), false),
            Ok(None) => (None, true),
            Err(e) => {
                tracing::warn!(k, error = %e, "write not acknowledged");
                (None, false)
            }
        };
        if acked.is_some() {
            exists[slot] = !delete;
        } else if !rejected {
            // Unknown outcome: write the slot whole next time.
            exists[slot] = false;
        }
        lock(&shared.writes).push(WriteRecord {
            k,
            slot,
            delete,
            acked,
            rejected,
            attempts,
        });
        tokio::time::sleep(plan.interval).await;
    }
    *lock(&shared.writes_done) = Some(sim_now());
    Ok(())
}
