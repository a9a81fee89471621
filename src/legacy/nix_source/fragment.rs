//! Files that are not a host module but a piece of one: the value of ONE container (a file used
//! as `containers.web = import ./web.nix { … };`) or the value of `containers` (a set of them).
//!
//! Given with `--config`, such a file defines no `containers.<name>` at module level, so without
//! this check it would yield nothing and say nothing. The check is table-driven: an attribute
//! set is "container-shaped" when its keys are legacy `containers.<name>` options
//! ([`CONTAINER_KEYS`]): at least two distinctive ones, or `config` plus one. Ordinary modules
//! (`config`, `options`, `imports`, `services`, `networking`, …) never match.

use super::extract::{head_name, literal_path, uncurry, unparen};
use super::text::{self, MAX_DEPTH};
use rnix::ast::{self, HasEntry};
use rowan::ast::AstNode;
use std::path::{Path, PathBuf};

/// Options of one legacy container, and whether each one is distinctive: derived from the
/// option table ([`crate::legacy::options::LEGACY_OPTIONS`]). Names that are also top-level
/// keys of ordinary NixOS modules or flake-parts modules (`config`, `nixpkgs`, `path`, `flake`)
/// never count on their own.
pub use crate::legacy::options::CONTAINER_KEYS;

/// Parents whose own `containers` option is not the legacy one
/// (`virtualisation.oci-containers.containers.<name>`, …): a `containers` attribute right under
/// one of these is not a legacy container.
pub(crate) const OTHER_CONTAINERS_PARENTS: &[&str] = &[
    "oci-containers",
    "quadlet",
    "arion",
    "incus",
    "lxc",
    "lxd",
    "podman",
    "docker",
    "microvm",
    "kubernetes",
    "virtualisation",
];

/// The legacy container options among `keys`, when they make the set container-shaped.
pub(crate) fn container_keys(keys: &[String]) -> Option<Vec<String>> {
    let mut found: Vec<String> = Vec::new();
    let mut distinctive = 0;
    let mut has_config = false;
    for k in keys {
        if found.contains(k) {
            continue;
        }
        if let Some((name, strong)) = CONTAINER_KEYS.iter().find(|(n, _)| n == k) {
            found.push(name.to_string());
            if *strong {
                distinctive += 1;
            }
            if *name == "config" {
                has_config = true;
            }
        }
    }
    (distinctive >= 2 || (has_config && distinctive >= 1)).then_some(found)
}

/// The attribute sets an expression evaluates to, looking through what a file or a value is
/// commonly wrapped in: parentheses, functions of arguments, `let`, `with`, `assert`,
/// `lib.mkIf c`, `mkDefault`/`mkForce`, and both sides of `//` (operands that are not
/// literal sets are skipped).
pub(crate) fn bodies(e: &ast::Expr) -> Vec<ast::AttrSet> {
    let mut out = Vec::new();
    collect_bodies(e.clone(), &mut out, 0);
    out
}

fn collect_bodies(e: ast::Expr, out: &mut Vec<ast::AttrSet>, depth: usize) {
    if depth > MAX_DEPTH {
        return;
    }
    let d = depth + 1;
    match e {
        ast::Expr::Paren(p) => {
            if let Some(i) = p.expr() {
                collect_bodies(i, out, d)
            }
        }
        ast::Expr::Lambda(l) => {
            if let Some(b) = l.body() {
                collect_bodies(b, out, d)
            }
        }
        ast::Expr::LetIn(l) => {
            if let Some(b) = l.body() {
                collect_bodies(b, out, d)
            }
        }
        ast::Expr::With(w) => {
            if let Some(b) = w.body() {
                collect_bodies(b, out, d)
            }
        }
        ast::Expr::Assert(a) => {
            if let Some(b) = a.body() {
                collect_bodies(b, out, d)
            }
        }
        ast::Expr::BinOp(b) if b.operator() == Some(ast::BinOpKind::Update) => {
            if let Some(l) = b.lhs() {
                collect_bodies(l, out, d)
            }
            if let Some(r) = b.rhs() {
                collect_bodies(r, out, d)
            }
        }
        ast::Expr::Apply(a) => {
            if let Some((head, args)) = uncurry(&a) {
                match (head_name(&head).as_deref(), args.len()) {
                    (Some("mkIf" | "optionalAttrs"), 2) => collect_bodies(args[1].clone(), out, d),
                    (
                        Some(
                            "mkDefault" | "mkForce" | "mkOverride" | "mkOptionDefault"
                            | "makeOverridable",
                        ),
                        n,
                    ) if n >= 1 => {
                        if let Some(last) = args.last() {
                            collect_bodies(last.clone(), out, d)
                        }
                    }
                    _ => {}
                }
            }
        }
        ast::Expr::AttrSet(s) => out.push(s),
        _ => {}
    }
}

