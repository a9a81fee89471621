//! `nixos-nspawn`: parse the command line, run, map the outcome to a documented exit code.

use clap::parser::ValueSource;
use clap::{CommandFactory, FromArgMatches};
use nixos_nspawn::cli::{Cli, Command, MigrateArgs};
use nixos_nspawn::error::{Error, exit};
use nixos_nspawn::execute;
use nixos_nspawn::host::HostRoot;
use nixos_nspawn::migrate;
use nixos_nspawn::plan_file;
use nixos_nspawn::runner::Runner;
use std::io::Write;
use std::process::ExitCode;

fn main() -> ExitCode {
    let parsed = Cli::command().try_get_matches().and_then(|m| {
        let mut cli = Cli::from_arg_matches(&m)?;
        if let Command::Migrate(args) = &mut cli.command {
            args.verify_given = m
                .subcommand_matches("migrate")
                .and_then(|sm| sm.value_source("verify"))
                == Some(ValueSource::CommandLine);
        }
        Ok(cli)
    });
    let cli = match parsed {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() {
                exit::USAGE
            } else {
                exit::SUCCESS
            };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    match run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("nixos-nspawn: {e:#}");
            ExitCode::from(e.exit_code())
        }
    }
}

fn run(cli: Cli) -> Result<u8, Error> {
    match cli.command {
        Command::Migrate(args) => run_migrate(&cli.root, &args, cli.verbose),
        Command::Completions { shell } => print(&nixos_nspawn::cli::completions(shell)),
        Command::Man => print(
            &nixos_nspawn::cli::man_page()
                .map_err(|e| Error::Other(format!("cannot render the man page: {e}")))?,
        ),
        Command::Imperative(cmd) => nixos_nspawn::imperative::run(&cli.root, cli.verbose, cmd),
    }
}

