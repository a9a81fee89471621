//! Reload or restart? The RFC's rule, decided from the unit files themselves (pure, no I/O).
//!
//! `Parameters=` in the `.nspawn` file points at the container's system: when it is the only
//! thing that differs, the new system can be activated inside the running container (reload,
//! `switch-to-configuration test`). Anything else in the `.nspawn` file, a host network unit or
//! the service drop-in only takes effect when systemd-nspawn starts again (restart). The
//! decision always carries its reasons, so that the administrator sees *why*.

use std::collections::BTreeMap;
use std::fmt;

/// One container's rendered files, by role: `NAME.nspawn`, `*.network`, [`DROPIN`].
pub type Files = BTreeMap<String, String>;

/// The key of the service drop-in among a container's files.
pub const DROPIN: &str = "dropin.conf";

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    Nothing,
    Reload,
    Restart,
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Action::Nothing => "nothing",
            Action::Reload => "reload",
            Action::Restart => "restart",
        })
    }
}

/// What `--reload` / `--restart` asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Override {
    Reload,
    Restart,
}

/// What changed between two sets of files.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Changes {
    /// `Parameters=` (the container's system) changed.
    pub system: bool,
    /// Every other change, one line each ("[Files] Bind= changed").
    pub restart_reasons: Vec<String>,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        !self.system && self.restart_reasons.is_empty()
    }
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Decision {
    pub action: Action,
    /// Why, one reason per entry.
    pub reasons: Vec<String>,
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.action, self.reasons.join("; "))
    }
}

/// `(section, key) → values in order`, comments and blank lines ignored.
fn parse_unit(text: &str) -> BTreeMap<(String, String), Vec<String>> {
    let mut out: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    let mut section = String::new();
    for line in text.lines() {
        let l = line.trim();
        if l.is_empty() || l.starts_with('#') || l.starts_with(';') {
            continue;
        }
        if let Some(s) = l.strip_prefix('[').and_then(|s| s.strip_suffix(']')) {
            section = s.to_string();
            continue;
        }
        let (k, v) = l.split_once('=').unwrap_or((l, ""));
        out.entry((section.clone(), k.trim().to_string()))
            .or_default()
            .push(v.trim().to_string());
    }
    out
}

