//! The report: the one place that turns results into text, for people and for `--json`.
//!
//! The JSON shape is a contract (design.md §3): `version`, `containers[]` with `name`, `kind`,
//! `state.from`/`state.to`, `nix`, `nspawn`, `warnings[]` (`code`, `option`, `message`). Keys are
//! only ever added. Paths are host paths (as seen from inside `--root`).

use crate::plan::Step;
use crate::translate::Applied;
use crate::warnings::{Category, Warning};
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

pub const REPORT_VERSION: u32 = 1;

#[derive(Clone, Debug, Serialize)]
pub struct StateReport {
    pub from: Option<PathBuf>,
    pub to: PathBuf,
}

#[derive(Clone, Debug, Serialize)]
pub struct ContainerReport {
    pub name: String,
    /// `declarative` or `imperative`.
    pub kind: &'static str,
    pub state: StateReport,
    /// The emitted Nix for this container (declarative: its part of the host file;
    /// imperative: its container file).
    pub nix: String,
    /// The `.nspawn` text the container will get (`Parameters=@toplevel@/init` stands for the
    /// system built from `system-config`).
    pub nspawn: String,
    /// networkd files (host and guest side), file name → text.
    pub networkd: BTreeMap<String, String>,
    /// The `systemd-nspawn@NAME.service` drop-in, when one is needed.
    pub dropin: Option<String>,
    /// Rewritten copies of files the guest config imports: host path → text (what is written).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub guest_files: BTreeMap<String, String>,
    /// What each legacy option became.
    pub translated: Vec<Applied>,
    pub warnings: Vec<Warning>,
    /// What `migrate` does for this container, in order.
    pub plan: Vec<Step>,
    /// What happened (filled by a real run; absent in a dry run).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub done: Vec<String>,
    /// Every file this container's steps write, host path → the exact bytes written (the
    /// imperative container file, its trusted `.nspawn` file and drop-in). What the dry run
    /// shows here is what `--yes` writes, byte for byte.
    pub files: BTreeMap<PathBuf, String>,
    /// Where the run got with this container: `planned` (dry run), `done`, `failed`,
    /// `not-reached` (an earlier failure or refusal stopped the run), `blocked`, `excluded`.
    pub status: ContainerStatus,
    /// Files a real run wrote for this container (as resolved inside the root).
    pub files_written: Vec<PathBuf>,
    /// The migration record `--rollback`/`--cleanup` work from (written by a real run before
    /// the container's first step; not a configuration file, so not in `files_written`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub record: Option<PathBuf>,
    /// What the state step did: counts, verification by method, inode flags (real run only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state_result: Option<crate::state::StateSummary>,
}

/// Where a run got with one container (see [`ContainerReport::status`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ContainerStatus {
    Planned,
    Done,
    Failed,
    NotReached,
    Blocked,
    Excluded,
}

/// How a run ended, for fleets: the same four outcomes as the exit codes (see `--help`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// Done (dry run: can be done) without follow-up. Exit 0.
    #[default]
    Success,
    /// Done (dry run: can be done), but warnings need a human. Exit 3.
    FollowUp,
    /// A precondition failed; nothing was written. Exit 4.
    Refused,
    /// A step failed; what was done before it stays done. Exit 1.
    Failed,
}

impl Outcome {
    pub fn exit_code(self) -> u8 {
        use crate::error::exit;
        match self {
            Outcome::Success => exit::SUCCESS,
            Outcome::FollowUp => exit::NEEDS_FOLLOW_UP,
            Outcome::Refused => exit::REFUSED,
            Outcome::Failed => exit::ERROR,
        }
    }
}

