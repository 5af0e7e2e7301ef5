//! Command-line definitions shared by every subcommand.

use std::{path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::repro::{GuestProgram, TimerMode};

/// Live eBPF tracer for the KVM split-lock "punish, sleep interrupted, retry" livelock.
#[derive(Debug, Parser)]
#[command(name = "tracer", version = crate::version::LONG_VERSION, about, long_about = None)]
pub struct Cli {
    /// Subcommand; `live` when omitted.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Live per-vCPU table of split-lock traps, punishments, signals and KVM exits.
    #[command(
        after_help = "Example:\n  tracer live -i 1s --vm 100\n  tracer live -p $(pidof qemu-system-x86_64) -d 30s --json"
    )]
    Live(LiveArgs),
    /// Record events, losses and verdicts to a JSON Lines file for `report`.
    #[command(
        after_help = "Example:\n  tracer record -o hang.jsonl -d 30s\n  tracer record -o public.jsonl -d 30s --redact -p $(pidof kvm)"
    )]
    Record(RecordArgs),
    /// Replay a recording through the classifier and render it.
    #[command(
        after_help = "Example:\n  tracer report hang.jsonl\n  tracer report hang.jsonl --format ftrace > for-lkml.txt\n  tracer report hang.jsonl --format perfetto -o hang.pftrace\n\nExit codes: 0 ok, 1 I/O error, 2 bad input (wrong version, not a recording, corrupt line)."
    )]
    Report(ReportArgs),
    /// Run headless and serve Prometheus metrics (per-vCPU counters, verdicts, tracer health).
    #[command(
        after_help = "Example:\n  tracer serve\n  tracer serve --listen 127.0.0.1:9850 -p $(pidof kvm)\n\nEndpoints: /metrics (Prometheus text format), /healthz. Stops on SIGTERM or SIGINT."
    )]
    Serve(ServeArgs),
    /// Check the host's split-lock and KVM configuration and the known failure modes.
    #[command(
        after_help = "Example:\n  tracer doctor\n  tracer doctor --json\n  tracer doctor --collect /tmp/host-snapshot --redact\n  tracer doctor --root /tmp/host-snapshot\n\nExit codes: 0 nothing failed, 1 a check failed."
    )]
    Doctor(DoctorArgs),
    /// Write the man pages and shell completions into a directory (packaging).
    #[command(hide = true)]
    GenerateAssets {
        /// Output directory.
        dir: PathBuf,
    },
    /// Try to attach every probe, print the probe table, detach.
    #[command(after_help = "Example:\n  tracer probes\n  tracer probes --json")]
    Probes(ProbesArgs),
    /// Run the seed's KVM reproducer: a guest looping on a split-locked `lock bts`, kicked by a timer signal.
    #[command(
        after_help = "Example:\n  tracer repro --period 1ms -d 5s\n  tracer repro --sweep 1ms..20ms -d 1s --plot sweep.svg --table sweep.csv\n  tracer repro --sweep 1ms..20ms:2ms --kick tkill -d 2s --vcpus 2"
    )]
    Repro(ReproArgs),
}

/// Options every tracing command shares.
#[derive(Debug, Args, Clone)]
pub struct TraceArgs {
    /// Trace only this process (e.g. a QEMU pid).
    #[arg(short = 'p', long = "pid")]
    pub pid: Option<u32>,
    /// Stop after this long (`30s`, `2m`, or plain seconds).
    #[arg(short = 'd', long = "duration", value_parser = parse_positive_duration)]
    pub duration: Option<Duration>,
    /// Ring-buffer size in MiB (power of two).
    #[arg(long = "ring-mib", value_parser = parse_ring_mib)]
    pub ring_mib: Option<u32>,
    /// Take signals through the perf tracepoint, not the raw one (for comparisons).
    #[arg(long = "no-raw-tracepoint", hide = true)]
    pub no_raw_tracepoint: bool,
    /// Print the eBPF programs' own diagnostics (refused map inserts,
    /// unreadable fields, a full ring, handler returns without entries) on
    /// stderr. Also on when RUST_LOG enables the `tracer_ebpf` target (e.g.
    /// `RUST_LOG=warn`); off, the programs carry no logging code.
    #[arg(long = "ebpf-log")]
    pub ebpf_log: bool,
    /// Guest symbols for the trapping IPs.
    #[command(flatten)]
    pub symbols: GuestSymbolArgs,
}

