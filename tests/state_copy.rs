//! The state engine on real files, as root: fidelity (checked by rsync as an independent
//! oracle and by direct lstat/xattr reads), idempotence, refusal to merge, move, mounts, space,
//! errors and profile carrying.
#![allow(clippy::unwrap_used)]

#[path = "state_util.rs"]
mod util;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use nixos_nspawn::state::{
    self, MigrateStateOptions, NoProgress, StateErrorKind, StateMode, StateOutcome, Verify,
};
use util::*;

fn opts(verify: Verify) -> MigrateStateOptions<'static> {
    MigrateStateOptions {
        mode: StateMode::Copy,
        verify,
        force: false,
        progress: &NoProgress,
        recheck: Verify::Metadata,
    }
}

fn xattr(p: &Path, name: &str) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; 4096];
    rustix::fs::lgetxattr(p, name, &mut buf[..])
        .ok()
        .map(|n| buf[..n].to_vec())
}

#[test]
fn copy_keeps_every_kind_of_entry_and_metadata() {
    require_root();
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("nixos-containers/web");
    let dest = t.path().join("machines/web");
    build_edge_tree(&src);
    let before = snapshot(&src, true);
    let count = Count::default();
    let o = MigrateStateOptions {
        mode: StateMode::Copy,
        verify: Verify::Full,
        force: false,
        progress: &count,
        recheck: Verify::Metadata,
    };
    let out = state::migrate_state(&src, &dest, &o).unwrap();
    // The source was not changed at all (symlink atimes excepted: readlink updates them).
    assert_eq!(snapshot(&src, true), before, "the source changed");
    let StateOutcome::Copied {
        copy,
        verify,
        resumed,
        replaced,
    } = out
    else {
        panic!("expected Copied, got {out:?}");
    };
    assert!(!resumed && replaced.is_none());
    assert!(verify.is_clean(), "{}", verify.summary());
    assert!(
        verify.bytes_hashed > 300_000,
        "full verification hashed the data"
    );
    assert_eq!(copy.hardlinks, 2, "{copy:?}");
    assert_eq!(copy.specials, 4, "{copy:?}");
    assert!(copy.skipped_mounts.is_empty());

    // Independent oracle.
    assert_eq!(rsync_diff(&src, &dest), "", "rsync sees differences");
    // Direct checks of what rsync might be lenient about.
    let m = |p: &str| dest.join(p).symlink_metadata().unwrap();
    assert_eq!(m("bin/su").mode() & 0o7777, 0o4755);
    assert_eq!(m("bin/sgid").mode() & 0o7777, 0o2711);
    assert_eq!(m("tmp").mode() & 0o7777, 0o1777);
    assert_eq!(
        m("srv/shared").mode(),
        src.join("srv/shared").symlink_metadata().unwrap().mode()
    );
    assert_eq!(m("srv/shared").mode() & 0o7000, 0o2000);
    assert_eq!(
        (
            m("home/alice/huge-uid").uid(),
            m("home/alice/huge-uid").gid()
        ),
        (2_147_483_648, 4_000_000_000)
    );
    assert_eq!(m("home/alice/high").uid(), 100_000);
    assert_eq!(m("bin/dangling").uid(), 100_001, "symlink owner kept");
    assert_eq!(
        (m("bin/dangling").mtime(), m("bin/dangling").mtime_nsec()),
        (1_000_000_000, 123_456_789)
    );
    assert_eq!(
        (m("etc").mtime(), m("etc").mtime_nsec()),
        (1_400_000_000, 42),
        "directory mtime set post-order"
    );
    assert_eq!(
        (
            m("home/alice/deep/er/est").mtime(),
            m("home/alice/deep/er/est").mtime_nsec()
        ),
        (1_400_000_000, 42)
    );
    assert_eq!(
        std::fs::read_link(dest.join("etc/escape")).unwrap(),
        Path::new("../../../../../../../etc/shadow")
    );
    assert_eq!(
        std::fs::read_link(dest.join("hostetc")).unwrap(),
        Path::new("/etc")
    );
    assert!(
        m("hostetc").file_type().is_symlink(),
        "an absolute symlink stays a symlink"
    );
    assert_eq!(m("usr/lib/libx.so").ino(), m("usr/lib64/libx.so").ino());
    assert_eq!(m("usr/lib/libx.so").ino(), m("bin/libx-again").ino());
    assert_eq!(m("usr/lib/libx.so").nlink(), 3);
    assert_eq!(
        m("dev/null").rdev(),
        src.join("dev/null").symlink_metadata().unwrap().rdev()
    );
    assert_eq!(m("dev/loop7").rdev(), rustix::fs::makedev(7, 7));
    use std::os::unix::fs::FileTypeExt;
    assert!(m("run-fifo").file_type().is_fifo());
    assert!(m("run-sock").file_type().is_socket());
    assert!(m("dev/loop7").file_type().is_block_device());
    // Sparseness: 64 MiB apparent, a few KiB allocated, like the source.
    assert_eq!(m("var/sparse.img").size(), 64 << 20);
    assert!(allocated(&dest.join("var/sparse.img")) <= allocated(&src.join("var/sparse.img")));
    assert!(allocated(&dest.join("var/sparse.img")) < 1 << 20);
    assert_eq!(allocated(&dest.join("var/all-hole")), 0);
    // Xattrs, capabilities, ACLs.
    for (p, n) in [
        ("etc/os-release", "user.mime_type"),
        ("etc/os-release", "trusted.overlay.x"),
        ("etc/os-release", "system.posix_acl_access"),
        ("srv/shared", "system.posix_acl_access"),
        ("srv/shared", "system.posix_acl_default"),
        ("srv/shared", "user.dir"),
        ("bin/su", "security.capability"),
        ("etc/escape", "trusted.on-a-symlink"),
    ] {
        let want = xattr(&src.join(p), n);
        assert!(want.is_some(), "fixture has {n} on {p}");
        assert_eq!(xattr(&dest.join(p), n), want, "{n} on {p}");
    }
    // Children of a directory with a default ACL did not inherit one.
    assert_eq!(
        xattr(&dest.join("srv/shared"), "system.posix_acl_default"),
        xattr(&src.join("srv/shared"), "system.posix_acl_default")
    );
    // Odd names.
    assert_eq!(
        std::fs::read(dest.join("home/alice/new\nline")).unwrap(),
        b"nl"
    );
    // Staging gone, journal kept next to the destination.
    assert!(!t.path().join("machines/.web.partial").exists());
    let j = std::fs::read_to_string(t.path().join("machines/.web.journal")).unwrap();
    assert!(j.contains("\"event\":\"done\""), "{j}");
    // Progress saw everything.
    use std::sync::atomic::Ordering::SeqCst;
    assert_eq!(count.total_entries.load(SeqCst), copy.entries);
    assert_eq!(count.entries.load(SeqCst), copy.entries);
    assert_eq!(count.bytes.load(SeqCst), copy.bytes);
}

