//! `create NAME FILE.nix` (or `--flake REF#attr`, `--profile PATH`).
//!
//! Order matters: every check that can fail comes before the build, and the build before the
//! first write. The name (valid, not used in any form), the file (parses, evaluates: every
//! option is checked), the zone (exists), static addresses (not used elsewhere) and every
//! destination (writable, not a store link) are checked first. Then the build, then the
//! writes; if a write fails, what this run made is removed again, and whatever cannot be
//! removed is named.

use super::activation::{DROPIN, Files};
use super::generations::{self, Meta};
use super::source::{self, Rendered, Source};
use super::{Ctx, Presence, paths, presence};
use crate::error::Error;
use crate::host::Kind;
use crate::runner::Cmd;
use std::path::{Path, PathBuf};

pub struct CreateArgs {
    pub name: String,
    pub source: Source,
    pub start: bool,
}

pub fn create(ctx: &mut Ctx<'_>, args: &CreateArgs) -> Result<(), Error> {
    let name = args.name.as_str();
    crate::legacy::names::check_machine_name(name)
        .map_err(|e| Error::Usage(format!("create {name}: {e}")))?;
    let found = presence(ctx, name);
    if !found.is_empty() {
        return Err(Error::Usage(format!(
            "create {name}: the name {name} is already in use: {}\n\n{}",
            found
                .iter()
                .map(Presence::describe)
                .collect::<Vec<_>>()
                .join("; "),
            if found
                .iter()
                .any(|p| matches!(p, Presence::Imperative { .. }))
            {
                format!("Change it with `nixos-nspawn update {name}`, or choose another name.")
            } else {
                "Choose another name, or remove what uses it first.".to_string()
            }
        )));
    }
    source::check_syntax(ctx, &args.source)?;
    let rendered = source::evaluate(ctx, name, &args.source)?;
    check_zone(ctx, name, &rendered)?;
    check_addresses(ctx, name, &rendered)?;
    let files = generations::installable(name, &rendered.files);
    preflight(ctx, name, &files)?;

    let system = source::build(ctx, name, &args.source)?;
    check_built(name, &rendered, &system)?;

    let mut made = Made::default();
    if let Err(e) = make(
        ctx,
        name,
        &args.source,
        &rendered,
        &files,
        &system,
        &mut made,
    ) {
        return Err(undo(ctx, name, &made, e));
    }
    let generation = generations::current(&ctx.fs(), name).unwrap_or(0);
    ctx.say(format!(
        "created {name} (generation {generation}, system {system}) from {}",
        args.source.describe()
    ));
    for line in &made.report {
        ctx.say(format!("  {line}"));
    }
    let start = args.start || rendered.auto_start();
    bring_up(ctx, name, &files, start)
}

/// Tell the live systemd about the new files and start the container.
pub fn bring_up(ctx: &mut Ctx<'_>, name: &str, files: &Files, start: bool) -> Result<(), Error> {
    let has_units = files.keys().any(|k| k.ends_with(".network"));
    if !ctx.live() {
        ctx.say(format!(
            "offline root {}: the running system was not touched{}",
            ctx.host.root().display(),
            match (has_units, start) {
                (true, true) => format!(
                    "; when that host runs, `networkctl reload` and `machinectl start {name}`"
                ),
                (true, false) => "; when that host runs, `networkctl reload`".to_string(),
                (false, true) => format!("; when that host runs, `machinectl start {name}`"),
                (false, false) => String::new(),
            }
        ));
        return Ok(());
    }
    let created = |e: Error| {
        Error::Other(format!(
            "container {name} was created, but activating it failed: {e}\n\nFix the cause, then run \
             `machinectl start {name}`; `nixos-nspawn remove {name}` removes it."
        ))
    };
    if files.contains_key(DROPIN) {
        ctx.run(&Cmd::new("systemctl", &["daemon-reload"]))
            .map_err(created)?;
    }
    if has_units {
        ctx.run(&Cmd::new("networkctl", &["reload"]))
            .map_err(created)?;
        ctx.say("  networkd reloaded");
    }
    if start {
        ctx.run(&Cmd::new("machinectl", &["start", name]))
            .map_err(created)?;
        ctx.say(format!("  started {name} (machinectl start {name})"));
    } else {
        ctx.say(format!("  start it with: machinectl start {name}"));
    }
    Ok(())
}

