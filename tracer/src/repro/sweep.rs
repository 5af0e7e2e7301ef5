//! `tracer repro --sweep`: the reproducer run once per kick period, as a
//! table (CSV and JSON) and a progress-vs-period plot (seed 001's figure).
//!
//! Every row is the sum over the vCPUs of one [`super::run`] report; the
//! JSON table keeps those reports too, so a row can be checked against the
//! reproducer's own counts. Counts the reproducer cannot see (#AC exits,
//! interrupted punishments, the classifier's verdict) come from the
//! tracer's own probes around each run ([`super::sweep_trace`]), with a
//! second count of the EINTR returns and kicks; where the probes cannot be
//! attached they are left empty with the reason, except where the CPU
//! cannot trap split locks at all (then there are none).

use std::{collections::BTreeMap, fmt::Write as _, path::Path, time::Duration};

use anyhow::Context as _;
use plotters::prelude::*;
use serde::{Deserialize, Serialize};

use super::{
    Kick, ReproConfig, ReproReport,
    sweep_trace::{SweepTracer, TracedRun},
};

/// Most periods one sweep runs (each runs for the whole `--duration`).
pub const MAX_POINTS: u64 = 200;
/// Step used when neither `FROM..TO:STEP` nor `--step` gives one.
pub const DEFAULT_STEP: Duration = Duration::from_millis(1);
/// `tracer repro --sweep` JSON table layout version.
pub const TABLE_VERSION: u32 = 1;
/// HZ assumed when no kernel config can be read (Debian's and Fedora's
/// x86 kernels are built with HZ=1000 or 250; 250 gives the longer sleep).
pub const ASSUMED_HZ: u32 = 250;

/// A `--sweep` argument that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SweepError {
    /// Not `FROM..TO[:STEP]`.
    #[error(
        "expected FROM..TO[:STEP] such as 1ms..20ms or 1ms..20ms:500us (plain numbers are milliseconds), got {0:?}"
    )]
    Syntax(String),
    /// One of FROM, TO or STEP is not a duration.
    #[error("bad {what} in --sweep {text:?}: {reason}")]
    Value {
        /// `FROM`, `TO` or `STEP`.
        what: &'static str,
        /// The whole argument.
        text: String,
        /// Why the duration did not parse.
        reason: String,
    },
    /// The first period is zero.
    #[error("the sweep's FROM must be greater than zero, got {0:?}")]
    FromZero(String),
    /// FROM is after TO.
    #[error("the sweep's FROM ({from:?}) is greater than its TO ({to:?})")]
    FromAfterTo {
        /// First period.
        from: Duration,
        /// Last period.
        to: Duration,
    },
    /// The step is zero (negative steps do not parse).
    #[error("the sweep's step must be greater than zero")]
    StepNotPositive,
    /// Both `:STEP` and `--step` were given.
    #[error("give the step once: FROM..TO:STEP or --step, not both")]
    StepTwice,
    /// More than [`MAX_POINTS`] periods.
    #[error(
        "the sweep has {points} periods, more than the {MAX_POINTS} allowed: use a larger step"
    )]
    TooManyPoints {
        /// Periods the range and step give.
        points: u64,
    },
}

/// A parsed `--sweep FROM..TO[:STEP]` (both ends inclusive).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SweepRange {
    /// First period.
    pub from: Duration,
    /// Last period (included when the steps land on it).
    pub to: Duration,
    /// Step from `:STEP`, if given.
    pub step: Option<Duration>,
}

impl SweepRange {
    /// Parses `FROM..TO[:STEP]`; each part is `1ms`, `500us`, `0.5ms` or
    /// plain milliseconds (so the old `1..20` still works).
    pub fn parse(text: &str) -> Result<Self, SweepError> {
        let (range, step) = match text.split_once(':') {
            Some((range, step)) => (range, Some(step)),
            None => (text, None),
        };
        let (from, to) = range
            .split_once("..")
            .ok_or_else(|| SweepError::Syntax(text.to_owned()))?;
        let value = |what, part: &str| {
            if part.trim().is_empty() || part.trim_start().starts_with('-') {
                return Err(SweepError::Syntax(text.to_owned()));
            }
            crate::cli::parse_duration_millis(part).map_err(|reason| SweepError::Value {
                what,
                text: text.to_owned(),
                reason,
            })
        };
        let from = value("FROM", from)?;
        let to = value("TO", to)?;
        let step = step.map(|step| value("STEP", step)).transpose()?;
        if from.is_zero() {
            return Err(SweepError::FromZero(text.to_owned()));
        }
        if from > to {
            return Err(SweepError::FromAfterTo { from, to });
        }
        if step.is_some_and(|step| step.is_zero()) {
            return Err(SweepError::StepNotPositive);
        }
        Ok(Self { from, to, step })
    }

