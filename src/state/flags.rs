//! Inode flags (`chattr`/`lsattr`, `FS_IOC_GETFLAGS`/`FS_IOC_SETFLAGS`): which ones the engine
//! copies, when they are set, and which ones a destination filesystem can hold.
//!
//! The table [`COPIED`] is the contract. Two phases matter:
//! - **early** flags change how data is stored and must be set while a file is still empty
//!   (`+C` no copy-on-write: btrfs refuses to change it on a file with data, and refuses to
//!   reflink between a `+C` and a normal file; `+c`/`+m` compression). Directories get them at
//!   creation, before their children, so children created later inherit what the source had.
//! - **late** flags are set after content, owner, mode, xattrs and times: `+i` (immutable) and
//!   `+a` (append-only) would forbid all of that, and `+S` (synchronous writes) would make the
//!   copy slow. The others (`+d`, `+A`) do not care and are set with them.
//!
//! Flags that describe how a filesystem stores a file (`e` extents, `I` indexed directory, `N`
//! inline data, `E` encrypted, `V` verity, `F` casefold, `x` DAX) belong to the filesystem, not
//! to the data, and are neither copied nor compared. The remaining user-settable ones that the
//! engine does not copy (`D`, `T`, `j`, `P`, `s`, `u`, `t`) are reported when a source entry has
//! them ([`NOT_COPIED`]), like flags the destination cannot hold: never silently dropped.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::fs::{self as rfs, IFlags, Mode, OFlags};
use rustix::io::Errno;

pub(crate) const APPEND: u32 = 0x0000_0020;
pub(crate) const IMMUTABLE: u32 = 0x0000_0010;

/// A flag the engine copies: its bit, its `chattr` letter, and whether it is set early.
pub(crate) struct Flag {
    pub bit: u32,
    pub letter: char,
    pub early: bool,
}

/// The flags that are copied and verified (bits from `linux/fs.h`).
pub(crate) const COPIED: &[Flag] = &[
    Flag {
        bit: 0x0080_0000, // FS_NOCOW_FL
        letter: 'C',
        early: true,
    },
    Flag {
        bit: 0x0000_0004, // FS_COMPR_FL
        letter: 'c',
        early: true,
    },
    Flag {
        bit: 0x0000_0400, // FS_NOCOMP_FL
        letter: 'm',
        early: true,
    },
    Flag {
        bit: 0x0000_0040, // FS_NODUMP_FL
        letter: 'd',
        early: false,
    },
    Flag {
        bit: 0x0000_0080, // FS_NOATIME_FL
        letter: 'A',
        early: false,
    },
    Flag {
        bit: 0x0000_0008, // FS_SYNC_FL
        letter: 'S',
        early: false,
    },
    Flag {
        bit: APPEND,
        letter: 'a',
        early: false,
    },
    Flag {
        bit: IMMUTABLE,
        letter: 'i',
        early: false,
    },
];

/// User-settable flags the engine does not copy; a source entry with one of them is reported.
pub(crate) const NOT_COPIED: &[(u32, char)] = &[
    (0x0001_0000, 'D'), // FS_DIRSYNC_FL
    (0x0002_0000, 'T'), // FS_TOPDIR_FL
    (0x0000_4000, 'j'), // FS_JOURNAL_DATA_FL
    (0x2000_0000, 'P'), // FS_PROJINHERIT_FL
    (0x0000_0001, 's'), // FS_SECRM_FL
    (0x0000_0002, 'u'), // FS_UNRM_FL
    (0x0000_8000, 't'), // FS_NOTAIL_FL
];

pub(crate) const fn mask(early_only: bool) -> u32 {
    let mut m = 0;
    let mut i = 0;
    while i < COPIED.len() {
        if !early_only || COPIED[i].early {
            m |= COPIED[i].bit;
        }
        i += 1;
    }
    m
}

/// Every copied flag.
pub(crate) const COPYABLE: u32 = mask(false);
/// The copied flags set while a file is empty / before a directory's children.
pub(crate) const EARLY: u32 = mask(true);
/// Reported when present in the source.
pub(crate) const UNCOPIED: u32 = {
    let mut m = 0;
    let mut i = 0;
    while i < NOT_COPIED.len() {
        m |= NOT_COPIED[i].0;
        i += 1;
    }
    m
};

/// `+C+i` for a mask of flags (copied and not-copied ones; others are left out).
pub(crate) fn letters(bits: u32) -> String {
    let mut s = String::new();
    for f in COPIED {
        if bits & f.bit != 0 {
            s.push('+');
            s.push(f.letter);
        }
    }
    for (bit, l) in NOT_COPIED {
        if bits & bit != 0 {
            s.push('+');
            s.push(*l);
        }
    }
    s
}

