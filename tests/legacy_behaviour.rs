//! A migrated container behaves like the legacy one (issue 13, and issue 9's point-to-point
//! veths): each test writes a small legacy host (`etc/nixos/configuration.nix` under a temporary
//! `--root`), runs `migrate --dry-run --json`, and checks the emitted units, the warnings, and —
//! where the module judges the result — that the emitted Nix evaluates under the NixOS module
//! without a failing assertion (`nixos/tests/render.nix`, needs `NIXPKGS_LIB`). The network
//! tests then run the units the module rendered in real systemd-networkd instances, one network
//! namespace per side, and ping across the veth.
#![allow(clippy::unwrap_used)]

mod util;

use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use util::*;

fn require_real_tools() -> bool {
    std::env::var("NIXOS_NSPAWN_REQUIRE_REAL_TOOLS").as_deref() == Ok("1")
}

/// A legacy host whose configuration.nix is `config`; the dry-run report.
fn dry_run(config: &str) -> Value {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("etc/nixos");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("configuration.nix"), config).unwrap();
    let out = nixos_nspawn(root.path(), &["migrate", "--dry-run", "--json"]);
    json(&out)
}

fn container<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no container {name} in {report:#}"))
}

fn codes(c: &Value) -> Vec<String> {
    c["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["code"].as_str().unwrap().to_string())
        .collect()
}

fn warning_text(c: &Value, code: &str) -> String {
    c["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["code"] == code)
        .map(|w| w["message"].as_str().unwrap().to_string())
        .unwrap_or_else(|| panic!("no {code} warning: {:#}", c["warnings"]))
}

/// The preview of one networkd unit (`host: 20-ve-a.network`).
fn unit<'a>(c: &'a Value, key: &str) -> &'a str {
    c["networkd"][key]
        .as_str()
        .unwrap_or_else(|| panic!("no unit {key}: {:#}", c["networkd"]))
}

/// How nixos/tests/render.nix is run: on nixpkgs' own files (`nixos/tests/lib/nixpkgs.nix`:
/// `$NIXPKGS` or the vendored `../shared/nixpkgs`), or, in the older stub harness, with
/// nixpkgs' lib from `NIXPKGS_LIB`. `None` (said on stderr) when neither is available.
fn render_command(conf: &Path) -> Option<Command> {
    let mut cmd = Command::new("nix-instantiate");
    if repo().join("nixos/tests/lib/nixpkgs.nix").is_file() {
        let dir = match std::env::var("NIXPKGS") {
            Ok(p) if !p.is_empty() => std::path::PathBuf::from(p),
            _ => repo().join("../shared/nixpkgs"),
        };
        if !dir.join("lib/default.nix").is_file() {
            assert!(!require_real_tools(), "no nixpkgs at {}", dir.display());
            eprintln!("skipped: no nixpkgs at {}", dir.display());
            return None;
        }
        cmd.args(["--eval", "--read-write-mode", "--strict", "--json"])
            .arg(repo().join("nixos/tests/render.nix"))
            .arg("--arg")
            .arg("configuration")
            .arg(conf)
            .env("NIXPKGS", dir);
    } else {
        let lib = match std::env::var("NIXPKGS_LIB") {
            Ok(l) if !l.is_empty() => l,
            _ => {
                eprintln!(
                    "skipped: set NIXPKGS_LIB to nixpkgs' lib directory to evaluate the module"
                );
                return None;
            }
        };
        cmd.args(["--eval", "--strict", "--json"])
            .arg(repo().join("nixos/tests/render.nix"))
            .args(["--arg", "nixpkgsLib", &lib])
            .arg("--arg")
            .arg("configuration")
            .arg(conf)
            .env("NIXPKGS_LIB", &lib);
    }
    Some(cmd)
}

/// Evaluate the emitted host file with the module (render.nix, the host as the administrator
/// finishes it: networkd on). Fails on an evaluation error or a failing assertion; `None` when
/// no nixpkgs is available (said on stderr).
fn module_eval(report: &Value) -> Option<Value> {
    module_eval_in(
        report,
        "{ imports = [ ./containers.nix ]; networking.useNetworkd = true; }\n",
    )
}

/// [`module_eval`] with the host configuration `host` (a module that imports
/// `./containers.nix`, the emitted file).
fn module_eval_in(report: &Value, host: &str) -> Option<Value> {
    let nix = report["nix_file"].as_str().expect("a declarative Nix file");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("containers.nix"), nix).unwrap();
    let conf = dir.path().join("host.nix");
    std::fs::write(&conf, host).unwrap();
    let out = render_command(&conf)?.output().unwrap();
    assert!(
        out.status.success(),
        "the module cannot evaluate the emitted Nix:\n{}\n--- emitted\n{nix}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let failed: Vec<&str> = v["assertions"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|a| a.as_str())
        .collect();
    assert!(
        failed.is_empty(),
        "module assertions fail: {failed:#?}\n--- emitted\n{nix}"
    );
    Some(v)
}

