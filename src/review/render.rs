//! What reaches GitLab: sanitised model text, inline comment bodies, the summary note, and the
//! hidden marker that identifies our comments.
//!
//! # Sanitising model text
//!
//! Model output is untrusted (the diff it read may contain prompt injection). Before posting:
//!
//! - **Quick actions.** No line may start with `/` once leading whitespace is trimmed, or GitLab
//!   would run it (`/merge`, `/approve`, `/close`). Outside code, such a line gets a backslash
//!   before the `/`: CommonMark renders `\/` as `/`, so readers see the original text. Inside code
//!   (fences, or lines indented four or more columns), where backslashes are shown literally, a
//!   zero-width space (U+200B) goes before the `/`: invisible when rendered, at the cost of an
//!   invisible character when copied.
//! - **Mentions.** Every `@` followed by a name character gets a zero-width space after it, so
//!   `@all`, `@here`, `@channel` and any `@user` render as text but notify nobody.
//! - **HTML.** Outside code, `<` before a letter, `/`, `!` or `?` becomes `&lt;`: no raw HTML
//!   (an unclosed `<details>` could swallow the rest of the note) and no `<!--` that could forge
//!   our marker. Inside code, `<!--` is broken with a zero-width space for the same reason.
//! - **Structure.** Line breaks are normalised to `\n` (a lone `\r` or U+2028 must not hide a
//!   line start), control and bidirectional-override characters are removed, an unclosed code
//!   fence is closed, and sizes are capped.
//!
//! Paths and other text GitLab gave us go through the same functions, since file names can hold
//! newlines and `@`.

use std::fmt::{self, Write as _};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::review::marker::MARKER_CLOSE;
pub use crate::review::marker::{HeadSha, InvalidHeadSha, Marker, MarkerKind, find_marker};
use crate::review::{
    anchor::{Position, UnanchoredReason},
    finding::{Finding, Severity},
    review_type::ReviewType,
    skip::SkippedFile,
};

/// Zero-width space: breaks a token for GitLab's parsers, invisible when rendered.
const ZWSP: char = '\u{200b}';

/// Longest title shown, in characters.
const MAX_TITLE_CHARS: usize = 200;
/// Longest finding body in an inline comment, in characters.
const MAX_BODY_CHARS: usize = 6_000;
/// Longest suggestion, in characters and lines. A suggestion replaces one line; anything
/// bigger is a rewrite better shown as plain code, or a runaway answer.
const MAX_SUGGESTION_CHARS: usize = 4_000;
const MAX_SUGGESTION_LINES: usize = 60;
/// Longest single chunk summary, and all of them together, in characters.
const MAX_CHUNK_SUMMARY_CHARS: usize = 3_000;
const MAX_SUMMARIES_CHARS: usize = 20_000;
/// Most entries listed per summary section; the rest are counted. Keeps the note readable and
/// far under GitLab's 1,000,000-character limit even for MRs with thousands of files.
const MAX_LISTED_FINDINGS: usize = 50;
const MAX_LISTED_FILES: usize = 200;
const MAX_LISTED_CHUNKS: usize = 100;
/// Longest path shown, in characters.
const MAX_PATH_CHARS: usize = 300;
/// Longest failure reason shown, in characters.
const MAX_REASON_CHARS: usize = 500;

/// Sanitises Markdown written by the model (see the module docs) and caps it at `max_chars`
/// characters of input, marking the cut.
pub fn sanitize(text: &str, max_chars: usize) -> String {
    let normalised = normalise_text(text);
    let (kept, cut) = truncate_chars(normalised.trim_end(), max_chars);
    let mut out = String::with_capacity(kept.len() + 16);
    let mut fence: Option<Fence> = None;
    for (i, line) in kept.split('\n').enumerate() {
        if i > 0 {
            out.push('\n');
        }
        let trimmed = line.trim_start();
        let indent = &line[..line.len() - trimmed.len()];
        let columns = indent_columns(indent);
        match &fence {
            Some(open) if open.is_closed_by(trimmed) => {
                // Only fence characters and whitespace: nothing to escape.
                fence = None;
                out.push_str(line);
                continue;
            }
            // CommonMark opens a fence only with at most three columns of indentation; deeper,
            // it is an indented code block that ends at the first unindented line.
            None if columns <= 3 => {
                if let Some(open) = Fence::opened_by(trimmed) {
                    fence = Some(open);
                    out.push_str(indent);
                    escape_code(trimmed, &mut out);
                    continue;
                }
            }
            _ => {}
        }
        out.push_str(indent);
        if trimmed.starts_with('/') {
            // A backslash shows literally in code; an indented line may be code (or, inside a
            // list item, prose), so it gets the zero-width space that works in both.
            out.push(if fence.is_some() || columns >= 4 {
                ZWSP
            } else {
                '\\'
            });
        }
        if fence.is_some() {
            escape_code(trimmed, &mut out);
        } else {
            // Indented lines are escaped as prose too: they are code only outside lists, and
            // over-escaping code is cosmetic while under-escaping prose is not.
            escape_prose(trimmed, &mut out);
        }
    }
    if let Some(open) = fence {
        out.push('\n');
        out.push_str(&open.closer());
    }
    if cut {
        out.push_str("\n\n_(truncated)_");
    }
    out
}

/// [`sanitize`] for text that must stay on one line (titles, paths): line breaks become spaces.
pub fn sanitize_inline(text: &str, max_chars: usize) -> String {
    let one_line: String = normalise_text(text)
        .chars()
        .map(|c| if c == '\n' { ' ' } else { c })
        .collect();
    let (kept, cut) = truncate_chars(one_line.trim(), max_chars);
    let mut out = String::with_capacity(kept.len() + 4);
    if kept.starts_with('/') {
        out.push('\\');
    }
    escape_prose(kept, &mut out);
    if cut {
        out.push('…');
    }
    out
}

/// `text` as an inline code span, sanitised: for paths.
pub(crate) fn code_span(text: &str, max_chars: usize) -> String {
    let one_line: String = normalise_text(text)
        .chars()
        .map(|c| if c == '\n' { ' ' } else { c })
        .collect();
    let (kept, cut) = truncate_chars(&one_line, max_chars);
    let ticks = "`".repeat(longest_run(kept, '`') + 1);
    let pad = if kept.starts_with('`') || kept.ends_with('`') {
        " "
    } else {
        ""
    };
    let mut out = format!("{ticks}{pad}");
    escape_code(kept, &mut out);
    if cut {
        out.push('…');
    }
    let _ = write!(out, "{pad}{ticks}");
    out
}

/// Line breaks of every kind become `\n`; control characters (other than tab) and
/// bidirectional overrides are dropped.
fn normalise_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\r' => {
                if chars.peek() == Some(&'\n') {
                    chars.next();
                }
                out.push('\n');
            }
            '\n' | '\u{0b}' | '\u{0c}' | '\u{85}' | '\u{2028}' | '\u{2029}' => out.push('\n'),
            '\t' => out.push('\t'),
            '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' => {}
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

