//! `extraFlags`: the legacy module pasted them, space-joined and unescaped, at the end of the
//! nspawn command line (so they override the module's own flags: last one wins). Each known
//! flag has a row in the mapping table with its own handler; anything else is reported.

use super::mapping::{Arg, Handler, MAPPINGS, Mapping};
use super::network::{network_namespace_warning, systemd_escape, valid_ifname};
use super::options::{add_bind, normalize_capability, plain_capability};
use super::*;
use crate::legacy::{BindMount, ForwardPort, Origin};

/// One flag occurrence: `--bind=/a:/b` → flag `--bind`, value `/a:/b`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FlagUse {
    pub flag: String,
    pub value: Option<String>,
    /// The words as written, for messages.
    pub written: String,
    pub origin: Origin,
}

impl FlagUse {
    fn v(&self) -> &str {
        self.value.as_deref().unwrap_or("")
    }
}

/// The row whose flag names include `name`.
pub fn row_for(name: &str) -> Option<&'static Mapping> {
    MAPPINGS.iter().find(|m| m.flags.contains(&name))
}

/// The words bash makes of an unquoted expansion with the default `IFS` (space, tab, newline):
/// a vertical tab, form feed, carriage return or a Unicode space stays inside its word, as it
/// did for the legacy start script.
pub fn bash_words(s: &str) -> impl Iterator<Item = &str> {
    s.split([' ', '\t', '\n']).filter(|w| !w.is_empty())
}

/// Row `extraFlags`: split into words (the legacy script expanded them unquoted), match each
/// against the flag rows, run their handlers in order.
pub fn extra_flags(tx: &mut Tx) {
    let Some(src) = tx.c.options.extra_flags.clone() else {
        return;
    };
    let words: Vec<String> = src
        .value
        .iter()
        .flat_map(|i| bash_words(i).map(str::to_string))
        .collect();
    // Entries the script split into several words (`"--property=DeviceAllow=/dev/x rw"`).
    let split_entries: Vec<&String> = src
        .value
        .iter()
        .filter(|e| bash_words(e).count() > 1)
        .collect();
    let mut i = 0;
    let mut unknown = Vec::new();
    while i < words.len() {
        let w = &words[i];
        i += 1;
        let (name, mut value) = if w.starts_with("--") {
            match w.split_once('=') {
                Some((n, v)) => (n.to_string(), Some(v.to_string())),
                None => (w.clone(), None),
            }
        } else if w.starts_with('-') && w.len() >= 2 {
            let (n, rest) = w.split_at(2);
            (
                n.to_string(),
                if rest.is_empty() {
                    None
                } else {
                    Some(rest.trim_start_matches('=').to_string())
                },
            )
        } else {
            unknown.push(w.clone());
            continue;
        };
        let Some(row) = row_for(&name) else {
            unknown.push(w.clone());
            continue;
        };
        let mut written = w.clone();
        match row.arg {
            Arg::Required if value.is_none() => {
                if i < words.len() {
                    value = Some(words[i].clone());
                    written = format!("{w} {}", words[i]);
                    i += 1;
                } else {
                    tx.warn(
                        &INVALID_VALUE,
                        "extraFlags",
                        Some(&src.origin),
                        format!("`{w}` needs a value and has none; dropped"),
                    );
                    continue;
                }
            }
            Arg::None if value.is_some() => {
                tx.warn(
                    &INVALID_VALUE,
                    "extraFlags",
                    Some(&src.origin),
                    format!("`{w}` takes no value; dropped"),
                );
                continue;
            }
            _ => {}
        }
        if value.as_deref().is_some_and(|v| v.contains(['"', '\''])) {
            tx.warn(
                &INVALID_VALUE,
                "extraFlags",
                Some(&src.origin),
                format!(
                    "`{written}` contains quote characters, which the legacy start script passed to nspawn literally \
                     (it did not remove them); not carried over: write the value without quotes"
                ),
            );
            continue;
        }
        let fu = FlagUse {
            flag: name,
            value,
            written,
            origin: src.origin.clone(),
        };
        if let Handler::Flag(f) = row.handler {
            f(tx, &fu);
        }
    }
    if !unknown.is_empty() {
        // A word that is not a flag, from an entry with a space: the script split the entry,
        // and nspawn took the word as an argument of its own (the command to run, before the
        // container's init). Say so: the legacy container did not get what the entry says.
        let strays: Vec<String> = unknown
            .iter()
            .filter(|u| !u.starts_with('-'))
            .filter_map(|u| {
                split_entries
                    .iter()
                    .find(|e| bash_words(e).any(|w| w == u.as_str()))
                    .map(|e| format!("`{u}` (from `{e}`)"))
            })
            .collect();
        let split_note = if strays.is_empty() {
            String::new()
        } else {
            format!(
                ". {} {}: the legacy start script pasted extraFlags into its command line unquoted, so an \
                 entry with a space was split, and nspawn got the rest as an argument of its own (the command to run \
                 in the container, before its init), not as part of the flag; write the entry without the space",
                strays.join(", "),
                if strays.len() == 1 {
                    "is not a flag"
                } else {
                    "are not flags"
                }
            )
        };
        tx.warn(
            &UNKNOWN_EXTRA_FLAG,
            "extraFlags",
            Some(&src.origin),
            format!(
                "{} {} no known .nspawn or drop-in equivalent and {} not carried over; add the matching key to \
                 systemd.nspawn.{}.*Config (see systemd.nspawn(5)) or drop {}{split_note}",
                unknown.iter().map(|u| format!("`{u}`")).collect::<Vec<_>>().join(", "),
                if unknown.len() == 1 { "has" } else { "have" },
                if unknown.len() == 1 { "was" } else { "were" },
                crate::nixtext::attr_name(&tx.c.name),
                if unknown.len() == 1 { "it" } else { "them" },
            ),
        );
    }
}

