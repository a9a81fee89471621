//! Build a [`LegacyContainer`] from a small Nix attribute set of `containers.<name>` options,
//! as written in the mapping table's examples (and in tests). Only literals are typed; any
//! other value lands in `unresolved`, as a reader would put it. Not a reader: no merging, no
//! evaluation, one fixed file (`/etc/nixos/configuration.nix`) and container name (`web`).
//! A special `_kind = "imperative";` makes an imperative container with a rootfs config.

use crate::legacy::*;
use rnix::ast::{self, HasEntry};
use rowan::ast::AstNode;
use std::collections::BTreeMap;
use std::path::PathBuf;

pub const EXAMPLE_FILE: &str = "/etc/nixos/configuration.nix";
pub const EXAMPLE_NAME: &str = "web";

enum Lit {
    Bool(bool),
    Int(i64),
    Str(String),
    List(Vec<Lit>),
    Attrs(BTreeMap<String, Lit>),
    Other,
}

fn attr_key(a: &ast::Attr) -> Option<String> {
    match a {
        ast::Attr::Ident(i) => Some(i.syntax().text().to_string()),
        ast::Attr::Str(s) => {
            let mut out = String::new();
            for p in s.normalized_parts() {
                match p {
                    ast::InterpolPart::Literal(l) => out.push_str(&l),
                    ast::InterpolPart::Interpolation(_) => return None,
                }
            }
            Some(out)
        }
        ast::Attr::Dynamic(_) => None,
    }
}

fn lit(e: &ast::Expr) -> Lit {
    match e {
        ast::Expr::Ident(i) => match i.syntax().text().to_string().as_str() {
            "true" => Lit::Bool(true),
            "false" => Lit::Bool(false),
            _ => Lit::Other,
        },
        ast::Expr::Literal(l) => l
            .syntax()
            .text()
            .to_string()
            .parse()
            .map(Lit::Int)
            .unwrap_or(Lit::Other),
        ast::Expr::Str(s) => {
            let mut out = String::new();
            for p in s.normalized_parts() {
                match p {
                    ast::InterpolPart::Literal(l) => out.push_str(&l),
                    ast::InterpolPart::Interpolation(_) => return Lit::Other,
                }
            }
            Lit::Str(out)
        }
        ast::Expr::List(l) => Lit::List(l.items().map(|i| lit(&i)).collect()),
        ast::Expr::AttrSet(set) => {
            let mut m = BTreeMap::new();
            for kv in set.attrpath_values() {
                let (Some(path), Some(v)) = (kv.attrpath(), kv.value()) else {
                    return Lit::Other;
                };
                let keys: Option<Vec<String>> = path.attrs().map(|a| attr_key(&a)).collect();
                let Some(keys) = keys else { return Lit::Other };
                insert_path(&mut m, &keys, lit(&v));
            }
            if set.inherits().next().is_some() {
                return Lit::Other;
            }
            Lit::Attrs(m)
        }
        ast::Expr::Paren(p) => p.expr().map(|e| lit(&e)).unwrap_or(Lit::Other),
        _ => Lit::Other,
    }
}

fn insert_path(m: &mut BTreeMap<String, Lit>, keys: &[String], v: Lit) {
    match keys {
        [] => {}
        [k] => {
            m.insert(k.clone(), v);
        }
        [k, rest @ ..] => {
            let e = m
                .entry(k.clone())
                .or_insert_with(|| Lit::Attrs(BTreeMap::new()));
            if let Lit::Attrs(inner) = e {
                insert_path(inner, rest, v);
            }
        }
    }
}

fn s(l: &Lit) -> Option<String> {
    if let Lit::Str(s) = l {
        Some(s.clone())
    } else {
        None
    }
}
fn b(l: &Lit) -> Option<bool> {
    if let Lit::Bool(b) = l { Some(*b) } else { None }
}
fn strs(l: &Lit) -> Option<Vec<String>> {
    if let Lit::List(v) = l {
        v.iter().map(s).collect()
    } else {
        None
    }
}
fn attrs(l: &Lit) -> Option<&BTreeMap<String, Lit>> {
    if let Lit::Attrs(m) = l { Some(m) } else { None }
}
fn get_s(m: &BTreeMap<String, Lit>, k: &str) -> Option<String> {
    m.get(k).and_then(s)
}
fn port(l: Option<&Lit>) -> Option<u16> {
    match l {
        Some(Lit::Int(n)) => u16::try_from(*n).ok(),
        _ => None,
    }
}