    /// The periods, with `--step` when the range has no `:STEP`.
    pub fn periods(&self, step_flag: Option<Duration>) -> Result<Vec<Duration>, SweepError> {
        let step = match (self.step, step_flag) {
            (Some(_), Some(_)) => return Err(SweepError::StepTwice),
            (Some(step), None) | (None, Some(step)) => step,
            (None, None) => DEFAULT_STEP,
        };
        if step.is_zero() {
            return Err(SweepError::StepNotPositive);
        }
        let points = self.to.saturating_sub(self.from).as_nanos() / step.as_nanos() + 1;
        if points > u128::from(MAX_POINTS) {
            return Err(SweepError::TooManyPoints {
                points: u64::try_from(points).unwrap_or(u64::MAX),
            });
        }
        Ok((0..points as u32).map(|i| self.from + step * i).collect())
    }
}

/// What the sweep knows about the host (for the plot's marks and caption).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SweepHost {
    /// `uname -r`.
    pub kernel_release: Option<String>,
    /// CONFIG_HZ.
    pub hz: u32,
    /// Where `hz` came from, or that it is assumed.
    pub hz_source: String,
    /// Whether the CPU traps split locks (`split_lock_detect` in
    /// /proc/cpuinfo); `None` when /proc/cpuinfo could not be read.
    pub cpu_traps_split_locks: Option<bool>,
    /// `kernel.split_lock_mitigate`, when the sysctl exists.
    pub split_lock_mitigate: Option<String>,
}

impl SweepHost {
    /// Reads this host.
    pub fn read() -> Self {
        let kernel_release = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .ok()
            .map(|text| text.trim().to_owned());
        let (hz, hz_source) = read_hz(kernel_release.as_deref());
        let cpu_traps_split_locks = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|text| tracer_events::CpuInfo::parse(&text).ok())
            .map(|cpu| cpu.split_lock_detect);
        let split_lock_mitigate = std::fs::read_to_string("/proc/sys/kernel/split_lock_mitigate")
            .ok()
            .map(|text| text.trim().to_owned());
        Self {
            kernel_release,
            hz,
            hz_source,
            cpu_traps_split_locks,
            split_lock_mitigate,
        }
    }
}

/// CONFIG_HZ from /boot/config-RELEASE, then /proc/config.gz, else
/// [`ASSUMED_HZ`]; with where it came from.
fn read_hz(release: Option<&str>) -> (u32, String) {
    if let Some(release) = release {
        let path = format!("/boot/config-{release}");
        if let Some(hz) = std::fs::read_to_string(&path)
            .ok()
            .and_then(|text| parse_config_hz(&text))
        {
            return (hz, path);
        }
    }
    let from_proc = std::fs::File::open("/proc/config.gz")
        .ok()
        .and_then(|file| {
            let mut text = String::new();
            std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(file), &mut text)
                .ok()?;
            parse_config_hz(&text)
        });
    match from_proc {
        Some(hz) => (hz, "/proc/config.gz".into()),
        None => (
            ASSUMED_HZ,
            "assumed (no /boot/config-$(uname -r) or /proc/config.gz)".into(),
        ),
    }
}

/// `CONFIG_HZ=N` of a kernel config.
pub fn parse_config_hz(config: &str) -> Option<u32> {
    config
        .lines()
        .find_map(|line| line.trim().strip_prefix("CONFIG_HZ="))
        .and_then(|value| value.trim().parse().ok())
        .filter(|&hz| hz > 0)
}

