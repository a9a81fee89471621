//! The state engine: brings a legacy container's state directory (its rootfs) to its new place,
//! faithfully, resumably, verifiably, and without ever being tricked by the rootfs's owner.
//!
//! # API
//!
//! - [`check_move`]`(src, dest)`: can `--state move` rename it (same mount, same filesystem,
//!   same btrfs subvolume, not a read-only subvolume leaving its directory, no mount points
//!   inside)? Writes nothing.
//! - [`migrate_state`]`(src, dest, &`[`MigrateStateOptions`]`)` → [`StateOutcome`]: copy (or, on
//!   request, move) `src` to `dest` through a staging directory `dest.parent/.NAME.partial`
//!   (holding `tree/` and `journal`), verify, then rename into place. Idempotent: when `dest` is
//!   a finished copy of `src` (journal `dest.parent/.NAME.journal` says done and a metadata
//!   comparison passes) it returns [`StateOutcome::AlreadyDone`] and writes nothing.
//! - [`verify_tree`]`(src, dst, `[`Verify`]`)` → [`VerifyReport`]: counts and the first
//!   differences, with paths.
//! - [`required_space`]`(src)` → [`SpaceNeed`], [`free_space`]`(path)` → bytes.
//! - [`carry_profile`]`(from, to)` → [`ProfileOutcome`]: a nix profile directory
//!   (`system -> system-N-link -> /nix/store/…`) carried as symlinks; the store is never read.
//! - [`Progress`]: callbacks for a progress bar ([`NoProgress`] when none is wanted).
//! - Errors: [`StateError`] / [`StateErrorKind`], naming the path, the operation and the fix.
//!
//! All paths given to this module are REAL paths (already resolved against `--root`); their last
//! component must not be a symlink.
//!
//! # What is kept
//!
//! Regular files (sparse stay sparse: FICLONE when possible, else SEEK_DATA/SEEK_HOLE plus
//! `copy_file_range`), directories, symlinks (never followed, dangling or absolute ones
//! included), hard links (a `(dev, ino)` map), fifos, sockets, character and block devices;
//! uid/gid (any 32-bit value), all mode bits including setuid/setgid/sticky, every extended
//! attribute (`trusted.*`, `security.capability`, `user.*`, POSIX ACLs), ns atime/mtime on
//! files, symlinks and directories, the inode flags of the table in `flags.rs` (`+C` early,
//! `+i`/`+a` last; the root's `+i`/`+a` after the final rename, which they would forbid); flags
//! the destination cannot hold are reported ([`CopyReport::flags_lost`], the warning
//! [`INODE_FLAGS_LOST`]). Not kept: ctime (cannot be set). Nested btrfs subvolumes (another
//! `st_dev`, inode 256, yet on the parent's mount per `STATX_MNT_ID`: tmpfiles `v` lines make
//! them inside NixOS guests) are copied: as subvolumes again where the copy is on btrfs, else as
//! plain directories ([`STATE_SUBVOLUMES_FLATTENED`]). A read-only subvolume's property is set
//! last, when everything in it is finished (for the state directory itself after the final
//! rename, which it would forbid, and after the root's `+i`/`+a`); an interrupted run's
//! read-only subvolume is made writable again to be resumed into. Off btrfs the property is
//! lost, and the flattened warning names the subvolumes that had it. Mount points inside the source (a mount
//! root according to `statx`, which also catches bind mounts from the same filesystem, or
//! another `st_dev` that is not such a subvolume) are not crossed: an empty directory stands in
//! for a directory mount, a bind-mounted file is left out, and the reports list them
//! ([`STATE_MOUNTS_SKIPPED`]).
//!
//! # Safety against a hostile rootfs
//!
//! Every operation is relative to a directory fd opened with `O_NOFOLLOW|O_DIRECTORY`, one
//! name component at a time; after opening, the fd's `(dev, ino)` must equal the `lstat` the
//! decision was made on, else [`StateErrorKind::SourceChanged`]. Files are opened with
//! `O_NOFOLLOW|O_NONBLOCK|O_NOATIME`. The source is only read: no chmod, chown or utimes on it.
//! The staging directory is created `0700`, so the container's users cannot reach it.
//!
//! # Resume and atomicity
//!
//! The journal records the source's identity (its path relative to the destination's parent,
//! and the inode of its root: a tree mounted elsewhere is still recognised) and checkpoints
//! (`syncfs`). A re-run after a crash
//! or kill -9 keeps entries whose type, owner, mode, size and mtime match (the mtime is set
//! last), removes leftovers the source no longer has, and copies the rest. Nothing is renamed
//! into place before `syncfs` and verification; after a failed verification the next run
//! re-copies every file's data.
//!
//! Two rounds of syncs make a copy durable, whatever its size: the `syncfs` after copying
//! (the tree and the journal's `start`; it runs while the copy is verified), then, after the
//! rename and the journal's move next to the copy, the journal's `fsync` (`verified`,
//! `renamed` and `done` reach the disk together) and the parent directory's `fsync`, side by
//! side. What a crash before they finish can leave, and what the next run does with it:
//! - a staging directory whose journal never reached the disk (no `start` record): nothing in
//!   it was recorded or verified, and the legacy state it came from is untouched, so it is
//!   removed and the copy starts again;
//! - the copy still in staging: resumed (walked, verified, renamed);
//! - the copy renamed into place, its journal in staging or moved next to it, without `done`
//!   or `verified` on disk: the copy (on disk since the `syncfs` before the rename) is
//!   verified again at the level asked for, not by metadata alone, and the bookkeeping
//!   finished.
//!
//! # Performance and memory
//!
//! Copy: one walker thread (directories, metadata, symlinks, special files, hard links) plus a
//! pool of data workers for regular files, fed in batches (one directory per batch). Data is
//! cloned (FICLONE) where the filesystem can. Verification: one walker listing directories
//! (entry types come from `readdir`), workers comparing everything else; contents are proven
//! equal by shared extents (`FIEMAP`) where source and copy share them, else read on both sides
//! and compared: byte for byte (files without holes up to 16 MiB, most of a rootfs), or by
//! BLAKE3 with holes skipped (larger files, both sides in parallel; sparse files). Workers: one per CPU, at least 2 (`NIXOS_NSPAWN_STATE_WORKERS` overrides, 1–64).
//!
//! Open files do not grow with depth: only the deepest `sys::FD_WINDOW` directories of a walk
//! keep descriptors, and walks go back up through `..`, checked against the identity of the
//! directory they came from (`sys::open_parent`); the jobs in flight are bounded.
//!
//! Memory does not grow per plain file: the walker keeps the entry names of the directories on
//! its current path, a small node (fd, stat, xattrs, ~150 bytes) per directory with unfinished
//! children, and a map entry (~100 bytes; ~80 more during verification) per inode with more
//! than one link; queues are bounded. Measured maximum RSS of the release build: 2.8 MB for
//! copying 30k and 300k files alike, 7 MB for `migrate_state` with full verification (hash
//! buffers). For 1M plain files that stays a few MB (a directory of N entries costs ~40 bytes
//! per entry while it is on the walker's path); 1M hard-linked inodes would add ~180 MB.
//!
//! # Where things are
//!
//! `dest.parent/.NAME.partial/{tree,journal}` while working (mode 0700; resumed by the next
//! run), `dest.parent/.NAME.journal` afterwards (JSON lines; the `done` record makes the next
//! run a no-op), `dest.parent/.NAME.replaced-UNIXTIME` for a destination replaced with `force`.
//! Names starting with a dot are ignored by `machinectl list-images`.

mod copy;
mod error;
mod flags;
pub mod hooks;
mod journal;
mod profile;
mod space;
mod sys;
mod verify;

use std::ffi::{CStr, CString};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rustix::fs::{self as rfs, AtFlags, Mode, RenameFlags};
use rustix::io::Errno;

pub use copy::{CopyReport, LostFlags, MAX_REPORTED_LOST_FLAGS};
pub use error::{StateError, StateErrorKind};
pub use profile::{ProfileOutcome, carry_profile};
pub use space::{SpaceNeed, free_space, required_space};
pub use verify::{Difference, MAX_REPORTED_DIFFERENCES, VerifyReport};

use copy::{CopyConfig, Resume};
use journal::{Event, Journal, SourceId};

/// How thoroughly to compare the copy with the source before it is renamed into place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verify {
    /// Metadata, and every file's contents: proven equal by shared extents where source and copy
    /// share them (a reflink copy), else BLAKE3 of both sides.
    Full,
    /// Types, owners, modes, sizes, times, link targets, xattrs, hard links; no contents.
    Metadata,
    /// No comparison.
    None,
}

