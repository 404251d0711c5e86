//! Where a round's findings go: the files they are anchored against, the state each one
//! takes in the outbox (posted inline, listed in the summary, held back), and how the
//! living summary counts each state. Pure decisions; the review job stores and posts them.

use std::{fmt, str::FromStr};

use super::{Chunk, ParsedFile, diff::Content};

/// What an outbox row becomes on GitLab (the `outbox.kind` column).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CommentKind {
    /// A thread on a line of the diff.
    Inline,
    /// The summary note, or a finding listed in it (it had no line to anchor to).
    Summary,
}

impl CommentKind {
    /// The stable text stored in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Inline => "inline",
            Self::Summary => "summary",
        }
    }
}

/// Where an outbox row stands (the `outbox.state` column; the CHECK constraint lists the
/// same values).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CommentState {
    /// To post.
    Pending,
    /// GitLab has it.
    Posted,
    /// GitLab refused the position (or it had no line): listed in the summary instead.
    Downgraded,
    /// A dry run: never posted.
    DryRun,
    /// An earlier round's thread about the same code is still open: not posted again.
    Open,
    /// Someone answered "won't fix" to an earlier round's thread about it.
    Dismissed,
    /// Under the project's `min_severity`: counted, neither posted nor listed.
    BelowThreshold,
    /// Beyond `max_inline_comments`: listed in the summary.
    OverLimit,
    /// Staged as a draft note, to be published with the others at once.
    Drafted,
    /// `output = "codequality"`: for the Code Quality report only.
    CodeQuality,
}

impl CommentState {
    /// Every state, in the order the CHECK constraint lists them.
    pub const ALL: [Self; 10] = [
        Self::Pending,
        Self::Posted,
        Self::Downgraded,
        Self::DryRun,
        Self::Open,
        Self::Dismissed,
        Self::BelowThreshold,
        Self::OverLimit,
        Self::Drafted,
        Self::CodeQuality,
    ];

    /// The stable text stored in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Posted => "posted",
            Self::Downgraded => "downgraded",
            Self::DryRun => "dry_run",
            Self::Open => "open",
            Self::Dismissed => "dismissed",
            Self::BelowThreshold => "below_threshold",
            Self::OverLimit => "over_limit",
            Self::Drafted => "drafted",
            Self::CodeQuality => "codequality",
        }
    }

    /// The row needs nothing more from this round (posting it again would post it twice).
    pub fn is_final(self) -> bool {
        matches!(self, Self::Posted | Self::DryRun)
    }
}

impl fmt::Display for CommentState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An outbox state or kind text the database should not hold.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown outbox {what} {value:?}")]
pub struct UnknownValue {
    what: &'static str,
    value: String,
}

impl FromStr for CommentState {
    type Err = UnknownValue;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|state| state.as_str() == s)
            .ok_or_else(|| UnknownValue {
                what: "state",
                value: s.to_owned(),
            })
    }
}

impl FromStr for CommentKind {
    type Err = UnknownValue;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [Self::Inline, Self::Summary]
            .into_iter()
            .find(|kind| kind.as_str() == s)
            .ok_or_else(|| UnknownValue {
                what: "kind",
                value: s.to_owned(),
            })
    }
}

/// What is known of an anchored finding when its outbox state is decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct InlineFacts {
    /// Under the project's `min_severity`.
    pub below_threshold: bool,
    /// Someone dismissed an earlier round's thread with the same fingerprint.
    pub dismissed: bool,
    /// An earlier round's thread with the same fingerprint is still open.
    pub open_elsewhere: bool,
    /// The project wants findings in the Code Quality report only.
    pub code_quality_only: bool,
    /// The round's inline comments already reach `max_inline_comments`.
    pub inline_limit_reached: bool,
}

/// The state of a finding anchored to a line, in precedence order: the severity floor
/// first (such a finding is never shown), then what people said in earlier rounds, then the
/// project's output choice, then the inline limit.
pub fn inline_state(facts: InlineFacts) -> CommentState {
    if facts.below_threshold {
        CommentState::BelowThreshold
    } else if facts.dismissed {
        CommentState::Dismissed
    } else if facts.open_elsewhere {
        CommentState::Open
    } else if facts.code_quality_only {
        CommentState::CodeQuality
    } else if facts.inline_limit_reached {
        CommentState::OverLimit
    } else {
        CommentState::Pending
    }
}

/// How the living summary counts an outbox row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SummaryPlace {
    /// Counted under "below the severity floor".
    BelowThreshold,
    /// Not mentioned at all.
    Hidden,
    /// Counted among the open inline comments (posted, to post, or kept open).
    OpenInline,
    /// Listed: the inline limit was reached.
    OverInlineLimit,
    /// Listed: GitLab refused its position.
    RejectedByGitLab,
    /// Listed: it had no line to anchor to.
    Unanchored,
}