#[test]
fn second_run_is_a_no_op_that_touches_nothing() {
    require_root();
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    let dest = t.path().join("machines/web");
    build_edge_tree(&src);
    state::migrate_state(&src, &dest, &opts(Verify::Metadata)).unwrap();
    let before = snapshot(&dest, false);
    let parent_before = snapshot(&t.path().join("machines"), false);
    std::thread::sleep(std::time::Duration::from_millis(20));
    let out = state::migrate_state(&src, &dest, &opts(Verify::Full)).unwrap();
    let StateOutcome::AlreadyDone { verify } = out else {
        panic!("expected AlreadyDone, got {out:?}");
    };
    assert!(verify.is_clean() && verify.entries > 30, "{verify:?}");
    assert_eq!(
        snapshot(&dest, false),
        before,
        "mtimes/ctimes of the copy changed"
    );
    assert_eq!(snapshot(&t.path().join("machines"), false), parent_before);
}

#[test]
fn verify_reports_each_kind_of_difference_with_paths() {
    require_root();
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    let dst = t.path().join("dst");
    build_edge_tree(&src);
    state::copy_tree_raw(&src, &dst, &NoProgress).unwrap();
    assert!(
        state::verify_tree(&src, &dst, Verify::Full)
            .unwrap()
            .is_clean()
    );

    // Same size, same mtime, different content: only Full sees it.
    let f = dst.join("etc/ssh/ssh_host_ed25519_key");
    let mt = f.symlink_metadata().unwrap();
    let mut data = std::fs::read(&f).unwrap();
    data[0] ^= 1;
    std::fs::write(&f, data).unwrap();
    let ts = rustix::fs::Timestamps {
        last_access: rustix::fs::Timespec {
            tv_sec: mt.atime(),
            tv_nsec: mt.atime_nsec(),
        },
        last_modification: rustix::fs::Timespec {
            tv_sec: mt.mtime(),
            tv_nsec: mt.mtime_nsec(),
        },
    };
    rustix::fs::utimensat(rustix::fs::CWD, &f, &ts, rustix::fs::AtFlags::empty()).unwrap();
    let meta_only = state::verify_tree(&src, &dst, Verify::Metadata).unwrap();
    assert!(meta_only.is_clean(), "{}", meta_only.summary());
    let full = state::verify_tree(&src, &dst, Verify::Full).unwrap();
    assert_eq!(full.differences, 1, "{}", full.summary());
    assert_eq!(
        full.first[0].path,
        Path::new("etc/ssh/ssh_host_ed25519_key")
    );
    assert_eq!(full.first[0].what, "content differs");

    // Mode, owner, an extra file, a missing file, an xattr, a symlink target, a broken hard link.
    std::fs::set_permissions(dst.join("bin/su"), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::os::unix::fs::lchown(dst.join("home/alice/high"), Some(0), Some(0)).unwrap();
    std::fs::write(dst.join("etc/extra"), b"x").unwrap();
    std::fs::remove_file(dst.join("home/alice/empty")).unwrap();
    rustix::fs::lremovexattr(dst.join("etc/os-release"), "user.mime_type").unwrap();
    std::fs::remove_file(dst.join("alice-link")).unwrap();
    std::os::unix::fs::symlink("/elsewhere", dst.join("alice-link")).unwrap();
    std::fs::remove_file(dst.join("bin/libx-again")).unwrap();
    std::fs::copy(dst.join("usr/lib/libx.so"), dst.join("bin/libx-again")).unwrap();
    let r = state::verify_tree(&src, &dst, Verify::Full).unwrap();
    let text = r
        .first
        .iter()
        .map(|d| format!("{}: {}\n", d.path.display(), d.what))
        .collect::<String>();
    for want in [
        "bin/su: mode differs: 4755 vs 0755",
        "home/alice/high: owner differs: 100000:100000 vs 0:0",
        "etc/extra: in the copy but not in the source",
        "home/alice/empty: missing in the copy",
        "etc/os-release: extended attributes differ",
        "alice-link: symlink target differs",
        "etc/ssh/ssh_host_ed25519_key: content differs",
    ] {
        assert!(text.contains(want), "missing {want:?} in:\n{text}");
    }
    assert!(text.contains("libx"), "broken hard link reported:\n{text}");
    assert!(r.differences >= 8, "{}", r.summary());
    assert!(r.summary().contains("differences in"), "{}", r.summary());
}

#[test]
fn refuses_a_destination_holding_another_machine_unless_forced() {
    require_root();
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    let dest = t.path().join("machines/web");
    build_edge_tree(&src);
    std::fs::create_dir_all(dest.join("etc")).unwrap();
    std::fs::write(dest.join("etc/hostname"), b"another-machine").unwrap();
    let err = state::migrate_state(&src, &dest, &opts(Verify::Full)).unwrap_err();
    assert!(
        matches!(err.kind(), StateErrorKind::DestOccupied { .. }),
        "{err}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains(&dest.display().to_string())
            && msg.contains("never merged")
            && msg.contains("--force"),
        "{msg}"
    );
    assert_eq!(
        std::fs::read(dest.join("etc/hostname")).unwrap(),
        b"another-machine",
        "untouched"
    );
    assert!(!dest.join("etc/os-release").exists(), "nothing merged in");

    let o = MigrateStateOptions {
        force: true,
        ..opts(Verify::Full)
    };
    let out = state::migrate_state(&src, &dest, &o).unwrap();
    let StateOutcome::Copied {
        replaced: Some(old),
        ..
    } = out
    else {
        panic!("{out:?}")
    };
    assert_eq!(
        std::fs::read(old.join("etc/hostname")).unwrap(),
        b"another-machine",
        "the old one is kept"
    );
    assert_eq!(rsync_diff(&src, &dest), "");

    // An empty directory is not "another machine".
    let dest2 = t.path().join("machines/empty");
    std::fs::create_dir_all(&dest2).unwrap();
    let out = state::migrate_state(&src, &dest2, &opts(Verify::Metadata)).unwrap();
    assert!(
        matches!(out, StateOutcome::Copied { replaced: None, .. }),
        "{out:?}"
    );
    assert_eq!(rsync_diff(&src, &dest2), "");
}

#[test]
fn a_changed_source_after_a_finished_copy_is_reported_not_merged() {
    require_root();
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    let dest = t.path().join("machines/web");
    build_edge_tree(&src);
    state::migrate_state(&src, &dest, &opts(Verify::Metadata)).unwrap();
    std::fs::write(src.join("etc/new-since"), b"container ran again").unwrap();
    let err = state::migrate_state(&src, &dest, &opts(Verify::Metadata)).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("no longer matches") && msg.contains("etc/new-since"),
        "{msg}"
    );
    assert!(!dest.join("etc/new-since").exists());
    let o = MigrateStateOptions {
        force: true,
        ..opts(Verify::Full)
    };
    let out = state::migrate_state(&src, &dest, &o).unwrap();
    assert!(
        matches!(
            out,
            StateOutcome::Copied {
                replaced: Some(_),
                ..
            }
        ),
        "{out:?}"
    );
    assert_eq!(rsync_diff(&src, &dest), "");
}

