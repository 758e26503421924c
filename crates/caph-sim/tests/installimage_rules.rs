//! installimage's validation rules, one accepted and one rejected config per rule, from `tests/data/installimage_rules.txt`.

use std::path::{Path, PathBuf};

use caph_sim::installimage::{Drive, MachineFacts, validate};

const USER: &str = "rules-user";
const PASSWORD: &str = "rules-password";

/// One case of the table.
#[derive(Debug)]
struct Case {
    rule: String,
    /// `None`: accepted; `Some(text)`: rejected with a message containing `text`.
    rejection: Option<String>,
    facts: MachineFacts,
    config: String,
    line: usize,
}

fn size_bytes(text: &str) -> u64 {
    let (digits, unit) = text.split_at(text.len() - 1);
    let number: u64 = digits.parse().unwrap_or_else(|_| panic!("size {text}"));
    let mib = match unit {
        "M" => 1,
        "G" => 1024,
        "T" => 1024 * 1024,
        _ => panic!("size unit in {text}"),
    };
    number * mib * 1024 * 1024
}

fn load() -> Vec<Case> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/installimage_rules.txt");
    let text = std::fs::read_to_string(&path).expect("the rule table");
    let mut cases: Vec<Case> = Vec::new();
    for (index, line) in text.lines().enumerate() {
        if let Some(header) = line.strip_prefix("=== ") {
            let fields: Vec<&str> = header.split(" | ").collect();
            let rejection = match fields.get(1).copied() {
                Some("accept") => None,
                Some("reject") => Some(
                    fields
                        .get(2)
                        .expect("a rejection names its message")
                        .to_string(),
                ),
                other => panic!("line {}: outcome {other:?}", index + 1),
            };
            let mut facts = MachineFacts::two_drives(size_bytes("512G"), Path::new("/nonexistent"));
            facts.ipv4 = "127.0.0.2".into();
            cases.push(Case {
                rule: fields[0].to_owned(),
                rejection,
                facts,
                config: String::new(),
                line: index + 1,
            });
            continue;
        }
        let Some(case) = cases.last_mut() else {
            continue;
        };
        if let Some(machine) = line.strip_prefix("@ ") {
            for setting in machine.split_whitespace() {
                let (key, value) = setting.split_once('=').expect("key=value");
                match key {
                    "arch" => case.facts.arch = value.to_owned(),
                    "uefi" => case.facts.uefi = value == "yes",
                    "drives" => {
                        case.facts.drives = value
                            .split(',')
                            .map(|drive| {
                                let (device, size) = drive.split_once(':').expect("device:size");
                                Drive {
                                    device: device.to_owned(),
                                    size_bytes: size_bytes(size),
                                }
                            })
                            .collect();
                    }
                    other => panic!("line {}: machine key {other}", index + 1),
                }
            }
            continue;
        }
        case.config.push_str(line);
        case.config.push('\n');
    }
    cases
}

