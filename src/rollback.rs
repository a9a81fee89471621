//! Going back and finishing: `migrate --rollback NAME…` and `migrate --cleanup NAME…`.
//!
//! # The record
//!
//! Before the first step of a container, `execute` writes a record of what the migration is
//! about to create, `/var/lib/nixos-nspawn/migrations/NAME.json` (under `--root`): the legacy
//! paths, where the state goes and how (copy, move, skip), every file with the backup that is
//! kept if it replaces another, the profile links and the declarative Nix file. When the
//! container's steps have all finished, the record gets the time (`finished_ns`). So an
//! interrupted migration has a record too, and rollback knows what to remove without guessing.
//!
//! # Has the new container run?
//!
//! A copy sets every time it can except the change time (ctime), which the kernel sets to the
//! moment of the copy. Anything under `/var/lib/machines/NAME` whose ctime is later than the
//! moment the migration finished was changed afterwards: a boot always writes (the journal in
//! `/var/log/journal/<machine-id>/`, `/var/lib/systemd/random-seed`, `/etc/machine-id` when
//! empty), and so does any other use. That is the evidence both commands use:
//! - `--rollback` refuses when the new state holds such changes (data the legacy container
//!   lacks, which a rollback would throw away) unless `--force`;
//! - `--cleanup` refuses while there are none (the new container has never run: removing the
//!   legacy container would leave nothing proven to work).
//!
//! # What each does
//!
//! Rollback removes the staging directory, the journal, the new state directory (after
//! `--state move`: renames it back), every file the migration wrote (a file it replaced is
//! restored from its backup), the carried profile links, and the container's entries in the
//! declarative Nix file (when none remain: the file is restored from the backup the migration
//! kept, or removed). The legacy container's files are never touched: it is exactly as it was.
//!
//! Cleanup removes the legacy state directory, the imperative `.conf`, the legacy profile and
//! GC roots. A declarative container's `.conf` is NixOS's own (a link into `/etc/static`): while
//! it exists the old definition is still in the configuration, and cleanup refuses.
//!
//! On an offline `--root` neither asks or touches the live systemd.

use crate::host::HostRoot;
use crate::runner::Runner;
use rustix::fs::OFlags;
use serde::{Deserialize, Serialize};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

/// Where records live (a host path).
pub const RECORD_DIR: &str = "/var/lib/nixos-nspawn/migrations";

pub fn record_path(name: &str) -> PathBuf {
    PathBuf::from(format!("{RECORD_DIR}/{name}.json"))
}

/// A file the migration writes, and the backup kept when it replaces another.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRecord {
    /// Host path, as resolved inside the root.
    pub path: PathBuf,
    /// Where the replaced file is kept (exists only if there was another file).
    pub backup: Option<PathBuf>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub name: String,
    pub kind: String,
    pub tool: String,
    /// Nanoseconds since the epoch.
    pub started_ns: u128,
    /// When every step of the container had finished; `None` for an interrupted migration.
    pub finished_ns: Option<u128>,
    pub legacy_state: Option<PathBuf>,
    pub legacy_conf: Option<PathBuf>,
    pub legacy_profile: Option<PathBuf>,
    /// `/var/lib/machines/NAME`, when state comes across.
    pub state_to: Option<PathBuf>,
    /// `copy`, `move` or `skip`.
    pub state_mode: String,
    /// Where profile generations and GC roots were carried as links (`per-nspawn/NAME`).
    #[serde(default)]
    pub links_to: Vec<PathBuf>,
    pub files: Vec<FileRecord>,
    /// The declarative Nix file this container has entries in.
    pub nix_output: Option<FileRecord>,
    /// The container's own networkd units declared in that file: (`networks`|`netdevs`, name).
    #[serde(default)]
    pub networkd_units: Vec<(String, String)>,
    /// The host file `--rewrite` replaced this container's legacy definition in.
    #[serde(default)]
    pub rewrite: Option<RewriteRecord>,
}

/// A host file `--rewrite` edited, as the record of every container rewritten in it keeps it:
/// the original (its backup), a digest of the original and of what was written, and the edits
/// per container, from which the file with any subset of those containers rewritten follows
/// ([`crate::rewrite::compose`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RewriteRecord {
    /// Host path, as resolved inside the root.
    pub file: PathBuf,
    /// `FILE.bak-STAMP`: the original, a hard link to its inode.
    pub backup: PathBuf,
    pub original_blake3: String,
    pub written_blake3: String,
    pub units: Vec<crate::rewrite::Unit>,
    /// Containers of this rewrite rolled back since (their old definitions are back in the
    /// file). Every other one is still rewritten, also after its `--cleanup`.
    #[serde(default)]
    pub rolled_back: Vec<String>,
}

