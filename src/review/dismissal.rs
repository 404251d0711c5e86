//! Recognising a human reply that rejects one of the bot's findings ("won't fix", "false
//! positive", "by design"), so later rounds do not report it again.
//!
//! Deliberately conservative: a missed dismissal costs a repeated finding, which a human can
//! dismiss again; a false one silently hides a finding someone meant to fix. So a phrase counts
//! only as a statement: not in a question ("is this a false positive?"), not negated ("this is
//! not by design"), not inside a quoted line (`> ...`, often the bot's own words) or code. There
//! is no slash command: a line starting with `/` is a GitLab quick action.

use crate::review::markdown::{lines_outside_fences, outside_inline_code};

/// One dismissal phrase, as lower-case words.
struct Phrase {
    /// The words, matched whole (`fix` does not match `fixing`).
    words: &'static [&'static str],
    /// The phrase must open its clause, optionally after `i` or `we`. For phrases that
    /// mean something else mid-sentence: "that won't do" rejects the *code*, "won't do" alone
    /// rejects the finding.
    leading: bool,
}

const fn anywhere(words: &'static [&'static str]) -> Phrase {
    Phrase {
        words,
        leading: false,
    }
}

const fn leading(words: &'static [&'static str]) -> Phrase {
    Phrase {
        words,
        leading: true,
    }
}

/// What a human writes to reject a finding.
const PHRASES: &[Phrase] = &[
    anywhere(&["wontfix"]),
    anywhere(&["won't", "fix"]),
    anywhere(&["wont", "fix"]),
    anywhere(&["will", "not", "fix"]),
    leading(&["won't", "do"]),
    leading(&["wont", "do"]),
    leading(&["will", "not", "do"]),
    anywhere(&["not", "a", "bug"]),
    anywhere(&["false", "positive"]),
    anywhere(&["by", "design"]),
    anywhere(&["intended"]),
    anywhere(&["intentional"]),
    anywhere(&["intentionally"]),
    anywhere(&["ignore", "this"]),
];

/// Words that, shortly before a phrase in the same clause, turn it around ("this is not by
/// design", "don't ignore this").
const NEGATIONS: &[&str] = &[
    "not", "no", "never", "isn't", "isnt", "wasn't", "wasnt", "aren't", "arent", "don't", "dont",
    "doesn't", "doesnt", "didn't", "didnt", "hardly",
];

/// How many words before a phrase are searched for a negation: enough for "I don't think this
/// is by design", short enough not to reach into an unrelated part of a long clause.
const NEGATION_WINDOW: usize = 4;

/// Subjects allowed before a leading phrase.
const SUBJECTS: &[&str] = &["i", "we"];

/// Whether a reply to one of the bot's findings rejects it: "won't fix", "wontfix", "won't
/// do", "not a bug", "false positive", "by design", "intended", "ignore this", in any case, as
/// a statement (see the module docs for what does not count).
pub fn dismisses(reply_body: &str) -> bool {
    statements(reply_body).any(|clause| {
        let words = words(&clause);
        PHRASES.iter().any(|phrase| said(&words, phrase))
    })
}

/// The reply's clauses that are statements: text outside code and quotes, split into sentences
/// at `.`, `!`, `?` and line breaks, sentences ending in `?` dropped, the rest split into
/// clauses at `,`, `;` and `:`.
fn statements(reply: &str) -> impl Iterator<Item = String> {
    let mut prose = String::with_capacity(reply.len());
    for line in lines_outside_fences(reply) {
        // Quotes are often the bot's own words; a line starting with `/` is a quick action
        // for GitLab, not a reply to read.
        let trimmed = line.trim_start();
        if trimmed.starts_with('>') || trimmed.starts_with('/') {
            continue;
        }
        for segment in outside_inline_code(line) {
            prose.push_str(segment);
            prose.push(' ');
        }
        prose.push('\n');
    }
    let mut sentences = Vec::new();
    let mut current = String::new();
    for c in prose.chars() {
        match c {
            '.' | '!' | '\n' => sentences.push(std::mem::take(&mut current)),
            // A question is not a dismissal: drop the sentence it ends.
            '?' => current.clear(),
            c => current.push(c),
        }
    }
    sentences.push(current);
    sentences.into_iter().flat_map(|s| {
        s.split([',', ';', ':'])
            .map(str::to_owned)
            .collect::<Vec<_>>()
    })
}

