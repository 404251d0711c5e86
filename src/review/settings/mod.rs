//! Per-project review settings: a repository's `.reviewq.toml`, with an operator's override on
//! top.
//!
//! ```toml
//! review_types = ["general", "security"]
//! ignore = ["docs/**", "*.snap"]
//! language = "Deutsch"
//! min_severity = "minor"
//! max_inline_comments = 10
//! instructions = "We use anyhow only in binaries; flag it in library code."
//! skip_drafts = true
//! labels = { include = ["needs-review"], exclude = ["wip"] }
//! resolve_outdated = true
//! publish = "draft"
//! incremental = true
//! describe = true
//! output = "both"
//! ```
//!
//! Every key is optional; a missing file is [`ProjectSettings::default`]. An operator override
//! ([`ProjectSettings::overridden_by`]) is a JSON object with the same keys, applied key by key
//! (inside `labels`, `include` and `exclude` separately), so an operator can force one setting
//! and leave the rest to the project. Both go through the same validation.
//!
//! Unknown keys and wrong values are errors, never silently ignored: a typo such as
//! `min_severty` would otherwise look like it worked. Every error names the key, the value and
//! what was expected, with the line and column in the file. The wiring layer decides what to do
//! with it (review with the defaults and say so in the summary note).
//!
//! The file should be read from the target branch, not from the merge request's head: otherwise
//! the author of a merge request could switch its own review off or rewrite the instructions.

use std::fmt;

use serde_json::Value as Json;

use crate::review::{
    finding::Severity,
    instructions::Instructions,
    language::Language,
    prompt::PromptOptions,
    review_type::ReviewType,
    skip::{IgnoreGlobs, SkipRules},
};

mod validate;

use validate::{Check, Entry, in_written_order, json_item, shown, toml_entries};

/// The file a repository keeps its settings in, at its root.
pub const SETTINGS_FILE: &str = ".reviewq.toml";

/// Largest settings file parsed. Real files are a few hundred bytes; the bound keeps a hostile
/// or mistaken file (a committed log) from costing a parse of megabytes.
pub const MAX_SETTINGS_BYTES: usize = 64 * 1024;

/// Default for `max_inline_comments`: enough for a thorough review of a large change, few
/// enough that a noisy model cannot bury the merge request in threads.
pub const DEFAULT_MAX_INLINE_COMMENTS: usize = 30;

/// Highest accepted `max_inline_comments`. More threads than this per round make a merge
/// request unreadable, and GitLab's default note-creation rate limit (300 a minute per user) is
/// shared by every review the bot runs.
pub const MAX_INLINE_COMMENTS: usize = 100;

/// Most `ignore` patterns. Each is compiled for every review; real projects need a handful.
pub const MAX_IGNORE_PATTERNS: usize = 200;

/// Longest accepted ignore pattern or label, in characters (GitLab's label titles are capped at
/// 255 characters too).
const MAX_ITEM_CHARS: usize = 255;

/// Most labels in `labels.include` or `labels.exclude`.
const MAX_LABELS: usize = 100;

/// Longest value quoted back in an error message, in characters: enough to recognise it.
const MAX_SHOWN_VALUE_CHARS: usize = 60;

/// The keys of the file, in the order the documentation lists them (also the order unknown-key
/// errors suggest them in).
const KEYS: [&str; 13] = [
    "review_types",
    "ignore",
    "language",
    "min_severity",
    "max_inline_comments",
    "instructions",
    "skip_drafts",
    "labels",
    "resolve_outdated",
    "publish",
    "incremental",
    "describe",
    "output",
];

/// The keys of the `labels` table.
const LABEL_KEYS: [&str; 2] = ["include", "exclude"];

