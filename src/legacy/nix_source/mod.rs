//! Static reader of the host's NixOS configuration: the legacy `containers.<name>` definitions.
//!
//! The Nix files are parsed losslessly with rnix, so a guest `config` body is carried over
//! verbatim, comments included. Literal values (through `let` bindings) become data; anything
//! computed stays a verbatim [`NixExpr`] with its position and free variables. What cannot be
//! read statically — generated container sets, computed names, values from function calls,
//! imports of computed paths, a file that does not parse — becomes a `needs-human` warning that
//! names the site and the exact `nix` command that gets the evaluated values
//! ([`EVAL_COMMAND_NIXOS`], [`EVAL_COMMAND_FLAKE`], then [`FROM_JSON_COMMAND`]).
//!
//! Forms read (see `tests.rs`, one test each):
//! - `containers.x = { … }`, `containers = { a = …; "b-2" = …; }`, dotted paths spread over
//!   the file (`containers.c.autoStart = …;`), dotted options (`bindMounts.x.hostPath = …`,
//!   `config.services.x = …`), quoted and odd names;
//! - `lib.mkIf cond { … }` / `optionalAttrs` around a container (its `condition`), around
//!   `containers` or a whole module `config = lib.mkIf cfg.enable { … }`; `mkMerge [ … ]`, `//`,
//!   `mkDefault`/`mkForce` (looked through);
//! - `let` bindings (nested, `inherit`, `inherit (set) a`, `set.a.b`, strings interpolating
//!   `let`-bound strings), `rec { }`, `with`, module functions `{ config, lib, ... }:`;
//! - `imports = [ ./x.nix /abs/y.nix "/abs/z.nix" (import ./f.nix { … }) ./dir ] ++ names`,
//!   `lib.optionals c [ … ]`; skipped: `<nixpkgs/…>`, `modulesPath + "…"`,
//!   `inputs.*`/`*.nixosModules.*` (third-party modules); anything else is a warning;
//! - files that hold `containers` (`containers = import ./c.nix;`) or one container's value
//!   (`containers.x = import ./x.nix;`, `import ./x.nix { inherit pkgs; }`);
//! - flake hosts: `nixosConfigurations.<h> = <…>.nixosSystem { modules = [ … ]; }` ([`read_flake`]);
//! - a file given as a module that defines no container but is a piece of a configuration
//!   (`fragment.rs`, table-driven on the legacy option names): one container's value is a
//!   `nix-container-fragment` warning; the value of `containers` is read with its names when
//!   every entry is a container or an import of a file that is one (`nix-containers-set-read`
//!   note), else a `nix-containers-set-fragment` warning;
//! - a final sweep of every file read as a module: any `containers…` / `config.containers…`
//!   attribute the walk did not read is read as the module it is nested in (flake-parts
//!   `flake.modules.nixos.x`, `nixosModules.x`, …; `nix-nested-containers` note on each
//!   container), or warned about at its line (`nix-containers-not-read`); `containers` under
//!   other options (`virtualisation.oci-containers.containers`, …) is not legacy and skipped.
//!
//! Pure apart from [`SourceFs`]: every read goes through it.

mod extract;
mod flake;
mod fragment;
#[cfg(test)]
mod tests;
mod text;

pub use flake::{FlakeResult, read_flake};
pub use fragment::{CONTAINER_KEYS, Fragment, SetEntry};

use crate::host::HostRoot;
use crate::legacy::model::{GuestFile, NixExpr, SourceFacts, Value};
use crate::warnings::{Category, Warning, WarningSpec};
use extract::{Extract, Start};
use rowan::ast::AstNode;
use std::collections::{HashSet, VecDeque};
use std::path::{Path, PathBuf};

pub const NIX_PARSE_ERROR: WarningSpec = WarningSpec {
    code: "nix-parse-error",
    category: Category::NeedsHuman,
    summary: "a Nix file does not parse; it was not read (containers it defines are missing)",
};
pub const NIX_FILE_UNREADABLE: WarningSpec = WarningSpec {
    code: "nix-file-unreadable",
    category: Category::NeedsHuman,
    summary: "a Nix file named by the configuration or an import is missing or cannot be read",
};
pub const NIX_DYNAMIC_CONTAINERS: WarningSpec = WarningSpec {
    code: "nix-dynamic-containers",
    category: Category::NeedsHuman,
    summary: "containers are built by Nix code (mapAttrs, listToAttrs, computed names, …); \
              evaluate with nix and use --from-json",
};
pub const NIX_DYNAMIC_CONTAINER: WarningSpec = WarningSpec {
    code: "nix-dynamic-container",
    category: Category::NeedsHuman,
    summary: "(part of) one container's definition is computed by Nix code and was not read",
};
/// Options whose value the translator copies into the generated Nix file as an expression when
/// it cannot be read as data (the new module takes them with the same shape and only passes
/// them through, never computes with them): no `nix-unresolved-value` / `needs-eval` for them;
/// the translator says what it copied (`bind-mounts-copied-as-nix`, `host-bridge-copied-as-nix`).
/// The addresses are among them: the translator carries them into the module's static
/// addresses where it can (`addresses-copied-as-nix`) and reports them itself where it cannot
/// (`unresolved-expression`).
pub const CARRIED_AS_NIX: &[&str] = &[
    "bindMounts",
    "hostBridge",
    "hostAddress",
    "localAddress",
    "hostAddress6",
    "localAddress6",
];

