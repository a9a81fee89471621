//! A line diff for showing people what changes: the new Nix against the old `containers.NAME`
//! block, and (for `--rewrite`) a host file before and after. Longest common subsequence over
//! lines; texts are small (a container block, a configuration file), and beyond a size limit
//! the whole old text is shown removed and the whole new one added, which is still correct.

/// One line of a diff.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Line<'a> {
    Same(&'a str),
    Removed(&'a str),
    Added(&'a str),
}

/// Above this many line pairs the LCS table is not built (it would take too much memory).
const MAX_CELLS: usize = 4_000_000;

/// The lines of `old` and `new` in order, each marked same, removed or added.
pub fn diff<'a>(old: &'a str, new: &'a str) -> Vec<Line<'a>> {
    let a: Vec<&str> = old.lines().collect();
    let b: Vec<&str> = new.lines().collect();
    let (n, m) = (a.len(), b.len());
    if n.saturating_mul(m) > MAX_CELLS {
        return a
            .iter()
            .map(|l| Line::Removed(l))
            .chain(b.iter().map(|l| Line::Added(l)))
            .collect();
    }
    // lcs[i][j] = length of the LCS of a[i..] and b[j..].
    let mut lcs = vec![0u32; (n + 1) * (m + 1)];
    let at = |i: usize, j: usize| i * (m + 1) + j;
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            lcs[at(i, j)] = if a[i] == b[j] {
                lcs[at(i + 1, j + 1)] + 1
            } else {
                lcs[at(i + 1, j)].max(lcs[at(i, j + 1)])
            };
        }
    }
    let (mut i, mut j) = (0, 0);
    let mut out = Vec::with_capacity(n + m);
    while i < n && j < m {
        if a[i] == b[j] {
            out.push(Line::Same(a[i]));
            i += 1;
            j += 1;
        } else if lcs[at(i + 1, j)] >= lcs[at(i, j + 1)] {
            out.push(Line::Removed(a[i]));
            i += 1;
        } else {
            out.push(Line::Added(b[j]));
            j += 1;
        }
    }
    out.extend(a[i..].iter().map(|l| Line::Removed(l)));
    out.extend(b[j..].iter().map(|l| Line::Added(l)));
    out
}

/// A unified diff (`--- old`, `+++ new`, `@@` hunks with `context` lines around changes).
pub fn unified(old_name: &str, new_name: &str, old: &str, new: &str, context: usize) -> String {
    let lines = diff(old, new);
    let mut out = format!("--- {old_name}\n+++ {new_name}\n");
    // Indices of changed lines; hunks are runs of them closer than 2*context apart.
    let changed: Vec<usize> = lines
        .iter()
        .enumerate()
        .filter(|(_, l)| !matches!(l, Line::Same(_)))
        .map(|(i, _)| i)
        .collect();
    let mut k = 0;
    while k < changed.len() {
        let start = changed[k].saturating_sub(context);
        let mut end = changed[k];
        while k + 1 < changed.len() && changed[k + 1] <= end + 2 * context + 1 {
            k += 1;
            end = changed[k];
        }
        let end = (end + context + 1).min(lines.len());
        // Line numbers of the hunk's first line on each side.
        let (mut old_no, mut new_no) = (1, 1);
        for l in &lines[..start] {
            match l {
                Line::Same(_) => {
                    old_no += 1;
                    new_no += 1;
                }
                Line::Removed(_) => old_no += 1,
                Line::Added(_) => new_no += 1,
            }
        }
        let hunk = &lines[start..end];
        let old_len = hunk.iter().filter(|l| !matches!(l, Line::Added(_))).count();
        let new_len = hunk
            .iter()
            .filter(|l| !matches!(l, Line::Removed(_)))
            .count();
        out.push_str(&format!(
            "@@ -{},{old_len} +{},{new_len} @@\n",
            if old_len == 0 { old_no - 1 } else { old_no },
            if new_len == 0 { new_no - 1 } else { new_no }
        ));
        for l in hunk {
            match l {
                Line::Same(t) => out.push_str(&format!(" {t}\n")),
                Line::Removed(t) => out.push_str(&format!("-{t}\n")),
                Line::Added(t) => out.push_str(&format!("+{t}\n")),
            }
        }
        k += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn common_lines_are_kept_and_changes_marked() {
        let d = diff("a\nb\nc\n", "a\nx\nc\n");
        assert_eq!(
            d,
            vec![
                Line::Same("a"),
                Line::Removed("b"),
                Line::Added("x"),
                Line::Same("c")
            ]
        );
    }

    #[test]
    fn unified_hunks_carry_line_numbers_and_context() {
        let old = "1\n2\n3\n4\n5\n6\n7\n8\n9\n";
        let new = "1\n2\n3\n4\nfive\n6\n7\n8\n9\n";
        assert_eq!(
            unified("a", "b", old, new, 1),
            "--- a\n+++ b\n@@ -4,3 +4,3 @@\n 4\n-5\n+five\n 6\n"
        );
        assert_eq!(unified("a", "b", old, old, 3), "--- a\n+++ b\n");
    }

    #[test]
    fn unified_diff_applies_with_patch() {
        if std::process::Command::new("patch")
            .arg("--version")
            .output()
            .is_err()
        {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let old: String = (0..40).map(|i| format!("line {i}\n")).collect();
        let new = old
            .replace("line 3\n", "")
            .replace("line 20\n", "line twenty\nextra\n")
            + "tail\n";
        std::fs::write(dir.path().join("f"), &old).unwrap();
        std::fs::write(dir.path().join("p"), unified("f", "f", &old, &new, 3)).unwrap();
        let st = std::process::Command::new("patch")
            .current_dir(dir.path())
            .args(["-s", "f", "p"])
            .status()
            .unwrap();
        assert!(st.success());
        assert_eq!(std::fs::read_to_string(dir.path().join("f")).unwrap(), new);
    }
}
