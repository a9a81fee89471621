//! The Nix the migration writes: one attribute-set snippet per container
//! ([`instance_snippet`]), the whole host file ([`host_file`]) and the file an imperative
//! container is managed from ([`imperative_file`]). Attribute names go through
//! [`nixtext::attr_name`], strings through [`nixtext::string_literal`]; copied guest code is
//! inserted verbatim (already rewritten by the translator) and the result is formatted with
//! nixfmt.

use super::unit::{self, File};
use crate::legacy::{Kind, NixExpr};
use crate::nixtext::{self, attr_name, string_list, string_literal};
use crate::translate::{Instance, NetworkSpec, NetworkdUnit, NspawnSettings, StaticAddresses};
use std::collections::BTreeMap;

/// Format with nixfmt; when that fails (it should not for our own output) keep the text as is,
/// which is still a valid expression.
fn format(text: String) -> String {
    nixtext::format(&text).unwrap_or(text)
}

/// Verbatim Nix code, on its own lines so that a trailing comment cannot swallow what follows,
/// preceded by the `let` bindings of the host file it needs (carried by the reader).
fn verbatim(e: &NixExpr) -> String {
    if e.lets.is_empty() {
        return format!("(\n{}\n)", e.text);
    }
    let lets: Vec<&str> = e.lets.iter().map(|l| l.text.as_str()).collect();
    format!("(\nlet\n{}\nin\n{}\n)", lets.join("\n"), e.text)
}

/// Text for a `#` comment or a `throw` message: one line, control characters escaped (a
/// newline or CR would end the comment and start code; a NUL ends what Nix reads of the file).
fn one_line(s: &str) -> String {
    let joined = s.split_whitespace().collect::<Vec<_>>().join(" ");
    // Only control characters need escaping in a comment (a `\` is harmless there).
    joined
        .split('\\')
        .map(unit::shown)
        .collect::<Vec<_>>()
        .join("\\")
}

/// `"a"` for one value, `[ "a" "b" ]` for several.
fn values(vs: &[String]) -> String {
    match vs {
        [one] => string_literal(one),
        _ => string_list(vs),
    }
}

/// The values of one section as NixOS will copy them into the file: escaped by the
/// unit-value writer (NixOS itself escapes nothing). A value the writer refuses (the
/// translator already warned) is left out with a comment saying so.
fn unit_values(file: File, section: &str, key: &str, vs: &[String]) -> (Vec<String>, String) {
    let mut ok = Vec::new();
    let mut comments = String::new();
    for v in vs {
        match unit::value(file, section, key, v) {
            Ok(t) => ok.push(t),
            Err(r) => comments.push_str(&format!(
                "# nixos-nspawn: {}= not written: {}\n",
                unit::shown(key),
                r.reason
            )),
        }
    }
    (ok, comments)
}

fn section_attrs(file: File, section: &str, map: &BTreeMap<String, Vec<String>>) -> String {
    let mut out = String::from("{\n");
    for (k, vs) in map {
        let (vs, comments) = unit_values(file, section, k, vs);
        out.push_str(&comments);
        if !vs.is_empty() {
            out.push_str(&format!("{} = {};\n", attr_name(k), values(&vs)));
        }
    }
    out.push('}');
    out
}

fn static_addresses(s: &StaticAddresses) -> String {
    format!(
        "{{ hostAddresses = {}; containerPool = {}; }}",
        address_list(&s.host_addresses, &s.host_address_exprs),
        address_list(&s.container_pool, &s.container_pool_exprs)
    )
}

/// Literal addresses, then the computed ones: each evaluated by the host configuration and
/// given /32 (/128) when it has no prefix, as legacy's scripts took an address without one.
fn address_list(literal: &[String], computed: &[NixExpr]) -> String {
    let lits = string_list(literal);
    if computed.is_empty() {
        return lits;
    }
    let exprs: Vec<String> = computed
        .iter()
        .map(|e| {
            format!(
                // A function, not a `let`: a `let` would capture a name the copy uses.
                "((address: if lib.hasInfix \"/\" address then address else address + (if lib.hasInfix \":\" address then \"/128\" else \"/32\")) {})",
                verbatim(e)
            )
        })
        .collect();
    let computed = format!("[\n{}\n]", exprs.join("\n"));
    if literal.is_empty() {
        computed
    } else {
        format!("{lits} ++ {computed}")
    }
}

