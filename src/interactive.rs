//! `nixos-nspawn migrate` for a person at a terminal (neither `--dry-run` nor `--yes`).
//!
//! 1. A table of every legacy container: name, kind, network, state size, points that need a
//!    human, whether it runs, whether an interrupted copy waits to be resumed.
//! 2. Per container: the new Nix as a coloured diff against the old `containers.NAME` block (an
//!    imperative container: against its `.conf`), the warnings, and questions whose defaults
//!    change nothing that cannot be undone: migrate this one? (yes: a copy leaves the legacy
//!    container as it is) stop it now? (no: then it is left untouched) copy or move the state?
//!    (copy). "No" leaves that container untouched.
//! 3. One last confirmation, then the same checks and steps as `--yes` (see `execute`), with
//!    progress bars for the copies.
//! 4. The exact next steps: import the file, remove the old definitions, `nixos-rebuild boot`
//!    or `switch`, how to start the new container, how to go back.
//!
//! Ctrl-C at any point stops at once and says how to resume or roll back (see `interrupt`).
//! Without a terminal `main` refuses before this module is reached: it never waits for an
//! answer nobody can give.

use crate::cli::{MigrateArgs, StateArg};
use crate::error::{Error, exit};
use crate::execute::{self, ExecOptions, ProgressKind};
use crate::host::HostRoot;
use crate::interrupt;
use crate::legacy::{Kind, LegacyHost};
use crate::migrate::{self, Migration};
use crate::report::{ContainerStatus, human_size};
use crate::rewrite::{FileEdit, RewritePlan};
use crate::runner::Runner;
use crate::textdiff::{self, Line};
use crate::translate::Instance;
use crate::warnings::Category;
use console::{Term, style};
use dialoguer::theme::{ColorfulTheme, SimpleTheme, Theme};
use dialoguer::{Confirm, Select};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

/// What the table shows about one container.
struct Info {
    name: String,
    kind: &'static str,
    network: String,
    /// Allocated bytes of the legacy state; `None` when there is none.
    size: Option<u64>,
    needs_human: usize,
    /// `Some(state)` when the legacy unit runs (live root only).
    running: Option<String>,
    /// An interrupted copy waits in the staging directory.
    resumable: bool,
    blocked: Option<String>,
}

/// The person's answers for one container.
struct Choice {
    name: String,
    state: StateArg,
    stop: bool,
}

struct Ui {
    term: Term,
    theme: Box<dyn Theme>,
}

impl Ui {
    fn new() -> Ui {
        // NO_COLOR (https://no-color.org): any non-empty value turns colours off.
        let colours = std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
            && console::colors_enabled_stderr();
        console::set_colors_enabled_stderr(colours);
        console::set_colors_enabled(colours);
        Ui {
            term: Term::stderr(),
            theme: if colours {
                Box::new(ColorfulTheme::default())
            } else {
                Box::new(SimpleTheme)
            },
        }
    }

    fn say(&self, text: &str) {
        // The terminal went away: the next question fails and ends the run.
        let _ = self.term.write_line(text);
    }

    fn confirm(&self, question: &str, default: bool) -> Result<bool, Error> {
        Confirm::with_theme(self.theme.as_ref())
            .with_prompt(question)
            .default(default)
            .wait_for_newline(true)
            .interact_on(&self.term)
            .map_err(|e| Error::Other(format!("cannot ask on the terminal: {e}")))
    }

    fn select(&self, question: &str, items: &[String], default: usize) -> Result<usize, Error> {
        Select::with_theme(self.theme.as_ref())
            .with_prompt(question)
            .items(items)
            .default(default)
            .interact_on(&self.term)
            .map_err(|e| Error::Other(format!("cannot ask on the terminal: {e}")))
    }
}

