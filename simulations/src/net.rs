//! QUIC over turmoil: quinn's [`AsyncUdpSocket`] on a `turmoil::net::UdpSocket`, and the
//! endpoints a control node and an edge use in a simulation.
//!
//! turmoil delivers whole datagrams with no GSO/GRO, ECN or control messages, so the socket
//! sends and receives one datagram at a time. Sending never blocks (turmoil has no
//! backpressure: a full receive queue drops, like a real one). Timers are quinn's
//! [`TokioRuntime`]'s, i.e. tokio's clock, which turmoil drives.

use std::fmt;
use std::future::Future;
use std::io::{self, IoSliceMut};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use portico_control::run::EndpointTls;
use portico_control::transport::TransportLimits;
use portico_control::transport::tls::{client_config, server_config};
use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, EndpointConfig, TokioRuntime, UdpPoller};

type Readable = Pin<Box<dyn Future<Output = io::Result<()>> + Send>>;

/// A turmoil UDP socket as quinn sees it.
pub struct TurmoilUdp {
    socket: Arc<turmoil::net::UdpSocket>,
    /// The host's address and the bound port (turmoil binds only the unspecified address).
    local: SocketAddr,
    /// The wait for the next datagram, kept across polls (turmoil's `readable` is a future).
    readable: Mutex<Option<Readable>>,
}

impl fmt::Debug for TurmoilUdp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TurmoilUdp")
            .field("socket", &self.socket)
            .finish_non_exhaustive()
    }
}

impl TurmoilUdp {
    /// Binds the port of `addr` (0: an ephemeral one) on the current simulated host, whose
    /// address `addr` must be.
    pub async fn bind(addr: SocketAddr) -> io::Result<Arc<TurmoilUdp>> {
        let any = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), addr.port());
        let socket = turmoil::net::UdpSocket::bind(any).await?;
        let local = SocketAddr::new(addr.ip(), socket.local_addr()?.port());
        Ok(Arc::new(TurmoilUdp {
            socket: Arc::new(socket),
            local,
            readable: Mutex::new(None),
        }))
    }

    /// Moves every queued datagram that fits into `bufs`; 0 when none is queued.
    fn receive_queued(
        &self,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> io::Result<usize> {
        let local_ip = self.local.ip();
        let mut count = 0;
        for (buf, meta) in bufs.iter_mut().zip(meta.iter_mut()) {
            match self.socket.try_recv_from(buf) {
                Ok((len, addr)) => {
                    *meta = RecvMeta {
                        addr,
                        len,
                        stride: len,
                        ecn: None,
                        dst_ip: Some(local_ip),
                    };
                    count += 1;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if count == 0 => return Err(e),
                Err(_) => break,
            }
        }
        Ok(count)
    }
}

impl AsyncUdpSocket for TurmoilUdp {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        Box::pin(AlwaysWritable)
    }

    fn try_send(&self, transmit: &Transmit) -> io::Result<()> {
        // One datagram per transmit: `max_transmit_segments` is 1.
        self.socket
            .try_send_to(transmit.contents, transmit.destination)
            .map(|_| ())
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        let mut readable = self.readable.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            // While a wait is pending it holds the socket's receive queue; try only without one.
            if readable.is_none() {
                match self.receive_queued(bufs, meta) {
                    Ok(0) => {}
                    Ok(n) => return Poll::Ready(Ok(n)),
                    Err(e) => return Poll::Ready(Err(e)),
                }
                let socket = self.socket.clone();
                *readable = Some(Box::pin(async move { socket.readable().await }));
            }
            let wait = readable.as_mut().expect("set just above");
            match wait.as_mut().poll(cx) {
                Poll::Ready(result) => {
                    *readable = None;
                    result?;
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local)
    }

    fn max_transmit_segments(&self) -> usize {
        1
    }

    fn max_receive_segments(&self) -> usize {
        1
    }

    /// Datagrams are never fragmented, but path MTU discovery would only add probe packets: the
    /// simulated network has no MTU. Claiming fragmentation keeps quinn from probing.
    fn may_fragment(&self) -> bool {
        true
    }
}

/// turmoil's UDP sockets are always writable.
#[derive(Debug)]
struct AlwaysWritable;

impl UdpPoller for AlwaysWritable {
    fn poll_writable(self: Pin<&mut Self>, _cx: &mut Context) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// quinn's endpoint configuration with its random number generator (connection ids, tokens)
/// seeded from the simulation seed and a label naming the host (and its incarnation).
pub fn endpoint_config(seed: u64, label: &str) -> EndpointConfig {
    let mut config = EndpointConfig::default();
    config.rng_seed(Some(seed_bytes(seed, label)));
    config
}

/// 32 bytes derived from a seed and a label (splitmix64), distinct per label.
pub fn seed_bytes(seed: u64, label: &str) -> [u8; 32] {
    let mut state = seed ^ fnv1a(label.as_bytes());
    let mut out = [0u8; 32];
    for chunk in out.chunks_mut(8) {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        chunk.copy_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    out
}

/// A stable 64-bit hash (FNV-1a): summaries and seeds must not depend on the process.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// A control node's endpoint at `addr`: it accepts Raft, sync and enrolment with the node's
/// certificate and dials other members for Raft, with the transport limits `start` uses. `label`
/// seeds its generator ([`endpoint_config`]).
pub async fn control_endpoint(
    addr: SocketAddr,
    tls: &EndpointTls,
    seed: u64,
    label: &str,
) -> io::Result<quinn::Endpoint> {
    let limits = TransportLimits::default();
    let server = server_config(tls.server.clone(), &limits).map_err(io::Error::other)?;
    let client = client_config(tls.client.clone(), &limits).map_err(io::Error::other)?;
    let socket = TurmoilUdp::bind(addr).await?;
    let mut endpoint = quinn::Endpoint::new_with_abstract_socket(
        endpoint_config(seed, label),
        Some(server),
        socket,
        Arc::new(TokioRuntime),
    )?;
    endpoint.set_default_client_config(client);
    Ok(endpoint)
}

/// An edge's client-only endpoint on an ephemeral port of `ip`; the sync client brings its own
/// client configuration.
pub async fn edge_endpoint(ip: IpAddr, seed: u64, label: &str) -> io::Result<quinn::Endpoint> {
    let socket = TurmoilUdp::bind(SocketAddr::new(ip, 0)).await?;
    quinn::Endpoint::new_with_abstract_socket(
        endpoint_config(seed, label),
        None,
        socket,
        Arc::new(TokioRuntime),
    )
}
