//! A snapd stand-in on unix sockets that answers like snapd 2.57 (`shared/snapd.md` §4.3):
//! HTTP/1.1 with keep-alive, Go's Host-header rule, snapd's envelopes and error shapes, the
//! conf `keys` semantics and `snapctl get -d`. Fault modes make it slow, mute or wrong on
//! purpose. Every request is recorded as received.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use serde_json::{json, Map, Value};

/// How the stand-in misbehaves, for every request while set.
#[derive(Clone, Debug, PartialEq)]
pub enum Mode {
    Normal,
    /// 401 login-required, as for a non-root caller of the conf endpoint.
    Denied,
    /// Answers normally after this long.
    Slow(Duration),
    /// Reads the request, then closes the connection without a word.
    Close,
    /// 500 with an HTML body.
    NonJson500,
    /// 202 async with a change id.
    Async,
    /// Normal answers with `warning-count`, `warning-timestamp` and `maintenance` added.
    Warnings,
    /// A 200 whose chunked body never ends, until the client hangs up.
    Endless,
}

/// A request as it arrived.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub socket: &'static str,
    pub method: String,
    pub target: String,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

struct State {
    /// Stored configuration per snap instance.
    configs: BTreeMap<String, Map<String, Value>>,
    /// Cookies and the instance each belongs to.
    cookies: Vec<(String, String)>,
    mode: Mode,
    requests: Vec<Recorded>,
    /// Bytes of an endless body written before the client hung up, once it has.
    endless_sent: Option<u64>,
}

/// The stand-in, serving `snapd.socket` and `snapd-snap.socket` in a directory.
pub struct FakeSnapd {
    pub snapd_socket: PathBuf,
    pub snap_socket: PathBuf,
    state: Arc<Mutex<State>>,
}

const SNAPD: &str = "snapd.socket";
const SNAP: &str = "snapd-snap.socket";
const POCKETSES: &str = "pocketses";

impl FakeSnapd {
    /// Serves in `dir` with `config` stored for pocketses and `cookie` known as its cookie.
    pub fn start(dir: &Path, config: Value, cookie: &str) -> FakeSnapd {
        let state = Arc::new(Mutex::new(State {
            configs: BTreeMap::new(),
            cookies: vec![(cookie.to_string(), POCKETSES.to_string())],
            mode: Mode::Normal,
            requests: Vec::new(),
            endless_sent: None,
        }));
        for name in [SNAPD, SNAP] {
            let listener = UnixListener::bind(dir.join(name)).expect("bind the stand-in socket");
            let state = state.clone();
            thread::spawn(move || {
                for stream in listener.incoming().flatten() {
                    let state = state.clone();
                    thread::spawn(move || serve(name, stream, &state));
                }
            });
        }
        let fake = FakeSnapd {
            snapd_socket: dir.join(SNAPD),
            snap_socket: dir.join(SNAP),
            state,
        };
        fake.set_config(config);
        fake
    }

    /// Replaces pocketses' stored configuration.
    pub fn set_config(&self, config: Value) {
        self.set_config_of(POCKETSES, config);
    }

    pub fn set_config_of(&self, instance: &str, config: Value) {
        let config = config.as_object().expect("config is an object").clone();
        self.state
            .lock()
            .unwrap()
            .configs
            .insert(instance.to_string(), config);
    }

    pub fn set_mode(&self, mode: Mode) {
        self.state.lock().unwrap().mode = mode;
    }

    /// How many bytes of an endless body the client took before it hung up (`None` while it
    /// is still reading, or before any endless answer).
    pub fn endless_bytes_sent(&self) -> Option<u64> {
        self.state.lock().unwrap().endless_sent
    }

    /// The requests received so far, in order.
    pub fn requests(&self) -> Vec<Recorded> {
        self.state.lock().unwrap().requests.clone()
    }
}

/// One connection: requests until the client closes or an answer says `Connection: close`.
fn serve(socket: &'static str, stream: UnixStream, state: &Mutex<State>) {
    let mut reader = BufReader::new(stream.try_clone().expect("clone the stream"));
    let mut out = stream;
    while let Some(request) = read_request(socket, &mut reader) {
        let mode = {
            let mut s = state.lock().unwrap();
            s.requests.push(request.clone());
            s.mode.clone()
        };
        let answer = match mode {
            Mode::Close => return,
            Mode::Endless => {
                let sent = endless(&mut out);
                state.lock().unwrap().endless_sent = Some(sent);
                return;
            }
            Mode::Slow(delay) => {
                thread::sleep(delay);
                respond(&request, state)
            }
            _ => respond(&request, state),
        };
        if out.write_all(&answer.bytes).is_err() || answer.close {
            return;
        }
    }
}

/// The start of a sync envelope, then 64 KiB chunks of `x` for as long as the client reads;
/// the bytes written.
fn endless(out: &mut UnixStream) -> u64 {
    let head =
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n";
    let start = r#"{"type":"sync","result":{"sources":""#;
    let chunk = |data: &[u8]| [format!("{:x}\r\n", data.len()).as_bytes(), data, b"\r\n"].concat();
    let filler = chunk(&[b'x'; 64 << 10]);
    if out.write_all(head.as_bytes()).is_err() || out.write_all(&chunk(start.as_bytes())).is_err() {
        return 0;
    }
    let mut sent = 0;
    while out.write_all(&filler).is_ok() {
        sent += filler.len() as u64;
    }
    sent
}

