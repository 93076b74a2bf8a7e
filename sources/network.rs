//! `network` (alias `net`): traffic totals over all interfaces, per-interface counters and
//! rates, IPv4 addresses, and (in `raw`) IPv6 addresses.

use std::borrow::Cow;
use std::collections::HashMap;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, OwnedFd};

use nix::libc;
use std::time::Instant;

use async_trait::async_trait;
use serde::ser::{SerializeMap, Serializer};
use serde::Serialize;

use crate::encode::humanize::ser_bytes;
use crate::hostfs::{HostFs, KeptFile};
use crate::model::{Family, Format, Sample, Section, Unit};
use crate::plugin::{Source, SourcePlugin};
use crate::settings::Declared;

inventory::submit! {
    SourcePlugin {
        name: "network",
        aliases: &["net"],
        description: "traffic totals, per-interface counters and rates, IPv4 (and in raw IPv6) addresses",
        on_by_default: Some(3),
        settings: Declared::NONE,
        build: |ctx| Ok(Box::new(Network::new(ctx.host.clone())?)),
    }
}

/// One interface's counters from `/proc/net/dev`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct IfCounters {
    pub rx_bytes: u64,
    pub rx_packets: u64,
    pub rx_errors: u64,
    pub rx_dropped: u64,
    pub tx_bytes: u64,
    pub tx_packets: u64,
    pub tx_errors: u64,
    pub tx_dropped: u64,
}

impl IfCounters {
    /// Increase since `earlier`, Prometheus-style: a counter that went backwards was reset
    /// and restarted from zero, so its increase is its current value.
    fn since(&self, earlier: &IfCounters) -> IfCounters {
        let d = |now: u64, then: u64| if now >= then { now - then } else { now };
        IfCounters {
            rx_bytes: d(self.rx_bytes, earlier.rx_bytes),
            rx_packets: d(self.rx_packets, earlier.rx_packets),
            rx_errors: d(self.rx_errors, earlier.rx_errors),
            rx_dropped: d(self.rx_dropped, earlier.rx_dropped),
            tx_bytes: d(self.tx_bytes, earlier.tx_bytes),
            tx_packets: d(self.tx_packets, earlier.tx_packets),
            tx_errors: d(self.tx_errors, earlier.tx_errors),
            tx_dropped: d(self.tx_dropped, earlier.tx_dropped),
        }
    }
}

/// Parses `/proc/net/dev`. The kernel prints `%6s:%8llu`, so a long counter touches the
/// colon (`eth0:68210035552`) and a name may itself hold colons (`ibr10:30`): the name is
/// everything before the last colon.
pub fn parse_net_dev(text: &str) -> Vec<(String, IfCounters)> {
    text.lines()
        .filter_map(|line| {
            let (name, numbers) = line.rsplit_once(':')?;
            let mut n = [0u64; 16];
            let mut fields = numbers.split_ascii_whitespace();
            for slot in &mut n {
                *slot = fields.next()?.parse().ok()?;
            }
            let counters = IfCounters {
                rx_bytes: n[0],
                rx_packets: n[1],
                rx_errors: n[2],
                rx_dropped: n[3],
                tx_bytes: n[8],
                tx_packets: n[9],
                tx_errors: n[10],
                tx_dropped: n[11],
            };
            Some((name.trim().to_string(), counters))
        })
        .collect()
}

/// Lists IPv4 addresses with one `SIOCGIFCONF` ioctl on a socket kept open across ticks.
/// The kernel answers with exactly the IPv4 addresses by interface label (aliases such as
/// `eth0:1` are their own entries, interfaces without IPv4 are absent), which is all this
/// section needs, at a fraction of the cost of getifaddrs' netlink dumps.
struct Ipv4Lister {
    socket: OwnedFd,
    /// Entries to make room for, grown when the kernel fills them all.
    capacity: usize,
}

impl Ipv4Lister {
    fn new() -> io::Result<Self> {
        use nix::sys::socket::{socket, AddressFamily, SockFlag, SockType};
        let socket = socket(
            AddressFamily::Inet,
            SockType::Datagram,
            SockFlag::SOCK_CLOEXEC,
            None,
        )?;
        Ok(Ipv4Lister {
            socket,
            capacity: 16,
        })
    }

