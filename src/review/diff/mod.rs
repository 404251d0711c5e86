//! GitLab's per-file diffs, parsed into hunks whose every line carries its kind and its old and
//! new line numbers.
//!
//! The input is what `GET /projects/:id/merge_requests/:iid/diffs` returns: one JSON object per
//! file whose `diff` string starts at the first `@@` hunk header (no `diff --git`, `---` or `+++`
//! lines, although a `unidiff=true` style preamble is tolerated). Parsing never fails and never
//! panics: anything that does not look like a diff is recorded as a [`ParseIssue`] and skipped,
//! so a hostile or truncated diff degrades to "fewer lines reviewed", never to a crash.
//!
//! The types are here; the parser is `diff/parser.rs`.

use serde::{Deserialize, Deserializer, Serialize};

mod parser;

pub use parser::parse;

/// One file of a merge request's diff, shaped like an element of GitLab's `/diffs` answer, so the
/// wiring layer can deserialize GitLab's JSON straight into it.
///
/// Every boolean is optional and `null` means `false`: GitLab added `generated_file` in 16.9 and
/// `collapsed`/`too_large` in 18.4, and documents `null` booleans as false.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
pub struct FileDiff {
    /// Path before the change. GitLab repeats the new path here for added files.
    #[serde(default, deserialize_with = "null_as_default")]
    pub old_path: String,
    /// Path after the change. GitLab repeats the old path here for deleted files.
    #[serde(default, deserialize_with = "null_as_default")]
    pub new_path: String,
    /// File mode before the change (`"100644"`; `"0"` for an added file). Only used to tell a
    /// mode-only change from an empty diff.
    #[serde(default)]
    pub a_mode: Option<String>,
    /// File mode after the change (`"0"` for a deleted file).
    #[serde(default)]
    pub b_mode: Option<String>,
    /// The unified diff text, hunks only. Empty when GitLab withheld it (`collapsed`,
    /// `too_large`), for binary files, and for renames or mode changes without content changes.
    #[serde(default, deserialize_with = "null_as_default")]
    pub diff: String,
    /// The file did not exist before.
    #[serde(default, deserialize_with = "null_as_default")]
    pub new_file: bool,
    /// The file was moved; `old_path` and `new_path` differ.
    #[serde(default, deserialize_with = "null_as_default")]
    pub renamed_file: bool,
    /// The file does not exist after.
    #[serde(default, deserialize_with = "null_as_default")]
    pub deleted_file: bool,
    /// GitLab believes the file is generated (from `.gitattributes` `gitlab-generated` or its
    /// own heuristics).
    #[serde(default, deserialize_with = "null_as_default")]
    pub generated_file: bool,
    /// GitLab excluded the diff but would send it on request (the MR hit a soft diff limit).
    #[serde(default, deserialize_with = "null_as_default")]
    pub collapsed: bool,
    /// GitLab excluded the diff and will not send it (the file exceeds a hard diff limit).
    #[serde(default, deserialize_with = "null_as_default")]
    pub too_large: bool,
}

/// Reads `null` (or a missing field, with `#[serde(default)]`) as the type's default.
fn null_as_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

impl FileDiff {
    /// The path a human would use to name this file: the new path, or the old one for a deleted
    /// file (whose new path GitLab fills with the old one anyway).
    pub fn display_path(&self) -> &str {
        if self.deleted_file || self.new_path.is_empty() {
            &self.old_path
        } else {
            &self.new_path
        }
    }
}

/// What happened to the file as a whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeKind {
    /// The file is new. GitLab positions use the new path for both sides.
    Added,
    /// The file was removed. GitLab positions use the old path for both sides.
    Deleted,
    /// The file was moved, possibly with content changes too.
    Renamed,
    /// Only the file mode differs before and after (content changes may come with it).
    ModeChanged,
    /// The content changed in place.
    Modified,
}

impl ChangeKind {
    /// Lower-case label used in prompts and summaries.
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeKind::Added => "added",
            ChangeKind::Deleted => "deleted",
            ChangeKind::Renamed => "renamed",
            ChangeKind::ModeChanged => "mode changed",
            ChangeKind::Modified => "modified",
        }
    }
}

/// Whether we have reviewable text for the file, and if not, why.
///
/// Kept apart from [`ChangeKind`] because the two vary independently: a renamed file can be
/// binary, an added file can be too large.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Content {
    /// At least one hunk was parsed.
    Text,
    /// Git reported a binary difference (or the text contains NUL bytes).
    Binary,
    /// GitLab withheld the diff for good (`too_large`).
    TooLarge,
    /// GitLab withheld the diff but could send it on request (`collapsed`).
    Collapsed,
    /// No diff text: a pure rename, a mode change, an empty new file, or a diff GitLab left
    /// empty for its own reasons.
    Empty,
    /// There was diff text but no hunk could be parsed from it (see the file's issues).
    Unparseable,
}

/// The kind of one diff line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LineKind {
    /// A `+` line: exists only in the new version.
    Added,
    /// A `-` line: exists only in the old version.
    Removed,
    /// A ` ` line: unchanged, present in both versions (possibly at different numbers).
    Context,
}

