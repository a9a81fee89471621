//! A guest tree 10,000 directories deep (more than `PATH_MAX` allows as one path) copies,
//! verifies, resumes after a crash and is cleaned of leftovers with few open files: the engine
//! does not keep a descriptor per level. The work runs in child processes (this test binary
//! re-invoked) whose open-file limit is 128, soft and hard, so nothing can raise it.
//! See issue 7, item 8 ("Too many open files", also on resume; `cp -a` copes).
#![allow(clippy::unwrap_used)]

#[path = "state_util.rs"]
mod util;

use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::Command;

use nixos_nspawn::state::{self, MigrateStateOptions, NoProgress, StateMode, StateOutcome, Verify};
use rustix::fs::{self as rfs, Mode, OFlags};
use util::*;

const CHILD_ENV: &str = "NIXOS_NSPAWN_TEST_DEEP_CHILD";
const DEPTH: usize = 10_000;
const NOFILE: u64 = 128;

fn opts() -> MigrateStateOptions<'static> {
    MigrateStateOptions {
        mode: StateMode::Copy,
        verify: Verify::Full,
        force: false,
        progress: &NoProgress,
        recheck: Verify::Metadata,
    }
}

fn open_dir(at: &OwnedFd, name: &str) -> OwnedFd {
    rfs::openat(
        at,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .unwrap()
}

/// `root/d/d/…/d` (`depth` levels), each level also holding a small file `f` (with the level
/// in it) and, every 1000 levels, a symlink; one descriptor at a time.
fn build_deep(root: &Path, depth: usize, name: &str) {
    std::fs::create_dir_all(root).unwrap();
    let mut cur = rfs::openat(
        rfs::CWD,
        root,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .unwrap();
    for level in 0..depth {
        rfs::mkdirat(&cur, name, Mode::from_raw_mode(0o755)).unwrap();
        let f = rfs::openat(
            &cur,
            "f",
            OFlags::WRONLY | OFlags::CREATE | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o644),
        )
        .unwrap();
        rustix::io::write(&f, format!("level {level}\n").as_bytes()).unwrap();
        if level % 1000 == 0 {
            rfs::symlinkat("/nix/store/x-dangling", &cur, "link").unwrap();
        }
        cur = open_dir(&cur, name);
    }
}

/// The content of `f` at `level` below `root` (following `name` components, one at a time).
fn read_at_level(root: &Path, name: &str, level: usize) -> String {
    let mut cur = rfs::openat(
        rfs::CWD,
        root,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .unwrap();
    for _ in 0..level {
        cur = open_dir(&cur, name);
    }
    let f = rfs::openat(&cur, "f", OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty()).unwrap();
    let mut buf = vec![0u8; 64];
    let n = rustix::io::read(f.as_fd(), &mut buf).unwrap();
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

/// Not a test of its own: the child process. `ACTION\nSRC\nDEST` in the environment.
#[test]
#[ignore = "helper run as a child process by the tests below"]
fn deep_child() {
    let Some(spec) = std::env::var_os(CHILD_ENV) else {
        return;
    };
    use rustix::process::{Resource, Rlimit, setrlimit};
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(NOFILE),
            maximum: Some(NOFILE),
        },
    )
    .unwrap();
    let spec = spec.into_string().unwrap();
    let mut parts = spec.split('\n');
    let (action, src, dest) = (
        parts.next().unwrap(),
        PathBuf::from(parts.next().unwrap()),
        PathBuf::from(parts.next().unwrap()),
    );
    let result = match action {
        // Dies (like kill -9: no cleanup) 1000 levels down the `gone` chain.
        "crash" => {
            let base = src.components().count();
            state::hooks::set_hook(Some(std::sync::Arc::new(move |_, p: &Path| {
                let in_gone = p
                    .components()
                    .nth(base)
                    .is_some_and(|c| c.as_os_str() == "gone");
                if in_gone && p.components().count() - base > 1000 {
                    std::process::exit(9);
                }
            })));
            state::migrate_state(&src, &dest, &opts()).map(|o| format!("{o:?}"))
        }
        "migrate" => state::migrate_state(&src, &dest, &opts()).map(|o| match o {
            StateOutcome::Copied {
                resumed,
                copy,
                verify,
                ..
            } => format!(
                "copied resumed={resumed} removed_stale={} clean={}",
                copy.removed_stale,
                verify.is_clean()
            ),
            StateOutcome::AlreadyDone { verify } => {
                format!("already done clean={}", verify.is_clean())
            }
            other => format!("{other:?}"),
        }),
        "verify" => state::verify_tree(&src, &dest, Verify::Full).map(|r| r.summary()),
        "space" => state::required_space(&src).map(|n| format!("entries={}", n.entries)),
        other => panic!("unknown action {other}"),
    };
    match result {
        Ok(s) => {
            println!("RESULT {s}");
            std::process::exit(0)
        }
        Err(e) => {
            println!("ERROR {e}");
            std::process::exit(1)
        }
    }
}

/// Run the child; (exit code, its RESULT/ERROR line).
fn child(action: &str, src: &Path, dest: &Path) -> (i32, String) {
    let t = std::time::Instant::now();
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            "deep_child",
            "--test-threads=1",
            "--nocapture",
        ])
        .env(
            CHILD_ENV,
            format!("{action}\n{}\n{}", src.display(), dest.display()),
        )
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    // The harness prints `test deep_child ... ` on the same line.
    let line = stdout
        .lines()
        .find_map(|l| {
            l.find("RESULT ")
                .or_else(|| l.find("ERROR "))
                .map(|i| &l[i..])
        })
        .unwrap_or_default()
        .to_string();
    eprintln!(
        "{action}: {:?} {:?}: {}",
        t.elapsed(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), line)
}

