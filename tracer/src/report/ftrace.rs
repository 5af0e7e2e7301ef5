//! The kernel-developer view: a metadata header and ftrace-style lines,
//! then the verdicts with their evidence, ready to paste into a mail.

use std::fmt::Write as _;

use tracer_common::vmx;
use tracer_events::{
    Event, EventBody, LostRecord, Metadata, ProbeStatus, TrapSource, Verdict,
    event::{kvm_exit_reason_name, signal_code_name, signal_name},
    thread::format_ts,
};

use super::ReplayResult;
use crate::model::LIVELOCK_MITIGATIONS;

/// `writeln!` for ftrace text: the line is escaped (see
/// [`tracer_events::text`]), every value in it may come from the traced
/// system.
macro_rules! text_line {
    ($out:expr, $($arg:tt)*) => {
        tracer_events::text::push_line(&mut $out, &format!($($arg)*))
    };
}

/// The header block (`# ` lines).
pub fn header(metadata: &Metadata) -> String {
    let mut out = String::new();
    let host = &metadata.host;
    let or_unknown = |value: &Option<String>| value.clone().unwrap_or_else(|| "unknown".into());
    text_line!(
        out,
        "# split-lock tracer recording, format version {}",
        metadata.version
    );
    text_line!(
        out,
        "# tracer: {} (commit {}) {}",
        metadata.tracer.version,
        metadata.tracer.git_commit,
        metadata.tracer.command_line.join(" ")
    );
    text_line!(out, "# host: {}", or_unknown(&host.hostname));
    text_line!(
        out,
        "# kernel: {} {}",
        or_unknown(&host.kernel_release),
        or_unknown(&host.kernel_version)
    );
    text_line!(out, "# cmdline: {}", or_unknown(&host.cmdline));
    text_line!(
        out,
        "# kernel.split_lock_mitigate: {}",
        host.split_lock_mitigate
            .map_or_else(|| "absent".to_owned(), |value| value.to_string())
    );
    match &host.cpu {
        Some(cpu) => {
            text_line!(
                out,
                "# cpu: {} {} \"{}\" microcode {} flags:{}{}{}",
                cpu.vendor,
                cpu.signature(),
                cpu.model_name,
                cpu.microcode
                    .map_or_else(|| "unknown".to_owned(), |rev| format!("0x{rev:x}")),
                if cpu.split_lock_detect {
                    " split_lock_detect"
                } else {
                    ""
                },
                if cpu.bus_lock_detect {
                    " bus_lock_detect"
                } else {
                    ""
                },
                if cpu.hypervisor { " hypervisor" } else { "" },
            );
        }
        None => {
            text_line!(out, "# cpu: unknown ({})", or_unknown(&host.cpu_error));
        }
    }
    for (module, parameters) in &host.kvm_parameters {
        let list: Vec<String> = parameters
            .iter()
            .map(|(name, value)| format!("{name}={value}"))
            .collect();
        text_line!(out, "# {module}: {}", list.join(" "));
    }
    text_line!(
        out,
        "# mode: {}",
        metadata
            .mode
            .map_or_else(|| "none".to_owned(), |mode| mode.to_string())
    );
    for entry in &metadata.probes.entries {
        let status = match &entry.status {
            ProbeStatus::Attached { target } => format!("attached {target}"),
            ProbeStatus::Unavailable { reason } => format!("unavailable: {reason}"),
            ProbeStatus::Failed { reason } => format!("FAILED: {reason}"),
        };
        text_line!(out, "# probe {} {}: {status}", entry.kind, entry.target);
    }
    text_line!(
        out,
        "# clock: {} (add {} ns for Unix time), ring buffer {} KiB",
        metadata.clock.name,
        metadata.clock.realtime_offset_ns,
        metadata.ring_bytes / 1024
    );
    for vm in &metadata.vms {
        let vcpus: Vec<String> = vm
            .vcpus
            .iter()
            .map(|vcpu| format!("{}:{}", vcpu.index, vcpu.tid))
            .collect();
        text_line!(
            out,
            "# vm pid {} {} cpu {} vcpus {}",
            vm.pid,
            vm.info.label().unwrap_or_else(|| "?".into()),
            vm.cpu_model.as_deref().unwrap_or("?"),
            vcpus.join(" ")
        );
    }
    for (index, file) in metadata.guest_symbols.iter().enumerate() {
        text_line!(
            out,
            "# guest symbols {index} for {}: {} sha256 {} kaslr offset 0x{:x} ({} symbols)",
            file.vm.as_deref().unwrap_or("every VM"),
            file.path,
            file.sha256,
            file.kaslr_offset,
            file.symbols
        );
    }
    out
}

fn trap_function(source: TrapSource) -> &'static str {
    match source {
        TrapSource::Guest => "handle_guest_split_lock",
        TrapSource::User => "handle_user_split_lock",
        TrapSource::Warn => "split_lock_warn",
    }
}

fn vm_exit_text(exit_reason: u32, intr_info: u32) -> String {
    if exit_reason & vmx::EXIT_REASON_FAILED_VMENTRY != 0 {
        format!(
            "0x{exit_reason:x} (VM-entry failure, basic reason {})",
            exit_reason & 0xffff
        )
    } else if exit_reason == vmx::EXIT_REASON_EXCEPTION_NMI
        && intr_info & vmx::INTR_INFO_MATCH_MASK == vmx::INTR_INFO_AC
    {
        "EXCEPTION_NMI (#AC alignment check)".to_owned()
    } else {
        format!("{exit_reason}")
    }
}

