//! The generated `container@NAME.service` unit and its start script.
//!
//! Some options never reach the `.conf` file: they are baked into the unit
//! (`TimeoutStartSec=`, `DeviceAllow=`, `Environment="root=…"`, `X-RestartIfChanged=`) or into
//! the store script its `ExecStart=` runs (`--capability="…"`, `--tmpfs=…`, `--ephemeral`,
//! `--network-veth-extra=…`). This module reads them back. It is pure: `discover` reads the
//! files (the script only when its store path exists under the host root).
//!
//! The start script was rendered by Nix string interpolation without escaping, so its text is
//! not trusted: an `additionalCapabilities` item may close the quote and add flags of its own
//! (legacy reference §6, pattern 11). The raw text between `--capability="` and the closing
//! quote is split on `,` and kept verbatim; the translator decides what to make of it.

use crate::legacy::model::{Origin, SourceFacts, SourceKind, Value};
use crate::warnings::{Category, Warning, WarningSpec};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub const UNIT_MALFORMED_LINE: WarningSpec = WarningSpec {
    code: "unit-malformed-line",
    category: Category::NeedsHuman,
    summary: "a line of a container@NAME.service unit is not valid unit-file syntax; systemd ignores it",
};
pub const UNIT_SCRIPT_UNREADABLE: WarningSpec = WarningSpec {
    code: "unit-script-unreadable",
    category: Category::NeedsHuman,
    summary: "the start script of a container@NAME.service unit is missing, so capabilities, tmpfs and extra veths are unknown",
};
pub const UNIT_TUN_AMBIGUOUS: WarningSpec = WarningSpec {
    code: "unit-tun-ambiguous",
    category: Category::ChangedMeaning,
    summary: "a unit allows /dev/net/tun without CAP_NET_ADMIN: it may come from allowedDevices or from privateUsers",
};

/// Warning codes owned by this reader.
pub const WARNINGS: &[&WarningSpec] = &[
    &UNIT_MALFORMED_LINE,
    &UNIT_SCRIPT_UNREADABLE,
    &UNIT_TUN_AMBIGUOUS,
];

/// One `Key=Value` of a unit file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnitEntry {
    pub section: String,
    pub key: String,
    pub value: String,
    /// 1-based line where the entry starts.
    pub line: usize,
}

/// A unit file as a list of entries, in order; repeated keys are kept.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UnitFile {
    pub entries: Vec<UnitEntry>,
    /// `(line, message)` for lines systemd would ignore.
    pub problems: Vec<(usize, String)>,
}

impl UnitFile {
    /// All values of `section.key`, honouring systemd's "empty assignment resets the list".
    pub fn values(&self, section: &str, key: &str) -> Vec<&UnitEntry> {
        let mut out = Vec::new();
        for e in &self.entries {
            if e.section == section && e.key == key {
                if e.value.is_empty() {
                    out.clear();
                } else {
                    out.push(e);
                }
            }
        }
        out
    }

    /// The last value of `section.key`.
    pub fn last(&self, section: &str, key: &str) -> Option<&UnitEntry> {
        self.entries
            .iter()
            .rev()
            .find(|e| e.section == section && e.key == key)
    }

    /// The program `ExecStart=` runs (prefixes `@-:+!` removed), when it is an absolute path.
    pub fn exec_start(&self) -> Option<PathBuf> {
        self.exec("ExecStart")
    }

    /// The program `ExecStartPost=` runs (the legacy postStart script), like [`Self::exec_start`].
    pub fn exec_start_post(&self) -> Option<PathBuf> {
        self.exec("ExecStartPost")
    }

    fn exec(&self, key: &str) -> Option<PathBuf> {
        let e = self.values("Service", key).into_iter().last()?;
        let v = e.value.trim_start_matches(['@', '-', ':', '+', '!']);
        let words = split_words(v);
        let first = words.first()?;
        first.starts_with('/').then(|| PathBuf::from(first))
    }
}

