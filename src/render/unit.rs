//! The one writer for values in systemd files: `.nspawn` settings, networkd `.network` /
//! `.netdev` units and the `systemd-nspawn@NAME.service` drop-in. Every renderer (the text of
//! those files, and the Nix strings NixOS turns into those files, which it copies verbatim)
//! gets each `Key=value` line from here, so the rules live in one place.
//!
//! What systemd does to a line, and therefore what this module guards against (each point was
//! checked with systemd 252's `systemd-nspawn` and `systemd-analyze verify`; the tests in
//! `tests/unit_values.rs` re-check them against the real programs):
//!
//! - a NUL, CR or LF ends the line (`read_line()`): anything after it is a new line, i.e. an
//!   injected key or `[Section]`. Every C0 control character and DEL is **refused**.
//! - a line ending in an odd number of `\` continues on the next line, swallowing it; leading
//!   and trailing whitespace of a value is stripped. Such values are quoted where the key splits
//!   words and refused elsewhere (any trailing `\`, to stay clear of the parity rule).
//! - unit files (the drop-in) expand `%` specifiers in most settings (`Environment=`,
//!   `DeviceAllow=`, `RequiresMountsFor=`, `After=`, `LoadCredential=`, `Exec*=`, …) but not
//!   in those where `%` is part of the syntax (`CPUQuota=50%`, `MemoryMax=10%`): `%` is
//!   written `%%` except in [`PERCENT_SYNTAX`]. `.nspawn` and networkd files expand nothing.
//! - `Bind=`/`BindReadOnly=` split on `:` and read `\` as an escape: paths are written with
//!   `\:` and `\\` ([`bind_spec`]); [`split_bind_spec`] reads that syntax back.
//! - `.nspawn` `Environment=`/`Parameters=` split words: a value with whitespace, a quote or a
//!   trailing `\` is quoted (`"…"`, with `'"'` for a double quote; nspawn keeps `\` literally
//!   there, so there is nothing else to escape).
//!
//! Values in the model ([`crate::translate::Instance`]) are what systemd should end up with:
//! for raw keys the nspawn command line / `--property=` syntax (the same parsers, minus
//! specifier expansion), for bind mounts plain paths.

use crate::translate::Instance;
use crate::warnings::{Category, WarningSpec};
use std::collections::BTreeMap;

pub const UNIT_VALUE_REFUSED: WarningSpec = WarningSpec {
    code: "unit-value-refused",
    category: Category::NeedsHuman,
    summary: "a value holds a character systemd would read as a line end (or otherwise cannot be written \
              safely into a unit or .nspawn file); it was not carried over",
};

pub const BIND_PATH_COLON: WarningSpec = WarningSpec {
    code: "bind-path-colon",
    category: Category::ChangedMeaning,
    summary: "a legacy bind path held a bare `:`, which legacy's `--bind=` read as a separator (the mount \
              failed); the new module escapes it and binds the path as written",
};

/// Which kind of file a value goes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum File {
    /// `/etc/systemd/nspawn/NAME.nspawn`: no specifiers; `Bind=` escapes, strv keys quote.
    Nspawn,
    /// `.network` / `.netdev`: no specifiers, values verbatim.
    Networkd,
    /// A unit file or drop-in (`systemd-nspawn@NAME.service.d/*.conf`): `%` specifiers.
    Unit,
}

impl File {
    fn describe(self) -> &'static str {
        match self {
            File::Nspawn => ".nspawn file",
            File::Networkd => "networkd unit",
            File::Unit => "service drop-in",
        }
    }
}

/// Unit-file settings where `%` is part of the value's own syntax and no specifier is
/// expanded (checked: `CPUQuota=50%%` is "Invalid CPU quota"). Everything else in a unit file
/// gets `%` doubled: for keys that expand specifiers that keeps the `%`, for the rest (numbers,
/// enums) a `%` was invalid either way.
pub const PERCENT_SYNTAX: &[&str] = &[
    "CPUQuota",
    "StartupCPUQuota",
    "MemoryMin",
    "MemoryLow",
    "StartupMemoryLow",
    "MemoryHigh",
    "StartupMemoryHigh",
    "MemoryMax",
    "StartupMemoryMax",
    "MemorySwapMax",
    "StartupMemorySwapMax",
    "MemoryZSwapMax",
    "StartupMemoryZSwapMax",
    "MemoryLimit",
    "TasksMax",
    "ManagedOOMMemoryPressureLimit",
];

