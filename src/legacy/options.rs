//! THE legacy option table of the reader side: one row per `containers.<name>` option, saying
//! where the deployed world states it (the `.conf` variable and how its value reads, the
//! evidence in the unit and start script), its type, whether it marks a set as
//! container-shaped, and how the merge picks it into [`LegacyOptions`].
//!
//! Everything else derives from it: [`OPTION_NAMES`] (the merge's known options and the
//! translation table's one-to-one check), [`CONTAINER_KEYS`] (fragment shapes), the `.conf`
//! parser's known variables ([`conf_row`], [`CONF_KEYS`]) and the merge itself ([`pick_all`]).
//! Adding an option touches its row here, its row in `translate::mapping` and its handler.

use crate::legacy::merge::{
    Merger, conv_binds, conv_bool, conv_devices, conv_ports, conv_private_users, conv_str,
    conv_str_list, conv_veths, norm_binds, norm_ports, same, sorted,
};
use crate::legacy::model::LegacyOptions;

/// How a `.conf` variable's value is read (see `conf::read_conf`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConfForm {
    /// A string; empty means unset.
    Text,
    /// One word (an address, a bridge, a path); empty means unset, whitespace is reported.
    Word,
    /// `1` is true, anything else false (as the start script tests it).
    Bool,
    /// Space-separated words.
    Words,
    /// `proto:host:container,…` (`HOST_PORT`).
    Ports,
    /// `no`, `identity`, `pick` or a UID (`PRIVATE_USERS`).
    PrivateUsers,
    /// Raw nspawn flags (`EXTRA_NSPAWN_FLAGS`): bind mounts, devices, … are recovered from them.
    Flags,
}

