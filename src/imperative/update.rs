//! `update NAME [--config FILE | --flake REF] [--reload | --restart] [--dry-run]`.
//!
//! Rebuild, install the new generation's files, and activate it as the RFC says: reload when
//! only `Parameters=` (the system) changed, restart when anything else in the `.nspawn` file or
//! the host units changed, nothing for `activation.strategy = "none"`; `--reload`/`--restart`
//! override. The decision is printed with its reasons; `--dry-run` prints it with the diff of
//! every unit and changes nothing.

use super::activation::{self, Action, DROPIN, Decision, Files, Override};
use super::create::{check_addresses, check_built, check_zone, preflight};
use super::generations::{self, Meta};
use super::source::{self, Source};
use super::{Ctx, paths};
use crate::error::Error;
use crate::runner::Cmd;

pub struct UpdateArgs {
    pub name: String,
    pub source: Option<Source>,
    pub over: Option<Override>,
    pub dry_run: bool,
}

/// The source of the current generation, or the container file `migrate` wrote.
fn recorded_source(ctx: &Ctx<'_>, name: &str) -> Option<Source> {
    let fs = ctx.fs();
    if let Some(g) = generations::current(&fs, name)
        && let Some(rec) = generations::read_record(&fs, name, g)
    {
        return Some(rec.meta.source);
    }
    let migrated = paths::migrated_container_file(name);
    if fs.host.exists(&migrated) {
        return fs
            .real_path(&migrated)
            .ok()
            .map(|path| Source::File { path });
    }
    None
}

