//! Carrying out a plan: the only part of `migrate` with side effects.
//!
//! For each container, in order: make sure the legacy unit is stopped, bring the state across
//! with the state engine (staging directory, journal, verification, rename), carry an
//! imperative container's profile generations, write its container file and trusted `.nspawn`
//! file; finally write the declarative Nix file. Every write is atomic and skipped when the
//! content is already there, so a second run changes nothing. Legacy state is only ever read.

use crate::atomic::{Written, write_atomic};
use crate::cli::{StateArg, VerifyArg};
use crate::host::HostRoot;
use crate::migrate::Migration;
use crate::plan::Step;
use crate::runner::{Cmd, Runner};
use crate::state;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How to run.
pub struct ExecOptions {
    pub state: StateArg,
    pub verify: VerifyArg,
    pub stop: bool,
    pub force: bool,
}

/// Failure of one step, with what to do about it.
#[derive(Debug, thiserror::Error)]
#[error("container {container}: {message}")]
pub struct StepError {
    pub container: String,
    pub message: String,
}

fn step_err(container: &str, message: impl Into<String>) -> StepError {
    StepError {
        container: container.to_string(),
        message: message.into(),
    }
}

/// Carry out the plan.
///
/// First every check, for every container, before anything is written: invalid names are
/// skipped (the report says why), running legacy containers are refused unless `--stop`, and
/// the free space for all copies together is checked. Then, per container, the steps; a failure
/// stops the run there (a partial copy stays in its staging directory and the next run resumes
/// it; containers done before stay done).
pub fn execute(
    host: &HostRoot,
    m: &mut Migration,
    opts: &ExecOptions,
    runner: &Runner,
) -> Result<(), StepError> {
    preflight(host, m, opts, runner)?;
    let progress = make_progress();
    for (idx, cp) in m.plan.containers.iter().enumerate() {
        let inst = &m.instances[idx];
        let mut done = Vec::new();
        for step in &cp.steps {
            match step {
                Step::Blocked { reason } => done.push(format!("skipped: {reason}")),
                Step::StopLegacy { unit } => {
                    if let Some(note) = ensure_stopped(&cp.name, unit, opts.stop, host, runner)? {
                        done.push(note);
                    }
                }
                Step::CopyState { from, to } => {
                    let mode = match opts.state {
                        StateArg::Copy => state::StateMode::Copy,
                        StateArg::Move => state::StateMode::Move,
                        StateArg::Skip => {
                            done.push(format!(
                                "state left in {} (--state skip); move it to {} yourself",
                                from.display(),
                                to.display()
                            ));
                            continue;
                        }
                    };
                    let src = host.real(from);
                    if mode == state::StateMode::Copy {
                        // The kernel now refuses any write to the legacy state, and reading it
                        // changes no access time. Best effort: without privileges the copy
                        // engine still never writes to the source.
                        protect(host, from, &mut done);
                    }
                    let verify = match opts.verify {
                        VerifyArg::Full => state::Verify::Full,
                        VerifyArg::Metadata => state::Verify::Metadata,
                        VerifyArg::None => state::Verify::None,
                    };
                    progress.start(&cp.name);
                    let outcome = state::migrate_state(
                        &src,
                        &host.real(to),
                        &state::MigrateStateOptions {
                            mode,
                            verify,
                            force: opts.force,
                            progress: progress.as_progress(),
                        },
                    )
                    .map_err(|e| step_err(&cp.name, format!("{e}")))?;
                    progress.finish();
                    done.push(describe_outcome(&outcome, from, to));
                    if let Some(c) = m.report.containers.get_mut(idx) {
                        c.state_result = Some(outcome.summary());
                        c.warnings.extend(outcome.warnings(&cp.name));
                    }
                }
                Step::NoState { reason } => done.push(format!("no state: {reason}")),
                Step::CarryProfile { from, to } => {
                    // The legacy profile stays as it is, access times included.
                    protect(host, from, &mut done);
                    let o = state::carry_profile(&host.real(from), &host.real(to))
                        .map_err(|e| step_err(&cp.name, format!("{e}")))?;
                    done.push(if o.already_done {
                        format!("profile {} already carried", to.display())
                    } else {
                        format!(
                            "profile {} → {}: generations {:?} linked (the store was not copied)",
                            from.display(),
                            to.display(),
                            o.generations
                        )
                    });
                }
                Step::WriteContainerFile { path }
                | Step::WriteNspawn { path }
                | Step::WriteDropin { path } => {
                    let text = file_text(step, inst);
                    write_file(
                        host,
                        &cp.name,
                        path,
                        &text,
                        &mut done,
                        &mut m.report.files_written,
                    )?;
                }
            }
        }
        if let Some(c) = m.report.containers.get_mut(idx) {
            c.done = done;
        }
    }
    // Warnings found while copying (inode flags) count too.
    m.report.finish_summary();
    if let (Some(out), Some(text)) = (m.plan.nix_output.clone(), m.report.nix_file.clone()) {
        let mut done = Vec::new();
        write_file(
            host,
            "(the declarative containers)",
            &out,
            &text,
            &mut done,
            &mut m.report.files_written,
        )?;
    }
    Ok(())
}

/// Make legacy data read-only (and noatime) for this process while we read it; without the
/// privileges for that, say so: our code still only reads it.
fn protect(host: &HostRoot, legacy: &Path, done: &mut Vec<String>) {
    if let Err(e) = crate::host::protect_read_only(&host.real(legacy)) {
        done.push(format!(
            "note: could not make {} read-only while reading it ({e}); it is still only read",
            legacy.display()
        ));
    }
}

