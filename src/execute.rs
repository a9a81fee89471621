//! Carrying out a plan: the only part of `migrate` with side effects.
//!
//! First [`preflight`] checks every step of every container before anything is written: that
//! no legacy container runs (on the live machine only), that there is room for the copies, and
//! that every destination is a place we may write (resolved inside `--root`, never the Nix
//! store or a NixOS-managed `/etc` link, never a legacy location, never a file we did not write
//! unless `--force`, its directory writable). A refusal leaves the host exactly as it was.
//!
//! Then, for each container, in order: make sure the legacy unit is stopped, bring the state
//! across with the state engine (staging directory, journal, verification, rename), carry an
//! imperative container's profile generations, write its container file, trusted `.nspawn`
//! file and drop-in; finally write the declarative Nix file. Every path goes through
//! [`HostRoot`] (confined to the root), every write is atomic and skipped when the content is
//! already there, so a second run changes nothing; a file that is replaced is kept as
//! `FILE.bak-UNIXTIME`. Legacy state is only ever read.
//!
//! With `--root` other than `/` the tree is another machine's disk: the live systemd is never
//! asked about its containers, and nothing is stopped (`--stop` is refused by `main`).

use crate::atomic::Written;
use crate::cli::{StateArg, VerifyArg};
use crate::host::{HostRoot, Kind};
use crate::migrate::Migration;
use crate::plan::Step;
use crate::runner::{Cmd, Runner};
use crate::state;
use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How to run.
pub struct ExecOptions {
    pub state: StateArg,
    pub verify: VerifyArg,
    /// `--verify` was given explicitly: a copy an earlier run finished is checked again at
    /// that level (otherwise by metadata).
    pub verify_given: bool,
    pub stop: bool,
    pub force: bool,
    /// How the copy shows progress.
    pub progress: ProgressKind,
    /// Per container, a state mode other than `state` (the interactive mode asks each).
    pub state_for: BTreeMap<String, StateArg>,
    /// Per container, whether its running legacy unit may be stopped, instead of `stop` (the
    /// interactive mode asks each: a "yes" for one is no "yes" for another).
    pub stop_for: BTreeMap<String, bool>,
}

impl ExecOptions {
    /// Whether the legacy unit of one container may be stopped.
    pub fn stop_of(&self, name: &str) -> bool {
        self.stop_for.get(name).copied().unwrap_or(self.stop)
    }

    /// The state mode for one container.
    pub fn state_of(&self, name: &str) -> StateArg {
        self.state_for.get(name).copied().unwrap_or(self.state)
    }
}

/// How a state copy shows its progress.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProgressKind {
    /// Bars on a terminal, a line every few seconds otherwise.
    Auto,
    /// Nothing (`--quiet`).
    None,
}

/// Failure of one step (or of the checks before the first step), with what to do about it.
#[derive(Debug)]
pub struct StepError {
    /// The container the failure belongs to; `None` for the host-wide checks and files.
    pub container: Option<String>,
    pub message: String,
    /// For a refusal before the first write: every problem found, one line each (the exit
    /// code tells a refusal from a failure: see [`StepError::is_refusal`]).
    pub refused: Option<Vec<String>>,
}

impl StepError {
    /// Refused before anything was written (exit code 4), not failed midway (exit code 1).
    pub fn is_refusal(&self) -> bool {
        self.refused.is_some()
    }

    /// The error as the report carries it.
    pub fn to_run_error(&self) -> crate::report::RunError {
        crate::report::RunError {
            container: self.container.clone(),
            message: self.to_string(),
            problems: self.refused.clone().unwrap_or_default(),
        }
    }
}

