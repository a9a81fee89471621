//! Flake hosts: which files `/etc/nixos/flake.nix` makes a host read, from
//! `nixosConfigurations.<host> = nixpkgs.lib.nixosSystem { modules = [ … ]; }`.

use super::extract::{self, Extract, Scope, head_name, is_flake_module, uncurry, unparen};
use super::text::{self, MAX_DEPTH};
use super::{
    EvalCommand, NIX_DYNAMIC_CONTAINERS, NIX_FILE_UNREADABLE, NIX_FLAKE_MODULES_DYNAMIC,
    NIX_FLAKE_SEVERAL_HOSTS, SourceFs,
};
use crate::legacy::model::SourceFacts;
use crate::warnings::Warning;
use rnix::ast::{self, HasEntry};
use rowan::ast::AstNode;
use std::path::{Path, PathBuf};

/// What a flake says about the host's configuration.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FlakeResult {
    /// Module files to read with [`super::read_config_tree_with`], in order.
    pub entries: Vec<PathBuf>,
    pub problems: Vec<Warning>,
    /// Containers defined in inline modules of `modules = [ { containers… } ]` in flake.nix.
    pub facts: Vec<SourceFacts>,
    /// The hosts whose modules were read.
    pub hosts: Vec<String>,
    /// The command to name in warnings about the entries (set when one host was read).
    pub eval_command: Option<EvalCommand>,
}

struct Host {
    name: String,
    value: ast::Expr,
    scope: Scope,
    line: usize,
}

struct Walk<'t> {
    ex: Extract<'t>,
    hosts: Vec<Host>,
    /// `nixosConfigurations` built by code: (line, text).
    dynamic: Vec<(usize, String)>,
}

fn short(t: &str) -> String {
    let one: String = t.split_whitespace().collect::<Vec<_>>().join(" ");
    if one.chars().count() > 72 {
        format!("{}…", one.chars().take(69).collect::<String>())
    } else {
        one
    }
}

