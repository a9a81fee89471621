//! The `.nspawn` settings file: what the NixOS module renders for an instance
//! ([`module_settings`], exactly per `nixos/RENDERING.md`), merged with the raw keys the
//! migrator emits ([`merged`]), as text in nixpkgs' `systemd.nspawn` format ([`render`]).

use super::unit::{self, File};
use crate::legacy::{BindMount, Kind};
use crate::translate::{Instance, InstanceSpec, NspawnSettings};
use std::collections::BTreeMap;

/// What the preview prints where the module puts the guest's system toplevel store path.
pub const TOPLEVEL_PLACEHOLDER: &str = "@toplevel@";

/// The keys the module sets itself (`nixos/RENDERING.md`): the migrator never emits these raw.
pub const MODULE_KEYS: &[(&str, &str)] = &[
    ("Exec", "Boot"),
    ("Exec", "Parameters"),
    ("Exec", "KillSignal"),
    ("Exec", "NotifyReady"),
    ("Exec", "PrivateUsers"),
    ("Exec", "Ephemeral"),
    ("Files", "BindReadOnly"),
    ("Files", "Bind"),
    ("Files", "PrivateUsersOwnership"),
    ("Network", "Private"),
    ("Network", "VirtualEthernet"),
    ("Network", "Zone"),
    ("Network", "Bridge"),
    ("Network", "Port"),
];

/// The keys nixpkgs' `systemd.nspawn.<name>` accepts (`assertOnlyFields` in
/// `nixos/modules/system/boot/systemd/nspawn.nix`): any other raw key fails evaluation.
pub const NIXPKGS_KEYS: &[(&str, &[&str])] = &[
    (
        "Exec",
        &[
            "Boot",
            "ProcessTwo",
            "Parameters",
            "Environment",
            "User",
            "WorkingDirectory",
            "PivotRoot",
            "Capability",
            "DropCapability",
            "AmbientCapability",
            "NoNewPrivileges",
            "KillSignal",
            "Personality",
            "MachineID",
            "PrivateUsers",
            "NotifyReady",
            "SystemCallFilter",
            "LimitCPU",
            "LimitFSIZE",
            "LimitDATA",
            "LimitSTACK",
            "LimitCORE",
            "LimitRSS",
            "LimitNOFILE",
            "LimitAS",
            "LimitNPROC",
            "LimitMEMLOCK",
            "LimitLOCKS",
            "LimitSIGPENDING",
            "LimitMSGQUEUE",
            "LimitNICE",
            "LimitRTPRIO",
            "LimitRTTIME",
            "OOMScoreAdjust",
            "CPUAffinity",
            "Hostname",
            "ResolvConf",
            "Timezone",
            "LinkJournal",
            "Ephemeral",
        ],
    ),
    (
        "Files",
        &[
            "ReadOnly",
            "Volatile",
            "Bind",
            "BindReadOnly",
            "TemporaryFileSystem",
            "Overlay",
            "OverlayReadOnly",
            "PrivateUsersChown",
            "BindUser",
            "Inaccessible",
            "PrivateUsersOwnership",
        ],
    ),
    (
        "Network",
        &[
            "Private",
            "VirtualEthernet",
            "VirtualEthernetExtra",
            "Interface",
            "MACVLAN",
            "IPVLAN",
            "Bridge",
            "Zone",
            "Port",
        ],
    ),
];

/// Does nixpkgs accept `Section.Key` in `systemd.nspawn.<name>`?
pub fn nixpkgs_accepts(section: &str, key: &str) -> bool {
    NIXPKGS_KEYS
        .iter()
        .any(|(s, keys)| *s == section && keys.contains(&key))
}

/// Keys the module only sets as a default (`mkDefault`): a raw key of the same name replaces
/// the module's value instead of clashing with it. `LinkJournal=auto` for ephemeral
/// instances, where a legacy `--link-journal=` flag is kept as the administrator wrote it.
pub const MODULE_DEFAULT_KEYS: &[(&str, &str)] = &[("Exec", "LinkJournal")];

fn is_module_default_key(section: &str, key: &str) -> bool {
    MODULE_DEFAULT_KEYS
        .iter()
        .any(|(s, k)| *s == section && *k == key)
}