/// Parse `src` (a Nix attribute set of container options) into a container named `web`.
pub fn example_container(src: &str) -> Result<LegacyContainer, String> {
    let parse = rnix::Root::parse(src);
    if let Some(e) = parse.errors().first() {
        return Err(format!("example does not parse: {e}"));
    }
    let Some(ast::Expr::AttrSet(set)) = parse.tree().expr() else {
        return Err("example is not an attribute set".into());
    };
    let mut c = LegacyContainer {
        name: EXAMPLE_NAME.into(),
        kind: Some(Kind::Declarative),
        layout: Some(Layout::NixosContainers),
        conf_file: Some(PathBuf::from("/etc/nixos-containers/web.conf")),
        state_dir: Some(PathBuf::from("/var/lib/nixos-containers/web")),
        profile_dir: None,
        has_profile_generations: false,
        rootfs_config: None,
        options: LegacyOptions::default(),
        condition: None,
        sources: vec![SourceKind::NixSource],
        warnings: Vec::new(),
    };
    let line_of = |off: usize| 1 + src[..off].bytes().filter(|b| *b == b'\n').count();
    // Group dotted bindings (`bindMounts."/a" = …; bindMounts."/b" = …;`) by option name.
    let mut values: BTreeMap<String, (Lit, NixExpr)> = BTreeMap::new();
    for kv in set.attrpath_values() {
        let (Some(path), Some(v)) = (kv.attrpath(), kv.value()) else {
            continue;
        };
        let keys: Vec<String> = path.attrs().filter_map(|a| attr_key(&a)).collect();
        let Some(first) = keys.first().cloned() else {
            continue;
        };
        let start = usize::from(v.syntax().text_range().start());
        let text = v.syntax().to_string();
        let expr = NixExpr {
            text: text.clone(),
            origin: Origin::new(SourceKind::NixSource, EXAMPLE_FILE, Some(line_of(start))),
            column: 1,
            free_vars: crate::translate::guest::free_variables(&text),
            lets: Vec::new(),
            module_args: Vec::new(),
            guest_files: Vec::new(),
        };
        let value = lit(&v);
        if keys.len() == 1 {
            values.insert(first, (value, expr));
        } else {
            let entry = values
                .entry(first)
                .or_insert_with(|| (Lit::Attrs(BTreeMap::new()), expr));
            if let Lit::Attrs(m) = &mut entry.0 {
                insert_path(m, &keys[1..], value);
            }
        }
    }
    let o = &mut c.options;
    for (name, (v, expr)) in values {
        let origin = expr.origin.clone();
        let ok = match name.as_str() {
            "_kind" => {
                if s(&v).as_deref() == Some("imperative") {
                    c.kind = Some(Kind::Imperative);
                    c.rootfs_config = Some(PathBuf::from(
                        "/var/lib/nixos-containers/web/etc/nixos/configuration.nix",
                    ));
                    c.conf_file = Some(PathBuf::from("/etc/nixos-containers/web.conf"));
                }
                true
            }
            "config" => {
                o.config = Some(Sourced::new(expr.clone(), origin.clone()));
                true
            }
            "nixpkgs" => {
                o.nixpkgs = Some(Sourced::new(expr.clone(), origin.clone()));
                true
            }
            "specialArgs" => {
                o.special_args = Some(Sourced::new(expr.clone(), origin.clone()));
                true
            }
            "path" => s(&v)
                .map(|x| o.path = Some(Sourced::new(x, origin.clone())))
                .is_some(),
            "flake" => s(&v)
                .map(|x| o.flake = Some(Sourced::new(x, origin.clone())))
                .is_some(),
            "timeoutStartSec" => s(&v)
                .map(|x| o.timeout_start_sec = Some(Sourced::new(x, origin.clone())))
                .is_some(),
            "networkNamespace" => s(&v)
                .map(|x| o.network_namespace = Some(Sourced::new(x, origin.clone())))
                .is_some(),
            "hostBridge" => s(&v)
                .map(|x| o.host_bridge = Some(Sourced::new(x, origin.clone())))
                .is_some(),
            "hostAddress" => s(&v)
                .map(|x| o.host_address = Some(Sourced::new(x, origin.clone())))
                .is_some(),
            "hostAddress6" => s(&v)
                .map(|x| o.host_address6 = Some(Sourced::new(x, origin.clone())))
                .is_some(),
            "localAddress" => s(&v)
                .map(|x| o.local_address = Some(Sourced::new(x, origin.clone())))
                .is_some(),
            "localAddress6" => s(&v)
                .map(|x| o.local_address6 = Some(Sourced::new(x, origin.clone())))
                .is_some(),
            "localMacAddress" => s(&v)
                .map(|x| o.local_mac_address = Some(Sourced::new(x, origin.clone())))
                .is_some(),
            "autoStart" => b(&v)
                .map(|x| o.auto_start = Some(Sourced::new(x, origin.clone())))
                .is_some(),
            "restartIfChanged" => b(&v)
                .map(|x| o.restart_if_changed = Some(Sourced::new(x, origin.clone())))
                .is_some(),
            "ephemeral" => b(&v)
                .map(|x| o.ephemeral = Some(Sourced::new(x, origin.clone())))
                .is_some(),
            "enableTun" => b(&v)
                .map(|x| o.enable_tun = Some(Sourced::new(x, origin.clone())))
                .is_some(),
            "copyResolvConf" => b(&v)
                .map(|x| o.copy_resolv_conf = Some(Sourced::new(x, origin.clone())))
                .is_some(),
            "privateNetwork" => b(&v)
                .map(|x| o.private_network = Some(Sourced::new(x, origin.clone())))
                .is_some(),
            "interfaces" => strs(&v)
                .map(|x| o.interfaces = Some(Sourced::new(x, origin.clone())))
                .is_some(),
            "macvlans" => strs(&v)
                .map(|x| o.macvlans = Some(Sourced::new(x, origin.clone())))
                .is_some(),
            "tmpfs" => strs(&v)
                .map(|x| o.tmpfs = Some(Sourced::new(x, origin.clone())))
                .is_some(),
            "additionalCapabilities" => strs(&v)
                .map(|x| o.additional_capabilities = Some(Sourced::new(x, origin.clone())))
                .is_some(),
            "extraFlags" => strs(&v)
                .map(|x| o.extra_flags = Some(Sourced::new(x, origin.clone())))
                .is_some(),
            "privateUsers" => {
                let pu = match &v {
                    Lit::Str(x) if x == "no" => Some(PrivateUsers::No),
                    Lit::Str(x) if x == "identity" => Some(PrivateUsers::Identity),
                    Lit::Str(x) if x == "pick" => Some(PrivateUsers::Pick),
                    Lit::Int(n) => u32::try_from(*n).ok().map(PrivateUsers::Base),
                    _ => None,
                };
                pu.map(|x| o.private_users = Some(Sourced::new(x, origin.clone())))
                    .is_some()
            }
            "forwardPorts" => {
                let ports: Option<Vec<ForwardPort>> = match &v {
                    Lit::List(items) => items
                        .iter()
                        .map(|i| {
                            let m = attrs(i)?;
                            Some(ForwardPort {
                                protocol: get_s(m, "protocol").unwrap_or_else(|| "tcp".into()),
                                host_port: port(m.get("hostPort"))?,
                                container_port: port(m.get("containerPort")),
                            })
                        })
                        .collect(),
                    _ => None,
                };
                ports
                    .map(|x| o.forward_ports = Some(Sourced::new(x, origin.clone())))
                    .is_some()
            }
            "bindMounts" => {
                let binds: Option<Vec<BindMount>> = attrs(&v).and_then(|m| {
                    m.iter()
                        .map(|(k, e)| {
                            let e = attrs(e)?;
                            Some(BindMount {
                                mount_point: get_s(e, "mountPoint").unwrap_or_else(|| k.clone()),
                                host_path: get_s(e, "hostPath"),
                                is_read_only: e.get("isReadOnly").and_then(b).unwrap_or(true),
                                options: None,
                            })
                        })
                        .collect()
                });
                binds
                    .map(|x| o.bind_mounts = Some(Sourced::new(x, origin.clone())))
                    .is_some()
            }
            "allowedDevices" => {
                let devs: Option<Vec<AllowedDevice>> = match &v {
                    Lit::List(items) => items
                        .iter()
                        .map(|i| {
                            let m = attrs(i)?;
                            Some(AllowedDevice {
                                node: get_s(m, "node")?,
                                modifier: get_s(m, "modifier")?,
                            })
                        })
                        .collect(),
                    _ => None,
                };
                devs.map(|x| o.allowed_devices = Some(Sourced::new(x, origin.clone())))
                    .is_some()
            }
            "extraVeths" => {
                let veths: Option<BTreeMap<String, ExtraVeth>> = attrs(&v).and_then(|m| {
                    m.iter()
                        .map(|(k, e)| {
                            let e = attrs(e)?;
                            Some((
                                k.clone(),
                                ExtraVeth {
                                    host_bridge: get_s(e, "hostBridge"),
                                    host_address: get_s(e, "hostAddress"),
                                    host_address6: get_s(e, "hostAddress6"),
                                    local_address: get_s(e, "localAddress"),
                                    local_address6: get_s(e, "localAddress6"),
                                },
                            ))
                        })
                        .collect()
                });
                veths
                    .map(|x| o.extra_veths = Some(Sourced::new(x, origin.clone())))
                    .is_some()
            }
            _ => false,
        };
        if !ok {
            o.unresolved.insert(name, Sourced::new(expr, origin));
        }
    }
    Ok(c)
}
