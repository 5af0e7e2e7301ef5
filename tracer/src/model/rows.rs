//! Display rows built from the model (the model does not keep them).

use tracer_events::{ProcessInfo, ThreadRow};

use super::{Model, rate::WINDOW_NS};

impl Model {
    /// Rows for every thread with split-lock or KVM activity (all vCPU
    /// threads with `include_quiet`), stuck threads first.
    pub fn rows(&self, now_ns: u64, include_quiet: bool) -> Vec<ThreadRow> {
        let processes = &self.processes;
        let misery_possible = self.misery != Some(false);
        let mut rows: Vec<ThreadRow> = self
            .threads
            .values()
            .filter(|thread| thread.has_row())
            .map(|thread| {
                let (verdict, confirmed, evidence) = thread.classify(now_ns, misery_possible);
                let episodes = thread.windows.sum(now_ns, |w| &w.episodes);
                let interrupted = thread.windows.sum(now_ns, |w| &w.interrupted);
                ThreadRow {
                    pid: thread.tgid,
                    vm: processes.get(&thread.tgid).and_then(ProcessInfo::label),
                    vcpu: thread.vcpu,
                    tid: thread.tid,
                    comm: thread.comm.to_string(),
                    traps_per_s: thread.traps_in_window(now_ns) as f64 / (WINDOW_NS as f64 / 1e9),
                    last_ip: thread.last_ip,
                    last_ip_symbol: None,
                    interrupted_pct: (episodes > 0)
                        .then(|| interrupted as f64 * 100.0 / episodes as f64),
                    signals_per_s: thread.signals.per_second_at(now_ns),
                    timer_period_ms: thread
                        .kicks
                        .period_of_kind_ms(tracer_events::SignalKind::Timer, now_ns),
                    kicks: thread.kicks.rows(now_ns),
                    eintr_per_s: thread.windows.per_second(now_ns, |w| &w.eintr),
                    punished_pct: (thread.windows.sum(now_ns, |w| &w.punished_ns) as f64 * 100.0
                        / WINDOW_NS as f64)
                        .min(100.0),
                    verdict,
                    confirmed,
                    evidence,
                    totals: thread.totals.clone(),
                    kernel: None,
                }
            })
            // quiet vCPU threads are shown only with --all
            .filter(|row| include_quiet || !row.is_quiet())
            .collect();
        rows.sort_by(|a, b| {
            (a.verdict, a.pid, a.vcpu.unwrap_or(u32::MAX), a.tid).cmp(&(
                b.verdict,
                b.pid,
                b.vcpu.unwrap_or(u32::MAX),
                b.tid,
            ))
        });
        rows
    }
}
