//! Which files are not sent to the model, and why.
//!
//! Skipping is never silent: every skipped file comes back as a [`SkippedFile`] with a
//! [`SkipReason`] the summary note lists. Cheap path-based rules run before the diff is parsed,
//! so a 50 MB generated file costs a string comparison, not a parse.

use std::fmt;

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use serde::{Deserialize, Serialize};

use crate::review::diff::{self, ChangeKind, Content, FileDiff, ParsedFile};

/// Why a file was not reviewed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "reason")]
pub enum SkipReason {
    /// Matched one of the user's ignore globs.
    IgnoredByPattern {
        /// The pattern as the user wrote it.
        pattern: String,
    },
    /// A package manager's lock file (`Cargo.lock`, `package-lock.json`, ...): machine-written,
    /// huge, and nothing a reviewer can act on line by line.
    LockFile,
    /// Third-party code under `vendor/`, `node_modules/` and the like.
    Vendored,
    /// Generated code or build output.
    Generated {
        /// What gave it away.
        evidence: GeneratedEvidence,
    },
    /// Minified or otherwise single-line-per-file content.
    Minified,
    /// Binary content.
    Binary,
    /// GitLab withheld the diff permanently (`too_large`).
    WithheldByGitLab,
    /// GitLab withheld the diff because the MR hit a diff limit (`collapsed`); it could be fetched
    /// separately.
    Collapsed,
    /// The diff text is larger than [`SkipRules::max_file_diff_bytes`].
    TooLarge {
        /// Size of the diff text.
        bytes: usize,
        /// The configured limit.
        limit: usize,
    },
    /// The file was deleted: there is no new code to review.
    Deleted,
    /// A pure rename, a mode change, or an empty file: no lines changed.
    NoTextChanges {
        /// What did change.
        change: ChangeKind,
    },
    /// There was diff text but no hunk could be parsed from it.
    Unparseable,
    /// The review's chunk limit was reached before this file's turn.
    ChunkLimit {
        /// The configured limit.
        max_chunks: usize,
    },
    /// A single line plus its headers does not fit the prompt budget. Cannot happen with a
    /// budget accepted by [`ChunkBudget::new`](crate::review::chunk::ChunkBudget::new); kept so
    /// the chunker never has to exceed the budget or panic.
    DoesNotFitBudget,
}

/// What marked a file as generated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GeneratedEvidence {
    /// GitLab's `generated_file` flag (from `.gitattributes` or its own rules).
    GitLab,
    /// A file name generators use (`*.pb.go`, `*_pb2.py`, `*.js.map`, ...).
    FileName,
    /// A build output directory (`dist/`, ...).
    BuildOutput,
    /// A header such as `@generated` or `Code generated ... DO NOT EDIT`.
    Marker,
}

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SkipReason::IgnoredByPattern { pattern } => {
                write!(f, "matches ignore pattern {pattern:?}")
            }
            SkipReason::LockFile => f.write_str("lock file"),
            SkipReason::Vendored => f.write_str("vendored third-party code"),
            SkipReason::Generated { evidence } => match evidence {
                GeneratedEvidence::GitLab => f.write_str("generated (marked by GitLab)"),
                GeneratedEvidence::FileName => f.write_str("generated (file name)"),
                GeneratedEvidence::BuildOutput => f.write_str("build output"),
                GeneratedEvidence::Marker => f.write_str("generated (header marker)"),
            },
            SkipReason::Minified => f.write_str("minified"),
            SkipReason::Binary => f.write_str("binary"),
            SkipReason::WithheldByGitLab => {
                f.write_str("diff too large: GitLab did not provide it")
            }
            SkipReason::Collapsed => {
                f.write_str("diff collapsed by GitLab because the merge request is large")
            }
            SkipReason::TooLarge { bytes, limit } => {
                write!(f, "diff too large ({bytes} bytes; limit {limit})")
            }
            SkipReason::Deleted => f.write_str("deleted"),
            SkipReason::NoTextChanges { change } => match change {
                ChangeKind::Renamed => f.write_str("renamed without content changes"),
                ChangeKind::ModeChanged => f.write_str("file mode change only"),
                // GitLab also sends an empty diff for some large new files (gitlab-org/gitlab
                // issue 414389), so do not claim the file is empty.
                ChangeKind::Added => {
                    f.write_str("new file without diff text (empty, or GitLab sent no diff)")
                }
                _ => f.write_str("no text changes"),
            },
            SkipReason::Unparseable => f.write_str("diff could not be parsed"),
            SkipReason::ChunkLimit { max_chunks } => {
                write!(f, "review limit of {max_chunks} chunks reached")
            }
            SkipReason::DoesNotFitBudget => f.write_str("does not fit the prompt budget"),
        }
    }
}

