//! The round's settings, fixed when the review is planned and stored on it, so every chunk job
//! and the posting phase see the same values.

use serde::{Deserialize, Serialize};

use crate::review::{
    Instructions, Language, PromptOptions, Severity,
    settings::{ProjectSettings, PublishMode},
};

/// What a round needs of the project's settings after planning, stored on the review so
/// every chunk job and the posting phase see the same values.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(super) struct RoundSettings {
    /// Language of the comments.
    pub(super) language: Option<String>,
    /// The project's custom instructions.
    pub(super) instructions: Option<String>,
    /// Findings below are neither posted nor listed.
    pub(super) min_severity: Option<Severity>,
    /// Inline comments per round; `None` (older rows): no limit.
    pub(super) max_inline_comments: Option<usize>,
    /// Resolve the bot's threads whose code changed.
    pub(super) resolve_outdated: bool,
    /// Stage inline comments as draft notes and publish them at once.
    pub(super) publish_drafts: bool,
    /// `output = "codequality"`: findings go to the Code Quality report only, none inline.
    #[serde(default)]
    pub(super) code_quality_only: bool,
}

impl RoundSettings {
    pub(super) fn new(settings: &ProjectSettings, description: &str) -> Self {
        let options = settings.prompt_options(description);
        Self {
            language: options.language.map(|l| l.to_string()),
            instructions: options.instructions.map(|i| i.as_str().to_owned()),
            min_severity: Some(settings.min_severity()),
            max_inline_comments: Some(settings.max_inline_comments()),
            resolve_outdated: settings.resolve_outdated(),
            publish_drafts: settings.publish() == PublishMode::Draft,
            code_quality_only: !settings.output().posts_inline(),
        }
    }

    pub(super) fn read(value: &serde_json::Value) -> Self {
        serde_json::from_value(value.clone()).unwrap_or_default()
    }

    pub(super) fn prompt_options(&self) -> PromptOptions {
        PromptOptions {
            language: self
                .language
                .as_deref()
                .and_then(|l| Language::parse(l).ok()),
            instructions: self
                .instructions
                .as_deref()
                .and_then(|i| Instructions::parse(i).ok()),
        }
    }
}