fn network_value(n: &Option<NetworkSpec>) -> String {
    let Some(n) = n else { return "null".into() };
    let mut out = String::from("{\n");
    if let Some(z) = &n.zone {
        out.push_str(&format!("zone = {};\n", string_literal(z)));
    }
    match (&n.bridge, &n.bridge_expr) {
        (Some(b), _) => out.push_str(&format!("bridge = {};\n", string_literal(b))),
        (None, Some(e)) => out.push_str(&format!("bridge = {};\n", verbatim(e))),
        (None, None) => {}
    }
    if !n.veth {
        out.push_str("veth = false;\n");
    }
    if !n.masquerade {
        out.push_str("masquerade = false;\n");
    }
    if !n.router_advertisements {
        out.push_str("routerAdvertisements = false;\n");
    }
    if n.point_to_point {
        out.push_str("pointToPoint = true;\n");
    }
    for (fam, st) in [("v4", &n.v4), ("v6", &n.v6)] {
        if st.has_host() || st.has_pool() {
            out.push_str(&format!("{fam}.static = {};\n", static_addresses(st)));
        }
    }
    out.push('}');
    out
}

/// A networkd unit as a `systemd.network.networks.<name>` value. Repeatable sections
/// (`[Address]`, `[Route]`) go into `extraConfig` as unit text: the `addresses` / `routes`
/// options changed shape between nixpkgs releases, extraConfig reads the same in all of them
/// (as the module does for `network.pointToPoint`).
fn networkd_value(u: &NetworkdUnit) -> String {
    let mut out = String::from("{\n");
    let mut extra = String::new();
    for (sec, keys) in &u.sections {
        if sec == "Address" || sec == "Route" {
            extra.push_str(&format!("[{sec}]\n"));
            let mut sorted: Vec<&(String, String)> = keys.iter().collect();
            sorted.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
            for (k, v) in sorted {
                extra.push_str(&format!("{k}={v}\n"));
            }
            extra.push('\n');
            continue;
        }
        let mut grouped: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (k, v) in keys {
            grouped.entry(k.clone()).or_default().push(v.clone());
        }
        let mut name = sec.clone();
        if let Some(first) = name.get(..1) {
            name = format!("{}{}", first.to_ascii_lowercase(), &sec[1..]);
        }
        name = match sec.as_str() {
            "NetDev" => "netdev".into(),
            "DHCPServer" => "dhcpServer".into(),
            "DHCPv4" => "dhcpV4".into(),
            "DHCPv6" => "dhcpV6".into(),
            _ => name,
        };
        out.push_str(&format!(
            "{}Config = {};\n",
            name,
            section_attrs(File::Networkd, sec, &grouped)
        ));
    }
    if !extra.is_empty() {
        out.push_str(&format!("extraConfig = {};\n", string_literal(&extra)));
    }
    out.push('}');
    out
}

/// `systemd.network.networks."<stem>"` (or `netdevs`) binding for a unit.
fn networkd_binding(u: &NetworkdUnit) -> String {
    let (coll, stem) = if let Some(s) = u.file_name.strip_suffix(".netdev") {
        ("netdevs", s)
    } else {
        (
            "networks",
            u.file_name.strip_suffix(".network").unwrap_or(&u.file_name),
        )
    };
    format!(
        "systemd.network.{coll}.{} = {};\n",
        attr_name(stem),
        networkd_value(u)
    )
}

/// Why there is no system-config, for the `throw` that stands in for it.
fn missing_config_message(i: &Instance) -> String {
    let reason = i
        .warnings
        .iter()
        .find(|w| {
            matches!(
                w.code,
                "prebuilt-system-path" | "flake-container" | "missing-system-config"
            ) || (w.code == "unresolved-expression" && w.option.ends_with(".config"))
        })
        .map(|w| one_line(&w.message))
        .unwrap_or_else(|| "no guest configuration was found".into());
    format!(
        "nixos-nspawn: container {} has no system-config yet: {reason}",
        unit::shown(&i.name)
    )
}

fn system_config_value(i: &Instance) -> String {
    let Some(e) = &i.spec.system_config else {
        return format!("throw {}", string_literal(&missing_config_message(i)));
    };
    if i.kind == Kind::Imperative {
        return path_literal(&e.text);
    }
    if i.guest_networks.is_empty() {
        return verbatim(e);
    }
    // The extra units only work with networkd in the guest (the module enables it for veth
    // containers; macvlan/interface-only ones may not have it yet).
    let mut out = format!(
        "{{\nimports = [ {} ];\nsystemd.network.enable = lib.mkDefault true;\n",
        verbatim(e)
    );
    for u in &i.guest_networks {
        out.push_str(&networkd_binding(u));
    }
    out.push('}');
    out
}