/// `--guest-symbols` and `--guest-kaslr-offset` (live, record, serve, report).
#[derive(Debug, Args, Clone, Default)]
pub struct GuestSymbolArgs {
    /// A guest's /proc/kallsyms (runtime addresses) or System.map, to show
    /// trapping guest IPs as `function+0xoffset`; `VM=FILE` (VMID or VM
    /// name) for one VM, repeatable.
    #[arg(long = "guest-symbols", value_name = "[VM=]FILE", value_parser = crate::symbols::parse_symbols_arg)]
    pub files: Vec<crate::symbols::Keyed<PathBuf>>,
    /// Added to every address of the matching --guest-symbols file (a
    /// System.map of a guest booted with KASLR); `VM=HEX` per VM.
    #[arg(long = "guest-kaslr-offset", value_name = "[VM=]HEX", value_parser = crate::symbols::parse_offset_arg)]
    pub kaslr_offsets: Vec<crate::symbols::Keyed<u64>>,
}

impl GuestSymbolArgs {
    /// Loads the files (a bad file is an error naming it and the line).
    pub fn load(&self) -> anyhow::Result<crate::symbols::GuestSymbols> {
        use anyhow::Context as _;
        crate::symbols::GuestSymbols::load(&self.files, &self.kaslr_offsets)
            .context("loading the --guest-symbols files")
    }
}

/// `tracer live`.
#[derive(Debug, Args)]
pub struct LiveArgs {
    /// Common tracing options.
    #[command(flatten)]
    pub trace: TraceArgs,
    /// Redraw interval (`1s`, `500ms`, or plain seconds).
    #[arg(short = 'i', long = "interval", default_value = "1s", value_parser = parse_interval)]
    pub interval: Duration,
    /// Only this VM (QEMU `-name` or Proxmox VMID).
    #[arg(long = "vm")]
    pub vm: Option<String>,
    /// Include quiet vCPU threads.
    #[arg(long = "all")]
    pub all: bool,
    /// Print one JSON object per interval instead of a table.
    #[arg(long = "json")]
    pub json: bool,
    /// Also record to this file (see `tracer record`).
    #[arg(long = "record", value_name = "FILE")]
    pub record: Option<PathBuf>,
    /// Recording options.
    #[command(flatten)]
    pub output: OutputArgs,
}

/// Options of a recording file.
#[derive(Debug, Args, Clone, Default)]
pub struct OutputArgs {
    /// Overwrite an existing output file (symlinks are never followed).
    #[arg(long = "force")]
    pub force: bool,
    /// Replace hostname, VM names and command lines with placeholders.
    #[arg(long = "redact")]
    pub redact: bool,
}

/// `tracer record`.
#[derive(Debug, Args)]
pub struct RecordArgs {
    /// Common tracing options.
    #[command(flatten)]
    pub trace: TraceArgs,
    /// Output file (created with mode 0600).
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    pub output: PathBuf,
    /// Recording options.
    #[command(flatten)]
    pub options: OutputArgs,
    /// Progress line interval on stderr.
    #[arg(short = 'i', long = "interval", default_value = "1s", value_parser = parse_interval)]
    pub interval: Duration,
}

/// Output of `tracer report`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ReportFormat {
    /// The live view's table and the verdict history.
    Table,
    /// Metadata header, ftrace-style event lines and the verdicts.
    Ftrace,
    /// Summary for scripts.
    Json,
    /// Perfetto TrackEvent protobuf (needs -o).
    Perfetto,
}

/// `tracer report`.
#[derive(Debug, Args)]
pub struct ReportArgs {
    /// Recording written by `tracer record`.
    pub file: PathBuf,
    /// Output format.
    #[arg(long = "format", value_enum, default_value = "table")]
    pub format: ReportFormat,
    /// Output file (required for perfetto; stdout otherwise).
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Overwrite an existing output file.
    #[arg(long = "force")]
    pub force: bool,
    /// Guest symbols (instead of the names the recording carries).
    #[command(flatten)]
    pub symbols: GuestSymbolArgs,
}

/// `tracer serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Common tracing options.
    #[command(flatten)]
    pub trace: TraceArgs,
    /// Address to listen on (loopback unless you ask for another).
    #[arg(long = "listen", default_value = "127.0.0.1:9850")]
    pub listen: std::net::SocketAddr,
    /// How often the metrics are recomputed.
    #[arg(short = 'i', long = "interval", default_value = "1s", value_parser = parse_interval)]
    pub interval: Duration,
    /// Also record to this file (as `tracer record -o` does).
    #[arg(long = "record", value_name = "FILE")]
    pub record: Option<PathBuf>,
    /// Recording options (with `--record`).
    #[command(flatten)]
    pub output: OutputArgs,
}

