//! Plans as files: `migrate --dry-run --plan-out FILE` saves the reviewed plan, `migrate --yes
//! --plan-in FILE` carries out exactly that plan, or refuses (exit 4, nothing written) with the
//! reason.
//!
//! A plan file holds everything that decides what a run writes: the options it was made with,
//! the steps per container, and the exact bytes of every file (the same bytes the dry run
//! showed). It also holds a fingerprint of what the plan was derived from: the content of every
//! file read (legacy `.conf` files, `container@` unit files, start scripts, the Nix sources,
//! `--from-json`), the identity (device, inode, change time) of every legacy state and profile
//! directory, the host's machine-id, and the tool's version.
//!
//! Applying re-derives the plan from the host as it is now, with the plan's options, and
//! compares: another machine, another tool version, any input that changed, or any byte or step
//! that differs is a refusal naming what differs. Only then are the files written, and they are
//! the plan's bytes (equal to the re-derived ones, checked).

use crate::cli::{StateArg, VerifyArg};
use crate::host::HostRoot;
use crate::migrate::Migration;
use crate::plan::Step;
use rustix::fs::OFlags;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// What a plan file says it is, so that any other JSON is refused with a clear message.
pub const PLAN_KIND: &str = "nixos-nspawn migrate plan";
/// Bumped when the layout changes incompatibly (2: `--rewrite` and `--no-eval` in the options,
/// the rewritten host files, the host evaluation in the fingerprint).
pub const PLAN_FORMAT: u32 = 2;

/// The options a plan was made with; applying it uses these, not the command line's.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanOptions {
    pub config: Option<PathBuf>,
    pub from_json: Option<PathBuf>,
    pub host: Option<String>,
    pub output: PathBuf,
    pub only: Vec<String>,
    pub exclude: Vec<String>,
    pub state: String,
    pub verify: String,
    pub stop: bool,
    pub force: bool,
    /// `--rewrite`: the host's own Nix files are edited in place (their new content is in
    /// [`PlanFile::rewrite`]).
    #[serde(default)]
    pub rewrite: bool,
    /// `--no-eval`: the host's Nix was not asked (see the `host evaluation` input).
    #[serde(default)]
    pub no_eval: bool,
}

impl PlanOptions {
    pub fn state_arg(&self) -> Result<StateArg, String> {
        match self.state.as_str() {
            "copy" => Ok(StateArg::Copy),
            "move" => Ok(StateArg::Move),
            "skip" => Ok(StateArg::Skip),
            s => Err(format!("unknown state mode {s:?}")),
        }
    }
    pub fn verify_arg(&self) -> Result<VerifyArg, String> {
        match self.verify.as_str() {
            "full" => Ok(VerifyArg::Full),
            "metadata" => Ok(VerifyArg::Metadata),
            "none" => Ok(VerifyArg::None),
            s => Err(format!("unknown verify level {s:?}")),
        }
    }
}

pub fn state_name(s: StateArg) -> &'static str {
    match s {
        StateArg::Copy => "copy",
        StateArg::Move => "move",
        StateArg::Skip => "skip",
    }
}

pub fn verify_name(v: VerifyArg) -> &'static str {
    match v {
        VerifyArg::Full => "full",
        VerifyArg::Metadata => "metadata",
        VerifyArg::None => "none",
    }
}

/// The steps of one container.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedContainer {
    pub name: String,
    /// The steps as the report describes them (one line each).
    pub steps: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanFile {
    pub kind: String,
    pub format: u32,
    /// `nixos-nspawn VERSION`: a plan is applied by the version that made it.
    pub tool: String,
    /// The host's `/etc/machine-id` (under `--root`); `None` when it has none.
    pub machine_id: Option<String>,
    /// The `--root` the plan was made on (information only: a disk may be mounted elsewhere).
    pub root: PathBuf,
    /// Seconds since the epoch.
    pub created: u64,
    pub options: PlanOptions,
    /// What the plan was derived from: input → fingerprint (see the module doc).
    pub inputs: BTreeMap<String, String>,
    pub containers: Vec<PlannedContainer>,
    /// Every file the plan writes: host path → the exact bytes.
    pub files: BTreeMap<PathBuf, String>,
    /// With `--rewrite`: every host file edited in place, its original's digest and its full
    /// new content (what `--plan-in` writes, exactly).
    #[serde(default)]
    pub rewrite: Vec<RewrittenFile>,
    /// Warnings that need a human when the plan was made (the run's exit code 3).
    pub needs_human: usize,
}

