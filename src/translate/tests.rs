//! Behaviour tests beyond the per-row examples: the decisions that are easy to get wrong
//! (design §4) and every warning the examples do not reach.

use super::example::example_container;
use super::mapping::{check_expectations, outcome};
use super::network::choose_prefix;
use super::*;
use crate::legacy::{NixExpr, Origin, SourceKind, Sourced};

fn ctx() -> Context {
    Context {
        output_file: PathBuf::from("/etc/nixos/nspawn-containers.nix"),
    }
}

fn run(src: &str) -> Instance {
    translate(&example_container(src).unwrap(), &ctx())
}

fn assert_has(i: &Instance, expect: &[&str]) {
    let lines = outcome(i);
    let failed = check_expectations(&lines, expect);
    assert!(
        failed.is_empty(),
        "missing {failed:?}\ngot:\n{}",
        lines.join("\n")
    );
}

fn warning<'a>(i: &'a Instance, code: &str) -> &'a crate::warnings::Warning {
    i.warnings
        .iter()
        .find(|w| w.code == code)
        .unwrap_or_else(|| panic!("no {code} warning in {:#?}", i.warnings))
}

#[test]
fn prefixes_for_p2p_pairs() {
    let c = |h, l| choose_prefix(h, l).unwrap();
    // The usual 10.233.N.1 / .2 pair: a /30.
    let p = c("10.233.1.1", "10.233.1.2");
    assert_eq!(
        (p.host.as_str(), p.local.as_str()),
        ("10.233.1.1/30", "10.233.1.2/30")
    );
    assert!(p.reason.unwrap().contains("10.233.1.0/30"));
    // A /31 pair (no network/broadcast address in a /31).
    let p = c("192.168.100.10", "192.168.100.11");
    assert_eq!(p.host, "192.168.100.10/31");
    // .1 and .3: .3 is the /30 broadcast, so a /29.
    assert_eq!(c("10.0.0.1", "10.0.0.3").host, "10.0.0.1/29");
    // Far apart: the common prefix, widened until both are usable.
    assert_eq!(c("10.0.0.1", "10.0.1.1").local, "10.0.1.1/23");
    // Given prefixes that fit are kept, silently.
    let p = c("10.0.0.1/24", "10.0.0.5/24");
    assert_eq!((p.host.as_str(), p.reason), ("10.0.0.1/24", None));
    // A prefix given on one side is used for both, and said.
    let p = c("10.0.0.1/24", "10.0.0.5");
    assert_eq!(p.local, "10.0.0.5/24");
    assert!(p.reason.unwrap().contains("hostAddress"));
    // A given /32 is the legacy p2p form: a subnet is chosen.
    assert_eq!(c("10.0.0.1/32", "10.0.0.2/32").host, "10.0.0.1/30");
    // IPv6: /127 pair or the common prefix widened past the subnet-router anycast address.
    assert_eq!(c("fc00::2", "fc00::3").host, "fc00::2/127");
    assert_eq!(c("fc00::1", "fc00::2").host, "fc00::1/126");
    assert!(choose_prefix("10.0.0.1", "10.0.0.1").is_err());
    assert!(choose_prefix("10.0.0.1", "fc00::1").is_err());
    assert!(choose_prefix("10.0.0.x", "10.0.0.1").is_err());
    assert!(choose_prefix("10.0.0.1/33", "10.0.0.2").is_err());
}

#[test]
fn every_container_gets_explicit_private_users_private_and_veth() {
    for src in [
        "{ }",
        r#"{ privateNetwork = true; hostAddress = "10.0.0.1"; localAddress = "10.0.0.2"; }"#,
        r#"{ macvlans = [ "eth1" ]; }"#,
    ] {
        let i = run(src);
        let lines = outcome(&i);
        for key in [
            "[Exec] PrivateUsers=",
            "[Network] Private=",
            "[Network] VirtualEthernet=",
            "[Exec] Boot=no",
        ] {
            assert!(
                lines.iter().any(|l| l.starts_with(key)),
                "{src}: no {key}\n{}",
                lines.join("\n")
            );
        }
    }
}

#[test]
fn host_network_ignores_addresses_and_ports_with_warnings() {
    let i = run(
        r#"{ hostAddress = "10.0.0.1"; localAddress = "10.0.0.2"; hostBridge = "br0";
             forwardPorts = [ { hostPort = 80; } ]; localMacAddress = "02:00:00:00:00:01"; }"#,
    );
    assert_has(
        &i,
        &[
            "instance.network = null",
            "[Network] Private=no",
            "[Network] VirtualEthernet=no",
            "warning forward-ports-ignored",
            "warning addresses-without-private-network",
            "!~ [Network] Port=",
            "!~ Bridge=",
        ],
    );
    let n = i
        .warnings
        .iter()
        .filter(|w| w.code == "addresses-without-private-network")
        .count();
    assert_eq!(n, 4, "one per option: {:#?}", i.warnings);
}

