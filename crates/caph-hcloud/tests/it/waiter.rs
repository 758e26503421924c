//! The action waiter against the simulator: progress, failures, the deadline, and the request
//! count of a whole snapshot build compared with a constant 500 ms poll.

use std::time::Duration;

use caph_hcloud::client::{
    ActionProgress, ActionStatus, CreateImageRequest, CreateServerRequest, Error, PollSchedule,
    ServerStatus, WaitOptions,
};
use caph_sim::hcloud::Fault;

use crate::{client_for, count, start_sim};

// Shared with the polling benchmark (benches/polling.rs).
#[path = "../support/snapshot_flow.rs"]
mod snapshot_flow;

#[tokio::test]
async fn reports_progress_of_batched_actions_until_success() {
    // 1/100 of real time: create 120 ms, start 160 ms.
    let scale = 0.01;
    let sim = start_sim(scale).await;
    let client = client_for(&sim.api_url());
    let created = client
        .create_server(&CreateServerRequest::new("progress-1", "cx23", "debian-12"))
        .await
        .unwrap();
    let actions = created.all_actions();
    assert_eq!(actions.len(), 2, "create_server and start_server");
    let options = WaitOptions {
        schedule: PollSchedule::default().scaled(scale),
        timeout: Duration::from_secs(30),
    };
    let mut seen: Vec<ActionProgress> = Vec::new();
    let done = client
        .wait_for_actions(&actions, &options, &mut |progress| {
            seen.push(progress.clone())
        })
        .await
        .unwrap();
    assert!(
        done.iter()
            .all(|action| action.status == ActionStatus::Success && action.progress == 100)
    );
    for action in &actions {
        let reports: Vec<&ActionProgress> = seen.iter().filter(|p| p.id == action.id).collect();
        assert_eq!(
            reports[0].status,
            ActionStatus::Running,
            "the first report is the state given"
        );
        assert_eq!(reports.last().unwrap().status, ActionStatus::Success);
        assert_eq!(reports.last().unwrap().command, action.command);
        assert!(
            reports
                .windows(2)
                .all(|pair| pair[0].progress <= pair[1].progress),
            "{reports:?}"
        );
        assert!(
            reports.windows(2).all(|pair| pair[0] != pair[1]),
            "only changes are reported"
        );
    }
    assert!(
        seen.iter()
            .any(|p| p.status == ActionStatus::Running && p.progress > 0 && p.progress < 100),
        "progress in between was reported: {seen:?}"
    );
    // Both actions were polled together: never more GET /actions than polls of one action.
    let polls = count(&sim, "GET /actions");
    assert!(polls >= 2, "{polls}");
    assert!(
        sim.request_log()
            .iter()
            .all(|record| record.route.as_deref() != Some("/actions/{id}"))
    );
    let server = client.get_server(created.server.id).await.unwrap();
    assert_eq!(server.status, ServerStatus::Running);
    crate::assert_answers_match_openapi(&sim);
}

#[tokio::test]
async fn a_failed_action_is_an_error_naming_it() {
    let sim = start_sim(0.001).await;
    let client = client_for(&sim.api_url());
    let created = client
        .create_server(&CreateServerRequest::new("fails-1", "cx23", "debian-12"))
        .await
        .unwrap();
    let options = WaitOptions {
        schedule: PollSchedule::default().scaled(0.001),
        timeout: Duration::from_secs(30),
    };
    client
        .wait_for_actions(&created.all_actions(), &options, &mut |_| {})
        .await
        .unwrap();
    sim.inject(Fault::FailAction {
        command: "create_image".into(),
        code: "image_creation_failed".into(),
        message: "the disk could not be read".into(),
    });
    let snapshot = client
        .create_image(created.server.id, &CreateImageRequest::default())
        .await
        .unwrap();
    let mut last = None;
    let error = client
        .wait_for_action(&snapshot.action, &options, &mut |progress| {
            last = Some(progress.clone())
        })
        .await
        .unwrap_err();
    let Error::ActionFailed {
        id,
        command,
        code,
        message,
    } = &error
    else {
        panic!("{error:?}")
    };
    assert_eq!(*id, snapshot.action.id);
    assert_eq!(command, "create_image");
    assert_eq!(code, "image_creation_failed");
    assert_eq!(message, "the disk could not be read");
    assert_eq!(
        last.map(|p| p.status),
        Some(ActionStatus::Error),
        "the failure was reported too"
    );
    assert_eq!(
        error.to_string(),
        format!(
            "action {} (create_image) failed: image_creation_failed: the disk could not be read",
            snapshot.action.id
        )
    );
    crate::assert_answers_match_openapi(&sim);
}

#[tokio::test]
async fn the_deadline_ends_the_wait_naming_what_still_runs() {
    let sim = start_sim(1.0).await;
    let client = client_for(&sim.api_url());
    let created = client
        .create_server(&CreateServerRequest::new("slow-1", "cx23", "debian-12"))
        .await
        .unwrap();
    let options = WaitOptions {
        schedule: PollSchedule::default(),
        timeout: Duration::from_millis(600),
    };
    let started = std::time::Instant::now();
    let error = client
        .wait_for_actions(&created.all_actions(), &options, &mut |_| {})
        .await
        .unwrap_err();
    let elapsed = started.elapsed();
    let Error::WaitTimeout { pending, .. } = &error else {
        panic!("{error:?}")
    };
    assert_eq!(pending.len(), 2, "{error}");
    assert!(error.to_string().contains("create_server"), "{error}");
    assert!(
        elapsed >= Duration::from_millis(600) && elapsed < Duration::from_secs(3),
        "{elapsed:?}"
    );
    // 250 + 350 (cut at the deadline): two polls, then the deadline.
    assert_eq!(count(&sim, "GET /actions"), 2);
    crate::assert_answers_match_openapi(&sim);
}

#[tokio::test]
async fn fewer_requests_per_snapshot_than_a_constant_500ms_poll() {
    // The simulator's default durations (create 12 s + start 16 s, shutdown 6 s, snapshot 60 s
    // plus 20 s per used GB) at 1/100 of real time; both schedules scaled alike.
    let scale = 0.01;
    let sim = start_sim(scale).await;
    let client = client_for(&sim.api_url());
    let [(_, waiter), (_, constant)] = snapshot_flow::schedules(scale);
    let ours = snapshot_flow::snapshot_run(&client, "bench-ours", waiter, scale).await;
    let constant = snapshot_flow::snapshot_run(&client, "bench-constant", constant, scale).await;
    eprintln!(
        "API requests per built snapshot: waiter {} in {:.1} s, constant 500 ms poll {} in {:.1} s \
         (simulated seconds)",
        ours.requests, ours.simulated_seconds, constant.requests, constant.simulated_seconds
    );
    let state = sim.state();
    assert_eq!(state.snapshots().len(), 2);
    assert!(
        state
            .snapshots()
            .iter()
            .all(|image| image.status == caph_sim::hcloud::ImageStatus::Available)
    );
    assert!(
        ours.requests * 2 < constant.requests,
        "waiter {ours:?} vs constant {constant:?}"
    );
    crate::assert_answers_match_openapi(&sim);
}
