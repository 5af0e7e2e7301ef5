//! Classifier tests on modelled event streams (see `crate::simulate` for
//! the kernel functions each step models) and on hand-built streams.

use super::*;
use crate::simulate::{self, DetectMode, ProbeSet, Scenario};

const TID: u32 = 4250;

fn replay(events: &[Event]) -> Model {
    let mut model = Model::new();
    for event in events {
        model.apply(event);
    }
    model
}

fn row_at(model: &mut Model, now_ns: u64) -> ThreadRow {
    model
        .rows(now_ns, true)
        .into_iter()
        .find(|row| row.tid == TID)
        .expect("row for the vCPU thread")
}

fn final_row(scenario: &Scenario) -> (ThreadRow, simulate::SimulatedRun) {
    let run = simulate::run(scenario);
    let mut model = replay(&run.events);
    let now = model.latest_ns();
    (row_at(&mut model, now), run)
}

#[test]
fn seed_001_at_hz1000_9ms_timer_is_a_confirmed_livelock_with_zero_progress() {
    let (row, run) = final_row(&Scenario::seed_001(1000, 9.0, 3000));
    assert_eq!(run.guest_iterations, 0, "the model must make no progress");
    assert_eq!(row.verdict, Verdict::Livelock, "{row:#?}");
    assert!(row.confirmed);
    assert!(
        row.evidence[0].contains("at IP 0xffffffff810238b0"),
        "{:?}",
        row.evidence
    );
    assert!(
        row.evidence
            .iter()
            .any(|line| line.contains("msleep_interruptible(10) returned"))
    );
    assert!(
        // A one-shot timer re-armed per KVM_RUN: period plus the VMM's turnaround.
        row.evidence.iter().any(|line| line
            .starts_with("SIGUSR1 via a POSIX timer (SI_TIMER) every 9.1 ms")
            && line.contains(&format!(
                "cut {0} of {0} punishments short",
                row.totals.interrupted_episodes
            ))),
        "{:?}",
        row.evidence
    );
    assert_eq!(row.interrupted_pct, Some(100.0));
    assert_eq!(row.totals.completed_episodes, 0);
}

#[test]
fn seed_001_at_hz1000_11ms_timer_progresses_and_is_throttled() {
    let (row, run) = final_row(&Scenario::seed_001(1000, 11.0, 3000));
    assert!(run.guest_iterations > 0);
    assert_eq!(row.verdict, Verdict::Throttled, "{row:#?}");
    assert!(row.totals.completed_episodes > 0);
}

#[test]
fn at_hz250_an_11ms_timer_still_livelocks_because_the_sleep_is_12_to_16ms() {
    let (row, run) = final_row(&Scenario::seed_001(250, 11.0, 3000));
    assert_eq!(run.guest_iterations, 0);
    assert_eq!(row.verdict, Verdict::Livelock);
    let (row, run) = final_row(&Scenario::seed_001(250, 20.0, 3000));
    assert!(run.guest_iterations > 0);
    assert_eq!(row.verdict, Verdict::Throttled);
}

#[test]
fn seed_001_sweep_zero_progress_below_the_punishment_progress_above() {
    for period_ms in 1..=20u32 {
        let run = simulate::run(&Scenario::seed_001(1000, f64::from(period_ms), 1000));
        let mut model = replay(&run.events);
        let now = model.latest_ns();
        let row = row_at(&mut model, now);
        if period_ms < 10 {
            assert_eq!(run.guest_iterations, 0, "period {period_ms} ms");
            assert_eq!(row.verdict, Verdict::Livelock, "period {period_ms} ms");
        } else if period_ms >= 11 {
            assert!(run.guest_iterations > 0, "period {period_ms} ms");
            assert_eq!(row.verdict, Verdict::Throttled, "period {period_ms} ms");
        }
    }
}

#[test]
fn verdict_comes_within_a_second_of_onset_and_never_flaps() {
    let scenario = Scenario::seed_001(250, 1.0, 5000);
    let run = simulate::run(&scenario);
    let mut model = Model::new();
    let mut verdicts = Vec::new();
    let mut next_sample = scenario.start_ns;
    for event in &run.events {
        while event.ts_ns >= next_sample {
            if let Some(row) = model
                .rows(next_sample, true)
                .into_iter()
                .find(|row| row.tid == TID)
            {
                verdicts.push((next_sample, row.verdict));
            }
            next_sample += 100_000_000;
        }
        model.apply(event);
    }
    let first_livelock = verdicts
        .iter()
        .find(|(_, verdict)| *verdict == Verdict::Livelock)
        .expect("livelock detected");
    assert!(first_livelock.0 - scenario.start_ns <= 1_000_000_000);
    let transitions = verdicts
        .windows(2)
        .filter(|pair| pair[0].1 != pair[1].1)
        .count();
    assert!(transitions <= 1, "{verdicts:?}");
}

