//! Rewriting copied Nix text for the new world, losslessly (rnix CST: comments and layout are
//! kept, only the changed tokens move):
//!
//! - `eth0` → `host0` in attribute names (`networking.interfaces.eth0`, `"eth0"`) and as a
//!   word in string values (`"eth0"`, `"eth0.100"`, `-o eth0` in scripts); `veth0`, `mv-eth0`
//!   are other interfaces and stay;
//! - `networking.useHostResolvConf = …;` and `boot.isContainer = …;` bindings are removed
//!   (also nested: `networking = { useHostResolvConf = …; }`); the module sets what is needed;
//! - relative paths (`./x.nix`, `../y`) are rewritten to resolve from the new file's directory.
//!
//! Pure: text in, text and a list of changes out.

use super::GuestResolv;
use rnix::{SyntaxKind, SyntaxNode};
use rowan::ast::AstNode;
use std::collections::BTreeSet;
use std::path::{Component, Path, PathBuf};

/// One change made to the text, for the report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    /// 1-based line in the origin file.
    pub line: usize,
    pub what: ChangeKind,
    pub before: String,
    pub after: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChangeKind {
    Eth0,
    UseHostResolvConfRemoved,
    IsContainerRemoved,
    PathRewritten,
    /// Not changed: a relative path built with interpolation.
    PathNotRewritable,
    /// `networking.defaultGateway(6)` without an interface got one (`after`: the new binding).
    GatewayInterfaceAdded,
    /// `networking.defaultGateway(6)` without an interface, not changed (`after`: why).
    GatewayBare,
}

/// What to do with a guest `networking.defaultGateway(6)` that names no interface. NixOS
/// refuses one under systemd-networkd, which the migrated container runs; legacy's guest used
/// scripted networking (`ip route replace default via …`, no device needed).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GatewayRule<'a> {
    /// Leave them alone, say nothing (copied text that is not the guest config).
    Ignore,
    /// Report them ([`ChangeKind::GatewayBare`]), change nothing.
    Find,
    /// Give each one that can be rewritten this interface ([`ChangeKind::GatewayInterfaceAdded`]);
    /// report the others ([`ChangeKind::GatewayBare`]).
    Rewrite(&'a str),
}

/// The guest rules beyond eth0/useHostResolvConf/paths.
#[derive(Clone, Copy, Debug)]
pub struct GuestRules<'a> {
    pub gateway: GatewayRule<'a>,
    /// Names the text's carried `let` bindings bind to a string (`gw = "10.0.0.1";`): a gateway
    /// written as such a name is a string too, and can be rewritten like a literal.
    pub string_names: &'a [String],
}

impl GuestRules<'_> {
    pub const NONE: GuestRules<'static> = GuestRules {
        gateway: GatewayRule::Ignore,
        string_names: &[],
    };
}

/// The rewritten text and what changed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rewrite {
    pub text: String,
    pub changes: Vec<Change>,
    pub resolv: GuestResolv,
    /// Set when the text does not parse; `text` is then the input unchanged.
    pub parse_error: Option<String>,
}

/// Where the text comes from and where it goes.
pub struct Paths<'a> {
    /// Host path of the file the text was read from (relative paths resolve from its dir).
    pub origin_file: &'a Path,
    /// 1-based line of the text's first character in `origin_file`.
    pub first_line: usize,
    /// Host path of the file the text will be written to.
    pub output_file: &'a Path,
}

/// Rewrite a guest `config` module (eth0, useHostResolvConf, boot.isContainer, paths).
pub fn rewrite_guest(text: &str, p: &Paths) -> Rewrite {
    rewrite(text, p, true, GuestRules::NONE)
}

/// Rewrite a guest `config` module, with the gateway rule too.
pub fn rewrite_guest_with(text: &str, p: &Paths, rules: GuestRules) -> Rewrite {
    rewrite(text, p, true, rules)
}

/// Rewrite any other copied expression (`nixpkgs`, `specialArgs`, a condition): paths only.
pub fn rewrite_paths(text: &str, p: &Paths) -> Rewrite {
    rewrite(text, p, false, GuestRules::NONE)
}

fn line_of(text: &str, offset: usize, first_line: usize) -> usize {
    first_line
        + text[..offset.min(text.len())]
            .bytes()
            .filter(|b| *b == b'\n')
            .count()
}

