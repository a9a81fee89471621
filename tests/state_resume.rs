//! Crash safety: a child process (this test binary re-invoked) runs `migrate_state` and is
//! killed with SIGKILL at random points, several times; then a run to completion must give a
//! byte- and metadata-identical copy (checked by rsync and by a full verification), the
//! destination must never appear half-done, and a further run must change nothing.
#![allow(clippy::unwrap_used)]

#[path = "state_util.rs"]
mod util;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nixos_nspawn::state::{self, MigrateStateOptions, NoProgress, StateMode, StateOutcome, Verify};
use util::*;

const CHILD_ENV: &str = "NIXOS_NSPAWN_TEST_RESUME_CHILD";

fn opts() -> MigrateStateOptions<'static> {
    MigrateStateOptions {
        mode: StateMode::Copy,
        verify: Verify::Full,
        force: false,
        progress: &NoProgress,
        recheck: Verify::Metadata,
    }
}

/// Not a test of its own: the body of the child process (`SRC\nDEST` in the environment).
#[test]
#[ignore = "helper run as a child process by kill_nine_at_random_points_then_resume"]
fn resume_child() {
    let Some(spec) = std::env::var_os(CHILD_ENV) else {
        return;
    };
    let spec = spec.into_string().unwrap();
    let (src, dest) = spec.split_once('\n').unwrap();
    match state::migrate_state(Path::new(src), Path::new(dest), &opts()) {
        Ok(_) => std::process::exit(0),
        Err(e) => {
            eprintln!("child: {e}");
            std::process::exit(1)
        }
    }
}

fn spawn_child(src: &Path, dest: &Path) -> std::process::Child {
    Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            "resume_child",
            "--test-threads=1",
            "--nocapture",
        ])
        .env(CHILD_ENV, format!("{}\n{}", src.display(), dest.display()))
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap()
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[test]
fn kill_nine_at_random_points_then_resume() {
    require_root();
    let t = tempfile::tempdir().unwrap();
    kill_nine_scenario(t.path(), false);
}

/// The same on btrfs and XFS (reflinks; `/var/lib/machines` a subvolume on btrfs), with inode
/// flags in the tree: +C directories and files, immutable and append-only entries, which a
/// resumed run must be able to replace or finish.
#[test]
fn kill_nine_on_btrfs_with_inode_flags_then_resume() {
    let Some(fs) = loop_fs("btrfs") else { return };
    kill_nine_scenario(&fs.mnt, true);
    unfreeze(&fs.mnt);
}

#[test]
fn kill_nine_on_xfs_with_inode_flags_then_resume() {
    let Some(fs) = loop_fs("xfs") else { return };
    kill_nine_scenario(&fs.mnt, true);
    unfreeze(&fs.mnt);
}

