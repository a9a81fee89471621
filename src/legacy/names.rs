//! Machine-name rules.
//!
//! The new world runs `systemd-nspawn -M NAME` and `systemd-nspawn@NAME.service`; nspawn refuses
//! any name that fails `hostname_is_valid(name, 0)` (systemd 252 `src/basic/hostname-util.c`):
//! 1–64 characters, ASCII letters, digits, `-` and `.`, dot-separated labels that neither start
//! nor end with `-`, no empty label, no leading or trailing dot. (Older systemd also allowed
//! `_`, which is why legacy hosts can have such names.) The tests compare this function with the
//! real `hostname_is_valid` from the installed systemd.

/// Linux `HOST_NAME_MAX`.
pub const MACHINE_NAME_MAX: usize = 64;

/// Longest legacy name whose host-side `ve-NAME` fitted the 15-character interface limit
/// under the legacy assertion (`privateNetwork` on kernels ≤ 5.8, and `nixos-container create`).
pub const LEGACY_VETH_NAME_MAX: usize = 11;

/// Longest name the NixOS module takes: the guest's `networking.hostName` is one DNS label.
pub const MODULE_NAME_MAX: usize = 63;

/// Check `name` the way systemd-nspawn checks `--machine=`, and the NixOS module's rule on top
/// (`validName` in nixos/lib/instance.nix): one host-name label, no `.`, at most 63
/// characters, because the guest's `networking.hostName` type refuses more and
/// switch-to-configuration-ng mis-parses `systemd-nspawn@a.b.service`. The error says what is
/// wrong and what to rename the container to.
pub fn check_machine_name(name: &str) -> Result<(), String> {
    let problem = machine_name_problem(name).or_else(|| module_name_problem(name));
    match problem {
        None => Ok(()),
        Some(p) => {
            let fix = match suggest_machine_name(name) {
                Some(s) => format!("rename the container, for example to {s:?}"),
                None => "rename the container".to_string(),
            };
            Err(format!(
                "{:?} is not a valid container name: {p}. Container names are 1-{MODULE_NAME_MAX} characters: ASCII letters, digits and `-`, not starting or ending with `-` (systemd-nspawn, the container's networking.hostName and switch-to-configuration all take such a name); {fix}",
                name
            ))
        }
    }
}

fn machine_name_problem(name: &str) -> Option<String> {
    if name.is_empty() {
        return Some("it is empty".to_string());
    }
    if name == ".host" {
        return Some("`.host` is reserved for the host itself".to_string());
    }
    let mut dot = true; // at the start of a label
    let mut hyphen = false;
    for (i, c) in name.chars().enumerate() {
        let pos = i + 1;
        match c {
            '.' => {
                if dot {
                    return Some(if i == 0 {
                        "it starts with `.`".to_string()
                    } else {
                        format!("it has an empty label (`..`) at character {pos}")
                    });
                }
                if hyphen {
                    return Some(format!("a label ends with `-` at character {}", pos - 1));
                }
                dot = true;
                hyphen = false;
            }
            '-' => {
                if dot {
                    return Some(if i == 0 {
                        "it starts with `-`".to_string()
                    } else {
                        format!("a label starts with `-` at character {pos}")
                    });
                }
                hyphen = true;
            }
            c if c.is_ascii_alphanumeric() => {
                dot = false;
                hyphen = false;
            }
            '/' => return Some(format!("it contains `/` at character {pos}")),
            c => {
                return Some(format!(
                    "it contains {c:?} at character {pos}, which is not allowed"
                ));
            }
        }
    }
    if dot {
        return Some("it ends with `.`".to_string());
    }
    if hyphen {
        return Some("it ends with `-`".to_string());
    }
    let n = name.chars().count();
    if n > MACHINE_NAME_MAX {
        return Some(format!(
            "it is {n} characters long, more than {MACHINE_NAME_MAX}"
        ));
    }
    None
}

/// What the NixOS module refuses beyond systemd's rule.
fn module_name_problem(name: &str) -> Option<String> {
    if let Some(i) = name.find('.') {
        return Some(format!(
            "it contains `.` at character {} (switch-to-configuration-ng mis-parses systemd-nspawn@<name>.service with a dot, and networking.hostName takes no domain)",
            i + 1
        ));
    }
    let n = name.chars().count();
    if n > MODULE_NAME_MAX {
        return Some(format!(
            "it is {n} characters long, more than {MODULE_NAME_MAX} (networking.hostName)"
        ));
    }
    None
}

/// A valid name close to `name` (invalid characters become `-`, empty labels and edge
/// hyphens dropped, cut to the length limit), or `None` when nothing usable is left.
pub fn suggest_machine_name(name: &str) -> Option<String> {
    let mut labels: Vec<String> = Vec::new();
    for label in name.split('.') {
        let mapped: String = label
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect();
        let mut collapsed = String::new();
        for c in mapped.chars() {
            if !(c == '-' && collapsed.ends_with('-')) {
                collapsed.push(c);
            }
        }
        let t = collapsed.trim_matches('-');
        if !t.is_empty() {
            labels.push(t.to_string());
        }
    }
    let mut out = labels.join("-");
    out.truncate(MODULE_NAME_MAX);
    let out = out.trim_end_matches(['-', '.']).to_string();
    (!out.is_empty() && check_machine_name(&out).is_ok()).then_some(out)
}

