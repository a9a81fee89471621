//! The host root: the one door through which every host path is read or written.
//!
//! Every built-in host path (`/etc/nixos-containers`, `/var/lib/machines`, …) is a *host path*,
//! absolute as seen on the host, and is resolved under `--root DIR` exactly as the kernel would
//! resolve it inside a chroot at DIR: absolute symlinks are re-rooted at DIR and `..` stops at
//! DIR. A declarative `.conf` that points at `/etc/static/…` is read from `DIR/etc/static/…`, an
//! impermanence link `/etc/nixos -> /persist/etc/nixos` leads to `DIR/persist/etc/nixos`, and a
//! planted `DIR/var/lib -> ../../../elsewhere` stays inside DIR. `--root /` uses the same code.
//!
//! How: a descriptor of DIR is opened once, and every open is an `openat2(2)` relative to it
//! with `RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS` (the kernel does the confinement, race-free,
//! also for `/proc/self/fd` tricks). Where a caller needs the host path a link really leads to
//! (to report it honestly, or to refuse a store path before writing), [`HostRoot::resolve`]
//! walks the path one component at a time through directory descriptors (never a string path)
//! with the same rules. Writes create their parent directories one component at a time with
//! `mkdirat`/`openat(O_NOFOLLOW)` under the resolved path and finish with an atomic `renameat`
//! in the parent's descriptor ([`crate::atomic`]). No other code opens a host path by string.
//!
//! Reads inside a container's rootfs are confined to that rootfs ([`HostRoot::read_confined`],
//! [`HostRoot::resolve_in`]): whoever is root in the container controls those symlinks.
//!
//! [`HostRoot::seal_read_only`] makes the whole tree read-only and `noatime` for this process
//! (a private mount namespace), which is how `--dry-run` guarantees that not a byte and not a
//! timestamp changes: even a bug could not write.
//!
//! rustix is used for `openat2` and the `*at` calls: it is already the state engine's syscall
//! layer, it types the `RESOLVE_*` and `O_*` flags, and std has no `openat2` or `*at` API.

use rustix::fs::{self as rfs, AtFlags, FileType, Mode, OFlags, ResolveFlags};
use rustix::io::Errno;
use std::ffi::{CStr, CString, OsStr, OsString};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

/// The longest symlink chain we follow before giving up (the kernel's limit is 40).
const MAX_SYMLINK_HOPS: usize = 40;

/// How every host path is resolved: as inside a chroot at the root, no `/proc` magic links.
const CONFINED: ResolveFlags = ResolveFlags::IN_ROOT.union(ResolveFlags::NO_MAGICLINKS);

