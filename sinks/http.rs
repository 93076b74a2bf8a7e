//! `http` (alias `prometheus`): each host a Prometheus target and a live page.
//!
//! Endpoints, all read-only (GET and HEAD; anything else is 405 with `Allow`):
//! `/metrics` (Prometheus text 0.0.4 from the typed samples), `/snapshot` (the JSON line the
//! TCP subscribers get, without CRLF), `/events` (Server-Sent Events, one `data:` per
//! snapshot), `/healthz`, and `/` (a live page from `/events`, embedded, no other host).
//!
//! Everything a client gets is encoded once per snapshot, in [`HttpSink::publish`] on the
//! pipeline's task, into shared bytes (`/metrics` gzipped once too, by the first scrape that
//! asks): a scrape costs a header parse and a write, whatever the number of scrapers.
//!
//! Hostile clients cost only themselves: a request head must arrive within
//! [`HEADER_TIMEOUT`] and fit in [`HEADER_LIMIT`] (a kept-alive connection idle that long is
//! closed by the same timer), a client that stops reading is cut once a write has waited the
//! TCP sink's stall timeout, an event stream holds only the latest snapshot, and connections
//! beyond `http.max-connections` get a 503 and are closed at once.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use async_trait::async_trait;
use bytes::Bytes;
use http_body_util::{Either, Full};
use hyper::body::{Body, Frame as BodyFrame};
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use nix::sys::socket::sockopt;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Sleep;
use tracing::{info, warn};

use crate::encode::{Frame, Sections};
use crate::model::{Family, Sample};
use crate::net;
use crate::plugin::{Sink, SinkPlugin};
use crate::settings::{Declared, DefaultValue, Kind, PluginConfig, Setting};

/// How long a client may take to send a request head, and how long a kept-alive connection
/// may sit idle before its next one (hyper runs one timer for both).
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// Bytes of request head hyper buffers before it answers 431: its smallest allowed buffer.
const HEADER_LIMIT: usize = 8 << 10;
/// Header lines a request may have.
const MAX_HEADERS: usize = 32;
/// As for TCP subscribers: a write waiting this long (or [`STALL_INTERVALS`] intervals, if
/// longer) means the client stopped reading, and it is disconnected.
const MIN_STALL: Duration = Duration::from_secs(5);
const STALL_INTERVALS: u32 = 3;
/// `/healthz` fails once the latest snapshot is older than this many intervals (and at
/// least [`MIN_HEALTHY`], so a 10 ms interval on a loaded host does not flap).
const HEALTHY_INTERVALS: u32 = 3;
const MIN_HEALTHY: Duration = Duration::from_secs(1);
/// The kernel's send buffer per connection, as for TCP subscribers: small and fixed, so a
/// client that stops reading fills it (and is dropped) within seconds.
const SEND_BUFFER: usize = 32 << 10;
/// Pause after a failed accept (out of descriptors), instead of spinning on it.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// What a connection beyond the limit gets, in one non-blocking write.
const BUSY: &[u8] =
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";
const METRICS_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The live page, embedded: no build step, nothing fetched from another host.
const PAGE: [(&str, &str, &str); 3] = [
    (
        "/",
        "text/html; charset=utf-8",
        include_str!("http/index.html"),
    ),
    (
        "/app.js",
        "text/javascript; charset=utf-8",
        include_str!("http/app.js"),
    ),
    (
        "/style.css",
        "text/css; charset=utf-8",
        include_str!("http/style.css"),
    ),
];

