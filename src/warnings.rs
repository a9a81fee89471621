//! Warnings are values, not prints.
//!
//! Deep code returns [`Warning`]s; only the report prints them. Every warning has a stable
//! kebab-case `code` that fleet tooling can filter on, and a [`Category`] that decides where the
//! report lists it and whether the run ends with the "needs follow-up" exit code.
//!
//! Each module that emits warnings declares its codes as `pub const X: WarningSpec` and lists
//! them in a `pub const WARNINGS: &[&WarningSpec]`; [`all_specs`] gathers those lists, and the
//! tests at the bottom check the whole table (unique, kebab-case, documented).

use serde::Serialize;
use std::path::PathBuf;

/// How a warning affects the migration.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Category {
    /// Translated faithfully, but the new world behaves differently in a way worth knowing.
    ChangedMeaning,
    /// The tool could not finish this part: a person must look at it before switching over.
    NeedsHuman,
}

/// The fixed description of one warning code.
#[derive(Debug, PartialEq, Eq)]
pub struct WarningSpec {
    pub code: &'static str,
    pub category: Category,
    /// One line for docs and `--help`-style listings.
    pub summary: &'static str,
}

/// One warning about one container (or about the host when `container` is `None`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Warning {
    pub code: &'static str,
    pub category: Category,
    /// The legacy option (or file) this is about, e.g. `containers.web.config`.
    pub option: String,
    pub message: String,
    /// Host path of the file the finding comes from, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<PathBuf>,
    /// 1-based line in `file`, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<usize>,
}

impl Warning {
    pub fn new(spec: &WarningSpec, option: impl Into<String>, message: impl Into<String>) -> Self {
        Warning {
            code: spec.code,
            category: spec.category,
            option: option.into(),
            message: message.into(),
            file: None,
            line: None,
        }
    }

    /// Attach the file (a host path) and line the finding comes from.
    pub fn at(mut self, file: impl Into<PathBuf>, line: Option<usize>) -> Self {
        self.file = Some(file.into());
        self.line = line;
        self
    }

    pub fn needs_human(&self) -> bool {
        self.category == Category::NeedsHuman
    }
}

/// Every warning code the program can emit, gathered from the modules that own them.
pub fn all_specs() -> Vec<&'static WarningSpec> {
    let lists: &[&[&WarningSpec]] = &[
        crate::legacy::conf::WARNINGS,
        crate::legacy::unit::WARNINGS,
        crate::legacy::nix_source::WARNINGS,
        crate::legacy::eval::WARNINGS,
        crate::legacy::discover::WARNINGS,
        crate::legacy::merge::WARNINGS,
        crate::legacy::host_eval::WARNINGS,
        crate::translate::WARNINGS,
        crate::migrate::WARNINGS,
        crate::state::WARNINGS,
    ];
    lists.iter().flat_map(|l| l.iter().copied()).collect()
}

/// Look a code up in the table (used by tests and by documentation generation).
pub fn spec(code: &str) -> Option<&'static WarningSpec> {
    all_specs().into_iter().find(|s| s.code == code)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    #[test]
    fn codes_are_unique() {
        let mut seen = BTreeSet::new();
        for s in all_specs() {
            assert!(
                seen.insert(s.code),
                "warning code {} is declared twice",
                s.code
            );
        }
    }

    #[test]
    fn codes_are_kebab_case_and_documented() {
        for s in all_specs() {
            assert!(
                !s.code.is_empty()
                    && s.code
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                    && !s.code.starts_with('-')
                    && !s.code.ends_with('-')
                    && !s.code.contains("--"),
                "warning code {:?} is not kebab-case",
                s.code
            );
            assert!(
                !s.summary.trim().is_empty(),
                "warning code {} has no summary",
                s.code
            );
        }
    }
}
