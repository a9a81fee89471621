//! Every value that reaches a `.nspawn` file, a networkd unit or the service drop-in goes through
//! one writer (src/render/unit.rs) that refuses control characters and escapes what systemd
//! interprets (issue 7, items 2 and 7). Checked end to end through the CLI on hostile `.conf`
//! files, against the real `systemd-nspawn` parser (and a real container where root), against
//! `systemd-analyze verify`, and against the NixOS module's own bind rendering.
#![allow(clippy::unwrap_used)]

mod util;

use nixos_nspawn::render::unit::{File, bind_spec, split_bind_spec, value};
use std::path::Path;
use std::process::{Command, Stdio};
use util::*;

/// A host with one imperative container `evil` whose `.conf` carries `flags` (raw bytes).
fn hostile_root(flags: &[u8]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::create_dir_all(root.join("etc/nixos-containers")).unwrap();
    std::fs::create_dir_all(root.join("etc/nixos")).unwrap();
    std::fs::create_dir_all(root.join("var/lib/nixos-containers/evil/etc")).unwrap();
    std::fs::write(
        root.join("var/lib/nixos-containers/evil/etc/os-release"),
        "ID=nixos\n",
    )
    .unwrap();
    let mut conf = b"PRIVATE_NETWORK=0\nAUTO_START=0\nEXTRA_NSPAWN_FLAGS=\"".to_vec();
    conf.extend_from_slice(flags);
    conf.extend_from_slice(b"\"\n");
    std::fs::write(root.join("etc/nixos-containers/evil.conf"), conf).unwrap();
    dir
}

/// The issue's two payloads, plus an escaped `:` in a bind path so that a drop-in is written.
const INJECTION: &[u8] = b"--property=CPUQuota=50%\0ExecStartPre=/x --setenv=A=1\0[Files]\0Bind=/:/hostroot --bind=/srv/a\\:b:/c";

/// systemd's line reader: NUL, CR and LF all end a line. Returns the `Key=value` lines (comments,
/// blank lines and section headers dropped) as (section, key, value).
fn systemd_lines(text: &str) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    let mut section = String::new();
    for l in text.split(['\n', '\r', '\0']) {
        let l = l.trim();
        if l.is_empty() || l.starts_with('#') || l.starts_with(';') {
            continue;
        }
        if l.starts_with('[') && l.ends_with(']') {
            section = l[1..l.len() - 1].to_string();
            continue;
        }
        let (k, v) = l.split_once('=').unwrap_or((l, ""));
        out.push((section.clone(), k.trim().to_string(), v.trim().to_string()));
    }
    out
}

fn assert_not_injected(what: &str, text: &str) {
    for (sec, k, v) in systemd_lines(text) {
        assert!(
            !(k == "ExecStartPre" || (sec == "Files" && v.contains("/hostroot"))),
            "{what}: injected line [{sec}] {k}={v} in\n{text}"
        );
    }
    assert!(
        !text.contains(['\0', '\r']),
        "{what}: control character in\n{text:?}"
    );
}

/// `systemd-analyze verify` on a drop-in for `systemd-nspawn@NAME.service`: its complaints
/// about the drop-in (rc stays 0 for warnings, so stderr is what counts).
fn analyze_dropin(name: &str, dropin: &str) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    let unit = format!("systemd-nspawn@{name}.service");
    std::fs::create_dir_all(dir.path().join(format!("{unit}.d"))).unwrap();
    std::fs::copy(
        "/lib/systemd/system/systemd-nspawn@.service",
        dir.path().join(&unit),
    )
    .unwrap();
    let conf = dir.path().join(format!("{unit}.d/override.conf"));
    std::fs::write(&conf, dropin).unwrap();
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(dir.path().join(&unit))
        .env("SYSTEMD_UNIT_PATH", format!("{}:", dir.path().display()))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let prefix = conf.display().to_string();
    String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter(|l| l.starts_with(&prefix))
        .map(str::to_string)
        .collect()
}