impl Verify {
    /// `full`, `metadata` or `none`, as `--verify` spells it.
    pub fn name(self) -> &'static str {
        match self {
            Verify::Full => "full",
            Verify::Metadata => "metadata",
            Verify::None => "none",
        }
    }
}

/// What to do with the legacy state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateMode {
    /// Copy; the legacy state stays untouched (the default, so rollback works).
    Copy,
    /// `rename(2)` when both are on the same filesystem; an error otherwise. Never the default.
    Move,
    /// Leave the state where it is.
    Skip,
}

/// Progress callbacks, called from several threads.
pub trait Progress: Sync {
    /// Once, before copying: what will be copied.
    fn total(&self, entries: u64, bytes: u64);
    /// An entry (of any type) is finished.
    fn entry_done(&self);
    /// `n` more bytes of file data were copied.
    fn bytes_done(&self, n: u64);
}

/// A [`Progress`] that ignores everything.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoProgress;

impl Progress for NoProgress {
    fn total(&self, _: u64, _: u64) {}
    fn entry_done(&self) {}
    fn bytes_done(&self, _: u64) {}
}

pub struct MigrateStateOptions<'a> {
    pub mode: StateMode,
    pub verify: Verify,
    /// Replace a destination that holds something else (the old one is kept, renamed to
    /// `dest.parent/.NAME.replaced-UNIXTIME`), or a staging directory of another source.
    pub force: bool,
    pub progress: &'a dyn Progress,
    /// How a copy an earlier run finished is checked before it counts as done: by metadata,
    /// so that a re-run stays quick, unless more is asked for (the CLI's `--verify` given
    /// explicitly: `--verify full` proves the contents again, e.g. after a suspected
    /// corruption of the copy).
    pub recheck: Verify,
}

/// The refusal for a copy an interrupted run renamed into place that, checked again, does not
/// match its source (changed since, or not on disk as it was written): what differs, and the
/// way out.
fn renamed_copy_differs(src: &Path, dest: &Path, report: &VerifyReport) -> StateError {
    StateErrorKind::DestOccupied {
        dest: dest.to_path_buf(),
        reason: format!(
            "is a copy of {} that an interrupted run renamed into place, and checked again it \
             does not match it ({})",
            src.display(),
            report.summary()
        ),
        fix: "pass --force to copy it again (this copy is kept, renamed to .NAME.replaced-TIME)"
            .to_string(),
    }
    .into()
}

/// How a copy renamed into place by an interrupted run is checked: by metadata where its
/// `verified` record is on disk, else at the level asked for (at least metadata); never below
/// what `recheck` asks for.
fn recheck_level(opts: &MigrateStateOptions<'_>, verified_on_disk: bool) -> Verify {
    let base = if verified_on_disk {
        Verify::Metadata
    } else {
        stronger(opts.verify, Verify::Metadata)
    };
    stronger(opts.recheck, base)
}

/// The stronger of two verification levels.
fn stronger(a: Verify, b: Verify) -> Verify {
    let rank = |v: Verify| match v {
        Verify::None => 0,
        Verify::Metadata => 1,
        Verify::Full => 2,
    };
    if rank(a) >= rank(b) { a } else { b }
}

/// What [`migrate_state`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
// One value per container, kept for its report: the size of `Copied` costs nothing worth a box.
#[allow(clippy::large_enum_variant)]
pub enum StateOutcome {
    /// Copied (or finished copying) and renamed into place.
    Copied {
        copy: CopyReport,
        verify: VerifyReport,
        /// An interrupted earlier run was resumed.
        resumed: bool,
        /// Where a replaced destination (with `force`) was moved.
        replaced: Option<PathBuf>,
    },
    /// Renamed (`StateMode::Move`).
    Moved,
    /// `dest` already held a finished, matching copy (compared at [`Verify::Metadata`]);
    /// nothing was written. After a `Move`, the report is empty (level `None`): the source is
    /// gone, there is nothing to compare with.
    AlreadyDone { verify: VerifyReport },
    /// `StateMode::Skip`.
    Skipped,
}

/// Remove `name` in the directory `dir`, whatever it is: directories recursively, never
/// following a symlink, one fd-relative step at a time. For `migrate --rollback` and
/// `--cleanup`, which remove trees the migration made or the administrator asked to remove.
///
/// # Errors
///
/// The first `unlinkat` that fails (e.g. `EPERM` on a `chattr +i` file).
pub fn remove_tree_at(dir: std::os::fd::BorrowedFd<'_>, name: &CStr) -> std::io::Result<()> {
    sys::remove_all_at(dir, name).map_err(Into::into)
}

/// The destination filesystem cannot hold some inode flags of the legacy state (`+C` on XFS or
/// ext4, …), or the state has flags the engine does not copy.
pub const INODE_FLAGS_LOST: crate::warnings::WarningSpec = crate::warnings::WarningSpec {
    code: "inode-flags-lost",
    category: crate::warnings::Category::ChangedMeaning,
    summary: "some inode flags (chattr) of the legacy state could not be kept by the new location",
};

/// Mount points inside the legacy state directory were not crossed: the copy has an empty
/// directory there (a bind-mounted file is left out).
pub const STATE_MOUNTS_SKIPPED: crate::warnings::WarningSpec = crate::warnings::WarningSpec {
    code: "state-mounts-skipped",
    category: crate::warnings::Category::NeedsHuman,
    summary: "mount points inside the legacy state were not copied into (their contents are not in the new location)",
};

/// Nested btrfs subvolumes of the legacy state became plain directories, because the new
/// location is not on btrfs.
pub const STATE_SUBVOLUMES_FLATTENED: crate::warnings::WarningSpec = crate::warnings::WarningSpec {
    code: "state-subvolumes-flattened",
    category: crate::warnings::Category::ChangedMeaning,
    summary: "nested btrfs subvolumes of the legacy state are plain directories in the new location (not btrfs); read-only ones are writable there",
};

pub const WARNINGS: &[&crate::warnings::WarningSpec] = &[
    &INODE_FLAGS_LOST,
    &STATE_MOUNTS_SKIPPED,
    &STATE_SUBVOLUMES_FLATTENED,
];

/// `one` for a count of one, `many` otherwise (the words of a warning that counts things).
fn one_or<'a>(n: usize, one: &'a str, many: &'a str) -> &'a str {
    if n == 1 { one } else { many }
}

/// `a, b, c and 3 more` for the first `MAX_LISTED` paths of a list.
fn path_list(paths: &[PathBuf]) -> String {
    const MAX_LISTED: usize = 20;
    let shown: Vec<String> = paths
        .iter()
        .take(MAX_LISTED)
        .map(|p| p.display().to_string())
        .collect();
    let more = paths.len().saturating_sub(MAX_LISTED);
    if more > 0 {
        format!("{} and {more} more", shown.join(", "))
    } else {
        shown.join(", ")
    }
}

/// What the state step did, for the report and `--json` (`containers[].state_result`).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct StateSummary {
    /// `copied`, `moved`, `already-done` or `skipped`.
    pub outcome: &'static str,
    /// What is at the legacy path now.
    pub legacy_left: &'static str,
    pub entries: u64,
    /// File data bytes written (cloned ones included).
    pub bytes: u64,
    pub files_reflinked: u64,
    pub resumed: bool,
    /// `full`, `metadata` or `none`.
    pub verify: &'static str,
    pub entries_verified: u64,
    pub differences: u64,
    /// Regular files whose contents were proven equal by shared extents, not read.
    pub files_by_extents: u64,
    pub bytes_by_extents: u64,
    /// Regular files whose contents were read on both sides and compared (byte for byte, or by
    /// BLAKE3 for large and sparse files).
    pub files_hashed: u64,
    pub bytes_hashed: u64,
    pub flags_copied: u64,
    pub flags_lost_count: u64,
    /// The first entries with lost flags: `path: +C (why)`.
    pub flags_lost: Vec<String>,
    /// Nested btrfs subvolumes (relative paths; `.` for the state directory itself): copied as
    /// subvolumes, copied as plain directories (the copy is not on btrfs), and the read-only
    /// ones among them (read-only again where they stayed subvolumes).
    pub subvolumes: Vec<String>,
    pub subvolumes_flattened: Vec<String>,
    pub subvolumes_readonly: Vec<String>,
    /// Mount points inside the state, not copied into (an empty directory stands in each).
    pub mounts_skipped: Vec<String>,
}