impl Walk<'_> {
    /// Record `node` as a place where `nixosConfigurations` is built by code.
    fn dynamic_at(&mut self, node: &rnix::SyntaxNode) {
        self.dynamic
            .push((self.ex.line(node), short(&node.to_string())));
    }

    /// One `path = value;` of the flake's outputs, its path already split into names:
    /// `nixosConfigurations = …` or `nixosConfigurations.<host> = …` (a computed host name is
    /// dynamic); anything else is not about hosts.
    fn output_entry(
        &mut self,
        names: &[Option<String>],
        apv: &ast::AttrpathValue,
        value: ast::Expr,
        scope: Scope,
        depth: usize,
    ) {
        match names {
            [Some(n)] if n == "nixosConfigurations" => self.configurations(value, scope, depth),
            [Some(n), host] if n == "nixosConfigurations" => match host {
                Some(h) => self.hosts.push(Host {
                    name: h.clone(),
                    line: self.ex.line(apv.syntax()),
                    value,
                    scope,
                }),
                None => self.dynamic_at(apv.syntax()),
            },
            _ => {}
        }
    }

    fn outputs(&mut self, e: ast::Expr, scope: Scope, depth: usize) {
        if depth > MAX_DEPTH {
            return;
        }
        let d = depth + 1;
        match e {
            ast::Expr::Paren(p) => {
                if let Some(i) = p.expr() {
                    self.outputs(i, scope, d)
                }
            }
            ast::Expr::Lambda(ref l) => {
                let s = self.ex.push_lambda_frame(l, scope);
                if let Some(b) = l.body() {
                    self.outputs(b, s, d)
                }
            }
            ast::Expr::LetIn(ref l) => {
                let s = self.ex.push_rec_frame(l, scope);
                if let Some(b) = l.body() {
                    self.outputs(b, s, d)
                }
            }
            ast::Expr::With(w) => {
                if let Some(b) = w.body() {
                    self.outputs(b, scope, d)
                }
            }
            ast::Expr::BinOp(b) if b.operator() == Some(ast::BinOpKind::Update) => {
                if let Some(l) = b.lhs() {
                    self.outputs(l, scope, d)
                }
                if let Some(r) = b.rhs() {
                    self.outputs(r, scope, d)
                }
            }
            ast::Expr::AttrSet(ref set) => {
                let s = if set.rec_token().is_some() {
                    self.ex.push_rec_frame(set, scope)
                } else {
                    scope
                };
                for apv in set.attrpath_values() {
                    let attrs: Vec<ast::Attr> = apv
                        .attrpath()
                        .map(|p| p.attrs().collect())
                        .unwrap_or_default();
                    let names: Vec<Option<String>> = attrs.iter().map(text::attr_name).collect();
                    let Some(value) = apv.value() else { continue };
                    self.output_entry(&names, &apv, value, s, d);
                }
            }
            ast::Expr::Ident(_) | ast::Expr::Select(_) => {
                if let Some((v, s)) = self.ex.deref(e.clone(), scope, d)
                    && v.syntax() != e.syntax()
                {
                    self.outputs(v, s, d)
                } else if e.syntax().to_string().contains("nixosConfigurations") {
                    self.dynamic_at(e.syntax());
                }
            }
            // flake-parts: `flake-parts.lib.mkFlake { inherit inputs; } { flake = { … }; }`.
            ast::Expr::Apply(ref a)
                if uncurry(a).is_some_and(|(h, args)| {
                    head_name(&h).as_deref() == Some("mkFlake") && args.len() == 2
                }) =>
            {
                if let Some((_, args)) = uncurry(a) {
                    self.flake_parts_module(args[1].clone(), scope, d);
                }
            }
            other => {
                if other.syntax().to_string().contains("nixosConfigurations") {
                    self.dynamic_at(other.syntax());
                }
            }
        }
    }

    /// The module given to flake-parts' `mkFlake`: its `flake` attribute is the outputs.
    fn flake_parts_module(&mut self, e: ast::Expr, scope: Scope, depth: usize) {
        if depth > MAX_DEPTH {
            return;
        }
        let d = depth + 1;
        let Some((v, s)) = self.ex.deref(e.clone(), scope, d) else {
            self.dynamic_at(e.syntax());
            return;
        };
        match v {
            ast::Expr::Lambda(ref l) => {
                let s = self.ex.push_lambda_frame(l, s);
                if let Some(b) = l.body() {
                    self.flake_parts_module(b, s, d)
                }
            }
            ast::Expr::LetIn(ref l) => {
                let s = self.ex.push_rec_frame(l, s);
                if let Some(b) = l.body() {
                    self.flake_parts_module(b, s, d)
                }
            }
            ast::Expr::AttrSet(ref set) => {
                for apv in set.attrpath_values() {
                    let attrs: Vec<ast::Attr> = apv
                        .attrpath()
                        .map(|p| p.attrs().collect())
                        .unwrap_or_default();
                    let names: Vec<Option<String>> = attrs.iter().map(text::attr_name).collect();
                    let Some(value) = apv.value() else { continue };
                    // `flake = { … }` is the outputs; `flake.nixosConfigurations…` a part of them.
                    match names.as_slice() {
                        [Some(f)] if f == "flake" => self.outputs(value, s, d),
                        [Some(f), rest @ ..] if f == "flake" => {
                            self.output_entry(rest, &apv, value, s, d)
                        }
                        _ => {}
                    }
                }
            }
            other => {
                if other.syntax().to_string().contains("nixosConfigurations") {
                    self.dynamic_at(other.syntax());
                }
            }
        }
    }

    fn configurations(&mut self, value: ast::Expr, scope: Scope, depth: usize) {
        let line = self.ex.line(value.syntax());
        match self.ex.deref(value.clone(), scope, depth) {
            Some((ast::Expr::AttrSet(set), s)) => {
                let s = if set.rec_token().is_some() {
                    self.ex.push_rec_frame(&set, s)
                } else {
                    s
                };
                for apv in set.attrpath_values() {
                    let attrs: Vec<ast::Attr> = apv
                        .attrpath()
                        .map(|p| p.attrs().collect())
                        .unwrap_or_default();
                    match (
                        attrs.len(),
                        attrs.first().and_then(text::attr_name),
                        apv.value(),
                    ) {
                        (1, Some(name), Some(v)) => self.hosts.push(Host {
                            name,
                            line: self.ex.line(apv.syntax()),
                            value: v,
                            scope: s,
                        }),
                        _ => self.dynamic_at(apv.syntax()),
                    }
                }
            }
            Some((ast::Expr::BinOp(b), s)) if b.operator() == Some(ast::BinOpKind::Update) => {
                if let Some(l) = b.lhs() {
                    self.configurations(l, s, depth + 1)
                }
                if let Some(r) = b.rhs() {
                    self.configurations(r, s, depth + 1)
                }
            }
            _ => self
                .dynamic
                .push((line, short(&value.syntax().to_string()))),
        }
    }
}