/// A project's review settings, validated. Built only by [`ProjectSettings::default`],
/// [`ProjectSettings::from_toml`] and [`ProjectSettings::overridden_by`], so every value in it
/// has passed validation.
#[derive(Debug, Clone, PartialEq)]
pub struct ProjectSettings {
    /// `review_types`: which kinds of review run on each merge request. Never empty, no
    /// duplicates, in the order written. Default `["general"]`: one review is what most
    /// projects want to pay for.
    review_types: Vec<ReviewType>,
    /// `ignore`: globs of files never sent to the model, on top of the built-in rules (lock
    /// files, vendored, generated, ...). Default none.
    ignore: IgnoreGlobs,
    /// `language`: the language comments are written in. Default `None`: detected from each
    /// merge request's description, so a team writing in Chinese gets Chinese comments
    /// without configuring anything.
    language: Option<Language>,
    /// `min_severity`: findings less severe than this are neither posted inline nor listed in
    /// the summary (only counted). Default `info`: everything is shown.
    min_severity: Severity,
    /// `max_inline_comments`: most inline threads opened per review round; the rest, most
    /// severe kept inline first, are listed in the summary. 0 means summary only. Default
    /// [`DEFAULT_MAX_INLINE_COMMENTS`].
    max_inline_comments: usize,
    /// `instructions`: the project's own guidance appended to the system prompt (house rules,
    /// what not to flag). Default none.
    instructions: Option<Instructions>,
    /// `skip_drafts`: draft merge requests are not reviewed until marked ready. Default `true`:
    /// drafts change fast, and reviewing every push of one spends tokens on throwaway code.
    skip_drafts: bool,
    /// `labels`: review only merge requests carrying an `include` label (when any are given),
    /// never those carrying an `exclude` label. Default: no filter.
    labels: LabelFilter,
    /// `resolve_outdated`: the bot resolves its own threads whose line a later push changed or
    /// removed. Default `true`: stale threads otherwise pile up over rounds.
    resolve_outdated: bool,
    /// `publish`: post inline comments one by one, or stage them as draft notes published in
    /// one go (one notification instead of one per comment). Default
    /// [`PublishMode::Immediate`], which works on every GitLab version.
    publish: PublishMode,
    /// `incremental`: after the first review, later pushes review only what changed since the
    /// last reviewed head. Default `true`: re-reviewing the whole merge request on every push
    /// repeats old findings and multiplies the cost.
    incremental: bool,
    /// `describe`: every review round also writes the change type, a summary and a walkthrough
    /// of the changed files into the MR description, between reviewq's markers. Default
    /// `false`: the description is the author's unless they ask (an MR whose description
    /// already holds the markers is described either way).
    describe: bool,
    /// `output`: where findings go: inline threads, GitLab's Code Quality report only, or
    /// both. Default [`OutputMode::Inline`].
    output: OutputMode,
}

impl Default for ProjectSettings {
    fn default() -> Self {
        ProjectSettings {
            review_types: vec![ReviewType::General],
            ignore: IgnoreGlobs::none(),
            language: None,
            min_severity: Severity::Info,
            max_inline_comments: DEFAULT_MAX_INLINE_COMMENTS,
            instructions: None,
            skip_drafts: true,
            labels: LabelFilter::default(),
            resolve_outdated: true,
            publish: PublishMode::Immediate,
            incremental: true,
            describe: false,
            output: OutputMode::Inline,
        }
    }
}

/// Where a round's findings go.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum OutputMode {
    /// Inline threads (and the summary note).
    #[default]
    Inline,
    /// Only the Code Quality report (`reviewq codequality`, `review --codequality`): no inline
    /// thread is posted, the summary note still is.
    CodeQuality,
    /// Inline threads and the Code Quality report.
    Both,
}

impl OutputMode {
    /// The name used in the settings file.
    pub fn as_str(self) -> &'static str {
        match self {
            OutputMode::Inline => "inline",
            OutputMode::CodeQuality => "codequality",
            OutputMode::Both => "both",
        }
    }

    /// Whether inline threads are posted.
    pub fn posts_inline(self) -> bool {
        self != OutputMode::CodeQuality
    }

    /// Whether a Code Quality report is wanted.
    pub fn reports_code_quality(self) -> bool {
        self != OutputMode::Inline
    }
}