/// The interactive migration. `main` has checked that stdin and stderr are terminals.
pub fn run(root: &Path, args: &MigrateArgs, verbose: bool) -> Result<u8, Error> {
    let ui = Ui::new();
    if let Err(e) = interrupt::install() {
        ui.say(&format!(
            "note: Ctrl-C handler not installed ({e}); Ctrl-C still stops safely, without the explanation"
        ));
    }
    interrupt::set_message("Interrupted while reading the host: nothing was changed.");
    let mut host = HostRoot::new(root).map_err(|e| {
        Error::Usage(format!(
            "--root {}: {e}\n\nGive the directory the host's root filesystem is mounted at.",
            root.display()
        ))
    })?;
    let mut opts = migrate::ScanOptions {
        config: args.config.clone(),
        from_json: args.from_json.clone(),
        host_name: args.host.clone(),
        evaluated: None,
    };
    // As with --yes: the running machine's containers are evaluated with its own Nix first
    // (before the read-only view: Nix must open its store).
    if !args.no_eval && args.from_json.is_none() && host.is_live() {
        opts.evaluated = migrate::evaluate_host(&host, &opts);
    }
    // Then the host is read through a read-only, noatime view in our own mount namespace, and
    // each legacy state made read-only for this process while it is copied.
    let view = match crate::host::enter_private_mount_namespace() {
        Ok(()) => host.read_only_view().is_ok(),
        Err(_) => false,
    };
    let mut legacy = migrate::scan(&host, &opts);
    select(&mut legacy, &args.only, &args.exclude)?;
    let preview = migrate::prepare(root, legacy.clone(), &args.output, true, host.is_live());
    let runner = Runner { verbose };
    if preview.report.containers.is_empty() {
        ui.say("No legacy containers found: nothing to migrate.");
        return Ok(exit::SUCCESS);
    }
    let infos = gather(&host, &preview, &runner);
    ui.say(&table(&infos, host.root()));
    for w in preview
        .report
        .problems
        .iter()
        .filter(|w| w.category == Category::NeedsHuman)
    {
        ui.say(&format!(
            "{} [{}] {}",
            style("host, needs a human:").red().bold(),
            w.code,
            w.message
        ));
    }

    interrupt::set_message(
        "Interrupted at a question: nothing was changed. Run `nixos-nspawn migrate` again to start over.",
    );
    let mut choices: Vec<Choice> = Vec::new();
    for (idx, info) in infos.iter().enumerate() {
        let (Some(c), Some(inst)) = (
            preview.report.containers.get(idx),
            preview.instances.get(idx),
        ) else {
            continue;
        };
        ui.say(&format!(
            "\n{}",
            style(format!("━━ {} ({}) ━━", info.name, info.kind)).bold()
        ));
        if let Some(reason) = &info.blocked {
            ui.say(&format!(
                "{} {reason}\nLeft untouched.",
                style("Cannot be migrated:").red().bold()
            ));
            continue;
        }
        ui.say(&show_diff(&host, &preview, idx, inst, args.rewrite));
        for w in &c.warnings {
            let label = match w.category {
                Category::NeedsHuman => style("needs a human").red().bold(),
                Category::ChangedMeaning => style("changed meaning").yellow(),
            };
            ui.say(&format!(
                "  {label} [{}] {}",
                w.code,
                w.message.replace('\n', "\n      ")
            ));
        }
        if info.resumable {
            ui.say(&format!(
                "  {} an interrupted copy of {} waits to be resumed",
                style("note:").cyan(),
                info.name
            ));
        }
        let q = if info.needs_human > 0 {
            format!(
                "Migrate {} now? ({} point(s) will need you afterwards)",
                info.name, info.needs_human
            )
        } else {
            format!("Migrate {} now?", info.name)
        };
        if !ui.confirm(&q, true)? {
            ui.say(&format!("{} is left untouched.", info.name));
            continue;
        }
        let mut stop = false;
        if let Some(state) = &info.running {
            stop = ui.confirm(
                &format!(
                    "container@{}.service is {state}. Stop it now? (its state cannot be copied while it runs; \
                     no leaves it running and untouched)",
                    info.name
                ),
                false,
            )?;
            if !stop {
                ui.say(&format!(
                    "{} is left untouched. Stop it when convenient (systemctl stop container@{}) and run again.",
                    info.name, info.name
                ));
                continue;
            }
        }
        let mut state = args.state;
        if let Some(from) = &inst.state.from {
            let size = info.size.map(human_size).unwrap_or_default();
            // Asked before the question, so that a move that would be refused later (another
            // filesystem, another btrfs subvolume, a mount inside) is not offered as if it
            // could work.
            let cannot_move = move_refusal(&host, from, &inst.state.to);
            let items = [
                format!(
                    "copy ({size}; the legacy container keeps its state and keeps working; --rollback can go back)"
                ),
                match &cannot_move {
                    None => "move (a rename: instant, same filesystem only; the legacy container loses its state)"
                        .to_string(),
                    Some(why) => format!("move (not possible here: {why})"),
                },
                "skip (leave the state where it is; move it yourself)".to_string(),
            ];
            let mut default = match args.state {
                StateArg::Copy => 0,
                StateArg::Move if cannot_move.is_none() => 1,
                StateArg::Move => 0,
                StateArg::Skip => 2,
            };
            state = loop {
                match ui.select(
                    &format!("How should the state of {} come across?", info.name),
                    &items,
                    default,
                )? {
                    1 => {
                        if let Some(why) = &cannot_move {
                            ui.say(&format!(
                                "{} cannot be moved: {why}. Choose copy (the legacy state stays \
                                 untouched) or skip.",
                                info.name
                            ));
                            default = 0;
                            continue;
                        }
                        break StateArg::Move;
                    }
                    2 => break StateArg::Skip,
                    _ => break StateArg::Copy,
                }
            };
        }
        choices.push(Choice {
            name: info.name.clone(),
            state,
            stop,
        });
    }
    if choices.is_empty() {
        ui.say("\nNo container chosen: nothing was changed.");
        return Ok(exit::SUCCESS);
    }
    // The real run, for the chosen containers only: the same checks and steps as --yes.
    let names: Vec<String> = choices.iter().map(|c| c.name.clone()).collect();
    legacy.containers.retain(|c| names.contains(&c.name));
    let mut m = migrate::prepare(root, legacy, &args.output, false, host.is_live());
    // --rewrite: the diff of every host file it edits, and a question whose default (no)
    // leaves them as they are.
    let rewrite = if args.rewrite {
        ask_rewrite(&ui, &host, args, &mut m)?
    } else {
        None
    };
    let mut plan_text = String::from("\nAbout to:\n");
    for c in &choices {
        let _ = writeln!(
            plan_text,
            "  {}: {}{} the state",
            c.name,
            if c.stop { "stop it, " } else { "" },
            match c.state {
                StateArg::Copy => "copy",
                StateArg::Move => "move",
                StateArg::Skip => "leave",
            }
        );
    }
    if let Some(p) = &rewrite {
        for e in &p.edits {
            let _ = writeln!(
                plan_text,
                "  rewrite {} in place ({}), keeping the original as {}.bak-TIME",
                e.file.display(),
                e.containers.join(", "),
                e.file.display()
            );
        }
    }
    if let Some(out) = &m.plan.nix_output {
        let _ = writeln!(
            plan_text,
            "  write the new definitions to {} (import it from your configuration)",
            out.display()
        );
    }
    ui.say(&plan_text);
    if !ui.confirm("Carry this out now?", true)? {
        ui.say("Nothing was changed.");
        return Ok(exit::SUCCESS);
    }

    let opts = ExecOptions {
        state: args.state,
        verify: args.verify,
        verify_given: args.verify_given,
        // Only the containers whose stop was agreed to, each on its own answer.
        stop: false,
        force: args.force,
        progress: if args.quiet {
            ProgressKind::None
        } else {
            ProgressKind::Auto
        },
        state_for: choices.iter().map(|c| (c.name.clone(), c.state)).collect(),
        stop_for: choices.iter().map(|c| (c.name.clone(), c.stop)).collect(),
    };
    let checked = execute::check_destinations(&host, &m, &opts, true);
    if view && let Err(e) = host.end_read_only_view() {
        return Err(Error::Other(format!(
            "cannot lift the read-only view of {} after reading it: {e}; nothing was changed",
            root.display()
        )));
    }
    interrupt::set_message(&interrupted_during(&names, &host));
    let mut result = execute::execute(&host, &mut m, &opts, &runner, checked);
    // The host's own files last, once everything else was done (as with --yes).
    let mut rewrote = Vec::new();
    if result.is_ok()
        && let Some(p) = &rewrite
    {
        match crate::rewrite::apply_now(&host, p, &mut m.report) {
            Ok(()) => rewrote = p.edits.clone(),
            Err(e) => {
                result = Err(execute::StepError {
                    container: None,
                    message: format!("--rewrite: {e}"),
                    refused: None,
                })
            }
        }
    }
    interrupt::set_message(
        "Interrupted after the migration finished: everything it wrote is in place; see the report above.",
    );
    ui.say("");
    for c in &m.report.containers {
        ui.say(&format!(
            "{} {}",
            style(format!("{}:", c.name)).bold(),
            c.status.as_str()
        ));
        for d in &c.done {
            ui.say(&format!("  {d}"));
        }
    }
    for d in &m.report.done {
        ui.say(d);
    }
    if let Err(e) = result {
        let refused = e.is_refusal();
        m.report.set_error(e.to_run_error(), refused);
        ui.say(&format!(
            "\n{} {e}",
            style(if refused { "Refused:" } else { "Failed:" })
                .red()
                .bold()
        ));
        if !refused {
            ui.say(&resume_or_rollback(&names));
        }
        return Ok(m.report.summary.exit_code);
    }
    ui.say(&next_steps(&m, &host, &rewrote));
    Ok(m.report.summary.exit_code)
}