impl StateOutcome {
    /// The outcome as report data.
    pub fn summary(&self) -> StateSummary {
        let verified = |v: &VerifyReport, s: &mut StateSummary| {
            s.verify = v.level.name();
            s.entries_verified = v.entries;
            s.differences = v.differences;
            s.files_by_extents = v.files_by_extents;
            s.bytes_by_extents = v.bytes_by_extents;
            s.files_hashed = v.files_hashed;
            s.bytes_hashed = v.bytes_hashed;
        };
        let mut s = StateSummary {
            verify: "none",
            legacy_left: "untouched",
            ..StateSummary::default()
        };
        match self {
            StateOutcome::Copied {
                copy,
                verify,
                resumed,
                ..
            } => {
                s.outcome = "copied";
                s.entries = copy.entries;
                s.bytes = copy.bytes;
                s.files_reflinked = copy.files_reflinked;
                s.resumed = *resumed;
                s.flags_copied = copy.flags_copied;
                s.flags_lost_count = copy.flags_lost_count;
                s.flags_lost = copy
                    .flags_lost
                    .iter()
                    .map(|l| format!("{}: {} ({})", l.path.display(), l.flags, l.why))
                    .collect();
                let shown = |v: &[PathBuf]| -> Vec<String> {
                    v.iter().map(|p| p.display().to_string()).collect()
                };
                s.subvolumes = shown(&copy.subvolumes);
                s.subvolumes_flattened = shown(&copy.subvolumes_flattened);
                s.subvolumes_readonly = shown(&copy.subvolumes_readonly);
                s.mounts_skipped = shown(&copy.skipped_mounts);
                verified(verify, &mut s);
            }
            StateOutcome::Moved => {
                s.outcome = "moved";
                s.legacy_left = "gone: renamed to the new location";
            }
            StateOutcome::AlreadyDone { verify } => {
                s.outcome = "already-done";
                if verify.level == Verify::None {
                    s.legacy_left = "gone: renamed to the new location";
                }
                verified(verify, &mut s);
            }
            StateOutcome::Skipped => s.outcome = "skipped",
        }
        s
    }

    /// Warnings for the report: mount points not copied into, nested subvolumes that became
    /// plain directories, inode flags the copy could not keep.
    pub fn warnings(&self, container: &str) -> Vec<crate::warnings::Warning> {
        let StateOutcome::Copied { copy, .. } = self else {
            return Vec::new();
        };
        let mut out = Vec::new();
        if !copy.skipped_mounts.is_empty() {
            out.push(crate::warnings::Warning::new(
                &STATE_MOUNTS_SKIPPED,
                format!("containers.{container} state"),
                format!(
                    "{} mount point{} inside the legacy state {} not copied into: {}. The copy \
                     has an empty directory in place of each mounted directory (a bind-mounted \
                     file is left out). Copy what is mounted there yourself if it belongs to \
                     the container, or mount it again at the new location",
                    copy.skipped_mounts.len(),
                    one_or(copy.skipped_mounts.len(), "", "s"),
                    one_or(copy.skipped_mounts.len(), "was", "were"),
                    path_list(&copy.skipped_mounts),
                ),
            ));
        }
        if !copy.subvolumes_flattened.is_empty() {
            // A plain directory cannot be read-only the way a subvolume can: say which lost it.
            let ro_lost: Vec<PathBuf> = copy
                .subvolumes_flattened
                .iter()
                .filter(|p| copy.subvolumes_readonly.contains(p))
                .cloned()
                .collect();
            let ro_note = if ro_lost.is_empty() {
                String::new()
            } else {
                let n = ro_lost.len();
                let which = if n == copy.subvolumes_flattened.len() {
                    one_or(n, "It was", "All of them were").to_string()
                } else {
                    format!("{n} of them {}", one_or(n, "was", "were"))
                };
                format!(
                    ". {which} read-only (btrfs property ro){}; the plain director{} in the copy \
                     {} writable, nothing keeps the container from changing {} now",
                    if n == copy.subvolumes_flattened.len() {
                        String::new()
                    } else {
                        format!(": {}", path_list(&ro_lost))
                    },
                    one_or(n, "y", "ies"),
                    one_or(n, "is", "are"),
                    one_or(n, "it", "them"),
                )
            };
            out.push(crate::warnings::Warning::new(
                &STATE_SUBVOLUMES_FLATTENED,
                format!("containers.{container} state"),
                format!(
                    "{} btrfs subvolume{} of the legacy state {} copied as plain \
                     director{} because the new location is not on btrfs: {}{}. All contents are \
                     there; what relied on the subvolume (its own snapshots, quotas, `btrfs \
                     subvolume` commands in the container) does not apply any more{}",
                    copy.subvolumes_flattened.len(),
                    one_or(copy.subvolumes_flattened.len(), "", "s"),
                    one_or(copy.subvolumes_flattened.len(), "was", "were"),
                    one_or(copy.subvolumes_flattened.len(), "y", "ies"),
                    path_list(&copy.subvolumes_flattened),
                    if copy
                        .subvolumes_flattened
                        .iter()
                        .any(|p| p == Path::new("."))
                    {
                        " (`.` is the state directory itself)"
                    } else {
                        ""
                    },
                    ro_note,
                ),
            ));
        }
        if copy.flags_lost_count == 0 {
            return out;
        }
        let list: Vec<String> = copy
            .flags_lost
            .iter()
            .map(|l| format!("{} {} ({})", l.path.display(), l.flags, l.why))
            .collect();
        let more = copy.flags_lost_count.saturating_sub(list.len() as u64);
        out.push(crate::warnings::Warning::new(
            &INODE_FLAGS_LOST,
            format!("containers.{container} state"),
            format!(
                "{} entr{} of the state lost inode flags in the copy: {}{}. Without +C a database \
                 file is copy-on-write again (slower, fragments), without +i/+a a file can be \
                 changed; set them again with chattr where they matter, or keep the state on a \
                 filesystem that holds them",
                copy.flags_lost_count,
                if copy.flags_lost_count == 1 {
                    "y"
                } else {
                    "ies"
                },
                list.join("; "),
                if more > 0 {
                    format!(" and {more} more")
                } else {
                    String::new()
                }
            ),
        ));
        out
    }
}

/// Data workers for copying and hashing: one per CPU, at least 2.
fn workers() -> usize {
    std::env::var("NIXOS_NSPAWN_STATE_WORKERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n: &usize| *n >= 1 && *n <= 64)
        .unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2)
                .max(2)
        })
}

fn cstring(path: &Path, s: &std::ffi::OsStr) -> Result<CString, StateError> {
    CString::new(s.as_bytes())
        .map_err(|_| StateError::invalid(path, "the path contains a NUL byte"))
}

/// Split `dest` into its parent (created `0700` if missing) and its last component.
fn split_dest(dest: &Path) -> Result<(PathBuf, CString, String), StateError> {
    let name = match dest.components().next_back() {
        Some(std::path::Component::Normal(n)) => n,
        _ => {
            return Err(StateError::invalid(
                dest,
                "the destination must end in a directory name",
            ));
        }
    };
    let parent = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let lossy = name.to_string_lossy().into_owned();
    Ok((parent, cstring(dest, name)?, lossy))
}

fn ensure_parent(parent: &Path) -> Result<OwnedFd, StateError> {
    match sys::open_dir_path(parent) {
        Err(Errno::NOENT) => {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(parent)
                .map_err(|e| StateError::write("create the directory", parent, parent, e))?;
            sys::open_dir_path(parent).map_err(|e| StateError::io("open", parent, e))
        }
        r => r.map_err(|e| StateError::io("open", parent, e)),
    }
}

fn is_empty_dir(dir: &OwnedFd, name: &CStr) -> Result<bool, Errno> {
    let fd = sys::open_read(dir.as_fd(), name, true)?;
    let mut d = rfs::Dir::read_from(&fd)?;
    while let Some(e) = d.read() {
        let e = e?;
        if e.file_name() != c"." && e.file_name() != c".." {
            return Ok(false);
        }
    }
    Ok(true)
}

use crate::clock::unix_seconds as now;

/// Forwards to the caller's progress and counts bytes and entries, for "N more bytes (inodes)
/// needed" messages.
struct Counting<'a> {
    inner: &'a dyn Progress,
    bytes: AtomicU64,
    entries: AtomicU64,
}

impl Progress for Counting<'_> {
    fn total(&self, entries: u64, bytes: u64) {
        self.inner.total(entries, bytes);
    }
    fn entry_done(&self) {
        self.entries.fetch_add(1, Ordering::Relaxed);
        self.inner.entry_done();
    }
    fn bytes_done(&self, n: u64) {
        self.bytes.fetch_add(n, Ordering::Relaxed);
        self.inner.bytes_done(n);
    }
}

