//! The copy engine: one walker thread (directories, metadata, symlinks, special files, hardlinks)
//! and a pool of data workers (regular files), all working on directory fds.
//!
//! Ordering per entry (tested, see `shared/reference/rust-notes.md` §3): data, then chown, then
//! chmod (chown clears setuid/setgid), then xattrs (chown drops `security.capability`), then
//! timestamps. A directory is finished (owner, mode, xattrs, times) only when every entry below
//! it is: each [`DirNode`] counts its unfinished children, and whichever thread finishes the
//! last one finishes the directory. So a default ACL is applied after its children were created
//! (they do not inherit it) and no later creation bumps a finished directory's mtime.
//!
//! Inode flags (see `flags.rs`): the early ones (`+C`, compression) are set on a new file while
//! it is empty and on a new directory before its children; the late ones (`+i`, `+a`, `+d`,
//! `+A`, `+S`) after the timestamps, as the very last step of an entry.
//!
//! A read-only btrfs subvolume (`BTRFS_SUBVOL_RDONLY`) is made read-only after its root
//! directory is finished, late flags included, so after everything in it: nothing in a
//! read-only subvolume can change any more. A resumed run finds the ones an interrupted run
//! finished read-only and makes them writable again until they are finished once more.
//!
//! Memory: the walker keeps, per directory on the current path, the names of that directory's
//! entries; a [`DirNode`] (the stat, xattrs, its name, ~150 bytes) lives while the directory has
//! unfinished children; the hardlink map keeps one relative path per inode with more than one
//! link; the job queue is bounded. Nothing is kept per plain file once it is copied.
//!
//! Descriptors: only the deepest `sys::FD_WINDOW` directories of the walker's path keep theirs
//! (source and copy); the walker and the threads finishing directories go back up through `..`,
//! checked against the directory's identity, so any depth copies with a bounded number of open
//! files (plus the in-flight jobs, which the bounded queue limits).

use std::collections::{HashMap, HashSet};
use std::ffi::{CStr, CString};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use rustix::fs::{self as rfs, AtFlags, FileType, Gid, Mode, SeekFrom, Uid};
use rustix::io::Errno;

use super::Progress;
use super::error::StateError;
use super::flags;
use super::hooks;
use super::sys::{self, Crossing, Kind, Meta, XTarget, Xattrs};

/// How to treat what an earlier, interrupted run left in the staging tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Resume {
    /// The tree is new and empty.
    Fresh,
    /// Keep entries whose type, owner, mode, size and mtime already match (the mtime is set
    /// last, so a match means the entry was finished).
    Trust,
    /// Keep directories, re-copy everything else (after a failed verification).
    Recopy,
}

/// What a copy did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CopyReport {
    /// Entries below the root (the root itself not counted).
    pub entries: u64,
    pub dirs: u64,
    pub files: u64,
    pub symlinks: u64,
    /// Fifos, sockets, character and block devices.
    pub specials: u64,
    /// Entries created as a hard link to an entry copied earlier.
    pub hardlinks: u64,
    /// File data bytes written in this run.
    pub bytes: u64,
    /// Entries an interrupted run had already finished and this run kept.
    pub reused: u64,
    /// Leftovers of an interrupted run that no longer exist in the source, removed.
    pub removed_stale: u64,
    /// Mount points inside the source (relative paths): not descended into; an empty directory
    /// with the mount root's owner, mode and times stands in their place (like `cp -ax`).
    pub skipped_mounts: Vec<PathBuf>,
    /// Nested btrfs subvolumes of the source (relative paths; `.` when the source itself is
    /// one), copied and recreated as subvolumes in the copy.
    pub subvolumes: Vec<PathBuf>,
    /// Nested btrfs subvolumes of the source copied as plain directories, because the
    /// destination is not btrfs: their contents are all there, the subvolume boundary is not.
    pub subvolumes_flattened: Vec<PathBuf>,
    /// The read-only ones among the source's subvolumes (`btrfs property set -ts PATH ro
    /// true`; `.` when the source itself is one): read-only again in the copy where they are
    /// subvolumes there (set last, after everything in them; the root's after the final
    /// rename), writable plain directories where they were flattened.
    pub subvolumes_readonly: Vec<PathBuf>,
    /// Whether FICLONE (reflink) was used for at least one file.
    pub reflinked: bool,
    /// Files whose data was cloned (reflinked) rather than copied.
    pub files_reflinked: u64,
    /// Files and directories whose inode flags (`chattr`) were copied.
    pub flags_copied: u64,
    /// Entries whose inode flags the copy does not have (the destination filesystem cannot hold
    /// them, or the engine does not copy them), counted; the first ones with their paths.
    pub flags_lost_count: u64,
    pub flags_lost: Vec<LostFlags>,
}

/// Inode flags a source entry has and its copy does not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LostFlags {
    /// Relative to the roots.
    pub path: PathBuf,
    /// `+C`, `+C+i`, …
    pub flags: String,
    /// Why: "the destination filesystem cannot hold it" or "not copied by nixos-nspawn".
    pub why: &'static str,
}

/// How many entries with lost flags a report names (all are counted).
pub const MAX_REPORTED_LOST_FLAGS: usize = 20;

pub(crate) struct CopyConfig<'a> {
    /// Real path of the source root, for messages.
    pub src_label: &'a Path,
    /// Real path of the destination root, for messages.
    pub dst_label: &'a Path,
    pub resume: Resume,
    pub progress: &'a dyn Progress,
    pub workers: usize,
    /// Called by the walker about every `checkpoint_every` with (entries, bytes) so far.
    pub checkpoint: Option<&'a mut dyn FnMut(u64, u64) -> Result<(), StateError>>,
    pub checkpoint_every: Duration,
    /// The copied inode flags the destination filesystem can hold (`flags::probe`).
    pub flag_support: u32,
}

struct DirNode {
    /// Unfinished children, plus one while the walker is still listing this directory.
    pending: AtomicUsize,
    parent: Option<Arc<DirNode>>,
    /// (dev, ino) of the copy's directory. A node keeps no descriptor: whoever finishes it has
    /// it open (the walker leaving it, or a worker that copied its last file) or reaches it
    /// through `..` of the child just finished, checked against this.
    dst_id: (u64, u64),
    meta: Meta,
    xattrs: Xattrs,
    /// The name in the parent (empty for the root); paths are built only for messages.
    name: CString,
    /// Copied inode flags to give the directory when it is finished.
    flags_want: u32,
    /// Its flags as they are while its children are created.
    flags_now: u32,
    /// A btrfs subvolume in the copy to make read-only when it is finished, after everything
    /// in it (a read-only subvolume cannot be changed any more).
    readonly: bool,
}

/// Iterative: the parent chain of a tree 100,000 levels deep would overflow the stack if each
/// node dropped its parent recursively.
impl Drop for DirNode {
    fn drop(&mut self) {
        let mut up = self.parent.take();
        while let Some(p) = up {
            match Arc::try_unwrap(p) {
                Ok(mut n) => up = n.parent.take(),
                Err(_) => break,
            }
        }
    }
}

