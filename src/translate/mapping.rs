//! THE mapping table: one row per legacy `containers.<name>` option and per known `extraFlags`
//! flag. The translator runs the option rows in this order ([`super::translate`]), the
//! `extraFlags` row dispatches to the flag rows, MIGRATION.md's per-option table is generated
//! from it ([`markdown_table`]) and the tests run every row's example through the translator.
//!
//! Targets use this notation: **I.x** = `nixos.containers.instances.<name>.x` (rendered by the
//! module); **N[S] K=** = a raw key of `systemd.nspawn.<name>` (section S of the `.nspawn` file);
//! **D** = the `systemd-nspawn@<name>.service` drop-in; **networkd** = generated networkd units.

use super::flags::{self, FlagUse};
use super::*;
use super::{Tx, network, options};

/// Does a flag take a value?
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arg {
    /// A switch (`--read-only`).
    None,
    /// `--bind=X` or `--bind X`.
    Required,
    /// `--private-users[=X]`.
    Optional,
}

/// What a row runs.
#[derive(Clone, Copy)]
pub enum Handler {
    /// An option row: reads its option from `tx.c.options`.
    Option(fn(&mut Tx)),
    /// A flag row: called by the `extraFlags` row for each occurrence.
    Flag(fn(&mut Tx, &FlagUse)),
}

/// How a row affects a target key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum How {
    /// The row is the one owner of this key.
    Sets,
    /// List-valued key: several rows add entries.
    Appends,
    /// The row replaces what an owner set (an `extraFlags` flag overrides an option, as the
    /// legacy command line's last occurrence won).
    Overrides,
}

#[derive(Clone, Copy, Debug)]
pub struct Claim {
    pub key: &'static str,
    pub how: How,
}

/// A minimal input (the options of `containers.web`, as Nix) and lines the result must have.
/// Expected lines use the vocabulary of [`outcome`]; `~ text` means "some line contains
/// text", a leading `!` means "no such line".
#[derive(Clone, Copy, Debug)]
pub struct Example {
    pub input: &'static str,
    pub expect: &'static [&'static str],
}

pub struct Mapping {
    /// The legacy option (`hostAddress`) or flag (`--bind=`) as shown in the docs.
    pub legacy: &'static str,
    /// Flag names this row handles (`["--setenv", "-E"]`); empty for option rows.
    pub flags: &'static [&'static str],
    pub arg: Arg,
    /// Where it goes, in the notation of the module doc.
    pub target: &'static str,
    pub claims: &'static [Claim],
    pub handler: Handler,
    pub doc: &'static str,
    pub warnings: &'static [&'static WarningSpec],
    pub example: Example,
}

impl Mapping {
    pub fn is_flag(&self) -> bool {
        matches!(self.handler, Handler::Flag(_))
    }
}

const fn sets(key: &'static str) -> Claim {
    Claim {
        key,
        how: How::Sets,
    }
}
const fn appends(key: &'static str) -> Claim {
    Claim {
        key,
        how: How::Appends,
    }
}
const fn overrides(key: &'static str) -> Claim {
    Claim {
        key,
        how: How::Overrides,
    }
}

macro_rules! opt {
    ($legacy:literal, $target:literal, [$($claim:expr),*], $h:path, $doc:literal, [$($w:expr),*], $input:literal, [$($e:literal),* $(,)?]) => {
        Mapping {
            legacy: $legacy, flags: &[], arg: Arg::None, target: $target, claims: &[$($claim),*],
            handler: Handler::Option($h), doc: $doc, warnings: &[$(&$w),*],
            example: Example { input: $input, expect: &[$($e),*] },
        }
    };
}

macro_rules! flag {
    ($legacy:literal, [$($f:literal),*], $arg:ident, $target:literal, [$($claim:expr),*], $h:path, $doc:literal, [$($w:expr),*], $input:literal, [$($e:literal),* $(,)?]) => {
        Mapping {
            legacy: $legacy, flags: &[$($f),*], arg: Arg::$arg, target: $target, claims: &[$($claim),*],
            handler: Handler::Flag($h), doc: $doc, warnings: &[$(&$w),*],
            example: Example { input: $input, expect: &[$($e),*] },
        }
    };
}