#[test]
fn nul_in_conf_flags_injects_nothing_in_the_dry_run_and_is_reported() {
    let dir = hostile_root(INJECTION);
    let out = nixos_nspawn(dir.path(), &["migrate", "--dry-run", "--json"]);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    let report = json(&out);
    let c = &report["containers"][0];
    assert_eq!(c["name"], "evil");
    let nspawn = c["nspawn"].as_str().unwrap();
    let dropin = c["dropin"].as_str().unwrap_or("");
    assert_not_injected(".nspawn", nspawn);
    assert_not_injected("drop-in", dropin);
    assert_not_injected("nix", c["nix"].as_str().unwrap());
    assert!(
        nspawn.contains("Bind=/srv/a\\:b:/c\n"),
        "the escaped bind is kept:\n{nspawn}"
    );
    let refused: Vec<&serde_json::Value> = c["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|w| w["code"] == "unit-value-refused")
        .collect();
    assert_eq!(refused.len(), 2, "{}", c["warnings"]);
    let text = serde_json::to_string(&refused).unwrap();
    for needle in [
        "containers.evil.extraFlags",
        "CPUQuota=",
        "Environment=",
        "NUL byte",
        "50%\\\\0ExecStartPre=/x",
        "Fix:",
    ] {
        assert!(text.contains(needle), "{needle} missing in {text}");
    }
    // Nothing claims the refused values were applied.
    assert!(!c["translated"].to_string().contains("ExecStartPre"));
    if have_tool("systemd-nspawn", "systemd-container") {
        assert_eq!(nspawn_parse("evil", nspawn), Ok(()));
    }
    if have_tool("systemd-analyze", "systemd") && !dropin.is_empty() {
        assert_eq!(analyze_dropin("evil", dropin), Vec::<String>::new());
    }
}

#[test]
fn nul_in_conf_flags_injects_nothing_in_the_written_files() {
    if !is_root() {
        eprintln!("skipped: needs root (the state copy keeps ownership)");
        return;
    }
    let dir = hostile_root(INJECTION);
    let stand_ins = StandIns::new(&[]);
    let out = Command::new(env!("CARGO_BIN_EXE_nixos-nspawn"))
        .arg("--root")
        .arg(dir.path())
        .args(["migrate", "--yes", "--json"])
        .env("PATH", stand_ins.path_env())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = json(&out);
    assert!(
        report.to_string().contains("unit-value-refused"),
        "{report}"
    );
    let in_root = |p: std::path::PathBuf| dir.path().join(p.strip_prefix("/").unwrap());
    let nspawn = std::fs::read_to_string(in_root(nixos_nspawn::plan::nspawn_file("evil"))).unwrap();
    assert_not_injected("written .nspawn", &nspawn);
    assert!(nspawn.contains("Bind=/srv/a\\:b:/c\n"), "{nspawn}");
    // The escaped bind gives the drop-in a RequiresMountsFor=, so there is one.
    let dropin = std::fs::read_to_string(in_root(nixos_nspawn::plan::dropin_file("evil"))).unwrap();
    assert!(dropin.contains("RequiresMountsFor=/srv/a:b\n"), "{dropin}");
    assert_not_injected("written drop-in", &dropin);
    let container_file =
        std::fs::read_to_string(in_root(nixos_nspawn::plan::container_file("evil"))).unwrap();
    assert_not_injected("written container file", &container_file);
    if have_tool("systemd-nspawn", "systemd-container") {
        assert_eq!(nspawn_parse("evil", &nspawn), Ok(()));
    }
    if have_tool("systemd-analyze", "systemd") {
        assert_eq!(analyze_dropin("evil", &dropin), Vec::<String>::new());
    }
}

/// Every C0 control character and DEL in an extraFlags value is refused; a CR (which bash does
/// not split on) in a declarative `extraFlags` string too.
#[test]
fn every_control_character_is_refused() {
    for c in (0u8..0x20).chain([0x7f]) {
        if matches!(c, b' ' | b'\t' | b'\n') {
            continue; // bash splits words there: no value holds them
        }
        let mut flags = b"--property=TasksMax=10".to_vec();
        flags.push(c);
        flags.extend_from_slice(b"ExecStartPre=/x");
        let dir = hostile_root(&flags);
        let out = nixos_nspawn(dir.path(), &["migrate", "--dry-run", "--json"]);
        let report = json(&out);
        let c0 = &report["containers"][0];
        assert_not_injected("drop-in", c0["dropin"].as_str().unwrap_or(""));
        assert!(
            c0["warnings"].to_string().contains("unit-value-refused"),
            "byte {c:#x}: {}",
            c0["warnings"]
        );
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("etc/nixos")).unwrap();
    std::fs::write(
        dir.path().join("etc/nixos/configuration.nix"),
        "{ containers.web = { config = { }; extraFlags = [ \"--property=CPUQuota=5%\\rExecStartPre=/x\" \"--setenv=B=1\\r[Files]\" ]; }; }\n",
    )
    .unwrap();
    let out = nixos_nspawn(dir.path(), &["migrate", "--dry-run", "--json"]);
    let report = json(&out);
    let c = &report["containers"][0];
    assert_not_injected(".nspawn", c["nspawn"].as_str().unwrap());
    let nix = c["nix"].as_str().unwrap();
    // Only the "needs a human" comments show it (escaped); no Nix value holds it.
    assert!(
        !nix.lines()
            .any(|l| !l.trim_start().starts_with('#') && l.contains("\\r")),
        "the CR reached a Nix value:\n{nix}"
    );
    assert_eq!(
        c["warnings"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|w| w["code"] == "unit-value-refused")
            .count(),
        2,
        "{}",
        c["warnings"]
    );
    assert_eq!(nix_parse(nix), Ok(()));
}

/// `Bind=/srv/a:b:/c` must be `Bind=/srv/a\:b:/c`: from a legacy `.conf` (already escaped), from
/// a declarative `hostPath` written with `\:` (legacy pasted it into `--bind=`), and from one
/// written with a bare `:` (legacy broke it; now it works, with a warning).
#[test]
fn colons_in_bind_paths_are_escaped() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("etc/nixos")).unwrap();
    std::fs::write(
        dir.path().join("etc/nixos/configuration.nix"),
        r#"{ containers.esc = { config = { }; bindMounts."/c" = { hostPath = "/srv/a\\:b"; isReadOnly = false; }; };
  containers.bare = { config = { }; bindMounts."/d" = { hostPath = "/srv/x:y"; }; }; }
