//! The Robot simulator over real HTTP: every endpoint, error body, array spelling, one-shot rescue, login block, rate limit and fault.

use std::sync::Arc;
use std::time::Duration;

use caph_sim::robot::{
    Fault, Power, RateLimit, RobotAddressOnly, RobotArgs, RobotServer, RobotSim, RobotSimConfig,
    Running, TimeMode, serve_from_args,
};
use serde_json::{Value, json};

const USER: &str = "robot-user";
const PASSWORD: &str = "robot-secret";

// Throwaway keys made with ssh-keygen for these tests; fingerprints from `ssh-keygen -l -E md5`.
const KEY_A: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAr1ZspAtHOOyQlIV96XLrxBy8y45ijODbauvH3xJdjK test";
const KEY_A_FP: &str = "da:b0:56:04:3f:f4:5a:65:bf:25:15:a9:7f:58:e8:83";
const KEY_B: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIN94dUkydxPTAqPkQzp3/xXj2duPlMBnj+YQYSJeQYwe second";
const KEY_B_FP: &str = "82:22:e2:aa:cc:8c:53:fa:59:ba:75:4d:76:95:a0:6e";
const KEY_RSA: &str = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQC8vt1xrpJN9dChDnNT5/9ZPS2zxD4mWQt6Wf+T1DVpOr1R54CKHY41xpTBseSqh83THpXr2R5d271/bXBeruJ4SkCY2yOLIVb5no9s3NE+kAnO9HzPHA/PiEECjJ0urzvaHcO8ESUhw5CC2W35ca3gVrIZn9XXEkezUctQXmdvnkTfkxdJlChCiNeiRIAhYB9aoC336QnDfIL5/w8IpJBIs1yAg2VovwyoEGV90yf9BsC6IZsg1t5WS7LOONVErI0ekvEW3/fBsCto1CNMbw/ftRQLlhTB85EyGnpayeygTxYsguLLySvYG0BcNhaEAhvq6xLK0FriiR2/MZVQ+ETl third";
const KEY_RSA_FP: &str = "bb:0d:75:7e:3e:d2:e7:ea:1d:8d:68:20:43:70:4e:de";

struct Harness {
    sim: RobotSim,
    machines: Arc<RobotAddressOnly>,
    http: reqwest::Client,
}

async fn start_with(configure: impl FnOnce(&mut RobotSimConfig)) -> Harness {
    let machines = Arc::new(RobotAddressOnly::default());
    let mut config = RobotSimConfig {
        user: USER.into(),
        password: PASSWORD.into(),
        time: TimeMode::Manual,
        servers: vec![
            RobotServer::new(321, "node-1"),
            RobotServer::new(322, "node-2"),
        ],
        machines: machines.clone(),
        ..Default::default()
    };
    configure(&mut config);
    let sim = RobotSim::start(config).await.expect("simulator starts");
    Harness {
        sim,
        machines,
        http: reqwest::Client::new(),
    }
}

async fn start() -> Harness {
    start_with(|_| {}).await
}

impl Harness {
    async fn call(&self, method: &str, path: &str, form: &[(&str, &str)]) -> (u16, Value) {
        self.call_as(USER, PASSWORD, method, path, form).await
    }

