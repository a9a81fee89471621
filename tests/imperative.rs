//! The imperative verbs end to end: the real binary on a temporary `--root`, the real
//! `nix-instantiate` evaluating `nixos/lib/eval-container.nix` (against the test stub of
//! nixpkgs), and recording stand-ins first on `PATH` for what cannot run here: `nix-build`
//! (it evaluates the system's store path with the real `nix-instantiate`, as a build would
//! print it), `nix-env` (makes the profile generation links a real one makes), `nix`,
//! `systemctl`, `machinectl`, `networkctl` and `systemd-run` (log their arguments). The files
//! written go through systemd-nspawn's and systemd-networkd's own parsers, and one test boots
//! a busybox container with the `.nspawn` file `create` wrote.
#![allow(clippy::unwrap_used)]

mod util;

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use util::*;

/// A host tree plus stand-ins. `log` records every stand-in call, one line each.
struct Host {
    root: tempfile::TempDir,
    bin: tempfile::TempDir,
    files: tempfile::TempDir,
}

const STANDINS: &[(&str, &str)] = &[
    (
        "nix-build",
        r#"[ -e "$SI/fail-nix-build" ] && { echo "error: builder for '/nix/store/x.drv' failed (stand-in)" >&2; exit 1; }
args=""
for a in "$@"; do [ "$a" = --no-out-link ] || args="$args '$a'"; done
out=$(eval nix-instantiate --eval --strict --json $args) || exit 1
echo "$out" | tr -d '"'"#,
    ),
    (
        "nix-env",
        r#"[ -e "$SI/fail-nix-env" ] && { echo "error: cannot set the profile (stand-in)" >&2; exit 1; }
profile=; action=; arg=
while [ $# -gt 0 ]; do case "$1" in
 -p|--profile) profile=$2; shift 2;;
 --store) shift 2;;
 --set) action=set; arg=$2; shift 2;;
 --switch-generation) action=switch; arg=$2; shift 2;;
 *) shift;;
esac; done
dir=$(dirname "$profile"); base=$(basename "$profile")
case $action in
 set) n=0
      for l in "$dir/$base"-*-link; do [ -L "$l" ] || continue; k=${l##*/$base-}; k=${k%-link}; [ "$k" -gt "$n" ] && n=$k; done
      # As nix-env: no new generation when the last one already is this system.
      if [ "$n" -gt 0 ] && [ "$(readlink "$dir/$base-$n-link")" = "$arg" ]; then ln -sfn "$base-$n-link" "$dir/$base"; exit 0; fi
      n=$((n+1)); ln -s "$arg" "$dir/$base-$n-link" && ln -sfn "$base-$n-link" "$dir/$base" || exit 1
      # A race planted by the test: something takes the network directory's place.
      if [ -e "$SI/plant" ]; then sh "$SI/plant"; fi;;
 switch) [ -L "$dir/$base-$arg-link" ] || { echo "error: generation $arg does not exist" >&2; exit 1; }
      ln -sfn "$base-$arg-link" "$dir/$base";;
esac"#,
    ),
    (
        "nix",
        // `nix eval|build … --expr E`: E applies eval-container.nix to
        // `(builtins.getFlake REF).outputs.ATTR`; this Nix has no flakes, so the flake's
        // outputs function is called directly (a flake without inputs), then evaluated by the
        // real nix-instantiate.
        r#"[ -e "$SI/fail-nix" ] && { echo "error: flake evaluation failed (stand-in)" >&2; exit 1; }
verb=$1; expr=
while [ $# -gt 0 ]; do [ "$1" = --expr ] && expr=$2; shift; done
expr=$(printf '%s' "$expr" | sed 's|(builtins.getFlake \("[^"]*"\))\.outputs|((import (\1 + "/flake.nix")).outputs { })|')
out=$(nix-instantiate --eval --strict --json -E "$expr") || exit 1
if [ "$verb" = build ]; then printf '%s\n' "$out" | tr -d '"'; else printf '%s\n' "$out"; fi"#,
    ),
    (
        "systemctl",
        r#"if [ "$1" = is-active ]; then for u in $(cat "$SI/active" 2>/dev/null); do [ "$u" = "$3" ] && exit 0; done; exit 3; fi
exit 0"#,
    ),
    ("machinectl", "exit 0"),
    ("networkctl", "exit 0"),
    ("systemd-run", "exit 0"),
];

