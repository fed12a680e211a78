//! The control node's side of a sync session (`portico-sync/1`): one per connected edge.
//!
//! The edge opens one bidirectional stream and says hello; this node answers with the changes
//! since the edge's revision (or everything), then pushes each newly applied revision once the
//! previous push is acked or nacked (pushes coalesce while the edge is busy), and heartbeats.
//! A node only ever serves its own applied state, and waits (heartbeating) while an edge is
//! ahead of it, so an edge never moves backwards whichever node it talks to.

use std::sync::Arc;
use std::time::Duration;

use portico_proto::sync::{
    ControlMessage, EdgeFilter, EdgeMessage, Hello, MAX_EDGE_FRAME, MIN_PROTOCOL_VERSION,
    PROTOCOL_VERSION, bounded_text, check_hello,
};
use quinn::{Connection, RecvStream, SendStream};
use tokio::sync::mpsc;

use super::changes::edge_update;
use super::registry::{EdgeSession, EdgeSessions, now_ms};
use crate::raft::store::StateReader;
use crate::state::State;
use crate::transport::frame::{FrameError, read_frame, write_frame};
use crate::transport::server::{ConnectionTask, ProtocolHandler};
use crate::transport::{PeerIdentity, close_code};

/// Timing and limits of sync sessions.
#[derive(Debug, Clone)]
pub struct SyncTiming {
    /// Each side sends a heartbeat this often.
    pub heartbeat: Duration,
    /// A session whose edge is silent for this long is closed.
    pub silence: Duration,
    /// How long the edge has to open its stream and say hello.
    pub hello_timeout: Duration,
    /// How long one frame may take to write before the edge is considered stuck.
    pub write_timeout: Duration,
}

impl Default for SyncTiming {
    fn default() -> Self {
        SyncTiming {
            heartbeat: Duration::from_secs(1),
            silence: Duration::from_secs(5),
            hello_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(10),
        }
    }
}

/// Serves `portico-sync/1` connections from enrolled edges.
#[derive(Clone)]
pub struct SyncService {
    pub node_id: u64,
    pub state: StateReader,
    pub sessions: Arc<EdgeSessions>,
    pub timing: SyncTiming,
}

#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error("{0}")]
    Frame(#[from] FrameError),
    #[error("protocol violation: {0}")]
    Protocol(String),
    #[error("refused: {0}")]
    Refused(String),
    #[error("the edge was silent for {0:?}")]
    Silent(Duration),
    #[error("writing to the edge took longer than {0:?}")]
    WriteTimeout(Duration),
    #[error("the edge was revoked")]
    Revoked,
    #[error("this node's state store closed")]
    StoreClosed,
}

impl ProtocolHandler for SyncService {
    fn serve_connection(&self, conn: Connection, peer: PeerIdentity) -> ConnectionTask {
        let service = self.clone();
        Box::pin(async move {
            let PeerIdentity::Edge { id, region } = peer else {
                tracing::warn!("a non-edge certificate tried to sync");
                conn.close(close_code::FORBIDDEN, b"sync is for edge certificates");
                return;
            };
            // An edge enrolled moments ago may not have reached this follower yet: its id ends
            // in the enrolment's log index, so wait (briefly) until this node has applied it.
            if let Some(index) = enrolment_index(&id)
                && index > service.state.applied()
            {
                let caught_up = service.state.wait_applied(index);
                let _ = tokio::time::timeout(service.timing.hello_timeout, caught_up).await;
            }
            if let Err(reason) = admitted(&service.state.load(), &id, &region) {
                tracing::warn!(edge = %id, %reason, "refusing an edge connection");
                conn.close(close_code::FORBIDDEN, reason.as_bytes());
                return;
            }
            let accepted = tokio::time::timeout(service.timing.hello_timeout, conn.accept_bi());
            let (send, recv) = match accepted.await {
                Ok(Ok(streams)) => streams,
                Ok(Err(e)) => {
                    tracing::debug!(edge = %id, error = %e, "connection ended before a session");
                    return;
                }
                Err(_) => {
                    conn.close(close_code::FORBIDDEN, b"no sync stream opened in time");
                    return;
                }
            };
            match service.run(&id, &region, &conn, send, recv).await {
                Ok(()) => tracing::info!(edge = %id, "sync session ended"),
                Err(SessionError::Revoked) => {
                    tracing::warn!(edge = %id, "edge revoked: closing its connection");
                    conn.close(close_code::FORBIDDEN, b"edge revoked");
                }
                Err(SessionError::Frame(e)) if e.connection_lost().is_some() => {
                    tracing::info!(edge = %id, error = %e, "edge disconnected");
                }
                Err(e @ (SessionError::Frame(_) | SessionError::Protocol(_))) => {
                    // Bad input from an enrolled edge ends its session only.
                    tracing::error!(edge = %id, error = %e, "closing a sync stream on bad input");
                    conn.close(close_code::BAD_INPUT, e.to_string().as_bytes());
                }
                Err(e) => {
                    tracing::warn!(edge = %id, error = %e, "sync session ended");
                    conn.close(close_code::FORBIDDEN, e.to_string().as_bytes());
                }
            }
        })
    }
}

