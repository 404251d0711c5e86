use proptest::prelude::*;

use super::*;
use crate::review::{
    marker::find_marker,
    render::{
        inline::inline_comment,
        tests::{added, finding, lines_start_safely, marker_for},
    },
    skip::SkipReason,
};

fn sha(c: char) -> HeadSha {
    HeadSha::parse(&c.to_string().repeat(40)).expect("valid sha")
}

fn at(day: u32) -> DateTime<Utc> {
    use chrono::TimeZone;
    Utc.with_ymd_and_hms(2025, 3, day, 14, 5, 0)
        .single()
        .expect("valid date")
}

fn round(head: HeadSha, kind: RoundKind, day: u32, cost: Option<f64>) -> Round {
    Round {
        head_sha: head,
        kind,
        files_reviewed: 3,
        chunks: 2,
        prompt_tokens: 12_345,
        completion_tokens: 678,
        cost_usd: cost,
        at: at(day),
    }
}

fn living() -> LivingSummary {
    let mut over = finding("Second check missing.", None);
    over.severity = Severity::Minor;
    over.line = Some(40);
    let mut critical = finding("Token logged.", None);
    critical.severity = Severity::Critical;
    critical.title = "Secret in logs".into();
    LivingSummary {
        review_type: ReviewType::Security,
        head_sha: sha('b'),
        latest_summaries: vec!["Adds token refresh.".into()],
        open_inline: vec![Severity::Major, Severity::Major],
        listed: vec![
            ListedFinding {
                finding: over,
                because: ListedBecause::OverInlineLimit {
                    max_inline_comments: 10,
                },
            },
            ListedFinding {
                finding: critical,
                because: ListedBecause::Unanchored(UnanchoredReason::LineNotInDiff {
                    line: Some(11),
                    old_line: None,
                }),
            },
        ],
        min_severity: Severity::Minor,
        below_min_severity: 3,
        rounds: vec![
            round(
                sha('b'),
                RoundKind::Incremental { since: sha('a') },
                2,
                Some(0.004),
            ),
            round(sha('a'), RoundKind::Full, 1, Some(1.5)),
        ],
        skipped: vec![SkippedFile {
            path: "Cargo.lock".into(),
            reason: SkipReason::LockFile,
        }],
        failed_chunks: vec![FailedChunk {
            index: 0,
            total: 2,
            paths: vec!["src/a.rs".into()],
            reason: "the model's answer contains no JSON object".into(),
        }],
        settings_problem: Some("`.reviewq.toml` line 3: unknown key `foo`; defaults used".into()),
        paused_by: None,
    }
}

#[test]
fn a_paused_merge_request_says_so_and_by_whom() {
    let mut report = living();
    assert!(!living_summary(&report).contains("Paused"));
    report.paused_by = Some("alice".into());
    let body = living_summary(&report);
    assert!(body.contains("**Paused** by alice"), "{body}");
}

#[test]
fn the_living_summary_reports_the_review_as_it_stands() {
    let body = living_summary(&living());
    let lines: Vec<&str> = body.lines().collect();
    for expected in [
        "## reviewq: security review",
        "Reviewed up to `bbbbbbbb` (round 2: changes since `aaaaaaaa`).",
        "> ⚠️ **Settings:** `.reviewq.toml` line 3: unknown key `foo`; defaults used",
        "Adds token refresh.",
        "**Open findings:** 1 critical · 2 major · 1 minor · 0 info (2 in threads, 2 listed below).",
        "_3 findings less severe than minor not shown (`min_severity`)._",
        "### Open findings without a thread (2)",
        "- 🔴 Critical · `src/app.rs` line 11 · **Secret in logs** (not attached: line 11 is not part of the diff)",
        "  Token logged.",
        "- 🟡 Minor · `src/app.rs` line 40 · **Unchecked input** (over the limit of 10 inline comments per round)",
        "### Review rounds (2)",
        "| 2 | 2025-03-02 14:05 UTC | `bbbbbbbb` | since `aaaaaaaa` | 3 | 2 | 12,345 + 678 | $0.0040 |",
        "| 1 | 2025-03-01 14:05 UTC | `aaaaaaaa` | full | 3 | 2 | 12,345 + 678 | $1.50 |",
        "**Total:** 24,690 prompt + 1,356 completion tokens; $1.50.",
        "- `Cargo.lock`: lock file",
        "- Part 1 of 2 (`src/a.rs`): the model's answer contains no JSON object",
    ] {
        assert!(
            lines.contains(&expected),
            "missing {expected:?} in:\n{body}"
        );
    }
    // Most severe first, whatever the order given.
    let critical = body.find("Secret in logs").expect("listed");
    let minor = body.find("**Unchecked input**").expect("listed");
    assert!(critical < minor);
    // Newest round first.
    assert!(body.find("2025-03-02").expect("row") < body.find("2025-03-01").expect("row"));
    // The marker is the current head's summary marker, at the very end.
    assert!(body.ends_with(&Marker::summary(ReviewType::Security, sha('b')).to_string()));
    assert_eq!(
        find_marker(&body),
        Some(Marker::summary(ReviewType::Security, sha('b')))
    );
}

