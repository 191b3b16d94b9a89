//! Accepting connections under limits, for both ports: at most
//! `max_connections` open, a TLS handshake and then the protocol's opening
//! bytes within `first_byte_timeout` (a client that connects and says
//! nothing, or stops mid-preface, is dropped), and TLS when configured.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::time::Sleep;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;

use crate::edge::tls::{PeerIdentities, ReloadableTls, identities};
use crate::refusals;

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_connections: usize,
    /// Connections open at once from one IP address, so that no single
    /// client (with or without a key) can take every slot.
    pub max_connections_per_ip: usize,
    /// For the TLS handshake, and then for the opening bytes.
    pub first_byte_timeout: Duration,
    /// How many bytes must arrive within `first_byte_timeout`: 24 on the
    /// gRPC port (the whole HTTP/2 client preface), 1 on the webhook port
    /// (hyper then times the headers itself).
    pub opening_bytes: usize,
    /// For an HTTP/1 request's headers (the webhook port).
    pub header_read_timeout: Duration,
    /// For a webhook's body, once its headers are in.
    pub body_read_timeout: Duration,
    /// When set (the gRPC port with API keys), a connection must carry an
    /// authenticated call within this, or it is closed: a client with no
    /// key cannot sit on connection slots.
    pub authenticate_within: Option<Duration>,
}

impl Limits {
    pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;
    pub const DEFAULT_MAX_CONNECTIONS_PER_IP: usize = 512;
    pub const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(10);
    /// "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".
    pub const HTTP2_PREFACE_BYTES: usize = 24;
    pub const DEFAULT_AUTHENTICATE_WITHIN: Duration = Duration::from_secs(60);
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: Self::DEFAULT_MAX_CONNECTIONS,
            max_connections_per_ip: Self::DEFAULT_MAX_CONNECTIONS_PER_IP,
            first_byte_timeout: Self::DEFAULT_READ_TIMEOUT,
            opening_bytes: 1,
            header_read_timeout: Self::DEFAULT_READ_TIMEOUT,
            body_read_timeout: Self::DEFAULT_READ_TIMEOUT,
            authenticate_within: None,
        }
    }
}

/// Accepts on `listener` until the returned stream is dropped. Past the
/// connection limit, new connections wait in the kernel's backlog.
pub fn incoming(
    listener: TcpListener,
    tls: Option<Arc<ReloadableTls>>,
    limits: Limits,
) -> ReceiverStream<io::Result<Conn>> {
    let (tx, rx) = mpsc::channel(64);
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let per_ip = Arc::new(PerIp::default());
    tokio::spawn(async move {
        loop {
            let permit = tokio::select! {
                p = slots.clone().acquire_owned() => p.expect("never closed"),
                () = tx.closed() => return,
            };
            let (stream, remote) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors and the like: pause, not spin.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                () = tx.closed() => return,
            };
            let Some(permit) = per_ip.admit(remote.ip(), limits.max_connections_per_ip, permit)
            else {
                refusals::log(
                    || tracing::warn!(ip = %remote.ip(), "refused: too many connections from one address"),
                );
                drop(stream);
                continue;
            };
            let _ = stream.set_nodelay(true);
            let Some(tls) = tls.clone() else {
                let conn = Conn::new(Io::Plain(stream), permit, remote, limits, None);
                if tx.send(Ok(conn)).await.is_err() {
                    return;
                }
                continue;
            };
            // Handshakes run beside the accept loop: one slow client
            // cannot hold up the others.
            let tx = tx.clone();
            tokio::spawn(async move {
                let acceptor = tls.acceptor();
                let handshake =
                    tokio::time::timeout(limits.first_byte_timeout, acceptor.accept(stream));
                match handshake.await {
                    Ok(Ok(stream)) => {
                        let ids = stream
                            .get_ref()
                            .1
                            .peer_certificates()
                            .and_then(|c| c.first())
                            .map(identities)
                            .unwrap_or_default();
                        let conn =
                            Conn::new(Io::Tls(Box::new(stream)), permit, remote, limits, Some(ids));
                        let _ = tx.send(Ok(conn)).await;
                    }
                    Ok(Err(e)) => refusals::log(
                        || tracing::warn!(%remote, error = %e, "refused: TLS handshake failed"),
                    ),
                    Err(_) => refusals::note("TLS handshake not finished in time"),
                }
            });
        }
    });
    ReceiverStream::new(rx)
}

