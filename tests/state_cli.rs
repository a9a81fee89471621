//! `migrate --yes` with the host tree on real btrfs and XFS filesystems (loop devices): the
//! report says how the state was verified (shared extents, hashes) and what happened to the
//! legacy path; `--state move` renames on one filesystem and is refused across two before
//! anything is written. Skipped with a message without loop devices, a failure in CI
//! (`NIXOS_NSPAWN_REQUIRE_REAL_TOOLS=1`).
#![allow(clippy::unwrap_used)]

#[path = "state_util.rs"]
mod sutil;
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

/// The `example` fixture copied onto `fs`, with a populated rootfs and a few large files for
/// each container that has state. Returns the legacy state directories (relative).
fn host_on(fs: &sutil::LoopFs) -> Vec<String> {
    let fixture = TestRoot::fixture("example");
    sutil::run(
        "cp",
        &[
            "-a",
            &format!("{}/.", fixture.path().display()),
            fs.mnt.to_str().unwrap(),
        ],
    );
    let mut states = Vec::new();
    for base in ["var/lib/nixos-containers", "var/lib/containers"] {
        if let Ok(rd) = std::fs::read_dir(fs.mnt.join(base)) {
            for e in rd {
                let e = e.unwrap();
                if e.path().join("etc/os-release").exists() {
                    populate_rootfs(&e.path());
                    for i in 0..3 {
                        let data: Vec<u8> =
                            (0..1 << 20).map(|j| ((j * 31 + i) % 253) as u8).collect();
                        std::fs::write(e.path().join(format!("var/lib/app/blob{i}")), data)
                            .unwrap();
                    }
                    states.push(format!("{base}/{}", e.file_name().to_string_lossy()));
                }
            }
        }
    }
    states.sort();
    assert!(!states.is_empty());
    states
}

fn name_of(state: &str) -> String {
    Path::new(state)
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned()
}

