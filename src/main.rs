//! `nixos-nspawn`: parse the command line, run, map the outcome to a documented exit code.

use clap::Parser;
use nixos_nspawn::cli::{Cli, Command, MigrateArgs};
use nixos_nspawn::error::{Error, exit};
use nixos_nspawn::execute;
use nixos_nspawn::host::HostRoot;
use nixos_nspawn::migrate;
use nixos_nspawn::runner::Runner;
use std::io::Write;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
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
        Command::Imperative(cmd) => nixos_nspawn::imperative::run(&cli.root, cli.verbose, cmd),
    }
}

fn run_migrate(root: &std::path::Path, args: &MigrateArgs, verbose: bool) -> Result<u8, Error> {
    if args.rewrite && !args.dry_run && !args.yes {
        return Err(Error::Usage(
            "--rewrite edits the host's own Nix files: give --dry-run to see the diff, or --yes \
             to apply it (a backup of every edited file is kept)"
                .to_string(),
        ));
    }
    if !args.dry_run && !args.yes {
        return Err(Error::Usage(
            "migrate needs --dry-run (show the plan) or --yes (carry it out without asking)\n\n\
             The interactive mode that asks before each step is not available yet."
                .to_string(),
        ));
    }
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
    if !args.only.is_empty() {
        let known: Vec<String> = legacy.containers.iter().map(|c| c.name.clone()).collect();
        for want in &args.only {
            if !known.contains(want) {
                return Err(Error::Usage(format!(
                    "--only {want}: no legacy container of that name\n\nKnown containers: {}",
                    if known.is_empty() {
                        "none".to_string()
                    } else {
                        known.join(", ")
                    }
                )));
            }
        }
        legacy.containers.retain(|c| args.only.contains(&c.name));
    }
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
        p
    });
    let opts = execute::ExecOptions {
        state: args.state,
        verify: args.verify,
        stop: args.stop,
        force: args.force,
    };
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
        problems.extend(rewrite_problems.iter().cloned());
        migrate::add_refusals(&mut migration, &problems);
    } else if !rewrite_problems.is_empty() {
        return Err(Error::Other(format!(
            "migrate --yes --rewrite refuses to start (nothing was written):\n  {}",
            rewrite_problems.join("\n  ")
        )));
    }
    let mut failure = None;
    if view && let Err(e) = host.end_read_only_view() {
        return Err(Error::Other(format!(
            "cannot lift the read-only view of {} after reading it: {e}; nothing was changed",
            root.display()
        )));
    }
    if args.yes
        && let Err(e) = execute::execute(&host, &mut migration, &opts, &Runner { verbose }, checked)
    {
        failure = Some(e);
    }
    // The host's files are rewritten last, once everything else was done.
    let mut rewrite_failure = None;
    if args.yes
        && failure.is_none()
        && let Some(p) = &rewrite
    {
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
            .to_string();
        match nixos_nspawn::rewrite::apply(&host, p, &stamp) {
            Ok(done) => {
                migration.report.done.extend(done);
                migration
                    .report
                    .files_written
                    .extend(p.edits.iter().map(|e| e.file.clone()));
            }
            Err(e) => rewrite_failure = Some(e),
        }
    }
    if let Some(p) = &rewrite {
        // The diff first (stderr with --json, so that stdout stays one JSON document).
        let text = p.describe();
        if args.json {
            eprint!("{text}");
        } else {
            print!("{text}");
        }
    }
    let report = &migration.report;
    let text = if args.json {
        report.to_json()
    } else {
        report.to_text()
    };
    let mut out = std::io::stdout().lock();
    match writeln!(out, "{text}") {
        Ok(()) => {}
        // A closed pipe (`| head`) is not an error.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(exit::SUCCESS),
        Err(e) => return Err(Error::Other(format!("cannot write the report: {e}"))),
    }
    if let Some(e) = failure {
        return Err(Error::Other(e.to_string()));
    }
    if let Some(e) = rewrite_failure {
        return Err(Error::Other(format!("--rewrite: {e}")));
    }
    Ok(report.summary.exit_code)
}
