//! Fleet-wide concurrency limits: at most N holders of a named resource across every
//! worker process that shares the database.
//!
//! A resource has N rows in `limit_slots`. Acquiring takes a free row with
//! `FOR UPDATE SKIP LOCKED` (exact under any concurrency), stamped with the holder's
//! lease; the holder's heartbeat extends it. A slot is free when released or when its
//! lease lapsed, so a killed worker cannot leak one for longer than a lease.

use std::{sync::Arc, time::Duration};

use sqlx::{PgPool, Postgres, Transaction};
use tokio::sync::Notify;

use super::{Error, Lease, Result, SLOTS_CHANNEL, WorkerId, interval};

/// Longest wait between two tries when no release notification arrives (a slot can also
/// free up by its holder's lease lapsing, which sends nothing).
const RETRY_WITHOUT_NOTICE: Duration = Duration::from_millis(250);

/// Hands out slots of one named resource.
#[derive(Debug, Clone)]
pub struct Limiter {
    pool: PgPool,
    resource: Arc<str>,
    /// Pinged by the worker's listener whenever any slot is released fleet-wide.
    released: Arc<Notify>,
    /// How long a slot stays held without a heartbeat.
    lease: Duration,
}

/// A held slot. Release it with [`Permit::release`]; dropping it releases it in the
/// background, and a crash releases it when its lease lapses.
#[derive(Debug)]
pub struct Permit {
    pool: PgPool,
    resource: Arc<str>,
    slot: i32,
    holder: Lease,
    released: bool,
}

impl Limiter {
    /// A limiter for `resource`. `released` is notified when a slot is freed anywhere.
    pub fn new(pool: PgPool, resource: &str, released: Arc<Notify>, lease: Duration) -> Self {
        Self {
            pool,
            resource: resource.into(),
            released,
            lease,
        }
    }

    /// Sets the resource's capacity to exactly `capacity` slots. Slots above the new
    /// capacity are removed once free; until then the old holders keep them.
    ///
    /// Every worker calls this at start with its configured value, so the fleet should
    /// share one setting; the last worker to start wins.
    ///
    /// # Errors
    /// Database errors.
    pub async fn set_capacity(pool: &PgPool, resource: &str, capacity: u32) -> Result<()> {
        let capacity = i32::try_from(capacity).unwrap_or(i32::MAX);
        let mut tx = pool.begin().await?;
        sqlx::query!(
            r#"
            insert into limit_slots (resource, slot)
            select $1, s from generate_series(0, $2 - 1) as s
            on conflict do nothing
            "#,
            resource,
            capacity
        )
        .execute(&mut *tx)
        .await?;
        sqlx::query!(
            r#"
            delete from limit_slots
            where resource = $1 and slot >= $2
              and (holder_job_id is null or lease_expires_at < now())
            "#,
            resource,
            capacity
        )
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Takes a slot for `holder` if one is free now.
    ///
    /// # Errors
    /// [`Error::LeaseLost`] if `holder` no longer runs; database errors.
    pub async fn try_acquire(&self, holder: Lease, worker: WorkerId) -> Result<Option<Permit>> {
        let row = sqlx::query_scalar!(
            r#"
            with free as materialized (
                select resource, slot from limit_slots
                where resource = $1 and (holder_job_id is null or lease_expires_at < now())
                order by slot
                limit 1
                for update skip locked
            ), holder as (
                select id from jobs where id = $2 and attempt = $3 and state = 'running'
            )
            update limit_slots s set holder_job_id = $2, holder_attempt = $3,
                holder_worker_id = $4, lease_expires_at = now() + $5::interval,
                acquired_at = now()
            from free
            where s.resource = free.resource and s.slot = free.slot
              and exists (select 1 from holder)
            returning s.slot
            "#,
            &*self.resource,
            holder.job_id.get(),
            holder.attempt,
            worker.get(),
            interval(self.lease),
        )
        .fetch_optional(&self.pool)
        .await?;
        match row {
            Some(slot) => Ok(Some(Permit {
                pool: self.pool.clone(),
                resource: self.resource.clone(),
                slot,
                holder,
                released: false,
            })),
            None => {
                let running = sqlx::query_scalar!(
                    "select exists (select 1 from jobs where id = $1 and attempt = $2 and state = 'running') as \"e!\"",
                    holder.job_id.get(),
                    holder.attempt,
                )
                .fetch_one(&self.pool)
                .await?;
                if running {
                    Ok(None)
                } else {
                    Err(Error::LeaseLost(holder))
                }
            }
        }
    }

    /// Waits until a slot is free and takes it. Each release notification wakes one
    /// waiter; every waiter also retries at least every 250 ms, for slots freed by a lapsed
    /// lease or taken by another process first.
    ///
    /// # Errors
    /// [`Error::LeaseLost`] if `holder` stops running meanwhile; database errors.
    pub async fn acquire(&self, holder: Lease, worker: WorkerId) -> Result<Permit> {
        loop {
            // Register interest before trying, so a release between the try and the
            // wait is not missed.
            let notified = self.released.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(permit) = self.try_acquire(holder, worker).await? {
                return Ok(permit);
            }
            let _ = tokio::time::timeout(RETRY_WITHOUT_NOTICE, notified).await;
        }
    }
}

impl Permit {
    /// The slot number held (0-based), for logs.
    pub fn slot(&self) -> i32 {
        self.slot
    }

    /// Frees the slot and tells waiting workers.
    ///
    /// # Errors
    /// Database errors (the slot then frees itself when its lease lapses).
    pub async fn release(mut self) -> Result<()> {
        self.released = true;
        release(&self.pool, &self.resource, self.slot, self.holder).await
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if self.released {
            return;
        }
        let (pool, resource, slot, holder) = (
            self.pool.clone(),
            self.resource.clone(),
            self.slot,
            self.holder,
        );
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                if let Err(err) = release(&pool, &resource, slot, holder).await {
                    tracing::warn!(error = %err, %resource, slot, "could not release a limit slot; it frees itself when its lease lapses");
                }
            });
        }
    }
}

async fn release(pool: &PgPool, resource: &str, slot: i32, holder: Lease) -> Result<()> {
    sqlx::query!(
        r#"
        with freed as (
            update limit_slots set holder_job_id = null, holder_attempt = null,
                holder_worker_id = null, lease_expires_at = null, acquired_at = null
            where resource = $1 and slot = $2 and holder_job_id = $3 and holder_attempt = $4
            returning resource
        )
        select pg_notify($5, resource) from freed
        "#,
        resource,
        slot,
        holder.job_id.get(),
        holder.attempt,
        SLOTS_CHANNEL,
    )
    .fetch_all(pool)
    .await?;
    Ok(())
}

/// Frees every slot `worker` holds (shutdown hand-back).
pub(super) async fn release_all(
    tx: &mut Transaction<'_, Postgres>,
    worker: WorkerId,
) -> Result<()> {
    sqlx::query!(
        r#"
        with freed as (
            update limit_slots set holder_job_id = null, holder_attempt = null,
                holder_worker_id = null, lease_expires_at = null, acquired_at = null
            where holder_worker_id = $1 and holder_job_id is not null
            returning resource
        )
        select pg_notify($2, resource) from freed
        "#,
        worker.get(),
        SLOTS_CHANNEL,
    )
    .fetch_all(&mut **tx)
    .await?;
    Ok(())
}
