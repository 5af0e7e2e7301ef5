//! Crash-safe recording writer.
//!
//! The tracing loop hands records to a bounded queue and never waits for
//! the disk; a writer thread turns them into lines and writes whole lines
//! only, flushing at least every [`FLUSH_INTERVAL`]. If the queue is full the
//! event is counted and a `lost` record says so. If a write fails (a full
//! disk), the file is cut back to its last complete line and everything
//! after is counted as not written, so the file always parses up to its last
//! complete record, also after SIGKILL.

use std::{
    fs::File,
    io::Write as _,
    os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
        mpsc::{self, RecvTimeoutError, SyncSender, TrySendError},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use bytes::{BufMut as _, BytesMut};
use thiserror::Error;

use crate::{
    event::Event,
    loss::{LostCause, LostRecord},
    record::{Metadata, Record, Summary},
};

/// Longest time a written record stays in memory.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(200);
/// Records the queue holds before events are dropped (and counted).
pub const DEFAULT_QUEUE_RECORDS: usize = 65_536;
/// Bytes gathered before a write.
const WRITE_CHUNK: usize = 64 * 1024;
/// Messages taken per look at the clock.
const BATCH: usize = 1024;

/// Why a recording could not be created.
#[derive(Debug, Error)]
pub enum CreateError {
    /// The path exists and `--force` was not given.
    #[error("{0} exists; pass --force to overwrite it")]
    Exists(PathBuf),
    /// The path is a symbolic link (never followed).
    #[error("{0} is a symbolic link; refusing to follow it")]
    Symlink(PathBuf),
    /// The path is a device, FIFO, socket or directory: only regular files
    /// are ever created, replaced or chmod-ed, also with `--force`.
    #[error("{path} is {kind}, not a regular file; refusing to write to it (also with --force)")]
    NotRegular {
        /// The output path.
        path: PathBuf,
        /// What it is ("a character device", "a FIFO", ...).
        kind: &'static str,
    },
    /// The file was created but its first line could not be written (a
    /// full disk); it is removed again by whoever created it.
    #[error("cannot write to {path}: {source}")]
    Write {
        /// The output path.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// Any other I/O error.
    #[error("cannot create {path}: {source}")]
    Io {
        /// The output path.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

/// What a non-regular file is, in words (for [`CreateError::NotRegular`]
/// and the tracer's bounded readers).
pub fn file_kind(file_type: std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt as _;
    if file_type.is_dir() {
        "a directory"
    } else if file_type.is_char_device() {
        "a character device"
    } else if file_type.is_block_device() {
        "a block device"
    } else if file_type.is_fifo() {
        "a FIFO"
    } else if file_type.is_socket() {
        "a socket"
    } else if file_type.is_symlink() {
        "a symbolic link"
    } else {
        "a special file"
    }
}

/// Refuses `path` as an output before anything is opened: a symlink, a
/// non-regular file, or an existing file without `force`.
fn check_output_path(path: &Path, force: bool) -> Result<(), CreateError> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_symlink() => Err(CreateError::Symlink(path.to_owned())),
        Ok(meta) if !meta.file_type().is_file() => Err(CreateError::NotRegular {
            path: path.to_owned(),
            kind: file_kind(meta.file_type()),
        }),
        Ok(_) if !force => Err(CreateError::Exists(path.to_owned())),
        _ => Ok(()),
    }
}

/// An output written whole or not at all (a report): the bytes go to a
/// hidden temporary file beside `path` (mode 0600, created exclusively) and
/// [`Replacement::commit`] renames it over `path`. Until then `path` is
/// untouched, so a report that fails part-way (bad input, a full disk)
/// leaves a file given with `--force` as it was; dropping the replacement
/// removes the temporary file.
#[derive(Debug)]
pub struct Replacement {
    temp: tempfile::NamedTempFile,
    path: PathBuf,
    force: bool,
}

impl Replacement {
    /// Checks `path` as [`create_output`] does and creates the temporary
    /// file in its directory.
    ///
    /// # Errors
    /// The [`CreateError`] for `path`, or the temporary file's I/O error.
    pub fn create(path: &Path, force: bool) -> Result<Self, CreateError> {
        check_output_path(path, force)?;
        let dir = match path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => Path::new("."),
        };
        let mut prefix = std::ffi::OsString::from(".");
        prefix.push(path.file_name().unwrap_or_default());
        prefix.push(".");
        let temp = tempfile::Builder::new()
            .prefix(&prefix)
            .suffix(".partial")
            .permissions(std::fs::Permissions::from_mode(0o600))
            .tempfile_in(dir)
            .map_err(|source| CreateError::Io {
                path: path.to_owned(),
                source,
            })?;
        Ok(Self {
            temp,
            path: path.to_owned(),
            force,
        })
    }

    /// The path the output replaces.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Renames the finished output over the path (atomically; a symlink
    /// or file put there meanwhile is replaced, not followed, and without
    /// `force` a file that appeared meanwhile is kept and the output fails).
    ///
    /// # Errors
    /// The rename's error; the temporary file is then removed.
    pub fn commit(self) -> Result<(), CreateError> {
        let io = |source| CreateError::Io {
            path: self.path.clone(),
            source,
        };
        self.temp.as_file().sync_data().map_err(io)?;
        let persisted = if self.force {
            self.temp.persist(&self.path)
        } else {
            self.temp.persist_noclobber(&self.path)
        };
        persisted
            .map(drop)
            .map_err(|error| match error.error.raw_os_error() {
                Some(libc::EEXIST) => CreateError::Exists(self.path.clone()),
                _ => io(error.error),
            })
    }
}

impl std::io::Write for Replacement {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.temp.write(bytes)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.temp.flush()
    }
}