#[derive(Clone, Debug)]
pub struct HostRoot {
    root: PathBuf,
    /// `O_PATH` descriptor of `root`; every host path is resolved relative to it.
    fd: Arc<OwnedFd>,
    /// `O_PATH` descriptor of `root` as it was before any read-only view covered it: only for
    /// asking whether a directory could be written ([`HostRoot::dir_writable`]), so that a dry
    /// run can tell, through its own read-only view, what `--yes` would find. Never written
    /// through.
    underlying: Arc<OwnedFd>,
    /// While a read-only view of the running machine's `/` is in effect (see
    /// [`HostRoot::read_only_view`]): the real root and working directory to go back to.
    live_view: Option<Arc<(OwnedFd, OwnedFd)>>,
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

/// What is at a destination before we write it (see [`HostRoot::probe_write`]).
#[derive(Debug)]
pub struct WriteProbe {
    /// The host path the write really lands on (every existing link resolved inside the root).
    pub resolved: PathBuf,
    /// What is there now (`lstat` of the resolved path); `None` when nothing is.
    pub existing: Option<Kind>,
    /// The nearest existing directory at or above the resolved parent (a host path).
    pub nearest_dir: PathBuf,
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
        let fd = open_root_fd(&root)?;
        // Every host path goes through openat2(2) (Linux 5.6): say so once, plainly, instead
        // of "Function not implemented" on the first read.
        if let Err(Errno::NOSYS) = rfs::openat2(
            &fd,
            c".",
            OFlags::PATH | OFlags::CLOEXEC,
            Mode::empty(),
            CONFINED,
        ) {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "this kernel has no openat2(2), which nixos-nspawn needs to keep every path inside the host root; \
                 run it on Linux 5.6 or newer",
            ));
        }
        Ok(HostRoot {
            root,
            underlying: Arc::new(dup(&fd)?),
            fd: Arc::new(fd),
            live_view: None,
        })
    }

    /// The directory the host tree is mounted at.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// True when the host tree is the running system (`--root /`): only then may the live
    /// systemd be asked about, or act on, its containers.
    pub fn is_live(&self) -> bool {
        self.root == Path::new("/")
    }

    /// Open a host path, confined to the root. Without `O_NOFOLLOW` in `flags` a final link is
    /// followed (inside the root too).
    pub fn open(&self, host: &Path, flags: OFlags) -> io::Result<OwnedFd> {
        openat_confined(self.fd.as_fd(), host, flags, Mode::empty())
    }

    /// Resolve every symlink in `host` as the kernel would inside a chroot at the host root.
    /// Returns a host path that contains no symlink up to the first missing component.
    pub fn resolve(&self, host: &Path) -> io::Result<PathBuf> {
        let names = walk(dup(&self.fd)?, host)?;
        let mut out = PathBuf::from("/");
        out.extend(names);
        Ok(out)
    }

    /// Resolve `path` (absolute within the jail) with `jail` (a host path, e.g. a container's
    /// rootfs) as its root: absolute links and `..` never leave the jail. Returns a host path
    /// under `jail` as given.
    pub fn resolve_in(&self, jail: &Path, path: &Path) -> io::Result<PathBuf> {
        let jail = lexical_normalize(jail);
        let jail_fd = self.open(&jail, OFlags::PATH | OFlags::DIRECTORY)?;
        let names = walk(jail_fd, path)?;
        let mut out = jail;
        out.extend(names);
        Ok(out)
    }

    /// The real path (under the root directory) that a host path leads to, for the few APIs
    /// that take paths (the state engine, `statvfs`): every link is resolved inside the root
    /// first, and the result is checked to contain no symlink at all, so the kernel's own path
    /// walk cannot leave the root either.
    pub fn confined_real_path(&self, host: &Path) -> io::Result<PathBuf> {
        let resolved = self.resolve(host)?;
        match openat2_retry(
            self.fd.as_fd(),
            &relative(&resolved)?,
            OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
            CONFINED | ResolveFlags::NO_SYMLINKS,
        ) {
            Ok(_) | Err(Errno::NOENT) => {}
            Err(Errno::LOOP) => {
                return Err(io::Error::other(format!(
                    "{} changed while it was being resolved (a symlink appeared); retry",
                    host.display()
                )));
            }
            Err(e) => return Err(e.into()),
        }
        let mut out = self.root.clone();
        out.extend(
            resolved
                .components()
                .filter(|c| matches!(c, Component::Normal(_))),
        );
        Ok(out)
    }

    /// `lstat` of a host path (links before the last one resolved inside the root). `None`
    /// when it does not exist.
    pub fn kind(&self, host: &Path) -> io::Result<Option<Kind>> {
        match self.open(host, OFlags::PATH | OFlags::NOFOLLOW) {
            Ok(fd) => Ok(Some(kind_of_mode(rfs::fstat(&fd)?.st_mode))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The kind of what a host path points to, following symlinks inside the root.
    pub fn kind_followed(&self, host: &Path) -> io::Result<Option<Kind>> {
        match self.open(host, OFlags::PATH) {
            Ok(fd) => Ok(Some(kind_of_mode(rfs::fstat(&fd)?.st_mode))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Why `host` cannot be read as a file, for a message: "it does not exist", "it is a FIFO
    /// (named pipe), not a regular file", "it is a symlink loop", …
    pub fn why_not_a_file(&self, host: &Path) -> String {
        match self.open(host, OFlags::PATH) {
            Ok(fd) => match rfs::fstat(&fd) {
                Ok(st) => format!(
                    "it is {}, not a regular file",
                    type_name(FileType::from_raw_mode(st.st_mode))
                ),
                Err(e) => format!("it cannot be examined ({e})"),
            },
            Err(e) => why_not_found(&e),
        }
    }

    /// True when the host path exists (following symlinks inside the root).
    pub fn exists(&self, host: &Path) -> bool {
        matches!(self.kind_followed(host), Ok(Some(_)))
    }

    /// The target of a symlink, as written in the link.
    pub fn read_link(&self, host: &Path) -> io::Result<PathBuf> {
        let fd = self.open(host, OFlags::PATH | OFlags::NOFOLLOW)?;
        let t = rfs::readlinkat(&fd, c"", Vec::new())?;
        Ok(PathBuf::from(OsStr::from_bytes(t.as_bytes())))
    }

    /// Read a file, following symlinks inside the host root.
    pub fn read(&self, host: &Path) -> io::Result<Vec<u8>> {
        read_regular(self.fd.as_fd(), host)
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
        let jail_fd = self.open(jail, OFlags::PATH | OFlags::DIRECTORY)?;
        read_regular(jail_fd.as_fd(), path)
    }

    /// List a directory (following symlinks inside the root), sorted by name.
    pub fn read_dir(&self, host: &Path) -> io::Result<Vec<Entry>> {
        let fd = open_noatime(
            self.fd.as_fd(),
            host,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NONBLOCK,
        )?;
        let mut out = Vec::new();
        let mut d = rfs::Dir::read_from(&fd)?;
        while let Some(e) = d.read() {
            let e = e?;
            let name = e.file_name();
            if name == c"." || name == c".." {
                continue;
            }
            let kind = match e.file_type() {
                FileType::Unknown => {
                    kind_of_mode(rfs::statat(&fd, name, AtFlags::SYMLINK_NOFOLLOW)?.st_mode)
                }
                t => kind_of_type(t),
            };
            out.push(Entry {
                name: OsStr::from_bytes(name.to_bytes()).to_os_string(),
                kind,
            });
        }
        out.sort_by(|a, b| a.name.as_bytes().cmp(b.name.as_bytes()));
        Ok(out)
    }

    /// Where a write to `host` lands and what is there now, found without writing anything
    /// (and, under [`HostRoot::read_only_view`], without changing an access time).
    pub fn probe_write(&self, host: &Path) -> io::Result<WriteProbe> {
        let resolved = self.resolve(host)?;
        let existing = self.kind(&resolved)?;
        let mut nearest = resolved.parent().unwrap_or(Path::new("/")).to_path_buf();
        loop {
            match self.kind(&nearest)? {
                Some(Kind::Dir) => break,
                None if nearest.pop() => {}
                None => break,
                Some(_) => {
                    return Err(io::Error::new(
                        io::ErrorKind::NotADirectory,
                        format!(
                            "{} is in the way: it is not a directory, so {} cannot be created",
                            nearest.display(),
                            resolved.display()
                        ),
                    ));
                }
            }
        }
        Ok(WriteProbe {
            resolved,
            existing,
            nearest_dir: nearest,
        })
    }

    /// Whether this process may create entries in the directory `host` (`Err` on a read-only
    /// filesystem or without permission), and the bytes available to us on its filesystem.
    /// Asked of the tree as mounted, not of our own read-only view of it.
    pub fn dir_writable(&self, host: &Path) -> io::Result<(io::Result<()>, u64)> {
        let dir = openat_confined(
            self.underlying.as_fd(),
            host,
            OFlags::RDONLY | OFlags::DIRECTORY,
            Mode::empty(),
        )?;
        let writable = rfs::accessat(
            &dir,
            c".",
            rfs::Access::WRITE_OK | rfs::Access::EXEC_OK,
            AtFlags::empty(),
        )
        .map_err(io::Error::from);
        let v = rfs::fstatvfs(&dir)?;
        Ok((writable, v.f_bavail.saturating_mul(v.f_frsize)))
    }

    /// Create a directory and its missing parents (mode `mode`), one component at a time
    /// under the resolved path, never through a symlink. Returns the directory's descriptor and
    /// the host path it really is.
    pub fn create_dir_all(&self, host: &Path, mode: u32) -> io::Result<(OwnedFd, PathBuf)> {
        let resolved = self.resolve(host)?;
        let mut dir = dup(&self.fd)?;
        let mut sofar = PathBuf::from("/");
        for c in resolved.components() {
            let Component::Normal(n) = c else { continue };
            sofar.push(n);
            let cname = cstr(n)?;
            let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
            dir = match rfs::openat(&dir, &cname, flags, Mode::empty()) {
                Ok(fd) => fd,
                Err(Errno::NOENT) => {
                    match rfs::mkdirat(&dir, &cname, Mode::from_raw_mode(mode)) {
                        Ok(()) | Err(Errno::EXIST) => {}
                        Err(e) => {
                            return Err(io::Error::new(
                                io::Error::from(e).kind(),
                                format!("cannot create the directory {}: {e}", sofar.display()),
                            ));
                        }
                    }
                    rfs::openat(&dir, &cname, flags, Mode::empty())?
                }
                Err(Errno::NOTDIR | Errno::LOOP) => {
                    return Err(io::Error::new(
                        io::ErrorKind::NotADirectory,
                        format!(
                            "{} is not a directory (it is a file, or a symlink that appeared while it was being resolved)",
                            sofar.display()
                        ),
                    ));
                }
                Err(e) => return Err(e.into()),
            };
        }
        let dir = rfs::openat(
            &dir,
            c".",
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        Ok((dir, resolved))
    }

    /// Write a file atomically (see [`crate::atomic`]); missing parents are created `0755`.
    /// Returns what happened and the host path really written (links resolved in the root).
    pub fn write_atomic(
        &self,
        host: &Path,
        bytes: &[u8],
        mode: u32,
    ) -> io::Result<(crate::atomic::Written, PathBuf)> {
        let resolved = self.resolve(host)?;
        let (parent, name) = split(&resolved)?;
        let (dir, _) = self.create_dir_all(&parent, 0o755)?;
        let w = crate::atomic::write_atomic_at(dir.as_fd(), &name, &resolved, bytes, mode)?;
        Ok((w, resolved))
    }

    /// Keep the file at `host` (not following a final link) under a new name next to it,
    /// `NAME.bak-SUFFIX`, as a hard link: the original inode stays intact whatever replaces
    /// `NAME` afterwards. Returns the backup's host path.
    pub fn backup(&self, host: &Path, suffix: &str) -> io::Result<PathBuf> {
        let resolved = self.resolve(host)?;
        let (parent, name) = split(&resolved)?;
        let dir = self.open(
            &parent,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW,
        )?;
        let mut bak = name.as_bytes().to_vec();
        bak.extend_from_slice(format!(".bak-{suffix}").as_bytes());
        let bak = CString::new(bak)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))?;
        rfs::linkat(&dir, &name, &dir, &bak, AtFlags::empty())?;
        rfs::fsync(&dir)?;
        Ok(parent.join(OsStr::from_bytes(bak.as_bytes())))
    }

    /// [`HostRoot::backup`] under `NAME.bak-STAMP`, or `-2`, `-3`, … (up to 99) when a backup
    /// of the same stamp is already there (two backups of one file in the same second).
    pub fn backup_fresh(&self, host: &Path, stamp: &str) -> io::Result<PathBuf> {
        let mut n = 1;
        loop {
            let suffix = if n == 1 {
                stamp.to_string()
            } else {
                format!("{stamp}-{n}")
            };
            match self.backup(host, &suffix) {
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && n < 100 => n += 1,
                r => return r,
            }
        }
    }

    /// Rename `from` to `to` (both host paths, final links not followed), atomically.
    pub fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let (fp, fname) = split(&self.resolve_parent(from)?)?;
        let (tp, tname) = split(&self.resolve_parent(to)?)?;
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW;
        let fd = self.open(&fp, flags)?;
        let td = self.open(&tp, flags)?;
        rfs::renameat(&fd, &fname, &td, &tname)?;
        rfs::fsync(&td)?;
        Ok(())
    }

    /// Remove a file or symlink (a final link is removed, not followed).
    pub fn remove_file(&self, host: &Path) -> io::Result<()> {
        let (p, name) = split(&self.resolve_parent(host)?)?;
        let d = self.open(&p, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW)?;
        rfs::unlinkat(&d, &name, AtFlags::empty())?;
        Ok(())
    }

    /// `host` with its parent resolved and its last component kept as it is.
    fn resolve_parent(&self, host: &Path) -> io::Result<PathBuf> {
        let host = lexical_normalize(host);
        let name = host.file_name().ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} has no file name", host.display()),
            )
        })?;
        Ok(self
            .resolve(host.parent().unwrap_or(Path::new("/")))?
            .join(name))
    }

    /// Make one host directory read-only and `noatime` for this process: the legacy state is
    /// then protected by the kernel while we copy it, and reading it changes no access time.
    /// Done on descriptors (`open_tree` + `mount_setattr` + `move_mount`), so the mount lands
    /// on the directory the path resolves to inside the root. Submounts are not covered (the
    /// copy engine never crosses into them). Call [`enter_private_mount_namespace`] first.
    pub fn protect_read_only(&self, host: &Path) -> io::Result<()> {
        use rustix::mount::{MoveMountFlags, OpenTreeFlags};
        let target = self.open(host, OFlags::PATH | OFlags::DIRECTORY)?;
        let tree = rustix::mount::open_tree(
            &target,
            c"",
            OpenTreeFlags::OPEN_TREE_CLONE
                | OpenTreeFlags::OPEN_TREE_CLOEXEC
                | OpenTreeFlags::AT_EMPTY_PATH,
        )?;
        mount_setattr_ro_noatime(Some(tree.as_fd()), c"", false)?;
        rustix::mount::move_mount(
            &tree,
            c"",
            &target,
            c"",
            MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH | MoveMountFlags::MOVE_MOUNT_T_EMPTY_PATH,
        )?;
        Ok(())
    }

    /// Turn the whole host root read-only and `noatime` for this process, in a private mount
    /// namespace, so that nothing we do can change the host (used by `--dry-run`).
    ///
    /// Must be called before the process starts threads. Needs CAP_SYS_ADMIN; returns an error
    /// (and changes nothing) without it, which the caller reports.
    pub fn seal_read_only(&mut self) -> io::Result<()> {
        enter_private_mount_namespace()?;
        self.read_only_view()
    }

    /// Cover the host root with a read-only, `noatime` view of itself (every submount too).
    /// Needs [`enter_private_mount_namespace`] first; [`HostRoot::end_read_only_view`] lifts it.
    pub fn read_only_view(&mut self) -> io::Result<()> {
        if self.root == Path::new("/") {
            return self.live_read_only_view();
        }
        rustix::mount::mount_bind_recursive(&self.root, &self.root).map_err(io::Error::from)?;
        let c_root = cstr(self.root.as_os_str())?;
        if let Err(e) = mount_setattr_ro_noatime(None, &c_root, true) {
            let _ = self.end_read_only_view();
            return Err(e);
        }
        // The old descriptor still shows the mount underneath; look through the view.
        self.fd = Arc::new(open_root_fd(&self.root)?);
        Ok(())
    }

    /// The read-only view of the running machine's `/`. A mount over `/` is not what this
    /// process sees (its root stays the mount underneath: the view would cover nothing, and
    /// lifting it would leave the real `/` read-only for the rest of the run). Instead a
    /// detached, read-only, `noatime` clone of the whole tree (every submount) becomes this
    /// process's root while the view lasts; the real root is kept open to go back to.
    fn live_read_only_view(&mut self) -> io::Result<()> {
        use rustix::mount::OpenTreeFlags;
        let dir = OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC;
        let old_root = rfs::open("/", dir, Mode::empty())?;
        let old_cwd = rfs::open(".", dir, Mode::empty())?;
        let tree = rustix::mount::open_tree(
            rfs::CWD,
            c"/",
            OpenTreeFlags::OPEN_TREE_CLONE
                | OpenTreeFlags::OPEN_TREE_CLOEXEC
                | OpenTreeFlags::AT_RECURSIVE,
        )?;
        mount_setattr_ro_noatime(Some(tree.as_fd()), c"", true)?;
        rustix::process::fchdir(&tree)?;
        if let Err(e) = rustix::process::chroot(".") {
            let _ = rustix::process::fchdir(&old_cwd);
            return Err(e.into());
        }
        // The working directory stays the view's `/` (the real one is outside the view; every
        // path given on the command line was made absolute before).
        self.live_view = Some(Arc::new((old_root, old_cwd)));
        self.fd = Arc::new(open_root_fd(&self.root)?);
        Ok(())
    }

    /// Lift the view of [`HostRoot::read_only_view`]: the real mounts are visible again.
    pub fn end_read_only_view(&mut self) -> io::Result<()> {
        if let Some(v) = self.live_view.take() {
            rustix::process::fchdir(&v.0)?;
            rustix::process::chroot(".")?;
            rustix::process::fchdir(&v.1)?;
            self.fd = Arc::new(open_root_fd(&self.root)?);
            return Ok(());
        }
        rustix::mount::unmount(&self.root, rustix::mount::UnmountFlags::DETACH)
            .map_err(io::Error::from)?;
        self.fd = Arc::new(open_root_fd(&self.root)?);
        Ok(())
    }
}

