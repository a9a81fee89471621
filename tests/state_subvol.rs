//! Nested btrfs subvolumes inside a container's state (systemd-tmpfiles `v` lines make
//! `/var/lib/machines` and `/var/lib/portables` subvolumes inside a NixOS guest on btrfs;
//! administrators make them for databases): copied, not skipped like mount points; recreated as
//! subvolumes where the copy is on btrfs, plain directories with a warning elsewhere; verified
//! (by shared extents across subvolumes); resumed when half-copied; carried along by
//! `--state move`. Real mount points inside the state stay skipped and are reported (and make
//! `--state move` refuse). Read-only subvolumes stay read-only on btrfs (verified, resumed,
//! replaced with `--force`), lose it off btrfs with a warning, and cannot be moved as the
//! state directory itself.
//!
//! Each test makes its own btrfs (and XFS) filesystem on a loop device; skipped with a message
//! where loop devices are unavailable, unless `NIXOS_NSPAWN_REQUIRE_REAL_TOOLS=1`.
#![allow(clippy::unwrap_used)]

#[path = "state_util.rs"]
mod util;

use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nixos_nspawn::state::{
    self, MigrateStateOptions, NoProgress, StateMode, StateOutcome, Verify,
    hooks::{HookPoint, set_hook},
};
use util::*;

/// The hook is one slot for the whole process: tests that set it take turns.
static HOOK: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn opts(mode: StateMode) -> MigrateStateOptions<'static> {
    MigrateStateOptions {
        mode,
        verify: Verify::Full,
        force: false,
        progress: &NoProgress,
        recheck: Verify::Metadata,
    }
}

fn subvolume_create(p: &Path) {
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    run("btrfs", &["-q", "subvolume", "create", p.to_str().unwrap()]);
}

/// Is `p` the root of a btrfs subvolume? Asked of `btrfs subvolume show` (the independent
/// tool), and by the inode number and device every subvolume root has.
fn is_subvolume(p: &Path) -> bool {
    let shown = Command::new("btrfs")
        .args(["subvolume", "show"])
        .arg(p)
        .output()
        .unwrap()
        .status
        .success();
    let m = p.symlink_metadata().unwrap();
    let parent = p.parent().unwrap().symlink_metadata().unwrap();
    assert_eq!(
        shown,
        m.ino() == 256 && m.dev() != parent.dev(),
        "btrfs and stat disagree about {}",
        p.display()
    );
    shown
}

