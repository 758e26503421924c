//! A child process that is killed and reaped when dropped: a VM, a script in its own namespace.
//! tokio's `kill_on_drop` only sends the signal; waiting here as well means that when a
//! cancelled run returns, its processes are gone (not zombies, not still holding a disk).

use std::time::{Duration, Instant};

/// How long a drop waits for a killed child to be reaped: SIGKILL ends it at once, unless the
/// machine is very busy.
const REAP_PATIENCE: Duration = Duration::from_secs(5);

/// A child killed and reaped on drop.
#[derive(Debug)]
pub(crate) struct Reaped(pub(crate) tokio::process::Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        if let Ok(Some(_)) = self.0.try_wait() {
            return;
        }
        let _ = self.0.start_kill();
        let started = Instant::now();
        while started.elapsed() < REAP_PATIENCE {
            if let Ok(Some(_)) | Err(_) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
