//! `mqtt`: pushes every snapshot to an MQTT broker (Mosquitto, EMQX, HiveMQ), for hosts that
//! cannot be scraped (behind NAT, on flaky links), and announces them to Home Assistant.
//!
//! Topics under `mqtt.topic` (default `pocketses/<hostname>`):
//! - `<topic>/snapshot`: the snapshot JSON in the configured format, retained (`mqtt.retain`),
//!   so a new subscriber sees the latest at once;
//! - `<topic>/status`: `online` after every connect, `offline` before a clean disconnect and
//!   as the Last Will when the agent dies; QoS 1, retained.
//!
//! The pipeline is never held up by the broker. `publish` puts the snapshot in a latest-wins
//! slot and hands it to rumqttc's request queue with `try_publish` only when nothing else is
//! queued there, so a slow broker costs this sink its older snapshots (never memory), and a
//! broker that is down costs nothing: the connection task reconnects with exponential
//! backoff and jitter capped at [`MAX_BACKOFF`], throws away what was queued for the lost
//! connection, and on the next connect publishes the status, the discovery configs and the
//! latest snapshot, never a backlog.
//!
//! With `mqtt.discovery=homeassistant` each sensor of [`SENSORS`] whose source is enabled and
//! whose value the configured format carries gets a retained config under
//! `homeassistant/sensor/<node>/<object>/config`; a sensor that goes away on reload gets an
//! empty retained config, which removes it from Home Assistant.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use rumqttc::{
    AsyncClient, ConnectReturnCode, ConnectionError, Event, EventLoop, LastWill, MqttOptions,
    Outgoing, Packet, QoS, TlsConfiguration, Transport,
};
use serde_json::json;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::encode::{Format, Frame};
use crate::plugin::{Sink, SinkPlugin};
use crate::settings::{Declared, DefaultValue, Kind, PluginConfig, Setting};

inventory::submit! {
    SinkPlugin {
        name: "mqtt",
        aliases: &[],
        description: "publishes <mqtt.topic>/snapshot (retained) and <mqtt.topic>/status (online/offline) to an MQTT broker; optional Home Assistant discovery",
        on_by_default: None,
        settings: Declared::typed::<Settings>(&[
            Setting {
                key: "mqtt.host",
                kind: Kind::Text,
                default: DefaultValue::Text("127.0.0.1"),
                help: "MQTT broker: host name or address",
            },
            Setting {
                key: "mqtt.port",
                kind: Kind::Port,
                default: DefaultValue::Text("0"),
                help: "MQTT broker port; 0 is 1883, or 8883 with mqtt.tls",
            },
            Setting {
                key: "mqtt.topic",
                kind: Kind::Text,
                default: DefaultValue::Computed(default_topic),
                help: "Topic prefix: <topic>/snapshot and <topic>/status",
            },
            Setting {
                key: "mqtt.client-id",
                kind: Kind::Text,
                default: DefaultValue::Computed(default_client_id),
                help: "MQTT client id, unique per broker; also names the Home Assistant device",
            },
            Setting {
                key: "mqtt.qos",
                kind: Kind::Whole { min: 0, max: 1 },
                default: DefaultValue::Text("0"),
                help: "QoS of the snapshots (the status is always QoS 1)",
            },
            Setting {
                key: "mqtt.retain",
                kind: Kind::Choice(&["true", "false"]),
                default: DefaultValue::Text("true"),
                help: "Whether the broker keeps the latest snapshot for new subscribers",
            },
            Setting {
                key: "mqtt.username",
                kind: Kind::Text,
                default: DefaultValue::Text(""),
                help: "User name at the broker (none when empty)",
            },
            Setting {
                key: "mqtt.password",
                kind: Kind::Secret,
                default: DefaultValue::Text(""),
                help: "Password at the broker (shown as ***)",
            },
            Setting {
                key: "mqtt.tls",
                kind: Kind::Choice(&["true", "false"]),
                default: DefaultValue::Text("false"),
                help: "Connect with TLS (rustls), checking the broker's certificate",
            },
            Setting {
                key: "mqtt.ca-file",
                kind: Kind::Text,
                default: DefaultValue::Text(""),
                help: "PEM file of the CA that signed the broker's certificate (system roots when empty)",
            },
            Setting {
                key: "mqtt.discovery",
                kind: Kind::Choice(&["none", "homeassistant"]),
                default: DefaultValue::Text("none"),
                help: "Announce sensors for Home Assistant's MQTT discovery",
            },
        ]),
        preflight: |config| Plan::of(config).map(drop),
        build: |config| {
            let plan = Plan::of(config);
            Box::pin(async move { Ok(Box::new(MqttSink::start(plan.map_err(anyhow::Error::msg)?)) as Box<dyn Sink>) })
        },
    }
}

