//! The edge's side of config sync: hold one session with some control node, apply each update
//! as untrusted input (shape, validation, compilation), persist it as last-known-good, swap it
//! in, and ack; or nack with the reason and keep serving. When a session ends, try the next
//! control node after a jittered, growing backoff. The config keeps serving throughout.
//!
//! The endpoint (its socket) and the clock (tokio's) come from the caller, so simulations run
//! this same code over a simulated network.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use portico_proto::sync::{
    CLOSE_FORBIDDEN, CONTROL_SERVER_NAME, ConfigUpdate, ControlMessage, EdgeFilter, EdgeMessage,
    EdgeView, Hello, MAX_CONTROL_FRAME, PROTOCOL_VERSION, bounded_text,
};
use quinn::{RecvStream, SendStream};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::identity::EdgeIdentity;
use super::lkg::{self, LastKnownGood, LkgError};
use super::status::SyncStatus;
use super::tls::{TlsError, sync_client_config};
use super::wire::{WireError, read_frame, write_frame};
use crate::store::ConfigStore;

/// QUIC's idle timeout on connections to control nodes (keep-alives every quarter of it).
const CONNECTION_IDLE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
pub struct SyncTiming {
    /// How often the edge heartbeats.
    pub heartbeat: Duration,
    /// A control node silent this long is given up on.
    pub silence: Duration,
    /// Connecting and the control node's welcome must take at most this.
    pub connect_timeout: Duration,
    /// The first retry waits about this long; each failure doubles it, up to `backoff_max`.
    pub backoff_min: Duration,
    pub backoff_max: Duration,
}