fn rewrite(text: &str, p: &Paths, guest: bool, rules: GuestRules) -> Rewrite {
    // Before rnix, which overflows the stack (an abort) on some deep nestings.
    if let Err(deep) = crate::nixtext::check_nesting(text) {
        let (line, col) = crate::nixtext::line_col(text, deep.offset);
        return Rewrite {
            text: text.to_string(),
            parse_error: Some(format!("line {line}, column {col}: {}", deep.message)),
            ..Rewrite::default()
        };
    }
    let parse = rnix::Root::parse(text);
    if let Some(e) = parse.errors().first() {
        return Rewrite {
            text: text.to_string(),
            parse_error: Some(e.to_string()),
            ..Rewrite::default()
        };
    }
    let root = parse.tree();
    let root = root.syntax();
    let mut out = Rewrite::default();
    // (start, end, replacement)
    let mut edits: Vec<(usize, usize, String)> = Vec::new();

    if guest {
        for node in root
            .descendants()
            .filter(|n| n.kind() == SyntaxKind::NODE_ATTRPATH_VALUE)
        {
            let Some(path) = full_path(&node) else {
                continue;
            };
            let value = value_text(&node);
            let ends = |suffix: &[&str]| {
                path.len() >= suffix.len()
                    && path[path.len() - suffix.len()..]
                        .iter()
                        .zip(suffix)
                        .all(|(a, b)| a == b)
            };
            let kind = if ends(&["networking", "useHostResolvConf"]) {
                if bool_value(&value) == Some(false) {
                    out.resolv.use_host_resolv_conf_false = true;
                }
                Some(ChangeKind::UseHostResolvConfRemoved)
            } else if ends(&["boot", "isContainer"]) {
                Some(ChangeKind::IsContainerRemoved)
            } else {
                if ends(&["services", "resolved", "enable"]) && bool_value(&value) == Some(true) {
                    out.resolv.uses_resolved = true;
                }
                None
            };
            if let Some(kind) = kind {
                let r = node.text_range();
                let (s, e) = widen_to_lines(text, usize::from(r.start()), usize::from(r.end()));
                out.changes.push(Change {
                    line: line_of(text, usize::from(r.start()), p.first_line),
                    what: kind,
                    before: node.to_string(),
                    after: String::new(),
                });
                edits.push((s, e, String::new()));
            }
        }
    }
    let removed: Vec<(usize, usize)> = edits.iter().map(|(s, e, _)| (*s, *e)).collect();
    let inside_removed = |pos: usize| removed.iter().any(|(s, e)| pos >= *s && pos < *e);

    if guest && rules.gateway != GatewayRule::Ignore {
        for g in gateways(root, text, rules) {
            if inside_removed(g.start) {
                continue;
            }
            let line = line_of(text, g.start, p.first_line);
            if let (Ok(inserts), GatewayRule::Rewrite(_)) = (&g.rewrite, rules.gateway) {
                out.changes.push(Change {
                    line,
                    what: ChangeKind::GatewayInterfaceAdded,
                    before: g.before,
                    after: g.after,
                });
                edits.extend(inserts.iter().map(|(at, t)| (*at, *at, t.clone())));
            } else {
                // `after`: why it cannot be rewritten; empty when only the rule said no.
                out.changes.push(Change {
                    line,
                    what: ChangeKind::GatewayBare,
                    before: g.before,
                    after: g.rewrite.err().unwrap_or_default(),
                });
            }
        }
    }

    for el in root.descendants_with_tokens() {
        match el {
            rowan::NodeOrToken::Token(tok)
                if guest && tok.kind() == SyntaxKind::TOKEN_STRING_CONTENT =>
            {
                let t = tok.text();
                if let Some(new) = replace_eth0_words(t) {
                    let start = usize::from(tok.text_range().start());
                    if inside_removed(start) {
                        continue;
                    }
                    out.changes.push(Change {
                        line: line_of(text, start, p.first_line),
                        what: ChangeKind::Eth0,
                        before: t.to_string(),
                        after: new.clone(),
                    });
                    edits.push((start, usize::from(tok.text_range().end()), new));
                }
            }
            rowan::NodeOrToken::Node(node) if guest && node.kind() == SyntaxKind::NODE_IDENT => {
                let in_attrpath = node
                    .parent()
                    .is_some_and(|p| p.kind() == SyntaxKind::NODE_ATTRPATH);
                if in_attrpath && node.text() == "eth0" {
                    let r = node.text_range();
                    if inside_removed(usize::from(r.start())) {
                        continue;
                    }
                    out.changes.push(Change {
                        line: line_of(text, usize::from(r.start()), p.first_line),
                        what: ChangeKind::Eth0,
                        before: "eth0".into(),
                        after: "host0".into(),
                    });
                    edits.push((usize::from(r.start()), usize::from(r.end()), "host0".into()));
                }
            }
            rowan::NodeOrToken::Node(node) if node.kind() == SyntaxKind::NODE_PATH_REL => {
                let r = node.text_range();
                let start = usize::from(r.start());
                if inside_removed(start) {
                    continue;
                }
                let line = line_of(text, start, p.first_line);
                let old = node.to_string();
                if node
                    .children()
                    .any(|c| c.kind() == SyntaxKind::NODE_INTERPOL)
                {
                    out.changes.push(Change {
                        line,
                        what: ChangeKind::PathNotRewritable,
                        before: old,
                        after: String::new(),
                    });
                    continue;
                }
                let new = relocate_path(&old, p.origin_file, p.output_file);
                if new != old {
                    out.changes.push(Change {
                        line,
                        what: ChangeKind::PathRewritten,
                        before: old,
                        after: new.clone(),
                    });
                    edits.push((start, usize::from(r.end()), new));
                }
            }
            _ => {}
        }
    }

    // An insertion (empty range) goes before a replacement starting at the same place.
    edits.sort_by_key(|(s, e, _)| (*s, *e));
    let mut result = String::with_capacity(text.len());
    let mut pos = 0;
    for (s, e, rep) in edits {
        if s < pos {
            continue; // overlapping edit (inside a removed binding): the removal wins
        }
        result.push_str(&text[pos..s]);
        result.push_str(&rep);
        pos = e;
    }
    result.push_str(&text[pos..]);
    out.text = result;
    out
}

/// One `networking.defaultGateway(6)` setting without an interface.
struct BareGateway {
    /// Offset of the binding in the text.
    start: usize,
    /// The binding as written (whitespace runs folded).
    before: String,
    /// The binding after the rewrite (whitespace runs folded).
    after: String,
    /// Insertions (offset, text) that give it the rule's interface, or why it cannot be.
    rewrite: Result<Vec<(usize, String)>, String>,
}

const GATEWAYS: [&str; 2] = ["defaultGateway", "defaultGateway6"];

/// The attribute path a binding sets, through enclosing attribute sets, and whether a `let`
/// binding encloses it (then the path starts below the `let` name).
fn loose_path(node: &SyntaxNode) -> Option<(Vec<String>, bool)> {
    let ap = node
        .children()
        .find(|c| c.kind() == SyntaxKind::NODE_ATTRPATH)?;
    let mut path = attrpath_names(&ap)?;
    if node
        .parent()
        .is_some_and(|p| p.kind() == SyntaxKind::NODE_LET_IN)
    {
        return Some((path, true));
    }
    let mut cur = node.parent();
    while let Some(n) = cur {
        if n.kind() == SyntaxKind::NODE_ATTRPATH_VALUE {
            let ap = n
                .children()
                .find(|c| c.kind() == SyntaxKind::NODE_ATTRPATH)?;
            if n.parent()
                .is_some_and(|p| p.kind() == SyntaxKind::NODE_LET_IN)
            {
                return Some((path, true));
            }
            let mut prefix = attrpath_names(&ap)?;
            prefix.extend(path);
            path = prefix;
        }
        cur = n.parent();
    }
    Some((path, false))
}

