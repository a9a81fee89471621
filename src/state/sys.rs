//! Thin, fd-relative system-call helpers shared by the copy, verify and space walkers.
//!
//! Everything here works on a directory fd plus ONE name component (never a path with `/`),
//! opened with `O_NOFOLLOW`, so a symlink planted in a container's rootfs is never followed.
//! Entries that cannot be opened safely (symlinks, fifos, sockets, devices) are reached through
//! `/proc/self/fd/<dirfd>/<name>` with the non-following `l*xattr` calls: the magic link pins the
//! directory we already hold, and the last component is not followed.

use std::ffi::{CStr, CString, OsStr};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use rustix::fs::{
    self as rfs, AtFlags, FileType, Mode, OFlags, ResolveFlags, Stat, Statx, StatxAttributes,
    StatxFlags, Timespec, Timestamps,
};
use rustix::io::Errno;

/// The part of `struct stat` the engine needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Meta {
    pub dev: u64,
    pub ino: u64,
    pub mode: u32,
    pub nlink: u64,
    pub uid: u32,
    pub gid: u32,
    pub rdev: u64,
    pub size: u64,
    pub blocks: u64,
    pub atime: (i64, u32),
    pub mtime: (i64, u32),
    /// The entry is the root of a mount (also a bind mount from the same filesystem, which
    /// `dev` cannot tell). From `statx` (Linux ≥ 5.8); false when the kernel does not say.
    pub mount_root: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Dir,
    File,
    Symlink,
    Fifo,
    Socket,
    Char,
    Block,
    Unknown,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Dir => "directory",
            Kind::File => "regular file",
            Kind::Symlink => "symlink",
            Kind::Fifo => "fifo",
            Kind::Socket => "socket",
            Kind::Char => "character device",
            Kind::Block => "block device",
            Kind::Unknown => "unknown file type",
        }
    }
}

impl Meta {
    pub fn from_statx(s: &Statx) -> Meta {
        let ts = |t: &rfs::StatxTimestamp| (t.tv_sec, t.tv_nsec.min(999_999_999));
        Meta {
            dev: rfs::makedev(s.stx_dev_major, s.stx_dev_minor),
            ino: s.stx_ino,
            mode: u32::from(s.stx_mode),
            nlink: u64::from(s.stx_nlink),
            uid: s.stx_uid,
            gid: s.stx_gid,
            rdev: rfs::makedev(s.stx_rdev_major, s.stx_rdev_minor),
            size: s.stx_size,
            blocks: s.stx_blocks,
            atime: ts(&s.stx_atime),
            mtime: ts(&s.stx_mtime),
            mount_root: s.stx_attributes_mask.contains(StatxAttributes::MOUNT_ROOT)
                && s.stx_attributes.contains(StatxAttributes::MOUNT_ROOT),
        }
    }

    pub fn from_stat(s: &Stat) -> Meta {
        Meta {
            dev: s.st_dev,
            ino: s.st_ino,
            mode: s.st_mode,
            nlink: s.st_nlink,
            uid: s.st_uid,
            gid: s.st_gid,
            rdev: s.st_rdev,
            size: u64::try_from(s.st_size).unwrap_or(0),
            blocks: u64::try_from(s.st_blocks).unwrap_or(0),
            atime: (s.st_atime, clamp_nsec(s.st_atime_nsec)),
            mtime: (s.st_mtime, clamp_nsec(s.st_mtime_nsec)),
            mount_root: false,
        }
    }

    pub fn kind(&self) -> Kind {
        match FileType::from_raw_mode(self.mode) {
            FileType::Directory => Kind::Dir,
            FileType::RegularFile => Kind::File,
            FileType::Symlink => Kind::Symlink,
            FileType::Fifo => Kind::Fifo,
            FileType::Socket => Kind::Socket,
            FileType::CharacterDevice => Kind::Char,
            FileType::BlockDevice => Kind::Block,
            _ => Kind::Unknown,
        }
    }

    /// Permission bits including setuid/setgid/sticky.
    pub fn perm(&self) -> u32 {
        self.mode & 0o7777
    }

    pub fn timestamps(&self) -> Timestamps {
        Timestamps {
            last_access: Timespec {
                tv_sec: self.atime.0,
                tv_nsec: i64::from(self.atime.1),
            },
            last_modification: Timespec {
                tv_sec: self.mtime.0,
                tv_nsec: i64::from(self.mtime.1),
            },
        }
    }

    /// Bytes this entry occupies on disk.
    pub fn allocated(&self) -> u64 {
        self.blocks.saturating_mul(512)
    }
}