#[test]
fn move_renames_on_the_same_filesystem_and_refuses_across() {
    require_root();
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("nixos-containers/web");
    let dest = t.path().join("machines/web");
    build_edge_tree(&src);
    let ino = src.symlink_metadata().unwrap().ino();
    let o = MigrateStateOptions {
        mode: StateMode::Move,
        ..opts(Verify::None)
    };
    assert_eq!(
        state::migrate_state(&src, &dest, &o).unwrap(),
        StateOutcome::Moved
    );
    assert!(!src.exists());
    assert_eq!(
        dest.symlink_metadata().unwrap().ino(),
        ino,
        "renamed, not copied"
    );
    assert!(matches!(
        state::migrate_state(&src, &dest, &o).unwrap(),
        StateOutcome::AlreadyDone { .. }
    ));

    // Across filesystems: a tmpfs.
    let fs = Tmpfs::mount(&t.path().join("other-fs"), "16m");
    let src2 = fs.0.join("web2");
    std::fs::create_dir_all(src2.join("etc")).unwrap();
    std::fs::write(src2.join("etc/os-release"), b"ID=nixos").unwrap();
    let err = state::migrate_state(&src2, &t.path().join("machines/web2"), &o).unwrap_err();
    assert!(matches!(err.kind(), StateErrorKind::CrossDevice { .. }));
    let msg = err.to_string();
    assert!(
        msg.contains("different filesystems") && msg.contains("--state copy"),
        "{msg}"
    );
    assert!(src2.join("etc/os-release").exists(), "source untouched");
    // Skip does nothing.
    let s = MigrateStateOptions {
        mode: StateMode::Skip,
        ..opts(Verify::Full)
    };
    assert_eq!(
        state::migrate_state(&src2, &t.path().join("machines/web3"), &s).unwrap(),
        StateOutcome::Skipped
    );
    assert!(!t.path().join("machines/web3").exists());
}