pub fn update(ctx: &mut Ctx<'_>, args: &UpdateArgs) -> Result<(), Error> {
    let name = args.name.as_str();
    super::require_imperative(ctx, name, "update")?;
    let fs = ctx.fs();
    let source = match &args.source {
        Some(s) => s.clone(),
        None => recorded_source(ctx, name).ok_or_else(|| {
            Error::Usage(format!(
                "update {name}: no container file is recorded for {name}\n\nGive one: nixos-nspawn \
                 update {name} --config FILE.nix (or --flake REF#attr)."
            ))
        })?,
    };
    source::check_syntax(ctx, &source)?;
    let rendered = source::evaluate(ctx, name, &source)?;
    check_zone(ctx, name, &rendered)?;
    check_addresses(ctx, name, &rendered)?;
    let new = generations::installable(name, &rendered.files);
    let old = current_files(ctx, name, &new)?;
    let nspawn_key = format!("{name}.nspawn");
    let changes = activation::changes(&old, &new, &nspawn_key);
    let decision = activation::decide(&changes, &rendered.strategy(), args.over);
    ctx.say(format!("update {name}: {decision}"));
    // The installed files were written by `migrate` (no record of ours yet): settings the
    // legacy translation had and a container file cannot give would be lost without a word.
    let migrated = generations::current(&fs, name)
        .and_then(|g| generations::read_record(&fs, name, g))
        .is_none();
    let dropped: Vec<&String> = changes
        .restart_reasons
        .iter()
        .filter(|r| r.ends_with(" removed"))
        .collect();
    if migrated && !dropped.is_empty() {
        ctx.say(format!(
            "  warning: the installed files were written by `nixos-nspawn migrate`; the new ones \
             from the container file do not have: {}. Container files have no raw .nspawn keys: \
             if {name} needs them, keep it as it is (no update) or declare it in the host \
             configuration (systemd.nspawn.{name})",
            dropped
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    if changes.is_empty() && args.over.is_none() && !args.dry_run {
        // The same system and units: nothing to build, write or activate.
        return Ok(());
    }
    if args.dry_run {
        if decision.action != Action::Nothing
            && ctx.unit_active(&format!("systemd-nspawn@{name}.service")) == Some(false)
        {
            ctx.say(format!(
                "  ({name} is not running: it would start with the new configuration, nothing \
                 would be {}ed)",
                decision.action
            ));
        }
        print_diff(ctx, name, &old, &new);
        ctx.say(format!(
            "dry run: nothing was built, written, reloaded or restarted (source: {})",
            source.describe()
        ));
        return Ok(());
    }
    preflight(ctx, name, &new)?;
    let system = source::build(ctx, name, &source)?;
    check_built(name, &rendered, &system)?;
    let profile_real = fs
        .real_path(&paths::profile(name))
        .map_err(|e| Error::Write {
            path: paths::profile(name),
            source: e,
        })?;
    let before = generations::current(&fs, name);
    source::set_profile(ctx, &profile_real, &system)?;
    let Some(generation) = generations::current(&fs, name) else {
        return Err(Error::Other(format!(
            "update {name}: after nix-env, {} points at no generation; nothing else was changed",
            paths::profile(name).display()
        )));
    };
    // nix-env makes no new generation when the newest one already is this system (only the
    // units changed, e.g. a bind mount): that generation's recorded units are replaced.
    if before == Some(generation) {
        ctx.say(format!(
            "  the system is unchanged: still generation {generation}; its recorded unit files are              replaced by the new ones (a rollback goes to the generation before it)"
        ));
    }
    let meta = Meta {
        source: source.clone(),
        system: system.clone(),
    };
    let installed = generations::write_record(
        &fs,
        name,
        generation,
        &new,
        &rendered.data_json,
        &meta,
    )
    .and_then(|_| generations::install(&fs, name, &old, &new, ctx.live()))
    .map_err(|e| {
        Error::Other(format!(
            "update {name}: the profile is at generation {generation}, but its files could not \
                 all be installed: {e}\n\nFix the cause and run the update again{}",
            match before {
                Some(b) =>
                    format!(", or go back with `nixos-nspawn rollback {name}` (to generation {b})"),
                None => String::new(),
            }
        ))
    })?;
    ctx.say(format!(
        "{name}: generation {generation} ({system}) from {}",
        source.describe()
    ));
    for line in installed {
        ctx.say(format!("  {line}"));
    }
    if let Some(line) = generations::autostart(&fs, name, rendered.auto_start())? {
        ctx.say(format!("  {line}"));
    }
    activate(
        ctx,
        name,
        &old,
        &new,
        &decision,
        &system,
        rendered.reload_script(),
    )
}

/// What is installed now, for the roles of the current record and of the new files.
pub fn current_files(ctx: &Ctx<'_>, name: &str, new: &Files) -> Result<Files, Error> {
    let fs = ctx.fs();
    let mut roles: Vec<String> = new.keys().cloned().collect();
    roles.push(format!("{name}.nspawn"));
    roles.push(DROPIN.to_string());
    if let Some(g) = generations::current(&fs, name)
        && let Some(rec) = generations::read_record(&fs, name, g)
    {
        roles.extend(rec.files.keys().cloned());
    }
    roles.sort();
    roles.dedup();
    generations::installed(&fs, name, &roles)
}

fn print_diff(ctx: &mut Ctx<'_>, name: &str, old: &Files, new: &Files) {
    let mut roles: Vec<&String> = old.keys().chain(new.keys()).collect();
    roles.sort();
    roles.dedup();
    for role in roles {
        let (a, b) = (
            old.get(role).map(String::as_str).unwrap_or(""),
            new.get(role).map(String::as_str).unwrap_or(""),
        );
        if a == b {
            continue;
        }
        let dest = generations::destination(name, role);
        ctx.say(format!(
            "--- {} ({})\n+++ {} (new)\n{}",
            dest.display(),
            if old.contains_key(role) {
                "installed"
            } else {
                "absent"
            },
            dest.display(),
            activation::diff_lines(a, b).trim_end()
        ));
    }
}

/// Tell systemd about changed units and carry out the decision (live root only).
pub fn activate(
    ctx: &mut Ctx<'_>,
    name: &str,
    old: &Files,
    new: &Files,
    decision: &Decision,
    system: &str,
    reload_script: Option<String>,
) -> Result<(), Error> {
    if !ctx.live() {
        ctx.say(format!(
            "offline root {}: the running system was not touched; {name} starts with the new \
             configuration when that host boots",
            ctx.host.root().display()
        ));
        return Ok(());
    }
    let changed = |pred: &dyn Fn(&str) -> bool| {
        old.keys()
            .chain(new.keys())
            .filter(|k| pred(k))
            .any(|k| old.get(k) != new.get(k))
    };
    if changed(&|k| k == DROPIN) {
        ctx.run(&Cmd::new("systemctl", &["daemon-reload"]))?;
    }
    if changed(&|k| k.ends_with(".network")) {
        ctx.run(&Cmd::new("networkctl", &["reload"]))?;
        ctx.say("  networkd reloaded (host network units changed)");
    }
    let unit = format!("systemd-nspawn@{name}.service");
    if decision.action != Action::Nothing && ctx.unit_active(&unit) != Some(true) {
        ctx.say(format!(
            "  {name} is not running: nothing to {}; it starts with the new configuration \
             (machinectl start {name})",
            decision.action
        ));
        return Ok(());
    }
    match decision.action {
        Action::Nothing => ctx.say(format!("  {name}: not reloaded or restarted")),
        Action::Restart => {
            ctx.run(&Cmd::new("systemctl", &["restart", &unit]))?;
            ctx.say(format!("  restarted {unit}"));
        }
        Action::Reload => {
            let cmd = match reload_script {
                Some(script) => Cmd::new(&script, &[name, system]),
                None => Cmd::new(
                    "systemd-run",
                    &[
                        &format!("--machine={name}"),
                        "--pipe",
                        "--wait",
                        "--quiet",
                        "--collect",
                        "--service-type=exec",
                        "--",
                        &format!("{system}/bin/switch-to-configuration"),
                        "test",
                    ],
                ),
            };
            ctx.run(&cmd)?;
            ctx.say(format!(
                "  reloaded {name} (switch-to-configuration test inside the container)"
            ));
        }
    }
    Ok(())
}