/// Lower-case words: letters, digits and apostrophes (typographic ones made straight);
/// everything else, hyphens and Markdown emphasis included, separates words.
fn words(clause: &str) -> Vec<String> {
    clause
        .to_lowercase()
        .replace(['\u{2019}', '\u{2018}', '\u{2bc}'], "'")
        .split(|c: char| !(c.is_alphanumeric() || c == '\''))
        .map(|w| w.trim_matches('\''))
        .filter(|w| !w.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Whether the clause says `phrase`, not negated.
fn said(words: &[String], phrase: &Phrase) -> bool {
    let n = phrase.words.len();
    (0..words.len().saturating_sub(n - 1)).any(|start| {
        let matches = words[start..start + n]
            .iter()
            .zip(phrase.words)
            .all(|(w, p)| w == p);
        if !matches {
            return false;
        }
        let before = &words[start.saturating_sub(NEGATION_WINDOW)..start];
        if before.iter().any(|w| NEGATIONS.contains(&w.as_str())) {
            return false;
        }
        // "intended to fix it" is a plan, not a verdict.
        if phrase.words == ["intended"] && words.get(start + 1).is_some_and(|w| w == "to") {
            return false;
        }
        !phrase.leading || start == 0 || (start == 1 && SUBJECTS.contains(&words[0].as_str()))
    })
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn replies_that_reject_a_finding_are_recognised() {
        let positives = [
            "Won't fix.",
            "won't fix, this path is only used in tests",
            "WONTFIX",
            "wontfix: legacy code",
            "Won’t fix",
            "**Won't fix** — we accept the risk.",
            "We won't fix this in this MR.",
            "Will not fix.",
            "won't-fix",
            "Won't do.",
            "I won't do that",
            "Not a bug.",
            "Thanks! That's not a bug though.",
            "This is a false positive",
            "false-positive, the value is validated upstream",
            "By design.",
            "This is by design: the cache is meant to be stale.",
            "Intended.",
            "This is intended behaviour",
            "Works as intended!",
            "The fallthrough is intentional",
            "I did that intentionally",
            "You can ignore this.",
            "Good point in general, but ignore this one",
            "No, this is intended",
            "Hmm? By design.",
        ];
        for reply in positives {
            assert!(dismisses(reply), "should dismiss: {reply:?}");
        }
    }

    #[test]
    fn replies_that_do_not_reject_a_finding_are_not() {
        let negatives = [
            "",
            "I will fix",
            "Good catch, will fix.",
            "Fixed in the next commit.",
            "won't fixing this break X?",
            "Won't this break the build?",
            "Is this a false positive?",
            "Is this intended?",
            "This is not a false positive, please fix it",
            "It isn't by design",
            "I don't think this is by design",
            "This was unintended",
            "I intended to fix it later",
            "Please don't ignore this",
            "That won't do, the query must be parameterised",
            "> This is a false positive\nWill fix, thanks",
            "The test is named `test_wontfix_handling`",
            "```\n// won't fix\n```\nFixing now",
            "/wontfix",
            "fixed by design review feedback? no",
        ];
        for reply in negatives {
            assert!(!dismisses(reply), "should not dismiss: {reply:?}");
        }
    }

    proptest! {
        #[test]
        fn arbitrary_replies_never_panic(reply in any::<String>()) {
            let _ = dismisses(&reply);
        }

        #[test]
        fn a_dismissal_inside_a_question_never_counts(
            phrase in prop_oneof![Just("won't fix"), Just("false positive"), Just("by design")],
            before in "[a-z ]{0,20}",
        ) {
            let reply = format!("{before} {phrase}?");
            prop_assert!(!dismisses(&reply), "{:?}", reply);
        }
    }
}