/// `.nspawn` keys read as a whitespace-separated, quote-removing word list
/// (`config_parse_strv`: `EXTRACT_UNQUOTE|EXTRACT_RETAIN_ESCAPE`); each model value is one word.
const NSPAWN_WORDS: &[(&str, &str)] = &[("Exec", "Environment"), ("Exec", "Parameters")];

/// `.nspawn` keys holding a bind spec built by [`bind_spec`] (already escaped).
const NSPAWN_BIND: &[(&str, &str)] = &[("Files", "Bind"), ("Files", "BindReadOnly")];

/// Why a value cannot be written; the text completes "…: " in a warning.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refused {
    pub reason: String,
}

/// `s` with every control character (and `\`) shown as an escape, safe to print on one line
/// in a report or a comment: `a\0b`, `\n`, `\x1b`, `\u{85}`.
pub fn shown(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\0' => out.push_str("\\0"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                out.push_str(&format!("\\x{:02x}", c as u32));
            }
            c if c.is_control() || matches!(c, '\u{2028}' | '\u{2029}') => {
                out.push_str(&format!("\\u{{{:x}}}", c as u32));
            }
            c => out.push(c),
        }
    }
    out
}

/// The first character systemd would read as a line end or that has no place in a text file.
fn control(s: &str) -> Option<char> {
    s.chars().find(|&c| (c as u32) < 0x20 || c as u32 == 0x7f)
}

fn control_name(c: char) -> String {
    match c {
        '\0' => "a NUL byte".into(),
        '\n' => "a newline".into(),
        '\r' => "a carriage return".into(),
        '\t' => "a tab".into(),
        c => format!("the control character U+{:04X}", c as u32),
    }
}

/// Is `key` a plain settings name (`CPUQuota`, `Environment`)? Anything else could carry `=`,
/// `[` or a line end into the file.
fn valid_key(key: &str) -> bool {
    !key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric())
}

/// One word for a `.nspawn` strv key: quoted when systemd would otherwise split it, drop a
/// quote or strip it, or read a trailing `\` as a line continuation.
fn nspawn_word(v: &str) -> String {
    let needs = v.is_empty()
        || v.chars()
            .any(|c| matches!(c, ' ' | '\t' | '"' | '\'') || c.is_whitespace())
        || v.ends_with('\\');
    if !needs {
        return v.to_string();
    }
    // Inside "…" nspawn keeps every character (a `\` too) except `"`, which is written in
    // single quotes; adjacent quoted parts join into one word.
    let mut out = String::new();
    let mut open = false;
    for c in v.chars() {
        if c == '"' {
            if open {
                out.push('"');
                open = false;
            }
            out.push_str("'\"'");
        } else {
            if !open {
                out.push('"');
                open = true;
            }
            out.push(c);
        }
    }
    if open {
        out.push('"');
    }
    if out.is_empty() {
        out.push_str("\"\"");
    }
    out
}

/// The text after `Key=` for `value` in `[section]` of a `file`, or why it cannot be written.
pub fn value(file: File, section: &str, key: &str, v: &str) -> Result<String, Refused> {
    if !valid_key(key) {
        return Err(Refused {
            reason: format!("`{}` is not a setting name", shown(key)),
        });
    }
    if let Some(c) = control(v) {
        return Err(Refused {
            reason: format!(
                "the value `{}` holds {}, which systemd reads as a line end or cannot keep in a {}",
                shown(v),
                control_name(c),
                file.describe()
            ),
        });
    }
    if file == File::Nspawn && NSPAWN_WORDS.contains(&(section, key)) {
        return Ok(nspawn_word(v));
    }
    let bind = file == File::Nspawn && NSPAWN_BIND.contains(&(section, key));
    if !bind && v.ends_with('\\') {
        return Err(Refused {
            reason: format!(
                "the value `{}` ends in a backslash, which systemd reads as a line continuation",
                shown(v)
            ),
        });
    }
    if v.trim() != v {
        return Err(Refused {
            reason: format!(
                "the value `{}` starts or ends with white space, which systemd strips",
                shown(v)
            ),
        });
    }
    if file == File::Unit && !PERCENT_SYNTAX.contains(&key) {
        return Ok(v.replace('%', "%%"));
    }
    Ok(v.to_string())
}

