//! How much space a copy needs, and how much the destination has.

use std::collections::HashSet;
use std::ffi::CStr;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::io::Errno;

use super::copy::join;
use super::error::StateError;
use super::sys::{self, Kind, Meta};

/// What copying a tree will take.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SpaceNeed {
    /// Entries below the root.
    pub entries: u64,
    /// Sum of regular file sizes (apparent, holes included), hard links counted once: what the
    /// progress bar counts.
    pub bytes: u64,
    /// Bytes allocated on disk (`st_blocks * 512`) for every entry including the root and
    /// directories, hard links counted once: what the copy will allocate (sparse files stay
    /// sparse).
    pub allocated: u64,
    /// Mount points below the root, not counted.
    pub skipped_mounts: u64,
}

/// Walk `src` (a real path; never following symlinks, never crossing mounts) and add up.
pub fn required_space(src: &Path) -> Result<SpaceNeed, StateError> {
    let fd = sys::open_root(src)?;
    required_space_fd(&fd, src)
}

pub(crate) fn required_space_fd(root: &OwnedFd, label: &Path) -> Result<SpaceNeed, StateError> {
    let rm = sys::fstat(root.as_fd()).map_err(|e| StateError::io("stat", label, e))?;
    let mut need = SpaceNeed {
        allocated: rm.allocated(),
        ..SpaceNeed::default()
    };
    let mut seen: HashSet<(u64, u64)> = HashSet::new();
    walk_below(root, label, &mut |_, _, m, mount| {
        // Nested btrfs subvolumes are copied, so they count; mount points are not.
        if mount {
            need.skipped_mounts += 1;
            return;
        }
        need.entries += 1;
        if m.kind() != Kind::Dir && m.nlink > 1 && !seen.insert((m.dev, m.ino)) {
            return;
        }
        need.allocated += m.allocated();
        if m.kind() == Kind::File {
            need.bytes += m.size;
        }
    })?;
    Ok(need)
}

/// The mount points below `root`: how many, and the relative paths of the first `max`. Read
/// from the mount table (`/proc/self/mountinfo`), so that a check before `--state move` costs
/// nothing per file; where that table or the directory's path cannot be read, by walking the
/// tree as the copy does (a mount root per `statx`, or another `st_dev` that is not a nested
/// btrfs subvolume).
pub(crate) fn mounts_below(
    root: &OwnedFd,
    label: &Path,
    max: usize,
) -> Result<(usize, Vec<PathBuf>), StateError> {
    match mounts_below_from_table(root, max) {
        Some(found) => Ok(found),
        None => mounts_below_by_walk(root, label, max),
    }
}

/// [`mounts_below`] by walking the tree, in walk order.
fn mounts_below_by_walk(
    root: &OwnedFd,
    label: &Path,
    max: usize,
) -> Result<(usize, Vec<PathBuf>), StateError> {
    let mut count = 0;
    let mut first = Vec::new();
    walk_below(root, label, &mut |dir, name, _, mount| {
        if mount {
            count += 1;
            if first.len() < max {
                first.push(dir.join(sys::os(name)));
            }
        }
    })?;
    Ok((count, first))
}

/// [`mounts_below`] from the mount table: the mount points whose path lies below the path of
/// `root` as this process sees it (`/proc/self/fd`, the same view as the table's).
fn mounts_below_from_table(root: &OwnedFd, max: usize) -> Option<(usize, Vec<PathBuf>)> {
    use std::os::fd::AsRawFd;
    let dir = std::fs::read_link(format!("/proc/self/fd/{}", root.as_raw_fd())).ok()?;
    if !dir.is_absolute() || dir.to_string_lossy().ends_with(" (deleted)") {
        return None;
    }
    let table = std::fs::read("/proc/self/mountinfo").ok()?;
    let mut below: Vec<PathBuf> = mount_points(&table)
        .filter_map(|p| p.strip_prefix(&dir).ok().map(Path::to_path_buf))
        .filter(|rel| !rel.as_os_str().is_empty())
        .collect();
    below.sort();
    below.dedup();
    let n = below.len();
    below.truncate(max);
    Some((n, below))
}

/// The mount points (field 5) of a `mountinfo` table, with its octal escapes (`\040` for a
/// space, `\011`, `\012`, `\134`) decoded.
fn mount_points(table: &[u8]) -> impl Iterator<Item = PathBuf> + '_ {
    use std::os::unix::ffi::OsStringExt;
    table.split(|&b| b == b'\n').filter_map(|line| {
        let field = line.split(|&b| b == b' ').nth(4)?;
        let mut out = Vec::with_capacity(field.len());
        let mut i = 0;
        while i < field.len() {
            let octal = field.get(i + 1..i + 4).and_then(|d| {
                d.iter()
                    .all(|c| (b'0'..=b'7').contains(c))
                    .then(|| d.iter().fold(0u32, |v, c| v * 8 + u32::from(c - b'0')))
            });
            match (field[i], octal) {
                (b'\\', Some(v)) if v <= 0xff => {
                    out.push(v as u8);
                    i += 4;
                }
                (c, _) => {
                    out.push(c);
                    i += 1;
                }
            }
        }
        Some(PathBuf::from(std::ffi::OsString::from_vec(out)))
    })
}

