//! Unified diffs of rendered files, line by line (longest common
//! subsequence; files too large for that are shown as replaced whole).

/// Largest `old lines × new lines` diffed line by line.
const MAX_CELLS: usize = 4_000_000;
/// Lines of context around each change.
const CONTEXT: usize = 3;

#[derive(Clone, Copy, PartialEq)]
enum Op {
    Same,
    Del,
    Add,
}

/// The edit script from `a` to `b`, as `(op, index into a or b)`.
fn script(a: &[&str], b: &[&str]) -> Vec<(Op, usize)> {
    // Common prefix and suffix first: rendered files mostly change in a few places.
    let pre = a.iter().zip(b).take_while(|(x, y)| x == y).count();
    let suf = a[pre..].iter().rev().zip(b[pre..].iter().rev()).take_while(|(x, y)| x == y).count();
    let (am, bm) = (&a[pre..a.len() - suf], &b[pre..b.len() - suf]);
    let mut out: Vec<(Op, usize)> = (0..pre).map(|i| (Op::Same, i)).collect();
    if am.len().saturating_mul(bm.len()) > MAX_CELLS {
        out.extend((0..am.len()).map(|i| (Op::Del, pre + i)));
        out.extend((0..bm.len()).map(|j| (Op::Add, pre + j)));
    } else {
        // lcs[i][j]: length of the LCS of am[i..] and bm[j..].
        let (n, m) = (am.len(), bm.len());
        let mut lcs = vec![0u32; (n + 1) * (m + 1)];
        for i in (0..n).rev() {
            for j in (0..m).rev() {
                lcs[i * (m + 1) + j] = if am[i] == bm[j] {
                    lcs[(i + 1) * (m + 1) + j + 1] + 1
                } else {
                    lcs[(i + 1) * (m + 1) + j].max(lcs[i * (m + 1) + j + 1])
                };
            }
        }
        let (mut i, mut j) = (0, 0);
        while i < n || j < m {
            if i < n && j < m && am[i] == bm[j] {
                out.push((Op::Same, pre + i));
                i += 1;
                j += 1;
            } else if i < n && (j == m || lcs[(i + 1) * (m + 1) + j] >= lcs[i * (m + 1) + j + 1]) {
                // Deletions before additions, as diff(1) shows them.
                out.push((Op::Del, pre + i));
                i += 1;
            } else {
                out.push((Op::Add, pre + j));
                j += 1;
            }
        }
    }
    out.extend((0..suf).map(|k| (Op::Same, a.len() - suf + k)));
    out
}

/// A unified diff of `old` to `new` (headers `--- a/<name>`, `+++ b/<name>`),
/// or `None` when they are equal.
pub fn unified(name: &str, old: &str, new: &str) -> Option<String> {
    if old == new {
        return None;
    }
    let a: Vec<&str> = old.lines().collect();
    let b: Vec<&str> = new.lines().collect();
    let ops = script(&a, &b);
    // Positions in a and b before each op.
    let mut pos = Vec::with_capacity(ops.len() + 1);
    let (mut ai, mut bi) = (0usize, 0usize);
    for (op, _) in &ops {
        pos.push((ai, bi));
        match op {
            Op::Same => {
                ai += 1;
                bi += 1;
            }
            Op::Del => ai += 1,
            Op::Add => bi += 1,
        }
    }
    pos.push((ai, bi));
    let changed: Vec<usize> = ops.iter().enumerate().filter(|(_, (op, _))| *op != Op::Same).map(|(k, _)| k).collect();
    let mut out = format!("--- a/{name}\n+++ b/{name}\n");
    if changed.is_empty() {
        // Only the trailing newline differs.
        out.push_str("@@ end of file @@\n\\ trailing newline differs\n");
        return Some(out);
    }
    // Group changes whose context overlaps into hunks.
    let mut k = 0;
    while k < changed.len() {
        let start = changed[k].saturating_sub(CONTEXT);
        let mut end = changed[k];
        while k + 1 < changed.len() && changed[k + 1] <= end + 2 * CONTEXT + 1 {
            k += 1;
            end = changed[k];
        }
        let end = (end + CONTEXT + 1).min(ops.len());
        let (a0, b0) = pos[start];
        let (a1, b1) = pos[end];
        let range = |s: usize, n: usize| if n == 0 { format!("{s},0") } else { format!("{},{n}", s + 1) };
        out.push_str(&format!("@@ -{} +{} @@\n", range(a0, a1 - a0), range(b0, b1 - b0)));
        for (op, idx) in &ops[start..end] {
            match op {
                Op::Same => out.push_str(&format!(" {}\n", a[*idx])),
                Op::Del => out.push_str(&format!("-{}\n", a[*idx])),
                Op::Add => out.push_str(&format!("+{}\n", b[*idx])),
            }
        }
        k += 1;
    }
    Some(out)
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
        assert!(unified("f", "a", "a\n").unwrap().contains("trailing newline"));
        assert_eq!(unified("f", "", "x\n").unwrap(), "--- a/f\n+++ b/f\n@@ -0,0 +1,1 @@\n+x\n");
    }
}
