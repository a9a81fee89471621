//! The imperative verbs' only door to host files: every read, write and removal of a host path
//! goes through [`Fs`], which goes through [`crate::host::HostRoot`] and [`crate::atomic`].
//!
//! Kept small on purpose: when the root-confined file API changes, only this file follows.

use crate::atomic::{Written, write_atomic};
use crate::host::{HostRoot, Kind};
use std::io;
use std::path::{Path, PathBuf};

pub struct Fs<'a> {
    pub host: &'a HostRoot,
}

/// Store-managed places: a write there would land in the read-only Nix store (or be undone by
/// the next `nixos-rebuild`).
fn store_managed(resolved: &Path) -> bool {
    resolved.starts_with("/nix/store") || resolved.starts_with("/etc/static")
}

impl<'a> Fs<'a> {
    pub fn new(host: &'a HostRoot) -> Self {
        Fs { host }
    }

    /// The host path a write to `path` would really land on, or why it must not be written.
    pub fn check_writable(&self, path: &Path) -> io::Result<PathBuf> {
        let resolved = self.host.resolve(path)?;
        if store_managed(&resolved) {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!(
                    "{} leads into {} (managed by NixOS, read-only); it cannot hold an imperative container's file",
                    path.display(),
                    resolved.display()
                ),
            ));
        }
        if let Some(Kind::Symlink) = self.host.kind(&resolved)? {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{} is a symlink; remove it first", path.display()),
            ));
        }
        Ok(resolved)
    }

    pub fn write(&self, path: &Path, text: &str, mode: u32) -> io::Result<Written> {
        let resolved = self.check_writable(path)?;
        write_atomic(&self.host.real(&resolved), text.as_bytes(), mode)
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
        use std::os::unix::fs::DirBuilderExt;
        let resolved = self.check_writable(path)?;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(mode)
            .create(self.host.real(&resolved))
    }

    /// Remove a file or symlink (never follows it). `false` when there was nothing.
    pub fn remove_file(&self, path: &Path) -> io::Result<bool> {
        let parent = path.parent().unwrap_or(Path::new("/"));
        let Some(file) = path.file_name() else {
            return Ok(false);
        };
        let resolved = self.host.resolve(parent)?.join(file);
        if store_managed(&resolved) {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!("{} is managed by NixOS", path.display()),
            ));
        }
        match std::fs::remove_file(self.host.real(&resolved)) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Remove an empty directory; `false` when it is missing or not empty.
    pub fn remove_empty_dir(&self, path: &Path) -> io::Result<bool> {
        let resolved = self.host.resolve(path)?;
        match std::fs::remove_dir(self.host.real(&resolved)) {
            Ok(()) => Ok(true),
            Err(e)
                if e.kind() == io::ErrorKind::NotFound
                    || e.kind() == io::ErrorKind::DirectoryNotEmpty =>
            {
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    /// Remove a whole tree without following any symlink in it (std's `remove_dir_all` opens
    /// each directory with `O_NOFOLLOW`). Immutable or append-only entries (NixOS marks
    /// `/var/empty` immutable) are made mutable first.
    pub fn remove_tree(&self, path: &Path) -> io::Result<bool> {
        let parent = path.parent().unwrap_or(Path::new("/"));
        let Some(file) = path.file_name() else {
            return Ok(false);
        };
        let resolved = self.host.resolve(parent)?.join(file);
        let real = self.host.real(&resolved);
        match std::fs::symlink_metadata(&real) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(e),
            Ok(m) if !m.is_dir() => {
                std::fs::remove_file(&real)?;
                return Ok(true);
            }
            Ok(_) => {}
        }
        match std::fs::remove_dir_all(&real) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
                clear_immutable(&real)?;
                std::fs::remove_dir_all(&real).map(|()| true)
            }
            Err(e) => Err(e),
        }
    }

    /// Point the symlink `path` at `target` atomically (a temporary link renamed over it).
    pub fn symlink(&self, target: &Path, path: &Path) -> io::Result<()> {
        let parent = path.parent().unwrap_or(Path::new("/"));
        let Some(file) = path.file_name() else {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "no file name"));
        };
        let dir = self.check_writable(parent)?;
        let real_dir = self.host.real(&dir);
        let tmp = real_dir.join(format!(
            ".{}.nixos-nspawn-tmp.{}",
            file.to_string_lossy(),
            std::process::id()
        ));
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(target, &tmp)?;
        std::fs::rename(&tmp, real_dir.join(file)).inspect_err(|_| {
            let _ = std::fs::remove_file(&tmp);
        })
    }
}

/// Clear the immutable and append-only flags on every entry of a tree (directories first, no
/// symlink followed), so that it can be removed.
fn clear_immutable(real: &Path) -> io::Result<()> {
    use rustix::fs::{IFlags, Mode, OFlags, ioctl_getflags, ioctl_setflags};
    for e in walkdir::WalkDir::new(real).follow_links(false) {
        let e = e.map_err(io::Error::other)?;
        if e.path_is_symlink() || !(e.file_type().is_dir() || e.file_type().is_file()) {
            continue;
        }
        let Ok(fd) = rustix::fs::open(
            e.path(),
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
            Mode::empty(),
        ) else {
            continue;
        };
        if let Ok(flags) = ioctl_getflags(&fd) {
            let cleared = flags - (IFlags::IMMUTABLE | IFlags::APPEND);
            if cleared != flags {
                ioctl_setflags(&fd, cleared).map_err(io::Error::from)?;
            }
        }
    }
    Ok(())
}

impl Fs<'_> {
    /// The mtime of a path itself (a link is not followed), in seconds since the epoch.
    pub fn link_mtime(&self, path: &Path) -> io::Result<i64> {
        use std::os::unix::fs::MetadataExt;
        let parent = path.parent().unwrap_or(Path::new("/"));
        let file = path.file_name().unwrap_or_default();
        let resolved = self.host.resolve(parent)?.join(file);
        Ok(std::fs::symlink_metadata(self.host.real(&resolved))?.mtime())
    }

    /// The path under the root directory a host path leads to, for programs that take a path
    /// (`nix-env -p`).
    /// The final component is not followed: `nix-env -p` wants the profile link itself.
    pub fn real_path(&self, path: &Path) -> io::Result<PathBuf> {
        let parent = path.parent().unwrap_or(Path::new("/"));
        let file = path.file_name().unwrap_or_default();
        Ok(self.host.real(&self.host.resolve(parent)?.join(file)))
    }
}