/// Every entry below `root`, depth first, never following symlinks and never crossing into a
/// mount (nested btrfs subvolumes are walked): `visit(directory, name, lstat, is_mount_point)`
/// with the directory relative to `root`. Only the deepest `sys::FD_WINDOW` levels keep their
/// descriptor (see `sys::open_parent`).
fn walk_below(
    root: &OwnedFd,
    label: &Path,
    visit: &mut dyn FnMut(&Path, &CStr, &Meta, bool),
) -> Result<(), StateError> {
    let rm = sys::fstat(root.as_fd()).map_err(|e| StateError::io("stat", label, e))?;
    let dup = root
        .try_clone()
        .map_err(|e| StateError::io("duplicate a descriptor of", label, e))?;
    struct Level {
        fd: Option<OwnedFd>,
        id: (u64, u64),
        names: Vec<std::ffi::CString>,
        next: usize,
    }
    let names = sys::dir_names(dup.as_fd()).map_err(|e| StateError::io("list", label, e))?;
    let mut stack = vec![Level {
        fd: Some(dup),
        id: (rm.dev, rm.ino),
        names,
        next: 0,
    }];
    let mut rel = PathBuf::new();
    while let Some(top) = stack.last_mut() {
        if top.next == top.names.len() {
            let Some(done) = stack.pop() else { break };
            if let Some(parent) = stack.last_mut() {
                rel.pop();
                if parent.fd.is_none() {
                    let fd = sys::open_parent_of(done.fd.as_ref(), parent.id);
                    parent.fd = Some(fd.map_err(|e| {
                        StateError::changed(&join(label, &rel), format!("cannot go back up ({e})"))
                    })?);
                }
            }
            continue;
        }
        let name = std::mem::take(&mut top.names[top.next]);
        top.next += 1;
        let Some(dir) = top.fd.as_ref() else {
            return Err(StateError::invalid(
                label,
                "internal error: a walk lost its place",
            ));
        };
        let m = match sys::lstat_at(dir.as_fd(), &name) {
            Ok(m) => m,
            Err(Errno::NOENT) => continue,
            Err(e) => {
                return Err(StateError::io(
                    "stat",
                    &join(label, &rel.join(sys::os(&name))),
                    e,
                ));
            }
        };
        let mount = (m.dev != top.id.0 || m.mount_root)
            && sys::crossing(dir.as_fd(), top.id.0, &name, &m) == sys::Crossing::Mount;
        visit(&rel, &name, &m, mount);
        if mount || m.kind() != Kind::Dir {
            continue;
        }
        rel.push(sys::os(&name));
        let sub = sys::open_read(dir.as_fd(), &name, true)
            .map_err(|e| StateError::io("open", &join(label, &rel), e))?;
        let names = sys::dir_names(sub.as_fd())
            .map_err(|e| StateError::io("list", &join(label, &rel), e))?;
        stack.push(Level {
            fd: Some(sub),
            id: (m.dev, m.ino),
            names,
            next: 0,
        });
        let n = stack.len();
        if n > sys::FD_WINDOW + 1 {
            stack[n - sys::FD_WINDOW - 1].fd = None;
        }
    }
    Ok(())
}

/// Bytes available to an unprivileged writer on the filesystem holding `path` (`f_bavail`):
/// deliberately conservative, the root reserve is left alone.
pub fn free_space(path: &Path) -> Result<u64, StateError> {
    let v = rustix::fs::statvfs(path)
        .map_err(|e| StateError::io("query the free space of", path, e))?;
    Ok(v.f_bavail.saturating_mul(v.f_frsize))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The mount table and the walk find the same mount points (tmpfs mounts, one with a
    /// space in its name, one deeper down; nested btrfs subvolumes are covered by the state
    /// tests on a real btrfs). As root only: it mounts.
    #[test]
    #[allow(clippy::unwrap_used)]
    fn the_mount_table_and_the_walk_agree() {
        if !rustix::process::geteuid().is_root() {
            eprintln!("skipped: needs root to mount");
            return;
        }
        struct Unmount(Vec<PathBuf>);
        impl Drop for Unmount {
            fn drop(&mut self) {
                for m in self.0.iter().rev() {
                    let _ = std::process::Command::new("umount").arg(m).status();
                }
            }
        }
        let t = tempfile::tempdir().unwrap();
        let state = t.path().join("state");
        let mut mounted = Unmount(Vec::new());
        for rel in ["srv/my data", "var/lib/a/b/c/deep", "z"] {
            let at = state.join(rel);
            std::fs::create_dir_all(&at).unwrap();
            let ok = std::process::Command::new("mount")
                .args(["-t", "tmpfs", "nn-unit", at.to_str().unwrap()])
                .status()
                .unwrap()
                .success();
            assert!(ok, "mount tmpfs on {}", at.display());
            mounted.0.push(at);
        }
        std::fs::write(state.join("var/lib/file"), b"x").unwrap();
        let fd = sys::open_root(&state).unwrap();
        let table = mounts_below_from_table(&fd, 10).unwrap();
        let (n, mut walked) = mounts_below_by_walk(&fd, &state, 10).unwrap();
        walked.sort();
        assert_eq!(table, (n, walked));
        assert_eq!(
            table.1,
            [
                PathBuf::from("srv/my data"),
                PathBuf::from("var/lib/a/b/c/deep"),
                PathBuf::from("z")
            ]
        );
        assert_eq!(
            mounts_below_from_table(&fd, 1).unwrap().0,
            3,
            "counted past the list"
        );
    }

    #[test]
    fn mount_points_are_read_from_mountinfo_with_their_escapes_decoded() {
        let table = b"22 1 0:21 / /proc rw,nosuid - proc proc rw\n\
36 25 0:33 / /var/lib/nixos-containers/web/srv/my\\040data rw - tmpfs t rw\n\
37 25 0:34 / /x\\134y\\011z rw - tmpfs t rw\n";
        let got: Vec<PathBuf> = mount_points(table).collect();
        assert_eq!(
            got,
            [
                PathBuf::from("/proc"),
                PathBuf::from("/var/lib/nixos-containers/web/srv/my data"),
                PathBuf::from("/x\\y\tz"),
            ]
        );
    }
}