/// Why the translation needs the value of `option` itself, not the code that computes it
/// (for the warnings that say a value could not be read): the options it computes with.
pub fn why_value_needed(option: &str) -> &'static str {
    match option {
        "hostAddress" | "localAddress" | "hostAddress6" | "localAddress6" => {
            "the translation needs the address itself: whether it carries a prefix, and the other \
             end's address, decide the addresses, peers and routes of both ends of the veth"
        }
        "extraFlags" => {
            "the translation needs the list itself: each flag becomes its own .nspawn key or unit \
             setting, or is refused"
        }
        "additionalCapabilities" => {
            "the translation needs the list itself: each item is checked and becomes a Capability= value"
        }
        "forwardPorts" => "the translation needs the list itself: each port becomes a Port= key",
        "extraVeths" | "macvlans" | "interfaces" => {
            "the translation needs the names themselves: each link becomes its own .nspawn key and \
             networkd units"
        }
        _ => "the translation decides from the value itself, not from the code that computes it",
    }
}

pub const NIX_UNRESOLVED_VALUE: WarningSpec = WarningSpec {
    code: "nix-unresolved-value",
    category: Category::NeedsHuman,
    summary: "a container option's value is computed by Nix code; evaluate with nix to get it",
};
pub const NIX_IMPORT_NOT_FOLLOWED: WarningSpec = WarningSpec {
    code: "nix-import-not-followed",
    category: Category::NeedsHuman,
    summary: "an import is not a literal path, so the file it names was not read",
};
pub const NIX_CONFLICTING_DEFINITIONS: WarningSpec = WarningSpec {
    code: "nix-conflicting-definitions",
    category: Category::NeedsHuman,
    summary: "one container option is defined twice with different values",
};
pub const NIX_RELATIVE_PATH: WarningSpec = WarningSpec {
    code: "nix-relative-path",
    category: Category::ChangedMeaning,
    summary: "a guest config uses relative paths, which are relative to the file it came from",
};
pub const NIX_FLAKE_SEVERAL_HOSTS: WarningSpec = WarningSpec {
    code: "nix-flake-several-hosts",
    category: Category::NeedsHuman,
    summary: "the flake defines several NixOS hosts and none was chosen; all were read",
};
pub const NIX_FLAKE_MODULES_DYNAMIC: WarningSpec = WarningSpec {
    code: "nix-flake-modules-dynamic",
    category: Category::NeedsHuman,
    summary: "a flake host's modules are not literal paths; name the file with --config or \
              evaluate with nix and use --from-json",
};

pub const NIX_NO_CONTAINERS: WarningSpec = WarningSpec {
    code: "nix-no-containers",
    category: Category::NeedsHuman,
    summary: "the configuration given with --config (and every file it imports) defines no legacy container",
};
pub const NIX_CONTAINER_FRAGMENT: WarningSpec = WarningSpec {
    code: "nix-container-fragment",
    category: Category::NeedsHuman,
    summary: "the file is the definition of one container, not a host configuration; its \
              container was not read (pass the host configuration that imports it)",
};
pub const NIX_CONTAINERS_SET_FRAGMENT: WarningSpec = WarningSpec {
    code: "nix-containers-set-fragment",
    category: Category::NeedsHuman,
    summary: "the file is a set of container definitions, not a host configuration; its \
              containers were not read (pass the host configuration that imports it)",
};
pub const NIX_CONTAINERS_SET_READ: WarningSpec = WarningSpec {
    code: "nix-containers-set-read",
    category: Category::ChangedMeaning,
    summary: "the container was read from a file that is the value of `containers`, given \
              directly instead of the host configuration that imports it",
};
pub const NIX_NESTED_CONTAINERS: WarningSpec = WarningSpec {
    code: "nix-nested-containers",
    category: Category::ChangedMeaning,
    summary: "the container was read from a module nested inside the file (a flake output, a \
              flake-parts module, …), not from the file's own top level",
};
pub const NIX_CONTAINERS_NOT_READ: WarningSpec = WarningSpec {
    code: "nix-containers-not-read",
    category: Category::NeedsHuman,
    summary: "a `containers` definition in the file was found but could not be read",
};

/// Warning codes owned by this reader.
pub const WARNINGS: &[&WarningSpec] = &[
    &NIX_PARSE_ERROR,
    &NIX_FILE_UNREADABLE,
    &NIX_DYNAMIC_CONTAINERS,
    &NIX_DYNAMIC_CONTAINER,
    &NIX_UNRESOLVED_VALUE,
    &NIX_IMPORT_NOT_FOLLOWED,
    &NIX_CONFLICTING_DEFINITIONS,
    &NIX_RELATIVE_PATH,
    &NIX_FLAKE_SEVERAL_HOSTS,
    &NIX_FLAKE_MODULES_DYNAMIC,
    &NIX_CONTAINER_FRAGMENT,
    &NIX_CONTAINERS_SET_FRAGMENT,
    &NIX_CONTAINERS_SET_READ,
    &NIX_NO_CONTAINERS,
    &NIX_NESTED_CONTAINERS,
    &NIX_CONTAINERS_NOT_READ,
];

macro_rules! eval_apply {
    () => {
        r#"builtins.mapAttrs (n: c: removeAttrs c [ "_module" "config" "nixpkgs" "path" "pkgs" "specialArgs" ])"#
    };
}

/// The function applied to `config.containers` before it is printed as JSON: it removes what
/// cannot be JSON or must not be evaluated (`config` and `path` evaluate a whole guest system,
/// `pkgs` throws, `nixpkgs` is a path that JSON would copy into the store, `specialArgs` may
/// hold functions or the host's own config, `_module` holds functions).
pub const EVAL_APPLY: &str = eval_apply!();

