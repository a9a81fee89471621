//! `migrate --rollback` and `migrate --cleanup` on real trees: after a completed and after an
//! interrupted (SIGKILLed) migration, a rollback leaves the legacy containers byte- and
//! timestamp-identical and removes everything the migration made; a rollback is refused when
//! the new container has run (unless --force); cleanup is refused before the first boot and
//! while a declarative definition is still configured, and removes the legacy files after.
//! All on an offline --root: the live systemd is never asked.
#![allow(clippy::unwrap_used)]

mod util;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use util::*;

use util::migrate_with_stand_ins as run;

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Everything legacy about the host: configuration, state, profiles, the host's Nix files.
const LEGACY: &[&str] = &[
    "etc/nixos-containers",
    "etc/nixos",
    "var/lib/nixos-containers",
    "nix/var/nix/profiles/per-container",
    "nix/var/nix/gcroots/per-container",
];

fn legacy_snapshot(root: &Path) -> BTreeMap<PathBuf, String> {
    let mut all = BTreeMap::new();
    for l in LEGACY {
        let p = root.join(l);
        if p.exists() {
            for (k, v) in snapshot(&p) {
                // /etc/nixos itself changes (the new Nix file comes and goes); what is in it must not.
                if *l == "etc/nixos" && k.as_os_str().is_empty() {
                    continue;
                }
                all.insert(Path::new(l).join(k), v);
            }
        }
    }
    all
}

/// Every path in the tree (no metadata): what exists.
fn paths(root: &Path) -> Vec<PathBuf> {
    walkdir::WalkDir::new(root)
        .into_iter()
        .map(|e| e.unwrap().path().strip_prefix(root).unwrap().to_path_buf())
        .collect()
}

fn migrate(root: &Path, stand_ins: &StandIns, only: &[&str]) {
    let mut args = vec!["--yes", "-q"];
    for o in only {
        args.extend(["--only", o]);
    }
    let out = run(root, stand_ins, &args);
    assert!(matches!(out.status.code(), Some(0 | 3)), "{}", stderr(&out));
}