/// Opens `path` for a new output (a recording, a report): mode 0600, never
/// through a symlink, never over an existing file unless `force`, and only
/// ever a regular file: a device node, FIFO, socket or directory is refused
/// before anything is opened for writing, and checked again on the opened
/// descriptor (nothing is truncated or chmod-ed before that check).
pub fn create_output(path: &Path, force: bool) -> Result<File, CreateError> {
    let io = |source| CreateError::Io {
        path: path.to_owned(),
        source,
    };
    check_output_path(path, force)?;
    let mut options = std::fs::OpenOptions::new();
    // O_NONBLOCK: a FIFO swapped in after the check must not block the
    // open (it fails with ENXIO without a reader; regular files ignore it).
    options
        .write(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK);
    if force {
        // Not `truncate`: nothing is changed before the descriptor is known
        // to be a regular file.
        options.create(true);
    } else {
        options.create_new(true);
    }
    let file = options
        .open(path)
        .map_err(|source| match source.raw_os_error() {
            Some(libc::EEXIST) => CreateError::Exists(path.to_owned()),
            Some(libc::ELOOP) => CreateError::Symlink(path.to_owned()),
            Some(libc::EISDIR) => CreateError::NotRegular {
                path: path.to_owned(),
                kind: "a directory",
            },
            Some(libc::ENXIO) => CreateError::NotRegular {
                path: path.to_owned(),
                kind: "a FIFO or socket",
            },
            _ => io(source),
        })?;
    let meta = file.metadata().map_err(io)?;
    if !meta.file_type().is_file() {
        return Err(CreateError::NotRegular {
            path: path.to_owned(),
            kind: file_kind(meta.file_type()),
        });
    }
    // A replaced file keeps its old content and mode: empty and tighten it.
    file.set_len(0).map_err(io)?;
    file.set_permissions(std::fs::Permissions::from_mode(0o600))
        .map_err(io)?;
    Ok(file)
}

/// What the writer thread did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WriterOutcome {
    /// Event lines written.
    pub events_written: u64,
    /// Events dropped because the queue was full.
    pub queue_dropped: u64,
    /// Records not written because writing failed.
    pub write_dropped: u64,
    /// The first write error, if any.
    pub write_error: Option<String>,
    /// Complete lines in the file.
    pub lines: u64,
}

enum Message {
    Record(Record),
    Finish(Box<Summary>),
}

/// Handle of a running recording.
pub struct RecordingWriter {
    queue: SyncSender<Message>,
    queue_dropped: Arc<AtomicU64>,
    not_written: Arc<AtomicU64>,
    events_written: Arc<AtomicU64>,
    thread: Option<JoinHandle<WriterOutcome>>,
    path: PathBuf,
}

struct LineFile {
    file: File,
    /// The lines gathered since the last flush: one buffer, reused, frozen
    /// into one [`bytes::Bytes`] per write.
    pending: BytesMut,
    /// One event line being serialised: serde_json writes a record in
    /// dozens of small pieces, which a `Vec` takes for less than
    /// `BytesMut`'s `Writer`; the whole line then goes into `pending` in
    /// one copy. (An event line is a few hundred bytes.)
    line: Vec<u8>,
    pending_lines: u64,
    pending_events: u64,
    committed_bytes: u64,
    /// Complete lines in the file.
    lines: u64,
    /// Event lines in the file.
    events: u64,
    /// Event lines lost to a failed write.
    failed_events: u64,
    error: Option<String>,
}

