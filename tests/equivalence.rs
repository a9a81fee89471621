//! The migrator's preview and the NixOS module agree: for every fixture host, the `.nspawn`
//! text and networkd units shown by `migrate --dry-run` are exactly what `nixos/` renders from
//! the Nix file the migration emits (issue: "Equivalence with the migrator's preview").
//!
//! The module is evaluated with nixpkgs' real files (`$NIXPKGS`, or the vendored
//! `../shared/nixpkgs`): the text comes from nixpkgs' nspawn.nix and networkd.nix. Without
//! them the test says so and is skipped; with `NIXOS_NSPAWN_REQUIRE_REAL_TOOLS=1` it fails.
#![allow(clippy::unwrap_used)]

mod util;

use std::process::Command;
use util::*;

/// The module's `Parameters=` names the built system; the preview names a placeholder.
fn normalise_toplevel(nspawn: &str) -> String {
    let mut out = String::new();
    for l in nspawn.split_inclusive('\n') {
        if l.starts_with("Parameters=/nix/store/") && l.trim_end().ends_with("/init") {
            out.push_str("Parameters=@toplevel@/init\n");
        } else {
            out.push_str(l);
        }
    }
    out
}

/// Evaluate one container's emitted module with the NixOS module (render.nix and its stubs).
fn render_module(lib: &str, scenario: &str, name: &str, nix: &str) -> serde_json::Value {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("container.nix"), nix).unwrap();
    // The host as the administrator finishes it: the emitted module imported, networkd on
    // (the report's host-networkd-required point).
    let conf = dir.path().join("host.nix");
    std::fs::write(
        &conf,
        "{ imports = [ ./container.nix ]; networking.useNetworkd = true; }\n",
    )
    .unwrap();
    // The stub nixpkgs has only a few fake packages; name the ones the guest uses.
    let mut fake_pkgs: Vec<String> = nix
        .split("pkgs.")
        .skip(1)
        .filter_map(|rest| {
            let n: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '\''))
                .collect();
            (!n.is_empty()).then_some(n)
        })
        .collect();
    fake_pkgs.sort();
    fake_pkgs.dedup();
    let eval = Command::new("nix-instantiate")
        .args(["--eval", "--read-write-mode", "--strict", "--json"])
        .arg(repo().join("nixos/tests/render.nix"))
        .arg("--arg")
        .arg("configuration")
        .arg(&conf)
        .env("NIXPKGS", lib)
        .env("NIXOS_NSPAWN_FAKE_PKGS", fake_pkgs.join(" "))
        .output()
        .unwrap();
    assert!(
        eval.status.success(),
        "{scenario}/{name}: the module cannot evaluate the emitted Nix:\n{}\n--- emitted\n{nix}",
        String::from_utf8_lossy(&eval.stderr)
    );
    let module: serde_json::Value = serde_json::from_slice(&eval.stdout).unwrap();
    let failed: Vec<&str> = module["assertions"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|a| a.as_str())
        .collect();
    assert!(
        failed.is_empty(),
        "{scenario}/{name}: module assertions fail: {failed:#?}"
    );
    module
}

#[test]
fn preview_equals_what_the_module_renders_for_the_emitted_nix() {
    let Some(lib) = nixpkgs() else { return };
    if !have_tool("nix-instantiate", "nix-bin") {
        return;
    }
    let mut compared = 0;
    let mut dropin_lines = 0;
    // The fixture hosts, and a generated one with ports, read-write binds and `-U`.
    let generated = tempfile::tempdir().unwrap();
    let st = Command::new("python3")
        .arg(repo().join("scripts/gen-legacy-host.py"))
        .arg("16")
        .arg(generated.path())
        .status()
        .unwrap();
    assert!(st.success());
    let mut hosts: Vec<(String, serde_json::Value)> = Vec::new();
    for scenario in ["example", "pre2205", "broken"] {
        let root = TestRoot::fixture(scenario);
        hosts.push((
            scenario.to_string(),
            json(&root.run(&["migrate", "--dry-run", "--json"])),
        ));
    }
    hosts.push((
        "generated".to_string(),
        json(&nixos_nspawn(
            generated.path(),
            &["migrate", "--dry-run", "--json"],
        )),
    ));
    for (scenario, report) in &hosts {
        let scenario = scenario.as_str();
        for c in report["containers"].as_array().unwrap() {
            let name = c["name"].as_str().unwrap();
            let warnings: Vec<&str> = c["warnings"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|w| w["code"].as_str())
                .collect();
            // Imperative containers are rendered by eval-container.nix; blocked ones are not
            // emitted; a container without any guest config is emitted as a `throw` on purpose.
            if c["kind"] != "declarative"
                || c["plan"][0]["step"] == "blocked"
                || c["nix"].as_str().unwrap().contains("system-config = throw")
            {
                assert!(
                    c["kind"] != "declarative"
                        || c["plan"][0]["step"] == "blocked"
                        || warnings.iter().any(|w| matches!(
                            *w,
                            "missing-system-config" | "prebuilt-system-path" | "flake-container"
                        )),
                    "{scenario}/{name}: emitted as a throw without saying why: {warnings:?}"
                );
                continue;
            }
            let module = render_module(&lib, scenario, name, c["nix"].as_str().unwrap());
            let rendered = module["nspawn"][name]
                .as_str()
                .unwrap_or_else(|| panic!("{scenario}/{name}: the module rendered no .nspawn"));
            assert_eq!(
                normalise_toplevel(rendered),
                c["nspawn"].as_str().unwrap(),
                "{scenario}/{name}: preview and module differ"
            );
            // Host-side networkd units the preview shows are the ones the module writes.
            for (key, text) in c["networkd"].as_object().unwrap() {
                if let Some(file) = key.strip_prefix("host: ") {
                    let m = module["network"][file].as_str().unwrap_or_else(|| {
                        panic!("{scenario}/{name}: the module does not write {file}")
                    });
                    assert_eq!(
                        m,
                        text.as_str().unwrap(),
                        "{scenario}/{name}: {file} differs"
                    );
                }
            }
            // Every line of the drop-in the preview shows (raw keys and the ones the options
            // give: Restart=, TimeoutStartSec=) is in the drop-in the module writes.
            if let Some(preview) = c["dropin"].as_str() {
                let m = module["dropins"][name]
                    .as_str()
                    .unwrap_or_else(|| panic!("{scenario}/{name}: the module writes no drop-in"));
                for l in preview
                    .lines()
                    .filter(|l| l.contains('=') && !l.starts_with('#'))
                {
                    assert!(
                        m.lines().any(|x| x == l),
                        "{scenario}/{name}: drop-in line {l:?} not in the module's:\n{m}"
                    );
                    dropin_lines += 1;
                }
            }
            compared += 1;
        }
    }
    assert!(
        dropin_lines >= 20,
        "only {dropin_lines} drop-in lines compared"
    );
    assert!(compared >= 20, "only {compared} containers compared");
}