impl std::fmt::Display for StepError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.container {
            Some(c) => write!(f, "container {c}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for StepError {}

fn step_err(container: &str, message: impl Into<String>) -> StepError {
    StepError {
        container: Some(container.to_string()),
        message: message.into(),
        refused: None,
    }
}

/// Where legacy data lives: never a destination of ours.
const LEGACY_ROOTS: &[(&str, &str)] = &[
    (
        "/etc/nixos-containers",
        "where legacy containers are configured",
    ),
    (
        "/etc/containers",
        "where legacy containers (and podman) are configured",
    ),
    ("/var/lib/nixos-containers", "the legacy containers' state"),
    (
        "/var/lib/containers",
        "the legacy containers' (and podman's) state",
    ),
    (
        "/nix/var/nix/profiles",
        "the system's and the legacy containers' profiles",
    ),
];
/// Read-only, or rewritten by every `nixos-rebuild`: a file written there is lost or fails.
const NIXOS_MANAGED: &[(&str, &str)] = &[
    ("/nix/store", "the read-only Nix store"),
    (
        "/etc/static",
        "NixOS's generated /etc (replaced by every nixos-rebuild)",
    ),
];
/// Where the containers' root file systems go.
const MACHINES: &str = "/var/lib/machines";
/// Where carried profiles go (the one place under /nix/var/nix/profiles we write).
const NEW_PROFILES: &str = "/nix/var/nix/profiles/per-nspawn";

/// What one file step will do, decided by [`preflight`].
#[derive(Clone, Debug)]
struct FileTarget {
    /// Where it really lands (host path, links resolved inside the root).
    resolved: PathBuf,
    /// An existing file with other content is kept as `FILE.bak-TIME` before it is replaced.
    backup: bool,
}

/// Carry out the plan.
///
/// First every check, for every container and every file, before anything is written (see
/// the module doc). Then, per container, the steps; a failure stops the run there (a partial
/// copy stays in its staging directory and the next run resumes it; containers done before
/// stay done).
pub fn execute(
    host: &HostRoot,
    m: &mut Migration,
    opts: &ExecOptions,
    runner: &Runner,
    checked: Checked,
) -> Result<(), StepError> {
    use crate::report::ContainerStatus;
    // The report says what the state step does (the interactive mode chooses per container).
    crate::migrate::set_state_modes(m, &|n| opts.state_of(n).into());
    for c in &mut m.report.containers {
        if c.status == ContainerStatus::Planned {
            c.status = ContainerStatus::NotReached;
        }
    }
    let targets = preflight(host, m, opts, runner, checked)?;
    let stamp = now();
    let progress = make_progress(opts.progress);
    for (idx, cp) in m.plan.containers.iter().enumerate() {
        let Some(report) = m.report.containers.get_mut(idx) else {
            continue;
        };
        if report.status != ContainerStatus::NotReached {
            continue;
        }
        if let Some(legacy) = m.legacy.containers.get(idx)
            && !cp.steps.iter().any(|s| matches!(s, Step::Blocked { .. }))
        {
            report.record = Some(crate::rollback::record_path(&cp.name));
            record_start(
                host,
                m.plan.nix_output.as_deref(),
                m.instances.get(idx),
                legacy,
                cp,
                report.kind,
                opts,
                &targets,
                stamp,
            )?;
        }
        let mut rec = Record::default();
        let r = run_container(
            host,
            cp,
            &report.files,
            opts,
            runner,
            &targets,
            stamp,
            progress.as_ref(),
            &mut rec,
        );
        report.done = rec.done;
        report.state_result = rec.state;
        report.warnings.extend(rec.warnings);
        report.status = if r.is_ok() {
            ContainerStatus::Done
        } else {
            ContainerStatus::Failed
        };
        m.report.files_written.extend(rec.files.iter().cloned());
        report.files_written = rec.files;
        r?;
        record_finish(host, &cp.name)?;
    }
    if let (Some(out), Some(text)) = (m.plan.nix_output.clone(), m.report.nix_file.clone()) {
        let mut rec = Record::default();
        let r = write_file(host, None, &out, targets.get(&out), &text, stamp, &mut rec);
        m.report.done.extend(rec.done);
        m.report.files_written.extend(rec.files);
        r?;
    }
    Ok(())
}

/// Write (or, on a re-run, update) the record `--rollback` and `--cleanup` work from, before
/// the first step of a container (see `rollback`).
#[allow(clippy::too_many_arguments)]
fn record_start(
    host: &HostRoot,
    nix_output: Option<&Path>,
    inst: Option<&crate::translate::Instance>,
    legacy: &crate::legacy::LegacyContainer,
    cp: &crate::plan::ContainerPlan,
    kind: &str,
    opts: &ExecOptions,
    targets: &BTreeMap<PathBuf, FileTarget>,
    stamp: u64,
) -> Result<(), StepError> {
    use crate::rollback::{FileRecord, Record};
    if cp.steps.iter().any(|s| matches!(s, Step::Blocked { .. })) {
        return Ok(());
    }
    let file_record = |path: &Path| {
        targets.get(path).map(|t| FileRecord {
            path: t.resolved.clone(),
            backup: t.backup.then(|| {
                let name = t
                    .resolved
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                t.resolved.with_file_name(format!("{name}.bak-{stamp}"))
            }),
        })
    };
    let old = crate::rollback::load(host, &cp.name).ok().flatten();
    let keep_backup = |f: FileRecord| -> FileRecord {
        // A re-run replaces nothing new: the backup of the first run is what rollback restores.
        let earlier = old
            .as_ref()
            .and_then(|o| {
                o.files
                    .iter()
                    .chain(o.nix_output.iter())
                    .find(|x| x.path == f.path)
            })
            .and_then(|x| x.backup.clone())
            .filter(|b| host.exists(b));
        FileRecord {
            backup: earlier.or(f.backup),
            ..f
        }
    };
    let mut r = Record {
        name: cp.name.clone(),
        kind: kind.to_string(),
        tool: format!("nixos-nspawn {}", env!("CARGO_PKG_VERSION")),
        started_ns: crate::clock::unix_nanos(),
        finished_ns: None,
        legacy_state: legacy.state_dir.clone(),
        legacy_conf: legacy.conf_file.clone(),
        legacy_profile: legacy.profile_dir.clone(),
        state_to: None,
        state_mode: crate::plan_file::state_name(opts.state_of(&cp.name)).to_string(),
        links_to: Vec::new(),
        files: Vec::new(),
        nix_output: None,
        // Filled in by `rewrite::record` once the host's files are rewritten (kept on a re-run).
        rewrite: None,
        // The entries the Nix file gets for the container's own networkd units (see
        // render::nix): rollback removes them with the container.
        networkd_units: inst
            .map(|i| {
                i.host_networks
                    .iter()
                    .map(|u| match u.file_name.strip_suffix(".netdev") {
                        Some(stem) => ("netdevs".to_string(), stem.to_string()),
                        None => (
                            "networks".to_string(),
                            u.file_name
                                .strip_suffix(".network")
                                .unwrap_or(&u.file_name)
                                .to_string(),
                        ),
                    })
                    .collect()
            })
            .unwrap_or_default(),
    };
    for step in &cp.steps {
        match step {
            Step::CopyState { to, .. } => r.state_to = Some(to.clone()),
            Step::CarryProfile { to, .. } => r.links_to.push(to.clone()),
            s => {
                if let Some(f) = s.written_file().and_then(file_record) {
                    r.files.push(keep_backup(f));
                }
            }
        }
    }
    if kind == "declarative" {
        r.nix_output = nix_output.and_then(file_record).map(keep_backup);
    }
    if let Some(o) = &old {
        r.started_ns = o.started_ns;
        r.finished_ns = o.finished_ns;
        r.rewrite = o.rewrite.clone();
        if r.rewrite.is_some() {
            // Its definition is in the host's own file now, not in the output file.
            r.nix_output = None;
        }
    }
    crate::rollback::save(host, &r).map_err(|e| {
        step_err(
            &cp.name,
            format!(
                "cannot write the migration record {} ({e}); nothing was done for this container",
                crate::rollback::record_path(&cp.name).display()
            ),
        )
    })
}

/// Note in the record that every step of the container finished (kept from an earlier run).
fn record_finish(host: &HostRoot, name: &str) -> Result<(), StepError> {
    let mut r = match crate::rollback::load(host, name) {
        Ok(Some(r)) => r,
        Ok(None) => return Ok(()),
        Err(e) => return Err(step_err(name, e)),
    };
    if r.finished_ns.is_none() {
        r.finished_ns = Some(crate::clock::unix_nanos());
        crate::rollback::save(host, &r).map_err(|e| {
            step_err(
                name,
                format!(
                    "cannot update the migration record {}: {e}",
                    crate::rollback::record_path(name).display()
                ),
            )
        })?;
    }
    Ok(())
}

/// What the steps of one container did, for the report.
#[derive(Default)]
struct Record {
    done: Vec<String>,
    files: Vec<PathBuf>,
    state: Option<crate::state::StateSummary>,
    /// Found while copying (inode flags the new place cannot keep).
    warnings: Vec<crate::warnings::Warning>,
}

/// The steps of one container, in order; the first failure ends them.
#[allow(clippy::too_many_arguments)]
fn run_container(
    host: &HostRoot,
    cp: &crate::plan::ContainerPlan,
    files: &BTreeMap<PathBuf, String>,
    opts: &ExecOptions,
    runner: &Runner,
    targets: &BTreeMap<PathBuf, FileTarget>,
    stamp: u64,
    progress: &dyn CopyProgress,
    rec: &mut Record,
) -> Result<(), StepError> {
    for step in &cp.steps {
        match step {
            Step::Blocked { reason } => rec.done.push(format!("skipped: {reason}")),
            Step::StopLegacy { unit } => {
                if let Some(note) =
                    ensure_stopped(&cp.name, unit, opts.stop_of(&cp.name), host, runner)?
                {
                    rec.done.push(note);
                }
            }
            Step::CopyState { from, to, .. } => {
                let mode = match opts.state_of(&cp.name) {
                    StateArg::Copy => state::StateMode::Copy,
                    StateArg::Move => state::StateMode::Move,
                    StateArg::Skip => {
                        rec.done.push(format!(
                            "state left in {} (--state skip); move it to {} yourself",
                            from.display(),
                            to.display()
                        ));
                        rec.state = Some(state::StateOutcome::Skipped.summary());
                        continue;
                    }
                };
                if mode == state::StateMode::Copy {
                    // The kernel now refuses any write to the legacy state, and reading it
                    // changes no access time. Best effort: without privileges the copy
                    // engine still never writes to the source.
                    protect(host, from, &mut rec.done);
                }
                // The engine takes real paths: both are resolved inside the root first
                // (and checked to hold no symlink), and the destination's parent is made
                // here, one component at a time, never through a link.
                let src = real_path(host, &cp.name, from)?;
                let dest_parent = to.parent().unwrap_or(Path::new("/"));
                host.create_dir_all(dest_parent, 0o700).map_err(|e| {
                    step_err(
                        &cp.name,
                        format!("cannot create {}: {e}", dest_parent.display()),
                    )
                })?;
                let dest = real_path(host, &cp.name, to)?;
                let verify = match opts.verify {
                    VerifyArg::Full => state::Verify::Full,
                    VerifyArg::Metadata => state::Verify::Metadata,
                    VerifyArg::None => state::Verify::None,
                };
                progress.start(&cp.name);
                let totals = Totals {
                    inner: progress.as_progress(),
                    bytes: AtomicU64::new(0),
                };
                let outcome = state::migrate_state(
                    &src,
                    &dest,
                    &state::MigrateStateOptions {
                        mode,
                        verify,
                        force: opts.force,
                        progress: &totals,
                        recheck: if opts.verify_given {
                            verify
                        } else {
                            state::Verify::Metadata
                        },
                    },
                )
                .map_err(|e| step_err(&cp.name, format!("{e}")))?;
                progress.finish();
                rec.state = Some(outcome.summary());
                rec.warnings.extend(outcome.warnings(&cp.name));
                rec.done.push(describe_outcome(
                    &outcome,
                    &shown(host, from),
                    &shown(host, to),
                    totals.bytes.load(Ordering::Relaxed),
                    host,
                ));
            }
            Step::NoState { reason } => rec.done.push(format!("no state: {reason}")),
            Step::CarryProfile { from, to } => {
                // The legacy profile stays as it is, access times included.
                protect(host, from, &mut rec.done);
                let src = real_path(host, &cp.name, from)?;
                let parent = to.parent().unwrap_or(Path::new("/"));
                host.create_dir_all(parent, 0o755).map_err(|e| {
                    step_err(&cp.name, format!("cannot create {}: {e}", parent.display()))
                })?;
                let dest = real_path(host, &cp.name, to)?;
                let o = state::carry_profile(&src, &dest)
                    .map_err(|e| step_err(&cp.name, format!("{e}")))?;
                rec.done.push(if o.already_done {
                    format!("profile {} already carried", shown(host, to))
                } else {
                    format!(
                        "profile {} → {}: generations {:?} linked (the store was not copied)",
                        shown(host, from),
                        shown(host, to),
                        o.generations
                    )
                });
            }
            Step::WriteContainerFile { path }
            | Step::WriteNspawn { path }
            | Step::WriteDropin { path }
            | Step::WriteGuestFile { path }
            | Step::WriteNetworkUnit { path } => {
                // The bytes the report showed (rendered once, in `migrate`).
                let Some(text) = files.get(path) else {
                    return Err(step_err(
                        &cp.name,
                        format!(
                            "no content was prepared for {} (a bug); nothing more was written",
                            path.display()
                        ),
                    ));
                };
                write_file(
                    host,
                    Some(&cp.name),
                    path,
                    targets.get(path),
                    text,
                    stamp,
                    rec,
                )?;
            }
        }
    }
    Ok(())
}

/// A host path for a message: itself, plus where it really leads when a link redirects it.
fn shown(host: &HostRoot, p: &Path) -> String {
    match host.resolve(p) {
        Ok(r) if r != p => format!("{} (→ {})", p.display(), r.display()),
        _ => p.display().to_string(),
    }
}

/// The real path of a host path for the state engine, confined to the root.
fn real_path(host: &HostRoot, container: &str, p: &Path) -> Result<PathBuf, StepError> {
    host.confined_real_path(p)
        .map_err(|e| step_err(container, format!("cannot resolve {}: {e}", p.display())))
}

use crate::clock::unix_seconds as now;

/// Make legacy data read-only (and noatime) for this process while we read it; without the
/// privileges for that, say so: our code still only reads it.
fn protect(host: &HostRoot, legacy: &Path, done: &mut Vec<String>) {
    if let Err(e) = host.protect_read_only(legacy) {
        done.push(format!(
            "note: could not make {} read-only while reading it ({e}); it is still only read",
            legacy.display()
        ));
    }
}

/// The first line of every file we write says so; a file without it is not ours to replace.
fn is_ours(text: &[u8]) -> bool {
    let first = text.split(|b| *b == b'\n').next().unwrap_or_default();
    first.starts_with(b"# ") && first.windows(12).any(|w| w == b"nixos-nspawn")
}

/// What the read-only checks of every destination found ([`check_destinations`]).
#[derive(Debug, Default)]
pub struct Checked {
    targets: BTreeMap<PathBuf, FileTarget>,
    /// Directories something will be created in: (nearest existing directory, what for).
    dirs: Vec<(PathBuf, String)>,
    /// Bytes the state copies allocate, and the directory whose filesystem receives them.
    need: u64,
    space_dir: Option<PathBuf>,
    /// Why the plan cannot be carried out as it is, one line each (empty when it can).
    pub problems: Vec<String>,
    /// Destinations that a link sends elsewhere (inside the root): (host path, where it leads).
    pub redirects: Vec<(PathBuf, PathBuf)>,
}

/// Check every destination of the plan without writing anything: resolved inside the root,
/// never in the Nix store, a NixOS-managed `/etc` link or a legacy location, never a file we
/// did not write (unless `--force`), never written twice; with `space`, also how much the
/// state copies need. Run while the host is seen through the read-only, `noatime` view, so
/// that resolving links and reading existing files changes no access time; `--dry-run`
/// reports the problems, `--yes` refuses to start on them.
pub fn check_destinations(
    host: &HostRoot,
    m: &Migration,
    opts: &ExecOptions,
    space: bool,
) -> Checked {
    let mut c = Checked::default();
    let legacy_roots = legacy_locations(host, m);
    // Files are also never written into a container's root file system: links there are the
    // guest's, and a write through them would land wherever its root wants.
    let mut file_forbidden = legacy_roots.clone();
    if let Ok(machines) = host.resolve(Path::new(MACHINES)) {
        file_forbidden.push((
            machines,
            format!("{MACHINES} (the containers' root file systems, controlled by whoever is root inside them)"),
        ));
    }
    let mut claimed: BTreeMap<PathBuf, String> = BTreeMap::new();
    let mut files: Vec<(Option<&str>, &Path)> = Vec::new();
    for cp in &m.plan.containers {
        let name = cp.name.as_str();
        for step in &cp.steps {
            match step {
                Step::CopyState { from, to, .. } if opts.state_of(name) != StateArg::Skip => {
                    match check_dir_dest(host, to, &legacy_roots, &[], false) {
                        Err(p) => c.problems.push(format!("container {name}: {p}")),
                        Ok(probe) => {
                            claim(&mut claimed, &probe.resolved, name, &mut c.problems);
                            redirect(&mut c.redirects, to, &probe.resolved);
                            c.dirs.push((
                                probe.nearest_dir.clone(),
                                format!("container {name}: {}", to.display()),
                            ));
                            // A finished copy needs nothing more; otherwise the whole tree.
                            if space
                                && opts.state_of(name) == StateArg::Copy
                                && probe.existing.is_none()
                            {
                                match host
                                    .confined_real_path(from)
                                    .map_err(|e| format!("cannot resolve {}: {e}", from.display()))
                                    .and_then(|real| {
                                        state::required_space(&real).map_err(|e| e.to_string())
                                    }) {
                                    Ok(n) => c.need = c.need.saturating_add(n.allocated),
                                    Err(e) => c.problems.push(format!("container {name}: {e}")),
                                }
                                c.space_dir.get_or_insert(probe.nearest_dir.clone());
                            }
                        }
                    }
                }
                Step::CarryProfile { to, .. } => {
                    match check_dir_dest(host, to, &legacy_roots, &[NEW_PROFILES], false) {
                        Err(p) => c.problems.push(format!("container {name}: {p}")),
                        Ok(probe) => {
                            claim(&mut claimed, &probe.resolved, name, &mut c.problems);
                            redirect(&mut c.redirects, to, &probe.resolved);
                            c.dirs.push((
                                probe.nearest_dir,
                                format!("container {name}: {}", to.display()),
                            ));
                        }
                    }
                }
                Step::WriteContainerFile { path }
                | Step::WriteNspawn { path }
                | Step::WriteDropin { path }
                | Step::WriteGuestFile { path }
                | Step::WriteNetworkUnit { path } => files.push((Some(name), path)),
                _ => {}
            }
        }
    }
    if let Some(out) = &m.plan.nix_output {
        files.push((None, out));
    }
    for (container, path) in files {
        let who = container.unwrap_or("the declarative containers' file");
        match check_file_dest(host, path, &file_forbidden, opts.force, container.is_none()) {
            Err(p) => c.problems.push(match container {
                Some(name) => format!("container {name}: {p}"),
                None => p,
            }),
            Ok((t, nearest)) => {
                if container.is_none()
                    && !opts.force
                    && let Some(p) = would_drop(host, &t.resolved, path, m)
                {
                    c.problems.push(p);
                }
                claim(&mut claimed, &t.resolved, who, &mut c.problems);
                redirect(&mut c.redirects, path, &t.resolved);
                c.dirs.push((nearest, path.display().to_string()));
                c.targets.insert(path.to_path_buf(), t);
            }
        }
    }
    c
}

/// The declarative file of an earlier run holds containers this run would drop from it (a
/// run writes the whole file from the containers it migrates): say which, and the ways out.
fn would_drop(host: &HostRoot, resolved: &Path, shown: &Path, m: &Migration) -> Option<String> {
    let old = host.read_to_string(resolved).ok()?;
    let now: Vec<&str> = m
        .report
        .containers
        .iter()
        .filter(|c| c.kind == "declarative")
        .map(|c| c.name.as_str())
        .collect();
    let dropped: Vec<String> = crate::nix_block::instance_names(&old)
        .into_iter()
        .filter(|n| !now.contains(&n.as_str()))
        .collect();
    (!dropped.is_empty()).then(|| {
        format!(
            "{} already holds the migrated container(s) {}, which this run would drop from it (a run writes the \
             whole file from the containers it migrates). Include them (--only {} …) while their legacy definitions \
             still exist, or write this batch to another file (--output /etc/nixos/nspawn-containers-2.nix) and \
             import both; --force replaces the file anyway (the old one is kept as a backup)",
            shown.display(),
            dropped.join(", "),
            dropped.join(" --only ")
        )
    })
}

/// Why `--state move` cannot rename a container's state, one line each: across filesystems (or
/// mounts, or btrfs subvolumes), a read-only subvolume into another directory, mount points
/// inside it ([`state::check_move`]). For `--yes` before the first write, and for `--dry-run`
/// (a `would-refuse` warning each).
pub fn move_problems(host: &HostRoot, m: &Migration, opts: &ExecOptions) -> Vec<String> {
    let mut problems = Vec::new();
    for cp in &m.plan.containers {
        for step in &cp.steps {
            if let Step::CopyState { from, to, .. } = step
                && opts.state_of(&cp.name) == StateArg::Move
                && let Some(why) = move_refusal(host, from, to)
            {
                problems.push(format!("container {}: {why}", cp.name));
            }
        }
    }
    problems
}

/// Why a move of the state `from` to `to` (host paths) would be refused, or `None` when it
/// would work, or when `to` already exists (what the state engine then does depends on what is
/// there: done, replace or refuse, as for a copy).
pub fn move_refusal(host: &HostRoot, from: &Path, to: &Path) -> Option<String> {
    if host.kind(to).ok().flatten().is_some() {
        return None;
    }
    let paths = host
        .confined_real_path(from)
        .and_then(|f| Ok((f, host.confined_real_path(to)?)));
    match paths {
        Ok((f, t)) => state::check_move(&f, &t).err().map(|e| e.to_string()),
        Err(e) => Some(e.to_string()),
    }
}

/// Every check that can fail, for every container and every destination, before anything is
/// written: the read-only checks of [`check_destinations`], then those that must see the real
/// mounts (writable directories, free space) and the live systemd (running containers).
fn preflight(
    host: &HostRoot,
    m: &Migration,
    opts: &ExecOptions,
    runner: &Runner,
    mut checked: Checked,
) -> Result<BTreeMap<PathBuf, FileTarget>, StepError> {
    let mut problems = std::mem::take(&mut checked.problems);
    for cp in &m.plan.containers {
        for step in &cp.steps {
            if let Step::StopLegacy { unit } = step
                && !opts.stop_of(&cp.name)
                && let Err(e) = check_not_running(&cp.name, unit, host, runner)
            {
                problems.push(e.to_string());
            }
        }
    }
    problems.extend(move_problems(host, m, opts));
    problems.extend(writability_problems(host, &checked));
    if let Some(dir) = &checked.space_dir
        && checked.need > 0
        && let Ok((_, free)) = host.dir_writable(dir)
        && checked.need > free
    {
        problems.push(format!(
            "not enough free space for the copies: {} needed under /var/lib/machines (the filesystem of {}), {} free\n\n\
             Free some space there, copy fewer containers at a time (--only NAME), or use --state move \
             (a rename, when the legacy state is on the same filesystem)",
            crate::report::human_size(checked.need),
            dir.display(),
            crate::report::human_size(free)
        ));
    }
    if problems.is_empty() {
        Ok(checked.targets)
    } else {
        let n = problems.len();
        Err(StepError {
            container: None,
            refused: Some(problems.clone()),
            message: format!(
                "nothing was changed: {} found before the first write:\n- {}",
                if n == 1 {
                    "1 problem was".to_string()
                } else {
                    format!("{n} problems were")
                },
                problems.join("\n- ")
            ),
        })
    }
}

fn redirect(redirects: &mut Vec<(PathBuf, PathBuf)>, host_path: &Path, resolved: &Path) {
    if host_path != resolved {
        redirects.push((host_path.to_path_buf(), resolved.to_path_buf()));
    }
}

/// The directories the plan creates entries in that cannot be written (a read-only
/// filesystem, an immutable directory, no permission), one line each. Asked of the tree as
/// mounted, so a dry run can report them too.
pub fn writability_problems(host: &HostRoot, checked: &Checked) -> Vec<String> {
    let mut problems = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for (dir, what) in &checked.dirs {
        if !seen.insert(dir.clone()) {
            continue;
        }
        match host.dir_writable(dir) {
            Ok((Ok(()), _)) => {}
            Ok((Err(e), _)) | Err(e) => problems.push(format!(
                "{what}: cannot write to {} ({e}); make it writable (is the filesystem mounted read-only?) and retry",
                dir.display()
            )),
        }
    }
    problems
}

/// Two steps must never write the same place (e.g. `--output` aimed at a container's file).
fn claim(
    claimed: &mut BTreeMap<PathBuf, String>,
    resolved: &Path,
    who: &str,
    problems: &mut Vec<String>,
) {
    match claimed.get(resolved) {
        Some(other) => problems.push(format!(
            "{} would be written twice (for {other} and for {who}); choose another --output",
            resolved.display()
        )),
        None => {
            claimed.insert(resolved.to_path_buf(), who.to_string());
        }
    }
}

/// The legacy locations, resolved: the fixed roots and every container's own files.
fn legacy_locations(host: &HostRoot, m: &Migration) -> Vec<(PathBuf, String)> {
    let mut out = Vec::new();
    let mut add = |p: &Path, what: String| {
        if let Ok(r) = host.resolve(p) {
            out.push((r, what));
        }
    };
    for (r, what) in LEGACY_ROOTS {
        add(Path::new(r), format!("{r} ({what})"));
    }
    for c in &m.legacy.containers {
        for p in [&c.conf_file, &c.state_dir, &c.profile_dir]
            .into_iter()
            .flatten()
        {
            add(
                p,
                format!("{} (legacy files of container {})", p.display(), c.name),
            );
        }
    }
    out
}

/// Why `resolved` is not a place we may write, if it is not.
fn forbidden(
    resolved: &Path,
    host_path: &Path,
    legacy: &[(PathBuf, String)],
    allowed: &[PathBuf],
    is_output: bool,
) -> Option<String> {
    let via = if resolved == host_path {
        String::new()
    } else {
        format!(" (it leads to {})", resolved.display())
    };
    let fix = if is_output {
        "Choose another --output"
    } else {
        "A link on the way leads there: point it elsewhere (or remove it) and run again"
    };
    for (prefix, what) in NIXOS_MANAGED {
        if resolved.starts_with(prefix) {
            return Some(format!(
                "{}{via} is inside {what}; nothing may be written there. On NixOS this path is managed by the system \
                 configuration: see nixos/README.md (\"Where imperative containers live\") for where nixos-nspawn keeps \
                 its files. {fix}",
                host_path.display()
            ));
        }
    }
    if allowed.iter().any(|a| resolved.starts_with(a)) {
        return None;
    }

    for (prefix, what) in legacy {
        if resolved.starts_with(prefix) {
            return Some(format!(
                "{}{via} is inside {what}, where this tool never writes a file: legacy files are only ever read \
                 (so that the old containers keep working), and a container's root belongs to its guest. {fix}",
                host_path.display()
            ));
        }
    }
    None
}

/// A destination directory (state, profile): resolvable, not forbidden, its parent writable.
fn check_dir_dest(
    host: &HostRoot,
    to: &Path,
    legacy: &[(PathBuf, String)],
    allowed: &[&str],
    is_output: bool,
) -> Result<crate::host::WriteProbe, String> {
    let probe = host.probe_write(to).map_err(|e| {
        format!(
            "{} cannot be created: {e}. A link on its path may lead to the wrong place: fix it and run again",
            to.display()
        )
    })?;
    // Allowed places are compared where they really are, like everything else.
    let allowed: Vec<PathBuf> = allowed
        .iter()
        .filter_map(|a| host.resolve(Path::new(a)).ok())
        .collect();
    if let Some(why) = forbidden(&probe.resolved, to, legacy, &allowed, is_output) {
        return Err(why);
    }
    Ok(probe)
}

/// A file we write: also never a file somebody else wrote, unless `--force` (then backed up).
fn check_file_dest(
    host: &HostRoot,
    path: &Path,
    legacy: &[(PathBuf, String)],
    force: bool,
    is_output: bool,
) -> Result<(FileTarget, PathBuf), String> {
    let probe = check_dir_dest(host, path, legacy, &[], is_output)?;
    let backup = match probe.existing {
        None => false,
        Some(Kind::File) => {
            let old = host
                .read(&probe.resolved)
                .map_err(|e| format!("cannot read {} to check it: {e}", path.display()))?;
            // Managed by `nixos-nspawn update` since it was migrated: a second migrate would
            // put the legacy translation back over the newer configuration.
            if crate::imperative::written_by_imperative_verbs(&old) && !force {
                return Err(format!(
                    "{} is managed with `nixos-nspawn update` since this container was migrated; \
                     migrate does not replace it with the legacy translation. Leave this container \
                     out (--only for the others), or pass --force to replace it (the old file is \
                     kept as {}.bak-TIME)",
                    path.display(),
                    probe.resolved.display()
                ));
            }
            if !is_ours(&old) && !force {
                return Err(format!(
                    "{}{} exists and was not written by nixos-nspawn (its first line is not our `# … nixos-nspawn` header); \
                     it is not replaced. {}move the file away, or pass --force to replace it \
                     (the old file is kept as {}.bak-TIME)",
                    path.display(),
                    if probe.resolved == path {
                        String::new()
                    } else {
                        format!(" (→ {})", probe.resolved.display())
                    },
                    if is_output {
                        "Choose another --output, "
                    } else {
                        "Check what it is, "
                    },
                    probe.resolved.display()
                ));
            }
            true
        }
        Some(k) => {
            return Err(format!(
                "{} exists and is {}, not a file; move it away{}",
                path.display(),
                match k {
                    Kind::Dir => "a directory",
                    Kind::Symlink => "a symlink that leads nowhere",
                    _ => "a special file",
                },
                if is_output {
                    " or choose another --output"
                } else {
                    ""
                }
            ));
        }
    };
    Ok((
        FileTarget {
            resolved: probe.resolved,
            backup,
        },
        probe.nearest_dir,
    ))
}

/// Forwards progress and keeps the total file size (holes included) for the summary line.
struct Totals<'a> {
    inner: &'a dyn state::Progress,
    bytes: AtomicU64,
}

impl state::Progress for Totals<'_> {
    fn total(&self, entries: u64, bytes: u64) {
        self.bytes.store(bytes, Ordering::Relaxed);
        self.inner.total(entries, bytes);
    }
    fn entry_done(&self) {
        self.inner.entry_done();
    }
    fn bytes_done(&self, n: u64) {
        self.inner.bytes_done(n);
    }
}

