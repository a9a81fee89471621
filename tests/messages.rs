//! Messages for the administrator (issue 7, item 11): each case that used to give a puzzling
//! message ("Not a directory (os error 20)", "pass the real path" when no path was passed,
//! "no such file" for a FIFO, "container check:", "0 MiB" for a 100 MiB sparse file) now names
//! the container, the file and the fix, or simply works.
#![allow(clippy::unwrap_used)]

mod util;

use std::os::unix::fs::symlink;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use util::*;

fn migrate(root: &Path, args: &[&str]) -> Output {
    let stand_ins = StandIns::new(&[]);
    Command::new(env!("CARGO_BIN_EXE_nixos-nspawn"))
        .arg("--root")
        .arg(root)
        .arg("migrate")
        .args(args)
        .env("PATH", stand_ins.path_env())
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn ok(out: &Output) -> String {
    assert!(
        matches!(out.status.code(), Some(0 | 3)),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A symlinked state dir is followed inside the root and said so; it used to fail with "is a
/// symlink; … pass the real path" although no path had been passed.
#[test]
fn a_symlinked_state_dir_is_copied_from_where_it_leads() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let root = TestRoot::fixture("example");
    let r = root.path();
    std::fs::create_dir_all(r.join("srv")).unwrap();
    std::fs::rename(r.join("var/lib/nixos-containers/web"), r.join("srv/web")).unwrap();
    symlink("/srv/web", r.join("var/lib/nixos-containers/web")).unwrap();
    let text = ok(&migrate(r, &["--yes", "--only", "web"]));
    assert!(
        text.contains(
            "state copied /var/lib/nixos-containers/web (→ /srv/web) → /var/lib/machines/web"
        ),
        "{text}"
    );
    assert!(!text.contains("pass the real path"), "{text}");
    assert!(
        r.join("var/lib/machines/web/etc/os-release")
            .symlink_metadata()
            .is_ok()
    );
}

/// A symlinked `/var/lib/machines` is followed inside the root (it used to fail with "Not a
/// directory (os error 20)"); one that leads to a file names the path and the fix.
#[test]
fn a_symlinked_machines_dir_works_or_is_named() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let root = TestRoot::fixture("example");
    let r = root.path();
    std::fs::create_dir_all(r.join("srv/machines")).unwrap();
    symlink("/srv/machines", r.join("var/lib/machines")).unwrap();
    let text = ok(&migrate(r, &["--yes", "--only", "web"]));
    assert!(
        r.join("srv/machines/web/etc/os-release")
            .symlink_metadata()
            .is_ok(),
        "{text}"
    );
    assert!(
        text.contains("→ /var/lib/machines/web (→ /srv/machines/web)"),
        "{text}"
    );

    let root = TestRoot::fixture("example");
    let r = root.path();
    std::fs::create_dir_all(r.join("srv")).unwrap();
    std::fs::write(r.join("srv/notadir"), "").unwrap();
    symlink("/srv/notadir", r.join("var/lib/machines")).unwrap();
    let out = migrate(r, &["--yes", "--only", "web"]);
    // 4: refused before the first write (see `--help`, "Exit codes").
    assert_eq!(out.status.code(), Some(4));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("container web: /var/lib/machines/web cannot be created: /srv/notadir is not a directory")
            && err.contains("fix it and run again"),
        "{err}"
    );
    assert!(!err.contains("os error 20"), "{err}");
    assert!(!err.contains("container check"), "{err}");
}

/// An import that is a FIFO, a device, a directory or a symlink loop says what it is; it used
/// to say "no such file". The FIFO does not block the scan.
#[test]
fn unreadable_imports_say_what_they_are() {
    let t = tempfile::tempdir().unwrap();
    let r = t.path();
    let nixos = r.join("etc/nixos");
    std::fs::create_dir_all(nixos.join("dir/default.nix")).unwrap();
    std::fs::write(
        nixos.join("configuration.nix"),
        "{ imports = [ ./fifo.nix ./dev.nix ./loop.nix ./missing.nix ./dir ]; containers.a.config = { }; }\n",
    )
    .unwrap();
    let st = Command::new("mkfifo")
        .arg(nixos.join("fifo.nix"))
        .status()
        .unwrap();
    assert!(st.success());
    let dev = is_root()
        && Command::new("mknod")
            .arg(nixos.join("dev.nix"))
            .args(["c", "1", "3"])
            .status()
            .unwrap()
            .success();
    symlink("loop.nix", nixos.join("loop.nix")).unwrap();
    let out = migrate(r, &["--dry-run", "--json"]);
    let j = json(&out);
    let messages: Vec<String> = j["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["message"].as_str().unwrap().to_string())
        .collect();
    let find = |file: &str, what: &str| {
        assert!(
            messages.iter().any(|m| m.contains(&format!(
                "cannot read /etc/nixos/{file} (imported at /etc/nixos/configuration.nix:1): {what}"
            ))),
            "{file}: no message with {what:?} in {messages:#?}"
        );
    };
    find("fifo.nix", "it is a FIFO (named pipe), not a regular file");
    if dev {
        find("dev.nix", "it is a character device, not a regular file");
    }
    find("loop.nix", "it is a symlink loop");
    find("missing.nix", "it does not exist");
    find("dir/default.nix", "it is a directory, not a regular file");
    assert!(
        !messages.iter().any(|m| m.contains("no such file")),
        "{messages:#?}"
    );
}

/// A 100 MiB sparse file is summarised as 100 MiB, with the data actually written beside it;
/// it used to read "0 MiB".
#[test]
fn a_sparse_file_is_not_summarised_as_zero() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let root = TestRoot::fixture("example");
    let r = root.path();
    let f = std::fs::File::create(r.join("var/lib/nixos-containers/web/var/sparse")).unwrap();
    f.set_len(100 << 20).unwrap();
    drop(f);
    let text = ok(&migrate(r, &["--yes", "--only", "web"]));
    let line = text
        .lines()
        .find(|l| l.contains("state copied"))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(line.contains("100.0 MiB of files ("), "{line}");
    assert!(line.contains("of data written"), "{line}");
    assert!(!line.contains(" 0 MiB"), "{line}");
}
