//! Background flows of actions: they sleep on the simulated clock, call the machine host at the
//! right moment and move servers, images and actions to their next state.

use std::sync::Arc;

use super::clock::SimTime;
use super::model::{ImageStatus, ServerStatus};
use super::world::Inner;
use crate::host::{CloudRescue, MachineError};

/// Bytes in one of the API's GB (server type disks): a decimal gigabyte.
const GIGABYTE: u64 = 1_000_000_000;

type Failure = (String, String);

fn failed(message: impl Into<String>) -> Failure {
    ("action_failed".to_owned(), message.into())
}

fn host_failure(error: &MachineError) -> Failure {
    failed(format!("machine host: {error}"))
}

fn gone() -> Failure {
    failed("server was deleted")
}

/// Runs a host call for one server, never overlapping another host call for that server.
async fn on_server<T>(
    inner: &Inner,
    server_id: u64,
    call: impl Future<Output = Result<T, MachineError>>,
) -> Result<T, MachineError> {
    let lock = inner.server_lock(server_id);
    let _guard = lock.lock().await;
    call.await
}

/// Whether the server still exists and no newer power operation has started.
fn current(inner: &Inner, server_id: u64, generation: u64) -> bool {
    inner
        .world()
        .servers
        .get(&server_id)
        .is_some_and(|server| server.power_generation == generation)
}

/// `create_server`, then (with `start_after_create`) `start_server`.
pub(crate) async fn create_server(
    inner: Arc<Inner>,
    server_id: u64,
    create_action: u64,
    start_action: Option<u64>,
    started: SimTime,
) {
    let durations = inner.durations.clone();
    inner
        .clock
        .sleep_until(started.saturating_add(durations.create))
        .await;
    let now = inner.clock.now();
    {
        let mut world = inner.world();
        let failure = match world.servers.get(&server_id) {
            None => Some(gone()),
            Some(server) => server
                .host_create_error
                .clone()
                .map(|message| failed(format!("machine host: {message}"))),
        }
        .or_else(|| world.planned_error(create_action));
        if let Some(failure) = failure {
            world.finish_action(create_action, now, Err(failure));
            if let Some(start_action) = start_action {
                world.finish_action(
                    start_action,
                    now,
                    Err(failed("server could not be created")),
                );
            }
            world.set_status(server_id, ServerStatus::Off);
            return;
        }
        world.finish_action(create_action, now, Ok(()));
        let next = if start_action.is_some() {
            ServerStatus::Starting
        } else {
            ServerStatus::Off
        };
        world.set_status(server_id, next);
    }
    if let Some(start_action) = start_action {
        inner
            .clock
            .sleep_until(started.saturating_add(durations.create.saturating_add(durations.start)))
            .await;
        power_on_step(&inner, server_id, start_action, 0).await;
    }
}

/// Boots the machine and ends `action_id`: `running` on success, `off` on failure.
async fn power_on_step(inner: &Inner, server_id: u64, action_id: u64, generation: u64) {
    let (planned, rescue) = {
        let world = inner.world();
        match world.servers.get(&server_id) {
            None => (Some(gone()), None),
            Some(server) => (
                world.planned_error(action_id),
                // An enabled rescue system takes this boot (and only this one).
                server.view.rescue_enabled.then(|| CloudRescue {
                    authorized_keys: server.rescue_keys.clone(),
                    architecture: server.view.architecture.clone(),
                    disk_bytes: server.view.primary_disk_size.saturating_mul(GIGABYTE),
                }),
            ),
        }
    };
    let outcome = match (planned, rescue) {
        (Some(failure), _) => Err(failure),
        (None, Some(rescue)) => on_server(
            inner,
            server_id,
            inner.host.power_on_rescue(server_id, &rescue),
        )
        .await
        .map_err(|error| host_failure(&error)),
        (None, None) => on_server(inner, server_id, inner.host.power_on(server_id))
            .await
            .map_err(|error| host_failure(&error)),
    };
    let now = inner.clock.now();
    let fresh = current(inner, server_id, generation);
    let mut world = inner.world();
    if fresh && let Some(server) = world.servers.get_mut(&server_id) {
        if outcome.is_ok() {
            server.view.status = ServerStatus::Running;
            // The rescue system is booted once; afterwards the server boots from its disk again.
            server.view.rescue_enabled = false;
        } else {
            server.view.status = ServerStatus::Off;
        }
    }
    world.finish_action(action_id, now, outcome);
}

