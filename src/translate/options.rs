//! Non-network option rows: the guest config and how it is built, start/restart behaviour,
//! users, mounts, devices and capabilities, resolv.conf.

use super::guest::{self, ChangeKind, Paths};
use super::*;
use crate::legacy::{NixExpr, Origin, PrivateUsers, SourceKind};

/// Warn about free variables of a copied expression (other than config/lib/pkgs, which the
/// new file binds).
fn free_vars(tx: &mut Tx, option: &str, e: &NixExpr) {
    let unbound: Vec<&String> = e
        .free_vars
        .iter()
        .filter(|v| !matches!(v.as_str(), "config" | "lib" | "pkgs"))
        .collect();
    if unbound.is_empty() {
        return;
    }
    let names = unbound
        .iter()
        .map(|s| format!("`{s}`"))
        .collect::<Vec<_>>()
        .join(", ");
    tx.warn(
        &FREE_VARIABLE,
        option,
        Some(&e.origin),
        format!(
            "the copied expression uses {names}, bound in the legacy host file ({}) but not in the generated file; \
             the generated file takes them as module arguments, which works for arguments the host passes \
             (flake `inputs` via specialArgs); for let bindings, define them there or inline their values",
            e.origin.file.display()
        ),
    );
}

/// Copy an expression other than the guest config: relative paths rewritten, free variables
/// reported.
pub fn copy_expr(tx: &mut Tx, option: &str, e: &NixExpr) -> NixExpr {
    let r = guest::rewrite_paths(
        &e.text,
        &Paths {
            origin_file: &e.origin.file,
            first_line: e.origin.line.unwrap_or(1),
            output_file: &tx.ctx.output_file,
        },
    );
    report_paths(tx, option, &e.origin, &r.changes);
    free_vars(tx, option, e);
    NixExpr {
        text: r.text,
        ..e.clone()
    }
}

fn report_paths(tx: &mut Tx, option: &str, origin: &Origin, changes: &[guest::Change]) {
    for ch in changes {
        let at = Origin::new(origin.kind, origin.file.clone(), Some(ch.line));
        match ch.what {
            ChangeKind::PathRewritten => {
                tx.applied(option, format!("line {}: path {} → {}", ch.line, ch.before, ch.after))
            }
            ChangeKind::PathNotRewritable => tx.warn(
                &UNREWRITABLE_PATH,
                option,
                Some(&at),
                format!(
                    "the relative path `{}` uses interpolation and resolves from {}, not from {}; make it absolute",
                    ch.before,
                    origin.file.parent().map(|p| p.display().to_string()).unwrap_or_default(),
                    tx.ctx.output_file.parent().map(|p| p.display().to_string()).unwrap_or_default()
                ),
            ),
            _ => {}
        }
    }
}