    fn list(&mut self) -> io::Result<Vec<(String, Vec<Ipv4Addr>)>> {
        loop {
            let capacity = self.capacity;
            // SAFETY: ifreq is plain old data; all-zero is a valid value.
            let mut requests: Vec<libc::ifreq> = vec![unsafe { std::mem::zeroed() }; capacity];
            let mut conf = libc::ifconf {
                ifc_len: (capacity * std::mem::size_of::<libc::ifreq>()) as libc::c_int,
                ifc_ifcu: libc::__c_anonymous_ifc_ifcu {
                    ifcu_req: requests.as_mut_ptr(),
                },
            };
            // SAFETY: conf points at `capacity` writable ifreqs and says so in ifc_len.
            if unsafe { libc::ioctl(self.socket.as_raw_fd(), libc::SIOCGIFCONF as _, &mut conf) }
                < 0
            {
                return Err(io::Error::last_os_error());
            }
            let filled = conf.ifc_len as usize / std::mem::size_of::<libc::ifreq>();
            if filled < capacity {
                return Ok(group_by_interface(
                    requests[..filled].iter().filter_map(ipv4_of),
                ));
            }
            // A full buffer may have been truncated: ask again with room to spare.
            self.capacity *= 2;
        }
    }
}

fn ipv4_of(request: &libc::ifreq) -> Option<(String, Ipv4Addr)> {
    let name: Vec<u8> = (request.ifr_name.iter())
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    // SAFETY: SIOCGIFCONF fills ifru_addr of every entry it returns.
    let addr = unsafe { request.ifr_ifru.ifru_addr };
    if addr.sa_family != libc::AF_INET as libc::sa_family_t {
        return None;
    }
    // SAFETY: an AF_INET sockaddr is a sockaddr_in, and sockaddr is at least as large.
    let sin: libc::sockaddr_in =
        unsafe { std::ptr::read_unaligned((&addr as *const libc::sockaddr).cast()) };
    let ip = Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
    Some((String::from_utf8_lossy(&name).into_owned(), ip))
}

/// Parses `/proc/net/if_inet6`: one line per IPv6 address, `<32 hex digits> <ifindex>
/// <prefix length> <scope> <flags> <name>`, as in `fe80000000000000020c29fffe8b6d1f 02 40
/// 20 80 eth0`. Link-local and not yet confirmed (tentative) addresses are included.
pub fn parse_if_inet6(text: &str) -> Vec<(String, Vec<Ipv6Addr>)> {
    group_by_interface(text.lines().filter_map(|line| {
        let mut fields = line.split_ascii_whitespace();
        let hex = fields.next().filter(|h| h.len() == 32)?;
        let name = fields.nth(4)?;
        let bits = u128::from_str_radix(hex, 16).ok()?;
        Some((name.to_string(), Ipv6Addr::from(bits)))
    }))
}

/// Groups addresses by interface, keeping first-seen order of interfaces and addresses.
fn group_by_interface<A>(pairs: impl Iterator<Item = (String, A)>) -> Vec<(String, Vec<A>)> {
    let mut out: Vec<(String, Vec<A>)> = Vec::new();
    for (name, ip) in pairs {
        match out.iter_mut().find(|(n, _)| *n == name) {
            Some((_, ips)) => ips.push(ip),
            None => out.push((name, vec![ip])),
        }
    }
    out
}

struct Network {
    net_dev: KeptFile,
    if_inet6: KeptFile,
    addresses: Ipv4Lister,
    buf: String,
    buf_v6: String,
    previous: Option<(Instant, HashMap<String, IfCounters>)>,
    /// Totals over all interfaces that only ever grow within a run: they add each
    /// interface's increase, so an interface that disappears takes nothing away.
    sent_total: u64,
    recv_total: u64,
}

