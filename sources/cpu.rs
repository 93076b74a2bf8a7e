//! `cpu`: online CPU count, busy percent per CPU and overall since the previous snapshot,
//! time per mode, and frequency.

use std::borrow::Cow;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde::Serialize;

use crate::encode::humanize::{one_decimal, ser_one_decimal};
use crate::hostfs::{HostFs, KeptFile};
use crate::model::{Family, Format, Sample, Section, Unit};
use crate::plugin::{Source, SourcePlugin};
use crate::settings::Declared;

inventory::submit! {
    SourcePlugin {
        name: "cpu",
        aliases: &[],
        description: "online CPU count, utilization per CPU and overall, time per mode, frequency",
        on_by_default: Some(1),
        settings: Declared::NONE,
        build: |ctx| Ok(Box::new(Cpu::new(ctx.host.clone()))),
    }
}

/// Cumulative time per mode from one `cpu` line of `/proc/stat`, in clock ticks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuTimes {
    pub user: u64,
    pub nice: u64,
    pub system: u64,
    pub idle: u64,
    pub iowait: u64,
    pub irq: u64,
    pub softirq: u64,
    pub steal: u64,
}

impl CpuTimes {
    /// All modes; guest time is left out because the kernel already counts it in user/nice.
    fn total(&self) -> u64 {
        self.user
            + self.nice
            + self.system
            + self.idle
            + self.iowait
            + self.irq
            + self.softirq
            + self.steal
    }

    /// (mode, ticks) in `/proc/stat`'s column order.
    fn by_mode(&self) -> [(&'static str, u64); 8] {
        [
            ("user", self.user),
            ("nice", self.nice),
            ("system", self.system),
            ("idle", self.idle),
            ("iowait", self.iowait),
            ("irq", self.irq),
            ("softirq", self.softirq),
            ("steal", self.steal),
        ]
    }

    /// Per-mode increase since `earlier`; a mode that went backwards (a counter reset)
    /// contributes nothing rather than a huge value.
    fn since(&self, earlier: &CpuTimes) -> CpuTimes {
        CpuTimes {
            user: self.user.saturating_sub(earlier.user),
            nice: self.nice.saturating_sub(earlier.nice),
            system: self.system.saturating_sub(earlier.system),
            idle: self.idle.saturating_sub(earlier.idle),
            iowait: self.iowait.saturating_sub(earlier.iowait),
            irq: self.irq.saturating_sub(earlier.irq),
            softirq: self.softirq.saturating_sub(earlier.softirq),
            steal: self.steal.saturating_sub(earlier.steal),
        }
    }

    /// Time in every mode but idle and iowait.
    fn busy(&self) -> u64 {
        self.total() - self.idle - self.iowait
    }

    /// For a span from [`since`](Self::since): 100 ÷ its total, the factor that turns each
    /// mode's ticks into its percent share; 0.0 for an empty span.
    fn percent_factor(&self) -> f64 {
        match self.total() {
            0 => 0.0,
            total => 100.0 / total as f64,
        }
    }

    /// Busy percent over the span since `earlier`. Sums are compared, as psutil does: a
    /// single mode may dip (iowait is documented to go backwards on tickless kernels) without
    /// making the interval absurd; a span whose total did not advance (a reset) reads 0.0.
    fn busy_percent_since(&self, earlier: &CpuTimes) -> f64 {
        let total = self.total().saturating_sub(earlier.total());
        if total == 0 {
            return 0.0;
        }
        let busy = self.busy().saturating_sub(earlier.busy());
        (busy as f64 * 100.0 / total as f64).min(100.0)
    }
}

/// One `/proc/stat` sample: the all-CPU line and the online CPUs by id.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StatSample {
    pub all: CpuTimes,
    pub per_cpu: Vec<(u32, CpuTimes)>,
}