fn open_root_fd(root: &Path) -> io::Result<OwnedFd> {
    rfs::open(
        root,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| {
        io::Error::new(
            io::Error::from(e).kind(),
            format!("cannot open {}: {e}", root.display()),
        )
    })
}

fn dup(fd: &OwnedFd) -> io::Result<OwnedFd> {
    fd.try_clone()
}

fn cstr(s: &OsStr) -> io::Result<CString> {
    CString::new(s.as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))
}

/// `host` as a path relative to the root (`.` for the root itself), `..` kept for the kernel
/// to clamp.
fn relative(host: &Path) -> io::Result<CString> {
    let mut out: Vec<u8> = Vec::new();
    for c in components(host) {
        if !out.is_empty() {
            out.push(b'/');
        }
        out.extend_from_slice(c.as_bytes());
    }
    if out.is_empty() {
        out.push(b'.');
    }
    CString::new(out)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))
}

/// Split a resolved host path into its parent and its last component.
fn split(resolved: &Path) -> io::Result<(PathBuf, CString)> {
    let name = resolved.file_name().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} does not name a file", resolved.display()),
        )
    })?;
    Ok((
        resolved.parent().unwrap_or(Path::new("/")).to_path_buf(),
        cstr(name)?,
    ))
}

fn openat2_retry(
    dir: BorrowedFd<'_>,
    path: &CStr,
    flags: OFlags,
    mode: Mode,
    resolve: ResolveFlags,
) -> Result<OwnedFd, Errno> {
    // RESOLVE_IN_ROOT answers EAGAIN when a rename raced with a `..` step; retrying is what
    // the kernel asks for.
    let mut tries = 0;
    loop {
        match rfs::openat2(dir, path, flags, mode, resolve) {
            Err(Errno::AGAIN) if tries < 16 => tries += 1,
            r => return r,
        }
    }
}

