//! Helpers shared by the state-engine tests (included with `#[path]`; as its own test target it
//! has no tests). Everything here works on real files, as root, with real tools (`setfacl`,
//! `setcap`, `rsync`) as independent oracles.
#![allow(dead_code)]
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};

use std::path::{Path, PathBuf};
use std::process::Command;

pub fn require_root() {
    assert!(
        rustix::process::geteuid().is_root(),
        "the state-engine tests copy owners, devices and trusted.* xattrs: run them as root"
    );
}

pub fn run(cmd: &str, args: &[&str]) {
    let st = Command::new(cmd)
        .args(args)
        .status()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"));
    assert!(st.success(), "{cmd} {args:?} failed");
}

/// `umount PATH`, tried again for a few seconds while the kernel says the mount is busy (a
/// short-lived reference from another test thread's child or a udev probe of the loop device),
/// then required to succeed.
pub fn umount(path: &Path) {
    for _ in 0..25 {
        let out = Command::new("umount")
            .arg(path)
            .output()
            .unwrap_or_else(|e| panic!("umount: {e}"));
        if out.status.success() {
            return;
        }
        if !String::from_utf8_lossy(&out.stderr).contains("busy") {
            panic!(
                "umount {} failed: {}",
                path.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    run("umount", &[path.to_str().unwrap()]);
}

fn set_times(p: &Path, sec: i64, nsec: i64) {
    use rustix::fs::{AtFlags, Timespec, Timestamps};
    let t = Timestamps {
        last_access: Timespec {
            tv_sec: sec - 1000,
            tv_nsec: nsec,
        },
        last_modification: Timespec {
            tv_sec: sec,
            tv_nsec: nsec,
        },
    };
    rustix::fs::utimensat(rustix::fs::CWD, p, &t, AtFlags::SYMLINK_NOFOLLOW).unwrap();
}

fn lchown(p: &Path, uid: u32, gid: u32) {
    rustix::fs::chownat(
        rustix::fs::CWD,
        p,
        Some(rustix::fs::Uid::from_raw(uid)),
        Some(rustix::fs::Gid::from_raw(gid)),
        rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
    )
    .unwrap();
}

fn setxattr(p: &Path, name: &str, value: &[u8]) {
    rustix::fs::lsetxattr(p, name, value, rustix::fs::XattrFlags::empty()).unwrap();
}

/// A rootfs with every kind of entry and metadata the engine must keep. Returns the root.
pub fn build_edge_tree(root: &Path) {
    let w = |p: &str, data: &[u8]| {
        let p = root.join(p);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, data).unwrap();
    };
    std::fs::create_dir_all(root.join("etc/ssh")).unwrap();
    std::fs::create_dir_all(root.join("var/empty")).unwrap();
    std::fs::create_dir_all(root.join("home/alice/deep/er/est")).unwrap();
    w("etc/os-release", b"ID=nixos\n");
    w(
        "etc/ssh/ssh_host_ed25519_key",
        b"-----BEGIN OPENSSH PRIVATE KEY-----\nsecret\n",
    );
    std::fs::set_permissions(
        root.join("etc/ssh/ssh_host_ed25519_key"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    w("home/alice/deep/er/est/file", &vec![7u8; 300_000]);
    w("home/alice/empty", b"");
    // Non-UTF-8 and awkward names.
    let odd = root.join(OsStr::from_bytes(b"home/alice/bad-\xff-name"));
    std::fs::write(&odd, b"latin1").unwrap();
    w("home/alice/new\nline", b"nl");
    w("home/alice/ space ", b"sp");

    // setuid / setgid / sticky, high uids.
    w("bin/su", b"#!/bin/sh\n");
    std::fs::set_permissions(root.join("bin/su"), std::fs::Permissions::from_mode(0o4755)).unwrap();
    w("bin/sgid", b"x");
    lchown(&root.join("bin/sgid"), 0, 100_000);
    std::fs::set_permissions(
        root.join("bin/sgid"),
        std::fs::Permissions::from_mode(0o2711),
    )
    .unwrap();
    std::fs::create_dir_all(root.join("tmp")).unwrap();
    std::fs::set_permissions(root.join("tmp"), std::fs::Permissions::from_mode(0o1777)).unwrap();
    std::fs::create_dir_all(root.join("srv/shared")).unwrap();
    std::fs::set_permissions(
        root.join("srv/shared"),
        std::fs::Permissions::from_mode(0o2770),
    )
    .unwrap();
    w("home/alice/high", b"uid 100000");
    lchown(&root.join("home/alice/high"), 100_000, 100_000);
    w("home/alice/huge-uid", b"uid 2^31");
    lchown(
        &root.join("home/alice/huge-uid"),
        2_147_483_648,
        4_000_000_000,
    );
    lchown(&root.join("home/alice"), 1000, 100);

    // Symlinks: dangling absolute, escaping relative, absolute into the host, to a directory.
    symlink(
        "/nix/store/00000000000000000000000000000000-nope/bin/x",
        root.join("bin/dangling"),
    )
    .unwrap();
    symlink("../../../../../../../etc/shadow", root.join("etc/escape")).unwrap();
    symlink("/etc", root.join("hostetc")).unwrap();
    symlink("/etc/static/ssh", root.join("etc/ssh/static")).unwrap();
    symlink("home/alice", root.join("alice-link")).unwrap();
    lchown(&root.join("bin/dangling"), 100_001, 100_002);
    set_times(&root.join("bin/dangling"), 1_000_000_000, 123_456_789);

    // Hard links (three names, across directories).
    w("usr/lib/libx.so", b"ELF-ish");
    std::fs::create_dir_all(root.join("usr/lib64")).unwrap();
    std::fs::hard_link(root.join("usr/lib/libx.so"), root.join("usr/lib64/libx.so")).unwrap();
    std::fs::hard_link(root.join("usr/lib/libx.so"), root.join("bin/libx-again")).unwrap();

    // Special files.
    run("mkfifo", &[root.join("run-fifo").to_str().unwrap()]);
    let sock = root.join("run-sock");
    let l = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    drop(l);
    std::fs::create_dir_all(root.join("dev")).unwrap();
    run(
        "mknod",
        &[root.join("dev/null").to_str().unwrap(), "c", "1", "3"],
    );
    run(
        "mknod",
        &[root.join("dev/loop7").to_str().unwrap(), "b", "7", "7"],
    );
    lchown(&root.join("dev/loop7"), 0, 6);
    std::fs::set_permissions(
        root.join("dev/loop7"),
        std::fs::Permissions::from_mode(0o660),
    )
    .unwrap();

    // Sparse: 64 MiB with 2 data blocks, and a fully sparse one.
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::File::create(root.join("var/sparse.img")).unwrap();
        f.set_len(64 << 20).unwrap();
        f.write_all_at(b"head", 0).unwrap();
        f.write_all_at(b"middle", 32 << 20).unwrap();
        let g = std::fs::File::create(root.join("var/all-hole")).unwrap();
        g.set_len(8 << 20).unwrap();
    }

    // Xattrs: user, trusted, a capability, ACLs (access + default).
    setxattr(
        &root.join("etc/os-release"),
        "user.mime_type",
        b"text/plain",
    );
    setxattr(
        &root.join("etc/os-release"),
        "trusted.overlay.x",
        b"\x00\x01binary",
    );
    setxattr(&root.join("srv/shared"), "user.dir", b"on a directory");
    run(
        "setcap",
        &[
            "cap_net_raw,cap_net_bind_service=ep",
            root.join("bin/su").to_str().unwrap(),
        ],
    );
    run(
        "setfacl",
        &[
            "-m",
            "u:1234:rx,g:5678:r",
            root.join("srv/shared").to_str().unwrap(),
        ],
    );
    run(
        "setfacl",
        &[
            "-d",
            "-m",
            "u:1234:rwx",
            root.join("srv/shared").to_str().unwrap(),
        ],
    );
    run(
        "setfacl",
        &[
            "-m",
            "u:4321:r",
            root.join("etc/os-release").to_str().unwrap(),
        ],
    );
    setxattr(&root.join("etc/escape"), "trusted.on-a-symlink", b"yes");

    // ns times, set last, directories post-order.
    set_times(&root.join("etc/os-release"), 1_500_000_000, 987_654_321);
    set_times(&root.join("etc/escape"), 1_200_000_000, 1);
    set_times(&root.join("run-fifo"), 1_300_000_000, 999_999_999);
    for d in [
        "home/alice/deep/er/est",
        "home/alice/deep/er",
        "home/alice/deep",
        "srv/shared",
        "srv",
        "etc/ssh",
        "etc",
        "var/empty",
    ] {
        set_times(&root.join(d), 1_400_000_000, 42);
    }
}

/// A tree of `dirs * files_per_dir` small files plus `big` files of `big_size` bytes.
pub fn build_bulk_tree(
    root: &Path,
    dirs: usize,
    files_per_dir: usize,
    big: usize,
    big_size: usize,
) {
    for d in 0..dirs {
        let dir = root.join(format!("d{:03}/sub{}", d, d % 7));
        std::fs::create_dir_all(&dir).unwrap();
        for f in 0..files_per_dir {
            let len = (d * 131 + f * 17) % 5000;
            let data: Vec<u8> = (0..len)
                .map(|i| (i as u8) ^ (f as u8) ^ (d as u8))
                .collect();
            std::fs::write(dir.join(format!("f{f}")), data).unwrap();
        }
        if d % 10 == 0 {
            std::fs::hard_link(dir.join("f0"), dir.join("f0.link")).unwrap();
            symlink("/nix/store/abc-dangling", dir.join("dangling")).unwrap();
            setxattr(&dir.join("f1"), "user.n", format!("{d}").as_bytes());
            lchown(&dir.join("f2"), 100_000 + d as u32, 100_000);
        }
    }
    std::fs::create_dir_all(root.join("big")).unwrap();
    for b in 0..big {
        let data: Vec<u8> = (0..big_size).map(|i| ((i * 7 + b) % 251) as u8).collect();
        std::fs::write(root.join(format!("big/blob{b}")), data).unwrap();
    }
}

/// Per entry: what `lstat` says, keyed by relative path. `atime` is optional because reading a
/// symlink (readlink) updates its atime on relatime mounts, for us as for `cp -a`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snap {
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub ino: u64,
    pub nlink: u64,
    pub mtime: (i64, i64),
    pub ctime: (i64, i64),
    pub atime: Option<(i64, i64)>,
}

/// Reads directories with `O_NOATIME`, so taking a snapshot does not itself change atimes.
pub fn snapshot(root: &Path, with_atime: bool) -> BTreeMap<PathBuf, Snap> {
    use rustix::fs::{AtFlags, Mode, OFlags};
    fn snap(st: &rustix::fs::Stat, with_atime: bool) -> Snap {
        let is_link =
            rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::Symlink;
        Snap {
            mode: st.st_mode,
            uid: st.st_uid,
            gid: st.st_gid,
            size: st.st_size as u64,
            ino: st.st_ino,
            nlink: st.st_nlink,
            mtime: (st.st_mtime, st.st_mtime_nsec as i64),
            ctime: (st.st_ctime, st.st_ctime_nsec as i64),
            atime: (with_atime && !is_link).then_some((st.st_atime, st.st_atime_nsec as i64)),
        }
    }
    let mut out = BTreeMap::new();
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::NOATIME;
    let root_fd = rustix::fs::openat(rustix::fs::CWD, root, flags, Mode::empty()).unwrap();
    out.insert(
        PathBuf::new(),
        snap(&rustix::fs::fstat(&root_fd).unwrap(), with_atime),
    );
    let dev = rustix::fs::fstat(&root_fd).unwrap().st_dev;
    let mut stack = vec![(root_fd, PathBuf::new())];
    while let Some((fd, rel)) = stack.pop() {
        let mut d = rustix::fs::Dir::read_from(&fd).unwrap();
        while let Some(e) = d.read() {
            let e = e.unwrap();
            let n = e.file_name();
            if n == c"." || n == c".." {
                continue;
            }
            let st = rustix::fs::statat(&fd, n, AtFlags::SYMLINK_NOFOLLOW).unwrap();
            let r = rel.join(OsStr::from_bytes(n.to_bytes()));
            out.insert(r.clone(), snap(&st, with_atime));
            if rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::Directory
                && st.st_dev == dev
            {
                let sub = rustix::fs::openat(&fd, n, flags, Mode::empty()).unwrap();
                stack.push((sub, r));
            }
        }
    }
    out
}

/// Differences rsync (an independent implementation) sees between two trees: contents by
/// checksum, permissions, owners (numeric), times (also of directories and symlinks), hard
/// links, ACLs, xattrs, devices and specials. Empty means identical.
pub fn rsync_diff(src: &Path, dst: &Path) -> String {
    let out = Command::new("rsync")
        .args(["-naiHAXSc", "--numeric-ids", "--devices", "--specials"])
        .arg(format!("{}/", src.display()))
        .arg(format!("{}/", dst.display()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "rsync: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Every regular file below `root` whose content contains `needle`.
pub fn files_containing(root: &Path, needle: &[u8]) -> Vec<PathBuf> {
    let mut hits = Vec::new();
    if !root.exists() {
        return hits;
    }
    for e in walkdir::WalkDir::new(root).follow_links(false) {
        let Ok(e) = e else { continue };
        if e.file_type().is_file()
            && let Ok(data) = std::fs::read(e.path())
            && data.windows(needle.len()).any(|w| w == needle)
        {
            hits.push(e.path().to_path_buf());
        }
    }
    hits
}

pub fn allocated(p: &Path) -> u64 {
    p.symlink_metadata().unwrap().blocks() * 512
}

/// A tmpfs mounted for a test, unmounted on drop.
pub struct Tmpfs(pub PathBuf);

impl Tmpfs {
    pub fn mount(at: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(at).unwrap();
        run(
            "mount",
            &[
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size}"),
                "tmpfs",
                at.to_str().unwrap(),
            ],
        );
        Tmpfs(at.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// A Progress that counts.
#[derive(Default)]
pub struct Count {
    pub total_entries: std::sync::atomic::AtomicU64,
    pub total_bytes: std::sync::atomic::AtomicU64,
    pub entries: std::sync::atomic::AtomicU64,
    pub bytes: std::sync::atomic::AtomicU64,
}

impl nixos_nspawn::state::Progress for Count {
    fn total(&self, entries: u64, bytes: u64) {
        use std::sync::atomic::Ordering::SeqCst;
        self.total_entries.store(entries, SeqCst);
        self.total_bytes.store(bytes, SeqCst);
    }
    fn entry_done(&self) {
        self.entries
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
    fn bytes_done(&self, n: u64) {
        self.bytes.fetch_add(n, std::sync::atomic::Ordering::SeqCst);
    }
}

/// A small real filesystem (btrfs, XFS with reflink, ext4) in a sparse image on a loop device,
/// mounted for one test; unmounted, its loop device detached and the image removed on drop,
/// also when the test fails. Names include the pid and a counter: tests of other processes
/// and threads run at the same time.
pub struct LoopFs {
    pub mnt: PathBuf,
    img: PathBuf,
    pub kind: &'static str,
}

/// Loop-mounted filesystems are available (root, `/dev/loop-control`, the mkfs tool), or why
/// not. Where CI sets `NIXOS_NSPAWN_REQUIRE_REAL_TOOLS=1` a missing piece fails the test.
pub fn loop_fs(kind: &'static str) -> Option<LoopFs> {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let mkfs = format!("mkfs.{kind}");
    let missing = if !rustix::process::geteuid().is_root() {
        Some("not root".to_string())
    } else if !Path::new("/dev/loop-control").exists() {
        Some("no /dev/loop-control (loop devices unavailable here)".to_string())
    } else if Command::new(&mkfs).arg("-V").output().is_err() {
        Some(format!("{mkfs} is not installed"))
    } else {
        None
    };
    if let Some(why) = missing {
        assert!(
            std::env::var("NIXOS_NSPAWN_REQUIRE_REAL_TOOLS").as_deref() != Ok("1"),
            "a {kind} loop filesystem is needed and NIXOS_NSPAWN_REQUIRE_REAL_TOOLS=1: {why}"
        );
        eprintln!("SKIPPED: no {kind} filesystem on a loop device: {why}");
        return None;
    }
    let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let base = std::env::temp_dir().join(format!(
        "nixos-nspawn-test-{kind}-{}-{n}",
        std::process::id()
    ));
    let img = base.with_extension("img");
    let mnt = base;
    std::fs::create_dir_all(&mnt).unwrap();
    // btrfs needs ~110 MB at least, XFS 300 MB (xfsprogs ≥ 5.19); sparse, so cheap.
    let size: u64 = match kind {
        "btrfs" => 160 << 20,
        "xfs" => 300 << 20,
        _ => 128 << 20,
    };
    let f = std::fs::File::create(&img).unwrap();
    f.set_len(size).unwrap();
    drop(f);
    let fs = LoopFs { mnt, img, kind };
    let mkfs_args: &[&str] = match kind {
        "btrfs" => &["-q", "-f"],
        "xfs" => &["-q", "-f", "-m", "reflink=1"],
        _ => &["-q", "-F"],
    };
    let out = Command::new(&mkfs)
        .args(mkfs_args)
        .arg(&fs.img)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{mkfs}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new("mount")
        .args(["-o", "loop"])
        .arg(&fs.img)
        .arg(&fs.mnt)
        .output()
        .unwrap();
    if !out.status.success() {
        // No loop device could be set up (a container without /dev/loop*, …).
        let why = format!(
            "mount -o loop {}: {}",
            fs.img.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
        assert!(
            std::env::var("NIXOS_NSPAWN_REQUIRE_REAL_TOOLS").as_deref() != Ok("1"),
            "a {kind} loop filesystem is needed and NIXOS_NSPAWN_REQUIRE_REAL_TOOLS=1: {why}"
        );
        eprintln!("SKIPPED: no {kind} filesystem on a loop device: {why}");
        return None;
    }
    Some(fs)
}

impl Drop for LoopFs {
    fn drop(&mut self) {
        // `mount -o loop` set autoclear: unmounting detaches the loop device.
        let ok = Command::new("umount")
            .arg(&self.mnt)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
        }
        let _ = std::fs::remove_file(&self.img);
        let _ = std::fs::remove_dir(&self.mnt);
    }
}

/// `chattr`, the independent tool.
pub fn chattr(flags: &str, p: &Path) {
    run("chattr", &[flags, p.to_str().unwrap()]);
}

/// The copied inode flags (`aAcCdimS`) of every file and directory below `root` as `lsattr`
/// (an independent implementation) shows them; entries without any are left out.
pub fn lsattr_map(root: &Path) -> BTreeMap<PathBuf, String> {
    let out = Command::new("lsattr")
        .args(["-R", "-a"])
        .arg(root)
        .output()
        .unwrap();
    let mut m = BTreeMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Some((attrs, path)) = line.split_once(' ') else {
            continue;
        };
        let path = Path::new(path.trim_start());
        let Ok(rel) = path.strip_prefix(root) else {
            continue;
        };
        if rel.ends_with(".") || rel.ends_with("..") {
            continue;
        }
        let mut letters: Vec<char> = attrs.chars().filter(|c| "aAcCdimS".contains(*c)).collect();
        letters.sort();
        if !letters.is_empty() {
            m.insert(rel.to_path_buf(), letters.into_iter().collect());
        }
    }
    m
}

/// Clear +i/+a everywhere below `root`, so that it can be removed.
pub fn unfreeze(root: &Path) {
    let _ = Command::new("chattr")
        .args(["-R", "-f", "-i", "-a"])
        .arg(root)
        .status();
}

/// Overwrite one byte of `p` in place (unsharing that extent) and put its mtime back, so that
/// only a content check can notice (byte 4096, or the last of a smaller file; the same call
/// flips it back).
pub fn corrupt_behind_the_tools_back(p: &Path) {
    use std::os::unix::fs::FileExt;
    let before = p.symlink_metadata().unwrap();
    let f = std::fs::OpenOptions::new().write(true).open(p).unwrap();
    let at = 4096.min(before.len().saturating_sub(1));
    let mut b = [0u8; 1];
    std::fs::File::open(p)
        .unwrap()
        .read_exact_at(&mut b, at)
        .unwrap();
    f.write_all_at(&[b[0] ^ 0xff], at).unwrap();
    f.sync_all().unwrap();
    drop(f);
    let t = rustix::fs::Timestamps {
        last_access: rustix::fs::Timespec {
            tv_sec: before.atime(),
            tv_nsec: before.atime_nsec(),
        },
        last_modification: rustix::fs::Timespec {
            tv_sec: before.mtime(),
            tv_nsec: before.mtime_nsec(),
        },
    };
    rustix::fs::utimensat(
        rustix::fs::CWD,
        p,
        &t,
        rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
    )
    .unwrap();
}
