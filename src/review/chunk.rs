//! The chunk types: what one prompt holds ([`Chunk`], [`ChunkFile`], [`FilePart`]), the plan
//! of a review ([`ChunkPlan`]), its token budget and configuration, and the halving of a chunk
//! the model found too big. Packing files into chunks is [`pack`](mod@crate::review::pack).

use serde::{Deserialize, Serialize};

use crate::review::{
    diff::{ChangeKind, Hunk, ParsedFile},
    finding::Answer,
    skip::{SkipRules, SkippedFile},
};

/// The most a prompt (system + user message) may cost, in estimated tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkBudget {
    max_prompt_tokens: usize,
}

/// Default prompt budget: 24k estimated tokens (roughly 17–20k real GLM tokens, since the
/// estimate is pessimistic).
///
/// GLM-4.6 accepts 200k, but a modest budget is better: models follow the output format and find
/// issues less reliably as context grows (peers report models "forgetting the format" on long
/// prompts); answers are capped by `max_tokens`, so one huge chunk loses more findings to
/// truncation than several small ones; smaller chunks run in parallel, retry cheaply and fit the
/// 120 s chunk timeout; and 24k plus a generous answer fits every 128k-context GLM variant with
/// thinking enabled.
pub const DEFAULT_MAX_PROMPT_TOKENS: usize = 24_000;

/// Smallest accepted budget. The fixed part of a prompt (instructions, capped title and
/// description) plus the largest possible single-line piece (capped path, section and line text)
/// costs about 6k estimated tokens; below this a line could fail to fit. A test checks the
/// arithmetic.
pub const MIN_PROMPT_TOKENS: usize = 8_000;

/// Default cap on chunks per review: 50 chunks of 24k is at most 1.2M prompt tokens (about
/// US$0.72 at glm-4.6's list price) and about 17 minutes at 3 requests in flight. Files beyond
/// it are listed as skipped rather than letting one giant MR burn the day's quota.
pub const DEFAULT_MAX_CHUNKS: usize = 50;

/// A budget outside the accepted range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("prompt budget of {0} tokens is below the minimum of {MIN_PROMPT_TOKENS}")]
pub struct BudgetTooSmall(pub usize);

impl ChunkBudget {
    /// A budget of `max_prompt_tokens` estimated tokens per prompt.
    ///
    /// # Errors
    /// [`BudgetTooSmall`] below [`MIN_PROMPT_TOKENS`].
    pub fn new(max_prompt_tokens: usize) -> Result<Self, BudgetTooSmall> {
        if max_prompt_tokens < MIN_PROMPT_TOKENS {
            return Err(BudgetTooSmall(max_prompt_tokens));
        }
        Ok(ChunkBudget { max_prompt_tokens })
    }

    /// The most a prompt may cost, in estimated tokens.
    pub fn max_prompt_tokens(self) -> usize {
        self.max_prompt_tokens
    }
}

impl Default for ChunkBudget {
    fn default() -> Self {
        ChunkBudget {
            max_prompt_tokens: DEFAULT_MAX_PROMPT_TOKENS,
        }
    }
}

/// Everything [`plan`](crate::review::pack::plan) needs to know.
#[derive(Debug, Clone)]
pub struct ChunkConfig {
    /// Per-prompt token budget.
    pub budget: ChunkBudget,
    /// Which files to skip.
    pub skip: SkipRules,
    /// At most this many chunks per review ([`DEFAULT_MAX_CHUNKS`]).
    pub max_chunks: usize,
}

impl Default for ChunkConfig {
    fn default() -> Self {
        ChunkConfig {
            budget: ChunkBudget::default(),
            skip: SkipRules::default(),
            max_chunks: DEFAULT_MAX_CHUNKS,
        }
    }
}

/// Which part of a split file a [`ChunkFile`] holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FilePart {
    /// 1-based part number.
    pub number: usize,
    /// How many parts the file was split into.
    pub of: usize,
}

/// A file, or one part of a file, inside a chunk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkFile {
    /// Path before the change.
    pub old_path: String,
    /// Path after the change.
    pub new_path: String,
    /// What happened to the file.
    pub change: ChangeKind,
    /// `Some` when the file was split across chunks.
    pub part: Option<FilePart>,
    /// The hunks (or pieces of hunks) in this part.
    pub hunks: Vec<Hunk>,
}

/// The files of one prompt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Chunk {
    /// 0-based position in the plan.
    pub index: usize,
    /// Number of chunks in the plan, so the prompt can say "part 2 of 5".
    pub total: usize,
    /// The files, in GitLab's order.
    pub files: Vec<ChunkFile>,
}

/// The outcome of [`plan`](crate::review::pack::plan).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkPlan {
    /// The prompts to send, in order.
    pub chunks: Vec<Chunk>,
    /// Files not reviewed, with reasons, in GitLab's order.
    pub skipped: Vec<SkippedFile>,
    /// The files that are in `chunks`, whole, for anchoring findings.
    pub reviewed: Vec<ParsedFile>,
}