/// `--rewrite` at a terminal: plan it for the chosen containers, show the diff of every host
/// file it edits, and ask, with "no" as the default. `Some(plan)` on yes: the containers it
/// rewrites leave the separate output file (`m` is changed accordingly). `None` on no (or when
/// the files cannot be written): every host file stays as it is, the new definitions go to the
/// output file as without `--rewrite`, and the screen says so. Nothing is written here.
fn ask_rewrite(
    ui: &Ui,
    host: &HostRoot,
    args: &MigrateArgs,
    m: &mut Migration,
) -> Result<Option<RewritePlan>, Error> {
    let confined = args
        .config
        .as_ref()
        .is_none_or(|c| migrate::host_path_of(host, c).is_some());
    let p = crate::rewrite::plan(&m.legacy, &m.instances, confined, &|f| {
        host.read_to_string(f)
    });
    ui.say(&format!(
        "\n{}\n{}",
        style("━━ --rewrite: the host's own Nix files ━━").bold(),
        colour_diff(&p.describe())
    ));
    let output = args.output.display().to_string();
    let instead = |why: &str| {
        ui.say(&format!(
            "{why}: the host's Nix files stay as they are, and the new definitions go to {output} \
             instead (as without --rewrite)."
        ))
    };
    if p.edits.is_empty() {
        // Nothing to write; containers already in the new form stay out of the output file.
        crate::rewrite::exclude(m, &p.rewritten());
        return Ok(Some(p));
    }
    let problems = crate::rewrite::preflight(host, &p, m.plan.nix_output.as_deref());
    if !problems.is_empty() {
        for pr in &problems {
            ui.say(&format!("{} {pr}", style("cannot rewrite:").red().bold()));
        }
        instead("These files cannot be rewritten");
        return Ok(None);
    }
    let files: Vec<String> = p
        .edits
        .iter()
        .map(|e| e.file.display().to_string())
        .collect();
    // The explanation on its own lines: a prompt wider than the terminal is redrawn badly.
    ui.say(&format!(
        "Yes: {} rewritten as shown, {} kept as FILE.bak-TIME (--rollback gives the old \
         definitions back).\nNo: the files stay as they are, and the new definitions go to \
         {output}.",
        files.join(", ") + if files.len() == 1 { " is" } else { " are" },
        if files.len() == 1 {
            "its original"
        } else {
            "the original of each"
        }
    ));
    if !ui.confirm("Rewrite in place?", false)? {
        instead("Not rewritten");
        return Ok(None);
    }
    crate::rewrite::exclude(m, &p.rewritten());
    Ok(Some(p))
}