fn read_request(socket: &'static str, reader: &mut impl BufRead) -> Option<Recorded> {
    let mut line = String::new();
    reader.read_line(&mut line).ok().filter(|&n| n > 0)?;
    let mut parts = line.split_whitespace();
    let (method, target) = (parts.next()?.to_string(), parts.next()?.to_string());
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).ok().filter(|&n| n > 0)?;
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        let (name, value) = line.split_once(':')?;
        headers.push((name.trim().to_string(), value.trim().to_string()));
    }
    let length: usize = headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
        .map_or(0, |(_, v)| v.parse().unwrap_or(0));
    let mut body = vec![0; length];
    reader.read_exact(&mut body).ok()?;
    Some(Recorded {
        socket,
        method,
        target,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

struct Answer {
    bytes: Vec<u8>,
    close: bool,
}

fn respond(request: &Recorded, state: &Mutex<State>) -> Answer {
    // Go's net/http, before snapd sees the request.
    if request.header("host").is_none() {
        let body = "400 Bad Request: missing required Host header";
        return Answer {
            bytes: format!("HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\n\r\n{body}").into_bytes(),
            close: true,
        };
    }
    let s = state.lock().unwrap();
    let (status, envelope) = match s.mode {
        Mode::NonJson500 => {
            let body = "<html><body>internal error</body></html>";
            return html(500, body);
        }
        Mode::Async => (
            202,
            json!({"type": "async", "status-code": 202, "status": "Accepted", "result": null, "change": "7"}),
        ),
        Mode::Denied => error(401, "access denied", Some("login-required"), None),
        _ => route(request, &s),
    };
    let mut envelope = envelope;
    if s.mode == Mode::Warnings && envelope["type"] == "sync" {
        envelope["warning-count"] = json!(3);
        envelope["warning-timestamp"] = json!("2026-11-26T10:00:00.000000Z");
        envelope["maintenance"] =
            json!({"kind": "daemon-restart", "message": "daemon is restarting"});
    }
    let body = envelope.to_string();
    Answer {
        bytes: format!(
            "HTTP/1.1 {status} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            status_text(status),
            body.len()
        )
        .into_bytes(),
        close: false,
    }
}

fn html(status: u16, body: &str) -> Answer {
    Answer {
        bytes: format!(
            "HTTP/1.1 {status} {}\r\nContent-Type: text/html\r\nContent-Length: {}\r\n\r\n{body}",
            status_text(status),
            body.len()
        )
        .into_bytes(),
        close: false,
    }
}

fn route(request: &Recorded, s: &State) -> (u16, Value) {
    let (path, query) = request
        .target
        .split_once('?')
        .unwrap_or((&request.target, ""));
    let segments: Vec<&str> = path.split('/').collect();
    let method = request.method.as_str();
    match segments.as_slice() {
        ["", "v2", "snaps", name, "conf"] => match (method, request.socket) {
            ("GET", SNAPD) => get_conf(name, query, s.configs.get(*name).unwrap_or(&Map::new())),
            ("GET", _) => error(403, "access denied", Some("login-required"), None),
            _ => not_allowed(method),
        },
        ["", "v2", "snapctl"] => match (method, request.socket) {
            ("POST", SNAP) => snapctl(&request.body, s),
            ("POST", _) => error(403, "access denied", Some("login-required"), None),
            _ => not_allowed(method),
        },
        _ => error(404, "not found", None, None),
    }
}

/// `GET /v2/snaps/{name}/conf[?keys=...]` (`daemon/api_snap_conf.go`).
fn get_conf(name: &str, query: &str, config: &Map<String, Value>) -> (u16, Value) {
    let keys = query
        .split('&')
        .find_map(|pair| pair.strip_prefix("keys="))
        .unwrap_or("")
        .replace("%20", " ");
    let keys: Vec<&str> = keys
        .split(',')
        .map(str::trim)
        .filter(|k| !k.is_empty())
        .collect();
    if keys.is_empty() {
        return ok(Value::Object(config.clone()));
    }
    let mut result = Map::new();
    for key in keys {
        match lookup(name, key, config) {
            Ok(Some(value)) => drop(result.insert(key.to_string(), value.clone())),
            Ok(None) => {
                let message = format!("snap {name:?} has no {key:?} configuration option");
                let value = json!({"SnapName": name, "Key": key});
                return error(400, &message, Some("option-not-found"), Some(value));
            }
            Err(message) => return error(500, &message, None, None),
        }
    }
    ok(Value::Object(result))
}

/// Walks a dotted key; `Ok(None)` when it is not set, `Err` for an invalid name or a walk
/// through a non-map.
fn lookup<'a>(
    name: &str,
    key: &str,
    config: &'a Map<String, Value>,
) -> Result<Option<&'a Value>, String> {
    let mut node = config;
    let segments: Vec<&str> = key.split('.').collect();
    for (i, segment) in segments.iter().enumerate() {
        if !valid_segment(segment) {
            return Err(format!("invalid option name: {segment:?}"));
        }
        let Some(value) = node.get(*segment) else {
            return Ok(None);
        };
        if i + 1 == segments.len() {
            return Ok(Some(value));
        }
        node = value.as_object().ok_or_else(|| {
            let prefix = segments[..=i].join(".");
            format!("snap {name:?} option {prefix:?} is not a map")
        })?;
    }
    Ok(None)
}