/// Bring `src` (legacy state dir, REAL path) to `dest` (REAL path, e.g.
/// `ROOT/var/lib/machines/NAME`) via the staging dir `dest.parent/.NAME.partial` and a journal;
/// rename into place only when verified. Idempotent: when `dest` already holds an identical,
/// verified copy of `src` (journal says done and a metadata check passes) →
/// [`StateOutcome::AlreadyDone`], nothing written. See the module documentation.
///
/// # Errors
///
/// [`StateError`]; the message names the path, the operation and the fix. The legacy state is
/// never changed (except by `StateMode::Move`, which renames it), and `dest` is never merged
/// into: a destination that holds something else is refused unless `force`.
pub fn migrate_state(
    src: &Path,
    dest: &Path,
    opts: &MigrateStateOptions<'_>,
) -> Result<StateOutcome, StateError> {
    if opts.mode == StateMode::Skip {
        return Ok(StateOutcome::Skipped);
    }
    let (parent, name, name_s) = split_dest(dest)?;
    let rel_src = relative_source(&parent, src);
    let journal_path = parent.join(format!(".{name_s}.journal"));
    if opts.mode == StateMode::Move {
        // A move that already happened (or was interrupted right after the rename): the source
        // is gone and the destination is the very directory the journal recorded.
        if let Some(o) = finish_move(src, dest, &parent, &name, &name_s, &rel_src)? {
            return Ok(o);
        }
        // Refused before anything is written (not even the parent directory).
        check_move(src, dest)?;
    }
    let parent_fd = ensure_parent(&parent)?;
    let journal_name = cstring(dest, format!(".{name_s}.journal").as_ref())?;
    let staging_name = cstring(dest, format!(".{name_s}.partial").as_ref())?;
    let staging_path = parent.join(format!(".{name_s}.partial"));

    let dest_meta = match sys::lstat_at(parent_fd.as_fd(), &name) {
        Ok(m) => Some(m),
        Err(Errno::NOENT) => None,
        Err(e) => return Err(StateError::io("stat", dest, e)),
    };
    let done_journal = journal::read(parent_fd.as_fd(), &journal_name, &journal_path)?;

    let src_fd = sys::open_root(src)?;
    let src_meta = sys::fstat(src_fd.as_fd()).map_err(|e| StateError::io("stat", src, e))?;
    // The source as the journal records it: its path relative to the destination's parent, so
    // that a disk migrated under /mnt is recognised under any other mount point or as /.
    let source = SourceId {
        src: rel_src.clone(),
        dev: src_meta.dev,
        ino: src_meta.ino,
    };
    let is_source = |ev: &[Event]| {
        journal::source_of(ev).is_some_and(|s| s.matches(&source, &src.to_string_lossy()))
    };
    let nworkers = workers();
    // Which copied inode flags the destination filesystem holds (an unnamed temporary file in
    // the parent: nothing is left behind).
    let flag_support = flags::probe(parent_fd.as_fd());

    // A run killed between the final rename and moving its journal (also after writing `done`:
    // the rename, the journal's move and the staging directory's removal are made durable by
    // one sync of the parent): finish its bookkeeping.
    if dest_meta.is_some()
        && opts.mode == StateMode::Copy
        && let Ok(sfd) = sys::open_dest_dir(parent_fd.as_fd(), &staging_name)
    {
        let jpath = staging_path.join("journal");
        let ev = journal::read(sfd.as_fd(), c"journal", &jpath)?;
        let ours = ev.as_ref().is_some_and(|ev| is_source(ev));
        // `verified` (with `renamed` and `done`) reaches the disk only with `done`'s fsync: a
        // run killed after the rename may have left just `start`. The tree leaves staging
        // only by that rename, after `syncfs` and verification, but without the record the
        // copy is verified again at the level asked for, not by metadata alone.
        let recheck = recheck_level(opts, ev.as_ref().is_some_and(|ev| journal::is_verified(ev)));
        let already_done = ev.as_ref().is_some_and(|ev| journal::is_done(ev));
        if ours && sys::lstat_at(sfd.as_fd(), c"tree") == Err(Errno::NOENT) {
            // Killed after the rename, maybe before the root's +i/+a were set: set them now
            // (idempotent), so the check below compares the finished copy.
            freeze_root(&src_fd, src, &parent_fd, &name, dest, flag_support)?;
            let dfd = sys::open_read(parent_fd.as_fd(), &name, true)
                .map_err(|e| StateError::io("open", dest, e))?;
            let report =
                verify::verify_fds(&src_fd, &dfd, recheck, src, dest, nworkers, flag_support)?;
            if report.is_clean() {
                let mut jr = Journal::open(sfd.as_fd(), c"journal", &jpath)?;
                if !already_done {
                    jr.append(&Event::Done, false)?;
                }
                finish_journal(
                    &parent_fd,
                    &sfd,
                    &staging_name,
                    &journal_name,
                    &jr,
                    &parent,
                    dest,
                )?;
                return Ok(StateOutcome::AlreadyDone { verify: report });
            }
            if !opts.force {
                return Err(renamed_copy_differs(src, dest, &report));
            }
        }
    }

    // What is at `dest` now decides between done, replace and refuse.
    let mut replace = false;
    if let Some(dm) = dest_meta
        && dm.kind() == sys::Kind::Dir
        && opts.mode == StateMode::Copy
        && let Some(ev) = &done_journal
        && is_source(ev)
        && journal::mode_of(ev) == Some("copy")
        && !journal::is_done(ev)
    {
        // The journal moved next to the copy, `done` not on disk: the run stopped between the
        // journal's move and its sync (they run together with the directory's). The journal
        // moves only after the rename, so the copy is this source's; without `verified` on disk
        // it is verified again at the level asked for, then finished. Otherwise it is refused
        // below like any directory this tool did not finish.
        let level = recheck_level(opts, journal::is_verified(ev));
        let dfd = sys::open_read(parent_fd.as_fd(), &name, true)
            .map_err(|e| StateError::io("open", dest, e))?;
        freeze_root(&src_fd, src, &parent_fd, &name, dest, flag_support)?;
        let report = verify::verify_fds(&src_fd, &dfd, level, src, dest, nworkers, flag_support)?;
        if report.is_clean() {
            let mut jr = Journal::open(parent_fd.as_fd(), &journal_name, &journal_path)?;
            jr.append(&Event::Done, true)?;
            // An empty staging directory left behind (its removal was not on disk either).
            let _ = rfs::unlinkat(&parent_fd, &staging_name, AtFlags::REMOVEDIR);
            rfs::fsync(&parent_fd).map_err(|e| StateError::write("sync", &parent, dest, e))?;
            return Ok(StateOutcome::AlreadyDone { verify: report });
        }
        if !opts.force {
            return Err(renamed_copy_differs(src, dest, &report));
        }
    }
    if let Some(dm) = dest_meta {
        let ours = done_journal
            .as_ref()
            .is_some_and(|ev| journal::is_done(ev) && is_source(ev));
        if ours && dm.kind() == sys::Kind::Dir && opts.mode == StateMode::Copy {
            let dfd = sys::open_read(parent_fd.as_fd(), &name, true)
                .map_err(|e| StateError::io("open", dest, e))?;
            let report = verify::verify_fds(
                &src_fd,
                &dfd,
                stronger(opts.recheck, Verify::Metadata),
                src,
                dest,
                nworkers,
                flag_support,
            )?;
            if report.is_clean() {
                return Ok(StateOutcome::AlreadyDone { verify: report });
            }
            if !opts.force {
                return Err(StateErrorKind::DestOccupied {
                    dest: dest.to_path_buf(),
                    reason: format!(
                        "is an earlier copy of {} that no longer matches it ({})",
                        src.display(),
                        report.summary()
                    ),
                    fix: "the legacy container ran after the migration, or the copy was changed \
                          since; pass --force to copy it again (the earlier copy is kept, renamed to \
                          .NAME.replaced-TIME)"
                        .to_string(),
                }
                .into());
            }
            replace = true;
        } else if dm.kind() == sys::Kind::Dir
            && is_empty_dir(&parent_fd, &name).map_err(|e| StateError::io("list", dest, e))?
        {
            // An empty directory (e.g. made by tmpfiles): the rename replaces it.
        } else if opts.force {
            replace = true;
        } else {
            return Err(StateErrorKind::DestOccupied {
                dest: dest.to_path_buf(),
                reason: format!(
                    "holds another machine or a copy this tool did not finish (it is not a finished copy of {}); it is never merged into",
                    src.display()
                ),
                fix: "move it away, or pass --force to replace it (it is kept, renamed to .NAME.replaced-TIME)"
                    .to_string(),
            }
            .into());
        }
    }

    if opts.mode == StateMode::Move {
        return move_state(
            src,
            dest,
            &parent_fd,
            &name,
            &source,
            replace,
            &journal_name,
            &journal_path,
            &name_s,
            &src_meta,
        );
    }

    // Staging: new, resumed, or somebody else's.
    let mut resume = Resume::Fresh;
    let mut staging_events = None;
    match sys::lstat_at(parent_fd.as_fd(), &staging_name) {
        Ok(m) if m.kind() == sys::Kind::Dir => {
            let sfd = sys::open_dest_dir(parent_fd.as_fd(), &staging_name)
                .map_err(|e| StateError::io("open", &staging_path, e))?;
            let jpath = staging_path.join("journal");
            let ev = journal::read(sfd.as_fd(), c"journal", &jpath)?;
            let has_tree = sys::lstat_at(sfd.as_fd(), c"tree").is_ok();
            // No `start` on disk: the run that made it was cut off before its first sync (the
            // record is made durable with the copied tree). Nothing in it was recorded or
            // verified, and nobody else names a directory `.NAME.partial`: start again.
            let unrecorded = ev
                .as_ref()
                .is_none_or(|ev| journal::source_of(ev).is_none());
            match &ev {
                Some(ev) if is_source(ev) => {
                    resume = if matches!(journal::last(ev), Some(Event::VerifyFailed { .. })) {
                        Resume::Recopy
                    } else {
                        Resume::Trust
                    };
                    if !has_tree {
                        resume = Resume::Fresh;
                    }
                }
                _ if !has_tree => {}
                _ if opts.force || unrecorded => {
                    sys::remove_all_at(parent_fd.as_fd(), &staging_name).map_err(|e| {
                        StateError::write(
                            "remove the stale staging directory",
                            &staging_path,
                            dest,
                            e,
                        )
                    })?;
                }
                other => {
                    let other = other
                        .as_ref()
                        .and_then(|e| journal::source_of(e))
                        .map(|s| s.display(&parent))
                        .unwrap_or_else(|| "an unknown source (no journal)".to_string());
                    return Err(StateErrorKind::StagingForeign {
                        staging: staging_path,
                        src: src.to_path_buf(),
                        other,
                        fix: "remove it if that migration is abandoned, or pass --force to replace it"
                            .to_string(),
                    }
                    .into());
                }
            }
            staging_events = ev;
        }
        Ok(_) => {
            return Err(StateError::invalid(
                &staging_path,
                "is in the way of the staging directory and is not a directory; remove it",
            ));
        }
        Err(Errno::NOENT) => {}
        Err(e) => return Err(StateError::io("stat", &staging_path, e)),
    }
    let _ = staging_events;
    match rfs::mkdirat(parent_fd.as_fd(), &staging_name, Mode::from_raw_mode(0o700)) {
        Ok(()) | Err(Errno::EXIST) => {}
        Err(e) => {
            return Err(StateError::write(
                "create the directory",
                &staging_path,
                dest,
                e,
            ));
        }
    }
    let staging_fd = sys::open_dest_dir(parent_fd.as_fd(), &staging_name)
        .map_err(|e| StateError::io("open", &staging_path, e))?;
    let tree_path = staging_path.join("tree");

    // Space: what the source allocates, minus what an interrupted run already wrote.
    let need = space::required_space_fd(&src_fd, src)?;
    let already = if resume == Resume::Fresh {
        0
    } else {
        match sys::open_dest_dir(staging_fd.as_fd(), c"tree") {
            Ok(t) => space::required_space_fd(&t, &tree_path)?.allocated,
            Err(_) => 0,
        }
    };
    let free = free_space(&staging_path)?;
    let wanted = need.allocated.saturating_sub(already);
    if wanted > free {
        return Err(StateErrorKind::NotEnoughSpace {
            src: src.to_path_buf(),
            dest: parent.clone(),
            need: wanted,
            free,
        }
        .into());
    }
    // Inodes, where the filesystem counts them (btrfs does not: f_files is 0). A resumed run
    // already has some of its entries: only a fresh copy is checked exactly.
    if resume == Resume::Fresh
        && let Ok(v) = rfs::statvfs(&staging_path)
        && v.f_files > 0
        && need.entries > v.f_favail
    {
        return Err(StateErrorKind::NoInodes {
            src: src.to_path_buf(),
            dest: parent.clone(),
            need: need.entries,
            free: v.f_favail,
            during: None,
        }
        .into());
    }
    let counting = Counting {
        inner: opts.progress,
        bytes: AtomicU64::new(0),
        entries: AtomicU64::new(0),
    };
    counting.total(need.entries, need.bytes);

    let jpath = staging_path.join("journal");
    let mut jr = Journal::open(staging_fd.as_fd(), c"journal", &jpath)?;
    jr.append(
        &Event::Start {
            version: journal::VERSION,
            source: source.clone(),
            dest: dest.to_string_lossy().into_owned(),
            mode: "copy".into(),
            verify: opts.verify.name().into(),
            resume: format!("{resume:?}").to_lowercase(),
            unix_time: now(),
        },
        // Durable with the tree, by the `syncfs` after copying (or the first checkpoint's).
        false,
    )?;
    // A state directory that is a btrfs subvolume of its own (every btrfs directory with inode
    // 256 is one) gets a subvolume as its copy where the destination is btrfs too.
    let root_subvolume = src_meta.kind() == sys::Kind::Dir
        && src_meta.ino == sys::BTRFS_SUBVOL_ROOT_INO
        && sys::is_btrfs(src_fd.as_fd());
    let tree_subvolume = root_subvolume && sys::is_btrfs(staging_fd.as_fd());
    let made = if tree_subvolume {
        sys::create_subvolume(staging_fd.as_fd(), c"tree").and_then(|()| {
            rfs::chmodat(
                &staging_fd,
                c"tree",
                Mode::from_raw_mode(0o700),
                AtFlags::empty(),
            )
        })
    } else {
        rfs::mkdirat(staging_fd.as_fd(), c"tree", Mode::from_raw_mode(0o700))
    };
    match made {
        Ok(()) | Err(Errno::EXIST) => {}
        Err(e) => {
            return Err(StateError::write(
                if tree_subvolume {
                    "create the btrfs subvolume"
                } else {
                    "create the directory"
                },
                &tree_path,
                dest,
                e,
            ));
        }
    }
    let tree_fd = sys::open_dest_dir(staging_fd.as_fd(), c"tree")
        .map_err(|e| StateError::io("open", &tree_path, e))?;
    let tree_sync = tree_fd
        .try_clone()
        .map_err(|e| StateError::io("duplicate a descriptor of", &tree_path, e))?;

    let mut cp = |entries: u64, bytes: u64| -> Result<(), StateError> {
        rfs::syncfs(&tree_sync).map_err(|e| StateError::write("sync", &tree_path, dest, e))?;
        jr.append(&Event::Checkpoint { entries, bytes }, true)
    };
    let copied = copy::copy_tree(
        &src_fd,
        tree_fd,
        CopyConfig {
            src_label: src,
            dst_label: &tree_path,
            resume,
            progress: &counting,
            workers: nworkers,
            checkpoint: Some(&mut cp),
            checkpoint_every: Duration::from_secs(30),
            flag_support,
        },
    )
    .map_err(|e| {
        e.inodes_if_exhausted(
            src,
            &parent,
            need.entries
                .saturating_sub(counting.entries.load(Ordering::Relaxed)),
        )
        .with_still_needed(
            need.bytes
                .saturating_sub(counting.bytes.load(Ordering::Relaxed)),
        )
    })?;
    let mut copied = copied;
    if tree_subvolume {
        copied.subvolumes.insert(0, PathBuf::from("."));
    } else if root_subvolume {
        copied.subvolumes_flattened.insert(0, PathBuf::from("."));
    }
    let tree_fd = sys::open_dest_dir(staging_fd.as_fd(), c"tree")
        .map_err(|e| StateError::io("open", &tree_path, e))?;
    // Write-back and verification overlap: verification reads the page cache while syncfs
    // waits for the disk. Both must succeed before anything is renamed.
    let (synced, verified) = std::thread::scope(|s| {
        let sync = s.spawn(|| rfs::syncfs(&tree_fd));
        let verified = verify::verify_with(
            &src_fd,
            &tree_fd,
            opts.verify,
            (src, &tree_path),
            nworkers,
            flag_support,
            false,
        );
        (sync.join().unwrap_or(Err(Errno::IO)), verified)
    });
    synced.map_err(|e| StateError::write("sync", &tree_path, dest, e))?;
    // Made durable with the next record (`verified` or `verify-failed`): a run killed before
    // that resumes from the last checkpoint, which re-walks the tree anyway.
    jr.append(
        &Event::Copied {
            entries: copied.entries,
            bytes: copied.bytes,
        },
        false,
    )?;
    let report = verified?;
    if !report.is_clean() {
        jr.append(
            &Event::VerifyFailed {
                differences: report.differences,
            },
            true,
        )?;
        return Err(StateErrorKind::VerifyFailed {
            src: src.to_path_buf(),
            staging: tree_path,
            report: Box::new(report),
        }
        .into());
    }
    // Durable with `done`: the rename needs no record of its own, since a run killed after it
    // finds the tree gone from staging and checks the copy again (above).
    jr.append(
        &Event::Verified {
            level: opts.verify.name().into(),
            entries: report.entries,
        },
        false,
    )?;
    drop(tree_fd);

    // Into place.
    let mut replaced = None;
    if replace {
        let frozen = thaw_for_rename(&parent_fd, &name, dest, dest)?;
        rfs::renameat_with(
            &staging_fd,
            c"tree",
            &parent_fd,
            &name,
            RenameFlags::EXCHANGE,
        )
        .map_err(|e| StateError::write("exchange the copy with", dest, dest, e))?;
        let old = format!(".{name_s}.replaced-{}", now());
        rfs::renameat(&staging_fd, c"tree", &parent_fd, old.as_str()).map_err(|e| {
            StateError::write("move the replaced copy to", &parent.join(&old), dest, e)
        })?;
        let old_c = cstring(dest, old.as_ref())?;
        refreeze(&parent_fd, &old_c, &parent.join(&old), dest, frozen)?;
        replaced = Some(parent.join(old));
    } else if dest_meta.is_some() {
        // An empty directory: rename(2) replaces it atomically.
        rfs::renameat(&staging_fd, c"tree", &parent_fd, &name)
            .map_err(|e| StateError::write("rename the copy to", dest, dest, e))?;
    } else {
        rfs::renameat_with(
            &staging_fd,
            c"tree",
            &parent_fd,
            &name,
            RenameFlags::NOREPLACE,
        )
        .map_err(|e| StateError::write("rename the copy to", dest, dest, e))?;
    }
    // Durable with the journal's move, by `finish_journal`'s sync of the same directory. A run
    // stopped before that finds the copy either still in staging (then resumed: walked,
    // verified and renamed again) or renamed, its journal in staging or moved, with or without
    // `done` on disk (then checked and the bookkeeping finished, above).
    freeze_root(&src_fd, src, &parent_fd, &name, dest, flag_support)?;
    jr.append(
        &Event::Renamed {
            replaced: replaced.as_ref().map(|p| p.to_string_lossy().into_owned()),
        },
        false,
    )?;
    jr.append(&Event::Done, false)?;
    finish_journal(
        &parent_fd,
        &staging_fd,
        &staging_name,
        &journal_name,
        &jr,
        &parent,
        dest,
    )?;
    Ok(StateOutcome::Copied {
        copy: copied,
        verify: report,
        resumed: resume != Resume::Fresh,
        replaced,
    })
}

