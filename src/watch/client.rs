//! The subscription: a thread that connects to the publisher, reads its lines and hands
//! them to the view, and reconnects with a capped backoff when the publisher goes away.
//! It never writes to the socket: subscribers are read-only.

use std::io::{BufRead, BufReader, Read};
use std::net::{IpAddr, SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// The publisher's port when the address names none (the agent's default).
pub const DEFAULT_PORT: u16 = 8888;
/// Retry delays double from the first to the cap while the publisher stays away.
const FIRST_RETRY: Duration = Duration::from_millis(100);
const MAX_RETRY: Duration = Duration::from_secs(2);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// A longer line is not a snapshot of ours: the connection is dropped rather than grown.
const MAX_LINE: u64 = 8 << 20;

/// What the subscription reports to the view.
#[derive(Debug)]
pub enum Event {
    Connected,
    /// One line, its CRLF removed.
    Line(String),
    /// The connection failed or ended, and why; a retry follows.
    Disconnected(String),
}

/// `host:port`, `[::1]:8888`, or a bare IP address or host name (port 8888).
pub fn with_port(addr: &str) -> String {
    if addr.parse::<SocketAddr>().is_ok() {
        return addr.to_string();
    }
    if let Ok(ip) = addr.parse::<IpAddr>() {
        return SocketAddr::new(ip, DEFAULT_PORT).to_string();
    }
    if addr.contains(':') {
        addr.to_string()
    } else {
        format!("{addr}:{DEFAULT_PORT}")
    }
}

/// The running subscription; dropping it closes the connection and ends the thread.
pub struct Client {
    stop: Arc<AtomicBool>,
    stream: Arc<Mutex<Option<TcpStream>>>,
    thread: Option<JoinHandle<()>>,
}

impl Client {
    pub fn start(addr: &str, events: Sender<Event>) -> Client {
        let stop = Arc::new(AtomicBool::new(false));
        let stream = Arc::new(Mutex::new(None));
        let subscription = Subscription {
            addr: addr.to_string(),
            events,
            stop: stop.clone(),
            stream: stream.clone(),
        };
        let thread = std::thread::spawn(move || subscription.run());
        Client {
            stop,
            stream,
            thread: Some(thread),
        }
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Under the lock: the thread either stored its stream already (shut down here, which
        // ends its read) or will see `stop` before it stores one.
        if let Some(stream) = self.stream.lock().unwrap().take() {
            let _ = stream.shutdown(std::net::Shutdown::Both);
        }
        // Not joined: a connect to an unreachable host may take CONNECT_TIMEOUT, and `q`
        // must not wait for it. The thread ends when that connect returns.
        if let Some(thread) = self.thread.take() {
            thread.thread().unpark();
        }
    }
}

/// An I/O error without its " (os error 111)": the title bar is short.
fn plain(e: &std::io::Error) -> String {
    let text = e.to_string();
    match text.find(" (os error ") {
        Some(end) => text[..end].to_string(),
        None => text,
    }
}

struct Subscription {
    addr: String,
    events: Sender<Event>,
    stop: Arc<AtomicBool>,
    stream: Arc<Mutex<Option<TcpStream>>>,
}

impl Subscription {
    fn run(self) {
        let mut retry = FIRST_RETRY;
        while !self.stop.load(Ordering::SeqCst) {
            let why = match self.connect() {
                Ok(None) => return,
                Ok(Some(stream)) => {
                    if self.events.send(Event::Connected).is_err() {
                        return;
                    }
                    let (why, snapshots) = self.read(stream);
                    // A publisher that answers and hangs up at once (full, or not ours) is
                    // retried as slowly as one that is down.
                    if snapshots {
                        retry = FIRST_RETRY;
                    }
                    why
                }
                Err(e) => plain(&e),
            };
            if self.stop.load(Ordering::SeqCst)
                || self.events.send(Event::Disconnected(why)).is_err()
            {
                return;
            }
            std::thread::park_timeout(retry);
            retry = (retry * 2).min(MAX_RETRY);
        }
    }

    /// A connection to the first address of `addr` that answers; `None` when stopped.
    fn connect(&self) -> std::io::Result<Option<TcpStream>> {
        let mut last = None;
        for addr in self.addr.to_socket_addrs()? {
            match TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT) {
                Ok(stream) => {
                    let mut slot = self.stream.lock().unwrap();
                    if self.stop.load(Ordering::SeqCst) {
                        return Ok(None);
                    }
                    *slot = Some(stream.try_clone()?);
                    return Ok(Some(stream));
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| std::io::Error::other("the name has no address")))
    }

    /// Passes on lines until the connection ends: why it ended, and whether a snapshot came.
    fn read(&self, stream: TcpStream) -> (String, bool) {
        let mut reader = BufReader::new(stream);
        let mut snapshots = false;
        let mut line = Vec::new();
        loop {
            line.clear();
            match reader.by_ref().take(MAX_LINE).read_until(b'\n', &mut line) {
                Ok(0) => return ("the publisher closed the connection".into(), snapshots),
                Ok(_) if line.last() != Some(&b'\n') && line.len() as u64 == MAX_LINE => {
                    return (format!("a line longer than {MAX_LINE} bytes"), snapshots)
                }
                Ok(_) => {}
                Err(e) => return (plain(&e), snapshots),
            }
            let text = String::from_utf8_lossy(&line);
            let text = text.trim_end_matches(['\r', '\n']);
            snapshots |= text.starts_with("{\"timestamp\"");
            if self.events.send(Event::Line(text.to_string())).is_err() {
                return (String::new(), snapshots);
            }
        }
    }
}
