//! [`StateError`]: what stopped a state copy, where, and what the administrator can do.
//!
//! Messages are lowercase, name the path and the operation, and put the fix in a second
//! paragraph (`\n\n`), like `crate::error::Error`.

use std::borrow::Cow;
use std::path::{Path, PathBuf};

use super::verify::VerifyReport;

/// An error of the state engine. [`StateError::kind`] tells what happened; `Display` says where
/// and how to fix it.
#[derive(Debug, thiserror::Error)]
#[error("{kind}")]
pub struct StateError {
    kind: Box<StateErrorKind>,
}

/// What went wrong. `#[non_exhaustive]`: match with a wildcard arm.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StateErrorKind {
    /// A system call failed on `path`.
    #[error("cannot {op} {path}: {source}{hint}", path = .path.display(), hint = io_hint(.source))]
    Io {
        op: Cow<'static, str>,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// ENOSPC/EDQUOT while writing.
    #[error(
        "disk full on the filesystem of {dest} while trying to {op} {path}\n\n\
         {still}free space there, or use --state move if the legacy state is on the same filesystem; \
         the partial copy is kept and the next run resumes it",
        dest = .dest.display(), path = .path.display(),
        still = .still_needed.map(|n| format!("about {} more is needed: ", human_bytes(n))).unwrap_or_default()
    )]
    DiskFull {
        op: Cow<'static, str>,
        path: PathBuf,
        dest: PathBuf,
        still_needed: Option<u64>,
    },
    /// The free-space check before copying failed.
    #[error(
        "not enough free space to copy {src}: {need} needed, {free} free on the filesystem of {dest}\n\n\
         free at least {missing} there, or use --state move if {src} is on the same filesystem",
        src = .src.display(), dest = .dest.display(), need = human_bytes(*.need),
        free = human_bytes(*.free), missing = human_bytes(.need.saturating_sub(*.free))
    )]
    NotEnoughSpace {
        src: PathBuf,
        dest: PathBuf,
        need: u64,
        free: u64,
    },
    /// An entry of the source changed type or identity while we were copying it: the container
    /// is running, or someone is racing us on purpose.
    #[error(
        "{path} changed while it was being copied ({what})\n\n\
         stop the container and run again; the copy resumes where it stopped",
        path = .path.display()
    )]
    SourceChanged { path: PathBuf, what: String },
    /// The destination already holds something that is not a finished copy of this source.
    #[error("{dest} already exists and {reason}\n\n{fix}", dest = .dest.display())]
    DestOccupied {
        dest: PathBuf,
        reason: String,
        fix: String,
    },
    /// `StateMode::Move` across filesystems (or mounts, or btrfs subvolumes): `rename(2)`
    /// cannot do it. Checked before anything is written.
    #[error(
        "cannot move {src} to {dest}: {reason}; a move is a rename(2), which cannot cross them\n\n\
         nothing was written; use --state copy (the default) instead: it keeps the legacy state untouched",
        src = .src.display(), dest = .dest.display()
    )]
    CrossDevice {
        src: PathBuf,
        dest: PathBuf,
        src_dev: u64,
        dest_dev: u64,
        /// "they are on different filesystems (device 0x801 and 0x7)", …
        reason: String,
    },
    /// `StateMode::Move` of a state that rename(2) could move, but not as the administrator
    /// expects (mount points inside it), or cannot move into another directory (a read-only
    /// btrfs subvolume). Checked before anything is written.
    #[error(
        "cannot move {src} to {dest}: {reason}\n\n\
         nothing was written; {fix}",
        src = .src.display(), dest = .dest.display()
    )]
    MoveRefused {
        src: PathBuf,
        dest: PathBuf,
        reason: String,
        fix: String,
    },
    /// The destination filesystem has fewer free inodes than the copy needs entries (checked
    /// before copying), or ran out of them during the copy (`during` names the operation).
    #[error(
        "{what} on the filesystem of {dest}: {need} more files and directories to create for the copy of {src}, {free} inodes free\n\n\
         free inodes there (remove files; on ext4 the number of inodes is fixed when the filesystem is made, see mkfs.ext4 -N), \
         or use --state move if {src} is on the same filesystem{resume}",
        src = .src.display(), dest = .dest.display(),
        what = .during.as_ref().map(|(op, p)| format!("out of inodes while trying to {op} {}", p.display()))
            .unwrap_or_else(|| "not enough free inodes".to_string()),
        resume = if .during.is_some() { "; the partial copy is kept and the next run resumes it" } else { "" }
    )]
    NoInodes {
        src: PathBuf,
        dest: PathBuf,
        need: u64,
        free: u64,
        during: Option<(String, PathBuf)>,
    },
    /// The copy in the staging directory does not match the source.
    #[error(
        "verification of the copy of {src} in {staging} failed: {summary}\n\n\
         nothing was renamed into place; stop the container if it is running and run again \
         (the next run re-copies every file's data)",
        src = .src.display(), staging = .staging.display(), summary = .report.summary()
    )]
    VerifyFailed {
        src: PathBuf,
        staging: PathBuf,
        report: Box<VerifyReport>,
    },
    /// A staging directory from another migration (another source) is in the way.
    #[error("{staging} holds an unfinished copy of {other}, not of {src}\n\n{fix}",
        staging = .staging.display(), other = .other, src = .src.display())]
    StagingForeign {
        staging: PathBuf,
        src: PathBuf,
        other: String,
        fix: String,
    },
    /// A path argument cannot be used.
    #[error("{path}: {what}", path = .path.display())]
    Invalid { path: PathBuf, what: String },
}