fn units_at(v: &Value, path: &[&str]) -> BTreeMap<String, String> {
    let mut cur = v;
    for p in path {
        cur = &cur[*p];
    }
    cur.as_object()
        .map(|m| {
            m.iter()
                .map(|(k, b)| (k.clone(), b.as_str().unwrap().to_string()))
                .collect()
        })
        .unwrap_or_default()
}

/// What one side of the network looked like once networkd had configured it.
struct SideState {
    /// `ip -br addr`, `ip route`, `ip -6 route`.
    state: String,
    /// Output of the probe command (guests only), with its exit status last.
    probe: String,
}

/// Run real systemd-networkd on a host namespace holding one veth per guest (`ve-<name>`),
/// and in one namespace per guest (`host0`), each with the given units; after `secs`, record
/// the addresses and routes and run each guest's probe command. `None` (after saying why) when
/// the tools or root are missing.
fn networkd_net(
    host_units: &BTreeMap<String, String>,
    guests: &[(&str, BTreeMap<String, String>, &str)],
    secs: u32,
) -> Option<(String, Vec<SideState>)> {
    networkd_net_with(host_units, guests, secs, "")
}

/// [`networkd_net`], running `host_setup` in the host namespace once the links exist.
fn networkd_net_with(
    host_units: &BTreeMap<String, String>,
    guests: &[(&str, BTreeMap<String, String>, &str)],
    secs: u32,
    host_setup: &str,
) -> Option<(String, Vec<SideState>)> {
    let networkd = Path::new("/lib/systemd/systemd-networkd");
    let busybox = Path::new("/bin/busybox");
    for (p, what) in [(networkd, "systemd-networkd"), (busybox, "busybox")] {
        if !p.exists() {
            assert!(!require_real_tools(), "{} missing", p.display());
            eprintln!("skipped: {what} missing");
            return None;
        }
    }
    if !is_root() {
        assert!(!require_real_tools(), "networkd in namespaces needs root");
        eprintln!("skipped: networkd in namespaces needs root");
        return None;
    }
    let t = tempfile::tempdir().unwrap();
    let d = t.path().display().to_string();
    let write_units = |dir: &str, units: &BTreeMap<String, String>| {
        let p = t.path().join(dir);
        std::fs::create_dir_all(&p).unwrap();
        for (name, body) in units {
            std::fs::write(p.join(name), body).unwrap();
        }
    };
    write_units("h", host_units);
    for (n, (_, units, probe)) in guests.iter().enumerate() {
        write_units(&format!("g{n}"), units);
        std::fs::write(t.path().join(format!("g{n}.probe")), probe).unwrap();
    }
    std::fs::create_dir_all(t.path().join("empty")).unwrap();
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
if [ -f {d}/$1.probe ]; then
  set +e
  sh {d}/$1.probe >{d}/$1.probe.out 2>&1
  echo "exit=$?" >>{d}/$1.probe.out
fi
# Keep the link configured until every side has probed.
sleep 6
kill $P
wait $P || true
"#
        ),
    )
    .unwrap();
    let ns = format!("nn-lb-{}-{}", std::process::id(), guests[0].0);
    let mut outer = format!("set -e\nip netns add {ns}h\n");
    let mut cleanup = format!("ip netns del {ns}h");
    for (n, _) in guests.iter().enumerate() {
        outer.push_str(&format!("ip netns add {ns}g{n}\n"));
        cleanup.push_str(&format!("; ip netns del {ns}g{n}"));
    }
    outer.push_str(&format!("trap '{cleanup}' EXIT\n"));
    for (n, (ifname, _, _)) in guests.iter().enumerate() {
        outer.push_str(&format!(
            "ip -n {ns}h link add {ifname} type veth peer name host0 netns {ns}g{n}\n"
        ));
    }
    if !host_setup.is_empty() {
        outer.push_str(&format!("ip netns exec {ns}h sh -c '{host_setup}'\n"));
    }
    for (n, _) in guests.iter().enumerate() {
        outer.push_str(&format!(
            "nsenter --net=/run/netns/{ns}g{n} unshare -m --propagation private sh {d}/side.sh g{n} &\n"
        ));
    }
    outer.push_str(&format!(
        "nsenter --net=/run/netns/{ns}h unshare -m --propagation private sh {d}/side.sh h\nwait\n"
    ));
    std::fs::write(t.path().join("outer.sh"), outer).unwrap();
    let st = Command::new("timeout")
        .arg(format!("{}", secs + 40))
        .arg("sh")
        .arg(t.path().join("outer.sh"))
        .status()
        .unwrap();
    assert!(st.success(), "networkd sandbox failed");
    let read = |f: &str| std::fs::read_to_string(t.path().join(f)).unwrap_or_default();
    let mut sides = vec!["h".to_string()];
    sides.extend((0..guests.len()).map(|n| format!("g{n}")));
    for side in &sides {
        let log = read(&format!("{side}.log"));
        let complaints: Vec<&str> = log
            .lines()
            .filter(|l| l.starts_with("/etc/systemd/network/"))
            .collect();
        assert!(
            complaints.is_empty(),
            "{side}: networkd complains about the units:\n{}\n--- log\n{log}",
            complaints.join("\n")
        );
    }
    let guests = (0..guests.len())
        .map(|n| SideState {
            state: read(&format!("g{n}.state")),
            probe: read(&format!("g{n}.probe.out")),
        })
        .collect();
    Some((read("h.state"), guests))
}