/// An absolute path as a Nix path literal (or `/. + "…"` when it has characters a literal
/// cannot hold).
fn path_literal(p: &str) -> String {
    let ok = p.starts_with('/')
        && p.len() > 1
        && !p.ends_with('/')
        && p.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '+' | '/'));
    if ok {
        p.to_string()
    } else {
        format!("(/. + {})", string_literal(p))
    }
}

/// The body of `nixos.containers.instances.<name>`.
fn instance_value(i: &Instance) -> String {
    let s = &i.spec;
    let mut out = String::from("{\n");
    out.push_str(&format!("system-config = {};\n", system_config_value(i)));
    match &s.nixpkgs {
        Some(e) => out.push_str(&format!("nixpkgs = {};\n", verbatim(e))),
        // An imperative container file has no host configuration to take `nixpkgs` from
        // (eval-container.nix refuses to guess). `nixos-container` built the legacy container
        // with `-f <nixpkgs/nixos>`: the host's `<nixpkgs>` from NIX_PATH, at every update.
        None if i.kind == crate::legacy::Kind::Imperative => out.push_str(
            "# What nixos-container built it with: the host's <nixpkgs> (NIX_PATH).\n\
             nixpkgs = <nixpkgs>;\n",
        ),
        None => {}
    }
    if let Some(e) = &s.special_args {
        out.push_str(&format!("specialArgs = {};\n", verbatim(e)));
    }
    out.push_str(&format!("network = {};\n", network_value(&s.network)));
    if !s.forward_ports.is_empty() {
        out.push_str("forwardPorts = [\n");
        for p in &s.forward_ports {
            out.push_str(&format!(
                "{{ protocol = {}; hostPort = {}; containerPort = {}; }}\n",
                string_literal(&p.protocol),
                p.host_port,
                p.container_port.unwrap_or(p.host_port)
            ));
        }
        out.push_str("];\n");
    }
    out.push_str(&format!(
        "activation.strategy = {};\n",
        string_literal(s.activation_strategy.as_str())
    ));
    out.push_str(&format!("ephemeral = {};\n", s.ephemeral));
    // Computed bind mounts are copied verbatim; literal ones (extraFlags `--bind=`) merge in.
    match (&s.bind_mounts_expr, s.bind_mounts.is_empty()) {
        (Some(e), true) => out.push_str(&format!("bindMounts = {};\n", verbatim(e))),
        (Some(e), false) => out.push_str(&format!("bindMounts = lib.mkMerge [\n{}\n", verbatim(e))),
        (None, _) => {}
    }
    if !s.bind_mounts.is_empty() {
        if s.bind_mounts_expr.is_none() {
            out.push_str("bindMounts = ");
        }
        out.push_str("{\n");
        let mut binds: Vec<_> = s.bind_mounts.iter().collect();
        binds.sort_by(|a, b| a.mount_point.cmp(&b.mount_point));
        for b in binds {
            out.push_str(&format!(
                "{} = {{ hostPath = {}; isReadOnly = {};{} }};\n",
                attr_name(&b.mount_point),
                b.host_path
                    .as_deref()
                    .map(string_literal)
                    .unwrap_or_else(|| "null".into()),
                b.is_read_only,
                b.options
                    .as_deref()
                    .map(|o| format!(" options = {};", string_literal(o)))
                    .unwrap_or_default()
            ));
        }
        out.push_str(match s.bind_mounts_expr {
            Some(_) => "}\n];\n",
            None => "};\n",
        });
    }
    out.push_str(&format!("autoStart = {};\n", s.auto_start));
    if let Some(t) = &s.timeout_start_sec {
        out.push_str(&format!("timeoutStartSec = {};\n", string_literal(t)));
    }
    if let Some(r) = &s.restart {
        out.push_str(&format!("restart = {};\n", string_literal(r)));
    }
    out.push_str(&format!(
        "privateUsers = {{ mode = {}; ownership = {}; }};\n",
        string_literal(&s.private_users.mode),
        s.private_users
            .ownership
            .as_deref()
            .map(string_literal)
            .unwrap_or_else(|| "null".into())
    ));
    out.push('}');
    out
}