impl Network {
    fn new(host: HostFs) -> io::Result<Self> {
        Ok(Network {
            net_dev: host.kept("/proc/net/dev"),
            if_inet6: host.kept("/proc/net/if_inet6"),
            addresses: Ipv4Lister::new()?,
            buf: String::new(),
            buf_v6: String::new(),
            previous: None,
            sent_total: 0,
            recv_total: 0,
        })
    }
}

#[async_trait]
impl Source for Network {
    async fn collect(&mut self) -> anyhow::Result<Box<dyn Section>> {
        self.net_dev.read_into(&mut self.buf)?;
        let now = Instant::now();
        let counters = parse_net_dev(&self.buf);
        let mut interfaces = Vec::with_capacity(counters.len());
        for (name, c) in &counters {
            let earlier = self.previous.as_ref().map(|(_, prev)| prev.get(name));
            let increase = match earlier {
                Some(Some(e)) => c.since(e),
                // New since the last sample, or the first sample: all of it counts.
                _ => *c,
            };
            self.sent_total = self.sent_total.saturating_add(increase.tx_bytes);
            self.recv_total = self.recv_total.saturating_add(increase.rx_bytes);
            let rates = self.previous.as_ref().map(|(then, _)| {
                let secs = now.duration_since(*then).as_secs_f64().max(1e-9);
                Rates::per_second(&increase, secs)
            });
            interfaces.push((name.clone(), *c, rates));
        }
        self.previous = Some((now, counters.into_iter().collect()));
        // Missing where IPv6 is off; unreadable costs only the IPv6 addresses. Read every
        // tick, fresh like the IPv4 ones: about 6 µs (benches/collect), which seed pays too
        // as sources do not know the format.
        let addresses_v6 = match self.if_inet6.read_into(&mut self.buf_v6) {
            Ok(()) => parse_if_inet6(&self.buf_v6),
            Err(_) => Vec::new(),
        };
        Ok(Box::new(NetworkSection {
            sent_bytes: self.sent_total,
            recv_bytes: self.recv_total,
            interfaces,
            addresses: self.addresses.list()?,
            addresses_v6,
        }))
    }
}

/// Per-second rates over the span since the previous snapshot.
#[derive(Clone, Copy, Debug, Serialize)]
struct Rates {
    rx_bytes_per_second: f64,
    rx_packets_per_second: f64,
    rx_errors_per_second: f64,
    rx_dropped_per_second: f64,
    tx_bytes_per_second: f64,
    tx_packets_per_second: f64,
    tx_errors_per_second: f64,
    tx_dropped_per_second: f64,
}

impl Rates {
    fn per_second(d: &IfCounters, secs: f64) -> Rates {
        let r = |n: u64| n as f64 / secs;
        Rates {
            rx_bytes_per_second: r(d.rx_bytes),
            rx_packets_per_second: r(d.rx_packets),
            rx_errors_per_second: r(d.rx_errors),
            rx_dropped_per_second: r(d.rx_dropped),
            tx_bytes_per_second: r(d.tx_bytes),
            tx_packets_per_second: r(d.tx_packets),
            tx_errors_per_second: r(d.tx_errors),
            tx_dropped_per_second: r(d.tx_dropped),
        }
    }
}

struct NetworkSection {
    sent_bytes: u64,
    recv_bytes: u64,
    interfaces: Vec<(String, IfCounters, Option<Rates>)>,
    addresses: Vec<(String, Vec<Ipv4Addr>)>,
    addresses_v6: Vec<(String, Vec<Ipv6Addr>)>,
}

