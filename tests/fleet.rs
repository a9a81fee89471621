//! The fleet contract: `migrate --yes --json` prints ONE JSON document whatever happens, and
//! the exit code tells success (0), success with follow-up (3), refused before the first write
//! (4) and failed midway (1) apart; `summary.outcome` says the same in words. Also `--exclude`,
//! `--quiet`, and the refusal to guess without a terminal.
#![allow(clippy::unwrap_used)]

mod util;

use std::path::Path;
use std::process::{Command, Output};
use util::*;

use util::migrate_with_stand_ins as run;

fn code(out: &Output) -> i32 {
    out.status.code().unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn container<'a>(doc: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    doc["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no container {name} in {doc:#}"))
}

/// Bytes of file data in a tree (what a copy must write, holes aside: the fixture has none).
fn file_bytes(dir: &Path) -> u64 {
    walkdir::WalkDir::new(dir)
        .into_iter()
        .map(|e| e.unwrap())
        .filter(|e| e.file_type().is_file())
        .map(|e| e.metadata().unwrap().len())
        .sum()
}

#[test]
fn success_is_exit_0_with_every_file_bytes_and_verification() {
    if !is_root() {
        eprintln!("skipped: needs root (state copy keeps ownership)");
        return;
    }
    let root = TestRoot::fixture("example");
    let stand_ins = StandIns::new(&[]);
    let out = run(
        root.path(),
        &stand_ins,
        &["--yes", "--json", "--only", "db"],
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let doc = json(&out);
    assert_eq!(doc["summary"]["outcome"], "success");
    assert_eq!(doc["summary"]["exit_code"], 0);
    assert!(doc.get("error").is_none(), "{doc:#}");
    let db = container(&doc, "db");
    assert_eq!(db["status"], "done");
    let st = &db["state_result"];
    assert_eq!(st["outcome"], "copied", "{db:#}");
    assert_eq!(
        st["bytes"].as_u64().unwrap(),
        file_bytes(&root.path().join("var/lib/nixos-containers/db")),
        "bytes is the file data of the legacy state"
    );
    assert!(st["entries"].as_u64().unwrap() > 0);
    assert_eq!(st["verify"], "full");
    assert!(st["entries_verified"].as_u64().unwrap() > 0, "{st:#}");
    assert_eq!(st["differences"], 0);
    assert!(db["warnings"].is_array());
    // The record rollback and cleanup work from is named, and is there.
    assert_eq!(db["record"], "/var/lib/nixos-nspawn/migrations/db.json");
    assert!(
        root.path()
            .join("var/lib/nixos-nspawn/migrations/db.json")
            .is_file()
    );
    // Every file written is listed, and is there.
    let written: Vec<&str> = doc["files_written"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    assert_eq!(written, ["/etc/nixos/nspawn-containers.nix"]);
    for w in written {
        assert!(root.path().join(w.trim_start_matches('/')).is_file());
    }
    assert!(
        root.path()
            .join("var/lib/machines/db/etc/machine-id")
            .is_file()
    );
}

#[test]
fn follow_up_is_exit_3_and_says_which_points_need_a_human() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let root = TestRoot::fixture("example");
    let stand_ins = StandIns::new(&[]);
    let out = run(
        root.path(),
        &stand_ins,
        &["--yes", "--json", "--only", "web"],
    );
    assert_eq!(code(&out), 3, "{}", stderr(&out));
    let doc = json(&out);
    assert_eq!(doc["summary"]["outcome"], "follow-up");
    assert!(doc["summary"]["needs_human"].as_u64().unwrap() > 0);
    let web = container(&doc, "web");
    assert_eq!(web["status"], "done");
    let human = web["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .chain(doc["problems"].as_array().unwrap())
        .filter(|w| w["category"] == "needs-human")
        .count();
    assert_eq!(
        human as u64,
        doc["summary"]["needs_human"].as_u64().unwrap()
    );
}

#[test]
fn refused_is_exit_4_one_document_and_nothing_written() {
    let root = TestRoot::fixture("example");
    let before = snapshot(root.path());
    let stand_ins = StandIns::new(&[]);
    // The output aimed at the host's own configuration: not a file of ours.
    let out = run(
        root.path(),
        &stand_ins,
        &[
            "--yes",
            "--json",
            "--output",
            "/etc/nixos/configuration.nix",
        ],
    );
    assert_eq!(code(&out), 4, "{}", stderr(&out));
    let doc = json(&out);
    assert_eq!(doc["summary"]["outcome"], "refused");
    assert_eq!(doc["summary"]["exit_code"], 4);
    let problems = doc["error"]["problems"].as_array().unwrap();
    assert!(
        problems
            .iter()
            .any(|p| p.as_str().unwrap().contains("/etc/nixos/configuration.nix")),
        "{doc:#}"
    );
    assert!(
        doc.get("files_written")
            .is_none_or(|f| f.as_array().unwrap().is_empty())
    );
    for c in doc["containers"].as_array().unwrap() {
        assert!(
            c["status"] == "not-reached" || c["status"] == "blocked",
            "{c:#}"
        );
        assert!(c["files_written"].as_array().unwrap().is_empty());
    }
    assert!(
        stderr(&out).contains("nothing was changed"),
        "{}",
        stderr(&out)
    );
    assert_same("refused run", &before, &snapshot(root.path()));
}

#[test]
fn failed_is_exit_1_and_what_was_done_before_stays_done() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let root = TestRoot::fixture("example");
    // Something else already lives where web's state goes: the state engine never merges,
    // so web fails after db (alphabetically first) was migrated.
    let occupied = root.path().join("var/lib/machines/web");
    std::fs::create_dir_all(&occupied).unwrap();
    std::fs::write(occupied.join("somebody-elses-file"), "keep me").unwrap();
    let stand_ins = StandIns::new(&[]);
    let out = run(
        root.path(),
        &stand_ins,
        &["--yes", "--json", "--only", "db", "--only", "web"],
    );
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    let doc = json(&out);
    assert_eq!(doc["summary"]["outcome"], "failed");
    assert_eq!(doc["summary"]["exit_code"], 1);
    assert_eq!(doc["error"]["container"], "web");
    assert!(doc["error"]["problems"].is_null());
    assert_eq!(container(&doc, "db")["status"], "done");
    assert_eq!(container(&doc, "db")["state_result"]["outcome"], "copied");
    assert_eq!(container(&doc, "web")["status"], "failed");
    assert_eq!(
        std::fs::read_to_string(occupied.join("somebody-elses-file")).unwrap(),
        "keep me"
    );
    // The Nix file comes after every container: not written when one failed.
    assert!(!root.path().join("etc/nixos/nspawn-containers.nix").exists());
}

#[test]
fn exclude_leaves_a_container_out_and_unknown_names_are_usage_errors() {
    let root = TestRoot::fixture("example");
    let stand_ins = StandIns::new(&[]);
    let out = run(
        root.path(),
        &stand_ins,
        &["--dry-run", "--json", "--exclude", "web", "--exclude", "db"],
    );
    let doc = json(&out);
    let names: Vec<&str> = doc["containers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert!(
        !names.contains(&"web") && !names.contains(&"db"),
        "{names:?}"
    );
    assert!(names.contains(&"lan"), "{names:?}");
    assert!(!doc["nix_file"].as_str().unwrap().contains("web"));

    let out = run(root.path(), &stand_ins, &["--dry-run", "--exclude", "nope"]);
    assert_eq!(code(&out), 2);
    assert!(stderr(&out).contains("--exclude nope"), "{}", stderr(&out));
}

#[test]
fn quiet_prints_nothing_and_keeps_the_exit_code() {
    let root = TestRoot::fixture("example");
    let stand_ins = StandIns::new(&[]);
    let loud = run(root.path(), &stand_ins, &["--dry-run"]);
    let quiet = run(root.path(), &stand_ins, &["--dry-run", "-q"]);
    assert!(!loud.stdout.is_empty());
    assert!(
        quiet.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&quiet.stdout)
    );
    assert_eq!(code(&loud), code(&quiet));
    assert_eq!(code(&quiet), 3);
}