fn applied(tx: &mut Tx, f: &FlagUse, target: &str) {
    tx.applied("extraFlags", format!("{} → {target}", f.written));
}

fn ignored(tx: &mut Tx, f: &FlagUse, why: &str) {
    let origin = f.origin.clone();
    tx.warn(
        &EXTRA_FLAG_IGNORED,
        "extraFlags",
        Some(&origin),
        format!("`{}` was dropped: {why}", f.written),
    );
}

fn invalid(tx: &mut Tx, f: &FlagUse, why: &str) {
    let origin = f.origin.clone();
    tx.warn(
        &INVALID_VALUE,
        "extraFlags",
        Some(&origin),
        format!("`{}`: {why}; not carried over", f.written),
    );
}

pub fn flag_u(tx: &mut Tx, f: &FlagUse) {
    tx.i.spec.private_users = PrivateUsersSpec {
        mode: "pick".into(),
        ownership: Some("auto".into()),
    };
    applied(
        tx,
        f,
        "privateUsers = { mode = \"pick\"; ownership = \"auto\"; }",
    );
}

pub fn private_users(tx: &mut Tx, f: &FlagUse) {
    let v = match f.value.as_deref() {
        None | Some("yes") | Some("true") => "yes",
        Some("no") | Some("false") => "no",
        Some(v) => v,
    };
    let valid = matches!(v, "yes" | "no" | "pick" | "identity")
        || v.split(':')
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    if !valid {
        return invalid(
            tx,
            f,
            "not a PrivateUsers= value (yes, no, pick, identity or UID[:RANGE])",
        );
    }
    let pu = &mut tx.i.spec.private_users;
    pu.mode = v.to_string();
    // nspawn implies ownership `auto` for `pick` only, `off` otherwise; an ownership chosen
    // explicitly (chown, map) stays. Written out, as the stock unit's `-U` implies `auto`.
    let implied = matches!(pu.ownership.as_deref(), None | Some("auto") | Some("off"));
    if v == "no" {
        pu.ownership = None;
    } else if implied && v != "identity" {
        pu.ownership = Some(if v == "pick" { "auto" } else { "off" }.into());
    }
    applied(tx, f, &format!("privateUsers.mode = \"{v}\""));
}

pub fn private_users_ownership(tx: &mut Tx, f: &FlagUse) {
    let v = f.v();
    if !matches!(v, "off" | "chown" | "map" | "auto") {
        return invalid(tx, f, "not off, chown, map or auto");
    }
    tx.i.spec.private_users.ownership = Some(v.to_string());
    applied(tx, f, &format!("privateUsers.ownership = \"{v}\""));
}

