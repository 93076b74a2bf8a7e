//! `tcp` (alias `tcp-lines`): the publisher. Subscribers connect (`telnet 127.0.0.1 8888`)
//! and get the latest snapshot at once, then every new one, each as one line ending in CRLF.
//!
//! A line is built once per tick and shared (`Bytes`) through a small broadcast queue: a
//! subscriber costs one task and one write per tick, and at most [`QUEUE`] queued lines. A
//! subscriber that falls behind loses its oldest lines; one that stops reading is dropped
//! after a timeout. Subscribers are read-only: what they send is read into a shared buffer and
//! thrown away, so their window never blocks and their EOF is seen.

use std::cell::RefCell;
use std::fs::File;
use std::future::poll_fn;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::{Duration, Instant};

use anyhow::Context;
use async_trait::async_trait;
use bytes::{BufMut, Bytes, BytesMut};
use nix::sys::socket::sockopt;
use tokio::io::{AsyncWriteExt, Interest};
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{broadcast, watch};
use tokio::task::{JoinHandle, JoinSet};
use tracing::{debug, info, warn};

use crate::encode::Frame;
use crate::logging::RateLimit;
use crate::net::{self, listen};
use crate::plugin::{Sink, SinkPlugin};
use crate::settings::{Declared, DefaultValue, Kind, PluginConfig, Setting};
use crate::stats;

/// Lines a subscriber may have queued before it loses the oldest: its memory bound.
const QUEUE: usize = 8;
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
        on_by_default: Some(1),
        // The original tool's keys, without a prefix, so that what users set keeps working.
        settings: Declared::typed::<TcpSettings>(&[
            Setting {
                key: "port",
                kind: Kind::Port,
                default: DefaultValue::Text("8888"),
                help: "TCP port for subscribers; 0 picks a free one",
            },
            Setting {
                key: "bind",
                kind: Kind::Address,
                default: DefaultValue::Text("127.0.0.1"),
                help: "Address the TCP publisher listens on",
            },
            Setting {
                key: "max-clients",
                kind: Kind::Whole { min: 1, max: 1_000_000 },
                default: DefaultValue::Text("1024"),
                help: "Most TCP subscribers at once",
            },
        ]),
        preflight: |config| preflight(&Wanted::of(config)?.settings),
        build: |config| {
            let config = config.clone();
            Box::pin(async move {
                let wanted = Wanted::of(&config).map_err(anyhow::Error::msg)?;
                preflight(&wanted.settings).map_err(anyhow::Error::msg)?;
                Ok(Box::new(TcpSink::start(&wanted).await?) as Box<dyn Sink>)
            })
        },
    }
}

#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct TcpSettings {
    port: u16,
    bind: IpAddr,
    max_clients: usize,
}

/// What the sink runs with: its settings, and the interval, which sets how long a
/// subscriber may stall.
struct Wanted {
    settings: TcpSettings,
    interval: Duration,
}

impl Wanted {
    fn of(config: &PluginConfig) -> Result<Wanted, String> {
        Ok(Wanted {
            settings: config.settings()?,
            interval: config.interval,
        })
    }
}

/// Whether this host has the `bind` address: a probe socket is bound to it on port 0 (any
/// free port, never listening) and closed at once. The configured port is not probed: the
/// configure hook runs `--check` while the daemon holds it. A probe that fails otherwise
/// (denied by confinement, out of descriptors) says nothing about the setting and passes.
fn preflight(settings: &TcpSettings) -> Result<(), String> {
    net::check_address(settings.bind).map_err(|e| format!("bind: {e}"))
}

struct TcpSink {
    bind: IpAddr,
    port: u16,
    hub: Arc<Hub>,
    /// `None` only after a failed move left no listener (see [`TcpSink::move_to`]).
    acceptor: Option<Acceptor>,
}

impl TcpSink {
    /// Binds and starts accepting; subscribers are served from here on.
    async fn start(config: &Wanted) -> anyhow::Result<TcpSink> {
        let wanted = SocketAddr::new(config.settings.bind, config.settings.port);
        let listener = listen(wanted).with_context(|| format!("listening on {wanted}"))?;
        let hub = Arc::new(Hub::new(config, None));
        stats::sink("tcp").counts_subscribers();
        Ok(TcpSink {
            bind: config.settings.bind,
            port: config.settings.port,
            acceptor: Some(Acceptor::start(listener, hub.clone(), JoinSet::new())?),
            hub,
        })
    }

