//! The identity of a finding: the [`FindingKey`] the outbox de-duplicates on within a round,
//! and the head-independent [`Fingerprint`] that recognises the same finding across rounds.

use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::review::{
    anchor::{Anchor, anchored_line},
    diff::ParsedFile,
    finding::Finding,
    review_type::ReviewType,
};

/// A stable identifier of a finding within a review, 32 lower-case hex characters.
///
/// It is what the outbox de-duplicates on (together with the MR and head commit) and what the
/// hidden marker carries, so it must come out the same for the same finding in any process, on
/// any machine, in any future build. It is therefore derived with SHA-256 (not `std`'s hasher,
/// whose output is randomised per process and unspecified across Rust versions) over a versioned,
/// length-prefixed encoding of:
///
/// - the review type (a security and a general review may both report the same line);
/// - where the finding lands: the anchored position's paths and line numbers, or, for a finding
///   that goes to the summary, the path and lines as the model gave them;
/// - the normalised title (lower-cased, punctuation and whitespace runs collapsed), or the
///   normalised body when the title is empty.
///
/// Severity, body wording and suggestion are left out on purpose: they vary between runs
/// of the model for what a human would call the same finding, and two findings with the same title
/// on the same line are the same finding. Changing any of this changes every key, so it is
/// versioned (`v1`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct FindingKey(String);

/// Hex characters in a key: 128 bits, plenty against accidental collisions within one MR.
const FINDING_KEY_HEX_LEN: usize = 32;

/// A string that is not a valid [`FindingKey`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid finding key {0:?}: expected {FINDING_KEY_HEX_LEN} lower-case hex characters")]
pub struct InvalidFindingKey(pub String);

impl FindingKey {
    /// Derives the key of `finding`, anchored at `anchor`, in a review of `review_type`.
    pub fn derive(review_type: ReviewType, finding: &Finding, anchor: &Anchor) -> FindingKey {
        let mut hasher = Sha256::new();
        let mut field = |value: &str| {
            hasher.update((value.len() as u64).to_be_bytes());
            hasher.update(value.as_bytes());
        };
        let number = |n: Option<u32>| n.map(|n| n.to_string()).unwrap_or_default();
        field("reviewq-finding-v1");
        field(review_type.as_str());
        match anchor {
            Anchor::Inline(position) => {
                field("inline");
                field(&position.old_path);
                field(&position.new_path);
                field(&number(position.old_line));
                field(&number(position.new_line));
            }
            Anchor::Summary(_) => {
                field("summary");
                field(finding.path.trim());
                field(&number(finding.old_line));
                field(&number(finding.line));
            }
        }
        field(&title_or_body(finding));
        FindingKey(hex_prefix(&hasher.finalize(), FINDING_KEY_HEX_LEN))
    }

    /// Parses a key read back from a marker or the database.
    ///
    /// # Errors
    /// [`InvalidFindingKey`] unless the text is exactly 32 lower-case hex characters.
    pub fn parse(text: &str) -> Result<FindingKey, InvalidFindingKey> {
        if is_lower_hex(text, FINDING_KEY_HEX_LEN) {
            Ok(FindingKey(text.to_owned()))
        } else {
            Err(InvalidFindingKey(text.to_owned()))
        }
    }

    /// The key's text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for FindingKey {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for FindingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for FindingKey {
    type Error = InvalidFindingKey;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        FindingKey::parse(&value)
    }
}

impl From<FindingKey> for String {
    fn from(key: FindingKey) -> String {
        key.0
    }
}

/// A head-independent identity of a finding, 16 lower-case hex characters, for recognising the
/// same finding across review rounds.
///
/// [`FindingKey`] includes line numbers, which shift whenever a push adds or removes lines
/// above the finding; the fingerprint leaves them out. It is SHA-256 over a versioned,
/// length-prefixed encoding of:
///
/// - the review type;
/// - the file's new path (for a finding that went to the summary, the path as the model gave
///   it);
/// - the normalised title (as for [`FindingKey`]), or the normalised body when the title is
///   empty;
/// - the trimmed text of the anchored line: the new text of an added or unchanged line, the
///   old text of a removed line; empty for a finding not anchored to a line.
///
/// So a finding survives a push that moves its line, and becomes a different finding when its
/// line is edited (reindenting aside) or it is reported under another title. Two findings with
/// the same title on two identical lines of one file share a fingerprint; that is accepted, the
/// fingerprint only tells "probably already reported". Versioned (`v1`) like the key.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Fingerprint(String);

/// Hex characters in a fingerprint: 64 bits, ample for the findings of one merge request, and
/// short enough to sit in every marker.
const FINGERPRINT_HEX_LEN: usize = 16;

/// A string that is not a valid [`Fingerprint`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid fingerprint {0:?}: expected {FINGERPRINT_HEX_LEN} lower-case hex characters")]
pub struct InvalidFingerprint(pub String);