"#,
    )
    .unwrap();
    let out = nixos_nspawn(dir.path(), &["migrate", "--dry-run", "--json"]);
    let report = json(&out);
    let by_name = |n: &str| {
        report["containers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == n)
            .unwrap()
            .clone()
    };
    let esc = by_name("esc");
    let nspawn = esc["nspawn"].as_str().unwrap();
    assert!(nspawn.contains("\nBind=/srv/a\\:b:/c\n"), "{nspawn}");
    assert!(
        esc["nix"]
            .as_str()
            .unwrap()
            .contains("hostPath = \"/srv/a:b\""),
        "{}",
        esc["nix"]
    );
    assert!(!esc["warnings"].to_string().contains("bind-path-colon"));
    let bare = by_name("bare");
    let nspawn = bare["nspawn"].as_str().unwrap();
    assert!(
        nspawn.contains("\nBindReadOnly=/srv/x\\:y:/d\n"),
        "{nspawn}"
    );
    assert!(
        bare["warnings"].to_string().contains("bind-path-colon"),
        "{}",
        bare["warnings"]
    );
    if have_tool("systemd-nspawn", "systemd-container") {
        assert_eq!(nspawn_parse("esc", esc["nspawn"].as_str().unwrap()), Ok(()));
        assert_eq!(nspawn_parse("bare", nspawn), Ok(()));
    }

    let conf = hostile_root(b"--bind=/srv/a\\:b:/c --bind-ro=/x\\\\y:/z");
    let out = nixos_nspawn(conf.path(), &["migrate", "--dry-run", "--json"]);
    let nspawn = json(&out)["containers"][0]["nspawn"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(nspawn.contains("\nBind=/srv/a\\:b:/c\n"), "{nspawn}");
}

/// The NixOS module renders a declarative `hostPath` with `:` or `\` exactly as the migrator's
/// preview does (nixos/lib/instance.nix `bindSpec`).
#[test]
fn module_bind_spec_equals_the_writer() {
    let lib = repo().join("../shared/nixpkgs/lib");
    if !lib.join("default.nix").exists() || !have_tool("nix-instantiate", "nix-bin") {
        eprintln!("skipped: needs ../shared/nixpkgs/lib and nix-instantiate");
        return;
    }
    let cases: &[(Option<&str>, &str, Option<&str>)] = &[
        (Some("/srv/a:b"), "/c", None),
        (Some("/srv/a\\b"), "/c:d", Some("rbind")),
        (None, "/m:n", None),
        (Some("/plain"), "/p", Some("norbind,idmap")),
        (Some("/pct%d and space"), "/q", None),
    ];
    let nix_str = |s: &str| nixos_nspawn::nixtext::string_literal(s);
    let items: Vec<String> = cases
        .iter()
        .map(|(h, m, o)| {
            format!(
                "{{ hostPath = {}; mountPoint = {}; options = {}; }}",
                h.map(nix_str).unwrap_or_else(|| "null".into()),
                nix_str(m),
                o.map(nix_str).unwrap_or_else(|| "null".into())
            )
        })
        .collect();
    let expr = format!(
        "map (import {}/nixos/lib/instance.nix {{ lib = import {}; }}).bindSpec [ {} ]",
        repo().display(),
        lib.display(),
        items.join(" ")
    );
    let out = Command::new("nix-instantiate")
        .args(["--eval", "--strict", "--json", "-E", &expr])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got: Vec<String> = serde_json::from_slice(&out.stdout).unwrap();
    let want: Vec<String> = cases.iter().map(|(h, m, o)| bind_spec(*h, m, *o)).collect();
    assert_eq!(got, want);
}

/// A real container sees what the writer meant: bind sources whose names hold `:` and `\`, and
/// environment values with spaces, quotes, backslashes and `%` (nspawn expands no specifiers).
#[test]
fn real_nspawn_reads_back_binds_and_environment() {
    if !is_root() || !have_tool("systemd-nspawn", "systemd-container") {
        eprintln!("skipped: needs root and systemd-nspawn");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let name = format!("uv{}", std::process::id());
    let rootfs = dir.path().join(&name);
    for d in [
        "bin", "usr/lib", "etc", "proc", "sys", "dev", "run", "tmp", "mnt",
    ] {
        std::fs::create_dir_all(rootfs.join(d)).unwrap();
    }
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .find(|p| Path::new(p).exists());
    let Some(busybox) = busybox else {
        eprintln!("skipped: busybox-static not installed");
        return;
    };
    std::fs::copy(busybox, rootfs.join("bin/busybox")).unwrap();
    for c in ["sh", "ls", "env"] {
        std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(c)).unwrap();
    }
    std::fs::write(rootfs.join("etc/os-release"), "ID=test\n").unwrap();
    std::fs::write(rootfs.join("etc/machine-id"), "").unwrap();
    let src = dir.path().join("src");
    let odd = [("a:b", "x"), ("c\\d", "y"), ("e:f\\:g", "z")];
    for (n, _) in odd {
        std::fs::create_dir_all(src.join(n)).unwrap();
        std::fs::write(src.join(n).join("MARK"), n).unwrap();
    }
    let env = [
        "S=one two",
        "Q=say \"hi\" 'there'",
        "B=back\\slash\\",
        "P=50% %H %%",
        "E=",
    ];
    let mut text = String::from("[Exec]\n");
    for e in env {
        text.push_str(&format!(
            "Environment={}\n",
            value(File::Nspawn, "Exec", "Environment", e).unwrap()
        ));
    }
    text.push_str("[Files]\n");
    for (n, mp) in odd {
        let host = src.join(n);
        let spec = bind_spec(Some(host.to_str().unwrap()), &format!("/mnt/{mp}"), None);
        assert_eq!(split_bind_spec(&spec).0, host.to_str().unwrap());
        text.push_str(&format!("BindReadOnly={spec}\n"));
    }
    std::fs::write(dir.path().join(format!("{name}.nspawn")), &text).unwrap();
    let out = Command::new("timeout")
        .arg("30")
        .arg("systemd-nspawn")
        .args([
            "--register=no",
            "--keep-unit",
            "-q",
            "--settings=trusted",
            "-D",
        ])
        .arg(&rootfs)
        .args([
            "/bin/sh",
            "-c",
            "env; cat /mnt/x/MARK; echo; cat /mnt/y/MARK; echo; cat /mnt/z/MARK; echo",
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}\n{stdout}\n{stderr}");
    assert!(
        !stderr.contains(".nspawn:"),
        "nspawn complained about\n{text}\n{stderr}"
    );
    for e in env {
        assert!(
            stdout.lines().any(|l| l == e),
            "{e:?} not seen in the container\n{text}\n{stdout}"
        );
    }
    for (n, _) in odd {
        assert!(stdout.lines().any(|l| l == n), "{n} not bound\n{stdout}");
    }
}

// ---------------------------------------------------------------------------------------------
// Property test: every renderer, hostile values, parsed back the way systemd parses.

/// A small deterministic generator (no extra crate): xorshift64.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    /// A string of 0–12 characters drawn mostly from what systemd gives meaning to.
    fn hostile(&mut self) -> String {
        const CHARS: &[char] = &[
            '\0', '\n', '\r', '\t', '\u{b}', '\u{1b}', '\u{7f}', '%', '%', ':', ':', '\\', '\\',
            '"', '\'', ' ', '[', ']', '=', '#', ';', 'a', 'b', '/', 'é', '\u{a0}', '$', '{',
        ];
        let n = self.below(13);
        (0..n).map(|_| CHARS[self.below(CHARS.len())]).collect()
    }
}

/// systemd's config reader: lines end at LF, CR or NUL; an odd number of trailing `\` joins
/// the next line (checked: `Environment=A=x\\` does not continue, `…\\\` does);
/// comments and blank lines are skipped; values are trimmed. (section, key, value) per line.
fn systemd_parse(text: &str) -> Vec<(String, String, String)> {
    let mut joined: Vec<String> = Vec::new();
    let mut cont = String::new();
    for l in text.split(['\n', '\r', '\0']) {
        let trailing = l.chars().rev().take_while(|c| *c == '\\').count();
        if trailing % 2 == 1
            && let Some(head) = l.strip_suffix('\\')
        {
            cont.push_str(head);
            cont.push(' ');
            continue;
        }
        cont.push_str(l);
        joined.push(std::mem::take(&mut cont));
    }
    if !cont.is_empty() {
        joined.push(cont);
    }
    systemd_lines(&joined.join("\n"))
}

/// `.nspawn` strv: `extract_first_word(EXTRACT_UNQUOTE|EXTRACT_RETAIN_ESCAPE)` over the value.
fn nspawn_words(v: &str) -> Option<Vec<String>> {
    let mut words = Vec::new();
    let mut cur: Option<String> = None;
    let mut quote: Option<char> = None;
    for c in v.chars() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => cur.get_or_insert_with(String::new).push(c),
            None if c == '"' || c == '\'' => {
                quote = Some(c);
                cur.get_or_insert_with(String::new);
            }
            None if matches!(c, ' ' | '\t' | '\n' | '\r') => {
                if let Some(w) = cur.take() {
                    words.push(w);
                }
            }
            None => cur.get_or_insert_with(String::new).push(c),
        }
    }
    if quote.is_some() {
        return None; // "Invalid syntax"
    }
    words.extend(cur);
    Some(words)
}