/// Give the renamed copy the root's `+i`/`+a`, which would have forbidden the rename, so they
/// come after it; then, last, the read-only property of a state directory that is a btrfs
/// subvolume (which forbids renaming it into another directory and setting `+i`/`+a`). A copy
/// that is not a subvolume (not on btrfs) cannot hold it: the copy's report says so.
/// Idempotent: a resumed run calls it again after a kill right after the rename.
fn freeze_root(
    src_fd: &OwnedFd,
    src: &Path,
    parent_fd: &OwnedFd,
    name: &CStr,
    dest: &Path,
    flag_support: u32,
) -> Result<(), StateError> {
    let root_frozen = flags::get(src_fd.as_fd())
        .map_err(|e| StateError::io("read the inode flags of", src, e))?
        & (flags::IMMUTABLE | flags::APPEND)
        & flag_support;
    if root_frozen != 0 {
        let dfd = sys::open_dest_dir(parent_fd.as_fd(), name)
            .map_err(|e| StateError::io("open", dest, e))?;
        let now = flags::get(dfd.as_fd())
            .map_err(|e| StateError::io("read the inode flags of", dest, e))?;
        if now & root_frozen != root_frozen {
            flags::set(dfd.as_fd(), now | root_frozen)
                .map_err(|e| StateError::write("set the inode flags of", dest, dest, e))?;
        }
    }
    let root_readonly = sys::subvolume_readonly(src_fd.as_fd())
        .map_err(|e| StateError::io("read the btrfs subvolume flags of", src, e))?
        == Some(true);
    if root_readonly {
        let dfd = sys::open_dest_dir(parent_fd.as_fd(), name)
            .map_err(|e| StateError::io("open", dest, e))?;
        if sys::subvolume_readonly(dfd.as_fd())
            .map_err(|e| StateError::io("read the btrfs subvolume flags of", dest, e))?
            == Some(false)
        {
            sys::set_subvolume_readonly(dfd.as_fd(), true).map_err(|e| {
                StateError::write("make read-only the btrfs subvolume", dest, dest, e)
            })?;
        }
    }
    Ok(())
}

