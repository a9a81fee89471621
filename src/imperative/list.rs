//! `list [--json]`: every container on the host, whoever manages it — legacy nixos-container,
//! declarative (the host's NixOS configuration), imperative (nixos-nspawn), or a machine no one
//! of these manages — with its kind, its state directory and whether it is running (asked of
//! the live systemd only; unknown on an offline root).

use super::{Ctx, MARKER, paths};
use crate::error::Error;
use crate::host::Kind;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Clone, Debug, Serialize)]
pub struct Entry {
    pub name: String,
    /// legacy, declarative, imperative or unmanaged.
    pub kind: &'static str,
    /// Where it is managed (the file that defines it).
    pub defined_in: Option<PathBuf>,
    /// Its state directory (root filesystem).
    pub state: Option<PathBuf>,
    pub state_exists: bool,
    /// `None` on an offline root: the live systemd is not asked.
    pub running: Option<bool>,
    /// The current generation (imperative containers).
    pub generation: Option<u64>,
}

/// Names of the imperative containers: `.nspawn` files we wrote, and recorded generations.
pub fn imperative_names(ctx: &Ctx<'_>) -> Vec<String> {
    let fs = ctx.fs();
    let mut out = Vec::new();
    let dir = paths::nspawn_file("x")
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    for (f, kind) in fs.list(&dir).unwrap_or_default() {
        if kind != Kind::File {
            continue;
        }
        if let Some(n) = f.strip_suffix(".nspawn")
            && fs
                .read(&dir.join(&f))
                .ok()
                .flatten()
                .is_some_and(|t| t.starts_with(MARKER))
        {
            out.push(n.to_string());
        }
    }
    let gens = paths::generations_dir("x")
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    for (f, kind) in fs.list(&gens).unwrap_or_default() {
        if kind == Kind::Dir {
            out.push(f);
        }
    }
    out.sort();
    out.dedup();
    out
}

pub fn entries(ctx: &Ctx<'_>) -> Vec<Entry> {
    let fs = ctx.fs();
    let mut by_name: BTreeMap<String, Entry> = BTreeMap::new();
    let mut add = |name: &str, kind: &'static str, defined_in: Option<PathBuf>, state: PathBuf| {
        by_name.entry(name.to_string()).or_insert_with(|| Entry {
            name: name.to_string(),
            kind,
            defined_in,
            state_exists: fs.host.exists(&state),
            state: Some(state),
            running: None,
            generation: None,
        });
    };
    for n in imperative_names(ctx) {
        add(
            &n,
            "imperative",
            Some(paths::nspawn_file(&n)),
            paths::state_dir(&n),
        );
    }
    let legacy = crate::legacy::discover::discover_disk(ctx.host);
    for c in &legacy.containers {
        let state = c
            .state_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(format!("/var/lib/nixos-containers/{}", c.name)));
        add(&c.name, "legacy", c.conf_file.clone(), state);
    }
    for dir in paths::NSPAWN_DIRS {
        for (f, _) in fs.list(Path::new(dir)).unwrap_or_default() {
            let Some(n) = f.strip_suffix(".nspawn") else {
                continue;
            };
            let p = Path::new(dir).join(&f);
            let to = fs.resolve(&p).unwrap_or_default();
            // /run/systemd/nspawn links to the imperative directory on NixOS.
            if to.starts_with(paths::nspawn_file("x").parent().unwrap_or(Path::new("/"))) {
                continue;
            }
            let kind = if to.starts_with("/nix/store") || to.starts_with("/etc/static") {
                "declarative"
            } else {
                "unmanaged"
            };
            add(n, kind, Some(p), paths::state_dir(n));
        }
    }
    for (f, kind) in fs.list(Path::new("/var/lib/machines")).unwrap_or_default() {
        let n = match kind {
            Kind::Dir => f.as_str(),
            _ => match f.strip_suffix(".raw") {
                Some(n) => n,
                None => continue,
            },
        };
        if n.starts_with('.') {
            continue;
        }
        add(
            n,
            "unmanaged",
            None,
            Path::new("/var/lib/machines").join(&f),
        );
    }
    let mut out: Vec<Entry> = by_name.into_values().collect();
    for e in &mut out {
        let unit = if e.kind == "legacy" {
            format!("container@{}.service", e.name)
        } else {
            format!("systemd-nspawn@{}.service", e.name)
        };
        e.running = ctx.unit_active(&unit);
        if e.kind == "imperative" {
            e.generation = super::generations::current(&fs, &e.name);
        }
    }
    out
}

pub fn list(ctx: &mut Ctx<'_>, json: bool) -> Result<(), Error> {
    let entries = entries(ctx);
    if json {
        let v = serde_json::json!({ "version": 1, "containers": entries });
        println!("{v:#}");
        return Ok(());
    }
    if entries.is_empty() {
        ctx.say("no containers");
        return Ok(());
    }
    let w = entries
        .iter()
        .map(|e| e.name.len())
        .max()
        .unwrap_or(4)
        .max(4);
    ctx.say(format!(
        "{:<w$}  {:<11}  {:<8}  {:<10}  STATE",
        "NAME", "KIND", "RUNNING", "GENERATION"
    ));
    for e in &entries {
        ctx.say(format!(
            "{:<w$}  {:<11}  {:<8}  {:<10}  {}{}",
            e.name,
            e.kind,
            match e.running {
                Some(true) => "yes",
                Some(false) => "no",
                None => "unknown",
            },
            e.generation.map(|g| g.to_string()).unwrap_or("-".into()),
            e.state
                .as_ref()
                .map(|s| s.display().to_string())
                .unwrap_or_default(),
            if e.state_exists { "" } else { " (missing)" }
        ));
    }
    if !ctx.live() {
        ctx.say(format!(
            "(offline root {}: whether containers run is not known)",
            ctx.host.root().display()
        ));
    }
    Ok(())
}