/// Unit-file specifier expansion for a value without specifiers: `%%` → `%`, any other `%`
/// is an error (or an expansion, which changes the value).
fn unit_unpercent(v: &str) -> Option<String> {
    let mut out = String::new();
    let mut chars = v.chars();
    while let Some(c) = chars.next() {
        if c == '%' && chars.next() != Some('%') {
            return None;
        }
        out.push(c);
    }
    Some(out)
}

/// What systemd makes of the written value of `key`, or `None` when it cannot be read back.
fn read_back(file: File, section: &str, key: &str, written: &str) -> Option<String> {
    match (file, section, key) {
        (File::Nspawn, "Exec", "Environment" | "Parameters") => {
            let w = nspawn_words(written)?;
            (w.len() == 1).then(|| w[0].clone())
        }
        (File::Unit, _, k) if !nixos_nspawn::render::unit::PERCENT_SYNTAX.contains(&k) => {
            unit_unpercent(written)
        }
        _ => Some(written.to_string()),
    }
}

/// One raw key through a renderer; returns what systemd reads and whether it was refused.
fn check_raw(file: File, section: &str, key: &str, v: &str) {
    use nixos_nspawn::translate::{NetworkdUnit, NspawnSettings, Side};
    let text = match file {
        File::Nspawn => {
            let mut s = NspawnSettings::default();
            let map = match section {
                "Exec" => &mut s.exec,
                "Files" => &mut s.files,
                _ => &mut s.network,
            };
            map.insert(key.to_string(), vec![v.to_string(), "tail".to_string()]);
            nixos_nspawn::render::nspawn::render(&s)
        }
        File::Networkd => nixos_nspawn::render::networkd::render(&NetworkdUnit {
            file_name: "x.network".into(),
            side: Side::Host,
            sections: vec![(
                section.to_string(),
                vec![
                    (key.to_string(), v.to_string()),
                    (key.to_string(), "tail".to_string()),
                ],
            )],
        }),
        File::Unit => {
            let mut i = instance();
            let map = if section == "Unit" {
                &mut i.dropin.unit
            } else {
                &mut i.dropin.service
            };
            map.insert(key.to_string(), vec![v.to_string(), "tail".to_string()]);
            nixos_nspawn::render::nspawn::dropin(&i)
        }
    };
    let lines = systemd_parse(&text);
    let ours: Vec<&(String, String, String)> = lines
        .iter()
        .filter(|(s, k, _)| s == section && k == key)
        .collect();
    // Nothing but our key (and, for .nspawn, nothing but its three sections) may appear.
    for (s, k, _) in &lines {
        assert!(
            s == section && k == key || file == File::Nspawn,
            "{file:?} {key}={v:?}: injected [{s}] {k} in\n{text:?}"
        );
        assert!(
            ["Exec", "Files", "Network", "Service", "Unit", "Match"].contains(&s.as_str()),
            "{file:?} {key}={v:?}: injected section [{s}] in\n{text:?}"
        );
    }
    let tail = ours.last().map(|l| l.2.as_str());
    assert_eq!(
        tail,
        Some("tail"),
        "{file:?} {key}={v:?}: the next value was swallowed in\n{text:?}"
    );
    match value(file, section, key, v) {
        Ok(_) => {
            assert_eq!(ours.len(), 2, "{file:?} {key}={v:?}\n{text:?}");
            let got = read_back(file, section, key, &ours[0].2);
            // systemd trims values: the writer refuses outer white space, so the rest must
            // come back exactly.
            assert_eq!(got.as_deref(), Some(v), "{file:?} {key}={v:?}\n{text:?}");
        }
        Err(_) => {
            assert_eq!(
                ours.len(),
                1,
                "refused {file:?} {key}={v:?} still written\n{text:?}"
            );
            assert!(text.contains("# nixos-nspawn: "), "{text:?}");
        }
    }
}

