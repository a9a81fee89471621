//! Reader of evaluated containers: the JSON object `name → options` that
//! [`crate::legacy::nix_source::EVAL_COMMAND_NIXOS`] / `EVAL_COMMAND_FLAKE` print, given with
//! `--from-json FILE`. Pure: text in, facts out.
//!
//! Both shapes are accepted: only the options a user set, and (what `nix eval` really prints)
//! every option with its legacy default. Values are data; there are no verbatim expressions
//! here, so a guest `config` must still come from the Nix source.

use crate::legacy::model::{SourceFacts, SourceKind, Value};
use crate::legacy::nix_source::{EVAL_COMMAND_FLAKE, EVAL_COMMAND_NIXOS};
use crate::warnings::{Category, Warning, WarningSpec};
use std::collections::BTreeMap;
use std::path::Path;

pub const EVAL_JSON_INVALID: WarningSpec = WarningSpec {
    code: "eval-json-invalid",
    category: Category::NeedsHuman,
    summary: "the --from-json file is not the JSON object of containers that `nix eval` prints",
};
pub const EVAL_JSON_UNSUPPORTED_VALUE: WarningSpec = WarningSpec {
    code: "eval-json-unsupported-value",
    category: Category::NeedsHuman,
    summary: "a value in the --from-json file has a type no container option takes (a float)",
};

/// Warning codes owned by this reader.
pub const WARNINGS: &[&WarningSpec] = &[&EVAL_JSON_INVALID, &EVAL_JSON_UNSUPPORTED_VALUE];

fn invalid(file: &Path, line: Option<usize>, what: String) -> Warning {
    Warning::new(
        &EVAL_JSON_INVALID,
        file.display().to_string(),
        format!(
            "{}: {what}. The file must be what one of these commands writes:\n  {}\n  {}",
            match line {
                Some(l) => format!("{}:{l}", file.display()),
                None => file.display().to_string(),
            },
            EVAL_COMMAND_NIXOS,
            EVAL_COMMAND_FLAKE
        ),
    )
    .at(file.to_path_buf(), line)
}

/// `file` is the JSON file (named in origins and warnings), `text` its content.
pub fn read_eval_json(file: &Path, text: &str) -> Result<Vec<SourceFacts>, Warning> {
    // serde_json stops at 128 nested arrays/objects with an error (never a stack overflow);
    // `convert` below recurses no deeper than that.
    let json: serde_json::Value = serde_json::from_str(text).map_err(|e| {
        let what = if e.to_string().starts_with("recursion limit exceeded") {
            format!(
                "nested more than 128 arrays/objects deep (at column {}); no container option nests \
                 that deeply, so the file is not what `nix eval` of the containers writes",
                e.column()
            )
        } else {
            format!("not valid JSON ({e})")
        };
        invalid(file, Some(e.line()).filter(|l| *l > 0), what)
    })?;
    let serde_json::Value::Object(map) = json else {
        return Err(invalid(
            file,
            None,
            format!(
                "expected a JSON object of containers (name → options), found {}",
                kind(&json)
            ),
        ));
    };
    let mut out = Vec::new();
    for (name, options) in map {
        let serde_json::Value::Object(options) = options else {
            return Err(invalid(
                file,
                None,
                format!(
                    "the value of container \"{name}\" should be an object of its options, \
                     found {}",
                    kind(&options)
                ),
            ));
        };
        let mut facts = SourceFacts::new(name.clone(), SourceKind::EvalJson, file);
        for (option, v) in options {
            let mut floats = Vec::new();
            let value = convert(&v, &mut floats, &option);
            for at in floats {
                facts.warnings.push(
                    Warning::new(
                        &EVAL_JSON_UNSUPPORTED_VALUE,
                        format!("containers.{}.{at}", crate::nixtext::attr_name(&name)),
                        format!(
                            "{}: containers.{name}.{at} is a fractional number, which no \
                             container option takes; it was kept as text. Check the value",
                            file.display()
                        ),
                    )
                    .at(file.to_path_buf(), None),
                );
            }
            facts.set(&option, value, None);
        }
        out.push(facts);
    }
    Ok(out)
}

fn kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "a list",
        serde_json::Value::Object(_) => "an object",
    }
}

