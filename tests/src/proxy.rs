//! `FaultProxy`: a TCP proxy on 127.0.0.1 that fails a link on demand.
//!
//! A test points a client (the relay's broker URL, a replication connection)
//! at the proxy instead of the server, then:
//! - [`FaultProxy::cut`] resets every open connection (RST, so the client's
//!   next read or write fails at once) and refuses new ones (the listening
//!   socket is closed);
//! - [`FaultProxy::stall`] stops forwarding in both directions without
//!   closing anything, like a dead network path (only heartbeats or TCP
//!   timeouts can notice);
//! - [`FaultProxy::delay`] forwards each chunk after a delay;
//! - [`FaultProxy::restore`] forwards again and accepts new connections.
//!
//! The proxy runs on its own thread and runtime, so it keeps working whatever
//! the test's runtime is doing, and stops when dropped.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::KitError;

/// What the proxy does with traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyMode {
    /// Forward everything.
    Pass,
    /// Reset open connections and refuse new ones.
    Cut,
    /// Hold every byte; close nothing.
    Stall,
    /// Forward each chunk after this delay.
    Delay(Duration),
}

#[derive(Debug, Default)]
struct Counters {
    accepted: AtomicUsize,
    open: AtomicUsize,
    /// The generation of the last mode change the listener applied.
    applied: AtomicUsize,
}

/// A requested mode and the number of the request, so that the requester
/// can wait until the listener has applied it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Wanted {
    mode: ProxyMode,
    generation: usize,
}

/// A fault-injecting TCP proxy; see the module documentation.
#[derive(Debug)]
pub struct FaultProxy {
    addr: SocketAddr,
    upstream: SocketAddr,
    mode: watch::Sender<Wanted>,
    counters: Arc<Counters>,
    /// Dropping it stops the proxy's runtime.
    _shutdown: tokio::sync::oneshot::Sender<()>,
}

impl FaultProxy {
    /// Starts a proxy on a free port of 127.0.0.1 forwarding to `upstream`.
    pub fn start(upstream: SocketAddr) -> Result<FaultProxy, KitError> {
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0")
            .map_err(|e| KitError::io("binding the proxy on", "127.0.0.1:0", e))?;
        let addr = std_listener
            .local_addr()
            .map_err(|e| KitError::io("reading the address of", "the proxy", e))?;
        std_listener
            .set_nonblocking(true)
            .map_err(|e| KitError::io("configuring", "the proxy listener", e))?;
        let (mode, mode_rx) = watch::channel(Wanted {
            mode: ProxyMode::Pass,
            generation: 0,
        });
        let counters = Arc::new(Counters::default());
        let (shutdown, shutdown_rx) = tokio::sync::oneshot::channel();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| KitError::io("starting a runtime for", "the proxy", e))?;
        let task_counters = counters.clone();
        std::thread::Builder::new()
            .name(format!("fault-proxy-{}", addr.port()))
            .spawn(move || {
                runtime.block_on(async move {
                    let listener = match TcpListener::from_std(std_listener) {
                        Ok(l) => l,
                        Err(_) => return,
                    };
                    tokio::select! {
                        _ = shutdown_rx => {}
                        _ = serve(listener, addr, upstream, mode_rx, task_counters) => {}
                    }
                });
                // Dropping the runtime drops every connection task and so
                // closes every socket.
            })
            .map_err(|e| KitError::io("spawning a thread for", "the proxy", e))?;
        Ok(FaultProxy {
            addr,
            upstream,
            mode,
            counters,
            _shutdown: shutdown,
        })
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The port clients connect to.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Where the proxy forwards to.
    pub fn upstream(&self) -> SocketAddr {
        self.upstream
    }

    /// Resets every open connection and refuses new ones until
    /// [`restore`](Self::restore).
    pub fn cut(&self) {
        self.set(ProxyMode::Cut);
    }

    /// Stops forwarding in both directions without closing anything.
    pub fn stall(&self) {
        self.set(ProxyMode::Stall);
    }

    /// Forwards each chunk after `delay`.
    pub fn delay(&self, delay: Duration) {
        self.set(ProxyMode::Delay(delay));
    }

    /// Forwards everything again and accepts new connections.
    pub fn restore(&self) {
        self.set(ProxyMode::Pass);
    }

    /// The current mode.
    pub fn mode(&self) -> ProxyMode {
        self.mode.borrow().mode
    }

    /// Connections accepted since the proxy started.
    pub fn accepted(&self) -> usize {
        self.counters.accepted.load(Ordering::SeqCst)
    }

    /// Connections open right now.
    pub fn open_connections(&self) -> usize {
        self.counters.open.load(Ordering::SeqCst)
    }