/// The first `max` characters and whether anything was cut.
fn truncate_chars(text: &str, max: usize) -> (&str, bool) {
    match text.char_indices().nth(max) {
        Some((end, _)) => (&text[..end], true),
        None => (text, false),
    }
}

fn indent_columns(indent: &str) -> usize {
    indent.chars().map(|c| if c == '\t' { 4 } else { 1 }).sum()
}

fn longest_run(text: &str, wanted: char) -> usize {
    let mut longest = 0;
    let mut current = 0;
    for c in text.chars() {
        if c == wanted {
            current += 1;
            longest = longest.max(current);
        } else {
            current = 0;
        }
    }
    longest
}

/// An open fenced code block: its character and length.
struct Fence {
    marker: char,
    len: usize,
}

impl Fence {
    /// CommonMark's rule: three or more backticks or tildes; a backtick fence's info string
    /// may not contain a backtick (otherwise the line is an inline code span).
    fn opened_by(trimmed: &str) -> Option<Fence> {
        let marker = trimmed.chars().next().filter(|c| matches!(c, '`' | '~'))?;
        let len = trimmed.chars().take_while(|&c| c == marker).count();
        let info = &trimmed[len..];
        let valid = len >= 3 && !(marker == '`' && info.contains('`'));
        valid.then_some(Fence { marker, len })
    }

    fn is_closed_by(&self, trimmed: &str) -> bool {
        let len = trimmed.chars().take_while(|&c| c == self.marker).count();
        len >= self.len && trimmed[len * self.marker.len_utf8()..].trim().is_empty()
    }

    fn closer(&self) -> String {
        self.marker.to_string().repeat(self.len)
    }
}

fn is_name_char(c: char) -> bool {
    c.is_alphanumeric() || matches!(c, '_' | '.' | '-')
}

/// Code: shown literally, so only mentions and comment openers are broken.
fn escape_code(text: &str, out: &mut String) {
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        out.push(c);
        match c {
            '@' if chars.peek().is_some_and(|&n| is_name_char(n)) => out.push(ZWSP),
            '<' if chars.peek() == Some(&'!') => out.push(ZWSP),
            _ => {}
        }
    }
}

/// Prose: inline code spans are treated as code; elsewhere raw HTML is escaped and mentions
/// broken.
fn escape_prose(text: &str, out: &mut String) {
    let mut rest = text;
    while let Some(c) = rest.chars().next() {
        if c == '`' {
            let ticks = rest.chars().take_while(|&t| t == '`').count();
            let after = &rest[ticks..];
            if let Some(close) = find_closing_ticks(after, ticks) {
                out.push_str(&rest[..ticks]);
                escape_code(&after[..close], out);
                out.push_str(&rest[..ticks]);
                rest = &after[close + ticks..];
            } else {
                out.push_str(&rest[..ticks]);
                rest = after;
            }
            continue;
        }
        let next = rest[c.len_utf8()..].chars().next();
        if c == '\\' && next == Some('`') {
            // An escaped backtick opens no code span.
            out.push_str("\\`");
            rest = &rest[2..];
            continue;
        }
        match c {
            '<' if next
                .is_some_and(|n| n.is_ascii_alphabetic() || matches!(n, '/' | '!' | '?')) =>
            {
                out.push_str("&lt;");
            }
            '@' if next.is_some_and(is_name_char) => {
                out.push('@');
                out.push(ZWSP);
            }
            c => out.push(c),
        }
        rest = &rest[c.len_utf8()..];
    }
}

/// Byte offset in `text` of a run of exactly `ticks` backticks.
fn find_closing_ticks(text: &str, ticks: usize) -> Option<usize> {
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'`' {
            let run = bytes[i..].iter().take_while(|&&b| b == b'`').count();
            if run == ticks {
                return Some(i);
            }
            i += run;
        } else {
            i += 1;
        }
    }
    None
}