/// The longest pause between connection attempts: publishing resumes within about this
/// long of the broker's return.
const MAX_BACKOFF: Duration = Duration::from_secs(2);
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// rumqttc's default of 10 KiB drops the connection on a snapshot of a host with many
/// interfaces or mounts; a snapshot larger than this is refused by the sink instead.
const MAX_PACKET: usize = 16 << 20;
/// Requests queued for the connection: the status, the discovery configs and one snapshot
/// fit; snapshots are only queued when nothing else is (see [`Slot::queued`]).
const REQUESTS: usize = 64;
/// How long closing waits for `offline` and the disconnect to go out; the pipeline gives
/// all sinks 800 ms together.
const CLOSE_TIMEOUT: Duration = Duration::from_millis(400);
const KEEP_ALIVE: Duration = Duration::from_secs(30);
const DISCOVERY_PREFIX: &str = "homeassistant";

/// No `Debug`: it holds the password.
#[derive(Clone, PartialEq, serde::Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct Settings {
    host: String,
    port: u16,
    topic: String,
    client_id: String,
    qos: u8,
    #[serde(deserialize_with = "yes")]
    retain: bool,
    username: String,
    password: String,
    #[serde(deserialize_with = "yes")]
    tls: bool,
    ca_file: String,
    discovery: String,
}

fn yes<'de, D: serde::Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    Ok(<String as serde::Deserialize>::deserialize(d)? == "true")
}

/// The host's name as it may appear in a topic and an id: `/`, `+`, `#` and anything but
/// letters, digits, `-`, `_` and `.` become `_`.
fn hostname() -> String {
    let name = nix::unistd::gethostname().unwrap_or_default();
    let name: String = (name.to_string_lossy().chars())
        .map(|c| match c.is_ascii_alphanumeric() || "-_.".contains(c) {
            true => c,
            false => '_',
        })
        .collect();
    match name.is_empty() {
        true => "localhost".into(),
        false => name,
    }
}

fn default_topic() -> String {
    format!("pocketses/{}", hostname())
}

fn default_client_id() -> String {
    format!("pocketses-{}", hostname())
}

/// What the sink runs with, derived from its settings: checked once, shared by `--check`,
/// start and reload.
#[derive(Clone, PartialEq)]
struct Plan {
    settings: Settings,
    /// The CA certificates read from `mqtt.ca-file` (or the system's), with TLS.
    ca: Option<Vec<u8>>,
    snapshot_topic: String,
    status_topic: String,
    qos: QoS,
    /// Discovery configs: topic and payload.
    announce: Vec<(String, Bytes)>,
}

/// Where the system's CA certificates are, Debian/Ubuntu first (also in the snap's base).
const SYSTEM_ROOTS: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/cert.pem",
];

