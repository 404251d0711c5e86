//! Each priority's claim floor: a lower bound on `run_at` that keeps the claim from
//! walking the index entries of jobs a long-held snapshot can still see. Why, and the
//! invariant that keeps every claimable job at or above its floor, are in the
//! `claim_floor` migration; this file holds the pass that raises the floors.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{Queue, Result, interval};

/// How often each worker sets the floors. While a snapshot is held open elsewhere, a
/// claim walks past the dead index entries of about this long plus [`FLOOR_LAG`] of
/// claims (a few hundred at 800 jobs/s), instead of those of the whole snapshot.
const FLOOR_EVERY: Duration = Duration::from_millis(250);

/// How far behind the clock a floor stays, at least. A job is stamped when it is inserted
/// (or requeued); if its transaction commits within this long it is never behind the
/// floor, and if it takes longer it waits for the next pass.
pub const FLOOR_LAG: Duration = Duration::from_millis(250);

/// How far below its floor a routine pass looks for a claimable job: a job whose
/// transaction committed up to this long (plus [`FLOOR_LAG`]) after it was stamped is
/// found by the next pass. Why not the whole queue every time: under a held snapshot that
/// walks every dead entry the snapshot keeps, four times a second.
pub const FLOOR_LOOKBACK: Duration = Duration::from_secs(2);

/// Every this many passes, a pass looks at the whole queue, for the rare job whose
/// transaction took longer than the lookback to commit: it waits at most about ten seconds.
const WHOLE_PASS_EVERY: u32 = 40;

/// How far below its current floor a pass looks for each priority's oldest claimable job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FloorReach {
    /// Back to this long below the floor.
    Below(Duration),
    /// The whole queue.
    Whole,
}

impl Queue {
    /// Sets each priority's claim floor to its oldest claimable job's `run_at` (looking as
    /// far below the current floor as `reach` says), or `lag` before now if that is
    /// earlier (or no such job is claimable). Recomputed from the jobs every time, so a
    /// floor also comes down to a job it had passed. A priority whose
    /// floor row is locked (a transaction lowering it is committing, or another worker is
    /// in this pass) is left to the next pass. Returns how many floors were set.
    ///
    /// # Errors
    /// Database errors (nothing was written then).
    pub async fn advance_claim_floors(&self, lag: Duration, reach: FloorReach) -> Result<u64> {
        // No reach is the whole queue: PostgreSQL 15 has no infinite interval.
        let below = match reach {
            FloorReach::Below(d) => Some(interval(d)),
            FloorReach::Whole => None,
        };
        let mut tx = self.pool.begin().await?;
        let priorities = sqlx::query_scalar!(
            "select priority from job_priorities order by priority for no key update skip locked"
        )
        .fetch_all(&mut *tx)
        .await?;
        if priorities.is_empty() {
            return Ok(0);
        }
        // A statement of its own, so that its snapshot is taken with the rows locked: any
        // transaction that lowered a floor before has committed and its jobs are seen, and
        // any that lowers one from now on waits for this pass and lowers it after.
        let set = sqlx::query!(
            r#"
            update job_priorities p set claim_floor = least(
                (select run_at from jobs
                 where state = 'queued' and priority = p.priority and pending_children = 0
                   and run_at >= coalesce(p.claim_floor - $3::interval, '-infinity')
                 order by run_at limit 1),
                now() - $2::interval)
            where p.priority = any($1::int2[])
            "#,
            &priorities,
            interval(lag),
            below,
        )
        .execute(&mut *tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        Ok(set)
    }
}

/// Runs [`Queue::advance_claim_floors`] every [`FLOOR_EVERY`] until `stop`, reaching
/// [`FLOOR_LOOKBACK`] below the floors, and the whole queue every [`WHOLE_PASS_EVERY`]th
/// pass (the first included).
pub(super) async fn keep_claim_floors(queue: Queue, stop: CancellationToken) {
    let mut tick = tokio::time::interval(FLOOR_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for pass in 0u32.. {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let reach = if pass % WHOLE_PASS_EVERY == 0 {
            FloorReach::Whole
        } else {
            FloorReach::Below(FLOOR_LOOKBACK)
        };
        if let Err(err) = queue.advance_claim_floors(FLOOR_LAG, reach).await {
            // A floor that stays put only costs claim time under a held snapshot; the
            // claim loop reports a database outage already.
            tracing::debug!(error = %err, "claim floor pass failed");
        }
    }
}
