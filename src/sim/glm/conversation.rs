//! The fake model's answers to questions in a merge request thread: when the system message
//! is reviewq's question prompt, the answer names the finding and the location it was asked
//! about and quotes the question back line by line (so tests see that whatever a commenter
//! wrote is neutralised on the way to GitLab); a question that asks for a suggestion gets the
//! marked line back as a suggestion. Deterministic, like the review rules.

use serde_json::json;

/// How the fake recognises a question: a phrase of `review::conversation::QUESTION_PROMPT`.
pub(super) const QUESTION_PROMPT: &str = "you answer questions in a merge request thread";

/// The text of the section `heading` of the user message, up to the next section.
fn section<'a>(user: &'a str, heading: &str) -> Option<&'a str> {
    let start = user.find(&format!("## {heading}\n\n"))? + heading.len() + 5;
    let rest = &user[start..];
    Some(rest[..rest.find("\n## ").unwrap_or(rest.len())].trim())
}

/// The answer to a question, or `None` for any other request.
pub fn answer(system: &str, user: &str) -> Option<String> {
    if !system.contains(QUESTION_PROMPT) {
        return None;
    }
    let finding = section(user, "The finding")
        .and_then(|f| f.lines().next())
        .unwrap_or("your question");
    let location = section(user, "Location").unwrap_or("this merge request");
    let question = section(user, "The question").unwrap_or_default();
    let marked = section(user, "The code").and_then(|code| {
        code.lines()
            .find(|l| l.starts_with('>'))
            .and_then(|l| l.split_once(" | "))
            .map(|(_, code)| code.to_owned())
    });
    let suggestion = question
        .to_lowercase()
        .contains("suggest")
        .then(|| marked.map(|line| format!("{line} // reviewed")))
        .flatten();
    Some(
        json!({
            "answer": format!(
                "Regarding {finding} at {location}: the finding still applies.\n\nYou asked:\n{question}"
            ),
            "suggestion": suggestion,
        })
        .to_string(),
    )
}