/// Parses the `cpu` lines of `/proc/stat`. Offline CPUs have no line, so ids can have gaps;
/// missing trailing columns (old kernels) read as 0.
pub fn parse_stat(text: &str) -> Option<StatSample> {
    let mut sample = StatSample::default();
    let mut seen_all = false;
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("cpu") else {
            if seen_all {
                break; // the cpu lines come first; skip the long intr/softirq lines
            }
            continue;
        };
        let (id, values) = rest.split_once(|c: char| c.is_ascii_whitespace())?;
        let mut fields = values.split_ascii_whitespace();
        let mut n = [0u64; 8];
        for slot in &mut n {
            *slot = match fields.next() {
                Some(f) => f.parse().ok()?,
                None => 0,
            };
        }
        let times = CpuTimes {
            user: n[0],
            nice: n[1],
            system: n[2],
            idle: n[3],
            iowait: n[4],
            irq: n[5],
            softirq: n[6],
            steal: n[7],
        };
        if id.is_empty() {
            sample.all = times;
            seen_all = true;
        } else {
            sample.per_cpu.push((id.parse().ok()?, times));
        }
    }
    (seen_all && !sample.per_cpu.is_empty()).then_some(sample)
}

/// Busy percent per online CPU (in `now`'s order) over the span since `before`. A CPU absent
/// from `before` (it just came online) reports 0.0 for this span.
pub fn utilization(before: &StatSample, now: &StatSample) -> Vec<f64> {
    now.per_cpu
        .iter()
        .map(|(id, times)| {
            before
                .per_cpu
                .iter()
                .find(|(b, _)| b == id)
                .map_or(0.0, |(_, earlier)| times.busy_percent_since(earlier))
        })
        .collect()
}

/// MHz; `None` where the host does not say (`seed` shows 0.0, `raw` null).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Frequency {
    pub current_mhz: Option<f64>,
    pub max_mhz: Option<f64>,
    pub min_mhz: Option<f64>,
}

/// Mean over `cpus` of a cpufreq file (kHz), in MHz; `None` where no CPU has it.
fn cpufreq_mean_mhz(host: &HostFs, cpus: &[u32], file: &str) -> Option<f64> {
    let values: Vec<f64> = cpus
        .iter()
        .filter_map(|id| {
            host.read_trimmed(format!("/sys/devices/system/cpu/cpu{id}/cpufreq/{file}"))?
                .parse::<f64>()
                .ok()
        })
        .collect();
    (!values.is_empty()).then(|| values.iter().sum::<f64>() / values.len() as f64 / 1000.0)
}

/// How often `/proc/cpuinfo` is read where the host has no cpufreq.
const CPUINFO_REFRESH: Duration = Duration::from_secs(10);

/// Reads CPU frequency cheaply enough for every tick. cpufreq's max/min are policy limits,
/// read again only when the set of online CPUs changes; the current value is read each tick
/// from cpufreq or, where the host has none, from `/proc/cpuinfo` at most every
/// [`CPUINFO_REFRESH`]: generating that file is costly, and hosts without cpufreq are mostly
/// VMs whose clock does not change. Means are over the online CPUs; `None` where unknown.
struct FrequencyReader {
    host: HostFs,
    cpus: Vec<u32>,
    has_cpufreq: bool,
    last: Frequency,
    cpuinfo_read: Option<Instant>,
}

impl FrequencyReader {
    fn new(host: HostFs) -> Self {
        FrequencyReader {
            host,
            cpus: Vec::new(),
            has_cpufreq: false,
            last: Frequency::default(),
            cpuinfo_read: None,
        }
    }

    fn read(&mut self, cpus: &[u32], now: Instant) -> Frequency {
        if cpus != self.cpus {
            self.cpus = cpus.to_vec();
            let limit = |file| cpufreq_mean_mhz(&self.host, cpus, file);
            let (max, min) = (limit("scaling_max_freq"), limit("scaling_min_freq"));
            self.has_cpufreq = max.is_some();
            (self.last.max_mhz, self.last.min_mhz) = (max, min);
            self.cpuinfo_read = None;
        }
        if self.has_cpufreq {
            self.last.current_mhz = cpufreq_mean_mhz(&self.host, cpus, "scaling_cur_freq")
                .or_else(|| cpufreq_mean_mhz(&self.host, cpus, "cpuinfo_cur_freq"));
        } else if self
            .cpuinfo_read
            .is_none_or(|t| now.duration_since(t) >= CPUINFO_REFRESH)
        {
            self.cpuinfo_read = Some(now);
            let text = self.host.read_trimmed("/proc/cpuinfo").unwrap_or_default();
            self.last.current_mhz = cpuinfo_mhz(&text);
        }
        self.last
    }
}