enum Io {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

/// One accepted connection: holds its slot until dropped.
pub struct Conn {
    io: Io,
    info: ConnInfo,
    /// Until the opening bytes have arrived.
    first_byte: Option<Pin<Box<Sleep>>>,
    /// Opening bytes still to come.
    awaited: usize,
    /// Until a call on this connection presents a valid key.
    unauthenticated: Option<Pin<Box<Sleep>>>,
    _slot: Slot,
}

/// A connection's place: one of `max_connections`, and one of its
/// address's `max_connections_per_ip`. Given back on drop.
pub struct Slot {
    _global: OwnedSemaphorePermit,
    ip: std::net::IpAddr,
    per_ip: Arc<PerIp>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.per_ip.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = open.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// Open connections per address.
#[derive(Default)]
pub struct PerIp(std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>);

impl PerIp {
    fn admit(
        self: &Arc<Self>,
        ip: std::net::IpAddr,
        max: usize,
        global: OwnedSemaphorePermit,
    ) -> Option<Slot> {
        let mut open = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let n = open.entry(ip).or_insert(0);
        if *n >= max.max(1) {
            return None;
        }
        *n += 1;
        Some(Slot {
            _global: global,
            ip,
            per_ip: self.clone(),
        })
    }
}

/// What every request of a connection carries: the peer and, over mutual
/// TLS, what its certificate proves.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub remote: SocketAddr,
    pub identities: PeerIdentities,
    /// Set by the first call on the connection that presents a valid key.
    pub authenticated: Arc<std::sync::atomic::AtomicBool>,
}

impl Conn {
    fn new(
        io: Io,
        slot: Slot,
        remote: SocketAddr,
        limits: Limits,
        ids: Option<Vec<String>>,
    ) -> Self {
        Self {
            io,
            info: ConnInfo {
                remote,
                identities: PeerIdentities(ids.unwrap_or_default().into()),
                authenticated: Arc::default(),
            },
            first_byte: Some(Box::pin(tokio::time::sleep(limits.first_byte_timeout))),
            unauthenticated: limits
                .authenticate_within
                .map(|d| Box::pin(tokio::time::sleep(d))),
            awaited: limits.opening_bytes.max(1),
            _slot: slot,
        }
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let read = match &mut this.io {
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        };
        if let Some(timer) = &mut this.first_byte {
            match read {
                Poll::Ready(Ok(())) if buf.filled().len() > before => {
                    this.awaited = this.awaited.saturating_sub(buf.filled().len() - before);
                    if this.awaited == 0 {
                        this.first_byte = None;
                    }
                }
                Poll::Pending => {
                    ready!(timer.as_mut().poll(cx));
                    refusals::note("a connection sent nothing in time");
                    return Poll::Ready(Err(io::ErrorKind::TimedOut.into()));
                }
                _ => {}
            }
        }
        if let Some(timer) = &mut this.unauthenticated {
            if this
                .info
                .authenticated
                .load(std::sync::atomic::Ordering::Relaxed)
            {
                this.unauthenticated = None;
            } else if read.is_pending() && timer.as_mut().poll(cx).is_ready() {
                refusals::note("a connection made no authenticated call in time");
                return Poll::Ready(Err(io::ErrorKind::TimedOut.into()));
            }
        }
        read
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.io {
            Io::Plain(s) => s.is_write_vectored(),
            Io::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

impl tonic::transport::server::Connected for Conn {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> ConnInfo {
        self.info.clone()
    }
}