/// The `modules` list of `nixosSystem { … }`, or `None` when the host value is not such a call.
fn modules_of(ex: &mut Extract, host: &Host) -> Option<(ast::Expr, Scope)> {
    let (v, s) = ex.deref(host.value.clone(), host.scope, 0)?;
    let ast::Expr::Apply(a) = unparen(v) else {
        return None;
    };
    let (head, args) = uncurry(&a)?;
    if head_name(&head).as_deref() != Some("nixosSystem") {
        return None;
    }
    let (arg, s) = ex.deref(args.last()?.clone(), s, 0)?;
    let ast::Expr::AttrSet(set) = arg else {
        return None;
    };
    let s = if set.rec_token().is_some() {
        ex.push_rec_frame(&set, s)
    } else {
        s
    };
    set.attrpath_values().find_map(|apv| {
        let attrs: Vec<ast::Attr> = apv.attrpath()?.attrs().collect();
        (attrs.len() == 1 && text::attr_name(&attrs[0]).as_deref() == Some("modules"))
            .then(|| apv.value().map(|v| (v, s)))
            .flatten()
    })
}

/// The module list's items, through `let` names and `++`. `Err` names what is not literal.
fn module_items(
    ex: &Extract,
    e: ast::Expr,
    scope: Scope,
    depth: usize,
    out: &mut Vec<(ast::Expr, Scope)>,
) -> Result<(), ast::Expr> {
    if depth > MAX_DEPTH {
        return Err(e);
    }
    let Some((v, s)) = ex.deref(e.clone(), scope, depth + 1) else {
        return Err(e);
    };
    match v {
        ast::Expr::List(list) => {
            out.extend(list.items().map(|i| (i, s)));
            Ok(())
        }
        ast::Expr::BinOp(b) if b.operator() == Some(ast::BinOpKind::Concat) => {
            let (Some(l), Some(r)) = (b.lhs(), b.rhs()) else {
                return Err(e);
            };
            module_items(ex, l, s, depth + 1, out)?;
            module_items(ex, r, s, depth + 1, out)
        }
        _ => Err(e),
    }
}

