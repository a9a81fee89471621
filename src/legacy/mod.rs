//! Reading the legacy world. This stage only parses and validates; every decision about the
//! new world belongs to `translate`. Readers are pure functions over text; `discover` is the
//! one place that looks at the host tree, through [`crate::host::HostRoot`].

pub mod conf;
pub mod discover;
pub mod eval;
pub mod host_eval;
pub mod merge;
pub mod model;
pub mod names;
pub mod nix_source;
pub mod options;
pub mod unit;

pub use model::*;
