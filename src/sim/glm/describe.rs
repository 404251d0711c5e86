//! The fake model's descriptions: when the system message is reviewq's describe prompt, the
//! answer describes the files of the user message (type from their paths, one note per file
//! with its added and removed lines), and a merge request of several parts gets a merged
//! summary. Deterministic, like the review rules.

use serde_json::json;

use super::rules::{PromptFile, parse_prompt};

/// How the fake recognises a describe request: a phrase of `review/prompts/describe.md`.
pub(super) const DESCRIBE_PROMPT: &str = "you describe GitLab merge requests";

/// How it recognises the merge call: a phrase of `review::describe::merge_prompt`.
const MERGE_PROMPT: &str = "Partial descriptions, one per line";

/// The answer to a describe request, or `None` for any other request.
pub fn answer(system: &str, user: &str) -> Option<String> {
    if !system.contains(DESCRIBE_PROMPT) {
        return None;
    }
    if user.contains(MERGE_PROMPT) {
        let parts = user.lines().filter(|l| l.starts_with("Part ")).count();
        return Some(
            json!({
                "type": "feature",
                "summary": format!("Merged description of {parts} parts."),
                "files": [],
            })
            .to_string(),
        );
    }
    let files = parse_prompt(user);
    let count =
        |file: &PromptFile, sign: char| file.lines.iter().filter(|l| l.sign == sign).count();
    let notes: Vec<_> = files
        .iter()
        .map(|f| {
            json!({
                "path": f.path,
                "summary": format!("{} lines added, {} removed.", count(f, '+'), count(f, '-')),
            })
        })
        .collect();
    let change_type = if !files.is_empty() && files.iter().all(|f| f.path.ends_with(".md")) {
        "docs"
    } else if !files.is_empty() && files.iter().all(|f| f.path.contains("test")) {
        "tests"
    } else {
        "feature"
    };
    Some(
        json!({
            "type": change_type,
            "summary": format!("Changes {} files.", files.len()),
            "files": notes,
        })
        .to_string(),
    )
}