fn instance() -> nixos_nspawn::translate::Instance {
    use nixos_nspawn::translate::*;
    Instance {
        name: "p".into(),
        kind: nixos_nspawn::legacy::Kind::Imperative,
        state: StateMove {
            from: None,
            to: "/var/lib/machines/p".into(),
        },
        spec: InstanceSpec {
            system_config: None,
            nixpkgs: None,
            special_args: None,
            network: None,
            forward_ports: vec![],
            activation_strategy: ActivationStrategy::Restart,
            ephemeral: false,
            bind_mounts: vec![],
            bind_mounts_expr: None,
            auto_start: true,
            timeout_start_sec: None,
            restart: None,
            private_users: PrivateUsersSpec {
                mode: "no".into(),
                ownership: None,
            },
            condition: None,
        },
        raw_nspawn: NspawnSettings::default(),
        dropin: Dropin::default(),
        host_networks: vec![],
        guest_networks: vec![],
        applied: vec![],
        warnings: vec![],
        guest_files: Default::default(),
    }
}

#[test]
fn every_renderer_round_trips_or_refuses_hostile_values() {
    let keys: &[(File, &str, &str)] = &[
        (File::Nspawn, "Exec", "Environment"),
        (File::Nspawn, "Exec", "Hostname"),
        (File::Nspawn, "Exec", "SystemCallFilter"),
        (File::Nspawn, "Files", "TemporaryFileSystem"),
        (File::Nspawn, "Network", "MACVLAN"),
        (File::Unit, "Service", "Environment"),
        (File::Unit, "Service", "CPUQuota"),
        (File::Unit, "Service", "DeviceAllow"),
        (File::Unit, "Unit", "RequiresMountsFor"),
        (File::Unit, "Unit", "After"),
        (File::Networkd, "Network", "Address"),
        (File::Networkd, "Match", "Name"),
    ];
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    let mut refused = 0;
    for _ in 0..3000 {
        let (file, section, key) = keys[rng.below(keys.len())];
        let v = rng.hostile();
        if value(file, section, key, &v).is_err() {
            refused += 1;
        }
        check_raw(file, section, key, &v);
    }
    assert!(
        refused > 100 && refused < 2900,
        "{refused} refused: the generator is off"
    );

    // Bind mounts, as the module renders them: the paths come back through nspawn's syntax.
    for _ in 0..2000 {
        let host = format!("/{}", rng.hostile());
        let mp = format!("/{}", rng.hostile());
        let mut i = instance();
        i.spec.bind_mounts = vec![nixos_nspawn::legacy::BindMount {
            mount_point: mp.clone(),
            host_path: Some(host.clone()),
            is_read_only: false,
            options: None,
        }];
        let text = nixos_nspawn::render::nspawn::preview(&i);
        let binds: Vec<String> = systemd_parse(&text)
            .into_iter()
            .filter(|(s, k, v)| s == "Files" && k == "Bind" && !v.starts_with("/nix/var/nix/"))
            .map(|l| l.2)
            .collect();
        for (s, k, v) in systemd_parse(&text) {
            assert!(
                ["Exec", "Files", "Network"].contains(&s.as_str())
                    && !k.is_empty()
                    && !v.contains("ExecStart"),
                "{host:?}:{mp:?} injected [{s}] {k}={v}\n{text:?}"
            );
        }
        let spec = bind_spec(Some(&host), &mp, None);
        match value(File::Nspawn, "Files", "Bind", &spec) {
            Ok(_) => {
                assert_eq!(binds.len(), 1, "{host:?}:{mp:?}\n{text:?}");
                let (src, dst, opts) = split_bind_spec(&binds[0]);
                assert_eq!(
                    (src.as_str(), dst.as_deref(), opts),
                    (host.as_str(), Some(mp.as_str()), None)
                );
            }
            Err(_) => assert!(binds.is_empty(), "{host:?}:{mp:?}\n{text:?}"),
        }
    }
}