/// A host file a plan rewrites in place.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RewrittenFile {
    /// Host path.
    pub file: PathBuf,
    /// The containers whose definitions it holds in the new form afterwards.
    pub containers: Vec<String>,
    /// Digest of the file as the plan read it (`blake3 HEX`).
    pub original: String,
    /// The whole file afterwards.
    pub content: String,
}

/// The rewritten files of a `--rewrite` plan.
pub fn rewritten_files(p: &crate::rewrite::RewritePlan) -> Vec<RewrittenFile> {
    p.edits
        .iter()
        .map(|e| RewrittenFile {
            file: e.file.clone(),
            containers: e.containers.clone(),
            original: format!("blake3 {}", blake3::hash(e.original.as_bytes()).to_hex()),
            content: e.rewritten.clone(),
        })
        .collect()
}

/// What the host's own Nix said when it was asked (the `host evaluation` input): the values
/// it gave decide the plan as much as the files do, and may change without any file read
/// changing (a `builtins.readFile`, a channel update). `not_asked`: why it was not asked.
pub fn evaluation_fingerprint(
    evaluated: &Option<crate::migrate::Evaluated>,
    not_asked: &str,
) -> String {
    match evaluated {
        None => format!("not used ({not_asked})"),
        Some(Ok(None)) => "not used (Nix is not installed)".to_string(),
        // The facts are plain data in ordered maps: their Debug form is stable.
        Some(Ok(Some(facts))) => format!(
            "evaluated, blake3 {}",
            blake3::hash(format!("{facts:?}").as_bytes()).to_hex()
        ),
        Some(Err(w)) => format!(
            "failed (values from the source text only), blake3 {}",
            blake3::hash(w.message.as_bytes()).to_hex()
        ),
    }
}

/// Every file the migration writes, path → exact bytes (the per-container files and the
/// declarative Nix file).
pub fn files_of(m: &Migration) -> BTreeMap<PathBuf, String> {
    let mut files = BTreeMap::new();
    for c in &m.report.containers {
        files.extend(c.files.iter().map(|(p, t)| (p.clone(), t.clone())));
    }
    if let (Some(out), Some(text)) = (&m.report.output, &m.report.nix_file) {
        files.insert(out.clone(), text.clone());
    }
    files
}

fn steps_of(m: &Migration) -> Vec<PlannedContainer> {
    m.plan
        .containers
        .iter()
        .map(|c| PlannedContainer {
            name: c.name.clone(),
            steps: c.steps.iter().map(Step::describe).collect(),
        })
        .collect()
}

/// The fingerprint of everything the plan was derived from. `ordinary` lists the files read
/// by ordinary path (`--config` outside the root, `--from-json`); all others are host paths.
pub fn inputs(
    host: &HostRoot,
    m: &Migration,
    ordinary: &[PathBuf],
    evaluation: &str,
) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    out.insert("host evaluation".to_string(), evaluation.to_string());
    for f in &m.report.files_read {
        let bytes = if ordinary.contains(f) {
            std::fs::read(f)
        } else {
            host.read(f)
        };
        out.insert(
            format!("file {}", f.display()),
            match bytes {
                Ok(b) => format!("blake3 {}", blake3::hash(&b).to_hex()),
                Err(e) => format!("unreadable ({})", e.kind()),
            },
        );
    }
    for c in &m.legacy.containers {
        for d in [&c.state_dir, &c.profile_dir].into_iter().flatten() {
            out.insert(format!("directory {}", d.display()), identity(host, d));
        }
    }
    out.insert(
        "machine-id".to_string(),
        machine_id(host).unwrap_or_else(|| "none".to_string()),
    );
    out
}

