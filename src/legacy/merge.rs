//! Merging the sources of one container into typed [`LegacyOptions`].
//!
//! Priority (last wins): `.conf` < unit < Nix source < evaluated JSON, i.e. what is configured
//! beats what is deployed. When a configured and a deployed source both state an option and the
//! values differ after normalising (`containerPort = null` is the host port, bind mounts and
//! ports are sets, …), the configuration was changed but not switched to: a
//! `config-not-deployed` warning quotes both values and both places. A value the Nix reader
//! could not reduce (`Value::Expr`) goes to `unresolved` with a `needs-eval` warning; a
//! deployed value, when there is one, stands in meanwhile. No I/O.

use crate::legacy::model::{
    AllowedDevice, BindMount, ExtraVeth, ForwardPort, LegacyOptions, NixExpr, Origin, PrivateUsers,
    SourceFacts, SourceKind, Sourced, Value,
};
use crate::nixtext;
use crate::warnings::{Category, Warning, WarningSpec};
use serde::Serialize;
use std::collections::BTreeMap;

pub const NEEDS_EVAL: WarningSpec = WarningSpec {
    code: "needs-eval",
    category: Category::NeedsHuman,
    summary: "an option's value is a Nix expression that cannot be read without evaluating the host configuration",
};
pub const OPTION_WRONG_TYPE: WarningSpec = WarningSpec {
    code: "option-wrong-type",
    category: Category::NeedsHuman,
    summary: "an option has a value of the wrong type; it is ignored",
};
pub const CONFIG_NOT_DEPLOYED: WarningSpec = WarningSpec {
    code: "config-not-deployed",
    category: Category::ChangedMeaning,
    summary: "the configuration states a different value than the deployed container uses; the configured value is migrated",
};
pub const UNKNOWN_OPTION: WarningSpec = WarningSpec {
    code: "unknown-option",
    category: Category::NeedsHuman,
    summary: "a container sets something that is not a containers.<name> option; it is not carried over",
};

/// Warning codes owned by the merge step.
pub const WARNINGS: &[&WarningSpec] = &[
    &NEEDS_EVAL,
    &OPTION_WRONG_TYPE,
    &CONFIG_NOT_DEPLOYED,
    &UNKNOWN_OPTION,
];

/// One container, all sources merged.
#[derive(Clone, Debug, PartialEq)]
pub struct Merged {
    pub options: LegacyOptions,
    pub condition: Option<NixExpr>,
    /// The kinds of source that described the container, in priority order.
    pub sources: Vec<SourceKind>,
    /// Reader warnings (passed through) followed by merge findings.
    pub warnings: Vec<Warning>,
}

/// Every `containers.<name>` option the merge knows: derived from the option table.
pub use crate::legacy::options::OPTION_NAMES;

type Cands = Vec<(Value, Origin)>;

/// A conversion from an untyped value: `Ok(None)` is an explicit `null`; `Err` names the
/// expected type.
pub(crate) type Conv<T> = fn(&Value) -> Result<Option<T>, String>;

pub(crate) struct Merger<'a> {
    name: &'a str,
    by_option: BTreeMap<String, Cands>,
    warnings: Vec<Warning>,
    unresolved: BTreeMap<String, Sourced<NixExpr>>,
    /// Options a reader already reported as computed by Nix code (with the exact command
    /// to evaluate them): one warning per problem, so `needs-eval` is not added for these.
    reported_unresolved: std::collections::BTreeSet<String>,
}

/// True when an expression sits anywhere inside the value (e.g. one bind mount's `hostPath`).
pub(crate) fn contains_expr(v: &Value) -> bool {
    match v {
        Value::Expr(_) => true,
        Value::List(l) => l.iter().any(contains_expr),
        Value::Attrs(a) => a.values().any(contains_expr),
        _ => false,
    }
}

/// The free variables of every expression inside the value.
pub(crate) fn nested_exprs<'v>(v: &'v Value, out: &mut Vec<&'v NixExpr>) {
    match v {
        Value::Expr(e) => out.push(e),
        Value::List(l) => l.iter().for_each(|x| nested_exprs(x, out)),
        Value::Attrs(a) => a.values().for_each(|x| nested_exprs(x, out)),
        _ => {}
    }
}

/// Data with code inside, as one expression: its text, and the free names, carried `let`
/// bindings and module arguments of every piece of code in it (so that
/// `specialArgs = { inherit inputs; }` still says it needs `inputs`).
fn data_with_code(v: &Value, origin: &Origin) -> NixExpr {
    let mut parts = Vec::new();
    nested_exprs(v, &mut parts);
    let mut e = NixExpr::plain(value_to_nix(v), origin.clone(), 1, Vec::new());
    e.absorb(parts);
    e
}

fn describe(v: &Value) -> String {
    match v {
        Value::Expr(e) => e.text.clone(),
        other => serde_json::to_string(other).unwrap_or_else(|_| format!("{other:?}")),
    }
}

fn json<T: Serialize + std::fmt::Debug>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| format!("{v:?}"))
}

