//! The parser of one GitLab file diff ([`parse`]): hunk headers, numbered lines, binary and
//! withheld files, and every tolerated irregularity recorded as a [`ParseIssue`].

use super::{ChangeKind, Content, DiffLine, FileDiff, Hunk, LineKind, ParseIssue, ParsedFile};

/// Parses one GitLab file diff. Never fails: what is not understood is recorded in
/// [`ParsedFile::issues`].
pub fn parse(file: &FileDiff) -> ParsedFile {
    let old_path = if file.old_path.is_empty() {
        file.new_path.clone()
    } else {
        file.old_path.clone()
    };
    let new_path = if file.new_path.is_empty() {
        file.old_path.clone()
    } else {
        file.new_path.clone()
    };
    let change = change_kind(file, &old_path, &new_path);

    let (content, hunks, issues) = if file.too_large {
        (Content::TooLarge, Vec::new(), Vec::new())
    } else if file.collapsed {
        (Content::Collapsed, Vec::new(), Vec::new())
    } else {
        let body = parse_body(&file.diff);
        let content = if body.binary {
            Content::Binary
        } else if !body.hunks.is_empty() {
            Content::Text
        } else if file.diff.trim().is_empty() {
            Content::Empty
        } else {
            Content::Unparseable
        };
        let hunks = if content == Content::Text {
            body.hunks
        } else {
            Vec::new()
        };
        (content, hunks, body.issues)
    };

    ParsedFile {
        old_path,
        new_path,
        change,
        content,
        hunks,
        issues,
    }
}

fn change_kind(file: &FileDiff, old_path: &str, new_path: &str) -> ChangeKind {
    if file.new_file {
        ChangeKind::Added
    } else if file.deleted_file {
        ChangeKind::Deleted
    } else if file.renamed_file || old_path != new_path {
        ChangeKind::Renamed
    } else if mode_changed(file.a_mode.as_deref(), file.b_mode.as_deref()) {
        ChangeKind::ModeChanged
    } else {
        ChangeKind::Modified
    }
}

fn mode_changed(a: Option<&str>, b: Option<&str>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => a != b && a != "0" && b != "0",
        _ => false,
    }
}

/// What [`parse_body`] found in the diff text.
struct Body {
    hunks: Vec<Hunk>,
    issues: Vec<ParseIssue>,
    binary: bool,
}

/// Parser state between lines.
enum State {
    /// Before the first hunk header: a `unidiff` preamble or a binary marker may appear here.
    Preamble,
    /// Inside a hunk.
    InHunk(HunkBuilder),
    /// After a malformed header or a numbering overflow: skip until the next valid header.
    Skipping,
}

struct HunkBuilder {
    hunk: Hunk,
    /// 1-based line of the header in the diff text, for issues.
    header_line: usize,
    /// Counts the header announced, compared with what followed.
    announced_old: u32,
    announced_new: u32,
    /// Number the next old-side line gets; `None` once it would overflow.
    next_old: Option<u32>,
    /// Number the next new-side line gets.
    next_new: Option<u32>,
}

impl HunkBuilder {
    fn remaining(&self) -> bool {
        self.hunk.old_len < self.announced_old || self.hunk.new_len < self.announced_new
    }

    fn finish(self, issues: &mut Vec<ParseIssue>, hunks: &mut Vec<Hunk>) {
        if self.hunk.old_len != self.announced_old || self.hunk.new_len != self.announced_new {
            issues.push(ParseIssue::CountMismatch {
                hunk_header_line: self.header_line,
            });
        }
        if self.hunk.lines.is_empty() {
            return;
        }
        hunks.push(self.hunk);
    }

    /// Appends a line, returning `false` if a line number would overflow.
    fn push(&mut self, kind: LineKind, text: &str) -> bool {
        let old_line = match kind {
            LineKind::Removed | LineKind::Context => match self.next_old {
                Some(n) => {
                    self.next_old = n.checked_add(1);
                    Some(n)
                }
                None => return false,
            },
            LineKind::Added => None,
        };
        let new_line = match kind {
            LineKind::Added | LineKind::Context => match self.next_new {
                Some(n) => {
                    self.next_new = n.checked_add(1);
                    Some(n)
                }
                None => return false,
            },
            LineKind::Removed => None,
        };
        if old_line.is_some() {
            self.hunk.old_len = self.hunk.old_len.saturating_add(1);
        }
        if new_line.is_some() {
            self.hunk.new_len = self.hunk.new_len.saturating_add(1);
        }
        self.hunk.lines.push(DiffLine {
            kind,
            old_line,
            new_line,
            text: text.to_owned(),
            no_newline_at_eof: false,
        });
        true
    }
}

