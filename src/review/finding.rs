//! The model's answer: parsing it tolerantly into findings, and the stable key that identifies a
//! finding for de-duplication.
//!
//! The answer format is fixed by `interface.md`:
//! `{"summary": "...", "findings": [{"path", "line", "severity", "title", "body", "suggestion"}]}`.
//! Models wrap it in code fences, add prose around it, give `line` as `"42"` or `"37-48"`, invent
//! severities and leave fields out; all of that is accepted. An answer with no JSON object in it is
//! an [`AnswerError`], which the caller retries once and then reports as a failed chunk.

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::review::{
    anchor::{Anchor, anchored_line},
    diff::ParsedFile,
    review_type::ReviewType,
};

/// How bad a finding is. Ordered from most to least severe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// Security breach, data loss, crash or wrong results in normal use.
    Critical,
    /// A real bug or vulnerability under realistic conditions.
    Major,
    /// Limited impact.
    Minor,
    /// Worth knowing; no change required.
    Info,
}

impl Severity {
    /// Every severity, most severe first.
    pub const ALL: [Severity; 4] = [
        Severity::Critical,
        Severity::Major,
        Severity::Minor,
        Severity::Info,
    ];

    /// The name used in the answer format and in comments.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Critical => "critical",
            Severity::Major => "major",
            Severity::Minor => "minor",
            Severity::Info => "info",
        }
    }

    /// Reads a severity the way models write them: case-insensitive, with the common synonyms
    /// of other review bots' scales (`blocker`, `high`/`medium`/`low`, `error`/`warning`) mapped
    /// onto ours, and anything else treated as `info`, as `interface.md` requires.
    pub fn lenient(text: &str) -> Severity {
        match text.trim().to_ascii_lowercase().as_str() {
            "critical" | "blocker" => Severity::Critical,
            "major" | "high" | "error" => Severity::Major,
            "minor" | "medium" | "warning" => Severity::Minor,
            _ => Severity::Info,
        }
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One problem the model reported.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    /// The file as the model named it; empty if it named none. Matched against the diff by
    /// [`anchor`](crate::review::anchor::anchor).
    pub path: String,
    /// New-side line the finding is about (an added or unchanged line).
    pub line: Option<u32>,
    /// End of a cited range (`"37-48"` gives `line` 37, `line_end` 48). Kept so a suggestion is
    /// not offered as a replacement for the first line alone.
    pub line_end: Option<u32>,
    /// Old-side line, for a finding about a removed line.
    pub old_line: Option<u32>,
    /// How bad it is.
    pub severity: Severity,
    /// Short title. Never empty: derived from the body when the model gave none.
    pub title: String,
    /// Explanation, Markdown, unsanitised (sanitised at render time).
    pub body: String,
    /// Replacement code for the cited line, if the model offered one.
    pub suggestion: Option<String>,
}

/// A parsed answer for one chunk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Answer {
    /// The model's paragraph about the chunk (may be empty).
    pub summary: String,
    /// The usable findings, in the model's order.
    pub findings: Vec<Finding>,
    /// Entries of `findings` that could not be read: not objects, or no text at all.
    /// Reported in the summary so nothing vanishes silently.
    pub dropped_findings: usize,
    /// Readable findings beyond [`MAX_FINDINGS_PER_ANSWER`], not used. Reported in the
    /// summary under their own wording: they were cut, not unreadable.
    #[serde(default)]
    pub beyond_limit: usize,
}

impl Answer {
    /// Whether the answer holds so many findings that its chunk asked about too much code
    /// at once (see [`SPLIT_AT_FINDINGS`]).
    pub fn overflows(&self) -> bool {
        self.findings.len() + self.beyond_limit >= SPLIT_AT_FINDINGS
    }
}

/// Why an answer could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AnswerError {
    /// The reply was empty or whitespace.
    #[error("the model's answer is empty")]
    Empty,
    /// The reply is larger than [`MAX_ANSWER_BYTES`].
    #[error("the model's answer is {0} bytes, more than the {MAX_ANSWER_BYTES} accepted")]
    TooLarge(usize),
    /// No JSON object could be found in the reply.
    #[error("the model's answer contains no JSON object")]
    NoJson,
    /// JSON objects were found but none has `summary` or `findings`.
    #[error("the model's answer has no JSON object with \"summary\" or \"findings\"")]
    WrongShape,
}