/// Device, inode and change time: a directory replaced, renamed or re-created since shows.
fn identity(host: &HostRoot, p: &Path) -> String {
    match host
        .open(p, OFlags::PATH | OFlags::NOFOLLOW)
        .and_then(|fd| rustix::fs::fstat(&fd).map_err(Into::into))
    {
        Ok(st) => format!(
            "dev {} ino {} ctime {}.{:09}",
            st.st_dev, st.st_ino, st.st_ctime, st.st_ctime_nsec
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => "absent".to_string(),
        Err(e) => format!("unreadable ({})", e.kind()),
    }
}

pub fn machine_id(host: &HostRoot) -> Option<String> {
    host.read_to_string(Path::new("/etc/machine-id"))
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

pub fn tool() -> String {
    format!("nixos-nspawn {}", env!("CARGO_PKG_VERSION"))
}

/// The plan file for a dry run.
pub fn make(
    host: &HostRoot,
    m: &Migration,
    options: PlanOptions,
    ordinary: &[PathBuf],
    evaluation: &str,
    rewrite: Option<&crate::rewrite::RewritePlan>,
) -> PlanFile {
    PlanFile {
        kind: PLAN_KIND.to_string(),
        format: PLAN_FORMAT,
        tool: tool(),
        machine_id: machine_id(host),
        root: host.root().to_path_buf(),
        created: crate::clock::unix_seconds(),
        options,
        inputs: inputs(host, m, ordinary, evaluation),
        containers: steps_of(m),
        files: files_of(m),
        rewrite: rewrite.map(rewritten_files).unwrap_or_default(),
        needs_human: m.report.summary.needs_human,
    }
}

/// Where `--plan-out` writes: an ordinary path (not under `--root`: it is the administrator's
/// file), its directory opened before the host is sealed read-only for the dry run (that view
/// covers `/` itself with `--root /`, and the plan must still be written).
pub struct Target {
    dir: std::os::fd::OwnedFd,
    name: std::ffi::CString,
    path: PathBuf,
}

impl Target {
    pub fn open(path: &Path) -> Result<Target, String> {
        let parent = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let name = path
            .file_name()
            .ok_or_else(|| format!("{} does not name a file", path.display()))?;
        let name = std::ffi::CString::new(std::os::unix::ffi::OsStrExt::as_bytes(name))
            .map_err(|_| format!("{} contains a NUL byte", path.display()))?;
        let dir = rustix::fs::open(
            parent,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )
        .map_err(|e| format!("{}: {e}", parent.display()))?;
        Ok(Target {
            dir,
            name,
            path: path.to_path_buf(),
        })
    }
}

/// Write the plan, atomically.
pub fn save(plan: &PlanFile, to: &Target) -> Result<(), String> {
    let text = serde_json::to_string_pretty(plan).map_err(|e| format!("cannot serialise: {e}"))?;
    crate::atomic::write_atomic_at(
        std::os::fd::AsFd::as_fd(&to.dir),
        &to.name,
        &to.path,
        format!("{text}\n").as_bytes(),
        0o600,
    )
    .map(|_| ())
    .map_err(|e| e.to_string())
}

/// Read a plan file; a file that is not one is refused with what it is.
pub fn load(path: &Path) -> Result<PlanFile, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read it: {e}"))?;
    let v: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format!("it is not JSON ({e})"))?;
    if v.get("kind").and_then(|k| k.as_str()) != Some(PLAN_KIND) {
        return Err(format!(
            "it is not a plan made by `nixos-nspawn migrate --dry-run --plan-out` (no \"kind\": \"{PLAN_KIND}\")"
        ));
    }
    if v.get("format").and_then(|k| k.as_u64()) != Some(u64::from(PLAN_FORMAT)) {
        return Err(format!(
            "it has plan format {}, this version reads format {PLAN_FORMAT}; make a new plan with this version",
            v.get("format").map(|f| f.to_string()).unwrap_or_default()
        ));
    }
    serde_json::from_value(v).map_err(|e| format!("it is damaged ({e})"))
}

