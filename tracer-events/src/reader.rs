//! Streaming reader of recordings, with errors that name the line.

use std::{
    collections::HashMap,
    io::{BufRead, Read as _},
    path::{Path, PathBuf},
};

use thiserror::Error;

use crate::record::{FORMAT_NAME, FORMAT_VERSION, Metadata, Record};

/// Longest record line read (64 MiB). Event and lost lines are a few
/// hundred bytes; the summary of [`MAX_SUMMARY_THREADS`] threads is the
/// longest line a writer produces (about 2 KiB a thread). A longer line is
/// corruption: the reader stops there instead of buffering without end
/// (`tracer report /dev/zero`).
pub const MAX_LINE_BYTES: usize = 64 << 20;
/// Threads a summary may list (rows plus counted-only threads): the
/// writer's model and in-kernel counter map keep at most 16,384 each.
pub const MAX_SUMMARY_THREADS: usize = 65_536;
/// Largest count a record may carry (2^53: far beyond anything a session
/// counts, and exact in every JSON reader's doubles). Sums of such counts
/// cannot wrap a `u64` within any file a reader accepts.
pub const MAX_COUNT: u64 = 1 << 53;
/// Longest recording: no `ts_ns` may lie further than this after
/// `meta.clock.start_ns` (400 days), so time arithmetic never wraps.
pub const MAX_SPAN_NS: u64 = 400 * 86_400 * 1_000_000_000;
/// How long before `meta.clock.start_ns` an event may be: the probes are
/// attached (and the ring fills) before the metadata's clock is read, which
/// takes well under a second even on a host that is struggling.
pub const BEFORE_START_NS: u64 = 60 * 1_000_000_000;
/// How far an event's `ts_ns` may lie before the previous event of the same
/// CPU, and the summary's before the last event: the ring delivers events
/// in the order they were reserved, and a program that interrupts (or, on
/// a preemptible kernel, preempts) another on the same CPU reserves its
/// later-stamped event first. That gap is an interruption's length.
pub const REORDER_TOLERANCE_NS: u64 = 1_000_000_000;
/// Highest CPU number (the kernel's NR_CPUS limit).
pub const MAX_CPU: u32 = 8191;

/// Why a recording cannot be read. Every variant is bad input (exit code 2)
/// except [`ReadError::Io`].
#[derive(Debug, Error)]
pub enum ReadError {
    /// The file could not be opened or read.
    #[error("{path}: {source}")]
    Io {
        /// File.
        path: PathBuf,
        /// Error.
        source: std::io::Error,
    },
    /// Empty file.
    #[error("{path}: empty file, expected a recording starting with a \"meta\" line")]
    Empty {
        /// File.
        path: PathBuf,
    },
    /// The first line is not this format's metadata.
    #[error(
        "{path}:1: not a recording: expected a JSON object with \"type\":\"meta\" and \"format\":\"{FORMAT_NAME}\" ({detail})"
    )]
    NotARecording {
        /// File.
        path: PathBuf,
        /// What was found.
        detail: String,
    },
    /// Another format version.
    #[error(
        "{path}:1: recording format version {found}, this tracer reads version {FORMAT_VERSION}"
    )]
    WrongVersion {
        /// File.
        path: PathBuf,
        /// Version found.
        found: u64,
    },
    /// A line that is a record whose values break the format's rules
    /// (timestamps out of range or out of order, counts beyond bounds).
    #[error("{path}:{line}: {expected}, found {found}")]
    Invalid {
        /// File.
        path: PathBuf,
        /// 1-based line number.
        line: u64,
        /// The rule, as the reader checks it.
        expected: String,
        /// The value found.
        found: String,
    },
    /// A line that is not a valid record.
    #[error("{path}:{line}: {expected}: {detail}")]
    Corrupt {
        /// File.
        path: PathBuf,
        /// 1-based line number.
        line: u64,
        /// What was expected there.
        expected: &'static str,
        /// The parser's complaint.
        detail: String,
    },
}