/// Keys whose values differ between two unit texts, as "[Section] Key=".
fn differing_keys(old: &str, new: &str, skip: &[(&str, &str)]) -> Vec<String> {
    let (a, b) = (parse_unit(old), parse_unit(new));
    let mut keys: Vec<&(String, String)> = a.keys().chain(b.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter(|(s, k)| !skip.iter().any(|(ss, kk)| s == ss && k == kk))
        .filter_map(|key| {
            let verb = match (a.get(key), b.get(key)) {
                (Some(x), Some(y)) if x == y => return None,
                (Some(_), Some(_)) => "changed",
                (None, _) => "added",
                (_, None) => "removed",
            };
            Some(format!("[{}] {}= {verb}", key.0, key.1))
        })
        .collect()
}

fn parameters(text: &str) -> Option<Vec<String>> {
    parse_unit(text).remove(&("Exec".to_string(), "Parameters".to_string()))
}

/// Compare the installed files with the new ones. `nspawn_key` is the `.nspawn` file's key.
pub fn changes(old: &Files, new: &Files, nspawn_key: &str) -> Changes {
    let mut c = Changes::default();
    let mut keys: Vec<&String> = old.keys().chain(new.keys()).collect();
    keys.sort();
    keys.dedup();
    for key in keys {
        let label = if key == DROPIN {
            "service drop-in".to_string()
        } else {
            key.clone()
        };
        match (old.get(key), new.get(key)) {
            (Some(a), Some(b)) if a == b => {}
            (Some(a), Some(b)) => {
                if key == nspawn_key {
                    c.system = parameters(a) != parameters(b);
                    c.restart_reasons
                        .extend(differing_keys(a, b, &[("Exec", "Parameters")]));
                } else {
                    c.restart_reasons.extend(
                        differing_keys(a, b, &[])
                            .into_iter()
                            .map(|r| format!("{label}: {r}")),
                    );
                }
            }
            (None, Some(_)) => c.restart_reasons.push(format!("{label} added")),
            (Some(_), None) => c.restart_reasons.push(format!("{label} removed")),
            (None, None) => {}
        }
    }
    c
}

/// The RFC's decision for `strategy` (`dynamic`, `reload`, `restart`, `none`), unless
/// `--reload`/`--restart` overrides it.
pub fn decide(c: &Changes, strategy: &str, over: Option<Override>) -> Decision {
    let pending = |mut reasons: Vec<String>| {
        if !c.restart_reasons.is_empty() {
            reasons.push(format!(
                "not applied until the next restart: {}",
                c.restart_reasons.join(", ")
            ));
        }
        reasons
    };
    match over {
        Some(Override::Restart) => {
            let mut reasons = vec!["--restart given".to_string()];
            reasons.extend(c.restart_reasons.iter().cloned());
            return Decision {
                action: Action::Restart,
                reasons,
            };
        }
        Some(Override::Reload) => {
            return Decision {
                action: Action::Reload,
                reasons: pending(vec!["--reload given".to_string()]),
            };
        }
        None => {}
    }
    if c.is_empty() {
        return Decision {
            action: Action::Nothing,
            reasons: vec!["the container's system and units are unchanged".to_string()],
        };
    }
    match strategy {
        "none" => Decision {
            action: Action::Nothing,
            reasons: vec![
                "activation.strategy is \"none\" (the changes apply at the next start)".to_string(),
            ],
        },
        "reload" => Decision {
            action: Action::Reload,
            reasons: pending(vec!["activation.strategy is \"reload\"".to_string()]),
        },
        "restart" => {
            let mut reasons = vec!["activation.strategy is \"restart\"".to_string()];
            reasons.extend(c.restart_reasons.iter().cloned());
            Decision {
                action: Action::Restart,
                reasons,
            }
        }
        // "dynamic" (the default), and anything unknown is treated like it.
        _ => {
            if c.restart_reasons.is_empty() {
                Decision {
                    action: Action::Reload,
                    reasons: vec!["only the container's system changed (Parameters=)".to_string()],
                }
            } else {
                Decision {
                    action: Action::Restart,
                    reasons: c.restart_reasons.clone(),
                }
            }
        }
    }
}

/// A line diff of two texts (`-`/`+`/` ` prefixes), for `--dry-run`.
pub fn diff_lines(old: &str, new: &str) -> String {
    let a: Vec<&str> = old.lines().collect();
    let b: Vec<&str> = new.lines().collect();
    // Longest common subsequence table; unit files are small.
    let mut lcs = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            lcs[i][j] = if a[i] == b[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let (mut i, mut j) = (0, 0);
    let mut out = String::new();
    while i < a.len() || j < b.len() {
        if i < a.len() && j < b.len() && a[i] == b[j] {
            out += &format!("  {}\n", a[i]);
            i += 1;
            j += 1;
        } else if i < a.len() && (j == b.len() || lcs[i + 1][j] >= lcs[i][j + 1]) {
            out += &format!("- {}\n", a[i]);
            i += 1;
        } else {
            out += &format!("+ {}\n", b[j]);
            j += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "# header\n[Exec]\nBoot=no\nParameters=/nix/store/aaa-system/init\n\n[Files]\nBindReadOnly=/nix/store\n\n[Network]\nVirtualEthernet=yes\n";

    fn files(nspawn: &str, net: Option<&str>) -> Files {
        let mut f = Files::new();
        f.insert("web.nspawn".into(), nspawn.into());
        if let Some(n) = net {
            f.insert("20-ve-web.network".into(), n.into());
        }
        f
    }

    #[test]
    fn table_of_decisions() {
        let params = BASE.replace("aaa", "bbb");
        let bind = params.replace(
            "BindReadOnly=/nix/store\n",
            "BindReadOnly=/nix/store\nBind=/srv:/srv\n",
        );
        let old = files(BASE, Some("[Network]\nAddress=0.0.0.0/28\n"));
        let only_sys = files(&params, Some("[Network]\nAddress=0.0.0.0/28\n"));
        let with_bind = files(&bind, Some("[Network]\nAddress=0.0.0.0/28\n"));
        let net = files(BASE, Some("[Network]\nAddress=10.0.0.1/24\n"));
        let cases: &[(&Files, &str, Option<Override>, Action, &str)] = &[
            (&old, "dynamic", None, Action::Nothing, "unchanged"),
            (
                &only_sys,
                "dynamic",
                None,
                Action::Reload,
                "only the container's system changed (Parameters=)",
            ),
            (
                &with_bind,
                "dynamic",
                None,
                Action::Restart,
                "[Files] Bind= added",
            ),
            (
                &net,
                "dynamic",
                None,
                Action::Restart,
                "20-ve-web.network: [Network] Address= changed",
            ),
            (
                &only_sys,
                "restart",
                None,
                Action::Restart,
                "activation.strategy is \"restart\"",
            ),
            (
                &with_bind,
                "reload",
                None,
                Action::Reload,
                "not applied until the next restart: [Files] Bind= added",
            ),
            (&with_bind, "none", None, Action::Nothing, "\"none\""),
            (
                &with_bind,
                "dynamic",
                Some(Override::Reload),
                Action::Reload,
                "--reload given",
            ),
            (
                &only_sys,
                "none",
                Some(Override::Restart),
                Action::Restart,
                "--restart given",
            ),
        ];
        for (new, strategy, over, action, why) in cases {
            let d = decide(&changes(&old, new, "web.nspawn"), strategy, *over);
            assert_eq!(d.action, *action, "{strategy} {over:?}: {d}");
            assert!(d.to_string().contains(why), "{strategy} {over:?}: {d}");
        }
    }

    #[test]
    fn comments_do_not_count_and_units_appear() {
        let old = files(BASE, None);
        let new = files(
            &BASE.replace("# header", "# other"),
            Some("[Match]\nName=ve-web\n"),
        );
        let c = changes(&old, &new, "web.nspawn");
        assert!(!c.system);
        assert_eq!(c.restart_reasons, vec!["20-ve-web.network added"]);
    }

    #[test]
    fn diff_marks_added_and_removed_lines() {
        let d = diff_lines("a\nb\nc\n", "a\nc\nd\n");
        assert_eq!(d, "  a\n- b\n  c\n+ d\n");
    }
}
