//! Running commands with their output streamed line by line to the progress sink, cancellable;
//! and running a plan in a chroot, step by step, the way the hcloud backend runs it over SSH.

use std::collections::VecDeque;
use std::fs;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use caph_core::backend::{Phase, ProgressEvent, ProgressSink};
use caph_core::plan::{BuildStamp, Plan};
use rustix::process::{Pid, Signal};

use super::AssembleError;
use crate::pack::Cancel;

/// How many of a failing command's last output lines go into the error (as the hcloud backend).
pub const FAILURE_TAIL_LINES: usize = 20;
/// How often a running command is checked for exit and cancellation.
const POLL: Duration = Duration::from_millis(100);
/// After a command exits, how long its output pipe may stay open (a daemon it left behind holds
/// it) before the rest is no longer waited for: long enough for buffered lines to arrive.
const DRAIN_AFTER_EXIT: Duration = Duration::from_secs(2);
/// After SIGTERM on cancellation, how long the command's process group gets to end before
/// SIGKILL: apt and dpkg need a moment to leave their lock files consistent.
const TERMINATE_GRACE: Duration = Duration::from_secs(10);

/// The environment steps run with: the chroot does not inherit the caller's (a user's locale or
/// proxy settings would change what gets built).
const CHROOT_ENV: &[(&str, &str)] = &[
    (
        "PATH",
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    ),
    ("HOME", "/root"),
    ("LANG", "C.UTF-8"),
    ("TERM", "dumb"),
    ("DEBIAN_FRONTEND", "noninteractive"),
];

/// How a streamed command ended.
#[derive(Debug)]
pub(crate) struct Finished {
    pub status: ExitStatus,
    /// The last [`FAILURE_TAIL_LINES`] lines of output.
    pub tail: VecDeque<String>,
}

/// Runs `command` in its own process group, stdin from /dev/null, stdout and stderr merged and
/// sent line by line to `progress` as `scope`. When `cancel` is set, the group gets SIGTERM, then
/// SIGKILL, and the result is [`AssembleError::Cancelled`].
pub(crate) fn run_streamed(
    mut command: Command,
    what: &str,
    scope: &str,
    cancel: &Cancel,
    progress: &dyn ProgressSink,
) -> Result<Finished, AssembleError> {
    let io_error = |source| AssembleError::Io {
        what: what.to_owned(),
        source,
    };
    let (reader, writer) = std::io::pipe().map_err(io_error)?;
    command
        .stdin(Stdio::null())
        .stdout(writer.try_clone().map_err(io_error)?)
        .stderr(writer)
        // Its own group: a terminal's Ctrl-C reaches only caph-image, which then stops the
        // command on purpose and cleans up; and the whole group can be signalled.
        .process_group(0);
    let mut child = command.spawn().map_err(io_error)?;
    // The command holds the write ends; dropping it lets the reader see EOF when the child exits.
    drop(command);
    let (sender, receiver) = mpsc::channel::<String>();
    // Detached on purpose: a daemon left behind may hold the pipe open past the command's end.
    std::thread::spawn(move || {
        let mut reader = BufReader::new(reader);
        let mut line = Vec::new();
        loop {
            line.clear();
            match reader.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let text = String::from_utf8_lossy(&line);
                    let text = text.trim_end_matches(['\n', '\r']);
                    if sender.send(text.to_owned()).is_err() {
                        break;
                    }
                }
            }
        }
    });
    let pid = Pid::from_child(&child);
    let mut tail: VecDeque<String> = VecDeque::with_capacity(FAILURE_TAIL_LINES);
    let mut push = |line: String| {
        if tail.len() == FAILURE_TAIL_LINES {
            tail.pop_front();
        }
        tail.push_back(line.clone());
        progress.event(ProgressEvent::Output {
            scope: scope.to_owned(),
            line,
        });
    };
    let mut terminated_at: Option<Instant> = None;
    let mut exited: Option<(ExitStatus, Instant)> = None;
    let mut disconnected = false;
    loop {
        if disconnected {
            std::thread::sleep(POLL);
        } else {
            match receiver.recv_timeout(POLL) {
                Ok(line) => {
                    push(line);
                    continue;
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => disconnected = true,
                Err(mpsc::RecvTimeoutError::Timeout) => {}
            }
        }
        if let Some((_, at)) = exited {
            if disconnected || at.elapsed() >= DRAIN_AFTER_EXIT {
                break;
            }
            continue;
        }
        if cancel.is_cancelled() {
            match terminated_at {
                None => {
                    let _ = rustix::process::kill_process_group(pid, Signal::TERM);
                    terminated_at = Some(Instant::now());
                }
                Some(at) if at.elapsed() >= TERMINATE_GRACE => {
                    let _ = rustix::process::kill_process_group(pid, Signal::KILL);
                }
                Some(_) => {}
            }
        }
        if let Some(status) = child.try_wait().map_err(io_error)? {
            exited = Some((status, Instant::now()));
            if disconnected {
                break;
            }
        }
    }
    // Whatever arrived in the meantime.
    while let Ok(line) = receiver.try_recv() {
        push(line);
    }
    let Some((status, _)) = exited else {
        return Err(AssembleError::Cancelled);
    };
    if cancel.is_cancelled() {
        return Err(AssembleError::Cancelled);
    }
    Ok(Finished { status, tail })
}

