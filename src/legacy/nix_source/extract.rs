//! The static reader proper: walks one parsed file and collects what it says about
//! `containers.<name>`, following `let` bindings through a scope chain and peeling the module
//! combinators (`mkIf`, `mkMerge`, `//`, `optionalAttrs`, `mkDefault`, …).
//!
//! Everything it cannot read becomes a warning naming the site and the `nix` command that gets
//! the values; nothing is dropped silently.

use super::text::{self, Lines, MAX_DEPTH};
use super::{
    EvalCommand, ImportRole, NIX_CONFLICTING_DEFINITIONS, NIX_CONTAINERS_NOT_READ,
    NIX_DYNAMIC_CONTAINER, NIX_DYNAMIC_CONTAINERS, NIX_IMPORT_NOT_FOLLOWED, NIX_NESTED_CONTAINERS,
    NIX_RELATIVE_PATH, NIX_UNRESOLVED_VALUE, NixImport,
};
use crate::legacy::model::{LetBinding, NixExpr, Origin, SourceFacts, SourceKind, Value};
use crate::nixtext;
use crate::warnings::Warning;
use rnix::ast::{self, HasEntry, InterpolPart};
use rowan::ast::AstNode;
use std::cell::Cell;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::{Component, Path, PathBuf};

/// Where a file's top expression sits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Start {
    /// A NixOS module (`configuration.nix`, anything in `imports`).
    Module,
    /// The value of `containers` (`containers = import ./containers.nix;`).
    Containers,
    /// The value of one `containers.<name>` (`containers.web = import ./web.nix;`).
    Container(String),
}

pub(super) type Scope = Option<usize>;

#[derive(Clone)]
enum Binding {
    /// A name bound to an expression, evaluated in a scope.
    Expr(ast::Expr, Scope),
    /// `inherit (from) name;`
    Attr(ast::Expr, String, Scope),
    /// A function parameter or anything else whose value is not in the source; why, for the
    /// report (`a parameter of the function at line 1 (`{ serverName }: …`)`).
    Opaque(String),
}

struct Frame {
    names: HashMap<String, Binding>,
    parent: Scope,
    /// The parameters of the host file's module function (`{ config, inputs, ... }:`).
    module_args: bool,
}

#[derive(Clone, Copy)]
enum Level {
    Module,
    Containers,
    Container(usize),
}

pub(crate) struct Extract<'t> {
    file: PathBuf,
    lines: Lines<'t>,
    frames: Vec<Frame>,
    eval: EvalCommand,
    pub(crate) containers: Vec<SourceFacts>,
    /// The conditions each container was first defined under (texts), parallel to `containers`.
    bases: Vec<Vec<String>>,
    pub(crate) imports: Vec<NixImport>,
    pub(crate) problems: Vec<Warning>,
    /// `containers = <expr>` where the expression is not a literal set (`lib.mapAttrs mk
    /// hosts`, `a // listToAttrs …`), verbatim with the `let` bindings it needs: an evaluated
    /// container's guest `config` is `(<expr>).<name>.config`.
    pub(crate) container_sets: Vec<NixExpr>,
    /// Source ranges the walk has read (or warned about) as container definitions; the final
    /// sweep ([`Extract::sweep`]) looks for `containers` attributes outside them.
    covered: Vec<rowan::TextRange>,
    /// While the sweep reads a nested module: the containers it touched.
    noting: Option<Vec<usize>>,
    /// Steps left for following names: `let` bindings can describe exponentially large values
    /// (`a = [ b b ]; b = [ c c ]; …`); past the budget, values stay verbatim expressions.
    budget: Cell<usize>,
    /// True while the walk pushes the frame of a module function (see [`Frame::module_args`]).
    module_level: Cell<bool>,
    /// Every binding that defines (part of) a container, for `migrate --rewrite`.
    pub(crate) sites: Vec<super::DefinitionSite>,
    /// How the file was read ([`Extract::run`]): only module files are rewritten in place.
    start_is_module: bool,
}

/// Steps of name-following allowed per file (real configurations use a few thousand).
const BUDGET: usize = 200_000;

fn short(text: &str) -> String {
    let one_line: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if one_line.chars().count() > 72 {
        let cut: String = one_line.chars().take(69).collect();
        format!("{cut}…")
    } else {
        one_line
    }
}

/// The name a function application is called by: `lib.mkIf` → `mkIf`, `mkMerge` → `mkMerge`.
pub(super) fn head_name(head: &ast::Expr) -> Option<String> {
    match head {
        ast::Expr::Ident(i) => Some(i.syntax().text().to_string()),
        ast::Expr::Select(s) if s.default_expr().is_none() => s
            .attrpath()?
            .attrs()
            .last()
            .and_then(|a| text::attr_name(&a)),
        ast::Expr::Paren(p) => head_name(&p.expr()?),
        _ => None,
    }
}

/// `f a b` → (`f`, [`a`, `b`]), looking through parentheses around the function.
pub(super) fn uncurry(apply: &ast::Apply) -> Option<(ast::Expr, Vec<ast::Expr>)> {
    let mut args = Vec::new();
    let mut cur = ast::Expr::Apply(apply.clone());
    for _ in 0..MAX_DEPTH {
        match cur {
            ast::Expr::Apply(a) => {
                args.push(a.argument()?);
                cur = a.lambda()?;
            }
            ast::Expr::Paren(ref p) if matches!(p.expr(), Some(ast::Expr::Apply(_))) => {
                cur = p.expr()?;
            }
            other => {
                args.reverse();
                return Some((other, args));
            }
        }
    }
    None
}

pub(super) fn unparen(mut e: ast::Expr) -> ast::Expr {
    for _ in 0..MAX_DEPTH {
        match e {
            ast::Expr::Paren(ref p) => match p.expr() {
                Some(inner) => e = inner,
                None => return e,
            },
            _ => return e,
        }
    }
    e
}

/// A literal path without interpolation, resolved against the directory of `file`.
pub(crate) fn literal_path(file: &Path, e: &ast::Expr) -> Option<PathBuf> {
    let (text, relative) = match e {
        ast::Expr::PathRel(p) => {
            if p.syntax().children().next().is_some() {
                return None;
            }
            (p.syntax().text().to_string(), true)
        }
        ast::Expr::PathAbs(p) => {
            if p.syntax().children().next().is_some() {
                return None;
            }
            (p.syntax().text().to_string(), false)
        }
        ast::Expr::Str(s) => {
            let v = text::static_string(s)?;
            if !v.starts_with('/') {
                return None;
            }
            (v, false)
        }
        _ => return None,
    };
    let joined = if relative {
        file.parent().unwrap_or(Path::new("/")).join(text)
    } else {
        PathBuf::from(text)
    };
    Some(normalize(&joined))
}

/// Lexical normalisation (`a/./b/../c` → `a/c`), as Nix does for path literals.
pub(crate) fn normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::ParentDir => {
                if !out.pop() {
                    out.push("/");
                }
            }
            Component::CurDir => {}
            other => out.push(other.as_os_str()),
        }
    }
    out
}

impl<'t> Extract<'t> {
    pub(crate) fn new(file: &Path, text: &'t str, eval: EvalCommand) -> Self {
        Extract {
            file: file.to_path_buf(),
            lines: Lines::new(text),
            frames: Vec::new(),
            eval,
            containers: Vec::new(),
            bases: Vec::new(),
            imports: Vec::new(),
            problems: Vec::new(),
            container_sets: Vec::new(),
            covered: Vec::new(),
            noting: None,
            budget: Cell::new(BUDGET),
            module_level: Cell::new(false),
            sites: Vec::new(),
            start_is_module: true,
        }
    }

    pub(crate) fn run(&mut self, root: ast::Expr, start: &Start) {
        self.start_is_module = *start == Start::Module;
        match start {
            Start::Module => self.visit(root, None, &[], Level::Module, true, 0),
            Start::Containers => self.visit(root, None, &[], Level::Containers, true, 0),
            Start::Container(name) => {
                let idx = self.container(name, &[]);
                self.visit(root, None, &[], Level::Container(idx), true, 0)
            }
        }
    }

    // ---- positions, expressions, warnings -------------------------------------------------

    pub(super) fn line(&self, node: &rnix::SyntaxNode) -> usize {
        self.lines.node_line_col(node).0
    }

    fn origin(&self, line: usize) -> Origin {
        Origin::new(SourceKind::NixSource, self.file.clone(), Some(line))
    }

    /// The expression, verbatim, with its position and free variables.
    pub(crate) fn nix_expr(&self, node: &rnix::SyntaxNode) -> NixExpr {
        let (line, column) = self.lines.node_line_col(node);
        NixExpr {
            text: node.to_string(),
            origin: self.origin(line),
            column,
            free_vars: text::free_vars(node),
            lets: Vec::new(),
            module_args: Vec::new(),
            guest_files: Vec::new(),
            why_free: Vec::new(),
        }
    }

    /// [`Extract::nix_expr`] for an expression read in `scope`, with the `let` bindings of this
    /// file it needs carried along ([`Extract::carry`]).
    pub(crate) fn nix_expr_in(&self, node: &rnix::SyntaxNode, scope: Scope) -> NixExpr {
        let mut e = self.nix_expr(node);
        self.carry(&mut e, scope);
        e
    }