/// The bounds of `msleep_interruptible(10)` at `hz`, in milliseconds: it
/// schedules a timeout of `msecs_to_jiffies(10) + 1` jiffies, which ends
/// after at least `msecs_to_jiffies(10)` whole jiffies (the first one is
/// partial).
pub fn punishment_sleep_ms(hz: u32) -> (f64, f64) {
    let hz = u64::from(hz.max(1));
    let jiffies = (10 * hz).div_ceil(1000);
    let jiffy_ms = 1000.0 / hz as f64;
    (jiffies as f64 * jiffy_ms, (jiffies + 1) as f64 * jiffy_ms)
}

/// One period's counts: the sums over the vCPUs of one reproducer run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SweepRow {
    /// Kick period, ms.
    pub period_ms: f64,
    /// Wall time the run took, s.
    pub elapsed_s: f64,
    /// vCPUs.
    pub vcpus: u32,
    /// Guest loop iterations (read from guest memory).
    pub guest_iterations: u64,
    /// Guest loop iterations per second.
    pub iterations_per_s: f64,
    /// KVM_RUN calls.
    pub kvm_runs: u64,
    /// KVM_RUN calls per second.
    pub kvm_runs_per_s: f64,
    /// KVM_RUN returns with EINTR.
    pub eintr_exits: u64,
    /// EINTR returns per second.
    pub eintr_per_s: f64,
    /// Kicks: `pthread_kill`s sent (tkill) or timer expirations, i.e.
    /// signals consumed plus their overruns (timer).
    pub kicks: u64,
    /// Kicks per second.
    pub kicks_per_s: f64,
    /// Kick signals consumed with sigtimedwait.
    pub signals_consumed: u64,
    /// Timer overruns in the consumed signals.
    pub timer_overruns: u64,
    /// KVM_RUN returns other than EINTR.
    pub other_exits: u64,
    /// #AC VM exits; `None` when the reproducer cannot know (see the
    /// table's `unavailable`).
    pub ac_exits: Option<u64>,
    /// Punishment sleeps cut short by a signal; `None` as above.
    pub interrupted_punishments: Option<u64>,
    /// The tracer's verdict (the worst over the run's vCPU threads);
    /// `None`: the sweep ran without the tracer's probes.
    pub verdict: Option<String>,
    /// EINTR returns the tracer counted (its in-kernel counters), beside
    /// the reproducer's `eintr_exits`; `None` without the probes.
    #[serde(default)]
    pub traced_eintr_exits: Option<u64>,
    /// Signals the tracer counted for the vCPU threads, beside `kicks`.
    #[serde(default)]
    pub traced_signals: Option<u64>,
    /// Events the tracer lost during the run (the kernel's skipped program
    /// runs counted host-wide: an upper bound).
    #[serde(default)]
    pub traced_lost: Option<u64>,
    /// No guest progress at all although the vCPU was kicked (what a
    /// livelocked period looks like from the VMM).
    pub stalled: bool,
}

impl SweepRow {
    /// The row of one run; `no_traps`: the CPU cannot trap split locks, so
    /// there are no #AC exits and no punishments to count.
    pub fn from_report(
        report: &ReproReport,
        traced: Option<&TracedRun>,
        kick: Kick,
        no_traps: bool,
    ) -> Self {
        let sum =
            |field: fn(&super::VcpuReport) -> u64| -> u64 { report.vcpus.iter().map(field).sum() };
        let elapsed_s = report.elapsed_us as f64 / 1e6;
        let per_s = |count: u64| count as f64 / elapsed_s.max(1e-9);
        let guest_iterations = sum(|vcpu| vcpu.guest_iterations);
        let kvm_runs = sum(|vcpu| vcpu.kvm_runs);
        let eintr_exits = sum(|vcpu| vcpu.eintr_returns);
        let signals_consumed = sum(|vcpu| vcpu.signals_consumed);
        let timer_overruns = sum(|vcpu| vcpu.timer_overruns);
        let kicks = match kick {
            Kick::Tkill => sum(|vcpu| vcpu.kicks_sent),
            Kick::Timer => signals_consumed + timer_overruns,
        };
        let none_or_zero = no_traps.then_some(0);
        Self {
            period_ms: report.period_us as f64 / 1000.0,
            elapsed_s,
            vcpus: report.vcpus.len() as u32,
            guest_iterations,
            iterations_per_s: per_s(guest_iterations),
            kvm_runs,
            kvm_runs_per_s: per_s(kvm_runs),
            eintr_exits,
            eintr_per_s: per_s(eintr_exits),
            kicks,
            kicks_per_s: per_s(kicks),
            signals_consumed,
            timer_overruns,
            other_exits: sum(|vcpu| vcpu.other_exits.values().sum()),
            ac_exits: traced.map(|run| run.ac_exits).or(none_or_zero),
            interrupted_punishments: traced
                .map(|run| run.interrupted_punishments)
                .or(none_or_zero),
            verdict: traced.map(|run| run.verdict.clone()),
            traced_eintr_exits: traced.map(|run| run.eintr_exits),
            traced_signals: traced.map(|run| run.signals),
            traced_lost: traced.map(|run| run.lost),
            stalled: guest_iterations == 0 && kicks > 0,
        }
    }
}