// ---------------------------------------------------------------------------------------------
// Issue 9 (6): point-to-point veths, faithfully

/// The manual's example: three containers share `hostAddress = "192.168.100.10"`. Legacy put
/// 192.168.100.10/32 on each `ve-*` with a host route to each container; the translation must
/// do the same (no subnet, no overlapping routes, no prefix warning), and in real networkd each
/// container reaches the host through its own link.
#[test]
fn containers_sharing_a_host_address_stay_point_to_point() {
    let report = dry_run(
        r#"{ ... }: {
  containers.a = { privateNetwork = true; hostAddress = "192.168.100.10"; localAddress = "192.168.100.11"; config = { }; };
  containers.b = { privateNetwork = true; hostAddress = "192.168.100.10"; localAddress = "192.168.100.12"; config = { }; };
  containers.c = { privateNetwork = true; hostAddress = "192.168.100.10"; localAddress = "192.168.100.13"; config = { }; };
}"#,
    );
    for (name, local) in [("a", "11"), ("b", "12"), ("c", "13")] {
        let c = container(&report, name);
        assert!(
            !codes(c).contains(&"p2p-prefix-chosen".to_string()),
            "{name}: {:?}",
            codes(c)
        );
        assert_eq!(
            unit(c, &format!("host: 20-ve-{name}.network")),
            format!(
                "[Match]\nName=ve-{name}\n\n[Network]\n\n[Address]\nAddress=192.168.100.10/32\nPeer=192.168.100.{local}/32\n\n"
            )
        );
        assert_eq!(
            unit(c, "guest: 40-host0.network"),
            format!(
                "[Match]\nName=host0\n\n[Network]\n\n[Address]\nAddress=192.168.100.{local}/32\nPeer=192.168.100.10/32\n\n\
                 [Route]\nGateway=192.168.100.10\nGatewayOnLink=yes\n\n"
            )
        );
    }
    let Some(v) = module_eval(&report) else {
        return;
    };
    let host = units_at(&v, &["network"]);
    // The preview is what the module renders.
    for name in ["a", "b", "c"] {
        assert_eq!(
            host[&format!("20-ve-{name}.network")],
            unit(
                container(&report, name),
                &format!("host: 20-ve-{name}.network")
            )
        );
    }
    let guests: Vec<(&str, BTreeMap<String, String>, &str)> =
        [("ve-a", "a"), ("ve-b", "b"), ("ve-c", "c")]
            .iter()
            .map(|(ifname, name)| {
                (
                    *ifname,
                    units_at(&v, &["guest", name]),
                    "/bin/busybox ping -c 1 -W 3 192.168.100.10",
                )
            })
            .collect();
    let Some((host_state, guest_states)) = networkd_net(&host, &guests, 4) else {
        return;
    };
    for (n, local) in ["11", "12", "13"].iter().enumerate() {
        let ifname = guests[n].0;
        assert!(
            host_state.contains(&format!(
                "192.168.100.{local} dev {ifname} proto kernel scope link src 192.168.100.10"
            )),
            "no host route to .{local} on {ifname}:\n{host_state}"
        );
        let g = &guest_states[n];
        assert!(
            g.state
                .contains("default via 192.168.100.10 dev host0 proto static onlink"),
            "{ifname}: no on-link default route:\n{}",
            g.state
        );
        assert!(
            g.probe.contains("exit=0"),
            "{ifname}: the container cannot reach the host:\n{}\n--- guest\n{}\n--- host\n{host_state}",
            g.probe,
            g.state
        );
    }
    // No subnet anywhere: every address is a /32 with a peer.
    for l in host_state.lines().filter(|l| l.starts_with("ve-")) {
        assert!(
            !l.contains("/29") && !l.contains("/31") && !l.contains("/30"),
            "{l}"
        );
    }
}

