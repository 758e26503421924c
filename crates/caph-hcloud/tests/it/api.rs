//! The client against the simulator: calls, pagination, retries, rate limiting, secrecy.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use caph_hcloud::client::{
    Architecture, Client, ClientConfig, CreateImageRequest, CreateServerRequest,
    CreateSshKeyRequest, Error, ErrorCode, IdOrName, ImageStatus, ImageType, LabelSelector,
    ListImagesParams, ListServersParams, ListSshKeysParams, ServerStatus, Token, TransportKind,
    UpdateImageRequest, WaitOptions,
};
use caph_sim::hcloud::{Fault, HcloudSimConfig, TimeMode};

use crate::{TOKEN, bare_status_proxy, client_for, count, public_key, start_sim, start_sim_with};

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn fast_wait(scale: f64) -> WaitOptions {
    WaitOptions {
        schedule: caph_hcloud::client::PollSchedule::default().scaled(scale),
        timeout: Duration::from_secs(60),
    }
}

#[tokio::test]
async fn pagination_follows_next_page_across_three_pages() {
    let sim = start_sim(0.001).await;
    let client = client_for(&sim.api_url());
    for seed in 0..101 {
        let request = CreateSshKeyRequest {
            name: format!("key-{seed:03}"),
            public_key: public_key(seed),
            labels: labels(&[("caph-test", "pages")]),
        };
        client.create_ssh_key(&request).await.unwrap();
    }
    let before = count(&sim, "GET /ssh_keys");
    let selector = LabelSelector::new().eq("caph-test", "pages").unwrap();
    let params = ListSshKeysParams {
        label_selector: Some(selector),
        ..Default::default()
    };
    let keys = client.list_ssh_keys(&params).await.unwrap();
    assert_eq!(keys.len(), 101);
    let mut names: Vec<&str> = keys.iter().map(|key| key.name.as_str()).collect();
    names.sort();
    names.dedup();
    assert_eq!(names.len(), 101, "no entry twice");
    // 50 + 50 + 1: three pages, three requests.
    assert_eq!(count(&sim, "GET /ssh_keys") - before, 3);
    crate::assert_answers_match_openapi(&sim);
}

