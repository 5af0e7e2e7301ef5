//! The full-screen live view on a terminal (ratatui on crossterm): each
//! interval tick becomes a [`Screen`] sent to a UI thread that owns the
//! terminal, reads the keys and redraws at once on a key or a resize. The
//! terminal is restored when the view quits, when the run ends (duration,
//! SIGTERM, SIGINT) and on a panic.

use std::{
    io::Write as _,
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    time::Duration,
};

use ratatui::{
    Terminal,
    backend::CrosstermBackend,
    crossterm::{
        cursor,
        event::{self, Event, KeyCode, KeyEventKind, KeyModifiers},
        execute,
        terminal::{self, EnterAlternateScreen, LeaveAlternateScreen},
    },
};

use super::RowFilter;
use crate::{
    doctor::{BootMode, boot_mode},
    kernel::host::HostRoot,
    runner::{End, Sink, Tick},
    tui::{Action, History, HostHeader, Input, Screen, ViewState, render},
};

/// Whether the terminal is in raw mode on the alternate screen.
static ACTIVE: AtomicBool = AtomicBool::new(false);

/// Leaves the alternate screen and raw mode, once (safe to call again).
pub fn restore_terminal() {
    if ACTIVE.swap(false, Ordering::SeqCst) {
        let _ = terminal::disable_raw_mode();
        let mut stdout = std::io::stdout();
        let _ = execute!(stdout, LeaveAlternateScreen, cursor::Show);
        let _ = stdout.flush();
    }
}

fn enter_terminal() -> std::io::Result<()> {
    terminal::enable_raw_mode()?;
    ACTIVE.store(true, Ordering::SeqCst);
    if let Err(error) = execute!(std::io::stdout(), EnterAlternateScreen, cursor::Hide) {
        restore_terminal();
        return Err(error);
    }
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        restore_terminal();
        previous(info);
    }));
    Ok(())
}

/// The header's host facts from `host`.
pub fn host_header(host: &HostRoot) -> HostHeader {
    let cmdline = host.read_trimmed("/proc/cmdline").unwrap_or_default();
    let detect = match boot_mode(&cmdline) {
        BootMode::Default => "warn (default)".to_owned(),
        BootMode::Off => "off".to_owned(),
        BootMode::Warn => "warn".to_owned(),
        BootMode::Fatal => "fatal".to_owned(),
        BootMode::Ratelimit(rate) => format!("ratelimit:{rate}"),
        BootMode::Unknown(other) => other,
    };
    HostHeader {
        hostname: host
            .read_trimmed("/proc/sys/kernel/hostname")
            .unwrap_or_else(|_| "?".into()),
        kernel: host.kernel_release().unwrap_or_else(|| "?".into()),
        split_lock_detect: detect,
    }
}

fn input_of(key: event::KeyEvent) -> Option<Input> {
    if key.kind == KeyEventKind::Release {
        return None;
    }
    Some(match key.code {
        KeyCode::Char('c') if key.modifiers.contains(KeyModifiers::CONTROL) => Input::Interrupt,
        KeyCode::Up => Input::Up,
        KeyCode::Down => Input::Down,
        KeyCode::Left => Input::Left,
        KeyCode::Right => Input::Right,
        KeyCode::PageUp => Input::PageUp,
        KeyCode::PageDown => Input::PageDown,
        KeyCode::Home => Input::Home,
        KeyCode::End => Input::End,
        KeyCode::Enter => Input::Enter,
        KeyCode::Esc => Input::Escape,
        KeyCode::Backspace => Input::Backspace,
        KeyCode::Char(c) => Input::Char(c),
        _ => return None,
    })
}

