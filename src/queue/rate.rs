//! Fleet-wide request budgets for an outside service, shared by every worker process of
//! one database: at most N request starts in any minute, and one shared pause when the
//! service says to back off. Knows nothing of which service it guards.
//!
//! The per-minute cap is N rows of `rate_slots`, each the time a request last started on
//! it: a request takes the row used longest ago if that was over a window ago
//! (`FOR UPDATE SKIP LOCKED`, exact under any concurrency). One admission is one statement,
//! the pause check included. When a pause ends, the first admission is the probe: the
//! others keep waiting until [`RateGate::recovered`] (or the probe window lapsing, if the
//! probe's worker died), so a fleet does not meet a still-throttling service all at once.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;

use super::{Result, interval};

/// The budget's window: a minute, plus a second for the skew between the database clock
/// that admits a request and the moment it reaches the service, so that the service
/// never counts more than N in a minute of its own.
const WINDOW: Duration = Duration::from_secs(61);

/// How long the other requests wait for a probe's answer before another one may go.
const PROBE_WINDOW: Duration = Duration::from_secs(10);

/// Shortest wait returned: a row held by a concurrent admission frees within milliseconds.
const MIN_WAIT: Duration = Duration::from_millis(20);

/// The admission of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// Start now.
    Go {
        /// This request is the probe after a pause: report its answer with
        /// [`RateGate::recovered`] (or [`RateGate::pause`] if throttled again).
        probe: bool,
    },
    /// Not yet: ask again after `wait`.
    Wait {
        /// How long until the pause ends or a budget row frees.
        wait: Duration,
        /// Why, for logs and errors.
        why: WaitReason,
    },
}

/// Why a request may not start yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WaitReason {
    /// The service asked the fleet to back off (its text).
    Paused(String),
    /// The fleet's requests-per-minute budget is spent.
    Budget,
}

/// A resource's current pause, for `status` and `/metrics`.
#[derive(Debug, Clone, Serialize)]
pub struct Pause {
    /// The resource (`gitlab`).
    pub resource: String,
    /// No request starts before this (a probe excepted).
    pub until: DateTime<Utc>,
    /// What the service said.
    pub reason: String,
    /// When this run of pauses began.
    pub since: DateTime<Utc>,
}

/// The fleet-wide budget of one named resource.
#[derive(Debug, Clone, Copy)]
pub struct RateGate;

