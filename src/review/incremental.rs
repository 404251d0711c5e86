//! Incremental reviews: after a push, review only the part of the merge request the push
//! changed, and tell which of the bot's earlier threads the push made outdated.
//!
//! Two diffs are involved. The merge request's diff (base..new head, what GitLab shows and
//! where comments are anchored) and the delta (old reviewed head..new head, GitLab's compare).
//! Both have the new head as their new side, so their new-side line numbers agree; that is what
//! [`restrict`] matches on. The delta's old side is the old head, where the bot's earlier
//! threads were anchored; that is what [`line_changed`] looks at.
//!
//! After a rebase the delta also holds the target branch's changes; files of it that are not in
//! the merge request's diff are reported as unmatched, not reviewed.

use std::collections::{BTreeSet, HashMap, HashSet};

use crate::review::diff::{ChangeKind, Content, Hunk, LineKind, ParsedFile};

/// The merge request's diff narrowed to what a push changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restricted {
    /// The merge request's files with only the hunks the delta touches, in the merge request's
    /// order. Files with no such hunk are left out.
    pub files: Vec<ParsedFile>,
    /// Hunks kept, for the summary ("reviewed 3 of 12 changed hunks").
    pub kept_hunks: usize,
    /// Hunks of the merge request's diff left out because the push did not touch them.
    pub dropped_hunks: usize,
    /// New-side paths the push changed that are not in the merge request's diff: changes that
    /// came from the target branch in a rebase, or changes reverted back to the base.
    pub unmatched_delta_paths: Vec<String>,
}

/// What the delta changed in one file, in new-head line numbers.
#[derive(Debug, Default)]
struct Touched {
    /// The whole file counts as changed: new or renamed in the delta, or the delta's text for
    /// it is unavailable (binary, withheld, unparseable), so nothing can be ruled out.
    whole: bool,
    /// New-side numbers of lines the delta added.
    added: BTreeSet<u32>,
    /// Where the delta removed lines: `g` means between new lines `g` and `g + 1` (0 is the
    /// start of the file).
    removal_gaps: BTreeSet<u32>,
}

impl Touched {
    fn is_empty(&self) -> bool {
        !self.whole && self.added.is_empty() && self.removal_gaps.is_empty()
    }

    /// Whether `hunk` (of the merge request's diff) shows a line the delta added, or sits
    /// against a place where it removed lines.
    fn touches(&self, hunk: &Hunk) -> bool {
        if self.whole {
            return true;
        }
        match new_range(hunk) {
            Some((first, last)) => {
                self.added.range(first..=last).next().is_some()
                    || self
                        .removal_gaps
                        .range(first.saturating_sub(1)..=last)
                        .next()
                        .is_some()
            }
            // A hunk of removed lines only sits in the gap after `new_start` (git's convention
            // for an empty new side).
            None => {
                let gap = hunk.new_start;
                self.removal_gaps.contains(&gap)
                    || self.added.contains(&gap)
                    || self.added.contains(&gap.saturating_add(1))
            }
        }
    }
}

/// The first and last new-side line numbers a hunk shows, if it shows any.
fn new_range(hunk: &Hunk) -> Option<(u32, u32)> {
    let mut numbers = hunk.lines.iter().filter_map(|l| l.new_line);
    let first = numbers.next()?;
    let last = numbers.next_back().unwrap_or(first);
    Some((first.min(last), first.max(last)))
}

/// Records a delta hunk's added lines and removal gaps.
fn record(hunk: &Hunk, touched: &mut Touched) {
    // The new line before the hunk's first line: one before its first new line, or for a hunk
    // without new lines the `new_start` of its header (git's convention for an empty side).
    let mut last_new = match hunk.lines.iter().find_map(|l| l.new_line) {
        Some(first) => first.saturating_sub(1),
        None => hunk.new_start,
    };
    for line in &hunk.lines {
        match (line.kind, line.new_line) {
            (LineKind::Added, Some(n)) => {
                touched.added.insert(n);
                last_new = n;
            }
            (LineKind::Context, Some(n)) => last_new = n,
            (LineKind::Removed, _) => {
                touched.removal_gaps.insert(last_new);
            }
            _ => {}
        }
    }
}

