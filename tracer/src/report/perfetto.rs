//! Perfetto export (TrackEvent protobuf, via the perfetto_protos crate
//! generated from Perfetto's own .proto files): one track per thread,
//! slices for split-lock episodes, instants for traps, signals, KVM exits,
//! losses and verdict changes, counter tracks for per-second rates.
//!
//! Each packet is encoded and written as soon as it is made (a `Trace` is
//! its packets one after another, each as field 1), so memory stays bounded
//! by the threads' state, whatever the recording's length.

use std::{
    collections::{BTreeMap, HashMap},
    io::Write,
};

use perfetto_protos::{
    counter_descriptor::CounterDescriptor,
    debug_annotation::DebugAnnotation,
    process_descriptor::ProcessDescriptor,
    thread_descriptor::ThreadDescriptor,
    trace_packet::TracePacket,
    track_descriptor::TrackDescriptor,
    track_event::{TrackEvent, track_event::Type},
};
use protobuf::Message as _;

use super::VerdictChange;
use tracer_events::{
    Event, EventBody, LostRecord, Metadata, ProcessInfo, TrapSource, Verdict,
    event::{kvm_exit_reason_name, signal_code_name, signal_name},
};

/// Perfetto's `BUILTIN_CLOCK_MONOTONIC`: the clock of every timestamp.
const CLOCK_MONOTONIC_ID: u32 = 3;
/// One writer sequence.
const SEQUENCE_ID: u32 = 1;
/// Counter buckets.
const BUCKET_NS: u64 = 1_000_000_000;
/// Track of losses and tracer notes.
const TRACER_TRACK: u64 = 1;

/// Track uuid spaces (high bits) so ids never collide.
fn process_track(pid: u32) -> u64 {
    (1 << 40) | u64::from(pid)
}
/// Thread track uuid.
pub fn thread_track(tid: u32) -> u64 {
    (2 << 40) | u64::from(tid)
}
fn counter_track(tid: u32, counter: Counter) -> u64 {
    ((3 + counter as u64) << 40) | u64::from(tid)
}

/// Per-thread rate counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Counter {
    /// Split-lock traps per second.
    Traps = 0,
    /// Signals aimed at the thread per second.
    Signals = 1,
    /// KVM_RUN -EINTR returns per second.
    Eintr = 2,
}

impl Counter {
    const ALL: [Self; 3] = [Self::Traps, Self::Signals, Self::Eintr];

    /// Track name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Traps => "split-lock traps/s",
            Self::Signals => "signals/s",
            Self::Eintr => "KVM_RUN EINTR/s",
        }
    }
}

struct ThreadTrack {
    open_slice: bool,
    bucket_start: u64,
    counts: [u64; 3],
}

/// The key of `Trace.packet` (field 1, length-delimited), written before
/// each packet's length and bytes.
const TRACE_PACKET_KEY: u8 = (1 << 3) | 2;

/// Builds a Perfetto trace from a stream of records, writing it to `W`.
pub struct PerfettoBuilder<W: Write> {
    out: W,
    /// Packets written so far.
    packets: u64,
    /// Bytes written so far.
    written: u64,
    /// Reused encoding buffer of one packet.
    scratch: Vec<u8>,
    /// The first write error: nothing more is written after it, and
    /// [`PerfettoBuilder::finish`] returns it.
    error: Option<std::io::Error>,
    processes: BTreeMap<u32, ProcessInfo>,
    declared_processes: std::collections::BTreeSet<u32>,
    threads: HashMap<u32, ThreadTrack>,
    last_ts: u64,
}

fn annotation_str(name: &str, value: String) -> DebugAnnotation {
    let mut annotation = DebugAnnotation::new();
    annotation.set_name(name.to_owned());
    annotation.set_string_value(value);
    annotation
}

fn annotation_uint(name: &str, value: u64) -> DebugAnnotation {
    let mut annotation = DebugAnnotation::new();
    annotation.set_name(name.to_owned());
    annotation.set_uint_value(value);
    annotation
}

fn annotation_int(name: &str, value: i64) -> DebugAnnotation {
    let mut annotation = DebugAnnotation::new();
    annotation.set_name(name.to_owned());
    annotation.set_int_value(value);
    annotation
}