impl Fingerprint {
    /// The fingerprint of `finding`, anchored at `anchor` in `files` (the reviewed files the
    /// anchor was computed from), in a review of `review_type`.
    pub fn derive(
        review_type: ReviewType,
        finding: &Finding,
        anchor: &Anchor,
        files: &[ParsedFile],
    ) -> Fingerprint {
        let (path, line_text) = match anchor {
            Anchor::Inline(position) => (
                position.new_path.as_str(),
                anchored_line(files, position).map_or("", |l| l.text.trim()),
            ),
            Anchor::Summary(_) => (finding.path.trim(), ""),
        };
        let mut hasher = Sha256::new();
        let mut field = |value: &str| {
            hasher.update((value.len() as u64).to_be_bytes());
            hasher.update(value.as_bytes());
        };
        field("reviewq-fingerprint-v1");
        field(review_type.as_str());
        field(path);
        field(&title_or_body(finding));
        field(line_text);
        Fingerprint(hex_prefix(&hasher.finalize(), FINGERPRINT_HEX_LEN))
    }

    /// Parses a fingerprint read back from a marker or the database.
    ///
    /// # Errors
    /// [`InvalidFingerprint`] unless the text is exactly 16 lower-case hex characters.
    pub fn parse(text: &str) -> Result<Fingerprint, InvalidFingerprint> {
        if is_lower_hex(text, FINGERPRINT_HEX_LEN) {
            Ok(Fingerprint(text.to_owned()))
        } else {
            Err(InvalidFingerprint(text.to_owned()))
        }
    }

    /// The fingerprint's text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for Fingerprint {
    type Error = InvalidFingerprint;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        Fingerprint::parse(&value)
    }
}

impl From<Fingerprint> for String {
    fn from(fingerprint: Fingerprint) -> String {
        fingerprint.0
    }
}

/// The normalised title, or the normalised body when the title normalises to nothing.
fn title_or_body(finding: &Finding) -> String {
    let title = normalise(&finding.title);
    if title.is_empty() {
        normalise(&finding.body)
    } else {
        title
    }
}