impl fmt::Display for OutputMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How inline comments reach GitLab.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum PublishMode {
    /// One discussion per finding, posted as soon as it is ready.
    #[default]
    Immediate,
    /// Every inline comment of a round is staged as a draft note and all are published with
    /// one `bulk_publish`, so reviewers get one notification.
    Draft,
}

impl PublishMode {
    /// The name used in the settings file.
    pub fn as_str(self) -> &'static str {
        match self {
            PublishMode::Immediate => "immediate",
            PublishMode::Draft => "draft",
        }
    }
}

impl fmt::Display for PublishMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which labels select or exclude a merge request. Label names compare case-insensitively:
/// a `wip` in the file should match the `WIP` label a human sees.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelFilter {
    /// When not empty, only merge requests with at least one of these labels are reviewed.
    pub include: Vec<String>,
    /// Merge requests with any of these labels are never reviewed, whatever `include` says.
    pub exclude: Vec<String>,
}

/// Why a merge request is not reviewed at all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SkipMrReason {
    /// It is a draft and `skip_drafts` is on.
    Draft,
    /// It carries a label `labels.exclude` lists.
    ExcludedLabel {
        /// The label as the merge request carries it.
        label: String,
    },
    /// `labels.include` is set and the merge request carries none of its labels.
    NoIncludedLabel {
        /// The labels `labels.include` asks for.
        wanted: Vec<String>,
    },
}

impl fmt::Display for SkipMrReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SkipMrReason::Draft => f.write_str("the merge request is a draft (skip_drafts = true)"),
            SkipMrReason::ExcludedLabel { label } => {
                write!(
                    f,
                    "the merge request has the label {label:?}, which labels.exclude lists"
                )
            }
            SkipMrReason::NoIncludedLabel { wanted } => write!(
                f,
                "the merge request has none of the labels labels.include asks for ({})",
                wanted
                    .iter()
                    .map(|l| format!("{l:?}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }
}

/// Where a settings value came from, for error messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SettingsOrigin {
    /// The repository's [`SETTINGS_FILE`].
    RepositoryFile,
    /// The operator's override.
    Operator,
}

impl fmt::Display for SettingsOrigin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SettingsOrigin::RepositoryFile => write!(f, "`{SETTINGS_FILE}`"),
            SettingsOrigin::Operator => f.write_str("operator settings"),
        }
    }
}

/// A 1-based line and column (in characters) in the settings file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Location {
    /// 1-based line.
    pub line: usize,
    /// 1-based column, counted in characters.
    pub column: usize,
}

impl Location {
    /// The location of byte `offset` of `text` (clamped to the text and to a character
    /// boundary).
    fn of(text: &str, offset: usize) -> Location {
        let mut offset = offset.min(text.len());
        while !text.is_char_boundary(offset) {
            offset -= 1;
        }
        let before = &text[..offset];
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        Location {
            line: before.matches('\n').count() + 1,
            column: before[line_start..].chars().count() + 1,
        }
    }
}

/// ` line 3, column 7`, or nothing when the place is unknown.
fn at(location: &Option<Location>) -> String {
    match location {
        Some(l) => format!(" line {}, column {}", l.line, l.column),
        None => String::new(),
    }
}

/// Settings that could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SettingsError {
    /// The file is not valid TOML (or is too large to parse).
    #[error("{origin}{}: {message}", at(.location))]
    Syntax {
        /// Which settings.
        origin: SettingsOrigin,
        /// Where the parser stopped, when it said.
        location: Option<Location>,
        /// What the parser objected to.
        message: String,
    },
    /// A key that is not a setting (often a typo).
    #[error("{origin}{}: unknown key `{key}`; expected one of {}", at(.location), .expected.join(", "))]
    UnknownKey {
        /// Which settings.
        origin: SettingsOrigin,
        /// Where the key is written.
        location: Option<Location>,
        /// The key, with its table (`labels.foo`).
        key: String,
        /// The keys accepted there.
        expected: Vec<&'static str>,
    },
    /// A value of the wrong type or out of range.
    #[error("{origin}{}: `{key}` = {value}: expected {expected}", at(.location))]
    BadValue {
        /// Which settings.
        origin: SettingsOrigin,
        /// Where the value is written.
        location: Option<Location>,
        /// The key, with its table (`labels.include`).
        key: String,
        /// The value as written, shortened.
        value: String,
        /// What would have been accepted.
        expected: String,
    },
}