#[test]
fn every_rule_has_an_accepted_and_a_rejected_config_and_each_behaves() {
    let cases = load();
    assert!(cases.len() > 100, "the table has {} cases", cases.len());
    let mut failures = Vec::new();
    for case in &cases {
        let errors = validate(&case.config, &case.facts);
        match (&case.rejection, errors.first()) {
            (None, None) => {}
            (None, Some(error)) => failures.push(format!(
                "line {} ({}): expected acceptance, got {error:?}",
                case.line, case.rule
            )),
            (Some(expected), None) => failures.push(format!(
                "line {} ({}): expected rejection with {expected:?}, accepted",
                case.line, case.rule
            )),
            (Some(expected), Some(error)) if !error.contains(expected.as_str()) => {
                failures.push(format!(
                    "line {} ({}): expected {expected:?}, got {error:?}",
                    case.line, case.rule
                ))
            }
            (Some(_), Some(_)) => {}
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // Every rule of the table has at least one accepted and one rejected config.
    let mut rules: Vec<&str> = cases.iter().map(|case| case.rule.as_str()).collect();
    rules.sort_unstable();
    rules.dedup();
    let lonely: Vec<&str> = rules
        .iter()
        .copied()
        .filter(|rule| {
            let accepted = cases
                .iter()
                .any(|case| case.rule == *rule && case.rejection.is_none());
            let rejected = cases
                .iter()
                .any(|case| case.rule == *rule && case.rejection.is_some());
            !(accepted && rejected)
        })
        .collect();
    assert!(lonely.is_empty(), "rules without both outcomes: {lonely:?}");
}

#[test]
fn every_check_of_the_reference_is_in_the_table() {
    let cases = load();
    // Section 3 of the reference, rule by rule (a rule covered by several names is listed once
    // per name).
    for rule in [
        "image-extension",
        "image-source",
        "image-distro",
        "image-arch",
        "drive1-block-device",
        "drive-raid-block-device",
        "drive-duplicate",
        "formatdrive-and-swraid",
        "swraid-value",
        "swraidlevel-value",
        "raid-drive-count",
        "raid5-drive-count",
        "raid6-drive-count",
        "raid-needs-boot",
        "boot-or-root-not-on-lvm",
        "primary-partition",
        "part-mount",
        "part-filesystem",
        "part-fs-none",
        "esp-mount",
        "esp-size",
        "esp-not-all",
        "all-on-last-partition",
        "part-size-number",
        "boot-min-size",
        "root-min-size",
        "uefi-one-esp",
        "at-least-one-partition",
        "vg-needs-lv",
        "lv-needs-vg",
        "lv-vg-defined",
        "lv-mount",
        "lv-filesystem",
        "lv-root-min-size",
        "lv-all-on-last",
        "btrfs-subvolumes",
        "mount-points-unique",
        "has-root",
        "hostname",
        "total-size",
        "total-size-raid",
        "drive-prefix-key",
        "swraid-prefix-key",
        "first-match-wins",
        "bootloader",
    ] {
        assert!(
            cases.iter().any(|case| case.rule == rule),
            "{rule} is missing"
        );
    }
}

/// Cases of the table the real installimage is not asked about, with the reason.
const NOT_RUN_FOR_REAL: &[(&str, &str)] = &[(
    "arch=aarch64",
    "installimage takes the machine's architecture from `uname -m`, and the rescue systems here run on an x86_64 kernel",
)];

/// The table through the real installimage (Hetzner's, from `../shared/vendor/installimage/`)
/// in simulated rescue systems whose drives and firmware are the case's machine: every config
/// it accepts, the simulation accepts, and every config it rejects, the simulation rejects with
/// the same message. It stops each accepted run in its 20-second wait, before any disk is
/// touched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_real_installimage_decides_every_case_as_the_simulation_does() {
    use caph_sim::machine::{SshMachines, SshMachinesConfig};
    use caph_sim::real_installimage::{InstallimageArchive, InstallimageKind};
    use caph_sim::robot::{
        RobotDrive, RobotServer, RobotSim, RobotSimConfig, SshRobotConfig, SshRobotMachines,
        TimeMode,
    };
    use std::sync::Arc;

    let test = "the_real_installimage_decides_every_case_as_the_simulation_does";
    let vendor = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/vendor/installimage");
    let archive = match InstallimageArchive::vendored(&vendor, InstallimageKind::Hetzner) {
        Ok(archive) => archive,
        Err(error) => {
            eprintln!("SKIPPED {test}: {error}");
            return;
        }
    };
    let machines = match SshMachines::new(SshMachinesConfig::default()) {
        Ok(machines) => Arc::new(machines),
        Err(error) => {
            eprintln!("SKIPPED {test}: {error}");
            return;
        }
    };
    let installimage = PathBuf::from(env!("CARGO_BIN_EXE_caph-sim"));
    let robot_machines = Arc::new(SshRobotMachines::new(SshRobotConfig {
        machines: machines.clone(),
        real_installimage: Some(archive),
        installimage_binary: installimage,
        rescue_packages: caph_sim::robot::RESCUE_PACKAGES
            .iter()
            .map(|name| name.to_string())
            .collect(),
        log: None,
    }));

    // One server per machine of the table.
    let cases = load();
    let machine_of = |facts: &MachineFacts| {
        format!(
            "arch={} uefi={} drives={:?}",
            facts.arch,
            facts.uefi,
            facts
                .drives
                .iter()
                .map(|drive| (drive.device.clone(), drive.size_bytes))
                .collect::<Vec<_>>()
        )
    };
    let mut servers: Vec<(String, RobotServer)> = Vec::new();
    let mut skipped = Vec::new();
    for case in &cases {
        if let Some((what, _)) = NOT_RUN_FOR_REAL
            .iter()
            .find(|(what, _)| *what == format!("arch={}", case.facts.arch))
        {
            skipped.push(format!("line {} ({what})", case.line));
            continue;
        }
        let key = machine_of(&case.facts);
        if servers.iter().any(|(known, _)| *known == key) {
            continue;
        }
        let mut server = RobotServer::new(100 + servers.len() as u64, "rules");
        server.uefi = case.facts.uefi;
        server.drives = case
            .facts
            .drives
            .iter()
            .map(|drive| RobotDrive::new(&drive.device, drive.size_bytes))
            .collect();
        servers.push((key, server));
    }
    let sim = RobotSim::start(RobotSimConfig {
        user: USER.into(),
        password: PASSWORD.into(),
        time: TimeMode::Scaled(0.01),
        servers: servers.iter().map(|(_, server)| server.clone()).collect(),
        machines: robot_machines.clone(),
        ..Default::default()
    })
    .await
    .expect("the Robot simulator starts");
    let key = caph_ssh::KeyPair::generate_ed25519("rules").unwrap();
    let robot = reqwest::Client::new();
    let post = |path: String, form: Vec<(&'static str, String)>| {
        let request = robot
            .post(format!("{}{path}", sim.url()))
            .basic_auth(USER, Some(PASSWORD))
            .form(&form);
        async move {
            let response = request.send().await.expect("answer");
            assert!(
                response.status().is_success(),
                "{path}: {}",
                response.status()
            );
            response.json::<serde_json::Value>().await.expect("JSON")
        }
    };
    let stored = post(
        "/key".into(),
        vec![
            ("name", "rules".into()),
            ("data", key.public_key().to_openssh()),
        ],
    )
    .await;
    let fingerprint = stored["key"]["fingerprint"].as_str().unwrap().to_owned();

    let mut failures = Vec::new();
    let mut asked = 0;
    for (machine, server) in &servers {
        let number = server.number;
        post(
            format!("/boot/{number}/rescue"),
            vec![
                ("os", "linux".into()),
                ("authorized_key", fingerprint.clone()),
            ],
        )
        .await;
        post(format!("/reset/{number}"), vec![("type", "hw".into())]).await;
        let ip = sim
            .state()
            .servers
            .iter()
            .find(|state| state.number == number)
            .unwrap()
            .ip;
        let mut config = caph_ssh::ConnectConfig::new(
            std::net::SocketAddr::from((ip, 22)),
            "root",
            key.clone(),
            caph_ssh::HostKeyPolicy::TrustOnFirstUse(caph_ssh::TofuPin::new()),
        );
        config.deadline = std::time::Duration::from_secs(600);
        let session = caph_ssh::connect_when_ready(&config, &mut |_| {})
            .await
            .expect("the rescue system answers");
        for case in cases
            .iter()
            .filter(|case| machine_of(&case.facts) == *machine)
        {
            asked += 1;
            session
                .upload(case.config.as_bytes(), "/autosetup", 0o644, &mut |_| {})
                .await
                .expect("the config uploads");
            let outcome = session
                .exec_capture(REAL_VALIDATION)
                .await
                .expect("installimage runs");
            // `ACCEPTED`, or `REJECTED` and the end of installimage's debug.txt, where every
            // refusal is written (not all of them begin with "ERROR").
            let real = outcome.stdout.trim();
            let rejected = real.strip_prefix("REJECTED");
            let simulated = validate(&case.config, &case.facts);
            let agree = match (rejected, simulated.first()) {
                (None, None) => real == "ACCEPTED",
                // Every line of the simulation's message (the figures of a size check too)
                // appears in the real one's log, which writes continuation lines indented.
                (Some(debug), Some(error)) => error
                    .trim_start_matches("ERROR: ")
                    .lines()
                    .map(str::trim)
                    .filter(|line| !line.is_empty())
                    .all(|line| debug.contains(line)),
                _ => false,
            };
            let known = KNOWN_DISAGREEMENTS
                .iter()
                .find(|(rule, text, _)| *rule == case.rule && case.config.contains(text));
            match (agree, known) {
                (true, None) => {}
                (false, Some((_, _, why))) => {
                    eprintln!("{test}: line {} ({}): known disagreement: {why}", case.line, case.rule)
                }
                (true, Some(_)) => failures.push(format!(
                    "line {} ({}): listed as a known disagreement, but the real installimage and the simulation now agree: take it off the list",
                    case.line, case.rule
                )),
                (false, None) => failures.push(format!(
                    "line {} ({}, {machine}): the real installimage says {real:?}, the simulation {simulated:?}",
                    case.line, case.rule
                )),
            }
            // The table's own expectation holds for the real one too.
            if let (Some(expected), Some(debug)) = (&case.rejection, rejected)
                && known.is_none()
                && !debug.contains(expected.trim_start_matches("ERROR: ").trim())
            {
                failures.push(format!(
                    "line {} ({}): the real installimage's refusal {debug:?} lacks {expected:?}",
                    case.line, case.rule
                ));
            }
        }
        session.close().await;
    }
    for (what, reason) in NOT_RUN_FOR_REAL {
        eprintln!(
            "{test}: {} case(s) with {what} not asked: {reason}",
            skipped.len()
        );
    }
    eprintln!("{test}: {asked} cases asked of the real installimage");
    assert!(asked > 100, "only {asked} cases were asked");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Cases where Hetzner's installimage (d7805b2) and the simulation decide differently, on purpose
/// or not understood yet: (rule, a text of the case's config, why). The test fails when a listed
/// case starts to agree, so the list stays true.
const KNOWN_DISAGREEMENTS: &[(&str, &str, &str)] = &[(
    "part-size-number",
    "PART /boot ext4 1.5G",
    "the real installimage accepts a fractional size such as 1.5G for /boot in this run, although \
     its translate_unit and size check read as refusing it; the simulation keeps refusing it (the \
     safer answer for a layout we render) until the difference is understood",
)];

/// Runs the real installimage on `/autosetup` with its 20-second wait never answered, and says
/// `ACCEPTED` once the wait begins (then stops it: nothing is touched before the wait ends) or
/// `REJECTED` and the end of /root/debug.txt (where it writes its refusal) once it gives up.
const REAL_VALIDATION: &str = r#"rm -f /root/debug.txt /tmp/caph-validation.out
# A session of its own, so that stopping it stops exactly installimage's processes (matching by
# command line would match this script too, whose text names installimage).
# Its standard input never answers and never ends, without being a pipeline that would wait for
# the writer after installimage gives up.
setsid bash -c '/root/.oldroot/nfs/installimage-real/installimage -a -c /autosetup < <(sleep 300) > /tmp/caph-validation.out 2>&1
  echo "caph-exit $?" >> /tmp/caph-validation.out' &
session=$!
for attempt in $(seq 1200); do
  if grep -q -e 'Press X to continue' -e '^caph-exit ' /tmp/caph-validation.out; then break; fi
  sleep 0.1
done
if grep -q 'Press X to continue' /tmp/caph-validation.out; then
  kill -TERM -- -$session 2>/dev/null
  for attempt in $(seq 100); do kill -0 -- -$session 2>/dev/null || break; sleep 0.1; done
  echo ACCEPTED
else
  wait $session
  kill -TERM -- -$session 2>/dev/null
  echo REJECTED
  sed -n '/validating config/,$p' /root/debug.txt
fi
"#;
