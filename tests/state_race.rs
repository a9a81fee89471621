//! A hostile rootfs owner racing the copy: directories and files swapped for symlinks to the
//! outside between our `lstat` and our `open`, deterministically (a hook at that exact point)
//! and at random (a thread swapping in a loop). Whatever happens, nothing outside the source
//! may be read (canary contents never appear in the copy, canary atimes do not move) and
//! nothing outside the destination may be written.
//!
//! Own test binary: the hook is process-wide.
#![allow(clippy::unwrap_used)]

#[path = "state_util.rs"]
mod util;

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use nixos_nspawn::state::hooks::{HookPoint, set_hook};
use nixos_nspawn::state::{
    self, MigrateStateOptions, NoProgress, StateErrorKind, StateMode, StateOutcome, Verify,
};
use util::*;

const CANARY: &[u8] = b"CANARY-0f9c2e-outside-the-rootfs";

static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn opts() -> MigrateStateOptions<'static> {
    MigrateStateOptions {
        mode: StateMode::Copy,
        verify: Verify::Full,
        force: false,
        progress: &NoProgress,
        recheck: Verify::Metadata,
    }
}

/// A directory outside the rootfs with canary files whose atimes a read would bump (relatime
/// updates an atime that is older than the mtime).
fn outside(t: &Path) -> PathBuf {
    let o = t.join("outside");
    std::fs::create_dir_all(o.join("sub")).unwrap();
    for p in ["secret", "sub/secret2"] {
        std::fs::write(o.join(p), CANARY).unwrap();
        let ts = rustix::fs::Timestamps {
            last_access: rustix::fs::Timespec {
                tv_sec: 1_000_000,
                tv_nsec: 0,
            },
            last_modification: rustix::fs::Timespec {
                tv_sec: 2_000_000,
                tv_nsec: 0,
            },
        };
        rustix::fs::utimensat(
            rustix::fs::CWD,
            o.join(p),
            &ts,
            rustix::fs::AtFlags::empty(),
        )
        .unwrap();
    }
    o
}

fn src_tree(t: &Path) -> PathBuf {
    let src = t.join("src");
    std::fs::create_dir_all(src.join("etc")).unwrap();
    std::fs::write(src.join("etc/os-release"), b"ID=nixos").unwrap();
    std::fs::create_dir_all(src.join("victim/inner")).unwrap();
    for i in 0..50 {
        std::fs::write(src.join(format!("victim/f{i}")), format!("inside {i}")).unwrap();
    }
    std::fs::write(src.join("victim/inner/x"), b"inside").unwrap();
    std::fs::write(src.join("data"), b"inside data").unwrap();
    src
}

fn assert_nothing_outside_touched(
    t: &Path,
    out: &Path,
    before: &std::collections::BTreeMap<PathBuf, Snap>,
) {
    let hits = files_containing(&t.join("machines"), CANARY);
    assert!(hits.is_empty(), "outside content was copied: {hits:?}");
    assert_eq!(
        &snapshot(out, true),
        before,
        "something outside was read or written"
    );
}

#[test]
fn a_directory_swapped_for_a_symlink_before_open_is_never_followed() {
    require_root();
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    for target_is_etc in [false, true] {
        let t = tempfile::tempdir().unwrap();
        let out = outside(t.path());
        let before = snapshot(&out, true);
        let src = src_tree(t.path());
        let victim = src.join("victim");
        let target: PathBuf = if target_is_etc {
            "/etc".into()
        } else {
            out.clone()
        };
        let fired = Arc::new(AtomicBool::new(false));
        {
            let (victim, fired, target) = (victim.clone(), fired.clone(), target.clone());
            set_hook(Some(Arc::new(move |point, p: &Path| {
                if point == HookPoint::BeforeOpen
                    && p == victim
                    && !fired.swap(true, Ordering::SeqCst)
                {
                    std::fs::rename(&victim, victim.with_extension("moved")).unwrap();
                    symlink(&target, &victim).unwrap();
                }
            })));
        }
        let dest = t.path().join("machines/web");
        let r = state::migrate_state(&src, &dest, &opts());
        set_hook(None);
        assert!(fired.load(Ordering::SeqCst), "the hook ran");
        let err = r.unwrap_err();
        assert!(
            matches!(err.kind(), StateErrorKind::SourceChanged { .. }),
            "{err}"
        );
        assert!(
            err.to_string().contains("victim") && err.to_string().contains("stop the container"),
            "{err}"
        );
        assert!(!dest.exists(), "nothing renamed into place");
        assert_nothing_outside_touched(t.path(), &out, &before);
        let staged = t.path().join("machines/.web.partial/tree");
        assert!(!staged.join("victim/passwd").exists() && !staged.join("victim/secret").exists());

        // The next run copies the symlink as a symlink.
        let o = state::migrate_state(&src, &dest, &opts()).unwrap();
        assert!(
            matches!(o, StateOutcome::Copied { resumed: true, .. }),
            "{o:?}"
        );
        assert_eq!(std::fs::read_link(dest.join("victim")).unwrap(), target);
        assert_eq!(rsync_diff(&src, &dest), "");
        assert_nothing_outside_touched(t.path(), &out, &before);
    }
}