/// `tracer doctor`.
#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// Check a captured snapshot (from `--collect`) instead of this host.
    #[arg(long = "root", value_name = "DIR", conflicts_with = "collect")]
    pub root: Option<PathBuf>,
    /// Print JSON.
    #[arg(long = "json")]
    pub json: bool,
    /// Copy exactly the files doctor reads into DIR (for a bug report).
    #[arg(long = "collect", value_name = "DIR")]
    pub collect: Option<PathBuf>,
    /// With --collect: remove the kernel command line's unrelated parameters,
    /// VM names and QEMU arguments doctor does not read, and kallsyms addresses.
    #[arg(long = "redact", requires = "collect")]
    pub redact: bool,
}

/// `tracer probes`.
#[derive(Debug, Args)]
pub struct ProbesArgs {
    /// Print JSON instead of a table.
    #[arg(long = "json")]
    pub json: bool,
}

/// `tracer repro`.
#[derive(Debug, Args)]
pub struct ReproArgs {
    /// Timer period (`1ms`, `500us`, plain number = milliseconds).
    #[arg(long = "period", default_value = "1ms", value_parser = parse_duration_millis, conflicts_with = "sweep")]
    pub period: Duration,
    /// Sweep kick periods `FROM..TO[:STEP]`, both ends inclusive (`1ms..20ms`,
    /// `1ms..3ms:500us`; plain numbers are milliseconds, so `1..20` works).
    #[arg(long = "sweep", value_name = "FROM..TO[:STEP]", value_parser = crate::repro::sweep::SweepRange::parse)]
    pub sweep: Option<crate::repro::sweep::SweepRange>,
    /// Step of the sweep (default 1 ms), when the range has no `:STEP`.
    #[arg(long = "step", requires = "sweep", value_parser = parse_duration_millis)]
    pub step: Option<Duration>,
    /// With --sweep: write an SVG plot of guest progress, kicks and EINTR
    /// exits against the period, with the punishment sleep marked (0600).
    #[arg(long = "plot", value_name = "FILE.svg", requires = "sweep")]
    pub plot: Option<PathBuf>,
    /// With --sweep: write the per-period table as CSV to FILE and as JSON
    /// (with the reproducer's own reports) beside it, FILE with a `.json`
    /// extension (both 0600).
    #[arg(long = "table", value_name = "FILE.csv", requires = "sweep")]
    pub table: Option<PathBuf>,
    /// Overwrite existing --plot/--table files (symlinks are never followed).
    #[arg(long = "force")]
    pub force: bool,
    /// How long to run each period (`5s`, plain seconds).
    #[arg(short = 'd', long = "duration", default_value = "5s", value_parser = parse_positive_duration)]
    pub duration: Duration,
    /// Number of vCPUs (one thread each).
    #[arg(long = "vcpus", default_value_t = 1)]
    pub vcpus: u32,
    /// Kick signal: `SIGUSR1` (QEMU's), `SIGRTMIN+N` (rust-vmm VMMs'), or a number.
    #[arg(long = "signal", default_value = "SIGUSR1", value_parser = parse_signal)]
    pub signal: i32,
    /// How vCPUs are kicked: `timer` (a POSIX timer per vCPU thread, the
    /// seed's VMM) or `tkill` (the main thread pthread_kills each vCPU
    /// every period, as QEMU does).
    #[arg(long = "kick", value_enum, default_value = "timer")]
    pub kick: crate::repro::Kick,
    /// Guest program.
    #[arg(long = "guest", value_enum, default_value = "split-lock-loop")]
    pub guest: GuestProgram,
    /// Timer arming mode.
    #[arg(long = "timer-mode", value_enum, default_value = "per-run")]
    pub timer_mode: TimerMode,
    /// Print JSON.
    #[arg(long = "json")]
    pub json: bool,
}

fn parse_duration_with_default_unit(
    text: &str,
    default_unit_nanos: f64,
) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number.parse().map_err(|_| {
        format!("expected a duration such as 5s, 2m, 500ms or a plain number, got {text:?}")
    })?;
    let nanos_per_unit = match unit.trim() {
        "" => default_unit_nanos,
        "ns" => 1.0,
        "us" | "µs" => 1e3,
        "ms" => 1e6,
        "s" => 1e9,
        "m" | "min" => 60e9,
        "h" => 3600e9,
        other => {
            return Err(format!(
                "unknown unit {other:?} in {text:?} (use ns, us, ms, s, m, h)"
            ));
        }
    };
    let nanos = value * nanos_per_unit;
    if !nanos.is_finite() || !(0.0..=1e18).contains(&nanos) {
        return Err(format!("duration {text:?} is out of range"));
    }
    Ok(Duration::from_nanos(nanos as u64))
}