/// Far-apart addresses (legacy allowed any pair): no enclosing subnet such as 10.0.0.0/12 is
/// claimed on the host; IPv6 likewise.
#[test]
fn far_apart_point_to_point_addresses_claim_no_subnet() {
    let report = dry_run(
        r#"{ ... }: {
  containers.far = {
    privateNetwork = true;
    hostAddress = "10.0.0.1"; localAddress = "10.9.9.9";
    hostAddress6 = "fc00::1"; localAddress6 = "fd00::9";
    config = { };
  };
}"#,
    );
    let c = container(&report, "far");
    assert!(
        !codes(c).iter().any(|w| w == "p2p-prefix-chosen"),
        "{:?}",
        codes(c)
    );
    let host = unit(c, "host: 20-ve-far.network");
    assert!(
        host.contains("Address=10.0.0.1/32\nPeer=10.9.9.9/32\n"),
        "{host}"
    );
    assert!(
        host.contains("Address=fc00::1/128\nPeer=fd00::9/128\n"),
        "{host}"
    );
    assert!(
        !host.contains("IPMasquerade") && !host.contains("IPv6SendRA"),
        "legacy had no NAT and no RA:\n{host}"
    );
    let Some(v) = module_eval(&report) else {
        return;
    };
    let guests = vec![(
        "ve-far",
        units_at(&v, &["guest", "far"]),
        "/bin/busybox ping -c 1 -W 3 10.0.0.1 && /bin/busybox ping -c 1 -W 3 fc00::1",
    )];
    let Some((host_state, g)) = networkd_net(&units_at(&v, &["network"]), &guests, 5) else {
        return;
    };
    assert!(
        host_state.contains("10.9.9.9 dev ve-far proto kernel scope link src 10.0.0.1"),
        "{host_state}"
    );
    assert!(!host_state.contains("10.0.0.0/"), "{host_state}");
    assert!(
        g[0].state.contains("default via fc00::1 dev host0"),
        "{}",
        g[0].state
    );
    assert!(
        g[0].probe.contains("exit=0"),
        "{}\n--- guest\n{}\n--- host\n{host_state}",
        g[0].probe,
        g[0].state
    );
}

// ---------------------------------------------------------------------------------------------
// Issue 13: the items the module judges, on one host

