//! The host root: the one door through which the core reads a host tree.
//!
//! Every built-in host path (`/etc/nixos-containers`, `/var/lib/machines`, …) is a *host path*,
//! absolute as seen on the host, and is resolved under `--root DIR`. Symlinks are resolved like
//! the kernel would inside a chroot at DIR, so a declarative `.conf` that points at
//! `/etc/static/…` is read from `DIR/etc/static/…`, never from the machine running the tool.
//! Reads inside a container's rootfs are confined to that rootfs ([`HostRoot::read_confined`]):
//! whoever is root in the container controls those symlinks.
//!
//! [`HostRoot::seal_read_only`] makes the whole tree read-only and `noatime` for this process
//! (a private mount namespace), which is how `--dry-run` guarantees that not a byte and not a
//! timestamp changes: even a bug could not write.

use std::ffi::OsString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

/// The longest symlink chain we follow before giving up (the kernel's limit is 40).
const MAX_SYMLINK_HOPS: usize = 40;

#[derive(Clone, Debug)]
pub struct HostRoot {
    root: PathBuf,
}

/// What kind of thing a host path names (without following a final symlink).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
    Symlink,
    Other,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub name: OsString,
    pub kind: Kind,
}

impl HostRoot {
    /// A host tree at `root` (`/` for the running system).
    pub fn new(root: impl Into<PathBuf>) -> io::Result<Self> {
        let root = root.into();
        let root = std::fs::canonicalize(&root)
            .map_err(|e| io::Error::new(e.kind(), format!("host root {}: {e}", root.display())))?;
        if !root.is_dir() {
            return Err(io::Error::new(
                io::ErrorKind::NotADirectory,
                format!("host root {} is not a directory", root.display()),
            ));
        }
        Ok(HostRoot { root })
    }

    /// The directory the host tree is mounted at.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The real path of a host path, without resolving any symlink.
    pub fn real(&self, host: &Path) -> PathBuf {
        let mut out = self.root.clone();
        for c in host.components() {
            match c {
                Component::Normal(n) => out.push(n),
                Component::ParentDir | Component::CurDir | Component::RootDir => {}
                Component::Prefix(_) => {}
            }
        }
        out
    }

    /// Resolve every symlink in `host` as the kernel would inside a chroot at the host root.
    /// Returns a host path that contains no symlink up to the first missing component.
    pub fn resolve(&self, host: &Path) -> io::Result<PathBuf> {
        self.resolve_in(Path::new("/"), host)
    }