/// Follow `nixosConfigurations.<host>.modules` of a flake where the modules are literal paths.
/// With `host_name` only that host is read; without it every host is read (and a warning says
/// so when there are several).
pub fn read_flake(fs: &dyn SourceFs, flake_nix: &Path, host_name: Option<&str>) -> FlakeResult {
    let mut out = FlakeResult::default();
    let dir = flake_nix.parent().unwrap_or(Path::new("/")).to_path_buf();
    let eval_for = |h: Option<&str>| EvalCommand::Flake {
        dir: dir.clone(),
        host: h.map(str::to_string),
    };
    let text = match fs.read_to_string(flake_nix) {
        Ok(t) => t,
        Err(e) => {
            out.problems.push(
                Warning::new(
                    &NIX_FILE_UNREADABLE,
                    flake_nix.display().to_string(),
                    format!(
                        "cannot read {}: {e}. Give the host's configuration with --config FILE, \
                         or use the evaluated values. {}",
                        flake_nix.display(),
                        eval_for(host_name).advice()
                    ),
                )
                .at(flake_nix.to_path_buf(), None),
            );
            return out;
        }
    };
    let root = match super::parse(flake_nix, &text) {
        Ok(r) => r,
        Err(w) => {
            out.problems.push(w);
            return out;
        }
    };
    let mut walk = Walk {
        ex: Extract::new(flake_nix, &text, eval_for(host_name)),
        hosts: Vec::new(),
        dynamic: Vec::new(),
    };
    if let Some(top) = root.expr() {
        match walk.ex.deref(top.clone(), None, 0) {
            Some((ast::Expr::AttrSet(set), s)) => {
                for apv in set.attrpath_values() {
                    let attrs: Vec<ast::Attr> = apv
                        .attrpath()
                        .map(|p| p.attrs().collect())
                        .unwrap_or_default();
                    let names: Vec<Option<String>> = attrs.iter().map(text::attr_name).collect();
                    if names.len() == 1
                        && names[0].as_deref() == Some("outputs")
                        && let Some(v) = apv.value()
                    {
                        walk.outputs(v, s, 0);
                    }
                }
            }
            _ => walk.dynamic.push((1, short(&top.syntax().to_string()))),
        }
    }
    let Walk {
        mut ex,
        hosts,
        dynamic,
    } = walk;
    let loc = |line: usize| format!("{}:{line}", flake_nix.display());
    let all_names: Vec<String> = hosts.iter().map(|h| h.name.clone()).collect();

    let chosen: Vec<&Host> = match host_name {
        Some(h) => hosts.iter().filter(|x| x.name == h).collect(),
        None => hosts.iter().collect(),
    };
    for (line, t) in &dynamic {
        out.problems.push(
            Warning::new(
                &NIX_DYNAMIC_CONTAINERS,
                "nixosConfigurations",
                format!(
                    "{}: the flake's hosts are built by Nix code (`{t}`), so their modules \
                     cannot be read from the source. Give the host's configuration with \
                     --config FILE, or use the evaluated values. {}",
                    loc(*line),
                    eval_for(host_name).advice()
                ),
            )
            .at(flake_nix.to_path_buf(), Some(*line)),
        );
    }
    if chosen.is_empty() {
        if let Some(h) = host_name
            && dynamic.is_empty()
        {
            let known = if all_names.is_empty() {
                "none".to_string()
            } else {
                all_names.join(", ")
            };
            out.problems.push(
                Warning::new(
                    &NIX_FLAKE_MODULES_DYNAMIC,
                    format!("nixosConfigurations.{}", crate::nixtext::attr_name(h)),
                    format!(
                        "{} defines no host {h} that can be read (hosts found: {known}). Give \
                         the host's configuration with --config FILE, or use the evaluated values. {}",
                        flake_nix.display(),
                        eval_for(Some(h)).advice()
                    ),
                )
                .at(flake_nix.to_path_buf(), None),
            );
        }
        return out;
    }
    if host_name.is_none() && chosen.len() > 1 {
        out.problems.push(
            Warning::new(
                &NIX_FLAKE_SEVERAL_HOSTS,
                "nixosConfigurations",
                format!(
                    "{} defines several hosts ({}) and none was named, so the containers of all \
                     of them were read. If this machine is one of them, read only its \
                     configuration with --config FILE (one of its modules), or use the evaluated values. {}",
                    flake_nix.display(),
                    all_names.join(", "),
                    eval_for(None).advice()
                ),
            )
            .at(flake_nix.to_path_buf(), None),
        );
    }
    if chosen.len() == 1 {
        out.eval_command = Some(eval_for(Some(&chosen[0].name)));
    }
    for host in chosen {
        out.hosts.push(host.name.clone());
        let eval = eval_for(Some(&host.name));
        ex.set_eval(eval.clone());
        let dynamic_host = |what: &str, line: usize| {
            Warning::new(
                &NIX_FLAKE_MODULES_DYNAMIC,
                format!(
                    "nixosConfigurations.{}",
                    crate::nixtext::attr_name(&host.name)
                ),
                format!(
                    "{}: {what} of host {} cannot be read from the source, so its containers \
                     may be missing. Read the file that defines them with \
                     `nixos-nspawn migrate --config FILE`, or use the evaluated values. {}",
                    loc(line),
                    host.name,
                    eval.advice()
                ),
            )
            .at(flake_nix.to_path_buf(), Some(line))
        };
        let Some((modules, scope)) = modules_of(&mut ex, host) else {
            out.problems.push(dynamic_host(
                &format!(
                    "the value `{}` (not `nixosSystem {{ modules = [ … ]; }}`)",
                    short(&host.value.syntax().to_string())
                ),
                host.line,
            ));
            continue;
        };
        let mut items = Vec::new();
        if let Err(e) = module_items(&ex, modules.clone(), scope, 0, &mut items) {
            out.problems.push(dynamic_host(
                &format!("the module list `{}`", short(&e.syntax().to_string())),
                ex.line(e.syntax()),
            ));
        }
        for (item, s) in items {
            let line = ex.line(item.syntax());
            let resolved = ex.deref(item.clone(), s, 0);
            let path = match &resolved {
                Some((v, _)) => match unparen(v.clone()) {
                    ast::Expr::Apply(a) => uncurry(&a).and_then(|(h, args)| {
                        (head_name(&h).as_deref() == Some("import"))
                            .then(|| {
                                args.first().and_then(|p| {
                                    extract::literal_path(flake_nix, &unparen(p.clone()))
                                })
                            })
                            .flatten()
                    }),
                    other => extract::literal_path(flake_nix, &other),
                },
                None => None,
            };
            if let Some(p) = path {
                if !out.entries.contains(&p) {
                    out.entries.push(p);
                }
                continue;
            }
            match resolved.map(|(v, s)| (unparen(v), s)) {
                Some((v @ (ast::Expr::AttrSet(_) | ast::Expr::Lambda(_)), s)) => {
                    ex.visit_module(v, s)
                }
                Some((ast::Expr::PathSearch(_), _)) => {}
                _ if is_flake_module(&item) => {}
                _ => out.problems.push(dynamic_host(
                    &format!("the module `{}`", short(&item.syntax().to_string())),
                    line,
                )),
            }
        }
    }
    for imp in std::mem::take(&mut ex.imports) {
        if !out.entries.contains(&imp.path) {
            out.entries.push(imp.path);
        }
    }
    out.facts = std::mem::take(&mut ex.containers);
    out.problems.extend(std::mem::take(&mut ex.problems));
    let _ = fs;
    out
}