/// Every item whose result the module judges, in one small legacy host: the emitted Nix
/// evaluates under the module with no failing assertion, and each difference that remains is
/// reported by name.
#[test]
fn a_host_with_every_item_evaluates_under_the_module() {
    let report = dry_run(
        r#"{ ... }: {
  # 13.1: bridged, no localAddress, the guest configures host0 itself.
  containers.br = { privateNetwork = true; hostBridge = "br0";
    config = { networking.interfaces.eth0.ipv4.addresses = [ { address = "192.168.1.5"; prefixLength = 24; } ];
               networking.defaultGateway = { address = "192.168.1.1"; interface = "eth0"; }; }; };
  # 13.2: a static veth: no NAT, no RA.
  containers.st = { privateNetwork = true; hostAddress = "10.233.1.1"; localAddress = "10.233.1.2"; config = { }; };
  # 13.3: a fixed user namespace base.
  containers.uid = { privateUsers = 65536; config = { }; };
  # 13.4: a veth without addresses.
  containers.mac = { privateNetwork = true; localMacAddress = "02:00:00:00:00:01"; config = { }; };
  # 13.5: forwardPorts with a macvlan only.
  containers.mv = { privateNetwork = true; macvlans = [ "eth1" ]; forwardPorts = [ { hostPort = 8080; containerPort = 80; } ]; config = { }; };
  # 13.6: ephemeral.
  containers.eph = { ephemeral = true; config = { }; };
  # 13.9: a 14-character name with a veth.
  containers.fourteenchars1 = { privateNetwork = true; hostAddress = "10.233.2.1"; localAddress = "10.233.2.2"; config = { }; };
  # 13.10: a zone from extraFlags, twice.
  containers.z1 = { privateNetwork = true; extraFlags = [ "--network-zone=lab" ]; config = { }; };
  containers.z2 = { privateNetwork = true; extraFlags = [ "--network-zone=lab" ]; config = { }; };
}"#,
    );
    let has = |name: &str, code: &str| codes(container(&report, name)).iter().any(|c| c == code);
    assert!(has("mac", "veth-without-addresses"));
    assert!(has("mv", "forward-ports-without-veth"));
    assert!(
        warning_text(container(&report, "mv"), "forward-ports-without-veth")
            .contains("systemd.nspawn.mv.networkConfig.Port = [ \"tcp:8080:80\" ];")
    );
    assert!(has("z1", "network-zone-declared") && has("z2", "network-zone-declared"));
    let eph = container(&report, "eph");
    assert!(
        eph["plan"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["step"] != "copy-state"),
        "{:#}",
        eph["plan"]
    );
    assert!(
        container(&report, "uid")["nspawn"]
            .as_str()
            .unwrap()
            .contains("PrivateUsersOwnership=off\n")
    );
    let Some(v) = module_eval(&report) else {
        return;
    };
    // 13.1: the module adds nothing to br's host0 (no address of its own): the guest's own
    // settings are what configures it (rendered by nixpkgs' networking modules where the
    // harness has them, absent otherwise).
    let br = units_at(&v, &["guest", "br"]);
    if v.get("units").is_some() {
        let u = &br["40-host0.network"];
        assert!(
            u.contains("Address=192.168.1.5/24\n") && u.contains("Gateway=192.168.1.1\n"),
            "{u}"
        );
        assert!(!u.contains("DHCP=yes"), "{u}");
    } else {
        assert!(br.is_empty(), "{br:?}");
    }
    // 13.2: the static veth is configured as legacy did it, nothing else.
    let st = &units_at(&v, &["network"])["20-ve-st.network"];
    assert!(
        !st.contains("IPMasquerade") && !st.contains("IPv6SendRA"),
        "{st}"
    );
    // 13.3: the module renders the ownership the migration chose.
    assert!(
        v["nspawn"]["uid"]
            .as_str()
            .unwrap()
            .contains("PrivateUsersOwnership=off\n"),
        "{}",
        v["nspawn"]["uid"]
    );
    // 13.5: no Port= the module would refuse.
    assert!(!v["nspawn"]["mv"].as_str().unwrap().contains("Port="));
    // 13.8 and 13.12: legacy's Restart= and TimeoutStartSec= reach the service.
    for name in ["st", "uid", "eph"] {
        let d = v["dropins"][name].as_str().unwrap_or_default();
        assert!(d.contains("Restart=on-failure\n"), "{name}: {d}");
        assert!(d.contains("TimeoutStartSec=1min\n"), "{name}: {d}");
    }
    // 13.9: the long name renders its own veth unit.
    assert!(units_at(&v, &["network"]).contains_key("20-ve-fourteenchars1.network"));
    // 13.10: the zone is declared once and rendered.
    assert!(units_at(&v, &["network"]).contains_key("20-vz-lab.network"));
}

/// 13.9: a name too long for `ve-<name>` works as it did with legacy on current kernels:
/// systemd-nspawn gives the hashed link the full name as an alternative name, and the module's
/// unit (matching `Name=ve-<name>`) configures it in real networkd.
#[test]
fn long_container_names_match_their_veth_by_altname() {
    let report = dry_run(
        r#"{ ... }: {
  containers.fourteenchars1 = { privateNetwork = true; hostAddress = "10.233.2.1"; localAddress = "10.233.2.2"; config = { }; };
}"#,
    );
    let Some(v) = module_eval(&report) else {
        return;
    };
    let host = units_at(&v, &["network"]);
    assert!(
        host.contains_key("20-ve-fourteenchars1.network"),
        "{host:?}"
    );
    // What nspawn does for a long name: a short hashed name, the full one as altname.
    let guests = vec![(
        "ve-fourte-x1",
        units_at(&v, &["guest", "fourteenchars1"]),
        "/bin/busybox ping -c 1 -W 3 10.233.2.1",
    )];
    let altname = "ip link property add dev ve-fourte-x1 altname ve-fourteenchars1";
    // The altname is added before networkd starts, as nspawn does when it creates the link.
    let host_units: BTreeMap<String, String> = host
        .into_iter()
        .filter(|(k, _)| k.starts_with("20-ve-"))
        .collect();
    let Some((host_state, g)) = networkd_net_with(&host_units, &guests, 4, altname) else {
        return;
    };
    assert!(
        host_state.contains("10.233.2.2 dev ve-fourte-x1 proto kernel scope link src 10.233.2.1"),
        "networkd did not configure the link by its altname:\n{host_state}"
    );
    assert!(g[0].probe.contains("exit=0"), "{}", g[0].probe);
}