/// The content of a file an imperative container's plan writes.
fn file_text(step: &Step, inst: &crate::translate::Instance) -> String {
    match step {
        Step::WriteNspawn { .. } => format!(
            "# Imperative container {}, managed by nixos-nspawn (migrated from nixos-container).\n{}",
            inst.name,
            crate::render::nspawn::preview(inst)
        ),
        Step::WriteDropin { .. } => crate::render::nspawn::dropin(inst),
        _ => crate::render::nix::imperative_file(inst),
    }
}

/// Every check that can fail, for every container, before anything is written.
fn preflight(
    host: &HostRoot,
    m: &Migration,
    opts: &ExecOptions,
    runner: &Runner,
) -> Result<(), StepError> {
    let mut problems = Vec::new();
    let mut need: u64 = 0;
    for cp in &m.plan.containers {
        for step in &cp.steps {
            match step {
                Step::StopLegacy { unit } if !opts.stop => {
                    if let Err(e) = check_not_running(&cp.name, unit, host, runner) {
                        problems.push(e.to_string());
                    }
                }
                // A finished copy needs nothing more; otherwise the whole tree.
                Step::CopyState { from, to }
                    if opts.state == StateArg::Copy && host.kind(to).ok().flatten().is_none() =>
                {
                    match state::required_space(&host.real(from)) {
                        Ok(n) => need = need.saturating_add(n.allocated),
                        Err(e) => problems.push(format!("container {}: {e}", cp.name)),
                    }
                }
                // A move is a rename: refused across filesystems before anything is written.
                Step::CopyState { from, to }
                    if opts.state == StateArg::Move && host.kind(to).ok().flatten().is_none() =>
                {
                    if let Err(e) = state::check_move(&host.real(from), &host.real(to)) {
                        problems.push(format!("container {}: {e}", cp.name));
                    }
                }
                _ => {}
            }
        }
    }
    if need > 0 {
        let machines = Path::new("/var/lib/machines");
        // The nearest existing ancestor tells which filesystem the copies land on.
        let mut probe = host.real(machines);
        while !probe.exists() {
            if !probe.pop() {
                break;
            }
        }
        match state::free_space(&probe) {
            Ok(free) if free < need => problems.push(format!(
                "not enough free space for the copies: {} MiB needed under {} (the filesystem of {}), {} MiB free\n\n\
                 Free some space there, copy fewer containers at a time (--only NAME), or use --state move \
                 (a rename, when the legacy state is on the same filesystem)",
                need.div_ceil(1 << 20),
                machines.display(),
                probe.display(),
                free >> 20
            )),
            Ok(_) => {}
            Err(e) => problems.push(format!("{e}")),
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(StepError {
            container: if problems.len() == 1 {
                "check".into()
            } else {
                format!("{} checks", problems.len())
            },
            message: format!("nothing was changed:\n{}", problems.join("\n")),
        })
    }
}

fn describe_outcome(o: &state::StateOutcome, from: &Path, to: &Path) -> String {
    match o {
        state::StateOutcome::Copied {
            copy,
            verify,
            resumed,
            replaced,
        } => {
            let mut s = format!(
                "state copied {} → {}: {} entries, {} MiB{}; verified ({:?}): {} entries, {} differences",
                from.display(),
                to.display(),
                copy.entries,
                copy.bytes >> 20,
                if *resumed {
                    ", resumed an interrupted run"
                } else {
                    ""
                },
                verify.level,
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
                    "; inode flags kept on {} entries",
                    copy.flags_copied
                ));
            }
            s.push_str(&format!("; {} is untouched", from.display()));
            if let Some(r) = replaced {
                s.push_str(&format!(
                    "; the previous destination was kept as {}",
                    r.display()
                ));
            }
            s
        }
        state::StateOutcome::Moved => format!(
            "state moved {} → {} (a rename on one filesystem: nothing was copied, {} no longer exists; \
             to go back, stop the new container and move it back with mv)",
            from.display(),
            to.display(),
            from.display()
        ),
        state::StateOutcome::AlreadyDone { .. } => format!("state already at {}", to.display()),
        state::StateOutcome::Skipped => format!("state left in {}", from.display()),
    }
}

fn write_file(
    host: &HostRoot,
    container: &str,
    path: &Path,
    text: &str,
    done: &mut Vec<String>,
    written: &mut Vec<PathBuf>,
) -> Result<(), StepError> {
    match write_atomic(&host.real(path), text.as_bytes(), 0o644) {
        Ok(Written::Changed) => {
            done.push(format!("wrote {}", path.display()));
            written.push(path.to_path_buf());
            Ok(())
        }
        Ok(Written::Unchanged) => {
            done.push(format!("{} already up to date", path.display()));
            Ok(())
        }
        Err(e) => Err(step_err(
            container,
            format!("cannot write {}: {e}", path.display()),
        )),
    }
}

/// Whether the legacy unit runs: `Ok` when stopped (or when nobody can tell on an offline root).
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

/// `Some(state)` when the unit is running in some way, `None` when it is stopped.
fn unit_state(
    name: &str,
    unit: &str,
    host: &HostRoot,
    runner: &Runner,
) -> Result<Option<String>, StepError> {
    let live_root = host.root() == Path::new("/");
    let out = match runner.output(&Cmd::new("systemctl", &["is-active", unit])) {
        Ok(o) => o,
        // A mounted disk of another machine: no container of it can run here.
        Err(e) if e.is_not_found() && !live_root => return Ok(None),
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

fn make_progress() -> Box<dyn CopyProgress> {
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
            "nixos-nspawn: {name}: {}/{} entries, {}/{} MiB",
            self.entries.load(Ordering::Relaxed),
            self.total_entries.load(Ordering::Relaxed),
            self.bytes.load(Ordering::Relaxed) >> 20,
            self.total_bytes.load(Ordering::Relaxed) >> 20
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