/// Where a row of this round goes in the summary.
pub fn summary_place(kind: CommentKind, state: CommentState) -> SummaryPlace {
    use CommentState as S;
    match (kind, state) {
        (_, S::BelowThreshold) => SummaryPlace::BelowThreshold,
        (_, S::Dismissed) => SummaryPlace::Hidden,
        (
            CommentKind::Inline,
            S::Posted | S::DryRun | S::Pending | S::Drafted | S::Open | S::CodeQuality,
        ) => SummaryPlace::OpenInline,
        (CommentKind::Inline, S::OverLimit) => SummaryPlace::OverInlineLimit,
        (CommentKind::Inline, S::Downgraded) => SummaryPlace::RejectedByGitLab,
        (CommentKind::Summary, _) => SummaryPlace::Unanchored,
    }
}

/// The files a round reviewed, rebuilt from its chunks: a file split across chunks is
/// joined again, so that findings anchor against the whole of it.
pub fn reviewed_files<'a>(chunks: impl IntoIterator<Item = &'a Chunk>) -> Vec<ParsedFile> {
    let mut files: Vec<ParsedFile> = Vec::new();
    for chunk in chunks {
        for f in &chunk.files {
            match files
                .iter_mut()
                .find(|p| p.old_path == f.old_path && p.new_path == f.new_path)
            {
                Some(p) => p.hunks.extend(f.hunks.iter().cloned()),
                None => files.push(ParsedFile {
                    old_path: f.old_path.clone(),
                    new_path: f.new_path.clone(),
                    change: f.change,
                    content: Content::Text,
                    hunks: f.hunks.clone(),
                    issues: Vec::new(),
                }),
            }
        }
    }
    files
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::review::chunk::ChunkFile;

    #[test]
    fn every_state_reads_back_from_its_stored_text() {
        for state in CommentState::ALL {
            assert_eq!(state.as_str().parse::<CommentState>(), Ok(state));
        }
        for kind in [CommentKind::Inline, CommentKind::Summary] {
            assert_eq!(kind.as_str().parse::<CommentKind>(), Ok(kind));
        }
        assert!("shipped".parse::<CommentState>().is_err());
    }

    #[test]
    fn the_severity_floor_wins_over_every_other_fact() {
        let all = InlineFacts {
            below_threshold: true,
            dismissed: true,
            open_elsewhere: true,
            code_quality_only: true,
            inline_limit_reached: true,
        };
        assert_eq!(inline_state(all), CommentState::BelowThreshold);
    }

    #[test]
    fn a_dismissed_finding_stays_dismissed_even_when_its_thread_is_open() {
        let facts = InlineFacts {
            dismissed: true,
            open_elsewhere: true,
            ..InlineFacts::default()
        };
        assert_eq!(inline_state(facts), CommentState::Dismissed);
    }

    #[test]
    fn the_inline_limit_applies_only_to_findings_that_would_be_posted() {
        let open = InlineFacts {
            open_elsewhere: true,
            inline_limit_reached: true,
            ..InlineFacts::default()
        };
        assert_eq!(inline_state(open), CommentState::Open);
        let quality = InlineFacts {
            code_quality_only: true,
            inline_limit_reached: true,
            ..InlineFacts::default()
        };
        assert_eq!(inline_state(quality), CommentState::CodeQuality);
        let over = InlineFacts {
            inline_limit_reached: true,
            ..InlineFacts::default()
        };
        assert_eq!(inline_state(over), CommentState::OverLimit);
        assert_eq!(inline_state(InlineFacts::default()), CommentState::Pending);
    }

    #[test]
    fn the_summary_lists_refused_and_over_limit_findings_and_counts_the_rest() {
        use CommentKind::{Inline, Summary};
        assert_eq!(
            summary_place(Inline, CommentState::Downgraded),
            SummaryPlace::RejectedByGitLab
        );
        assert_eq!(
            summary_place(Inline, CommentState::OverLimit),
            SummaryPlace::OverInlineLimit
        );
        assert_eq!(
            summary_place(Inline, CommentState::Open),
            SummaryPlace::OpenInline
        );
        assert_eq!(
            summary_place(Summary, CommentState::Pending),
            SummaryPlace::Unanchored
        );
        assert_eq!(
            summary_place(Summary, CommentState::BelowThreshold),
            SummaryPlace::BelowThreshold
        );
        assert_eq!(
            summary_place(Inline, CommentState::Dismissed),
            SummaryPlace::Hidden
        );
    }

    #[test]
    fn a_file_split_across_two_chunks_is_joined_into_one() {
        let diff = "@@ -1,2 +1,2 @@\n-a\n+b\n c\n@@ -10,2 +10,2 @@\n-x\n+y\n z\n";
        let file = crate::review::diff::parse(&crate::review::FileDiff {
            old_path: "src/lib.rs".into(),
            new_path: "src/lib.rs".into(),
            diff: diff.into(),
            ..crate::review::FileDiff::default()
        });
        assert_eq!(file.hunks.len(), 2);
        let half = |hunk: usize, index: usize| Chunk {
            index,
            total: 2,
            files: vec![ChunkFile {
                old_path: file.old_path.clone(),
                new_path: file.new_path.clone(),
                change: file.change,
                part: None,
                hunks: vec![file.hunks[hunk].clone()],
            }],
        };
        let files = reviewed_files(&[half(0, 0), half(1, 1)]);
        assert_eq!(files.len(), 1);
        assert_eq!(files[0].hunks, file.hunks);
    }
}
