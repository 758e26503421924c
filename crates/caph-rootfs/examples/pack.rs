//! A small command around `caph_rootfs::pack`, used by `cargo xtask bench pack` (and handy by
//! hand) until the CLI's `caph-image pack` exists.
//!
//! Usage: `pack [--compression none|gzip|zstd[:LEVEL]] [--plain] [--threads N] SOURCE OUTPUT`.
//! `OUTPUT` `-` writes the archive to stdout. `SOURCE_DATE_EPOCH` clamps mtimes. The summary is
//! printed as JSON on stderr.

use std::path::PathBuf;
use std::process::ExitCode;

use caph_rootfs::pack::{self, Compression, PackEvent, PackOptions};

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("pack: {message}");
            ExitCode::from(2)
        }
    }
}

fn run() -> Result<(), String> {
    let mut compression = Compression::gzip();
    let mut plain = false;
    let mut threads = 0;
    let mut positional = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--compression" => {
                let value = args.next().ok_or("--compression needs a value")?;
                compression = value.parse().map_err(|error| format!("{error}"))?;
            }
            "--plain" => plain = true,
            "--threads" => {
                let value = args.next().ok_or("--threads needs a value")?;
                threads = value
                    .parse()
                    .map_err(|_| format!("bad --threads {value:?}"))?;
            }
            _ if arg.starts_with("--") => return Err(format!("unknown option {arg}")),
            _ => positional.push(arg),
        }
    }
    let [source, output] = <[String; 2]>::try_from(positional)
        .map_err(|_| "usage: pack [--compression C] [--plain] [--threads N] SOURCE OUTPUT")?;

    let mut options = if plain {
        PackOptions::plain(compression)
    } else {
        PackOptions::rootfs(compression)
    };
    options.threads = threads;
    options.source_date_epoch = match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(value) => Some(
            value
                .parse()
                .map_err(|_| format!("bad SOURCE_DATE_EPOCH {value:?}"))?,
        ),
        Err(_) => None,
    };
    let mut on_event = |event: PackEvent| {
        if let PackEvent::Warning(warning) = event {
            eprintln!("warning: {warning}");
        }
    };
    let source = PathBuf::from(source);
    let summary = if output == "-" {
        pack::pack_to_writer(&source, std::io::stdout(), &options, &mut on_event)
    } else {
        pack::pack_to_path(&source, &PathBuf::from(output), &options, &mut on_event)
    }
    .map_err(|error| {
        let mut message = error.to_string();
        let mut cause = std::error::Error::source(&error);
        while let Some(inner) = cause {
            message.push_str(&format!(": {inner}"));
            cause = inner.source();
        }
        message
    })?;
    eprintln!(
        "{}",
        serde_json::to_string(&summary).map_err(|error| error.to_string())?
    );
    Ok(())
}
