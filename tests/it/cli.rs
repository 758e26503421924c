//! The command line: exit codes, text and JSON output, determinism, help and completions.

use expect_test::expect;

use crate::{caph_image, repo, stderr, stdout};

#[test]
fn validate_exit_codes() {
    let valid = caph_image(
        &repo(),
        &[
            "validate",
            "images/ubuntu-24.04-k8s-1.36.toml",
            "images/debian-12-k8s-1.36.toml",
        ],
    );
    assert_eq!(valid.status.code(), Some(0), "{}", stderr(&valid));
    assert!(
        stdout(&valid)
            .contains("images/ubuntu-24.04-k8s-1.36.toml: valid (ubuntu-24.04-k8s-v1.36.4")
    );

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("bad.toml"),
        "[image]\nname = \"v1.31.2+k3s\"\nsurprise = 1\n",
    )
    .unwrap();
    let invalid = caph_image(dir.path(), &["validate", "bad.toml"]);
    assert_eq!(invalid.status.code(), Some(1));
    expect![[r#"
        bad.toml:1:1: base is missing; add a [base] table
        bad.toml:1:1: kubernetes is missing; add a [kubernetes] table
        bad.toml:1:1: containerd is missing; add a [containerd] table
        bad.toml:1:1: runc is missing; add a [runc] table
        bad.toml:1:1: crictl is missing; add a [crictl] table
        bad.toml:2:8: image.name "v1.31.2+k3s" is not a valid label value: '+' is not allowed; use [A-Za-z0-9._-], at most 63 characters, starting and ending with a letter or digit
        bad.toml:3:1: image.surprise is not a known key; known keys in [image]: name, description, labels
    "#]]
    .assert_eq(&stdout(&invalid));
    assert!(stderr(&invalid).contains("bad.toml: 7 problems"));

    let usage = caph_image(&repo(), &["validate"]);
    assert_eq!(usage.status.code(), Some(2));
    let unknown_flag = caph_image(&repo(), &["validate", "--frobnicate", "x.toml"]);
    assert_eq!(unknown_flag.status.code(), Some(2));
}

#[test]
fn validate_json() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("bad.toml"), "[image\n").unwrap();
    let output = caph_image(dir.path(), &["validate", "--output", "json", "bad.toml"]);
    assert_eq!(output.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_str(&stdout(&output)).unwrap();
    assert_eq!(report[0]["valid"], false);
    assert_eq!(report[0]["problems"][0]["line"], 1);
    assert_eq!(report[0]["problems"][0]["file"], "bad.toml");
}

#[test]
fn plan_is_deterministic_and_readable() {
    let args = [
        "plan",
        "images/ubuntu-24.04-k8s-1.36.toml",
        "--target",
        "tarball",
        "--arch",
        "arm64",
    ];
    let first = caph_image(&repo(), &args);
    let second = caph_image(&repo(), &args);
    assert_eq!(first.status.code(), Some(0), "{}", stderr(&first));
    assert_eq!(first.stdout, second.stdout);
    let text = stdout(&first);
    assert!(text.starts_with("#!/bin/bash\n# caph-image plan: image ubuntu-24.04-k8s-v1.36.4, target tarball, architecture arm\n"));
    assert!(text.contains("containerd-2.3.4-linux-arm64.tar.gz"));
    assert!(
        !text.contains("fstrim"),
        "the tarball target has no block device to trim"
    );

    let json = caph_image(
        &repo(),
        &["plan", "images/debian-12-k8s-1.36.toml", "--output", "json"],
    );
    let plan: serde_json::Value = serde_json::from_str(&stdout(&json)).unwrap();
    assert_eq!(plan["target"], "hcloud");
    assert_eq!(
        plan["steps"].as_array().unwrap().last().unwrap()["name"],
        "hygiene"
    );
}

#[test]
fn plan_of_an_invalid_spec_fails_with_the_diagnostics() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("bad.toml"), "nonsense = true\n").unwrap();
    let output = caph_image(dir.path(), &["plan", "bad.toml"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(stderr(&output).contains("bad.toml:1:1: nonsense is not a known key"));
    assert!(stdout(&output).is_empty());
}

#[test]
fn bad_architecture_is_a_usage_error() {
    let output = caph_image(
        &repo(),
        &["plan", "images/debian-12-k8s-1.36.toml", "--arch", "mips"],
    );
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains("\"mips\" is not an architecture; use x86 or arm"));
}

#[test]
fn help_teaches_with_examples() {
    let output = caph_image(&repo(), &["--help"]);
    assert_eq!(output.status.code(), Some(0));
    let text = stdout(&output);
    for needle in [
        "Examples:",
        "caph-image validate",
        "Exit codes",
        "HCLOUD_TOKEN",
        "--output",
    ] {
        assert!(text.contains(needle), "--help lacks {needle}");
    }
    let plan_help = stdout(&caph_image(&repo(), &["plan", "--help"]));
    assert!(plan_help.contains("deterministic"));
}

#[test]
fn completions() {
    for shell in ["bash", "zsh", "fish"] {
        let output = caph_image(&repo(), &["completions", shell]);
        assert_eq!(output.status.code(), Some(0));
        assert!(
            stdout(&output).contains("validate"),
            "{shell} completion lacks subcommands"
        );
    }
}

#[test]
fn a_missing_token_says_what_to_do() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_caph-image"))
        .args(["build", "hcloud", "images/debian-12-k8s-1.36.toml"])
        .current_dir(repo())
        .env_remove("HCLOUD_TOKEN")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    // Both ways forward: a token of a real project, or the simulator.
    assert!(
        stderr(&output).contains("HCLOUD_TOKEN is not set: export a read-write API token")
            && stderr(&output).contains("or try the whole build without an account")
            && stderr(&output).contains("caph-image build hcloud SPEC --sim"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn validate_strict_fails_on_end_of_life_warnings() {
    // Kubernetes 1.34 reached its end of life on 2026-10-27 (kubernetes.io/releases): a warning,
    // which fails validation only under --strict.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("old.toml"),
        "[image]\nname = \"old\"\n\n[base]\ndistribution = \"debian\"\nversion = \"12\"\n\n[kubernetes]\nversion = \"1.34.2\"\n\n[containerd]\nversion = \"2.1.5\"\n\n[runc]\nversion = \"1.3.6\"\n\n[crictl]\nversion = \"1.34.0\"\n",
    )
    .unwrap();
    let lenient = caph_image(dir.path(), &["validate", "old.toml"]);
    assert_eq!(lenient.status.code(), Some(0), "{}", stderr(&lenient));
    let text = stdout(&lenient);
    assert!(
        text.contains("old.toml:9:11: warning: kubernetes.version Kubernetes 1.34 reached its end of life on 2026-10-27"),
        "{text}"
    );
    assert!(text.contains("old.toml: valid, "), "{text}");
    let strict = caph_image(dir.path(), &["validate", "--strict", "old.toml"]);
    assert_eq!(strict.status.code(), Some(1), "{}", stdout(&strict));
    assert!(
        stdout(&strict).contains("(--strict)"),
        "{}",
        stdout(&strict)
    );
    let json = caph_image(
        dir.path(),
        &["validate", "--strict", "--output", "json", "old.toml"],
    );
    let reports: serde_json::Value = serde_json::from_str(&stdout(&json)).unwrap();
    assert_eq!(reports[0]["valid"], false);
    assert_eq!(reports[0]["warnings"][0]["field"], "kubernetes.version");
}
