//! The end-state checks every chaos scenario shares, and the numbers it reports.

use std::collections::{BTreeMap, HashMap};

use reviewq::review::{FindingKey, Fingerprint, HeadSha, Marker, MarkerKind, ReviewType};
use sqlx::PgPool;

use crate::support::PROJECT;

use super::{GLM_LIMIT, KEY, Sims, TOKEN};

/// A job as a failure message shows it.
#[derive(sqlx::FromRow)]
struct JobLine {
    /// `jobs.id`.
    id: i64,
    /// `review` or `review_chunk`.
    kind: String,
    /// The state as text.
    state: String,
    /// Claims so far.
    attempt: i32,
    /// Claims that ended in an error or a lapsed lease.
    failed_attempts: i32,
    /// The MR of a review job.
    mr: Option<String>,
    /// Why the last attempt failed.
    last_error: Option<String>,
}

/// Every job with its state, attempts and last error: what a failure message needs.
pub(super) async fn job_table(pool: &PgPool) -> String {
    let rows = sqlx::query_as::<_, JobLine>(
        "select id, kind, state::text as state, attempt, failed_attempts, payload->>'mr' as mr,
                last_error
         from jobs order by id",
    )
    .fetch_all(pool)
    .await;
    match rows {
        Ok(rows) => rows
            .into_iter()
            .map(|j| {
                format!(
                    "  job {} {} {} {} attempt {} ({} failed): {}",
                    j.id,
                    j.kind,
                    j.mr.unwrap_or_default(),
                    j.state,
                    j.attempt,
                    j.failed_attempts,
                    j.last_error.unwrap_or_default()
                )
            })
            .collect::<Vec<_>>()
            .join("\n"),
        Err(err) => format!("  (job table unavailable: {err})"),
    }
}

/// What a scenario's end state must show besides the invariants every scenario shares.
#[derive(Default)]
pub(super) struct Expect<'a> {
    /// Reviews that must fail for an error fatal by nature: MR iid and a piece of the
    /// reason the job must give.
    pub(super) fatal: &'a [(u64, &'a str)],
    /// GitLab may refuse inline positions (a push made their SHAs stale); those findings
    /// go to the summary instead.
    pub(super) stale_positions: bool,
    /// Answered calls whose ledger rows may stay `started`: cut off between the answer and
    /// its recording by a kill.
    pub(super) max_cut_off: usize,
}

/// The numbers a scenario reports.
#[derive(Debug, Default)]
pub(super) struct Tally {
    /// Review jobs run (one per head reviewed).
    pub(super) review_jobs: i64,
    /// Chunk jobs run (a split chunk counts three times: itself and its halves).
    chunk_jobs: i64,
    /// Review jobs that failed, each for the reason the scenario expected.
    failed_reviews: i64,
    /// Comments on GitLab (inline and summary notes), each recorded once in the outbox.
    comments: usize,
    /// Inline findings GitLab refused (stale positions), listed in a summary instead.
    downgraded: usize,
    /// Markers found on GitLab more than once (must be 0).
    duplicates: usize,
    /// LLM requests the fake GLM received.
    llm_requests: u64,
    /// Tokens the fake GLM billed.
    billed: u64,
    /// Tokens the ledger recorded.
    recorded: u64,
    /// Answered calls whose usage was lost to a kill (rows left `started`).
    cut_off: usize,
    /// Ledger rows left `started` (cut-off calls, answered or not).
    started_rows: i64,
    /// The most requests the fake GLM had in flight at once.
    pub(super) peak_in_flight: usize,
    /// Failed attempts (errors and lapsed leases) summed over all jobs, and the most any
    /// one job had.
    pub(super) failed_attempts: (i64, i32),
}

impl std::fmt::Display for Tally {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "review_jobs={} (failed {}) chunk_jobs={} comments={} downgraded={} duplicates={} \
             llm_requests={} tokens_billed={} tokens_recorded={} cut_off_calls={} started_rows={} \
             peak_in_flight={}/{GLM_LIMIT} failed_attempts={} (max {} per job)",
            self.review_jobs,
            self.failed_reviews,
            self.chunk_jobs,
            self.comments,
            self.downgraded,
            self.duplicates,
            self.llm_requests,
            self.billed,
            self.recorded,
            self.cut_off,
            self.started_rows,
            self.peak_in_flight,
            self.failed_attempts.0,
            self.failed_attempts.1,
        )
    }
}

