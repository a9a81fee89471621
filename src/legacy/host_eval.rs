//! Evaluation on the live host: when `migrate` runs on the machine itself (`--root /`) and Nix
//! is there, the containers' options are evaluated with the host's own Nix — the commands the
//! README gives for `--from-json` ([`EvalCommand`]), run read-only (`--readonly-mode`, no
//! import-from-derivation, so nothing is built) and under a time limit — and the result is
//! merged over what the source text says ([`absorb`]). Values computed by functions
//! (`mapAttrs`, `listToAttrs`, `"${prefix}.2"` from a module argument, …) then need no human.
//!
//! Which Nix is asked is the host's: `<nixpkgs/nixos>` and `<nixos-config>` come from its
//! `NIX_PATH`, a flake from its directory. The guest `config` of a container cannot be printed
//! as JSON (it is a module); it still comes from the source text.
//!
//! The only effect is the command, run through [`crate::runner`]; the rest is pure.

use crate::legacy::eval::read_eval_json;
use crate::legacy::model::{NixExpr, SourceFacts, Value};
use crate::legacy::nix_source::{EvalCommand, NIX_DYNAMIC_CONTAINERS, NIX_UNRESOLVED_VALUE};
use crate::nixtext;
use crate::runner::{Cmd, Runner};
use crate::warnings::{Category, Warning, WarningSpec};
use std::path::Path;
use std::time::Duration;

pub const HOST_EVALUATED: WarningSpec = WarningSpec {
    code: "host-evaluated",
    category: Category::ChangedMeaning,
    summary: "option values were taken from evaluating the host configuration with its own Nix (the source text computes them)",
};
pub const HOST_EVAL_FAILED: WarningSpec = WarningSpec {
    code: "host-eval-failed",
    category: Category::ChangedMeaning,
    summary: "evaluating the host configuration with Nix failed or timed out; values come from the source text only",
};

/// Warning codes owned by this module.
pub const WARNINGS: &[&WarningSpec] = &[&HOST_EVALUATED, &HOST_EVAL_FAILED];

/// How long the evaluation may take before it is given up (a whole NixOS configuration
/// usually evaluates in seconds; a slow disk or a cold cache may take a minute).
pub const TIMEOUT: Duration = Duration::from_secs(180);

/// The options dropped before printing (the README's `removeAttrs` list): `config` and `path`
/// would evaluate (and build) a whole guest system, `pkgs` throws, `nixpkgs` is a path JSON
/// would copy into the store, `specialArgs` may hold functions, `_module` holds functions.
const DROPPED: &str = r#"[ "_module" "config" "nixpkgs" "path" "pkgs" "specialArgs" ]"#;

/// The function applied to `config.containers`: the README's `removeAttrs`, and options whose
/// value throws are left out (so one broken option does not lose every other value).
fn apply_fn() -> String {
    format!(
        "(cs: builtins.mapAttrs (n: c: let o = removeAttrs c {DROPPED}; in \
         builtins.listToAttrs (builtins.filter (x: (builtins.tryEval (builtins.deepSeq x.value true)).success) \
         (map (k: {{ name = k; value = o.${{k}}; }}) (builtins.attrNames o)))) cs)"
    )
}

/// A path as a Nix expression (a literal when it can be one).
fn nix_path(p: &Path) -> String {
    let s = p.display().to_string();
    let plain = s.starts_with('/')
        && s.len() > 1
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'.' | b'-' | b'_' | b'+'));
    if plain {
        s
    } else {
        format!("(/. + {})", nixtext::string_literal(&s))
    }
}

/// The command that prints the evaluated containers as JSON, read-only. `host_name` is used
/// for a flake whose host is not known (the machine's own name, as `nixos-rebuild` does).
pub fn command(eval: &EvalCommand, host_name: Option<&str>) -> Cmd {
    match eval {
        EvalCommand::Nixos { configuration } => {
            let args = match configuration {
                Some(p) => format!("{{ configuration = {}; }}", nix_path(p)),
                None => "{ }".to_string(),
            };
            let expr = format!(
                "{} (import <nixpkgs/nixos> {args}).config.containers",
                apply_fn()
            );
            Cmd::new(
                "nix-instantiate",
                &[
                    "--eval",
                    "--strict",
                    "--json",
                    "--readonly-mode",
                    "--option",
                    "allow-import-from-derivation",
                    "false",
                    "-E",
                    &expr,
                ],
            )
        }
        EvalCommand::Flake { dir, host } => {
            let host = host.as_deref().or(host_name).unwrap_or("default");
            let installable = format!(
                "{}#nixosConfigurations.{}.config.containers",
                dir.display(),
                nixtext::attr_name(host)
            );
            Cmd::new(
                "nix",
                &[
                    "--extra-experimental-features",
                    "nix-command flakes",
                    "eval",
                    "--json",
                    "--no-write-lock-file",
                    "--option",
                    "allow-import-from-derivation",
                    "false",
                    &installable,
                    "--apply",
                    &apply_fn(),
                ],
            )
        }
    }
}