fn io_hint(e: &std::io::Error) -> &'static str {
    match e.raw_os_error() {
        Some(libc::ELOOP) => {
            "\n\nthe path or one of its components is a symlink; the state engine never follows symlinks, pass the real path"
        }
        Some(libc::EMFILE) | Some(libc::ENFILE) => {
            "\n\ntoo many open files: raise the limit (ulimit -n) and run again"
        }
        Some(libc::EROFS) => "\n\nthe filesystem is read-only; remount it read-write",
        Some(libc::EPERM) | Some(libc::EACCES) => {
            "\n\nrun as root; an immutable or append-only attribute (lsattr) can also cause this"
        }
        _ => "",
    }
}

/// `1.5 GiB (1610612736 bytes)`.
pub(crate) fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["bytes", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} bytes")
    } else {
        format!("{v:.1} {} ({n} bytes)", UNITS[u])
    }
}

impl StateError {
    pub fn kind(&self) -> &StateErrorKind {
        &self.kind
    }

    /// The errno of an I/O error, if this is one.
    pub fn raw_os_error(&self) -> Option<i32> {
        match &*self.kind {
            StateErrorKind::Io { source, .. } => source.raw_os_error(),
            StateErrorKind::DiskFull { .. } => Some(libc::ENOSPC),
            _ => None,
        }
    }

    pub(crate) fn io(
        op: impl Into<Cow<'static, str>>,
        path: &Path,
        source: impl Into<std::io::Error>,
    ) -> Self {
        let source = source.into();
        StateErrorKind::Io {
            op: op.into(),
            path: path.to_path_buf(),
            source,
        }
        .into()
    }

    /// Like [`StateError::io`], but ENOSPC/EDQUOT become [`StateErrorKind::DiskFull`].
    pub(crate) fn write(
        op: impl Into<Cow<'static, str>>,
        path: &Path,
        dest: &Path,
        source: impl Into<std::io::Error>,
    ) -> Self {
        let source = source.into();
        match source.raw_os_error() {
            Some(libc::ENOSPC) | Some(libc::EDQUOT) => StateErrorKind::DiskFull {
                op: op.into(),
                path: path.to_path_buf(),
                dest: dest.to_path_buf(),
                still_needed: None,
            }
            .into(),
            _ => Self::io(op, path, source),
        }
    }

    pub(crate) fn invalid(path: &Path, what: impl Into<String>) -> Self {
        StateErrorKind::Invalid {
            path: path.to_path_buf(),
            what: what.into(),
        }
        .into()
    }

    pub(crate) fn changed(path: &Path, what: impl Into<String>) -> Self {
        StateErrorKind::SourceChanged {
            path: path.to_path_buf(),
            what: what.into(),
        }
        .into()
    }

    /// A [`StateErrorKind::DiskFull`] that is really a lack of inodes (the filesystem of `dest`
    /// has none free) becomes [`StateErrorKind::NoInodes`], with the entries still to create.
    pub(crate) fn inodes_if_exhausted(self, src: &Path, dest: &Path, entries_left: u64) -> Self {
        let StateErrorKind::DiskFull { op, path, .. } = &*self.kind else {
            return self;
        };
        match rustix::fs::statvfs(dest) {
            Ok(v) if v.f_files > 0 && v.f_favail == 0 => StateErrorKind::NoInodes {
                src: src.to_path_buf(),
                dest: dest.to_path_buf(),
                need: entries_left.max(1),
                free: 0,
                during: Some((op.to_string(), path.clone())),
            }
            .into(),
            _ => self,
        }
    }

    /// Fill in how much space is still needed on a [`StateErrorKind::DiskFull`].
    pub(crate) fn with_still_needed(mut self, n: u64) -> Self {
        if let StateErrorKind::DiskFull { still_needed, .. } = &mut *self.kind {
            *still_needed = Some(n);
        }
        self
    }
}

impl From<StateErrorKind> for StateError {
    fn from(kind: StateErrorKind) -> Self {
        StateError {
            kind: Box::new(kind),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enospc_becomes_disk_full_with_the_fix() {
        let e = StateError::write(
            "copy data to",
            Path::new("/var/lib/machines/.web.partial/tree/var/db"),
            Path::new("/var/lib/machines"),
            std::io::Error::from_raw_os_error(libc::ENOSPC),
        )
        .with_still_needed(3 << 30);
        let msg = e.to_string();
        assert!(msg.starts_with("disk full on the filesystem of /var/lib/machines while trying to copy data to /var/lib/machines/.web.partial/tree/var/db"), "{msg}");
        assert!(
            msg.contains("about 3.0 GiB (3221225472 bytes) more is needed"),
            "{msg}"
        );
        assert!(msg.contains("--state move"), "{msg}");
        assert_eq!(e.raw_os_error(), Some(libc::ENOSPC));
        let other = StateError::io(
            "open",
            Path::new("/x"),
            std::io::Error::from_raw_os_error(libc::ELOOP),
        );
        assert!(
            other.to_string().contains("never follows symlinks"),
            "{other}"
        );
        assert_eq!(human_bytes(512), "512 bytes");
    }
}
