//! Carrying a nix profile directory (`/nix/var/nix/profiles/per-container/NAME`, holding
//! `system -> system-N-link -> /nix/store/…` and whatever the guest's nix created) to its new
//! place. The symlinks are recreated as symlinks: nothing under `/nix/store` is read or copied.
//! The old directory stays, so its generations stay GC roots until the admin removes it.

use std::ffi::CString;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rustix::fs::{self as rfs, Mode, RenameFlags};
use rustix::io::Errno;

use super::copy::{self, CopyConfig, Resume};
use super::error::{StateError, StateErrorKind};
use super::sys::{self, Kind};
use super::verify;
use super::{NoProgress, Verify};

/// What [`carry_profile`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProfileOutcome {
    /// Entries carried (links, and any directories or files the guest put there).
    pub entries: u64,
    /// Generation numbers found (`system-N-link`), ascending.
    pub generations: Vec<u64>,
    /// Where `system` points (normally `system-N-link`), if it exists.
    pub current: Option<PathBuf>,
    /// `to` already held an identical copy; nothing was written.
    pub already_done: bool,
}

/// Carry the profile directory `from` to `to` (REAL paths; `to` must not exist, or already be
/// an identical copy). Written to `to.parent/.NAME.partial` first, compared, then renamed.
///
/// # Errors
///
/// When `to` holds something different ([`StateErrorKind::DestOccupied`]), or on I/O errors.
pub fn carry_profile(from: &Path, to: &Path) -> Result<ProfileOutcome, StateError> {
    let from_fd = sys::open_root(from)?;
    let (generations, current) = generations(&from_fd, from)?;
    let name = match to.file_name() {
        Some(n) => n,
        None => {
            return Err(StateError::invalid(
                to,
                "the profile destination must end in a name",
            ));
        }
    };
    let parent = to.parent().unwrap_or(Path::new("/"));
    std::fs::create_dir_all(parent)
        .map_err(|e| StateError::write("create the directory", parent, parent, e))?;
    let parent_fd = sys::open_dir_path(parent).map_err(|e| StateError::io("open", parent, e))?;
    let cname = CString::new(name.as_bytes())
        .map_err(|_| StateError::invalid(to, "the path contains a NUL byte"))?;
    let workers = 1;

    match sys::lstat_at(parent_fd.as_fd(), &cname) {
        Ok(m) => {
            if m.kind() == Kind::Dir {
                let to_fd = sys::open_read(parent_fd.as_fd(), &cname, true)
                    .map_err(|e| StateError::io("open", to, e))?;
                let support = super::flags::probe(parent_fd.as_fd());
                let r =
                    verify::verify_fds(&from_fd, &to_fd, Verify::Full, from, to, workers, support)?;
                if r.is_clean() {
                    return Ok(ProfileOutcome {
                        entries: r.entries,
                        generations,
                        current,
                        already_done: true,
                    });
                }
                return Err(StateErrorKind::DestOccupied {
                    dest: to.to_path_buf(),
                    reason: format!("differs from the profile {} ({})", from.display(), r.summary()),
                    fix: "it was probably written by the new system already; compare the two and remove one"
                        .to_string(),
                }
                .into());
            }
            return Err(StateErrorKind::DestOccupied {
                dest: to.to_path_buf(),
                reason: format!("is a {}, not a profile directory", m.kind().name()),
                fix: "move it away and run again".to_string(),
            }
            .into());
        }
        Err(Errno::NOENT) => {}
        Err(e) => return Err(StateError::io("stat", to, e)),
    }

    let staging = format!(".{}.partial", name.to_string_lossy());
    let staging_path = parent.join(&staging);
    // A leftover of an interrupted run: it is ours (the name is), and tiny; start over.
    sys::remove_all_at(
        parent_fd.as_fd(),
        &CString::new(staging.as_bytes()).unwrap_or_default(),
    )
    .map_err(|e| StateError::write("remove", &staging_path, to, e))?;
    rfs::mkdirat(&parent_fd, staging.as_str(), Mode::from_raw_mode(0o700))
        .map_err(|e| StateError::write("create the directory", &staging_path, to, e))?;
    let st_fd =
        sys::open_dir_path(&staging_path).map_err(|e| StateError::io("open", &staging_path, e))?;
    let report = copy::copy_tree(
        &from_fd,
        st_fd,
        CopyConfig {
            src_label: from,
            dst_label: &staging_path,
            resume: Resume::Fresh,
            progress: &NoProgress,
            workers,
            checkpoint: None,
            checkpoint_every: Duration::from_secs(3600),
            flag_support: super::flags::probe(parent_fd.as_fd()),
        },
    )?;
    let st_fd =
        sys::open_dir_path(&staging_path).map_err(|e| StateError::io("open", &staging_path, e))?;
    rfs::syncfs(&st_fd).map_err(|e| StateError::write("sync", &staging_path, to, e))?;
    let r = verify::verify_fds(
        &from_fd,
        &st_fd,
        Verify::Full,
        from,
        &staging_path,
        workers,
        super::flags::probe(parent_fd.as_fd()),
    )?;
    if !r.is_clean() {
        return Err(StateErrorKind::VerifyFailed {
            src: from.to_path_buf(),
            staging: staging_path,
            report: Box::new(r),
        }
        .into());
    }
    rfs::renameat_with(
        &parent_fd,
        staging.as_str(),
        &parent_fd,
        &cname,
        RenameFlags::NOREPLACE,
    )
    .map_err(|e| StateError::write("rename the copy to", to, to, e))?;
    rfs::fsync(&parent_fd).map_err(|e| StateError::write("sync", parent, to, e))?;
    Ok(ProfileOutcome {
        entries: report.entries,
        generations,
        current,
        already_done: false,
    })
}

/// `system-N-link` numbers and the target of `system`.
fn generations(
    fd: &std::os::fd::OwnedFd,
    from: &Path,
) -> Result<(Vec<u64>, Option<PathBuf>), StateError> {
    let mut gens = Vec::new();
    let mut d = rfs::Dir::read_from(fd).map_err(|e| StateError::io("list", from, e))?;
    while let Some(ent) = d.read() {
        let ent = ent.map_err(|e| StateError::io("list", from, e))?;
        let n = ent.file_name().to_bytes();
        if let Some(num) = n
            .strip_prefix(b"system-")
            .and_then(|r| r.strip_suffix(b"-link"))
            .and_then(|r| std::str::from_utf8(r).ok())
            .and_then(|r| r.parse::<u64>().ok())
        {
            gens.push(num);
        }
    }
    gens.sort_unstable();
    let current = match sys::readlink(fd.as_fd(), c"system") {
        Ok(t) => Some(PathBuf::from(std::ffi::OsStr::from_bytes(t.as_bytes()))),
        Err(Errno::NOENT) | Err(Errno::INVAL) => None,
        Err(e) => return Err(StateError::io("read the symlink", &from.join("system"), e)),
    };
    Ok((gens, current))
}
