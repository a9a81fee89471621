//! Real-tool checks of everything the renderers emit, for a set of representative containers
//! plus every mapping row's example:
//! - each `.nspawn` preview through systemd-nspawn's own settings parser (parse-only recipe:
//!   adjacent file, `--settings=trusted`, `--register=no`; any `FILE:LINE:` line is a failure);
//! - every networkd unit (module-generated, host and guest extras) through systemd-networkd
//!   itself, run in private mount and network namespaces;
//! - every `systemd-nspawn@<name>.service` drop-in through `systemd-analyze verify` on top of
//!   the stock unit;
//! - every emitted Nix text (snippet, host file, imperative file) through
//!   `nix-instantiate --parse`.
//!
//! A missing tool prints "skipped: install X" and passes, unless
//! NIXOS_NSPAWN_REQUIRE_REAL_TOOLS=1, which turns the skip into a failure.

#![allow(clippy::unwrap_used)]

use nixos_nspawn::legacy::{Kind, LegacyContainer};
use nixos_nspawn::render::{networkd, nix, nspawn};
use nixos_nspawn::translate::example::example_container;
use nixos_nspawn::translate::mapping::MAPPINGS;
use nixos_nspawn::translate::{Context, Instance, NetworkdUnit, translate};
mod util;

use std::path::{Path, PathBuf};
use std::process::Command;
use util::{have_tool, networkd_parse_errors, nix_parse, nspawn_parse_errors};

fn ctx() -> Context {
    Context {
        output_file: PathBuf::from("/etc/nixos/nspawn-containers.nix"),
    }
}

/// Representative containers (beyond the per-row examples).
const REPRESENTATIVE: &[(&str, &str)] = &[
    (
        "host-network",
        r#"{ config = { pkgs, ... }: { services.nginx.enable = true; }; autoStart = true; }"#,
    ),
    (
        "p2p-full",
        r#"{ config = { lib, ... }: {
             networking.interfaces.eth0.useDHCP = true; # comment kept
             networking.useHostResolvConf = lib.mkForce false;
             networking.firewall.interfaces."eth0".allowedTCPPorts = [ 80 ];
           };
           privateNetwork = true; hostAddress = "10.233.1.1"; localAddress = "10.233.1.2";
           hostAddress6 = "fc00::1"; localAddress6 = "fc00::2"; autoStart = true;
           forwardPorts = [ { hostPort = 8080; containerPort = 80; } { protocol = "udp"; hostPort = 53; } ];
           enableTun = true; bindMounts."/data" = { hostPath = "/srv/data"; };
           bindMounts."/rw" = { hostPath = "/srv/rw"; isReadOnly = false; };
           extraVeths.web-ext = { hostAddress = "10.9.0.1"; localAddress = "10.9.0.2"; };
           extraVeths.web-br = { hostBridge = "br9"; localAddress = "10.8.0.2/24"; };
           interfaces = [ "br-lan" ]; timeoutStartSec = "5min"; }"#,
    ),
    (
        "bridge-userns",
        r#"{ config = ./guest.nix; privateNetwork = true; hostBridge = "br0"; localAddress = "192.168.1.20/24";
           hostAddress = "192.168.1.1"; privateUsers = "pick"; ephemeral = true; tmpfs = [ "/var/cache:mode=0755" ];
           allowedDevices = [ { node = "/dev/fuse"; modifier = "rwm"; } { node = "char-drm"; modifier = "rw"; } ];
           additionalCapabilities = [ "CAP_SYS_TIME" "CAP_NET_RAW\" --system-call-filter=\"@keyring" ];
           autoStart = true; restartIfChanged = false; }"#,
    ),
    (
        "macvlan-only",
        r#"{ config = { ... }: { networking.interfaces.mv-enp1s0.useDHCP = true; }; macvlans = [ "enp1s0" ];
           interfaces = [ "eth1" ]; privateUsers = 65536; copyResolvConf = false; }"#,
    ),
    (
        "flags",
        r#"{ config = { ... }: { }; privateNetwork = true; hostAddress = "10.1.0.1/24"; localAddress = "10.1.0.2/24";
           extraFlags = [ "-U" "--private-users-ownership=map" "--resolv-conf=bind-host" "--system-call-filter=@keyring @mount"
             "--drop-capability=CAP_MKNOD" "--bind=/srv/a:/a:idmap" "--bind-ro" "/srv/b:/b" "--tmpfs=/scratch"
             "--overlay=/srv/l:/srv/u:/opt" "--setenv=FOO=bar" "-E" "X=1" "--personality=x86-64" "--link-journal=host"
             "--hostname=flags.example" "--read-only" "--inaccessible=/secret" "--no-new-privileges=yes"
             "--oom-score-adjust=100" "--cpu-affinity=0" "--rlimit=RLIMIT_NOFILE=4096:8192" "--timezone=bind"
             "--network-zone=lab" "-p" "tcp:2222:22" "--network-macvlan=enp2s0" "--network-veth-extra=vx1:vx2"
             "--property=MemoryMax=1G" "--keep-unit" "--bogus" ]; }"#,
    ),
    (
        "ipv6-only",
        r#"{ config = { ... }: { }; privateNetwork = true; hostAddress6 = "fd00:1::1"; localAddress6 = "fd00:1::2"; }"#,
    ),
    (
        "prebuilt",
        r#"{ path = "/nix/store/00000000000000000000000000000000-nixos-system-x"; privateNetwork = true; }"#,
    ),
    (
        "imperative",
        r#"{ _kind = "imperative"; privateNetwork = true; hostAddress = "10.233.2.1"; localAddress = "10.233.2.2"; hostBridge = "br0"; }"#,
    ),
    (
        "odd-name",
        r#"{ config = { ... }: { networking.hostName = "x"; }; autoStart = false; bindMounts."/my data" = { hostPath = "/srv/my data"; }; }"#,
    ),
];