/// The CSV header, in [`SweepRow`]'s field order.
pub const CSV_HEADER: [&str; 21] = [
    "period_ms",
    "elapsed_s",
    "vcpus",
    "guest_iterations",
    "iterations_per_s",
    "kvm_runs",
    "kvm_runs_per_s",
    "eintr_exits",
    "eintr_per_s",
    "kicks",
    "kicks_per_s",
    "signals_consumed",
    "timer_overruns",
    "other_exits",
    "ac_exits",
    "interrupted_punishments",
    "verdict",
    "traced_eintr_exits",
    "traced_signals",
    "traced_lost",
    "stalled",
];

/// A whole sweep: what `--table` writes as JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SweepTable {
    /// [`TABLE_VERSION`].
    pub version: u32,
    /// The host.
    pub host: SweepHost,
    /// How the vCPUs were kicked.
    pub kick: Kick,
    /// vCPUs per run.
    pub vcpus: u32,
    /// How long each period ran, s.
    pub duration_per_period_s: f64,
    /// `msleep_interruptible(10)` at this HZ, ms (shortest, longest).
    pub punishment_sleep_ms: (f64, f64),
    /// How each column the reproducer cannot count was filled (by the
    /// tracer's probes), or why it is empty or zero, by column name.
    pub unavailable: BTreeMap<String, String>,
    /// One row per period.
    pub rows: Vec<SweepRow>,
    /// The reproducer's own reports the rows were summed from.
    pub reports: Vec<ReproReport>,
    /// The tracer's mode during the sweep (`full`, `tracepoint-only`);
    /// `None`: it ran without the tracer's probes.
    #[serde(default)]
    pub traced_mode: Option<String>,
    /// What the tracer saw of each run, in the order of `reports`.
    #[serde(default)]
    pub traced: Vec<TracedRun>,
}

/// Runs the reproducer at each of `periods` (every other setting from
/// `template`), under the tracer's probes when `tracer` is given;
/// `progress` is called before each run.
pub fn run(
    template: &ReproConfig,
    periods: &[Duration],
    host: SweepHost,
    mut tracer: Option<&mut SweepTracer>,
    mut progress: impl FnMut(Duration),
) -> anyhow::Result<SweepTable> {
    let mut reports = Vec::with_capacity(periods.len());
    let mut seen_by_tracer = Vec::new();
    for &period in periods {
        progress(period);
        let config = ReproConfig {
            period,
            ..template.clone()
        };
        let failed = || format!("running the reproducer at a {period:?} period");
        match tracer.as_deref_mut() {
            Some(tracer) => {
                let (report, run) = tracer.trace(|| super::run(&config)).with_context(failed)?;
                reports.push(report);
                seen_by_tracer.push(run);
            }
            None => reports.push(super::run(&config).with_context(failed)?),
        }
    }
    let mode = tracer.map(|tracer| tracer.mode().to_string());
    Ok(SweepTable::new(template, host, reports).with_traced(mode, seen_by_tracer))
}