/// rsync's view of the differences, leaving out `exclude` (a mount point: rsync would cross it).
fn rsync_diff_excluding(src: &Path, dst: &Path, exclude: &str) -> String {
    let out = Command::new("rsync")
        .args(["-naiHAXSc", "--numeric-ids", "--devices", "--specials"])
        .arg(format!("--exclude=/{exclude}"))
        .arg(format!("{}/", src.display()))
        .arg(format!("{}/", dst.display()))
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A bind mount for one test, undone on drop (also when the test fails).
struct Bind(PathBuf);
impl Bind {
    fn new(from: &Path, at: &Path) -> Bind {
        std::fs::create_dir_all(at).unwrap();
        run(
            "mount",
            &["--bind", from.to_str().unwrap(), at.to_str().unwrap()],
        );
        Bind(at.to_path_buf())
    }
}
impl Drop for Bind {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// Give the subvolume root `root` an owner (70:70), a mode (0750) and, with `other`, the
/// times `stamp`: what the copy must carry over like a directory's.
fn own_subvolume_root(root: &Path, stamp: &str, other: &Path) {
    std::os::unix::fs::lchown(root, Some(70), Some(70)).unwrap();
    std::fs::set_permissions(root, std::os::unix::fs::PermissionsExt::from_mode(0o750)).unwrap();
    run(
        "touch",
        &[
            "-h",
            "-d",
            stamp,
            root.to_str().unwrap(),
            other.to_str().unwrap(),
        ],
    );
}

/// The legacy state of `web` on `fs` as a NixOS guest on btrfs has it: the guest's own
/// `/var/lib/machines` and `/var/lib/portables` are subvolumes (tmpfiles `v`), one nested in a
/// subvolume; a database directory is a subvolume with a `+C` file; contents are large enough to
/// be reflinked.
fn state_with_subvolumes(fs: &LoopFs) -> PathBuf {
    let src = fs.mnt.join("var/lib/nixos-containers/web");
    build_bulk_tree(&src.join("srv/plain"), 2, 5, 0, 0);
    subvolume_create(&src.join("var/lib/machines"));
    build_bulk_tree(&src.join("var/lib/machines/guest"), 3, 10, 1, 1 << 20);
    subvolume_create(&src.join("var/lib/machines/guest/inner"));
    std::fs::write(
        src.join("var/lib/machines/guest/inner/note"),
        "nested twice\n",
    )
    .unwrap();
    subvolume_create(&src.join("var/lib/portables"));
    // Two subvolumes laid out alike, each with a hard-linked file: every subvolume numbers its
    // inodes from 256, so source and copy hold distinct files with equal inode numbers.
    for sv in ["srv/cache-a", "srv/cache-b"] {
        subvolume_create(&src.join(sv));
        std::fs::write(src.join(sv).join("h"), sv).unwrap();
        std::fs::hard_link(src.join(sv).join("h"), src.join(sv).join("h2")).unwrap();
    }
    subvolume_create(&src.join("srv/db"));
    let db = src.join("srv/db/main.sqlite");
    std::fs::write(&db, b"").unwrap();
    chattr("+C", &db);
    std::fs::write(&db, vec![7u8; 300_000]).unwrap();
    // A subvolume's root has its own owner, mode and times; they are copied like a directory's.
    own_subvolume_root(
        &src.join("srv/db"),
        "2020-02-02 02:02:02.123456789",
        &src.join("var/lib/portables"),
    );
    src
}

const SUBVOLUMES: [&str; 6] = [
    "srv/cache-a",
    "srv/cache-b",
    "srv/db",
    "var/lib/machines",
    "var/lib/machines/guest/inner",
    "var/lib/portables",
];

/// Copy `src` to `dest` (a fresh copy), which must verify clean: the copy's and the
/// verification's reports, and the warnings (for the container named like `dest`).
fn copied_clean(
    src: &Path,
    dest: &Path,
) -> (
    nixos_nspawn::state::CopyReport,
    nixos_nspawn::state::VerifyReport,
    Vec<nixos_nspawn::warnings::Warning>,
) {
    let out = state::migrate_state(src, dest, &opts(StateMode::Copy)).unwrap();
    let name = dest.file_name().unwrap().to_string_lossy().into_owned();
    let warnings = out.warnings(&name);
    let StateOutcome::Copied { copy, verify, .. } = out else {
        panic!("{out:?}")
    };
    assert!(verify.is_clean(), "{}", verify.summary());
    (copy, verify, warnings)
}

/// A subvolume made elsewhere on `fs` (holding `not-ours`), bind-mounted at `at`: a real
/// mount that looks like a nested subvolume (another st_dev, inode 256) but for its mount.
fn bind_foreign_subvolume(fs: &LoopFs, at: &Path) -> Bind {
    let elsewhere = fs.mnt.join("elsewhere");
    subvolume_create(&elsewhere);
    std::fs::write(elsewhere.join("not-ours"), "host data\n").unwrap();
    Bind::new(&elsewhere, at)
}

#[test]
fn btrfs_nested_subvolumes_are_copied_as_subvolumes_verified_and_mounts_still_skipped() {
    let Some(fs) = loop_fs("btrfs") else { return };
    let src = state_with_subvolumes(&fs);
    // A real mount inside the state (a bind mount of a subvolume from elsewhere on the same
    // filesystem: another st_dev and inode 256 like a nested subvolume, only the mount tells):
    // not crossed, reported.
    let _bind = bind_foreign_subvolume(&fs, &src.join("mnt/host"));
    subvolume_create(&fs.mnt.join("var/lib/machines"));
    let dest = fs.mnt.join("var/lib/machines/web");

    let need = state::required_space(&src).unwrap();
    assert_eq!(need.skipped_mounts, 1, "{need:?}");
    assert!(need.bytes >= (1 << 20) + 300_000, "{need:?}");

    let (copy, verify, warnings) = copied_clean(&src, &dest);
    let mut subvols = copy.subvolumes.clone();
    subvols.sort();
    assert_eq!(
        subvols,
        SUBVOLUMES.iter().map(PathBuf::from).collect::<Vec<_>>()
    );
    assert!(copy.subvolumes_flattened.is_empty(), "{copy:?}");
    assert_eq!(copy.skipped_mounts, vec![PathBuf::from("mnt/host")]);
    assert_eq!(verify.skipped_mounts, vec![PathBuf::from("mnt/host")]);
    for s in SUBVOLUMES {
        assert!(is_subvolume(&dest.join(s)), "{s} is not a subvolume");
    }
    assert!(!is_subvolume(&dest.join("var/lib")));
    assert_eq!(
        std::fs::read_to_string(dest.join("var/lib/machines/guest/inner/note")).unwrap(),
        "nested twice\n"
    );
    assert!(!dest.join("mnt/host/not-ours").exists());
    assert_eq!(rsync_diff_excluding(&src, &dest, "mnt/host"), "");
    assert_eq!(
        lsattr_map(&dest.join("srv/db")),
        lsattr_map(&src.join("srv/db"))
    );
    // Files in subvolumes were reflinked and proven equal by their shared extents (across
    // subvolumes of one filesystem), not read.
    assert!(
        verify.files_by_extents >= 2,
        "the subvolumes' large files were not verified by extents: {verify:?}"
    );
    assert!(verify.bytes_hashed < 1 << 20, "{verify:?}");
    // The report names the mount point that was not copied into; no subvolume was flattened.
    let codes: Vec<&str> = warnings.iter().map(|w| w.code).collect();
    assert_eq!(codes, ["state-mounts-skipped"], "{warnings:?}");
    assert!(warnings[0].message.contains("mnt/host"), "{warnings:?}");
    assert!(warnings[0].needs_human());

    // Verification descends into subvolumes: a byte changed behind the tool's back in a file of
    // the twice-nested subvolume of the copy is caught.
    let victim = dest.join("var/lib/machines/guest/big/blob0");
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&victim)
        .unwrap();
    let before = victim.symlink_metadata().unwrap();
    f.write_all_at(b"X", 1000).unwrap();
    f.sync_all().unwrap();
    drop(f);
    run(
        "touch",
        &[
            "-h",
            "-d",
            &format!("@{}.{:09}", before.mtime(), before.mtime_nsec()),
            victim.to_str().unwrap(),
        ],
    );
    let full = state::verify_tree(&src, &dest, Verify::Full).unwrap();
    assert_eq!(full.differences, 1, "{}", full.summary());
    assert_eq!(
        full.first[0].path,
        Path::new("var/lib/machines/guest/big/blob0")
    );

    // A copy that lost a subvolume boundary on btrfs (`cp -a` makes plain directories) is told
    // apart by verification.
    let flat = fs.mnt.join("flat");
    run(
        "cp",
        &[
            "-a",
            "--reflink=always",
            src.join("var/lib/machines/guest").to_str().unwrap(),
            flat.to_str().unwrap(),
        ],
    );
    let v =
        state::verify_tree(&src.join("var/lib/machines/guest"), &flat, Verify::Metadata).unwrap();
    assert_eq!(v.differences, 1, "{}", v.summary());
    assert_eq!(v.first[0].path, Path::new("inner"));
    assert!(
        v.first[0].what.contains("btrfs subvolume in the source"),
        "{v:?}"
    );
}

#[test]
fn nested_subvolumes_become_plain_directories_off_btrfs_with_a_warning() {
    let Some(bt) = loop_fs("btrfs") else { return };
    let Some(xfs) = loop_fs("xfs") else { return };
    let src = state_with_subvolumes(&bt);
    let dest = xfs.mnt.join("var/lib/machines/web");
    let (copy, _, warnings) = copied_clean(&src, &dest);
    assert!(copy.subvolumes.is_empty(), "{copy:?}");
    let mut flat = copy.subvolumes_flattened.clone();
    flat.sort();
    assert_eq!(
        flat,
        SUBVOLUMES.iter().map(PathBuf::from).collect::<Vec<_>>()
    );
    for s in SUBVOLUMES {
        let m = dest.join(s).symlink_metadata().unwrap();
        assert!(m.is_dir(), "{s}");
        assert_eq!(m.dev(), dest.symlink_metadata().unwrap().dev(), "{s}");
    }
    assert_eq!(rsync_diff(&src, &dest), "");
    let w = warnings
        .iter()
        .find(|w| w.code == "state-subvolumes-flattened")
        .unwrap_or_else(|| panic!("no warning about the flattened subvolumes: {warnings:?}"));
    for s in SUBVOLUMES {
        assert!(w.message.contains(s), "{w:?}");
    }
    // XFS cannot hold +C: that is reported too, as before.
    assert!(
        warnings.iter().any(|w| w.code == "inode-flags-lost"),
        "{warnings:?}"
    );
}

/// Interrupted inside a subvolume (the source changes under the copy, which stops it with an
/// error, after the files of one directory of the subvolume are finished), then run again:
/// the half-copied subvolume in the staging tree is kept and finished, not recopied.
/// A copy of `src` cut off where its walk reaches the directory `b`: once `ready` says the
/// part before it is finished (or after 20 s), `b` is swapped for a symlink and the copy stops
/// with "replaced by a symlink". `between` checks the staging tree left behind; then `b` is
/// put back and the copy resumed. Returns the resumed copy's report (resumed, verified clean).
fn interrupted_then_resumed(
    src: &Path,
    dest: &Path,
    b: &Path,
    ready: impl Fn() -> bool + Send + Sync + 'static,
    between: impl FnOnce(),
) -> nixos_nspawn::state::CopyReport {
    let aside = b.with_extension("aside");
    let (b2, aside2) = (b.to_path_buf(), aside.clone());
    set_hook(Some(Arc::new(move |point, path| {
        if point != HookPoint::BeforeOpen || path != b2 {
            return;
        }
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(20) && !ready() {
            std::thread::sleep(Duration::from_millis(20));
        }
        std::fs::rename(&b2, &aside2).unwrap();
        std::os::unix::fs::symlink("/etc", &b2).unwrap();
    })));
    let first = state::migrate_state(src, dest, &opts(StateMode::Copy));
    set_hook(None);
    let err = first.expect_err("the copy went on although the source changed");
    assert!(err.to_string().contains("replaced by a symlink"), "{err}");
    assert!(!dest.exists());
    between();

    std::fs::remove_file(b).unwrap();
    std::fs::rename(&aside, b).unwrap();
    let out = state::migrate_state(src, dest, &opts(StateMode::Copy)).unwrap();
    let StateOutcome::Copied {
        copy,
        verify,
        resumed,
        ..
    } = out
    else {
        panic!("{out:?}")
    };
    assert!(resumed);
    assert!(verify.is_clean(), "{}", verify.summary());
    assert!(
        copy.reused >= 64,
        "the finished files were copied again: {copy:?}"
    );
    copy
}

#[test]
fn a_half_copied_subvolume_is_resumed() {
    let Some(fs) = loop_fs("btrfs") else { return };
    let src = fs.mnt.join("var/lib/nixos-containers/web");
    let sv = src.join("var/lib/machines");
    subvolume_create(&sv);
    // 64 files: two full batches, so all are handed to the workers before `b` is reached.
    std::fs::create_dir_all(sv.join("a")).unwrap();
    for i in 0..64 {
        std::fs::write(sv.join(format!("a/f{i:02}")), format!("file {i}\n")).unwrap();
    }
    std::fs::create_dir_all(sv.join("b")).unwrap();
    std::fs::write(sv.join("b/last"), "last\n").unwrap();
    let dest = fs.mnt.join("var/lib/machines-new/web");
    let _turn = HOOK.lock().unwrap_or_else(|e| e.into_inner());
    let staged_a = fs
        .mnt
        .join("var/lib/machines-new/.web.partial/tree/var/lib/machines/a");
    let staged = staged_a.clone();
    let a = sv.join("a");
    let copy = interrupted_then_resumed(
        &src,
        &dest,
        &sv.join("b"),
        // Until the workers finished `a` (a file's mtime is set last).
        move || {
            (0..64).all(|i| {
                let n = format!("f{i:02}");
                match (
                    staged.join(&n).symlink_metadata(),
                    a.join(&n).symlink_metadata(),
                ) {
                    (Ok(d), Ok(s)) => d.mtime() == s.mtime() && d.mtime_nsec() == s.mtime_nsec(),
                    _ => false,
                }
            })
        },
        || {
            // The staging tree holds the subvolume, half done.
            assert!(is_subvolume(staged_a.parent().unwrap()));
            assert_eq!(std::fs::read_dir(&staged_a).unwrap().count(), 64);
        },
    );
    assert_eq!(copy.subvolumes, vec![PathBuf::from("var/lib/machines")]);
    assert!(is_subvolume(&dest.join("var/lib/machines")));
    assert_eq!(rsync_diff(&src, &dest), "");
}

/// `--state move` renames: nested subvolumes go along with the directory holding them (on one
/// subvolume), and a state directory that is a subvolume itself moves into another subvolume
/// (rename(2) moves a subvolume anywhere in its filesystem). A plain directory cannot leave its
/// subvolume: refused with the reason, nothing written.
#[test]
fn btrfs_move_carries_subvolumes_along() {
    let Some(fs) = loop_fs("btrfs") else { return };
    let src = state_with_subvolumes(&fs);
    let before = snapshot(&src, false);
    // /var/lib/machines a plain directory: the same subvolume as the legacy path.
    let dest = fs.mnt.join("var/lib/machines/web");
    let out = state::migrate_state(&src, &dest, &opts(StateMode::Move)).unwrap();
    assert!(matches!(out, StateOutcome::Moved), "{out:?}");
    assert!(!src.exists());
    for s in SUBVOLUMES {
        assert!(is_subvolume(&dest.join(s)), "{s} is not a subvolume");
    }
    assert_eq!(
        std::fs::read_to_string(dest.join("var/lib/machines/guest/inner/note")).unwrap(),
        "nested twice\n"
    );
    assert_eq!(
        snapshot(&dest, false)[Path::new("")].ino,
        before[Path::new("")].ino
    );

    // Into a subvolume (as tmpfiles makes /var/lib/machines): a plain state directory is
    // refused before anything is written …
    let machines = fs.mnt.join("var/lib/machines2");
    subvolume_create(&machines);
    let err =
        state::migrate_state(&dest, &machines.join("web"), &opts(StateMode::Move)).unwrap_err();
    assert!(
        err.to_string().contains("different btrfs subvolumes"),
        "{err}"
    );
    assert!(!machines.join("web").exists() && !machines.join(".web.journal").exists());
    // … a state directory that is a subvolume itself is moved, with what it holds.
    let own = fs.mnt.join("var/lib/nixos-containers/db");
    subvolume_create(&own);
    subvolume_create(&own.join("pg"));
    std::fs::write(own.join("pg/data"), "rows\n").unwrap();
    let ino = own.symlink_metadata().unwrap().ino();
    let out = state::migrate_state(&own, &machines.join("db"), &opts(StateMode::Move)).unwrap();
    assert!(matches!(out, StateOutcome::Moved), "{out:?}");
    assert!(!own.exists());
    assert!(is_subvolume(&machines.join("db")) && is_subvolume(&machines.join("db/pg")));
    assert_eq!(machines.join("db").symlink_metadata().unwrap().ino(), ino);
    assert_eq!(
        std::fs::read_to_string(machines.join("db/pg/data")).unwrap(),
        "rows\n"
    );
}

/// A state directory that is a subvolume itself (`btrfs subvolume create
/// /var/lib/nixos-containers/db`) is copied into a subvolume on btrfs, a plain directory
/// elsewhere (reported as `.`).
#[test]
fn a_state_directory_that_is_a_subvolume_is_copied_as_one() {
    let Some(bt) = loop_fs("btrfs") else { return };
    let Some(xfs) = loop_fs("xfs") else { return };
    let src = bt.mnt.join("var/lib/nixos-containers/db");
    subvolume_create(&src);
    build_bulk_tree(&src, 2, 4, 1, 1 << 20);
    subvolume_create(&bt.mnt.join("var/lib/machines"));
    let dest = bt.mnt.join("var/lib/machines/db");
    let (copy, _, _) = copied_clean(&src, &dest);
    assert_eq!(copy.subvolumes, vec![PathBuf::from(".")]);
    assert!(is_subvolume(&dest));
    assert_eq!(rsync_diff(&src, &dest), "");

    let dest = xfs.mnt.join("var/lib/machines/db");
    let (copy, _, warnings) = copied_clean(&src, &dest);
    assert_eq!(copy.subvolumes_flattened, vec![PathBuf::from(".")]);
    assert_eq!(rsync_diff(&src, &dest), "");
    assert!(
        warnings
            .iter()
            .any(|w| w.code == "state-subvolumes-flattened" && w.message.contains(": .")),
        "{warnings:?}"
    );
}

/// The read-only property of a subvolume as `btrfs property get` (the independent tool) shows it.
fn is_readonly(p: &Path) -> bool {
    let out = Command::new("btrfs")
        .args(["property", "get", "-ts"])
        .arg(p)
        .arg("ro")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "btrfs property get {}: {}",
        p.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    match String::from_utf8_lossy(&out.stdout).trim() {
        "ro=true" => true,
        "ro=false" => false,
        other => panic!("btrfs property get {}: {other}", p.display()),
    }
}

fn set_readonly(p: &Path, ro: bool) {
    run(
        "btrfs",
        &[
            "property",
            "set",
            "-ts",
            p.to_str().unwrap(),
            "ro",
            if ro { "true" } else { "false" },
        ],
    );
}

/// A state with read-only subvolumes, as snapshots made with `btrfs subvolume snapshot -r`
/// are: `srv/snap` (with its own owner, mode and times, files and a directory) holding a
/// read-only subvolume of its own, and a writable one next to them.
fn state_with_readonly_subvolumes(src: &Path) {
    build_bulk_tree(&src.join("srv/plain"), 2, 3, 0, 0);
    subvolume_create(&src.join("srv/snap"));
    build_bulk_tree(&src.join("srv/snap/data"), 2, 6, 1, 1 << 20);
    subvolume_create(&src.join("srv/snap/inner"));
    std::fs::write(src.join("srv/snap/inner/note"), "read-only twice\n").unwrap();
    subvolume_create(&src.join("srv/rw"));
    std::fs::write(src.join("srv/rw/note"), "writable\n").unwrap();
    own_subvolume_root(
        &src.join("srv/snap"),
        "2021-03-03 03:03:03.123456789",
        &src.join("srv/snap/inner"),
    );
    // Inside out: a read-only subvolume's root cannot be changed, not even its directory.
    set_readonly(&src.join("srv/snap/inner"), true);
    set_readonly(&src.join("srv/snap"), true);
}

/// Read-only subvolumes are read-only again in a copy on btrfs, with everything in them (the
/// property is set last); a run after that finds the copy done; verification tells a copy whose
/// read-only property differs from the source's.
#[test]
fn read_only_subvolumes_stay_read_only_on_btrfs() {
    let Some(fs) = loop_fs("btrfs") else { return };
    let src = fs.mnt.join("var/lib/nixos-containers/web");
    state_with_readonly_subvolumes(&src);
    let dest = fs.mnt.join("var/lib/machines/web");
    let (copy, _, warnings) = copied_clean(&src, &dest);
    let mut ro = copy.subvolumes_readonly.clone();
    ro.sort();
    assert_eq!(
        ro,
        [PathBuf::from("srv/snap"), PathBuf::from("srv/snap/inner")]
    );
    assert!(warnings.is_empty(), "{warnings:?}");
    assert!(is_readonly(&dest.join("srv/snap")));
    assert!(is_readonly(&dest.join("srv/snap/inner")));
    assert!(!is_readonly(&dest.join("srv/rw")));
    // Contents, owner, mode and times of the read-only subvolumes' roots are all there.
    assert_eq!(rsync_diff(&src, &dest), "");
    assert_eq!(
        std::fs::read_to_string(dest.join("srv/snap/inner/note")).unwrap(),
        "read-only twice\n"
    );
    // And it is read-only for real: the kernel refuses a write.
    let err = std::fs::write(dest.join("srv/snap/new"), "x").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EROFS), "{err}");

    // Again: done, nothing written.
    let again = state::migrate_state(&src, &dest, &opts(StateMode::Copy)).unwrap();
    assert!(
        matches!(again, StateOutcome::AlreadyDone { .. }),
        "{again:?}"
    );

    // A copy whose read-only property differs from the source's is told apart, both ways.
    set_readonly(&dest.join("srv/snap/inner"), false);
    set_readonly(&dest.join("srv/rw"), true);
    let v = state::verify_tree(&src, &dest, Verify::Metadata).unwrap();
    assert_eq!(v.differences, 2, "{}", v.summary());
    let mut found: Vec<(String, String)> = v
        .first
        .iter()
        .map(|d| (d.path.display().to_string(), d.what.clone()))
        .collect();
    found.sort();
    assert_eq!(
        found,
        [
            (
                "srv/rw".to_string(),
                "the btrfs subvolume is writable in the source but read-only in the copy"
                    .to_string()
            ),
            (
                "srv/snap/inner".to_string(),
                "the btrfs subvolume is read-only in the source but writable in the copy"
                    .to_string()
            ),
        ]
    );
    // … and so is the run after that: the copy no longer matches its source.
    let err = state::migrate_state(&src, &dest, &opts(StateMode::Copy)).unwrap_err();
    assert!(err.to_string().contains("no longer matches"), "{err}");
}