/// What keeps a directory from being renamed into another directory: its `+i`/`+a` inode flags
/// and, for the root of a btrfs subvolume, the read-only property.
#[derive(Debug, Clone, Copy, Default)]
struct Frozen {
    flags: u32,
    readonly: bool,
}

/// Lift what keeps the directory `name` of `dir` (a destination being replaced with `force`)
/// from being moved aside; [`refreeze`] puts it back on the moved one. Not a directory:
/// nothing to lift.
fn thaw_for_rename(
    dir: &OwnedFd,
    name: &CStr,
    path: &Path,
    dest: &Path,
) -> Result<Frozen, StateError> {
    let fd = match sys::open_dest_dir(dir.as_fd(), name) {
        Ok(fd) => fd,
        Err(Errno::NOTDIR | Errno::LOOP | Errno::NOENT) => return Ok(Frozen::default()),
        Err(e) => return Err(StateError::io("open", path, e)),
    };
    let readonly = sys::subvolume_readonly(fd.as_fd())
        .map_err(|e| StateError::io("read the btrfs subvolume flags of", path, e))?
        == Some(true);
    // In this order: a read-only subvolume's flags cannot be changed.
    if readonly {
        sys::set_subvolume_readonly(fd.as_fd(), false)
            .map_err(|e| StateError::write("make writable the btrfs subvolume", path, dest, e))?;
    }
    let f =
        flags::get(fd.as_fd()).map_err(|e| StateError::io("read the inode flags of", path, e))?;
    let frozen = f & (flags::IMMUTABLE | flags::APPEND);
    if frozen != 0 {
        flags::set(fd.as_fd(), f & !frozen)
            .map_err(|e| StateError::write("clear the inode flags of", path, dest, e))?;
    }
    Ok(Frozen {
        flags: frozen,
        readonly,
    })
}

/// Put back what [`thaw_for_rename`] lifted, on the directory `name` of `dir`: the flags, then
/// the read-only property (which forbids changing them).
fn refreeze(
    dir: &OwnedFd,
    name: &CStr,
    path: &Path,
    dest: &Path,
    frozen: Frozen,
) -> Result<(), StateError> {
    if frozen.flags == 0 && !frozen.readonly {
        return Ok(());
    }
    let fd = sys::open_dest_dir(dir.as_fd(), name).map_err(|e| StateError::io("open", path, e))?;
    if frozen.flags != 0 {
        let f = flags::get(fd.as_fd())
            .map_err(|e| StateError::io("read the inode flags of", path, e))?;
        flags::set(fd.as_fd(), f | frozen.flags)
            .map_err(|e| StateError::write("set the inode flags of", path, dest, e))?;
    }
    if frozen.readonly {
        sys::set_subvolume_readonly(fd.as_fd(), true)
            .map_err(|e| StateError::write("make read-only the btrfs subvolume", path, dest, e))?;
    }
    Ok(())
}

