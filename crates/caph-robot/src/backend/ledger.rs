//! What a run changed in Robot, recorded the moment each change is made, and undone at the end:
//! the rescue activation this run made (when still pending) and the ephemeral key.
//!
//! The ledger lives outside the install future, so cleanup still knows about both when the
//! future is dropped at cancellation.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use caph_core::backend::{BackendError, GcOptions, GcReport};

use super::EPHEMERAL_KEY_PREFIX;
use crate::client::RobotClient;

/// What this run made in Robot.
#[derive(Debug, Clone, Default)]
pub(crate) struct Ledger {
    /// The fingerprint of the ephemeral key this run stored.
    pub created_key: Option<String>,
    /// Whether this run activated the rescue system (which may since have been used up).
    pub rescue_activated: bool,
}

pub(crate) type SharedLedger = Arc<Mutex<Ledger>>;

pub(crate) fn update(ledger: &SharedLedger, change: impl FnOnce(&mut Ledger)) {
    match ledger.lock() {
        Ok(mut guard) => change(&mut guard),
        Err(poisoned) => change(&mut poisoned.into_inner()),
    }
}

pub(crate) fn snapshot(ledger: &SharedLedger) -> Ledger {
    match ledger.lock() {
        Ok(guard) => guard.clone(),
        Err(poisoned) => poisoned.into_inner().clone(),
    }
}

/// Undoes what the ledger holds; returns one line per action, for the error or the report.
pub(crate) async fn clean(client: &RobotClient, server_number: u64, held: &Ledger) -> Vec<String> {
    let mut lines = Vec::new();
    if held.rescue_activated {
        match client.rescue(server_number).await {
            Ok(rescue) if rescue.active => match client.deactivate_rescue(server_number).await {
                Ok(_) => lines.push(format!(
                    "removed the rescue activation this run made (DELETE /boot/{server_number}/rescue)"
                )),
                Err(error) => lines.push(format!(
                    "could not remove the rescue activation this run made: {error}; remove it in Robot, or the next reset boots the rescue system"
                )),
            },
            Ok(_) => lines.push(
                "the rescue activation this run made was used up by the rescue boot".to_string(),
            ),
            Err(error) => lines.push(format!(
                "could not check the rescue activation this run made: {error}; check it in Robot"
            )),
        }
    }
    if let Some(fingerprint) = &held.created_key {
        match client.delete_key(fingerprint).await {
            Ok(()) => lines.push(format!("deleted the temporary Robot key {fingerprint}")),
            Err(error) => lines.push(format!(
                "could not delete the temporary Robot key {fingerprint}: {error}; `caph-image gc` removes it"
            )),
        }
    }
    lines
}

/// Cleanup bounded in time.
pub(crate) async fn clean_bounded(
    client: &RobotClient,
    server_number: u64,
    held: &Ledger,
    timeout: Duration,
) -> Vec<String> {
    match tokio::time::timeout(timeout, clean(client, server_number, held)).await {
        Ok(lines) => lines,
        Err(_) => vec![format!(
            "cleanup timed out after {timeout:?}: check server {server_number}'s rescue activation in Robot; `caph-image gc` removes temporary keys"
        )],
    }
}

/// Removes ephemeral keys that killed runs left in Robot, by their name prefix and age.
pub(crate) async fn gc(client: &RobotClient, options: GcOptions) -> Result<GcReport, BackendError> {
    let keys = client.keys().await.map_err(|error| BackendError::Failed {
        context: "listing Robot keys".to_string(),
        source: Box::new(error),
    })?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let mut report = GcReport::default();
    for key in keys {
        if !key.name.starts_with(EPHEMERAL_KEY_PREFIX) {
            continue;
        }
        // Robot's times are "YYYY-MM-DD HH:MM:SS"; a key whose age is unknown is kept.
        let Some(created) = key.created_at.as_deref().and_then(parse_robot_time) else {
            continue;
        };
        if now.saturating_sub(created) < options.older_than.as_secs() {
            continue;
        }
        if !options.dry_run {
            client
                .delete_key(&key.fingerprint)
                .await
                .map_err(|error| BackendError::Failed {
                    context: format!("deleting Robot key {}", key.name),
                    source: Box::new(error),
                })?;
        }
        report
            .removed
            .push(format!("Robot key {} ({})", key.name, key.fingerprint));
    }
    Ok(report)
}

/// Seconds since the epoch of `YYYY-MM-DD HH:MM:SS` (UTC, as Robot answers).
fn parse_robot_time(text: &str) -> Option<u64> {
    let (date, time) = text.trim().split_once([' ', 'T'])?;
    let mut date_parts = date.split('-').map(|part| part.parse::<i64>().ok());
    let (year, month, day) = (
        date_parts.next()??,
        date_parts.next()??,
        date_parts.next()??,
    );
    let mut time_parts = time
        .trim_end_matches('Z')
        .split(':')
        .map(|part| part.parse::<i64>().ok());
    let (hour, minute, second) = (
        time_parts.next()??,
        time_parts.next()??,
        time_parts.next()??,
    );
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) {
        return None;
    }
    // Days from the civil date (proleptic Gregorian), after Howard Hinnant's published algorithm.
    let shifted_year = if month <= 2 { year - 1 } else { year };
    let era = shifted_year.div_euclid(400);
    let year_of_era = shifted_year - era * 400;
    let month_index = (month + 9) % 12;
    let day_of_year = (153 * month_index + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    let days = era * 146_097 + day_of_era - 719_468;
    u64::try_from(days * 86_400 + hour * 3600 + minute * 60 + second).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn robot_times() {
        assert_eq!(parse_robot_time("1970-01-01 00:00:00"), Some(0));
        // `date -u -d '2026-11-21 06:00:00' +%s`
        assert_eq!(parse_robot_time("2026-11-21 06:00:00"), Some(1_795_240_800));
        assert_eq!(parse_robot_time("garbage"), None);
    }
}
