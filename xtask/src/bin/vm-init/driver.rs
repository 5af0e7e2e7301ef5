//! `/init driver ...`: the guest-side stand-in for a VMM, run as a child
//! process of the guest's PID 1 during the handler scenarios.
//!
//! Each driver thread takes a split-lock trap by an ioctl on the fixture
//! module's `/dev/splitlock_trap` (which calls the kernel's own handler at
//! the IP given) and re-issues it as soon as it returns, the way KVM
//! re-enters a guest that is stuck on the same locked instruction. Signals
//! come from a POSIX timer aimed at the thread (`SIGEV_THREAD_ID`, as the
//! seed 001 VMM), from another thread's `tgkill` (QEMU's vCPU kick), or
//! from a one-shot timer armed before each request. The driver counts its
//! own requests and the signals it took; those counts are ground truth the
//! tracer's recording is compared with.
//!
//! Arguments (`key=value`): `trap=user|guest`, `duration_ms=N`, `calls=N`
//! (per thread, 0 = until the duration ends) and one `thread=SOURCE` per
//! driver thread, SOURCE one of `none`, `timer:US`, `tkill:US`, `oneshot:US`
//! (periods and delays in microseconds), and `ip=0xHEX` for the trap's IP
//! (default: the driver's own `split_lock_site`; the guest-trap scenario
//! passes a function of the fixture module, so the recorded IP can be
//! named with the guest's kallsyms). With two or more threads, thread N
//! is pinned to CPU N.

use std::{
    cell::Cell,
    os::fd::AsRawFd as _,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use serde_json::{Value, json};

/// The fixture module's device.
pub const DEVICE: &str = "/dev/splitlock_trap";
/// `_IO('S', 1)`: `handle_user_split_lock(regs, 0)` with `regs->ip = arg`.
const SLT_USER_TRAP: libc::Ioctl = 0x5301;
/// `_IO('S', 2)`: `handle_guest_split_lock(arg)`.
const SLT_GUEST_TRAP: libc::Ioctl = 0x5302;
/// `si_code` of the SIGBUS the kernel sends for a split lock it does not handle.
const BUS_ADRALN: libc::c_int = 1;

thread_local! {
    static SIGNALS_TAKEN: Cell<u64> = const { Cell::new(0) };
    static SIGBUS_TAKEN: Cell<u64> = const { Cell::new(0) };
    static SIGBUS_ADRALN: Cell<u64> = const { Cell::new(0) };
}

extern "C" fn on_sigusr1(_: libc::c_int) {
    SIGNALS_TAKEN.with(|count| count.set(count.get() + 1));
}

extern "C" fn on_sigbus(_: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    SIGBUS_TAKEN.with(|count| count.set(count.get() + 1));
    // SAFETY: the kernel passes a valid siginfo to an SA_SIGINFO handler.
    if unsafe { (*info).si_code } == BUS_ADRALN {
        SIGBUS_ADRALN.with(|count| count.set(count.get() + 1));
    }
}

/// The "locked instruction" the trap is reported at: an address in the
/// driver's own text. Nothing at this address runs during a request; the
/// kernel handler only receives it as the trap's IP.
#[inline(never)]
extern "C" fn split_lock_site() {}

/// Where a driver thread's signals come from.
#[derive(Clone, Copy, Debug)]
enum Source {
    None,
    Timer(Duration),
    Tkill(Duration),
    OneShot(Duration),
}

impl Source {
    fn parse(text: &str) -> Result<Self, String> {
        let (kind, micros) = text.split_once(':').unwrap_or((text, "0"));
        let micros: u64 = micros
            .parse()
            .map_err(|_| format!("bad microseconds in {text:?}"))?;
        let period = Duration::from_micros(micros);
        match kind {
            "none" => Ok(Self::None),
            "timer" => Ok(Self::Timer(period)),
            "tkill" => Ok(Self::Tkill(period)),
            "oneshot" => Ok(Self::OneShot(period)),
            _ => Err(format!("unknown signal source {text:?}")),
        }
    }

    fn describe(self) -> String {
        match self {
            Self::None => "none".into(),
            Self::Timer(p) => format!("SIGEV_THREAD_ID timer, SIGUSR1 every {} us", p.as_micros()),
            Self::Tkill(p) => format!(
                "tgkill SIGUSR1 from another thread every {} us",
                p.as_micros()
            ),
            Self::OneShot(p) => format!(
                "one-shot SIGEV_THREAD_ID timer {} us after each request",
                p.as_micros()
            ),
        }
    }
}

fn timespec(duration: Duration) -> libc::timespec {
    libc::timespec {
        tv_sec: duration.as_secs().try_into().unwrap_or_default(),
        tv_nsec: duration.subsec_nanos().into(),
    }
}

/// A POSIX timer that signals one thread with SIGUSR1.
struct ThreadTimer(libc::timer_t);

impl ThreadTimer {
    fn new(tid: libc::pid_t) -> Result<Self, String> {
        // SAFETY: plain libc calls with valid pointers.
        unsafe {
            let mut event: libc::sigevent = std::mem::zeroed();
            event.sigev_notify = libc::SIGEV_THREAD_ID;
            event.sigev_signo = libc::SIGUSR1;
            event.sigev_notify_thread_id = tid;
            let mut timer: libc::timer_t = std::ptr::null_mut();
            if libc::timer_create(libc::CLOCK_MONOTONIC, &raw mut event, &raw mut timer) != 0 {
                return Err(format!("timer_create: {}", std::io::Error::last_os_error()));
            }
            Ok(Self(timer))
        }
    }

    fn arm(&self, first: Duration, interval: Duration) {
        let spec = libc::itimerspec {
            it_interval: timespec(interval),
            it_value: timespec(first),
        };
        // SAFETY: a timer this struct owns and a valid itimerspec.
        unsafe { libc::timer_settime(self.0, 0, &raw const spec, std::ptr::null_mut()) };
    }
}

impl Drop for ThreadTimer {
    fn drop(&mut self) {
        // SAFETY: deleting the timer this struct owns.
        unsafe { libc::timer_delete(self.0) };
    }
}

fn gettid() -> libc::pid_t {
    // SAFETY: no preconditions.
    unsafe { libc::gettid() }
}

fn set_thread_name(name: &str) {
    let name = std::ffi::CString::new(name).expect("no NUL");
    // SAFETY: PR_SET_NAME with a NUL-terminated string of at most 16 bytes.
    unsafe { libc::prctl(libc::PR_SET_NAME, name.as_ptr()) };
}

fn pin_to_cpu(cpu: usize) -> bool {
    // SAFETY: a zeroed cpu_set_t with one bit set, for this thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &raw const set) == 0
    }
}