    /// Find the `let` (or `rec { }`) bindings of this file that the free names of `e` refer to
    /// in `scope`, transitively, and carry them in `e.lets`; the names they leave free stay in
    /// `e.free_vars`, and those that are parameters of the module function are noted in
    /// `e.module_args`. A name is not carried when it cannot be copied faithfully: bound by a
    /// function parameter other than the module's, by an `a.b = …` binding, or to two
    /// different bindings at once (one `let` cannot hold both).
    pub(crate) fn carry(&self, e: &mut NixExpr, scope: Scope) {
        // name → where it resolves: Some(frame) for a binding, None for anything else.
        let mut seen: HashMap<String, Option<usize>> = HashMap::new();
        let mut conflicts: Vec<String> = Vec::new();
        let mut lets: Vec<LetBinding> = Vec::new();
        let mut free: Vec<String> = Vec::new();
        let mut module_args: Vec<String> = Vec::new();
        let mut why: Vec<(String, String)> = Vec::new();
        let mut queue: VecDeque<(String, Scope)> =
            e.free_vars.iter().map(|n| (n.clone(), scope)).collect();
        let mut steps = 0usize;
        while let Some((name, at)) = queue.pop_front() {
            steps += 1;
            if steps > 10_000 || !self.spend() {
                break;
            }
            let found = self.lookup_frame(at, &name);
            let key = found.as_ref().and_then(|(f, b)| match b {
                Binding::Opaque(_) => None,
                _ => Some(*f),
            });
            match seen.get(&name) {
                Some(k) if *k == key => continue,
                Some(_) => {
                    if !conflicts.contains(&name) {
                        conflicts.push(name.clone());
                    }
                    continue;
                }
                None => {
                    seen.insert(name.clone(), key);
                }
            }
            match found {
                Some((_, Binding::Expr(v, s))) => {
                    // A `let` binding, or a parameter bound to its argument by [`Extract::beta`].
                    let at = v
                        .syntax()
                        .parent()
                        .and_then(ast::AttrpathValue::cast)
                        .map(|apv| apv.syntax().clone())
                        .unwrap_or_else(|| v.syntax().clone());
                    lets.push(LetBinding {
                        name: name.clone(),
                        text: format!("{name} = {};", v.syntax()),
                        line: self.line(&at),
                    });
                    for n in text::free_vars(v.syntax()) {
                        queue.push_back((n, s));
                    }
                }
                Some((_, Binding::Attr(from, n, s))) => {
                    lets.push(LetBinding {
                        name: name.clone(),
                        text: format!("inherit ({}) {};", from.syntax(), nixtext::attr_name(&n)),
                        line: self.line(from.syntax()),
                    });
                    for n in text::free_vars(from.syntax()) {
                        queue.push_back((n, s));
                    }
                }
                Some((f, Binding::Opaque(w))) => {
                    if self.frames.get(f).is_some_and(|fr| fr.module_args) {
                        module_args.push(name.clone());
                    } else {
                        why.push((name.clone(), w));
                    }
                    free.push(name);
                }
                None => free.push(name),
            }
        }
        if !conflicts.is_empty() {
            // Keep the uses free (reported) rather than bind one of two meanings.
            lets.retain(|l| !conflicts.contains(&l.name));
            for c in &conflicts {
                why.retain(|(n, _)| n != c);
                why.push((
                    c.clone(),
                    "bound twice in this file, differently where the copied code uses it (one \
                     `let` cannot hold both)"
                        .to_string(),
                ));
            }
            free.extend(conflicts);
        }
        lets.sort_by_key(|l| l.line);
        free.sort();
        free.dedup();
        module_args.sort();
        module_args.dedup();
        module_args.retain(|a| free.contains(a));
        why.sort();
        why.dedup_by(|a, b| a.0 == b.0);
        why.retain(|(n, _)| free.contains(n));
        e.lets = lets;
        e.free_vars = free;
        e.module_args = module_args;
        e.why_free = why;
    }

    /// The frame that binds `name` as seen from `scope`, and the binding.
    fn lookup_frame(&self, scope: Scope, name: &str) -> Option<(usize, Binding)> {
        let mut cur = scope;
        let mut hops = 0;
        while let Some(i) = cur {
            let f = self.frames.get(i)?;
            if let Some(b) = f.names.get(name) {
                return Some((i, b.clone()));
            }
            cur = f.parent;
            hops += 1;
            if hops > 10_000 {
                return None;
            }
        }
        None
    }

    fn at(&self, w: Warning, line: usize) -> Warning {
        w.at(self.file.clone(), Some(line))
    }

    fn loc(&self, line: usize) -> String {
        format!("{}:{}", self.file.display(), line)
    }

    /// Take one step of the budget; `false` when it is spent.
    fn spend(&self) -> bool {
        let left = self.budget.get();
        if left == 0 {
            return false;
        }
        self.budget.set(left - 1);
        true
    }

    // ---- scopes ----------------------------------------------------------------------------

    fn lookup(&self, scope: Scope, name: &str) -> Option<Binding> {
        let mut cur = scope;
        let mut hops = 0;
        while let Some(i) = cur {
            let f = self.frames.get(i)?;
            if let Some(b) = f.names.get(name) {
                return Some(b.clone());
            }
            cur = f.parent;
            hops += 1;
            if hops > 10_000 {
                return None;
            }
        }
        None
    }

    /// A frame for a `let`, `rec { }` or legacy `let { }` whose bindings see each other.
    pub(super) fn push_rec_frame<N: HasEntry>(&mut self, node: &N, scope: Scope) -> Scope {
        let id = self.frames.len();
        let mut names = HashMap::new();
        for entry in node.entries() {
            match entry {
                ast::Entry::AttrpathValue(apv) => {
                    let attrs: Vec<ast::Attr> = apv
                        .attrpath()
                        .map(|p| p.attrs().collect())
                        .unwrap_or_default();
                    let Some(first) = attrs.first().and_then(text::attr_name) else {
                        continue;
                    };
                    let binding = match (attrs.len(), apv.value()) {
                        (1, Some(v)) => Binding::Expr(v, Some(id)),
                        _ => Binding::Opaque(format!(
                            "built piece by piece by `{first}.… = …` bindings at line {}",
                            self.line(apv.syntax())
                        )),
                    };
                    names.insert(first, binding);
                }
                ast::Entry::Inherit(inh) => {
                    let from = inh.from().and_then(|f| f.expr());
                    for a in inh.attrs() {
                        let Some(n) = text::attr_name(&a) else {
                            continue;
                        };
                        let b = match &from {
                            Some(f) => Binding::Attr(f.clone(), n.clone(), Some(id)),
                            None => self.lookup(scope, &n).unwrap_or_else(|| {
                                Binding::Opaque(format!(
                                    "taken by `inherit {n};` at line {} from a scope this file \
                                     does not show",
                                    self.line(inh.syntax())
                                ))
                            }),
                        };
                        names.insert(n, b);
                    }
                }
            }
        }
        self.frames.push(Frame {
            names,
            parent: scope,
            module_args: false,
        });
        Some(id)
    }

    pub(super) fn push_lambda_frame(&mut self, lambda: &ast::Lambda, scope: Scope) -> Scope {
        let mut names = HashMap::new();
        let param = lambda
            .param()
            .map(|p| short(&p.syntax().to_string()))
            .unwrap_or_default();
        let why = Binding::Opaque(format!(
            "a parameter of the function `{param}: …` at line {}, whose value comes from the \
             code that calls it",
            self.line(lambda.syntax())
        ));
        match lambda.param() {
            Some(ast::Param::IdentParam(p)) => {
                if let Some(i) = p.ident() {
                    names.insert(i.syntax().text().to_string(), why.clone());
                }
            }
            Some(ast::Param::Pattern(p)) => {
                for e in p.pat_entries() {
                    if let Some(i) = e.ident() {
                        names.insert(i.syntax().text().to_string(), why.clone());
                    }
                }
                if let Some(i) = p.pat_bind().and_then(|b| b.ident()) {
                    names.insert(i.syntax().text().to_string(), why.clone());
                }
            }
            None => {}
        }
        // A pattern with `...` at module level is the module function: its names are module
        // arguments, which every module of the configuration receives.
        let module_args = matches!(lambda.param(), Some(ast::Param::Pattern(ref p)) if p.ellipsis_token().is_some());
        self.frames.push(Frame {
            names,
            parent: scope,
            module_args: module_args && self.module_level.get(),
        });
        Some(self.frames.len() - 1)
    }

    /// Follow names, parentheses and selections into `let`-bound attribute sets until an
    /// expression that is not a reference. `None` when a reference leads nowhere readable.
    pub(super) fn deref(
        &self,
        e: ast::Expr,
        scope: Scope,
        depth: usize,
    ) -> Option<(ast::Expr, Scope)> {
        if depth > MAX_DEPTH || !self.spend() {
            return None;
        }
        let d = depth + 1;
        match e {
            ast::Expr::Paren(p) => self.deref(p.expr()?, scope, d),
            ast::Expr::Ident(ref i) => {
                let name = i.syntax().text().to_string();
                match self.lookup(scope, &name) {
                    Some(Binding::Expr(v, s)) => self.deref(v, s, d),
                    Some(Binding::Attr(from, n, s)) => self.select(from, &[n], s, d),
                    Some(Binding::Opaque(_)) => None,
                    None if matches!(name.as_str(), "true" | "false" | "null") => Some((e, scope)),
                    None => None,
                }
            }
            ast::Expr::Select(ref s) => {
                if s.default_expr().is_some() {
                    return None;
                }
                let names: Option<Vec<String>> =
                    s.attrpath()?.attrs().map(|a| text::attr_name(&a)).collect();
                self.select(s.expr()?, &names?, scope, d)
            }
            other => Some((other, scope)),
        }
    }