/// Is `Section.Key` one the module renders from the instance options?
pub fn is_module_key(section: &str, key: &str) -> bool {
    MODULE_KEYS.iter().any(|(s, k)| *s == section && *k == key)
}

/// True when the private-users mode asks for idmapped `/nix` binds (`pick` or a number).
fn idmapped(mode: &str) -> bool {
    mode == "pick"
        || mode
            .split(':')
            .next()
            .is_some_and(|b| !b.is_empty() && b.bytes().all(|c| c.is_ascii_digit()))
}

/// `<hostPath>:<mountPoint>` (or `<mountPoint>`), then `:<options>`, the paths escaped
/// (`\:`, `\\`) by the unit-value writer.
pub fn bind_spec(b: &BindMount) -> String {
    unit::bind_spec(b.host_path.as_deref(), &b.mount_point, b.options.as_deref())
}

fn push(map: &mut BTreeMap<String, Vec<String>>, key: &str, value: impl Into<String>) {
    map.entry(key.to_string()).or_default().push(value.into());
}

/// The keys the NixOS module sets for instance `name` (see `nixos/RENDERING.md`).
pub fn module_settings(name: &str, spec: &InstanceSpec) -> NspawnSettings {
    let mut s = NspawnSettings::default();
    let mode = spec.private_users.mode.as_str();
    let idmap = idmapped(mode);

    push(&mut s.exec, "Boot", "no");
    push(
        &mut s.exec,
        "Parameters",
        format!("{TOPLEVEL_PLACEHOLDER}/init"),
    );
    push(&mut s.exec, "KillSignal", "SIGRTMIN+3");
    push(&mut s.exec, "NotifyReady", "yes");
    push(&mut s.exec, "PrivateUsers", mode);
    if spec.ephemeral {
        push(&mut s.exec, "Ephemeral", "yes");
        // nspawn refuses Ephemeral= with the stock template's journal link (try-guest, or
        // guest/host on systemd 252); the file wins (`--settings=override`), `auto` is legacy's.
        push(&mut s.exec, "LinkJournal", "auto");
    }

    for p in [
        "/nix/store",
        "/nix/var/nix/db",
        "/nix/var/nix/daemon-socket",
    ] {
        if idmap {
            push(&mut s.files, "BindReadOnly", format!("{p}:{p}:idmap"));
        } else {
            push(&mut s.files, "BindReadOnly", p);
        }
    }
    for what in ["profiles", "gcroots"] {
        let mut v = format!("/nix/var/nix/{what}/per-nspawn/{name}:/nix/var/nix/{what}");
        if idmap {
            v.push_str(":idmap");
        }
        push(&mut s.files, "Bind", v);
    }
    // Attribute order: bindMounts is keyed by mount point, Nix sorts attribute names by byte.
    let mut binds: Vec<&BindMount> = spec.bind_mounts.iter().collect();
    binds.sort_by(|a, b| a.mount_point.as_bytes().cmp(b.mount_point.as_bytes()));
    for b in binds {
        let key = if b.is_read_only {
            "BindReadOnly"
        } else {
            "Bind"
        };
        push(&mut s.files, key, bind_spec(b));
    }
    if mode != "no"
        && let Some(o) = &spec.private_users.ownership
    {
        push(&mut s.files, "PrivateUsersOwnership", o.as_str());
    }

    match &spec.network {
        None => {
            push(&mut s.network, "Private", "no");
            push(&mut s.network, "VirtualEthernet", "no");
        }
        Some(n) => {
            push(&mut s.network, "Private", "yes");
            push(
                &mut s.network,
                "VirtualEthernet",
                if n.veth { "yes" } else { "no" },
            );
            if let Some(z) = &n.zone {
                push(&mut s.network, "Zone", z.as_str());
            }
            if let Some(b) = &n.bridge {
                push(&mut s.network, "Bridge", b.as_str());
            }
        }
    }
    for p in &spec.forward_ports {
        push(
            &mut s.network,
            "Port",
            format!(
                "{}:{}:{}",
                p.protocol,
                p.host_port,
                p.container_port.unwrap_or(p.host_port)
            ),
        );
    }
    s
}

/// `Parameters=` of an imperative instance: its own profile, not a store path.
pub fn imperative_parameters(name: &str) -> String {
    format!("/nix/var/nix/profiles/per-nspawn/{name}/system/init")
}