impl Plan {
    fn of(config: &PluginConfig) -> Result<Plan, String> {
        let settings: Settings = config.settings()?;
        if settings.host.trim().is_empty() {
            return Err("mqtt.host: give the broker's host name or address".into());
        }
        let topic = settings.topic.trim_end_matches('/');
        if topic.is_empty() || topic.contains(['+', '#']) {
            return Err(format!(
                "mqtt.topic: {:?} is not a topic to publish under (not empty, no + or #)",
                settings.topic
            ));
        }
        if settings.client_id.is_empty() || settings.client_id.len() > 128 {
            return Err("mqtt.client-id: give 1 to 128 characters".into());
        }
        if !settings.password.is_empty() && settings.username.is_empty() {
            return Err("mqtt.password: set mqtt.username too".into());
        }
        let ca = match (settings.tls, settings.ca_file.as_str()) {
            (false, "") => None,
            (false, _) => return Err("mqtt.ca-file: set mqtt.tls=true to use it".into()),
            (true, "") => Some(
                (SYSTEM_ROOTS.iter())
                    .find_map(|path| std::fs::read(path).ok())
                    .ok_or("mqtt.tls: no system CA certificates found; set mqtt.ca-file")?,
            ),
            (true, path) => Some(read_ca(path).map_err(|e| format!("mqtt.ca-file: {e}"))?),
        };
        let announce = match settings.discovery.as_str() {
            "homeassistant" => discovery(&settings, config.format, &config.sources),
            _ => Vec::new(),
        };
        Ok(Plan {
            snapshot_topic: format!("{topic}/snapshot"),
            status_topic: format!("{topic}/status"),
            qos: match settings.qos {
                0 => QoS::AtMostOnce,
                _ => QoS::AtLeastOnce,
            },
            ca,
            announce,
            settings,
        })
    }

    /// Whether `other` talks to the same broker in the same way (only then can a reload keep
    /// the connection).
    fn same_connection(&self, other: &Plan) -> bool {
        fn key(p: &Plan) -> impl PartialEq + '_ {
            let s = &p.settings;
            let id = (&s.host, s.port, &s.client_id, &s.username, &s.password);
            (id, s.tls, &p.ca, &p.status_topic)
        }
        key(self) == key(other)
    }

    fn options(&self) -> MqttOptions {
        let s = &self.settings;
        let port = match (s.port, s.tls) {
            (0, false) => 1883,
            (0, true) => 8883,
            (port, _) => port,
        };
        let mut options = MqttOptions::new(&s.client_id, s.host.trim(), port);
        options
            .set_keep_alive(KEEP_ALIVE)
            .set_max_packet_size(MAX_PACKET, MAX_PACKET)
            .set_request_channel_capacity(REQUESTS)
            .set_last_will(LastWill::new(
                &self.status_topic,
                "offline",
                QoS::AtLeastOnce,
                true,
            ));
        if !s.username.is_empty() {
            options.set_credentials(&s.username, &s.password);
        }
        if let Some(ca) = &self.ca {
            options.set_transport(Transport::tls_with_config(TlsConfiguration::Simple {
                ca: ca.clone(),
                alpn: None,
                client_auth: None,
            }));
        }
        options
    }
}

/// A CA file, bounded (a bundle of every public root is about 200 KiB) and checked to hold
/// a PEM certificate, so that `--check` catches a wrong path or file.
fn read_ca(path: &str) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let file = std::fs::File::open(path).map_err(|e| format!("{path}: {e}"))?;
    let mut pem = Vec::new();
    (file.take(4 << 20).read_to_end(&mut pem)).map_err(|e| format!("{path}: {e}"))?;
    match pem.windows(27).any(|w| w == b"-----BEGIN CERTIFICATE-----") {
        true => Ok(pem),
        false => Err(format!("{path} holds no PEM certificate")),
    }
}

/// A Home Assistant sensor read from the snapshot: in which source's section, and how, per
/// format (`None`: that format does not carry it). Adding a sensor is adding a row.
struct Sensor {
    source: &'static str,
    object: &'static str,
    name: &'static str,
    unit: &'static str,
    device_class: Option<&'static str>,
    icon: &'static str,
    seed: Option<&'static str>,
    raw: Option<&'static str>,
}