impl ReadError {
    /// Whether the error is bad input (as opposed to an I/O failure).
    pub fn is_bad_input(&self) -> bool {
        !matches!(self, Self::Io { .. })
    }
}

/// Reads a recording record by record.
pub struct RecordingReader<R> {
    path: PathBuf,
    input: R,
    line: u64,
    buffer: Vec<u8>,
    /// Latest event time per CPU, for the reordering check.
    cpu_latest: HashMap<u32, u64>,
    /// Latest event or loss time.
    latest_ns: Option<u64>,
    /// Latest time any record may carry.
    end_limit_ns: u64,
    /// Earliest time an event may carry.
    start_limit_ns: u64,
    /// The metadata line.
    pub metadata: Metadata,
    /// Non-fatal problems (a cut last line, no summary).
    pub warnings: Vec<String>,
    saw_summary: bool,
    done: bool,
}

impl RecordingReader<std::io::BufReader<std::fs::File>> {
    /// Opens a file and reads its metadata line.
    pub fn open(path: &Path) -> Result<Self, ReadError> {
        let file = std::fs::File::open(path).map_err(|source| ReadError::Io {
            path: path.to_owned(),
            source,
        })?;
        Self::new(path, std::io::BufReader::with_capacity(1 << 20, file))
    }
}

impl<R: BufRead> RecordingReader<R> {
    /// Reads the metadata line of `input` (`path` names it in errors).
    pub fn new(path: &Path, mut input: R) -> Result<Self, ReadError> {
        let mut buffer = Vec::new();
        let read = read_line(path, 1, &mut input, &mut buffer)?;
        if read == 0 {
            return Err(ReadError::Empty {
                path: path.to_owned(),
            });
        }
        let text = utf8(path, 1, &buffer)?;
        let metadata = parse_metadata(path, text.trim_end_matches('\n'))?;
        let start = metadata.clock.start_ns;
        let end_limit_ns = start
            .checked_add(MAX_SPAN_NS)
            .ok_or_else(|| ReadError::Invalid {
                path: path.to_owned(),
                line: 1,
                expected: format!(
                    "meta.clock.start_ns at most {} (CLOCK_MONOTONIC, nanoseconds since boot)",
                    u64::MAX - MAX_SPAN_NS
                ),
                found: start.to_string(),
            })?;
        Ok(Self {
            path: path.to_owned(),
            input,
            line: 1,
            buffer,
            cpu_latest: HashMap::new(),
            latest_ns: None,
            end_limit_ns,
            start_limit_ns: start.saturating_sub(BEFORE_START_NS),
            metadata,
            warnings: Vec::new(),
            saw_summary: false,
            done: false,
        })
    }

    /// Line number of the last record returned.
    pub fn line(&self) -> u64 {
        self.line
    }

    /// The next record after the metadata, `None` at the end.
    pub fn next_record(&mut self) -> Result<Option<Record>, ReadError> {
        loop {
            if self.done {
                return Ok(None);
            }
            self.buffer.clear();
            let read = read_line(&self.path, self.line + 1, &mut self.input, &mut self.buffer)?;
            if read == 0 {
                self.done = true;
                if !self.saw_summary {
                    self.warnings.push(format!(
                        "{}: no summary record after line {}: the recorder did not finish (killed, crashed or the disk filled); totals are recomputed from the events",
                        self.path.display(),
                        self.line
                    ));
                }
                return Ok(None);
            }
            self.line += 1;
            let complete = self.buffer.ends_with(b"\n");
            let text = utf8(&self.path, self.line, &self.buffer)?.trim_end_matches('\n');
            if text.trim().is_empty() {
                continue;
            }
            if self.saw_summary {
                return Err(self.corrupt("nothing after the summary record", "extra line".into()));
            }
            match serde_json::from_str::<Record>(text) {
                Ok(Record::Meta(_)) => {
                    return Err(self.corrupt(
                        "an event, lost or summary record",
                        "a second meta record".into(),
                    ));
                }
                Ok(record) => {
                    self.validate(&record)?;
                    if matches!(record, Record::Summary(_)) {
                        self.saw_summary = true;
                    }
                    return Ok(Some(record));
                }
                Err(error) if !complete => {
                    // The writer was cut off mid-line: everything before is valid.
                    self.done = true;
                    self.warnings.push(format!(
                        "{}:{}: last line is incomplete ({} bytes, {error}); ignored: the recording was interrupted",
                        self.path.display(),
                        self.line,
                        text.len()
                    ));
                    return Ok(None);
                }
                Err(error) => {
                    return Err(self.corrupt(
                        "a JSON record with \"type\" event, lost or summary",
                        error.to_string(),
                    ));
                }
            }
        }
    }

