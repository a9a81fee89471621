//! `nixos-nspawn migrate` for a person at a terminal.

use crate::cli::MigrateArgs;
use crate::error::Error;
use std::path::Path;

pub fn run(_root: &Path, _args: &MigrateArgs, _verbose: bool) -> Result<u8, Error> {
    Err(Error::Usage(
        "interactive mode: work in progress".to_string(),
    ))
}
