//! Packing reviewable files into chunks, one prompt each, under a token budget.
//!
//! The guarantee: every prompt [`prompt::render`] builds for a chunk of a [`ChunkPlan`] (or
//! [`prompt::render_with`], with the options the plan was made for by [`plan_with`]) has an
//! estimated size ([`Prompt::estimated_tokens`](crate::review::prompt::Prompt::estimated_tokens))
//! of at most
//! [`ChunkBudget::max_prompt_tokens`](crate::review::chunk::ChunkBudget::max_prompt_tokens),
//! whatever the input, and every diff line of every reviewed file appears in exactly one chunk,
//! in order.
//!
//! How: each file, hunk header and line is costed with the same text the prompt will contain,
//! and the estimate is sub-additive, so the sum of the pieces bounds the whole. Files are packed
//! greedily in GitLab's order (related files stay together and the result is deterministic). A
//! file too big for one chunk is split at hunk boundaries into parts labelled "part i of n",
//! each repeating the file header; a hunk too big for one chunk is split by lines, each piece
//! repeating the hunk's section heading.

use crate::review::{
    chunk::{Chunk, ChunkConfig, ChunkFile, ChunkPlan, FilePart},
    diff::{FileDiff, Hunk, ParsedFile},
    prompt::{self, PromptOptions},
    skip::{Screening, SkipReason, SkippedFile},
    tokens::estimate_tokens,
};

/// Screens `diffs` and packs the reviewable ones into chunks, for prompts without project
/// options ([`prompt::render`]). Deterministic: the same input and configuration always give
/// the same plan.
pub fn plan(diffs: &[FileDiff], config: &ChunkConfig) -> ChunkPlan {
    plan_with(diffs, config, &PromptOptions::default())
}

/// [`plan`] for prompts rendered with `options` ([`prompt::render_with`]): the options' text
/// (the project's instructions above all) is taken out of every chunk's budget.
///
/// With long instructions and a budget near
/// [`MIN_PROMPT_TOKENS`](crate::review::chunk::MIN_PROMPT_TOKENS), a file whose single longest
/// line no longer fits is skipped with [`SkipReason::DoesNotFitBudget`]; the default budget
/// leaves ample room.
pub fn plan_with(diffs: &[FileDiff], config: &ChunkConfig, options: &PromptOptions) -> ChunkPlan {
    pack(diffs.iter().map(|d| config.skip.screen(d)), config, options)
}

/// Packs files already screened (and perhaps narrowed, as an incremental review does with
/// [`restrict`](crate::review::incremental::restrict)) into chunks. Skipped files are carried
/// into the plan's `skipped` in the order given; `config.skip` is not consulted again.
pub fn pack(
    screened: impl IntoIterator<Item = Screening>,
    config: &ChunkConfig,
    options: &PromptOptions,
) -> ChunkPlan {
    let capacity = config
        .budget
        .max_prompt_tokens()
        .saturating_sub(prompt::fixed_overhead_tokens(options));
    let mut packer = Packer::new(capacity, config.max_chunks);
    let mut skipped = Vec::new();
    let mut reviewed = Vec::new();

    for screening in screened {
        let parsed = match screening {
            Screening::Skip(file) => {
                skipped.push(file);
                continue;
            }
            Screening::Review(parsed) => parsed,
        };
        let reason = match split_file(&parsed, capacity) {
            None => Some(SkipReason::DoesNotFitBudget),
            Some(units) => (!packer.place(units)).then_some(SkipReason::ChunkLimit {
                max_chunks: config.max_chunks,
            }),
        };
        match reason {
            Some(reason) => skipped.push(SkippedFile {
                path: parsed.display_path().to_owned(),
                reason,
            }),
            None => reviewed.push(parsed),
        }
    }

    ChunkPlan {
        chunks: packer.finish(),
        skipped,
        reviewed,
    }
}

/// A file or file part with its cost in estimated tokens (headers included).
struct Unit {
    file: ChunkFile,
    cost: usize,
}

/// Greedy packing of units into chunks of at most `capacity`.
struct Packer {
    capacity: usize,
    max_chunks: usize,
    chunks: Vec<Vec<ChunkFile>>,
    /// Cost already in the last chunk.
    last_cost: usize,
}

impl Packer {
    fn new(capacity: usize, max_chunks: usize) -> Self {
        Packer {
            capacity,
            max_chunks,
            chunks: Vec::new(),
            last_cost: 0,
        }
    }