fn clamp_nsec<T: TryInto<u32>>(n: T) -> u32 {
    n.try_into().unwrap_or(0).min(999_999_999)
}

const STATX_MASK: StatxFlags = StatxFlags::BASIC_STATS;

/// `lstat` through `statx`, to learn about mount roots too; plain `fstatat` on kernels
/// without `statx`.
pub(crate) fn lstat_at(dir: BorrowedFd<'_>, name: &CStr) -> Result<Meta, Errno> {
    match rfs::statx(dir, name, AtFlags::SYMLINK_NOFOLLOW, STATX_MASK) {
        Ok(s) => Ok(Meta::from_statx(&s)),
        Err(Errno::NOSYS) => {
            rfs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW).map(|s| Meta::from_stat(&s))
        }
        Err(e) => Err(e),
    }
}

pub(crate) fn fstat(fd: BorrowedFd<'_>) -> Result<Meta, Errno> {
    match rfs::statx(fd, c"", AtFlags::EMPTY_PATH, STATX_MASK) {
        Ok(s) => Ok(Meta::from_statx(&s)),
        Err(Errno::NOSYS) => rfs::fstat(fd).map(|s| Meta::from_stat(&s)),
        Err(e) => Err(e),
    }
}

/// Flags for reading: never follow, never block on a fifo swapped in, never update atime.
fn read_flags() -> OFlags {
    OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NOCTTY | OFlags::NONBLOCK
}

/// Open a source entry for reading without following a symlink and without touching its atime
/// (`O_NOATIME` is retried without when the kernel refuses it, e.g. on a foreign-owned file
/// without CAP_FOWNER).
pub(crate) fn open_read(
    dir: BorrowedFd<'_>,
    name: &CStr,
    directory: bool,
) -> Result<OwnedFd, Errno> {
    let mut flags = read_flags();
    if directory {
        flags |= OFlags::DIRECTORY;
    }
    match rfs::openat(dir, name, flags | OFlags::NOATIME, Mode::empty()) {
        Err(Errno::PERM) => rfs::openat(dir, name, flags, Mode::empty()),
        r => r,
    }
}

/// Open a directory given as a full path that the caller resolved inside the host root (see
/// `host.rs`). No component may be a symlink (`RESOLVE_NO_SYMLINKS`): a link swapped into the
/// path after the caller resolved it makes the open fail (`ELOOP`) instead of leading out of
/// the root.
pub(crate) fn open_dir_path(path: &Path) -> Result<OwnedFd, Errno> {
    let flags = read_flags() | OFlags::DIRECTORY;
    let resolve = ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS;
    match rfs::openat2(
        rfs::CWD,
        path,
        flags | OFlags::NOATIME,
        Mode::empty(),
        resolve,
    ) {
        Err(Errno::PERM) => rfs::openat2(rfs::CWD, path, flags, Mode::empty(), resolve),
        r => r,
    }
}

/// [`open_dir_path`] with errors for a user: a symlink or a non-directory is named as such.
pub(crate) fn open_root(path: &Path) -> Result<OwnedFd, super::StateError> {
    open_dir_path(path).map_err(|e| match e {
        Errno::NOTDIR | Errno::LOOP => match rfs::statat(rfs::CWD, path, AtFlags::SYMLINK_NOFOLLOW)
        {
            Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Symlink => {
                super::StateError::invalid(
                    path,
                    "is a symlink; the state engine never follows symlinks, pass the real path",
                )
            }
            Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Directory => {
                super::StateError::invalid(
                    path,
                    "has a symlink among its parent directories (it changed after the path was \
                     resolved); nothing was copied: run the command again",
                )
            }
            _ => super::StateError::invalid(path, "is not a directory"),
        },
        e => super::StateError::io("open", path, e),
    })
}

/// Open a directory we created (in the staging tree) for writing metadata.
pub(crate) fn open_dest_dir(dir: BorrowedFd<'_>, name: &CStr) -> Result<OwnedFd, Errno> {
    rfs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NOATIME,
        Mode::empty(),
    )
}

/// Create a new regular file; fails if anything (also a symlink) exists under `name`.
pub(crate) fn create_file(dir: BorrowedFd<'_>, name: &CStr, mode: u32) -> Result<OwnedFd, Errno> {
    rfs::openat(
        dir,
        name,
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(mode),
    )
}