    async fn call_as(
        &self,
        user: &str,
        password: &str,
        method: &str,
        path: &str,
        form: &[(&str, &str)],
    ) -> (u16, Value) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.sim.url()))
            .basic_auth(user, Some(password))
            .header("Accept", "application/json");
        if !form.is_empty() {
            request = request.form(form);
        }
        let response = request.send().await.expect("an answer");
        let status = response.status().as_u16();
        let text = response.text().await.expect("a body");
        let body = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or_else(|_| panic!("JSON body: {text}"))
        };
        (status, body)
    }

    /// A POST with a raw form body, to test spellings a form encoder would not produce.
    async fn post_raw(&self, path: &str, body: &str) -> (u16, Value) {
        let response = self
            .http
            .post(format!("{}{path}", self.sim.url()))
            .basic_auth(USER, Some(PASSWORD))
            .header("Content-Type", "application/x-www-form-urlencoded")
            .body(body.to_owned())
            .send()
            .await
            .expect("an answer");
        let status = response.status().as_u16();
        (status, response.json().await.expect("JSON body"))
    }

    async fn add_keys(&self) {
        for (name, data) in [("a", KEY_A), ("b", KEY_B)] {
            let (status, _) = self
                .call("POST", "/key", &[("name", name), ("data", data)])
                .await;
            assert_eq!(status, 201);
        }
    }

    async fn settle_after(&self, by: Duration) {
        self.sim.advance(by);
        assert!(self.sim.settle().await, "scheduled boots finish");
    }
}

fn error_code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("<none>")
}

#[tokio::test]
async fn bad_credentials_are_401_and_three_failures_block_the_address_for_ten_minutes() {
    let harness = start().await;
    let (status, body) = harness.call_as(USER, "wrong", "GET", "/server", &[]).await;
    assert_eq!(status, 401);
    assert_eq!(
        body,
        json!({"error": {"status": 401, "code": "UNAUTHORIZED", "message": "Unauthorized"}})
    );
    // A good login in between resets the count.
    assert_eq!(harness.call("GET", "/server", &[]).await.0, 200);
    for _ in 0..3 {
        assert_eq!(
            harness.call_as("x", "y", "GET", "/server", &[]).await.0,
            401
        );
    }
    let (status, body) = harness.call("GET", "/server", &[]).await;
    assert_eq!(status, 401, "blocked even with the right password: {body}");
    assert_eq!(error_code(&body), "UNAUTHORIZED");
    harness.sim.advance(Duration::from_secs(9 * 60));
    assert_eq!(harness.call("GET", "/server", &[]).await.0, 401);
    harness.sim.advance(Duration::from_secs(60));
    assert_eq!(harness.call("GET", "/server", &[]).await.0, 200);
    // No Authorization header at all is a failed login too.
    let response = harness
        .http
        .get(format!("{}/server", harness.sim.url()))
        .send()
        .await
        .expect("answer");
    assert_eq!(response.status().as_u16(), 401);
}

#[tokio::test]
async fn servers_are_listed_wrapped_shown_renamed_and_unknown_ones_are_not_found() {
    let harness = start().await;
    let (status, body) = harness.call("GET", "/server", &[]).await;
    assert_eq!(status, 200);
    let list = body.as_array().expect("an array");
    assert_eq!(list.len(), 2);
    assert_eq!(list[0]["server"]["server_number"], 321);
    assert_eq!(list[1]["server"]["server_name"], "node-2");

    let (status, body) = harness.call("GET", "/server/321", &[]).await;
    assert_eq!(status, 200);
    let server = &body["server"];
    let ip = server["server_ip"].as_str().expect("server_ip");
    assert!(ip.starts_with("127."), "{ip}");
    for field in [
        "server_ipv6_net",
        "product",
        "dc",
        "traffic",
        "status",
        "cancelled",
        "paid_until",
        "ip",
        "subnet",
        "reset",
        "rescue",
        "vnc",
        "windows",
        "plesk",
        "cpanel",
        "wol",
        "hot_swap",
        "linked_storagebox",
    ] {
        assert!(server.get(field).is_some(), "{field} missing in {server}");
    }
    assert_eq!(server["status"], "ready");

    for path in [
        "/server/999",
        "/server/abc",
        "/boot/999/rescue",
        "/reset/999",
    ] {
        let (status, body) = harness.call("GET", path, &[]).await;
        assert_eq!(status, 404, "{path}");
        assert_eq!(
            body,
            json!({"error": {"status": 404, "code": "SERVER_NOT_FOUND", "message": "server not found"}}),
            "{path}"
        );
    }
    let (status, body) = harness.call("GET", "/nothing/here", &[]).await;
    assert_eq!((status, error_code(&body)), (404, "NOT_FOUND"));

    let (status, body) = harness
        .call("POST", "/server/321", &[("server_name", "renamed")])
        .await;
    assert_eq!(status, 200);
    assert_eq!(body["server"]["server_name"], "renamed");
    assert_eq!(harness.sim.state().servers[0].name, "renamed");
    let (status, body) = harness.post_raw("/server/321", "").await;
    assert_eq!(status, 400);
    assert_eq!(
        body,
        json!({"error": {"status": 400, "code": "INVALID_INPUT", "message": "invalid input",
            "missing": ["server_name"], "invalid": null}})
    );
}