impl DirNode {
    /// The path relative to the roots (walks up the parents: for messages only).
    fn rel(&self) -> PathBuf {
        let mut names = vec![self.name.as_c_str()];
        let mut cur = self.parent.as_deref();
        while let Some(n) = cur {
            names.push(n.name.as_c_str());
            cur = n.parent.as_deref();
        }
        names
            .iter()
            .rev()
            .filter(|n| !n.is_empty())
            .map(|n| sys::os(n))
            .collect()
    }

    /// New entries inherit copied flags from this directory (and must be corrected).
    fn inherits(&self) -> bool {
        self.flags_now & flags::COPYABLE != 0
    }
}

struct FileJob {
    src_dir: Arc<OwnedFd>,
    dst_dir: Arc<OwnedFd>,
    parent: Arc<DirNode>,
    name: CString,
    meta: Meta,
    rel: PathBuf,
}

struct Shared<'a> {
    src_label: &'a Path,
    dst_label: &'a Path,
    prune_xattrs: bool,
    /// (euid, egid, umask) when a new file's owner and mode are known without asking: a fresh
    /// copy into a root without setgid bit or default ACL. Lets plain root-owned files skip
    /// `fchown`/`fchmod`.
    fast: Option<(u32, u32, u32)>,
    progress: &'a dyn Progress,
    reflink_off: AtomicBool,
    cfr_off: AtomicBool,
    reflinked: AtomicU64,
    abort: AtomicBool,
    error: Mutex<Option<StateError>>,
    bytes: AtomicU64,
    files: AtomicU64,
    flag_support: u32,
    flags_copied: AtomicU64,
    lost: Mutex<(u64, Vec<LostFlags>)>,
}