fn ui_loop(screens: &mpsc::Receiver<Screen>, quit: &tokio::sync::mpsc::Sender<()>) {
    let Ok(mut terminal) = Terminal::new(CrosstermBackend::new(std::io::stdout())) else {
        let _ = quit.blocking_send(());
        return;
    };
    let mut state = ViewState::default();
    let mut shown = Screen::default();
    let mut latest: Option<Screen> = None;
    let mut dirty = true;
    loop {
        loop {
            match screens.try_recv() {
                Ok(screen) => latest = Some(screen),
                Err(mpsc::TryRecvError::Empty) => break,
                Err(mpsc::TryRecvError::Disconnected) => return,
            }
        }
        if !state.paused
            && let Some(screen) = latest.take()
        {
            shown = screen;
            dirty = true;
        }
        if dirty {
            if terminal
                .draw(|frame| render::draw(frame, &mut state, &shown))
                .is_err()
            {
                let _ = quit.blocking_send(());
                return;
            }
            dirty = false;
        }
        match event::poll(Duration::from_millis(50)) {
            Ok(true) => match event::read() {
                Ok(Event::Key(key)) => {
                    if let Some(input) = input_of(key) {
                        if state.handle(input, &shown) == Action::Quit {
                            let _ = quit.blocking_send(());
                            return;
                        }
                        dirty = true;
                    }
                }
                Ok(Event::Resize(..)) => dirty = true,
                Ok(_) => {}
                Err(_) => {
                    let _ = quit.blocking_send(());
                    return;
                }
            },
            Ok(false) => {}
            Err(_) => {
                let _ = quit.blocking_send(());
                return;
            }
        }
    }
}

/// The full-screen view sink.
pub struct TuiView {
    filter: RowFilter,
    host: HostHeader,
    cpu_models: std::collections::BTreeMap<u32, String>,
    history: History,
    screens: Option<mpsc::SyncSender<Screen>>,
    ui: Option<std::thread::JoinHandle<()>>,
}

impl TuiView {
    /// Takes over the terminal; returns the view and the receiver that
    /// fires when the operator quits.
    pub fn start(
        filter: RowFilter,
        host: &HostRoot,
    ) -> anyhow::Result<(Self, tokio::sync::mpsc::Receiver<()>)> {
        let header = host_header(host);
        let cpu_models = host
            .vm_threads()
            .into_iter()
            .filter_map(|vm| vm.cpu_model.map(|model| (vm.pid, model)))
            .collect();
        enter_terminal()?;
        let (quit_tx, quit_rx) = tokio::sync::mpsc::channel(1);
        // One screen in flight at most: a stalled terminal (a hung ssh)
        // makes the collector drop screens, not queue them.
        let (screens_tx, screens_rx) = mpsc::sync_channel(1);
        let ui = std::thread::Builder::new()
            .name("tracer-tui".into())
            .spawn(move || {
                ui_loop(&screens_rx, &quit_tx);
                restore_terminal();
            })?;
        Ok((
            Self {
                filter,
                host: header,
                cpu_models,
                history: History::default(),
                screens: Some(screens_tx),
                ui: Some(ui),
            },
            quit_rx,
        ))
    }

    fn stop(&mut self) {
        self.screens = None;
        if let Some(ui) = self.ui.take() {
            let _ = ui.join();
        }
        restore_terminal();
    }
}

impl Drop for TuiView {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Sink for TuiView {
    fn tick(&mut self, tick: &Tick<'_>) -> anyhow::Result<()> {
        let rows = self.filter.apply(tick.rows, tick.model);
        self.history.record(tick.now_ns, &rows);
        let episodes = rows
            .iter()
            .filter_map(|row| {
                let thread = tick.model.thread(row.tid)?;
                Some((row.tid, thread.recent_episodes().cloned().collect()))
            })
            .collect();
        let screen = Screen {
            host: self.host.clone(),
            status: tick.status.clone(),
            rows,
            processes: tick.model.processes().clone(),
            cpu_models: self.cpu_models.clone(),
            episodes,
            history: self.history.clone(),
            now_ns: tick.now_ns,
        };
        if let Some(screens) = &self.screens {
            // Full: the UI thread has not drawn the last one yet and gets
            // the next; gone (quit): the runner stops next.
            let _ = screens.try_send(screen);
        }
        Ok(())
    }

    fn finish(&mut self, _end: &mut End<'_>) -> anyhow::Result<i32> {
        self.stop();
        Ok(0)
    }
}
