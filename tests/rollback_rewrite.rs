//! `migrate --rollback` after `migrate --rewrite`: the host's own Nix file gets each rolled-back
//! container's old definition back, the other containers of the same file stay rewritten, and
//! when the last one is rolled back the file is the original, byte for byte. A file the
//! administrator edited since is refused (named, with the backup and the fix) unless --force,
//! which keeps the edited version as a further backup. The legacy containers stay byte- and
//! timestamp-identical throughout. Real trees (fixtures), real `nix-instantiate --parse`.
#![allow(clippy::unwrap_used)]

mod util;

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use util::*;

use util::migrate_with_stand_ins as run;

fn text(o: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The legacy containers' own files (the host's Nix files are checked on their own).
const LEGACY: &[&str] = &[
    "etc/nixos-containers",
    "var/lib/nixos-containers",
    "nix/var/nix/profiles/per-container",
];

fn legacy_snapshot(root: &Path) -> BTreeMap<PathBuf, String> {
    let mut all = BTreeMap::new();
    for l in LEGACY {
        let p = root.join(l);
        if p.exists() {
            for (k, v) in snapshot(&p) {
                all.insert(Path::new(l).join(k), v);
            }
        }
    }
    all
}

const CONF: &str = "etc/nixos/configuration.nix";

/// Bytes, mode, owner and modification time of a file.
type FileId = (Vec<u8>, u32, u32, i64, i64);

fn file_id(p: &Path) -> FileId {
    let m = std::fs::symlink_metadata(p).unwrap();
    (
        std::fs::read(p).unwrap(),
        m.mode(),
        m.uid(),
        m.mtime(),
        m.mtime_nsec(),
    )
}

