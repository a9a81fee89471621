//! The imperative path: `create`, `update`, `remove`, `list`, `list-generations`, `rollback`.
//!
//! An imperative container is built from a container file (RFC 0108, "Imperative management")
//! with `nixos/lib/eval-container.nix`, the same rendering code as a declarative
//! `nixos.containers.instances.<name>`. Its system goes into the Nix profile
//! `/nix/var/nix/profiles/per-nspawn/NAME/system`; the rendered `.nspawn` file, host network
//! units and drop-in are installed in the places of [`paths`], and a copy of them is kept per
//! profile generation, so that `rollback` restores the units together with the system.
//!
//! Every effect goes through [`fsio::Fs`] (files under `--root`) and [`crate::runner::Runner`]
//! (Nix, systemctl, machinectl, networkctl). On an offline root (`--root` other than `/`) the
//! live systemd is never asked or told anything: the verbs say what to run instead.
//!
//! Mutating verbs refuse containers they do not manage, and say where those are managed.

pub mod activation;
pub mod create;
pub mod fsio;
pub mod generations;
pub mod list;
pub mod paths;
pub mod remove;
pub mod rollback;
pub mod source;
pub mod update;

use crate::error::Error;
use crate::host::{HostRoot, Kind};
use crate::runner::{Cmd, Runner};
use fsio::Fs;
use std::path::{Path, PathBuf};

/// What the verbs share: the host tree, the one runner, and where eval-container.nix is.
pub struct Ctx<'a> {
    pub host: &'a HostRoot,
    pub runner: &'a Runner,
    /// `nixos/lib/eval-container.nix` (see [`eval_container_path`]).
    pub eval: PathBuf,
    /// Messages for the administrator (what was done, what to run by hand).
    pub out: Vec<String>,
}

impl<'a> Ctx<'a> {
    pub fn new(host: &'a HostRoot, runner: &'a Runner, eval: PathBuf) -> Self {
        Ctx {
            host,
            runner,
            eval,
            out: Vec::new(),
        }
    }

    pub fn fs(&self) -> Fs<'a> {
        Fs::new(self.host)
    }

    /// The running machine's tree (`--root /`): only then may systemd be asked or told.
    pub fn live(&self) -> bool {
        self.host.root() == Path::new("/")
    }

    pub fn say(&mut self, line: impl Into<String>) {
        let line = line.into();
        println!("{line}");
        self.out.push(line);
    }

    /// Run a host command; a failure names the command and carries its stderr.
    pub fn run(&self, cmd: &Cmd) -> Result<String, Error> {
        self.runner
            .run(cmd)
            .map(|o| o.stdout)
            .map_err(|e| Error::Other(e.to_string()))
    }

    /// Is `systemd-nspawn@NAME.service` (or another unit) active? `None` on an offline root.
    pub fn unit_active(&self, unit: &str) -> Option<bool> {
        if !self.live() {
            return None;
        }
        match self
            .runner
            .output(&Cmd::new("systemctl", &["is-active", "--quiet", unit]))
        {
            Ok(o) => Some(o.code == Some(0)),
            Err(_) => None,
        }
    }
}

/// Where `nixos/lib/eval-container.nix` is: `$NIXOS_NSPAWN_EVAL_CONTAINER`, else
/// `share/nixos-nspawn/nixos/lib/eval-container.nix` next to the installed binary, else the
/// source tree this binary was built from.
pub fn eval_container_path() -> Result<PathBuf, Error> {
    if let Some(p) = std::env::var_os("NIXOS_NSPAWN_EVAL_CONTAINER") {
        return Ok(PathBuf::from(p));
    }
    let mut tried = Vec::new();
    if let Ok(exe) = std::env::current_exe()
        && let Some(bin) = exe.parent()
    {
        let p = bin.join("../share/nixos-nspawn/nixos/lib/eval-container.nix");
        if p.is_file() {
            return Ok(p);
        }
        tried.push(p);
    }
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("nixos/lib/eval-container.nix");
    if p.is_file() {
        return Ok(p);
    }
    tried.push(p);
    Err(Error::Other(format!(
        "cannot find nixos/lib/eval-container.nix (tried {})\n\nSet NIXOS_NSPAWN_EVAL_CONTAINER to \
         the eval-container.nix of this nixos-nspawn's nixos/ directory.",
        tried
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    )))
}