/// Why a run was refused or failed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RunError {
    /// The container the failure belongs to; absent for host-wide checks and files.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    pub message: String,
    /// For a refusal: every problem found before the first write, one line each.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<String>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Summary {
    /// How the run ended; `exit_code` is the process's exit code for it.
    pub outcome: Outcome,
    pub containers: usize,
    pub needs_human: usize,
    pub changed_meaning: usize,
    pub exit_code: u8,
}

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub version: u32,
    pub tool: String,
    /// The host root the run looked at (an ordinary path).
    pub root: PathBuf,
    pub dry_run: bool,
    /// Where the declarative Nix goes (host path); `None` when nothing is declarative.
    pub output: Option<PathBuf>,
    /// The whole Nix file that will be written to `output`.
    pub nix_file: Option<String>,
    pub containers: Vec<ContainerReport>,
    /// Findings not tied to one container.
    pub problems: Vec<Warning>,
    /// Files written by a real run (host paths, as resolved inside the root: a file written
    /// through an impermanence link is listed where it really is).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub files_written: Vec<PathBuf>,
    /// Destinations that a link inside the tree sends elsewhere (host path → where it really
    /// leads, also a host path): e.g. `/etc/nixos/…` → `/persist/etc/nixos/…`.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub redirects: BTreeMap<PathBuf, PathBuf>,
    /// With `--rewrite`: every host file edited in place, with its original's digest and its
    /// whole new content (exactly what is written).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub rewritten: Vec<crate::plan_file::RewrittenFile>,
    /// What a real run did outside any one container (the declarative Nix file).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub done: Vec<String>,
    pub files_read: Vec<PathBuf>,
    /// Why the run was refused or failed (`summary.outcome` is `refused` or `failed`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<RunError>,
    pub summary: Summary,
}

impl Report {
    /// Count warnings and set the exit code: follow-up needed when any warning needs a human.
    pub fn finish_summary(&mut self) {
        let all = self
            .containers
            .iter()
            .flat_map(|c| c.warnings.iter())
            .chain(self.problems.iter());
        let (mut human, mut changed) = (0, 0);
        for w in all {
            match w.category {
                Category::NeedsHuman => human += 1,
                Category::ChangedMeaning => changed += 1,
            }
        }
        let outcome = match &self.error {
            Some(_) if self.summary.outcome == Outcome::Refused => Outcome::Refused,
            Some(_) => Outcome::Failed,
            None if human > 0 => Outcome::FollowUp,
            None => Outcome::Success,
        };
        self.summary = Summary {
            outcome,
            containers: self.containers.len(),
            needs_human: human,
            changed_meaning: changed,
            exit_code: outcome.exit_code(),
        };
    }

    /// Record why the run stopped; `refused` when nothing was written.
    pub fn set_error(&mut self, error: RunError, refused: bool) {
        self.error = Some(error);
        self.summary.outcome = if refused {
            Outcome::Refused
        } else {
            Outcome::Failed
        };
        self.finish_summary();
    }

    pub fn to_json(&self) -> String {
        // Serialising plain data cannot fail; fall back to an error object rather than panic.
        serde_json::to_string_pretty(self).unwrap_or_else(|e| {
            format!("{{\"version\":1,\"error\":\"cannot serialise report: {e}\"}}")
        })
    }

