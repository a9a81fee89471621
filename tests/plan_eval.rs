//! Plans and host evaluation (issue 10): whether the host's own Nix was asked (`--no-eval`) and
//! what it answered are part of a plan, so that `--plan-in` cannot silently apply a plan
//! computed with other evaluated values. On the running machine (`--root /`, dry runs only:
//! nothing is written) with the real `nix-instantiate` and a stand-in `<nixpkgs/nixos>` whose
//! answer comes from a data file no host file names, as a channel update would change it.
#![allow(clippy::unwrap_used)]

mod util;

use std::process::{Command, Output, Stdio};
use util::*;

/// The host's configuration: one container, stated literally (address .2).
const HOST_CONFIG: &str = r#"{ config, lib, ... }:
{
  containers.alpha = {
    autoStart = true;
    privateNetwork = true;
    hostAddress = "10.231.9.1";
    localAddress = "10.231.9.2";
    config = { };
  };
}
"#;

/// A `<nixpkgs/nixos>` whose `config.containers` comes from `<stand-in-data>` (address .N).
const STAND_IN: &str = r#"{ configuration ? null }:
let data = builtins.fromJSON (builtins.readFile <stand-in-data>); in
{
  config.containers = builtins.mapAttrs (n: i: {
    autoStart = true;
    privateNetwork = true;
    hostAddress = "10.231.9.1";
    localAddress = "10.231.9.${toString i}";
  }) data;
}
"#;

struct Host {
    dir: tempfile::TempDir,
}

impl Host {
    fn new(address: u32) -> Host {
        let dir = tempfile::tempdir().unwrap();
        let nixos = dir.path().join("nixpkgs/nixos");
        std::fs::create_dir_all(&nixos).unwrap();
        std::fs::write(nixos.join("default.nix"), STAND_IN).unwrap();
        std::fs::write(dir.path().join("configuration.nix"), HOST_CONFIG).unwrap();
        let h = Host { dir };
        h.answer(address);
        h
    }

    /// What the host's Nix will say alpha's address is.
    fn answer(&self, address: u32) {
        std::fs::write(
            self.dir.path().join("data.json"),
            format!("{{ \"alpha\": {address} }}"),
        )
        .unwrap();
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).to_str().unwrap().to_string()
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_nixos-nspawn"))
            .args(["--root", "/", "migrate"])
            .args(args)
            .env(
                "NIX_PATH",
                format!(
                    "nixpkgs={}:stand-in-data={}",
                    self.path("nixpkgs"),
                    self.path("data.json")
                ),
            )
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    fn plan_out(&self, extra: &[&str]) -> (String, serde_json::Value) {
        let plan = self.path("plan.json");
        let conf = self.path("configuration.nix");
        let mut args = vec!["--dry-run", "-q", "--config", &conf, "--plan-out", &plan];
        args.extend_from_slice(extra);
        let out = self.run(&args);
        assert!(matches!(out.status.code(), Some(0 | 3)), "{}", text(&out));
        let doc = serde_json::from_slice(&std::fs::read(&plan).unwrap()).unwrap();
        (plan, doc)
    }
}

fn text(o: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn alpha_nix(plan: &serde_json::Value) -> String {
    plan["files"]["/etc/nixos/nspawn-containers.nix"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn a_plan_made_with_no_eval_is_checked_without_evaluation() {
    if !have_tool("nix-instantiate", "nix-bin") {
        return;
    }
    // The host's Nix would say .7; the plan was made from the source text alone (.2).
    let h = Host::new(7);
    let (plan, doc) = h.plan_out(&["--no-eval"]);
    assert_eq!(doc["options"]["no_eval"], true);
    assert_eq!(doc["inputs"]["host evaluation"], "not used (--no-eval)");
    assert!(alpha_nix(&doc).contains("10.231.9.2/32"), "{doc:#}");
    // Checked as it was made: no evaluation, so it still applies.
    let out = h.run(&["--dry-run", "-q", "--plan-in", &plan]);
    assert!(matches!(out.status.code(), Some(0 | 3)), "{}", text(&out));
    // --no-eval cannot be given beside a plan (the plan says whether to evaluate).
    let out = h.run(&["--dry-run", "--no-eval", "--plan-in", &plan]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
}

#[test]
fn a_plan_whose_evaluation_answers_otherwise_now_is_refused_naming_it() {
    if !have_tool("nix-instantiate", "nix-bin") {
        return;
    }
    let h = Host::new(7);
    let (plan, doc) = h.plan_out(&[]);
    let eval = doc["inputs"]["host evaluation"].as_str().unwrap();
    assert!(eval.starts_with("evaluated, blake3 "), "{eval}");
    assert!(alpha_nix(&doc).contains("10.231.9.7/32"), "{doc:#}");
    let out = h.run(&["--dry-run", "-q", "--plan-in", &plan]);
    assert!(matches!(out.status.code(), Some(0 | 3)), "{}", text(&out));
    // No host file changes; what the host's Nix answers does.
    h.answer(8);
    let out = h.run(&["--dry-run", "-q", "--plan-in", &plan]);
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("host evaluation changed since the plan was made (evaluated, blake3 "),
        "{}",
        text(&out)
    );
    // Not a host file: the configuration is as it was.
    assert!(!err.contains("configuration.nix changed"), "{}", text(&out));
}