    /// Where each unit would go: `true` to join the last chunk, `false` to open a new one.
    /// Returns `None` if that would exceed the chunk limit.
    fn layout(&self, units: &[Unit]) -> Option<Vec<bool>> {
        let mut count = self.chunks.len();
        let mut cost = self.last_cost;
        let mut joins = Vec::with_capacity(units.len());
        for unit in units {
            let join = count > 0 && cost + unit.cost <= self.capacity;
            if join {
                cost += unit.cost;
            } else {
                count += 1;
                cost = unit.cost;
            }
            joins.push(join);
        }
        (count <= self.max_chunks).then_some(joins)
    }

    /// Places all of a file's units, or none of them if the chunk limit would be exceeded.
    fn place(&mut self, units: Vec<Unit>) -> bool {
        let Some(joins) = self.layout(&units) else {
            return false;
        };
        for (unit, join) in units.into_iter().zip(joins) {
            match self.chunks.last_mut() {
                Some(chunk) if join => {
                    chunk.push(unit.file);
                    self.last_cost += unit.cost;
                }
                _ => {
                    self.chunks.push(vec![unit.file]);
                    self.last_cost = unit.cost;
                }
            }
        }
        true
    }

    fn finish(self) -> Vec<Chunk> {
        let total = self.chunks.len();
        self.chunks
            .into_iter()
            .enumerate()
            .map(|(index, files)| Chunk {
                index,
                total,
                files,
            })
            .collect()
    }
}

/// The widest part label, used to cost file headers before the number of parts is known.
const WIDEST_PART: FilePart = FilePart {
    number: usize::MAX,
    of: usize::MAX,
};

fn chunk_file(file: &ParsedFile, part: Option<FilePart>, hunks: Vec<Hunk>) -> ChunkFile {
    ChunkFile {
        old_path: file.old_path.clone(),
        new_path: file.new_path.clone(),
        change: file.change,
        part,
        hunks,
    }
}

fn file_header_cost(file: &ParsedFile, part: Option<FilePart>) -> usize {
    estimate_tokens(&prompt::file_header(&chunk_file(file, part, Vec::new())))
}

/// Cost of a hunk's lines, without its header.
fn lines_cost(hunk: &Hunk) -> usize {
    hunk.lines
        .iter()
        .map(|l| estimate_tokens(&prompt::diff_line(l)))
        .sum()
}

/// Turns a file into one unit, or into labelled parts when it does not fit `capacity` whole.
/// `None` if even a single line does not fit.
fn split_file(file: &ParsedFile, capacity: usize) -> Option<Vec<Unit>> {
    let hunk_costs: Vec<usize> = file
        .hunks
        .iter()
        .map(|h| prompt::hunk_header_cost_bound(&h.section) + lines_cost(h))
        .collect();
    let whole = file_header_cost(file, None) + hunk_costs.iter().sum::<usize>();
    if whole <= capacity {
        return Some(vec![Unit {
            file: chunk_file(file, None, file.hunks.clone()),
            cost: whole,
        }]);
    }

    let header = file_header_cost(file, Some(WIDEST_PART));
    let room = capacity.checked_sub(header)?;
    let mut pieces: Vec<(Hunk, usize)> = Vec::new();
    for (hunk, &cost) in file.hunks.iter().zip(&hunk_costs) {
        if cost <= room {
            pieces.push((hunk.clone(), cost));
        } else {
            pieces.extend(split_hunk(hunk, room)?);
        }
    }

    let mut parts: Vec<(Vec<Hunk>, usize)> = Vec::new();
    for (piece, cost) in pieces {
        match parts.last_mut() {
            Some((hunks, used)) if *used + cost <= room => {
                hunks.push(piece);
                *used += cost;
            }
            _ => parts.push((vec![piece], cost)),
        }
    }
    let of = parts.len();
    Some(
        parts
            .into_iter()
            .enumerate()
            .map(|(i, (hunks, used))| Unit {
                file: chunk_file(file, Some(FilePart { number: i + 1, of }), hunks),
                cost: header + used,
            })
            .collect(),
    )
}