/// "100.0 MiB" for the files of a copy, and how much of it was data actually written: a sparse
/// file's holes stay holes, so "4.0 KiB written" alone would wrongly suggest a tiny tree.
fn sizes(total: u64, written: u64) -> String {
    if written >= total {
        format!("{} of files", crate::report::human_size(total))
    } else {
        format!(
            "{} of files ({} of data written; the rest are holes of sparse files, kept as holes, or data an interrupted run had copied)",
            crate::report::human_size(total),
            crate::report::human_size(written)
        )
    }
}

fn describe_outcome(
    o: &state::StateOutcome,
    from: &str,
    to: &str,
    total_bytes: u64,
    host: &HostRoot,
) -> String {
    match o {
        state::StateOutcome::Copied {
            copy,
            verify,
            resumed,
            replaced,
        } => {
            let mut s = format!(
                "state copied {from} → {to}: {} entries, {}{}; verified ({}): {} entries, {} differences",
                copy.entries,
                sizes(total_bytes, copy.bytes),
                if *resumed {
                    ", resumed an interrupted run"
                } else {
                    ""
                },
                verify.level.name(),
                verify.entries,
                verify.differences
            );
            let methods = verify.methods();
            if !methods.is_empty() {
                s.push_str(&format!("; {methods}"));
            }
            if copy.files_reflinked > 0 {
                s.push_str(&format!(
                    "; {} files cloned (reflink)",
                    copy.files_reflinked
                ));
            }
            if copy.flags_copied > 0 {
                s.push_str(&format!(
                    "; inode flags kept on {} entr{}",
                    copy.flags_copied,
                    if copy.flags_copied == 1 { "y" } else { "ies" }
                ));
            }
            s.push_str(&format!("; {from} is untouched"));
            if let Some(r) = replaced {
                let shown = r
                    .strip_prefix(host.root())
                    .map(|p| Path::new("/").join(p))
                    .unwrap_or_else(|_| r.clone());
                s.push_str(&format!(
                    "; the previous destination was kept as {}",
                    shown.display()
                ));
            }
            s
        }
        state::StateOutcome::Moved => format!(
            "state moved {from} → {to} (a rename on one filesystem: nothing was copied, {from} no longer exists; \
             to go back, stop the new container and move it back with mv)"
        ),
        state::StateOutcome::AlreadyDone { verify } if verify.level == state::Verify::Full => {
            format!(
                "state already at {to} (checked again against {from}: {}; {})",
                verify.summary(),
                verify.methods()
            )
        }
        state::StateOutcome::AlreadyDone { .. } => format!("state already at {to}"),
        state::StateOutcome::Skipped => format!("state left in {from}"),
    }
}

