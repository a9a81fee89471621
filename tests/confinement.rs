//! Nothing leaves `--root` (issue 7, item 1): every intermediate directory of every host path
//! the tool reads or writes is replaced, one at a time, by a symlink (absolute, then relative
//! with enough `..` to climb out of the root) into a canary directory OUTSIDE the root that
//! holds a decoy copy of the same files. Resolved as if `--root` were `/`, the link must lead
//! to the re-rooted place inside the root (which holds the real files); the canary must be
//! neither read (its atimes are aged first, so a read would show) nor written, with `--dry-run`
//! and with `--yes`; the report must name the paths really written.
#![allow(clippy::unwrap_used)]

mod util;

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Command;
use util::*;

/// The name of the marker file in every directory of a decoy.
const MARKER: &str = "canary-marker";

/// A fixture host at `base/root`, and a canary directory `base/canary` beside it.
struct Hostile {
    base: tempfile::TempDir,
}

impl Hostile {
    fn new() -> Hostile {
        let base = tempfile::tempdir().unwrap();
        let src = repo().join("fixtures/hosts/example/root");
        std::fs::create_dir(base.path().join("root")).unwrap();
        std::fs::create_dir(base.path().join("canary")).unwrap();
        cp_a(&src, &base.path().join("root"));
        // scratch gets a unit drop-in too (a --property flag becomes a [Service] setting).
        let conf = base.path().join("root/etc/nixos-containers/scratch.conf");
        let mut text = std::fs::read_to_string(&conf).unwrap();
        text.push_str("EXTRA_NSPAWN_FLAGS=\"--property=CPUQuota=50%\"\n");
        std::fs::write(&conf, text).unwrap();
        Hostile { base }
    }
    fn root(&self) -> PathBuf {
        self.base.path().join("root")
    }
    fn canary(&self) -> PathBuf {
        self.base.path().join("canary")
    }
    /// Where a link to `canary/C` really leads when resolved inside the root.
    fn rerooted(&self, c: &str) -> PathBuf {
        self.root()
            .join(self.canary().strip_prefix("/").unwrap())
            .join(c)
    }
    /// Replace `root/C` by a link into the canary: the real content moves to the re-rooted
    /// place, a decoy copy of it goes to the canary.
    fn link_out(&self, c: &str, relative: bool) {
        let at = self.root().join(c);
        let decoy = self.canary().join(c);
        let real = self.rerooted(c);
        std::fs::create_dir_all(decoy.parent().unwrap()).unwrap();
        std::fs::create_dir_all(real.parent().unwrap()).unwrap();
        if at.symlink_metadata().is_ok() {
            std::fs::create_dir(&decoy).unwrap();
            cp_a(&at, &decoy);
            std::fs::rename(&at, &real).unwrap();
        } else {
            std::fs::create_dir_all(&decoy).unwrap();
            std::fs::create_dir_all(&real).unwrap();
            std::fs::create_dir_all(at.parent().unwrap()).unwrap();
        }
        // Every directory of the decoy gets a marker: anything copied from the canary (even
        // through a mount that hides the reads' atimes) carries one into the root.
        for e in walkdir::WalkDir::new(&decoy).follow_links(false) {
            let e = e.unwrap();
            if e.file_type().is_dir() {
                std::fs::write(e.path().join(MARKER), "decoy\n").unwrap();
            }
        }
        let target = if relative {
            // Enough `..` to reach the real `/` from anywhere, then down into the canary: a
            // naive resolver ends in the canary, a confined one stops at the root.
            PathBuf::from("../".repeat(40))
                .join(self.canary().strip_prefix("/").unwrap())
                .join(c)
        } else {
            decoy
        };
        symlink(target, &at).unwrap();
    }
}

fn cp_a(from: &Path, to: &Path) {
    let st = Command::new("cp")
        .arg("-a")
        .arg(format!("{}/.", from.display()))
        .arg(to)
        .status()
        .unwrap();
    assert!(st.success());
}