impl Host {
    fn new() -> Host {
        let h = Host {
            root: tempfile::tempdir().unwrap(),
            bin: tempfile::tempdir().unwrap(),
            files: tempfile::tempdir().unwrap(),
        };
        for (prog, body) in STANDINS {
            let p = h.bin.path().join(prog);
            std::fs::write(
                &p,
                format!(
                    "#!/bin/sh\nSI={si}\necho \"{prog} $*\" >> $SI/calls.log\n{body}\n",
                    si = h.bin.path().display()
                ),
            )
            .unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        h
    }

    fn root(&self) -> &Path {
        self.root.path()
    }

    /// Run the binary on this root with the stand-ins first on PATH.
    fn run(&self, args: &[&str]) -> Output {
        self.run_on(self.root(), args)
    }

    fn run_on(&self, root: &Path, args: &[&str]) -> Output {
        let mut c = Command::new(env!("CARGO_BIN_EXE_nixos-nspawn"));
        c.arg("--root").arg(root).args(args);
        c.env(
            "PATH",
            format!(
                "{}:{}",
                self.bin.path().display(),
                std::env::var("PATH").unwrap_or_default()
            ),
        );
        // The test stub of nixpkgs needs nixpkgs' lib (vendored in ../shared).
        if std::env::var_os("NIXPKGS_LIB").is_none() {
            c.env("NIXPKGS_LIB", repo().join("../shared/nixpkgs/lib"));
        }
        c.stdin(Stdio::null()).output().unwrap()
    }

    fn calls(&self) -> Vec<String> {
        std::fs::read_to_string(self.bin.path().join("calls.log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    fn clear_calls(&self) {
        let _ = std::fs::remove_file(self.bin.path().join("calls.log"));
    }

    fn flag(&self, name: &str, content: &str) {
        std::fs::write(self.bin.path().join(name), content).unwrap();
    }

    fn unflag(&self, name: &str) {
        let _ = std::fs::remove_file(self.bin.path().join(name));
    }

    /// A container file: the RFC's example with `nixpkgs` pointing at the test stub.
    fn container_file(&self, file: &str, extra: &str) -> PathBuf {
        let p = self.files.path().join(file);
        std::fs::write(
            &p,
            format!(
                "{{\n  nixpkgs = {stub};\n  system-config = {{ pkgs, ... }}: {{\n    services.nginx.enable = true;\n    networking.firewall.allowedTCPPorts = [ 80 ];\n  }};\n  network = {{}};\n  forwardPorts = [ {{ hostPort = 8080; containerPort = 80; }} ];\n{extra}}}\n",
                stub = repo().join("nixos/tests/stub/fake-nixpkgs").display()
            ),
        )
        .unwrap();
        p
    }

    fn read(&self, host: &str) -> String {
        std::fs::read_to_string(self.root().join(host.trim_start_matches('/')))
            .unwrap_or_else(|e| panic!("{host}: {e}"))
    }

    fn exists(&self, host: &str) -> bool {
        self.root()
            .join(host.trim_start_matches('/'))
            .symlink_metadata()
            .is_ok()
    }

    /// Everything under the root except the Nix store and database an evaluation with
    /// `--store ROOT` fills (as `nixos-install` would).
    fn tree(&self) -> BTreeMap<PathBuf, String> {
        snapshot(self.root())
            .into_iter()
            .filter(|(p, _)| {
                !(p.starts_with("nix/store")
                    || p.starts_with("nix/var/nix/db")
                    || p.starts_with("nix/var/nix/temproots")
                    || p.starts_with("nix/var/nix/gcroots/per-user")
                    || p.starts_with("nix/var/nix/profiles/per-user")
                    || [
                        "nix",
                        "nix/var",
                        "nix/var/nix",
                        "nix/var/nix/gcroots",
                        "nix/var/nix/profiles",
                        "nix/var/nix/gcroots/profiles",
                    ]
                    .iter()
                    .any(|d| p == Path::new(d))
                    || p.as_os_str().is_empty())
            })
            .map(|(p, s)| {
                // Directory atimes/ctimes change when a lookup or an undo happens; content,
                // type, owner and mode are what must be the same.
                let keep: Vec<&str> = s
                    .split(' ')
                    .filter(|f| {
                        !(f.starts_with("atime=")
                            || f.starts_with("ctime=")
                            || f.starts_with("mtime=")
                            || f.starts_with("ino=")
                            || f.starts_with("nlink=")
                            || f.starts_with("size="))
                    })
                    .collect();
                (p, keep.join(" "))
            })
            .collect()
    }
}

fn ok(out: &Output) -> (String, String) {
    let so = String::from_utf8_lossy(&out.stdout).into_owned();
    let se = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "exit {:?}\n--- stdout\n{so}\n--- stderr\n{se}",
        out.status.code()
    );
    (so, se)
}

fn fails(out: &Output, code: i32) -> String {
    let so = String::from_utf8_lossy(&out.stdout).into_owned();
    let se = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(
        out.status.code(),
        Some(code),
        "--- stdout\n{so}\n--- stderr\n{se}"
    );
    se
}

/// The real `nix-instantiate`, and nixpkgs' lib for the test stub of nixpkgs (`NIXPKGS_LIB`,
/// or the vendored copy in ../shared).
fn tools() -> bool {
    if !have_tool("nix-instantiate", "nix-bin") {
        return false;
    }
    let lib = std::env::var_os("NIXPKGS_LIB")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("../shared/nixpkgs/lib"));
    if lib.join("default.nix").is_file() {
        return true;
    }
    if std::env::var("NIXOS_NSPAWN_REQUIRE_REAL_TOOLS").as_deref() == Ok("1") {
        panic!("no nixpkgs lib at {} (set NIXPKGS_LIB)", lib.display());
    }
    eprintln!(
        "skipped: no nixpkgs lib at {}; set NIXPKGS_LIB",
        lib.display()
    );
    false
}

const NSPAWN: &str = "/var/lib/nixos-nspawn/imperative/nspawn/web.nspawn";
const NETWORK: &str = "/var/lib/nixos-nspawn/imperative/network/20-ve-web.network";
const PROFILE: &str = "/nix/var/nix/profiles/per-nspawn/web";

fn parameters(nspawn: &str) -> String {
    nspawn
        .lines()
        .find_map(|l| l.strip_prefix("Parameters="))
        .unwrap_or_else(|| panic!("no Parameters= in\n{nspawn}"))
        .to_string()
}

#[test]
fn create_from_the_rfc_example_writes_every_file_and_refuses_the_name_again() {
    if !tools() {
        return;
    }
    let h = Host::new();
    let file = h.container_file("web.nix", "");
    let (out, _) = ok(&h.run(&["create", "web", file.to_str().unwrap()]));
    assert!(out.contains("created web (generation 1"), "{out}");
    // Offline root: the live systemd is neither asked nor told; the user is told what to run.
    assert!(
        out.contains("`networkctl reload` and `machinectl start web`"),
        "{out}"
    );
    let calls = h.calls();
    assert_eq!(calls.len(), 2, "{calls:#?}");
    assert!(calls[0].starts_with("nix-build ") && calls[0].contains(" --argstr name web "));
    assert!(calls[0].contains(&format!("--store {}", h.root().display())));
    assert!(calls[1].starts_with(&format!(
        "nix-env --store {root} -p {root}{PROFILE}/system --set /nix/store/",
        root = h.root().display()
    )));

    let nspawn = h.read(NSPAWN);
    assert!(nspawn.starts_with("# Imperative container web, managed by nixos-nspawn"));
    assert!(nspawn.contains("\n[Network]\nPort=tcp:8080:80\nPrivate=yes\nVirtualEthernet=yes\n"));
    assert!(
        nspawn.contains("\nBoot=no\n"),
        "Parameters= needs Boot= beside it"
    );
    let system = std::fs::read_link(
        h.root()
            .join("nix/var/nix/profiles/per-nspawn/web/system-1-link"),
    )
    .unwrap();
    assert_eq!(parameters(&nspawn), format!("{}/init", system.display()));
    assert_eq!(
        std::fs::read_link(h.root().join("nix/var/nix/profiles/per-nspawn/web/system")).unwrap(),
        PathBuf::from("system-1-link")
    );
    // The real parsers accept what was written.
    if have_tool("systemd-nspawn", "systemd-container") {
        nspawn_parse("web", &nspawn).unwrap();
    }
    let network = h.read(NETWORK);
    assert!(network.contains("Name=ve-web\n"), "{network}");
    if let Some(bad) = networkd_parse_errors(&[("20-ve-web.network".into(), network.clone())]) {
        assert!(bad.is_empty(), "{bad:#?}");
    }
    // What nspawn needs in the rootfs, and the per-generation record.
    for p in [
        "/var/lib/machines/web/etc/os-release",
        "/var/lib/machines/web/etc/machine-id",
        "/var/lib/machines/web/usr",
        "/var/lib/machines/web/var",
        "/nix/var/nix/gcroots/per-nspawn/web",
    ] {
        assert!(h.exists(p), "{p} missing");
    }
    // autoStart (the default): machines.target wants it, from the unit dir NixOS leaves alone.
    let wants = "/etc/systemd/system.control/machines.target.wants/systemd-nspawn@web.service";
    assert!(
        out.contains(&format!("starts at boot: linked {wants}")),
        "{out}"
    );
    assert!(
        std::fs::read_link(h.root().join(wants.trim_start_matches('/')))
            .unwrap()
            .ends_with("systemd-nspawn@.service")
    );
    let rec = "/var/lib/nixos-nspawn/imperative/generations/web/1";
    assert_eq!(h.read(&format!("{rec}/units/web.nspawn")), nspawn);
    assert_eq!(h.read(&format!("{rec}/units/20-ve-web.network")), network);
    assert!(
        h.read(&format!("{rec}/source.json"))
            .contains(file.to_str().unwrap())
    );

    // The name is now taken: refused before any build, nothing changes.
    let before = h.tree();
    h.clear_calls();
    let err = fails(&h.run(&["create", "web", file.to_str().unwrap()]), 2);
    assert!(
        err.contains("the name web is already in use: an imperative container"),
        "{err}"
    );
    assert!(err.contains("nixos-nspawn update web"), "{err}");
    assert!(h.calls().is_empty(), "{:?}", h.calls());
    assert_same("refused create", &before, &h.tree());
}

#[test]
fn update_reloads_for_a_config_change_and_restarts_for_a_bind_mount_and_says_why() {
    if !tools() {
        return;
    }
    let h = Host::new();
    let file = h.container_file("web.nix", "");
    ok(&h.run(&["create", "web", file.to_str().unwrap()]));
    let gen1 = h.read(NSPAWN);

    // Only the container's configuration changes: its system (Parameters=) and nothing else.
    // (The test stub of nixpkgs makes its fake system from the configuration's plain values,
    // so the module is written as an attribute set here; a function's body is opaque to it.)
    std::fs::write(
        &file,
        std::fs::read_to_string(&file)
            .unwrap()
            .replace("system-config = { pkgs, ... }: {", "system-config = {")
            .replace("allowedTCPPorts = [ 80 ]", "allowedTCPPorts = [ 80 443 ]"),
    )
    .unwrap();
    // A dry run first: decision, reason and diff; nothing built or written.
    let before = h.tree();
    h.clear_calls();
    let (out, _) = ok(&h.run(&["update", "web", "--dry-run"]));
    assert!(
        out.contains("update web: reload: only the container's system changed (Parameters=)"),
        "{out}"
    );
    assert!(
        out.contains(&format!("--- {NSPAWN} (installed)\n+++ {NSPAWN} (new)\n")),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "- Parameters={}\n+ Parameters=",
            parameters(&gen1)
        )),
        "{out}"
    );
    assert!(
        out.contains("dry run: nothing was built, written, reloaded or restarted"),
        "{out}"
    );
    assert!(h.calls().is_empty(), "{:?}", h.calls());
    assert_same("dry run", &before, &h.tree());

    let (out, _) = ok(&h.run(&["update", "web"]));
    assert!(
        out.contains("update web: reload: only the container's system changed (Parameters=)"),
        "{out}"
    );
    assert!(out.contains("web: generation 2 ("), "{out}");
    let gen2 = h.read(NSPAWN);
    assert_ne!(parameters(&gen1), parameters(&gen2));
    assert_eq!(
        gen1.replace(&parameters(&gen1), ""),
        gen2.replace(&parameters(&gen2), "")
    );

    // A read-write bind mount: the .nspawn file changes beyond Parameters= → restart.
    std::fs::write(
        &file,
        std::fs::read_to_string(&file).unwrap().replace(
            "  network = {};",
            "  network = {};\n  bindMounts.\"/srv/data\" = { hostPath = \"/srv/web\"; isReadOnly = false; };",
        ),
    )
    .unwrap();
    let (out, _) = ok(&h.run(&["update", "web", "--config", file.to_str().unwrap()]));
    assert!(
        out.contains("update web: restart: [Files] Bind= changed"),
        "{out}"
    );
    let gen3 = h.read(NSPAWN);
    assert!(gen3.contains("\nBind=/srv/web:/srv/data\n"), "{gen3}");
    if have_tool("systemd-nspawn", "systemd-container") {
        nspawn_parse("web", &gen3).unwrap();
    }
    // --reload overrides, and says what waits for the next restart.
    std::fs::write(
        &file,
        std::fs::read_to_string(&file).unwrap().replace(
            "isReadOnly = false; };",
            "isReadOnly = false; };\n  bindMounts.\"/srv/logs\" = { };",
        ),
    )
    .unwrap();
    let (out, _) = ok(&h.run(&["update", "web", "--reload", "--dry-run"]));
    assert!(
        out.contains("update web: reload: --reload given; not applied until the next restart: [Files] BindReadOnly= changed"),
        "{out}"
    );
    // Applied, then the same again: nothing to do, and nothing is built.
    ok(&h.run(&["update", "web", "--config", file.to_str().unwrap()]));
    h.clear_calls();
    let (out, _) = ok(&h.run(&["update", "web", "--dry-run"]));
    assert!(
        out.contains("update web: nothing: the container's system and units are unchanged"),
        "{out}"
    );
    assert!(h.calls().is_empty(), "{:?}", h.calls());
}

