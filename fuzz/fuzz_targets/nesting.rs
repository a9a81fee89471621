//! Deep nesting of every kind the Nix grammar has, mixed as the fuzzer likes, must never
//! overflow the stack of the Nix reader (issue 7: a 50,000-deep list was exit 134): either the
//! text is read, or it is refused with a warning that points inside it.
//!
//! Each input byte picks one level: its low four bits the kind (list, attribute set,
//! parentheses, let, lambda, select, string interpolation, `+`, unary `-`, `!`, application,
//! `with`, `if`, `assert`, `//`, `++`), its high four bits how many times it repeats (×1000, so
//! a short input reaches tens of thousands of levels).
#![no_main]

use libfuzzer_sys::fuzz_target;
use nixos_nspawn::legacy::nix_source::read_nix_file;
use std::path::Path;

fn build(data: &[u8]) -> String {
    let mut open = String::new();
    let mut close = Vec::<&str>::new();
    for b in data {
        let times = 1 + usize::from(b >> 4) * 1000;
        let (o, c) = match b & 0x0f {
            0 => ("[ ", " ]"),
            1 => ("{ a = ", "; }"),
            2 => ("(", ")"),
            3 => ("let a = 1; in ", ""),
            4 => ("x: ", ""),
            5 => ("a.", "b"),
            6 => ("\"${", "}\""),
            7 => ("1 + ", ""),
            8 => ("-", ""),
            9 => ("!", ""),
            10 => ("f ", ""),
            11 => ("with a; ", ""),
            12 => ("if a then 1 else ", ""),
            13 => ("assert a; ", ""),
            14 => ("{ } // ", ""),
            _ => ("[ ] ++ ", ""),
        };
        for _ in 0..times {
            open.push_str(o);
            close.push(c);
        }
    }
    let mut text = String::from("{ containers.web.config = { ... }: { x = ");
    text.push_str(&open);
    text.push('1');
    for c in close.iter().rev() {
        text.push_str(c);
    }
    text.push_str("; }; }\n");
    text
}

fuzz_target!(|data: &[u8]| {
    if data.len() > 64 {
        return;
    }
    let text = build(data);
    let _ = nixos_nspawn::nixtext::check_nesting(&text);
    if let Err(w) = read_nix_file(Path::new("/etc/nixos/configuration.nix"), &text) {
        assert!(w.line.unwrap_or(1) >= 1);
    }
});