use util::migrate_with_stand_ins as run;

/// Every host directory the example host's migration reads or writes through.
const COMPONENTS: &[&str] = &[
    "etc",
    "etc/nixos",
    "etc/nixos-containers",
    "etc/nixos-nspawn",
    "etc/systemd",
    "etc/systemd/system.control",
    "var",
    "var/lib",
    "var/lib/nixos-containers",
    "var/lib/machines",
    "var/lib/nixos-nspawn",
    "nix/var/nix/profiles",
    "nix/var/nix/profiles/per-container",
];

/// The files a `--yes` run of `web` (declarative) and `scratch` (imperative) must produce.
const PRODUCED: &[&str] = &[
    "etc/nixos/nspawn-containers.nix",
    "var/lib/machines/web/etc/os-release",
    "var/lib/machines/scratch/etc/nixos/configuration.nix",
    "var/lib/nixos-nspawn/imperative/nspawn/scratch.nspawn",
    "etc/nixos-nspawn/scratch.nix",
    "nix/var/nix/profiles/per-nspawn/scratch/system",
    "etc/systemd/system.control/systemd-nspawn@scratch.service.d/nixos-nspawn.conf",
];

/// No component of `p` below `root` is a symlink.
fn no_symlink_below(root: &Path, p: &Path) -> bool {
    let mut cur = root.to_path_buf();
    for c in p.strip_prefix(root).unwrap().components() {
        cur.push(c);
        if !cur
            .symlink_metadata()
            .is_ok_and(|m| !m.file_type().is_symlink())
        {
            return false;
        }
    }
    true
}

