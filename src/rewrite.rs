//! `migrate --rewrite`: replace each legacy `containers.NAME` definition in the host's own Nix
//! files by its new definition (`nixos.containers.instances.NAME = …;` and the bindings that go
//! with it), in the same scope, leaving every other byte of the file as it was.
//!
//! Where the definitions are comes from the Nix source reader
//! ([`crate::legacy::nix_source::DefinitionSite`]); this module only decides, per container,
//! whether its bindings can be replaced faithfully, and refuses with a reason otherwise (the
//! container then goes to the separate output file as without `--rewrite`). A file is only ever
//! rewritten as a whole: the result must parse, or nothing of it is changed.
//!
//! In place, the copied code keeps its scope: `let` bindings and the host's `config` are
//! referenced as they were, so the expressions are emitted verbatim (no carried bindings, no
//! module arguments).

use crate::host::HostRoot;
use crate::legacy::nix_source::DefinitionSite;
use crate::legacy::{Kind, LegacyHost};
use crate::translate::Instance;
use rnix::SyntaxKind as K;
use rnix::SyntaxNode;
use rnix::ast::HasEntry;
use rowan::ast::AstNode;
use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::path::{Path, PathBuf};

/// One file and what it becomes.
#[derive(Clone, Debug, PartialEq)]
pub struct FileEdit {
    /// Host path of the file.
    pub file: PathBuf,
    pub original: String,
    pub rewritten: String,
    /// Byte ranges of `original` that were replaced or removed (everything else is kept),
    /// sorted, with what replaces each.
    pub replaced: Vec<(Range<usize>, String)>,
    /// The containers whose definitions this file now holds in the new form.
    pub containers: Vec<String>,
    /// The same edits, grouped by container: enough to compute the file with any subset of
    /// the containers rewritten ([`compose`]), which is how `--rollback` of one container
    /// gives back its old definition and keeps the others' new ones.
    pub units: Vec<Unit>,
}

/// The edits of one container, or of the members of one `containers = { … };` set.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case", tag = "shape")]
pub enum Unit {
    /// `containers.NAME… = …;` bindings: the first replaced by the new definition, the others
    /// removed. Independent of every other container.
    Own {
        container: String,
        edits: Vec<(Range<usize>, String)>,
    },
    /// Members of the `containers = { … };` binding at `owner` (byte range of the original).
    /// With every member rewritten and nothing else in the set (`whole`), the binding is
    /// replaced by the new definitions; otherwise the rewritten members are removed from the
    /// set and their new definitions follow the binding, in the same scope.
    Set {
        owner: Range<usize>,
        indent: String,
        whole: bool,
        members: Vec<Member>,
    },
}

/// One member of a [`Unit::Set`].
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Member {
    pub container: String,
    /// What goes when it is rewritten: its member bindings (widened to whole lines when alone).
    pub removals: Vec<Range<usize>>,
    /// Its new definition, indented for the position of the set's binding.
    pub new: String,
}

impl Unit {
    pub fn containers(&self) -> Vec<String> {
        match self {
            Unit::Own { container, .. } => vec![container.clone()],
            Unit::Set { members, .. } => members.iter().map(|m| m.container.clone()).collect(),
        }
    }
}

/// The edits (ranges of the original, sorted) that rewrite exactly the containers for which
/// `applied` holds, from the units of one file.
pub fn edits_for(units: &[Unit], applied: &dyn Fn(&str) -> bool) -> Vec<(Range<usize>, String)> {
    let mut edits = Vec::new();
    for u in units {
        match u {
            Unit::Own {
                container,
                edits: e,
            } => {
                if applied(container) {
                    edits.extend(e.iter().cloned());
                }
            }
            Unit::Set {
                owner,
                indent,
                whole,
                members,
            } => {
                let on: Vec<&Member> = members.iter().filter(|m| applied(&m.container)).collect();
                if on.is_empty() {
                    continue;
                }
                if *whole && on.len() == members.len() {
                    let news: Vec<&str> = on.iter().map(|m| m.new.as_str()).collect();
                    edits.push((owner.clone(), news.join(&format!("\n{indent}"))));
                    continue;
                }
                for m in &on {
                    edits.extend(m.removals.iter().map(|r| (r.clone(), String::new())));
                }
                let mut after = String::new();
                for m in &on {
                    after.push_str(&format!("\n{indent}{}", m.new));
                }
                edits.push((owner.end..owner.end, after));
            }
        }
    }
    // Stable: insertions at one place keep the order of the units.
    edits.sort_by_key(|(r, _)| (r.start, r.end));
    edits
}

/// `original` with `edits` (sorted, from [`edits_for`]) applied; `None` when two overlap
/// (a bug of this module) or one lies outside the text (the units belong to another text).
pub fn apply_edits(original: &str, edits: &[(Range<usize>, String)]) -> Option<String> {
    let mut out = String::with_capacity(original.len());
    let mut pos = 0;
    for (r, new) in edits {
        if r.start < pos || r.end < r.start {
            return None;
        }
        out.push_str(original.get(pos..r.start)?);
        out.push_str(new);
        pos = r.end;
    }
    out.push_str(original.get(pos..)?);
    Some(out)
}

/// The file as it is with exactly the containers for which `applied` holds rewritten.
pub fn compose(original: &str, units: &[Unit], applied: &dyn Fn(&str) -> bool) -> Option<String> {
    apply_edits(original, &edits_for(units, applied))
}

/// A container whose definition is not rewritten, and why.
#[derive(Clone, Debug, PartialEq)]
pub struct Refusal {
    pub container: String,
    pub reason: String,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct RewritePlan {
    pub edits: Vec<FileEdit>,
    pub refused: Vec<Refusal>,
    /// Containers with no legacy definition left in the source that are already defined in the
    /// new form (`nixos.containers.instances.NAME`, e.g. by an earlier `--rewrite`), with where:
    /// they stay out of the separate output file, which would define them a second time.
    pub in_place: Vec<(String, PathBuf, usize)>,
}

impl RewritePlan {
    /// The containers rewritten in place (they leave the separate output file).
    pub fn rewritten(&self) -> Vec<String> {
        self.edits
            .iter()
            .flat_map(|e| e.containers.iter().cloned())
            .chain(self.in_place.iter().map(|(n, _, _)| n.clone()))
            .collect()
    }