inventory::submit! {
    SinkPlugin {
        name: "http",
        aliases: &["prometheus"],
        description: "HTTP: Prometheus /metrics, /snapshot, /events (SSE), /healthz and a live page at http://127.0.0.1:9888/",
        on_by_default: None,
        settings: Declared::typed::<HttpSettings>(&[
            Setting {
                key: "http.port",
                kind: Kind::Port,
                default: DefaultValue::Text("9888"),
                help: "TCP port of the HTTP sink; 0 picks a free one",
            },
            Setting {
                key: "http.bind",
                kind: Kind::Address,
                default: DefaultValue::Text("127.0.0.1"),
                help: "Address the HTTP sink listens on",
            },
            Setting {
                key: "http.names",
                kind: Kind::Choice(&["pocketses", "node"]),
                default: DefaultValue::Text("pocketses"),
                help: "Metric names on /metrics: pocketses_*, or node_exporter's where it has the family",
            },
            Setting {
                key: "http.max-connections",
                kind: Kind::Whole { min: 1, max: 1_000_000 },
                default: DefaultValue::Text("256"),
                help: "Most HTTP connections at once; more get 503 and are closed",
            },
        ]),
        preflight: |config| {
            let settings = config.settings::<HttpSettings>()?;
            net::check_address(settings.bind).map_err(|e| format!("http.bind: {e}"))
        },
        build: |config| {
            let config = config.clone();
            Box::pin(async move {
                let wanted = Wanted::of(&config)?;
                Ok(Box::new(HttpSink::start(wanted).await?) as Box<dyn Sink>)
            })
        },
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
enum Names {
    Pocketses,
    Node,
}

#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct HttpSettings {
    port: u16,
    bind: IpAddr,
    names: Names,
    max_connections: usize,
}

struct Wanted {
    settings: HttpSettings,
    interval: Duration,
}

impl Wanted {
    fn of(config: &PluginConfig) -> anyhow::Result<Wanted> {
        Ok(Wanted {
            settings: config.settings().map_err(anyhow::Error::msg)?,
            interval: config.interval,
        })
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::new(self.settings.bind, self.settings.port)
    }
}

/// One snapshot as every endpoint serves it.
struct Encoded {
    json: Bytes,
    /// `data: <json>\n\n`.
    event: Bytes,
    metrics: Bytes,
    /// Made by the first scrape that asks for gzip, then served to every other: the
    /// compression costs about as much as the rest of the encoding, and many snapshots
    /// (a short interval, no scraper) are never scraped.
    metrics_gzip: OnceLock<Bytes>,
    /// When it was published, for `/healthz`.
    at: Instant,
}

/// The latest snapshot, `None` before the first.
type Latest = Option<Arc<Encoded>>;

/// What the sink, the acceptor and every connection share.
struct Shared {
    latest: watch::Sender<Latest>,
    /// One deflate state for every snapshot's gzip.
    gzip: Mutex<Gzip>,
    max_connections: AtomicUsize,
    stall_ms: AtomicU64,
    healthy_ms: AtomicU64,
}

impl Shared {
    fn adopt(&self, wanted: &Wanted) {
        let ms = |d: Duration| d.as_millis() as u64;
        let stall = MIN_STALL.max(wanted.interval * STALL_INTERVALS);
        let healthy = MIN_HEALTHY.max(wanted.interval * HEALTHY_INTERVALS);
        self.stall_ms.store(ms(stall), Ordering::Relaxed);
        self.healthy_ms.store(ms(healthy), Ordering::Relaxed);
        self.max_connections
            .store(wanted.settings.max_connections, Ordering::Relaxed);
    }
}

struct HttpSink {
    addr: SocketAddr,
    names: Names,
    shared: Arc<Shared>,
    acceptor: Acceptor,
    /// The latest frame, to encode `/metrics` again at once when `http.names` changes.
    last: Option<Frame>,
}

impl HttpSink {
    async fn start(wanted: Wanted) -> anyhow::Result<HttpSink> {
        let shared = Arc::new(Shared {
            latest: watch::channel(None).0,
            gzip: Mutex::new(Gzip::new()),
            max_connections: AtomicUsize::new(0),
            stall_ms: AtomicU64::new(0),
            healthy_ms: AtomicU64::new(0),
        });
        shared.adopt(&wanted);
        let listener = listen(wanted.addr())?;
        Ok(HttpSink {
            addr: wanted.addr(),
            names: wanted.settings.names,
            acceptor: Acceptor::start(listener, shared.clone())?,
            shared,
            last: None,
        })
    }

    fn encode(&self, frame: &Frame) {
        let metrics = Bytes::from(metrics(&frame.sections, frame.timestamp, self.names));
        let mut event = Vec::with_capacity(frame.json.len() + 8);
        event.extend_from_slice(b"data: ");
        event.extend_from_slice(&frame.json);
        event.extend_from_slice(b"\n\n");
        self.shared.latest.send_replace(Some(Arc::new(Encoded {
            json: frame.json.clone(),
            event: event.into(),
            metrics,
            metrics_gzip: OnceLock::new(),
            at: Instant::now(),
        })));
    }
}

#[async_trait]
impl Sink for HttpSink {
    async fn publish(&mut self, frame: &Frame) -> anyhow::Result<()> {
        self.encode(frame);
        self.last = Some(frame.clone());
        Ok(())
    }

    /// Adopts new limits and names in place; another address is listened on before the old
    /// one is closed (its connections with it), and on failure the old one keeps serving.
    async fn reconfigure(&mut self, config: &PluginConfig) -> anyhow::Result<bool> {
        let wanted = Wanted::of(config)?;
        if wanted.addr() != self.addr {
            let listener = match listen(wanted.addr()) {
                Ok(listener) => listener,
                // Our own listener holds the port (127.0.0.1:P → 0.0.0.0:P): close it first,
                // and listen on the old address again if the new one still fails.
                Err(e) if self.addr.port() == wanted.addr().port() => {
                    self.acceptor.stop().await;
                    match listen(wanted.addr()) {
                        Ok(listener) => listener,
                        Err(_) => {
                            self.acceptor =
                                Acceptor::start(listen(self.addr)?, self.shared.clone())?;
                            return Err(e);
                        }
                    }
                }
                Err(e) => return Err(e),
            };
            let mut old = std::mem::replace(
                &mut self.acceptor,
                Acceptor::start(listener, self.shared.clone())?,
            );
            old.stop().await;
            self.addr = wanted.addr();
        }
        self.shared.adopt(&wanted);
        if wanted.settings.names != self.names {
            self.names = wanted.settings.names;
            if let Some(frame) = &self.last {
                self.encode(frame);
            }
        }
        Ok(true)
    }

    async fn close(&mut self) {
        self.acceptor.stop().await;
    }
}

/// gzip (RFC 1952) with one deflate state kept from snapshot to snapshot: a fresh one per
/// snapshot (`GzEncoder::new`) allocates and zeroes its tables, which cost more than
/// compressing a few KiB of text.
struct Gzip(flate2::Compress);

impl Gzip {
    fn new() -> Gzip {
        Gzip(flate2::Compress::new(flate2::Compression::fast(), false))
    }

    fn compress(&mut self, data: &[u8]) -> Vec<u8> {
        // Magic, deflate, no flags, no time, no extra flags, unknown OS.
        const HEADER: [u8; 10] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 255];
        let mut out = Vec::with_capacity(HEADER.len() + data.len() / 3 + 64);
        out.extend_from_slice(&HEADER);
        self.0.reset();
        loop {
            let done = self.0.total_in() as usize;
            let status = self
                .0
                .compress_vec(&data[done..], &mut out, flate2::FlushCompress::Finish)
                .expect("deflating into a Vec cannot fail");
            if status == flate2::Status::StreamEnd {
                break;
            }
            // Out of room: compress_vec writes only into spare capacity.
            out.reserve(data.len() / 2 + 64);
        }
        let mut crc = flate2::Crc::new();
        crc.update(data);
        out.extend_from_slice(&crc.sum().to_le_bytes());
        out.extend_from_slice(&(data.len() as u32).to_le_bytes());
        out
    }
}

