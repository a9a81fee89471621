//! The state engine on the filesystems NixOS hosts keep `/var/lib` on: btrfs (where
//! `/var/lib/machines` is usually a subvolume of its own) and XFS with reflink, each a small
//! real filesystem on a loop device. Reflinked copies are verified by their shared extents and
//! a copy changed behind the tool's back is still caught; inode flags (`chattr`) are copied,
//! verified, and reported where the destination cannot hold them; `--state move` renames on
//! one filesystem and refuses across, before writing anything.
//!
//! Skipped with a message where loop devices are unavailable, unless
//! `NIXOS_NSPAWN_REQUIRE_REAL_TOOLS=1` (CI), which makes that a failure.
#![allow(clippy::unwrap_used)]

#[path = "state_util.rs"]
mod util;

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use nixos_nspawn::state::{
    self, MigrateStateOptions, NoProgress, StateErrorKind, StateMode, StateOutcome, Verify,
};
use util::*;

fn opts(mode: StateMode, verify: Verify) -> MigrateStateOptions<'static> {
    MigrateStateOptions {
        mode,
        verify,
        force: false,
        progress: &NoProgress,
        recheck: Verify::Metadata,
    }
}

/// `ROOT/var/lib/nixos-containers/web` with the edge tree, small files and a few large ones;
/// `ROOT/var/lib/machines` created as a btrfs subvolume on btrfs (as systemd's tmpfiles does).
fn legacy_tree(fs: &LoopFs) -> (PathBuf, PathBuf) {
    let src = fs.mnt.join("var/lib/nixos-containers/web");
    build_edge_tree(&src);
    build_bulk_tree(&src.join("srv/bulk"), 12, 30, 3, 4 << 20);
    let machines = fs.mnt.join("var/lib/machines");
    if fs.kind == "btrfs" {
        run(
            "btrfs",
            &["-q", "subvolume", "create", machines.to_str().unwrap()],
        );
    } else {
        std::fs::create_dir_all(&machines).unwrap();
    }
    (src, machines.join("web"))
}

fn reflinked_copy_is_verified_by_extents_and_corruption_is_caught(kind: &'static str) {
    let Some(fs) = loop_fs(kind) else { return };
    let (src, dest) = legacy_tree(&fs);
    let out = state::migrate_state(&src, &dest, &opts(StateMode::Copy, Verify::Full)).unwrap();
    let StateOutcome::Copied { copy, verify, .. } = out else {
        panic!("{out:?}")
    };
    assert!(verify.is_clean(), "{}", verify.summary());
    assert!(copy.reflinked && copy.files_reflinked >= 3, "{copy:?}");
    // The three 4 MiB files (and every other reflinked file with real extents) were proven
    // equal by their extent maps; nothing of them was read.
    assert!(verify.files_by_extents >= 3, "{verify:?}");
    assert!(verify.bytes_by_extents >= 3 * (4 << 20), "{verify:?}");
    assert!(
        verify.bytes_hashed < 4 << 20,
        "the large files were read: {verify:?}"
    );
    assert_eq!(
        verify.files_by_extents + verify.files_hashed,
        copy.files,
        "{verify:?} {copy:?}"
    );
    assert!(verify.methods().contains("proven equal by shared extents"));
    assert_eq!(rsync_diff(&src, &dest), "");

    // A write behind the tool's back un-shares an extent of the copy: caught by the content
    // check (the metadata still matches), that file now read and hashed.
    let victim = dest.join("srv/bulk/big/blob1");
    corrupt_behind_the_tools_back(&victim);
    let meta_only = state::verify_tree(&src, &dest, Verify::Metadata).unwrap();
    assert!(meta_only.is_clean(), "{}", meta_only.summary());
    let full = state::verify_tree(&src, &dest, Verify::Full).unwrap();
    assert_eq!(full.differences, 1, "{}", full.summary());
    assert_eq!(full.first[0].path, Path::new("srv/bulk/big/blob1"));
    assert_eq!(full.first[0].what, "content differs");
    assert!(full.files_by_extents >= 2, "{full:?}");
    // A small file (btrfs keeps it inline in its metadata, where extents prove nothing, so it
    // is always read on both sides), corrupted the same way: caught as well.
    let small = dest.join("etc/os-release");
    assert!(small.symlink_metadata().unwrap().len() <= 2048);
    corrupt_behind_the_tools_back(&small);
    let both = state::verify_tree(&src, &dest, Verify::Full).unwrap();
    assert_eq!(both.differences, 2, "{}", both.summary());
    assert!(
        both.first
            .iter()
            .any(|d| d.path == Path::new("etc/os-release") && d.what == "content differs"),
        "{}",
        both.summary()
    );
    corrupt_behind_the_tools_back(&small); // flipped back

    // A copy that never shared anything (cp --reflink=never), corrupted: caught too.
    let plain = fs.mnt.join("plain");
    run(
        "cp",
        &[
            "-a",
            "--reflink=never",
            src.to_str().unwrap(),
            plain.to_str().unwrap(),
        ],
    );
    let clean = state::verify_tree(&src, &plain, Verify::Full).unwrap();
    assert!(clean.is_clean(), "{}", clean.summary());
    assert_eq!(clean.files_by_extents, 0, "{clean:?}");
    corrupt_behind_the_tools_back(&plain.join("srv/bulk/big/blob2"));
    let caught = state::verify_tree(&src, &plain, Verify::Full).unwrap();
    assert_eq!(caught.differences, 1, "{}", caught.summary());
    assert_eq!(caught.first[0].path, Path::new("srv/bulk/big/blob2"));

    // Relocated: the same disk checked under another mount point is recognised as the copy it
    // made (the journal records the source relative to the destination), nothing is written.
    umount(&fs.mnt);
    let other = fs.mnt.with_extension("elsewhere");
    std::fs::create_dir_all(&other).unwrap();
    let img = fs.mnt.with_extension("img");
    run(
        "mount",
        &["-o", "loop", img.to_str().unwrap(), other.to_str().unwrap()],
    );
    let rel_src = other.join("var/lib/nixos-containers/web");
    let rel_dest = other.join("var/lib/machines/web");
    // (Undo the corruption first, flipping the byte back: the copy matches again.)
    corrupt_behind_the_tools_back(&rel_dest.join("srv/bulk/big/blob1"));
    let again = state::migrate_state(&rel_src, &rel_dest, &opts(StateMode::Copy, Verify::Full));
    umount(&other);
    let _ = std::fs::remove_dir(&other);
    run(
        "mount",
        &[
            "-o",
            "loop",
            img.to_str().unwrap(),
            fs.mnt.to_str().unwrap(),
        ],
    );
    let again = again.unwrap();
    assert!(
        matches!(again, StateOutcome::AlreadyDone { .. }),
        "relocated root refused or re-copied: {again:?}"
    );
}