/// Last line of defence for bodies we assemble: any line whose first non-blank character is
/// `/` gets a zero-width space before it. Sanitised parts never trigger it; it exists so that a
/// future formatting mistake cannot post a quick action.
pub(crate) fn guard_quick_actions(body: String) -> String {
    if !body.split('\n').any(|l| l.trim_start().starts_with('/')) {
        return body;
    }
    body.split('\n')
        .map(|line| {
            let trimmed = line.trim_start();
            if trimmed.starts_with('/') {
                format!("{}{ZWSP}{trimmed}", &line[..line.len() - trimmed.len()])
            } else {
                line.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn severity_badge(severity: Severity) -> &'static str {
    match severity {
        Severity::Critical => "🔴 Critical",
        Severity::Major => "🟠 Major",
        Severity::Minor => "🟡 Minor",
        Severity::Info => "🔵 Info",
    }
}

/// The body of one inline discussion: severity and title, the explanation, the suggestion (as a
/// GitLab ```` ```suggestion:-0+0 ```` block when it can be applied safely, as plain code
/// otherwise), and the marker.
pub fn inline_comment(finding: &Finding, position: &Position, marker: &Marker) -> String {
    let mut body = format!(
        "**{}:** {}",
        severity_badge(finding.severity),
        sanitize_inline(&finding.title, MAX_TITLE_CHARS)
    );
    let explanation = sanitize(&finding.body, MAX_BODY_CHARS);
    if !explanation.is_empty() {
        body.push_str("\n\n");
        body.push_str(&explanation);
    }
    if let Some(code) = &finding.suggestion {
        body.push_str("\n\n");
        body.push_str(&suggestion_block(code, finding, position));
    }
    body.push_str("\n\n");
    body.push_str(&marker.to_string());
    guard_quick_actions(body)
}

/// Why a suggestion is shown as plain code rather than as an applicable GitLab suggestion.
fn suggestion_obstacle(code: &str, finding: &Finding, position: &Position) -> Option<&'static str> {
    if position.new_line.is_none() {
        return Some("it is about a removed line");
    }
    if finding.line_end.is_some() {
        return Some("it spans several lines");
    }
    if code.chars().count() > MAX_SUGGESTION_CHARS || code.lines().count() > MAX_SUGGESTION_LINES {
        return Some("it is too long");
    }
    if code.lines().any(|l| l.trim_start().starts_with('/')) {
        return Some("some lines start with `/`, which GitLab could run as quick actions");
    }
    if code.contains("<!--") || has_mass_mention(code) {
        return Some("it contains text GitLab would interpret");
    }
    None
}

/// `@all`, `@here`, `@channel` or `@everyone` as a whole word, in any case.
fn has_mass_mention(text: &str) -> bool {
    text.match_indices('@').any(|(i, _)| {
        let word: String = text[i + 1..]
            .chars()
            .take_while(|&c| is_name_char(c))
            .collect::<String>()
            .to_lowercase();
        matches!(word.as_str(), "all" | "here" | "channel" | "everyone")
    })
}

fn suggestion_block(raw: &str, finding: &Finding, position: &Position) -> String {
    let code = normalise_text(raw);
    let code = code
        .trim_end_matches(['\n', ' ', '\t'])
        .trim_start_matches('\n');
    let fence = "`".repeat(longest_run(code, '`').max(2) + 1);
    match suggestion_obstacle(code, finding, position) {
        None => format!("{fence}suggestion:-0+0\n{code}\n{fence}"),
        Some(reason) => {
            let (kept, _) = truncate_chars(code, MAX_SUGGESTION_CHARS);
            format!(
                "Suggested code (not offered as a one-click suggestion: {reason}):\n\n{}",
                sanitize(
                    &format!("{fence}\n{kept}\n{fence}"),
                    MAX_SUGGESTION_CHARS + 64
                )
            )
        }
    }
}

/// A chunk whose review failed for good (after retries).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailedChunk {
    /// 0-based chunk index.
    pub index: usize,
    /// Chunks in the plan.
    pub total: usize,
    /// Paths of the files in the chunk.
    pub paths: Vec<String>,
    /// What went wrong, for humans (e.g. "the model's answer contains no JSON object").
    pub reason: String,
}

fn more(body: &mut String, total: usize, shown: usize, what: &str) {
    if total > shown {
        let _ = write!(
            body,
            "\n_...and {} more {what} not listed._\n",
            total - shown
        );
    }
}

/// Longest body excerpt shown for a finding in the living summary's list, in characters.
const MAX_LISTED_EXCERPT_CHARS: usize = 300;
/// Longest settings problem shown, in characters.
const MAX_SETTINGS_PROBLEM_CHARS: usize = 1_000;
/// Most review rounds shown; older ones are counted. Twenty pushes is a long review.
const MAX_LISTED_ROUNDS: usize = 20;
/// Most paths named per failed part.
const MAX_PATHS_PER_PART: usize = 10;
/// Longest note body before the marker, in characters. GitLab refuses notes over 1,000,000
/// characters; every list is capped well below that, and this is the backstop for the sum of
/// the worst cases (every path and title at its cap, every character doubled by escaping).
const MAX_NOTE_CHARS: usize = 900_000;

/// Whether a review round looked at the whole merge request or only a push.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "scope")]
pub enum RoundKind {
    /// The whole merge request's diff.
    Full,
    /// Only what changed since an earlier reviewed head.
    Incremental {
        /// The head the previous round reviewed.
        since: HeadSha,
    },
}

/// One review round of a merge request: what it looked at and what it cost.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Round {
    /// The head commit reviewed.
    pub head_sha: HeadSha,
    /// Whole merge request or the push since an earlier head.
    pub kind: RoundKind,
    /// Files sent to the model.
    pub files_reviewed: usize,
    /// Prompts (chunks) the files took.
    pub chunks: usize,
    /// Prompt tokens the provider reported, retries included.
    pub prompt_tokens: u64,
    /// Completion tokens the provider reported, retries included.
    pub completion_tokens: u64,
    /// What the tokens cost, when the model's price is known.
    pub cost_usd: Option<f64>,
    /// When the round finished.
    pub at: DateTime<Utc>,
}

/// Why a finding is listed in the living summary instead of having its own thread.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "because")]
pub enum ListedBecause {
    /// It could not be anchored to a line of the diff.
    Unanchored(UnanchoredReason),
    /// Its round already had `max_inline_comments` more severe threads.
    OverInlineLimit {
        /// The limit in effect.
        max_inline_comments: usize,
    },
}

impl fmt::Display for ListedBecause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListedBecause::Unanchored(reason) => write!(f, "not attached: {reason}"),
            ListedBecause::OverInlineLimit {
                max_inline_comments: 0,
            } => f.write_str("inline comments are turned off"),
            ListedBecause::OverInlineLimit {
                max_inline_comments,
            } => write!(
                f,
                "over the limit of {max_inline_comments} inline comments per round"
            ),
        }
    }
}

/// An open finding listed in the living summary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListedFinding {
    /// The finding.
    pub finding: Finding,
    /// Why it has no thread.
    pub because: ListedBecause,
}

/// Everything the living summary note reports: one note per merge request and review type,
/// edited after every round, describing the review as it stands at the current head.
#[derive(Debug, Clone, PartialEq)]
pub struct LivingSummary {
    /// The review type.
    pub review_type: ReviewType,
    /// The head commit the latest round reviewed; the note's marker carries it.
    pub head_sha: HeadSha,
    /// The model's summary of each part the latest round reviewed, in order.
    pub latest_summaries: Vec<String>,
    /// Severities of the bot's inline threads still open (for the counts).
    pub open_inline: Vec<Severity>,
    /// Open findings without a thread, listed in the note.
    pub listed: Vec<ListedFinding>,
    /// The `min_severity` in effect.
    pub min_severity: Severity,
    /// Findings less severe than `min_severity`, counted but not shown.
    pub below_min_severity: usize,
    /// The rounds so far, newest first.
    pub rounds: Vec<Round>,
    /// Files the latest round did not review, with reasons.
    pub skipped: Vec<SkippedFile>,
    /// Parts the latest round could not review.
    pub failed_chunks: Vec<FailedChunk>,
    /// A problem with the project's settings, for humans (e.g. "`.reviewq.toml` line 3:
    /// unknown key `foo`; defaults used").
    pub settings_problem: Option<String>,
    /// Who paused reviews on push (`@bot pause`), while they are paused.
    pub paused_by: Option<String>,
}

