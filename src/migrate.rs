//! The `migrate` command's pure pipeline: scan the legacy host, translate every container,
//! derive the plan and build the report. No writes happen here; `execute` carries out a plan.

use crate::host::HostRoot;
use crate::legacy::discover::{self, DiskContainer};
use crate::legacy::nix_source::{self, HostFs, PlainFs, SourceFs};
use crate::legacy::{LegacyContainer, LegacyHost, SourceFacts, eval, merge};
use crate::plan::{self, Plan};
use crate::render;
use crate::report::{ContainerReport, Report, StateReport, Summary};
use crate::translate::{self, Instance};
use crate::warnings::{Category, Warning, WarningSpec};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

pub const NO_NIX_CONFIG: WarningSpec = WarningSpec {
    code: "no-nix-config",
    category: Category::NeedsHuman,
    summary: "no NixOS configuration was found to read container definitions from",
};
pub const NOT_DEPLOYED: WarningSpec = WarningSpec {
    code: "not-deployed",
    category: Category::ChangedMeaning,
    summary: "a container is configured in Nix but was never deployed (no .conf on disk)",
};
pub const FROM_JSON_UNREADABLE: WarningSpec = WarningSpec {
    code: "from-json-unreadable",
    category: Category::NeedsHuman,
    summary: "the file given with --from-json could not be read",
};

pub const HOST_NETWORKD_REQUIRED: WarningSpec = WarningSpec {
    code: "host-networkd-required",
    category: Category::NeedsHuman,
    summary: "containers with a private network need systemd-networkd on the host (networking.useNetworkd = true)",
};

pub const OFFLINE_ROOT: WarningSpec = WarningSpec {
    code: "offline-root",
    category: Category::ChangedMeaning,
    summary: "--root is not /: the tree is treated as another machine's disk; the live systemd is never asked about or told to stop its containers",
};

pub const WOULD_REFUSE: WarningSpec = WarningSpec {
    code: "would-refuse",
    category: Category::NeedsHuman,
    summary: "`migrate --yes` would refuse to start: a destination is not a place it may write (nothing would be written)",
};

pub const WARNINGS: &[&WarningSpec] = &[
    &NO_NIX_CONFIG,
    &OFFLINE_ROOT,
    &WOULD_REFUSE,
    &NOT_DEPLOYED,
    &FROM_JSON_UNREADABLE,
    &HOST_NETWORKD_REQUIRED,
];

/// What to read besides the host tree.
#[derive(Clone, Debug, Default)]
pub struct ScanOptions {
    /// `--config FILE` (an ordinary path).
    pub config: Option<PathBuf>,
    /// `--from-json FILE` (an ordinary path).
    pub from_json: Option<PathBuf>,
    /// `--host NAME` for flake hosts.
    pub host_name: Option<String>,
    /// What evaluating the containers with the host's own Nix gave ([`evaluate_host`]; a live
    /// host, `--root /`, without `--no-eval`): the facts, `None` inside when Nix is not
    /// installed, or why it failed. Merged over the source text by [`scan`].
    pub evaluated: Option<Result<Option<Vec<SourceFacts>>, Warning>>,
}

/// The evaluation command for the configuration [`scan`] reads (the same choice: `--config`,
/// else the host's flake, else configuration.nix), or `None` when there is none.
pub fn host_eval_command(host: &HostRoot, opts: &ScanOptions) -> Option<nix_source::EvalCommand> {
    use nix_source::EvalCommand;
    let (fs, entry): (&dyn SourceFs, PathBuf) = match &opts.config {
        Some(path) => match host_path_of(host, path) {
            Some(hp) => (&HostFs(host), hp),
            None => (&PlainFs, path.clone()),
        },
        None => {
            let flake = Path::new("/etc/nixos/flake.nix");
            let conf = Path::new("/etc/nixos/configuration.nix");
            if host.exists(flake) {
                (&HostFs(host), flake.to_path_buf())
            } else if host.exists(conf) {
                return Some(EvalCommand::Nixos {
                    configuration: None,
                });
            } else {
                return None;
            }
        }
    };
    if entry.file_name().is_some_and(|n| n == "flake.nix") {
        let fr = nix_source::read_flake(fs, &entry, opts.host_name.as_deref());
        return Some(fr.eval_command.unwrap_or(EvalCommand::Flake {
            dir: entry.parent().unwrap_or(Path::new("/")).to_path_buf(),
            host: opts.host_name.clone(),
        }));
    }
    Some(EvalCommand::for_config(&entry))
}

