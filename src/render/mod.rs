//! Rendering the new world as text: the Nix that goes into the host configuration
//! ([`nix`]), the `.nspawn` settings file ([`nspawn`]) and systemd-networkd units
//! ([`networkd`]). Pure functions over [`crate::translate::Instance`]; no I/O.
//!
//! `nspawn::module_settings` and `networkd::module_networks` re-implement what the NixOS
//! module in `nixos/` renders, following `nixos/RENDERING.md` (the contract); the migrator uses
//! them for its preview and for the real-tool checks.
//!
//! Every value that reaches a `.nspawn` file, a networkd unit or the service drop-in (as text
//! here, or as a Nix string NixOS copies into such a file) goes through [`unit`], the one
//! writer that refuses control characters and escapes what systemd interprets.

pub mod networkd;
pub mod nix;
pub mod nspawn;
pub mod unit;
