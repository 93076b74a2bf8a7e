//! `tcp` (alias `tcp-lines`): the publisher. Subscribers connect (`telnet 127.0.0.1 8888`)
//! and get the latest snapshot at once, then every new one, each as one line ending in CRLF.
//!
//! A line is built once per tick and shared (`Bytes`) through a small broadcast queue: a
//! subscriber costs one task and one write per tick, and at most [`QUEUE`] queued lines. A
//! subscriber that falls behind loses its oldest lines; one that stops reading is dropped
//! after a timeout. Subscribers are read-only: what they send is read into a shared buffer and
//! thrown away, so their window never blocks and their EOF is seen.

use std::cell::RefCell;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use async_trait::async_trait;
use bytes::{BufMut, Bytes, BytesMut};
use nix::sys::socket::sockopt;
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{broadcast, watch};
use tokio::task::{JoinHandle, JoinSet};
use tracing::{debug, info, warn};

use crate::config::Config;
use crate::encode::Frame;
use crate::logging::RateLimit;
use crate::plugin::{Sink, SinkPlugin};

/// Lines a subscriber may have queued before it loses the oldest: its memory bound.
const QUEUE: usize = 8;
/// Pending connections the kernel holds, so a burst of 1000 connects needs no SYN retries
/// (the kernel caps it at `net.core.somaxconn`).
const BACKLOG: u32 = 4096;
/// A subscriber whose write has not completed for this long (or [`STALL_INTERVALS`]
/// intervals, if longer) has stopped reading and is disconnected.
const MIN_STALL: Duration = Duration::from_secs(5);
const STALL_INTERVALS: u32 = 3;
/// Pause after a failed accept (out of descriptors or memory), instead of spinning on it.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// Descriptors kept free for collection and the other sinks: a subscriber that would take
/// one of them is refused.
const FD_RESERVE: u64 = 32;
/// The kernel's send buffer per subscriber (it doubles this). Fixed rather than autotuned
/// (up to megabytes), so a subscriber that stops reading fills it within seconds and is
/// dropped, and costs the host bounded memory meanwhile.
const SEND_BUFFER: usize = 32 << 10;
/// What subscribers send is read into one buffer of this size and dropped. One buffer serves
/// them all (the runtime is single-threaded and a read completes within one poll), so it can
/// be large: a flooding client then costs one read per 64 KiB, not one per KiB.
const DISCARD_BUF: usize = 64 << 10;

thread_local! {
    static DISCARD: RefCell<Vec<u8>> = RefCell::new(vec![0; DISCARD_BUF]);
}
/// How long closing subscribers may take to send their queued lines at shutdown.
const CLOSE_GRACE: Duration = Duration::from_millis(300);

inventory::submit! {
    SinkPlugin {
        name: "tcp",
        aliases: &["tcp-lines"],
        description: "publisher: every TCP subscriber gets each snapshot as a CRLF line (telnet 127.0.0.1 8888)",
        preflight,
        build: |config| Box::pin(async move {
            preflight(&config).map_err(anyhow::Error::msg)?;
            Ok(Box::new(TcpSink::start(&config).await?) as Box<dyn Sink>)
        }),
    }
}

/// Whether this host has the `bind` address: a probe socket is bound to it on port 0 (any
/// free port, never listening) and closed at once. The configured port is not probed: the
/// configure hook runs `--check` while the daemon holds it. A probe that fails otherwise
/// (denied by confinement, out of descriptors) says nothing about the setting and passes.
fn preflight(config: &crate::config::Config) -> Result<(), String> {
    use nix::errno::Errno;
    use nix::sys::socket::{bind, socket, AddressFamily, SockFlag, SockType, SockaddrStorage};
    use std::net::SocketAddr;
    use std::os::fd::AsRawFd;
    let addr = SocketAddr::new(config.bind, 0);
    let family = match addr {
        SocketAddr::V4(_) => AddressFamily::Inet,
        SocketAddr::V6(_) => AddressFamily::Inet6,
    };
    let probe = socket(family, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)
        .and_then(|probe| bind(probe.as_raw_fd(), &SockaddrStorage::from(addr)));
    match probe {
        Err(Errno::EADDRNOTAVAIL) => Err(format!("bind: this host has no address {}", addr.ip())),
        Err(Errno::EAFNOSUPPORT) => Err(format!(
            "bind: this host has no IPv6, so no address {}",
            addr.ip()
        )),
        _ => Ok(()),
    }
}

struct TcpSink {
    bind: IpAddr,
    port: u16,
    hub: Arc<Hub>,
    stop: watch::Sender<bool>,
    acceptor: Option<JoinHandle<()>>,
}