#[test]
fn btrfs_reflinked_copy_is_verified_by_extents_and_corruption_is_caught() {
    reflinked_copy_is_verified_by_extents_and_corruption_is_caught("btrfs");
}

#[test]
fn xfs_reflinked_copy_is_verified_by_extents_and_corruption_is_caught() {
    reflinked_copy_is_verified_by_extents_and_corruption_is_caught("xfs");
}

/// A database directory marked +C (its files inherit it), immutable and append-only files
/// (one hard-linked twice), +d and +A.
fn flagged_tree(root: &Path) {
    let db = root.join("var/lib/postgresql");
    std::fs::create_dir_all(&db).unwrap();
    chattr("+C", &db);
    std::fs::write(db.join("base.dat"), vec![3u8; 300_000]).unwrap();
    std::fs::write(db.join("wal"), vec![4u8; 70_000]).unwrap();
    std::fs::create_dir_all(root.join("etc")).unwrap();
    std::fs::write(root.join("etc/locked"), b"immutable\n").unwrap();
    std::fs::hard_link(root.join("etc/locked"), root.join("etc/locked-too")).unwrap();
    chattr("+i", &root.join("etc/locked"));
    std::fs::create_dir_all(root.join("var/log")).unwrap();
    std::fs::write(root.join("var/log/audit.log"), b"line 1\n").unwrap();
    chattr("+a", &root.join("var/log/audit.log"));
    std::fs::create_dir_all(root.join("cache")).unwrap();
    chattr("+d", &root.join("cache"));
    std::fs::write(root.join("cache/x"), b"x").unwrap();
    chattr("+A", &root.join("cache/x"));
    std::fs::create_dir_all(root.join("frozen/sub")).unwrap();
    std::fs::write(root.join("frozen/sub/f"), b"f").unwrap();
    chattr("+i", &root.join("frozen"));
}