    /// Resolve `path` (absolute within the jail) with `jail` (a host path, e.g. a container's
    /// rootfs) as its root: absolute links and `..` never leave the jail. Returns a host path.
    pub fn resolve_in(&self, jail: &Path, path: &Path) -> io::Result<PathBuf> {
        let jail = lexical_normalize(jail);
        let mut pending: Vec<OsString> = components(path);
        pending.reverse();
        let mut resolved: Vec<OsString> = Vec::new();
        let mut hops = 0usize;
        while let Some(c) = pending.pop() {
            if c == ".." {
                resolved.pop();
                continue;
            }
            let mut candidate = jail.clone();
            candidate.extend(resolved.iter());
            candidate.push(&c);
            match std::fs::symlink_metadata(self.real(&candidate)) {
                Ok(m) if m.file_type().is_symlink() => {
                    hops += 1;
                    if hops > MAX_SYMLINK_HOPS {
                        return Err(io::Error::other(format!(
                            "too many levels of symbolic links resolving {}",
                            path.display()
                        )));
                    }
                    let target = std::fs::read_link(self.real(&candidate))?;
                    let mut t = components(&target);
                    t.reverse();
                    pending.extend(t);
                    if target.is_absolute() {
                        resolved.clear();
                    }
                }
                Ok(_) => resolved.push(c),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    resolved.push(c);
                    // The rest cannot contain symlinks that exist.
                    while let Some(rest) = pending.pop() {
                        if rest == ".." {
                            resolved.pop();
                        } else {
                            resolved.push(rest);
                        }
                    }
                }
                Err(e) => return Err(e),
            }
        }
        let mut out = jail;
        out.extend(resolved.iter());
        Ok(out)
    }

    /// `lstat` a host path (no symlink resolution at all). `None` when it does not exist.
    pub fn kind(&self, host: &Path) -> io::Result<Option<Kind>> {
        match std::fs::symlink_metadata(self.real(host)) {
            Ok(m) => Ok(Some(kind_of(&m.file_type()))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The kind of what a host path points to, following symlinks inside the root.
    pub fn kind_followed(&self, host: &Path) -> io::Result<Option<Kind>> {
        let resolved = self.resolve(host)?;
        self.kind(&resolved)
    }

    /// True when the host path exists (following symlinks inside the root).
    pub fn exists(&self, host: &Path) -> bool {
        matches!(self.kind_followed(host), Ok(Some(_)))
    }

    /// The target of a symlink, as written in the link.
    pub fn read_link(&self, host: &Path) -> io::Result<PathBuf> {
        std::fs::read_link(self.real(host))
    }

    /// Read a file, following symlinks inside the host root.
    pub fn read(&self, host: &Path) -> io::Result<Vec<u8>> {
        let resolved = self.resolve(host)?;
        read_no_follow(&self.real(&resolved))
    }

    /// Read a file as UTF-8 text (following symlinks inside the host root).
    pub fn read_to_string(&self, host: &Path) -> io::Result<String> {
        let bytes = self.read(host)?;
        String::from_utf8(bytes).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{} is not valid UTF-8", host.display()),
            )
        })
    }

    /// Read `path` inside the jail `jail` (e.g. a container rootfs): symlinks are resolved with
    /// the jail as their root, so a planted `etc/nixos/configuration.nix -> /etc/shadow` reads
    /// the container's own `/etc/shadow`, never the host's.
    pub fn read_confined(&self, jail: &Path, path: &Path) -> io::Result<Vec<u8>> {
        let resolved = self.resolve_in(jail, path)?;
        read_no_follow(&self.real(&resolved))
    }

    /// List a directory (following symlinks inside the root), sorted by name.
    pub fn read_dir(&self, host: &Path) -> io::Result<Vec<Entry>> {
        let resolved = self.resolve(host)?;
        let mut out = Vec::new();
        for e in std::fs::read_dir(self.real(&resolved))? {
            let e = e?;
            let kind = kind_of(&e.file_type()?);
            out.push(Entry {
                name: e.file_name(),
                kind,
            });
        }
        out.sort_by(|a, b| a.name.as_bytes().cmp(b.name.as_bytes()));
        Ok(out)
    }

    /// Turn the whole host root read-only and `noatime` for this process, in a private mount
    /// namespace, so that nothing we do can change the host (used by `--dry-run`).
    ///
    /// Must be called before the process starts threads. Needs CAP_SYS_ADMIN; returns an error
    /// (and changes nothing) without it, which the caller reports.
    pub fn seal_read_only(&self) -> io::Result<()> {
        enter_private_mount_namespace()?;
        self.read_only_view()
    }

    /// Cover the host root with a read-only, `noatime` view of itself (every submount too).
    /// Needs [`enter_private_mount_namespace`] first; [`HostRoot::end_read_only_view`] lifts it.
    pub fn read_only_view(&self) -> io::Result<()> {
        rustix::mount::mount_bind_recursive(&self.root, &self.root).map_err(io::Error::from)?;
        if let Err(e) = mount_setattr_ro_noatime(&self.root, true) {
            let _ = self.end_read_only_view();
            return Err(e);
        }
        Ok(())
    }

    /// Lift the view of [`HostRoot::read_only_view`]: the real mounts are visible again.
    pub fn end_read_only_view(&self) -> io::Result<()> {
        rustix::mount::unmount(&self.root, rustix::mount::UnmountFlags::DETACH)
            .map_err(io::Error::from)
    }
}

/// Give this process its own mount namespace, with nothing propagating back to the host.
/// Must be called while the process is single-threaded.
pub fn enter_private_mount_namespace() -> io::Result<()> {
    use rustix::mount::MountPropagationFlags;
    // SAFETY: called while the process is single-threaded (see the doc above); only the
    // mount namespace is unshared, which affects nothing else in this process.
    unsafe { rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::NEWNS) }
        .map_err(io::Error::from)?;
    rustix::mount::mount_change(
        "/",
        MountPropagationFlags::PRIVATE | MountPropagationFlags::REC,
    )
    .map_err(io::Error::from)
}

/// Make one directory (a real path) read-only and `noatime` for this process: the legacy state
/// is then protected by the kernel while we copy it, and reading it changes no access time.
/// Submounts are not covered (the copy engine never crosses into them). Call
/// [`enter_private_mount_namespace`] first.
pub fn protect_read_only(real: &Path) -> io::Result<()> {
    rustix::mount::mount_bind(real, real).map_err(io::Error::from)?;
    mount_setattr_ro_noatime(real, false)
}