/// A file that was not reviewed, for the summary note.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SkippedFile {
    /// The file's path (the old path for a deleted file).
    pub path: String,
    /// Why it was skipped.
    pub reason: SkipReason,
}

/// A user's ignore globs, compiled once.
///
/// Patterns follow `.gitignore` habits: a pattern without `/` matches the file name at any
/// depth (`*.snap`), a pattern with `/` matches from the repository root (`docs/**`), `*` does
/// not cross `/`, and a leading `/` is ignored.
#[derive(Debug, Clone)]
pub struct IgnoreGlobs {
    set: GlobSet,
    /// The patterns as written, indexed like `set`, to name the one that matched.
    patterns: Vec<String>,
}

/// An ignore pattern that is not a valid glob.
#[derive(Debug, thiserror::Error)]
#[error("invalid ignore pattern {pattern:?}: {source}")]
pub struct InvalidIgnorePattern {
    /// The pattern as written.
    pub pattern: String,
    /// What globset objected to.
    #[source]
    pub source: globset::Error,
}

impl IgnoreGlobs {
    /// Compiles the patterns.
    ///
    /// # Errors
    /// The first pattern that is not a valid glob.
    pub fn new<I, S>(patterns: I) -> Result<Self, InvalidIgnorePattern>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut builder = GlobSetBuilder::new();
        let mut kept = Vec::new();
        for pattern in patterns {
            let pattern = pattern.as_ref().trim();
            if pattern.is_empty() {
                continue;
            }
            let anchored = pattern.trim_start_matches('/');
            let effective = if pattern.contains('/') {
                anchored.to_owned()
            } else {
                format!("**/{anchored}")
            };
            let glob = GlobBuilder::new(&effective)
                .literal_separator(true)
                .build()
                .map_err(|source| InvalidIgnorePattern {
                    pattern: pattern.to_owned(),
                    source,
                })?;
            builder.add(glob);
            kept.push(pattern.to_owned());
        }
        let set = builder.build().map_err(|source| InvalidIgnorePattern {
            pattern: kept.join(", "),
            source,
        })?;
        Ok(IgnoreGlobs {
            set,
            patterns: kept,
        })
    }

    /// No patterns.
    pub fn none() -> Self {
        IgnoreGlobs {
            set: GlobSet::empty(),
            patterns: Vec::new(),
        }
    }

    /// The first pattern (in the order given) matching `path`, if any.
    pub fn matching(&self, path: &str) -> Option<&str> {
        let first = self.set.matches(path).into_iter().min()?;
        self.patterns.get(first).map(String::as_str)
    }
}

/// Two sets are equal when their patterns are: the compiled set is a function of them.
impl PartialEq for IgnoreGlobs {
    fn eq(&self, other: &Self) -> bool {
        self.patterns == other.patterns
    }
}

impl Default for IgnoreGlobs {
    fn default() -> Self {
        IgnoreGlobs::none()
    }
}

/// Default for [`SkipRules::max_file_diff_bytes`]: 512 KiB of diff text is ~175k estimated
/// tokens, seven default-sized chunks for one file. A hand-written change that big is
/// vanishingly rare, generated data is not, and GitLab.com withholds patches over 200 KB
/// anyway, so only self-managed instances with raised limits ever send more.
pub const DEFAULT_MAX_FILE_DIFF_BYTES: usize = 512 * 1024;

/// Mean length of new-side lines above which a file is treated as minified. Hand-written code
/// averages well under 100 characters per line; minified bundles run to thousands.
const MINIFIED_MEAN_LINE_CHARS: usize = 400;

/// How many leading lines of an added or rewritten file are searched for a "generated" header.
/// Generators put it first; searching further would start matching ordinary comments.
const GENERATED_MARKER_LINES: u32 = 5;