    /// `base.a.b` where `base` reduces to a literal attribute set.
    fn select(
        &self,
        base: ast::Expr,
        path: &[String],
        scope: Scope,
        depth: usize,
    ) -> Option<(ast::Expr, Scope)> {
        let (mut cur, mut cur_scope) = self.deref(base, scope, depth + 1)?;
        let mut rest = path;
        while let Some((key, tail)) = rest.split_first() {
            let ast::Expr::AttrSet(set) = cur else {
                return None;
            };
            let inner_scope = if set.rec_token().is_some() {
                // Names of a `rec` set are not in the frame chain; give up on them.
                return None;
            } else {
                cur_scope
            };
            let mut found = None;
            for entry in set.entries() {
                match entry {
                    ast::Entry::AttrpathValue(apv) => {
                        let names: Option<Vec<String>> = apv
                            .attrpath()?
                            .attrs()
                            .map(|a| text::attr_name(&a))
                            .collect();
                        let names = names?;
                        if names.len() == 1 && names[0] == *key {
                            found = Some((apv.value()?, inner_scope));
                        } else if names.first() == Some(key) {
                            // `a.b = …` spread over entries: not followed.
                            return None;
                        }
                    }
                    ast::Entry::Inherit(inh) => {
                        if inh
                            .attrs()
                            .any(|a| text::attr_name(&a).as_deref() == Some(key))
                        {
                            match inh.from().and_then(|f| f.expr()) {
                                Some(f) => {
                                    found = self.select(
                                        f,
                                        std::slice::from_ref(key),
                                        inner_scope,
                                        depth + 1,
                                    )
                                }
                                None => {
                                    found = self.deref(
                                        ast::Expr::Ident(ident_named(&inh, key)?),
                                        inner_scope,
                                        depth + 1,
                                    )
                                }
                            }
                        }
                    }
                }
            }
            let (v, s) = found?;
            let (v, s) = self.deref(v, s, depth + 1)?;
            cur = v;
            cur_scope = s;
            rest = tail;
        }
        Some((cur, cur_scope))
    }

    // ---- values ----------------------------------------------------------------------------

    /// A value as data when the source states it literally (through `let` bindings), else the
    /// expression at the site, verbatim.
    fn value(&self, e: &ast::Expr, scope: Scope, depth: usize) -> Value {
        self.try_value(e, scope, depth)
            .unwrap_or_else(|| Value::Expr(self.nix_expr_in(e.syntax(), scope)))
    }

    fn try_value(&self, e: &ast::Expr, scope: Scope, depth: usize) -> Option<Value> {
        if depth > MAX_DEPTH || !self.spend() {
            return None;
        }
        let d = depth + 1;
        let (e, scope) = self.deref(e.clone(), scope, d)?;
        match &e {
            ast::Expr::Literal(l) => match l.kind() {
                ast::LiteralKind::Integer(i) => i.value().ok().map(Value::Int),
                ast::LiteralKind::Uri(u) => Some(Value::Str(u.to_string())),
                ast::LiteralKind::Float(_) => None,
            },
            ast::Expr::Ident(i) => match i.syntax().text().to_string().as_str() {
                "true" => Some(Value::Bool(true)),
                "false" => Some(Value::Bool(false)),
                "null" => Some(Value::Null),
                _ => None,
            },
            ast::Expr::Str(s) => self.string_value(s, scope, d).map(Value::Str),
            ast::Expr::PathAbs(p) if p.syntax().children().next().is_none() => {
                Some(Value::Str(p.syntax().text().to_string()))
            }
            ast::Expr::List(list) => {
                let items = list.items().map(|i| self.value(&i, scope, d)).collect();
                Some(Value::List(items))
            }
            ast::Expr::AttrSet(set) if set.rec_token().is_none() => {
                let mut out = BTreeMap::new();
                for entry in set.entries() {
                    match entry {
                        ast::Entry::AttrpathValue(apv) => {
                            // `"${dataDir}" = …` with `dataDir` a let-bound string is data too.
                            let names: Option<Vec<String>> = apv
                                .attrpath()?
                                .attrs()
                                .map(|a| self.attr_name_in(&a, scope))
                                .collect();
                            let v = self.value(&apv.value()?, scope, d);
                            insert_path(&mut out, &names?, v).ok()?;
                        }
                        ast::Entry::Inherit(inh) => {
                            for a in inh.attrs() {
                                let n = text::attr_name(&a)?;
                                let v = self.inherited_value(&inh, &n, scope, d);
                                insert_path(&mut out, &[n], v).ok()?;
                            }
                        }
                    }
                }
                Some(Value::Attrs(out))
            }
            ast::Expr::UnaryOp(u) if u.operator() == Some(ast::UnaryOpKind::Negate) => {
                match self.try_value(&u.expr()?, scope, d)? {
                    Value::Int(i) => i.checked_neg().map(Value::Int),
                    _ => None,
                }
            }
            // `[ … ] ++ lib.optionals (cfg.priority == "critical") [ … ]` over literal data:
            // the list it evaluates to. Anything not known stays the expression.
            ast::Expr::BinOp(b) => {
                let l = self.try_value(&b.lhs()?, scope, d)?;
                let r = self.try_value(&b.rhs()?, scope, d)?;
                let scalar = |v: &Value| {
                    matches!(
                        v,
                        Value::Str(_) | Value::Int(_) | Value::Bool(_) | Value::Null
                    )
                };
                match (b.operator()?, l, r) {
                    (ast::BinOpKind::Concat, Value::List(mut x), Value::List(y)) => {
                        x.extend(y);
                        Some(Value::List(x))
                    }
                    (ast::BinOpKind::Equal, x, y) if scalar(&x) && scalar(&y) => {
                        Some(Value::Bool(x == y))
                    }
                    (ast::BinOpKind::NotEqual, x, y) if scalar(&x) && scalar(&y) => {
                        Some(Value::Bool(x != y))
                    }
                    _ => None,
                }
            }
            ast::Expr::Apply(a) => {
                let (head, args) = uncurry(a)?;
                match head_name(&head)?.as_str() {
                    "mkDefault" | "mkForce" | "mkOverride" | "mkOptionDefault" | "mkBefore"
                    | "mkAfter" | "mkOrder" => self.try_value(args.last()?, scope, d),
                    // `lib.optionals c [ … ]` / `lib.optional c x` with a condition the source
                    // states.
                    "optionals" if args.len() == 2 => match self.try_value(&args[0], scope, d)? {
                        Value::Bool(true) => match self.try_value(&args[1], scope, d)? {
                            Value::List(l) => Some(Value::List(l)),
                            _ => None,
                        },
                        Value::Bool(false) => Some(Value::List(Vec::new())),
                        _ => None,
                    },
                    "optional" if args.len() == 2 => match self.try_value(&args[0], scope, d)? {
                        Value::Bool(true) => {
                            Some(Value::List(vec![self.value(&args[1], scope, d)]))
                        }
                        Value::Bool(false) => Some(Value::List(Vec::new())),
                        _ => None,
                    },
                    // `"${prefix}.${toString i}"`: numbers in addresses.
                    "toString" if args.len() == 1 => match self.try_value(&args[0], scope, d)? {
                        Value::Int(i) => Some(Value::Str(i.to_string())),
                        Value::Str(s) => Some(Value::Str(s)),
                        _ => None,
                    },
                    _ => None,
                }
            }
            _ => None,
        }
    }

    /// The name of an attribute, computed names included when they come from `let`-bound
    /// strings (`containers.${name}` with `let name = "web";`).
    fn attr_name_in(&self, attr: &ast::Attr, scope: Scope) -> Option<String> {
        if let Some(n) = text::attr_name(attr) {
            return Some(n);
        }
        match attr {
            ast::Attr::Str(s) => self.string_value(s, scope, 0),
            ast::Attr::Dynamic(d) => match self.try_value(&d.expr()?, scope, 0)? {
                Value::Str(v) => Some(v),
                _ => None,
            },
            ast::Attr::Ident(_) => None,
        }
    }

    /// A string literal, with interpolations of `let`-bound strings filled in.
    fn string_value(&self, s: &ast::Str, scope: Scope, depth: usize) -> Option<String> {
        let mut out = String::new();
        for part in s.normalized_parts() {
            match part {
                InterpolPart::Literal(l) => out.push_str(&l),
                InterpolPart::Interpolation(i) => match self.try_value(&i.expr()?, scope, depth)? {
                    Value::Str(v) => out.push_str(&v),
                    _ => return None,
                },
            }
        }
        Some(out)
    }

    /// The value of `name` in `inherit name;` / `inherit (from) name;`.
    fn inherited_value(&self, inh: &ast::Inherit, name: &str, scope: Scope, depth: usize) -> Value {
        let line = self.line(inh.syntax());
        let resolved = match inh.from().and_then(|f| f.expr()) {
            Some(f) => self
                .select(f, &[name.to_string()], scope, depth)
                .and_then(|(e, s)| self.try_value(&e, s, depth + 1)),
            None => ident_named(inh, name)
                .and_then(|i| self.try_value(&ast::Expr::Ident(i), scope, depth + 1)),
        };
        if let Some(v) = resolved {
            return v;
        }
        let (text, free_vars) = match inh.from().and_then(|f| f.expr()) {
            Some(f) => (
                format!("({}).{}", f.syntax(), nixtext::attr_name(name)),
                text::free_vars(f.syntax()),
            ),
            None => (
                name.to_string(),
                if text::is_global(name) {
                    vec![]
                } else {
                    vec![name.to_string()]
                },
            ),
        };
        let column = self.lines.node_line_col(inh.syntax()).1;
        let mut e = NixExpr::plain(text, self.origin(line), column, free_vars);
        self.carry(&mut e, scope);
        Value::Expr(e)
    }