impl Merger<'_> {
    fn option_path(&self, option: &str) -> String {
        format!("containers.{}.{}", self.name, option)
    }

    /// Pick the typed value of `option`: the highest-priority candidate that converts.
    pub(crate) fn pick<T, N>(
        &mut self,
        option: &str,
        conv: Conv<T>,
        norm: impl Fn(&T) -> N,
    ) -> Option<Sourced<T>>
    where
        T: Clone + Serialize + std::fmt::Debug,
        N: PartialEq,
    {
        let cands = self.by_option.remove(option)?;
        let name = self.name;
        let path = self.option_path(option);
        // Converted candidates, ascending priority: (value, origin).
        let mut ok: Vec<(Option<T>, Origin)> = Vec::new();
        let mut expr: Option<(NixExpr, Origin)> = None;
        for (v, origin) in &cands {
            match v {
                Value::Expr(e) => expr = Some((e.clone(), origin.clone())),
                // Data with code inside is unresolved as a whole, not of the wrong type.
                v if contains_expr(v) => {
                    expr = Some((data_with_code(v, origin), origin.clone()));
                }
                v => match conv(v) {
                    Ok(t) => ok.push((t, origin.clone())),
                    Err(expected) => self.warnings.push(
                        Warning::new(
                            &OPTION_WRONG_TYPE,
                            path.clone(),
                            format!(
                                "container {name}: {path} at {} is {}, but it must be {expected}; this value is ignored. Fix it in the container definition",
                                origin.location(),
                                describe(v)
                            ),
                        )
                        .at(origin.file.clone(), origin.line),
                    ),
                },
            }
        }
        let winner = ok.last().cloned();
        if let Some((e, origin)) = expr {
            // Only when the expression outranks every value that could be read.
            if winner.as_ref().is_none_or(|(_, o)| o.kind <= origin.kind) {
                let meanwhile = match &winner {
                    Some((Some(t), o)) => format!(
                        " Until then the deployed value {} from {} is used.",
                        json(t),
                        o.location()
                    ),
                    _ => String::new(),
                };
                if !self.reported_unresolved.contains(option)
                    && !crate::legacy::nix_source::CARRIED_AS_NIX.contains(&option)
                {
                    self.warnings.push(
                    Warning::new(
                        &NEEDS_EVAL,
                        path.clone(),
                        format!(
                            "container {name}: {path} at {} is the expression `{}`, which cannot be read without evaluating the host configuration. Evaluate it and pass the result with --from-json (see README).{meanwhile}",
                            origin.location(),
                            e.text
                        ),
                    )
                    .at(origin.file.clone(), origin.line),
                );
                }
                self.unresolved
                    .insert(option.to_string(), Sourced::new(e, origin));
            }
        }
        let configured = ok.iter().rev().find(|(_, o)| !o.kind.is_deployed());
        let deployed = ok.iter().rev().find(|(_, o)| o.kind.is_deployed());
        if let (Some((c, co)), Some((d, dof))) = (configured, deployed) {
            let same = match (c, d) {
                (Some(c), Some(d)) => norm(c) == norm(d),
                (None, None) => true,
                _ => false,
            };
            if !same {
                let show = |t: &Option<T>| t.as_ref().map_or("null (unset)".to_string(), json);
                self.warnings.push(
                    Warning::new(
                        &CONFIG_NOT_DEPLOYED,
                        path.clone(),
                        format!(
                            "container {name}: {path} is {} in the configuration ({}) but the deployed container uses {} ({}): the configuration was changed and not yet switched to. The configured value is migrated; if the running container is what you want, change the configuration back first",
                            show(c),
                            co.location(),
                            show(d),
                            dof.location()
                        ),
                    )
                    .at(co.file.clone(), co.line),
                );
            }
        }
        match winner {
            Some((Some(t), o)) => Some(Sourced::new(t, o)),
            _ => None,
        }
    }

    /// `config`, `nixpkgs`, `specialArgs`: code, kept as Nix text.
    pub(crate) fn pick_code(&mut self, option: &str) -> Option<Sourced<NixExpr>> {
        let cands = self.by_option.remove(option)?;
        let (v, origin) = cands.into_iter().last()?;
        let text = match &v {
            Value::Expr(e) => return Some(Sourced::new(e.clone(), origin)),
            Value::Null => return None,
            Value::Str(s) if option == "nixpkgs" && is_plain_path(s) => s.clone(),
            other => return Some(Sourced::new(data_with_code(other, &origin), origin)),
        };
        let expr = NixExpr {
            text,
            origin: origin.clone(),
            column: 1,
            free_vars: Vec::new(),
            lets: Vec::new(),
            module_args: Vec::new(),
            guest_files: Vec::new(),
            why_free: Vec::new(),
        };
        Some(Sourced::new(expr, origin))
    }
}

/// A path Nix can write as a path literal (`/nix/store/…-source`).
fn is_plain_path(s: &str) -> bool {
    s.starts_with('/')
        && s.len() > 1
        && !s.ends_with('/')
        && !s.contains("//")
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '/' | '.' | '_' | '-' | '+'))
}