#[tokio::test]
async fn keys_have_md5_fingerprints_are_unique_by_data_and_an_empty_list_is_not_found() {
    let harness = start().await;
    let (status, body) = harness.call("GET", "/key", &[]).await;
    assert_eq!((status, error_code(&body)), (404, "NOT_FOUND"));

    let (status, body) = harness
        .call("POST", "/key", &[("name", "deploy"), ("data", KEY_A)])
        .await;
    assert_eq!(status, 201);
    let key = &body["key"];
    assert_eq!(key["fingerprint"], KEY_A_FP);
    assert_eq!(key["type"], "ED25519");
    assert_eq!(key["size"], 256);
    assert_eq!(key["name"], "deploy");
    assert!(
        key["created_at"].as_str().is_some_and(|at| at.len() == 19),
        "{key}"
    );

    let (status, body) = harness
        .call("POST", "/key", &[("name", "rsa"), ("data", KEY_RSA)])
        .await;
    assert_eq!(status, 201);
    assert_eq!(body["key"]["fingerprint"], KEY_RSA_FP);
    assert_eq!(
        (body["key"]["type"].clone(), body["key"]["size"].clone()),
        (json!("RSA"), json!(2048))
    );

    // Same data under another name: the key exists already.
    let (status, body) = harness
        .call("POST", "/key", &[("name", "other name"), ("data", KEY_A)])
        .await;
    assert_eq!((status, error_code(&body)), (409, "KEY_ALREADY_EXISTS"));
    let (status, body) = harness
        .call(
            "POST",
            "/key",
            &[("name", "bad"), ("data", "ssh-ed25519 garbage")],
        )
        .await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["invalid"], json!(["data"]));
    let (status, body) = harness.post_raw("/key", "").await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["missing"], json!(["name", "data"]));

    let (status, body) = harness.call("GET", "/key", &[]).await;
    assert_eq!(status, 200);
    assert_eq!(body.as_array().map(Vec::len), Some(2));
    assert_eq!(body[0]["key"]["data"], KEY_A.rsplit_once(' ').unwrap().0);

    let path = format!("/key/{KEY_A_FP}");
    let (status, body) = harness.call("GET", &path, &[]).await;
    assert_eq!(
        (status, body["key"]["name"].clone()),
        (200, json!("deploy"))
    );
    // Colons may arrive percent-encoded.
    let (status, _) = harness
        .call(
            "GET",
            &format!("/key/{}", KEY_A_FP.replace(':', "%3A")),
            &[],
        )
        .await;
    assert_eq!(status, 200);
    let (status, body) = harness.call("POST", &path, &[("name", "renamed")]).await;
    assert_eq!(
        (status, body["key"]["name"].clone()),
        (200, json!("renamed"))
    );
    let (status, body) = harness.call("DELETE", &path, &[]).await;
    assert_eq!((status, body), (200, Value::Null));
    let (status, body) = harness.call("GET", &path, &[]).await;
    assert_eq!((status, error_code(&body)), (404, "NOT_FOUND"));
    let (status, _) = harness.call("DELETE", &path, &[]).await;
    assert_eq!(status, 404);
    assert_eq!(harness.sim.state().keys.len(), 1);
}