impl SweepTable {
    /// The table of finished runs.
    pub fn new(template: &ReproConfig, host: SweepHost, reports: Vec<ReproReport>) -> Self {
        let no_traps = host.cpu_traps_split_locks == Some(false);
        let mut unavailable = BTreeMap::new();
        let counted_by_tracer = if no_traps {
            "0: this CPU cannot trap split locks (no split_lock_detect flag in /proc/cpuinfo), so there is no #AC and no punishment".to_owned()
        } else {
            "not counted: the tracer's probes could not be attached (they need root; the reason is on stderr); run the sweep as root, or `tracer record -o sweep.jsonl` beside it and `tracer report sweep.jsonl`".to_owned()
        };
        unavailable.insert(
            "ac_exits".into(),
            format!(
                "{counted_by_tracer} (KVM handles a guest's split-lock #AC in the host kernel without exiting to the VMM; the tracer counts it from kvm:kvm_exit)"
            ),
        );
        unavailable.insert(
            "interrupted_punishments".into(),
            format!(
                "{counted_by_tracer} (needs the kprobes on handle_guest_split_lock and msleep_interruptible's return)"
            ),
        );
        unavailable.insert(
            "verdict".into(),
            "not computed: the classifier needs the tracer's probes (root); `stalled` is the reproducer's own observation".into(),
        );
        let rows = reports
            .iter()
            .map(|report| SweepRow::from_report(report, None, template.kick, no_traps))
            .collect();
        Self {
            version: TABLE_VERSION,
            punishment_sleep_ms: punishment_sleep_ms(host.hz),
            host,
            kick: template.kick,
            vcpus: template.vcpus,
            duration_per_period_s: template.duration.as_secs_f64(),
            unavailable,
            rows,
            reports,
            traced_mode: None,
            traced: Vec::new(),
        }
    }

    /// The table with what the tracer saw of each run (`traced` in the
    /// order of the reports) filled into the rows; `mode` is `None` when
    /// the sweep ran without the tracer's probes.
    #[must_use]
    pub fn with_traced(mut self, mode: Option<String>, traced: Vec<TracedRun>) -> Self {
        let Some(mode) = mode else {
            return self;
        };
        let no_traps = self.host.cpu_traps_split_locks == Some(false);
        self.rows = self
            .reports
            .iter()
            .zip(&traced)
            .map(|(report, run)| SweepRow::from_report(report, Some(run), self.kick, no_traps))
            .collect();
        let how = if no_traps {
            "counted by the tracer's probes; this CPU cannot trap split locks (no split_lock_detect flag in /proc/cpuinfo), so they stay 0"
        } else {
            "counted by the tracer's probes"
        };
        self.unavailable.insert(
            "ac_exits".into(),
            format!("{how} (kvm:kvm_exit, the kernel's per-thread counter; mode {mode})"),
        );
        self.unavailable.insert(
            "interrupted_punishments".into(),
            format!(
                "{how} ({}; mode {mode})",
                if mode == "full" {
                    "msleep_interruptible's return inside handle_guest_split_lock"
                } else {
                    "inferred from an #AC exit followed by an EINTR return, without kprobes"
                }
            ),
        );
        self.unavailable.insert(
            "verdict".into(),
            format!("the classifier's worst verdict for the run's vCPU threads (mode {mode})"),
        );
        self.traced_mode = Some(mode);
        self.traced = traced;
        self
    }

    /// The rows as CSV (header [`CSV_HEADER`]; an unknown count is an
    /// empty field; floats print so they parse back exactly).
    pub fn to_csv(&self) -> String {
        let mut csv = CSV_HEADER.join(",");
        csv.push('\n');
        let option = |value: Option<u64>| value.map_or_else(String::new, |v| v.to_string());
        for row in &self.rows {
            let fields = [
                row.period_ms.to_string(),
                row.elapsed_s.to_string(),
                row.vcpus.to_string(),
                row.guest_iterations.to_string(),
                row.iterations_per_s.to_string(),
                row.kvm_runs.to_string(),
                row.kvm_runs_per_s.to_string(),
                row.eintr_exits.to_string(),
                row.eintr_per_s.to_string(),
                row.kicks.to_string(),
                row.kicks_per_s.to_string(),
                row.signals_consumed.to_string(),
                row.timer_overruns.to_string(),
                row.other_exits.to_string(),
                option(row.ac_exits),
                option(row.interrupted_punishments),
                row.verdict
                    .clone()
                    .unwrap_or_default()
                    .replace([',', '\n'], " "),
                option(row.traced_eintr_exits),
                option(row.traced_signals),
                option(row.traced_lost),
                row.stalled.to_string(),
            ];
            let _ = writeln!(csv, "{}", fields.join(","));
        }
        csv
    }