#[test]
fn mount_points_inside_the_source_are_not_crossed() {
    require_root();
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    let dest = t.path().join("machines/web");
    std::fs::create_dir_all(src.join("proc")).unwrap();
    std::fs::write(src.join("file"), b"x").unwrap();
    let m = Tmpfs::mount(&src.join("proc"), "1m");
    std::fs::write(m.0.join("inside-the-mount"), b"must not be copied").unwrap();
    // A file bind mount too (nspawn binds e.g. resolv.conf into a running container).
    std::fs::write(src.join("resolv.conf"), b"placeholder").unwrap();
    let outside = t.path().join("host-resolv.conf");
    std::fs::write(&outside, b"host data").unwrap();
    run(
        "mount",
        &[
            "--bind",
            outside.to_str().unwrap(),
            src.join("resolv.conf").to_str().unwrap(),
        ],
    );
    let _bind = Tmpfs(src.join("resolv.conf"));
    let out = state::migrate_state(&src, &dest, &opts(Verify::Full)).unwrap();
    let StateOutcome::Copied { copy, verify, .. } = out else {
        panic!("{out:?}")
    };
    let mut skipped = copy.skipped_mounts.clone();
    skipped.sort();
    assert_eq!(
        skipped,
        vec![
            Path::new("proc").to_path_buf(),
            Path::new("resolv.conf").to_path_buf()
        ]
    );
    assert_eq!(verify.skipped_mounts, skipped);
    assert!(
        !dest.join("resolv.conf").exists(),
        "a bind-mounted file is not copied"
    );
    assert!(dest.join("proc").is_dir(), "an empty directory stands in");
    assert!(!dest.join("proc/inside-the-mount").exists());
    assert_eq!(std::fs::read(dest.join("file")).unwrap(), b"x");
}

#[test]
fn space_is_computed_from_allocation_and_checked_before_copying() {
    require_root();
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    build_edge_tree(&src);
    let need = state::required_space(&src).unwrap();
    // Hard links once: du agrees (it counts each inode once too).
    let du = std::process::Command::new("du")
        .args(["-s", "-B1"])
        .arg(&src)
        .output()
        .unwrap();
    let du: u64 = String::from_utf8_lossy(&du.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(need.allocated, du, "{need:?}");
    assert!(
        need.bytes >= (64 << 20) + (8 << 20),
        "apparent sizes include holes: {need:?}"
    );
    assert!(need.allocated < 8 << 20, "holes take no space: {need:?}");
    assert_eq!(need.entries as usize, snapshot(&src, false).len() - 1);
    let v = rustix::fs::statvfs(t.path()).unwrap();
    let free = state::free_space(t.path()).unwrap();
    assert!(free.abs_diff(v.f_bavail * v.f_frsize) < 64 << 20, "{free}");

    // A destination too small: refused before anything is written, with the numbers.
    let small = Tmpfs::mount(&t.path().join("small"), "256k");
    let dest = small.0.join("machines/web");
    let err = state::migrate_state(&src, &dest, &opts(Verify::Full)).unwrap_err();
    let StateErrorKind::NotEnoughSpace {
        need: n, free: f, ..
    } = err.kind()
    else {
        panic!("{err}")
    };
    assert!(n > f);
    let msg = err.to_string();
    assert!(
        msg.contains("needed")
            && msg.contains("free")
            && msg.contains(&small.0.display().to_string()),
        "{msg}"
    );
    assert!(!small.0.join("machines/.web.partial/tree").exists());
}

#[test]
fn disk_full_during_the_copy_names_the_file_and_the_fix() {
    require_root();
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("big"), vec![1u8; 2 << 20]).unwrap();
    let small = Tmpfs::mount(&t.path().join("small"), "512k");
    let err = state::copy_tree_raw(&src, &small.0.join("web"), &NoProgress).unwrap_err();
    assert!(
        matches!(err.kind(), StateErrorKind::DiskFull { .. }),
        "{err}"
    );
    let msg = err.to_string();
    assert!(
        msg.starts_with("disk full") && msg.contains("web/big") && msg.contains("--state move"),
        "{msg}"
    );
}