#[test]
fn a_single_interrupted_episode_is_not_a_livelock() {
    let trap = |ts, body| Event {
        ts_ns: ts,
        cpu: 0,
        tgid: 1,
        tid: TID,
        comm: "CPU 0/KVM".into(),
        body,
        symbol: None,
    };
    let events = vec![
        trap(
            1_000,
            EventBody::SplitLockTrap {
                source: TrapSource::Guest,
                ip: 0x10,
            },
        ),
        trap(
            2_000_000,
            EventBody::Signal {
                sig: 10,
                errno: 0,
                code: -2,
                target_tid: TID,
                group: Some(0),
                result: Some(0),
            },
        ),
        trap(2_001_000, EventBody::SleepReturn { remaining_ms: 8 }),
        trap(
            2_002_000,
            EventBody::SplitLockReturn {
                source: TrapSource::Guest,
                handled: true,
                duration_ns: 2_001_000,
            },
        ),
        trap(
            2_010_000,
            EventBody::UserspaceExit {
                reason: 10,
                errno: -4,
            },
        ),
    ];
    let mut model = replay(&events);
    let row = row_at(&mut model, 3_000_000);
    assert_eq!(row.verdict, Verdict::Throttled, "{row:#?}");
    // Two in a row at the same IP are still below the streak of three.
    let mut more = events.clone();
    for event in &events {
        let mut later = event.clone();
        later.ts_ns += 10_000_000;
        more.push(later);
    }
    let mut model = replay(&more);
    assert_eq!(row_at(&mut model, 13_000_000).verdict, Verdict::Throttled);
    // The third one makes it a livelock.
    for event in &events {
        let mut later = event.clone();
        later.ts_ns += 20_000_000;
        model.apply(&later);
    }
    assert_eq!(row_at(&mut model, 23_000_000).verdict, Verdict::Livelock);
}

#[test]
fn livelock_resolves_when_the_operator_sets_split_lock_mitigate_to_zero() {
    let mut scenario = Scenario::seed_001(1000, 1.0, 4000);
    scenario.mitigate = vec![(0, true), (2_000_000_000, false)];
    let run = simulate::run(&scenario);
    assert!(run.guest_iterations > 0, "progress after the sysctl change");
    let mut model = Model::new();
    let switch = scenario.start_ns + 2_000_000_000;
    let mut before = None;
    for event in &run.events {
        if before.is_none() && event.ts_ns >= switch {
            before = Some(row_at(&mut model, switch).verdict);
        }
        model.apply(event);
    }
    assert_eq!(before, Some(Verdict::Livelock));
    let end = model.latest_ns();
    let row = row_at(&mut model, end);
    assert_eq!(row.verdict, Verdict::Throttled, "{row:#?}");
    // After the quiet hold without traps the thread is no longer flagged.
    let later = row_at(&mut model, end + QUIET_HOLD_NS + 1);
    assert!(
        matches!(later.verdict, Verdict::Ok | Verdict::Idle),
        "{later:?}"
    );
}

#[test]
fn tracepoint_only_infers_the_livelock_and_says_so() {
    let mut scenario = Scenario::seed_001(1000, 1.0, 2000);
    scenario.probes = ProbeSet::TracepointOnly;
    let (row, _) = final_row(&scenario);
    assert_eq!(row.verdict, Verdict::Livelock);
    assert!(!row.confirmed);
    assert_eq!(row.verdict_label(), "LIVELOCK (inferred)");
    assert!(
        row.evidence[0].starts_with("inferred (no kprobes)"),
        "{:?}",
        row.evidence
    );

    scenario.period_ns = 20_000_000;
    let (row, _) = final_row(&scenario);
    assert_eq!(row.verdict, Verdict::Throttled, "{row:#?}");
    assert!(!row.confirmed);
}

#[test]
fn fatal_mode_is_killed() {
    let mut scenario = Scenario::seed_001(1000, 1.0, 1000);
    scenario.mode = DetectMode::Fatal;
    let (row, _) = final_row(&scenario);
    assert_eq!(row.verdict, Verdict::Killed, "{row:#?}");
    // Tracepoint-only still sees the SIGBUS.
    scenario.probes = ProbeSet::TracepointOnly;
    let (row, _) = final_row(&scenario);
    assert_eq!(row.verdict, Verdict::Killed);
}