#[test]
fn rollback_after_a_completed_migration_leaves_legacy_identical_and_removes_ours() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let root = TestRoot::fixture("example");
    let stand_ins = StandIns::new(&[]);
    // Listed before the atimes are aged: listing reads directories.
    let paths_before = paths(root.path());
    age_atimes(root.path());
    let before = legacy_snapshot(root.path());
    migrate(root.path(), &stand_ins, &["db", "web", "scratch"]);
    assert!(root.path().join("var/lib/machines/db").is_dir());
    assert!(root.path().join("etc/nixos-nspawn/scratch.nix").is_file());
    // Both carried link trees are recorded (a record once kept only the last one).
    let rec: serde_json::Value = serde_json::from_slice(
        &std::fs::read(
            root.path()
                .join("var/lib/nixos-nspawn/migrations/scratch.json"),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(
        rec["links_to"],
        serde_json::json!([
            "/nix/var/nix/profiles/per-nspawn/scratch",
            "/nix/var/nix/gcroots/per-nspawn/scratch"
        ])
    );

    // One first: the Nix file keeps the other declarative container.
    let out = run(root.path(), &stand_ins, &["--rollback", "web", "--yes"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let nix = std::fs::read_to_string(root.path().join("etc/nixos/nspawn-containers.nix")).unwrap();
    assert!(nix.contains("nixos.containers.instances.db"), "{nix}");
    assert!(
        !nix.contains("instances.web") && !nix.contains("nspawn.web"),
        "{nix}"
    );
    nix_parse(&nix).unwrap();
    assert!(!root.path().join("var/lib/machines/web").exists());

    let out = run(
        root.path(),
        &stand_ins,
        &["--rollback", "db", "scratch", "--yes", "--json"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let doc = json(&out);
    assert_eq!(doc["command"], "rollback");
    assert_eq!(doc["outcome"], "success");
    assert_same(
        "legacy after rollback",
        &before,
        &legacy_snapshot(root.path()),
    );
    // Nothing of ours is left (listed after the atime comparison: listing reads directories)
    // but empty directories other tools use too (systemd's machines and control dirs).
    let extra: Vec<PathBuf> = paths(root.path())
        .into_iter()
        .filter(|p| !paths_before.contains(p))
        .collect();
    for p in &extra {
        assert!(
            p == Path::new("var/lib/machines") || p == Path::new("etc/systemd/system.control"),
            "left behind: {extra:?}"
        );
        assert!(
            std::fs::read_dir(root.path().join(p))
                .unwrap()
                .next()
                .is_none(),
            "{} is not empty",
            p.display()
        );
    }
    assert!(
        stand_ins.calls().is_empty(),
        "offline root: {:?}",
        stand_ins.calls()
    );

    // Nothing recorded any more: a second rollback is refused, naming why.
    let out = run(root.path(), &stand_ins, &["--rollback", "db", "--yes"]);
    assert_eq!(out.status.code(), Some(4));
    assert!(
        stderr(&out).contains("no migration of db is recorded"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn rollback_after_an_interrupted_migration_removes_the_staging() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let root = TestRoot::fixture("example");
    // Enough files that the copy takes a while, so the kill lands mid-copy.
    let state = root.path().join("var/lib/nixos-containers/db/var/lib/many");
    for d in 0..60 {
        let dir = state.join(format!("d{d}"));
        std::fs::create_dir_all(&dir).unwrap();
        for f in 0..100 {
            std::fs::write(dir.join(format!("f{f}")), format!("{d}/{f}")).unwrap();
        }
    }
    let stand_ins = StandIns::new(&[]);
    age_atimes(root.path());
    let before = legacy_snapshot(root.path());
    let mut child = Command::new(env!("CARGO_BIN_EXE_nixos-nspawn"))
        .arg("--root")
        .arg(root.path())
        .args(["migrate", "--yes", "-q", "--only", "db"])
        .env("PATH", stand_ins.path_env())
        .env("NIXOS_NSPAWN_STATE_WORKERS", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let staging = root
        .path()
        .join("var/lib/machines/.db.partial/tree/var/lib/many");
    let started = std::time::Instant::now();
    while !staging.exists() && started.elapsed() < std::time::Duration::from_secs(60) {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    child.kill().unwrap();
    let status = child.wait().unwrap();
    if status.success() {
        eprintln!("the copy finished before the kill; the interrupted case was not reached");
        return;
    }
    assert!(root.path().join("var/lib/machines/.db.partial").exists());
    let record = root.path().join("var/lib/nixos-nspawn/migrations/db.json");
    let rec: serde_json::Value = serde_json::from_slice(&std::fs::read(&record).unwrap()).unwrap();
    assert!(rec["finished_ns"].is_null(), "{rec:#}");

    let out = run(root.path(), &stand_ins, &["--rollback", "db", "--yes"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("removed the interrupted copy"), "{said}");
    assert!(!root.path().join("var/lib/machines/.db.partial").exists());
    assert!(!root.path().join("var/lib/machines/db").exists());
    assert!(!record.exists());
    assert_same(
        "legacy after rollback",
        &before,
        &legacy_snapshot(root.path()),
    );
}

#[test]
fn rollback_is_refused_when_the_new_container_has_run_unless_forced() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let root = TestRoot::fixture("example");
    let stand_ins = StandIns::new(&[]);
    migrate(root.path(), &stand_ins, &["db"]);
    // What a boot does: the journal gets a file.
    std::thread::sleep(std::time::Duration::from_millis(20));
    let journal = root.path().join("var/lib/machines/db/var/log/journal/abc");
    std::fs::create_dir_all(&journal).unwrap();
    std::fs::write(journal.join("system.journal"), "boot").unwrap();
    let out = run(root.path(), &stand_ins, &["--rollback", "db", "--yes"]);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("has run") && err.contains("--force"), "{err}");
    assert!(err.contains("/var/lib/machines/db/var/log"), "{err}");
    assert!(journal.join("system.journal").exists());

    let out = run(
        root.path(),
        &stand_ins,
        &["--rollback", "db", "--yes", "--force"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(!root.path().join("var/lib/machines/db").exists());
}

#[test]
fn cleanup_needs_a_boot_and_removes_only_legacy_files() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let root = TestRoot::fixture("example");
    let stand_ins = StandIns::new(&[]);
    migrate(root.path(), &stand_ins, &["scratch", "db"]);
    // Before the first boot: refused, nothing removed.
    let out = run(root.path(), &stand_ins, &["--cleanup", "scratch", "--yes"]);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(stderr(&out).contains("has never run"), "{}", stderr(&out));
    assert!(
        root.path()
            .join("var/lib/nixos-containers/scratch")
            .is_dir()
    );
    // Without a terminal and without --yes: refused at once.
    let out = run(root.path(), &stand_ins, &["--cleanup", "scratch"]);
    assert!(matches!(out.status.code(), Some(2 | 4)), "{}", stderr(&out));
    // A declarative container whose definition is still configured: refused.
    let out = run(root.path(), &stand_ins, &["--cleanup", "db", "--yes"]);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("Remove containers.db"),
        "{}",
        stderr(&out)
    );

    // The new container boots (its journal is written).
    std::thread::sleep(std::time::Duration::from_millis(20));
    let j = root.path().join("var/lib/machines/scratch/var/log/journal");
    std::fs::create_dir_all(&j).unwrap();
    std::fs::write(j.join("system.journal"), "boot").unwrap();
    let new_before = snapshot(&root.path().join("var/lib/machines/scratch"));
    let out = run(root.path(), &stand_ins, &["--cleanup", "scratch", "--yes"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    for gone in [
        "var/lib/nixos-containers/scratch",
        "etc/nixos-containers/scratch.conf",
        "nix/var/nix/profiles/per-container/scratch",
        "var/lib/nixos-nspawn/migrations/scratch.json",
    ] {
        assert!(!root.path().join(gone).exists(), "{gone} still exists");
    }
    assert_same(
        "the new state after cleanup",
        &new_before,
        &snapshot(&root.path().join("var/lib/machines/scratch")),
    );
    assert!(root.path().join("etc/nixos-nspawn/scratch.nix").is_file());
    // The other containers are untouched.
    assert!(root.path().join("var/lib/nixos-containers/db").is_dir());
    assert!(
        stand_ins.calls().is_empty(),
        "offline root: {:?}",
        stand_ins.calls()
    );
}

/// Regression: a container's own networkd units (`systemd.network.networks."30-NAME-…"` in the
/// Nix file) went unremoved when it was rolled back while other containers stayed in the file.
#[test]
fn rollback_removes_the_containers_networkd_entries_from_the_nix_file() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let root = TestRoot::fixture("broken");
    let stand_ins = StandIns::new(&[]);
    migrate(root.path(), &stand_ins, &["good", "orphan"]);
    let file = root.path().join("etc/nixos/nspawn-containers.nix");
    let before = std::fs::read_to_string(&file).unwrap();
    assert!(before.contains("30-good-dmz"), "{before}");
    let out = run(root.path(), &stand_ins, &["--rollback", "good", "--yes"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let after = std::fs::read_to_string(&file).unwrap();
    assert!(after.contains("instances.orphan"), "{after}");
    assert!(!after.contains("good"), "{after}");
    nix_parse(&after).unwrap();
}