/// One legacy option.
pub struct LegacyOption {
    /// `containers.<name>.<name>`.
    pub name: &'static str,
    /// The `.conf` variable that states it, and how its value reads.
    pub conf: Option<(&'static str, ConfForm)>,
    /// What in `container@.service` / its start script shows it (documentation; `unit.rs`).
    pub unit: &'static str,
    /// The option's type, as the legacy module declares it.
    pub ty: &'static str,
    /// Whether a set holding this key looks like a container (names that are also top-level
    /// keys of ordinary modules, `config`, `nixpkgs`, `path`, `flake`, do not count alone).
    pub distinctive: bool,
    /// Pick the merged, typed value into its [`LegacyOptions`] field.
    pub(crate) pick: fn(&mut Merger<'_>, &mut LegacyOptions),
}

macro_rules! row {
    ($name:literal, $conf:expr, $unit:literal, $ty:literal, $dist:literal, |$m:ident, $o:ident| $pick:expr) => {
        LegacyOption {
            name: $name,
            conf: $conf,
            unit: $unit,
            ty: $ty,
            distinctive: $dist,
            pick: |$m, $o| $pick,
        }
    };
}

use ConfForm::*;

/// Every legacy option, in the order the merge picks them (the order of its findings).
pub const LEGACY_OPTIONS: &[LegacyOption] = &[
    row!(
        "autoStart",
        Some(("AUTO_START", Bool)),
        "wantedBy machines.target",
        "bool",
        true,
        |m, o| o.auto_start = m.pick("autoStart", conv_bool, same)
    ),
    row!(
        "privateNetwork",
        Some(("PRIVATE_NETWORK", Bool)),
        "--private-network in the start script",
        "bool",
        true,
        |m, o| o.private_network = m.pick("privateNetwork", conv_bool, same)
    ),
    row!(
        "privateUsers",
        Some(("PRIVATE_USERS", PrivateUsers)),
        "--private-users= in the start script",
        "\"no\" | \"identity\" | \"pick\" | int",
        true,
        |m, o| o.private_users = m.pick("privateUsers", conv_private_users, same)
    ),
    row!(
        "enableTun",
        None,
        "DeviceAllow=/dev/net/tun rwm, --capability=CAP_NET_ADMIN",
        "bool",
        true,
        |m, o| o.enable_tun = m.pick("enableTun", conv_bool, same)
    ),
    row!(
        "config",
        None,
        "(the system path the start script boots)",
        "module",
        false,
        |m, o| o.config = m.pick_code("config")
    ),
    row!(
        "nixpkgs",
        None,
        "(build input only)",
        "path",
        false,
        |m, o| o.nixpkgs = m.pick_code("nixpkgs")
    ),
    row!(
        "specialArgs",
        None,
        "(build input only)",
        "attrs",
        true,
        |m, o| o.special_args = m.pick_code("specialArgs")
    ),
    row!(
        "path",
        Some(("SYSTEM_PATH", Text)),
        "the system path the start script boots",
        "path",
        false,
        |m, o| o.path = m.pick("path", conv_str, same)
    ),
    row!(
        "flake",
        Some(("FLAKE", Text)),
        "(nixos-container update)",
        "string",
        false,
        |m, o| o.flake = m.pick("flake", conv_str, same)
    ),
    row!(
        "restartIfChanged",
        None,
        "X-RestartIfChanged= in the unit",
        "bool",
        true,
        |m, o| o.restart_if_changed = m.pick("restartIfChanged", conv_bool, same)
    ),
    row!(
        "timeoutStartSec",
        None,
        "TimeoutStartSec= in the unit",
        "string",
        true,
        |m, o| o.timeout_start_sec = m.pick("timeoutStartSec", conv_str, same)
    ),
    row!(
        "ephemeral",
        None,
        "--ephemeral in the start script",
        "bool",
        true,
        |m, o| o.ephemeral = m.pick("ephemeral", conv_bool, same)
    ),
    row!(
        "copyResolvConf",
        Some(("COPY_RESOLV_CONF", Bool)),
        "resolv.conf copied by the start script",
        "bool",
        true,
        |m, o| o.copy_resolv_conf = m.pick("copyResolvConf", conv_bool, same)
    ),
    row!(
        "networkNamespace",
        Some(("NETWORK_NAMESPACE_PATH", Word)),
        "--network-namespace-path=",
        "path",
        true,
        |m, o| o.network_namespace = m.pick("networkNamespace", conv_str, same)
    ),
    row!(
        "interfaces",
        Some(("INTERFACES", Words)),
        "--network-interface= per word",
        "list of str",
        true,
        |m, o| o.interfaces = m.pick("interfaces", conv_str_list, same)
    ),
    row!(
        "macvlans",
        Some(("MACVLANS", Words)),
        "--network-macvlan= per word",
        "list of str",
        true,
        |m, o| o.macvlans = m.pick("macvlans", conv_str_list, same)
    ),
    row!(
        "extraVeths",
        None,
        "--network-veth-extra= and per-veth ip commands",
        "attrs of networkOptions",
        true,
        |m, o| o.extra_veths = m.pick("extraVeths", conv_veths, |v| v
            .keys()
            .cloned()
            .collect::<Vec<_>>())
    ),
    row!(
        "hostBridge",
        Some(("HOST_BRIDGE", Word)),
        "--network-bridge=",
        "str",
        true,
        |m, o| o.host_bridge = m.pick("hostBridge", conv_str, same)
    ),
    row!(
        "hostAddress",
        Some(("HOST_ADDRESS", Word)),
        "ip addr add on ve-NAME",
        "str",
        true,
        |m, o| o.host_address = m.pick("hostAddress", conv_str, same)
    ),
    row!(
        "hostAddress6",
        Some(("HOST_ADDRESS6", Word)),
        "ip -6 addr add on ve-NAME",
        "str",
        true,
        |m, o| o.host_address6 = m.pick("hostAddress6", conv_str, same)
    ),
    row!(
        "localAddress",
        Some(("LOCAL_ADDRESS", Word)),
        "ip addr add on eth0 inside",
        "str",
        true,
        |m, o| o.local_address = m.pick("localAddress", conv_str, same)
    ),
    row!(
        "localAddress6",
        Some(("LOCAL_ADDRESS6", Word)),
        "ip -6 addr add on eth0 inside",
        "str",
        true,
        |m, o| o.local_address6 = m.pick("localAddress6", conv_str, same)
    ),
    row!(
        "localMacAddress",
        Some(("LOCAL_MAC_ADDRESS", Word)),
        "ip link set eth0 address",
        "str",
        true,
        |m, o| o.local_mac_address =
            m.pick("localMacAddress", conv_str, |s| s.to_ascii_lowercase())
    ),
    row!(
        "forwardPorts",
        Some(("HOST_PORT", Ports)),
        "--port= per entry",
        "list of { protocol, hostPort, containerPort }",
        true,
        |m, o| o.forward_ports = m.pick("forwardPorts", conv_ports, |v| norm_ports(v))
    ),
    row!(
        "bindMounts",
        None,
        "--bind= / --bind-ro= in EXTRA_NSPAWN_FLAGS",
        "attrs of { mountPoint, hostPath, isReadOnly }",
        true,
        |m, o| o.bind_mounts = m.pick("bindMounts", conv_binds, |v| norm_binds(v))
    ),
    row!(
        "allowedDevices",
        None,
        "DeviceAllow= in the unit",
        "list of { node, modifier }",
        true,
        |m, o| o.allowed_devices = m.pick("allowedDevices", conv_devices, |v| sorted(v))
    ),
    row!(
        "tmpfs",
        None,
        "--tmpfs= in EXTRA_NSPAWN_FLAGS",
        "list of str",
        true,
        |m, o| o.tmpfs = m.pick("tmpfs", conv_str_list, same)
    ),
    row!(
        "additionalCapabilities",
        None,
        "--capability= in EXTRA_NSPAWN_FLAGS",
        "list of str",
        true,
        |m, o| o.additional_capabilities = m.pick("additionalCapabilities", conv_str_list, same)
    ),
    row!(
        "extraFlags",
        Some(("EXTRA_NSPAWN_FLAGS", Flags)),
        "EXTRA_NSPAWN_FLAGS passed to systemd-nspawn",
        "list of str",
        true,
        |m, o| o.extra_flags = m.pick("extraFlags", conv_str_list, same)
    ),
];

const N: usize = LEGACY_OPTIONS.len();

/// Every `containers.<name>` option the reader knows, from [`LEGACY_OPTIONS`].
pub const OPTION_NAMES: &[&str] = &{
    let mut out = [""; N];
    let mut i = 0;
    while i < N {
        out[i] = LEGACY_OPTIONS[i].name;
        i += 1;
    }
    out
};

/// The options as keys of a container-shaped set, and whether each is distinctive.
pub const CONTAINER_KEYS: &[(&str, bool)] = &{
    let mut out = [("", false); N];
    let mut i = 0;
    while i < N {
        out[i] = (LEGACY_OPTIONS[i].name, LEGACY_OPTIONS[i].distinctive);
        i += 1;
    }
    out
};

const fn conf_count() -> usize {
    let mut n = 0;
    let mut i = 0;
    while i < N {
        if LEGACY_OPTIONS[i].conf.is_some() {
            n += 1;
        }
        i += 1;
    }
    n
}

/// The `.conf` variables the legacy start script reads, from [`LEGACY_OPTIONS`].
pub const CONF_KEYS: &[&str] = &{
    let mut out = [""; conf_count()];
    let mut i = 0;
    let mut j = 0;
    while i < N {
        if let Some((k, _)) = LEGACY_OPTIONS[i].conf {
            out[j] = k;
            j += 1;
        }
        i += 1;
    }
    out
};

/// The row whose `.conf` variable is `key`.
pub fn conf_row(key: &str) -> Option<&'static LegacyOption> {
    LEGACY_OPTIONS
        .iter()
        .find(|o| o.conf.is_some_and(|(k, _)| k == key))
}

/// Pick every option, in table order.
pub(crate) fn pick_all(m: &mut Merger<'_>) -> LegacyOptions {
    let mut o = LegacyOptions::default();
    for row in LEGACY_OPTIONS {
        (row.pick)(m, &mut o);
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::legacy::model::{Origin, SourceFacts, SourceKind, Value};

    #[test]
    fn names_and_conf_variables_are_unique() {
        let mut names: Vec<&str> = OPTION_NAMES.to_vec();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), N);
        let mut keys: Vec<&str> = CONF_KEYS.to_vec();
        keys.sort();
        keys.dedup();
        assert_eq!(keys.len(), CONF_KEYS.len());
        for row in LEGACY_OPTIONS {
            assert!(!row.unit.is_empty() && !row.ty.is_empty(), "{}", row.name);
        }
    }

