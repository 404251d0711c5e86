//! Planning a review: fetch the MR and its latest diff version, read the project's settings,
//! decide full or incremental, pack the chunks, and record the review with one child job per
//! chunk in one transaction.

use sqlx::PgPool;

use crate::{
    disposition::Disposition,
    gitlab::{self, DiffShas, ProjectRef},
    queue::{JobContext, JobError, NewJob, Queue, ResultExt},
    review::{
        self, ChunkConfig, FileDiff, MarkerKind, ParsedFile, PromptOptions, ReviewType, Screening,
        chunk::ChunkPlan, settings::ProjectSettings,
    },
};

use super::{
    ChunkArgs, ReviewArgs, ReviewDeps, ReviewRow, ReviewState, gitlab_error,
    round::RoundSettings,
    store::{self, NewReview, insert_chunks, insert_review},
};

pub(super) enum Planned {
    /// Chunk jobs were created; the review job waits for them.
    Waiting,
    /// The project's settings exclude this MR or review type (and `--force` was not given).
    NotReviewed,
    /// This head was reviewed before (and `--force` was not given).
    AlreadyReviewed,
    /// Every file was skipped: go straight to posting the summary.
    NothingToReview(ReviewRow),
}

pub(in crate::jobs) fn to_review_diff(file: gitlab::DiffFile) -> FileDiff {
    FileDiff {
        old_path: file.old_path,
        new_path: file.new_path,
        a_mode: file.a_mode,
        b_mode: file.b_mode,
        diff: file.diff,
        new_file: file.new_file,
        renamed_file: file.renamed_file,
        deleted_file: file.deleted_file,
        generated_file: file.generated_file,
        collapsed: file.collapsed,
        too_large: file.too_large,
    }
}

pub(super) async fn plan(
    ctx: &JobContext,
    deps: &ReviewDeps,
    args: &ReviewArgs,
) -> Result<Planned, JobError> {
    let project = args.project_ref()?;
    let pool = ctx.queue().pool();
    let review_type = args.review_type.as_str();
    let project_text = args.project.to_string();
    let iid = i64::try_from(args.iid).map_err(JobError::fatal)?;
    // The MR and its latest version are independent reads, and the settings need only the
    // version: overlapping them takes one GitLab round trip off every plan (of three).
    let ((mr, _), (shas, (settings, settings_problem))) = tokio::try_join!(
        async {
            deps.gitlab
                .merge_request_with_diff_refs(&project, args.iid)
                .await
                .map_err(gitlab_error)
        },
        version_and_settings(deps, pool, &project, &project_text, args.iid),
    )?;
    let description = mr.description.clone().unwrap_or_default();

    if !args.force {
        if let Err(reason) = settings.should_review(mr.draft, &mr.labels) {
            tracing::info!(mr = %args.mr, %reason, "not reviewed by the project's settings; --force reviews it");
            return Ok(Planned::NotReviewed);
        }
        if !settings.review_types().contains(&args.review_type) {
            tracing::info!(mr = %args.mr, review_type, "the project's review_types do not include this type; --force reviews it");
            return Ok(Planned::NotReviewed);
        }
    }

    if !args.force && !args.dry_run {
        let reviewed =
            store::head_reviewed(pool, &project_text, iid, &shas.head_sha, review_type).await?;
        if reviewed {
            tracing::info!(mr = %args.mr, head = %shas.head_sha, "head already reviewed; --force reviews it again");
            return Ok(Planned::AlreadyReviewed);
        }
    }

    // The diffs and the previous round's head are independent reads: another round trip
    // overlapped.
    let incremental = settings.incremental() && !args.full;
    let (diffs, since) = tokio::try_join!(
        async {
            let files = deps
                .gitlab
                .diffs(&project, args.iid)
                .await
                .map_err(gitlab_error)?;
            Ok::<_, JobError>(files.into_iter().map(to_review_diff).collect::<Vec<_>>())
        },
        async {
            if incremental {
                incremental_base(deps, pool, args, &project, &shas.head_sha).await
            } else {
                Ok(None)
            }
        },
    )?;
    let round = RoundSettings::new(&settings, &description);
    let options = round.prompt_options();
    let config = ChunkConfig {
        budget: deps.budget,
        skip: settings.skip_rules(),
        max_chunks: deps.max_chunks,
    };
    let since_sha = since.as_ref().map(|(sha, _)| sha.clone());
    let plan = pack_round(diffs, config, options, since).await?;
    let skipped = serde_json::to_value(&plan.skipped).map_err(JobError::fatal)?;
    let chunk_count = i32::try_from(plan.chunks.len()).unwrap_or(i32::MAX);
    let file_count = i32::try_from(plan.reviewed.len()).unwrap_or(i32::MAX);
    let scope = if since_sha.is_some() {
        "incremental"
    } else {
        "full"
    };

    let round_json = serde_json::to_value(&round).map_err(JobError::fatal)?;
    let mut tx = pool.begin().await.retryable()?;
    Queue::fence(&mut tx, ctx.lease()).await?;
    let review_id = insert_review(
        &mut tx,
        &NewReview {
            job_id: ctx.job.id().get(),
            project: &project_text,
            mr_iid: iid,
            review_type,
            dry_run: args.dry_run,
            shas: &shas,
            mr_title: &mr.title,
            mr_description: &description,
            skipped: &skipped,
            chunk_count,
            file_count,
            scope,
            since_sha: since_sha.as_deref(),
            settings_problem: settings_problem.as_deref(),
            settings: &round_json,
        },
    )
    .await?;
    tracing::info!(mr = %args.mr, review.id = review_id, chunks = chunk_count, skipped = plan.skipped.len(), scope, "review planned");

    let priority = ctx.job.priority;
    enqueue_companions(&mut tx, args, &settings, &description, priority).await?;

    if plan.chunks.is_empty() {
        tx.commit().await.retryable()?;
        return Ok(Planned::NothingToReview(ReviewRow {
            id: review_id,
            state: ReviewState::Reviewing,
            head_sha: shas.head_sha,
            base_sha: shas.base_sha,
            start_sha: shas.start_sha,
            skipped: serde_json::to_value(&plan.skipped).map_err(JobError::fatal)?,
            chunk_count: 0,
            settings: round_json,
            settings_problem,
        }));
    }
    let jobs: Vec<NewJob> = (0..chunk_count)
        .map(|chunk_index| {
            ChunkArgs {
                review_id,
                chunk_index,
            }
            .job(priority)
        })
        .collect();
    let ids = Queue::await_children(&mut tx, ctx.lease(), &jobs).await?;
    insert_chunks(&mut tx, review_id, plan.chunks.iter().zip(ids)).await?;
    tx.commit().await.retryable()?;
    Ok(Planned::Waiting)
}

