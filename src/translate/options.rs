//! Non-network option rows: the guest config and how it is built, start/restart behaviour,
//! users, mounts, devices and capabilities, resolv.conf.

use super::guest::{self, ChangeKind, Paths};
use super::*;
use crate::legacy::{NixExpr, Origin, PrivateUsers, SourceKind};

/// Report the names a copied expression uses that the generated file does not bind itself:
/// `config`, `lib` and `pkgs` are its own module arguments, the host file's `let` bindings it
/// needs travel with it ([`NixExpr::lets`]). Arguments of the host's module function reach the
/// generated module the same way (it is imported into the same configuration), so they are
/// noted, not left to a human; anything else is a true limit.
fn free_vars(tx: &mut Tx, option: &str, e: &NixExpr) {
    let own = |v: &&String| !matches!(v.as_str(), "config" | "lib" | "pkgs");
    let quoted = |vs: &[&String]| {
        vs.iter()
            .map(|s| format!("`{s}`"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let (args, unbound): (Vec<&String>, Vec<&String>) = e
        .free_vars
        .iter()
        .filter(own)
        .partition(|v| e.module_args.contains(v));
    if !args.is_empty() {
        tx.warn(
            &MODULE_ARGUMENT,
            option,
            Some(&e.origin),
            format!(
                "the copied expression uses {}, argument(s) of the host file's module function ({}); the generated file \
                 takes them as module arguments too, so import it into the same configuration (the one that passes them, \
                 e.g. through specialArgs)",
                quoted(&args),
                e.origin.file.display()
            ),
        );
    }
    if unbound.is_empty() {
        return;
    }
    // Each name with the reason the reader found (which limit it is), where it found one.
    let named: Vec<String> = unbound
        .iter()
        .map(|v| {
            let why = e
                .why_free
                .iter()
                .find(|(n, _)| n == *v)
                .map(|(_, w)| w.clone())
                .unwrap_or_else(|| "bound nowhere in this file".to_string());
            format!("`{v}` ({why})")
        })
        .collect();
    let example = unbound
        .first()
        .map(|v| format!(" (e.g. `_module.args.{v} = …;`)"))
        .unwrap_or_default();
    tx.warn(
        &FREE_VARIABLE,
        option,
        Some(&e.origin),
        format!(
            "the copied expression uses {} in {}; a value that is not in the file cannot be carried into the \
             generated file, which takes such names as module arguments: the configuration it is imported into \
             must provide them{example}, or replace them by their values",
            named.join(", "),
            e.origin.file.display()
        ),
    );
}

/// The carried `let` bindings of `e`, rewritten for the new file: relative paths, and for the
/// guest config (`guest`) the same eth0 → host0 / useHostResolvConf rules as its text, since
/// they are part of it. Returns the bindings and what was changed in them (lines of the host
/// file).
fn rewrite_lets(
    tx: &mut Tx,
    option: &str,
    e: &NixExpr,
    guest: bool,
) -> (Vec<crate::legacy::LetBinding>, Vec<guest::Change>) {
    const HEAD: &str = "let\n";
    const TAIL: &str = "\nin null";
    let mut out = Vec::new();
    let mut changes = Vec::new();
    for l in &e.lets {
        // A binding alone is not an expression: rewrite it inside one, then take it back out.
        let wrapped = format!("{HEAD}{}{TAIL}", l.text);
        let paths = Paths {
            origin_file: &e.origin.file,
            first_line: l.line.saturating_sub(1).max(1),
            output_file: &tx.ctx.output_file,
        };
        let r = if guest {
            guest::rewrite_guest(&wrapped, &paths)
        } else {
            guest::rewrite_paths(&wrapped, &paths)
        };
        let text = r
            .text
            .strip_prefix(HEAD)
            .and_then(|t| t.strip_suffix(TAIL))
            .map(str::to_string);
        let Some(text) = text else {
            out.push(l.clone());
            continue;
        };
        changes.extend(r.changes);
        out.push(crate::legacy::LetBinding { text, ..l.clone() });
    }
    if !out.is_empty() {
        let names: Vec<&str> = out.iter().map(|l| l.name.as_str()).collect();
        tx.applied(
            option,
            format!(
                "carried what it uses from the host file with it: {} (its let bindings, or the arguments a function of the file was called with)",
                names.join(", ")
            ),
        );
    }
    (out, changes)
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
    let (lets, changes) = rewrite_lets(tx, option, e, false);
    report_paths(tx, option, &e.origin, &changes);
    NixExpr {
        text: r.text,
        lets,
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
/// relative paths, a gateway without interface as [`Tx::gateway`] says). Imperative containers
/// use their rootfs `configuration.nix`.
pub fn config(tx: &mut Tx) {
    let w0 = tx.i.warnings.len();
    let a0 = tx.i.applied.len();
    config_row(tx);
    tx.config_output = Some(RowOutput {
        warnings: w0..tx.i.warnings.len(),
        applied: a0..tx.i.applied.len(),
    });
}

/// Run the `config` row again, now that [`Tx::gateway`] is decided: its new output takes the
/// place of the first run's (same place in the report, nothing said twice).
pub fn rerun_config(tx: &mut Tx) {
    let Some(out) = tx.config_output.clone() else {
        return;
    };
    let w_tail = tx.i.warnings.split_off(out.warnings.end);
    tx.i.warnings.truncate(out.warnings.start);
    let a_tail = tx.i.applied.split_off(out.applied.end);
    tx.i.applied.truncate(out.applied.start);
    tx.i.guest_files.clear();
    tx.bare_gateways.clear();
    config(tx);
    tx.i.warnings.extend(w_tail);
    tx.i.applied.extend(a_tail);
}

/// The names the carried `let` bindings bind to a string (`gw = "10.0.0.1";`).
fn string_lets(lets: &[crate::legacy::LetBinding]) -> Vec<String> {
    use rnix::SyntaxKind;
    use rowan::ast::AstNode;
    let mut out = Vec::new();
    for l in lets {
        let wrapped = format!("let\n{}\nin null", l.text);
        if crate::nixtext::check_nesting(&wrapped).is_err() {
            continue;
        }
        let parse = rnix::Root::parse(&wrapped);
        if !parse.errors().is_empty() {
            continue;
        }
        let string_valued = parse
            .tree()
            .syntax()
            .descendants()
            .find(|n| n.kind() == SyntaxKind::NODE_ATTRPATH_VALUE)
            .and_then(|n| {
                n.children()
                    .filter(|c| c.kind() != SyntaxKind::NODE_ATTRPATH)
                    .last()
            })
            .is_some_and(|v| v.kind() == SyntaxKind::NODE_STRING);
        if string_valued {
            out.push(l.name.clone());
        }
    }
    out
}

fn config_row(tx: &mut Tx) {
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
            lets: Vec::new(),
            module_args: Vec::new(),
            guest_files: Vec::new(),
            why_free: Vec::new(),
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
    let decision = tx.gateway.clone();
    let gateway = match &decision {
        GatewayDecision::Rewrite(iface) => guest::GatewayRule::Rewrite(iface),
        _ => guest::GatewayRule::Find,
    };
    let string_names = string_lets(&e.lets);
    let r = guest::rewrite_guest_with(
        &e.text,
        &Paths {
            origin_file: &e.origin.file,
            first_line: e.origin.line.unwrap_or(1),
            output_file: &tx.ctx.output_file,
        },
        guest::GuestRules {
            gateway,
            string_names: &string_names,
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
    let (lets, let_changes) = rewrite_lets(tx, "config", e, true);
    let mut eth0_lines = Vec::new();
    let mut resolv_lines = Vec::new();
    for ch in r.changes.iter().chain(&let_changes) {
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
    report_paths(tx, "config", &e.origin, &let_changes);
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
    let mut gateways = Vec::new();
    for ch in &r.changes {
        if matches!(
            ch.what,
            ChangeKind::GatewayInterfaceAdded | ChangeKind::GatewayBare
        ) {
            gateways.push((e.origin.file.clone(), ch.clone()));
        }
    }
    let copies = guest_files(tx, e, gateway, &mut gateways);
    guest_gateways(tx, e, &decision, &gateways);
    free_vars(tx, "config", e);
    // The config imports the rewritten copies instead of the originals.
    let text = if copies.is_empty() {
        r.text
    } else {
        guest::retarget_paths(&r.text, &tx.ctx.output_file, &|abs| {
            copies.get(abs).map(|(c, _)| c.clone())
        })
    };
    for (copy, text) in copies.into_values() {
        tx.i.guest_files.insert(copy, text);
    }
    tx.i.spec.system_config = Some(NixExpr {
        text,
        lets,
        ..e.clone()
    });
    tx.applied("config", "system-config");
}

/// The files the guest config imports get the same rules as its text: the reader read the
/// relative `.nix` paths of the host's configuration tree ([`NixExpr::guest_files`]); a file
/// that needs a change, or could not be read, is a finding. Other paths (absolute, `<…>`,
/// `~/…`) were not read and are named as such.
fn guest_files(
    tx: &mut Tx,
    e: &NixExpr,
    gateway: guest::GatewayRule,
    gateways: &mut Vec<(std::path::PathBuf, guest::Change)>,
) -> std::collections::BTreeMap<std::path::PathBuf, (std::path::PathBuf, String)> {
    use guest::GuestFileFinding as F;
    let mut needs = Vec::new();
    let mut unreadable = Vec::new();
    let mut clean = Vec::new();
    for f in guest::check_guest_files(&e.guest_files, &tx.ctx.output_file, gateway) {
        match f {
            F::Clean(p) => clean.push(p.display().to_string()),
            F::GatewayBare(p, changes) => {
                gateways.extend(changes.into_iter().map(|c| (p.clone(), c)));
            }
            F::NeedsRewrite(p, changes) => {
                gateways.extend(
                    changes
                        .iter()
                        .filter(|c| c.what == ChangeKind::GatewayInterfaceAdded)
                        .map(|c| (p.clone(), c.clone())),
                );
                let what: Vec<String> = changes
                    .iter()
                    .map(|c| {
                        if c.after.trim().is_empty() {
                            format!("line {}: remove `{}`", c.line, c.before.trim())
                        } else {
                            format!(
                                "line {}: `{}` → `{}`",
                                c.line,
                                c.before.trim(),
                                c.after.trim()
                            )
                        }
                    })
                    .collect();
                needs.push(format!("{} ({})", p.display(), what.join("; ")));
            }
            F::Unreadable(p, why) => unreadable.push(format!("{} ({why})", p.display())),
            F::Unparsable(p, why) => {
                unreadable.push(format!("{} (does not parse: {why})", p.display()))
            }
        }
    }
    // Paths whose content was not seen: not relative (absolute, `<…>`, `~/…`), or relative
    // Nix files the reader did not give (data files, `./key.pem`, are not Nix code).
    let dir = e.origin.file.parent().unwrap_or(std::path::Path::new("/"));
    for p in referenced_files(&e.text) {
        if !p.starts_with("./") && !p.starts_with("../") {
            unreadable.push(format!("{p} (not a relative path, not read)"));
            continue;
        }
        let abs = guest::normalize(&dir.join(&p));
        let nix_like = abs.extension().is_none_or(|x| x == "nix");
        let seen = e
            .guest_files
            .iter()
            .any(|g| g.path == abs || g.path == abs.join("default.nix"));
        if nix_like && !seen {
            unreadable.push(format!("{} (not read)", abs.display()));
        }
    }
    // A file with a gateway left without interface is not "nothing to rewrite".
    clean.retain(|c| {
        !gateways
            .iter()
            .any(|(p, g)| g.what == ChangeKind::GatewayBare && p.display().to_string() == *c)
    });
    if !clean.is_empty() {
        tx.applied(
            "config",
            format!(
                "imported guest file(s) checked, nothing to rewrite: {}",
                clean.join(", ")
            ),
        );
    }
    // Files that need the rules are copied (with everything they are imported with) next to
    // the output, rewritten; the originals stay as they are for the legacy container.
    let copies = if needs.is_empty() {
        std::collections::BTreeMap::new()
    } else {
        guest::guest_copies(&e.guest_files, &tx.ctx.output_file, &tx.c.name, gateway)
    };
    if !copies.is_empty() {
        let list: Vec<String> = copies
            .iter()
            .map(|(o, (c, _))| format!("{} → {}", o.display(), c.display()))
            .collect();
        tx.warn(
            &GUEST_FILES_COPIED,
            "config",
            Some(&e.origin),
            format!(
                "imported guest files need the guest rules ({}); rewritten copies are written next to the output and \
                 the new system-config imports them: {}. The originals are unchanged (the legacy container still uses them)",
                needs.join("; "),
                list.join(", ")
            ),
        );
    }
    if unreadable.is_empty() {
        return copies;
    }
    let mut parts = Vec::new();
    if !needs.is_empty() && copies.is_empty() {
        parts.push(format!(
            "files it imports need changes under systemd-nspawn@ and could not be copied: {}",
            needs.join("; ")
        ));
    }
    if !unreadable.is_empty() {
        parts.push(format!(
            "files it imports could not be checked: {}; check them for eth0 (now host0), \
             networking.useHostResolvConf, boot.isContainer and a networking.defaultGateway without \
             interface",
            unreadable.join("; ")
        ));
    }
    tx.warn(
        &GUEST_FILES_NOT_REWRITTEN,
        "config",
        Some(&e.origin),
        format!(
            "the guest config of containers.{}: {}",
            crate::nixtext::attr_name(&tx.c.name),
            parts.join(". ")
        ),
    );
    copies
}

/// Report what became of the guest's gateways without an interface (`gateways`: where each
/// one is, and what the rule did with it), as [`Tx::gateway`] decided. The first pass only
/// records them for the decision.
fn guest_gateways(
    tx: &mut Tx,
    e: &NixExpr,
    decision: &GatewayDecision,
    gateways: &[(std::path::PathBuf, guest::Change)],
) {
    let at = |file: &std::path::Path, line: usize| format!("{}:{line}", file.display());
    if *decision == GatewayDecision::Find {
        tx.bare_gateways = gateways.iter().map(|(_, c)| c.before.clone()).collect();
        return;
    }
    let mut added = Vec::new();
    let mut kept = Vec::new();
    for (file, c) in gateways {
        match c.what {
            ChangeKind::GatewayInterfaceAdded => {
                tx.applied(
                    "config",
                    format!("{}: `{}` → `{}`", at(file, c.line), c.before, c.after),
                );
                added.push(format!(
                    "{}: `{}` → `{}`",
                    at(file, c.line),
                    c.before,
                    c.after
                ));
            }
            _ => {
                let why = if c.after.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", c.after)
                };
                kept.push(format!("{}: `{}`{why}", at(file, c.line), c.before));
            }
        }
    }
    if let GatewayDecision::Rewrite(iface) = decision
        && !added.is_empty()
    {
        tx.warn(
            &GUEST_GATEWAY_INTERFACE_ADDED,
            "config",
            Some(&e.origin),
            format!(
                "the guest's default gateway named no interface: {}. Legacy's guest used scripted networking, which \
                 routes through whatever link reaches the gateway; the container now runs systemd-networkd, where NixOS \
                 needs the interface (\"networking.defaultGateway.interface is not optional when using networkd\"). \
                 {iface} is the container's only network link (legacy's eth0), so it is the one",
                added.join("; ")
            ),
        );
    }
    if kept.is_empty() {
        return;
    }
    let why = match decision {
        GatewayDecision::Keep(why) => format!("{why}. "),
        _ => String::new(),
    };
    tx.warn(
        &GUEST_GATEWAY_WITHOUT_INTERFACE,
        "config",
        Some(&e.origin),
        format!(
            "the guest sets a default gateway without an interface: {}. Legacy's guest used scripted networking; the \
             container now runs systemd-networkd, where NixOS refuses that (\"….interface is not optional when using \
             networkd\"). {why}Write it as {{ address = \"…\"; interface = \"<link>\"; }}",
            kept.join("; ")
        ),
    );
}

/// Path literals in Nix text.
fn referenced_files(text: &str) -> Vec<String> {
    use rnix::SyntaxKind;
    use rowan::ast::AstNode;
    let mut out = Vec::new();
    // Too deep to parse safely (an abort in rnix): the rewrite already reported it.
    if crate::nixtext::check_nesting(text).is_err() {
        return out;
    }
    let parse = rnix::Root::parse(text);
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
    }) || tx.c.options.unresolved.get("bindMounts").is_some_and(|e| {
        // Copied as Nix (mount points are attribute names, written literally in practice).
        e.value.text.contains("\"/etc/resolv.conf\"")
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
    // key on whitespace: skip paths that would need quoting (the unit-value writer doubles `%`).
    let source = b.host_path.as_deref().unwrap_or(&b.mount_point);
    if source.starts_with('/')
        && !source.contains(|c: char| c.is_whitespace() || c == '"' || c == '\'' || c == '\\')
    {
        tx.dropin_unit("RequiresMountsFor", source.to_string());
    }
    tx.i.spec
        .bind_mounts
        .retain(|x| x.mount_point != b.mount_point);
    tx.i.spec.bind_mounts.push(b);
}

fn bind_ok(s: &str) -> bool {
    s.starts_with('/') && !s.chars().any(|c| c.is_control())
}

/// One legacy bind mount (plain paths): carried over when both paths are absolute.
fn add_bind_checked(tx: &mut Tx, origin: &crate::legacy::Origin, b: crate::legacy::BindMount) {
    let host_ok = b.host_path.as_deref().is_none_or(bind_ok);
    if !bind_ok(&b.mount_point) || !host_ok {
        tx.warn(
            &INVALID_VALUE,
            "bindMounts",
            Some(origin),
            format!(
                "bind mount {} → {} needs absolute paths; it was not carried over",
                crate::render::unit::shown(b.host_path.as_deref().unwrap_or(&b.mount_point)),
                crate::render::unit::shown(&b.mount_point)
            ),
        );
        return;
    }
    add_bind(tx, b);
}

/// Row `bindMounts`.
pub fn bind_mounts(tx: &mut Tx) {
    // Computed by Nix code: the module takes the legacy shape and only passes the paths on,
    // so the expression is copied as it is (with its `let` bindings) and evaluated by the host
    // configuration; a deployed value read meanwhile is superseded by it, as on a rebuild.
    if let Some(src) = tx.c.options.unresolved.get("bindMounts").cloned() {
        let copied = copy_expr(tx, "bindMounts", &src.value);
        let first = copied.text.lines().next().unwrap_or("").trim().to_string();
        tx.warn(
            &super::BIND_MOUNTS_COPIED_AS_NIX,
            "bindMounts",
            Some(&src.origin),
            format!(
                "bindMounts `{first}…` is computed by Nix code; it is copied verbatim into the \
                 generated file and evaluated there by the host configuration. Its paths are \
                 known only then: the .nspawn preview does not list their Bind= lines, no \
                 RequiresMountsFor= is added for them (add one if a source sits on a separately \
                 mounted filesystem), and a `:` or `\\` in them is now part of the path"
            ),
        );
        tx.applied(
            "bindMounts",
            "bindMounts copied verbatim as Nix (computed by Nix code)",
        );
        tx.i.spec.bind_mounts_expr = Some(copied);
        return;
    }
    let Some(src) = tx.c.options.bind_mounts.clone() else {
        return;
    };
    // The legacy module pasted both paths into `--bind=HOST:MOUNT` unescaped, so nspawn read
    // `\:` as a `:` in the path and a bare `:` as a separator; the new module escapes plain
    // paths itself. Paths read from a `.conf` were already split and unescaped by its reader.
    let from_conf = src.origin.file.extension().is_some_and(|e| e == "conf");
    for b in &src.value {
        if from_conf {
            add_bind_checked(tx, &src.origin, b.clone());
            continue;
        }
        let paths = [b.host_path.as_deref(), Some(b.mount_point.as_str())];
        if let Some(p) = paths
            .into_iter()
            .flatten()
            .find(|p| crate::render::unit::has_bare_colon(p))
        {
            tx.warn(
                &crate::render::unit::BIND_PATH_COLON,
                "bindMounts",
                Some(&src.origin),
                format!(
                    "the bind path `{}` holds a `:` that the legacy `--bind=` flag read as a separator \
                     (nspawn refused the mount, so the container could not start); it is now bound as the \
                     path `{}`. Write `\\:` in a legacy path only to mean a literal `:`",
                    crate::render::unit::shown(p),
                    crate::render::unit::shown(p)
                ),
            );
        }
        let mut b = b.clone();
        b.host_path = b
            .host_path
            .as_deref()
            .map(crate::render::unit::unescape_bind_path);
        b.mount_point = crate::render::unit::unescape_bind_path(&b.mount_point);
        add_bind_checked(tx, &src.origin, b);
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