/// The first name of every entry of the sets (`a.b = …` gives `a`; `inherit a b;` gives both).
pub(crate) fn keys(sets: &[ast::AttrSet]) -> Vec<String> {
    let mut out = Vec::new();
    for set in sets {
        for apv in set.attrpath_values() {
            if let Some(n) = apv
                .attrpath()
                .and_then(|p| p.attrs().next())
                .and_then(|a| text::attr_name(&a))
            {
                out.push(n);
            }
        }
        for inh in set.inherits() {
            out.extend(inh.attrs().filter_map(|a| text::attr_name(&a)));
        }
    }
    out
}

/// What one entry of a candidate `containers` set holds.
#[derive(Clone, Debug, PartialEq)]
pub enum SetEntry {
    /// A literal container-shaped value (its legacy keys).
    Literal(Vec<String>),
    /// `import ./x.nix …` of a literal path (whether that file is one container is checked by
    /// the tree reader, which can read it).
    Import(PathBuf),
    /// A set (or a function returning one) whose entries include container-shaped values: a
    /// container factory (`c = args: { web = { … }; db = { … }; }`); the names of those.
    Nested(Vec<String>),
    /// Anything else.
    Other,
}

/// The shape of a file that defines no container at module level.
#[derive(Clone, Debug, PartialEq)]
pub enum Fragment {
    /// The file is the value of one container; `keys` are the legacy options it sets.
    Container { line: usize, keys: Vec<String> },
    /// The file is (or may be) the value of `containers`: named entries and what each holds.
    Set {
        line: usize,
        entries: Vec<(String, usize, SetEntry)>,
    },
}

impl Fragment {
    /// The entries that are container-shaped or imports (the names in warnings).
    pub fn set_names(&self) -> Vec<String> {
        match self {
            Fragment::Set { entries, .. } => entries
                .iter()
                .filter(|(_, _, e)| !matches!(e, SetEntry::Other))
                .map(|(n, _, _)| n.clone())
                .collect(),
            Fragment::Container { .. } => Vec::new(),
        }
    }
}

/// Whether the expression is (through the usual wrappers) one container's value.
pub(crate) fn container_shaped(e: &ast::Expr) -> Option<Vec<String>> {
    let sets = bodies(e);
    if sets.is_empty() {
        return None;
    }
    container_keys(&keys(&sets))
}

/// The names of the container-shaped entries of the sets `e` evaluates to, if any.
pub(crate) fn containers_in(e: &ast::Expr) -> Option<Vec<String>> {
    let mut names = Vec::new();
    for set in bodies(e) {
        for apv in set.attrpath_values() {
            let attrs: Vec<ast::Attr> = apv
                .attrpath()
                .map(|p| p.attrs().collect())
                .unwrap_or_default();
            if let ([a], Some(v)) = (attrs.as_slice(), apv.value())
                && container_shaped(&v).is_some()
            {
                names.push(text::attr_name(a).unwrap_or_else(|| a.syntax().to_string()));
            }
        }
    }
    (!names.is_empty()).then_some(names)
}

/// `import ./x.nix` or `import ./x.nix { … }` of a literal path.
fn import_of(file: &Path, e: &ast::Expr) -> Option<PathBuf> {
    let e = unparen(e.clone());
    let ast::Expr::Apply(a) = &e else {
        return None;
    };
    let (head, args) = uncurry(a)?;
    if head_name(&head).as_deref() != Some("import") {
        return None;
    }
    literal_path(file, &unparen(args.first()?.clone()))
}