/// Row `config`: `system-config`, rewritten (eth0 → host0, no useHostResolvConf/isContainer,
/// relative paths). Imperative containers use their rootfs `configuration.nix`.
pub fn config(tx: &mut Tx) {
    if tx.i.kind == Kind::Imperative {
        let Some(file) = tx.c.rootfs_config.clone() else {
            return; // path/flake rows report what the container runs instead
        };
        // `file` was resolved inside the guest's root (discovery), so it holds no symlink: the
        // same path under the new state dir is the file itself. The literal
        // `etc/nixos/configuration.nix` could be a guest-planted link that Nix, evaluating on
        // the host, would follow to the host's own files.
        let Some(in_guest) =
            tx.c.state_dir
                .as_ref()
                .and_then(|st| file.strip_prefix(st).ok())
                .map(Path::to_path_buf)
        else {
            return;
        };
        let new_path = tx.i.state.to.join(in_guest);
        let origin = Origin::new(SourceKind::Conf, file.clone(), None);
        tx.i.spec.system_config = Some(NixExpr {
            text: new_path.to_string_lossy().to_string(),
            origin: origin.clone(),
            column: 1,
            free_vars: Vec::new(),
        });
        tx.applied(
            "config",
            format!(
                "system-config = {} (the guest's own file, after the state move)",
                new_path.display()
            ),
        );
        tx.warn(
            &IMPERATIVE_GUEST_CONFIG,
            "config",
            Some(&origin),
            format!(
                "the guest configuration is {} inside the container (moved to {}); the tool does not edit files inside a rootfs, \
                 so eth0 → host0 and removing networking.useHostResolvConf / boot.isContainer must be done there by hand \
                 before `nixos-nspawn update {}`",
                file.display(),
                new_path.display(),
                tx.c.name
            ),
        );
        return;
    }
    let Some(src) = tx.c.options.config.clone() else {
        return;
    };
    let e = &src.value;
    let r = guest::rewrite_guest(
        &e.text,
        &Paths {
            origin_file: &e.origin.file,
            first_line: e.origin.line.unwrap_or(1),
            output_file: &tx.ctx.output_file,
        },
    );
    if let Some(err) = &r.parse_error {
        tx.warn(
            &GUEST_CONFIG_UNPARSABLE,
            "config",
            Some(&e.origin),
            format!("the guest config does not parse ({err}); it was copied unchanged: check it for eth0, useHostResolvConf and relative paths"),
        );
    }
    tx.guest_resolv = r.resolv.clone();
    let mut eth0_lines = Vec::new();
    let mut resolv_lines = Vec::new();
    for ch in &r.changes {
        match ch.what {
            ChangeKind::Eth0 => {
                eth0_lines.push(ch.line);
                tx.applied(
                    "config",
                    format!(
                        "line {}: {} → {}",
                        ch.line,
                        ch.before.trim(),
                        ch.after.trim()
                    ),
                );
            }
            ChangeKind::UseHostResolvConfRemoved => {
                resolv_lines.push(ch.line);
                tx.applied(
                    "config",
                    format!("line {}: removed `{}`", ch.line, ch.before.trim()),
                );
            }
            ChangeKind::IsContainerRemoved => {
                tx.applied(
                    "config",
                    format!(
                        "line {}: removed `{}` (the module sets it)",
                        ch.line,
                        ch.before.trim()
                    ),
                );
            }
            _ => {}
        }
    }
    report_paths(tx, "config", &e.origin, &r.changes);
    let lines = |v: &[usize]| {
        v.iter()
            .map(|l| l.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    if !eth0_lines.is_empty() {
        eth0_lines.dedup();
        tx.warn(
            &ETH0_REFERENCE,
            "config",
            Some(&e.origin),
            format!(
                "eth0 on line(s) {} of {} was rewritten to host0 (the container's veth end is host0 under systemd-nspawn@); \
                 mv-* macvlan names are unchanged. Check the rewritten config",
                lines(&eth0_lines),
                e.origin.file.display()
            ),
        );
    }
    if !resolv_lines.is_empty() {
        tx.warn(
            &USE_HOST_RESOLV_CONF_REMOVED,
            "config",
            Some(&e.origin),
            format!(
                "networking.useHostResolvConf on line(s) {} was removed; the container's resolv.conf now comes from \
                 [Exec] ResolvConf= in its .nspawn file",
                lines(&resolv_lines)
            ),
        );
    }
    let files = referenced_files(&r.text);
    if !files.is_empty() {
        tx.warn(
            &GUEST_FILES_NOT_REWRITTEN,
            "config",
            Some(&e.origin),
            format!(
                "the guest config refers to {}; the tool rewrote only the text inside containers.{}.config, so check \
                 those files for eth0 (now host0), networking.useHostResolvConf and boot.isContainer",
                files.join(", "),
                crate::nixtext::attr_name(&tx.c.name)
            ),
        );
    }
    free_vars(tx, "config", e);
    tx.i.spec.system_config = Some(NixExpr {
        text: r.text,
        ..e.clone()
    });
    tx.applied("config", "system-config");
}

/// Path literals in (rewritten) Nix text: files whose content the rewrite did not see.
fn referenced_files(text: &str) -> Vec<String> {
    use rnix::SyntaxKind;
    use rowan::ast::AstNode;
    let parse = rnix::Root::parse(text);
    let mut out = Vec::new();
    for n in parse.tree().syntax().descendants() {
        if matches!(
            n.kind(),
            SyntaxKind::NODE_PATH_REL
                | SyntaxKind::NODE_PATH_ABS
                | SyntaxKind::NODE_PATH_SEARCH
                | SyntaxKind::NODE_PATH_HOME
        ) {
            let p = n.to_string();
            // `<nixpkgs/…>` modules are upstream code, not the user's.
            if !p.starts_with("<nixpkgs") && !out.contains(&p) {
                out.push(p);
            }
        }
    }
    out
}

/// Row `path`: a prebuilt toplevel. Derived from `config` when that exists.
pub fn path(tx: &mut Tx) {
    let Some(src) = tx.c.options.path.clone() else {
        if tx.i.spec.system_config.is_none()
            && tx.c.options.flake.is_none()
            && !tx.c.options.unresolved.contains_key("config")
            && !tx.c.options.unresolved.contains_key("path")
        {
            tx.warn(
                &MISSING_SYSTEM_CONFIG,
                "config",
                tx.c.conf_file.as_ref().map(|f| Origin::new(SourceKind::Conf, f.clone(), None)).as_ref(),
                "no guest configuration was found (no config, path or flake); write system-config for the instance by hand",
            );
        }
        return;
    };
    if tx.i.spec.system_config.is_some() {
        tx.applied(
            "path",
            "rebuilt from system-config (the old store path is not used)",
        );
        return;
    }
    if tx.c.options.flake.is_some() {
        return;
    }
    tx.warn(
        &PREBUILT_SYSTEM_PATH,
        "path",
        Some(&src.origin),
        format!(
            "the container runs the prebuilt system {} and there is no config to rebuild it from; the generated \
             system-config throws until you give it the module that built that system (or migrate the container as an \
             imperative one)",
            src.value
        ),
    );
}

/// Row `flake`.
pub fn flake(tx: &mut Tx) {
    let Some(src) = tx.c.options.flake.clone() else {
        return;
    };
    let (uri, attr) = match src.value.split_once('#') {
        Some((u, a)) => (u.to_string(), a.to_string()),
        None => (src.value.clone(), "container".to_string()),
    };
    tx.warn(
        &FLAKE_CONTAINER,
        "flake",
        Some(&src.origin),
        format!(
            "the container is built from the flake {uri} (nixosConfigurations.{attr}); the module builds from a \
             system-config module, so set system-config to that configuration's modules by hand (the generated \
             system-config throws until then)"
        ),
    );
}

/// Row `nixpkgs`.
pub fn nixpkgs(tx: &mut Tx) {
    let Some(src) = tx.c.options.nixpkgs.clone() else {
        return;
    };
    let e = copy_expr(tx, "nixpkgs", &src.value);
    tx.i.spec.nixpkgs = Some(e);
    tx.applied("nixpkgs", "nixpkgs");
}

/// Row `pkgs` (removed from NixOS).
pub fn pkgs(tx: &mut Tx) {
    let Some(src) = tx.c.options.unresolved.get("pkgs").cloned() else {
        return;
    };
    if tx.reader_warned("pkgs") {
        return;
    }
    tx.warn(
        &REMOVED_PKGS_OPTION,
        "pkgs",
        Some(&src.origin),
        "containers.<name>.pkgs no longer has any effect in NixOS (defining it throws); it was not carried over: \
         use nixpkgs = <path> or nixpkgs.pkgs inside the guest config",
    );
}

/// Row `specialArgs`.
pub fn special_args(tx: &mut Tx) {
    let Some(src) = tx.c.options.special_args.clone() else {
        return;
    };
    let e = copy_expr(tx, "specialArgs", &src.value);
    tx.i.spec.special_args = Some(e);
    tx.applied("specialArgs", "specialArgs");
}

/// Row `autoStart`.
pub fn auto_start(tx: &mut Tx) {
    let src = tx.c.options.auto_start.clone();
    let v = src.as_ref().map(|s| s.value).unwrap_or(false);
    tx.i.spec.auto_start = v;
    if tx.c.options.unresolved.contains_key("autoStart") {
        // Reported as unresolved-expression; not started until a human decides.
        tx.applied("autoStart", "unreadable; autoStart = false until decided");
        return;
    }
    if v {
        tx.applied("autoStart", "autoStart = true (wantedBy machines.target)");
    } else {
        tx.applied(
            "autoStart",
            "autoStart = false + systemd-nspawn@<name>.service wantedBy = lib.mkForce [ ]",
        );
        tx.warn(
            &NOT_AUTO_STARTED,
            "autoStart",
            src.as_ref().map(|s| &s.origin),
            format!(
                "the legacy container was not started at boot (autoStart = false{}); the new instance is not either: \
                 start it with `machinectl start {}` or set autoStart = true",
                if src.is_none() { ", the default" } else { "" },
                tx.c.name
            ),
        );
    }
}

/// Row `restartIfChanged` → `activation.strategy`.
pub fn restart_if_changed(tx: &mut Tx) {
    let v =
        tx.c.options
            .restart_if_changed
            .as_ref()
            .map(|s| s.value)
            .unwrap_or(true);
    let s = if tx.i.spec.auto_start && v {
        ActivationStrategy::Restart
    } else {
        ActivationStrategy::None
    };
    tx.i.spec.activation_strategy = s;
    if tx.c.options.restart_if_changed.is_some() || s == ActivationStrategy::Restart {
        tx.applied(
            "restartIfChanged",
            format!("activation.strategy = \"{}\"", s.as_str()),
        );
    }
}

/// Row `timeoutStartSec`.
/// The legacy option's default (nixos-containers.nix: `timeoutStartSec = "1min"`, on the
/// declarative units and on the `container@.service` template alike). The stock
/// `systemd-nspawn@.service` has none (systemd's default, 90 s), so it is always written.
pub const LEGACY_TIMEOUT_START_SEC: &str = "1min";

pub fn timeout_start_sec(tx: &mut Tx) {
    let Some(src) = tx.c.options.timeout_start_sec.clone() else {
        tx.i.spec.timeout_start_sec = Some(LEGACY_TIMEOUT_START_SEC.to_string());
        tx.applied(
            "timeoutStartSec",
            format!("timeoutStartSec = \"{LEGACY_TIMEOUT_START_SEC}\" (the legacy default)"),
        );
        return;
    };
    let v = src.value.trim();
    if v.is_empty() || v.contains(|c: char| c.is_control()) {
        tx.warn(
            &INVALID_VALUE,
            "timeoutStartSec",
            Some(&src.origin),
            format!("`{}` is not a time span; not carried over", src.value),
        );
        return;
    }
    tx.i.spec.timeout_start_sec = Some(v.to_string());
    tx.applied("timeoutStartSec", "timeoutStartSec");
}

/// Row `ephemeral`.
pub fn ephemeral(tx: &mut Tx) {
    let Some(src) = tx.c.options.ephemeral.clone() else {
        return;
    };
    tx.i.spec.ephemeral = src.value;
    if src.value {
        tx.applied("ephemeral", "ephemeral = true ([Exec] Ephemeral=yes)");
    }
}

/// Row `enableTun`.
pub fn enable_tun(tx: &mut Tx) {
    let Some(src) = tx.c.options.enable_tun.clone() else {
        return;
    };
    if !src.value {
        return;
    }
    tx.dropin_service("DeviceAllow", "/dev/net/tun rwm");
    tx.exec("Capability", "CAP_NET_ADMIN");
    tx.applied("enableTun", "systemd-nspawn@<name>.service DeviceAllow=/dev/net/tun rwm + [Exec] Capability=CAP_NET_ADMIN");
}

/// Row `copyResolvConf` (with what the guest says about `useHostResolvConf` / resolved).
pub fn copy_resolv_conf(tx: &mut Tx) {
    let src = tx.c.options.copy_resolv_conf.clone();
    // Unset: the Nix option defaults to true, and the module writes COPY_RESOLV_CONF=1 into the
    // .conf. A deployed .conf without it (written by `nixos-container create`) means the start
    // script's `[ "$COPY_RESOLV_CONF" = 1 ]` was false: nothing was copied.
    let from_conf = tx.c.sources.contains(&SourceKind::Conf);
    let copy = src.as_ref().map(|s| s.value).unwrap_or(!from_conf);
    let g = tx.guest_resolv.clone();
    // A bind mount onto /etc/resolv.conf (a common legacy workaround) provides the file itself;
    // nspawn must not also write one there.
    let bound = tx.c.options.bind_mounts.as_ref().is_some_and(|b| {
        b.value
            .iter()
            .any(|m| m.mount_point.trim_end_matches('/') == "/etc/resolv.conf")
    });
    let (mode, why) = if !copy && src.is_none() {
        (
            "off",
            "the .conf has no COPY_RESOLV_CONF=1, so the legacy start script did not copy resolv.conf",
        )
    } else if !copy {
        ("off", "copyResolvConf = false")
    } else if bound {
        ("off", "a bind mount provides /etc/resolv.conf")
    } else if g.use_host_resolv_conf_false {
        ("off", "the guest set networking.useHostResolvConf = false")
    } else if g.uses_resolved {
        ("off", "the guest runs systemd-resolved")
    } else {
        (
            "copy-host",
            "the legacy start script copied the host's /etc/resolv.conf",
        )
    };
    tx.set_exec("ResolvConf", mode);
    tx.applied(
        "copyResolvConf",
        format!("[Exec] ResolvConf={mode} ({why})"),
    );
}

/// Row `privateUsers`.
pub fn private_users(tx: &mut Tx) {
    let src = tx.c.options.private_users.clone();
    let (mode, own) = match src.as_ref().map(|s| &s.value) {
        None | Some(PrivateUsers::No) => ("no".to_string(), None),
        Some(PrivateUsers::Identity) => ("identity".to_string(), None),
        Some(PrivateUsers::Pick) => ("pick".to_string(), Some("auto".to_string())),
        // nspawn implies ownership `auto` only for `pick`; legacy passed no ownership flag, so
        // a fixed base ran with `off` (an already shifted tree stays as it is). Explicit,
        // because the stock unit's `-U` would otherwise imply `auto`.
        Some(PrivateUsers::Base(n)) => (n.to_string(), Some("off".to_string())),
    };
    tx.applied(
        "privateUsers",
        format!("privateUsers.mode = \"{mode}\" ([Exec] PrivateUsers={mode}, always explicit)"),
    );
    tx.i.spec.private_users = PrivateUsersSpec {
        mode,
        ownership: own,
    };
}

/// Add or replace a bind mount (keyed by mount point, as the module is).
pub fn add_bind(tx: &mut Tx, mut b: crate::legacy::BindMount) {
    if b.options.is_some() && b.host_path.is_none() {
        // `<mp>:<opts>` would read as source:destination; spell the source out.
        b.host_path = Some(b.mount_point.clone());
    }
    // Order the unit after the mounts holding the source, as legacy did. Unit files split this
    // key on whitespace and expand `%` specifiers: skip paths that would need quoting, double `%`.
    let source = b.host_path.as_deref().unwrap_or(&b.mount_point);
    if source.starts_with('/')
        && !source.contains(|c: char| c.is_whitespace() || c == '"' || c == '\'' || c == '\\')
    {
        tx.dropin_unit("RequiresMountsFor", source.replace('%', "%%"));
    }
    tx.i.spec
        .bind_mounts
        .retain(|x| x.mount_point != b.mount_point);
    tx.i.spec.bind_mounts.push(b);
}

fn bind_ok(s: &str) -> bool {
    s.starts_with('/') && !s.chars().any(|c| c.is_control())
}

/// Row `bindMounts`.
pub fn bind_mounts(tx: &mut Tx) {
    let Some(src) = tx.c.options.bind_mounts.clone() else {
        return;
    };
    for b in &src.value {
        let host_ok = b.host_path.as_deref().is_none_or(bind_ok);
        if !bind_ok(&b.mount_point) || !host_ok {
            tx.warn(
                &INVALID_VALUE,
                "bindMounts",
                Some(&src.origin),
                format!(
                    "bind mount {} → {} needs absolute paths; it was not carried over",
                    b.host_path.as_deref().unwrap_or(&b.mount_point),
                    b.mount_point
                ),
            );
            continue;
        }
        add_bind(tx, b.clone());
    }
    if !src.value.is_empty() {
        tx.applied(
            "bindMounts",
            "bindMounts (read-only unless isReadOnly = false) + drop-in RequiresMountsFor=",
        );
    }
}

/// Row `allowedDevices`.
pub fn allowed_devices(tx: &mut Tx) {
    let Some(src) = tx.c.options.allowed_devices.clone() else {
        return;
    };
    for d in &src.value {
        let mod_ok =
            !d.modifier.is_empty() && d.modifier.chars().all(|c| matches!(c, 'r' | 'w' | 'm'));
        let node_ok =
            !d.node.is_empty() && !d.node.chars().any(|c| c.is_whitespace() || c.is_control());
        if !mod_ok || !node_ok {
            tx.warn(
                &INVALID_VALUE,
                "allowedDevices",
                Some(&src.origin),
                format!("device `{}` with modifier `{}` is not a valid DeviceAllow= entry; not carried over", d.node, d.modifier),
            );
            continue;
        }
        tx.dropin_service("DeviceAllow", format!("{} {}", d.node, d.modifier));
    }
    if !src.value.is_empty() {
        tx.applied(
            "allowedDevices",
            "systemd-nspawn@<name>.service DeviceAllow= (appended)",
        );
    }
}

/// Row `tmpfs`.
pub fn tmpfs(tx: &mut Tx) {
    let Some(src) = tx.c.options.tmpfs.clone() else {
        return;
    };
    for t in &src.value {
        if !t.starts_with('/') || t.chars().any(|c| c.is_whitespace() || c.is_control()) {
            tx.warn(
                &INVALID_VALUE,
                "tmpfs",
                Some(&src.origin),
                format!("`{t}` is not an absolute path[:options]; not carried over"),
            );
            continue;
        }
        tx.files("TemporaryFileSystem", t.clone());
    }
    if !src.value.is_empty() {
        tx.applied("tmpfs", "[Files] TemporaryFileSystem=");
    }
}

/// Is this a plain capability name (`CAP_NET_ADMIN`, `cap_sys_time`, `all`)?
pub fn plain_capability(s: &str) -> bool {
    s.eq_ignore_ascii_case("all")
        || (s.len() > 4
            && s[..4].eq_ignore_ascii_case("cap_")
            && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
}

/// `cap_net_admin` → `CAP_NET_ADMIN`; `ALL` → `all`.
pub fn normalize_capability(s: &str) -> String {
    if s.eq_ignore_ascii_case("all") {
        "all".to_string()
    } else {
        s.to_ascii_uppercase()
    }
}

/// Row `additionalCapabilities`: [Exec] Capability=, refusing injected flags.
pub fn additional_capabilities(tx: &mut Tx) {
    let Some(src) = tx.c.options.additional_capabilities.clone() else {
        return;
    };
    for item in &src.value {
        let injected = item.contains(['"', '\'', ' ', '=', '\t', '\n', '$', '`', ';', '\\'])
            || item.contains("--");
        if injected {
            tx.warn(
                &INJECTED_FLAGS,
                "additionalCapabilities",
                Some(&src.origin),
                format!(
                    "the item {} is not a capability name: it closed the quote of --capability=\"…\" in the legacy start \
                     script and injected extra flags. It was NOT carried over; translate the flags it meant into \
                     extraFlags (the tool translates known ones) or systemd.nspawn.{}.*Config by hand",
                    crate::nixtext::string_literal(item),
                    crate::nixtext::attr_name(&tx.c.name)
                ),
            );
            continue;
        }
        // The legacy module joined the items with "," inside --capability="…".
        for cap in item.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            if plain_capability(cap) {
                tx.exec("Capability", normalize_capability(cap));
            } else {
                tx.warn(
                    &INVALID_VALUE,
                    "additionalCapabilities",
                    Some(&src.origin),
                    format!("`{cap}` is not a capability name (CAP_…); not carried over"),
                );
            }
        }
    }
    if !src.value.is_empty() {
        tx.applied("additionalCapabilities", "[Exec] Capability=");
    }
}
