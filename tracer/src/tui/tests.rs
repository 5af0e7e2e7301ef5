//! Snapshots of the full-screen view on ratatui's test backend: a modelled
//! host with 40 vCPU threads in 3 VMs and a split-locking host process, at
//! 80×24 and 200×50, grouped, ungrouped, filtered, with the detail pane.

use ratatui::{Terminal, backend::TestBackend};
use tracer_events::{Comm, Event, EventBody, ProcessInfo, TracingMode, TrapSource, Verdict};

use super::{Input, LineKey, Screen, ViewState, render};
use crate::{
    live::{MitigationNote, ViewStatus},
    model::Model,
    simulate::{self, Scenario},
};

const START_NS: u64 = 1_000_000_000_000;
const RUN_MS: u64 = 3000;

fn exit_event(ts_ns: u64, pid: u32, tid: u32, vcpu: u32, errno: i32) -> Event {
    Event {
        ts_ns,
        cpu: 0,
        tgid: pid,
        tid,
        comm: Comm::from(format!("CPU {vcpu}/KVM").as_str()),
        body: EventBody::UserspaceExit {
            reason: if errno == 0 { 2 } else { 10 },
            errno,
        },
        symbol: None,
    }
}

/// VM 100 haos: 4 vCPUs, two livelocked, two throttled; VM 101 win-build:
/// 16 vCPUs, one livelocked, the rest running; VM 102 db: 20 running
/// vCPUs; `bad-app` (pid 7000), a host process whose split locks complete
/// their punishment.
fn modelled_host() -> Screen {
    let mut scenarios = vec![
        Scenario::seed_001(250, 1.0, RUN_MS).with_identity(4242, 4250, "haos", 0),
        Scenario::seed_001(250, 1.0, RUN_MS).with_identity(4242, 4251, "haos", 1),
        Scenario::seed_001(250, 50.0, RUN_MS).with_identity(4242, 4252, "haos", 2),
        Scenario::seed_001(250, 50.0, RUN_MS).with_identity(4242, 4253, "haos", 3),
        Scenario::seed_001(250, 2.0, RUN_MS).with_identity(5000, 5015, "win-build", 5),
    ];
    for scenario in &mut scenarios {
        scenario.start_ns = START_NS;
    }
    let mut events: Vec<Event> = scenarios
        .iter()
        .flat_map(|scenario| simulate::run(scenario).events)
        .collect();
    let quiet = (0..16u32)
        .filter(|vcpu| *vcpu != 5)
        .map(|vcpu| (5000, 5010 + vcpu, vcpu))
        .chain((0..20u32).map(|vcpu| (6000, 6010 + vcpu, vcpu)));
    for (pid, tid, vcpu) in quiet {
        for step in 0..RUN_MS / 100 {
            let errno = if (step + u64::from(vcpu)) % 5 == 0 {
                -4
            } else {
                0
            };
            events.push(exit_event(
                START_NS + step * 100_000_000 + u64::from(tid) * 1000,
                pid,
                tid,
                vcpu,
                errno,
            ));
        }
    }
    let app = Comm::from("bad-app");
    for step in 0..RUN_MS / 20 {
        let ts = START_NS + step * 20_000_000;
        for (offset, body) in [
            (
                0,
                EventBody::SplitLockTrap {
                    source: TrapSource::User,
                    ip: 0x55d0_0000_1234,
                },
            ),
            (
                12_000_000,
                EventBody::SplitLockReturn {
                    source: TrapSource::User,
                    handled: true,
                    duration_ns: 12_000_000,
                },
            ),
        ] {
            events.push(Event {
                ts_ns: ts + offset,
                cpu: 2,
                tgid: 7000,
                tid: 7001,
                comm: app,
                body,
                symbol: None,
            });
        }
    }
    events.sort_by_key(|event| (event.ts_ns, event.tid));
    let mut model = Model::new();
    for (pid, name, vmid) in [
        (4242, "haos", "100"),
        (5000, "win-build", "101"),
        (6000, "db", "102"),
    ] {
        model.set_process_info(
            pid,
            ProcessInfo {
                name: Some(name.into()),
                vmid: Some(vmid.into()),
                comm: Some("kvm".into()),
            },
        );
    }
    model.set_process_info(
        7000,
        ProcessInfo {
            comm: Some("bad-app".into()),
            ..ProcessInfo::default()
        },
    );
    let mut screen = Screen {
        host: super::HostHeader {
            hostname: "pve-modelled".into(),
            kernel: "6.8.12-4-pve".into(),
            split_lock_detect: "warn (default)".into(),
        },
        status: ViewStatus {
            mode: Some(TracingMode::Full),
            probes_attached: 11,
            probes_total: 11,
            events_per_s: 4210.0,
            elapsed_s: 3.0,
            split_lock_mitigate: Some(1),
            ..ViewStatus::default()
        },
        ..Screen::default()
    };
    let mut next_tick = START_NS + 250_000_000;
    for event in &events {
        while event.ts_ns >= next_tick {
            let rows = model.rows(next_tick, false);
            screen.history.record(next_tick, &rows);
            next_tick += 250_000_000;
        }
        model.apply(event);
    }
    let now = model.latest_ns();
    screen.rows = model.rows(now, false);
    screen.history.record(now, &screen.rows);
    screen.now_ns = now;
    screen.processes = model.processes().clone();
    screen.cpu_models.insert(4242, "host".into());
    for row in &screen.rows {
        if let Some(thread) = model.thread(row.tid) {
            screen
                .episodes
                .insert(row.tid, thread.recent_episodes().cloned().collect());
        }
    }
    screen
}