#[test]
fn a_tree_ten_thousand_levels_deep_copies_verifies_and_resumes_with_128_open_files() {
    require_root();
    // On a filesystem of its own where loop devices exist: the copy's syncfs then waits for
    // this test's writes only, not for everything else the machine writes to /tmp.
    let tmp = tempfile::tempdir().unwrap();
    let fs = loop_fs("xfs");
    let base: PathBuf = fs
        .as_ref()
        .map_or_else(|| tmp.path().to_path_buf(), |f| f.mnt.clone());
    let t = &base;
    let src = t.join("src");
    build_deep(&src, DEPTH, "d");
    // A second deep chain, which will vanish from the source before the resume: its copy in
    // staging is a leftover that must be removed, 1500 levels of it.
    build_deep(&src.join("gone"), 1500, "g");
    let dest = t.join("machines/deep");

    let (code, line) = child("space", &src, &dest);
    assert_eq!(code, 0, "{line}");
    assert_eq!(
        line,
        format!("RESULT entries={}", 2 * DEPTH + 10 + 1 + 2 * 1500 + 2)
    );

    let (code, line) = child("crash", &src, &dest);
    assert_eq!(
        code, 9,
        "the child should have died 6000 levels down: {line}"
    );
    assert!(t.join("machines/.deep.partial/tree/gone/g/g").exists());
    assert!(!dest.exists());
    // `rm -rf` copes with any depth (fts).
    run("rm", &["-rf", src.join("gone").to_str().unwrap()]);

    let (code, line) = child("migrate", &src, &dest);
    assert_eq!(code, 0, "{line}");
    assert_eq!(
        line,
        "RESULT copied resumed=true removed_stale=1 clean=true"
    );
    assert_eq!(
        read_at_level(&dest, "d", DEPTH - 1),
        format!("level {}\n", DEPTH - 1)
    );
    assert_eq!(read_at_level(&dest, "d", 4321), "level 4321\n");

    // An independent full verification, also with 128 open files.
    let (code, line) = child("verify", &src, &dest);
    assert_eq!(code, 0, "{line}");
    assert_eq!(
        line,
        format!("RESULT no differences in {} entries", 2 * DEPTH + 10)
    );
    let (code, line) = child("migrate", &src, &dest);
    assert_eq!((code, line.as_str()), (0, "RESULT already done clean=true"));

    // The deepest directory's metadata was finished too (its mtime is the source's).
    let mut s = open_dir(
        &rfs::openat(
            rfs::CWD,
            &src,
            OFlags::RDONLY | OFlags::DIRECTORY,
            Mode::empty(),
        )
        .unwrap(),
        "d",
    );
    let mut d = open_dir(
        &rfs::openat(
            rfs::CWD,
            &dest,
            OFlags::RDONLY | OFlags::DIRECTORY,
            Mode::empty(),
        )
        .unwrap(),
        "d",
    );
    for _ in 1..DEPTH {
        s = open_dir(&s, "d");
        d = open_dir(&d, "d");
    }
    let (sm, dm) = (rfs::fstat(&s).unwrap(), rfs::fstat(&d).unwrap());
    assert_eq!(
        (sm.st_mtime, sm.st_mtime_nsec, sm.st_mode),
        (dm.st_mtime, dm.st_mtime_nsec, dm.st_mode)
    );
    if fs.is_none() {
        run("rm", &["-rf", t.to_str().unwrap()]);
    }
}