/// Lock files by exact file name.
const LOCK_FILES: &[&str] = &[
    "Cargo.lock",
    "package-lock.json",
    "npm-shrinkwrap.json",
    "yarn.lock",
    "pnpm-lock.yaml",
    "bun.lock",
    "bun.lockb",
    "deno.lock",
    "go.sum",
    "go.work.sum",
    "poetry.lock",
    "Pipfile.lock",
    "pdm.lock",
    "uv.lock",
    "composer.lock",
    "Gemfile.lock",
    "mix.lock",
    "flake.lock",
    "Podfile.lock",
    "Package.resolved",
    "pubspec.lock",
    "packages.lock.json",
    "gradle.lockfile",
    "conan.lock",
    "Cartfile.resolved",
];

/// Directory names holding third-party code, matched as any directory component.
const VENDOR_DIRS: &[&str] = &["vendor", "node_modules", "bower_components", "Pods"];

/// Directory names holding build output, matched as any directory component.
const BUILD_OUTPUT_DIRS: &[&str] = &["dist", ".next", "__pycache__"];

/// File-name suffixes that code generators use.
const GENERATED_SUFFIXES: &[&str] = &[
    ".pb.go",
    ".pb.cc",
    ".pb.h",
    "_pb2.py",
    "_pb2_grpc.py",
    ".pb.rs",
    ".g.dart",
    ".freezed.dart",
    ".designer.cs",
    ".js.map",
    ".css.map",
];

/// File-name suffixes of minified assets.
const MINIFIED_SUFFIXES: &[&str] = &[".min.js", ".min.mjs", ".min.css"];

/// The rules deciding which files are skipped.
#[derive(Debug, Clone)]
pub struct SkipRules {
    /// The user's ignore globs.
    pub ignore: IgnoreGlobs,
    /// Diff text above this many bytes is skipped unparsed ([`DEFAULT_MAX_FILE_DIFF_BYTES`]).
    pub max_file_diff_bytes: usize,
}

impl Default for SkipRules {
    fn default() -> Self {
        SkipRules {
            ignore: IgnoreGlobs::none(),
            max_file_diff_bytes: DEFAULT_MAX_FILE_DIFF_BYTES,
        }
    }
}

/// The outcome of screening one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Screening {
    /// Send it to the model.
    Review(ParsedFile),
    /// Do not, and say why.
    Skip(SkippedFile),
}

impl SkipRules {
    /// Decides whether `file` is reviewed, parsing it only if the path-based rules let it
    /// through.
    pub fn screen(&self, file: &FileDiff) -> Screening {
        let path = file.display_path();
        let skip = |reason| {
            Screening::Skip(SkippedFile {
                path: path.to_owned(),
                reason,
            })
        };
        if let Some(reason) = self.reason_before_parsing(file, path) {
            return skip(reason);
        }
        let parsed = diff::parse(file);
        match reason_after_parsing(&parsed) {
            Some(reason) => skip(reason),
            None => Screening::Review(parsed),
        }
    }

    fn reason_before_parsing(&self, file: &FileDiff, path: &str) -> Option<SkipReason> {
        if let Some(pattern) = self.ignore.matching(path) {
            return Some(SkipReason::IgnoredByPattern {
                pattern: pattern.to_owned(),
            });
        }
        let name = path.rsplit('/').next().unwrap_or(path);
        let dirs = || path.split('/').rev().skip(1);
        if LOCK_FILES.contains(&name) {
            return Some(SkipReason::LockFile);
        }
        if dirs().any(|d| VENDOR_DIRS.contains(&d)) {
            return Some(SkipReason::Vendored);
        }
        if file.generated_file {
            return Some(SkipReason::Generated {
                evidence: GeneratedEvidence::GitLab,
            });
        }
        if dirs().any(|d| BUILD_OUTPUT_DIRS.contains(&d)) {
            return Some(SkipReason::Generated {
                evidence: GeneratedEvidence::BuildOutput,
            });
        }
        let lower = name.to_ascii_lowercase();
        if GENERATED_SUFFIXES.iter().any(|s| lower.ends_with(s)) || lower.contains(".generated.") {
            return Some(SkipReason::Generated {
                evidence: GeneratedEvidence::FileName,
            });
        }
        if MINIFIED_SUFFIXES.iter().any(|s| lower.ends_with(s)) {
            return Some(SkipReason::Minified);
        }
        if file.too_large {
            return Some(SkipReason::WithheldByGitLab);
        }
        if file.collapsed {
            return Some(SkipReason::Collapsed);
        }
        if file.diff.len() > self.max_file_diff_bytes {
            return Some(SkipReason::TooLarge {
                bytes: file.diff.len(),
                limit: self.max_file_diff_bytes,
            });
        }
        None
    }
}

