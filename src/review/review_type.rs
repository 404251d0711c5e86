//! The kinds of review a job can ask for. Every kind asks for the same JSON answer; they differ
//! only in what the model is told to look for.

use std::{fmt, str::FromStr};

use serde::{Deserialize, Serialize};

/// What the review concentrates on (`--review-type`).
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum ReviewType {
    /// Correctness first, then security, robustness and maintainability.
    #[default]
    General,
    /// Vulnerabilities only.
    Security,
    /// Efficiency only.
    Performance,
}

impl ReviewType {
    /// Every review type, in a fixed order.
    pub const ALL: [ReviewType; 3] = [
        ReviewType::General,
        ReviewType::Security,
        ReviewType::Performance,
    ];

    /// The name used on the command line, in markers and in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            ReviewType::General => "general",
            ReviewType::Security => "security",
            ReviewType::Performance => "performance",
        }
    }
}

impl fmt::Display for ReviewType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A review type name that is not one of `general`, `security`, `performance`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown review type {0:?}: expected general, security or performance")]
pub struct UnknownReviewType(pub String);

impl FromStr for ReviewType {
    type Err = UnknownReviewType;

    /// Case-insensitive, surrounding whitespace ignored.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let wanted = s.trim();
        ReviewType::ALL
            .into_iter()
            .find(|t| t.as_str().eq_ignore_ascii_case(wanted))
            .ok_or_else(|| UnknownReviewType(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn review_types_round_trip_through_their_names() {
        for t in ReviewType::ALL {
            assert_eq!(t.as_str().parse::<ReviewType>(), Ok(t));
        }
    }

    #[test]
    fn review_type_parsing_ignores_case_and_whitespace() {
        assert_eq!(" Security ".parse(), Ok(ReviewType::Security));
    }

    #[test]
    fn unknown_review_type_names_the_bad_value_and_the_choices() {
        let err = "style".parse::<ReviewType>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown review type \"style\": expected general, security or performance"
        );
    }
}
