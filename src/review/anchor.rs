//! Mapping a finding onto a GitLab diff position.
//!
//! GitLab accepts an inline comment only on a line of the diff version it is given, with exactly
//! the right fields (see `gitlab-glm-api.md` A6):
//!
//! - an added line: `new_line` only;
//! - a removed line: `old_line` only;
//! - an unchanged line: both, which may differ;
//! - `old_path` and `new_path` both set: the new path twice for an added file, the old path twice
//!   for a deleted file, old and new for a rename.
//!
//! Every position is validated against the parsed hunks, so GitLab's "line_code can't be blank"
//! rejection can only come from a stale diff version. A finding that cannot be placed goes to the
//! summary with a reason. There is no "nearest line" snapping: a comment on the wrong line is
//! worse than a summary entry.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::review::{
    diff::{ChangeKind, DiffLine, LineKind, ParsedFile},
    finding::Finding,
};

/// Where a finding goes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "anchor")]
pub enum Anchor {
    /// An inline discussion at this position.
    Inline(Position),
    /// The summary note, because the finding could not be anchored.
    Summary(UnanchoredReason),
}

/// The text-position fields of a GitLab discussion, minus the SHAs the wiring layer adds from
/// the latest diff version. `None` fields must be left out of the request, never sent as 0.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Position {
    /// `position[old_path]`.
    pub old_path: String,
    /// `position[new_path]`.
    pub new_path: String,
    /// `position[old_line]`: set for removed and unchanged lines.
    pub old_line: Option<u32>,
    /// `position[new_line]`: set for added and unchanged lines.
    pub new_line: Option<u32>,
}

impl Position {
    /// The kind of line this position points at, derived from which numbers are set.
    pub fn line_kind(&self) -> LineKind {
        match (self.old_line, self.new_line) {
            (Some(_), Some(_)) => LineKind::Context,
            (Some(_), None) => LineKind::Removed,
            _ => LineKind::Added,
        }
    }
}

/// Why a finding was not anchored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "reason")]
pub enum UnanchoredReason {
    /// The finding names no file.
    NoPath,
    /// No reviewed file has that path.
    UnknownPath,
    /// The finding names a file but no line.
    NoLine,
    /// The cited line is not in any hunk of the file (the model cited unchanged code the diff
    /// does not show, or invented a number).
    LineNotInDiff {
        /// The cited new-side line, if any.
        line: Option<u32>,
        /// The cited old-side line, if any.
        old_line: Option<u32>,
    },
    /// GitLab refused the position (set by the wiring layer after a 400 on posting).
    RejectedByGitLab {
        /// GitLab's error message.
        message: String,
    },
}

impl fmt::Display for UnanchoredReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UnanchoredReason::NoPath => f.write_str("no file given"),
            UnanchoredReason::UnknownPath => f.write_str("file is not part of the reviewed diff"),
            UnanchoredReason::NoLine => f.write_str("no line given"),
            UnanchoredReason::LineNotInDiff { line, old_line } => match (line, old_line) {
                (Some(l), _) => write!(f, "line {l} is not part of the diff"),
                (None, Some(l)) => write!(f, "old line {l} is not part of the diff"),
                (None, None) => f.write_str("line is not part of the diff"),
            },
            UnanchoredReason::RejectedByGitLab { message } => {
                write!(f, "GitLab refused the position: {message}")
            }
        }
    }
}