/// One `Key=value\n` line. A value that cannot be written becomes a comment saying so (the
/// translator already refused it with a warning; this is the last line of defence, never a
/// silent drop): the comment shows the value escaped, so it cannot start a line either.
pub fn line(file: File, section: &str, key: &str, v: &str) -> String {
    match value(file, section, key, v) {
        Ok(text) => format!("{key}={text}\n"),
        Err(r) => format!(
            "# nixos-nspawn: {}= not written: {}\n",
            shown(key),
            r.reason
        ),
    }
}

/// A `# …` comment line for a unit or `.nspawn` file: control characters shown escaped, so
/// the text (which may hold a container name) cannot end the comment and start a setting.
pub fn comment(text: &str) -> String {
    format!("# {}\n", shown(text))
}

/// Escape a path for a bind spec: `\` → `\\`, `:` → `\:`.
fn bind_path(p: &str) -> String {
    let mut out = String::with_capacity(p.len());
    for c in p.chars() {
        if matches!(c, '\\' | ':') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// `SOURCE[:DEST][:OPTIONS]` as `Bind=`/`BindReadOnly=` (and `--bind=`) read it, the paths
/// escaped so that `:` and `\` in them survive (nixos/lib/instance.nix does the same).
pub fn bind_spec(host: Option<&str>, mount_point: &str, options: Option<&str>) -> String {
    let mut s = match host {
        Some(h) => format!("{}:{}", bind_path(h), bind_path(mount_point)),
        None => bind_path(mount_point),
    };
    if let Some(o) = options {
        s.push(':');
        s.push_str(o);
    }
    s
}

/// Read a bind spec the way nspawn does (`extract_first_word(…, ":", DONT_COALESCE)`: `\`
/// escapes the next character): `(source, dest, options)`. The options are the rest, as is.
pub fn split_bind_spec(s: &str) -> (String, Option<String>, Option<String>) {
    let mut fields: Vec<String> = vec![String::new()];
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if fields.len() == 3 {
            // OPTIONS: everything after the second separator, verbatim.
            if let Some(last) = fields.last_mut() {
                last.push(c);
                last.extend(chars.by_ref());
            }
            break;
        }
        match c {
            '\\' => {
                if let (Some(n), Some(last)) = (chars.next(), fields.last_mut()) {
                    last.push(n);
                }
            }
            ':' => fields.push(String::new()),
            c => {
                if let Some(last) = fields.last_mut() {
                    last.push(c);
                }
            }
        }
    }
    let mut it = fields.into_iter();
    let src = it.next().unwrap_or_default();
    (src, it.next(), it.next())
}

/// Does a legacy bind path (pasted by the legacy module into `--bind=` unescaped) hold a `:`
/// that nspawn read as a separator? Escaped `\:` is fine.
pub fn has_bare_colon(p: &str) -> bool {
    let mut chars = p.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                chars.next();
            }
            ':' => return true,
            _ => {}
        }
    }
    false
}