/// The build must be the system the files were rendered for.
pub fn check_built(name: &str, rendered: &Rendered, system: &str) -> Result<(), Error> {
    if !rendered.toplevel.is_empty() && rendered.toplevel != system {
        return Err(Error::Other(format!(
            "container {name}: the build produced {system}, but the evaluation rendered \
             Parameters= for {}; nothing was written\n\nThe container file probably depends on \
             something that changed between the two steps (an impure import?); run the command again.",
            rendered.toplevel
        )));
    }
    Ok(())
}

/// Every destination can be written (not a store link, no symlink in the way).
pub fn preflight(ctx: &Ctx<'_>, name: &str, files: &Files) -> Result<(), Error> {
    let fs = ctx.fs();
    let mut dests: Vec<PathBuf> = files
        .keys()
        .map(|r| generations::destination(name, r))
        .collect();
    // The profile link itself points into the store (as it should): check its directory.
    dests.push(paths::profile_dir(name).join("system-new-link"));
    dests.push(paths::generations_dir(name).join("new"));
    // The state directory itself must not exist yet (create refuses); its parent must be
    // writable.
    dests.push(paths::state_dir(name).with_file_name(".nixos-nspawn-probe"));
    let mut bad = Vec::new();
    for d in dests {
        if let Err(e) = fs.check_writable(&d) {
            bad.push(format!("{}: {e}", d.display()));
        }
    }
    if bad.is_empty() {
        Ok(())
    } else {
        Err(Error::Other(format!(
            "container {name}: cannot write its files; nothing was built or written:\n  {}\n\nSee \
             nixos/README.md (\"Where imperative containers live\") for where nixos-nspawn keeps them.",
            bad.join("\n  ")
        )))
    }
}

/// A container in a zone needs the zone's bridge `vz-ZONE` (declared on the host).
pub fn check_zone(ctx: &Ctx<'_>, name: &str, r: &Rendered) -> Result<(), Error> {
    let Some(zone) = r.zone() else {
        return Ok(());
    };
    let ifname = format!("vz-{zone}");
    if ctx.live() && Path::new("/sys/class/net").join(&ifname).exists() {
        return Ok(());
    }
    let fs = ctx.fs();
    for dir in paths::NETWORKD_DIRS {
        for (f, _) in fs.list(Path::new(dir)).unwrap_or_default() {
            if !(f.ends_with(".network") || f.ends_with(".netdev")) {
                continue;
            }
            let text = fs
                .read(&Path::new(dir).join(&f))
                .ok()
                .flatten()
                .unwrap_or_default();
            if text
                .lines()
                .any(|l| l.trim().strip_prefix("Name=").map(str::trim) == Some(ifname.as_str()))
            {
                return Ok(());
            }
        }
    }
    Err(Error::Usage(format!(
        "container {name}: zone {zone:?} does not exist: no network interface {ifname} and no \
         networkd unit for it in {}\n\nDeclare the zone in the host configuration \
         (nixos.containers.zones.{} = {{ }};) and run nixos-rebuild switch, or leave out \
         network.zone. Nothing was built or written.",
        paths::NETWORKD_DIRS.join(", "),
        crate::nixtext::attr_name(&zone)
    )))
}