fn openat_confined(
    dir: BorrowedFd<'_>,
    path: &Path,
    flags: OFlags,
    mode: Mode,
) -> io::Result<OwnedFd> {
    openat2_retry(
        dir,
        &relative(path)?,
        flags | OFlags::CLOEXEC,
        mode,
        CONFINED,
    )
    .map_err(io::Error::from)
}

/// Open for reading without updating the access time where the kernel allows it.
fn open_noatime(dir: BorrowedFd<'_>, path: &Path, flags: OFlags) -> io::Result<OwnedFd> {
    match openat_confined(
        dir,
        path,
        flags | OFlags::NOATIME | OFlags::NOCTTY,
        Mode::empty(),
    ) {
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
            openat_confined(dir, path, flags | OFlags::NOCTTY, Mode::empty())
        }
        r => r,
    }
}

/// Read a regular file at `path` below `dir` (confined to `dir`). Anything else (a FIFO, a
/// device, a directory) is refused by its kind before it is opened for reading, so a planted
/// FIFO cannot block and a device is never opened.
fn read_regular(dir: BorrowedFd<'_>, path: &Path) -> io::Result<Vec<u8>> {
    use std::io::Read;
    let probe = openat_confined(dir, path, OFlags::PATH, Mode::empty())?;
    let st = rfs::fstat(&probe)?;
    let kind = FileType::from_raw_mode(st.st_mode);
    if kind != FileType::RegularFile {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("it is {}, not a regular file", type_name(kind)),
        ));
    }
    let fd = open_noatime(dir, path, OFlags::RDONLY | OFlags::NONBLOCK)?;
    let st2 = rfs::fstat(&fd)?;
    if (st2.st_dev, st2.st_ino) != (st.st_dev, st.st_ino) {
        return Err(io::Error::other(
            "it was replaced while it was being opened; retry",
        ));
    }
    let mut buf = Vec::new();
    std::fs::File::from(fd).read_to_end(&mut buf)?;
    Ok(buf)
}