/// What the evaluation gave: the facts (named after the command, kind `EvalJson`), `None`
/// when Nix is not installed (nothing to ask), or why there are none.
pub fn evaluate(
    runner: &Runner,
    eval: &EvalCommand,
    host_name: Option<&str>,
    timeout: Duration,
) -> Result<Option<Vec<SourceFacts>>, Warning> {
    let cmd = command(eval, host_name);
    let shown = match eval {
        EvalCommand::Nixos { .. } => "nix-instantiate --eval --strict --json --readonly-mode",
        EvalCommand::Flake { .. } => "nix eval --json",
    };
    let failed = |why: String| {
        Warning::new(
            &HOST_EVAL_FAILED,
            "containers",
            format!(
                "evaluating the host's containers with `{shown}` failed: {why}. The values below come from \
                 the source text only; to retry by hand:\n  {}\nthen pass the result with --from-json \
                 (or use --no-eval to skip this step)",
                eval.command()
            ),
        )
    };
    let out = match runner.output_timeout(&cmd, timeout) {
        Ok(out) => out,
        Err(e) if e.is_not_found() => return Ok(None),
        Err(e) => return Err(failed(e.to_string())),
    };
    match out.code {
        Some(0) => {}
        Some(c) => {
            // Nix's own first `error:` line says what is wrong; the trace around it is long.
            let err = out.stderr.trim();
            let first = err
                .lines()
                .find(|l| l.trim_start().starts_with("error:"))
                .or_else(|| err.lines().last())
                .unwrap_or("no message");
            return Err(failed(format!("exit code {c}: {}", first.trim())));
        }
        None => {
            return Err(failed(format!(
                "stopped after {} s (time limit) or killed by a signal",
                timeout.as_secs()
            )));
        }
    }
    // Origins name what was evaluated (it is not a file of the host).
    let label = match eval {
        EvalCommand::Nixos {
            configuration: Some(p),
        } => format!("(nix evaluation of {})", p.display()),
        EvalCommand::Nixos {
            configuration: None,
        } => "(nix evaluation of <nixos-config>)".to_string(),
        EvalCommand::Flake { dir, .. } => format!("(nix evaluation of {}#…)", dir.display()),
    };
    read_eval_json(Path::new(&label), &out.stdout)
        .map(Some)
        .map_err(|w| failed(w.message))
}

/// Merge the evaluated facts into what the source said: each container the evaluation knows
/// gets its facts (they outrank the source in the merge), the source's "cannot read this
/// value" warnings for options the evaluation supplied are dropped, and a note lists which
/// values came from evaluation. Generated container sets are then known by name, so the
/// `nix-dynamic-containers` problems are replaced by the containers themselves.
///
/// `sets` are the computed `containers = <expr>` sites of the source text: a container known
/// only from evaluation takes its guest `config` from there, as `(<expr>).<name>.config` with
/// the `let` bindings the expression needs (the same code the legacy module evaluated).
pub fn absorb(
    evaluated: Vec<SourceFacts>,
    sets: &[NixExpr],
    configured: &mut Vec<SourceFacts>,
    problems: &mut Vec<Warning>,
) {
    for mut e in evaluated {
        let name = e.container.clone();
        let quoted = nixtext::attr_name(&name);
        let mut from_eval: Vec<String> = Vec::new();
        for f in configured.iter_mut().filter(|f| f.container == name) {
            // The source's reading of an option the evaluation supplies is superseded.
            f.warnings.retain(|w| {
                w.code != NIX_UNRESOLVED_VALUE.code
                    || !e.options.keys().any(|k| {
                        let path = format!("containers.{quoted}.{}", nixtext::attr_name(k));
                        w.option == path || w.option.starts_with(&format!("{path}."))
                    })
            });
            for (k, (v, _)) in &f.options {
                if e.options.contains_key(k) && crate::legacy::merge::contains_expr(v) {
                    from_eval.push(k.clone());
                }
            }
        }
        let known = configured.iter().any(|f| f.container == name);
        let mut config_note = "the guest `config` still comes from the source text";
        if !known && let [set] = sets {
            let mut config = NixExpr::plain(
                format!("({}).{quoted}.config or {{ }}", set.text),
                set.origin.clone(),
                1,
                Vec::new(),
            );
            config.absorb([set]);
            e.set("config", Value::Expr(config), set.origin.line);
            config_note = "its guest `config` is taken from the expression that builds it in the \
                           source text (the same code, evaluated by the new module)";
        }
        let which = if !known {
            "all its options (the source text builds this container with code)".to_string()
        } else if from_eval.is_empty() {
            "its options, which agree with or complete the source text".to_string()
        } else {
            from_eval.sort();
            from_eval.dedup();
            format!(
                "{} (computed by code in the source text)",
                from_eval
                    .iter()
                    .map(|k| format!("`{k}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        e.warnings.push(Warning::new(
            &HOST_EVALUATED,
            format!("containers.{quoted}"),
            format!(
                "container {name}: {which} were taken from evaluating the host configuration with its own Nix \
                 (read-only); {config_note}"
            ),
        ));
        configured.push(e);
    }
    // Every container the configuration defines is now known by name.
    problems.retain(|w| w.code != NIX_DYNAMIC_CONTAINERS.code);
}