fn run_migrate(root: &std::path::Path, args: &MigrateArgs, verbose: bool) -> Result<u8, Error> {
    use nixos_nspawn::rollback;
    for (names, command) in [
        (&args.rollback, rollback::Command::Rollback),
        (&args.cleanup, rollback::Command::Cleanup),
    ] {
        if !names.is_empty() {
            return rollback::run(
                root, names, command, args.yes, args.force, args.json, args.quiet, verbose,
            );
        }
    }
    // A plan file brings its own options: the run is derived exactly as the plan was.
    let (plan_in, args) = match &args.plan_in {
        None => (None, args.clone()),
        Some(path) => {
            if !args.dry_run && !args.yes {
                return Err(Error::Usage(
                    "--plan-in needs --yes (carry the plan out) or --dry-run (check that it still applies)"
                        .to_string(),
                ));
            }
            let plan = plan_file::load(path)
                .map_err(|e| Error::Refused(format!("--plan-in {}: {e}", path.display())))?;
            let o = &plan.options;
            let bad = |e: String| Error::Refused(format!("--plan-in {}: {e}", path.display()));
            let args = MigrateArgs {
                config: o.config.clone(),
                from_json: o.from_json.clone(),
                host: o.host.clone(),
                output: o.output.clone(),
                only: o.only.clone(),
                exclude: o.exclude.clone(),
                state: o.state_arg().map_err(bad)?,
                verify: o.verify_arg().map_err(bad)?,
                stop: o.stop,
                force: o.force,
                rewrite: o.rewrite,
                no_eval: o.no_eval,
                ..args.clone()
            };
            (Some((path.clone(), plan)), args)
        }
    };
    // Ordinary paths made absolute once: a plan saved from one directory applies from another,
    // and the files read are named the same way in both.
    let mut args = args;
    for p in [&mut args.config, &mut args.from_json]
        .into_iter()
        .flatten()
    {
        if let Ok(abs) = std::path::absolute(&*p) {
            *p = abs;
        }
    }
    let args = &args;
    let terminal = {
        use std::io::IsTerminal;
        std::io::stdin().is_terminal() && std::io::stderr().is_terminal()
    };
    if args.rewrite && !args.dry_run && !args.yes && !terminal {
        // At a terminal the diff is shown and the question asked (interactive); without one,
        // never wait for an answer nobody can give.
        return Err(Error::Usage(
            "--rewrite edits the host's own Nix files: give --dry-run to see the diff, or --yes \
             to apply it (a backup of every edited file is kept), or run it from a terminal to be \
             shown the diff and asked"
                .to_string(),
        ));
    }
    if args.plan_out.is_some() && !args.dry_run {
        return Err(Error::Usage(
            "--plan-out saves the plan of a dry run: add --dry-run (then apply it with --yes --plan-in FILE)"
                .to_string(),
        ));
    }
    if !args.dry_run && !args.yes && !terminal {
        // Never wait for an answer nobody can give, never guess one.
        return Err(Error::Usage(
            "migrate without --dry-run or --yes asks before each step, but there is no terminal \
             to ask on (stdin or stderr is not a terminal)\n\n\
             Use --dry-run to see the plan, --yes to carry it out without asking (for scripts and \
             fleets), or run it from a terminal."
                .to_string(),
        ));
    }
    // The plan's directory is opened before the host is sealed read-only (with `--root /` that
    // view covers every path).
    let plan_target = match &args.plan_out {
        Some(p) => Some(plan_file::Target::open(p).map_err(|e| {
            Error::Usage(format!(
                "--plan-out {}: cannot write there: {e}",
                p.display()
            ))
        })?),
        None => None,
    };
    let mut host = HostRoot::new(root).map_err(|e| {
        Error::Usage(format!(
            "--root {}: {e}\n\nGive the directory the host's root filesystem is mounted at.",
            root.display()
        ))
    })?;
    for (flag, path) in [("--config", &args.config), ("--from-json", &args.from_json)] {
        let Some(p) = path else { continue };
        // A --config inside the root is the tree's file, its links resolved inside the root.
        let is_file = match migrate::host_path_of(&host, p).filter(|_| flag == "--config") {
            Some(hp) => matches!(
                host.kind_followed(&hp),
                Ok(Some(nixos_nspawn::host::Kind::File))
            ),
            None => p.is_file(),
        };
        if !is_file {
            return Err(Error::Usage(format!(
                "{flag} {}: no such file\n\nPaths given on the command line are ordinary paths, \
                 not paths inside --root.",
                p.display()
            )));
        }
    }
    if !args.dry_run && !args.yes {
        if args.json || args.plan_in.is_some() {
            return Err(Error::Usage(
                "--json and --plan-in are for runs without questions: add --dry-run (show) or --yes (carry out)"
                    .to_string(),
            ));
        }
        // A terminal (checked above): ask before each step.
        return nixos_nspawn::interactive::run(root, args, verbose);
    }
    if args.stop && !host.is_live() {
        return Err(Error::Usage(format!(
            "--stop cannot be used with --root {}: that tree is another machine's disk, and its containers \
             are not running here (stopping container@NAME on this machine would stop a different container)\n\n\
             Make sure the tree is not in use (the machine it belongs to is shut down, nothing runs from it), \
             then run again without --stop.",
            host.root().display()
        )));
    }
    // With --yes: our own mount namespace (before any thread exists), so that the host can be
    // read through a read-only noatime view while it is scanned, and each legacy state dir made
    // read-only for this process alone while it is copied (see execute).
    let mut opts = migrate::ScanOptions {
        config: args.config.clone(),
        from_json: args.from_json.clone(),
        host_name: args.host.clone(),
        evaluated: None,
    };
    // Only the running machine is evaluated (an offline root's Nix is not this one's), and
    // before the read-only view below: Nix must be able to open its own store.
    if !args.no_eval && args.from_json.is_none() && host.root() == std::path::Path::new("/") {
        opts.evaluated = migrate::evaluate_host(&host, &opts);
    }
    // Part of a plan's fingerprint: what evaluation gave decides the plan as much as the files.
    let evaluation = plan_file::evaluation_fingerprint(
        &opts.evaluated,
        if args.no_eval {
            "--no-eval"
        } else if args.from_json.is_some() {
            "--from-json"
        } else if !host.is_live() {
            "an offline --root"
        } else {
            "no configuration to evaluate"
        },
    );
    let mut view = false;
    if args.yes {
        match nixos_nspawn::host::enter_private_mount_namespace() {
            Ok(()) => view = host.read_only_view().is_ok(),
            Err(e) => eprintln!(
                "nixos-nspawn: note: no private mount namespace ({e}); the legacy state cannot be \
                 made read-only during the copy (the copy never writes to it either way)"
            ),
        }
    }
    if args.dry_run {
        // Defence in depth: with a read-only, noatime view even a bug could not change the
        // host. Without privileges the dry run still writes nothing; say so and go on.
        if let Err(e) = host.seal_read_only() {
            eprintln!(
                "nixos-nspawn: note: could not make a read-only view of {} ({e}); reading it normally \
                 (a dry run writes nothing either way, but access times may change)",
                root.display()
            );
        }
    }
    let mut legacy = migrate::scan(&host, &opts);
    nixos_nspawn::interactive::select(&mut legacy, &args.only, &args.exclude)?;
    let mut migration = migrate::prepare(root, legacy, &args.output, args.dry_run, host.is_live());
    // --rewrite: planned (files read) while the tree is still seen read-only.
    let rewrite = args.rewrite.then(|| {
        let confined = args
            .config
            .as_ref()
            .is_none_or(|c| migrate::host_path_of(&host, c).is_some());
        let p =
            nixos_nspawn::rewrite::plan(&migration.legacy, &migration.instances, confined, &|f| {
                host.read_to_string(f)
            });
        nixos_nspawn::rewrite::exclude(&mut migration, &p.rewritten());
        migration.report.rewritten = plan_file::rewritten_files(&p);
        p
    });
    let opts = execute::ExecOptions {
        state: args.state,
        verify: args.verify,
        verify_given: args.verify_given,
        stop: args.stop,
        force: args.force,
        progress: if args.quiet {
            execute::ProgressKind::None
        } else {
            execute::ProgressKind::Auto
        },
        state_for: Default::default(),
        stop_for: Default::default(),
    };
    migrate::set_state_modes(&mut migration, &|n| opts.state_of(n).into());
    // Every destination is checked while the tree is still seen read-only and noatime:
    // resolving links and reading existing files must not change the host either.
    let checked = execute::check_destinations(&host, &migration, &opts, args.yes);
    migrate::add_redirects(&mut migration, &checked.redirects);
    let rewrite_problems = match &rewrite {
        Some(p) => nixos_nspawn::rewrite::preflight(&host, p, migration.plan.nix_output.as_deref()),
        None => Vec::new(),
    };
    if args.dry_run {
        let mut problems = checked.problems.clone();
        problems.extend(execute::writability_problems(&host, &checked));
        problems.extend(execute::move_problems(&host, &migration, &opts));
        problems.extend(rewrite_problems.iter().cloned());
        migrate::add_refusals(&mut migration, &problems);
    } else if !rewrite_problems.is_empty() {
        return Err(Error::Other(format!(
            "migrate --yes --rewrite refuses to start (nothing was written):\n  {}",
            rewrite_problems.join("\n  ")
        )));
    }
    // The plan file is made (or compared) while the host is still seen read-only and noatime.
    let ordinary: Vec<std::path::PathBuf> = args
        .config
        .iter()
        .chain(args.from_json.iter())
        .cloned()
        .collect();
    let derived = (args.plan_out.is_some() || plan_in.is_some()).then(|| {
        plan_file::make(
            &host,
            &migration,
            plan_options(args),
            &ordinary,
            &evaluation,
            rewrite.as_ref(),
        )
    });
    let mut refusal = None;
    if let (Some((path, plan)), Some(now)) = (&plan_in, &derived) {
        let why = plan_file::differences(plan, now);
        if !why.is_empty() {
            refusal = Some(execute::StepError {
                container: None,
                message: format!(
                    "nothing was changed: the plan {} does not apply to this host as it is now:\n- {}\n\n\
                     Make a new plan (migrate --dry-run --plan-out FILE), review it, and apply that one.",
                    path.display(),
                    why.join("\n- ")
                ),
                refused: Some(why),
            });
        }
    }
    if view && let Err(e) = host.end_read_only_view() {
        return Err(Error::Other(format!(
            "cannot lift the read-only view of {} after reading it: {e}; nothing was changed",
            root.display()
        )));
    }
    let mut failure = None;
    if let Some(e) = refusal {
        migration.report.set_error(e.to_run_error(), true);
        failure = Some(e);
    } else if args.yes
        && let Err(e) = execute::execute(&host, &mut migration, &opts, &Runner { verbose }, checked)
    {
        // The report carries the error too, so that a fleet reading --json sees why.
        migration.report.set_error(e.to_run_error(), e.is_refusal());
        failure = Some(e);
    }
    // The host's files are rewritten last, once everything else was done.
    let mut rewrite_failure = None;
    if args.yes
        && failure.is_none()
        && let Some(p) = &rewrite
    {
        // With --plan-in: exactly the plan's bytes (equal to the re-derived ones: checked).
        let mut p = p.clone();
        if let Some((_, plan)) = &plan_in {
            for e in &mut p.edits {
                if let Some(r) = plan.rewrite.iter().find(|r| r.file == e.file) {
                    e.rewritten = r.content.clone();
                }
            }
        }
        if let Err(e) = nixos_nspawn::rewrite::apply_now(&host, &p, &mut migration.report) {
            rewrite_failure = Some(e);
        }
    }
    if let Some(p) = &rewrite
        && !args.quiet
    {
        // The diff first (stderr with --json, so that stdout stays one JSON document).
        let text = p.describe();
        if args.json {
            eprint!("{text}");
        } else {
            print!("{text}");
        }
    }
    if let (Some(path), Some(target), Some(plan)) = (&args.plan_out, &plan_target, &derived) {
        plan_file::save(plan, target).map_err(|e| {
            Error::Other(format!(
                "--plan-out {}: cannot write the plan: {e}",
                path.display()
            ))
        })?;
        if !args.quiet && !args.json {
            eprintln!(
                "nixos-nspawn: plan saved to {}; review it, then apply exactly it with: \
                 nixos-nspawn{} migrate --yes --plan-in {}",
                path.display(),
                if root == std::path::Path::new("/") {
                    String::new()
                } else {
                    format!(" --root {}", root.display())
                },
                path.display()
            );
        }
    }
    let report = &migration.report;
    let text = if args.json {
        report.to_json()
    } else if args.quiet {
        String::new()
    } else {
        report.to_text()
    };
    let mut out = std::io::stdout().lock();
    let printed = if text.is_empty() {
        Ok(())
    } else {
        writeln!(out, "{text}")
    };
    match printed {
        Ok(()) => {}
        // A closed pipe (`| head`) is not an error.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(exit::SUCCESS),
        Err(e) => return Err(Error::Other(format!("cannot write the report: {e}"))),
    }
    if let Some(e) = failure {
        return Err(Error::Step(e));
    }
    if let Some(e) = rewrite_failure {
        return Err(Error::Other(format!("--rewrite: {e}")));
    }
    Ok(report.summary.exit_code)
}

/// Write generated text to stdout; a closed pipe is not an error.
fn print(bytes: &[u8]) -> Result<u8, Error> {
    match std::io::stdout().lock().write_all(bytes) {
        Ok(()) => Ok(exit::SUCCESS),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(exit::SUCCESS),
        Err(e) => Err(Error::Other(format!("cannot write to stdout: {e}"))),
    }
}

/// The options a plan is derived with (saved in the plan file).
fn plan_options(args: &MigrateArgs) -> plan_file::PlanOptions {
    plan_file::PlanOptions {
        config: args.config.clone(),
        from_json: args.from_json.clone(),
        host: args.host.clone(),
        output: args.output.clone(),
        only: args.only.clone(),
        exclude: args.exclude.clone(),
        state: plan_file::state_name(args.state).to_string(),
        verify: plan_file::verify_name(args.verify).to_string(),
        stop: args.stop,
        force: args.force,
        rewrite: args.rewrite,
        no_eval: args.no_eval,
    }
}
