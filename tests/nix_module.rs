//! The NixOS module in `nixos/`, driven through the real `nix-instantiate` and checked with the
//! real systemd programs.
//!
//! - every `.nix` file of the repository parses (`nix-instantiate --parse`);
//! - `nixos/tests/render.nix` evaluates the module against its stub host for the RFC 0108
//!   examples and the failing-assertion cases (needs `NIXPKGS_LIB`, nixpkgs' `lib/` directory;
//!   without it these tests print "skipped: set NIXPKGS_LIB" and pass);
//! - the rendered `.nspawn` files go through systemd-nspawn's own parser, the drop-ins through
//!   `systemd-analyze verify`, the networkd units through a real systemd-networkd in a private
//!   network namespace, the ExecStartPre script runs against a fake machine directory;
//! - the reload/restart decision `switch-to-configuration` makes from the drop-ins is checked
//!   per activation strategy (the rules are ported from nixpkgs' switch-to-configuration-ng).
//!
//! With `NIXOS_NSPAWN_REQUIRE_REAL_TOOLS=1` a missing tool (or not being root where root is
//! needed) is a failure instead of a skip.

mod util;

use serde_json::Value;
use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use util::{is_root, nixpkgs_lib, repo};

fn require_real_tools() -> bool {
    std::env::var("NIXOS_NSPAWN_REQUIRE_REAL_TOOLS").as_deref() == Ok("1")
}

fn find_tool(name: &str) -> Option<PathBuf> {
    let candidates = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/lib/systemd")]);
    for dir in candidates {
        let p = dir.join(name);
        if p.is_file() {
            return Some(p);
        }
    }
    None
}

/// The tool, or `None` after printing why the test is skipped (a failure when real tools are
/// required).
fn tool(name: &str) -> Option<PathBuf> {
    match find_tool(name) {
        Some(p) => Some(p),
        None if require_real_tools() => {
            panic!("{name} not found and NIXOS_NSPAWN_REQUIRE_REAL_TOOLS=1")
        }
        None => {
            eprintln!("skipped: {name} not found");
            None
        }
    }
}

fn root_or_skip(what: &str) -> bool {
    if is_root() {
        return true;
    }
    if require_real_tools() {
        panic!("{what} needs root and NIXOS_NSPAWN_REQUIRE_REAL_TOOLS=1");
    }
    eprintln!("skipped: {what} needs root");
    false
}

/// Evaluate nixos/tests/render.nix for a configuration file.
fn render(lib: &str, configuration: &Path) -> Value {
    let out = Command::new("nix-instantiate")
        .args(["--eval", "--strict", "--json"])
        .arg(repo().join("nixos/tests/render.nix"))
        .args(["--arg", "nixpkgsLib", lib])
        .arg("--arg")
        .arg("configuration")
        .arg(configuration)
        .env("NIXPKGS_LIB", lib)
        .output()
        .expect("run nix-instantiate");
    assert!(
        out.status.success(),
        "render.nix failed for {}:\n{}",
        configuration.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("render.nix prints JSON")
}

fn case(name: &str) -> PathBuf {
    repo().join("nixos/tests/cases").join(format!("{name}.nix"))
}

fn text<'a>(v: &'a Value, path: &[&str]) -> &'a str {
    let mut cur = v;
    for p in path {
        cur = cur
            .get(*p)
            .unwrap_or_else(|| panic!("no {} in {}", path.join("."), v));
    }
    cur.as_str()
        .unwrap_or_else(|| panic!("{} is not a string", path.join(".")))
}

fn assertions(v: &Value) -> Vec<String> {
    v["assertions"]
        .as_array()
        .expect("assertions list")
        .iter()
        .map(|m| m.as_str().expect("message").to_string())
        .collect()
}