/// Evaluate the containers on the running machine with its own Nix (read-only, time-limited),
/// for [`ScanOptions::evaluated`]. Runs before the host is sealed read-only: Nix itself must be
/// able to open its store. `None` when there is no configuration to evaluate.
/// What [`evaluate_host`] gives: the facts, `None` inside when Nix is not installed, or why it
/// failed.
pub type Evaluated = Result<Option<Vec<SourceFacts>>, Warning>;

pub fn evaluate_host(host: &HostRoot, opts: &ScanOptions) -> Option<Evaluated> {
    use crate::legacy::host_eval;
    let cmd = host_eval_command(host, opts)?;
    let machine = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string());
    let host_name = opts.host_name.clone().or(machine);
    Some(host_eval::evaluate(
        &crate::runner::Runner::default(),
        &cmd,
        host_name.as_deref(),
        host_eval::TIMEOUT,
    ))
}

/// Read everything the host says about its legacy containers and merge it per container.
pub fn scan(host: &HostRoot, opts: &ScanOptions) -> LegacyHost {
    let disk = discover::discover_disk(host);
    let mut problems = disk.problems;
    let mut files_read = disk.files_read;

    // Which configuration to read: --config, else the host's flake, else configuration.nix.
    let nix = match &opts.config {
        Some(path) => {
            // A --config inside the root is read as a host path, so that absolute imports
            // resolve inside the root too.
            let (fs, entry): (&dyn SourceFs, PathBuf) = match host_path_of(host, path) {
                Some(hp) => (&HostFs(host), hp),
                None => (&PlainFs, path.clone()),
            };
            Some(
                if opts.host_name.is_some() && entry.file_name().is_some_and(|n| n == "flake.nix") {
                    // A flake given with --host: that host's modules only.
                    nix_source::read_flake_config(fs, &entry, opts.host_name.as_deref())
                } else {
                    nix_source::read_config_tree(fs, &entry)
                },
            )
        }
        None => {
            let flake = Path::new("/etc/nixos/flake.nix");
            let conf = Path::new("/etc/nixos/configuration.nix");
            if host.exists(flake) {
                Some(nix_source::read_flake_config(
                    &HostFs(host),
                    flake,
                    opts.host_name.as_deref(),
                ))
            } else if host.exists(conf) {
                Some(nix_source::read_config_tree(&HostFs(host), conf))
            } else {
                if opts.from_json.is_none()
                    && disk
                        .containers
                        .iter()
                        .any(|c| c.kind != Some(crate::legacy::Kind::Imperative))
                {
                    problems.push(Warning::new(
                        &NO_NIX_CONFIG,
                        "/etc/nixos",
                        "neither /etc/nixos/flake.nix nor /etc/nixos/configuration.nix exists under the host root, \
                         so the guest `config` of declarative containers cannot be carried over.\n\
                         Pass the host's configuration with --config FILE, or evaluated options with --from-json FILE \
                         (see README: \"Containers generated by expressions\").",
                    ));
                }
                None
            }
        }
    };
    let mut configured: Vec<SourceFacts> = Vec::new();
    let mut nix_sites = Vec::new();
    let mut nix_option_lines: BTreeMap<String, Vec<(PathBuf, usize)>> = BTreeMap::new();
    let mut nix_files: Vec<PathBuf> = Vec::new();
    if let Some(mut r) = nix {
        if let Some(entry) = &opts.config
            && r.facts.is_empty()
            && r.problems.is_empty()
            && opts.evaluated.is_none()
        {
            problems.push(nix_source::no_containers_warning(entry, &r));
        }
        configured = std::mem::take(&mut r.facts);
        problems.append(&mut r.problems);
        // For `--rewrite`: where each container is defined, and where each option was read.
        nix_sites = std::mem::take(&mut r.sites);
        for f in &configured {
            let lines = nix_option_lines.entry(f.container.clone()).or_default();
            for (_, origin) in f.options.values() {
                lines.push((origin.file.clone(), origin.line.unwrap_or(0)));
            }
        }
        nix_files = r.files_read.clone();
        files_read.append(&mut r.files_read);
        match &opts.evaluated {
            Some(Ok(Some(facts))) => crate::legacy::host_eval::absorb(
                facts.clone(),
                &r.container_sets,
                &mut configured,
                &mut problems,
            ),
            Some(Err(w)) => problems.push(w.clone()),
            Some(Ok(None)) | None => {}
        }
    }
    if let Some(json) = &opts.from_json {
        match std::fs::read_to_string(json) {
            Ok(text) => match eval::read_eval_json(json, &text) {
                Ok(facts) => configured.extend(facts),
                Err(w) => problems.push(w),
            },
            Err(e) => problems.push(
                Warning::new(
                    &FROM_JSON_UNREADABLE,
                    "--from-json",
                    format!("cannot read {}: {e}", json.display()),
                )
                .at(json, None),
            ),
        }
        files_read.push(json.clone());
    }

    let mut by_name: BTreeMap<String, Vec<SourceFacts>> = BTreeMap::new();
    for f in configured {
        by_name.entry(f.container.clone()).or_default().push(f);
    }
    let mut disk_by_name: BTreeMap<String, DiskContainer> = BTreeMap::new();
    for d in disk.containers {
        disk_by_name.insert(d.name.clone(), d);
    }
    let names: BTreeSet<String> = by_name.keys().chain(disk_by_name.keys()).cloned().collect();
    let mut containers = Vec::new();
    for name in names {
        let configured = by_name.remove(&name).unwrap_or_default();
        let disk = disk_by_name.remove(&name);
        containers.push(assemble(name, disk, configured));
    }
    // Host settings that target the legacy units (container@<name>): they stop applying.
    let names: Vec<String> = containers.iter().map(|c| c.name.clone()).collect();
    let outside_root = opts
        .config
        .as_ref()
        .is_some_and(|p| host_path_of(host, p).is_none());
    for f in nix_files
        .iter()
        .filter(|f| f.extension().is_some_and(|e| e == "nix"))
    {
        let text = if outside_root {
            std::fs::read_to_string(f)
        } else {
            host.read_to_string(f)
        };
        if let Ok(text) = text {
            problems.extend(crate::translate::host_refs::scan(f, &text, &names));
        }
    }
    let gcroots_dirs = containers
        .iter()
        .map(|c| (c.name.clone(), crate::plan::legacy_gcroots_dir(&c.name)))
        .filter(|(_, p)| host.kind(p).ok().flatten() == Some(crate::host::Kind::Dir))
        .collect();
    LegacyHost {
        containers,
        problems,
        files_read,
        gcroots_dirs,
        nix_sites,
        nix_option_lines,
    }
}