/// Stops the machine; on success the server is `off`, on failure it stays `running`.
async fn power_off_step(inner: &Inner, server_id: u64, generation: u64) -> Result<(), Failure> {
    if !current(inner, server_id, generation) {
        return Ok(());
    }
    let outcome = on_server(inner, server_id, inner.host.power_off(server_id))
        .await
        .map_err(|error| host_failure(&error));
    let fresh = current(inner, server_id, generation);
    let mut world = inner.world();
    if fresh {
        let status = if outcome.is_ok() {
            ServerStatus::Off
        } else {
            ServerStatus::Running
        };
        world.set_status(server_id, status);
    }
    outcome
}

/// `poweron`: `starting`, then `running`; on a running server the action just succeeds.
pub(crate) async fn power_on(
    inner: Arc<Inner>,
    server_id: u64,
    action_id: u64,
    generation: u64,
    started: SimTime,
    previous: ServerStatus,
) {
    inner
        .clock
        .sleep_until(started.saturating_add(inner.durations.poweron))
        .await;
    if previous == ServerStatus::Running {
        finish_without_change(&inner, action_id);
        return;
    }
    power_on_step(&inner, server_id, action_id, generation).await;
}

/// Ends an action whose target state already holds (the machine is not touched).
fn finish_without_change(inner: &Inner, action_id: u64) {
    let now = inner.clock.now();
    let mut world = inner.world();
    let outcome = match world.planned_error(action_id) {
        Some(failure) => Err(failure),
        None => Ok(()),
    };
    world.finish_action(action_id, now, outcome);
}

/// `poweroff`: `stopping`, then `off`.
pub(crate) async fn power_off(
    inner: Arc<Inner>,
    server_id: u64,
    action_id: u64,
    generation: u64,
    started: SimTime,
    previous: ServerStatus,
) {
    inner
        .clock
        .sleep_until(started.saturating_add(inner.durations.poweroff))
        .await;
    if previous == ServerStatus::Off {
        finish_without_change(&inner, action_id);
        return;
    }
    let planned = inner.world().planned_error(action_id);
    let outcome = match planned {
        Some(failure) => {
            if current(&inner, server_id, generation) {
                inner.world().set_status(server_id, previous);
            }
            Err(failure)
        }
        None => power_off_step(&inner, server_id, generation).await,
    };
    let now = inner.clock.now();
    inner.world().finish_action(action_id, now, outcome);
}

/// `shutdown`: the action succeeds once the ACPI signal is sent; the server reaches `off` later,
/// unless its operating system `ignored` the signal.
pub(crate) async fn shutdown(
    inner: Arc<Inner>,
    server_id: u64,
    action_id: u64,
    generation: u64,
    started: SimTime,
    previous: ServerStatus,
    ignored: bool,
) {
    let durations = inner.durations.clone();
    inner
        .clock
        .sleep_until(started.saturating_add(durations.shutdown_signal))
        .await;
    let now = inner.clock.now();
    {
        let mut world = inner.world();
        if let Some(failure) = world.planned_error(action_id) {
            world.finish_action(action_id, now, Err(failure));
            drop(world);
            if current(&inner, server_id, generation) {
                inner.world().set_status(server_id, previous);
            }
            return;
        }
        world.finish_action(action_id, now, Ok(()));
    }
    if previous == ServerStatus::Off || ignored {
        return;
    }
    inner
        .clock
        .sleep_until(started.saturating_add(durations.shutdown_signal.max(durations.shutdown)))
        .await;
    // The action already reported success: a host failure only shows as the server staying up.
    let _ = power_off_step(&inner, server_id, generation).await;
}

/// `reset` and `reboot`: the machine goes down and comes up again; from `off` it just starts.
pub(crate) async fn reset(
    inner: Arc<Inner>,
    server_id: u64,
    action_id: u64,
    generation: u64,
    started: SimTime,
    was_running: bool,
) {
    inner
        .clock
        .sleep_until(started.saturating_add(inner.durations.reset))
        .await;
    if was_running && inner.world().planned_error(action_id).is_none() {
        let down = on_server(&inner, server_id, inner.host.power_off(server_id)).await;
        if let Err(error) = down {
            let now = inner.clock.now();
            inner
                .world()
                .finish_action(action_id, now, Err(host_failure(&error)));
            return;
        }
    }
    power_on_step(&inner, server_id, action_id, generation).await;
}