/// Classify a file's top expression (a file that defined no container when read as a module).
pub(crate) fn classify(
    file: &Path,
    root: &ast::Expr,
    line_of: &dyn Fn(&rnix::SyntaxNode) -> usize,
) -> Option<Fragment> {
    let sets = bodies(root);
    let first = sets.first()?;
    let line = line_of(first.syntax());
    if let Some(keys) = container_keys(&keys(&sets)) {
        return Some(Fragment::Container { line, keys });
    }
    let mut entries = Vec::new();
    for set in &sets {
        for apv in set.attrpath_values() {
            let attrs: Vec<ast::Attr> = apv
                .attrpath()
                .map(|p| p.attrs().collect())
                .unwrap_or_default();
            let Some(value) = apv.value() else { continue };
            let name = attrs.first().and_then(text::attr_name);
            let entry_line = line_of(apv.syntax());
            let (Some(name), 1) = (name, attrs.len()) else {
                entries.push((
                    apv.attrpath()
                        .map(|p| p.syntax().to_string())
                        .unwrap_or_default(),
                    entry_line,
                    SetEntry::Other,
                ));
                continue;
            };
            let kind = if let Some(k) = container_shaped(&value) {
                SetEntry::Literal(k)
            } else if let Some(p) = import_of(file, &value) {
                SetEntry::Import(p)
            } else if let Some(names) = containers_in(&value) {
                SetEntry::Nested(names)
            } else {
                SetEntry::Other
            };
            entries.push((name, entry_line, kind));
        }
        for inh in set.inherits() {
            for a in inh.attrs() {
                entries.push((
                    text::attr_name(&a).unwrap_or_else(|| a.syntax().to_string()),
                    line_of(inh.syntax()),
                    SetEntry::Other,
                ));
            }
        }
    }
    let literal = entries
        .iter()
        .any(|(_, _, e)| matches!(e, SetEntry::Literal(_) | SetEntry::Nested(_)));
    let all_imports = !entries.is_empty()
        && entries
            .iter()
            .all(|(_, _, e)| matches!(e, SetEntry::Import(_)));
    // A set of imports alone looks like a module of sub-modules as much as like containers;
    // only paths that say "container" are taken as a hint (the tree reader checks the files).
    let named_containers = entries.iter().any(|(_, _, e)| {
        matches!(e, SetEntry::Import(p)
            if p.to_string_lossy().to_ascii_lowercase().contains("container"))
    });
    (literal || (all_imports && named_containers)).then_some(Fragment::Set { line, entries })
}

/// Whether the file at `path` is one container's value: `None` when it cannot be read or
/// parsed.
pub(crate) fn file_is_container(fs: &dyn super::SourceFs, path: &Path) -> Option<bool> {
    let path = if fs.is_dir(path) {
        path.join("default.nix")
    } else {
        path.to_path_buf()
    };
    if !fs.is_file(&path) {
        return None;
    }
    let text = fs.read_to_string(&path).ok()?;
    crate::nixtext::check_nesting(&text).ok()?;
    let parse = rnix::Root::parse(&text);
    if !parse.errors().is_empty() {
        return None;
    }
    let root = parse.tree().expr()?;
    Some(container_shaped(&root).is_some())
}

/// The command to name for a fragment: evaluating the fragment as a host configuration makes
/// no sense, so a classic `--config` names the host's default configuration instead.
fn fragment_eval(file: &Path, eval: &super::EvalCommand) -> super::EvalCommand {
    match eval {
        super::EvalCommand::Nixos {
            configuration: Some(p),
        } if p == file => super::EvalCommand::Nixos {
            configuration: None,
        },
        other => other.clone(),
    }
}

fn listed(names: &[String], max: usize) -> String {
    let mut shown: Vec<String> = names.iter().take(max).cloned().collect();
    if names.len() > max {
        shown.push("…".to_string());
    }
    shown.join(", ")
}