fn write_file(
    host: &HostRoot,
    container: Option<&str>,
    path: &Path,
    target: Option<&FileTarget>,
    text: &str,
    stamp: u64,
    rec: &mut Record,
) -> Result<(), StepError> {
    let fail = |message: String| StepError {
        container: container.map(str::to_string),
        message,
        refused: None,
    };
    let done = &mut rec.done;
    let Some(target) = target else {
        return Err(fail(format!(
            "{} was not checked before the first write (a bug); nothing more was written",
            path.display()
        )));
    };
    let shown = if target.resolved == path {
        path.display().to_string()
    } else {
        format!("{} (→ {})", path.display(), target.resolved.display())
    };
    // The place checked before the first write must still be the place written.
    match host.resolve(&target.resolved) {
        Ok(now) if now == target.resolved => {}
        Ok(now) => {
            return Err(fail(format!(
                "{shown} now leads to {} (a link changed during the run); nothing was written there. Check the link and run again",
                now.display()
            )));
        }
        Err(e) => return Err(fail(format!("cannot resolve {shown}: {e}"))),
    }
    // A file with other content is kept before it is replaced; the same bytes need nothing.
    let same = host
        .read(&target.resolved)
        .is_ok_and(|old| old == text.as_bytes());
    if target.backup && !same {
        let bak = host
            .backup_fresh(&target.resolved, &stamp.to_string())
            .map_err(|e| {
                fail(format!(
                    "cannot keep a backup of {shown}: {e}; it was not replaced"
                ))
            })?;
        done.push(format!("kept the previous {shown} as {}", bak.display()));
    }
    match host.write_atomic(&target.resolved, text.as_bytes(), 0o644) {
        Ok((Written::Changed, resolved)) => {
            done.push(format!("wrote {shown}"));
            rec.files.push(resolved);
            Ok(())
        }
        Ok((Written::Unchanged, _)) => {
            done.push(format!("{shown} already up to date"));
            Ok(())
        }
        Err(e) => Err(fail(format!("cannot write {shown}: {e}"))),
    }
}