#[tokio::test]
async fn every_call_round_trips() {
    let sim = start_sim(0.001).await;
    let client = client_for(&sim.api_url());
    let wait = fast_wait(0.001);

    let locations = client.list_locations(None).await.unwrap();
    assert!(locations.iter().any(|location| location.name == "fsn1"));
    assert_eq!(client.list_locations(Some("hel1")).await.unwrap().len(), 1);
    let types = client.list_server_types(Some("cx23")).await.unwrap();
    assert_eq!(types.len(), 1);
    assert_eq!(types[0].architecture, Architecture::X86);
    assert!(types[0].is_available_in("fsn1"));

    let key = client
        .create_ssh_key(&CreateSshKeyRequest {
            name: "build-key".into(),
            public_key: public_key(1),
            labels: labels(&[("caph-image-build", "b1")]),
        })
        .await
        .unwrap();
    let by_fingerprint = ListSshKeysParams {
        fingerprint: Some(key.fingerprint.clone()),
        ..Default::default()
    };
    assert_eq!(
        client.list_ssh_keys(&by_fingerprint).await.unwrap(),
        vec![key.clone()]
    );
    assert_eq!(client.get_ssh_key(key.id).await.unwrap(), key);

    let mut request = CreateServerRequest::new("build-1", "cx23", "debian-12");
    request.location = Some("fsn1".into());
    request.ssh_keys = vec![IdOrName::from(key.id)];
    request.labels = labels(&[("caph-image-build", "b1")]);
    let created = client.create_server(&request).await.unwrap();
    assert_eq!(created.server.status, ServerStatus::Initializing);
    assert!(created.root_password.is_none(), "keys were given");
    client
        .wait_for_actions(&created.all_actions(), &wait, &mut |_| {})
        .await
        .unwrap();
    let server = client.get_server(created.server.id).await.unwrap();
    assert_eq!(server.status, ServerStatus::Running);
    assert!(server.public_net.ipv4.is_some());

    let selector = LabelSelector::new().eq("caph-image-build", "b1").unwrap();
    let listed = client
        .list_servers(&ListServersParams {
            label_selector: Some(selector.clone()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(listed.len(), 1);
    let by_status = ListServersParams {
        status: vec![ServerStatus::Off],
        ..Default::default()
    };
    assert!(client.list_servers(&by_status).await.unwrap().is_empty());

    let rescue = client.enable_rescue(server.id, &[key.id]).await.unwrap();
    client
        .wait_for_action(&rescue.action, &wait, &mut |_| {})
        .await
        .unwrap();
    let reset = client.reset_server(server.id).await.unwrap();
    client
        .wait_for_action(&reset, &wait, &mut |_| {})
        .await
        .unwrap();
    let off = client.poweroff_server(server.id).await.unwrap();
    client
        .wait_for_action(&off, &wait, &mut |_| {})
        .await
        .unwrap();
    client
        .wait_for_server_status(server.id, &ServerStatus::Off, &wait, &mut |_| {})
        .await
        .unwrap();
    let on = client.poweron_server(server.id).await.unwrap();
    client
        .wait_for_action(&on, &wait, &mut |_| {})
        .await
        .unwrap();
    let shutdown = client.shutdown_server(server.id).await.unwrap();
    assert_eq!(shutdown.command, "shutdown_server");
    client
        .wait_for_server_status(server.id, &ServerStatus::Off, &wait, &mut |_| {})
        .await
        .unwrap();

    let snapshot = client
        .create_image(
            server.id,
            &CreateImageRequest {
                description: Some("k8s node".into()),
                labels: labels(&[("caph-image-name", "k8s-1.33"), ("caph-image-build", "b1")]),
            },
        )
        .await
        .unwrap();
    assert_eq!(snapshot.image.status, ImageStatus::Creating);
    assert_eq!(snapshot.image.image_size, None);
    client
        .wait_for_action(&snapshot.action, &wait, &mut |_| {})
        .await
        .unwrap();
    let image = client.get_image(snapshot.image.id).await.unwrap();
    assert_eq!(image.status, ImageStatus::Available);
    assert_eq!(
        image.created_from.as_ref().map(|from| from.id),
        Some(server.id.0)
    );

    let find = ListImagesParams {
        kind: vec![ImageType::Snapshot],
        status: vec![ImageStatus::Available],
        architecture: Some(Architecture::X86),
        label_selector: Some(
            LabelSelector::new()
                .eq("caph-image-name", "k8s-1.33")
                .unwrap(),
        ),
        include_deprecated: Some(true),
        sort: vec!["created:desc".into()],
        ..Default::default()
    };
    assert_eq!(client.list_images(&find).await.unwrap().len(), 1);
    let arm = ListImagesParams {
        architecture: Some(Architecture::Arm),
        ..find.clone()
    };
    assert!(client.list_images(&arm).await.unwrap().is_empty());
    let system = ListImagesParams {
        name: Some("debian-12".into()),
        ..Default::default()
    };
    assert!(!client.list_images(&system).await.unwrap().is_empty());

    let updated = client
        .update_image(
            image.id,
            &UpdateImageRequest {
                description: Some("renamed".into()),
                labels: Some(labels(&[("caph-image-name", "k8s-1.33")])),
            },
        )
        .await
        .unwrap();
    assert_eq!(updated.description.as_deref(), Some("renamed"));
    assert!(
        !updated.labels.contains_key("caph-image-build"),
        "labels are replaced as a whole"
    );

    let delete = client.delete_server(server.id).await.unwrap();
    assert_eq!(delete.command, "delete_server");
    client
        .wait_for_action(&delete, &wait, &mut |_| {})
        .await
        .unwrap();
    assert!(
        client
            .get_server(server.id)
            .await
            .unwrap_err()
            .is_not_found()
    );
    client.delete_image(image.id).await.unwrap();
    client.delete_ssh_key(key.id).await.unwrap();
    let state = sim.state();
    assert!(state.servers.is_empty() && state.ssh_keys.is_empty() && state.snapshots().is_empty());
    crate::assert_answers_match_openapi(&sim);
}

/// Labels that break the rules never reach the API.
#[tokio::test]
async fn invalid_labels_are_refused_before_sending() {
    let sim = start_sim(0.001).await;
    let client = client_for(&sim.api_url());
    let mut request = CreateServerRequest::new("bad-labels", "cx23", "debian-12");
    request.labels = labels(&[("caph-image-name", "has space")]);
    let error = client.create_server(&request).await.unwrap_err();
    assert!(matches!(error, Error::Label(_)), "{error}");
    assert!(error.to_string().contains("has space"), "{error}");
    assert!(sim.request_log().is_empty());
}

const RETRYABLE: [(u16, &str); 4] = [
    (409, "conflict"),
    (429, "rate_limit_exceeded"),
    (502, "bad_gateway"),
    (504, "timeout"),
];

#[tokio::test]
async fn retryable_codes_are_retried_until_success() {
    let sim = start_sim(0.001).await;
    let client = client_for(&sim.api_url());
    for (status, code) in RETRYABLE {
        let before = count(&sim, "GET /locations");
        // Four failures in a row, then the fifth and last attempt succeeds.
        for _ in 0..4 {
            sim.inject(Fault::fail("GET /locations", 1, status, code));
        }
        let locations = client.list_locations(None).await;
        assert!(locations.is_ok(), "{code}: {locations:?}");
        assert_eq!(count(&sim, "GET /locations") - before, 5, "{code}");
    }
    crate::assert_answers_match_openapi(&sim);
}

#[tokio::test]
async fn retries_are_bounded_and_report_the_last_error() {
    let sim = start_sim(0.001).await;
    let client = client_for(&sim.api_url());
    for (status, code) in RETRYABLE {
        let before = count(&sim, "GET /locations");
        for _ in 0..6 {
            sim.inject(Fault::fail("GET /locations", 1, status, code));
        }
        let error = client.list_locations(None).await.unwrap_err();
        assert_eq!(error.code(), Some(&ErrorCode::from_wire(code)), "{error}");
        let Error::Api(api) = &error else {
            panic!("{error:?}")
        };
        assert_eq!((api.status, api.attempts), (status, 5), "{error}");
        assert!(api.correlation_id.is_some(), "{error}");
        let text = error.to_string();
        assert!(
            text.contains("GET /locations")
                && text.contains(code)
                && text.contains("X-Correlation-Id"),
            "{text}"
        );
        assert_eq!(count(&sim, "GET /locations") - before, 5, "{code}");
        // The sixth fault is still pending: no attempt beyond the bound.
        assert_eq!(sim.pending_faults().len(), 1, "{code}");
        let _ = client.list_locations(None).await; // consume it
    }
    crate::assert_answers_match_openapi(&sim);
}

#[tokio::test]
async fn final_codes_are_not_retried() {
    let sim = start_sim(0.001).await;
    let client = client_for(&sim.api_url());
    let final_codes = [
        (400, "invalid_input"),
        (400, "json_error"),
        (401, "unauthorized"),
        (403, "forbidden"),
        (403, "token_readonly"),
        (403, "resource_limit_exceeded"),
        (404, "not_found"),
        (409, "uniqueness_error"),
        (423, "protected"),
        (500, "server_error"),
        (503, "unavailable"),
        (503, "maintenance"),
        (412, "resource_unavailable"),
        (412, "placement_error"),
    ];
    for (status, code) in final_codes {
        let before = count(&sim, "GET /locations");
        sim.inject(Fault::fail("GET /locations", 1, status, code));
        let error = client.list_locations(None).await.unwrap_err();
        assert_eq!(error.code(), Some(&ErrorCode::from_wire(code)), "{error}");
        assert_eq!(
            count(&sim, "GET /locations") - before,
            1,
            "{code} was retried"
        );
    }
    crate::assert_answers_match_openapi(&sim);
}

#[tokio::test]
async fn locked_is_retried_for_the_call_that_hit_it() {
    let sim = start_sim(0.001).await;
    let client = client_for(&sim.api_url());
    let created = client
        .create_server(&CreateServerRequest::new("locked-1", "cx23", "debian-12"))
        .await
        .unwrap();
    client
        .wait_for_actions(&created.all_actions(), &fast_wait(0.001), &mut |_| {})
        .await
        .unwrap();
    sim.inject(Fault::fail(
        "POST /servers/{id}/actions/poweroff",
        1,
        423,
        "locked",
    ));
    sim.inject(Fault::fail(
        "POST /servers/{id}/actions/poweroff",
        1,
        423,
        "locked",
    ));
    client.poweroff_server(created.server.id).await.unwrap();
    assert_eq!(count(&sim, "POST /servers/{id}/actions/poweroff"), 3);
    crate::assert_answers_match_openapi(&sim);
    // A real lock from the simulator: an action on a server while create_server runs (12 s
    // scaled to 2.4 s), longer than the test policy's lock waits (2 ms doubling): the call is
    // repeated up to the lock bound and then the lock is reported.
    let sim = start_sim(0.2).await;
    let client = client_for(&sim.api_url());
    let created = client
        .create_server(&CreateServerRequest::new("locked-2", "cx23", "debian-12"))
        .await
        .unwrap();
    let error = client.poweron_server(created.server.id).await.unwrap_err();
    assert_eq!(error.code(), Some(&ErrorCode::Locked), "{error}");
    let Error::Api(api) = &error else {
        panic!("{error:?}")
    };
    assert_eq!(api.attempts, caph_hcloud::client::DEFAULT_LOCKED_ATTEMPTS);
    assert_eq!(
        count(&sim, "POST /servers/{id}/actions/poweron"),
        caph_hcloud::client::DEFAULT_LOCKED_ATTEMPTS as usize
    );
    crate::assert_answers_match_openapi(&sim);
}

#[tokio::test]
async fn dropped_connections_are_retried_for_reads() {
    let sim = start_sim(0.001).await;
    let client = client_for(&sim.api_url());
    sim.inject(Fault::DropConnection {
        route: "GET /server_types".into(),
        nth: 1,
    });
    sim.inject(Fault::DropResponse {
        route: "GET /server_types".into(),
        nth: 1,
    });
    let types = client.list_server_types(None).await.unwrap();
    assert!(!types.is_empty());
    assert_eq!(client.requests_sent(), 3);
    crate::assert_answers_match_openapi(&sim);
}

#[tokio::test]
async fn bare_gateway_answers_are_retried() {
    let sim = start_sim(0.001).await;
    for status in [502, 504] {
        let proxy = bare_status_proxy(sim.local_addr(), status, 2).await;
        let client = client_for(&format!("http://{proxy}/v1"));
        let before = count(&sim, "GET /locations");
        let locations = client.list_locations(None).await.unwrap();
        assert!(!locations.is_empty());
        assert_eq!(client.requests_sent(), 3, "{status}");
        assert_eq!(count(&sim, "GET /locations") - before, 1);
        // Past the bound, the bare answer is the error, with its body as the message.
        let proxy = bare_status_proxy(sim.local_addr(), status, 10).await;
        let client = client_for(&format!("http://{proxy}/v1"));
        let error = client.list_locations(None).await.unwrap_err();
        let Error::Api(api) = &error else {
            panic!("{error:?}")
        };
        assert_eq!(
            (api.status, api.code.clone(), api.attempts),
            (status, None, 5)
        );
        assert!(api.message.contains("Gateway trouble"), "{error}");
    }
    crate::assert_answers_match_openapi(&sim);
}

#[tokio::test]
async fn connection_errors_are_retried_and_bounded() {
    // A port nothing listens on: bind one, note it, close it.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    drop(listener);
    let client = client_for(&format!("http://{address}/v1"));
    let started = Instant::now();
    let error = client.list_locations(None).await.unwrap_err();
    assert!(
        matches!(
            error,
            Error::Transport {
                kind: TransportKind::Connect,
                attempts: 5,
                ..
            }
        ),
        "{error:?}"
    );
    assert_eq!(client.requests_sent(), 5);
    // Four backoffs of at most 1, 2, 4, 8 ms (test policy); no sleep after the last attempt.
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(!error.may_have_been_processed());
}

#[tokio::test]
async fn creates_are_not_repeated_when_the_first_may_have_worked() {
    let sim = start_sim(0.001).await;
    let client = client_for(&sim.api_url());
    // The server is made but the answer is lost: the client must not make a second one.
    sim.inject(Fault::DropResponse {
        route: "POST /servers".into(),
        nth: 1,
    });
    let error = client
        .create_server(&CreateServerRequest::new("lost-1", "cx23", "debian-12"))
        .await
        .unwrap_err();
    assert!(error.may_have_been_processed(), "{error:?}");
    assert_eq!(count(&sim, "POST /servers"), 1);
    assert_eq!(sim.state().servers.len(), 1);
    // A gateway error on a create is not repeated either.
    sim.inject(Fault::fail("POST /servers", 1, 502, "bad_gateway"));
    let error = client
        .create_server(&CreateServerRequest::new("lost-2", "cx23", "debian-12"))
        .await
        .unwrap_err();
    assert!(error.may_have_been_processed(), "{error:?}");
    assert_eq!(count(&sim, "POST /servers"), 2);
    // A refusal proves nothing was made: that is repeated.
    sim.inject(Fault::fail("POST /servers", 1, 409, "conflict"));
    client
        .create_server(&CreateServerRequest::new("lost-3", "cx23", "debian-12"))
        .await
        .unwrap();
    assert_eq!(count(&sim, "POST /servers"), 4);
    assert_eq!(sim.state().servers.len(), 2);
    crate::assert_answers_match_openapi(&sim);
}

#[tokio::test]
async fn ssh_key_create_recovers_a_lost_answer_without_a_duplicate() {
    let sim = start_sim(0.001).await;
    let client = client_for(&sim.api_url());
    sim.inject(Fault::DropResponse {
        route: "POST /ssh_keys".into(),
        nth: 1,
    });
    let request = CreateSshKeyRequest {
        name: "recovered".into(),
        public_key: public_key(9),
        labels: BTreeMap::new(),
    };
    let key = client.create_ssh_key(&request).await.unwrap();
    assert_eq!(key.name, "recovered");
    assert_eq!(sim.state().ssh_keys.len(), 1);
    assert_eq!(count(&sim, "POST /ssh_keys"), 2);
    // Without a lost answer, a taken name stays an error.
    let again = client.create_ssh_key(&request).await.unwrap_err();
    assert_eq!(again.code(), Some(&ErrorCode::UniquenessError));
    crate::assert_answers_match_openapi(&sim);
}

#[tokio::test]
async fn pacing_keeps_concurrent_clones_under_the_rate_limit() {
    // A bucket of 10 refilled at 4 per second, shared by three builds making 30 requests.
    let sim = start_sim_with(HcloudSimConfig {
        time: TimeMode::Scaled(0.001),
        rate_limit_capacity: 10,
        rate_limit_refill_per_second: 4.0,
        ..Default::default()
    })
    .await;
    let client = client_for(&sim.api_url());
    let started = Instant::now();
    let mut builds = Vec::new();
    for _ in 0..3 {
        let clone = client.clone();
        builds.push(tokio::spawn(async move {
            for _ in 0..10 {
                clone.list_locations(None).await?;
            }
            Ok::<_, Error>(())
        }));
    }
    for build in builds {
        build.await.unwrap().unwrap();
    }
    let elapsed = started.elapsed();
    let statuses: Vec<Option<u16>> = sim
        .request_log()
        .iter()
        .map(|record| record.status)
        .collect();
    assert!(
        !statuses.contains(&Some(429)),
        "hit the rate limit: {statuses:?}"
    );
    assert_eq!(client.requests_sent(), 30, "no retries were needed");
    // 30 requests from a bucket of 10 at 4/s cannot take less than 5 s without a 429; the
    // pacing gets close to that bound rather than crawling.
    eprintln!(
        "30 requests paced in {elapsed:?}; budget now {:?}",
        client.budget().estimate(Instant::now())
    );
    assert!(
        elapsed >= Duration::from_secs(4) && elapsed < Duration::from_secs(12),
        "{elapsed:?}"
    );
    crate::assert_answers_match_openapi(&sim);
}

#[tokio::test]
async fn a_429_is_retried_after_the_bucket_refills() {
    // Another client of the project has emptied the bucket (3 tokens, 2 per second).
    let sim = start_sim_with(HcloudSimConfig {
        time: TimeMode::Scaled(0.001),
        rate_limit_capacity: 3,
        rate_limit_refill_per_second: 2.0,
        ..Default::default()
    })
    .await;
    let mut config = ClientConfig::new(sim.api_url(), Token::new(TOKEN));
    config.retry = caph_hcloud::client::RetryPolicy::never();
    let other = Client::new(config).unwrap();
    // Three at once: the other client has no answer to pace by yet.
    let (a, b, c) = tokio::join!(
        other.list_locations(None),
        other.list_locations(None),
        other.list_locations(None)
    );
    for answer in [a, b, c] {
        answer.unwrap();
    }
    let client = client_for(&sim.api_url());
    let started = Instant::now();
    client.list_locations(None).await.unwrap();
    let elapsed = started.elapsed();
    let statuses: Vec<Option<u16>> = sim
        .request_log()
        .iter()
        .map(|record| record.status)
        .collect();
    assert_eq!(
        statuses,
        [Some(200), Some(200), Some(200), Some(429), Some(200)]
    );
    assert_eq!(client.requests_sent(), 2);
    // The retry waited for the refill the headers announced, not just the 1 ms test backoff.
    assert!(elapsed >= Duration::from_millis(400), "{elapsed:?}");
    crate::assert_answers_match_openapi(&sim);
}

#[tokio::test]
async fn the_token_never_appears_in_errors_or_debug_output() {
    let secret = "caph-secret-token-b7e3";
    // The simulator accepts only TOKEN: a client with `secret` is refused (401), and one with
    // TOKEN produces the other errors. Neither token may show up anywhere.
    let sim = start_sim(0.001).await;
    let mut config = ClientConfig::new(sim.api_url(), Token::new(secret));
    config.retry = crate::fast_retry();
    let wrong = Client::new(config.clone()).unwrap();
    let right = client_for(&sim.api_url());
    let mut texts = vec![
        format!("{config:?}"),
        format!("{wrong:?}"),
        format!("{right:?}"),
    ];
    let mut errors = Vec::new();
    errors.push(wrong.list_locations(None).await.unwrap_err());
    errors.push(
        wrong
            .get_server(caph_hcloud::client::ServerId(1))
            .await
            .unwrap_err(),
    );
    errors.push(
        right
            .get_server(caph_hcloud::client::ServerId(999))
            .await
            .unwrap_err(),
    );
    errors.push(
        right
            .create_server(&CreateServerRequest::new("x", "no-such-type", "debian-12"))
            .await
            .unwrap_err(),
    );
    sim.inject(Fault::FailAction {
        command: "create_server".into(),
        code: "failed".into(),
        message: "boom".into(),
    });
    let created = right
        .create_server(&CreateServerRequest::new("y", "cx23", "debian-12"))
        .await
        .unwrap();
    errors.push(
        right
            .wait_for_actions(&created.all_actions(), &fast_wait(0.001), &mut |_| {})
            .await
            .unwrap_err(),
    );
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut unreachable = ClientConfig::new(format!("http://{closed}/v1"), Token::new(secret));
    unreachable.retry = caph_hcloud::client::RetryPolicy::never();
    errors.push(
        Client::new(unreachable)
            .unwrap()
            .list_locations(None)
            .await
            .unwrap_err(),
    );
    assert_eq!(errors[0].code(), Some(&ErrorCode::Unauthorized));
    for error in &errors {
        texts.push(error.to_string());
        texts.push(format!("{error:?}"));
        texts.push(format!("{error:#?}"));
        let mut source = std::error::Error::source(error);
        while let Some(inner) = source {
            texts.push(inner.to_string());
            texts.push(format!("{inner:?}"));
            source = inner.source();
        }
    }
    for text in &texts {
        assert!(!text.contains(secret), "token leaked: {text}");
        assert!(!text.contains(TOKEN), "token leaked: {text}");
    }
    crate::assert_answers_match_openapi(&sim);
}

#[tokio::test]
async fn slow_answers_time_out_and_reads_are_retried() {
    let sim = start_sim(0.001).await;
    let mut config = ClientConfig::new(sim.api_url(), Token::new(TOKEN));
    config.retry = crate::fast_retry();
    config.request_timeout = Duration::from_millis(300);
    let client = Client::new(config).unwrap();
    sim.inject(Fault::Delay {
        route: "GET /locations".into(),
        nth: 1,
        delay: Duration::from_secs(2),
    });
    let started = Instant::now();
    let locations = client.list_locations(None).await.unwrap();
    assert!(!locations.is_empty());
    assert_eq!(client.requests_sent(), 2);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "the slow answer was not waited for"
    );
    // The same on a create is not repeated: the server may exist.
    sim.inject(Fault::Delay {
        route: "POST /servers".into(),
        nth: 1,
        delay: Duration::from_secs(2),
    });
    let error = client
        .create_server(&CreateServerRequest::new("slow", "cx23", "debian-12"))
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            Error::Transport {
                kind: TransportKind::MaybeSent,
                attempts: 1,
                ..
            }
        ),
        "{error:?}"
    );
    assert!(error.may_have_been_processed());
    crate::assert_answers_match_openapi(&sim);
}