#[test]
fn a_file_swapped_for_a_symlink_before_open_is_never_followed() {
    require_root();
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let t = tempfile::tempdir().unwrap();
    let out = outside(t.path());
    let before = snapshot(&out, true);
    let src = src_tree(t.path());
    let file = src.join("victim/f7");
    let fired = Arc::new(AtomicBool::new(false));
    {
        let (file, fired, out) = (file.clone(), fired.clone(), out.clone());
        set_hook(Some(Arc::new(move |point, p: &Path| {
            if point == HookPoint::BeforeOpen && p == file && !fired.swap(true, Ordering::SeqCst) {
                std::fs::remove_file(&file).unwrap();
                symlink(out.join("secret"), &file).unwrap();
            }
        })));
    }
    let dest = t.path().join("machines/web");
    let r = state::migrate_state(&src, &dest, &opts());
    set_hook(None);
    assert!(fired.load(Ordering::SeqCst));
    let err = r.unwrap_err();
    assert!(
        matches!(err.kind(), StateErrorKind::SourceChanged { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("victim/f7"), "{err}");
    assert_nothing_outside_touched(t.path(), &out, &before);
}

#[test]
fn a_thread_swapping_directories_and_symlinks_in_a_loop_cannot_make_us_leave_the_tree() {
    require_root();
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let t = tempfile::tempdir().unwrap();
    let out = outside(t.path());
    let before = snapshot(&out, true);
    let src = src_tree(t.path());
    // More places to race on.
    for i in 0..20 {
        std::fs::create_dir_all(src.join(format!("d{i}/sub"))).unwrap();
        for j in 0..20 {
            std::fs::write(src.join(format!("d{i}/sub/f{j}")), b"inside").unwrap();
        }
    }
    let stop = Arc::new(AtomicBool::new(false));
    let swaps = Arc::new(AtomicUsize::new(0));
    let racer = {
        let (src, out, stop, swaps) = (src.clone(), out.clone(), stop.clone(), swaps.clone());
        std::thread::spawn(move || {
            let mut i = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let d = src.join(format!("d{}", i % 20));
                let f = src.join(format!("d{}/sub/f{}", (i + 3) % 20, i % 20));
                let parked = src.join(format!(".parked{}", i % 20));
                // Directory -> symlink to the outside (alternating with a `..` chain) -> back.
                if std::fs::rename(&d, &parked).is_ok() {
                    let target: PathBuf = if i.is_multiple_of(2) {
                        out.clone()
                    } else {
                        "../../../../../../..".into()
                    };
                    let _ = symlink(&target, &d);
                    std::thread::yield_now();
                    let _ = std::fs::remove_file(&d);
                    let _ = std::fs::rename(&parked, &d);
                }
                // File -> symlink to a canary -> back.
                let saved = f.with_extension("saved");
                if std::fs::rename(&f, &saved).is_ok() {
                    let _ = symlink(out.join("secret"), &f);
                    std::thread::yield_now();
                    let _ = std::fs::remove_file(&f);
                    let _ = std::fs::rename(&saved, &f);
                }
                swaps.fetch_add(1, Ordering::Relaxed);
                i += 1;
            }
        })
    };
    let mut outcomes = Vec::new();
    for run in 0..8 {
        let dest = t.path().join(format!("machines/web{run}"));
        let r = state::migrate_state(&src, &dest, &opts());
        outcomes.push(match &r {
            Ok(o) => format!("ok {:?}", std::mem::discriminant(o)),
            Err(e) => format!("err {}", e.to_string().lines().next().unwrap_or("")),
        });
        // Whatever the outcome, the copy (staged or in place) holds only data from inside.
        assert_nothing_outside_touched(t.path(), &out, &before);
        if r.is_ok() {
            // A finished copy contains no followed link: every symlink in it is a symlink.
            for e in walkdir::WalkDir::new(&dest).follow_links(false) {
                let e = e.unwrap();
                if e.file_type().is_symlink() {
                    continue;
                }
                assert!(e.path().starts_with(&dest));
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    racer.join().unwrap();
    eprintln!(
        "swaps: {}, outcomes: {outcomes:#?}",
        swaps.load(Ordering::Relaxed)
    );
    assert!(swaps.load(Ordering::Relaxed) > 8, "the racer ran");
    assert_nothing_outside_touched(t.path(), &out, &before);
    // Outside nothing was created either.
    let names: Vec<_> = walkdir::WalkDir::new(&out)
        .into_iter()
        .map(|e| e.unwrap().path().to_path_buf())
        .collect();
    assert_eq!(names.len(), 4, "{names:?}");
}
