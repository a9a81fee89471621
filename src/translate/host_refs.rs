//! Host configuration that refers to the legacy world itself, outside `containers.<name>`:
//! `systemd.services."container@<name>"` / `systemd.units."container@<name>.service"` (or the
//! `container@` template) overrides, which stop
//! applying once the container runs as `systemd-nspawn@<name>.service`. Pure: the caller reads
//! the host's Nix files (the ones the reader read) and passes their text.
//!
//! (`networking.nat.internalInterfaces = [ "ve-+" ]` is not reported: the migrated veths keep
//! their `ve-<name>` names and the module does not masquerade static ones, so the host's NAT
//! keeps applying as it did.)

use super::CONTAINER_UNIT_OVERRIDE;
use crate::warnings::Warning;
use rnix::ast::{self, HasEntry};
use rowan::ast::AstNode;
use std::path::Path;

/// Walks stop here (a hostile file cannot exhaust the stack).
const MAX_DEPTH: usize = 200;

fn key(a: &ast::Attr) -> Option<String> {
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

/// Every `path = value;` of the file with its full attribute path (nested attribute sets
/// joined; a computed name ends the path), and its byte offset.
fn bindings(e: &ast::Expr, prefix: &[String], depth: usize, out: &mut Vec<(Vec<String>, usize)>) {
    if depth > MAX_DEPTH {
        return;
    }
    let set = match e {
        ast::Expr::AttrSet(s) => Some(s.clone()),
        _ => None,
    };
    if let Some(set) = set {
        for kv in set.attrpath_values() {
            let Some(path) = kv.attrpath() else { continue };
            let mut full = prefix.to_vec();
            let mut complete = true;
            for a in path.attrs() {
                match key(&a) {
                    Some(k) => full.push(k),
                    None => {
                        complete = false;
                        break;
                    }
                }
            }
            out.push((full.clone(), usize::from(kv.syntax().text_range().start())));
            if complete && let Some(v) = kv.value() {
                bindings(&v, &full, depth + 1, out);
            }
        }
        return;
    }
    // Look through the forms a host file wraps its attribute set in; keep the path.
    for child in e.syntax().children() {
        if let Some(c) = ast::Expr::cast(child) {
            bindings(&c, prefix, depth + 1, out);
        }
    }
}

/// Findings for one host Nix file. `names`: the containers being migrated.
pub fn scan(file: &Path, text: &str, names: &[String]) -> Vec<Warning> {
    // Too deep to parse safely: the reader has already reported this file (nix-parse-error).
    if crate::nixtext::check_nesting(text).is_err() {
        return Vec::new();
    }
    let parse = rnix::Root::parse(text);
    let Some(root) = parse.tree().expr() else {
        return Vec::new();
    };
    let mut all = Vec::new();
    bindings(&root, &[], 0, &mut all);
    let line_of = |off: usize| 1 + text[..off.min(text.len())].matches('\n').count();
    let mut out = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for (path, off) in all {
        // systemd.services."container@…" anywhere but inside a container's own config.
        let Some(at) = path
            .windows(2)
            .position(|w| w[0] == "systemd" && (w[1] == "services" || w[1] == "units"))
        else {
            continue;
        };
        let coll = path[at + 1].clone();
        if path[..at].iter().any(|k| k == "containers") {
            continue;
        }
        let Some(unit) = path.get(at + 2) else {
            continue;
        };
        let Some(instance) = unit.strip_prefix("container@") else {
            continue;
        };
        let Some(instance) = instance
            .strip_suffix(".service")
            .or((coll == "services").then_some(instance))
        else {
            continue;
        };
        if !seen.insert(unit.clone()) {
            continue;
        }
        let affected: Vec<&str> = if instance.is_empty() {
            names.iter().map(String::as_str).collect()
        } else if names.iter().any(|n| n == instance) {
            vec![instance]
        } else {
            continue;
        };
        if affected.is_empty() {
            continue;
        }
        let targets = affected
            .iter()
            .map(|n| format!("systemd.services.\"systemd-nspawn@{n}\""))
            .collect::<Vec<_>>()
            .join(", ");
        let line = line_of(off);
        out.push(
            Warning::new(
                &CONTAINER_UNIT_OVERRIDE,
                format!("systemd.{coll}.\"{unit}\""),
                format!(
                    "{}:{line}: systemd.{coll}.\"{unit}\" configures the legacy unit, which no longer runs the migrated \
                     container{}: its settings stop applying. Move them to {targets} (the new unit is the stock \
                     systemd-nspawn@.service with a drop-in: check that each setting still makes sense there)",
                    file.display(),
                    if affected.len() > 1 { "s" } else { "" }
                ),
            )
            .at(file, Some(line)),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn codes(text: &str) -> Vec<String> {
        scan(
            Path::new("/etc/nixos/configuration.nix"),
            text,
            &["web".to_string(), "db".to_string()],
        )
        .into_iter()
        .map(|w| w.message)
        .collect()
    }

    #[test]
    fn container_unit_overrides_are_found_in_every_spelling() {
        for text in [
            r#"{ config, ... }: { systemd.services."container@web".serviceConfig.MemoryMax = "2G"; }"#,
            r#"{ systemd = { services = { "container@web" = { after = [ "x.service" ]; }; }; }; }"#,
            r#"let x = 1; in { systemd.services."container@web.service".wants = [ ]; }"#,
            r#"{ systemd.units."container@web.service".text = "…"; }"#,
        ] {
            let m = codes(text);
            assert_eq!(m.len(), 1, "{text}: {m:?}");
            assert!(
                m[0].contains("systemd.services.\"systemd-nspawn@web\""),
                "{}",
                m[0]
            );
            assert!(m[0].contains("configuration.nix:1"), "{}", m[0]);
        }
        // The template applies to every migrated container.
        let m = codes(r#"{ systemd.services."container@".serviceConfig.TasksMax = 100; }"#);
        assert!(m[0].contains("systemd-nspawn@web") && m[0].contains("systemd-nspawn@db"));
    }

    #[test]
    fn unrelated_units_and_guest_configs_are_not_reported() {
        for text in [
            r#"{ systemd.services."container@other".enable = false; }"#,
            r#"{ systemd.services.nginx.enable = true; }"#,
            r#"{ containers.web.config = { systemd.services."container@web".enable = true; }; }"#,
            r#"{ containers.web.config = { ... }: { systemd.services."container@web".enable = true; }; }"#,
            "{ not nix",
        ] {
            assert!(codes(text).is_empty(), "{text}");
        }
    }
}