/// Hard links whose first name lies deeper than `PATH_MAX` (4096 bytes from the copy's root):
/// the second name is linked to the first without a path that long (the kernel refuses those
/// with `ENAMETOOLONG`), also when the first copy is immutable. Both names sit 1,000 levels
/// down (6,000 bytes), so whichever the walk meets first, the other needs the long path.
#[test]
fn hard_links_deeper_than_path_max_are_kept() {
    require_root();
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    let root = rfs::openat(
        rfs::CWD,
        &src,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .unwrap();
    // `a…/a` first in every listing: one entry per level.
    rfs::mkdirat(&root, "aaaaa", Mode::from_raw_mode(0o755)).unwrap();
    let mut cur = open_dir(&root, "aaaaa");
    for _ in 1..1000 {
        rfs::mkdirat(&cur, "aaaaa", Mode::from_raw_mode(0o755)).unwrap();
        cur = open_dir(&cur, "aaaaa");
    }
    let f = rfs::openat(
        &cur,
        "first",
        OFlags::WRONLY | OFlags::CREATE | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o644),
    )
    .unwrap();
    rustix::io::write(&f, b"one inode, two names\n").unwrap();
    drop(f);
    rfs::mkdirat(&cur, "zz", Mode::from_raw_mode(0o755)).unwrap();
    let zz = open_dir(&cur, "zz");
    rfs::linkat(&cur, "first", &zz, "second", rfs::AtFlags::empty()).unwrap();
    let ino = rfs::statat(&cur, "first", rfs::AtFlags::empty())
        .unwrap()
        .st_ino;
    // Immutable: the copy's first name forbids new links until the flag is lifted for them.
    let mut thaw = Thaw(vec![
        rfs::openat(
            &cur,
            "first",
            OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .unwrap(),
    ]);
    rfs::ioctl_setflags(&thaw.0[0], rfs::IFlags::IMMUTABLE).unwrap();
    let dest = tmp.path().join("machines/deep");

    let out = state::migrate_state(&src, &dest, &opts()).unwrap();
    let StateOutcome::Copied { copy, verify, .. } = out else {
        panic!("{out:?}")
    };
    assert!(verify.is_clean(), "{}", verify.summary());
    assert_eq!(copy.hardlinks, 1, "{copy:?}");

    // Both names of the copy are one inode, not the source's.
    let droot = rfs::openat(
        rfs::CWD,
        &dest,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .unwrap();
    let mut d = open_dir(&droot, "aaaaa");
    for _ in 1..1000 {
        d = open_dir(&d, "aaaaa");
    }
    let a = rfs::statat(&d, "first", rfs::AtFlags::empty()).unwrap();
    let b = rfs::statat(open_dir(&d, "zz"), "second", rfs::AtFlags::empty()).unwrap();
    assert_eq!(a.st_nlink, 2);
    assert_eq!((a.st_ino, a.st_dev), (b.st_ino, b.st_dev));
    assert_ne!(a.st_ino, ino);
    let mut text = vec![0u8; 64];
    let n = rustix::io::read(
        rfs::openat(&d, "first", OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty()).unwrap(),
        &mut text,
    )
    .unwrap();
    assert_eq!(&text[..n], b"one inode, two names\n");
    thaw.0
        .push(rfs::openat(&d, "first", OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty()).unwrap());
    assert!(
        rfs::ioctl_getflags(&thaw.0[1])
            .unwrap()
            .contains(rfs::IFlags::IMMUTABLE)
    );
    drop(thaw);
    run("rm", &["-rf", tmp.path().to_str().unwrap()]);
}

/// Clears the inode flags of the files it holds when dropped (also when a test fails), so
/// that their tree can be removed.
struct Thaw(Vec<OwnedFd>);
impl Drop for Thaw {
    fn drop(&mut self) {
        for fd in &self.0 {
            let _ = rfs::ioctl_setflags(fd, rfs::IFlags::empty());
        }
    }
}
