//! The hidden marker that identifies reviewq's comments, and the full commit SHA it names.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::review::{
    identity::{FindingKey, Fingerprint},
    review_type::ReviewType,
};

/// A full commit SHA: 40 (SHA-1) or 64 (SHA-256) lower-case hex characters. Full length only, so
/// that markers written by different code paths always compare equal.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct HeadSha(String);

/// A string that is not a full commit SHA.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid commit SHA {0:?}: expected 40 or 64 hex characters")]
pub struct InvalidHeadSha(pub String);

impl HeadSha {
    /// Parses a SHA, accepting upper case.
    ///
    /// # Errors
    /// [`InvalidHeadSha`] unless the text is 40 or 64 hex characters.
    pub fn parse(text: &str) -> Result<HeadSha, InvalidHeadSha> {
        let valid = matches!(text.len(), 40 | 64) && text.bytes().all(|b| b.is_ascii_hexdigit());
        if valid {
            Ok(HeadSha(text.to_ascii_lowercase()))
        } else {
            Err(InvalidHeadSha(text.to_owned()))
        }
    }

    /// The SHA's text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for HeadSha {
    type Error = InvalidHeadSha;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        HeadSha::parse(&value)
    }
}

impl From<HeadSha> for String {
    fn from(sha: HeadSha) -> String {
        sha.0
    }
}

impl fmt::Display for HeadSha {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a marked comment is.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MarkerKind {
    /// The review's summary note.
    Summary,
    /// One finding's comment.
    Finding(FindingKey),
}

/// The hidden identity of a comment we posted:
/// `<!-- reviewq:v1 type=security head=<sha> finding=<key> fp=<fingerprint> -->` or
/// `<!-- reviewq:v1 type=general head=<sha> summary -->`.
///
/// The wiring layer lists the MR's notes, reads markers back with [`find_marker`] and skips
/// anything already posted for the same head commit. Sanitised model text can never contain a
/// marker, but any user can type one, so matches should also be checked against the bot's
/// username.
///
/// Equality and hashing look at the review type, head and kind only, not at the fingerprint:
/// the fingerprint is derived from the same finding the key identifies, and a comment posted
/// by an older version (without `fp=`) must still be recognised as the same comment when a
/// newer version retries the review.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Marker {
    /// The review type that produced the comment.
    pub review_type: ReviewType,
    /// The MR head commit the review was of.
    pub head_sha: HeadSha,
    /// Summary or which finding.
    pub kind: MarkerKind,
    /// The finding's head-independent [`Fingerprint`] (`fp=`), to recognise it in later rounds.
    /// `None` on markers posted by versions before fingerprints; never written on summary
    /// markers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<Fingerprint>,
}

impl Marker {
    /// The marker of a review's summary note.
    pub fn summary(review_type: ReviewType, head_sha: HeadSha) -> Marker {
        Marker {
            review_type,
            head_sha,
            kind: MarkerKind::Summary,
            fingerprint: None,
        }
    }

    /// The marker of one finding's comment.
    pub fn finding(
        review_type: ReviewType,
        head_sha: HeadSha,
        key: FindingKey,
        fingerprint: Option<Fingerprint>,
    ) -> Marker {
        Marker {
            review_type,
            head_sha,
            kind: MarkerKind::Finding(key),
            fingerprint,
        }
    }
}

impl PartialEq for Marker {
    fn eq(&self, other: &Self) -> bool {
        self.review_type == other.review_type
            && self.head_sha == other.head_sha
            && self.kind == other.kind
    }
}

impl Eq for Marker {}

impl std::hash::Hash for Marker {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.review_type.hash(state);
        self.head_sha.hash(state);
        self.kind.hash(state);
    }
}

const MARKER_OPEN: &str = "<!-- reviewq:v1 ";
pub(crate) const MARKER_CLOSE: &str = " -->";

impl fmt::Display for Marker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{MARKER_OPEN}type={} head={} ",
            self.review_type, self.head_sha
        )?;
        match &self.kind {
            MarkerKind::Summary => f.write_str("summary")?,
            MarkerKind::Finding(key) => {
                write!(f, "finding={key}")?;
                if let Some(fingerprint) = &self.fingerprint {
                    write!(f, " fp={fingerprint}")?;
                }
            }
        }
        f.write_str(MARKER_CLOSE)
    }
}

/// The first well-formed marker in a note body, if any.
pub fn find_marker(body: &str) -> Option<Marker> {
    body.match_indices(MARKER_OPEN).find_map(|(start, _)| {
        let rest = &body[start + MARKER_OPEN.len()..];
        let end = rest.find(MARKER_CLOSE)?;
        parse_marker_fields(&rest[..end])
    })
}

/// The marker's fields. `fp=` is optional (markers posted before fingerprints lack it) and only
/// valid on a finding marker; anything else unknown or malformed rejects the marker.
fn parse_marker_fields(fields: &str) -> Option<Marker> {
    let mut review_type = None;
    let mut head_sha = None;
    let mut kind = None;
    let mut fingerprint = None;
    for field in fields.split(' ') {
        match field.split_once('=') {
            Some(("type", v)) => review_type = v.parse().ok(),
            Some(("head", v)) => head_sha = HeadSha::parse(v).ok(),
            Some(("finding", v)) => kind = FindingKey::parse(v).ok().map(MarkerKind::Finding),
            Some(("fp", v)) => fingerprint = Some(Fingerprint::parse(v).ok()?),
            None if field == "summary" => kind = Some(MarkerKind::Summary),
            _ => return None,
        }
    }
    let kind = kind?;
    if kind == MarkerKind::Summary && fingerprint.is_some() {
        return None;
    }
    Some(Marker {
        review_type: review_type?,
        head_sha: head_sha?,
        kind,
        fingerprint,
    })
}
