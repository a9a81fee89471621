//! `remove NAME [--delete-state]`: stop the container, remove its `.nspawn` file, network
//! units, drop-in, generation records and system profile links. The state (its root
//! filesystem, and the Nix profiles and gcroots the container made for itself) is kept unless
//! `--delete-state` is given.

use super::generations;
use super::{Ctx, paths};
use crate::error::Error;
use crate::host::Kind;
use crate::runner::Cmd;

pub fn remove(ctx: &mut Ctx<'_>, name: &str, delete_state: bool) -> Result<(), Error> {
    super::require_imperative(ctx, name, "remove")?;
    let fs = ctx.fs();
    let unit = format!("systemd-nspawn@{name}.service");
    if ctx.unit_active(&unit) == Some(true) {
        ctx.run(&Cmd::new("systemctl", &["stop", &unit]))?;
        ctx.say(format!("stopped {unit}"));
    }
    // Everything installed: what the current record lists, plus the fixed places.
    let mut roles = vec![
        format!("{name}.nspawn"),
        super::activation::DROPIN.to_string(),
    ];
    if let Some(g) = generations::current(&fs, name)
        && let Some(rec) = generations::read_record(&fs, name, g)
    {
        roles.extend(rec.files.keys().cloned());
    }
    roles.sort();
    roles.dedup();
    let werr = |p: &std::path::Path, e| Error::Write {
        path: p.to_path_buf(),
        source: e,
    };
    let mut removed_units = false;
    let mut removed_dropin = false;
    for role in &roles {
        let p = generations::destination(name, role);
        if fs.remove_file(&p).map_err(|e| werr(&p, e))? {
            ctx.say(format!("removed {}", p.display()));
            removed_units |= role.ends_with(".network");
            removed_dropin |= role == super::activation::DROPIN;
        }
        if let Some(link) = generations::runtime_link(role)
            && fs.remove_file(&link).map_err(|e| werr(&link, e))?
        {
            ctx.say(format!("removed {}", link.display()));
        }
    }
    if let Some(line) = generations::autostart(&fs, name, false)? {
        ctx.say(line);
    }
    let gdir = paths::generations_dir(name);
    if fs.remove_tree(&gdir).map_err(|e| werr(&gdir, e))? {
        ctx.say(format!("removed {}", gdir.display()));
    }
    let pdir = paths::profile_dir(name);
    if delete_state {
        for d in [
            paths::state_dir(name),
            pdir.clone(),
            paths::gcroots_dir(name),
        ] {
            if fs.remove_tree(&d).map_err(|e| werr(&d, e))? {
                ctx.say(format!("deleted {}", d.display()));
            }
        }
    } else {
        for (f, kind) in fs.list(&pdir).unwrap_or_default() {
            if kind == Kind::Symlink
                && (f == "system" || (f.starts_with("system-") && f.ends_with("-link")))
            {
                let p = pdir.join(&f);
                fs.remove_file(&p).map_err(|e| werr(&p, e))?;
            }
        }
        let _ = fs.remove_empty_dir(&pdir);
        let _ = fs.remove_empty_dir(&paths::gcroots_dir(name));
        ctx.say(format!(
            "removed the system profile {} (the store paths go with the next nix-collect-garbage)",
            paths::profile(name).display()
        ));
        let state = paths::state_dir(name);
        if fs.host.exists(&state) {
            ctx.say(format!(
                "kept the state {} (its files; delete it with `rm -rf` after `chattr -i {}/var/empty`, \
                 or next time use --delete-state)",
                state.display(),
                state.display()
            ));
        }
    }
    if ctx.live() {
        if removed_dropin {
            ctx.run(&Cmd::new("systemctl", &["daemon-reload"]))?;
        }
        if removed_units {
            ctx.run(&Cmd::new("networkctl", &["reload"]))?;
            ctx.say("networkd reloaded");
        }
    } else if removed_units {
        ctx.say(format!(
            "offline root {}: the running system was not touched",
            ctx.host.root().display()
        ));
    }
    ctx.say(format!("removed {name}"));
    Ok(())
}