/// A state directory that is a read-only subvolume itself: copied into a subvolume that becomes
/// read-only after the final rename (a read-only subvolume cannot be renamed into another
/// directory); checked again by the next run; `--state move` is refused before anything is
/// written, with the way out.
#[test]
fn a_read_only_state_subvolume_is_read_only_after_the_rename() {
    let Some(fs) = loop_fs("btrfs") else { return };
    let src = fs.mnt.join("var/lib/nixos-containers/db");
    subvolume_create(&src);
    build_bulk_tree(&src, 2, 4, 1, 1 << 20);
    chattr("+a", &src);
    set_readonly(&src, true);
    let dest = fs.mnt.join("var/lib/machines/db");
    let (copy, _, _) = copied_clean(&src, &dest);
    assert_eq!(copy.subvolumes, vec![PathBuf::from(".")]);
    assert_eq!(copy.subvolumes_readonly, vec![PathBuf::from(".")]);
    assert!(is_subvolume(&dest) && is_readonly(&dest));
    // +a was set before the read-only property, which forbids it.
    assert_eq!(
        lsattr_map(dest.parent().unwrap()).get(Path::new("db")),
        Some(&"a".to_string())
    );
    assert_eq!(rsync_diff(&src, &dest), "");
    assert!(!fs.mnt.join("var/lib/machines/.db.partial").exists());
    let again = state::migrate_state(&src, &dest, &opts(StateMode::Copy)).unwrap();
    assert!(
        matches!(again, StateOutcome::AlreadyDone { .. }),
        "{again:?}"
    );
    // The root's property is verified too.
    set_readonly(&dest, false);
    let v = state::verify_tree(&src, &dest, Verify::Metadata).unwrap();
    assert_eq!(v.differences, 1, "{}", v.summary());
    assert_eq!(v.first[0].path, Path::new(""));
    assert!(v.first[0].what.contains("read-only in the source"), "{v:?}");
    set_readonly(&dest, true);

    // The legacy state changed after the migration: `--force` copies it again and keeps the
    // earlier copy aside, read-only as it was (a read-only subvolume cannot be moved into
    // another directory: made writable for the renames, read-only again after them).
    set_readonly(&src, false);
    std::fs::write(src.join("later"), "written after the migration\n").unwrap();
    set_readonly(&src, true);
    let err = state::migrate_state(&src, &dest, &opts(StateMode::Copy)).unwrap_err();
    assert!(err.to_string().contains("no longer matches"), "{err}");
    let forced = MigrateStateOptions {
        force: true,
        ..opts(StateMode::Copy)
    };
    let out = state::migrate_state(&src, &dest, &forced).unwrap();
    let StateOutcome::Copied {
        verify, replaced, ..
    } = out
    else {
        panic!("{out:?}")
    };
    assert!(verify.is_clean(), "{}", verify.summary());
    let replaced = replaced.expect("the earlier copy was not kept");
    assert!(is_subvolume(&dest) && is_readonly(&dest));
    assert!(is_subvolume(&replaced) && is_readonly(&replaced));
    assert!(dest.join("later").exists() && !replaced.join("later").exists());
    let attrs = lsattr_map(dest.parent().unwrap());
    assert_eq!(attrs.get(Path::new("db")), Some(&"a".to_string()));
    assert_eq!(
        attrs.get(Path::new(replaced.file_name().unwrap())),
        Some(&"a".to_string())
    );
    assert_eq!(rsync_diff(&src, &dest), "");

    // rename(2) cannot move a read-only subvolume into another directory: refused up front.
    let moved = fs.mnt.join("var/lib/machines/db-moved");
    let err = state::migrate_state(&src, &moved, &opts(StateMode::Move)).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("read-only btrfs subvolume")
            && msg.contains("btrfs property set -ts")
            && msg.contains("--state copy"),
        "{msg}"
    );
    assert!(src.exists() && is_readonly(&src));
    assert!(!moved.exists() && !fs.mnt.join("var/lib/machines/.db-moved.journal").exists());
    assert!(state::check_move(&src, &moved).is_err());

    // Writable, but append-only (+a): rename(2) refuses that too, also within its directory.
    set_readonly(&src, false);
    let renamed = src.with_file_name("db2");
    let err = state::check_move(&src, &renamed).unwrap_err().to_string();
    assert!(
        err.contains("it is +a (chattr), which forbids renaming it")
            && err.contains("chattr -a")
            && err.contains("--state copy"),
        "{err}"
    );
    unfreeze(&src);
    for d in [&dest, &replaced] {
        set_readonly(d, false);
        unfreeze(d);
    }
}