/// The body of the living summary note: every piece of text from the model, the
/// repository or the settings is sanitised, no line starts with `/`, no `@` mention gets
/// through, the note stays under GitLab's size limit, and it ends with the summary marker of
/// the current head.
pub fn living_summary(report: &LivingSummary) -> String {
    let mut body = format!("## reviewq: {} review\n\n", report.review_type);
    body.push_str(&status_line(report));
    body.push('\n');

    if let Some(by) = &report.paused_by {
        let _ = write!(
            body,
            "\n> ⏸️ **Paused** by {}: pushes are not reviewed until someone mentions me with `resume`.\n",
            sanitize_inline(by, MAX_PATH_CHARS)
        );
    }
    if let Some(problem) = &report.settings_problem {
        let _ = write!(
            body,
            "\n> ⚠️ **Settings:** {}\n",
            sanitize_inline(problem, MAX_SETTINGS_PROBLEM_CHARS)
        );
    }

    push_summaries(&mut body, &report.latest_summaries);

    body.push('\n');
    body.push_str(&open_counts_line(report));
    body.push('\n');
    if report.below_min_severity > 0 {
        let _ = write!(
            body,
            "\n_{} less severe than {} not shown (`min_severity`)._\n",
            plural(report.below_min_severity, "finding", "findings"),
            report.min_severity
        );
    }

    if !report.listed.is_empty() {
        let _ = write!(
            body,
            "\n### Open findings without a thread ({})\n\n",
            report.listed.len()
        );
        let mut listed: Vec<&ListedFinding> = report.listed.iter().collect();
        listed.sort_by_key(|l| l.finding.severity);
        for item in listed.into_iter().take(MAX_LISTED_FINDINGS) {
            body.push_str(&listed_entry(item));
        }
        more(
            &mut body,
            report.listed.len(),
            MAX_LISTED_FINDINGS,
            "findings",
        );
    }

    if !report.rounds.is_empty() {
        push_rounds(&mut body, &report.rounds);
    }

    if !report.skipped.is_empty() {
        let _ = write!(
            body,
            "\n### Files not reviewed ({})\n\n",
            report.skipped.len()
        );
        for file in report.skipped.iter().take(MAX_LISTED_FILES) {
            let _ = writeln!(
                body,
                "- {}: {}",
                code_span(&file.path, MAX_PATH_CHARS),
                sanitize_inline(&file.reason.to_string(), MAX_REASON_CHARS)
            );
        }
        more(&mut body, report.skipped.len(), MAX_LISTED_FILES, "files");
    }

    if !report.failed_chunks.is_empty() {
        let _ = write!(
            body,
            "\n### Parts that could not be reviewed ({})\n\n",
            report.failed_chunks.len()
        );
        for chunk in report.failed_chunks.iter().take(MAX_LISTED_CHUNKS) {
            body.push_str(&failed_chunk_entry(chunk));
        }
        more(
            &mut body,
            report.failed_chunks.len(),
            MAX_LISTED_CHUNKS,
            "parts",
        );
    }

    let mut body = cap_note(body);
    body.push_str(&round_history_comment(&report.rounds));
    let marker = Marker::summary(report.review_type, report.head_sha.clone());
    let _ = write!(body, "\n{marker}");
    guard_quick_actions(body)
}

/// Opens the hidden comment that carries the rounds table's history on the summary note.
/// A comment of its own beside the summary marker rather than a field of it: older versions
/// reject a marker with an unknown field, and would then post a second summary note. Not
/// `reviewq:` either, which is every identity marker's prefix (the one counted for
/// duplicates).
const ROUNDS_OPEN: &str = "<!-- reviewq-rounds ";
/// Most rounds the hidden history keeps (newest first): about 250 characters each.
const MAX_REMEMBERED_ROUNDS: usize = 100;

/// The rounds, newest first, as a hidden comment, so that a review on a database without
/// them (a CI job on a fresh local cluster) still lists every round. Every value is a
/// number, a validated SHA, a date or a scope name, so the JSON cannot close the comment.
fn round_history_comment(rounds: &[Round]) -> String {
    let kept = &rounds[..rounds.len().min(MAX_REMEMBERED_ROUNDS)];
    match serde_json::to_string(kept) {
        Ok(json) if !json.contains("-->") => format!("\n{ROUNDS_OPEN}{json}{MARKER_CLOSE}"),
        _ => String::new(),
    }
}

/// The rounds history a summary note carries (newest first); empty when it has none (a
/// note written before the history existed) or it does not parse. Model text cannot forge
/// it: the sanitiser breaks every `<!--`.
pub fn find_round_history(body: &str) -> Vec<Round> {
    body.rfind(ROUNDS_OPEN)
        .and_then(|start| {
            let rest = &body[start + ROUNDS_OPEN.len()..];
            let json = &rest[..rest.find(MARKER_CLOSE)?];
            serde_json::from_str::<Vec<Round>>(json).ok()
        })
        .map(|mut rounds| {
            rounds.truncate(MAX_REMEMBERED_ROUNDS);
            rounds
        })
        .unwrap_or_default()
}

/// The first 8 characters of a SHA, as inline code.
fn short_sha(sha: &HeadSha) -> String {
    // A `HeadSha` is 40 or 64 ASCII hex characters, so the slice is in bounds and on a
    // character boundary.
    format!("`{}`", &sha.as_str()[..8])
}

/// "Reviewed up to `0123abcd` (round 3: changes since `89abcdef`)."
fn status_line(report: &LivingSummary) -> String {
    let mut line = format!("Reviewed up to {}", short_sha(&report.head_sha));
    if let Some(latest) = report.rounds.first() {
        let scope = match &latest.kind {
            RoundKind::Full => "the whole merge request".to_owned(),
            RoundKind::Incremental { since } => format!("changes since {}", short_sha(since)),
        };
        let _ = write!(line, " (round {}: {scope})", report.rounds.len());
    }
    line.push('.');
    line
}

fn push_summaries(body: &mut String, summaries: &[String]) {
    let mut left = MAX_SUMMARIES_CHARS;
    let mut omitted = 0;
    for summary in summaries {
        if summary.trim().is_empty() {
            continue;
        }
        if left == 0 {
            omitted += 1;
            continue;
        }
        let cap = MAX_CHUNK_SUMMARY_CHARS.min(left);
        left -= summary.chars().count().min(cap);
        let _ = write!(body, "\n{}\n", sanitize(summary, cap));
    }
    if omitted > 0 {
        let _ = write!(body, "\n_({omitted} more part summaries not shown.)_\n");
    }
}

fn open_counts_line(report: &LivingSummary) -> String {
    let mut counts = [0usize; Severity::ALL.len()];
    let severities = report
        .open_inline
        .iter()
        .copied()
        .chain(report.listed.iter().map(|l| l.finding.severity));
    for severity in severities {
        if let Some(i) = Severity::ALL.iter().position(|&s| s == severity) {
            counts[i] += 1;
        }
    }
    if counts.iter().all(|&n| n == 0) {
        return "**Open findings:** none.".to_owned();
    }
    let parts: Vec<String> = Severity::ALL
        .iter()
        .zip(counts)
        .map(|(s, n)| format!("{n} {s}"))
        .collect();
    format!(
        "**Open findings:** {} ({} in threads, {} listed below).",
        parts.join(" · "),
        report.open_inline.len(),
        report.listed.len()
    )
}

/// `- 🟠 Major · `src/app.rs` line 12 · **Title** (why)` and a one-line excerpt of the body.
fn listed_entry(item: &ListedFinding) -> String {
    let finding = &item.finding;
    let location = match (finding.path.trim(), finding.line.or(finding.old_line)) {
        ("", _) => "no file".to_owned(),
        (path, None) => code_span(path, MAX_PATH_CHARS),
        (path, Some(line)) => format!("{} line {line}", code_span(path, MAX_PATH_CHARS)),
    };
    let mut entry = format!(
        "- {} · {location} · **{}** ({})\n",
        severity_badge(finding.severity),
        sanitize_inline(&finding.title, MAX_TITLE_CHARS),
        sanitize_inline(&item.because.to_string(), MAX_REASON_CHARS)
    );
    let excerpt = sanitize_inline(&finding.body, MAX_LISTED_EXCERPT_CHARS);
    if !excerpt.is_empty() {
        let _ = writeln!(entry, "  {excerpt}");
    }
    entry
}

