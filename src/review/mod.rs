//! The review domain: everything between "GitLab gave us these file diffs" and "post these bodies",
//! with no I/O at all. No async, no HTTP, no SQL: every function here is a pure transformation,
//! so it is unit- and property-tested without fakes.
//!
//! # Layout
//!
//! The modules follow the order in which a review job uses them:
//!
//! - [`diff`]: GitLab's per-file diff objects ([`FileDiff`]) parsed into hunks and numbered lines
//!   ([`ParsedFile`]); the types in `diff/mod.rs`, the parser in `diff/parser.rs`.
//! - [`skip`]: which files are not worth sending to the model (lock files, generated, vendored,
//!   minified, binary, too large, user globs), each with a reason for the summary.
//! - [`tokens`]: the conservative local token estimate every budget decision uses.
//! - [`chunk`]: the chunk types ([`Chunk`], [`ChunkPlan`], the budget) and halving a chunk the
//!   model found too big; [`pack`](mod@pack): packing the reviewable files into prompts that fit a token
//!   budget ([`plan`] → [`ChunkPlan`]), splitting big files at hunk boundaries and giant hunks
//!   by lines.
//! - [`review_type`]: `general`, `security`, `performance`.
//! - [`prompt`]: the system and user messages for one chunk, asking for the one JSON answer of
//!   `interface.md`.
//! - [`finding`]: the tolerant parser of that answer ([`parse_answer`]); [`identity`]: the
//!   stable [`FindingKey`] used for de-duplication and the cross-round [`Fingerprint`].
//! - [`anchor`]: mapping a finding onto a GitLab diff position, or onto the summary when it cannot
//!   be anchored.
//! - [`render`]: sanitising model text (`render/sanitize.rs`) and rendering inline comment
//!   (`render/inline.rs`) and living summary (`render/summary.rs`) bodies with the hidden
//!   `<!-- reviewq:... -->` marker, and reading that marker back ([`find_marker`]).
//!
//! Around them, what a project and later rounds change:
//!
//! - [`settings`]: a repository's `.reviewq.toml` ([`ProjectSettings`]) with an operator's
//!   override on top: review types, ignore globs, language, severity threshold, inline limit,
//!   custom instructions, draft and label rules, publishing mode, incremental reviews
//!   (`settings/validate.rs`: the values of the file and the override, checked key by key);
//!   [`instructions`]: a project's custom review instructions ([`Instructions`]).
//! - [`language`]: the language comments are written in, configured or detected from the MR
//!   description ([`Language::detect`]).
//! - [`incremental`]: narrowing the MR's diff to what a push changed ([`restrict`]) and telling
//!   which old threads a push made outdated ([`line_changed`]).
//! - [`dismissal`]: recognising a human reply that rejects a finding ([`dismisses`]);
//!   [`conversation`]: what a comment asks of the bot, the question prompt, the replies.
//! - [`describe`]: the MR description block (type, summary, walkthrough) and the splice that
//!   never changes the author's text; [`codequality`]: GitLab's Code Quality report.
//!
//! The wiring layer (the review job) fetches diffs, calls [`plan`] (or [`pack::plan_with`] with
//! a project's [`PromptOptions`]), sends each [`prompt::render`] (or [`prompt::render_with`])
//! result to the LLM, feeds the reply to [`parse_answer`], anchors each finding with
//! [`anchor::anchor`], and posts what [`render`] produces. Across rounds, a finding is
//! recognised by its [`Fingerprint`], carried in its marker.

pub mod anchor;
pub mod chunk;
pub mod codequality;
pub mod conversation;
pub mod describe;
pub mod diff;
pub mod dismissal;
pub mod finding;
pub mod identity;
pub mod incremental;
pub mod instructions;
pub mod language;
mod markdown;
pub mod marker;
pub mod pack;
pub mod placement;
pub mod prompt;
pub mod render;
pub mod review_type;
pub mod settings;
pub mod skip;
pub mod tokens;

pub use anchor::{Anchor, Position, UnanchoredReason};
pub use chunk::{Chunk, ChunkBudget, ChunkConfig, ChunkFile, ChunkPlan, FilePart};
pub use diff::{ChangeKind, Content, DiffLine, FileDiff, Hunk, LineKind, ParseIssue, ParsedFile};
pub use dismissal::dismisses;
pub use finding::{Answer, AnswerError, Finding, Severity, parse_answer};
pub use identity::{FindingKey, Fingerprint};
pub use incremental::{Restricted, line_changed, restrict};
pub use instructions::Instructions;
pub use language::Language;
pub use pack::{pack, plan, plan_with};
pub use prompt::{Prompt, PromptOptions};
pub use render::{
    FailedChunk, HeadSha, ListedBecause, ListedFinding, LivingSummary, Marker, MarkerKind, Round,
    RoundKind, find_marker, find_round_history,
};
pub use review_type::ReviewType;
pub use settings::{
    LabelFilter, OutputMode, ProjectSettings, PublishMode, SettingsError, SkipMrReason,
};
pub use skip::{IgnoreGlobs, Screening, SkipReason, SkipRules, SkippedFile};

#[cfg(test)]
mod fixtures;
