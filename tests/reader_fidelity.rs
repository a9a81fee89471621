//! Issue 9: real configurations read the way their owners wrote them. Each fixture in
//! `fixtures/nix/reader/` (written for these tests: small reductions of patterns found in
//! public configurations) is given with `--config` to the real binary on a scratch root; the
//! report must name the containers (or say precisely why not), and every emitted Nix file must
//! pass `nix-instantiate --parse`, which also resolves every name it uses.
#![allow(clippy::unwrap_used)]

mod util;

use std::path::PathBuf;
use std::process::Command;
use util::*;

fn fixture(name: &str) -> PathBuf {
    repo().join("fixtures/nix/reader").join(name)
}

/// The dry-run report for one fixture, on an empty scratch root (no evaluation: the root is
/// not `/`).
fn report(name: &str) -> serde_json::Value {
    let root = tempfile::tempdir().unwrap();
    let f = fixture(name);
    let out = nixos_nspawn(
        root.path(),
        &[
            "migrate",
            "--dry-run",
            "--json",
            "--config",
            f.to_str().unwrap(),
        ],
    );
    json(&out)
}

fn names(r: &serde_json::Value) -> Vec<String> {
    let mut v: Vec<String> = r["containers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap().to_string())
        .collect();
    v.sort();
    v
}

fn container<'a>(r: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    r["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no container {name}: {r:#}"))
}

fn needs_human(c: &serde_json::Value) -> Vec<String> {
    c["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|w| w["category"] == "needs-human")
        .map(|w| w["code"].as_str().unwrap().to_string())
        .collect()
}

fn warning<'a>(c: &'a serde_json::Value, code: &str) -> Option<&'a serde_json::Value> {
    c["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["code"] == code)
}