pub fn private_users_chown(tx: &mut Tx, f: &FlagUse) {
    tx.i.spec.private_users.ownership = Some("chown".into());
    applied(tx, f, "privateUsers.ownership = \"chown\"");
}

pub fn resolv_conf(tx: &mut Tx, f: &FlagUse) {
    tx.set_exec("ResolvConf", f.v());
    applied(
        tx,
        f,
        &format!("[Exec] ResolvConf={} (overrides copyResolvConf)", f.v()),
    );
}

/// A generic handler: append the value to a raw key. `key` is `Section.Key`.
fn raw(tx: &mut Tx, f: &FlagUse, key: &str, value: &str, replace: bool) {
    let (sec, k) = key.split_once('.').unwrap_or(("Exec", key));
    match (sec, replace) {
        ("Exec", false) => tx.exec(k, value),
        ("Exec", true) => tx.set_exec(k, value),
        ("Files", false) => tx.files(k, value),
        ("Files", true) => tx.set_files(k, value),
        (_, false) => tx.network(k, value),
        (_, true) => {
            tx.i.raw_nspawn
                .network
                .insert(k.to_string(), vec![value.to_string()]);
        }
    }
    applied(tx, f, &format!("[{sec}] {k}={value}"));
}

pub fn system_call_filter(tx: &mut Tx, f: &FlagUse) {
    raw(tx, f, "Exec.SystemCallFilter", f.v(), false)
}

fn caps(tx: &mut Tx, f: &FlagUse, key: &str) {
    for c in f.v().split(',').filter(|c| !c.is_empty()) {
        if plain_capability(c) {
            raw(tx, f, key, &normalize_capability(c), false);
        } else {
            invalid(tx, f, &format!("`{c}` is not a capability name"));
        }
    }
}

pub fn drop_capability(tx: &mut Tx, f: &FlagUse) {
    caps(tx, f, "Exec.DropCapability")
}

pub fn capability(tx: &mut Tx, f: &FlagUse) {
    caps(tx, f, "Exec.Capability")
}

fn bind(tx: &mut Tx, f: &FlagUse, read_only: bool) {
    // nspawn's syntax: `\:` and `\\` escape inside the paths; the model holds plain paths.
    let (src, dst, opts) = crate::render::unit::split_bind_spec(f.v());
    let path_ok = |p: &str| (p.starts_with('/') || p.starts_with('+')) && p.len() > 1;
    if !path_ok(&src) || dst.as_deref().is_some_and(|d| !d.starts_with('/')) {
        return invalid(
            tx,
            f,
            "a bind mount needs absolute paths (SOURCE[:DEST[:OPTIONS]])",
        );
    }
    let b = match dst {
        Some(d) => BindMount {
            mount_point: d,
            host_path: Some(src),
            is_read_only: read_only,
            options: opts,
        },
        None => BindMount {
            mount_point: src,
            host_path: None,
            is_read_only: read_only,
            options: None,
        },
    };
    let mp = b.mount_point.clone();
    add_bind(tx, b);
    applied(
        tx,
        f,
        &format!("bindMounts.\"{mp}\" (isReadOnly = {read_only})"),
    );
}

pub fn bind_rw(tx: &mut Tx, f: &FlagUse) {
    bind(tx, f, false)
}

pub fn bind_ro(tx: &mut Tx, f: &FlagUse) {
    bind(tx, f, true)
}

pub fn tmpfs(tx: &mut Tx, f: &FlagUse) {
    raw(tx, f, "Files.TemporaryFileSystem", f.v(), false)
}

pub fn overlay(tx: &mut Tx, f: &FlagUse) {
    raw(tx, f, "Files.Overlay", f.v(), false)
}

pub fn overlay_ro(tx: &mut Tx, f: &FlagUse) {
    raw(tx, f, "Files.OverlayReadOnly", f.v(), false)
}

pub fn setenv(tx: &mut Tx, f: &FlagUse) {
    if f.v().is_empty() || f.v().starts_with('=') {
        return invalid(tx, f, "needs NAME=VALUE");
    }
    raw(tx, f, "Exec.Environment", f.v(), false)
}