/// Replace the fake toplevel store path, which is a hash, by a marker.
fn without_toplevel(nspawn: &str) -> String {
    nspawn
        .lines()
        .map(|l| {
            if l.starts_with("Parameters=/nix/store/") && l.ends_with("/init") {
                "Parameters=@toplevel@/init".to_string()
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

// ---------------------------------------------------------------------------------------------
// Parsing

#[test]
fn every_nix_file_parses() {
    let Some(nix) = tool("nix-instantiate") else {
        return;
    };
    let mut files = Vec::new();
    let mut stack = vec![repo()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("read dir") {
            let entry = entry.expect("dir entry");
            let path = entry.path();
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if entry.file_type().expect("file type").is_dir() {
                if !matches!(name.as_ref(), "target" | ".git" | "nixpkgs-lib" | "fuzz") {
                    stack.push(path);
                }
            } else if name.ends_with(".nix") && entry.file_type().expect("file type").is_file() {
                // Symlinks are left out: fixture rootfs trees plant links that escape on purpose.
                files.push(path);
            }
        }
    }
    files.sort();
    assert!(
        files.len() >= 20,
        "expected the module, its tests and flake.nix, found {files:?}"
    );
    // Fixtures that are invalid on purpose (the reader must refuse them): they must keep failing.
    const INVALID_ON_PURPOSE: &[&str] = &["fixtures/nix/broken/etc/nixos/broken.nix"];
    for f in &files {
        let out = Command::new(&nix)
            .arg("--parse")
            .arg(f)
            .output()
            .expect("run nix-instantiate --parse");
        let rel = f.strip_prefix(repo()).unwrap_or(f);
        if INVALID_ON_PURPOSE.iter().any(|p| rel == Path::new(p)) {
            assert!(!out.status.success(), "{} should not parse", f.display());
            continue;
        }
        assert!(
            out.status.success(),
            "{} does not parse:\n{}",
            f.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Rendering (RFC 0108 examples)

#[test]
fn default_network_renders_rfc_defaults() {
    let Some(lib) = nixpkgs_lib() else { return };
    let v = render(&lib, &case("default-network"));
    assert_eq!(assertions(&v), Vec::<String>::new());
    assert_eq!(
        without_toplevel(text(&v, &["nspawn", "demo"])),
        "[Exec]\nBoot=no\nKillSignal=SIGRTMIN+3\nNotifyReady=yes\nParameters=@toplevel@/init\n\
         PrivateUsers=no\n\n\n[Files]\n\
         Bind=/nix/var/nix/profiles/per-nspawn/demo:/nix/var/nix/profiles\n\
         Bind=/nix/var/nix/gcroots/per-nspawn/demo:/nix/var/nix/gcroots\n\
         BindReadOnly=/nix/store\nBindReadOnly=/nix/var/nix/db\n\
         BindReadOnly=/nix/var/nix/daemon-socket\n\n\n[Network]\nPrivate=yes\nVirtualEthernet=yes\n\n"
    );
    // The toplevel is the evaluated container system's.
    let toplevel = text(&v, &["toplevel", "demo"]);
    assert!(text(&v, &["nspawn", "demo"]).contains(&format!("Parameters={toplevel}/init\n")));
    assert_eq!(
        text(&v, &["network", "20-ve-demo.network"]),
        "[Match]\nName=ve-demo\n\n[Network]\nAddress=0.0.0.0/28\nAddress=::/64\nDHCPServer=yes\n\
         IPMasquerade=both\nIPv6SendRA=yes\nLinkLocalAddressing=yes\n\n"
    );
    assert_eq!(
        text(&v, &["guest", "demo", "40-host0.network"]),
        "[Match]\nName=host0\n\n[Network]\nDHCP=yes\n\n"
    );
    let g = &v["guestSettings"]["demo"];
    assert_eq!(g["isContainer"], true);
    assert_eq!(g["isNspawnContainer"], true);
    assert_eq!(g["useNetworkd"], true);
    assert_eq!(g["useHostResolvConf"], false);
    assert_eq!(g["hostName"], "demo");
    let dropin = text(&v, &["dropins", "demo"]);
    for line in [
        "WantedBy=machines.target",
        "X-Reload-Triggers=/nix/store/",
        "X-Restart-Triggers=/nix/store/",
        "ExecReload=/nix/store/",
        "ExecStartPre=/nix/store/",
    ] {
        assert!(dropin.contains(line), "{line} missing in\n{dropin}");
    }
    let reload = text(&v, &["scripts", "demo", "reload"]);
    assert!(reload.contains("systemd-run --machine=demo --pipe --wait"));
    assert!(reload.contains("\"$toplevel/bin/switch-to-configuration\" test"));
    assert!(
        !reload.contains(toplevel),
        "the reload script must not name the system"
    );
}

#[test]
fn zone_renders_bridge_and_members() {
    let Some(lib) = nixpkgs_lib() else { return };
    let v = render(&lib, &case("zone"));
    assert_eq!(assertions(&v), Vec::<String>::new());
    for m in ["test1", "test2"] {
        let n = text(&v, &["nspawn", m]);
        assert!(
            n.contains("\n[Network]\nPrivate=yes\nVirtualEthernet=yes\nZone=demo\n"),
            "{n}"
        );
        assert_eq!(
            text(&v, &["guest", m, "40-host0.network"]),
            "[Match]\nName=host0\n\n[Network]\nDHCP=yes\n\n"
        );
    }
    assert_eq!(
        text(&v, &["network", "20-vz-demo.netdev"]),
        "[NetDev]\nKind=bridge\nName=vz-demo\n\n"
    );
    assert_eq!(
        text(&v, &["network", "20-vz-demo.network"]),
        "[Match]\nName=vz-demo\n\n[Network]\nAddress=0.0.0.0/24\nAddress=::/64\n\
         ConfigureWithoutCarrier=yes\nDHCPServer=yes\nIPMasquerade=both\nIPv6SendRA=yes\n\
         LinkLocalAddressing=yes\n\n"
    );
    assert!(v["network"].get("20-ve-test1.network").is_none());
}

#[test]
fn static_pools_render_addresses_and_gateways() {
    let Some(lib) = nixpkgs_lib() else { return };
    let v = render(&lib, &case("static"));
    assert_eq!(assertions(&v), Vec::<String>::new());
    assert_eq!(
        text(&v, &["network", "20-ve-legacy.network"]),
        "[Match]\nName=ve-legacy\n\n[Network]\nAddress=10.231.136.1/30\nAddress=fc00::1/64\n\
         IPMasquerade=both\n\n"
    );
    assert_eq!(
        text(&v, &["guest", "legacy", "40-host0.network"]),
        "[Match]\nName=host0\n\n[Network]\nAddress=10.231.136.2/30\nAddress=fc00::2/64\n\
         Gateway=10.231.136.1\nGateway=fc00::1\n\n"
    );
    // The RFC's example has no host address: rendered as specified, with a warning.
    assert_eq!(
        text(&v, &["guest", "static", "40-host0.network"]),
        "[Match]\nName=host0\n\n[Network]\nAddress=10.237.1.3/16\n\
         Address=2a01:4f9:4b:1659:3aa3:cafe::3/96\n\n"
    );
    let warnings = v["warnings"].as_array().expect("warnings");
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0]
            .as_str()
            .unwrap_or("")
            .starts_with("nixos.containers.instances.static:")
    );
}

#[test]
fn ports_binds_userns_and_raw_keys_merge() {
    let Some(lib) = nixpkgs_lib() else { return };
    let v = render(&lib, &case("ports-binds"));
    assert_eq!(assertions(&v), Vec::<String>::new());
    assert_eq!(
        without_toplevel(text(&v, &["nspawn", "web"])),
        "[Exec]\nBoot=no\nCapability=CAP_NET_ADMIN\nEphemeral=yes\nKillSignal=SIGRTMIN+3\n\
         NotifyReady=yes\nParameters=@toplevel@/init\nPrivateUsers=pick\n\n\n[Files]\n\
         Bind=/nix/var/nix/profiles/per-nspawn/web:/nix/var/nix/profiles:idmap\n\
         Bind=/nix/var/nix/gcroots/per-nspawn/web:/nix/var/nix/gcroots:idmap\n\
         Bind=/data/web:/srv/data\n\
         BindReadOnly=/nix/store:/nix/store:idmap\n\
         BindReadOnly=/nix/var/nix/db:/nix/var/nix/db:idmap\n\
         BindReadOnly=/nix/var/nix/daemon-socket:/nix/var/nix/daemon-socket:idmap\n\
         BindReadOnly=/etc/ssl/certs\nBindReadOnly=/cache:/var/cache/x:norbind\n\
         PrivateUsersOwnership=auto\n\n\n[Network]\nMACVLAN=eth1\nPort=tcp:8080:80\n\
         Port=udp:5353:5353\nPrivate=yes\nVirtualEthernet=yes\n\n"
    );
    let dropin = text(&v, &["dropins", "web"]);
    for line in [
        "After=network-online.target\n",
        "DeviceAllow=/dev/fuse rwm\n",
        "TimeoutStartSec=3min\n",
        "ExecStart=\n",
        "--settings=override --machine=%i --load-credential=db:/run/keys/db\n",
    ] {
        assert!(dropin.contains(line), "{line:?} missing in\n{dropin}");
    }
    let warnings = v["warnings"].as_array().expect("warnings");
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0]
            .as_str()
            .unwrap_or("")
            .starts_with("nixos.containers.instances.web: /srv/data: read-write bind mount"),
        "{warnings:?}"
    );
    // autoStart = false: not wanted by machines.target. restart strategy: no reload trigger.
    assert!(!dropin.contains("WantedBy="), "{dropin}");
    assert!(!dropin.contains("X-Reload-Triggers="), "{dropin}");
    assert!(dropin.contains("X-Restart-Triggers="), "{dropin}");
}

#[test]
fn bridge_and_macvlan_render_no_host_units() {
    let Some(lib) = nixpkgs_lib() else { return };
    let v = render(&lib, &case("bridge-macvlan"));
    assert_eq!(assertions(&v), Vec::<String>::new());
    assert_eq!(
        v["network"],
        serde_json::json!({}),
        "no host-side unit for either"
    );
    let n = text(&v, &["nspawn", "onbr"]);
    assert!(
        n.ends_with("[Network]\nBridge=br0\nPrivate=yes\nVirtualEthernet=yes\n\n"),
        "{n}"
    );
    assert_eq!(
        text(&v, &["guest", "onbr", "40-host0.network"]),
        "[Match]\nName=host0\n\n[Network]\nAddress=192.168.1.50/24\nGateway=192.168.1.1\n\n"
    );
    let n = text(&v, &["nspawn", "vlandemo"]);
    assert!(
        n.ends_with("[Network]\nMACVLAN=eth1\nPrivate=yes\nVirtualEthernet=no\n\n"),
        "{n}"
    );
    // No host0 unit, but the container's own units and networkd.
    assert_eq!(
        text(&v, &["guest", "vlandemo", "10-mv-eth1.network"]),
        "[Match]\nName=mv-eth1\n\n[Network]\nAddress=192.168.2.5/24\n\n"
    );
    assert!(v["guest"]["vlandemo"].get("40-host0.network").is_none());
    assert_eq!(v["guestSettings"]["vlandemo"]["useNetworkd"], true);
}

#[test]
fn host_network_needs_no_networkd() {
    let Some(lib) = nixpkgs_lib() else { return };
    let v = render(&lib, &case("hostnet"));
    assert_eq!(assertions(&v), Vec::<String>::new());
    let n = text(&v, &["nspawn", "plain"]);
    assert!(
        n.ends_with("[Network]\nPrivate=no\nVirtualEthernet=no\n\n"),
        "{n}"
    );
    assert_eq!(v["network"], serde_json::json!({}));
    assert_eq!(v["guest"]["plain"], serde_json::json!({}));
    assert_eq!(v["guestSettings"]["plain"]["useNetworkd"], false);
    let dropin = text(&v, &["dropins", "plain"]);
    assert!(dropin.contains("X-RestartIfChanged=false\n"), "{dropin}");
    assert!(!dropin.contains("Triggers="), "{dropin}");
}

#[test]
fn every_assertion_fires_with_numbered_ways_out() {
    let Some(lib) = nixpkgs_lib() else { return };
    let v = render(&lib, &case("bad"));
    let msgs = assertions(&v);
    let expect = [
        "invalid container name(s): bad name.",
        "invalid zone name(s): a-much-too-long-zone.",
        "a uses zone \"nowhere\", which is not declared",
        "static addresses collide: 10.1.0.2 (containerPool of a and of b), 10.1.0.2 (containerPool of a, hostAddresses of c), 10.1.0.2 (containerPool of b, hostAddresses of c)",
        "need systemd-networkd on the host",
        "Container name(s) old are declared both in the legacy `containers`",
        "mv: network.veth = false cannot be",
        "hp: forwardPorts need a private",
        "\"mymachines\" is missing from system.nssDatabases.hosts",
    ];
    assert_eq!(msgs.len(), expect.len(), "{msgs:#?}");
    for (m, e) in msgs.iter().zip(expect) {
        assert!(m.contains(e), "expected {e:?} in\n{m}");
        assert!(
            m.contains("Ways out:\n  1. "),
            "no numbered ways out in\n{m}"
        );
        assert!(m.contains("\n  2. "), "only one way out in\n{m}");
    }
}

#[test]
fn every_option_has_description_example_and_default() {
    let Some(lib) = nixpkgs_lib() else { return };
    let out = Command::new("nix-instantiate")
        .args(["--eval", "--strict", "--json"])
        .arg(repo().join("nixos/tests/option-docs.nix"))
        .args(["--arg", "nixpkgsLib", &lib])
        .env("NIXPKGS_LIB", &lib)
        .output()
        .expect("run nix-instantiate");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(v["problems"], serde_json::json!([]));
    // instances.<name>.*, zones.<zone>.*, instances and zones themselves.
    assert!(v["count"].as_u64().unwrap_or(0) >= 30, "{v}");
}

// ---------------------------------------------------------------------------------------------
// Real systemd programs

fn all_cases(lib: &str) -> Vec<(String, Value)> {
    [
        "default-network",
        "zone",
        "static",
        "ports-binds",
        "hostnet",
        "bridge-macvlan",
    ]
    .iter()
    .map(|c| (c.to_string(), render(lib, &case(c))))
    .collect()
}

#[test]
fn nspawn_files_pass_the_real_parser() {
    let Some(lib) = nixpkgs_lib() else { return };
    let Some(nspawn) = tool("systemd-nspawn") else {
        return;
    };
    if !root_or_skip("systemd-nspawn") {
        return;
    }
    let mut checked = 0;
    for (c, v) in all_cases(&lib) {
        for (name, body) in v["nspawn"].as_object().expect("nspawn map") {
            let body = body.as_str().expect("text");
            let t = tempfile::tempdir().expect("tempdir");
            let file = t.path().join(format!("{name}.nspawn"));
            std::fs::write(&file, body).expect("write .nspawn");
            // Parse-only: nspawn reads the settings before it checks the (missing) tree.
            let out = Command::new("timeout")
                .arg("20")
                .arg(&nspawn)
                .args(["--register=no", "-q", "--settings=trusted", "-D"])
                .arg(t.path().join(name))
                .arg("/bin/true")
                .stdin(Stdio::null())
                .output()
                .expect("run systemd-nspawn");
            let stderr = String::from_utf8_lossy(&out.stderr);
            let prefix = format!("{}:", file.display());
            let complaints: Vec<&str> = stderr.lines().filter(|l| l.starts_with(&prefix)).collect();
            assert!(
                complaints.is_empty(),
                "{c}: systemd-nspawn rejects parts of {name}.nspawn:\n{}\n--- file:\n{body}",
                complaints.join("\n")
            );
            // It got as far as the directory check, so the file was read.
            assert!(
                stderr.contains("No such file or directory")
                    || stderr.contains("doesn't look like"),
                "{c}: unexpected nspawn output for {name}: {stderr}"
            );
            checked += 1;
        }
    }
    assert_eq!(checked, 9);
}

/// Write a drop-in next to a copy of the stock template, with every fake store path moved
/// under the temp dir and every command in Exec*= lines created as an executable, then run
/// `systemd-analyze verify`. Returns stderr lines about our file.
fn verify_dropin(analyze: &Path, dropin: &str) -> Vec<String> {
    let t = tempfile::tempdir().expect("tempdir");
    let store = t.path().join("store");
    let text = dropin.replace("/nix/store/", &format!("{}/", store.display()));
    let unit_dir = t.path().join("units");
    let d = unit_dir.join("systemd-nspawn@foo.service.d");
    std::fs::create_dir_all(&d).expect("mkdir");
    std::fs::copy(
        "/lib/systemd/system/systemd-nspawn@.service",
        unit_dir.join("systemd-nspawn@.service"),
    )
    .expect("copy the stock systemd-nspawn@.service");
    std::fs::write(d.join("overrides.conf"), &text).expect("write drop-in");
    for line in text.lines() {
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        if !key.starts_with("Exec") {
            continue;
        }
        let cmd = value.trim_start_matches(['-', '@', '+', '!', ':']);
        let Some(exe) = cmd.split_whitespace().next() else {
            continue;
        };
        if exe.starts_with(&store.display().to_string()) {
            let p = Path::new(exe);
            std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
            let mut f = std::fs::File::create(p).expect("create exe");
            f.write_all(b"#!/bin/sh\nexit 0\n").expect("write exe");
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        }
    }
    let out = Command::new(analyze)
        .args(["verify", "--man=no"])
        .arg(unit_dir.join("systemd-nspawn@foo.service"))
        .env("SYSTEMD_UNIT_PATH", format!("{}:", unit_dir.display()))
        .output()
        .expect("run systemd-analyze");
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    let mut bad: Vec<String> = stderr
        .lines()
        .filter(|l| l.contains("overrides.conf") || l.contains("systemd-nspawn@foo.service"))
        .map(String::from)
        .collect();
    if !out.status.success() {
        bad.push(format!("exit status {}: {stderr}", out.status));
    }
    bad
}

#[test]
fn dropins_pass_systemd_analyze_verify() {
    let Some(lib) = nixpkgs_lib() else { return };
    let Some(analyze) = tool("systemd-analyze") else {
        return;
    };
    if !Path::new("/lib/systemd/system/systemd-nspawn@.service").exists() {
        if require_real_tools() {
            panic!("/lib/systemd/system/systemd-nspawn@.service missing");
        }
        eprintln!("skipped: no systemd-nspawn@.service");
        return;
    }
    // The check can find something: a bogus key is reported.
    let bogus = verify_dropin(&analyze, "[Service]\nBogusKey=1\n");
    assert!(bogus.iter().any(|l| l.contains("BogusKey")), "{bogus:?}");
    let mut checked = 0;
    for (c, v) in all_cases(&lib) {
        for (name, dropin) in v["dropins"].as_object().expect("dropins") {
            let dropin = dropin.as_str().expect("text");
            let bad = verify_dropin(&analyze, dropin);
            assert!(
                bad.is_empty(),
                "{c}: {name}: {bad:#?}\n--- drop-in:\n{dropin}"
            );
            checked += 1;
        }
    }
    assert_eq!(checked, 9);
}

#[test]
fn prestart_script_creates_the_machine_dir_without_following_symlinks() {
    let Some(lib) = nixpkgs_lib() else { return };
    let v = render(&lib, &case("default-network"));
    let script = text(&v, &["scripts", "demo", "preStart"]);
    let t = tempfile::tempdir().expect("tempdir");
    let base = t.path().display().to_string();
    // Run it against a copy of the layout under the temp dir.
    let script = script
        .replace("/var/lib/machines/", &format!("{base}/machines/"))
        .replace("/nix/var/nix/", &format!("{base}/nix/"));
    let outside = t.path().join("outside");
    std::fs::create_dir_all(t.path().join("machines/demo/etc")).expect("mkdir");
    // A migrated root: etc/os-release is an absolute symlink that dangles on the host.
    std::os::unix::fs::symlink(&outside, t.path().join("machines/demo/etc/os-release"))
        .expect("symlink");
    for _ in 0..2 {
        let st = Command::new("sh")
            .args(["-e", "-c", &script])
            .status()
            .expect("run sh");
        assert!(st.success());
    }
    assert!(!outside.exists(), "wrote through the symlink");
    assert!(
        std::fs::symlink_metadata(t.path().join("machines/demo/etc/os-release"))
            .expect("still there")
            .file_type()
            .is_symlink()
    );
    assert!(t.path().join("machines/demo/etc/machine-id").is_file());
    assert!(t.path().join("machines/demo/var").is_dir());
    assert!(t.path().join("nix/profiles/per-nspawn/demo").is_dir());
    assert!(t.path().join("nix/gcroots/per-nspawn/demo").is_dir());
    // First start of a new container: everything from nothing.
    std::fs::remove_dir_all(t.path().join("machines")).expect("rm");
    let st = Command::new("sh")
        .args(["-e", "-c", &script])
        .status()
        .expect("run sh");
    assert!(st.success());
    assert!(t.path().join("machines/demo/etc/os-release").is_file());
}

// ---------------------------------------------------------------------------------------------
// What switch-to-configuration does with the drop-ins

type UnitInfo = BTreeMap<String, BTreeMap<String, Vec<String>>>;

fn parse_ini(text: &str) -> UnitInfo {
    let mut info = UnitInfo::new();
    let mut section = String::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(s) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = s.to_string();
            continue;
        }
        if section == "Install" {
            continue;
        }
        if let Some((k, v)) = line.split_once('=') {
            info.entry(section.clone())
                .or_default()
                .entry(k.to_string())
                .or_default()
                .push(v.to_string());
        }
    }
    info
}

#[derive(Debug, PartialEq)]
enum Job {
    Nothing,
    Reload,
    Restart,
}

/// nixpkgs switch-to-configuration-ng: `compare_units` followed by `handle_modified_unit`
/// for an active service (only the parts that apply to a drop-in of ours: the [Unit] keys it
/// ignores, X-Reload-Triggers, X-ReloadIfChanged, X-RestartIfChanged).
fn switch_decision(old: &str, new: &str) -> Job {
    const IGNORED: &[&str] = &[
        "X-Reload-Triggers",
        "Description",
        "Documentation",
        "OnFailure",
        "OnSuccess",
        "OnFailureJobMode",
        "IgnoreOnIsolate",
        "StopWhenUnneeded",
        "RefuseManualStart",
        "RefuseManualStop",
        "AllowIsolate",
        "CollectMode",
        "SourcePath",
    ];
    let (a, b) = (parse_ini(old), parse_ini(new));
    let mut reload = false;
    let mut restart = false;
    let sections: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    for s in sections {
        let empty = BTreeMap::new();
        let (sa, sb) = (a.get(s).unwrap_or(&empty), b.get(s).unwrap_or(&empty));
        let keys: std::collections::BTreeSet<&String> = sa.keys().chain(sb.keys()).collect();
        for k in keys {
            if sa.get(k) == sb.get(k) {
                continue;
            }
            if s == "Unit" && k == "X-Reload-Triggers" {
                reload = true;
            } else if !(s == "Unit" && IGNORED.contains(&k.as_str())) {
                restart = true;
            }
        }
    }
    let flag = |key: &str| {
        b.get("Service")
            .and_then(|s| s.get(key))
            .and_then(|v| v.last())
            .map(|v| matches!(v.as_str(), "1" | "yes" | "true" | "on"))
    };
    if restart {
        if flag("X-ReloadIfChanged") == Some(true) {
            Job::Reload
        } else if flag("X-RestartIfChanged") == Some(false) {
            Job::Nothing
        } else {
            Job::Restart
        }
    } else if reload {
        Job::Reload
    } else {
        Job::Nothing
    }
}

fn strategy_config(dir: &Path, strategy: &str, motd: &str, bind: bool) -> PathBuf {
    let p = dir.join(format!("{strategy}-{motd}-{bind}.nix"));
    let binds = if bind {
        r#"bindMounts."/srv" = { hostPath = "/srv/c"; };"#
    } else {
        ""
    };
    std::fs::write(
        &p,
        format!(
            r#"{{
  networking.useNetworkd = true;
  nixos.containers.instances.c = {{
    network = {{ }};
    activation.strategy = "{strategy}";
    system-config.users.motd = "{motd}";
    {binds}
  }};
}}
"#
        ),
    )
    .expect("write config");
    p
}

