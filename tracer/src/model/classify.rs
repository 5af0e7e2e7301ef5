//! The classifier: reads a thread's state and returns its verdict with the
//! evidence behind it, never changing the state (thresholds and hysteresis
//! in the module documentation of [`super`] and docs/classifier.md).

use tracer_events::Verdict;

use super::{
    LivelockState, PUNISHMENT_MIN_NS, StepOutcome, ThreadState, advice::kvm_error_hint,
    rate::WINDOW_NS,
};

impl ThreadState {
    /// Current verdict, with the evidence behind it, at time `now_ns`.
    /// `misery_possible` is false when the host is known not to punish
    /// (`split_lock_mitigate=0`, or a kernel before 5.19): then no inferred
    /// livelock is reported, since a short #AC-to-EINTR gap proves nothing.
    pub fn classify(&self, now_ns: u64, misery_possible: bool) -> (Verdict, bool, Vec<String>) {
        let (verdict, confirmed) = self.verdict(now_ns, misery_possible);
        let evidence = self.evidence(verdict, now_ns, misery_possible);
        (verdict, confirmed, evidence)
    }

    /// The verdict alone (cheap: no evidence text), at time `now_ns`.
    pub fn verdict(&self, now_ns: u64, misery_possible: bool) -> (Verdict, bool) {
        let quiet = self.quiet_at(now_ns);
        let livelock = self.effective_livelock(now_ns, misery_possible);
        if self.kvm_error.is_some() {
            return (Verdict::KvmError, true);
        }
        if self.killed.is_some() {
            return (Verdict::Killed, true);
        }
        if let Some(state) = livelock {
            return (Verdict::Livelock, state.confirmed);
        }
        if self.recovered_at(now_ns, misery_possible).is_some() {
            return (Verdict::Recovering, true);
        }
        if self.traps_in_window(now_ns) > 0 && !quiet {
            return (Verdict::Throttled, self.totals.traps > 0);
        }
        if now_ns.saturating_sub(self.last_seen_ns) <= WINDOW_NS {
            (Verdict::Ok, true)
        } else {
            (Verdict::Idle, true)
        }
    }

    /// The evidence behind `verdict` (as returned by [`Self::verdict`]).
    fn evidence(&self, verdict: Verdict, now_ns: u64, misery_possible: bool) -> Vec<String> {
        match verdict {
            Verdict::Recovering => {
                let Some((change, took_ns)) = self.recovered_at(now_ns, misery_possible) else {
                    return Vec::new();
                };
                let how = if self.recovery.as_ref().is_some_and(|r| r.ended_ns.is_some()) {
                    "completed a punishment"
                } else {
                    "stopped trapping"
                };
                vec![
                    format!(
                        "livelocked until {change}: {how} within {:.1} s of the change",
                        took_ns as f64 / 1e9
                    ),
                    format!(
                        "{} punishments completed, {} interrupted in total",
                        self.totals.completed_episodes, self.totals.interrupted_episodes
                    ),
                ]
            }
            Verdict::KvmError => {
                let reason = self.kvm_error.clone().unwrap_or_default();
                let hint = kvm_error_hint(&reason);
                vec![reason, hint]
            }
            Verdict::Killed => vec![
                self.killed.clone().unwrap_or_default(),
                "split_lock_detect=fatal kills the task; boot with split_lock_detect=warn or fix the guest".into(),
            ],
            Verdict::Livelock => match self.livelock {
                Some(state) => self.livelock_evidence(now_ns, state),
                None => Vec::new(),
            },
            Verdict::Throttled => {
                let traps_in_window = self.traps_in_window(now_ns);
                let mut evidence = if self.totals.traps > 0 {
                    let completed =
                        self.windows.sum(now_ns, |w| &w.episodes) - self.windows.sum(now_ns, |w| &w.interrupted);
                    vec![format!(
                        "{traps_in_window} split-lock traps in the last {} s, {completed} completed the punishment",
                        WINDOW_NS / 1_000_000_000
                    )]
                } else {
                    vec![format!(
                        "inferred (no kprobes): {traps_in_window} #AC VM exits in the last {} s, not cut short by signals",
                        WINDOW_NS / 1_000_000_000
                    )]
                };
                if let Some(ip) = self.last_ip {
                    evidence.push(format!("last IP 0x{ip:x}"));
                }
                evidence
            }
            Verdict::Ok | Verdict::Idle => Vec::new(),
        }
    }

    fn livelock_evidence(&self, now_ns: u64, state: LivelockState) -> Vec<String> {
        let mut evidence = Vec::new();
        if state.confirmed {
            let ip = self.streak_ip.unwrap_or_default();
            evidence.push(format!(
                "{} consecutive split-lock traps at IP 0x{ip:x}, each punishment interrupted, none completed",
                self.interrupted_streak
            ));
            if let Some(episode) = &self.last_episode {
                match episode.sleep {
                    Some((StepOutcome::Interrupted, left)) => evidence.push(format!(
                        "msleep_interruptible(10) returned {left} (ms left): sleep cut short"
                    )),
                    _ if episode.semaphore == Some(StepOutcome::Interrupted) => {
                        evidence.push("down_interruptible(&buslock_sem) returned -EINTR".into());
                    }
                    _ => {}
                }
            }
        } else {
            evidence.push(format!(
                "inferred (no kprobes): {} consecutive #AC VM exits at guest RIP 0x{:x}, each followed by KVM_RUN -EINTR within {} ms, no other exit",
                self.ac.streak,
                self.ac.rip,
                PUNISHMENT_MIN_NS / 1_000_000
            ));
        }
        let interrupted = if state.confirmed {
            self.totals.interrupted_episodes
        } else {
            self.kicks
                .rows(now_ns)
                .iter()
                .map(|kick| kick.cut)
                .sum::<u64>()
                + self.totals.cut_without_signal
        };
        if let Some(kick) = self.kicks.main_cutter() {
            let from = kick
                .sender
                .as_deref()
                .map(|sender| format!(" from {sender}"))
                .unwrap_or_default();
            let every = kick.period_ms.map_or_else(String::new, |period| {
                let comparison = if period < PUNISHMENT_MIN_NS as f64 / 1e6 {
                    "faster than the 10 ms punishment"
                } else {
                    "not faster than the nominal 10 ms punishment, but faster than the sleep at this HZ"
                };
                format!(" every {period:.1} ms ({comparison})")
            });
            let what = if state.confirmed {
                "punishments"
            } else {
                "#AC exits"
            };
            evidence.push(format!(
                "{} via {}{from}{every}, cut {} of {interrupted} {what} short",
                kick.signal,
                kick.kind.label(),
                kick.cut
            ));
        }
        if self.totals.cut_without_signal > 0 {
            evidence.push(format!(
                "{} of {interrupted} cut short with no signal seen for the thread in the window",
                self.totals.cut_without_signal
            ));
        }
        evidence.push(format!(
            "stuck for {:.1} s; {:.0} EINTR exits/s",
            now_ns.saturating_sub(state.since_ns) as f64 / 1e9,
            self.windows.per_second(now_ns, |w| &w.eintr)
        ));
        evidence
    }
}
