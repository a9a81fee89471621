//! Where an imperative container's pieces live on the host (host paths, under `--root`).
//!
//! One place, so that the decision about locations (see nixos/README.md, "Where imperative
//! containers live") is made once and followed by `migrate` and by every imperative verb alike:
//! the trusted `.nspawn` file, the drop-in and the migrated container file come from
//! [`crate::plan`], which `migrate` uses too.

use std::path::PathBuf;

/// The trusted settings file (written by `create`/`update`/`rollback` and by `migrate`).
pub fn nspawn_file(name: &str) -> PathBuf {
    crate::plan::nspawn_file(name)
}

/// The `systemd-nspawn@NAME.service` drop-in, when the container needs one.
pub fn dropin_file(name: &str) -> PathBuf {
    crate::plan::dropin_file(name)
}

/// The container file `migrate` writes for a migrated imperative container; `update` without
/// `--config` rebuilds from it when no other source is recorded.
pub fn migrated_container_file(name: &str) -> PathBuf {
    crate::plan::container_file(name)
}

/// The profile directory; the container's system profile is `system` in it.
pub fn profile_dir(name: &str) -> PathBuf {
    crate::plan::profile_dir(name)
}

pub fn profile(name: &str) -> PathBuf {
    profile_dir(name).join("system")
}

/// The container's own gcroots (bound into it as `/nix/var/nix/gcroots`).
pub fn gcroots_dir(name: &str) -> PathBuf {
    PathBuf::from(format!("/nix/var/nix/gcroots/per-nspawn/{name}"))
}

/// The container's root filesystem (its state).
pub fn state_dir(name: &str) -> PathBuf {
    PathBuf::from(format!("/var/lib/machines/{name}"))
}

/// Where the host-side networkd units of imperative containers persist. Not
/// `/etc/systemd/network`: on NixOS that is a link into the store as soon as networkd is
/// configured. networkd reads `/run/systemd/network` as well: each unit is linked there
/// ([`RUNTIME_NETWORK_DIR`]) when it is installed on the running host, and again at every boot
/// by the module (`nixos/lib/imperative-paths.nix`).
pub const NETWORK_DIR: &str = "/var/lib/nixos-nspawn/imperative/network";

/// Where networkd sees the units of [`NETWORK_DIR`] (as links).
pub const RUNTIME_NETWORK_DIR: &str = "/run/systemd/network";

/// Per-generation copies of every file rendered for the container (`.nspawn`, network units,
/// drop-in, `data.json`, and what it was built from), so that `rollback` restores the units
/// together with the profile.
pub fn generations_dir(name: &str) -> PathBuf {
    PathBuf::from(format!(
        "/var/lib/nixos-nspawn/imperative/generations/{name}"
    ))
}

pub fn generation_dir(name: &str, generation: u64) -> PathBuf {
    generations_dir(name).join(generation.to_string())
}

/// Settings directories systemd-nspawn reads, in its order; the first one is where NixOS puts
/// declarative containers (a link into the store).
pub const NSPAWN_DIRS: &[&str] = &["/etc/systemd/nspawn", "/run/systemd/nspawn"];

/// Directories networkd reads units from (for zone and address checks).
pub const NETWORKD_DIRS: &[&str] = &[
    NETWORK_DIR,
    "/etc/systemd/network",
    "/run/systemd/network",
    "/usr/lib/systemd/network",
];

/// The link that starts the container at boot (`autoStart`): `machines.target` wants it. In
/// the drop-in directory of [`crate::plan::IMPERATIVE_UNIT_DIR`], which PID 1 searches before
/// `/etc/systemd/system` (a store link on NixOS); `machinectl enable` would write into the
/// latter.
pub fn autostart_link(name: &str) -> PathBuf {
    PathBuf::from(format!(
        "{}/machines.target.wants/systemd-nspawn@{name}.service",
        crate::plan::IMPERATIVE_UNIT_DIR
    ))
}

/// Where the `systemd-nspawn@.service` template may be, in the order it is looked for (the
/// autostart link points at the first that exists; systemd only uses the link's name).
pub const NSPAWN_TEMPLATE: &[&str] = &[
    "/etc/systemd/system/systemd-nspawn@.service",
    "/run/current-system/sw/lib/systemd/system/systemd-nspawn@.service",
    "/usr/lib/systemd/system/systemd-nspawn@.service",
    "/lib/systemd/system/systemd-nspawn@.service",
];