fn push_rounds(body: &mut String, rounds: &[Round]) {
    let _ = write!(
        body,
        "\n### Review rounds ({})\n\n\
         | Round | Finished | Head | Scope | Files | Parts | Tokens (prompt + completion) | Cost |\n\
         |--:|---|---|---|--:|--:|--:|--:|\n",
        rounds.len()
    );
    // Newest first, numbered from the oldest (round 1); past the cap, the oldest rows are
    // folded into one "earlier rounds" row so that the table keeps its size and its sums.
    let (listed, folded) = if rounds.len() > MAX_LISTED_ROUNDS {
        rounds.split_at(MAX_LISTED_ROUNDS - 1)
    } else {
        (rounds, &[][..])
    };
    for (i, round) in listed.iter().enumerate() {
        let scope = match &round.kind {
            RoundKind::Full => "full".to_owned(),
            RoundKind::Incremental { since } => format!("since {}", short_sha(since)),
        };
        let _ = writeln!(
            body,
            "| {} | {} | {} | {scope} | {} | {} | {} + {} | {} |",
            rounds.len() - i,
            round.at.format("%Y-%m-%d %H:%M UTC"),
            short_sha(&round.head_sha),
            round.files_reviewed,
            round.chunks,
            grouped(round.prompt_tokens),
            grouped(round.completion_tokens),
            round.cost_usd.map_or_else(|| "unknown".to_owned(), dollars),
        );
    }
    if !folded.is_empty() {
        let (prompt, completion, cost) = token_sums(folded);
        let _ = writeln!(
            body,
            "| 1–{} | {} | | | {} | {} | {} + {} | {cost} |",
            folded.len(),
            plural(folded.len(), "earlier round", "earlier rounds"),
            folded.iter().map(|r| r.files_reviewed).sum::<usize>(),
            folded.iter().map(|r| r.chunks).sum::<usize>(),
            grouped(prompt),
            grouped(completion),
        );
    }
    let (prompt, completion, cost) = token_sums(rounds);
    let _ = write!(
        body,
        "\n**Total:** {} prompt + {} completion tokens; {cost}.\n",
        grouped(prompt),
        grouped(completion)
    );
}

/// Prompt and completion tokens of `rounds`, and their cost as shown (unknown, or partly).
fn token_sums(rounds: &[Round]) -> (u64, u64, String) {
    let prompt: u64 = rounds.iter().map(|r| r.prompt_tokens).sum();
    let completion: u64 = rounds.iter().map(|r| r.completion_tokens).sum();
    let cost: f64 = rounds.iter().filter_map(|r| r.cost_usd).sum();
    let cost = match rounds.iter().filter(|r| r.cost_usd.is_some()).count() {
        0 => "cost unknown".to_owned(),
        n if n == rounds.len() => dollars(cost),
        _ => format!("{} for the rounds with a known price", dollars(cost)),
    };
    (prompt, completion, cost)
}

fn failed_chunk_entry(chunk: &FailedChunk) -> String {
    let paths: Vec<String> = chunk
        .paths
        .iter()
        .take(MAX_PATHS_PER_PART)
        .map(|p| code_span(p, MAX_PATH_CHARS))
        .collect();
    let extra = chunk.paths.len().saturating_sub(paths.len());
    let extra = if extra > 0 {
        format!(" and {extra} more")
    } else {
        String::new()
    };
    format!(
        "- Part {} of {} ({}{extra}): {}\n",
        chunk.index.saturating_add(1),
        chunk.total,
        paths.join(", "),
        sanitize_inline(&chunk.reason, MAX_REASON_CHARS)
    )
}

/// `body` cut at the last line break within [`MAX_NOTE_CHARS`], with a note, if longer.
fn cap_note(body: String) -> String {
    let (kept, cut) = truncate_chars(&body, MAX_NOTE_CHARS);
    if !cut {
        return body;
    }
    let mut capped = kept[..kept.rfind('\n').unwrap_or(kept.len())].to_owned();
    capped.push_str("\n\n_(The rest of this note was cut to stay within GitLab's size limit.)_\n");
    capped
}