/// What the delta changed, by new-side path.
fn touched_by_path(delta: &[ParsedFile]) -> HashMap<&str, Touched> {
    let mut by_path: HashMap<&str, Touched> = HashMap::new();
    for file in delta {
        let touched = by_path.entry(file.new_path.as_str()).or_default();
        match file.content {
            Content::Text => file.hunks.iter().for_each(|h| record(h, touched)),
            // A pure rename or mode change: no lines changed.
            Content::Empty => {}
            Content::Binary | Content::TooLarge | Content::Collapsed | Content::Unparseable => {
                touched.whole = true;
            }
        }
        // New here, or moved here: the earlier review saw none of it under this path.
        if matches!(file.change, ChangeKind::Added | ChangeKind::Renamed) {
            touched.whole = true;
        }
    }
    by_path
}

/// Narrows the merge request's diff (`mr_files`, base..new head) to the hunks a push changed,
/// given the push's own diff (`delta`, old reviewed head..new head).
///
/// A hunk is kept when its new-side lines include a line the delta added, or border a place
/// where the delta removed lines. Files new or renamed in the delta (matched by the delta's new
/// path) are kept whole: none of their lines was reviewed under that path. Files whose delta
/// text is unavailable (binary, withheld by GitLab) are kept whole too, since nothing can be
/// ruled out. For a first review, restricting by the merge request's own diff keeps everything.
pub fn restrict(mr_files: &[ParsedFile], delta: &[ParsedFile]) -> Restricted {
    let touched = touched_by_path(delta);
    let mut files = Vec::new();
    let mut kept_hunks = 0;
    let mut dropped_hunks = 0;
    for file in mr_files {
        let Some(changes) = touched.get(file.new_path.as_str()) else {
            dropped_hunks += file.hunks.len();
            continue;
        };
        let (kept, dropped): (Vec<&Hunk>, Vec<&Hunk>) =
            file.hunks.iter().partition(|h| changes.touches(h));
        dropped_hunks += dropped.len();
        if kept.is_empty() {
            continue;
        }
        kept_hunks += kept.len();
        files.push(ParsedFile {
            old_path: file.old_path.clone(),
            new_path: file.new_path.clone(),
            change: file.change,
            content: file.content,
            hunks: kept.into_iter().cloned().collect(),
            issues: file.issues.clone(),
        });
    }
    let mr_paths: HashSet<&str> = mr_files.iter().map(|f| f.new_path.as_str()).collect();
    let mut seen = HashSet::new();
    let unmatched_delta_paths: Vec<String> = delta
        .iter()
        .map(|d| d.new_path.as_str())
        .filter(|path| !mr_paths.contains(path))
        .filter(|path| touched.get(path).is_some_and(|t| !t.is_empty()))
        .filter(|path| seen.insert(*path))
        .map(str::to_owned)
        .collect();
    Restricted {
        files,
        kept_hunks,
        dropped_hunks,
        unmatched_delta_paths,
    }
}