/// `nix-instantiate --parse` of the emitted file: `Err(stderr)` when it does not parse.
fn parses(text: &str) -> Result<(), String> {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("out.nix");
    std::fs::write(&p, text).unwrap();
    let out = Command::new("nix-instantiate")
        .arg("--parse")
        .arg(&p)
        .output()
        .unwrap();
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// Evaluate `expr` where `m` is the emitted module applied to stand-in module arguments.
fn eval_in_module(text: &str, args: &str, expr: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("out.nix");
    std::fs::write(&p, text).unwrap();
    let out = Command::new("nix-instantiate")
        .args(["--eval", "--strict", "-E"])
        .arg(format!("let m = import {} {args}; in {expr}", p.display()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn every_fixture_reports_its_containers_or_a_reason_and_its_nix_parses() {
    if !have_tool("nix-instantiate", "nix-bin") {
        return;
    }
    let dir = repo().join("fixtures/nix/reader");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|x| x != "nix") {
            continue;
        }
        let name = path.file_name().unwrap().to_str().unwrap().to_string();
        let r = report(&name);
        let problems = r["problems"].as_array().unwrap();
        assert!(
            !names(&r).is_empty() || !problems.is_empty(),
            "{name}: no container and no reason: {r:#}"
        );
        if let Some(text) = r["nix_file"].as_str()
            && let Err(e) = parses(text)
        {
            panic!("{name}: the emitted Nix does not parse:\n{text}\n{e}");
        }
        seen += 1;
    }
    assert!(seen >= 6, "{seen}");
}

/// Issue 9 (observed): `specialArgs = { inherit nix-config; };` was emitted while `nix-config`
/// was undefined in the generated file; `let` values used by the guest were left to a human.
#[test]
fn let_bindings_travel_with_the_code_that_uses_them() {
    if !have_tool("nix-instantiate", "nix-bin") {
        return;
    }
    let r = report("let-carried.nix");
    let wiki = container(&r, "wiki");
    assert!(needs_human(wiki).is_empty(), "{:#}", wiki["warnings"]);
    // Interpolated addresses and attribute names fold to values.
    let nix = wiki["nix"].as_str().unwrap();
    assert!(nix.contains("10.77.0.1"), "{nix}");
    assert!(nix.contains("10.77.0.2"), "{nix}");
    assert!(nix.contains("\"/srv/wiki\""), "{nix}");
    // `inputs` is an argument of the host's module function: noted, taken the same way.
    let note = warning(wiki, "module-argument").unwrap();
    assert!(note["message"].as_str().unwrap().contains("`inputs`"));
    let text = r["nix_file"].as_str().unwrap();
    parses(text).unwrap();
    // The carried bindings make the guest config and specialArgs evaluate as before.
    let args = "{ config = { services.wikiHost.enable = true; }; lib = { mkIf = c: v: v; }; pkgs = { }; \
                inputs = { nix-config = { nixosModules.base = \"base\"; }; }; }";
    let ports = eval_in_module(
        text,
        args,
        "(m.nixos.containers.instances.wiki.system-config { pkgs = { }; }).networking.firewall.allowedTCPPorts",
    );
    assert_eq!(ports, "[ 8080 8443 ]");
    let special = eval_in_module(
        text,
        args,
        "m.nixos.containers.instances.wiki.specialArgs.nix-config.nixosModules.base",
    );
    assert_eq!(special, "\"base\"");
}

/// Issue 9 (observed): a file that is the value of `containers` (names with dots) reported
/// "No legacy containers found" and exited 0.
#[test]
fn files_of_container_definitions_are_read_with_their_names() {
    if !have_tool("nix-instantiate", "nix-bin") {
        return;
    }
    let r = report("containers-set.nix");
    assert_eq!(names(&r), ["db.lan", "web.example.org"]);
    let db = container(&r, "db.lan");
    assert!(
        db["nix"].as_str().unwrap().contains("br-lan"),
        "{}",
        db["nix"]
    );
    assert!(
        db["nix"].as_str().unwrap().contains("192.168.9.20/24"),
        "{}",
        db["nix"]
    );
    assert!(warning(db, "nix-containers-set-read").is_some());
    // A function of the caller's arguments returning the set: read, and the one name the
    // file cannot bind (`helpers`, a parameter of that function) is the only human point.
    let r = report("containers-factory.nix");
    assert_eq!(names(&r), ["edge01", "edge02"]);
    let e = container(&r, "edge01");
    assert_eq!(needs_human(e), ["free-variable"]);
    let msg = warning(e, "free-variable").unwrap()["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(msg.contains("`helpers`"), "{msg}");
    assert!(
        e["nix"].as_str().unwrap().contains("\"dmz\""),
        "{}",
        e["nix"]
    );
    // A file with no container says so, naming the file.
    let r = report("no-containers.nix");
    assert!(names(&r).is_empty());
    let p = &r["problems"][0];
    assert_eq!(p["code"], "nix-no-containers", "{r:#}");
    assert!(p["message"].as_str().unwrap().contains("no-containers.nix"));
}

#[test]
fn containers_generated_from_literal_data_are_read() {
    if !have_tool("nix-instantiate", "nix-bin") {
        return;
    }
    let r = report("generated.nix");
    assert_eq!(names(&r), ["alpha", "beta", "worker-a", "worker-b"]);
    let problems: Vec<&str> = r["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["code"].as_str().unwrap())
        .collect();
    assert!(
        !problems.contains(&"nix-dynamic-containers"),
        "{problems:?}"
    );
    let w = container(&r, "worker-b");
    assert!(needs_human(w).is_empty(), "{:#}", w["warnings"]);
    let nix = w["nix"].as_str().unwrap();
    assert!(nix.contains("10.66.1.21"), "{nix}");
    // eth0 in the generated guest config is rewritten like any other.
    assert!(nix.contains("host0"), "{nix}");
    let text = r["nix_file"].as_str().unwrap();
    let host = eval_in_module(
        text,
        "{ config = { }; lib = { mkForce = v: v; mkDefault = v: v; }; pkgs = { }; }",
        "(m.nixos.containers.instances.worker-b.system-config { }).networking.hostName",
    );
    assert_eq!(host, "\"worker-b\"");
}

/// Issue 9 (observed): `guest-files-not-rewritten` was emitted even when the imported guest
/// file contained nothing to rewrite. Now: a clean file is only checked; files that need the
/// guest rules are copied, rewritten, next to the output (the originals untouched) and imported
/// instead; only a file that cannot be read is left to a human.
#[test]
fn imported_guest_files_are_checked_with_the_guest_rules() {
    if !have_tool("nix-instantiate", "nix-bin") {
        return;
    }
    let r = report("guest-imports.nix");
    let clean = container(&r, "clean");
    assert!(needs_human(clean).is_empty(), "{:#}", clean["warnings"]);
    assert!(clean.get("guest_files").is_none());
    let dirty = container(&r, "dirty");
    let guest = fixture("guest");
    let at = |f: &str| guest.join(f).display().to_string();
    // Only the missing file needs a human.
    let w = warning(dirty, "guest-files-not-rewritten").unwrap();
    let msg = w["message"].as_str().unwrap();
    assert!(
        msg.contains(&format!("{} (no such file)", at("missing.nix"))),
        "{msg}"
    );
    assert!(!msg.contains(&at("dirty.nix")), "{msg}");
    // The two files that need the rules (one imported by the other) are copied, rewritten.
    let copied = warning(dirty, "guest-files-copied").unwrap();
    let msg = copied["message"].as_str().unwrap();
    assert!(msg.contains("line 6: `eth0` → `host0`"), "{msg}");
    assert!(
        msg.contains("line 5: remove `networking.useHostResolvConf"),
        "{msg}"
    );
    let copy_of = |f: &str| format!("/etc/nixos/nspawn-guests/dirty{}", at(f));
    let files = dirty["guest_files"].as_object().unwrap();
    let d = files[&copy_of("dirty.nix")].as_str().unwrap();
    assert!(d.contains("interfaces.host0.allowedTCPPorts"), "{d}");
    assert!(!d.contains("useHostResolvConf ="), "{d}");
    assert!(d.contains("./dirty-net.nix"), "{d}");
    let n = files[&copy_of("dirty-net.nix")].as_str().unwrap();
    assert!(n.contains("interfaces.host0.ipv4"), "{n}");
    assert!(!files.contains_key(&copy_of("clean.nix")));
    // The new system-config imports the copy; the plan writes it.
    let nix = dirty["nix"].as_str().unwrap();
    assert!(nix.contains("./nspawn-guests/dirty/"), "{nix}");
    let steps: Vec<&str> = dirty["plan"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["step"].as_str().unwrap())
        .collect();
    assert_eq!(
        steps.iter().filter(|s| **s == "write-guest-file").count(),
        2
    );
    // Carried out: the copies are written under the root, byte for byte as previewed, and
    // the originals are untouched.
    let root = tempfile::tempdir().unwrap();
    let before = std::fs::read(guest.join("dirty.nix")).unwrap();
    let out = nixos_nspawn(
        root.path(),
        &[
            "migrate",
            "--yes",
            "--json",
            "--config",
            fixture("guest-imports.nix").to_str().unwrap(),
        ],
    );
    let _ = json(&out);
    let copy = root
        .path()
        .join(copy_of("dirty.nix").trim_start_matches('/'));
    assert_eq!(std::fs::read_to_string(copy).unwrap(), d);
    assert_eq!(std::fs::read(guest.join("dirty.nix")).unwrap(), before);
    let host = root.path().join("etc/nixos/nspawn-containers.nix");
    parses(&std::fs::read_to_string(host).unwrap()).unwrap();
}

/// Guest files outside the configuration directory are not read (the tree is the directory
/// of the file given with `--config`).
#[test]
fn guest_files_outside_the_configuration_tree_are_not_read() {
    let dir = tempfile::tempdir().unwrap();
    let conf_dir = dir.path().join("conf");
    std::fs::create_dir_all(&conf_dir).unwrap();
    std::fs::write(
        dir.path().join("outside.nix"),
        "{ networking.interfaces.eth0.useDHCP = true; }\n",
    )
    .unwrap();
    let conf = conf_dir.join("configuration.nix");
    std::fs::write(
        &conf,
        "{ containers.x = { privateNetwork = true; hostBridge = \"br0\"; config = { imports = [ ../outside.nix ]; }; }; }\n",
    )
    .unwrap();
    let root = tempfile::tempdir().unwrap();
    let out = nixos_nspawn(
        root.path(),
        &[
            "migrate",
            "--dry-run",
            "--json",
            "--config",
            conf.to_str().unwrap(),
        ],
    );
    let r = json(&out);
    let x = container(&r, "x");
    let msg = warning(x, "guest-files-not-rewritten").unwrap()["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(msg.contains("outside the configuration directory"), "{msg}");
}

/// Every host tree among the fixtures (`fixtures/nix/*`, `fixtures/hosts/*/root`), read from
/// a copy: what is emitted parses and resolves.
#[test]
fn every_fixture_host_tree_emits_nix_that_parses() {
    if !have_tool("nix-instantiate", "nix-bin") {
        return;
    }
    let mut trees: Vec<PathBuf> = Vec::new();
    for (base, sub) in [("fixtures/nix", ""), ("fixtures/hosts", "root")] {
        for entry in std::fs::read_dir(repo().join(base)).unwrap() {
            let p = entry.unwrap().path().join(sub);
            if p.join("etc").is_dir() {
                trees.push(p);
            }
        }
    }
    assert!(trees.len() >= 10, "{trees:?}");
    for tree in trees {
        let copy = tempfile::tempdir().unwrap();
        let st = Command::new("cp")
            .arg("-a")
            .arg(format!("{}/.", tree.display()))
            .arg(copy.path())
            .status()
            .unwrap();
        assert!(st.success());
        let out = nixos_nspawn(copy.path(), &["migrate", "--dry-run", "--json"]);
        let r = json(&out);
        if let Some(text) = r["nix_file"].as_str()
            && let Err(e) = parses(text)
        {
            panic!(
                "{}: the emitted Nix does not parse:\n{text}\n{e}",
                tree.display()
            );
        }
    }
}

/// Issue 9 (measured): bind mounts whose paths are Nix code (a secret's path, a module argument
/// through a `let`) needed a human; the module takes them as they are, so they are copied as
/// Nix, with their bindings, and evaluate in the host configuration to the same paths.
#[test]
fn computed_bind_mounts_are_copied_as_nix() {
    if !have_tool("nix-instantiate", "nix-bin") {
        return;
    }
    let r = report("bind-expressions.nix");
    let vault = container(&r, "vault");
    assert!(needs_human(vault).is_empty(), "{:#}", vault["warnings"]);
    let copied = warning(vault, "bind-mounts-copied-as-nix").unwrap();
    assert!(
        copied["message"]
            .as_str()
            .unwrap()
            .contains("RequiresMountsFor="),
        "{copied:#}"
    );
    let text = r["nix_file"].as_str().unwrap();
    parses(text).unwrap();
    assert!(
        text.contains("config.sops.secrets.vault-token.path"),
        "{text}"
    );
    // The module's own merge, as the host configuration would apply it; `--bind=/dev/fuse`
    // (read-write, same path) merges in beside the copied expression.
    let args = "{ config = { sops.secrets.vault-token.path = \"/run/secrets-host/vault-token\"; }; \
                lib = { mkMerge = builtins.foldl' (a: b: a // b) { }; mkIf = c: v: v; }; \
                pkgs = { }; dataRoot = \"/srv\"; }";
    let binds = eval_in_module(
        text,
        args,
        "builtins.mapAttrs (n: b: [ b.hostPath (b.isReadOnly or true) ]) \
         m.nixos.containers.instances.vault.bindMounts",
    );
    assert_eq!(
        binds,
        "{ \"/dev/fuse\" = [ null false ]; \"/run/secrets/token\" = \
         [ \"/run/secrets-host/vault-token\" true ]; \"/var/lib/vault\" = [ \"/srv/vault/state\" false ]; }"
    );
}

/// Issue 9: a bridge computed from the host's options is carried as Nix; a guest gateway
/// without interface gets the container's only link, in the config and in the guest file it
/// imports (copied, rewritten); with two links it needs a human, naming both; a missing
/// imported directory is named with the reason.
#[test]
fn computed_bridges_and_bare_gateways() {
    if !have_tool("nix-instantiate", "nix-bin") {
        return;
    }
    let r = report("gateway-bridge.nix");
    assert_eq!(names(&r), ["multi", "web"]);
    let web = container(&r, "web");
    assert_eq!(
        needs_human(web),
        ["guest-files-not-rewritten"],
        "{:#}",
        web["warnings"]
    );
    let absent = fixture("gateway/absent").display().to_string();
    let msg = warning(web, "guest-files-not-rewritten").unwrap()["message"]
        .as_str()
        .unwrap();
    assert!(
        msg.contains(&format!("{absent} (no such file or directory)")),
        "{msg}"
    );
    let nix = web["nix"].as_str().unwrap();
    assert!(nix.contains("lab = config.lab.network;"), "{nix}");
    assert!(nix.contains("lab.bridge"), "{nix}");
    assert!(
        nix.contains("lib.mkForce {") && nix.contains("address = \"fd09::1\";"),
        "{nix}"
    );
    assert!(warning(web, "host-bridge-copied-as-nix").is_some());
    let added = warning(web, "guest-gateway-interface-added").unwrap()["message"]
        .as_str()
        .unwrap();
    let net = fixture("gateway/net.nix").display().to_string();
    assert!(added.contains(&format!("{net}:5:")), "{added}");
    let files = web["guest_files"].as_object().unwrap();
    let copy = files[&format!("/etc/nixos/nspawn-guests/web{net}")]
        .as_str()
        .unwrap();
    assert!(
        copy.contains(
            r#"networking.defaultGateway = { address = "10.9.0.1"; interface = "host0"; };"#
        ),
        "{copy}"
    );
    let multi = container(&r, "multi");
    assert_eq!(needs_human(multi), ["guest-gateway-without-interface"]);
    let m = warning(multi, "guest-gateway-without-interface").unwrap()["message"]
        .as_str()
        .unwrap();
    assert!(m.contains("several links (host0, mv-eth1)"), "{m}");
    parses(r["nix_file"].as_str().unwrap()).unwrap();
    parses(copy).unwrap();
}