fn vcpu_event(ts: u64, body: EventBody) -> Event {
    Event {
        ts_ns: ts,
        cpu: 0,
        tgid: 7,
        tid: TID,
        comm: "CPU 0/KVM".into(),
        body,
        symbol: None,
    }
}

#[test]
fn kvm_error_exits_are_reported_with_the_hardware_reason() {
    let mut model = replay(&[
        vcpu_event(
            1_000,
            EventBody::VmExit {
                exit_reason: 0x8000_0021,
                isa: 1,
                guest_rip: 0x8000,
                info1: 0,
                info2: 0,
                intr_info: 0,
                error_code: 0,
                vcpu_id: 0,
            },
        ),
        vcpu_event(
            2_000,
            EventBody::UserspaceExit {
                reason: 9,
                errno: 0,
            },
        ),
    ]);
    let row = row_at(&mut model, 3_000);
    assert_eq!(row.verdict, Verdict::KvmError);
    assert!(
        row.evidence[0].contains("KVM_EXIT_FAIL_ENTRY (hardware error 0x80000021)"),
        "{:?}",
        row.evidence
    );
    assert!(row.evidence[1].contains("tdp_mmu"));

    let mut model = replay(&[vcpu_event(
        2_000,
        EventBody::UserspaceExit {
            reason: 17,
            errno: 0,
        },
    )]);
    let row = row_at(&mut model, 3_000);
    assert_eq!(row.verdict, Verdict::KvmError);
    assert!(row.evidence[1].contains("microcode"));
    // Sticky: still an error much later.
    assert_eq!(
        row_at(&mut model, 20_000_000_000).verdict,
        Verdict::KvmError
    );
}

#[test]
fn a_reused_tid_is_not_merged_with_its_predecessor() {
    let mut model = replay(&[vcpu_event(
        1_000,
        EventBody::UserspaceExit {
            reason: 17,
            errno: 0,
        },
    )]);
    let mut reborn = vcpu_event(
        5_000_000,
        EventBody::UserspaceExit {
            reason: 10,
            errno: -4,
        },
    );
    reborn.tgid = 8;
    model.apply(&reborn);
    let thread = model.thread(TID).unwrap();
    assert_eq!(thread.tgid, 8);
    assert_eq!(thread.totals.error_exits, 0);
    assert_eq!(thread.totals.eintr_exits, 1);
}

#[test]
fn memory_stays_bounded_and_silent_threads_expire() {
    let mut model = Model::new();
    for tid in 0..(MAX_THREADS as u32 + 5_000) {
        let mut event = vcpu_event(
            u64::from(tid) * 1_000,
            EventBody::UserspaceExit {
                reason: 2,
                errno: 0,
            },
        );
        event.tid = tid;
        event.tgid = tid;
        model.apply(&event);
    }
    assert_eq!(model.thread_count(), MAX_THREADS);
    // The oldest were evicted, the newest kept.
    assert!(model.thread(0).is_none());
    assert!(model.thread(MAX_THREADS as u32 + 4_999).is_some());
    let last = model.latest_ns();
    model.expire(last + THREAD_EXPIRY_NS + 1, |_| false);
    assert_eq!(model.thread_count(), 0);
}

#[test]
fn dead_threads_leave_after_the_window_when_reported_gone() {
    let mut model = replay(&[vcpu_event(
        1_000,
        EventBody::UserspaceExit {
            reason: 10,
            errno: -4,
        },
    )]);
    model.expire(1_000_000, |_| true);
    assert_eq!(model.thread_count(), 1, "still inside the window");
    model.expire(5_000_000_000, |_| true);
    assert_eq!(model.thread_count(), 0);
}

#[test]
fn quiet_vcpu_threads_only_with_all() {
    let model = replay(&[vcpu_event(
        1_000,
        EventBody::UserspaceExit {
            reason: 2,
            errno: 0,
        },
    )]);
    assert!(model.rows(5_000_000_000, false).is_empty());
    assert_eq!(model.rows(5_000_000_000, true)[0].verdict, Verdict::Idle);
    assert_eq!(model.rows(5_000_000_000, true)[0].vcpu, Some(0));
}

