//! What a container is built from, and the two Nix steps: evaluate (render the files; cheap,
//! checks every option) and build (the system, into the store).
//!
//! Three sources, as users of the existing tools ask for:
//! - a container file (`create NAME FILE.nix`, `update --config FILE`);
//! - a flake output (`--flake REF#attr`): its value is what a container file holds;
//! - a prebuilt system (`--profile PATH`, a store path): nothing is built, and the options
//!   (network, binds, …) come from an optional container file, or are the defaults.

use super::Ctx;
use super::activation::{DROPIN, Files};
use crate::error::Error;
use crate::nixtext::string_literal;
use crate::runner::Cmd;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Source {
    File {
        path: PathBuf,
    },
    Flake {
        reference: String,
        attr: String,
    },
    Profile {
        path: PathBuf,
        file: Option<PathBuf>,
    },
}

impl Source {
    pub fn describe(&self) -> String {
        match self {
            Source::File { path } => path.display().to_string(),
            Source::Flake { reference, attr } => format!("{reference}#{attr}"),
            Source::Profile { path, file: None } => format!("prebuilt {}", path.display()),
            Source::Profile {
                path,
                file: Some(f),
            } => format!(
                "prebuilt {} with options from {}",
                path.display(),
                f.display()
            ),
        }
    }

    /// Build a source from the command line. Paths are ordinary paths, made absolute (Nix
    /// resolves relative imports from the file's own directory either way).
    pub fn from_args(
        name: &str,
        file: Option<&Path>,
        flake: Option<&str>,
        profile: Option<&Path>,
    ) -> Result<Source, Error> {
        let abs = |p: &Path, flag: &str| -> Result<PathBuf, Error> {
            let c = std::fs::canonicalize(p).map_err(|e| {
                Error::Usage(format!(
                    "{flag}{}: {e}\n\nPaths given on the command line are ordinary paths, not paths \
                     inside --root.",
                    p.display()
                ))
            })?;
            if !c.is_file() {
                return Err(Error::Usage(format!(
                    "{flag}{}: not a file (give the container's .nix file)",
                    p.display()
                )));
            }
            Ok(c)
        };
        match (file, flake, profile) {
            (file, None, Some(p)) => {
                let file = file.map(|f| abs(f, "")).transpose()?;
                Ok(Source::Profile {
                    path: p.to_path_buf(),
                    file,
                })
            }
            (None, Some(f), None) => {
                let (reference, attr) = match f.split_once('#') {
                    Some((r, a)) if !a.is_empty() => (r.to_string(), a.to_string()),
                    Some((r, _)) => (r.to_string(), format!("nixosNspawnContainers.{name}")),
                    None => (f.to_string(), format!("nixosNspawnContainers.{name}")),
                };
                if reference.is_empty() {
                    return Err(Error::Usage(format!(
                        "--flake {f}: no flake reference before `#` (e.g. --flake .#{name} or \
                         --flake github:me/hosts#containers.{name})"
                    )));
                }
                // A local flake path is made absolute: Nix would take it relative to nothing.
                let reference = if reference.starts_with('.') || reference.starts_with('/') {
                    std::fs::canonicalize(&reference)
                        .map_err(|e| Error::Usage(format!("--flake {f}: {reference}: {e}")))?
                        .display()
                        .to_string()
                } else {
                    reference
                };
                Ok(Source::Flake { reference, attr })
            }
            (Some(p), None, None) => Ok(Source::File {
                path: abs(p, "")?,
            }),
            (None, None, None) => Err(Error::Usage(
                "give the container file (FILE.nix), --flake REF#attr or --profile PATH".to_string(),
            )),
            _ => Err(Error::Usage(
                "give only one of FILE.nix and --flake (--profile may come with FILE.nix for the options)"
                    .to_string(),
            )),
        }
    }
}

/// The files eval-container.nix rendered, and what they describe.
#[derive(Clone, Debug)]
pub struct Rendered {
    /// By role: `NAME.nspawn`, `*.network`, [`DROPIN`]; `data.json` is kept apart.
    pub files: Files,
    pub data: serde_json::Value,
    pub data_json: String,
    /// The system `Parameters=` points at.
    pub toplevel: String,
}

impl Rendered {
    pub fn strategy(&self) -> String {
        self.data["activation"]["strategy"]
            .as_str()
            .unwrap_or("dynamic")
            .to_string()
    }