/// Off btrfs a read-only subvolume becomes a writable plain directory: the warning about the
/// flattened subvolumes says which ones were read-only.
#[test]
fn read_only_subvolumes_flattened_off_btrfs_are_named_in_the_warning() {
    let Some(bt) = loop_fs("btrfs") else { return };
    let Some(xfs) = loop_fs("xfs") else { return };
    let src = bt.mnt.join("var/lib/nixos-containers/web");
    state_with_readonly_subvolumes(&src);
    let dest = xfs.mnt.join("var/lib/machines/web");
    let (copy, _, warnings) = copied_clean(&src, &dest);
    assert_eq!(rsync_diff(&src, &dest), "");
    let mut flat = copy.subvolumes_flattened.clone();
    flat.sort();
    assert_eq!(
        flat,
        ["srv/rw", "srv/snap", "srv/snap/inner"].map(PathBuf::from)
    );
    let w = warnings
        .iter()
        .find(|w| w.code == "state-subvolumes-flattened")
        .unwrap_or_else(|| panic!("{warnings:?}"));
    let (_, ro_part) = w
        .message
        .split_once("2 of them were read-only (btrfs property ro): ")
        .unwrap_or_else(|| panic!("the lost read-only property is not named: {w:?}"));
    assert!(
        ro_part.contains("srv/snap")
            && ro_part.contains("srv/snap/inner")
            && !ro_part.contains("srv/rw"),
        "{w:?}"
    );
    assert!(ro_part.contains("writable"), "{w:?}");
    // The copy is a writable directory indeed.
    std::fs::write(dest.join("srv/snap/new"), "x").unwrap();
}

