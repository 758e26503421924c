//! Issue 12: hostile and careless inputs to the real binary (paths, terminals, closed pipes),
//! each refused with the path and the rule, or handled quietly, never a hang or a panic.

use std::os::unix::fs::symlink;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::{repo, stderr, stdout};

/// How long a refusal may take before the test calls it a hang: reading a FIFO without a
/// writer never ends.
const HANG: Duration = Duration::from_secs(20);

/// Runs `caph-image` with `args` in `dir`; a run that outlives [`HANG`] is killed and fails the
/// test.
fn run(dir: &Path, args: &[&str]) -> Output {
    run_with(dir, args, &[])
}

/// [`run`] with environment variables set.
fn run_with(dir: &Path, args: &[&str], environment: &[(&str, &str)]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_caph-image"))
        .args(args)
        .envs(environment.iter().copied())
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("caph-image runs");
    let started = Instant::now();
    while child.try_wait().expect("wait").is_none() {
        if started.elapsed() > HANG {
            let _ = child.kill();
            let output = child.wait_with_output().expect("output");
            panic!(
                "caph-image {args:?} hung for {HANG:?}; stderr so far: {}",
                stderr(&output)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("output")
}

/// The shipped Debian spec copied into `dir` as `spec.toml`, with `extra` appended.
fn spec_in(dir: &Path, extra: &str) {
    let shipped =
        std::fs::read_to_string(repo().join("images/debian-12-k8s-1.36.toml")).expect("spec");
    std::fs::write(dir.join("spec.toml"), format!("{shipped}{extra}")).expect("write spec");
}

fn mkfifo(path: &Path) {
    let status = Command::new("mkfifo")
        .arg(path)
        .status()
        .expect("mkfifo runs");
    assert!(status.success(), "mkfifo {}", path.display());
}

/// Everything the run printed, on one string, for messages.
fn printed(output: &Output) -> String {
    format!("{}{}", stdout(output), stderr(output))
}

/// Asserts that the run ended with `code` and printed `message`.
fn assert_refused(output: &Output, code: i32, message: &str) {
    let text = printed(output);
    assert_eq!(output.status.code(), Some(code), "{text}");
    assert!(text.contains(message), "{message:?} is not in:\n{text}");
}

#[test]
fn issue_12_a_spec_cannot_reach_outside_its_directory_through_a_symlink() {
    let outside = tempfile::tempdir().expect("dir");
    std::fs::write(outside.path().join("secret"), "root:x:0:0\n").expect("secret");
    let dir = tempfile::tempdir().expect("dir");
    symlink(outside.path().join("secret"), dir.path().join("motd")).expect("symlink");
    spec_in(
        dir.path(),
        "\n[[system.files]]\npath = \"/etc/motd\"\nsource = \"motd\"\n",
    );
    let output = run(dir.path(), &["validate", "spec.toml"]);
    assert_eq!(output.status.code(), Some(1), "{}", printed(&output));
    let text = printed(&output);
    assert!(
        text.contains("system.files[0].source \"motd\" cannot be read: resolves to")
            && text.contains("outside")
            && text.contains("files a spec names must be inside the spec's directory"),
        "{text}"
    );
    // A symlink that stays inside is fine.
    std::fs::write(dir.path().join("real-motd"), "hello\n").expect("motd");
    std::fs::remove_file(dir.path().join("motd")).expect("rm");
    symlink("real-motd", dir.path().join("motd")).expect("symlink");
    let output = run(dir.path(), &["validate", "spec.toml"]);
    assert_eq!(output.status.code(), Some(0), "{}", printed(&output));
}

#[test]
fn issue_12_fifos_and_devices_are_refused_without_hanging() {
    let dir = tempfile::tempdir().expect("dir");
    // A script that is a FIFO: reading it would wait for a writer for ever.
    mkfifo(&dir.path().join("fifo.sh"));
    spec_in(dir.path(), "\n[[system.scripts]]\npath = \"fifo.sh\"\n");
    let output = run(dir.path(), &["validate", "spec.toml"]);
    assert_refused(
        &output,
        1,
        "system.scripts[0].path \"fifo.sh\" cannot be read: is a FIFO, not a regular file: only regular files are read",
    );

    // The spec itself.
    mkfifo(&dir.path().join("fifo.toml"));
    let output = run(dir.path(), &["validate", "fifo.toml"]);
    assert_refused(
        &output,
        1,
        "fifo.toml:1:1: the spec file cannot be read: is a FIFO, not a regular file",
    );
    // A device reads for ever (/dev/zero) or never (/dev/null is empty, but not a file).
    let output = run(dir.path(), &["validate", "/dev/zero"]);
    assert_refused(&output, 1, "is a character device, not a regular file");

    // --layout and --tarball, refused before any Robot account is needed.
    std::fs::remove_file(dir.path().join("fifo.sh")).expect("rm");
    spec_in(dir.path(), "");
    mkfifo(&dir.path().join("layout.fifo"));
    let output = run(
        dir.path(),
        &[
            "build",
            "robot",
            "spec.toml",
            "--server",
            "1",
            "--layout",
            "layout.fifo",
        ],
    );
    assert_eq!(output.status.code(), Some(1), "{}", printed(&output));
    assert!(
        stderr(&output).contains("--layout layout.fifo") && stderr(&output).contains("is a FIFO"),
        "{}",
        printed(&output)
    );
    mkfifo(&dir.path().join("Debian-1200-bookworm-amd64-k8s.tar.gz"));
    // Credentials are there (and never used): the tarball is refused before the Robot is asked.
    let credentials = [
        ("HETZNER_ROBOT_USER", "user"),
        ("HETZNER_ROBOT_PASSWORD", "password"),
        ("HETZNER_ROBOT_ENDPOINT", "http://127.0.0.1:9"),
    ];
    let output = run_with(
        dir.path(),
        &[
            "build",
            "robot",
            "spec.toml",
            "--server",
            "1",
            "--tarball",
            "Debian-1200-bookworm-amd64-k8s.tar.gz",
        ],
        &credentials,
    );
    assert_refused(
        &output,
        1,
        "--tarball Debian-1200-bookworm-amd64-k8s.tar.gz is a FIFO",
    );
}

#[test]
fn issue_12_files_past_their_size_limit_are_refused_with_the_limit() {
    let dir = tempfile::tempdir().expect("dir");
    // Sparse: the size is what counts, not the blocks.
    let big = std::fs::File::create(dir.path().join("big.sh")).expect("file");
    big.set_len(17 << 20).expect("size");
    spec_in(dir.path(), "\n[[system.scripts]]\npath = \"big.sh\"\n");
    let output = run(dir.path(), &["validate", "spec.toml"]);
    assert_refused(
        &output,
        1,
        "\"big.sh\" cannot be read: holds more than 16777216 bytes, the most this file may hold",
    );
    let spec = std::fs::File::create(dir.path().join("big.toml")).expect("file");
    spec.set_len(2 << 20).expect("size");
    let output = run(dir.path(), &["validate", "big.toml"]);
    assert_refused(
        &output,
        1,
        "big.toml:1:1: the spec file cannot be read: holds more than 1048576 bytes",
    );
}

#[test]
fn issue_12_pack_refuses_an_output_name_that_is_not_one_word() {
    let dir = tempfile::tempdir().expect("dir");
    std::fs::create_dir_all(dir.path().join("tree/etc")).expect("tree");
    let output = run(
        dir.path(),
        &[
            "pack",
            "tree",
            "-o",
            "Debian-1200-bookworm-amd64-a b.tar.gz",
        ],
    );
    assert_refused(
        &output,
        1,
        "the file name holds a space: it goes into installimage's IMAGE line",
    );
    assert_eq!(
        std::fs::read_dir(dir.path()).expect("dir").count(),
        1,
        "nothing written"
    );
}

/// Runs `caph-image` with its standard output a pipe whose reading end is already closed, as
/// `caph-image ... | head -0` gives it.
fn run_into_closed_pipe(args: &[&str]) -> Output {
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    let child = Command::new(env!("CARGO_BIN_EXE_caph-image"))
        .args(args)
        .current_dir(repo())
        .stdin(Stdio::null())
        .stdout(writer)
        .stderr(Stdio::piped())
        .spawn()
        .expect("caph-image runs");
    child.wait_with_output().expect("output")
}

#[test]
fn issue_12_a_closed_stdout_ends_quietly_with_the_documented_exit_code() {
    for (args, code) in [
        (&["plan", "images/debian-12-k8s-1.36.toml"][..], 0),
        (&["validate", "images/debian-12-k8s-1.36.toml"][..], 0),
        (
            &[
                "validate",
                "--output",
                "json",
                "images/debian-12-k8s-1.36.toml",
            ][..],
            0,
        ),
        (&["completions", "bash"][..], 0),
        (&["man"][..], 0),
        (&["--help"][..], 0),
        (&["validate", "no-such-spec.toml"][..], 1),
    ] {
        let output = run_into_closed_pipe(args);
        assert_eq!(
            output.status.code(),
            Some(code),
            "{args:?}: {}",
            stderr(&output)
        );
        let messages = stderr(&output);
        assert!(
            !messages.contains("panicked") && !messages.contains("Broken pipe"),
            "{args:?}: {messages}"
        );
    }
}

/// The exit codes, as `--help`, the man page and the README give them.
const EXIT_CODES: &[&str] = &[
    "  0    success, also when the reader of standard output stops early (such as head)",
    "  1    failure: an invalid spec, a refused input, a failed build, a failed verify check",
    "  2    wrong usage: an unknown flag, a missing argument, input verify refuses",
    "  130  interrupted (Ctrl-C or SIGTERM), after cleanup",
];

#[test]
fn issue_12_one_table_of_exit_codes_in_help_man_page_and_readme() {
    let help = stdout(&run(&repo(), &["--help"]));
    let man = stdout(&run(&repo(), &["man"]));
    let readme = std::fs::read_to_string(repo().join("README.md")).expect("README");
    for row in EXIT_CODES {
        assert!(help.contains(row), "--help lacks {row:?}:\n{help}");
        // roff escapes the dash and the backquote.
        let (code, meaning) = row
            .trim_start()
            .split_once(char::is_whitespace)
            .expect("row");
        let meaning = meaning.trim_start();
        assert!(
            man.contains(code) && man.contains(&meaning.replace('-', "\\-").replace('`', "\\`"))
                || man.contains(meaning),
            "the man page lacks {row:?}"
        );
        let readme_row = format!("| {code} | {meaning} |");
        assert!(
            readme.contains(&readme_row),
            "README.md lacks {readme_row:?}"
        );
    }
}

#[test]
fn issue_12_control_characters_from_users_are_escaped_and_messages_stay_on_their_lines() {
    let dir = tempfile::tempdir().expect("dir");
    let hostile = "spec\u{1b}[2J\nerror: all good.toml";
    let output = run(dir.path(), &["validate", hostile]);
    assert_eq!(output.status.code(), Some(1));
    let output = run(dir.path(), &["plan", hostile]);
    let text = stderr(&output);
    assert!(
        text.contains("spec\\u{1b}[2J\\nerror: all good.toml:1:1: the spec file does not exist"),
        "{text}"
    );
    let output = run(
        dir.path(),
        &["pack", ".", "-o", "a\u{7}\u{1b}]0;title\u{7}.tar.gz"],
    );
    let text = stderr(&output);
    assert!(
        text.contains("a\\u{7}\\u{1b}]0;title\\u{7}.tar.gz"),
        "{text}"
    );
    for output in [run(dir.path(), &["plan", hostile]), output] {
        let text = stderr(&output);
        assert!(
            !text.chars().any(|c| c.is_control() && c != '\n'),
            "{text:?}"
        );
        for line in text.lines() {
            assert!(
                line.starts_with("error: ") || line.starts_with("  ") || line.contains(":1:1: "),
                "a line of its own: {line:?} in {text:?}"
            );
        }
    }
}

#[test]
fn issue_12_a_server_type_flag_cannot_add_a_line_to_the_printed_template() {
    let output = run(
        &repo(),
        &[
            "build",
            "hcloud",
            "images/debian-12-k8s-1.36.toml",
            "--arch",
            "x86",
            "--server-type",
            "cx23\n      imageName: other",
        ],
    );
    assert_refused(&output, 2, "holds a line break (\\n): write one word");
}