    /// Listens on `wanted` instead of the current address. The old address's subscribers are
    /// closed: they connected to an address that may no longer admit them (narrowing `bind`
    /// from 0.0.0.0 to 127.0.0.1 must cut remote subscribers), and they reconnect at once.
    ///
    /// Binding first keeps the old listener on any error. But on the same port our own
    /// listener is usually what is in the way (127.0.0.1:P → 0.0.0.0:P), so then the old
    /// listener is closed, the new one bound, and if that still fails the old address is
    /// bound again with its subscribers kept: the sink runs as before the reload.
    async fn move_to(&mut self, config: &Wanted) -> anyhow::Result<()> {
        let wanted = SocketAddr::new(config.settings.bind, config.settings.port);
        let listening =
            |e: io::Error| anyhow::Error::new(e).context(format!("listening on {wanted}"));
        let listener = match (listen(wanted), self.acceptor.take()) {
            (Ok(listener), old) => {
                if let Some(old) = old {
                    self.retire(old.stop().await, config);
                }
                listener
            }
            (Err(e), Some(old))
                if e.kind() == io::ErrorKind::AddrInUse && old.local.port() == wanted.port() =>
            {
                let was = old.local;
                let subscribers = old.stop().await;
                match listen(wanted) {
                    Ok(listener) => {
                        self.retire(subscribers, config);
                        listener
                    }
                    Err(e) => {
                        let restored = listen(was).and_then(|listener| {
                            Acceptor::start(listener, self.hub.clone(), subscribers)
                        });
                        return Err(match restored {
                            Ok(acceptor) => {
                                self.acceptor = Some(acceptor);
                                listening(e)
                            }
                            Err(again) => listening(e).context(format!(
                                "and listening on {was} again failed ({again}): not accepting subscribers"
                            )),
                        });
                    }
                }
            }
            (Err(e), old) => {
                self.acceptor = old;
                return Err(listening(e));
            }
        };
        self.acceptor = Some(Acceptor::start(listener, self.hub.clone(), JoinSet::new())?);
        Ok(())
    }

    /// Ends the current subscribers (they send what they have queued, then close) and gives
    /// new ones a fresh hub that starts from the latest line.
    fn retire(&mut self, subscribers: JoinSet<()>, config: &Wanted) {
        let latest = self.hub.feed.lock().unwrap().latest.clone();
        let old = std::mem::replace(&mut self.hub, Arc::new(Hub::new(config, latest)));
        old.close();
        tokio::spawn(drain(subscribers));
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

    /// Adopts the limits in place. The same address keeps the listener and every
    /// subscriber; another address is moved to here, never by a second sink, whose listener
    /// could not bind while this one holds the port.
    async fn reconfigure(&mut self, config: &PluginConfig) -> anyhow::Result<bool> {
        let config = &Wanted::of(config).map_err(anyhow::Error::msg)?;
        if (config.settings.bind, config.settings.port) != (self.bind, self.port)
            || self.acceptor.is_none()
        {
            self.move_to(config).await?;
            (self.bind, self.port) = (config.settings.bind, config.settings.port);
        }
        self.hub.adopt(config);
        Ok(true)
    }

    async fn close(&mut self) {
        self.hub.close();
        if let Some(acceptor) = self.acceptor.take() {
            drain(acceptor.stop().await).await;
        }
    }
}

/// The task accepting subscribers on one listener, and the subscribers it serves.
struct Acceptor {
    local: SocketAddr,
    stop: watch::Sender<bool>,
    task: JoinHandle<JoinSet<()>>,
}

impl Acceptor {
    /// Starts accepting on `listener`, serving `subscribers` already connected.
    fn start(
        listener: TcpListener,
        hub: Arc<Hub>,
        subscribers: JoinSet<()>,
    ) -> io::Result<Acceptor> {
        let local = listener.local_addr()?;
        info!(
            "tcp publisher listening on {local}; subscribe with: telnet {} {}",
            reachable(local.ip()),
            local.port()
        );
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(accept_loop(listener, hub, stopped, subscribers));
        Ok(Acceptor { local, stop, task })
    }