impl Shared<'_> {
    fn fail(&self, e: StateError) {
        self.abort.store(true, Ordering::SeqCst);
        if let Ok(mut slot) = self.error.lock()
            && slot.is_none()
        {
            *slot = Some(e);
        }
    }
    fn src(&self, rel: &Path) -> PathBuf {
        join(self.src_label, rel)
    }
    fn dst(&self, rel: &Path) -> PathBuf {
        join(self.dst_label, rel)
    }
    fn read_err(&self, op: &'static str, rel: &Path, e: Errno) -> StateError {
        StateError::io(op, &self.src(rel), e)
    }
    fn write_err(&self, op: &'static str, rel: &Path, e: Errno) -> StateError {
        StateError::write(op, &self.dst(rel), self.dst_label, e)
    }

    /// One child of `node` (whose copy is open as `node_fd`, when the caller has it) is
    /// finished; finish `node` and its ancestors when they are complete. Going up, each
    /// ancestor's descriptor is the one the walker left, or `..` of the directory just finished.
    fn child_done(
        &self,
        node: &Arc<DirNode>,
        node_fd: Option<Arc<OwnedFd>>,
    ) -> Result<(), StateError> {
        let mut cur = Some(Arc::clone(node));
        let mut known = node_fd;
        let mut below: Option<Arc<OwnedFd>> = None;
        while let Some(n) = cur {
            if n.pending.fetch_sub(1, Ordering::AcqRel) != 1 {
                return Ok(());
            }
            let fd = match (known.take(), &below) {
                (Some(fd), _) => fd,
                (None, Some(b)) => Arc::new(
                    sys::open_parent(b.as_fd(), n.dst_id)
                        .map_err(|e| self.write_err("go back up to", &n.rel(), e))?,
                ),
                (None, None) => {
                    return Err(StateError::invalid(
                        self.dst_label,
                        "internal error: a finished directory has no descriptor",
                    ));
                }
            };
            self.finish_dir(&n, fd.as_fd())?;
            below = Some(fd);
            cur = n.parent.clone();
        }
        Ok(())
    }

    fn finish_dir(&self, n: &DirNode, fd: BorrowedFd<'_>) -> Result<(), StateError> {
        rfs::fchown(
            fd,
            Some(Uid::from_raw(n.meta.uid)),
            Some(Gid::from_raw(n.meta.gid)),
        )
        .map_err(|e| self.write_err("set the owner of", &n.rel(), e))?;
        rfs::fchmod(fd, Mode::from_raw_mode(n.meta.perm()))
            .map_err(|e| self.write_err("set the mode of", &n.rel(), e))?;
        if !n.xattrs.is_empty() || self.prune_xattrs {
            sys::set_xattrs(XTarget::Fd(fd), &n.xattrs, self.prune_xattrs)
                .map_err(|(e, op)| StateError::write(op, &self.dst(&n.rel()), self.dst_label, e))?;
        }
        rfs::futimens(fd, &n.meta.timestamps())
            .map_err(|e| self.write_err("set the timestamps of", &n.rel(), e))?;
        if n.flags_want != 0 || n.inherits() {
            self.set_flags(fd, n.flags_now, n.flags_want, || n.rel())?;
        }
        if n.flags_want != 0 {
            self.flags_copied.fetch_add(1, Ordering::Relaxed);
        }
        if n.readonly {
            sys::set_subvolume_readonly(fd, true)
                .map_err(|e| self.write_err("make read-only the btrfs subvolume", &n.rel(), e))?;
        }
        Ok(())
    }

    fn run_job(&self, job: FileJob) -> Result<(), StateError> {
        self.copy_regular(
            job.src_dir.as_fd(),
            job.dst_dir.as_fd(),
            &job.name,
            &job.meta,
            &job.rel,
            job.parent.inherits(),
        )?;
        self.progress.entry_done();
        self.child_done(&job.parent, Some(job.dst_dir))
    }

    /// The copied flags of a source entry (`sflags`) the copy will get; the rest is recorded
    /// as lost, with the reason.
    fn wanted_flags(&self, sflags: u32, rel: &dyn Fn() -> PathBuf) -> u32 {
        let unheld = sflags & flags::COPYABLE & !self.flag_support;
        let uncopied = sflags & flags::UNCOPIED;
        if unheld != 0 {
            self.lose(rel(), unheld, "the destination filesystem cannot hold it");
        }
        if uncopied != 0 {
            self.lose(rel(), uncopied, "not copied by nixos-nspawn");
        }
        sflags & flags::COPYABLE & self.flag_support
    }

    fn lose(&self, path: PathBuf, bits: u32, why: &'static str) {
        if let Ok(mut l) = self.lost.lock() {
            l.0 += 1;
            if l.1.len() < MAX_REPORTED_LOST_FLAGS {
                l.1.push(LostFlags {
                    path,
                    flags: flags::letters(bits),
                    why,
                });
            }
        }
    }

    /// Give the copy (flags `now`) the copied flags `want`; a flag refused although the probe
    /// said the filesystem holds it is recorded as lost (and verification reports it).
    fn set_flags(
        &self,
        fd: BorrowedFd<'_>,
        now: u32,
        want: u32,
        rel: impl Fn() -> PathBuf,
    ) -> Result<(), StateError> {
        let lost = flags::apply(fd, now, want)
            .map_err(|e| self.write_err("set the inode flags of", &rel(), e))?;
        if lost != 0 {
            self.lose(rel(), lost, "the destination filesystem refused it");
        }
        Ok(())
    }

    /// Copy a regular file: open (no follow, no atime), check it is the inode the walker saw,
    /// create, early inode flags, data, chown, chmod, xattrs, times, late inode flags.
    /// `inherits`: the new file may inherit copied flags from its directory.
    fn copy_regular(
        &self,
        src_dir: BorrowedFd<'_>,
        dst_dir: BorrowedFd<'_>,
        name: &CStr,
        meta: &Meta,
        rel: &Path,
        inherits: bool,
    ) -> Result<Meta, StateError> {
        hooks::before_open(|| self.src(rel));
        let src = sys::open_read(src_dir, name, false).map_err(|e| match e {
            Errno::LOOP | Errno::NXIO => StateError::changed(
                &self.src(rel),
                "a regular file was replaced by a symlink or a special file",
            ),
            Errno::NOENT => StateError::changed(&self.src(rel), "it disappeared"),
            e => self.read_err("open", rel, e),
        })?;
        let sm = sys::fstat(src.as_fd()).map_err(|e| self.read_err("stat", rel, e))?;
        if sm.kind() != Kind::File || sm.ino != meta.ino || sm.dev != meta.dev {
            return Err(StateError::changed(
                &self.src(rel),
                "it is no longer the file that was listed",
            ));
        }
        let mut skip_owner_mode = self.fast.is_some_and(|(uid, gid, umask)| {
            (sm.uid, sm.gid) == (uid, gid) && sm.perm() & 0o7000 == 0 && sm.perm() & umask == 0
        });
        let create_mode = if self.fast.is_some() {
            sm.perm() & 0o777
        } else {
            0o600
        };
        let dst = match sys::create_file(dst_dir, name, create_mode) {
            Err(Errno::EXIST) => {
                skip_owner_mode = false;
                sys::remove_all_at(dst_dir, name)
                    .map_err(|e| self.write_err("remove the stale", rel, e))?;
                sys::create_file(dst_dir, name, create_mode)
            }
            r => r,
        }
        .map_err(|e| self.write_err("create", rel, e))?;
        let sflags = flags::get(src.as_fd())
            .map_err(|e| self.read_err("read the inode flags of", rel, e))?;
        let want = if sflags == 0 {
            0
        } else {
            self.wanted_flags(sflags, &|| rel.to_path_buf())
        };
        let mut now = 0;
        if want != 0 || inherits {
            // While the file is empty: +C (and compression) now, inherited ones corrected.
            now = flags::get(dst.as_fd())
                .map_err(|e| self.write_err("read the inode flags of", rel, e))?;
            self.set_flags(dst.as_fd(), now, want & flags::EARLY, || rel.to_path_buf())?;
            now = (now & !flags::COPYABLE) | (want & flags::EARLY);
        }
        self.copy_data(&src, &dst, &sm, rel)?;
        let xattrs = sys::get_xattrs(XTarget::Fd(src.as_fd()))
            .map_err(|e| self.read_err("read the extended attributes of", rel, e))?;
        if !skip_owner_mode {
            rfs::fchown(
                &dst,
                Some(Uid::from_raw(sm.uid)),
                Some(Gid::from_raw(sm.gid)),
            )
            .map_err(|e| self.write_err("set the owner of", rel, e))?;
            rfs::fchmod(&dst, Mode::from_raw_mode(sm.perm()))
                .map_err(|e| self.write_err("set the mode of", rel, e))?;
        }
        if !xattrs.is_empty() || self.prune_xattrs {
            sys::set_xattrs(XTarget::Fd(dst.as_fd()), &xattrs, self.prune_xattrs)
                .map_err(|(e, op)| StateError::write(op, &self.dst(rel), self.dst_label, e))?;
        }
        rfs::futimens(&dst, &sm.timestamps())
            .map_err(|e| self.write_err("set the timestamps of", rel, e))?;
        if want & !flags::EARLY != 0 {
            // Last: +i/+a would forbid everything above.
            self.set_flags(dst.as_fd(), now, want, || rel.to_path_buf())?;
        }
        if want != 0 {
            self.flags_copied.fetch_add(1, Ordering::Relaxed);
        }
        self.files.fetch_add(1, Ordering::Relaxed);
        Ok(sm)
    }

    /// Data: FICLONE when the filesystem can, else `copy_file_range` over the data segments
    /// (SEEK_DATA/SEEK_HOLE) so holes stay holes, else read/write.
    fn copy_data(
        &self,
        src: &OwnedFd,
        dst: &OwnedFd,
        m: &Meta,
        rel: &Path,
    ) -> Result<(), StateError> {
        if m.size == 0 {
            return Ok(());
        }
        if !self.reflink_off.load(Ordering::Relaxed) {
            match rfs::ioctl_ficlone(dst, src) {
                Ok(()) => {
                    self.reflinked.fetch_add(1, Ordering::Relaxed);
                    self.add_bytes(m.size);
                    return Ok(());
                }
                // The filesystems cannot share data at all: stop trying.
                Err(Errno::OPNOTSUPP | Errno::XDEV | Errno::NOTTY) => {
                    self.reflink_off.store(true, Ordering::Relaxed);
                }
                // This file cannot (btrfs: +C on one side only, a swap file, …): copy it.
                Err(Errno::INVAL | Errno::PERM | Errno::TXTBSY) => {}
                Err(e) => return Err(self.write_err("clone the data of", rel, e)),
            }
        }
        let sparse = m.allocated() < m.size;
        if !sparse {
            return self.copy_range(src, dst, 0, m.size, rel, true);
        }
        let mut off = 0u64;
        while off < m.size {
            let data = match rfs::seek(src, SeekFrom::Data(off)) {
                Ok(d) => d,
                Err(Errno::NXIO) => break,
                Err(e) => return Err(self.read_err("find the data in", rel, e)),
            };
            if data >= m.size {
                break;
            }
            let hole = match rfs::seek(src, SeekFrom::Hole(data)) {
                Ok(h) => h.min(m.size),
                Err(e) => return Err(self.read_err("find the holes in", rel, e)),
            };
            self.copy_range(src, dst, data, hole - data, rel, false)?;
            off = hole;
        }
        rfs::ftruncate(dst, m.size).map_err(|e| self.write_err("set the size of", rel, e))
    }

    fn add_bytes(&self, n: u64) {
        self.bytes.fetch_add(n, Ordering::Relaxed);
        self.progress.bytes_done(n);
    }

    /// Copy `len` bytes at `start` (same offset in both files).
    fn copy_range(
        &self,
        src: &OwnedFd,
        dst: &OwnedFd,
        start: u64,
        len: u64,
        rel: &Path,
        exact: bool,
    ) -> Result<(), StateError> {
        let end = start + len;
        let mut off_in = start;
        let mut off_out = start;
        while off_in < end && !self.cfr_off.load(Ordering::Relaxed) {
            let chunk = usize::try_from((end - off_in).min(1 << 30)).unwrap_or(1 << 30);
            match rfs::copy_file_range(src, Some(&mut off_in), dst, Some(&mut off_out), chunk) {
                Ok(0) => {
                    return if exact {
                        Err(StateError::changed(
                            &self.src(rel),
                            "the file shrank during the copy",
                        ))
                    } else {
                        Ok(())
                    };
                }
                Ok(n) => self.add_bytes(n as u64),
                Err(Errno::XDEV | Errno::INVAL | Errno::NOSYS | Errno::OPNOTSUPP)
                    if off_in == start =>
                {
                    self.cfr_off.store(true, Ordering::Relaxed);
                }
                Err(Errno::INTR) => {}
                Err(e) => return Err(self.write_err("copy data to", rel, e)),
            }
        }
        if off_in >= end {
            return Ok(());
        }
        // Fallback: pread/pwrite.
        let mut buf = vec![0u8; 256 * 1024];
        while off_in < end {
            let want = usize::try_from((end - off_in).min(buf.len() as u64)).unwrap_or(buf.len());
            let n = match rustix::io::pread(src, &mut buf[..want], off_in) {
                Ok(0) => {
                    return if exact {
                        Err(StateError::changed(
                            &self.src(rel),
                            "the file shrank during the copy",
                        ))
                    } else {
                        Ok(())
                    };
                }
                Ok(n) => n,
                Err(Errno::INTR) => continue,
                Err(e) => return Err(self.read_err("read", rel, e)),
            };
            let mut done = 0;
            while done < n {
                match rustix::io::pwrite(dst, &buf[done..n], off_in + done as u64) {
                    Ok(w) => done += w,
                    Err(Errno::INTR) => {}
                    Err(e) => return Err(self.write_err("write", rel, e)),
                }
            }
            off_in += n as u64;
            self.add_bytes(n as u64);
        }
        Ok(())
    }
}

