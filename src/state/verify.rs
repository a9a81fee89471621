//! Compare a copy with its source: walks both trees in lockstep on directory fds (never
//! following symlinks, never crossing into mounts, reading with `O_NOATIME`), and for
//! [`Verify::Full`] hashes file contents with BLAKE3 on a small worker pool.
//!
//! Checked per entry: presence on both sides, type, permission bits (incl. setuid/setgid/sticky),
//! owner and group, mtime (ns), size, device numbers, symlink targets, every extended attribute
//! (so ACLs and capabilities too), that hard links still share an inode, the copied inode flags
//! (`chattr`, see `flags.rs`; those the destination cannot hold are left out, the copy reports
//! them), that a nested btrfs subvolume is one in the copy too (where that is on btrfs) with the
//! same read-only property, and (Full) contents. Not checked: atime (reading may update it on the source's side
//! elsewhere), ctime (cannot be set).
//!
//! Contents at filesystem speed: when the source and the copy are on the same filesystem and
//! `FIEMAP` maps both files to the same physical extents, all marked shared (a reflink copy),
//! the bytes are the same blocks on disk and neither file is read. Anything else (a file that
//! is not shared, only partly shared, compressed, inline, or not yet allocated) is read and
//! hashed on both sides. The report counts files and bytes by method.
//!
//! Descriptors: the walker keeps one per side for each of the deepest `sys::FD_WINDOW`
//! directories on its path and goes back up through `..` (checked against the directory it came
//! from), so any depth verifies with a bounded number of open files.

use std::collections::HashMap;
use std::ffi::{CStr, CString};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};

use rustix::fs::FileType;
use rustix::io::Errno;

use super::Verify;
use super::copy::join;
use super::error::StateError;
use super::flags;
use super::sys::{self, Crossing, Kind, Meta, XTarget};

/// How many differences a report keeps with their paths (all are counted).
pub const MAX_REPORTED_DIFFERENCES: usize = 20;

/// One difference between the source and the copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Difference {
    /// Relative to the roots.
    pub path: PathBuf,
    pub what: String,
}

/// The result of a verification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    pub level: Verify,
    /// Entries compared (below the roots; the roots themselves are compared too).
    pub entries: u64,
    /// Content bytes hashed on the source side (Full only).
    pub bytes_hashed: u64,
    /// Regular files whose contents were read and hashed on both sides (Full only).
    pub files_hashed: u64,
    /// Regular files whose contents were proven equal by their extent maps: the same physical
    /// extents, shared, on the same filesystem (Full only; nothing of them was read).
    pub files_by_extents: u64,
    /// The bytes of those files.
    pub bytes_by_extents: u64,
    /// Number of differences found.
    pub differences: u64,
    /// The first [`MAX_REPORTED_DIFFERENCES`] differences, in walk order.
    pub first: Vec<Difference>,
    /// Mount points found in the source (relative paths), not descended into.
    pub skipped_mounts: Vec<PathBuf>,
}

impl VerifyReport {
    fn new(level: Verify) -> Self {
        VerifyReport {
            level,
            entries: 0,
            bytes_hashed: 0,
            files_hashed: 0,
            files_by_extents: 0,
            bytes_by_extents: 0,
            differences: 0,
            first: Vec::new(),
            skipped_mounts: Vec::new(),
        }
    }

    pub(crate) fn empty(level: Verify) -> Self {
        Self::new(level)
    }

    pub fn is_clean(&self) -> bool {
        self.differences == 0
    }

    /// `contents: 12 files (1.2 GiB) proven equal by shared extents, not read; 3400 files
    /// read on both sides and compared (45.0 MiB read)`; empty below [`Verify::Full`].
    pub fn methods(&self) -> String {
        if self.level != Verify::Full {
            return String::new();
        }
        let files = |n: u64| format!("{n} file{}", if n == 1 { "" } else { "s" });
        let hashed = format!(
            "{} read on both sides and compared ({} read)",
            files(self.files_hashed),
            super::error::human_bytes(self.bytes_hashed)
        );
        if self.files_by_extents == 0 {
            return format!("contents: {hashed}");
        }
        format!(
            "contents: {} ({}) proven equal by shared extents, not read; {hashed}",
            files(self.files_by_extents),
            super::error::human_bytes(self.bytes_by_extents),
        )
    }

    /// `3 differences in 1200 entries; first: etc/passwd: content differs; …`
    pub fn summary(&self) -> String {
        if self.is_clean() {
            return format!("no differences in {} entries", self.entries);
        }
        let list: Vec<String> = self
            .first
            .iter()
            .take(5)
            .map(|d| format!("{}: {}", display_rel(&d.path), d.what))
            .collect();
        format!(
            "{} difference{} in {} entries; first: {}",
            self.differences,
            if self.differences == 1 { "" } else { "s" },
            self.entries,
            list.join("; ")
        )
    }
}

fn display_rel(p: &Path) -> String {
    if p.as_os_str().is_empty() {
        ".".to_string()
    } else {
        p.display().to_string()
    }
}

struct Diffs {
    count: AtomicU64,
    first: Mutex<Vec<Difference>>,
}