fn mount_setattr_ro_noatime(path: &Path, recursive: bool) -> io::Result<()> {
    // mount_setattr(2) with AT_RECURSIVE covers every submount (e.g. a separate /var) at once;
    // a plain MS_REMOUNT would only cover the top mount.
    #[repr(C)]
    struct MountAttr {
        attr_set: u64,
        attr_clr: u64,
        propagation: u64,
        userns_fd: u64,
    }
    const MOUNT_ATTR_RDONLY: u64 = 0x1;
    const MOUNT_ATTR_NOATIME: u64 = 0x10;
    const MOUNT_ATTR__ATIME: u64 = 0x70;
    const AT_RECURSIVE: libc::c_uint = 0x8000;
    let attr = MountAttr {
        attr_set: MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOATIME,
        attr_clr: MOUNT_ATTR__ATIME,
        propagation: 0,
        userns_fd: 0,
    };
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))?;
    // SAFETY: a plain syscall with a valid NUL-terminated path and a correctly sized struct.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            libc::AT_FDCWD,
            c_path.as_ptr(),
            if recursive { AT_RECURSIVE } else { 0 },
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Read a regular file (a real path) without following a final symlink, without blocking on a
/// FIFO and, where permitted, without updating its access time.
pub fn read_no_follow(real: &Path) -> io::Result<Vec<u8>> {
    use rustix::fs::{Mode, OFlags};
    use std::io::Read;
    // NONBLOCK: a FIFO planted where a file is expected must not hang the scan.
    let base =
        OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW | OFlags::NOCTTY | OFlags::NONBLOCK;
    let fd = match rustix::fs::open(real, base | OFlags::NOATIME, Mode::empty()) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::PERM) => rustix::fs::open(real, base, Mode::empty())?,
        Err(e) => return Err(e.into()),
    };
    let mut file = std::fs::File::from(fd);
    if !file.metadata()?.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} is not a regular file", real.display()),
        ));
    }
    let mut buf = Vec::new();
    file.read_to_end(&mut buf)?;
    Ok(buf)
}

fn kind_of(ft: &std::fs::FileType) -> Kind {
    if ft.is_symlink() {
        Kind::Symlink
    } else if ft.is_dir() {
        Kind::Dir
    } else if ft.is_file() {
        Kind::File
    } else {
        Kind::Other
    }
}

fn components(p: &Path) -> Vec<OsString> {
    p.components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_os_string()),
            Component::ParentDir => Some(OsString::from("..")),
            _ => None,
        })
        .collect()
}

fn lexical_normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::from("/");
    for c in p.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::ParentDir => {
                out.pop();
            }
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn absolute_symlinks_resolve_inside_the_root() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        std::fs::create_dir_all(r.join("etc/static/nixos-containers")).unwrap();
        std::fs::create_dir_all(r.join("etc/nixos-containers")).unwrap();
        std::fs::write(r.join("etc/static/nixos-containers/web.conf"), "X=1\n").unwrap();
        symlink(
            "/etc/static/nixos-containers/web.conf",
            r.join("etc/nixos-containers/web.conf"),
        )
        .unwrap();
        let h = HostRoot::new(r).unwrap();
        let text = h
            .read_to_string(Path::new("/etc/nixos-containers/web.conf"))
            .unwrap();
        assert_eq!(text, "X=1\n");
        assert_eq!(
            h.resolve(Path::new("/etc/nixos-containers/web.conf"))
                .unwrap(),
            PathBuf::from("/etc/static/nixos-containers/web.conf")
        );
    }

    #[test]
    fn dotdot_and_absolute_links_cannot_leave_a_jail() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        std::fs::create_dir_all(r.join("var/lib/c/etc/nixos")).unwrap();
        std::fs::create_dir_all(r.join("etc")).unwrap();
        std::fs::write(r.join("etc/shadow"), "host secret").unwrap();
        std::fs::write(r.join("var/lib/c/etc/shadow"), "guest file").unwrap();
        symlink("/etc/shadow", r.join("var/lib/c/etc/nixos/a")).unwrap();
        symlink(
            "../../../../../../etc/shadow",
            r.join("var/lib/c/etc/nixos/b"),
        )
        .unwrap();
        let h = HostRoot::new(r).unwrap();
        for l in ["a", "b"] {
            let got = h
                .read_confined(Path::new("/var/lib/c"), &Path::new("/etc/nixos").join(l))
                .unwrap();
            assert_eq!(got, b"guest file", "link {l} escaped the jail");
        }
    }

    #[test]
    fn symlink_loops_are_an_error_not_a_hang() {
        let t = tempfile::tempdir().unwrap();
        symlink("/b", t.path().join("a")).unwrap();
        symlink("/a", t.path().join("b")).unwrap();
        let h = HostRoot::new(t.path()).unwrap();
        assert!(h.read(Path::new("/a")).is_err());
    }
}