pub fn network_namespace_path(tx: &mut Tx, f: &FlagUse) {
    let origin = f.origin.clone();
    tx.ensure_private_network();
    network_namespace_warning(tx, "extraFlags", f.v(), Some(&origin));
}

pub fn personality(tx: &mut Tx, f: &FlagUse) {
    raw(tx, f, "Exec.Personality", f.v(), true)
}

pub fn link_journal(tx: &mut Tx, f: &FlagUse) {
    raw(tx, f, "Exec.LinkJournal", f.v(), true)
}

pub fn property(tx: &mut Tx, f: &FlagUse) {
    let Some((k, v)) = f.v().split_once('=') else {
        return invalid(tx, f, "needs NAME=VALUE");
    };
    if k.is_empty() || !k.chars().all(|c| c.is_ascii_alphanumeric()) {
        return invalid(tx, f, "not a unit property name");
    }
    tx.dropin_service(k, v);
    applied(tx, f, &format!("systemd-nspawn@<name>.service {k}={v}"));
}

fn credential(tx: &mut Tx, f: &FlagUse, key: &str) {
    if !f.v().contains(':') {
        return invalid(tx, f, "needs ID:VALUE");
    }
    // Credential settings expand `%` specifiers in unit files: the unit-value writer doubles `%`.
    tx.dropin_service(key, f.v());
    let origin = f.origin.clone();
    let id = f.v().split(':').next().unwrap_or("").to_string();
    tx.warn(
        &EXTRA_FLAG_IGNORED,
        "extraFlags",
        Some(&origin),
        format!(
            "`{}` has no .nspawn key; it became {key}= on systemd-nspawn@{}.service, which hands the credential to \
             nspawn, not to the container. Check /run/credentials/@system/{id} inside; if it is missing, override \
             ExecStart= with --load-credential={id}:{id}",
            f.written, tx.c.name
        ),
    );
    applied(tx, f, &format!("systemd-nspawn@<name>.service {key}="));
}

pub fn load_credential(tx: &mut Tx, f: &FlagUse) {
    credential(tx, f, "LoadCredential")
}

pub fn set_credential(tx: &mut Tx, f: &FlagUse) {
    credential(tx, f, "SetCredential")
}

pub fn private_network(tx: &mut Tx, f: &FlagUse) {
    tx.ensure_private_network();
    applied(tx, f, "[Network] Private=yes");
}

pub fn network_veth(tx: &mut Tx, f: &FlagUse) {
    tx.ensure_private_network().veth = true;
    applied(tx, f, "network.veth = true ([Network] VirtualEthernet=yes)");
}

pub fn network_bridge(tx: &mut Tx, f: &FlagUse) {
    if !valid_ifname(f.v()) {
        return invalid(tx, f, "not an interface name");
    }
    let n = tx.ensure_private_network();
    n.veth = true;
    n.bridge = Some(f.v().to_string());
    n.bridge_expr = None;
    applied(tx, f, &format!("network.bridge = \"{}\"", f.v()));
}

pub fn network_zone(tx: &mut Tx, f: &FlagUse) {
    if !valid_ifname(&format!("vz-{}", f.v())) {
        return invalid(tx, f, "zone name too long or not an interface name");
    }
    let n = tx.ensure_private_network();
    n.veth = true;
    n.zone = Some(f.v().to_string());
    applied(tx, f, &format!("network.zone = \"{}\"", f.v()));
}