/// How a name is already used on the host. A name can be used in several ways at once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Presence {
    /// A legacy `nixos-container` (`.conf` file or state dir).
    Legacy { at: PathBuf },
    /// Declared in the host's NixOS configuration (a `.nspawn` file from the store).
    Declarative { at: PathBuf },
    /// Ours: a `.nspawn` file we wrote, or generations we recorded.
    Imperative { at: PathBuf },
    /// Something else nspawn or machined would see under that name.
    Unmanaged { at: PathBuf },
    /// Running right now (live root only), whatever else is known.
    Running { unit: String },
}

impl Presence {
    pub fn describe(&self) -> String {
        match self {
            Presence::Legacy { at } => format!("a legacy nixos-container ({})", at.display()),
            Presence::Declarative { at } => format!(
                "a declarative container of the host's NixOS configuration ({})",
                at.display()
            ),
            Presence::Imperative { at } => {
                format!("an imperative container ({})", at.display())
            }
            Presence::Unmanaged { at } => {
                format!("a machine not managed by nixos-nspawn ({})", at.display())
            }
            Presence::Running { unit } => format!("a running machine ({unit})"),
        }
    }
}

/// The marker at the top of every `.nspawn` file of an imperative container (also written by
/// `migrate`).
pub const MARKER: &str = "# Imperative container ";

/// The header of the installed `.nspawn` file: marks it as ours and says how to change it.
pub fn nspawn_header(name: &str) -> String {
    format!(
        "{MARKER}{name}, managed by nixos-nspawn: change it with `nixos-nspawn update {name}`, not by hand.\n"
    )
}

/// Was this `.nspawn` text written by `create`/`update`/`rollback` (not by `migrate`)? Then
/// `migrate` must not replace it with its translation of the legacy original.
pub fn written_by_imperative_verbs(text: &[u8]) -> bool {
    let first = text.split(|b| *b == b'\n').next().unwrap_or_default();
    first.starts_with(MARKER.as_bytes())
        && first
            .windows(b"change it with `nixos-nspawn update".len())
            .any(|w| w == b"change it with `nixos-nspawn update")
}

fn nspawn_is_ours(fs: &Fs<'_>, path: &Path) -> bool {
    matches!(fs.kind(path), Ok(Some(Kind::File)))
        && fs
            .read(path)
            .ok()
            .flatten()
            .is_some_and(|t| t.starts_with(MARKER))
}

