//! `migrate --dry-run` end to end: the real binary on copies of every fixture host, its output
//! checked with the real `nix-instantiate` and `systemd-nspawn`, and the host tree checked to be
//! exactly unchanged (contents, owners, modes and every timestamp, atime included).
#![allow(clippy::unwrap_used)]

mod util;

use std::path::PathBuf;
use util::*;

fn scenarios() -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(repo().join("fixtures/hosts"))
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.path().join("root").is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    assert!(!v.is_empty(), "no fixture hosts");
    v
}

fn dry_run_json(root: &TestRoot, extra: &[&str]) -> (serde_json::Value, i32) {
    let mut args = vec!["migrate", "--dry-run", "--json"];
    args.extend_from_slice(extra);
    let out = root.run(&args);
    let code = out.status.code().unwrap_or(-1);
    assert!(
        code == 0 || code == 3,
        "exit code {code}\n--- stderr\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (json(&out), code)
}

#[test]
fn dry_run_changes_nothing_not_even_atimes() {
    for s in scenarios() {
        let root = TestRoot::fixture(&s);
        age_atimes(root.path());
        let before = snapshot(root.path());
        let _ = dry_run_json(&root, &[]);
        let out = root.run(&["migrate", "--dry-run"]);
        assert!(
            matches!(out.status.code(), Some(0) | Some(3)),
            "{s}: human report failed"
        );
        let after = snapshot(root.path());
        for (p, b) in &before {
            assert_eq!(Some(b), after.get(p), "{s}: {} changed", p.display());
        }
        assert_eq!(
            before.len(),
            after.len(),
            "{s}: entries were added or removed"
        );
    }
}

#[test]
fn report_follows_the_json_contract() {
    for s in scenarios() {
        let root = TestRoot::fixture(&s);
        let (j, code) = dry_run_json(&root, &[]);
        assert_eq!(j["version"], 1, "{s}");
        assert_eq!(j["dry_run"], true);
        assert_eq!(
            j["summary"]["exit_code"], code,
            "{s}: exit code and summary disagree"
        );
        for c in j["containers"].as_array().unwrap() {
            let name = c["name"].as_str().unwrap();
            assert!(
                matches!(c["kind"].as_str(), Some("declarative") | Some("imperative")),
                "{s}/{name}"
            );
            assert_eq!(
                c["state"]["to"],
                format!("/var/lib/machines/{name}"),
                "{s}/{name}"
            );
            for k in ["nix", "nspawn"] {
                assert!(
                    c[k].as_str().is_some_and(|t| !t.is_empty()),
                    "{s}/{name}: no {k}"
                );
            }
            for w in c["warnings"].as_array().unwrap() {
                let code = w["code"].as_str().unwrap();
                assert!(
                    nixos_nspawn::warnings::spec(code).is_some(),
                    "{s}/{name}: undeclared code {code}"
                );
                assert!(w["option"].is_string() && w["message"].is_string());
            }
            // Paths are host paths: nothing may leak the temp dir the host is mounted at.
            let text = c.to_string();
            assert!(
                !text.contains(&root.path().display().to_string()),
                "{s}/{name}: report contains the real root path: {text}"
            );
        }
    }
}

#[test]
fn every_emitted_nix_text_parses_with_nix_instantiate() {
    if !have_tool("nix-instantiate", "nix-bin") {
        return;
    }
    for s in scenarios() {
        let root = TestRoot::fixture(&s);
        let (j, _) = dry_run_json(&root, &[]);
        if let Some(file) = j["nix_file"].as_str() {
            nix_parse(file)
                .unwrap_or_else(|e| panic!("{s}: host file does not parse:\n{e}\n{file}"));
        }
        for c in j["containers"].as_array().unwrap() {
            let nix = c["nix"].as_str().unwrap();
            nix_parse(nix)
                .unwrap_or_else(|e| panic!("{s}/{}: nix does not parse:\n{e}\n{nix}", c["name"]));
        }
    }
}

#[test]
fn every_nspawn_text_passes_systemd_nspawns_parser() {
    if !have_tool("systemd-nspawn", "systemd-container") {
        return;
    }
    for s in scenarios() {
        let root = TestRoot::fixture(&s);
        let (j, _) = dry_run_json(&root, &[]);
        for c in j["containers"].as_array().unwrap() {
            let name = c["name"].as_str().unwrap();
            // nspawn files are named after the machine; odd legacy names get a safe stand-in.
            let file_name = if nixos_nspawn::legacy::names::check_machine_name(name).is_ok() {
                name.to_string()
            } else {
                "invalid-name".to_string()
            };
            let text = c["nspawn"].as_str().unwrap();
            for key in ["Boot=no", "PrivateUsers=", "Private=", "VirtualEthernet="] {
                assert!(text.contains(key), "{s}/{name}: {key} missing:\n{text}");
            }
            nspawn_parse(&file_name, text)
                .unwrap_or_else(|e| panic!("{s}/{name}: systemd-nspawn rejects:\n{e}\n{text}"));
        }
    }
}

/// Golden reports: `fixtures/hosts/<s>/expected/report.json`. `NIXOS_NSPAWN_BLESS=1` rewrites
/// them; review the diff before committing.
#[test]
fn reports_match_golden_files() {
    for s in scenarios() {
        let root = TestRoot::fixture(&s);
        let (mut j, _) = dry_run_json(&root, &[]);
        j["root"] = serde_json::Value::String("<root>".into());
        let got = serde_json::to_string_pretty(&j).unwrap() + "\n";
        let path: PathBuf = repo()
            .join("fixtures/hosts")
            .join(&s)
            .join("expected/report.json");
        if std::env::var("NIXOS_NSPAWN_BLESS").as_deref() == Ok("1") {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, &got).unwrap();
            continue;
        }
        let want = std::fs::read_to_string(&path).unwrap_or_else(|_| {
            panic!(
                "{} missing: run NIXOS_NSPAWN_BLESS=1 cargo test",
                path.display()
            )
        });
        if want != got {
            let diff = std::process::Command::new("diff")
                .arg("-u")
                .arg(&path)
                .arg("-")
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .spawn()
                .and_then(|mut ch| {
                    use std::io::Write;
                    ch.stdin.take().unwrap().write_all(got.as_bytes())?;
                    ch.wait_with_output()
                })
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default();
            panic!(
                "{s}: report differs from {} (NIXOS_NSPAWN_BLESS=1 to accept):\n{diff}",
                path.display()
            );
        }
    }
}