#[test]
fn update_remove_and_rollback_refuse_declarative_and_legacy_containers_and_say_where() {
    let h = Host::new();
    let r = h.root();
    // A declarative container: NixOS links its .nspawn file from /etc/static.
    std::fs::create_dir_all(r.join("etc/static/systemd/nspawn")).unwrap();
    std::fs::create_dir_all(r.join("etc/systemd/nspawn")).unwrap();
    std::fs::write(
        r.join("etc/static/systemd/nspawn/decl.nspawn"),
        "[Exec]\nBoot=no\n",
    )
    .unwrap();
    std::os::unix::fs::symlink(
        "/etc/static/systemd/nspawn/decl.nspawn",
        r.join("etc/systemd/nspawn/decl.nspawn"),
    )
    .unwrap();
    // A legacy one.
    std::fs::create_dir_all(r.join("etc/nixos-containers")).unwrap();
    std::fs::write(
        r.join("etc/nixos-containers/old.conf"),
        "PRIVATE_NETWORK=0\nSYSTEM_PATH=/nix/var/nix/profiles/per-container/old/system\n",
    )
    .unwrap();
    let before = h.tree();
    let file = h.container_file("x.nix", "");
    for verb in [
        vec!["update", "decl", "--config", file.to_str().unwrap()],
        vec!["remove", "decl"],
        vec!["rollback", "decl"],
        vec!["list-generations", "decl"],
    ] {
        let err = fails(&h.run(&verb), 2);
        assert!(
            err.contains("decl is a declarative container"),
            "{verb:?}: {err}"
        );
        assert!(err.contains("nixos.containers.instances.decl"), "{err}");
        assert!(err.contains("nixos-rebuild switch"), "{err}");
    }
    for verb in [
        vec!["update", "old", "--config", file.to_str().unwrap()],
        vec!["remove", "old", "--delete-state"],
        vec!["rollback", "old"],
    ] {
        let err = fails(&h.run(&verb), 2);
        assert!(
            err.contains("old is a legacy nixos-container (/etc/nixos-containers/old.conf)"),
            "{verb:?}: {err}"
        );
        assert!(
            err.contains("nixos-nspawn migrate --dry-run --only old"),
            "{err}"
        );
    }
    // And create refuses both names.
    for n in ["decl", "old"] {
        let err = fails(&h.run(&["create", n, file.to_str().unwrap()]), 2);
        assert!(err.contains("is already in use"), "{err}");
    }
    assert!(h.calls().is_empty(), "{:?}", h.calls());
    assert_same("refusals", &before, &h.tree());
}