/// Parse systemd unit-file syntax: `[Section]` headers, `Key=Value`, `#`/`;` comments, and
/// lines ending in `\` continued on the next line (comment lines inside a continuation are
/// skipped, as systemd does).
pub fn parse_unit(text: &str) -> UnitFile {
    let mut out = UnitFile::default();
    let mut section: Option<String> = None;
    let mut pending: Option<(String, usize)> = None;
    for (i, raw) in text.lines().enumerate() {
        let line_no = i + 1;
        let trimmed = raw.trim();
        if let Some((mut acc, start)) = pending.take() {
            if trimmed.starts_with('#') || trimmed.starts_with(';') {
                pending = Some((acc, start));
                continue;
            }
            if let Some(body) = trimmed.strip_suffix('\\') {
                acc.push(' ');
                acc.push_str(body);
                pending = Some((acc, start));
                continue;
            }
            acc.push(' ');
            acc.push_str(trimmed);
            finish_line(&mut out, section.as_deref(), &acc, start);
            continue;
        }
        if trimmed.is_empty() || trimmed.starts_with('#') || trimmed.starts_with(';') {
            continue;
        }
        if trimmed.starts_with('[') {
            if let Some(name) = trimmed.strip_prefix('[').and_then(|t| t.strip_suffix(']')) {
                section = Some(name.to_string());
            } else {
                out.problems
                    .push((line_no, format!("invalid section header {trimmed:?}")));
            }
            continue;
        }
        if let Some(body) = trimmed.strip_suffix('\\') {
            pending = Some((body.to_string(), line_no));
            continue;
        }
        finish_line(&mut out, section.as_deref(), trimmed, line_no);
    }
    if let Some((acc, start)) = pending {
        finish_line(&mut out, section.as_deref(), &acc, start);
    }
    out
}

fn finish_line(out: &mut UnitFile, section: Option<&str>, line: &str, line_no: usize) {
    let Some(section) = section else {
        out.problems
            .push((line_no, format!("{line:?} is outside of any [Section]")));
        return;
    };
    match line.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => out.entries.push(UnitEntry {
            section: section.to_string(),
            key: k.trim().to_string(),
            value: v.trim().to_string(),
            line: line_no,
        }),
        _ => out
            .problems
            .push((line_no, format!("{line:?} is not a Key=Value assignment"))),
    }
}

