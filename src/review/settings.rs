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

use std::{collections::HashSet, fmt, ops::Range};

use serde_json::Value as Json;

use crate::review::{
    finding::Severity,
    language::{Language, MAX_LANGUAGE_CHARS},
    prompt::PromptOptions,
    review_type::ReviewType,
    skip::{IgnoreGlobs, SkipRules},
};

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

/// Longest accepted `instructions`, in characters. They go into every prompt of the review, so
/// they cost tokens on every chunk and crowd out the diff; 4,000 characters is a page of house
/// rules.
pub const MAX_INSTRUCTIONS_CHARS: usize = 4_000;

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

/// Custom review instructions: 1 to [`MAX_INSTRUCTIONS_CHARS`] characters after trimming.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Instructions(String);

/// Text [`Instructions::parse`] refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidInstructions {
    /// Nothing but whitespace.
    #[error("the instructions are empty")]
    Empty,
    /// Longer than [`MAX_INSTRUCTIONS_CHARS`].
    #[error(
        "the instructions are {0} characters long; at most {MAX_INSTRUCTIONS_CHARS} are accepted"
    )]
    TooLong(usize),
}

impl Instructions {
    /// Validates instructions, trimming surrounding whitespace.
    ///
    /// # Errors
    /// [`InvalidInstructions`] when empty or too long.
    pub fn parse(text: &str) -> Result<Instructions, InvalidInstructions> {
        let text = text.trim();
        let chars = text.chars().count();
        if chars == 0 {
            return Err(InvalidInstructions::Empty);
        }
        if chars > MAX_INSTRUCTIONS_CHARS {
            return Err(InvalidInstructions::TooLong(chars));
        }
        Ok(Instructions(text.to_owned()))
    }

    /// The instructions' text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
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

/// A settings value from either source, reduced to what validation looks at.
#[derive(Debug, Clone)]
enum Raw {
    Bool(bool),
    Integer(i128),
    /// Floats and datetimes, kept as written: never valid, only quoted back.
    Other(String),
    String(String),
    Array(Vec<Item>),
    Table(Vec<Entry>),
    Null,
}

/// A value and where it is written.
#[derive(Debug, Clone)]
struct Item {
    value: Raw,
    at: Option<Location>,
}

/// A key, where it is written, and its value.
#[derive(Debug, Clone)]
struct Entry {
    key: String,
    key_at: Option<Location>,
    item: Item,
}

/// Entries in the order they are written (TOML tables come back sorted by key), so the first
/// problem reported is the first in the file. Entries without a location keep their order.
fn in_written_order(entries: &[Entry]) -> Vec<&Entry> {
    let mut sorted: Vec<&Entry> = entries.iter().collect();
    sorted.sort_by_key(|e| e.key_at.map(|l| (l.line, l.column)));
    sorted
}

fn toml_entries(table: &toml::de::DeTable<'_>, text: &str) -> Vec<Entry> {
    table
        .iter()
        .map(|(key, value)| Entry {
            key: key.get_ref().to_string(),
            key_at: Some(Location::of(text, key.span().start)),
            item: toml_item(value.get_ref(), value.span(), text),
        })
        .collect()
}

fn toml_item(value: &toml::de::DeValue<'_>, span: Range<usize>, text: &str) -> Item {
    use toml::de::DeValue;
    let value = match value {
        DeValue::String(s) => Raw::String(s.to_string()),
        DeValue::Integer(i) => match i128::from_str_radix(i.as_str(), i.radix()) {
            Ok(n) => Raw::Integer(n),
            Err(_) => Raw::Other(i.to_string()),
        },
        DeValue::Float(f) => Raw::Other(f.to_string()),
        DeValue::Boolean(b) => Raw::Bool(*b),
        DeValue::Datetime(d) => Raw::Other(d.to_string()),
        DeValue::Array(items) => Raw::Array(
            items
                .iter()
                .map(|v| toml_item(v.get_ref(), v.span(), text))
                .collect(),
        ),
        DeValue::Table(table) => Raw::Table(toml_entries(table, text)),
    };
    Item {
        value,
        at: Some(Location::of(text, span.start)),
    }
}

fn json_item(value: &Json) -> Item {
    let value = match value {
        Json::Null => Raw::Null,
        Json::Bool(b) => Raw::Bool(*b),
        Json::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => Raw::Integer(i128::from(i)),
            (None, Some(u)) => Raw::Integer(i128::from(u)),
            _ => Raw::Other(n.to_string()),
        },
        Json::String(s) => Raw::String(s.clone()),
        Json::Array(items) => Raw::Array(items.iter().map(json_item).collect()),
        Json::Object(map) => Raw::Table(
            map.iter()
                .map(|(key, value)| Entry {
                    key: key.clone(),
                    key_at: None,
                    item: json_item(value),
                })
                .collect(),
        ),
    };
    Item { value, at: None }
}