    /// Unified diffs of every edited file, then one line per refused container.
    pub fn describe(&self) -> String {
        let mut out = String::new();
        for e in &self.edits {
            let name = e.file.display().to_string();
            out.push_str(&edit_diff(&name, &e.original, &e.replaced));
        }
        if self.edits.is_empty() {
            out.push_str("--rewrite: nothing to rewrite in place\n");
        } else {
            out.push_str(
                "--rewrite: the rewritten definitions use nixos.containers.*: the host must also \
                 import the nixos-nspawn module (nixos/README.md: `imports = [ \
                 /path/to/nixos-nspawn/nixos ];`, or the flake's nixosModules.default)\n",
            );
        }
        for (name, file, line) in &self.in_place {
            out.push_str(&format!(
                "--rewrite: container {name} is already defined in the new form at {}:{line} \
                 (nixos.containers.instances.{}); it is left out of the output file\n",
                file.display(),
                crate::nixtext::attr_name(name)
            ));
        }
        for r in &self.refused {
            out.push_str(&format!(
                "--rewrite: container {} is not rewritten in place: {}; its new definition goes \
                 to the separate output file instead\n",
                r.container, r.reason
            ));
        }
        out
    }
}

/// Plan the rewrite of every declarative instance the reader found a definition of. `read`
/// gives a file's text (host paths); `confined`: whether the files read are inside `--root`
/// (a `--config` outside it is never written).
pub fn plan(
    legacy: &LegacyHost,
    instances: &[Instance],
    confined: bool,
    read: &dyn Fn(&Path) -> std::io::Result<String>,
) -> RewritePlan {
    let mut out = RewritePlan::default();
    let new_form = new_form_definitions(&legacy.files_read, read);
    let mut by_file: BTreeMap<PathBuf, Vec<(Instance, Vec<&DefinitionSite>)>> = BTreeMap::new();
    for i in instances {
        let sites: Vec<&DefinitionSite> = legacy
            .nix_sites
            .iter()
            .filter(|s| s.container == i.name)
            .collect();
        if sites.is_empty() {
            // Nothing in the source to replace (already rewritten, or only on disk).
            if i.kind == Kind::Declarative
                && let Some((f, l)) = new_form.get(&i.name)
            {
                out.in_place.push((i.name.clone(), f.clone(), *l));
            }
            continue;
        }
        let refuse = |reason: String| Refusal {
            container: i.name.clone(),
            reason,
        };
        if i.kind != Kind::Declarative {
            out.refused
                .push(refuse("it is not a declarative container".into()));
            continue;
        }
        if let Some(why) = crate::plan::blocked(i) {
            out.refused.push(refuse(format!("it is blocked: {why}")));
            continue;
        }
        if !confined {
            out.refused.push(refuse(format!(
                "{} is outside --root, and only files of the host tree are rewritten",
                sites[0].file.display()
            )));
            continue;
        }
        if let Some(s) = sites.iter().find(|s| !s.in_module) {
            out.refused.push(refuse(format!(
                "it is defined at {}:{} in a file that is imported as the value of `containers` \
                 (or of one container), not as a module; move the definition into the module \
                 that imports it, or rewrite that import by hand",
                s.file.display(),
                s.line
            )));
            continue;
        }
        let files: BTreeSet<&PathBuf> = sites.iter().map(|s| &s.file).collect();
        if files.len() > 1 {
            let at: Vec<String> = sites
                .iter()
                .map(|s| format!("{}:{}", s.file.display(), s.line))
                .collect();
            out.refused.push(refuse(format!(
                "its definition is spread over several files ({}); bring it together in one \
                 file, or move it by hand",
                at.join(", ")
            )));
            continue;
        }
        // Translated again for the file it goes into: relative paths in the copied code stay
        // relative to that file, as they were.
        let Some(c) = legacy.containers.iter().find(|c| c.name == i.name) else {
            continue;
        };
        let ctx = crate::translate::Context {
            output_file: sites[0].file.clone(),
        };
        let placed = crate::translate::translate(c, &ctx);
        if !placed.guest_files.is_empty() {
            // Those rewritten copies are written next to --output by the plan, not here.
            let files: Vec<String> = placed
                .guest_files
                .keys()
                .map(|p| p.display().to_string())
                .collect();
            out.refused.push(refuse(format!(
                "its guest configuration imports files that need rewriting for the new \
                 container ({}); those rewritten copies come with the separate output file",
                files.join(", ")
            )));
            continue;
        }
        by_file
            .entry(sites[0].file.clone())
            .or_default()
            .push((placed, sites));
    }
    for (file, items) in by_file {
        let text = match read(&file) {
            Ok(t) => t,
            Err(e) => {
                for (i, _) in items {
                    out.refused.push(Refusal {
                        container: i.name.clone(),
                        reason: format!("cannot read {}: {e}", file.display()),
                    });
                }
                continue;
            }
        };
        // Every option the reader read must come from a binding that is replaced, or the
        // result would still define (part of) the legacy container.
        let end_line = |s: &DefinitionSite| {
            s.line
                + text
                    .get(s.start..s.end)
                    .map_or(0, |t| t.matches('\n').count())
        };
        let mut keep = Vec::new();
        for (i, sites) in &items {
            let lines = legacy
                .nix_option_lines
                .get(&i.name)
                .cloned()
                .unwrap_or_default();
            match lines.iter().find(|(f, l)| {
                !sites
                    .iter()
                    .any(|s| &s.file == f && s.line <= *l && *l <= end_line(s))
            }) {
                Some((f, l)) => out.refused.push(Refusal {
                    container: i.name.clone(),
                    reason: format!(
                        "an option of it is defined at {}:{l}, outside the bindings that would \
                         be replaced (in another file, a `let` binding, …); rewrite it by hand",
                        f.display()
                    ),
                }),
                None => keep.push((i, sites)),
            }
        }
        let (edit, refused) = plan_file(&file, &text, &keep);
        out.refused.extend(refused);
        if let Some(e) = edit {
            out.edits.push(e);
        }
    }
    out
}

/// Where the Nix files read define `nixos.containers.instances.NAME` (dotted, or as a member
/// of `nixos.containers.instances = { … };`): container name → file and line of the first.
fn new_form_definitions(
    files: &[PathBuf],
    read: &dyn Fn(&Path) -> std::io::Result<String>,
) -> BTreeMap<String, (PathBuf, usize)> {
    const NEW: [&str; 3] = ["nixos", "containers", "instances"];
    let mut out = BTreeMap::new();
    for f in files
        .iter()
        .filter(|f| f.extension().is_some_and(|e| e == "nix"))
    {
        let Ok(text) = read(f) else { continue };
        let parsed = rnix::Root::parse(&text);
        let line = |off: usize| text[..off.min(text.len())].matches('\n').count() + 1;
        for apv in parsed
            .syntax()
            .descendants()
            .filter(|n| n.kind() == K::NODE_ATTRPATH_VALUE)
        {
            let texts = path_texts(&apv);
            let Some(k) = texts.windows(3).position(|w| w == NEW) else {
                continue;
            };
            let mut found: Vec<(String, usize)> = Vec::new();
            if let Some(name) = texts.get(k + 3) {
                found.push((name.clone(), usize::from(apv.text_range().start())));
            } else if let Some(set) = rnix::ast::AttrpathValue::cast(apv.clone())
                .and_then(|a| a.value())
                .and_then(|v| rnix::ast::AttrSet::cast(v.syntax().clone()))
            {
                for m in set.attrpath_values() {
                    if let Some(n) = path_texts(m.syntax()).first() {
                        found.push((n.clone(), usize::from(m.syntax().text_range().start())));
                    }
                }
            }
            for (name, off) in found {
                out.entry(name).or_insert_with(|| (f.clone(), line(off)));
            }
        }
    }
    out
}

/// What one site is.
enum Shape {
    /// `PREFIX.containers.NAME… = …;` directly in a set of bindings (`parent`).
    Binding { prefix: String, parent: SyntaxNode },
    /// The member `NAME… = …;` of `PREFIX.containers = { … };` (`owner` is that binding).
    Member { owner: SyntaxNode, prefix: String },
}

fn attr_text(a: &rnix::ast::Attr) -> Option<String> {
    match a {
        rnix::ast::Attr::Ident(i) => Some(i.syntax().text().to_string()),
        rnix::ast::Attr::Str(s) => {
            let mut out = String::new();
            for p in s.normalized_parts() {
                match p {
                    rnix::ast::InterpolPart::Literal(l) => out.push_str(&l),
                    rnix::ast::InterpolPart::Interpolation(_) => return None,
                }
            }
            Some(out)
        }
        rnix::ast::Attr::Dynamic(_) => None,
    }
}

fn attrs_of(apv: &SyntaxNode) -> Vec<rnix::ast::Attr> {
    rnix::ast::AttrpathValue::cast(apv.clone())
        .and_then(|a| a.attrpath())
        .map(|p| p.attrs().collect())
        .unwrap_or_default()
}

fn path_texts(apv: &SyntaxNode) -> Vec<String> {
    attrs_of(apv)
        .iter()
        .map(|a| attr_text(a).unwrap_or_else(|| a.syntax().text().to_string()))
        .collect()
}

/// `Ok(shape)` or the reason the site cannot be rewritten.
fn shape_of(apv: &SyntaxNode, name: &str) -> Result<Shape, String> {
    let attrs = attrs_of(apv);
    let texts: Vec<Option<String>> = attrs.iter().map(attr_text).collect();
    for k in 0..attrs.len().saturating_sub(1) {
        if texts[k].as_deref() == Some("containers") && texts[k + 1].as_deref() == Some(name) {
            let parent = apv
                .parent()
                .filter(|p| p.kind() == K::NODE_ATTR_SET)
                .ok_or("the binding is not in an attribute set")?;
            if rnix::ast::AttrSet::cast(parent.clone()).is_some_and(|s| s.rec_token().is_some()) {
                // New names (`nixos`, `systemd`) in a `rec` set would be seen by its members.
                return Err(
                    "the binding is in a `rec` set, where new names would be seen by \
                            the other bindings"
                        .into(),
                );
            }
            let prefix: Vec<String> = attrs[..k]
                .iter()
                .map(|a| a.syntax().text().to_string())
                .collect();
            return Ok(Shape::Binding {
                prefix: prefix.join("."),
                parent,
            });
        }
    }
    if texts.first().and_then(|t| t.as_deref()) != Some(name) {
        return Err("the binding's attribute path does not name the container".into());
    }
    let set = apv
        .parent()
        .filter(|p| p.kind() == K::NODE_ATTR_SET)
        .ok_or("the container is not a member of an attribute set")?;
    let direct = "the set of containers it is in is not written directly as `containers = { … };` \
                  (it comes through `let`, `mkMerge`, `//`, an import, …)";
    if rnix::ast::AttrSet::cast(set.clone()).is_some_and(|s| s.rec_token().is_some()) {
        return Err("the set of containers is `rec`, so its members can see each other".into());
    }
    // Up from the set through parentheses and `mkIf c`/`optionalAttrs c` to the binding.
    let mut node = set;
    loop {
        let parent = node.parent().ok_or(direct)?;
        match parent.kind() {
            K::NODE_PAREN => node = parent,
            K::NODE_APPLY => {
                let apply = rnix::ast::Apply::cast(parent.clone()).ok_or(direct)?;
                let is_arg = apply.argument().is_some_and(|a| a.syntax() == &node);
                let head = apply.lambda().map(|l| l.syntax().text().to_string());
                let cond_fn = head.as_deref().is_some_and(|h| {
                    let h = h.trim();
                    h.ends_with("mkIf") || h.ends_with("optionalAttrs")
                }) && head
                    .as_deref()
                    .is_some_and(|h| h.split_whitespace().count() >= 2);
                if !is_arg || !cond_fn {
                    return Err(direct.into());
                }
                node = parent;
            }
            K::NODE_ATTRPATH_VALUE => {
                let texts = path_texts(&parent);
                if texts.last().map(String::as_str) != Some("containers") {
                    return Err(direct.into());
                }
                let outer = parent
                    .parent()
                    .and_then(rnix::ast::AttrSet::cast)
                    .ok_or("the `containers` binding is not in an attribute set")?;
                if outer.rec_token().is_some() {
                    return Err(
                        "the `containers` binding is in a `rec` set, where new names \
                                would be seen by the other bindings"
                            .into(),
                    );
                }
                let attrs = attrs_of(&parent);
                let prefix: Vec<String> = attrs[..attrs.len() - 1]
                    .iter()
                    .map(|a| a.syntax().text().to_string())
                    .collect();
                return Ok(Shape::Member {
                    owner: parent,
                    prefix: prefix.join("."),
                });
            }
            _ => return Err(direct.into()),
        }
    }
}

/// Whether `name` is bound around `node` by a function argument or a `let` (what the new
/// bindings need for `lib.mkIf`, `lib.mkDefault`, …).
fn bound_around(node: &SyntaxNode, name: &str) -> bool {
    for anc in node.ancestors() {
        if let Some(l) = rnix::ast::Lambda::cast(anc.clone()) {
            let binds = match l.param() {
                Some(rnix::ast::Param::IdentParam(i)) => i.syntax().text() == name,
                Some(rnix::ast::Param::Pattern(p)) => {
                    p.pat_entries()
                        .any(|e| e.ident().is_some_and(|i| i.syntax().text() == name))
                        || p.pat_bind()
                            .and_then(|b| b.ident())
                            .is_some_and(|i| i.syntax().text() == name)
                }
                None => false,
            };
            if binds {
                return true;
            }
        }
        if let Some(l) = rnix::ast::LetIn::cast(anc.clone())
            && l.attrpath_values().any(|apv| {
                let t = path_texts(apv.syntax());
                t.len() == 1 && t[0] == name
            })
        {
            return true;
        }
    }
    false
}

/// Warnings that do not hold in place: the copied code keeps its scope, so names bound in the
/// host file stay bound.
const NOT_IN_PLACE: &[&str] = &["free-variable", "module-argument"];

/// The instance as it is written in place: expressions verbatim in their own scope, and the
/// condition only where it is part of the replaced text (`cond`, from [`inner_conditions`]).
fn in_scope(i: &Instance, cond: &[String]) -> Instance {
    let mut i = i.clone();
    i.warnings.retain(|w| !NOT_IN_PLACE.contains(&w.code));
    // The reader carries the host file's `let` bindings (and notes module arguments) for a
    // copy that lands in another file; in place, the names are bound where they were.
    for e in [
        &mut i.spec.system_config,
        &mut i.spec.nixpkgs,
        &mut i.spec.special_args,
        &mut i.spec.condition,
    ]
    .into_iter()
    .flatten()
    {
        e.lets.clear();
        e.module_args.clear();
    }
    i.spec.condition = match (i.spec.condition.take(), cond) {
        (_, []) => None,
        (Some(mut c), [one]) => {
            c.text = one.clone();
            Some(c)
        }
        (Some(mut c), more) => {
            let parts: Vec<String> = more.iter().map(|t| format!("({t})")).collect();
            c.text = parts.join(" && ");
            Some(c)
        }
        (None, _) => None,
    };
    i
}

/// The conditions (`lib.mkIf c …`, `optionalAttrs c …`) wrapped around `value`, outermost
/// first.
fn peel_conditions(mut value: Option<rnix::ast::Expr>, out: &mut Vec<String>) {
    while let Some(v) = value {
        match v {
            rnix::ast::Expr::Paren(p) => value = p.expr(),
            rnix::ast::Expr::Apply(a) => {
                let Some(rnix::ast::Expr::Apply(inner)) = a.lambda() else {
                    return;
                };
                let head = inner.lambda().map(|l| l.syntax().text().to_string());
                let is_cond = head.as_deref().is_some_and(|h| {
                    matches!(
                        h,
                        "mkIf" | "lib.mkIf" | "optionalAttrs" | "lib.optionalAttrs"
                    )
                });
                if !is_cond {
                    return;
                }
                if let Some(c) = inner.argument() {
                    out.push(c.syntax().text().to_string());
                }
                value = a.argument();
            }
            _ => return,
        }
    }
}

/// The conditions inside the replaced text of a site: around the container's value
/// (`containers.x = mkIf c { … }`) and, for a member, around the set (`containers = mkIf c
/// { x = …; }`). Conditions outside (`config = mkIf cfg.enable { … }`) stay where they are.
fn inner_conditions(site: &SyntaxNode, owner: Option<&SyntaxNode>, name: &str) -> Vec<String> {
    let mut out = Vec::new();
    let value_of =
        |n: &SyntaxNode| rnix::ast::AttrpathValue::cast(n.clone()).and_then(|a| a.value());
    if let Some(o) = owner {
        peel_conditions(value_of(o), &mut out);
    }
    // Only a binding of the whole container carries the container's condition.
    let texts = path_texts(site);
    if texts.last().map(String::as_str) == Some(name) {
        peel_conditions(value_of(site), &mut out);
    }
    out
}

/// The bindings of `i`, formatted, each prefixed with `prefix.` (when not empty), indented for
/// a binding that starts after `indent`. `None` when the renderer's output does not parse
/// (a bug; the container is then refused).
fn new_bindings(is: &[Instance], prefix: &str, indent: &str) -> Option<String> {
    let mut raw = String::new();
    for i in is {
        raw.push_str(&crate::render::nix::bindings(i));
    }
    let wrapped = format!("{{\n{raw}}}\n");
    let formatted = crate::nixtext::format(&wrapped).ok()?;
    let root = rnix::Root::parse(&formatted);
    if !root.errors().is_empty() {
        return None;
    }
    let set = root.tree().expr()?;
    let set = rnix::ast::AttrSet::cast(set.syntax().clone())?;
    // Insert the prefix at the start of every top-level binding.
    let mut text = formatted.clone();
    if !prefix.is_empty() {
        let mut starts: Vec<usize> = set
            .attrpath_values()
            .map(|a| usize::from(a.syntax().text_range().start()))
            .collect();
        starts.sort_unstable();
        for s in starts.into_iter().rev() {
            text.insert_str(s, &format!("{prefix}."));
        }
    }
    // Body of the set: between the first `{` line and the closing `}` line, dedented by the
    // formatter's two spaces.
    let lines: Vec<&str> = text.lines().collect();
    if lines.len() < 2 {
        return None;
    }
    let body = &lines[1..lines.len() - 1];
    let multiline_plain_string = root
        .syntax()
        .descendants_with_tokens()
        .filter_map(|e| e.into_token())
        .any(|t| {
            t.kind() == K::TOKEN_STRING_CONTENT
                && t.text().contains('\n')
                && t.parent()
                    .is_some_and(|p| p.text().to_string().starts_with('"'))
        });
    let mut out = String::new();
    for (n, l) in body.iter().enumerate() {
        let l = l.strip_prefix("  ").unwrap_or(l);
        if n > 0 {
            out.push('\n');
            // Lines inside a multi-line "…" string are content: never re-indented.
            if !l.is_empty() && !multiline_plain_string {
                out.push_str(indent);
            }
        }
        out.push_str(l);
    }
    Some(out)
}

/// The leading whitespace of the line `offset` is on.
fn indent_at(text: &str, offset: usize) -> &str {
    let start = text[..offset].rfind('\n').map(|p| p + 1).unwrap_or(0);
    let line = &text[start..];
    let n = line.len() - line.trim_start_matches([' ', '\t']).len();
    &line[..n]
}

/// `range` widened to whole lines when the binding is alone on its lines (so that removing it
/// leaves no blank line behind).
fn removal_range(text: &str, r: Range<usize>) -> Range<usize> {
    let line_start = text[..r.start].rfind('\n').map(|p| p + 1).unwrap_or(0);
    let before_blank = text[line_start..r.start].trim().is_empty();
    let line_end = text[r.end..]
        .find('\n')
        .map(|p| r.end + p + 1)
        .unwrap_or(text.len());
    let after_blank = text[r.end..line_end].trim().is_empty();
    if before_blank && after_blank {
        line_start..line_end
    } else {
        r
    }
}

/// Paths (attribute names) of the bindings a rendered text defines at its top level.
fn top_paths(rendered: &str) -> Vec<Vec<String>> {
    let root = rnix::Root::parse(&format!("{{\n{rendered}\n}}"));
    let Some(set) = root
        .tree()
        .expr()
        .and_then(|e| rnix::ast::AttrSet::cast(e.syntax().clone()))
    else {
        return Vec::new();
    };
    set.attrpath_values()
        .map(|a| path_texts(a.syntax()))
        .collect()
}

/// Why the new bindings cannot go into `parent` (which keeps the entries not in `removed`).
/// Nix merges `a.b = …;` into a literal `a = { … };` beside it, but refuses it beside any
/// other value of `a` (`a = x;`, `a = lib.mkIf …;`) and refuses the same name twice.
fn collision(parent: &SyntaxNode, removed: &[Range<usize>], new: &[Vec<String>]) -> Option<String> {
    new.iter().find_map(|p| clash(parent, removed, p, p))
}

/// [`collision`] for one new path `p` (the rest of `full` that falls into `set`).
fn clash(
    set: &SyntaxNode,
    removed: &[Range<usize>],
    p: &[String],
    full: &[String],
) -> Option<String> {
    for child in set.children() {
        let r = child.text_range();
        let r = usize::from(r.start())..usize::from(r.end());
        if removed.iter().any(|x| x.start <= r.start && r.end <= x.end) {
            continue;
        }
        if child.kind() == K::NODE_INHERIT {
            let inh = rnix::ast::Inherit::cast(child.clone())?;
            if let Some(n) = inh
                .attrs()
                .filter_map(|a| attr_text(&a))
                .find(|n| p.first() == Some(n))
            {
                return Some(format!("an `inherit` there already defines `{n}`"));
            }
            continue;
        }
        if child.kind() != K::NODE_ATTRPATH_VALUE {
            continue;
        }
        let existing = path_texts(&child);
        let k = existing.len().min(p.len());
        if existing[..k] != p[..k] {
            continue;
        }
        if existing.len() < p.len() {
            // `systemd.services = { … };` takes `systemd.services.x = …;` when it is a plain
            // literal set: look inside it.
            let inner = rnix::ast::AttrpathValue::cast(child.clone())
                .and_then(|a| a.value())
                .and_then(|v| rnix::ast::AttrSet::cast(v.syntax().clone()))
                .filter(|s| s.rec_token().is_none());
            if let Some(inner) = inner {
                match clash(inner.syntax(), removed, &p[existing.len()..], full) {
                    Some(w) => return Some(w),
                    None => continue,
                }
            }
        }
        return Some(format!(
            "the same set already defines `{}` (not as a plain `{{ … }}`), which the new `{}` \
             would clash with; write that binding as `{}.… = …;` (dotted) or as a plain set, \
             and run again",
            existing.join("."),
            full.join("."),
            existing.join(".")
        ));
    }
    None
}

/// Members of one `containers = { … };` binding: (the binding, its path prefix, per container
/// its member bindings).
type MemberGroup<'a> = (SyntaxNode, String, Vec<(&'a Instance, Vec<SyntaxNode>)>);

