//! The imperative verbs' only door to host files: every read, write and removal of a host path
//! goes through [`Fs`], which goes through the root-confined [`crate::host::HostRoot`]
//! (`openat2(RESOLVE_IN_ROOT)` from a root descriptor, `*at` calls below it). No path string
//! is opened here; recursive removal walks directory descriptors without following links.

use crate::atomic::Written;
use crate::host::{HostRoot, Kind};
use rustix::fs::{self as rfs, AtFlags, FileType, Mode, OFlags};
use rustix::io::Errno;
use std::ffi::{CStr, CString, OsStr};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

pub struct Fs<'a> {
    pub host: &'a HostRoot,
}

/// Store-managed places: a write there would land in the read-only Nix store (or be undone by
/// the next `nixos-rebuild`).
fn store_managed(resolved: &Path) -> bool {
    resolved.starts_with("/nix/store") || resolved.starts_with("/etc/static")
}

fn split(path: &Path) -> io::Result<(&Path, CString)> {
    let name = path.file_name().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} does not name a file", path.display()),
        )
    })?;
    let c = CString::new(name.as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))?;
    Ok((path.parent().unwrap_or(Path::new("/")), c))
}

const DIR: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);

impl<'a> Fs<'a> {
    pub fn new(host: &'a HostRoot) -> Self {
        Fs { host }
    }

