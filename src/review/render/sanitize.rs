//! Sanitising model text (and paths GitLab gave us) before it is posted: see the
//! [module docs](super) for the rules.

use std::fmt::Write as _;

/// Zero-width space: breaks a token for GitLab's parsers, invisible when rendered.
const ZWSP: char = '\u{200b}';

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
pub(super) fn normalise_text(text: &str) -> String {
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
pub(super) fn truncate_chars(text: &str, max: usize) -> (&str, bool) {
    match text.char_indices().nth(max) {
        Some((end, _)) => (&text[..end], true),
        None => (text, false),
    }
}

fn indent_columns(indent: &str) -> usize {
    indent.chars().map(|c| if c == '\t' { 4 } else { 1 }).sum()
}

pub(super) fn longest_run(text: &str, wanted: char) -> usize {
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

pub(super) fn is_name_char(c: char) -> bool {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::review::render::tests::lines_start_safely;
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
}