/// `1,234,567`.
fn grouped(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// `$1.23`, or `$0.0042` for amounts under a cent; `unknown` for a value that is not a
/// non-negative finite number.
fn dollars(amount: f64) -> String {
    if !amount.is_finite() || amount < 0.0 {
        return "unknown".to_owned();
    }
    if amount < 0.01 {
        format!("${amount:.4}")
    } else {
        format!("${amount:.2}")
    }
}

/// `1 finding`, `3 findings`.
fn plural(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::review::{
        anchor::Anchor, identity::FindingKey, identity::Fingerprint, skip::SkipReason,
    };

    const SHA: &str = "0123456789abcdef0123456789abcdef01234567";

    fn head() -> HeadSha {
        HeadSha::parse(SHA).expect("valid sha")
    }

    fn lines_start_safely(text: &str) -> bool {
        text.split('\n').all(|l| !l.trim_start().starts_with('/'))
    }

    fn finding(body: &str, suggestion: Option<&str>) -> Finding {
        Finding {
            path: "src/app.rs".into(),
            line: Some(11),
            line_end: None,
            old_line: None,
            severity: Severity::Major,
            title: "Unchecked input".into(),
            body: body.into(),
            suggestion: suggestion.map(str::to_owned),
        }
    }

    fn added(line: u32) -> Position {
        Position {
            old_path: "src/app.rs".into(),
            new_path: "src/app.rs".into(),
            old_line: None,
            new_line: Some(line),
        }
    }

    fn marker_for(finding: &Finding, position: &Position) -> Marker {
        Marker::finding(
            ReviewType::General,
            head(),
            FindingKey::derive(
                ReviewType::General,
                finding,
                &Anchor::Inline(position.clone()),
            ),
            None,
        )
    }

    #[test]
    fn quick_actions_in_prose_are_escaped_with_a_backslash() {
        let out = sanitize("Looks good.\n/merge\n  /approve now", 1000);
        assert_eq!(out, "Looks good.\n\\/merge\n  \\/approve now");
    }

    #[test]
    fn quick_actions_in_code_are_escaped_with_a_zero_width_space() {
        let out = sanitize("```rust\n// comment\n```\n    /close", 1000);
        assert_eq!(out, "```rust\n\u{200b}// comment\n```\n    \u{200b}/close");
    }

    #[test]
    fn lone_carriage_returns_and_unicode_separators_cannot_hide_a_quick_action() {
        for text in [
            "ok\r/merge",
            "ok\u{2028}/merge",
            "ok\u{85}/merge",
            "ok\r\n/merge",
        ] {
            let out = sanitize(text, 1000);
            assert!(lines_start_safely(&out), "{out:?}");
            assert!(!out.contains('\r'));
        }
    }

    #[test]
    fn mentions_are_neutralised_but_emails_and_prose_stay_readable() {
        let out = sanitize("cc @all and @here, ping @alice; mail a@b.c", 1000);
        assert!(!out.contains("@all") && !out.contains("@here") && !out.contains("@alice"));
        assert_eq!(
            out.replace(ZWSP, ""),
            "cc @all and @here, ping @alice; mail a@b.c"
        );
    }

    #[test]
    fn raw_html_is_escaped_outside_code_and_kept_inside() {
        let out = sanitize("<details>x</details> a < b `Vec<u8>`", 1000);
        assert_eq!(out, "&lt;details>x&lt;/details> a < b `Vec<u8>`");
    }

    #[test]
    fn an_unclosed_code_fence_is_closed() {
        let out = sanitize("text\n````\ncode", 1000);
        assert_eq!(out, "text\n````\ncode\n````");
    }

    #[test]
    fn long_text_is_cut_and_marked() {
        let out = sanitize(&"a".repeat(50), 10);
        assert_eq!(out, format!("{}\n\n_(truncated)_", "a".repeat(10)));
    }

    #[test]
    fn markers_round_trip_through_note_bodies() {
        let summary = Marker::summary(ReviewType::Security, head());
        let text = summary.to_string();
        assert_eq!(
            text,
            format!("<!-- reviewq:v1 type=security head={SHA} summary -->")
        );
        assert_eq!(find_marker(&format!("Some note\n\n{text}")), Some(summary));
        assert_eq!(
            find_marker("<!-- reviewq:v1 type=nope head=1 summary -->"),
            None
        );
        assert_eq!(find_marker("no marker here"), None);
    }

    fn fingerprint() -> Fingerprint {
        Fingerprint::parse("0123456789abcdef").expect("valid fingerprint")
    }

    fn key() -> FindingKey {
        FindingKey::parse("09d44895009276a50ba29f2ca770a76e").expect("valid key")
    }

    #[test]
    fn finding_markers_carry_their_fingerprint_and_read_it_back() {
        let marker = Marker::finding(ReviewType::General, head(), key(), Some(fingerprint()));
        let text = marker.to_string();
        assert_eq!(
            text,
            format!(
                "<!-- reviewq:v1 type=general head={SHA} \
                 finding=09d44895009276a50ba29f2ca770a76e fp=0123456789abcdef -->"
            )
        );
        let back = find_marker(&format!("**🟠 Major:** t\n\n{text}")).expect("a marker");
        assert_eq!(back.fingerprint, Some(fingerprint()));
        assert_eq!(back.kind, MarkerKind::Finding(key()));
    }

    #[test]
    fn markers_posted_before_fingerprints_still_parse_and_match() {
        let old = format!(
            "<!-- reviewq:v1 type=general head={SHA} finding=09d44895009276a50ba29f2ca770a76e -->"
        );
        let parsed = find_marker(&old).expect("an old marker");
        assert_eq!(parsed.fingerprint, None);
        // The same comment, whichever version wrote it: retries after an upgrade find it.
        let new = Marker::finding(ReviewType::General, head(), key(), Some(fingerprint()));
        assert_eq!(parsed, new);
        let mut posted = std::collections::HashMap::new();
        posted.insert(parsed, 17);
        assert_eq!(posted.get(&new), Some(&17));
        // And an old-style marker renders exactly as before.
        assert_eq!(
            Marker::finding(ReviewType::General, head(), key(), None).to_string(),
            old
        );
    }

    #[test]
    fn malformed_or_misplaced_fingerprints_reject_the_marker() {
        for fields in [
            "summary fp=0123456789abcdef",
            "finding=09d44895009276a50ba29f2ca770a76e fp=XYZ",
            "finding=09d44895009276a50ba29f2ca770a76e fp=",
            "finding=09d44895009276a50ba29f2ca770a76e fp=0123456789abcdef0",
        ] {
            let text = format!("<!-- reviewq:v1 type=general head={SHA} {fields} -->");
            assert_eq!(find_marker(&text), None, "{fields}");
        }
        let summary = Marker {
            fingerprint: Some(fingerprint()),
            ..Marker::summary(ReviewType::General, head())
        };
        assert!(!summary.to_string().contains("fp="));
    }

    #[test]
    fn model_text_cannot_forge_a_marker() {
        let forged = format!("<!-- reviewq:v1 type=general head={SHA} summary -->");
        assert_eq!(find_marker(&sanitize(&forged, 1000)), None);
        assert_eq!(find_marker(&sanitize(&format!("`{forged}`"), 1000)), None);
        assert_eq!(
            find_marker(&sanitize(&format!("```\n{forged}\n```"), 1000)),
            None
        );
    }

    #[test]
    fn head_shas_must_be_full_length_hex() {
        assert!(HeadSha::parse(SHA).is_ok());
        assert_eq!(
            HeadSha::parse(&SHA.to_uppercase()).map(|s| s.to_string()),
            Ok(SHA.to_owned())
        );
        assert!(HeadSha::parse("abc1234").is_err());
        assert!(HeadSha::parse(&"g".repeat(40)).is_err());
    }

    #[test]
    fn inline_comment_has_severity_title_body_suggestion_and_marker() {
        let f = finding("Validate `id` first.", Some("    let id = parse(id)?;"));
        let position = added(11);
        let marker = marker_for(&f, &position);
        let body = inline_comment(&f, &position, &marker);
        assert_eq!(
            body,
            format!(
                "**🟠 Major:** Unchecked input\n\nValidate `id` first.\n\n\
                 ```suggestion:-0+0\n    let id = parse(id)?;\n```\n\n{marker}"
            )
        );
        assert_eq!(find_marker(&body), Some(marker));
    }

    #[test]
    fn suggestions_on_removed_lines_or_ranges_are_shown_as_plain_code() {
        let f = finding("b", Some("x"));
        let removed = Position {
            old_line: Some(3),
            new_line: None,
            ..added(0)
        };
        let body = inline_comment(&f, &removed, &marker_for(&f, &removed));
        assert!(!body.contains("suggestion:-0+0"));
        assert!(body.contains("it is about a removed line"));

        let mut ranged = finding("b", Some("x"));
        ranged.line_end = Some(20);
        let body = inline_comment(&ranged, &added(11), &marker_for(&ranged, &added(11)));
        assert!(body.contains("it spans several lines"));
    }

    #[test]
    fn suggestions_with_slash_lines_are_not_applicable_and_are_escaped() {
        let f = finding("b", Some("// explain\nlet x = 1;"));
        let body = inline_comment(&f, &added(11), &marker_for(&f, &added(11)));
        assert!(!body.contains("suggestion:-0+0"));
        assert!(lines_start_safely(&body), "{body}");
    }

    #[test]
    fn suggestions_containing_backtick_fences_get_a_longer_fence() {
        let f = finding("b", Some("let s = \"```\";"));
        let body = inline_comment(&f, &added(11), &marker_for(&f, &added(11)));
        assert!(
            body.contains("````suggestion:-0+0\nlet s = \"```\";\n````"),
            "{body}"
        );
    }

    fn sha(c: char) -> HeadSha {
        HeadSha::parse(&c.to_string().repeat(40)).expect("valid sha")
    }

    fn at(day: u32) -> DateTime<Utc> {
        use chrono::TimeZone;
        Utc.with_ymd_and_hms(2025, 3, day, 14, 5, 0)
            .single()
            .expect("valid date")
    }

    fn round(head: HeadSha, kind: RoundKind, day: u32, cost: Option<f64>) -> Round {
        Round {
            head_sha: head,
            kind,
            files_reviewed: 3,
            chunks: 2,
            prompt_tokens: 12_345,
            completion_tokens: 678,
            cost_usd: cost,
            at: at(day),
        }
    }

    fn living() -> LivingSummary {
        let mut over = finding("Second check missing.", None);
        over.severity = Severity::Minor;
        over.line = Some(40);
        let mut critical = finding("Token logged.", None);
        critical.severity = Severity::Critical;
        critical.title = "Secret in logs".into();
        LivingSummary {
            review_type: ReviewType::Security,
            head_sha: sha('b'),
            latest_summaries: vec!["Adds token refresh.".into()],
            open_inline: vec![Severity::Major, Severity::Major],
            listed: vec![
                ListedFinding {
                    finding: over,
                    because: ListedBecause::OverInlineLimit {
                        max_inline_comments: 10,
                    },
                },
                ListedFinding {
                    finding: critical,
                    because: ListedBecause::Unanchored(UnanchoredReason::LineNotInDiff {
                        line: Some(11),
                        old_line: None,
                    }),
                },
            ],
            min_severity: Severity::Minor,
            below_min_severity: 3,
            rounds: vec![
                round(
                    sha('b'),
                    RoundKind::Incremental { since: sha('a') },
                    2,
                    Some(0.004),
                ),
                round(sha('a'), RoundKind::Full, 1, Some(1.5)),
            ],
            skipped: vec![SkippedFile {
                path: "Cargo.lock".into(),
                reason: SkipReason::LockFile,
            }],
            failed_chunks: vec![FailedChunk {
                index: 0,
                total: 2,
                paths: vec!["src/a.rs".into()],
                reason: "the model's answer contains no JSON object".into(),
            }],
            settings_problem: Some(
                "`.reviewq.toml` line 3: unknown key `foo`; defaults used".into(),
            ),
            paused_by: None,
        }
    }

    #[test]
    fn a_paused_merge_request_says_so_and_by_whom() {
        let mut report = living();
        assert!(!living_summary(&report).contains("Paused"));
        report.paused_by = Some("alice".into());
        let body = living_summary(&report);
        assert!(body.contains("**Paused** by alice"), "{body}");
    }

    #[test]
    fn the_living_summary_reports_the_review_as_it_stands() {
        let body = living_summary(&living());
        let lines: Vec<&str> = body.lines().collect();
        for expected in [
            "## reviewq: security review",
            "Reviewed up to `bbbbbbbb` (round 2: changes since `aaaaaaaa`).",
            "> ⚠️ **Settings:** `.reviewq.toml` line 3: unknown key `foo`; defaults used",
            "Adds token refresh.",
            "**Open findings:** 1 critical · 2 major · 1 minor · 0 info (2 in threads, 2 listed below).",
            "_3 findings less severe than minor not shown (`min_severity`)._",
            "### Open findings without a thread (2)",
            "- 🔴 Critical · `src/app.rs` line 11 · **Secret in logs** (not attached: line 11 is not part of the diff)",
            "  Token logged.",
            "- 🟡 Minor · `src/app.rs` line 40 · **Unchecked input** (over the limit of 10 inline comments per round)",
            "### Review rounds (2)",
            "| 2 | 2025-03-02 14:05 UTC | `bbbbbbbb` | since `aaaaaaaa` | 3 | 2 | 12,345 + 678 | $0.0040 |",
            "| 1 | 2025-03-01 14:05 UTC | `aaaaaaaa` | full | 3 | 2 | 12,345 + 678 | $1.50 |",
            "**Total:** 24,690 prompt + 1,356 completion tokens; $1.50.",
            "- `Cargo.lock`: lock file",
            "- Part 1 of 2 (`src/a.rs`): the model's answer contains no JSON object",
        ] {
            assert!(
                lines.contains(&expected),
                "missing {expected:?} in:\n{body}"
            );
        }
        // Most severe first, whatever the order given.
        let critical = body.find("Secret in logs").expect("listed");
        let minor = body.find("**Unchecked input**").expect("listed");
        assert!(critical < minor);
        // Newest round first.
        assert!(body.find("2025-03-02").expect("row") < body.find("2025-03-01").expect("row"));
        // The marker is the current head's summary marker, at the very end.
        assert!(body.ends_with(&Marker::summary(ReviewType::Security, sha('b')).to_string()));
        assert_eq!(
            find_marker(&body),
            Some(Marker::summary(ReviewType::Security, sha('b')))
        );
    }

    #[test]
    fn a_living_summary_with_nothing_open_says_so() {
        let mut quiet = living();
        quiet.open_inline.clear();
        quiet.listed.clear();
        quiet.below_min_severity = 0;
        quiet.settings_problem = None;
        quiet.rounds.truncate(1);
        quiet.rounds[0].kind = RoundKind::Full;
        let body = living_summary(&quiet);
        assert!(
            body.lines().any(|l| l == "**Open findings:** none."),
            "{body}"
        );
        assert!(
            body.contains("(round 1: the whole merge request)."),
            "{body}"
        );
        assert!(!body.contains("### Open findings without a thread"));
        assert!(!body.contains("Settings"));
        assert!(!body.contains("not shown (`min_severity`)"));
    }

    #[test]
    fn the_summary_note_carries_its_rounds_for_a_database_without_them() {
        let report = living();
        let body = living_summary(&report);
        assert_eq!(find_round_history(&body), report.rounds);
        assert_eq!(
            find_marker(&body),
            Some(Marker::summary(report.review_type, report.head_sha.clone())),
            "the summary marker is still read"
        );
        assert!(find_round_history("no history here").is_empty());
        let forged = "<!-- reviewq-rounds [{\"head_sha\":\"x\"}] -->";
        assert!(
            find_round_history(forged).is_empty(),
            "a bad SHA rejects it"
        );
    }

    #[test]
    fn the_oldest_rounds_fold_into_one_numbered_row_and_the_totals_count_every_round() {
        let mut long = living();
        long.rounds = (0..25)
            .map(|i| {
                round(
                    sha('c'),
                    RoundKind::Full,
                    1 + i % 28,
                    (i % 2 == 0).then_some(0.5),
                )
            })
            .collect();
        let body = living_summary(&long);
        let rows: Vec<&str> = body.lines().filter(|l| l.contains("| 2025-")).collect();
        assert_eq!(rows.len(), 19, "{body}");
        assert!(rows[0].starts_with("| 25 | "), "{body}");
        assert!(rows[18].starts_with("| 7 | "), "{body}");
        // Rounds 1-6 (i = 0..6): three priced at $0.50, 6 × (12,345 + 678) tokens.
        assert!(
            body.contains("| 1–6 | 6 earlier rounds | | | 18 | 12 | 74,070 + 4,068 | $1.50 for the rounds with a known price |"),
            "{body}"
        );
        assert!(body.contains("| unknown |"), "{body}");
        assert!(
            body.contains("tokens; $6.50 for the rounds with a known price."),
            "{body}"
        );
    }

    #[test]
    fn a_zero_inline_limit_is_explained_as_turned_off() {
        assert_eq!(
            ListedBecause::OverInlineLimit {
                max_inline_comments: 0
            }
            .to_string(),
            "inline comments are turned off"
        );
    }

    #[test]
    fn hostile_text_in_a_living_summary_never_starts_a_line_with_a_slash() {
        let mut hostile = living();
        for item in &mut hostile.listed {
            item.finding.title = "/merge".into();
            item.finding.path = "\n/approve\n".into();
            item.finding.body = "/close\n@all".into();
        }
        hostile.settings_problem = Some("\n/merge @all\r/approve".into());
        hostile.latest_summaries = vec!["/unassign\n```\n/merge\n".into()];
        hostile.skipped[0].path = "x\n/merge".into();
        hostile.failed_chunks[0].reason = "\u{2028}/close".into();
        hostile.failed_chunks[0].paths = vec!["/a\n/b".into()];
        let body = living_summary(&hostile);
        assert!(lines_start_safely(&body), "{body}");
        assert!(!body.contains("@all"), "{body}");
        assert!(!body.contains('\r'));
        assert_eq!(
            find_marker(&body),
            Some(Marker::summary(ReviewType::Security, sha('b')))
        );
    }

    #[test]
    fn a_living_summary_of_the_worst_case_stays_under_gitlabs_limit() {
        // The text that grows most when escaped: `<a` becomes `&lt;a` in prose, `@a` gets a
        // zero-width space in code spans.
        let prose = "<a".repeat(5_000);
        let path = "@a".repeat(5_000);
        let mut huge = living();
        huge.listed = vec![huge.listed[0].clone(); 10_000];
        for item in &mut huge.listed {
            item.finding.title = prose.clone();
            item.finding.path = path.clone();
            item.finding.body = prose.clone();
        }
        huge.skipped = (0..10_000)
            .map(|_| SkippedFile {
                path: path.clone(),
                reason: SkipReason::IgnoredByPattern {
                    pattern: prose.clone(),
                },
            })
            .collect();
        huge.failed_chunks = (0..10_000)
            .map(|i| FailedChunk {
                index: i,
                total: 10_000,
                paths: vec![path.clone(); 50],
                reason: prose.clone(),
            })
            .collect();
        huge.latest_summaries = vec![prose.clone(); 1_000];
        huge.settings_problem = Some(prose.clone());
        huge.rounds = vec![huge.rounds[0].clone(); 10_000];
        let body = living_summary(&huge);
        let chars = body.chars().count();
        assert!(chars < 1_000_000, "{chars}");
        assert!(
            body.contains("cut to stay within GitLab's size limit"),
            "{chars}"
        );
        assert!(lines_start_safely(&body));
        assert_eq!(
            find_marker(&body),
            Some(Marker::summary(ReviewType::Security, sha('b')))
        );
    }

    #[test]
    fn numbers_and_costs_are_formatted_for_humans() {
        assert_eq!(grouped(0), "0");
        assert_eq!(grouped(999), "999");
        assert_eq!(grouped(1_000), "1,000");
        assert_eq!(grouped(1_234_567), "1,234,567");
        assert_eq!(dollars(0.0), "$0.0000");
        assert_eq!(dollars(0.0123), "$0.01");
        assert_eq!(dollars(12.345), "$12.35");
        assert_eq!(dollars(f64::NAN), "unknown");
        assert_eq!(dollars(-1.0), "unknown");
    }

    proptest! {
        #[test]
        fn living_summaries_are_safe_whatever_the_text(
            title in any::<String>(),
            path in any::<String>(),
            body in any::<String>(),
            problem in any::<String>(),
            summary in any::<String>(),
        ) {
            let mut report = living();
            for item in &mut report.listed {
                item.finding.title = title.clone();
                item.finding.path = path.clone();
                item.finding.body = body.clone();
            }
            report.skipped[0].path = path.clone();
            report.settings_problem = Some(problem);
            report.latest_summaries = vec![summary];
            let out = living_summary(&report);
            prop_assert!(lines_start_safely(&out), "{:?}", out);
            prop_assert!(!out.to_lowercase().contains("@all"));
            prop_assert_eq!(
                find_marker(&out),
                Some(Marker::summary(ReviewType::Security, sha('b')))
            );
        }

        #[test]
        fn sanitised_text_never_starts_a_line_with_a_slash_or_mass_mentions(
            text in "([ \t/@`~<!\r\n\u{2028}a-zA-Z]|all|here|/merge|```|    ){0,60}",
        ) {
            let out = sanitize(&text, 10_000);
            prop_assert!(lines_start_safely(&out), "{:?}", out);
            let lower = out.to_lowercase();
            for mention in ["@all", "@here", "@channel"] {
                prop_assert!(!lower.contains(mention), "{:?}", out);
            }
            prop_assert!(find_marker(&out).is_none());
        }

        #[test]
        fn sanitising_arbitrary_text_is_safe(text in any::<String>(), max in 0usize..200) {
            for out in [sanitize(&text, max), sanitize_inline(&text, max)] {
                prop_assert!(lines_start_safely(&out));
                prop_assert!(!out.to_lowercase().contains("@all"));
                prop_assert!(!out.contains('\r'));
            }
        }

        #[test]
        fn inline_comments_always_carry_exactly_their_own_marker(
            title in any::<String>(),
            body in any::<String>(),
            suggestion in proptest::option::of(any::<String>()),
            line_end in proptest::option::of(1u32..100),
        ) {
            let mut f = finding(&body, suggestion.as_deref());
            f.title = title;
            f.line_end = line_end;
            let position = added(11);
            let marker = marker_for(&f, &position);
            let out = inline_comment(&f, &position, &marker);
            prop_assert!(lines_start_safely(&out), "{:?}", out);
            prop_assert_eq!(find_marker(&out), Some(marker));
        }
    }
}