impl Section for NetworkSection {
    fn view(&self, format: Format) -> Box<dyn erased_serde::Serialize + '_> {
        match format {
            Format::Seed => Box::new(SeedNetwork {
                traffic: SeedTraffic {
                    sent: self.sent_bytes,
                    recv: self.recv_bytes,
                },
                addresses: Ordered(&self.addresses),
            }),
            Format::Raw => Box::new(RawNetwork {
                sent_bytes_total: self.sent_bytes,
                recv_bytes_total: self.recv_bytes,
                interfaces: RawInterfaces(&self.interfaces),
                addresses: Ordered(&self.addresses),
                addresses_v6: Ordered(&self.addresses_v6),
            }),
        }
    }

    /// Per-interface counters only. Rates are left to the consumer (Prometheus' `rate()`),
    /// which gets them right across scrapes and resets. The all-interface totals are a sum
    /// a consumer can take, and the addresses are not measurements: as label values they
    /// would start a new series at every DHCP renewal or IPv6 privacy address, and
    /// node_exporter leaves them out too. Both stay in the JSON.
    fn samples<'a>(&'a self, out: &mut Vec<Sample<'a>>) {
        // Two names that differ only in bytes that are not UTF-8 read the same here: the
        // first keeps the series, as a series may appear only once.
        let unique: Vec<_> = (self.interfaces.iter().enumerate())
            .filter(|(i, (name, ..))| !self.interfaces[..*i].iter().any(|(n, ..)| n == name))
            .map(|(_, interface)| interface)
            .collect();
        for (family, counter) in &COUNTERS {
            for (name, counters, _) in &unique {
                out.push(Sample::new(
                    family,
                    [Cow::Borrowed(name.as_str())],
                    counter(counters) as f64,
                ));
            }
        }
    }
}

/// A family and its value in an interface's counters.
type CounterFamily = (Family, fn(&IfCounters) -> u64);

/// The counters of `/proc/net/dev` the section keeps, each with its family.
static COUNTERS: [CounterFamily; 8] = [
    (
        Family::counter(
            "network_receive_bytes_total",
            "Bytes received by the interface.",
            Unit::Bytes,
        )
        .labels(&["device"])
        .node("node_network_receive_bytes_total"),
        |c| c.rx_bytes,
    ),
    (
        Family::counter(
            "network_receive_packets_total",
            "Packets received by the interface.",
            Unit::None,
        )
        .labels(&["device"])
        .node("node_network_receive_packets_total"),
        |c| c.rx_packets,
    ),
    (
        Family::counter(
            "network_receive_errs_total",
            "Receive errors the driver counted.",
            Unit::None,
        )
        .labels(&["device"])
        .node("node_network_receive_errs_total"),
        |c| c.rx_errors,
    ),
    (
        Family::counter(
            "network_receive_drop_total",
            "Received packets dropped by the interface.",
            Unit::None,
        )
        .labels(&["device"])
        .node("node_network_receive_drop_total"),
        |c| c.rx_dropped,
    ),
    (
        Family::counter(
            "network_transmit_bytes_total",
            "Bytes sent by the interface.",
            Unit::Bytes,
        )
        .labels(&["device"])
        .node("node_network_transmit_bytes_total"),
        |c| c.tx_bytes,
    ),
    (
        Family::counter(
            "network_transmit_packets_total",
            "Packets sent by the interface.",
            Unit::None,
        )
        .labels(&["device"])
        .node("node_network_transmit_packets_total"),
        |c| c.tx_packets,
    ),
    (
        Family::counter(
            "network_transmit_errs_total",
            "Transmit errors the driver counted.",
            Unit::None,
        )
        .labels(&["device"])
        .node("node_network_transmit_errs_total"),
        |c| c.tx_errors,
    ),
    (
        Family::counter(
            "network_transmit_drop_total",
            "Packets to send dropped by the interface.",
            Unit::None,
        )
        .labels(&["device"])
        .node("node_network_transmit_drop_total"),
        |c| c.tx_dropped,
    ),
];

#[derive(Serialize)]
struct SeedNetwork<'a> {
    traffic: SeedTraffic,
    addresses: Ordered<'a, Vec<Ipv4Addr>>,
}

#[derive(Serialize)]
struct SeedTraffic {
    #[serde(serialize_with = "ser_bytes")]
    sent: u64,
    #[serde(serialize_with = "ser_bytes")]
    recv: u64,
}

#[derive(Serialize)]
struct RawNetwork<'a> {
    sent_bytes_total: u64,
    recv_bytes_total: u64,
    interfaces: RawInterfaces<'a>,
    addresses: Ordered<'a, Vec<Ipv4Addr>>,
    addresses_v6: Ordered<'a, Vec<Ipv6Addr>>,
}

