//! Errors that end a run, and the exit codes they map to.
//!
//! Display texts are lowercase, name the input and its location, and have no trailing period;
//! the caller adds context (which container, which file). A hint for the administrator goes in a
//! second paragraph (`\n\n`), so `main` can print `nixos-nspawn: {err:#}` and keep it readable.

use std::path::PathBuf;

/// Exit codes, documented in `--help` (see `cli.rs`). Fleet scripts rely on them.
pub mod exit {
    /// Everything done (or, with `--dry-run`, everything can be done) without follow-up.
    pub const SUCCESS: u8 = 0;
    /// A step failed after the checks passed: the run stopped there. What was done before
    /// stays done (the report lists it); a partial copy waits in its staging directory and the
    /// next run resumes it, `migrate --rollback NAME` undoes it.
    pub const ERROR: u8 = 1;
    /// The command line was wrong.
    pub const USAGE: u8 = 2;
    /// Migrated (or, with `--dry-run`, translatable), but some containers need manual follow-up:
    /// see the warnings with category `needs-human` in the report.
    pub const NEEDS_FOLLOW_UP: u8 = 3;
    /// Refused before the first write: a precondition failed (a legacy container runs, a
    /// destination is not ours, not enough space, the host changed since `--plan-out`, …).
    /// Nothing was written; the report says what to fix.
    pub const REFUSED: u8 = 4;
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file or directory under the host root could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A file could not be written.
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The user asked for something that cannot work; the message says why and what to do.
    #[error("{0}")]
    Usage(String),
    /// A precondition failed before anything was written (exit code 4).
    #[error("{0}")]
    Refused(String),
    /// A step of the migration failed (exit code 1); what was done before stays done.
    #[error(transparent)]
    Step(#[from] crate::execute::StepError),
    /// Anything else, with its context already in the message.
    #[error("{0}")]
    Other(String),
}

impl Error {
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Usage(_) => exit::USAGE,
            Error::Refused(_) => exit::REFUSED,
            Error::Step(e) if e.is_refusal() => exit::REFUSED,
            _ => exit::ERROR,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