#[test]
fn inode_flags_are_copied_verified_and_reported_where_lost() {
    let Some(bt) = loop_fs("btrfs") else { return };
    let Some(xfs) = loop_fs("xfs") else { return };
    let src = bt.mnt.join("var/lib/nixos-containers/db");
    flagged_tree(&src);
    let want = lsattr_map(&src);
    assert_eq!(
        want.get(Path::new("var/lib/postgresql/base.dat"))
            .map(String::as_str),
        Some("C"),
        "{want:?}"
    );

    // btrfs → btrfs (another subvolume): every flag kept, checked by lsattr.
    let machines = bt.mnt.join("var/lib/machines");
    run(
        "btrfs",
        &["-q", "subvolume", "create", machines.to_str().unwrap()],
    );
    let dest = machines.join("db");
    let out = state::migrate_state(&src, &dest, &opts(StateMode::Copy, Verify::Full)).unwrap();
    let StateOutcome::Copied { copy, verify, .. } = &out else {
        panic!("{out:?}")
    };
    assert!(verify.is_clean(), "{}", verify.summary());
    assert_eq!(copy.flags_lost_count, 0, "{:?}", copy.flags_lost);
    assert!(copy.flags_copied >= 7, "{copy:?}");
    assert_eq!(lsattr_map(&dest), want);
    // +C files were reflinked too (both sides no-copy-on-write).
    assert!(copy.files_reflinked >= 2, "{copy:?}");
    // Nothing to do on a second run, immutable files and all.
    let again = state::migrate_state(&src, &dest, &opts(StateMode::Copy, Verify::Full)).unwrap();
    assert!(
        matches!(again, StateOutcome::AlreadyDone { .. }),
        "{again:?}"
    );

    // btrfs → XFS: XFS has no +C. Reported, per file; the others are kept; verification is
    // clean (it compares what the destination can hold).
    let dest = xfs.mnt.join("var/lib/machines/db");
    let out = state::migrate_state(&src, &dest, &opts(StateMode::Copy, Verify::Full)).unwrap();
    let StateOutcome::Copied { copy, verify, .. } = &out else {
        panic!("{out:?}")
    };
    assert!(verify.is_clean(), "{}", verify.summary());
    let lost: Vec<String> = copy
        .flags_lost
        .iter()
        .map(|l| format!("{} {} ({})", l.path.display(), l.flags, l.why))
        .collect();
    assert_eq!(copy.flags_lost_count, 3, "{lost:?}");
    for p in [
        "var/lib/postgresql",
        "var/lib/postgresql/base.dat",
        "var/lib/postgresql/wal",
    ] {
        assert!(
            lost.contains(&format!(
                "{p} +C (the destination filesystem cannot hold it)"
            )),
            "{lost:?}"
        );
    }
    let mut held = want.clone();
    for p in [
        "var/lib/postgresql",
        "var/lib/postgresql/base.dat",
        "var/lib/postgresql/wal",
    ] {
        held.remove(Path::new(p));
    }
    assert_eq!(lsattr_map(&dest), held);
    let again = state::migrate_state(&src, &dest, &opts(StateMode::Copy, Verify::Full)).unwrap();
    assert!(
        matches!(again, StateOutcome::AlreadyDone { .. }),
        "{again:?}"
    );
    // Checked again with the destination mounted read-only (no probe file can be made there):
    // still the finished copy, the missing +C is not held against it.
    run("mount", &["-o", "remount,ro", xfs.mnt.to_str().unwrap()]);
    let ro = state::migrate_state(&src, &dest, &opts(StateMode::Copy, Verify::Full));
    run("mount", &["-o", "remount,rw", xfs.mnt.to_str().unwrap()]);
    assert!(matches!(ro.unwrap(), StateOutcome::AlreadyDone { .. }));
    // A flag removed behind the tool's back is a difference.
    chattr("-i", &dest.join("etc/locked"));
    let v = state::verify_tree(&src, &dest, Verify::Metadata).unwrap();
    assert_eq!(v.differences, 1, "{}", v.summary());
    assert!(
        v.first[0]
            .what
            .contains("inode flags differ: +i in the source, none in the copy"),
        "{}",
        v.summary()
    );
    unfreeze(&bt.mnt);
    unfreeze(&xfs.mnt);
}