fn check_one(c: &str, relative: bool) {
    let what = format!(
        "{c} ({})",
        if relative {
            "relative link"
        } else {
            "absolute link"
        }
    );
    let h = Hostile::new();
    h.link_out(c, relative);
    let stand_ins = StandIns::new(&[]);
    age_atimes(&h.canary());
    let canary_before = snapshot(&h.canary());
    let root_before = snapshot(&h.root());
    let only = ["--only", "web", "--only", "scratch"];

    // --dry-run: nothing changes, inside or outside the root.
    let mut args = vec!["--dry-run", "--json"];
    args.extend(only);
    let out = run(&h.root(), &stand_ins, &args);
    assert!(
        matches!(out.status.code(), Some(0 | 3)),
        "{what}: dry run failed\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = json(&out);
    let names: Vec<&str> = report["containers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["scratch", "web"],
        "{what}: the containers were not found"
    );
    assert!(
        !report["problems"]
            .as_array()
            .unwrap()
            .iter()
            .any(|w| w["code"] == "would-refuse"),
        "{what}: {}",
        report["problems"]
    );
    // The dry run already says where a destination behind the link really is.
    if let Ok(rest) = Path::new("etc/nixos/nspawn-containers.nix").strip_prefix(c) {
        let want = Path::new("/")
            .join(h.canary().strip_prefix("/").unwrap())
            .join(c)
            .join(rest);
        assert_eq!(
            report["redirects"]["/etc/nixos/nspawn-containers.nix"],
            want.display().to_string(),
            "{what}: {}",
            report["redirects"]
        );
    }
    assert_same(
        &format!("{what}: canary after --dry-run"),
        &canary_before,
        &snapshot(&h.canary()),
    );
    assert_same(
        &format!("{what}: root after --dry-run"),
        &root_before,
        &snapshot(&h.root()),
    );

    // --yes: the files land at the re-rooted place, the canary stays as it was.
    let mut args = vec!["--yes", "--json"];
    args.extend(only);
    let out = run(&h.root(), &stand_ins, &args);
    assert!(
        matches!(out.status.code(), Some(0 | 3)),
        "{what}: --yes failed\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_same(
        &format!("{what}: canary after --yes"),
        &canary_before,
        &snapshot(&h.canary()),
    );
    assert_eq!(
        stand_ins.calls(),
        Vec::<String>::new(),
        "{what}: systemctl was called"
    );
    for e in walkdir::WalkDir::new(h.root()).follow_links(false) {
        let e = e.unwrap();
        assert_ne!(
            e.file_name(),
            MARKER,
            "{what}: {} was copied from the canary",
            e.path().display()
        );
    }
    for p in PRODUCED {
        let real = match Path::new(p).strip_prefix(c) {
            Ok(rest) => h.rerooted(c).join(rest),
            Err(_) => h.root().join(p),
        };
        assert!(
            real.symlink_metadata().is_ok(),
            "{what}: {} was not produced",
            real.display()
        );
    }
    // The report names the paths really written: each exists inside the root, through no
    // symlink, and the ones behind the link name the re-rooted place.
    let report = json(&out);
    let written: Vec<PathBuf> = report["files_written"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| PathBuf::from(v.as_str().unwrap()))
        .collect();
    assert!(written.len() >= 3, "{what}: {written:?}");
    for w in &written {
        let real = h.root().join(w.strip_prefix("/").unwrap());
        assert!(
            real.is_file(),
            "{what}: reported {} does not exist",
            w.display()
        );
        assert!(
            no_symlink_below(&h.root(), &real),
            "{what}: reported {} is not the resolved path",
            w.display()
        );
    }
    let nix = Path::new("etc/nixos/nspawn-containers.nix");
    if let Ok(rest) = nix.strip_prefix(c) {
        let want = Path::new("/")
            .join(h.canary().strip_prefix("/").unwrap())
            .join(c)
            .join(rest);
        assert!(
            written.contains(&want),
            "{what}: {written:?} lacks {}",
            want.display()
        );
    }
}

#[test]
fn every_intermediate_symlink_stays_inside_the_root() {
    if !is_root() {
        eprintln!("skipped: needs root (noatime views for the canary checks)");
        return;
    }
    for c in COMPONENTS {
        for relative in [false, true] {
            check_one(c, relative);
        }
    }
}

/// An impermanence host: `/etc/nixos -> /persist/etc/nixos`. With `--root`, the configuration
/// is read from and the output written to `ROOT/persist/etc/nixos`, never the live `/persist`.
#[test]
fn impermanence_links_land_under_the_root() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let live_persist_existed = Path::new("/persist").exists();
    let h = Hostile::new();
    let r = h.root();
    std::fs::create_dir_all(r.join("persist/etc")).unwrap();
    std::fs::rename(r.join("etc/nixos"), r.join("persist/etc/nixos")).unwrap();
    symlink("/persist/etc/nixos", r.join("etc/nixos")).unwrap();
    let stand_ins = StandIns::new(&[]);
    let out = run(&r, &stand_ins, &["--yes", "--json", "--only", "web"]);
    assert!(
        matches!(out.status.code(), Some(0 | 3)),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = json(&out);
    assert!(
        report["files_read"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f == "/etc/nixos/configuration.nix"),
        "{}",
        report["files_read"]
    );
    assert!(r.join("persist/etc/nixos/nspawn-containers.nix").is_file());
    assert_eq!(
        report["files_written"],
        serde_json::json!(["/persist/etc/nixos/nspawn-containers.nix"])
    );
    assert_eq!(Path::new("/persist").exists(), live_persist_existed);
    let text = String::from_utf8_lossy(&run(&r, &stand_ins, &["--yes", "--only", "web"]).stdout)
        .into_owned();
    assert!(
        text.contains("/etc/nixos/nspawn-containers.nix (→ /persist/etc/nixos/nspawn-containers.nix) already up to date"),
        "{text}"
    );
}

/// A NixOS host (issue 7, item 5): `/etc/systemd/system` and `/etc/systemd/nspawn` are links
/// into `/etc/static` (the store). An imperative container with a drop-in migrates without
/// failing midway, nothing is written under `/etc/static` or `/nix/store`, and the files go
/// where nixos/README.md says imperative containers live.
#[test]
fn nixos_managed_etc_links_are_never_written_through() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let h = Hostile::new();
    let r = h.root();
    // The host declares some systemd.nspawn entry: /etc/systemd/nspawn is a store link.
    let store_etc = std::fs::read_link(r.join("etc/static")).unwrap();
    let store_etc = r.join(store_etc.strip_prefix("/").unwrap());
    std::fs::create_dir_all(store_etc.join("systemd/nspawn")).unwrap();
    symlink("/etc/static/systemd/nspawn", r.join("etc/systemd/nspawn")).unwrap();
    // scratch has a drop-in (see Hostile::new).
    // The live machine's /etc/static must not be reached either (with --root, /etc/static
    // is the tree's own).
    age_atimes(&r.join("nix/store"));
    let store_before = snapshot(&r.join("nix/store"));
    let stand_ins = StandIns::new(&[]);
    let out = run(&r, &stand_ins, &["--yes", "--json", "--only", "scratch"]);
    assert!(
        matches!(out.status.code(), Some(0 | 3)),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_same("the store", &store_before, &snapshot(&r.join("nix/store")));
    let report = json(&out);
    let written: Vec<&str> = report["files_written"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(
        written,
        [
            "/etc/nixos-nspawn/scratch.nix",
            "/var/lib/nixos-nspawn/imperative/nspawn/scratch.nspawn",
            "/etc/systemd/system.control/systemd-nspawn@scratch.service.d/nixos-nspawn.conf",
            "/var/lib/nixos-nspawn/imperative/network/20-ve-scratch.network",
        ]
    );
    // The host end of the veth, which legacy's start script configured: written where the
    // module links it into /run/systemd/network, with our header, and accepted by networkd.
    let unit = std::fs::read_to_string(
        r.join("var/lib/nixos-nspawn/imperative/network/20-ve-scratch.network"),
    )
    .unwrap();
    assert!(
        unit.starts_with("# Imperative container scratch, host side"),
        "{unit}"
    );
    assert!(unit.contains("Name=ve-scratch"), "{unit}");
    if let Some(errors) =
        networkd_parse_errors(&[("20-ve-scratch.network".to_string(), unit.clone())])
    {
        assert!(errors.is_empty(), "{errors:?}\n{unit}");
    }
    let dropin = std::fs::read_to_string(
        r.join("etc/systemd/system.control/systemd-nspawn@scratch.service.d/nixos-nspawn.conf"),
    )
    .unwrap();
    assert!(dropin.contains("CPUQuota=50%"), "{dropin}");
    assert!(dropin.starts_with("# "), "{dropin}");
    // The report shows exactly the bytes written.
    assert_eq!(report["containers"][0]["dropin"], dropin.as_str());
    let nspawn =
        std::fs::read_to_string(r.join("var/lib/nixos-nspawn/imperative/nspawn/scratch.nspawn"))
            .unwrap();
    assert_eq!(report["containers"][0]["nspawn"], nspawn.as_str());
    // A second run changes nothing and fails nowhere.
    let out = run(&r, &stand_ins, &["--yes", "--json", "--only", "scratch"]);
    assert!(matches!(out.status.code(), Some(0 | 3)));
    assert!(json(&out)["files_written"].is_null());
}

/// A guest-controlled symlink never reaches the host (issue 7, item 9): an imperative guest
/// whose `etc/nixos/configuration.nix` links to `/etc/shadow` (absolute, or climbing out with
/// `..`) gets the link resolved inside its own root; the emitted `system-config` names the
/// guest's file under the new state directory, never a path Nix would follow on the host.
#[test]
fn a_guest_config_symlink_is_resolved_inside_the_guest() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    for target in ["/etc/shadow", "../../../../../../../../etc/shadow"] {
        let h = Hostile::new();
        let r = h.root();
        let guest = r.join("var/lib/nixos-containers/scratch");
        std::fs::write(guest.join("etc/shadow"), "{ guest = true; }\n").unwrap();
        let cfg = guest.join("etc/nixos/configuration.nix");
        std::fs::remove_file(&cfg).unwrap();
        symlink(target, &cfg).unwrap();
        let stand_ins = StandIns::new(&[]);
        let out = run(
            &r,
            &stand_ins,
            &["--dry-run", "--json", "--only", "scratch"],
        );
        assert!(matches!(out.status.code(), Some(0 | 3)));
        let j = json(&out);
        let nix = j["containers"][0]["nix"].as_str().unwrap();
        assert!(
            nix.contains("system-config = /var/lib/machines/scratch/etc/shadow;"),
            "{target}: {nix}"
        );
        assert!(
            !nix.contains("system-config = /var/lib/machines/scratch/etc/nixos/configuration.nix"),
            "{target}: {nix}"
        );
        assert!(
            j["containers"][0]["warnings"]
                .as_array()
                .unwrap()
                .iter()
                .any(|w| w["code"] == "rootfs-config-symlink"),
            "{target}"
        );
        // After the copy, Nix reads the guest's own file through that path.
        let out = run(&r, &stand_ins, &["--yes", "--only", "scratch"]);
        assert!(
            matches!(out.status.code(), Some(0 | 3)),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let copied = r.join("var/lib/machines/scratch/etc/shadow");
        assert_eq!(
            std::fs::read_to_string(copied).unwrap(),
            "{ guest = true; }\n"
        );
        // The path holds no symlink at all.
        let mut cur = r.clone();
        for c in ["var", "lib", "machines", "scratch", "etc", "shadow"] {
            cur.push(c);
            assert!(
                !cur.symlink_metadata().unwrap().file_type().is_symlink(),
                "{}",
                cur.display()
            );
        }
    }
}

/// `--config ROOT/etc/nixos/configuration.nix` is the tree's file: with `ROOT/etc/nixos` a link
/// to an absolute path, the file is read at the re-rooted place, never where the link points on
/// the machine running the tool.
#[test]
fn a_config_path_inside_the_root_is_read_confined() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let h = Hostile::new();
    h.link_out("etc/nixos", false);
    std::fs::write(
        h.canary().join("etc/nixos/configuration.nix"),
        "{ containers.decoy = { config = { }; }; }\n",
    )
    .unwrap();
    // Also when the link's target does not exist on this machine at all.
    std::fs::create_dir_all(h.rerooted("etc/persist-only")).unwrap();
    cp_a(&h.rerooted("etc/nixos"), &h.rerooted("etc/persist-only"));
    symlink(
        h.canary().join("etc/persist-only"),
        h.root().join("etc/persist-only"),
    )
    .unwrap();
    let out = run(
        &h.root(),
        &StandIns::new(&[]),
        &[
            "--dry-run",
            "--json",
            "--config",
            h.root()
                .join("etc/persist-only/configuration.nix")
                .to_str()
                .unwrap(),
        ],
    );
    assert!(
        matches!(out.status.code(), Some(0 | 3)),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(json(&out)["containers"].as_array().unwrap().len() > 1);
    age_atimes(&h.canary());
    let canary_before = snapshot(&h.canary());
    let config = h.root().join("etc/nixos/configuration.nix");
    let stand_ins = StandIns::new(&[]);
    let out = run(
        &h.root(),
        &stand_ins,
        &["--dry-run", "--json", "--config", config.to_str().unwrap()],
    );
    let j = json(&out);
    let names: Vec<&str> = j["containers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert!(!names.contains(&"decoy"), "{names:?}");
    assert!(names.contains(&"web"), "{names:?}");
    assert_same(
        "canary after --config",
        &canary_before,
        &snapshot(&h.canary()),
    );
}