/// The Nix the migration emits carries the same escaped values the text preview shows (NixOS
/// copies `systemd.nspawn.*`, `serviceConfig` and networkd values into the files verbatim), and
/// leaves refused values out. Evaluated with the real nix-instantiate.
#[test]
fn emitted_nix_values_equal_the_written_text() {
    let lib = repo().join("../shared/nixpkgs/lib");
    if !lib.join("default.nix").exists() || !have_tool("nix-instantiate", "nix-bin") {
        eprintln!("skipped: needs ../shared/nixpkgs/lib and nix-instantiate");
        return;
    }
    let mut rng = Rng(0x1234_5678_9abc_def1);
    let mut i = instance();
    let values: Vec<String> = (0..60).map(|_| rng.hostile()).collect();
    i.raw_nspawn
        .exec
        .insert("Environment".into(), values.clone());
    i.dropin
        .service
        .insert("Environment".into(), values.clone());
    i.dropin.service.insert("CPUQuota".into(), values.clone());
    i.host_networks.push(nixos_nspawn::translate::NetworkdUnit {
        file_name: "30-x.network".into(),
        side: nixos_nspawn::translate::Side::Host,
        sections: vec![(
            "Network".into(),
            values
                .iter()
                .map(|v| ("Address".to_string(), v.clone()))
                .collect(),
        )],
    });
    let snippet = nixos_nspawn::render::nix::instance_snippet(&i);
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("snippet.nix");
    std::fs::write(&f, &snippet).unwrap();
    let expr = format!(
        "let m = import {} {{ config = {{ }}; lib = import {}; pkgs = {{ }}; }}; in \
         {{ nspawn = m.systemd.nspawn.p.execConfig.Environment or [ ]; \
            env = m.systemd.services.\"systemd-nspawn@p\".serviceConfig.Environment or [ ]; \
            cpu = m.systemd.services.\"systemd-nspawn@p\".serviceConfig.CPUQuota or [ ]; \
            addr = m.systemd.network.networks.\"30-x\".networkConfig.Address or [ ]; }}",
        f.display(),
        lib.display()
    );
    let out = Command::new("nix-instantiate")
        .args(["--eval", "--strict", "--json", "-E", &expr])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}\n{snippet}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let list = |v: &serde_json::Value| -> Vec<String> {
        match v {
            serde_json::Value::String(s) => vec![s.clone()],
            serde_json::Value::Array(a) => {
                a.iter().map(|x| x.as_str().unwrap().to_string()).collect()
            }
            _ => panic!("{v}"),
        }
    };
    for (name, file, section, key) in [
        ("nspawn", File::Nspawn, "Exec", "Environment"),
        ("env", File::Unit, "Service", "Environment"),
        ("cpu", File::Unit, "Service", "CPUQuota"),
        ("addr", File::Networkd, "Network", "Address"),
    ] {
        let want: Vec<String> = values
            .iter()
            .filter_map(|v| value(file, section, key, v).ok())
            .collect();
        assert!(!want.is_empty() && want.len() < values.len());
        let mut got = list(&got[name]);
        let mut want = want;
        // Networkd values are grouped per key (order kept); compare as multisets to be safe.
        got.sort();
        want.sort();
        assert_eq!(got, want, "{name}");
    }
}

