//! Progress for people: a live block with one line per architecture and phase in a terminal, plain
//! timestamped lines otherwise. Backends send events; only this module decides how they look.

#![allow(clippy::print_stderr)]

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use caph_core::backend::{Phase, ProgressEvent, ProgressSink};
use caph_core::text::Escaped;

/// How often the terminal block is redrawn at most; phase changes redraw at once.
const REDRAW_INTERVAL: Duration = Duration::from_millis(100);

/// Renders progress on standard error.
#[derive(Debug)]
pub struct Progress {
    live: bool,
    verbose: bool,
    started: Instant,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// Per scope: phase, detail, when the phase began.
    scopes: BTreeMap<String, (Phase, String, Instant)>,
    /// Lines of the live block currently on screen.
    drawn: usize,
    last_draw: Option<Instant>,
}

impl Progress {
    /// A live block when stderr is a terminal and `no_progress` is off; plain lines otherwise.
    pub fn new(no_progress: bool, verbose: bool) -> Progress {
        let live = !no_progress && std::io::stderr().is_terminal();
        Progress {
            live,
            verbose,
            started: Instant::now(),
            state: Mutex::new(State::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Removes the live block, so that results print below clean output.
    pub fn finish(&self) {
        let mut state = self.lock();
        if self.live {
            self.draw(&mut state, true);
        }
        state.drawn = 0;
    }

    /// A plain line printed above the live block; its text (remote output, API messages) is
    /// escaped whole, so it is one line and cannot drive the terminal.
    fn line(&self, state: &mut State, text: &str) {
        let mut stderr = std::io::stderr().lock();
        if self.live {
            self.erase(state, &mut stderr);
        }
        let _ = writeln!(
            stderr,
            "[{:>7.1}s] {}",
            self.started.elapsed().as_secs_f64(),
            Escaped(text)
        );
        if self.live {
            self.draw(state, true);
        }
    }

    fn erase(&self, state: &mut State, stderr: &mut impl Write) {
        for _ in 0..state.drawn {
            // Up one line and clear it.
            let _ = write!(stderr, "\x1b[1A\x1b[2K");
        }
        state.drawn = 0;
    }

    fn draw(&self, state: &mut State, force: bool) {
        let now = Instant::now();
        if !force
            && state
                .last_draw
                .is_some_and(|last| now - last < REDRAW_INTERVAL)
        {
            return;
        }
        let mut stderr = std::io::stderr().lock();
        self.erase(state, &mut stderr);
        for (scope, (phase, detail, since)) in &state.scopes {
            let _ = writeln!(
                stderr,
                "  {:<8} {:<10} {:>6.1}s  {}",
                caph_core::text::escape(scope),
                phase.name(),
                (now - *since).as_secs_f64(),
                Escaped(detail)
            );
        }
        state.drawn = state.scopes.len();
        state.last_draw = Some(now);
    }
}

impl ProgressSink for Progress {
    fn event(&self, event: ProgressEvent) {
        let mut state = self.lock();
        match event {
            ProgressEvent::Phase {
                scope,
                phase,
                detail,
            } => {
                let previous = state
                    .scopes
                    .insert(scope.clone(), (phase, detail.clone(), Instant::now()));
                let changed = previous.is_none_or(|(old, _, _)| old != phase);
                if self.live {
                    self.draw(&mut state, changed);
                } else if changed || self.verbose || phase == Phase::Provision {
                    self.line(&mut state, &format!("{scope}: {}: {detail}", phase.name()));
                }
            }
            ProgressEvent::Output { scope, line } => {
                if self.verbose {
                    self.line(&mut state, &format!("{scope} | {line}"));
                } else if self.live {
                    self.draw(&mut state, false);
                }
            }
            ProgressEvent::Bytes { scope, done, total } => {
                let text = match total {
                    Some(total) => format!("{scope}: {done} of {total} bytes"),
                    None => format!("{scope}: {done} bytes"),
                };
                if self.live {
                    if let Some(entry) = state.scopes.get_mut(&scope) {
                        entry.1 = text;
                    }
                    self.draw(&mut state, false);
                } else if self.verbose {
                    self.line(&mut state, &text);
                }
            }
            ProgressEvent::Warning { scope, message } => {
                self.line(&mut state, &format!("warning: {scope}: {message}"))
            }
        }
    }
}