impl TcpSink {
    /// Binds and starts accepting; subscribers are served from here on.
    async fn start(config: &Config) -> anyhow::Result<TcpSink> {
        let wanted = SocketAddr::new(config.bind, config.port);
        let listener = listen(wanted).with_context(|| format!("listening on {wanted}"))?;
        let local = listener.local_addr()?;
        info!(
            "tcp publisher listening on {local}; subscribe with: telnet {} {}",
            reachable(local.ip()),
            local.port()
        );
        let hub = Arc::new(Hub::new(config));
        let (stop, stopped) = watch::channel(false);
        let acceptor = tokio::spawn(accept_loop(listener, hub.clone(), stopped));
        Ok(TcpSink {
            bind: config.bind,
            port: config.port,
            hub,
            stop,
            acceptor: Some(acceptor),
        })
    }
}

#[async_trait]
impl Sink for TcpSink {
    async fn publish(&mut self, frame: &Frame) -> anyhow::Result<()> {
        let mut line = BytesMut::with_capacity(frame.json.len() + 2);
        line.put_slice(&frame.json);
        line.put_slice(b"\r\n");
        self.hub.publish(line.freeze());
        Ok(())
    }

    /// Same address: keep the listener and every subscriber, adopt the limits. Another
    /// address needs a new listener, which the pipeline starts before closing this one.
    async fn reconfigure(&mut self, config: &Config) -> anyhow::Result<bool> {
        if (config.bind, config.port) != (self.bind, self.port) {
            return Ok(false);
        }
        self.hub.adopt(config);
        Ok(true)
    }

    async fn close(&mut self) {
        self.hub.close();
        let _ = self.stop.send(true);
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.await;
        }
    }
}

/// A listening socket with SO_REUSEADDR (a restart finds the port free despite old
/// connections in TIME_WAIT) and a large backlog.
fn listen(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

/// The address to connect to for a listener bound to `ip` (loopback for a wildcard).
fn reachable(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) if v4.is_unspecified() => Ipv4Addr::LOCALHOST.into(),
        IpAddr::V6(v6) if v6.is_unspecified() => Ipv6Addr::LOCALHOST.into(),
        ip => ip,
    }
}

/// What the sink, the acceptor and every subscriber share.
struct Hub {
    feed: Mutex<Feed>,
    max_clients: AtomicUsize,
    clients: AtomicUsize,
    stall_ms: AtomicU64,
    stalls: Mutex<RateLimit>,
}

/// The latest line and the queue of new ones, changed together under one lock so that a
/// subscriber joining mid-tick gets each line exactly once.
struct Feed {
    latest: Option<Bytes>,
    lines: Option<broadcast::Sender<Bytes>>,
}

impl Hub {
    fn new(config: &Config) -> Hub {
        let hub = Hub {
            feed: Mutex::new(Feed {
                latest: None,
                lines: Some(broadcast::channel(QUEUE).0),
            }),
            max_clients: AtomicUsize::new(0),
            clients: AtomicUsize::new(0),
            stall_ms: AtomicU64::new(0),
            stalls: Mutex::new(RateLimit::default()),
        };
        hub.adopt(config);
        hub
    }

    fn adopt(&self, config: &Config) {
        let stall = MIN_STALL.max(config.interval * STALL_INTERVALS);
        self.stall_ms
            .store(stall.as_millis() as u64, Ordering::Relaxed);
        self.max_clients
            .store(config.max_clients, Ordering::Relaxed);
    }

    fn publish(&self, line: Bytes) {
        let mut feed = self.feed.lock().unwrap();
        if let Some(lines) = &feed.lines {
            // No subscribers is not an error.
            let _ = lines.send(line.clone());
        }
        feed.latest = Some(line);
    }

    /// The latest line and a receiver for the ones after it; `None` once closed.
    fn subscribe(&self) -> Option<(Option<Bytes>, broadcast::Receiver<Bytes>)> {
        let feed = self.feed.lock().unwrap();
        let rx = feed.lines.as_ref()?.subscribe();
        Some((feed.latest.clone(), rx))
    }

    /// Ends the feed: each subscriber sends what it has queued, then closes.
    fn close(&self) {
        self.feed.lock().unwrap().lines = None;
    }

    fn stall_timeout(&self) -> Duration {
        Duration::from_millis(self.stall_ms.load(Ordering::Relaxed))
    }
}

/// One of `max-clients` places, given back on drop. A counter rather than a semaphore
/// because a reload may lower the limit below the number already connected.
struct Slot(Arc<Hub>);

impl Slot {
    fn take(hub: &Arc<Hub>) -> Option<Slot> {
        let max = hub.max_clients.load(Ordering::Relaxed);
        hub.clients
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| Slot(hub.clone()))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.clients.fetch_sub(1, Ordering::AcqRel);
    }
}