#[test]
fn errors_name_the_path_and_refuse_symlinked_roots() {
    require_root();
    let t = tempfile::tempdir().unwrap();
    let missing = t.path().join("does-not-exist");
    let err =
        state::migrate_state(&missing, &t.path().join("m/x"), &opts(Verify::Full)).unwrap_err();
    assert!(
        err.to_string().contains(&missing.display().to_string()),
        "{err}"
    );
    assert_eq!(err.raw_os_error(), Some(libc::ENOENT));

    std::fs::create_dir_all(t.path().join("real")).unwrap();
    std::os::unix::fs::symlink(t.path().join("real"), t.path().join("link")).unwrap();
    let err = state::migrate_state(
        &t.path().join("link"),
        &t.path().join("m/y"),
        &opts(Verify::Full),
    )
    .unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("symlink") && msg.contains("link"), "{msg}");
    assert!(!t.path().join("m/y").exists());

    let file = t.path().join("a-file");
    std::fs::write(&file, b"").unwrap();
    let err = state::migrate_state(&file, &t.path().join("m/z"), &opts(Verify::Full)).unwrap_err();
    assert!(err.to_string().contains("is not a directory"), "{err}");
}

/// Put the finished copy `dest` back the way an interrupted run leaves it: its journal into
/// the staging directory and, with `tree`, the copy itself as the staging tree. Returns the
/// staging directory.
fn back_into_staging(dest: &Path, tree: bool) -> std::path::PathBuf {
    let parent = dest.parent().unwrap();
    let name = dest.file_name().unwrap().to_string_lossy();
    let staging = parent.join(format!(".{name}.partial"));
    std::fs::create_dir_all(&staging).unwrap();
    if tree {
        std::fs::rename(dest, staging.join("tree")).unwrap();
    }
    std::fs::rename(
        parent.join(format!(".{name}.journal")),
        staging.join("journal"),
    )
    .unwrap();
    staging
}

#[test]
fn a_staging_dir_of_another_source_is_not_reused() {
    require_root();
    let t = tempfile::tempdir().unwrap();
    let a = t.path().join("a");
    let b = t.path().join("b");
    build_bulk_tree(&a, 3, 5, 0, 0);
    build_bulk_tree(&b, 2, 3, 0, 0);
    let dest = t.path().join("machines/web");
    // Fake an interrupted copy of `a`: run a full copy, then put it back into staging.
    state::migrate_state(&a, &dest, &opts(Verify::Full)).unwrap();
    back_into_staging(&dest, true);
    let err = state::migrate_state(&b, &dest, &opts(Verify::Full)).unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(err.kind(), StateErrorKind::StagingForeign { .. }),
        "{msg}"
    );
    assert!(
        msg.contains(&a.display().to_string()) && msg.contains("--force"),
        "{msg}"
    );
    // Forced: the stale staging is replaced and the copy is of `b` only.
    let o = MigrateStateOptions {
        force: true,
        ..opts(Verify::Full)
    };
    state::migrate_state(&b, &dest, &o).unwrap();
    assert_eq!(rsync_diff(&b, &dest), "");
    // And resuming `a`'s own staging works.
    let dest_a = t.path().join("machines/a");
    state::migrate_state(&a, &dest_a, &opts(Verify::Full)).unwrap();
    assert_eq!(rsync_diff(&a, &dest_a), "");
}

/// Killed after the journal's `done` record but before the journal was moved next to the copy
/// (the last steps share one directory sync): the next run recognises the finished copy,
/// checks it and finishes the bookkeeping, instead of refusing the destination as somebody
/// else's.
#[test]
fn killed_after_done_before_the_journal_moved_is_finished_not_refused() {
    require_root();
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    build_edge_tree(&src);
    let dest = t.path().join("machines/web");
    state::migrate_state(&src, &dest, &opts(Verify::Full)).unwrap();
    let staging = back_into_staging(&dest, false);
    let j = std::fs::read_to_string(staging.join("journal")).unwrap();
    assert!(j.trim_end().ends_with("{\"event\":\"done\"}"), "{j}");
    let before = snapshot(&dest, false);
    let out = state::migrate_state(&src, &dest, &opts(Verify::Full)).unwrap();
    let StateOutcome::AlreadyDone { verify } = out else {
        panic!("expected AlreadyDone, got {out:?}");
    };
    assert!(verify.is_clean(), "{verify:?}");
    assert_eq!(snapshot(&dest, false), before);
    assert!(!staging.exists());
    assert!(t.path().join("machines/.web.journal").exists());
}

