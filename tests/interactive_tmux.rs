//! The interactive `migrate`, driven in a real terminal (tmux send-keys / capture-pane) as a
//! person would: accepting one container and declining another, Ctrl-C at a question (nothing
//! changed), Ctrl-C during a copy, resuming it, and rolling back afterwards (legacy identical).
//! Each test runs its own tmux server (`-L` socket named after the pid), killed on drop.
#![allow(clippy::unwrap_used)]

mod util;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};
use util::*;

static SEQ: AtomicU32 = AtomicU32::new(0);

struct Tmux {
    socket: String,
    exit_file: PathBuf,
    _dir: tempfile::TempDir,
}

impl Tmux {
    /// Start `nixos-nspawn --root ROOT migrate ARGS` in a fresh terminal, with `env` set.
    fn start(root: &Path, stand_ins: &StandIns, args: &[&str], env: &[(&str, &str)]) -> Tmux {
        let mut cmd = format!("env PATH='{}' TERM=xterm-256color", stand_ins.path_env());
        for (k, v) in env {
            cmd.push_str(&format!(" {k}='{v}'"));
        }
        cmd.push_str(&format!(
            " '{}' --root '{}' migrate",
            env!("CARGO_BIN_EXE_nixos-nspawn"),
            root.display()
        ));
        for a in args {
            cmd.push_str(&format!(" '{a}'"));
        }
        Tmux::spawn(&cmd)
    }

    /// Run the shell command `cmd` in a fresh terminal.
    fn spawn(cmd: &str) -> Tmux {
        let dir = tempfile::tempdir().unwrap();
        let socket = format!(
            "nn-it-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::SeqCst)
        );
        let exit_file = dir.path().join("exit");
        let cmd = format!("{cmd}; echo $? > '{}'; sleep 600", exit_file.display());
        let st = Command::new("tmux")
            .args([
                "-L",
                &socket,
                "-f",
                "/dev/null",
                "new-session",
                "-d",
                "-x",
                "200",
                "-y",
                "50",
            ])
            .arg(cmd)
            .status()
            .unwrap();
        assert!(st.success());
        Tmux {
            socket,
            exit_file,
            _dir: dir,
        }
    }