    pub fn auto_start(&self) -> bool {
        self.data["autoStart"].as_bool().unwrap_or(false)
    }

    pub fn zone(&self) -> Option<String> {
        self.data["network"]["zone"].as_str().map(str::to_string)
    }

    pub fn reload_script(&self) -> Option<String> {
        self.data["activation"]["reloadScript"]
            .as_str()
            .map(str::to_string)
    }

    /// Static addresses (without prefix) this container puts on the host and in itself.
    pub fn static_addresses(&self) -> Vec<String> {
        static_addresses(&self.data)
    }
}

pub fn static_addresses(data: &serde_json::Value) -> Vec<String> {
    let mut out = Vec::new();
    for fam in ["v4", "v6"] {
        for side in ["hostAddresses", "containerPool"] {
            if let Some(list) = data["network"][fam]["static"][side].as_array() {
                for a in list.iter().filter_map(|v| v.as_str()) {
                    out.push(crate::render::networkd::strip_prefix(a).to_string());
                }
            }
        }
    }
    out
}

/// `--store ROOT` for an offline root (as nixos-install does), nothing for the live one.
fn store_args(ctx: &Ctx<'_>) -> Vec<String> {
    if ctx.live() {
        Vec::new()
    } else {
        vec!["--store".to_string(), ctx.host.root().display().to_string()]
    }
}

/// A Nix expression that applies eval-container.nix to a flake output.
fn flake_expr(ctx: &Ctx<'_>, name: &str, reference: &str, attr: &str) -> String {
    let path: String = attr
        .split('.')
        .map(|a| format!(".{}", string_literal(a)))
        .collect();
    format!(
        "import {} {{ container = (builtins.getFlake {}).outputs{path}; name = {}; }}",
        string_literal(&ctx.eval.display().to_string()),
        string_literal(reference),
        string_literal(name)
    )
}

fn file_args(ctx: &Ctx<'_>, name: &str, file: Option<&Path>) -> Vec<String> {
    let mut a = vec![ctx.eval.display().to_string()];
    match file {
        Some(f) => a.extend(["--arg".into(), "file".into(), f.display().to_string()]),
        None => a.extend(["--arg".into(), "container".into(), "{ }".into()]),
    }
    a.extend(["--argstr".into(), "name".into(), name.to_string()]);
    a
}

fn cmd(program: &str, args: Vec<String>) -> Cmd {
    Cmd {
        program: program.to_string(),
        args,
    }
}

/// Check the container file's syntax before anything else (real `nix-instantiate --parse`).
pub fn check_syntax(ctx: &Ctx<'_>, source: &Source) -> Result<(), Error> {
    let file = match source {
        Source::File { path } => path,
        Source::Profile { file: Some(f), .. } => f,
        _ => return Ok(()),
    };
    if !file.is_file() {
        return Err(Error::Usage(format!(
            "{}: no such file (the container file to build from)\n\nGive the file with --config \
             FILE (update) or as FILE.nix (create); nothing was built or written.",
            file.display()
        )));
    }
    ctx.runner
        .run(&cmd(
            "nix-instantiate",
            vec!["--parse".into(), file.display().to_string()],
        ))
        .map(|_| ())
        .map_err(|e| {
            Error::Usage(format!(
                "{}: not a valid Nix file: {e}\n\nFix the file; nothing was built or written.",
                file.display()
            ))
        })
}

