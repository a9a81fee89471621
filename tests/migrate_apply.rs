//! `migrate --yes` end to end, as root on real files: the state of every container arrives
//! complete (every file type, owner, mode, xattr, ACL, time, hardlink and hole), the legacy
//! state is untouched (atimes included), nothing outside the two trees changes, escape symlinks
//! planted in a rootfs lead nowhere, a second run is a no-op, and a run killed at random points
//! resumes to the same result.
#![allow(clippy::unwrap_used)]

mod util;

use std::path::Path;
use std::process::{Command, Stdio};
use util::*;

fn apply(root: &Path, stand_ins: &StandIns, extra: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_nixos-nspawn"))
        .arg("--root")
        .arg(root)
        .args(["migrate", "--yes", "--json"])
        .args(extra)
        .env("PATH", stand_ins.path_env())
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn state_dirs(root: &Path) -> Vec<String> {
    let mut v = Vec::new();
    for base in ["var/lib/nixos-containers", "var/lib/containers"] {
        if let Ok(rd) = std::fs::read_dir(root.join(base)) {
            for e in rd {
                let e = e.unwrap();
                if e.path().join("etc/os-release").exists() {
                    v.push(format!("{base}/{}", e.file_name().to_string_lossy()));
                }
            }
        }
    }
    v.sort();
    v
}

#[test]
fn apply_copies_faithfully_and_a_second_run_is_a_no_op() {
    if !is_root() {
        eprintln!("skipped: needs root (device nodes, ownership, trusted xattrs)");
        return;
    }
    let root = TestRoot::fixture("example");
    let states = state_dirs(root.path());
    assert!(!states.is_empty());
    for s in &states {
        populate_rootfs(&root.path().join(s));
    }
    let outside = root.path().parent().unwrap().join("outside-canary");
    age_atimes(root.path());
    let legacy_before: Vec<_> = states
        .iter()
        .map(|s| snapshot(&root.path().join(s)))
        .collect();
    let whole_before = snapshot(root.path());
    let stand_ins = StandIns::new(&[]);

    let out = apply(root.path(), &stand_ins, &[]);
    let code = out.status.code().unwrap();
    assert!(
        code == 0 || code == 3,
        "exit {code}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = json(&out);
    // Without a terminal, progress is one line per container on stderr (never a bar).
    let stderr = String::from_utf8_lossy(&out.stderr);
    for s in &states {
        let name = Path::new(s)
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        // The last line of a container is printed when its copy is finished.
        let line = stderr
            .lines()
            .rfind(|l| {
                l.starts_with(&format!("nixos-nspawn: {name}: ")) && l.contains(" entries, ")
            })
            .unwrap_or_else(|| panic!("no progress line for {name} in:\n{stderr}"));
        let counts = line.split(": ").nth(2).unwrap().split(' ').next().unwrap();
        let (done, total) = counts.split_once('/').unwrap();
        assert_eq!(done, total, "{line}");
        assert!(
            !stderr.contains('\r') && !stderr.contains('\u{1b}'),
            "terminal codes without a terminal"
        );
    }

    for (s, before) in states.iter().zip(&legacy_before) {
        let name = Path::new(s)
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        // The legacy state is exactly as it was, atimes included.
        assert_same(
            &format!("legacy state {s}"),
            before,
            &snapshot(&root.path().join(s)),
        );
        // The new state is a faithful copy.
        let dest = root.path().join("var/lib/machines").join(&name);
        let (a, b) = (fidelity(&root.path().join(s)), fidelity(&dest));
        for (p, want) in &a {
            assert_eq!(Some(want), b.get(p), "{name}: {} differs", p.display());
        }
        assert_eq!(a.len(), b.len(), "{name}: extra entries in the copy");
        assert!(
            !root
                .path()
                .join(format!("var/lib/machines/.{name}.partial"))
                .exists()
        );
    }
    // Nothing outside the legacy state, the new state and the files the report lists changed.
    let written: Vec<String> = report["files_written"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|v| v.as_str().unwrap().trim_start_matches('/').to_string())
                .collect()
        })
        .unwrap_or_default();
    let whole_after = snapshot(root.path());
    for (p, b) in &whole_before {
        let ps = p.to_string_lossy();
        if ps.starts_with("var/lib/machines")
            || ps.starts_with("nix/var/nix/profiles/per-nspawn")
            || written
                .iter()
                .any(|w| ps == *w || w.starts_with(&format!("{ps}/")))
            || p.as_os_str().is_empty()
        {
            continue;
        }
        // Parent directories of new files get new mtimes; everything else must be identical.
        let is_parent_of_new = whole_after
            .keys()
            .any(|k| k.parent() == Some(p.as_path()) && !whole_before.contains_key(k));
        if is_parent_of_new {
            continue;
        }
        assert_eq!(
            Some(b),
            whole_after.get(p),
            "{} changed outside the plan",
            p.display()
        );
    }
    assert!(!outside.exists());

    // Second run: nothing is rewritten, not even a timestamp.
    let new_state = snapshot(&root.path().join("var/lib/machines"));
    let nix_file = root.path().join("etc/nixos/nspawn-containers.nix");
    let nix_before = snapshot(nix_file.parent().unwrap());
    let out2 = apply(root.path(), &stand_ins, &[]);
    assert_eq!(
        out2.status.code(),
        out.status.code(),
        "{}",
        String::from_utf8_lossy(&out2.stderr)
    );
    assert_same(
        "second run, new state",
        &new_state,
        &snapshot(&root.path().join("var/lib/machines")),
    );
    assert_same(
        "second run, /etc/nixos",
        &nix_before,
        &snapshot(nix_file.parent().unwrap()),
    );
    let r2 = json(&out2);
    assert!(
        r2["files_written"].as_array().is_none_or(|a| a.is_empty()),
        "second run wrote files: {}",
        r2["files_written"]
    );
    // An offline root: the live systemd was never asked about its containers.
    assert_eq!(stand_ins.calls(), Vec::<String>::new());
}