/// Whether the legacy unit runs: `Ok` when stopped, or on an offline root (not asked).
fn check_not_running(
    name: &str,
    unit: &str,
    host: &HostRoot,
    runner: &Runner,
) -> Result<(), StepError> {
    match unit_state(name, unit, host, runner)? {
        Some(state) => Err(step_err(
            name,
            format!(
                "{unit} is {state}; copying a running container's state would give an inconsistent copy. \
                 Stop it first (systemctl stop {unit}) or re-run with --stop"
            ),
        )),
        None => Ok(()),
    }
}

/// `Some(state)` when the unit is running in some way, `None` when it is stopped. On an
/// offline root nobody is asked: the live systemd knows nothing about that disk's containers,
/// and a container of the same name on this machine is another container.
pub fn unit_state(
    name: &str,
    unit: &str,
    host: &HostRoot,
    runner: &Runner,
) -> Result<Option<String>, StepError> {
    if !host.is_live() {
        return Ok(None);
    }
    let out = match runner.output(&Cmd::new("systemctl", &["is-active", unit])) {
        Ok(o) => o,
        Err(e) => {
            return Err(step_err(
                name,
                format!("cannot tell whether {unit} is running: {e}. Stop it yourself and re-run"),
            ));
        }
    };
    let state = out.stdout.trim().to_string();
    Ok(matches!(
        state.as_str(),
        "active" | "activating" | "reloading" | "deactivating" | "refreshing"
    )
    .then_some(state))
}