/// The first `len` hex characters of a digest.
fn hex_prefix(digest: &[u8], len: usize) -> String {
    digest
        .iter()
        .take(len / 2)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Exactly `len` characters of `0-9a-f`.
fn is_lower_hex(text: &str, len: usize) -> bool {
    text.len() == len && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Lower-case alphanumeric words separated by single spaces: `"Unchecked  *unwrap()*!"` and
/// `"unchecked unwrap"` normalise alike.
fn normalise(text: &str) -> String {
    let mut out = String::new();
    for word in text
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
    {
        if !out.is_empty() {
            out.push(' ');
        }
        out.extend(word.chars().flat_map(char::to_lowercase));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::review::{
        anchor::{Position, UnanchoredReason},
        finding::Severity,
    };

    fn finding(title: &str, body: &str) -> Finding {
        Finding {
            path: "src/app.rs".into(),
            line: Some(42),
            line_end: None,
            old_line: None,
            severity: Severity::Major,
            title: title.into(),
            body: body.into(),
            suggestion: None,
        }
    }

    fn inline(new_line: u32) -> Anchor {
        Anchor::Inline(Position {
            old_path: "src/app.rs".into(),
            new_path: "src/app.rs".into(),
            old_line: None,
            new_line: Some(new_line),
        })
    }

    #[test]
    fn finding_keys_are_stable_across_wording_severity_and_punctuation() {
        let a = FindingKey::derive(
            ReviewType::General,
            &finding("SQL injection!", "x"),
            &inline(42),
        );
        let mut other = finding("  sql   INJECTION ", "completely different body");
        other.severity = Severity::Critical;
        let b = FindingKey::derive(ReviewType::General, &other, &inline(42));
        assert_eq!(a, b);
        // Pinned so an accidental change of the derivation is caught: keys live in the
        // database and in posted comments. Reproduced independently with Python's hashlib:
        // sha256 over each field as an 8-byte big-endian length then its UTF-8 bytes, for
        // ["reviewq-finding-v1", "general", "inline", "src/app.rs", "src/app.rs", "", "42",
        // "sql injection"], first 16 bytes in hex.
        assert_eq!(a.as_str(), "09d44895009276a50ba29f2ca770a76e");
    }

    #[test]
    fn finding_keys_differ_by_review_type_line_and_title() {
        let base = FindingKey::derive(ReviewType::General, &finding("t", "b"), &inline(42));
        let other_type = FindingKey::derive(ReviewType::Security, &finding("t", "b"), &inline(42));
        let other_line = FindingKey::derive(ReviewType::General, &finding("t", "b"), &inline(43));
        let other_title = FindingKey::derive(ReviewType::General, &finding("u", "b"), &inline(42));
        let summary = FindingKey::derive(
            ReviewType::General,
            &finding("t", "b"),
            &Anchor::Summary(UnanchoredReason::UnknownPath),
        );
        let keys = [base, other_type, other_line, other_title, summary];
        for (i, a) in keys.iter().enumerate() {
            for b in &keys[i + 1..] {
                assert_ne!(a, b);
            }
        }
    }

    #[test]
    fn finding_keys_parse_only_their_own_format() {
        let key = FindingKey::derive(ReviewType::General, &finding("t", "b"), &inline(1));
        assert_eq!(FindingKey::parse(key.as_str()), Ok(key));
        assert!(FindingKey::parse("XYZ").is_err());
        assert!(FindingKey::parse(&"A".repeat(32)).is_err());
    }

    /// `src/app.rs` with an added line `text` at new line `start + 1`, between two context
    /// lines, and a removed line `gone` (old line `start + 1`) before it.
    fn app_file(start: u32, text: &str) -> Vec<ParsedFile> {
        vec![crate::review::diff::parse(&crate::review::diff::FileDiff {
            old_path: "src/app.rs".into(),
            new_path: "src/app.rs".into(),
            diff: format!("@@ -{start},3 +{start},3 @@\n a\n-gone\n+{text}\n b\n"),
            ..Default::default()
        })]
    }

    fn fingerprint_at(files: &[ParsedFile], title: &str, line: u32) -> (Fingerprint, FindingKey) {
        let mut f = finding(title, "body");
        f.line = Some(line);
        let anchor = crate::review::anchor::anchor(files, &f);
        assert!(matches!(anchor, Anchor::Inline(_)), "{anchor:?}");
        (
            Fingerprint::derive(ReviewType::General, &f, &anchor, files),
            FindingKey::derive(ReviewType::General, &f, &anchor),
        )
    }

    #[test]
    fn fingerprints_survive_a_push_that_moves_or_reindents_the_line() {
        let before = app_file(41, "    let id = input.parse().unwrap();");
        let after = app_file(44, "let id = input.parse().unwrap();");
        let (fp_before, key_before) = fingerprint_at(&before, "SQL injection!", 42);
        let (fp_after, key_after) = fingerprint_at(&after, "sql   injection", 45);
        assert_eq!(fp_before, fp_after);
        assert_ne!(key_before, key_after);
        // Pinned: fingerprints live in posted markers. Reproduced with Python's hashlib as for
        // the key, over ["reviewq-fingerprint-v1", "general", "src/app.rs", "sql injection",
        // "let id = input.parse().unwrap();"], first 8 bytes in hex.
        assert_eq!(fp_before.as_str(), "4531e9ac69c82cb5");
    }

    #[test]
    fn fingerprints_differ_by_line_text_title_type_and_path() {
        let files = app_file(41, "let id = input.parse().unwrap();");
        let (base, _) = fingerprint_at(&files, "t", 42);
        let (edited, _) = fingerprint_at(&app_file(41, "let id = input.parse()?;"), "t", 42);
        let (retitled, _) = fingerprint_at(&files, "u", 42);
        let mut f = finding("t", "body");
        f.line = Some(42);
        let anchor = crate::review::anchor::anchor(&files, &f);
        let security = Fingerprint::derive(ReviewType::Security, &f, &anchor, &files);
        f.path = "src/other.rs".into();
        let unanchored = Fingerprint::derive(
            ReviewType::General,
            &f,
            &Anchor::Summary(UnanchoredReason::UnknownPath),
            &files,
        );
        let all = [base, edited, retitled, security, unanchored];
        for (i, a) in all.iter().enumerate() {
            for b in &all[i + 1..] {
                assert_ne!(a, b);
            }
        }
    }

    #[test]
    fn a_removed_line_is_fingerprinted_by_its_old_text() {
        let files = app_file(41, "new text");
        let mut on_removed = finding("t", "b");
        (on_removed.line, on_removed.old_line) = (None, Some(42));
        let anchor = crate::review::anchor::anchor(&files, &on_removed);
        let fp = Fingerprint::derive(ReviewType::General, &on_removed, &anchor, &files);
        // The same removed line beside a different added line: same fingerprint.
        let other_files = app_file(41, "other new text");
        let other_anchor = crate::review::anchor::anchor(&other_files, &on_removed);
        let same = Fingerprint::derive(
            ReviewType::General,
            &on_removed,
            &other_anchor,
            &other_files,
        );
        assert_eq!(fp, same);
        let (on_added, _) = fingerprint_at(&files, "t", 42);
        assert_ne!(fp, on_added);
    }

    #[test]
    fn fingerprints_parse_only_their_own_format() {
        let (fp, _) = fingerprint_at(&app_file(1, "x"), "t", 2);
        assert_eq!(Fingerprint::parse(fp.as_str()), Ok(fp.clone()));
        let json = serde_json::to_string(&fp).expect("serializes");
        let back: Fingerprint = serde_json::from_str(&json).expect("deserializes");
        assert_eq!(back, fp);
        assert!(serde_json::from_str::<Fingerprint>("\"XYZ\"").is_err());
        for bad in ["", "XYZ", &"A".repeat(16), &"a".repeat(15), &"a".repeat(32)] {
            assert!(Fingerprint::parse(bad).is_err(), "{bad}");
        }
    }
}