/// Undo nspawn's bind-path escaping (`\:` → `:`, `\\` → `\`, `\x` → `x`), as nspawn did to a
/// legacy `hostPath`/`mountPoint` the legacy module pasted into `--bind=`.
pub fn unescape_bind_path(p: &str) -> String {
    let mut out = String::with_capacity(p.len());
    let mut chars = p.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(n) = chars.next() {
                out.push(n);
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Is `mode` a `PrivateUsers=` value systemd-nspawn accepts? Checked with nspawn 252: a base
/// UID other than 65535 and 4294967295 (the 16- and 32-bit "invalid" UIDs), a range (default
/// 65536) of at least 1, and the last UID of the range below 4294967295.
pub fn private_users_valid(mode: &str) -> Result<(), String> {
    if matches!(mode, "no" | "yes" | "pick" | "identity") {
        return Ok(());
    }
    let (base, range) = match mode.split_once(':') {
        Some((b, r)) => (b, Some(r)),
        None => (mode, None),
    };
    let num = |s: &str| {
        (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse::<u64>().ok())
            .flatten()
    };
    let bad = |why: &str| {
        Err(format!(
            "`{}` is not a PrivateUsers= value systemd-nspawn accepts: {why}",
            shown(mode)
        ))
    };
    let Some(b) = num(base) else {
        return bad("not no, yes, pick, identity or UID[:RANGE]");
    };
    let r = match range {
        None => 65536,
        Some(r) => match num(r) {
            Some(r) => r,
            None => return bad("the range is not a number"),
        },
    };
    if b == 65535 || b >= 4_294_967_295 {
        return bad("65535 and 4294967295 are not valid UIDs");
    }
    if r == 0 || b + r > 4_294_967_295 {
        return bad("the range is empty or runs past the last valid UID (4294967294)");
    }
    Ok(())
}

/// One value [`refuse_unwritable`] took out of an instance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// Where it would have gone, for the message: `[Service] CPUQuota= of systemd-nspawn@web.service`.
    pub target: String,
    /// The value as the model held it (raw: print it with [`shown`]).
    pub value: String,
    pub reason: String,
    /// What the administrator should do, completing "Fix: ".
    pub fix: &'static str,
}

const FIX_CHARS: &str = "remove the character from the legacy definition and migrate again, or add the \
                         setting by hand to the generated configuration";

fn retain_section(
    file: File,
    section: &str,
    place: &str,
    map: &mut BTreeMap<String, Vec<String>>,
    out: &mut Vec<Refusal>,
) {
    for (k, vs) in map.iter_mut() {
        vs.retain(|v| match value(file, section, k, v) {
            Ok(_) => true,
            Err(r) => {
                out.push(Refusal {
                    target: format!("[{section}] {}= of {place}", shown(k)),
                    value: v.clone(),
                    reason: r.reason,
                    fix: FIX_CHARS,
                });
                false
            }
        });
    }
    map.retain(|_, vs| !vs.is_empty());
}

fn check_one(
    file: File,
    section: &str,
    key: &str,
    v: &str,
    place: &str,
    out: &mut Vec<Refusal>,
) -> bool {
    match value(file, section, key, v) {
        Ok(_) => true,
        Err(r) => {
            out.push(Refusal {
                target: format!("[{section}] {key}= of {place}"),
                value: v.to_string(),
                reason: r.reason,
                fix: FIX_CHARS,
            });
            false
        }
    }
}

/// Take every value out of `i` that the writer would refuse, wherever it would be rendered
/// (raw `.nspawn` keys, the drop-in, networkd units, and the module options that the NixOS
/// module renders into those files), and say what was taken. The translator turns each
/// [`Refusal`] into a `unit-value-refused` warning; the renderers then never meet one.
pub fn refuse_unwritable(i: &mut Instance) -> Vec<Refusal> {
    let mut out = Vec::new();
    let nspawn = format!("{}.nspawn", i.name);
    let service = format!("systemd-nspawn@{}.service", i.name);
    for (sec, map) in [
        ("Exec", &mut i.raw_nspawn.exec),
        ("Files", &mut i.raw_nspawn.files),
        ("Network", &mut i.raw_nspawn.network),
    ] {
        retain_section(File::Nspawn, sec, &nspawn, map, &mut out);
    }
    for (sec, map) in [
        ("Unit", &mut i.dropin.unit),
        ("Service", &mut i.dropin.service),
    ] {
        retain_section(File::Unit, sec, &service, map, &mut out);
    }
    for units in [&mut i.host_networks, &mut i.guest_networks] {
        units.retain_mut(|u| {
            if let Some(c) = control(&u.file_name) {
                out.push(Refusal {
                    target: format!("networkd unit {}", shown(&u.file_name)),
                    value: u.file_name.clone(),
                    reason: format!("its file name holds {}", control_name(c)),
                    fix: FIX_CHARS,
                });
                return false;
            }
            let place = shown(&u.file_name);
            for (sec, keys) in u.sections.iter_mut() {
                keys.retain(|(k, v)| check_one(File::Networkd, sec, k, v, &place, &mut out));
            }
            true
        });
    }
    // Options the NixOS module renders (bind mounts, addresses, zone, bridge, timeout).
    i.spec.bind_mounts.retain(|b| {
        let v = bind_spec(b.host_path.as_deref(), &b.mount_point, b.options.as_deref());
        let key = if b.is_read_only {
            "BindReadOnly"
        } else {
            "Bind"
        };
        check_one(File::Nspawn, "Files", key, &v, &nspawn, &mut out)
    });
    if let Some(t) = &i.spec.timeout_start_sec
        && !check_one(
            File::Unit,
            "Service",
            "TimeoutStartSec",
            t,
            &service,
            &mut out,
        )
    {
        i.spec.timeout_start_sec = None;
    }
    if let Err(reason) = private_users_valid(&i.spec.private_users.mode) {
        out.push(Refusal {
            target: format!("[Exec] PrivateUsers= of {nspawn}"),
            value: i.spec.private_users.mode.clone(),
            reason,
            fix: "privateUsers is now \"no\" (legacy's --private-users= flag failed the same way, so the \
                  legacy container could not start; in a .nspawn file nspawn would ignore the line and \
                  systemd-nspawn@.service's own -U would pick a range and chown the tree); choose a valid \
                  base UID, \"pick\" or \"identity\" if the container needs user namespacing",
        });
        i.spec.private_users.mode = "no".into();
        i.spec.private_users.ownership = None;
    }
    if let Some(n) = &mut i.spec.network {
        for st in [&mut n.v4, &mut n.v6] {
            for list in [&mut st.host_addresses, &mut st.container_pool] {
                list.retain(|a| {
                    check_one(
                        File::Networkd,
                        "Network",
                        "Address",
                        a,
                        "the veth units",
                        &mut out,
                    )
                });
            }
        }
        for (key, v) in [("Zone", &mut n.zone), ("Bridge", &mut n.bridge)] {
            if let Some(x) = v
                && !check_one(File::Nspawn, "Network", key, x, &nspawn, &mut out)
            {
                *v = None;
            }
        }
    }
    // Whatever else the module renders from the options (names, ports, modes): nothing left
    // to take out here, but never silent. (An invalid container name also blocks the plan.)
    let module = super::nspawn::module_settings(&i.name, &i.spec);
    for (sec, map) in [
        ("Exec", &module.exec),
        ("Files", &module.files),
        ("Network", &module.network),
    ] {
        for (k, vs) in map {
            for v in vs {
                check_one(File::Nspawn, sec, k, v, &nspawn, &mut out);
            }
        }
    }
    for u in super::networkd::module_networks(&i.name, &i.spec) {
        let place = shown(&u.file_name);
        for (sec, keys) in &u.sections {
            for (k, v) in keys {
                check_one(File::Networkd, sec, k, v, &place, &mut out);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_refused_never_written() {
        for bad in [
            "50%\0ExecStartPre=/x",
            "a\nb",
            "a\rb",
            "a\x1bb",
            "a\x7fb",
            "\t",
        ] {
            for file in [File::Nspawn, File::Networkd, File::Unit] {
                assert!(value(file, "Exec", "Environment", bad).is_err(), "{bad:?}");
                let l = line(file, "Service", "CPUQuota", bad);
                assert!(
                    l.starts_with("# nixos-nspawn: CPUQuota= not written"),
                    "{l}"
                );
                assert_eq!(l.matches('\n').count(), 1, "{l:?}");
                assert!(!l.contains('\0') && !l.contains('\r'));
            }
        }
        assert!(value(File::Unit, "Service", "Bad\nKey", "1").is_err());
        assert!(value(File::Unit, "Service", "Bad=Key", "1").is_err());
    }

    #[test]
    fn percent_is_doubled_only_where_units_expand_specifiers() {
        assert_eq!(
            value(File::Unit, "Service", "Environment", "A=50%").as_deref(),
            Ok("A=50%%")
        );
        assert_eq!(
            value(File::Unit, "Service", "CPUQuota", "50%").as_deref(),
            Ok("50%")
        );
        assert_eq!(
            value(File::Nspawn, "Exec", "Hostname", "a%b").as_deref(),
            Ok("a%b")
        );
        assert_eq!(
            value(File::Networkd, "Network", "Address", "%H").as_deref(),
            Ok("%H")
        );
    }

    #[test]
    fn nspawn_words_are_quoted_when_nspawn_would_split_them() {
        assert_eq!(nspawn_word("A=1"), "A=1");
        assert_eq!(nspawn_word("A=1 2"), "\"A=1 2\"");
        assert_eq!(nspawn_word("D=q\"r"), "\"D=q\"'\"'\"r\"");
        assert_eq!(nspawn_word("E=a\\"), "\"E=a\\\"");
        assert_eq!(nspawn_word("\""), "'\"'");
        assert_eq!(nspawn_word(""), "\"\"");
    }

    #[test]
    fn trailing_backslash_and_outer_space_are_refused_where_not_quotable() {
        assert!(value(File::Unit, "Service", "Environment", "A=1\\").is_err());
        assert!(value(File::Networkd, "Network", "Address", " 10.0.0.1").is_err());
        assert!(value(File::Unit, "Unit", "After", "x ").is_err());
    }

    #[test]
    fn bind_specs_escape_and_read_back() {
        assert_eq!(
            bind_spec(Some("/srv/a:b"), "/c", None),
            "/srv/a\\:b:/c".to_string()
        );
        assert_eq!(bind_spec(None, "/x\\y", Some("idmap")), "/x\\\\y:idmap");
        for (h, m, o) in [
            (Some("/srv/a:b"), "/c:d", Some("rbind")),
            (Some("/a\\b"), "/c", None),
            (None, "/m:n", None),
            (Some("/p"), "/q", Some("norbind,idmap")),
        ] {
            let s = bind_spec(h, m, o);
            let (src, dst, opts) = split_bind_spec(&s);
            match h {
                Some(h) => {
                    assert_eq!(src, h);
                    assert_eq!(dst.as_deref(), Some(m));
                    assert_eq!(opts.as_deref(), o);
                }
                None => {
                    assert_eq!(src, m);
                    assert_eq!(dst.as_deref(), o);
                }
            }
        }
        assert!(has_bare_colon("/srv/a:b"));
        assert!(!has_bare_colon("/srv/a\\:b"));
        assert_eq!(unescape_bind_path("/srv/a\\:b\\\\c"), "/srv/a:b\\c");
    }

    #[test]
    fn private_users_range_as_nspawn_checks_it() {
        for ok in [
            "no",
            "pick",
            "identity",
            "yes",
            "0",
            "524288",
            "524288:65536",
            "4294967294:1",
            "1:65535",
            "65534:2",
            "2147483648",
        ] {
            assert_eq!(private_users_valid(ok), Ok(()), "{ok}");
        }
        for bad in [
            "4294967295",
            "4294967294",
            "65535",
            "65535:1",
            "1:0",
            "4294901760:65536",
            "1:4294967295",
            "99999999999",
            "x",
            "1:",
        ] {
            assert!(private_users_valid(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn shown_keeps_everything_on_one_line() {
        assert_eq!(shown("a\0b\nc\x1b\\"), "a\\0b\\nc\\x1b\\\\");
        assert_eq!(shown("x\u{85}\u{2028}"), "x\\u{85}\\u{2028}");
    }
}