/// Notes about names that are legal but risky in the new world (each a full sentence).
pub fn legacy_name_notes(name: &str, private_network: bool) -> Vec<String> {
    let mut notes = Vec::new();
    let len = name.chars().count();
    if private_network && len > LEGACY_VETH_NAME_MAX {
        notes.push(format!(
            "container {name:?} has {len} characters: the host-side interface `ve-{name}` is longer than the 15-character limit, so systemd-nspawn names it with a hash and sets `ve-{name}` only as an alternative name; match it by that altname in networkd and firewall rules, and expect older kernels (before 5.8) or tools without altname support to fail"
        ));
    }
    if name.contains('_') {
        notes.push(format!(
            "container {name:?} contains `_`: current nixpkgs refuses such container names and systemd 247 and later refuse them as machine names; rename it (for example to {:?})",
            suggest_machine_name(name).unwrap_or_else(|| name.replace('_', "-"))
        ));
    }
    if name.chars().any(|c| c.is_ascii_uppercase()) {
        notes.push(format!(
            "container {name:?} has upper-case letters: valid, but host names are case-insensitive, so `machinectl` and DNS may show it in lower case"
        ));
    }
    notes
}

#[cfg(test)]
mod tests {
    use super::*;

    const NAMES: &[&str] = &[
        "web",
        "db",
        "a",
        "A1",
        "web-1",
        "my.container",
        "a.b.c",
        "",
        ".host",
        "../x",
        "a/b",
        "bad..name",
        "nginx_pw",
        "-ab",
        "ab-",
        "a-.b",
        "a.-b",
        ".a",
        "a.",
        "a b",
        "é",
        "x\u{0}y",
        "0",
        "1.2.3.4",
        "a--b",
    ];

    #[test]
    fn verdicts_table() {
        let long64 = "a".repeat(64);
        let long65 = "a".repeat(65);
        let long63 = "a".repeat(63);
        for ok in ["web", "A1", "web-1", "0", "a--b", long63.as_str()] {
            assert_eq!(check_machine_name(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "../x",
            "a/b",
            "bad..name",
            "nginx_pw",
            "-ab",
            "ab-",
            ".host",
            "a.",
            "my.container",
            long64.as_str(),
            long65.as_str(),
        ] {
            let e = check_machine_name(bad).unwrap_err();
            assert!(e.contains("rename"), "{e}");
        }
        assert!(check_machine_name("").unwrap_err().contains("empty"));
        assert!(
            check_machine_name(&long65)
                .unwrap_err()
                .contains("65 characters")
        );
        assert!(
            check_machine_name(&long64)
                .unwrap_err()
                .contains("more than 63")
        );
        assert!(
            check_machine_name("my.container")
                .unwrap_err()
                .contains("\"my-container\"")
        );
        assert!(check_machine_name("a/b").unwrap_err().contains('/'));
        assert!(
            check_machine_name("bad..name")
                .unwrap_err()
                .contains("empty label")
        );
        assert!(
            check_machine_name("nginx_pw")
                .unwrap_err()
                .contains("\"nginx-pw\"")
        );
    }

    #[test]
    fn agrees_with_real_systemd() {
        let Some(sd) = crate::legacy::conf::systemd_oracle::Systemd::load() else {
            eprintln!("skipped: libsystemd-shared not found");
            return;
        };
        let mut names: Vec<String> = NAMES.iter().map(|s| s.to_string()).collect();
        names.push("a".repeat(64));
        names.push("a".repeat(65));
        names.push(format!("{}.b", "a".repeat(62)));
        names.push(format!("{}.b", "a".repeat(63)));
        for n in &names {
            if n.contains('\0') {
                continue;
            }
            // systemd's own rule; check_machine_name adds the module's on top.
            assert_eq!(
                machine_name_problem(n).is_none(),
                sd.hostname_is_valid(n),
                "name {n:?}"
            );
        }
    }

    #[test]
    fn agrees_with_real_systemd_nspawn() {
        // The real command: `systemd-nspawn -M NAME` checks the name before anything else.
        let Ok(out) = std::process::Command::new("systemd-nspawn")
            .arg("--version")
            .output()
        else {
            eprintln!("skipped: no systemd-nspawn");
            return;
        };
        assert!(out.status.success());
        for n in ["web", "bad..name", "nginx_pw", "a.b", "ab-"] {
            let out = std::process::Command::new("systemd-nspawn")
                .args(["-M", n, "-D", "/nonexistent-nixos-nspawn-test", "true"])
                .output()
                .unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(
                err.contains("Invalid machine name"),
                machine_name_problem(n).is_some(),
                "{n}: {err}"
            );
        }
    }

    #[test]
    fn suggestions_are_valid() {
        for n in NAMES {
            if let Some(s) = suggest_machine_name(n) {
                assert_eq!(check_machine_name(&s), Ok(()), "{n} -> {s}");
            }
        }
        assert_eq!(suggest_machine_name("../x").as_deref(), Some("x"));
        assert_eq!(
            suggest_machine_name("bad..name").as_deref(),
            Some("bad-name")
        );
        assert_eq!(suggest_machine_name("").as_deref(), None);
        assert_eq!(suggest_machine_name(&"b".repeat(70)).unwrap().len(), 63);
    }

    #[test]
    fn notes_for_risky_names() {
        assert!(legacy_name_notes("web", true).is_empty());
        assert!(legacy_name_notes("averylongname", false).is_empty());
        let n = legacy_name_notes("averylongname", true);
        assert_eq!(n.len(), 1);
        assert!(n[0].contains("ve-averylongname"));
        // Dots are no longer a note: check_machine_name refuses them.
        assert!(legacy_name_notes("my.box", false).is_empty());
        assert!(check_machine_name("my.box").is_err());
        assert!(legacy_name_notes("nginx_pw", false)[0].contains("nginx-pw"));
    }
}
