//! Build a [`LegacyContainer`] from a small Nix attribute set of `containers.<name>` options,
//! as written in the mapping table's examples (and in tests), through the real reader
//! (`legacy::nix_source`) and merge: one fixed file (`/etc/nixos/configuration.nix`) and
//! container name (`web`), deployed and declarative. A special `_kind = "imperative";` makes
//! an imperative container with a rootfs config.

use crate::legacy::*;
use rnix::ast::{self, HasEntry};
use rowan::ast::AstNode;
use std::path::PathBuf;

pub const EXAMPLE_FILE: &str = "/etc/nixos/configuration.nix";
pub const EXAMPLE_NAME: &str = "web";

/// Read `src` (a Nix attribute set of container options, as written under
/// `containers.web = …;` in `/etc/nixos/configuration.nix`) with the real reader and merge, into
/// a deployed declarative container named `web`.
pub fn example_container(src: &str) -> Result<LegacyContainer, String> {
    let parse = rnix::Root::parse(src);
    if let Some(e) = parse.errors().first() {
        return Err(format!("example does not parse: {e}"));
    }
    let Some(ast::Expr::AttrSet(set)) = parse.tree().expr() else {
        return Err("example is not an attribute set".into());
    };
    // `_kind = "imperative";` is the examples' own key, not an option.
    let imperative = set.attrpath_values().any(|kv| {
        kv.attrpath()
            .is_some_and(|p| p.syntax().to_string() == "_kind")
            && kv
                .value()
                .is_some_and(|v| v.syntax().to_string() == "\"imperative\"")
    });
    let ff = crate::legacy::nix_source::read_container_value(
        std::path::Path::new(EXAMPLE_FILE),
        src,
        EXAMPLE_NAME,
    )
    .map_err(|w| w.message)?;
    let mut facts = ff
        .containers
        .into_iter()
        .next()
        .unwrap_or_else(|| SourceFacts::new(EXAMPLE_NAME, SourceKind::NixSource, EXAMPLE_FILE));
    facts.options.remove("_kind");
    let merged = crate::legacy::merge::merge(EXAMPLE_NAME, vec![facts]);
    let mut c = LegacyContainer {
        name: EXAMPLE_NAME.into(),
        kind: Some(Kind::Declarative),
        layout: Some(Layout::NixosContainers),
        conf_file: Some(PathBuf::from("/etc/nixos-containers/web.conf")),
        state_dir: Some(PathBuf::from("/var/lib/nixos-containers/web")),
        profile_dir: None,
        has_profile_generations: false,
        rootfs_config: None,
        options: merged.options,
        condition: merged.condition,
        sources: merged.sources,
        warnings: merged.warnings,
    };
    if imperative {
        c.kind = Some(Kind::Imperative);
        c.rootfs_config = Some(PathBuf::from(
            "/var/lib/nixos-containers/web/etc/nixos/configuration.nix",
        ));
    }
    Ok(c)
}
