//! Plans as files: what `--dry-run` shows (text and `--json`) and saves with `--plan-out` is
//! byte for byte what `--yes --plan-in` writes; a plan is refused (exit 4, nothing written) when
//! the host changed since, when it comes from another machine or another version, or when the
//! file is not a plan.
#![allow(clippy::unwrap_used)]

mod util;

use std::path::Path;
use std::process::{Command, Output};
use util::*;

use util::migrate_with_stand_ins as run;

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The files the text report shows "exactly" between its marker lines: path → bytes.
fn exact_blocks(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("──── /") {
        let line_end = start + rest[start..].find('\n').unwrap();
        let head = &rest[start + "──── ".len()..line_end];
        let path = head.split(" (").next().unwrap().to_string();
        let end_marker = format!("──── end of {path} ────");
        let body_start = line_end + 1;
        let body_end = body_start + rest[body_start..].find(&end_marker).unwrap();
        out.push((path, rest[body_start..body_end].to_string()));
        rest = &rest[body_end + end_marker.len()..];
    }
    out
}

fn plan_out(root: &TestRoot, stand_ins: &StandIns, plan: &Path) -> Output {
    let out = run(
        root.path(),
        stand_ins,
        &["--dry-run", "--plan-out", plan.to_str().unwrap()],
    );
    assert!(matches!(out.status.code(), Some(0 | 3)), "{}", stderr(&out));
    assert!(plan.is_file());
    out
}

#[test]
fn the_preview_is_what_is_written_byte_for_byte() {
    if !is_root() {
        eprintln!("skipped: needs root (state copy keeps ownership)");
        return;
    }
    let root = TestRoot::fixture("example");
    let stand_ins = StandIns::new(&[]);
    let tmp = tempfile::tempdir().unwrap();
    let plan_path = tmp.path().join("plan.json");
    let text = plan_out(&root, &stand_ins, &plan_path);
    let text = String::from_utf8(text.stdout).unwrap();
    let shown = exact_blocks(&text);
    let dry_json = json(&run(root.path(), &stand_ins, &["--dry-run", "--json"]));
    let plan: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&plan_path).unwrap()).unwrap();
    let files = plan["files"].as_object().unwrap();
    // The imperative container's three files and the declarative Nix file at least.
    assert!(files.len() >= 3, "{files:#?}");
    assert!(files.contains_key("/etc/nixos/nspawn-containers.nix"));
    assert!(files.keys().any(|k| k.ends_with(".nspawn")), "{files:#?}");
    // The text report shows every one of them, exactly.
    let shown_paths: Vec<&str> = shown.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(
        shown_paths.len(),
        files.len(),
        "shown {shown_paths:?}, planned {:?}",
        files.keys()
    );

    let out = run(
        root.path(),
        &stand_ins,
        &["--yes", "--json", "--plan-in", plan_path.to_str().unwrap()],
    );
    assert!(matches!(out.status.code(), Some(0 | 3)), "{}", stderr(&out));
    let applied = json(&out);
    for (path, content) in files {
        let on_disk = std::fs::read(root.path().join(path.trim_start_matches('/'))).unwrap();
        let content = content.as_str().unwrap();
        assert_eq!(
            String::from_utf8_lossy(&on_disk),
            content,
            "{path}: plan file and disk differ"
        );
        let (_, text_block) = shown.iter().find(|(p, _)| p == path).unwrap();
        assert_eq!(text_block, content, "{path}: text preview and disk differ");
    }
    // The --json preview carries the same bytes.
    assert_eq!(
        dry_json["nix_file"].as_str().unwrap(),
        files["/etc/nixos/nspawn-containers.nix"].as_str().unwrap()
    );
    for c in dry_json["containers"].as_array().unwrap() {
        for (path, content) in c["files"].as_object().unwrap() {
            assert_eq!(content, &files[path], "{path}");
        }
    }
    let written = applied["files_written"].as_array().unwrap();
    assert_eq!(written.len(), files.len(), "{written:?}");
}

/// Make a plan, change the host with `change`, apply: refused with `reason`, nothing written.
fn refused_after(change: impl FnOnce(&Path, &Path), reason: &str) {
    let root = TestRoot::fixture("example");
    let stand_ins = StandIns::new(&[]);
    let tmp = tempfile::tempdir().unwrap();
    let plan_path = tmp.path().join("plan.json");
    plan_out(&root, &stand_ins, &plan_path);
    change(root.path(), &plan_path);
    let before = snapshot(root.path());
    let out = run(
        root.path(),
        &stand_ins,
        &["--yes", "--json", "--plan-in", plan_path.to_str().unwrap()],
    );
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains(reason), "expected {reason:?} in\n{err}");
    let doc = json(&out);
    assert_eq!(doc["summary"]["outcome"], "refused");
    assert!(
        doc["error"]["problems"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p.as_str().unwrap().contains(reason)),
        "{doc:#}"
    );
    assert_same("after a refused --plan-in", &before, &snapshot(root.path()));
}