/// Splits a hunk by lines into pieces costing at most `room` each (header included). `None` if
/// one line with a header does not fit.
fn split_hunk(hunk: &Hunk, room: usize) -> Option<Vec<(Hunk, usize)>> {
    let header = prompt::hunk_header_cost_bound(&hunk.section);
    let mut pieces = Vec::new();
    let mut lines = Vec::new();
    let mut used = header;
    for line in &hunk.lines {
        let cost = estimate_tokens(&prompt::diff_line(line));
        if header + cost > room {
            return None;
        }
        if used + cost > room {
            pieces.push((
                Hunk::from_lines(&hunk.section, std::mem::take(&mut lines)),
                used,
            ));
            used = header;
        }
        lines.push(line.clone());
        used += cost;
    }
    if !lines.is_empty() {
        pieces.push((Hunk::from_lines(&hunk.section, lines), used));
    }
    Some(pieces)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;
    use crate::review::{
        chunk::{ChunkBudget, DEFAULT_MAX_PROMPT_TOKENS, MIN_PROMPT_TOKENS},
        diff::{ChangeKind, DiffLine, LineKind},
        fixtures::{self, big_diff, modified},
        prompt::render,
        review_type::ReviewType,
    };
    fn budget(tokens: usize) -> ChunkConfig {
        ChunkConfig {
            budget: ChunkBudget::new(tokens).expect("valid budget"),
            ..ChunkConfig::default()
        }
    }

    fn all_prompts_fit(plan: &ChunkPlan, config: &ChunkConfig) -> bool {
        plan.chunks.iter().all(|chunk| {
            ReviewType::ALL.into_iter().all(|t| {
                let prompt = render(t, chunk, &"T".repeat(10_000), &"界\n".repeat(10_000));
                prompt.estimated_tokens() <= config.budget.max_prompt_tokens()
            })
        })
    }

    /// Lines per file path, concatenated across chunks in order.
    fn lines_by_path(plan: &ChunkPlan) -> BTreeMap<String, Vec<DiffLine>> {
        let mut map: BTreeMap<String, Vec<DiffLine>> = BTreeMap::new();
        for chunk in &plan.chunks {
            for file in &chunk.files {
                map.entry(file.new_path.clone())
                    .or_default()
                    .extend(file.hunks.iter().flat_map(|h| h.lines.iter().cloned()));
            }
        }
        map
    }

    #[test]
    fn plans_made_with_options_keep_prompts_with_those_options_in_budget() {
        use crate::review::{
            instructions::{Instructions, MAX_INSTRUCTIONS_CHARS},
            language::Language,
            prompt::render_with,
        };
        let options = PromptOptions {
            language: Some(Language::parse("Português (Brasil)").expect("valid")),
            instructions: Some(
                Instructions::parse(&"界".repeat(MAX_INSTRUCTIONS_CHARS)).expect("valid"),
            ),
        };
        let diffs: Vec<FileDiff> = (0..12)
            .map(|i| modified(&format!("src/f{i}.rs"), big_diff(3, 100, 30)))
            .collect();
        let config = budget(DEFAULT_MAX_PROMPT_TOKENS);
        let with_options = plan_with(&diffs, &config, &options);
        assert!(
            with_options.skipped.is_empty(),
            "{:?}",
            with_options.skipped
        );
        for chunk in &with_options.chunks {
            for t in ReviewType::ALL {
                let prompt = render_with(
                    t,
                    chunk,
                    &"T".repeat(10_000),
                    &"界\n".repeat(10_000),
                    &options,
                );
                assert!(
                    prompt.estimated_tokens() <= DEFAULT_MAX_PROMPT_TOKENS,
                    "{t}"
                );
            }
        }
        // The instructions' room comes out of the diff's.
        let without = plan(&diffs, &config);
        assert!(with_options.chunks.len() > without.chunks.len());
        assert_eq!(lines_by_path(&with_options), lines_by_path(&without));
    }

    #[test]
    fn packing_screened_files_keeps_skips_in_the_order_given() {
        let diffs = vec![
            modified("a.rs", big_diff(1, 3, 10)),
            modified("Cargo.lock", big_diff(1, 3, 10)),
            modified("b.rs", big_diff(1, 3, 10)),
        ];
        let config = ChunkConfig::default();
        let screened: Vec<Screening> = diffs.iter().map(|d| config.skip.screen(d)).collect();
        let packed = pack(screened, &config, &PromptOptions::default());
        assert_eq!(packed, plan(&diffs, &config));
        assert_eq!(packed.skipped[0].path, "Cargo.lock");
    }

    #[test]
    fn the_minimum_budget_fits_the_largest_possible_single_line_piece() {
        let path = "界".repeat(10_000);
        let hunk = Hunk {
            old_start: u32::MAX,
            old_len: u32::MAX,
            new_start: u32::MAX,
            new_len: u32::MAX,
            section: "界".repeat(10_000),
            lines: vec![DiffLine {
                kind: LineKind::Context,
                old_line: Some(u32::MAX),
                new_line: Some(u32::MAX),
                text: "界".repeat(100_000),
                no_newline_at_eof: true,
            }],
        };
        let chunk = Chunk {
            index: usize::MAX - 1,
            total: usize::MAX,
            files: vec![ChunkFile {
                old_path: path.clone(),
                new_path: path + "x",
                change: ChangeKind::Renamed,
                part: Some(WIDEST_PART),
                hunks: vec![hunk],
            }],
        };
        for t in ReviewType::ALL {
            let prompt = render(t, &chunk, &"界".repeat(10_000), &"界\n".repeat(10_000));
            assert!(
                prompt.estimated_tokens() <= MIN_PROMPT_TOKENS,
                "{t}: {} tokens",
                prompt.estimated_tokens()
            );
        }
    }

    #[test]
    fn small_files_share_one_chunk_in_gitlab_order() {
        let diffs: Vec<FileDiff> = ["a.rs", "b.rs", "c.rs"]
            .iter()
            .map(|p| modified(p, big_diff(1, 3, 10)))
            .collect();
        let plan = plan(&diffs, &ChunkConfig::default());
        assert_eq!(plan.chunks.len(), 1);
        let paths: Vec<&str> = plan.chunks[0]
            .files
            .iter()
            .map(|f| f.new_path.as_str())
            .collect();
        assert_eq!(paths, vec!["a.rs", "b.rs", "c.rs"]);
        assert!(plan.chunks[0].files.iter().all(|f| f.part.is_none()));
    }

    #[test]
    fn a_file_too_big_for_one_chunk_is_split_at_hunk_boundaries_into_labelled_parts() {
        let config = budget(MIN_PROMPT_TOKENS);
        // Each hunk ~ 60 lines * ~30 tokens = ~1.8k tokens; 10 hunks need several chunks.
        let diffs = vec![modified("src/big.rs", big_diff(10, 60, 80))];
        let plan = plan(&diffs, &config);
        assert!(plan.chunks.len() > 1);
        let parts: Vec<FilePart> = plan
            .chunks
            .iter()
            .flat_map(|c| c.files.iter().filter_map(|f| f.part))
            .collect();
        let of = parts.len();
        assert!(
            parts
                .iter()
                .enumerate()
                .all(|(i, p)| p.number == i + 1 && p.of == of)
        );
        // Hunks were not cut: every piece is a whole original hunk.
        for chunk in &plan.chunks {
            for file in &chunk.files {
                assert!(file.hunks.iter().all(|h| h.lines.len() == 60));
            }
        }
        assert!(all_prompts_fit(&plan, &config));
    }

    #[test]
    fn a_hunk_too_big_for_one_chunk_is_split_by_lines() {
        let config = budget(MIN_PROMPT_TOKENS);
        let diffs = vec![modified("src/huge.rs", big_diff(1, 2_000, 60))];
        let plan = plan(&diffs, &config);
        assert!(plan.chunks.len() > 1);
        assert!(plan.skipped.is_empty());
        let lines = lines_by_path(&plan);
        let news: Vec<u32> = lines["src/huge.rs"]
            .iter()
            .filter_map(|l| l.new_line)
            .collect();
        assert_eq!(news, (1..=2_000).collect::<Vec<u32>>());
        assert!(all_prompts_fit(&plan, &config));
    }

    #[test]
    fn files_beyond_the_chunk_limit_are_skipped_whole_and_listed() {
        let config = ChunkConfig {
            max_chunks: 1,
            ..budget(MIN_PROMPT_TOKENS)
        };
        let diffs = vec![
            modified("a.rs", big_diff(1, 5, 10)),
            modified("big.rs", big_diff(10, 60, 80)),
            modified("c.rs", big_diff(1, 5, 10)),
        ];
        let plan = plan(&diffs, &config);
        assert_eq!(plan.chunks.len(), 1);
        let in_chunks: Vec<&str> = plan.chunks[0]
            .files
            .iter()
            .map(|f| f.new_path.as_str())
            .collect();
        assert_eq!(in_chunks, vec!["a.rs", "c.rs"]);
        assert_eq!(
            plan.skipped,
            vec![SkippedFile {
                path: "big.rs".into(),
                reason: SkipReason::ChunkLimit { max_chunks: 1 }
            }]
        );
    }

    #[test]
    fn thousands_of_files_are_planned_quickly_and_none_is_lost() {
        let diffs: Vec<FileDiff> = (0..3_000)
            .map(|i| modified(&format!("src/m{i}.rs"), big_diff(1, 4, 20)))
            .collect();
        let config = ChunkConfig {
            max_chunks: usize::MAX,
            ..ChunkConfig::default()
        };
        let plan = plan(&diffs, &config);
        assert_eq!(plan.reviewed.len() + plan.skipped.len(), 3_000);
        assert_eq!(lines_by_path(&plan).len(), 3_000);
        assert!(plan.chunks.iter().all(|c| c.total == plan.chunks.len()));
    }

    #[test]
    fn fixture_plan_reviews_three_files_and_lists_five_skipped() {
        let plan = plan(&fixtures::gitlab_diffs(), &ChunkConfig::default());
        assert_eq!(plan.chunks.len(), 1);
        let reviewed: Vec<&str> = plan.reviewed.iter().map(|f| f.display_path()).collect();
        assert_eq!(
            reviewed,
            vec!["src/app.rs", "src/new_module.rs", "src/new_name.rs"]
        );
        assert_eq!(plan.skipped.len(), 5);
    }

    fn arbitrary_file() -> impl Strategy<Value = FileDiff> {
        (
            "[a-c]{1,2}/[a-z]{1,6}\\.(rs|py|go)",
            1u32..100_000,
            proptest::collection::vec(
                proptest::collection::vec(
                    (
                        prop_oneof![
                            Just(LineKind::Added),
                            Just(LineKind::Removed),
                            Just(LineKind::Context)
                        ],
                        prop_oneof![
                            8 => "[a-z (){};=]{0,80}",
                            1 => "[界é\u{fffd}a-z]{0,1500}",
                        ],
                    ),
                    1..120,
                ),
                1..6,
            ),
        )
            .prop_map(|(path, start, hunks)| {
                let (diff, _) = crate::review::fixtures::render_hunks((start, start), &hunks);
                modified(&path, diff)
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        #[test]
        fn hostile_input_never_panics_and_never_exceeds_the_budget(
            files in proptest::collection::vec(
                (any::<String>(), any::<String>(), any::<[bool; 5]>()).prop_map(|(path, diff, flags)| {
                    FileDiff {
                        old_path: path.clone(),
                        new_path: path,
                        diff,
                        new_file: flags[0],
                        deleted_file: flags[1],
                        renamed_file: flags[2],
                        collapsed: flags[3],
                        too_large: flags[4],
                        ..FileDiff::default()
                    }
                }),
                0..8,
            ),
        ) {
            let config = budget(MIN_PROMPT_TOKENS);
            let plan = plan(&files, &config);
            prop_assert!(all_prompts_fit(&plan, &config));
            prop_assert_eq!(plan.reviewed.len() + plan.skipped.len(), files.len());
        }

        #[test]
        fn no_prompt_exceeds_the_budget_and_no_line_is_lost_or_duplicated(
            files in proptest::collection::vec(arbitrary_file(), 1..12),
            tokens in MIN_PROMPT_TOKENS..20_000,
        ) {
            // Paths may repeat in generated input; keep the first of each so lines are
            // attributable.
            let mut seen = std::collections::HashSet::new();
            let files: Vec<FileDiff> =
                files.into_iter().filter(|f| seen.insert(f.new_path.clone())).collect();
            let config = ChunkConfig { max_chunks: usize::MAX, ..budget(tokens) };
            let plan = plan(&files, &config);

            prop_assert!(all_prompts_fit(&plan, &config));
            prop_assert_eq!(plan.reviewed.len() + plan.skipped.len(), files.len());
            let chunked = lines_by_path(&plan);
            for file in &plan.reviewed {
                let expected: Vec<DiffLine> = file.lines().cloned().collect();
                prop_assert_eq!(chunked.get(&file.new_path), Some(&expected));
            }
            prop_assert_eq!(chunked.len(), plan.reviewed.len());
            // Deterministic.
            prop_assert_eq!(super::plan(&files, &config), plan);
        }
    }
}