    /// Checks a record's values against the format's rules
    /// (docs/trace-format.md, "Validation").
    fn validate(&mut self, record: &Record) -> Result<(), ReadError> {
        match record {
            Record::Event(event) => {
                if event.cpu > MAX_CPU {
                    return Err(self.invalid(
                        format!("an event's cpu at most {MAX_CPU}"),
                        event.cpu.to_string(),
                    ));
                }
                self.check_time("an event's ts_ns", event.ts_ns, self.start_limit_ns)?;
                let latest = self.cpu_latest.entry(event.cpu).or_insert(event.ts_ns);
                if event.ts_ns.saturating_add(REORDER_TOLERANCE_NS) < *latest {
                    let expected = format!(
                        "ts_ns of CPU {}'s events in order (at most {REORDER_TOLERANCE_NS} ns before the previous event of that CPU, {})",
                        event.cpu, *latest
                    );
                    return Err(self.invalid(expected, event.ts_ns.to_string()));
                }
                *latest = (*latest).max(event.ts_ns);
                self.latest_ns = Some(self.latest_ns.unwrap_or(0).max(event.ts_ns));
            }
            Record::Lost(lost) => {
                // Losses are stamped by the tracer when it notices them:
                // after the metadata's clock was read.
                self.check_time(
                    "a lost record's ts_ns",
                    lost.ts_ns,
                    self.metadata.clock.start_ns,
                )?;
                self.check_count("a lost record's count", lost.count)?;
                self.latest_ns = Some(self.latest_ns.unwrap_or(0).max(lost.ts_ns));
            }
            Record::Mitigation(change) => {
                self.check_time(
                    "a mitigation record's ts_ns",
                    change.ts_ns,
                    self.metadata.clock.start_ns,
                )?;
                if change.setting.len() > 64 {
                    return Err(self.invalid(
                        "a mitigation record's setting of at most 64 bytes".to_owned(),
                        format!("{} bytes", change.setting.len()),
                    ));
                }
                self.latest_ns = Some(self.latest_ns.unwrap_or(0).max(change.ts_ns));
            }
            Record::Summary(summary) => {
                self.check_time(
                    "the summary's ts_ns",
                    summary.ts_ns,
                    self.metadata.clock.start_ns,
                )?;
                if let Some(latest) = self.latest_ns
                    && summary.ts_ns.saturating_add(REORDER_TOLERANCE_NS) < latest
                {
                    return Err(self.invalid(
                        format!("the summary's ts_ns not before the last record's ({latest})"),
                        summary.ts_ns.to_string(),
                    ));
                }
                self.check_count("the summary's events_written", summary.events_written)?;
                self.check_count(
                    "the summary's events_not_written",
                    summary.events_not_written,
                )?;
                let losses = &summary.losses;
                for (name, count) in losses
                    .ring_full
                    .values()
                    .chain(losses.undecodable.values())
                    .chain(losses.recursion_misses.values())
                    .chain(losses.skipped_by_kernel.values())
                    .map(|count| ("a count in the summary's losses", *count))
                    .chain([
                        (
                            "the summary's losses.counter_map_full",
                            losses.counter_map_full,
                        ),
                        (
                            "the summary's losses.window_map_full",
                            losses.window_map_full,
                        ),
                    ])
                {
                    self.check_count(name, count)?;
                }
                let threads = summary.threads.len() + summary.counted_threads.len();
                if threads > MAX_SUMMARY_THREADS {
                    return Err(self.invalid(
                        format!("at most {MAX_SUMMARY_THREADS} threads in the summary"),
                        threads.to_string(),
                    ));
                }
            }
            Record::Meta(_) => {}
        }
        Ok(())
    }