/// A job's end state.
#[derive(sqlx::FromRow)]
struct JobEnd {
    /// `jobs.id`.
    id: i64,
    /// `review` or `review_chunk`.
    kind: String,
    /// The state as text.
    state: String,
    /// The MR of a review job.
    iid: Option<i64>,
    /// The reason a failed job gives.
    last_error: Option<String>,
    /// A chunk's review job.
    parent_id: Option<i64>,
}

/// An outbox row with the review it belongs to.
#[derive(sqlx::FromRow)]
struct OutboxRow {
    /// The review's project path.
    project: String,
    /// The review's MR.
    mr_iid: i64,
    /// The head reviewed, part of every marker.
    head_sha: String,
    /// The review type, part of every marker.
    review_type: String,
    /// The finding key, or `summary`.
    key: String,
    /// `inline` or `summary`.
    kind: String,
    /// pending, posted, downgraded or dry_run.
    state: String,
    /// The note GitLab stored, for a posted row.
    gitlab_note_id: Option<i64>,
    /// Why GitLab refused a downgraded row's position.
    error: Option<String>,
    /// The finding's cross-round fingerprint, part of its marker.
    fingerprint: Option<String>,
    /// The review row, to tell rounds apart.
    review_id: i64,
}

/// A ledger row's status and usage.
#[derive(sqlx::FromRow)]
struct LedgerRow {
    /// started, ok or error.
    status: String,
    /// Usage as the provider reported it; `None` while `started` or when not reported.
    prompt_tokens: Option<i64>,
    /// See `prompt_tokens`.
    completion_tokens: Option<i64>,
    /// Their sum, as reported.
    total_tokens: Option<i64>,
}

