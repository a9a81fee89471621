//! Profile generations and the unit files recorded with each, and `list-generations`.
//!
//! `nix-env --set` makes `system-N-link` and points `system` at it. Next to the profile we
//! keep, per generation, the exact bytes of every file installed for it (`.nspawn`, network
//! units, drop-in), its `data.json` and what it was built from, so that a rollback restores
//! the units together with the system. Generations made by something else (a legacy profile
//! carried over by `migrate`) have no record: they can be listed, not rolled back to.

use super::activation::{DROPIN, Files};
use super::fsio::Fs;
use super::source::Source;
use super::{Ctx, nspawn_header, paths};
use crate::error::Error;
use crate::host::Kind;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

#[derive(Clone, Debug, Serialize)]
pub struct Generation {
    pub number: u64,
    /// The system the generation points at (the link's target).
    pub system: PathBuf,
    pub current: bool,
    /// When the generation was made (the link's mtime, seconds since the epoch).
    pub created: i64,
    /// Unit files were recorded for it (it can be rolled back to).
    pub recorded: bool,
    /// What it was built from, when recorded.
    pub source: Option<String>,
}

/// What is kept per generation besides the unit files.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Meta {
    pub source: Source,
    pub system: String,
}

pub struct Record {
    pub files: Files,
    pub data_json: String,
    pub meta: Meta,
}

fn generation_of(link_name: &str) -> Option<u64> {
    link_name
        .strip_prefix("system-")?
        .strip_suffix("-link")?
        .parse()
        .ok()
}

/// The generation `system` points at.
pub fn current(fs: &Fs<'_>, name: &str) -> Option<u64> {
    let t = fs.read_link(&paths::profile(name)).ok()?;
    generation_of(t.file_name()?.to_str()?)
}

/// Every generation, oldest first.
pub fn list(fs: &Fs<'_>, name: &str) -> Result<Vec<Generation>, Error> {
    let dir = paths::profile_dir(name);
    let cur = current(fs, name);
    let mut out = Vec::new();
    for (entry, kind) in fs.list(&dir).map_err(|e| Error::Read {
        path: dir.clone(),
        source: e,
    })? {
        let Some(n) = generation_of(&entry) else {
            continue;
        };
        if kind != Kind::Symlink {
            continue;
        }
        let link = dir.join(&entry);
        let system = fs.read_link(&link).unwrap_or_default();
        let created = fs.link_mtime(&link).unwrap_or(0);
        let meta = read_meta(fs, name, n);
        out.push(Generation {
            number: n,
            system,
            current: cur == Some(n),
            created,
            recorded: meta.is_some(),
            source: meta.map(|m| m.source.describe()),
        });
    }
    out.sort_by_key(|g| g.number);
    Ok(out)
}

fn read_meta(fs: &Fs<'_>, name: &str, generation: u64) -> Option<Meta> {
    let text = fs
        .read(&paths::generation_dir(name, generation).join("source.json"))
        .ok()??;
    serde_json::from_str(&text).ok()
}

/// The recorded files of a generation, if any.
pub fn read_record(fs: &Fs<'_>, name: &str, generation: u64) -> Option<Record> {
    let dir = paths::generation_dir(name, generation);
    let meta = read_meta(fs, name, generation)?;
    let data_json = fs.read(&dir.join("data.json")).ok()??;
    let mut files = Files::new();
    for (f, kind) in fs.list(&dir.join("units")).ok()? {
        if kind == Kind::File {
            files.insert(f.clone(), fs.read(&dir.join("units").join(&f)).ok()??);
        }
    }
    Some(Record {
        files,
        data_json,
        meta,
    })
}

/// Record the files of a generation (before they are installed).
pub fn write_record(
    fs: &Fs<'_>,
    name: &str,
    generation: u64,
    files: &Files,
    data_json: &str,
    meta: &Meta,
) -> Result<PathBuf, Error> {
    let dir = paths::generation_dir(name, generation);
    let w = |p: PathBuf, text: &str| {
        fs.write(&p, text, 0o644)
            .map_err(|e| Error::Write { path: p, source: e })
    };
    // A leftover record of a generation number that was deleted and reused is stale.
    if let Ok(Some(_)) = fs.kind(&dir) {
        fs.remove_tree(&dir).map_err(|e| Error::Write {
            path: dir.clone(),
            source: e,
        })?;
    }
    for (role, text) in files {
        w(dir.join("units").join(role), text)?;
    }
    w(dir.join("data.json"), data_json)?;
    let meta_json = serde_json::to_string_pretty(meta)
        .map_err(|e| Error::Other(format!("cannot serialise source.json: {e}")))?;
    w(dir.join("source.json"), &meta_json)?;
    Ok(dir)
}

/// Where a file of the given role is installed.
pub fn destination(name: &str, role: &str) -> PathBuf {
    if role == format!("{name}.nspawn") {
        paths::nspawn_file(name)
    } else if role == DROPIN {
        paths::dropin_file(name)
    } else {
        Path::new(paths::NETWORK_DIR).join(role)
    }
}