fn draw(state: &mut ViewState, screen: &Screen, width: u16, height: u16) -> String {
    let mut terminal = Terminal::new(TestBackend::new(width, height)).unwrap();
    terminal
        .draw(|frame| render::draw(frame, state, screen))
        .unwrap();
    let buffer = terminal.backend().buffer();
    let mut out = String::new();
    for y in 0..height {
        let line: String = (0..width).map(|x| buffer[(x, y)].symbol()).collect();
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn press(state: &mut ViewState, screen: &Screen, keys: &[Input]) {
    for key in keys {
        state.handle(*key, screen);
    }
}

fn type_text(state: &mut ViewState, screen: &Screen, text: &str) {
    for c in text.chars() {
        state.handle(Input::Char(c), screen);
    }
}

/// The header's first line and the footer's keys are on screen, and no
/// line is wider than the terminal.
fn assert_frame(text: &str, width: usize, height: usize) {
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), height, "{text}");
    assert!(
        lines[0].starts_with("split-lock tracer │ pve-modelled"),
        "{text}"
    );
    assert!(lines[1].contains("split_lock_mitigate 1"), "{text}");
    assert!(lines[height - 1].contains("q quit"), "{text}");
    assert!(lines[height - 1].contains("/ filter"), "{text}");
    for line in &lines {
        assert!(line.chars().count() <= width, "too wide: {line}");
    }
}

#[test]
fn the_modelled_host_has_40_vcpus_in_3_vms_and_a_host_process() {
    let screen = modelled_host();
    let vcpus = screen.rows.iter().filter(|row| row.vcpu.is_some()).count();
    assert_eq!(vcpus, 40);
    let livelocked = screen
        .rows
        .iter()
        .filter(|row| row.verdict == Verdict::Livelock)
        .count();
    assert_eq!(livelocked, 3, "{:#?}", screen.rows);
    assert!(
        screen
            .rows
            .iter()
            .any(|row| row.tid == 7001 && row.verdict == Verdict::Throttled)
    );
}

/// The header's second line after a change: the sysctl's own change
/// replaces its value; another setting's change is shown beside it.
#[test]
fn the_header_tells_the_sysctl_change_from_other_settings() {
    let mut screen = modelled_host();
    let mut state = ViewState::default();
    screen.status.split_lock_mitigate = Some(0);
    screen.status.mitigation_change = Some(MitigationNote {
        setting: tracer_events::SPLIT_LOCK_MITIGATE.into(),
        text: "split_lock_mitigate 1 → 0 at 12:03:04".into(),
    });
    let text = draw(&mut state, &screen, 200, 50);
    let second = text.lines().nth(1).unwrap();
    assert!(
        second.starts_with("split_lock_mitigate 1 → 0 at 12:03:04 │ detect"),
        "{second}"
    );
    screen.status.mitigation_change = Some(MitigationNote {
        setting: tracer_events::MICROCODE_REVISION.into(),
        text: "microcode 0x24000023 → 0x24000024 at 12:05:00".into(),
    });
    let text = draw(&mut state, &screen, 200, 50);
    let second = text.lines().nth(1).unwrap();
    assert!(
        second.starts_with(
            "split_lock_mitigate 0 │ microcode 0x24000023 → 0x24000024 at 12:05:00 │ detect"
        ),
        "{second}"
    );
}