#[test]
fn without_a_terminal_and_without_yes_it_refuses_at_once() {
    let root = TestRoot::fixture("example");
    let before = snapshot(root.path());
    let stand_ins = StandIns::new(&[]);
    let started = std::time::Instant::now();
    let out = run(root.path(), &stand_ins, &[]);
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    assert!(started.elapsed() < std::time::Duration::from_secs(20));
    let err = stderr(&out);
    assert!(
        err.contains("no terminal") && err.contains("--yes"),
        "{err}"
    );
    assert!(out.stdout.is_empty());
    assert_same(
        "refusal without a terminal",
        &before,
        &snapshot(root.path()),
    );
}

#[test]
fn help_documents_every_outcome() {
    let out = Command::new(env!("CARGO_BIN_EXE_nixos-nspawn"))
        .args(["migrate", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "0  success",
        "1  failed",
        "2  usage",
        "3  success with follow-up",
        "4  refused",
    ] {
        assert!(help.contains(needle), "{needle} missing from\n{help}");
    }
}

/// Migrating in batches: a second run with other containers would have rewritten the
/// declarative file without the first batch; it is refused (nothing written) and says how.
#[test]
fn a_second_batch_never_drops_the_first_from_the_nix_file() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let root = TestRoot::fixture("example");
    let stand_ins = StandIns::new(&[]);
    let out = run(root.path(), &stand_ins, &["--yes", "-q", "--only", "db"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let file = root.path().join("etc/nixos/nspawn-containers.nix");
    let first = std::fs::read_to_string(&file).unwrap();
    let out = run(
        root.path(),
        &stand_ins,
        &["--yes", "--json", "--only", "web"],
    );
    assert_eq!(code(&out), 4, "{}", stderr(&out));
    let doc = json(&out);
    let problems = doc["error"]["problems"].to_string();
    assert!(
        problems.contains("already holds the migrated container(s) db"),
        "{problems}"
    );
    assert_eq!(std::fs::read_to_string(&file).unwrap(), first);
    assert!(!root.path().join("var/lib/machines/web").exists());
    // Another file for the second batch works.
    let out = run(
        root.path(),
        &stand_ins,
        &[
            "--yes",
            "-q",
            "--only",
            "web",
            "--output",
            "/etc/nixos/nspawn-containers-2.nix",
        ],
    );
    assert_eq!(code(&out), 3, "{}", stderr(&out));
    assert_eq!(std::fs::read_to_string(&file).unwrap(), first);
    // Both at once replace the file with both.
    let out = run(
        root.path(),
        &stand_ins,
        &["--dry-run", "-q", "--only", "db", "--only", "web"],
    );
    assert_eq!(code(&out), 3, "{}", stderr(&out));
}
