//! The body of one inline comment: severity, title, body, suggestion and the hidden marker.

use super::sanitize::{
    guard_quick_actions, is_name_char, longest_run, normalise_text, sanitize, sanitize_inline,
    truncate_chars,
};
use super::{MAX_BODY_CHARS, MAX_SUGGESTION_CHARS, MAX_SUGGESTION_LINES, MAX_TITLE_CHARS};
use crate::review::{
    anchor::Position,
    finding::{Finding, Severity},
    marker::Marker,
};

pub(super) fn severity_badge(severity: Severity) -> &'static str {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::review::{
        marker::find_marker,
        render::tests::{added, finding, lines_start_safely, marker_for},
    };
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
}