/// Largest answer parsed. Far above any real answer (GLM-4.6 output is capped at 128k tokens,
/// about 500 KB), small enough that the scan below stays fast on junk.
pub const MAX_ANSWER_BYTES: usize = 2 * 1024 * 1024;

/// An answer with this many findings had more to say than one answer should hold: the prompt
/// asks for at most 10, most severe first, so a model that far past it was given too much
/// code at once and is likely to have left out more. Its chunk is split in two and each half
/// asked again (see [`chunk::split_for_findings`](crate::review::chunk::split_for_findings)).
pub const SPLIT_AT_FINDINGS: usize = 25;

/// Most findings used from one answer: a guard against runaway answers only, not a budget.
/// An answer is capped at 4,096 output tokens and the shortest useful finding (path, line,
/// severity, a few words of title and body) takes about 40, so no genuine answer reaches
/// 100. The rest of a longer answer is counted and named in the summary.
pub const MAX_FINDINGS_PER_ANSWER: usize = 100;

/// How many `{` positions are tried as the start of the answer object. Each try is a linear
/// parse, so this bounds the work on adversarial replies; real replies match on the first or
/// second try.
const MAX_OBJECT_CANDIDATES: usize = 32;

/// Parses the model's reply.
///
/// # Errors
/// [`AnswerError`] when the reply holds no usable JSON object.
pub fn parse_answer(reply: &str) -> Result<Answer, AnswerError> {
    find_object(reply, |o| {
        o.contains_key("summary") || o.contains_key("findings")
    })
    .map(|object| answer_from(&object))
}

/// The first JSON object in a model's reply that `wanted` accepts, past any reasoning
/// preamble, code fence or prose around it.
///
/// # Errors
/// [`AnswerError`]: empty, too large, no object, or none of the wanted shape.
pub(crate) fn find_object(
    reply: &str,
    wanted: impl Fn(&Map<String, Value>) -> bool,
) -> Result<Map<String, Value>, AnswerError> {
    if reply.len() > MAX_ANSWER_BYTES {
        return Err(AnswerError::TooLarge(reply.len()));
    }
    // Reasoning models may put their thinking, examples included, before the answer.
    let text = match reply.rfind("</think>") {
        Some(end) => &reply[end + "</think>".len()..],
        None => reply,
    };
    if text.trim().is_empty() {
        return Err(AnswerError::Empty);
    }

    let mut saw_object = false;
    for (start, _) in text.match_indices('{').take(MAX_OBJECT_CANDIDATES) {
        let mut values = serde_json::Deserializer::from_str(&text[start..]).into_iter::<Value>();
        if let Some(Ok(Value::Object(object))) = values.next() {
            saw_object = true;
            if wanted(&object) {
                return Ok(object);
            }
        }
    }
    Err(if saw_object {
        AnswerError::WrongShape
    } else {
        AnswerError::NoJson
    })
}

fn answer_from(object: &Map<String, Value>) -> Answer {
    let summary = object.get("summary").map(text_of).unwrap_or_default();
    let entries: Vec<&Value> = match object.get("findings") {
        Some(Value::Array(items)) => items.iter().collect(),
        Some(Value::Null) | None => Vec::new(),
        Some(single) => vec![single],
    };
    let mut findings = Vec::new();
    let (mut dropped, mut beyond_limit) = (0, 0);
    for entry in entries {
        match entry.as_object().and_then(finding_from) {
            Some(finding) if findings.len() < MAX_FINDINGS_PER_ANSWER => findings.push(finding),
            Some(_) => beyond_limit += 1,
            None => dropped += 1,
        }
    }
    Answer {
        summary,
        findings,
        dropped_findings: dropped,
        beyond_limit,
    }
}

/// The first present key among `keys`.
fn field<'a>(object: &'a Map<String, Value>, keys: &[&str]) -> Option<&'a Value> {
    keys.iter()
        .find_map(|k| object.get(*k).filter(|v| !v.is_null()))
}