async fn accept_loop(listener: TcpListener, hub: Arc<Hub>, mut stop: watch::Receiver<bool>) {
    let mut subscribers = JoinSet::new();
    let (mut failures, mut short_of_fds) = (RateLimit::default(), RateLimit::default());
    let fd_ceiling = crate::limits::open_files().saturating_sub(FD_RESERVE);
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            Some(_) = subscribers.join_next() => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) if stream.as_raw_fd() as u64 >= fd_ceiling => {
                    if let Some(held_back) = short_of_fds.allow(Instant::now()) {
                        warn!(held_back, "out of file descriptors: refused a subscriber to keep collecting");
                    }
                }
                Ok((stream, peer)) => match Slot::take(&hub) {
                    Some(slot) => {
                        subscribers.spawn(subscriber(stream, peer, hub.clone(), slot));
                    }
                    None => refuse(stream, hub.max_clients.load(Ordering::Relaxed)),
                },
                Err(e) if e.kind() == io::ErrorKind::ConnectionAborted => {}
                Err(e) => {
                    // EMFILE, ENFILE, ENOBUFS: the host is short of something; wait for it
                    // rather than spin, and keep everything else running.
                    if let Some(held_back) = failures.allow(Instant::now()) {
                        warn!(held_back, "accepting subscribers failed, backing off: {e}");
                    }
                    tokio::select! {
                        _ = stop.changed() => break,
                        _ = tokio::time::sleep(ACCEPT_BACKOFF) => {}
                    }
                }
            },
        }
    }
    drop(listener);
    let drained = async { while subscribers.join_next().await.is_some() {} };
    if tokio::time::timeout(CLOSE_GRACE, drained).await.is_err() {
        subscribers.shutdown().await;
    }
}

/// Tells a connection beyond `max-clients` why it is closed. Its socket buffer is empty, so
/// the one line fits without waiting.
fn refuse(stream: TcpStream, max_clients: usize) {
    let line = format!("{{\"error\":\"too many subscribers\",\"max_clients\":{max_clients}}}\r\n");
    let _ = stream.try_write(line.as_bytes());
    debug!("refused a subscriber: max-clients ({max_clients}) reached");
}

async fn subscriber(mut stream: TcpStream, peer: SocketAddr, hub: Arc<Hub>, _slot: Slot) {
    let Some((latest, lines)) = hub.subscribe() else {
        return;
    };
    let _ = stream.set_nodelay(true);
    let _ = nix::sys::socket::setsockopt(&stream, sockopt::SndBuf, &SEND_BUFFER);
    debug!(%peer, "subscriber connected");
    match serve(&mut stream, latest, lines, &hub).await {
        Err(e) if e.kind() == io::ErrorKind::TimedOut => {
            if let Some(held_back) = hub.stalls.lock().unwrap().allow(Instant::now()) {
                info!(%peer, held_back, "disconnected a subscriber that stopped reading");
            }
        }
        end => debug!(%peer, "subscriber gone: {end:?}"),
    }
}

/// Sends `latest`, then each new line, until the subscriber leaves or the feed ends. Reads
/// and drops whatever the subscriber sends, until it half-closes.
async fn serve(
    stream: &mut TcpStream,
    latest: Option<Bytes>,
    mut lines: broadcast::Receiver<Bytes>,
    hub: &Hub,
) -> io::Result<()> {
    let (reader, mut writer) = stream.split();
    if let Some(line) = latest {
        send(&mut writer, &line, hub.stall_timeout()).await?;
    }
    // EOF only means the subscriber is done sending (`nc -N`, a script that closes its write
    // side): it may still be reading. One that is gone for good makes the next write fail.
    let mut sending = true;
    loop {
        tokio::select! {
            ready = reader.readable(), if sending => {
                ready?;
                sending = discard(&reader)?;
            }
            line = lines.recv() => match line {
                Ok(line) => send(&mut writer, &line, hub.stall_timeout()).await?,
                Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => return writer.shutdown().await,
            },
        }
    }
}

/// Reads and drops what the subscriber has sent; `false` once it has half-closed.
fn discard(reader: &ReadHalf<'_>) -> io::Result<bool> {
    DISCARD.with_borrow_mut(|buf| match reader.try_read(buf) {
        Ok(0) => Ok(false),
        Ok(_) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(true),
        Err(e) => Err(e),
    })
}

/// Writes one whole line, failing with `TimedOut` if the subscriber takes longer than
/// `stall` to make room for it.
async fn send(writer: &mut WriteHalf<'_>, line: &[u8], stall: Duration) -> io::Result<()> {
    // The socket buffer nearly always has room: one syscall and no timer.
    let written = match writer.try_write(line) {
        Ok(n) => n,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
        Err(e) => return Err(e),
    };
    if written == line.len() {
        return Ok(());
    }
    tokio::time::timeout(stall, writer.write_all(&line[written..]))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "subscriber stopped reading"))?
}