/// Every legacy option and known `extraFlags` flag, in translation order.
pub const MAPPINGS: &[Mapping] = &[
    opt!(
        "config",
        "I.system-config",
        [sets("I.system-config")],
        options::config,
        "Copied verbatim (comments kept) with eth0 → host0, `networking.useHostResolvConf` and `boot.isContainer` removed and relative paths rewritten for the new file; a `networking.defaultGateway(6)` without an interface gets the container's only link (`host0`) as its interface. Imperative containers keep their rootfs `etc/nixos/configuration.nix`, which the tool does not edit.",
        [
            ETH0_REFERENCE,
            USE_HOST_RESOLV_CONF_REMOVED,
            FREE_VARIABLE,
            GUEST_FILES_NOT_REWRITTEN,
            IMPERATIVE_GUEST_CONFIG,
            GUEST_CONFIG_UNPARSABLE,
            GUEST_GATEWAY_WITHOUT_INTERFACE,
            GUEST_GATEWAY_INTERFACE_ADDED
        ],
        r#"{ config = { ... }: { networking.interfaces.eth0.useDHCP = true; networking.useHostResolvConf = false; }; }"#,
        [
            "~ networking.interfaces.host0.useDHCP = true;",
            "!~ useHostResolvConf",
            "warning eth0-reference",
            "warning use-host-resolv-conf-removed"
        ]
    ),
    opt!(
        "path",
        "(rebuilt from I.system-config)",
        [],
        options::path,
        "The prebuilt toplevel is not used: the module builds the system from `system-config`. Without a `config` there is nothing to rebuild from; the generated `system-config` throws until a human supplies it.",
        [PREBUILT_SYSTEM_PATH, MISSING_SYSTEM_CONFIG],
        r#"{ path = "/nix/store/00000000000000000000000000000000-nixos-system-web"; }"#,
        [
            "warning prebuilt-system-path",
            "instance.system-config = <missing>"
        ]
    ),
    opt!(
        "flake",
        "(manual: I.system-config)",
        [],
        options::flake,
        "The module has no flake option: import the flake's `nixosConfigurations.<attr>` modules into `system-config` by hand.",
        [FLAKE_CONTAINER],
        r#"{ flake = "github:me/cfg#web"; }"#,
        ["warning flake-container", "!warning missing-system-config"]
    ),
    opt!(
        "nixpkgs",
        "I.nixpkgs",
        [sets("I.nixpkgs")],
        options::nixpkgs,
        "Copied verbatim; relative paths rewritten for the new file.",
        [FREE_VARIABLE],
        r#"{ nixpkgs = ../nixpkgs; }"#,
        ["instance.nixpkgs = ../nixpkgs"]
    ),
    opt!(
        "pkgs",
        "(none)",
        [],
        options::pkgs,
        "Removed from NixOS (defining it throws); reported, not carried over.",
        [REMOVED_PKGS_OPTION],
        r#"{ pkgs = import <nixpkgs> { }; }"#,
        [
            "warning removed-pkgs-option",
            "!warning unresolved-expression"
        ]
    ),
    opt!(
        "specialArgs",
        "I.specialArgs",
        [sets("I.specialArgs")],
        options::special_args,
        "Copied verbatim. Names bound only in the legacy host file (let bindings, flake inputs) are reported.",
        [FREE_VARIABLE],
        r#"{ specialArgs = { inherit inputs; }; }"#,
        [
            "instance.specialArgs = { inherit inputs; }",
            "warning free-variable"
        ]
    ),
    opt!(
        "autoStart",
        "I.autoStart (false: D wantedBy = lib.mkForce [ ])",
        [sets("I.autoStart"), sets("D wantedBy")],
        options::auto_start,
        "Started at boot when true. When false (the legacy default) the instance is declared but not started, and the drop-in forces `wantedBy` empty.",
        [NOT_AUTO_STARTED],
        r#"{ autoStart = false; }"#,
        [
            "instance.autoStart = false",
            "drop-in wantedBy = lib.mkForce [ ]",
            "warning not-auto-started"
        ]
    ),
    opt!(
        "restartIfChanged",
        "I.activation.strategy",
        [sets("I.activation.strategy")],
        options::restart_if_changed,
        "`\"restart\"` when the container is auto-started and restartIfChanged is true (the default); `\"none\"` otherwise, because legacy never restarted containers that were not auto-started.",
        [],
        r#"{ autoStart = true; restartIfChanged = false; }"#,
        ["instance.activation.strategy = \"none\""]
    ),
    opt!(
        "timeoutStartSec",
        "I.timeoutStartSec",
        [sets("I.timeoutStartSec")],
        options::timeout_start_sec,
        "Same value, on systemd-nspawn@<name>.service. Unset: the legacy default `1min` is written (the stock unit would wait systemd's 90 s).",
        [INVALID_VALUE],
        r#"{ timeoutStartSec = "5min"; }"#,
        ["instance.timeoutStartSec = \"5min\""]
    ),
    opt!(
        "ephemeral",
        "I.ephemeral (N[Exec] Ephemeral=yes)",
        [sets("I.ephemeral")],
        options::ephemeral,
        "Same meaning: every boot starts from the empty root legacy had (`/run/nixos-containers/<name>`); a leftover `/var/lib/nixos-containers/<name>` is not copied, so it cannot become the snapshot source.",
        [],
        r#"{ ephemeral = true; }"#,
        [
            "instance.ephemeral = true",
            "[Exec] Ephemeral=yes",
            "state - -> /var/lib/machines/web"
        ]
    ),
    opt!(
        "enableTun",
        "D DeviceAllow=/dev/net/tun rwm + N[Exec] Capability=CAP_NET_ADMIN",
        [
            appends("D[Service] DeviceAllow"),
            appends("N[Exec] Capability")
        ],
        options::enable_tun,
        "What the legacy option expanded to, on the new unit and file.",
        [],
        r#"{ enableTun = true; }"#,
        [
            "drop-in [Service] DeviceAllow=/dev/net/tun rwm",
            "[Exec] Capability=CAP_NET_ADMIN"
        ]
    ),
    opt!(
        "privateNetwork",
        "I.network (null = host network; N[Network] Private=, VirtualEthernet=)",
        [sets("I.network")],
        options_private_network,
        "false (the default): `network = null`, rendered as explicit `Private=no` and `VirtualEthernet=no` (systemd-nspawn@.service would otherwise add a veth). true: a private namespace, with a veth when an address, bridge or MAC option is set, without one otherwise (macvlan/interface-only containers).",
        [],
        r#"{ privateNetwork = false; }"#,
        [
            "instance.network = null",
            "[Network] Private=no",
            "[Network] VirtualEthernet=no"
        ]
    ),
    opt!(
        "hostBridge",
        "I.network.bridge (N[Network] Bridge=)",
        [sets("I.network.bridge")],
        network::host_bridge,
        "The host end `vb-<name>` joins the existing bridge. The guest's address comes from localAddress (it must carry a prefix); hostAddress becomes the guest's gateway. A bridge name computed by Nix code is copied as Nix (with the let bindings it uses) and evaluated by the host configuration.",
        [
            ADDRESSES_WITHOUT_PRIVATE_NETWORK,
            BRIDGE_ADDRESS_WITHOUT_PREFIX,
            HOST_BRIDGE_COPIED_AS_NIX
        ],
        r#"{ privateNetwork = true; hostBridge = "br0"; localAddress = "192.168.1.20/24"; }"#,
        [
            "instance.network.bridge = \"br0\"",
            "[Network] Bridge=br0",
            "instance.network.v4.static.containerPool = [ \"192.168.1.20/24\" ]",
            "!networkd host 20-ve-web.network: [Match] Name=ve-web"
        ]
    ),
    opt!(
        "hostAddress",
        "I.network.v4.static.hostAddresses",
        [sets("I.network.v4.static.hostAddresses")],
        network::host_address,
        "Kept as legacy had it: a pair without prefixes becomes `network.pointToPoint`, the host end's /32 on `ve-<name>` with the container's address as `Peer=` (the host route legacy added), no subnet, so containers may share a host address as before. Like legacy, no NAT and no router advertisements (`masquerade = false`, `routerAdvertisements = false`). Pairs that carry prefixes keep them when both fit; any other choice is reported. An address computed by Nix code is copied as Nix (with the let bindings it uses) when the other end is set or the container is bridged: the module's point-to-point mode then puts each end as given, as legacy's scripts did.",
        [
            P2P_PREFIX_CHOSEN,
            ADDRESS_PAIR_INCOMPLETE,
            INVALID_ADDRESS,
            ADDRESSES_WITHOUT_PRIVATE_NETWORK,
            ADDRESSES_COPIED_AS_NIX,
            UNRESOLVED_EXPRESSION
        ],
        r#"{ privateNetwork = true; hostAddress = "10.233.1.1"; localAddress = "10.233.1.2"; }"#,
        [
            "instance.network.v4.static.hostAddresses = [ \"10.233.1.1/32\" ]",
            "instance.network.pointToPoint = true",
            "instance.network.masquerade = false",
            "instance.network.routerAdvertisements = false",
            "!warning p2p-prefix-chosen",
            "networkd host 20-ve-web.network: [Address] Address=10.233.1.1/32",
            "networkd host 20-ve-web.network: [Address] Peer=10.233.1.2/32",
            "!networkd host 20-ve-web.network: [Network] IPMasquerade=both",
            "!~ IPv6SendRA"
        ]
    ),
    opt!(
        "hostAddress6",
        "I.network.v6.static.hostAddresses",
        [sets("I.network.v6.static.hostAddresses")],
        network::host_address6,
        "As hostAddress: a /128 pair stays point-to-point (`Peer=`).",
        [
            P2P_PREFIX_CHOSEN,
            ADDRESS_PAIR_INCOMPLETE,
            INVALID_ADDRESS,
            ADDRESSES_WITHOUT_PRIVATE_NETWORK,
            ADDRESSES_COPIED_AS_NIX,
            UNRESOLVED_EXPRESSION
        ],
        r#"{ privateNetwork = true; hostAddress6 = "fc00::1"; localAddress6 = "fc00::2"; }"#,
        [
            "instance.network.v6.static.hostAddresses = [ \"fc00::1/128\" ]",
            "networkd host 20-ve-web.network: [Address] Peer=fc00::2/128",
            "!warning p2p-prefix-chosen"
        ]
    ),
    opt!(
        "localAddress",
        "I.network.v4.static.containerPool",
        [sets("I.network.v4.static.containerPool")],
        network::local_address,
        "The guest's address on host0. Point-to-point (no prefixes): its /32 with the host address as `Peer=` and the default route through it with `GatewayOnLink=yes`, as legacy's container init did, also on a bridge. With prefixes: as given (bridged: its prefix is the bridge's subnet).",
        [
            P2P_PREFIX_CHOSEN,
            ADDRESS_PAIR_INCOMPLETE,
            INVALID_ADDRESS,
            BRIDGE_ADDRESS_WITHOUT_PREFIX,
            ADDRESSES_WITHOUT_PRIVATE_NETWORK,
            ADDRESSES_COPIED_AS_NIX,
            UNRESOLVED_EXPRESSION
        ],
        r#"{ privateNetwork = true; hostAddress = "10.0.0.1/24"; localAddress = "10.0.0.5/24"; }"#,
        [
            "instance.network.v4.static.containerPool = [ \"10.0.0.5/24\" ]",
            "instance.network.pointToPoint = false",
            "!warning p2p-prefix-chosen",
            "networkd guest 40-host0.network: [Network] Address=10.0.0.5/24"
        ]
    ),
    opt!(
        "localAddress6",
        "I.network.v6.static.containerPool",
        [sets("I.network.v6.static.containerPool")],
        network::local_address6,
        "As localAddress, for IPv6.",
        [
            P2P_PREFIX_CHOSEN,
            ADDRESS_PAIR_INCOMPLETE,
            INVALID_ADDRESS,
            BRIDGE_ADDRESS_WITHOUT_PREFIX,
            ADDRESSES_WITHOUT_PRIVATE_NETWORK,
            ADDRESSES_COPIED_AS_NIX,
            UNRESOLVED_EXPRESSION
        ],
        r#"{ privateNetwork = true; hostAddress6 = "fd00::1/64"; localAddress6 = "fd00::2/64"; }"#,
        [
            "instance.network.v6.static.containerPool = [ \"fd00::2/64\" ]",
            "!warning p2p-prefix-chosen"
        ]
    ),
    opt!(
        "localMacAddress",
        "(manual: guest networkd [Link] MACAddress=)",
        [],
        network::local_mac_address,
        "nspawn has no key for the veth's MAC (it derives a stable one from the machine name); set it in the guest.",
        [LOCAL_MAC_ADDRESS, VETH_WITHOUT_ADDRESSES],
        r#"{ privateNetwork = true; localMacAddress = "02:00:00:00:00:01"; }"#,
        [
            "warning local-mac-address",
            "instance.network.veth = true",
            "warning veth-without-addresses"
        ]
    ),
    opt!(
        "forwardPorts",
        "I.forwardPorts (N[Network] Port=)",
        [sets("I.forwardPorts")],
        network::forward_ports,
        "Same shape; containerPort defaults to hostPort. Without privateNetwork legacy ignored them silently: still ignored, now with a warning. With a private network but no veth (macvlans only) the module cannot forward them: dropped, and the warning gives the raw `Port=` keys that keep nspawn's forwarding.",
        [FORWARD_PORTS_IGNORED, FORWARD_PORTS_WITHOUT_VETH],
        r#"{ privateNetwork = true; hostAddress = "10.233.1.1"; localAddress = "10.233.1.2"; forwardPorts = [ { hostPort = 8080; containerPort = 80; } ]; }"#,
        [
            "instance.forwardPorts: tcp 8080 -> 80",
            "[Network] Port=tcp:8080:80"
        ]
    ),
    opt!(
        "interfaces",
        "N[Network] Interface= + D After=/Wants=sys-subsystem-net-devices-<if>.device",
        [
            appends("N[Network] Interface"),
            appends("D[Unit] After"),
            appends("D[Unit] Wants")
        ],
        network::interfaces,
        "The host interface is moved into the container under the same name; the unit waits for the device.",
        [INTERFACE_NAME_TOO_LONG, INVALID_VALUE],
        r#"{ privateNetwork = true; interfaces = [ "eth1" ]; }"#,
        [
            "[Network] Interface=eth1",
            "drop-in [Unit] After=sys-subsystem-net-devices-eth1.device",
            "drop-in [Unit] Wants=sys-subsystem-net-devices-eth1.device",
            "[Network] VirtualEthernet=no"
        ]
    ),
    opt!(
        "macvlans",
        "N[Network] MACVLAN= (I.network.veth = false without addresses)",
        [appends("N[Network] MACVLAN")],
        network::macvlans,
        "Same device: `mv-<if>` inside, so guest references stay valid. Implies a private network even when privateNetwork was false (as in legacy).",
        [INTERFACE_NAME_TOO_LONG, INVALID_VALUE],
        r#"{ macvlans = [ "enp1s0" ]; }"#,
        [
            "[Network] MACVLAN=enp1s0",
            "[Network] Private=yes",
            "[Network] VirtualEthernet=no",
            "instance.network.veth = false"
        ]
    ),
    opt!(
        "extraVeths",
        "N[Network] VirtualEthernetExtra= + networkd units (host and guest)",
        [
            appends("N[Network] VirtualEthernetExtra"),
            sets("networkd 30-<veth>.network")
        ],
        network::extra_veths,
        "Same-named veth on both sides; the legacy address/route scripts become networkd units: host side Address= (or Bridge=), guest side Address=, no default route. A pair without prefixes stays point-to-point (`[Address]` with `Peer=`, as legacy's `ip addr` + `ip route`).",
        [
            EXTRA_VETH_UNITS,
            P2P_PREFIX_CHOSEN,
            BRIDGE_ADDRESS_WITHOUT_PREFIX
        ],
        r#"{ privateNetwork = true; extraVeths.web-ext = { hostAddress = "10.9.0.1/24"; localAddress = "10.9.0.2/24"; }; }"#,
        [
            "[Network] VirtualEthernetExtra=web-ext",
            "networkd host 30-web-ext.network: [Network] Address=10.9.0.1/24",
            "networkd guest 30-web-ext.network: [Network] Address=10.9.0.2/24",
            "warning extra-veth-units"
        ]
    ),
    opt!(
        "networkNamespace",
        "(manual: ExecStart= override)",
        [],
        network::network_namespace,
        "No `.nspawn` key joins an existing namespace; the container is isolated instead (Private=yes, no veth) until a human overrides ExecStart=.",
        [NETWORK_NAMESPACE],
        r#"{ networkNamespace = "/run/netns/vpn"; }"#,
        ["warning network-namespace", "[Network] Private=yes"]
    ),
    opt!(
        "privateUsers",
        "I.privateUsers (N[Exec] PrivateUsers=, N[Files] PrivateUsersOwnership=)",
        [sets("I.privateUsers")],
        options::private_users,
        "Always explicit, even \"no\": systemd-nspawn@.service passes -U, which would chown the legacy rootfs. Ownership as nspawn implied it for legacy's flag: `auto` for pick, `off` for a base UID (the tree stays as it is on disk).",
        [],
        r#"{ privateUsers = "pick"; }"#,
        [
            "instance.privateUsers.mode = \"pick\"",
            "[Exec] PrivateUsers=pick",
            "[Files] PrivateUsersOwnership=auto",
            "[Files] BindReadOnly=/nix/store:/nix/store:idmap"
        ]
    ),
    opt!(
        "copyResolvConf",
        "N[Exec] ResolvConf=",
        [sets("N[Exec] ResolvConf")],
        options::copy_resolv_conf,
        "copy-host when legacy copied the host's resolv.conf (the Nix default; a deployed `.conf` says so with COPY_RESOLV_CONF=1) and the guest did not opt out; off when copyResolvConf = false, a `.conf` without COPY_RESOLV_CONF=1 (imperative containers: the start script copied nothing), a bind mount provides /etc/resolv.conf, the guest set useHostResolvConf = false, or it runs resolved.",
        [],
        r#"{ copyResolvConf = true; }"#,
        ["[Exec] ResolvConf=copy-host"]
    ),
    opt!(
        "bindMounts",
        "I.bindMounts (N[Files] BindReadOnly=/Bind=) + D RequiresMountsFor=",
        [sets("I.bindMounts"), appends("D[Unit] RequiresMountsFor")],
        options::bind_mounts,
        "Read-only unless isReadOnly = false (legacy default kept); hostPath = null binds the same path.",
        [INVALID_VALUE],
        r#"{ bindMounts."/data" = { hostPath = "/srv/data"; }; bindMounts."/rw" = { hostPath = "/srv/rw"; isReadOnly = false; }; }"#,
        [
            "[Files] BindReadOnly=/srv/data:/data",
            "[Files] Bind=/srv/rw:/rw",
            "drop-in [Unit] RequiresMountsFor=/srv/data"
        ]
    ),
    opt!(
        "allowedDevices",
        "D DeviceAllow=",
        [appends("D[Service] DeviceAllow")],
        options::allowed_devices,
        "Appended to the stock unit's DeviceAllow= list. DevicePolicy=closed stays, but the stock list already allows more than legacy did (see “What changes even when nothing is reported”).",
        [INVALID_VALUE],
        r#"{ allowedDevices = [ { node = "/dev/fuse"; modifier = "rw"; } ]; }"#,
        ["drop-in [Service] DeviceAllow=/dev/fuse rw"]
    ),
    opt!(
        "tmpfs",
        "N[Files] TemporaryFileSystem=",
        [appends("N[Files] TemporaryFileSystem")],
        options::tmpfs,
        "Same `path[:options]` syntax.",
        [INVALID_VALUE],
        r#"{ tmpfs = [ "/var/cache:mode=0755" ]; }"#,
        ["[Files] TemporaryFileSystem=/var/cache:mode=0755"]
    ),
    opt!(
        "additionalCapabilities",
        "N[Exec] Capability=",
        [appends("N[Exec] Capability")],
        options::additional_capabilities,
        "Plain capability names only. An item with quotes, spaces, `=` or `--` injected flags into the legacy start script: it is not carried over and is quoted in the warning.",
        [INJECTED_FLAGS, INVALID_VALUE],
        r#"{ additionalCapabilities = [ "CAP_SYS_TIME" "CAP_NET_RAW\" --system-call-filter=\"@keyring" ]; }"#,
        [
            "[Exec] Capability=CAP_SYS_TIME",
            "warning injected-flags",
            "!~ keyring"
        ]
    ),
    opt!(
        "extraFlags",
        "per flag (rows below)",
        [],
        flags::extra_flags,
        "Split into words as the legacy script did (unquoted expansion); each known flag goes through its row, last occurrence wins; unknown flags are reported.",
        [UNKNOWN_EXTRA_FLAG, INVALID_VALUE],
        r#"{ extraFlags = [ "--bogus-flag" "--read-only" ]; }"#,
        ["warning unknown-extra-flag", "[Files] ReadOnly=yes"]
    ),
    // ---- extraFlags flags ----
    flag!(
        "-U",
        ["-U"],
        None,
        "I.privateUsers = pick, ownership auto",
        [overrides("I.privateUsers")],
        flags::flag_u,
        "Same as nspawn's -U.",
        [],
        r#"{ extraFlags = [ "-U" ]; }"#,
        [
            "[Exec] PrivateUsers=pick",
            "[Files] PrivateUsersOwnership=auto"
        ]
    ),
    flag!(
        "--private-users=",
        ["--private-users"],
        Optional,
        "I.privateUsers.mode",
        [overrides("I.privateUsers")],
        flags::private_users,
        "Overrides privateUsers (legacy flags came last).",
        [INVALID_VALUE],
        r#"{ extraFlags = [ "--private-users=identity" ]; }"#,
        ["[Exec] PrivateUsers=identity"]
    ),
    flag!(
        "--private-users-ownership=",
        ["--private-users-ownership"],
        Required,
        "I.privateUsers.ownership",
        [overrides("I.privateUsers")],
        flags::private_users_ownership,
        "off, chown, map or auto.",
        [INVALID_VALUE],
        r#"{ extraFlags = [ "-U" "--private-users-ownership=chown" ]; }"#,
        ["[Files] PrivateUsersOwnership=chown"]
    ),
    flag!(
        "--private-users-chown",
        ["--private-users-chown"],
        None,
        "I.privateUsers.ownership = chown",
        [overrides("I.privateUsers")],
        flags::private_users_chown,
        "The old spelling of --private-users-ownership=chown.",
        [],
        r#"{ extraFlags = [ "-U" "--private-users-chown" ]; }"#,
        ["[Files] PrivateUsersOwnership=chown"]
    ),
    flag!(
        "--resolv-conf=",
        ["--resolv-conf"],
        Required,
        "N[Exec] ResolvConf=",
        [overrides("N[Exec] ResolvConf")],
        flags::resolv_conf,
        "Overrides what copyResolvConf chose.",
        [],
        r#"{ extraFlags = [ "--resolv-conf=off" ]; }"#,
        ["[Exec] ResolvConf=off"]
    ),
    flag!(
        "--system-call-filter=",
        ["--system-call-filter"],
        Required,
        "N[Exec] SystemCallFilter=",
        [appends("N[Exec] SystemCallFilter")],
        flags::system_call_filter,
        "Same syntax.",
        [],
        r#"{ extraFlags = [ "--system-call-filter=@keyring" ]; }"#,
        ["[Exec] SystemCallFilter=@keyring"]
    ),
    flag!(
        "--drop-capability=",
        ["--drop-capability"],
        Required,
        "N[Exec] DropCapability=",
        [appends("N[Exec] DropCapability")],
        flags::drop_capability,
        "Comma list split into names.",
        [INVALID_VALUE],
        r#"{ extraFlags = [ "--drop-capability=CAP_SYS_ADMIN,CAP_MKNOD" ]; }"#,
        [
            "[Exec] DropCapability=CAP_SYS_ADMIN",
            "[Exec] DropCapability=CAP_MKNOD"
        ]
    ),
    flag!(
        "--capability=",
        ["--capability"],
        Required,
        "N[Exec] Capability=",
        [appends("N[Exec] Capability")],
        flags::capability,
        "Comma list split into names.",
        [INVALID_VALUE],
        r#"{ extraFlags = [ "--capability=CAP_NET_ADMIN" ]; }"#,
        ["[Exec] Capability=CAP_NET_ADMIN"]
    ),
    flag!(
        "--bind=",
        ["--bind"],
        Required,
        "I.bindMounts (isReadOnly = false)",
        [appends("I.bindMounts")],
        flags::bind_rw,
        "Becomes a bind mount entry, keyed by mount point.",
        [INVALID_VALUE],
        r#"{ extraFlags = [ "--bind=/srv/a:/a" ]; }"#,
        ["[Files] Bind=/srv/a:/a"]
    ),
    flag!(
        "--bind-ro=",
        ["--bind-ro"],
        Required,
        "I.bindMounts (isReadOnly = true)",
        [appends("I.bindMounts")],
        flags::bind_ro,
        "Becomes a read-only bind mount entry.",
        [INVALID_VALUE],
        r#"{ extraFlags = [ "--bind-ro=/srv/b:/b:norbind" ]; }"#,
        ["[Files] BindReadOnly=/srv/b:/b:norbind"]
    ),
    flag!(
        "--tmpfs=",
        ["--tmpfs"],
        Required,
        "N[Files] TemporaryFileSystem=",
        [appends("N[Files] TemporaryFileSystem")],
        flags::tmpfs,
        "Same syntax.",
        [],
        r#"{ extraFlags = [ "--tmpfs=/scratch" ]; }"#,
        ["[Files] TemporaryFileSystem=/scratch"]
    ),
    flag!(
        "--overlay=",
        ["--overlay"],
        Required,
        "N[Files] Overlay=",
        [appends("N[Files] Overlay")],
        flags::overlay,
        "Same syntax.",
        [],
        r#"{ extraFlags = [ "--overlay=/srv/lower:/srv/upper:/opt" ]; }"#,
        ["[Files] Overlay=/srv/lower:/srv/upper:/opt"]
    ),
    flag!(
        "--overlay-ro=",
        ["--overlay-ro"],
        Required,
        "N[Files] OverlayReadOnly=",
        [appends("N[Files] OverlayReadOnly")],
        flags::overlay_ro,
        "Same syntax.",
        [],
        r#"{ extraFlags = [ "--overlay-ro=/srv/l1:/srv/l2:/opt" ]; }"#,
        ["[Files] OverlayReadOnly=/srv/l1:/srv/l2:/opt"]
    ),
    flag!(
        "--setenv= / -E",
        ["--setenv", "-E"],
        Required,
        "N[Exec] Environment=",
        [appends("N[Exec] Environment")],
        flags::setenv,
        "NAME=VALUE for the container's init.",
        [INVALID_VALUE],
        r#"{ extraFlags = [ "--setenv=FOO=bar" "-E" "BAZ=1" ]; }"#,
        ["[Exec] Environment=FOO=bar", "[Exec] Environment=BAZ=1"]
    ),
    flag!(
        "--network-namespace-path=",
        ["--network-namespace-path"],
        Required,
        "(manual: ExecStart= override)",
        [],
        flags::network_namespace_path,
        "As networkNamespace: no `.nspawn` key.",
        [NETWORK_NAMESPACE],
        r#"{ extraFlags = [ "--network-namespace-path=/run/netns/x" ]; }"#,
        ["warning network-namespace"]
    ),
    flag!(
        "--personality=",
        ["--personality"],
        Required,
        "N[Exec] Personality=",
        [sets("N[Exec] Personality")],
        flags::personality,
        "Same values (x86, x86-64).",
        [],
        r#"{ extraFlags = [ "--personality=x86" ]; }"#,
        ["[Exec] Personality=x86"]
    ),
    flag!(
        "--link-journal=",
        ["--link-journal"],
        Required,
        "N[Exec] LinkJournal=",
        [sets("N[Exec] LinkJournal")],
        flags::link_journal,
        "Same values; systemd-nspawn@.service defaults to try-guest as legacy did.",
        [],
        r#"{ extraFlags = [ "--link-journal=host" ]; }"#,
        ["[Exec] LinkJournal=host"]
    ),
    flag!(
        "--property=",
        ["--property"],
        Required,
        "D [Service] <Property>=",
        [appends("D[Service] <property>")],
        flags::property,
        "Resource-control properties go on the service.",
        [INVALID_VALUE],
        r#"{ extraFlags = [ "--property=CPUQuota=50%" ]; }"#,
        ["drop-in [Service] CPUQuota=50%"]
    ),
    flag!(
        "--load-credential=",
        ["--load-credential"],
        Required,
        "D LoadCredential=",
        [appends("D[Service] LoadCredential")],
        flags::load_credential,
        "No `.nspawn` key: the credential is loaded by the service; a human checks it reaches the container.",
        [EXTRA_FLAG_IGNORED],
        r#"{ extraFlags = [ "--load-credential=token:/etc/token" ]; }"#,
        [
            "drop-in [Service] LoadCredential=token:/etc/token",
            "warning extra-flag-ignored"
        ]
    ),
    flag!(
        "--set-credential=",
        ["--set-credential"],
        Required,
        "D SetCredential=",
        [appends("D[Service] SetCredential")],
        flags::set_credential,
        "As --load-credential=.",
        [EXTRA_FLAG_IGNORED],
        r#"{ extraFlags = [ "--set-credential=mode:prod" ]; }"#,
        ["drop-in [Service] SetCredential=mode:prod"]
    ),
    flag!(
        "--private-network",
        ["--private-network"],
        None,
        "I.network (Private=yes)",
        [overrides("I.network")],
        flags::private_network,
        "A private namespace even when privateNetwork was false.",
        [],
        r#"{ extraFlags = [ "--private-network" ]; }"#,
        ["[Network] Private=yes", "[Network] VirtualEthernet=no"]
    ),
    flag!(
        "--network-veth / -n",
        ["--network-veth", "-n"],
        None,
        "I.network.veth = true",
        [overrides("I.network")],
        flags::network_veth,
        "A veth to the host (DHCP from the module when no addresses are set, where legacy configured nothing: reported).",
        [VETH_WITHOUT_ADDRESSES],
        r#"{ extraFlags = [ "-n" ]; }"#,
        [
            "[Network] VirtualEthernet=yes",
            "networkd host 20-ve-web.network: [Network] DHCPServer=yes",
            "warning veth-without-addresses"
        ]
    ),
    flag!(
        "--network-bridge=",
        ["--network-bridge"],
        Required,
        "I.network.bridge",
        [overrides("I.network.bridge")],
        flags::network_bridge,
        "As hostBridge.",
        [INVALID_VALUE],
        r#"{ extraFlags = [ "--network-bridge=br1" ]; }"#,
        ["[Network] Bridge=br1"]
    ),
    flag!(
        "--network-zone=",
        ["--network-zone"],
        Required,
        "I.network.zone",
        [sets("I.network.zone")],
        flags::network_zone,
        "Joins the nspawn zone bridge vz-<zone>; the zone is declared in the emitted file (the module requires it) with the module's defaults, which is reported.",
        [INVALID_VALUE, NETWORK_ZONE_DECLARED],
        r#"{ extraFlags = [ "--network-zone=lab" ]; }"#,
        ["[Network] Zone=lab", "warning network-zone-declared"]
    ),
    flag!(
        "--port= / -p",
        ["--port", "-p"],
        Required,
        "I.forwardPorts",
        [appends("I.forwardPorts")],
        flags::port,
        "[proto:]host[:container]; needs a private network (nspawn refuses it otherwise) and, for the module, a veth, bridge or zone.",
        [
            FORWARD_PORTS_IGNORED,
            FORWARD_PORTS_WITHOUT_VETH,
            INVALID_VALUE
        ],
        r#"{ privateNetwork = true; hostBridge = "br0"; extraFlags = [ "-p" "udp:53:5353" ]; }"#,
        ["[Network] Port=udp:53:5353"]
    ),
    flag!(
        "--network-interface=",
        ["--network-interface"],
        Required,
        "N[Network] Interface=",
        [appends("N[Network] Interface")],
        flags::network_interface,
        "As interfaces.",
        [INVALID_VALUE],
        r#"{ extraFlags = [ "--network-interface=eth2" ]; }"#,
        ["[Network] Interface=eth2"]
    ),
    flag!(
        "--network-macvlan=",
        ["--network-macvlan"],
        Required,
        "N[Network] MACVLAN=",
        [appends("N[Network] MACVLAN")],
        flags::network_macvlan,
        "As macvlans.",
        [INVALID_VALUE],
        r#"{ extraFlags = [ "--network-macvlan=eth3" ]; }"#,
        ["[Network] MACVLAN=eth3"]
    ),
    flag!(
        "--network-ipvlan=",
        ["--network-ipvlan"],
        Required,
        "N[Network] IPVLAN=",
        [appends("N[Network] IPVLAN")],
        flags::network_ipvlan,
        "Same syntax.",
        [INVALID_VALUE],
        r#"{ extraFlags = [ "--network-ipvlan=eth4" ]; }"#,
        ["[Network] IPVLAN=eth4"]
    ),
    flag!(
        "--network-veth-extra=",
        ["--network-veth-extra"],
        Required,
        "N[Network] VirtualEthernetExtra=",
        [appends("N[Network] VirtualEthernetExtra")],
        flags::network_veth_extra,
        "HOSTIF[:CONTAINERIF]; no networkd units are generated for it.",
        [INVALID_VALUE],
        r#"{ extraFlags = [ "--network-veth-extra=vx1:vx2" ]; }"#,
        ["[Network] VirtualEthernetExtra=vx1:vx2"]
    ),
    flag!(
        "--hostname=",
        ["--hostname"],
        Required,
        "N[Exec] Hostname=",
        [sets("N[Exec] Hostname")],
        flags::hostname,
        "Same meaning.",
        [],
        r#"{ extraFlags = [ "--hostname=web.example" ]; }"#,
        ["[Exec] Hostname=web.example"]
    ),
    flag!(
        "--machine= / -M",
        ["--machine", "-M"],
        Required,
        "(the unit instance name)",
        [],
        flags::machine,
        "The machine name is the unit's instance name.",
        [EXTRA_FLAG_IGNORED],
        r#"{ extraFlags = [ "--machine=other" ]; }"#,
        ["warning extra-flag-ignored"]
    ),
    flag!(
        "--read-only",
        ["--read-only"],
        None,
        "N[Files] ReadOnly=yes",
        [sets("N[Files] ReadOnly")],
        flags::read_only,
        "Same meaning.",
        [],
        r#"{ extraFlags = [ "--read-only" ]; }"#,
        ["[Files] ReadOnly=yes"]
    ),
    flag!(
        "--volatile=",
        ["--volatile"],
        Optional,
        "N[Files] Volatile=",
        [sets("N[Files] Volatile")],
        flags::volatile,
        "yes, no, state or overlay.",
        [],
        r#"{ extraFlags = [ "--volatile=state" ]; }"#,
        ["[Files] Volatile=state"]
    ),
    flag!(
        "--inaccessible=",
        ["--inaccessible"],
        Required,
        "N[Files] Inaccessible=",
        [appends("N[Files] Inaccessible")],
        flags::inaccessible,
        "Same meaning.",
        [],
        r#"{ extraFlags = [ "--inaccessible=/secret" ]; }"#,
        ["[Files] Inaccessible=/secret"]
    ),
    flag!(
        "--no-new-privileges=",
        ["--no-new-privileges"],
        Required,
        "N[Exec] NoNewPrivileges=",
        [sets("N[Exec] NoNewPrivileges")],
        flags::no_new_privileges,
        "Same meaning.",
        [],
        r#"{ extraFlags = [ "--no-new-privileges=yes" ]; }"#,
        ["[Exec] NoNewPrivileges=yes"]
    ),
    flag!(
        "--oom-score-adjust=",
        ["--oom-score-adjust"],
        Required,
        "N[Exec] OOMScoreAdjust=",
        [sets("N[Exec] OOMScoreAdjust")],
        flags::oom_score_adjust,
        "Same meaning.",
        [],
        r#"{ extraFlags = [ "--oom-score-adjust=500" ]; }"#,
        ["[Exec] OOMScoreAdjust=500"]
    ),
    flag!(
        "--cpu-affinity=",
        ["--cpu-affinity"],
        Required,
        "N[Exec] CPUAffinity=",
        [sets("N[Exec] CPUAffinity")],
        flags::cpu_affinity,
        "Same meaning.",
        [],
        r#"{ extraFlags = [ "--cpu-affinity=0-1" ]; }"#,
        ["[Exec] CPUAffinity=0-1"]
    ),
    flag!(
        "--rlimit=",
        ["--rlimit"],
        Required,
        "N[Exec] Limit<NAME>=",
        [sets("N[Exec] Limit*")],
        flags::rlimit,
        "RLIMIT_NOFILE=… becomes LimitNOFILE=….",
        [INVALID_VALUE],
        r#"{ extraFlags = [ "--rlimit=RLIMIT_NOFILE=4096" ]; }"#,
        ["[Exec] LimitNOFILE=4096"]
    ),
    flag!(
        "--timezone=",
        ["--timezone"],
        Required,
        "N[Exec] Timezone=",
        [sets("N[Exec] Timezone")],
        flags::timezone,
        "Same meaning.",
        [],
        r#"{ extraFlags = [ "--timezone=off" ]; }"#,
        ["[Exec] Timezone=off"]
    ),
    flag!(
        "--ephemeral / -x",
        ["--ephemeral", "-x"],
        None,
        "I.ephemeral",
        [overrides("I.ephemeral")],
        flags::ephemeral,
        "As ephemeral = true.",
        [],
        r#"{ extraFlags = [ "-x" ]; }"#,
        ["instance.ephemeral = true"]
    ),
    flag!(
        "--notify-ready=",
        ["--notify-ready"],
        Required,
        "(module: N[Exec] NotifyReady=yes)",
        [],
        flags::notify_ready,
        "The module sets NotifyReady=yes.",
        [EXTRA_FLAG_IGNORED],
        r#"{ extraFlags = [ "--notify-ready=no" ]; }"#,
        ["warning extra-flag-ignored", "[Exec] NotifyReady=yes"]
    ),
    flag!(
        "--kill-signal=",
        ["--kill-signal"],
        Required,
        "(module: N[Exec] KillSignal=SIGRTMIN+3)",
        [],
        flags::kill_signal,
        "The module sets KillSignal=SIGRTMIN+3.",
        [EXTRA_FLAG_IGNORED],
        r#"{ extraFlags = [ "--kill-signal=SIGTERM" ]; }"#,
        ["warning extra-flag-ignored", "[Exec] KillSignal=SIGRTMIN+3"]
    ),
    flag!(
        "--keep-unit",
        ["--keep-unit"],
        None,
        "(systemd-nspawn@.service)",
        [],
        flags::keep_unit,
        "Passed by the stock unit already.",
        [],
        r#"{ extraFlags = [ "--keep-unit" ]; }"#,
        ["!warning unknown-extra-flag", "!warning extra-flag-ignored"]
    ),
    flag!(
        "--register=",
        ["--register"],
        Required,
        "(systemd-nspawn@.service)",
        [],
        flags::register,
        "The stock unit always registers with machined.",
        [EXTRA_FLAG_IGNORED],
        r#"{ extraFlags = [ "--register=no" ]; }"#,
        ["warning extra-flag-ignored"]
    ),
    flag!(
        "--boot / -b",
        ["--boot", "-b"],
        None,
        "(module: N[Exec] Boot=no)",
        [],
        flags::boot,
        "The module runs the NixOS init with Boot=no + Parameters=.",
        [EXTRA_FLAG_IGNORED],
        r#"{ extraFlags = [ "-b" ]; }"#,
        ["warning extra-flag-ignored", "[Exec] Boot=no"]
    ),
    flag!(
        "--quiet / -q",
        ["--quiet", "-q"],
        None,
        "(systemd-nspawn@.service)",
        [],
        flags::quiet,
        "Passed by the stock unit already.",
        [],
        r#"{ extraFlags = [ "-q" ]; }"#,
        ["!warning unknown-extra-flag"]
    ),
    flag!(
        "--directory= / -D",
        ["--directory", "-D"],
        Required,
        "(state move to /var/lib/machines/<name>)",
        [],
        flags::directory,
        "The root is /var/lib/machines/<name>.",
        [EXTRA_FLAG_IGNORED],
        r#"{ extraFlags = [ "-D" "/srv/root" ]; }"#,
        ["warning extra-flag-ignored"]
    ),
];