/// The task accepting connections on one listener; its connections end with it.
struct Acceptor {
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

impl Acceptor {
    fn start(listener: TcpListener, shared: Arc<Shared>) -> anyhow::Result<Acceptor> {
        let local = listener.local_addr()?;
        info!("http sink serving http://{local}/ (/metrics, /snapshot, /events, /healthz)");
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(accept_loop(listener, shared, stopped));
        Ok(Acceptor {
            stop,
            task: Some(task),
        })
    }

    async fn stop(&mut self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            Some(_) = connections.join_next() => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    // Connections that have ended give their place back first.
                    while connections.try_join_next().is_some() {}
                    if connections.len() >= shared.max_connections.load(Ordering::Relaxed) {
                        // One try, never a wait: a full buffer just gets the close.
                        let _ = stream.try_write(BUSY);
                        continue;
                    }
                    connections.spawn(serve(stream, shared.clone()));
                }
                Err(e) => {
                    warn!("http sink: accept failed: {e}");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            },
        }
    }
    connections.shutdown().await;
}

async fn serve(stream: TcpStream, shared: Arc<Shared>) {
    let _ = nix::sys::socket::setsockopt(&stream, sockopt::SndBuf, &SEND_BUFFER);
    let _ = stream.set_nodelay(true);
    let stall = Duration::from_millis(shared.stall_ms.load(Ordering::Relaxed));
    let io = TokioIo::new(Stalling {
        stream,
        stall,
        waiting: None,
    });
    let service = hyper::service::service_fn(move |request| {
        let response = respond(&request, &shared);
        async move { Ok::<_, Infallible>(response) }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .max_buf_size(HEADER_LIMIT)
        .max_headers(MAX_HEADERS)
        .serve_connection(io, service)
        .await;
}

type Reply = Response<Either<Full<Bytes>, Events>>;

fn respond(request: &Request<hyper::body::Incoming>, shared: &Shared) -> Reply {
    if !matches!(*request.method(), Method::GET | Method::HEAD) {
        let mut response = plain(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n");
        let allow = HeaderValue::from_static("GET, HEAD");
        response.headers_mut().insert(header::ALLOW, allow);
        return response;
    }
    let path = request.uri().path();
    if let Some((_, kind, body)) = PAGE.iter().find(|(p, _, _)| *p == path) {
        let mut response = full(StatusCode::OK, kind, Bytes::from_static(body.as_bytes()));
        let csp = "default-src 'self'; connect-src 'self'; img-src 'self' data:";
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(csp),
        );
        headers.insert(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        );
        return response;
    }
    let latest = shared.latest.borrow().clone();
    let mut response = match (path, latest) {
        ("/events", _) => {
            let mut response = Response::new(Either::Right(Events::new(shared.latest.subscribe())));
            let kind = HeaderValue::from_static("text/event-stream");
            response.headers_mut().insert(header::CONTENT_TYPE, kind);
            response
        }
        ("/healthz", latest) => {
            let within = Duration::from_millis(shared.healthy_ms.load(Ordering::Relaxed));
            match latest {
                Some(latest) if latest.at.elapsed() <= within => plain(StatusCode::OK, "ok\n"),
                Some(_) => plain(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "stale: no recent snapshot\n",
                ),
                None => plain(StatusCode::SERVICE_UNAVAILABLE, "no snapshot yet\n"),
            }
        }
        ("/metrics" | "/snapshot", None) => {
            plain(StatusCode::SERVICE_UNAVAILABLE, "no snapshot yet\n")
        }
        ("/snapshot", Some(latest)) => {
            full(StatusCode::OK, "application/json", latest.json.clone())
        }
        ("/metrics", Some(latest)) => {
            let gzip = accepts_gzip(request);
            let body = match gzip {
                true => latest.metrics_gzip.get_or_init(|| {
                    let mut gzip = shared.gzip.lock().unwrap_or_else(|p| p.into_inner());
                    Bytes::from(gzip.compress(&latest.metrics))
                }),
                false => &latest.metrics,
            };
            let mut response = full(StatusCode::OK, METRICS_TYPE, body.clone());
            let headers = response.headers_mut();
            headers.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
            if gzip {
                headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
            }
            response
        }
        _ => return plain(StatusCode::NOT_FOUND, "not found\n"),
    };
    let no_store = HeaderValue::from_static("no-store");
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, no_store);
    response
}

fn full(status: StatusCode, kind: &'static str, body: Bytes) -> Reply {
    let mut response = Response::new(Either::Left(Full::new(body)));
    *response.status_mut() = status;
    let kind = HeaderValue::from_static(kind);
    response.headers_mut().insert(header::CONTENT_TYPE, kind);
    response
}

fn plain(status: StatusCode, text: &'static str) -> Reply {
    full(
        status,
        "text/plain; charset=utf-8",
        Bytes::from_static(text.as_bytes()),
    )
}

/// Whether `Accept-Encoding` lists gzip (or `*`) without `q=0`.
fn accepts_gzip<B>(request: &Request<B>) -> bool {
    let Some(Ok(accept)) = request
        .headers()
        .get(header::ACCEPT_ENCODING)
        .map(|v| v.to_str())
    else {
        return false;
    };
    accept.split(',').any(|coding| {
        let mut parts = coding.split(';').map(str::trim);
        let name = parts.next().unwrap_or("");
        let refused = parts.any(|p| {
            p.strip_prefix("q=")
                .and_then(|q| q.parse::<f32>().ok())
                .is_some_and(|q| q == 0.0)
        });
        (name.eq_ignore_ascii_case("gzip") || name == "*") && !refused
    })
}

/// The `/events` body: the latest snapshot at once, then each new one. It holds at most one
/// event: a client slower than the snapshots skips to the latest (the TCP sink's
/// loss of the oldest, with a queue of one).
struct Events {
    next: Pin<Box<dyn Future<Output = NextEvent> + Send>>,
}

/// An event and the receiver for the one after it; `None` once the sink has closed.
type NextEvent = Option<(Bytes, EventsRx)>;

type EventsRx = watch::Receiver<Latest>;

impl Events {
    fn new(mut rx: EventsRx) -> Events {
        // The current one counts as new, so it is sent at once.
        rx.mark_changed();
        Events {
            next: Box::pin(next_event(rx)),
        }
    }
}

async fn next_event(mut rx: EventsRx) -> NextEvent {
    loop {
        rx.changed().await.ok()?;
        let event = rx.borrow_and_update().as_ref().map(|e| e.event.clone());
        if let Some(event) = event {
            return Some((event, rx));
        }
    }
}

impl Body for Events {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<BodyFrame<Bytes>, Infallible>>> {
        match self.next.as_mut().poll(cx) {
            Poll::Pending => Poll::Pending,
            // The sink has closed.
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Ready(Some((event, rx))) => {
                self.next = Box::pin(next_event(rx));
                Poll::Ready(Some(Ok(BodyFrame::data(event))))
            }
        }
    }
}

/// A connection whose writes fail once one has waited `stall`: a client that stopped
/// reading is dropped, as a TCP subscriber is.
struct Stalling {
    stream: TcpStream,
    stall: Duration,
    /// Armed when a write found the socket full, disarmed when one goes through.
    waiting: Option<Pin<Box<Sleep>>>,
}

impl Stalling {
    fn track<T>(&mut self, cx: &mut Context<'_>, poll: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        if poll.is_ready() {
            self.waiting = None;
            return poll;
        }
        let stall = self.stall;
        let waiting = self
            .waiting
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(stall)));
        match waiting.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::ErrorKind::TimedOut.into())),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl AsyncRead for Stalling {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Stalling {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.stream).poll_write(cx, buf);
        self.track(cx, poll)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        self.track(cx, poll)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// The Prometheus text (format 0.0.4) of a snapshot's samples: HELP and TYPE once per
/// family, each series once, then `pocketses_last_snapshot_timestamp_seconds`. No sample
/// has a timestamp: Prometheus stamps the scrape, and staleness shows in that last gauge.
fn metrics(sections: &Sections, timestamp: SystemTime, names: Names) -> String {
    let mut out = String::with_capacity(8 << 10);
    let mut written: Vec<(&str, &str)> = Vec::new();
    let mut series = std::collections::HashSet::new();
    let mut samples = Vec::new();
    for (source, section) in sections.iter() {
        samples.clear();
        let listed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            section.samples(&mut samples)
        }));
        if listed.is_err() {
            warn!(
                source,
                "http sink: its samples panicked; left out of /metrics"
            );
            samples.clear();
        }
        let mut current = None;
        for sample in &samples {
            let name = family_name(sample.family, names);
            if current != Some(name) {
                // A family met again (from another section) would split its group, which
                // Prometheus refuses: its later samples are left out.
                if written.contains(&name) {
                    continue;
                }
                written.push(name);
                current = Some(name);
                header(
                    &mut out,
                    name,
                    sample.family.help,
                    sample.family.kind.as_str(),
                );
            }
            let start = out.len();
            write_series(&mut out, name, sample);
            let key = out[start..out.rfind(' ').unwrap_or(out.len())].to_string();
            if !series.insert(key) {
                out.truncate(start);
            }
        }
    }
    // Milliseconds, cut as the JSON's timestamp is, so the two read the same.
    let millis = timestamp
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis();
    let stamp = ("pocketses_", "last_snapshot_timestamp_seconds");
    header(
        &mut out,
        stamp,
        "When the snapshot these values come from was taken, in seconds since the Unix epoch.",
        "gauge",
    );
    out.push_str(stamp.0);
    out.push_str(stamp.1);
    out.push(' ');
    push_value(&mut out, millis as f64 / 1000.0);
    out.push('\n');
    out
}