    /// Everything the terminal showed so far (scrollback included), without escapes.
    fn screen(&self) -> String {
        let out = Command::new("tmux")
            .args([
                "-L",
                &self.socket,
                "capture-pane",
                "-p",
                "-J",
                "-S",
                "-",
                "-E",
                "-",
            ])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The screen with its escape sequences (colours).
    fn screen_escaped(&self) -> String {
        let out = Command::new("tmux")
            .args([
                "-L",
                &self.socket,
                "capture-pane",
                "-p",
                "-e",
                "-S",
                "-",
                "-E",
                "-",
            ])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Wait until the screen shows `needle` `times` times; panic with the screen otherwise.
    fn wait_for_n(&self, needle: &str, times: usize) -> String {
        let start = Instant::now();
        loop {
            let s = self.screen();
            if s.matches(needle).count() >= times {
                return s;
            }
            if start.elapsed() > Duration::from_secs(120) {
                panic!("timed out waiting for {needle:?}; the terminal shows:\n{s}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn wait_for(&self, needle: &str) -> String {
        self.wait_for_n(needle, 1)
    }

    fn keys(&self, keys: &[&str]) {
        let st = Command::new("tmux")
            .args(["-L", &self.socket, "send-keys"])
            .args(keys)
            .status()
            .unwrap();
        assert!(st.success());
        // Let the program read them before the next question is awaited.
        std::thread::sleep(Duration::from_millis(200));
    }

    /// The exit code of the run.
    fn exit_code(&self) -> i32 {
        let start = Instant::now();
        loop {
            if let Ok(s) = std::fs::read_to_string(&self.exit_file)
                && let Ok(n) = s.trim().parse()
            {
                return n;
            }
            if start.elapsed() > Duration::from_secs(120) {
                panic!(
                    "the run did not end; the terminal shows:\n{}",
                    self.screen()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["-L", &self.socket, "kill-server"])
            .status();
    }
}

fn have_tmux() -> bool {
    have_tool("tmux", "tmux")
}

const LEGACY: &[&str] = &[
    "etc/nixos-containers",
    "var/lib/nixos-containers",
    "nix/var/nix/profiles/per-container",
];

fn legacy_snapshot(root: &Path) -> std::collections::BTreeMap<PathBuf, String> {
    let mut all = std::collections::BTreeMap::new();
    for l in LEGACY {
        for (k, v) in snapshot(&root.join(l)) {
            all.insert(Path::new(l).join(k), v);
        }
    }
    all
}

#[test]
fn accept_one_decline_the_other_and_get_the_next_steps() {
    if !have_tmux() || !is_root() {
        eprintln!("skipped: needs tmux and root");
        return;
    }
    let root = TestRoot::fixture("example");
    let stand_ins = StandIns::new(&[]);
    let t = Tmux::start(
        root.path(),
        &stand_ins,
        &["--only", "db", "--only", "web"],
        &[("NO_COLOR", "1")],
    );
    let s = t.wait_for("Migrate db now?");
    // The table, then db's diff against its old definition.
    for needle in [
        "NAME",
        "NETWORK",
        "NEEDS A HUMAN",
        "db",
        "declarative",
        "host",
        "private veth",
        "--- old: /etc/nixos/configuration.nix:",
        "+   nixos.containers.instances.db = {",
    ] {
        assert!(s.contains(needle), "{needle:?} not shown:\n{s}");
    }
    t.keys(&["y", "Enter"]);
    t.wait_for("How should the state of db come across?");
    t.keys(&["Enter"]); // copy, the default
    t.wait_for("Migrate web now?");
    t.keys(&["n", "Enter"]);
    t.wait_for("web is left untouched");
    let s = t.wait_for("Carry this out now?");
    assert!(s.contains("db: copy the state"), "{s}");
    t.keys(&["Enter"]);
    let s = t.wait_for("Next steps");
    let code = t.exit_code();
    assert!(code == 0 || code == 3, "exit {code}\n{s}");
    let s = t.screen();
    for needle in [
        "state copied /var/lib/nixos-containers/db → /var/lib/machines/db",
        "wrote /etc/nixos/nspawn-containers.nix",
        "containers.db: /etc/nixos/configuration.nix:",
        "nixos-rebuild boot",
        "machinectl start",
        "migrate --rollback db",
        "migrate --cleanup db",
    ] {
        assert!(s.contains(needle), "{needle:?} not shown:\n{s}");
    }
    assert!(root.path().join("var/lib/machines/db").is_dir());
    assert!(!root.path().join("var/lib/machines/web").exists());
    let nix = std::fs::read_to_string(root.path().join("etc/nixos/nspawn-containers.nix")).unwrap();
    assert!(
        nix.contains("instances.db") && !nix.contains("instances.web"),
        "{nix}"
    );
    // NO_COLOR: no colour escapes anywhere on the screen.
    assert!(
        !t.screen_escaped().contains("\x1b[3"),
        "colours despite NO_COLOR"
    );
}

#[test]
fn ctrl_c_at_a_question_changes_nothing_and_says_so() {
    if !have_tmux() || !is_root() {
        eprintln!("skipped: needs tmux and root");
        return;
    }
    let root = TestRoot::fixture("example");
    let stand_ins = StandIns::new(&[]);
    age_atimes(root.path());
    let before = snapshot(root.path());
    let t = Tmux::start(root.path(), &stand_ins, &["--only", "db"], &[]);
    let s = t.wait_for("Migrate db now?");
    // Colours on a terminal by default.
    assert!(t.screen_escaped().contains("\x1b["), "no colours:\n{s}");
    t.keys(&["C-c"]);
    let s = t.wait_for("Interrupted at a question: nothing was changed");
    assert_eq!(t.exit_code(), 130, "{s}");
    assert_same(
        "after Ctrl-C at a question",
        &before,
        &snapshot(root.path()),
    );
}

#[test]
fn ctrl_c_during_the_copy_then_resume_then_rollback() {
    if !have_tmux() || !is_root() {
        eprintln!("skipped: needs tmux and root");
        return;
    }
    let root = TestRoot::fixture("example");
    // Enough files, copied by one worker, that the copy takes a few seconds.
    let many = root.path().join("var/lib/nixos-containers/db/var/lib/many");
    for d in 0..60 {
        let dir = many.join(format!("d{d}"));
        std::fs::create_dir_all(&dir).unwrap();
        for f in 0..100 {
            std::fs::write(dir.join(format!("f{f}")), format!("{d}/{f}")).unwrap();
        }
    }
    let stand_ins = StandIns::new(&[]);
    age_atimes(root.path());
    let legacy_before = legacy_snapshot(root.path());
    let env = [("NIXOS_NSPAWN_STATE_WORKERS", "1"), ("NO_COLOR", "1")];
    let t = Tmux::start(root.path(), &stand_ins, &["--only", "db"], &env);
    t.wait_for("Migrate db now?");
    t.keys(&["y", "Enter"]);
    t.wait_for("How should the state of db come across?");
    t.keys(&["Enter"]);
    t.wait_for("Carry this out now?");
    t.keys(&["Enter"]);
    let staging = root
        .path()
        .join("var/lib/machines/.db.partial/tree/var/lib/many");
    let start = Instant::now();
    while !staging.exists() && start.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(10));
    }
    t.keys(&["C-c"]);
    let code = t.exit_code();
    let s = t.screen();
    if code != 130 {
        eprintln!(
            "the copy finished before Ctrl-C arrived (exit {code}); interrupt case not reached"
        );
        return;
    }
    for needle in [
        "Interrupted during the migration of db",
        "run `nixos-nspawn --root",
        "--rollback db",
    ] {
        assert!(s.contains(needle), "{needle:?} not shown:\n{s}");
    }
    assert!(root.path().join("var/lib/machines/.db.partial").is_dir());
    assert!(!root.path().join("var/lib/machines/db").exists());
    drop(t);

    // Resume: the table says so, the copy continues and finishes.
    let t = Tmux::start(root.path(), &stand_ins, &["--only", "db"], &env);
    let s = t.wait_for("Migrate db now?");
    assert!(s.contains("copy interrupted"), "{s}");
    assert!(
        s.contains("an interrupted copy of db waits to be resumed"),
        "{s}"
    );
    t.keys(&["y", "Enter"]);
    t.wait_for("How should the state of db come across?");
    t.keys(&["Enter"]);
    t.wait_for("Carry this out now?");
    t.keys(&["Enter"]);
    let s = t.wait_for("Next steps");
    assert!(s.contains("resumed an interrupted run"), "{s}");
    assert!(matches!(t.exit_code(), 0 | 3));
    assert!(
        root.path()
            .join("var/lib/machines/db/var/lib/many/d59/f99")
            .is_file()
    );
    assert!(!root.path().join("var/lib/machines/.db.partial").exists());
    drop(t);

    // And back: the legacy container is exactly as it was.
    let out = Command::new(env!("CARGO_BIN_EXE_nixos-nspawn"))
        .arg("--root")
        .arg(root.path())
        .args(["migrate", "--rollback", "db", "--yes"])
        .env("PATH", stand_ins.path_env())
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!root.path().join("var/lib/machines/db").exists());
    assert_same(
        "legacy after Ctrl-C, resume and rollback",
        &legacy_before,
        &legacy_snapshot(root.path()),
    );
}

#[test]
fn rollback_asks_on_a_terminal_and_no_changes_nothing() {
    if !have_tmux() || !is_root() {
        eprintln!("skipped: needs tmux and root");
        return;
    }
    let root = TestRoot::fixture("example");
    let stand_ins = StandIns::new(&[]);
    let out = Command::new(env!("CARGO_BIN_EXE_nixos-nspawn"))
        .arg("--root")
        .arg(root.path())
        .args(["migrate", "--yes", "-q", "--only", "db"])
        .env("PATH", stand_ins.path_env())
        .output()
        .unwrap();
    assert!(matches!(out.status.code(), Some(0 | 3)));
    let t = Tmux::start(root.path(), &stand_ins, &["--rollback", "db"], &[]);
    t.wait_for("Roll back db?");
    t.keys(&["Enter"]); // the default is no
    t.wait_for("Nothing was done.");
    assert_eq!(t.exit_code(), 0);
    assert!(root.path().join("var/lib/machines/db").is_dir());
}

/// `--rewrite` at a terminal (issue 10): the run reaches the rewrite question for db and web.
fn rewrite_run(root: &Path, stand_ins: &StandIns, env: &[(&str, &str)]) -> Tmux {
    let t = Tmux::start(
        root,
        stand_ins,
        &["--rewrite", "--only", "db", "--only", "web"],
        env,
    );
    for name in ["db", "web"] {
        t.wait_for(&format!("Migrate {name} now?"));
        t.keys(&["y", "Enter"]);
        t.wait_for(&format!("How should the state of {name} come across?"));
        t.keys(&["Enter"]);
    }
    t.wait_for("Rewrite in place?");
    t
}

const CONF: &str = "etc/nixos/configuration.nix";

fn conf_backups(root: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(root.join("etc/nixos"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().contains(".bak-"))
        .collect()
}

#[test]
fn rewrite_at_a_terminal_shows_the_coloured_diff_and_yes_applies_it() {
    if !have_tmux() || !is_root() {
        eprintln!("skipped: needs tmux and root");
        return;
    }
    let root = TestRoot::fixture("example");
    let stand_ins = StandIns::new(&[]);
    let original = std::fs::read(root.path().join(CONF)).unwrap();
    let legacy_before = legacy_snapshot(root.path());
    let t = rewrite_run(root.path(), &stand_ins, &[]);
    let s = t.screen();
    for needle in [
        "--- /etc/nixos/configuration.nix",
        "+++ /etc/nixos/configuration.nix (rewritten)",
        "-  containers.web = {",
        "+  nixos.containers.instances.web = {",
        "+  nixos.containers.instances.db = {",
        "Yes: /etc/nixos/configuration.nix is rewritten as shown",
        "No: the files stay as they are, and the new definitions go to /etc/nixos/nspawn-containers.nix",
    ] {
        assert!(s.contains(needle), "{needle:?} not shown:\n{s}");
    }
    // Removed lines red, added lines green (colours are on at a terminal without NO_COLOR).
    let esc = t.screen_escaped();
    assert!(
        esc.contains("\x1b[31m-  containers.web = {"),
        "removed lines are not red:\n{esc}"
    );
    assert!(
        esc.contains("\x1b[32m+  nixos.containers.instances.web = {"),
        "added lines are not green:\n{esc}"
    );
    assert!(std::fs::read(root.path().join(CONF)).unwrap() == original);
    t.keys(&["y", "Enter"]);
    let s = t.wait_for("Carry this out now?");
    assert!(
        s.contains("rewrite /etc/nixos/configuration.nix in place (db, web)"),
        "{s}"
    );
    assert!(
        !s.contains("write the new definitions to"),
        "nothing goes to the output file:\n{s}"
    );
    t.keys(&["Enter"]);
    let s = t.wait_for("Next steps");
    assert!(matches!(t.exit_code(), 0 | 3), "{s}");
    let s = t.screen();
    for needle in [
        "rewrote /etc/nixos/configuration.nix in place (db, web); the original is kept as /etc/nixos/configuration.nix.bak-",
        "Your configuration now defines db, web in place, in /etc/nixos/configuration.nix",
        "the rewritten definitions get their old form back too",
    ] {
        assert!(s.contains(needle), "{needle:?} not shown:\n{s}");
    }
    let conf = std::fs::read_to_string(root.path().join(CONF)).unwrap();
    nix_parse(&conf).unwrap();
    assert!(
        conf.contains("  nixos.containers.instances.web = {"),
        "{conf}"
    );
    assert!(!root.path().join("etc/nixos/nspawn-containers.nix").exists());
    let baks = conf_backups(root.path());
    assert_eq!(baks.len(), 1);
    assert_eq!(std::fs::read(&baks[0]).unwrap(), original);
    drop(t);
    // And back, at the terminal: the question says the definitions go back; the file is the
    // original, the legacy containers as they were.
    let t = Tmux::start(root.path(), &stand_ins, &["--rollback", "db", "web"], &[]);
    let s = t.wait_for("Roll back db, web?");
    assert!(
        s.contains("puts the old definitions back into /etc/nixos/configuration.nix"),
        "{s}"
    );
    t.keys(&["y", "Enter"]);
    let s = t.wait_for("restored /etc/nixos/configuration.nix from its backup");
    assert_eq!(t.exit_code(), 0, "{s}");
    assert_eq!(std::fs::read(root.path().join(CONF)).unwrap(), original);
    assert_same(
        "legacy after rewrite and rollback",
        &legacy_before,
        &legacy_snapshot(root.path()),
    );
}

#[test]
fn declining_the_rewrite_leaves_the_host_files_and_uses_the_output_file() {
    if !have_tmux() || !is_root() {
        eprintln!("skipped: needs tmux and root");
        return;
    }
    let root = TestRoot::fixture("example");
    let stand_ins = StandIns::new(&[]);
    let original = std::fs::read(root.path().join(CONF)).unwrap();
    let t = rewrite_run(root.path(), &stand_ins, &[("NO_COLOR", "1")]);
    t.keys(&["Enter"]); // the default is no
    let s = t.wait_for("Carry this out now?");
    assert!(
        s.contains(
            "Not rewritten: the host's Nix files stay as they are, and the new definitions go to \
             /etc/nixos/nspawn-containers.nix instead (as without --rewrite)."
        ),
        "{s}"
    );
    assert!(
        s.contains("write the new definitions to /etc/nixos/nspawn-containers.nix"),
        "{s}"
    );
    assert!(
        !s.contains("rewrite /etc/nixos/configuration.nix in place"),
        "{s}"
    );
    t.keys(&["Enter"]);
    let s = t.wait_for("Next steps");
    assert!(matches!(t.exit_code(), 0 | 3), "{s}");
    assert_eq!(std::fs::read(root.path().join(CONF)).unwrap(), original);
    assert!(conf_backups(root.path()).is_empty());
    let nix = std::fs::read_to_string(root.path().join("etc/nixos/nspawn-containers.nix")).unwrap();
    assert!(
        nix.contains("instances.db") && nix.contains("instances.web"),
        "{nix}"
    );
    assert!(
        !t.screen_escaped().contains("\x1b[3"),
        "colours despite NO_COLOR"
    );
}

#[test]
fn ctrl_c_at_the_rewrite_question_writes_nothing() {
    if !have_tmux() || !is_root() {
        eprintln!("skipped: needs tmux and root");
        return;
    }
    let root = TestRoot::fixture("example");
    let stand_ins = StandIns::new(&[]);
    age_atimes(root.path());
    let before = snapshot(root.path());
    let t = rewrite_run(root.path(), &stand_ins, &[]);
    t.keys(&["C-c"]);
    let s = t.wait_for("Interrupted at a question: nothing was changed");
    assert_eq!(t.exit_code(), 130, "{s}");
    assert_same(
        "after Ctrl-C at the rewrite question",
        &before,
        &snapshot(root.path()),
    );
}

/// Stand-ins for the running machine's systemd: `systemctl is-active UNIT` answers from
/// `active/UNIT`; a unit with a number N in `later/UNIT` becomes active at its N-th question
/// (someone started it during the run); `systemctl stop UNIT` makes it inactive. Every call is
/// logged to `calls.log`.
struct LiveStandIns {
    dir: tempfile::TempDir,
}

impl LiveStandIns {
    fn new(active: &[&str], later: &[(&str, u32)]) -> LiveStandIns {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir_all(d.join("active")).unwrap();
        std::fs::create_dir_all(d.join("later")).unwrap();
        for u in active {
            std::fs::write(d.join("active").join(u), "").unwrap();
        }
        for (u, n) in later {
            std::fs::write(d.join("later").join(u), n.to_string()).unwrap();
        }
        let script = format!(
            r#"#!/bin/sh
d='{}'
echo "$(basename "$0") $*" >> "$d/calls.log"
if [ "$1" = is-active ]; then
  if [ -f "$d/later/$2" ]; then
    n=$(( $(cat "$d/later/$2") - 1 ))
    if [ "$n" -le 0 ]; then rm -f "$d/later/$2"; : > "$d/active/$2"; else echo "$n" > "$d/later/$2"; fi
  fi
  if [ -e "$d/active/$2" ]; then echo active; exit 0; fi
  echo inactive; exit 3
fi
if [ "$1" = stop ]; then rm -f "$d/active/$2"; fi
exit 0
"#,
            d.display()
        );
        for prog in ["systemctl", "machinectl"] {
            let p = d.join(prog);
            std::fs::write(&p, &script).unwrap();
            std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o755))
                .unwrap();
        }
        LiveStandIns { dir }
    }

    fn calls(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.path().join("calls.log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }
}

/// `nixos-nspawn --root / migrate ARGS` on the test tree as the running machine: in a private
/// mount namespace, the tree (a mount of its own, as a real root is, so that the run's read-only
/// view of `/` works) gets this machine's /usr (read-only), /proc and /dev, the binary's
/// and the stand-ins' directories at their own paths, and the run is chrooted into it. Nothing
/// outside the tree is visible to the run, and the mounts end with it.
fn start_live(root: &Path, si: &LiveStandIns, args: &[&str]) -> (Tmux, tempfile::TempDir) {
    let (dir, file) = live_script(root, si, args);
    let t = Tmux::spawn(&format!(
        "unshare -m --propagation private sh '{}'",
        file.display()
    ));
    (t, dir)
}

/// The script of [`start_live`] (in the returned directory).
fn live_script(root: &Path, si: &LiveStandIns, args: &[&str]) -> (tempfile::TempDir, PathBuf) {
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_nixos-nspawn"));
    let bindir = bin.parent().unwrap();
    let sid = si.dir.path();
    let mut script = format!(
        "set -e\nR='{r}'\n\
         mount --bind \"$R\" \"$R\"\n\
         mkdir -p \"$R/usr\" \"$R/proc\" \"$R/dev\" \"$R/tmp\" \"$R{b}\" \"$R{s}\"\n\
         mount --bind /usr \"$R/usr\"\nmount -o remount,bind,ro \"$R/usr\"\n\
         for l in bin lib lib64 sbin; do if [ -L \"/$l\" ] && [ ! -e \"$R/$l\" ]; then ln -s \"usr/$l\" \"$R/$l\"; fi; done\n\
         mount -t proc proc \"$R/proc\"\nmount --rbind /dev \"$R/dev\"\n\
         mount --bind '{b}' \"$R{b}\"\nmount -o remount,bind,ro \"$R{b}\"\n\
         mount --bind '{s}' \"$R{s}\"\n\
         exec chroot \"$R\" /usr/bin/env PATH='{s}:/usr/bin' TERM=xterm-256color NO_COLOR=1 '{bin}' --root / migrate",
        r = root.display(),
        b = bindir.display(),
        s = sid.display(),
        bin = bin.display()
    );
    for a in args {
        script.push_str(&format!(" '{a}'"));
    }
    script.push('\n');
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("live.sh");
    std::fs::write(&file, script).unwrap();
    (dir, file)
}

/// The mounts of [`start_live`] were private to the run: in our namespace the tree's /usr and
/// /dev are empty directories (so removing the tree cannot reach the real ones).
fn assert_unmounted(root: &Path) {
    for d in ["usr", "dev", "proc"] {
        let p = root.join(d);
        if p.is_dir() && std::fs::read_dir(&p).unwrap().next().is_some() {
            // Never let the tree's removal walk into this machine's /usr or /dev.
            std::process::abort();
        }
    }
}

#[test]
fn stop_is_asked_and_done_per_container_on_the_running_machine() {
    if !have_tmux() || !is_root() || !have_tool("unshare", "util-linux") {
        eprintln!("skipped: needs tmux, unshare and root");
        return;
    }
    let root = TestRoot::fixture("example");
    age_atimes(root.path());
    let legacy_before = legacy_snapshot(root.path());
    // db runs; web does not (yet).
    let si = LiveStandIns::new(&["container@db.service"], &[]);
    let (t, _script) = start_live(
        root.path(),
        &si,
        &["--no-eval", "--only", "db", "--only", "web"],
    );
    let s = t.wait_for("Migrate db now?");
    assert!(s.contains("active"), "db's NOTE shows it runs:\n{s}");
    t.keys(&["y", "Enter"]);
    t.wait_for("container@db.service is active. Stop it now?");
    t.keys(&["y", "Enter"]);
    t.wait_for("How should the state of db come across?");
    t.keys(&["Enter"]);
    t.wait_for("Migrate web now?");
    t.keys(&["y", "Enter"]);
    let s = t.wait_for("How should the state of web come across?");
    // web does not run: it is not asked about, and its stop was never agreed to.
    assert_eq!(s.matches("Stop it now?").count(), 1, "{s}");
    t.keys(&["Enter"]);
    let s = t.wait_for("Carry this out now?");
    assert!(s.contains("db: stop it, copy the state"), "{s}");
    assert!(s.contains("web: copy the state"), "{s}");
    t.keys(&["Enter"]);
    let s = t.wait_for("Next steps");
    let code = t.exit_code();
    assert!(matches!(code, 0 | 3), "exit {code}\n{s}");
    drop(t);
    assert_unmounted(root.path());
    let calls = si.calls();
    assert!(
        calls
            .iter()
            .any(|c| c == "systemctl stop container@db.service"),
        "{calls:#?}"
    );
    assert!(
        !calls.iter().any(|c| c.contains("stop container@web")),
        "{calls:#?}"
    );
    assert!(root.path().join("var/lib/machines/db").is_dir());
    assert!(root.path().join("var/lib/machines/web").is_dir());
    assert_same(
        "legacy after a live migration",
        &legacy_before,
        &legacy_snapshot(root.path()),
    );
}

#[test]
fn a_yes_to_stop_one_container_never_stops_another() {
    if !have_tmux() || !is_root() || !have_tool("unshare", "util-linux") {
        eprintln!("skipped: needs tmux, unshare and root");
        return;
    }
    let root = TestRoot::fixture("example");
    // db runs; web is stopped when asked about, and started by someone else right after (its
    // second question): nobody agreed to stop web.
    let si = LiveStandIns::new(&["container@db.service"], &[("container@web.service", 2)]);
    let (t, _script) = start_live(
        root.path(),
        &si,
        &["--no-eval", "--only", "db", "--only", "web"],
    );
    t.wait_for("Migrate db now?");
    t.keys(&["y", "Enter"]);
    t.wait_for("Stop it now?");
    t.keys(&["y", "Enter"]);
    t.wait_for("How should the state of db come across?");
    t.keys(&["Enter"]);
    t.wait_for("Migrate web now?");
    t.keys(&["y", "Enter"]);
    t.wait_for("How should the state of web come across?");
    t.keys(&["Enter"]);
    t.wait_for("Carry this out now?");
    t.keys(&["Enter"]);
    // web was started by someone else after its question: nobody agreed to stop it, so it is
    // not stopped and not copied; db (agreed) is.
    let s = t.wait_for("web: failed");
    assert_eq!(t.exit_code(), 1, "{s}");
    let s = t.screen();
    assert!(
        s.contains("container@web.service is active (it was started during the migration); stop it and re-run"),
        "{s}"
    );
    drop(t);
    assert_unmounted(root.path());
    let calls = si.calls();
    assert!(
        calls
            .iter()
            .any(|c| c == "systemctl stop container@db.service"),
        "{calls:#?}"
    );
    assert!(
        !calls.iter().any(|c| c.contains("stop container@web")),
        "web was stopped without being asked: {calls:#?}"
    );
    assert!(root.path().join("var/lib/machines/db").is_dir());
    assert!(!root.path().join("var/lib/machines/web").exists());
}

#[test]
fn yes_on_the_running_machine_reads_through_its_view_and_writes() {
    if !is_root() || !have_tool("unshare", "util-linux") {
        eprintln!("skipped: needs unshare and root");
        return;
    }
    // `--root /` with --yes, no terminal: the host is read through the read-only, noatime view
    // (no access time changes), which is lifted before the first write.
    let root = TestRoot::fixture("example");
    age_atimes(root.path());
    let legacy_before = legacy_snapshot(root.path());
    let si = LiveStandIns::new(&[], &[]);
    let (_dir, file) = live_script(root.path(), &si, &["--no-eval", "--yes", "--only", "db"]);
    let out = Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh"])
        .arg(&file)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert_unmounted(root.path());
    assert!(
        matches!(out.status.code(), Some(0 | 3)),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(root.path().join("var/lib/machines/db/etc").is_dir());
    assert!(
        root.path()
            .join("etc/nixos/nspawn-containers.nix")
            .is_file()
    );
    assert!(
        si.calls()
            .iter()
            .any(|c| c == "systemctl is-active container@db.service"),
        "the running machine's systemd was asked: {:?}",
        si.calls()
    );
    assert_same(
        "legacy after --yes on the running machine",
        &legacy_before,
        &legacy_snapshot(root.path()),
    );
}

/// A tmpfs mounted over a directory for the life of a test.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path) -> Tmpfs {
        std::fs::create_dir_all(at).unwrap();
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "nn-test", at.to_str().unwrap()])
            .status()
            .unwrap();
        assert!(st.success(), "mount tmpfs on {}", at.display());
        Tmpfs(at.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// The state question does not offer a move that would be refused: with /var/lib/machines on
/// another filesystem, "move" says why it is not possible, choosing it anyway explains and
/// asks again, and the plan then copies.
#[test]
fn a_move_that_would_be_refused_is_not_offered_as_possible() {
    if !have_tmux() || !is_root() {
        eprintln!("skipped: needs tmux and root");
        return;
    }
    let root = TestRoot::fixture("example");
    let _machines = Tmpfs::mount(&root.path().join("var/lib/machines"));
    let stand_ins = StandIns::new(&[]);
    let t = Tmux::start(
        root.path(),
        &stand_ins,
        &["--only", "db"],
        &[("NO_COLOR", "1")],
    );
    t.wait_for("Migrate db now?");
    t.keys(&["y", "Enter"]);
    let s = t.wait_for("How should the state of db come across?");
    assert!(
        s.contains("move (not possible here: they are on different filesystems"),
        "{s}"
    );
    t.keys(&["Down", "Enter"]);
    let s = t.wait_for("db cannot be moved: they are on different filesystems");
    assert!(s.contains("Choose copy"), "{s}");
    t.wait_for_n("How should the state of db come across?", 2);
    t.keys(&["Enter"]);
    let s = t.wait_for("Carry this out now?");
    assert!(s.contains("db: copy the state"), "{s}");
    t.keys(&["n", "Enter"]);
    t.wait_for("Nothing was changed.");
    assert!(!root.path().join("var/lib/machines/db").exists());
}