    /// The progress-vs-period figure as an SVG document.
    pub fn to_svg(&self) -> anyhow::Result<String> {
        let mut svg = String::new();
        draw(self, &mut svg).map_err(|error| anyhow::anyhow!("drawing the sweep plot: {error}"))?;
        Ok(svg)
    }

    /// The lines under the plot: HZ and its source, and why progress
    /// cannot collapse on a CPU that cannot trap.
    pub fn caption(&self) -> Vec<String> {
        let (low, high) = self.punishment_sleep_ms;
        let mut lines = vec![format!(
            "punishment sleep msleep_interruptible(10) at HZ={} ({}): {low:.1} to {high:.1} ms; kernel {}, split_lock_mitigate={}",
            self.host.hz,
            self.host.hz_source,
            self.host.kernel_release.as_deref().unwrap_or("unknown"),
            self.host.split_lock_mitigate.as_deref().unwrap_or("absent"),
        )];
        match self.host.cpu_traps_split_locks {
            Some(false) => lines.push(
                "This CPU cannot trap split locks (no split_lock_detect flag): no #AC, no punishment, so progress does not collapse below the sleep.".into(),
            ),
            None => lines.push("Whether this CPU traps split locks is unknown (/proc/cpuinfo unreadable).".into()),
            Some(true) => lines.push(
                "This CPU traps split locks: with split_lock_detect=warn and split_lock_mitigate=1, periods below the sleep give no progress.".into(),
            ),
        }
        lines
    }
}

/// Series names in the plot's legend.
pub const SERIES: [&str; 3] = ["guest iterations/s", "kicks/s", "EINTR exits/s"];

fn draw(table: &SweepTable, svg: &mut String) -> Result<(), Box<dyn std::error::Error>> {
    const WIDTH: u32 = 1100;
    const HEIGHT: u32 = 600;
    let root = SVGBackend::with_string(svg, (WIDTH, HEIGHT)).into_drawing_area();
    root.fill(&WHITE)?;
    let (chart_area, footer) = root.split_vertically(HEIGHT - 50);
    let (low, high) = table.punishment_sleep_ms;
    let periods = table.rows.iter().map(|row| row.period_ms);
    let x_min = periods.clone().fold(f64::INFINITY, f64::min).min(low);
    let x_max = periods.fold(0.0, f64::max).max(high);
    let pad = ((x_max - x_min) * 0.05).max(0.5);
    let x_range = (x_min - pad).max(0.0)..x_max + pad;
    let top = |values: &mut dyn Iterator<Item = f64>| values.fold(0.0, f64::max).max(1.0) * 1.1;
    let progress_top = top(&mut table.rows.iter().map(|row| row.iterations_per_s));
    let rate_top = top(&mut table
        .rows
        .iter()
        .flat_map(|row| [row.kicks_per_s, row.eintr_per_s]));
    let mut chart = ChartBuilder::on(&chart_area)
        .caption(
            format!(
                "Guest progress vs kick period ({} kick, {} vCPU(s), {:.1} s per period)",
                match table.kick {
                    Kick::Timer => "timer",
                    Kick::Tkill => "tkill",
                },
                table.vcpus,
                table.duration_per_period_s
            ),
            ("sans-serif", 20),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(80)
        .right_y_label_area_size(80)
        .build_cartesian_2d(x_range.clone(), 0.0..progress_top)?
        .set_secondary_coord(x_range, 0.0..rate_top);
    chart
        .configure_mesh()
        .x_desc("kick period (ms)")
        .y_desc("guest loop iterations per second")
        .draw()?;
    chart
        .configure_secondary_axes()
        .y_desc("kicks, EINTR exits per second")
        .draw()?;
    // The punishment sleep: a band from its shortest to its longest length.
    let band = RGBColor(255, 200, 120);
    chart.draw_series(std::iter::once(Rectangle::new(
        [(low, 0.0), (high, progress_top)],
        band.mix(0.35).filled(),
    )))?;
    chart
        .draw_series(
            [low, high]
                .into_iter()
                .map(|x| PathElement::new([(x, 0.0), (x, progress_top)], band.stroke_width(2))),
        )?
        .label(format!(
            "punishment sleep at HZ={}: {low:.1}-{high:.1} ms",
            table.host.hz
        ))
        .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 20, y + 5)], band.filled()));
    let points = |value: fn(&SweepRow) -> f64| -> Vec<(f64, f64)> {
        table
            .rows
            .iter()
            .map(|row| (row.period_ms, value(row)))
            .collect()
    };
    let progress = points(|row| row.iterations_per_s);
    chart
        .draw_series(LineSeries::new(progress.clone(), BLUE.stroke_width(2)))?
        .label(SERIES[0])
        .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], BLUE.stroke_width(2)));
    chart.draw_series(PointSeries::of_element(
        progress,
        4,
        BLUE.filled(),
        &|coord, size, style| Circle::new(coord, size, style),
    ))?;
    for (name, color, value) in [
        (
            SERIES[1],
            RED,
            (|row: &SweepRow| row.kicks_per_s) as fn(&SweepRow) -> f64,
        ),
        (SERIES[2], GREEN, |row: &SweepRow| row.eintr_per_s),
    ] {
        chart
            .draw_secondary_series(LineSeries::new(points(value), color.stroke_width(2)))?
            .label(name)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    for (line, text) in table.caption().iter().enumerate() {
        footer.draw(&Text::new(
            text.clone(),
            (12, 6 + 20 * line as i32),
            ("sans-serif", 14).into_font().color(&BLACK),
        ))?;
    }
    root.present()?;
    Ok(())
}