/// Mean of the `cpu MHz` lines of `/proc/cpuinfo` (absent on many ARM hosts).
fn cpuinfo_mhz(text: &str) -> Option<f64> {
    let values: Vec<f64> = text
        .lines()
        .filter(|l| l.starts_with("cpu MHz"))
        .filter_map(|l| l.split(':').nth(1)?.trim().parse().ok())
        .collect();
    (!values.is_empty()).then(|| values.iter().sum::<f64>() / values.len() as f64)
}

/// USER_HZ: the unit of `/proc/stat` times (100 where the system does not say).
fn ticks_per_second() -> f64 {
    use nix::unistd::{sysconf, SysconfVar};
    match sysconf(SysconfVar::CLK_TCK) {
        Ok(Some(hz)) if hz > 0 => hz as f64,
        _ => 100.0,
    }
}

pub struct Cpu {
    stat: KeptFile,
    buf: String,
    previous: StatSample,
    frequency: FrequencyReader,
    ticks_per_second: f64,
}

impl Cpu {
    /// Takes the baseline sample that the first snapshot's utilization is measured from.
    /// Without one (unreadable `/proc/stat`) the first utilization reads 0.0.
    pub fn new(host: HostFs) -> Self {
        let mut cpu = Cpu {
            stat: host.kept("/proc/stat"),
            frequency: FrequencyReader::new(host),
            buf: String::new(),
            previous: StatSample::default(),
            ticks_per_second: ticks_per_second(),
        };
        cpu.previous = cpu.sample().unwrap_or_default();
        cpu
    }

    fn sample(&mut self) -> anyhow::Result<StatSample> {
        self.stat.read_into(&mut self.buf)?;
        parse_stat(&self.buf).ok_or_else(|| anyhow::anyhow!("/proc/stat has no cpu lines"))
    }
}

#[async_trait]
impl Source for Cpu {
    async fn collect(&mut self) -> anyhow::Result<Box<dyn Section>> {
        let now = self.sample()?;
        let per_cpu = utilization(&self.previous, &now);
        let ids: Vec<u32> = now.per_cpu.iter().map(|(id, _)| *id).collect();
        let span = now.all.since(&self.previous.all);
        let section = CpuSection {
            count: ids.len(),
            per_cpu_percent: per_cpu,
            frequency: self.frequency.read(&ids, Instant::now()),
            ids,
            ticks: now.all,
            per_cpu_ticks: now.per_cpu.clone(),
            span,
            hz: self.ticks_per_second,
        };
        self.previous = now;
        Ok(Box::new(section))
    }
}

/// The `cpu` section: numbers only; the views below shape them per format.
pub struct CpuSection {
    count: usize,
    /// Exact busy percent per online CPU; `seed` rounds them.
    per_cpu_percent: Vec<f64>,
    frequency: Frequency,
    ids: Vec<u32>,
    /// Cumulative clock ticks (USER_HZ) per mode, all CPUs; `hz` turns them into seconds.
    ticks: CpuTimes,
    /// The same per online CPU, by id: node_exporter's `node_cpu_seconds_total{cpu,mode}`.
    per_cpu_ticks: Vec<(u32, CpuTimes)>,
    /// Ticks per mode since the previous snapshot, all CPUs.
    span: CpuTimes,
    hz: f64,
}