/// Walk `path` below the directory `jail` one component at a time, through descriptors,
/// resolving links with `jail` as their root. Returns the names of the resolved path.
fn walk(jail: OwnedFd, path: &Path) -> io::Result<Vec<OsString>> {
    let mut pending: Vec<OsString> = components(path);
    pending.reverse();
    let mut dirs: Vec<OwnedFd> = vec![jail];
    let mut names: Vec<OsString> = Vec::new();
    let mut hops = 0usize;
    while let Some(c) = pending.pop() {
        if c == ".." {
            if names.pop().is_some() {
                dirs.pop();
            }
            continue;
        }
        let Some(top) = dirs.last() else { break };
        let cname = cstr(&c)?;
        match rfs::statat(top, &cname, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => match FileType::from_raw_mode(st.st_mode) {
                FileType::Symlink => {
                    hops += 1;
                    if hops > MAX_SYMLINK_HOPS {
                        return Err(io::Error::other(format!(
                            "too many levels of symbolic links resolving {} (a link loop)",
                            path.display()
                        )));
                    }
                    let target = rfs::readlinkat(top, &cname, Vec::new())?;
                    let target = Path::new(OsStr::from_bytes(target.as_bytes()));
                    let mut t = components(target);
                    t.reverse();
                    pending.extend(t);
                    if target.is_absolute() {
                        names.clear();
                        dirs.truncate(1);
                    }
                }
                FileType::Directory => {
                    let fd = rfs::openat(
                        top,
                        &cname,
                        OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                        Mode::empty(),
                    )?;
                    dirs.push(fd);
                    names.push(c);
                }
                _ => {
                    names.push(c);
                    if !pending.is_empty() {
                        let mut so_far = PathBuf::from("/");
                        so_far.extend(&names);
                        return Err(io::Error::new(
                            io::ErrorKind::NotADirectory,
                            format!("{} is not a directory", so_far.display()),
                        ));
                    }
                }
            },
            Err(Errno::NOENT) => {
                names.push(c);
                // The rest cannot contain symlinks that exist.
                while let Some(rest) = pending.pop() {
                    if rest == ".." {
                        names.pop();
                    } else {
                        names.push(rest);
                    }
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(names)
}

fn kind_of_mode(mode: u32) -> Kind {
    kind_of_type(FileType::from_raw_mode(mode))
}

fn kind_of_type(t: FileType) -> Kind {
    match t {
        FileType::Symlink => Kind::Symlink,
        FileType::Directory => Kind::Dir,
        FileType::RegularFile => Kind::File,
        _ => Kind::Other,
    }
}

/// The reason an open failed, for a message about a file that was expected.
pub fn why_not_found(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::ENOENT) => "it does not exist".to_string(),
        Some(libc::ELOOP) => "it is a symlink loop (too many levels of symbolic links)".to_string(),
        Some(libc::ENOTDIR) => "it does not exist (a directory on its path is a file)".to_string(),
        _ => format!("it cannot be opened ({e})"),
    }
}

/// "a FIFO", "a directory", …: for messages about what was found where a file was expected.
pub fn type_name(t: FileType) -> &'static str {
    match t {
        FileType::RegularFile => "a regular file",
        FileType::Directory => "a directory",
        FileType::Symlink => "a symlink",
        FileType::Fifo => "a FIFO (named pipe)",
        FileType::Socket => "a socket",
        FileType::CharacterDevice => "a character device",
        FileType::BlockDevice => "a block device",
        FileType::Unknown => "of an unknown type",
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

/// `mount_setattr(2)` read-only + noatime on `path` (relative to `dir`; `None` is the current
/// directory; an empty path with `Some(dir)` means the mount `dir` itself).
fn mount_setattr_ro_noatime(
    dir: Option<BorrowedFd<'_>>,
    path: &CStr,
    recursive: bool,
) -> io::Result<()> {
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
    const AT_EMPTY_PATH: libc::c_uint = 0x1000;
    let attr = MountAttr {
        attr_set: MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOATIME,
        attr_clr: MOUNT_ATTR__ATIME,
        propagation: 0,
        userns_fd: 0,
    };
    use std::os::fd::AsRawFd;
    let dirfd = dir.map_or(libc::AT_FDCWD, |d| d.as_raw_fd());
    let mut flags = if recursive { AT_RECURSIVE } else { 0 };
    if path.is_empty() {
        flags |= AT_EMPTY_PATH;
    }
    // SAFETY: a plain syscall with a valid descriptor, a NUL-terminated path and a correctly
    // sized struct.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            dirfd,
            path.as_ptr(),
            flags,
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

    /// Writes through links (absolute and `../`) land inside the root, parents are made
    /// inside the root, and the canary outside is never touched.
    #[test]
    fn writes_through_links_stay_inside_the_root() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path().join("root");
        let canary = t.path().join("canary");
        std::fs::create_dir_all(r.join("etc")).unwrap();
        std::fs::create_dir_all(&canary).unwrap();
        symlink(&canary, r.join("etc/abs")).unwrap();
        symlink("../../../../../../../../..", r.join("etc/rel")).unwrap();
        let h = HostRoot::new(&r).unwrap();
        let (w, at) = h
            .write_atomic(Path::new("/etc/abs/sub/a.nix"), b"a", 0o644)
            .unwrap();
        assert_eq!(w, crate::atomic::Written::Changed);
        assert_eq!(
            at,
            canary
                .strip_prefix("/")
                .map(|p| Path::new("/").join(p).join("sub/a.nix"))
                .unwrap()
        );
        let (_, at) = h
            .write_atomic(Path::new("/etc/rel/b.nix"), b"b", 0o644)
            .unwrap();
        assert_eq!(at, PathBuf::from("/b.nix"));
        assert_eq!(std::fs::read(r.join("b.nix")).unwrap(), b"b");
        assert_eq!(
            std::fs::read(r.join(canary.strip_prefix("/").unwrap()).join("sub/a.nix")).unwrap(),
            b"a"
        );
        assert_eq!(
            std::fs::read_dir(&canary).unwrap().count(),
            0,
            "the canary was written"
        );
        // Backups are hard links next to the file; remove and rename stay inside too.
        let bak = h.backup(Path::new("/etc/rel/b.nix"), "1").unwrap();
        assert_eq!(bak, PathBuf::from("/b.nix.bak-1"));
        h.rename(Path::new("/b.nix.bak-1"), Path::new("/etc/rel/c.nix"))
            .unwrap();
        assert_eq!(std::fs::read(r.join("c.nix")).unwrap(), b"b");
        h.remove_file(Path::new("/etc/rel/c.nix")).unwrap();
        assert!(!r.join("c.nix").exists());
    }

    /// Something that is not a regular file is named by its kind, and never opened for
    /// reading (a FIFO would block).
    #[test]
    fn non_files_are_refused_by_kind() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            r.join("fifo"),
            FileType::Fifo,
            Mode::from_raw_mode(0o644),
            0,
        )
        .unwrap();
        std::fs::create_dir(r.join("dir")).unwrap();
        symlink("loop", r.join("loop")).unwrap();
        let h = HostRoot::new(r).unwrap();
        let e = h.read(Path::new("/fifo")).unwrap_err();
        assert!(
            e.to_string()
                .contains("a FIFO (named pipe), not a regular file"),
            "{e}"
        );
        let e = h.read(Path::new("/dir")).unwrap_err();
        assert!(e.to_string().contains("a directory"), "{e}");
        assert!(
            h.why_not_a_file(Path::new("/loop"))
                .contains("symlink loop")
        );
        assert!(
            h.why_not_a_file(Path::new("/nope"))
                .contains("does not exist")
        );
    }

    #[test]
    fn confined_real_paths_hold_no_symlink() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        std::fs::create_dir_all(r.join("persist/etc/nixos")).unwrap();
        std::fs::create_dir_all(r.join("etc")).unwrap();
        symlink("/persist/etc/nixos", r.join("etc/nixos")).unwrap();
        let h = HostRoot::new(r).unwrap();
        assert_eq!(
            h.confined_real_path(Path::new("/etc/nixos/x.nix")).unwrap(),
            h.root().join("persist/etc/nixos/x.nix")
        );
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