/// A static address of this container must not be used by another container or host unit.
pub fn check_addresses(ctx: &Ctx<'_>, name: &str, r: &Rendered) -> Result<(), Error> {
    let mine: Vec<String> = r
        .static_addresses()
        .into_iter()
        .filter(|a| a != "0.0.0.0" && a != "::")
        .collect();
    if mine.is_empty() {
        return Ok(());
    }
    let fs = ctx.fs();
    let mut used: Vec<(String, String)> = Vec::new();
    // Other imperative containers (their current generation's options).
    for other in super::list::imperative_names(ctx) {
        if other == name {
            continue;
        }
        if let Some(g) = generations::current(&fs, &other)
            && let Some(rec) = generations::read_record(&fs, &other, g)
            && let Ok(data) = serde_json::from_str::<serde_json::Value>(&rec.data_json)
        {
            for a in source::static_addresses(&data) {
                used.push((a, format!("imperative container {other}")));
            }
        }
    }
    // Host network units (declarative containers, zones, the host's own).
    let own: Vec<String> = r.files.keys().cloned().collect();
    for dir in paths::NETWORKD_DIRS {
        for (f, _) in fs.list(Path::new(dir)).unwrap_or_default() {
            // This container's own units (and their links in /run) are not a collision.
            if !f.ends_with(".network") || own.contains(&f) {
                continue;
            }
            let p = Path::new(dir).join(&f);
            let text = fs.read(&p).ok().flatten().unwrap_or_default();
            for l in text.lines() {
                if let Some(a) = l.trim().strip_prefix("Address=") {
                    used.push((
                        crate::render::networkd::strip_prefix(a.trim()).to_string(),
                        p.display().to_string(),
                    ));
                }
            }
        }
    }
    // Legacy containers.
    for dir in ["/etc/nixos-containers", "/etc/containers"] {
        for (f, _) in fs.list(Path::new(dir)).unwrap_or_default() {
            // A migrated container's own legacy original keeps its addresses (the way back).
            if !f.ends_with(".conf") || f == format!("{name}.conf") {
                continue;
            }
            let p = Path::new(dir).join(&f);
            let text = fs.read(&p).ok().flatten().unwrap_or_default();
            for l in text.lines() {
                for key in [
                    "HOST_ADDRESS=",
                    "LOCAL_ADDRESS=",
                    "HOST_ADDRESS6=",
                    "LOCAL_ADDRESS6=",
                ] {
                    if let Some(a) = l.trim().strip_prefix(key) {
                        let a = a.trim().trim_matches(['"', '\'']);
                        if !a.is_empty() {
                            used.push((
                                crate::render::networkd::strip_prefix(a).to_string(),
                                p.display().to_string(),
                            ));
                        }
                    }
                }
            }
        }
    }
    let clashes: Vec<String> = mine
        .iter()
        .flat_map(|a| {
            used.iter()
                .filter(move |(u, _)| u == a)
                .map(move |(_, w)| format!("{a} is already used by {w}"))
        })
        .collect();
    if clashes.is_empty() {
        Ok(())
    } else {
        Err(Error::Usage(format!(
            "container {name}: static address collision:\n  {}\n\nChoose other addresses in \
             network.v4.static / network.v6.static. Nothing was built or written.",
            clashes.join("\n  ")
        )))
    }
}

/// What this run made, in order, so that a failure can take it back.
#[derive(Default)]
struct Made {
    profile_dir: bool,
    profile_set: bool,
    paths: Vec<PathBuf>,
    report: Vec<String>,
}