/// Interrupted after a read-only subvolume was finished in the staging tree (read-only
/// already), then run again: the subvolume is made writable to be resumed into, its files are
/// kept, and it is read-only again at the end.
#[test]
fn a_resumed_copy_ends_with_the_read_only_subvolume_read_only() {
    let Some(fs) = loop_fs("btrfs") else { return };
    let src = fs.mnt.join("var/lib/nixos-containers/web");
    // btrfs lists a directory in creation order: `a` (the subvolume) is walked before `b`.
    let sv = src.join("a");
    subvolume_create(&sv);
    // 64 files: two full batches, so all are handed to the workers before `b` is reached.
    for i in 0..64 {
        std::fs::write(sv.join(format!("f{i:02}")), format!("file {i}\n")).unwrap();
    }
    set_readonly(&sv, true);
    std::fs::create_dir_all(src.join("b")).unwrap();
    std::fs::write(src.join("b/last"), "last\n").unwrap();
    let dest = fs.mnt.join("var/lib/machines/web");
    let _turn = HOOK.lock().unwrap_or_else(|e| e.into_inner());
    let staged = fs.mnt.join("var/lib/machines/.web.partial/tree/a");
    let staged2 = staged.clone();
    interrupted_then_resumed(
        &src,
        &dest,
        &src.join("b"),
        // Until the staged subvolume is finished (read-only).
        move || staged2.exists() && is_readonly(&staged2),
        || assert!(is_subvolume(&staged) && is_readonly(&staged)),
    );
    assert!(is_subvolume(&dest.join("a")) && is_readonly(&dest.join("a")));
    assert_eq!(rsync_diff(&src, &dest), "");

    // A staging directory holding a read-only subvolume can be removed too (`--force` over
    // a foreign staging directory, `--cleanup`): the property is lifted on the way.
    let other = fs.mnt.join("var/lib/machines/.other.partial");
    subvolume_create(&other.join("tree"));
    std::fs::write(other.join("tree/f"), "x").unwrap();
    set_readonly(&other.join("tree"), true);
    let parent = std::fs::File::open(fs.mnt.join("var/lib/machines")).unwrap();
    state::remove_tree_at(std::os::fd::AsFd::as_fd(&parent), c".other.partial").unwrap();
    assert!(!other.exists());
}

