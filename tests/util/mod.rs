//! Shared helpers for the integration tests: fixture copies in temp dirs, the real binary,
//! and checks with the real `systemd-nspawn` and `nix-instantiate`.
#![allow(dead_code, clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A private copy of `fixtures/hosts/<scenario>/root` (symlinks, modes and times kept).
pub struct TestRoot {
    pub dir: tempfile::TempDir,
}

impl TestRoot {
    pub fn fixture(scenario: &str) -> TestRoot {
        let dir = tempfile::tempdir().unwrap();
        let src = repo().join("fixtures/hosts").join(scenario).join("root");
        assert!(src.is_dir(), "no fixture {}", src.display());
        let st = Command::new("cp")
            .arg("-a")
            .arg(format!("{}/.", src.display()))
            .arg(dir.path())
            .status()
            .unwrap();
        assert!(st.success());
        TestRoot { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Run the real binary with `--root` set to this tree.
    pub fn run(&self, args: &[&str]) -> Output {
        nixos_nspawn(self.path(), args)
    }
}

pub fn nixos_nspawn(root: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_nixos-nspawn"))
        .arg("--root")
        .arg(root)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

pub fn json(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e})\n--- stdout\n{}\n--- stderr\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// A read-only, `noatime` view of a tree (a bind mount, as root): looking at a tree through it
/// changes no access time, so the observer does not disturb what it observes.
pub struct NoatimeView {
    dir: tempfile::TempDir,
    mounted: bool,
}

impl NoatimeView {
    pub fn new(root: &Path) -> NoatimeView {
        let dir = tempfile::tempdir().unwrap();
        let ok = Command::new("mount")
            .arg("--bind")
            .arg(root)
            .arg(dir.path())
            .status()
            .is_ok_and(|s| s.success())
            && Command::new("mount")
                .args(["-o", "remount,bind,ro,noatime"])
                .arg(dir.path())
                .status()
                .is_ok_and(|s| s.success());
        assert!(
            ok || !rustix::process::geteuid().is_root(),
            "cannot make a noatime view of {}",
            root.display()
        );
        NoatimeView { dir, mounted: ok }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for NoatimeView {
    fn drop(&mut self) {
        if self.mounted {
            let _ = Command::new("umount")
                .arg("-l")
                .arg(self.dir.path())
                .status();
        }
    }
}

/// Every fact about every entry of a tree, including atime, so that "changed nothing" can be
/// checked exactly. Taken through a [`NoatimeView`] so that taking it changes nothing.
pub fn snapshot(root: &Path) -> BTreeMap<PathBuf, String> {
    let view = NoatimeView::new(root);
    let root = view.path();
    let mut out = BTreeMap::new();
    for e in walkdir::WalkDir::new(root).follow_links(false) {
        let e = e.unwrap();
        let m = e.path().symlink_metadata().unwrap();
        let content = if m.file_type().is_file() {
            blake3::hash(&std::fs::read(e.path()).unwrap())
                .to_hex()
                .to_string()
        } else if m.file_type().is_symlink() {
            std::fs::read_link(e.path()).unwrap().display().to_string()
        } else {
            String::new()
        };
        out.insert(
            e.path().strip_prefix(root).unwrap().to_path_buf(),
            format!(
                "mode={:o} uid={} gid={} size={} ino={} nlink={} atime={}.{} mtime={}.{} ctime={}.{} {}",
                m.mode(),
                m.uid(),
                m.gid(),
                m.size(),
                m.ino(),
                m.nlink(),
                m.atime(),
                m.atime_nsec(),
                m.mtime(),
                m.mtime_nsec(),
                m.ctime(),
                m.ctime_nsec(),
                content
            ),
        );
    }
    out
}

/// Set every atime in the tree to an old date, so that a read under `relatime` would update it.
/// All paths are listed first and then stamped, so our own directory reads cannot undo it.
pub fn age_atimes(root: &Path) {
    use rustix::fs::{AtFlags, CWD, Timespec, Timestamps, UTIME_OMIT};
    let paths: Vec<PathBuf> = walkdir::WalkDir::new(root)
        .follow_links(false)
        .into_iter()
        .map(|e| e.unwrap().into_path())
        .collect();
    let ts = Timestamps {
        last_access: Timespec {
            tv_sec: 978_307_200,
            tv_nsec: 0,
        },
        last_modification: Timespec {
            tv_sec: 0,
            tv_nsec: UTIME_OMIT,
        },
    };
    for p in paths.iter().rev() {
        rustix::fs::utimensat(CWD, p, &ts, AtFlags::SYMLINK_NOFOLLOW).unwrap();
    }
}

/// Is a real tool available? When `NIXOS_NSPAWN_REQUIRE_REAL_TOOLS=1` a missing tool fails the
/// test; otherwise the test prints why it is skipped.
pub fn have_tool(tool: &str, package: &str) -> bool {
    let found = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !found {
        if std::env::var("NIXOS_NSPAWN_REQUIRE_REAL_TOOLS").as_deref() == Ok("1") {
            panic!(
                "{tool} is required (NIXOS_NSPAWN_REQUIRE_REAL_TOOLS=1): apt-get install {package}"
            );
        }
        // Straight to the process's stderr: the harness captures eprintln!, and a skip must show.
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr().lock(),
            "skipped: {tool} not found; install it with apt-get install {package}"
        );
    }
    found
}

/// Parse a Nix expression with the real `nix-instantiate --parse`; Err carries its message.
pub fn nix_parse(text: &str) -> Result<(), String> {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("x.nix");
    std::fs::write(&f, text).unwrap();
    let out = Command::new("nix-instantiate")
        .arg("--parse")
        .arg(&f)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// The real nixpkgs files the module is evaluated with: `$NIXPKGS` (a nixpkgs checkout) when
/// set, otherwise the vendored copies in `../shared/nixpkgs` next to the repository. Missing:
/// a failure when `NIXOS_NSPAWN_REQUIRE_REAL_TOOLS=1` (CI), otherwise `None` after saying,
/// visibly, that the test is skipped.
pub fn nixpkgs() -> Option<String> {
    let dir = match std::env::var("NIXPKGS") {
        Ok(p) if !p.is_empty() => PathBuf::from(p),
        _ => repo().join("../shared/nixpkgs"),
    };
    if dir.join("lib/default.nix").is_file() && dir.join("nixos/lib/systemd-lib.nix").is_file() {
        let dir = dir.canonicalize().unwrap_or(dir);
        return Some(dir.display().to_string());
    }
    if std::env::var("NIXOS_NSPAWN_REQUIRE_REAL_TOOLS").as_deref() == Ok("1") {
        panic!(
            "no nixpkgs at {} (NIXOS_NSPAWN_REQUIRE_REAL_TOOLS=1): the module tests evaluate \
             nixos/ with nixpkgs' real files; set NIXPKGS to a nixpkgs checkout",
            dir.display()
        );
    }
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr().lock(),
        "skipped: no nixpkgs at {}; set NIXPKGS to a nixpkgs checkout to run the module evaluation tests",
        dir.display()
    );
    None
}

pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// Run systemd-nspawn's own settings parser over a `.nspawn` text (parse-only recipe: the file
/// next to a directory that is not an OS tree, `--settings=trusted`, no container starts).
/// Returns the `FILE:LINE: message` complaints, or why the file was not read at all.
pub fn nspawn_parse_errors(name: &str, text: &str) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    // The machine name follows the directory; the adjacent file must be named after it.
    let file = dir.path().join(format!("{name}.nspawn"));
    std::fs::write(&file, text).unwrap();
    let out = Command::new("timeout")
        .arg("20")
        .arg("systemd-nspawn")
        .args(["--register=no", "-q", "--settings=trusted", "-D"])
        .arg(dir.path().join(name))
        .arg("/bin/true")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let prefix = format!("{}:", file.display());
    let mut bad: Vec<String> = stderr
        .lines()
        .filter(|l| l.starts_with(&prefix))
        .map(str::to_string)
        .collect();
    // nspawn must have got past the settings to the (missing or empty) directory.
    if !(stderr.contains("doesn't look like")
        || stderr.contains("No such file")
        || stderr.contains("Failed to"))
    {
        bad.push(format!(
            "nspawn did not get to the directory check:\n{stderr}"
        ));
    }
    bad
}

/// [`nspawn_parse_errors`] as a result: `Err` carries the complaints.
pub fn nspawn_parse(name: &str, text: &str) -> Result<(), String> {
    let bad = nspawn_parse_errors(name, text);
    if bad.is_empty() {
        Ok(())
    } else {
        Err(bad.join("\n"))
    }
}

/// Everything that must survive a copy, per entry, independent of the engine's own verifier:
/// type, mode, owner, size, mtime (ns), device numbers, link target, content hash, xattrs,
/// allocated blocks (sparseness) and which entries are hardlinked together.
pub fn fidelity(root: &Path) -> BTreeMap<PathBuf, String> {
    // Through a noatime view: comparing must not touch the trees it compares.
    let view = NoatimeView::new(root);
    let root = view.path();
    let mut out = BTreeMap::new();
    let mut inodes: BTreeMap<(u64, u64), PathBuf> = BTreeMap::new();
    for e in walkdir::WalkDir::new(root)
        .follow_links(false)
        .sort_by_file_name()
    {
        let e = e.unwrap();
        let rel = e.path().strip_prefix(root).unwrap().to_path_buf();
        let m = e.path().symlink_metadata().unwrap();
        let ft = m.file_type();
        let mut line = format!(
            "mode={:o} uid={} gid={} rdev={}",
            m.mode(),
            m.uid(),
            m.gid(),
            m.rdev()
        );
        // Directory sizes and mtimes of the top dir depend on the filesystem and on renames.
        if !ft.is_dir() {
            line += &format!(" size={}", m.size());
        }
        if !rel.as_os_str().is_empty() {
            line += &format!(" mtime={}.{}", m.mtime(), m.mtime_nsec());
        }
        if ft.is_file() {
            let data = std::fs::read(e.path()).unwrap();
            line += &format!(" blake3={}", blake3::hash(&data).to_hex());
            // Sparse files stay sparse: at most one extra block of slack per file.
            line += &format!(" sparse={}", m.blocks() * 512 < m.size());
            if m.nlink() > 1 {
                let key = (m.dev(), m.ino());
                match inodes.get(&key) {
                    Some(first) => line += &format!(" hardlink-of={}", first.display()),
                    None => {
                        inodes.insert(key, rel.clone());
                    }
                }
            }
        }
        if ft.is_symlink() {
            line += &format!(" -> {}", std::fs::read_link(e.path()).unwrap().display());
        }
        line += &xattrs(e.path());
        out.insert(rel, line);
    }
    out
}

fn xattrs(p: &Path) -> String {
    let mut names = vec![0u8; 65536];
    let n = match rustix::fs::llistxattr(p, &mut names[..]) {
        Ok(n) => n,
        Err(_) => return String::new(),
    };
    let mut list: Vec<&[u8]> = names[..n]
        .split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .collect();
    list.sort();
    let mut out = String::new();
    for name in list {
        let cname = std::ffi::CString::new(name).unwrap();
        let mut val = vec![0u8; 65536];
        let len = rustix::fs::lgetxattr(p, &cname, &mut val[..]).unwrap_or(0);
        out += &format!(
            " xattr:{}={}",
            String::from_utf8_lossy(name),
            blake3::hash(&val[..len]).to_hex()
        );
    }
    out
}

/// Fill a container rootfs with every kind of file a real one has (as root).
pub fn populate_rootfs(dir: &Path) {
    use std::os::unix::fs::symlink;
    let sh = |script: &str| {
        let st = Command::new("sh")
            .arg("-ec")
            .arg(script)
            .current_dir(dir)
            .status()
            .unwrap();
        assert!(st.success(), "{script}");
    };
    std::fs::create_dir_all(dir.join("var/lib/app/nested/deeper")).unwrap();
    std::fs::create_dir_all(dir.join("dev")).unwrap();
    for i in 0..200 {
        std::fs::write(
            dir.join(format!("var/lib/app/nested/f{i}")),
            format!("file {i}\n").repeat(i % 7),
        )
        .unwrap();
    }
    sh("mknod dev/null c 1 3; mknod dev/loop9 b 7 9; mkfifo var/lib/app/fifo
        python3 -c 'import socket; s=socket.socket(socket.AF_UNIX); s.bind(\"var/lib/app/sock\")'
        printf data > var/lib/app/hl1; ln var/lib/app/hl1 var/lib/app/hl2
        printf suid > var/lib/app/suid; chmod 4755 var/lib/app/suid
        mkdir -p var/lib/app/sticky; chmod 1777 var/lib/app/sticky
        mkdir -p var/lib/app/sgid; chmod 2775 var/lib/app/sgid
        printf high > var/lib/app/high; chown 100000:100000 var/lib/app/high
        printf huge > var/lib/app/huge; chown 2147483647:2147483646 var/lib/app/huge
        truncate -s 64M var/lib/app/sparse; printf tail >> var/lib/app/sparse
        printf x > var/lib/app/xattrs
        setfattr -n user.note -v hello var/lib/app/xattrs
        setfattr -n trusted.secret -v s3cret var/lib/app/xattrs
        printf ping > var/lib/app/ping; setcap cap_net_raw=ep var/lib/app/ping 2>/dev/null || setfattr -n security.capability -v 0sAQAAAgAgAAAAAAAAAAAAAAAAAAA= var/lib/app/ping
        setfacl -m u:1234:rwx var/lib/app/nested; setfacl -d -m g:5678:rx var/lib/app/nested
        touch -h -d '2020-02-02 02:02:02.123456789' var/lib/app/nested/f1");
    // Escape attempts planted by whoever is root in the container.
    symlink("/etc/shadow", dir.join("var/lib/app/abs-escape")).unwrap();
    symlink(
        "../../../../../../../../etc",
        dir.join("var/lib/app/rel-escape"),
    )
    .unwrap();
    symlink(
        "/nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-dangling",
        dir.join("var/lib/app/dangling"),
    )
    .unwrap();
    symlink("/", dir.join("var/lib/app/root-link")).unwrap();
}

/// A directory of recording stand-ins for commands that need a running systemd. Each writes its
/// argv to `calls.log`; `systemctl is-active` answers `inactive` unless `active_units` lists the unit.
pub struct StandIns {
    pub dir: tempfile::TempDir,
}

impl StandIns {
    pub fn new(active_units: &[&str]) -> StandIns {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("calls.log");
        let active = active_units.join(" ");
        let script = format!(
            "#!/bin/sh\necho \"$(basename \"$0\") $*\" >> {log}\n\
             if [ \"$1\" = is-active ]; then for u in {active}; do [ \"$u\" = \"$2\" ] && echo active && exit 0; done; echo inactive; exit 3; fi\nexit 0\n",
            log = log.display()
        );
        for prog in ["systemctl", "machinectl"] {
            let p = dir.path().join(prog);
            std::fs::write(&p, &script).unwrap();
            std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o755))
                .unwrap();
        }
        StandIns { dir }
    }

    pub fn path_env(&self) -> String {
        format!(
            "{}:{}",
            self.dir.path().display(),
            std::env::var("PATH").unwrap_or_default()
        )
    }

    pub fn calls(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.path().join("calls.log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }
}

/// `nixos-nspawn --root ROOT migrate ARGS…` with the stand-ins first on `PATH` and no terminal.
pub fn migrate_with_stand_ins(root: &Path, stand_ins: &StandIns, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_nixos-nspawn"))
        .arg("--root")
        .arg(root)
        .arg("migrate")
        .args(args)
        .env("PATH", stand_ins.path_env())
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// Assert two snapshots are equal, printing only the first differing entries.
pub fn assert_same(what: &str, a: &BTreeMap<PathBuf, String>, b: &BTreeMap<PathBuf, String>) {
    let mut diffs = Vec::new();
    for (p, x) in a {
        match b.get(p) {
            Some(y) if y == x => {}
            Some(y) => diffs.push(format!(
                "changed {}:\n  before {x}\n  after  {y}",
                p.display()
            )),
            None => diffs.push(format!("removed {}", p.display())),
        }
    }
    for p in b.keys().filter(|p| !a.contains_key(*p)) {
        diffs.push(format!("added {}", p.display()));
    }
    if !diffs.is_empty() {
        let n = diffs.len();
        diffs.truncate(8);
        panic!("{what}: {n} differences, first ones:\n{}", diffs.join("\n"));
    }
}

/// Run systemd-networkd over `files` in private mount and network namespaces; the
/// `FILE:LINE:` complaints, or `None` when the check cannot run here (after saying why).
pub fn networkd_parse_errors(files: &[(String, String)]) -> Option<Vec<String>> {
    let networkd_bin = Path::new("/lib/systemd/systemd-networkd");
    if !networkd_bin.exists() || !have_tool("unshare", "util-linux") {
        if std::env::var("NIXOS_NSPAWN_REQUIRE_REAL_TOOLS").as_deref() == Ok("1") {
            panic!(
                "systemd-networkd is required (NIXOS_NSPAWN_REQUIRE_REAL_TOOLS=1): install systemd"
            );
        }
        eprintln!(
            "skipped: install systemd (/lib/systemd/systemd-networkd) and util-linux (unshare)"
        );
        return None;
    }
    if !is_root() {
        if std::env::var("NIXOS_NSPAWN_REQUIRE_REAL_TOOLS").as_deref() == Ok("1") {
            panic!("the networkd check needs root (namespaces and mounts)");
        }
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr().lock(),
            "skipped: the networkd check needs root"
        );
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("network");
    let empty = dir.path().join("empty");
    std::fs::create_dir_all(&cfg).unwrap();
    std::fs::create_dir_all(&empty).unwrap();
    for (name, text) in files {
        std::fs::write(cfg.join(name), text).unwrap();
    }
    // A canary that matches `lo`: networkd logs its path once it has loaded the directory,
    // which proves the files were read even when none of them matches a link here.
    std::fs::write(
        cfg.join("000-canary.network"),
        "[Match]\nName=lo\n\n[Network]\nKeepConfiguration=yes\n",
    )
    .unwrap();
    let log = dir.path().join("log");
    let script = format!(
        "set -e\n\
         mount -t sysfs -o ro sysfs /sys\n\
         mkdir -p /run/systemd/netif\n\
         mount -t tmpfs -o mode=0755 tmpfs /run/systemd/netif\n\
         chown systemd-network:systemd-network /run/systemd/netif\n\
         mount --bind {cfg} /etc/systemd/network\n\
         mount --bind {empty} /lib/systemd/network\n\
         if [ -d /run/systemd/network ]; then mount --bind {empty} /run/systemd/network; fi\n\
         ip link set lo up\n\
         SYSTEMD_LOG_LEVEL=debug SYSTEMD_LOG_TARGET=console /lib/systemd/systemd-networkd >{log} 2>&1 & P=$!\n\
         sleep 2\n\
         kill $P\n\
         wait $P || true\n",
        cfg = cfg.display(),
        empty = empty.display(),
        log = log.display()
    );
    let out = Command::new("timeout")
        .args([
            "30",
            "unshare",
            "-m",
            "-n",
            "--propagation",
            "private",
            "sh",
            "-c",
            &script,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "networkd harness failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(
        log.contains("/etc/systemd/network/000-canary.network"),
        "networkd did not read the units:\n{log}"
    );
    let bad: Vec<&str> = log
        .lines()
        .filter(|l| {
            l.starts_with("/etc/systemd/network/")
                && l.split(':')
                    .nth(1)
                    .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        })
        .collect();
    Some(bad.into_iter().map(str::to_string).collect())
}

/// Run `script` with `sh -c` in new private mount and network namespaces (`unshare -m -n
/// --propagation private`), stdin closed, stopped after `secs` seconds (`timeout`).
pub fn run_in_private_namespaces(secs: u32, script: &str) -> Output {
    Command::new("timeout")
        .arg(secs.to_string())
        .args([
            "unshare",
            "-m",
            "-n",
            "--propagation",
            "private",
            "sh",
            "-c",
            script,
        ])
        .stdin(Stdio::null())
        .output()
        .expect("run timeout unshare")
}
