//! The living summary note: the review as it stands (status, counts, open findings, skipped
//! files, failed chunks, rounds), and the round history it carries in a hidden comment.

use std::fmt::{self, Write as _};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::inline::severity_badge;
use super::sanitize::{code_span, guard_quick_actions, sanitize, sanitize_inline, truncate_chars};
use super::{
    MAX_CHUNK_SUMMARY_CHARS, MAX_LISTED_CHUNKS, MAX_LISTED_FILES, MAX_LISTED_FINDINGS,
    MAX_PATH_CHARS, MAX_REASON_CHARS, MAX_SUMMARIES_CHARS, MAX_TITLE_CHARS,
};
use crate::review::{
    anchor::UnanchoredReason,
    finding::{Finding, Severity},
    marker::{HeadSha, MARKER_CLOSE, Marker},
    review_type::ReviewType,
    skip::SkippedFile,
};

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
mod tests;