#[test]
fn resume_and_recopy_work_through_immutable_and_append_only_entries() {
    let Some(bt) = loop_fs("btrfs") else { return };
    let src = bt.mnt.join("var/lib/nixos-containers/db");
    flagged_tree(&src);
    let machines = bt.mnt.join("var/lib/machines");
    let dest = machines.join("db");
    // An interrupted run, faked: a finished copy put back into staging with its journal.
    state::migrate_state(&src, &dest, &opts(StateMode::Copy, Verify::Full)).unwrap();
    let staging = machines.join(".db.partial");
    std::fs::create_dir_all(&staging).unwrap();
    std::fs::rename(&dest, staging.join("tree")).unwrap();
    std::fs::rename(machines.join(".db.journal"), staging.join("journal")).unwrap();
    // The source changes where the staging copy is immutable or append-only: a file in the
    // immutable directory appears, the immutable file's content changes.
    chattr("-i", &src.join("frozen"));
    std::fs::write(src.join("frozen/new"), b"new").unwrap();
    chattr("+i", &src.join("frozen"));
    chattr("-i", &src.join("etc/locked"));
    std::fs::write(src.join("etc/locked"), b"changed, longer\n").unwrap();
    chattr("+i", &src.join("etc/locked"));
    chattr("-a", &src.join("var/log/audit.log"));
    std::fs::remove_file(src.join("var/log/audit.log")).unwrap();
    let out = state::migrate_state(&src, &dest, &opts(StateMode::Copy, Verify::Full)).unwrap();
    let StateOutcome::Copied {
        resumed, verify, ..
    } = &out
    else {
        panic!("{out:?}")
    };
    assert!(*resumed && verify.is_clean(), "{out:?}");
    assert_eq!(lsattr_map(&dest), lsattr_map(&src));
    assert_eq!(rsync_diff(&src, &dest), "");

    // A failed verification makes the next run re-copy every file: also immutable ones.
    std::fs::create_dir_all(&staging).unwrap();
    std::fs::rename(&dest, staging.join("tree")).unwrap();
    std::fs::rename(machines.join(".db.journal"), staging.join("journal")).unwrap();
    let torn = staging.join("tree/etc/locked");
    chattr("-i", &torn);
    corrupt_behind_the_tools_back(&torn);
    chattr("+i", &torn);
    let err = state::migrate_state(&src, &dest, &opts(StateMode::Copy, Verify::Full)).unwrap_err();
    assert!(
        matches!(err.kind(), StateErrorKind::VerifyFailed { .. }),
        "{err}"
    );
    let out = state::migrate_state(&src, &dest, &opts(StateMode::Copy, Verify::Full)).unwrap();
    assert!(matches!(out, StateOutcome::Copied { .. }), "{out:?}");
    assert_eq!(rsync_diff(&src, &dest), "");
    assert_eq!(lsattr_map(&dest), lsattr_map(&src));
    unfreeze(&bt.mnt);
}

fn move_renames_on_one_filesystem(kind: &'static str) {
    let Some(fs) = loop_fs(kind) else { return };
    let src = fs.mnt.join("var/lib/nixos-containers/web");
    build_edge_tree(&src);
    let dest = fs.mnt.join("var/lib/machines/web");
    let before = snapshot(&src, false);
    let out = state::migrate_state(&src, &dest, &opts(StateMode::Move, Verify::Full)).unwrap();
    assert!(matches!(out, StateOutcome::Moved), "{out:?}");
    assert!(!src.exists(), "the legacy path is gone after a move");
    // The very same inodes, now at the destination.
    assert_eq!(
        snapshot(&dest, false)[Path::new("")].ino,
        before[Path::new("")].ino
    );
    assert_eq!(
        snapshot(&dest, false).keys().collect::<Vec<_>>(),
        before.keys().collect::<Vec<_>>()
    );
    let journal = std::fs::read_to_string(fs.mnt.join("var/lib/machines/.web.journal")).unwrap();
    assert!(journal.contains("\"mode\":\"move\""), "{journal}");
    assert!(
        journal.contains("\"src\":\"../nixos-containers/web\""),
        "{journal}"
    );
    assert!(
        journal.trim_end().ends_with("{\"event\":\"done\"}"),
        "{journal}"
    );
    let again = state::migrate_state(&src, &dest, &opts(StateMode::Move, Verify::Full)).unwrap();
    assert!(
        matches!(again, StateOutcome::AlreadyDone { .. }),
        "{again:?}"
    );
    // Killed right after the rename (the journal has no `moved`/`done`): the next run
    // recognises the directory by its inode and finishes the journal.
    let cut: Vec<&str> = journal
        .lines()
        .filter(|l| l.contains("\"start\""))
        .collect();
    std::fs::write(
        fs.mnt.join("var/lib/machines/.web.journal"),
        format!("{}\n", cut.join("\n")),
    )
    .unwrap();
    let finished = state::migrate_state(&src, &dest, &opts(StateMode::Move, Verify::Full)).unwrap();
    assert!(matches!(finished, StateOutcome::Moved), "{finished:?}");
    let journal = std::fs::read_to_string(fs.mnt.join("var/lib/machines/.web.journal")).unwrap();
    assert!(
        journal.trim_end().ends_with("{\"event\":\"done\"}"),
        "{journal}"
    );
}