/// Nix text for a plain value (used for `specialArgs` and friends given as evaluated JSON).
pub fn value_to_nix(v: &Value) -> String {
    match v {
        Value::Null => "null".to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Int(i) => i.to_string(),
        Value::Str(s) => nixtext::string_literal(s),
        Value::List(l) => {
            let items: Vec<String> = l.iter().map(value_to_nix).collect();
            if items.is_empty() {
                "[ ]".to_string()
            } else {
                format!("[ {} ]", items.join(" "))
            }
        }
        Value::Attrs(a) => {
            if a.is_empty() {
                return "{ }".to_string();
            }
            let items: Vec<String> = a
                .iter()
                .map(|(k, v)| format!("{} = {};", nixtext::attr_name(k), value_to_nix(v)))
                .collect();
            format!("{{ {} }}", items.join(" "))
        }
        Value::Expr(e) => format!("({})", e.text),
    }
}

pub(crate) fn conv_bool(v: &Value) -> Result<Option<bool>, String> {
    match v {
        Value::Null => Ok(None),
        Value::Bool(b) => Ok(Some(*b)),
        Value::Int(0) => Ok(Some(false)),
        Value::Int(1) => Ok(Some(true)),
        Value::Str(s) if s == "1" => Ok(Some(true)),
        Value::Str(s) if s == "0" => Ok(Some(false)),
        _ => Err("a boolean (true or false)".to_string()),
    }
}

pub(crate) fn conv_str(v: &Value) -> Result<Option<String>, String> {
    match v {
        Value::Null => Ok(None),
        Value::Str(s) => Ok(Some(s.clone())),
        _ => Err("a string".to_string()),
    }
}

pub(crate) fn conv_str_list(v: &Value) -> Result<Option<Vec<String>>, String> {
    match v {
        Value::Null => Ok(None),
        Value::List(items) => items
            .iter()
            .map(|i| match i {
                Value::Str(s) => Ok(s.clone()),
                _ => Err("a list of strings".to_string()),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some),
        _ => Err("a list of strings".to_string()),
    }
}

pub(crate) fn conv_private_users(v: &Value) -> Result<Option<PrivateUsers>, String> {
    let expected = || "\"no\", \"identity\", \"pick\" or a UID (0-4294967295)".to_string();
    match v {
        Value::Null => Ok(None),
        Value::Str(s) => match s.as_str() {
            "no" => Ok(Some(PrivateUsers::No)),
            "identity" => Ok(Some(PrivateUsers::Identity)),
            "pick" => Ok(Some(PrivateUsers::Pick)),
            s => s
                .parse::<u32>()
                .map(|n| Some(PrivateUsers::Base(n)))
                .map_err(|_| expected()),
        },
        Value::Int(i) => u32::try_from(*i)
            .map(|n| Some(PrivateUsers::Base(n)))
            .map_err(|_| expected()),
        _ => Err(expected()),
    }
}

fn port_of(v: Option<&Value>) -> Result<Option<u16>, ()> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Int(i)) => u16::try_from(*i)
            .ok()
            .filter(|p| *p > 0)
            .map(Some)
            .ok_or(()),
        Some(Value::Str(s)) => s.parse::<u16>().ok().filter(|p| *p > 0).map(Some).ok_or(()),
        Some(_) => Err(()),
    }
}

pub(crate) fn conv_ports(v: &Value) -> Result<Option<Vec<ForwardPort>>, String> {
    let expected = || {
        "a list of { protocol ? \"tcp\"; hostPort = 1-65535; containerPort ? null or 1-65535; }"
            .to_string()
    };
    let Value::List(items) = v else {
        return match v {
            Value::Null => Ok(None),
            _ => Err(expected()),
        };
    };
    let mut out = Vec::new();
    for i in items {
        let Value::Attrs(a) = i else {
            return Err(expected());
        };
        let protocol = match a.get("protocol") {
            None | Some(Value::Null) => "tcp".to_string(),
            Some(Value::Str(s)) => s.clone(),
            Some(_) => return Err(expected()),
        };
        let host_port = port_of(a.get("hostPort"))
            .ok()
            .flatten()
            .ok_or_else(expected)?;
        let container_port = port_of(a.get("containerPort")).map_err(|_| expected())?;
        out.push(ForwardPort {
            protocol,
            host_port,
            container_port,
        });
    }
    Ok(Some(out))
}

pub(crate) fn norm_ports(p: &[ForwardPort]) -> Vec<ForwardPort> {
    let mut v: Vec<ForwardPort> = p
        .iter()
        .map(|f| ForwardPort {
            protocol: f.protocol.clone(),
            host_port: f.host_port,
            container_port: Some(f.container_port.unwrap_or(f.host_port)),
        })
        .collect();
    v.sort();
    v
}

pub(crate) fn conv_binds(v: &Value) -> Result<Option<Vec<BindMount>>, String> {
    let expected = || {
        "an attribute set of { mountPoint ? <name>; hostPath ? null; isReadOnly ? true; }"
            .to_string()
    };
    let Value::Attrs(a) = v else {
        return match v {
            Value::Null => Ok(None),
            _ => Err(expected()),
        };
    };
    let mut out = Vec::new();
    for (key, b) in a {
        let Value::Attrs(b) = b else {
            return Err(expected());
        };
        let s = |k: &str| -> Result<Option<String>, String> {
            match b.get(k) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::Str(s)) => Ok(Some(s.clone())),
                Some(_) => Err(expected()),
            }
        };
        let is_read_only = match b.get("isReadOnly") {
            None | Some(Value::Null) => true,
            Some(v) => conv_bool(v)?.unwrap_or(true),
        };
        out.push(BindMount {
            mount_point: s("mountPoint")?.unwrap_or_else(|| key.clone()),
            host_path: s("hostPath")?,
            is_read_only,
            options: s("options")?,
        });
    }
    Ok(Some(out))
}

