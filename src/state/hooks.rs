//! Hidden test hooks: let a test run code at a precise point of a walk, e.g. swap a directory
//! for a symlink between the `lstat` and the `open` to prove the race is harmless. Costs one
//! relaxed atomic load per entry when unset.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

/// Where in the walk a hook runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HookPoint {
    /// After listing a directory, before the entry is `lstat`ed.
    BeforeEntry,
    /// After the `lstat`, before the entry is opened.
    BeforeOpen,
}

type Hook = Arc<dyn Fn(HookPoint, &Path) + Send + Sync>;

static ACTIVE: AtomicBool = AtomicBool::new(false);
static HOOK: RwLock<Option<Hook>> = RwLock::new(None);

/// Install (or with `None`, remove) the hook. The hook gets the source path of the entry.
/// Process-wide: only for tests that run alone in their test binary.
#[doc(hidden)]
pub fn set_hook(hook: Option<Hook>) {
    if let Ok(mut h) = HOOK.write() {
        ACTIVE.store(hook.is_some(), Ordering::SeqCst);
        *h = hook;
    }
}

fn call(point: HookPoint, path: impl FnOnce() -> PathBuf) {
    if !ACTIVE.load(Ordering::Relaxed) {
        return;
    }
    let hook = HOOK.read().ok().and_then(|h| h.clone());
    if let Some(h) = hook {
        h(point, &path());
    }
}

pub(crate) fn before_entry(path: impl FnOnce() -> PathBuf) {
    call(HookPoint::BeforeEntry, path);
}

pub(crate) fn before_open(path: impl FnOnce() -> PathBuf) {
    call(HookPoint::BeforeOpen, path);
}
