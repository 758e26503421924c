//! Simulated time: scaled real time for demos and fast tests, or time that only moves when a test says so.
//!
//! Every duration in the simulator is simulated time. Background work (an action finishing, a server
//! reaching `running`) sleeps on this clock. The clock also keeps count of background work that is
//! awake, so that in [`TimeMode::Manual`] a request can wait until everything that became due with the
//! last [`Clock::advance`] has been applied ("settled"), which makes tests deterministic.

use caph_core::time::civil_from_days;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::watch;

/// How simulated time relates to real time.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum TimeMode {
    /// Simulated time runs at `factor` times real durations: `1.0` is real time, `0.001` makes a
    /// 30 s server start take 30 ms. Factors that are not finite and positive are treated as `1.0`.
    Scaled(f64),
    /// Nothing moves until the test calls [`super::HcloudSim::advance`].
    Manual,
}

impl Default for TimeMode {
    fn default() -> Self {
        TimeMode::Scaled(1.0)
    }
}

/// A point in simulated time, measured from the simulator's start.
pub(crate) type SimTime = Duration;

#[derive(Debug, Default)]
struct Bookkeeping {
    /// Background tasks that are running and not asleep on the clock.
    active: usize,
    /// Deadlines of tasks asleep on the clock, by sleeper id.
    sleepers: HashMap<u64, SimTime>,
    next_sleeper: u64,
}

#[derive(Debug)]
pub(crate) struct Clock {
    mode: TimeMode,
    real_origin: Instant,
    /// Unix time (seconds, fractional) at simulated time zero.
    unix_origin: f64,
    manual: watch::Sender<SimTime>,
    books: Mutex<Bookkeeping>,
}

/// Counts a background task as awake while it lives (see [`Clock::settled`]).
#[derive(Debug)]
pub(crate) struct Activity {
    clock: Arc<Clock>,
}

impl Drop for Activity {
    fn drop(&mut self) {
        self.clock.books().active -= 1;
    }
}

/// A task asleep on the clock (see [`Clock::sleep_until`]).
struct Asleep<'a> {
    clock: &'a Clock,
    sleeper: u64,
}

impl Drop for Asleep<'_> {
    fn drop(&mut self) {
        let mut books = self.clock.books();
        books.sleepers.remove(&self.sleeper);
        books.active += 1;
    }
}

impl Clock {
    pub(crate) fn new(mode: TimeMode) -> Arc<Clock> {
        let mode = match mode {
            TimeMode::Scaled(factor) if !(factor.is_finite() && factor > 0.0) => {
                TimeMode::Scaled(1.0)
            }
            other => other,
        };
        let unix_origin = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|since| since.as_secs_f64())
            .unwrap_or(0.0);
        Arc::new(Clock {
            mode,
            real_origin: Instant::now(),
            unix_origin,
            manual: watch::Sender::new(Duration::ZERO),
            books: Mutex::new(Bookkeeping::default()),
        })
    }

    fn books(&self) -> MutexGuard<'_, Bookkeeping> {
        // A panic while holding this lock leaves plain counters behind; keep going with them.
        self.books
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(crate) fn mode(&self) -> TimeMode {
        self.mode
    }

    /// Simulated time since the start.
    pub(crate) fn now(&self) -> SimTime {
        match self.mode {
            TimeMode::Manual => *self.manual.borrow(),
            TimeMode::Scaled(factor) => scale(self.real_origin.elapsed(), 1.0 / factor),
        }
    }

    /// Unix time (seconds) of a simulated instant: the simulated wall clock starts at the real one.
    pub(crate) fn unix_at(&self, at: SimTime) -> f64 {
        self.unix_origin + at.as_secs_f64()
    }

    /// Moves simulated time forward (only in [`TimeMode::Manual`]; ignored otherwise).
    pub(crate) fn advance(&self, by: Duration) {
        if self.mode == TimeMode::Manual {
            self.manual.send_modify(|now| *now = now.saturating_add(by));
        }
    }

    /// Registers a background task as awake; the task keeps the returned guard until it ends.
    pub(crate) fn activity(self: &Arc<Self>) -> Activity {
        self.books().active += 1;
        Activity {
            clock: Arc::clone(self),
        }
    }

    /// Sleeps until simulated time reaches `deadline`. The caller must hold an [`Activity`].
    pub(crate) async fn sleep_until(&self, deadline: SimTime) {
        // Counts the caller as asleep until dropped: on waking, or when the sleeping task is
        // aborted (the books must balance either way).
        let _asleep = {
            let mut books = self.books();
            if self.now() >= deadline {
                return;
            }
            let sleeper = books.next_sleeper;
            books.next_sleeper += 1;
            books.sleepers.insert(sleeper, deadline);
            books.active -= 1;
            Asleep {
                clock: self,
                sleeper,
            }
        };
        match self.mode {
            TimeMode::Manual => {
                let mut receiver = self.manual.subscribe();
                // The sender lives as long as the clock, which outlives this borrow.
                let _ = receiver.wait_for(|now| *now >= deadline).await;
            }
            TimeMode::Scaled(factor) => loop {
                let now = self.now();
                if now >= deadline {
                    break;
                }
                tokio::time::sleep(scale(deadline - now, factor)).await;
            },
        }
    }

    /// True when no background work is awake and none is due at the current simulated time.
    pub(crate) fn settled(&self) -> bool {
        let books = self.books();
        let now = self.now();
        books.active == 0 && books.sleepers.values().all(|deadline| *deadline > now)
    }

    /// Waits until [`Clock::settled`], at most `limit` of real time (a host operation may hang).
    pub(crate) async fn settle(&self, limit: Duration) -> bool {
        // How often to look again: short enough that tests stay in milliseconds.
        const POLL: Duration = Duration::from_millis(1);
        let give_up = Instant::now() + limit;
        loop {
            if self.settled() {
                return true;
            }
            if Instant::now() >= give_up {
                return false;
            }
            tokio::time::sleep(POLL).await;
        }
    }
}