/// The family's name in `names` mode, as (prefix, name): `pocketses_<name>`, or
/// node_exporter's where it has one.
fn family_name(family: &'static Family, names: Names) -> (&'static str, &'static str) {
    match (names, family.node_name) {
        (Names::Node, Some(node)) => ("", node),
        _ => ("pocketses_", family.name),
    }
}

fn header(out: &mut String, (prefix, name): (&str, &str), help: &str, kind: &str) {
    out.push_str("# HELP ");
    out.push_str(prefix);
    out.push_str(name);
    out.push(' ');
    for c in help.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out.push_str("\n# TYPE ");
    out.push_str(prefix);
    out.push_str(name);
    out.push(' ');
    out.push_str(kind);
    out.push('\n');
}

fn write_series(out: &mut String, (prefix, name): (&str, &str), sample: &Sample<'_>) {
    out.push_str(prefix);
    out.push_str(name);
    let mut labels = sample.labels().peekable();
    if labels.peek().is_some() {
        out.push('{');
        for (i, (label, value)) in labels.enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(label);
            out.push_str("=\"");
            for c in value.chars() {
                match c {
                    '\\' => out.push_str("\\\\"),
                    '"' => out.push_str("\\\""),
                    '\n' => out.push_str("\\n"),
                    c => out.push(c),
                }
            }
            out.push('"');
        }
        out.push('}');
    }
    out.push(' ');
    push_value(out, sample.value);
    out.push('\n');
}

