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

/// How deep a Nix text may nest before we refuse to parse it. rnix (and nixfmt, and our own
/// walkers) recurse per level; rnix counts only some levels (`parse_expr`, capped at 512) and
/// overflows the stack on 50,000 nested lists or a 50,000-term operator chain (exit 134). Real
/// configurations stay far below this (nixpkgs itself nests a few dozen levels).
pub const MAX_NESTING: usize = 400;

/// Text nested deeper than [`MAX_NESTING`]: where (byte offset) and a sentence saying what.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TooDeep {
    pub offset: usize,
    pub message: String,
}

/// Check, with rnix's tokenizer (iterative, no recursion), that `text` nests at most
/// [`MAX_NESTING`] levels, counting what makes a recursive-descent parser recurse: brackets
/// (`(`, `[`, `{`, `${`) and, within one bracket level, chains of operators and keywords
/// (`a + b + …`, `- - x`, `x: y: …`, `a.b.c…`, `if … else if …`) up to the next `;` or `,`.
/// Run it before every parse of text that comes from the user.
pub fn check_nesting(text: &str) -> Result<(), TooDeep> {
    use rnix::SyntaxKind as K;
    /// One open bracket, or one `let` (whose body runs to the `;`/bracket that ends it).
    struct Level {
        /// Operators and keywords chained at this level since the last `;`/`,`.
        chain: usize,
        kind: LevelKind,
        /// Open `with x;` / `assert x;`: the chain when each started. Their `;` does not end
        /// the chain (the body follows) but ends the operand: the chain goes back to one level
        /// more than at the keyword.
        pending_with: Vec<usize>,
    }
    #[derive(PartialEq)]
    enum LevelKind {
        Bracket,
        /// `[ … ]`: juxtaposed items are list elements, not function application.
        List,
        LetBindings,
        LetBody,
    }
    let bracket = || Level {
        chain: 0,
        kind: LevelKind::Bracket,
        pending_with: Vec::new(),
    };
    let mut levels: Vec<Level> = vec![bracket()];
    let mut depth = 1usize;
    let mut offset = 0usize;
    // Function application (`f a b …`) nests too: an atom right after another one, outside a
    // list and an `inherit` name list, is one more level.
    let mut prev_atom_end = false;
    let mut in_inherit = false;
    for (kind, tok) in rnix::tokenize(text) {
        let here = offset;
        offset += tok.len();
        if matches!(kind, K::TOKEN_WHITESPACE | K::TOKEN_COMMENT) {
            continue;
        }
        let atom_start = matches!(
            kind,
            K::TOKEN_IDENT
                | K::TOKEN_INTEGER
                | K::TOKEN_FLOAT
                | K::TOKEN_PATH_ABS
                | K::TOKEN_PATH_REL
                | K::TOKEN_PATH_HOME
                | K::TOKEN_PATH_SEARCH
                | K::TOKEN_URI
                | K::TOKEN_STRING_START
                | K::TOKEN_L_PAREN
                | K::TOKEN_L_BRACK
                | K::TOKEN_L_BRACE
                | K::TOKEN_REC
        );
        if atom_start
            && prev_atom_end
            && !in_inherit
            && let Some(l) = levels.last_mut()
            && l.kind != LevelKind::List
        {
            l.chain += 1;
            depth += 1;
        }
        prev_atom_end = matches!(
            kind,
            K::TOKEN_IDENT
                | K::TOKEN_INTEGER
                | K::TOKEN_FLOAT
                | K::TOKEN_PATH_ABS
                | K::TOKEN_PATH_REL
                | K::TOKEN_PATH_HOME
                | K::TOKEN_PATH_SEARCH
                | K::TOKEN_URI
                | K::TOKEN_STRING_END
                | K::TOKEN_R_PAREN
                | K::TOKEN_R_BRACK
                | K::TOKEN_R_BRACE
        );
        match kind {
            K::TOKEN_INHERIT => in_inherit = true,
            K::TOKEN_SEMICOLON => in_inherit = false,
            _ => {}
        }
        match kind {
            K::TOKEN_L_BRACK => {
                levels.push(Level {
                    chain: 0,
                    kind: LevelKind::List,
                    pending_with: Vec::new(),
                });
                depth += 1;
            }
            K::TOKEN_L_PAREN | K::TOKEN_L_BRACE | K::TOKEN_INTERPOL_START => {
                levels.push(bracket());
                depth += 1;
            }
            K::TOKEN_R_PAREN | K::TOKEN_R_BRACK | K::TOKEN_R_BRACE | K::TOKEN_INTERPOL_END => {
                // Close the lets inside this bracket, then the bracket (never the outermost).
                while levels.len() > 1 {
                    let Some(l) = levels.pop() else { break };
                    depth -= l.chain + 1;
                    if matches!(l.kind, LevelKind::Bracket | LevelKind::List) {
                        break;
                    }
                }
            }
            K::TOKEN_LET => {
                levels.push(Level {
                    chain: 0,
                    kind: LevelKind::LetBindings,
                    pending_with: Vec::new(),
                });
                depth += 1;
            }
            K::TOKEN_IN
                if levels
                    .last()
                    .is_some_and(|l| l.kind == LevelKind::LetBindings) =>
            {
                if let Some(l) = levels.last_mut() {
                    l.kind = LevelKind::LetBody;
                }
            }
            K::TOKEN_SEMICOLON | K::TOKEN_COMMA => {
                // A `;` after a let body ends that let.
                while levels.len() > 1
                    && levels.last().is_some_and(|l| l.kind == LevelKind::LetBody)
                {
                    if let Some(l) = levels.pop() {
                        depth -= l.chain + 1;
                    }
                }
                if let Some(l) = levels.last_mut() {
                    let keep = if kind == K::TOKEN_SEMICOLON {
                        l.pending_with.pop().map(|start| start + 1)
                    } else {
                        None
                    };
                    let keep = keep.unwrap_or(0).min(l.chain);
                    depth -= l.chain - keep;
                    l.chain = keep;
                }
            }
            K::TOKEN_WITH | K::TOKEN_ASSERT => {
                if let Some(l) = levels.last_mut() {
                    l.pending_with.push(l.chain);
                    l.chain += 1;
                    depth += 1;
                }
            }
            K::TOKEN_ADD
            | K::TOKEN_SUB
            | K::TOKEN_MUL
            | K::TOKEN_DIV
            | K::TOKEN_CONCAT
            | K::TOKEN_UPDATE
            | K::TOKEN_AND_AND
            | K::TOKEN_OR_OR
            | K::TOKEN_IMPLICATION
            | K::TOKEN_EQUAL
            | K::TOKEN_NOT_EQUAL
            | K::TOKEN_LESS
            | K::TOKEN_LESS_OR_EQ
            | K::TOKEN_MORE
            | K::TOKEN_MORE_OR_EQ
            | K::TOKEN_INVERT
            | K::TOKEN_QUESTION
            | K::TOKEN_DOT
            | K::TOKEN_OR
            | K::TOKEN_PIPE_LEFT
            | K::TOKEN_PIPE_RIGHT
            | K::TOKEN_COLON
            | K::TOKEN_AT
            // One level per `if` (its `then`/`else` do not add one: an `else if` chain of a
            // hundred branches is still readable).
            | K::TOKEN_IF => {
                if let Some(l) = levels.last_mut() {
                    l.chain += 1;
                    depth += 1;
                }
            }
            _ => {}
        }
        if depth > MAX_NESTING {
            return Err(TooDeep {
                offset: here,
                message: format!(
                    "the expression nests more than {MAX_NESTING} levels deep here (brackets, `let`/`with` \
                     chains, or a chain of operators such as `a + b + …` or `x: y: …`); nixos-nspawn does not \
                     read Nix nested that deeply. Split the expression (let bindings) or check that the file \
                     is what you meant"
                ),
            });
        }
    }
    Ok(())
}