/// `duration × factor`, saturating instead of panicking on overflow or a bad factor.
pub(crate) fn scale(duration: Duration, factor: f64) -> Duration {
    Duration::try_from_secs_f64(duration.as_secs_f64() * factor).unwrap_or(if factor > 0.0 {
        Duration::MAX
    } else {
        Duration::ZERO
    })
}

/// Formats Unix seconds as RFC 3339 in UTC the way the API does: `2016-01-30T23:55:00+00:00`.
pub(crate) fn rfc3339(unix_seconds: f64) -> String {
    let total = unix_seconds.floor() as i64;
    let days = total.div_euclid(86_400);
    let second_of_day = total.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}+00:00",
        second_of_day / 3600,
        (second_of_day % 3600) / 60,
        second_of_day % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn manual_sleepers_settle_wake_and_abort_cleanly() {
        let clock = Clock::new(TimeMode::Manual);
        let (sender, mut receiver) = tokio::sync::mpsc::unbounded_channel();
        let activity = clock.activity();
        let sleeper_clock = Arc::clone(&clock);
        let task = tokio::spawn(async move {
            let _activity = activity;
            sleeper_clock.sleep_until(Duration::from_secs(10)).await;
            let _ = sender.send("woke");
            sleeper_clock.sleep_until(Duration::from_secs(20)).await;
        });
        assert!(clock.settle(Duration::from_secs(5)).await);
        clock.advance(Duration::from_secs(9));
        assert!(clock.settled(), "nothing due yet");
        clock.advance(Duration::from_secs(1));
        assert_eq!(receiver.recv().await, Some("woke"));
        assert!(clock.settle(Duration::from_secs(5)).await);
        // Aborted while asleep: the books balance and nothing is left awake.
        task.abort();
        assert!(task.await.is_err());
        let books = clock.books();
        assert_eq!(books.active, 0);
        assert!(books.sleepers.is_empty());
    }

    #[test]
    fn formats_known_instants() {
        assert_eq!(rfc3339(0.0), "1970-01-01T00:00:00+00:00");
        assert_eq!(rfc3339(1_454_198_100.0), "2016-01-30T23:55:00+00:00");
        assert_eq!(rfc3339(951_782_400.0), "2000-02-29T00:00:00+00:00");
        assert_eq!(rfc3339(1_798_761_599.5), "2026-12-31T23:59:59+00:00");
    }
}