#[tokio::test]
async fn rescue_shapes_validation_and_the_three_array_spellings() {
    let harness = start().await;
    harness.add_keys().await;

    let (status, body) = harness.call("GET", "/boot/321/rescue", &[]).await;
    assert_eq!(status, 200);
    let rescue = &body["rescue"];
    assert!(
        rescue["os"].is_array() && rescue["arch"].is_array(),
        "{rescue}"
    );
    assert_eq!(rescue["active"], false);
    assert_eq!(rescue["password"], Value::Null);
    assert_eq!(rescue["authorized_key"], json!([]));
    assert_eq!(rescue["host_key"], json!([]));
    assert_eq!(rescue["boot_time"], Value::Null);

    let (status, body) = harness
        .call("POST", "/boot/321/rescue", &[("authorized_key", KEY_A_FP)])
        .await;
    assert_eq!(status, 400);
    assert_eq!(
        body,
        json!({"error": {"status": 400, "code": "INVALID_INPUT", "message": "invalid input",
            "missing": ["os"], "invalid": null}})
    );
    let (status, body) = harness
        .call(
            "POST",
            "/boot/321/rescue",
            &[("os", "linux"), ("authorized_key", "00:11")],
        )
        .await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["invalid"], json!(["authorized_key"]));
    let (status, body) = harness
        .call("POST", "/boot/321/rescue", &[("os", "windows")])
        .await;
    assert_eq!(
        (status, body["error"]["invalid"].clone()),
        (400, json!(["os"]))
    );

    for body in [
        format!("os=linux&authorized_key={KEY_A_FP}&authorized_key={KEY_B_FP}"),
        format!("os=linux&authorized_key[]={KEY_A_FP}&authorized_key[]={KEY_B_FP}"),
        format!("os=linux&authorized_key%5B0%5D={KEY_A_FP}&authorized_key%5B1%5D={KEY_B_FP}"),
    ] {
        let (status, reply) = harness.post_raw("/boot/321/rescue", &body).await;
        assert_eq!(status, 200, "{body}: {reply}");
        let rescue = &reply["rescue"];
        assert_eq!(rescue["os"], "linux", "{body}");
        assert_eq!(rescue["arch"], 64);
        assert_eq!(rescue["active"], true);
        assert!(rescue["password"].as_str().is_some_and(|p| p.len() >= 8));
        let fingerprints: Vec<&Value> = rescue["authorized_key"]
            .as_array()
            .expect("keys")
            .iter()
            .map(|key| &key["key"]["fingerprint"])
            .collect();
        assert_eq!(
            fingerprints,
            vec![&json!(KEY_A_FP), &json!(KEY_B_FP)],
            "{body}"
        );

        let (status, again) = harness.post_raw("/boot/321/rescue", &body).await;
        assert_eq!((status, error_code(&again)), (409, "BOOT_ALREADY_ENABLED"));
        let (status, shown) = harness.call("GET", "/boot/321/rescue", &[]).await;
        assert_eq!(
            (status, shown["rescue"]["active"].clone()),
            (200, json!(true))
        );

        let (status, deleted) = harness.call("DELETE", "/boot/321/rescue", &[]).await;
        assert_eq!(status, 200);
        assert_eq!(deleted["rescue"]["active"], false);
        assert!(deleted["rescue"]["os"].is_array());
    }
    // One key given the plain way.
    let (status, reply) = harness
        .call(
            "POST",
            "/boot/322/rescue",
            &[("os", "linux"), ("authorized_key", KEY_B_FP)],
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        reply["rescue"]["authorized_key"].as_array().map(Vec::len),
        Some(1)
    );
    let sent = harness.sim.request_log();
    let last = sent.last().expect("logged");
    assert_eq!(
        last.form,
        vec![
            ("os".into(), "linux".into()),
            ("authorized_key".into(), KEY_B_FP.into())
        ]
    );
}