/// A unified diff with colours (when they are on): headers bold, hunks cyan, removed lines red,
/// added lines green.
fn colour_diff(text: &str) -> String {
    let mut o = String::new();
    for l in text.lines() {
        let line = if l.starts_with("--- ") || l.starts_with("+++ ") {
            style(l).bold().to_string()
        } else if l.starts_with("@@") {
            style(l).cyan().to_string()
        } else if l.starts_with('-') {
            style(l).red().to_string()
        } else if l.starts_with('+') {
            style(l).green().to_string()
        } else if l.starts_with("--rewrite:") {
            style(l).yellow().to_string()
        } else {
            l.to_string()
        };
        o.push_str(&line);
        o.push('\n');
    }
    o
}

/// `--only` / `--exclude`, with unknown names refused (a typo must not mean "all").
pub fn select(legacy: &mut LegacyHost, only: &[String], exclude: &[String]) -> Result<(), Error> {
    let known: Vec<String> = legacy.containers.iter().map(|c| c.name.clone()).collect();
    for (flag, names) in [("--only", only), ("--exclude", exclude)] {
        for want in names {
            if !known.contains(want) {
                return Err(Error::Usage(format!(
                    "{flag} {want}: no legacy container of that name\n\nKnown containers: {}",
                    if known.is_empty() {
                        "none".to_string()
                    } else {
                        known.join(", ")
                    }
                )));
            }
        }
    }
    legacy
        .containers
        .retain(|c| (only.is_empty() || only.contains(&c.name)) && !exclude.contains(&c.name));
    Ok(())
}