/// Sends SIGUSR1 to `tid` every `period` until `stop`; returns how many.
fn kicker(tid: libc::pid_t, period: Duration, stop: &AtomicBool) -> u64 {
    set_thread_name("sl-kicker");
    // SAFETY: no preconditions.
    let pid = unsafe { libc::getpid() };
    let mut sent = 0;
    let mut next = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        next += period;
        if let Some(wait) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        // SAFETY: tgkill on a thread of this process.
        if unsafe { libc::syscall(libc::SYS_tgkill, pid, tid, libc::SIGUSR1) } == 0 {
            sent += 1;
        }
    }
    sent
}

struct ThreadPlan {
    slot: usize,
    source: Source,
    pin: bool,
    command: libc::Ioctl,
    ip: u64,
    deadline: Instant,
    calls_limit: u64,
    fd: libc::c_int,
}

fn driver_thread(plan: &ThreadPlan) -> Value {
    set_thread_name(&format!("sl-driver{}", plan.slot));
    let pinned = plan.pin && pin_to_cpu(plan.slot);
    let tid = gettid();
    let mut error = None;
    let timer = match plan.source {
        Source::Timer(_) | Source::OneShot(_) => match ThreadTimer::new(tid) {
            Ok(timer) => Some(timer),
            Err(e) => {
                error = Some(e);
                None
            }
        },
        _ => None,
    };
    if let (Source::Timer(period), Some(timer)) = (plan.source, &timer) {
        timer.arm(period, period);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let kick = if let Source::Tkill(period) = plan.source {
        let stop = Arc::clone(&stop);
        Some(std::thread::spawn(move || kicker(tid, period, &stop)))
    } else {
        None
    };
    let (mut calls, mut handled, mut not_handled, mut errors) = (0_u64, 0_u64, 0_u64, 0_u64);
    let mut last_errno = None;
    let started = Instant::now();
    while Instant::now() < plan.deadline && (plan.calls_limit == 0 || calls < plan.calls_limit) {
        if let (Source::OneShot(after), Some(timer)) = (plan.source, &timer) {
            timer.arm(after, Duration::ZERO);
        }
        // SAFETY: an ioctl on the fixture device with an integer argument.
        let rc = unsafe { libc::ioctl(plan.fd, plan.command, plan.ip) };
        calls += 1;
        match rc {
            1 => handled += 1,
            0 => not_handled += 1,
            _ => {
                errors += 1;
                last_errno = Some(std::io::Error::last_os_error().to_string());
            }
        }
        if let (Source::OneShot(_), Some(timer)) = (plan.source, &timer) {
            timer.arm(Duration::ZERO, Duration::ZERO);
        }
    }
    let elapsed = started.elapsed();
    drop(timer);
    stop.store(true, Ordering::Relaxed);
    let signals_sent = kick.and_then(|handle| handle.join().ok());
    json!({
        "slot": plan.slot,
        "tid": tid,
        "pinned_cpu": pinned.then_some(plan.slot),
        "source": plan.source.describe(),
        "calls": calls,
        "handled": handled,
        "not_handled": not_handled,
        "errors": errors,
        "last_error": last_errno,
        "setup_error": error,
        "elapsed_ms": elapsed.as_secs_f64() * 1e3,
        "signals_taken": SIGNALS_TAKEN.with(Cell::get),
        "signals_sent_by_kicker": signals_sent,
        "sigbus": SIGBUS_TAKEN.with(Cell::get),
        "sigbus_adraln": SIGBUS_ADRALN.with(Cell::get),
    })
}

fn install_handlers() {
    // SAFETY: installing handlers that only touch thread-local counters, and
    // unblocking their signals (a parent may have blocked SIGUSR1, and the
    // mask is inherited: a blocked signal would never cut a sleep short).
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&raw mut set);
        libc::sigaddset(&raw mut set, libc::SIGUSR1);
        libc::sigaddset(&raw mut set, libc::SIGBUS);
        libc::pthread_sigmask(libc::SIG_UNBLOCK, &raw const set, std::ptr::null_mut());
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_sigusr1 as *const () as usize;
        libc::sigemptyset(&raw mut action.sa_mask);
        libc::sigaction(libc::SIGUSR1, &raw const action, std::ptr::null_mut());
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_sigbus as *const () as usize;
        action.sa_flags = libc::SA_SIGINFO;
        libc::sigemptyset(&raw mut action.sa_mask);
        libc::sigaction(libc::SIGBUS, &raw const action, std::ptr::null_mut());
    }
}

