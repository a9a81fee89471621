//! `rollback NAME [--reload | --restart]`: back to the previous generation, with the unit
//! files recorded for it (the `.nspawn` file, host network units, drop-in), not only the
//! profile; then activated like an update.

use super::activation::{self, Override};
use super::generations;
use super::update::{activate, current_files};
use super::{Ctx, paths};
use crate::error::Error;

pub fn rollback(ctx: &mut Ctx<'_>, name: &str, over: Option<Override>) -> Result<(), Error> {
    super::require_imperative(ctx, name, "rollback")?;
    let fs = ctx.fs();
    let gens = generations::list(&fs, name)?;
    let Some(cur) = generations::current(&fs, name) else {
        return Err(Error::Other(format!(
            "rollback {name}: {} points at no generation",
            paths::profile(name).display()
        )));
    };
    let Some(target) = gens.iter().rev().find(|g| g.number < cur) else {
        return Err(Error::Usage(format!(
            "rollback {name}: generation {cur} is the oldest; there is nothing to roll back to\n\n\
             See `nixos-nspawn list-generations {name}`."
        )));
    };
    let Some(rec) = generations::read_record(&fs, name, target.number) else {
        return Err(Error::Other(format!(
            "rollback {name}: generation {} has no recorded unit files (it was not made by \
             nixos-nspawn, e.g. a legacy generation carried over by migrate), so its .nspawn file \
             and network units are unknown; nothing was changed\n\nBuild the configuration you want \
             with `nixos-nspawn update {name} --config FILE`.",
            target.number
        )));
    };
    let new = rec.files.clone();
    let old = current_files(ctx, name, &new)?;
    let strategy = serde_json::from_str::<serde_json::Value>(&rec.data_json)
        .ok()
        .and_then(|d| d["activation"]["strategy"].as_str().map(str::to_string))
        .unwrap_or_else(|| "dynamic".to_string());
    let reload_script = serde_json::from_str::<serde_json::Value>(&rec.data_json)
        .ok()
        .and_then(|d| d["activation"]["reloadScript"].as_str().map(str::to_string));
    let decision = activation::decide(
        &activation::changes(&old, &new, &format!("{name}.nspawn")),
        &strategy,
        over,
    );
    ctx.say(format!(
        "rollback {name}: generation {cur} → {}; {decision}",
        target.number
    ));
    let profile_real = fs
        .real_path(&paths::profile(name))
        .map_err(|e| Error::Write {
            path: paths::profile(name),
            source: e,
        })?;
    super::source::switch_generation(ctx, &profile_real, target.number)?;
    let done = generations::install(&fs, name, &old, &new, ctx.live()).map_err(|e| {
        Error::Other(format!(
            "rollback {name}: the profile is at generation {}, but its files could not all be \
             installed: {e}\n\nFix the cause and run the rollback again.",
            target.number
        ))
    })?;
    for line in done {
        ctx.say(format!("  {line}"));
    }
    if let Some(line) =
        generations::autostart(&fs, name, generations::auto_start_of(&rec.data_json))?
    {
        ctx.say(format!("  {line}"));
    }
    let system = rec.meta.system.clone();
    activate(ctx, name, &old, &new, &decision, &system, reload_script)
}
