//! The plan: what `migrate` will do, per container, derived purely from the translation.
//!
//! The execute layer carries out exactly these steps; `--dry-run` prints them. Keeping them as
//! data means the report, the prompts of the interactive mode and the journal all speak of the
//! same steps.

use crate::legacy::Kind;
use crate::translate::Instance;
use serde::Serialize;
use std::path::PathBuf;

/// One step, in execution order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "step", rename_all = "kebab-case")]
pub enum Step {
    /// Nothing can be done until a person fixes something (e.g. renames the container).
    Blocked { reason: String },
    /// Make sure `container@NAME.service` is stopped (refuse without `--stop`).
    StopLegacy { unit: String },
    /// Copy the state directory via a staging directory, verified; or move it (`--state
    /// move`: a rename); or leave it (`--state skip`). `mode` says which.
    CopyState {
        from: PathBuf,
        to: PathBuf,
        mode: StateHow,
    },
    /// Nothing to copy: the container is ephemeral or never ran.
    NoState { reason: String },
    /// Link the profile generations of an imperative container into the new profile dir.
    CarryProfile { from: PathBuf, to: PathBuf },
    /// Write a trusted settings file (imperative containers).
    WriteNspawn { path: PathBuf },
    /// Write the imperative container's configuration file.
    WriteContainerFile { path: PathBuf },
    /// Write the `systemd-nspawn@NAME.service` drop-in of an imperative container.
    WriteDropin { path: PathBuf },
    /// Write a rewritten copy of a file the guest config imports (the original stays).
    WriteGuestFile { path: PathBuf },
    /// Write a host-side networkd unit of an imperative container (legacy's start script
    /// configured the host end of its veth; NixOS does not know imperative containers).
    WriteNetworkUnit { path: PathBuf },
}

/// What the state step does with the legacy state directory (`migrate --state`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum StateHow {
    /// Copied through a staging directory and verified; the legacy directory stays as it is.
    #[default]
    Copy,
    /// Renamed (one filesystem, journaled); the legacy path no longer exists afterwards.
    Move,
    /// Left where it is; nothing is copied.
    Skip,
}

impl From<crate::cli::StateArg> for StateHow {
    fn from(a: crate::cli::StateArg) -> Self {
        match a {
            crate::cli::StateArg::Copy => StateHow::Copy,
            crate::cli::StateArg::Move => StateHow::Move,
            crate::cli::StateArg::Skip => StateHow::Skip,
        }
    }
}

impl Step {
    /// The file this step writes, for the steps that write one.
    pub fn written_file(&self) -> Option<&std::path::Path> {
        match self {
            Step::WriteNspawn { path }
            | Step::WriteContainerFile { path }
            | Step::WriteDropin { path }
            | Step::WriteGuestFile { path }
            | Step::WriteNetworkUnit { path } => Some(path),
            _ => None,
        }
    }

    /// One line for the human report.
    pub fn describe(&self) -> String {
        match self {
            Step::Blocked { reason } => format!("blocked, nothing is done: {reason}"),
            Step::StopLegacy { unit } => format!("make sure {unit} is stopped"),
            Step::CopyState {
                from,
                to,
                mode: StateHow::Copy,
            } => format!(
                "copy state {} → {} (through a staging directory, verified; the legacy directory \
                 is left as it is)",
                from.display(),
                to.display()
            ),
            Step::CopyState {
                from,
                to,
                mode: StateHow::Move,
            } => format!(
                "move state {} → {} (--state move: a rename on one filesystem, journaled; {} no \
                 longer exists afterwards, so the legacy container cannot start until it is \
                 moved back)",
                from.display(),
                to.display(),
                from.display()
            ),
            Step::CopyState {
                from,
                to,
                mode: StateHow::Skip,
            } => format!(
                "leave the state in {} (--state skip): nothing is copied to {}",
                from.display(),
                to.display()
            ),
            Step::NoState { reason } => format!("no state to copy: {reason}"),
            Step::CarryProfile { from, to } => format!(
                "link profile generations {} → {}",
                from.display(),
                to.display()
            ),
            Step::WriteNspawn { path } => format!("write {}", path.display()),
            Step::WriteContainerFile { path } => format!("write {}", path.display()),
            Step::WriteDropin { path } => format!("write {}", path.display()),
            Step::WriteGuestFile { path } => format!(
                "write {} (a rewritten copy of a file the guest config imports)",
                path.display()
            ),
            Step::WriteNetworkUnit { path } => format!(
                "write {} (linked into /run/systemd/network at boot by the module; until then \
                 `ln -s {} /run/systemd/network/ && networkctl reload`)",
                path.display(),
                path.display()
            ),
        }
    }
}

