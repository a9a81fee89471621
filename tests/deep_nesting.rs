//! Deeply nested input never aborts the process (issue 7, item 6): a guest config, `extraFlags`,
//! an imperative guest's configuration.nix or a `--from-json` file nested 50,000 levels deep
//! (every kind of nesting the Nix grammar has) ends with a clean message naming the file and
//! line and an ordinary exit code, never a signal (a stack overflow was exit 134).
#![allow(clippy::unwrap_used)]

mod util;

use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use util::*;

const LEVELS: usize = 50_000;

/// One expression of every kind of nesting, `LEVELS` deep.
fn deep(kind: &str) -> String {
    let n = LEVELS;
    match kind {
        "list" => format!("{}\"-U\"{}", "[ ".repeat(n), " ]".repeat(n)),
        "attrset" => format!("{}1{}", "{ a = ".repeat(n), "; }".repeat(n)),
        "parens" => format!("{}1{}", "(".repeat(n), ")".repeat(n)),
        "let" => format!("{}a", "let a = 1; in ".repeat(n)),
        "lambda" => format!("{}1", "x: ".repeat(n)),
        "select" => format!("a{}", ".b".repeat(n)),
        "interpolation" => format!("{}x{}", "\"${".repeat(n), "}\"".repeat(n)),
        "binop" => format!("{}1", "1 + ".repeat(n)),
        "negate" => format!("{}1", "-".repeat(n)),
        "apply" => format!("{}1", "f ".repeat(n)),
        "with" => format!("{}1", "with a; ".repeat(n)),
        "if" => format!("{}1", "if a then 1 else ".repeat(n)),
        _ => unreachable!(),
    }
}

const KINDS: &[&str] = &[
    "list",
    "attrset",
    "parens",
    "let",
    "lambda",
    "select",
    "interpolation",
    "binop",
    "negate",
    "apply",
    "with",
    "if",
];

/// Run a dry run; the process must exit normally (0, 1 or 3), and the report must name `file`
/// with a line number and say that it nests too deeply.
fn assert_clean(root: &Path, extra: &[&str], file: &str, what: &str) {
    let mut args = vec!["migrate", "--dry-run", "--json"];
    args.extend_from_slice(extra);
    let out = nixos_nspawn(root, &args);
    assert!(
        out.status.signal().is_none(),
        "{what}: killed by signal {:?}\n{}",
        out.status.signal(),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        matches!(out.status.code(), Some(0 | 1 | 3)),
        "{what}: exit {:?}\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let at_line = format!("{file}:1");
    assert!(
        text.contains(&at_line),
        "{what}: no mention of {at_line}:\n{}",
        &text[..text.len().min(3000)]
    );
    assert!(
        text.contains("nests more than") || text.contains("nested more than"),
        "{what}: no nesting message:\n{}",
        &text[..text.len().min(3000)]
    );
}

#[test]
fn deep_guest_config_and_extra_flags_of_every_kind_fail_cleanly() {
    for kind in KINDS {
        for place in ["config", "extraFlags"] {
            let dir = tempfile::tempdir().unwrap();
            let root = dir.path();
            std::fs::create_dir_all(root.join("etc/nixos")).unwrap();
            let e = deep(kind);
            let text = match place {
                "config" => format!(
                    "{{ containers.web = {{ autoStart = true; config = {{ pkgs, ... }}: {{ environment.etc.x.text = {e}; }}; }}; }}\n"
                ),
                _ => format!(
                    "{{ containers.web = {{ autoStart = true; config = {{ }}; extraFlags = [ ({e}) ]; }}; }}\n"
                ),
            };
            std::fs::write(root.join("etc/nixos/configuration.nix"), text).unwrap();
            assert_clean(
                root,
                &[],
                "/etc/nixos/configuration.nix",
                &format!("{kind} in {place}"),
            );
        }
    }
}

/// The imperative guest's own configuration.nix stays where it is (the tool names it as the
/// instance's system-config and does not parse it): a deep one must not disturb the run.
#[test]
fn deep_imperative_guest_configuration_does_not_disturb_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::create_dir_all(root.join("etc/nixos-containers")).unwrap();
    std::fs::write(
        root.join("etc/nixos-containers/deep.conf"),
        "PRIVATE_NETWORK=0\nAUTO_START=0\n",
    )
    .unwrap();
    let guest = root.join("var/lib/nixos-containers/deep/etc/nixos");
    std::fs::create_dir_all(&guest).unwrap();
    std::fs::write(
        root.join("var/lib/nixos-containers/deep/etc/os-release"),
        "ID=nixos\n",
    )
    .unwrap();
    for kind in ["list", "binop", "apply"] {
        std::fs::write(
            guest.join("configuration.nix"),
            format!(
                "{{ ... }}: {{ environment.etc.x.text = {}; }}\n",
                deep(kind)
            ),
        )
        .unwrap();
        let out = nixos_nspawn(root, &["migrate", "--dry-run", "--json"]);
        assert!(
            out.status.signal().is_none() && matches!(out.status.code(), Some(0 | 1 | 3)),
            "{kind}: {:?}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let report = json(&out);
        assert_eq!(report["containers"][0]["name"], "deep", "{report}");
        assert!(
            report["containers"][0]["nix"]
                .as_str()
                .unwrap()
                .contains("system-config = /var/lib/machines/deep/etc/nixos/configuration.nix"),
            "{report}"
        );
    }
}

#[test]
fn deep_from_json_fails_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::create_dir_all(root.join("etc/nixos")).unwrap();
    std::fs::write(root.join("etc/nixos/configuration.nix"), "{ }\n").unwrap();
    for (kind, v) in [
        (
            "array",
            format!("{}\"-U\"{}", "[".repeat(LEVELS), "]".repeat(LEVELS)),
        ),
        (
            "object",
            format!("{}1{}", "{\"a\":".repeat(LEVELS), "}".repeat(LEVELS)),
        ),
    ] {
        let file = dir.path().join(format!("{kind}.json"));
        std::fs::write(&file, format!("{{\"web\": {{\"extraFlags\": {v}}}}}\n")).unwrap();
        let f = file.to_str().unwrap();
        assert_clean(root, &["--from-json", f], f, kind);
    }
}