impl Diffs {
    fn add(&self, path: &Path, what: impl Into<String>) {
        self.count.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut f) = self.first.lock()
            && f.len() < MAX_REPORTED_DIFFERENCES
        {
            f.push(Difference {
                path: path.to_path_buf(),
                what: what.into(),
            });
        }
    }
}

/// A non-directory entry present on both sides, checked by a worker.
struct Job {
    src_dir: Arc<OwnedFd>,
    dst_dir: Arc<OwnedFd>,
    /// The device of `src_dir`: an entry on another one is a bind-mounted file, not compared.
    src_dev: u64,
    name: CString,
    rel: PathBuf,
}

/// Source (dev, ino) → copy (dev, ino), and back. Devices too on both sides: every btrfs
/// subvolume numbers its inodes from 256.
type LinkMaps = (
    HashMap<(u64, u64), (u64, u64)>,
    HashMap<(u64, u64), (u64, u64)>,
);

/// What the walker and the workers share.
struct Ctx<'a> {
    level: Verify,
    src_label: &'a Path,
    dst_label: &'a Path,
    diffs: Diffs,
    hashed: AtomicU64,
    files_hashed: AtomicU64,
    by_extents: AtomicU64,
    bytes_by_extents: AtomicU64,
    /// Source and copy are on one filesystem: equal physical extents mean equal bytes.
    same_fs: bool,
    /// Files up to this size are not asked for extents: btrfs keeps them inline in its
    /// metadata (`max_inline`, 2048 bytes by default), where `FIEMAP` cannot prove anything and
    /// costs more than reading both (a quarter of the files of a typical rootfs).
    inline_max: u64,
    /// The copied inode flags the copy's filesystem can hold.
    flag_support: u32,
    /// Compare the roots' btrfs read-only property too (not in the staging tree: the copy's
    /// root gets it after the final rename, which it would forbid).
    root_readonly: bool,
    failed: AtomicBool,
    error: Mutex<Option<StateError>>,
    skipped: Mutex<Vec<PathBuf>>,
    /// Source inode → copy inode, and back, for entries with more than one link.
    links: Mutex<LinkMaps>,
}

impl Ctx<'_> {
    fn rd(&self, op: &'static str, rel: &Path, e: Errno) -> StateError {
        StateError::io(op, &join(self.src_label, rel), e)
    }
    fn wd(&self, op: &'static str, rel: &Path, e: Errno) -> StateError {
        StateError::io(op, &join(self.dst_label, rel), e)
    }
    fn fail(&self, e: StateError) {
        self.failed.store(true, Ordering::Relaxed);
        if let Ok(mut slot) = self.error.lock() {
            slot.get_or_insert(e);
        }
    }
}

const BATCH: usize = 64;

/// btrfs's default `max_inline`: a file up to this size is normally stored in the metadata.
/// (Mounted with a larger `max_inline`, files above this size are inline too: then `FIEMAP`
/// says so and they are read, as before.)
const BTRFS_DEFAULT_MAX_INLINE: u64 = 2048;

/// Compare the trees below two open directories. One walker thread lists directories (using
/// the directory entry types, so it need not `lstat` files); `workers` threads compare the
/// other entries and hash their contents.
#[allow(clippy::too_many_arguments)]
pub(crate) fn verify_fds(
    src_root: &OwnedFd,
    dst_root: &OwnedFd,
    level: Verify,
    src_label: &Path,
    dst_label: &Path,
    workers: usize,
    flag_support: u32,
) -> Result<VerifyReport, StateError> {
    verify_with(
        src_root,
        dst_root,
        level,
        (src_label, dst_label),
        workers,
        flag_support,
        true,
    )
}

