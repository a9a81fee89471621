//! Where a legacy `containers.NAME` definition sits in a Nix file, as a byte range of the
//! original text: for showing the old definition next to the new one, and for `--rewrite`.
//!
//! A definition is an attribute whose full path (its own attribute path, preceded by those of
//! the attribute sets it is nested in) ends with `containers`, `NAME`: `containers.web = …;`,
//! `containers = { web = …; };`, `config.containers.web = …;` and the same under `lib.mkIf`
//! (the path continues through function applications). Pure: no I/O.

use rnix::ast;
use rowan::ast::AstNode;
use std::ops::Range;

/// One definition found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Definition {
    /// Byte range of the whole `path = value;` entry, from its first to its last character.
    pub range: Range<usize>,
    /// 1-based line of its start.
    pub line: usize,
    /// The text of the entry.
    pub text: String,
    /// The whitespace before it on its first line (to show the entry as it stands in the file).
    pub indent: String,
}

fn attr_name(attr: &ast::Attr) -> Option<String> {
    let lit = |s: &ast::Str| -> Option<String> {
        let mut out = String::new();
        for part in s.normalized_parts() {
            match part {
                ast::InterpolPart::Literal(l) => out.push_str(&l),
                ast::InterpolPart::Interpolation(_) => return None,
            }
        }
        Some(out)
    };
    match attr {
        ast::Attr::Ident(i) => Some(i.syntax().text().to_string()),
        ast::Attr::Str(s) => lit(s),
        ast::Attr::Dynamic(d) => match d.expr()? {
            ast::Expr::Str(s) => lit(&s),
            _ => None,
        },
    }
}

fn names(apv: &ast::AttrpathValue) -> Vec<String> {
    apv.attrpath()
        .map(|p| {
            p.attrs()
                .map(|a| attr_name(&a).unwrap_or_else(|| "<dynamic>".to_string()))
                .collect()
        })
        .unwrap_or_default()
}

/// The full attribute path of an entry (the paths of the enclosing entries, then its own) and
/// how many of its components come from the enclosing entries.
fn full_path(apv: &ast::AttrpathValue) -> (Vec<String>, usize) {
    let own = names(apv);
    let own_len = own.len();
    let mut path = own;
    let mut node = apv.syntax().parent();
    while let Some(n) = node {
        if let Some(outer) = ast::AttrpathValue::cast(n.clone()) {
            let mut p = names(&outer);
            p.extend(path);
            path = p;
        }
        // `let … in` bodies and function bodies start a new module only at the file's top:
        // a nested `let` keeps the path (it is still inside the same attribute).
        node = n.parent();
    }
    let outer = path.len() - own_len;
    (path, outer)
}

/// Every definition of `containers.NAME` in `text`, in file order. A file that does not parse
/// gives none (the reader has reported it already).
pub fn find(text: &str, name: &str) -> Vec<Definition> {
    let parsed = rnix::Root::parse(text);
    if !parsed.errors().is_empty() {
        return Vec::new();
    }
    let root = parsed.tree();
    let mut out = Vec::new();
    for node in root.syntax().descendants() {
        let Some(apv) = ast::AttrpathValue::cast(node) else {
            continue;
        };
        let (path, outer) = full_path(&apv);
        // `containers.NAME…` of the NixOS option tree: at the top of a module or under
        // `config` (a module with `options`/`config`); not some `services.x.containers`.
        // The entry's own path must name NAME (`containers.web.autoStart = …` does; the
        // `autoStart = …` inside `containers.web = { … }` is part of that definition).
        let at = match path.as_slice() {
            [c, n, ..] if c == "containers" && n == name => 1,
            [cfg, c, n, ..] if cfg == "config" && c == "containers" && n == name => 2,
            _ => continue,
        };
        if outer <= at {
            let r = apv.syntax().text_range();
            let range = usize::from(r.start())..usize::from(r.end());
            let line_start = text[..range.start].rfind('\n').map_or(0, |i| i + 1);
            let before = &text[line_start..range.start];
            out.push(Definition {
                indent: if before.trim().is_empty() {
                    before.to_string()
                } else {
                    String::new()
                },
                line: text[..range.start].matches('\n').count() + 1,
                text: text[range.clone()].to_string(),
                range,
            });
        }
    }
    out
}

