//! `--replace`'s name swap (`backend::commit::commit_name`) against the simulator, with what
//! Cluster API Provider Hetzner's lookup finds computed from the simulator's state after every
//! request it serves: the one window in which CAPH does not find exactly one image is measured
//! in requests and in simulated time.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use caph_core::Arch;
use caph_hcloud::backend::commit::{CommitError, CommitEvent, NameCommit, commit_name};
use caph_hcloud::client::{ImageId, Labels};
use caph_sim::hcloud::{Fault, HcloudSim, HcloudSimConfig, SimState, SnapshotSeed, TimeMode};

use crate::{TOKEN, client_for};

const NAME: &str = "node-v1";

/// One request as served, with what CAPH would find right after it.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    status: Option<u16>,
    /// Simulated time when it was answered.
    at: Duration,
    /// The images CAPH's lookup for NAME on x86 finds in the state after it.
    caph_finds: Vec<u64>,
}

/// What CAPH's `getServerImage` finds for `name` on `arch`: images labelled
/// `caph-image-name==name` plus images named `name`, of that architecture, in any status.
fn caph_view(state: &SimState, name: &str, arch: &str) -> Vec<u64> {
    state
        .images
        .iter()
        .filter(|image| image.architecture == arch)
        .filter(|image| {
            image.labels.get("caph-image-name").map(String::as_str) == Some(name)
                || image.name.as_deref() == Some(name)
        })
        .map(|image| image.id)
        .collect()
}

/// A simulator in real time whose every answered request is recorded with CAPH's view after it.
async fn observed_sim() -> (Arc<HcloudSim>, Arc<Mutex<Vec<Seen>>>) {
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let cell: Arc<OnceLock<Weak<HcloudSim>>> = Arc::default();
    let observer = {
        let (seen, cell) = (seen.clone(), cell.clone());
        Arc::new(move |record: &caph_sim::hcloud::RequestRecord| {
            // The observer runs once the request is served, outside the simulator's lock.
            let Some(sim) = cell.get().and_then(Weak::upgrade) else {
                return;
            };
            let entry = Seen {
                method: record.method.clone(),
                path: record.path.clone(),
                status: record.status,
                at: sim.now(),
                caph_finds: caph_view(&sim.state(), NAME, "x86"),
            };
            seen.lock().unwrap().push(entry);
        })
    };
    let sim = Arc::new(
        HcloudSim::start(HcloudSimConfig {
            token: TOKEN.into(),
            time: TimeMode::Scaled(1.0),
            on_request: Some(observer),
            ..Default::default()
        })
        .await
        .unwrap(),
    );
    cell.set(Arc::downgrade(&sim)).unwrap();
    (sim, seen)
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(key, value)| (key.to_string(), value.to_string()))
        .collect()
}

/// The old snapshot that has the name, one for arm that must be left alone, and the new one
/// with the build's pending label, as a build leaves it before the commit.
fn seed(sim: &HcloudSim, old_protected: bool) -> (u64, u64, u64) {
    let old = sim.add_snapshot(SnapshotSeed {
        labels: labels(&[("caph-image-name", NAME)]),
        delete_protected: old_protected,
        ..Default::default()
    });
    let arm = sim.add_snapshot(SnapshotSeed {
        labels: labels(&[("caph-image-name", NAME)]),
        architecture: "arm".into(),
        ..Default::default()
    });
    let new = sim.add_snapshot(SnapshotSeed {
        labels: labels(&[("caph-image-pending-name", NAME)]),
        ..Default::default()
    });
    (old, arm, new)
}

fn commit(new: u64, replace: bool) -> NameCommit<'static> {
    NameCommit {
        name: NAME,
        arch: Arch::X86,
        image: ImageId(new as i64),
        labels: Labels::from([("caph-image-name".to_string(), NAME.to_string())]),
        replace,
    }
}