impl<W: Write> PerfettoBuilder<W> {
    /// A builder that names processes from the recording's metadata and
    /// writes the trace to `out`.
    pub fn new(metadata: &Metadata, out: W) -> Self {
        let mut builder = Self {
            out,
            packets: 0,
            written: 0,
            scratch: Vec::new(),
            error: None,
            processes: metadata
                .vms
                .iter()
                .map(|vm| (vm.pid, vm.info.clone()))
                .collect(),
            declared_processes: std::collections::BTreeSet::new(),
            threads: HashMap::new(),
            last_ts: metadata.clock.start_ns,
        };
        let mut tracer = TrackDescriptor::new();
        tracer.set_uuid(TRACER_TRACK);
        tracer.set_name(format!(
            "split-lock tracer ({} mode)",
            metadata
                .mode
                .map_or_else(|| "no".to_owned(), |mode| mode.to_string())
        ));
        builder.descriptor(metadata.clock.start_ns, tracer);
        builder
    }

    fn packet(&mut self, ts_ns: u64) -> TracePacket {
        let mut packet = TracePacket::new();
        packet.set_timestamp(ts_ns);
        packet.set_timestamp_clock_id(CLOCK_MONOTONIC_ID);
        packet.set_trusted_packet_sequence_id(SEQUENCE_ID);
        if self.packets == 0 {
            packet.set_sequence_flags(1); // SEQ_INCREMENTAL_STATE_CLEARED
            packet.set_first_packet_on_sequence(true);
        }
        packet
    }

    /// Encodes `packet` and writes it as the trace's next `packet` field.
    fn write(&mut self, packet: &TracePacket) {
        self.packets += 1;
        if self.error.is_some() {
            return;
        }
        self.scratch.clear();
        self.scratch.push(TRACE_PACKET_KEY);
        if let Err(error) = packet.write_length_delimited_to_vec(&mut self.scratch) {
            self.error = Some(std::io::Error::other(error));
            return;
        }
        match self.out.write_all(&self.scratch) {
            Ok(()) => self.written += self.scratch.len() as u64,
            Err(error) => self.error = Some(error),
        }
    }

    fn descriptor(&mut self, ts_ns: u64, descriptor: TrackDescriptor) {
        let mut packet = self.packet(ts_ns);
        packet.set_track_descriptor(descriptor);
        self.write(&packet);
    }

    fn track_event(
        &mut self,
        ts_ns: u64,
        track: u64,
        kind: Type,
        name: Option<String>,
        annotations: Vec<DebugAnnotation>,
    ) {
        let mut event = TrackEvent::new();
        event.set_type(kind);
        event.set_track_uuid(track);
        if let Some(name) = name {
            event.set_name(name);
        }
        event.categories.push("split_lock".into());
        event.debug_annotations = annotations;
        let mut packet = self.packet(ts_ns);
        packet.set_track_event(event);
        self.write(&packet);
    }

    fn counter_value(&mut self, ts_ns: u64, track: u64, value: i64) {
        let mut event = TrackEvent::new();
        event.set_type(Type::TYPE_COUNTER);
        event.set_track_uuid(track);
        event.set_counter_value(value);
        let mut packet = self.packet(ts_ns);
        packet.set_track_event(event);
        self.write(&packet);
    }

    fn ensure_thread(&mut self, ts_ns: u64, pid: u32, tid: u32, comm: &str) {
        if self.threads.contains_key(&tid) {
            return;
        }
        if pid != 0 && self.declared_processes.insert(pid) {
            let mut process = ProcessDescriptor::new();
            process.set_pid(pid as i32);
            let label = self
                .processes
                .get(&pid)
                .and_then(ProcessInfo::label)
                .unwrap_or_else(|| format!("pid {pid}"));
            process.set_process_name(label);
            let mut descriptor = TrackDescriptor::new();
            descriptor.set_uuid(process_track(pid));
            descriptor.process = Some(process).into();
            self.descriptor(ts_ns, descriptor);
        }
        let mut thread = ThreadDescriptor::new();
        thread.set_pid(pid as i32);
        thread.set_tid(tid as i32);
        thread.set_thread_name(comm.to_owned());
        let mut descriptor = TrackDescriptor::new();
        descriptor.set_uuid(thread_track(tid));
        if pid != 0 {
            descriptor.set_parent_uuid(process_track(pid));
        }
        descriptor.thread = Some(thread).into();
        self.descriptor(ts_ns, descriptor);
        for counter in Counter::ALL {
            let mut descriptor = TrackDescriptor::new();
            descriptor.set_uuid(counter_track(tid, counter));
            descriptor.set_parent_uuid(thread_track(tid));
            descriptor.set_name(format!("{} {comm} ({tid})", counter.name()));
            descriptor.counter = Some(CounterDescriptor::new()).into();
            self.descriptor(ts_ns, descriptor);
        }
        self.threads.insert(
            tid,
            ThreadTrack {
                open_slice: false,
                bucket_start: ts_ns - ts_ns % BUCKET_NS,
                counts: [0; 3],
            },
        );
    }

