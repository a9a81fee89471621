//! The journal: an append-only file of JSON lines in the staging directory, recording which
//! source a staging tree belongs to and how far the migration got. `fsync`ed at every
//! checkpoint. After the final rename it is moved next to the destination as
//! `.NAME.journal`, where a later run finds the `done` record and knows the copy is complete.
//!
//! A line torn by a crash (kill -9 while writing) does not parse and is ignored.

use std::ffi::CStr;
use std::io::Write;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Path, PathBuf};

use rustix::fs::{self as rfs, Mode, OFlags};
use rustix::io::Errno;
use serde::{Deserialize, Serialize};

use super::error::StateError;

/// 2: `src` is relative to the directory holding the journal (1: an absolute path).
pub(crate) const VERSION: u32 = 2;

/// Which source a journal belongs to: the path and the root directory's inode.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SourceId {
    /// Relative to the destination's parent (`../nixos-containers/web`); an absolute path in
    /// journals of version 1.
    pub src: String,
    pub dev: u64,
    pub ino: u64,
}

impl SourceId {
    /// Is the recorded source `self` the source `now` (whose absolute path is `abs`)? A
    /// relative record matches by path and inode: the device number changes when a disk is
    /// mounted elsewhere (another machine, a loop device, `/` after booting it). An absolute
    /// record (version 1) matches only exactly, as before.
    pub fn matches(&self, now: &SourceId, abs: &str) -> bool {
        if self.src.starts_with('/') {
            self.src == abs && self.dev == now.dev && self.ino == now.ino
        } else {
            self.src == now.src && self.ino == now.ino
        }
    }