/// Runs every step of `plan` inside the chroot `root`, in order: each step is the stamp's
/// `export` lines followed by the step's script, written to a file in the tree's `/root` and
/// run with `chroot ROOT /bin/bash FILE < /dev/null` (so a command in a step cannot eat the rest
/// of it). Output lines go to `progress`; the first failing step stops the run and is named
/// with its number, name, exit status and last output lines.
///
/// The tree should be prepared with [`super::BuildEnvironment::enter`] first.
pub fn run_plan_in_chroot(
    root: &Path,
    plan: &Plan,
    stamp: &BuildStamp,
    scope: &str,
    cancel: &Cancel,
    progress: &dyn ProgressSink,
) -> Result<(), AssembleError> {
    let count = plan.steps.len();
    let exports = stamp.exports();
    let root_home = root.join("root");
    fs::create_dir_all(&root_home).map_err(|source| AssembleError::Io {
        what: format!("creating {}", root_home.display()),
        source,
    })?;
    for (index, step) in plan.steps.iter().enumerate() {
        if cancel.is_cancelled() {
            return Err(AssembleError::Cancelled);
        }
        let number = index + 1;
        progress.event(ProgressEvent::Phase {
            scope: scope.to_owned(),
            phase: Phase::Provision,
            detail: format!("step {number}/{count}: {}", step.name),
        });
        let file_name = format!(".caph-step-{number:03}");
        let host_path = root_home.join(&file_name);
        let write = fs::write(&host_path, format!("{exports}{}", step.to_script()))
            .and_then(|()| fs::set_permissions(&host_path, fs::Permissions::from_mode(0o700)));
        write.map_err(|source| AssembleError::Io {
            what: format!("writing step {number} to {}", host_path.display()),
            source,
        })?;
        let mut command = Command::new("chroot");
        command
            .arg(root)
            .arg("/bin/bash")
            .arg(format!("/root/{file_name}"))
            .env_clear()
            .envs(CHROOT_ENV.iter().copied());
        let result = run_streamed(
            command,
            &format!(
                "running step {number}/{count} \"{}\" with chroot",
                step.name
            ),
            scope,
            cancel,
            progress,
        );
        // The script goes whatever happened: it must not end up in the image.
        let _ = fs::remove_file(&host_path);
        let finished = result?;
        if !finished.status.success() {
            return Err(AssembleError::Step {
                number,
                count,
                name: step.name.clone(),
                status: describe_status(finished.status),
                tail: indent_tail(&finished.tail),
            });
        }
    }
    Ok(())
}

/// `1`, or `signal 9` for a command killed by a signal.
pub(crate) fn describe_status(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => code.to_string(),
        (None, Some(signal)) => format!("signal {signal}"),
        (None, None) => "unknown".to_owned(),
    }
}

/// The tail as `  | line` lines, as the hcloud backend quotes a failing step.
pub(crate) fn indent_tail(tail: &VecDeque<String>) -> String {
    tail.iter()
        .map(|line| format!("  | {line}"))
        .collect::<Vec<_>>()
        .join("\n")
}