    /// The human report: grouped per container into translated / changed meaning / needs a human.
    pub fn to_text(&self) -> String {
        let mut o = String::new();
        let what = if self.dry_run {
            "dry run, nothing was changed"
        } else {
            "migration"
        };
        let _ = writeln!(
            o,
            "nixos-nspawn migrate ({what}) on {}",
            safe_path(&self.root)
        );
        if self.containers.is_empty() {
            let _ = writeln!(o, "\nNo legacy containers found.");
        }
        for c in &self.containers {
            let _ = writeln!(o, "\n━━ {} ({}) ━━", safe(&c.name), c.kind);
            match &c.state.from {
                Some(f) => {
                    let _ = writeln!(o, "state: {} → {}", safe_path(f), safe_path(&c.state.to));
                }
                None => {
                    let _ = writeln!(
                        o,
                        "state: none (→ {} is created on first start)",
                        safe_path(&c.state.to)
                    );
                }
            }
            if !c.translated.is_empty() {
                let _ = writeln!(o, "\n  translated:");
                for a in &c.translated {
                    let _ = writeln!(o, "    {} → {}", safe(&a.option), safe(&a.target));
                }
            }
            for (cat, title) in [
                (Category::ChangedMeaning, "changed meaning"),
                (Category::NeedsHuman, "NEEDS A HUMAN"),
            ] {
                let ws: Vec<&Warning> = c.warnings.iter().filter(|w| w.category == cat).collect();
                if ws.is_empty() {
                    continue;
                }
                let _ = writeln!(o, "\n  {title}:");
                for w in ws {
                    write_warning(&mut o, w, Some(&c.name));
                }
            }
            let _ = writeln!(o, "\n  plan:");
            for (n, s) in c.plan.iter().enumerate() {
                let _ = writeln!(o, "    {}. {}", n + 1, safe(&s.describe()));
            }
            for d in &c.done {
                let _ = writeln!(o, "    done: {}", safe(&d.to_string()));
            }
            if c.files.is_empty() {
                let _ = writeln!(o, "\n  new configuration (its part of the Nix file below):");
                indent(&mut o, &c.nix, "    ");
                let _ = writeln!(
                    o,
                    "\n  {}.nspawn (generated by the nixos-nspawn module at build time):",
                    safe(&c.name)
                );
                indent(&mut o, &c.nspawn, "    ");
            }
            for (path, text) in &c.files {
                write_exact(&mut o, path, text, self.dry_run);
            }
            for (file, text) in &c.networkd {
                let _ = writeln!(o, "\n  {}:", safe(&file.to_string()));
                indent(&mut o, text, "    ");
            }
            if let Some(d) = c.dropin.as_ref().filter(|_| c.files.is_empty()) {
                let _ = writeln!(
                    o,
                    "\n  systemd-nspawn@{}.service drop-in (generated by the module):",
                    safe(&c.name)
                );
                indent(&mut o, d, "    ");
            }
            if !self.dry_run {
                let _ = writeln!(o, "\n  status: {}", c.status.as_str());
            }
        }
        if !self.problems.is_empty() || !self.redirects.is_empty() {
            let _ = writeln!(o, "\n━━ host ━━");
            for w in &self.problems {
                write_warning(&mut o, w, None);
            }
            for (from, to) in &self.redirects {
                let _ = writeln!(
                    o,
                    "    {} is reached through a link: it is {}",
                    safe_path(from),
                    safe_path(to)
                );
            }
        }
        if let Some(out) = &self.output {
            let verb = if self.dry_run {
                "would be written to"
            } else {
                "written to"
            };
            let _ = writeln!(
                o,
                "\nThe declarative configuration {verb} {}.",
                safe_path(out)
            );
            let _ = writeln!(
                o,
                "Import it from your configuration.nix (imports = [ ./{} ];) together with the nixos-nspawn module, \
                 and remove the legacy containers.<name> definitions.",
                out.file_name()
                    .map(|f| f.to_string_lossy())
                    .unwrap_or_default()
            );
            if let Some(text) = &self.nix_file {
                write_exact(&mut o, out, text, self.dry_run);
            }
        }
        for d in &self.done {
            let _ = writeln!(o, "done: {}", safe(&d.to_string()));
        }
        let s = &self.summary;
        let _ = writeln!(
            o,
            "\n{} container(s); {} point(s) need a human, {} changed meaning.",
            s.containers, s.needs_human, s.changed_meaning
        );
        if let Some(e) = &self.error {
            let _ = writeln!(
                o,
                "{}: {}",
                if s.outcome == Outcome::Refused {
                    "REFUSED, nothing was written"
                } else {
                    "FAILED"
                },
                e.message
            );
        }
        o
    }
}