impl Section for CpuSection {
    fn view(&self, format: Format) -> Box<dyn erased_serde::Serialize + '_> {
        match format {
            Format::Seed => Box::new(SeedCpu {
                count: self.count,
                utilization: {
                    // The original tool averaged the rounded per-CPU values.
                    let per_cpu: Vec<f64> = self
                        .per_cpu_percent
                        .iter()
                        .map(|&p| one_decimal(p))
                        .collect();
                    SeedUtilization {
                        overall: mean(&per_cpu),
                        per_cpu,
                    }
                },
                frequency: SeedFrequency(self.frequency),
            }),
            Format::Raw => Box::new(RawCpu {
                count: self.count,
                // From the same per-mode ticks as mode_percent, so that the two agree.
                utilization_percent: self.span.busy() as f64 * self.span.percent_factor(),
                per_cpu: self
                    .ids
                    .iter()
                    .zip(&self.per_cpu_percent)
                    .map(|(&id, &utilization_percent)| RawPerCpu {
                        id,
                        utilization_percent,
                    })
                    .collect(),
                frequency_current_mhz: self.frequency.current_mhz,
                frequency_max_mhz: self.frequency.max_mhz,
                frequency_min_mhz: self.frequency.min_mhz,
                seconds_total: ModeValues::scaled(&self.ticks, 1.0 / self.hz),
                mode_percent: ModeValues::scaled(&self.span, self.span.percent_factor()),
            }),
        }
    }

    fn samples<'a>(&'a self, out: &mut Vec<Sample<'a>>) {
        out.push(Sample::new(&ONLINE, [], self.count as f64));
        // Scaled as raw's seconds_total is, so that the two agree to the last bit.
        for (id, ticks) in &self.per_cpu_ticks {
            for (mode, seconds) in ModeValues::scaled(ticks, 1.0 / self.hz).0 {
                let cpu = Cow::Owned(id.to_string());
                out.push(Sample::new(&SECONDS, [cpu, Cow::Borrowed(mode)], seconds));
            }
        }
        // raw's utilization_percent over 100, so that the two outputs agree.
        let busy = self.span.busy() as f64 * self.span.percent_factor() / 100.0;
        out.push(Sample::new(&UTILIZATION, [], busy));
        for (id, percent) in self.ids.iter().zip(&self.per_cpu_percent) {
            let cpu = Cow::Owned(id.to_string());
            out.push(Sample::new(&UTILIZATION_BY_CPU, [cpu], percent / 100.0));
        }
        let f = &self.frequency;
        for (family, mhz) in [
            (&FREQUENCY, f.current_mhz),
            (&FREQUENCY_MAX, f.max_mhz),
            (&FREQUENCY_MIN, f.min_mhz),
        ] {
            if let Some(mhz) = mhz {
                out.push(Sample::new(family, [], mhz * 1e6));
            }
        }
    }
}

static ONLINE: Family = Family::gauge("cpu_online", "Online logical CPUs.", Unit::None);

/// Per CPU and mode, as node_exporter's `node_cpu_seconds_total{cpu,mode}`, so its
/// dashboards work; the all-CPU figure is their sum.
static SECONDS: Family = Family::counter(
    "cpu_seconds_total",
    "Time each CPU spent in each mode (guest time is within user and nice).",
    Unit::Seconds,
)
.labels(&["cpu", "mode"])
.node("node_cpu_seconds_total");

static UTILIZATION: Family = Family::gauge(
    "cpu_utilization_ratio",
    "Busy share of all CPUs (not idle, not iowait) since the previous snapshot.",
    Unit::Ratio,
);

static UTILIZATION_BY_CPU: Family = Family::gauge(
    "cpu_utilization_by_cpu_ratio",
    "Busy share of each online CPU (not idle, not iowait) since the previous snapshot.",
    Unit::Ratio,
)
.labels(&["cpu"]);

static FREQUENCY: Family = Family::gauge(
    "cpu_frequency_hertz",
    "Current clock, mean over the online CPUs (cpufreq, else /proc/cpuinfo).",
    Unit::Hertz,
);

static FREQUENCY_MAX: Family = Family::gauge(
    "cpu_frequency_max_hertz",
    "Highest clock the cpufreq policy allows, mean over the online CPUs.",
    Unit::Hertz,
);

static FREQUENCY_MIN: Family = Family::gauge(
    "cpu_frequency_min_hertz",
    "Lowest clock the cpufreq policy allows, mean over the online CPUs.",
    Unit::Hertz,
);

#[derive(Serialize)]
struct SeedCpu {
    count: usize,
    utilization: SeedUtilization,
    frequency: SeedFrequency,
}