pub(crate) fn norm_binds(b: &[BindMount]) -> Vec<BindMount> {
    let mut v: Vec<BindMount> = b
        .iter()
        .map(|m| BindMount {
            host_path: Some(m.host_path.clone().unwrap_or_else(|| m.mount_point.clone())),
            ..m.clone()
        })
        .collect();
    v.sort();
    v
}

pub(crate) fn conv_devices(v: &Value) -> Result<Option<Vec<AllowedDevice>>, String> {
    let expected = || "a list of { node = \"/dev/…\"; modifier = \"rwm\"; }".to_string();
    let Value::List(items) = v else {
        return match v {
            Value::Null => Ok(None),
            _ => Err(expected()),
        };
    };
    items
        .iter()
        .map(|i| match i {
            Value::Attrs(a) => match (a.get("node"), a.get("modifier")) {
                (Some(Value::Str(n)), Some(Value::Str(m))) => Ok(AllowedDevice {
                    node: n.clone(),
                    modifier: m.clone(),
                }),
                _ => Err(expected()),
            },
            _ => Err(expected()),
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

pub(crate) fn sorted<T: Ord + Clone>(v: &[T]) -> Vec<T> {
    let mut v = v.to_vec();
    v.sort();
    v
}

pub(crate) fn conv_veths(v: &Value) -> Result<Option<BTreeMap<String, ExtraVeth>>, String> {
    let expected = || {
        "an attribute set of { hostBridge, hostAddress, hostAddress6, localAddress, localAddress6 } (each a string or null)".to_string()
    };
    let Value::Attrs(a) = v else {
        return match v {
            Value::Null => Ok(None),
            _ => Err(expected()),
        };
    };
    let mut out = BTreeMap::new();
    for (name, e) in a {
        let Value::Attrs(e) = e else {
            return Err(expected());
        };
        let s = |k: &str| -> Result<Option<String>, String> {
            match e.get(k) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::Str(s)) => Ok(Some(s.clone())),
                Some(_) => Err(expected()),
            }
        };
        out.insert(
            name.clone(),
            ExtraVeth {
                host_bridge: s("hostBridge")?,
                host_address: s("hostAddress")?,
                host_address6: s("hostAddress6")?,
                local_address: s("localAddress")?,
                local_address6: s("localAddress6")?,
            },
        );
    }
    Ok(Some(out))
}

pub(crate) fn same<T: Clone>(t: &T) -> T {
    t.clone()
}

/// Merge everything known about container `name`.
pub fn merge(name: &str, mut facts: Vec<SourceFacts>) -> Merged {
    facts.sort_by_key(|f| f.kind);
    let mut sources: Vec<SourceKind> = facts.iter().map(|f| f.kind).collect();
    sources.dedup();
    let mut warnings = Vec::new();
    let mut condition = None;
    let mut by_option: BTreeMap<String, Cands> = BTreeMap::new();
    let unit_file = facts
        .iter()
        .find(|f| f.kind == SourceKind::Unit)
        .map(|f| f.file.clone());
    for f in facts {
        warnings.extend(f.warnings);
        if condition.is_none() {
            condition = f.condition;
        }
        for (k, (v, o)) in f.options {
            by_option.entry(k).or_default().push((v, o));
        }
    }
    // Unknown option names.
    let unknown: Vec<String> = by_option
        .keys()
        .filter(|k| !OPTION_NAMES.contains(&k.as_str()))
        .cloned()
        .collect();
    // `pkgs` was an option and was removed: the translator reports it (`removed-pkgs-option`),
    // so it is kept as an expression, not as a misspelling, and reading its value is moot.
    let mut removed_pkgs = None;
    if let Some(cands) = by_option.remove("pkgs")
        && let Some((v, o)) = cands.into_iter().last()
    {
        let e = match v {
            Value::Expr(e) => e,
            other => data_with_code(&other, &o),
        };
        warnings.retain(|w| {
            !(w.code == crate::legacy::nix_source::NIX_UNRESOLVED_VALUE.code
                && w.option.ends_with(".pkgs"))
        });
        removed_pkgs = Some(Sourced::new(e, o));
    }
    for k in unknown {
        if let Some(cands) = by_option.remove(&k) {
            for (_, o) in cands {
                let fix = "check the spelling against the containers.<name> options".to_string();
                warnings.push(
                    Warning::new(
                        &UNKNOWN_OPTION,
                        format!("containers.{name}.{k}"),
                        format!(
                            "container {name}: containers.{name}.{k} at {} is not a legacy container option and is not carried over; {fix}",
                            o.location()
                        ),
                    )
                    .at(o.file.clone(), o.line),
                );
            }
        }
    }
    let reported_unresolved = warnings
        .iter()
        .filter(|w| w.code == crate::legacy::nix_source::NIX_UNRESOLVED_VALUE.code)
        // Every segment of the path after `containers.`: the option's own name is among them
        // (container names may be quoted differently in the two places, and the warning may be
        // about a part, `bindMounts.x`).
        .flat_map(|w| {
            w.option
                .strip_prefix("containers.")
                .unwrap_or(&w.option)
                .split('.')
                .map(|s| s.trim_matches('"').to_string())
                .collect::<Vec<_>>()
        })
        .collect();
    let mut m = Merger {
        name,
        by_option,
        warnings,
        unresolved: BTreeMap::new(),
        reported_unresolved,
    };
    // The unit was generated from the deployed settings, so read it against those.
    let deployed = |opt: &str| -> Option<Value> {
        m.by_option
            .get(opt)
            .and_then(|c| c.iter().rev().find(|(_, o)| o.kind.is_deployed()))
            .map(|(v, _)| v.clone())
    };
    let deployed_true =
        |v: Option<Value>| matches!(conv_bool(&v.unwrap_or(Value::Null)), Ok(Some(true)));
    let deployed_auto_start = deployed_true(deployed("autoStart"));
    let deployed_private_network = deployed_true(deployed("privateNetwork"));
    let deployed_enable_tun = deployed_true(deployed("enableTun"));
    let deployed_userns = matches!(
        deployed("privateUsers").map(|v| conv_private_users(&v)),
        Some(Ok(Some(PrivateUsers::Pick | PrivateUsers::Base(1..))))
    );
    // The template unit says `X-RestartIfChanged=false` for every container that is not
    // auto-started; only with autoStart does the unit carry the option's value.
    if !deployed_auto_start && let Some(c) = m.by_option.get_mut("restartIfChanged") {
        c.retain(|(_, origin)| origin.kind != SourceKind::Unit);
    }
    // With autoStart, a unit without `X-RestartIfChanged=false` restarts on change.
    if deployed_auto_start && let Some(file) = unit_file {
        let c = m
            .by_option
            .entry("restartIfChanged".to_string())
            .or_default();
        if !c.iter().any(|(_, o)| o.kind == SourceKind::Unit) {
            c.insert(
                0,
                (Value::Bool(true), Origin::new(SourceKind::Unit, file, None)),
            );
            c.sort_by_key(|(_, o)| o.kind);
        }
    }
    // `/dev/net/tun rwm` is added by the module itself for privateUsers = pick/UID with a
    // private network (and no enableTun): it is not part of allowedDevices.
    let implicit_tun = deployed_private_network && !deployed_enable_tun && deployed_userns;
    if implicit_tun && let Some(c) = m.by_option.get_mut("allowedDevices") {
        for (v, origin) in c.iter_mut() {
            if origin.kind != SourceKind::Unit {
                continue;
            }
            if let Value::List(items) = v {
                let tun = |i: &Value| match i {
                    Value::Attrs(a) => {
                        a.get("node") == Some(&Value::Str("/dev/net/tun".into()))
                            && a.get("modifier") == Some(&Value::Str("rwm".into()))
                    }
                    _ => false,
                };
                if let Some(p) = items.iter().rposition(tun) {
                    items.remove(p);
                }
            }
        }
    }
    if let Some(p) = removed_pkgs {
        m.unresolved.insert("pkgs".to_string(), p);
    }
    // Every option of the table, in its order.
    let mut o = crate::legacy::options::pick_all(&mut m);
    o.unresolved = std::mem::take(&mut m.unresolved);
    Merged {
        options: o,
        condition,
        sources,
        warnings: m.warnings,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::legacy::conf::read_conf;
    use crate::legacy::unit::read_unit;
    use std::path::{Path, PathBuf};

    fn nix(container: &str) -> SourceFacts {
        SourceFacts::new(
            container,
            SourceKind::NixSource,
            "/etc/nixos/configuration.nix",
        )
    }

    fn expr(text: &str, line: usize) -> Value {
        Value::Expr(NixExpr {
            text: text.to_string(),
            origin: Origin::new(
                SourceKind::NixSource,
                "/etc/nixos/configuration.nix",
                Some(line),
            ),
            column: 5,
            free_vars: vec![],
            lets: Vec::new(),
            module_args: Vec::new(),
            guest_files: Vec::new(),
            why_free: Vec::new(),
        })
    }

    fn s(v: &str) -> Value {
        Value::Str(v.to_string())
    }

    fn attrs(items: &[(&str, Value)]) -> Value {
        Value::Attrs(
            items
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
        )
    }

    const CONF: &str = "SYSTEM_PATH=/nix/store/0hqa7vqsbwm1j3sxb1ax3sxm7b5w5w3d-nixos-system-web\nCOPY_RESOLV_CONF=1\nPRIVATE_NETWORK=1\nHOST_PORT=tcp:8080:80\nHOST_ADDRESS=10.233.1.1\nLOCAL_ADDRESS=10.233.1.2\nPRIVATE_USERS=no\nINTERFACES=\"\"\nMACVLANS=\"\"\nAUTO_START=1\nEXTRA_NSPAWN_FLAGS=\" --bind-ro=/srv/www:/var/www --bind=/data\"\n";

    fn conf() -> SourceFacts {
        read_conf("web", Path::new("/etc/nixos-containers/web.conf"), CONF)
    }

    #[test]
    fn conf_alone_gives_typed_options() {
        let m = merge("web", vec![conf()]);
        assert!(m.warnings.is_empty(), "{:#?}", m.warnings);
        assert_eq!(m.sources, vec![SourceKind::Conf]);
        let o = &m.options;
        assert!(o.private_network.as_ref().unwrap().value);
        assert!(o.auto_start.as_ref().unwrap().value);
        assert_eq!(o.private_users.as_ref().unwrap().value, PrivateUsers::No);
        assert_eq!(
            o.host_address.as_ref().unwrap().origin.location(),
            "/etc/nixos-containers/web.conf:5"
        );
        assert_eq!(
            o.forward_ports.as_ref().unwrap().value,
            vec![ForwardPort {
                protocol: "tcp".into(),
                host_port: 8080,
                container_port: Some(80)
            }]
        );
        assert_eq!(
            o.bind_mounts.as_ref().unwrap().value,
            vec![
                BindMount {
                    mount_point: "/data".into(),
                    host_path: None,
                    is_read_only: false,
                    options: None
                },
                BindMount {
                    mount_point: "/var/www".into(),
                    host_path: Some("/srv/www".into()),
                    is_read_only: true,
                    options: None
                },
            ]
        );
        assert_eq!(o.extra_flags.as_ref().unwrap().value, Vec::<String>::new());
        assert_eq!(o.interfaces.as_ref().unwrap().value, Vec::<String>::new());
    }

    #[test]
    fn configured_value_wins_and_difference_is_reported() {
        let mut n = nix("web");
        n.set("hostAddress", s("10.233.1.5"), Some(12));
        // Same ports, written the Nix way (containerPort omitted = hostPort differs here: 80 vs 8080).
        n.set(
            "forwardPorts",
            Value::List(vec![attrs(&[
                ("hostPort", Value::Int(8080)),
                ("containerPort", Value::Int(80)),
            ])]),
            Some(14),
        );
        // Same bind mounts, other order and with hostPath spelled out.
        n.set(
            "bindMounts",
            attrs(&[
                ("/var/www", attrs(&[("hostPath", s("/srv/www"))])),
                (
                    "data",
                    attrs(&[
                        ("mountPoint", s("/data")),
                        ("hostPath", s("/data")),
                        ("isReadOnly", Value::Bool(false)),
                    ]),
                ),
            ]),
            Some(16),
        );
        let m = merge("web", vec![n, conf()]);
        assert_eq!(m.sources, vec![SourceKind::Conf, SourceKind::NixSource]);
        let o = &m.options;
        assert_eq!(o.host_address.as_ref().unwrap().value, "10.233.1.5");
        assert_eq!(
            o.host_address.as_ref().unwrap().origin.kind,
            SourceKind::NixSource
        );
        let diffs: Vec<_> = m
            .warnings
            .iter()
            .filter(|w| w.code == "config-not-deployed")
            .collect();
        assert_eq!(diffs.len(), 1, "{diffs:#?}");
        let w = diffs[0];
        assert_eq!(w.option, "containers.web.hostAddress");
        assert!(w.message.contains("\"10.233.1.5\""), "{}", w.message);
        assert!(w.message.contains("\"10.233.1.1\""), "{}", w.message);
        assert!(
            w.message.contains("/etc/nixos/configuration.nix:12"),
            "{}",
            w.message
        );
        assert!(
            w.message.contains("/etc/nixos-containers/web.conf:5"),
            "{}",
            w.message
        );
        assert_eq!(w.line, Some(12));
    }

    #[test]
    fn container_port_null_equals_host_port() {
        let conf = read_conf(
            "w",
            Path::new("/w.conf"),
            "PRIVATE_NETWORK=1\nHOST_PORT=tcp:53:53\nINTERFACES=\"\"\n",
        );
        let mut n = nix("w");
        n.set(
            "forwardPorts",
            Value::List(vec![attrs(&[("hostPort", Value::Int(53))])]),
            Some(3),
        );
        let m = merge("w", vec![conf, n]);
        assert!(m.warnings.is_empty(), "{:#?}", m.warnings);
        assert_eq!(
            m.options.forward_ports.unwrap().value[0].container_port,
            None
        );
    }

    #[test]
    fn expressions_go_to_unresolved_with_deployed_fallback() {
        let mut n = nix("web");
        n.set("forwardPorts", expr("cfg.ports", 20), Some(20));
        // An address is carried as Nix by the translator (CARRIED_AS_NIX): no needs-eval,
        // the deployed value stays at hand for when it cannot be carried.
        n.set("localAddress", expr("\"${prefix}.2\"", 21), Some(21));
        n.set("config", expr("{ config, pkgs, ... }: { }", 22), Some(22));
        n.set("nixpkgs", s("/nix/store/abc-source"), Some(23));
        n.set("specialArgs", attrs(&[("x", Value::Int(1))]), Some(24));
        let m = merge("web", vec![n, conf()]);
        let o = &m.options;
        assert_eq!(o.local_address.as_ref().unwrap().value, "10.233.1.2");
        assert!(o.unresolved.contains_key("localAddress"));
        assert_eq!(o.forward_ports.as_ref().unwrap().value[0].host_port, 8080);
        assert!(o.unresolved.contains_key("forwardPorts"));
        assert!(!o.unresolved.contains_key("config"));
        assert_eq!(
            o.config.as_ref().unwrap().value.text,
            "{ config, pkgs, ... }: { }"
        );
        assert_eq!(
            o.nixpkgs.as_ref().unwrap().value.text,
            "/nix/store/abc-source"
        );
        assert_eq!(o.special_args.as_ref().unwrap().value.text, "{ x = 1; }");
        let w: Vec<_> = m
            .warnings
            .iter()
            .filter(|w| w.code == "needs-eval")
            .collect();
        assert_eq!(w.len(), 1);
        assert!(
            w[0].message.contains("configuration.nix:20"),
            "{}",
            w[0].message
        );
        assert!(w[0].message.contains("--from-json"));
        assert!(w[0].message.contains("8080"), "{}", w[0].message);
        assert!(w[0].needs_human());
        // A string nixpkgs that is not a plain path becomes a string literal.
        let mut n = nix("x");
        n.set("nixpkgs", s("/a b/${x}"), Some(1));
        let m = merge("x", vec![n]);
        assert_eq!(m.options.nixpkgs.unwrap().value.text, "\"/a b/\\${x}\"");
    }

    #[test]
    fn eval_json_outranks_an_expression_in_nix_source() {
        let mut n = nix("web");
        n.set("localAddress", expr("addr", 20), Some(20));
        let mut j = SourceFacts::new("web", SourceKind::EvalJson, "/tmp/eval.json");
        j.set("localAddress", s("10.0.0.9"), None);
        let m = merge("web", vec![j, n]);
        assert!(m.options.unresolved.is_empty());
        assert_eq!(m.options.local_address.unwrap().value, "10.0.0.9");
        assert!(m.warnings.iter().all(|w| w.code != "needs-eval"));
    }

    #[test]
    fn wrong_types_are_reported_and_fall_back() {
        let mut n = nix("web");
        n.set("autoStart", s("yes"), Some(7));
        n.set(
            "forwardPorts",
            Value::List(vec![attrs(&[("hostPort", Value::Int(70000))])]),
            Some(8),
        );
        n.set("privateUsers", Value::Int(-1), Some(9));
        n.set("pkgs", expr("pkgs", 10), Some(10));
        let m = merge("web", vec![n, conf()]);
        let wrong: Vec<_> = m
            .warnings
            .iter()
            .filter(|w| w.code == "option-wrong-type")
            .collect();
        assert_eq!(wrong.len(), 3, "{wrong:#?}");
        assert!(wrong.iter().any(|w| w.message.contains("boolean") && w.message.contains("configuration.nix:7")));
        // The removed `pkgs` is not a misspelling: kept for the translator's own report.
        assert!(m.warnings.iter().all(|w| w.code != "unknown-option"));
        assert!(m.options.unresolved.contains_key("pkgs"));
        // The deployed values stand.
        assert!(m.options.auto_start.unwrap().value);
        assert_eq!(m.options.forward_ports.unwrap().value.len(), 1);
    }

    #[test]
    fn bool_and_private_users_conversions() {
        let cases: &[(Value, Option<bool>)] = &[
            (Value::Bool(true), Some(true)),
            (s("1"), Some(true)),
            (s("0"), Some(false)),
            (Value::Int(0), Some(false)),
            (Value::Int(1), Some(true)),
            (Value::Null, None),
        ];
        for (v, want) in cases {
            assert_eq!(conv_bool(v).unwrap(), *want, "{v:?}");
        }
        assert!(conv_bool(&Value::Int(2)).is_err());
        assert_eq!(
            conv_private_users(&Value::Int(65536)).unwrap(),
            Some(PrivateUsers::Base(65536))
        );
        assert_eq!(
            conv_private_users(&s("pick")).unwrap(),
            Some(PrivateUsers::Pick)
        );
        assert!(conv_private_users(&s("maybe")).is_err());
    }

    #[test]
    fn unit_facts_and_implicit_tun() {
        let unit = "[Unit]\nX-RestartIfChanged=false\n[Service]\nDeviceAllow=/dev/net/tun rwm\nEnvironment=\"root=/var/lib/nixos-containers/%i\"\nTimeoutStartSec=1min\n";
        let script = "  --tmpfs=/var/tmp \\\n";
        let u = read_unit(
            "p",
            Path::new("/etc/systemd/system/container@p.service"),
            unit,
            Some((Path::new("/nix/store/x-start"), script)),
        );
        let c = read_conf(
            "p",
            Path::new("/etc/nixos-containers/p.conf"),
            "PRIVATE_NETWORK=1\nPRIVATE_USERS=pick\nINTERFACES=\"\"\nMACVLANS=\"\"\nEXTRA_NSPAWN_FLAGS=\"\"\n",
        );
        let m = merge("p", vec![u, c]);
        let o = &m.options;
        assert_eq!(o.allowed_devices.as_ref().unwrap().value, vec![]);
        assert!(!o.enable_tun.as_ref().unwrap().value);
        assert_eq!(
            o.tmpfs.as_ref().unwrap().value,
            vec!["/var/tmp".to_string()]
        );
        assert_eq!(
            o.tmpfs.as_ref().unwrap().origin.file,
            PathBuf::from("/nix/store/x-start")
        );
        // Not auto-started: X-RestartIfChanged=false is the template's, not the option.
        assert!(o.restart_if_changed.is_none());
        assert!(!o.ephemeral.as_ref().unwrap().value);
        assert!(m.sources.contains(&SourceKind::Unit));
    }

    #[test]
    fn restart_if_changed_is_read_against_the_deployed_auto_start() {
        let unit = "[Unit]\nX-RestartIfChanged=false\n[Service]\n";
        let u = read_unit("v", Path::new("/u"), unit, Some((Path::new("/s"), "")));
        let c = read_conf("v", Path::new("/v.conf"), "INTERFACES=\"\"\n");
        let mut n = nix("v");
        n.set("autoStart", Value::Bool(true), Some(4));
        let m = merge("v", vec![u.clone(), c, n]);
        assert!(m.options.restart_if_changed.is_none());
        assert!(m.options.auto_start.unwrap().value);
        // Deployed with autoStart: the unit's value is the option's.
        let c = read_conf("v", Path::new("/v.conf"), "INTERFACES=\"\"\nAUTO_START=1\n");
        let m = merge("v", vec![u, c.clone()]);
        assert!(!m.options.restart_if_changed.unwrap().value);
        // Deployed with autoStart and no X-RestartIfChanged line: true, from the unit.
        let u = read_unit(
            "v",
            Path::new("/u"),
            "[Service]\n",
            Some((Path::new("/s"), "")),
        );
        let m = merge("v", vec![u, c]);
        let r = m.options.restart_if_changed.unwrap();
        assert!(r.value);
        assert_eq!(r.origin.kind, SourceKind::Unit);
    }

    #[test]
    fn condition_and_reader_warnings_pass_through() {
        let mut n = nix("c");
        let Value::Expr(cond) = expr("cfg.enable", 3) else {
            unreachable!()
        };
        n.condition = Some(cond.clone());
        let bad = read_conf("c", Path::new("/c.conf"), "BOGUS=1\n");
        let m = merge("c", vec![bad, n]);
        assert_eq!(m.condition, Some(cond));
        assert!(m.warnings.iter().any(|w| w.code == "conf-unknown-key"));
    }

    #[test]
    fn value_to_nix_renders_data() {
        let v = attrs(&[
            (
                "a.b",
                Value::List(vec![
                    Value::Int(1),
                    s("x\"y"),
                    Value::Null,
                    Value::Bool(false),
                ]),
            ),
            ("c", attrs(&[])),
        ]);
        let text = value_to_nix(&v);
        assert_eq!(text, "{ \"a.b\" = [ 1 \"x\\\"y\" null false ]; c = { }; }");
        assert!(crate::nixtext::format(&text).is_ok());
    }
}

#[cfg(test)]
mod one_warning_per_problem {
    use super::*;
    use crate::legacy::{Origin, SourceFacts, SourceKind, Value};

    fn expr(text: &str) -> Value {
        Value::Expr(NixExpr {
            text: text.to_string(),
            origin: Origin::new(SourceKind::NixSource, "/etc/nixos/c.nix", Some(3)),
            column: 5,
            free_vars: vec!["addr".to_string()],
            lets: Vec::new(),
            module_args: Vec::new(),
            guest_files: Vec::new(),
            why_free: Vec::new(),
        })
    }

    #[test]
    fn a_value_with_code_inside_is_unresolved_not_wrongly_typed() {
        let mut f = SourceFacts::new("web", SourceKind::NixSource, "/etc/nixos/c.nix");
        let mut bind = BTreeMap::new();
        bind.insert("hostPath".to_string(), expr("cfg.dataDir"));
        let mut binds = BTreeMap::new();
        binds.insert("/data".to_string(), Value::Attrs(bind));
        f.set("bindMounts", Value::Attrs(binds), Some(3));
        let mut port = BTreeMap::new();
        port.insert("hostPort".to_string(), expr("cfg.port"));
        f.set(
            "forwardPorts",
            Value::List(vec![Value::Attrs(port)]),
            Some(4),
        );
        let m = merge("web", vec![f]);
        // bindMounts is carried as Nix by the translator (CARRIED_AS_NIX): no needs-eval.
        let codes: Vec<(&str, &str)> = m
            .warnings
            .iter()
            .map(|w| (w.code, w.option.as_str()))
            .collect();
        assert_eq!(
            codes,
            vec![(NEEDS_EVAL.code, "containers.web.forwardPorts")],
            "{:?}",
            m.warnings
        );
        let u = &m.options.unresolved["bindMounts"];
        assert!(u.value.text.contains("(cfg.dataDir)"), "{}", u.value.text);
        assert_eq!(u.value.free_vars, vec!["addr".to_string()]);
        assert!(m.options.unresolved.contains_key("forwardPorts"));
    }

    #[test]
    fn no_needs_eval_when_the_reader_already_reported_the_option() {
        let mut f = SourceFacts::new("web", SourceKind::NixSource, "/etc/nixos/c.nix");
        f.set("hostAddress", expr("addr"), Some(3));
        f.warnings.push(Warning::new(
            &crate::legacy::nix_source::NIX_UNRESOLVED_VALUE,
            "containers.web.hostAddress",
            "computed by Nix code; run …",
        ));
        let m = merge("web", vec![f]);
        let codes: Vec<&str> = m.warnings.iter().map(|w| w.code).collect();
        assert_eq!(codes, vec!["nix-unresolved-value"]);
        assert!(m.options.unresolved.contains_key("hostAddress"));
    }
}
