//! GitLab's Code Quality report: the findings of a head as the JSON array a CI job attaches
//! with `artifacts: reports: codequality:`. GitLab shows it in the MR widget (findings the MR
//! introduces or resolves against the target branch's report), collapsing entries with the
//! same fingerprint, and sends no notification per finding.
//!
//! Each entry has the fields GitLab requires: `description`, `check_name`, `fingerprint`,
//! `severity` (`info`, `minor`, `major`, `critical`, `blocker`) and `location` (`path`,
//! `lines.begin`). The fingerprint is reviewq's head-independent finding [`Fingerprint`], so
//! the same finding on two pushes is the same entry, and a finding found twice in one round
//! is listed once. reviewq's four severities map onto GitLab's of the same name; `blocker` is
//! never used, since reviewq has no level above critical.

use serde::Serialize;

use crate::review::{
    anchor::Position,
    finding::{Finding, Severity},
    identity::Fingerprint,
    render::sanitize_inline,
    review_type::ReviewType,
};

/// Longest description, in characters (GitLab shows it on one line in the widget).
const MAX_DESCRIPTION_CHARS: usize = 300;

/// One finding to report: what the outbox holds of it.
#[derive(Debug, Clone, PartialEq)]
pub struct ReportedFinding {
    pub review_type: ReviewType,
    pub finding: Finding,
    /// Where it anchored in the diff, if it did.
    pub position: Option<Position>,
    pub fingerprint: Fingerprint,
}

/// One entry of the report, in GitLab's field names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Issue {
    pub description: String,
    pub check_name: String,
    pub fingerprint: String,
    pub severity: &'static str,
    pub location: Location,
}

/// `location`: a repository-relative path and the line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Location {
    pub path: String,
    pub lines: Lines,
}

/// `location.lines`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Lines {
    pub begin: u32,
}

/// GitLab's name for a severity.
pub fn gitlab_severity(severity: Severity) -> &'static str {
    match severity {
        Severity::Critical => "critical",
        Severity::Major => "major",
        Severity::Minor => "minor",
        Severity::Info => "info",
    }
}

/// The report's entries: one per fingerprint (the first given wins), ordered by path, line and
/// fingerprint so the file is the same for the same findings.
pub fn report(findings: &[ReportedFinding]) -> Vec<Issue> {
    let mut seen = std::collections::HashSet::new();
    let mut issues: Vec<Issue> = findings
        .iter()
        .filter(|f| seen.insert(f.fingerprint.as_str().to_owned()))
        .map(issue)
        .collect();
    issues.sort_by(|a, b| {
        (&a.location.path, a.location.lines.begin, &a.fingerprint).cmp(&(
            &b.location.path,
            b.location.lines.begin,
            &b.fingerprint,
        ))
    });
    issues
}

fn issue(f: &ReportedFinding) -> Issue {
    // The anchored position names the path GitLab knows (a renamed file's new path); a
    // removed line has only its old number, the nearest the new file has to offer.
    let (path, line) = match &f.position {
        Some(p) => (
            if p.new_line.is_some() || p.old_line.is_none() {
                p.new_path.clone()
            } else {
                p.old_path.clone()
            },
            p.new_line.or(p.old_line),
        ),
        None => (
            f.finding.path.clone(),
            f.finding.line.or(f.finding.old_line),
        ),
    };
    let text = if f.finding.title.trim().is_empty() {
        &f.finding.body
    } else {
        &f.finding.title
    };
    Issue {
        description: sanitize_inline(text, MAX_DESCRIPTION_CHARS),
        check_name: format!("reviewq/{}", f.review_type),
        fingerprint: f.fingerprint.as_str().to_owned(),
        severity: gitlab_severity(f.finding.severity),
        location: Location {
            path: path.trim_start_matches('/').to_owned(),
            lines: Lines {
                begin: line.unwrap_or(1).max(1),
            },
        },
    }
}

/// The report as GitLab reads it: a JSON array, no BOM, with a final newline.
pub fn to_json(issues: &[Issue]) -> String {
    let mut text = serde_json::to_string_pretty(issues).unwrap_or_else(|_| "[]".to_owned());
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn finding(path: &str, line: Option<u32>, severity: Severity, title: &str) -> Finding {
        Finding {
            path: path.to_owned(),
            line,
            line_end: None,
            old_line: None,
            severity,
            title: title.to_owned(),
            body: "Because.".to_owned(),
            suggestion: None,
        }
    }

    fn reported(fp: &str, finding: Finding, position: Option<Position>) -> ReportedFinding {
        ReportedFinding {
            review_type: ReviewType::Security,
            finding,
            position,
            fingerprint: Fingerprint::parse(fp).unwrap(),
        }
    }

    #[test]
    fn every_entry_has_gitlabs_required_fields_with_mapped_severities() {
        let position = Position {
            old_path: "src/old.rs".into(),
            new_path: "src/new.rs".into(),
            old_line: None,
            new_line: Some(7),
        };
        let issues = report(&[
            reported(
                "0123456789abcdef",
                finding("src/new.rs", Some(7), Severity::Critical, "/merge @all <b>"),
                Some(position),
            ),
            reported(
                "fedcba9876543210",
                finding("docs/x.md", None, Severity::Info, ""),
                None,
            ),
        ]);
        let json: serde_json::Value = serde_json::from_str(&to_json(&issues)).unwrap();
        let entries = json.as_array().unwrap();
        assert_eq!(entries.len(), 2);
        for entry in entries {
            for field in ["description", "check_name", "fingerprint", "severity"] {
                assert!(
                    entry[field].as_str().is_some_and(|s| !s.is_empty()),
                    "{entry}"
                );
            }
            assert!(entry["location"]["path"].is_string());
            assert!(entry["location"]["lines"]["begin"].as_u64().unwrap() >= 1);
        }
        let first = &entries[0];
        assert_eq!(first["location"]["path"], "docs/x.md");
        assert_eq!(first["description"], "Because.");
        assert_eq!(first["severity"], "info");
        let second = &entries[1];
        assert_eq!(second["severity"], "critical");
        assert_eq!(second["check_name"], "reviewq/security");
        assert_eq!(second["location"]["lines"]["begin"], 7);
        let description = second["description"].as_str().unwrap();
        assert!(!description.starts_with('/') && !description.contains("@all"));
        assert!(!description.contains("<b>"));
    }

    #[test]
    fn one_entry_per_fingerprint_and_removed_lines_point_at_the_old_path() {
        let removed = Position {
            old_path: "src/gone.rs".into(),
            new_path: "src/gone.rs".into(),
            old_line: Some(3),
            new_line: None,
        };
        let f = finding("src/gone.rs", None, Severity::Major, "Check removed");
        let issues = report(&[
            reported("00000000000000aa", f.clone(), Some(removed.clone())),
            reported("00000000000000aa", f, Some(removed)),
        ]);
        assert_eq!(issues.len(), 1);
        assert_eq!(issues[0].location.lines.begin, 3);
        assert_eq!(issues[0].severity, "major");
        assert_eq!(to_json(&[]), "[]\n");
    }
}