/// The flags of an open regular file or directory; 0 when the filesystem has none
/// (`ENOTTY`, `EOPNOTSUPP`, `EINVAL`, `ENOSYS`).
pub(crate) fn get(fd: BorrowedFd<'_>) -> Result<u32, Errno> {
    match rfs::ioctl_getflags(fd) {
        Ok(f) => Ok(f.bits()),
        Err(Errno::NOTTY | Errno::OPNOTSUPP | Errno::INVAL | Errno::NOSYS) => Ok(0),
        Err(e) => Err(e),
    }
}

pub(crate) fn set(fd: BorrowedFd<'_>, bits: u32) -> Result<(), Errno> {
    rfs::ioctl_setflags(fd, IFlags::from_bits_retain(bits))
}

/// Bring the copied flags of `fd` (whose current flags are `cur`) to `want & COPYABLE`, keeping
/// its other flags. When the whole set is refused, the flags are tried one at a time (`+i`/`+a`
/// last). Returns the flags that could not be set.
pub(crate) fn apply(fd: BorrowedFd<'_>, cur: u32, want: u32) -> Result<u32, Errno> {
    let target = (cur & !COPYABLE) | (want & COPYABLE);
    if target == cur {
        return Ok(0);
    }
    match set(fd, target) {
        Ok(()) => {}
        Err(Errno::OPNOTSUPP | Errno::INVAL | Errno::NOTTY) => {
            // One at a time: first clear what must go, then add each wanted flag.
            let mut now = cur & !(COPYABLE & !want);
            if now != cur {
                set(fd, now)?;
            }
            let mut lost = 0;
            for f in COPIED {
                if want & f.bit != 0 && now & f.bit == 0 {
                    match set(fd, now | f.bit) {
                        Ok(()) => now |= f.bit,
                        Err(Errno::OPNOTSUPP | Errno::INVAL | Errno::NOTTY) => lost |= f.bit,
                        Err(e) => return Err(e),
                    }
                }
            }
            return Ok(lost | (want & COPYABLE & !get(fd)?));
        }
        Err(e) => return Err(e),
    }
    // Some filesystems accept and silently drop a flag: read it back.
    Ok(want & COPYABLE & !get(fd)?)
}

/// Which copied flags the filesystem of the directory `dir` can hold, tried on an unnamed
/// temporary file (`O_TMPFILE`: nothing appears in the directory, nothing stays). Where no file
/// can be made (a read-only mount being checked again), the filesystem type decides
/// ([`known_support`]).
pub(crate) fn probe(dir: BorrowedFd<'_>) -> u32 {
    let fd: OwnedFd = match rfs::openat(
        dir,
        c".",
        OFlags::TMPFILE | OFlags::RDWR | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o600),
    ) {
        Ok(fd) => fd,
        Err(_) => return known_support(dir),
    };
    let base = match rfs::ioctl_getflags(fd.as_fd()) {
        Ok(f) => f.bits(),
        Err(Errno::NOTTY | Errno::OPNOTSUPP | Errno::INVAL | Errno::NOSYS) => return 0,
        Err(_) => return known_support(dir),
    };
    let mut supported = 0;
    for f in COPIED {
        if base & f.bit != 0 {
            supported |= f.bit;
            continue;
        }
        if set(fd.as_fd(), base | f.bit).is_ok() {
            if get(fd.as_fd()).is_ok_and(|g| g & f.bit != 0) {
                supported |= f.bit;
            }
            // Back to the start; an immutable or append-only flag must go before anything else.
            let _ = set(fd.as_fd(), base);
        }
    }
    supported
}

/// The copied flags a filesystem type is known to hold (Linux 6.x): every one on btrfs; `aAdSi`
/// on XFS and ext2/3/4, `aAdi` on tmpfs (no `+C`, no compression flags); all of them, so that
/// verification stays strict, for a type not in this list.
fn known_support(dir: BorrowedFd<'_>) -> u32 {
    const TMPFS: u32 = APPEND | IMMUTABLE | 0x40 | 0x80;
    #[allow(clippy::useless_conversion, clippy::unnecessary_cast)]
    match rfs::fstatfs(dir).map(|s| s.f_type as i64) {
        Ok(0x5846_5342) | Ok(0xEF53) => TMPFS | 0x08,
        Ok(0x0102_1994) => TMPFS,
        _ => COPYABLE,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_splits_early_and_late_and_names_letters() {
        assert_eq!(EARLY, 0x0080_0000 | 0x4 | 0x400);
        assert_eq!(COPYABLE & (IMMUTABLE | APPEND), IMMUTABLE | APPEND);
        assert_eq!(COPYABLE & UNCOPIED, 0);
        assert_eq!(letters(0x0080_0000 | IMMUTABLE | 0x0001_0000), "+C+i+D");
        assert_eq!(
            letters(0x0008_0000),
            "",
            "e (extents) belongs to the filesystem"
        );
    }
}