/// Stop the legacy unit when it runs and `--stop` was given (preflight refused it otherwise).
fn ensure_stopped(
    name: &str,
    unit: &str,
    stop: bool,
    host: &HostRoot,
    runner: &Runner,
) -> Result<Option<String>, StepError> {
    let Some(state) = unit_state(name, unit, host, runner)? else {
        return Ok(None);
    };
    if !stop {
        return Err(step_err(
            name,
            format!("{unit} is {state} (it was started during the migration); stop it and re-run"),
        ));
    }
    runner
        .run(&Cmd::new("systemctl", &["stop", unit]))
        .map_err(|e| step_err(name, format!("{e}")))?;
    Ok(Some(format!("stopped {unit}")))
}

/// Progress for one state copy: bars on a terminal, a line every few seconds otherwise.
pub trait CopyProgress: state::Progress {
    fn start(&self, name: &str);
    fn finish(&self);
    fn as_progress(&self) -> &dyn state::Progress;
}

fn make_progress(kind: ProgressKind) -> Box<dyn CopyProgress> {
    if kind == ProgressKind::None {
        return Box::new(Silent);
    }
    let interactive = std::io::stderr().is_terminal() && std::env::var_os("CI").is_none();
    if interactive {
        Box::new(BarProgress::new())
    } else {
        Box::new(LineProgress::default())
    }
}