fn finding_from(object: &Map<String, Value>) -> Option<Finding> {
    let text = |keys: &[&str]| field(object, keys).map(text_of).unwrap_or_default();
    let path = text(&["path", "file", "file_path", "filename"])
        .trim()
        .to_owned();
    let (line, line_end) = field(object, &["line", "new_line", "line_number"])
        .map(line_of)
        .unwrap_or_default();
    let (old_line, _) = field(object, &["old_line"])
        .map(line_of)
        .unwrap_or_default();
    let severity = field(object, &["severity", "level"])
        .map(|v| Severity::lenient(&text_of(v)))
        .unwrap_or(Severity::Info);
    let body = text(&["body", "comment", "description", "message", "explanation"])
        .trim()
        .to_owned();
    let mut title = text(&["title", "issue", "summary"]).trim().to_owned();
    if title.is_empty() {
        title = title_from_body(&body)?;
    }
    let suggestion = field(object, &["suggestion", "suggested_code", "fix"])
        .map(text_of)
        .filter(|s| !s.trim().is_empty());
    Some(Finding {
        path,
        line,
        line_end: line_end.filter(|&end| line.is_some_and(|start| end > start)),
        old_line,
        severity,
        title,
        body,
        suggestion,
    })
}

/// Longest title derived from a body, in characters.
const DERIVED_TITLE_CHARS: usize = 80;

/// The body's first line, cut to a title's length; `None` for an empty body.
fn title_from_body(body: &str) -> Option<String> {
    let first = body.lines().map(str::trim).find(|l| !l.is_empty())?;
    let mut title: String = first.chars().take(DERIVED_TITLE_CHARS).collect();
    if first.chars().count() > DERIVED_TITLE_CHARS {
        title.push('…');
    }
    Some(title)
}

/// A JSON value as text: strings as they are, anything else in its JSON form.
fn text_of(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// A cited line as `(start, end)`: `42`, `42.0`, `"42"`, `"L42"`, `"37-48"`, `"37–48"`,
/// `"37..48"`, `[37, 48]`. Zero and negative numbers are no line at all (GitLab has no line 0).
fn line_of(value: &Value) -> (Option<u32>, Option<u32>) {
    match value {
        Value::Number(n) => (number_to_line(n), None),
        Value::String(s) => line_of_text(s),
        Value::Array(items) => {
            let start = items.first().and_then(|v| line_of(v).0);
            let end = items.last().and_then(|v| line_of(v).0);
            (start, end.filter(|_| items.len() > 1))
        }
        _ => (None, None),
    }
}

fn number_to_line(n: &serde_json::Number) -> Option<u32> {
    if let Some(u) = n.as_u64() {
        return u32::try_from(u).ok().filter(|&l| l > 0);
    }
    let f = n.as_f64()?;
    (f.fract() == 0.0 && f >= 1.0 && f <= f64::from(u32::MAX)).then_some(f as u32)
}

fn line_of_text(text: &str) -> (Option<u32>, Option<u32>) {
    let (start, rest) = leading_number(text);
    let Some(start) = start else {
        return (None, None);
    };
    let rest = rest.trim_start_matches(|c: char| {
        c.is_whitespace() || matches!(c, '-' | '–' | '—' | '.' | 'L' | 'l')
    });
    let (end, _) = leading_number(rest);
    (Some(start), end)
}

/// The first run of ASCII digits in `text` (skipping any non-digits before it, such as `L` or
/// `line `) and what follows it.
fn leading_number(text: &str) -> (Option<u32>, &str) {
    let Some(begin) = text.find(|c: char| c.is_ascii_digit()) else {
        return (None, "");
    };
    let digits = &text[begin..];
    let len = digits
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(digits.len());
    let number = digits[..len].parse::<u32>().ok().filter(|&n| n > 0);
    (number, &digits[len..])
}

/// A stable identifier of a finding within a review, 32 lower-case hex characters.
///
/// It is what the outbox de-duplicates on (together with the MR and head commit) and what the
/// hidden marker carries, so it must come out the same for the same finding in any process, on
/// any machine, in any future build. It is therefore derived with SHA-256 (not `std`'s hasher,
/// whose output is randomised per process and unspecified across Rust versions) over a versioned,
/// length-prefixed encoding of:
///
/// - the review type (a security and a general review may both report the same line);
/// - where the finding lands: the anchored position's paths and line numbers, or, for a finding
///   that goes to the summary, the path and lines as the model gave them;
/// - the normalised title (lower-cased, punctuation and whitespace runs collapsed), or the
///   normalised body when the title is empty.
///
/// Severity, body wording and suggestion are left out on purpose: they vary between runs
/// of the model for what a human would call the same finding, and two findings with the same title
/// on the same line are the same finding. Changing any of this changes every key, so it is
/// versioned (`v1`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct FindingKey(String);

/// Hex characters in a key: 128 bits, plenty against accidental collisions within one MR.
const FINDING_KEY_HEX_LEN: usize = 32;

/// A string that is not a valid [`FindingKey`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid finding key {0:?}: expected {FINDING_KEY_HEX_LEN} lower-case hex characters")]
pub struct InvalidFindingKey(pub String);

impl FindingKey {
    /// Derives the key of `finding`, anchored at `anchor`, in a review of `review_type`.
    pub fn derive(review_type: ReviewType, finding: &Finding, anchor: &Anchor) -> FindingKey {
        let mut hasher = Sha256::new();
        let mut field = |value: &str| {
            hasher.update((value.len() as u64).to_be_bytes());
            hasher.update(value.as_bytes());
        };
        let number = |n: Option<u32>| n.map(|n| n.to_string()).unwrap_or_default();
        field("reviewq-finding-v1");
        field(review_type.as_str());
        match anchor {
            Anchor::Inline(position) => {
                field("inline");
                field(&position.old_path);
                field(&position.new_path);
                field(&number(position.old_line));
                field(&number(position.new_line));
            }
            Anchor::Summary(_) => {
                field("summary");
                field(finding.path.trim());
                field(&number(finding.old_line));
                field(&number(finding.line));
            }
        }
        field(&title_or_body(finding));
        FindingKey(hex_prefix(&hasher.finalize(), FINDING_KEY_HEX_LEN))
    }

    /// Parses a key read back from a marker or the database.
    ///
    /// # Errors
    /// [`InvalidFindingKey`] unless the text is exactly 32 lower-case hex characters.
    pub fn parse(text: &str) -> Result<FindingKey, InvalidFindingKey> {
        if is_lower_hex(text, FINDING_KEY_HEX_LEN) {
            Ok(FindingKey(text.to_owned()))
        } else {
            Err(InvalidFindingKey(text.to_owned()))
        }
    }

    /// The key's text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for FindingKey {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for FindingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for FindingKey {
    type Error = InvalidFindingKey;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        FindingKey::parse(&value)
    }
}