impl SettingsError {
    /// Where in the file the problem is, when known.
    pub fn location(&self) -> Option<Location> {
        match self {
            SettingsError::Syntax { location, .. }
            | SettingsError::UnknownKey { location, .. }
            | SettingsError::BadValue { location, .. } => *location,
        }
    }
}

impl ProjectSettings {
    /// Reads a repository's `.reviewq.toml`. An empty file (or one with only comments) gives
    /// the defaults.
    ///
    /// # Errors
    /// [`SettingsError`] for invalid TOML, an unknown key or a bad value; the first problem in
    /// the file's order is reported.
    pub fn from_toml(text: &str) -> Result<ProjectSettings, SettingsError> {
        let origin = SettingsOrigin::RepositoryFile;
        if text.len() > MAX_SETTINGS_BYTES {
            return Err(SettingsError::Syntax {
                origin,
                location: None,
                message: format!(
                    "the file is {} bytes; at most {MAX_SETTINGS_BYTES} are read",
                    text.len()
                ),
            });
        }
        let table = toml::de::DeTable::parse(text).map_err(|e| SettingsError::Syntax {
            origin,
            location: e.span().map(|s| Location::of(text, s.start)),
            message: e.message().trim_end().to_owned(),
        })?;
        let entries = toml_entries(table.get_ref(), text);
        ProjectSettings::default().apply(&entries, origin)
    }

    /// Applies an operator's override: a JSON object with the same keys as the file, each
    /// replacing the project's value (inside `labels`, `include` and `exclude` separately).
    /// `null` is no override.
    ///
    /// # Errors
    /// [`SettingsError`] when the override is not an object, has an unknown key or a bad
    /// value.
    pub fn overridden_by(self, operator: &Json) -> Result<ProjectSettings, SettingsError> {
        let origin = SettingsOrigin::Operator;
        match operator {
            Json::Null => Ok(self),
            Json::Object(map) => {
                let entries: Vec<Entry> = map
                    .iter()
                    .map(|(key, value)| Entry {
                        key: key.clone(),
                        key_at: None,
                        item: json_item(value),
                    })
                    .collect();
                self.apply(&entries, origin)
            }
            other => Err(SettingsError::BadValue {
                origin,
                location: None,
                key: "(settings)".to_owned(),
                value: shown(&json_item(other).value),
                expected: "a JSON object of settings, such as {\"min_severity\": \"major\"}"
                    .to_owned(),
            }),
        }
    }

    /// Which review types run.
    pub fn review_types(&self) -> &[ReviewType] {
        &self.review_types
    }

    /// The project's ignore globs.
    pub fn ignore(&self) -> &IgnoreGlobs {
        &self.ignore
    }

    /// The configured comment language, if any (see [`ProjectSettings::language_for`]).
    pub fn language(&self) -> Option<&Language> {
        self.language.as_ref()
    }

    /// The least severe finding shown.
    pub fn min_severity(&self) -> Severity {
        self.min_severity
    }

    /// Most inline threads per round.
    pub fn max_inline_comments(&self) -> usize {
        self.max_inline_comments
    }

    /// The project's custom instructions, if any.
    pub fn instructions(&self) -> Option<&Instructions> {
        self.instructions.as_ref()
    }

    /// Whether drafts are skipped.
    pub fn skip_drafts(&self) -> bool {
        self.skip_drafts
    }

    /// The label filter.
    pub fn labels(&self) -> &LabelFilter {
        &self.labels
    }