#[tokio::test]
async fn rescue_is_one_shot_and_resets_boot_what_is_due() {
    let harness = start().await;
    harness.add_keys().await;
    let (status, body) = harness.call("GET", "/reset/321", &[]).await;
    assert_eq!(status, 200);
    assert_eq!(body["reset"]["type"], json!(["sw", "hw", "man"]));
    assert_eq!(body["reset"]["server_number"], 321);

    let (status, body) = harness.call("GET", "/boot/321/rescue/last", &[]).await;
    assert_eq!((status, error_code(&body)), (404, "NOT_FOUND"));

    let (status, _) = harness
        .call(
            "POST",
            "/boot/321/rescue",
            &[("os", "linux"), ("authorized_key", KEY_A_FP)],
        )
        .await;
    assert_eq!(status, 200);
    let (status, body) = harness.call("POST", "/reset/321", &[("type", "hw")]).await;
    assert_eq!(status, 200);
    assert_eq!(body["reset"]["type"], "hw");
    harness.settle_after(Duration::ZERO).await;
    assert_eq!(harness.sim.state().servers[0].power, Power::Down);
    assert_eq!(harness.machines.running(321), Some(Running::Off));
    // Still active until the machine has booted.
    let (_, body) = harness.call("GET", "/boot/321/rescue", &[]).await;
    assert_eq!(body["rescue"]["active"], true);

    harness.settle_after(Duration::from_secs(60)).await;
    let state = harness.sim.state();
    assert_eq!(state.servers[0].power, Power::Rescue);
    assert!(!state.servers[0].rescue_active);
    assert_eq!(
        harness.machines.running(321),
        Some(Running::Rescue {
            authorized_keys: vec![KEY_A.rsplit_once(' ').unwrap().0.to_owned()]
        })
    );
    let (_, body) = harness.call("GET", "/boot/321/rescue", &[]).await;
    assert_eq!(body["rescue"]["active"], false, "one-shot: {body}");
    assert!(body["rescue"]["os"].is_array());
    let (status, body) = harness.call("GET", "/boot/321/rescue/last", &[]).await;
    assert_eq!(status, 200);
    assert_eq!(body["rescue"]["os"], "linux");
    assert_eq!(body["rescue"]["password"], Value::Null);
    assert_eq!(
        body["rescue"]["authorized_key"][0]["key"]["fingerprint"],
        KEY_A_FP
    );
    assert!(harness.sim.rescue_password(321).is_some());

    // Without an activation, the next reset boots the disk; sw takes 90 s by default.
    harness.call("POST", "/reset/321", &[("type", "sw")]).await;
    harness.settle_after(Duration::from_secs(89)).await;
    assert_eq!(harness.sim.state().servers[0].power, Power::Down);
    harness.settle_after(Duration::from_secs(1)).await;
    assert_eq!(harness.sim.state().servers[0].power, Power::Disk);
    assert_eq!(harness.machines.running(321), Some(Running::Disk));

    let (status, body) = harness
        .call("POST", "/reset/321", &[("type", "reboot")])
        .await;
    assert_eq!(
        (status, body["error"]["invalid"].clone()),
        (400, json!(["type"]))
    );
    let (status, body) = harness.post_raw("/reset/321", "").await;
    assert_eq!(
        (status, body["error"]["missing"].clone()),
        (400, json!(["type"]))
    );
    assert_eq!(harness.sim.state().servers[0].resets, vec!["hw", "sw"]);
}