/// Writes `contents` to a new 0600 file (never through a symlink;
/// `force` replaces an existing regular file).
pub fn write_output(path: &Path, contents: &str, force: bool) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut file = tracer_events::writer::create_output(path, force)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(contents.as_bytes())
        .and_then(|()| file.flush())
        .with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_parse_with_units_steps_and_the_old_plain_form() {
        let ms = Duration::from_millis;
        assert_eq!(
            SweepRange::parse("1ms..20ms"),
            Ok(SweepRange {
                from: ms(1),
                to: ms(20),
                step: None
            })
        );
        assert_eq!(
            SweepRange::parse("1..20")
                .unwrap()
                .periods(None)
                .unwrap()
                .len(),
            20
        );
        let range = SweepRange::parse("1ms..3ms:500us").unwrap();
        assert_eq!(
            range.periods(None).unwrap(),
            [
                ms(1),
                Duration::from_micros(1500),
                ms(2),
                Duration::from_micros(2500),
                ms(3)
            ]
        );
        assert_eq!(
            SweepRange::parse("2..9")
                .unwrap()
                .periods(Some(ms(3)))
                .unwrap(),
            [ms(2), ms(5), ms(8)]
        );
        assert_eq!(
            SweepRange::parse("5ms..5ms")
                .unwrap()
                .periods(None)
                .unwrap(),
            [ms(5)]
        );
    }

    #[test]
    fn bad_ranges_say_what_is_wrong() {
        assert!(matches!(
            SweepRange::parse("1ms-20ms"),
            Err(SweepError::Syntax(_))
        ));
        assert!(matches!(
            SweepRange::parse("..20"),
            Err(SweepError::Syntax(_))
        ));
        assert!(matches!(
            SweepRange::parse("1..-2"),
            Err(SweepError::Syntax(_))
        ));
        assert!(matches!(
            SweepRange::parse("1..2:-1"),
            Err(SweepError::Syntax(_))
        ));
        assert!(matches!(
            SweepRange::parse("1parsec..2"),
            Err(SweepError::Value { what: "FROM", .. })
        ));
        assert_eq!(
            SweepRange::parse("0..3"),
            Err(SweepError::FromZero("0..3".into()))
        );
        assert!(matches!(
            SweepRange::parse("20ms..1ms"),
            Err(SweepError::FromAfterTo { .. })
        ));
        assert_eq!(
            SweepRange::parse("1..2:0"),
            Err(SweepError::StepNotPositive)
        );
        let range = SweepRange::parse("1..2:1").unwrap();
        assert_eq!(
            range.periods(Some(Duration::from_millis(1))),
            Err(SweepError::StepTwice)
        );
        assert_eq!(
            SweepRange::parse("1..2")
                .unwrap()
                .periods(Some(Duration::ZERO)),
            Err(SweepError::StepNotPositive)
        );
        assert_eq!(
            SweepRange::parse("1ms..1000ms:1ms").unwrap().periods(None),
            Err(SweepError::TooManyPoints { points: 1000 })
        );
        assert!(
            SweepRange::parse("1ms..200ms")
                .unwrap()
                .periods(None)
                .is_ok()
        );
        let message = SweepRange::parse("20ms..1ms").unwrap_err().to_string();
        assert!(message.contains("greater than its TO"), "{message}");
    }

    #[test]
    fn punishment_sleep_follows_hz() {
        assert_eq!(punishment_sleep_ms(1000), (10.0, 11.0));
        assert_eq!(punishment_sleep_ms(250), (12.0, 16.0));
        assert_eq!(punishment_sleep_ms(100), (10.0, 20.0));
        assert_eq!(
            parse_config_hz("# x\nCONFIG_HZ_250=y\nCONFIG_HZ=250\n"),
            Some(250)
        );
        assert_eq!(parse_config_hz("CONFIG_HZ_1000=y\n"), None);
    }

    fn report(period_us: u64, iterations: [u64; 2]) -> ReproReport {
        ReproReport {
            pid: 1,
            period_us,
            elapsed_us: 500_000,
            vcpus: iterations
                .iter()
                .enumerate()
                .map(|(index, &guest_iterations)| super::super::VcpuReport {
                    index: index as u32,
                    kvm_runs: 100,
                    eintr_returns: 99,
                    signals_consumed: 98,
                    timer_overruns: 1,
                    kicks_sent: 7,
                    guest_iterations,
                    other_exits: [("KVM_EXIT_HLT".to_owned(), 1)].into(),
                    ..Default::default()
                })
                .collect(),
        }
    }

    fn host(traps: Option<bool>) -> SweepHost {
        SweepHost {
            kernel_release: Some("6.1.0".into()),
            hz: 250,
            hz_source: "test".into(),
            cpu_traps_split_locks: traps,
            split_lock_mitigate: Some("1".into()),
        }
    }

    fn template(kick: Kick) -> ReproConfig {
        ReproConfig {
            period: Duration::from_millis(1),
            duration: Duration::from_millis(500),
            vcpus: 2,
            signal: libc::SIGUSR1,
            guest: super::super::GuestProgram::SplitLockLoop,
            timer_mode: super::super::TimerMode::PerRun,
            kick,
        }
    }

    #[test]
    fn rows_sum_the_vcpus_and_csv_round_trips() {
        let table = SweepTable::new(
            &template(Kick::Timer),
            host(Some(true)),
            vec![report(1000, [0, 0]), report(20_000, [300, 200])],
        );
        let stalled = &table.rows[0];
        assert!(stalled.stalled);
        assert_eq!(stalled.kicks, 2 * (98 + 1));
        assert_eq!(stalled.ac_exits, None);
        let row = &table.rows[1];
        assert_eq!((row.period_ms, row.guest_iterations), (20.0, 500));
        assert_eq!(
            (row.kvm_runs, row.eintr_exits, row.other_exits),
            (200, 198, 2)
        );
        assert!((row.iterations_per_s - 1000.0).abs() < 1e-9);
        assert!(!row.stalled);
        let csv = table.to_csv();
        let lines: Vec<&str> = csv.lines().collect();
        assert_eq!(lines[0], CSV_HEADER.join(","));
        assert_eq!(
            lines[2],
            "20,0.5,2,500,1000,200,400,198,396,198,396,196,2,2,,,,,,,false"
        );
        let tkill = SweepTable::new(
            &template(Kick::Tkill),
            host(Some(false)),
            vec![report(1000, [1, 1])],
        );
        assert_eq!(tkill.rows[0].kicks, 14);
        assert_eq!(tkill.rows[0].ac_exits, Some(0));
        assert!(tkill.unavailable["interrupted_punishments"].contains("cannot trap"));
    }

    #[test]
    fn the_plot_is_svg_with_the_series_and_the_no_trap_caption() {
        let table = SweepTable::new(
            &template(Kick::Timer),
            host(Some(false)),
            vec![
                report(1000, [5, 5]),
                report(2000, [6, 6]),
                report(3000, [7, 7]),
            ],
        );
        let svg = table.to_svg().unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..80.min(svg.len())]);
        for needle in SERIES
            .iter()
            .copied()
            .chain(["cannot trap split locks", "HZ=250"])
        {
            assert!(svg.contains(needle), "missing {needle:?}");
        }
    }
}