#[tokio::test]
async fn replace_leaves_one_request_in_which_caph_finds_two_and_none_in_which_it_finds_none() {
    let (sim, seen) = observed_sim().await;
    let (old, arm, new) = seed(&sim, false);
    let client = client_for(&sim.api_url());
    let mut events = Vec::new();
    commit_name(&client, &commit(new, true), &mut |event| events.push(event))
        .await
        .unwrap();
    assert_eq!(
        events,
        [
            CommitEvent::Named(ImageId(new as i64)),
            CommitEvent::Replaced(ImageId(old as i64)),
            CommitEvent::Committed(ImageId(new as i64)),
        ]
    );

    let seen = seen.lock().unwrap().clone();
    let steps: Vec<String> = seen
        .iter()
        .map(|s| format!("{} {} -> {:?}", s.method, s.path, s.caph_finds))
        .collect();
    // CAPH never finds nothing, and finds the new image alone at the end.
    assert!(seen.iter().all(|s| !s.caph_finds.is_empty()), "{steps:#?}");
    assert_eq!(seen.last().unwrap().caph_finds, [new], "{steps:#?}");
    // It finds two after exactly one request, the label PUT, and the very next request is the
    // DELETE that ends the window.
    let window: Vec<usize> = (0..seen.len())
        .filter(|&index| seen[index].caph_finds.len() != 1)
        .collect();
    assert_eq!(window.len(), 1, "{steps:#?}");
    let opened = &seen[window[0]];
    let closed = &seen[window[0] + 1];
    assert_eq!(
        (opened.method.as_str(), opened.path.as_str()),
        ("PUT", format!("/v1/images/{new}").as_str())
    );
    assert_eq!(
        (closed.method.as_str(), closed.path.as_str(), closed.status),
        ("DELETE", format!("/v1/images/{old}").as_str(), Some(204))
    );
    assert_eq!(closed.caph_finds, [new]);
    let window_time = closed.at - opened.at;
    eprintln!(
        "replace window: CAPH finds 2 images from the PUT's answer to the DELETE's, 1 request, \
         {:.3} ms of simulated time (real time here; loopback)",
        window_time.as_secs_f64() * 1e3
    );
    // The arm snapshot of the same name is untouched.
    let state = sim.state();
    assert_eq!(caph_view(&state, NAME, "arm"), [arm]);
    assert!(state.images.iter().all(|image| image.id != old));
}

#[tokio::test]
async fn a_failed_delete_leaves_both_found_until_the_cleanup_deletes_the_new_one() {
    let (sim, seen) = observed_sim().await;
    let (old, _arm, new) = seed(&sim, false);
    sim.inject(Fault::fail("DELETE /images/{id}", 1, 403, "forbidden"));
    let client = client_for(&sim.api_url());
    let mut events = Vec::new();
    let error = commit_name(&client, &commit(new, true), &mut |event| events.push(event))
        .await
        .unwrap_err();
    assert!(
        matches!(&error, CommitError::Api { what, .. } if what.contains(&format!("replaced snapshot {old}"))),
        "{error}"
    );
    // Not committed: the build's ledger still holds the new snapshot, and its cleanup (as
    // `ledger::clean` does it) deletes it, after which CAPH finds the old one alone.
    assert_eq!(events, [CommitEvent::Named(ImageId(new as i64))]);
    client.delete_image(ImageId(new as i64)).await.unwrap();
    let seen = seen.lock().unwrap().clone();
    assert!(seen.iter().all(|s| !s.caph_finds.is_empty()));
    assert_eq!(seen.last().unwrap().caph_finds, [old]);
}

#[tokio::test]
async fn a_protected_old_snapshot_is_refused_before_anything_changes() {
    let (sim, seen) = observed_sim().await;
    let (old, _arm, new) = seed(&sim, true);
    let client = client_for(&sim.api_url());
    let error = commit_name(&client, &commit(new, true), &mut |_| {})
        .await
        .unwrap_err();
    assert!(
        matches!(error, CommitError::Protected { image, .. } if image == ImageId(old as i64)),
        "{error}"
    );
    let seen = seen.lock().unwrap().clone();
    assert!(seen.iter().all(|s| s.method == "GET"), "{seen:#?}");
    assert!(seen.iter().all(|s| s.caph_finds == [old]));
}

#[tokio::test]
async fn without_replace_a_taken_name_is_refused_and_nothing_changes() {
    let (sim, seen) = observed_sim().await;
    let (old, _arm, new) = seed(&sim, false);
    let client = client_for(&sim.api_url());
    let error = commit_name(&client, &commit(new, false), &mut |_| {})
        .await
        .unwrap_err();
    assert!(
        error.to_string().contains("rerun with --replace")
            && error.to_string().contains(&old.to_string()),
        "{error}"
    );
    let seen = seen.lock().unwrap().clone();
    assert!(
        seen.iter()
            .all(|s| s.method == "GET" && s.caph_finds == [old])
    );
}