/// Screens, parses and packs the round's files into chunks: the whole diff, or with an
/// earlier round's head (`since`) only the hunks its pushes touched. Parsing and packing a
/// giant MR is CPU work, so it runs off the async thread.
async fn pack_round(
    diffs: Vec<FileDiff>,
    config: ChunkConfig,
    options: PromptOptions,
    since: Option<(String, Vec<FileDiff>)>,
) -> Result<ChunkPlan, JobError> {
    tokio::task::spawn_blocking(move || match since {
        None => review::pack::plan_with(&diffs, &config, &options),
        Some((_, delta)) => {
            let (mut skipped, mut files) = (Vec::new(), Vec::new());
            for screening in diffs.iter().map(|d| config.skip.screen(d)) {
                match screening {
                    Screening::Review(file) => files.push(file),
                    Screening::Skip(file) => skipped.push(Screening::Skip(file)),
                }
            }
            let delta: Vec<ParsedFile> = delta.iter().map(review::diff::parse).collect();
            let restricted = review::restrict(&files, &delta);
            review::pack::pack(
                skipped
                    .into_iter()
                    .chain(restricted.files.into_iter().map(Screening::Review)),
                &config,
                &options,
            )
        }
    })
    .await
    .map_err(|e| JobError::retryable(format!("planning the chunks failed: {e}")))
}

/// The jobs a general round starts beside itself: a review of each other type the project
/// asks for, and the description job when the settings or the description's markers ask for
/// one. Written in the round's transaction.
async fn enqueue_companions(
    tx: &mut sqlx::PgConnection,
    args: &ReviewArgs,
    settings: &ProjectSettings,
    description: &str,
    priority: i16,
) -> Result<(), JobError> {
    if args.review_type == ReviewType::General && !args.dry_run {
        for &other in settings.review_types() {
            if other != args.review_type {
                let sibling = ReviewArgs {
                    review_type: other,
                    ..args.clone()
                };
                Queue::enqueue(&mut *tx, &sibling.job(priority)).await?;
            }
        }
        // The description is a job of its own, asked for by the settings or by markers the
        // author put in the description.
        if settings.describe() || review::describe::has_markers(description) {
            let describe = crate::jobs::describe::DescribeArgs {
                mr: args.mr.clone(),
                project: args.project.clone(),
                iid: args.iid,
            };
            Queue::enqueue(&mut *tx, &describe.job(priority)).await?;
        }
    }
    Ok(())
}