    // ---- containers ------------------------------------------------------------------------

    fn container(&mut self, name: &str, conds: &[NixExpr]) -> usize {
        let idx = self.containers.iter().position(|c| c.container == name);
        if let (Some(noted), Some(i)) = (self.noting.as_mut(), idx)
            && !noted.contains(&i)
        {
            noted.push(i);
        }
        if let Some(i) = idx {
            return i;
        }
        let mut facts = SourceFacts::new(name, SourceKind::NixSource, self.file.clone());
        facts.condition = combine_conditions(conds);
        self.containers.push(facts);
        self.bases
            .push(conds.iter().map(|c| c.text.clone()).collect());
        let i = self.containers.len() - 1;
        if let Some(noted) = self.noting.as_mut() {
            noted.push(i);
        }
        i
    }

    /// Conditions in `conds` that the container was not defined under.
    fn extra_conditions(&self, idx: usize, conds: &[NixExpr]) -> Vec<NixExpr> {
        let base = self.bases.get(idx).cloned().unwrap_or_default();
        conds
            .iter()
            .filter(|c| !base.contains(&c.text))
            .cloned()
            .collect()
    }

    fn container_warning(&mut self, idx: usize, w: Warning) {
        if let Some(c) = self.containers.get_mut(idx) {
            c.warnings.push(w);
        }
    }

    fn container_name(&self, idx: usize) -> String {
        self.containers
            .get(idx)
            .map(|c| c.container.clone())
            .unwrap_or_default()
    }

    fn set_option(&mut self, idx: usize, option: &str, value: Value, line: usize) {
        let origin = self.origin(line);
        let Some(facts) = self.containers.get_mut(idx) else {
            return;
        };
        if let Some(w) = add_option(facts, option, value, origin) {
            facts.warnings.push(w);
        }
    }

    /// Name `eval` in the warnings from now on.
    pub(super) fn set_eval(&mut self, eval: EvalCommand) {
        self.eval = eval;
    }

    /// Read `e` as a NixOS module (an inline module of a flake host).
    pub(super) fn visit_module(&mut self, e: ast::Expr, scope: Scope) {
        self.visit(e, scope, &[], Level::Module, true, 0)
    }

    // ---- the walk --------------------------------------------------------------------------

    fn visit(
        &mut self,
        e: ast::Expr,
        scope: Scope,
        conds: &[NixExpr],
        level: Level,
        top: bool,
        depth: usize,
    ) {
        if depth > MAX_DEPTH {
            self.dynamic(level, &e, "an expression nested too deeply to read");
            return;
        }
        if matches!(level, Level::Containers | Level::Container(_)) {
            self.covered.push(e.syntax().text_range());
        }
        let d = depth + 1;
        match e {
            ast::Expr::Paren(ref p) => match p.expr() {
                Some(inner) => self.visit(inner, scope, conds, level, top, d),
                None => self.dynamic(level, &e, "an empty expression"),
            },
            ast::Expr::LetIn(ref l) => {
                let s = self.push_rec_frame(l, scope);
                match l.body() {
                    Some(b) => self.visit(b, s, conds, level, top, d),
                    None => self.dynamic(level, &e, "a `let` without body"),
                }
            }
            ast::Expr::With(ref w) => match w.body() {
                Some(b) => self.visit(b, scope, conds, level, top, d),
                None => self.dynamic(level, &e, "a `with` without body"),
            },
            ast::Expr::Assert(ref a) => match a.body() {
                Some(b) => self.visit(b, scope, conds, level, top, d),
                None => self.dynamic(level, &e, "an `assert` without body"),
            },
            // A module (or a file holding a container) may be a function of its arguments.
            ast::Expr::Lambda(ref l) if top || matches!(level, Level::Module) => {
                self.module_level.set(matches!(level, Level::Module));
                let s = self.push_lambda_frame(l, scope);
                self.module_level.set(false);
                match l.body() {
                    Some(b) => self.visit(b, s, conds, level, top, d),
                    None => self.dynamic(level, &e, "a function without body"),
                }
            }
            ast::Expr::Ident(_) | ast::Expr::Select(_) => match self.deref(e.clone(), scope, d) {
                Some((v, s)) if v.syntax() != e.syntax() => {
                    self.visit(v, s, conds, level, false, d)
                }
                _ => self.dynamic(level, &e, "a value that is not in this file"),
            },
            ast::Expr::BinOp(ref b) if b.operator() == Some(ast::BinOpKind::Update) => {
                if let Some(l) = b.lhs() {
                    self.visit(l, scope, conds, level, false, d);
                }
                if let Some(r) = b.rhs() {
                    self.visit(r, scope, conds, level, false, d);
                }
            }
            ast::Expr::AttrSet(ref set) => {
                let s = if set.rec_token().is_some() {
                    self.push_rec_frame(set, scope)
                } else {
                    scope
                };
                self.attrset(set, s, conds, level, d);
            }
            ast::Expr::Apply(ref a) => self.apply(a, &e, scope, conds, level, d),
            ast::Expr::IfElse(_) => self.dynamic(level, &e, "`if … then … else …`"),
            _ => self.dynamic(level, &e, "an expression"),
        }
    }

    fn apply(
        &mut self,
        a: &ast::Apply,
        e: &ast::Expr,
        scope: Scope,
        conds: &[NixExpr],
        level: Level,
        depth: usize,
    ) {
        let Some((head, args)) = uncurry(a) else {
            self.dynamic(level, e, "a function call");
            return;
        };
        let name = head_name(&head).unwrap_or_default();
        match (name.as_str(), args.len()) {
            ("mkIf" | "optionalAttrs", 2) => {
                let mut c = conds.to_vec();
                c.push(self.nix_expr_in(args[0].syntax(), scope));
                self.visit(args[1].clone(), scope, &c, level, false, depth);
            }
            ("mkMerge", 1) => match self.deref(args[0].clone(), scope, depth) {
                Some((ast::Expr::List(list), s)) => {
                    for item in list.items() {
                        self.visit(item, s, conds, level, false, depth);
                    }
                }
                _ => self.dynamic(level, e, "`mkMerge` of a computed list"),
            },
            (
                "mkDefault" | "mkForce" | "mkOverride" | "mkOptionDefault" | "mkBefore" | "mkAfter"
                | "mkOrder",
                n,
            ) if n >= 1 => {
                if let Some(last) = args.last() {
                    self.visit(last.clone(), scope, conds, level, false, depth)
                }
            }
            ("import", n) if n >= 1 => match literal_path(&self.file, &unparen(args[0].clone())) {
                Some(path) => {
                    let role = match level {
                        Level::Module => ImportRole::Module,
                        Level::Containers => ImportRole::Containers,
                        Level::Container(idx) => ImportRole::Container(self.container_name(idx)),
                    };
                    let line = self.line(e.syntax());
                    self.imports.push(NixImport {
                        path,
                        line,
                        role,
                        condition: combine_conditions(conds),
                    });
                }
                None => self.dynamic(level, e, "an `import` of a computed path"),
            },
            ("mapAttrs", 2) if !matches!(level, Level::Module) => {
                if !self.map_attrs(&args[0], &args[1], scope, conds, depth) {
                    self.dynamic(level, e, "a call of `mapAttrs`")
                }
            }
            ("listToAttrs", 1) if !matches!(level, Level::Module) => {
                if !self.list_to_attrs(&args[0], scope, conds, depth) {
                    self.dynamic(level, e, "a call of `listToAttrs`")
                }
            }
            _ => {
                // A function of this file applied to its arguments (`dmzClient "web" { … }`):
                // read its body with the parameters bound to the arguments.
                let scoped: Vec<(ast::Expr, Scope)> =
                    args.iter().map(|a| (a.clone(), scope)).collect();
                if !matches!(level, Level::Module)
                    && let Some((body, s)) = self.beta(&head, scope, &scoped, depth)
                {
                    self.visit(body, s, conds, level, false, depth);
                    return;
                }
                let what = match name.as_str() {
                    "" => "a function call".to_string(),
                    n => format!("a call of `{n}`"),
                };
                self.dynamic(level, e, &what)
            }
        }
    }