/// Edits of `edits` that touch neighbouring lines: (first line, last line, edits).
type LineGroup<'a> = (usize, usize, Vec<&'a (Range<usize>, String)>);

/// Plan one file: the edit (when anything could be rewritten) and the refusals.
fn plan_file(
    file: &Path,
    text: &str,
    items: &[(&Instance, &Vec<&DefinitionSite>)],
) -> (Option<FileEdit>, Vec<Refusal>) {
    let mut refused = Vec::new();
    let parsed = rnix::Root::parse(text);
    if !parsed.errors().is_empty() {
        for (i, _) in items {
            refused.push(Refusal {
                container: i.name.clone(),
                reason: format!("{} does not parse", file.display()),
            });
        }
        return (None, refused);
    }
    let root = parsed.syntax();
    let mut units: Vec<Unit> = Vec::new();
    let mut done: Vec<String> = Vec::new();
    // Members of sets of containers, per owning binding: (instance, member nodes).
    let mut members: BTreeMap<usize, MemberGroup> = BTreeMap::new();
    for (i, sites) in items {
        let refuse = |reason: String| Refusal {
            container: i.name.clone(),
            reason,
        };
        let mut nodes = Vec::new();
        for s in sites.iter() {
            let range = rowan::TextRange::new(
                rowan::TextSize::from(s.start as u32),
                rowan::TextSize::from(s.end as u32),
            );
            let node = match root.covering_element(range) {
                rowan::NodeOrToken::Node(n)
                    if n.kind() == K::NODE_ATTRPATH_VALUE && n.text_range() == range =>
                {
                    n
                }
                _ => {
                    refused.push(refuse(format!(
                        "{}:{} changed since it was read",
                        file.display(),
                        s.line
                    )));
                    nodes.clear();
                    break;
                }
            };
            nodes.push(node);
        }
        if nodes.is_empty() {
            continue;
        }
        let shapes: Result<Vec<Shape>, String> =
            nodes.iter().map(|n| shape_of(n, &i.name)).collect();
        let shapes = match shapes {
            Ok(s) => s,
            Err(e) => {
                refused.push(refuse(format!(
                    "at {}:{}: {e}",
                    file.display(),
                    sites[0].line
                )));
                continue;
            }
        };
        match &shapes[0] {
            Shape::Binding { prefix, parent } => {
                let same = shapes.iter().all(|s| {
                    matches!(s, Shape::Binding { prefix: p, parent: q } if p == prefix && q == parent)
                });
                if !same {
                    let at: Vec<String> = sites.iter().map(|s| s.line.to_string()).collect();
                    refused.push(refuse(format!(
                        "its bindings in {} (lines {}) are not all in the same attribute set, \
                         so they cannot be replaced together; bring them together (one \
                         `containers.{} = {{ … }};`) and run again",
                        file.display(),
                        at.join(", "),
                        crate::nixtext::attr_name(&i.name)
                    )));
                    continue;
                }
                let first = nodes
                    .iter()
                    .min_by_key(|n| n.text_range().start())
                    .cloned()
                    .unwrap_or_else(|| nodes[0].clone());
                let start = usize::from(first.text_range().start());
                let cond = inner_conditions(&first, None, &i.name);
                let placed = in_scope(i, &cond);
                let Some(new) = new_bindings(&[placed], prefix, indent_at(text, start)) else {
                    refused.push(refuse("its new definition could not be formatted".into()));
                    continue;
                };
                if !bound_around(&first, "lib") && new.contains("lib.") {
                    refused.push(refuse(format!(
                        "its new definition uses `lib` (lib.mkIf, lib.mkDefault, …), which is \
                         not bound where it is defined ({}:{}); add `lib` to the module's \
                         arguments (`{{ config, lib, pkgs, ... }}:`) and run again",
                        file.display(),
                        sites[0].line
                    )));
                    continue;
                }
                let ranges: Vec<Range<usize>> = nodes
                    .iter()
                    .map(|n| usize::from(n.text_range().start())..usize::from(n.text_range().end()))
                    .collect();
                if let Some(why) = collision(parent, &ranges, &top_paths(&new)) {
                    refused.push(refuse(format!(
                        "at {}:{}: {why}",
                        file.display(),
                        sites[0].line
                    )));
                    continue;
                }
                let mut own = Vec::new();
                for n in &nodes {
                    let r = usize::from(n.text_range().start())..usize::from(n.text_range().end());
                    if n == &first {
                        own.push((r, new.clone()));
                    } else {
                        own.push((removal_range(text, r), String::new()));
                    }
                }
                units.push(Unit::Own {
                    container: i.name.clone(),
                    edits: own,
                });
                done.push(i.name.clone());
            }
            Shape::Member { owner, prefix } => {
                let same = shapes
                    .iter()
                    .all(|s| matches!(s, Shape::Member { owner: o, .. } if o == owner));
                if !same {
                    refused.push(refuse(format!(
                        "it is defined both in a set of containers and by other bindings in {}; \
                         bring its definition together and run again",
                        file.display()
                    )));
                    continue;
                }
                let key = usize::from(owner.text_range().start());
                members
                    .entry(key)
                    .or_insert_with(|| (owner.clone(), prefix.clone(), Vec::new()))
                    .2
                    .push((i, nodes));
            }
        }
    }
    for (_, (owner, prefix, group)) in members {
        let parent = match owner.parent() {
            Some(p) => p,
            None => continue,
        };
        let start = usize::from(owner.text_range().start());
        let end = usize::from(owner.text_range().end());
        let is: Vec<Instance> = group
            .iter()
            .map(|(i, ns)| {
                let cond = ns
                    .first()
                    .map(|n| inner_conditions(n, Some(&owner), &i.name))
                    .unwrap_or_default();
                in_scope(i, &cond)
            })
            .collect();
        let names: Vec<String> = is.iter().map(|i| i.name.clone()).collect();
        let refuse_all = |why: String, refused: &mut Vec<Refusal>| {
            for n in &names {
                refused.push(Refusal {
                    container: n.clone(),
                    reason: why.clone(),
                });
            }
        };
        // Each member's new definition on its own, so that a rollback of one of them can
        // take just its part back out (see `Unit::Set`).
        let indent = indent_at(text, start).to_string();
        let Some(news) = is
            .iter()
            .map(|i| new_bindings(std::slice::from_ref(i), &prefix, &indent))
            .collect::<Option<Vec<String>>>()
        else {
            refuse_all(
                "its new definition could not be formatted".into(),
                &mut refused,
            );
            continue;
        };
        let joined = news.join("\n");
        if !bound_around(&owner, "lib") && joined.contains("lib.") {
            refuse_all(
                format!(
                    "the new definitions use `lib` (lib.mkIf, lib.mkDefault, …), which is not \
                     bound where `containers` is defined ({}); add `lib` to the module's \
                     arguments (`{{ config, lib, pkgs, ... }}:`) and run again",
                    file.display()
                ),
                &mut refused,
            );
            continue;
        }
        // Whether the set holds only the migrated containers (`all`): then, with all of them
        // rewritten, the whole binding is replaced (see `Unit::Set`).
        let member_ranges: Vec<Range<usize>> = group
            .iter()
            .flat_map(|(_, ns)| ns.iter())
            .map(|n| usize::from(n.text_range().start())..usize::from(n.text_range().end()))
            .collect();
        let set = owner.descendants().find(|n| {
            n.kind() == K::NODE_ATTR_SET
                && member_ranges.iter().any(|r| {
                    n.children()
                        .any(|c| usize::from(c.text_range().start()) == r.start)
                })
        });
        let all = set.as_ref().is_some_and(|s| {
            s.children()
                .filter(|c| matches!(c.kind(), K::NODE_ATTRPATH_VALUE | K::NODE_INHERIT))
                .all(|c| {
                    member_ranges
                        .iter()
                        .any(|r| usize::from(c.text_range().start()) == r.start)
                })
        });
        // Whatever subset is rewritten, the set's binding stays (some members are left, or
        // are given back by a rollback): the new names must not clash beside it.
        let removed: Vec<Range<usize>> = if all {
            std::iter::once(start..end).collect()
        } else {
            member_ranges.clone()
        };
        let paths: Vec<Vec<String>> = news.iter().flat_map(|n| top_paths(n)).collect();
        if let Some(why) = collision(&parent, &removed, &paths) {
            refuse_all(format!("at {}: {why}", file.display()), &mut refused);
            continue;
        }
        let members = group
            .iter()
            .zip(news)
            .map(|((i, ns), new)| Member {
                container: i.name.clone(),
                removals: ns
                    .iter()
                    .map(|n| {
                        removal_range(
                            text,
                            usize::from(n.text_range().start())..usize::from(n.text_range().end()),
                        )
                    })
                    .collect(),
                new,
            })
            .collect();
        units.push(Unit::Set {
            owner: start..end,
            indent,
            whole: all,
            members,
        });
        done.extend(names);
    }
    let edits = edits_for(&units, &|_| true);
    if edits.is_empty() {
        return (None, refused);
    }
    let Some(out) = apply_edits(text, &edits) else {
        // Overlapping edits would be a bug of this module: change nothing in the file.
        for n in &done {
            refused.push(Refusal {
                container: n.clone(),
                reason: format!("its bindings in {} overlap another's", file.display()),
            });
        }
        return (None, refused);
    };
    if !rnix::Root::parse(&out).errors().is_empty() {
        for n in &done {
            refused.push(Refusal {
                container: n.clone(),
                reason: format!(
                    "{} would not parse after the rewrite (a bug of nixos-nspawn; please report \
                     it); the file is left as it is",
                    file.display()
                ),
            });
        }
        return (None, refused);
    }
    done.sort();
    (
        Some(FileEdit {
            file: file.to_path_buf(),
            original: text.to_string(),
            rewritten: out,
            replaced: edits,
            containers: done,
            units,
        }),
        refused,
    )
}