fn all_cases() -> Vec<(String, LegacyContainer)> {
    let mut v = Vec::new();
    for (name, src) in REPRESENTATIVE {
        v.push((name.to_string(), example_container(src).unwrap()));
    }
    for (n, m) in MAPPINGS.iter().enumerate() {
        v.push((
            format!("row{n}-{}", m.legacy),
            example_container(m.example.input).unwrap(),
        ));
    }
    v
}

fn instances() -> Vec<(String, Instance)> {
    all_cases()
        .into_iter()
        .map(|(n, c)| (n, translate(&c, &ctx())))
        .collect()
}

#[test]
fn nspawn_parser_check_is_not_vacuous() {
    if !have_tool("systemd-nspawn", "systemd-container") {
        return;
    }
    let errors = nspawn_parse_errors(
        "neg",
        "[Exec]\nBoot=maybe\nFooBar=1\n\n[Files]\n\n[Network]\nPort=xyz:1:2\n",
    );
    assert_eq!(errors.len(), 3, "{errors:?}");
}

#[test]
fn nspawn_files_pass_systemd_nspawns_parser() {
    if !have_tool("systemd-nspawn", "systemd-container") {
        return;
    }
    let mut failures = Vec::new();
    for (case, i) in instances() {
        let text = nspawn::preview(&i);
        let errors = nspawn_parse_errors(&i.name, &text);
        if !errors.is_empty() {
            failures.push(format!(
                "{case}:\n{text}\n--- nspawn said ---\n{}",
                errors.join("\n")
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn nix_output_parses_with_nix_instantiate() {
    if !have_tool("nix-instantiate", "nix-bin") {
        return;
    }
    let mut texts: Vec<(String, String)> = Vec::new();
    let all = instances();
    for (case, i) in &all {
        // A snippet is a module of its own, closed over every name it uses.
        texts.push((format!("{case}-snippet"), nix::instance_snippet(i)));
        if i.kind == Kind::Imperative {
            texts.push((format!("{case}-imperative"), nix::imperative_file(i)));
        }
    }
    let declarative: Vec<Instance> = all
        .iter()
        .map(|(_, i)| i.clone())
        .filter(|i| i.kind == Kind::Declarative)
        .collect();
    // One instance per name in a host file (the readers guarantee unique names).
    let mut by_name = std::collections::BTreeMap::new();
    for (n, i) in REPRESENTATIVE.iter().zip(&all) {
        let mut i = i.1.clone();
        i.name = n.0.to_string();
        by_name.insert(i.name.clone(), i);
    }
    let host: Vec<Instance> = by_name.into_values().collect();
    texts.push(("host-file".into(), nix::host_file(&host)));
    texts.push(("host-file-rows".into(), nix::host_file(&declarative[..1])));
    let mut failures = Vec::new();
    for (case, text) in &texts {
        if let Err(e) = nix_parse(text) {
            failures.push(format!("{case}:\n{text}\n--- stderr ---\n{e}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn host_file_evaluates_as_a_module_body() {
    // Beyond parsing: the host file is a function of { config, lib, pkgs, ... } whose body is an
    // attribute set with the expected top-level paths (evaluated with stub arguments, strictly
    // only where no guest code runs).
    if !have_tool("nix-instantiate", "nix-bin") {
        return;
    }
    let i = translate(&example_container(REPRESENTATIVE[1].1).unwrap(), &ctx());
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("host.nix");
    std::fs::write(&f, nix::host_file(std::slice::from_ref(&i))).unwrap();
    let expr = format!(
        "let m = import {} {{ config = {{}}; lib = {{ mkForce = x: x; mkIf = c: x: x; }}; pkgs = {{}}; }}; in \
         [ (builtins.attrNames m.nixos.containers.instances) m.nixos.containers.instances.web.network \
           m.systemd.nspawn.web.execConfig (builtins.attrNames m.systemd.services) \
           m.systemd.services.\"systemd-nspawn@web\".serviceConfig.DeviceAllow ]",
        f.display()
    );
    let out = Command::new("nix-instantiate")
        .args(["--eval", "--strict", "--expr", &expr])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("[ \"web\" ]"), "{stdout}");
    assert!(
        stdout.contains("hostAddresses = [ \"10.233.1.1/32\" ]"),
        "{stdout}"
    );
    assert!(stdout.contains("ResolvConf = \"off\""), "{stdout}");
    assert!(stdout.contains("\"systemd-nspawn@web\""), "{stdout}");
    assert!(stdout.contains("\"/dev/net/tun rwm\""), "{stdout}");
}

/// Run `systemd-analyze verify` over the stock `systemd-nspawn@.service` with `dropin` as its
/// override for machine `name`; the `FILE:LINE:` complaints about the drop-in.
fn dropin_errors(name: &str, dropin: &str) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    let vd = dir.path().join("vd");
    let d = vd.join(format!("systemd-nspawn@{name}.service.d"));
    std::fs::create_dir_all(&d).unwrap();
    std::fs::copy(
        "/lib/systemd/system/systemd-nspawn@.service",
        vd.join(format!("systemd-nspawn@{name}.service")),
    )
    .unwrap();
    let conf = d.join("override.conf");
    std::fs::write(&conf, dropin).unwrap();
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(vd.join(format!("systemd-nspawn@{name}.service")))
        .env("SYSTEMD_UNIT_PATH", format!("{}:", vd.display()))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let prefix = format!("{}:", conf.display());
    let mut bad: Vec<String> = stderr
        .lines()
        .filter(|l| l.starts_with(&prefix))
        .map(str::to_string)
        .collect();
    if !out.status.success() {
        bad.push(format!("systemd-analyze verify failed:\n{stderr}"));
    }
    bad
}

#[test]
fn dropins_pass_systemd_analyze_verify() {
    if !have_tool("systemd-analyze", "systemd")
        || !Path::new("/lib/systemd/system/systemd-nspawn@.service").exists()
    {
        return;
    }
    let mut failures = Vec::new();
    let mut checked = 0;
    for (case, i) in instances() {
        let text = nspawn::dropin(&i);
        if text.is_empty() {
            continue;
        }
        checked += 1;
        let errors = dropin_errors(&i.name, &text);
        if !errors.is_empty() {
            failures.push(format!(
                "{case}:\n{text}\n--- systemd-analyze said ---\n{}",
                errors.join("\n")
            ));
        }
    }
    assert!(checked >= 5, "too few drop-ins checked: {checked}");
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn dropin_check_is_not_vacuous() {
    if !have_tool("systemd-analyze", "systemd")
        || !Path::new("/lib/systemd/system/systemd-nspawn@.service").exists()
    {
        return;
    }
    let errors = dropin_errors("neg", "[Service]\nBogusKey=1\nDeviceAllow=/dev/fuse rwx\n");
    assert_eq!(errors.len(), 2, "{errors:?}");
}

fn networkd_units(i: &Instance) -> Vec<NetworkdUnit> {
    let mut v = networkd::module_networks(&i.name, &i.spec);
    v.extend(i.host_networks.iter().cloned());
    v.extend(i.guest_networks.iter().cloned());
    v
}

#[test]
fn networkd_units_pass_systemd_networkds_parser() {
    let mut files = Vec::new();
    // One directory for all units: prefix each file with its case number so none shadows
    // another (networkd uses the first file per name).
    for (n, (_, i)) in instances().iter().enumerate() {
        for u in networkd_units(i) {
            files.push((format!("{n:03}-{}", u.file_name), networkd::render(&u)));
        }
    }
    assert!(
        files.len() > 20,
        "too few units to be a meaningful check: {}",
        files.len()
    );
    if let Some(bad) = networkd_parse_errors(&files) {
        assert!(
            bad.is_empty(),
            "networkd rejected generated lines:\n{}",
            bad.join("\n")
        );
    }
}

#[test]
fn networkd_check_is_not_vacuous() {
    let files = vec![(
        "20-x.network".to_string(),
        "[Match]\nName=x\n\n[Network]\nBogusKey=1\nGateway=notanip\n".to_string(),
    )];
    if let Some(bad) = networkd_parse_errors(&files) {
        assert_eq!(bad.len(), 2, "{bad:?}");
    }
}

#[test]
fn formatting_keeps_the_meaning_of_copied_guest_code() {
    // nixfmt re-indents the copied guest module, including indented strings: the values must
    // stay the same. Evaluate a string from the original text and from the emitted snippet.
    if !have_tool("nix-instantiate", "nix-bin") {
        return;
    }
    let guest = "{ ... }: {\n        systemd.services.x.script = ''\n          if true; then\n            echo \"a  b\" # eth1\n          fi\n\n            indented more\n        '';\n      networking.hostName = \"h\";\n    }";
    let src = format!("{{ config = {guest}; }}");
    let i = translate(&example_container(&src).unwrap(), &ctx());
    let snippet = nix::instance_snippet(&i);
    let dir = tempfile::tempdir().unwrap();
    let orig = dir.path().join("orig.nix");
    let new = dir.path().join("new.nix");
    std::fs::write(&orig, guest).unwrap();
    std::fs::write(&new, &snippet).unwrap();
    let eval = |expr: String| {
        let out = Command::new("nix-instantiate")
            .args(["--eval", "--strict", "--expr", &expr])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let a = eval(format!(
        "(import {} {{}}).systemd.services.x.script",
        orig.display()
    ));
    let b = eval(format!(
        "(((import {}) {{ config = {{ }}; lib = {{ mkForce = x: x; }}; pkgs = {{ }}; }}).nixos.containers.instances.web.system-config {{}}).systemd.services.x.script",
        new.display()
    ));
    assert_eq!(a, b, "snippet:\n{snippet}");
    assert!(a.contains("echo \\\"a  b\\\" # eth1"), "{a}");
}