    /// The source for a message: a relative record resolved against `parent`.
    pub fn display(&self, parent: &Path) -> String {
        if self.src.starts_with('/') {
            self.src.clone()
        } else {
            // Lexically: the record was made from real paths, so `..` undoes a component.
            let mut p = PathBuf::new();
            for c in parent.join(&self.src).components() {
                match c {
                    std::path::Component::ParentDir => {
                        p.pop();
                    }
                    c => p.push(c.as_os_str()),
                }
            }
            p.display().to_string()
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub(crate) enum Event {
    Start {
        version: u32,
        #[serde(flatten)]
        source: SourceId,
        dest: String,
        mode: String,
        verify: String,
        resume: String,
        unix_time: u64,
    },
    Checkpoint {
        entries: u64,
        bytes: u64,
    },
    Copied {
        entries: u64,
        bytes: u64,
    },
    VerifyFailed {
        differences: u64,
    },
    Verified {
        level: String,
        entries: u64,
    },
    Renamed {
        replaced: Option<String>,
    },
    Moved,
    Done,
}

pub(crate) struct Journal {
    file: std::fs::File,
    path: PathBuf,
}

impl Journal {
    /// Open (creating) `name` in `dir` for appending.
    pub fn open(dir: BorrowedFd<'_>, name: &CStr, path: &Path) -> Result<Journal, StateError> {
        let fd = rfs::openat(
            dir,
            name,
            OFlags::WRONLY | OFlags::CREATE | OFlags::APPEND | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )
        .map_err(|e| StateError::write("open the journal", path, path, e))?;
        let file = std::fs::File::from(fd);
        Ok(Journal {
            file,
            path: path.to_path_buf(),
        })
    }

    /// Make what was appended durable.
    pub fn sync(&self) -> Result<(), StateError> {
        rfs::fsync(self.file.as_fd())
            .map_err(|e| StateError::write("sync the journal", &self.path, &self.path, e))
    }

    /// Append one event; with `sync`, make it durable before returning.
    pub fn append(&mut self, ev: &Event, sync: bool) -> Result<(), StateError> {
        let mut line = serde_json::to_vec(ev).map_err(|e| {
            StateError::invalid(&self.path, format!("cannot encode a journal record: {e}"))
        })?;
        line.push(b'\n');
        self.file
            .write_all(&line)
            .map_err(|e| StateError::write("write the journal", &self.path, &self.path, e))?;
        if sync {
            self.sync()?;
        }
        Ok(())
    }
}

/// Read the events of `name` in `dir`; `None` when there is no journal.
pub(crate) fn read(
    dir: BorrowedFd<'_>,
    name: &CStr,
    path: &Path,
) -> Result<Option<Vec<Event>>, StateError> {
    // NOATIME: a re-run after success reads the journal and must change nothing, not even an
    // access time (root may always use it; anyone else falls back below).
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let opened = match rfs::openat(dir, name, flags | OFlags::NOATIME, Mode::empty()) {
        Err(Errno::PERM) => rfs::openat(dir, name, flags, Mode::empty()),
        other => other,
    };
    let fd = match opened {
        Ok(fd) => fd,
        Err(Errno::NOENT) => return Ok(None),
        Err(e) => return Err(StateError::io("open the journal", path, e)),
    };
    let file = std::fs::File::from(fd);
    let text =
        std::io::read_to_string(file).map_err(|e| StateError::io("read the journal", path, e))?;
    Ok(Some(
        text.lines()
            .filter_map(|l| serde_json::from_str::<Event>(l).ok())
            .collect(),
    ))
}

/// The source a journal's last `start` record names.
pub(crate) fn source_of(events: &[Event]) -> Option<&SourceId> {
    events.iter().rev().find_map(|e| match e {
        Event::Start { source, .. } => Some(source),
        _ => None,
    })
}

/// Did the last run recorded finish (`done` after its last `start`)?
pub(crate) fn is_done(events: &[Event]) -> bool {
    let last_start = events
        .iter()
        .rposition(|e| matches!(e, Event::Start { .. }));
    match last_start {
        Some(i) => events[i..].iter().any(|e| matches!(e, Event::Done)),
        None => false,
    }
}

/// The mode (`copy`, `move`) of the last `start`.
pub(crate) fn mode_of(events: &[Event]) -> Option<&str> {
    events.iter().rev().find_map(|e| match e {
        Event::Start { mode, .. } => Some(mode.as_str()),
        _ => None,
    })
}

/// Did the last run recorded pass its verification (`verified` after its last `start`)?
pub(crate) fn is_verified(events: &[Event]) -> bool {
    let last_start = events
        .iter()
        .rposition(|e| matches!(e, Event::Start { .. }));
    last_start.is_some_and(|i| {
        events[i..]
            .iter()
            .any(|e| matches!(e, Event::Verified { .. }))
    })
}

/// The last event after the last `start`.
pub(crate) fn last(events: &[Event]) -> Option<&Event> {
    events.last()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn start(src: &str) -> Event {
        Event::Start {
            version: VERSION,
            source: SourceId {
                src: src.into(),
                dev: 1,
                ino: 2,
            },
            dest: "/var/lib/machines/web".into(),
            mode: "copy".into(),
            verify: "full".into(),
            resume: "fresh".into(),
            unix_time: 0,
        }
    }

    /// Issue 7, item 10: a disk migrated at /mnt and checked again elsewhere (another device
    /// number too) is the same source; a version-1 record still matches only exactly.
    #[test]
    fn a_relative_record_matches_by_path_and_inode_whatever_the_device() {
        let rec = SourceId {
            src: "../nixos-containers/web".into(),
            dev: 0x801,
            ino: 42,
        };
        let now = SourceId {
            dev: 0x700,
            ..rec.clone()
        };
        assert!(rec.matches(&now, "/var/lib/nixos-containers/web"));
        assert!(!rec.matches(
            &SourceId {
                ino: 43,
                ..now.clone()
            },
            "/x"
        ));
        let other = SourceId {
            src: "../nixos-containers/db".into(),
            ..now.clone()
        };
        assert!(!rec.matches(&other, "/x"));
        let v1 = SourceId {
            src: "/mnt/var/lib/nixos-containers/web".into(),
            dev: 0x801,
            ino: 42,
        };
        assert!(v1.matches(
            &SourceId {
                dev: 0x801,
                ..now.clone()
            },
            "/mnt/var/lib/nixos-containers/web"
        ));
        assert!(!v1.matches(&now, "/mnt/var/lib/nixos-containers/web"));
        assert_eq!(
            rec.display(Path::new("/mnt/var/lib/machines")),
            "/mnt/var/lib/nixos-containers/web"
        );
    }

    #[test]
    fn a_torn_last_line_is_ignored_and_done_belongs_to_the_last_start() {
        let t = tempfile::tempdir().unwrap();
        let dir = rustix::fs::openat(
            rustix::fs::CWD,
            t.path(),
            OFlags::RDONLY | OFlags::DIRECTORY,
            Mode::empty(),
        )
        .unwrap();
        let p = t.path().join("journal");
        let mut j = Journal::open(dir.as_fd(), c"journal", &p).unwrap();
        j.append(&start("/a"), true).unwrap();
        j.append(&Event::Done, true).unwrap();
        j.append(&start("/b"), true).unwrap();
        j.append(
            &Event::Checkpoint {
                entries: 5,
                bytes: 9,
            },
            false,
        )
        .unwrap();
        drop(j);
        // A crash in the middle of a write.
        let mut text = std::fs::read(&p).unwrap();
        text.extend_from_slice(b"{\"event\":\"cop");
        std::fs::write(&p, text).unwrap();
        let ev = read(dir.as_fd(), c"journal", &p).unwrap().unwrap();
        assert_eq!(ev.len(), 4);
        assert_eq!(source_of(&ev).map(|s| s.src.as_str()), Some("/b"));
        assert!(!is_done(&ev), "the done record belongs to the earlier run");
        assert_eq!(
            last(&ev),
            Some(&Event::Checkpoint {
                entries: 5,
                bytes: 9
            })
        );
        assert!(read(dir.as_fd(), c"missing", &p).unwrap().is_none());
        // The format is stable JSON lines: `event` names the record.
        let line = std::fs::read_to_string(&p).unwrap();
        assert!(
            line.starts_with("{\"event\":\"start\",\"version\":2,\"src\":\"/a\""),
            "{line}"
        );
    }
}
