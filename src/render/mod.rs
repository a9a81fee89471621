//! Rendering the new world as text: the Nix that goes into the host configuration
//! ([`nix`]), the `.nspawn` settings file ([`nspawn`]) and systemd-networkd units
//! ([`networkd`]). Pure functions over [`crate::translate::Instance`]; no I/O.
//!
//! `nspawn::module_settings` and `networkd::module_networks` re-implement what the NixOS
//! module in `nixos/` renders, following `nixos/RENDERING.md` (the contract); the migrator uses
//! them for its preview and for the real-tool checks.

pub mod networkd;
pub mod nix;
pub mod nspawn;