/// Splits a chunk whose answer [overflows](Answer::overflows) into two halves by files, so
/// that each half is asked again and no finding is cut. `None` when the answer fits, or
/// when the chunk holds a single file (or part of one): that answer is used as it is, up
/// to [`MAX_FINDINGS_PER_ANSWER`](crate::review::finding::MAX_FINDINGS_PER_ANSWER).
///
/// Splitting by files only bounds the extra calls: a chunk of `n` files takes at most
/// `2n - 1` calls however the model answers, where splitting down to lines would let a
/// model that always answers 25 findings double the calls at every line count.
pub fn split_for_findings(chunk: &Chunk, answer: &Answer) -> Option<(Chunk, Chunk)> {
    if !answer.overflows() || chunk.files.len() < 2 {
        return None;
    }
    split_in_two(chunk)
}

/// Splits a chunk the model found too big (GLM 1261, or an answer cut off at its length
/// limit) into two halves: by files, else by hunks, else by lines. `None` when the chunk is
/// a single line and cannot be split further. The halves keep the chunk's `total`.
pub fn split_in_two(chunk: &Chunk) -> Option<(Chunk, Chunk)> {
    let halves = |files: (Vec<ChunkFile>, Vec<ChunkFile>)| {
        let first = Chunk {
            index: chunk.index,
            total: chunk.total,
            files: files.0,
        };
        let second = Chunk {
            index: chunk.index,
            total: chunk.total,
            files: files.1,
        };
        Some((first, second))
    };
    if chunk.files.len() >= 2 {
        let mut first = chunk.files.clone();
        let second = first.split_off(first.len() / 2);
        return halves((first, second));
    }
    let file = chunk.files.first()?;
    let with_hunks = |hunks: Vec<Hunk>| ChunkFile {
        hunks,
        ..file.clone()
    };
    if file.hunks.len() >= 2 {
        let mut first = file.hunks.clone();
        let second = first.split_off(first.len() / 2);
        return halves((vec![with_hunks(first)], vec![with_hunks(second)]));
    }
    let hunk = file.hunks.first()?;
    if hunk.lines.len() < 2 {
        return None;
    }
    let mut first = hunk.lines.clone();
    let second = first.split_off(first.len() / 2);
    halves((
        vec![with_hunks(vec![Hunk::from_lines(&hunk.section, first)])],
        vec![with_hunks(vec![Hunk::from_lines(&hunk.section, second)])],
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::review::{
        fixtures::{big_diff, modified},
        pack::plan,
    };

    fn budget(tokens: usize) -> ChunkConfig {
        ChunkConfig {
            budget: ChunkBudget::new(tokens).expect("valid budget"),
            ..ChunkConfig::default()
        }
    }

    #[test]
    fn budgets_below_the_minimum_are_rejected() {
        assert_eq!(ChunkBudget::new(100), Err(BudgetTooSmall(100)));
        assert!(ChunkBudget::new(MIN_PROMPT_TOKENS).is_ok());
    }

    #[test]
    fn a_chunk_splits_in_two_by_files_then_hunks_then_lines_and_loses_no_line() {
        let config = budget(24_000);
        let diffs = vec![
            modified("a.rs", big_diff(2, 3, 10)),
            modified("b.rs", big_diff(1, 4, 10)),
        ];
        let plan = plan(&diffs, &config);
        let chunk = &plan.chunks[0];
        let count = |c: &Chunk| -> usize {
            c.files
                .iter()
                .flat_map(|f| &f.hunks)
                .map(|h| h.lines.len())
                .sum()
        };
        let (a, b) = split_in_two(chunk).expect("two files split");
        assert_eq!((a.files.len(), b.files.len()), (1, 1));
        assert_eq!(count(&a) + count(&b), count(chunk));
        let (a1, a2) = split_in_two(&a).expect("two hunks split");
        assert_eq!((a1.files[0].hunks.len(), a2.files[0].hunks.len()), (1, 1));
        let (l1, l2) = split_in_two(&a1).expect("three lines split");
        assert_eq!((count(&l1), count(&l2)), (1, 2));
        assert_eq!(
            l2.files[0].hunks[0].lines[0].new_line,
            a1.files[0].hunks[0].lines[1].new_line
        );
        assert!(split_in_two(&l1).is_none(), "one line cannot be split");
    }

    #[test]
    fn only_an_overflowing_answer_of_several_files_splits_and_then_by_files() {
        let config = budget(24_000);
        let diffs = vec![
            modified("a.rs", big_diff(2, 3, 10)),
            modified("b.rs", big_diff(1, 4, 10)),
        ];
        let chunk = &plan(&diffs, &config).chunks[0];
        let answer = |n: usize| {
            let items = vec![r#"{"title":"t"}"#; n].join(",");
            crate::review::parse_answer(&format!(r#"{{"findings":[{items}]}}"#)).expect("parses")
        };
        let full = answer(crate::review::finding::SPLIT_AT_FINDINGS);
        assert!(split_for_findings(chunk, &answer(10)).is_none());
        let (a, b) = split_for_findings(chunk, &full).expect("two files split");
        assert_eq!((a.files.len(), b.files.len()), (1, 1));
        assert!(
            split_for_findings(&a, &full).is_none(),
            "one file is not split further: its answer is used up to the hard limit"
        );
    }
}