/// The entries of `nixos-nspawn migrate`'s own Nix file that belong to container `name`
/// (`nixos.containers.instances.NAME`, `systemd.nspawn.NAME`,
/// `systemd.services."systemd-nspawn@NAME"`), removed, each with its indentation, its line
/// end and the comment lines directly above it. Returns the new text and how many other
/// instances remain. `networkd` names the container's own networkd units as
/// (`networks`|`netdevs`, unit name without suffix): their `systemd.network.*` entries go too.
/// For `migrate --rollback`; `None` when the file does not parse.
pub fn remove_instance(
    text: &str,
    name: &str,
    networkd: &[(String, String)],
) -> Option<(String, usize)> {
    let parsed = rnix::Root::parse(text);
    if !parsed.errors().is_empty() {
        return None;
    }
    let unit = format!("systemd-nspawn@{name}");
    let mut ranges: Vec<Range<usize>> = Vec::new();
    let mut others = std::collections::BTreeSet::new();
    for node in parsed.tree().syntax().descendants() {
        let Some(apv) = ast::AttrpathValue::cast(node) else {
            continue;
        };
        let (path, outer) = full_path(&apv);
        if outer != 0 {
            continue;
        }
        let p: Vec<&str> = path.iter().map(String::as_str).collect();
        let mine = match p.as_slice() {
            ["nixos", "containers", "instances", n, ..] => {
                if *n != name {
                    others.insert(n.to_string());
                }
                *n == name
            }
            ["systemd", "nspawn", n, ..] => *n == name,
            ["systemd", "services", u, ..] => *u == unit,
            ["systemd", "network", coll, stem, ..] => {
                networkd.iter().any(|(c, s)| c == coll && s == stem)
            }
            _ => false,
        };
        if !mine {
            continue;
        }
        let r = apv.syntax().text_range();
        let (mut start, mut end) = (usize::from(r.start()), usize::from(r.end()));
        // Whole lines: from the start of the first line to after the line end.
        start = text[..start].rfind('\n').map_or(0, |i| i + 1);
        if text[start..usize::from(r.start())].trim().is_empty() {
            // Comment lines directly above belong to the entry (the generator puts them there).
            while start > 0 {
                let prev_start = text[..start - 1].rfind('\n').map_or(0, |i| i + 1);
                if text[prev_start..start].trim_start().starts_with('#') {
                    start = prev_start;
                } else {
                    break;
                }
            }
        } else {
            start = usize::from(r.start());
        }
        if text[end..].starts_with('\n') {
            end += 1;
        }
        ranges.push(start..end);
    }
    ranges.sort_by_key(|r| r.start);
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    for r in ranges {
        if r.start < at {
            continue;
        }
        out.push_str(&text[at..r.start]);
        at = r.end;
    }
    out.push_str(&text[at..]);
    Some((out, others.len()))
}

/// The names of the `nixos.containers.instances.NAME` a Nix file of ours declares.
pub fn instance_names(text: &str) -> Vec<String> {
    let parsed = rnix::Root::parse(text);
    let mut out = Vec::new();
    for node in parsed.tree().syntax().descendants() {
        let Some(apv) = ast::AttrpathValue::cast(node) else {
            continue;
        };
        let (path, outer) = full_path(&apv);
        if let (0, ["nixos", "containers", "instances", n, ..]) = (
            outer,
            path.iter()
                .map(String::as_str)
                .collect::<Vec<_>>()
                .as_slice(),
        ) && !out.iter().any(|o| o == n)
        {
            out.push(n.to_string());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOST: &str = r#"{ config, lib, pkgs, ... }:
let port = 8080; in
{
  # the web server
  containers.web = {
    autoStart = true;
    config = { services.nginx.enable = true; };
  };
  containers = {
    db.config = { };
    "cache" = { ephemeral = true; };
  };
  config = lib.mkIf true { containers.lan = { }; };
  services.foo.containers.web = 1;
}
"#;

    #[test]
    fn every_way_of_writing_a_definition_is_found() {
        let web = find(HOST, "web");
        // `services.foo.containers.web` is another option, not a container.
        assert_eq!(web.len(), 1, "{web:#?}");
        assert!(web[0].text.starts_with("containers.web = {"));
        assert!(web[0].text.ends_with("};"));
        assert_eq!(web[0].line, 5);
        assert_eq!(web[0].indent, "  ");
        assert_eq!(&HOST[web[0].range.clone()], web[0].text);
        assert_eq!(find(HOST, "db")[0].text, "db.config = { };");
        assert_eq!(
            find(HOST, "cache")[0].text,
            "\"cache\" = { ephemeral = true; };"
        );
        assert_eq!(find(HOST, "lan")[0].text, "containers.lan = { };");
        assert!(find(HOST, "nope").is_empty());
        assert!(find("{ broken", "web").is_empty());
    }

    #[test]
    fn an_instance_is_removed_from_our_file_and_the_rest_kept() {
        let file = "# header\n{ config, ... }:\n{\n  nixos.containers.instances.db = {\n    x = 1;\n  };\n  systemd.nspawn.db = { };\n  # needs a human: check web\n  nixos.containers.instances.web = { };\n  systemd.services.\"systemd-nspawn@web\" = { };\n  systemd.nspawn.web = { };\n  systemd.network.networks.\"30-web-dmz\" = { };\n}\n";
        let web_units = [("networks".to_string(), "30-web-dmz".to_string())];
        let (rest, others) = remove_instance(file, "web", &web_units).unwrap();
        assert_eq!(others, 1);
        assert_eq!(
            rest,
            "# header\n{ config, ... }:\n{\n  nixos.containers.instances.db = {\n    x = 1;\n  };\n  systemd.nspawn.db = { };\n}\n"
        );
        let (empty, others) = remove_instance(&rest, "db", &[]).unwrap();
        assert_eq!(others, 0);
        assert_eq!(empty, "# header\n{ config, ... }:\n{\n}\n");
        assert!(rnix::Root::parse(&empty).errors().is_empty());
    }
}