/// Parses a signal: `SIGUSR1`, `USR2`, `SIGRTMIN+3`, `SIGRTMIN`, or a number.
pub fn parse_signal(text: &str) -> Result<i32, String> {
    let name = text.trim().to_ascii_uppercase();
    let name = name.strip_prefix("SIG").unwrap_or(&name);
    let rtmin = libc::SIGRTMIN();
    let number = match name {
        "USR1" => libc::SIGUSR1,
        "USR2" => libc::SIGUSR2,
        "ALRM" => libc::SIGALRM,
        "RTMIN" => rtmin,
        _ => match name.strip_prefix("RTMIN+") {
            Some(offset) => offset
                .parse::<i32>()
                .ok()
                .map(|offset| rtmin + offset)
                .ok_or_else(|| format!("expected SIGRTMIN+N, got {text:?}"))?,
            None => name.parse::<i32>().map_err(|_| {
                format!("expected SIGUSR1, SIGUSR2, SIGALRM, SIGRTMIN+N or a number, got {text:?}")
            })?,
        },
    };
    if number <= 0 || number > libc::SIGRTMAX() || [libc::SIGKILL, libc::SIGSTOP].contains(&number)
    {
        return Err(format!("{text:?} is not a signal a VMM can kick with"));
    }
    Ok(number)
}

/// Parses `5s`, `2m`, `500ms` or plain seconds.
pub fn parse_duration_seconds(text: &str) -> Result<Duration, String> {
    parse_duration_with_default_unit(text, 1e9)
}

/// Shortest interval of the live view, progress line and metrics: each
/// tick reads every in-kernel counter and classifies every thread.
pub const MIN_INTERVAL: Duration = Duration::from_millis(10);

/// An interval (`1s`, `500ms`, plain seconds) of at least [`MIN_INTERVAL`]
/// (`-i 0` panicked in the ticker).
pub fn parse_interval(text: &str) -> Result<Duration, String> {
    let interval = parse_duration_seconds(text)?;
    if interval < MIN_INTERVAL {
        return Err(format!(
            "interval {text:?} is shorter than the minimum of {} ms",
            MIN_INTERVAL.as_millis()
        ));
    }
    Ok(interval)
}

/// A duration greater than zero (`-d 0` would end before anything is seen).
pub fn parse_positive_duration(text: &str) -> Result<Duration, String> {
    let duration = parse_duration_seconds(text)?;
    if duration.is_zero() {
        return Err(format!("duration {text:?} must be greater than zero"));
    }
    Ok(duration)
}

/// Parses `1ms`, `500us` or plain milliseconds.
pub fn parse_duration_millis(text: &str) -> Result<Duration, String> {
    parse_duration_with_default_unit(text, 1e6)
}

fn parse_ring_mib(text: &str) -> Result<u32, String> {
    let mib: u32 = text
        .parse()
        .map_err(|_| format!("expected a number of MiB, got {text:?}"))?;
    if !mib.is_power_of_two() || mib > 1024 {
        return Err(format!(
            "ring size must be a power of two up to 1024 MiB, got {mib}"
        ));
    }
    Ok(mib)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals_and_durations_have_ranges() {
        assert!(parse_interval("0").is_err());
        assert!(parse_interval("1ns").is_err());
        assert!(parse_interval("9ms").is_err());
        assert_eq!(parse_interval("10ms"), Ok(Duration::from_millis(10)));
        assert!(parse_positive_duration("0").is_err());
        assert!(parse_positive_duration("0s").is_err());
        assert_eq!(parse_positive_duration("1ns"), Ok(Duration::from_nanos(1)));
    }

    #[test]
    fn durations_accept_units_and_plain_numbers() {
        assert_eq!(parse_duration_seconds("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration_seconds("2m"), Ok(Duration::from_mins(2)));
        assert_eq!(parse_duration_seconds("7"), Ok(Duration::from_secs(7)));
        assert_eq!(
            parse_duration_seconds("500ms"),
            Ok(Duration::from_millis(500))
        );
        assert_eq!(parse_duration_millis("1"), Ok(Duration::from_millis(1)));
        assert_eq!(
            parse_duration_millis("250us"),
            Ok(Duration::from_micros(250))
        );
        assert!(parse_duration_seconds("5 parsecs").is_err());
        assert!(parse_duration_seconds("").is_err());
    }

    #[test]
    fn ring_validation() {
        assert_eq!(parse_ring_mib("8"), Ok(8));
        assert!(parse_ring_mib("3").is_err());
    }
}
