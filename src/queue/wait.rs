//! Jobs waiting for a condition (a budget, a pause): parked without counting a failure, and
//! woken by key.

use chrono::{DateTime, Utc};
use sqlx::{PgExecutor, Postgres, Transaction};

use super::{Error, Lease, Queue, Result, Waiting};

impl Queue {
    /// Makes this attempt wait for a condition outside the queue, in `tx`: the job goes
    /// back to `queued` until `until` (when its handler checks the condition again), with
    /// `waiting` shown by `status`. The attempt is not counted as failed.
    ///
    /// # Errors
    /// [`Error::LeaseLost`] if the attempt no longer holds the job; database errors.
    pub async fn wait(
        tx: &mut Transaction<'_, Postgres>,
        lease: Lease,
        until: DateTime<Utc>,
        waiting: &Waiting,
    ) -> Result<()> {
        let rows = sqlx::query!(
            r#"
            update jobs set state = 'queued', run_at = greatest($3, now()),
                lease_expires_at = null, waiting = $4, updated_at = now()
            where id = $1 and attempt = $2 and state = 'running'
            "#,
            lease.job_id.get(),
            lease.attempt,
            until,
            sqlx::types::Json(waiting) as _,
        )
        .execute(&mut **tx)
        .await?
        .rows_affected();
        if rows == 0 {
            return Err(Error::LeaseLost(lease));
        }
        Ok(())
    }

    /// Ends every wait on `key` now: those jobs become runnable (and workers are notified).
    /// Returns how many were woken.
    ///
    /// # Errors
    /// Database errors.
    pub async fn wake<'e, E>(exec: E, key: &str) -> Result<u64>
    where
        E: PgExecutor<'e>,
    {
        Ok(sqlx::query!(
            r#"update jobs set run_at = now(), updated_at = now()
               where state = 'queued' and waiting->>'key' = $1 and run_at > now()"#,
            key
        )
        .execute(exec)
        .await?
        .rows_affected())
    }
}
