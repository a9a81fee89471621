//! Translating a legacy container into the new world. Every decision lives here, driven by one
//! table (`mapping::MAPPINGS`); no I/O.

pub mod model;

pub use model::*;

use crate::warnings::WarningSpec;

/// Warning codes owned by the translator.
pub const WARNINGS: &[&WarningSpec] = &[];