/// The value under `lib.mkForce`/`mkDefault`/`mkOverride N`/`mkIf c` and parentheses.
fn unwrap_value(mut v: SyntaxNode) -> SyntaxNode {
    const WRAPPERS: &[&str] = &["mkForce", "mkDefault", "mkOverride", "mkIf"];
    loop {
        match v.kind() {
            SyntaxKind::NODE_PAREN => match v.children().next() {
                Some(inner) => v = inner,
                None => return v,
            },
            SyntaxKind::NODE_APPLY => {
                let mut head = v.children().next();
                while let Some(h) = head.clone().filter(|h| h.kind() == SyntaxKind::NODE_APPLY) {
                    head = h.children().next();
                }
                let wrapper = head.is_some_and(|h| {
                    let t = h.text().to_string();
                    WRAPPERS
                        .iter()
                        .any(|w| t == *w || t.ends_with(&format!(".{w}")))
                });
                match (wrapper, v.children().last()) {
                    (true, Some(arg)) => v = arg,
                    _ => return v,
                }
            }
            _ => return v,
        }
    }
}

fn fold_ws(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Names a `let` in `root` binds to a string (literal or interpolated), once.
fn let_strings(root: &SyntaxNode) -> Vec<String> {
    let mut seen: Vec<(String, bool)> = Vec::new();
    for n in root
        .descendants()
        .filter(|n| n.kind() == SyntaxKind::NODE_ATTRPATH_VALUE)
    {
        if n.parent()
            .is_none_or(|p| p.kind() != SyntaxKind::NODE_LET_IN)
        {
            continue;
        }
        let Some(names) = n
            .children()
            .find(|c| c.kind() == SyntaxKind::NODE_ATTRPATH)
            .and_then(|ap| attrpath_names(&ap))
        else {
            continue;
        };
        let [name] = names.as_slice() else { continue };
        let is_string = n
            .children()
            .filter(|c| c.kind() != SyntaxKind::NODE_ATTRPATH)
            .last()
            .is_some_and(|v| unwrap_value(v).kind() == SyntaxKind::NODE_STRING);
        match seen.iter_mut().find(|(s, _)| s == name) {
            Some(e) => e.1 = false, // bound twice: which one applies is a matter of scope
            None => seen.push((name.clone(), is_string)),
        }
    }
    seen.into_iter()
        .filter(|(_, s)| *s)
        .map(|(n, _)| n)
        .collect()
}

/// Every `networking.defaultGateway(6)` in `root` that names no interface, with how to give
/// it `rules`' interface (the rule's interface, or `host0` as a stand-in for the report).
fn gateways(root: &SyntaxNode, text: &str, rules: GuestRules) -> Vec<BareGateway> {
    let iface = match rules.gateway {
        GatewayRule::Rewrite(i) => i,
        _ => "host0",
    };
    let iface_lit = crate::nixtext::string_literal(iface);
    let local_strings = let_strings(root);
    let is_string_name = |name: &str| {
        local_strings.iter().any(|n| n == name)
            || (rules.string_names.iter().any(|n| n == name)
                && !root
                    .descendants()
                    .filter(|n| n.kind() == SyntaxKind::NODE_ATTRPATH_VALUE)
                    .any(|n| {
                        n.parent()
                            .is_some_and(|p| p.kind() == SyntaxKind::NODE_LET_IN)
                            && n.children()
                                .find(|c| c.kind() == SyntaxKind::NODE_ATTRPATH)
                                .is_some_and(|ap| ap.text() == name)
                    }))
    };
    let bindings: Vec<(SyntaxNode, Vec<String>, bool)> = root
        .descendants()
        .filter(|n| n.kind() == SyntaxKind::NODE_ATTRPATH_VALUE)
        .filter_map(|n| loose_path(&n).map(|(p, in_let)| (n, p, in_let)))
        .collect();
    let ends = |path: &[String], suffix: &[&str]| {
        path.len() >= suffix.len()
            && path[path.len() - suffix.len()..]
                .iter()
                .zip(suffix)
                .all(|(a, b)| a == b)
    };
    // A gateway whose interface is set anywhere (`….defaultGateway.interface = …`, also inside
    // `{ … }`) is complete: NixOS merges the definitions.
    let has_interface = |gw: &str| {
        bindings
            .iter()
            .any(|(_, p, _)| ends(p, &["networking", gw, "interface"]))
    };
    let mut out = Vec::new();
    for (node, path, in_let) in &bindings {
        let own = node
            .children()
            .find(|c| c.kind() == SyntaxKind::NODE_ATTRPATH)
            .and_then(|ap| attrpath_names(&ap))
            .unwrap_or_default();
        let Some(value) = node
            .children()
            .filter(|c| c.kind() != SyntaxKind::NODE_ATTRPATH)
            .last()
        else {
            continue;
        };
        let start = usize::from(node.text_range().start());
        let end = usize::from(node.text_range().end());
        for gw in GATEWAYS {
            if has_interface(gw) {
                continue;
            }
            let whole = own.last().is_some_and(|l| l == gw)
                && (ends(path, &["networking", gw]) || (*in_let && path.len() == 1));
            let address_only = own.len() >= 2
                && ends(&own, &[gw, "address"])
                && ends(path, &["networking", gw, "address"]);
            let inserts: Result<Vec<(usize, String)>, String> = if whole {
                let v = unwrap_value(value.clone());
                let vs = usize::from(v.text_range().start());
                let ve = usize::from(v.text_range().end());
                match v.kind() {
                    SyntaxKind::NODE_STRING => Ok(vec![
                        (vs, "{ address = ".to_string()),
                        (ve, format!("; interface = {iface_lit}; }}")),
                    ]),
                    SyntaxKind::NODE_IDENT if v.text() == "null" => continue,
                    SyntaxKind::NODE_IDENT if is_string_name(&v.text().to_string()) => Ok(vec![
                        (vs, "{ address = ".to_string()),
                        (ve, format!("; interface = {iface_lit}; }}")),
                    ]),
                    SyntaxKind::NODE_ATTR_SET => {
                        let entries: Vec<SyntaxNode> = v
                            .children()
                            .filter(|c| c.kind() == SyntaxKind::NODE_ATTRPATH_VALUE)
                            .collect();
                        let has_address = entries.iter().any(|e| {
                            e.children()
                                .find(|c| c.kind() == SyntaxKind::NODE_ATTRPATH)
                                .is_some_and(|ap| ap.text() == "address")
                        });
                        match entries.last() {
                            Some(last) if has_address => Ok(vec![(
                                usize::from(last.text_range().end()),
                                format!(" interface = {iface_lit};"),
                            )]),
                            _ => continue,
                        }
                    }
                    // Anything else (a function call, a name bound elsewhere) may already
                    // be a complete gateway: not ours to judge.
                    _ => continue,
                }
            } else if address_only {
                let ap = node
                    .children()
                    .find(|c| c.kind() == SyntaxKind::NODE_ATTRPATH);
                let prefix = ap.and_then(|ap| {
                    let last = ap.children().last()?;
                    let a = usize::from(ap.text_range().start());
                    let b = usize::from(last.text_range().start());
                    Some(text[a..b].trim_end().trim_end_matches('.').to_string())
                });
                match prefix {
                    Some(p) if !p.is_empty() => {
                        Ok(vec![(end, format!(" {p}.interface = {iface_lit};"))])
                    }
                    _ => continue,
                }
            } else {
                continue;
            };
            let inserts = if *in_let {
                Err("it is inside a `let` binding, whose uses the tool does not follow".to_string())
            } else {
                inserts
            };
            let before = fold_ws(&text[start..end]);
            let after = match &inserts {
                Ok(ins) => {
                    let mut t = text[start..end].to_string();
                    let mut ins = ins.clone();
                    ins.sort_by_key(|(at, _)| std::cmp::Reverse(*at));
                    for (at, s) in ins {
                        if (start..=end).contains(&at) {
                            t.insert_str(at - start, &s);
                        }
                    }
                    // The sibling binding goes after the node.
                    fold_ws(&t)
                }
                Err(_) => String::new(),
            };
            out.push(BareGateway {
                start,
                before,
                after,
                rewrite: inserts,
            });
        }
    }
    out
}

/// Extend a removal to whole lines when the node is alone on its line(s).
fn widen_to_lines(text: &str, start: usize, end: usize) -> (usize, usize) {
    let b = text.as_bytes();
    let mut s = start;
    while s > 0 && (b[s - 1] == b' ' || b[s - 1] == b'\t') {
        s -= 1;
    }
    let line_start = s == 0 || b[s - 1] == b'\n';
    let mut e = end;
    while e < b.len() && (b[e] == b' ' || b[e] == b'\t') {
        e += 1;
    }
    let line_end = e == b.len() || b[e] == b'\n';
    if line_start && line_end {
        (s, if e < b.len() { e + 1 } else { e })
    } else {
        (start, end)
    }
}

/// Static attribute names of an attrpath node, `None` when one is dynamic.
fn attrpath_names(ap: &SyntaxNode) -> Option<Vec<String>> {
    let mut names = Vec::new();
    for c in ap.children() {
        match c.kind() {
            SyntaxKind::NODE_IDENT => names.push(c.text().to_string()),
            SyntaxKind::NODE_STRING => {
                if c.children().next().is_some() {
                    return None;
                }
                let s: String = c
                    .children_with_tokens()
                    .filter_map(|t| t.into_token())
                    .filter(|t| t.kind() == SyntaxKind::TOKEN_STRING_CONTENT)
                    .map(|t| t.text().to_string())
                    .collect();
                names.push(s);
            }
            _ => return None,
        }
    }
    Some(names)
}

/// The attribute path a binding sets, through enclosing attribute sets (and through
/// `mkIf`/`mkMerge`/parentheses/lambdas, which do not add names). `None` for `let` bindings.
fn full_path(node: &SyntaxNode) -> Option<Vec<String>> {
    let ap = node
        .children()
        .find(|c| c.kind() == SyntaxKind::NODE_ATTRPATH)?;
    let mut path = attrpath_names(&ap)?;
    let mut cur = node.parent();
    if cur
        .as_ref()
        .is_some_and(|p| p.kind() == SyntaxKind::NODE_LET_IN)
    {
        return None;
    }
    while let Some(n) = cur {
        if n.kind() == SyntaxKind::NODE_ATTRPATH_VALUE {
            let ap = n
                .children()
                .find(|c| c.kind() == SyntaxKind::NODE_ATTRPATH)?;
            let mut prefix = attrpath_names(&ap)?;
            prefix.extend(path);
            path = prefix;
            if n.parent()
                .is_some_and(|p| p.kind() == SyntaxKind::NODE_LET_IN)
            {
                return None;
            }
        }
        cur = n.parent();
    }
    Some(path)
}

fn value_text(node: &SyntaxNode) -> String {
    node.children()
        .filter(|c| c.kind() != SyntaxKind::NODE_ATTRPATH)
        .map(|c| c.to_string())
        .next()
        .unwrap_or_default()
}

/// `false`, `lib.mkForce false`, `(mkDefault true)`, `lib.mkOverride 10 false` → the bool.
fn bool_value(text: &str) -> Option<bool> {
    let mut t = text.trim();
    loop {
        let before = t;
        t = t.trim_start_matches('(').trim_end_matches(')').trim();
        for f in [
            "lib.mkForce",
            "mkForce",
            "lib.mkDefault",
            "mkDefault",
            "lib.mkOverride",
            "mkOverride",
        ] {
            if let Some(rest) = t.strip_prefix(f) {
                t = rest.trim();
                if f.ends_with("mkOverride") {
                    t = t.trim_start_matches(|c: char| c.is_ascii_digit()).trim();
                }
            }
        }
        if t == before {
            break;
        }
    }
    match t {
        "true" => Some(true),
        "false" => Some(false),
        _ => None,
    }
}

/// Replace `eth0` as a word (not `veth0`, `mv-eth0`, `eth01`) by `host0`.
pub fn replace_eth0_words(s: &str) -> Option<String> {
    let word = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c == b'-';
    let b = s.as_bytes();
    let mut out = String::new();
    let mut last = 0;
    let mut changed = false;
    let mut i = 0;
    while let Some(off) = s[i..].find("eth0") {
        let at = i + off;
        let end = at + 4;
        let before_ok = at == 0 || !word(b[at - 1]);
        let after_ok =
            end == b.len() || !(b[end].is_ascii_alphanumeric() || b[end] == b'_' || b[end] == b'-');
        if before_ok && after_ok {
            out.push_str(&s[last..at]);
            out.push_str("host0");
            last = end;
            changed = true;
        }
        i = end;
    }
    if !changed {
        return None;
    }
    out.push_str(&s[last..]);
    Some(out)
}

/// Lexically normalise an absolute path (`.` and `..` removed).
pub fn normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::from("/");
    for c in p.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(n) => out.push(n),
            _ => {}
        }
    }
    out
}