/// Evaluate the containers of a host configured through `/etc/nixos/configuration.nix`.
pub const EVAL_COMMAND_NIXOS: &str = concat!(
    "nix-instantiate --eval --strict --json -E '",
    eval_apply!(),
    " (import <nixpkgs/nixos> { }).config.containers' > containers.json"
);

/// Evaluate the containers of a flake host; replace `HOST` by the host's name (and
/// `/etc/nixos` by the flake's directory).
pub const EVAL_COMMAND_FLAKE: &str = concat!(
    "nix --extra-experimental-features 'nix-command flakes' eval --json ",
    "'/etc/nixos#nixosConfigurations.HOST.config.containers' --apply '",
    eval_apply!(),
    "' > containers.json"
);

/// Migrate from the evaluated values written by one of the commands above.
pub const FROM_JSON_COMMAND: &str = "nixos-nspawn migrate --from-json containers.json";

/// How to get the evaluated containers of this host: the command named in warnings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EvalCommand {
    /// A classic host: `<nixpkgs/nixos>` with this configuration file (`None`: the default
    /// `/etc/nixos/configuration.nix`).
    Nixos { configuration: Option<PathBuf> },
    /// A flake host: `<dir>#nixosConfigurations.<host>`; `None` when the host is not known.
    Flake { dir: PathBuf, host: Option<String> },
}

impl EvalCommand {
    /// The command for a classic host whose configuration starts at `entry` (a host path).
    /// A `flake.nix` is not a NixOS configuration: it gets the flake command for its
    /// directory (host unknown).
    pub fn for_config(entry: &Path) -> Self {
        if entry.file_name().is_some_and(|n| n == "flake.nix") {
            return EvalCommand::Flake {
                dir: entry.parent().unwrap_or(Path::new("/")).to_path_buf(),
                host: None,
            };
        }
        if entry == Path::new("/etc/nixos/configuration.nix") {
            EvalCommand::Nixos {
                configuration: None,
            }
        } else {
            EvalCommand::Nixos {
                configuration: Some(entry.to_path_buf()),
            }
        }
    }

    /// The shell command that writes `containers.json`.
    pub fn command(&self) -> String {
        match self {
            EvalCommand::Nixos {
                configuration: None,
            } => EVAL_COMMAND_NIXOS.to_string(),
            EvalCommand::Nixos {
                configuration: Some(p),
            } => {
                let conf = p.display().to_string();
                let conf = if conf.bytes().all(|b| {
                    b.is_ascii_alphanumeric() || matches!(b, b'/' | b'.' | b'-' | b'_' | b'+')
                }) {
                    conf
                } else {
                    crate::nixtext::string_literal(&conf)
                };
                EVAL_COMMAND_NIXOS.replace(
                    "<nixpkgs/nixos> { }",
                    &format!("<nixpkgs/nixos> {{ configuration = {conf}; }}"),
                )
            }
            EvalCommand::Flake { dir, host } => {
                let host = match host {
                    Some(h) => crate::nixtext::attr_name(h),
                    None => "$(hostname)".to_string(),
                };
                let installable = format!(
                    "{}#nixosConfigurations.{host}.config.containers",
                    dir.display()
                );
                let quoted = if installable.contains('\'') || installable.contains("$(") {
                    format!("\"{}\"", installable.replace('"', "\\\""))
                } else {
                    format!("'{installable}'")
                };
                EVAL_COMMAND_FLAKE.replace(
                    "'/etc/nixos#nixosConfigurations.HOST.config.containers'",
                    &quoted,
                )
            }
        }
    }

    /// The sentence warnings end with.
    pub fn advice(&self) -> String {
        format!(
            "To read the evaluated values, run on the host:\n  {}\nthen:\n  {}",
            self.command(),
            FROM_JSON_COMMAND
        )
    }
}

/// Where Nix files are read from.
pub trait SourceFs {
    fn read_to_string(&self, p: &Path) -> std::io::Result<String>;
    fn is_file(&self, p: &Path) -> bool;
    fn is_dir(&self, p: &Path) -> bool;
    /// Why `p` is not a readable file ("it does not exist", "it is a FIFO (named pipe), not a
    /// regular file", "it is a symlink loop"), for the warning that names it.
    fn why_not_a_file(&self, p: &Path) -> String;
}

/// Host paths, resolved under `--root` (symlinks followed inside the root).
pub struct HostFs<'a>(pub &'a HostRoot);

impl SourceFs for HostFs<'_> {
    fn read_to_string(&self, p: &Path) -> std::io::Result<String> {
        self.0.read_to_string(p)
    }
    fn is_file(&self, p: &Path) -> bool {
        matches!(self.0.kind_followed(p), Ok(Some(crate::host::Kind::File)))
    }
    fn is_dir(&self, p: &Path) -> bool {
        matches!(self.0.kind_followed(p), Ok(Some(crate::host::Kind::Dir)))
    }
    fn why_not_a_file(&self, p: &Path) -> String {
        self.0.why_not_a_file(p)
    }
}

/// Ordinary paths (a `--config FILE` outside the host root).
pub struct PlainFs;

impl SourceFs for PlainFs {
    fn read_to_string(&self, p: &Path) -> std::io::Result<String> {
        std::fs::read_to_string(p)
    }
    fn is_file(&self, p: &Path) -> bool {
        p.is_file()
    }
    fn is_dir(&self, p: &Path) -> bool {
        p.is_dir()
    }
    fn why_not_a_file(&self, p: &Path) -> String {
        match std::fs::metadata(p) {
            Ok(m) => format!(
                "it is {}, not a regular file",
                crate::host::type_name(rustix::fs::FileType::from_raw_mode(
                    std::os::unix::fs::MetadataExt::mode(&m)
                ))
            ),
            Err(e) => crate::host::why_not_found(&e),
        }
    }
}