/// A value as Prometheus reads it: Rust's shortest round-trip form, `NaN`, `+Inf`, `-Inf`.
fn push_value(out: &mut String, value: f64) {
    use std::fmt::Write as _;
    match value {
        v if v.is_nan() => out.push_str("NaN"),
        v if v == f64::INFINITY => out.push_str("+Inf"),
        v if v == f64::NEG_INFINITY => out.push_str("-Inf"),
        v => write!(out, "{v}").expect("writing to a String cannot fail"),
    }
}

/// A listener on `addr`, the error naming it.
fn listen(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    net::listen(addr).with_context(|| format!("http sink: listening on {addr}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Format, Kind as SampleKind, Section, Unit};
    use std::borrow::Cow;

    static PLAIN: Family = Family {
        name: "test_bytes_total",
        help: "A \\ help\nwith a newline.",
        kind: SampleKind::Counter,
        unit: Unit::Bytes,
        labels: &["device"],
        node_name: Some("node_test_bytes_total"),
    };

    static ONLY_OURS: Family = Family {
        name: "test_ratio",
        help: "Ours only.",
        kind: SampleKind::Gauge,
        unit: Unit::Ratio,
        labels: &[],
        node_name: None,
    };

    struct Devices;

    impl Section for Devices {
        fn view(&self, _: Format) -> Box<dyn erased_serde::Serialize + '_> {
            Box::new(())
        }

        fn samples<'a>(&'a self, out: &mut Vec<Sample<'a>>) {
            for (device, value) in [("eth0", 1.0), ("we\"ird\\\n", 2.5), ("eth0", 3.0)] {
                out.push(Sample::new(&PLAIN, [Cow::Borrowed(device)], value));
            }
            out.push(Sample::new(&ONLY_OURS, [], f64::INFINITY));
        }
    }

    fn render(names: Names) -> String {
        let sections: Sections = Arc::from(vec![
            ("devices", Box::new(Devices) as Box<dyn Section>),
            ("again", Box::new(Devices) as Box<dyn Section>),
        ]);
        metrics(&sections, UNIX_EPOCH + Duration::from_millis(1_500), names)
    }

    #[test]
    fn families_once_series_once_labels_escaped_no_timestamps() {
        assert_eq!(
            render(Names::Pocketses),
            "# HELP pocketses_test_bytes_total A \\\\ help\\nwith a newline.\n\
             # TYPE pocketses_test_bytes_total counter\n\
             pocketses_test_bytes_total{device=\"eth0\"} 1\n\
             pocketses_test_bytes_total{device=\"we\\\"ird\\\\\\n\"} 2.5\n\
             # HELP pocketses_test_ratio Ours only.\n\
             # TYPE pocketses_test_ratio gauge\n\
             pocketses_test_ratio +Inf\n\
             # HELP pocketses_last_snapshot_timestamp_seconds When the snapshot these values come from was taken, in seconds since the Unix epoch.\n\
             # TYPE pocketses_last_snapshot_timestamp_seconds gauge\n\
             pocketses_last_snapshot_timestamp_seconds 1.5\n"
        );
    }

    #[test]
    fn node_names_where_node_exporter_has_the_family() {
        let text = render(Names::Node);
        assert!(
            text.contains("\nnode_test_bytes_total{device=\"eth0\"} 1\n"),
            "{text}"
        );
        assert!(text.contains("\npocketses_test_ratio +Inf\n"), "{text}");
    }

    #[test]
    fn gzip_reads_back_and_its_state_is_reused() {
        use std::io::Read;
        // Text, nothing, and noise that does not compress (so the output outgrows its
        // first allocation).
        let mut seed = 1u32;
        let noise: Vec<u8> = (0..100_000)
            .map(|_| {
                seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                (seed >> 24) as u8
            })
            .collect();
        let mut gzip = Gzip::new();
        for data in [render(Names::Pocketses).into_bytes(), Vec::new(), noise] {
            let mut back = Vec::new();
            flate2::read::GzDecoder::new(&gzip.compress(&data)[..])
                .read_to_end(&mut back)
                .unwrap();
            assert_eq!(back, data);
        }
    }

    #[test]
    fn gzip_is_asked_for_by_name_or_star_and_refused_by_q0() {
        let asks = |value: &str| {
            let request = Request::builder()
                .header(header::ACCEPT_ENCODING, value)
                .body(())
                .unwrap();
            accepts_gzip(&request)
        };
        assert!(asks("gzip"));
        assert!(asks("deflate, GZIP;q=0.5"));
        assert!(asks("*"));
        assert!(!asks("gzip;q=0"));
        assert!(!asks("identity"));
        assert!(!accepts_gzip(&Request::new(())));
    }
}