/// Keys present both in `a` and `b`, as `Section.Key`.
pub fn conflicts(a: &NspawnSettings, b: &NspawnSettings) -> Vec<String> {
    let mut out = Vec::new();
    for (sec, x, y) in [
        ("Exec", &a.exec, &b.exec),
        ("Files", &a.files, &b.files),
        ("Network", &a.network, &b.network),
    ] {
        for k in x.keys() {
            if y.contains_key(k) && !is_module_default_key(sec, k) {
                out.push(format!("{sec}.{k}"));
            }
        }
    }
    out
}

/// The settings the container really gets: the module's keys plus the raw ones.
///
/// A key in both is a translator bug (the translator also reports it as a warning); the
/// module's value is kept.
pub fn merged(i: &Instance) -> NspawnSettings {
    let mut s = module_settings(&i.name, &i.spec);
    if i.kind == Kind::Imperative {
        s.exec.insert(
            "Parameters".to_string(),
            vec![imperative_parameters(&i.name)],
        );
    }
    debug_assert!(
        conflicts(&s, &i.raw_nspawn).is_empty(),
        "raw .nspawn keys clash with module keys: {:?}",
        conflicts(&s, &i.raw_nspawn)
    );
    for (sec, dst, src) in [
        ("Exec", &mut s.exec, &i.raw_nspawn.exec),
        ("Files", &mut s.files, &i.raw_nspawn.files),
        ("Network", &mut s.network, &i.raw_nspawn.network),
    ] {
        for (k, v) in src {
            if is_module_default_key(sec, k) {
                dst.insert(k.clone(), v.clone());
            } else {
                dst.entry(k.clone()).or_insert_with(|| v.clone());
            }
        }
    }
    s
}

/// The lines of one section, every value through the unit-value writer.
fn section(out: &mut String, file: File, name: &str, map: &BTreeMap<String, Vec<String>>) {
    for (k, vs) in map {
        for v in vs {
            out.push_str(&unit::line(file, name, k, v));
        }
    }
}

/// The text nixpkgs' `systemd.nspawn.<name>` writes:
/// `"[Exec]\n" + E + "\n\n[Files]\n" + F + "\n\n[Network]\n" + N + "\n"`.
pub fn render(s: &NspawnSettings) -> String {
    let mut out = String::from("[Exec]\n");
    section(&mut out, File::Nspawn, "Exec", &s.exec);
    out.push_str("\n\n[Files]\n");
    section(&mut out, File::Nspawn, "Files", &s.files);
    out.push_str("\n\n[Network]\n");
    section(&mut out, File::Nspawn, "Network", &s.network);
    out.push('\n');
    out
}

/// The `[Service]` keys that nixos/module.nix (`dropinOf`) and nixos/lib/eval-container.nix
/// render from the instance options.
pub fn module_service(s: &InstanceSpec) -> BTreeMap<String, Vec<String>> {
    let mut out = BTreeMap::new();
    if let Some(t) = &s.timeout_start_sec {
        out.insert("TimeoutStartSec".to_string(), vec![t.clone()]);
    }
    if let Some(r) = &s.restart {
        out.insert("Restart".to_string(), vec![r.clone()]);
    }
    out
}

/// The `systemd-nspawn@<name>.service` drop-in as unit-file text (`[Unit]`, `[Service]`), as
/// NixOS renders `systemd.services."systemd-nspawn@<name>"` with `overrideStrategy =
/// "asDropin"`. Not autoStart (`wantedBy`), which NixOS expresses as symlinks, not keys.
/// Empty when there is nothing to put in it. Holds the `[Service]` keys the module renders from
/// the options ([`module_service`]) as well as the raw ones.
pub fn dropin(i: &Instance) -> String {
    let mut service = module_service(&i.spec);
    for (k, vs) in &i.dropin.service {
        service
            .entry(k.clone())
            .or_default()
            .extend(vs.iter().cloned());
    }
    let mut out = String::new();
    for (name, map) in [("Unit", &i.dropin.unit), ("Service", &service)] {
        if map.is_empty() {
            continue;
        }
        if !out.is_empty() {
            out.push('\n');
        }
        out.push_str(&format!("[{name}]\n"));
        section(&mut out, File::Unit, name, map);
    }
    out
}

