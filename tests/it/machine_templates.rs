//! Every machine template the CLI prints, from one table of command lines, checked against
//! Cluster API Provider Hetzner's CRDs (`crate::crd`, as strict as `kubectl apply
//! --validate=strict`, every served version) and against what CAPH's controller then does with
//! it, read from its source at 1c4fe745f3bf5b22b94d4dddd6c4b3b98f6770fc:
//! - `api/v1beta1/hetznerbaremetalmachine_types.go`, `GetImageSuffix` and `Image.GetDetails`: the
//!   URL's suffix, and the rescue-system path the download is saved to;
//! - `pkg/services/baremetal/client/ssh/ssh_client.go`, `DownloadImage`: the download command,
//!   run here with the real curl against a loopback server, and the saved file extracted with
//!   installimage's own tar and bsdtar options (`extract_image` of CAPH's installimage v1.0.8);
//! - `pkg/services/hcloud/server/server.go`, `getServerImage`: exactly one image per name, which
//!   `build hcloud --replace` keeps but for one request (measured here on the real binary).

use std::collections::BTreeSet;
use std::fs;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use caph_sim::mirror::{Mirror, release_artifacts};
use serde_json::Value;

use crate::cloud::{Cloud, VERSIONS};
use crate::crd::{self, Crds, crds_or_skip};
use crate::{is_root, stderr, stdout};

/// The subcommands that print machine templates, each in both output formats.
const PRINTING_COMMANDS: [&str; 4] = ["build hcloud", "build tarball", "build robot", "pack"];

/// CAPH's URL suffixes (`GetImageSuffix`), in its order.
const CAPH_URL_SUFFIXES: [&str; 8] = [
    "tar", "tar.gz", "tar.bz", "tar.bz2", "tar.xz", "tgz", "tbz", "txz",
];

/// The placeholder prefix of every bare-metal URL.
const URL_PREFIX: &str = "https://images.example.com/REPLACE-WITH-WHERE-YOU-SERVE-IT/";

/// The image name of the specs below, and what the tarballs are called.
const SPEC_NAME: &str = "debian-12-templates-e2e";
const TARBALL_STEM: &str = "Debian-1200-bookworm-amd64-k8s-v1.34.2";

/// Where a row's command needs to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Group {
    /// `pack`: only the binary.
    Pack,
    /// `build tarball` (root, mmdebstrap) and then `build robot --sim` with its tarballs
    /// (root, sshd).
    Dedicated,
    /// `build hcloud` against the simulated cloud (root, sshd, mmdebstrap).
    Cloud,
}

/// One command line and what it must print.
struct Row {
    group: Group,
    /// The arguments, split at blanks; `{gz}` and `{zst}` are the tarballs the `build tarball`
    /// rows made.
    command: &'static str,
    /// How many templates, and of which kind.
    count: usize,
    kind: &'static str,
    /// Checks of this row's templates beyond the common ones.
    check: fn(&[Value]),
}