    /// Whether the bot resolves its threads on lines a later push changed.
    pub fn resolve_outdated(&self) -> bool {
        self.resolve_outdated
    }

    /// How inline comments are published.
    pub fn publish(&self) -> PublishMode {
        self.publish
    }

    /// Whether later rounds review only what changed since the last reviewed head. Never
    /// with a Code Quality report: it must list every finding of the head, and an incremental
    /// round sees only the new hunks.
    pub fn incremental(&self) -> bool {
        self.incremental && !self.output.reports_code_quality()
    }

    /// Whether review rounds also describe the MR.
    pub fn describe(&self) -> bool {
        self.describe
    }

    /// Where findings go.
    pub fn output(&self) -> OutputMode {
        self.output
    }

    /// The language to write comments in for a merge request with this description: the
    /// configured one, else the one detected in the description.
    pub fn language_for(&self, mr_description: &str) -> Language {
        self.language
            .clone()
            .unwrap_or_else(|| Language::detect(mr_description))
    }

    /// The prompt options for a merge request with this description.
    pub fn prompt_options(&self, mr_description: &str) -> PromptOptions {
        PromptOptions {
            language: Some(self.language_for(mr_description)),
            instructions: self.instructions.clone(),
        }
    }

    /// The file skip rules: the built-in ones plus the project's ignore globs.
    pub fn skip_rules(&self) -> SkipRules {
        SkipRules {
            ignore: self.ignore.clone(),
            ..SkipRules::default()
        }
    }

    /// Whether a merge request is reviewed at all. An excluded label wins over everything, then
    /// the draft rule, then the include list.
    ///
    /// # Errors
    /// The [`SkipMrReason`] when it is not.
    pub fn should_review(&self, draft: bool, labels: &[String]) -> Result<(), SkipMrReason> {
        let has = |wanted: &str| {
            labels
                .iter()
                .find(|l| l.trim().to_lowercase() == wanted.to_lowercase())
        };
        if let Some(label) = self.labels.exclude.iter().find_map(|e| has(e)) {
            return Err(SkipMrReason::ExcludedLabel {
                label: label.clone(),
            });
        }
        if draft && self.skip_drafts {
            return Err(SkipMrReason::Draft);
        }
        if !self.labels.include.is_empty() && !self.labels.include.iter().any(|i| has(i).is_some())
        {
            return Err(SkipMrReason::NoIncludedLabel {
                wanted: self.labels.include.clone(),
            });
        }
        Ok(())
    }

    /// Applies one layer of entries, key by key, in the order they are written.
    fn apply(
        mut self,
        entries: &[Entry],
        origin: SettingsOrigin,
    ) -> Result<ProjectSettings, SettingsError> {
        let check = Check { origin };
        for entry in in_written_order(entries) {
            let item = &entry.item;
            let key = entry.key.as_str();
            match key {
                "review_types" => self.review_types = check.review_types(key, item)?,
                "ignore" => self.ignore = check.ignore(key, item)?,
                "language" => self.language = Some(check.language(key, item)?),
                "min_severity" => self.min_severity = check.severity(key, item)?,
                "max_inline_comments" => {
                    self.max_inline_comments = check.max_inline_comments(key, item)?;
                }
                "instructions" => self.instructions = check.instructions(key, item)?,
                "skip_drafts" => self.skip_drafts = check.boolean(key, item)?,
                "labels" => self.labels = check.labels(key, item, self.labels)?,
                "resolve_outdated" => self.resolve_outdated = check.boolean(key, item)?,
                "publish" => self.publish = check.publish(key, item)?,
                "incremental" => self.incremental = check.boolean(key, item)?,
                "describe" => self.describe = check.boolean(key, item)?,
                "output" => self.output = check.output(key, item)?,
                other => return Err(check.unknown(other, entry.key_at, &KEYS)),
            }
        }
        Ok(self)
    }
}

#[cfg(test)]
mod tests;