#[tokio::test]
async fn ignored_sw_resets_and_a_rescue_that_never_comes_up() {
    let harness = start_with(|config| {
        config.servers[0].ignore_sw_reset = true;
    })
    .await;
    harness.add_keys().await;
    harness
        .call(
            "POST",
            "/boot/321/rescue",
            &[("os", "linux"), ("authorized_key", KEY_A_FP)],
        )
        .await;
    let (status, _) = harness.call("POST", "/reset/321", &[("type", "sw")]).await;
    assert_eq!(status, 200);
    harness.settle_after(Duration::from_secs(600)).await;
    let server = &harness.sim.state().servers[0];
    assert_eq!((server.power, server.rescue_active), (Power::Disk, true));
    assert_eq!(server.resets, vec!["sw"]);
    // Escalation to hw works.
    harness.call("POST", "/reset/321", &[("type", "hw")]).await;
    harness.settle_after(Duration::from_secs(60)).await;
    assert_eq!(harness.sim.state().servers[0].power, Power::Rescue);

    harness
        .sim
        .inject(Fault::RescueNeverBoots { server_number: 322 });
    harness
        .call(
            "POST",
            "/boot/322/rescue",
            &[("os", "linux"), ("authorized_key", KEY_B_FP)],
        )
        .await;
    harness.call("POST", "/reset/322", &[("type", "hw")]).await;
    harness.settle_after(Duration::from_secs(3600)).await;
    let server = &harness.sim.state().servers[1];
    assert_eq!(
        (server.power, server.rescue_active, server.rescue_boots),
        (Power::Down, true, 0)
    );
}

#[tokio::test]
async fn rate_limits_answer_403_with_max_requests_and_interval() {
    let harness = start_with(|config| {
        config.rate_limits = vec![RateLimit {
            route: "GET /server".into(),
            max_requests: 3,
            interval: Duration::from_secs(60),
        }];
    })
    .await;
    for _ in 0..3 {
        assert_eq!(harness.call("GET", "/server", &[]).await.0, 200);
    }
    let (status, body) = harness.call("GET", "/server", &[]).await;
    assert_eq!(status, 403);
    assert_eq!(
        body,
        json!({"error": {"status": 403, "code": "RATE_LIMIT_EXCEEDED", "message": "rate limit exceeded",
            "max_requests": 3, "interval": 60}})
    );
    // Other routes have their own budget.
    assert_eq!(harness.call("GET", "/server/321", &[]).await.0, 200);
    harness.sim.advance(Duration::from_secs(60));
    assert_eq!(harness.call("GET", "/server", &[]).await.0, 200);
}

#[tokio::test]
async fn default_limit_on_get_server_is_200_an_hour() {
    let harness = start().await;
    for _ in 0..200 {
        assert_eq!(harness.call("GET", "/server", &[]).await.0, 200);
    }
    let (status, body) = harness.call("GET", "/server", &[]).await;
    assert_eq!(status, 403);
    assert_eq!(
        (
            body["error"]["max_requests"].clone(),
            body["error"]["interval"].clone()
        ),
        (json!(200), json!(3600))
    );
}

#[tokio::test]
async fn injected_faults_fail_drop_and_delay_the_nth_call() {
    let harness = start().await;
    harness.sim.inject(Fault::fail(
        "GET /server/{server-number}",
        2,
        503,
        "INTERNAL_ERROR",
    ));
    assert_eq!(harness.call("GET", "/server/321", &[]).await.0, 200);
    let (status, body) = harness.call("GET", "/server/321", &[]).await;
    assert_eq!((status, error_code(&body)), (503, "INTERNAL_ERROR"));
    assert_eq!(body["error"]["status"], 503);
    assert_eq!(harness.call("GET", "/server/321", &[]).await.0, 200);
    assert!(harness.sim.pending_faults().is_empty());

    harness.sim.inject(Fault::DropConnection {
        route: "GET /key".into(),
        nth: 1,
    });
    let dropped = harness
        .http
        .get(format!("{}/key", harness.sim.url()))
        .basic_auth(USER, Some(PASSWORD))
        .send()
        .await;
    assert!(dropped.is_err(), "the connection closes without an answer");

    // The change happens although the answer never arrives.
    harness.sim.inject(Fault::DropResponse {
        route: "POST /server/{server-number}".into(),
        nth: 1,
    });
    let dropped = harness
        .http
        .post(format!("{}/server/322", harness.sim.url()))
        .basic_auth(USER, Some(PASSWORD))
        .form(&[("server_name", "renamed-in-the-dark")])
        .send()
        .await;
    assert!(dropped.is_err());
    assert_eq!(harness.sim.state().servers[1].name, "renamed-in-the-dark");

    harness.sim.inject(Fault::Delay {
        route: "GET /reset/{server-number}".into(),
        nth: 1,
        delay: Duration::from_millis(300),
    });
    let started = std::time::Instant::now();
    assert_eq!(harness.call("GET", "/reset/321", &[]).await.0, 200);
    assert!(started.elapsed() >= Duration::from_millis(300));
    let log = harness.sim.request_log();
    assert!(log.iter().any(|record| record.status.is_none()));
}