#[test]
fn rollback_restores_the_units_with_the_profile() {
    if !tools() {
        return;
    }
    let h = Host::new();
    let file = h.container_file("web.nix", "");
    ok(&h.run(&["create", "web", file.to_str().unwrap()]));
    let (nspawn1, network1) = (h.read(NSPAWN), h.read(NETWORK));
    // Generation 2: a static address instead of the DHCP pool, a bind mount, new system.
    let file2 = h.container_file(
        "web2.nix",
        "  network.v4.static = { hostAddresses = [ \"10.231.5.1/24\" ]; containerPool = [ \"10.231.5.2/24\" ]; };\n  bindMounts.\"/srv\" = { };\n",
    );
    std::fs::write(
        &file2,
        std::fs::read_to_string(&file2)
            .unwrap()
            .replace("  network = {};", "  network = {};\n  autoStart = false;"),
    )
    .unwrap();
    let (out, _) = ok(&h.run(&["update", "web", "--config", file2.to_str().unwrap()]));
    assert!(out.contains("update web: restart: "), "{out}");
    assert!(out.contains("no longer starts at boot"), "{out}");
    assert!(
        out.contains("20-ve-web.network: [Network] Address= changed"),
        "{out}"
    );
    assert_ne!(h.read(NETWORK), network1);

    let (out, _) = ok(&h.run(&["list-generations", "web"]));
    assert!(out.contains("   1   ") && out.contains("   2   "), "{out}");
    assert!(
        out.lines()
            .any(|l| l.trim_start().starts_with("2 ") && l.contains("(current)")),
        "{out}"
    );

    h.clear_calls();
    let (out, _) = ok(&h.run(&["rollback", "web"]));
    assert!(
        out.contains("rollback web: generation 2 → 1; restart: "),
        "{out}"
    );
    assert_eq!(
        h.read(NSPAWN),
        nspawn1,
        "the .nspawn file is generation 1's again"
    );
    assert_eq!(
        h.read(NETWORK),
        network1,
        "the network unit is generation 1's again"
    );
    assert!(
        out.contains("starts at boot: linked"),
        "autoStart is generation 1's again: {out}"
    );
    assert_eq!(
        std::fs::read_link(h.root().join("nix/var/nix/profiles/per-nspawn/web/system")).unwrap(),
        PathBuf::from("system-1-link")
    );
    let calls = h.calls();
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert!(
        calls[0].ends_with("/system --switch-generation 1"),
        "{calls:?}"
    );
    // Generation 1 is the oldest: nothing further back.
    let err = fails(&h.run(&["rollback", "web"]), 2);
    assert!(err.contains("generation 1 is the oldest"), "{err}");
    // Updating to generation 2's system again: nix-env switches back to generation 2 (it makes
    // no new generation for the newest system), and its units come back with it.
    let (out, _) = ok(&h.run(&["update", "web", "--config", file2.to_str().unwrap()]));
    assert!(out.contains("web: generation 2 ("), "{out}");
    assert_ne!(h.read(NETWORK), network1);
    let (out, _) = ok(&h.run(&["list-generations", "web", "--json"]));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let gens = v["generations"].as_array().unwrap();
    assert_eq!(gens.len(), 2);
    assert_eq!(gens[1]["current"], true);
    assert_eq!(gens[0]["recorded"], true);
    // Only a unit changes (a bind mount; the same system): the generation stays, and says so.
    std::fs::write(
        &file2,
        std::fs::read_to_string(&file2).unwrap().replace(
            "  bindMounts.\"/srv\" = { };",
            "  bindMounts.\"/srv\" = { };\n  bindMounts.\"/opt\" = { };",
        ),
    )
    .unwrap();
    let (out, _) = ok(&h.run(&["update", "web"]));
    assert!(
        out.contains("update web: restart: [Files] BindReadOnly= changed"),
        "{out}"
    );
    assert!(
        out.contains("the system is unchanged: still generation 2"),
        "{out}"
    );
    assert!(h.read(NSPAWN).contains("BindReadOnly=/opt\n"));
    assert_eq!(
        h.read("/var/lib/nixos-nspawn/imperative/generations/web/2/units/web.nspawn"),
        h.read(NSPAWN)
    );
}