/// `--state move` of a state with a mount point inside (a bind mount of a subvolume from
/// elsewhere, which looks like a nested subvolume but for its mount): refused before anything
/// is written, naming the mount point and not the nested subvolumes, which are no mounts; once
/// it is unmounted the state moves, subvolumes and all.
#[test]
fn btrfs_move_is_refused_with_a_mount_inside_and_goes_ahead_without() {
    let Some(fs) = loop_fs("btrfs") else { return };
    let src = state_with_subvolumes(&fs);
    let bind = bind_foreign_subvolume(&fs, &src.join("mnt/host"));
    // A read-only nested subvolume moves along too (its own directory stays where it is).
    set_readonly(&src.join("srv/db"), true);
    let dest = fs.mnt.join("var/lib/machines/web");
    let before = snapshot(&src, false);

    let err = state::migrate_state(&src, &dest, &opts(StateMode::Move)).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("1 mount point is inside it (mnt/host)")
            && msg.contains("nothing was written")
            && msg.contains("--state copy"),
        "{msg}"
    );
    // The list names the mount point alone: no nested subvolume is taken for a mount.
    let listed = msg
        .split_once("inside it (")
        .and_then(|(_, rest)| rest.split_once(')'))
        .map(|(list, _)| list)
        .unwrap_or_default();
    assert_eq!(listed, "mnt/host", "{msg}");
    assert!(state::check_move(&src, &dest).is_err());
    assert_eq!(snapshot(&src, false), before);
    assert!(!dest.exists() && !fs.mnt.join("var/lib/machines/.web.journal").exists());
    assert!(src.join("mnt/host/not-ours").exists());

    drop(bind);
    let out = state::migrate_state(&src, &dest, &opts(StateMode::Move)).unwrap();
    assert!(matches!(out, StateOutcome::Moved), "{out:?}");
    for s in SUBVOLUMES {
        assert!(is_subvolume(&dest.join(s)), "{s} is not a subvolume");
    }
    assert!(is_readonly(&dest.join("srv/db")));
    assert!(!src.exists());
}