#[test]
fn a_changed_nix_source_refuses_the_plan() {
    refused_after(
        |root, _| {
            let p = root.join("etc/nixos/configuration.nix");
            let mut t = std::fs::read_to_string(&p).unwrap();
            t.push_str("# edited after the review\n");
            std::fs::write(p, t).unwrap();
        },
        "file /etc/nixos/configuration.nix changed since the plan was made",
    );
}

#[test]
fn a_changed_conf_file_refuses_the_plan() {
    refused_after(
        |root, _| {
            let p = root.join("etc/nixos-containers/scratch.conf");
            let mut t = std::fs::read_to_string(&p).unwrap();
            t.push_str("EXTRA_NSPAWN_FLAGS=\"--private-users=pick\"\n");
            std::fs::write(p, t).unwrap();
        },
        "file /etc/nixos-containers/scratch.conf changed",
    );
}

#[test]
fn a_replaced_state_directory_refuses_the_plan() {
    refused_after(
        |root, _| {
            let d = root.join("var/lib/nixos-containers/db");
            let moved = root.join("var/lib/nixos-containers/.db-old");
            std::fs::rename(&d, &moved).unwrap();
            std::fs::create_dir(&d).unwrap();
            std::fs::remove_dir_all(&moved).unwrap();
        },
        "directory /var/lib/nixos-containers/db changed",
    );
}

#[test]
fn a_plan_from_another_machine_is_refused() {
    refused_after(
        |root, _| {
            std::fs::write(
                root.join("etc/machine-id"),
                "0123456789abcdef0123456789abcdef\n",
            )
            .unwrap();
        },
        "the plan was made on another machine",
    );
}

#[test]
fn a_plan_from_another_version_is_refused() {
    refused_after(
        |_, plan| {
            let mut v: serde_json::Value =
                serde_json::from_slice(&std::fs::read(plan).unwrap()).unwrap();
            v["tool"] = "nixos-nspawn 0.0.1".into();
            std::fs::write(plan, serde_json::to_vec(&v).unwrap()).unwrap();
        },
        "the plan was made by nixos-nspawn 0.0.1",
    );
}