// ---- diff ------------------------------------------------------------------------------------

/// The unified diff of `old` with `edits` applied: each edit's whole lines removed, then the
/// same lines as they become (clearer than a line matching, which would pair the `};` of the
/// old definition with those of the new one).
pub fn edit_diff(name: &str, old: &str, edits: &[(Range<usize>, String)]) -> String {
    let mut starts = vec![0];
    starts.extend(old.match_indices('\n').map(|(p, _)| p + 1));
    let line_of = |off: usize| starts.partition_point(|&s| s <= off).saturating_sub(1);
    let lines: Vec<&str> = old.split_inclusive('\n').collect();
    // Groups of edits touching overlapping or adjacent lines: (first line, last line, edits).
    let mut groups: Vec<LineGroup> = Vec::new();
    for e in edits {
        let ls = line_of(e.0.start);
        let le = line_of(e.0.end.max(e.0.start + 1) - 1).max(ls);
        match groups.last_mut() {
            Some(g) if ls <= g.1 + 1 => {
                g.1 = g.1.max(le);
                g.2.push(e);
            }
            _ => groups.push((ls, le, vec![e])),
        }
    }
    let mut ops: Vec<(char, String)> = Vec::new();
    let mut next = 0;
    for (ls, le, es) in groups {
        let le = le.min(lines.len().saturating_sub(1));
        for l in &lines[next.min(ls)..ls] {
            ops.push((' ', l.to_string()));
        }
        let from = starts.get(ls).copied().unwrap_or(old.len());
        let to = starts.get(le + 1).copied().unwrap_or(old.len());
        let mut block = String::new();
        let mut pos = from;
        for (r, t) in es {
            block.push_str(&old[pos..r.start.max(pos)]);
            block.push_str(t);
            pos = r.end.max(pos);
        }
        block.push_str(&old[pos.min(to)..to]);
        for l in old[from..to].split_inclusive('\n') {
            ops.push(('-', l.to_string()));
        }
        for l in block.split_inclusive('\n') {
            ops.push(('+', l.to_string()));
        }
        next = le + 1;
    }
    for l in lines.iter().skip(next) {
        ops.push((' ', l.to_string()));
    }
    hunks(name, &ops)
}