/// Many mount points: the first few are named, the rest counted; found at any depth and
/// inside nested subvolumes, with the walk's descriptors bounded like every walk.
#[test]
fn a_move_refusal_names_the_first_mount_points_and_counts_the_rest() {
    let Some(fs) = loop_fs("btrfs") else { return };
    let src = fs.mnt.join("var/lib/nixos-containers/web");
    subvolume_create(&src.join("srv/sv"));
    let mut deep = src.join("srv/sv");
    for i in 0..40 {
        deep = deep.join(format!("d{i}"));
    }
    let mut mounts = Vec::new();
    for i in 0..6 {
        mounts.push(Tmpfs::mount(&src.join(format!("m{i}")), "1m"));
    }
    mounts.push(Tmpfs::mount(&deep, "1m"));
    let dest = fs.mnt.join("var/lib/machines/web");
    let err = state::check_move(&src, &dest).unwrap_err().to_string();
    assert!(
        err.contains("7 mount points are inside it (") && err.contains(" and 2 more)"),
        "{err}"
    );
    assert!(
        err.contains("unmount them") && err.contains("their fileSystems entries"),
        "{err}"
    );
    let listed = err.matches(", ").count();
    assert!(listed >= 4, "{err}");
    // Only the deep one left: found, with its relative path.
    mounts.truncate(0);
    let _deep = Tmpfs::mount(&deep, "1m");
    let err = state::check_move(&src, &dest).unwrap_err().to_string();
    let rel = deep.strip_prefix(&src).unwrap().display().to_string();
    assert!(
        err.contains(&format!("1 mount point is inside it ({rel})")),
        "{err}"
    );
}
