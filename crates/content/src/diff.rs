//! Unified diffs of rendered files, line by line, by `similar` (Myers'
//! algorithm with a deadline: a pathological pair of files gets a correct
//! but less minimal diff instead of an unbounded wait).

use std::time::Duration;

/// Lines of context around each change.
const CONTEXT: usize = 3;
/// Longest one diff may search for the smallest edit script.
const DEADLINE: Duration = Duration::from_millis(500);

/// A unified diff of `old` to `new` (headers `--- a/<name>`, `+++ b/<name>`),
/// or `None` when they are equal.
pub fn unified(name: &str, old: &str, new: &str) -> Option<String> {
    if old == new {
        return None;
    }
    // Lines compare without their ending, so a last line that gained a
    // newline (or a line after it) is not shown as changed.
    let ended = |t: &str| if t.is_empty() || t.ends_with('\n') { t.to_owned() } else { format!("{t}\n") };
    let (old, new) = (ended(old), ended(new));
    if old == new {
        return Some(format!("--- a/{name}\n+++ b/{name}\n@@ end of file @@\n\\ trailing newline differs\n"));
    }
    let diff =
        similar::TextDiff::configure().algorithm(similar::Algorithm::Myers).timeout(DEADLINE).diff_lines(&old, &new);
    let text =
        diff.unified_diff().context_radius(CONTEXT).header(&format!("a/{name}"), &format!("b/{name}")).to_string();
    Some(text)
}

#[cfg(test)]
mod tests {
    use super::unified;

    #[test]
    fn diffs_show_changed_lines_with_context_and_equal_texts_none() {
        assert_eq!(unified("f", "a\nb\n", "a\nb\n"), None);
        let old = "1\n2\n3\n4\n5\n6\n7\n8\n9\n10\n";
        let new = "1\n2\n3\n4\nfive\n6\n7\n8\n9\n10\neleven\n";
        let d = unified("ks.cfg", old, new).unwrap();
        assert_eq!(
            d,
            "--- a/ks.cfg\n+++ b/ks.cfg\n@@ -2,9 +2,10 @@\n 2\n 3\n 4\n-5\n+five\n 6\n 7\n 8\n 9\n 10\n+eleven\n"
        );
        // Far-apart changes make separate hunks.
        let old: String = (1..=30).map(|i| format!("line {i}\n")).collect();
        let new: String = (1..=30)
            .map(|i| match i {
                3 => "three\n".to_owned(),
                27 => "x27\n".to_owned(),
                i => format!("line {i}\n"),
            })
            .collect();
        let d = unified("f", &old, &new).unwrap();
        assert_eq!(d.matches("@@ -").count(), 2, "{d}");
        assert!(d.contains("-line 3\n+three\n") && d.contains("-line 27\n+x27\n"), "{d}");
        assert!(unified("f", "a", "a\n").unwrap().contains("trailing newline differs"));
        assert_eq!(unified("f", "", "x\n").unwrap(), "--- a/f\n+++ b/f\n@@ -0,0 +1 @@\n+x\n");
    }
}