pub(crate) fn join(base: &Path, rel: &Path) -> PathBuf {
    if rel.as_os_str().is_empty() {
        base.to_path_buf()
    } else {
        base.join(rel)
    }
}

/// A directory on the walker's path. Its descriptors are dropped while the walker is more than
/// `sys::FD_WINDOW` levels below it and reopened through `..` on the way back.
struct Frame {
    node: Arc<DirNode>,
    src: Option<Arc<OwnedFd>>,
    dst: Option<Arc<OwnedFd>>,
    src_id: (u64, u64),
    names: Vec<CString>,
    next: usize,
}

/// Does the entry an interrupted run left behind already match the source?
fn quick_match(s: &Meta, d: &Meta) -> bool {
    s.kind() == d.kind()
        && s.perm() == d.perm()
        && s.uid == d.uid
        && s.gid == d.gid
        && s.mtime == d.mtime
        && match s.kind() {
            Kind::File | Kind::Symlink => s.size == d.size,
            Kind::Char | Kind::Block => s.rdev == d.rdev,
            _ => true,
        }
}

/// Copy the tree below `src_root` into `dst_root` (an existing directory we own). The root's
/// own owner, mode, xattrs and times are applied too, last.
pub(crate) fn copy_tree(
    src_root: &OwnedFd,
    dst_root: OwnedFd,
    cfg: CopyConfig<'_>,
) -> Result<CopyReport, StateError> {
    let CopyConfig {
        src_label,
        dst_label,
        resume,
        progress,
        workers,
        mut checkpoint,
        checkpoint_every,
        flag_support,
    } = cfg;
    sys::raise_nofile_limit();
    // A default ACL or a setgid bit on the destination root would change what new entries
    // get: then prune inherited ACLs and always set owner and mode.
    let dst_root_meta =
        sys::fstat(dst_root.as_fd()).map_err(|e| StateError::io("stat", dst_label, e))?;
    let dst_root_default_acl = sys::get_xattrs(XTarget::Fd(dst_root.as_fd()))
        .map_err(|e| StateError::io("read the extended attributes of", dst_label, e))?
        .iter()
        .any(|(n, _)| n.as_bytes() == b"system.posix_acl_default");
    let plain_root = !dst_root_default_acl && dst_root_meta.perm() & 0o2000 == 0;
    let fast = (resume == Resume::Fresh && plain_root)
        .then(|| {
            sys::umask().map(|um| {
                (
                    rustix::process::geteuid().as_raw(),
                    rustix::process::getegid().as_raw(),
                    um,
                )
            })
        })
        .flatten();
    let sh = Shared {
        src_label,
        dst_label,
        prune_xattrs: resume != Resume::Fresh || dst_root_default_acl,
        fast,
        progress,
        reflink_off: AtomicBool::new(false),
        cfr_off: AtomicBool::new(false),
        reflinked: AtomicU64::new(0),
        abort: AtomicBool::new(false),
        error: Mutex::new(None),
        bytes: AtomicU64::new(0),
        files: AtomicU64::new(0),
        flag_support,
        flags_copied: AtomicU64::new(0),
        lost: Mutex::new((0, Vec::new())),
    };
    let root_meta =
        sys::fstat(src_root.as_fd()).map_err(|e| StateError::io("stat", src_label, e))?;
    let root_xattrs = sys::get_xattrs(XTarget::Fd(src_root.as_fd()))
        .map_err(|e| StateError::io("read the extended attributes of", src_label, e))?;
    // The root's flags: early ones now, the rest when it is finished; +i/+a never here (the
    // copy's root must still be renamed into place; `migrate_state` sets them afterwards).
    // The source is a read-only subvolume itself: reported as `.`, made read-only by
    // `migrate_state` after the final rename (or lost where the copy is not on btrfs).
    let root_readonly = sys::subvolume_readonly(src_root.as_fd())
        .map_err(|e| StateError::io("read the btrfs subvolume flags of", src_label, e))?
        == Some(true);
    if resume != Resume::Fresh {
        sys::thaw_subvolume(dst_root.as_fd()).map_err(|e| {
            StateError::write("make writable the btrfs subvolume", dst_label, dst_label, e)
        })?;
    }
    let root_sflags = flags::get(src_root.as_fd())
        .map_err(|e| StateError::io("read the inode flags of", src_label, e))?;
    let root_want =
        sh.wanted_flags(root_sflags, &PathBuf::new) & !(flags::IMMUTABLE | flags::APPEND);
    let mut root_now = flags::get(dst_root.as_fd())
        .map_err(|e| StateError::io("read the inode flags of", dst_label, e))?;
    if root_now & flags::COPYABLE != 0 || root_want != 0 {
        if resume != Resume::Fresh {
            sys::thaw_fd(dst_root.as_fd()).map_err(|e| {
                StateError::write("clear the inode flags of", dst_label, dst_label, e)
            })?;
            root_now &= !(flags::IMMUTABLE | flags::APPEND);
        }
        sh.set_flags(
            dst_root.as_fd(),
            root_now,
            root_want & flags::EARLY,
            PathBuf::new,
        )?;
        root_now = (root_now & !flags::COPYABLE) | (root_want & flags::EARLY);
    }
    let src_dup = src_root
        .try_clone()
        .map_err(|e| StateError::io("duplicate a descriptor of", src_label, e))?;
    let dst_root = Arc::new(dst_root);
    let root = Arc::new(DirNode {
        pending: AtomicUsize::new(1),
        parent: None,
        dst_id: (dst_root_meta.dev, dst_root_meta.ino),
        meta: root_meta,
        xattrs: root_xattrs,
        name: CString::default(),
        flags_want: root_want,
        flags_now: root_now,
        // The root's read-only property comes after the final rename, which it would forbid
        // (`migrate_state`).
        readonly: false,
    });

    let (tx, rx) = mpsc::sync_channel::<Vec<FileJob>>(8);
    let rx = Mutex::new(rx);
    let mut report = CopyReport::default();
    if root_readonly {
        report.subvolumes_readonly.push(PathBuf::from("."));
    }
    let walk_result = std::thread::scope(|scope| {
        for _ in 0..workers.max(1) {
            let sh = &sh;
            let rx = &rx;
            scope.spawn(move || {
                loop {
                    let batch = match rx.lock() {
                        Ok(r) => r.recv(),
                        Err(_) => return,
                    };
                    let Ok(batch) = batch else { return };
                    for job in batch {
                        if sh.abort.load(Ordering::Relaxed) {
                            break;
                        }
                        if let Err(e) = sh.run_job(job) {
                            sh.fail(e);
                        }
                    }
                }
            });
        }
        let r = walk(
            &sh,
            Arc::new(src_dup),
            root,
            dst_root,
            root_meta,
            resume,
            &tx,
            &mut report,
            &mut checkpoint,
            checkpoint_every,
        );
        drop(tx);
        r
    });
    if let Err(e) = walk_result {
        sh.fail(e);
    }
    if let Ok(mut slot) = sh.error.lock()
        && let Some(e) = slot.take()
    {
        return Err(e);
    }
    report.bytes = sh.bytes.load(Ordering::Relaxed);
    report.files = sh.files.load(Ordering::Relaxed);
    report.files_reflinked = sh.reflinked.load(Ordering::Relaxed);
    report.reflinked = report.files_reflinked > 0;
    report.flags_copied = sh.flags_copied.load(Ordering::Relaxed);
    if let Ok(l) = sh.lost.into_inner() {
        report.flags_lost_count = l.0;
        report.flags_lost = l.1;
    }
    Ok(report)
}