struct BarProgress {
    entries: indicatif::ProgressBar,
    bytes: indicatif::ProgressBar,
    _multi: indicatif::MultiProgress,
}

impl BarProgress {
    fn new() -> Self {
        let multi = indicatif::MultiProgress::new();
        let entries = multi.add(indicatif::ProgressBar::new(0));
        let bytes = multi.add(indicatif::ProgressBar::new(0));
        if let Ok(s) = indicatif::ProgressStyle::with_template("{prefix:>12} {pos}/{len} entries") {
            entries.set_style(s);
        }
        if let Ok(s) = indicatif::ProgressStyle::with_template(
            "{bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        ) {
            bytes.set_style(s);
        }
        BarProgress {
            entries,
            bytes,
            _multi: multi,
        }
    }
}

impl state::Progress for BarProgress {
    fn total(&self, entries: u64, bytes: u64) {
        self.entries.set_length(entries);
        self.bytes.set_length(bytes);
    }
    fn entry_done(&self) {
        self.entries.inc(1);
    }
    fn bytes_done(&self, n: u64) {
        self.bytes.inc(n);
    }
}

impl CopyProgress for BarProgress {
    fn start(&self, name: &str) {
        self.entries.set_prefix(name.to_string());
        self.entries.set_position(0);
        self.bytes.set_position(0);
    }
    fn finish(&self) {
        self.entries.finish();
        self.bytes.finish_and_clear();
    }
    fn as_progress(&self) -> &dyn state::Progress {
        self
    }
}

