//! The values of one settings layer (the TOML file or the operator's JSON), reduced to what
//! validation looks at ([`Raw`], with where each is written), and their validation ([`Check`]).

use std::{collections::HashSet, ops::Range};

use serde_json::Value as Json;

use super::{
    LABEL_KEYS, LabelFilter, Location, MAX_IGNORE_PATTERNS, MAX_INLINE_COMMENTS, MAX_ITEM_CHARS,
    MAX_LABELS, MAX_SHOWN_VALUE_CHARS, OutputMode, PublishMode, SettingsError, SettingsOrigin,
};
use crate::review::{
    finding::Severity,
    instructions::{Instructions, InvalidInstructions, MAX_INSTRUCTIONS_CHARS},
    language::{Language, MAX_LANGUAGE_CHARS},
    review_type::ReviewType,
    skip::IgnoreGlobs,
};
/// A settings value from either source, reduced to what validation looks at.
#[derive(Debug, Clone)]
pub(super) enum Raw {
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
pub(super) struct Item {
    pub(super) value: Raw,
    pub(super) at: Option<Location>,
}

/// A key, where it is written, and its value.
#[derive(Debug, Clone)]
pub(super) struct Entry {
    pub(super) key: String,
    pub(super) key_at: Option<Location>,
    pub(super) item: Item,
}

/// Entries in the order they are written (TOML tables come back sorted by key), so the first
/// problem reported is the first in the file. Entries without a location keep their order.
pub(super) fn in_written_order(entries: &[Entry]) -> Vec<&Entry> {
    let mut sorted: Vec<&Entry> = entries.iter().collect();
    sorted.sort_by_key(|e| e.key_at.map(|l| (l.line, l.column)));
    sorted
}

pub(super) fn toml_entries(table: &toml::de::DeTable<'_>, text: &str) -> Vec<Entry> {
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

pub(super) fn json_item(value: &Json) -> Item {
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
pub(super) fn shown(value: &Raw) -> String {
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
pub(super) struct Check {
    pub(super) origin: SettingsOrigin,
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

    pub(super) fn unknown(
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

    pub(super) fn boolean(&self, key: &str, item: &Item) -> Result<bool, SettingsError> {
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

    pub(super) fn review_types(
        &self,
        key: &str,
        item: &Item,
    ) -> Result<Vec<ReviewType>, SettingsError> {
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

    pub(super) fn ignore(&self, key: &str, item: &Item) -> Result<IgnoreGlobs, SettingsError> {
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

    pub(super) fn language(&self, key: &str, item: &Item) -> Result<Language, SettingsError> {
        let expected = format!(
            "a language name such as \"English\" or \"Deutsch\" \
             (1 to {MAX_LANGUAGE_CHARS} letters, no line breaks)"
        );
        let text = self.string(key, item, &expected)?;
        Language::parse(text).map_err(|_| self.bad(key, item, expected))
    }

    pub(super) fn severity(&self, key: &str, item: &Item) -> Result<Severity, SettingsError> {
        const EXPECTED: &str = "one of \"critical\", \"major\", \"minor\", \"info\"";
        let text = self.string(key, item, EXPECTED)?;
        Severity::ALL
            .into_iter()
            .find(|s| s.as_str().eq_ignore_ascii_case(text.trim()))
            .ok_or_else(|| self.bad(key, item, EXPECTED))
    }

    pub(super) fn max_inline_comments(
        &self,
        key: &str,
        item: &Item,
    ) -> Result<usize, SettingsError> {
        let expected = format!("a whole number from 0 (summary only) to {MAX_INLINE_COMMENTS}");
        match item.value {
            Raw::Integer(n) => usize::try_from(n)
                .ok()
                .filter(|&n| n <= MAX_INLINE_COMMENTS)
                .ok_or_else(|| self.bad(key, item, expected)),
            _ => Err(self.bad(key, item, expected)),
        }
    }

    pub(super) fn instructions(
        &self,
        key: &str,
        item: &Item,
    ) -> Result<Option<Instructions>, SettingsError> {
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

    pub(super) fn publish(&self, key: &str, item: &Item) -> Result<PublishMode, SettingsError> {
        const EXPECTED: &str = "\"immediate\" or \"draft\"";
        let text = self.string(key, item, EXPECTED)?;
        [PublishMode::Immediate, PublishMode::Draft]
            .into_iter()
            .find(|m| m.as_str().eq_ignore_ascii_case(text.trim()))
            .ok_or_else(|| self.bad(key, item, EXPECTED))
    }

    pub(super) fn output(&self, key: &str, item: &Item) -> Result<OutputMode, SettingsError> {
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
    pub(super) fn labels(
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