/// The `.nspawn` text this instance gets (toplevel shown as [`TOPLEVEL_PLACEHOLDER`]).
pub fn preview(i: &Instance) -> String {
    render(&merged(i))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::legacy::ForwardPort;
    use crate::translate::{ActivationStrategy, NetworkSpec, PrivateUsersSpec};

    fn spec() -> InstanceSpec {
        InstanceSpec {
            system_config: None,
            nixpkgs: None,
            special_args: None,
            network: None,
            forward_ports: vec![],
            activation_strategy: ActivationStrategy::Restart,
            ephemeral: false,
            bind_mounts: vec![],
            bind_mounts_expr: None,
            auto_start: true,
            timeout_start_sec: None,
            restart: None,
            private_users: PrivateUsersSpec {
                mode: "no".into(),
                ownership: Some("chown".into()),
            },
            condition: None,
        }
    }

    #[test]
    fn host_network_container_renders_exactly() {
        let text = render(&module_settings("web", &spec()));
        assert_eq!(
            text,
            "[Exec]\nBoot=no\nKillSignal=SIGRTMIN+3\nNotifyReady=yes\nParameters=@toplevel@/init\nPrivateUsers=no\n\
             \n\n[Files]\nBind=/nix/var/nix/profiles/per-nspawn/web:/nix/var/nix/profiles\n\
             Bind=/nix/var/nix/gcroots/per-nspawn/web:/nix/var/nix/gcroots\nBindReadOnly=/nix/store\n\
             BindReadOnly=/nix/var/nix/db\nBindReadOnly=/nix/var/nix/daemon-socket\n\
             \n\n[Network]\nPrivate=no\nVirtualEthernet=no\n\n"
        );
    }

    #[test]
    fn userns_ports_binds_and_network() {
        let mut s = spec();
        s.private_users = PrivateUsersSpec {
            mode: "pick".into(),
            ownership: Some("auto".into()),
        };
        s.ephemeral = true;
        s.network = Some(NetworkSpec {
            zone: Some("lab".into()),
            bridge: None,
            ..NetworkSpec::default()
        });
        s.forward_ports = vec![ForwardPort {
            protocol: "udp".into(),
            host_port: 53,
            container_port: None,
        }];
        s.bind_mounts = vec![
            BindMount {
                mount_point: "/z".into(),
                host_path: None,
                is_read_only: true,
                options: None,
            },
            BindMount {
                mount_point: "/a".into(),
                host_path: Some("/srv/a".into()),
                is_read_only: false,
                options: Some("norbind".into()),
            },
            BindMount {
                mount_point: "/b".into(),
                host_path: Some("/srv/b".into()),
                is_read_only: true,
                options: None,
            },
        ];
        let m = module_settings("db", &s);
        assert_eq!(m.exec["PrivateUsers"], vec!["pick"]);
        assert_eq!(m.exec["Ephemeral"], vec!["yes"]);
        assert_eq!(m.exec["LinkJournal"], vec!["auto"]);
        assert_eq!(
            m.files["BindReadOnly"],
            vec![
                "/nix/store:/nix/store:idmap",
                "/nix/var/nix/db:/nix/var/nix/db:idmap",
                "/nix/var/nix/daemon-socket:/nix/var/nix/daemon-socket:idmap",
                "/srv/b:/b",
                "/z"
            ]
        );
        assert_eq!(
            m.files["Bind"],
            vec![
                "/nix/var/nix/profiles/per-nspawn/db:/nix/var/nix/profiles:idmap",
                "/nix/var/nix/gcroots/per-nspawn/db:/nix/var/nix/gcroots:idmap",
                "/srv/a:/a:norbind"
            ]
        );
        assert_eq!(m.files["PrivateUsersOwnership"], vec!["auto"]);
        assert_eq!(m.network["Private"], vec!["yes"]);
        assert_eq!(m.network["VirtualEthernet"], vec!["yes"]);
        assert_eq!(m.network["Zone"], vec!["lab"]);
        assert_eq!(m.network["Port"], vec!["udp:53:53"]);
        // A numeric base UID idmaps too; "no" never renders an ownership.
        s.private_users.mode = "524288:65536".into();
        assert!(module_settings("db", &s).files["Bind"][0].ends_with(":idmap"));
        assert!(
            !module_settings("web", &spec())
                .files
                .contains_key("PrivateUsersOwnership")
        );
    }
}