fn assemble(
    name: String,
    disk: Option<DiskContainer>,
    configured: Vec<SourceFacts>,
) -> LegacyContainer {
    let mut facts = Vec::new();
    let mut warnings = Vec::new();
    let deployed = disk.as_ref().is_some_and(|d| d.conf_file.is_some());
    let configured_file = configured.first().map(|f| f.file.clone());
    let (kind, layout, conf_file, state_dir, profile_dir, gens, rootfs_config) = match disk {
        Some(d) => {
            facts.extend(d.facts);
            warnings.extend(d.warnings);
            (
                d.kind,
                Some(d.layout),
                d.conf_file,
                d.state_dir,
                d.profile_dir,
                d.has_profile_generations,
                d.rootfs_config,
            )
        }
        None => (None, None, None, None, None, false, None),
    };
    facts.extend(configured);
    if !deployed && let Some(file) = configured_file {
        warnings.push(
                Warning::new(
                    &NOT_DEPLOYED,
                    format!("containers.{name}"),
                    format!(
                        "container {name} is defined in {} but has no .conf on disk: it was never deployed \
                         (or sits under a condition that is false). It is translated from its definition; \
                         check that you still want it.",
                        file.display()
                    ),
                )
                .at(file, None),
            );
    }

    let merged = merge::merge(&name, facts);
    warnings.extend(merged.warnings);
    LegacyContainer {
        name,
        kind,
        layout,
        conf_file,
        state_dir,
        profile_dir,
        has_profile_generations: gens,
        rootfs_config,
        options: merged.options,
        condition: merged.condition,
        sources: merged.sources,
        warnings,
    }
}