fn reason_after_parsing(file: &ParsedFile) -> Option<SkipReason> {
    match file.content {
        Content::Binary => return Some(SkipReason::Binary),
        Content::TooLarge => return Some(SkipReason::WithheldByGitLab),
        Content::Collapsed => return Some(SkipReason::Collapsed),
        Content::Unparseable => return Some(SkipReason::Unparseable),
        Content::Empty if file.change == ChangeKind::Deleted => return Some(SkipReason::Deleted),
        Content::Empty => {
            return Some(SkipReason::NoTextChanges {
                change: file.change,
            });
        }
        Content::Text => {}
    }
    if file.change == ChangeKind::Deleted {
        return Some(SkipReason::Deleted);
    }
    if has_generated_marker(file) {
        return Some(SkipReason::Generated {
            evidence: GeneratedEvidence::Marker,
        });
    }
    if looks_minified(file) {
        return Some(SkipReason::Minified);
    }
    None
}

fn has_generated_marker(file: &ParsedFile) -> bool {
    file.lines()
        .filter(|l| l.new_line.is_some_and(|n| n <= GENERATED_MARKER_LINES))
        .any(|l| {
            let text = l.text.to_lowercase();
            text.contains("@generated")
                || text.contains("autogenerated")
                || text.contains("auto-generated")
                || text.contains("automatically generated")
                || (text.contains("generated") && text.contains("do not edit"))
        })
}