#[test]
fn activation_strategies_give_the_switch_to_configuration_decisions() {
    let Some(lib) = nixpkgs_lib() else { return };
    let t = tempfile::tempdir().expect("tempdir");
    // (strategy, only the container system changed, a bind mount was added)
    let expected = [
        ("dynamic", Job::Reload, Job::Restart),
        ("reload", Job::Reload, Job::Reload),
        ("restart", Job::Restart, Job::Restart),
        ("none", Job::Nothing, Job::Nothing),
    ];
    for (strategy, on_system, on_bind) in expected {
        let dropin = |motd: &str, bind: bool| {
            let v = render(&lib, &strategy_config(t.path(), strategy, motd, bind));
            assert_eq!(assertions(&v), Vec::<String>::new());
            text(&v, &["dropins", "c"]).to_string()
        };
        let base = dropin("one", false);
        assert_eq!(switch_decision(&base, &base), Job::Nothing);
        assert_eq!(
            switch_decision(&base, &dropin("two", false)),
            on_system,
            "{strategy}: container system changed"
        );
        assert_eq!(
            switch_decision(&base, &dropin("one", true)),
            on_bind,
            "{strategy}: bind mount added"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// systemd-networkd

/// Run the real systemd-networkd in a private mount and network namespace over the given
/// units (recipe: testing-with-real-systemd.md section 4); returns its log.
fn run_networkd(units: &BTreeMap<String, String>, setup: &str) -> Option<String> {
    let networkd = Path::new("/lib/systemd/systemd-networkd");
    if !networkd.exists() {
        if require_real_tools() {
            panic!("/lib/systemd/systemd-networkd missing");
        }
        eprintln!("skipped: /lib/systemd/systemd-networkd missing");
        return None;
    }
    let unshare = tool("unshare")?;
    let t = tempfile::tempdir().expect("tempdir");
    let cfg = t.path().join("network");
    let empty = t.path().join("empty");
    std::fs::create_dir_all(&cfg).expect("mkdir");
    std::fs::create_dir_all(&empty).expect("mkdir");
    for (name, body) in units {
        std::fs::write(cfg.join(name), body).expect("write unit");
    }
    let log = t.path().join("log");
    let script = format!(
        r#"set -e
mount -t sysfs -o ro sysfs /sys
mkdir -p /run/systemd/netif
mount -t tmpfs -o mode=0755 tmpfs /run/systemd/netif
chown systemd-network:systemd-network /run/systemd/netif 2>/dev/null || true
mount --bind {cfg} /etc/systemd/network
mount --bind {empty} /lib/systemd/network
if [ -d /run/systemd/network ]; then mount --bind {empty} /run/systemd/network; fi
ip link set lo up
{setup}
SYSTEMD_LOG_LEVEL=debug SYSTEMD_LOG_TARGET=console {networkd} >{log} 2>&1 &
P=$!
sleep 3
ip -br addr >>{log}
kill $P
wait $P || true
"#,
        cfg = cfg.display(),
        empty = empty.display(),
        networkd = networkd.display(),
        log = log.display(),
    );
    std::fs::create_dir_all("/etc/systemd/network").ok();
    let st = Command::new("timeout")
        .arg("30")
        .arg(&unshare)
        .args(["-m", "-n", "--propagation", "private", "sh", "-c", &script])
        .status()
        .expect("run unshare");
    assert!(st.success(), "networkd sandbox failed");
    Some(std::fs::read_to_string(&log).expect("read log"))
}

#[test]
fn networkd_units_pass_the_real_networkd() {
    let Some(lib) = nixpkgs_lib() else { return };
    if !root_or_skip("systemd-networkd in a namespace") {
        return;
    }
    let mut units = BTreeMap::new();
    for (c, v) in all_cases(&lib) {
        for (name, body) in v["network"].as_object().expect("network") {
            units.insert(name.clone(), body.as_str().expect("text").to_string());
        }
        for (inst, files) in v["guest"].as_object().expect("guest") {
            for (name, body) in files.as_object().expect("files") {
                // Guest units all match host0; keep them apart by file name.
                units.insert(
                    format!("{name}-{c}-{inst}.network").replace(".network-", "-"),
                    body.as_str().expect("text").to_string(),
                );
            }
        }
    }
    // Links the host-side units match: a veth standing in for ve-legacy (static) and the
    // zone bridge that networkd creates itself from 20-vz-demo.netdev.
    let setup = "ip link add ve-legacy type veth peer name host0\nip link set ve-legacy up\nip link set host0 up";
    let Some(log) = run_networkd(&units, setup) else {
        return;
    };
    let complaints: Vec<&str> = log
        .lines()
        .filter(|l| l.starts_with("/etc/systemd/network/"))
        .collect();
    assert!(
        complaints.is_empty(),
        "networkd complains:\n{}\n--- log:\n{log}",
        complaints.join("\n")
    );
    assert!(
        log.contains("vz-demo"),
        "the zone bridge was not created:\n{log}"
    );
    assert!(
        log.contains("10.231.136.1/30"),
        "ve-legacy not configured:\n{log}"
    );
}

// ---------------------------------------------------------------------------------------------
// Imperative containers: nixos/lib/eval-container.nix

fn eval_container(lib: &str, file: &Path, name: &str, attr: &str) -> Result<Value, String> {
    let out = Command::new("nix-instantiate")
        .args(["--eval", "--strict", "--json"])
        .arg(repo().join("nixos/lib/eval-container.nix"))
        .arg("--arg")
        .arg("file")
        .arg(file)
        .args(["--argstr", "name", name])
        .args(["--arg", "lib", &format!("import {lib}")])
        .args(["-A", attr])
        .env("NIXPKGS_LIB", lib)
        .output()
        .expect("run nix-instantiate");
    if out.status.success() {
        Ok(serde_json::from_slice(&out.stdout).expect("JSON"))
    } else {
        Err(String::from_utf8_lossy(&out.stderr).to_string())
    }
}

#[test]
fn imperative_container_renders_like_a_declarative_one() {
    let Some(lib) = nixpkgs_lib() else { return };
    let files = eval_container(&lib, &case("imperative"), "imperative", "files").expect("eval");
    let nspawn = text(&files, &["imperative.nspawn"]);
    assert!(
        nspawn.contains("\n[Network]\nPort=tcp:8080:80\nPrivate=yes\nVirtualEthernet=yes\n"),
        "{nspawn}"
    );
    // The same instance declared on a host renders the same files.
    let t = tempfile::tempdir().expect("tempdir");
    let decl = t.path().join("decl.nix");
    std::fs::write(
        &decl,
        format!(
            "{{ networking.useNetworkd = true; nixos.containers.instances.imperative = \
             (removeAttrs (import {}) [ \"nixpkgs\" ]) // {{ activation.strategy = \"restart\"; }}; }}",
            case("imperative").display()
        ),
    )
    .expect("write");
    let v = render(&lib, &decl);
    // (The fake system differs: the host passes its platform as an attribute set, the file
    // evaluation as a system string.)
    assert_eq!(
        without_toplevel(nspawn),
        without_toplevel(text(&v, &["nspawn", "imperative"]))
    );
    assert_eq!(
        text(&files, &["20-ve-imperative.network"]),
        text(&v, &["network", "20-ve-imperative.network"])
    );
    let data: Value = serde_json::from_str(text(&files, &["data.json"])).expect("data.json");
    assert_eq!(data["declarative"], false);
    assert_eq!(data["activation"]["strategy"], "restart");
    assert_eq!(data["forwardPorts"][0]["containerPort"], 80);
    assert!(nspawn.contains(&format!(
        "Parameters={}/init\n",
        data["toplevel"].as_str().expect("toplevel")
    )));
}

#[test]
fn imperative_container_errors_name_the_container_and_the_fix() {
    let Some(lib) = nixpkgs_lib() else { return };
    let t = tempfile::tempdir().expect("tempdir");
    let f = t.path().join("c.nix");
    std::fs::write(
        &f,
        format!(
            "{{ nixpkgs = {}; activation.strategy = \"dynamic\"; forwardPorts = [ {{ hostPort = 80; }} ]; }}",
            repo().join("nixos/tests/stub/fake-nixpkgs").display()
        ),
    )
    .expect("write");
    let err = eval_container(&lib, &f, "c1", "nspawn").expect_err("must fail");
    assert!(
        err.contains("container c1: forwardPorts need `network = { };`"),
        "{err}"
    );
    assert!(
        err.contains("container c1: activation.strategy \"dynamic\""),
        "{err}"
    );
    // A drop-in only when needed, and then a valid one.
    let no_dropin =
        eval_container(&lib, &case("imperative"), "imperative", "dropin").expect("eval");
    assert_eq!(no_dropin, serde_json::json!(""));
    let h = t.path().join("h.nix");
    std::fs::write(
        &h,
        format!(
            "{{ nixpkgs = {}; network = {{ }}; timeoutStartSec = \"5min\"; \
             credentials = [ {{ id = \"db\"; path = \"/run/keys/db\"; }} ]; }}",
            repo().join("nixos/tests/stub/fake-nixpkgs").display()
        ),
    )
    .expect("write");
    let dropin = eval_container(&lib, &h, "c3", "dropin").expect("eval");
    let dropin = dropin.as_str().expect("text");
    assert!(
        dropin.contains("--machine=%i --load-credential=db:/run/keys/db\n"),
        "{dropin}"
    );
    assert!(dropin.contains("TimeoutStartSec=5min\n"), "{dropin}");
    if let Some(analyze) = tool("systemd-analyze")
        && Path::new("/lib/systemd/system/systemd-nspawn@.service").exists()
    {
        let bad = verify_dropin(&analyze, dropin);
        assert!(bad.is_empty(), "{bad:#?}\n{dropin}");
    }
    let g = t.path().join("g.nix");
    std::fs::write(&g, "{ network = { }; }").expect("write");
    let err = eval_container(&lib, &g, "c2", "nspawn").expect_err("must fail");
    assert!(
        err.contains("container c2: set `nixpkgs = <nixpkgs>;`"),
        "{err}"
    );
}

/// A host and a container network namespace joined by a veth (`<host_if>` ↔ `host0`), each
/// with its own real systemd-networkd over the given units. Returns (host state, guest state):
/// `ip -br addr` and the routes, after networkd had `secs` seconds.
fn run_networkd_pair(
    host_units: &BTreeMap<String, String>,
    guest_units: &BTreeMap<String, String>,
    host_if: &str,
    secs: u32,
) -> Option<(String, String)> {
    let networkd = Path::new("/lib/systemd/systemd-networkd");
    if !networkd.exists() {
        if require_real_tools() {
            panic!("/lib/systemd/systemd-networkd missing");
        }
        eprintln!("skipped: /lib/systemd/systemd-networkd missing");
        return None;
    }
    tool("unshare")?;
    tool("nsenter")?;
    tool("ip")?;
    let t = tempfile::tempdir().expect("tempdir");
    let d = t.path().display().to_string();
    for (dir, units) in [("host", host_units), ("guest", guest_units)] {
        let p = t.path().join(dir);
        std::fs::create_dir_all(&p).expect("mkdir");
        for (name, body) in units {
            std::fs::write(p.join(name), body).expect("write unit");
        }
    }
    std::fs::create_dir_all(t.path().join("empty")).expect("mkdir");
    std::fs::write(
        t.path().join("side.sh"),
        format!(
            r#"set -e
mount -t sysfs -o ro sysfs /sys
mkdir -p /run/systemd/netif
mount -t tmpfs -o mode=0755 tmpfs /run/systemd/netif
chown systemd-network:systemd-network /run/systemd/netif 2>/dev/null || true
mount --bind {d}/$1 /etc/systemd/network
mount --bind {d}/empty /lib/systemd/network
if [ -d /run/systemd/network ]; then mount --bind {d}/empty /run/systemd/network; fi
ip link set lo up
SYSTEMD_LOG_TARGET=console /lib/systemd/systemd-networkd >{d}/$1.log 2>&1 &
P=$!
sleep {secs}
{{ ip -br addr; ip route; ip -6 route; }} >{d}/$1.state
kill $P
wait $P || true
"#
        ),
    )
    .expect("write script");
    let ns = format!("nixos-nspawn-test-{}-{host_if}", std::process::id());
    std::fs::write(
        t.path().join("outer.sh"),
        format!(
            r#"ip netns add {ns}h
ip netns add {ns}g
trap 'ip netns del {ns}h; ip netns del {ns}g' EXIT
ip -n {ns}h link add {host_if} type veth peer name host0 netns {ns}g
nsenter --net=/run/netns/{ns}g unshare -m --propagation private sh {d}/side.sh guest &
G=$!
nsenter --net=/run/netns/{ns}h unshare -m --propagation private sh {d}/side.sh host
wait $G
"#
        ),
    )
    .expect("write script");
    let st = Command::new("timeout")
        .arg(format!("{}", secs + 30))
        .arg("sh")
        .arg(t.path().join("outer.sh"))
        .status()
        .expect("run sh");
    assert!(st.success(), "networkd pair sandbox failed");
    let read = |f: &str| std::fs::read_to_string(t.path().join(f)).unwrap_or_default();
    for side in ["host", "guest"] {
        let log = read(&format!("{side}.log"));
        let complaints: Vec<&str> = log
            .lines()
            .filter(|l| l.starts_with("/etc/systemd/network/"))
            .collect();
        assert!(
            complaints.is_empty(),
            "{side} networkd complains:\n{}",
            complaints.join("\n")
        );
    }
    Some((read("host.state"), read("guest.state")))
}

fn units_of(v: &Value, path: &[&str]) -> BTreeMap<String, String> {
    let mut cur = v;
    for p in path {
        cur = &cur[*p];
    }
    cur.as_object()
        .expect("unit map")
        .iter()
        .map(|(k, b)| (k.clone(), b.as_str().expect("text").to_string()))
        .collect()
}

#[test]
fn default_network_gives_the_container_dhcp_and_a_route() {
    let Some(lib) = nixpkgs_lib() else { return };
    if !root_or_skip("systemd-networkd in namespaces") {
        return;
    }
    let v = render(&lib, &case("default-network"));
    let Some((host, guest)) = run_networkd_pair(
        &units_of(&v, &["network"]),
        &units_of(&v, &["guest", "demo"]),
        "ve-demo",
        8,
    ) else {
        return;
    };
    // ve-demo took a /28 from networkd's pool and serves DHCP; host0 got a lease in it and a
    // default route through the host.
    let host_v4: Vec<&str> = host
        .lines()
        .find(|l| l.starts_with("ve-demo"))
        .map(|l| {
            l.split_whitespace()
                .filter(|w| w.ends_with("/28"))
                .collect()
        })
        .unwrap_or_default();
    assert!(!host_v4.is_empty(), "no pool address on ve-demo:\n{host}");
    let guest_line = guest.lines().find(|l| l.starts_with("host0")).unwrap_or("");
    let lease = guest_line
        .split_whitespace()
        .find(|w| w.ends_with("/28"))
        .unwrap_or_else(|| panic!("no DHCP lease on host0:\n{guest}\n--- host:\n{host}"));
    let gw = guest
        .lines()
        .find_map(|l| l.strip_prefix("default via "))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("no default route in the container:\n{guest}"));
    assert!(
        host_v4.iter().any(|a| a.starts_with(&format!("{gw}/"))),
        "gateway {gw} (lease {lease}) is not the host's {host_v4:?}"
    );
}

#[test]
fn static_addresses_configure_both_sides() {
    let Some(lib) = nixpkgs_lib() else { return };
    if !root_or_skip("systemd-networkd in namespaces") {
        return;
    }
    let v = render(&lib, &case("static"));
    let mut host = units_of(&v, &["network"]);
    host.retain(|k, _| k == "20-ve-legacy.network");
    let Some((host, guest)) =
        run_networkd_pair(&host, &units_of(&v, &["guest", "legacy"]), "ve-legacy", 4)
    else {
        return;
    };
    assert!(
        host.contains("10.231.136.1/30") && host.contains("fc00::1/64"),
        "{host}"
    );
    assert!(
        guest.contains("10.231.136.2/30") && guest.contains("fc00::2/64"),
        "{guest}"
    );
    assert!(
        guest.contains("default via 10.231.136.1 dev host0"),
        "{guest}"
    );
    assert!(guest.contains("default via fc00::1 dev host0"), "{guest}");
}

// ---------------------------------------------------------------------------------------------
// A container started from a rendered .nspawn file

/// A tiny OS tree (nspawn refuses a directory without /usr).
fn busybox_root(dir: &Path, extra_dirs: &[&str]) -> bool {
    let busybox = Path::new("/bin/busybox");
    if !busybox.exists() {
        if require_real_tools() {
            panic!("/bin/busybox missing (apt-get install busybox-static)");
        }
        eprintln!("skipped: /bin/busybox missing");
        return false;
    }
    for d in [
        "bin", "usr/lib", "etc", "proc", "sys", "dev", "run", "tmp", "var",
    ]
    .iter()
    .chain(extra_dirs)
    {
        std::fs::create_dir_all(dir.join(d)).expect("mkdir");
    }
    std::fs::copy(busybox, dir.join("bin/busybox")).expect("copy busybox");
    for c in ["sh", "cat", "touch", "stat", "ip", "echo", "ls"] {
        std::os::unix::fs::symlink("busybox", dir.join("bin").join(c)).expect("symlink");
    }
    std::fs::write(dir.join("etc/os-release"), "ID=test\n").expect("write");
    std::fs::write(dir.join("etc/machine-id"), "").expect("write");
    true
}

#[test]
fn rendered_nspawn_file_runs_a_container() {
    let Some(lib) = nixpkgs_lib() else { return };
    let Some(nspawn) = tool("systemd-nspawn") else {
        return;
    };
    if !root_or_skip("systemd-nspawn") {
        return;
    }
    if !Path::new("/nix/store").is_dir() || !Path::new("/nix/var/nix/daemon-socket").is_dir() {
        if require_real_tools() {
            panic!("/nix/store and /nix/var/nix/daemon-socket are needed (Debian nix-bin)");
        }
        eprintln!("skipped: no /nix/store or /nix/var/nix/daemon-socket");
        return;
    }
    let t = tempfile::tempdir().expect("tempdir");
    let d = t.path();
    std::fs::create_dir_all(d.join("data-rw")).expect("mkdir");
    std::fs::create_dir_all(d.join("data-ro")).expect("mkdir");
    std::fs::write(d.join("data-ro/f"), "ro-content\n").expect("write");
    let cfg = d.join("c.nix");
    std::fs::write(
        &cfg,
        format!(
            r#"{{
  networking.useNetworkd = true;
  nixos.containers.instances.full = {{
    network = {{ }};
    forwardPorts = [ {{ hostPort = 8080; containerPort = 80; }} ];
    bindMounts."/mnt/rw" = {{ hostPath = "{d}/data-rw"; isReadOnly = false; options = "idmap"; }};
    bindMounts."/mnt/ro" = {{ hostPath = "{d}/data-ro"; }};
    privateUsers = {{ mode = "pick"; ownership = "map"; }};
    ephemeral = true;
  }};
}}
"#,
            d = d.display()
        ),
    )
    .expect("write config");
    let v = render(&lib, &cfg);
    assert_eq!(v["warnings"], serde_json::json!([]));
    let machines = d.join("machines");
    let root = machines.join("full");
    if !busybox_root(&root, &["mnt/rw", "mnt/ro"]) {
        return;
    }
    // Trusted settings next to the tree; the command given here replaces Parameters= (the
    // fake system does not exist), everything else comes from the rendered file.
    std::fs::write(machines.join("full.nspawn"), text(&v, &["nspawn", "full"])).expect("write");
    // The per-container profile dirs live on tmpfs in a private mount namespace, so the test
    // leaves the host's /nix/var/nix alone; the ExecStartPre script would create them.
    let inside = "cat /proc/self/uid_map; cat /nix/var/nix/profiles/marker; \
        touch /nix/var/nix/profiles/x && echo profile-rw; \
        touch /nix/store/x 2>/dev/null || echo store-ro; stat -c store-owner=%u /nix/store; \
        cat /mnt/ro/f; touch /mnt/ro/x 2>/dev/null || echo ro-ro; touch /mnt/rw/y && echo rw-ok; \
        touch /etc/ephemeral-marker; ip link";
    let script = format!(
        r#"set -e
mount -t tmpfs tmpfs /nix/var/nix/profiles
mount -t tmpfs tmpfs /nix/var/nix/gcroots
mkdir -p /nix/var/nix/profiles/per-nspawn/full /nix/var/nix/gcroots/per-nspawn/full
echo host-profile > /nix/var/nix/profiles/per-nspawn/full/marker
{nspawn} --register=no --keep-unit -q --settings=trusted -D {root} /bin/sh -c '{inside}' </dev/null
"#,
        nspawn = nspawn.display(),
        root = root.display(),
    );
    let out = Command::new("timeout")
        .arg("60")
        .args([
            "unshare",
            "-m",
            "-n",
            "--propagation",
            "private",
            "sh",
            "-c",
            &script,
        ])
        .stdin(Stdio::null())
        .output()
        .expect("run unshare");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "container failed:\n{stdout}\n{stderr}"
    );
    let uid_map = stdout.lines().next().unwrap_or("");
    assert!(
        uid_map.split_whitespace().take(2).collect::<Vec<_>>().len() == 2
            && uid_map.split_whitespace().next() == Some("0")
            && uid_map.split_whitespace().nth(1) != Some("0"),
        "PrivateUsers=pick gave no private range: {uid_map}"
    );
    for expect in [
        "host-profile",  // Bind= of the per-container profile dir
        "profile-rw",    // … writable through the idmapped mount
        "store-ro",      // BindReadOnly=/nix/store
        "store-owner=0", // idmapped: the store is root's inside
        "ro-content",    // BindReadOnly= of a user bind mount
        "ro-ro",         // … read-only
        "rw-ok",         // Bind= with options = "idmap"
        "host0",         // VirtualEthernet=yes
    ] {
        assert!(
            stdout.contains(expect),
            "{expect} missing:\n{stdout}\n{stderr}"
        );
    }
    assert!(
        !root.join("etc/ephemeral-marker").exists(),
        "Ephemeral=yes, but a change survived"
    );
    let y = std::fs::metadata(d.join("data-rw/y")).expect("file written through the bind");
    assert_eq!(
        std::os::unix::fs::MetadataExt::uid(&y),
        0,
        "idmapped write owned by host root"
    );
    assert!(
        !stderr.contains("full.nspawn:"),
        "settings complaints: {stderr}"
    );
}