/// The plan for one container.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ContainerPlan {
    pub name: String,
    pub steps: Vec<Step>,
}

/// The plan for the host: per-container steps, then the one Nix file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Plan {
    pub containers: Vec<ContainerPlan>,
    /// Where the declarative Nix goes (host path); `None` when no container is declarative.
    pub nix_output: Option<PathBuf>,
}

/// Where imperative containers' trusted `.nspawn` files live (see nixos/README.md, "Where
/// imperative containers live"). Not `/etc/systemd/nspawn`: NixOS turns that into a link into
/// the read-only store as soon as anything is declared there. The nixos-nspawn module makes
/// this directory `/run/systemd/nspawn` at boot, which systemd-nspawn trusts like `/etc`.
pub const IMPERATIVE_NSPAWN_DIR: &str = "/var/lib/nixos-nspawn/imperative/nspawn";

/// Where imperative containers' unit drop-ins live: `system.control` is searched by PID 1 before
/// `/etc/systemd/system` (a store link on NixOS), persists across reboots, and is not touched
/// by `nixos-rebuild`.
pub const IMPERATIVE_UNIT_DIR: &str = "/etc/systemd/system.control";

/// Where an imperative container's trusted settings file lives.
pub fn nspawn_file(name: &str) -> PathBuf {
    PathBuf::from(format!("{IMPERATIVE_NSPAWN_DIR}/{name}.nspawn"))
}

/// The RFC imperative container file, next to where `nixos-nspawn create` keeps them.
pub fn container_file(name: &str) -> PathBuf {
    PathBuf::from(format!("/etc/nixos-nspawn/{name}.nix"))
}

/// Where imperative containers' host-side networkd units live (see nixos/README.md; the
/// module links them into `/run/systemd/network` at boot, `nixos-nspawn create` does the same).
pub const IMPERATIVE_NETWORK_DIR: &str = crate::imperative::paths::NETWORK_DIR;

/// The host-side networkd units of an imperative container, by path: the host end of its veth
/// as the module renders it, and any extra units the translation produced.
pub fn imperative_network_units(i: &Instance) -> Vec<(PathBuf, String)> {
    crate::render::networkd::module_networks(&i.name, &i.spec)
        .iter()
        .chain(i.host_networks.iter())
        .filter(|u| u.side == crate::translate::Side::Host)
        .map(|u| {
            (
                PathBuf::from(format!("{IMPERATIVE_NETWORK_DIR}/{}", u.file_name)),
                format!(
                    "{}{}",
                    crate::render::unit::comment(&format!(
                        "Imperative container {}, host side, managed by nixos-nspawn (migrated from nixos-container).",
                        i.name
                    )),
                    crate::render::networkd::render(u)
                ),
            )
        })
        .collect()
}

/// Declarative containers get their drop-in from NixOS; imperative ones need a file.
pub fn dropin_file(name: &str) -> PathBuf {
    PathBuf::from(format!(
        "{IMPERATIVE_UNIT_DIR}/systemd-nspawn@{name}.service.d/nixos-nspawn.conf"
    ))
}

/// The exact bytes of an imperative container's trusted `.nspawn` file: a header that marks it
/// as ours (so a later run may replace it), then the settings.
pub fn imperative_nspawn_text(i: &Instance) -> String {
    format!(
        "{}{}",
        crate::render::unit::comment(&format!(
            "Imperative container {}, managed by nixos-nspawn (migrated from nixos-container).",
            i.name
        )),
        crate::render::nspawn::preview(i)
    )
}