fn hunks(name: &str, ops: &[(char, String)]) -> String {
    let mut out = format!("--- {name}\n+++ {name} (rewritten)\n");
    let changed: Vec<usize> = (0..ops.len()).filter(|&k| ops[k].0 != ' ').collect();
    let mut k = 0;
    while k < changed.len() {
        let from = changed[k].saturating_sub(3);
        let mut to = changed[k];
        while k < changed.len() && changed[k] <= to + 7 {
            to = changed[k];
            k += 1;
        }
        let to = (to + 4).min(ops.len());
        let old_start = ops[..from].iter().filter(|o| o.0 != '+').count() + 1;
        let new_start = ops[..from].iter().filter(|o| o.0 != '-').count() + 1;
        let old_len = ops[from..to].iter().filter(|o| o.0 != '+').count();
        let new_len = ops[from..to].iter().filter(|o| o.0 != '-').count();
        out.push_str(&format!(
            "@@ -{old_start},{old_len} +{new_start},{new_len} @@\n"
        ));
        for (c, l) in &ops[from..to] {
            out.push(*c);
            out.push_str(l);
            if !l.ends_with('\n') {
                out.push_str("\n\\ No newline at end of file\n");
            }
        }
    }
    out
}

/// A unified diff (3 lines of context) of `old` → `new`, both named `name`.
pub fn unified_diff(name: &str, old: &str, new: &str) -> String {
    let a: Vec<&str> = old.split_inclusive('\n').collect();
    let b: Vec<&str> = new.split_inclusive('\n').collect();
    // Common prefix and suffix first: the LCS table is only built for the middle.
    let mut pre = 0;
    while pre < a.len() && pre < b.len() && a[pre] == b[pre] {
        pre += 1;
    }
    let mut suf = 0;
    while suf < a.len() - pre && suf < b.len() - pre && a[a.len() - 1 - suf] == b[b.len() - 1 - suf]
    {
        suf += 1;
    }
    let am = &a[pre..a.len() - suf];
    let bm = &b[pre..b.len() - suf];
    // ops: (' ' | '-' | '+', line)
    let mut ops: Vec<(char, &str)> = a[..pre].iter().map(|l| (' ', *l)).collect();
    if am.len().saturating_mul(bm.len()) <= 25_000_000 {
        let (n, m) = (am.len(), bm.len());
        let mut t = vec![0u32; (n + 1) * (m + 1)];
        for x in (0..n).rev() {
            for y in (0..m).rev() {
                t[x * (m + 1) + y] = if am[x] == bm[y] {
                    t[(x + 1) * (m + 1) + y + 1] + 1
                } else {
                    t[(x + 1) * (m + 1) + y].max(t[x * (m + 1) + y + 1])
                };
            }
        }
        let (mut x, mut y) = (0, 0);
        while x < n || y < m {
            if x < n && y < m && am[x] == bm[y] {
                ops.push((' ', am[x]));
                x += 1;
                y += 1;
            } else if x < n && (y == m || t[(x + 1) * (m + 1) + y] >= t[x * (m + 1) + y + 1]) {
                // Removed lines before added ones, as diff(1) shows them.
                ops.push(('-', am[x]));
                x += 1;
            } else {
                ops.push(('+', bm[y]));
                y += 1;
            }
        }
    } else {
        ops.extend(am.iter().map(|l| ('-', *l)));
        ops.extend(bm.iter().map(|l| ('+', *l)));
    }
    ops.extend(a[a.len() - suf..].iter().map(|l| (' ', *l)));
    let ops: Vec<(char, String)> = ops.into_iter().map(|(c, l)| (c, l.to_string())).collect();
    hunks(name, &ops)
}

