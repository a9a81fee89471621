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
    }
}

fn run_migrate(root: &std::path::Path, args: &MigrateArgs, verbose: bool) -> Result<u8, Error> {
    if !args.dry_run && !args.yes {
        use std::io::IsTerminal;
        if !(std::io::stdin().is_terminal() && std::io::stderr().is_terminal()) {
            // Never wait for an answer nobody can give, never guess one.
            return Err(Error::Usage(
                "migrate without --dry-run or --yes asks before each step, but there is no terminal \
                 to ask on (stdin or stderr is not a terminal)\n\n\
                 Use --dry-run to see the plan, --yes to carry it out without asking (for scripts and \
                 fleets), or run it from a terminal."
                    .to_string(),
            ));
        }
        return nixos_nspawn::interactive::run(root, args, verbose);
    }
    for (flag, path) in [("--config", &args.config), ("--from-json", &args.from_json)] {
        if let Some(p) = path
            && !p.is_file()
        {
            return Err(Error::Usage(format!(
                "{flag} {}: no such file\n\nPaths given on the command line are ordinary paths, \
                 not paths inside --root.",
                p.display()
            )));
        }
    }
    let mut host = HostRoot::new(root).map_err(|e| {
        Error::Usage(format!(
            "--root {}: {e}\n\nGive the directory the host's root filesystem is mounted at.",
            root.display()
        ))
    })?;
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
    let opts = migrate::ScanOptions {
        config: args.config.clone(),
        from_json: args.from_json.clone(),
        host_name: args.host.clone(),
    };
    let mut legacy = migrate::scan(&host, &opts);
    let known: Vec<String> = legacy.containers.iter().map(|c| c.name.clone()).collect();
    for (flag, names) in [("--only", &args.only), ("--exclude", &args.exclude)] {
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
    legacy.containers.retain(|c| {
        (args.only.is_empty() || args.only.contains(&c.name)) && !args.exclude.contains(&c.name)
    });
    let mut migration = migrate::prepare(root, legacy, &args.output, args.dry_run, host.is_live());
    let opts = execute::ExecOptions {
        state: args.state,
        verify: args.verify,
        stop: args.stop,
        force: args.force,
        progress: if args.quiet {
            execute::ProgressKind::None
        } else {
            execute::ProgressKind::Auto
        },
    };
    // Every destination is checked while the tree is still seen read-only and noatime:
    // resolving links and reading existing files must not change the host either.
    let checked = execute::check_destinations(&host, &migration, &opts, args.yes);
    migrate::add_redirects(&mut migration, &checked.redirects);
    if args.dry_run {
        migrate::add_refusals(&mut migration, &checked.problems);
    }
    if view && let Err(e) = host.end_read_only_view() {
        return Err(Error::Other(format!(
            "cannot lift the read-only view of {} after reading it: {e}; nothing was changed",
            root.display()
        )));
    }
    let mut failure = None;
    if args.yes
        && let Err(e) = execute::execute(&host, &mut migration, &opts, &Runner { verbose }, checked)
    {
        // The report carries the error too, so that a fleet reading --json sees why.
        migration.report.set_error(e.to_run_error(), e.is_refusal());
        failure = Some(e);
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
    Ok(report.summary.exit_code)
}
