use proptest::prelude::*;
use serde_json::json;

use super::*;
use crate::review::instructions::MAX_INSTRUCTIONS_CHARS;

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
        message.contains("output") && message.contains("\"widget\"") && message.contains("both"),
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
