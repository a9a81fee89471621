//! Fuzz the env-file parser and the `.conf` reader: no input may panic, and a few invariants
//! must hold for every input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nixos_nspawn::legacy::conf::{env_name_is_valid, parse_env_file, read_conf};
use nixos_nspawn::legacy::merge::merge;
use nixos_nspawn::legacy::unit::{read_post_start, read_unit};
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let lines = text.matches('\n').count() + 1;
    let env = parse_env_file(&text);
    for e in &env.entries {
        assert!(env_name_is_valid(&e.key), "invalid key kept: {:?}", e.key);
        assert!(
            e.line >= 1 && e.line <= lines,
            "line {} of {}",
            e.line,
            lines
        );
    }
    for p in &env.problems {
        assert!(
            p.line >= 1 && p.line <= lines,
            "problem line {} of {}",
            p.line,
            lines
        );
    }
    let file = Path::new("/etc/nixos-containers/fuzz.conf");
    let facts = read_conf("fuzz", file, &text);
    for w in &facts.warnings {
        assert_eq!(w.file.as_deref(), Some(file));
        assert!(w.line.is_some_and(|l| l >= 1 && l <= lines));
    }
    // The same bytes as a unit and as a start script, then everything merged.
    let mut unit = read_unit(
        "fuzz",
        Path::new("/u"),
        &text,
        Some((Path::new("/s"), &text)),
    );
    read_post_start(&mut unit, Path::new("/p"), &text);
    let _ = merge("fuzz", vec![facts, unit]);
});
