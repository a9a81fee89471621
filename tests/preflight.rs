//! Every write is checked before the first one (issue 7, item 3 and the preflight): `--output`
//! aimed at a foreign file, a legacy `.conf`, another container's legacy state or the store is
//! refused with a message naming the file and the fix, and a refused run leaves the host tree
//! exactly as it was (bytes, modes, owners and every timestamp), although the state copies
//! come before the Nix file in the plan. With `--force` a foreign file is replaced and kept as
//! `FILE.bak-TIME`; legacy locations and the store are refused even then.
#![allow(clippy::unwrap_used)]

mod util;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use util::*;

fn yes(root: &Path, stand_ins: &StandIns, extra: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_nixos-nspawn"))
        .arg("--root")
        .arg(root)
        .args(["migrate", "--yes"])
        .args(extra)
        .env("PATH", stand_ins.path_env())
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// Run `--yes` with `extra`, expect a refusal mentioning every `needles`, and an unchanged tree.
fn refused(root: &TestRoot, extra: &[&str], needles: &[&str]) -> String {
    age_atimes(root.path());
    refused_aged(root, extra, needles)
}

/// [`refused`] on a tree whose atimes were aged already.
fn refused_aged(root: &TestRoot, extra: &[&str], needles: &[&str]) -> String {
    let stand_ins = StandIns::new(&[]);
    let before = snapshot(root.path());
    let out = yes(root.path(), &stand_ins, extra);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    // 4: refused before the first write (see `--help`, "Exit codes").
    assert_eq!(
        out.status.code(),
        Some(4),
        "{extra:?} was not refused:\n{err}"
    );
    assert!(
        err.starts_with("nixos-nspawn: nothing was changed"),
        "{err}"
    );
    // The old prefixes read oddly ("container check:", "container (the declarative …):").
    assert!(
        !err.contains("container check") && !err.contains("container ("),
        "{err}"
    );
    for n in needles {
        assert!(err.contains(n), "{extra:?}: message lacks {n:?}:\n{err}");
    }
    assert_same(
        &format!("after the refused {extra:?}"),
        &before,
        &snapshot(root.path()),
    );
    err
}

#[test]
fn output_over_the_hosts_configuration_is_refused_without_force() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let root = TestRoot::fixture("example");
    refused(
        &root,
        &["--output", "/etc/nixos/configuration.nix"],
        &[
            "/etc/nixos/configuration.nix exists and was not written by nixos-nspawn",
            "--force",
            "Choose another --output",
        ],
    );
}

#[test]
fn output_over_a_legacy_conf_or_state_is_refused_even_with_force() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let root = TestRoot::fixture("example");
    // An imperative container's .conf.
    refused(
        &root,
        &["--force", "--output", "/etc/nixos-containers/scratch.conf"],
        &[
            "/etc/nixos-containers/scratch.conf",
            "legacy files are only ever read",
        ],
    );
    // A file inside another container's legacy state (scratch is not migrated in this run).
    refused(
        &root,
        &[
            "--force",
            "--only",
            "web",
            "--output",
            "/var/lib/nixos-containers/scratch/etc/nixos/configuration.nix",
        ],
        &[
            "/var/lib/nixos-containers/scratch/etc/nixos/configuration.nix",
            "legacy",
        ],
    );
    // Through a link: /etc/nixos/legacy -> /var/lib/nixos-containers is resolved first.
    std::os::unix::fs::symlink(
        "/var/lib/nixos-containers",
        root.path().join("etc/nixos/legacy"),
    )
    .unwrap();
    refused(
        &root,
        &["--force", "--output", "/etc/nixos/legacy/new.nix"],
        &["it leads to /var/lib/nixos-containers/new.nix", "legacy"],
    );
    // A container's new root (written by the copy, its links are the guest's).
    refused(
        &root,
        &["--force", "--output", "/var/lib/machines/web/etc/x.nix"],
        &["/var/lib/machines (the containers' root file systems"],
    );
    // The store, through /etc/static.
    refused(
        &root,
        &["--force", "--output", "/etc/static/nspawn.nix"],
        &["Nix store"],
    );
}