const ROWS: &[Row] = &[
    Row {
        group: Group::Pack,
        command: "pack rootfs -o Debian-1200-bookworm-amd64-custom.tar.gz --no-progress",
        count: 1,
        kind: "HetznerBareMetalMachineTemplate",
        check: |templates| {
            let image = &templates[0]["spec"]["template"]["spec"]["installImage"]["image"];
            assert_eq!(image["name"], "Debian-1200-bookworm-amd64-custom");
            assert_eq!(
                image["url"],
                format!("{URL_PREFIX}Debian-1200-bookworm-amd64-custom.tar.gz")
            );
            assert_eq!(
                templates[0]["metadata"]["name"],
                "debian-1200-bookworm-amd64-custom"
            );
        },
    },
    Row {
        group: Group::Pack,
        command: "pack rootfs -o Ubuntu-2404-noble-arm64-custom.tar.zst --no-progress --output json",
        count: 1,
        kind: "HetznerBareMetalMachineTemplate",
        check: |templates| {
            let image = &templates[0]["spec"]["template"]["spec"]["installImage"]["image"];
            assert_eq!(
                image["url"],
                format!("{URL_PREFIX}Ubuntu-2404-noble-arm64-custom.tar.zst#.tar")
            );
        },
    },
    Row {
        group: Group::Pack,
        command: "pack rootfs -o rootfs-image --no-progress",
        count: 1,
        kind: "HetznerBareMetalMachineTemplate",
        check: |templates| {
            let image = &templates[0]["spec"]["template"]["spec"]["installImage"]["image"];
            assert_eq!(image["url"], format!("{URL_PREFIX}rootfs-image#.tar"));
        },
    },
    // Hostile names: a number, a YAML boolean, characters the rescue shell would act on,
    // nothing usable at all.
    Row {
        group: Group::Pack,
        command: "pack rootfs -o 1234.tgz --no-progress --output json",
        count: 1,
        kind: "HetznerBareMetalMachineTemplate",
        check: |templates| {
            assert_eq!(templates[0]["metadata"]["name"], "1234");
            let image = &templates[0]["spec"]["template"]["spec"]["installImage"]["image"];
            assert_eq!(image["name"], "1234", "a string, not a number");
        },
    },
    Row {
        group: Group::Pack,
        command: "pack rootfs -o YES.tar --no-progress",
        count: 1,
        kind: "HetznerBareMetalMachineTemplate",
        check: |templates| {
            assert_eq!(templates[0]["metadata"]["name"], "yes");
            let image = &templates[0]["spec"]["template"]["spec"]["installImage"]["image"];
            assert_eq!(image["name"], "YES", "a string, not a boolean");
        },
    },
    Row {
        group: Group::Pack,
        command: "pack rootfs -o Über_node's\"$(reboot)\";&*?.tar.zst --no-progress",
        count: 1,
        kind: "HetznerBareMetalMachineTemplate",
        check: |templates| {
            assert_eq!(templates[0]["metadata"]["name"], "ber-node-s-reboot");
        },
    },
    Row {
        group: Group::Pack,
        command: "pack rootfs -o _.tar.gz --no-progress --output json",
        count: 1,
        kind: "HetznerBareMetalMachineTemplate",
        check: |templates| {
            assert_eq!(templates[0]["metadata"]["name"], "caph-image");
        },
    },
    Row {
        group: Group::Dedicated,
        command: "build tarball spec.toml -o out --arch amd64 --no-progress",
        count: 1,
        kind: "HetznerBareMetalMachineTemplate",
        check: |templates| {
            let spec = &templates[0]["spec"]["template"]["spec"];
            assert_eq!(
                spec["installImage"]["image"]["url"],
                format!("{URL_PREFIX}{TARBALL_STEM}.tar.gz")
            );
            // The spec's layout: RAID 1, and its swap partition left out.
            assert_eq!(spec["installImage"]["swraidLevel"], 1);
            assert_eq!(
                mounts(&spec["installImage"]["partitions"]),
                ["/boot", "/"],
                "{spec:#}"
            );
            assert_eq!(
                templates[0]["metadata"]["name"],
                "debian-12-templates-e2e-amd64"
            );
        },
    },
    Row {
        group: Group::Dedicated,
        command: "build tarball spec.toml -o out-zst --arch amd64 --compression zstd --no-progress --output json",
        count: 1,
        kind: "HetznerBareMetalMachineTemplate",
        check: |templates| {
            let spec = &templates[0]["spec"]["template"]["spec"];
            assert_eq!(
                spec["installImage"]["image"]["url"],
                format!("{URL_PREFIX}{TARBALL_STEM}.tar.zst#.tar")
            );
            assert_eq!(spec["installImage"]["image"]["name"], TARBALL_STEM);
        },
    },
    Row {
        group: Group::Dedicated,
        command: "build robot spec.toml --server 4711 --tarball {gz} --layout raid1 --sim --sim-speed 100 --no-progress",
        count: 1,
        kind: "HetznerBareMetalMachineTemplate",
        check: |templates| {
            let install = &templates[0]["spec"]["template"]["spec"]["installImage"];
            assert_eq!(install["swraid"], 1);
            assert_eq!(
                install["image"]["url"],
                format!("{URL_PREFIX}{TARBALL_STEM}.tar.gz")
            );
        },
    },
    Row {
        group: Group::Dedicated,
        command: "build robot spec.toml --server 4712 --tarball {zst} --layout lvm.autosetup --sim --sim-speed 100 --no-progress --output json",
        count: 1,
        kind: "HetznerBareMetalMachineTemplate",
        check: |templates| {
            let install = &templates[0]["spec"]["template"]["spec"]["installImage"];
            assert_eq!(
                install["image"]["url"],
                format!("{URL_PREFIX}{TARBALL_STEM}.tar.zst#.tar")
            );
            assert_eq!(mounts(&install["logicalVolumeDefinitions"]), ["/", "/var"]);
        },
    },
    Row {
        group: Group::Cloud,
        command: "build hcloud node.toml --no-progress --output json",
        count: 0, // one per architecture this machine builds; see `templates_of_build_hcloud`
        kind: "HCloudMachineTemplate",
        check: |templates| {
            for template in templates {
                let spec = &template["spec"]["template"]["spec"];
                assert_eq!(spec["imageName"], SPEC_NAME);
                let expected_type = if template["metadata"]["name"]
                    .as_str()
                    .unwrap()
                    .ends_with("-arm")
                {
                    "cax11"
                } else {
                    "cx23"
                };
                assert_eq!(spec["type"], expected_type);
            }
        },
    },
    Row {
        group: Group::Cloud,
        command: "build hcloud node.toml --arch x86 --replace --no-progress",
        count: 1,
        kind: "HCloudMachineTemplate",
        check: |templates| {
            assert_eq!(
                templates[0]["metadata"]["name"],
                "debian-12-templates-e2e-x86"
            );
            assert_eq!(templates[0]["spec"]["template"]["spec"]["type"], "cx23");
        },
    },
];