pub fn save(host: &HostRoot, r: &Record) -> std::io::Result<()> {
    let text = serde_json::to_string_pretty(r).map_err(std::io::Error::other)?;
    host.write_atomic(&record_path(&r.name), format!("{text}\n").as_bytes(), 0o600)
        .map(|_| ())
}

pub fn load(host: &HostRoot, name: &str) -> Result<Option<Record>, String> {
    let p = record_path(name);
    match host.read(&p) {
        Ok(b) => serde_json::from_slice(&b)
            .map(Some)
            .map_err(|e| format!("{} is damaged ({e})", p.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("cannot read {}: {e}", p.display())),
    }
}

/// Entries under `dir` (a host path) changed after `since_ns`: (count, the first few paths).
/// Walked fd-relative, never following a link, with `O_NOATIME`: looking changes nothing.
fn changed_since(
    host: &HostRoot,
    dir: &Path,
    since_ns: u128,
) -> Result<(u64, Vec<PathBuf>), String> {
    use rustix::fs::{AtFlags, Dir, FileType, statat};
    let ns = |st: &rustix::fs::Stat| -> u128 {
        (st.st_ctime as i128 * 1_000_000_000 + st.st_ctime_nsec as i128).max(0) as u128
    };
    let open_flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let top = host
        .open(dir, open_flags | OFlags::NOATIME)
        .or_else(|_| host.open(dir, open_flags))
        .map_err(|e| format!("cannot open {}: {e}", dir.display()))?;
    let mut n = 0;
    let mut first = Vec::new();
    let mut note = |path: PathBuf, n: &mut u64| {
        *n += 1;
        if first.len() < 5 {
            first.push(path);
        }
    };
    let st =
        rustix::fs::fstat(&top).map_err(|e| format!("cannot examine {}: {e}", dir.display()))?;
    if ns(&st) > since_ns {
        note(dir.to_path_buf(), &mut n);
    }
    let mut stack = vec![(top, dir.to_path_buf())];
    while let Some((fd, path)) = stack.pop() {
        let mut d =
            Dir::read_from(&fd).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        while let Some(ent) = d.read() {
            let ent = ent.map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            let name = ent.file_name();
            if name == c"." || name == c".." {
                continue;
            }
            let child = path.join(
                <std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(name.to_bytes()),
            );
            let st = statat(&fd, name, AtFlags::SYMLINK_NOFOLLOW)
                .map_err(|e| format!("cannot examine {}: {e}", child.display()))?;
            if ns(&st) > since_ns {
                note(child.clone(), &mut n);
            }
            if FileType::from_raw_mode(st.st_mode) == FileType::Directory {
                let sub = rustix::fs::openat(
                    &fd,
                    name,
                    open_flags | OFlags::NOATIME,
                    rustix::fs::Mode::empty(),
                )
                .or_else(|_| rustix::fs::openat(&fd, name, open_flags, rustix::fs::Mode::empty()))
                .map_err(|e| format!("cannot open {}: {e}", child.display()))?;
                stack.push((sub, child));
            }
        }
    }
    Ok((n, first))
}

fn kind(host: &HostRoot, p: &Path) -> Option<crate::host::Kind> {
    host.kind(p).ok().flatten()
}

/// Remove a file, symlink or whole directory tree at a host path (never following a link).
fn remove_tree(host: &HostRoot, p: &Path) -> std::io::Result<()> {
    let parent = p.parent().unwrap_or(Path::new("/"));
    let name = p
        .file_name()
        .ok_or_else(|| std::io::Error::other(format!("{} has no name", p.display())))?;
    let name = std::ffi::CString::new(std::os::unix::ffi::OsStrExt::as_bytes(name))
        .map_err(|_| std::io::Error::other("NUL in a path"))?;
    let dir = host.open(parent, OFlags::RDONLY | OFlags::DIRECTORY)?;
    crate::state::remove_tree_at(dir.as_fd(), &name)
}

/// Whether a file is one of ours (our header on its first line).
fn is_ours(host: &HostRoot, p: &Path) -> bool {
    host.read(p).is_ok_and(|b| {
        let first = b.split(|c| *c == b'\n').next().unwrap_or_default();
        first.starts_with(b"# ") && first.windows(12).any(|w| w == b"nixos-nspawn")
    })
}

fn active(host: &HostRoot, runner: &Runner, name: &str, unit: &str) -> Result<(), String> {
    match crate::execute::unit_state(name, unit, host, runner) {
        Ok(None) => Ok(()),
        Ok(Some(state)) => Err(format!(
            "{unit} is {state}; stop it first (systemctl stop {unit})"
        )),
        Err(e) => Err(e.message),
    }
}

fn when(ns: u128) -> String {
    format!("{} (seconds since the epoch)", ns / 1_000_000_000)
}

/// What a rollback or cleanup of one container did, or why it refused.
#[derive(Debug, Default, Serialize)]
pub struct Outcome {
    pub name: String,
    pub done: Vec<String>,
    /// Why nothing was done for this container.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refused: Option<String>,
    /// A step failed midway.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failed: Option<String>,
}

/// Check that a rollback of `name` may go ahead; the record when it may.
pub fn check_rollback(
    host: &HostRoot,
    runner: &Runner,
    name: &str,
    force: bool,
) -> Result<Record, String> {
    let r = load(host, name)?.ok_or_else(|| {
        format!(
            "no migration of {name} is recorded ({} does not exist): there is nothing of ours to remove",
            record_path(name).display()
        )
    })?;
    active(
        host,
        runner,
        name,
        &format!("systemd-nspawn@{name}.service"),
    )?;
    if let (Some(to), Some(since)) = (&r.state_to, r.finished_ns)
        && r.state_mode != "skip"
        && kind(host, to).is_some()
    {
        let (n, first) = changed_since(host, to, since)?;
        if n > 0 && !force {
            return Err(format!(
                "the new container {name} has run (or was changed) since the migration finished at {}: {n} entr{} \
                 under {} changed since, e.g. {}. A rollback would throw that data away (the legacy container \
                 does not have it).\n\nCopy what you need into the legacy state first, then pass --force; or keep \
                 the new container.",
                when(since),
                if n == 1 { "y" } else { "ies" },
                to.display(),
                first
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
    }
    if let Some(rw) = &r.rewrite
        && !force
    {
        let st = rewrite_state(host, name, rw)?;
        if st.current.as_deref() != Some(st.expected.as_bytes()) {
            return Err(edited_since(host, name, rw, &st));
        }
    }
    Ok(r)
}

/// A rewritten host file as it is, and as nixos-nspawn left it.
struct RewriteState {
    /// The original (the backup, checked against its digest).
    original: String,
    /// The file now (`None`: it is gone).
    current: Option<Vec<u8>>,
    /// What the file must be if nobody changed it: the original with the containers of that
    /// rewrite that are not rolled back yet rewritten.
    expected: String,
    /// Those containers.
    applied: Vec<String>,
}

fn rewrite_state(host: &HostRoot, name: &str, rw: &RewriteRecord) -> Result<RewriteState, String> {
    let file = rw.file.display();
    let bak = rw.backup.display();
    let original = host
        .read(&rw.backup)
        .map_err(|e| {
            format!(
                "the original of {file}, kept as {bak} when --rewrite replaced {name}'s definition, cannot be \
                 read ({e}): {name}'s old definition cannot be given back.\n\nPut the original back at {bak} \
                 (from your own backups or version control) and roll back again, or pass --force to roll back \
                 the rest and leave {file} as it is (then restore containers.{name} in it by hand)."
            )
        })
        .and_then(|b| {
            if blake3::hash(&b).to_hex().as_str() == rw.original_blake3 {
                String::from_utf8(b).map_err(|_| format!("{bak} is not UTF-8 text"))
            } else {
                Err(format!(
                    "{bak}, the original of {file} kept when --rewrite replaced {name}'s definition, was \
                     changed since: it is not the original any more, and {name}'s old definition cannot be \
                     given back from it.\n\nPut the original back at {bak} and roll back again, or pass \
                     --force to roll back the rest and leave {file} as it is (then restore containers.{name} \
                     in it by hand)."
                ))
            }
        })?;
    // The containers of that rewrite not rolled back yet (one cleaned up stays rewritten).
    let applied: Vec<String> = rw
        .units
        .iter()
        .flat_map(|u| u.containers())
        .filter(|c| c == name || !rw.rolled_back.contains(c))
        .collect();
    let expected =
        crate::rewrite::compose(&original, &rw.units, &|c| applied.iter().any(|a| a == c))
            .ok_or_else(|| {
                format!(
                    "the record {} does not fit {bak} (its edits lie outside the file); restore \
             containers.{name} in {file} by hand",
                    record_path(name).display()
                )
            })?;
    let current = match host.read(&rw.file) {
        Ok(b) => Some(b),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(format!("cannot read {file}: {e}")),
    };
    Ok(RewriteState {
        original,
        current,
        expected,
        applied,
    })
}

/// Why a rewritten file is not given back: it was changed since (the admin's edits, or a later
/// `--rewrite` run).
fn edited_since(host: &HostRoot, name: &str, rw: &RewriteRecord, st: &RewriteState) -> String {
    let file = rw.file.display();
    let bak = rw.backup.display();
    // A later --rewrite of the same file: its containers come back first.
    let mut later: Vec<String> = host
        .read_dir(Path::new(RECORD_DIR))
        .unwrap_or_default()
        .iter()
        .filter_map(|e| e.name.to_str()?.strip_suffix(".json").map(String::from))
        .filter(|n| {
            load(host, n).ok().flatten().is_some_and(|o| {
                o.rewrite
                    .is_some_and(|x| x.file == rw.file && x.backup != rw.backup)
            })
        })
        .collect();
    later.sort();
    let what = if st.current.is_none() {
        "is gone".to_string()
    } else {
        "was changed since nixos-nspawn rewrote it".to_string()
    };
    let mut msg = format!(
        "{file} {what}: giving {name}'s old definition back would throw those changes away.\n\n"
    );
    if !later.is_empty() {
        msg.push_str(&format!(
            "A later `migrate --rewrite` rewrote it again ({}): roll those back first \
             (`migrate --rollback {}`), then {name}.\n",
            later.join(", "),
            later.join(" ")
        ));
    }
    msg.push_str(&format!(
        "See what changed with `diff {bak} {file}` (the original is {bak}). Either undo those changes and \
         roll back again, or pass --force: the file as it is now is kept as {file}.bak-TIME, and {file} \
         becomes the original with {} (your changes are then only in that backup).",
        match st.applied.iter().filter(|a| *a != name).count() {
            0 => "nothing rewritten".to_string(),
            _ => format!(
                "only {} rewritten",
                st.applied
                    .iter()
                    .filter(|a| *a != name)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    ));
    msg
}

/// Give a rewritten container's old definition back: the file becomes the original with the
/// other containers of that rewrite still rewritten; when none is left, the original itself
/// (the backup renamed back: the same inode, bytes, mode and times).
fn restore_rewrite(
    host: &HostRoot,
    name: &str,
    rw: &RewriteRecord,
    force: bool,
    out: &mut Outcome,
) -> Result<(), String> {
    // As it is now: a rollback earlier in this run may have noted itself in it.
    let fresh = load(host, name)?.and_then(|r| r.rewrite);
    let rw = fresh.as_ref().unwrap_or(rw);
    let file = rw.file.display();
    let st = match rewrite_state(host, name, rw) {
        Ok(st) => st,
        Err(e) if force => {
            out.done.push(format!(
                "--force: left {file} as it is, {name}'s old definition was not given back: {}",
                e.split("\n\n").next().unwrap_or(&e)
            ));
            return Ok(());
        }
        Err(e) => return Err(e),
    };
    let mode = host
        .open(&rw.file, OFlags::RDONLY | OFlags::NOFOLLOW)
        .and_then(|fd| rustix::fs::fstat(&fd).map_err(std::io::Error::from))
        .map(|s| s.st_mode & 0o7777)
        .unwrap_or(0o644);
    if st.current.as_deref() != Some(st.expected.as_bytes()) {
        if !force {
            return Err(edited_since(host, name, rw, &st));
        }
        if st.current.is_some() {
            let kept = fresh_backup(host, &rw.file)
                .map_err(|e| format!("cannot keep {file} as it is now: {e}; it was not changed"))?;
            out.done.push(format!(
                "--force: kept {file} as it was (changed since the rewrite) as {}",
                kept.display()
            ));
        }
    }
    let remaining: Vec<&String> = st.applied.iter().filter(|a| *a != name).collect();
    if remaining.is_empty() {
        host.rename(&rw.backup, &rw.file).map_err(|e| {
            format!(
                "cannot restore {file} from {}: {e}; it was not changed",
                rw.backup.display()
            )
        })?;
        out.done.push(format!(
            "restored {file} from its backup {} (the original, byte for byte): containers.{name} is \
             defined there again",
            rw.backup.display()
        ));
    } else {
        let text = crate::rewrite::compose(&st.original, &rw.units, &|c| {
            remaining.iter().any(|a| *a == c)
        })
        .ok_or_else(|| format!("the record does not fit {}", rw.backup.display()))?;
        host.write_atomic(&rw.file, text.as_bytes(), mode)
            .map_err(|e| format!("cannot write {file}: {e}; it was not changed"))?;
        // The others' records note it: their file no longer holds this one's new definition.
        for other in &remaining {
            if let Ok(Some(mut o)) = load(host, other)
                && let Some(x) = o.rewrite.as_mut()
                && x.file == rw.file
                && x.backup == rw.backup
                && !x.rolled_back.iter().any(|n| n == name)
            {
                x.rolled_back.push(name.to_string());
                save(host, &o).map_err(|e| {
                    format!(
                        "{file} was written, but the record {} could not be updated ({e}): roll {other} \
                         back with --force",
                        record_path(other).display()
                    )
                })?;
            }
        }
        out.done.push(format!(
            "gave containers.{name} its old definition back in {file}; {} stay{} rewritten (the \
             original of the whole file is still kept as {})",
            remaining
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            if remaining.len() == 1 { "s" } else { "" },
            rw.backup.display()
        ));
    }
    Ok(())
}

/// A backup `FILE.bak-SECONDS` (`-2`, `-3`, … when that name is taken, e.g. by the backup the
/// rewrite made in the same second).
fn fresh_backup(host: &HostRoot, p: &Path) -> std::io::Result<PathBuf> {
    host.backup_fresh(p, &crate::clock::unix_seconds().to_string())
}

/// Undo the migration of one container (after [`check_rollback`]).
pub fn rollback(host: &HostRoot, r: &Record, force: bool, out: &mut Outcome) -> Result<(), String> {
    let name = &r.name;
    // The host's own file first: if its old definition cannot be given back, nothing else is
    // undone either.
    if let Some(rw) = &r.rewrite {
        restore_rewrite(host, name, rw, force, out)?;
    }
    // The state: staging, journal, the new directory (moved back after --state move).
    if let Some(to) = &r.state_to {
        let parent = to.parent().unwrap_or(Path::new("/"));
        let staging = parent.join(format!(".{name}.partial"));
        if kind(host, &staging).is_some() {
            remove_tree(host, &staging)
                .map_err(|e| format!("cannot remove {}: {e}", staging.display()))?;
            out.done.push(format!(
                "removed the interrupted copy {}",
                staging.display()
            ));
        }
        if kind(host, to).is_some() {
            match (r.state_mode.as_str(), &r.legacy_state) {
                ("move", Some(legacy)) if kind(host, legacy).is_none() => {
                    host.rename(to, legacy).map_err(|e| {
                        format!(
                            "cannot move {} back to {}: {e}",
                            to.display(),
                            legacy.display()
                        )
                    })?;
                    out.done.push(format!(
                        "moved the state back: {} → {}",
                        to.display(),
                        legacy.display()
                    ));
                }
                ("copy", _) => {
                    remove_tree(host, to)
                        .map_err(|e| format!("cannot remove {}: {e}", to.display()))?;
                    out.done
                        .push(format!("removed the copied state {}", to.display()));
                }
                _ => out.done.push(format!(
                    "left {} in place: the migration did not copy it (state {})",
                    to.display(),
                    r.state_mode
                )),
            }
        }
        let journal = parent.join(format!(".{name}.journal"));
        if kind(host, &journal).is_some() {
            host.remove_file(&journal)
                .map_err(|e| format!("cannot remove {}: {e}", journal.display()))?;
            out.done.push(format!("removed {}", journal.display()));
        }
    }
    for f in &r.files {
        restore_or_remove(host, f, out)?;
    }
    for p in &r.links_to {
        if kind(host, p).is_some() {
            remove_tree(host, p).map_err(|e| format!("cannot remove {}: {e}", p.display()))?;
            out.done
                .push(format!("removed the carried links {}", p.display()));
        }
    }
    if let Some(nix) = &r.nix_output {
        remove_from_nix_file(host, r, nix, out)?;
    }
    host.remove_file(&record_path(name))
        .map_err(|e| format!("cannot remove {}: {e}", record_path(name).display()))?;
    remove_our_empty_dirs(host, name);
    out.done.push(match &r.rewrite {
        Some(rw) => format!(
            "the legacy container {name} is as it was, and its containers.{name} definition is back in {}: \
             `nixos-rebuild switch` if you had already rebuilt with the new definition, then \
             `systemctl start container@{name}`",
            rw.file.display()
        ),
        None => format!(
            "the legacy container {name} is as it was: start it with `systemctl start container@{name}` \
             (restore its containers.{name} definition first if you removed it)"
        ),
    });
    Ok(())
}

/// Directories only nixos-nspawn makes, removed when the rollback left them empty (never
/// `/var/lib/machines` or `/etc/systemd/system.control`, which other tools use too).
fn remove_our_empty_dirs(host: &HostRoot, name: &str) {
    let dropin = format!(
        "{}/systemd-nspawn@{name}.service.d",
        crate::plan::IMPERATIVE_UNIT_DIR
    );
    for d in [
        dropin.as_str(),
        "/etc/nixos-nspawn",
        crate::plan::IMPERATIVE_NSPAWN_DIR,
        crate::plan::IMPERATIVE_NETWORK_DIR,
        "/var/lib/nixos-nspawn/imperative",
        RECORD_DIR,
        "/var/lib/nixos-nspawn",
        "/nix/var/nix/profiles/per-nspawn",
        "/nix/var/nix/gcroots/per-nspawn",
    ] {
        let p = Path::new(d);
        let (Some(parent), Some(n)) = (p.parent(), p.file_name()) else {
            continue;
        };
        let Ok(n) = std::ffi::CString::new(std::os::unix::ffi::OsStrExt::as_bytes(n)) else {
            continue;
        };
        if let Ok(dir) = host.open(
            parent,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW,
        ) {
            // Fails (and is meant to) when the directory holds anything.
            let _ = rustix::fs::unlinkat(&dir, &n, rustix::fs::AtFlags::REMOVEDIR);
        }
    }
}

fn restore_or_remove(host: &HostRoot, f: &FileRecord, out: &mut Outcome) -> Result<(), String> {
    if let Some(b) = &f.backup
        && kind(host, b).is_some()
    {
        host.rename(b, &f.path).map_err(|e| {
            format!(
                "cannot restore {} from {}: {e}",
                f.path.display(),
                b.display()
            )
        })?;
        out.done.push(format!(
            "restored {} from its backup {}",
            f.path.display(),
            b.display()
        ));
    } else if kind(host, &f.path).is_some() {
        if is_ours(host, &f.path) {
            host.remove_file(&f.path)
                .map_err(|e| format!("cannot remove {}: {e}", f.path.display()))?;
            out.done.push(format!("removed {}", f.path.display()));
        } else {
            out.done.push(format!(
                "left {}: it is no longer a file of ours (somebody changed it)",
                f.path.display()
            ));
        }
    }
    Ok(())
}

fn remove_from_nix_file(
    host: &HostRoot,
    r: &Record,
    nix: &FileRecord,
    out: &mut Outcome,
) -> Result<(), String> {
    let name = &r.name;
    let Ok(text) = host.read_to_string(&nix.path) else {
        return Ok(());
    };
    if !is_ours(host, &nix.path) {
        out.done.push(format!(
            "left {}: it is no longer a file of ours; remove nixos.containers.instances.{name} from it yourself",
            nix.path.display()
        ));
        return Ok(());
    }
    let Some((rest, others)) = crate::nix_block::remove_instance(&text, name, &r.networkd_units)
    else {
        out.done.push(format!(
            "left {}: it does not parse any more; remove nixos.containers.instances.{name} from it yourself",
            nix.path.display()
        ));
        return Ok(());
    };
    if others > 0 {
        if rest != text {
            host.write_atomic(&nix.path, rest.as_bytes(), 0o644)
                .map_err(|e| format!("cannot write {}: {e}", nix.path.display()))?;
            out.done.push(format!(
                "removed {name}'s entries from {} ({others} other container(s) stay in it)",
                nix.path.display()
            ));
        }
    } else {
        restore_or_remove(host, nix, out)?;
    }
    Ok(())
}

/// Check that a cleanup of `name` may go ahead; the record when it may.
pub fn check_cleanup(host: &HostRoot, runner: &Runner, name: &str) -> Result<Record, String> {
    let r = load(host, name)?.ok_or_else(|| {
        format!(
            "no migration of {name} is recorded ({} does not exist); cleanup only removes a legacy container \
             that was migrated with nixos-nspawn",
            record_path(name).display()
        )
    })?;
    let Some(finished) = r.finished_ns else {
        return Err(format!(
            "the migration of {name} did not finish; finish it (run `nixos-nspawn migrate` again) or roll it back \
             (`nixos-nspawn migrate --rollback {name}`)"
        ));
    };
    active(host, runner, name, &format!("container@{name}.service"))?;
    if let Some(conf) = &r.legacy_conf
        && kind(host, conf) == Some(crate::host::Kind::Symlink)
    {
        return Err(format!(
            "{} still exists: it is NixOS's own file for the legacy definition containers.{name}, which is still \
             in the configuration.\n\nRemove containers.{name} from the configuration and run nixos-rebuild, \
             then clean up.",
            conf.display()
        ));
    }
    match &r.state_to {
        Some(to) if r.state_mode != "skip" && kind(host, to).is_some() => {
            let (n, _) = changed_since(host, to, finished)?;
            if n == 0 {
                return Err(format!(
                    "the new container {name} has never run: nothing under {} changed since the migration finished \
                     at {} (a boot always writes there: the journal, /var/lib/systemd/random-seed).\n\nStart it \
                     (machinectl start {name}), check that it works, then clean up.",
                    to.display(),
                    when(finished)
                ));
            }
        }
        _ => {
            return Err(format!(
                "{name}'s state was not brought across by the migration (state {}), so there is no evidence that \
                 the new container works; remove the legacy files yourself when you are sure",
                r.state_mode
            ));
        }
    }
    Ok(r)
}

/// Remove the legacy container's files (after [`check_cleanup`]).
pub fn cleanup(host: &HostRoot, r: &Record, out: &mut Outcome) -> Result<(), String> {
    let name = &r.name;
    let gcroots = PathBuf::from(format!("/nix/var/nix/gcroots/per-container/{name}"));
    let mut paths: Vec<(PathBuf, &str)> = Vec::new();
    if r.state_mode == "copy"
        && let Some(s) = &r.legacy_state
    {
        paths.push((s.clone(), "the legacy state"));
    }
    if let Some(c) = &r.legacy_conf {
        paths.push((c.clone(), "the legacy configuration"));
    }
    if let Some(p) = &r.legacy_profile {
        paths.push((p.clone(), "the legacy profile"));
    }
    paths.push((gcroots, "the legacy GC roots"));
    for (p, what) in paths {
        if kind(host, &p).is_none() {
            continue;
        }
        remove_tree(host, &p).map_err(|e| {
            format!(
                "cannot remove {what} {}: {e}{}",
                p.display(),
                if e.kind() == std::io::ErrorKind::PermissionDenied {
                    " (an immutable file inside? lsattr -R, chattr -i)"
                } else {
                    ""
                }
            )
        })?;
        out.done.push(format!("removed {what} {}", p.display()));
    }
    if let Some(to) = &r.state_to {
        let journal = to
            .parent()
            .unwrap_or(Path::new("/"))
            .join(format!(".{name}.journal"));
        if kind(host, &journal).is_some() {
            host.remove_file(&journal)
                .map_err(|e| format!("cannot remove {}: {e}", journal.display()))?;
        }
    }
    host.remove_file(&record_path(name))
        .map_err(|e| format!("cannot remove {}: {e}", record_path(name).display()))?;
    out.done.push(format!(
        "{name} is now only the new container; there is no rollback any more"
    ));
    Ok(())
}

/// Which of the two commands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    Rollback,
    Cleanup,
}

impl Command {
    fn flag(self) -> &'static str {
        match self {
            Command::Rollback => "--rollback",
            Command::Cleanup => "--cleanup",
        }
    }
}

/// The JSON document of `--rollback`/`--cleanup --json`.
#[derive(Debug, Serialize)]
struct Document<'a> {
    version: u32,
    command: &'static str,
    containers: &'a [Outcome],
    outcome: crate::report::Outcome,
    exit_code: u8,
}

/// `migrate --rollback NAME…` / `migrate --cleanup NAME…`: every container is checked first;
/// one refusal refuses all (exit 4, nothing done). Then a confirmation (or `--yes`), then each.
#[allow(clippy::too_many_arguments)]
pub fn run(
    root: &Path,
    names: &[String],
    command: Command,
    yes: bool,
    force: bool,
    json: bool,
    quiet: bool,
    verbose: bool,
) -> Result<u8, crate::error::Error> {
    use crate::error::{Error, exit};
    use crate::report::Outcome as RunOutcome;
    use std::io::IsTerminal;
    let host = HostRoot::new(root).map_err(|e| {
        Error::Usage(format!(
            "--root {}: {e}\n\nGive the directory the host's root filesystem is mounted at.",
            root.display()
        ))
    })?;
    let runner = Runner { verbose };
    let mut outcomes: Vec<Outcome> = Vec::new();
    let mut records = Vec::new();
    for name in names {
        let checked = match command {
            Command::Rollback => check_rollback(&host, &runner, name, force),
            Command::Cleanup => check_cleanup(&host, &runner, name),
        };
        match checked {
            Ok(r) => {
                records.push(r);
                outcomes.push(Outcome {
                    name: name.clone(),
                    ..Default::default()
                });
            }
            Err(why) => outcomes.push(Outcome {
                name: name.clone(),
                refused: Some(why),
                ..Default::default()
            }),
        }
    }
    let print = |outcomes: &[Outcome], outcome: RunOutcome| -> u8 {
        let code = outcome.exit_code();
        if json {
            let doc = Document {
                version: crate::report::REPORT_VERSION,
                command: match command {
                    Command::Rollback => "rollback",
                    Command::Cleanup => "cleanup",
                },
                containers: outcomes,
                outcome,
                exit_code: code,
            };
            println!(
                "{}",
                serde_json::to_string_pretty(&doc)
                    .unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
            );
        } else if !quiet {
            for o in outcomes {
                for d in &o.done {
                    println!("{}: {d}", o.name);
                }
            }
        }
        for o in outcomes {
            if let Some(why) = &o.refused {
                eprintln!(
                    "nixos-nspawn: {} {}: refused, nothing was done: {why}",
                    command.flag(),
                    o.name
                );
            }
            if let Some(why) = &o.failed {
                eprintln!("nixos-nspawn: {} {}: failed: {why}", command.flag(), o.name);
            }
        }
        code
    };
    if outcomes.iter().any(|o| o.refused.is_some()) {
        return Ok(print(&outcomes, RunOutcome::Refused));
    }
    if !yes {
        if !(std::io::stdin().is_terminal() && std::io::stderr().is_terminal()) {
            return Err(Error::Usage(format!(
                "{} asks before it removes anything, but there is no terminal to ask on\n\n\
                 Pass --yes to go ahead without asking.",
                command.flag()
            )));
        }
        let what = match command {
            Command::Rollback => {
                let mut files: Vec<String> = records
                    .iter()
                    .filter_map(|r| r.rewrite.as_ref())
                    .map(|rw| rw.file.display().to_string())
                    .collect();
                files.sort();
                files.dedup();
                format!(
                    "Roll back {}? This removes what the migration created (new state, files, profile links){}; \
                     the legacy containers stay as they are.",
                    names.join(", "),
                    if files.is_empty() {
                        String::new()
                    } else {
                        format!(
                            " and puts the old definitions back into {}",
                            files.join(", ")
                        )
                    }
                )
            }
            Command::Cleanup => format!(
                "Clean up {}? This removes the legacy state, configuration, profiles and GC roots for good; \
                 there is no rollback afterwards.",
                names.join(", ")
            ),
        };
        let ok = dialoguer::Confirm::new()
            .with_prompt(what)
            .default(false)
            .wait_for_newline(true)
            .interact_on(&console::Term::stderr())
            .map_err(|e| Error::Other(format!("cannot ask on the terminal: {e}")))?;
        if !ok {
            eprintln!("Nothing was done.");
            return Ok(exit::SUCCESS);
        }
    }
    let mut result = RunOutcome::Success;
    for (r, o) in records.iter().zip(outcomes.iter_mut()) {
        let done = match command {
            Command::Rollback => rollback(&host, r, force, o),
            Command::Cleanup => cleanup(&host, r, o),
        };
        if let Err(e) = done {
            o.failed = Some(e);
            result = RunOutcome::Failed;
            break;
        }
    }
    Ok(print(&outcomes, result))
}