#[test]
fn btrfs_move_renames_on_one_filesystem() {
    move_renames_on_one_filesystem("btrfs");
}

#[test]
fn xfs_move_renames_on_one_filesystem() {
    move_renames_on_one_filesystem("xfs");
}

#[test]
fn move_is_refused_across_filesystems_and_subvolumes_before_anything_is_written() {
    let Some(bt) = loop_fs("btrfs") else { return };
    let Some(xfs) = loop_fs("xfs") else { return };
    let src = bt.mnt.join("var/lib/nixos-containers/web");
    build_bulk_tree(&src, 2, 3, 0, 0);
    let before = snapshot(&src, true);
    let xfs_before = snapshot(&xfs.mnt, true);
    // Across filesystems: refused with the reason; not even the parent directory is made.
    let dest = xfs.mnt.join("var/lib/machines/web");
    let err = state::migrate_state(&src, &dest, &opts(StateMode::Move, Verify::Full)).unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(err.kind(), StateErrorKind::CrossDevice { .. }),
        "{msg}"
    );
    assert!(
        msg.contains("they are on different filesystems")
            && msg.contains("nothing was written")
            && msg.contains("--state copy"),
        "{msg}"
    );
    assert!(state::check_move(&src, &dest).is_err());
    assert!(
        !xfs.mnt.join("var").exists(),
        "the refusal wrote to the destination"
    );
    assert_eq!(snapshot(&xfs.mnt, true), xfs_before);
    assert_eq!(snapshot(&src, true), before);
    // Across btrfs subvolumes (/var/lib/machines is one on btrfs): refused, and said so.
    let machines = bt.mnt.join("var/lib/machines");
    run(
        "btrfs",
        &["-q", "subvolume", "create", machines.to_str().unwrap()],
    );
    let err = state::migrate_state(
        &src,
        &machines.join("web"),
        &opts(StateMode::Move, Verify::Full),
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("different btrfs subvolumes"),
        "{err}"
    );
    assert!(!machines.join("web").exists() && !machines.join(".web.journal").exists());
    assert_eq!(snapshot(&src, true), before);
}

/// A file with preallocated (`fallocate`d, never written) space on XFS: the clone has holes
/// there (XFS does not clone unwritten extents), which read as zeros like the source's
/// preallocation, so the file is still proven equal by its shared extents, not read. Data
/// written into that range of the copy behind the tool's back is caught.
#[test]
fn xfs_preallocated_space_does_not_stop_verification_by_extents() {
    let Some(fs) = loop_fs("xfs") else { return };
    let src = fs.mnt.join("var/lib/nixos-containers/db");
    std::fs::create_dir_all(&src).unwrap();
    let f = src.join("table.ibd");
    let data: Vec<u8> = (0..1 << 20).map(|i| (i % 241) as u8).collect();
    std::fs::write(&f, &data).unwrap();
    run(
        "fallocate",
        &["-o", "4MiB", "-l", "4MiB", f.to_str().unwrap()],
    );
    let file = std::fs::OpenOptions::new().write(true).open(&f).unwrap();
    file.write_all_at(&data, 12 << 20).unwrap();
    file.sync_all().unwrap();
    drop(file);
    let dest = fs.mnt.join("var/lib/machines/db");
    let out = state::migrate_state(&src, &dest, &opts(StateMode::Copy, Verify::Full)).unwrap();
    let StateOutcome::Copied { copy, verify, .. } = out else {
        panic!("{out:?}")
    };
    assert!(verify.is_clean(), "{}", verify.summary());
    assert_eq!(copy.files_reflinked, 1, "{copy:?}");
    assert_eq!(verify.files_by_extents, 1, "{verify:?}");
    assert_eq!(verify.bytes_hashed, 0, "{verify:?}");
    assert_eq!(rsync_diff(&src, &dest), "");

    // Written into the copy's hole where the source has its preallocated zeros: caught.
    let victim = dest.join("table.ibd");
    let before = victim.symlink_metadata().unwrap();
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&victim)
        .unwrap();
    file.write_all_at(b"X", 5 << 20).unwrap();
    file.sync_all().unwrap();
    drop(file);
    use std::os::unix::fs::MetadataExt;
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
    assert_eq!(full.first[0].what, "content differs");
}
