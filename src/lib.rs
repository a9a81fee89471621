//! nixos-nspawn: moves NixOS hosts from legacy `nixos-container` to systemd-nspawn units and
//! systemd-networkd (NixOS RFC 0108), and manages the new containers.
//!
//! The crate is a pure core with a thin shell (see `shared/design.md`):
//!
//! ```text
//! host::HostRoot ─► legacy (read + validate) ─► translate (decide) ─► render (text) ─► plan / report
//!                                                                                     └► execute (effects)
//! ```
//!
//! `legacy`, `translate`, `render`, `plan` and `report` do no I/O of their own: every read of
//! the host goes through [`host::HostRoot`], every write and every spawned command through the
//! execute layer.
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod atomic;
pub mod cli;
pub mod clock;
pub mod error;
pub mod execute;
pub mod host;
pub mod imperative;
pub mod interactive;
pub mod interrupt;
pub mod legacy;
pub mod migrate;
pub mod nix_block;
pub mod nixtext;
pub mod plan;
pub mod plan_file;
pub mod render;
pub mod report;
pub mod rewrite;
pub mod rollback;
pub mod runner;
pub mod state;
pub mod textdiff;
pub mod translate;
pub mod warnings;