/// A binding that defines (part of) one container: `containers.x = …;`, `containers.x.opt =
/// …;`, `config.containers.x = …;` or the member `x = …;` of `containers = { … }` (byte range
/// of the whole binding, `;` included). What `migrate --rewrite` replaces.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct DefinitionSite {
    pub container: String,
    /// Host path of the file.
    pub file: PathBuf,
    pub start: usize,
    pub end: usize,
    /// 1-based line of the binding.
    pub line: usize,
    /// False when the file was read as the value of `containers` or of one container (a file
    /// imported as `containers = import ./c.nix;`), not as a module.
    pub in_module: bool,
}

/// What the whole configuration tree says.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NixSourceResult {
    /// One entry per container, definitions from all files merged.
    pub facts: Vec<SourceFacts>,
    /// Findings not tied to one container (parse errors, generated container sets, imports
    /// that were not followed).
    pub problems: Vec<Warning>,
    /// Every file read, in reading order.
    pub files_read: Vec<PathBuf>,
    /// How this configuration is evaluated with Nix (the command warnings name, and what
    /// [`crate::legacy::host_eval`] runs on a live host).
    pub eval: Option<EvalCommand>,
    /// Every `containers = <expr>` whose value is computed (`mapAttrs`, `listToAttrs`, …),
    /// verbatim with the `let` bindings it needs: where the guest `config` of a container
    /// known only from evaluation comes from.
    pub container_sets: Vec<NixExpr>,
    /// Every binding that defines a container, in reading order (for `migrate --rewrite`).
    pub sites: Vec<DefinitionSite>,
}

/// How a file named by another is to be read.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ImportRole {
    /// A NixOS module (`imports = [ ./x.nix ]`).
    Module,
    /// The value of `containers` (`containers = import ./containers.nix;`).
    Containers,
    /// The value of one container (`containers.web = import ./web.nix;`).
    Container(String),
}

/// A file another file makes us read.
#[derive(Clone, Debug, PartialEq)]
pub struct NixImport {
    /// Absolute, lexically normalised (a directory means its `default.nix`).
    pub path: PathBuf,
    /// Line of the import in the importing file.
    pub line: usize,
    pub role: ImportRole,
    /// Conditions the import sits under (`lib.optionals cond [ ./x.nix ]`, or the `mkIf`
    /// around `containers = import …`): they apply to every container the file defines.
    pub condition: Option<NixExpr>,
}

/// What one file says.
#[derive(Clone, Debug, PartialEq)]
pub struct FileFacts {
    pub file: PathBuf,
    pub containers: Vec<SourceFacts>,
    pub imports: Vec<NixImport>,
    pub problems: Vec<Warning>,
    /// When a file read as a module defines no container and is shaped like a piece of a
    /// configuration (one container's value, or a set of them); `problems` then holds the
    /// warning saying so.
    pub fragment: Option<Fragment>,
    /// `containers = <expr>` sites whose value is computed ([`NixSourceResult::container_sets`]).
    pub container_sets: Vec<NixExpr>,
    /// Every binding that defines a container ([`DefinitionSite`]).
    pub sites: Vec<DefinitionSite>,
}

/// Pure: one file's text → its containers and the files it names. `Err` when the file does not
/// parse (the warning gives the parser's line and column).
pub fn read_nix_file(file: &Path, text: &str) -> Result<FileFacts, Warning> {
    read_nix_file_as(
        file,
        text,
        &Start::Module,
        &EvalCommand::Nixos {
            configuration: None,
        },
    )
}

fn parse(file: &Path, text: &str) -> Result<rnix::Root, Warning> {
    // Before rnix, which overflows the stack (an abort) on some deep nestings.
    if let Err(deep) = crate::nixtext::check_nesting(text) {
        let (line, col) = crate::nixtext::line_col(text, deep.offset);
        return Err(Warning::new(
            &NIX_PARSE_ERROR,
            file.display().to_string(),
            format!(
                "{}:{line}:{col}: {}; the file was not read, so containers it defines are missing",
                file.display(),
                deep.message
            ),
        )
        .at(file, Some(line)));
    }
    let parse = rnix::Root::parse(text);
    if let Some(err) = parse.errors().first() {
        let lines = text::Lines::new(text);
        let offset = parse_error_offset(err, text.len());
        let (line, col) = lines.line_col(offset);
        let more = parse.errors().len() - 1;
        let more = if more > 0 {
            format!(" (and {more} more errors)")
        } else {
            String::new()
        };
        return Err(Warning::new(
            &NIX_PARSE_ERROR,
            file.display().to_string(),
            format!(
                "{}:{line}:{col}: the Nix file does not parse: {}{more}; it was not read, so \
                 containers it defines are missing. Fix the file (check it with \
                 `nix-instantiate --parse {}`) and run again",
                file.display(),
                describe_parse_error(err),
                file.display()
            ),
        )
        .at(file.to_path_buf(), Some(line)));
    }
    Ok(parse.tree())
}

fn parse_error_offset(err: &rnix::ParseError, len: usize) -> usize {
    use rnix::ParseError as E;
    match err {
        E::Unexpected(r)
        | E::UnexpectedExtra(r)
        | E::UnexpectedWanted(_, r, _)
        | E::UnexpectedDoubleBind(r)
        | E::DuplicatedArgs(r, _) => usize::from(r.start()),
        _ => len,
    }
}

