//! A TCP stream whose reads and writes are the `recvfrom` and `sendto` system calls
//! themselves, with tokio's readiness around them.
//!
//! Why not tokio's own `TcpStream` reads and writes: they go through glibc's `recv` and
//! `send`, which are thread-cancellation points. In a process with more than one thread (the
//! edge always has several) each call switches asynchronous cancellation on and off around
//! the system call, two atomic operations on the thread's state that were 1.4% of the edge's
//! CPU time per proxied request (`perf record` at saturation). nginx's worker, a
//! single-threaded process, skips them. `libc::syscall` is not a cancellation point.
//!
//! Like tokio's own reads and writes (`PollEvented`), a read that leaves part of the buffer
//! unfilled, or a write that leaves part of the data unsent, shows that the socket is drained
//! or full: the readiness is cleared then, so the next call waits for epoll's next edge
//! instead of making a system call only to get `EAGAIN`. Without that, every proxied request
//! cost two more `recvfrom` calls (one on the client's connection, one on the backend's)
//! than nginx's: 6.5 system calls per request against its 5.5 at a fixed rate.

use std::io;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;

#[derive(Debug)]
pub struct Tcp(TcpStream);

impl Tcp {
    pub fn new(stream: TcpStream) -> Tcp {
        Tcp(stream)
    }
}

/// `recvfrom(fd, buf, len, 0, NULL, NULL)`.
fn recv(fd: i32, buf: &mut [std::mem::MaybeUninit<u8>]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for writes of `buf.len()` bytes for the duration of the call,
    // and the kernel writes at most that many; the address arguments are null, as allowed.
    let n = unsafe {
        libc::syscall(
            libc::SYS_recvfrom,
            fd,
            buf.as_mut_ptr(),
            buf.len(),
            0,
            std::ptr::null_mut::<libc::sockaddr>(),
            std::ptr::null_mut::<libc::socklen_t>(),
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// `sendto(fd, data, len, MSG_NOSIGNAL, NULL, 0)`: a peer that has gone away is an error
/// here, not a SIGPIPE, as with std's sockets.
fn send(fd: i32, data: &[u8]) -> io::Result<usize> {
    // SAFETY: `data` is valid for reads of `data.len()` bytes for the duration of the call;
    // the address argument is null with length 0, as allowed.
    let n = unsafe {
        libc::syscall(
            libc::SYS_sendto,
            fd,
            data.as_ptr(),
            data.len(),
            libc::MSG_NOSIGNAL,
            std::ptr::null::<libc::sockaddr>(),
            0 as libc::socklen_t,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// What the `try_io` closures return after a short read or write: `WouldBlock` makes tokio
/// clear the readiness, with the readiness tick it took *before* the system call, so an edge
/// that arrived meanwhile is not lost. The bytes moved are passed out beside it.
fn drained_marker() -> io::Error {
    io::ErrorKind::WouldBlock.into()
}

impl AsyncRead for Tcp {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let stream = &self.0;
        let fd = stream.as_raw_fd();
        loop {
            ready!(stream.poll_read_ready(cx))?;
            // SAFETY: `recv` only writes into the unfilled part, and reports how much it
            // wrote; those bytes are marked initialised below and no others.
            let unfilled = unsafe { buf.unfilled_mut() };
            let len = unfilled.len();
            let mut drained = None;
            let result = stream.try_io(Interest::READABLE, || {
                let n = recv(fd, unfilled)?;
                if 0 < n && n < len {
                    drained = Some(n);
                    return Err(drained_marker());
                }
                Ok(n)
            });
            let n = match (result, drained) {
                (_, Some(n)) => n,
                (Ok(n), None) => n,
                // Readiness was stale: tokio cleared it, so the next poll registers the waker.
                (Err(e), None) if e.kind() == io::ErrorKind::WouldBlock => continue,
                (Err(e), None) if e.kind() == io::ErrorKind::Interrupted => continue,
                (Err(e), None) => return Poll::Ready(Err(e)),
            };
            // SAFETY: the kernel initialised the first `n` bytes of the unfilled part.
            unsafe { buf.assume_init(n) };
            buf.advance(n);
            return Poll::Ready(Ok(()));
        }
    }
}

impl AsyncWrite for Tcp {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let stream = &self.0;
        let fd = stream.as_raw_fd();
        loop {
            ready!(stream.poll_write_ready(cx))?;
            let mut full = None;
            let result = stream.try_io(Interest::WRITABLE, || {
                let n = send(fd, data)?;
                if 0 < n && n < data.len() {
                    full = Some(n);
                    return Err(drained_marker());
                }
                Ok(n)
            });
            match (result, full) {
                (_, Some(n)) => return Poll::Ready(Ok(n)),
                (Err(e), None) if e.kind() == io::ErrorKind::WouldBlock => continue,
                (Err(e), None) if e.kind() == io::ErrorKind::Interrupted => continue,
                (result, None) => return Poll::Ready(result),
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn reads_and_writes_through_the_system_calls() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = tokio::spawn(async move {
            let mut c = Tcp::new(TcpStream::connect(addr).await.unwrap());
            c.write_all(b"ping").await.unwrap();
            let mut answer = Vec::new();
            c.read_to_end(&mut answer).await.unwrap();
            answer
        });
        let (server, _) = listener.accept().await.unwrap();
        let mut server = Tcp::new(server);
        let mut got = [0u8; 4];
        server.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"ping");
        // More than a socket buffer, so writes must wait for readiness.
        let big = vec![7u8; 8 << 20];
        server.write_all(&big).await.unwrap();
        server.shutdown().await.unwrap();
        drop(server);
        assert_eq!(client.await.unwrap(), big);
    }

    /// A short read clears the readiness: data that arrives later must still wake the reader,
    /// and a close that arrived with the data must still be seen as the end.
    #[tokio::test]
    async fn short_reads_miss_neither_later_data_nor_the_end() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut peer = TcpStream::connect(addr).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let mut server = Tcp::new(server);
        let mut buf = [0u8; 1024];
        for round in 0..50u8 {
            peer.write_all(&[round; 3]).await.unwrap();
            let mut got = 0;
            while got < 3 {
                let n = tokio::time::timeout(
                    std::time::Duration::from_secs(5),
                    server.read(&mut buf[got..]),
                )
                .await
                .expect("a read after a short read never woke up")
                .unwrap();
                assert!(n > 0, "end of stream in round {round}");
                got += n;
            }
            assert_eq!(&buf[..3], &[round; 3]);
        }
        // Data and the close in one go: the short read that takes the data must not hide the
        // close from the next read.
        peer.write_all(b"last").await.unwrap();
        peer.shutdown().await.unwrap();
        let mut rest = Vec::new();
        tokio::time::timeout(
            std::time::Duration::from_secs(5),
            server.read_to_end(&mut rest),
        )
        .await
        .expect("the close after a short read was never seen")
        .unwrap();
        assert_eq!(rest, b"last");
    }

    #[tokio::test]
    async fn a_closed_peer_is_an_error_not_a_signal() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut c = Tcp::new(TcpStream::connect(addr).await.unwrap());
        let (server, _) = listener.accept().await.unwrap();
        drop(server);
        let mut failed = false;
        for _ in 0..100 {
            if c.write_all(&[0u8; 64 * 1024]).await.is_err() {
                failed = true;
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        assert!(failed, "writing to a closed peer kept succeeding");
    }
}