/// The log index an edge id (`{region}-{index}`) was enrolled at.
fn enrolment_index(id: &str) -> Option<u64> {
    id.rsplit_once('-')?.1.parse().ok()
}

/// Whether the edge with this certificate may sync: enrolled, not revoked, region unchanged.
fn admitted(state: &State, id: &str, region: &str) -> Result<(), String> {
    match state.edges.get(id) {
        None => Err(format!("edge {id} is not enrolled in this cluster")),
        Some(edge) if edge.revoked_at_ms.is_some() => Err(format!("edge {id} is revoked")),
        Some(edge) if edge.region != region => Err(format!(
            "edge {id} is enrolled in region {}, its certificate says {region}",
            edge.region
        )),
        Some(_) => Ok(()),
    }
}

/// Reads the edge's frames in a task of its own (a frame read is not cancel-safe, the session
/// loop selects over several events), handing each to the loop.
fn spawn_reader(mut recv: RecvStream) -> mpsc::Receiver<Result<EdgeMessage, FrameError>> {
    let (tx, rx) = mpsc::channel(8);
    tokio::spawn(async move {
        loop {
            let frame = read_frame::<EdgeMessage>(&mut recv, MAX_EDGE_FRAME).await;
            let done = frame.is_err();
            if tx.send(frame).await.is_err() || done {
                return;
            }
        }
    });
    rx
}

impl SyncService {
    async fn write(&self, send: &mut SendStream, msg: &ControlMessage) -> Result<(), SessionError> {
        match tokio::time::timeout(self.timing.write_timeout, write_frame(send, msg)).await {
            Ok(result) => Ok(result?),
            Err(_) => Err(SessionError::WriteTimeout(self.timing.write_timeout)),
        }
    }

    async fn refuse(&self, send: &mut SendStream, reason: String) -> SessionError {
        let _ = self
            .write(
                send,
                &ControlMessage::Refused {
                    reason: reason.clone(),
                },
            )
            .await;
        let _ = send.finish();
        let _ = tokio::time::timeout(Duration::from_secs(1), send.stopped()).await;
        SessionError::Refused(reason)
    }

    async fn run(
        &self,
        id: &str,
        region: &str,
        conn: &Connection,
        mut send: SendStream,
        recv: RecvStream,
    ) -> Result<(), SessionError> {
        let mut frames = spawn_reader(recv);
        let hello = match tokio::time::timeout(self.timing.hello_timeout, frames.recv()).await {
            Ok(Some(Ok(EdgeMessage::Hello(hello)))) => hello,
            Ok(Some(Ok(other))) => {
                return Err(SessionError::Protocol(format!(
                    "expected hello, got {other:?}"
                )));
            }
            Ok(Some(Err(e))) => return Err(e.into()),
            Ok(None) | Err(_) => {
                return Err(SessionError::Protocol("no hello in time".into()));
            }
        };
        if let Err(reason) = check_session(&hello, id, region) {
            return Err(self.refuse(&mut send, reason).await);
        }
        self.write(
            &mut send,
            &ControlMessage::Welcome {
                node_id: self.node_id,
                protocol_version: hello.protocol_version,
            },
        )
        .await?;
        let connected_at_ms = now_ms();
        self.sessions.connected(EdgeSession {
            id: id.to_string(),
            region: region.to_string(),
            node: self.node_id,
            remote: conn.remote_address().to_string(),
            software_version: bounded_text(&hello.software_version),
            protocol_version: hello.protocol_version,
            private_listener: hello.private_listener,
            revision: hello.revision,
            connected: true,
            connected_at_ms,
            last_seen_ms: connected_at_ms,
            last_nack: None,
        });
        tracing::info!(edge = %id, revision = hello.revision, version = %hello.software_version, "sync session started");
        let result = self.push_loop(id, &hello, &mut send, &mut frames).await;
        self.sessions.disconnected(id, connected_at_ms);
        result
    }