/// The rendered files as they are installed: the `.nspawn` file gets the header that marks it
/// as ours.
pub fn installable(name: &str, rendered: &Files) -> Files {
    let key = format!("{name}.nspawn");
    rendered
        .iter()
        .map(|(role, text)| {
            if *role == key {
                (role.clone(), format!("{}{text}", nspawn_header(name)))
            } else {
                (role.clone(), text.clone())
            }
        })
        .collect()
}

/// What is installed now for the given roles (missing files are left out).
pub fn installed<'r>(
    fs: &Fs<'_>,
    name: &str,
    roles: impl IntoIterator<Item = &'r String>,
) -> Result<Files, Error> {
    let mut out = Files::new();
    for role in roles {
        let p = destination(name, role);
        if let Some(t) = fs
            .read(&p)
            .map_err(|e| Error::Read { path: p, source: e })?
        {
            out.insert(role.clone(), t);
        }
    }
    Ok(out)
}

/// Where networkd sees a network unit (a link to its [`destination`]); `None` for other roles.
pub fn runtime_link(role: &str) -> Option<PathBuf> {
    (role.ends_with(".network") || role.ends_with(".netdev"))
        .then(|| Path::new(paths::RUNTIME_NETWORK_DIR).join(role))
}

/// Install `new` over `old`: write every new file, remove the old roles that are gone. On the
/// running host (`live`), network units are also linked into `/run/systemd/network`.
/// Returns what was done, for the report.
pub fn install(
    fs: &Fs<'_>,
    name: &str,
    old: &Files,
    new: &Files,
    live: bool,
) -> Result<Vec<String>, Error> {
    let werr = |p: &Path| {
        let p = p.to_path_buf();
        move |e| Error::Write { path: p, source: e }
    };
    let mut done = Vec::new();
    for (role, text) in new {
        let p = destination(name, role);
        if old.get(role) != Some(text) {
            fs.write(&p, text, 0o644).map_err(werr(&p))?;
            done.push(format!("wrote {}", p.display()));
        }
        if live && let Some(link) = runtime_link(role) {
            fs.symlink(&p, &link).map_err(werr(&link))?;
        }
    }
    for role in old.keys().filter(|r| !new.contains_key(*r)) {
        let p = destination(name, role);
        if fs.remove_file(&p).map_err(werr(&p))? {
            done.push(format!("removed {}", p.display()));
        }
        if let Some(link) = runtime_link(role)
            && live
        {
            fs.remove_file(&link).map_err(werr(&link))?;
        }
    }
    Ok(done)
}

/// Make the autostart link match `want` (the generation's `autoStart`). Returns what changed.
pub fn autostart(fs: &Fs<'_>, name: &str, want: bool) -> Result<Option<String>, Error> {
    let link = paths::autostart_link(name);
    let werr = |e| Error::Write {
        path: link.clone(),
        source: e,
    };
    let have = matches!(fs.kind(&link), Ok(Some(Kind::Symlink)));
    match (have, want) {
        (false, true) => {
            let target = paths::NSPAWN_TEMPLATE
                .iter()
                .find(|t| fs.host.exists(Path::new(t)))
                .unwrap_or(&paths::NSPAWN_TEMPLATE[paths::NSPAWN_TEMPLATE.len() - 1]);
            fs.symlink(Path::new(target), &link).map_err(werr)?;
            Ok(Some(format!(
                "starts at boot: linked {} (autoStart)",
                link.display()
            )))
        }
        (true, false) => {
            fs.remove_file(&link).map_err(werr)?;
            Ok(Some(format!(
                "no longer starts at boot: removed {} (autoStart = false)",
                link.display()
            )))
        }
        _ => Ok(None),
    }
}

/// `autoStart` of a generation's `data.json`.
pub fn auto_start_of(data_json: &str) -> bool {
    serde_json::from_str::<serde_json::Value>(data_json)
        .ok()
        .and_then(|d| d["autoStart"].as_bool())
        .unwrap_or(false)
}

/// `list-generations NAME`.
pub fn list_generations(ctx: &mut Ctx<'_>, name: &str, json: bool) -> Result<(), Error> {
    super::require_imperative(ctx, name, "list-generations")?;
    let gens = list(&ctx.fs(), name)?;
    if json {
        let v = serde_json::json!({ "version": 1, "name": name, "generations": gens });
        println!("{v:#}");
        return Ok(());
    }
    if gens.is_empty() {
        ctx.say(format!(
            "{name} has no generations in {}",
            paths::profile_dir(name).display()
        ));
        return Ok(());
    }
    for g in &gens {
        ctx.say(format!(
            "{:>4}   {}   {}{}{}",
            g.number,
            utc(g.created),
            g.system.display(),
            if g.current { "   (current)" } else { "" },
            match &g.source {
                Some(s) => format!("   from {s}"),
                None => "   (no unit files recorded: not made by nixos-nspawn, cannot be rolled back to)"
                    .to_string(),
            }
        ));
    }
    Ok(())
}

/// `YYYY-MM-DD HH:MM:SS` (UTC) for seconds since the epoch.
pub fn utc(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Howard Hinnant's days → civil date.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn utc_dates() {
        assert_eq!(super::utc(0), "1970-01-01 00:00:00");
        assert_eq!(super::utc(951_782_400), "2000-02-29 00:00:00");
        assert_eq!(super::utc(1_796_300_000), "2026-12-03 12:13:20");
    }
}