impl From<FindingKey> for String {
    fn from(key: FindingKey) -> String {
        key.0
    }
}

/// A head-independent identity of a finding, 16 lower-case hex characters, for recognising the
/// same finding across review rounds.
///
/// [`FindingKey`] includes line numbers, which shift whenever a push adds or removes lines
/// above the finding; the fingerprint leaves them out. It is SHA-256 over a versioned,
/// length-prefixed encoding of:
///
/// - the review type;
/// - the file's new path (for a finding that went to the summary, the path as the model gave
///   it);
/// - the normalised title (as for [`FindingKey`]), or the normalised body when the title is
///   empty;
/// - the trimmed text of the anchored line: the new text of an added or unchanged line, the
///   old text of a removed line; empty for a finding not anchored to a line.
///
/// So a finding survives a push that moves its line, and becomes a different finding when its
/// line is edited (reindenting aside) or it is reported under another title. Two findings with
/// the same title on two identical lines of one file share a fingerprint; that is accepted, the
/// fingerprint only tells "probably already reported". Versioned (`v1`) like the key.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Fingerprint(String);

/// Hex characters in a fingerprint: 64 bits, ample for the findings of one merge request, and
/// short enough to sit in every marker.
const FINGERPRINT_HEX_LEN: usize = 16;

/// A string that is not a valid [`Fingerprint`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid fingerprint {0:?}: expected {FINGERPRINT_HEX_LEN} lower-case hex characters")]
pub struct InvalidFingerprint(pub String);