/// Anchors `finding` in `files` (the files that were reviewed; see
/// [`ChunkPlan::reviewed`](crate::review::chunk::ChunkPlan::reviewed)).
///
/// The path may be the new path or, for a renamed file, the old one; `a/`, `b/`, `./` and `/`
/// prefixes are tolerated when the exact path is not found. When both `line` and `old_line` are
/// given, `line` wins and `old_line` is the fallback.
pub fn anchor(files: &[ParsedFile], finding: &Finding) -> Anchor {
    let path = finding.path.trim();
    if path.is_empty() {
        return Anchor::Summary(UnanchoredReason::NoPath);
    }
    let Some(file) = find_file(files, path) else {
        return Anchor::Summary(UnanchoredReason::UnknownPath);
    };
    if finding.line.is_none() && finding.old_line.is_none() {
        return Anchor::Summary(UnanchoredReason::NoLine);
    }
    let by_new = finding
        .line
        .and_then(|n| file.lines().find(|l| l.new_line == Some(n)));
    let by_old = || {
        finding
            .old_line
            .and_then(|n| file.lines().find(|l| l.old_line == Some(n)))
    };
    let Some(line) = by_new.or_else(by_old) else {
        return Anchor::Summary(UnanchoredReason::LineNotInDiff {
            line: finding.line,
            old_line: finding.old_line,
        });
    };

    let (old_path, new_path) = match file.change {
        ChangeKind::Added => (file.new_path.clone(), file.new_path.clone()),
        ChangeKind::Deleted => (file.old_path.clone(), file.old_path.clone()),
        _ => (file.old_path.clone(), file.new_path.clone()),
    };
    let (old_line, new_line) = match line.kind {
        LineKind::Added => (None, line.new_line),
        LineKind::Removed => (line.old_line, None),
        LineKind::Context => (line.old_line, line.new_line),
    };
    Anchor::Inline(Position {
        old_path,
        new_path,
        old_line,
        new_line,
    })
}

/// The diff line a position points at, if `files` has it: the line with exactly the
/// position's old and new numbers, in the file with the position's new path (or, failing that,
/// its old path).
pub fn anchored_line<'a>(files: &'a [ParsedFile], position: &Position) -> Option<&'a DiffLine> {
    let file = files
        .iter()
        .find(|f| f.new_path == position.new_path)
        .or_else(|| files.iter().find(|f| f.old_path == position.old_path))?;
    file.lines()
        .find(|l| l.old_line == position.old_line && l.new_line == position.new_line)
}