/// Control characters in every `.conf` variable that can reach a generated file: no generated
/// file (`.nspawn`, drop-in, networkd units, Nix) carries an injected line or the raw character;
/// checked with systemd-nspawn's parser too.
#[test]
fn control_characters_in_every_conf_variable_inject_nothing() {
    let base: &[(&str, &str)] = &[
        ("PRIVATE_NETWORK", "1"),
        ("HOST_ADDRESS", "10.231.0.1"),
        ("LOCAL_ADDRESS", "10.231.0.2"),
        ("HOST_ADDRESS6", "fc00::1"),
        ("LOCAL_ADDRESS6", "fc00::2"),
        ("HOST_BRIDGE", ""),
        ("HOST_PORT", "tcp:8080:80"),
        ("INTERFACES", "eth1"),
        ("MACVLANS", "eth2"),
        ("LOCAL_MAC_ADDRESS", "02:00:00:00:00:01"),
        ("PRIVATE_USERS", "no"),
        (
            "SYSTEM_PATH",
            "/nix/store/0hqa7vqsbwm1j3sxb1ax3sxm7b5w5w3d-nixos-system-x",
        ),
        ("EXTRA_NSPAWN_FLAGS", "--setenv=A=1"),
        ("AUTO_START", "1"),
        ("NETWORK_NAMESPACE_PATH", ""),
    ];
    for (var, _) in base {
        for payload in ["\0", "\r", "\x1b", "\x0b"] {
            let mut conf = Vec::new();
            for (k, v) in base {
                let v = if k == var {
                    let mid = v.len() / 2;
                    format!("{}{payload}ExecStartPre=/x{}", &v[..mid], &v[mid..])
                } else {
                    v.to_string()
                };
                conf.extend_from_slice(format!("{k}=\"{v}\"\n").as_bytes());
            }
            let dir = tempfile::tempdir().unwrap();
            std::fs::create_dir_all(dir.path().join("etc/nixos-containers")).unwrap();
            std::fs::write(dir.path().join("etc/nixos-containers/c.conf"), &conf).unwrap();
            let out = nixos_nspawn(dir.path(), &["migrate", "--dry-run", "--json"]);
            assert!(
                matches!(out.status.code(), Some(0 | 1 | 3)),
                "{var} {payload:?}: {out:?}"
            );
            let report = json(&out);
            let Some(c) = report["containers"].as_array().unwrap().first() else {
                continue; // the file was not read as a container (reported as a problem)
            };
            let what = format!("{var} with {payload:?}");
            assert_not_injected(&format!("{what}: .nspawn"), c["nspawn"].as_str().unwrap());
            assert_not_injected(
                &format!("{what}: drop-in"),
                c["dropin"].as_str().unwrap_or(""),
            );
            for (f, t) in c["networkd"].as_object().unwrap() {
                assert_not_injected(&format!("{what}: {f}"), t.as_str().unwrap());
            }
            let nix = c["nix"].as_str().unwrap();
            for l in nix.lines().filter(|l| !l.trim_start().starts_with('#')) {
                assert!(
                    !l.contains(['\0', '\r', '\x1b', '\x0b']),
                    "{what}: raw control character in the Nix: {l:?}"
                );
            }
            if have_tool("systemd-nspawn", "systemd-container") {
                assert_eq!(
                    nspawn_parse("c", c["nspawn"].as_str().unwrap()),
                    Ok(()),
                    "{what}"
                );
            }
        }
    }
}