    /// Emits counter values for every finished bucket of `tid` before `ts_ns`.
    fn roll_buckets(&mut self, tid: u32, ts_ns: u64) {
        let Some(thread) = self.threads.get_mut(&tid) else {
            return;
        };
        if ts_ns < thread.bucket_start + BUCKET_NS {
            return;
        }
        let start = thread.bucket_start;
        let counts = std::mem::take(&mut thread.counts);
        thread.bucket_start = ts_ns - ts_ns % BUCKET_NS;
        let next = start + BUCKET_NS;
        let gap = thread.bucket_start > next;
        for counter in Counter::ALL {
            let track = counter_track(tid, counter);
            self.counter_value(start, track, counts[counter as usize] as i64);
            if gap {
                self.counter_value(next, track, 0);
            }
        }
    }

    fn count(&mut self, tid: u32, counter: Counter) {
        if let Some(thread) = self.threads.get_mut(&tid) {
            thread.counts[counter as usize] += 1;
        }
    }

    fn end_slice(&mut self, tid: u32, ts_ns: u64, annotations: Vec<DebugAnnotation>) {
        if let Some(thread) = self.threads.get_mut(&tid)
            && thread.open_slice
        {
            thread.open_slice = false;
            self.track_event(
                ts_ns,
                thread_track(tid),
                Type::TYPE_SLICE_END,
                None,
                annotations,
            );
        }
    }

    /// Adds one event.
    /// The first write error so far, so a caller can stop reading early
    /// ([`PerfettoBuilder::finish`] still returns the error itself).
    ///
    /// # Errors
    /// A copy of that write error (its kind and message).
    pub fn write_error(&self) -> std::io::Result<()> {
        self.error.as_ref().map_or(Ok(()), |error| {
            Err(std::io::Error::new(error.kind(), error.to_string()))
        })
    }