pub fn port(tx: &mut Tx, f: &FlagUse) {
    let parts: Vec<&str> = f.v().split(':').collect();
    let (proto, rest) = match parts.first() {
        Some(&p) if p == "tcp" || p == "udp" => (p, &parts[1..]),
        _ => ("tcp", &parts[..]),
    };
    let num = |s: &str| s.parse::<u16>().ok().filter(|n| *n > 0);
    let parsed = match rest {
        [h] => num(h).map(|h| (h, None)),
        [h, c] => num(h).zip(num(c)).map(|(h, c)| (h, Some(c))),
        _ => None,
    };
    let Some((host_port, container_port)) = parsed else {
        return invalid(tx, f, "not [PROTOCOL:]HOSTPORT[:CONTAINERPORT]");
    };
    if tx.i.spec.network.is_none() {
        let origin = f.origin.clone();
        tx.warn(
            &FORWARD_PORTS_IGNORED,
            "extraFlags",
            Some(&origin),
            format!(
                "`{}` needs a private network: nspawn refuses --port= without one, so the legacy container \
                 could not even start with it; dropped (set privateNetwork = true to forward ports)",
                f.written
            ),
        );
        return;
    }
    // A private network without a veth (macvlan, interfaces) is handled with the forwardPorts
    // option, after every row ran (network::ports_without_veth).
    let p = ForwardPort {
        protocol: proto.to_string(),
        host_port,
        container_port,
    };
    if !tx.i.spec.forward_ports.contains(&p) {
        tx.i.spec.forward_ports.push(p);
    }
    applied(tx, f, "forwardPorts");
}

fn ifname_key(tx: &mut Tx, f: &FlagUse, key: &str) {
    if !valid_ifname(f.v()) {
        return invalid(tx, f, "not an interface name");
    }
    tx.ensure_private_network();
    raw(tx, f, key, f.v(), false);
}

pub fn network_interface(tx: &mut Tx, f: &FlagUse) {
    ifname_key(tx, f, "Network.Interface");
    if valid_ifname(f.v()) {
        let dev = format!("sys-subsystem-net-devices-{}.device", systemd_escape(f.v()));
        tx.dropin_unit("After", dev.clone());
        tx.dropin_unit("Wants", dev);
    }
}

pub fn network_macvlan(tx: &mut Tx, f: &FlagUse) {
    ifname_key(tx, f, "Network.MACVLAN")
}

pub fn network_ipvlan(tx: &mut Tx, f: &FlagUse) {
    ifname_key(tx, f, "Network.IPVLAN")
}

pub fn network_veth_extra(tx: &mut Tx, f: &FlagUse) {
    let ok = f.v().split(':').count() <= 2 && f.v().split(':').all(valid_ifname);
    if !ok {
        return invalid(tx, f, "not HOSTIF[:CONTAINERIF]");
    }
    tx.ensure_private_network();
    raw(tx, f, "Network.VirtualEthernetExtra", f.v(), false);
}

pub fn hostname(tx: &mut Tx, f: &FlagUse) {
    raw(tx, f, "Exec.Hostname", f.v(), true)
}

pub fn machine(tx: &mut Tx, f: &FlagUse) {
    if f.v() == tx.c.name {
        applied(
            tx,
            f,
            "the machine name (systemd-nspawn@<name>.service sets it)",
        );
    } else {
        let why = format!(
            "the machine is named by its unit, systemd-nspawn@{}.service",
            tx.c.name
        );
        ignored(tx, f, &why);
    }
}

pub fn read_only(tx: &mut Tx, f: &FlagUse) {
    raw(tx, f, "Files.ReadOnly", "yes", true)
}

pub fn volatile(tx: &mut Tx, f: &FlagUse) {
    let v = f.value.clone().unwrap_or_else(|| "yes".into());
    raw(tx, f, "Files.Volatile", &v, true)
}

pub fn inaccessible(tx: &mut Tx, f: &FlagUse) {
    raw(tx, f, "Files.Inaccessible", f.v(), false)
}

pub fn no_new_privileges(tx: &mut Tx, f: &FlagUse) {
    raw(tx, f, "Exec.NoNewPrivileges", f.v(), true)
}

pub fn oom_score_adjust(tx: &mut Tx, f: &FlagUse) {
    raw(tx, f, "Exec.OOMScoreAdjust", f.v(), true)
}

pub fn cpu_affinity(tx: &mut Tx, f: &FlagUse) {
    raw(tx, f, "Exec.CPUAffinity", f.v(), true)
}