/// Every way `name` is known on the host.
pub fn presence(ctx: &Ctx<'_>, name: &str) -> Vec<Presence> {
    let fs = ctx.fs();
    let mut out = Vec::new();
    let ours = paths::nspawn_file(name);
    if nspawn_is_ours(&fs, &ours) {
        out.push(Presence::Imperative { at: ours.clone() });
    } else if matches!(fs.kind(&paths::generations_dir(name)), Ok(Some(Kind::Dir))) {
        out.push(Presence::Imperative {
            at: paths::generations_dir(name),
        });
    }
    for dir in paths::NSPAWN_DIRS {
        let p = Path::new(dir).join(format!("{name}.nspawn"));
        // /run/systemd/nspawn is a link to the imperative directory on NixOS.
        let lands_on_ours = p == ours
            || (fs.resolve(&p).ok().is_some() && fs.resolve(&p).ok() == fs.resolve(&ours).ok());
        if lands_on_ours && matches!(out.first(), Some(Presence::Imperative { .. })) {
            continue;
        }
        match fs.kind(&p) {
            Ok(Some(Kind::Symlink)) => {
                let to = fs.resolve(&p).unwrap_or_default();
                if to.starts_with("/nix/store") || to.starts_with("/etc/static") {
                    out.push(Presence::Declarative { at: p });
                } else {
                    out.push(Presence::Unmanaged { at: p });
                }
            }
            Ok(Some(_)) => out.push(Presence::Unmanaged { at: p }),
            _ => {}
        }
    }
    // The whole /etc/systemd/nspawn may be a store link (NixOS, when anything is declared).
    let etc = Path::new(paths::NSPAWN_DIRS[0]).join(format!("{name}.nspawn"));
    if let Ok(to) = fs.resolve(&etc)
        && (to.starts_with("/nix/store") || to.starts_with("/etc/static"))
        && fs.host.exists(&etc)
        && !out
            .iter()
            .any(|p| matches!(p, Presence::Declarative { .. }))
    {
        out.retain(|p| !matches!(p, Presence::Unmanaged { at } if at == &etc));
        out.push(Presence::Declarative { at: etc });
    }
    for legacy in [
        format!("/etc/nixos-containers/{name}.conf"),
        format!("/etc/containers/{name}.conf"),
        format!("/var/lib/nixos-containers/{name}"),
    ] {
        let p = PathBuf::from(legacy);
        // /etc/containers also holds podman's configuration (registries.conf, …).
        if p.starts_with("/etc/containers")
            && ["registries", "storage", "policy", "containers", "mounts"].contains(&name)
        {
            continue;
        }
        if fs.host.exists(&p) {
            out.push(Presence::Legacy { at: p });
            break;
        }
    }
    let has_imperative = out.iter().any(|p| matches!(p, Presence::Imperative { .. }));
    for p in [
        paths::state_dir(name),
        PathBuf::from(format!("/var/lib/machines/{name}.raw")),
    ] {
        // Our own container has its state there, of course.
        if has_imperative && p == paths::state_dir(name) {
            continue;
        }
        if fs.host.exists(&p) {
            out.push(Presence::Unmanaged { at: p });
        }
    }
    if !has_imperative && fs.host.exists(&paths::profile_dir(name)) {
        out.push(Presence::Unmanaged {
            at: paths::profile_dir(name),
        });
    }
    if out.is_empty() {
        let unit = format!("systemd-nspawn@{name}.service");
        if ctx.unit_active(&unit) == Some(true) {
            out.push(Presence::Running { unit });
        }
    }
    out
}

/// Refuse anything but an imperative container, saying where it is managed instead.
pub fn require_imperative(ctx: &Ctx<'_>, name: &str, verb: &str) -> Result<(), Error> {
    crate::legacy::names::check_machine_name(name).map_err(Error::Usage)?;
    let found = presence(ctx, name);
    // A migrated container is imperative while its legacy original is still there (migrate
    // never deletes it: it is the way back). A declarative one of the same name wins.
    if found
        .iter()
        .any(|p| matches!(p, Presence::Imperative { .. }))
        && !found
            .iter()
            .any(|p| matches!(p, Presence::Declarative { .. }))
    {
        return Ok(());
    }
    for p in &found {
        match p {
            Presence::Declarative { at } => {
                return Err(Error::Usage(format!(
                    "{verb} {name}: {name} is a declarative container ({}); it is managed by the host's \
                     NixOS configuration, not by nixos-nspawn {verb}\n\nChange \
                     nixos.containers.instances.{} in the host configuration and run nixos-rebuild switch.",
                    at.display(),
                    crate::nixtext::attr_name(name)
                )));
            }
            Presence::Legacy { at } => {
                return Err(Error::Usage(format!(
                    "{verb} {name}: {name} is a legacy nixos-container ({}); nixos-nspawn {verb} only \
                     manages containers on systemd-nspawn\n\nMigrate it first: nixos-nspawn migrate \
                     --dry-run --only {name}, then migrate --yes --only {name}.",
                    at.display()
                )));
            }
            _ => {}
        }
    }
    if found.is_empty() {
        return Err(Error::Usage(format!(
            "{verb} {name}: no imperative container named {name}\n\nSee `nixos-nspawn list`; create \
             one with `nixos-nspawn create {name} FILE.nix`."
        )));
    }
    Err(Error::Usage(format!(
        "{verb} {name}: {name} is not managed by nixos-nspawn: {}\n\nManage it with machinectl, or \
         remove it and create it with `nixos-nspawn create`.",
        found
            .iter()
            .map(Presence::describe)
            .collect::<Vec<_>>()
            .join("; ")
    )))
}