/// Whether a line of the old head (`line_at_old_head`, a new-side line number on that head, as
/// in the position of a thread the bot opened then) was changed or removed by the push whose
/// diff is `delta`: the delta removed the line with that old number, deleted the file, or
/// renamed it away. Used to resolve the bot's outdated threads.
///
/// A line the delta merely shifted (lines added or removed above it) is not changed. When the
/// delta's text for the file is unavailable (binary, withheld by GitLab), the answer is `false`:
/// a thread is not called outdated on evidence nobody has.
pub fn line_changed(delta: &[ParsedFile], path_at_old_head: &str, line_at_old_head: u32) -> bool {
    delta
        .iter()
        .filter(|f| f.old_path == path_at_old_head)
        .any(|file| {
            matches!(file.change, ChangeKind::Deleted)
                || file.new_path != file.old_path
                || file
                    .lines()
                    .any(|l| l.kind == LineKind::Removed && l.old_line == Some(line_at_old_head))
        })
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::review::{
        diff::{self, FileDiff},
        fixtures,
    };

    fn file(path: &str, diff_text: &str) -> ParsedFile {
        diff::parse(&FileDiff {
            old_path: path.into(),
            new_path: path.into(),
            diff: diff_text.into(),
            ..FileDiff::default()
        })
    }

    fn starts(restricted: &Restricted, path: &str) -> Vec<u32> {
        restricted
            .files
            .iter()
            .filter(|f| f.new_path == path)
            .flat_map(|f| f.hunks.iter().map(|h| h.new_start))
            .collect()
    }

    /// An MR diff of `src/app.rs` with hunks at new lines 10–14, 40–44 and 80–84.
    fn mr() -> Vec<ParsedFile> {
        vec![file(
            "src/app.rs",
            "@@ -10,4 +10,5 @@\n a\n b\n+c\n d\n e\n\
             @@ -39,5 +40,5 @@\n f\n g\n-h\n+H\n i\n j\n\
             @@ -79,4 +80,5 @@\n k\n l\n+m\n n\n o\n",
        )]
    }

    #[test]
    fn only_hunks_holding_a_line_the_push_added_are_kept() {
        let delta = vec![file("src/app.rs", "@@ -41,1 +42,1 @@\n-h2\n+H\n")];
        let restricted = restrict(&mr(), &delta);
        assert_eq!(starts(&restricted, "src/app.rs"), vec![40]);
        assert_eq!((restricted.kept_hunks, restricted.dropped_hunks), (1, 2));
        assert!(restricted.unmatched_delta_paths.is_empty());
    }

    #[test]
    fn a_removal_next_to_a_hunk_keeps_it() {
        // The push removed two lines between new lines 84 and 85: the third hunk ends at 84.
        let delta = vec![file("src/app.rs", "@@ -84,3 +84,1 @@\n n2\n-x\n-y\n")];
        let restricted = restrict(&mr(), &delta);
        assert_eq!(starts(&restricted, "src/app.rs"), vec![80]);
    }

    #[test]
    fn a_change_outside_every_hunk_keeps_nothing() {
        let delta = vec![file("src/app.rs", "@@ -60,1 +60,1 @@\n-p\n+q\n")];
        let restricted = restrict(&mr(), &delta);
        assert!(restricted.files.is_empty());
        assert_eq!((restricted.kept_hunks, restricted.dropped_hunks), (0, 3));
    }

    #[test]
    fn files_the_push_did_not_touch_are_dropped_and_its_other_files_reported() {
        let mut mr_files = mr();
        mr_files.push(file("src/other.rs", "@@ -1,1 +1,1 @@\n-a\n+b\n"));
        let delta = vec![
            file("src/app.rs", "@@ -9,1 +10,1 @@\n-x\n+c\n"),
            file("upstream/change.rs", "@@ -1,1 +1,1 @@\n-a\n+b\n"),
        ];
        let restricted = restrict(&mr_files, &delta);
        let paths: Vec<&str> = restricted
            .files
            .iter()
            .map(|f| f.new_path.as_str())
            .collect();
        assert_eq!(paths, vec!["src/app.rs"]);
        assert_eq!(
            restricted.unmatched_delta_paths,
            vec!["upstream/change.rs".to_owned()]
        );
        assert_eq!((restricted.kept_hunks, restricted.dropped_hunks), (1, 3));
    }

    #[test]
    fn a_file_new_in_the_push_is_kept_whole() {
        let mr_files = vec![file("src/new.rs", "@@ -0,0 +1,3 @@\n+a\n+b\n+c\n")];
        let delta = vec![diff::parse(&FileDiff {
            new_file: true,
            ..FileDiff {
                old_path: "src/new.rs".into(),
                new_path: "src/new.rs".into(),
                diff: "@@ -0,0 +1,3 @@\n+a\n+b\n+c\n".into(),
                ..FileDiff::default()
            }
        })];
        assert_eq!(restrict(&mr_files, &delta).files, mr_files);
    }

    #[test]
    fn a_file_renamed_in_the_push_is_matched_by_its_new_path_and_kept_whole() {
        let mr_files = vec![file("src/new_name.rs", "@@ -1,2 +1,3 @@\n a\n+b\n c\n")];
        let delta = vec![diff::parse(&FileDiff {
            old_path: "src/old_name.rs".into(),
            new_path: "src/new_name.rs".into(),
            renamed_file: true,
            ..FileDiff::default()
        })];
        let restricted = restrict(&mr_files, &delta);
        assert_eq!(restricted.files, mr_files);
        assert!(restricted.unmatched_delta_paths.is_empty());
    }

    #[test]
    fn a_file_whose_push_diff_was_withheld_is_kept_whole() {
        let delta = vec![diff::parse(&FileDiff {
            old_path: "src/app.rs".into(),
            new_path: "src/app.rs".into(),
            too_large: true,
            ..FileDiff::default()
        })];
        assert_eq!(restrict(&mr(), &delta).kept_hunks, 3);
    }

    #[test]
    fn a_mode_change_in_the_push_is_neither_reviewed_nor_unmatched() {
        let delta = vec![diff::parse(&FileDiff {
            old_path: "run.sh".into(),
            new_path: "run.sh".into(),
            a_mode: Some("100644".into()),
            b_mode: Some("100755".into()),
            ..FileDiff::default()
        })];
        let restricted = restrict(&mr(), &delta);
        assert!(restricted.files.is_empty());
        assert!(restricted.unmatched_delta_paths.is_empty());
    }

    #[test]
    fn the_realistic_fixture_restricted_by_itself_is_unchanged() {
        let files: Vec<ParsedFile> = fixtures::gitlab_diffs().iter().map(diff::parse).collect();
        let with_hunks: Vec<ParsedFile> = files
            .iter()
            .filter(|f| !f.hunks.is_empty())
            .cloned()
            .collect();
        let restricted = restrict(&with_hunks, &files);
        assert_eq!(restricted.files, with_hunks);
        assert_eq!(restricted.dropped_hunks, 0);
    }

    #[test]
    fn a_file_deleted_by_the_push_is_kept_for_the_skip_rules_to_report() {
        let deleted = |diff_text: &str| {
            diff::parse(&FileDiff {
                old_path: "docs/old.md".into(),
                new_path: "docs/old.md".into(),
                deleted_file: true,
                diff: diff_text.into(),
                ..FileDiff::default()
            })
        };
        let mr_files = vec![deleted("@@ -1,3 +0,0 @@\n-a\n-b\n-c\n")];
        let delta = vec![deleted("@@ -1,2 +0,0 @@\n-a\n-c\n")];
        assert_eq!(restrict(&mr_files, &delta).files, mr_files);
    }

    #[test]
    fn a_line_removed_or_rewritten_by_the_push_is_changed() {
        // Old head lines 10-12: `a`, `b`, `c`; the push rewrites `b` and keeps the rest.
        let delta = vec![file("src/app.rs", "@@ -10,3 +10,3 @@\n a\n-b\n+B\n c\n")];
        assert!(line_changed(&delta, "src/app.rs", 11));
        assert!(!line_changed(&delta, "src/app.rs", 10));
        assert!(!line_changed(&delta, "src/app.rs", 12));
        assert!(!line_changed(&delta, "src/app.rs", 500));
        assert!(!line_changed(&delta, "src/other.rs", 11));
    }

    #[test]
    fn a_line_only_shifted_by_the_push_is_not_changed() {
        // Two lines inserted above line 5 of the old head: it is now line 7, unchanged.
        let delta = vec![file("src/app.rs", "@@ -4,2 +4,4 @@\n x\n+n1\n+n2\n y\n")];
        assert!(!line_changed(&delta, "src/app.rs", 5));
    }

    #[test]
    fn every_line_of_a_file_deleted_or_renamed_away_is_changed() {
        let deleted = vec![diff::parse(&FileDiff {
            old_path: "src/gone.rs".into(),
            new_path: "src/gone.rs".into(),
            deleted_file: true,
            diff: "@@ -1,2 +0,0 @@\n-a\n-b\n".into(),
            ..FileDiff::default()
        })];
        assert!(line_changed(&deleted, "src/gone.rs", 1));
        let renamed = vec![diff::parse(&FileDiff {
            old_path: "src/old.rs".into(),
            new_path: "src/new.rs".into(),
            renamed_file: true,
            ..FileDiff::default()
        })];
        assert!(line_changed(&renamed, "src/old.rs", 7));
        assert!(!line_changed(&renamed, "src/new.rs", 7));
    }

    #[test]
    fn a_withheld_delta_does_not_call_a_line_changed() {
        let delta = vec![diff::parse(&FileDiff {
            old_path: "src/app.rs".into(),
            new_path: "src/app.rs".into(),
            too_large: true,
            ..FileDiff::default()
        })];
        assert!(!line_changed(&delta, "src/app.rs", 3));
    }

    /// One line of a generated hunk.
    fn op() -> impl Strategy<Value = (LineKind, String)> {
        (
            prop_oneof![
                Just(LineKind::Added),
                Just(LineKind::Removed),
                Just(LineKind::Context)
            ],
            "[a-z]{0,3}",
        )
    }

    /// A hunk with at least one change and at least one new-side line, as real diffs have
    /// (only a whole-file deletion has a hunk without new lines; a unit test covers it).
    fn changed_hunk() -> impl Strategy<Value = Vec<(LineKind, String)>> {
        proptest::collection::vec(op(), 1..12).prop_filter(
            "a hunk changes something and shows a new line",
            |ops| {
                ops.iter().any(|(k, _)| *k != LineKind::Context)
                    && ops.iter().any(|(k, _)| *k != LineKind::Removed)
            },
        )
    }

    fn generated(path: &str, start: (u32, u32), hunks: &[Vec<(LineKind, String)>]) -> ParsedFile {
        let (text, _) = fixtures::render_hunks(start, hunks);
        file(path, &text)
    }

    /// Whether `hunk` shows a new-side line the delta added or borders a place where it
    /// removed lines: the definition [`restrict`] implements, computed independently from
    /// line counts. `delta` must come from [`fixtures::render_hunks`] starting at `start`, whose
    /// unchanged stretches between hunks are as long on both sides.
    fn intersects(hunk: &Hunk, delta: &ParsedFile, start: (u32, u32)) -> bool {
        let added: Vec<i64> = delta
            .lines()
            .filter(|l| l.kind == LineKind::Added)
            .filter_map(|l| l.new_line.map(i64::from))
            .collect();
        // A removed line with old number `o` sits after `o - 1` old lines, shifted by the
        // start offset and by the lines added and removed before it.
        let (mut adds, mut removes) = (0i64, 0i64);
        let mut gaps = Vec::new();
        for line in delta.lines() {
            match line.kind {
                LineKind::Added => adds += 1,
                LineKind::Removed => {
                    let old = i64::from(line.old_line.expect("removed lines have old numbers"));
                    gaps.push(old - 1 + i64::from(start.1) - i64::from(start.0) + adds - removes);
                    removes += 1;
                }
                LineKind::Context => {}
            }
        }
        let news: Vec<i64> = hunk
            .lines
            .iter()
            .filter_map(|l| l.new_line.map(i64::from))
            .collect();
        let (lo, hi) = (news[0], news[news.len() - 1]);
        added.iter().any(|n| (lo..=hi).contains(n))
            || gaps.iter().any(|g| (lo - 1..=hi).contains(g))
    }

    proptest! {
        #[test]
        fn restriction_keeps_exactly_the_hunks_the_delta_touches(
            mr_hunks in proptest::collection::vec(changed_hunk(), 1..6),
            mr_start in (1u32..30, 1u32..30),
            delta_hunks in proptest::collection::vec(changed_hunk(), 1..6),
            delta_start in (1u32..30, 1u32..30),
        ) {
            let mr_file = generated("a.rs", mr_start, &mr_hunks);
            let delta_file = generated("a.rs", delta_start, &delta_hunks);
            let restricted = restrict(std::slice::from_ref(&mr_file), std::slice::from_ref(&delta_file));

            let kept: Vec<&Hunk> = restricted.files.iter().flat_map(|f| f.hunks.iter()).collect();
            // Every kept hunk intersects the delta, and every dropped one does not.
            for hunk in &mr_file.hunks {
                prop_assert_eq!(
                    kept.contains(&hunk),
                    intersects(hunk, &delta_file, delta_start),
                    "{:?}", hunk
                );
            }
            // Every line the delta added that the MR diff shows lies in a kept hunk.
            for added in delta_file.lines().filter(|l| l.kind == LineKind::Added) {
                let shown = mr_file.lines().any(|l| l.new_line == added.new_line);
                let in_kept = kept.iter().any(|h| h.lines.iter().any(|l| l.new_line == added.new_line));
                prop_assert!(!shown || in_kept, "added line {:?} dropped", added.new_line);
            }
            prop_assert_eq!(restricted.kept_hunks + restricted.dropped_hunks, mr_file.hunks.len());
        }

        #[test]
        fn a_first_review_restricted_by_its_own_diff_keeps_everything(
            files in proptest::collection::vec(
                (proptest::collection::vec(changed_hunk(), 1..6), (1u32..500, 1u32..500)),
                1..5,
            ),
        ) {
            let mr_files: Vec<ParsedFile> = files
                .iter()
                .enumerate()
                .map(|(i, (hunks, start))| generated(&format!("f{i}.rs"), *start, hunks))
                .collect();
            let restricted = restrict(&mr_files, &mr_files);
            prop_assert_eq!(&restricted.files, &mr_files);
            prop_assert_eq!(restricted.dropped_hunks, 0);
            prop_assert!(restricted.unmatched_delta_paths.is_empty());
        }

        #[test]
        fn exactly_the_removed_old_lines_are_changed(
            hunks in proptest::collection::vec(changed_hunk(), 1..6),
            start in (1u32..100, 1u32..100),
        ) {
            let delta = generated("a.rs", start, &hunks);
            let removed: BTreeSet<u32> = delta
                .lines()
                .filter(|l| l.kind == LineKind::Removed)
                .filter_map(|l| l.old_line)
                .collect();
            let last = delta.lines().filter_map(|l| l.old_line).max().unwrap_or(0) + 5;
            for line in 1..=last {
                prop_assert_eq!(
                    line_changed(std::slice::from_ref(&delta), "a.rs", line),
                    removed.contains(&line),
                    "old line {}", line
                );
            }
        }
    }
}
