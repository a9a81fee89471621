//! Atomic, idempotent file writes, relative to a directory descriptor.
//!
//! A file is written to a temporary name in the same directory, flushed with `fsync`, renamed
//! over the target, and the directory is synced, so a crash leaves either the old or the new
//! file, never half of one. When the target already holds exactly the new bytes (and mode),
//! nothing is written at all: a re-run changes no timestamp.
//!
//! Everything happens relative to the parent directory's descriptor (which
//! [`crate::host::HostRoot::write_atomic`] opens confined to the host root), and the target is
//! never followed if it is a symlink: no path string is ever resolved here.
//!
//! Not guaranteed: atomicity on filesystems without POSIX rename semantics, and durability when
//! the disk lies about flushes.

use rustix::fs::{self as rfs, AtFlags, FileType, Mode, OFlags};
use rustix::io::Errno;
use std::ffi::{CStr, CString};
use std::io::{self, Read, Write};
use std::os::fd::BorrowedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// What [`write_atomic_at`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Written {
    /// The file did not exist or differed, and now holds the new content.
    Changed,
    /// The file already held exactly this content and mode; nothing was touched.
    Unchanged,
}

/// Write `bytes` to `name` in the directory `dir` with `mode`, atomically. `label` is the path
/// used in messages. Refuses to replace a symlink or a non-file (the caller names the fix).
pub fn write_atomic_at(
    dir: BorrowedFd<'_>,
    name: &CStr,
    label: &Path,
    bytes: &[u8],
    mode: u32,
) -> io::Result<Written> {
    match rfs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Symlink => {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!(
                    "{} is a symlink (probably into the Nix store); remove it or choose another output file",
                    label.display()
                ),
            ));
        }
        Ok(st) if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile => {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{} exists and is not a regular file", label.display()),
            ));
        }
        Ok(st) => {
            if st.st_mode & 0o7777 == mode
                && st.st_size as u64 == bytes.len() as u64
                && read_at(dir, name)? == bytes
            {
                return Ok(Written::Unchanged);
            }
        }
        Err(Errno::NOENT) => {}
        Err(e) => return Err(e.into()),
    }
    let mut tmp = b".".to_vec();
    tmp.extend_from_slice(name.to_bytes());
    tmp.extend_from_slice(format!(".nixos-nspawn-tmp.{}", std::process::id()).as_bytes());
    let tmp = CString::new(tmp)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "name contains NUL"))?;
    // A leftover of a killed run of the same pid is ours to replace.
    let _ = rfs::unlinkat(dir, &tmp, AtFlags::empty());
    let result = (|| -> io::Result<()> {
        let fd = rfs::openat(
            dir,
            &tmp,
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(mode),
        )?;
        let mut f = std::fs::File::from(fd);
        f.write_all(bytes)?;
        // The umask may have narrowed the mode.
        rfs::fchmod(&f, Mode::from_raw_mode(mode))?;
        f.sync_all()?;
        rfs::renameat(dir, &tmp, dir, name)?;
        rfs::fsync(dir)?;
        Ok(())
    })();
    if result.is_err() {
        let _ = rfs::unlinkat(dir, &tmp, AtFlags::empty());
    }
    result.map(|()| Written::Changed)
}

/// Read the regular file `name` in `dir` without following a link and without blocking.
pub fn read_at(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<Vec<u8>> {
    let flags =
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC;
    let fd = match rfs::openat(dir, name, flags | OFlags::NOATIME, Mode::empty()) {
        Err(Errno::PERM) => rfs::openat(dir, name, flags, Mode::empty())?,
        r => r?,
    };
    if FileType::from_raw_mode(rfs::fstat(&fd)?.st_mode) != FileType::RegularFile {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{} is not a regular file",
                std::ffi::OsStr::from_bytes(name.to_bytes()).to_string_lossy()
            ),
        ));
    }
    let mut buf = Vec::new();
    std::fs::File::from(fd).read_to_end(&mut buf)?;
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;
    use std::os::unix::fs::MetadataExt;

    fn dir_fd(p: &Path) -> std::os::fd::OwnedFd {
        rfs::open(p, OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty()).unwrap()
    }

    #[test]
    fn writes_then_is_a_no_op() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("c.nix");
        let fd = dir_fd(d.path());
        let w = |b: &[u8], m| write_atomic_at(fd.as_fd(), c"c.nix", &p, b, m).unwrap();
        assert_eq!(w(b"x", 0o644), Written::Changed);
        let m1 = std::fs::metadata(&p).unwrap();
        assert_eq!(w(b"x", 0o644), Written::Unchanged);
        let m2 = std::fs::metadata(&p).unwrap();
        assert_eq!(
            (m1.ino(), m1.mtime_nsec(), m1.ctime_nsec()),
            (m2.ino(), m2.mtime_nsec(), m2.ctime_nsec())
        );
        assert_eq!(w(b"y", 0o600), Written::Changed);
        assert_eq!(std::fs::read(&p).unwrap(), b"y");
        assert_eq!(std::fs::metadata(&p).unwrap().mode() & 0o7777, 0o600);
        // No temporary files left behind.
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 1);
    }

    #[test]
    fn refuses_to_replace_a_symlink() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("l");
        std::os::unix::fs::symlink("/nix/store/x", &p).unwrap();
        let fd = dir_fd(d.path());
        let e = write_atomic_at(fd.as_fd(), c"l", &p, b"x", 0o644).unwrap_err();
        assert!(e.to_string().contains("symlink"), "{e}");
    }
}