/// Why the plan cannot be applied to this host as it is now, one reason per line; empty when
/// it can. `now` is the plan re-derived from the host with the plan's options.
pub fn differences(plan: &PlanFile, now: &PlanFile) -> Vec<String> {
    let mut why = Vec::new();
    if plan.tool != now.tool {
        why.push(format!(
            "the plan was made by {}, this is {}: make the plan again with this version (or apply it with that one)",
            plan.tool, now.tool
        ));
    }
    if plan.machine_id != now.machine_id {
        why.push(format!(
            "the plan was made on another machine (machine-id {}, this host's is {})",
            plan.machine_id.as_deref().unwrap_or("none"),
            now.machine_id.as_deref().unwrap_or("none")
        ));
        // Every other difference follows from that; do not drown the reason.
        return why;
    }
    for (input, was) in &plan.inputs {
        match now.inputs.get(input) {
            Some(is) if is == was => {}
            Some(is) => why.push(format!(
                "{input} changed since the plan was made ({was} → {is})"
            )),
            None => why.push(format!(
                "{input} is no longer read (the host's configuration changed)"
            )),
        }
    }
    for input in now.inputs.keys() {
        if !plan.inputs.contains_key(input) {
            why.push(format!(
                "{input} is read now but was not when the plan was made (a new file or container)"
            ));
        }
    }
    if plan.containers != now.containers {
        let names =
            |p: &PlanFile| -> Vec<String> { p.containers.iter().map(|c| c.name.clone()).collect() };
        why.push(format!(
            "the steps differ: the plan has containers [{}], the host now gives [{}]",
            names(plan).join(", "),
            names(now).join(", ")
        ));
    }
    for (path, text) in &plan.files {
        match now.files.get(path) {
            Some(t) if t == text => {}
            Some(_) => why.push(format!(
                "{} would now get other content than the plan shows",
                path.display()
            )),
            None => why.push(format!("{} is no longer written", path.display())),
        }
    }
    for path in now.files.keys() {
        if !plan.files.contains_key(path) {
            why.push(format!("{} would now be written too", path.display()));
        }
    }
    for r in &plan.rewrite {
        let f = r.file.display();
        match now.rewrite.iter().find(|n| n.file == r.file) {
            None => why.push(format!(
                "{f} would no longer be rewritten in place (its containers' definitions moved or changed)"
            )),
            Some(n) if n.original != r.original => why.push(format!(
                "{f} changed since the plan was made ({} → {}): the plan's rewrite of it was made from \
                 another original",
                r.original, n.original
            )),
            Some(n) if n.content != r.content || n.containers != r.containers => why.push(format!(
                "{f} would now be rewritten differently than the plan shows"
            )),
            Some(_) => {}
        }
    }
    for n in &now.rewrite {
        if !plan.rewrite.iter().any(|r| r.file == n.file) {
            why.push(format!(
                "{} would now be rewritten in place too",
                n.file.display()
            ));
        }
    }
    why
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> PlanFile {
        PlanFile {
            kind: PLAN_KIND.into(),
            format: PLAN_FORMAT,
            tool: tool(),
            machine_id: Some("abc".into()),
            root: "/".into(),
            created: 0,
            options: PlanOptions {
                config: None,
                from_json: None,
                host: None,
                output: "/etc/nixos/nspawn-containers.nix".into(),
                only: vec![],
                exclude: vec![],
                state: "copy".into(),
                verify: "full".into(),
                stop: false,
                force: false,
                rewrite: false,
                no_eval: false,
            },
            inputs: [(
                "file /etc/nixos/configuration.nix".to_string(),
                "blake3 1".to_string(),
            )]
            .into(),
            containers: vec![],
            files: [(PathBuf::from("/etc/x.nix"), "a\n".to_string())].into(),
            rewrite: vec![],
            needs_human: 0,
        }
    }

    #[test]
    fn an_identical_plan_has_no_differences() {
        assert!(differences(&plan(), &plan()).is_empty());
    }

    #[test]
    fn each_kind_of_change_is_named() {
        let mut now = plan();
        now.inputs.insert(
            "file /etc/nixos/configuration.nix".into(),
            "blake3 2".into(),
        );
        now.files.insert("/etc/x.nix".into(), "b\n".into());
        let why = differences(&plan(), &now);
        assert!(
            why[0].contains("/etc/nixos/configuration.nix changed"),
            "{why:?}"
        );
        assert!(
            why[1].contains("/etc/x.nix would now get other content"),
            "{why:?}"
        );

        let mut other = plan();
        other.machine_id = Some("def".into());
        let why = differences(&plan(), &other);
        assert_eq!(why.len(), 1, "{why:?}");
        assert!(why[0].contains("another machine"), "{why:?}");

        let mut newer = plan();
        newer.tool = "nixos-nspawn 99".into();
        assert!(differences(&plan(), &newer)[0].contains("made by"));
    }
}