/// Seed's percentages are strings such as `"42.3%"`.
const SENSORS: &[Sensor] = &[
    Sensor {
        source: "cpu",
        object: "cpu",
        name: "CPU",
        unit: "%",
        device_class: None,
        icon: "mdi:cpu-64-bit",
        seed: Some("{{ value_json.cpu.utilization.overall }}"),
        raw: Some("{{ value_json.cpu.utilization_percent | round(1) }}"),
    },
    Sensor {
        source: "memory",
        object: "memory_used",
        name: "Memory used",
        unit: "%",
        device_class: None,
        icon: "mdi:memory",
        seed: Some("{{ value_json.memory.virtual.used | replace('%', '') | float }}"),
        raw: Some("{{ value_json.memory.used_percent | round(1) }}"),
    },
    Sensor {
        source: "memory",
        object: "swap_used",
        name: "Swap used",
        unit: "%",
        device_class: None,
        icon: "mdi:harddisk",
        seed: Some("{{ value_json.memory.swap.used | replace('%', '') | float }}"),
        raw: Some("{{ value_json.memory.swap_used_percent | round(1) }}"),
    },
    // Rates are raw's only, per interface and absent on the first snapshot: the sum over
    // the interfaces that have one, loopback left out.
    Sensor {
        source: "network",
        object: "network_receive",
        name: "Network receive",
        unit: "B/s",
        device_class: Some("data_rate"),
        icon: "mdi:download-network",
        seed: None,
        raw: Some("{% set ns = namespace(sum=0) %}{% for name, i in value_json.network.interfaces.items() if name != 'lo' %}{% set ns.sum = ns.sum + (i.rx_bytes_per_second | default(0)) %}{% endfor %}{{ ns.sum | round(0) }}"),
    },
    Sensor {
        source: "network",
        object: "network_transmit",
        name: "Network transmit",
        unit: "B/s",
        device_class: Some("data_rate"),
        icon: "mdi:upload-network",
        seed: None,
        raw: Some("{% set ns = namespace(sum=0) %}{% for name, i in value_json.network.interfaces.items() if name != 'lo' %}{% set ns.sum = ns.sum + (i.tx_bytes_per_second | default(0)) %}{% endfor %}{{ ns.sum | round(0) }}"),
    },
    Sensor {
        source: "load",
        object: "load1",
        name: "Load (1 min)",
        unit: "",
        device_class: None,
        icon: "mdi:gauge",
        seed: Some("{{ value_json.load.average['1min'] }}"),
        raw: Some("{{ value_json.load.load1 }}"),
    },
    Sensor {
        source: "filesystem",
        object: "root_used",
        name: "Root filesystem used",
        unit: "%",
        device_class: None,
        icon: "mdi:harddisk",
        seed: Some("{{ value_json.filesystem['/'].used | replace('%', '') | float }}"),
        raw: Some("{{ value_json.filesystem['/'].used_percent | round(1) }}"),
    },
];

/// `<node>`: the client id with only what discovery topics and ids allow.
fn node_id(client_id: &str) -> String {
    (client_id.chars())
        .map(|c| match c.is_ascii_alphanumeric() || c == '-' {
            true => c,
            false => '_',
        })
        .collect()
}

/// The discovery configs for the sensors whose source is enabled, in this format.
fn discovery(settings: &Settings, format: Format, sources: &[&str]) -> Vec<(String, Bytes)> {
    let node = node_id(&settings.client_id);
    let topic = settings.topic.trim_end_matches('/');
    let host = nix::sys::utsname::uname().ok();
    let (machine, release) = host.as_ref().map_or((String::new(), String::new()), |u| {
        let text = |s: &std::ffi::OsStr| s.to_string_lossy().into_owned();
        (text(u.machine()), text(u.release()))
    });
    let device = json!({
        "identifiers": [format!("pocketses_{node}")],
        "name": hostname(),
        "manufacturer": "Pocketses",
        "model": format!("Linux {machine}"),
        "sw_version": release,
    });
    (SENSORS.iter())
        .filter(|s| sources.contains(&s.source))
        .filter_map(|s| {
            let template = match format {
                Format::Seed => s.seed?,
                Format::Raw => s.raw?,
            };
            let mut config = json!({
                "name": s.name,
                "unique_id": format!("{node}_{}", s.object),
                "object_id": format!("{node}_{}", s.object),
                "state_topic": format!("{topic}/snapshot"),
                "value_template": template,
                "availability_topic": format!("{topic}/status"),
                "payload_available": "online",
                "payload_not_available": "offline",
                "state_class": "measurement",
                "icon": s.icon,
                "device": device,
                "origin": {"name": "pocketses", "sw_version": env!("CARGO_PKG_VERSION")},
            });
            if let Some(class) = s.device_class {
                config["device_class"] = class.into();
            }
            // A load average has no unit; Home Assistant wants the key left out then.
            if !s.unit.is_empty() {
                config["unit_of_measurement"] = s.unit.into();
            }
            let topic = format!("{DISCOVERY_PREFIX}/sensor/{node}/{}/config", s.object);
            Some((topic, Bytes::from(config.to_string())))
        })
        .collect()
}

