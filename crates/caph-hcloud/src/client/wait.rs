//! The action waiter: polls running actions together, fast at first and backing off, until they
//! finish, fail, or a deadline passes; progress goes to a callback.
//!
//! The official clients poll at a constant 500 ms (Go, Packer) or 1 s (Python). Actions differ by
//! two orders of magnitude: a power action takes a second or two, creating a server 10 to 40 s,
//! a snapshot minutes. A constant interval is either slow for the first or wasteful for the
//! last. The schedule here starts below 500 ms, so short actions are seen as soon as they end,
//! and grows by half per poll up to 5 s, so a five-minute snapshot costs about 70 polls instead of
//! 600. Where the actions report progress, the next poll goes to their estimated end when that
//! comes sooner ([`PollSchedule::delay_until_done`]), so a long action is seen within a
//! fraction of a second of its end instead of up to 5 s after. All running actions share one
//! `GET /actions?id=..` per poll.

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;

use super::types::{Action, ActionId, ActionStatus, Server, ServerId, ServerStatus};
use super::{Client, Error};

/// The wait before the first poll: short actions (power on/off, delete, rescue) often finish
/// within a quarter of a second, and catching them then saves a build that waits for a dozen of
/// them several seconds.
pub const DEFAULT_FIRST_POLL_DELAY: Duration = Duration::from_millis(250);

/// The growth of the wait per poll: 1.5 reaches the cap after 8 polls (about 12 s, the time a
/// server create usually needs), where doubling would jump past the typical end of a create.
pub const DEFAULT_POLL_GROWTH: f64 = 1.5;

/// The longest wait between polls: bounds the extra latency on long actions (snapshots take
/// minutes) to 5 s while spending at most 12 requests a minute of the 60 the rate limit refills.
pub const DEFAULT_MAX_POLL_DELAY: Duration = Duration::from_secs(5);

/// The overall deadline of a wait: a snapshot of a large disk can take well over ten minutes;
/// half an hour means the action is stuck and a human should look.
pub const DEFAULT_WAIT_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// When to poll: `first`, then growing by `growth` per poll, never above `max`.
#[derive(Debug, Clone, PartialEq)]
pub struct PollSchedule {
    /// The wait before the first poll.
    pub first: Duration,
    /// The factor the wait grows by per poll (1.0 for a constant interval).
    pub growth: f64,
    /// The longest wait.
    pub max: Duration,
}

impl Default for PollSchedule {
    fn default() -> Self {
        PollSchedule {
            first: DEFAULT_FIRST_POLL_DELAY,
            growth: DEFAULT_POLL_GROWTH,
            max: DEFAULT_MAX_POLL_DELAY,
        }
    }
}

impl PollSchedule {
    /// A constant interval, like the official Go client's 500 ms.
    pub fn constant(interval: Duration) -> Self {
        PollSchedule {
            first: interval,
            growth: 1.0,
            max: interval,
        }
    }

    /// The same schedule with every wait multiplied by `factor` (for simulated time: a
    /// simulator running at 1/100 of real time wants the schedule at 1/100 too).
    pub fn scaled(&self, factor: f64) -> Self {
        let factor = if factor.is_finite() && factor > 0.0 {
            factor
        } else {
            1.0
        };
        PollSchedule {
            first: self.first.mul_f64(factor),
            growth: self.growth,
            max: self.max.mul_f64(factor),
        }
    }

    /// The wait before poll number `poll`, cut short where the actions' own progress says they
    /// end sooner: an action at `p` percent after `elapsed` (since the wait began) should end
    /// in about `elapsed × (100 − p) / p`, so the poll goes there instead of up to `max` later,
    /// never sooner than `first` after the last. Without progress from every action (0 %, as
    /// an action that just began reports), the schedule alone decides. A snapshot that takes
    /// minutes is then seen within a second of its end, not up to 5 s after, for about the
    /// same number of requests.
    pub fn delay_until_done(
        &self,
        poll: u32,
        elapsed: Duration,
        percents: impl IntoIterator<Item = u8>,
    ) -> Duration {
        let scheduled = self.delay(poll);
        match estimated_remaining(elapsed, percents) {
            Some(remaining) => scheduled.min(remaining.max(self.first)),
            None => scheduled,
        }
    }

    /// The wait before poll number `poll` (0 for the first).
    pub fn delay(&self, poll: u32) -> Duration {
        let growth = if self.growth.is_finite() && self.growth >= 1.0 {
            self.growth
        } else {
            1.0
        };
        let factor = growth.powi(poll.min(64) as i32);
        let seconds = (self.first.as_secs_f64() * factor).min(self.max.as_secs_f64());
        Duration::from_secs_f64(seconds.max(0.0))
    }
}