fn mounts(list: &Value) -> Vec<String> {
    list.as_array()
        .map(|items| {
            items
                .iter()
                .map(|item| item["mount"].as_str().unwrap_or_default().to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// The templates in a command's standard output: the `machine_template` fields of JSON, or the
/// YAML after each `---` line of text, up to a blank line.
fn printed_templates(command: &str, output: &str) -> Vec<String> {
    if command.contains("--output json") {
        let document: Value = serde_json::from_str(output)
            .unwrap_or_else(|error| panic!("{command}: not JSON ({error}):\n{output}"));
        let mut found = Vec::new();
        if let Some(template) = document["machine_template"].as_str() {
            found.push(template.to_string());
        }
        for snapshot in document["snapshots"].as_array().into_iter().flatten() {
            found.push(snapshot["machine_template"].as_str().unwrap().to_string());
        }
        return found;
    }
    output
        .split("\n---\n")
        .skip(1)
        .map(|chunk| {
            chunk
                .split("\n\n")
                .next()
                .unwrap_or_default()
                .trim_end()
                .to_string()
        })
        .collect()
}

/// What is common to every template: the CRDs pass it, `metadata.name` is a DNS-1123 label,
/// and a bare-metal template is one CAPH can download and installimage can extract.
fn check_common(crds: &Crds, row: &Row, template: &str) -> Value {
    let violations = crds.check(template);
    assert!(
        violations.is_empty(),
        "{}: the template breaks CAPH's CRDs:\n{template}\n{violations:#?}",
        row.command
    );
    let value = crd::yaml::document(template).unwrap();
    assert_eq!(value["kind"], row.kind, "{}", row.command);
    let name = value["metadata"]["name"].as_str().unwrap();
    assert!(crd::is_dns_label(name), "{}: {name:?}", row.command);
    if row.kind == "HetznerBareMetalMachineTemplate" {
        let spec = &value["spec"]["template"]["spec"];
        let image = &spec["installImage"]["image"];
        assert!(image.get("path").is_none(), "{}: {image}", row.command);
        let (download, _) = caph_download(image)
            .unwrap_or_else(|problem| panic!("{}: {problem}\n{template}", row.command));
        assert!(download.starts_with("/root/"), "{download}");
        let ssh = &spec["sshSpec"];
        assert_eq!(ssh["portAfterInstallImage"], 22, "{}", row.command);
        let secret = ssh["secretRef"]["name"].as_str().unwrap();
        assert!(secret.starts_with("REPLACE-WITH-"), "{secret}");
        assert_eq!(
            ssh["secretRef"]["key"],
            serde_json::json!({
                "name": "sshkey-name", "publicKey": "ssh-publickey", "privateKey": "ssh-privatekey"
            })
        );
        for list in ["partitions", "logicalVolumeDefinitions"] {
            for item in spec["installImage"][list].as_array().into_iter().flatten() {
                let filesystem = item
                    .get("fileSystem")
                    .or_else(|| item.get("filesystem"))
                    .unwrap();
                assert_ne!(filesystem, "swap", "{}: swap is left out", row.command);
            }
        }
    }
    value
}

/// What CAPH's controller makes of `installImage.image` (name and url): the path the rescue
/// system saves the download to (`Image.GetDetails` with `GetImageSuffix`) and the suffix, or
/// why CAPH refuses it. Both words are pasted into `curl -sLo ""<path>"" ""<url>""`
/// (`DownloadImage`: Go's %q inside double quotes), so they reach the shell unquoted.
fn caph_download(image: &Value) -> Result<(String, &'static str), String> {
    let (Some(name), Some(url)) = (image["name"].as_str(), image["url"].as_str()) else {
        return Err(format!("CAPH needs name and url: {image}"));
    };
    if name.is_empty() || url.is_empty() {
        return Err("invalid image - need to specify either name and url or path".into());
    }
    let Some(suffix) = CAPH_URL_SUFFIXES
        .iter()
        .find(|suffix| url.ends_with(&format!(".{suffix}")))
    else {
        return Err(format!("unknown suffix in URL {url}"));
    };
    let shell_safe = |word: &str, extra: &[char]| {
        word.chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-/".contains(c) || extra.contains(&c))
    };
    if !shell_safe(name, &[]) {
        return Err(format!("the rescue shell would change the name {name:?}"));
    }
    // In a URL also `:`, `%`, `~` and a `#` inside the word, which bash leaves alone.
    if !shell_safe(url, &[':', '%', '~', '#']) {
        return Err(format!("the rescue shell would change the url {url:?}"));
    }
    Ok((format!("/root/{name}.{suffix}"), suffix))
}

fn run_row(
    dir: &Path,
    row: &Row,
    replacements: &[(&str, String)],
    env: &[(&str, String)],
) -> Output {
    let arguments: Vec<String> = row
        .command
        .split(' ')
        .map(|word| {
            replacements
                .iter()
                .fold(word.to_string(), |word, (from, to)| word.replace(from, to))
        })
        .collect();
    let started = Instant::now();
    let output = Command::new(env!("CARGO_BIN_EXE_caph-image"))
        .args(&arguments)
        .current_dir(dir)
        .envs(env.iter().map(|(key, value)| (key, value)))
        .env_remove("HETZNER_ROBOT_USER")
        .env_remove("HETZNER_ROBOT_PASSWORD")
        .env_remove("HETZNER_ROBOT_ENDPOINT")
        .env("SOURCE_DATE_EPOCH", "1700000000")
        .output()
        .expect("caph-image runs");
    eprintln!(
        "caph-image {} took {:.1}s",
        arguments.join(" "),
        started.elapsed().as_secs_f64()
    );
    assert!(
        output.status.success(),
        "caph-image {}:\n{}\n{}",
        row.command,
        stdout(&output),
        stderr(&output)
    );
    output
}

/// Runs the rows of `group` in `dir` and checks their templates; returns them per row.
fn run_group(
    crds: &Crds,
    group: Group,
    dir: &Path,
    replacements: &[(&str, String)],
    env: &[(&str, String)],
    expected_per_arch: usize,
) -> Vec<(String, Vec<Value>, Output)> {
    let mut results = Vec::new();
    for row in ROWS.iter().filter(|row| row.group == group) {
        let output = run_row(dir, row, replacements, env);
        let templates = printed_templates(row.command, &stdout(&output));
        let count = if row.count == 0 {
            expected_per_arch
        } else {
            row.count
        };
        assert_eq!(
            templates.len(),
            count,
            "{}:\n{}",
            row.command,
            stdout(&output)
        );
        let values: Vec<Value> = templates
            .iter()
            .map(|template| check_common(crds, row, template))
            .collect();
        (row.check)(&values);
        results.push((row.command.to_string(), values, output));
    }
    results
}

#[test]
fn the_table_covers_every_command_that_prints_a_template_in_both_formats() {
    let mut covered = BTreeSet::new();
    for row in ROWS {
        let command = PRINTING_COMMANDS
            .iter()
            .find(|command| row.command.starts_with(*command))
            .unwrap_or_else(|| panic!("{} is not a printing command", row.command));
        covered.insert((*command, row.command.contains("--output json")));
    }
    for command in PRINTING_COMMANDS {
        for json in [false, true] {
            assert!(
                covered.contains(&(command, json)),
                "no row runs `{command}` with {} output",
                if json { "JSON" } else { "text" }
            );
        }
    }
}

fn small_tree(dir: &Path) {
    let tree = dir.join("rootfs");
    fs::create_dir_all(tree.join("etc")).unwrap();
    fs::write(tree.join("etc/hostname"), "node\n").unwrap();
}

#[test]
fn templates_of_pack_pass_caph_crds() {
    let test = "templates_of_pack_pass_caph_crds";
    let Some(crds) = crds_or_skip(test) else {
        return;
    };
    let temp = tempfile::tempdir().unwrap();
    small_tree(temp.path());
    let results = run_group(&crds, Group::Pack, temp.path(), &[], &[], 1);
    assert_eq!(
        results.len(),
        ROWS.iter().filter(|r| r.group == Group::Pack).count()
    );
}

/// A zstd tarball through CAPH's own steps: its template's url and name give the path CAPH
/// saves to; CAPH's download command, run by bash with the real curl against a loopback server
/// that serves the file under its own name, fetches it (the `#.tar` is never sent); and
/// installimage's extraction of a `.tar` (no decompression option) with GNU tar and with
/// bsdtar unpacks the zstd stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zstd_template_downloads_as_caph_does_and_extracts_as_installimage_does() {
    let test = "a_zstd_template_downloads_as_caph_does_and_extracts_as_installimage_does";
    let missing: Vec<&str> = [
        "/usr/bin/curl",
        "/usr/bin/bsdtar",
        "/usr/bin/zstd",
        "/bin/bash",
    ]
    .into_iter()
    .filter(|tool| !Path::new(tool).exists())
    .collect();
    if !missing.is_empty() {
        eprintln!(
            "SKIPPED {test}: {missing:?} missing (Debian packages curl, libarchive-tools, zstd)"
        );
        return;
    }
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path();
    small_tree(dir);
    fs::create_dir_all(dir.join("rootfs/usr/share/doc")).unwrap();
    fs::write(
        dir.join("rootfs/usr/share/doc/marker"),
        "from the zstd tarball\n",
    )
    .unwrap();
    let file_name = "Debian-1200-bookworm-amd64-custom.tar.zst";
    let output = Command::new(env!("CARGO_BIN_EXE_caph-image"))
        .args(["pack", "rootfs", "-o", file_name, "--output", "json"])
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    let printed: Value = serde_json::from_str(&stdout(&output)).unwrap();
    let template = crd::yaml::document(printed["machine_template"].as_str().unwrap()).unwrap();
    let image = &template["spec"]["template"]["spec"]["installImage"]["image"];
    let (download, suffix) = caph_download(image).unwrap();
    assert_eq!(suffix, "tar");
    assert_eq!(download, "/root/Debian-1200-bookworm-amd64-custom.tar");

    // Serve the tarball under its own name; the user replaces only the placeholder prefix.
    let mirror = Mirror::start(
        IpAddr::V4(Ipv4Addr::LOCALHOST),
        [(
            format!("images/{file_name}"),
            fs::read(dir.join(file_name)).unwrap(),
        )]
        .into(),
    )
    .await
    .unwrap();
    let url = image["url"].as_str().unwrap().replace(
        URL_PREFIX.trim_end_matches('/'),
        &format!("{}/images", mirror.url()),
    );
    let rescue_root = dir.join("rescue");
    fs::create_dir_all(rescue_root.join("root")).unwrap();
    let saved = rescue_root.join(download.trim_start_matches('/'));
    // DownloadImage: fmt.Sprintf(`curl -sLo "%q" "%q"`, path, url); %q of these words is the
    // word in double quotes (checked shell-safe above), so bash gets ""word"".
    let script = format!("curl -sLo \"\"{}\"\" \"\"{url}\"\"", saved.display());
    let curl =
        tokio::task::spawn_blocking(move || Command::new("bash").arg("-c").arg(script).output())
            .await
            .unwrap()
            .unwrap();
    assert!(curl.status.success(), "{}", stderr(&curl));
    assert_eq!(mirror.requests(), [format!("images/{file_name}")]);
    assert_eq!(
        fs::read(&saved).unwrap(),
        fs::read(dir.join(file_name)).unwrap()
    );

    // installimage v1.0.8, extract_image: for IMAGE_FILE_TYPE "tar" no compression option.
    let with_gnu_tar = dir.join("hdd-tar");
    let with_bsdtar = dir.join("hdd-bsdtar");
    fs::create_dir_all(&with_gnu_tar).unwrap();
    fs::create_dir_all(&with_bsdtar).unwrap();
    let gnu = Command::new("tar")
        .args([
            "-x",
            "--anchored",
            "--numeric-owner",
            "--xattrs",
            "--xattrs-include=security.capability",
            "--xattrs-include=security.selinux",
            "--exclude",
            "sys",
            "--exclude",
            "proc",
            "--exclude",
            "dev",
            "-f",
        ])
        .arg(&saved)
        .arg("-C")
        .arg(&with_gnu_tar)
        .output()
        .unwrap();
    assert!(gnu.status.success(), "GNU tar: {}", stderr(&gnu));
    let bsd = Command::new("bsdtar")
        .args([
            "-x",
            "--numeric-owner",
            "--exclude",
            "^sys",
            "--exclude",
            "^proc",
            "--exclude",
            "^dev",
            "-f",
        ])
        .arg(&saved)
        .arg("-C")
        .arg(&with_bsdtar)
        .output()
        .unwrap();
    assert!(bsd.status.success(), "bsdtar: {}", stderr(&bsd));
    for root in [&with_gnu_tar, &with_bsdtar] {
        assert_eq!(
            fs::read_to_string(root.join("usr/share/doc/marker")).unwrap(),
            "from the zstd tarball\n"
        );
    }
}

/// The tarball test's spec under [`SPEC_NAME`], with a swap partition in its `[robot.disk]`
/// (which the templates leave out).
fn dedicated_spec(mirror: &str) -> String {
    const ROOT_PARTITION: &str = "[[robot.disk.partitions]]\nmount = \"/\"";
    let spec = crate::tarball_spec::tarball_spec(mirror);
    assert!(spec.contains(ROOT_PARTITION), "{spec}");
    spec.replace("debian-12-tarball-e2e", SPEC_NAME).replace(
        ROOT_PARTITION,
        &format!("[[robot.disk.partitions]]\nmount = \"swap\"\nfilesystem = \"swap\"\nsize = \"4G\"\n\n{ROOT_PARTITION}"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn templates_of_build_tarball_and_build_robot_pass_caph_crds() {
    let test = "templates_of_build_tarball_and_build_robot_pass_caph_crds";
    let Some(crds) = crds_or_skip(test) else {
        return;
    };
    if !is_root() {
        eprintln!("SKIPPED {test}: needs root (build tarball, build robot --sim)");
        return;
    }
    if !Path::new("/usr/bin/mmdebstrap").exists() {
        eprintln!("SKIPPED {test}: mmdebstrap is not installed (Debian package mmdebstrap)");
        return;
    }
    if let Err(error) = caph_sim::machine::SshMachines::new(Default::default()) {
        eprintln!("SKIPPED {test}: {error}");
        return;
    }
    let mirror = Mirror::start(
        IpAddr::V4(Ipv4Addr::LOCALHOST),
        release_artifacts(&VERSIONS(), &["amd64"]),
    )
    .await
    .unwrap();
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().canonicalize().unwrap();
    fs::write(dir.join("spec.toml"), dedicated_spec(&mirror.url())).unwrap();
    // RAID 1 with LVM on the simulated server's drives (the shipped raid1-lvm names NVMe ones).
    fs::write(
        dir.join("lvm.autosetup"),
        "DRIVE1 /dev/sda\nDRIVE2 /dev/sdb\nSWRAID 1\nSWRAIDLEVEL 1\nPART /boot ext4 1G\n\
         PART lvm vg0 all\nLV vg0 root / ext4 50G\nLV vg0 var /var ext4 all\n",
    )
    .unwrap();
    let replacements = [
        ("{gz}", format!("out/{TARBALL_STEM}.tar.gz")),
        ("{zst}", format!("out-zst/{TARBALL_STEM}.tar.zst")),
    ];
    tokio::task::spawn_blocking(move || {
        run_group(&crds, Group::Dedicated, &dir, &replacements, &[], 1);
    })
    .await
    .unwrap();
}

/// A request the simulator answered: method, path, status, when.
type Served = (String, String, Option<u16>, Instant);

/// `build hcloud` twice against the simulated cloud, the second time `--replace`: every
/// template passes the CRDs, and the replacement's window, in which CAPH's lookup finds two
/// x86 images, is the one request between naming the new snapshot and deleting the old.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn templates_of_build_hcloud_pass_caph_crds_and_replace_is_one_request() {
    let test = "templates_of_build_hcloud_pass_caph_crds_and_replace_is_one_request";
    let Some(crds) = crds_or_skip(test) else {
        return;
    };
    /// A thousandth of real time, as the other cloud tests run.
    const SCALE: f64 = 0.001;
    let log: Arc<Mutex<Vec<Served>>> = Arc::default();
    let observer = {
        let log = log.clone();
        Arc::new(move |record: &caph_sim::hcloud::RequestRecord| {
            log.lock().unwrap().push((
                record.method.clone(),
                record.path.clone(),
                record.status,
                Instant::now(),
            ));
        })
    };
    let cloud = match Cloud::start_observed(SCALE, Some(observer)).await {
        Ok(cloud) => cloud,
        Err(reason) => {
            eprintln!("SKIPPED {test}: {reason}");
            return;
        }
    };
    let architectures = Cloud::architectures();
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().to_path_buf();
    fs::write(dir.join("node.toml"), cloud.spec(SPEC_NAME, &architectures)).unwrap();
    let env: Vec<(&str, String)> = cloud.env().into_iter().collect();
    let results = {
        let dir = dir.clone();
        let count = architectures.len();
        tokio::task::spawn_blocking(move || run_group(&crds, Group::Cloud, &dir, &[], &env, count))
            .await
            .unwrap()
    };
    let (_, _, first) = &results[0];
    let first: Value = serde_json::from_slice(&first.stdout).unwrap();
    let snapshot_of = |arch: &str| {
        first["snapshots"]
            .as_array()
            .unwrap()
            .iter()
            .find(|snapshot| snapshot["architecture"] == arch)
            .map(|snapshot| snapshot["id"].as_str().unwrap().to_string())
            .unwrap()
    };
    let old_x86 = snapshot_of("x86");
    let state = cloud.state_with_nothing_left();
    let named: Vec<String> = state
        .images
        .iter()
        .filter(|image| image.architecture == "x86")
        .filter(|image| image.labels.get("caph-image-name").map(String::as_str) == Some(SPEC_NAME))
        .map(|image| image.id.to_string())
        .collect();
    assert_eq!(named.len(), 1, "CAPH finds one x86 image after --replace");
    let new_x86 = named[0].clone();
    assert_ne!(new_x86, old_x86);
    if architectures.contains(&"arm") {
        let arm = snapshot_of("arm");
        assert!(
            state.images.iter().any(|image| image.id.to_string() == arm),
            "the arm snapshot of the name stays"
        );
    }

    let log = log.lock().unwrap().clone();
    let put = log
        .iter()
        .position(|(method, path, status, _)| {
            method == "PUT" && *path == format!("/v1/images/{new_x86}") && *status == Some(200)
        })
        .expect("the new snapshot was named");
    let (method, path, status, closed_at) = &log[put + 1];
    assert_eq!(
        (method.as_str(), path.as_str(), *status),
        (
            "DELETE",
            format!("/v1/images/{old_x86}").as_str(),
            Some(204)
        ),
        "the request right after naming the new snapshot deletes the old one"
    );
    assert!(
        !log[..put]
            .iter()
            .any(|(method, path, _, _)| method == "DELETE"
                && *path == format!("/v1/images/{old_x86}")),
        "the old snapshot stays until the new one has the name"
    );
    let window = closed_at.duration_since(log[put].3);
    // An upper bound: the simulator answers the DELETE only after it has also removed the
    // snapshot's disk layer on this machine, while CAPH's lookup stops finding the old image
    // as soon as the DELETE is applied (crates/caph-hcloud/tests/it/replace.rs measures the
    // window itself).
    eprintln!(
        "build hcloud --replace: CAPH finds two x86 images for 1 request (the DELETE); from the \
         PUT's answer to the DELETE's {:.1} ms of real time here, {:.2} s of the simulator's time \
         (scaled by {SCALE})",
        window.as_secs_f64() * 1e3,
        window.as_secs_f64() / SCALE
    );

    // A replacement whose DELETE of the old snapshot fails inside the window: the build fails,
    // its cleanup deletes the new snapshot, and CAPH finds the old one alone again.
    cloud.sim.inject(caph_sim::hcloud::Fault::fail(
        "DELETE /images/{id}",
        1,
        403,
        "forbidden",
    ));
    let failed = {
        let dir = dir.clone();
        let env = cloud.env();
        tokio::task::spawn_blocking(move || {
            Command::new(env!("CARGO_BIN_EXE_caph-image"))
                .args([
                    "build",
                    "hcloud",
                    "node.toml",
                    "--arch",
                    "x86",
                    "--replace",
                    "--no-progress",
                ])
                .current_dir(dir)
                .envs(env)
                .output()
                .unwrap()
        })
        .await
        .unwrap()
    };
    assert_eq!(failed.status.code(), Some(1), "{}", stderr(&failed));
    assert!(
        stderr(&failed).contains(&format!("deleting the replaced snapshot {new_x86}")),
        "{}",
        stderr(&failed)
    );
    let state = cloud.state_with_nothing_left();
    let x86_images: Vec<String> = state
        .images
        .iter()
        .filter(|image| {
            image.architecture == "x86" && image.kind == caph_sim::hcloud::ImageKind::Snapshot
        })
        .map(|image| image.id.to_string())
        .collect();
    assert_eq!(
        x86_images,
        std::slice::from_ref(&new_x86),
        "only the snapshot CAPH found before"
    );
    assert_eq!(
        state
            .images
            .iter()
            .find(|image| image.id.to_string() == new_x86)
            .unwrap()
            .labels
            .get("caph-image-name")
            .map(String::as_str),
        Some(SPEC_NAME)
    );
    cloud.assert_openapi_clean();
}