/// What the sink and its connection task share, behind one lock held only for a few
/// `try_publish` calls.
struct Slot {
    plan: Plan,
    client: AsyncClient,
    connected: bool,
    /// The latest snapshot, and whether it has yet to be handed to the client.
    latest: Option<Bytes>,
    fresh: bool,
    /// Publishes handed to the client and not yet written out. A snapshot is handed over
    /// only when this is 0, so at most one waits in the client's queue.
    queued: usize,
    /// Discovery topics to empty (sensors removed on reload), until handed over.
    retract: Vec<String>,
}

impl Slot {
    fn send(&mut self, topic: &str, qos: QoS, retain: bool, payload: Bytes) -> bool {
        let sent = self.client.try_publish(topic, qos, retain, payload).is_ok();
        self.queued += usize::from(sent);
        sent
    }

    /// Hands the latest snapshot to the client if it is new and nothing else is queued.
    fn offer(&mut self) {
        if !(self.connected && self.fresh && self.queued == 0) {
            return;
        }
        let Some(json) = self.latest.clone() else {
            return;
        };
        let (topic, qos) = (self.plan.snapshot_topic.clone(), self.plan.qos);
        if self.send(&topic, qos, self.plan.settings.retain, json) {
            self.fresh = false;
        }
    }

    /// After a connect or a reload: the status, removals, discovery configs, then the
    /// latest snapshot.
    fn announce(&mut self, online: bool) {
        if online {
            let topic = self.plan.status_topic.clone();
            self.send(
                &topic,
                QoS::AtLeastOnce,
                true,
                Bytes::from_static(b"online"),
            );
        }
        let retract = std::mem::take(&mut self.retract);
        for topic in retract {
            if !self.send(&topic, QoS::AtLeastOnce, true, Bytes::new()) {
                self.retract.push(topic);
            }
        }
        for (topic, config) in self.plan.announce.clone() {
            self.send(&topic, QoS::AtLeastOnce, true, config);
        }
        if self.latest.is_some() {
            self.fresh = true;
        }
        self.offer();
    }
}

type Shared = Arc<Mutex<Slot>>;

fn lock(shared: &Shared) -> MutexGuard<'_, Slot> {
    // A panic while holding it cannot leave the slot inconsistent in a way that matters:
    // the worst is a stale `queued`, which the next connect resets.
    shared.lock().unwrap_or_else(|e| e.into_inner())
}

struct MqttSink {
    shared: Shared,
    task: Option<JoinHandle<()>>,
}

impl MqttSink {
    /// Starts the connection task; the sink is ready at once (a broker that is not up yet
    /// is retried in the background, like one that goes away).
    fn start(plan: Plan) -> MqttSink {
        let (shared, task) = connect(plan, Vec::new(), None);
        MqttSink {
            shared,
            task: Some(task),
        }
    }

    /// Publishes `offline` and disconnects, waiting at most [`CLOSE_TIMEOUT`]; without a
    /// connection there is nothing to wait for.
    async fn disconnect(&mut self) {
        let connected = {
            let mut slot = lock(&self.shared);
            let connected = slot.connected;
            if connected {
                let topic = slot.plan.status_topic.clone();
                slot.send(
                    &topic,
                    QoS::AtLeastOnce,
                    true,
                    Bytes::from_static(b"offline"),
                );
                let _ = slot.client.try_disconnect();
            }
            slot.connected = false;
            connected
        };
        if let Some(mut task) = self.task.take() {
            if !connected
                || tokio::time::timeout(CLOSE_TIMEOUT, &mut task)
                    .await
                    .is_err()
            {
                task.abort();
            }
        }
    }
}