/// Back up one level: give `up` its descriptors again (through `..` of the level just left)
/// when they were dropped.
fn reopen_up(sh: &Shared<'_>, done: &Frame, up: &mut Frame, rel: &Path) -> Result<(), StateError> {
    if up.src.is_none() {
        let fd = sys::open_parent_of(done.src.as_ref(), up.src_id).map_err(|e| {
            StateError::changed(
                &sh.src(rel),
                format!("a directory was moved during the copy ({e})"),
            )
        })?;
        up.src = Some(Arc::new(fd));
    }
    if up.dst.is_none() {
        let fd = sys::open_parent_of(done.dst.as_ref(), up.node.dst_id)
            .map(Arc::new)
            .map_err(|e| sh.write_err("go back up to", rel, e))?;
        up.dst = Some(fd);
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn walk(
    sh: &Shared<'_>,
    src_root: Arc<OwnedFd>,
    root: Arc<DirNode>,
    dst_root: Arc<OwnedFd>,
    root_meta: Meta,
    resume: Resume,
    tx: &mpsc::SyncSender<Vec<FileJob>>,
    report: &mut CopyReport,
    checkpoint: &mut Option<&mut dyn FnMut(u64, u64) -> Result<(), StateError>>,
    checkpoint_every: Duration,
) -> Result<(), StateError> {
    // (dev, ino) of the source → (relative path, (dev, ino)) of the first copy.
    let mut links: HashMap<(u64, u64), (PathBuf, (u64, u64))> = HashMap::new();
    let names =
        sys::dir_names(src_root.as_fd()).map_err(|e| StateError::io("list", sh.src_label, e))?;
    if resume != Resume::Fresh {
        remove_stale(sh, dst_root.as_fd(), &names, Path::new(""), report)?;
    }
    let link_root = Arc::clone(&dst_root);
    let mut stack = vec![Frame {
        node: root,
        src: Some(src_root),
        dst: Some(dst_root),
        src_id: (root_meta.dev, root_meta.ino),
        names,
        next: 0,
    }];
    // The current directory, relative to the roots.
    let mut cur_rel = PathBuf::new();
    let mut last_checkpoint = Instant::now();
    // Jobs go to the workers in batches: one channel operation per batch, not per file.
    let mut batch: Vec<FileJob> = Vec::new();
    let mut batch_bytes = 0u64;
    while let Some(frame) = stack.last_mut() {
        if sh.abort.load(Ordering::Relaxed) {
            return Ok(());
        }
        if frame.next == frame.names.len() {
            if let Some(f) = stack.pop() {
                if let Some(up) = stack.last_mut() {
                    cur_rel.pop();
                    reopen_up(sh, &f, up, &cur_rel)?;
                }
                let Frame { node, dst, .. } = f;
                sh.child_done(&node, dst)?;
            }
            continue;
        }
        let name = std::mem::take(&mut frame.names[frame.next]);
        frame.next += 1;
        // The device of the directory being listed: an entry on another one is a mount point
        // or a nested btrfs subvolume.
        let parent_dev = frame.src_id.0;
        let node = Arc::clone(&frame.node);
        let (Some(src_dir), Some(dst_fd)) = (frame.src.clone(), frame.dst.clone()) else {
            return Err(StateError::invalid(
                sh.src_label,
                "internal error: the copy walk lost its place",
            ));
        };
        let rel = cur_rel.join(sys::os(&name));
        hooks::before_entry(|| sh.src(&rel));
        let meta = match sys::lstat_at(src_dir.as_fd(), &name) {
            Ok(m) => m,
            // Deleted since the listing: nothing to copy.
            Err(Errno::NOENT) => continue,
            Err(e) => return Err(sh.read_err("stat", &rel, e)),
        };
        report.entries += 1;
        let dst_dir = dst_fd.as_fd();

        // What an interrupted run left under this name.
        let existing = if resume == Resume::Fresh {
            None
        } else {
            match sys::lstat_at(dst_dir, &name) {
                Ok(d) => Some(d),
                Err(Errno::NOENT) => None,
                Err(e) => return Err(sh.write_err("stat", &rel, e)),
            }
        };

        let kind = meta.kind();
        let crossing = if meta.dev == parent_dev && !meta.mount_root {
            Crossing::Same
        } else {
            sys::crossing(src_dir.as_fd(), parent_dev, &name, &meta)
        };
        if crossing == Crossing::Mount {
            // A mount point (directory or file bind mount): never cross into it.
            report.skipped_mounts.push(rel.clone());
            if kind == Kind::Dir {
                let (_, _) =
                    prepare_dir(sh, dst_dir, &name, &rel, existing.as_ref(), 0, false, false)?;
                let fd = sys::open_dest_dir(dst_dir, &name)
                    .map_err(|e| sh.write_err("open", &rel, e))?;
                let placeholder = DirNode {
                    pending: AtomicUsize::new(0),
                    parent: Some(Arc::clone(&node)),
                    dst_id: (0, 0),
                    meta,
                    xattrs: Vec::new(),
                    name: name.clone(),
                    flags_want: 0,
                    flags_now: 0,
                    readonly: false,
                };
                sh.finish_dir(&placeholder, fd.as_fd())?;
                report.dirs += 1;
            }
            progress_entry(sh);
            continue;
        }

        match kind {
            Kind::Dir => {
                hooks::before_open(|| sh.src(&rel));
                let sub = sys::open_read(src_dir.as_fd(), &name, true).map_err(|e| match e {
                    Errno::LOOP | Errno::NOTDIR => StateError::changed(
                        &sh.src(&rel),
                        "a directory was replaced by a symlink or a file",
                    ),
                    Errno::NOENT => StateError::changed(&sh.src(&rel), "it disappeared"),
                    e => sh.read_err("open", &rel, e),
                })?;
                let sm = sys::fstat(sub.as_fd()).map_err(|e| sh.read_err("stat", &rel, e))?;
                if sm.ino != meta.ino || sm.dev != meta.dev {
                    return Err(StateError::changed(
                        &sh.src(&rel),
                        "it is no longer the directory that was listed",
                    ));
                }
                let sflags = flags::get(sub.as_fd())
                    .map_err(|e| sh.read_err("read the inode flags of", &rel, e))?;
                let want = if sflags == 0 {
                    0
                } else {
                    sh.wanted_flags(sflags, &|| rel.clone())
                };
                // A nested subvolume becomes one again where the copy is on btrfs (the layout
                // legacy had), elsewhere a plain directory with the same contents (reported).
                let mut existing = existing;
                let as_subvolume = crossing == Crossing::Subvolume && sys::is_btrfs(dst_dir);
                let mut readonly = false;
                if crossing == Crossing::Subvolume {
                    if sys::subvolume_readonly(sub.as_fd())
                        .map_err(|e| sh.read_err("read the btrfs subvolume flags of", &rel, e))?
                        == Some(true)
                    {
                        report.subvolumes_readonly.push(rel.clone());
                        readonly = as_subvolume;
                    }
                    if as_subvolume {
                        report.subvolumes.push(rel.clone());
                        // An interrupted run always creates it as a subvolume; a plain
                        // directory here is somebody else's leftover: start it again.
                        if existing.is_some_and(|d| {
                            d.kind() == Kind::Dir && !sys::is_subvolume_root(&d, node.dst_id.0)
                        }) {
                            sys::remove_all_at(dst_dir, &name)
                                .map_err(|e| sh.write_err("remove the stale", &rel, e))?;
                            existing = None;
                        }
                    } else {
                        report.subvolumes_flattened.push(rel.clone());
                    }
                } else if existing.is_some_and(|d| sys::is_subvolume_root(&d, node.dst_id.0)) {
                    // A subvolume an interrupted run made where the source has a plain
                    // directory now (maybe read-only already): start it again.
                    sys::remove_all_at(dst_dir, &name)
                        .map_err(|e| sh.write_err("remove the stale", &rel, e))?;
                    existing = None;
                }
                let (fresh, dfd) = prepare_dir(
                    sh,
                    dst_dir,
                    &name,
                    &rel,
                    existing.as_ref(),
                    want,
                    node.inherits(),
                    as_subvolume,
                )?;
                let (dfd, flags_now) = match dfd {
                    Some(x) => x,
                    None => (
                        sys::open_dest_dir(dst_dir, &name)
                            .map_err(|e| sh.write_err("open", &rel, e))?,
                        0,
                    ),
                };
                let dm = sys::fstat(dfd.as_fd()).map_err(|e| sh.write_err("stat", &rel, e))?;
                let xattrs = sys::get_xattrs(XTarget::Fd(sub.as_fd()))
                    .map_err(|e| sh.read_err("read the extended attributes of", &rel, e))?;
                let names =
                    sys::dir_names(sub.as_fd()).map_err(|e| sh.read_err("list", &rel, e))?;
                if !fresh {
                    remove_stale(sh, dfd.as_fd(), &names, &rel, report)?;
                }
                node.pending.fetch_add(1, Ordering::AcqRel);
                let dfd = Arc::new(dfd);
                let child = Arc::new(DirNode {
                    pending: AtomicUsize::new(1),
                    parent: Some(node),
                    dst_id: (dm.dev, dm.ino),
                    meta: sm,
                    xattrs,
                    name,
                    flags_want: want,
                    flags_now,
                    readonly,
                });
                report.dirs += 1;
                progress_entry(sh);
                drop((src_dir, dst_fd));
                stack.push(Frame {
                    node: child,
                    src: Some(Arc::new(sub)),
                    dst: Some(dfd),
                    src_id: (sm.dev, sm.ino),
                    names,
                    next: 0,
                });
                cur_rel = rel;
                let n = stack.len();
                if n > sys::FD_WINDOW + 1 {
                    let old = &mut stack[n - sys::FD_WINDOW - 1];
                    old.src = None;
                    old.dst = None;
                }
            }
            _ if meta.nlink > 1
                && kind != Kind::Dir
                && links.contains_key(&(meta.dev, meta.ino)) =>
            {
                let (first, first_id) = links
                    .get(&(meta.dev, meta.ino))
                    .cloned()
                    .unwrap_or_default();
                if existing.is_some_and(|d| (d.dev, d.ino) == first_id && d.kind() == kind) {
                    report.reused += 1;
                } else {
                    if existing.is_some() {
                        sys::remove_all_at(dst_dir, &name)
                            .map_err(|e| sh.write_err("remove the stale", &rel, e))?;
                    }
                    link_thawed(&link_root, &first, dst_dir, &name)
                        .map_err(|e| sh.write_err("create the hard link", &rel, e))?;
                }
                report.hardlinks += 1;
                progress_entry(sh);
            }
            _ => {
                let reuse = resume == Resume::Trust
                    && existing.is_some_and(|d| quick_match(&meta, &d))
                    && (kind != Kind::Symlink
                        || sys::readlink(src_dir.as_fd(), &name).ok()
                            == sys::readlink(dst_dir, &name).ok());
                let reuse = reuse
                    || (resume == Resume::Recopy
                        && kind != Kind::File
                        && existing.is_some_and(|d| quick_match(&meta, &d)));
                if reuse {
                    if kind == Kind::File {
                        // A run killed between the timestamps and +i/+a left a matching file
                        // without them.
                        refresh_flags(sh, src_dir.as_fd(), dst_dir, &name, &rel)?;
                    }
                    report.reused += 1;
                    if kind == Kind::File {
                        // Keep the byte counter honest: these bytes were copied by an earlier run.
                        sh.progress.bytes_done(meta.size);
                    }
                    if meta.nlink > 1
                        && let Some(d) = existing
                    {
                        links.insert((meta.dev, meta.ino), (rel.clone(), (d.dev, d.ino)));
                    }
                    count_kind(report, kind);
                    progress_entry(sh);
                } else {
                    if existing.is_some() && (kind != Kind::File || meta.nlink > 1) {
                        sys::remove_all_at(dst_dir, &name)
                            .map_err(|e| sh.write_err("remove the stale", &rel, e))?;
                    }
                    if kind == Kind::File && meta.nlink <= 1 {
                        node.pending.fetch_add(1, Ordering::AcqRel);
                        let job = FileJob {
                            src_dir,
                            dst_dir: dst_fd,
                            parent: node,
                            name,
                            meta,
                            rel,
                        };
                        // One directory per batch: a job holds its directories' descriptors,
                        // and the queue is bounded, so the descriptors in flight are too.
                        if batch
                            .last()
                            .is_some_and(|l| !Arc::ptr_eq(&l.parent, &job.parent))
                        {
                            if tx.send(std::mem::take(&mut batch)).is_err() {
                                return Ok(());
                            }
                            batch_bytes = 0;
                        }
                        batch_bytes += job.meta.size;
                        batch.push(job);
                        if (batch.len() >= BATCH_JOBS || batch_bytes >= BATCH_BYTES)
                            && tx.send(std::mem::take(&mut batch)).is_err()
                        {
                            return Ok(());
                        }
                        if batch.is_empty() {
                            batch_bytes = 0;
                        }
                    } else {
                        let m = match kind {
                            Kind::File => sh.copy_regular(
                                src_dir.as_fd(),
                                dst_dir,
                                &name,
                                &meta,
                                &rel,
                                node.inherits(),
                            )?,
                            Kind::Symlink => {
                                copy_symlink(sh, src_dir.as_fd(), dst_dir, &name, &meta, &rel)?
                            }
                            Kind::Unknown => {
                                return Err(StateError::invalid(
                                    &sh.src(&rel),
                                    format!(
                                        "unsupported file type (mode {:o}); remove it or copy it by hand",
                                        meta.mode
                                    ),
                                ));
                            }
                            _ => copy_special(sh, src_dir.as_fd(), dst_dir, &name, &meta, &rel)?,
                        };
                        if m.nlink > 1 {
                            let d = sys::lstat_at(dst_dir, &name)
                                .map_err(|e| sh.write_err("stat", &rel, e))?;
                            links.insert((m.dev, m.ino), (rel.clone(), (d.dev, d.ino)));
                        }
                        if kind != Kind::File {
                            count_kind(report, kind);
                        }
                        progress_entry(sh);
                    }
                }
            }
        }
        if let Some(cp) = checkpoint.as_mut()
            && last_checkpoint.elapsed() >= checkpoint_every
        {
            cp(report.entries, sh.bytes.load(Ordering::Relaxed))?;
            last_checkpoint = Instant::now();
        }
    }
    if !batch.is_empty() {
        // A closed channel means the workers stopped on an error, which is reported.
        let _ = tx.send(batch);
    }
    Ok(())
}

/// `linkat` to the first copy of an inode; when that copy is immutable or append-only (which
/// forbids new links), the flags are lifted for the link and put back.
fn link_thawed(
    dst_root: &OwnedFd,
    first: &Path,
    dst_dir: BorrowedFd<'_>,
    name: &CStr,
) -> Result<(), Errno> {
    // A first name deeper than PATH_MAX cannot be handed to the kernel as one path: link it
    // from its own directory, reached one component at a time.
    let held;
    let (at, first) = if first.as_os_str().len() < libc::PATH_MAX as usize {
        (dst_root.as_fd(), first)
    } else {
        held = sys::open_dirs(dst_root.as_fd(), first.parent().unwrap_or(Path::new("")))?;
        (
            held.as_fd(),
            Path::new(first.file_name().ok_or(Errno::INVAL)?),
        )
    };
    match rfs::linkat(at, first, dst_dir, name, AtFlags::empty()) {
        Err(Errno::PERM) => {}
        r => return r,
    }
    let fd = rfs::openat(
        at,
        first,
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let f = flags::get(fd.as_fd())?;
    let frozen = f & (flags::IMMUTABLE | flags::APPEND);
    if frozen == 0 {
        return Err(Errno::PERM);
    }
    flags::set(fd.as_fd(), f & !frozen)?;
    let r = rfs::linkat(at, first, dst_dir, name, AtFlags::empty());
    flags::set(fd.as_fd(), f)?;
    r
}

/// A regular file kept from an interrupted run: give it the late flags it may be missing.
fn refresh_flags(
    sh: &Shared<'_>,
    src_dir: BorrowedFd<'_>,
    dst_dir: BorrowedFd<'_>,
    name: &CStr,
    rel: &Path,
) -> Result<(), StateError> {
    let Ok(s) = sys::open_read(src_dir, name, false) else {
        // Gone or swapped meanwhile: verification will tell.
        return Ok(());
    };
    let sflags =
        flags::get(s.as_fd()).map_err(|e| sh.read_err("read the inode flags of", rel, e))?;
    let want = sflags & flags::COPYABLE & sh.flag_support;
    let d = sys::open_read(dst_dir, name, false).map_err(|e| sh.write_err("open", rel, e))?;
    let now = flags::get(d.as_fd()).map_err(|e| sh.write_err("read the inode flags of", rel, e))?;
    if now & flags::COPYABLE != want {
        sh.set_flags(d.as_fd(), now, want, || rel.to_path_buf())?;
    }
    Ok(())
}

const BATCH_JOBS: usize = 32;
const BATCH_BYTES: u64 = 4 << 20;

fn progress_entry(sh: &Shared<'_>) {
    sh.progress.entry_done();
}

fn count_kind(report: &mut CopyReport, kind: Kind) {
    match kind {
        Kind::Symlink => report.symlinks += 1,
        Kind::File => report.files += 1,
        Kind::Dir => report.dirs += 1,
        _ => report.specials += 1,
    }
}

/// Make sure a directory exists under `name` in the destination; returns true when it was
/// created now (so it cannot hold leftovers). When its inode flags need attention (the source
/// has copied flags `want`, or it may have inherited some, or it is a kept directory that may
/// carry +i/+a from a finished earlier run), also returns it open with its flags as they are
/// now: early ones set, inherited ones corrected, +i/+a lifted until it is finished. With
/// `subvolume`, a new directory is created as a btrfs subvolume (the destination is btrfs).
#[allow(clippy::type_complexity, clippy::too_many_arguments)]
fn prepare_dir(
    sh: &Shared<'_>,
    dst_dir: BorrowedFd<'_>,
    name: &CStr,
    rel: &Path,
    existing: Option<&Meta>,
    want: u32,
    inherits: bool,
    subvolume: bool,
) -> Result<(bool, Option<(OwnedFd, u32)>), StateError> {
    let fresh = match existing {
        Some(d) if d.kind() == Kind::Dir => false,
        Some(_) => {
            sys::remove_all_at(dst_dir, name)
                .map_err(|e| sh.write_err("remove the stale", rel, e))?;
            true
        }
        None => true,
    };
    if fresh && subvolume {
        sys::create_subvolume(dst_dir, name)
            .map_err(|e| sh.write_err("create the btrfs subvolume", rel, e))?;
        // Created 0755: private like every new directory until it is finished.
        rfs::chmodat(dst_dir, name, Mode::from_raw_mode(0o700), AtFlags::empty())
            .map_err(|e| sh.write_err("set the mode of", rel, e))?;
    } else if fresh {
        rfs::mkdirat(dst_dir, name, Mode::from_raw_mode(0o700))
            .map_err(|e| sh.write_err("create the directory", rel, e))?;
    }
    if fresh && want == 0 && !inherits {
        return Ok((true, None));
    }
    let fd = sys::open_dest_dir(dst_dir, name).map_err(|e| sh.write_err("open", rel, e))?;
    if subvolume && !fresh {
        // An interrupted run may have finished it, read-only included: writable again until
        // it is finished once more.
        sys::thaw_subvolume(fd.as_fd())
            .map_err(|e| sh.write_err("make writable the btrfs subvolume", rel, e))?;
    }
    let mut now =
        flags::get(fd.as_fd()).map_err(|e| sh.write_err("read the inode flags of", rel, e))?;
    if now & flags::COPYABLE != want & flags::EARLY {
        sh.set_flags(fd.as_fd(), now, want & flags::EARLY, || rel.to_path_buf())?;
        now = (now & !flags::COPYABLE) | (want & flags::EARLY);
    }
    Ok((fresh, Some((fd, now))))
}

/// Remove entries of a destination directory left by an interrupted run that the source no
/// longer has.
fn remove_stale(
    sh: &Shared<'_>,
    dst_dir: BorrowedFd<'_>,
    src_names: &[CString],
    rel: &Path,
    report: &mut CopyReport,
) -> Result<(), StateError> {
    let have = sys::dir_names(dst_dir).map_err(|e| sh.write_err("list", rel, e))?;
    if have.is_empty() {
        return Ok(());
    }
    let want: HashSet<&CStr> = src_names.iter().map(|n| n.as_c_str()).collect();
    for n in have {
        if !want.contains(n.as_c_str()) {
            let r = rel.join(sys::os(&n));
            sys::remove_all_at(dst_dir, &n).map_err(|e| sh.write_err("remove the stale", &r, e))?;
            report.removed_stale += 1;
        }
    }
    Ok(())
}

fn copy_symlink(
    sh: &Shared<'_>,
    src_dir: BorrowedFd<'_>,
    dst_dir: BorrowedFd<'_>,
    name: &CStr,
    meta: &Meta,
    rel: &Path,
) -> Result<Meta, StateError> {
    let target = sys::readlink(src_dir, name).map_err(|e| match e {
        Errno::INVAL => {
            StateError::changed(&sh.src(rel), "a symlink was replaced by something else")
        }
        e => sh.read_err("read the symlink", rel, e),
    })?;
    let xattrs = sys::get_xattrs(XTarget::Path(&sys::proc_path(src_dir, name)))
        .map_err(|e| sh.read_err("read the extended attributes of", rel, e))?;
    rfs::symlinkat(target.as_c_str(), dst_dir, name)
        .map_err(|e| sh.write_err("create the symlink", rel, e))?;
    // Never chmod a symlink; a fresh link has no xattrs to prune.
    finish_node(sh, dst_dir, name, meta, rel, &xattrs, false, false)
}

/// The metadata of a node just created in the staging tree, in the order that keeps it:
/// owner first (chown clears setuid/setgid and drops `security.capability`), then the mode
/// (`chmod`: not for symlinks), then xattrs, then the timestamps last.
#[allow(clippy::too_many_arguments)]
fn finish_node(
    sh: &Shared<'_>,
    dst_dir: BorrowedFd<'_>,
    name: &CStr,
    meta: &Meta,
    rel: &Path,
    xattrs: &sys::Xattrs,
    chmod: bool,
    prune_xattrs: bool,
) -> Result<Meta, StateError> {
    rfs::chownat(
        dst_dir,
        name,
        Some(Uid::from_raw(meta.uid)),
        Some(Gid::from_raw(meta.gid)),
        AtFlags::SYMLINK_NOFOLLOW,
    )
    .map_err(|e| sh.write_err("set the owner of", rel, e))?;
    if chmod {
        // `name` is the node we just created in our private staging tree, not a symlink.
        rfs::chmodat(
            dst_dir,
            name,
            Mode::from_raw_mode(meta.perm()),
            AtFlags::empty(),
        )
        .map_err(|e| sh.write_err("set the mode of", rel, e))?;
    }
    if !xattrs.is_empty() || prune_xattrs {
        sys::set_xattrs(
            XTarget::Path(&sys::proc_path(dst_dir, name)),
            xattrs,
            prune_xattrs,
        )
        .map_err(|(e, op)| StateError::write(op, &sh.dst(rel), sh.dst_label, e))?;
    }
    rfs::utimensat(dst_dir, name, &meta.timestamps(), AtFlags::SYMLINK_NOFOLLOW)
        .map_err(|e| sh.write_err("set the timestamps of", rel, e))?;
    Ok(*meta)
}

fn copy_special(
    sh: &Shared<'_>,
    src_dir: BorrowedFd<'_>,
    dst_dir: BorrowedFd<'_>,
    name: &CStr,
    meta: &Meta,
    rel: &Path,
) -> Result<Meta, StateError> {
    let ft = match meta.kind() {
        Kind::Fifo => FileType::Fifo,
        Kind::Socket => FileType::Socket,
        Kind::Char => FileType::CharacterDevice,
        _ => FileType::BlockDevice,
    };
    let xattrs = sys::get_xattrs(XTarget::Path(&sys::proc_path(src_dir, name)))
        .map_err(|e| sh.read_err("read the extended attributes of", rel, e))?;
    rfs::mknodat(dst_dir, name, ft, Mode::from_raw_mode(0o600), meta.rdev)
        .map_err(|e| sh.write_err("create the special file", rel, e))?;
    finish_node(sh, dst_dir, name, meta, rel, &xattrs, true, sh.prune_xattrs)
}