fn network(i: &Instance) -> String {
    match &i.spec.network {
        None => "host".to_string(),
        Some(n) => match (&n.bridge, &n.zone) {
            (Some(b), _) => format!("bridge {b}"),
            (None, _) if n.bridged() => {
                format!("bridge {}", n.bridge_label().unwrap_or_default())
            }
            (None, Some(z)) => format!("zone {z}"),
            _ if !n.veth => "private, no veth".to_string(),
            _ => "private veth".to_string(),
        },
    }
}

fn gather(host: &HostRoot, m: &Migration, runner: &Runner) -> Vec<Info> {
    m.instances
        .iter()
        .zip(m.report.containers.iter())
        .map(|(i, c)| {
            let size = i.state.from.as_ref().and_then(|from| {
                let real = host.confined_real_path(from).ok()?;
                crate::state::required_space(&real)
                    .ok()
                    .map(|s| s.allocated)
            });
            let running = execute::unit_state(
                &i.name,
                &format!("container@{}.service", i.name),
                host,
                runner,
            )
            .ok()
            .flatten();
            let staging = i
                .state
                .to
                .parent()
                .map(|p| p.join(format!(".{}.partial", i.name)));
            Info {
                name: i.name.clone(),
                kind: c.kind,
                network: network(i),
                size,
                needs_human: c
                    .warnings
                    .iter()
                    .filter(|w| w.category == Category::NeedsHuman)
                    .count(),
                running,
                resumable: staging.is_some_and(|s| host.exists(&s)),
                blocked: (c.status == ContainerStatus::Blocked)
                    .then(|| crate::plan::blocked(i))
                    .flatten(),
            }
        })
        .collect()
}

