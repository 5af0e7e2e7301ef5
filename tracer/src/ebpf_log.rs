//! The eBPF programs' own diagnostics (aya-log): which level the programs
//! are loaded with, and the logger that forwards their messages to the
//! tracer's stderr and counts them.
//!
//! Off by default: the programs are then loaded with aya-log's level global
//! at 0, which the verifier reads as a constant, so the logging code is
//! dead and costs nothing (`cargo xtask bench` measures both). `--ebpf-log`
//! turns every level on; `RUST_LOG` (env_logger's directive syntax, e.g.
//! `RUST_LOG=warn` or `RUST_LOG=tracer_ebpf=info`) picks the levels for the
//! target `tracer_ebpf`.

use std::{
    collections::VecDeque,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Instant,
};

use log::{Level, LevelFilter, Log, Metadata, Record};

/// The log target of the eBPF programs' messages (their crate name).
pub const TARGET: &str = "tracer_ebpf";

/// Messages printed per second at most; the rest are counted only.
pub const PRINTED_PER_SECOND: u64 = 20;

/// Messages kept for [`EbpfLogCounts::recent`].
pub const RECENT_KEPT: usize = 32;

/// The most verbose level the eBPF programs log at, from `--ebpf-log` and
/// `RUST_LOG` (`None` when neither asks: the programs are loaded with
/// logging off).
pub fn wanted_level(flag: bool, rust_log: Option<&str>) -> LevelFilter {
    if flag {
        return LevelFilter::Trace;
    }
    let Some(directives) = rust_log.filter(|text| !text.trim().is_empty()) else {
        return LevelFilter::Off;
    };
    let filter = env_filter::Builder::new().parse(directives).build();
    [
        Level::Trace,
        Level::Debug,
        Level::Info,
        Level::Warn,
        Level::Error,
    ]
    .into_iter()
    .find(|&level| filter.enabled(&Metadata::builder().level(level).target(TARGET).build()))
    .map_or(LevelFilter::Off, |level| level.to_level_filter())
}

/// The value of aya-log's level global for `level` (0 = off; otherwise the
/// most verbose level enabled, in aya-log's numbering).
pub fn loader_level(level: LevelFilter) -> u8 {
    match level.to_level() {
        None => 0,
        Some(Level::Error) => aya_log::Level::Error as u8,
        Some(Level::Warn) => aya_log::Level::Warn as u8,
        Some(Level::Info) => aya_log::Level::Info as u8,
        Some(Level::Debug) => aya_log::Level::Debug as u8,
        Some(Level::Trace) => aya_log::Level::Trace as u8,
    }
}

/// What the programs logged so far, shared with the status line.
#[derive(Debug, Default)]
pub struct EbpfLogCounts {
    /// Messages received.
    pub messages: AtomicU64,
    /// Messages received but not printed (over [`PRINTED_PER_SECOND`], or
    /// while [`Self::hold_stderr`] is on).
    pub not_printed: AtomicU64,
    /// Set while a full-screen view owns the terminal: messages are kept
    /// and counted, not printed.
    held: AtomicBool,
    recent: Mutex<VecDeque<String>>,
}

impl EbpfLogCounts {
    /// Stops (`true`) or resumes printing to stderr.
    pub fn hold_stderr(&self, hold: bool) {
        self.held.store(hold, Ordering::Relaxed);
    }

    /// The last [`RECENT_KEPT`] messages, oldest first, as printed.
    pub fn recent(&self) -> Vec<String> {
        self.recent
            .lock()
            .map(|recent| recent.iter().cloned().collect())
            .unwrap_or_default()
    }
}

/// The `log::Log` aya-log's reader writes the programs' records to.
pub struct EbpfLogger {
    level: LevelFilter,
    counts: Arc<EbpfLogCounts>,
    window: Mutex<(Instant, u64)>,
}

impl EbpfLogger {
    /// A logger that prints records up to `level`.
    pub fn new(level: LevelFilter, counts: Arc<EbpfLogCounts>) -> Self {
        Self {
            level,
            counts,
            window: Mutex::new((Instant::now(), 0)),
        }
    }

    /// Whether this record may be printed (the per-second budget).
    fn budget(&self) -> bool {
        let Ok(mut window) = self.window.lock() else {
            return false;
        };
        if window.0.elapsed().as_secs() >= 1 {
            *window = (Instant::now(), 0);
        }
        window.1 += 1;
        window.1 <= PRINTED_PER_SECOND
    }
}

impl Log for EbpfLogger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= self.level
    }

    fn log(&self, record: &Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        self.counts.messages.fetch_add(1, Ordering::Relaxed);
        let line = format!(
            "tracer: ebpf {}: {}",
            record.level().as_str().to_ascii_lowercase(),
            record.args()
        );
        if let Ok(mut recent) = self.counts.recent.lock() {
            if recent.len() == RECENT_KEPT {
                recent.pop_front();
            }
            recent.push_back(line.clone());
        }
        if !self.counts.held.load(Ordering::Relaxed) && self.budget() {
            eprintln!("{line}");
        } else {
            self.counts.not_printed.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn flush(&self) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn off_unless_the_flag_or_rust_log_asks() {
        assert_eq!(wanted_level(false, None), LevelFilter::Off);
        assert_eq!(wanted_level(false, Some("  ")), LevelFilter::Off);
        assert_eq!(wanted_level(true, None), LevelFilter::Trace);
        assert_eq!(wanted_level(false, Some("warn")), LevelFilter::Warn);
        assert_eq!(
            wanted_level(false, Some("hyper=debug,tracer_ebpf=info")),
            LevelFilter::Info
        );
        // Directives for other targets leave the programs' logging off.
        assert_eq!(wanted_level(false, Some("hyper=debug")), LevelFilter::Off);
        assert_eq!(wanted_level(false, Some("off")), LevelFilter::Off);
    }

    #[test]
    fn loader_levels_follow_aya_log_numbering() {
        assert_eq!(loader_level(LevelFilter::Off), 0);
        assert_eq!(loader_level(LevelFilter::Error), 1);
        assert_eq!(loader_level(LevelFilter::Warn), 2);
        assert_eq!(loader_level(LevelFilter::Trace), 5);
    }

    #[test]
    fn every_message_is_counted_and_printing_is_bounded() {
        let counts = Arc::new(EbpfLogCounts::default());
        let logger = EbpfLogger::new(LevelFilter::Warn, Arc::clone(&counts));
        for n in 0..100 {
            logger.log(
                &Record::builder()
                    .level(Level::Warn)
                    .target(TARGET)
                    .args(format_args!("message {n}"))
                    .build(),
            );
        }
        logger.log(
            &Record::builder()
                .level(Level::Debug)
                .target(TARGET)
                .args(format_args!("too verbose"))
                .build(),
        );
        assert_eq!(counts.messages.load(Ordering::Relaxed), 100);
        assert_eq!(
            counts.not_printed.load(Ordering::Relaxed),
            100 - PRINTED_PER_SECOND
        );
        let recent = counts.recent();
        assert_eq!(recent.len(), RECENT_KEPT);
        assert_eq!(recent.last().unwrap(), "tracer: ebpf warn: message 99");
    }
}