/// The host path of an ordinary path that lies inside the host root. Decided on the path as
/// written (made absolute, `.`/`..` folded): `ROOT/etc/nixos/configuration.nix` is the tree's
/// file even when `ROOT/etc/nixos` links to `/persist/…`, which only the confined reads
/// resolve correctly (to `ROOT/persist/…`, not the live machine's `/persist`).
pub fn host_path_of(host: &HostRoot, path: &Path) -> Option<PathBuf> {
    let abs = std::path::absolute(path).ok()?;
    let mut lexical = PathBuf::from("/");
    for c in abs.components() {
        match c {
            std::path::Component::Normal(n) => lexical.push(n),
            std::path::Component::ParentDir => {
                lexical.pop();
            }
            _ => {}
        }
    }
    let rel = match lexical.strip_prefix(host.root()) {
        Ok(rel) => rel.to_path_buf(),
        // A path that reaches the tree through a link of its own (e.g. a shortcut to ROOT).
        Err(_) => std::fs::canonicalize(path)
            .ok()?
            .strip_prefix(host.root())
            .ok()?
            .to_path_buf(),
    };
    Some(Path::new("/").join(rel))
}

/// For `--dry-run`: each reason `--yes` would refuse to start becomes a needs-a-human warning.
pub fn add_refusals(m: &mut Migration, problems: &[String]) {
    for p in problems {
        m.report.problems.push(Warning::new(
            &WOULD_REFUSE,
            "--yes",
            format!("migrate --yes would refuse to start (nothing would be written): {p}"),
        ));
    }
    m.report.finish_summary();
}

/// Record where links inside the tree send the plan's destinations, for the report.
pub fn add_redirects(m: &mut Migration, redirects: &[(PathBuf, PathBuf)]) {
    m.report.redirects.extend(redirects.iter().cloned());
}

/// Translate every container and build the plan and the report.
pub struct Migration {
    pub legacy: LegacyHost,
    pub instances: Vec<Instance>,
    pub plan: Plan,
    pub report: Report,
}

/// `live` is true when the host tree is the running system (`--root /`).
pub fn prepare(
    root: &Path,
    legacy: LegacyHost,
    output: &Path,
    dry_run: bool,
    live: bool,
) -> Migration {
    let ctx = translate::Context {
        output_file: output.to_path_buf(),
    };
    let instances: Vec<Instance> = legacy
        .containers
        .iter()
        .map(|c| translate::translate(c, &ctx))
        .collect();
    // Declarative containers' profiles too: their guests' per-user profiles live there.
    let profiles: BTreeMap<String, PathBuf> = legacy
        .containers
        .iter()
        .filter_map(|c| Some((c.name.clone(), c.profile_dir.clone()?)))
        .collect();
    let plan = plan::plan(
        &instances,
        &|n| profiles.get(n).cloned(),
        &|n| legacy.gcroots_dirs.get(n).cloned(),
        output,
    );
    // Blocked containers stay out of the file: one invalid name would fail the whole rebuild.
    let declarative: Vec<Instance> = instances
        .iter()
        .filter(|i| i.kind == crate::legacy::Kind::Declarative && plan::blocked(i).is_none())
        .cloned()
        .collect();
    let nix_file = (!declarative.is_empty()).then(|| render::nix::host_file(&declarative));
    let containers = instances
        .iter()
        .zip(legacy.containers.iter())
        .zip(plan.containers.iter())
        .map(|((i, c), p)| container_report(i, c, p.steps.clone()))
        .collect();
    let mut problems = legacy.problems.clone();
    let private: Vec<&str> = declarative
        .iter()
        .filter(|i| i.spec.network.is_some())
        .map(|i| i.name.as_str())
        .collect();
    if !private.is_empty() {
        problems.push(Warning::new(
            &HOST_NETWORKD_REQUIRED,
            "networking.useNetworkd",
            format!(
                "the host side of the private networks of {} is configured by systemd-networkd, so the host \
                 needs networking.useNetworkd = true (the nixos-nspawn module refuses to build without it).\n\
                 This tool does not switch the host's network stack for you: doing so remotely can cut you off. \
                 Port the host's networking.interfaces settings, set networking.useNetworkd = true, and test \
                 with nixos-rebuild test before switching.",
                private.join(", ")
            ),
        ));
    }
    if !live {
        problems.push(Warning::new(
            &OFFLINE_ROOT,
            "--root",
            "the tree given with --root is treated as another machine's disk: whether its legacy containers run is \
             not checked, and nothing is stopped (the systemd of this machine knows nothing about them). The tree \
             must not be in use while it is migrated: shut down the machine it belongs to, and do not boot it or a \
             container from it meanwhile",
        ));
    }
    let mut report = Report {
        version: crate::report::REPORT_VERSION,
        tool: format!("nixos-nspawn {}", env!("CARGO_PKG_VERSION")),
        root: root.to_path_buf(),
        dry_run,
        output: plan.nix_output.clone(),
        nix_file,
        containers,
        problems,
        files_written: Vec::new(),
        rewritten: Vec::new(),
        done: Vec::new(),
        redirects: BTreeMap::new(),
        files_read: legacy.files_read.clone(),
        error: None,
        // Counted from the warnings by finish_summary below.
        summary: Summary::default(),
    };
    report.finish_summary();
    Migration {
        legacy,
        instances,
        plan,
        report,
    }
}