impl RateGate {
    /// Sets the resource's cap (`None`: no cap, only pauses apply). Every worker calls this
    /// at start with its configured value; the last to start wins.
    ///
    /// # Errors
    /// Database errors.
    pub async fn configure(pool: &PgPool, resource: &str, per_minute: Option<u32>) -> Result<()> {
        let cap = per_minute.map(|n| i32::try_from(n).unwrap_or(i32::MAX));
        let mut tx = pool.begin().await?;
        sqlx::query!(
            r#"insert into rate_limits (resource, per_minute) values ($1, $2)
               on conflict (resource) do update set per_minute = excluded.per_minute"#,
            resource,
            cap,
        )
        .execute(&mut *tx)
        .await?;
        sqlx::query!(
            r#"insert into rate_slots (resource, slot)
               select $1, s from generate_series(0, coalesce($2, 0) - 1) as s
               on conflict do nothing"#,
            resource,
            cap,
        )
        .execute(&mut *tx)
        .await?;
        sqlx::query!(
            "delete from rate_slots where resource = $1 and slot >= coalesce($2, 0)",
            resource,
            cap,
        )
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Admits one request (one statement): waits out a pause (or takes the probe when a
    /// pause has just ended), then takes a budget row if the resource is capped.
    ///
    /// # Errors
    /// Database errors.
    pub async fn admit(pool: &PgPool, resource: &str) -> Result<Admission> {
        let row = sqlx::query!(
            r#"
            with lim as (
                select per_minute, paused_until, pause_reason, probing, probe_until
                from rate_limits where resource = $1
            ), probe as (
                -- The pause is over but no answer has come since: this request is the probe
                -- (the row lock makes it one), and the others wait for its answer.
                update rate_limits set probe_until = now() + $3::interval
                where resource = $1 and probing and paused_until <= now()
                  and (probe_until is null or probe_until <= now())
                returning 1
            ), free as materialized (
                select slot from rate_slots
                where resource = $1 and used_at <= now() - $2::interval
                  and not exists (select 1 from lim where paused_until > now())
                  and (not exists (select 1 from lim where probing)
                       or exists (select 1 from probe))
                order by used_at limit 1
                for update skip locked
            ), took as (
                update rate_slots s set used_at = now()
                from free where s.resource = $1 and s.slot = free.slot
                returning s.slot
            )
            select (select greatest(paused_until, probe_until) from lim) as paused_until,
                   (select pause_reason from lim) as pause_reason,
                   (select per_minute from lim) as per_minute,
                   coalesce((select probing from lim), false) as "probing!",
                   exists (select 1 from probe) as "probe!",
                   exists (select 1 from took) as "took!",
                   (select min(used_at) + $2::interval from rate_slots where resource = $1)
                       as next_free,
                   now() as "now!"
            "#,
            resource,
            interval(WINDOW),
            interval(PROBE_WINDOW),
        )
        .fetch_one(pool)
        .await?;
        let until = |at: Option<DateTime<Utc>>| {
            at.and_then(|at| (at - row.now).to_std().ok())
                .unwrap_or_default()
                .max(MIN_WAIT)
        };
        if row.probing && !row.probe {
            // Paused, or another request is the probe: wait for the pause's end (or for
            // the probe window, the caller polls sooner to see an answered probe).
            let paused_until = row
                .paused_until
                .filter(|at| *at > row.now)
                .unwrap_or(row.now + PROBE_WINDOW);
            return Ok(Admission::Wait {
                wait: until(Some(paused_until)),
                why: WaitReason::Paused(row.pause_reason.unwrap_or_default()),
            });
        }
        if row.per_minute.is_none() || row.took {
            return Ok(Admission::Go { probe: row.probe });
        }
        if row.probe {
            // The probe found the budget spent: the next admission probes instead.
            sqlx::query!(
                "update rate_limits set probe_until = now() where resource = $1 and probing",
                resource
            )
            .execute(pool)
            .await?;
        }
        Ok(Admission::Wait {
            wait: until(row.next_free),
            why: WaitReason::Budget,
        })
    }

    /// The service answered "slow down": no request of the fleet starts for `wait` (a
    /// longer pause already set stands), and the first one after it is a probe.
    ///
    /// # Errors
    /// Database errors.
    pub async fn pause(pool: &PgPool, resource: &str, wait: Duration, reason: &str) -> Result<()> {
        sqlx::query!(
            r#"
            insert into rate_limits (resource, paused_until, pause_reason, paused_since, probing)
            values ($1, now() + $2::interval, $3, now(), true)
            on conflict (resource) do update set
                paused_since = case when rate_limits.probing then rate_limits.paused_since
                                    else now() end,
                paused_until = greatest(rate_limits.paused_until, excluded.paused_until),
                pause_reason = excluded.pause_reason,
                probing = true,
                probe_until = null
            "#,
            resource,
            interval(wait),
            reason,
        )
        .execute(pool)
        .await?;
        Ok(())
    }

    /// A probe was answered without a throttle: the pause is over for everyone.
    ///
    /// # Errors
    /// Database errors.
    pub async fn recovered(pool: &PgPool, resource: &str) -> Result<()> {
        sqlx::query!(
            r#"update rate_limits set probing = false, paused_until = null, pause_reason = null,
                   paused_since = null, probe_until = null
               where resource = $1 and probing"#,
            resource,
        )
        .execute(pool)
        .await?;
        Ok(())
    }

    /// Every resource that is paused now or waits for a probe's answer.
    ///
    /// # Errors
    /// Database errors.
    pub async fn pauses(pool: &PgPool) -> Result<Vec<Pause>> {
        Ok(sqlx::query_as!(
            Pause,
            r#"select resource, coalesce(paused_until, now()) as "until!",
                      coalesce(pause_reason, '') as "reason!",
                      coalesce(paused_since, now()) as "since!"
               from rate_limits where probing or paused_until > now()
               order by resource"#
        )
        .fetch_all(pool)
        .await?)
    }
}