fn raw_nspawn_value(s: &NspawnSettings) -> Option<String> {
    if s.exec.is_empty() && s.files.is_empty() && s.network.is_empty() {
        return None;
    }
    let mut out = String::from("{\n");
    for (attr, sec, map) in [
        ("execConfig", "Exec", &s.exec),
        ("filesConfig", "Files", &s.files),
        ("networkConfig", "Network", &s.network),
    ] {
        if !map.is_empty() {
            out.push_str(&format!(
                "{attr} = {};\n",
                section_attrs(File::Nspawn, sec, map)
            ));
        }
    }
    out.push('}');
    Some(out)
}

fn dropin_value(i: &Instance) -> Option<String> {
    if i.dropin.is_empty() && i.spec.auto_start {
        return None;
    }
    let mut out = String::from("{\noverrideStrategy = \"asDropin\";\n");
    let mut unit_config = BTreeMap::new();
    for (k, vs) in &i.dropin.unit {
        match k.as_str() {
            "After" | "Wants" | "Requires" | "Before" | "BindsTo" | "PartOf" => {
                let (vs, comments) = unit_values(File::Unit, "Unit", k, vs);
                out.push_str(&comments);
                out.push_str(&format!(
                    "{} = {};\n",
                    k.to_ascii_lowercase(),
                    string_list(&vs)
                ));
            }
            _ => {
                unit_config.insert(k.clone(), vs.clone());
            }
        }
    }
    if !unit_config.is_empty() {
        out.push_str(&format!(
            "unitConfig = {};\n",
            section_attrs(File::Unit, "Unit", &unit_config)
        ));
    }
    if !i.dropin.service.is_empty() {
        out.push_str(&format!(
            "serviceConfig = {};\n",
            section_attrs(File::Unit, "Service", &i.dropin.service)
        ));
    }
    if !i.spec.auto_start {
        out.push_str("wantedBy = lib.mkForce [ ];\n");
    }
    out.push('}');
    Some(out)
}

/// `lib.mkIf (<condition>) <value>` when the legacy definition was conditional.
fn conditional(i: &Instance, value: String) -> String {
    match &i.spec.condition {
        Some(c) => format!("lib.mkIf {} {value}", verbatim(c)),
        None => value,
    }
}

/// The bindings (`path = value;`) one container contributes to the host configuration.
pub fn bindings(i: &Instance) -> String {
    let name = attr_name(&i.name);
    let mut out = String::new();
    for w in i.warnings.iter().filter(|w| w.needs_human()) {
        out.push_str(&format!(
            "# {} needs a human ({}): {}\n",
            unit::shown(&i.name),
            w.code,
            one_line(&w.message).replace('\n', " ")
        ));
    }
    out.push_str(&format!(
        "nixos.containers.instances.{name} = {};\n",
        conditional(i, instance_value(i))
    ));
    if let Some(v) = raw_nspawn_value(&i.raw_nspawn) {
        out.push_str(&format!("systemd.nspawn.{name} = {};\n", conditional(i, v)));
    }
    if let Some(v) = dropin_value(i) {
        out.push_str(&format!(
            "systemd.services.{} = {};\n",
            string_literal(&format!("systemd-nspawn@{}", i.name)),
            conditional(i, v)
        ));
    }
    for u in &i.host_networks {
        let b = networkd_binding(u);
        match &i.spec.condition {
            None => out.push_str(&b),
            Some(_) => {
                // `path = value;` → `path = lib.mkIf (cond) value;`
                if let Some((path, value)) = b.split_once(" = ") {
                    let value = value.trim_end().trim_end_matches(';').to_string();
                    out.push_str(&format!("{path} = {};\n", conditional(i, value)));
                }
            }
        }
    }
    out
}

/// Zones the instances join (`--network-zone=`), each once: the module asserts that a zone an
/// instance names is declared. Declared with the module's defaults; the translator reports
/// what that changes (`network-zone-declared`).
fn zone_bindings(is: &[&Instance]) -> String {
    let mut zones: Vec<&str> = is
        .iter()
        .filter_map(|i| i.spec.network.as_ref()?.zone.as_deref())
        .collect();
    zones.sort();
    zones.dedup();
    zones
        .iter()
        .map(|z| format!("nixos.containers.zones.{} = {{ }};\n", attr_name(z)))
        .collect()
}

