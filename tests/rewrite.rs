//! `migrate --rewrite`: the host's own Nix files are edited in place. Checked with the real
//! binary on copies of fixtures/nix/rewrite/*, the real `nix-instantiate --parse`, the module
//! evaluated by nixos/tests/render.nix against ../shared/nixpkgs, and the real `diff`.
#![allow(clippy::unwrap_used)]

mod util;

use nixos_nspawn::host::HostRoot;
use nixos_nspawn::migrate;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use util::{nix_parse, nixos_nspawn, nixpkgs, repo};

/// A private copy of fixtures/nix/rewrite/<name> (a host tree).
fn tree(name: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let src = repo().join("fixtures/nix/rewrite").join(name);
    let st = Command::new("cp")
        .arg("-a")
        .arg(format!("{}/.", src.display()))
        .arg(dir.path())
        .status()
        .unwrap();
    assert!(st.success());
    dir
}

fn read(root: &Path, host: &str) -> String {
    std::fs::read_to_string(root.join(host.trim_start_matches('/'))).unwrap()
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

fn text(o: &Output) -> String {
    format!(
        "--- stdout\n{}\n--- stderr\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Line numbers (1-based) of `old` that `diff` says are gone or changed in `new`.
fn lines_not_kept(old: &str, new: &str) -> Vec<usize> {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    std::fs::write(&a, old).unwrap();
    std::fs::write(&b, new).unwrap();
    let out = Command::new("diff")
        .arg("--unchanged-line-format=")
        .arg("--old-line-format=%dn\n")
        .arg("--new-line-format=")
        .arg(&a)
        .arg(&b)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.parse().unwrap())
        .collect()
}

/// Evaluate `attr` of nixos/tests/render.nix for `configuration` (the module with nixpkgs' real
/// files).
fn render(nixpkgs: &str, configuration: &Path, attr: &str) -> serde_json::Value {
    let out = Command::new("nix-instantiate")
        .args(["--eval", "--read-write-mode", "--strict", "--json"])
        .arg(repo().join("nixos/tests/render.nix"))
        .arg("--arg")
        .arg("configuration")
        .arg(configuration)
        .args(if attr.is_empty() {
            vec![]
        } else {
            vec!["-A", attr]
        })
        .env("NIXPKGS", nixpkgs)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "render.nix failed for {}:\n{}",
        configuration.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The lines of fixtures/nix/rewrite/basic/etc/nixos/configuration.nix that hold legacy
/// container definitions (written by hand from the fixture: everything else must stay).
const BASIC_LEGACY_LINES: &[usize] = &[
    15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, // containers.web = { … };
    27, // containers.cache.autoStart
    29, // containers.cache.config
    31, 32, 33, 34, 35, // containers = { a …; "b-2" …; };
];
#[test]
fn dry_run_shows_the_diff_and_changes_nothing() {
    let t = tree("basic");
    let before = read(t.path(), "/etc/nixos/configuration.nix");
    let out = nixos_nspawn(t.path(), &["migrate", "--dry-run", "--rewrite"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(
            "--- /etc/nixos/configuration.nix\n+++ /etc/nixos/configuration.nix (rewritten)\n"
        ),
        "{}",
        text(&out)
    );
    assert!(stdout.contains("--- /etc/nixos/db.nix\n"), "{}", text(&out));
    assert!(stdout.contains("-  containers.web = {\n"), "{}", text(&out));
    assert!(
        stdout.contains("+  nixos.containers.instances.web = {\n"),
        "{}",
        text(&out)
    );
    assert!(stdout.contains("nixos-nspawn module"), "{}", text(&out));
    assert_eq!(read(t.path(), "/etc/nixos/configuration.nix"), before);
    assert!(backups(t.path()).is_empty());
}

#[test]
fn rewrite_parses_evaluates_and_changes_only_the_definitions() {
    let t = tree("basic");
    let conf_before = read(t.path(), "/etc/nixos/configuration.nix");
    let db_before = read(t.path(), "/etc/nixos/db.nix");
    let out = nixos_nspawn(t.path(), &["migrate", "--yes", "--rewrite"]);
    assert!(matches!(out.status.code(), Some(0 | 3)), "{}", text(&out));
    let conf = read(t.path(), "/etc/nixos/configuration.nix");
    let db = read(t.path(), "/etc/nixos/db.nix");
    for (name, after) in [("configuration.nix", &conf), ("db.nix", &db)] {
        nix_parse(after).unwrap_or_else(|e| panic!("{name} does not parse:\n{e}\n{after}"));
        assert!(!after.contains("containers.web ="), "{after}");
    }
    assert!(
        !conf.contains("containers.cache") && !conf.contains("containers = {"),
        "{conf}"
    );
    assert!(!db.contains("containers.db"), "{db}");
    // Every line outside the legacy definitions is kept (real diff, line numbers by hand).
    let gone = lines_not_kept(&conf_before, &conf);
    let outside: Vec<&usize> = gone
        .iter()
        .filter(|l| !BASIC_LEGACY_LINES.contains(l))
        .collect();
    assert!(
        outside.is_empty(),
        "lines changed outside the definitions: {outside:?}\n{conf}"
    );
    assert!(!gone.is_empty(), "nothing changed:\n{conf}");
    for keep in [
        "# The host's configuration",
        "# keep me",
        "# shared between containers",
        "# between the cache bindings",
        "networking.domain = domain;",
    ] {
        assert!(conf.contains(keep), "{keep}: {conf}");
    }
    let gone_db = lines_not_kept(&db_before, &db);
    assert!(
        gone_db.iter().all(|l| (5..=8).contains(l)),
        "{gone_db:?}\n{db}"
    );
    // Backups: the originals, byte for byte.
    let baks = backups(t.path());
    assert_eq!(baks.len(), 2, "{baks:?}");
    for b in &baks {
        let orig = if b.to_string_lossy().contains("configuration.nix") {
            &conf_before
        } else {
            &db_before
        };
        assert_eq!(
            &std::fs::read_to_string(b).unwrap(),
            orig,
            "{}",
            b.display()
        );
    }
    // Everything rewritten in place: no separate file.
    assert!(!t.path().join("etc/nixos/nspawn-containers.nix").exists());

    let Some(lib) = nixpkgs() else { return };
    let conf_path = t.path().join("etc/nixos/configuration.nix");
    let d = render(&lib, &conf_path, "description");
    let names: Vec<&String> = d.as_object().unwrap().keys().collect();
    assert_eq!(names, ["a", "b-2", "cache", "db", "web"]);
    assert_eq!(d["web"]["autoStart"], true);
    assert_eq!(d["cache"]["autoStart"], false);
    assert_eq!(d["db"]["ephemeral"], true);
    assert_eq!(
        d["web"]["network"]["v4"]["static"]["hostAddresses"],
        serde_json::json!(["10.0.0.1/32"])
    );
    // The guest config still sees the host's `config` (same scope).
    let g = render(&lib, &conf_path, "guestSettings");
    assert_eq!(g["web"]["hostName"], "host-web");
}

#[test]
fn the_replaced_ranges_are_the_only_difference() {
    let t = tree("basic");
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
    assert!(plan.refused.is_empty(), "{:?}", plan.refused);
    assert_eq!(plan.rewritten().len(), 5, "{:?}", plan.rewritten());
    for e in &plan.edits {
        // Outside the ranges, byte for byte; inside, each range held a legacy definition.
        let mut pos_old = 0;
        let mut pos_new = 0;
        for (r, new) in &e.replaced {
            let kept = &e.original[pos_old..r.start];
            assert_eq!(&e.rewritten[pos_new..pos_new + kept.len()], kept);
            pos_new += kept.len() + new.len();
            assert_eq!(&e.rewritten[pos_new - new.len()..pos_new], new);
            let old = &e.original[r.clone()];
            assert!(
                old.is_empty()
                    || old.trim_start().starts_with("containers")
                    || old.trim_start().starts_with("a =")
                    || old.trim_start().starts_with("\"b-2\""),
                "replaced text is not a definition: {old:?}"
            );
            pos_old = r.end;
        }
        assert_eq!(&e.rewritten[pos_new..], &e.original[pos_old..]);
    }
}

#[test]
fn a_second_run_has_nothing_to_rewrite() {
    let t = tree("basic");
    let out = nixos_nspawn(t.path(), &["migrate", "--yes", "--rewrite"]);
    assert!(matches!(out.status.code(), Some(0 | 3)), "{}", text(&out));
    let after = read(t.path(), "/etc/nixos/configuration.nix");
    let baks = backups(t.path());
    let again = nixos_nspawn(t.path(), &["migrate", "--yes", "--rewrite"]);
    assert!(
        matches!(again.status.code(), Some(0 | 3)),
        "{}",
        text(&again)
    );
    assert!(
        String::from_utf8_lossy(&again.stdout).contains("--rewrite: nothing to rewrite in place"),
        "{}",
        text(&again)
    );
    assert_eq!(read(t.path(), "/etc/nixos/configuration.nix"), after);
    assert_eq!(backups(t.path()), baks);
}

#[test]
fn refused_containers_stay_and_go_to_the_output_file() {
    let t = tree("refuse");
    let before = read(t.path(), "/etc/nixos/configuration.nix");
    let more_before = read(t.path(), "/etc/nixos/more.nix");
    let out = nixos_nspawn(t.path(), &["migrate", "--yes", "--rewrite"]);
    assert!(matches!(out.status.code(), Some(0 | 3)), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    for (name, why) in [
        ("x", "add `lib` to the module's arguments"),
        ("y", "outside the bindings that would be replaced"),
        ("z", "spread over several files"),
    ] {
        assert!(
            stdout.contains(&format!("container {name} is not rewritten in place"))
                && stdout.contains(why),
            "{name}: {}",
            text(&out)
        );
    }
    let after = read(t.path(), "/etc/nixos/configuration.nix");
    nix_parse(&after).unwrap();
    // Only w's definition (lines 25-28) changed; x, y, z are as they were.
    let gone = lines_not_kept(&before, &after);
    assert!(
        gone.iter().all(|l| (25..=28).contains(l)),
        "{gone:?}\n{after}"
    );
    assert!(!gone.is_empty());
    assert!(
        after.contains("nixos.containers.instances.w = {"),
        "{after}"
    );
    assert_eq!(read(t.path(), "/etc/nixos/more.nix"), more_before);
    // The refused ones are in the separate file, w is not.
    let sep = read(t.path(), "/etc/nixos/nspawn-containers.nix");
    nix_parse(&sep).unwrap();
    for name in ["x", "y", "z"] {
        assert!(
            sep.contains(&format!("nixos.containers.instances.{name} =")),
            "{sep}"
        );
    }
    assert!(!sep.contains("nixos.containers.instances.w ="), "{sep}");
    // One backup, of the one file rewritten.
    let baks = backups(t.path());
    assert_eq!(baks.len(), 1, "{baks:?}");
    assert_eq!(std::fs::read_to_string(&baks[0]).unwrap(), before);
}

#[test]
fn rewrite_without_yes_or_dry_run_refuses_without_a_terminal() {
    let t = tree("basic");
    let before = read(t.path(), "/etc/nixos/configuration.nix");
    let out = nixos_nspawn(t.path(), &["migrate", "--rewrite"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--rewrite edits the host's own Nix files"),
        "{}",
        text(&out)
    );
    assert_eq!(read(t.path(), "/etc/nixos/configuration.nix"), before);
    assert!(backups(t.path()).is_empty());
}

#[test]
fn a_file_changed_after_reading_is_not_written() {
    let t = tree("basic");
    let host = HostRoot::new(t.path()).unwrap();
    let legacy = migrate::scan(&host, &migrate::ScanOptions::default());
    let m = migrate::prepare(
        t.path(),
        legacy,
        Path::new("/etc/nixos/nspawn-containers.nix"),
        false,
        false,
    );
    let plan =
        nixos_nspawn::rewrite::plan(&m.legacy, &m.instances, true, &|p| host.read_to_string(p));
    let conf = t.path().join("etc/nixos/configuration.nix");
    let changed = format!(
        "{}# edited meanwhile\n",
        std::fs::read_to_string(&conf).unwrap()
    );
    std::fs::write(&conf, &changed).unwrap();
    let err = nixos_nspawn::rewrite::apply(&host, &plan, "1").unwrap_err();
    assert!(err.contains("changed since it was read"), "{err}");
    assert_eq!(std::fs::read_to_string(&conf).unwrap(), changed);
    assert!(backups(t.path()).is_empty());
}

#[test]
fn shapes_are_rewritten_or_refused_and_the_result_evaluates() {
    let t = tree("shapes");
    let files = [
        "configuration.nix",
        "prefixed.nix",
        "merged.nix",
        "q.nix",
        "clash.nix",
    ];
    let before: Vec<String> = files
        .iter()
        .map(|f| read(t.path(), &format!("/etc/nixos/{f}")))
        .collect();
    let out = nixos_nspawn(t.path(), &["migrate", "--yes", "--rewrite"]);
    assert!(matches!(out.status.code(), Some(0 | 3)), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    for (name, why) in [
        (
            "stopped",
            "already defines `systemd.services` (not as a plain `{ … }`)",
        ),
        ("q", "/etc/nixos/q.nix:2, outside the bindings"),
        ("m", "not written directly as `containers = { … };`"),
    ] {
        let line = stdout
            .lines()
            .find(|l| l.contains(&format!("container {name} is not rewritten in place")))
            .unwrap_or_else(|| panic!("no refusal for {name}: {}", text(&out)));
        assert!(line.contains(why), "{line}");
    }
    let after: Vec<String> = files
        .iter()
        .map(|f| read(t.path(), &format!("/etc/nixos/{f}")))
        .collect();
    for (f, a) in files.iter().zip(&after) {
        nix_parse(a).unwrap_or_else(|e| panic!("{f}: {e}\n{a}"));
    }
    // `config.containers."my-web"` keeps its `config.` prefix; merged.nix and q.nix untouched.
    assert!(
        after[1].contains("  config.nixos.containers.instances.my-web = {\n"),
        "{}",
        after[1]
    );
    assert_eq!(after[2], before[2]);
    assert_eq!(after[3], before[3]);
    assert_eq!(after[4], before[4]);
    // p left the set (q stays in it), stopped stays as it was; both (mkMerge) was replaced.
    let conf = &after[0];
    assert!(conf.contains("  containers = {\n    # p is rewritten, q is not (its options are in q.nix): p moves out of the set\n    q = import ./q.nix;\n  };\n  nixos.containers.instances.p = {\n"), "{conf}");
    // The new drop-ins merged into the plain `systemd.services = { … };`.
    assert!(
        conf.contains("  systemd.services.\"systemd-nspawn@p\" = {"),
        "{conf}"
    );
    assert!(!conf.contains("containers.both"), "{conf}");
    assert!(
        conf.contains(
            "  nixos.containers.instances.cond = lib.mkIf (config.networking.useNetworkd) {\n"
        ),
        "{conf}"
    );

    let Some(lib) = nixpkgs() else { return };
    // The host files alone: the rewritten containers are new instances, the refused ones are
    // still legacy containers, and the module finds no name in both.
    let conf_path = t.path().join("etc/nixos/configuration.nix");
    let all = render(&lib, &conf_path, "");
    assert_eq!(all["assertions"], serde_json::json!([]), "{all}");
    let names: Vec<&String> = all["description"].as_object().unwrap().keys().collect();
    assert_eq!(names, ["both", "cond", "my-web", "p"]);
    // With the separate file too, exactly the refused ones are defined twice (legacy and new):
    // they went to the output file and are still in the host files.
    let wrap = t.path().join("wrap.nix");
    std::fs::write(
        &wrap,
        format!(
            "{{ imports = [ {} {} ]; }}\n",
            conf_path.display(),
            t.path().join("etc/nixos/nspawn-containers.nix").display()
        ),
    )
    .unwrap();
    let both = render(&lib, &wrap, "");
    let a = both["assertions"].to_string();
    assert!(a.contains("m, q, stopped are declared both"), "{a}");
}

/// The codes of the warnings the JSON report gives container `name`.
fn codes(report: &serde_json::Value, name: &str) -> Vec<String> {
    report["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap()["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["code"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn in_place_the_let_bindings_are_no_free_variables() {
    let t = tree("basic");
    let plain = nixos_nspawn(t.path(), &["migrate", "--dry-run", "--json"]);
    let plain = util::json(&plain);
    // The separate file cannot bind the `let`-bound name b-2's condition uses.
    assert!(codes(&plain, "b-2").contains(&"free-variable".to_string()));
    let out = nixos_nspawn(t.path(), &["migrate", "--dry-run", "--json", "--rewrite"]);
    // stdout stays one JSON document; the diff is on stderr.
    let report = util::json(&out);
    assert!(!codes(&report, "web").contains(&"free-variable".to_string()));
    assert!(!codes(&report, "b-2").contains(&"free-variable".to_string()));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("+  nixos.containers.instances.web = {"),
        "{}",
        text(&out)
    );
    // Nothing is carried: the names are bound where the definitions are.
    let diff = String::from_utf8_lossy(&out.stderr);
    assert!(
        !diff
            .lines()
            .any(|l| l.starts_with('+') && l.contains("webPort = 8080")),
        "{diff}"
    );
    // Everything is rewritten in place: no separate file is planned.
    assert!(report["output"].is_null(), "{report}");
}

/// Deploy container `name` in the tree as the legacy module would have: its `.conf` a link
/// through `/etc/static` into a store path.
fn deploy(root: &Path, name: &str, conf: &str) {
    let store = root.join("nix/store/00000000000000000000000000000000-etc/etc/nixos-containers");
    std::fs::create_dir_all(&store).unwrap();
    std::fs::write(store.join(format!("{name}.conf")), conf).unwrap();
    let stat = root.join("etc/static");
    if !stat.exists() {
        std::os::unix::fs::symlink("/nix/store/00000000000000000000000000000000-etc/etc", &stat)
            .unwrap();
    }
    std::fs::create_dir_all(root.join("etc/nixos-containers")).unwrap();
    std::os::unix::fs::symlink(
        format!("/etc/static/nixos-containers/{name}.conf"),
        root.join(format!("etc/nixos-containers/{name}.conf")),
    )
    .unwrap();
}

#[test]
fn a_deployed_container_rewritten_earlier_is_not_written_twice() {
    let t = tree("basic");
    deploy(
        t.path(),
        "web",
        "PRIVATE_NETWORK=1\nHOST_ADDRESS=10.0.0.1\nLOCAL_ADDRESS=10.0.0.2\n",
    );
    let out = nixos_nspawn(t.path(), &["migrate", "--yes", "--rewrite"]);
    assert!(matches!(out.status.code(), Some(0 | 3)), "{}", text(&out));
    let after = read(t.path(), "/etc/nixos/configuration.nix");
    assert!(!t.path().join("etc/nixos/nspawn-containers.nix").exists());
    // Before nixos-rebuild the legacy .conf is still there: a second run finds web on disk
    // only, and must not write a second definition of it into the output file.
    let again = nixos_nspawn(t.path(), &["migrate", "--yes", "--rewrite"]);
    assert!(
        matches!(again.status.code(), Some(0 | 3)),
        "{}",
        text(&again)
    );
    let stdout = String::from_utf8_lossy(&again.stdout);
    assert!(
        stdout.contains(
            "container web is already defined in the new form at /etc/nixos/configuration.nix:"
        ),
        "{}",
        text(&again)
    );
    assert!(
        !t.path().join("etc/nixos/nspawn-containers.nix").exists(),
        "{}",
        text(&again)
    );
    assert_eq!(read(t.path(), "/etc/nixos/configuration.nix"), after);
}

#[test]
fn a_definition_in_a_rec_set_is_refused_and_its_file_left_alone() {
    let t = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(t.path().join("etc/nixos")).unwrap();
    let conf =
        "{ config, lib, ... }:\nrec {\n  containers.r = { autoStart = true; config = { }; };\n}\n";
    std::fs::write(t.path().join("etc/nixos/configuration.nix"), conf).unwrap();
    let out = nixos_nspawn(t.path(), &["migrate", "--yes", "--rewrite"]);
    assert!(matches!(out.status.code(), Some(0 | 3)), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(
            "container r is not rewritten in place: at /etc/nixos/configuration.nix:3: the binding is in a `rec` set"
        ),
        "{}",
        text(&out)
    );
    assert_eq!(read(t.path(), "/etc/nixos/configuration.nix"), conf);
    assert!(backups(t.path()).is_empty());
    let sep = read(t.path(), "/etc/nixos/nspawn-containers.nix");
    assert!(sep.contains("nixos.containers.instances.r ="), "{sep}");
}
