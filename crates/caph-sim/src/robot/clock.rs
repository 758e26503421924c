//! Simulated time for the Robot simulator: scaled real time, or time that moves only when a test says so.

use caph_core::time::civil_from_days;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::watch;

use crate::hcloud::TimeMode;

/// A point in simulated time, measured from the simulator's start.
pub(crate) type SimTime = Duration;

#[derive(Debug)]
pub(crate) struct Clock {
    mode: TimeMode,
    real_origin: Instant,
    /// Unix seconds at simulated time zero: the simulated wall clock starts at the real one.
    unix_origin: u64,
    manual: watch::Sender<SimTime>,
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
            .map(|since| since.as_secs())
            .unwrap_or(0);
        Arc::new(Clock {
            mode,
            real_origin: Instant::now(),
            unix_origin,
            manual: watch::Sender::new(Duration::ZERO),
        })
    }

    pub(crate) fn mode(&self) -> TimeMode {
        self.mode
    }

    pub(crate) fn now(&self) -> SimTime {
        match self.mode {
            TimeMode::Manual => *self.manual.borrow(),
            TimeMode::Scaled(factor) => self.real_origin.elapsed().div_f64(factor),
        }
    }

    /// Moves simulated time forward (only in [`TimeMode::Manual`]).
    pub(crate) fn advance(&self, by: Duration) {
        if self.mode == TimeMode::Manual {
            self.manual.send_modify(|now| *now += by);
        }
    }

    /// Sleeps until simulated time reaches `deadline`.
    pub(crate) async fn sleep_until(&self, deadline: SimTime) {
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
                tokio::time::sleep((deadline - now).mul_f64(factor)).await;
            },
        }
    }

    /// The simulated wall clock at `at` as Robot prints it: `2026-11-21 05:41:08` (UTC).
    pub(crate) fn timestamp(&self, at: SimTime) -> String {
        let total = self.unix_origin + at.as_secs();
        let (year, month, day) = civil_from_days((total / 86_400) as i64);
        let second_of_day = total % 86_400;
        format!(
            "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}",
            second_of_day / 3600,
            (second_of_day % 3600) / 60,
            second_of_day % 60
        )
    }

    /// The simulated date `days` after `at`, as `YYYY-MM-DD` (for `paid_until`).
    pub(crate) fn date_after(&self, at: SimTime, days: u64) -> String {
        let total = self.unix_origin + at.as_secs() + days * 86_400;
        let (year, month, day) = civil_from_days((total / 86_400) as i64);
        format!("{year:04}-{month:02}-{day:02}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_days() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(20_818), (2026, 12, 31));
    }
}