/// 13.7: a declarative container's per-container profile and GC-root directories (bound
/// read-write into the guest by legacy: the guest's per-user profiles live there) are carried to
/// the directories the module binds, as links, not only an imperative container's.
#[test]
fn declarative_profiles_and_gcroots_are_carried() {
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    std::fs::create_dir_all(r.join("etc/nixos")).unwrap();
    std::fs::write(
        r.join("etc/nixos/configuration.nix"),
        "{ ... }: { containers.web = { autoStart = true; config = { }; }; }\n",
    )
    .unwrap();
    std::fs::create_dir_all(r.join("etc/nixos-containers")).unwrap();
    std::fs::write(
        r.join("etc/nixos-containers/web.conf"),
        "SYSTEM_PATH=/nix/store/00000000000000000000000000000000-nixos-system-web\nCOPY_RESOLV_CONF=1\nPRIVATE_USERS=no\nAUTO_START=1\n",
    )
    .unwrap();
    std::fs::create_dir_all(r.join("var/lib/nixos-containers/web/etc")).unwrap();
    std::fs::write(r.join("var/lib/nixos-containers/web/etc/hostname"), "web\n").unwrap();
    let prof = r.join("nix/var/nix/profiles/per-container/web/per-user/root");
    std::fs::create_dir_all(&prof).unwrap();
    std::os::unix::fs::symlink(
        "/nix/store/11111111111111111111111111111111-user-environment",
        prof.join("profile-1-link"),
    )
    .unwrap();
    std::os::unix::fs::symlink("profile-1-link", prof.join("profile")).unwrap();
    let roots = r.join("nix/var/nix/gcroots/per-container/web/auto");
    std::fs::create_dir_all(&roots).unwrap();
    std::os::unix::fs::symlink("/root/result", roots.join("abc")).unwrap();

    let report = json(&nixos_nspawn(r, &["migrate", "--dry-run", "--json"]));
    let plan = container(&report, "web")["plan"]
        .as_array()
        .unwrap()
        .clone();
    let carried: Vec<(&str, &str)> = plan
        .iter()
        .filter(|s| s["step"] == "carry-profile")
        .map(|s| (s["from"].as_str().unwrap(), s["to"].as_str().unwrap()))
        .collect();
    assert_eq!(
        carried,
        vec![
            (
                "/nix/var/nix/profiles/per-container/web",
                "/nix/var/nix/profiles/per-nspawn/web"
            ),
            (
                "/nix/var/nix/gcroots/per-container/web",
                "/nix/var/nix/gcroots/per-nspawn/web"
            ),
        ],
        "{plan:#?}"
    );
    let out = nixos_nspawn(r, &["migrate", "--yes"]);
    assert!(
        out.status.code() == Some(0) || out.status.code() == Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let new = r.join("nix/var/nix/profiles/per-nspawn/web/per-user/root");
    assert_eq!(
        std::fs::read_link(new.join("profile")).unwrap(),
        Path::new("profile-1-link")
    );
    assert_eq!(
        std::fs::read_link(new.join("profile-1-link")).unwrap(),
        Path::new("/nix/store/11111111111111111111111111111111-user-environment")
    );
    assert_eq!(
        std::fs::read_link(r.join("nix/var/nix/gcroots/per-nspawn/web/auto/abc")).unwrap(),
        Path::new("/root/result")
    );
    // The legacy directories stay as they were.
    assert!(prof.join("profile").is_symlink());
}

/// 13.2: host settings on the legacy unit (`systemd.services."container@<name>"`) would stop
/// applying silently; they are reported with where to move them.
#[test]
fn overrides_of_the_legacy_unit_are_reported() {
    let report = dry_run(
        r#"{ lib, ... }: {
  containers.web = { autoStart = true; config = { }; };
  systemd.services."container@web".serviceConfig.MemoryMax = "2G";
  networking.nat = { enable = true; internalInterfaces = [ "ve-+" ]; };
}"#,
    );
    let problems: Vec<&Value> = report["problems"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["code"] == "container-unit-override")
        .collect();
    assert_eq!(problems.len(), 1, "{:#}", report["problems"]);
    let m = problems[0]["message"].as_str().unwrap();
    assert!(
        m.contains("configuration.nix:3") && m.contains("systemd.services.\"systemd-nspawn@web\""),
        "{m}"
    );
    assert_eq!(problems[0]["category"], "needs-human");
}