/// A client and its connection task for `plan`.
fn connect(plan: Plan, retract: Vec<String>, latest: Option<Bytes>) -> (Shared, JoinHandle<()>) {
    let (client, eventloop) = AsyncClient::new(plan.options(), REQUESTS);
    let broker = format!(
        "{}:{}",
        plan.settings.host.trim(),
        eventloop.mqtt_options.broker_address().1
    );
    let shared = Arc::new(Mutex::new(Slot {
        plan,
        client,
        connected: false,
        fresh: latest.is_some(),
        latest,
        queued: 0,
        retract,
    }));
    let task = tokio::spawn(run(eventloop, shared.clone(), broker));
    (shared, task)
}

/// The connection's state, logged once per change.
#[derive(PartialEq)]
enum State {
    Connecting,
    Connected,
    Down(String),
}

/// Drives the connection until the client disconnects: reconnects after a failure with
/// exponential backoff and jitter, and keeps the slot's view of the connection current.
async fn run(mut eventloop: EventLoop, shared: Shared, broker: String) {
    let mut state = State::Connecting;
    let mut backoff = FIRST_BACKOFF;
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                backoff = FIRST_BACKOFF;
                if state != State::Connected {
                    info!(sink = "mqtt", "connected to {broker}");
                    state = State::Connected;
                }
                let mut slot = lock(&shared);
                slot.connected = true;
                slot.queued = 0;
                slot.announce(true);
            }
            Ok(Event::Outgoing(Outgoing::Publish(_))) => {
                let mut slot = lock(&shared);
                slot.queued = slot.queued.saturating_sub(1);
                slot.offer();
            }
            Ok(Event::Outgoing(Outgoing::Disconnect)) => return,
            Ok(_) => {}
            Err(ConnectionError::RequestsDone) => return,
            Err(e) => {
                lock(&shared).connected = false;
                let why = reason(&e);
                let was_up = state == State::Connected;
                if state != State::Down(why.clone()) {
                    match was_up {
                        true => warn!(sink = "mqtt", "lost {broker}: {why}; reconnecting"),
                        false => warn!(sink = "mqtt", "cannot connect to {broker}: {why}; retrying with backoff up to {MAX_BACKOFF:?}"),
                    }
                    state = State::Down(why);
                }
                if was_up {
                    backoff = FIRST_BACKOFF;
                }
                tokio::time::sleep(jitter(backoff)).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                // What was queued for the lost connection (and anything handed over since)
                // is stale: the next connect sends the latest snapshot instead.
                eventloop.clean();
                eventloop.pending.clear();
                lock(&shared).queued = 0;
            }
        }
    }
}

/// Between half of `backoff` and all of it, so that a fleet that lost its broker does not
/// come back in step. std's randomly keyed hasher is the random source: one number per
/// attempt needs no `rand` crate.
fn jitter(backoff: Duration) -> Duration {
    let random = RandomState::new().hash_one(std::time::Instant::now());
    backoff / 2 + backoff.mul_f64((random % 1000) as f64 / 2000.0)
}

/// A connection error in a user's words; a refusal names the broker's reason code.
fn reason(e: &ConnectionError) -> String {
    let ConnectionError::ConnectionRefused(code) = e else {
        return e.to_string();
    };
    let (number, why) = match code {
        ConnectReturnCode::Success => (0, "accepted"),
        ConnectReturnCode::RefusedProtocolVersion => (1, "unacceptable protocol version"),
        ConnectReturnCode::BadClientId => (2, "client id rejected (mqtt.client-id)"),
        ConnectReturnCode::ServiceUnavailable => (3, "server unavailable"),
        ConnectReturnCode::BadUserNamePassword => (
            4,
            "bad user name or password (mqtt.username, mqtt.password)",
        ),
        ConnectReturnCode::NotAuthorized => {
            (5, "not authorized (check mqtt.username, mqtt.password)")
        }
    };
    format!("refused by the broker: {why} (return code {number})")
}