fn find_file<'a>(files: &'a [ParsedFile], path: &str) -> Option<&'a ParsedFile> {
    let exact = |p: &str| {
        files
            .iter()
            .find(|f| f.new_path == p)
            .or_else(|| files.iter().find(|f| f.old_path == p))
    };
    exact(path).or_else(|| {
        let stripped = path.trim_start_matches("./").trim_start_matches('/');
        let stripped = stripped
            .strip_prefix("a/")
            .or_else(|| stripped.strip_prefix("b/"))
            .unwrap_or(stripped);
        (stripped != path).then(|| exact(stripped)).flatten()
    })
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::review::{
        diff::{self, FileDiff},
        finding::Severity,
        fixtures,
    };

    fn files() -> Vec<ParsedFile> {
        fixtures::gitlab_diffs().iter().map(diff::parse).collect()
    }

    fn at(path: &str, line: Option<u32>, old_line: Option<u32>) -> Finding {
        Finding {
            path: path.into(),
            line,
            line_end: None,
            old_line,
            severity: Severity::Major,
            title: "t".into(),
            body: "b".into(),
            suggestion: None,
        }
    }

    fn position(old_path: &str, new_path: &str, old: Option<u32>, new: Option<u32>) -> Anchor {
        Anchor::Inline(Position {
            old_path: old_path.into(),
            new_path: new_path.into(),
            old_line: old,
            new_line: new,
        })
    }

    #[test]
    fn added_line_anchors_with_new_line_only() {
        assert_eq!(
            anchor(&files(), &at("src/app.rs", Some(11), None)),
            position("src/app.rs", "src/app.rs", None, Some(11))
        );
    }

    #[test]
    fn removed_line_anchors_with_old_line_only() {
        assert_eq!(
            anchor(&files(), &at("src/app.rs", None, Some(11))),
            position("src/app.rs", "src/app.rs", Some(11), None)
        );
    }

    #[test]
    fn unchanged_line_anchors_with_both_numbers_even_when_they_differ() {
        // Second hunk: old 40 is new 41.
        assert_eq!(
            anchor(&files(), &at("src/app.rs", Some(41), None)),
            position("src/app.rs", "src/app.rs", Some(40), Some(41))
        );
    }

    #[test]
    fn added_file_uses_the_new_path_on_both_sides() {
        assert_eq!(
            anchor(&files(), &at("src/new_module.rs", Some(2), None)),
            position("src/new_module.rs", "src/new_module.rs", None, Some(2))
        );
    }

    #[test]
    fn deleted_file_uses_the_old_path_on_both_sides() {
        let deleted = diff::parse(&FileDiff {
            old_path: "docs/legacy.md".into(),
            new_path: "docs/legacy.md".into(),
            deleted_file: true,
            diff: "@@ -1,2 +0,0 @@\n-a\n-b\n".into(),
            ..FileDiff::default()
        });
        assert_eq!(
            anchor(&[deleted], &at("docs/legacy.md", None, Some(2))),
            position("docs/legacy.md", "docs/legacy.md", Some(2), None)
        );
    }

    #[test]
    fn renamed_file_is_found_by_either_path_and_anchors_with_both() {
        for path in [
            "src/new_name.rs",
            "src/old_name.rs",
            "b/src/new_name.rs",
            "./src/new_name.rs",
        ] {
            assert_eq!(
                anchor(&files(), &at(path, Some(2), None)),
                position("src/old_name.rs", "src/new_name.rs", None, Some(2)),
                "{path}"
            );
        }
    }

    #[test]
    fn lines_outside_every_hunk_go_to_the_summary() {
        assert_eq!(
            anchor(&files(), &at("src/app.rs", Some(30), None)),
            Anchor::Summary(UnanchoredReason::LineNotInDiff {
                line: Some(30),
                old_line: None
            })
        );
    }

    #[test]
    fn unknown_paths_and_missing_fields_go_to_the_summary() {
        let files = files();
        assert_eq!(
            anchor(&files, &at("src/nope.rs", Some(1), None)),
            Anchor::Summary(UnanchoredReason::UnknownPath)
        );
        assert_eq!(
            anchor(&files, &at(" ", Some(1), None)),
            Anchor::Summary(UnanchoredReason::NoPath)
        );
        assert_eq!(
            anchor(&files, &at("src/app.rs", None, None)),
            Anchor::Summary(UnanchoredReason::NoLine)
        );
    }

    #[test]
    fn a_new_line_that_misses_falls_back_to_the_old_line() {
        assert_eq!(
            anchor(&files(), &at("src/app.rs", Some(999), Some(11))),
            position("src/app.rs", "src/app.rs", Some(11), None)
        );
    }

    #[test]
    fn the_anchored_line_is_found_for_each_kind_of_line() {
        let files = files();
        let text = |finding: &Finding| match anchor(&files, finding) {
            Anchor::Inline(position) => anchored_line(&files, &position).map(|l| l.text.clone()),
            Anchor::Summary(_) => None,
        };
        let added = text(&at("src/app.rs", Some(11), None)).expect("added line");
        let removed = text(&at("src/app.rs", None, Some(11))).expect("removed line");
        assert!(added.contains("let id"), "{added}");
        assert_ne!(added, removed);
        assert!(text(&at("src/old_name.rs", Some(2), None)).is_some());
        let nowhere = Position {
            old_path: "src/app.rs".into(),
            new_path: "src/app.rs".into(),
            old_line: None,
            new_line: Some(30),
        };
        assert_eq!(anchored_line(&files, &nowhere), None);
    }

    proptest! {
        #[test]
        fn every_diff_line_anchors_to_itself_with_gitlabs_field_rules(
            hunks in proptest::collection::vec(
                proptest::collection::vec(
                    (prop_oneof![Just(LineKind::Added), Just(LineKind::Removed), Just(LineKind::Context)],
                     "[a-z]{0,5}"),
                    1..30),
                1..4),
            start in 1u32..1000,
        ) {
            let (text, _) = fixtures::render_hunks((start, start), &hunks);
            let file = diff::parse(&FileDiff {
                old_path: "x.rs".into(),
                new_path: "x.rs".into(),
                diff: text,
                ..FileDiff::default()
            });
            let files = vec![file.clone()];
            for line in file.lines() {
                let cited = match line.kind {
                    LineKind::Removed => at("x.rs", None, line.old_line),
                    _ => at("x.rs", line.new_line, None),
                };
                let expected = match line.kind {
                    LineKind::Added => (None, line.new_line),
                    LineKind::Removed => (line.old_line, None),
                    LineKind::Context => (line.old_line, line.new_line),
                };
                match anchor(&files, &cited) {
                    Anchor::Inline(p) => {
                        prop_assert_eq!((p.old_line, p.new_line), expected);
                        prop_assert_eq!(p.line_kind(), line.kind);
                    }
                    other => prop_assert!(false, "{:?} did not anchor: {:?}", line, other),
                }
            }
        }
    }
}