    /// `f a b …` where `f` is a function of this file (through `let` bindings): its body with a
    /// frame binding each parameter to its argument (`{ x, y ? d, ... }@all` patterns take the
    /// entries of a literal set argument). `None` when `f` is not such a function, when an
    /// argument does not fit its pattern, or when arguments are missing (a partial
    /// application is a function, not a value).
    pub(super) fn beta(
        &mut self,
        head: &ast::Expr,
        scope: Scope,
        args: &[(ast::Expr, Scope)],
        depth: usize,
    ) -> Option<(ast::Expr, Scope)> {
        let (mut f, mut fscope) = self.deref(head.clone(), scope, depth + 1)?;
        for (arg, scope) in args {
            let scope = *scope;
            let ast::Expr::Lambda(l) = unparen(f.clone()) else {
                return None;
            };
            let mut names = HashMap::new();
            let id = self.frames.len();
            match l.param()? {
                ast::Param::IdentParam(p) => {
                    let n = p.ident()?.syntax().text().to_string();
                    names.insert(n, Binding::Expr(arg.clone(), scope));
                }
                ast::Param::Pattern(p) => {
                    let (set, sscope) = self.deref(arg.clone(), scope, depth + 1)?;
                    let ast::Expr::AttrSet(set) = set else {
                        return None;
                    };
                    if set.rec_token().is_some() {
                        return None;
                    }
                    for e in p.pat_entries() {
                        let n = e.ident()?.syntax().text().to_string();
                        let given = set.attrpath_values().find_map(|apv| {
                            let attrs: Vec<ast::Attr> = apv.attrpath()?.attrs().collect();
                            match attrs.as_slice() {
                                [a] if text::attr_name(a).as_deref() == Some(n.as_str()) => {
                                    apv.value()
                                }
                                _ => None,
                            }
                        });
                        let b = match (given, e.default()) {
                            (Some(v), _) => Binding::Expr(v, sscope),
                            // A default sees the other parameters.
                            (None, Some(d)) => Binding::Expr(d, Some(id)),
                            (None, None) => return None,
                        };
                        names.insert(n, b);
                    }
                    if let Some(i) = p.pat_bind().and_then(|b| b.ident()) {
                        names.insert(
                            i.syntax().text().to_string(),
                            Binding::Expr(arg.clone(), scope),
                        );
                    }
                }
            }
            self.frames.push(Frame {
                names,
                parent: fscope,
                module_args: false,
            });
            f = l.body()?;
            fscope = Some(id);
        }
        if matches!(unparen(f.clone()), ast::Expr::Lambda(_)) {
            return None;
        }
        Some((f, fscope))
    }

    /// `mapAttrs f { a = …; b = …; }` over a literal set: container `a` is `f "a" <value>`.
    fn map_attrs(
        &mut self,
        f: &ast::Expr,
        set: &ast::Expr,
        scope: Scope,
        conds: &[NixExpr],
        depth: usize,
    ) -> bool {
        let Some((ast::Expr::AttrSet(set), sscope)) = self.deref(set.clone(), scope, depth + 1)
        else {
            return false;
        };
        if set.rec_token().is_some() || set.inherits().next().is_some() {
            return false;
        }
        let mut entries = Vec::new();
        for apv in set.attrpath_values() {
            let attrs: Vec<ast::Attr> = apv
                .attrpath()
                .map(|p| p.attrs().collect())
                .unwrap_or_default();
            let ([a], Some(v)) = (attrs.as_slice(), apv.value()) else {
                return false;
            };
            let Some(n) = self.attr_name_in(a, sscope) else {
                return false;
            };
            entries.push((n, v));
        }
        for (n, v) in entries {
            // The name is a string the source states only as an attribute name: a literal.
            let Some(name_expr) = string_expr(&n) else {
                return false;
            };
            // Arguments in their own scopes: the name is closed, the value is the set's.
            let args = [(name_expr, None), (v, sscope)];
            let Some((body, s)) = self.beta(f, scope, &args, depth) else {
                return false;
            };
            let idx = self.container(&n, conds);
            self.visit(body, s, conds, Level::Container(idx), false, depth + 1);
        }
        true
    }

    /// `listToAttrs (map f [ … ])` over a literal list, `f` returning `{ name = "…"; value = …; }`.
    fn list_to_attrs(
        &mut self,
        arg: &ast::Expr,
        scope: Scope,
        conds: &[NixExpr],
        depth: usize,
    ) -> bool {
        let Some((ast::Expr::Apply(a), s)) = self.deref(arg.clone(), scope, depth + 1) else {
            return false;
        };
        let Some((head, margs)) = uncurry(&a) else {
            return false;
        };
        if head_name(&head).as_deref() != Some("map") || margs.len() != 2 {
            return false;
        }
        let Some((ast::Expr::List(list), ls)) = self.deref(margs[1].clone(), s, depth + 1) else {
            return false;
        };
        let items: Vec<ast::Expr> = list.items().collect();
        let mut found = Vec::new();
        for item in items {
            let Some((body, bs)) = self.beta(&margs[0], s, &[(item, ls)], depth) else {
                return false;
            };
            let Some((ast::Expr::AttrSet(pair), ps)) = self.deref(body, bs, depth + 1) else {
                return false;
            };
            let get = |k: &str| {
                pair.attrpath_values().find_map(|apv| {
                    let attrs: Vec<ast::Attr> = apv.attrpath()?.attrs().collect();
                    match attrs.as_slice() {
                        [a] if text::attr_name(a).as_deref() == Some(k) => apv.value(),
                        _ => None,
                    }
                })
            };
            let (Some(n), Some(v)) = (get("name"), get("value")) else {
                return false;
            };
            let Some(Value::Str(n)) = self.try_value(&n, ps, depth + 1) else {
                return false;
            };
            found.push((n, v, ps));
        }
        for (n, v, ps) in found {
            let idx = self.container(&n, conds);
            self.visit(v, ps, conds, Level::Container(idx), false, depth + 1);
        }
        true
    }

    fn attrset(
        &mut self,
        set: &ast::AttrSet,
        scope: Scope,
        conds: &[NixExpr],
        level: Level,
        depth: usize,
    ) {
        for entry in set.entries() {
            match entry {
                ast::Entry::AttrpathValue(apv) => {
                    let attrs: Vec<ast::Attr> = apv
                        .attrpath()
                        .map(|p| p.attrs().collect())
                        .unwrap_or_default();
                    if let Some(value) = apv.value() {
                        self.path_entry(level, &attrs, value, scope, conds, depth);
                    }
                }
                ast::Entry::Inherit(inh) => self.inherit_entry(level, &inh, scope, conds, depth),
            }
        }
    }

    fn path_entry(
        &mut self,
        level: Level,
        attrs: &[ast::Attr],
        value: ast::Expr,
        scope: Scope,
        conds: &[NixExpr],
        depth: usize,
    ) {
        let Some((first, rest)) = attrs.split_first() else {
            return;
        };
        let d = depth + 1;
        match level {
            Level::Module => {
                let Some(name) = text::attr_name(first) else {
                    if mentions_containers(value.syntax()) {
                        self.dynamic(level, &value, "a computed attribute name");
                    }
                    return;
                };
                if name == "containers" {
                    self.covered.push(first.syntax().text_range());
                    self.covered.push(value.syntax().text_range());
                }
                match (name.as_str(), rest.is_empty()) {
                    ("containers", true) => {
                        let mut peeled = Vec::new();
                        let inner = unparen(self.peel_conditions(value.clone(), &mut peeled));
                        if !matches!(inner, ast::Expr::AttrSet(_)) {
                            let e = self.nix_expr_in(inner.syntax(), scope);
                            self.container_sets.push(e);
                        }
                        self.visit(value, scope, conds, Level::Containers, false, d)
                    }
                    ("containers", false) => {
                        self.path_entry(Level::Containers, rest, value, scope, conds, d)
                    }
                    ("config", true) => self.visit(value, scope, conds, Level::Module, false, d),
                    ("config", false) => {
                        self.path_entry(Level::Module, rest, value, scope, conds, d)
                    }
                    ("imports", true) => self.imports(value, scope, conds, d),
                    _ => {}
                }
            }
            Level::Containers => {
                let Some(name) = self.attr_name_in(first, scope) else {
                    let line = self.line(first.syntax());
                    let text = first.syntax().to_string();
                    self.dynamic_at(
                        line,
                        &format!("a container whose name is computed (`containers.{text}`)"),
                    );
                    return;
                };
                // The binding this attribute path belongs to (`containers.x… = …;` or the
                // member `x… = …;` of a set of containers), for `migrate --rewrite`.
                if let Some(apv) = first.syntax().parent().and_then(|p| p.parent())
                    && apv.kind() == rnix::SyntaxKind::NODE_ATTRPATH_VALUE
                {
                    let range = apv.text_range();
                    self.sites.push(super::DefinitionSite {
                        container: name.clone(),
                        file: self.file.clone(),
                        start: usize::from(range.start()),
                        end: usize::from(range.end()),
                        line: self.line(&apv),
                        in_module: self.start_is_module,
                    });
                }
                if rest.is_empty() {
                    // `containers.x = lib.mkIf c { … }`: the condition is the container's.
                    let mut c = conds.to_vec();
                    let inner = self.peel_conditions(value, &mut c);
                    let idx = self.container(&name, &c);
                    self.visit(inner, scope, &c, Level::Container(idx), false, d);
                } else {
                    let idx = self.container(&name, conds);
                    self.container_entry(idx, rest, value, scope, conds, d);
                }
            }
            Level::Container(idx) => self.container_entry(idx, attrs, value, scope, conds, d),
        }
    }

    fn peel_conditions(&mut self, mut e: ast::Expr, conds: &mut Vec<NixExpr>) -> ast::Expr {
        for _ in 0..MAX_DEPTH {
            let inner = unparen(e.clone());
            let ast::Expr::Apply(a) = &inner else {
                return e;
            };
            let Some((head, args)) = uncurry(a) else {
                return e;
            };
            match (head_name(&head).as_deref(), args.len()) {
                (Some("mkIf" | "optionalAttrs"), 2) => {
                    conds.push(self.nix_expr(args[0].syntax()));
                    e = args[1].clone();
                }
                _ => return e,
            }
        }
        e
    }