#[test]
fn no_inferred_livelock_when_the_host_does_not_punish() {
    let mut scenario = Scenario::seed_001(1000, 1.0, 2000);
    scenario.probes = ProbeSet::TracepointOnly;
    scenario.mitigate = vec![(0, false)];
    let run = simulate::run(&scenario);
    assert!(run.guest_iterations > 0);
    let mut model = replay(&run.events);
    model.set_host(None, Some(0));
    let now = model.latest_ns();
    let row = row_at(&mut model, now);
    assert_eq!(row.verdict, Verdict::Throttled, "{row:#?}");
}

#[test]
fn punished_share_matches_the_time_spent_in_handlers() {
    let scenario = Scenario::seed_001(250, 50.0, 3000);
    let run = simulate::run(&scenario);
    let end = run.events.last().unwrap().ts_ns;
    let window_start = end - WINDOW_NS;
    let mut in_handlers = 0;
    let mut entered = None;
    for event in &run.events {
        match event.body {
            EventBody::SplitLockTrap {
                source: TrapSource::Guest,
                ..
            } => entered = Some(event.ts_ns),
            EventBody::SplitLockReturn { .. }
                if event.ts_ns / rate::BUCKET_NS > window_start / rate::BUCKET_NS =>
            {
                in_handlers += event.ts_ns - entered.unwrap();
            }
            _ => {}
        }
    }
    let expected = in_handlers as f64 * 100.0 / WINDOW_NS as f64;
    let mut model = replay(&run.events);
    let row = row_at(&mut model, end);
    assert!(
        (row.punished_pct - expected).abs() < 1.0,
        "{} vs {expected}",
        row.punished_pct
    );
    assert!(
        row.punished_pct > 50.0 && row.punished_pct < 90.0,
        "{}",
        row.punished_pct
    );
}

/// A host task, not a vCPU, in the same loop (kernel.md §5: the dosemu2
/// libi86 test split-locking `xchg` while a SIGALRM fires every < 10 ms):
/// handle_user_split_lock -> split_lock_warn -> msleep_interruptible cut
/// short by the signal -> handled -> the handler returns to the same
/// instruction. It gets its own row, without a vCPU index.
#[test]
fn a_split_locking_host_process_gets_a_row_and_a_verdict() {
    let ip = 0x5555_5555_1234;
    let mut events = Vec::new();
    let event = |ts: u64, body: EventBody| Event {
        ts_ns: ts,
        cpu: 0,
        tgid: 777,
        tid: 777,
        comm: "libi86-test".into(),
        body,
        symbol: None,
    };
    for round in 0..6u64 {
        let t = 1_000_000_000 + round * 5_000_000;
        events.push(event(
            t,
            EventBody::SplitLockTrap {
                source: TrapSource::User,
                ip,
            },
        ));
        events.push(event(
            t + 1_000,
            EventBody::SplitLockTrap {
                source: TrapSource::Warn,
                ip,
            },
        ));
        events.push(event(
            t + 4_000_000,
            EventBody::Signal {
                sig: 14,
                errno: 0,
                code: 0x80,
                target_tid: 777,
                group: Some(1),
                result: Some(0),
            },
        ));
        events.push(event(
            t + 4_000_100,
            EventBody::SleepReturn { remaining_ms: 8 },
        ));
        events.push(event(
            t + 4_000_200,
            EventBody::SplitLockReturn {
                source: TrapSource::User,
                handled: true,
                duration_ns: 4_000_200,
            },
        ));
    }
    let model = replay(&events);
    let now = model.latest_ns();
    let rows = model.rows(now, false);
    let row = rows
        .iter()
        .find(|row| row.tid == 777)
        .expect("a row for the host task");
    assert_eq!(row.vcpu, None);
    assert_eq!(row.comm, "libi86-test");
    assert_eq!(row.verdict, Verdict::Livelock, "{:?}", row.evidence);
    assert!(row.confirmed);
    assert_eq!(row.totals.traps, 6);
    assert_eq!(row.totals.sleeps_interrupted, 6);
}

/// The tracepoint-only rule on a host whose knob is 0 for the first 2 s
/// and 1 after (the benchmark's latency scenario): no LIVELOCK while the
/// host does not punish, even though it believes it might; LIVELOCK once
/// it does.
#[test]
fn inferred_livelock_starts_with_the_punishment_not_before() {
    for hz in [250, 1000] {
        let mut scenario = Scenario::seed_001(hz, 1.0, 4000);
        scenario.probes = ProbeSet::TracepointOnly;
        scenario.mitigate = vec![(0, false), (2_000_000_000, true)];
        let run = simulate::run(&scenario);
        let punishment_from = scenario.start_ns + 2_000_000_000;
        let mut model = Model::new();
        let mut first_livelock = None;
        for event in &run.events {
            model.apply(event);
            let row = row_at(&mut model, event.ts_ns);
            if row.verdict == Verdict::Livelock && first_livelock.is_none() {
                first_livelock = Some(event.ts_ns);
            }
        }
        let at = first_livelock.expect("a livelock once the host punishes");
        assert!(
            at >= punishment_from,
            "HZ={hz}: LIVELOCK {} ms before the punishment started",
            (punishment_from - at) / 1_000_000
        );
        assert!(
            at - punishment_from < 100_000_000,
            "HZ={hz}: {} ms late",
            (at - punishment_from) / 1_000_000
        );
    }
}