/// Take the containers rewritten in place out of the separate output file (it keeps the
/// refused ones; with none left it is not written at all), and drop the warnings that do not
/// hold in place from their reports.
pub fn exclude(m: &mut crate::migrate::Migration, rewritten: &[String]) {
    if rewritten.is_empty() {
        return;
    }
    let rest: Vec<Instance> = m
        .instances
        .iter()
        .filter(|i| {
            i.kind == Kind::Declarative
                && crate::plan::blocked(i).is_none()
                && !rewritten.contains(&i.name)
        })
        .cloned()
        .collect();
    for c in m.report.containers.iter_mut() {
        if rewritten.contains(&c.name) {
            c.warnings.retain(|w| !NOT_IN_PLACE.contains(&w.code));
        }
    }
    m.report.finish_summary();
    if rest.is_empty() {
        m.plan.nix_output = None;
        m.report.nix_file = None;
        m.report.output = None;
    } else {
        m.report.nix_file = Some(crate::render::nix::host_file(&rest));
    }
}

// ---- applying --------------------------------------------------------------------------------

/// Why `file` may not be rewritten (`None`: it may). The same checks run in the dry run (as
/// refusals `--yes` would meet) and right before writing.
pub fn check_file(host: &HostRoot, file: &Path) -> Result<PathBuf, String> {
    let shown = file.display();
    let resolved = host
        .resolve(file)
        .map_err(|err| format!("cannot resolve {shown}: {err}; it was not rewritten"))?;
    if let Some(n) = NEVER.iter().find(|n| resolved.starts_with(n)) {
        return Err(format!(
            "{shown} lies in {n} (resolved: {}), where nixos-nspawn never writes; it was \
             not rewritten. Rewrite the file it comes from by hand",
            resolved.display()
        ));
    }
    if !matches!(host.kind(&resolved), Ok(Some(crate::host::Kind::File))) {
        return Err(format!(
            "{shown} is not a regular file ({}); it was not rewritten",
            host.why_not_a_file(&resolved)
        ));
    }
    Ok(resolved)
}