/// Control characters in every declarative Nix string that can reach a generated file.
#[test]
fn control_characters_in_every_nix_string_inject_nothing() {
    // (option text with @ where the payload goes)
    let options: &[&str] = &[
        "privateNetwork = true; hostAddress = \"10.231.0.1@\"; localAddress = \"10.231.0.2\";",
        "privateNetwork = true; hostAddress = \"10.231.0.1\"; localAddress = \"10.231.0.2@\";",
        "privateNetwork = true; hostAddress6 = \"fc00::1@\"; localAddress6 = \"fc00::2\";",
        "privateNetwork = true; hostBridge = \"br0@\"; localAddress = \"10.231.0.2/24\";",
        "privateNetwork = true; interfaces = [ \"eth1@\" ];",
        "privateNetwork = true; macvlans = [ \"eth2@\" ];",
        "bindMounts.\"/mnt\" = { hostPath = \"/srv@\"; };",
        "bindMounts.\"/mnt@\" = { hostPath = \"/srv\"; };",
        "allowedDevices = [ { node = \"/dev/net/tun@\"; modifier = \"rw\"; } ];",
        "allowedDevices = [ { node = \"/dev/net/tun\"; modifier = \"rw@\"; } ];",
        "tmpfs = [ \"/tmp/x@\" ];",
        "timeoutStartSec = \"1min@\";",
        "extraFlags = [ \"--setenv=A=1@\" ];",
        "extraFlags = [ \"--property=TasksMax=5@\" ];",
        "extraFlags = [ \"--hostname=h@\" ];",
        "additionalCapabilities = [ \"CAP_NET_ADMIN@\" ];",
        "privateNetwork = true; hostAddress = \"10.231.0.1\"; localAddress = \"10.231.0.2\"; forwardPorts = [ { protocol = \"tcp@\"; hostPort = 8080; containerPort = 80; } ];",
        "privateNetwork = true; localMacAddress = \"02:00:00:00:00:01@\";",
        "networkNamespace = \"/run/netns/x@\";",
    ];
    for opt in options {
        for payload in ["\\r", "\\u001b", "\\u000b", "\\n"] {
            let o = opt.replace('@', &format!("{payload}ExecStartPre=/x"));
            // Nix strings spell control characters as escapes only for \n \r \t; others are raw.
            let o = o.replace("\\u001b", "\u{1b}").replace("\\u000b", "\u{b}");
            let dir = tempfile::tempdir().unwrap();
            std::fs::create_dir_all(dir.path().join("etc/nixos")).unwrap();
            std::fs::write(
                dir.path().join("etc/nixos/configuration.nix"),
                format!("{{ containers.c = {{ config = {{ }}; {o} }}; }}\n"),
            )
            .unwrap();
            let out = nixos_nspawn(dir.path(), &["migrate", "--dry-run", "--json"]);
            let what = format!("{opt} with {payload}");
            assert!(
                matches!(out.status.code(), Some(0 | 1 | 3)),
                "{what}: {out:?}"
            );
            let report = json(&out);
            let Some(c) = report["containers"].as_array().unwrap().first() else {
                panic!("{what}: no container\n{report}");
            };
            assert_not_injected(&format!("{what}: .nspawn"), c["nspawn"].as_str().unwrap());
            assert_not_injected(
                &format!("{what}: drop-in"),
                c["dropin"].as_str().unwrap_or(""),
            );
            for (f, t) in c["networkd"].as_object().unwrap() {
                assert_not_injected(&format!("{what}: {f}"), t.as_str().unwrap());
                assert!(!t.as_str().unwrap().contains('\x1b'), "{what}: {f}");
            }
            let nix = c["nix"].as_str().unwrap();
            for l in nix.lines().filter(|l| !l.trim_start().starts_with('#')) {
                assert!(
                    !l.contains(['\0', '\r', '\x1b', '\x0b']),
                    "{what}: raw control character in the Nix: {l:?}"
                );
            }
            // What NixOS copies into the files (systemd.*) and what the module renders from
            // (the instance options): evaluated, no string holds a control character.
            if let Some(vals) = evaluated_unit_values(nix) {
                assert!(
                    !vals.chars().any(|ch| ch.is_control()),
                    "{what}: a control character reaches NixOS:\n{vals:?}"
                );
            }
            let nspawn = c["nspawn"].as_str().unwrap();
            assert!(
                !nspawn.contains('\x1b') && !nspawn.contains('\x0b'),
                "{what}:\n{nspawn:?}"
            );
            if have_tool("systemd-nspawn", "systemd-container") {
                assert_eq!(nspawn_parse("c", nspawn), Ok(()), "{what}");
            }
        }
    }
}

/// Every string under `systemd.*` and `nixos.containers.instances.*` (but `system-config`) of
/// an emitted snippet, evaluated by nix-instantiate, as JSON text; `None` when nixpkgs' lib or
/// nix-instantiate is not there.
fn evaluated_unit_values(snippet: &str) -> Option<String> {
    let lib = repo().join("../shared/nixpkgs/lib");
    if !lib.join("default.nix").exists() || !have_tool("nix-instantiate", "nix-bin") {
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("snippet.nix");
    std::fs::write(&f, snippet).unwrap();
    let expr = format!(
        "let m = import {} {{ config = {{ }}; lib = import {}; pkgs = {{ }}; }}; in \
         {{ systemd = m.systemd or {{ }}; \
            instances = builtins.mapAttrs (_: i: removeAttrs i [ \"system-config\" ]) (m.nixos.containers.instances or {{ }}); }}",
        f.display(),
        lib.display()
    );
    let out = Command::new("nix-instantiate")
        .args(["--eval", "--strict", "--json", "-E", &expr])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}\n{snippet}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut all = String::new();
    fn strings(v: &serde_json::Value, out: &mut String) {
        match v {
            serde_json::Value::String(s) => {
                out.push_str(s);
                out.push(' ');
            }
            serde_json::Value::Array(a) => a.iter().for_each(|x| strings(x, out)),
            serde_json::Value::Object(m) => m.values().for_each(|x| strings(x, out)),
            _ => {}
        }
    }
    strings(&v, &mut all);
    Some(all)
}