/// Split a unit-file value into words: whitespace-separated, `"…"` and `'…'` quoted, `\`
/// escaping the next character (enough for `Environment=` and `ExecStart=`).
pub fn split_words(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut quote: Option<char> = None;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match (quote, c) {
            (_, '\\') => {
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
                in_word = true;
            }
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => cur.push(c),
            (None, '"' | '\'') => {
                quote = Some(c);
                in_word = true;
            }
            (None, c) if c.is_whitespace() => {
                if in_word {
                    out.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            (None, c) => {
                cur.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        out.push(cur);
    }
    out
}

fn parse_bool(v: &str) -> Option<bool> {
    match v.to_ascii_lowercase().as_str() {
        "1" | "yes" | "y" | "true" | "t" | "on" => Some(true),
        "0" | "no" | "n" | "false" | "f" | "off" => Some(false),
        _ => None,
    }
}

fn device(node: &str, modifier: &str) -> Value {
    let mut a = BTreeMap::new();
    a.insert("node".to_string(), Value::Str(node.to_string()));
    a.insert("modifier".to_string(), Value::Str(modifier.to_string()));
    Value::Attrs(a)
}

/// What the start script states, with 1-based lines.
#[derive(Debug, Default)]
struct ScriptFacts {
    capabilities: Option<(Vec<String>, usize)>,
    tmpfs: Option<(Vec<String>, usize)>,
    ephemeral: Option<usize>,
    veths: Vec<(String, usize)>,
    veth_line: Option<usize>,
    /// The [old] script copies resolv.conf without looking at `COPY_RESOLV_CONF`.
    unconditional_resolv_copy: Option<usize>,
}

fn read_script(text: &str) -> ScriptFacts {
    let mut f = ScriptFacts::default();
    let mut mentions_copy_var = false;
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let t = raw.trim();
        if t.starts_with('#') {
            continue;
        }
        if t.contains("COPY_RESOLV_CONF") {
            mentions_copy_var = true;
        }
        if t.contains("cp --remove-destination /etc/resolv.conf")
            && f.unconditional_resolv_copy.is_none()
        {
            f.unconditional_resolv_copy = Some(line);
        }
        let body = t.strip_suffix('\\').map_or(t, str::trim_end);
        if let Some(pos) = body.find("--capability=\"") {
            // Everything up to the last quote on the line: injected quotes stay in the items.
            let rest = &body[pos + "--capability=\"".len()..];
            let raw_list = match rest.rfind('"') {
                Some(end) => &rest[..end],
                None => rest,
            };
            let items = raw_list
                .split(',')
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect();
            f.capabilities = Some((items, line));
        } else if let Some(list) = body.strip_prefix("--tmpfs=") {
            let items = list.split(" --tmpfs=").map(str::to_string).collect();
            f.tmpfs = Some((items, line));
        } else if body == "--ephemeral" {
            f.ephemeral = Some(line);
        }
        if t.starts_with("extraFlags+=(") && !t.contains('$') {
            f.veth_line = Some(line);
            for w in split_words(t.trim_start_matches("extraFlags+=(").trim_end_matches(')')) {
                if let Some(n) = w.strip_prefix("--network-veth-extra=") {
                    f.veths.push((n.to_string(), line));
                }
            }
        }
    }
    if mentions_copy_var {
        f.unconditional_resolv_copy = None;
    }
    f
}

/// Read a declarative container's generated unit and (when available) its start script.
///
/// `script` is the `ExecStart=` store script as `(host path, text)`; without it, options that
/// only the script states stay unknown and a `unit-script-unreadable` warning says so.
pub fn read_unit(
    name: &str,
    unit_file: &Path,
    unit_text: &str,
    script: Option<(&Path, &str)>,
) -> SourceFacts {
    let unit = parse_unit(unit_text);
    let mut facts = SourceFacts::new(name, SourceKind::Unit, unit_file);
    let opt = |o: &str| format!("containers.{name}.{o}");
    for (line, msg) in &unit.problems {
        facts.warnings.push(
            Warning::new(
                &UNIT_MALFORMED_LINE,
                format!("containers.{name}"),
                format!(
                    "container {name}: {}:{line}: {msg}; systemd ignores the line. The unit is generated by NixOS: rebuild the host configuration, or fix the override that produced it",
                    unit_file.display()
                ),
            )
            .at(unit_file, Some(*line)),
        );
    }
    if let Some(e) = unit.last("Service", "TimeoutStartSec") {
        facts.set("timeoutStartSec", Value::Str(e.value.clone()), Some(e.line));
    }
    if let Some(e) = unit.last("Unit", "X-RestartIfChanged") {
        match parse_bool(&e.value) {
            Some(b) => facts.set("restartIfChanged", Value::Bool(b), Some(e.line)),
            None => facts.warnings.push(
                Warning::new(
                    &UNIT_MALFORMED_LINE,
                    opt("restartIfChanged"),
                    format!(
                        "container {name}: {}:{} X-RestartIfChanged={:?} is not a boolean; switch-to-configuration treats it as true. Set containers.{name}.restartIfChanged in the host configuration",
                        unit_file.display(),
                        e.line,
                        e.value
                    ),
                )
                .at(unit_file, Some(e.line)),
            ),
        }
    }
    for e in unit.values("Service", "Environment") {
        for w in split_words(&e.value) {
            if let Some(root) = w.strip_prefix("root=") {
                let eph = root.starts_with("/run/nixos-containers/");
                facts.set("ephemeral", Value::Bool(eph), Some(e.line));
            }
        }
    }
    let mut devices: Vec<(String, String, usize)> = unit
        .values("Service", "DeviceAllow")
        .into_iter()
        .map(|e| {
            let mut parts = e.value.split_whitespace();
            let node = parts.next().unwrap_or_default().to_string();
            let modifier = parts.next().unwrap_or("rwm").to_string();
            (node, modifier, e.line)
        })
        .collect();

    let sf = script.map(|(p, t)| (p, read_script(t)));
    let mut caps: Option<(Vec<String>, Origin)> = None;
    if let Some((path, s)) = &sf {
        let origin = |line: usize| Origin::new(SourceKind::Unit, *path, Some(line));
        if let Some((items, line)) = &s.capabilities {
            caps = Some((items.clone(), origin(*line)));
        } else {
            caps = Some((Vec::new(), Origin::new(SourceKind::Unit, *path, None)));
        }
        let tmpfs = s.tmpfs.clone().unwrap_or_default();
        facts.options.insert(
            "tmpfs".to_string(),
            (
                Value::List(tmpfs.0.into_iter().map(Value::Str).collect()),
                if tmpfs.1 > 0 {
                    origin(tmpfs.1)
                } else {
                    Origin::new(SourceKind::Unit, *path, None)
                },
            ),
        );
        if let Some(line) = s.ephemeral {
            facts
                .options
                .insert("ephemeral".to_string(), (Value::Bool(true), origin(line)));
        }
        let veths: BTreeMap<String, Value> = s
            .veths
            .iter()
            .map(|(n, _)| (n.clone(), Value::Attrs(BTreeMap::new())))
            .collect();
        facts.options.insert(
            "extraVeths".to_string(),
            (
                Value::Attrs(veths),
                match s.veth_line {
                    Some(l) => origin(l),
                    None => Origin::new(SourceKind::Unit, *path, None),
                },
            ),
        );
        if let Some(line) = s.unconditional_resolv_copy {
            facts.options.insert(
                "copyResolvConf".to_string(),
                (Value::Bool(true), origin(line)),
            );
        }
    } else {
        let what = match unit.exec_start() {
            Some(p) => format!("its start script {} is not there", p.display()),
            None => "it has no ExecStart= start script".to_string(),
        };
        facts.warnings.push(
            Warning::new(
                &UNIT_SCRIPT_UNREADABLE,
                format!("containers.{name}"),
                format!(
                    "container {name}: {} is read, but {what}, so additionalCapabilities, tmpfs, ephemeral, enableTun and extraVeths are unknown from disk. Evaluate the host configuration and pass it with --from-json (see README) so they are carried over",
                    unit_file.display()
                ),
            )
            .at(unit_file, None),
        );
    }

    // enableTun = DeviceAllow "/dev/net/tun rwm" ([old]: "rw") + CAP_NET_ADMIN, both appended last.
    let tun_pos = devices
        .iter()
        .rposition(|(n, m, _)| n == "/dev/net/tun" && (m == "rwm" || m == "rw"));
    match (&mut caps, tun_pos) {
        (Some((items, _)), _) => {
            let cap_pos = items.iter().rposition(|c| c == "CAP_NET_ADMIN");
            if let (Some(t), Some(c)) = (tun_pos, cap_pos) {
                let (_, _, line) = devices.remove(t);
                items.remove(c);
                facts.set("enableTun", Value::Bool(true), Some(line));
            } else {
                facts.set("enableTun", Value::Bool(false), None);
            }
        }
        (None, Some(t)) => {
            let line = devices[t].2;
            facts.warnings.push(
                Warning::new(
                    &UNIT_TUN_AMBIGUOUS,
                    opt("allowedDevices"),
                    format!(
                        "container {name}: {}:{line} allows /dev/net/tun, but without the start script it is unknown whether this comes from enableTun, privateUsers or allowedDevices; it is kept as an allowedDevices entry. Check the container definition",
                        unit_file.display()
                    ),
                )
                .at(unit_file, Some(line)),
            );
        }
        (None, None) => {}
    }
    let dev_line = devices.first().map(|d| d.2);
    facts.set(
        "allowedDevices",
        Value::List(devices.iter().map(|(n, m, _)| device(n, m)).collect()),
        dev_line,
    );
    if let Some((items, origin)) = caps {
        facts.options.insert(
            "additionalCapabilities".to_string(),
            (
                Value::List(items.into_iter().map(Value::Str).collect()),
                origin,
            ),
        );
    }
    facts
}

/// Fill in `extraVeths.<name>` sub-options from the unit's postStart script (`ExecStartPost=`),
/// where the module rendered them as literal commands on the host side:
/// `ip link set dev "N" master "BR" up` (hostBridge), `ip addr add A dev "N"` (hostAddress),
/// `ip -6 addr add` (hostAddress6), `ip route add L dev "N"` (localAddress), `ip -6 route add`
/// (localAddress6). Only veths the start script named are touched; the main link's commands
/// (`dev "$ifaceHost"`) never match.
pub fn read_post_start(facts: &mut SourceFacts, script: &Path, text: &str) {
    let Some((Value::Attrs(veths), _)) = facts.options.get_mut("extraVeths") else {
        return;
    };
    let mut first_line = None;
    for (i, raw) in text.lines().enumerate() {
        let words = split_words(raw.trim());
        let w: Vec<&str> = words.iter().map(String::as_str).collect();
        let (key, value, veth) = match w.as_slice() {
            ["ip", "link", "set", "dev", n, "master", br, "up"] => ("hostBridge", *br, *n),
            ["ip", "addr", "add", a, "dev", n] => ("hostAddress", *a, *n),
            ["ip", "-6", "addr", "add", a, "dev", n] => ("hostAddress6", *a, *n),
            ["ip", "route", "add", a, "dev", n] => ("localAddress", *a, *n),
            ["ip", "-6", "route", "add", a, "dev", n] => ("localAddress6", *a, *n),
            _ => continue,
        };
        if let Some(Value::Attrs(entry)) = veths.get_mut(veth) {
            entry.insert(key.to_string(), Value::Str(value.to_string()));
            first_line.get_or_insert(i + 1);
        }
    }
    if let (Some(line), Some((_, origin))) = (first_line, facts.options.get_mut("extraVeths")) {
        *origin = Origin::new(SourceKind::Unit, script, Some(line));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A unit as NixOS (24.11) renders `container@web.service` for a declarative container
    /// with `enableTun`, `allowedDevices`, a `timeoutStartSec` and `autoStart = true`.
    pub(crate) const UNIT: &str = r#"[Unit]
After=network.target
Description=Container '%i'
RequiresMountsFor=/var/lib/nixos-containers/%i
RequiresMountsFor=/srv/www
Wants=network.target
X-Restart-Triggers=/nix/store/0hqa7vqsbwm1j3sxb1ax3sxm7b5w5w3d-nixos-system-web-24.11 /nix/store/6p1mzc8y9vhcjq4s3xv05x2dzwl1h5r0-etc-nixos-containers-web.conf

[Service]
Environment="INSTANCE=%i"
Environment="LOCALE_ARCHIVE=/nix/store/pb0r3bq1ga3vzp4rc7q4z2rwcy3r0b4d-glibc-locales-2.40-36/lib/locale/locale-archive"
Environment="PATH=/nix/store/3rgbsrhhbpkflnn6xgybgcyrf2pzn2lp-iproute2-6.11.0/bin:/nix/store/fnn5lqw1w1j1m4r8hk5wq6yk1ydqcabc-coreutils-9.5/bin"
Environment="root=/var/lib/nixos-containers/%i"
DeviceAllow=/dev/fuse rwm
DeviceAllow=/dev/net/tun rwm
Delegate=true
DevicePolicy=closed
EnvironmentFile=-/etc/nixos-containers/%i.conf
ExecReload=/nix/store/zj6l6c2h8f3ylz1x7v5a7c0w4x5y8b9a-reload-container
ExecStart=/nix/store/q0n5r1a3c8l9hk2m4p6s7t8v0w1x2y3z-unit-script-container_web-start/bin/container_web-start
KillMode=mixed
KillSignal=TERM
Restart=on-failure
RestartForceExitStatus=133
Slice=machine.slice
SuccessExitStatus=133
SyslogIdentifier=container %i
TimeoutStartSec=5min
Type=notify
"#;

    const SCRIPT: &str = r#"#!/nix/store/4bj2kxdm1462fzcc2i2s4dn33g2angcc-bash-5.2p32/bin/bash
set -e
# Declare root explicitly to avoid shellcheck warnings, it comes from the env
declare root

mkdir -p "$root/usr/bin"
if [ "$COPY_RESOLV_CONF" = 1 ]; then
  cp --remove-destination /etc/resolv.conf "$root/etc/resolv.conf"
fi
declare -a extraFlags
extraFlags+=('--network-veth-extra=vx1' '--network-veth-extra=vx2')

exec /nix/store/d5vc6wk3q2f1d1r0x1q6d7kb3z0gk2qx-systemd-256.8/bin/systemd-nspawn \
  --keep-unit \
  -M "$INSTANCE" -D "$root" "${extraFlags[@]}" \
  --notify-ready=yes \
  --kill-signal=SIGRTMIN+3 \
  --link-journal=try-guest \
  --setenv PATH="$PATH" \
  --ephemeral \
  --capability="CAP_SYS_ADMIN,CAP_NET_ADMIN" \
  --tmpfs=/var/cache --tmpfs=/tmp:mode=1777 \
  ${EXTRA_NSPAWN_FLAGS-} \
  /nix/store/a1b2c3d4e5f6g7h8i9j0k1l2m3n4o5p6-container-init "${SYSTEM_PATH:-/nix/var/nix/profiles/system}/init"
"#;

    fn v<'a>(f: &'a SourceFacts, k: &str) -> Option<&'a Value> {
        f.options.get(k).map(|(v, _)| v)
    }

    fn strs(items: &[&str]) -> Value {
        Value::List(items.iter().map(|s| Value::Str(s.to_string())).collect())
    }

    #[test]
    fn unit_syntax() {
        let u = parse_unit(
            "# c\n[Unit]\nA=1\n; c\nB = two \\\n  # skipped\n  words\n\n[Service]\nC=\nnot an assignment\nD=x=y\n",
        );
        let got: Vec<_> = u
            .entries
            .iter()
            .map(|e| (e.section.as_str(), e.key.as_str(), e.value.as_str(), e.line))
            .collect();
        assert_eq!(
            got,
            vec![
                ("Unit", "A", "1", 3),
                ("Unit", "B", "two  words", 5),
                ("Service", "C", "", 10),
                ("Service", "D", "x=y", 12),
            ]
        );
        assert_eq!(u.problems.len(), 1);
        assert_eq!(u.problems[0].0, 11);
    }

    #[test]
    fn empty_assignment_resets_a_list() {
        let u = parse_unit("[Service]\nDeviceAllow=/dev/a r\nDeviceAllow=\nDeviceAllow=/dev/b w\n");
        let v: Vec<_> = u
            .values("Service", "DeviceAllow")
            .iter()
            .map(|e| e.value.clone())
            .collect();
        assert_eq!(v, vec!["/dev/b w"]);
    }

    #[test]
    fn exec_start_path() {
        let u = parse_unit(UNIT);
        assert_eq!(
            u.exec_start(),
            Some(PathBuf::from(
                "/nix/store/q0n5r1a3c8l9hk2m4p6s7t8v0w1x2y3z-unit-script-container_web-start/bin/container_web-start"
            ))
        );
        assert_eq!(
            parse_unit("[Service]\nExecStart=-@/bin/x y\n").exec_start(),
            Some(PathBuf::from("/bin/x"))
        );
        assert_eq!(parse_unit("[Service]\nExecStart=x\n").exec_start(), None);
    }

    #[test]
    fn unit_and_script_give_the_hidden_options() {
        let script = Path::new("/nix/store/q0n5-unit-script/bin/container_web-start");
        let f = read_unit(
            "web",
            Path::new("/etc/systemd/system/container@web.service"),
            UNIT,
            Some((script, SCRIPT)),
        );
        assert!(f.warnings.is_empty(), "{:#?}", f.warnings);
        assert_eq!(v(&f, "timeoutStartSec"), Some(&Value::Str("5min".into())));
        assert_eq!(f.options["timeoutStartSec"].1.line, Some(28));
        assert_eq!(v(&f, "enableTun"), Some(&Value::Bool(true)));
        assert_eq!(
            v(&f, "allowedDevices"),
            Some(&Value::List(vec![device("/dev/fuse", "rwm")]))
        );
        assert_eq!(
            v(&f, "additionalCapabilities"),
            Some(&strs(&["CAP_SYS_ADMIN"]))
        );
        assert_eq!(f.options["additionalCapabilities"].1.file, script);
        assert_eq!(f.options["additionalCapabilities"].1.line, Some(21));
        assert_eq!(
            v(&f, "tmpfs"),
            Some(&strs(&["/var/cache", "/tmp:mode=1777"]))
        );
        assert_eq!(v(&f, "ephemeral"), Some(&Value::Bool(true)));
        let Some(Value::Attrs(veths)) = v(&f, "extraVeths") else {
            panic!()
        };
        assert_eq!(veths.keys().collect::<Vec<_>>(), vec!["vx1", "vx2"]);
        assert_eq!(v(&f, "restartIfChanged"), None);
        assert_eq!(v(&f, "copyResolvConf"), None);
    }

    #[test]
    fn injected_capability_text_is_kept_raw() {
        // additionalCapabilities = [ "CAP_NET_RAW" ''CAP_SYS_TIME" --system-call-filter="@keyring" --capability="CAP_X'' ];
        let script = "  --capability=\"CAP_NET_RAW,CAP_SYS_TIME\" --system-call-filter=\"@keyring\" --capability=\"CAP_X\" \\\n";
        let f = read_unit(
            "db",
            Path::new("/u"),
            "[Service]\nEnvironment=\"root=/var/lib/nixos-containers/%i\"\n",
            Some((Path::new("/s"), script)),
        );
        assert_eq!(
            v(&f, "additionalCapabilities"),
            Some(&strs(&[
                "CAP_NET_RAW",
                "CAP_SYS_TIME\" --system-call-filter=\"@keyring\" --capability=\"CAP_X"
            ]))
        );
        assert_eq!(v(&f, "ephemeral"), Some(&Value::Bool(false)));
        assert_eq!(v(&f, "enableTun"), Some(&Value::Bool(false)));
        assert_eq!(v(&f, "tmpfs"), Some(&Value::List(vec![])));
    }

    #[test]
    fn without_script_some_options_are_unknown() {
        let f = read_unit(
            "web",
            Path::new("/etc/systemd/system/container@web.service"),
            UNIT,
            None,
        );
        let codes: Vec<_> = f.warnings.iter().map(|w| w.code).collect();
        assert!(codes.contains(&"unit-script-unreadable"), "{codes:?}");
        assert!(codes.contains(&"unit-tun-ambiguous"), "{codes:?}");
        assert!(f.warnings[0].message.contains("container_web-start"));
        assert_eq!(v(&f, "enableTun"), None);
        assert_eq!(v(&f, "additionalCapabilities"), None);
        assert_eq!(v(&f, "timeoutStartSec"), Some(&Value::Str("5min".into())));
        assert_eq!(
            v(&f, "allowedDevices"),
            Some(&Value::List(vec![
                device("/dev/fuse", "rwm"),
                device("/dev/net/tun", "rwm")
            ]))
        );
    }

    #[test]
    fn old_script_copies_resolv_conf_unconditionally() {
        let old = "cp --remove-destination /etc/resolv.conf \"$root/etc/resolv.conf\"\n";
        let f = read_unit(
            "o",
            Path::new("/u"),
            "[Unit]\nX-RestartIfChanged=false\n",
            Some((Path::new("/s"), old)),
        );
        assert_eq!(v(&f, "copyResolvConf"), Some(&Value::Bool(true)));
        assert_eq!(v(&f, "restartIfChanged"), Some(&Value::Bool(false)));
    }

    #[test]
    fn extra_veth_settings_from_the_post_start_script() {
        // As the module renders postStart for extraVeths.vx1 (addresses) and vx2 (a bridge),
        // after the main link's block.
        let post = r#"if [[ -n "${HOST_ADDRESS-}" ]]  || [[ -n "${LOCAL_ADDRESS-}" ]]; then
  if [[ -z "${HOST_BRIDGE-}" ]]; then
    ifaceHost=ve-$INSTANCE
    ip link set dev "$ifaceHost" up
    ip addr add 10.233.1.1 dev "$ifaceHost"
  fi
fi
echo "Bring vx1 up"
ip link set dev "vx1" up
# Set IPs and routes for vx1
ip addr add 192.168.100.1/24 dev "vx1"

ip -6 addr add fc00::1 dev "vx1"
ip route add 192.168.100.2 dev "vx1"
ip -6 route add fc00::2 dev "vx1"

# Add vx2 to bridge br5
ip link set dev "vx2" master "br5" up
"#;
        let mut f = read_unit(
            "web",
            Path::new("/etc/systemd/system/container@web.service"),
            UNIT,
            Some((Path::new("/s"), SCRIPT)),
        );
        read_post_start(&mut f, Path::new("/nix/store/p-post"), post);
        let Some((Value::Attrs(v), origin)) = f.options.get("extraVeths") else {
            panic!()
        };
        assert_eq!(origin.line, Some(11));
        let s = |x: &str| Value::Str(x.to_string());
        assert_eq!(
            v["vx1"],
            Value::Attrs(BTreeMap::from([
                ("hostAddress".to_string(), s("192.168.100.1/24")),
                ("hostAddress6".to_string(), s("fc00::1")),
                ("localAddress".to_string(), s("192.168.100.2")),
                ("localAddress6".to_string(), s("fc00::2")),
            ]))
        );
        assert_eq!(
            v["vx2"],
            Value::Attrs(BTreeMap::from([("hostBridge".to_string(), s("br5"))]))
        );
        let m = crate::legacy::merge::merge("web", vec![f]);
        let veths = m.options.extra_veths.unwrap().value;
        assert_eq!(veths["vx1"].local_address.as_deref(), Some("192.168.100.2"));
        assert_eq!(veths["vx2"].host_bridge.as_deref(), Some("br5"));
    }

    #[test]
    fn words() {
        assert_eq!(
            split_words(r#""root=/a b" x\ y 'q "r"' "#),
            vec!["root=/a b", "x y", "q \"r\""]
        );
    }

    #[test]
    fn garbage_never_panics() {
        for t in [
            "",
            "[",
            "]",
            "[A\nB",
            "=\\",
            "\\",
            "[S]\nExecStart=\"",
            "[S]\n=x\n",
            "[Service]\nDeviceAllow=\n",
        ] {
            let _ = read_unit("n", Path::new("/u"), t, Some((Path::new("/s"), t)));
            let _ = read_unit("n", Path::new("/u"), t, None);
        }
    }
}
