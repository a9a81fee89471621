//! `read_nix_file` must never panic, whatever the bytes: every file under `imports` of a host
//! is read, and a broken or hostile one must become a warning, not a crash. Also checks that
//! what it reports points inside the input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nixos_nspawn::legacy::model::Value;
use nixos_nspawn::legacy::nix_source::read_nix_file;
use std::path::Path;

fn check(v: &Value, lines: usize) {
    match v {
        Value::Expr(e) => {
            let l = e.origin.line.unwrap_or(1);
            assert!(l >= 1 && l <= lines, "line {l} of {lines}");
            assert!(e.column >= 1);
        }
        Value::List(items) => items.iter().for_each(|i| check(i, lines)),
        Value::Attrs(m) => m.values().for_each(|i| check(i, lines)),
        _ => {}
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let lines = text.split('\n').count();
    match read_nix_file(Path::new("/etc/nixos/configuration.nix"), text) {
        Ok(ff) => {
            for c in &ff.containers {
                for (v, origin) in c.options.values() {
                    let l = origin.line.unwrap_or(1);
                    assert!(l >= 1 && l <= lines, "line {l} of {lines}");
                    check(v, lines);
                }
            }
        }
        Err(w) => {
            let l = w.line.unwrap_or(1);
            assert!(l >= 1 && l <= lines, "parse error line {l} of {lines}");
        }
    }
});