/// `delete_server`: `deleting`, then the machine is removed and the server answers 404.
pub(crate) async fn delete_server(
    inner: Arc<Inner>,
    server_id: u64,
    action_id: u64,
    started: SimTime,
    previous: ServerStatus,
) {
    inner
        .clock
        .sleep_until(started.saturating_add(inner.durations.delete))
        .await;
    let planned = inner.world().planned_error(action_id);
    let outcome = match planned {
        Some(failure) => Err(failure),
        None => on_server(&inner, server_id, inner.host.delete(server_id))
            .await
            .map_err(|error| host_failure(&error)),
    };
    let now = inner.clock.now();
    let mut world = inner.world();
    if outcome.is_ok() {
        if let Some(server) = world.servers.remove(&server_id) {
            world.return_stock(&server.view.server_type, &server.view.location);
        }
        // Actions still running on the server end with it.
        let orphans: Vec<u64> = world
            .actions
            .values()
            .filter(|action| {
                action.id != action_id
                    && action.finished.is_none()
                    && action.command != "create_image"
                    && action
                        .resources
                        .iter()
                        .any(|(id, kind)| *id == server_id && *kind == "server")
            })
            .map(|action| action.id)
            .collect();
        for orphan in orphans {
            world.finish_action(orphan, now, Err(gone()));
        }
    } else {
        world.set_status(server_id, previous);
    }
    world.finish_action(action_id, now, outcome);
}

/// Size of a snapshot in GB from the bytes the host reports.
fn gigabytes(bytes: u64) -> f64 {
    bytes as f64 / 1e9
}

/// `create_image`: the host copies the disk, the image is `available` when the time is up.
pub(crate) async fn create_image(
    inner: Arc<Inner>,
    server_id: u64,
    image_id: u64,
    action_id: u64,
    started: SimTime,
) {
    let image_lock = inner.image_lock(image_id);
    // `registered`: the copy was recorded on the image, so whoever removes the image removes it.
    let (copied, registered) = {
        let _image_guard = image_lock.lock().await;
        let wanted = inner.world().images.contains_key(&image_id)
            && inner.world().planned_error(action_id).is_none();
        if wanted {
            let copy = on_server(&inner, server_id, inner.host.snapshot(server_id, image_id)).await;
            let mut registered = false;
            if copy.is_ok()
                && let Some(image) = inner.world().images.get_mut(&image_id)
            {
                image.host_copy = true;
                registered = true;
            }
            (Some(copy), registered)
        } else {
            (None, false)
        }
    };
    let size = match &copied {
        Some(Ok(bytes)) => Some(gigabytes(*bytes)),
        _ => None,
    };
    // Bigger disks take longer: the real service needs about 1-5 minutes.
    let expected = inner
        .durations
        .snapshot_base
        .saturating_add(super::clock::scale(
            inner.durations.snapshot_per_gb,
            size.unwrap_or(0.0),
        ));
    if let Some(action) = inner.world().actions.get_mut(&action_id) {
        action.expected = expected;
    }
    inner
        .clock
        .sleep_until(started.saturating_add(expected))
        .await;
    let now = inner.clock.now();
    let discard_copy = {
        let mut world = inner.world();
        let outcome = match (world.planned_error(action_id), &copied) {
            (Some(failure), _) => Err(failure),
            (None, Some(Err(error))) => Err(host_failure(error)),
            (None, Some(Ok(_))) if world.images.contains_key(&image_id) => Ok(()),
            (None, _) => Err(failed("image was deleted")),
        };
        let copy_made = matches!(copied, Some(Ok(_)));
        let discard = if outcome.is_ok() {
            if let Some(image) = world.images.get_mut(&image_id) {
                image.view.status = ImageStatus::Available;
                image.view.image_size = size;
            }
            false
        } else {
            let removed = world.images.remove(&image_id);
            copy_made && (!registered || removed.is_some_and(|image| image.host_copy))
        };
        world.finish_action(action_id, now, outcome);
        discard
    };
    if discard_copy {
        let _image_guard = image_lock.lock().await;
        // Nobody is left to tell about a failure to remove a copy nobody can see.
        let _ = inner.host.delete_image(image_id).await;
    }
}

/// A flow with no host involvement: ends the action when its time is up, applying `apply` first.
pub(crate) async fn timed(
    inner: Arc<Inner>,
    action_id: u64,
    deadline: SimTime,
    apply: Box<dyn FnOnce(&mut super::world::World) + Send>,
) {
    inner.clock.sleep_until(deadline).await;
    let now = inner.clock.now();
    let mut world = inner.world();
    match world.planned_error(action_id) {
        Some(failure) => world.finish_action(action_id, now, Err(failure)),
        None => {
            apply(&mut world);
            world.finish_action(action_id, now, Ok(()));
        }
    }
}