fn convert(v: &serde_json::Value, floats: &mut Vec<String>, at: &str) -> Value {
    match v {
        serde_json::Value::Null => Value::Null,
        serde_json::Value::Bool(b) => Value::Bool(*b),
        serde_json::Value::Number(n) => match n.as_i64() {
            Some(i) => Value::Int(i),
            None => {
                floats.push(at.to_string());
                Value::Str(n.to_string())
            }
        },
        serde_json::Value::String(s) => Value::Str(s.clone()),
        serde_json::Value::Array(a) => Value::List(
            a.iter()
                .enumerate()
                .map(|(i, x)| convert(x, floats, &format!("{at}[{i}]")))
                .collect(),
        ),
        serde_json::Value::Object(m) => Value::Attrs(
            m.iter()
                .map(|(k, x)| {
                    let path = format!("{at}.{}", crate::nixtext::attr_name(k));
                    (k.clone(), convert(x, floats, &path))
                })
                .collect::<BTreeMap<_, _>>(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::legacy::nix_source::EVAL_APPLY;
    use std::path::PathBuf;
    use std::process::Command;

    fn f() -> PathBuf {
        PathBuf::from("/root/containers.json")
    }

    #[test]
    fn user_shape_converts_every_json_type() {
        let text = r#"{ "web": { "autoStart": true, "hostAddress": "10.0.0.1",
            "forwardPorts": [ { "hostPort": 8080, "containerPort": 80, "protocol": "tcp" } ],
            "bindMounts": { "/data": { "hostPath": "/srv/data", "isReadOnly": false } },
            "hostBridge": null } }"#;
        let facts = read_eval_json(&f(), text).unwrap();
        assert_eq!(facts.len(), 1);
        let web = &facts[0];
        assert_eq!(web.container, "web");
        assert_eq!(web.kind, SourceKind::EvalJson);
        assert_eq!(web.options["autoStart"].0, Value::Bool(true));
        assert_eq!(web.options["hostBridge"].0, Value::Null);
        assert_eq!(web.options["autoStart"].1.file, f());
        assert_eq!(web.options["autoStart"].1.line, None);
        let Value::List(ports) = &web.options["forwardPorts"].0 else {
            panic!()
        };
        let Value::Attrs(p) = &ports[0] else { panic!() };
        assert_eq!(p["hostPort"], Value::Int(8080));
        let Value::Attrs(b) = &web.options["bindMounts"].0 else {
            panic!()
        };
        let Value::Attrs(d) = &b["/data"] else {
            panic!()
        };
        assert_eq!(d["isReadOnly"], Value::Bool(false));
        assert!(web.warnings.is_empty());
    }

    #[test]
    fn rejects_what_is_not_an_object_of_objects() {
        for (text, needle) in [
            ("[1, 2]", "found a list"),
            ("\"web\"", "found a string"),
            ("{ \"web\": 3 }", "container \"web\" should be an object"),
            ("{ \"web\": ", "not valid JSON"),
            ("", "not valid JSON"),
        ] {
            let w = read_eval_json(&f(), text).unwrap_err();
            assert_eq!(w.code, "eval-json-invalid");
            assert!(w.message.contains(needle), "{text}: {}", w.message);
            assert!(
                w.message.contains("nix-instantiate --eval"),
                "{}",
                w.message
            );
        }
    }

    #[test]
    fn syntax_errors_name_the_line() {
        let w = read_eval_json(&f(), "{\n  \"a\": {},\n  oops\n}").unwrap_err();
        assert_eq!(w.line, Some(3));
    }

    #[test]
    fn floats_are_kept_as_text_with_a_warning() {
        let facts = read_eval_json(&f(), r#"{ "a": { "x": 1.5 } }"#).unwrap();
        assert_eq!(facts[0].options["x"].0, Value::Str("1.5".into()));
        assert_eq!(facts[0].warnings[0].code, "eval-json-unsupported-value");
    }

    /// The apply expression, run by the real `nix-instantiate` over a stand-in for
    /// `config.containers` that has every hazard of the real one (a guest `config` function, a
    /// `pkgs` that throws, a path, `_module` with functions, `specialArgs` holding a function),
    /// and with the full option set with legacy defaults: the output must be JSON this reader
    /// accepts.
    #[test]
    fn real_nix_output_of_the_apply_expression_reads_back() {
        if Command::new("nix-instantiate")
            .arg("--version")
            .output()
            .is_err()
        {
            assert!(
                std::env::var_os("NIXOS_NSPAWN_REQUIRE_REAL_TOOLS").is_none(),
                "nix-instantiate is required"
            );
            eprintln!("skipped: nix-instantiate not installed");
            return;
        }
        let containers = r#"{
          web = {
            _module = { args = { name = "web"; extendModules = x: x; }; };
            config = { pkgs, ... }: { services.nginx.enable = true; };
            pkgs = throw "containers.web.pkgs no longer has any effect";
            nixpkgs = ./.;
            path = throw "would evaluate the whole guest system";
            specialArgs = { f = x: x; };
            autoStart = true; privateNetwork = true; hostAddress = "10.0.0.1";
            localAddress = "10.0.0.2/24"; hostBridge = null; ephemeral = false;
            bindMounts = { "/data" = { mountPoint = "/data"; hostPath = "/srv"; isReadOnly = true; }; };
            forwardPorts = [ { protocol = "tcp"; hostPort = 80; containerPort = null; } ];
            extraVeths = { }; interfaces = [ ]; timeoutStartSec = "1min";
            privateUsers = "no"; flake = null;
          };
        }"#;
        let expr = format!("{EVAL_APPLY} ({containers})");
        let out = Command::new("nix-instantiate")
            .args(["--eval", "--strict", "--json", "-E", &expr])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let json = String::from_utf8(out.stdout).unwrap();
        let facts = read_eval_json(&f(), &json).unwrap();
        let web = &facts[0];
        for gone in [
            "_module",
            "config",
            "pkgs",
            "nixpkgs",
            "path",
            "specialArgs",
        ] {
            assert!(!web.options.contains_key(gone), "{gone} in {json}");
        }
        assert_eq!(
            web.options["localAddress"].0,
            Value::Str("10.0.0.2/24".into())
        );
        assert_eq!(web.options["hostBridge"].0, Value::Null);
        assert_eq!(web.options.len(), 13, "{json}");
    }
}