fn make(
    ctx: &Ctx<'_>,
    name: &str,
    src: &Source,
    rendered: &Rendered,
    files: &Files,
    system: &str,
    made: &mut Made,
) -> Result<(), Error> {
    let fs = ctx.fs();
    let werr = |p: &Path| {
        let p = p.to_path_buf();
        move |e| Error::Write { path: p, source: e }
    };
    // Every directory this run creates is remembered by its topmost new ancestor: all below
    // it is ours, so a failure can take it back whole.
    let track = |p: &Path, made: &mut Made| {
        let mut top = None;
        let mut cur = p.to_path_buf();
        while matches!(fs.kind(&cur), Ok(None)) {
            top = Some(cur.clone());
            if !cur.pop() {
                break;
            }
        }
        if let Some(t) = top {
            made.paths.push(t);
        }
    };
    let pdir = paths::profile_dir(name);
    if fs.kind(&pdir).map_err(werr(&pdir))?.is_none() {
        track(&pdir, made);
        fs.mkdir_all(&pdir, 0o755).map_err(werr(&pdir))?;
        made.profile_dir = true;
    }
    let profile_real = fs.real_path(&paths::profile(name)).map_err(werr(&pdir))?;
    source::set_profile(ctx, &profile_real, system)?;
    made.profile_set = true;
    let generation = generations::current(&fs, name).ok_or_else(|| {
        Error::Other(format!(
            "container {name}: nix-env did not make {} a generation link",
            paths::profile(name).display()
        ))
    })?;
    let meta = Meta {
        source: src.clone(),
        system: system.to_string(),
    };
    track(&paths::generations_dir(name), made);
    made.paths.push(paths::generations_dir(name));
    let rec = generations::write_record(&fs, name, generation, files, &rendered.data_json, &meta)?;
    made.report
        .push(format!("recorded its unit files in {}", rec.display()));
    // The rootfs: what systemd-nspawn needs before the container's own activation runs (an
    // OS tree with /usr, os-release and machine-id to be filled in at first boot).
    let state = paths::state_dir(name);
    track(&state, made);
    made.paths.push(state.clone());
    fs.mkdir_all(&state, 0o755).map_err(werr(&state))?;
    for d in ["etc", "var", "usr"] {
        fs.mkdir_all(&state.join(d), 0o755)
            .map_err(werr(&state.join(d)))?;
    }
    for f in ["etc/os-release", "etc/machine-id"] {
        fs.write(&state.join(f), "", 0o644)
            .map_err(werr(&state.join(f)))?;
    }
    made.report
        .push(format!("made its state directory {}", state.display()));
    let gc = paths::gcroots_dir(name);
    if fs.kind(&gc).map_err(werr(&gc))?.is_none() {
        track(&gc, made);
        fs.mkdir_all(&gc, 0o755).map_err(werr(&gc))?;
    }
    for (role, text) in files {
        let p = generations::destination(name, role);
        track(&p, made);
        made.paths.push(p.clone());
        fs.write(&p, text, 0o644).map_err(werr(&p))?;
        made.report.push(format!("wrote {}", p.display()));
        if ctx.live()
            && let Some(link) = generations::runtime_link(role)
        {
            track(&link, made);
            made.paths.push(link.clone());
            fs.symlink(&p, &link).map_err(werr(&link))?;
            made.report.push(format!("linked {} to it", link.display()));
        }
    }
    track(&paths::autostart_link(name), made);
    made.paths.push(paths::autostart_link(name));
    if let Some(line) = generations::autostart(&fs, name, rendered.auto_start())? {
        made.report.push(line);
    }
    Ok(())
}

/// Take back what a failed create made; the error says what is left, if anything.
fn undo(ctx: &Ctx<'_>, name: &str, made: &Made, cause: Error) -> Error {
    let fs = ctx.fs();
    let mut left = Vec::new();
    for p in made.paths.iter().rev() {
        let r = match fs.kind(p) {
            Ok(Some(Kind::Dir)) => fs.remove_tree(p).map(|_| ()),
            Ok(Some(_)) => fs.remove_file(p).map(|_| ()),
            Ok(None) => Ok(()),
            // A parent is not a directory: nothing of ours can be there.
            Err(e) if e.kind() == std::io::ErrorKind::NotADirectory => Ok(()),
            Err(e) => Err(e),
        };
        if let Err(e) = r {
            left.push(format!("{} ({e})", p.display()));
        }
    }
    if made.profile_set {
        for (f, _) in fs.list(&paths::profile_dir(name)).unwrap_or_default() {
            if f == "system" || (f.starts_with("system-") && f.ends_with("-link")) {
                let p = paths::profile_dir(name).join(&f);
                if let Err(e) = fs.remove_file(&p) {
                    left.push(format!("{} ({e})", p.display()));
                }
            }
        }
    }
    if made.profile_dir && fs.remove_empty_dir(&paths::profile_dir(name)).is_err() {
        left.push(paths::profile_dir(name).display().to_string());
    }
    let tail = if left.is_empty() {
        "everything this run made was removed again".to_string()
    } else {
        format!(
            "these could not be removed; remove them by hand before trying again:\n  {}",
            left.join("\n  ")
        )
    };
    Error::Other(format!("create {name} failed: {cause}\n\n{tail}"))
}
