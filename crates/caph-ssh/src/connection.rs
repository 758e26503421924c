//! The thread a connection lives on: russh's session task and the stdin relay share one
//! single-threaded runtime, so the per-packet traffic between them never wakes another thread.
//!
//! Why: russh runs a connection as a task that talks to the channels through queues and a
//! window notifier. On a multi-threaded runtime the stdin feeder and that task sit on different
//! workers, and every window adjustment from the server (OpenSSH sends one per ~96 KiB consumed)
//! bounces between them: a verified 512 MiB upload made about 38,000 context switches and spent
//! about 0.5 s of CPU on them, a third of the client's work. On one thread the same upload makes
//! a few thousand, and only whole chunks (1 MiB) cross from the caller's runtime.

use std::future::Future;
use std::time::{Duration, Instant};

use tokio::runtime::Handle;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// How long a stopping connection thread keeps running its tasks so that russh can send what it
/// has queued (a disconnect message, the last window of data) and close the socket: a local
/// write and a close take microseconds; a second bounds a stuck peer without delaying much.
const WIND_DOWN: Duration = Duration::from_secs(1);

/// How often the winding-down thread checks whether its tasks have ended.
const WIND_DOWN_POLL: Duration = Duration::from_millis(5);

/// A dedicated thread running a current-thread tokio runtime; dropping it stops the thread
/// (after letting its tasks wind down for at most `WIND_DOWN`).
pub(crate) struct ConnectionThread {
    runtime: Handle,
    stop: Option<oneshot::Sender<()>>,
}

impl std::fmt::Debug for ConnectionThread {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("ConnectionThread")
    }
}

impl ConnectionThread {
    /// Starts the thread and its runtime.
    pub(crate) fn start() -> std::io::Result<ConnectionThread> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let handle = runtime.handle().clone();
        let (stop, stopped) = oneshot::channel::<()>();
        std::thread::Builder::new()
            .name("caph-ssh-connection".to_owned())
            .spawn(move || {
                runtime.block_on(async {
                    // A dropped sender is a stop too.
                    let _ = stopped.await;
                    let until = Instant::now() + WIND_DOWN;
                    while runtime_has_tasks() && Instant::now() < until {
                        tokio::time::sleep(WIND_DOWN_POLL).await;
                    }
                });
                // Dropping the runtime here cancels whatever is left, closing its sockets.
            })?;
        Ok(ConnectionThread {
            runtime: handle,
            stop: Some(stop),
        })
    }

    /// Runs `task` on the connection's thread. The returned guard aborts it when dropped, so a
    /// caller that gives up (a timeout, a cancelled upload) does not leave it running.
    pub(crate) fn spawn<F>(&self, task: F) -> AbortOnDrop<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        AbortOnDrop(self.runtime.spawn(task))
    }
}

/// Whether the runtime this runs on still has tasks other than the one asking.
fn runtime_has_tasks() -> bool {
    Handle::current().metrics().num_alive_tasks() > 0
}

impl Drop for ConnectionThread {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            // The thread may already be gone with its runtime; nothing is left to stop then.
            let _ = stop.send(());
        }
    }
}

/// A task on a connection thread, aborted when this is dropped; await it for its output.
pub(crate) struct AbortOnDrop<T>(JoinHandle<T>);

impl<T> std::fmt::Debug for AbortOnDrop<T> {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("AbortOnDrop")
    }
}

impl<T> Future for AbortOnDrop<T> {
    /// `Err` when the task panicked or its runtime was shut down under it.
    type Output = Result<T, tokio::task::JoinError>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        context: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        std::pin::Pin::new(&mut self.0).poll(context)
    }
}

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}