    /// Changes the mode and returns once the listener has applied it, so
    /// that right after `cut()` a new connection is refused (not accepted and
    /// then reset).
    fn set(&self, mode: ProxyMode) {
        let mut generation = 0;
        self.mode.send_modify(|wanted| {
            wanted.generation += 1;
            wanted.mode = mode;
            generation = wanted.generation;
        });
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        while self.counters.applied.load(Ordering::SeqCst) < generation
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

/// Accepts while not cut; while cut, the listening socket is closed so that
/// connection attempts are refused, and re-bound on restore.
async fn serve(
    listener: TcpListener,
    addr: SocketAddr,
    upstream: SocketAddr,
    mut mode: watch::Receiver<Wanted>,
    counters: Arc<Counters>,
) {
    let mut listener = Some(listener);
    loop {
        let current = *mode.borrow_and_update();
        if current.mode == ProxyMode::Cut {
            listener = None;
        } else if listener.is_none() {
            match rebind(addr) {
                Some(l) => listener = Some(l),
                None => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            }
        }
        counters
            .applied
            .fetch_max(current.generation, Ordering::SeqCst);
        match &listener {
            None => {
                if mode.changed().await.is_err() {
                    return;
                }
            }
            Some(l) => {
                tokio::select! {
                    changed = mode.changed() => if changed.is_err() { return },
                    accepted = l.accept() => {
                        if let Ok((client, _)) = accepted {
                            counters.accepted.fetch_add(1, Ordering::SeqCst);
                            tokio::spawn(link(client, upstream, mode.clone(), counters.clone()));
                        }
                    }
                }
            }
        }
    }
}

fn rebind(addr: SocketAddr) -> Option<TcpListener> {
    let socket = tokio::net::TcpSocket::new_v4().ok()?;
    socket.set_reuseaddr(true).ok()?;
    socket.bind(addr).ok()?;
    socket.listen(128).ok()
}

/// Decrements the open-connection count however the link ends.
struct OpenGuard(Arc<Counters>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn link(
    client: TcpStream,
    upstream: SocketAddr,
    mode: watch::Receiver<Wanted>,
    counters: Arc<Counters>,
) {
    counters.open.fetch_add(1, Ordering::SeqCst);
    let _guard = OpenGuard(counters);
    let server = match TcpStream::connect(upstream).await {
        Ok(s) => s,
        Err(_) => {
            reset(&client);
            return;
        }
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    // When either direction ends (EOF, error or cut), the link ends.
    let cut = tokio::select! {
        cut = pump(client_read, server_write, mode.clone()) => cut,
        cut = pump(server_read, client_write, mode.clone()) => cut,
    };
    // Both halves of both sockets are dropped here: with SO_LINGER 0 set by
    // `pump` on a cut, the peers see a reset rather than an orderly close.
    let _ = cut;
}

/// Forwards one direction; returns true if the link was cut.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut mode: watch::Receiver<Wanted>,
) -> bool {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        // Do not even read while stalled: let TCP backpressure build.
        match wait_while_stalled(&mut mode).await {
            Some(ProxyMode::Cut) | None => return cut(&from, &to),
            _ => {}
        }
        let n = tokio::select! {
            changed = mode.changed() => {
                if changed.is_err() || mode.borrow().mode == ProxyMode::Cut {
                    return cut(&from, &to);
                }
                continue;
            }
            read = from.read(&mut buf) => match read {
                Ok(0) | Err(_) => {
                    let _ = to.shutdown().await;
                    return false;
                }
                Ok(n) => n,
            }
        };
        // Data read before a stall is held, not forwarded.
        match wait_while_stalled(&mut mode).await {
            Some(ProxyMode::Cut) | None => return cut(&from, &to),
            Some(ProxyMode::Delay(d)) => tokio::time::sleep(d).await,
            _ => {}
        }
        let chunk = buf.get(..n).unwrap_or_default();
        if to.write_all(chunk).await.is_err() {
            return false;
        }
    }
}

/// Waits until the mode is not Stall; returns it (None if the proxy is gone).
async fn wait_while_stalled(mode: &mut watch::Receiver<Wanted>) -> Option<ProxyMode> {
    loop {
        let current = mode.borrow_and_update().mode;
        if current != ProxyMode::Stall {
            return Some(current);
        }
        mode.changed().await.ok()?;
    }
}

fn cut(from: &tokio::net::tcp::OwnedReadHalf, to: &tokio::net::tcp::OwnedWriteHalf) -> bool {
    reset(from.as_ref());
    reset(to.as_ref());
    true
}

/// Makes the close of this socket a reset (SO_LINGER 0), so that the peer's
/// next read or write fails at once instead of seeing a clean end of stream.
fn reset(stream: &TcpStream) {
    let _ = socket2::SockRef::from(stream).set_linger(Some(Duration::ZERO));
}