impl Fingerprint {
    /// The fingerprint of `finding`, anchored at `anchor` in `files` (the reviewed files the
    /// anchor was computed from), in a review of `review_type`.
    pub fn derive(
        review_type: ReviewType,
        finding: &Finding,
        anchor: &Anchor,
        files: &[ParsedFile],
    ) -> Fingerprint {
        let (path, line_text) = match anchor {
            Anchor::Inline(position) => (
                position.new_path.as_str(),
                anchored_line(files, position).map_or("", |l| l.text.trim()),
            ),
            Anchor::Summary(_) => (finding.path.trim(), ""),
        };
        let mut hasher = Sha256::new();
        let mut field = |value: &str| {
            hasher.update((value.len() as u64).to_be_bytes());
            hasher.update(value.as_bytes());
        };
        field("reviewq-fingerprint-v1");
        field(review_type.as_str());
        field(path);
        field(&title_or_body(finding));
        field(line_text);
        Fingerprint(hex_prefix(&hasher.finalize(), FINGERPRINT_HEX_LEN))
    }

    /// Parses a fingerprint read back from a marker or the database.
    ///
    /// # Errors
    /// [`InvalidFingerprint`] unless the text is exactly 16 lower-case hex characters.
    pub fn parse(text: &str) -> Result<Fingerprint, InvalidFingerprint> {
        if is_lower_hex(text, FINGERPRINT_HEX_LEN) {
            Ok(Fingerprint(text.to_owned()))
        } else {
            Err(InvalidFingerprint(text.to_owned()))
        }
    }

    /// The fingerprint's text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for Fingerprint {
    type Error = InvalidFingerprint;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        Fingerprint::parse(&value)
    }
}

impl From<Fingerprint> for String {
    fn from(fingerprint: Fingerprint) -> String {
        fingerprint.0
    }
}

/// The normalised title, or the normalised body when the title normalises to nothing.
fn title_or_body(finding: &Finding) -> String {
    let title = normalise(&finding.title);
    if title.is_empty() {
        normalise(&finding.body)
    } else {
        title
    }
}