/// How long the slowest of the actions still needs, judged by the progress each reports after
/// `elapsed`; `None` if any reports nothing to judge by (0 % or done).
fn estimated_remaining(
    elapsed: Duration,
    percents: impl IntoIterator<Item = u8>,
) -> Option<Duration> {
    let mut slowest: Option<Duration> = None;
    for percent in percents {
        if !(1..100).contains(&percent) {
            return None;
        }
        // Progress is rounded down, so this errs towards a later poll by under a percent.
        let remaining = elapsed.mul_f64(f64::from(100 - percent) / f64::from(percent));
        slowest = Some(slowest.map_or(remaining, |slowest| slowest.max(remaining)));
    }
    slowest
}

/// How to wait for actions.
#[derive(Debug, Clone, PartialEq)]
pub struct WaitOptions {
    /// When to poll.
    pub schedule: PollSchedule,
    /// The overall deadline, from the start of the wait.
    pub timeout: Duration,
}

impl Default for WaitOptions {
    fn default() -> Self {
        WaitOptions {
            schedule: PollSchedule::default(),
            timeout: DEFAULT_WAIT_TIMEOUT,
        }
    }
}

/// The state of one action, as reported to the progress callback.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActionProgress {
    /// The action's id.
    pub id: ActionId,
    /// Its command, e.g. `create_image`.
    pub command: String,
    /// Percent done.
    pub progress: u8,
    /// Running, success or error.
    pub status: ActionStatus,
}

impl ActionProgress {
    fn of(action: &Action) -> Self {
        ActionProgress {
            id: action.id,
            command: action.command.clone(),
            progress: action.progress,
            status: action.status.clone(),
        }
    }
}

/// Whether an action is over, and how.
fn check_finished(action: &Action) -> Result<bool, Error> {
    match &action.status {
        ActionStatus::Running => Ok(false),
        ActionStatus::Success => Ok(true),
        ActionStatus::Error => {
            let (code, message) = match &action.error {
                Some(error) => (error.code.clone(), error.message.clone()),
                None => ("unknown".to_string(), "the API gave no reason".to_string()),
            };
            Err(Error::ActionFailed {
                id: action.id,
                command: action.command.clone(),
                code,
                message,
            })
        }
        // A status this client does not know: it is not running, and it is not a success the
        // caller can build on, so it ends the wait with an error rather than a silent hang.
        ActionStatus::Unknown(status) => Err(Error::ActionFailed {
            id: action.id,
            command: action.command.clone(),
            code: "unknown_status".to_string(),
            message: format!(
                "the action ended in status {status:?}, which this client does not know"
            ),
        }),
    }
}

impl Client {
    /// Waits until every action succeeded; returns their final state in the given order.
    ///
    /// `on_progress` hears each action's first state and every change of status or progress.
    /// The first action to end in `error` ends the wait with [`Error::ActionFailed`] naming it,
    /// its command and the API's error; the deadline ends it with [`Error::WaitTimeout`].
    /// Actions already finished in `actions` cost no request.
    pub async fn wait_for_actions(
        &self,
        actions: &[Action],
        options: &WaitOptions,
        on_progress: &mut (dyn FnMut(&ActionProgress) + Send),
    ) -> Result<Vec<Action>, Error> {
        let started = Instant::now();
        let deadline = started + options.timeout;
        let mut latest: Vec<Action> = actions.to_vec();
        let mut reported: HashMap<ActionId, ActionProgress> = HashMap::new();
        let mut poll = 0u32;
        loop {
            let mut pending = Vec::new();
            for action in &latest {
                let progress = ActionProgress::of(action);
                if reported.get(&action.id) != Some(&progress) {
                    on_progress(&progress);
                    reported.insert(action.id, progress);
                }
                if !check_finished(action)? && !pending.contains(&action.id) {
                    pending.push(action.id);
                }
            }
            if pending.is_empty() {
                return Ok(latest);
            }
            let now = Instant::now();
            if now >= deadline {
                let still: Vec<(ActionId, String, u8)> = latest
                    .iter()
                    .filter(|action| pending.contains(&action.id))
                    .map(|action| (action.id, action.command.clone(), action.progress))
                    .collect();
                return Err(Error::WaitTimeout {
                    waited: now - started,
                    pending: still,
                });
            }
            let percents = latest
                .iter()
                .filter(|action| pending.contains(&action.id))
                .map(|action| action.progress);
            let delay = options
                .schedule
                .delay_until_done(poll, now - started, percents);
            // The last sleep is cut at the deadline, so one poll still happens right there.
            tokio::time::sleep(delay.min(deadline - now)).await;
            poll = poll.saturating_add(1);
            let fresh = self.get_actions(&pending).await?;
            let fresh: HashMap<ActionId, Action> = fresh
                .into_iter()
                .map(|action| (action.id, action))
                .collect();
            for action in &mut latest {
                if let Some(update) = fresh.get(&action.id) {
                    *action = update.clone();
                }
            }
        }
    }