fn options_private_network(tx: &mut Tx) {
    network::private_network(tx)
}

/// Everything observable about an instance, one line per fact, in the vocabulary the
/// examples use: `.nspawn` lines (`[Exec] Boot=no`), `instance.…` options, `drop-in …`,
/// `networkd host|guest FILE: [Section] Key=value`, `warning CODE`, `state FROM -> TO`.
pub fn outcome(i: &Instance) -> Vec<String> {
    use crate::nixtext::{attr_name, string_list, string_literal};
    let mut out = Vec::new();
    let s = crate::render::nspawn::merged(i);
    for (sec, map) in [
        ("Exec", &s.exec),
        ("Files", &s.files),
        ("Network", &s.network),
    ] {
        for (k, vs) in map {
            for v in vs {
                out.push(format!("[{sec}] {k}={v}"));
            }
        }
    }
    let sp = &i.spec;
    match &sp.system_config {
        Some(e) => out.push(format!("instance.system-config = {}", e.text)),
        None => out.push("instance.system-config = <missing>".into()),
    }
    if let Some(e) = &sp.nixpkgs {
        out.push(format!("instance.nixpkgs = {}", e.text));
    }
    if let Some(e) = &sp.special_args {
        out.push(format!("instance.specialArgs = {}", e.text));
    }
    out.push(format!("instance.autoStart = {}", sp.auto_start));
    out.push(format!(
        "instance.activation.strategy = \"{}\"",
        sp.activation_strategy.as_str()
    ));
    out.push(format!("instance.ephemeral = {}", sp.ephemeral));
    if let Some(t) = &sp.timeout_start_sec {
        out.push(format!("instance.timeoutStartSec = {}", string_literal(t)));
    }
    if let Some(r) = &sp.restart {
        out.push(format!("instance.restart = {}", string_literal(r)));
    }
    match &sp.network {
        None => out.push("instance.network = null".into()),
        Some(n) => {
            out.push(format!("instance.network.veth = {}", n.veth));
            out.push(format!("instance.network.masquerade = {}", n.masquerade));
            out.push(format!(
                "instance.network.routerAdvertisements = {}",
                n.router_advertisements
            ));
            out.push(format!(
                "instance.network.pointToPoint = {}",
                n.point_to_point
            ));
            if let Some(z) = &n.zone {
                out.push(format!("instance.network.zone = {}", string_literal(z)));
            }
            if let Some(b) = &n.bridge {
                out.push(format!("instance.network.bridge = {}", string_literal(b)));
            }
            if let Some(e) = &n.bridge_expr {
                out.push(format!("instance.network.bridge = ({})", e.text));
            }
            for (fam, st) in [("v4", &n.v4), ("v6", &n.v6)] {
                if !st.host_addresses.is_empty() {
                    out.push(format!(
                        "instance.network.{fam}.static.hostAddresses = {}",
                        string_list(&st.host_addresses)
                    ));
                }
                if !st.container_pool.is_empty() {
                    out.push(format!(
                        "instance.network.{fam}.static.containerPool = {}",
                        string_list(&st.container_pool)
                    ));
                }
                for e in &st.host_address_exprs {
                    out.push(format!(
                        "instance.network.{fam}.static.hostAddresses += ({})",
                        e.text
                    ));
                }
                for e in &st.container_pool_exprs {
                    out.push(format!(
                        "instance.network.{fam}.static.containerPool += ({})",
                        e.text
                    ));
                }
            }
        }
    }
    for p in &sp.forward_ports {
        out.push(format!(
            "instance.forwardPorts: {} {} -> {}",
            p.protocol,
            p.host_port,
            p.container_port.unwrap_or(p.host_port)
        ));
    }
    for b in &sp.bind_mounts {
        out.push(format!(
            "instance.bindMounts.{} = {} (read-only: {})",
            attr_name(&b.mount_point),
            crate::render::nspawn::bind_spec(b),
            b.is_read_only
        ));
    }
    out.push(format!(
        "instance.privateUsers.mode = {}",
        string_literal(&sp.private_users.mode)
    ));
    if let Some(o) = &sp.private_users.ownership {
        out.push(format!(
            "instance.privateUsers.ownership = {}",
            string_literal(o)
        ));
    }
    for (sec, map) in [("Unit", &i.dropin.unit), ("Service", &i.dropin.service)] {
        for (k, vs) in map {
            for v in vs {
                out.push(format!("drop-in [{sec}] {k}={v}"));
            }
        }
    }
    if !sp.auto_start {
        out.push("drop-in wantedBy = lib.mkForce [ ]".into());
    }
    let module = crate::render::networkd::module_networks(&i.name, sp);
    for u in module
        .iter()
        .chain(&i.host_networks)
        .chain(&i.guest_networks)
    {
        let side = match u.side {
            Side::Host => "host",
            Side::Guest => "guest",
        };
        for (sec, keys) in &u.sections {
            for (k, v) in keys {
                out.push(format!("networkd {side} {}: [{sec}] {k}={v}", u.file_name));
            }
        }
    }
    for w in &i.warnings {
        out.push(format!("warning {}", w.code));
    }
    out.push(format!(
        "state {} -> {}",
        i.state
            .from
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "-".into()),
        i.state.to.display()
    ));
    out
}