    fn container_entry(
        &mut self,
        idx: usize,
        attrs: &[ast::Attr],
        value: ast::Expr,
        scope: Scope,
        conds: &[NixExpr],
        depth: usize,
    ) {
        let Some((first, rest)) = attrs.split_first() else {
            return;
        };
        let cname = self.container_name(idx);
        let line = self.line(first.syntax());
        let names: Option<Vec<String>> =
            attrs.iter().map(|a| self.attr_name_in(a, scope)).collect();
        // `bindMounts."${secret}".isReadOnly = true;`: an option the module takes as it is
        // (CARRIED_AS_NIX) is carried as Nix with the computed name inside it, as it would be
        // when written `bindMounts = { "${secret}".isReadOnly = true; };`.
        if names.is_none()
            && conds.is_empty()
            && let Some(option) = text::attr_name(first)
            && option == "bindMounts"
            && !rest.is_empty()
            && let Some(binding) = value.syntax().parent()
        {
            let mut e = self.nix_expr_in(&binding, scope);
            let path: Vec<String> = rest.iter().map(|a| a.syntax().to_string()).collect();
            e.text = format!("{{ {} = {}; }}", path.join("."), value.syntax());
            e.column = 1;
            self.set_option(idx, &option, Value::Expr(e), line);
            return;
        }
        let Some(names) = names else {
            let path: Vec<String> = attrs.iter().map(|a| a.syntax().to_string()).collect();
            let w = self.at(
                Warning::new(
                    &NIX_DYNAMIC_CONTAINER,
                    format!("containers.{}", nixtext::attr_name(&cname)),
                    format!(
                        "{}: the option name `{}` of container {cname} is computed, so its value \
                         cannot be read from the source. {}",
                        self.loc(line),
                        path.join("."),
                        self.eval.advice()
                    ),
                ),
                line,
            );
            self.container_warning(idx, w);
            return;
        };
        let option = names[0].clone();
        let opt_path = format!(
            "containers.{}.{}",
            nixtext::attr_name(&cname),
            names
                .iter()
                .map(|n| nixtext::attr_name(n))
                .collect::<Vec<_>>()
                .join(".")
        );
        let extra = self.extra_conditions(idx, conds);
        // `specialArgs = { inherit inputs; … }` is code handed to the guest's evaluation: kept
        // verbatim (with the bindings it needs) like `config`, not read as data.
        if option == "specialArgs" && names.len() == 1 && extra.is_empty() {
            let expr = self.nix_expr_in(value.syntax(), scope);
            self.set_option(idx, "specialArgs", Value::Expr(expr), line);
            return;
        }
        if option == "config" {
            let mut expr = self.nix_expr_in(value.syntax(), scope);
            if !rest.is_empty() {
                let path: Vec<String> = names[1..].iter().map(|n| nixtext::attr_name(n)).collect();
                expr.text = format!("{{ {} = {}; }}", path.join("."), expr.text);
                expr.column = 1;
            }
            if !extra.is_empty() {
                let cond = combine_conditions(&extra)
                    .map(|c| c.text)
                    .unwrap_or_default();
                let w = self.at(
                    Warning::new(
                        &NIX_DYNAMIC_CONTAINER,
                        opt_path.clone(),
                        format!(
                            "{}: part of the guest configuration of container {cname} applies \
                             only when `{}`; it was read as if it always applied. Check that \
                             part of the migrated `config` by hand.",
                            self.loc(line),
                            short(&cond)
                        ),
                    ),
                    line,
                );
                self.container_warning(idx, w);
            }
            if text::has_relative_path(value.syntax()) {
                let dir = self
                    .file
                    .parent()
                    .unwrap_or(Path::new("/"))
                    .display()
                    .to_string();
                let w = self.at(
                    Warning::new(
                        &NIX_RELATIVE_PATH,
                        opt_path.clone(),
                        format!(
                            "{}: the guest configuration of container {cname} uses relative \
                             paths, which are relative to {dir}; keep them pointing there when \
                             the text moves to another file",
                            self.loc(line)
                        ),
                    ),
                    line,
                );
                self.container_warning(idx, w);
            }
            self.set_option(idx, "config", Value::Expr(expr), line);
            return;
        }
        let mut v = self.value(&value, scope, depth);
        if !extra.is_empty() {
            let mut all = extra.clone();
            all.push(self.nix_expr_in(value.syntax(), scope));
            let cond = combine_conditions(&extra)
                .map(|c| c.text)
                .unwrap_or_default();
            let mut e = NixExpr::plain(
                format!("lib.mkIf ({cond}) ({})", value.syntax()),
                self.origin(line),
                1,
                vec!["lib".to_string()],
            );
            e.absorb(&all);
            v = Value::Expr(e);
        }
        if contains_expr(&v)
            && !matches!(option.as_str(), "nixpkgs" | "specialArgs")
            && !super::CARRIED_AS_NIX.contains(&option.as_str())
        {
            let text = short(&value.syntax().to_string());
            let w = self.at(
                Warning::new(
                    &NIX_UNRESOLVED_VALUE,
                    opt_path.clone(),
                    format!(
                        "{}: `{opt_path} = {text}` is computed by Nix code, so its value cannot \
                         be read from the source, and {}. {}",
                        self.loc(line),
                        super::why_value_needed(&option),
                        self.eval.advice()
                    ),
                ),
                line,
            );
            self.container_warning(idx, w);
        }
        for n in names[1..].iter().rev() {
            let mut m = BTreeMap::new();
            m.insert(n.clone(), v);
            v = Value::Attrs(m);
        }
        self.set_option(idx, &option, v, line);
    }

    fn inherit_entry(
        &mut self,
        level: Level,
        inh: &ast::Inherit,
        scope: Scope,
        conds: &[NixExpr],
        depth: usize,
    ) {
        let line = self.line(inh.syntax());
        let names: Vec<Option<String>> = inh.attrs().map(|a| text::attr_name(&a)).collect();
        match level {
            Level::Module => {
                if names
                    .iter()
                    .any(|n| matches!(n.as_deref(), Some("containers" | "config" | "imports")))
                {
                    // What the inherited names are bound to is warned about here, not again.
                    if inh.from().is_none() {
                        for n in names.iter().flatten() {
                            if let Some(Binding::Expr(v, _)) = self.lookup(scope, n) {
                                self.covered.push(v.syntax().text_range());
                            }
                        }
                    }
                    self.dynamic_at(
                        line,
                        &format!("`{}` at module level", short(&inh.syntax().to_string())),
                    );
                }
            }
            Level::Containers => {
                for n in names {
                    let Some(n) = n else {
                        self.dynamic_at(line, "an `inherit` of a computed name in `containers`");
                        continue;
                    };
                    let target = match inh.from().and_then(|f| f.expr()) {
                        Some(f) => self.select(f, std::slice::from_ref(&n), scope, depth),
                        None => ident_named(inh, &n)
                            .and_then(|i| self.deref(ast::Expr::Ident(i), scope, depth)),
                    };
                    let idx = self.container(&n, conds);
                    match target {
                        Some((e, s)) => {
                            self.visit(e, s, conds, Level::Container(idx), false, depth)
                        }
                        None => {
                            let w = self.at(
                                Warning::new(
                                    &NIX_DYNAMIC_CONTAINER,
                                    format!("containers.{}", nixtext::attr_name(&n)),
                                    format!(
                                        "{}: container {n} is defined by `{}`, whose value is not \
                                         in this file, so its options cannot be read from the \
                                         source. {}",
                                        self.loc(line),
                                        short(&inh.syntax().to_string()),
                                        self.eval.advice()
                                    ),
                                ),
                                line,
                            );
                            self.container_warning(idx, w);
                        }
                    }
                }
            }
            Level::Container(idx) => {
                let cname = self.container_name(idx);
                for n in names.into_iter().flatten() {
                    let v = self.inherited_value(inh, &n, scope, depth);
                    if contains_expr(&v)
                        && !matches!(n.as_str(), "config" | "nixpkgs" | "specialArgs")
                        && !super::CARRIED_AS_NIX.contains(&n.as_str())
                    {
                        let opt = format!("containers.{}.{}", nixtext::attr_name(&cname), n);
                        let w = self.at(
                            Warning::new(
                                &NIX_UNRESOLVED_VALUE,
                                opt.clone(),
                                format!(
                                    "{}: `{opt}` comes from `{}`, whose value is not in this \
                                     file, and {}. {}",
                                    self.loc(line),
                                    short(&inh.syntax().to_string()),
                                    super::why_value_needed(&n),
                                    self.eval.advice()
                                ),
                            ),
                            line,
                        );
                        self.container_warning(idx, w);
                    }
                    self.set_option(idx, &n, v, line);
                }
            }
        }
    }

    fn imports(&mut self, value: ast::Expr, scope: Scope, conds: &[NixExpr], depth: usize) {
        if depth > MAX_DEPTH {
            return;
        }
        let d = depth + 1;
        let Some((v, s)) = self.deref(value.clone(), scope, d) else {
            self.import_not_followed(&value);
            return;
        };
        match v {
            ast::Expr::List(list) => {
                for item in list.items() {
                    self.import_item(item, s, conds, d);
                }
            }
            ast::Expr::BinOp(ref b) if b.operator() == Some(ast::BinOpKind::Concat) => {
                if let Some(l) = b.lhs() {
                    self.imports(l, s, conds, d);
                }
                if let Some(r) = b.rhs() {
                    self.imports(r, s, conds, d);
                }
            }
            ast::Expr::Apply(ref a) => {
                let parts = uncurry(a);
                match parts.as_ref().map(|(h, args)| (head_name(h), args.len())) {
                    Some((Some(n), 2)) if n == "optionals" || n == "mkIf" => {
                        let args = parts.map(|p| p.1).unwrap_or_default();
                        let mut c = conds.to_vec();
                        c.push(self.nix_expr(args[0].syntax()));
                        self.imports(args[1].clone(), s, &c, d);
                    }
                    _ => self.import_not_followed(&value),
                }
            }
            _ => self.import_not_followed(&value),
        }
    }