/// For `--dry-run` and before `--yes` writes anything: every reason the rewrite would be
/// refused (a file it may not write, the output file being one of the rewritten files).
pub fn preflight(host: &HostRoot, plan: &RewritePlan, output: Option<&Path>) -> Vec<String> {
    let mut problems = Vec::new();
    for e in &plan.edits {
        let resolved = match check_file(host, &e.file) {
            Ok(r) => r,
            Err(p) => {
                problems.push(format!("--rewrite: {p}"));
                continue;
            }
        };
        let dir = resolved.parent().unwrap_or(Path::new("/"));
        match host.dir_writable(dir) {
            Ok((Ok(()), _)) => {}
            Ok((Err(err), _)) | Err(err) => problems.push(format!(
                "--rewrite: {} cannot be rewritten: its directory {} is not writable ({err})",
                e.file.display(),
                dir.display()
            )),
        }
        if output.is_some_and(|o| o == e.file) {
            problems.push(format!(
                "--rewrite: {} is both rewritten in place and the --output file; give \
                 another --output",
                e.file.display()
            ));
        }
    }
    problems
}

/// Where a rewrite must never write, whatever the configuration names.
const NEVER: &[&str] = &[
    "/nix/store",
    "/var/lib/machines",
    "/var/lib/nixos-containers",
];