/// Evaluate: render every file of the container (no build). Fails on any option error.
pub fn evaluate(ctx: &Ctx<'_>, name: &str, source: &Source) -> Result<Rendered, Error> {
    let c = match source {
        Source::File { path } => {
            let mut a = vec!["--eval".into(), "--strict".into(), "--json".into()];
            a.extend(store_args(ctx));
            a.extend(file_args(ctx, name, Some(path)));
            a.extend(["-A".into(), "files".into()]);
            cmd("nix-instantiate", a)
        }
        Source::Profile { path, file } => {
            let mut a = vec!["--eval".into(), "--strict".into(), "--json".into()];
            a.extend(store_args(ctx));
            a.extend(file_args(ctx, name, file.as_deref()));
            a.extend([
                "--arg".into(),
                "prebuilt".into(),
                string_literal(&path.display().to_string()),
                "-A".into(),
                "files".into(),
            ]);
            cmd("nix-instantiate", a)
        }
        Source::Flake { reference, attr } => {
            let mut a = vec![
                "eval".into(),
                "--extra-experimental-features".into(),
                "nix-command flakes".into(),
                "--json".into(),
                "--impure".into(),
            ];
            a.extend(store_args(ctx));
            a.extend([
                "--expr".into(),
                format!("({}).files", flake_expr(ctx, name, reference, attr)),
            ]);
            cmd("nix", a)
        }
    };
    let out = ctx.runner.run(&c).map_err(|e| {
        Error::Other(format!(
            "container {name}: evaluating {} failed: {e}\n\nNothing was built or written; fix the \
             container file (see nixos/README.md for its options).",
            source.describe()
        ))
    })?;
    let mut files: Files = serde_json::from_str(out.stdout.trim()).map_err(|e| {
        Error::Other(format!(
            "container {name}: `{}` printed no file set ({e}); is {} the eval-container.nix of this \
             nixos-nspawn?",
            c.display(),
            ctx.eval.display()
        ))
    })?;
    let data_json = files.remove("data.json").ok_or_else(|| {
        Error::Other(format!(
            "container {name}: {} rendered no data.json",
            ctx.eval.display()
        ))
    })?;
    let data: serde_json::Value = serde_json::from_str(&data_json)
        .map_err(|e| Error::Other(format!("container {name}: data.json: {e}")))?;
    let toplevel = data["toplevel"].as_str().unwrap_or_default().to_string();
    // An empty drop-in means none is needed.
    if files.get(DROPIN).is_some_and(|d| d.trim().is_empty()) {
        files.remove(DROPIN);
    }
    for key in files.keys() {
        // Keys become file names in fixed directories: nothing that could leave them.
        if key.contains('/') || key.starts_with('.') || key.is_empty() {
            return Err(Error::Other(format!(
                "container {name}: eval-container.nix rendered a file named {key:?}, refused"
            )));
        }
    }
    Ok(Rendered {
        files,
        data,
        data_json,
        toplevel,
    })
}

/// Build the system (nothing for a prebuilt one); returns its store path.
pub fn build(ctx: &Ctx<'_>, name: &str, source: &Source) -> Result<String, Error> {
    let c = match source {
        Source::File { path } => {
            let mut a = file_args(ctx, name, Some(path));
            a.extend(store_args(ctx));
            a.extend(["-A".into(), "toplevel".into(), "--no-out-link".into()]);
            cmd("nix-build", a)
        }
        Source::Flake { reference, attr } => {
            let mut a = vec![
                "build".into(),
                "--extra-experimental-features".into(),
                "nix-command flakes".into(),
                "--impure".into(),
                "--no-link".into(),
                "--print-out-paths".into(),
            ];
            a.extend(store_args(ctx));
            a.extend([
                "--expr".into(),
                format!("({}).toplevel", flake_expr(ctx, name, reference, attr)),
            ]);
            cmd("nix", a)
        }
        Source::Profile { path, .. } => return Ok(path.display().to_string()),
    };
    let out = ctx.runner.run(&c).map_err(|e| {
        Error::Other(format!(
            "container {name}: building {} failed: {e}\n\nNothing was written.",
            source.describe()
        ))
    })?;
    out.stdout
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('/'))
        .map(str::to_string)
        .ok_or_else(|| {
            Error::Other(format!(
                "container {name}: `{}` printed no store path",
                c.display()
            ))
        })
}

/// Point the container's profile at `system` (a new generation): `nix-env -p … --set`.
pub fn set_profile(ctx: &Ctx<'_>, profile_real: &Path, system: &str) -> Result<(), Error> {
    let mut a = store_args(ctx);
    a.extend([
        "-p".into(),
        profile_real.display().to_string(),
        "--set".into(),
        system.to_string(),
    ]);
    ctx.run(&cmd("nix-env", a)).map(|_| ())
}

/// Switch the profile to an existing generation: `nix-env -p … --switch-generation N`.
pub fn switch_generation(ctx: &Ctx<'_>, profile_real: &Path, generation: u64) -> Result<(), Error> {
    let mut a = store_args(ctx);
    a.extend([
        "-p".into(),
        profile_real.display().to_string(),
        "--switch-generation".into(),
        generation.to_string(),
    ]);
    ctx.run(&cmd("nix-env", a)).map(|_| ())
}