/// The parser's message without its byte offsets (we give line and column instead).
fn describe_parse_error(err: &rnix::ParseError) -> String {
    use rnix::ParseError as E;
    match err {
        E::Unexpected(_) => "unexpected input".to_string(),
        E::UnexpectedExtra(_) => "unexpected text after the end of the expression".to_string(),
        E::UnexpectedWanted(got, _, wanted) => format!(
            "unexpected {}, expected {}",
            kind_name(*got),
            wanted
                .iter()
                .map(|k| kind_name(*k))
                .collect::<Vec<_>>()
                .join(" or ")
        ),
        E::UnexpectedDoubleBind(_) => "a pattern is bound twice".to_string(),
        E::UnexpectedEOF => "unexpected end of file".to_string(),
        E::UnexpectedEOFWanted(wanted) => format!(
            "unexpected end of file, expected {}",
            wanted
                .iter()
                .map(|k| kind_name(*k))
                .collect::<Vec<_>>()
                .join(" or ")
        ),
        E::DuplicatedArgs(_, name) => format!("argument `{name}` is duplicated"),
        E::RecursionLimitExceeded => "the expression is nested too deeply".to_string(),
        other => other.to_string(),
    }
}

fn kind_name(k: rnix::SyntaxKind) -> String {
    use rnix::SyntaxKind::*;
    let sym = match k {
        TOKEN_L_PAREN => "`(`",
        TOKEN_R_PAREN => "`)`",
        TOKEN_L_BRACE => "`{`",
        TOKEN_R_BRACE => "`}`",
        TOKEN_L_BRACK => "`[`",
        TOKEN_R_BRACK => "`]`",
        TOKEN_SEMICOLON => "`;`",
        TOKEN_ASSIGN => "`=`",
        TOKEN_COLON => "`:`",
        TOKEN_COMMA => "`,`",
        TOKEN_DOT => "`.`",
        TOKEN_STRING_START => "a string",
        TOKEN_IDENT => "a name",
        TOKEN_INTERPOL_START => "`${`",
        _ => "",
    };
    if !sym.is_empty() {
        return sym.to_string();
    }
    let s = format!("{k:?}");
    s.trim_start_matches("TOKEN_")
        .trim_start_matches("NODE_")
        .to_lowercase()
        .replace('_', " ")
}

pub(crate) fn read_nix_file_as(
    file: &Path,
    text: &str,
    start: &Start,
    eval: &EvalCommand,
) -> Result<FileFacts, Warning> {
    read_nix_file_classified(file, text, start, eval, true)
}

/// [`read_nix_file_as`]; `classify`: whether a module file that defines no container is
/// checked for the shape of a fragment ([`Fragment`]).
fn read_nix_file_classified(
    file: &Path,
    text: &str,
    start: &Start,
    eval: &EvalCommand,
    classify: bool,
) -> Result<FileFacts, Warning> {
    let root = parse(file, text)?;
    let mut ex = Extract::new(file, text, eval.clone());
    let mut fragment = None;
    match root.expr() {
        Some(e) => {
            ex.run(e.clone(), start);
            if classify && *start == Start::Module && ex.containers.is_empty() {
                fragment = fragment::classify(file, &e, &|n| ex.line(n)).filter(|f| {
                    // A set is only a guess: what the module reading said comes first.
                    matches!(f, Fragment::Container { .. }) || ex.problems.is_empty()
                });
                // Nothing container-shaped at first sight, but maybe a set whose values are
                // calls of this file's own functions (`web = mkWeb "10.0.0.2";`): read it as
                // the value of `containers` and keep that reading only if it is clean.
                if fragment.is_none()
                    && ex.problems.is_empty()
                    && let Some(ff) = trial_set_read(file, text, eval, None)
                {
                    return Ok(ff);
                }
            }
            match &fragment {
                Some(f) => {
                    // The file is not a module: what reading it as one found (its guest
                    // `config`'s imports, say) is not the host's.
                    ex.imports.clear();
                    ex.problems = vec![fragment::fragment_warning(file, f, eval)];
                }
                None => ex.sweep(&e),
            }
        }
        None => {
            // An empty file is not a valid Nix expression; rnix reports it as an error, so
            // this is only reached for inputs rnix accepts without an expression.
            let _ = root.syntax();
        }
    }
    Ok(FileFacts {
        file: file.to_path_buf(),
        containers: ex.containers,
        imports: ex.imports,
        problems: ex.problems,
        fragment,
        container_sets: ex.container_sets,
        sites: ex.sites,
    })
}

/// One container's value (`containers.<name> = <text>`), as the reader reads it in a host file:
/// for the translation table's examples, which run through the real reader.
pub(crate) fn read_container_value(
    file: &Path,
    text: &str,
    name: &str,
) -> Result<FileFacts, Warning> {
    read_nix_file_as(
        file,
        text,
        &Start::Container(name.to_string()),
        &EvalCommand::for_config(file),
    )
}

