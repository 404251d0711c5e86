//! Shared test fixtures: a realistic answer of GitLab's `/diffs` endpoint covering a modified
//! file, an added file, a deleted file, a rename with edits ending in `\ No newline at end of
//! file`, a pure rename, a binary file, a `too_large` file and a lock file (the last one from an
//! older GitLab without `collapsed`/`too_large`, and one `generated_file: null`).

use crate::review::diff::{FileDiff, LineKind};

/// The fixture as GitLab would send it.
pub(crate) const GITLAB_DIFFS_JSON: &str = include_str!("testdata/gitlab_diffs.json");

/// The fixture deserialized.
pub(crate) fn gitlab_diffs() -> Vec<FileDiff> {
    serde_json::from_str(GITLAB_DIFFS_JSON).expect("fixture is valid GitLab JSON")
}

/// What a generated line should parse back to: kind, old number, new number, text.
pub(crate) type ExpectedLine = (LineKind, Option<u32>, Option<u32>, String);

/// Renders hunks as GitLab would and returns the expected (kind, old, new, text) per line.
pub(crate) fn render_hunks(
    start: (u32, u32),
    hunks: &[Vec<(LineKind, String)>],
) -> (String, Vec<ExpectedLine>) {
    let (mut old, mut new) = start;
    let mut text = String::new();
    let mut expected = Vec::new();
    for ops in hunks.iter().filter(|ops| !ops.is_empty()) {
        let old_len = ops.iter().filter(|(k, _)| *k != LineKind::Added).count();
        let new_len = ops.iter().filter(|(k, _)| *k != LineKind::Removed).count();
        text.push_str(&format!("@@ -{old},{old_len} +{new},{new_len} @@ ctx\n"));
        for (kind, line) in ops {
            let (o, n) = match kind {
                LineKind::Added => (None, Some(new)),
                LineKind::Removed => (Some(old), None),
                LineKind::Context => (Some(old), Some(new)),
            };
            if o.is_some() {
                old += 1;
            }
            if n.is_some() {
                new += 1;
            }
            text.push(kind.sign());
            text.push_str(line);
            text.push('\n');
            expected.push((*kind, o, n, line.clone()));
        }
        // A gap of unchanged lines between hunks, as git leaves.
        old += 3;
        new += 3;
    }
    (text, expected)
}

/// A modified file at `path` with the given diff text.
pub(crate) fn modified(path: &str, diff: String) -> FileDiff {
    FileDiff {
        old_path: path.into(),
        new_path: path.into(),
        diff,
        ..FileDiff::default()
    }
}

/// A diff of `hunks` hunks of `lines` added lines each, every line `width` chars wide.
pub(crate) fn big_diff(hunks: usize, lines: usize, width: usize) -> String {
    let mut text = String::new();
    for h in 0..hunks {
        let start = 1 + h * (lines + 10);
        text.push_str(&format!("@@ -{start},0 +{start},{lines} @@ fn f{h}()\n"));
        for l in 0..lines {
            text.push('+');
            text.push_str(&format!("{l:>width$}"));
            text.push('\n');
        }
    }
    text
}