/// Where power was lost after the copy was renamed into place, before `done` reached the disk
/// (`verified`, `renamed` and `done` are made durable together; `start` by the `syncfs` after
/// copying): what the journal holds then.
#[derive(Clone, Copy, Debug)]
enum LostAt {
    /// Before `done`'s fsync: the journal, still in staging, holds only `start`.
    JournalInStaging,
    /// After the journal's move, before its sync (which runs beside the directory's): the
    /// journal next to the copy holds only `start`, an empty staging directory is left.
    JournalMoved,
}

/// The next run verifies such a copy again at the level asked for, not by metadata alone: a
/// clean copy is finished (a re-run after that is the ordinary "already done"); one whose
/// contents differ behind unchanged metadata is refused and left as it is, without `done`.
fn power_lost_after_the_rename(at: LostAt) {
    require_root();
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    build_edge_tree(&src);
    let dest = t.path().join("machines/web");
    let journal = t.path().join("machines/.web.journal");
    let staging = t.path().join("machines/.web.partial");
    let only_start = || {
        let text = std::fs::read_to_string(&journal).unwrap();
        let first = format!("{}\n", text.lines().next().unwrap());
        assert!(first.contains("\"event\":\"start\""), "{text}");
        std::fs::create_dir_all(&staging).unwrap();
        match at {
            LostAt::JournalInStaging => {
                std::fs::write(staging.join("journal"), first).unwrap();
                std::fs::remove_file(&journal).unwrap();
            }
            LostAt::JournalMoved => std::fs::write(&journal, first).unwrap(),
        }
    };
    state::migrate_state(&src, &dest, &opts(Verify::Full)).unwrap();
    only_start();
    let before = snapshot(&dest, false);
    let out = state::migrate_state(&src, &dest, &opts(Verify::Full)).unwrap();
    let StateOutcome::AlreadyDone { verify } = out else {
        panic!("{at:?}: expected AlreadyDone, got {out:?}");
    };
    assert!(verify.is_clean(), "{at:?}: {verify:?}");
    assert_eq!(
        verify.level,
        Verify::Full,
        "{at:?}: contents checked, not just metadata"
    );
    assert!(
        verify.files_hashed + verify.files_by_extents > 0,
        "{at:?}: {verify:?}"
    );
    assert_eq!(snapshot(&dest, false), before);
    assert!(
        !staging.exists(),
        "{at:?}: the staging directory is removed"
    );
    let j = std::fs::read_to_string(&journal).unwrap();
    assert!(
        j.trim_end().ends_with("{\"event\":\"done\"}"),
        "{at:?}: {j}"
    );
    let again = state::migrate_state(&src, &dest, &opts(Verify::Full)).unwrap();
    assert!(
        matches!(again, StateOutcome::AlreadyDone { .. }),
        "{at:?}: {again:?}"
    );

    // The same state, but one file's bytes differ with its size and mtime unchanged.
    only_start();
    let f = dest.join("etc/os-release");
    corrupt_behind_the_tools_back(&f);
    let bytes = std::fs::read(&f).unwrap();
    let err = state::migrate_state(&src, &dest, &opts(Verify::Full)).unwrap_err();
    assert!(
        matches!(err.kind(), StateErrorKind::DestOccupied { .. }),
        "{at:?}: {err}"
    );
    assert!(err.to_string().contains("content differs"), "{at:?}: {err}");
    assert_eq!(
        std::fs::read(&f).unwrap(),
        bytes,
        "{at:?}: the copy is left as it is"
    );
    for j in [journal.clone(), staging.join("journal")] {
        let text = std::fs::read_to_string(&j).unwrap_or_default();
        assert!(
            !text.contains("\"done\""),
            "{at:?}: `done` for a copy that differs: {text}"
        );
    }
}

#[test]
fn power_lost_after_the_rename_with_only_start_on_disk_is_verified_again() {
    power_lost_after_the_rename(LostAt::JournalInStaging);
}

#[test]
fn power_lost_after_the_journal_moved_without_done_is_verified_again() {
    power_lost_after_the_rename(LostAt::JournalMoved);
}

/// Power lost during the copy, before its first sync: the staging tree is on disk but its
/// journal is not (missing, or empty). Nothing in it was recorded or verified and the legacy
/// state is untouched, so the next run removes it and copies afresh (no `--force` needed).
#[test]
fn a_staging_tree_whose_journal_never_reached_the_disk_is_copied_afresh() {
    require_root();
    for journal in [None, Some(&b""[..]), Some(&b"{\"event\":\"sta"[..])] {
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("src");
        build_edge_tree(&src);
        let dest = t.path().join("machines/web");
        let staging = t.path().join("machines/.web.partial");
        std::fs::create_dir_all(staging.join("tree/etc")).unwrap();
        std::fs::write(staging.join("tree/etc/os-release"), b"torn").unwrap();
        std::fs::write(staging.join("tree/not-in-the-source"), b"x").unwrap();
        if let Some(j) = journal {
            std::fs::write(staging.join("journal"), j).unwrap();
        }
        let out = state::migrate_state(&src, &dest, &opts(Verify::Full)).unwrap();
        let StateOutcome::Copied {
            resumed, verify, ..
        } = out
        else {
            panic!("{out:?}")
        };
        assert!(!resumed, "{journal:?}");
        assert!(verify.is_clean(), "{verify:?}");
        assert_eq!(rsync_diff(&src, &dest), "", "{journal:?}");
        assert!(!staging.exists());
    }
}