/// Read the configuration starting at `entry` and every file it imports (literal paths),
/// including files that hold `containers` or one container's value. Cycles are read once.
/// The commands named in warnings are those for a classic host with this entry file.
///
/// A `flake.nix` that defines `nixosConfigurations` is read as a flake host
/// ([`read_flake_config`], every host), plus the containers of other modules nested in it
/// (`nixosModules.x`, …) that the hosts do not define.
pub fn read_config_tree(fs: &dyn SourceFs, entry: &Path) -> NixSourceResult {
    let eval = EvalCommand::for_config(entry);
    if matches!(eval, EvalCommand::Flake { .. }) && !read_flake(fs, entry, None).hosts.is_empty() {
        let mut out = read_flake_config(fs, entry, None);
        let as_module = read_entries_only(fs, entry, &eval);
        for c in as_module.facts {
            if !out.facts.iter().any(|f| f.container == c.container) {
                merge_into(&mut out.facts, c);
            }
        }
        for w in as_module.problems {
            let said = out
                .problems
                .iter()
                .any(|p| p.code == w.code && p.line == w.line && p.file == w.file);
            let nested = w.code == NIX_CONTAINERS_NOT_READ.code
                || w.message.contains("nested in the file.)");
            if nested && !said {
                out.problems.push(w);
            }
        }
        return out;
    }
    read_config_tree_with(fs, entry, &eval)
}

/// One file read as a module, its imports not followed.
fn read_entries_only(fs: &dyn SourceFs, file: &Path, eval: &EvalCommand) -> NixSourceResult {
    let mut out = NixSourceResult::default();
    let Ok(text) = fs.read_to_string(file) else {
        return out;
    };
    if let Ok(ff) = read_nix_file_as(file, &text, &Start::Module, eval) {
        for c in ff.containers {
            merge_into(&mut out.facts, c);
        }
        out.problems = ff.problems;
    }
    out
}

/// [`read_config_tree`] naming `eval` in its warnings (e.g. the flake command of
/// [`FlakeResult::eval_command`]).
pub fn read_config_tree_with(
    fs: &dyn SourceFs,
    entry: &Path,
    eval: &EvalCommand,
) -> NixSourceResult {
    read_entries(fs, &[entry.to_path_buf()], eval)
}

/// Everything a flake host's configuration says: [`read_flake`], then every entry it names read
/// as one tree (a file two entries import is read once), with the containers of inline
/// modules in flake.nix. `flake.nix` is the first file in `files_read`.
pub fn read_flake_config(
    fs: &dyn SourceFs,
    flake_nix: &Path,
    host_name: Option<&str>,
) -> NixSourceResult {
    let fr = read_flake(fs, flake_nix, host_name);
    let eval = fr.eval_command.clone().unwrap_or(EvalCommand::Flake {
        dir: flake_nix.parent().unwrap_or(Path::new("/")).to_path_buf(),
        host: host_name.map(str::to_string),
    });
    let tree = flake_nix.parent().unwrap_or(Path::new("/")).to_path_buf();
    let mut out = read_entries_in(fs, &fr.entries, &eval, &tree);
    out.files_read.insert(0, flake_nix.to_path_buf());
    let mut problems = fr.problems;
    problems.append(&mut out.problems);
    out.problems = problems;
    let tree = std::mem::take(&mut out.facts);
    for c in fr.facts.into_iter().chain(tree) {
        merge_into(&mut out.facts, c);
    }
    out
}

/// The most files one configuration may make us read. Paths are compared as written, so a
/// symlink such as `sub -> .` could otherwise make `./sub/x.nix` imports go on forever.
const MAX_FILES: usize = 2000;

/// Read several module files as one configuration (as `imports = [ … ]` would). The
/// configuration tree (where guest files may be read from, [`attach_guest_files`]) is the
/// directory of the first entry.
pub fn read_entries(fs: &dyn SourceFs, entries: &[PathBuf], eval: &EvalCommand) -> NixSourceResult {
    let tree = entries
        .first()
        .map(|e| config_tree(fs, e))
        .unwrap_or_else(|| PathBuf::from("/"));
    read_entries_in(fs, entries, eval, &tree)
}

/// The host's configuration tree around `entry`: `/etc/nixos` for a file in it, else the
/// nearest directory above that holds a `flake.nix` or `.git` (a configuration repository,
/// whose hosts import `../../modules/…`), else the entry's own directory.
fn config_tree(fs: &dyn SourceFs, entry: &Path) -> PathBuf {
    let etc = Path::new("/etc/nixos");
    if entry.starts_with(etc) {
        return etc.to_path_buf();
    }
    let dir = entry.parent().unwrap_or(Path::new("/"));
    for d in dir.ancestors().take(6) {
        if d == Path::new("/") {
            break;
        }
        if fs.is_file(&d.join("flake.nix")) || fs.is_dir(&d.join(".git")) {
            return d.to_path_buf();
        }
    }
    dir.to_path_buf()
}

/// The most guest files read for one container's `config`.
const MAX_GUEST_FILES: usize = 200;

/// The `.nix` files (or directories, for their `default.nix`) that relative path literals in
/// `text` name, resolved from `file`.
fn relative_nix_paths(file: &Path, text: &str) -> Vec<PathBuf> {
    use rowan::ast::AstNode;
    // Too deep to parse safely: the guest rules report the text itself (guest.rs).
    if crate::nixtext::check_nesting(text).is_err() {
        return Vec::new();
    }
    let parse = rnix::Root::parse(text);
    let mut out = Vec::new();
    for n in parse.tree().syntax().descendants() {
        if n.kind() != rnix::SyntaxKind::NODE_PATH_REL {
            continue;
        }
        let Some(e) = rnix::ast::Expr::cast(n) else {
            continue;
        };
        if let Some(p) = extract::literal_path(file, &e)
            && !out.contains(&p)
        {
            out.push(p);
        }
    }
    out
}