/// 1-based line and column of byte `offset` in `text`.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
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
    fn nesting_is_bounded_for_every_kind() {
        let n = 50_000;
        let deep: Vec<(&str, String)> = vec![
            ("list", format!("{}1{}", "[".repeat(n), "]".repeat(n))),
            ("attrs", format!("{}1{}", "{a=".repeat(n), ";}".repeat(n))),
            ("parens", format!("{}1{}", "(".repeat(n), ")".repeat(n))),
            ("let", format!("{}a", "let a = 1; in ".repeat(n))),
            ("lambda", format!("{}1", "x: ".repeat(n))),
            ("select", format!("a{}", ".b".repeat(n))),
            (
                "interp",
                format!("{}1{}", "\"${".repeat(n), "}\"".repeat(n)),
            ),
            ("binop", format!("{}1", "1 + ".repeat(n))),
            ("negate", format!("{}1", "-".repeat(n))),
            ("if", format!("{}1", "if a then 1 else ".repeat(n))),
            ("with", format!("{}1", "with a; ".repeat(n))),
            ("assert", format!("{}1", "assert a; ".repeat(n))),
            (
                "apply-parens",
                format!("{}1{}", "f (".repeat(n), ")".repeat(n)),
            ),
            ("apply", format!("{}1", "f ".repeat(n))),
        ];
        for (kind, text) in deep {
            let e = check_nesting(&text).expect_err(kind);
            assert!(e.offset < text.len(), "{kind}");
            assert!(e.message.contains("nests more than"), "{kind}");
        }
        for ok in [
            "{ a = [ [ 1 ] ]; b = x: y: x + y; c = if a then b else c; d = a.b.c or null; }",
            "let a = 1; b = 2; in a + b + 3",
            "{ inherit (pkgs) a b c d e f g h i j k l m n o p q r s t u v w x y z; }",
        ] {
            assert_eq!(check_nesting(ok), Ok(()), "{ok}");
        }
        // 300 bindings, each a short chain: the chains reset at `;`.
        let list: String = (0..1000).map(|i| format!("p{i} \"s\" ./x ")).collect();
        assert_eq!(check_nesting(&format!("[ {list} ]")), Ok(()));
        let wide: String = (0..300)
            .map(|i| format!("a{i} = let z = x.y + 1; in with z; assert z; z;"))
            .collect();
        assert_eq!(check_nesting(&format!("{{ {wide} }}")), Ok(()));
        // A long `else if` chain, as hand-written host configurations have them.
        let chain: String = (0..100)
            .map(|i| format!("if x.y == \"v{i}\" then {i} else "))
            .collect();
        assert_eq!(check_nesting(&format!("{chain}0")), Ok(()));
        assert_eq!(line_col("a\nbc", 3), (2, 2));
    }

    #[test]
    fn format_produces_nixpkgs_style() {
        let out = format("{a=1;b=[\"x\" \"y\"];}").unwrap();
        assert!(out.contains("a = 1;"), "{out}");
    }
}