    pub fn event(&mut self, event: &Event) {
        let ts = event.ts_ns;
        self.last_ts = self.last_ts.max(ts);
        let subject = event.subject_tid();
        let (pid, comm) = if event.in_subject_context() {
            (event.tgid, event.comm.to_string())
        } else {
            (0, format!("tid {subject}"))
        };
        self.ensure_thread(ts, pid, subject, &comm);
        self.roll_buckets(subject, ts);
        let track = thread_track(subject);
        match &event.body {
            EventBody::SplitLockTrap { source, ip } => {
                if *source == TrapSource::Warn {
                    self.track_event(
                        ts,
                        track,
                        Type::TYPE_INSTANT,
                        Some("split_lock_warn".into()),
                        vec![annotation_str("ip", format!("0x{ip:x}"))],
                    );
                    return;
                }
                self.count(subject, Counter::Traps);
                self.end_slice(
                    subject,
                    ts,
                    vec![annotation_str("note", "no return seen".into())],
                );
                let name = match source {
                    TrapSource::Guest => "guest split-lock episode",
                    _ => "host split-lock episode",
                };
                let mut annotations = vec![annotation_str("ip", format!("0x{ip:x}"))];
                let name = match &event.symbol {
                    Some(symbol) => {
                        annotations.push(annotation_str("symbol", symbol.name.clone()));
                        format!("{name} at {}", symbol.name)
                    }
                    None => name.into(),
                };
                self.track_event(ts, track, Type::TYPE_SLICE_BEGIN, Some(name), annotations);
                if let Some(thread) = self.threads.get_mut(&subject) {
                    thread.open_slice = true;
                }
            }
            EventBody::SplitLockReturn { handled, .. } => {
                self.end_slice(
                    subject,
                    ts,
                    vec![annotation_uint("handled", u64::from(*handled))],
                );
            }
            EventBody::SleepReturn { remaining_ms } => self.track_event(
                ts,
                track,
                Type::TYPE_INSTANT,
                Some(if *remaining_ms > 0 {
                    "punishment sleep interrupted".into()
                } else {
                    "punishment sleep completed".into()
                }),
                vec![annotation_uint("msleep_interruptible_ret", *remaining_ms)],
            ),
            EventBody::SemaphoreReturn { retval } => self.track_event(
                ts,
                track,
                Type::TYPE_INSTANT,
                Some(if *retval != 0 {
                    "semaphore wait interrupted".into()
                } else {
                    "semaphore acquired".into()
                }),
                vec![annotation_int("down_interruptible_ret", i64::from(*retval))],
            ),
            EventBody::Signal { sig, code, .. } => {
                self.count(subject, Counter::Signals);
                self.track_event(
                    ts,
                    track,
                    Type::TYPE_INSTANT,
                    Some(format!("{} {}", signal_code_name(*code), signal_name(*sig))),
                    vec![
                        annotation_int("sig", i64::from(*sig)),
                        annotation_int("code", i64::from(*code)),
                        annotation_uint("sender_tid", u64::from(event.tid)),
                    ],
                );
            }
            EventBody::UserspaceExit { reason, errno } => {
                if *errno == tracer_common::KVM_RUN_EINTR {
                    self.count(subject, Counter::Eintr);
                }
                self.track_event(
                    ts,
                    track,
                    Type::TYPE_INSTANT,
                    Some(format!("KVM_RUN -> {}", kvm_exit_reason_name(*reason))),
                    vec![annotation_int("errno", i64::from(*errno))],
                );
            }
            EventBody::VmExit {
                exit_reason,
                guest_rip,
                intr_info,
                ..
            } => self.track_event(
                ts,
                track,
                Type::TYPE_INSTANT,
                Some(match &event.symbol {
                    Some(symbol) => format!("kvm_exit 0x{exit_reason:x} at {}", symbol.name),
                    None => format!("kvm_exit 0x{exit_reason:x}"),
                }),
                vec![
                    annotation_str("guest_rip", format!("0x{guest_rip:x}")),
                    annotation_str("intr_info", format!("0x{intr_info:x}")),
                ],
            ),
        }
    }

    /// Adds a loss marker on the tracer track.
    pub fn lost(&mut self, lost: &LostRecord) {
        self.track_event(
            lost.ts_ns,
            TRACER_TRACK,
            Type::TYPE_INSTANT,
            Some(format!("LOST {} {:?}", lost.count, lost.cause)),
            vec![annotation_uint("count", lost.count)],
        );
    }

    /// A mitigation change: an instant on the tracer's track.
    pub fn mitigation(&mut self, change: &tracer_events::MitigationChange) {
        self.track_event(
            change.ts_ns,
            TRACER_TRACK,
            Type::TYPE_INSTANT,
            Some(format!("MITIGATION {}", change.describe())),
            vec![annotation_uint("since_ns", change.since_ns)],
        );
    }

    /// Adds verdict-change instants, closes open slices, flushes the
    /// counters and the writer; returns the writer and the bytes written,
    /// or the first write error.
    pub fn finish(mut self, changes: &[VerdictChange], end_ns: u64) -> std::io::Result<(W, u64)> {
        let end = end_ns.max(self.last_ts);
        for change in changes {
            if change.from.is_none() && matches!(change.to, Verdict::Ok | Verdict::Idle) {
                continue;
            }
            let label = format!(
                "verdict {}{}",
                change.to.label(),
                if change.confirmed { "" } else { " (inferred)" }
            );
            let reason = change.reason.clone().unwrap_or_default();
            self.ensure_thread(
                change.ts_ns,
                change.pid,
                change.tid,
                &format!("tid {}", change.tid),
            );
            self.track_event(
                change.ts_ns,
                thread_track(change.tid),
                Type::TYPE_INSTANT,
                Some(label),
                vec![annotation_str("evidence", reason)],
            );
        }
        let mut tids: Vec<u32> = self.threads.keys().copied().collect();
        tids.sort_unstable();
        for tid in tids {
            self.end_slice(
                tid,
                end,
                vec![annotation_str("note", "recording ended".into())],
            );
            self.roll_buckets(tid, end + BUCKET_NS);
        }
        if let Some(error) = self.error {
            return Err(error);
        }
        self.out.flush()?;
        Ok((self.out, self.written))
    }
}
