//! (being written)
use crate::warnings::WarningSpec;

/// Warning codes owned by this reader.
pub const WARNINGS: &[&WarningSpec] = &[];