#[test]
fn on_btrfs_the_report_says_what_was_verified_by_shared_extents() {
    let Some(fs) = sutil::loop_fs("btrfs") else {
        return;
    };
    let states = host_on(&fs);
    // As systemd's tmpfiles makes it on btrfs: /var/lib/machines is a subvolume.
    sutil::run(
        "btrfs",
        &[
            "-q",
            "subvolume",
            "create",
            fs.mnt.join("var/lib/machines").to_str().unwrap(),
        ],
    );
    // A read-only nested subvolume in the first state (a snapshot a guest kept).
    let snap = fs.mnt.join(&states[0]).join("var/lib/snap");
    sutil::run(
        "btrfs",
        &["-q", "subvolume", "create", snap.to_str().unwrap()],
    );
    std::fs::write(snap.join("kept"), "kept\n").unwrap();
    sutil::run(
        "btrfs",
        &[
            "property",
            "set",
            "-ts",
            snap.to_str().unwrap(),
            "ro",
            "true",
        ],
    );
    let stand_ins = StandIns::new(&[]);
    let out = apply(&fs.mnt, &stand_ins, &["--verify", "full"]);
    assert!(
        matches!(out.status.code(), Some(0) | Some(3)),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = json(&out);
    let first = report["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name_of(&states[0]).as_str())
        .unwrap();
    let r = &first["state_result"];
    assert_eq!(r["subvolumes"], serde_json::json!(["var/lib/snap"]), "{r}");
    assert_eq!(
        r["subvolumes_readonly"],
        serde_json::json!(["var/lib/snap"]),
        "{r}"
    );
    assert_eq!(r["subvolumes_flattened"], serde_json::json!([]), "{r}");
    assert_eq!(r["mounts_skipped"], serde_json::json!([]), "{r}");
    for s in &states {
        let name = name_of(s);
        let c = report["containers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name.as_str())
            .unwrap();
        let r = &c["state_result"];
        assert_eq!(r["outcome"], "copied", "{r}");
        assert_eq!(r["legacy_left"], "untouched", "{r}");
        assert_eq!(r["verify"], "full", "{r}");
        assert_eq!(r["differences"], 0, "{r}");
        assert!(r["files_reflinked"].as_u64().unwrap() >= 3, "{r}");
        assert!(r["files_by_extents"].as_u64().unwrap() >= 3, "{r}");
        assert!(r["bytes_by_extents"].as_u64().unwrap() >= 3 << 20, "{r}");
        assert!(r["files_hashed"].as_u64().unwrap() >= 1, "{r}");
        let done = c["done"].as_array().unwrap();
        assert!(
            done.iter().any(|d| {
                let d = d.as_str().unwrap();
                d.contains("proven equal by shared extents, not read")
                    && d.contains("read on both sides and compared")
            }),
            "{done:?}"
        );
        assert!(
            fs.mnt.join(s).join("etc/os-release").exists(),
            "the legacy state is kept"
        );
    }
}

/// A copy changed behind the tool's back after the migration (one byte, size and mtime kept):
/// a plain re-run counts it as done by its metadata (quick, as documented), a re-run with
/// `--verify full` given explicitly proves the contents again and refuses, naming the file;
/// nothing is written.
#[test]
fn an_explicit_verify_full_rechecks_a_finished_copy_and_catches_a_changed_byte() {
    let Some(fs) = sutil::loop_fs("xfs") else {
        return;
    };
    let states = host_on(&fs);
    let stand_ins = StandIns::new(&[]);
    let out = apply(&fs.mnt, &stand_ins, &[]);
    assert!(
        matches!(out.status.code(), Some(0) | Some(3)),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let name = name_of(&states[0]);
    let victim = fs
        .mnt
        .join("var/lib/machines")
        .join(&name)
        .join("var/lib/app/blob0");
    sutil::corrupt_behind_the_tools_back(&victim);
    let bytes = std::fs::read(&victim).unwrap();

    let state_of = |out: &std::process::Output| {
        json(out)["containers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name.as_str())
            .unwrap()
            .clone()
    };
    let plain = apply(&fs.mnt, &stand_ins, &[]);
    assert!(
        matches!(plain.status.code(), Some(0) | Some(3)),
        "{}",
        String::from_utf8_lossy(&plain.stderr)
    );
    let c = state_of(&plain);
    assert_eq!(c["state_result"]["outcome"], "already-done", "{c}");

    let full = apply(&fs.mnt, &stand_ins, &["--verify", "full"]);
    assert!(
        !matches!(full.status.code(), Some(0) | Some(3)),
        "a changed copy was accepted: {}",
        String::from_utf8_lossy(&full.stdout)
    );
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&full.stdout),
        String::from_utf8_lossy(&full.stderr)
    );
    assert!(
        text.contains("var/lib/app/blob0: content differs") && text.contains("--force"),
        "{text}"
    );
    assert_eq!(
        std::fs::read(&victim).unwrap(),
        bytes,
        "nothing was written"
    );

    // Put the byte back: the explicit full check passes and says how it proved the contents.
    sutil::corrupt_behind_the_tools_back(&victim);
    let again = apply(&fs.mnt, &stand_ins, &["--verify", "full"]);
    assert!(
        matches!(again.status.code(), Some(0) | Some(3)),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    let c = state_of(&again);
    assert_eq!(c["state_result"]["outcome"], "already-done", "{c}");
    assert!(
        c["done"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d.as_str().unwrap().contains("checked again against")),
        "{c}"
    );
}

#[test]
fn state_move_renames_on_one_filesystem_and_is_refused_across_two() {
    let Some(bt) = sutil::loop_fs("btrfs") else {
        return;
    };
    let Some(xfs) = sutil::loop_fs("xfs") else {
        return;
    };
    let states = host_on(&bt);
    let stand_ins = StandIns::new(&[]);

    // /var/lib/machines on another filesystem (XFS mounted there): refused before anything
    // is written, with the reason; the legacy state stays.
    let machines = bt.mnt.join("var/lib/machines");
    std::fs::create_dir_all(&machines).unwrap();
    sutil::run(
        "mount",
        &[
            "--bind",
            xfs.mnt.to_str().unwrap(),
            machines.to_str().unwrap(),
        ],
    );
    let before = snapshot(&bt.mnt.join("var/lib/nixos-containers"));
    // The dry run says so first, as what --yes would refuse (one line per container).
    let dry = nixos_nspawn(
        &bt.mnt,
        &["migrate", "--dry-run", "--json", "--state", "move"],
    );
    let refusals: Vec<String> = json(&dry)["problems"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|w| w["code"] == "would-refuse")
        .map(|w| w["message"].as_str().unwrap().to_string())
        .collect();
    let out = apply(&bt.mnt, &stand_ins, &["--state", "move"]);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    let listed = std::fs::read_dir(&machines).unwrap().count();
    sutil::umount(&machines);
    for s in &states {
        let name = name_of(s);
        assert!(
            refusals
                .iter()
                .any(|m| m.contains(&format!("container {name}: "))
                    && m.contains("they are on different filesystems")),
            "{refusals:#?}"
        );
    }
    // 4: refused before the first write (see `--help`, "Exit codes").
    assert_eq!(out.status.code(), Some(4), "{err}");
    assert!(
        err.contains("nothing was changed")
            && err.contains("they are on different filesystems")
            && err.contains("--state copy"),
        "{err}"
    );
    assert_eq!(listed, 0, "the refused move wrote into /var/lib/machines");
    assert_eq!(snapshot(&bt.mnt.join("var/lib/nixos-containers")), before);
    assert!(!bt.mnt.join("etc/nixos/nspawn-containers.nix").exists());

    // On one filesystem: renamed, the report says the legacy path is gone and how to go back.
    let out = apply(&bt.mnt, &stand_ins, &["--state", "move"]);
    assert!(
        matches!(out.status.code(), Some(0) | Some(3)),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = json(&out);
    for s in &states {
        let name = name_of(s);
        let c = report["containers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name.as_str())
            .unwrap();
        assert_eq!(c["state_result"]["outcome"], "moved", "{c}");
        assert_eq!(
            c["state_result"]["legacy_left"],
            "gone: renamed to the new location"
        );
        assert!(
            c["done"]
                .as_array()
                .unwrap()
                .iter()
                .any(|d| d.as_str().unwrap().contains("no longer exists; to go back")),
            "{c}"
        );
        assert!(!bt.mnt.join(s).exists());
        assert!(machines.join(&name).join("var/lib/app/blob2").exists());
    }
    // Again: nothing to do.
    let out = apply(&bt.mnt, &stand_ins, &["--state", "move"]);
    assert!(
        matches!(out.status.code(), Some(0) | Some(3)),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = json(&out);
    for c in report["containers"].as_array().unwrap() {
        if !c["state_result"].is_null() {
            assert_eq!(c["state_result"]["outcome"], "already-done", "{c}");
        }
    }
}

/// The dry run's plan says what the state step will do: copy (the legacy directory stays),
/// move (the legacy path is gone afterwards) or leave it (`--state skip`), in the text and in
/// `--json` (`plan[].mode`).
#[test]
fn the_dry_run_plan_says_move_when_the_state_is_moved() {
    let root = TestRoot::fixture("example");
    let text = |state: &str| {
        let out = root.run(&["migrate", "--dry-run", "--state", state]);
        assert!(
            matches!(out.status.code(), Some(0) | Some(3)),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let state_lines = |t: &str| -> Vec<String> {
        t.lines()
            .filter(|l| {
                l.contains("state /var/lib/") && l.trim_start().starts_with(char::is_numeric)
            })
            .map(str::to_string)
            .collect()
    };
    let copy = text("copy");
    let copies = state_lines(&copy);
    assert!(!copies.is_empty(), "{copy}");
    for l in &copies {
        assert!(
            l.contains("copy state /var/lib/")
                && l.contains("the legacy directory is left as it is"),
            "{l}"
        );
    }
    let moved = text("move");
    let moves = state_lines(&moved);
    assert_eq!(moves.len(), copies.len(), "{moved}");
    for l in &moves {
        assert!(
            l.contains("move state /var/lib/")
                && l.contains("no longer exists afterwards")
                && !l.contains("copy state"),
            "{l}"
        );
    }
    let skipped = text("skip");
    assert!(
        skipped.contains("leave the state in /var/lib/") && !skipped.contains("copy state"),
        "{skipped}"
    );
    let out = root.run(&["migrate", "--dry-run", "--json", "--state", "move"]);
    let report = json(&out);
    let modes: Vec<&serde_json::Value> = report["containers"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|c| c["plan"].as_array().unwrap())
        .filter(|s| s["step"] == "copy-state")
        .map(|s| &s["mode"])
        .collect();
    assert_eq!(modes.len(), copies.len(), "{report}");
    assert!(modes.iter().all(|m| *m == "move"), "{report}");
}

/// `--state move` of a state with a mount point inside: rename(2) would take the mount along,
/// but the host mounts it at the old path again at its next boot. The dry run says `--yes`
/// would refuse it (naming the container, the mount point and the ways out), `--yes` refuses
/// before anything is written; once it is unmounted the move goes ahead.
#[test]
fn state_move_with_a_mount_inside_the_state_is_refused_dry_run_and_yes() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("SKIPPED: mounting a tmpfs needs root");
        return;
    }
    let root = TestRoot::fixture("example");
    let web = root.path().join("var/lib/nixos-containers/web");
    // Unique per test run: the fixture copy is a fresh temporary directory.
    let data = sutil::Tmpfs::mount(&web.join("srv/data"), "1m");
    std::fs::write(web.join("srv/data/rows"), "host data\n").unwrap();

    let out = root.run(&["migrate", "--dry-run", "--json", "--state", "move"]);
    let j = json(&out);
    let refusals: Vec<&str> = j["problems"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|w| w["code"] == "would-refuse")
        .map(|w| w["message"].as_str().unwrap())
        .collect();
    let about_web: Vec<&&str> = refusals
        .iter()
        .filter(|m| m.contains("container web:"))
        .collect();
    assert_eq!(about_web.len(), 1, "{refusals:#?}");
    let m = about_web[0];
    assert!(
        m.contains("1 mount point is inside it (srv/data)")
            && m.contains("at the old path again at the next boot")
            && m.contains("unmount it")
            && m.contains("fileSystems entry")
            && m.contains("--state copy")
            && m.contains("state-mounts-skipped"),
        "{m}"
    );
    // Only `web` has a mount inside: the other containers would move.
    assert!(
        refusals
            .iter()
            .all(|m| !m.contains("mount point") || m.contains("container web:")),
        "{refusals:#?}"
    );
    // The text report says it too.
    let out = root.run(&["migrate", "--dry-run", "--state", "move"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("would refuse") && text.contains("srv/data"),
        "{text}"
    );

    // --yes: refused before the first write; the legacy state and its mount stay.
    let before = snapshot(&root.path().join("var/lib/nixos-containers"));
    let stand_ins = StandIns::new(&[]);
    let out = apply(root.path(), &stand_ins, &["--state", "move"]);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(4), "{err}");
    assert!(
        err.contains("nothing was changed")
            && err.contains("container web:")
            && err.contains("srv/data"),
        "{err}"
    );
    assert_eq!(
        snapshot(&root.path().join("var/lib/nixos-containers")),
        before
    );
    assert_eq!(
        std::fs::read_to_string(web.join("srv/data/rows")).unwrap(),
        "host data\n"
    );
    assert!(!root.path().join("var/lib/machines/web").exists());
    assert!(!root.path().join("etc/nixos/nspawn-containers.nix").exists());

    // Unmounted (its fileSystems entry moved): the move goes ahead.
    drop(data);
    let out = apply(root.path(), &stand_ins, &["--state", "move"]);
    assert!(
        matches!(out.status.code(), Some(0) | Some(3)),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = json(&out);
    let c = report["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "web")
        .unwrap();
    assert_eq!(c["state_result"]["outcome"], "moved", "{c}");
    assert!(!web.exists());
    assert!(
        root.path()
            .join("var/lib/machines/web/etc/hostname")
            .exists()
    );
}