fn backups(root: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(root.join("etc/nixos"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().contains(".bak-"))
        .collect();
    out.sort();
    out
}

/// The example host (comments, a `let` binding, five containers in one file), with web and db
/// rewritten in place.
fn rewritten_example() -> (TestRoot, StandIns, FileId) {
    let root = TestRoot::fixture("example");
    let stand_ins = StandIns::new(&[]);
    age_atimes(root.path());
    let original = file_id(&root.path().join(CONF));
    let out = run(
        root.path(),
        &stand_ins,
        &["--yes", "-q", "--rewrite", "--only", "web", "--only", "db"],
    );
    assert!(matches!(out.status.code(), Some(0 | 3)), "{}", text(&out));
    let conf = std::fs::read_to_string(root.path().join(CONF)).unwrap();
    assert!(
        conf.contains("nixos.containers.instances.web = {")
            && conf.contains("nixos.containers.instances.db = {")
            && !conf.contains("containers.web = {\n    autoStart"),
        "{conf}"
    );
    (root, stand_ins, original)
}

#[test]
fn rolling_back_one_then_the_other_gives_the_original_file_back() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let (root, stand_ins, original) = rewritten_example();
    let legacy_before = legacy_snapshot(root.path());
    let written = std::fs::read_to_string(root.path().join(CONF)).unwrap();

    // web alone: its old definition comes back, db stays rewritten, the rest as it was.
    let out = run(root.path(), &stand_ins, &["--rollback", "web", "--yes"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("gave containers.web its old definition back in /etc/nixos/configuration.nix; db stays rewritten"),
        "{}",
        text(&out)
    );
    let mid = std::fs::read_to_string(root.path().join(CONF)).unwrap();
    nix_parse(&mid).unwrap_or_else(|e| panic!("{e}\n{mid}"));
    assert!(!mid.contains("nixos.containers.instances.web"), "{mid}");
    assert!(mid.contains("nixos.containers.instances.db = {"), "{mid}");
    let orig_text = String::from_utf8(original.0.clone()).unwrap();
    let web_block = &orig_text
        [orig_text.find("  containers.web = {").unwrap()..orig_text.find("  # ---- db").unwrap()];
    assert!(mid.contains(web_block), "web's block is not back:\n{mid}");
    // Everything but db's block is the original's (and db's block is what was written).
    let db_new = &written[written.find("  nixos.containers.instances.db = {").unwrap()
        ..written.find("  # ---- vpn").unwrap()];
    let db_old = &orig_text
        [orig_text.find("  containers.db = {").unwrap()..orig_text.find("  # ---- vpn").unwrap()];
    assert_eq!(mid.replace(db_new, db_old), orig_text);
    assert!(!root.path().join("var/lib/machines/web").exists());
    assert!(root.path().join("var/lib/machines/db").is_dir());

    // db: the file is the original, byte for byte, mode and mtime; no backup is left.
    let out = run(root.path(), &stand_ins, &["--rollback", "db", "--yes"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(
            "restored /etc/nixos/configuration.nix from its backup /etc/nixos/configuration.nix.bak-"
        ),
        "{}",
        text(&out)
    );
    assert_eq!(file_id(&root.path().join(CONF)), original);
    assert!(
        backups(root.path()).is_empty(),
        "{:?}",
        backups(root.path())
    );
    assert_same(
        "legacy after rewrite and two rollbacks",
        &legacy_before,
        &legacy_snapshot(root.path()),
    );
}

#[test]
fn rolling_back_both_at_once_gives_the_original_file_back() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let (root, stand_ins, original) = rewritten_example();
    let legacy_before = legacy_snapshot(root.path());
    let out = run(
        root.path(),
        &stand_ins,
        &["--rollback", "db", "web", "--yes", "--json"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let doc = json(&out);
    assert_eq!(doc["outcome"], "success", "{doc:#}");
    assert_eq!(file_id(&root.path().join(CONF)), original);
    assert!(backups(root.path()).is_empty());
    assert_same(
        "legacy after rewrite and rollback",
        &legacy_before,
        &legacy_snapshot(root.path()),
    );
}

#[test]
fn a_file_edited_since_is_refused_unless_force_which_keeps_the_edit() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let (root, stand_ins, original) = rewritten_example();
    let conf = root.path().join(CONF);
    let edited = format!(
        "{}# an edit after the migration\n",
        std::fs::read_to_string(&conf).unwrap()
    );
    std::fs::write(&conf, &edited).unwrap();
    let before = snapshot(root.path());
    let out = run(root.path(), &stand_ins, &["--rollback", "web", "--yes"]);
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    for needle in [
        "--rollback web: refused, nothing was done",
        "/etc/nixos/configuration.nix was changed since nixos-nspawn rewrote it",
        "diff /etc/nixos/configuration.nix.bak-",
        "pass --force",
        "only db rewritten",
    ] {
        assert!(err.contains(needle), "{needle:?}: {}", text(&out));
    }
    assert_same("after a refused rollback", &before, &snapshot(root.path()));

    // --force: the edited file is kept as a further backup, web's definition comes back.
    let out = run(
        root.path(),
        &stand_ins,
        &["--rollback", "web", "--yes", "--force"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let kept: Vec<PathBuf> = backups(root.path())
        .into_iter()
        .filter(|b| std::fs::read_to_string(b).unwrap() == edited)
        .collect();
    assert_eq!(kept.len(), 1, "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&format!(
            "--force: kept /etc/nixos/configuration.nix as it was (changed since the rewrite) as /{}",
            kept[0].strip_prefix(root.path()).unwrap().display()
        )),
        "{}",
        text(&out)
    );
    let now = std::fs::read_to_string(&conf).unwrap();
    nix_parse(&now).unwrap();
    assert!(now.contains("  containers.web = {\n"), "{now}");
    assert!(now.contains("nixos.containers.instances.db = {"), "{now}");
    // The last one needs no force: the file is what the previous rollback wrote.
    let out = run(root.path(), &stand_ins, &["--rollback", "db", "--yes"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(file_id(&conf).0, original.0);
}

/// A private copy of fixtures/nix/rewrite/<name> (a host tree with Nix files only).
fn rewrite_tree(name: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let st = Command::new("cp")
        .arg("-a")
        .arg(format!(
            "{}/.",
            repo().join("fixtures/nix/rewrite").join(name).display()
        ))
        .arg(dir.path())
        .status()
        .unwrap();
    assert!(st.success());
    dir
}

#[test]
fn a_member_of_a_set_of_containers_comes_back_into_its_set() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    // `containers = { a = …; "b-2" = …; };` rewritten as a whole; a rolled back alone goes back
    // into a `containers = { … };` set, b-2 stays rewritten after it.
    let t = rewrite_tree("basic");
    let stand_ins = StandIns::new(&[]);
    let conf = t.path().join(CONF);
    let original = std::fs::read_to_string(&conf).unwrap();
    let db_original = std::fs::read_to_string(t.path().join("etc/nixos/db.nix")).unwrap();
    let out = run(t.path(), &stand_ins, &["--yes", "-q", "--rewrite"]);
    assert!(matches!(out.status.code(), Some(0 | 3)), "{}", text(&out));
    assert!(
        !std::fs::read_to_string(&conf)
            .unwrap()
            .contains("containers = {"),
        "the set was not replaced as a whole"
    );
    let out = run(t.path(), &stand_ins, &["--rollback", "a", "--yes"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let mid = std::fs::read_to_string(&conf).unwrap();
    nix_parse(&mid).unwrap_or_else(|e| panic!("{e}\n{mid}"));
    assert!(
        mid.contains("  containers = {\n    # first member\n    a = { config = { }; };\n  };\n"),
        "{mid}"
    );
    assert!(!mid.contains("nixos.containers.instances.a ="), "{mid}");
    for still in ["web", "cache", "b-2"] {
        assert!(
            mid.contains(&format!("nixos.containers.instances.{still} =")),
            "{still}: {mid}"
        );
    }
    // It evaluates with the module and nixpkgs' real files: a is a legacy container again, the
    // others are new instances, no name is both.
    if let Some(lib) = nixpkgs() {
        let out = Command::new("nix-instantiate")
            .args(["--eval", "--read-write-mode", "--strict", "--json"])
            .arg(repo().join("nixos/tests/render.nix"))
            .arg("--arg")
            .arg("configuration")
            .arg(&conf)
            .env("NIXPKGS", &lib)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out));
        let all: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(all["assertions"], serde_json::json!([]), "{all}");
        let names: Vec<&String> = all["description"].as_object().unwrap().keys().collect();
        assert_eq!(names, ["b-2", "cache", "db", "web"]);
    }
    // The others, in two files, in one go: both files are their originals.
    let out = run(
        t.path(),
        &stand_ins,
        &["--rollback", "web", "b-2", "db", "cache", "--yes"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(std::fs::read_to_string(&conf).unwrap(), original);
    assert_eq!(
        std::fs::read_to_string(t.path().join("etc/nixos/db.nix")).unwrap(),
        db_original
    );
    assert!(backups(t.path()).is_empty(), "{:?}", backups(t.path()));
}

#[test]
fn every_subset_of_rewritten_containers_gives_a_file_that_parses() {
    use nixos_nspawn::host::HostRoot;
    use nixos_nspawn::migrate;
    let t = rewrite_tree("basic");
    let host = HostRoot::new(t.path()).unwrap();
    let legacy = migrate::scan(&host, &migrate::ScanOptions::default());
    let m = migrate::prepare(
        t.path(),
        legacy,
        Path::new("/etc/nixos/nspawn-containers.nix"),
        true,
        false,
    );
    let plan =
        nixos_nspawn::rewrite::plan(&m.legacy, &m.instances, true, &|p| host.read_to_string(p));
    let e = plan
        .edits
        .iter()
        .find(|e| e.file == Path::new("/etc/nixos/configuration.nix"))
        .unwrap();
    let names = &e.containers;
    assert_eq!(names.len(), 4, "{names:?}");
    for mask in 0u32..(1 << names.len()) {
        let on: Vec<&String> = names
            .iter()
            .enumerate()
            .filter(|(k, _)| mask & (1 << k) != 0)
            .map(|(_, n)| n)
            .collect();
        let text =
            nixos_nspawn::rewrite::compose(&e.original, &e.units, &|c| on.iter().any(|n| *n == c))
                .unwrap();
        nix_parse(&text).unwrap_or_else(|err| panic!("{on:?}: {err}\n{text}"));
        for n in names {
            let attr = format!("nixos.containers.instances.{n} =");
            assert_eq!(
                text.contains(&attr),
                on.contains(&n),
                "{n} in {on:?}:\n{text}"
            );
        }
        if on.is_empty() {
            assert_eq!(text, e.original);
        }
        if on.len() == names.len() {
            assert_eq!(text, e.rewritten);
        }
    }
}

#[test]
fn a_container_cleaned_up_stays_rewritten_when_another_of_its_file_is_rolled_back() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let (root, stand_ins, original) = rewritten_example();
    let written = std::fs::read_to_string(root.path().join(CONF)).unwrap();
    // web has booted (its state changed after the migration) and NixOS no longer deploys its
    // legacy definition: it can be cleaned up.
    std::thread::sleep(std::time::Duration::from_millis(20));
    std::fs::write(root.path().join("var/lib/machines/web/booted"), "1").unwrap();
    std::fs::remove_file(root.path().join("etc/nixos-containers/web.conf")).unwrap();
    let out = run(root.path(), &stand_ins, &["--cleanup", "web", "--yes"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    // db goes back; web's new definition stays (there is no going back for it).
    let out = run(root.path(), &stand_ins, &["--rollback", "db", "--yes"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let now = std::fs::read_to_string(root.path().join(CONF)).unwrap();
    nix_parse(&now).unwrap();
    let orig_text = String::from_utf8(original.0).unwrap();
    let db_old = &orig_text
        [orig_text.find("  containers.db = {").unwrap()..orig_text.find("  # ---- vpn").unwrap()];
    let db_new = &written[written.find("  nixos.containers.instances.db = {").unwrap()
        ..written.find("  # ---- vpn").unwrap()];
    assert_eq!(now, written.replace(db_new, db_old));
    assert!(
        now.contains("  nixos.containers.instances.web = {"),
        "{now}"
    );
    // The original stays kept: web's rewrite is still in the file.
    assert_eq!(backups(root.path()).len(), 1);
}

#[test]
fn a_second_rewrite_of_the_same_file_is_rolled_back_in_its_turn() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let (root, stand_ins, original) = rewritten_example();
    let conf = root.path().join(CONF);
    let out = run(root.path(), &stand_ins, &["--rollback", "web", "--yes"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let between = std::fs::read(&conf).unwrap();
    // Rewritten again right away (the first backup is still there: a second name is taken).
    let out = run(
        root.path(),
        &stand_ins,
        &["--yes", "-q", "--rewrite", "--only", "web"],
    );
    assert!(matches!(out.status.code(), Some(0 | 3)), "{}", text(&out));
    assert_eq!(backups(root.path()).len(), 2, "{:?}", backups(root.path()));
    // db first: the file was rewritten again since db's rewrite; refused, naming web.
    let out = run(root.path(), &stand_ins, &["--rollback", "db", "--yes"]);
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("A later `migrate --rewrite` rewrote it again (web): roll those back first"),
        "{}",
        text(&out)
    );
    // web, then db: each rewrite undone in turn, the original at the end.
    let out = run(root.path(), &stand_ins, &["--rollback", "web", "--yes"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(std::fs::read(&conf).unwrap(), between);
    let out = run(root.path(), &stand_ins, &["--rollback", "db", "--yes"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(file_id(&conf), original);
    assert!(backups(root.path()).is_empty());
}

#[test]
fn a_lost_backup_is_refused_and_force_leaves_the_file_to_the_admin() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let (root, stand_ins, _) = rewritten_example();
    let baks = backups(root.path());
    assert_eq!(baks.len(), 1);
    std::fs::remove_file(&baks[0]).unwrap();
    let written = std::fs::read(root.path().join(CONF)).unwrap();
    let out = run(root.path(), &stand_ins, &["--rollback", "web", "--yes"]);
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    let bak = format!("/{}", baks[0].strip_prefix(root.path()).unwrap().display());
    assert!(
        err.contains(&format!(
            "kept as {bak} when --rewrite replaced web's definition, cannot be read"
        )) && err.contains("pass --force"),
        "{}",
        text(&out)
    );
    assert!(root.path().join("var/lib/machines/web").is_dir());
    let out = run(
        root.path(),
        &stand_ins,
        &["--rollback", "web", "--yes", "--force"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(
            "--force: left /etc/nixos/configuration.nix as it is, web's old definition was not given back"
        ),
        "{}",
        text(&out)
    );
    assert_eq!(std::fs::read(root.path().join(CONF)).unwrap(), written);
    assert!(!root.path().join("var/lib/machines/web").exists());
}