#[test]
fn usage_errors_exit_2_with_a_hint() {
    let root = TestRoot::fixture(&scenarios()[0]);
    let out = root.run(&["migrate"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--dry-run") && err.contains("--yes"), "{err}");
    let out = root.run(&["migrate", "--dry-run", "--only", "no-such-container"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("Known containers"));
    let out = nixos_nspawn(
        std::path::Path::new("/nonexistent-root"),
        &["migrate", "--dry-run"],
    );
    assert_eq!(out.status.code(), Some(2));
}

/// The "changes nothing" check above would catch a plain read: reading a file under
/// `relatime` after its atime was aged updates the atime, and the snapshot sees it.
#[test]
fn the_unchanged_check_detects_a_plain_read() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped: needs root for the noatime view");
        return;
    }
    let root = TestRoot::fixture("example");
    age_atimes(root.path());
    let before = snapshot(root.path());
    let conf = root.path().join("etc/nixos/configuration.nix");
    std::fs::read(&conf).unwrap();
    let after = snapshot(root.path());
    assert_ne!(
        before.get(std::path::Path::new("etc/nixos/configuration.nix")),
        after.get(std::path::Path::new("etc/nixos/configuration.nix")),
        "a plain read went unnoticed: the unchanged check would be vacuous"
    );
}

/// `--config path/to/flake.nix --host NAME` reads that host's modules only; without `--host`
/// every host is read and the report says so.
#[test]
fn a_flake_given_with_config_honours_host() {
    let empty = tempfile::tempdir().unwrap();
    let flake = repo().join("fixtures/nix/flake-host/etc/nixos/flake.nix");
    let flake = flake.to_str().unwrap();
    let names = |extra: &[&str]| -> (Vec<String>, Vec<String>) {
        let mut args = vec!["migrate", "--dry-run", "--json", "--config", flake];
        args.extend_from_slice(extra);
        let j = json(&nixos_nspawn(empty.path(), &args));
        let c = j["containers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap().to_string())
            .collect();
        let p = j["problems"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["code"].as_str().unwrap().to_string())
            .collect();
        (c, p)
    };
    let (all, problems) = names(&[]);
    assert_eq!(all, ["builder", "inline", "vault"]);
    assert!(
        problems.contains(&"nix-flake-several-hosts".to_string()),
        "{problems:?}"
    );
    assert_eq!(names(&["--host", "patched"]).0, ["inline", "vault"]);
    assert_eq!(names(&["--host", "other"]).0, ["builder"]);
    let (none, problems) = names(&["--host", "no-such-host"]);
    assert!(none.is_empty() && problems.contains(&"nix-flake-modules-dynamic".to_string()));
}