/// A value as quoted back in an error: short, on one line.
fn shown(value: &Raw) -> String {
    match value {
        Raw::Bool(b) => b.to_string(),
        Raw::Integer(n) => n.to_string(),
        Raw::Other(text) => short(text),
        Raw::String(s) => format!("{:?}", short(s)),
        Raw::Array(items) if items.is_empty() => "[]".to_owned(),
        Raw::Array(items) => {
            let first: Vec<String> = items.iter().take(3).map(|i| shown(&i.value)).collect();
            let more = if items.len() > 3 { ", ..." } else { "" };
            short(&format!("[{}{more}]", first.join(", ")))
        }
        Raw::Table(_) => "a table".to_owned(),
        Raw::Null => "null".to_owned(),
    }
}

/// At most [`MAX_SHOWN_VALUE_CHARS`] characters, with `…` when cut.
fn short(text: &str) -> String {
    if text.chars().count() <= MAX_SHOWN_VALUE_CHARS {
        return text.to_owned();
    }
    let mut out: String = text.chars().take(MAX_SHOWN_VALUE_CHARS).collect();
    out.push('…');
    out
}

/// Validation of one layer's values, with the origin for error messages.
struct Check {
    origin: SettingsOrigin,
}

impl Check {
    fn bad(&self, key: &str, item: &Item, expected: impl Into<String>) -> SettingsError {
        SettingsError::BadValue {
            origin: self.origin,
            location: item.at,
            key: key.to_owned(),
            value: shown(&item.value),
            expected: expected.into(),
        }
    }

