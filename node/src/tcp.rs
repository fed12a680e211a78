//! A TCP stream whose reads and writes are the `recvfrom` and `sendto` system calls
//! themselves, with tokio's readiness around them.
//!
//! Why not tokio's own `TcpStream` reads and writes: they go through glibc's `recv` and
//! `send`, which are thread-cancellation points. In a process with more than one thread (the
//! edge always has several) each call switches asynchronous cancellation on and off around
//! the system call, two atomic operations on the thread's state that were 1.4% of the edge's
//! CPU time per proxied request (`perf record` at saturation). nginx's worker, a
//! single-threaded process, skips them. `libc::syscall` is not a cancellation point.

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
            match stream.try_io(Interest::READABLE, || recv(fd, unfilled)) {
                Ok(n) => {
                    // SAFETY: the kernel initialised the first `n` bytes of the unfilled part.
                    unsafe { buf.assume_init(n) };
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                // Readiness was stale: tokio cleared it, so the next poll registers the waker.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
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
            match stream.try_io(Interest::WRITABLE, || send(fd, data)) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                result => return Poll::Ready(result),
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