#[test]
fn grouped_at_80x24_puts_stuck_vms_first_and_fits() {
    let screen = modelled_host();
    let mut state = ViewState::default();
    let text = draw(&mut state, &screen, 80, 24);
    assert_frame(&text, 80, 24);
    let lines: Vec<&str> = text.lines().collect();
    // The table header, then the stuck VM, expanded, its livelocked vCPUs first.
    assert!(lines[3].starts_with("NAME"), "{text}");
    assert!(lines[4].contains("▾ 100 (haos) pid 4242"), "{text}");
    assert!(lines[4].contains("LIVELOCK"), "{text}");
    assert!(
        lines[5].contains("vCPU") && lines[5].contains("LIVELOCK"),
        "{text}"
    );
    // The stuck VM with 16 vCPUs follows, expanded.
    assert!(lines[9].contains("▾ 101 (win-build) pid 5000"), "{text}");
    // Least important columns dropped at 80 columns.
    assert!(!text.contains("LAST IP"), "{text}");
    insta::assert_snapshot!(text);
}

#[test]
fn grouped_at_200x50_shows_every_column() {
    let screen = modelled_host();
    let mut state = ViewState::default();
    let text = draw(&mut state, &screen, 200, 50);
    assert_frame(&text, 200, 50);
    // The quiet VM is one collapsed line.
    assert!(text.contains("▸ 102 (db) pid 6000"), "{text}");
    assert!(text.contains("20 vCPUs"), "{text}");
    for title in [
        "LAST IP",
        "SIGNALS/s",
        "PUNISHED%",
        "host processes",
        "bad-app",
    ] {
        assert!(text.contains(title), "{title}: {text}");
    }
    insta::assert_snapshot!(text);
}

#[test]
fn ungrouped_lists_every_thread_stuck_first() {
    let screen = modelled_host();
    let mut state = ViewState::default();
    press(&mut state, &screen, &[Input::Char('g')]);
    let text = draw(&mut state, &screen, 200, 50);
    assert_frame(&text, 200, 50);
    let lines: Vec<&str> = text.lines().collect();
    for line in &lines[4..7] {
        assert!(line.contains("LIVELOCK"), "{text}");
    }
    assert!(!text.contains('▾') && !text.contains('▸'), "{text}");
    insta::assert_snapshot!(text);
    let small = draw(&mut state, &screen, 80, 24);
    assert_frame(&small, 80, 24);
    insta::assert_snapshot!("ungrouped_80x24", small);
}

#[test]
fn the_filter_keeps_matching_vms_and_verdicts() {
    let screen = modelled_host();
    let mut state = ViewState::default();
    press(&mut state, &screen, &[Input::Char('/')]);
    type_text(&mut state, &screen, "win");
    let typing = draw(&mut state, &screen, 80, 24);
    assert!(
        typing.lines().last().unwrap().starts_with("filter: win"),
        "{typing}"
    );
    press(&mut state, &screen, &[Input::Enter]);
    let text = draw(&mut state, &screen, 80, 24);
    assert_frame(&text, 80, 24);
    assert!(text.contains("101 (win-build)"), "{text}");
    assert!(!text.contains("haos") && !text.contains("(db)"), "{text}");
    assert!(text.contains("filter: win"), "{text}");
    insta::assert_snapshot!(text);
    // By verdict: only the three livelocked threads.
    press(&mut state, &screen, &[Input::Char('/')]);
    type_text(&mut state, &screen, "livelock");
    press(&mut state, &screen, &[Input::Enter, Input::Char('g')]);
    let text = draw(&mut state, &screen, 80, 24);
    assert_eq!(text.matches("LIVELOCK").count(), 3, "{text}");
    // By tid.
    press(&mut state, &screen, &[Input::Char('/')]);
    type_text(&mut state, &screen, "7001");
    press(&mut state, &screen, &[Input::Enter]);
    let text = draw(&mut state, &screen, 80, 24);
    assert!(text.contains("bad-app") && !text.contains("vCPU"), "{text}");
    press(&mut state, &screen, &[Input::Escape]);
    assert!(state.filter.is_empty());
}