/// `target` relative to directory `base` (both absolute, normalised).
fn relative_to(target: &Path, base: &Path) -> PathBuf {
    let t: Vec<_> = target.components().collect();
    let b: Vec<_> = base.components().collect();
    let common = t.iter().zip(&b).take_while(|(x, y)| x == y).count();
    let mut out = PathBuf::new();
    for _ in common..b.len() {
        out.push("..");
    }
    for c in &t[common..] {
        out.push(c.as_os_str());
    }
    out
}

fn is_path_literal_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '+' | '/')
}

/// A relative path literal written in `origin_file`, re-expressed for `output_file`.
pub fn relocate_path(literal: &str, origin_file: &Path, output_file: &Path) -> String {
    let trailing = literal.len() > 1 && literal.ends_with('/');
    let origin_dir = normalize(origin_file.parent().unwrap_or(Path::new("/")));
    let out_dir = normalize(output_file.parent().unwrap_or(Path::new("/")));
    let abs = normalize(&origin_dir.join(literal));
    if origin_dir == out_dir {
        return literal.to_string();
    }
    let rel = relative_to(&abs, &out_dir);
    let rel = rel.to_string_lossy().to_string();
    let mut lit = if rel.is_empty() {
        "./.".to_string()
    } else if rel.starts_with("..") {
        rel
    } else {
        format!("./{rel}")
    };
    if trailing && !lit.ends_with('/') {
        lit.push('/');
    }
    if lit.chars().all(is_path_literal_char) && lit.contains('/') {
        lit
    } else {
        format!(
            "(/. + {})",
            crate::nixtext::string_literal(&abs.to_string_lossy())
        )
    }
}