/// [`verify_fds`], and for the copy in the staging directory, before it is renamed into place,
/// with `root_readonly` false: its root is not read-only yet where the source's is (a read-only
/// subvolume cannot be renamed into another directory; `migrate_state` sets it after the
/// rename).
pub(crate) fn verify_with(
    src_root: &OwnedFd,
    dst_root: &OwnedFd,
    level: Verify,
    (src_label, dst_label): (&Path, &Path),
    workers: usize,
    flag_support: u32,
    root_readonly: bool,
) -> Result<VerifyReport, StateError> {
    let mut report = VerifyReport::new(level);
    if level == Verify::None {
        return Ok(report);
    }
    // Extents are worth asking for only where files can share them (not on ext4, tmpfs, …).
    let same_fs = sys::can_share_extents(dst_root.as_fd())
        && match (sys::fs_id(src_root.as_fd()), sys::fs_id(dst_root.as_fd())) {
            (Ok(a), Ok(b)) => a == b,
            _ => false,
        };
    let ctx = Ctx {
        level,
        src_label,
        dst_label,
        diffs: Diffs {
            count: AtomicU64::new(0),
            first: Mutex::new(Vec::new()),
        },
        hashed: AtomicU64::new(0),
        files_hashed: AtomicU64::new(0),
        by_extents: AtomicU64::new(0),
        bytes_by_extents: AtomicU64::new(0),
        same_fs,
        inline_max: if same_fs && sys::is_btrfs(dst_root.as_fd()) {
            BTRFS_DEFAULT_MAX_INLINE
        } else {
            0
        },
        flag_support,
        root_readonly,
        failed: AtomicBool::new(false),
        error: Mutex::new(None),
        skipped: Mutex::new(Vec::new()),
        links: Mutex::new((HashMap::new(), HashMap::new())),
    };
    let (tx, rx) = mpsc::sync_channel::<Vec<Job>>(8);
    let rx = Mutex::new(rx);
    let walked = std::thread::scope(|scope| {
        for _ in 0..workers.max(1) {
            let (rx, ctx) = (&rx, &ctx);
            scope.spawn(move || {
                let mut bufs = [Vec::new(), Vec::new()];
                let zeros = vec![0u8; BLOCK as usize];
                loop {
                    let batch = match rx.lock() {
                        Ok(r) => r.recv(),
                        Err(_) => return,
                    };
                    let Ok(batch) = batch else { return };
                    for job in batch {
                        if ctx.failed.load(Ordering::Relaxed) {
                            break;
                        }
                        if let Err(e) = check_entry(ctx, &job, &mut bufs, &zeros) {
                            ctx.fail(e);
                        }
                    }
                }
            });
        }
        let r = walk(src_root, dst_root, &ctx, &tx, &mut report);
        drop(tx);
        r
    });
    walked?;
    if let Ok(mut slot) = ctx.error.lock()
        && let Some(e) = slot.take()
    {
        return Err(e);
    }
    report.differences = ctx.diffs.count.load(Ordering::Relaxed);
    report.first = ctx.diffs.first.into_inner().unwrap_or_default();
    report.bytes_hashed = ctx.hashed.load(Ordering::Relaxed);
    report.files_hashed = ctx.files_hashed.load(Ordering::Relaxed);
    report.files_by_extents = ctx.by_extents.load(Ordering::Relaxed);
    report.bytes_by_extents = ctx.bytes_by_extents.load(Ordering::Relaxed);
    let mut skipped = ctx.skipped.into_inner().unwrap_or_default();
    report.skipped_mounts.append(&mut skipped);
    report.skipped_mounts.sort();
    Ok(report)
}

/// Blocks of this size that are all zero (holes, or written zeros) are left out of the hash, so
/// the hash depends on the logical contents only, not on how they are laid out on disk, and
/// holes are never read.
const BLOCK: u64 = 256 * 1024;
const CHUNK_BLOCKS: u64 = 4;

/// BLAKE3 over `(offset, block)` for every non-zero block, then the size. Returns the hash and
/// the bytes read.
fn hash_fd(fd: &OwnedFd, m: &Meta, buf: &mut Vec<u8>, zeros: &[u8]) -> Hashed {
    let size = m.size;
    // A fully allocated file has no holes: skip the SEEK_DATA/SEEK_HOLE calls.
    let dense = m.allocated() >= size;
    buf.resize((BLOCK * CHUNK_BLOCKS) as usize, 0);
    let mut h = blake3::Hasher::new();
    let mut read_total = 0u64;
    let mut done = 0u64; // everything below this offset is processed
    let mut off = 0u64;
    while off < size {
        let seek = if dense {
            Err(Errno::INVAL)
        } else {
            rustix::fs::seek(fd, rustix::fs::SeekFrom::Data(off))
        };
        let (data, hole) = match seek {
            Ok(d) => {
                let h = rustix::fs::seek(fd, rustix::fs::SeekFrom::Hole(d))?;
                (d, h.min(size))
            }
            Err(Errno::NXIO) => break,
            // No SEEK_DATA support: everything is data.
            Err(Errno::INVAL) => (off, size),
            Err(e) => return Err(e),
        };
        if data >= size {
            break;
        }
        let mut pos = ((data / BLOCK) * BLOCK).max(done);
        let end = hole.div_ceil(BLOCK).saturating_mul(BLOCK).min(size);
        while pos < end {
            let want = (end - pos).min(BLOCK * CHUNK_BLOCKS) as usize;
            let mut got = 0usize;
            while got < want {
                match rustix::io::pread(fd, &mut buf[got..want], pos + got as u64) {
                    Ok(0) => break,
                    Ok(n) => got += n,
                    Err(Errno::INTR) => {}
                    Err(e) => return Err(e),
                }
            }
            if got == 0 {
                break;
            }
            read_total += got as u64;
            for (i, block) in buf[..got].chunks(BLOCK as usize).enumerate() {
                if block != &zeros[..block.len()] {
                    h.update(&(pos + i as u64 * BLOCK).to_le_bytes());
                    h.update(block);
                }
            }
            pos += got as u64;
        }
        done = done.max(pos);
        off = hole.max(done);
    }
    h.update(&size.to_le_bytes());
    Ok((h.finalize(), read_total))
}

/// Dense files up to this size are compared byte for byte rather than hashed: reading both is
/// needed either way, and comparing costs a fraction of hashing both (most files of a rootfs).
/// Larger ones are hashed, the two sides in parallel; sparse ones too (holes are skipped).
const DIRECT_MAX: u64 = 16 << 20;