/// QEMU's kick: SIGUSR1 via pthread_kill (SI_TKILL) from the main thread.
fn tkill_scenario(probes: ProbeSet) -> Scenario {
    let mut scenario = Scenario::seed_001(1000, 1.0, 3000);
    scenario.kick = simulate::Kick::Tkill;
    scenario.probes = probes;
    scenario
}

#[test]
fn a_tkill_kick_is_attributed_to_its_sender_and_counted_per_cut_punishment() {
    let (row, _) = final_row(&tkill_scenario(ProbeSet::Full));
    assert_eq!(row.verdict, Verdict::Livelock, "{row:#?}");
    assert!(row.confirmed);
    let kick = &row.kicks[0];
    assert_eq!(kick.kind, tracer_events::SignalKind::Tkill);
    assert_eq!(kick.signal, "SIGUSR1");
    assert_eq!(
        kick.sender.as_deref(),
        Some("qemu-system-x86 (pid 4242, main thread)")
    );
    assert_eq!(kick.cut, row.totals.interrupted_episodes, "{row:#?}");
    assert!(kick.cut > 0);
    assert_eq!(row.totals.cut_without_signal, 0);
    // Not a timer: no SI_TIMER period, but the kick's own.
    assert_eq!(row.timer_period_ms, None);
    assert!(
        kick.period_ms.is_some_and(|ms| (0.9..1.3).contains(&ms)),
        "{kick:?}"
    );
    let line = row
        .evidence
        .iter()
        .find(|line| line.starts_with("SIGUSR1 via tkill"))
        .unwrap_or_else(|| panic!("{:?}", row.evidence));
    assert!(
        line.contains("from qemu-system-x86 (pid 4242, main thread) every 1.")
            && line.contains(&format!("cut {0} of {0} punishments short", kick.cut)),
        "{line}"
    );
}

#[test]
fn a_tkill_kick_is_attributed_in_tracepoint_only_inference_too() {
    let (row, _) = final_row(&tkill_scenario(ProbeSet::TracepointOnly));
    assert_eq!(row.verdict, Verdict::Livelock, "{row:#?}");
    assert!(!row.confirmed);
    let kick = &row.kicks[0];
    assert_eq!(kick.kind, tracer_events::SignalKind::Tkill);
    assert!(kick.cut > 0, "{row:#?}");
    assert!(
        row.evidence
            .iter()
            .any(|line| line.starts_with("SIGUSR1 via tkill") && line.contains("#AC exits short")),
        "{:?}",
        row.evidence
    );
}

#[test]
fn a_punishment_cut_short_without_a_signal_says_so() {
    // The timer signals of a livelocked run, minus the ones inside the
    // handler windows: the sleeps still end early (as TIF_NOTIFY_SIGNAL or
    // task work would end them), and the evidence must not name a signal.
    let run = simulate::run(&Scenario::seed_001(1000, 1.0, 2000));
    let mut inside = false;
    let events: Vec<Event> = run
        .events
        .into_iter()
        .filter(|event| {
            match event.body {
                EventBody::SplitLockTrap { .. } => inside = true,
                EventBody::SplitLockReturn { .. } => inside = false,
                _ => {}
            }
            !(inside && matches!(event.body, EventBody::Signal { .. }))
        })
        .collect();
    let mut model = replay(&events);
    let now = model.latest_ns();
    let row = row_at(&mut model, now);
    assert_eq!(row.verdict, Verdict::Livelock);
    assert_eq!(
        row.totals.cut_without_signal,
        row.totals.interrupted_episodes
    );
    assert!(
        row.kicks.iter().all(|kick| kick.cut == 0),
        "{:?}",
        row.kicks
    );
    assert!(
        row.evidence
            .iter()
            .any(|line| line.contains("cut short with no signal seen")),
        "{:?}",
        row.evidence
    );
}