fn kill_nine_scenario(base: &Path, with_flags: bool) {
    let src = base.join("src");
    let t_build = Instant::now();
    build_edge_tree(&src);
    build_bulk_tree(&src.join("bulk"), 40, 40, 2, 2 << 20);
    let machines = base.join("machines");
    if with_flags {
        // +C where the filesystem has it (btrfs), set on empty directories, inherited.
        std::fs::create_dir_all(src.join("var/lib/db")).unwrap();
        let _ = std::process::Command::new("chattr")
            .args(["-f", "+C"])
            .arg(src.join("var/lib/db"))
            .status();
        for i in 0..20 {
            std::fs::write(
                src.join(format!("var/lib/db/page{i}")),
                vec![i as u8; 50_000],
            )
            .unwrap();
        }
        for d in ["bulk/d003/sub3", "bulk/d017/sub3", "bulk/d031/sub3"] {
            chattr("+i", &src.join(d).join("f5"));
            chattr("+a", &src.join(d).join("f6"));
            chattr("+d", &src.join(d));
            chattr("+i", &src.join(d));
        }
        if std::process::Command::new("btrfs")
            .args(["filesystem", "df"])
            .arg(base)
            .output()
            .is_ok_and(|o| o.status.success())
        {
            std::fs::create_dir_all(&machines).unwrap();
            std::fs::remove_dir(&machines).unwrap();
            run(
                "btrfs",
                &["-q", "subvolume", "create", machines.to_str().unwrap()],
            );
        }
    }
    eprintln!("tree built in {:?}", t_build.elapsed());

    // Calibrate: how long does an uninterrupted child take?
    let started = Instant::now();
    let st = spawn_child(&src, &machines.join("calibration"))
        .wait()
        .unwrap();
    assert!(st.success(), "calibration child failed");
    let full = started.elapsed();
    assert_eq!(rsync_diff(&src, &machines.join("calibration")), "");

    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    eprintln!("seed {seed}, uninterrupted run {full:?}");
    let mut rng = Rng(seed);
    let mut cycle = 0;
    let mut dest = machines.join("web0");
    let mut staging: PathBuf = machines.join(".web0.partial");
    let mut killed_mid_copy = 0;
    let mut log = Vec::new();
    let t0 = Instant::now();
    // Shrinks whenever a child finishes before its kill (the calibration run may have been
    // slowed by a loaded machine), so that most kills land mid-copy.
    let mut max_ms = (full.as_millis() as u64).max(50);
    for round in 0..12 {
        // Anywhere in an uninterrupted run's duration: walk, data, syncfs, verify, rename.
        let delay = Duration::from_millis(5 + rng.next() % max_ms);
        let mut child = spawn_child(&src, &dest);
        std::thread::sleep(delay);
        let finished = child.try_wait().unwrap();
        if finished.is_none() {
            child.kill().unwrap(); // SIGKILL
        }
        let status = child.wait().unwrap();
        let staged = staging.exists();
        log.push(format!(
            "round {round}: after {delay:?} finished={} staging={staged} dest={}",
            finished.is_some(),
            dest.exists()
        ));
        if finished.is_none() && staged {
            killed_mid_copy += 1;
        }
        if finished.is_some() {
            max_ms = (max_ms * 2 / 3).max(20);
        }
        if finished.is_some() {
            assert!(
                status.success(),
                "a child that was not killed failed: {log:?}"
            );
        }
        // Atomic: the destination exists only as a complete, verified copy.
        if dest.exists() {
            assert_eq!(
                rsync_diff(&src, &dest),
                "",
                "half-done destination after {log:?}"
            );
            if round < 9 {
                // Start another cycle on a new name, so more kills land mid-copy. (Not
                // removing: deletes are slow on a filesystem mounted with `discard`.)
                cycle += 1;
                dest = machines.join(format!("web{cycle}"));
                staging = machines.join(format!(".web{cycle}.partial"));
            }
        }
        eprintln!("{:?} {}", t0.elapsed(), log[log.len() - 1]);
    }
    eprintln!("{log:#?}");
    assert!(
        killed_mid_copy >= 3,
        "too few kills landed mid-copy: {log:#?}"
    );

    let out = state::migrate_state(&src, &dest, &opts()).unwrap();
    match &out {
        StateOutcome::Copied { verify, .. } | StateOutcome::AlreadyDone { verify } => {
            assert!(verify.is_clean(), "{}", verify.summary())
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(rsync_diff(&src, &dest), "");
    if with_flags {
        assert_eq!(lsattr_map(&dest), lsattr_map(&src));
    }
    let full_check = state::verify_tree(&src, &dest, Verify::Full).unwrap();
    assert!(full_check.is_clean(), "{}", full_check.summary());
    assert!(!staging.exists());
    // Sparse files stayed sparse across resumes.
    assert!(allocated(&dest.join("var/sparse.img")) < 1 << 20);

    // And once more: nothing is rewritten.
    let before = snapshot(&dest, false);
    let again = state::migrate_state(&src, &dest, &opts()).unwrap();
    assert!(
        matches!(again, StateOutcome::AlreadyDone { .. }),
        "{again:?}"
    );
    assert_eq!(snapshot(&dest, false), before);
}