/// 13.1: the README's bridged container: the address comes from `localAddress`, the default
/// route from the guest's own `networking.defaultGateway`. Legacy applied both; the module
/// writes its part into `40-host0`, the unit NixOS renders the guest's settings into, so both
/// land in one unit. (With the stub harness the guest's networking options are not rendered,
/// only the module's part is checked; with nixpkgs' own networking modules, both are.)
#[test]
fn guest_host0_settings_merge_with_the_legacy_address() {
    let report = dry_run(
        r#"{ ... }: {
  containers.br = {
    privateNetwork = true; hostBridge = "br0"; localAddress = "192.168.1.20/24";
    config = { networking.defaultGateway = { address = "192.168.1.1"; interface = "eth0"; }; };
  };
}"#,
    );
    let c = container(&report, "br");
    assert!(
        !codes(c)
            .iter()
            .any(|w| w == "guest-gateway-without-interface"),
        "{:?}",
        codes(c)
    );
    assert!(c["nix"].as_str().unwrap().contains("interface = \"host0\""));
    let Some(v) = module_eval(&report) else {
        return;
    };
    let units = units_at(&v, &["guest", "br"]);
    assert_eq!(
        units.keys().collect::<Vec<_>>(),
        vec!["40-host0.network"],
        "one unit for host0: {units:?}"
    );
    let u = &units["40-host0.network"];
    assert!(u.contains("Address=192.168.1.20/24\n"), "{u}");
    // The harness on nixpkgs' own NixOS modules (it also reports `units`) renders the guest's
    // networking options; the stub harness does not.
    if v.get("units").is_some() {
        assert!(u.contains("[Route]\nGateway=192.168.1.1\n"), "{u}");
    } else {
        eprintln!("note: the guest's networking options are not rendered by this harness");
    }
}

/// 13.1 / issue 9: the usual bridged container whose guest writes its gateway as a string
/// (legacy's scripted guest needed no interface). The string form is refused by NixOS under
/// networkd and renders no route; the rewritten one, evaluated by nixpkgs' own networking
/// modules, is the default route on host0 next to the module's address.
#[test]
fn guest_string_gateway_becomes_the_host0_default_route() {
    let report = dry_run(
        r#"{ ... }: {
  containers.br = {
    privateNetwork = true; hostBridge = "br0"; localAddress = "10.100.0.2/24";
    config = {
      networking.defaultGateway = "10.100.0.1";
      networking.defaultGateway6 = { address = "fd00::1"; };
    };
  };
}"#,
    );
    let c = container(&report, "br");
    assert!(
        codes(c)
            .iter()
            .any(|w| w == "guest-gateway-interface-added")
            && !codes(c)
                .iter()
                .any(|w| w == "guest-gateway-without-interface"),
        "{:?}",
        codes(c)
    );
    let m = warning_text(c, "guest-gateway-interface-added");
    assert!(
        m.contains("configuration.nix:5:") && m.contains("configuration.nix:6:"),
        "{m}"
    );
    let Some(v) = module_eval(&report) else {
        return;
    };
    let units = units_at(&v, &["guest", "br"]);
    let u = &units["40-host0.network"];
    assert!(u.contains("Address=10.100.0.2/24\n"), "{u}");
    if v.get("units").is_some() {
        assert!(u.contains("[Route]\nGateway=10.100.0.1\n"), "{u}");
        assert!(u.contains("[Route]\nGateway=fd00::1\n"), "{u}");
    } else {
        eprintln!("note: the guest's networking options are not rendered by this harness");
    }
}

/// Issue 9: a hostBridge computed from the host's own options through a `let` binding is
/// carried as Nix; evaluated in the host configuration by the module, it is the bridge legacy
/// used (`Bridge=` in the rendered .nspawn), and no host-side ve- unit appears.
#[test]
fn computed_host_bridge_evaluates_in_the_host_configuration() {
    let report = dry_run(
        r#"{ config, lib, ... }:
let
  cfg = config.lab.net;
in
{
  options.lab.net.bridge = lib.mkOption { type = lib.types.str; };
  config.containers.web = {
    privateNetwork = true;
    hostBridge = cfg.bridge;
    localAddress = "10.5.0.2/24";
    config = { networking.defaultGateway = "10.5.0.1"; };
  };
}"#,
    );
    let c = container(&report, "web");
    let needs: Vec<&Value> = c["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|w| w["category"] == "needs-human")
        .collect();
    assert!(needs.is_empty(), "{needs:#?}");
    assert!(
        codes(c).iter().any(|w| w == "host-bridge-copied-as-nix"),
        "{:?}",
        codes(c)
    );
    let Some(v) = module_eval_in(
        &report,
        r#"{ lib, ... }: {
  imports = [ ./containers.nix ];
  options.lab.net.bridge = lib.mkOption { type = lib.types.str; };
  config = { lab.net.bridge = "br-lab"; networking.useNetworkd = true; };
}
"#,
    ) else {
        return;
    };
    let nspawn = v["nspawn"]["web"].as_str().unwrap();
    assert!(nspawn.contains("Bridge=br-lab\n"), "{nspawn}");
    let host = units_at(&v, &["network"]);
    assert!(
        !host.keys().any(|k| k.contains("ve-web")),
        "no host side for a bridge: {host:?}"
    );
    let guest = units_at(&v, &["guest", "web"]);
    let u = &guest["40-host0.network"];
    assert!(u.contains("Address=10.5.0.2/24\n"), "{u}");
    if v.get("units").is_some() {
        assert!(u.contains("[Route]\nGateway=10.5.0.1\n"), "{u}");
    }
}