    fn check_time(&self, what: &str, ts_ns: u64, earliest: u64) -> Result<(), ReadError> {
        if ts_ns < earliest || ts_ns > self.end_limit_ns {
            return Err(self.invalid(
                format!(
                    "{what} within the recording's time range {earliest}..={} (meta.clock.start_ns {}; CLOCK_MONOTONIC ns)",
                    self.end_limit_ns, self.metadata.clock.start_ns
                ),
                ts_ns.to_string(),
            ));
        }
        Ok(())
    }

    fn check_count(&self, what: &str, count: u64) -> Result<(), ReadError> {
        if count > MAX_COUNT {
            return Err(self.invalid(format!("{what} at most {MAX_COUNT}"), count.to_string()));
        }
        Ok(())
    }

    fn invalid(&self, expected: String, found: String) -> ReadError {
        ReadError::Invalid {
            path: self.path.clone(),
            line: self.line,
            expected,
            found,
        }
    }

    fn corrupt(&self, expected: &'static str, detail: String) -> ReadError {
        ReadError::Corrupt {
            path: self.path.clone(),
            line: self.line,
            expected,
            detail,
        }
    }
}

/// Reads one line of at most [`MAX_LINE_BYTES`] into `buffer`.
fn read_line(
    path: &Path,
    line: u64,
    input: &mut impl BufRead,
    buffer: &mut Vec<u8>,
) -> Result<usize, ReadError> {
    let read = input
        .by_ref()
        .take(MAX_LINE_BYTES as u64 + 1)
        .read_until(b'\n', buffer)
        .map_err(|source| ReadError::Io {
            path: path.to_owned(),
            source,
        })?;
    if buffer.len() > MAX_LINE_BYTES {
        return Err(ReadError::Corrupt {
            path: path.to_owned(),
            line,
            expected: "a record line of at most 64 MiB",
            detail: format!("no end of line in the first {} bytes", buffer.len()),
        });
    }
    Ok(read)
}

fn utf8<'a>(path: &Path, line: u64, bytes: &'a [u8]) -> Result<&'a str, ReadError> {
    std::str::from_utf8(bytes).map_err(|error| ReadError::Corrupt {
        path: path.to_owned(),
        line,
        expected: "UTF-8 text",
        detail: error.to_string(),
    })
}

fn parse_metadata(path: &Path, text: &str) -> Result<Metadata, ReadError> {
    let not_a_recording = |detail: String| ReadError::NotARecording {
        path: path.to_owned(),
        detail,
    };
    let value: serde_json::Value = serde_json::from_str(text)
        .map_err(|error| not_a_recording(format!("line 1 is not JSON: {error}")))?;
    if value.get("type").and_then(serde_json::Value::as_str) != Some("meta")
        || value.get("format").and_then(serde_json::Value::as_str) != Some(FORMAT_NAME)
    {
        let found: String = text.chars().take(60).collect();
        return Err(not_a_recording(format!("found {found:?}")));
    }
    let version = value
        .get("version")
        .and_then(serde_json::Value::as_u64)
        .ok_or_else(|| not_a_recording("no numeric \"version\"".into()))?;
    if version != u64::from(FORMAT_VERSION) {
        return Err(ReadError::WrongVersion {
            path: path.to_owned(),
            found: version,
        });
    }
    match serde_json::from_value::<Record>(value) {
        Ok(Record::Meta(metadata)) => Ok(*metadata),
        Ok(_) => unreachable!("type checked above"),
        Err(error) => Err(ReadError::Corrupt {
            path: path.to_owned(),
            line: 1,
            expected: "a complete meta record",
            detail: error.to_string(),
        }),
    }
}