    async fn push_loop(
        &self,
        id: &str,
        hello: &Hello,
        send: &mut SendStream,
        frames: &mut mpsc::Receiver<Result<EdgeMessage, FrameError>>,
    ) -> Result<(), SessionError> {
        let filter = EdgeFilter {
            region: hello.region.clone(),
            private_listener: hello.private_listener,
        };
        let mut applied = self.state.watch();
        // What the edge serves, the push awaiting its answer, and the newest revision it
        // refused (not pushed again: the next push is the next revision).
        let mut edge_revision = hello.revision;
        let mut in_flight: Option<u64> = None;
        let mut refused = 0u64;
        let mut heartbeat = tokio::time::interval(self.timing.heartbeat);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_heard = tokio::time::Instant::now();
        loop {
            let state = self.state.load();
            if state
                .edges
                .get(id)
                .is_none_or(|e| e.revoked_at_ms.is_some())
            {
                return Err(SessionError::Revoked);
            }
            let due = state.revision > edge_revision.max(refused);
            if in_flight.is_none() && due {
                let update = edge_update(&state, edge_revision, &filter);
                in_flight = Some(update.revision);
                self.write(send, &ControlMessage::Update(update)).await?;
            }
            drop(state);
            tokio::select! {
                changed = applied.changed() => {
                    if changed.is_err() {
                        return Err(SessionError::StoreClosed);
                    }
                }
                frame = frames.recv() => {
                    let Some(frame) = frame else {
                        return Ok(());
                    };
                    last_heard = tokio::time::Instant::now();
                    match frame {
                        Err(FrameError::Closed) => return Ok(()),
                        Err(e) => return Err(e.into()),
                        Ok(EdgeMessage::Ack { revision }) if in_flight == Some(revision) => {
                            in_flight = None;
                            edge_revision = revision;
                            self.sessions.seen(id, revision);
                        }
                        Ok(EdgeMessage::Nack { revision, reason }) if in_flight == Some(revision) => {
                            in_flight = None;
                            refused = revision;
                            let reason = bounded_text(&reason);
                            tracing::warn!(edge = %id, revision, %reason, "edge refused a revision; it keeps serving its previous one");
                            self.sessions.nacked(id, revision, reason);
                        }
                        // Liveness only: what the edge serves is what it acked (an edge
                        // asking for a fresh snapshot still serves its older config meanwhile).
                        Ok(EdgeMessage::Heartbeat { .. }) => {
                            self.sessions.seen(id, edge_revision);
                        }
                        Ok(other) => {
                            return Err(SessionError::Protocol(format!(
                                "unexpected {other:?} (awaiting an answer for {in_flight:?})"
                            )));
                        }
                    }
                }
                _ = heartbeat.tick() => {
                    if last_heard.elapsed() > self.timing.silence {
                        return Err(SessionError::Silent(self.timing.silence));
                    }
                    let revision = self.state.applied();
                    self.write(send, &ControlMessage::Heartbeat { revision }).await?;
                }
            }
        }
    }
}

/// Whether this node serves the edge that sent `hello` on a connection with the certificate
/// of edge `id` in `region`.
fn check_session(hello: &Hello, id: &str, region: &str) -> Result<(), String> {
    if hello.protocol_version > PROTOCOL_VERSION {
        return Err(format!(
            "the edge speaks sync protocol {}, this control node at most {PROTOCOL_VERSION}: upgrade the control plane before its edges",
            hello.protocol_version
        ));
    }
    if hello.protocol_version < MIN_PROTOCOL_VERSION {
        return Err(format!(
            "the edge speaks sync protocol {}, this control node at least {MIN_PROTOCOL_VERSION}: upgrade the edge",
            hello.protocol_version
        ));
    }
    if hello.edge_id != id || hello.region != region {
        return Err(format!(
            "the hello names edge {} in {}, the certificate edge {id} in {region}",
            bounded_text(&hello.edge_id),
            bounded_text(&hello.region)
        ));
    }
    check_hello(hello)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::EdgeRecord;

    fn hello(version: u32) -> Hello {
        Hello {
            edge_id: "eu-4".into(),
            region: "eu".into(),
            software_version: "0.1.0".into(),
            protocol_version: version,
            revision: 0,
            private_listener: false,
        }
    }

    #[test]
    fn version_skew_and_identity_mismatch_are_refused_with_a_reason() {
        assert!(check_session(&hello(PROTOCOL_VERSION), "eu-4", "eu").is_ok());
        let newer = check_session(&hello(PROTOCOL_VERSION + 1), "eu-4", "eu").unwrap_err();
        assert!(newer.contains("upgrade the control plane"), "{newer}");
        let older = check_session(&hello(0), "eu-4", "eu").unwrap_err();
        assert!(older.contains("upgrade the edge"), "{older}");
        let other = check_session(&hello(PROTOCOL_VERSION), "eu-9", "eu").unwrap_err();
        assert!(other.contains("certificate edge eu-9"), "{other}");
    }

    #[test]
    fn only_enrolled_unrevoked_edges_of_their_region_are_admitted() {
        let mut state = State::default();
        assert!(
            admitted(&state, "eu-4", "eu")
                .unwrap_err()
                .contains("not enrolled")
        );
        state.edges.insert(
            "eu-4".into(),
            EdgeRecord {
                id: "eu-4".into(),
                region: "eu".into(),
                token_id: "t".into(),
                enrolled_at_ms: 1,
                revoked_at_ms: None,
            },
        );
        assert!(admitted(&state, "eu-4", "eu").is_ok());
        assert!(
            admitted(&state, "eu-4", "us")
                .unwrap_err()
                .contains("enrolled in region eu")
        );
        state.edges.get_mut("eu-4").unwrap().revoked_at_ms = Some(2);
        assert!(
            admitted(&state, "eu-4", "eu")
                .unwrap_err()
                .contains("revoked")
        );
    }
}