#[tokio::test]
async fn scaled_time_boots_without_being_told() {
    let harness = start_with(|config| config.time = TimeMode::Scaled(0.001)).await;
    harness.add_keys().await;
    harness
        .call(
            "POST",
            "/boot/321/rescue",
            &[("os", "linux"), ("authorized_key", KEY_A_FP)],
        )
        .await;
    harness.call("POST", "/reset/321", &[("type", "hw")]).await;
    // 60 s simulated is 60 ms real; allow plenty for a loaded machine.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while harness.sim.state().servers[0].power != Power::Rescue {
        assert!(
            std::time::Instant::now() < deadline,
            "the rescue system came up"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(harness.machines.boots(321), 2);
}

#[tokio::test]
async fn the_binary_flags_start_a_simulator_with_a_generated_password() {
    let args = RobotArgs {
        robot_listen: Some("127.0.0.1:0".parse().expect("address")),
        robot_user: "u".into(),
        robot_password: None,
        robot_servers: vec!["7:alpha".into(), "8:beta".into()],
        robot_drive_size: "3G".into(),
        robot_faults: vec!["rescue-never-boots:8".into()],
    };
    let served = serve_from_args(
        &args,
        TimeMode::Manual,
        Arc::new(RobotAddressOnly::default()),
    )
    .await
    .expect("starts")
    .expect("a simulator");
    let password = served.generated_password.clone().expect("generated");
    let response = reqwest::Client::new()
        .get(format!("{}/server", served.sim.url()))
        .basic_auth("u", Some(&password))
        .send()
        .await
        .expect("answer");
    assert_eq!(response.status().as_u16(), 200);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body[1]["server"]["server_name"], "beta");

    let server = &served.sim.state().servers[1];
    assert_eq!(server.number, 8);
    for fault in ["ignore-sw-reset:9", "explode:7", "rescue-never-boots"] {
        let bad = RobotArgs {
            robot_faults: vec![fault.into()],
            ..args.clone()
        };
        let error = serve_from_args(
            &bad,
            TimeMode::Manual,
            Arc::new(RobotAddressOnly::default()),
        )
        .await
        .expect_err("a bad fault");
        assert!(error.to_string().contains("--robot-fault"), "{error}");
    }
    let bad_size = RobotArgs {
        robot_drive_size: "3 GB".into(),
        ..args.clone()
    };
    assert!(
        serve_from_args(
            &bad_size,
            TimeMode::Manual,
            Arc::new(RobotAddressOnly::default())
        )
        .await
        .is_err()
    );
    let no_listen = RobotArgs {
        robot_listen: None,
        ..args.clone()
    };
    let none = serve_from_args(
        &no_listen,
        TimeMode::Manual,
        Arc::new(RobotAddressOnly::default()),
    )
    .await;
    assert!(matches!(none, Ok(None)));
    let bad = RobotArgs {
        robot_servers: vec!["seven".into()],
        ..args
    };
    let error = serve_from_args(
        &bad,
        TimeMode::Manual,
        Arc::new(RobotAddressOnly::default()),
    )
    .await
    .expect_err("a bad server spec");
    assert!(error.to_string().contains("NUMBER:NAME"), "{error}");
}