/// [`apply`] now (the backups stamped with the current time), recording in `report` what was
/// done and every file written: the last step of `--yes` and of the interactive mode alike.
pub fn apply_now(
    host: &HostRoot,
    plan: &RewritePlan,
    report: &mut crate::report::Report,
) -> Result<(), String> {
    let stamp = crate::clock::unix_seconds().to_string();
    let done = apply(host, plan, &stamp)?;
    report.done.extend(done);
    report
        .files_written
        .extend(plan.edits.iter().map(|e| e.file.clone()));
    Ok(())
}

/// Write every edited file: each is checked (a regular file inside the root, not in the store
/// or a container's tree, unchanged since it was read), kept as `FILE.bak-STAMP` (a hard link
/// to the original inode), then replaced atomically with its mode kept. Returns what was done,
/// one line each. Stops at the first file that fails; files already written stay written (each
/// has its backup).
pub fn apply(host: &HostRoot, plan: &RewritePlan, stamp: &str) -> Result<Vec<String>, String> {
    let mut done = Vec::new();
    for e in &plan.edits {
        let shown = e.file.display();
        let resolved = check_file(host, &e.file)?;
        let now = host
            .read(&resolved)
            .map_err(|err| format!("cannot read {shown}: {err}; it was not rewritten"))?;
        if now != e.original.as_bytes() {
            return Err(format!(
                "{shown} changed since it was read; it was not rewritten. Run again"
            ));
        }
        let mode = host
            .open(
                &resolved,
                rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::NOFOLLOW,
            )
            .and_then(|fd| rustix::fs::fstat(&fd).map_err(std::io::Error::from))
            .map(|st| st.st_mode & 0o7777)
            .map_err(|err| format!("cannot read the mode of {shown}: {err}"))?;
        // FILE.bak-STAMP, or -2, -3, … when a backup of the same second is there.
        let bak = host.backup_fresh(&resolved, stamp).map_err(|err| {
            format!("cannot keep a backup of {shown}: {err}; it was not rewritten")
        })?;
        host.write_atomic(&resolved, e.rewritten.as_bytes(), mode)
            .map_err(|err| {
                format!(
                    "cannot write {shown}: {err}; it was left as it was (backup: {})",
                    bak.display()
                )
            })?;
        done.push(format!(
            "rewrote {shown} in place ({}); the original is kept as {}",
            e.containers.join(", "),
            bak.display()
        ));
        done.extend(record(host, e, &resolved, &bak)?);
    }
    Ok(done)
}

/// Note the rewrite of `e` (written at `resolved`, its original kept as `bak`) in the migration
/// record of every container rewritten in it, so that `--rollback` can give the file back.
fn record(
    host: &HostRoot,
    e: &FileEdit,
    resolved: &Path,
    bak: &Path,
) -> Result<Vec<String>, String> {
    let rec = crate::rollback::RewriteRecord {
        file: resolved.to_path_buf(),
        backup: bak.to_path_buf(),
        original_blake3: blake3::hash(e.original.as_bytes()).to_hex().to_string(),
        written_blake3: blake3::hash(e.rewritten.as_bytes()).to_hex().to_string(),
        units: e.units.clone(),
        rolled_back: Vec::new(),
    };
    let mut notes = Vec::new();
    for c in &e.containers {
        let path = crate::rollback::record_path(c);
        match crate::rollback::load(host, c)? {
            Some(mut r) => {
                r.rewrite = Some(rec.clone());
                // Its definition is in this file now, not in the separate output file.
                r.nix_output = None;
                crate::rollback::save(host, &r).map_err(|err| {
                    format!(
                        "{} was rewritten (the original is kept as {}), but the migration record {} \
                         could not be updated ({err}): `--rollback {c}` will not give the file back; \
                         restore it from the backup by hand if you roll back",
                        e.file.display(),
                        bak.display(),
                        path.display()
                    )
                })?;
            }
            None => notes.push(format!(
                "note: {c} has no migration record ({}), so `--rollback {c}` cannot give {} back; \
                 its original is {}",
                path.display(),
                e.file.display(),
                bak.display()
            )),
        }
    }
    Ok(notes)
}

/// Ask on the terminal whether to apply the rewrite shown; `false` on anything but yes.
/// For the interactive flow: `--yes` and `--dry-run` never call it.
pub fn confirm(plan: &RewritePlan) -> std::io::Result<bool> {
    if plan.edits.is_empty() {
        return Ok(false);
    }
    dialoguer::Confirm::new()
        .with_prompt("Rewrite these files in place (a backup of each is kept)?")
        .default(false)
        .interact()
        .map_err(|e| std::io::Error::other(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diff_shows_only_changed_lines_with_context() {
        let old = "a\nb\nc\nd\ne\nf\ng\nh\n";
        let new = "a\nb\nc\nD\ne\nf\ng\nh\n";
        let d = unified_diff("f", old, new);
        assert_eq!(
            d,
            "--- f\n+++ f (rewritten)\n@@ -1,7 +1,7 @@\n a\n b\n c\n-d\n+D\n e\n f\n g\n"
        );
    }

    #[test]
    fn edit_diff_shows_whole_old_lines_then_new_ones() {
        let old = "{\n  # keep\n  a = 1; b = 2;\n  c = 3;\n}\n";
        let a = old.find("a = 1;").unwrap_or(0);
        let d = edit_diff("f", old, &[(a..a + 6, "x = 1;".into())]);
        assert_eq!(
            d,
            "--- f\n+++ f (rewritten)\n@@ -1,5 +1,5 @@\n {\n   # keep\n-  a = 1; b = 2;\n+  x = 1; b = 2;\n   c = 3;\n }\n"
        );
    }

    #[test]
    fn removal_takes_whole_lines_only_when_alone() {
        let t = "{\n  a = 1;\n  b = 2; c = 3;\n}\n";
        let a = t.find("a = 1;").unwrap_or(0);
        assert_eq!(&t[removal_range(t, a..a + 6)], "  a = 1;\n");
        let c = t.find("c = 3;").unwrap_or(0);
        assert_eq!(&t[removal_range(t, c..c + 6)], "c = 3;");
    }
}