#[derive(Serialize)]
struct SeedUtilization {
    #[serde(serialize_with = "ser_one_decimal")]
    overall: f64,
    per_cpu: Vec<f64>,
}

fn mean(values: &[f64]) -> f64 {
    if values.is_empty() {
        0.0
    } else {
        values.iter().sum::<f64>() / values.len() as f64
    }
}

/// The original tool's `{"current","max","min"}`: 0.0 where unknown, current rounded.
struct SeedFrequency(Frequency);

impl Serialize for SeedFrequency {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Seed {
            current: f64,
            max: f64,
            min: f64,
        }
        Seed {
            current: one_decimal(self.0.current_mhz.unwrap_or(0.0)),
            max: self.0.max_mhz.unwrap_or(0.0),
            min: self.0.min_mhz.unwrap_or(0.0),
        }
        .serialize(s)
    }
}

#[derive(Serialize)]
struct RawCpu {
    count: usize,
    utilization_percent: f64,
    per_cpu: Vec<RawPerCpu>,
    frequency_current_mhz: Option<f64>,
    frequency_max_mhz: Option<f64>,
    frequency_min_mhz: Option<f64>,
    seconds_total: ModeValues,
    mode_percent: ModeValues,
}

#[derive(Serialize)]
struct RawPerCpu {
    id: u32,
    utilization_percent: f64,
}