    /// Waits for one action; see [`Client::wait_for_actions`].
    pub async fn wait_for_action(
        &self,
        action: &Action,
        options: &WaitOptions,
        on_progress: &mut (dyn FnMut(&ActionProgress) + Send),
    ) -> Result<Action, Error> {
        let mut done = self
            .wait_for_actions(std::slice::from_ref(action), options, on_progress)
            .await?;
        done.pop().ok_or(Error::ActionMissing { id: action.id })
    }
}

impl Client {
    /// Polls `GET /servers/{id}` on the same schedule until the server has status `wanted`
    /// (e.g. `off` after a shutdown, whose action succeeds when the ACPI signal is sent, long
    /// before the server is off). `on_status` hears every answer. Ends with
    /// [`Error::ServerStatusTimeout`] at the deadline; the caller then falls back (to a poweroff).
    pub async fn wait_for_server_status(
        &self,
        id: ServerId,
        wanted: &ServerStatus,
        options: &WaitOptions,
        on_status: &mut (dyn FnMut(&Server) + Send),
    ) -> Result<Server, Error> {
        let started = Instant::now();
        let deadline = started + options.timeout;
        let mut poll = 0u32;
        loop {
            let server = self.get_server(id).await?;
            on_status(&server);
            if &server.status == wanted {
                return Ok(server);
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(Error::ServerStatusTimeout {
                    id,
                    wanted: wanted.to_string(),
                    last: server.status.to_string(),
                    waited: now - started,
                });
            }
            tokio::time::sleep(options.schedule.delay(poll).min(deadline - now)).await;
            poll = poll.saturating_add(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_starts_fast_backs_off_and_is_bounded() {
        let schedule = PollSchedule::default();
        let delays: Vec<u128> = (0..12)
            .map(|poll| schedule.delay(poll).as_millis())
            .collect();
        assert_eq!(
            delays,
            [
                250, 375, 562, 843, 1265, 1898, 2847, 4271, 5000, 5000, 5000, 5000
            ]
        );
        assert_eq!(schedule.delay(u32::MAX), DEFAULT_MAX_POLL_DELAY);
    }

    #[test]
    fn progress_brings_the_next_poll_forward_but_never_delays_it() {
        let schedule = PollSchedule::default();
        let seconds = Duration::from_secs_f64;
        // 60 % after 15 s: about 10 s to go, but the schedule's 5 s comes first.
        assert_eq!(
            schedule.delay_until_done(10, seconds(15.0), [60]),
            seconds(5.0)
        );
        // 90 % after 18 s: 2 s to go, sooner than the schedule's 5 s.
        assert_eq!(
            schedule.delay_until_done(10, seconds(18.0), [90]),
            seconds(2.0)
        );
        // The slowest action decides; nothing sooner than the first delay.
        assert_eq!(
            schedule.delay_until_done(10, seconds(18.0), [90, 99]),
            seconds(2.0)
        );
        assert_eq!(
            schedule.delay_until_done(10, seconds(10.0), [99]),
            DEFAULT_FIRST_POLL_DELAY
        );
        // An action without progress yet: the schedule alone.
        assert_eq!(
            schedule.delay_until_done(3, seconds(2.0), [50, 0]),
            schedule.delay(3)
        );
        assert_eq!(
            schedule.delay_until_done(3, seconds(2.0), []),
            schedule.delay(3)
        );
    }

    #[test]
    fn polls_far_less_than_a_constant_500ms_on_long_actions() {
        fn polls(schedule: &PollSchedule, action: Duration) -> u32 {
            let mut waited = Duration::ZERO;
            let mut poll = 0;
            while waited < action {
                waited += schedule.delay(poll);
                poll += 1;
            }
            poll
        }
        let ours = PollSchedule::default();
        let constant = PollSchedule::constant(Duration::from_millis(500));
        // Short actions: at most one poll more than the constant schedule.
        assert!(
            polls(&ours, Duration::from_secs(1)) <= polls(&constant, Duration::from_secs(1)) + 1
        );
        // A 30 s create and a 5 min snapshot.
        assert!(
            polls(&ours, Duration::from_secs(30)) * 3 < polls(&constant, Duration::from_secs(30))
        );
        assert!(
            polls(&ours, Duration::from_secs(300)) * 8 < polls(&constant, Duration::from_secs(300))
        );
    }

    #[test]
    fn scaled_and_constant_schedules() {
        let scaled = PollSchedule::default().scaled(0.01);
        assert_eq!(scaled.delay(0), Duration::from_micros(2500));
        assert_eq!(scaled.delay(100), Duration::from_millis(50));
        let constant = PollSchedule::constant(Duration::from_millis(500));
        assert_eq!(constant.delay(0), constant.delay(50));
    }
}