fn container_report(i: &Instance, c: &LegacyContainer, steps: Vec<plan::Step>) -> ContainerReport {
    // Reader and merge findings first, then the translator's own (it never repeats them).
    let mut warnings = c.warnings.clone();
    for w in &i.warnings {
        if !warnings.contains(w) {
            warnings.push(w.clone());
        }
    }
    // Imperative containers' files are written by migrate itself: show their exact bytes.
    let imperative = i.kind == crate::legacy::Kind::Imperative;
    let dropin = match render::nspawn::dropin(i) {
        d if d.is_empty() => d,
        _ if imperative => plan::imperative_dropin_text(i),
        d => d,
    };
    let nix = match i.kind {
        crate::legacy::Kind::Imperative => render::nix::imperative_file(i),
        crate::legacy::Kind::Declarative => render::nix::instance_snippet(i),
    };
    let mut networkd = BTreeMap::new();
    for u in render::networkd::module_networks(&i.name, &i.spec)
        .iter()
        .chain(i.host_networks.iter())
        .chain(i.guest_networks.iter())
    {
        let side = match u.side {
            crate::translate::Side::Host => "host",
            crate::translate::Side::Guest => "guest",
        };
        networkd.insert(
            format!("{side}: {}", u.file_name),
            render::networkd::render(u),
        );
    }
    ContainerReport {
        name: i.name.clone(),
        kind: i.kind.as_str(),
        state: StateReport {
            from: i.state.from.clone(),
            to: i.state.to.clone(),
        },
        nix,
        nspawn: if imperative {
            plan::imperative_nspawn_text(i)
        } else {
            render::nspawn::preview(i)
        },
        networkd,
        dropin: (!dropin.is_empty()).then_some(dropin),
        guest_files: i
            .guest_files
            .iter()
            .map(|(p, t)| (p.display().to_string(), t.clone()))
            .collect(),
        translated: i.applied.clone(),
        warnings,
        status: if steps
            .iter()
            .any(|s| matches!(s, plan::Step::Blocked { .. }))
        {
            crate::report::ContainerStatus::Blocked
        } else {
            crate::report::ContainerStatus::Planned
        },
        files: steps
            .iter()
            .filter_map(|s| Some((s.written_file()?.to_path_buf(), file_text(s, i)?)))
            .collect(),
        plan: steps,
        done: Vec::new(),
        files_written: Vec::new(),
        record: None,
        state_result: None,
    }
}

/// The exact content a file-writing step writes. Rendered once, here: the report shows these
/// bytes and `execute` writes them, so what was reviewed is what lands on disk.
fn file_text(step: &plan::Step, inst: &Instance) -> Option<String> {
    Some(match step {
        plan::Step::WriteNspawn { .. } => plan::imperative_nspawn_text(inst),
        plan::Step::WriteDropin { .. } => plan::imperative_dropin_text(inst),
        plan::Step::WriteContainerFile { .. } => render::nix::imperative_file(inst),
        plan::Step::WriteGuestFile { path } => inst.guest_files.get(path)?.clone(),
        plan::Step::WriteNetworkUnit { path } => {
            plan::imperative_network_units(inst)
                .into_iter()
                .find(|(p, _)| p == path)?
                .1
        }
        _ => return None,
    })
}