#[test]
fn a_foreign_file_is_replaced_with_force_and_kept_as_a_backup() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let root = TestRoot::fixture("example");
    let target = root.path().join("etc/nixos/containers.nix");
    std::fs::write(&target, "{ my = \"hand-written\"; }\n").unwrap();
    refused(
        &root,
        &["--only", "web", "--output", "/etc/nixos/containers.nix"],
        &["/etc/nixos/containers.nix exists and was not written by nixos-nspawn"],
    );
    let stand_ins = StandIns::new(&[]);
    let out = yes(
        root.path(),
        &stand_ins,
        &[
            "--only",
            "web",
            "--force",
            "--output",
            "/etc/nixos/containers.nix",
        ],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        matches!(out.status.code(), Some(0 | 3)),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let new = std::fs::read_to_string(&target).unwrap();
    assert!(
        new.starts_with("# Generated by `nixos-nspawn migrate`"),
        "{new}"
    );
    let backups: Vec<_> = std::fs::read_dir(root.path().join("etc/nixos"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("containers.nix.bak-"))
        .collect();
    assert_eq!(backups.len(), 1, "{backups:?}");
    assert_eq!(
        std::fs::read_to_string(root.path().join("etc/nixos").join(&backups[0])).unwrap(),
        "{ my = \"hand-written\"; }\n"
    );
    assert!(
        text.contains(&format!(
            "kept the previous /etc/nixos/containers.nix as /etc/nixos/{}",
            backups[0]
        )),
        "{text}"
    );
    // Our own file, unchanged: no further backup on a re-run.
    let out = yes(
        root.path(),
        &stand_ins,
        &["--only", "web", "--output", "/etc/nixos/containers.nix"],
    );
    assert!(matches!(out.status.code(), Some(0 | 3)));
    assert_eq!(
        std::fs::read_dir(root.path().join("etc/nixos"))
            .unwrap()
            .filter(|e| e
                .as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .contains(".bak-"))
            .count(),
        1
    );
}

/// The dry run says what `--yes` would refuse, as a needs-a-human warning.
#[test]
fn a_dry_run_reports_what_yes_would_refuse() {
    let root = TestRoot::fixture("example");
    let out = root.run(&[
        "migrate",
        "--dry-run",
        "--json",
        "--output",
        "/etc/nixos-containers/scratch.conf",
    ]);
    assert_eq!(out.status.code(), Some(3));
    let j = json(&out);
    let w: Vec<&serde_json::Value> = j["problems"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|w| w["code"] == "would-refuse")
        .collect();
    assert_eq!(w.len(), 1, "{}", j["problems"]);
    assert!(
        w[0]["message"]
            .as_str()
            .unwrap()
            .contains("/etc/nixos-containers/scratch.conf"),
        "{}",
        w[0]
    );
}

/// A destination directory that cannot be written (here: immutable) is found before the
/// first write, not after the state copies.
#[test]
fn an_unwritable_destination_is_found_before_anything_is_written() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let root = TestRoot::fixture("example");
    let dir = root.path().join("etc/nixos");
    age_atimes(root.path());
    let ok = Command::new("chattr")
        .arg("+i")
        .arg(&dir)
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        eprintln!("skipped: chattr +i is not supported here");
        return;
    }
    let err = std::panic::catch_unwind(|| {
        refused_aged(&root, &[], &["/etc/nixos", "cannot write to", "read-only"]);
        // The dry run sees it too, through its own read-only view.
        let out = root.run(&["migrate", "--dry-run", "--json"]);
        let j = json(&out);
        assert!(
            j["problems"]
                .as_array()
                .unwrap()
                .iter()
                .any(|w| w["code"] == "would-refuse"
                    && w["message"]
                        .as_str()
                        .unwrap()
                        .contains("cannot write to /etc/nixos")),
            "{}",
            j["problems"]
        );
    });
    let _ = Command::new("chattr").arg("-i").arg(&dir).status();
    err.unwrap();
}