/// The warning for a file that is a piece of a host configuration.
pub(crate) fn fragment_warning(
    file: &Path,
    fragment: &Fragment,
    eval: &super::EvalCommand,
) -> crate::warnings::Warning {
    use crate::warnings::Warning;
    let advice = fragment_eval(file, eval).advice();
    let f = file.display();
    match fragment {
        Fragment::Container { line, keys } => Warning::new(
            &super::NIX_CONTAINER_FRAGMENT,
            f.to_string(),
            format!(
                "{f}:{line}: this file defines no `containers.<name>`; it looks like the \
                 definition of ONE container (it sets {}), used by another file, typically as \
                 `containers.<name> = import {f} …;` (perhaps merged with `//`). Its container \
                 was not read (its name is in that other file). Pass the host configuration that imports it with \
                 --config, or evaluate the host's containers. {advice}",
                listed(keys, 6)
            ),
        )
        .at(file.to_path_buf(), Some(*line)),
        Fragment::Set { line, entries } => {
            let mut names = Vec::new();
            for (n, _, e) in entries {
                match e {
                    SetEntry::Literal(_) | SetEntry::Import(_) => names.push(n.clone()),
                    SetEntry::Nested(inner) => {
                        names.extend(inner.iter().map(|i| format!("{n}.{i}")))
                    }
                    SetEntry::Other => {}
                }
            }
            Warning::new(
                &super::NIX_CONTAINERS_SET_FRAGMENT,
                f.to_string(),
                format!(
                    "{f}:{line}: this file defines no `containers.<name>`; it looks like a set \
                     of container definitions ({}), used by the file that says \
                     `containers = import {f} …;` (or builds containers from it). Its \
                     containers were not read. Pass the host configuration that imports it \
                     with --config, or evaluate the host's containers. {advice}",
                    listed(&names, 8)
                ),
            )
            .at(file.to_path_buf(), Some(*line))
        }
    }
}

/// Whether a literal value could be one container's definition: a set using legacy options
/// (or an empty one: all defaults); a value computed by Nix code may be one too. Literal
/// strings, numbers, lists and sets of other keys are not.
fn may_be_container(e: &ast::Expr) -> bool {
    match unparen(e.clone()) {
        ast::Expr::AttrSet(_) | ast::Expr::BinOp(_) | ast::Expr::LetIn(_) | ast::Expr::With(_) => {
            let sets = bodies(e);
            if sets.is_empty() {
                return true;
            }
            let ks = keys(&sets);
            ks.is_empty()
                || ks
                    .iter()
                    .any(|k| CONTAINER_KEYS.iter().any(|(n, _)| n == k))
        }
        ast::Expr::Str(_)
        | ast::Expr::Literal(_)
        | ast::Expr::List(_)
        | ast::Expr::PathAbs(_)
        | ast::Expr::PathRel(_)
        | ast::Expr::PathHome(_)
        | ast::Expr::PathSearch(_)
        | ast::Expr::Lambda(_) => false,
        ast::Expr::Ident(i) => !matches!(
            i.syntax().text().to_string().as_str(),
            "true" | "false" | "null"
        ),
        _ => true,
    }
}

/// Whether `containers.<rest> = value` (found outside the module walk) may define legacy
/// containers, so that the sweep must read or report it: `containers.enable = true;` or
/// `containers.dev = { image = …; }` (another tool's option of that name) are not.
pub(crate) fn may_define_containers(rest: &[Option<String>], value: &ast::Expr) -> bool {
    match rest {
        // `containers = …`: a literal set whose entries may be containers, or computed.
        [] => match unparen(value.clone()) {
            ast::Expr::Str(_)
            | ast::Expr::Literal(_)
            | ast::Expr::List(_)
            | ast::Expr::Lambda(_) => false,
            ast::Expr::Ident(i)
                if matches!(
                    i.syntax().text().to_string().as_str(),
                    "true" | "false" | "null"
                ) =>
            {
                false
            }
            _ => {
                let sets = bodies(value);
                if sets.is_empty() || !matches!(unparen(value.clone()), ast::Expr::AttrSet(_)) {
                    return true;
                }
                sets.iter().any(|s| {
                    s.inherits().next().is_some()
                        || s.attrpath_values().any(|apv| {
                            let attrs: Vec<ast::Attr> = apv
                                .attrpath()
                                .map(|p| p.attrs().collect())
                                .unwrap_or_default();
                            let rest: Vec<Option<String>> =
                                attrs.iter().skip(1).map(text::attr_name).collect();
                            match (rest.as_slice(), apv.value()) {
                                ([], Some(v)) => may_be_container(&v),
                                ([Some(opt), ..], _) => {
                                    CONTAINER_KEYS.iter().any(|(n, _)| n == opt)
                                }
                                _ => true,
                            }
                        })
                })
            }
        },
        // `containers.<name> = …`
        [_] => may_be_container(value),
        // `containers.<name>.<option>… = …`
        [_, Some(opt), ..] => CONTAINER_KEYS.iter().any(|(n, _)| n == opt),
        [_, None, ..] => true,
    }
}