#[tokio::test]
async fn an_exhausted_server_type_is_seen_and_not_retried() {
    let sim = start_sim(0.001).await;
    let client = client_for(&sim.api_url());
    sim.inject(Fault::ExhaustServerType {
        location: "fsn1".into(),
        server_type: "cx23".into(),
    });
    let cx23 = client
        .list_server_types(Some("cx23"))
        .await
        .unwrap()
        .remove(0);
    assert!(!cx23.is_available_in("fsn1"));
    assert!(cx23.is_available_in("nbg1"));
    let mut request = CreateServerRequest::new("full", "cx23", "debian-12");
    request.location = Some("fsn1".into());
    let error = client.create_server(&request).await.unwrap_err();
    assert_eq!(
        error.code(),
        Some(&ErrorCode::ResourceUnavailable),
        "{error}"
    );
    assert_eq!(count(&sim, "POST /servers"), 1);
    request.location = Some("nbg1".into());
    client.create_server(&request).await.unwrap();
    crate::assert_answers_match_openapi(&sim);
}

#[tokio::test]
async fn the_request_hook_sees_every_exchange() {
    let sim = start_sim(0.001).await;
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut config = ClientConfig::new(sim.api_url(), Token::new(TOKEN));
    config.retry = crate::fast_retry();
    let sink = std::sync::Arc::clone(&seen);
    config.on_request = Some(std::sync::Arc::new(
        move |record: &caph_hcloud::client::RequestRecord| {
            sink.lock().unwrap().push(record.clone());
        },
    ));
    let client = Client::new(config).unwrap();
    sim.inject(Fault::fail("GET /locations", 1, 503, "unavailable"));
    sim.inject(Fault::fail("GET /server_types", 1, 409, "conflict"));
    let _ = client.list_locations(None).await.unwrap_err();
    client.list_server_types(None).await.unwrap();
    let seen = seen.lock().unwrap().clone();
    let summary: Vec<(String, String, u32, Option<u16>)> = seen
        .into_iter()
        .map(|r| (r.method, r.path, r.attempt, r.status))
        .collect();
    assert_eq!(
        summary,
        [
            ("GET".to_string(), "/locations".to_string(), 1, Some(503)),
            ("GET".to_string(), "/server_types".to_string(), 1, Some(409)),
            ("GET".to_string(), "/server_types".to_string(), 2, Some(200)),
        ]
    );
    assert_eq!(client.requests_sent(), 3);
    crate::assert_answers_match_openapi(&sim);
}