#[test]
fn enter_on_a_livelocked_vcpu_opens_its_evidence_and_mitigations() {
    let screen = modelled_host();
    let mut state = ViewState::default();
    // Down from the VM line to its first vCPU, then Enter.
    press(&mut state, &screen, &[Input::Down, Input::Enter]);
    let Some(tid) = state.detail else {
        panic!("no detail pane: {:?}", state.selected)
    };
    assert_eq!(
        screen
            .rows
            .iter()
            .find(|row| row.tid == tid)
            .unwrap()
            .verdict,
        Verdict::Livelock
    );
    let text = draw(&mut state, &screen, 80, 24);
    assert_frame(&text, 80, 24);
    assert!(text.contains(&format!("thread {tid}")), "{text}");
    assert!(text.contains("consecutive split-lock traps"), "{text}");
    assert!(
        text.contains("sysctl -w kernel.split_lock_mitigate=0"),
        "{text}"
    );
    insta::assert_snapshot!(text);
    let big = draw(&mut state, &screen, 200, 50);
    assert_frame(&big, 200, 50);
    // Tall enough for the table above the pane.
    assert!(big.contains("▾ 100 (haos)"), "{big}");
    assert!(
        big.contains("sysctl -w kernel.split_lock_mitigate=0"),
        "{big}"
    );
    assert!(big.contains("split_lock_detect=off"), "{big}");
    assert!(big.contains("-cpu host"), "{big}");
    assert!(big.contains("last episodes"), "{big}");
    assert!(big.contains("traps/s") && big.contains("EINTR/s"), "{big}");
    assert!(
        big.contains("cut, 12ms left, SIGUSR1 timer → -EINTR"),
        "{big}"
    );
    insta::assert_snapshot!("detail_200x50", big);
    // Scrolling down reaches the episodes at 80×24.
    press(&mut state, &screen, &[Input::PageDown]);
    let scrolled = draw(&mut state, &screen, 80, 24);
    assert_frame(&scrolled, 80, 24);
    assert!(scrolled.contains("→ -EINTR"), "{scrolled}");
    press(&mut state, &screen, &[Input::Escape]);
    assert_eq!(state.detail, None);
}

#[test]
fn moving_expanding_and_sorting() {
    let screen = modelled_host();
    let mut state = ViewState::default();
    press(&mut state, &screen, &[Input::End]);
    let last = state.lines(&screen).last().map(super::Line::key);
    assert_eq!(state.selected, last);
    press(&mut state, &screen, &[Input::Home]);
    assert_eq!(
        state.selected,
        Some(LineKey::Group(super::GroupKey::Vm(4242)))
    );
    // Collapse the stuck VM: its vCPUs go.
    let before = state.lines(&screen).len();
    press(&mut state, &screen, &[Input::Enter]);
    assert_eq!(state.lines(&screen).len(), before - 4);
    // Expand the 20-vCPU VM.
    let db = LineKey::Group(super::GroupKey::Vm(6000));
    while state.selected != Some(db) {
        press(&mut state, &screen, &[Input::Down]);
    }
    press(&mut state, &screen, &[Input::Right]);
    assert_eq!(state.lines(&screen).len(), before - 4 + 20);
    // A page down moves by the rows on screen.
    draw(&mut state, &screen, 80, 24);
    let page = state.page;
    let start = state.selected_index(&state.lines(&screen)).unwrap();
    press(&mut state, &screen, &[Input::PageDown]);
    assert_eq!(
        state.selected_index(&state.lines(&screen)).unwrap(),
        (start + page).min(state.lines(&screen).len() - 1)
    );
    // s: next column (NAME); S: reversed.
    press(&mut state, &screen, &[Input::Char('s')]);
    let text = draw(&mut state, &screen, 80, 24);
    assert!(text.contains("NAME▼"), "{text}");
    press(&mut state, &screen, &[Input::Char('S')]);
    let text = draw(&mut state, &screen, 80, 24);
    assert!(text.contains("NAME▲"), "{text}");
    let lines = state.lines(&screen);
    let labels: Vec<String> = lines
        .iter()
        .filter_map(|line| match line {
            super::Line::Group(group) => Some(group.label.clone()),
            super::Line::Thread(..) => None,
        })
        .collect();
    assert_eq!(
        labels,
        [
            "102 (db) pid 6000",
            "101 (win-build) pid 5000",
            "100 (haos) pid 4242",
            "host processes"
        ]
    );
}