#[test]
fn resume_keeps_finished_entries_and_replaces_stale_ones() {
    require_root();
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    build_edge_tree(&src);
    let dest = t.path().join("machines/web");
    state::migrate_state(&src, &dest, &opts(Verify::Full)).unwrap();
    // Turn the finished copy back into an "interrupted" one and damage it the ways a crash can.
    let staging = back_into_staging(&dest, true);
    let tree = staging.join("tree");
    std::fs::write(tree.join("home/alice/deep/er/est/file"), b"half").unwrap(); // torn file
    std::fs::remove_file(tree.join("usr/lib64/libx.so")).unwrap(); // a link not yet made
    std::fs::write(tree.join("leftover"), b"not in the source").unwrap();
    std::fs::remove_file(tree.join("hostetc")).unwrap();
    std::fs::create_dir(tree.join("hostetc")).unwrap(); // wrong type
    let kept_ino = tree
        .join("etc/os-release")
        .symlink_metadata()
        .unwrap()
        .ino();
    let out = state::migrate_state(&src, &dest, &opts(Verify::Full)).unwrap();
    let StateOutcome::Copied { copy, resumed, .. } = out else {
        panic!("{out:?}")
    };
    assert!(resumed);
    assert!(copy.reused > 20, "{copy:?}");
    assert_eq!(copy.removed_stale, 1, "{copy:?}");
    assert_eq!(
        dest.join("etc/os-release")
            .symlink_metadata()
            .unwrap()
            .ino(),
        kept_ino,
        "finished entries are kept"
    );
    assert_eq!(rsync_diff(&src, &dest), "");
}

