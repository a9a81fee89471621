//! Robustness of `migrate` on odd legacy input (issue 7, item 11): out-of-range PrivateUsers,
//! extraFlags split as bash split them, binary `.conf` files, container names with control
//! characters. Each through the real binary on a temporary host root.
#![allow(clippy::unwrap_used)]

mod util;

use util::*;

fn root_with_conf(name: &str, conf: &[u8]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("etc/nixos-containers")).unwrap();
    std::fs::create_dir_all(dir.path().join("etc/nixos")).unwrap();
    std::fs::write(
        dir.path().join(format!("etc/nixos-containers/{name}.conf")),
        conf,
    )
    .unwrap();
    dir
}

fn container<'a>(report: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    report["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no container {name:?} in {report}"))
}

#[test]
fn private_users_outside_nspawns_range_is_refused_not_emitted() {
    for (conf, bad) in [
        (
            &b"PRIVATE_NETWORK=0\nPRIVATE_USERS=4294967295\n"[..],
            "4294967295",
        ),
        (&b"PRIVATE_NETWORK=0\nPRIVATE_USERS=65535\n"[..], "65535"),
        (
            &b"PRIVATE_NETWORK=0\nEXTRA_NSPAWN_FLAGS=\"--private-users=4294901760:65536\"\n"[..],
            "4294901760:65536",
        ),
    ] {
        let dir = root_with_conf("pu", conf);
        let out = nixos_nspawn(dir.path(), &["migrate", "--dry-run", "--json"]);
        let report = json(&out);
        let c = container(&report, "pu");
        let nspawn = c["nspawn"].as_str().unwrap();
        assert!(nspawn.contains("\nPrivateUsers=no\n"), "{bad}: {nspawn}");
        assert!(!nspawn.contains(bad), "{bad}: {nspawn}");
        let w = c["warnings"].to_string();
        assert!(
            w.contains("unit-value-refused") && w.contains(bad),
            "{bad}: {w}"
        );
        if have_tool("systemd-nspawn", "systemd-container") {
            assert_eq!(nspawn_parse("pu", nspawn), Ok(()));
        }
    }
    // The edges nspawn accepts stay.
    let dir = root_with_conf(
        "pu",
        b"PRIVATE_NETWORK=0\nEXTRA_NSPAWN_FLAGS=\"--private-users=4294967294:1\"\n",
    );
    let report = json(&nixos_nspawn(
        dir.path(),
        &["migrate", "--dry-run", "--json"],
    ));
    let nspawn = container(&report, "pu")["nspawn"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(nspawn.contains("\nPrivateUsers=4294967294:1\n"), "{nspawn}");
    if have_tool("systemd-nspawn", "systemd-container") {
        assert_eq!(nspawn_parse("pu", &nspawn), Ok(()));
    }
}

/// The legacy start script expanded `$EXTRA_NSPAWN_FLAGS` unquoted: bash splits on space, tab
/// and newline only. An em space or a no-break space stays inside the word.
#[test]
fn extra_flags_split_on_bash_whitespace_only() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("etc/nixos")).unwrap();
    std::fs::write(
        dir.path().join("etc/nixos/configuration.nix"),
        "{ containers.web = { config = { }; extraFlags = [ \"--private-network\u{2003}-U\" \"--setenv=A=1\u{a0}2\" ]; }; }\n",
    )
    .unwrap();
    let report = json(&nixos_nspawn(
        dir.path(),
        &["migrate", "--dry-run", "--json"],
    ));
    let c = container(&report, "web");
    let nspawn = c["nspawn"].as_str().unwrap();
    // `-U` was never a word of its own: no user namespacing, no private network from it.
    assert!(nspawn.contains("\nPrivateUsers=no\n"), "{nspawn}");
    assert!(nspawn.contains("\nPrivate=no\n"), "{nspawn}");
    assert!(
        c["warnings"]
            .to_string()
            .contains("--private-network\u{2003}-U"),
        "{}",
        c["warnings"]
    );
    // The no-break space stays in the value (quoted: nspawn would keep it either way).
    assert!(nspawn.contains("Environment=\"A=1\u{a0}2\"\n"), "{nspawn}");
    if have_tool("systemd-nspawn", "systemd-container") {
        assert_eq!(nspawn_parse("web", nspawn), Ok(()));
    }
}

#[test]
fn a_binary_conf_is_reported_not_made_a_container() {
    let mut elf = b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0\x03\0>\0\x01\0\0\0".to_vec();
    elf.extend((0..400u32).map(|i| (i * 7 % 256) as u8));
    let dir = root_with_conf("blob", &elf);
    let out = nixos_nspawn(dir.path(), &["migrate", "--dry-run", "--json"]);
    let report = json(&out);
    assert!(
        report["containers"].as_array().unwrap().is_empty(),
        "{report}"
    );
    let problems = report["problems"].to_string();
    assert!(problems.contains("conf-not-text"), "{problems}");
    assert!(
        problems.contains("/etc/nixos-containers/blob.conf is not a text file"),
        "{problems}"
    );
    assert!(
        problems.contains("\\\\x7fELF"),
        "escaped bytes shown: {problems}"
    );
    // The human report shows the bytes escaped: no control character reaches the terminal.
    let out = nixos_nspawn(dir.path(), &["migrate", "--dry-run"]);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        !text.chars().any(|c| c.is_control() && c != '\n'),
        "{text:?}"
    );
    assert!(text.contains("conf-not-text"), "{text}");
}

#[test]
fn a_name_with_control_characters_is_escaped_in_the_report() {
    let dir = root_with_conf("new\nline\x1b[31m", b"PRIVATE_NETWORK=0\n");
    let out = nixos_nspawn(dir.path(), &["migrate", "--dry-run"]);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        !text.chars().any(|c| c.is_control() && c != '\n'),
        "{text:?}"
    );
    assert!(
        text.contains("━━ new\\nline\\u{1b}[31m (imperative) ━━"),
        "{text}"
    );
    for l in text.lines() {
        assert!(
            !l.starts_with("line"),
            "the name broke a line: {l:?}\n{text}"
        );
    }
    // JSON escapes it itself; the emitted Nix has it only escaped (comments) or quoted.
    let report = json(&nixos_nspawn(
        dir.path(),
        &["migrate", "--dry-run", "--json"],
    ));
    let c = &report["containers"][0];
    assert_eq!(c["name"], "new\nline\x1b[31m");
    let nix = c["nix"].as_str().unwrap();
    assert!(
        !nix.contains('\n') || nix.lines().all(|l| !l.starts_with("line")),
        "{nix}"
    );
    assert!(!nix.contains('\x1b'), "{nix:?}");
    assert_eq!(nix_parse(nix), Ok(()));
}