/// One value per CPU mode, as a JSON object in [`CpuTimes::by_mode`]'s order.
struct ModeValues([(&'static str, f64); 8]);

impl ModeValues {
    fn scaled(t: &CpuTimes, factor: f64) -> Self {
        ModeValues(
            t.by_mode()
                .map(|(mode, ticks)| (mode, ticks as f64 * factor)),
        )
    }
}

impl Serialize for ModeValues {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (mode, value) in &self.0 {
            map.serialize_entry(mode, value)?;
        }
        map.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

    fn stat(case: &str) -> StatSample {
        let text = std::fs::read_to_string(format!("{FIXTURES}/{case}/proc/stat")).unwrap();
        parse_stat(&text).unwrap()
    }

    fn ids(s: &StatSample) -> Vec<u32> {
        s.per_cpu.iter().map(|(id, _)| *id).collect()
    }

    #[test]
    fn parses_every_mode_including_steal() {
        let s = stat("gopsutil/stat_424");
        assert_eq!(
            s.all,
            CpuTimes {
                user: 23644,
                nice: 6695,
                system: 4764,
                idle: 134_931_750,
                iowait: 22115,
                irq: 0,
                softirq: 473,
                steal: 5892,
            }
        );
        assert_eq!(s.per_cpu[1].1.steal, 1765);
    }

    #[test]
    fn keeps_cpu_ids_as_the_kernel_numbers_them() {
        assert_eq!(ids(&stat("node_exporter")), (0..8).collect::<Vec<_>>());
        assert_eq!(ids(&stat("telegraf/default/0")).len(), 16);
    }

    #[test]
    fn a_cpu_going_offline_drops_out_of_the_next_snapshot() {
        let (before, after) = (
            stat("telegraf/cpu_count_decrease/0"),
            stat("telegraf/cpu_count_decrease/1"),
        );
        assert_eq!(ids(&before), [0, 1]);
        assert_eq!(ids(&after), [0]);
        let u = utilization(&before, &after);
        assert_eq!(u.len(), 1);
        // cpu0: busy 7600+3991+1375+2088 - (5006+2060+741+1220) over the total's increase.
        let busy = (7600 + 3991 + 1375 + 2088 - 5006 - 2060 - 741 - 1220) as f64;
        let total = busy + (1_572_632 - 960_064 + 677 - 467) as f64;
        assert!((u[0] - busy * 100.0 / total).abs() < 1e-9, "{u:?}");
    }

    #[test]
    fn counters_going_backwards_never_give_absurd_percentages() {
        let samples: Vec<_> = (0..3)
            .map(|i| stat(&format!("telegraf/cpu_times_decrease/{i}")))
            .collect();
        // 0 -> 1: the total went backwards (iowait 80 -> 40): a reset, read as 0.0.
        assert_eq!(utilization(&samples[0], &samples[1]), [0.0]);
        // 1 -> 2: user +18, irq +2, iowait +80 => 20 busy of 100.
        assert_eq!(utilization(&samples[1], &samples[2]), [20.0]);
        let span = samples[1].all.since(&samples[0].all);
        assert_eq!((span.iowait, span.irq, span.user), (0, 0, 20));
    }

    #[test]
    fn a_cpu_coming_online_reads_zero_for_its_first_span() {
        let (before, after) = (
            stat("telegraf/cpu_count_decrease/1"),
            stat("telegraf/cpu_count_decrease/0"),
        );
        assert_eq!(utilization(&before, &after)[1], 0.0);
    }

    #[test]
    fn garbage_is_rejected_not_misread() {
        assert_eq!(parse_stat(""), None);
        assert_eq!(parse_stat("intr 1 2 3\n"), None);
        assert_eq!(parse_stat("cpu  1 2 x 4\ncpu0 1 2 3 4\n"), None);
        // Old kernels print only four columns: the rest read as zero.
        let old = parse_stat("cpu  1 2 3 4\ncpu0 1 2 3 4\n").unwrap();
        assert_eq!(old.all.iowait, 0);
    }

    #[test]
    fn frequency_is_the_mean_over_online_cpus_from_cpufreq() {
        let mut reader = FrequencyReader::new(HostFs::new(format!("{FIXTURES}/node_exporter")));
        let f = reader.read(&[0, 1, 2, 3], Instant::now());
        let current = f.current_mhz.unwrap();
        assert!((current - (1_699_981.0 * 2.0 + 8000.0 * 2.0) / 4000.0).abs() < 1e-9);
        assert_eq!((f.max_mhz, f.min_mhz), (Some(3950.0), Some(400.5)));
    }

    /// The mean of the eight `cpu MHz` lines of node_exporter's and prometheus_procfs'
    /// cpuinfo (the same capture): 799.998, 800.037, 800.010, 800.028, 799.989, 800.083,
    /// 800.017 and 800.030.
    const CPUINFO_MEAN_MHZ: f64 = 6400.192 / 8.0;

    #[test]
    fn frequency_without_cpufreq_falls_back_to_cpuinfo_else_unknown() {
        let at = |case: &str, cpus: &[u32]| {
            FrequencyReader::new(HostFs::new(format!("{FIXTURES}/{case}")))
                .read(cpus, Instant::now())
        };
        // ARM without `cpu MHz` lines: nothing known.
        assert_eq!(at("gopsutil/cpuinfo_arm_1037", &[0]), Frequency::default());
        // prometheus_procfs' cpu0 cpufreq is a dangling capture of a symlink: cpuinfo it is.
        let f = at("prometheus_procfs", &[0]);
        assert!(
            (f.current_mhz.unwrap() - CPUINFO_MEAN_MHZ).abs() < 1e-9,
            "{f:?}"
        );
        assert_eq!((f.max_mhz, f.min_mhz), (None, None));
        // node_exporter captured cpufreq for cpu0-3 only; cpu4-7 have none.
        let f = at("node_exporter", &[4, 5]);
        assert!(
            (f.current_mhz.unwrap() - CPUINFO_MEAN_MHZ).abs() < 1e-9,
            "{f:?}"
        );
        assert_eq!((f.max_mhz, f.min_mhz), (None, None));
    }

    #[test]
    fn unknown_frequencies_are_zero_in_seed_and_null_in_raw() {
        let section = CpuSection {
            frequency: Frequency {
                current_mhz: Some(2596.0),
                max_mhz: None,
                min_mhz: None,
            },
            ..section(vec![1.0])
        };
        let seed = serde_json::to_value(section.view(Format::Seed)).unwrap();
        assert_eq!(
            seed["frequency"],
            serde_json::json!({"current": 2596.0, "max": 0.0, "min": 0.0})
        );
        let raw = serde_json::to_value(section.view(Format::Raw)).unwrap();
        assert_eq!(
            (
                &raw["frequency_current_mhz"],
                &raw["frequency_max_mhz"],
                &raw["frequency_min_mhz"]
            ),
            (&serde_json::json!(2596.0), &Value::Null, &Value::Null)
        );
    }

    #[test]
    fn unknown_frequencies_have_no_sample() {
        let section = CpuSection {
            frequency: Frequency {
                current_mhz: Some(2596.0),
                max_mhz: None,
                min_mhz: None,
            },
            ..section(vec![1.0])
        };
        let mut samples = Vec::new();
        section.samples(&mut samples);
        let hertz: Vec<(&str, f64)> = (samples.iter())
            .filter(|s| s.family.unit == Unit::Hertz)
            .map(|s| (s.family.name, s.value))
            .collect();
        assert_eq!(hertz, [("cpu_frequency_hertz", 2_596_000_000.0)]);
    }

    /// The raw view of the span from sample `before` to sample `after` of a fixture case.
    fn raw_between(case: &str, before: usize, after: usize) -> Value {
        let root = std::env::temp_dir().join(format!(
            "pocketses-cpu-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::create_dir_all(root.join("proc")).unwrap();
        let copy = |i: usize| {
            std::fs::copy(
                format!("{FIXTURES}/{case}/{i}/proc/stat"),
                root.join("proc/stat"),
            )
            .unwrap()
        };
        copy(before);
        let mut cpu = Cpu::new(HostFs::new(&root));
        copy(after);
        let raw = serde_json::to_value(
            crate::plugin::collect_now(&mut cpu)
                .unwrap()
                .view(Format::Raw),
        )
        .unwrap();
        std::fs::remove_dir_all(&root).unwrap();
        raw
    }

    #[test]
    fn raw_utilization_and_mode_shares_come_from_the_same_span() {
        for (case, before, after) in [
            ("telegraf/default", 0, 1),
            ("telegraf/cpu_count_decrease", 0, 1),
            ("telegraf/cpu_times_decrease", 0, 1),
            ("telegraf/cpu_times_decrease", 1, 2),
        ] {
            let raw = raw_between(case, before, after);
            let mode = |m: &str| raw["mode_percent"][m].as_f64().unwrap();
            let utilization = raw["utilization_percent"].as_f64().unwrap();
            let shares: f64 = [
                "user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal",
            ]
            .into_iter()
            .map(mode)
            .sum();
            assert!(
                (shares - 100.0).abs() < 1e-9,
                "{case} {before}->{after}: {raw}"
            );
            assert!(
                (100.0 - mode("idle") - mode("iowait") - utilization).abs() < 1e-9,
                "{case} {before}->{after}: {raw}"
            );
        }
        // iowait went backwards (80 -> 40) while user rose by 20: per mode, the span holds
        // 20 ticks of user and nothing else.
        let raw = raw_between("telegraf/cpu_times_decrease", 0, 1);
        assert_eq!(
            (&raw["utilization_percent"], &raw["mode_percent"]["user"]),
            (&serde_json::json!(100.0), &serde_json::json!(100.0))
        );
    }

    /// A section with these per-CPU percents and nothing else known.
    fn section(per_cpu_percent: Vec<f64>) -> CpuSection {
        CpuSection {
            count: per_cpu_percent.len(),
            ids: (0..per_cpu_percent.len() as u32).collect(),
            per_cpu_percent,
            frequency: Frequency::default(),
            ticks: CpuTimes::default(),
            per_cpu_ticks: Vec::new(),
            span: CpuTimes::default(),
            hz: 100.0,
        }
    }

    #[test]
    fn seed_view_matches_the_original_shape() {
        let section = CpuSection {
            frequency: Frequency {
                current_mhz: Some(799.96),
                max_mhz: Some(4800.0),
                min_mhz: Some(400.0),
            },
            ..section(vec![27.64, 50.96])
        };
        let json = serde_json::to_string(&section.view(Format::Seed)).unwrap();
        assert_eq!(
            json,
            r#"{"count":2,"utilization":{"overall":39.3,"per_cpu":[27.6,51.0]},"frequency":{"current":800.0,"max":4800.0,"min":400.0}}"#
        );
    }
}