impl LineFile {
    fn new(file: File) -> Self {
        Self {
            file,
            pending: BytesMut::with_capacity(WRITE_CHUNK * 2),
            line: Vec::with_capacity(1024),
            pending_lines: 0,
            pending_events: 0,
            committed_bytes: 0,
            lines: 0,
            events: 0,
            failed_events: 0,
            error: None,
        }
    }

    /// Appends one record as a line; returns false once writing has failed.
    fn push(&mut self, record: &Record) -> bool {
        let is_event = matches!(record, Record::Event(_));
        if self.error.is_some() {
            if is_event {
                self.failed_events += 1;
            }
            return false;
        }
        // Serialising our own types cannot fail.
        if is_event {
            self.line.clear();
            serde_json::to_writer(&mut self.line, record).expect("record serialises");
            self.line.push(b'\n');
            self.pending.extend_from_slice(&self.line);
        } else {
            // Metadata and summary lines can be megabytes (a summary lists
            // every counted thread): written in place, not held twice.
            serde_json::to_writer((&mut self.pending).writer(), record).expect("record serialises");
            self.pending.extend_from_slice(b"\n");
        }
        self.pending_lines += 1;
        self.pending_events += u64::from(is_event);
        if self.pending.len() >= WRITE_CHUNK {
            self.flush();
        }
        self.error.is_none()
    }

    /// Writes the gathered lines; on failure cuts the file back to the last
    /// complete line and counts the gathered events as not written.
    fn flush(&mut self) {
        if self.pending.is_empty() || self.error.is_some() {
            return;
        }
        let chunk = self.pending.split().freeze();
        match self.file.write_all(&chunk) {
            Ok(()) => {
                self.committed_bytes += chunk.len() as u64;
                self.lines += self.pending_lines;
                self.events += self.pending_events;
            }
            Err(error) => {
                let _ = self.file.set_len(self.committed_bytes);
                self.failed_events += self.pending_events;
                self.error = Some(error.to_string());
            }
        }
        // The chunk is the only other owner of the buffer: dropping it lets
        // the next lines reuse the same memory.
        drop(chunk);
        self.pending.reserve(WRITE_CHUNK * 2);
        self.pending_lines = 0;
        self.pending_events = 0;
    }
}

impl RecordingWriter {
    /// Creates `path` (see [`create_output`]) and starts writing.
    pub fn create(
        path: &Path,
        force: bool,
        metadata: Metadata,
        queue_records: usize,
    ) -> Result<Self, CreateError> {
        let file = create_output(path, force)?;
        Self::start(file, path, metadata, queue_records)
    }

    /// Writes the metadata line to `file` (opened by [`create_output`])
    /// synchronously, then starts the writer thread.
    pub fn start(
        file: File,
        path: &Path,
        metadata: Metadata,
        queue_records: usize,
    ) -> Result<Self, CreateError> {
        let mut out = LineFile::new(file);
        out.push(&Record::Meta(Box::new(metadata)));
        out.flush();
        if let Some(error) = out.error.take() {
            return Err(CreateError::Write {
                path: path.to_owned(),
                source: std::io::Error::other(error),
            });
        }
        let (queue, receiver) = mpsc::sync_channel(queue_records.max(1));
        let queue_dropped = Arc::new(AtomicU64::new(0));
        let not_written = Arc::new(AtomicU64::new(0));
        let events_written = Arc::new(AtomicU64::new(0));
        let thread = {
            let queue_dropped = Arc::clone(&queue_dropped);
            let not_written = Arc::clone(&not_written);
            let events_written = Arc::clone(&events_written);
            std::thread::Builder::new()
                .name("recorder".into())
                .spawn(move || {
                    writer_loop(
                        &mut out,
                        &receiver,
                        &queue_dropped,
                        &not_written,
                        &events_written,
                    )
                })
                .map_err(|source| CreateError::Io {
                    path: path.to_owned(),
                    source,
                })?
        };
        Ok(Self {
            queue,
            queue_dropped,
            not_written,
            events_written,
            thread: Some(thread),
            path: path.to_owned(),
        })
    }