/// One event as an ftrace-style line.
pub fn event_line(event: &Event) -> String {
    let what = match &event.body {
        EventBody::SplitLockTrap { source, ip } => match &event.symbol {
            Some(symbol) => format!(
                "{}: ip=0x{ip:x} sym={}",
                trap_function(*source),
                symbol.name
            ),
            None => format!("{}: ip=0x{ip:x}", trap_function(*source)),
        },
        EventBody::SplitLockReturn {
            source,
            handled,
            duration_ns,
        } => format!(
            "{}: ret={} ({}) duration={}.{:03} ms",
            trap_function(*source),
            u8::from(*handled),
            if *handled {
                "handled, detection off for the retry"
            } else {
                "not handled: SIGBUS"
            },
            duration_ns / 1_000_000,
            (duration_ns % 1_000_000) / 1000
        ),
        EventBody::SleepReturn { remaining_ms } => format!(
            "msleep_interruptible: ret={remaining_ms}{}",
            if *remaining_ms > 0 {
                " (interrupted)"
            } else {
                ""
            }
        ),
        EventBody::SemaphoreReturn { retval } => format!(
            "down_interruptible: ret={retval}{}",
            if *retval != 0 { " (interrupted)" } else { "" }
        ),
        EventBody::Signal {
            sig,
            errno,
            code,
            target_tid,
            group,
            result,
        } => {
            let mut text = format!(
                "signal_generate: sig={sig} ({}) errno={errno} code={} pid={target_tid}",
                signal_name(*sig),
                signal_code_name(*code)
            );
            if let Some(group) = group {
                let _ = write!(text, " grp={group}");
            }
            if let Some(result) = result {
                let _ = write!(text, " res={result}");
            }
            text
        }
        EventBody::UserspaceExit { reason, errno } => format!(
            "kvm_userspace_exit: reason={} errno={errno}",
            kvm_exit_reason_name(*reason)
        ),
        EventBody::VmExit {
            exit_reason,
            guest_rip,
            info1,
            info2,
            intr_info,
            error_code,
            vcpu_id,
            ..
        } => format!(
            "kvm_exit: vcpu {vcpu_id} reason {} rip 0x{guest_rip:x}{} info1 0x{info1:x} info2 0x{info2:x} intr_info 0x{intr_info:x} error_code 0x{error_code:x}",
            vm_exit_text(*exit_reason, *intr_info),
            event
                .symbol
                .as_ref()
                .map_or_else(String::new, |symbol| format!(" sym={}", symbol.name))
        ),
    };
    let line = format!(
        "{}-{} [{:03}] {}: {what}",
        event.comm,
        event.tid,
        event.cpu,
        format_ts(event.ts_ns)
    );
    tracer_events::text::escape(&line).into_owned()
}

/// A `mitigation` record as a comment line.
pub fn mitigation_line(change: &tracer_events::MitigationChange) -> String {
    let line = format!(
        "# MITIGATION {} at {} (after {})",
        change.describe(),
        format_ts(change.ts_ns),
        format_ts(change.since_ns)
    );
    tracer_events::text::escape(&line).into_owned()
}

/// A `lost` record as a comment line.
pub fn lost_line(lost: &LostRecord) -> String {
    let line = format!(
        "# LOST {} {:?}{} at {}",
        lost.count,
        lost.cause,
        lost.detail
            .as_ref()
            .map_or_else(String::new, |detail| format!(" ({detail})")),
        format_ts(lost.ts_ns)
    );
    tracer_events::text::escape(&line).into_owned()
}

/// The closing block: losses, verdicts with evidence, mitigations.
pub fn footer(result: &ReplayResult, warnings: &[String]) -> String {
    let mut out = String::from("#\n");
    let losses = &result.losses;
    text_line!(
        out,
        "# lost: ring buffer {}, undecodable {}, recursion {}, skipped by the kernel {}, counter map full {}, window map full {}, not written by the recorder {}",
        losses.ring_total(),
        losses.undecodable_total(),
        losses.recursion_total(),
        losses.skipped_by_kernel_total(),
        losses.counter_map_full,
        losses.window_map_full,
        result.events_not_written
    );
    for warning in warnings {
        text_line!(out, "# warning: {warning}");
    }
    if let Some(note) = super::threads_not_kept_note(result) {
        text_line!(out, "# {note}");
    }
    for row in &result.rows {
        text_line!(
            out,
            "# verdict tid {} ({}, pid {}, vCPU {}): {}",
            row.tid,
            row.comm,
            row.pid,
            row.vcpu.map_or_else(|| "-".into(), |vcpu| vcpu.to_string()),
            row.verdict_label()
        );
        for line in &row.evidence {
            text_line!(out, "#   {line}");
        }
    }
    for change in &result.changes {
        if matches!(
            change.to,
            Verdict::Livelock | Verdict::Killed | Verdict::KvmError
        ) {
            text_line!(
                out,
                "# tid {} became {}{} at {}",
                change.tid,
                change.to.label(),
                if change.confirmed { "" } else { " (inferred)" },
                format_ts(change.ts_ns)
            );
        }
    }
    let livelocked = result
        .rows
        .iter()
        .any(|row| row.verdict == Verdict::Livelock)
        || result
            .changes
            .iter()
            .any(|change| change.to == Verdict::Livelock);
    if livelocked {
        out.push_str("# mitigations for the livelock (any one):\n");
        for mitigation in LIVELOCK_MITIGATIONS {
            text_line!(out, "#   {mitigation}");
        }
    }
    out
}
