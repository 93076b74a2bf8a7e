//! What the live view shows: snapshots of either format (`seed` or `raw`, see docs/FORMAT.md)
//! parsed into one shape, plus the connection state and the CPU history. No terminal here,
//! so the view can be drawn from a hand-made model in tests.

use std::collections::VecDeque;

use serde_json::{Map, Value};

use crate::encode::humanize;

/// Overall CPU readings kept for the sparkline: wider than any terminal draws.
pub const HISTORY: usize = 512;

/// The connection to the publisher.
#[derive(Clone, Debug, PartialEq)]
pub enum Link {
    Connecting,
    Connected,
    /// Lost or refused, with why; the client is retrying.
    Disconnected(String),
}

/// Everything the view draws.
#[derive(Debug)]
pub struct Model {
    pub addr: String,
    pub link: Link,
    /// The latest snapshot, kept (and shown) while disconnected.
    pub snapshot: Option<Snapshot>,
    /// Overall CPU percent of each snapshot received, oldest first.
    pub cpu_history: VecDeque<f64>,
    /// Something the publisher said that is not a snapshot (`{"error": ...}` when it is
    /// full), or why its last line could not be read.
    pub notice: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Snapshot {
    pub timestamp: Option<String>,
    pub cpu: Option<Cpu>,
    pub memory: Option<Memory>,
    pub network: Option<Network>,
    /// Sections this view has no panel for (load, disks, temperatures, ...), in the order
    /// the publisher sent them, flattened to key/value lines.
    pub other: Vec<Section>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Cpu {
    pub count: Option<u64>,
    pub overall: f64,
    /// (kernel CPU number, busy percent)
    pub per_cpu: Vec<(u64, f64)>,
    pub frequency_mhz: Option<f64>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Memory {
    pub ram: Usage,
    pub swap: Usage,
}

/// One gauge: the percent used and the humanized sizes as the publisher gave them.
#[derive(Clone, Debug, PartialEq)]
pub struct Usage {
    pub used_percent: f64,
    pub total: String,
    pub available: String,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Network {
    /// Cumulative bytes over all interfaces, humanized.
    pub sent: String,
    pub recv: String,
    /// Sorted by name. Only `raw` has per-interface counters and rates; `seed` names just
    /// the interfaces with IPv4 addresses.
    pub interfaces: Vec<Interface>,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Interface {
    pub name: String,
    pub rx_per_second: Option<f64>,
    pub tx_per_second: Option<f64>,
    pub rx_bytes: Option<u64>,
    pub tx_bytes: Option<u64>,
    pub addresses: Vec<String>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Section {
    pub name: String,
    pub lines: Vec<(String, String)>,
}

impl Model {
    pub fn new(addr: &str) -> Model {
        Model {
            addr: addr.to_string(),
            link: Link::Connecting,
            snapshot: None,
            cpu_history: VecDeque::new(),
            notice: None,
        }
    }

    pub fn connected(&mut self) {
        self.link = Link::Connected;
    }

    pub fn disconnected(&mut self, why: impl Into<String>) {
        self.link = Link::Disconnected(why.into());
    }

    /// Takes one line from the publisher (CRLF already stripped).
    pub fn line(&mut self, line: &str) {
        let object = match serde_json::from_str::<Value>(line) {
            Ok(Value::Object(object)) => object,
            Ok(_) => return self.notice = Some("a line that is not a JSON object".into()),
            Err(e) => return self.notice = Some(format!("an unreadable line: {e}")),
        };
        if !object.contains_key("timestamp") {
            if let Some(error) = object.get("error") {
                self.notice = Some(format!("publisher: {}", scalar_text("", error)));
                return;
            }
        }
        let snapshot = Snapshot::parse(&object);
        if let Some(cpu) = &snapshot.cpu {
            if self.cpu_history.len() == HISTORY {
                self.cpu_history.pop_front();
            }
            self.cpu_history.push_back(cpu.overall);
        }
        self.notice = None;
        self.snapshot = Some(snapshot);
    }
}

impl Snapshot {
    /// Reads each section in the shape of either format; a section in neither shape (a
    /// future source, or a known one that changed) is shown generically.
    pub fn parse(object: &Map<String, Value>) -> Snapshot {
        let mut snapshot = Snapshot::default();
        for (name, value) in object {
            match name.as_str() {
                "timestamp" => snapshot.timestamp = value.as_str().map(str::to_string),
                "cpu" if snapshot.cpu.is_none() => match Cpu::parse(value) {
                    Some(cpu) => snapshot.cpu = Some(cpu),
                    None => snapshot.other.push(Section::parse(name, value)),
                },
                "memory" if snapshot.memory.is_none() => match Memory::parse(value) {
                    Some(memory) => snapshot.memory = Some(memory),
                    None => snapshot.other.push(Section::parse(name, value)),
                },
                "network" if snapshot.network.is_none() => match Network::parse(value) {
                    Some(network) => snapshot.network = Some(network),
                    None => snapshot.other.push(Section::parse(name, value)),
                },
                _ => snapshot.other.push(Section::parse(name, value)),
            }
        }
        snapshot
    }
}

impl Cpu {
    fn parse(cpu: &Value) -> Option<Cpu> {
        let count = cpu.get("count").and_then(Value::as_u64);
        if let Some(utilization) = cpu.get("utilization") {
            // seed: {"overall": 34.3, "per_cpu": [27.6, ...]}, CPUs numbered from 0
            let per_cpu = utilization.get("per_cpu")?.as_array()?;
            let frequency = cpu.pointer("/frequency/current").and_then(Value::as_f64);
            return Some(Cpu {
                count,
                overall: utilization.get("overall")?.as_f64()?,
                per_cpu: (0..)
                    .zip(per_cpu.iter().filter_map(Value::as_f64))
                    .collect(),
                // seed writes 0.0 where the host does not say
                frequency_mhz: frequency.filter(|mhz| *mhz > 0.0),
            });
        }
        // raw: per_cpu is [{"id": 3, "utilization_percent": 1.2}, ...]
        let per_cpu = cpu.get("per_cpu")?.as_array()?;
        Some(Cpu {
            count,
            overall: cpu.get("utilization_percent")?.as_f64()?,
            per_cpu: per_cpu
                .iter()
                .filter_map(|c| {
                    Some((
                        c.get("id")?.as_u64()?,
                        c.get("utilization_percent")?.as_f64()?,
                    ))
                })
                .collect(),
            frequency_mhz: cpu.get("frequency_current_mhz").and_then(Value::as_f64),
        })
    }
}

impl Memory {
    fn parse(memory: &Value) -> Option<Memory> {
        if let (Some(ram), Some(swap)) = (memory.get("virtual"), memory.get("swap")) {
            // seed: humanized strings, used as "42.3%"
            let usage = |v: &Value| {
                Some(Usage {
                    used_percent: v.get("used")?.as_str()?.strip_suffix('%')?.parse().ok()?,
                    total: v.get("total")?.as_str()?.to_string(),
                    available: v.get("available")?.as_str()?.to_string(),
                })
            };
            return Some(Memory {
                ram: usage(ram)?,
                swap: usage(swap)?,
            });
        }
        let number = |key: &str| memory.get(key).and_then(Value::as_f64);
        let bytes = |key: &str| memory.get(key).and_then(Value::as_u64).map(humanize::bytes);
        Some(Memory {
            ram: Usage {
                used_percent: number("used_percent")?,
                total: bytes("total_bytes")?,
                available: bytes("available_bytes")?,
            },
            swap: Usage {
                used_percent: number("swap_used_percent")?,
                total: bytes("swap_total_bytes")?,
                available: bytes("swap_free_bytes")?,
            },
        })
    }
}

impl Network {
    fn parse(network: &Value) -> Option<Network> {
        // Addresses are "interface -> [IPv4]" in both formats (an object; anything else,
        // such as a masked value, names nothing).
        let mut interfaces: Vec<Interface> = Vec::new();
        let addresses = network.get("addresses").and_then(Value::as_object);
        if let Some(traffic) = network.get("traffic") {
            // seed: only humanized totals over all interfaces. Rates computed from them
            // would move in steps of 0.1G, so the view shows the totals as they are.
            for (name, list) in addresses.into_iter().flatten() {
                interfaces.push(Interface {
                    name: name.clone(),
                    addresses: strings(list),
                    ..Interface::default()
                });
            }
            interfaces.sort_by(|a, b| a.name.cmp(&b.name));
            return Some(Network {
                sent: traffic.get("sent")?.as_str()?.to_string(),
                recv: traffic.get("recv")?.as_str()?.to_string(),
                interfaces,
            });
        }
        let total = |key: &str| {
            network
                .get(key)
                .and_then(Value::as_u64)
                .map(humanize::bytes)
        };
        for (name, counters) in network.get("interfaces")?.as_object()? {
            let number = |key: &str| counters.get(key).and_then(Value::as_f64);
            interfaces.push(Interface {
                name: name.clone(),
                // absent on the first snapshot and for a new interface
                rx_per_second: number("rx_bytes_per_second"),
                tx_per_second: number("tx_bytes_per_second"),
                rx_bytes: counters.get("rx_bytes").and_then(Value::as_u64),
                tx_bytes: counters.get("tx_bytes").and_then(Value::as_u64),
                addresses: addresses
                    .and_then(|a| a.get(name))
                    .map(strings)
                    .unwrap_or_default(),
            });
        }
        interfaces.sort_by(|a, b| a.name.cmp(&b.name));
        Some(Network {
            sent: total("sent_bytes_total")?,
            recv: total("recv_bytes_total")?,
            interfaces,
        })
    }
}

fn strings(list: &Value) -> Vec<String> {
    let items = list.as_array().map(Vec::as_slice).unwrap_or_default();
    items
        .iter()
        .filter_map(Value::as_str)
        .map(str::to_string)
        .collect()
}

impl Section {
    /// Any section as `key: value` lines, nested keys joined with dots, so a source this
    /// view does not know still shows up.
    pub fn parse(name: &str, value: &Value) -> Section {
        let mut lines = Vec::new();
        flatten("", value, &mut lines);
        Section {
            name: name.to_string(),
            lines,
        }
    }
}

fn flatten(key: &str, value: &Value, lines: &mut Vec<(String, String)>) {
    let join = |part: &str| match key {
        "" => part.to_string(),
        _ => format!("{key}.{part}"),
    };
    match value {
        Value::Object(object) => {
            for (part, inner) in object {
                flatten(&join(part), inner, lines);
            }
        }
        Value::Array(items) if items.iter().any(|i| i.is_object() || i.is_array()) => {
            for (i, inner) in items.iter().enumerate() {
                flatten(&format!("{key}[{i}]"), inner, lines);
            }
        }
        Value::Array(items) => {
            let texts: Vec<String> = items.iter().map(|i| scalar_text(key, i)).collect();
            lines.push((key.to_string(), texts.join(", ")));
        }
        _ => lines.push((key.to_string(), scalar_text(key, value))),
    }
}

/// A scalar as text; numbers in `raw`'s unit-suffixed fields get their unit.
fn scalar_text(key: &str, value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => "–".to_string(),
        Value::Number(n) => match (n.as_u64(), n.as_f64()) {
            (Some(b), _) if key.ends_with("_bytes") || key.ends_with("_bytes_total") => {
                humanize::bytes(b)
            }
            (Some(i), _) => i.to_string(),
            (None, Some(f)) if key.ends_with("_percent") => format!("{f:.1}%"),
            (None, Some(f)) => format!("{f:.2}"),
            _ => n.to_string(),
        },
        other => other.to_string(),
    }
}
