//! Small, exact helpers for writing Nix text: attribute names, string literals, formatting.
//! Used by every renderer so that quoting rules live in one place.

/// Is `s` usable as a bare Nix identifier in an attribute path?
/// (`b-2` and `it's` are; `1x`, `a.b`, `/data`, `${x}`, keywords are not.)
pub fn is_identifier(s: &str) -> bool {
    const KEYWORDS: &[&str] = &[
        "if", "then", "else", "assert", "with", "let", "in", "rec", "inherit", "or",
    ];
    let mut chars = s.chars();
    match chars.next() {
        Some(c) if c.is_ascii_alphabetic() || c == '_' => {}
        _ => return false,
    }
    chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '\'')
        && !KEYWORDS.contains(&s)
}

/// An attribute name: bare when possible, otherwise a quoted string.
pub fn attr_name(s: &str) -> String {
    if is_identifier(s) {
        s.to_string()
    } else {
        string_literal(s)
    }
}

/// A double-quoted Nix string whose value is exactly `s` (no interpolation).
pub fn string_literal(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '$' if chars.peek() == Some(&'{') => out.push_str("\\$"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A list of strings, `[ "a" "b" ]`.
pub fn string_list<S: AsRef<str>>(items: &[S]) -> String {
    if items.is_empty() {
        return "[ ]".to_string();
    }
    let mut out = String::from("[");
    for i in items {
        out.push(' ');
        out.push_str(&string_literal(i.as_ref()));
    }
    out.push_str(" ]");
    out
}

/// Format a complete Nix expression in nixpkgs style (nixfmt, RFC 166).
/// Fails when the text is not a valid expression, which for our own output is a bug.
pub fn format(text: &str) -> Result<String, String> {
    nixfmt_rs::format(text).map_err(|e| format!("{e:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers() {
        for ok in ["web", "b-2", "it's", "_x", "a1"] {
            assert!(is_identifier(ok), "{ok}");
        }
        for bad in ["1x", "a.b", "/data", "", "let", "in", "${x}", "a b"] {
            assert!(!is_identifier(bad), "{bad}");
        }
    }

    #[test]
    fn strings_escape_interpolation_and_quotes() {
        assert_eq!(string_literal(r#"a"b\c${d}$e"#), r#""a\"b\\c\${d}$e""#);
        assert_eq!(attr_name("mail.example"), "\"mail.example\"");
    }

    #[test]
    fn format_produces_nixpkgs_style() {
        let out = format("{a=1;b=[\"x\" \"y\"];}").unwrap();
        assert!(out.contains("a = 1;"), "{out}");
    }
}
