//! Small syntax helpers: byte offsets to line and column, static attribute names, and the free
//! variables of an expression kept verbatim.

use rnix::SyntaxKind::*;
use rnix::SyntaxNode;
use rnix::ast::{self, InterpolPart};
use rowan::ast::AstNode;
use std::collections::BTreeSet;

/// How deep the tree walks go before giving up (far beyond any real configuration; keeps a
/// hostile input from exhausting the stack).
pub(crate) const MAX_DEPTH: usize = 200;

/// Line starts of one text, to turn byte offsets into 1-based lines and columns.
pub(crate) struct Lines<'t> {
    text: &'t str,
    starts: Vec<usize>,
}

impl<'t> Lines<'t> {
    pub(crate) fn new(text: &'t str) -> Self {
        let mut starts = vec![0];
        starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        Lines { text, starts }
    }

    /// 1-based line and 1-based column (in characters) of a byte offset.
    pub(crate) fn line_col(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let idx = self
            .starts
            .partition_point(|&s| s <= offset)
            .saturating_sub(1);
        let start = self.starts.get(idx).copied().unwrap_or(0);
        let col = self
            .text
            .get(start..offset)
            .map(|s| s.chars().count())
            .unwrap_or(0);
        (idx + 1, col + 1)
    }

    pub(crate) fn node_line_col(&self, node: &SyntaxNode) -> (usize, usize) {
        self.line_col(usize::from(node.text_range().start()))
    }
}

/// The static name of an attribute (`web`, `"mail.example"`, `${"x"}`), or `None` when it is
/// computed (`${name}`, `"${prefix}-web"`).
pub(crate) fn attr_name(attr: &ast::Attr) -> Option<String> {
    match attr {
        ast::Attr::Ident(i) => Some(i.syntax().text().to_string()),
        ast::Attr::Str(s) => static_string(s),
        ast::Attr::Dynamic(d) => match d.expr()? {
            ast::Expr::Str(s) => static_string(&s),
            _ => None,
        },
    }
}

/// The value of a string literal without interpolation.
pub(crate) fn static_string(s: &ast::Str) -> Option<String> {
    let mut out = String::new();
    for part in s.normalized_parts() {
        match part {
            InterpolPart::Literal(l) => out.push_str(&l),
            InterpolPart::Interpolation(_) => return None,
        }
    }
    Some(out)
}

/// Names that Nix provides everywhere without a binding.
const GLOBALS: &[&str] = &[
    "abort",
    "baseNameOf",
    "break",
    "builtins",
    "derivation",
    "derivationStrict",
    "dirOf",
    "false",
    "fetchGit",
    "fetchMercurial",
    "fetchTarball",
    "fetchTree",
    "fromTOML",
    "import",
    "isNull",
    "map",
    "null",
    "placeholder",
    "removeAttrs",
    "scopedImport",
    "throw",
    "toString",
    "true",
];

pub(crate) fn is_global(name: &str) -> bool {
    GLOBALS.contains(&name) || name.starts_with("__")
}

/// Identifiers `node` uses but does not bind, sorted, Nix globals excluded. A name under a
/// `with` that lies inside `node` is taken as provided by that `with`.
pub(crate) fn free_vars(node: &SyntaxNode) -> Vec<String> {
    let mut out = BTreeSet::new();
    let mut bound = Vec::new();
    walk(node, &mut bound, 0, &mut out, 0);
    out.into_iter().collect()
}

fn static_first_names(node: &SyntaxNode) -> Vec<String> {
    let mut names = Vec::new();
    for child in node.children() {
        match child.kind() {
            NODE_ATTRPATH_VALUE => {
                if let Some(apv) = ast::AttrpathValue::cast(child)
                    && let Some(first) = apv.attrpath().and_then(|p| p.attrs().next())
                    && let Some(n) = attr_name(&first)
                {
                    names.push(n);
                }
            }
            NODE_INHERIT => {
                if let Some(inh) = ast::Inherit::cast(child) {
                    names.extend(inh.attrs().filter_map(|a| attr_name(&a)));
                }
            }
            _ => {}
        }
    }
    names
}

fn is_plain_inherit(node: &SyntaxNode) -> bool {
    node.kind() == NODE_INHERIT && !node.children().any(|c| c.kind() == NODE_INHERIT_FROM)
}

fn walk(
    node: &SyntaxNode,
    bound: &mut Vec<String>,
    with: usize,
    out: &mut BTreeSet<String>,
    depth: usize,
) {
    if depth > MAX_DEPTH {
        return;
    }
    let d = depth + 1;
    match node.kind() {
        NODE_IDENT => {
            let name = node.text().to_string();
            if with == 0 && !is_global(&name) && !bound.contains(&name) {
                out.insert(name);
            }
        }
        NODE_ATTRPATH => {
            // Plain names in an attribute path are names, not uses; `${e}` and `"${e}"` are.
            for c in node.children() {
                if matches!(c.kind(), NODE_DYNAMIC | NODE_STRING) {
                    walk(&c, bound, with, out, d);
                }
            }
        }
        NODE_INHERIT => {
            for c in node.children() {
                match c.kind() {
                    NODE_INHERIT_FROM => walk(&c, bound, with, out, d),
                    // `inherit a;` uses `a` from the enclosing scope.
                    NODE_IDENT if is_plain_inherit(node) => walk(&c, bound, with, out, d),
                    NODE_DYNAMIC | NODE_STRING => walk(&c, bound, with, out, d),
                    _ => {}
                }
            }
        }
        NODE_LAMBDA => {
            let mark = bound.len();
            if let Some(lambda) = ast::Lambda::cast(node.clone()) {
                match lambda.param() {
                    Some(ast::Param::IdentParam(p)) => {
                        if let Some(i) = p.ident() {
                            bound.push(i.syntax().text().to_string());
                        }
                    }
                    Some(ast::Param::Pattern(p)) => {
                        for e in p.pat_entries() {
                            if let Some(i) = e.ident() {
                                bound.push(i.syntax().text().to_string());
                            }
                        }
                        if let Some(i) = p.pat_bind().and_then(|b| b.ident()) {
                            bound.push(i.syntax().text().to_string());
                        }
                        for e in p.pat_entries() {
                            if let Some(def) = e.default() {
                                walk(def.syntax(), bound, with, out, d);
                            }
                        }
                    }
                    None => {}
                }
                if let Some(body) = lambda.body() {
                    walk(body.syntax(), bound, with, out, d);
                }
            }
            bound.truncate(mark);
        }
        NODE_LET_IN | NODE_LEGACY_LET => scoped(node, bound, with, out, d),
        NODE_ATTR_SET if node.children_with_tokens().any(|c| c.kind() == TOKEN_REC) => {
            scoped(node, bound, with, out, d)
        }
        NODE_WITH => {
            let mut kids = node.children();
            if let Some(ns) = kids.next() {
                walk(&ns, bound, with, out, d);
            }
            for body in kids {
                walk(&body, bound, with + 1, out, d);
            }
        }
        _ => {
            for c in node.children() {
                walk(&c, bound, with, out, d);
            }
        }
    }
}