/// The rendered `.nspawn` file and host-side networkd units together: systemd-nspawn creates
/// the container's link (veth `ve-<name>`, or `vb-<name>` in the zone bridge that networkd
/// created from our `.netdev`), networkd configures the host side from our `.network`, and a
/// DHCP client in the container gets a lease from it. Returns the client's output.
fn dhcp_through_rendered_units(v: &Value, machine: &str) -> Option<String> {
    let nspawn = tool("systemd-nspawn")?;
    tool("unshare")?;
    tool("nsenter")?;
    let networkd = Path::new("/lib/systemd/systemd-networkd");
    if !networkd.exists() {
        if require_real_tools() {
            panic!("/lib/systemd/systemd-networkd missing");
        }
        eprintln!("skipped: /lib/systemd/systemd-networkd missing");
        return None;
    }
    let t = tempfile::tempdir().expect("tempdir");
    let d = t.path();
    let host = d.join("host");
    std::fs::create_dir_all(&host).expect("mkdir");
    std::fs::create_dir_all(d.join("empty")).expect("mkdir");
    for (name, body) in units_of(v, &["network"]) {
        std::fs::write(host.join(name), body).expect("write unit");
    }
    let machines = d.join("machines");
    let root = machines.join(machine);
    if !busybox_root(&root, &[]) {
        return None;
    }
    for c in ["udhcpc", "true"] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(c)).expect("symlink");
    }
    std::fs::write(
        machines.join(format!("{machine}.nspawn")),
        text(v, &["nspawn", machine]),
    )
    .expect("write .nspawn");
    let dd = d.display();
    std::fs::write(
        d.join("networkd.sh"),
        format!(
            r#"set -e
mount -t sysfs -o ro sysfs /sys
mkdir -p /run/systemd/netif
mount -t tmpfs -o mode=0755 tmpfs /run/systemd/netif
chown systemd-network:systemd-network /run/systemd/netif 2>/dev/null || true
mount --bind {dd}/host /etc/systemd/network
mount --bind {dd}/empty /lib/systemd/network
if [ -d /run/systemd/network ]; then mount --bind {dd}/empty /run/systemd/network; fi
ip link set lo up
SYSTEMD_LOG_TARGET=console {networkd} >{dd}/networkd.log 2>&1 &
P=$!
while [ ! -e {dd}/done ]; do sleep 0.2; done
kill $P
wait $P || true
"#,
            networkd = networkd.display()
        ),
    )
    .expect("write script");
    std::fs::write(
        d.join("container.sh"),
        format!(
            r#"set -e
mount -t tmpfs tmpfs /nix/var/nix/profiles
mount -t tmpfs tmpfs /nix/var/nix/gcroots
mkdir -p /nix/var/nix/profiles/per-nspawn/{machine} /nix/var/nix/gcroots/per-nspawn/{machine}
sleep 2
{nspawn} --register=no --keep-unit -q --settings=trusted -D {root} \
  /bin/sh -c 'ip link set host0 up; udhcpc -i host0 -n -q -t 15 -s /bin/true 2>&1' </dev/null
"#,
            nspawn = nspawn.display(),
            root = root.display()
        ),
    )
    .expect("write script");
    let ns = format!("nixos-nspawn-test-{}-{machine}", std::process::id());
    let script = format!(
        r#"ip netns add {ns}
trap 'touch {dd}/done; ip netns del {ns}' EXIT
nsenter --net=/run/netns/{ns} unshare -m --propagation private sh {dd}/networkd.sh &
N=$!
nsenter --net=/run/netns/{ns} unshare -m --propagation private sh {dd}/container.sh
RC=$?
touch {dd}/done
wait $N
exit $RC
"#
    );
    let out = Command::new("timeout")
        .arg("90")
        .args(["sh", "-c", &script])
        .stdin(Stdio::null())
        .output()
        .expect("run sh");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let log = std::fs::read_to_string(d.join("networkd.log")).unwrap_or_default();
    assert!(
        out.status.success(),
        "container failed:\n{stdout}\n{}\n--- networkd:\n{log}",
        String::from_utf8_lossy(&out.stderr)
    );
    let complaints: Vec<&str> = log
        .lines()
        .filter(|l| l.starts_with("/etc/systemd/network/"))
        .collect();
    assert!(
        complaints.is_empty(),
        "networkd complains:\n{}",
        complaints.join("\n")
    );
    Some(stdout)
}

#[test]
fn container_gets_dhcp_from_the_rendered_veth_and_zone_units() {
    let Some(lib) = nixpkgs_lib() else { return };
    if !root_or_skip("systemd-nspawn and systemd-networkd") {
        return;
    }
    for (c, machine) in [("default-network", "demo"), ("zone", "test1")] {
        let v = render(&lib, &case(c));
        let Some(out) = dhcp_through_rendered_units(&v, machine) else {
            return;
        };
        assert!(
            out.lines()
                .any(|l| l.contains("lease of ") && l.contains(" obtained from ")),
            "{c}: no DHCP lease in the container:\n{out}"
        );
    }
}