    /// Every known option is picked: a value set for each one (of a type its converter
    /// takes) lands in `LegacyOptions`, so no known option is dropped silently.
    #[test]
    fn every_known_option_is_picked() {
        use std::collections::BTreeMap;
        let text = |t: &str| {
            Value::Expr(crate::legacy::NixExpr::plain(
                t.to_string(),
                Origin::new(SourceKind::NixSource, "/etc/nixos/c.nix", Some(1)),
                1,
                Vec::new(),
            ))
        };
        let attrs = |kv: &[(&str, Value)]| {
            Value::Attrs(
                kv.iter()
                    .map(|(k, v)| (k.to_string(), v.clone()))
                    .collect::<BTreeMap<_, _>>(),
            )
        };
        let s = |v: &str| Value::Str(v.to_string());
        let sample = |name: &str| -> Value {
            match name {
                "config" | "nixpkgs" | "specialArgs" => text("{ }"),
                "autoStart" | "privateNetwork" | "enableTun" | "restartIfChanged" | "ephemeral"
                | "copyResolvConf" => Value::Bool(true),
                "privateUsers" => s("pick"),
                "interfaces" | "macvlans" | "tmpfs" | "additionalCapabilities" | "extraFlags" => {
                    Value::List(vec![s("x")])
                }
                "extraVeths" => attrs(&[("v1", attrs(&[("hostBridge", s("br1"))]))]),
                "forwardPorts" => Value::List(vec![attrs(&[("hostPort", Value::Int(80))])]),
                "bindMounts" => attrs(&[("/srv", attrs(&[("hostPath", s("/data"))]))]),
                "allowedDevices" => Value::List(vec![attrs(&[
                    ("node", s("/dev/fuse")),
                    ("modifier", s("rwm")),
                ])]),
                _ => s("10.0.0.1"),
            }
        };
        let mut f = SourceFacts::new("web", SourceKind::NixSource, "/etc/nixos/c.nix");
        for name in OPTION_NAMES {
            f.set(name, sample(name), Some(1));
        }
        let merged = crate::legacy::merge::merge("web", vec![f]);
        assert!(
            merged
                .warnings
                .iter()
                .all(|w| w.code != "unknown-option" && w.code != "option-wrong-type"),
            "{:#?}",
            merged.warnings
        );
        let json = serde_json::to_value(&merged.options).unwrap();
        for name in OPTION_NAMES {
            // camelCase → snake_case, as the fields are named.
            let field: String = name
                .chars()
                .flat_map(|c| {
                    if c.is_ascii_uppercase() {
                        vec!['_', c.to_ascii_lowercase()]
                    } else {
                        vec![c]
                    }
                })
                .collect();
            assert!(
                !json[&field].is_null(),
                "option {name} (field {field}) was not picked: {json:#}"
            );
        }
    }
}