/// Issue 7 item 4: with `--root` other than `/`, the live systemd is never asked whether a
/// container runs and never told to stop one (a container of the same name on this machine is
/// another container); `--stop` is a usage error that changes nothing.
#[test]
fn an_offline_root_never_asks_or_stops_the_live_systemd() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let root = TestRoot::fixture("example");
    let states = state_dirs(root.path());
    let name = Path::new(&states[0])
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let unit = format!("container@{name}.service");
    // The live machine has a running unit of that name: it must not matter.
    let stand_ins = StandIns::new(&[&unit]);
    let before = snapshot(root.path());
    let out = apply(root.path(), &stand_ins, &["--only", &name, "--stop"]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--stop cannot be used with --root") && err.contains("not in use"),
        "{err}"
    );
    assert_same("after a refused --stop", &before, &snapshot(root.path()));
    let out = apply(root.path(), &stand_ins, &["--only", &name]);
    assert!(
        matches!(out.status.code(), Some(0) | Some(3)),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = json(&out);
    assert!(
        report["problems"]
            .as_array()
            .unwrap()
            .iter()
            .any(|w| w["code"] == "offline-root"),
        "{report}"
    );
    assert_eq!(
        stand_ins.calls(),
        Vec::<String>::new(),
        "systemctl was called"
    );
    assert!(
        root.path()
            .join("var/lib/machines")
            .join(&name)
            .join("etc/os-release")
            .exists()
    );
}

#[test]
fn imperative_profile_generations_are_carried_as_links() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let root = TestRoot::fixture("example");
    let stand_ins = StandIns::new(&[]);
    let out = apply(root.path(), &stand_ins, &[]);
    assert!(
        matches!(out.status.code(), Some(0) | Some(3)),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = json(&out);
    let imperative: Vec<&serde_json::Value> = report["containers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["kind"] == "imperative")
        .collect();
    assert!(
        !imperative.is_empty(),
        "the example host has an imperative container"
    );
    for c in imperative {
        let name = c["name"].as_str().unwrap();
        let old = root
            .path()
            .join("nix/var/nix/profiles/per-container")
            .join(name);
        let new = root
            .path()
            .join("nix/var/nix/profiles/per-nspawn")
            .join(name);
        for e in std::fs::read_dir(&old).unwrap() {
            let e = e.unwrap();
            if !e.file_type().unwrap().is_symlink() {
                continue;
            }
            let target = std::fs::read_link(e.path()).unwrap();
            let carried = new.join(e.file_name());
            assert_eq!(
                std::fs::read_link(&carried).unwrap(),
                target,
                "{}",
                carried.display()
            );
        }
        // The legacy profile stays until the user removes it.
        assert!(old.join("system").symlink_metadata().is_ok());
        let nspawn = std::fs::read_to_string(root.path().join(format!(
            "var/lib/nixos-nspawn/imperative/nspawn/{name}.nspawn"
        )))
        .unwrap();
        assert!(nspawn.contains("Boot=no"), "{nspawn}");
    }
}

/// Kill the copy with SIGKILL at random points, then let it finish: the result is identical.
#[test]
fn a_killed_run_resumes_to_an_identical_copy() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let root = TestRoot::fixture("example");
    let states = state_dirs(root.path());
    let s = &states[0];
    let name = Path::new(s)
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let src = root.path().join(s);
    populate_rootfs(&src);
    // Enough data that the copy takes a noticeable time.
    for d in 0..40 {
        let dir = src.join(format!("var/lib/bulk/{d}"));
        std::fs::create_dir_all(&dir).unwrap();
        for f in 0..250 {
            std::fs::write(dir.join(format!("{f}")), vec![(d * f) as u8; 4096 + f * 13]).unwrap();
        }
    }
    std::fs::write(src.join("var/lib/bulk/big"), vec![7u8; 96 << 20]).unwrap();
    let want = fidelity(&src);
    let stand_ins = StandIns::new(&[]);
    let mut seed: u64 = 0x9e3779b97f4a7c15;
    for _ in 0..5 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let delay = 20 + seed % 400;
        let mut child = Command::new(env!("CARGO_BIN_EXE_nixos-nspawn"))
            .arg("--root")
            .arg(root.path())
            .args(["migrate", "--yes", "--only", &name])
            .env("PATH", stand_ins.path_env())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(delay));
        let _ = child.kill();
        let _ = child.wait();
    }
    let out = apply(root.path(), &stand_ins, &["--only", &name]);
    assert!(
        matches!(out.status.code(), Some(0) | Some(3)),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got = fidelity(&root.path().join("var/lib/machines").join(&name));
    for (p, w) in &want {
        assert_eq!(Some(w), got.get(p), "{} differs after resume", p.display());
    }
    assert_eq!(want.len(), got.len());
    assert!(
        !root
            .path()
            .join(format!("var/lib/machines/.{name}.partial"))
            .exists()
    );
}