/// `--rlimit=RLIMIT_NOFILE=1024:4096` → `[Exec] LimitNOFILE=1024:4096`.
pub fn rlimit(tx: &mut Tx, f: &FlagUse) {
    const NAMES: &[&str] = &[
        "CPU",
        "FSIZE",
        "DATA",
        "STACK",
        "CORE",
        "RSS",
        "NOFILE",
        "AS",
        "NPROC",
        "MEMLOCK",
        "LOCKS",
        "SIGPENDING",
        "MSGQUEUE",
        "NICE",
        "RTPRIO",
        "RTTIME",
    ];
    let Some((name, v)) = f.v().split_once('=') else {
        return invalid(tx, f, "needs LIMIT=VALUE");
    };
    let n = name.trim_start_matches("RLIMIT_").to_ascii_uppercase();
    if !NAMES.contains(&n.as_str()) {
        return invalid(tx, f, "unknown resource limit");
    }
    raw(tx, f, &format!("Exec.Limit{n}"), v, true)
}

pub fn timezone(tx: &mut Tx, f: &FlagUse) {
    raw(tx, f, "Exec.Timezone", f.v(), true)
}

pub fn ephemeral(tx: &mut Tx, f: &FlagUse) {
    tx.i.spec.ephemeral = true;
    applied(tx, f, "ephemeral = true");
}

pub fn notify_ready(tx: &mut Tx, f: &FlagUse) {
    ignored(
        tx,
        f,
        "the module always sets [Exec] NotifyReady=yes (the NixOS init notifies)",
    )
}

pub fn kill_signal(tx: &mut Tx, f: &FlagUse) {
    if f.v() == "SIGRTMIN+3" {
        applied(tx, f, "[Exec] KillSignal=SIGRTMIN+3 (set by the module)");
    } else {
        ignored(
            tx,
            f,
            "the module sets [Exec] KillSignal=SIGRTMIN+3, which the NixOS init needs to shut down cleanly",
        )
    }
}

pub fn keep_unit(tx: &mut Tx, f: &FlagUse) {
    applied(tx, f, "systemd-nspawn@.service passes --keep-unit itself");
}

pub fn register(tx: &mut Tx, f: &FlagUse) {
    if matches!(f.v(), "yes" | "true" | "1") {
        applied(
            tx,
            f,
            "systemd-nspawn@.service registers the machine itself",
        );
    } else {
        ignored(
            tx,
            f,
            "systemd-nspawn@.service always registers the machine with systemd-machined (machinectl sees it)",
        )
    }
}

pub fn boot(tx: &mut Tx, f: &FlagUse) {
    ignored(
        tx,
        f,
        "the module runs the NixOS init directly ([Exec] Boot=no with Parameters=<toplevel>/init), as the legacy start script did",
    )
}

pub fn quiet(tx: &mut Tx, f: &FlagUse) {
    applied(tx, f, "systemd-nspawn@.service passes --quiet itself");
}

pub fn directory(tx: &mut Tx, f: &FlagUse) {
    let why = format!(
        "the root is /var/lib/machines/{} (systemd-nspawn@.service); the state move puts it there",
        tx.c.name
    );
    ignored(tx, f, &why)
}

#[cfg(test)]
mod tests {
    use super::bash_words;

    /// An entry with a space was split by the legacy script: the stray word is said to be
    /// the rest of that entry, which nspawn took as the command to run.
    #[test]
    fn a_split_entry_is_explained() {
        let c = crate::translate::example::example_container(
            r#"{ extraFlags = [ "--property=DeviceAllow=/dev/nvidia0 rw" "bogus" ]; }"#,
        )
        .unwrap();
        let i = crate::translate::translate(
            &c,
            &crate::translate::Context {
                output_file: "/etc/nixos/nspawn-containers.nix".into(),
            },
        );
        let w = i
            .warnings
            .iter()
            .find(|w| w.code == "unknown-extra-flag")
            .unwrap();
        assert!(
            w.message
                .contains("`rw` (from `--property=DeviceAllow=/dev/nvidia0 rw`) is not a flag")
                && w.message.contains("before its init")
                && !w.message.contains("`bogus` (from"),
            "{}",
            w.message
        );
    }

    #[test]
    fn words_split_like_bash_default_ifs() {
        let w: Vec<&str> =
            bash_words(" -U\t--setenv=A=1\u{a0}2\n--x=a\u{b}b\u{c}c\rd\u{2003}e  ").collect();
        assert_eq!(
            w,
            ["-U", "--setenv=A=1\u{a0}2", "--x=a\u{b}b\u{c}c\rd\u{2003}e"]
        );
    }
}