#[test]
fn carry_profile_recreates_the_links_without_reading_the_store() {
    require_root();
    let t = tempfile::tempdir().unwrap();
    let from = t.path().join("profiles/per-container/web");
    std::fs::create_dir_all(&from).unwrap();
    // Targets do not exist: reading the store would fail, following a link would fail.
    std::os::unix::fs::symlink(
        "/nix/store/11111111111111111111111111111111-nixos-system-web-1",
        from.join("system-1-link"),
    )
    .unwrap();
    std::os::unix::fs::symlink(
        "/nix/store/22222222222222222222222222222222-nixos-system-web-2",
        from.join("system-2-link"),
    )
    .unwrap();
    std::os::unix::fs::symlink(
        "/nix/store/33333333333333333333333333333333-nixos-system-web-10",
        from.join("system-10-link"),
    )
    .unwrap();
    std::os::unix::fs::symlink("system-10-link", from.join("system")).unwrap();
    std::fs::create_dir_all(from.join("per-user/root")).unwrap();
    std::os::unix::fs::symlink(
        "/nix/store/44444444444444444444444444444444-user-env",
        from.join("per-user/root/profile-1-link"),
    )
    .unwrap();
    let to = t.path().join("profiles/per-nspawn/web");
    let out = state::carry_profile(&from, &to).unwrap();
    assert_eq!(out.generations, vec![1, 2, 10]);
    assert_eq!(out.current.as_deref(), Some(Path::new("system-10-link")));
    assert!(!out.already_done);
    assert_eq!(out.entries, 7);
    assert_eq!(
        std::fs::read_link(to.join("system-2-link")).unwrap(),
        std::fs::read_link(from.join("system-2-link")).unwrap()
    );
    assert!(
        to.join("system")
            .symlink_metadata()
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert_eq!(rsync_diff(&from, &to), "");
    assert!(
        from.join("system").symlink_metadata().is_ok(),
        "the old profile stays (GC roots)"
    );
    // Idempotent, and never merges into something different.
    let again = state::carry_profile(&from, &to).unwrap();
    assert!(again.already_done);
    std::os::unix::fs::symlink(
        "/nix/store/55555555555555555555555555555555-x",
        to.join("system-11-link"),
    )
    .unwrap();
    let err = state::carry_profile(&from, &to).unwrap_err();
    assert!(
        matches!(err.kind(), StateErrorKind::DestOccupied { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("system-11-link"), "{err}");
}

#[test]
fn a_torn_file_with_finished_metadata_is_caught_by_full_verification_and_recopied() {
    // What a power failure can leave: data lost, metadata (size, mtime) written.
    require_root();
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    build_edge_tree(&src);
    let dest = t.path().join("machines/web");
    state::migrate_state(&src, &dest, &opts(Verify::Full)).unwrap();
    let staging = back_into_staging(&dest, true);
    let torn = staging.join("tree/home/alice/deep/er/est/file");
    let m = torn.symlink_metadata().unwrap();
    std::fs::write(&torn, vec![0u8; m.size() as usize]).unwrap();
    let ts = rustix::fs::Timestamps {
        last_access: rustix::fs::Timespec {
            tv_sec: m.atime(),
            tv_nsec: m.atime_nsec(),
        },
        last_modification: rustix::fs::Timespec {
            tv_sec: m.mtime(),
            tv_nsec: m.mtime_nsec(),
        },
    };
    rustix::fs::utimensat(rustix::fs::CWD, &torn, &ts, rustix::fs::AtFlags::empty()).unwrap();

    // The quick check trusts it; full verification does not, and nothing is renamed.
    let err = state::migrate_state(&src, &dest, &opts(Verify::Full)).unwrap_err();
    let StateErrorKind::VerifyFailed { report, .. } = err.kind() else {
        panic!("{err}")
    };
    assert_eq!(report.differences, 1, "{}", report.summary());
    assert_eq!(
        report.first[0].path,
        Path::new("home/alice/deep/er/est/file")
    );
    assert!(
        err.to_string().contains("re-copies every file's data"),
        "{err}"
    );
    assert!(!dest.exists());
    // The next run re-copies file data and succeeds.
    let out = state::migrate_state(&src, &dest, &opts(Verify::Full)).unwrap();
    assert!(
        matches!(out, StateOutcome::Copied { resumed: true, .. }),
        "{out:?}"
    );
    assert_eq!(rsync_diff(&src, &dest), "");
}

/// Issue 7, item 11: running out of inodes was reported as "about 409 bytes more is needed".
#[test]
fn inode_exhaustion_is_reported_as_such_before_and_during_the_copy() {
    require_root();
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    build_bulk_tree(&src, 4, 30, 0, 0);
    // Plenty of bytes, 64 inodes.
    let fs = Tmpfs::mount(&t.path().join("few-inodes"), "64m,nr_inodes=64");
    let dest = fs.0.join("machines/web");
    let err = state::migrate_state(&src, &dest, &opts(Verify::Full)).unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(err.kind(), StateErrorKind::NoInodes { during: None, .. }),
        "{msg}"
    );
    assert!(
        msg.starts_with("not enough free inodes on the filesystem of")
            && msg.contains("more files and directories to create")
            && msg.contains("inodes free")
            && !msg.contains("bytes"),
        "{msg}"
    );
    assert!(!dest.exists());

    // During the copy (a resumed run is not checked up front): the source grew after an
    // interrupted run, and the inodes run out while creating a file.
    let fs2 = Tmpfs::mount(&t.path().join("few-inodes-2"), "64m,nr_inodes=200");
    let small = t.path().join("small");
    build_bulk_tree(&small, 2, 10, 0, 0);
    let dest = fs2.0.join("machines/web");
    state::migrate_state(&small, &dest, &opts(Verify::Full)).unwrap();
    back_into_staging(&dest, true);
    build_bulk_tree(&small.join("more"), 4, 60, 0, 0);
    let err = state::migrate_state(&small, &dest, &opts(Verify::Full)).unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(
            err.kind(),
            StateErrorKind::NoInodes {
                during: Some(_),
                ..
            }
        ),
        "{msg}"
    );
    assert!(
        msg.starts_with("out of inodes while trying to ")
            && msg.contains("the next run resumes it")
            && !msg.contains("bytes"),
        "{msg}"
    );
}

/// The engine gets paths that `execute` resolved inside the host root. A symlink put into such
/// a path afterwards (here: the legacy directory replaced by a link to a tree elsewhere) must
/// not be followed: the copy is refused, nothing is created, and the other tree is not read.
#[test]
fn a_symlink_among_the_parent_directories_is_refused() {
    require_root();
    let t = tempfile::tempdir().unwrap();
    let elsewhere = t.path().join("elsewhere/web");
    std::fs::create_dir_all(&elsewhere).unwrap();
    std::fs::write(elsewhere.join("secret"), b"outside the root").unwrap();
    std::os::unix::fs::symlink(
        t.path().join("elsewhere"),
        t.path().join("nixos-containers"),
    )
    .unwrap();
    let src = t.path().join("nixos-containers/web");
    let dest = t.path().join("machines/web");
    std::fs::create_dir_all(t.path().join("machines")).unwrap();
    let err = state::migrate_state(&src, &dest, &opts(Verify::Full)).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("symlink among its parent directories"),
        "{msg}"
    );
    assert!(!dest.exists(), "nothing was created: {msg}");
    assert_eq!(
        std::fs::read_dir(t.path().join("machines"))
            .unwrap()
            .count(),
        0,
        "no staging or journal left behind"
    );
}