/// Read two files of `size` bytes without holes and compare them byte for byte. Returns whether
/// they are equal and the bytes read from the first; an error says which side failed (`true`:
/// the first).
fn compare_dense(
    a: &OwnedFd,
    b: &OwnedFd,
    size: u64,
    bufs: &mut [Vec<u8>; 2],
) -> Result<(bool, u64), (Errno, bool)> {
    let chunk = (BLOCK * CHUNK_BLOCKS) as usize;
    let [ba, bb] = bufs;
    ba.resize(chunk, 0);
    bb.resize(chunk, 0);
    // Fills `buf` from `off` (short only at the end of the file).
    fn fill(fd: &OwnedFd, buf: &mut [u8], off: u64) -> Result<usize, Errno> {
        let mut got = 0usize;
        while got < buf.len() {
            match rustix::io::pread(fd, &mut buf[got..], off + got as u64) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(Errno::INTR) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(got)
    }
    let mut off = 0u64;
    while off < size {
        let want = (size - off).min(chunk as u64) as usize;
        let na = fill(a, &mut ba[..want], off).map_err(|e| (e, true))?;
        let nb = fill(b, &mut bb[..want], off).map_err(|e| (e, false))?;
        if na != nb || ba[..na] != bb[..nb] {
            return Ok((false, off + na as u64));
        }
        if na < want {
            // Both ended early (shrunk since the stat): equal so far, and the sizes were.
            return Ok((true, off + na as u64));
        }
        off += want as u64;
    }
    // Grown since the stat on one side only: not the same any more.
    let mut one = [0u8; 1];
    let more_a = fill(a, &mut one, size).map_err(|e| (e, true))?;
    let more_b = fill(b, &mut one, size).map_err(|e| (e, false))?;
    Ok((more_a == more_b, size))
}

/// Hash both files; big ones in parallel.
type Hashed = Result<(blake3::Hash, u64), Errno>;

fn hash_pair(
    src: (&OwnedFd, &Meta),
    dst: (&OwnedFd, &Meta),
    bufs: &mut [Vec<u8>; 2],
    zeros: &[u8],
) -> (Hashed, Hashed) {
    let [a, b] = bufs;
    if src.1.size > 16 << 20 {
        std::thread::scope(|s| {
            let hb = s.spawn(|| hash_fd(dst.0, dst.1, b, zeros));
            let ra = hash_fd(src.0, src.1, a, zeros);
            let rb = hb.join().unwrap_or(Err(Errno::IO));
            (ra, rb)
        })
    } else {
        (
            hash_fd(src.0, src.1, a, zeros),
            hash_fd(dst.0, dst.1, b, zeros),
        )
    }
}

/// A directory on the walker's path. Its descriptors are dropped when it is more than
/// `sys::FD_WINDOW` levels above the deepest one, and reopened through `..` on the way back.
struct Frame {
    src: Option<Arc<OwnedFd>>,
    dst: Option<Arc<OwnedFd>>,
    src_id: (u64, u64),
    dst_id: (u64, u64),
    names: Vec<(CString, u8, bool)>,
    next: usize,
}

const IN_SRC: u8 = 1;
const IN_DST: u8 = 2;

/// Sorted names, each with "may be a directory" from the entry type (unknown counts as yes).
fn names(fd: BorrowedFd<'_>) -> Result<Vec<(CString, bool)>, Errno> {
    let mut d = rustix::fs::Dir::read_from(fd)?;
    let mut out = Vec::new();
    while let Some(ent) = d.read() {
        let ent = ent?;
        let n = ent.file_name();
        if n != c"." && n != c".." {
            let t = ent.file_type();
            let maybe_dir = t == FileType::Directory || t == FileType::Unknown;
            out.push((n.to_owned(), maybe_dir));
        }
    }
    out.sort();
    Ok(out)
}

/// Sorted union of both listings, each name tagged with where it exists and whether the
/// source's entry may be a directory.
fn merged(a: Vec<(CString, bool)>, b: Vec<(CString, bool)>) -> Vec<(CString, u8, bool)> {
    let mut out = Vec::with_capacity(a.len().max(b.len()));
    let (mut ia, mut ib) = (a.into_iter().peekable(), b.into_iter().peekable());
    loop {
        match (ia.peek(), ib.peek()) {
            (Some(x), Some(y)) if x.0 == y.0 => {
                ib.next();
                if let Some((x, d)) = ia.next() {
                    out.push((x, IN_SRC | IN_DST, d));
                }
            }
            (Some(x), Some(y)) if x.0 < y.0 => {
                if let Some((x, d)) = ia.next() {
                    out.push((x, IN_SRC, d));
                }
            }
            (Some(_), Some(_)) | (None, Some(_)) => {
                if let Some((y, d)) = ib.next() {
                    out.push((y, IN_DST, d));
                }
            }
            (Some(_), None) => {
                if let Some((x, d)) = ia.next() {
                    out.push((x, IN_SRC, d));
                }
            }
            (None, None) => return out,
        }
    }
}

fn compare_meta(s: &Meta, d: &Meta, rel: &Path, diffs: &Diffs) -> bool {
    if s.kind() != d.kind() {
        diffs.add(
            rel,
            format!(
                "type differs: {} in the source, {} in the copy",
                s.kind().name(),
                d.kind().name()
            ),
        );
        return false;
    }
    if s.perm() != d.perm() {
        diffs.add(
            rel,
            format!("mode differs: {:04o} vs {:04o}", s.perm(), d.perm()),
        );
    }
    if (s.uid, s.gid) != (d.uid, d.gid) {
        diffs.add(
            rel,
            format!("owner differs: {}:{} vs {}:{}", s.uid, s.gid, d.uid, d.gid),
        );
    }
    if s.mtime != d.mtime {
        diffs.add(
            rel,
            format!(
                "mtime differs: {}.{:09} vs {}.{:09}",
                s.mtime.0, s.mtime.1, d.mtime.0, d.mtime.1
            ),
        );
    }
    match s.kind() {
        Kind::File | Kind::Symlink if s.size != d.size => {
            diffs.add(rel, format!("size differs: {} vs {}", s.size, d.size));
        }
        Kind::Char | Kind::Block if s.rdev != d.rdev => {
            diffs.add(
                rel,
                format!("device number differs: {:#x} vs {:#x}", s.rdev, d.rdev),
            );
        }
        _ => {}
    }
    true
}

fn compare_xattrs(s: XTarget<'_>, d: XTarget<'_>, rel: &Path, diffs: &Diffs) -> Result<(), Errno> {
    let a = sys::get_xattrs(s)?;
    let b = sys::get_xattrs(d)?;
    if a != b {
        let names = |v: &sys::Xattrs| {
            v.iter()
                .map(|(n, _)| n.to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join(",")
        };
        if a.len() == b.len() && a.iter().zip(&b).all(|(x, y)| x.0 == y.0) {
            diffs.add(
                rel,
                format!("extended attribute values differ ({})", names(&a)),
            );
        } else {
            diffs.add(
                rel,
                format!(
                    "extended attributes differ: [{}] vs [{}]",
                    names(&a),
                    names(&b)
                ),
            );
        }
    }
    Ok(())
}

/// Compare the copied inode flags of two open entries. At the root, `+i`/`+a` are left out: the
/// copy's root gets them only after it is renamed into place.
fn compare_flags(
    ctx: &Ctx<'_>,
    s: BorrowedFd<'_>,
    d: BorrowedFd<'_>,
    rel: &Path,
    root: bool,
) -> Result<(), StateError> {
    let sf = flags::get(s).map_err(|e| ctx.rd("read the inode flags of", rel, e))?;
    let df = flags::get(d).map_err(|e| ctx.wd("read the inode flags of", rel, e))?;
    let mut mask = flags::COPYABLE;
    if root {
        mask &= !(flags::IMMUTABLE | flags::APPEND);
    }
    let want = sf & mask & ctx.flag_support;
    let have = df & mask;
    if want != have {
        let none = |s: String| if s.is_empty() { "none".to_string() } else { s };
        ctx.diffs.add(
            rel,
            format!(
                "inode flags differ: {} in the source, {} in the copy",
                none(flags::letters(want)),
                none(flags::letters(have))
            ),
        );
    }
    Ok(())
}

/// Compare the btrfs read-only property of two subvolume roots (`s` in the source; `d` in the
/// copy, which is left alone when it is not a subvolume: a copy off btrfs cannot hold it, and
/// the copy reports that).
fn compare_readonly(
    ctx: &Ctx<'_>,
    s: BorrowedFd<'_>,
    d: BorrowedFd<'_>,
    rel: &Path,
) -> Result<(), StateError> {
    let Some(have) = sys::subvolume_readonly(d)
        .map_err(|e| ctx.wd("read the btrfs subvolume flags of", rel, e))?
    else {
        return Ok(());
    };
    let want = sys::subvolume_readonly(s)
        .map_err(|e| ctx.rd("read the btrfs subvolume flags of", rel, e))?
        .unwrap_or(false);
    if want != have {
        let word = |ro: bool| if ro { "read-only" } else { "writable" };
        ctx.diffs.add(
            rel,
            format!(
                "the btrfs subvolume is {} in the source but {} in the copy",
                word(want),
                word(have)
            ),
        );
    }
    Ok(())
}

/// The walker: directories inline, everything else in batches to the workers.
fn walk(
    src_root: &OwnedFd,
    dst_root: &OwnedFd,
    ctx: &Ctx<'_>,
    tx: &mpsc::SyncSender<Vec<Job>>,
    report: &mut VerifyReport,
) -> Result<(), StateError> {
    let mut rel = PathBuf::new();
    let sm = sys::fstat(src_root.as_fd()).map_err(|e| ctx.rd("stat", &rel, e))?;
    let dm = sys::fstat(dst_root.as_fd()).map_err(|e| ctx.wd("stat", &rel, e))?;
    compare_meta(&sm, &dm, &rel, &ctx.diffs);
    compare_xattrs(
        XTarget::Fd(src_root.as_fd()),
        XTarget::Fd(dst_root.as_fd()),
        &rel,
        &ctx.diffs,
    )
    .map_err(|e| ctx.rd("read the extended attributes of", &rel, e))?;
    compare_flags(ctx, src_root.as_fd(), dst_root.as_fd(), &rel, true)?;
    if ctx.root_readonly {
        compare_readonly(ctx, src_root.as_fd(), dst_root.as_fd(), &rel)?;
    }
    let dup = |fd: &OwnedFd, label: &Path| {
        fd.try_clone()
            .map(Arc::new)
            .map_err(|e| StateError::io("duplicate a descriptor of", label, e))
    };
    let mut stack = vec![Frame {
        names: merged(
            names(src_root.as_fd()).map_err(|e| ctx.rd("list", &rel, e))?,
            names(dst_root.as_fd()).map_err(|e| ctx.wd("list", &rel, e))?,
        ),
        src: Some(dup(src_root, ctx.src_label)?),
        dst: Some(dup(dst_root, ctx.dst_label)?),
        src_id: (sm.dev, sm.ino),
        dst_id: (dm.dev, dm.ino),
        next: 0,
    }];
    let mut batch: Vec<Job> = Vec::new();
    while let Some(f) = stack.last_mut() {
        if ctx.failed.load(Ordering::Relaxed) {
            return Ok(());
        }
        if f.next == f.names.len() {
            if let Some(done) = stack.pop()
                && let Some(up) = stack.last_mut()
            {
                rel.pop();
                reopen_up(ctx, &done, up, &rel)?;
            }
            continue;
        }
        let (name, where_, maybe_dir) = std::mem::take(&mut f.names[f.next]);
        f.next += 1;
        let (Some(fsrc), Some(fdst)) = (f.src.clone(), f.dst.clone()) else {
            return Err(StateError::invalid(
                ctx.src_label,
                "internal error: the verification walk lost its place",
            ));
        };
        let erel = rel.join(sys::os(&name));
        let src_dev = f.src_id.0;
        report.entries += 1;
        if where_ == IN_SRC {
            // A file bind mount is skipped by the copy, like a directory mount point.
            match sys::lstat_at(fsrc.as_fd(), &name) {
                Ok(m) if sys::crossing(fsrc.as_fd(), src_dev, &name, &m) == Crossing::Mount => {
                    report.skipped_mounts.push(erel)
                }
                _ => ctx.diffs.add(&erel, "missing in the copy"),
            }
            continue;
        }
        if where_ == IN_DST {
            ctx.diffs.add(&erel, "in the copy but not in the source");
            continue;
        }
        // One directory per batch: a job holds its directories' descriptors, and the queue is
        // bounded, so the descriptors in flight are too.
        if batch
            .last()
            .is_some_and(|l| !Arc::ptr_eq(&l.src_dir, &fsrc))
            && tx.send(std::mem::take(&mut batch)).is_err()
        {
            return Ok(());
        }
        if !maybe_dir {
            batch.push(Job {
                src_dir: fsrc,
                dst_dir: fdst,
                src_dev,
                name,
                rel: erel,
            });
            if batch.len() >= BATCH && tx.send(std::mem::take(&mut batch)).is_err() {
                return Ok(());
            }
            continue;
        }
        let (sdir, ddir) = (fsrc.as_fd(), fdst.as_fd());
        let sm = match sys::lstat_at(sdir, &name) {
            Ok(m) => m,
            Err(Errno::NOENT) => {
                ctx.diffs
                    .add(&erel, "vanished from the source during verification");
                continue;
            }
            Err(e) => return Err(ctx.rd("stat", &erel, e)),
        };
        if sm.kind() != Kind::Dir {
            // The entry type was unknown: let a worker look at it.
            batch.push(Job {
                src_dir: fsrc,
                dst_dir: fdst,
                src_dev,
                name,
                rel: erel,
            });
            continue;
        }
        let dm = sys::lstat_at(ddir, &name).map_err(|e| ctx.wd("stat", &erel, e))?;
        if !compare_meta(&sm, &dm, &erel, &ctx.diffs) {
            continue;
        }
        let mut subvolume_copied = false;
        match sys::crossing(sdir, src_dev, &name, &sm) {
            Crossing::Mount => {
                report.skipped_mounts.push(erel);
                continue;
            }
            // Compared like any directory, and kept a subvolume where the copy is on btrfs.
            Crossing::Subvolume if sys::is_btrfs(ddir) => {
                if sys::is_subvolume_root(&dm, f.dst_id.0) {
                    subvolume_copied = true;
                } else {
                    ctx.diffs.add(
                        &erel,
                        "is a btrfs subvolume in the source but a plain directory in the copy",
                    );
                }
            }
            Crossing::Subvolume | Crossing::Same => {}
        }
        let s = sys::open_read(sdir, &name, true).map_err(|e| ctx.rd("open", &erel, e))?;
        let d = sys::open_read(ddir, &name, true).map_err(|e| ctx.wd("open", &erel, e))?;
        check_same(&s, &sm, &join(ctx.src_label, &erel))?;
        check_same(&d, &dm, &join(ctx.dst_label, &erel))?;
        compare_xattrs(
            XTarget::Fd(s.as_fd()),
            XTarget::Fd(d.as_fd()),
            &erel,
            &ctx.diffs,
        )
        .map_err(|e| ctx.rd("read the extended attributes of", &erel, e))?;
        compare_flags(ctx, s.as_fd(), d.as_fd(), &erel, false)?;
        if subvolume_copied {
            compare_readonly(ctx, s.as_fd(), d.as_fd(), &erel)?;
        }
        let names = merged(
            names(s.as_fd()).map_err(|e| ctx.rd("list", &erel, e))?,
            names(d.as_fd()).map_err(|e| ctx.wd("list", &erel, e))?,
        );
        drop((fsrc, fdst));
        stack.push(Frame {
            src: Some(Arc::new(s)),
            dst: Some(Arc::new(d)),
            src_id: (sm.dev, sm.ino),
            dst_id: (dm.dev, dm.ino),
            names,
            next: 0,
        });
        rel = erel;
        let n = stack.len();
        if n > sys::FD_WINDOW + 1 {
            let old = &mut stack[n - sys::FD_WINDOW - 1];
            old.src = None;
            old.dst = None;
        }
    }
    if !batch.is_empty() {
        // A closed channel means the workers stopped on an error, which is reported.
        let _ = tx.send(batch);
    }
    Ok(())
}

/// Back up one level: give `up` its descriptors again (through `..` of the level just left)
/// when they were dropped.
fn reopen_up(ctx: &Ctx<'_>, done: &Frame, up: &mut Frame, rel: &Path) -> Result<(), StateError> {
    if up.src.is_none() {
        let fd = sys::open_parent_of(done.src.as_ref(), up.src_id).map_err(|e| {
            StateError::changed(
                &join(ctx.src_label, rel),
                format!("a directory was moved during verification ({e})"),
            )
        })?;
        up.src = Some(Arc::new(fd));
    }
    if up.dst.is_none() {
        let fd = sys::open_parent_of(done.dst.as_ref(), up.dst_id).map_err(|e| {
            StateError::changed(
                &join(ctx.dst_label, rel),
                format!("a directory of the copy was moved during verification ({e})"),
            )
        })?;
        up.dst = Some(Arc::new(fd));
    }
    Ok(())
}

/// Do two extent maps prove equal contents? Only when both list the same written extents at
/// the same offsets, every one shared and of a kind whose physical address pins down the bytes.
/// Unwritten (preallocated) extents read as zeros, like holes, and are left out on both sides:
/// XFS does not clone them (a copy has a hole where its source has `fallocate`d space).
fn same_shared_extents(a: &[sys::Extent], b: &[sys::Extent]) -> bool {
    let written = |v: &[sys::Extent]| -> Vec<sys::Extent> {
        v.iter()
            .filter(|e| e.flags & sys::FIEMAP_EXTENT_UNWRITTEN == 0)
            .copied()
            .collect()
    };
    let (a, b) = (written(a), written(b));
    !a.is_empty()
        && a == b
        && a.iter().all(|e| {
            e.flags & sys::FIEMAP_EXTENT_SHARED != 0 && e.flags & sys::FIEMAP_EXTENT_UNPROVABLE == 0
        })
}

/// Compare one non-directory entry present on both sides (a worker's job).
fn check_entry(
    ctx: &Ctx<'_>,
    job: &Job,
    bufs: &mut [Vec<u8>; 2],
    zeros: &[u8],
) -> Result<(), StateError> {
    let (sdir, ddir, name, rel) = (
        job.src_dir.as_fd(),
        job.dst_dir.as_fd(),
        &job.name,
        &job.rel,
    );
    let diffs = &ctx.diffs;
    let sm = match sys::lstat_at(sdir, name) {
        Ok(m) => m,
        Err(Errno::NOENT) => {
            diffs.add(rel, "vanished from the source during verification");
            return Ok(());
        }
        Err(e) => return Err(ctx.rd("stat", rel, e)),
    };
    let dm = sys::lstat_at(ddir, name).map_err(|e| ctx.wd("stat", rel, e))?;
    if !compare_meta(&sm, &dm, rel, diffs) {
        return Ok(());
    }
    if sm.dev != job.src_dev || sm.mount_root {
        if let Ok(mut s) = ctx.skipped.lock() {
            s.push(rel.clone());
        }
        return Ok(());
    }
    if sm.kind() == Kind::Dir {
        diffs.add(rel, "became a directory during verification");
        return Ok(());
    }
    if sm.nlink > 1 || dm.nlink > 1 {
        let s_id = (sm.dev, sm.ino);
        let d_id = (dm.dev, dm.ino);
        let mut links = ctx.links.lock().map_err(|_| {
            StateError::invalid(rel, "internal error: a verification worker panicked")
        })?;
        let (s2d, d2s) = &mut *links;
        if let Some(&first) = s2d.get(&s_id) {
            if first != d_id {
                diffs.add(rel, "hard link not kept: the copy is a separate file");
            }
            return Ok(());
        }
        if let Some(&other) = d2s.get(&d_id) {
            if other != s_id {
                diffs.add(rel, "hard-linked in the copy but not in the source");
            }
            return Ok(());
        }
        s2d.insert(s_id, d_id);
        d2s.insert(d_id, s_id);
    }
    match sm.kind() {
        Kind::File => {
            let s = sys::open_read(sdir, name, false).map_err(|e| ctx.rd("open", rel, e))?;
            let d = sys::open_read(ddir, name, false).map_err(|e| ctx.wd("open", rel, e))?;
            let sf = check_same(&s, &sm, &join(ctx.src_label, rel))?;
            let df = check_same(&d, &dm, &join(ctx.dst_label, rel))?;
            compare_xattrs(XTarget::Fd(s.as_fd()), XTarget::Fd(d.as_fd()), rel, diffs)
                .map_err(|e| ctx.rd("read the extended attributes of", rel, e))?;
            compare_flags(ctx, s.as_fd(), d.as_fd(), rel, false)?;
            if ctx.level == Verify::Full {
                // Shared extents first: when they prove the contents equal, nothing is read.
                if ctx.same_fs
                    && sf.size == df.size
                    && sf.size > ctx.inline_max
                    && let (Ok(ea), Ok(eb)) = (sys::extents(s.as_fd()), sys::extents(d.as_fd()))
                    && same_shared_extents(&ea, &eb)
                {
                    ctx.by_extents.fetch_add(1, Ordering::Relaxed);
                    ctx.bytes_by_extents.fetch_add(sf.size, Ordering::Relaxed);
                    return Ok(());
                }
                let same = if sf.size <= DIRECT_MAX
                    && sf.size == df.size
                    && sf.allocated() >= sf.size
                    && df.allocated() >= df.size
                {
                    let (same, n) = compare_dense(&s, &d, sf.size, bufs).map_err(|(e, src)| {
                        if src {
                            ctx.rd("read", rel, e)
                        } else {
                            ctx.wd("read", rel, e)
                        }
                    })?;
                    ctx.hashed.fetch_add(n, Ordering::Relaxed);
                    same
                } else {
                    let (a, b) = hash_pair((&s, &sf), (&d, &df), bufs, zeros);
                    let (ha, n) = a.map_err(|e| ctx.rd("read", rel, e))?;
                    let (hb, _) = b.map_err(|e| ctx.wd("read", rel, e))?;
                    ctx.hashed.fetch_add(n, Ordering::Relaxed);
                    ha == hb
                };
                ctx.files_hashed.fetch_add(1, Ordering::Relaxed);
                if !same {
                    diffs.add(rel, "content differs");
                }
            }
        }
        Kind::Symlink => {
            let a = sys::readlink(sdir, name).map_err(|e| ctx.rd("read the symlink", rel, e))?;
            let b = sys::readlink(ddir, name).map_err(|e| ctx.wd("read the symlink", rel, e))?;
            if a != b {
                diffs.add(rel, format!("symlink target differs: {a:?} vs {b:?}"));
            }
            xattrs_by_path(sdir, ddir, name, rel, diffs)
                .map_err(|e| ctx.rd("read the extended attributes of", rel, e))?;
        }
        _ => {
            xattrs_by_path(sdir, ddir, name, rel, diffs)
                .map_err(|e| ctx.rd("read the extended attributes of", rel, e))?;
        }
    }
    Ok(())
}

fn xattrs_by_path(
    sdir: BorrowedFd<'_>,
    ddir: BorrowedFd<'_>,
    name: &CStr,
    rel: &Path,
    diffs: &Diffs,
) -> Result<(), Errno> {
    let sp = sys::proc_path(sdir, name);
    let dp = sys::proc_path(ddir, name);
    compare_xattrs(XTarget::Path(&sp), XTarget::Path(&dp), rel, diffs)
}

/// The fd is the entry that was `lstat`ed; returns its current stat.
fn check_same(fd: &OwnedFd, m: &Meta, path: &Path) -> Result<Meta, StateError> {
    let f = sys::fstat(fd.as_fd()).map_err(|e| StateError::io("stat", path, e))?;
    if f.ino != m.ino || f.dev != m.dev {
        return Err(StateError::changed(path, "it changed while being verified"));
    }
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(dir: &Path, name: &str, data: &[u8]) -> OwnedFd {
        let p = dir.join(name);
        std::fs::write(&p, data).unwrap();
        std::fs::File::open(&p).unwrap().into()
    }

    /// The byte-for-byte comparison of dense files: equal files are equal, a single byte changed
    /// anywhere (in the first chunk, past it, the very last) is caught.
    #[test]
    #[allow(clippy::unwrap_used)]
    fn dense_files_are_compared_byte_for_byte() {
        let t = tempfile::tempdir().unwrap();
        let chunk = (BLOCK * CHUNK_BLOCKS) as usize;
        let data: Vec<u8> = (0..chunk * 2 + 12345).map(|i| (i % 251) as u8).collect();
        let a = file(t.path(), "a", &data);
        let mut bufs = [Vec::new(), Vec::new()];
        let same = file(t.path(), "same", &data);
        assert_eq!(
            compare_dense(&a, &same, data.len() as u64, &mut bufs).unwrap(),
            (true, data.len() as u64)
        );
        for at in [0, 4096, chunk + 7, data.len() - 1] {
            let mut changed = data.clone();
            changed[at] ^= 1;
            let b = file(t.path(), &format!("b{at}"), &changed);
            assert!(
                !compare_dense(&a, &b, data.len() as u64, &mut bufs)
                    .unwrap()
                    .0,
                "a change at {at} was missed"
            );
        }
        let empty = file(t.path(), "empty", b"");
        assert!(compare_dense(&empty, &empty, 0, &mut bufs).unwrap().0);
        // One side longer than the size both had when they were compared.
        let longer = file(t.path(), "longer", &[data.as_slice(), b"x"].concat());
        assert!(
            !compare_dense(&a, &longer, data.len() as u64, &mut bufs)
                .unwrap()
                .0
        );
    }
}