    /// Closes the listener; the subscribers keep running, returned to the caller.
    async fn stop(self) -> JoinSet<()> {
        let _ = self.stop.send(true);
        self.task.await.unwrap_or_default()
    }
}

/// Waits a short grace for `subscribers` to send what they have queued, then ends them.
async fn drain(mut subscribers: JoinSet<()>) {
    let drained = async { while subscribers.join_next().await.is_some() {} };
    if tokio::time::timeout(CLOSE_GRACE, drained).await.is_err() {
        subscribers.shutdown().await;
    }
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
    /// A hub whose subscribers start from `latest`.
    fn new(config: &Wanted, latest: Option<Bytes>) -> Hub {
        let hub = Hub {
            feed: Mutex::new(Feed {
                latest,
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

    fn adopt(&self, config: &Wanted) {
        let stall = MIN_STALL.max(config.interval * STALL_INTERVALS);
        self.stall_ms
            .store(stall.as_millis() as u64, Ordering::Relaxed);
        self.max_clients
            .store(config.settings.max_clients, Ordering::Relaxed);
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
            .ok()?;
        // Counted for the agent source across hubs: a rebind's old hub keeps its subscribers.
        stats::sink("tcp").subscriber(true);
        Some(Slot(hub.clone()))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.clients.fetch_sub(1, Ordering::AcqRel);
        stats::sink("tcp").subscriber(false);
    }
}

async fn accept_loop(
    listener: TcpListener,
    hub: Arc<Hub>,
    mut stop: watch::Receiver<bool>,
    mut subscribers: JoinSet<()>,
) -> JoinSet<()> {
    let (mut failures, mut short_of_fds) = (RateLimit::default(), RateLimit::default());
    let mut out_of_fds = |stream: TcpStream| {
        refuse(stream, OUT_OF_FDS);
        if let Some(held_back) = short_of_fds.allow(Instant::now()) {
            warn!(
                held_back,
                "out of file descriptors: refused a subscriber to keep collecting"
            );
        }
    };
    let fd_ceiling = crate::limits::open_files().saturating_sub(FD_RESERVE);
    // One descriptor kept open for the moment none is left: closing it lets the connection
    // waiting in the backlog be accepted, told why and closed, instead of waiting unanswered.
    let mut spare = File::open("/dev/null").ok();
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            Some(_) = subscribers.join_next() => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) if stream.as_raw_fd() as u64 >= fd_ceiling => out_of_fds(stream),
                Ok((stream, peer)) => match Slot::take(&hub) {
                    Some(slot) => {
                        subscribers.spawn(subscriber(stream, peer, hub.clone(), slot));
                    }
                    None => {
                        let max_clients = hub.max_clients.load(Ordering::Relaxed);
                        refuse(stream, &too_many(max_clients));
                        debug!("refused a subscriber: max-clients ({max_clients}) reached");
                    }
                },
                Err(e) if e.kind() == io::ErrorKind::ConnectionAborted => {}
                Err(e) => {
                    if is_out_of_fds(&e) {
                        if let Some(room) = spare.take() {
                            drop(room);
                            let told = match try_accept(&listener).await {
                                Some(Ok((stream, _))) => {
                                    out_of_fds(stream); // closed before the spare reopens
                                    true
                                }
                                _ => false,
                            };
                            spare = File::open("/dev/null").ok();
                            if told {
                                continue;
                            }
                        }
                    }
                    // No spare (or someone else took the descriptor it freed), ENOBUFS: the
                    // host is short of something; wait for it rather than spin, and keep
                    // everything else running.
                    if let Some(held_back) = failures.allow(Instant::now()) {
                        warn!(held_back, "accepting subscribers failed, backing off: {e}");
                    }
                    tokio::select! {
                        _ = stop.changed() => break,
                        _ = tokio::time::sleep(ACCEPT_BACKOFF) => {}
                    }
                    spare = spare.or_else(|| File::open("/dev/null").ok());
                }
            },
        }
    }
    subscribers
}

fn is_out_of_fds(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error().map(nix::errno::Errno::from_raw),
        Some(nix::errno::Errno::EMFILE | nix::errno::Errno::ENFILE)
    )
}

/// A connection from the backlog if one is waiting, without waiting for one.
async fn try_accept(listener: &TcpListener) -> Option<io::Result<(TcpStream, SocketAddr)>> {
    poll_fn(|cx| match listener.poll_accept(cx) {
        Poll::Ready(accepted) => Poll::Ready(Some(accepted)),
        Poll::Pending => Poll::Ready(None),
    })
    .await
}

const OUT_OF_FDS: &str = "{\"error\":\"out of file descriptors\"}\r\n";

fn too_many(max_clients: usize) -> String {
    format!("{{\"error\":\"too many subscribers\",\"max_clients\":{max_clients}}}\r\n")
}

/// Tells a refused connection why it is closed. Its socket buffer is empty, so the one line
/// fits without waiting.
fn refuse(stream: TcpStream, line: &str) {
    let _ = stream.try_write(line.as_bytes());
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
    // side): it may still be reading. One that closed entirely answers our data with RST,
    // which Linux reports as a socket error (EPIPE in CLOSE_WAIT): watching for it frees the
    // place at once, as a connect-and-close probe has been sent the latest line at accept.
    // A peer that read all it was sent and then closed cleanly shows nothing until our next
    // write: on the wire it is the same as one that half-closed and is still reading (both
    // ACK a keepalive probe, which carries no data; only data draws the RST).
    let mut sending = true;
    loop {
        tokio::select! {
            ready = reader.readable(), if sending => {
                ready?;
                sending = discard(&reader)?;
            }
            ready = reader.ready(Interest::ERROR), if !sending => {
                ready?;
                let gone = reader.as_ref().take_error()?;
                return Err(gone.unwrap_or_else(|| io::ErrorKind::BrokenPipe.into()));
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
