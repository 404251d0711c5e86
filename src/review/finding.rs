//! The model's answer: parsing it tolerantly into findings. The key and fingerprint that
//! identify a finding are in [`identity`](crate::review::identity).
//!
//! The answer format is fixed by `interface.md`:
//! `{"summary": "...", "findings": [{"path", "line", "severity", "title", "body", "suggestion"}]}`.
//! Models wrap it in code fences, add prose around it, give `line` as `"42"` or `"37-48"`, invent
//! severities and leave fields out; all of that is accepted. An answer with no JSON object in it is
//! an [`AnswerError`], which the caller retries once and then reports as a failed chunk.

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

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

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

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