    fn import_item(&mut self, item: ast::Expr, scope: Scope, conds: &[NixExpr], depth: usize) {
        let line = self.line(item.syntax());
        let original = item.clone();
        let Some((v, s)) = self.deref(item.clone(), scope, depth) else {
            if !is_flake_module(&item) {
                self.import_not_followed(&original);
            }
            return;
        };
        let condition = combine_conditions(conds);
        match v {
            ast::Expr::PathSearch(_) => {}
            ast::Expr::PathRel(_) | ast::Expr::PathAbs(_) | ast::Expr::Str(_) => {
                match literal_path(&self.file, &v) {
                    Some(path) => self.imports.push(NixImport {
                        path,
                        line,
                        role: ImportRole::Module,
                        condition,
                    }),
                    None => self.import_not_followed(&original),
                }
            }
            ast::Expr::Apply(ref a) => {
                let parts = uncurry(a);
                let path = parts.as_ref().and_then(|(h, args)| {
                    (head_name(h).as_deref() == Some("import"))
                        .then(|| {
                            args.first()
                                .and_then(|p| literal_path(&self.file, &unparen(p.clone())))
                        })
                        .flatten()
                });
                match path {
                    Some(path) => self.imports.push(NixImport {
                        path,
                        line,
                        role: ImportRole::Module,
                        condition,
                    }),
                    None => self.import_not_followed(&original),
                }
            }
            ast::Expr::AttrSet(_) | ast::Expr::Lambda(_) => {
                self.visit(v, s, conds, Level::Module, true, depth + 1)
            }
            _ => {
                if !is_flake_module(&original) {
                    self.import_not_followed(&original)
                }
            }
        }
    }

    fn import_not_followed(&mut self, e: &ast::Expr) {
        let line = self.line(e.syntax());
        let text = short(&e.syntax().to_string());
        let w = self.at(
            Warning::new(
                &NIX_IMPORT_NOT_FOLLOWED,
                "imports",
                format!(
                    "{}: the import `{text}` is not a literal path, so it was not read; \
                     containers it defines are missing from this reading. {}",
                    self.loc(line),
                    self.eval.advice()
                ),
            ),
            line,
        );
        self.problems.push(w);
    }

    fn dynamic_at(&mut self, line: usize, what: &str) {
        let w = self.at(
            Warning::new(
                &NIX_DYNAMIC_CONTAINERS,
                "containers",
                format!(
                    "{}: found {what}; containers built by Nix code cannot be read from the \
                     source. {}",
                    self.loc(line),
                    self.eval.advice()
                ),
            ),
            line,
        );
        self.problems.push(w);
    }

    fn dynamic(&mut self, level: Level, e: &ast::Expr, what: &str) {
        let line = self.line(e.syntax());
        let text = short(&e.syntax().to_string());
        match level {
            Level::Module => {
                // Module code that cannot be read matters only if it may define containers.
                if mentions_containers(e.syntax()) {
                    self.covered.push(e.syntax().text_range());
                    self.dynamic_at(
                        line,
                        &format!("{what} (`{text}`) that may define containers"),
                    );
                }
            }
            Level::Containers => self.dynamic_at(line, &format!("{what} (`{text}`)")),
            Level::Container(idx) => {
                let cname = self.container_name(idx);
                let w = self.at(
                    Warning::new(
                        &NIX_DYNAMIC_CONTAINER,
                        format!("containers.{}", nixtext::attr_name(&cname)),
                        format!(
                            "{}: (part of) container {cname} is defined by {what} (`{text}`), \
                             which cannot be read from the source. {}",
                            self.loc(line),
                            self.eval.advice()
                        ),
                    ),
                    line,
                );
                self.container_warning(idx, w);
            }
        }
    }
}

/// A string literal expression for `s` (a tree of its own: only its text is used).
fn string_expr(s: &str) -> Option<ast::Expr> {
    rnix::Root::parse(&nixtext::string_literal(s)).tree().expr()
}

/// Third-party modules from flake inputs (`inputs.sops-nix.nixosModules.sops`) define no
/// containers of the host; they are skipped like `<nixpkgs/…>` imports.
///
/// `modulesPath + "/…"` names a module of nixpkgs itself (as `<nixpkgs/nixos/modules/…>`).
pub(super) fn is_flake_module(e: &ast::Expr) -> bool {
    let t = e.syntax().to_string();
    match unparen(e.clone()) {
        ast::Expr::Select(_) => t.contains(".nixosModules.") || t.starts_with("inputs."),
        ast::Expr::BinOp(b) if b.operator() == Some(ast::BinOpKind::Add) => {
            matches!(b.lhs(), Some(ast::Expr::Ident(i)) if i.syntax().text() == "modulesPath")
        }
        _ => false,
    }
}

/// The identifier node `name` inside an `inherit`.
fn ident_named(inh: &ast::Inherit, name: &str) -> Option<ast::Ident> {
    inh.attrs().find_map(|a| match a {
        ast::Attr::Ident(i) if i.syntax().text() == name => Some(i),
        _ => None,
    })
}

pub(crate) fn contains_expr(v: &Value) -> bool {
    match v {
        Value::Expr(_) => true,
        Value::List(l) => l.iter().any(contains_expr),
        Value::Attrs(m) => m.values().any(contains_expr),
        _ => false,
    }
}

fn insert_path(map: &mut BTreeMap<String, Value>, path: &[String], v: Value) -> Result<(), ()> {
    let Some((first, rest)) = path.split_first() else {
        return Err(());
    };
    if rest.is_empty() {
        match map.remove(first) {
            None => {
                map.insert(first.clone(), v);
                Ok(())
            }
            Some(old) => match merge_values(old, v) {
                Ok(m) => {
                    map.insert(first.clone(), m);
                    Ok(())
                }
                Err(both) => {
                    let (old, _) = *both;
                    map.insert(first.clone(), old);
                    Err(())
                }
            },
        }
    } else {
        let entry = map
            .entry(first.clone())
            .or_insert_with(|| Value::Attrs(BTreeMap::new()));
        match entry {
            Value::Attrs(inner) => insert_path(inner, rest, v),
            _ => Err(()),
        }
    }
}

/// Combine two definitions of one option as the module system would: attribute sets merge,
/// lists concatenate, equal values agree. `Err` gives both back when they conflict.
pub(crate) fn merge_values(a: Value, b: Value) -> Result<Value, Box<(Value, Value)>> {
    match (a, b) {
        (Value::Attrs(mut x), Value::Attrs(y)) => {
            let mut conflict = false;
            for (k, v) in y {
                match x.remove(&k) {
                    None => {
                        x.insert(k, v);
                    }
                    Some(old) => match merge_values(old, v) {
                        Ok(m) => {
                            x.insert(k, m);
                        }
                        Err(both) => {
                            let (old, _) = *both;
                            conflict = true;
                            x.insert(k, old);
                        }
                    },
                }
            }
            if conflict {
                Err(Box::new((Value::Attrs(x), Value::Null)))
            } else {
                Ok(Value::Attrs(x))
            }
        }
        (Value::List(mut x), Value::List(y)) => {
            x.extend(y);
            Ok(Value::List(x))
        }
        (a, b) if a == b => Ok(a),
        (a, b) => Err(Box::new((a, b))),
    }
}

/// Two guest `config` modules of one container as one module.
pub(crate) fn combine_modules(a: &NixExpr, b: &NixExpr) -> NixExpr {
    let mut e = NixExpr::plain(
        format!(
            "{{\n  imports = [\n    ({})\n    ({})\n  ];\n}}",
            a.text, b.text
        ),
        a.origin.clone(),
        1,
        Vec::new(),
    );
    e.absorb([a, b]);
    e
}

/// Add one definition of `option` to `facts`, merging with what is there. Returns a warning
/// when the definitions conflict (the first one is kept).
pub(crate) fn add_option(
    facts: &mut SourceFacts,
    option: &str,
    value: Value,
    origin: Origin,
) -> Option<Warning> {
    let Some((old, old_origin)) = facts.options.remove(option) else {
        facts.options.insert(option.to_string(), (value, origin));
        return None;
    };
    if option == "config"
        && let (Value::Expr(a), Value::Expr(b)) = (&old, &value)
    {
        let c = combine_modules(a, b);
        facts
            .options
            .insert(option.to_string(), (Value::Expr(c), old_origin));
        return None;
    }
    // An option carried as Nix (`bindMounts`) defined twice, one part computed: both parts
    // go to the module as they are, merged the way the module system merges them.
    if option == "bindMounts" && (matches!(old, Value::Expr(_)) || matches!(value, Value::Expr(_)))
    {
        let as_expr = |v: &Value| match v {
            Value::Expr(e) => e.clone(),
            other => {
                let mut e = NixExpr::plain(
                    crate::legacy::merge::value_to_nix(other),
                    old_origin.clone(),
                    1,
                    Vec::new(),
                );
                let mut parts = Vec::new();
                crate::legacy::merge::nested_exprs(other, &mut parts);
                e.absorb(parts);
                e
            }
        };
        let (a, b) = (as_expr(&old), as_expr(&value));
        let mut e = NixExpr::plain(
            format!("lib.mkMerge [\n  ({})\n  ({})\n]", a.text, b.text),
            old_origin.clone(),
            1,
            vec!["lib".to_string()],
        );
        e.absorb([&a, &b]);
        facts
            .options
            .insert(option.to_string(), (Value::Expr(e), old_origin));
        return None;
    }
    let shown = describe(&value);
    match merge_values(old, value) {
        Ok(m) => {
            facts.options.insert(option.to_string(), (m, old_origin));
            None
        }
        Err(both) => {
            let (old, _) = *both;
            let w = Warning::new(
                &NIX_CONFLICTING_DEFINITIONS,
                format!(
                    "containers.{}.{}",
                    nixtext::attr_name(&facts.container),
                    option
                ),
                format!(
                    "{} defines `{option}` of container {} as {}, and {} defines it again as \
                     {shown}; the first definition was kept. Check which one is in effect \
                     (`mkForce`/`mkDefault` decide) and fix the configuration",
                    old_origin.location(),
                    facts.container,
                    describe(&old),
                    origin.location()
                ),
            )
            .at(origin.file.clone(), origin.line);
            facts.options.insert(option.to_string(), (old, old_origin));
            Some(w)
        }
    }
}