#[test]
fn help_pause_and_quit() {
    let screen = modelled_host();
    let mut state = ViewState::default();
    press(&mut state, &screen, &[Input::Char('?')]);
    let text = draw(&mut state, &screen, 80, 24);
    assert!(text.contains("any key closes this help"), "{text}");
    press(&mut state, &screen, &[Input::Char('x')]);
    assert!(!state.help);
    press(&mut state, &screen, &[Input::Char('p')]);
    assert!(draw(&mut state, &screen, 80, 24).contains("PAUSED"));
    assert_eq!(state.handle(Input::Char('q'), &screen), super::Action::Quit);
    assert_eq!(state.handle(Input::Interrupt, &screen), super::Action::Quit);
}

#[test]
fn long_names_are_cut_with_an_ellipsis() {
    assert_eq!(render::truncate("verdict", 4), "ver…");
    assert_eq!(render::truncate("ok", 4), "ok");
    assert_eq!(render::sparkline(&[0.0, 1.0, 2.0, 4.0], 3), "▃▅█");
}

/// A row of `tid` with these rates (the rest default).
fn rates_row(tid: u32, traps_per_s: f64, eintr_per_s: f64) -> tracer_events::ThreadRow {
    tracer_events::ThreadRow {
        traps_per_s,
        eintr_per_s,
        ..tracer_events::ThreadRow::empty(1, Some(0), tid, Verdict::Ok, true)
    }
}

/// The sparklines span the last minute whatever the refresh interval: at
/// `-i 250ms` a spike 50 s ago is still on the line (sampling per tick
/// kept only the last 15 s in 60 columns), and at `-i 5s` each tick's rate
/// fills the slices until the next one instead of squeezing 12 ticks into
/// the first 12 columns.
#[test]
#[expect(
    clippy::float_cmp,
    reason = "the series holds the recorded rates themselves, unchanged"
)]
fn sparkline_series_cover_the_last_minute_at_any_interval() {
    const SECOND: u64 = 1_000_000_000;
    let mut fast = super::History::default();
    for tick in 0..=240u64 {
        let traps = if tick == 40 { 900.0 } else { 10.0 };
        fast.record(tick * SECOND / 4, &[rates_row(7, traps, 1.0)]);
    }
    let (traps, eintr) = fast.series(7, 60);
    assert_eq!(traps.len(), 60);
    // 240 ticks of 250 ms end at 60 s: the spike at 10 s is in slice 10.
    assert_eq!(traps[10], 900.0, "{traps:?}");
    assert!(traps.iter().enumerate().all(|(i, &v)| i == 10 || v == 10.0));
    assert!(eintr.iter().all(|&v| v == 1.0));

    let mut slow = super::History::default();
    for tick in 0..=12u64 {
        slow.record(tick * 5 * SECOND, &[rates_row(7, tick as f64, 0.0)]);
    }
    let (traps, _) = slow.series(7, 60);
    // Slice k (1 s each) carries the rate of the tick at or before it.
    assert_eq!(traps[0], 0.0);
    assert_eq!(traps[4], 0.0);
    assert_eq!(traps[5], 1.0);
    assert_eq!(traps[29], 5.0);
    assert_eq!(traps[59], 12.0, "{traps:?}");
    // A thread never sampled draws an empty line.
    assert_eq!(slow.series(8, 60).0, vec![0.0; 60]);
}