/// Check `lines` against an example's expectations; the failures, empty when all hold.
pub fn check_expectations(lines: &[String], expect: &[&str]) -> Vec<String> {
    let mut failed = Vec::new();
    for e in expect {
        let (neg, e) = match e.strip_prefix('!') {
            Some(rest) => (true, rest),
            None => (false, *e),
        };
        let found = match e.strip_prefix("~ ") {
            Some(sub) => lines.iter().any(|l| l.contains(sub)),
            None => lines.iter().any(|l| l == e),
        };
        if found == neg {
            failed.push(format!("{}{e}", if neg { "!" } else { "" }));
        }
    }
    failed
}

fn md(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

/// Markdown text outside code spans: `<name>` must not read as an HTML tag.
fn md_text(s: &str) -> String {
    md(s)
        .split('`')
        .enumerate()
        .map(|(n, part)| {
            if n % 2 == 0 {
                part.replace('<', "&lt;").replace('>', "&gt;")
            } else {
                part.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("`")
}

/// The translator's warning codes as a table for MIGRATION.md.
pub fn warnings_table() -> String {
    let mut out = String::from("| code | kind | meaning |\n|---|---|---|\n");
    for w in crate::warnings::all_specs() {
        let kind = match w.category {
            crate::warnings::Category::NeedsHuman => "needs a human",
            crate::warnings::Category::ChangedMeaning => "changed meaning",
        };
        out.push_str(&format!(
            "| `{}` | {kind} | {} |\n",
            w.code,
            md_text(w.summary)
        ));
    }
    out
}

/// The per-option table of MIGRATION.md.
pub fn markdown_table() -> String {
    let mut out = String::new();
    out.push_str("| legacy | new world | warnings | notes | example |\n");
    out.push_str("|---|---|---|---|---|\n");
    for m in MAPPINGS {
        let legacy = if m.is_flag() {
            format!("`extraFlags`: `{}`", m.legacy.replace(" / ", "` / `"))
        } else {
            format!("`{}`", m.legacy)
        };
        let warnings = m
            .warnings
            .iter()
            .map(|w| format!("`{}`", w.code))
            .collect::<Vec<_>>()
            .join(", ");
        let expect = m
            .example
            .expect
            .iter()
            .map(|e| format!("`{e}`"))
            .collect::<Vec<_>>()
            .join("<br>");
        out.push_str(&format!(
            "| {} | {} | {} | {} | `{}`<br>→ {} |\n",
            md(&legacy),
            md_text(m.target),
            md(&warnings),
            md_text(m.doc),
            md(m.example.input),
            md(&expect)
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::translate::example::example_container;
    use std::collections::BTreeMap;
    use std::path::PathBuf;

    fn ctx() -> Context {
        Context {
            output_file: PathBuf::from("/etc/nixos/nspawn-containers.nix"),
        }
    }

    /// Every legacy option: the reader's option table (`legacy::options`), one-to-one with the
    /// rows here, plus the removed `pkgs`, which gets a row of its own so that it is reported.
    fn reference_options() -> Vec<&'static str> {
        let mut v = crate::legacy::merge::OPTION_NAMES.to_vec();
        v.push("pkgs");
        v
    }

    /// The extraFlags flags the reference and the design name.
    const REFERENCE_FLAGS: &[&str] = &[
        "-U",
        "--private-users",
        "--private-users-ownership",
        "--private-users-chown",
        "--resolv-conf",
        "--system-call-filter",
        "--drop-capability",
        "--capability",
        "--bind",
        "--bind-ro",
        "--tmpfs",
        "--overlay",
        "--overlay-ro",
        "--setenv",
        "-E",
        "--network-namespace-path",
        "--personality",
        "--link-journal",
        "--property",
        "--load-credential",
        "--set-credential",
        "--private-network",
        "--network-veth",
        "-n",
        "--network-bridge",
        "--network-zone",
        "--port",
        "-p",
        "--network-interface",
        "--network-macvlan",
        "--network-veth-extra",
        "--hostname",
        "--machine",
        "--read-only",
        "--volatile",
        "--inaccessible",
        "--no-new-privileges",
        "--oom-score-adjust",
        "--cpu-affinity",
        "--rlimit",
        "--timezone",
        "--notify-ready",
        "--kill-signal",
        "--keep-unit",
        "--register",
        "--boot",
        "-b",
    ];

    #[test]
    fn every_reference_option_has_exactly_one_row() {
        let reference = reference_options();
        for o in &reference {
            let n = MAPPINGS
                .iter()
                .filter(|m| !m.is_flag() && m.legacy == *o)
                .count();
            assert_eq!(n, 1, "option {o} has {n} rows");
        }
        for m in MAPPINGS.iter().filter(|m| !m.is_flag()) {
            assert!(
                reference.contains(&m.legacy),
                "row {} is not a reference option",
                m.legacy
            );
        }
    }

    #[test]
    fn every_reference_flag_has_exactly_one_row() {
        for f in REFERENCE_FLAGS {
            let n = MAPPINGS.iter().filter(|m| m.flags.contains(f)).count();
            assert_eq!(n, 1, "flag {f} has {n} rows");
        }
        let mut seen = std::collections::BTreeSet::new();
        for m in MAPPINGS {
            assert_eq!(m.is_flag(), !m.flags.is_empty(), "{}", m.legacy);
            for f in m.flags {
                assert!(seen.insert(*f), "flag {f} is claimed twice");
                assert!(f.starts_with('-'), "{f}");
            }
        }
    }

    #[test]
    fn no_two_rows_own_the_same_key() {
        let mut owners: BTreeMap<&str, &str> = BTreeMap::new();
        for m in MAPPINGS {
            for c in m.claims.iter().filter(|c| c.how == How::Sets) {
                if let Some(prev) = owners.insert(c.key, m.legacy) {
                    panic!("{} is set by both {prev} and {}", c.key, m.legacy);
                }
            }
        }
        for m in MAPPINGS {
            for c in m.claims.iter().filter(|c| c.how == How::Overrides) {
                assert!(
                    owners.contains_key(c.key) || c.key.starts_with("I.network"),
                    "{} overrides {}, which no row owns",
                    m.legacy,
                    c.key
                );
            }
        }
        // Raw keys never collide with what the module renders.
        for m in MAPPINGS {
            for c in m.claims {
                if let Some(rest) = c.key.strip_prefix("N[") {
                    let (sec, key) = rest.split_once("] ").unwrap();
                    assert!(
                        !crate::render::nspawn::is_module_key(sec, key),
                        "{} claims module key {}",
                        m.legacy,
                        c.key
                    );
                }
            }
        }
    }

    #[test]
    fn rows_are_documented_and_their_warnings_declared() {
        for m in MAPPINGS {
            assert!(!m.doc.trim().is_empty(), "{} has no doc", m.legacy);
            assert!(!m.target.trim().is_empty(), "{} has no target", m.legacy);
            assert!(
                !m.example.expect.is_empty(),
                "{} has no expectations",
                m.legacy
            );
            for w in m.warnings {
                assert!(
                    WARNINGS.iter().any(|x| x.code == w.code),
                    "{}: {} not in translate::WARNINGS",
                    m.legacy,
                    w.code
                );
            }
        }
    }

    #[test]
    fn every_row_example_translates_as_documented() {
        let mut failures = Vec::new();
        for m in MAPPINGS {
            let c = match example_container(m.example.input) {
                Ok(c) => c,
                Err(e) => {
                    failures.push(format!("{}: {e}", m.legacy));
                    continue;
                }
            };
            // The example must exercise its own row.
            let uses = if m.is_flag() {
                c.options.extra_flags.as_ref().is_some_and(|f| {
                    f.value.iter().flat_map(|w| w.split_whitespace()).any(|w| {
                        m.flags
                            .iter()
                            .any(|fl| w == *fl || w.starts_with(&format!("{fl}=")))
                    })
                })
            } else {
                m.example.input.contains(&format!("{} ", m.legacy))
                    || m.example.input.contains(&format!("{}.", m.legacy))
            };
            if !uses {
                failures.push(format!("{}: the example does not use the row", m.legacy));
            }
            let i = translate(&c, &ctx());
            let lines = outcome(&i);
            let failed = check_expectations(&lines, m.example.expect);
            if !failed.is_empty() {
                failures.push(format!(
                    "{}: missing {:?}\n  got:\n    {}",
                    m.legacy,
                    failed,
                    lines.join("\n    ")
                ));
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    #[test]
    fn every_warning_code_is_exercised_by_some_example() {
        let mut seen = std::collections::BTreeSet::new();
        for m in MAPPINGS {
            if let Ok(c) = example_container(m.example.input) {
                for w in translate(&c, &ctx()).warnings {
                    seen.insert(w.code);
                }
            }
        }
        let not_in_examples: Vec<_> = WARNINGS
            .iter()
            .map(|w| w.code)
            .filter(|c| !seen.contains(c))
            .collect();
        // These need inputs the row examples do not cover; they have dedicated tests.
        let covered_elsewhere = [
            "unresolved-expression",
            "p2p-prefix-chosen",
            "address-pair-incomplete",
            "forward-ports-without-veth",
            "guest-gateway-without-interface",
            "guest-gateway-interface-added",
            "host-bridge-copied-as-nix",
            "addresses-copied-as-nix",
            "container-unit-override",
            "bridge-address-without-prefix",
            "invalid-address",
            "addresses-without-private-network",
            "forward-ports-ignored",
            "missing-system-config",
            "imperative-guest-config",
            "guest-config-unparsable",
            "unrewritable-path",
            "interface-name-too-long",
            "invalid-value",
            "internal-key-conflict",
            "guest-files-not-rewritten",
            "module-argument",
            "guest-files-copied",
            // translate::tests::computed_bind_mounts_are_copied_verbatim, tests/reader_fidelity.rs
            "bind-mounts-copied-as-nix",
            // tests/unit_values.rs and tests/robustness.rs
            "unit-value-refused",
            "bind-path-colon",
        ];
        for c in not_in_examples {
            assert!(
                covered_elsewhere.contains(&c),
                "warning {c} is exercised by no example and no test"
            );
        }
    }

    /// Replace the text between `<!-- BEGIN name -->` and `<!-- END name -->` in MIGRATION.md
    /// with `generated`, or fail when they differ (NIXOS_NSPAWN_BLESS=1 rewrites).
    fn check_generated(name: &str, generated: &str) {
        // Both generated sections live in one file: one test at a time reads and rewrites it.
        static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/MIGRATION.md");
        let text = std::fs::read_to_string(path).unwrap();
        let begin = format!("<!-- BEGIN {name} -->\n");
        let end = format!("<!-- END {name} -->");
        let b = text.find(&begin).expect("MIGRATION.md has no BEGIN marker") + begin.len();
        let e = text.find(&end).expect("MIGRATION.md has no END marker");
        if text[b..e] != *generated {
            if std::env::var_os("NIXOS_NSPAWN_BLESS").is_some() {
                let new = format!("{}{}{}", &text[..b], generated, &text[e..]);
                std::fs::write(path, new).unwrap();
            } else {
                panic!(
                    "MIGRATION.md's {name} is out of date; run NIXOS_NSPAWN_BLESS=1 cargo test migration_md"
                );
            }
        }
    }

    #[test]
    fn migration_md_table_is_generated_from_the_mappings() {
        check_generated("MAPPING TABLE", &markdown_table());
    }

    #[test]
    fn migration_md_warnings_are_generated_from_the_specs() {
        check_generated("WARNINGS TABLE", &warnings_table());
    }

    #[test]
    fn migration_md_mentions_only_real_warning_codes() {
        let text =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/MIGRATION.md")).unwrap();
        let intro = &text[..text.find("<!-- BEGIN WARNINGS TABLE -->").unwrap()];
        for part in intro.split('(').skip(1) {
            let Some(code) = part.strip_prefix('`').and_then(|p| p.split('`').next()) else {
                continue;
            };
            if !code.starts_with('-')
                && code.contains('-')
                && code.chars().all(|c| c.is_ascii_lowercase() || c == '-')
            {
                assert!(
                    WARNINGS.iter().any(|w| w.code == code),
                    "MIGRATION.md mentions unknown code {code}"
                );
            }
        }
    }
}