impl LineKind {
    /// The unified-diff prefix character for this kind.
    pub fn sign(self) -> char {
        match self {
            LineKind::Added => '+',
            LineKind::Removed => '-',
            LineKind::Context => ' ',
        }
    }
}

/// One line of a hunk with the numbers GitLab positions need.
///
/// Invariants (checked by property tests): added lines have only `new_line`, removed lines only
/// `old_line`, context lines both; numbers are never 0.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiffLine {
    /// Added, removed or unchanged.
    pub kind: LineKind,
    /// Line number in the old version, for removed and context lines.
    // Absent fields are left out of the stored JSON: chunks hold thousands of lines.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub old_line: Option<u32>,
    /// Line number in the new version, for added and context lines.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new_line: Option<u32>,
    /// The line's text without the diff prefix and without a trailing `\r` (CRLF files).
    pub text: String,
    /// A `\ No newline at end of file` marker followed this line. Shown to the model, since a
    /// missing final newline is sometimes the point of a change.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub no_newline_at_eof: bool,
}

/// One `@@ -a,b +c,d @@ section` block and its lines.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hunk {
    /// First old line covered (0 when the hunk covers no old lines, as for an added file).
    pub old_start: u32,
    /// Number of old lines (context + removed) actually present in `lines`.
    pub old_len: u32,
    /// First new line covered (0 when the hunk covers no new lines).
    pub new_start: u32,
    /// Number of new lines (context + added) actually present in `lines`.
    pub new_len: u32,
    /// The text after the closing `@@`, usually the enclosing function: cheap context for the
    /// model when a file is split into parts.
    pub section: String,
    /// The lines, in diff order.
    pub lines: Vec<DiffLine>,
}

impl Hunk {
    /// The `@@ -a,b +c,d @@ section` header for this hunk's numbers.
    pub fn header(&self) -> String {
        let mut header = format!(
            "@@ -{},{} +{},{} @@",
            self.old_start, self.old_len, self.new_start, self.new_len
        );
        if !self.section.is_empty() {
            header.push(' ');
            header.push_str(&self.section);
        }
        header
    }

    /// Builds a hunk from a run of lines taken from a parsed hunk, recomputing starts and
    /// lengths so the header matches exactly the lines it holds. Used when a hunk is too big for
    /// one prompt and is split by lines.
    pub(crate) fn from_lines(section: &str, lines: Vec<DiffLine>) -> Hunk {
        let old_len = count_u32(lines.iter().filter(|l| l.old_line.is_some()));
        let new_len = count_u32(lines.iter().filter(|l| l.new_line.is_some()));
        // A side with no lines in this run shows start 0 ("covers nothing on this side"). The
        // header is only for the model's orientation; every line carries its own numbers.
        let old_start = lines.iter().find_map(|l| l.old_line).unwrap_or(0);
        let new_start = lines.iter().find_map(|l| l.new_line).unwrap_or(0);
        Hunk {
            old_start,
            old_len,
            new_start,
            new_len,
            section: section.to_owned(),
            lines,
        }
    }
}

fn count_u32<T>(iter: impl Iterator<Item = T>) -> u32 {
    u32::try_from(iter.count()).unwrap_or(u32::MAX)
}

/// Something in the diff text that was not understood and therefore skipped. Recorded rather
/// than silently ignored so the summary can say a file was only partly reviewed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum ParseIssue {
    /// A line starting with `@@` that is not a valid hunk header; lines up to the next valid
    /// header were skipped.
    MalformedHunkHeader {
        /// 1-based line number within the diff text.
        line: usize,
    },
    /// A line inside a hunk with an unknown prefix, skipped.
    UnexpectedLine {
        /// 1-based line number within the diff text.
        line: usize,
    },
    /// A line before the first hunk header that is neither a git preamble nor a binary marker.
    StrayPreamble {
        /// 1-based line number within the diff text.
        line: usize,
    },
    /// Line numbers ran past `u32::MAX`; the rest of the hunk was skipped.
    LineNumberOverflow {
        /// 1-based line number within the diff text.
        line: usize,
    },
    /// The header's counts disagree with the lines that followed; the lengths were corrected to
    /// the lines actually present.
    CountMismatch {
        /// 1-based line number of the hunk's header within the diff text.
        hunk_header_line: usize,
    },
}

/// A file diff after parsing: paths, what happened, and the hunks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParsedFile {
    /// Path before the change (the new path for an added file).
    pub old_path: String,
    /// Path after the change (the old path for a deleted file).
    pub new_path: String,
    /// What happened to the file.
    pub change: ChangeKind,
    /// Whether there is text to review.
    pub content: Content,
    /// The hunks in diff order; empty unless `content` is [`Content::Text`].
    pub hunks: Vec<Hunk>,
    /// Parts of the diff text that were skipped as not understood.
    pub issues: Vec<ParseIssue>,
}

impl ParsedFile {
    /// The path to name this file by: the new path, or the old one for a deleted file.
    pub fn display_path(&self) -> &str {
        match self.change {
            ChangeKind::Deleted => &self.old_path,
            _ => &self.new_path,
        }
    }

    /// All lines of all hunks, in order.
    pub fn lines(&self) -> impl Iterator<Item = &DiffLine> {
        self.hunks.iter().flat_map(|h| h.lines.iter())
    }
}