    /// The host path a write to `path` would really land on, or why it must not be written.
    pub fn check_writable(&self, path: &Path) -> io::Result<PathBuf> {
        let probe = self.host.probe_write(path)?;
        if store_managed(&probe.resolved) {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!(
                    "{} leads into {} (managed by NixOS, read-only); it cannot hold an imperative container's file",
                    path.display(),
                    probe.resolved.display()
                ),
            ));
        }
        if matches!(
            probe.existing,
            Some(Kind::Symlink | Kind::Dir | Kind::Other)
        ) {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!(
                    "{} exists and is not a regular file; move it away first",
                    path.display()
                ),
            ));
        }
        if let (Err(e), _) = self.host.dir_writable(&probe.nearest_dir)? {
            return Err(io::Error::new(
                e.kind(),
                format!("{} is not writable: {e}", probe.nearest_dir.display()),
            ));
        }
        Ok(probe.resolved)
    }

    pub fn write(&self, path: &Path, text: &str, mode: u32) -> io::Result<Written> {
        self.check_writable(path)?;
        self.host
            .write_atomic(path, text.as_bytes(), mode)
            .map(|(w, _)| w)
    }

    /// Read a text file; `None` when it does not exist.
    pub fn read(&self, path: &Path) -> io::Result<Option<String>> {
        match self.host.read_to_string(path) {
            Ok(t) => Ok(Some(t)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub fn kind(&self, path: &Path) -> io::Result<Option<Kind>> {
        self.host.kind(path)
    }

    /// Where a host path leads (links resolved inside the root).
    pub fn resolve(&self, path: &Path) -> io::Result<PathBuf> {
        self.host.resolve(path)
    }

    pub fn read_link(&self, path: &Path) -> io::Result<PathBuf> {
        self.host.read_link(path)
    }

    /// Names in a directory; empty when it does not exist.
    pub fn list(&self, dir: &Path) -> io::Result<Vec<(String, Kind)>> {
        match self.host.read_dir(dir) {
            Ok(v) => Ok(v
                .into_iter()
                .filter_map(|e| e.name.to_str().map(|n| (n.to_string(), e.kind)))
                .collect()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(e),
        }
    }

    /// Create a directory and its parents (mode for the ones created).
    pub fn mkdir_all(&self, path: &Path, mode: u32) -> io::Result<()> {
        let resolved = self.host.resolve(path)?;
        if store_managed(&resolved) {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!("{} leads into {}", path.display(), resolved.display()),
            ));
        }
        self.host.create_dir_all(path, mode).map(|_| ())
    }

    /// The parent directory of `path` (resolved inside the root) and the last name.
    fn parent(&self, path: &Path) -> io::Result<(OwnedFd, CString, PathBuf)> {
        let (parent, name) = split(path)?;
        let resolved = self.host.resolve(parent)?;
        if store_managed(&resolved) {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!("{} is managed by NixOS", path.display()),
            ));
        }
        let fd = self.host.open(&resolved, DIR)?;
        Ok((fd, name, resolved))
    }

    /// Remove a file or symlink (never follows it). `false` when there was nothing.
    pub fn remove_file(&self, path: &Path) -> io::Result<bool> {
        let (dir, name, _) = match self.parent(path) {
            Ok(x) => x,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(e),
        };
        match rfs::unlinkat(&dir, &name, AtFlags::empty()) {
            Ok(()) => Ok(true),
            Err(Errno::NOENT) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Remove an empty directory; `false` when it is missing or not empty.
    pub fn remove_empty_dir(&self, path: &Path) -> io::Result<bool> {
        let (dir, name, _) = match self.parent(path) {
            Ok(x) => x,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(e),
        };
        match rfs::unlinkat(&dir, &name, AtFlags::REMOVEDIR) {
            Ok(()) => Ok(true),
            Err(Errno::NOENT | Errno::NOTEMPTY | Errno::EXIST) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Remove a whole tree through directory descriptors, never following a symlink in it.
    /// Immutable or append-only entries (NixOS marks `/var/empty` immutable) are made mutable
    /// first. Mount points are not crossed (removing one fails with EBUSY and is reported).
    pub fn remove_tree(&self, path: &Path) -> io::Result<bool> {
        let (dir, name, _) = match self.parent(path) {
            Ok(x) => x,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(e),
        };
        match rfs::statat(&dir, &name, AtFlags::SYMLINK_NOFOLLOW) {
            Err(Errno::NOENT) => return Ok(false),
            Err(e) => return Err(e.into()),
            Ok(_) => {}
        }
        remove_entry(dir.as_fd(), &name, path)?;
        Ok(true)
    }

    /// Point the symlink `path` at `target` (a temporary link renamed over it).
    pub fn symlink(&self, target: &Path, path: &Path) -> io::Result<()> {
        let resolved_parent = self.host.resolve(split(path)?.0)?;
        self.mkdir_all(&resolved_parent, 0o755)?;
        let (dir, name, _) = self.parent(path)?;
        let mut tmp = b".".to_vec();
        tmp.extend_from_slice(name.to_bytes());
        tmp.extend_from_slice(format!(".nixos-nspawn-tmp.{}", std::process::id()).as_bytes());
        let tmp = CString::new(tmp)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in name"))?;
        let _ = rfs::unlinkat(&dir, &tmp, AtFlags::empty());
        rfs::symlinkat(target, &dir, &tmp)?;
        rfs::renameat(&dir, &tmp, &dir, &name).map_err(|e| {
            let _ = rfs::unlinkat(&dir, &tmp, AtFlags::empty());
            io::Error::from(e)
        })
    }

    /// The mtime of a path itself (a link is not followed), in seconds since the epoch.
    pub fn link_mtime(&self, path: &Path) -> io::Result<i64> {
        let fd = self.host.open(path, OFlags::PATH | OFlags::NOFOLLOW)?;
        Ok(rfs::fstat(&fd)?.st_mtime)
    }

    /// The path under the root directory that a host path stands for, for programs that take
    /// a path (`nix-env -p`). The final component is not followed: `nix-env -p` wants the
    /// profile link itself.
    pub fn real_path(&self, path: &Path) -> io::Result<PathBuf> {
        let (parent, _) = split(path)?;
        let file = path.file_name().unwrap_or_default();
        Ok(self.host.confined_real_path(parent)?.join(file))
    }
}

fn clear_flags(fd: BorrowedFd<'_>) {
    use rustix::fs::{IFlags, ioctl_getflags, ioctl_setflags};
    if let Ok(flags) = ioctl_getflags(fd) {
        let cleared = flags - (IFlags::IMMUTABLE | IFlags::APPEND);
        if cleared != flags {
            let _ = ioctl_setflags(fd, cleared);
        }
    }
}

/// Remove `name` in `dir`: a directory recursively, anything else unlinked; never followed.
fn remove_entry(dir: BorrowedFd<'_>, name: &CStr, label: &Path) -> io::Result<()> {
    let st = rfs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)?;
    let is_dir = FileType::from_raw_mode(st.st_mode) == FileType::Directory;
    let flag_fd = || {
        rfs::openat(
            dir,
            name,
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
            Mode::empty(),
        )
    };
    if is_dir {
        let sub = rfs::openat(dir, name, DIR, Mode::empty())?;
        clear_flags(sub.as_fd());
        let mut names = Vec::new();
        let mut d = rfs::Dir::read_from(&sub)?;
        while let Some(e) = d.read() {
            let e = e?;
            let n = e.file_name();
            if n != c"." && n != c".." {
                names.push(n.to_owned());
            }
        }
        for n in names {
            let child = label.join(OsStr::from_bytes(n.to_bytes()));
            remove_entry(sub.as_fd(), &n, &child)?;
        }
        rfs::unlinkat(dir, name, AtFlags::REMOVEDIR).map_err(|e| {
            io::Error::new(
                io::Error::from(e).kind(),
                format!("{}: {e}", label.display()),
            )
        })
    } else {
        match rfs::unlinkat(dir, name, AtFlags::empty()) {
            Err(Errno::PERM) => {
                if let Ok(fd) = flag_fd() {
                    clear_flags(fd.as_fd());
                }
                rfs::unlinkat(dir, name, AtFlags::empty()).map_err(|e| {
                    io::Error::new(
                        io::Error::from(e).kind(),
                        format!("{}: {e}", label.display()),
                    )
                })
            }
            r => r.map_err(|e| {
                io::Error::new(
                    io::Error::from(e).kind(),
                    format!("{}: {e}", label.display()),
                )
            }),
        }
    }
}