/// Without a terminal (CI, fleets, `| tee`): one line on stderr every 5 seconds.
#[derive(Default)]
struct LineProgress {
    name: Mutex<String>,
    total_entries: AtomicU64,
    total_bytes: AtomicU64,
    entries: AtomicU64,
    bytes: AtomicU64,
    last: Mutex<Option<Instant>>,
}

impl LineProgress {
    fn maybe_print(&self) {
        let Ok(mut last) = self.last.lock() else {
            return;
        };
        let now = Instant::now();
        if last.is_some_and(|t| now.duration_since(t) < Duration::from_secs(5)) {
            return;
        }
        *last = Some(now);
        self.print();
    }
    fn print(&self) {
        let name = self.name.lock().map(|n| n.clone()).unwrap_or_default();
        eprintln!(
            "nixos-nspawn: {name}: {}/{} entries, {} of {} written (holes of sparse files are not written)",
            self.entries.load(Ordering::Relaxed),
            self.total_entries.load(Ordering::Relaxed),
            crate::report::human_size(self.bytes.load(Ordering::Relaxed)),
            crate::report::human_size(self.total_bytes.load(Ordering::Relaxed))
        );
    }
}

impl state::Progress for LineProgress {
    fn total(&self, entries: u64, bytes: u64) {
        self.total_entries.store(entries, Ordering::Relaxed);
        self.total_bytes.store(bytes, Ordering::Relaxed);
    }
    fn entry_done(&self) {
        self.entries.fetch_add(1, Ordering::Relaxed);
        self.maybe_print();
    }
    fn bytes_done(&self, n: u64) {
        self.bytes.fetch_add(n, Ordering::Relaxed);
    }
}

impl CopyProgress for LineProgress {
    fn start(&self, name: &str) {
        if let Ok(mut n) = self.name.lock() {
            *n = name.to_string();
        }
        self.entries.store(0, Ordering::Relaxed);
        self.bytes.store(0, Ordering::Relaxed);
        if let Ok(mut l) = self.last.lock() {
            *l = None;
        }
    }
    fn finish(&self) {
        self.print();
    }
    fn as_progress(&self) -> &dyn state::Progress {
        self
    }
}

/// `--quiet`: no progress at all.
struct Silent;

impl state::Progress for Silent {
    fn total(&self, _: u64, _: u64) {}
    fn entry_done(&self) {}
    fn bytes_done(&self, _: u64) {}
}

impl CopyProgress for Silent {
    fn start(&self, _: &str) {}
    fn finish(&self) {}
    fn as_progress(&self) -> &dyn state::Progress {
        self
    }
}