fn parse_body(diff: &str) -> Body {
    let mut hunks = Vec::new();
    let mut issues = Vec::new();
    // NUL never occurs in text git would diff as text; GitLab passing one through means binary
    // content leaked into the string.
    let mut binary = diff.contains('\0');
    let mut state = State::Preamble;

    // Only `\n` ends a line, as in git: a lone `\r` inside a line is content (old Mac line
    // endings), and splitting on it would shift every following line number.
    let mut raw_lines = diff.split('\n').peekable();
    let mut index = 0usize;
    while let Some(raw) = raw_lines.next() {
        index += 1;
        // `split` yields an empty last piece after a trailing newline; it is not a line.
        if raw.is_empty() && raw_lines.peek().is_none() {
            break;
        }
        let line = raw.strip_suffix('\r').unwrap_or(raw);

        if line.starts_with("@@") {
            if let State::InHunk(builder) = std::mem::replace(&mut state, State::Skipping) {
                builder.finish(&mut issues, &mut hunks);
            }
            match parse_header(line) {
                Some(header) => {
                    state = State::InHunk(HunkBuilder {
                        hunk: Hunk {
                            old_start: header.old_start,
                            old_len: 0,
                            new_start: header.new_start,
                            new_len: 0,
                            section: header.section.to_owned(),
                            lines: Vec::new(),
                        },
                        header_line: index,
                        announced_old: header.old_len,
                        announced_new: header.new_len,
                        // A start of 0 means "no lines on this side"; should a line appear anyway
                        // it is numbered from 1, because GitLab rejects (even 500s on) line 0.
                        next_old: Some(header.old_start.max(1)),
                        next_new: Some(header.new_start.max(1)),
                    });
                }
                None => issues.push(ParseIssue::MalformedHunkHeader { line: index }),
            }
            continue;
        }

        match &mut state {
            State::Preamble => {
                if is_binary_marker(line) {
                    binary = true;
                } else if !is_git_preamble(line) && !line.trim().is_empty() {
                    issues.push(ParseIssue::StrayPreamble { line: index });
                }
            }
            State::Skipping => {}
            State::InHunk(builder) => {
                let pushed = match line.as_bytes().first() {
                    Some(b'+') => builder.push(LineKind::Added, &line[1..]),
                    Some(b'-') => builder.push(LineKind::Removed, &line[1..]),
                    Some(b' ') => builder.push(LineKind::Context, &line[1..]),
                    Some(b'\\') => {
                        // `\ No newline at end of file` (localised by some gits): it describes
                        // the line before it.
                        if let Some(last) = builder.hunk.lines.last_mut() {
                            last.no_newline_at_eof = true;
                        }
                        true
                    }
                    // Some tools strip the single space of an empty context line.
                    None if builder.remaining() => builder.push(LineKind::Context, ""),
                    None => true,
                    Some(_) => {
                        issues.push(ParseIssue::UnexpectedLine { line: index });
                        true
                    }
                };
                if !pushed {
                    issues.push(ParseIssue::LineNumberOverflow { line: index });
                    if let State::InHunk(builder) = std::mem::replace(&mut state, State::Skipping) {
                        builder.finish(&mut issues, &mut hunks);
                    }
                }
            }
        }
    }
    if let State::InHunk(builder) = state {
        builder.finish(&mut issues, &mut hunks);
    }
    Body {
        hunks,
        issues,
        binary,
    }
}

/// `Binary files a/x and b/x differ` (what GitLab puts in `diff` for binary files) or the start
/// of a `GIT binary patch`.
fn is_binary_marker(line: &str) -> bool {
    (line.starts_with("Binary files ") && line.ends_with(" differ"))
        || line.starts_with("GIT binary patch")
}

/// Lines git prints before the first hunk, which `unidiff=true` and raw diffs include.
fn is_git_preamble(line: &str) -> bool {
    const PREFIXES: &[&str] = &[
        "diff --git ",
        "--- ",
        "+++ ",
        "index ",
        "new file mode ",
        "deleted file mode ",
        "old mode ",
        "new mode ",
        "similarity index ",
        "dissimilarity index ",
        "rename from ",
        "rename to ",
        "copy from ",
        "copy to ",
    ];
    PREFIXES.iter().any(|p| line.starts_with(p))
}

