//! Atomic, idempotent file writes.
//!
//! A file is written to a temporary name in the same directory, flushed with `fsync`, renamed
//! over the target, and the directory is synced, so a crash leaves either the old or the new
//! file, never half of one. When the target already holds exactly the new bytes (and mode),
//! nothing is written at all: a re-run changes no timestamp.
//!
//! Not guaranteed: atomicity on filesystems without POSIX rename semantics, and durability when
//! the disk lies about flushes.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// What [`write_atomic`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Written {
    /// The file did not exist or differed, and now holds the new content.
    Changed,
    /// The file already held exactly this content and mode; nothing was touched.
    Unchanged,
}

/// Write `bytes` to `path` with `mode`, atomically; create parent directories (0755) as needed.
/// Refuses to replace a symlink or a non-file (the caller names the fix).
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<Written> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                format!(
                    "{} is a symlink (probably into the Nix store); remove it or choose another output file",
                    path.display()
                ),
            ));
        }
        Ok(m) if !m.is_file() => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                format!("{} exists and is not a regular file", path.display()),
            ));
        }
        Ok(m) => {
            if m.permissions().mode() & 0o7777 == mode
                && m.len() == bytes.len() as u64
                && crate::host::read_no_follow(path)? == bytes
            {
                return Ok(Written::Unchanged);
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let dir = path.parent().ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "path has no parent directory",
        )
    })?;
    std::fs::create_dir_all(dir)?;
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(
        ".{file_name}.nixos-nspawn-tmp.{}",
        std::process::id()
    ));
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(bytes)?;
        // The umask may have narrowed the mode.
        f.set_permissions(std::fs::Permissions::from_mode(mode))?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map(|()| Written::Changed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn writes_then_is_a_no_op() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("a/b/c.nix");
        assert_eq!(write_atomic(&p, b"x", 0o644).unwrap(), Written::Changed);
        let m1 = std::fs::metadata(&p).unwrap();
        assert_eq!(write_atomic(&p, b"x", 0o644).unwrap(), Written::Unchanged);
        let m2 = std::fs::metadata(&p).unwrap();
        assert_eq!(
            (m1.ino(), m1.mtime_nsec(), m1.ctime_nsec()),
            (m2.ino(), m2.mtime_nsec(), m2.ctime_nsec())
        );
        assert_eq!(write_atomic(&p, b"y", 0o600).unwrap(), Written::Changed);
        assert_eq!(std::fs::read(&p).unwrap(), b"y");
        assert_eq!(std::fs::metadata(&p).unwrap().mode() & 0o7777, 0o600);
        // No temporary files left behind.
        assert_eq!(std::fs::read_dir(p.parent().unwrap()).unwrap().count(), 1);
    }

    #[test]
    fn refuses_to_replace_a_symlink() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("l");
        std::os::unix::fs::symlink("/nix/store/x", &p).unwrap();
        let e = write_atomic(&p, b"x", 0o644).unwrap_err();
        assert!(e.to_string().contains("symlink"), "{e}");
    }
}