/// `let`, `rec { }` and legacy `let { }`: every binding is visible in every value and the body;
/// a plain `inherit a;` still reads `a` from outside.
fn scoped(
    node: &SyntaxNode,
    bound: &mut Vec<String>,
    with: usize,
    out: &mut BTreeSet<String>,
    depth: usize,
) {
    for c in node.children().filter(is_plain_inherit) {
        walk(&c, bound, with, out, depth);
    }
    let mark = bound.len();
    bound.extend(static_first_names(node));
    for c in node.children().filter(|c| !is_plain_inherit(c)) {
        walk(&c, bound, with, out, depth);
    }
    bound.truncate(mark);
}

/// True when the expression contains a relative path literal (`./x.nix`), whose meaning
/// depends on the directory of the file the text sits in.
pub(crate) fn has_relative_path(node: &SyntaxNode) -> bool {
    node.descendants().any(|n| n.kind() == NODE_PATH_REL)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fv(src: &str) -> Vec<String> {
        let p = rnix::Root::parse(src);
        assert!(p.errors().is_empty(), "{:?}", p.errors());
        let e = p.tree().expr().unwrap();
        free_vars(e.syntax())
    }

    #[test]
    fn free_variables_table() {
        let cases: &[(&str, &[&str])] = &[
            ("x", &["x"]),
            ("true || false || null == builtins.x", &[]),
            (
                "{ config, pkgs, ... }: { a = pkgs.hello; b = config.x; }",
                &[],
            ),
            ("{ pkgs, ... }: { a = lib.mkForce pkgs.x; }", &["lib"]),
            ("a.b.c", &["a"]),
            ("{ a = 1; b = a; }", &["a"]),
            ("rec { a = 1; b = a; }", &[]),
            ("let a = 1; in a + b", &["b"]),
            ("let inherit a; in a", &["a"]),
            ("let inherit (x) a; in a", &["x"]),
            ("{ inherit a; inherit (b) c; }", &["a", "b"]),
            ("x: y: x y z", &["z"]),
            ("{ a ? b, b }: a", &[]),
            ("args@{ ... }: args.x", &[]),
            ("with pkgs; [ vim git ]", &["pkgs"]),
            ("\"${prefix}.2/24\"", &["prefix"]),
            ("{ ${name} = 1; }", &["name"]),
            ("a.${b}", &["a", "b"]),
            ("x.y or z", &["x", "z"]),
            ("x ? y", &["x"]),
            ("import ./x.nix { inherit config; }", &["config"]),
            ("map toString [ 1 ] ++ __currentSystem", &[]),
        ];
        for (src, want) in cases {
            let want: Vec<String> = want.iter().map(|s| s.to_string()).collect();
            assert_eq!(fv(src), want, "free variables of {src}");
        }
        // Checked against the real parser, which rejects undefined variables: with exactly
        // these names bound the text parses, and without any one of them it does not.
        if std::process::Command::new("nix-instantiate")
            .arg("--version")
            .output()
            .is_err()
        {
            assert!(std::env::var_os("NIXOS_NSPAWN_REQUIRE_REAL_TOOLS").is_none());
            return;
        }
        let parses = |src: &str, bound: &[&str]| {
            let binds: String = bound.iter().map(|v| format!("{v} = null; ")).collect();
            let text = format!("let {binds}in\n{src}");
            std::process::Command::new("nix-instantiate")
                .args(["--parse", "-E", &text])
                .output()
                .unwrap()
                .status
                .success()
        };
        for (src, want) in cases {
            assert!(parses(src, want), "{src} with {want:?} bound");
            for skip in want.iter() {
                let fewer: Vec<&str> = want.iter().copied().filter(|w| w != skip).collect();
                assert!(!parses(src, &fewer), "{src} parses without {skip}");
            }
        }
    }

    #[test]
    fn lines_and_columns_are_one_based_and_count_characters() {
        let l = Lines::new("ab\n\nçd x\n");
        assert_eq!(l.line_col(0), (1, 1));
        assert_eq!(l.line_col(1), (1, 2));
        assert_eq!(l.line_col(3), (2, 1));
        assert_eq!(l.line_col(4), (3, 1));
        // `ç` is two bytes: the `x` at byte 8 is the 4th character of line 3.
        assert_eq!(l.line_col(8), (3, 4));
        assert_eq!(l.line_col(1000), (4, 1));
    }
}