/// Runs the driver with `args` and prints its counts as one JSON line.
pub fn run(args: &[String]) -> i32 {
    let mut trap = "user".to_owned();
    let mut duration = Duration::from_secs(1);
    let mut calls_limit = 0;
    let mut ip_override = None;
    let mut sources = Vec::new();
    for arg in args {
        let Some((key, value)) = arg.split_once('=') else {
            eprintln!("driver: expected key=value, got {arg:?}");
            return 2;
        };
        let parsed = match key {
            "trap" => {
                value.clone_into(&mut trap);
                Ok(())
            }
            "duration_ms" => value
                .parse()
                .map(|ms| duration = Duration::from_millis(ms))
                .map_err(|_| format!("bad duration_ms {value:?}")),
            "calls" => value
                .parse()
                .map(|n| calls_limit = n)
                .map_err(|_| format!("bad calls {value:?}")),
            "thread" => Source::parse(value).map(|source| sources.push(source)),
            "ip" => u64::from_str_radix(value.trim_start_matches("0x"), 16)
                .map(|ip| ip_override = Some(ip))
                .map_err(|_| format!("bad ip {value:?}")),
            _ => Err(format!("unknown key {key:?}")),
        };
        if let Err(error) = parsed {
            eprintln!("driver: {error}");
            return 2;
        }
    }
    let command = match trap.as_str() {
        "user" => SLT_USER_TRAP,
        "guest" => SLT_GUEST_TRAP,
        _ => {
            eprintln!("driver: trap must be user or guest");
            return 2;
        }
    };
    if sources.is_empty() {
        sources.push(Source::None);
    }
    let device = match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(DEVICE)
    {
        Ok(file) => file,
        Err(error) => {
            println!("{}", json!({"error": format!("{DEVICE}: {error}")}));
            return 1;
        }
    };
    install_handlers();
    let ip = ip_override.unwrap_or(split_lock_site as *const () as u64);
    let deadline = Instant::now() + duration;
    let pin = sources.len() > 1;
    let threads: Vec<Value> = std::thread::scope(|scope| {
        let handles: Vec<_> = sources
            .iter()
            .enumerate()
            .map(|(slot, source)| {
                let plan = ThreadPlan {
                    slot,
                    source: *source,
                    pin,
                    command,
                    ip,
                    deadline,
                    calls_limit,
                    fd: device.as_raw_fd(),
                };
                scope.spawn(move || driver_thread(&plan))
            })
            .collect();
        handles
            .into_iter()
            .map(|handle| {
                handle
                    .join()
                    .unwrap_or_else(|_| json!({"error": "panicked"}))
            })
            .collect()
    });
    // SAFETY: no preconditions.
    let pid = unsafe { libc::getpid() };
    println!(
        "{}",
        json!({"pid": pid, "trap": trap, "ip": ip, "threads": threads})
    );
    0
}