/// The fuzz target's generator (fuzz/fuzz_targets/nesting.rs) over a fixed set of mixed
/// inputs, through the library reader: every mix is read or refused, never a crash.
#[test]
fn mixed_nesting_is_read_or_refused() {
    use nixos_nspawn::legacy::nix_source::read_nix_file;
    let kinds: &[(&str, &str)] = &[
        ("[ ", " ]"),
        ("{ a = ", "; }"),
        ("(", ")"),
        ("let a = 1; in ", ""),
        ("x: ", ""),
        ("a.", "b"),
        ("\"${", "}\""),
        ("1 + ", ""),
        ("-", ""),
        ("!", ""),
        ("f ", ""),
        ("with a; ", ""),
        ("if a then 1 else ", ""),
        ("assert a; ", ""),
        ("{ } // ", ""),
        ("[ ] ++ ", ""),
    ];
    // A small deterministic generator (no extra crate): xorshift.
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for round in 0..20 {
        let mut open = String::new();
        let mut close: Vec<&str> = Vec::new();
        for _ in 0..(1 + next() % 6) {
            let (o, c) = kinds[(next() % kinds.len() as u64) as usize];
            let times = 1 + (next() % 10_000) as usize;
            for _ in 0..times {
                open.push_str(o);
                close.push(c);
            }
        }
        let mut text = format!("{{ containers.web.config = {{ ... }}: {{ x = {open}1");
        for c in close.iter().rev() {
            text.push_str(c);
        }
        text.push_str("; }; }\n");
        let lines = text.lines().count();
        if let Err(w) = read_nix_file(Path::new("/etc/nixos/configuration.nix"), &text) {
            let l = w.line.unwrap_or(1);
            assert!(l >= 1 && l <= lines, "round {round}: line {l}");
        }
    }
}

/// The bound never refuses real code: every file of the vendored nixpkgs (lib/ and the NixOS
/// modules, some of the most deeply nested Nix there is) passes.
#[test]
fn real_nixpkgs_files_are_within_the_bound() {
    let base = util::repo().join("../shared/nixpkgs");
    if !base.is_dir() {
        eprintln!("skipped: ../shared/nixpkgs is not there");
        return;
    }
    let mut stack = vec![base];
    let mut n = 0;
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "nix") {
                let text = std::fs::read_to_string(&p).unwrap();
                if let Err(e) = nixos_nspawn::nixtext::check_nesting(&text) {
                    let (l, c) = nixos_nspawn::nixtext::line_col(&text, e.offset);
                    panic!("{}:{l}:{c}: {}", p.display(), e.message);
                }
                n += 1;
            }
        }
    }
    assert!(n > 50, "only {n} files");
}