/// A list of pairs serialized as a JSON object, keeping its order.
struct Ordered<'a, V>(&'a [(String, V)]);

impl<V: Serialize> Serialize for Ordered<'_, V> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in self.0 {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

struct RawInterfaces<'a>(&'a [(String, IfCounters, Option<Rates>)]);

impl Serialize for RawInterfaces<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Entry<'a> {
            #[serde(flatten)]
            counters: &'a IfCounters,
            #[serde(flatten)]
            rates: &'a Option<Rates>,
        }
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (name, counters, rates) in self.0 {
            map.serialize_entry(name, &Entry { counters, rates })?;
        }
        map.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

    #[test]
    fn odd_interface_names_and_counters_touching_the_colon() {
        let text =
            std::fs::read_to_string(format!("{FIXTURES}/node_exporter/proc/net/dev")).unwrap();
        let parsed = parse_net_dev(&text);
        let names: Vec<&str> = parsed.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "tun0",
                "veth4B09XN",
                "lo",
                "eth0",
                "lxcbr0",
                "wlan0",
                "docker0",
                "ibr10:30",
                "flannel.1",
                "💩0"
            ]
        );
        let eth0 = parsed[3].1;
        assert_eq!(
            (eth0.rx_bytes, eth0.rx_packets),
            (68_210_035_552, 520_993_275)
        );
        assert_eq!(
            (eth0.tx_bytes, eth0.tx_packets),
            (9_315_587_528, 43_451_486)
        );
        assert_eq!(parsed[8].1.tx_dropped, 64);
    }

    #[test]
    fn header_and_truncated_lines_are_skipped() {
        let text = "Inter-|   Receive\n face |bytes\n  eth0: 1 2 3\n    lo: 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16\n";
        let parsed = parse_net_dev(text);
        assert_eq!(parsed.len(), 1);
        assert_eq!((parsed[0].0.as_str(), parsed[0].1.tx_bytes), ("lo", 9));
    }

    #[test]
    fn aliases_are_their_own_entries_and_order_is_kept() {
        let ip = |s: &str| s.parse::<Ipv4Addr>().unwrap();
        let grouped = group_by_interface(
            [
                ("lo", "127.0.0.1"),
                ("eth0", "10.0.0.2"),
                ("eth0:1", "10.0.0.3"),
                ("eth0", "10.0.0.4"),
            ]
            .into_iter()
            .map(|(n, a)| (n.to_string(), ip(a))),
        );
        assert_eq!(
            grouped,
            [
                ("lo".to_string(), vec![ip("127.0.0.1")]),
                ("eth0".to_string(), vec![ip("10.0.0.2"), ip("10.0.0.4")]),
                ("eth0:1".to_string(), vec![ip("10.0.0.3")]),
            ]
        );
    }

    fn dev_line(name: &str, rx: u64, tx: u64) -> String {
        format!("{name:>6}: {rx} 1 0 0 0 0 0 0 {tx} 1 0 0 0 0 0 0\n")
    }

    /// Runs the source over a sequence of /proc/net/dev contents in a scratch root.
    fn run(samples: &[impl AsRef<[u8]>]) -> Vec<serde_json::Value> {
        let root = std::env::temp_dir().join(format!(
            "pocketses-net-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::create_dir_all(root.join("proc/net")).unwrap();
        let mut source = Network::new(HostFs::new(&root)).unwrap();
        let out = samples
            .iter()
            .map(|text| {
                std::fs::write(root.join("proc/net/dev"), text).unwrap();
                serde_json::to_value(
                    crate::plugin::collect_now(&mut source)
                        .unwrap()
                        .view(Format::Raw),
                )
                .unwrap()
            })
            .collect();
        std::fs::remove_dir_all(&root).unwrap();
        out
    }

    #[test]
    fn a_name_that_is_not_utf8_is_made_valid_and_costs_nothing_else() {
        // Linux allows any bytes but NUL, '/', ':' and whitespace in a name.
        let mut dev =
            b"Inter-|   Receive\n face |bytes\n  bad\xffx: 7 1 0 0 0 0 0 0 9 1 0 0 0 0 0 0\n"
                .to_vec();
        dev.extend_from_slice(dev_line("lo", 100, 100).as_bytes());
        let snaps = run(&[dev]);
        let interfaces = snaps[0]["interfaces"].as_object().unwrap();
        let names: Vec<&String> = interfaces.keys().collect();
        assert_eq!(names, ["bad\u{fffd}x", "lo"]);
        assert_eq!(interfaces["bad\u{fffd}x"]["tx_bytes"], 9);
        assert_eq!(snaps[0]["recv_bytes_total"], 107);
    }

    #[test]
    fn names_that_read_the_same_give_one_series() {
        let mut dev = b"  a\xffx: 7 1 0 0 0 0 0 0 9 1 0 0 0 0 0 0\n".to_vec();
        dev.extend_from_slice(b"  a\xfex: 5 1 0 0 0 0 0 0 3 1 0 0 0 0 0 0\n");
        let section = NetworkSection {
            sent_bytes: 0,
            recv_bytes: 0,
            interfaces: parse_net_dev(&String::from_utf8_lossy(&dev))
                .into_iter()
                .map(|(name, counters)| (name, counters, None))
                .collect(),
            addresses: Vec::new(),
            addresses_v6: Vec::new(),
        };
        let mut samples = Vec::new();
        section.samples(&mut samples);
        let received: Vec<(Vec<(&str, &str)>, f64)> = (samples.iter())
            .filter(|s| s.family.name == "network_receive_bytes_total")
            .map(|s| (s.labels().collect(), s.value))
            .collect();
        assert_eq!(received, [(vec![("device", "a\u{fffd}x")], 7.0)]);
    }

    #[test]
    fn ipv6_addresses_are_read_compressed_and_grouped_by_interface() {
        let text = "00000000000000000000000000000001 01 80 10 80       lo\n\
                    fd000000000000000000000000000002 04 40 00 82     eth0\n\
                    garbage\n\
                    fe8000000000000000fc00fffe000001 04 40 20 80     eth0\n\
                    20010db8000000000001000000000001 05 40 00 00 bad\u{fffd}x\n";
        let shown: Vec<(String, Vec<String>)> = parse_if_inet6(text)
            .into_iter()
            .map(|(name, ips)| (name, ips.iter().map(ToString::to_string).collect()))
            .collect();
        let expected = [
            ("lo", vec!["::1"]),
            ("eth0", vec!["fd00::2", "fe80::fc:ff:fe00:1"]),
            ("bad\u{fffd}x", vec!["2001:db8::1:0:0:1"]), // RFC 5952: the first of two equal zero runs
        ];
        let expected: Vec<(String, Vec<String>)> = expected
            .into_iter()
            .map(|(n, ips)| (n.to_string(), ips.into_iter().map(String::from).collect()))
            .collect();
        assert_eq!(shown, expected);
    }

    #[test]
    fn totals_never_decrease_and_resets_never_give_negative_rates() {
        let snaps = run(&[
            dev_line("lo", 100, 100) + &dev_line("veth0", 1000, 2000),
            // veth0 disappears: the totals keep what it carried.
            dev_line("lo", 150, 130),
            // lo's counters reset (driver reload): its increase is its new value.
            dev_line("lo", 20, 10),
        ]);
        let totals: Vec<(u64, u64)> = snaps
            .iter()
            .map(|s| {
                (
                    s["recv_bytes_total"].as_u64().unwrap(),
                    s["sent_bytes_total"].as_u64().unwrap(),
                )
            })
            .collect();
        assert_eq!(totals, [(1100, 2100), (1150, 2130), (1170, 2140)]);
        assert!(
            snaps[0]["interfaces"]["lo"]
                .get("rx_bytes_per_second")
                .is_none(),
            "no rate on the first snapshot"
        );
        for s in &snaps[1..] {
            let rate = s["interfaces"]["lo"]["rx_bytes_per_second"]
                .as_f64()
                .unwrap();
            assert!(rate > 0.0 && rate.is_finite(), "{rate}");
        }
    }
}