fn describe(v: &Value) -> String {
    match v {
        Value::Expr(e) => format!("`{}`", short(&e.text)),
        other => serde_json::to_string(other).unwrap_or_else(|_| "a value".to_string()),
    }
}

/// One condition from several nested ones (`(a) && (b)`).
pub(crate) fn combine_conditions(conds: &[NixExpr]) -> Option<NixExpr> {
    match conds {
        [] => None,
        [one] => Some(one.clone()),
        [first, ..] => {
            let mut e = NixExpr::plain(
                conds
                    .iter()
                    .map(|c| format!("({})", c.text))
                    .collect::<Vec<_>>()
                    .join(" && "),
                first.origin.clone(),
                1,
                Vec::new(),
            );
            e.absorb(conds);
            Some(e)
        }
    }
}

/// Module code we cannot read matters when it may define containers: it names them (any case,
/// so `mkContainer` counts too).
fn mentions_containers(node: &rnix::SyntaxNode) -> bool {
    node.to_string().to_ascii_lowercase().contains("container")
}

// ---- the final sweep ---------------------------------------------------------------------

/// Where a `containers` attribute found by the sweep sits.
struct Context {
    /// Outer to inner: the attribute paths and calls around it, for messages.
    trail: Vec<String>,
    scope: Scope,
    conds: Vec<NixExpr>,
    /// Right under an option whose own `containers` is not the legacy one.
    other: bool,
}

impl Extract<'_> {
    /// After the walk: every `containers.<name>` / `containers = …` / `config.containers…`
    /// attribute anywhere in the file that the walk did not read is read as the module it sits
    /// in (a flake-parts `flake.modules.nixos.x`, a `nixosModules.x`, …), with a note on each
    /// container saying where it was found; what still yields nothing is a warning at its
    /// line. Nothing is dropped silently.
    pub(crate) fn sweep(&mut self, root: &ast::Expr) {
        let apvs: Vec<ast::AttrpathValue> = root
            .syntax()
            .descendants()
            .filter_map(ast::AttrpathValue::cast)
            .collect();
        for apv in apvs {
            let attrs: Vec<ast::Attr> = apv
                .attrpath()
                .map(|p| p.attrs().collect())
                .unwrap_or_default();
            let names: Vec<Option<String>> = attrs.iter().map(text::attr_name).collect();
            let at = match names.as_slice() {
                [Some(c), ..] if c == "containers" => 0,
                [Some(cfg), Some(c), ..] if cfg == "config" && c == "containers" => 1,
                _ => continue,
            };
            let Some(value) = apv.value() else { continue };
            let covered = |r: rowan::TextRange| self.covered.iter().any(|c| c.contains_range(r));
            if covered(attrs[at].syntax().text_range()) || covered(value.syntax().text_range()) {
                continue;
            }
            // `containers = { };` defines nothing.
            if let ast::Expr::AttrSet(s) = unparen(value.clone())
                && s.entries().next().is_none()
            {
                continue;
            }
            if !super::fragment::may_define_containers(&names[at + 1..], &value) {
                continue;
            }
            let ctx = self.context_of(&apv);
            if ctx.other {
                continue;
            }
            // `let containers = { web = { … }; };` that nothing read: said, not read (a `let`
            // binding is not a definition, and guessing its use could be wrong).
            let binding =
                apv.syntax().parent().map(|p| p.kind()) != Some(rnix::SyntaxKind::NODE_ATTR_SET);
            if binding {
                if at == 0 && attrs.len() == 1 && super::fragment::containers_in(&value).is_some() {
                    let line = self.line(apv.syntax());
                    self.not_read(
                        &apv,
                        line,
                        "in a `let` binding that this reading did not use",
                    );
                }
                continue;
            }
            let line = self.line(apv.syntax());
            let where_ = if ctx.trail.is_empty() {
                "in an expression of this file".to_string()
            } else {
                format!("inside {}", ctx.trail.join(" → "))
            };
            let problems_before = self.problems.len();
            self.noting = Some(Vec::new());
            self.path_entry(Level::Module, &attrs, value, ctx.scope, &ctx.conds, 0);
            self.covered.push(apv.syntax().text_range());
            let noted = self.noting.take().unwrap_or_default();
            for idx in &noted {
                let cname = self.container_name(*idx);
                let w = self.at(
                    Warning::new(
                        &NIX_NESTED_CONTAINERS,
                        format!("containers.{}", nixtext::attr_name(&cname)),
                        format!(
                            "{}: container {cname} is defined {where_}, a module nested in this \
                             file rather than the file's own top level; it was read as if the \
                             host imported that module. Check that the host really uses it \
                             (and remove the definition there once migrated)",
                            self.loc(line)
                        ),
                    ),
                    line,
                );
                self.container_warning(*idx, w);
            }
            if !ctx.trail.is_empty() {
                for w in &mut self.problems[problems_before..] {
                    w.message.push_str(&format!(
                        "\n(This definition sits {where_}, nested in the file.)"
                    ));
                }
            }
            if noted.is_empty() && self.problems.len() == problems_before {
                self.not_read(&apv, line, &where_);
            }
        }
    }

    fn not_read(&mut self, apv: &ast::AttrpathValue, line: usize, where_: &str) {
        let text = short(&apv.syntax().to_string());
        let w = self.at(
            Warning::new(
                &NIX_CONTAINERS_NOT_READ,
                "containers",
                format!(
                    "{}: `{text}` {where_} defines containers that this reading did not turn \
                     into definitions. Pass the host configuration that uses it with --config, \
                     or evaluate the host's containers. {}",
                    self.loc(line),
                    self.eval.advice()
                ),
            ),
            line,
        );
        self.problems.push(w);
    }

    /// The scope, conditions and description of where `apv` sits: `let`s, functions and
    /// `rec` sets around it are entered (outermost first) so its names resolve as in the walk.
    fn context_of(&mut self, apv: &ast::AttrpathValue) -> Context {
        let mut outer: Vec<rnix::SyntaxNode> = apv.syntax().ancestors().skip(1).collect();
        // The option right around this one (`virtualisation.oci-containers = { containers… }`).
        let other = outer
            .iter()
            .find_map(|n| ast::AttrpathValue::cast(n.clone()))
            .and_then(|p| p.attrpath()?.attrs().last())
            .and_then(|a| text::attr_name(&a))
            .is_some_and(|last| super::fragment::OTHER_CONTAINERS_PARENTS.contains(&last.as_str()));
        outer.reverse();
        let mut scope = None;
        let mut conds = Vec::new();
        let mut trail = Vec::new();
        let inner = apv.syntax().text_range();
        for n in &outer {
            if let Some(l) = ast::LetIn::cast(n.clone()) {
                scope = self.push_rec_frame(&l, scope);
            } else if let Some(l) = ast::Lambda::cast(n.clone()) {
                scope = self.push_lambda_frame(&l, scope);
            } else if let Some(s) = ast::AttrSet::cast(n.clone()) {
                if s.rec_token().is_some() {
                    scope = self.push_rec_frame(&s, scope);
                }
            } else if let Some(p) = ast::AttrpathValue::cast(n.clone()) {
                if let Some(path) = p.attrpath() {
                    trail.push(format!("`{}`", path.syntax()));
                }
            } else if let Some(a) = ast::Apply::cast(n.clone()) {
                // Only the outermost application of a curried call.
                if n.parent().and_then(ast::Apply::cast).is_some_and(|p| {
                    p.lambda()
                        .is_some_and(|l| l.syntax().text_range() == n.text_range())
                }) {
                    continue;
                }
                let Some((head, args)) = uncurry(&a) else {
                    continue;
                };
                match (head_name(&head).as_deref(), args.len()) {
                    (Some("mkIf" | "optionalAttrs"), 2)
                        if args[1].syntax().text_range().contains_range(inner) =>
                    {
                        conds.push(self.nix_expr(args[0].syntax()))
                    }
                    (Some("mkIf" | "optionalAttrs" | "mkMerge"), _) => {}
                    (Some(h), _) => trail.push(format!("a call of `{h}`")),
                    (None, _) => trail.push("a function call".to_string()),
                }
            }
        }
        Context {
            trail,
            scope,
            conds,
            other,
        }
    }
}
