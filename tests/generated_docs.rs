//! Shell completions and the man page are generated from the clap definitions: they exist for
//! every shell, parse with the real shells and groff where those are installed, and mention the
//! options of `migrate` (so they cannot lag behind the help).
#![allow(clippy::unwrap_used)]

mod util;

use std::io::Write;
use std::process::{Command, Stdio};
use util::*;

fn nixos_nspawn(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_nixos-nspawn"))
        .args(args)
        .output()
        .unwrap()
}

/// Pipe `text` into `cmd args…`; its exit status and stderr.
fn check_with(cmd: &str, args: &[&str], text: &[u8]) -> (bool, String) {
    let mut child = Command::new(cmd)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(text).unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn completions_are_generated_for_every_shell_and_know_migrate() {
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let out = nixos_nspawn(&["completions", shell]);
        assert_eq!(out.status.code(), Some(0), "{shell}");
        let text = String::from_utf8(out.stdout).unwrap();
        for needle in ["migrate", "plan-in", "rollback", "cleanup", "exclude"] {
            assert!(text.contains(needle), "{shell}: {needle} missing");
        }
    }
    // The bash script is valid bash.
    let bash = nixos_nspawn(&["completions", "bash"]).stdout;
    let (ok, err) = check_with("bash", &["-n"], &bash);
    assert!(ok, "bash -n: {err}");
    // zsh is optional (not in test.sh's list): checked where it is installed.
    if Command::new("zsh").arg("--version").output().is_ok() {
        let zsh = nixos_nspawn(&["completions", "zsh"]).stdout;
        let (ok, err) = check_with("zsh", &["-n"], &zsh);
        assert!(ok, "zsh -n: {err}");
    }
}

#[test]
fn the_man_page_renders_without_warnings_and_documents_migrate() {
    let out = nixos_nspawn(&["man"]);
    assert_eq!(out.status.code(), Some(0));
    let roff = out.stdout;
    let text = String::from_utf8(roff.clone()).unwrap();
    assert!(text.is_ascii(), "non-ASCII characters must be roff escapes");
    for needle in [
        ".TH nixos-nspawn 1",
        "NIXOS-NSPAWN MIGRATE",
        "plan\\-in",
        "4  refused",
    ] {
        assert!(text.contains(needle), "{needle} missing from the man page");
    }
    if have_tool("groff", "groff-base") {
        let (ok, err) = check_with("groff", &["-man", "-Tutf8", "-ww", "-z"], &roff);
        assert!(ok && err.is_empty(), "groff: {err}");
    }
}
