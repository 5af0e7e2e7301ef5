//! `tracer live`: trace, model and redraw every interval.

use std::{
    io::{IsTerminal as _, Read as _, Write as _},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use tokio::signal::unix::{SignalKind, signal};

use crate::{
    cli::LiveArgs,
    kernel::host::HostRoot,
    live::{self, Style, ViewStatus},
    model::{KernelCounts, Model, ThreadRow},
    session::{SessionOptions, TraceSession},
};

/// CLOCK_MONOTONIC now, the clock of `bpf_ktime_get_ns`.
pub fn monotonic_now_ns() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &raw mut now) };
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}

fn terminal_width() -> u16 {
    // SAFETY: TIOCGWINSZ fills a winsize struct.
    let mut size: libc::winsize = unsafe { std::mem::zeroed() };
    let ok = unsafe { libc::ioctl(libc::STDOUT_FILENO, libc::TIOCGWINSZ, &raw mut size) } == 0;
    if ok && size.ws_col > 20 {
        size.ws_col
    } else {
        160
    }
}

/// Puts the terminal in non-canonical, no-echo mode so `q` quits without
/// Enter; restores it on drop.
struct RawStdin(Option<libc::termios>);

impl RawStdin {
    fn enable() -> Self {
        if !std::io::stdin().is_terminal() {
            return Self(None);
        }
        // SAFETY: termios calls on stdin with valid pointers.
        unsafe {
            let mut original: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(libc::STDIN_FILENO, &raw mut original) != 0 {
                return Self(None);
            }
            let mut raw = original;
            raw.c_lflag &= !(libc::ICANON | libc::ECHO);
            libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &raw const raw);
            Self(Some(original))
        }
    }
}

impl Drop for RawStdin {
    fn drop(&mut self) {
        if let Some(original) = self.0 {
            // SAFETY: restoring the saved attributes.
            unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &raw const original) };
        }
    }
}

/// Runs the live view.
pub fn run(args: &LiveArgs) -> anyhow::Result<i32> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    runtime.block_on(run_async(args))
}

fn keep_row(row: &ThreadRow, args: &LiveArgs, model: &Model) -> bool {
    if let Some(pid) = args.trace.pid
        && row.pid != pid
    {
        return false;
    }
    if let Some(wanted) = &args.vm {
        let info = model.processes().get(&row.pid);
        let matches = info.is_some_and(|info| {
            info.name.as_deref() == Some(wanted.as_str())
                || info.vmid.as_deref() == Some(wanted.as_str())
        });
        if !matches {
            return false;
        }
    }
    true
}

async fn run_async(args: &LiveArgs) -> anyhow::Result<i32> {
    let options = SessionOptions {
        pid: args.trace.pid,
        ring_bytes: args.trace.ring_mib.map(|mib| mib << 20),
    };
    let mut session = TraceSession::start(&options)?;
    let host = HostRoot::live();
    let mut model = Model::new();
    model.set_misery_possible(host.misery_possible());
    let interactive = std::io::stdout().is_terminal() && !args.json;
    let _raw = if interactive {
        Some(RawStdin::enable())
    } else {
        None
    };
    let (quit_tx, mut quit_rx) = tokio::sync::mpsc::channel::<()>(1);
    if interactive {
        let quit_tx = quit_tx.clone();
        std::thread::spawn(move || {
            let mut byte = [0u8; 1];
            while std::io::stdin().read(&mut byte).is_ok_and(|n| n == 1) {
                if byte[0] == b'q' || byte[0] == b'Q' {
                    let _ = quit_tx.blocking_send(());
                    return;
                }
            }
        });
    }
    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let started = Instant::now();
    let deadline = args.trace.duration.map(|duration| started + duration);
    let mut ticker = tokio::time::interval(args.interval);
    ticker.tick().await;
    let mut events = Vec::with_capacity(4096);
    let mut events_this_interval = 0u64;
    let mut last_tick = Instant::now();
    loop {
        tokio::select! {
            _ = ticker.tick() => {
                let now = monotonic_now_ns();
                for pid in model.unnamed_pids() {
                    model.set_process_info(pid, host.process_info(pid));
                }
                model.expire(now, |tid| host.thread_gone(tid));
                let losses = session.losses()?;
                let status = ViewStatus {
                    mode: session.mode.to_string(),
                    probes_attached: session.probes.attached_count(),
                    probes_total: session.probes.entries.len(),
                    events_per_s: events_this_interval as f64 / last_tick.elapsed().as_secs_f64().max(1e-3),
                    lost_ring: losses.ring_total(),
                    lost_undecodable: losses.undecodable_total(),
                    lost_recursion: losses.recursion_total(),
                    counter_map_full: losses.counter_map_full,
                    window_map_full: losses.window_map_full,
                    elapsed_s: started.elapsed().as_secs_f64(),
                };
                events_this_interval = 0;
                last_tick = Instant::now();
                let kernel_counts = session.thread_counters()?;
                let rows: Vec<ThreadRow> = model
                    .rows(now, args.all)
                    .into_iter()
                    .filter(|row| keep_row(row, args, &model))
                    .map(|mut row| {
                        row.kernel = kernel_counts.get(&row.tid).map(KernelCounts::from);
                        row
                    })
                    .collect();
                let mut stdout = std::io::stdout().lock();
                if args.json {
                    let line = serde_json::json!({ "status": status, "rows": rows });
                    writeln!(stdout, "{line}")?;
                } else if interactive {
                    let screen = live::render(&status, &rows, Style::Color, terminal_width());
                    writeln!(stdout, "\x1b[H\x1b[2J{screen}(q to quit)")?;
                } else {
                    let screen = live::render(&status, &rows, Style::Plain, 200);
                    writeln!(stdout, "{screen}")?;
                }
                stdout.flush()?;
                if deadline.is_some_and(|deadline| Instant::now() >= deadline) {
                    break;
                }
            }
            result = session.wait_events(&mut events, Duration::from_millis(250)) => {
                result?;
                events_this_interval += events.len() as u64;
                for event in events.drain(..) {
                    model.apply(&event);
                }
            }
            _ = quit_rx.recv() => break,
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
        }
    }
    drop(session);
    Ok(0)
}
