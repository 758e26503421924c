//! Benchmark `polling` (run by `cargo xtask bench`): API requests and wall time per snapshot
//! build, caph-hcloud's action waiter against a client that polls every 500 ms, on the same
//! simulated timings of caph-sim's Hetzner Cloud simulator.

#[path = "../../../xtask/src/bench/harness.rs"]
mod harness;
#[path = "../tests/support/snapshot_flow.rs"]
mod snapshot_flow;

use std::fmt::Write as _;

use caph_hcloud::client::PollSchedule;
use caph_hcloud::{Client, ClientConfig, Token};
use caph_sim::hcloud::{Durations, HcloudSim, HcloudSimConfig, ImageStatus, TimeMode};
use snapshot_flow::{CONSTANT_POLL, SnapshotRun};

/// Simulated time at 1/50 of real time: a snapshot build of about two simulated minutes takes
/// about 2.5 s. Both schedules are scaled alike, so the request counts are those of real time;
/// coarser scales start to blur the 500 ms poll (10 ms real here) into timer jitter.
const SCALE: f64 = 0.02;
const TOKEN: &str = "caph-bench-token";
const TITLE: &str = "API requests per snapshot: action waiter vs a constant 500 ms poll";

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let runs = harness::runs();
    let sim = HcloudSim::start(HcloudSimConfig {
        token: TOKEN.into(),
        time: TimeMode::Scaled(SCALE),
        ..Default::default()
    })
    .await
    .expect("the simulator starts");
    let client = Client::new(ClientConfig::new(sim.api_url(), Token::new(TOKEN)))
        .expect("the client is built");
    let schedules = snapshot_flow::schedules(SCALE);
    let mut measured: Vec<Vec<SnapshotRun>> = vec![Vec::new(); schedules.len()];
    // Round robin, so a burst of load from elsewhere hits both clients alike.
    for round in 1..=runs {
        for ((label, schedule), runs) in schedules.iter().zip(&mut measured) {
            let name = format!("bench-{label}-{round}");
            runs.push(snapshot_flow::snapshot_run(&client, &name, schedule.clone(), SCALE).await);
        }
        eprintln!("polling: round {round}/{runs} measured");
    }
    // A benchmark of a failed build is worthless: every run must have left its snapshot.
    let state = sim.state();
    let snapshots = state.snapshots();
    assert_eq!(snapshots.len(), runs * schedules.len(), "{snapshots:?}");
    assert!(
        snapshots
            .iter()
            .all(|image| image.status == ImageStatus::Available),
        "{snapshots:?}"
    );
    harness::emit(&render(runs, &measured)).expect("the section is written");
}

fn render(runs: usize, measured: &[Vec<SnapshotRun>]) -> String {
    let median_of = |runs: &[SnapshotRun], value: fn(&SnapshotRun) -> f64| {
        harness::median(&runs.iter().map(value).collect::<Vec<_>>())
    };
    let requests = |runs: &[SnapshotRun]| median_of(runs, |run| run.requests as f64);
    let seconds = |runs: &[SnapshotRun]| median_of(runs, |run| run.simulated_seconds);
    let durations = Durations::default();
    let waiter = PollSchedule::default();
    let mut text = String::new();
    let _ = writeln!(text, "## {TITLE}\n");
    let _ = writeln!(
        text,
        "- each run builds one snapshot the way the hcloud backend does (create server, wait \
         until running, shutdown, wait until off, create_image, wait until available, delete \
         server) against caph-sim's `HcloudSim` with its default durations (create {:?} + start \
         {:?}, shutdown {:?}, snapshot {:?} + {:?} per used GB)",
        durations.create,
        durations.start,
        durations.shutdown,
        durations.snapshot_base,
        durations.snapshot_per_gb
    );
    let _ = writeln!(
        text,
        "- simulated time at {SCALE} of real time (`TimeMode::Scaled({SCALE})`), both poll \
         schedules scaled alike; wall times are in simulated seconds, so they read as real \
         seconds against the real API"
    );
    let _ = writeln!(
        text,
        "- the waiter: first poll after {:?}, each wait {}x the one before, at most {:?}, the \
         actions of one step polled together with one `GET /actions`; the other client polls \
         every {CONSTANT_POLL:?} (the official Go client's interval)",
        waiter.first, waiter.growth, waiter.max
    );
    let _ = writeln!(
        text,
        "- API requests are every HTTP request the client sent for the build; median of {runs} \
         round-robin runs, one simulator and one client for all\n"
    );
    let _ = writeln!(
        text,
        "| client | API requests per snapshot | wall time per snapshot, simulated s | requests, every run |"
    );
    let _ = writeln!(text, "|---|---:|---:|---|");
    let labels = [
        "**caph-hcloud action waiter**".to_owned(),
        format!("constant {CONSTANT_POLL:?} poll"),
    ];
    for (label, runs) in labels.iter().zip(measured) {
        let every: Vec<String> = runs.iter().map(|run| run.requests.to_string()).collect();
        let _ = writeln!(
            text,
            "| {label} | {:.0} | {:.1} | {} |",
            requests(runs),
            seconds(runs),
            every.join(", ")
        );
    }
    let (ours, constant) = (&measured[0], &measured[1]);
    let _ = writeln!(
        text,
        "\n{} the waiter sends {:.1}x fewer API requests per snapshot than a constant {:?} \
         poll ({:.0} vs {:.0}) and takes {:.2}x its wall time ({:.1} vs {:.1} simulated s).",
        harness::RESULT_PREFIX,
        requests(constant) / requests(ours).max(1.0),
        CONSTANT_POLL,
        requests(ours),
        requests(constant),
        seconds(ours) / seconds(constant).max(f64::EPSILON),
        seconds(ours),
        seconds(constant)
    );
    text
}
