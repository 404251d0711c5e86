//! `reviewq codequality REF --head SHA` and `reviewq review --codequality FILE`: the Code
//! Quality report of a head, from the database (`review::codequality` renders it).
//!
//! The report lists the findings of the latest finished review of every review type at that
//! head, dismissed ("won't fix") and below-`min_severity` findings left out, one entry per
//! finding fingerprint.

use std::{io::Write, path::Path, process::ExitCode};

use anyhow::Context;
use clap::Args;
use sqlx::PgPool;

use crate::{
    config::DbArgs,
    config::UsageError,
    mr_ref::{MrRef, parse_refs},
    review::{
        Finding, Fingerprint, HeadSha, Position, ReviewType,
        codequality::{self, Issue, ReportedFinding},
    },
};

/// Arguments of `codequality`.
#[derive(Debug, Args)]
pub struct CodeQualityArgs {
    /// The merge request: PROJECT:IID, PROJECT!IID or its URL.
    #[arg(value_name = "REF")]
    pub mr: String,

    /// The head commit whose findings to report (the full SHA, e.g. `$CI_COMMIT_SHA`).
    #[arg(long, value_name = "SHA")]
    pub head: String,
}

/// The report's entries for `mr` at `head`; `None` when no review of that head finished.
///
/// # Errors
/// Database errors, or an outbox row that does not parse.
pub async fn issues(
    pool: &PgPool,
    mr: &MrRef,
    head: &HeadSha,
) -> anyhow::Result<Option<Vec<Issue>>> {
    let iid = i64::try_from(mr.iid).context("the IID is too large")?;
    let project = mr.project.to_string();
    let reviewed = sqlx::query_scalar!(
        r#"select exists (select 1 from reviews where project = $1 and mr_iid = $2
               and head_sha = $3 and state = 'done') as "e!""#,
        project,
        iid,
        head.as_str(),
    )
    .fetch_one(pool)
    .await?;
    if !reviewed {
        return Ok(None);
    }
    let rows = sqlx::query!(
        r#"
        select r.review_type, o.finding as "finding!", o.position, o.fingerprint as "fingerprint!"
        from outbox o join reviews r on r.id = o.review_id
        where r.id in (select max(id) from reviews where project = $1 and mr_iid = $2
                           and head_sha = $3 and state = 'done' group by review_type)
          and o.key <> 'summary' and o.finding is not null and o.fingerprint is not null
          and o.state not in ('dismissed', 'below_threshold')
        order by r.id, o.key
        "#,
        project,
        iid,
        head.as_str(),
    )
    .fetch_all(pool)
    .await?;
    let mut findings = Vec::with_capacity(rows.len());
    for r in rows {
        findings.push(ReportedFinding {
            review_type: r
                .review_type
                .parse::<ReviewType>()
                .map_err(|e| anyhow::anyhow!("{e}"))?,
            finding: serde_json::from_value::<Finding>(r.finding)?,
            position: r
                .position
                .map(serde_json::from_value::<Position>)
                .transpose()?,
            fingerprint: Fingerprint::parse(&r.fingerprint)?,
        });
    }
    Ok(Some(codequality::report(&findings)))
}

/// Runs `reviewq codequality`: the report on standard output.
///
/// # Errors
/// Usage errors for a bad REF or SHA (nothing read); runtime failures, including no finished
/// review of that head in this database.
pub async fn run(db: &DbArgs, args: CodeQualityArgs) -> anyhow::Result<ExitCode> {
    let mr = one_ref(&args.mr)?;
    let head = HeadSha::parse(&args.head).map_err(|e| {
        UsageError(format!(
            "--head {:?}: {e} (the head commit's full SHA, e.g. $CI_COMMIT_SHA)",
            args.head
        ))
    })?;
    let pool = db.pool(2).await?;
    let Some(issues) = issues(&pool, &mr, &head).await? else {
        anyhow::bail!(
            "no finished review of {mr} at {head} in this database: run `reviewq review {mr} --codequality FILE` in the same job, or point DATABASE_URL at the fleet's database"
        );
    };
    let mut out = std::io::stdout().lock();
    out.write_all(codequality::to_json(&issues).as_bytes())?;
    Ok(ExitCode::SUCCESS)
}

fn one_ref(raw: &str) -> Result<MrRef, UsageError> {
    let mut refs = parse_refs(&[raw.to_owned()]).map_err(|e| UsageError(e.to_string()))?;
    if refs.len() != 1 {
        return Err(UsageError(format!(
            "{raw:?} names {} merge requests; a Code Quality report is of one",
            refs.len()
        )));
    }
    Ok(refs.remove(0))
}

/// Checks before anything runs that `file` can be written: its directory exists.
///
/// # Errors
/// A usage error naming the path.
pub fn check_target(file: &Path) -> Result<(), UsageError> {
    let dir = match file.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    if file.is_dir() || !dir.is_dir() {
        return Err(UsageError(format!(
            "--codequality {}: expected a file path in an existing directory",
            file.display()
        )));
    }
    Ok(())
}

/// Writes the report of several heads into one file (via a temporary file and a rename, so a
/// reader never sees half a report).
///
/// # Errors
/// I/O errors naming the file.
pub fn write_file(file: &Path, issues: &[Issue]) -> anyhow::Result<()> {
    let tmp = file.with_extension("tmp-reviewq");
    std::fs::write(&tmp, codequality::to_json(issues))
        .with_context(|| format!("could not write {}", tmp.display()))?;
    std::fs::rename(&tmp, file).with_context(|| format!("could not write {}", file.display()))
}