    /// The output path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Queues one event; never blocks. A full queue counts a drop.
    pub fn event(&self, event: Event) {
        match self.queue.try_send(Message::Record(Record::Event(event))) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.queue_dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Queues a `mitigation` record (waits for room: these are rare and
    /// are the moment a recording proves the diagnosis).
    pub fn mitigation(&self, change: crate::record::MitigationChange) {
        let _ = self.queue.send(Message::Record(Record::Mitigation(change)));
    }

    /// Queues a `lost` record (waits for room: these are rare and must not vanish).
    pub fn lost(&self, record: LostRecord) {
        let _ = self.queue.send(Message::Record(Record::Lost(record)));
    }

    /// Queues a `lost` record without waiting; `false` when the queue is
    /// full (the caller keeps the loss and reports it again later).
    pub fn try_lost(&self, record: LostRecord) -> bool {
        self.queue
            .try_send(Message::Record(Record::Lost(record)))
            .is_ok()
    }

    /// Events traced but not written so far (queue full or write failure).
    pub fn not_written(&self) -> u64 {
        self.queue_dropped.load(Ordering::Relaxed) + self.not_written.load(Ordering::Relaxed)
    }

    /// Event lines written so far.
    pub fn events_written(&self) -> u64 {
        self.events_written.load(Ordering::Relaxed)
    }

    /// The live count behind [`RecordingWriter::events_written`], for a
    /// progress display that outlives a borrow of the writer.
    pub fn events_written_counter(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.events_written)
    }

    /// Writes the summary (its `events_written`/`events_not_written` are
    /// filled in here), flushes, syncs and returns what happened.
    pub fn finish(mut self, summary: Summary) -> WriterOutcome {
        // The writer thread fills in the final counts when it reaches it.
        let _ = self.queue.send(Message::Finish(Box::new(summary)));
        self.thread
            .take()
            .and_then(|thread| thread.join().ok())
            .unwrap_or_default()
    }
}

impl Drop for RecordingWriter {
    fn drop(&mut self) {
        if let Some(thread) = self.thread.take() {
            // Dropped without finish(): close the queue and let the thread
            // flush what it has.
            let (dead, _) = mpsc::sync_channel(1);
            drop(std::mem::replace(&mut self.queue, dead));
            let _ = thread.join();
        }
    }
}

fn writer_loop(
    out: &mut LineFile,
    receiver: &mpsc::Receiver<Message>,
    queue_dropped: &AtomicU64,
    not_written: &AtomicU64,
    events_written: &AtomicU64,
) -> WriterOutcome {
    let mut reported_queue_drops = 0u64;
    let mut last_flush = Instant::now();
    let report_queue_drops = |out: &mut LineFile, reported: &mut u64| {
        let dropped = queue_dropped.load(Ordering::Relaxed);
        if dropped > *reported {
            let record = Record::Lost(LostRecord {
                ts_ns: crate::record::clock_ns(libc::CLOCK_MONOTONIC),
                cause: LostCause::RecorderQueueFull,
                detail: None,
                count: dropped - *reported,
            });
            if out.push(&record) {
                *reported = dropped;
            }
        }
    };
    let mut disconnected = false;
    'messages: while !disconnected {
        let first = match receiver.recv_timeout(FLUSH_INTERVAL) {
            Ok(message) => Some(message),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => break,
        };
        report_queue_drops(out, &mut reported_queue_drops);
        // Take what is already queued without looking at the clock for each
        // message (the clock calls cost more than a line at 300k events/s:
        // measured with perf in `cargo xtask bench`).
        let queued = std::iter::from_fn(|| match receiver.try_recv() {
            Ok(message) => Some(message),
            Err(mpsc::TryRecvError::Empty) => None,
            Err(mpsc::TryRecvError::Disconnected) => {
                disconnected = true;
                None
            }
        });
        for message in first.into_iter().chain(queued.take(BATCH)) {
            match message {
                Message::Record(record) => {
                    out.push(&record);
                }
                Message::Finish(mut summary) => {
                    report_queue_drops(out, &mut reported_queue_drops);
                    out.flush();
                    summary.events_written = out.events;
                    summary.events_not_written =
                        queue_dropped.load(Ordering::Relaxed) + out.failed_events;
                    out.push(&Record::Summary(summary));
                    out.flush();
                    break 'messages;
                }
            }
        }
        if last_flush.elapsed() >= FLUSH_INTERVAL {
            out.flush();
            last_flush = Instant::now();
        }
        events_written.store(out.events, Ordering::Relaxed);
        not_written.store(out.failed_events, Ordering::Relaxed);
    }
    out.flush();
    let _ = out.file.sync_all();
    events_written.store(out.events, Ordering::Relaxed);
    not_written.store(out.failed_events, Ordering::Relaxed);
    WriterOutcome {
        events_written: out.events,
        queue_dropped: queue_dropped.load(Ordering::Relaxed),
        write_dropped: out.failed_events,
        write_error: out.error.clone(),
        lines: out.lines,
    }
}
