//! The small part of unified-diff parsing the fake needs to validate positions the way GitLab
//! does: which (old, new) line pairs exist in a file's hunks, and of which kind.

/// What a diff line is, and so which numbers a position on it must carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum LineKind {
    /// `+`: new number only.
    Added,
    /// `-`: old number only.
    Removed,
    /// ` `: both numbers.
    Context,
}

/// One line of a hunk with its numbers on each side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Line {
    pub(super) kind: LineKind,
    pub(super) old_line: Option<u32>,
    pub(super) new_line: Option<u32>,
}

/// Every line of a file's diff, in order, ready for lookups.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct FileLines {
    lines: Vec<Line>,
}

impl FileLines {
    /// Parses GitLab's `diff` string (hunks from the first `@@`, no `---`/`+++` header).
    /// An empty diff (binary, collapsed, too large) has no lines.
    pub(super) fn parse(diff: &str) -> Result<Self, String> {
        let mut lines = Vec::new();
        // The hunk being read; `None` before the first header.
        let mut hunk: Option<HunkCursor> = None;
        for (index, text) in diff.lines().enumerate() {
            let at = |message: String| format!("line {}: {message}", index + 1);
            if text.starts_with("@@") {
                if let Some(done) = &hunk {
                    done.check_complete().map_err(at)?;
                }
                let header = parse_hunk_header(text)
                    .ok_or_else(|| at(format!("malformed hunk header {text:?}")))?;
                hunk = Some(header);
                continue;
            }
            let Some(cursor) = hunk.as_mut() else {
                return Err(at("text before the first @@ hunk header".to_owned()));
            };
            let kind = match text.as_bytes().first() {
                Some(b'+') => LineKind::Added,
                Some(b'-') => LineKind::Removed,
                // `\ No newline at end of file` annotates the previous line.
                Some(b'\\') => continue,
                // A context line; an empty line is one whose leading space was stripped.
                Some(b' ') | None => LineKind::Context,
                Some(_) => {
                    return Err(at(format!(
                        "diff lines start with '+', '-', ' ' or '\\', got {text:?}"
                    )));
                }
            };
            lines.push(cursor.take(kind).map_err(at)?);
        }
        if let Some(done) = &hunk {
            done.check_complete()?;
        }
        Ok(FileLines { lines })
    }

    /// The line a position's (old, new) pair names, if it exists with exactly that pair.
    pub(super) fn find(&self, old_line: Option<u32>, new_line: Option<u32>) -> Option<Line> {
        self.lines
            .iter()
            .copied()
            .find(|line| line.old_line == old_line && line.new_line == new_line)
    }

    /// All lines, in diff order.
    #[cfg(test)]
    pub(super) fn lines(&self) -> &[Line] {
        &self.lines
    }
}

/// Position inside a hunk: the next numbers and how many lines each side still expects.
#[derive(Debug, Clone, Copy)]
struct HunkCursor {
    old: u32,
    new: u32,
    old_left: u32,
    new_left: u32,
}

impl HunkCursor {
    /// Numbers the next line of `kind`, checking the header's counts allow it.
    fn take(&mut self, kind: LineKind) -> Result<Line, String> {
        let uses_old = kind != LineKind::Added;
        let uses_new = kind != LineKind::Removed;
        if (uses_old && self.old_left == 0) || (uses_new && self.new_left == 0) {
            return Err("the hunk has more lines than its header says".to_owned());
        }
        let line = Line {
            kind,
            old_line: uses_old.then_some(self.old),
            new_line: uses_new.then_some(self.new),
        };
        if uses_old {
            self.old += 1;
            self.old_left -= 1;
        }
        if uses_new {
            self.new += 1;
            self.new_left -= 1;
        }
        Ok(line)
    }

    fn check_complete(&self) -> Result<(), String> {
        if self.old_left == 0 && self.new_left == 0 {
            Ok(())
        } else {
            Err(format!(
                "a hunk ends {} old and {} new line(s) short of its header",
                self.old_left, self.new_left
            ))
        }
    }
}

/// `@@ -a[,b] +c[,d] @@ section`; a missing count means 1. An empty side (`-0,0` for a new
/// file) has count 0, so its start number is never used.
fn parse_hunk_header(header: &str) -> Option<HunkCursor> {
    let rest = header.strip_prefix("@@ -")?;
    let (ranges, _section) = rest.split_once(" @@")?;
    let (old, new) = ranges.split_once(" +")?;
    let range = |range: &str| -> Option<(u32, u32)> {
        let (start, len) = match range.split_once(',') {
            Some((start, len)) => (start.parse().ok()?, len.parse().ok()?),
            None => (range.parse().ok()?, 1),
        };
        Some((start, len))
    };
    let (old, old_left) = range(old)?;
    let (new, new_left) = range(new)?;
    Some(HunkCursor {
        old,
        new,
        old_left,
        new_left,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_follow_the_hunk_header_on_each_side() {
        let lines =
            FileLines::parse("@@ -10,3 +10,3 @@ fn main()\n a\n-b\n+c\n d\n").expect("valid");
        let kinds: Vec<_> = lines
            .lines()
            .iter()
            .map(|l| (l.kind, l.old_line, l.new_line))
            .collect();
        assert_eq!(
            kinds,
            vec![
                (LineKind::Context, Some(10), Some(10)),
                (LineKind::Removed, Some(11), None),
                (LineKind::Added, None, Some(11)),
                (LineKind::Context, Some(12), Some(12)),
            ]
        );
    }

    #[test]
    fn a_new_file_numbers_its_lines_from_one() {
        let lines = FileLines::parse("@@ -0,0 +1,2 @@\n+a\n+b\n").expect("valid");
        assert_eq!(
            lines.find(None, Some(2)).map(|l| l.kind),
            Some(LineKind::Added)
        );
    }

    #[test]
    fn text_before_a_hunk_header_is_rejected() {
        assert!(FileLines::parse("--- a/x\n+++ b/x\n@@ -1 +1 @@\n-a\n+b\n").is_err());
    }

    #[test]
    fn a_hunk_whose_lines_do_not_match_its_header_is_rejected() {
        assert!(FileLines::parse("@@ -1,2 +1,2 @@\n a\n").is_err());
        assert!(FileLines::parse("@@ -1 +1 @@\n a\n b\n").is_err());
    }

    #[test]
    fn the_no_newline_marker_is_not_a_line() {
        let lines =
            FileLines::parse("@@ -1 +1 @@\n-a\n\\ No newline at end of file\n+b\n").expect("valid");
        assert_eq!(lines.lines().len(), 2);
    }
}