/// Move the journal next to the destination, remove the (now empty) staging directory, and
/// make both durable: the journal's contents and the directory are synced together (a stop
/// between the two syncs is recognised by the next run either way).
fn finish_journal(
    parent_fd: &OwnedFd,
    staging_fd: &OwnedFd,
    staging_name: &CStr,
    journal_name: &CStr,
    jr: &Journal,
    parent: &Path,
    dest: &Path,
) -> Result<(), StateError> {
    rfs::renameat(staging_fd, c"journal", parent_fd, journal_name)
        .map_err(|e| StateError::write("move the journal to", parent, dest, e))?;
    match rfs::unlinkat(parent_fd, staging_name, AtFlags::REMOVEDIR) {
        Ok(()) | Err(Errno::NOENT) => {}
        Err(e) => {
            return Err(StateError::write(
                "remove the staging directory in",
                parent,
                dest,
                e,
            ));
        }
    }
    let (journal_synced, dir_synced) = std::thread::scope(|s| {
        let j = s.spawn(|| jr.sync());
        let d = rfs::fsync(parent_fd);
        (
            j.join().unwrap_or(Err(StateError::invalid(
                parent,
                "internal error: a sync thread panicked",
            ))),
            d,
        )
    });
    journal_synced?;
    dir_synced.map_err(|e| StateError::write("sync", parent, dest, e))
}

#[allow(clippy::too_many_arguments)]
fn move_state(
    src: &Path,
    dest: &Path,
    parent_fd: &OwnedFd,
    name: &CStr,
    source: &SourceId,
    replace: bool,
    journal_name: &CStr,
    journal_path: &Path,
    name_s: &str,
    src_meta: &sys::Meta,
) -> Result<StateOutcome, StateError> {
    let pm = sys::fstat(parent_fd.as_fd()).map_err(|e| StateError::io("stat", journal_path, e))?;
    // A fresh journal for this move (an old one is replaced).
    match rfs::unlinkat(parent_fd, journal_name, AtFlags::empty()) {
        Ok(()) | Err(Errno::NOENT) => {}
        Err(e) => {
            return Err(StateError::write(
                "remove the old journal",
                journal_path,
                dest,
                e,
            ));
        }
    }
    let mut jr = Journal::open(parent_fd.as_fd(), journal_name, journal_path)?;
    jr.append(
        &Event::Start {
            version: journal::VERSION,
            source: source.clone(),
            dest: dest.to_string_lossy().into_owned(),
            mode: "move".into(),
            verify: "none".into(),
            resume: "fresh".into(),
            unix_time: now(),
        },
        true,
    )?;
    let cross = |e: Errno| match e {
        Errno::XDEV => StateErrorKind::CrossDevice {
            src: src.to_path_buf(),
            dest: dest.to_path_buf(),
            src_dev: src_meta.dev,
            dest_dev: pm.dev,
            reason: "they are on different mounts".to_string(),
        }
        .into(),
        Errno::BUSY => StateError::invalid(
            src,
            "is a mount point (or in use) and cannot be renamed; use --state copy",
        ),
        e => StateError::write("rename to", dest, dest, e),
    };
    let parent = dest.parent().unwrap_or(dest);
    if replace {
        let frozen = thaw_for_rename(parent_fd, name, dest, dest)?;
        rfs::renameat_with(rfs::CWD, src, parent_fd, name, RenameFlags::EXCHANGE).map_err(cross)?;
        let old = format!(".{name_s}.replaced-{}", now());
        rfs::renameat(rfs::CWD, src, parent_fd, old.as_str()).map_err(cross)?;
        let old_c = cstring(dest, old.as_ref())?;
        refreeze(parent_fd, &old_c, &parent.join(&old), dest, frozen)?;
    } else {
        rfs::renameat(rfs::CWD, src, parent_fd, name).map_err(cross)?;
    }
    rfs::fsync(parent_fd).map_err(|e| StateError::write("sync", parent, dest, e))?;
    if let Some(sp) = src.parent()
        && let Ok(fd) = sys::open_dir_path(sp)
    {
        rfs::fsync(&fd).map_err(|e| StateError::write("sync", sp, dest, e))?;
    }
    jr.append(&Event::Moved, false)?;
    jr.append(&Event::Done, true)?;
    Ok(StateOutcome::Moved)
}

/// Where the journal records the source: relative to the destination's parent directory
/// (`../nixos-containers/web`), so the record stays true when the whole tree is mounted
/// elsewhere. Both are REAL paths, made absolute lexically.
fn relative_source(parent: &Path, src: &Path) -> String {
    use std::path::Component;
    let abs = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    let (p, s) = (abs(parent), abs(src));
    let pc: Vec<Component> = p.components().filter(|c| *c != Component::CurDir).collect();
    let sc: Vec<Component> = s.components().filter(|c| *c != Component::CurDir).collect();
    let common = pc.iter().zip(&sc).take_while(|(a, b)| a == b).count();
    let mut out = PathBuf::new();
    for _ in common..pc.len() {
        out.push("..");
    }
    for c in &sc[common..] {
        out.push(c.as_os_str());
    }
    if out.as_os_str().is_empty() {
        ".".to_string()
    } else {
        out.to_string_lossy().into_owned()
    }
}

/// The nearest existing ancestor of `path` (itself included), opened.
fn nearest_existing(path: &Path) -> Result<(PathBuf, OwnedFd), StateError> {
    let mut p = path.to_path_buf();
    loop {
        match sys::open_dir_path(&p) {
            Ok(fd) => return Ok((p, fd)),
            Err(Errno::NOENT) if p.pop() => {}
            Err(e) => return Err(StateError::io("open", &p, e)),
        }
    }
}

/// Can `src` be renamed to `dest` (`--state move`)? Both must be on the same mount of the same
/// filesystem and, on btrfs, in the same subvolume unless `src` is a subvolume itself (which
/// rename(2) moves anywhere in its filesystem, unless it is read-only: then only within its
/// directory). Nested subvolumes move with it. Mount points inside `src` are refused: rename(2)
/// would take them along, but the host mounts them at the old path again at its next boot
/// (found by a walk of the whole tree, as the copy finds them; bounded in open files). Nothing
/// is written; `dest` need not exist yet (its nearest existing ancestor is what counts).
///
/// # Errors
///
/// [`StateErrorKind::CrossDevice`] or [`StateErrorKind::MoveRefused`] with the reason and the
/// way out, or an I/O error naming the path.
pub fn check_move(src: &Path, dest: &Path) -> Result<(), StateError> {
    let s = sys::open_root(src)?;
    let sm = sys::fstat(s.as_fd()).map_err(|e| StateError::io("stat", src, e))?;
    let parent = dest.parent().unwrap_or(dest);
    let (at, d) = nearest_existing(parent)?;
    let dm = sys::fstat(d.as_fd()).map_err(|e| StateError::io("stat", &at, e))?;
    let refuse = |reason: String| -> Result<(), StateError> {
        Err(StateErrorKind::CrossDevice {
            src: src.to_path_buf(),
            dest: dest.to_path_buf(),
            src_dev: sm.dev,
            dest_dev: dm.dev,
            reason,
        }
        .into())
    };
    let same_btrfs = || {
        matches!(
            (sys::fs_id(s.as_fd()), sys::fs_id(d.as_fd())),
            (Ok(a @ sys::FsId::Btrfs(_)), Ok(b)) if a == b
        )
    };
    // The state directory itself a btrfs subvolume: rename(2) moves a subvolume between any
    // two directories of its filesystem (a plain directory only within its subvolume).
    let src_is_subvolume = sys::is_subvolume_root(&sm, dm.dev) && !sm.mount_root && same_btrfs();
    if sm.dev != dm.dev && !src_is_subvolume {
        return refuse(if same_btrfs() {
            format!(
                "they are in different btrfs subvolumes ({} is in its own subvolume or below one)",
                at.display()
            )
        } else {
            format!(
                "they are on different filesystems (device {:#x} and {:#x}, the filesystem of {})",
                sm.dev,
                dm.dev,
                at.display()
            )
        });
    }
    if let (Some(a), Some(b)) = (sys::mount_id(s.as_fd()), sys::mount_id(d.as_fd()))
        && a != b
    {
        return refuse(format!(
            "they are on different mounts of one filesystem (a bind mount at or above {})",
            at.display()
        ));
    }
    if sm.mount_root {
        return Err(StateError::invalid(
            src,
            "is a mount point and cannot be renamed; use --state copy",
        ));
    }
    let refused = |reason: String, fix: String| -> Result<(), StateError> {
        Err(StateErrorKind::MoveRefused {
            src: src.to_path_buf(),
            dest: dest.to_path_buf(),
            reason,
            fix,
        }
        .into())
    };
    // A read-only subvolume's root may be renamed within its directory only (moving it to
    // another one would change its `..`, which the property forbids).
    let src_parent = src.parent().map(sys::open_dir_path);
    let same_dir = match (&src_parent, at == parent) {
        (Some(Ok(p)), true) => {
            sys::fstat(p.as_fd()).is_ok_and(|pm| (pm.dev, pm.ino) == (dm.dev, dm.ino))
        }
        _ => false,
    };
    if !same_dir
        && sys::subvolume_readonly(s.as_fd())
            .map_err(|e| StateError::io("read the btrfs subvolume flags of", src, e))?
            == Some(true)
    {
        return refused(
            "it is a read-only btrfs subvolume, which rename(2) cannot move into another \
             directory"
                .to_string(),
            format!(
                "make it writable (btrfs property set -ts {} ro false), run again, then make the \
                 moved one read-only again (btrfs property set -ts {} ro true); or use --state \
                 copy, which keeps the copy read-only and the legacy state as it is",
                src.display(),
                dest.display()
            ),
        );
    }
    // rename(2) refuses to move an immutable or append-only directory at all.
    let frozen = flags::get(s.as_fd())
        .map_err(|e| StateError::io("read the inode flags of", src, e))?
        & (flags::IMMUTABLE | flags::APPEND);
    if frozen != 0 {
        let l = flags::letters(frozen);
        let off = l.replace('+', "-");
        return refused(
            format!("it is {l} (chattr), which forbids renaming it"),
            format!(
                "clear it (chattr {off} {}), run again, then set it on the moved one (chattr {l} \
                 {}); or use --state copy, which keeps the flags and the legacy state as it is",
                src.display(),
                dest.display()
            ),
        );
    }
    const MAX_LISTED: usize = 5;
    let (n, first) = space::mounts_below(&s, src, MAX_LISTED)?;
    if n > 0 {
        let shown: Vec<String> = first.iter().map(|p| p.display().to_string()).collect();
        let more = if n > first.len() {
            format!(" and {} more", n - first.len())
        } else {
            String::new()
        };
        let (it, its) = (one_or(n, "it", "them"), one_or(n, "its", "their"));
        return refused(
            format!(
                "{n} mount point{} inside it ({}{more}): rename(2) would take {it} along, but what \
                 mounts {it} (a fileSystems entry, fstab, a mount unit) mounts {it} at the old \
                 path again at the next boot, and the moved container would not have {it}",
                one_or(n, " is", "s are"),
                shown.join(", "),
            ),
            format!(
                "unmount {it} and point {its} fileSystems entr{} at the new path below {} \
                 instead, then run again; or use --state copy, which leaves the legacy state \
                 and {its} mounts as they are (the copy has an empty directory in place of each, \
                 reported as state-mounts-skipped)",
                one_or(n, "y", "ies"),
                dest.display()
            ),
        );
    }
    Ok(())
}