/// Issue 9: a bind mount whose mount point is computed and written as a dotted path is carried
/// as Nix, merged with the literal ones, and evaluates in the host configuration to the mounts
/// legacy had (the secret's path, read-only, on both sides).
#[test]
fn dotted_computed_bind_mount_evaluates_in_the_host_configuration() {
    let report = dry_run(
        r#"{ config, lib, ... }:
let
  secret = "${config.lab.secretPath}";
in
{
  options.lab.secretPath = lib.mkOption { type = lib.types.str; };
  config.containers.web = {
    bindMounts."${secret}".isReadOnly = true;
    bindMounts."/data" = { hostPath = "/srv/data"; isReadOnly = false; };
    config = { };
  };
}"#,
    );
    let c = container(&report, "web");
    let needs: Vec<&Value> = c["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|w| w["category"] == "needs-human")
        .collect();
    assert!(needs.is_empty(), "{needs:#?}");
    let Some(v) = module_eval_in(
        &report,
        r#"{ lib, ... }: {
  imports = [ ./containers.nix ];
  options.lab.secretPath = lib.mkOption { type = lib.types.str; };
  config.lab.secretPath = "/run/secrets/api";
}
"#,
    ) else {
        return;
    };
    let nspawn = v["nspawn"]["web"].as_str().unwrap();
    assert!(
        nspawn.contains("BindReadOnly=/run/secrets/api\n")
            && nspawn.contains("Bind=/srv/data:/data\n"),
        "{nspawn}"
    );
}

/// Issue 9: addresses computed by Nix code (module arguments here, as `specialArgs` give
/// them; one end literal) are carried as Nix and evaluate in the host configuration to the
/// point-to-point pair legacy had: each end's /32 with the other as peer, checked with real
/// networkd in network namespaces.
#[test]
fn computed_addresses_evaluate_to_the_legacy_pair() {
    let report = dry_run(
        r#"{ hostAddress, guestIp, guestIp6, ... }: {
  containers.calc = {
    privateNetwork = true;
    hostAddress = hostAddress;
    localAddress = guestIp;
    hostAddress6 = "fc00::1";
    localAddress6 = "${guestIp6}";
    config = { };
  };
}"#,
    );
    let c = container(&report, "calc");
    let needs: Vec<&Value> = c["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|w| w["category"] == "needs-human")
        .collect();
    assert!(needs.is_empty(), "{needs:#?}");
    assert_eq!(
        codes(c)
            .iter()
            .filter(|w| *w == "addresses-copied-as-nix")
            .count(),
        3,
        "{:?}",
        codes(c)
    );
    let Some(v) = module_eval_in(
        &report,
        r#"{ ... }: {
  imports = [ ./containers.nix ];
  _module.args = { hostAddress = "10.7.0.1"; guestIp = "10.7.0.2"; guestIp6 = "fd07::2"; };
  networking.useNetworkd = true;
}
"#,
    ) else {
        return;
    };
    let host = &units_at(&v, &["network"])["20-ve-calc.network"];
    assert!(
        host.contains("Address=10.7.0.1/32\nPeer=10.7.0.2/32\n"),
        "{host}"
    );
    assert!(
        host.contains("Address=fc00::1/128\nPeer=fd07::2/128\n"),
        "{host}"
    );
    let guests = vec![(
        "ve-calc",
        units_at(&v, &["guest", "calc"]),
        "/bin/busybox ping -c 1 -W 3 10.7.0.1 && /bin/busybox ping -c 1 -W 3 fc00::1",
    )];
    let Some((host_state, g)) = networkd_net(&units_at(&v, &["network"]), &guests, 5) else {
        return;
    };
    assert!(
        host_state.contains("10.7.0.2 dev ve-calc proto kernel scope link src 10.7.0.1"),
        "{host_state}"
    );
    assert!(
        g[0].probe.contains("exit=0"),
        "{}\n--- guest\n{}\n--- host\n{host_state}",
        g[0].probe,
        g[0].state
    );
}
