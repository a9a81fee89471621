//! Ctrl-C in the interactive mode: whatever the run was doing, say what state the host is in
//! and how to resume or go back, then exit 130.
//!
//! Stopping at once is safe at every point: a question changes nothing; a state copy works in a
//! staging directory with a journal (resumed by the next run, removed by `--rollback`); every
//! file is written atomically. So the handler does not try to unwind anything: it restores the
//! terminal's cursor, prints the message prepared for the current phase, and `_exit`s. Only
//! async-signal-safe calls (`write`, `_exit`) run in the handler; the message is a leaked,
//! never freed buffer published through atomics before the phase starts.

use std::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};

static MESSAGE: AtomicPtr<u8> = AtomicPtr::new(std::ptr::null_mut());
static LENGTH: AtomicUsize = AtomicUsize::new(0);

/// The exit code after Ctrl-C (128 + SIGINT), as shells report it.
pub const EXIT_INTERRUPTED: i32 = 130;

/// What to print when Ctrl-C arrives from now on.
pub fn set_message(message: &str) {
    // Leaked on purpose: a handler may be reading the previous one right now, and there are
    // only a few phases per run.
    let bytes: &'static mut [u8] =
        Box::leak(format!("\n{message}\n").into_bytes().into_boxed_slice());
    LENGTH.store(0, Ordering::SeqCst);
    MESSAGE.store(bytes.as_mut_ptr(), Ordering::SeqCst);
    LENGTH.store(bytes.len(), Ordering::SeqCst);
}

extern "C" fn on_interrupt(_: libc::c_int) {
    // Show the cursor again (the prompts and bars hide it), then the message.
    const SHOW_CURSOR: &[u8] = b"\x1b[?25h";
    let ptr = MESSAGE.load(Ordering::SeqCst);
    let len = LENGTH.load(Ordering::SeqCst);
    // SAFETY: write(2) and _exit(2) are async-signal-safe; `ptr`/`len` describe a leaked
    // buffer that is never freed or changed after it was published.
    unsafe {
        libc::write(2, SHOW_CURSOR.as_ptr().cast(), SHOW_CURSOR.len());
        if !ptr.is_null() && len > 0 {
            libc::write(2, ptr.cast(), len);
        }
        libc::_exit(EXIT_INTERRUPTED);
    }
}

/// Install the handler for SIGINT (and SIGTERM: a closed terminal or `kill` deserve the same
/// message in the log).
pub fn install() -> std::io::Result<()> {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: a plain sigaction with a handler that only makes async-signal-safe calls.
        let rc = unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_interrupt as *const () as usize;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(sig, &action, std::ptr::null_mut())
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}