#[async_trait]
impl Sink for MqttSink {
    /// Never waits: the snapshot replaces the previous one in the slot and is handed to the
    /// client when the connection is up and free.
    async fn publish(&mut self, frame: &Frame) -> anyhow::Result<()> {
        // Leaves room for the topic and the packet's header.
        if frame.json.len() > MAX_PACKET - 4096 {
            anyhow::bail!(
                "a snapshot of {} bytes is larger than the {MAX_PACKET} bytes an MQTT packet may hold here; not published",
                frame.json.len()
            );
        }
        let mut slot = lock(&self.shared);
        slot.latest = Some(frame.json.clone());
        slot.fresh = true;
        slot.offer();
        Ok(())
    }

    /// Discovery and publishing settings are adopted on the same connection; a change of
    /// broker, credentials, client id or topic reconnects (`offline` on the old status
    /// topic first). Sensors that are gone get empty retained configs.
    async fn reconfigure(&mut self, config: &PluginConfig) -> anyhow::Result<bool> {
        let plan = Plan::of(config).map_err(anyhow::Error::msg)?;
        let (same, retract, latest) = {
            let mut slot = lock(&self.shared);
            let mut retract = std::mem::take(&mut slot.retract);
            retract.extend(
                (slot.plan.announce.iter())
                    .map(|(topic, _)| topic)
                    .filter(|old| !plan.announce.iter().any(|(new, _)| new == *old))
                    .cloned(),
            );
            (
                slot.plan.same_connection(&plan),
                retract,
                slot.latest.clone(),
            )
        };
        if same {
            let mut slot = lock(&self.shared);
            slot.plan = plan;
            slot.retract = retract;
            if slot.connected {
                slot.announce(false);
            }
            return Ok(true);
        }
        self.disconnect().await;
        let (shared, task) = connect(plan, retract, latest);
        (self.shared, self.task) = (shared, Some(task));
        Ok(true)
    }

    async fn close(&mut self) {
        self.disconnect().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(format: Format, sources: &[&'static str], values: serde_json::Value) -> PluginConfig {
        let mut all = json!({
            "host": "127.0.0.1", "port": 0, "topic": "pocketses/h", "client-id": "pocketses-h",
            "qos": 0, "retain": "true", "username": "", "password": "", "tls": "false",
            "ca-file": "", "discovery": "homeassistant",
        });
        for (k, v) in values.as_object().unwrap() {
            all[k] = v.clone();
        }
        PluginConfig {
            values: all.as_object().unwrap().clone(),
            interval: Duration::from_secs(1),
            format,
            sources: sources.to_vec(),
        }
    }

    #[test]
    fn discovery_follows_the_enabled_sources_and_the_format() {
        let objects = |format, sources: &[&'static str]| {
            let plan = Plan::of(&config(format, sources, json!({}))).unwrap();
            (plan.announce.iter())
                .map(|(topic, _)| topic.split('/').nth(3).unwrap().to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(
            objects(Format::Raw, &["cpu", "memory", "network"]),
            [
                "cpu",
                "memory_used",
                "swap_used",
                "network_receive",
                "network_transmit"
            ]
        );
        assert_eq!(
            objects(Format::Seed, &["cpu", "memory", "network"]),
            ["cpu", "memory_used", "swap_used"]
        );
        assert_eq!(
            objects(Format::Raw, &["memory"]),
            ["memory_used", "swap_used"]
        );
    }

    #[test]
    fn bad_settings_name_their_key() {
        let bad = |values| Plan::of(&config(Format::Seed, &[], values)).err().unwrap();
        assert!(bad(json!({"topic": "a/#"})).starts_with("mqtt.topic"));
        assert!(bad(json!({"password": "x"})).starts_with("mqtt.password"));
        assert!(bad(json!({"ca-file": "/x"})).starts_with("mqtt.ca-file"));
        let e = bad(json!({"tls": "true", "ca-file": "/nonexistent/ca.pem"}));
        assert!(e.starts_with("mqtt.ca-file: /nonexistent/ca.pem"), "{e}");
        assert!(bad(json!({"host": " "})).starts_with("mqtt.host"));
    }

    #[test]
    fn jitter_stays_within_half_and_all_of_the_backoff() {
        for _ in 0..100 {
            let d = jitter(MAX_BACKOFF);
            assert!(d >= MAX_BACKOFF / 2 && d <= MAX_BACKOFF, "{d:?}");
        }
    }
}