/// Run one imperative verb (from `main`).
pub fn run(root: &Path, verbose: bool, cmd: crate::cli::ImperativeCommand) -> Result<u8, Error> {
    use crate::cli::ImperativeCommand as C;
    let host = HostRoot::new(root).map_err(|e| {
        Error::Usage(format!(
            "--root {}: {e}\n\nGive the directory the host's root filesystem is mounted at.",
            root.display()
        ))
    })?;
    let runner = Runner { verbose };
    let over = |reload: bool, restart: bool| {
        if reload {
            Some(activation::Override::Reload)
        } else if restart {
            Some(activation::Override::Restart)
        } else {
            None
        }
    };
    // Only the verbs that evaluate need eval-container.nix.
    let eval = || eval_container_path();
    match cmd {
        C::Create {
            name,
            file,
            flake,
            profile,
            start,
        } => {
            let source = source::Source::from_args(
                &name,
                file.as_deref(),
                flake.as_deref(),
                profile.as_deref(),
            )?;
            let mut ctx = Ctx::new(&host, &runner, eval()?);
            create::create(
                &mut ctx,
                &create::CreateArgs {
                    name,
                    source,
                    start,
                },
            )?;
        }
        C::Update {
            name,
            config,
            flake,
            reload,
            restart,
            dry_run,
        } => {
            let source = if config.is_some() || flake.is_some() {
                Some(source::Source::from_args(
                    &name,
                    config.as_deref(),
                    flake.as_deref(),
                    None,
                )?)
            } else {
                None
            };
            let mut ctx = Ctx::new(&host, &runner, eval()?);
            update::update(
                &mut ctx,
                &update::UpdateArgs {
                    name,
                    source,
                    over: over(reload, restart),
                    dry_run,
                },
            )?;
        }
        C::Remove { name, delete_state } => {
            let mut ctx = Ctx::new(&host, &runner, PathBuf::new());
            remove::remove(&mut ctx, &name, delete_state)?;
        }
        C::List { json } => {
            let mut ctx = Ctx::new(&host, &runner, PathBuf::new());
            list::list(&mut ctx, json)?;
        }
        C::ListGenerations { name, json } => {
            let mut ctx = Ctx::new(&host, &runner, PathBuf::new());
            generations::list_generations(&mut ctx, &name, json)?;
        }
        C::Rollback {
            name,
            reload,
            restart,
        } => {
            let mut ctx = Ctx::new(&host, &runner, PathBuf::new());
            rollback::rollback(&mut ctx, &name, over(reload, restart))?;
        }
    }
    Ok(crate::error::exit::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_verbs_header_is_told_apart_from_migrates() {
        let ours = format!("{}[Exec]\nBoot=no\n", nspawn_header("web"));
        assert!(ours.starts_with(MARKER));
        assert!(written_by_imperative_verbs(ours.as_bytes()));
        let migrated = "# Imperative container web, managed by nixos-nspawn (migrated from nixos-container).\n[Exec]\n";
        assert!(
            migrated.starts_with(MARKER),
            "list/presence see both as imperative"
        );
        assert!(!written_by_imperative_verbs(migrated.as_bytes()));
        assert!(!written_by_imperative_verbs(
            b"[Exec]\n# change it with `nixos-nspawn update web`\n"
        ));
    }
}