/// `^(?:[a-z0-9]+-?)*[a-z](?:-?[a-z0-9])*$`: lower case, digits, single inner hyphens, a letter.
fn valid_segment(s: &str) -> bool {
    let chars_ok = s
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    chars_ok
        && s.bytes().any(|b| b.is_ascii_lowercase())
        && !s.starts_with('-')
        && !s.ends_with('-')
        && !s.contains("--")
}

/// `POST /v2/snapctl` with `get -d <keys>` (the only command pocketses sends).
fn snapctl(body: &str, s: &State) -> (u16, Value) {
    let request: Value = match serde_json::from_str(body) {
        Ok(v) => v,
        Err(e) => {
            return error(
                400,
                &format!("cannot decode request body into snapctl options: {e}"),
                None,
                None,
            )
        }
    };
    let args: Vec<&str> = request["args"]
        .as_array()
        .map_or(Vec::new(), |a| a.iter().filter_map(Value::as_str).collect());
    let Some(&command) = args.first() else {
        return error(400, "snapctl cannot run without args", None, None);
    };
    let cookie = request["context-id"].as_str().unwrap_or("");
    let Some((_, instance)) = s.cookies.iter().find(|(c, _)| c == cookie) else {
        let message = format!("snapctl: cannot invoke snapctl operation commands (here {command:?}) from outside of a snap");
        return error(400, &message, None, None);
    };
    let config = s.configs.get(instance).cloned().unwrap_or_default();
    if command != "get" || args.get(1) != Some(&"-d") {
        return error(
            400,
            &format!("the stand-in only knows get -d, not {args:?}"),
            None,
            None,
        );
    }
    // `get -d`: the keys that are set, tab-indented, newline-terminated; missing keys left out.
    let mut present = Map::new();
    for key in &args[2..] {
        if let Ok(Some(value)) = lookup(instance, key, &config) {
            present.insert(key.to_string(), value.clone());
        }
    }
    let mut stdout = Vec::new();
    let formatter = serde_json::ser::PrettyFormatter::with_indent(b"\t");
    let mut serializer = serde_json::Serializer::with_formatter(&mut stdout, formatter);
    serde::Serialize::serialize(&sorted(&Value::Object(present)), &mut serializer).unwrap();
    stdout.push(b'\n');
    ok(json!({"stdout": String::from_utf8(stdout).unwrap(), "stderr": ""}))
}

fn ok(result: Value) -> (u16, Value) {
    (
        200,
        json!({"type": "sync", "status-code": 200, "status": "OK", "result": sorted(&result)}),
    )
}

/// Go marshals maps with their keys sorted, at every level; serde_json keeps insertion order
/// when its `preserve_order` feature is on, so sort explicitly.
fn sorted(v: &Value) -> Value {
    match v {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            Value::Object(
                keys.into_iter()
                    .map(|k| (k.clone(), sorted(&map[k])))
                    .collect(),
            )
        }
        Value::Array(items) => Value::Array(items.iter().map(sorted).collect()),
        other => other.clone(),
    }
}

fn error(status: u16, message: &str, kind: Option<&str>, value: Option<Value>) -> (u16, Value) {
    let mut result = json!({ "message": message });
    if let Some(kind) = kind {
        result["kind"] = json!(kind);
    }
    if let Some(value) = value {
        result["value"] = value;
    }
    let envelope = json!({"type": "error", "status-code": status, "status": status_text(status), "result": result});
    (status, envelope)
}

fn not_allowed(method: &str) -> (u16, Value) {
    error(405, &format!("method {method:?} not allowed"), None, None)
}

/// Go's `http.StatusText`.
fn status_text(status: u16) -> &'static str {
    match status {
        200 => "OK",
        202 => "Accepted",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        _ => "Internal Server Error",
    }
}

/// A raw HTTP/1.1 exchange with a snapd-like server (the stand-in or the real one), for
/// checking the contract itself: the status line, headers and body as text.
pub fn raw_exchange(socket: &Path, request: &str) -> std::io::Result<String> {
    let mut stream = UnixStream::connect(socket)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.write_all(request.as_bytes())?;
    let mut reader = BufReader::new(stream);
    let mut head = String::new();
    let mut length = None;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            length = v.trim().parse::<usize>().ok();
        }
        head.push_str(&line);
        if line == "\r\n" {
            break;
        }
    }
    let mut body = Vec::new();
    match length {
        Some(n) => {
            body.resize(n, 0);
            reader.read_exact(&mut body)?;
        }
        None => drop(reader.read_to_end(&mut body)?),
    }
    Ok(head + &String::from_utf8_lossy(&body))
}