/// The numbers and section of a hunk header.
struct Header<'a> {
    old_start: u32,
    old_len: u32,
    new_start: u32,
    new_len: u32,
    section: &'a str,
}

/// Parses `@@ -a[,b] +c[,d] @@[ section]`. A missing length means 1, as in git.
fn parse_header(line: &str) -> Option<Header<'_>> {
    let rest = line.strip_prefix("@@ -")?;
    let (ranges, after) = rest.split_once(" @@")?;
    let (old, new) = ranges.split_once(" +")?;
    let (old_start, old_len) = parse_range(old)?;
    let (new_start, new_len) = parse_range(new)?;
    let section = after.strip_prefix(' ').unwrap_or(after);
    Some(Header {
        old_start,
        old_len,
        new_start,
        new_len,
        section,
    })
}

fn parse_range(range: &str) -> Option<(u32, u32)> {
    let (start, len) = match range.split_once(',') {
        Some((start, len)) => (start, parse_number(len)?),
        None => (range, 1),
    };
    Some((parse_number(start)?, len))
}

/// Digits only: `u32::from_str` would also accept a leading `+`.
fn parse_number(text: &str) -> Option<u32> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::review::fixtures::{self, render_hunks};

    fn file(diff: &str) -> FileDiff {
        FileDiff {
            old_path: "src/lib.rs".into(),
            new_path: "src/lib.rs".into(),
            diff: diff.into(),
            ..FileDiff::default()
        }
    }

    fn numbers(parsed: &ParsedFile) -> Vec<(LineKind, Option<u32>, Option<u32>, &str)> {
        parsed
            .lines()
            .map(|l| (l.kind, l.old_line, l.new_line, l.text.as_str()))
            .collect()
    }

    #[test]
    fn modified_file_lines_carry_old_and_new_numbers() {
        let parsed = parse(&file(
            "@@ -10,4 +10,5 @@ fn main() {\n ctx\n-old\n+new\n+added\n ctx2\n ctx3\n",
        ));
        assert_eq!(parsed.change, ChangeKind::Modified);
        assert_eq!(parsed.content, Content::Text);
        assert_eq!(parsed.hunks.len(), 1);
        assert_eq!(parsed.hunks[0].section, "fn main() {");
        assert_eq!(
            numbers(&parsed),
            vec![
                (LineKind::Context, Some(10), Some(10), "ctx"),
                (LineKind::Removed, Some(11), None, "old"),
                (LineKind::Added, None, Some(11), "new"),
                (LineKind::Added, None, Some(12), "added"),
                (LineKind::Context, Some(12), Some(13), "ctx2"),
                (LineKind::Context, Some(13), Some(14), "ctx3"),
            ]
        );
        assert!(parsed.issues.is_empty(), "{:?}", parsed.issues);
    }

    #[test]
    fn missing_hunk_lengths_default_to_one() {
        let parsed = parse(&file("@@ -3 +3 @@\n-a\n+b\n"));
        assert_eq!(parsed.hunks[0].old_len, 1);
        assert_eq!(parsed.hunks[0].new_len, 1);
        assert!(parsed.issues.is_empty());
    }

    #[test]
    fn added_file_numbers_new_lines_from_one() {
        let parsed = parse(&FileDiff {
            new_file: true,
            a_mode: Some("0".into()),
            b_mode: Some("100644".into()),
            ..file("@@ -0,0 +1,2 @@\n+first\n+second\n")
        });
        assert_eq!(parsed.change, ChangeKind::Added);
        assert_eq!(
            numbers(&parsed),
            vec![
                (LineKind::Added, None, Some(1), "first"),
                (LineKind::Added, None, Some(2), "second"),
            ]
        );
    }

    #[test]
    fn no_newline_marker_flags_the_line_before_it() {
        let parsed = parse(&file(
            "@@ -1 +1 @@\n-old\n\\ No newline at end of file\n+new\n\\ No newline at end of file\n",
        ));
        let flags: Vec<bool> = parsed.lines().map(|l| l.no_newline_at_eof).collect();
        assert_eq!(flags, vec![true, true]);
        assert!(parsed.issues.is_empty());
    }

    #[test]
    fn crlf_line_endings_are_stripped_but_lone_carriage_returns_stay_content() {
        let parsed = parse(&file("@@ -1,2 +1,2 @@\r\n a\r\n-b\rc\r\n+d\r\n"));
        let texts: Vec<&str> = parsed.lines().map(|l| l.text.as_str()).collect();
        assert_eq!(texts, vec!["a", "b\rc", "d"]);
    }

    #[test]
    fn replacement_characters_from_non_utf8_bytes_are_kept_as_text() {
        let bytes = b"@@ -1 +1 @@\n-caf\xe9\n+caf\xc3\xa9 \xff\xfe\n";
        let parsed = parse(&file(&String::from_utf8_lossy(bytes)));
        let texts: Vec<&str> = parsed.lines().map(|l| l.text.as_str()).collect();
        assert_eq!(texts, vec!["caf\u{fffd}", "caf\u{e9} \u{fffd}\u{fffd}"]);
    }

    #[test]
    fn nul_bytes_mark_the_file_binary() {
        assert_eq!(
            parse(&file("@@ -1 +1 @@\n-a\0\n+b\n")).content,
            Content::Binary
        );
    }

    #[test]
    fn binary_marker_marks_the_file_binary() {
        let parsed = parse(&file("Binary files a/logo.png and b/logo.png differ\n"));
        assert_eq!(parsed.content, Content::Binary);
        assert!(parsed.hunks.is_empty());
    }

    #[test]
    fn withheld_diffs_are_too_large_or_collapsed() {
        let too_large = parse(&FileDiff {
            too_large: true,
            ..file("")
        });
        let collapsed = parse(&FileDiff {
            collapsed: true,
            ..file("")
        });
        assert_eq!(too_large.content, Content::TooLarge);
        assert_eq!(collapsed.content, Content::Collapsed);
    }

    #[test]
    fn mode_only_change_is_mode_changed_with_empty_content() {
        let parsed = parse(&FileDiff {
            a_mode: Some("100644".into()),
            b_mode: Some("100755".into()),
            ..file("")
        });
        assert_eq!(parsed.change, ChangeKind::ModeChanged);
        assert_eq!(parsed.content, Content::Empty);
    }

    #[test]
    fn malformed_header_skips_its_lines_and_keeps_later_hunks() {
        let parsed = parse(&file("@@ -x,1 +1,1 @@\n-a\n+b\n@@ -5,1 +5,1 @@\n-c\n+d\n"));
        assert_eq!(parsed.content, Content::Text);
        assert_eq!(parsed.hunks.len(), 1);
        assert_eq!(parsed.hunks[0].old_start, 5);
        assert_eq!(
            parsed.issues,
            vec![ParseIssue::MalformedHunkHeader { line: 1 }]
        );
    }

    #[test]
    fn text_without_any_hunk_is_unparseable_not_empty() {
        let parsed = parse(&file("this is not a diff\n"));
        assert_eq!(parsed.content, Content::Unparseable);
        assert_eq!(parsed.issues, vec![ParseIssue::StrayPreamble { line: 1 }]);
    }

    #[test]
    fn unidiff_preamble_is_tolerated() {
        let parsed = parse(&file(
            "diff --git a/x b/x\nindex 1..2 100644\n--- a/x\n+++ b/x\n@@ -1 +1 @@\n-a\n+b\n",
        ));
        assert_eq!(parsed.hunks.len(), 1);
        assert!(parsed.issues.is_empty(), "{:?}", parsed.issues);
    }

    #[test]
    fn header_counts_that_disagree_with_the_lines_are_corrected_and_reported() {
        let parsed = parse(&file("@@ -1,5 +1,5 @@\n-a\n+b\n"));
        assert_eq!(parsed.hunks[0].old_len, 1);
        assert_eq!(parsed.hunks[0].new_len, 1);
        assert_eq!(
            parsed.issues,
            vec![ParseIssue::CountMismatch {
                hunk_header_line: 1
            }]
        );
    }

    #[test]
    fn line_numbers_at_u32_max_stop_the_hunk_instead_of_wrapping() {
        let parsed = parse(&file("@@ -4294967295,3 +4294967295,3 @@\n a\n b\n c\n"));
        assert_eq!(parsed.lines().count(), 1);
        assert!(
            parsed
                .issues
                .iter()
                .any(|i| matches!(i, ParseIssue::LineNumberOverflow { .. }))
        );
    }

    #[test]
    fn gitlab_json_with_nulls_and_missing_fields_deserializes() {
        let json = r#"{"old_path":"a.rs","new_path":"a.rs","a_mode":"100644","b_mode":"100644",
            "diff":"@@ -1 +1 @@\n-a\n+b\n","new_file":false,"renamed_file":null,"deleted_file":false}"#;
        let diff: FileDiff = serde_json::from_str(json).expect("valid GitLab JSON");
        assert!(!diff.renamed_file && !diff.too_large && !diff.collapsed);
        assert_eq!(parse(&diff).hunks.len(), 1);
    }

    #[test]
    fn realistic_fixture_parses_every_file_kind() {
        let diffs = fixtures::gitlab_diffs();
        let parsed: Vec<ParsedFile> = diffs.iter().map(parse).collect();
        let kinds: Vec<(ChangeKind, Content)> =
            parsed.iter().map(|p| (p.change, p.content)).collect();
        assert_eq!(
            kinds,
            vec![
                (ChangeKind::Modified, Content::Text),
                (ChangeKind::Added, Content::Text),
                (ChangeKind::Deleted, Content::Text),
                (ChangeKind::Renamed, Content::Text),
                (ChangeKind::Renamed, Content::Empty),
                (ChangeKind::Modified, Content::Binary),
                (ChangeKind::Modified, Content::TooLarge),
                (ChangeKind::Modified, Content::Text),
            ]
        );
        for file in &parsed {
            assert!(
                file.issues.is_empty(),
                "{}: {:?}",
                file.new_path,
                file.issues
            );
        }
        // The no-newline marker on the last line of the renamed-and-edited file.
        let renamed = &parsed[3];
        assert_eq!(renamed.old_path, "src/old_name.rs");
        assert_eq!(renamed.new_path, "src/new_name.rs");
        assert!(renamed.lines().last().is_some_and(|l| l.no_newline_at_eof));
    }

    /// One line of a generated well-formed hunk.
    fn op() -> impl Strategy<Value = (LineKind, String)> {
        (
            prop_oneof![
                Just(LineKind::Added),
                Just(LineKind::Removed),
                Just(LineKind::Context)
            ],
            "[a-z {}();\t\u{e9}\u{4e16}]{0,12}",
        )
    }

    proptest! {
        #[test]
        fn parsing_arbitrary_text_never_panics(text in any::<String>()) {
            let _ = parse(&file(&text));
        }

        #[test]
        fn parsing_diff_shaped_noise_never_panics(
            lines in proptest::collection::vec(
                prop_oneof![
                    "@@ -[0-9]{0,11}(,[0-9]{0,11})? \\+[0-9]{0,11}(,[0-9]{0,11})? @@.{0,5}",
                    "[-+ \\\\@]{0,3}.{0,10}",
                    Just(String::new()),
                ],
                0..40,
            ),
            crlf in any::<bool>(),
        ) {
            let joined = lines.join(if crlf { "\r\n" } else { "\n" });
            let parsed = parse(&file(&joined));
            for line in parsed.lines() {
                prop_assert!(line.old_line != Some(0) && line.new_line != Some(0));
                match line.kind {
                    LineKind::Added => prop_assert!(line.old_line.is_none() && line.new_line.is_some()),
                    LineKind::Removed => prop_assert!(line.old_line.is_some() && line.new_line.is_none()),
                    LineKind::Context => prop_assert!(line.old_line.is_some() && line.new_line.is_some()),
                }
            }
        }

        #[test]
        fn well_formed_diffs_parse_back_to_their_exact_lines_and_numbers(
            start in (1u32..5000, 1u32..5000),
            hunks in proptest::collection::vec(proptest::collection::vec(op(), 1..20), 1..5),
        ) {
            let (text, expected) = render_hunks(start, &hunks);
            let parsed = parse(&file(&text));
            prop_assert!(parsed.issues.is_empty(), "{:?}", parsed.issues);
            let got: Vec<_> = parsed
                .lines()
                .map(|l| (l.kind, l.old_line, l.new_line, l.text.clone()))
                .collect();
            prop_assert_eq!(got, expected);
            for hunk in &parsed.hunks {
                let olds: Vec<u32> = hunk.lines.iter().filter_map(|l| l.old_line).collect();
                let news: Vec<u32> = hunk.lines.iter().filter_map(|l| l.new_line).collect();
                prop_assert!(olds.windows(2).all(|w| w[1] == w[0] + 1));
                prop_assert!(news.windows(2).all(|w| w[1] == w[0] + 1));
                prop_assert_eq!(olds.len() as u32, hunk.old_len);
                prop_assert_eq!(news.len() as u32, hunk.new_len);
            }
        }
    }
}
