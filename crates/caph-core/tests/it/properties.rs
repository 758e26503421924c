//! Property tests (issue 12) of the spec loader, on the shipped specs broken at random: it never
//! panics, every diagnostic is one line with a position inside the file, and a spec it accepts
//! is one the plan renderer accepts too (no value that breaks a line gets through).
//!
//! `PROPTEST_CASES` sets the number of cases (default 128, about a second);
//! `cargo xtask fuzz --minutes N` runs them longer.

use std::path::PathBuf;

use caph_core::Arch;
use caph_core::plan::{self, Target};
use proptest::prelude::*;
use proptest::sample::Index;

use crate::DirFiles;
use crate::proptest_config::config;

fn images() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../images")
}

/// The shipped specs, as bytes.
fn shipped() -> Vec<Vec<u8>> {
    let mut specs: Vec<PathBuf> = std::fs::read_dir(images())
        .expect("images/")
        .map(|entry| entry.expect("entry").path())
        .filter(|path| {
            path.extension()
                .is_some_and(|extension| extension == "toml")
        })
        .collect();
    specs.sort();
    specs
        .iter()
        .map(|path| std::fs::read(path).expect("spec"))
        .collect()
}

/// Pieces that TOML, the loader's rules and line-oriented files each find hard.
const FRAGMENTS: &[&str] = &[
    "\n",
    "\r",
    "\r\n",
    "\"",
    "'",
    "\"\"\"",
    "[",
    "]",
    "[[",
    "]]",
    "{",
    "}",
    "=",
    ",",
    ".",
    "#",
    "\\",
    "\\n",
    "\\u001b",
    "\\u0000",
    "\\u2028",
    "\t",
    " ",
    "é",
    "\u{1b}[2J",
    "\u{202e}",
    "\u{0}",
    "0",
    "-1",
    "1e309",
    "99999999999999999999",
    "true",
    "inf",
    "nan",
    "1979-05-27",
    "/dev/sda\\nIMAGE x",
    "../../etc/shadow",
    "/etc//motd",
    "{server_number}",
    "lvm",
    "all",
    "crypt",
    "x = 1\n",
    "[robot]\n",
    "[robot.disk]\n",
    "[[system.files]]\n",
    "[[robot.disk.partitions]]\n",
    "[system.sysctls]\n",
    "\"a.b\" = \"1\\n2\"\n",
];

/// What a string value may become: valid TOML that each rule of the loader has to judge.
const VALUES: &[&str] = &[
    "",
    " ",
    "/dev/sda\\nIMAGE http://x/y.tar.gz",
    "/dev/sda IMAGE",
    "\\u001b[2J",
    "\\r",
    "\\u2028",
    "\\u000b",
    "#",
    "a#b",
    "../x",
    "/etc//x",
    "/dev/./sda",
    "all",
    "crypt",
    "1G",
    "0",
    "0M",
    "18446744073709551615T",
    "x86",
    "arm",
    "lvm",
    "vg0",
    "\\t",
    "é",
    "{server_number}",
    "https://example.com/a b",
    "https://example.com/\\n",
    "main\\ndeb http://x y main",
    "1.34.2",
    "v1.34.2",
    "ubuntu",
    "debian",
    "noble",
    "k8s-v1.34.2",
    "0644",
    "root:root",
];

/// One change to a spec's bytes.
#[derive(Debug, Clone)]
enum Mutation {
    /// The content of the string value on a line (`key = "..."`), replaced.
    ReplaceValue(Index, &'static str),
    Insert(Index, &'static str),
    InsertByte(Index, u8),
    Delete(Index, usize),
    DuplicateLine(Index),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        4 => (any::<Index>(), prop::sample::select(VALUES)).prop_map(|(at, text)| Mutation::ReplaceValue(at, text)),
        4 => (any::<Index>(), prop::sample::select(FRAGMENTS)).prop_map(|(at, text)| Mutation::Insert(at, text)),
        1 => (any::<Index>(), any::<u8>()).prop_map(|(at, byte)| Mutation::InsertByte(at, byte)),
        2 => (any::<Index>(), 1usize..40).prop_map(|(at, length)| Mutation::Delete(at, length)),
        1 => any::<Index>().prop_map(Mutation::DuplicateLine),
    ]
}

fn apply(bytes: &mut Vec<u8>, mutation: &Mutation) {
    let position = |at: &Index, bytes: &Vec<u8>| at.index(bytes.len() + 1);
    match mutation {
        Mutation::ReplaceValue(at, text) => {
            // Lines of the form `key = "value"`: the value is between the first `= "` and
            // the last `"`.
            let mut spans = Vec::new();
            let mut start = 0;
            for line in bytes.split(|b| *b == b'\n') {
                if let Some(open) = line.windows(3).position(|w| w == b"= \"")
                    && let Some(close) = line.iter().rposition(|b| *b == b'"')
                    && close > open + 2
                {
                    spans.push((start + open + 3, start + close));
                }
                start += line.len() + 1;
            }
            if !spans.is_empty() {
                let (from, to) = spans[at.index(spans.len())];
                bytes.splice(from..to, text.bytes());
            }
        }
        Mutation::Insert(at, text) => {
            let at = position(at, bytes);
            bytes.splice(at..at, text.bytes());
        }
        Mutation::InsertByte(at, byte) => {
            let at = position(at, bytes);
            bytes.insert(at, *byte);
        }
        Mutation::Delete(at, length) => {
            let at = position(at, bytes);
            let end = (at + length).min(bytes.len());
            bytes.drain(at..end);
        }
        Mutation::DuplicateLine(at) => {
            let lines: Vec<Vec<u8>> = bytes.split(|b| *b == b'\n').map(<[u8]>::to_vec).collect();
            let chosen = at.index(lines.len()).min(lines.len() - 1);
            let mut copy = lines[chosen].clone();
            copy.push(b'\n');
            let start: usize = lines[..chosen].iter().map(|line| line.len() + 1).sum();
            bytes.splice(start..start, copy);
        }
    }
}

proptest! {
    #![proptest_config(config(128))]

    #[test]
    fn broken_specs_get_positioned_one_line_diagnostics_or_a_plan(
        spec in any::<Index>(),
        mutations in prop::collection::vec(mutation(), 1..8),
    ) {
        let specs = shipped();
        let mut bytes = specs[spec.index(specs.len())].clone();
        for mutation in &mutations {
            apply(&mut bytes, mutation);
        }
        let lines = bytes.split(|b| *b == b'\n').count();
        match caph_core::spec::load("spec.toml", &bytes, &DirFiles(images())) {
            Ok(spec) => {
                for target in [Target::Hcloud, Target::Tarball] {
                    for arch in Arch::ALL {
                        let rendered = plan::render(&spec, target, arch);
                        prop_assert!(rendered.is_ok(), "a valid spec's plan was refused: {:?}", rendered.err());
                    }
                }
            }
            Err(diagnostics) => {
                prop_assert!(!diagnostics.0.is_empty());
                for diagnostic in &diagnostics.0 {
                    prop_assert_eq!(&diagnostic.file, "spec.toml");
                    prop_assert!(diagnostic.line >= 1 && diagnostic.line <= lines, "{diagnostic:?} in {lines} lines");
                    prop_assert!(diagnostic.column >= 1, "{diagnostic:?}");
                    let shown = diagnostic.to_string();
                    prop_assert!(!shown.contains(['\n', '\r']), "{shown:?}");
                    let position = format!("spec.toml:{}:{}: ", diagnostic.line, diagnostic.column);
                    prop_assert!(shown.starts_with(&position), "{shown:?}");
                }
            }
        }
    }
}