/// Read the files a guest `config` names by relative paths, transitively, inside `tree` (the
/// host's configuration directory) and through `fs` only: what the translator needs to apply
/// the guest rules (eth0 → host0, useHostResolvConf) to them. A path outside the tree, a
/// missing or unreadable file is recorded with the reason. Paths that are not `.nix` files or
/// directories (data files: keys, templates) are not Nix code and are left alone.
fn attach_guest_files(fs: &dyn SourceFs, tree: &Path, c: &mut SourceFacts) {
    let Some((Value::Expr(e), _)) = c.options.get_mut("config") else {
        return;
    };
    let mut queue: VecDeque<PathBuf> = relative_nix_paths(&e.origin.file, &e.text).into();
    let mut files: Vec<GuestFile> = Vec::new();
    while let Some(p) = queue.pop_front() {
        if files.len() >= MAX_GUEST_FILES {
            break;
        }
        let path = if fs.is_dir(&p) {
            p.join("default.nix")
        } else {
            p.clone()
        };
        if files.iter().any(|f| f.path == path) {
            continue;
        }
        let outside = || {
            format!(
                "it lies outside the configuration directory {}, which is all the tool reads",
                tree.display()
            )
        };
        let is_nix = path.extension().is_some_and(|x| x == "nix");
        if !is_nix {
            // `imports = [ ../tailscale ];`: a directory (its default.nix) that is not there,
            // or not readable from here; say which, rather than leave it unnamed.
            if path.extension().is_none() && !fs.is_file(&path) {
                let why = if path.starts_with(tree) {
                    "no such file or directory".to_string()
                } else {
                    outside()
                };
                files.push(GuestFile {
                    path,
                    content: Err(why),
                });
            }
            continue;
        }
        let content = if !path.starts_with(tree) {
            Err(outside())
        } else if !fs.is_file(&path) {
            Err("no such file".to_string())
        } else {
            fs.read_to_string(&path).map_err(|e| e.to_string())
        };
        if let Ok(text) = &content {
            queue.extend(relative_nix_paths(&path, text));
        }
        files.push(GuestFile { path, content });
    }
    e.guest_files = files;
}

/// [`read_entries`] with the configuration tree given (a flake's directory).
pub fn read_entries_in(
    fs: &dyn SourceFs,
    entries: &[PathBuf],
    eval: &EvalCommand,
    tree: &Path,
) -> NixSourceResult {
    let mut out = NixSourceResult {
        eval: Some(eval.clone()),
        ..NixSourceResult::default()
    };
    let mut queue: VecDeque<(NixImport, Option<(PathBuf, usize)>)> = VecDeque::new();
    for entry in entries {
        queue.push_back((
            NixImport {
                path: entry.clone(),
                line: 0,
                role: ImportRole::Module,
                condition: None,
            },
            None,
        ));
    }
    let mut seen: HashSet<(PathBuf, ImportRole)> = HashSet::new();
    while let Some((imp, from)) = queue.pop_front() {
        let mut path = imp.path.clone();
        if fs.is_dir(&path) {
            path = path.join("default.nix");
        }
        if !seen.insert((path.clone(), imp.role.clone())) {
            continue;
        }
        if out.files_read.len() >= MAX_FILES {
            out.problems.push(
                Warning::new(
                    &NIX_FILE_UNREADABLE,
                    path.display().to_string(),
                    format!(
                        "stopped after reading {MAX_FILES} files (a symlink loop in the import \
                         paths?); {} and the files after it were not read. {}",
                        path.display(),
                        eval.advice()
                    ),
                )
                .at(path.clone(), None),
            );
            break;
        }
        let named_by = match &from {
            Some((f, l)) => format!(" (imported at {}:{l})", f.display()),
            None => String::new(),
        };
        let text = if !fs.is_file(&path) {
            // Checked before opening: a FIFO must not block the scan, a device is never opened.
            Err(std::io::Error::other(fs.why_not_a_file(&path)))
        } else {
            fs.read_to_string(&path)
        };
        let text = match text {
            Ok(t) => t,
            Err(e) => {
                let mut w = Warning::new(
                    &NIX_FILE_UNREADABLE,
                    path.display().to_string(),
                    format!(
                        "cannot read {}{named_by}: {e}; whether it defines containers cannot be \
                         told, and any it defines are missing from this report. Give the right \
                         file with --config FILE, or use the evaluated values. {}",
                        path.display(),
                        eval.advice()
                    ),
                );
                if let Some((f, l)) = from {
                    w = w.at(f, Some(l));
                }
                out.problems.push(w);
                continue;
            }
        };
        out.files_read.push(path.clone());
        let start = match &imp.role {
            ImportRole::Module => Start::Module,
            ImportRole::Containers => Start::Containers,
            ImportRole::Container(n) => Start::Container(n.clone()),
        };
        let ff = match read_nix_file_as(&path, &text, &start, eval) {
            Ok(ff) => ff,
            Err(w) => {
                out.problems.push(w);
                continue;
            }
        };
        let ff = match &ff.fragment {
            Some(Fragment::Set { line, entries }) => {
                set_fragment(fs, &path, &text, *line, entries, eval).unwrap_or(ff)
            }
            _ => ff,
        };
        out.sites.extend(ff.sites.iter().cloned());
        for mut c in ff.containers {
            attach_guest_files(fs, tree, &mut c);
            if !matches!(imp.role, ImportRole::Container(_)) {
                c.condition = match (imp.condition.clone(), c.condition.take()) {
                    (None, c) => c,
                    (Some(a), None) => Some(a),
                    (Some(a), Some(b)) => extract::combine_conditions(&[a, b]),
                };
            }
            merge_into(&mut out.facts, c);
        }
        for next in ff.imports {
            let condition = match (imp.condition.clone(), next.condition.clone()) {
                (None, c) => c,
                (Some(a), None) => Some(a),
                (Some(a), Some(b)) => extract::combine_conditions(&[a, b]),
            };
            let line = next.line;
            queue.push_back((NixImport { condition, ..next }, Some((path.clone(), line))));
        }
        out.problems.extend(ff.problems);
        out.container_sets.extend(ff.container_sets);
    }
    out
}