/// `--state move` run again after it renamed: the source is gone, `dest` is the directory the
/// journal's last (move) record names, by path and inode. Finishes the journal of a run that
/// was interrupted right after the rename.
fn finish_move(
    src: &Path,
    dest: &Path,
    parent: &Path,
    name: &CStr,
    name_s: &str,
    rel_src: &str,
) -> Result<Option<StateOutcome>, StateError> {
    if !matches!(
        rfs::statat(rfs::CWD, src, AtFlags::SYMLINK_NOFOLLOW),
        Err(Errno::NOENT)
    ) {
        return Ok(None);
    }
    let Ok(parent_fd) = sys::open_dir_path(parent) else {
        return Ok(None);
    };
    let Ok(dm) = sys::lstat_at(parent_fd.as_fd(), name) else {
        return Ok(None);
    };
    let journal_name = cstring(dest, format!(".{name_s}.journal").as_ref())?;
    let journal_path = parent.join(format!(".{name_s}.journal"));
    let Some(ev) = journal::read(parent_fd.as_fd(), &journal_name, &journal_path)? else {
        return Ok(None);
    };
    let last_start = ev.iter().rev().find_map(|e| match e {
        Event::Start { source, mode, .. } => Some((source, mode)),
        _ => None,
    });
    let Some((recorded, mode)) = last_start else {
        return Ok(None);
    };
    let same = mode == "move"
        && recorded.ino == dm.ino
        && (recorded.src == rel_src || recorded.src == src.to_string_lossy());
    if !same {
        return Ok(None);
    }
    if journal::is_done(&ev) {
        return Ok(Some(StateOutcome::AlreadyDone {
            verify: VerifyReport::empty(Verify::None),
        }));
    }
    let mut jr = Journal::open(parent_fd.as_fd(), &journal_name, &journal_path)?;
    jr.append(&Event::Moved, false)?;
    jr.append(&Event::Done, true)?;
    Ok(Some(StateOutcome::Moved))
}

/// Compare the trees at `src` and `dst` (REAL paths). See [`VerifyReport`]. Inode flags the
/// filesystem of `dst` cannot hold are not compared.
pub fn verify_tree(src: &Path, dst: &Path, level: Verify) -> Result<VerifyReport, StateError> {
    let s = sys::open_root(src)?;
    let d = sys::open_root(dst)?;
    let support = flags::probe(d.as_fd());
    verify::verify_fds(&s, &d, level, src, dst, workers(), support)
}

/// Copy the tree at `src` to the NEW directory `dst` (its parent must exist) with the engine,
/// no staging, no journal. For benchmarks and tools; `migrate_state` is the safe entry point.
#[doc(hidden)]
pub fn copy_tree_raw(
    src: &Path,
    dst: &Path,
    progress: &dyn Progress,
) -> Result<CopyReport, StateError> {
    let s = sys::open_root(src)?;
    std::fs::DirBuilder::new()
        .create(dst)
        .map_err(|e| StateError::write("create the directory", dst, dst, e))?;
    let d = sys::open_dir_path(dst).map_err(|e| StateError::io("open", dst, e))?;
    let flag_support = flags::probe(d.as_fd());
    copy::copy_tree(
        &s,
        d,
        CopyConfig {
            src_label: src,
            dst_label: dst,
            resume: Resume::Fresh,
            progress,
            workers: workers(),
            checkpoint: None,
            checkpoint_every: Duration::from_secs(3600),
            flag_support,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_journal_names_the_source_relative_to_the_destination_parent() {
        let r = |p: &str, s: &str| relative_source(Path::new(p), Path::new(s));
        assert_eq!(
            r("/mnt/var/lib/machines", "/mnt/var/lib/nixos-containers/web"),
            "../nixos-containers/web"
        );
        assert_eq!(
            r("/var/lib/machines", "/var/lib/nixos-containers/web"),
            "../nixos-containers/web"
        );
        assert_eq!(
            r("/srv/m", "/var/lib/containers/x"),
            "../../var/lib/containers/x"
        );
        assert_eq!(r("/var/lib/machines", "/var/lib/machines/web"), "web");
    }

    /// The flattened warning says which subvolumes lost their read-only property, in words
    /// that fit how many.
    #[test]
    fn the_flattened_warning_names_the_read_only_subvolumes() {
        let warn = |flat: &[&str], ro: &[&str]| {
            let out = StateOutcome::Copied {
                copy: CopyReport {
                    subvolumes_flattened: flat.iter().map(PathBuf::from).collect(),
                    subvolumes_readonly: ro.iter().map(PathBuf::from).collect(),
                    ..CopyReport::default()
                },
                verify: VerifyReport::empty(Verify::Full),
                resumed: false,
                replaced: None,
            };
            let w = out.warnings("web");
            assert_eq!(w.len(), 1, "{w:?}");
            assert_eq!(w[0].code, "state-subvolumes-flattened");
            w[0].message.clone()
        };
        let m = warn(&["srv/a"], &[]);
        assert!(!m.contains("read-only"), "{m}");
        let m = warn(&["srv/a"], &["srv/a"]);
        assert!(
            m.ends_with(
                "does not apply any more. It was read-only (btrfs property ro); the plain \
                 directory in the copy is writable, nothing keeps the container from changing it now"
            ),
            "{m}"
        );
        let m = warn(&[".", "srv/a"], &[".", "srv/a"]);
        assert!(
            m.contains("All of them were read-only (btrfs property ro); the plain directories in the copy are writable")
                && m.ends_with("changing them now"),
            "{m}"
        );
        let m = warn(&["srv/a", "srv/b", "srv/c"], &["srv/c", "srv/b"]);
        assert!(
            m.contains(
                "2 of them were read-only (btrfs property ro): srv/b, srv/c; the plain directories"
            ),
            "{m}"
        );
    }
}