/// The process umask, read without changing it (`/proc/self/status`, Linux ≥ 4.7).
pub(crate) fn umask() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("Umask:"))?;
    u32::from_str_radix(line.trim_start_matches("Umask:").trim(), 8).ok()
}

/// `/proc/self/fd/<dirfd>/<name>`: a path for the `l*` calls that pins `dir`.
pub(crate) fn proc_path(dir: BorrowedFd<'_>, name: &CStr) -> CString {
    let mut v = format!("/proc/self/fd/{}/", dir.as_raw_fd()).into_bytes();
    v.extend_from_slice(name.to_bytes());
    // `name` came from a CStr, so it has no interior NUL.
    CString::new(v).unwrap_or_default()
}

pub(crate) fn os(name: &CStr) -> &OsStr {
    OsStr::from_bytes(name.to_bytes())
}

/// Extended attributes, sorted by name.
pub(crate) type Xattrs = Vec<(CString, Vec<u8>)>;

/// Where to read or write xattrs: an open fd, or a `/proc/self/fd/…/name` path used with `l*`.
pub(crate) enum XTarget<'a> {
    Fd(BorrowedFd<'a>),
    Path(&'a CStr),
}

fn is_unsupported(e: Errno) -> bool {
    matches!(e, Errno::OPNOTSUPP)
}

fn list_raw(t: &XTarget<'_>, buf: &mut Vec<u8>) -> Result<usize, Errno> {
    loop {
        let r = match t {
            XTarget::Fd(fd) => rfs::flistxattr(fd, &mut buf[..]),
            XTarget::Path(p) => rfs::llistxattr(*p, &mut buf[..]),
        };
        match r {
            Err(Errno::RANGE) => {
                let need = match t {
                    XTarget::Fd(fd) => rfs::flistxattr_query(fd)?,
                    XTarget::Path(p) => rfs::llistxattr_query(*p)?,
                };
                buf.resize(need.max(buf.len() * 2), 0);
            }
            r => return r,
        }
    }
}

/// Read all xattrs. A filesystem without xattr support gives an empty list.
pub(crate) fn get_xattrs(t: XTarget<'_>) -> Result<Xattrs, Errno> {
    let mut names = vec![0u8; 256];
    let n = match list_raw(&t, &mut names) {
        Ok(n) => n,
        Err(e) if is_unsupported(e) => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    if n == 0 {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for raw in names[..n].split(|b| *b == 0).filter(|s| !s.is_empty()) {
        let Ok(name) = CString::new(raw) else {
            continue;
        };
        let mut val = vec![0u8; 256];
        loop {
            let r = match &t {
                XTarget::Fd(fd) => rfs::fgetxattr(fd, name.as_c_str(), &mut val[..]),
                XTarget::Path(p) => rfs::lgetxattr(*p, name.as_c_str(), &mut val[..]),
            };
            match r {
                Ok(len) => {
                    val.truncate(len);
                    out.push((name, val));
                    break;
                }
                Err(Errno::RANGE) => {
                    let need = match &t {
                        XTarget::Fd(fd) => rfs::fgetxattr_query(fd, name.as_c_str())?,
                        XTarget::Path(p) => rfs::lgetxattr_query(*p, name.as_c_str())?,
                    };
                    val.resize(need.max(val.len() * 2), 0);
                }
                // Removed between list and get.
                Err(Errno::NODATA) => break,
                Err(e) => return Err(e),
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Set `want` on the target; when `prune` is set, also remove attributes the target has that
/// `want` lacks (a default ACL inherited from a parent directory finished by an earlier run).
pub(crate) fn set_xattrs(
    t: XTarget<'_>,
    want: &Xattrs,
    prune: bool,
) -> Result<(), (Errno, String)> {
    if prune {
        let have = get_xattrs(match &t {
            XTarget::Fd(fd) => XTarget::Fd(*fd),
            XTarget::Path(p) => XTarget::Path(p),
        })
        .map_err(|e| (e, "list extended attributes of".to_string()))?;
        for (name, _) in have {
            if want.iter().all(|(n, _)| *n != name) {
                let r = match &t {
                    XTarget::Fd(fd) => rfs::fremovexattr(fd, name.as_c_str()),
                    XTarget::Path(p) => rfs::lremovexattr(*p, name.as_c_str()),
                };
                match r {
                    Ok(()) | Err(Errno::NODATA) => {}
                    Err(e) => {
                        return Err((
                            e,
                            format!("remove extended attribute {} from", name.to_string_lossy()),
                        ));
                    }
                }
            }
        }
    }
    for (name, value) in want {
        let r = match &t {
            XTarget::Fd(fd) => rfs::fsetxattr(fd, name.as_c_str(), value, rfs::XattrFlags::empty()),
            XTarget::Path(p) => {
                rfs::lsetxattr(*p, name.as_c_str(), value, rfs::XattrFlags::empty())
            }
        };
        r.map_err(|e| {
            (
                e,
                format!("set extended attribute {} on", name.to_string_lossy()),
            )
        })?;
    }
    Ok(())
}

/// Read a symlink's target (raw bytes, never resolved).
pub(crate) fn readlink(dir: BorrowedFd<'_>, name: &CStr) -> Result<CString, Errno> {
    rfs::readlinkat(dir, name, Vec::new())
}

/// Remove `name` in `dir` whatever it is; directories recursively, without following symlinks,
/// holding two descriptors whatever the depth (the way back up is `..`, checked against the
/// directory we came from). Immutable and append-only flags on the way (set by a copy that
/// was interrupted, or by a finished one being replaced) are cleared first, and so is the
/// read-only property of btrfs subvolumes (an emptied subvolume is removed by `rmdir`). Only ever called on
/// our own staging tree.
pub(crate) fn remove_all_at(dir: BorrowedFd<'_>, name: &CStr) -> Result<(), Errno> {
    match unlink_thawing(dir, name) {
        Ok(()) | Err(Errno::NOENT) => return Ok(()),
        Err(Errno::ISDIR) => {}
        Err(e) => return Err(e),
    }
    let mut cur = open_dest_dir(dir, name)?;
    thaw_subvolume(cur.as_fd())?;
    thaw_fd(cur.as_fd())?;
    // The names below `dir` leading to `cur`, each with the identity of its parent.
    let mut path: Vec<(CString, (u64, u64))> = Vec::new();
    loop {
        let mut descend = None;
        let mut d = rfs::Dir::read_from(&cur)?;
        while let Some(ent) = d.read() {
            let ent = ent?;
            let n = ent.file_name();
            if n == c"." || n == c".." {
                continue;
            }
            match unlink_thawing(cur.as_fd(), n) {
                Ok(()) | Err(Errno::NOENT) => {}
                Err(Errno::ISDIR) => {
                    descend = Some(n.to_owned());
                    break;
                }
                Err(e) => return Err(e),
            }
        }
        drop(d);
        if let Some(n) = descend {
            let sub = open_dest_dir(cur.as_fd(), &n)?;
            thaw_subvolume(sub.as_fd())?;
            thaw_fd(sub.as_fd())?;
            let m = fstat(cur.as_fd())?;
            path.push((n, (m.dev, m.ino)));
            cur = sub;
            continue;
        }
        // `cur` is empty now: remove it from its parent.
        match path.pop() {
            Some((n, parent_id)) => {
                let parent = open_parent(cur.as_fd(), parent_id)?;
                drop(cur);
                match rfs::unlinkat(&parent, &n, AtFlags::REMOVEDIR) {
                    Ok(()) | Err(Errno::NOENT) => {}
                    Err(e) => return Err(e),
                }
                cur = parent;
            }
            None => {
                drop(cur);
                return match rfs::unlinkat(dir, name, AtFlags::REMOVEDIR) {
                    Ok(()) | Err(Errno::NOENT) => Ok(()),
                    Err(e) => Err(e),
                };
            }
        }
    }
}

/// Unlink a non-directory; `EISDIR` for a directory. An `EPERM` caused by an immutable or
/// append-only flag (on the entry or on `dir`) is cleared and the unlink retried.
fn unlink_thawing(dir: BorrowedFd<'_>, name: &CStr) -> Result<(), Errno> {
    match rfs::unlinkat(dir, name, AtFlags::empty()) {
        Err(Errno::PERM) => {}
        r => return r,
    }
    let m = lstat_at(dir, name)?;
    if m.kind() == Kind::Dir {
        return Err(Errno::ISDIR);
    }
    thaw_fd(dir)?;
    if m.kind() == Kind::File {
        let fd = open_read(dir, name, false)?;
        thaw_fd(fd.as_fd())?;
    }
    rfs::unlinkat(dir, name, AtFlags::empty())
}

/// Clear the immutable and append-only flags of an open file or directory, if set.
pub(crate) fn thaw_fd(fd: BorrowedFd<'_>) -> Result<(), Errno> {
    let f = super::flags::get(fd)?;
    let frozen = super::flags::IMMUTABLE | super::flags::APPEND;
    if f & frozen != 0 {
        super::flags::set(fd, f & !frozen)?;
    }
    Ok(())
}

/// Raise the soft limit on open files towards the hard limit (at most 65536): the walkers keep
/// a few hundred directory fds in flight. Best effort; a failure leaves the limit as it was.
pub(crate) fn raise_nofile_limit() {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let cur = getrlimit(Resource::Nofile);
    let want = cur.maximum.map_or(65536, |m| m.min(65536));
    if cur.current.is_some_and(|c| c < want) {
        let _ = setrlimit(
            Resource::Nofile,
            Rlimit {
                current: Some(want),
                maximum: cur.maximum,
            },
        );
    }
}

/// The names in a directory, without `.` and `..`, in readdir order.
pub(crate) fn dir_names(fd: BorrowedFd<'_>) -> Result<Vec<CString>, Errno> {
    let mut d = rfs::Dir::read_from(fd)?;
    let mut out = Vec::new();
    while let Some(ent) = d.read() {
        let ent = ent?;
        let n = ent.file_name();
        if n != c"." && n != c".." {
            out.push(n.to_owned());
        }
    }
    Ok(out)
}

/// Open the directory `rel` below `root` one component at a time (never following a symlink,
/// never handing the kernel a path longer than one name): for paths deeper than `PATH_MAX`.
pub(crate) fn open_dirs(root: BorrowedFd<'_>, rel: &Path) -> Result<OwnedFd, Errno> {
    let mut cur = rfs::openat(
        root,
        c".",
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    for c in rel.components() {
        let name = CString::new(c.as_os_str().as_bytes()).map_err(|_| Errno::INVAL)?;
        cur = open_dest_dir(cur.as_fd(), &name)?;
    }
    Ok(cur)
}

/// Open the parent (`..`) of the directory `dir` and check it is the directory `(dev, ino)` the
/// walk came from: the way back up a deep tree without keeping an fd per level. `..` is never
/// a symlink; a directory moved meanwhile fails the check.
pub(crate) fn open_parent(dir: BorrowedFd<'_>, want: (u64, u64)) -> Result<OwnedFd, Errno> {
    let fd = open_read(dir, c"..", true)?;
    let m = fstat(fd.as_fd())?;
    if (m.dev, m.ino) != want {
        return Err(Errno::STALE);
    }
    Ok(fd)
}

/// [`open_parent`] from the level a walk just finished, through the descriptor that level still
/// holds; `EBADF` when it holds none (a walk bug, reported like any other failure to go up).
pub(crate) fn open_parent_of(child: Option<impl AsFd>, want: (u64, u64)) -> Result<OwnedFd, Errno> {
    open_parent(child.ok_or(Errno::BADF)?.as_fd(), want)
}

/// What identifies a filesystem for comparing physical extents: the device, or for btrfs (where
/// every subvolume has its own device number, and `/var/lib/machines` is usually a subvolume
/// of its own) the filesystem UUID.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FsId {
    Dev(u64),
    Btrfs([u8; 16]),
}

const BTRFS_SUPER_MAGIC: i64 = 0x9123_683E;
/// Filesystems whose files can share extents (reflink): only there is `FIEMAP` worth asking.
const SHARING_FILESYSTEMS: &[i64] = &[
    BTRFS_SUPER_MAGIC,
    0x5846_5342, // XFS
    0xCA45_1A4E, // bcachefs
    0x7461_636F, // OCFS2
];

/// Can files on the filesystem of `fd` share extents (btrfs, XFS, bcachefs, OCFS2)?
pub(crate) fn can_share_extents(fd: BorrowedFd<'_>) -> bool {
    #[allow(clippy::useless_conversion, clippy::unnecessary_cast)]
    rfs::fstatfs(fd).is_ok_and(|st| SHARING_FILESYSTEMS.contains(&(st.f_type as i64)))
}
/// `BTRFS_IOC_FS_INFO`: `_IOR(0x94, 31, struct btrfs_ioctl_fs_info_args)` (1024 bytes).
const BTRFS_IOC_FS_INFO: libc::c_ulong = 0x8400_941F;

pub(crate) fn fs_id(fd: BorrowedFd<'_>) -> Result<FsId, Errno> {
    let m = fstat(fd)?;
    let st = rfs::fstatfs(fd)?;
    #[allow(clippy::useless_conversion, clippy::unnecessary_cast)]
    if st.f_type as i64 == BTRFS_SUPER_MAGIC {
        let mut args = [0u8; 1024];
        // SAFETY: the ioctl writes at most 1024 bytes into `args`, which is that large.
        let rc = unsafe { libc::ioctl(fd.as_raw_fd(), BTRFS_IOC_FS_INFO, args.as_mut_ptr()) };
        if rc == 0 {
            let mut uuid = [0u8; 16];
            uuid.copy_from_slice(&args[16..32]);
            return Ok(FsId::Btrfs(uuid));
        }
    }
    Ok(FsId::Dev(m.dev))
}

/// One extent of a file as `FIEMAP` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Extent {
    pub logical: u64,
    pub physical: u64,
    pub length: u64,
    pub flags: u32,
}

pub(crate) const FIEMAP_EXTENT_LAST: u32 = 0x0001;
pub(crate) const FIEMAP_EXTENT_SHARED: u32 = 0x2000;
/// Allocated but never written (`fallocate`): reads as zeros.
pub(crate) const FIEMAP_EXTENT_UNWRITTEN: u32 = 0x0800;
/// Extents whose `physical` does not pin down the bytes: not yet allocated (delalloc, unknown),
/// encoded (compressed: btrfs reports the start of the compressed extent, not of the part a
/// file uses), encrypted, inline or tail-packed.
pub(crate) const FIEMAP_EXTENT_UNPROVABLE: u32 =
    0x0002 | 0x0004 | 0x0008 | 0x0080 | 0x0100 | 0x0200 | 0x0400;
const FIEMAP_FLAG_SYNC: u32 = 0x0001;
/// `FS_IOC_FIEMAP`: `_IOWR('f', 11, struct fiemap)`.
const FS_IOC_FIEMAP: libc::c_ulong = 0xC020_660B;
const FIEMAP_BATCH: usize = 64;

#[repr(C)]
#[derive(Clone, Copy)]
struct RawExtent {
    fe_logical: u64,
    fe_physical: u64,
    fe_length: u64,
    fe_reserved64: [u64; 2],
    fe_flags: u32,
    fe_reserved: [u32; 3],
}

#[repr(C)]
struct RawFiemap {
    fm_start: u64,
    fm_length: u64,
    fm_flags: u32,
    fm_mapped_extents: u32,
    fm_extent_count: u32,
    fm_reserved: u32,
    fm_extents: [RawExtent; FIEMAP_BATCH],
}

/// The extent map of an open regular file (`FIEMAP`, after writing back dirty pages), with
/// adjacent extents merged, so two files mapping the same blocks compare equal however the
/// filesystem splits its records.
pub(crate) fn extents(fd: BorrowedFd<'_>) -> Result<Vec<Extent>, Errno> {
    let mut out: Vec<Extent> = Vec::new();
    let mut start = 0u64;
    let empty = RawExtent {
        fe_logical: 0,
        fe_physical: 0,
        fe_length: 0,
        fe_reserved64: [0; 2],
        fe_flags: 0,
        fe_reserved: [0; 3],
    };
    loop {
        let mut map = RawFiemap {
            fm_start: start,
            fm_length: u64::MAX - start,
            fm_flags: FIEMAP_FLAG_SYNC,
            fm_mapped_extents: 0,
            fm_extent_count: FIEMAP_BATCH as u32,
            fm_reserved: 0,
            fm_extents: [empty; FIEMAP_BATCH],
        };
        // SAFETY: `map` is a `struct fiemap` with room for `fm_extent_count` extents.
        let rc = unsafe { libc::ioctl(fd.as_raw_fd(), FS_IOC_FIEMAP, &mut map as *mut RawFiemap) };
        if rc != 0 {
            return Err(last_errno());
        }
        let n = (map.fm_mapped_extents as usize).min(FIEMAP_BATCH);
        if n == 0 {
            return Ok(out);
        }
        let mut last = false;
        for r in &map.fm_extents[..n] {
            let e = Extent {
                logical: r.fe_logical,
                physical: r.fe_physical,
                length: r.fe_length,
                flags: r.fe_flags & !FIEMAP_EXTENT_LAST & !0x1000, // LAST, MERGED
            };
            last |= r.fe_flags & FIEMAP_EXTENT_LAST != 0;
            match out.last_mut() {
                Some(p)
                    if p.logical + p.length == e.logical
                        && p.physical + p.length == e.physical
                        && p.flags == e.flags =>
                {
                    p.length += e.length;
                }
                _ => out.push(e),
            }
        }
        let end = map.fm_extents[n - 1].fe_logical + map.fm_extents[n - 1].fe_length;
        if last || end <= start {
            return Ok(out);
        }
        start = end;
    }
}

/// How many directory levels of a walk keep their descriptor; levels above are reopened
/// through `..` ([`open_parent`]) on the way back up, so a tree 100,000 levels deep needs no
/// more descriptors than a shallow one.
pub(crate) const FD_WINDOW: usize = 16;

/// The mount an open file is on (`statx` `STATX_MNT_ID`, Linux ≥ 5.8); `None` when unknown.
pub(crate) fn mount_id(fd: BorrowedFd<'_>) -> Option<u64> {
    let s = rfs::statx(fd, c"", AtFlags::EMPTY_PATH, StatxFlags::MNT_ID).ok()?;
    (s.stx_mask & StatxFlags::MNT_ID.bits() != 0).then_some(s.stx_mnt_id)
}

/// The inode number of every btrfs subvolume's root directory (`BTRFS_FIRST_FREE_OBJECTID`).
pub(crate) const BTRFS_SUBVOL_ROOT_INO: u64 = 256;

/// Is the filesystem of `fd` btrfs?
pub(crate) fn is_btrfs(fd: BorrowedFd<'_>) -> bool {
    #[allow(clippy::useless_conversion, clippy::unnecessary_cast)]
    rfs::fstatfs(fd).is_ok_and(|st| st.f_type as i64 == BTRFS_SUPER_MAGIC)
}

/// What a directory entry is, seen from the filesystem of the directory it is listed in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Crossing {
    /// On the same filesystem (and subvolume) as its parent.
    Same,
    /// The root of a nested btrfs subvolume: another `st_dev`, yet part of the same mount (so of
    /// the same filesystem). Its contents are part of the state: systemd-tmpfiles `v` lines
    /// (`/var/lib/machines`, `/var/lib/portables`) and administrators create these.
    Subvolume,
    /// A mount point (another filesystem, or a bind mount): never crossed.
    Mount,
}

/// Classify the entry `name` of `dir` (a directory on device `dir_dev`), whose `lstat` is `m`.
/// A subvolume is told from a mount by the mount it is on (`STATX_MNT_ID`): a subvolume reached
/// by walking down is on its parent's mount, a mount point never is. Without that information
/// (Linux < 5.8) anything with another `st_dev` counts as a mount, as before.
pub(crate) fn crossing(dir: BorrowedFd<'_>, dir_dev: u64, name: &CStr, m: &Meta) -> Crossing {
    if m.mount_root {
        return Crossing::Mount;
    }
    if m.dev == dir_dev {
        return Crossing::Same;
    }
    if m.kind() != Kind::Dir || m.ino != BTRFS_SUBVOL_ROOT_INO || !is_btrfs(dir) {
        return Crossing::Mount;
    }
    let child = rfs::statx(dir, name, AtFlags::SYMLINK_NOFOLLOW, StatxFlags::MNT_ID)
        .ok()
        .filter(|s| s.stx_mask & StatxFlags::MNT_ID.bits() != 0)
        .map(|s| s.stx_mnt_id);
    match (child, mount_id(dir)) {
        (Some(a), Some(b)) if a == b => Crossing::Subvolume,
        _ => Crossing::Mount,
    }
}

/// Is `m` (an entry of a directory on device `dir_dev`) the root of a btrfs subvolume nested
/// there? For our own staging tree, where no mounts are.
pub(crate) fn is_subvolume_root(m: &Meta, dir_dev: u64) -> bool {
    m.kind() == Kind::Dir && m.ino == BTRFS_SUBVOL_ROOT_INO && m.dev != dir_dev
}

/// `BTRFS_IOC_SUBVOL_CREATE`: `_IOW(0x94, 14, struct btrfs_ioctl_vol_args)` (4096 bytes).
const BTRFS_IOC_SUBVOL_CREATE: libc::c_ulong = 0x5000_940E;
/// `BTRFS_PATH_NAME_MAX`: the longest name `btrfs_ioctl_vol_args` holds.
const BTRFS_PATH_NAME_MAX: usize = 4087;

#[repr(C)]
struct BtrfsVolArgs {
    fd: i64,
    name: [u8; BTRFS_PATH_NAME_MAX + 1],
}
// The ioctl number encodes this size.
const _: () = assert!(std::mem::size_of::<BtrfsVolArgs>() == 4096);

/// Create an empty btrfs subvolume `name` in the directory `dir` (which must be on btrfs), as
/// `btrfs subvolume create` does. The new root directory is `0755`, owned by the caller.
pub(crate) fn create_subvolume(dir: BorrowedFd<'_>, name: &CStr) -> Result<(), Errno> {
    let bytes = name.to_bytes();
    if bytes.is_empty() || bytes.len() > BTRFS_PATH_NAME_MAX || bytes.contains(&b'/') {
        return Err(Errno::INVAL);
    }
    let mut args = BtrfsVolArgs {
        fd: 0,
        name: [0; BTRFS_PATH_NAME_MAX + 1],
    };
    args.name[..bytes.len()].copy_from_slice(bytes);
    // SAFETY: `args` is a `struct btrfs_ioctl_vol_args` with a NUL-terminated name; the kernel
    // only reads it.
    let rc = unsafe {
        libc::ioctl(
            dir.as_raw_fd(),
            BTRFS_IOC_SUBVOL_CREATE,
            &mut args as *mut BtrfsVolArgs,
        )
    };
    if rc != 0 {
        return Err(last_errno());
    }
    Ok(())
}

/// `BTRFS_IOC_SUBVOL_GETFLAGS`: `_IOR(0x94, 25, __u64)`.
const BTRFS_IOC_SUBVOL_GETFLAGS: libc::c_ulong = 0x8008_9419;
/// `BTRFS_IOC_SUBVOL_SETFLAGS`: `_IOW(0x94, 26, __u64)`.
const BTRFS_IOC_SUBVOL_SETFLAGS: libc::c_ulong = 0x4008_941A;
/// `BTRFS_SUBVOL_RDONLY`: the subvolume's read-only property (`btrfs property set -ts PATH ro
/// true`): nothing in it can be changed, not even its root's owner, mode, times or flags, and
/// its root cannot be renamed into another directory.
const BTRFS_SUBVOL_RDONLY: u64 = 1 << 1;

fn subvol_flags(fd: BorrowedFd<'_>) -> Result<u64, Errno> {
    let mut flags = 0u64;
    // SAFETY: the ioctl writes one `__u64` into `flags`.
    let rc = unsafe {
        libc::ioctl(
            fd.as_raw_fd(),
            BTRFS_IOC_SUBVOL_GETFLAGS,
            &mut flags as *mut u64,
        )
    };
    if rc != 0 {
        return Err(last_errno());
    }
    Ok(flags)
}

/// The error of the last failed raw call (`libc::ioctl`), as an [`Errno`].
fn last_errno() -> Errno {
    Errno::from_raw_os_error(
        std::io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO),
    )
}

/// Is the btrfs subvolume whose root directory `fd` is read-only? `None` when `fd` is not the
/// root of a btrfs subvolume (any other directory or filesystem).
pub(crate) fn subvolume_readonly(fd: BorrowedFd<'_>) -> Result<Option<bool>, Errno> {
    let m = fstat(fd)?;
    if m.kind() != Kind::Dir || m.ino != BTRFS_SUBVOL_ROOT_INO || !is_btrfs(fd) {
        return Ok(None);
    }
    match subvol_flags(fd) {
        Ok(f) => Ok(Some(f & BTRFS_SUBVOL_RDONLY != 0)),
        // Inode 256 of a directory that is not a subvolume root (an ordinary inode number in a
        // subvolume that has seen many files): not one.
        Err(Errno::INVAL) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Make the btrfs subvolume whose root directory `fd` is read-only or writable again (a no-op
/// when it already is). Needs the owner of the root or CAP_SYS_ADMIN.
pub(crate) fn set_subvolume_readonly(fd: BorrowedFd<'_>, readonly: bool) -> Result<(), Errno> {
    let now = subvol_flags(fd)?;
    let want = if readonly {
        now | BTRFS_SUBVOL_RDONLY
    } else {
        now & !BTRFS_SUBVOL_RDONLY
    };
    if want == now {
        return Ok(());
    }
    // SAFETY: the ioctl reads one `__u64` from `want`.
    let rc = unsafe {
        libc::ioctl(
            fd.as_raw_fd(),
            BTRFS_IOC_SUBVOL_SETFLAGS,
            &want as *const u64,
        )
    };
    if rc != 0 {
        return Err(last_errno());
    }
    Ok(())
}

/// A directory of our own (staging, a copy being replaced or removed) that may be the root of a
/// read-only btrfs subvolume an earlier run finished: make it writable so it can be changed.
pub(crate) fn thaw_subvolume(fd: BorrowedFd<'_>) -> Result<(), Errno> {
    if subvolume_readonly(fd)? == Some(true) {
        set_subvolume_readonly(fd, false)?;
    }
    Ok(())
}