#[test]
fn bridge_without_prefix_is_reported() {
    let i = run(r#"{ privateNetwork = true; hostBridge = "br0"; localAddress = "192.168.1.20"; }"#);
    assert_has(
        &i,
        &[
            "instance.network.v4.static.containerPool = [ \"192.168.1.20/32\" ]",
            "warning bridge-address-without-prefix",
            "!warning p2p-prefix-chosen",
        ],
    );
    let w = warning(&i, "bridge-address-without-prefix");
    assert_eq!(w.option, "containers.web.localAddress");
    assert_eq!(
        w.file.as_deref(),
        Some(std::path::Path::new("/etc/nixos/configuration.nix"))
    );
    assert!(
        w.message.contains("add the bridge's prefix"),
        "{}",
        w.message
    );
}

#[test]
fn invalid_addresses_are_not_translated() {
    let i =
        run(r#"{ privateNetwork = true; hostAddress = "10.0.0.300"; localAddress = "10.0.0.2"; }"#);
    assert_has(
        &i,
        &[
            "warning invalid-address",
            "!~ static.hostAddresses",
            "!~ static.containerPool",
        ],
    );
}

#[test]
fn unresolved_options_are_reported_once() {
    let mut c = example_container(
        r#"{ privateNetwork = true; hostAddress = "10.0.0.1"; localAddress = "10.0.0.2"; timeoutStartSec = cfg.timeout; }"#,
    )
    .unwrap();
    // The reader reports it (`nix-unresolved-value`); the translator does not again.
    let i = translate(&c, &ctx());
    assert_eq!(
        c.warnings
            .iter()
            .chain(&i.warnings)
            .filter(|w| w.code == "unresolved-expression" || w.code == "nix-unresolved-value")
            .count(),
        1,
        "{:#?}",
        i.warnings
    );
    // A source that did not report it (evaluated JSON, say): the translator does, once.
    c.warnings.retain(|w| w.code != "nix-unresolved-value");
    let i = translate(&c, &ctx());
    assert_eq!(
        i.warnings
            .iter()
            .filter(|w| w.code == "unresolved-expression")
            .count(),
        1,
        "{:#?}",
        i.warnings
    );
    assert!(
        warning(&i, "unresolved-expression")
            .message
            .contains("cfg.timeout")
    );
    // A reader that already reported it: no second warning.
    c.warnings.push(crate::warnings::Warning::new(
        &UNRESOLVED_EXPRESSION,
        "containers.web.timeoutStartSec",
        "reader said so",
    ));
    let i = translate(&c, &ctx());
    assert_eq!(
        i.warnings
            .iter()
            .filter(|w| w.code == "unresolved-expression")
            .count(),
        0
    );
    // An address that cannot be carried (no other end): reported by its row, once; the
    // known half stays as given, no prefix is invented for a pair the tool cannot see.
    let i = run(
        r#"{ privateNetwork = true; hostBridge = "br0"; hostAddress = "10.0.0.1"; localAddress = prefix + ".2"; }"#,
    );
    assert_eq!(
        i.warnings
            .iter()
            .filter(|w| w.code == "unresolved-expression")
            .count(),
        1,
        "{:#?}",
        i.warnings
    );
    assert_has(
        &i,
        &[
            "instance.network.v4.static.hostAddresses = [ \"10.0.0.1/32\" ]",
            "!warning p2p-prefix-chosen",
            "instance.network.veth = true",
        ],
    );
}

#[test]
fn missing_config_throws_with_the_reason() {
    let i = run(r#"{ privateNetwork = true; }"#);
    assert_has(
        &i,
        &[
            "warning missing-system-config",
            "instance.system-config = <missing>",
        ],
    );
    let snippet = crate::render::nix::instance_snippet(&i);
    assert!(snippet.contains("system-config = throw"), "{snippet}");
    assert!(
        snippet.contains("no guest configuration was found"),
        "{snippet}"
    );
}

#[test]
fn imperative_containers_use_their_rootfs_config() {
    let i = run(
        r#"{ _kind = "imperative"; privateNetwork = true; hostAddress = "10.233.1.1"; localAddress = "10.233.1.2"; autoStart = true; }"#,
    );
    assert_eq!(i.kind, Kind::Imperative);
    assert_eq!(
        i.state.from.as_deref(),
        Some(std::path::Path::new("/var/lib/nixos-containers/web"))
    );
    assert_eq!(i.state.to, PathBuf::from("/var/lib/machines/web"));
    assert_has(
        &i,
        &[
            "instance.system-config = /var/lib/machines/web/etc/nixos/configuration.nix",
            "warning imperative-guest-config",
            "[Exec] Parameters=/nix/var/nix/profiles/per-nspawn/web/system/init",
            "[Exec] Boot=no",
        ],
    );
    let f = crate::render::nix::imperative_file(&i);
    assert!(
        f.contains("system-config = /var/lib/machines/web/etc/nixos/configuration.nix;"),
        "{f}"
    );
    assert!(f.contains("hostAddresses = [ \"10.233.1.1/32\" ]"), "{f}");
    assert!(f.contains("pointToPoint = true;"), "{f}");
    // Not part of the host file.
    assert!(!crate::render::nix::host_file(std::slice::from_ref(&i)).contains("instances.web"));
}

#[test]
fn unparsable_guest_config_is_copied_and_reported() {
    let mut c = example_container("{ }").unwrap();
    c.options.config = Some(Sourced::new(
        NixExpr {
            text: "{ networking.interfaces.eth0 = ; }".into(),
            origin: Origin::new(SourceKind::NixSource, "/etc/nixos/c.nix", Some(3)),
            column: 1,
            free_vars: vec![],
            lets: Vec::new(),
            module_args: Vec::new(),
            guest_files: Vec::new(),
            why_free: Vec::new(),
        },
        Origin::new(SourceKind::NixSource, "/etc/nixos/c.nix", Some(3)),
    ));
    let i = translate(&c, &ctx());
    let w = warning(&i, "guest-config-unparsable");
    assert_eq!(w.line, Some(3));
    assert_eq!(
        i.spec.system_config.as_ref().unwrap().text,
        "{ networking.interfaces.eth0 = ; }"
    );
}

#[test]
fn relative_paths_and_free_variables_in_copied_code() {
    let mut c = example_container("{ }").unwrap();
    let origin = Origin::new(SourceKind::NixSource, "/etc/nixos/hosts/web.nix", Some(7));
    c.options.config = Some(Sourced::new(
        NixExpr {
            text:
                "{ imports = [ ./web-guest.nix ./${name}.nix ]; networking.hostName = hostName; }"
                    .into(),
            origin: origin.clone(),
            column: 5,
            free_vars: vec!["hostName".into(), "name".into(), "pkgs".into()],
            lets: Vec::new(),
            module_args: Vec::new(),
            guest_files: Vec::new(),
            why_free: Vec::new(),
        },
        origin,
    ));
    let i = translate(&c, &ctx());
    let text = &i.spec.system_config.as_ref().unwrap().text;
    assert!(text.contains("./hosts/web-guest.nix"), "{text}");
    assert!(text.contains("./${name}.nix"), "{text}");
    assert!(
        warning(&i, "unrewritable-path")
            .message
            .contains("./${name}.nix")
    );
    let w = warning(&i, "free-variable");
    assert!(
        w.message.contains("`hostName`")
            && w.message.contains("`name`")
            && !w.message.contains("`pkgs`"),
        "{}",
        w.message
    );
    let host = crate::render::nix::host_file(std::slice::from_ref(&i));
    assert!(host.contains("hostName,"), "{host}");
    let files = warning(&i, "guest-files-not-rewritten");
    assert!(
        files.message.contains("/etc/nixos/hosts/web-guest.nix"),
        "{}",
        files.message
    );
    // Upstream modules are not the user's files.
    let up = run(
        r#"{ config = { ... }: { imports = [ <nixpkgs/nixos/modules/profiles/minimal.nix> ]; }; }"#,
    );
    assert!(
        !up.warnings
            .iter()
            .any(|w| w.code == "guest-files-not-rewritten")
    );
}

#[test]
fn interface_and_value_checks() {
    let i = run(
        r#"{ interfaces = [ "averyveryverylongname" ]; tmpfs = [ "relative" ]; allowedDevices = [ { node = "/dev/fuse"; modifier = "rwx"; } ]; }"#,
    );
    assert_has(
        &i,
        &[
            "warning interface-name-too-long",
            "warning invalid-value",
            "!~ Interface=",
            "!~ TemporaryFileSystem=",
            "!~ DeviceAllow=",
        ],
    );
}

#[test]
fn injected_capabilities_are_never_emitted() {
    let i = run(
        r#"{ additionalCapabilities = [ "CAP_A,CAP_NET_RAW\" --system-call-filter=\"@keyring" "cap_sys_time" "all" ]; }"#,
    );
    assert_has(
        &i,
        &[
            "[Exec] Capability=CAP_SYS_TIME",
            "[Exec] Capability=all",
            "!~ CAP_NET_RAW",
            "!~ CAP_A",
            "!~ keyring",
            "warning injected-flags",
        ],
    );
    assert!(
        warning(&i, "injected-flags")
            .message
            .contains(r#""CAP_A,CAP_NET_RAW\" --system-call-filter=\"@keyring""#)
    );
}

#[test]
fn extra_flags_override_options_and_quoted_values_are_refused() {
    let i = run(
        r#"{ privateUsers = "no"; copyResolvConf = true; extraFlags = [ "-U --resolv-conf=off" "--system-call-filter=\"@x\"" "--bind" ]; }"#,
    );
    assert_has(
        &i,
        &[
            "[Exec] PrivateUsers=pick",
            "[Exec] ResolvConf=off",
            "!~ SystemCallFilter",
            "warning invalid-value",
        ],
    );
    let n = i
        .warnings
        .iter()
        .filter(|w| w.code == "invalid-value")
        .count();
    assert_eq!(n, 2, "quoted value and missing value: {:#?}", i.warnings);
}

#[test]
fn resolv_conf_follows_the_guest() {
    let resolved = run(r#"{ config = { ... }: { services.resolved.enable = true; }; }"#);
    assert_has(&resolved, &["[Exec] ResolvConf=off"]);
    let plain = run(r#"{ config = { ... }: { networking.useHostResolvConf = true; }; }"#);
    assert_has(
        &plain,
        &[
            "[Exec] ResolvConf=copy-host",
            "!~ useHostResolvConf",
            "warning use-host-resolv-conf-removed",
        ],
    );
    let off = run(r#"{ copyResolvConf = false; }"#);
    assert_has(&off, &["[Exec] ResolvConf=off"]);
    // The host's resolv.conf bind-mounted in (a legacy workaround): nspawn must not write one.
    let bound = run(r#"{ bindMounts."/etc/resolv.conf" = { hostPath = "/etc/resolv.conf"; }; }"#);
    assert_has(&bound, &["[Exec] ResolvConf=off"]);
}

#[test]
fn restart_strategy_follows_auto_start() {
    assert_has(
        &run("{ autoStart = true; }"),
        &[
            "instance.activation.strategy = \"restart\"",
            "!warning not-auto-started",
        ],
    );
    assert_has(
        &run("{ restartIfChanged = true; }"),
        &[
            "instance.activation.strategy = \"none\"",
            "warning not-auto-started",
        ],
    );
}

#[test]
fn conditions_are_kept() {
    let mut c = example_container("{ autoStart = true; }").unwrap();
    c.condition = Some(NixExpr {
        text: "config.services.web.enable".into(),
        origin: Origin::new(
            SourceKind::NixSource,
            "/etc/nixos/configuration.nix",
            Some(2),
        ),
        column: 1,
        free_vars: vec!["config".into()],
        lets: Vec::new(),
        module_args: Vec::new(),
        guest_files: Vec::new(),
        why_free: Vec::new(),
    });
    let i = translate(&c, &ctx());
    let s = crate::render::nix::instance_snippet(&i);
    assert!(s.contains("lib.mkIf (config.services.web.enable)"), "{s}");
}

#[test]
fn key_conflicts_are_detected() {
    let i = run("{ }");
    let mut raw = NspawnSettings::default();
    raw.exec.insert("Boot".into(), vec!["yes".into()]);
    let module = crate::render::nspawn::module_settings(&i.name, &i.spec);
    assert_eq!(
        crate::render::nspawn::conflicts(&module, &raw),
        vec!["Exec.Boot".to_string()]
    );
}

#[test]
fn never_panics_on_odd_input() {
    for src in [
        r#"{ privateNetwork = true; hostAddress = ""; localAddress = "/"; hostAddress6 = "::"; localAddress6 = "::"; }"#,
        r#"{ extraFlags = [ "" "-" "--" "--=" "-p" "--port=tcp:0:99999" "--rlimit=FOO" "--network-zone=averyveryverylongzone" ]; }"#,
        r#"{ bindMounts."relative" = { hostPath = "x"; }; forwardPorts = [ { protocol = "sctp"; hostPort = 1; } ]; }"#,
        r#"{ privateUsers = 0; timeoutStartSec = ""; extraVeths."" = { }; macvlans = [ "a/b" ]; }"#,
    ] {
        let i = run(src);
        let _ = crate::render::nix::instance_snippet(&i);
        let _ = crate::render::nspawn::preview(&i);
    }
}

#[test]
fn unreadable_private_network_and_auto_start() {
    let c = example_container(
        r#"{ privateNetwork = cfg.isolated; autoStart = cfg.start; hostAddress = "10.0.0.1"; localAddress = "10.0.0.2"; }"#,
    )
    .unwrap();
    let i = translate(&c, &ctx());
    assert_has(
        &i,
        &[
            "instance.network.v4.static.hostAddresses = [ \"10.0.0.1/32\" ]",
            "!warning addresses-without-private-network",
            "!warning not-auto-started",
            "instance.autoStart = false",
        ],
    );
    assert_eq!(
        c.warnings
            .iter()
            .chain(&i.warnings)
            .filter(|w| w.code == "unresolved-expression" || w.code == "nix-unresolved-value")
            .count(),
        2,
        "{:#?}",
        i.warnings
    );
    let bare = run(r#"{ privateNetwork = cfg.isolated; }"#);
    assert_has(&bare, &["instance.network = null"]);
}

#[test]
fn every_emitted_nspawn_key_is_accepted_by_nixpkgs() {
    for (sec, key) in crate::render::nspawn::MODULE_KEYS {
        assert!(
            crate::render::nspawn::nixpkgs_accepts(sec, key),
            "module key [{sec}] {key}"
        );
    }
    let mut inputs: Vec<&str> = super::mapping::MAPPINGS
        .iter()
        .map(|m| m.example.input)
        .collect();
    inputs.push(
        r#"{ extraFlags = [ "--rlimit=RLIMIT_CPU=1" "--rlimit=MEMLOCK=1" "--overlay-ro=/a:/b" "--network-ipvlan=x" "--volatile" ]; }"#,
    );
    for src in inputs {
        let i = run(src);
        let all = crate::render::nspawn::merged(&i);
        for (sec, map) in [
            ("Exec", &all.exec),
            ("Files", &all.files),
            ("Network", &all.network),
        ] {
            for k in map.keys() {
                assert!(
                    crate::render::nspawn::nixpkgs_accepts(sec, k),
                    "{src}: [{sec}] {k} is not accepted by nixpkgs"
                );
            }
        }
    }
}

// ---- issue 13: a migrated container behaves like the legacy one ----------------------------

/// 13.2: legacy put only addresses and routes on a static veth: no NAT, no forwarding, no RA.
#[test]
fn static_veth_gets_no_nat_and_no_router_advertisements() {
    let i = run(
        r#"{ privateNetwork = true; hostAddress = "10.233.1.1"; localAddress = "10.233.1.2"; }"#,
    );
    assert_has(
        &i,
        &[
            "instance.network.masquerade = false",
            "instance.network.routerAdvertisements = false",
            "!~ IPMasquerade",
            "!~ IPv6SendRA",
            "!~ DHCPServer",
        ],
    );
    let f = crate::render::nix::host_file(std::slice::from_ref(&i));
    assert!(f.contains("masquerade = false;"), "{f}");
    assert!(f.contains("routerAdvertisements = false;"), "{f}");
}

/// 13.1: a bridged container without a localAddress gets no guest host0 unit from the module,
/// so the guest's own networking.interfaces.host0 (40-host0.network) is not shadowed.
#[test]
fn bridged_container_without_address_leaves_host0_to_the_guest() {
    let i = run(
        r#"{ privateNetwork = true; hostBridge = "br0"; config = { networking.interfaces.eth0.ipv4.addresses = [ { address = "192.168.1.5"; prefixLength = 24; } ]; }; }"#,
    );
    assert_has(
        &i,
        &[
            "[Network] Bridge=br0",
            "~ networking.interfaces.host0.ipv4.addresses",
            "!~ networkd guest 40-host0.network",
            "!warning veth-without-addresses",
        ],
    );
}

/// Issue 9 (6): a point-to-point pair on a bridge is kept as legacy's container init had it:
/// the guest's /32 with the gateway as peer and an on-link default route.
#[test]
fn bridged_point_to_point_pair_keeps_the_on_link_gateway() {
    let i = run(
        r#"{ privateNetwork = true; hostBridge = "br0"; hostAddress = "192.168.1.1"; localAddress = "192.168.1.20"; }"#,
    );
    assert_has(
        &i,
        &[
            "instance.network.pointToPoint = true",
            "networkd guest 40-host0.network: [Address] Address=192.168.1.20/32",
            "networkd guest 40-host0.network: [Address] Peer=192.168.1.1/32",
            "networkd guest 40-host0.network: [Route] Gateway=192.168.1.1",
            "networkd guest 40-host0.network: [Route] GatewayOnLink=yes",
            "!warning bridge-address-without-prefix",
            "!warning p2p-prefix-chosen",
            "!~ networkd host",
        ],
    );
}

/// Pairs written with prefixes keep going through the prefix rules (and report a choice).
#[test]
fn prefixed_pair_that_needs_a_choice_still_reports_it() {
    let i = run(
        r#"{ privateNetwork = true; hostAddress = "10.0.0.1/24"; localAddress = "10.0.0.5"; }"#,
    );
    assert_has(
        &i,
        &[
            "instance.network.v4.static.containerPool = [ \"10.0.0.5/24\" ]",
            "instance.network.pointToPoint = false",
            "warning p2p-prefix-chosen",
        ],
    );
}

/// 13.3: legacy passed `--private-users=<base>` without an ownership flag: nspawn used `off`.
#[test]
fn integer_private_users_keeps_ownership_off() {
    for src in [
        r#"{ privateUsers = 65536; }"#,
        r#"{ extraFlags = [ "--private-users=65536" ]; }"#,
    ] {
        assert_has(
            &run(src),
            &[
                "[Exec] PrivateUsers=65536",
                "[Files] PrivateUsersOwnership=off",
                "!~ PrivateUsersOwnership=auto",
            ],
        );
    }
    // pick (and -U) imply auto in nspawn; an explicit ownership flag stays.
    assert_has(
        &run(r#"{ privateUsers = "pick"; }"#),
        &["[Files] PrivateUsersOwnership=auto"],
    );
    assert_has(
        &run(r#"{ extraFlags = [ "--private-users-ownership=chown" "--private-users=65536" ]; }"#),
        &["[Files] PrivateUsersOwnership=chown"],
    );
}

/// 13.4: a veth without addresses was left unconfigured by legacy; now DHCP mode, reported
/// with the way to keep the links unconfigured.
#[test]
fn veth_without_addresses_is_reported() {
    let i = run(r#"{ privateNetwork = true; localMacAddress = "02:00:00:00:00:01"; }"#);
    let w = warning(&i, "veth-without-addresses");
    assert!(w.message.contains("unconfigured"), "{}", w.message);
    assert!(
        w.message
            .contains("systemd.network.networks.\"20-ve-web\".enable = lib.mkForce false"),
        "{}",
        w.message
    );
    // Static addresses, a bridge, or addresses the reader could not read (reported as
    // unresolved-expression): nothing to report.
    for src in [
        r#"{ privateNetwork = true; hostAddress = cfg.host; localAddress = cfg.local; }"#,
        r#"{ privateNetwork = true; hostAddress = "10.0.0.1"; localAddress = "10.0.0.2"; }"#,
        r#"{ privateNetwork = true; hostBridge = "br0"; }"#,
    ] {
        assert_has(&run(src), &["!warning veth-without-addresses"]);
    }
}

/// 13.5: forwardPorts on a private network without a veth: the module would reject them; they
/// are dropped with the raw keys that keep nspawn's forwarding. `-p` without a private network
/// names the real reason.
#[test]
fn ports_without_a_veth_are_dropped_with_the_raw_alternative() {
    let i = run(
        r#"{ privateNetwork = true; macvlans = [ "eth1" ]; forwardPorts = [ { hostPort = 8080; containerPort = 80; } ]; }"#,
    );
    assert_has(
        &i,
        &[
            "!~ [Network] Port=",
            "!~ instance.forwardPorts",
            "warning forward-ports-without-veth",
        ],
    );
    let w = warning(&i, "forward-ports-without-veth");
    assert!(
        w.message
            .contains("systemd.nspawn.web.networkConfig.Port = [ \"tcp:8080:80\" ];"),
        "{}",
        w.message
    );
    let i = run(r#"{ extraFlags = [ "-p" "8080" ]; }"#);
    let w = warning(&i, "forward-ports-ignored");
    assert!(
        w.message.contains("needs a private network"),
        "{}",
        w.message
    );
    assert!(!w.message.contains("veth"), "{}", w.message);
}

/// 13.6: an ephemeral container's old state directory is not the new snapshot source.
#[test]
fn ephemeral_container_starts_empty_as_legacy_did() {
    for src in [r#"{ ephemeral = true; }"#, r#"{ extraFlags = [ "-x" ]; }"#] {
        let i = run(src);
        assert_eq!(i.state.from, None, "{src}");
        assert_has(
            &i,
            &["[Exec] Ephemeral=yes", "state - -> /var/lib/machines/web"],
        );
    }
    let plan = crate::plan::plan(
        &[run(r#"{ ephemeral = true; }"#)],
        &|_| None,
        &|_| None,
        std::path::Path::new("/etc/nixos/nspawn-containers.nix"),
    );
    assert!(
        plan.containers[0]
            .steps
            .iter()
            .all(|s| !matches!(s, crate::plan::Step::CopyState { .. })),
        "{plan:?}"
    );
}

/// 13.8: legacy's container@.service restarted a crashed container.
#[test]
fn every_container_restarts_on_failure_like_legacy() {
    for src in [r#"{ }"#, r#"{ privateNetwork = true; autoStart = true; }"#] {
        assert_has(&run(src), &["instance.restart = \"on-failure\""]);
    }
}

/// 13.10: a zone named in extraFlags is declared in the emitted file, once for all members.
#[test]
fn network_zone_is_declared_once_and_reported() {
    let mut a = run(r#"{ extraFlags = [ "--network-zone=lab" ]; }"#);
    let mut b = a.clone();
    b.name = "db".into();
    a.name = "web".into();
    let f = crate::render::nix::host_file(&[a.clone(), b]);
    assert_eq!(
        f.matches("nixos.containers.zones.lab = { };").count(),
        1,
        "{f}"
    );
    assert!(crate::render::nix::instance_snippet(&a).contains("nixos.containers.zones.lab = { };"));
    let w = warning(&a, "network-zone-declared");
    assert!(w.message.contains("v4.addrPool = [ ]"), "{}", w.message);
}

/// 13.11: a .conf without COPY_RESOLV_CONF (nixos-container create) means nothing was copied.
#[test]
fn conf_without_copy_resolv_conf_gets_resolv_conf_off() {
    let mut c = example_container(r#"{ _kind = "imperative"; }"#).unwrap();
    c.sources = vec![SourceKind::Conf];
    let i = translate(&c, &ctx());
    assert_has(&i, &["[Exec] ResolvConf=off"]);
    assert!(
        i.applied
            .iter()
            .any(|a| a.target.contains("no COPY_RESOLV_CONF=1")),
        "{:?}",
        i.applied
    );
    // Read from Nix without the option: its default (true) applies.
    assert_has(&run(r#"{ }"#), &["[Exec] ResolvConf=copy-host"]);
}

/// 13.12: legacy's timeoutStartSec defaults to 1min; the stock unit's would be 90 s.
#[test]
fn unset_timeout_start_sec_keeps_the_legacy_default() {
    assert_has(&run(r#"{ }"#), &["instance.timeoutStartSec = \"1min\""]);
    assert_has(
        &run(r#"{ timeoutStartSec = "3min"; }"#),
        &["instance.timeoutStartSec = \"3min\""],
    );
}

/// 13.1: a string defaultGateway (refused by NixOS under networkd, which the container now
/// runs; legacy's scripted guest needed no interface) gets the container's only link, and the
/// report says so; with an interface it is left alone.
#[test]
fn guest_gateway_gets_the_only_link() {
    let i = run(
        r#"{ privateNetwork = true; hostBridge = "br0"; localAddress = "192.168.1.20/24"; config = { networking.defaultGateway = "192.168.1.1"; networking.interfaces.eth0.mtu = 1400; }; }"#,
    );
    assert_has(
        &i,
        &[
            "warning guest-gateway-interface-added",
            "!warning guest-gateway-without-interface",
            "~ networking.defaultGateway = { address = \"192.168.1.1\"; interface = \"host0\"; };",
            "~ networking.interfaces.host0.mtu = 1400;",
        ],
    );
    let w = warning(&i, "guest-gateway-interface-added");
    assert!(!w.needs_human());
    assert!(
        w.message
            .contains("`networking.defaultGateway = \"192.168.1.1\";` → `networking.defaultGateway = { address = \"192.168.1.1\"; interface = \"host0\"; };`"),
        "{}",
        w.message
    );
    // The config row's own report is said once (the row ran twice).
    let n = i
        .warnings
        .iter()
        .filter(|w| w.code == "eth0-reference")
        .count();
    assert_eq!(n, 1, "{:#?}", i.warnings);
    let i = run(
        r#"{ privateNetwork = true; hostBridge = "br0"; config = { networking.defaultGateway = { address = "192.168.1.1"; interface = "eth0"; }; }; }"#,
    );
    assert_has(
        &i,
        &[
            "!warning guest-gateway-without-interface",
            "!warning guest-gateway-interface-added",
        ],
    );
    // A macvlan-only container: its one link is mv-<if>.
    let i = run(
        r#"{ privateNetwork = true; macvlans = [ "eth1" ]; config = { networking.defaultGateway = "192.168.1.1"; }; }"#,
    );
    assert_has(
        &i,
        &["~ networking.defaultGateway = { address = \"192.168.1.1\"; interface = \"mv-eth1\"; };"],
    );
    // Host networking: the guest keeps scripted networking; nothing to do, nothing said.
    let i = run(r#"{ config = { networking.defaultGateway = "192.168.1.1"; }; }"#);
    assert_has(
        &i,
        &[
            "~ networking.defaultGateway = \"192.168.1.1\";",
            "!warning guest-gateway-without-interface",
            "!warning guest-gateway-interface-added",
        ],
    );
}

/// Where the gateway's link cannot be known, or the module would add a second default route,
/// the gateway stays as written and needs a human, with the reason.
#[test]
fn guest_gateway_without_a_single_link_needs_a_human() {
    let cases = [
        // A veth and a macvlan: two links (the macvlan from extraFlags, which run last).
        (
            r#"{ privateNetwork = true; hostBridge = "br0"; localAddress = "10.0.0.2/24"; extraFlags = [ "--network-macvlan=eth1" ]; config = { networking.defaultGateway = "10.0.0.1"; }; }"#,
            "several links (host0, mv-eth1)",
        ),
        // Legacy's init routed by default via hostAddress; the guest's gateway replaced it.
        (
            r#"{ privateNetwork = true; hostAddress = "10.0.0.1"; localAddress = "10.0.0.2"; config = { networking.defaultGateway = "10.0.0.254"; }; }"#,
            "hostAddress = 10.0.0.1",
        ),
        (
            r#"{ privateNetwork = true; extraFlags = [ "--network-veth" ]; config = { networking.defaultGateway = "10.0.0.254"; }; }"#,
            "DHCP on host0",
        ),
        (
            r#"{ privateNetwork = true; config = { networking.defaultGateway = "10.0.0.254"; }; }"#,
            "no network link besides lo",
        ),
    ];
    for (src, why) in cases {
        let i = run(src);
        assert_has(
            &i,
            &[
                "warning guest-gateway-without-interface",
                "!warning guest-gateway-interface-added",
                "~ networking.defaultGateway = \"",
            ],
        );
        let w = warning(&i, "guest-gateway-without-interface");
        assert!(w.needs_human());
        assert!(
            w.message.contains(why) && w.message.contains("defaultGateway = \"10.0.0."),
            "{src}: {}",
            w.message
        );
    }
    // IPv6 only: a v4 hostAddress is no conflict for defaultGateway6.
    let i = run(
        r#"{ privateNetwork = true; hostAddress = "10.0.0.1"; localAddress = "10.0.0.2"; localAddress6 = "fd00::2/64"; config = { networking.defaultGateway6 = "fd00::1"; }; }"#,
    );
    assert_has(&i, &["warning guest-gateway-interface-added"]);
}

/// A carried `let` string and an imported guest file get the rule too; the file is copied
/// next to the output, rewritten, and the config imports the copy.
#[test]
fn guest_gateway_in_carried_lets_and_imported_files() {
    let mut c = example_container(
        r#"{ privateNetwork = true; hostBridge = "br0"; localAddress = "10.0.0.2/24"; }"#,
    )
    .unwrap();
    let origin = Origin::new(SourceKind::NixSource, "/etc/nixos/hosts/web.nix", Some(7));
    c.options.config = Some(Sourced::new(
        NixExpr {
            text: "{ imports = [ ./net.nix ]; networking.defaultGateway = gw; }".into(),
            origin: origin.clone(),
            column: 5,
            free_vars: vec![],
            lets: vec![crate::legacy::LetBinding {
                name: "gw".into(),
                text: r#"gw = "10.0.0.1";"#.into(),
                line: 2,
            }],
            module_args: Vec::new(),
            guest_files: vec![crate::legacy::GuestFile {
                path: PathBuf::from("/etc/nixos/hosts/net.nix"),
                content: Ok("{\n  networking.defaultGateway6 = \"fd00::1\";\n}\n".into()),
            }],
            why_free: Vec::new(),
        },
        origin,
    ));
    let i = translate(&c, &ctx());
    let text = &i.spec.system_config.as_ref().unwrap().text;
    assert!(
        text.contains(r#"networking.defaultGateway = { address = gw; interface = "host0"; };"#),
        "{text}"
    );
    let copy = PathBuf::from("/etc/nixos/nspawn-guests/web/etc/nixos/hosts/net.nix");
    assert!(
        text.contains("./nspawn-guests/web/etc/nixos/hosts/net.nix"),
        "{text}"
    );
    assert_eq!(
        i.guest_files.get(&copy).map(String::as_str),
        Some(
            "{\n  networking.defaultGateway6 = { address = \"fd00::1\"; interface = \"host0\"; };\n}\n"
        )
    );
    let w = warning(&i, "guest-gateway-interface-added");
    assert!(
        w.message.contains("/etc/nixos/hosts/web.nix:7:")
            && w.message.contains("/etc/nixos/hosts/net.nix:2:"),
        "{}",
        w.message
    );
    assert_has(&i, &["!warning guest-gateway-without-interface"]);
    // Real Nix parses what is written.
    let dir = tempfile::tempdir().unwrap();
    for (name, t) in [
        ("config.nix", text.clone()),
        ("net.nix", i.guest_files[&copy].clone()),
    ] {
        let p = dir.path().join(name);
        std::fs::write(&p, format!("let gw = \"10.0.0.1\"; in {t}")).unwrap();
        let out = std::process::Command::new("nix-instantiate")
            .arg("--parse")
            .arg(&p)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Issue 9 (6) for extraVeths: a pair without prefixes stays point-to-point on both ends, no
/// prefix is chosen; the emitted Nix carries the sections through extraConfig.
#[test]
fn extra_veth_pairs_stay_point_to_point() {
    let i = run(
        r#"{ privateNetwork = true; extraVeths.web-ext = { hostAddress = "10.9.0.1"; localAddress = "10.9.9.9"; }; }"#,
    );
    assert_has(
        &i,
        &[
            "networkd host 30-web-ext.network: [Address] Address=10.9.0.1/32",
            "networkd host 30-web-ext.network: [Address] Peer=10.9.9.9/32",
            "networkd guest 30-web-ext.network: [Address] Address=10.9.9.9/32",
            "networkd guest 30-web-ext.network: [Address] Peer=10.9.0.1/32",
            "!warning p2p-prefix-chosen",
        ],
    );
    let f = crate::render::nix::host_file(std::slice::from_ref(&i));
    assert!(
        f.contains(r#"extraConfig = "[Address]\nAddress=10.9.0.1/32\nPeer=10.9.9.9/32\n\n";"#),
        "{f}"
    );
}

/// Half a point-to-point pair: the end that is set keeps its /32, and what legacy's scripts
/// did towards the missing end is reported as such (not as a prefix choice).
#[test]
fn half_pairs_are_reported_as_incomplete() {
    let i = run(r#"{ privateNetwork = true; hostAddress = "10.0.0.1"; }"#);
    assert_has(
        &i,
        &[
            "instance.network.v4.static.hostAddresses = [ \"10.0.0.1/32\" ]",
            "warning address-pair-incomplete",
            "!warning p2p-prefix-chosen",
        ],
    );
    assert!(
        warning(&i, "address-pair-incomplete")
            .message
            .contains("interface = \"host0\"")
    );
    let i = run(r#"{ privateNetwork = true; localAddress6 = "fd00::2"; }"#);
    assert_has(
        &i,
        &[
            "instance.network.v6.static.containerPool = [ \"fd00::2/128\" ]",
            "warning address-pair-incomplete",
        ],
    );
}

/// Issue 9: the host file's `let` bindings travel with the copied text (relative paths in them
/// rewritten too), module arguments are noted, not left to a human, and the generated file
/// parses with real Nix (which also resolves every name).
#[test]
fn carried_let_bindings_and_module_arguments() {
    let mut c = example_container("{ }").unwrap();
    let origin = Origin::new(SourceKind::NixSource, "/etc/nixos/hosts/web.nix", Some(9));
    c.options.config = Some(Sourced::new(
        NixExpr {
            text: "{ imports = [ common ]; networking.hostName = name; environment.etc.x.text = inputs.self.rev; }"
                .into(),
            origin: origin.clone(),
            column: 5,
            free_vars: vec!["inputs".into()],
            lets: vec![
                crate::legacy::LetBinding {
                    name: "name".into(),
                    text: r#"name = "web";"#.into(),
                    line: 2,
                },
                crate::legacy::LetBinding {
                    name: "common".into(),
                    text: "common = ./common.nix;".into(),
                    line: 3,
                },
            ],
            module_args: vec!["inputs".into()],
            guest_files: Vec::new(),
            why_free: Vec::new(),
        },
        origin,
    ));
    let i = translate(&c, &ctx());
    assert!(
        !i.warnings.iter().any(|w| w.code == "free-variable"),
        "{:?}",
        i.warnings
    );
    let w = warning(&i, "module-argument");
    assert!(!w.needs_human());
    assert!(w.message.contains("`inputs`"), "{}", w.message);
    let lets = &i.spec.system_config.as_ref().unwrap().lets;
    assert_eq!(lets[1].text, "common = ./hosts/common.nix;");
    let host = crate::render::nix::host_file(std::slice::from_ref(&i));
    assert!(host.contains(r#"name = "web";"#), "{host}");
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("host.nix");
    std::fs::write(&p, &host).unwrap();
    let out = std::process::Command::new("nix-instantiate")
        .arg("--parse")
        .arg(&p)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{host}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Issue 9 (measured on public hosts): bind mounts computed by Nix code (a sops secret's path,
/// a module argument) needed a human although the module takes them unchanged. They are copied
/// as Nix, merged with the literal ones, and reported as a changed meaning, not as unread.
#[test]
fn computed_bind_mounts_are_copied_verbatim() {
    let c = example_container(
        r#"{ bindMounts."/run/secrets/x" = { hostPath = config.sops.secrets.x.path; };
             bindMounts."/srv" = { hostPath = "/data"; isReadOnly = false; };
             extraFlags = [ "--bind=/dev/fuse" ]; config = { }; }"#,
    )
    .unwrap();
    let i = translate(&c, &ctx());
    let human: Vec<_> = c
        .warnings
        .iter()
        .chain(&i.warnings)
        .filter(|w| w.needs_human())
        .map(|w| w.code)
        .collect();
    assert!(human.is_empty(), "{human:?}");
    let copied = warning(&i, "bind-mounts-copied-as-nix");
    assert!(
        copied.message.contains("config.sops.secrets.x.path"),
        "{copied:?}"
    );
    let e = i.spec.bind_mounts_expr.as_ref().expect("copied expression");
    assert!(
        e.text.contains("hostPath = (config.sops.secrets.x.path)"),
        "{}",
        e.text
    );
    // The literal half of the same option travels inside the expression, not twice.
    assert!(e.text.contains("\"/data\""), "{}", e.text);
    assert_eq!(
        i.spec
            .bind_mounts
            .iter()
            .map(|b| b.mount_point.as_str())
            .collect::<Vec<_>>(),
        ["/dev/fuse"]
    );
    // Paths known only on evaluation get no RequiresMountsFor=; the literal flag's does.
    assert_has(
        &i,
        &[
            "drop-in [Unit] RequiresMountsFor=/dev/fuse",
            "!drop-in [Unit] RequiresMountsFor=/data",
        ],
    );
    let nix = crate::render::nix::instance_snippet(&i);
    assert!(nix.contains("bindMounts = lib.mkMerge ["), "{nix}");
    assert!(nix.contains("config.sops.secrets.x.path"), "{nix}");
}

/// A computed bind mount onto /etc/resolv.conf still provides the file: nspawn must not write
/// one there too.
#[test]
fn computed_resolv_conf_bind_turns_resolv_conf_off() {
    let i = run(
        r#"{ bindMounts."/etc/resolv.conf" = { hostPath = config.sops.secrets.r.path; }; config = { }; }"#,
    );
    assert!(i.spec.bind_mounts_expr.is_some());
    assert_has(&i, &["[Exec] ResolvConf=off"]);
}

/// Bind mounts the source states literally are still read as data (no copied expression).
#[test]
fn literal_bind_mounts_stay_data() {
    let i = run(
        r#"{ bindMounts."/srv" = { hostPath = "/data"; isReadOnly = false; }; config = { }; }"#,
    );
    assert!(i.spec.bind_mounts_expr.is_none());
    assert!(
        i.warnings
            .iter()
            .all(|w| w.code != "bind-mounts-copied-as-nix")
    );
    let nix = crate::render::nix::instance_snippet(&i);
    assert!(!nix.contains("mkMerge"), "{nix}");
}

/// Issue 9: a hostBridge computed by Nix code is carried as Nix into network.bridge (the
/// generated module is evaluated by the same host configuration), not left to a human; the
/// container is bridged (no host-side ve- unit, no DHCP), and the preview's limit is said.
#[test]
fn computed_host_bridge_is_carried_as_nix() {
    let i = run(
        r#"{ privateNetwork = true; hostBridge = config.my.bridge; localAddress = "10.0.0.2/24"; config = { networking.defaultGateway = "10.0.0.1"; }; }"#,
    );
    assert_has(
        &i,
        &[
            "instance.network.bridge = (config.my.bridge)",
            "warning host-bridge-copied-as-nix",
            "!warning unresolved-expression",
            "!~ networkd host",
            "!~ DHCP",
            "instance.network.v4.static.containerPool = [ \"10.0.0.2/24\" ]",
            // The only link is still host0: the gateway rule applies.
            "warning guest-gateway-interface-added",
        ],
    );
    let w = warning(&i, "host-bridge-copied-as-nix");
    assert!(!w.needs_human());
    assert!(
        w.message.contains("`config.my.bridge`") && w.message.contains("no Bridge= line"),
        "{}",
        w.message
    );
    let s = crate::render::nix::instance_snippet(&i);
    assert!(s.contains("bridge = (config.my.bridge);"), "{s}");
    // Without privateNetwork, legacy ignored it; so does the translation.
    let i = run(r#"{ hostBridge = config.my.bridge; }"#);
    assert_has(
        &i,
        &[
            "instance.network = null",
            "warning addresses-without-private-network",
            "!warning host-bridge-copied-as-nix",
        ],
    );
    // `--network-bridge=` in extraFlags (run last) names the bridge instead.
    let i = run(
        r#"{ privateNetwork = true; hostBridge = config.my.bridge; extraFlags = [ "--network-bridge=br9" ]; }"#,
    );
    assert_has(
        &i,
        &[
            "instance.network.bridge = \"br9\"",
            "!instance.network.bridge = (config.my.bridge)",
        ],
    );
}

/// Item 3 of issue 9: the free-variable warning names the limit the reader found for each name
/// (not a list of three possible ones), and how to provide the value.
#[test]
fn free_variable_warning_says_which_limit() {
    let mut c = example_container("{ }").unwrap();
    let origin = Origin::new(SourceKind::NixSource, "/etc/nixos/mc.nix", Some(9));
    let mut e = NixExpr::plain(
        "{ networking.hostName = serverName; x = other; }".into(),
        origin.clone(),
        1,
        vec!["other".into(), "serverName".into()],
    );
    e.why_free = vec![(
        "serverName".into(),
        "a parameter of the function `{serverName}: …` at line 1, whose value comes from the code that calls it".into(),
    )];
    c.options.config = Some(Sourced::new(e, origin));
    let i = translate(&c, &ctx());
    let m = &warning(&i, "free-variable").message;
    assert!(
        m.contains("`serverName` (a parameter of the function `{serverName}: …` at line 1")
            && m.contains("`other` (bound nowhere in this file)")
            && m.contains("_module.args.other = …;"),
        "{m}"
    );
}

/// Issue 9: a computed address is carried as Nix where the module can take it as given (a
/// plain veth with both ends: network.pointToPoint; a bridge: the gateway, or an address whose
/// text shows its prefix); elsewhere it stays a value the translation needs, with the reason.
#[test]
fn computed_addresses_are_carried_where_the_module_takes_them_as_given() {
    let i = run(
        r#"{ privateNetwork = true; hostAddress = config.lab.host; localAddress = "10.0.0.2"; }"#,
    );
    assert_has(
        &i,
        &[
            "instance.network.pointToPoint = true",
            "instance.network.v4.static.hostAddresses += (config.lab.host)",
            "instance.network.v4.static.containerPool = [ \"10.0.0.2/32\" ]",
            "warning addresses-copied-as-nix",
            "!warning unresolved-expression",
            "!~ DHCP",
        ],
    );
    assert!(!warning(&i, "addresses-copied-as-nix").needs_human());
    let s = crate::render::nix::instance_snippet(&i);
    assert!(s.contains("(config.lab.host)"), "{s}");
    // On a bridge: the gateway, and an address whose text shows its prefix.
    let i = run(
        r#"{ privateNetwork = true; hostBridge = "br0"; hostAddress = config.gw; localAddress = "${config.ip}/24"; }"#,
    );
    assert_has(
        &i,
        &[
            "instance.network.pointToPoint = false",
            "instance.network.v4.static.hostAddresses += (config.gw)",
            "instance.network.v4.static.containerPool += (\"${config.ip}/24\")",
            "!warning unresolved-expression",
        ],
    );
    // Not carried: the reason is said, as a value the translation needs.
    for (src, why) in [
        (
            r#"{ privateNetwork = true; hostBridge = "br0"; localAddress = config.ip; }"#,
            "needs the bridge's prefix",
        ),
        (
            r#"{ privateNetwork = true; hostAddress = config.ip; }"#,
            "the other end (localAddress) is not set",
        ),
    ] {
        let i = run(src);
        assert_has(
            &i,
            &[
                "warning unresolved-expression",
                "!warning addresses-copied-as-nix",
            ],
        );
        let m = &warning(&i, "unresolved-expression").message;
        assert!(m.contains(why), "{src}: {m}");
    }
    // Without privateNetwork legacy ignored it, and so does the translation.
    assert_has(
        &run(r#"{ hostAddress = config.ip; localAddress = "10.0.0.2"; }"#),
        &[
            "warning addresses-without-private-network",
            "!warning unresolved-expression",
        ],
    );
}