#[test]
fn a_file_that_is_not_a_plan_is_refused() {
    let root = TestRoot::fixture("example");
    let stand_ins = StandIns::new(&[]);
    let tmp = tempfile::tempdir().unwrap();
    let not_a_plan = tmp.path().join("report.json");
    let report = run(root.path(), &stand_ins, &["--dry-run", "--json"]);
    std::fs::write(&not_a_plan, &report.stdout).unwrap();
    let out = run(
        root.path(),
        &stand_ins,
        &["--yes", "--plan-in", not_a_plan.to_str().unwrap()],
    );
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("it is not a plan"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn an_unchanged_host_passes_the_check_and_options_cannot_override_the_plan() {
    let root = TestRoot::fixture("example");
    let stand_ins = StandIns::new(&[]);
    let tmp = tempfile::tempdir().unwrap();
    let plan_path = tmp.path().join("plan.json");
    plan_out(&root, &stand_ins, &plan_path);
    let p = plan_path.to_str().unwrap();
    let check = run(root.path(), &stand_ins, &["--dry-run", "--plan-in", p]);
    assert!(
        matches!(check.status.code(), Some(0 | 3)),
        "{}",
        stderr(&check)
    );
    let out = run(
        root.path(),
        &stand_ins,
        &["--yes", "--plan-in", p, "--only", "db"],
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let out = run(root.path(), &stand_ins, &["--yes", "--plan-out", p]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let out = run(root.path(), &stand_ins, &["--plan-out", p]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("add --dry-run"), "{}", stderr(&out));
}

/// A `--config` outside the root, given relative: the plan names it absolutely, applies from
/// another working directory, and notices when it changes.
#[test]
fn a_relative_config_outside_the_root_is_fingerprinted_and_applies_from_anywhere() {
    let root = TestRoot::fixture("example");
    let stand_ins = StandIns::new(&[]);
    let work = tempfile::tempdir().unwrap();
    std::fs::copy(
        root.path().join("etc/nixos/configuration.nix"),
        work.path().join("host.nix"),
    )
    .unwrap();
    let plan = work.path().join("plan.json");
    let made = Command::new(env!("CARGO_BIN_EXE_nixos-nspawn"))
        .current_dir(work.path())
        .arg("--root")
        .arg(root.path())
        .args([
            "migrate",
            "--dry-run",
            "-q",
            "--config",
            "host.nix",
            "--plan-out",
            "plan.json",
        ])
        .env("PATH", stand_ins.path_env())
        .output()
        .unwrap();
    assert!(
        matches!(made.status.code(), Some(0 | 3)),
        "{}",
        stderr(&made)
    );
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&plan).unwrap()).unwrap();
    let config = work.path().join("host.nix");
    assert_eq!(v["options"]["config"], config.to_str().unwrap());
    assert!(
        v["inputs"]
            .as_object()
            .unwrap()
            .contains_key(&format!("file {}", config.display())),
        "{v:#}"
    );
    let p = plan.to_str().unwrap();
    let check = run(
        root.path(),
        &stand_ins,
        &["--dry-run", "-q", "--plan-in", p],
    );
    assert!(
        matches!(check.status.code(), Some(0 | 3)),
        "{}",
        stderr(&check)
    );
    let mut t = std::fs::read_to_string(&config).unwrap();
    t.push_str("# changed\n");
    std::fs::write(&config, t).unwrap();
    let check = run(
        root.path(),
        &stand_ins,
        &["--dry-run", "-q", "--plan-in", p],
    );
    assert_eq!(check.status.code(), Some(4), "{}", stderr(&check));
    assert!(
        stderr(&check).contains("host.nix changed"),
        "{}",
        stderr(&check)
    );
}

/// `--rewrite` with plans (issue 10): the plan carries every edited host file's new content;
/// the dry run's JSON shows exactly it, `--plan-in` writes exactly it.
#[test]
fn a_rewrite_plan_carries_the_new_content_and_writes_exactly_it() {
    if !is_root() {
        eprintln!("skipped: needs root (state copy keeps ownership)");
        return;
    }
    let root = TestRoot::fixture("example");
    let stand_ins = StandIns::new(&[]);
    let tmp = tempfile::tempdir().unwrap();
    let plan_path = tmp.path().join("plan.json");
    let conf = root.path().join("etc/nixos/configuration.nix");
    let original = std::fs::read(&conf).unwrap();
    let args = ["--rewrite", "--only", "web", "--only", "db"];
    let dry = run(
        root.path(),
        &stand_ins,
        &[&["--dry-run", "--json"][..], &args[..]].concat(),
    );
    let dry = json(&dry);
    let out = run(
        root.path(),
        &stand_ins,
        &[
            &["--dry-run", "-q", "--plan-out", plan_path.to_str().unwrap()][..],
            &args[..],
        ]
        .concat(),
    );
    assert!(matches!(out.status.code(), Some(0 | 3)), "{}", stderr(&out));
    let plan: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&plan_path).unwrap()).unwrap();
    assert_eq!(plan["options"]["rewrite"], true);
    let rw = plan["rewrite"].as_array().unwrap();
    assert_eq!(rw.len(), 1, "{rw:#?}");
    assert_eq!(rw[0]["file"], "/etc/nixos/configuration.nix");
    assert_eq!(rw[0]["containers"], serde_json::json!(["db", "web"]));
    assert_eq!(
        rw[0]["original"],
        format!("blake3 {}", blake3::hash(&original).to_hex())
    );
    let content = rw[0]["content"].as_str().unwrap();
    nix_parse(content).unwrap();
    assert!(content.contains("nixos.containers.instances.web = {"));
    // The dry run's report shows the same bytes.
    assert_eq!(dry["rewritten"][0]["content"].as_str().unwrap(), content);
    // Both containers are in place: no separate file in the plan.
    assert!(
        !plan["files"]
            .as_object()
            .unwrap()
            .contains_key("/etc/nixos/nspawn-containers.nix"),
        "{:#}",
        plan["files"]
    );
    let out = run(
        root.path(),
        &stand_ins,
        &["--yes", "--json", "--plan-in", plan_path.to_str().unwrap()],
    );
    assert!(matches!(out.status.code(), Some(0 | 3)), "{}", stderr(&out));
    let applied = json(&out);
    assert!(
        applied["files_written"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f == "/etc/nixos/configuration.nix"),
        "{applied:#}"
    );
    assert_eq!(std::fs::read_to_string(&conf).unwrap(), content);
    let bak: Vec<_> = std::fs::read_dir(root.path().join("etc/nixos"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().contains("configuration.nix.bak-"))
        .collect();
    assert_eq!(bak.len(), 1);
    assert_eq!(std::fs::read(&bak[0]).unwrap(), original);
}

#[test]
fn a_rewrite_plan_is_refused_when_the_file_to_rewrite_changed() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let root = TestRoot::fixture("example");
    let stand_ins = StandIns::new(&[]);
    let tmp = tempfile::tempdir().unwrap();
    let plan_path = tmp.path().join("plan.json");
    let out = run(
        root.path(),
        &stand_ins,
        &[
            "--dry-run",
            "-q",
            "--rewrite",
            "--only",
            "db",
            "--plan-out",
            plan_path.to_str().unwrap(),
        ],
    );
    assert!(matches!(out.status.code(), Some(0 | 3)), "{}", stderr(&out));
    // An edit far from any container: the plan's new content would drop it.
    let conf = root.path().join("etc/nixos/configuration.nix");
    let edited = std::fs::read_to_string(&conf).unwrap().replace(
        "networking.hostName = \"example\";",
        "networking.hostName = \"example2\";",
    );
    std::fs::write(&conf, edited).unwrap();
    let before = snapshot(root.path());
    let out = run(
        root.path(),
        &stand_ins,
        &["--yes", "--plan-in", plan_path.to_str().unwrap()],
    );
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("/etc/nixos/configuration.nix changed since the plan was made (blake3 ")
            && err.contains("the plan's rewrite of it was made from another original"),
        "{err}"
    );
    assert_same("after a refused --plan-in", &before, &snapshot(root.path()));
}