fn looks_minified(file: &ParsedFile) -> bool {
    let (count, chars) = file
        .lines()
        .filter(|l| l.new_line.is_some())
        .fold((0usize, 0usize), |(n, c), l| {
            (n + 1, c + l.text.chars().count())
        });
    count > 0 && chars / count > MINIFIED_MEAN_LINE_CHARS
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::review::fixtures;

    fn modified(path: &str, diff: &str) -> FileDiff {
        FileDiff {
            old_path: path.into(),
            new_path: path.into(),
            diff: diff.into(),
            ..FileDiff::default()
        }
    }

    fn reason(rules: &SkipRules, file: &FileDiff) -> Option<SkipReason> {
        match rules.screen(file) {
            Screening::Review(_) => None,
            Screening::Skip(skipped) => Some(skipped.reason),
        }
    }

    const SMALL: &str = "@@ -1 +1 @@\n-a\n+b\n";

    #[test]
    fn lock_files_are_skipped_wherever_they_live() {
        let rules = SkipRules::default();
        for path in [
            "Cargo.lock",
            "web/package-lock.json",
            "a/b/go.sum",
            "uv.lock",
        ] {
            assert_eq!(
                reason(&rules, &modified(path, SMALL)),
                Some(SkipReason::LockFile),
                "{path}"
            );
        }
        assert_eq!(reason(&rules, &modified("src/lock.rs", SMALL)), None);
    }

    #[test]
    fn vendored_directories_are_skipped_but_similar_names_are_not() {
        let rules = SkipRules::default();
        assert_eq!(
            reason(&rules, &modified("vendor/github.com/x/y.go", SMALL)),
            Some(SkipReason::Vendored)
        );
        assert_eq!(
            reason(&rules, &modified("web/node_modules/x/index.js", SMALL)),
            Some(SkipReason::Vendored)
        );
        assert_eq!(reason(&rules, &modified("src/vendor.rs", SMALL)), None);
    }

    #[test]
    fn minified_files_are_skipped_by_name_and_by_line_length() {
        let rules = SkipRules::default();
        assert_eq!(
            reason(&rules, &modified("static/app.min.js", SMALL)),
            Some(SkipReason::Minified)
        );
        let long_line = format!("@@ -0,0 +1 @@\n+{}\n", "x;".repeat(1000));
        assert_eq!(
            reason(&rules, &modified("static/bundle.js", &long_line)),
            Some(SkipReason::Minified)
        );
    }

    #[test]
    fn generated_files_are_skipped_by_flag_name_directory_and_header() {
        let rules = SkipRules::default();
        let flagged = FileDiff {
            generated_file: true,
            ..modified("src/schema.rs", SMALL)
        };
        assert_eq!(
            reason(&rules, &flagged),
            Some(SkipReason::Generated {
                evidence: GeneratedEvidence::GitLab
            })
        );
        assert_eq!(
            reason(&rules, &modified("api/v1/user.pb.go", SMALL)),
            Some(SkipReason::Generated {
                evidence: GeneratedEvidence::FileName
            })
        );
        assert_eq!(
            reason(&rules, &modified("web/dist/app.js", SMALL)),
            Some(SkipReason::Generated {
                evidence: GeneratedEvidence::BuildOutput
            })
        );
        let header = "@@ -0,0 +1,2 @@\n+// Code generated by sqlc. DO NOT EDIT.\n+package db\n";
        assert_eq!(
            reason(&rules, &modified("db/query.go", header)),
            Some(SkipReason::Generated {
                evidence: GeneratedEvidence::Marker
            })
        );
    }

    #[test]
    fn a_generated_marker_deep_in_a_file_does_not_skip_it() {
        let rules = SkipRules::default();
        let deep = "@@ -80,1 +80,2 @@\n ctx\n+// this is @generated-looking text\n";
        assert_eq!(reason(&rules, &modified("src/x.rs", deep)), None);
    }

    #[test]
    fn oversized_diffs_are_skipped_without_parsing() {
        let rules = SkipRules {
            max_file_diff_bytes: 10,
            ..SkipRules::default()
        };
        assert_eq!(
            reason(&rules, &modified("src/x.rs", SMALL)),
            Some(SkipReason::TooLarge {
                bytes: SMALL.len(),
                limit: 10
            })
        );
    }

    #[test]
    fn a_fifty_megabyte_generated_file_is_skipped_quickly() {
        let huge = format!("@@ -0,0 +1,1 @@\n+{}\n", "a".repeat(50 * 1024 * 1024));
        let rules = SkipRules::default();
        let started = std::time::Instant::now();
        assert!(matches!(
            reason(&rules, &modified("data/dump.sql", &huge)),
            Some(SkipReason::TooLarge { .. })
        ));
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
    }

    #[test]
    fn user_globs_follow_gitignore_habits_and_name_the_matching_pattern() {
        let globs = IgnoreGlobs::new(["*.snap", "/docs/**", "  "]).expect("valid globs");
        assert_eq!(globs.matching("tests/__snapshots__/a.snap"), Some("*.snap"));
        assert_eq!(globs.matching("docs/guide/intro.md"), Some("/docs/**"));
        assert_eq!(globs.matching("src/docs/intro.md"), None);
        let rules = SkipRules {
            ignore: globs,
            ..SkipRules::default()
        };
        assert_eq!(
            reason(&rules, &modified("a.snap", SMALL)),
            Some(SkipReason::IgnoredByPattern {
                pattern: "*.snap".into()
            })
        );
    }

    #[test]
    fn an_invalid_glob_is_reported_with_the_pattern() {
        let err = IgnoreGlobs::new(["src/[oops"]).unwrap_err();
        assert!(err.to_string().contains("src/[oops"), "{err}");
    }

    #[test]
    fn fixture_files_are_screened_with_the_expected_reasons() {
        let rules = SkipRules::default();
        let reasons: Vec<(String, Option<String>)> = fixtures::gitlab_diffs()
            .iter()
            .map(|f| match rules.screen(f) {
                Screening::Review(p) => (p.display_path().to_owned(), None),
                Screening::Skip(s) => (s.path, Some(s.reason.to_string())),
            })
            .collect();
        let expected: Vec<(String, Option<String>)> = [
            ("src/app.rs", None),
            ("src/new_module.rs", None),
            ("docs/legacy.md", Some("deleted")),
            ("src/new_name.rs", None),
            ("assets/README.txt", Some("renamed without content changes")),
            ("assets/logo.png", Some("binary")),
            (
                "data/fixtures.json",
                Some("diff too large: GitLab did not provide it"),
            ),
            ("Cargo.lock", Some("lock file")),
        ]
        .into_iter()
        .map(|(p, r)| (p.to_owned(), r.map(str::to_owned)))
        .collect();
        assert_eq!(reasons, expected);
    }
}