/// The invariants every scenario ends with:
/// - every job has ended; every review job `succeeded`, except those `expect.fatal` names,
///   which `failed` with their reason; every chunk job of a succeeding review succeeded;
///   every review row is `done`;
/// - no comment is on GitLab twice (by marker), and the comments on GitLab are exactly the
///   outbox rows in state `posted`, with the note ids the outbox recorded; no inline
///   comment is left `pending` (nor `downgraded`, unless positions could go stale);
/// - the ledger has a row for every request the fake GLM received; every usage it
///   records was billed by the fake, and what the fake billed beyond that is the usage of
///   answered calls cut off by a kill, whose rows stayed `started` (at most
///   `expect.max_cut_off` of them);
/// - the fake GLM never had more than [`GLM_LIMIT`] requests in flight, and no limit slot
///   is still held.
pub(super) async fn assert_invariants(
    pool: &PgPool,
    sims: &Sims,
    iids: &[u64],
    expect: &Expect<'_>,
) -> Tally {
    let mut tally = Tally::default();
    let table = job_table(pool).await;

    // Jobs.
    let jobs: Vec<JobEnd> = sqlx::query_as(
        "select id, kind, state::text as state, (payload->>'iid')::int8 as iid, last_error,
                parent_id
         from jobs order by id",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    let iid_of_review: HashMap<i64, i64> = jobs
        .iter()
        .filter(|j| j.kind == "review")
        .map(|j| (j.id, j.iid.expect("a review names its MR")))
        .collect();
    let fatal_reason = |iid: i64| {
        expect
            .fatal
            .iter()
            .find(|(i, _)| *i as i64 == iid)
            .map(|(_, r)| *r)
    };
    for job in &jobs {
        let (id, state) = (job.id, job.state.as_str());
        match job.kind.as_str() {
            "review" => {
                tally.review_jobs += 1;
                let iid = job.iid.expect("a review names its MR");
                match fatal_reason(iid) {
                    Some(reason) => {
                        tally.failed_reviews += 1;
                        assert_eq!(state, "failed", "review job {id} of !{iid}\n{table}");
                        let error = job.last_error.as_deref().unwrap_or_default();
                        assert!(
                            error.contains(reason),
                            "review job {id} of !{iid} failed for another reason: {error}"
                        );
                    }
                    None => {
                        assert_eq!(state, "succeeded", "review job {id} of !{iid}\n{table}")
                    }
                }
            }
            "review_chunk" => {
                tally.chunk_jobs += 1;
                let iid = job
                    .parent_id
                    .and_then(|p| iid_of_review.get(&p))
                    .copied()
                    .expect("a chunk's review");
                if fatal_reason(iid).is_none() {
                    assert_eq!(state, "succeeded", "chunk job {id} of !{iid}\n{table}");
                } else {
                    assert!(
                        state == "succeeded" || state == "failed",
                        "chunk {id}: {state}"
                    );
                }
            }
            other => panic!("unexpected job kind {other}"),
        }
    }
    for (iid, _) in expect.fatal {
        assert!(
            iid_of_review.values().any(|i| *i == *iid as i64),
            "!{iid} was reviewed"
        );
    }
    tally.failed_attempts = sqlx::query_as(
        "select coalesce(sum(failed_attempts), 0)::int8, coalesce(max(failed_attempts), 0) from jobs",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    let unfinished: i64 = sqlx::query_scalar("select count(*) from reviews where state <> 'done'")
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!(unfinished, 0, "every review row is done\n{table}");

    // Comments: the outbox against GitLab, marker by marker.
    let rows: Vec<OutboxRow> = sqlx::query_as(
        "select r.project, r.mr_iid, r.head_sha, r.review_type, o.key, o.kind, o.state,
                o.gitlab_note_id, o.error, o.fingerprint, r.id as review_id
         from outbox o join reviews r on r.id = o.review_id where not r.dry_run",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    let mut expected: BTreeMap<(i64, String), i64> = BTreeMap::new();
    // Per MR: (latest review id, summary note id, that review's head).
    let mut latest_summary: BTreeMap<i64, (i64, i64, String)> = BTreeMap::new();
    for row in rows {
        let (iid, key, error) = (row.mr_iid, row.key.as_str(), &row.error);
        assert_eq!(row.project, PROJECT);
        let marker_kind = match (row.kind.as_str(), key) {
            ("summary", "summary") => MarkerKind::Summary,
            // An unanchorable finding: listed in the summary, no comment of its own.
            ("summary", _) => continue,
            _ => MarkerKind::Finding(FindingKey::parse(key).unwrap()),
        };
        match row.state.as_str() {
            "posted" => {}
            // Not posted by design: still open from an earlier round at the same code,
            // dismissed, below the minimum severity, or over the inline limit.
            "open" | "dismissed" | "below_threshold" | "over_limit" => continue,
            "downgraded" if expect.stale_positions => {
                assert!(error.is_some(), "a refused position says why");
                tally.downgraded += 1;
                continue;
            }
            other => panic!("outbox row {key} of !{iid} ended {other}: {error:?}\n{table}"),
        }
        let note_id = row.gitlab_note_id.expect("a posted row records its note");
        if marker_kind == MarkerKind::Summary {
            // One living summary note per MR, edited by every round: all rounds record the
            // same note, whose marker names the head of the MR's latest round.
            let latest =
                latest_summary
                    .entry(iid)
                    .or_insert((row.review_id, note_id, row.head_sha.clone()));
            assert_eq!(
                latest.1, note_id,
                "!{iid}: every round edits the same summary note\n{table}"
            );
            if row.review_id > latest.0 {
                *latest = (row.review_id, note_id, row.head_sha.clone());
            }
            continue;
        }
        let marker = Marker {
            review_type: row.review_type.parse().unwrap(),
            head_sha: HeadSha::parse(&row.head_sha).unwrap(),
            kind: marker_kind,
            fingerprint: row
                .fingerprint
                .as_deref()
                .map(|f| Fingerprint::parse(f).unwrap()),
        };
        assert!(
            expected
                .insert((iid, marker.to_string()), note_id)
                .is_none(),
            "two outbox rows for one marker"
        );
    }
    for (iid, (_, note_id, head)) in latest_summary {
        let marker = Marker::summary(ReviewType::General, HeadSha::parse(&head).unwrap());
        assert!(
            expected
                .insert((iid, marker.to_string()), note_id)
                .is_none(),
            "two outbox rows for one marker"
        );
    }
    // Secrets: nothing the database keeps (errors, payloads, comments, the ledger)
    // carries the token or the key.
    for secret in [TOKEN, KEY] {
        let leaks: i64 = sqlx::query_scalar(
            "select count(*) from (
                 select last_error as t from jobs union all select payload::text from jobs
                 union all select error from job_attempts union all select error_message from llm_calls
                 union all select body from outbox union all select error from outbox
                 union all select unanchored_reason::text from outbox
             ) x where strpos(t, $1) > 0",
        )
        .bind(secret)
        .fetch_one(pool)
        .await
        .unwrap();
        assert_eq!(leaks, 0, "a secret is stored in the database");
    }
    tally.duplicates = sims.gitlab.total_duplicate_count();
    assert_eq!(tally.duplicates, 0, "a comment was posted twice");
    let mut on_gitlab: BTreeMap<(i64, String), i64> = BTreeMap::new();
    for &iid in iids {
        for note in sims.gitlab.notes(PROJECT, iid).unwrap() {
            if let Some(marker) = reviewq::sim::gitlab::markers(&note.body).first() {
                on_gitlab.insert((iid as i64, (*marker).to_owned()), note.id as i64);
            }
        }
    }
    let missing: Vec<_> = expected
        .keys()
        .filter(|k| !on_gitlab.contains_key(*k))
        .collect();
    let unrecorded: Vec<_> = on_gitlab
        .keys()
        .filter(|k| !expected.contains_key(*k))
        .collect();
    assert!(
        missing.is_empty() && unrecorded.is_empty(),
        "outbox and GitLab disagree: recorded but not on GitLab {missing:?}; on GitLab but not recorded {unrecorded:?}"
    );
    assert_eq!(
        on_gitlab, expected,
        "each outbox row records the note GitLab stored"
    );
    tally.comments = expected.len();

    // The ledger against what the fake GLM billed.
    let ledger: Vec<LedgerRow> = sqlx::query_as(
        "select status, prompt_tokens, completion_tokens, total_tokens from llm_calls",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    tally.llm_requests = sims.glm.request_count();
    tally.billed = sims.glm.billed_total_tokens();
    tally.started_rows = ledger.iter().filter(|r| r.status == "started").count() as i64;
    let finished_rows = ledger.len() as i64 - tally.started_rows;
    assert!(
        finished_rows as u64 <= tally.llm_requests && tally.llm_requests <= ledger.len() as u64,
        "a ledger row before every request: {} rows ({} started) for {} requests",
        ledger.len(),
        tally.started_rows,
        tally.llm_requests
    );
    let mut unmatched: HashMap<(u64, u64), usize> = HashMap::new();
    for call in sims.glm.calls() {
        if let (Some(p), Some(c)) = (call.prompt_tokens, call.completion_tokens) {
            *unmatched.entry((p, c)).or_default() += 1;
        }
    }
    for row in &ledger {
        let (Some(p), Some(c), total, status) = (
            row.prompt_tokens,
            row.completion_tokens,
            row.total_tokens,
            &row.status,
        ) else {
            continue;
        };
        assert_eq!(total, Some(p + c), "total = prompt + completion");
        let left = unmatched
            .get_mut(&(p as u64, c as u64))
            .filter(|n| **n > 0)
            .unwrap_or_else(|| {
                panic!("the ledger records usage ({p}, {c}, {status}) the fake GLM never billed")
            });
        *left -= 1;
        tally.recorded += (p + c) as u64;
    }
    tally.cut_off = unmatched.values().sum();
    let allowed = expect.max_cut_off;
    let cut_off_tokens: u64 = unmatched
        .iter()
        .map(|((p, c), n)| (p + c) * *n as u64)
        .sum();
    assert_eq!(
        tally.billed,
        tally.recorded + cut_off_tokens,
        "billed = recorded + usage of cut-off calls"
    );
    assert!(
        tally.cut_off as i64 <= tally.started_rows && tally.cut_off <= allowed,
        "{} answered calls missing from the ledger ({} rows left started, at most {allowed} allowed)",
        tally.cut_off,
        tally.started_rows,
    );

    // The fleet limit.
    tally.peak_in_flight = sims.glm.peak_in_flight();
    assert!(
        tally.peak_in_flight <= GLM_LIMIT,
        "the fake GLM had {} requests in flight; GLM_CONCURRENT_REQUESTS is {GLM_LIMIT}",
        tally.peak_in_flight
    );
    let held: i64 = sqlx::query_scalar(
        "select count(*) from limit_slots where holder_job_id is not null and lease_expires_at > now()",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!(held, 0, "every limit slot released");
    tally
}