/// Names the copied code of `i` uses but does not bind, other than `config`, `lib`, `pkgs`
/// (as the readers found them): the host file takes them as module arguments.
pub fn module_args(i: &Instance) -> Vec<String> {
    let s = &i.spec;
    let mut out: Vec<String> = Vec::new();
    let bridge_expr = s.network.as_ref().and_then(|n| n.bridge_expr.clone());
    let addresses: Vec<NixExpr> = s
        .network
        .iter()
        .flat_map(|n| [&n.v4, &n.v6])
        .flat_map(|st| st.host_address_exprs.iter().chain(&st.container_pool_exprs))
        .cloned()
        .collect();
    let exprs = [
        &s.system_config,
        &s.nixpkgs,
        &s.special_args,
        &s.bind_mounts_expr,
        &s.condition,
        &bridge_expr,
    ];
    for e in exprs.into_iter().flatten().chain(&addresses) {
        for v in &e.free_vars {
            let ok = crate::nixtext::is_identifier(v)
                && !matches!(v.as_str(), "config" | "lib" | "pkgs");
            if ok && !out.contains(v) {
                out.push(v.clone());
            }
        }
    }
    out
}

/// One container as a NixOS module of its own: `{ config, lib, pkgs, ... }: {
/// nixos.containers.instances.<name> = {…}; systemd.nspawn.<name> = {…};
/// systemd.services."systemd-nspawn@<name>" = {…}; … }`. A closed expression (every name it
/// uses is bound), so it can be parsed, evaluated or saved as a file on its own.
pub fn instance_snippet(i: &Instance) -> String {
    let mut args: Vec<String> = vec!["config".into(), "lib".into(), "pkgs".into()];
    for a in module_args(i) {
        if !args.contains(&a) {
            args.push(a);
        }
    }
    format(format!(
        "{{ {}, ... }}:\n{{\n{}{}}}\n",
        args.join(", "),
        bindings(i),
        zone_bindings(&[i])
    ))
}

/// The file the migration writes (`/etc/nixos/nspawn-containers.nix`): every declarative
/// instance, as a NixOS module.
pub fn host_file(is: &[Instance]) -> String {
    let declarative: Vec<&Instance> = is.iter().filter(|i| i.kind == Kind::Declarative).collect();
    let mut args: Vec<String> = vec!["config".into(), "lib".into(), "pkgs".into()];
    for a in declarative.iter().flat_map(|i| module_args(i)) {
        if !args.contains(&a) {
            args.push(a);
        }
    }
    let mut out = String::from(
        "# Generated by `nixos-nspawn migrate` from the legacy `containers.*` definitions.\n\
         # It needs the nixos-nspawn NixOS module (nixos.containers.*) to be imported too.\n\
         # Import this file from configuration.nix and remove the migrated `containers.<name>`\n\
         # definitions. Comments saying \"needs a human\" must be resolved before switching.\n",
    );
    if args.len() > 3 {
        out.push_str(&format!(
            "# {} are used by the copied code and not bound in it: they are taken as module\n\
             # arguments here, as the legacy host module took them (specialArgs, _module.args).\n",
            args[3..].join(", ")
        ));
    }
    out.push_str(&format!("{{ {}, ... }}:\n{{\n", args.join(", ")));
    for i in &declarative {
        out.push_str(&bindings(i));
    }
    out.push_str(&zone_bindings(&declarative));
    out.push_str("}\n");
    format(out)
}

/// The file an imperative container is managed from (`nixos-nspawn update <name> --config`):
/// the RFC's imperative container expression.
pub fn imperative_file(i: &Instance) -> String {
    let mut out = format!(
        "# Imperative container {}, migrated from nixos-container by nixos-nspawn.\n\
         # Rebuild with: nixos-nspawn update {} (reads this file; --config FILE for another)\n",
        unit::shown(&i.name),
        unit::shown(&i.name)
    );
    for w in i.warnings.iter().filter(|w| w.needs_human()) {
        out.push_str(&format!(
            "# needs a human ({}): {}\n",
            w.code,
            one_line(&w.message)
        ));
    }
    let raw = crate::render::nspawn::render(&i.raw_nspawn);
    if raw.lines().any(|l| l.contains('=')) {
        out.push_str(&format!(
            "# Raw keys in {} besides the ones these options give:\n",
            one_line(&crate::plan::nspawn_file(&i.name).display().to_string())
        ));
        for l in raw.lines().filter(|l| l.contains('=')) {
            out.push_str(&format!("#   {}\n", one_line(l)));
        }
    }
    out.push_str(&instance_value(i));
    out.push('\n');
    format(out)
}