/// The MR's latest version (its SHAs) and the project's settings. The settings come from
/// the target branch (the version's start commit), not from the MR's head: an MR must not
/// be able to switch off or steer its own review.
pub(in crate::jobs) async fn version_and_settings(
    deps: &ReviewDeps,
    pool: &PgPool,
    project: &ProjectRef,
    project_text: &str,
    iid: u64,
) -> Result<(DiffShas, (ProjectSettings, Option<String>)), JobError> {
    let version = deps
        .gitlab
        .latest_version(project, iid)
        .await
        .map_err(gitlab_error)?;
    let shas = DiffShas::from(&version);
    let settings = load_settings(deps, pool, project, project_text, &shas.start_sha).await?;
    Ok((shas, settings))
}

/// The project's settings: its `.reviewq.toml` at `git_ref`, then the operator's override
/// from `project_settings`. A broken file or override is not an error: the defaults (or the
/// file alone) are used and the problem is returned for the summary.
pub(in crate::jobs) async fn load_settings(
    deps: &ReviewDeps,
    pool: &PgPool,
    project: &ProjectRef,
    project_text: &str,
    git_ref: &str,
) -> Result<(ProjectSettings, Option<String>), JobError> {
    let mut problem = None;
    let mut settings = match deps
        .gitlab
        .get_file_raw(project, review::settings::SETTINGS_FILE, git_ref)
        .await
    {
        Ok(bytes) => match std::str::from_utf8(&bytes).map(ProjectSettings::from_toml) {
            Ok(Ok(settings)) => settings,
            Ok(Err(err)) => {
                problem = Some(format!("{err}; the defaults are used"));
                ProjectSettings::default()
            }
            Err(_) => {
                problem = Some(format!(
                    "`{}` is not UTF-8 text; the defaults are used",
                    review::settings::SETTINGS_FILE
                ));
                ProjectSettings::default()
            }
        },
        Err(gitlab::Error::NotFound { .. }) => ProjectSettings::default(),
        Err(err) => return Err(gitlab_error(err)),
    };
    let overrides = sqlx::query_scalar!(
        "select overrides from project_settings where project = $1",
        project_text
    )
    .fetch_optional(pool)
    .await
    .retryable()?;
    if let Some(overrides) = overrides {
        match settings.clone().overridden_by(&overrides) {
            Ok(overridden) => settings = overridden,
            Err(err) => {
                problem = Some(format!(
                    "the operator's override in project_settings: {err}; it is ignored"
                ));
            }
        }
    }
    if let Some(problem) = &problem {
        tracing::warn!(project = %project_text, %problem, "project settings problem");
    }
    Ok((settings, problem))
}

/// The head of the last finished round, with what changed since, when only that needs a
/// review: the MR still contains that head (no force-push rewrote it) and GitLab compared
/// the two in full. `None` means a full review.
pub(super) async fn incremental_base(
    deps: &ReviewDeps,
    pool: &PgPool,
    args: &ReviewArgs,
    project: &ProjectRef,
    head: &str,
) -> Result<Option<(String, Vec<FileDiff>)>, JobError> {
    let previous = sqlx::query_scalar!(
        r#"select head_sha from reviews where project = $1 and mr_iid = $2 and review_type = $3
               and state = 'done' and not dry_run
           order by finished_at desc limit 1"#,
        args.project.to_string(),
        i64::try_from(args.iid).map_err(JobError::fatal)?,
        args.review_type.as_str(),
    )
    .fetch_optional(pool)
    .await
    .retryable()?;
    // No round in this database (a CI job on a fresh local cluster): the living summary
    // note on the MR names the head its last round reviewed.
    let previous = match previous {
        Some(previous) => Some(previous),
        None => deps
            .gitlab
            .notes(project, args.iid)
            .await
            .map_err(gitlab_error)?
            .iter()
            .filter_map(|n| review::find_marker(&n.body))
            .find(|m| m.review_type == args.review_type && m.kind == MarkerKind::Summary)
            .map(|m| m.head_sha.as_str().to_owned()),
    };
    let Some(previous) = previous.filter(|p| p != head) else {
        return Ok(None);
    };
    let commits = deps
        .gitlab
        .mr_commits(project, args.iid)
        .await
        .map_err(gitlab_error)?;
    if !commits.iter().any(|c| c.id == previous) {
        tracing::info!(mr = %args.mr, %previous, "the last reviewed head is gone from the MR (force-push or rebase): full review");
        return Ok(None);
    }
    let compare = match deps.gitlab.compare(project, &previous, head).await {
        Ok(compare) => compare,
        Err(err) if err.disposition() == Disposition::Fatal => {
            tracing::warn!(mr = %args.mr, error = %err, "GitLab could not compare the heads: full review");
            return Ok(None);
        }
        Err(err) => return Err(gitlab_error(err)),
    };
    if compare.is_partial() {
        tracing::info!(mr = %args.mr, "GitLab's comparison is incomplete: full review");
        return Ok(None);
    }
    Ok(Some((
        previous,
        compare.diffs.into_iter().map(to_review_diff).collect(),
    )))
}