/// A file given as a module that is a set of containers: read it as the value of `containers`
/// when every entry is a literal container or an import of a file that is one (checked);
/// `None` keeps the warning. A set of imports none of which is a container is not a set of
/// containers: its warning is dropped.
fn set_fragment(
    fs: &dyn SourceFs,
    path: &Path,
    text: &str,
    line: usize,
    entries: &[(String, usize, SetEntry)],
    eval: &EvalCommand,
) -> Option<FileFacts> {
    let mut verified = true;
    let mut refuted = false;
    let mut literal = false;
    for (_, _, e) in entries {
        match e {
            SetEntry::Literal(_) => literal = true,
            SetEntry::Import(p) => match fragment::file_is_container(fs, p) {
                Some(true) => {}
                Some(false) => {
                    refuted = true;
                    verified = false;
                }
                None => verified = false,
            },
            SetEntry::Nested(_) => {
                literal = true;
                verified = false;
            }
            SetEntry::Other => verified = false,
        }
    }
    if !verified {
        let names: Vec<String> = entries.iter().map(|(n, _, _)| n.clone()).collect();
        if !refuted && let Some(ff) = trial_set_read(path, text, eval, Some(&names)) {
            return Some(ff);
        }
        if refuted && !literal {
            // Not a set of containers: read it as the module it is, without the guess.
            return read_nix_file_classified(path, text, &Start::Module, eval, false).ok();
        }
        return None;
    }
    let mut ff = read_nix_file_as(path, text, &Start::Containers, eval).ok()?;
    for c in &mut ff.containers {
        let name = c.container.clone();
        c.warnings.push(
            Warning::new(
                &NIX_CONTAINERS_SET_READ,
                format!("containers.{}", crate::nixtext::attr_name(&name)),
                format!(
                    "{}:{line}: this file is not a host configuration but the value of \
                     `containers` (a set of container definitions); container {name} was read \
                     from it as if the host said `containers = import {} …;`. Check that the \
                     host really imports it, and remove that import when the migrated \
                     definitions replace it",
                    path.display(),
                    path.display()
                ),
            )
            .at(path.to_path_buf(), Some(line)),
        );
    }
    ff.fragment = None;
    Some(ff)
}

/// The finding for a configuration given with `--config` in which nothing was found and
/// nothing was reported: say so, with what was read, rather than "no containers" in silence.
pub fn no_containers_warning(entry: &Path, r: &NixSourceResult) -> Warning {
    let others = r.files_read.len().saturating_sub(1);
    let read = if others == 0 {
        String::new()
    } else {
        format!(" and the {others} file(s) it imports")
    };
    Warning::new(
        &NIX_NO_CONTAINERS,
        entry.display().to_string(),
        format!(
            "{}{read} define no `containers.<name>` (no container definition, no set of them, no \
             computed `containers` value), so there is nothing to migrate from it. Pass the file that \
             defines the containers with --config, or the host configuration that imports it",
            entry.display()
        ),
    )
    .at(entry.to_path_buf(), None)
}

/// Read a file that is no module as the value of `containers`, and keep the result only when
/// it is a clean set of containers: at least one, each one container-shaped
/// ([`fragment::container_keys`]), nothing left unread, and (when `names` are given) exactly
/// those entries. Each container gets the `nix-containers-set-read` note.
fn trial_set_read(
    path: &Path,
    text: &str,
    eval: &EvalCommand,
    names: Option<&[String]>,
) -> Option<FileFacts> {
    let mut ff = read_nix_file_classified(path, text, &Start::Containers, eval, false).ok()?;
    if ff.containers.is_empty() || !ff.problems.is_empty() {
        return None;
    }
    let shaped = ff.containers.iter().all(|c| {
        let keys: Vec<String> = c.options.keys().cloned().collect();
        fragment::container_keys(&keys).is_some()
    });
    if !shaped {
        return None;
    }
    if let Some(names) = names {
        let mut got: Vec<&String> = ff.containers.iter().map(|c| &c.container).collect();
        let mut want: Vec<&String> = names.iter().collect();
        got.sort();
        want.sort();
        if got != want {
            return None;
        }
    }
    for c in &mut ff.containers {
        let name = c.container.clone();
        c.warnings.push(
            Warning::new(
                &NIX_CONTAINERS_SET_READ,
                format!("containers.{}", crate::nixtext::attr_name(&name)),
                format!(
                    "{}: this file is not a host configuration but the value of `containers` (a set of \
                     container definitions); container {name} was read from it as if the host said \
                     `containers = import {} …;`. Check that the host really imports it, and remove that \
                     import when the migrated definitions replace it",
                    path.display(),
                    path.display()
                ),
            )
            .at(path.to_path_buf(), None),
        );
    }
    ff.fragment = None;
    Some(ff)
}

/// Add one file's facts about a container to what other files said about it.
fn merge_into(all: &mut Vec<SourceFacts>, c: SourceFacts) {
    let Some(existing) = all.iter_mut().find(|e| e.container == c.container) else {
        all.push(c);
        return;
    };
    if existing.condition.is_none() {
        existing.condition = c.condition;
    }
    existing.warnings.extend(c.warnings);
    for (name, (value, origin)) in c.options {
        if let Some(w) = extract::add_option(existing, &name, value, origin) {
            existing.warnings.push(w);
        }
    }
}
