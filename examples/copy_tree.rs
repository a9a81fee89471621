//! Benchmark entry point for the state engine: `copy_tree SRC DST [--verify=full|metadata|none]
//! [--raw]`. Without `--raw` it runs `migrate_state` (staging dir, journal, syncfs, verification,
//! rename); with `--raw` only the copy engine. DST must not exist. `--verify-only` compares
//! SRC and an existing DST (full unless `--verify=metadata`).
use std::path::PathBuf;
use std::process::ExitCode;

use nixos_nspawn::state::{self, MigrateStateOptions, NoProgress, StateMode, Verify};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut verify = Verify::None;
    let mut raw = false;
    let mut verify_only = false;
    let mut paths = Vec::new();
    for a in &args {
        match a.as_str() {
            "--verify=full" => verify = Verify::Full,
            "--verify=metadata" => verify = Verify::Metadata,
            "--verify=none" => verify = Verify::None,
            "--raw" => raw = true,
            "--verify-only" => verify_only = true,
            p => paths.push(PathBuf::from(p)),
        }
    }
    let [src, dst] = paths.as_slice() else {
        eprintln!("usage: copy_tree SRC DST [--verify=full|metadata|none] [--raw | --verify-only]");
        return ExitCode::from(2);
    };
    let r = if verify_only {
        let level = if verify == Verify::None {
            Verify::Full
        } else {
            verify
        };
        state::verify_tree(src, dst, level).map(|r| r.summary())
    } else if raw {
        state::copy_tree_raw(src, dst, &NoProgress).map(|r| format!("{r:?}"))
    } else {
        let opts = MigrateStateOptions {
            mode: StateMode::Copy,
            verify,
            force: false,
            progress: &NoProgress,
            recheck: Verify::Metadata,
        };
        state::migrate_state(src, dst, &opts).map(|o| match o {
            state::StateOutcome::Copied { copy, verify, .. } => format!(
                "copied {} entries, {} bytes; verify: {}",
                copy.entries,
                copy.bytes,
                verify.summary()
            ),
            other => format!("{other:?}"),
        })
    };
    match r {
        Ok(s) => {
            if std::env::var_os("COPY_TREE_QUIET").is_none() {
                println!("{s}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("copy_tree: {e:#}");
            ExitCode::FAILURE
        }
    }
}