impl ContainerStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ContainerStatus::Planned => "planned",
            ContainerStatus::Done => "done",
            ContainerStatus::Failed => "failed",
            ContainerStatus::NotReached => "not reached (the run stopped before it)",
            ContainerStatus::Blocked => "blocked",
            ContainerStatus::Excluded => "excluded",
        }
    }
}

/// A file exactly as it is (or would be) written, between two marker lines, not indented: the
/// bytes between the markers are the file's bytes.
fn write_exact(o: &mut String, path: &Path, text: &str, dry_run: bool) {
    let _ = writeln!(
        o,
        "\n──── {} ({}, exactly these bytes) ────",
        safe_path(path),
        if dry_run {
            "would be written"
        } else {
            "written"
        }
    );
    o.push_str(text);
    if !text.ends_with('\n') {
        o.push_str("\n[no newline at the end of the file]\n");
    }
    let _ = writeln!(o, "──── end of {} ────", safe_path(path));
}

/// `name` is the container the warning is about: a control character in it (a file
/// `/etc/nixos-containers/a<newline>b.conf`) is escaped wherever the message quotes it, so that
/// it does not break the message into lines of its own.
fn write_warning(o: &mut String, w: &Warning, name: Option<&str>) {
    let loc = match (&w.file, w.line) {
        (Some(f), Some(l)) => format!("{}:{}", safe_path(f), l),
        (Some(f), None) => safe_path(f),
        _ => String::new(),
    };
    // Messages usually start with the option and its location already; do not repeat them.
    let mut head = format!("    [{}]", w.code);
    if !w.message.starts_with(&w.option) {
        head.push(' ');
        head.push_str(&safe(&w.option));
        if !loc.is_empty() && !w.message.contains(&loc) {
            head.push_str(&format!(" ({loc})"));
        }
    }
    let _ = writeln!(o, "{head}");
    let message = match name {
        Some(n) if n.chars().any(char::is_control) => w.message.replace(n, &safe(n)),
        _ => w.message.clone(),
    };
    for line in message.lines() {
        let _ = writeln!(o, "        {}", safe(line));
    }
}

fn indent(o: &mut String, text: &str, pad: &str) {
    for line in text.lines() {
        if line.is_empty() {
            o.push('\n');
        } else {
            let _ = writeln!(o, "{pad}{}", safe(line));
        }
    }
}

/// `s` for a terminal: control characters (a newline or an escape sequence in a container
/// name, a path or a value read from a legacy file) shown as escapes, so that what the report
/// prints cannot fake a line, a heading or terminal output. The JSON report escapes them itself.
fn safe(s: &str) -> std::borrow::Cow<'_, str> {
    if !s.chars().any(char::is_control) {
        return std::borrow::Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\0' => out.push_str("\\0"),
            c if c.is_control() => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    std::borrow::Cow::Owned(out)
}

fn safe_path(p: &std::path::Path) -> String {
    safe(&p.display().to_string()).into_owned()
}

/// A byte count for people: `0 bytes`, `512 bytes`, `4.0 KiB`, `100.0 MiB`, `2.5 GiB`. Never
/// rounds a non-zero amount down to zero (a sparse 100 MiB file is not "0 MiB").
pub fn human_size(n: u64) -> String {
    const UNITS: &[&str] = &["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} bytes");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = UNITS[0];
    for u in &UNITS[1..] {
        if v < 1024.0 {
            break;
        }
        v /= 1024.0;
        unit = u;
    }
    format!("{v:.1} {unit}")
}

#[cfg(test)]
mod size_tests {
    use super::human_size;

    #[test]
    fn sizes_never_round_to_zero() {
        assert_eq!(human_size(0), "0 bytes");
        assert_eq!(human_size(4096), "4.0 KiB");
        assert_eq!(human_size(100 << 20), "100.0 MiB");
        assert_eq!(human_size((5 << 30) / 2), "2.5 GiB");
    }
}