#[test]
fn a_living_summary_with_nothing_open_says_so() {
    let mut quiet = living();
    quiet.open_inline.clear();
    quiet.listed.clear();
    quiet.below_min_severity = 0;
    quiet.settings_problem = None;
    quiet.rounds.truncate(1);
    quiet.rounds[0].kind = RoundKind::Full;
    let body = living_summary(&quiet);
    assert!(
        body.lines().any(|l| l == "**Open findings:** none."),
        "{body}"
    );
    assert!(
        body.contains("(round 1: the whole merge request)."),
        "{body}"
    );
    assert!(!body.contains("### Open findings without a thread"));
    assert!(!body.contains("Settings"));
    assert!(!body.contains("not shown (`min_severity`)"));
}

#[test]
fn the_summary_note_carries_its_rounds_for_a_database_without_them() {
    let report = living();
    let body = living_summary(&report);
    assert_eq!(find_round_history(&body), report.rounds);
    assert_eq!(
        find_marker(&body),
        Some(Marker::summary(report.review_type, report.head_sha.clone())),
        "the summary marker is still read"
    );
    assert!(find_round_history("no history here").is_empty());
    let forged = "<!-- reviewq-rounds [{\"head_sha\":\"x\"}] -->";
    assert!(
        find_round_history(forged).is_empty(),
        "a bad SHA rejects it"
    );
}

#[test]
fn the_oldest_rounds_fold_into_one_numbered_row_and_the_totals_count_every_round() {
    let mut long = living();
    long.rounds = (0..25)
        .map(|i| {
            round(
                sha('c'),
                RoundKind::Full,
                1 + i % 28,
                (i % 2 == 0).then_some(0.5),
            )
        })
        .collect();
    let body = living_summary(&long);
    let rows: Vec<&str> = body.lines().filter(|l| l.contains("| 2025-")).collect();
    assert_eq!(rows.len(), 19, "{body}");
    assert!(rows[0].starts_with("| 25 | "), "{body}");
    assert!(rows[18].starts_with("| 7 | "), "{body}");
    // Rounds 1-6 (i = 0..6): three priced at $0.50, 6 × (12,345 + 678) tokens.
    assert!(
        body.contains("| 1–6 | 6 earlier rounds | | | 18 | 12 | 74,070 + 4,068 | $1.50 for the rounds with a known price |"),
        "{body}"
    );
    assert!(body.contains("| unknown |"), "{body}");
    assert!(
        body.contains("tokens; $6.50 for the rounds with a known price."),
        "{body}"
    );
}

#[test]
fn a_zero_inline_limit_is_explained_as_turned_off() {
    assert_eq!(
        ListedBecause::OverInlineLimit {
            max_inline_comments: 0
        }
        .to_string(),
        "inline comments are turned off"
    );
}

#[test]
fn hostile_text_in_a_living_summary_never_starts_a_line_with_a_slash() {
    let mut hostile = living();
    for item in &mut hostile.listed {
        item.finding.title = "/merge".into();
        item.finding.path = "\n/approve\n".into();
        item.finding.body = "/close\n@all".into();
    }
    hostile.settings_problem = Some("\n/merge @all\r/approve".into());
    hostile.latest_summaries = vec!["/unassign\n```\n/merge\n".into()];
    hostile.skipped[0].path = "x\n/merge".into();
    hostile.failed_chunks[0].reason = "\u{2028}/close".into();
    hostile.failed_chunks[0].paths = vec!["/a\n/b".into()];
    let body = living_summary(&hostile);
    assert!(lines_start_safely(&body), "{body}");
    assert!(!body.contains("@all"), "{body}");
    assert!(!body.contains('\r'));
    assert_eq!(
        find_marker(&body),
        Some(Marker::summary(ReviewType::Security, sha('b')))
    );
}