fn has_from(inherit: &SyntaxNode) -> bool {
    inherit
        .children()
        .any(|c| c.kind() == SyntaxKind::NODE_INHERIT_FROM)
}

/// Identifiers an expression uses without binding them (best effort: scopes are approximated
/// by "bound anywhere in the text"; anything under `with` is skipped, since `with` can bind
/// any name). Builtins and `true`/`false`/`null` are not reported.
pub fn free_variables(text: &str) -> Vec<String> {
    const BUILTINS: &[&str] = &[
        "true",
        "false",
        "null",
        "builtins",
        "import",
        "toString",
        "map",
        "throw",
        "abort",
        "baseNameOf",
        "dirOf",
        "derivation",
        "fetchTarball",
        "fetchGit",
        "fetchurl",
        "isNull",
        "removeAttrs",
        "scopedImport",
        "placeholder",
        "__curPos",
    ];
    // Too deep to parse safely: the rewrite already reported it.
    if crate::nixtext::check_nesting(text).is_err() {
        return Vec::new();
    }
    let parse = rnix::Root::parse(text);
    let root = parse.tree();
    let root = root.syntax();
    let mut bound = BTreeSet::new();
    for n in root.descendants() {
        match n.kind() {
            SyntaxKind::NODE_IDENT_PARAM
            | SyntaxKind::NODE_PAT_ENTRY
            | SyntaxKind::NODE_PAT_BIND => {
                if let Some(id) = n.children().find(|c| c.kind() == SyntaxKind::NODE_IDENT) {
                    bound.insert(id.text().to_string());
                }
            }
            SyntaxKind::NODE_ATTRPATH_VALUE => {
                let parent_binds = n.parent().is_some_and(|p| {
                    p.kind() == SyntaxKind::NODE_LET_IN
                        || (p.kind() == SyntaxKind::NODE_ATTR_SET
                            && p.children_with_tokens()
                                .any(|t| t.kind() == SyntaxKind::TOKEN_REC))
                });
                if parent_binds
                    && let Some(first) = n
                        .children()
                        .find(|c| c.kind() == SyntaxKind::NODE_ATTRPATH)
                        .and_then(|ap| ap.children().next())
                    && first.kind() == SyntaxKind::NODE_IDENT
                {
                    bound.insert(first.text().to_string());
                }
            }
            SyntaxKind::NODE_INHERIT if has_from(&n) => {
                // `inherit (x) a b;` binds a, b (and uses x); plain `inherit a;` uses a.
                for id in n.children().filter(|c| c.kind() == SyntaxKind::NODE_IDENT) {
                    bound.insert(id.text().to_string());
                }
            }
            _ => {}
        }
    }
    let mut free = BTreeSet::new();
    for n in root
        .descendants()
        .filter(|n| n.kind() == SyntaxKind::NODE_IDENT)
    {
        let Some(parent) = n.parent() else { continue };
        if matches!(
            parent.kind(),
            SyntaxKind::NODE_ATTRPATH
                | SyntaxKind::NODE_IDENT_PARAM
                | SyntaxKind::NODE_PAT_ENTRY
                | SyntaxKind::NODE_PAT_BIND
        ) || (parent.kind() == SyntaxKind::NODE_INHERIT && has_from(&parent))
        {
            continue;
        }
        if n.ancestors().any(|a| a.kind() == SyntaxKind::NODE_WITH) {
            continue;
        }
        let name = n.text().to_string();
        if !bound.contains(&name) && !BUILTINS.contains(&name.as_str()) {
            free.insert(name);
        }
    }
    free.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p() -> Paths<'static> {
        Paths {
            origin_file: Path::new("/etc/nixos/configuration.nix"),
            first_line: 10,
            output_file: Path::new("/etc/nixos/nspawn-containers.nix"),
        }
    }

    #[test]
    fn eth0_in_names_and_strings() {
        let src = r#"{ config, pkgs, ... }: {
  # eth0 in a comment stays
  networking.interfaces.eth0.useDHCP = true;
  networking.firewall.interfaces."eth0".allowedTCPPorts = [ 80 ];
  networking.nat.externalInterface = "eth0";
  systemd.network.networks."10-lan".matchConfig.Name = "eth0";
  networking.vlans.v100 = { id = 100; interface = "eth0.100"; };
  networking.interfaces.mv-eth0.useDHCP = true;
  x = "veth0 eth01 mv-eth0";
  script = ''
    ip link set eth0 up
  '';
}"#;
        let r = rewrite_guest(src, &p());
        assert!(r.parse_error.is_none());
        let t = &r.text;
        assert!(t.contains("# eth0 in a comment stays"), "{t}");
        assert!(
            t.contains("networking.interfaces.host0.useDHCP = true;"),
            "{t}"
        );
        assert!(
            t.contains(r#"firewall.interfaces."host0".allowedTCPPorts"#),
            "{t}"
        );
        assert!(t.contains(r#"externalInterface = "host0";"#), "{t}");
        assert!(t.contains(r#"Name = "host0";"#), "{t}");
        assert!(t.contains(r#""host0.100""#), "{t}");
        assert!(t.contains("interfaces.mv-eth0.useDHCP"), "{t}");
        assert!(t.contains(r#""veth0 eth01 mv-eth0""#), "{t}");
        assert!(t.contains("ip link set host0 up"), "{t}");
        let n = r
            .changes
            .iter()
            .filter(|c| c.what == ChangeKind::Eth0)
            .count();
        assert_eq!(n, 6, "{:?}", r.changes);
        assert_eq!(r.changes[0].line, 12);
        assert!(rnix::Root::parse(t).errors().is_empty());
    }

    #[test]
    fn use_host_resolv_conf_removed_everywhere() {
        let src = "{ lib, ... }: {\n  networking.useHostResolvConf = lib.mkForce false;\n  networking = {\n    hostName = \"x\";\n    useHostResolvConf = false;\n  };\n  boot.isContainer = true;\n  services.resolved.enable = true;\n}";
        let r = rewrite_guest(src, &p());
        assert!(!r.text.contains("useHostResolvConf"), "{}", r.text);
        assert!(!r.text.contains("isContainer"), "{}", r.text);
        assert!(r.text.contains("hostName = \"x\";"));
        assert!(r.resolv.use_host_resolv_conf_false);
        assert!(r.resolv.uses_resolved);
        assert_eq!(
            r.text,
            "{ lib, ... }: {\n  networking = {\n    hostName = \"x\";\n  };\n  services.resolved.enable = true;\n}"
        );
        assert!(rnix::Root::parse(&r.text).errors().is_empty());
    }

    #[test]
    fn let_bindings_are_not_config() {
        let src = "let useHostResolvConf = false; in { networking.hostName = \"a\"; }";
        let r = rewrite_guest(src, &p());
        assert_eq!(r.text, src);
    }

    #[test]
    fn relative_paths_follow_the_output_file() {
        let pp = Paths {
            origin_file: Path::new("/etc/nixos/hosts/web/containers.nix"),
            first_line: 1,
            output_file: Path::new("/etc/nixos/nspawn-containers.nix"),
        };
        let r = rewrite_guest("{ imports = [ ./guest.nix ../common/base.nix ./. ]; }", &pp);
        assert_eq!(
            r.text,
            "{ imports = [ ./hosts/web/guest.nix ./hosts/common/base.nix ./hosts/web ]; }"
        );
        let same = rewrite_guest("{ imports = [ ./guest.nix ]; }", &p());
        assert_eq!(same.text, "{ imports = [ ./guest.nix ]; }");
        let up = relocate_path(
            "./x.nix",
            Path::new("/srv/cfg/a.nix"),
            Path::new("/etc/nixos/out.nix"),
        );
        assert_eq!(up, "../../srv/cfg/x.nix");
        let interp = rewrite_guest("{ imports = [ ./${name}.nix ]; }", &pp);
        assert_eq!(interp.changes[0].what, ChangeKind::PathNotRewritable);
    }

    #[test]
    fn free_variables_found() {
        let v = free_variables(
            "{ pkgs, ... }: let a = 1; inherit (pkgs) lib; in { x = a; y = hostName; z = pkgs.hello; w = config.foo; l = with pkgs; [ vim ]; inherit inputs; m = lib.id; }",
        );
        assert_eq!(
            v,
            vec![
                "config".to_string(),
                "hostName".to_string(),
                "inputs".to_string()
            ]
        );
    }

    fn gw(text: &str, rule: GatewayRule, strings: &[String]) -> Rewrite {
        let r = rewrite_guest_with(
            text,
            &p(),
            GuestRules {
                gateway: rule,
                string_names: strings,
            },
        );
        assert!(r.parse_error.is_none());
        assert!(rnix::Root::parse(&r.text).errors().is_empty(), "{}", r.text);
        r
    }

    fn kinds(r: &Rewrite, k: ChangeKind) -> Vec<&Change> {
        r.changes.iter().filter(|c| c.what == k).collect()
    }

    #[test]
    fn bare_gateways_get_the_interface() {
        let host0 = GatewayRule::Rewrite("host0");
        // The string form, under mkForce, nested, and a let-bound string (own or carried).
        let r = gw(
            "{ lib, ... }: let gw6 = \"fd00::1\"; in {\n  networking.defaultGateway = \"10.0.0.1\";\n  networking = { defaultGateway6 = lib.mkForce gw6; };\n}",
            host0,
            &[],
        );
        assert_eq!(
            r.text,
            "{ lib, ... }: let gw6 = \"fd00::1\"; in {\n  networking.defaultGateway = { address = \"10.0.0.1\"; interface = \"host0\"; };\n  networking = { defaultGateway6 = lib.mkForce { address = gw6; interface = \"host0\"; }; };\n}"
        );
        let added = kinds(&r, ChangeKind::GatewayInterfaceAdded);
        assert_eq!(added.len(), 2, "{:?}", r.changes);
        assert_eq!(added[0].line, 11);
        assert_eq!(added[0].before, "networking.defaultGateway = \"10.0.0.1\";");
        assert_eq!(
            added[0].after,
            "networking.defaultGateway = { address = \"10.0.0.1\"; interface = \"host0\"; };"
        );
        let carried = gw(
            "{ networking.defaultGateway = \"${prefix}.1\"; networking.defaultGateway6 = gw6; }",
            GatewayRule::Rewrite("mv-eth1"),
            &["gw6".to_string()],
        );
        assert_eq!(
            carried.text,
            "{ networking.defaultGateway = { address = \"${prefix}.1\"; interface = \"mv-eth1\"; }; networking.defaultGateway6 = { address = gw6; interface = \"mv-eth1\"; }; }"
        );
        // `.address` alone, and `{ address; }` without interface.
        assert_eq!(
            gw(
                "{ networking.defaultGateway.address = \"10.0.0.1\"; }",
                host0,
                &[]
            )
            .text,
            "{ networking.defaultGateway.address = \"10.0.0.1\"; networking.defaultGateway.interface = \"host0\"; }"
        );
        assert_eq!(
            gw(
                "{ networking.defaultGateway = { address = \"10.0.0.1\"; metric = 5; }; }",
                host0,
                &[]
            )
            .text,
            "{ networking.defaultGateway = { address = \"10.0.0.1\"; metric = 5; interface = \"host0\"; }; }"
        );
    }

    #[test]
    fn gateways_that_are_complete_or_unknown_stay() {
        let host0 = GatewayRule::Rewrite("host0");
        for text in [
            // Complete (eth0 becomes host0 by the eth0 rule).
            "{ networking.defaultGateway = { address = \"10.0.0.1\"; interface = \"eth0\"; }; }",
            "{ networking.defaultGateway.address = \"10.0.0.1\"; networking.defaultGateway.interface = \"eth0\"; }",
            // Not a string the tool can see: may well be complete.
            "{ config, ... }: { networking.defaultGateway = config.my.gateway; }",
            "{ networking.defaultGateway = null; }",
            // Not networking's.
            "{ services.foo.defaultGateway = \"10.0.0.1\"; }",
        ] {
            let r = gw(text, host0, &[]);
            assert!(
                kinds(&r, ChangeKind::GatewayInterfaceAdded).is_empty()
                    && kinds(&r, ChangeKind::GatewayBare).is_empty(),
                "{text}: {:?}",
                r.changes
            );
            assert_eq!(r.text, text.replace("eth0", "host0"));
        }
        // Inside a `let`: found, not rewritten, and said why.
        let text =
            "let net = { networking.defaultGateway = \"10.0.0.1\"; }; in { imports = [ net ]; }";
        let r = gw(text, host0, &[]);
        assert_eq!(r.text, text);
        let bare = kinds(&r, ChangeKind::GatewayBare);
        assert_eq!(bare.len(), 1);
        assert!(bare[0].after.contains("let"), "{:?}", bare[0]);
        // Find: found, nothing changed, no reason (only the rule said no).
        let text = "{ networking.defaultGateway = \"10.0.0.1\"; }";
        let r = gw(text, GatewayRule::Find, &[]);
        assert_eq!(r.text, text);
        let bare = kinds(&r, ChangeKind::GatewayBare);
        assert_eq!((bare.len(), bare[0].after.as_str()), (1, ""));
        // Ignore (the default of rewrite_guest): not even found.
        assert!(rewrite_guest(text, &p()).changes.is_empty());
    }

    #[test]
    fn unparsable_text_is_kept() {
        let r = rewrite_guest("{ a = ; }", &p());
        assert!(r.parse_error.is_some());
        assert_eq!(r.text, "{ a = ; }");
    }
}

/// What one file a guest config imports needs, by the guest rules (issue 9: the same rules as
/// the config text itself).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GuestFileFinding {
    /// Read, and nothing in it changes under systemd-nspawn@.
    Clean(std::path::PathBuf),
    /// Read, and these lines must change (eth0 → host0, useHostResolvConf, boot.isContainer).
    NeedsRewrite(std::path::PathBuf, Vec<Change>),
    /// Not read: why.
    Unreadable(std::path::PathBuf, String),
    /// Read, but it does not parse: the rules could not be applied.
    Unparsable(std::path::PathBuf, String),
    /// Read, and it sets a gateway without an interface that the rules did not rewrite
    /// ([`ChangeKind::GatewayBare`] changes; besides its `Clean`/`NeedsRewrite` finding).
    GatewayBare(std::path::PathBuf, Vec<Change>),
}

/// Apply the guest rules to the files a guest config imports (as the reader found them).
pub fn check_guest_files(
    files: &[crate::legacy::GuestFile],
    output_file: &Path,
    gateway: GatewayRule,
) -> Vec<GuestFileFinding> {
    let mut out = Vec::new();
    for f in files {
        match &f.content {
            Err(why) => out.push(GuestFileFinding::Unreadable(f.path.clone(), why.clone())),
            Ok(text) => {
                let r = rewrite_guest_with(
                    text,
                    &Paths {
                        origin_file: &f.path,
                        first_line: 1,
                        output_file,
                    },
                    GuestRules {
                        gateway,
                        string_names: &[],
                    },
                );
                if let Some(err) = r.parse_error {
                    out.push(GuestFileFinding::Unparsable(f.path.clone(), err));
                    continue;
                }
                let (bare, changes): (Vec<Change>, Vec<Change>) = r
                    .changes
                    .into_iter()
                    .partition(|c| c.what == ChangeKind::GatewayBare);
                if !bare.is_empty() {
                    out.push(GuestFileFinding::GatewayBare(f.path.clone(), bare));
                }
                let needed: Vec<Change> = changes
                    .into_iter()
                    .filter(|c| {
                        matches!(
                            c.what,
                            ChangeKind::Eth0
                                | ChangeKind::UseHostResolvConfRemoved
                                | ChangeKind::IsContainerRemoved
                                | ChangeKind::GatewayInterfaceAdded
                        )
                    })
                    .collect();
                if needed.is_empty() {
                    out.push(GuestFileFinding::Clean(f.path.clone()));
                } else {
                    out.push(GuestFileFinding::NeedsRewrite(f.path.clone(), needed));
                }
            }
        }
    }
    out
}

/// Where the rewritten copy of a guest file goes: `<output dir>/nspawn-guests/<container>/`
/// followed by the original's path, so that relative imports between copies stay as written.
pub fn copy_path(output_file: &Path, container: &str, original: &Path) -> PathBuf {
    let dir = output_file.parent().unwrap_or(Path::new("/"));
    let rel = original.strip_prefix("/").unwrap_or(original);
    dir.join("nspawn-guests").join(container).join(rel)
}

/// Re-point the relative path literals of `text` (written in `file`): each one whose target
/// `map` gives a new place for is re-expressed, relative to `file`, to point there. Literals
/// with interpolation are left alone.
pub fn retarget_paths(text: &str, file: &Path, map: &dyn Fn(&Path) -> Option<PathBuf>) -> String {
    if crate::nixtext::check_nesting(text).is_err() {
        return text.to_string();
    }
    let parse = rnix::Root::parse(text);
    if !parse.errors().is_empty() {
        return text.to_string();
    }
    let dir = normalize(file.parent().unwrap_or(Path::new("/")));
    let mut edits: Vec<(usize, usize, String)> = Vec::new();
    for n in parse.tree().syntax().descendants() {
        if n.kind() != SyntaxKind::NODE_PATH_REL || n.children().next().is_some() {
            continue;
        }
        let lit = n.text().to_string();
        let abs = normalize(&dir.join(&lit));
        let Some(to) = map(&abs) else { continue };
        let rel = relative_to(&normalize(&to), &dir)
            .to_string_lossy()
            .to_string();
        let new = if rel.starts_with("..") {
            rel
        } else {
            format!("./{rel}")
        };
        let new = if new.chars().all(is_path_literal_char) {
            new
        } else {
            format!(
                "(/. + {})",
                crate::nixtext::string_literal(&to.to_string_lossy())
            )
        };
        let r = n.text_range();
        edits.push((usize::from(r.start()), usize::from(r.end()), new));
    }
    let mut out = text.to_string();
    edits.sort_by_key(|e| std::cmp::Reverse(e.0));
    for (a, b, new) in edits {
        out.replace_range(a..b, &new);
    }
    out
}

/// The rewritten copies of a guest config's files when one of them needs the guest rules:
/// every file read is copied (so that no copy imports an unrewritten original), rewritten
/// (eth0 → host0, useHostResolvConf and boot.isContainer removed), with relative paths to
/// files that are not copied pointing back at the originals. Returns original → (copy, text).
pub fn guest_copies(
    files: &[crate::legacy::GuestFile],
    output_file: &Path,
    container: &str,
    gateway: GatewayRule,
) -> std::collections::BTreeMap<PathBuf, (PathBuf, String)> {
    let mut out = std::collections::BTreeMap::new();
    let copied: Vec<&Path> = files
        .iter()
        .filter(|f| f.content.is_ok())
        .map(|f| f.path.as_path())
        .collect();
    for f in files {
        let Ok(text) = &f.content else { continue };
        let copy = copy_path(output_file, container, &f.path);
        // The rules, with paths left as written (the layout under the copy mirrors the original).
        let r = rewrite_guest_with(
            text,
            &Paths {
                origin_file: &f.path,
                first_line: 1,
                output_file: &f.path,
            },
            GuestRules {
                gateway,
                string_names: &[],
            },
        );
        if r.parse_error.is_some() {
            continue;
        }
        let root = normalize(&copy_path(output_file, container, Path::new("/")));
        // A target seen from the copy → the original place, unless that is copied too.
        let text = retarget_paths(&r.text, &copy, &|abs: &Path| {
            let rel = abs.strip_prefix(&root).ok()?;
            let original = Path::new("/").join(rel);
            (!copied.contains(&original.as_path())).then_some(original)
        });
        out.insert(f.path.clone(), (copy, text));
    }
    out
}