    fn unknown(
        &self,
        key: &str,
        location: Option<Location>,
        expected: &[&'static str],
    ) -> SettingsError {
        SettingsError::UnknownKey {
            origin: self.origin,
            location,
            key: key.to_owned(),
            expected: expected.to_vec(),
        }
    }

    fn boolean(&self, key: &str, item: &Item) -> Result<bool, SettingsError> {
        match item.value {
            Raw::Bool(b) => Ok(b),
            _ => Err(self.bad(key, item, "true or false")),
        }
    }

    fn string<'a>(
        &self,
        key: &str,
        item: &'a Item,
        expected: &str,
    ) -> Result<&'a str, SettingsError> {
        match &item.value {
            Raw::String(s) => Ok(s),
            _ => Err(self.bad(key, item, expected)),
        }
    }

    fn array<'a>(
        &self,
        key: &str,
        item: &'a Item,
        expected: &str,
    ) -> Result<&'a [Item], SettingsError> {
        match &item.value {
            Raw::Array(items) => Ok(items),
            _ => Err(self.bad(key, item, expected)),
        }
    }

    fn review_types(&self, key: &str, item: &Item) -> Result<Vec<ReviewType>, SettingsError> {
        const EXPECTED: &str = "a non-empty list of review types, such as [\"general\", \"security\"] \
             (general, security, performance)";
        let items = self.array(key, item, EXPECTED)?;
        if items.is_empty() {
            return Err(self.bad(key, item, EXPECTED));
        }
        let mut types = Vec::new();
        for element in items {
            let text = self.string(key, element, "general, security or performance")?;
            let review_type: ReviewType = text
                .parse()
                .map_err(|_| self.bad(key, element, "general, security or performance"))?;
            if !types.contains(&review_type) {
                types.push(review_type);
            }
        }
        Ok(types)
    }

    fn ignore(&self, key: &str, item: &Item) -> Result<IgnoreGlobs, SettingsError> {
        let expected_list = format!(
            "a list of at most {MAX_IGNORE_PATTERNS} glob patterns, such as [\"docs/**\", \"*.snap\"]"
        );
        let items = self.array(key, item, &expected_list)?;
        if items.len() > MAX_IGNORE_PATTERNS {
            return Err(self.bad(key, item, expected_list));
        }
        let expected = format!("a glob pattern of 1 to {MAX_ITEM_CHARS} characters");
        let mut patterns = Vec::with_capacity(items.len());
        for element in items {
            let pattern = self.string(key, element, &expected)?;
            let chars = pattern.trim().chars().count();
            if chars == 0 || chars > MAX_ITEM_CHARS {
                return Err(self.bad(key, element, expected));
            }
            patterns.push(pattern);
        }
        IgnoreGlobs::new(&patterns).map_err(|e| {
            // The error names the bad pattern; point at its element.
            let bad = items
                .iter()
                .zip(&patterns)
                .find(|(_, p)| p.trim() == e.pattern)
                .map_or(item, |(element, _)| element);
            self.bad(key, bad, format!("a valid glob pattern ({})", e.source))
        })
    }

    fn language(&self, key: &str, item: &Item) -> Result<Language, SettingsError> {
        let expected = format!(
            "a language name such as \"English\" or \"Deutsch\" \
             (1 to {MAX_LANGUAGE_CHARS} letters, no line breaks)"
        );
        let text = self.string(key, item, &expected)?;
        Language::parse(text).map_err(|_| self.bad(key, item, expected))
    }

    fn severity(&self, key: &str, item: &Item) -> Result<Severity, SettingsError> {
        const EXPECTED: &str = "one of \"critical\", \"major\", \"minor\", \"info\"";
        let text = self.string(key, item, EXPECTED)?;
        Severity::ALL
            .into_iter()
            .find(|s| s.as_str().eq_ignore_ascii_case(text.trim()))
            .ok_or_else(|| self.bad(key, item, EXPECTED))
    }

    fn max_inline_comments(&self, key: &str, item: &Item) -> Result<usize, SettingsError> {
        let expected = format!("a whole number from 0 (summary only) to {MAX_INLINE_COMMENTS}");
        match item.value {
            Raw::Integer(n) => usize::try_from(n)
                .ok()
                .filter(|&n| n <= MAX_INLINE_COMMENTS)
                .ok_or_else(|| self.bad(key, item, expected)),
            _ => Err(self.bad(key, item, expected)),
        }
    }

    fn instructions(&self, key: &str, item: &Item) -> Result<Option<Instructions>, SettingsError> {
        let expected = format!("text of at most {MAX_INSTRUCTIONS_CHARS} characters");
        let text = self.string(key, item, &expected)?;
        match Instructions::parse(text) {
            Ok(instructions) => Ok(Some(instructions)),
            // An empty string says "no instructions", e.g. to clear them in an override.
            Err(InvalidInstructions::Empty) => Ok(None),
            Err(InvalidInstructions::TooLong(chars)) => {
                Err(self.bad(key, item, format!("{expected} (this is {chars})")))
            }
        }
    }

    fn publish(&self, key: &str, item: &Item) -> Result<PublishMode, SettingsError> {
        const EXPECTED: &str = "\"immediate\" or \"draft\"";
        let text = self.string(key, item, EXPECTED)?;
        [PublishMode::Immediate, PublishMode::Draft]
            .into_iter()
            .find(|m| m.as_str().eq_ignore_ascii_case(text.trim()))
            .ok_or_else(|| self.bad(key, item, EXPECTED))
    }

    fn output(&self, key: &str, item: &Item) -> Result<OutputMode, SettingsError> {
        const EXPECTED: &str = "\"inline\", \"codequality\" or \"both\"";
        let text = self.string(key, item, EXPECTED)?;
        [
            OutputMode::Inline,
            OutputMode::CodeQuality,
            OutputMode::Both,
        ]
        .into_iter()
        .find(|m| m.as_str().eq_ignore_ascii_case(text.trim()))
        .ok_or_else(|| self.bad(key, item, EXPECTED))
    }

    /// The `labels` table, applied sub-key by sub-key on top of `current`.
    fn labels(
        &self,
        key: &str,
        item: &Item,
        mut current: LabelFilter,
    ) -> Result<LabelFilter, SettingsError> {
        let Raw::Table(entries) = &item.value else {
            return Err(self.bad(
                key,
                item,
                "a table such as { include = [\"needs-review\"], exclude = [\"wip\"] }",
            ));
        };
        for entry in in_written_order(entries) {
            let sub_key = format!("{key}.{}", entry.key);
            match entry.key.as_str() {
                "include" => current.include = self.label_list(&sub_key, &entry.item)?,
                "exclude" => current.exclude = self.label_list(&sub_key, &entry.item)?,
                _ => return Err(self.unknown(&sub_key, entry.key_at, &LABEL_KEYS)),
            }
        }
        Ok(current)
    }

    fn label_list(&self, key: &str, item: &Item) -> Result<Vec<String>, SettingsError> {
        let expected_list = format!("a list of at most {MAX_LABELS} label names");
        let items = self.array(key, item, &expected_list)?;
        if items.len() > MAX_LABELS {
            return Err(self.bad(key, item, expected_list));
        }
        let mut seen = HashSet::new();
        let mut labels = Vec::with_capacity(items.len());
        for element in items {
            let expected = format!("a label name of 1 to {MAX_ITEM_CHARS} characters");
            let label = self.string(key, element, &expected)?.trim();
            let chars = label.chars().count();
            if chars == 0 || chars > MAX_ITEM_CHARS || label.chars().any(char::is_control) {
                return Err(self.bad(key, element, expected));
            }
            if seen.insert(label.to_lowercase()) {
                labels.push(label.to_owned());
            }
        }
        Ok(labels)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;

    fn parse(text: &str) -> ProjectSettings {
        ProjectSettings::from_toml(text).expect("valid settings")
    }

    fn error(text: &str) -> SettingsError {
        ProjectSettings::from_toml(text).expect_err("invalid settings")
    }

    fn labels(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| (*n).to_owned()).collect()
    }

    #[test]
    fn an_empty_or_comment_only_file_gives_the_defaults() {
        for text in ["", "\n\n", "# nothing configured yet\n"] {
            assert_eq!(parse(text), ProjectSettings::default());
        }
        let defaults = ProjectSettings::default();
        assert_eq!(defaults.review_types(), &[ReviewType::General]);
        assert_eq!(defaults.min_severity(), Severity::Info);
        assert_eq!(defaults.max_inline_comments(), DEFAULT_MAX_INLINE_COMMENTS);
        assert!(defaults.skip_drafts() && defaults.resolve_outdated() && defaults.incremental());
        assert_eq!(defaults.publish(), PublishMode::Immediate);
        assert_eq!(defaults.language(), None);
        assert_eq!(defaults.instructions(), None);
    }

    #[test]
    fn every_key_is_read() {
        let settings = parse(
            r#"
            review_types = ["general", "Security", "general"]
            ignore = ["docs/**", "*.snap"]
            language = "Deutsch"
            min_severity = "minor"
            max_inline_comments = 0
            instructions = """
            We use anyhow only in binaries.
            """
            skip_drafts = false
            labels = { include = ["needs-review"], exclude = ["wip"] }
            resolve_outdated = false
            publish = "draft"
            incremental = false
            "#,
        );
        assert_eq!(
            settings.review_types(),
            &[ReviewType::General, ReviewType::Security]
        );
        assert_eq!(settings.ignore().matching("docs/a/b.md"), Some("docs/**"));
        assert_eq!(settings.ignore().matching("src/x.snap"), Some("*.snap"));
        assert_eq!(settings.language().map(Language::as_str), Some("Deutsch"));
        assert_eq!(settings.min_severity(), Severity::Minor);
        assert_eq!(settings.max_inline_comments(), 0);
        assert_eq!(
            settings.instructions().map(Instructions::as_str),
            Some("We use anyhow only in binaries.")
        );
        assert!(!settings.skip_drafts() && !settings.resolve_outdated() && !settings.incremental());
        assert_eq!(settings.labels().include, labels(&["needs-review"]));
        assert_eq!(settings.labels().exclude, labels(&["wip"]));
        assert_eq!(settings.publish(), PublishMode::Draft);
    }

    #[test]
    fn describe_and_output_are_read_and_a_code_quality_output_turns_incremental_rounds_off() {
        let defaults = ProjectSettings::default();
        assert!(!defaults.describe() && defaults.incremental());
        assert_eq!(defaults.output(), OutputMode::Inline);
        let settings = parse("describe = true\noutput = \"CodeQuality\"\n");
        assert!(settings.describe());
        assert_eq!(settings.output(), OutputMode::CodeQuality);
        assert!(!settings.output().posts_inline() && !settings.incremental());
        let both = parse("output = \"both\"\n");
        assert!(both.output().posts_inline() && both.output().reports_code_quality());
        let message = error("output = \"widget\"\n").to_string();
        assert!(
            message.contains("output")
                && message.contains("\"widget\"")
                && message.contains("both"),
            "{message}"
        );
    }

    #[test]
    fn a_labels_section_table_is_read_like_an_inline_table() {
        let settings = parse("[labels]\nexclude = [\"wip\"]\n");
        assert_eq!(settings.labels().exclude, labels(&["wip"]));
        assert!(settings.labels().include.is_empty());
    }

    #[test]
    fn an_unknown_key_is_named_with_its_line_and_the_known_keys() {
        let err = error("min_severity = \"major\"\n\nmin_severty = \"minor\"\n");
        assert_eq!(err.location(), Some(Location { line: 3, column: 1 }));
        let message = err.to_string();
        assert!(
            message.starts_with("`.reviewq.toml` line 3, column 1: unknown key `min_severty`"),
            "{message}"
        );
        assert!(
            message.contains("review_types, ignore, language, min_severity"),
            "{message}"
        );
    }

    #[test]
    fn an_unknown_label_key_is_named_with_its_table() {
        let err = error("labels = { include = [\"a\"], exlude = [\"b\"] }");
        assert!(
            err.to_string()
                .contains("unknown key `labels.exlude`; expected one of include, exclude"),
            "{err}"
        );
    }

    #[test]
    fn wrong_types_name_the_key_the_value_and_what_was_expected() {
        let cases = [
            (
                "skip_drafts = \"yes\"",
                "`skip_drafts` = \"yes\": expected true or false",
            ),
            (
                "max_inline_comments = -1",
                "`max_inline_comments` = -1: expected a whole number from 0 (summary only) to 100",
            ),
            (
                "max_inline_comments = 2.5",
                "`max_inline_comments` = 2.5: expected a whole number",
            ),
            (
                "max_inline_comments = 101",
                "`max_inline_comments` = 101: expected a whole number",
            ),
            (
                "min_severity = \"high\"",
                "`min_severity` = \"high\": expected one of \"critical\", \"major\", \"minor\", \"info\"",
            ),
            (
                "review_types = \"security\"",
                "`review_types` = \"security\": expected a non-empty list of review types",
            ),
            (
                "review_types = []",
                "`review_types` = []: expected a non-empty list",
            ),
            (
                "review_types = [\"general\", \"style\"]",
                "`review_types` = \"style\": expected general, security or performance",
            ),
            (
                "publish = \"later\"",
                "`publish` = \"later\": expected \"immediate\" or \"draft\"",
            ),
            (
                "language = \"\"",
                "`language` = \"\": expected a language name",
            ),
            (
                "labels = [\"wip\"]",
                "`labels` = [\"wip\"]: expected a table",
            ),
            (
                "labels = { exclude = [\"\"] }",
                "`labels.exclude` = \"\": expected a label name",
            ),
            (
                "incremental = 1979-05-27",
                "`incremental` = 1979-05-27: expected true or false",
            ),
        ];
        for (text, expected) in cases {
            let message = error(text).to_string();
            assert!(message.contains(expected), "{text}: {message}");
        }
    }

    #[test]
    fn a_bad_list_element_is_located_at_the_element() {
        let err = error("review_types = [\n  \"general\",\n  \"styel\",\n]\n");
        assert_eq!(err.location(), Some(Location { line: 3, column: 3 }));
    }

    #[test]
    fn an_invalid_glob_is_named_with_its_location() {
        let err = error("ignore = [\"docs/**\", \"src/[oops\"]");
        assert_eq!(
            err.location(),
            Some(Location {
                line: 1,
                column: 22
            })
        );
        let message = err.to_string();
        assert!(
            message.contains("`ignore` = \"src/[oops\": expected a valid glob"),
            "{message}"
        );
    }

    #[test]
    fn overlong_instructions_are_refused_with_their_length() {
        let long = "x".repeat(MAX_INSTRUCTIONS_CHARS + 1);
        let message = error(&format!("instructions = \"{long}\"")).to_string();
        assert!(
            message.contains("expected text of at most 4000 characters (this is 4001)"),
            "{message}"
        );
        // The value is quoted back shortened, not in full.
        assert!(message.chars().count() < 300, "{message}");
        let exact = "y".repeat(MAX_INSTRUCTIONS_CHARS);
        assert!(ProjectSettings::from_toml(&format!("instructions = \"{exact}\"")).is_ok());
    }

    #[test]
    fn invalid_toml_reports_the_parsers_message_and_position() {
        let err = error("min_severity = \"major\"\nskip_drafts = \n");
        assert!(matches!(err, SettingsError::Syntax { .. }), "{err:?}");
        let location = err.location().expect("a position");
        assert_eq!(location.line, 2);
        assert!(
            err.to_string()
                .starts_with("`.reviewq.toml` line 2, column"),
            "{err}"
        );
    }

    #[test]
    fn a_duplicated_key_is_a_syntax_error() {
        let err = error("incremental = true\nincremental = false\n");
        assert!(matches!(err, SettingsError::Syntax { .. }), "{err:?}");
    }

    #[test]
    fn the_first_problem_in_the_file_is_reported_first() {
        // TOML tables come back sorted by key; the report must follow the file.
        let err = error("zzz = 1\naaa = 2\n");
        assert!(err.to_string().contains("unknown key `zzz`"), "{err}");
    }

    #[test]
    fn an_oversized_file_is_refused_without_parsing() {
        let text = format!("# {}\n", "x".repeat(MAX_SETTINGS_BYTES));
        assert!(error(&text).to_string().contains("at most 65536 are read"));
    }

    #[test]
    fn the_operator_wins_key_by_key() {
        let project = parse(
            "min_severity = \"minor\"\nmax_inline_comments = 5\n\
             labels = { include = [\"review\"], exclude = [\"wip\"] }\n",
        );
        let settings = project
            .overridden_by(&json!({
                "max_inline_comments": 0,
                "labels": {"exclude": ["do-not-review"]},
                "publish": "draft"
            }))
            .expect("valid override");
        assert_eq!(settings.min_severity(), Severity::Minor);
        assert_eq!(settings.max_inline_comments(), 0);
        assert_eq!(settings.publish(), PublishMode::Draft);
        assert_eq!(settings.labels().include, labels(&["review"]));
        assert_eq!(settings.labels().exclude, labels(&["do-not-review"]));
    }

    #[test]
    fn a_null_override_changes_nothing_and_other_non_objects_are_refused() {
        let project = parse("min_severity = \"major\"");
        assert_eq!(
            project.clone().overridden_by(&Json::Null),
            Ok(project.clone())
        );
        let err = project
            .overridden_by(&json!(["min_severity"]))
            .expect_err("not an object");
        assert!(
            err.to_string().starts_with(
                "operator settings: `(settings)` = [\"min_severity\"]: expected a JSON object"
            ),
            "{err}"
        );
    }

    #[test]
    fn the_override_is_validated_like_the_file() {
        let err = ProjectSettings::default()
            .overridden_by(&json!({"max_inline_comments": 1e3}))
            .expect_err("float");
        assert_eq!(
            err.to_string(),
            "operator settings: `max_inline_comments` = 1000.0: expected a whole number from 0 (summary only) to 100"
        );
        let err = ProjectSettings::default()
            .overridden_by(&json!({"langauge": "Deutsch"}))
            .expect_err("typo");
        assert!(
            err.to_string()
                .starts_with("operator settings: unknown key `langauge`"),
            "{err}"
        );
        let err = ProjectSettings::default()
            .overridden_by(&json!({"ignore": ["a/[b"]}))
            .expect_err("glob");
        assert!(err.to_string().contains("\"a/[b\""), "{err}");
    }

    #[test]
    fn an_empty_instructions_override_clears_the_projects_instructions() {
        let project = parse("instructions = \"Be terse.\"");
        let cleared = project
            .overridden_by(&json!({"instructions": ""}))
            .expect("valid");
        assert_eq!(cleared.instructions(), None);
    }

    #[test]
    fn the_language_is_configured_or_detected() {
        let detecting = ProjectSettings::default();
        assert_eq!(detecting.language_for("修复登录问题").as_str(), "Chinese");
        assert_eq!(detecting.language_for("").as_str(), "English");
        let fixed = parse("language = \"Deutsch\"");
        assert_eq!(fixed.language_for("修复登录问题").as_str(), "Deutsch");
        let options = fixed.prompt_options("");
        assert_eq!(
            options.language.map(String::from),
            Some("Deutsch".to_owned())
        );
    }

    #[test]
    fn skip_rules_combine_the_projects_globs_with_the_built_in_rules() {
        use crate::review::{
            diff::FileDiff,
            skip::{Screening, SkipReason},
        };
        let rules = parse("ignore = [\"*.snap\"]").skip_rules();
        let file = |path: &str| FileDiff {
            old_path: path.into(),
            new_path: path.into(),
            diff: "@@ -1 +1 @@\n-a\n+b\n".into(),
            ..FileDiff::default()
        };
        let reason = |path: &str| match rules.screen(&file(path)) {
            Screening::Skip(s) => Some(s.reason),
            Screening::Review(_) => None,
        };
        assert_eq!(
            reason("tests/a.snap"),
            Some(SkipReason::IgnoredByPattern {
                pattern: "*.snap".into()
            })
        );
        assert_eq!(reason("Cargo.lock"), Some(SkipReason::LockFile));
        assert_eq!(reason("src/lib.rs"), None);
    }

    #[test]
    fn drafts_are_skipped_unless_configured_otherwise() {
        assert_eq!(
            ProjectSettings::default().should_review(true, &[]),
            Err(SkipMrReason::Draft)
        );
        assert_eq!(ProjectSettings::default().should_review(false, &[]), Ok(()));
        assert_eq!(
            parse("skip_drafts = false").should_review(true, &[]),
            Ok(())
        );
    }

    #[test]
    fn labels_select_and_exclude_merge_requests_case_insensitively() {
        let settings = parse("labels = { include = [\"needs-review\"], exclude = [\"wip\"] }");
        assert_eq!(
            settings.should_review(false, &labels(&["Needs-Review"])),
            Ok(())
        );
        assert_eq!(
            settings.should_review(false, &labels(&["backend"])),
            Err(SkipMrReason::NoIncludedLabel {
                wanted: labels(&["needs-review"])
            })
        );
        // An excluded label wins over an included one, and over the draft rule.
        assert_eq!(
            settings.should_review(true, &labels(&["needs-review", "WIP"])),
            Err(SkipMrReason::ExcludedLabel {
                label: "WIP".into()
            })
        );
    }

    #[test]
    fn skip_reasons_read_as_sentences() {
        assert_eq!(
            SkipMrReason::NoIncludedLabel {
                wanted: labels(&["a", "b"])
            }
            .to_string(),
            "the merge request has none of the labels labels.include asks for (\"a\", \"b\")"
        );
    }

    proptest! {
        #[test]
        fn arbitrary_text_never_panics_and_errors_say_where_they_come_from(text in any::<String>()) {
            if let Err(err) = ProjectSettings::from_toml(&text) {
                prop_assert!(err.to_string().starts_with("`.reviewq.toml`"));
            }
        }
    }
}