#[test]
fn a_living_summary_of_the_worst_case_stays_under_gitlabs_limit() {
    // The text that grows most when escaped: `<a` becomes `&lt;a` in prose, `@a` gets a
    // zero-width space in code spans.
    let prose = "<a".repeat(5_000);
    let path = "@a".repeat(5_000);
    let mut huge = living();
    huge.listed = vec![huge.listed[0].clone(); 10_000];
    for item in &mut huge.listed {
        item.finding.title = prose.clone();
        item.finding.path = path.clone();
        item.finding.body = prose.clone();
    }
    huge.skipped = (0..10_000)
        .map(|_| SkippedFile {
            path: path.clone(),
            reason: SkipReason::IgnoredByPattern {
                pattern: prose.clone(),
            },
        })
        .collect();
    huge.failed_chunks = (0..10_000)
        .map(|i| FailedChunk {
            index: i,
            total: 10_000,
            paths: vec![path.clone(); 50],
            reason: prose.clone(),
        })
        .collect();
    huge.latest_summaries = vec![prose.clone(); 1_000];
    huge.settings_problem = Some(prose.clone());
    huge.rounds = vec![huge.rounds[0].clone(); 10_000];
    let body = living_summary(&huge);
    let chars = body.chars().count();
    assert!(chars < 1_000_000, "{chars}");
    assert!(
        body.contains("cut to stay within GitLab's size limit"),
        "{chars}"
    );
    assert!(lines_start_safely(&body));
    assert_eq!(
        find_marker(&body),
        Some(Marker::summary(ReviewType::Security, sha('b')))
    );
}

#[test]
fn numbers_and_costs_are_formatted_for_humans() {
    assert_eq!(grouped(0), "0");
    assert_eq!(grouped(999), "999");
    assert_eq!(grouped(1_000), "1,000");
    assert_eq!(grouped(1_234_567), "1,234,567");
    assert_eq!(dollars(0.0), "$0.0000");
    assert_eq!(dollars(0.0123), "$0.01");
    assert_eq!(dollars(12.345), "$12.35");
    assert_eq!(dollars(f64::NAN), "unknown");
    assert_eq!(dollars(-1.0), "unknown");
}

proptest! {
    #[test]
    fn living_summaries_are_safe_whatever_the_text(
        title in any::<String>(),
        path in any::<String>(),
        body in any::<String>(),
        problem in any::<String>(),
        summary in any::<String>(),
    ) {
        let mut report = living();
        for item in &mut report.listed {
            item.finding.title = title.clone();
            item.finding.path = path.clone();
            item.finding.body = body.clone();
        }
        report.skipped[0].path = path.clone();
        report.settings_problem = Some(problem);
        report.latest_summaries = vec![summary];
        let out = living_summary(&report);
        prop_assert!(lines_start_safely(&out), "{:?}", out);
        prop_assert!(!out.to_lowercase().contains("@all"));
        prop_assert_eq!(
            find_marker(&out),
            Some(Marker::summary(ReviewType::Security, sha('b')))
        );
    }

    #[test]
    fn sanitised_text_never_starts_a_line_with_a_slash_or_mass_mentions(
        text in "([ \t/@`~<!\r\n\u{2028}a-zA-Z]|all|here|/merge|```|    ){0,60}",
    ) {
        let out = sanitize(&text, 10_000);
        prop_assert!(lines_start_safely(&out), "{:?}", out);
        let lower = out.to_lowercase();
        for mention in ["@all", "@here", "@channel"] {
            prop_assert!(!lower.contains(mention), "{:?}", out);
        }
        prop_assert!(find_marker(&out).is_none());
    }

    #[test]
    fn sanitising_arbitrary_text_is_safe(text in any::<String>(), max in 0usize..200) {
        for out in [sanitize(&text, max), sanitize_inline(&text, max)] {
            prop_assert!(lines_start_safely(&out));
            prop_assert!(!out.to_lowercase().contains("@all"));
            prop_assert!(!out.contains('\r'));
        }
    }

    #[test]
    fn inline_comments_always_carry_exactly_their_own_marker(
        title in any::<String>(),
        body in any::<String>(),
        suggestion in proptest::option::of(any::<String>()),
        line_end in proptest::option::of(1u32..100),
    ) {
        let mut f = finding(&body, suggestion.as_deref());
        f.title = title;
        f.line_end = line_end;
        let position = added(11);
        let marker = marker_for(&f, &position);
        let out = inline_comment(&f, &position, &marker);
        prop_assert!(lines_start_safely(&out), "{:?}", out);
        prop_assert_eq!(find_marker(&out), Some(marker));
    }
}
