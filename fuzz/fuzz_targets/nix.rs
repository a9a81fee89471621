//! The Nix reader must never panic, whatever the bytes: every file under `imports` of a host
//! is read, and a broken or hostile one must become a warning, not a crash. The same text is
//! also read as a whole configuration and as a flake.nix (through a file system that holds
//! only that file), and what is reported must point inside the input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nixos_nspawn::legacy::model::Value;
use nixos_nspawn::legacy::nix_source::{SourceFs, read_config_tree, read_flake, read_nix_file};
use std::path::Path;

struct OneFile<'a> {
    path: &'a Path,
    text: &'a str,
}

impl SourceFs for OneFile<'_> {
    fn read_to_string(&self, p: &Path) -> std::io::Result<String> {
        if p == self.path {
            Ok(self.text.to_string())
        } else {
            Err(std::io::Error::new(std::io::ErrorKind::NotFound, "absent"))
        }
    }
    fn is_file(&self, p: &Path) -> bool {
        p == self.path
    }
    fn is_dir(&self, _: &Path) -> bool {
        false
    }
}

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
    let conf = Path::new("/etc/nixos/configuration.nix");
    match read_nix_file(conf, text) {
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
    let _ = read_config_tree(&OneFile { path: conf, text }, conf);
    let flake = Path::new("/etc/nixos/flake.nix");
    let _ = read_flake(&OneFile { path: flake, text }, flake, None);
    let _ = read_flake(&OneFile { path: flake, text }, flake, Some("h"));
});