/// The first `len` hex characters of a digest.
fn hex_prefix(digest: &[u8], len: usize) -> String {
    digest
        .iter()
        .take(len / 2)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Exactly `len` characters of `0-9a-f`.
fn is_lower_hex(text: &str, len: usize) -> bool {
    text.len() == len && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Lower-case alphanumeric words separated by single spaces: `"Unchecked  *unwrap()*!"` and
/// `"unchecked unwrap"` normalise alike.
fn normalise(text: &str) -> String {
    let mut out = String::new();
    for word in text
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
    {
        if !out.is_empty() {
            out.push(' ');
        }
        out.extend(word.chars().flat_map(char::to_lowercase));
    }
    out
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::review::anchor::{Position, UnanchoredReason};

    const CLEAN: &str = r#"{"summary": "Adds a query.", "findings": [
        {"path": "src/app.rs", "line": 42, "severity": "critical",
         "title": "SQL injection", "body": "Use a bound parameter.", "suggestion": "query(id)"}]}"#;

    fn one(reply: &str) -> Finding {
        let answer = parse_answer(reply).expect("parses");
        assert_eq!(answer.findings.len(), 1, "{answer:?}");
        answer.findings.into_iter().next().expect("one finding")
    }

    #[test]
    fn a_clean_answer_parses_every_field() {
        let answer = parse_answer(CLEAN).expect("parses");
        assert_eq!(answer.summary, "Adds a query.");
        assert_eq!(
            answer.findings,
            vec![Finding {
                path: "src/app.rs".into(),
                line: Some(42),
                line_end: None,
                old_line: None,
                severity: Severity::Critical,
                title: "SQL injection".into(),
                body: "Use a bound parameter.".into(),
                suggestion: Some("query(id)".into()),
            }]
        );
        assert_eq!(answer.dropped_findings, 0);
    }

    #[test]
    fn code_fences_and_prose_around_the_object_are_ignored() {
        let reply =
            format!("Sure! Here is my review {{of sorts}}:\n```json\n{CLEAN}\n```\nHope it helps.");
        assert_eq!(parse_answer(&reply).expect("parses").findings.len(), 1);
    }

    #[test]
    fn thinking_before_the_answer_is_skipped() {
        let reply = format!("<think>maybe {{\"summary\": \"draft\"}}</think>\n{CLEAN}");
        assert_eq!(
            parse_answer(&reply).expect("parses").summary,
            "Adds a query."
        );
    }

    #[test]
    fn line_given_as_a_string_or_a_range_uses_the_first_number() {
        let f = one(r#"{"findings":[{"path":"a","line":"37-48","title":"t"}]}"#);
        assert_eq!((f.line, f.line_end), (Some(37), Some(48)));
        let f = one(r#"{"findings":[{"path":"a","line":"L12","title":"t"}]}"#);
        assert_eq!((f.line, f.line_end), (Some(12), None));
        let f = one(r#"{"findings":[{"path":"a","line":[5, 9],"title":"t"}]}"#);
        assert_eq!((f.line, f.line_end), (Some(5), Some(9)));
        let f = one(r#"{"findings":[{"path":"a","line":7.0,"title":"t"}]}"#);
        assert_eq!(f.line, Some(7));
    }

    #[test]
    fn zero_negative_and_huge_lines_are_no_line() {
        for line in ["0", "-3", "99999999999", "\"abc\"", "true"] {
            let f = one(&format!(
                r#"{{"findings":[{{"path":"a","line":{line},"title":"t"}}]}}"#
            ));
            assert_eq!(f.line, None, "{line}");
        }
    }

    #[test]
    fn removed_lines_are_cited_with_old_line() {
        let f = one(r#"{"findings":[{"path":"a","old_line":3,"title":"t"}]}"#);
        assert_eq!((f.line, f.old_line), (None, Some(3)));
    }

    #[test]
    fn unknown_severities_are_info_and_common_synonyms_are_mapped() {
        assert_eq!(Severity::lenient("CRITICAL"), Severity::Critical);
        assert_eq!(Severity::lenient("high"), Severity::Major);
        assert_eq!(Severity::lenient("medium"), Severity::Minor);
        assert_eq!(Severity::lenient("low"), Severity::Info);
        assert_eq!(Severity::lenient("catastrophic"), Severity::Info);
        let f = one(r#"{"findings":[{"path":"a","line":1,"title":"t"}]}"#);
        assert_eq!(f.severity, Severity::Info);
    }

    #[test]
    fn missing_optional_fields_are_tolerated_and_title_comes_from_the_body() {
        let f = one(r#"{"findings":[{"file":"a.py","comment":"Off by one.\nMore."}]}"#);
        assert_eq!(f.path, "a.py");
        assert_eq!(f.title, "Off by one.");
        assert_eq!(f.body, "Off by one.\nMore.");
        assert_eq!((f.line, f.suggestion), (None, None));
    }

    #[test]
    fn entries_without_any_text_are_dropped_and_counted() {
        let answer = parse_answer(r#"{"summary":"s","findings":[{"path":"a"}, 3, {"title":"t"}]}"#)
            .expect("parses");
        assert_eq!(answer.findings.len(), 1);
        assert_eq!(answer.dropped_findings, 2);
    }

    #[test]
    fn findings_beyond_the_hard_limit_are_counted_apart_from_unreadable_ones() {
        let mut items = vec![r#"{"title":"t"}"#; MAX_FINDINGS_PER_ANSWER + 5];
        items.push("3");
        let items = items.join(",");
        let answer = parse_answer(&format!(r#"{{"findings":[{items}]}}"#)).expect("parses");
        assert_eq!(answer.findings.len(), MAX_FINDINGS_PER_ANSWER);
        assert_eq!(answer.beyond_limit, 5);
        assert_eq!(answer.dropped_findings, 1, "only the number is unreadable");
        assert!(answer.overflows());
    }

    #[test]
    fn an_answer_overflows_from_the_split_threshold_on() {
        let answer = |n: usize| {
            let items = vec![r#"{"title":"t"}"#; n].join(",");
            parse_answer(&format!(r#"{{"findings":[{items}]}}"#)).expect("parses")
        };
        assert!(!answer(SPLIT_AT_FINDINGS - 1).overflows());
        assert!(answer(SPLIT_AT_FINDINGS).overflows());
        assert_eq!(answer(60).findings.len(), 60, "60 findings are all kept");
    }

    #[test]
    fn non_json_answers_are_rejected_clearly() {
        assert_eq!(parse_answer("  "), Err(AnswerError::Empty));
        assert_eq!(
            parse_answer("The code looks fine to me."),
            Err(AnswerError::NoJson)
        );
        assert_eq!(
            parse_answer(r#"{"verdict": "ok"}"#),
            Err(AnswerError::WrongShape)
        );
        assert_eq!(
            parse_answer(r#"{"summary": "truncated"#),
            Err(AnswerError::NoJson)
        );
    }

    #[test]
    fn an_answer_with_only_a_summary_has_no_findings() {
        let answer = parse_answer(r#"{"summary":"All good."}"#).expect("parses");
        assert!(answer.findings.is_empty());
    }

    fn finding(title: &str, body: &str) -> Finding {
        Finding {
            path: "src/app.rs".into(),
            line: Some(42),
            line_end: None,
            old_line: None,
            severity: Severity::Major,
            title: title.into(),
            body: body.into(),
            suggestion: None,
        }
    }

    fn inline(new_line: u32) -> Anchor {
        Anchor::Inline(Position {
            old_path: "src/app.rs".into(),
            new_path: "src/app.rs".into(),
            old_line: None,
            new_line: Some(new_line),
        })
    }

    #[test]
    fn finding_keys_are_stable_across_wording_severity_and_punctuation() {
        let a = FindingKey::derive(
            ReviewType::General,
            &finding("SQL injection!", "x"),
            &inline(42),
        );
        let mut other = finding("  sql   INJECTION ", "completely different body");
        other.severity = Severity::Critical;
        let b = FindingKey::derive(ReviewType::General, &other, &inline(42));
        assert_eq!(a, b);
        // Pinned so an accidental change of the derivation is caught: keys live in the
        // database and in posted comments. Reproduced independently with Python's hashlib:
        // sha256 over each field as an 8-byte big-endian length then its UTF-8 bytes, for
        // ["reviewq-finding-v1", "general", "inline", "src/app.rs", "src/app.rs", "", "42",
        // "sql injection"], first 16 bytes in hex.
        assert_eq!(a.as_str(), "09d44895009276a50ba29f2ca770a76e");
    }

    #[test]
    fn finding_keys_differ_by_review_type_line_and_title() {
        let base = FindingKey::derive(ReviewType::General, &finding("t", "b"), &inline(42));
        let other_type = FindingKey::derive(ReviewType::Security, &finding("t", "b"), &inline(42));
        let other_line = FindingKey::derive(ReviewType::General, &finding("t", "b"), &inline(43));
        let other_title = FindingKey::derive(ReviewType::General, &finding("u", "b"), &inline(42));
        let summary = FindingKey::derive(
            ReviewType::General,
            &finding("t", "b"),
            &Anchor::Summary(UnanchoredReason::UnknownPath),
        );
        let keys = [base, other_type, other_line, other_title, summary];
        for (i, a) in keys.iter().enumerate() {
            for b in &keys[i + 1..] {
                assert_ne!(a, b);
            }
        }
    }

    #[test]
    fn finding_keys_parse_only_their_own_format() {
        let key = FindingKey::derive(ReviewType::General, &finding("t", "b"), &inline(1));
        assert_eq!(FindingKey::parse(key.as_str()), Ok(key));
        assert!(FindingKey::parse("XYZ").is_err());
        assert!(FindingKey::parse(&"A".repeat(32)).is_err());
    }

    /// `src/app.rs` with an added line `text` at new line `start + 1`, between two context
    /// lines, and a removed line `gone` (old line `start + 1`) before it.
    fn app_file(start: u32, text: &str) -> Vec<ParsedFile> {
        vec![crate::review::diff::parse(&crate::review::diff::FileDiff {
            old_path: "src/app.rs".into(),
            new_path: "src/app.rs".into(),
            diff: format!("@@ -{start},3 +{start},3 @@\n a\n-gone\n+{text}\n b\n"),
            ..Default::default()
        })]
    }

    fn fingerprint_at(files: &[ParsedFile], title: &str, line: u32) -> (Fingerprint, FindingKey) {
        let mut f = finding(title, "body");
        f.line = Some(line);
        let anchor = crate::review::anchor::anchor(files, &f);
        assert!(matches!(anchor, Anchor::Inline(_)), "{anchor:?}");
        (
            Fingerprint::derive(ReviewType::General, &f, &anchor, files),
            FindingKey::derive(ReviewType::General, &f, &anchor),
        )
    }

    #[test]
    fn fingerprints_survive_a_push_that_moves_or_reindents_the_line() {
        let before = app_file(41, "    let id = input.parse().unwrap();");
        let after = app_file(44, "let id = input.parse().unwrap();");
        let (fp_before, key_before) = fingerprint_at(&before, "SQL injection!", 42);
        let (fp_after, key_after) = fingerprint_at(&after, "sql   injection", 45);
        assert_eq!(fp_before, fp_after);
        assert_ne!(key_before, key_after);
        // Pinned: fingerprints live in posted markers. Reproduced with Python's hashlib as for
        // the key, over ["reviewq-fingerprint-v1", "general", "src/app.rs", "sql injection",
        // "let id = input.parse().unwrap();"], first 8 bytes in hex.
        assert_eq!(fp_before.as_str(), "4531e9ac69c82cb5");
    }

    #[test]
    fn fingerprints_differ_by_line_text_title_type_and_path() {
        let files = app_file(41, "let id = input.parse().unwrap();");
        let (base, _) = fingerprint_at(&files, "t", 42);
        let (edited, _) = fingerprint_at(&app_file(41, "let id = input.parse()?;"), "t", 42);
        let (retitled, _) = fingerprint_at(&files, "u", 42);
        let mut f = finding("t", "body");
        f.line = Some(42);
        let anchor = crate::review::anchor::anchor(&files, &f);
        let security = Fingerprint::derive(ReviewType::Security, &f, &anchor, &files);
        f.path = "src/other.rs".into();
        let unanchored = Fingerprint::derive(
            ReviewType::General,
            &f,
            &Anchor::Summary(UnanchoredReason::UnknownPath),
            &files,
        );
        let all = [base, edited, retitled, security, unanchored];
        for (i, a) in all.iter().enumerate() {
            for b in &all[i + 1..] {
                assert_ne!(a, b);
            }
        }
    }

    #[test]
    fn a_removed_line_is_fingerprinted_by_its_old_text() {
        let files = app_file(41, "new text");
        let mut on_removed = finding("t", "b");
        (on_removed.line, on_removed.old_line) = (None, Some(42));
        let anchor = crate::review::anchor::anchor(&files, &on_removed);
        let fp = Fingerprint::derive(ReviewType::General, &on_removed, &anchor, &files);
        // The same removed line beside a different added line: same fingerprint.
        let other_files = app_file(41, "other new text");
        let other_anchor = crate::review::anchor::anchor(&other_files, &on_removed);
        let same = Fingerprint::derive(
            ReviewType::General,
            &on_removed,
            &other_anchor,
            &other_files,
        );
        assert_eq!(fp, same);
        let (on_added, _) = fingerprint_at(&files, "t", 42);
        assert_ne!(fp, on_added);
    }

    #[test]
    fn fingerprints_parse_only_their_own_format() {
        let (fp, _) = fingerprint_at(&app_file(1, "x"), "t", 2);
        assert_eq!(Fingerprint::parse(fp.as_str()), Ok(fp.clone()));
        let json = serde_json::to_string(&fp).expect("serializes");
        let back: Fingerprint = serde_json::from_str(&json).expect("deserializes");
        assert_eq!(back, fp);
        assert!(serde_json::from_str::<Fingerprint>("\"XYZ\"").is_err());
        for bad in ["", "XYZ", &"A".repeat(16), &"a".repeat(15), &"a".repeat(32)] {
            assert!(Fingerprint::parse(bad).is_err(), "{bad}");
        }
    }

    proptest! {
        #[test]
        fn parsing_arbitrary_replies_never_panics(reply in any::<String>()) {
            let _ = parse_answer(&reply);
        }

        #[test]
        fn parsing_json_shaped_noise_never_panics(
            reply in "[\\[\\]{}\":,0-9a-z \\-]{0,200}",
        ) {
            let _ = parse_answer(&format!("{{\"findings\": [{reply}"));
            let _ = parse_answer(&format!("{{\"summary\": {reply}}}"));
        }

        #[test]
        fn a_valid_answer_is_found_inside_any_surrounding_prose(
            before in "[^{]{0,100}",
            after in any::<String>(),
        ) {
            let answer = parse_answer(&format!("{before}{CLEAN}{after}"));
            prop_assert_eq!(answer.map(|a| a.findings.len()), Ok(1));
        }
    }
}