fn table(infos: &[Info], root: &Path) -> String {
    let mut o = format!(
        "Legacy containers on {}:\n\n",
        if root == Path::new("/") {
            "this machine".to_string()
        } else {
            root.display().to_string()
        }
    );
    let rows: Vec<[String; 6]> = infos
        .iter()
        .map(|i| {
            [
                i.name.clone(),
                i.kind.to_string(),
                i.network.clone(),
                i.size.map(human_size).unwrap_or_else(|| "none".into()),
                if i.blocked.is_some() {
                    "blocked".to_string()
                } else {
                    i.needs_human.to_string()
                },
                match (&i.running, i.resumable) {
                    (Some(s), _) => s.clone(),
                    (None, true) => "copy interrupted".to_string(),
                    (None, false) => String::new(),
                },
            ]
        })
        .collect();
    let head = ["NAME", "KIND", "NETWORK", "STATE", "NEEDS A HUMAN", "NOTE"];
    let mut width = head.map(str::len);
    for r in &rows {
        for (w, cell) in width.iter_mut().zip(r.iter()) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &[String]| -> String {
        let mut s = String::from("  ");
        for (cell, w) in cells.iter().zip(width.iter()) {
            s.push_str(&format!("{cell:<w$}  "));
        }
        s.trim_end().to_string()
    };
    let _ = writeln!(o, "{}", style(line(&head.map(String::from))).bold());
    for r in &rows {
        let _ = writeln!(o, "{}", line(r));
    }
    o
}

/// The old definition(s) of a container and the new text, as a coloured diff.
/// Why `--state move` of `from` to `to` would be refused, in the first line of the refusal
/// without the paths (they are on the screen already), or `None` ([`execute::move_refusal`]).
fn move_refusal(host: &HostRoot, from: &Path, to: &Path) -> Option<String> {
    crate::execute::move_refusal(host, from, to).map(|e| {
        let first = e.lines().next().unwrap_or_default();
        // "cannot move A to B: REASON" → REASON.
        first
            .split_once(": ")
            .map(|(_, why)| why)
            .unwrap_or(first)
            .to_string()
    })
}

fn show_diff(host: &HostRoot, m: &Migration, idx: usize, inst: &Instance, rewrite: bool) -> String {
    let Some(c) = m.report.containers.get(idx) else {
        return String::new();
    };
    let legacy = m.legacy.containers.get(idx);
    let (old_label, old, new_label, new) = match inst.kind {
        Kind::Imperative => {
            let conf = legacy.and_then(|l| l.conf_file.clone());
            let old = conf
                .as_ref()
                .and_then(|p| host.read_to_string(p).ok())
                .unwrap_or_default();
            let new_path = crate::plan::container_file(&inst.name);
            (
                conf.map(|p| p.display().to_string())
                    .unwrap_or_else(|| "(no .conf)".into()),
                old,
                new_path.display().to_string(),
                c.files.get(&new_path).cloned().unwrap_or_default(),
            )
        }
        Kind::Declarative => {
            let mut old = String::new();
            let mut places = Vec::new();
            for f in &m.report.files_read {
                if f.extension().is_none_or(|e| e != "nix") {
                    continue;
                }
                let Ok(text) = host.read_to_string(f) else {
                    continue;
                };
                for d in crate::nix_block::find(&text, &inst.name) {
                    places.push(format!("{}:{}", f.display(), d.line));
                    old.push_str(&d.indent);
                    old.push_str(&d.text);
                    old.push('\n');
                }
            }
            (
                if places.is_empty() {
                    format!(
                        "(no containers.{} definition found in the Nix files read)",
                        inst.name
                    )
                } else {
                    places.join(", ")
                },
                old,
                if rewrite {
                    "its new definition (--rewrite: where it goes is shown before anything is \
                     written)"
                        .to_string()
                } else {
                    format!(
                        "{} (its part)",
                        m.report
                            .output
                            .as_deref()
                            .unwrap_or(Path::new("the Nix file"))
                            .display()
                    )
                },
                c.nix.clone(),
            )
        }
    };
    let mut o = format!(
        "{}\n{}\n",
        style(format!("--- old: {old_label}")).red(),
        style(format!("+++ new: {new_label}")).green()
    );
    for l in textdiff::diff(&old, &new) {
        let _ = match l {
            Line::Same(t) => writeln!(o, "  {t}"),
            Line::Removed(t) => writeln!(o, "{}", style(format!("- {t}")).red()),
            Line::Added(t) => writeln!(o, "{}", style(format!("+ {t}")).green()),
        };
    }
    o
}

fn interrupted_during(names: &[String], host: &HostRoot) -> String {
    format!(
        "Interrupted during the migration of {}.\n\
         Nothing is half-written: what was finished stays finished, an interrupted state copy waits in \
         its staging directory (/var/lib/machines/.NAME.partial) and every file is written whole or \
         not at all. The legacy containers were not changed.\n\
         To resume: run `nixos-nspawn{} migrate` again and choose the same containers (the copy \
         continues where it stopped).\n\
         To go back: `nixos-nspawn{} migrate --rollback {}`.",
        names.join(", "),
        root_flag(host),
        root_flag(host),
        names.join(" ")
    )
}

fn root_flag(host: &HostRoot) -> String {
    if host.is_live() {
        String::new()
    } else {
        format!(" --root {}", host.root().display())
    }
}

fn resume_or_rollback(names: &[String]) -> String {
    format!(
        "What was finished stays finished; a partial copy waits in its staging directory.\n\
         Fix the cause above, then run `nixos-nspawn migrate` again to resume, or go back with \
         `nixos-nspawn migrate --rollback {}`.",
        names.join(" ")
    )
}

/// What the administrator does next, exactly.
pub fn next_steps(m: &Migration, host: &HostRoot, rewrote: &[FileEdit]) -> String {
    let r = &m.report;
    let done: Vec<&crate::report::ContainerReport> = r
        .containers
        .iter()
        .filter(|c| c.status == ContainerStatus::Done)
        .collect();
    let in_place: Vec<&str> = rewrote
        .iter()
        .flat_map(|e| e.containers.iter().map(String::as_str))
        .collect();
    let declarative: Vec<&str> = done
        .iter()
        .filter(|c| c.kind == "declarative")
        .map(|c| c.name.as_str())
        .collect();
    // Those that went to the separate output file (not rewritten in place).
    let separate: Vec<&str> = declarative
        .iter()
        .copied()
        .filter(|n| !in_place.contains(n))
        .collect();
    let imperative: Vec<&str> = done
        .iter()
        .filter(|c| c.kind == "imperative")
        .map(|c| c.name.as_str())
        .collect();
    let rf = root_flag(host);
    let mut o = format!("\n{}\n", style("Next steps").bold());
    let mut n = 0;
    let mut step = |o: &mut String, text: String| {
        n += 1;
        let _ = writeln!(o, "{n}. {text}");
    };
    if !rewrote.is_empty() {
        let files: Vec<String> = rewrote
            .iter()
            .map(|e| e.file.display().to_string())
            .collect();
        step(
            &mut o,
            format!(
                "Your configuration now defines {} in place, in {} (the originals are kept as FILE.bak-TIME). \
                 It needs the nixos-nspawn module:\n     imports = [ /path/to/nixos-nspawn/nixos ];   \
                 (flakes: nixos-nspawn.nixosModules.default; see nixos/README.md)",
                in_place.join(", "),
                files.join(", ")
            ),
        );
    }
    if let (Some(out), false) = (&r.output, separate.is_empty()) {
        let file = out
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default();
        step(
            &mut o,
            format!(
                "Import {} from your configuration.nix{}:\n     \
                 imports = [ ./{file}{} ];   (flakes: nixos-nspawn.nixosModules.default; see nixos/README.md)",
                out.display(),
                if rewrote.is_empty() {
                    ", together with the nixos-nspawn module"
                } else {
                    ""
                },
                if rewrote.is_empty() {
                    " /path/to/nixos-nspawn/nixos"
                } else {
                    ""
                }
            ),
        );
        let mut defs: BTreeMap<&str, Vec<String>> = BTreeMap::new();
        for name in &separate {
            for f in &r.files_read {
                if f.extension().is_some_and(|e| e == "nix")
                    && let Ok(text) = host.read_to_string(f)
                {
                    for d in crate::nix_block::find(&text, name) {
                        defs.entry(name)
                            .or_default()
                            .push(format!("{}:{}", f.display(), d.line));
                    }
                }
            }
        }
        let mut lines = String::new();
        for name in &separate {
            let at = defs
                .get(name)
                .map(|v| v.join(", "))
                .unwrap_or_else(|| "(not found in the files read; search for it)".into());
            let _ = write!(lines, "\n     containers.{name}: {at}");
        }
        step(
            &mut o,
            format!("Remove the old definitions (a name can only be one or the other):{lines}"),
        );
    }
    if !declarative.is_empty() {
        if r.summary.needs_human > 0 {
            step(
                &mut o,
                format!(
                    "Resolve the {} point(s) marked \"needs a human\"{}.",
                    r.summary.needs_human,
                    match &r.output {
                        Some(out) if !separate.is_empty() =>
                            format!(" (also comments in {})", out.display()),
                        _ => String::new(),
                    }
                ),
            );
        }
        step(
            &mut o,
            "Build and activate: `nixos-rebuild boot` (the switch happens at the next reboot; safest on a \
             remote host) or `nixos-rebuild switch` (now; test first with `nixos-rebuild test`)."
                .to_string(),
        );
        step(
            &mut o,
            format!(
                "Start: autoStart containers start with the system; otherwise `machinectl start NAME` \
                 (systemctl start systemd-nspawn@NAME). Check: `machinectl status {}`.",
                declarative.join(" ")
            ),
        );
    }
    if !imperative.is_empty() {
        step(
            &mut o,
            format!(
                "Imperative containers ({}): their files are in place; start them with `machinectl start NAME` \
                 once the nixos-nspawn module is imported (it makes {} visible to systemd).",
                imperative.join(", "),
                crate::plan::IMPERATIVE_NSPAWN_DIR
            ),
        );
    }
    let all: Vec<&str> = declarative
        .iter()
        .chain(imperative.iter())
        .copied()
        .collect();
    if !all.is_empty() {
        step(
            &mut o,
            format!(
                "To go back: `nixos-nspawn{rf} migrate --rollback {}` removes what the migration created and \
                 leaves the legacy containers as they are ({}).",
                all.join(" "),
                if rewrote.is_empty() {
                    "restore their definitions if you removed them"
                } else {
                    "the rewritten definitions get their old form back too"
                }
            ),
        );
        step(
            &mut o,
            format!(
                "When the new containers have booted and you are content: `nixos-nspawn{rf} migrate --cleanup {}` \
                 removes the legacy state, profiles and configuration.",
                all.join(" ")
            ),
        );
    }
    if all.is_empty() {
        let _ = writeln!(o, "Nothing was migrated.");
    }
    o
}