impl Default for SyncTiming {
    fn default() -> Self {
        SyncTiming {
            heartbeat: Duration::from_secs(1),
            // Three missed heartbeats: a crashed control node is left within about 3 s.
            silence: Duration::from_secs(3),
            connect_timeout: Duration::from_secs(3),
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("cannot connect: {0}")]
    Connect(String),
    #[error("{0}")]
    Wire(#[from] WireError),
    #[error("the control node refused this edge: {0}")]
    Refused(String),
    #[error("protocol violation by the control node: {0}")]
    Protocol(String),
    #[error("the control node was silent for {0:?}")]
    Silent(Duration),
}

/// How an update went, for the ack or nack.
enum Outcome {
    Applied(u64),
    Refused(u64, String),
}

pub struct SyncClient {
    pub endpoint: quinn::Endpoint,
    /// From [`super::tls::sync_client_config`].
    pub client_config: quinn::ClientConfig,
    pub controls: Vec<SocketAddr>,
    pub edge_id: String,
    pub filter: EdgeFilter,
    pub store: Arc<ConfigStore>,
    /// Where last-known-good is kept; `None` keeps nothing on disk.
    pub lkg_path: Option<PathBuf>,
    pub status: Arc<SyncStatus>,
    pub timing: SyncTiming,
    /// Jitter for backoffs; seeded by simulations.
    pub rng: fastrand::Rng,
    view: EdgeView,
    /// The view was filtered for other listeners: ask for everything afresh.
    resync: bool,
}

impl SyncClient {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        endpoint: quinn::Endpoint,
        client_config: quinn::ClientConfig,
        controls: Vec<SocketAddr>,
        edge_id: String,
        filter: EdgeFilter,
        store: Arc<ConfigStore>,
        lkg_path: Option<PathBuf>,
        status: Arc<SyncStatus>,
    ) -> SyncClient {
        SyncClient {
            endpoint,
            client_config,
            controls,
            edge_id,
            filter,
            store,
            lkg_path,
            status,
            timing: SyncTiming::default(),
            rng: fastrand::Rng::new(),
            view: EdgeView::default(),
            resync: false,
        }
    }

    /// A client for an enrolled edge: mutual TLS with its certificate, filtered for its region
    /// and listeners, reporting into a fresh [`SyncStatus`] (returned too, for the ops
    /// listener).
    pub fn for_identity(
        endpoint: quinn::Endpoint,
        identity: &EdgeIdentity,
        controls: Vec<SocketAddr>,
        private_listener: bool,
        store: Arc<ConfigStore>,
        lkg_path: Option<PathBuf>,
    ) -> Result<(SyncClient, Arc<SyncStatus>), TlsError> {
        let client_config = sync_client_config(
            &identity.ca,
            identity.chain.clone(),
            identity.key.clone_key(),
            CONNECTION_IDLE_TIMEOUT,
        )?;
        let filter = EdgeFilter {
            region: identity.region.clone(),
            private_listener,
        };
        let status = Arc::new(SyncStatus::default());
        let client = SyncClient::new(
            endpoint,
            client_config,
            controls,
            identity.edge_id.clone(),
            filter,
            store,
            lkg_path,
            status.clone(),
        );
        Ok((client, status))
    }

    /// Serves the last-known-good config, if one is on disk. Returns its revision. A corrupt
    /// file is reported (and its error returned): the edge then waits for a control node.
    pub fn boot_from_lkg(&mut self) -> Result<Option<u64>, LkgError> {
        let Some(path) = &self.lkg_path else {
            return Ok(None);
        };
        let saved = match lkg::load(path) {
            Ok(Some(saved)) => saved,
            Ok(None) => return Ok(None),
            Err(e) => {
                self.store.report_error(e.to_string());
                self.status.lkg_failed();
                return Err(e);
            }
        };
        if saved.edge_id != self.edge_id {
            let e = LkgError::Corrupt {
                path: path.display().to_string(),
                reason: format!("it belongs to edge {}, not {}", saved.edge_id, self.edge_id),
            };
            self.store.report_error(e.to_string());
            self.status.lkg_failed();
            return Err(e);
        }
        let prepared = self
            .store
            .prepare(
                &saved.view.to_document(),
                saved.view.revision,
                "last-known-good",
            )
            .map_err(|e| LkgError::Corrupt {
                path: path.display().to_string(),
                reason: e.to_string(),
            })?;
        let revision = self.store.install(prepared);
        self.resync = saved.filter != self.filter;
        self.view = saved.view;
        tracing::info!(revision, path = %path.display(), "serving last-known-good config");
        Ok(Some(revision))
    }

    /// Syncs forever: one session at a time, over the control nodes in turn.
    pub async fn run(mut self) {
        if self.controls.is_empty() {
            tracing::error!("no control node to sync with");
            return;
        }
        // Edges start at different control nodes, so they spread over them.
        let mut next = self.rng.usize(..self.controls.len());
        let mut failures: u32 = 0;
        loop {
            let control = self.controls[next % self.controls.len()];
            next += 1;
            let started = Instant::now();
            let result = self.session(control).await;
            self.status.disconnected();
            let refused = matches!(result, Err(SessionError::Refused(_)));
            match &result {
                Ok(()) => tracing::info!(%control, "sync session ended"),
                Err(SessionError::Refused(reason)) => {
                    tracing::error!(%control, %reason, "the control plane refused this edge");
                    self.store.report_error(format!(
                        "control node {control} refused this edge: {reason}"
                    ));
                }
                Err(e) => {
                    tracing::warn!(%control, error = %e, "sync session failed; the edge keeps serving revision {}", self.view.revision)
                }
            }
            // A session that lasted resets the backoff; quick failures grow it.
            if started.elapsed() > self.timing.silence {
                failures = 0;
            }
            let backoff = if refused {
                self.timing.backoff_max
            } else {
                let exp = self
                    .timing
                    .backoff_min
                    .saturating_mul(1 << failures.min(16));
                exp.min(self.timing.backoff_max)
            };
            failures = failures.saturating_add(1);
            // Full jitter over the upper half: edges that lost the same node do not return
            // in lockstep.
            let jittered = backoff.mul_f64(0.5 + self.rng.f64() / 2.0);
            tokio::time::sleep(jittered).await;
        }
    }

    async fn session(&mut self, control: SocketAddr) -> Result<(), SessionError> {
        let connecting = self
            .endpoint
            .connect_with(self.client_config.clone(), control, CONTROL_SERVER_NAME)
            .map_err(|e| SessionError::Connect(e.to_string()))?;
        let conn = tokio::time::timeout(self.timing.connect_timeout, connecting)
            .await
            .map_err(|_| {
                SessionError::Connect(format!(
                    "no handshake within {:?}",
                    self.timing.connect_timeout
                ))
            })?
            .map_err(connection_error)?;
        let (mut send, recv) = conn.open_bi().await.map_err(connection_error)?;
        let result =
            self.exchange(control, &mut send, recv)
                .await
                .map_err(|e| match refusal_of(&e) {
                    Some(reason) => SessionError::Refused(reason),
                    None => e,
                });
        let reason = match &result {
            Ok(()) => "done".to_string(),
            Err(e) => e.to_string(),
        };
        conn.close(0u32.into(), bounded_text(&reason).as_bytes());
        result
    }

    async fn exchange(
        &mut self,
        control: SocketAddr,
        send: &mut SendStream,
        recv: RecvStream,
    ) -> Result<(), SessionError> {
        let hello = Hello {
            edge_id: self.edge_id.clone(),
            region: self.filter.region.clone(),
            software_version: crate::VERSION.to_string(),
            protocol_version: PROTOCOL_VERSION,
            revision: if self.resync { 0 } else { self.view.revision },
            private_listener: self.filter.private_listener,
        };
        write_frame(send, &EdgeMessage::Hello(hello)).await?;
        let mut frames = spawn_reader(recv);
        let welcome = tokio::time::timeout(self.timing.connect_timeout, frames.recv())
            .await
            .map_err(|_| SessionError::Connect("no welcome in time".into()))?;
        match welcome {
            Some(Ok(ControlMessage::Welcome {
                node_id,
                protocol_version,
            })) => {
                tracing::info!(%control, node = node_id, protocol_version, revision = self.view.revision, "sync session started");
                self.status.connected(node_id, control);
            }
            Some(Ok(ControlMessage::Refused { reason })) => {
                return Err(SessionError::Refused(bounded_text(&reason)));
            }
            Some(Ok(other)) => {
                return Err(SessionError::Protocol(format!(
                    "expected a welcome, got {}",
                    describe(&other)
                )));
            }
            Some(Err(e)) => return Err(e.into()),
            None => return Err(SessionError::Wire(WireError::Closed)),
        }

        let mut heartbeat = tokio::time::interval(self.timing.heartbeat);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_heard = Instant::now();
        loop {
            tokio::select! {
                frame = frames.recv() => {
                    let Some(frame) = frame else {
                        return Err(SessionError::Wire(WireError::Closed));
                    };
                    last_heard = Instant::now();
                    match frame? {
                        ControlMessage::Update(update) => {
                            let answer = match self.apply(&update, control) {
                                Outcome::Applied(revision) => EdgeMessage::Ack { revision },
                                Outcome::Refused(revision, reason) => EdgeMessage::Nack { revision, reason },
                            };
                            write_frame(send, &answer).await?;
                        }
                        ControlMessage::Heartbeat { revision } => {
                            self.status.control_revision(revision);
                        }
                        ControlMessage::Refused { reason } => {
                            return Err(SessionError::Refused(bounded_text(&reason)));
                        }
                        ControlMessage::Welcome { .. } => {
                            return Err(SessionError::Protocol("a second welcome".into()));
                        }
                    }
                }
                _ = heartbeat.tick() => {
                    if last_heard.elapsed() > self.timing.silence {
                        return Err(SessionError::Silent(self.timing.silence));
                    }
                    let revision = self.view.revision;
                    write_frame(send, &EdgeMessage::Heartbeat { revision }).await?;
                }
            }
        }
    }

    /// Checks, compiles, persists and swaps in one update; the config keeps serving the
    /// previous revision if any step refuses it.
    fn apply(&mut self, update: &ConfigUpdate, control: SocketAddr) -> Outcome {
        let refuse = |this: &Self, reason: String| {
            tracing::error!(revision = update.revision, %reason, "refused an update; still serving revision {}", this.view.revision);
            this.status.update_refused();
            this.store.report_error(format!(
                "update to revision {} refused: {reason}",
                update.revision
            ));
            Outcome::Refused(update.revision, reason)
        };
        let next = match self.view.apply(update) {
            Ok(next) => next,
            Err(e) => return refuse(self, e.to_string()),
        };
        let source = format!("control node {control}");
        let prepared = match self
            .store
            .prepare(&next.to_document(), next.revision, &source)
        {
            Ok(p) => p,
            Err(e) => return refuse(self, e.to_string()),
        };
        if let Some(path) = &self.lkg_path {
            let saved = LastKnownGood {
                edge_id: self.edge_id.clone(),
                filter: self.filter.clone(),
                view: next.clone(),
            };
            // A disk problem must not stop a valid config from serving: report it loudly.
            if let Err(e) = lkg::save(path, &saved) {
                tracing::error!(error = %e, "cannot persist the last-known-good config");
                self.status.lkg_failed();
            }
        }
        self.store.install(prepared);
        self.view = next;
        self.resync = false;
        self.status.update_applied(update.revision);
        tracing::debug!(
            revision = update.revision,
            changes = update.changes.len(),
            "applied an update"
        );
        Outcome::Applied(update.revision)
    }
}

/// A connection that failed or closed before the session began: a refusal when the control
/// node closed it to refuse this edge.
fn connection_error(e: quinn::ConnectionError) -> SessionError {
    match forbidden(&e) {
        Some(reason) => SessionError::Refused(reason),
        None => SessionError::Connect(e.to_string()),
    }
}

/// The control node's reason when it closed the connection to refuse this edge (revoked,
/// unknown), rather than losing it.
fn refusal_of(e: &SessionError) -> Option<String> {
    match e {
        SessionError::Wire(WireError::Read(quinn::ReadError::ConnectionLost(c)))
        | SessionError::Wire(WireError::Write(quinn::WriteError::ConnectionLost(c))) => {
            forbidden(c)
        }
        _ => None,
    }
}

fn forbidden(lost: &quinn::ConnectionError) -> Option<String> {
    match lost {
        quinn::ConnectionError::ApplicationClosed(close)
            if close.error_code == quinn::VarInt::from_u32(CLOSE_FORBIDDEN) =>
        {
            Some(bounded_text(&String::from_utf8_lossy(&close.reason)))
        }
        _ => None,
    }
}

fn describe(msg: &ControlMessage) -> &'static str {
    match msg {
        ControlMessage::Welcome { .. } => "welcome",
        ControlMessage::Refused { .. } => "refusal",
        ControlMessage::Update(_) => "update",
        ControlMessage::Heartbeat { .. } => "heartbeat",
    }
}

/// Reads frames in a task of its own (a read is not cancel-safe; the session selects).
fn spawn_reader(mut recv: RecvStream) -> mpsc::Receiver<Result<ControlMessage, WireError>> {
    let (tx, rx) = mpsc::channel(4);
    tokio::spawn(async move {
        loop {
            let frame = read_frame::<ControlMessage>(&mut recv, MAX_CONTROL_FRAME).await;
            let done = frame.is_err();
            if tx.send(frame).await.is_err() || done {
                return;
            }
        }
    });
    rx
}