#[test]
fn list_shows_every_kind_as_text_and_json() {
    if !tools() {
        return;
    }
    let h = Host::new();
    let r = h.root();
    let file = h.container_file("web.nix", "");
    ok(&h.run(&["create", "web", file.to_str().unwrap()]));
    std::fs::create_dir_all(r.join("etc/static/systemd/nspawn")).unwrap();
    std::fs::create_dir_all(r.join("etc/systemd/nspawn")).unwrap();
    std::fs::write(
        r.join("etc/static/systemd/nspawn/decl.nspawn"),
        "[Exec]\nBoot=no\n",
    )
    .unwrap();
    std::os::unix::fs::symlink(
        "/etc/static/systemd/nspawn/decl.nspawn",
        r.join("etc/systemd/nspawn/decl.nspawn"),
    )
    .unwrap();
    std::fs::create_dir_all(r.join("etc/nixos-containers")).unwrap();
    std::fs::write(
        r.join("etc/nixos-containers/old.conf"),
        "PRIVATE_NETWORK=0\n",
    )
    .unwrap();
    std::fs::create_dir_all(r.join("var/lib/nixos-containers/old/etc")).unwrap();
    std::fs::create_dir_all(r.join("var/lib/machines/debian/usr")).unwrap();
    let (out, _) = ok(&h.run(&["list"]));
    let row = |name: &str| {
        out.lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .unwrap_or_else(|| panic!("no row for {name}:\n{out}"))
            .split_whitespace()
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    assert_eq!(row("web")[1..4], ["imperative", "unknown", "1"]);
    assert_eq!(row("decl")[1], "declarative");
    assert_eq!(row("old")[1..2], ["legacy"]);
    assert_eq!(row("old")[4], "/var/lib/nixos-containers/old");
    assert_eq!(row("debian")[1], "unmanaged");
    assert!(out.contains("whether containers run is not known"), "{out}");

    let (out, _) = ok(&h.run(&["list", "--json"]));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let by: BTreeMap<String, &serde_json::Value> = v["containers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["name"].as_str().unwrap().to_string(), c))
        .collect();
    assert_eq!(
        by.keys().cloned().collect::<Vec<_>>(),
        ["debian", "decl", "old", "web"]
    );
    assert_eq!(by["web"]["kind"], "imperative");
    assert_eq!(by["web"]["generation"], 1);
    assert_eq!(by["web"]["state"], "/var/lib/machines/web");
    assert_eq!(by["web"]["state_exists"], true);
    assert_eq!(
        by["web"]["running"],
        serde_json::Value::Null,
        "offline root: not asked"
    );
    assert_eq!(by["decl"]["kind"], "declarative");
    assert_eq!(by["decl"]["state_exists"], false);
    assert_eq!(by["old"]["kind"], "legacy");
    assert_eq!(by["debian"]["kind"], "unmanaged");
    assert!(
        h.calls().iter().all(|c| !c.starts_with("systemctl")),
        "{:?}",
        h.calls()
    );
}

#[test]
fn remove_keeps_the_state_unless_asked_and_then_deletes_it_even_when_immutable() {
    if !tools() {
        return;
    }
    let h = Host::new();
    let file = h.container_file("web.nix", "");
    ok(&h.run(&["create", "web", file.to_str().unwrap()]));
    std::fs::write(h.root().join("var/lib/machines/web/etc/data"), "precious").unwrap();
    // The container's own profiles live in the profile dir too (bound as /nix/var/nix/profiles).
    std::fs::create_dir_all(
        h.root()
            .join("nix/var/nix/profiles/per-nspawn/web/per-user"),
    )
    .unwrap();
    let (out, _) = ok(&h.run(&["remove", "web"]));
    assert!(
        out.contains("kept the state /var/lib/machines/web"),
        "{out}"
    );
    for gone in [
        NSPAWN,
        NETWORK,
        "/var/lib/nixos-nspawn/imperative/generations/web",
        "/nix/var/nix/profiles/per-nspawn/web/system",
        "/nix/var/nix/profiles/per-nspawn/web/system-1-link",
    ] {
        assert!(!h.exists(gone), "{gone} still there");
    }
    assert_eq!(h.read("/var/lib/machines/web/etc/data"), "precious");
    assert!(
        !h.exists("/etc/systemd/system.control/machines.target.wants/systemd-nspawn@web.service")
    );
    assert!(h.exists("/nix/var/nix/profiles/per-nspawn/web/per-user"));
    let err = fails(&h.run(&["remove", "web"]), 2);
    assert!(
        err.contains("not managed by nixos-nspawn") || err.contains("no imperative container"),
        "{err}"
    );

    // Again, with --delete-state, and an immutable file as NixOS leaves in var/empty.
    let h = Host::new();
    ok(&h.run(&["create", "web", file.to_str().unwrap()]));
    let empty = h.root().join("var/lib/machines/web/var/empty");
    std::fs::create_dir_all(&empty).unwrap();
    std::fs::write(empty.join("f"), "x").unwrap();
    let immutable = is_root()
        && Command::new("chattr")
            .arg("+i")
            .arg(&empty)
            .status()
            .is_ok_and(|s| s.success());
    let (out, _) = ok(&h.run(&["remove", "web", "--delete-state"]));
    assert!(out.contains("deleted /var/lib/machines/web"), "{out}");
    for gone in [
        "/var/lib/machines/web",
        PROFILE,
        "/nix/var/nix/gcroots/per-nspawn/web",
        NSPAWN,
        NETWORK,
    ] {
        assert!(!h.exists(gone), "{gone} still there");
    }
    if !immutable {
        eprintln!("note: chattr +i not available here; the immutable case was not exercised");
    }
    // The name is free again.
    ok(&h.run(&["create", "web", file.to_str().unwrap()]));
}

#[test]
fn failures_name_the_command_and_leave_nothing_half_made() {
    if !tools() {
        return;
    }
    let h = Host::new();
    let file = h.container_file("web.nix", "");
    let before = h.tree();
    // The build fails: the command and its stderr are shown, nothing is written.
    h.flag("fail-nix-build", "");
    let err = fails(&h.run(&["-v", "create", "web", file.to_str().unwrap()]), 1);
    assert!(
        err.contains("+ nix-instantiate --parse "),
        "-v shows each command: {err}"
    );
    assert!(err.contains("+ nix-build "), "{err}");
    assert!(
        err.contains("`nix-build ")
            && err.contains(
                "failed (exit code 1): error: builder for '/nix/store/x.drv' failed (stand-in)"
            ),
        "{err}"
    );
    assert_same("failed build", &before, &h.tree());
    h.unflag("fail-nix-build");

    // The profile cannot be set: the profile dir this run made is removed again.
    h.flag("fail-nix-env", "");
    let err = fails(&h.run(&["create", "web", file.to_str().unwrap()]), 1);
    assert!(err.contains("cannot set the profile (stand-in)"), "{err}");
    assert!(
        err.contains("everything this run made was removed again"),
        "{err}"
    );
    assert_same("failed nix-env", &before, &h.tree());
    h.unflag("fail-nix-env");

    // Something takes the network directory's place after the checks: everything made is
    // taken back, and the message says so.
    h.flag(
        "plant",
        &format!(
            "mkdir -p {r}/var/lib/nixos-nspawn/imperative; echo intruder > {r}/var/lib/nixos-nspawn/imperative/network",
            r = h.root().display()
        ),
    );
    let err = fails(&h.run(&["create", "web", file.to_str().unwrap()]), 1);
    assert!(err.contains("create web failed:"), "{err}");
    assert!(
        err.contains("everything this run made was removed again"),
        "{err}"
    );
    let mut after = h.tree();
    assert!(
        after
            .remove(Path::new("var/lib/nixos-nspawn/imperative/network"))
            .is_some()
    );
    let mut expected = before.clone();
    for p in [
        "var",
        "var/lib",
        "var/lib/nixos-nspawn",
        "var/lib/nixos-nspawn/imperative",
    ] {
        if let Some(v) = after.get(Path::new(p)) {
            expected.entry(PathBuf::from(p)).or_insert(v.clone());
        }
    }
    // Only empty parent directories may stay behind (the planted file is in one).
    let extra: Vec<_> = after
        .keys()
        .filter(|k| !expected.contains_key(*k))
        .collect();
    assert!(
        extra.iter().all(|p| after[*p].starts_with("mode=40")),
        "left behind: {extra:#?}"
    );
    for p in [
        "var/lib/machines/web",
        "var/lib/nixos-nspawn/imperative/nspawn/web.nspawn",
        "nix/var/nix/profiles/per-nspawn/web/system",
    ] {
        assert!(!after.contains_key(Path::new(p)), "{p} left behind");
    }
    h.unflag("plant");

    // A bad file is refused before any build, naming the file.
    let bad = h.files.path().join("bad.nix");
    std::fs::write(&bad, "{ network = { ; }").unwrap();
    h.clear_calls();
    let err = fails(&h.run(&["create", "web2", bad.to_str().unwrap()]), 2);
    assert!(
        err.contains(&format!("{}: not a valid Nix file", bad.display())),
        "{err}"
    );
    // A bad option: the evaluation names it, nothing is built.
    std::fs::write(
        &bad,
        format!(
            "{{ nixpkgs = {}; forwardPorts = [ {{ hostPort = 80; }} ]; }}",
            repo().join("nixos/tests/stub/fake-nixpkgs").display()
        ),
    )
    .unwrap();
    let err = fails(&h.run(&["create", "web2", bad.to_str().unwrap()]), 1);
    assert!(
        err.contains("container web2: forwardPorts need `network = { };`"),
        "{err}"
    );
    assert!(
        h.calls().is_empty(),
        "no build after a failed evaluation: {:?}",
        h.calls()
    );
    // A bad name is refused first.
    let err = fails(&h.run(&["create", "bad_name", file.to_str().unwrap()]), 2);
    assert!(err.contains("\"bad_name\" is not a valid"), "{err}");
}

#[test]
fn create_refuses_a_missing_zone_and_a_static_address_in_use() {
    if !tools() {
        return;
    }
    let h = Host::new();
    let zoned = h.container_file("z.nix", "  network.zone = \"lab\";\n");
    std::fs::write(
        &zoned,
        std::fs::read_to_string(&zoned).unwrap().replace(
            "  forwardPorts = [ { hostPort = 8080; containerPort = 80; } ];\n",
            "",
        ),
    )
    .unwrap();
    let err = fails(&h.run(&["create", "z1", zoned.to_str().unwrap()]), 2);
    assert!(err.contains("zone \"lab\" does not exist"), "{err}");
    assert!(err.contains("nixos.containers.zones.lab"), "{err}");
    assert!(h.calls().is_empty());
    // Declared on the host (networkd unit for vz-lab): accepted.
    std::fs::create_dir_all(h.root().join("etc/systemd/network")).unwrap();
    std::fs::write(
        h.root().join("etc/systemd/network/20-vz-lab.netdev"),
        "[NetDev]\nName=vz-lab\nKind=bridge\n",
    )
    .unwrap();
    ok(&h.run(&["create", "z1", zoned.to_str().unwrap()]));

    let a = h.container_file("a.nix", "  network.v4.static = { hostAddresses = [ \"10.9.0.1/24\" ]; containerPool = [ \"10.9.0.2/24\" ]; };\n");
    ok(&h.run(&["create", "a1", a.to_str().unwrap()]));
    let b = h.container_file("b.nix", "  network.v4.static = { hostAddresses = [ \"10.9.1.1/24\" ]; containerPool = [ \"10.9.0.2/24\" ]; };\n");
    let before = h.tree();
    let err = fails(&h.run(&["create", "b1", b.to_str().unwrap()]), 2);
    assert!(
        err.contains("10.9.0.2 is already used by imperative container a1"),
        "{err}"
    );
    assert_same("address collision", &before, &h.tree());
    // Host units count too.
    std::fs::write(
        h.root().join("etc/systemd/network/10-lan.network"),
        "[Match]\nName=eth0\n[Network]\nAddress=10.9.1.1/24\n",
    )
    .unwrap();
    let c = h.container_file("c.nix", "  network.v4.static = { hostAddresses = [ \"10.9.1.1/24\" ]; containerPool = [ \"10.9.1.2/24\" ]; };\n");
    let err = fails(&h.run(&["create", "c1", c.to_str().unwrap()]), 2);
    assert!(
        err.contains("10.9.1.1 is already used by /etc/systemd/network/10-lan.network"),
        "{err}"
    );
}

#[test]
fn a_migrated_imperative_container_is_updated_with_update() {
    if !tools() || !is_root() {
        eprintln!("skipped: migrate --yes needs root");
        return;
    }
    let root = TestRoot::fixture("example");
    let h = Host::new();
    let out = Command::new(env!("CARGO_BIN_EXE_nixos-nspawn"))
        .arg("--root")
        .arg(root.path())
        .args(["migrate", "--yes", "--json", "--only", "scratch"])
        .env(
            "PATH",
            format!(
                "{}:{}",
                h.bin.path().display(),
                std::env::var("PATH").unwrap_or_default()
            ),
        )
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let code = out.status.code().unwrap();
    assert!(
        code == 0 || code == 3,
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let nspawn = "var/lib/nixos-nspawn/imperative/nspawn/scratch.nspawn";
    let migrated = std::fs::read_to_string(root.path().join(nspawn)).unwrap();
    let gens_before: Vec<String> =
        std::fs::read_dir(root.path().join("nix/var/nix/profiles/per-nspawn/scratch"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with("-link"))
            .collect();
    assert!(
        !gens_before.is_empty(),
        "migrate carried the legacy generations"
    );

    // The migrated container is imperative (its legacy original stays as the way back).
    let (out, _) = ok(&h.run_on(root.path(), &["list"]));
    assert!(
        out.lines()
            .any(|l| l.starts_with("scratch ") && l.contains(" imperative ")),
        "{out}"
    );
    // Its container file (written by migrate) says how to rebuild; here, with a file that
    // pins nixpkgs (the migrated one uses the host's <nixpkgs>) and keeps its addresses.
    let file = h.container_file(
        "scratch.nix",
        "  network.v4.static = { hostAddresses = [ \"10.233.4.1/30\" ]; containerPool = [ \"10.233.4.2/30\" ]; };\n  activation.strategy = \"none\";\n  restart = \"on-failure\";\n  timeoutStartSec = \"1min\";\n",
    );
    std::fs::write(
        &file,
        std::fs::read_to_string(&file).unwrap().replace(
            "  forwardPorts = [ { hostPort = 8080; containerPort = 80; } ];\n",
            "",
        ),
    )
    .unwrap();
    let (out, _) = ok(&h.run_on(
        root.path(),
        &[
            "update",
            "scratch",
            "--config",
            file.to_str().unwrap(),
            "--dry-run",
        ],
    ));
    assert!(
        out.contains("update scratch: nothing: activation.strategy is \"none\""),
        "{out}"
    );
    assert!(
        out.contains("warning: the installed files were written by `nixos-nspawn migrate`")
            && out.contains("[Exec] ResolvConf= removed"),
        "{out}"
    );
    assert!(
        out.contains("- ResolvConf=off"),
        "the diff shows what migrate's file had: {out}"
    );
    // Legacy's Restart=on-failure and TimeoutStartSec=1min are options: the file keeps them.
    assert!(!out.contains("service drop-in:"), "{out}");
    assert!(out.contains("\n  Restart=on-failure\n"), "{out}");
    let (out, _) = ok(&h.run_on(
        root.path(),
        &[
            "update",
            "scratch",
            "--config",
            file.to_str().unwrap(),
            "--restart",
        ],
    ));
    assert!(
        out.contains("update scratch: restart: --restart given"),
        "{out}"
    );
    let now = std::fs::read_to_string(root.path().join(nspawn)).unwrap();
    assert_ne!(now, migrated);
    assert!(now.starts_with("# Imperative container scratch, managed by nixos-nspawn"));
    let n = gens_before.len() + 1;
    assert!(out.contains(&format!("scratch: generation {n} (")), "{out}");
    // The legacy generations are listed but cannot be rolled back to (no unit files known).
    let (out, _) = ok(&h.run_on(root.path(), &["list-generations", "scratch"]));
    assert!(out.contains("no unit files recorded"), "{out}");
    let err = fails(&h.run_on(root.path(), &["rollback", "scratch"]), 1);
    assert!(err.contains("has no recorded unit files"), "{err}");
    assert_eq!(
        std::fs::read_to_string(root.path().join(nspawn)).unwrap(),
        now,
        "a refused rollback changes nothing"
    );
    // Migrating again must not put the legacy translation back over the updated file.
    let out = Command::new(env!("CARGO_BIN_EXE_nixos-nspawn"))
        .arg("--root")
        .arg(root.path())
        .args(["migrate", "--yes", "--only", "scratch"])
        .env(
            "PATH",
            format!(
                "{}:{}",
                h.bin.path().display(),
                std::env::var("PATH").unwrap_or_default()
            ),
        )
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("is managed with `nixos-nspawn update`"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string(root.path().join(nspawn)).unwrap(),
        now
    );
}

/// The container file `migrate` writes is usable as it is: `update NAME` without `--config`
/// evaluates it with the host's `<nixpkgs>` (what `nixos-container` built the legacy container
/// with), and the drop-in it renders keeps legacy's `Restart=on-failure` and
/// `TimeoutStartSec=1min` (options now, no raw keys an update would drop).
#[test]
fn a_migrated_container_file_updates_without_config_and_keeps_restart() {
    if !tools() || !is_root() {
        eprintln!("skipped: migrate --yes needs root");
        return;
    }
    let root = TestRoot::fixture("example");
    let h = Host::new();
    let path = format!(
        "{}:{}",
        h.bin.path().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = Command::new(env!("CARGO_BIN_EXE_nixos-nspawn"))
        .arg("--root")
        .arg(root.path())
        .args(["migrate", "--yes", "--json", "--only", "scratch"])
        .env("PATH", &path)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let code = out.status.code().unwrap();
    assert!(
        code == 0 || code == 3,
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let file = std::fs::read_to_string(root.path().join("etc/nixos-nspawn/scratch.nix")).unwrap();
    assert!(file.contains("\n  nixpkgs = <nixpkgs>;\n"), "{file}");
    assert!(file.contains("\n  restart = \"on-failure\";\n"), "{file}");
    let dropin = std::fs::read_to_string(
        root.path()
            .join("etc/systemd/system.control/systemd-nspawn@scratch.service.d/nixos-nspawn.conf"),
    )
    .unwrap_or_else(|e| panic!("migrate wrote no drop-in for scratch: {e}"));
    assert!(dropin.contains("\nRestart=on-failure\n"), "{dropin}");
    assert!(dropin.contains("\nTimeoutStartSec=1min\n"), "{dropin}");

    // The test root stands for `/`: the file names the guest configuration by its host path.
    let config = "/var/lib/machines/scratch/etc/nixos/configuration.nix";
    assert!(
        file.contains(&format!("system-config = {config};")),
        "{file}"
    );
    std::fs::write(
        root.path().join("etc/nixos-nspawn/scratch.nix"),
        file.replace(
            config,
            &root.path().join(&config[1..]).display().to_string(),
        ),
    )
    .unwrap();
    // A NixOS host: NIX_PATH names nixpkgs (here the test stub of it).
    let update = |extra: &[&str]| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_nixos-nspawn"));
        c.arg("--root")
            .arg(root.path())
            .args(["update", "scratch"])
            .args(extra)
            .env("PATH", &path)
            .env(
                "NIX_PATH",
                format!(
                    "nixpkgs={}",
                    repo().join("nixos/tests/stub/fake-nixpkgs").display()
                ),
            )
            .stdin(Stdio::null());
        if std::env::var_os("NIXPKGS_LIB").is_none() {
            c.env("NIXPKGS_LIB", repo().join("../shared/nixpkgs/lib"));
        }
        c.output().unwrap()
    };
    let (out, _) = ok(&update(&["--dry-run"]));
    assert!(
        out.contains("dry run: nothing was built") && out.contains("scratch.nix"),
        "{out}"
    );
    // The drop-in's settings are unchanged lines of its diff, and no warning names them.
    assert!(out.contains("\n  Restart=on-failure\n"), "{out}");
    assert!(out.contains("\n  TimeoutStartSec=1min\n"), "{out}");
    assert!(
        !out.contains("Restart= removed") && !out.contains("Restart= changed"),
        "{out}"
    );
    assert!(!out.contains("service drop-in"), "{out}");

    // Without nixpkgs in NIX_PATH the error names the file and the fix, as nixos-container's
    // `<nixpkgs/nixos>` would have failed on that host.
    let mut c = Command::new(env!("CARGO_BIN_EXE_nixos-nspawn"));
    c.arg("--root")
        .arg(root.path())
        .args(["update", "scratch", "--dry-run"])
        .env("PATH", &path)
        .env("NIX_PATH", "")
        .stdin(Stdio::null());
    if std::env::var_os("NIXPKGS_LIB").is_none() {
        c.env("NIXPKGS_LIB", repo().join("../shared/nixpkgs/lib"));
    }
    let out = c.output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("nixpkgs"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

/// Boot a busybox container with systemd-nspawn from the rootfs and the `.nspawn` file that
/// `create` wrote (copied byte for byte next to the rootfs, `--settings=trusted`), in private
/// mount and network namespaces. The store path `Parameters=` names is a stand-in init in a
/// tmpfs over `/nix/store` inside that mount namespace only. Checks the network mode from
/// inside: the RFC example (`network = { }`) sees `host0`, a host-network container sees the
/// namespace's own interface.
#[test]
fn a_created_container_boots_with_the_written_nspawn_file() {
    if !tools()
        || !have_tool("systemd-nspawn", "systemd-container")
        || !have_tool("unshare", "util-linux")
    {
        return;
    }
    if !is_root()
        || !Path::new("/nix/store").is_dir()
        || !Path::new("/nix/var/nix").is_dir()
        || !Path::new("/bin/busybox").exists()
    {
        eprintln!("skipped: needs root, /nix/store, /nix/var/nix and busybox-static");
        return;
    }
    let h = Host::new();
    let pid = std::process::id() % 100_000;
    let veth = format!("v{pid}");
    let hostnet = format!("n{pid}");
    let file = h.container_file("v.nix", "");
    ok(&h.run(&["create", &veth, file.to_str().unwrap()]));
    let hfile = h.files.path().join("h.nix");
    std::fs::write(
        &hfile,
        format!(
            "{{ nixpkgs = {}; system-config = {{ }}; }}",
            repo().join("nixos/tests/stub/fake-nixpkgs").display()
        ),
    )
    .unwrap();
    ok(&h.run(&["create", &hostnet, hfile.to_str().unwrap()]));
    let peer = format!("hx{pid}");
    for (name, expect_in, expect_out) in [
        (veth.as_str(), "host0", peer.as_str()),
        (hostnet.as_str(), peer.as_str(), "host0"),
    ] {
        let nspawn = h.read(&format!(
            "/var/lib/nixos-nspawn/imperative/nspawn/{name}.nspawn"
        ));
        let top = parameters(&nspawn).trim_end_matches("/init").to_string();
        let rootfs = h.root().join("var/lib/machines").join(name);
        std::fs::create_dir_all(rootfs.join("bin")).unwrap();
        std::fs::copy("/bin/busybox", rootfs.join("bin/busybox")).unwrap();
        for c in ["sh", "ip", "echo", "cat"] {
            std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(c)).unwrap();
        }
        // Byte for byte what create installed, where nspawn finds it for -D (trusted).
        std::fs::write(
            h.root()
                .join("var/lib/machines")
                .join(format!("{name}.nspawn")),
            &nspawn,
        )
        .unwrap();
        let script = format!(
            "set -e\n\
             mount -t tmpfs tmpfs /nix/store\n\
             mkdir -p {top}\n\
             printf '#!/bin/sh\\necho INIT-RAN \"$@\"\\nip -o link\\n' > {top}/init\n\
             chmod 755 {top}/init\n\
             mount -t tmpfs tmpfs /nix/var/nix\n\
             mkdir -p /nix/var/nix/profiles/per-nspawn/{name} /nix/var/nix/gcroots/per-nspawn/{name} /nix/var/nix/db /nix/var/nix/daemon-socket\n\
             ip link set lo up\n\
             ip link add {peer} type veth peer name hy{pid}\n\
             timeout 60 systemd-nspawn --register=no --keep-unit -q --settings=trusted -D {rootfs} -M {name} </dev/null\n",
            rootfs = rootfs.display()
        );
        let out = run_in_private_namespaces(90, &script);
        let so = String::from_utf8_lossy(&out.stdout);
        let se = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "{name}: exit {:?}\n{so}\n{se}",
            out.status.code()
        );
        assert!(
            so.contains("INIT-RAN"),
            "{name}: the init from Parameters= did not run\n{so}\n{se}"
        );
        assert!(
            so.contains(&format!(": {expect_in}")),
            "{name}: {expect_in} not seen inside\n{so}"
        );
        assert!(
            !so.contains(&format!(": {expect_out}")),
            "{name}: {expect_out} seen inside\n{so}"
        );
        let complaints: Vec<&str> = se
            .lines()
            .filter(|l| l.contains(".nspawn:") || l.contains("Ignoring"))
            .collect();
        assert!(
            complaints.is_empty(),
            "{name}: nspawn complained about the file: {complaints:#?}"
        );
    }
}

#[test]
fn create_from_a_flake_output_and_from_a_prebuilt_system() {
    if !tools() {
        return;
    }
    let h = Host::new();
    // A flake whose output holds a container file's value.
    let flake = h.files.path().join("flake");
    std::fs::create_dir_all(&flake).unwrap();
    let file = h.container_file("web.nix", "");
    std::fs::copy(&file, flake.join("web.nix")).unwrap();
    std::fs::write(
        flake.join("flake.nix"),
        "{ outputs = _: { nixosNspawnContainers.web = import ./web.nix; }; }\n",
    )
    .unwrap();
    let (out, _) = ok(&h.run(&["create", "web", "--flake", flake.to_str().unwrap()]));
    assert!(
        out.contains(&format!(
            "from {}#nixosNspawnContainers.web",
            flake.display()
        )),
        "{out}"
    );
    let calls = h.calls();
    assert!(
        calls[0].starts_with(
            "nix eval --extra-experimental-features nix-command flakes --json --impure"
        ),
        "{calls:?}"
    );
    assert!(
        calls[0].contains(&format!(
            "(builtins.getFlake \"{}\").outputs.\"nixosNspawnContainers\".\"web\"",
            flake.display()
        )),
        "{calls:?}"
    );
    assert!(
        calls[1].starts_with("nix build ") && calls[1].contains("--print-out-paths"),
        "{calls:?}"
    );
    // The same container as from the file: the same system, the same units.
    let from_flake = h.read(NSPAWN);
    let h2 = Host::new();
    ok(&h2.run(&["create", "web", file.to_str().unwrap()]));
    // (The stub's fake system depends on the file's path, so only Parameters= differs.)
    let without_parameters = |t: &str| {
        t.lines()
            .filter(|l| !l.starts_with("Parameters="))
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert_eq!(
        without_parameters(&from_flake),
        without_parameters(&h2.read(NSPAWN))
    );
    // update without a source rebuilds from the flake it was created from.
    h.clear_calls();
    let (out, _) = ok(&h.run(&["update", "web", "--dry-run"]));
    assert!(
        out.contains("nothing: the container's system and units are unchanged"),
        "{out}"
    );
    assert!(h.calls()[0].starts_with("nix eval "), "{:?}", h.calls());

    // A prebuilt system: nothing is built, the profile points at it, the options come from
    // the file.
    let h3 = Host::new();
    h3.clear_calls();
    let (out, _) = ok(&h3.run(&[
        "create",
        "web",
        file.to_str().unwrap(),
        "--profile",
        "/nix/store/0000000000000000000000000000000a-prebuilt",
    ]));
    assert!(
        out.contains("system /nix/store/0000000000000000000000000000000a-prebuilt"),
        "{out}"
    );
    let nspawn = h3.read(NSPAWN);
    assert!(
        nspawn.contains("Parameters=/nix/store/0000000000000000000000000000000a-prebuilt/init\n"),
        "{nspawn}"
    );
    assert!(
        nspawn.contains("Port=tcp:8080:80\n"),
        "options from the file: {nspawn}"
    );
    let calls = h3.calls();
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert!(
        calls[0].ends_with("--set /nix/store/0000000000000000000000000000000a-prebuilt"),
        "{calls:?}"
    );
}