/// The exact bytes of an imperative container's unit drop-in (empty settings: no file).
pub fn imperative_dropin_text(i: &Instance) -> String {
    format!(
        "{}{}",
        crate::render::unit::comment(&format!(
            "systemd-nspawn@{}.service settings of an imperative container, managed by nixos-nspawn.",
            i.name
        )),
        crate::render::nspawn::dropin(i)
    )
}

pub fn profile_dir(name: &str) -> PathBuf {
    PathBuf::from(format!("/nix/var/nix/profiles/per-nspawn/{name}"))
}

/// The GC-root directory the module binds to the container's `/nix/var/nix/gcroots`.
pub fn gcroots_dir(name: &str) -> PathBuf {
    PathBuf::from(format!("/nix/var/nix/gcroots/per-nspawn/{name}"))
}

/// The legacy GC-root directory of a container (bound read-write as its
/// `/nix/var/nix/gcroots`, declarative and imperative alike).
pub fn legacy_gcroots_dir(name: &str) -> PathBuf {
    PathBuf::from(format!("/nix/var/nix/gcroots/per-container/{name}"))
}

/// Why a container cannot be migrated as it is, if it cannot: its name is not a valid machine
/// name, so no `/var/lib/machines/<name>`, unit or `.nspawn` file can be made for it.
pub fn blocked(i: &Instance) -> Option<String> {
    crate::legacy::names::check_machine_name(&i.name)
        .err()
        .map(|e| format!("{e}; then run the migration again"))
}

/// Derive the plan. `legacy_profile` gives, per container name, the legacy profile dir
/// (`/nix/var/nix/profiles/per-container/NAME`) when it exists, `legacy_gcroots` its GC-root
/// dir likewise. Both are carried for every kind: legacy bound them read-write into declarative
/// containers too (per-user profiles made inside the guest live there).
pub fn plan(
    instances: &[Instance],
    legacy_profile: &dyn Fn(&str) -> Option<PathBuf>,
    legacy_gcroots: &dyn Fn(&str) -> Option<PathBuf>,
    nix_output: &std::path::Path,
) -> Plan {
    let mut containers = Vec::new();
    let mut any_declarative = false;
    for i in instances {
        if let Some(reason) = blocked(i) {
            containers.push(ContainerPlan {
                name: i.name.clone(),
                steps: vec![Step::Blocked { reason }],
            });
            continue;
        }
        let mut steps = vec![Step::StopLegacy {
            unit: format!("container@{}.service", i.name),
        }];
        match &i.state.from {
            Some(from) => steps.push(Step::CopyState {
                from: from.clone(),
                to: i.state.to.clone(),
                // Until the options are known (`migrate::set_state_modes`).
                mode: StateHow::Copy,
            }),
            None => steps.push(Step::NoState {
                reason: if i.spec.ephemeral {
                    "the container is ephemeral (its root lived in /run)".to_string()
                } else {
                    "no legacy state directory exists (the container never ran)".to_string()
                },
            }),
        }
        if let Some(p) = legacy_profile(&i.name) {
            steps.push(Step::CarryProfile {
                from: p,
                to: profile_dir(&i.name),
            });
        }
        if let Some(g) = legacy_gcroots(&i.name) {
            steps.push(Step::CarryProfile {
                from: g,
                to: gcroots_dir(&i.name),
            });
        }
        match i.kind {
            Kind::Imperative => {
                steps.push(Step::WriteContainerFile {
                    path: container_file(&i.name),
                });
                steps.push(Step::WriteNspawn {
                    path: nspawn_file(&i.name),
                });
                if !crate::render::nspawn::dropin(i).is_empty() {
                    steps.push(Step::WriteDropin {
                        path: dropin_file(&i.name),
                    });
                }
                for (path, _) in imperative_network_units(i) {
                    steps.push(Step::WriteNetworkUnit { path });
                }
            }
            Kind::Declarative => any_declarative = true,
        }
        for path in i.guest_files.keys() {
            steps.push(Step::WriteGuestFile { path: path.clone() });
        }
        containers.push(ContainerPlan {
            name: i.name.clone(),
            steps,
        });
    }
    Plan {
        containers,
        nix_output: any_declarative.then(|| nix_output.to_path_buf()),
    }
}
