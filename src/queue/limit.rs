//! Fleet-wide concurrency limits: at most N holders of a named resource across every
//! worker process that shares the database.
//!
//! A resource has N rows in `limit_slots`. Acquiring takes a free row with
//! `FOR UPDATE SKIP LOCKED` (exact under any concurrency), stamped with the holder's
//! lease; the holder's heartbeat extends it. A slot is free when released or when its
//! lease lapsed, so a killed worker cannot leak one for longer than a lease.

use std::{
    collections::{HashMap, VecDeque},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use sqlx::{PgPool, Postgres, Transaction};
use tokio::sync::{Notify, oneshot};

use super::{Error, Lease, Result, SLOTS_CHANNEL, WorkerId, interval};

/// Longest wait between two tries when no release notification arrives (a slot can also
/// free up by its holder's lease lapsing, which sends nothing).
const RETRY_WITHOUT_NOTICE: Duration = Duration::from_millis(250);

/// Hands out slots of one named resource.
#[derive(Debug, Clone)]
pub struct Limiter {
    pool: PgPool,
    resource: Arc<str>,
    /// How long a slot stays held without a heartbeat.
    lease: Duration,
    /// This process's waiters: woken by release notices, or handed a released slot.
    waiters: SlotWaiters,
    /// How long a waiter waits for a notice before trying again anyway.
    retry_without_notice: Duration,
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
    lease: Duration,
    waiters: SlotWaiters,
}

/// The jobs of one worker process that wait for slots, and the release notices that wake
/// them (one per process, shared by every [`Limiter`] of its jobs).
///
/// A slot released by a job of this process goes straight to the longest-waiting job of
/// this process, in the one statement that moves the slot's holder: no release
/// notification, no wake-up, no second query. Without this, every hand-over between two
/// jobs of one process cost a NOTIFY round trip and the waiter's own claim of the slot
/// (10-20 ms of idle slot per call under load). Slots freed elsewhere reach these waiters
/// through [`SlotWaiters::slot_released`] (the worker's listener calls it per notice), and
/// slots freed by a lapsed lease through each waiter's periodic retry.
#[derive(Debug, Clone, Default)]
pub struct SlotWaiters {
    waiting: Arc<Mutex<HashMap<Arc<str>, VecDeque<Waiter>>>>,
    next_id: Arc<AtomicU64>,
    /// Release notices: one `notify_one` per slot freed anywhere in the fleet.
    released: Arc<Notify>,
}

#[derive(Debug)]
struct Waiter {
    id: u64,
    holder: Lease,
    worker: WorkerId,
    tx: oneshot::Sender<Permit>,
}

impl SlotWaiters {
    /// A slot was freed somewhere in the fleet: wakes one waiter to try for it.
    pub fn slot_released(&self) {
        self.released.notify_one();
    }

    /// Release notices may have been missed (the listener reconnected): wakes every
    /// waiter to try again.
    pub fn wake_all(&self) {
        self.released.notify_waiters();
    }

    fn register(
        &self,
        resource: &Arc<str>,
        holder: Lease,
        worker: WorkerId,
    ) -> (u64, oneshot::Receiver<Permit>) {
        let (tx, rx) = oneshot::channel();
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.waiting
            .lock()
            .expect("slot waiters lock")
            .entry(resource.clone())
            .or_default()
            .push_back(Waiter {
                id,
                holder,
                worker,
                tx,
            });
        (id, rx)
    }

    /// Removes a waiter; `false` if a releaser already took it (its permit may be coming).
    fn withdraw(&self, resource: &str, id: u64) -> bool {
        let mut waiting = self.waiting.lock().expect("slot waiters lock");
        let Some(queue) = waiting.get_mut(resource) else {
            return false;
        };
        let before = queue.len();
        queue.retain(|w| w.id != id);
        before != queue.len()
    }

    /// How many of this process's jobs wait for a slot of `resource`.
    pub fn waiting(&self, resource: &str) -> usize {
        self.waiting
            .lock()
            .expect("slot waiters lock")
            .get(resource)
            .map_or(0, VecDeque::len)
    }

    fn next(&self, resource: &str) -> Option<Waiter> {
        self.waiting
            .lock()
            .expect("slot waiters lock")
            .get_mut(resource)
            .and_then(VecDeque::pop_front)
    }
}

impl Limiter {
    /// A limiter for `resource` whose waiting jobs join `waiters` (the worker process's).
    pub fn new(pool: PgPool, resource: &str, lease: Duration, waiters: SlotWaiters) -> Self {
        Self {
            pool,
            resource: resource.into(),
            lease,
            waiters,
            retry_without_notice: RETRY_WITHOUT_NOTICE,
        }
    }

    /// Makes waiters try again every `every` even without a release notice (default
    /// 250 ms). Only slots freed by a lapsed lease send no notice.
    #[must_use]
    pub fn retry_every(mut self, every: Duration) -> Self {
        self.retry_without_notice = every;
        self
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
                lease: self.lease,
                waiters: self.waiters.clone(),
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
    /// waiter; every waiter also retries at least every 250 ms (see
    /// [`retry_every`](Self::retry_every)), for slots freed by a lapsed lease.
    ///
    /// # Errors
    /// [`Error::LeaseLost`] if `holder` stops running meanwhile; database errors.
    pub async fn acquire(&self, holder: Lease, worker: WorkerId) -> Result<Permit> {
        loop {
            // Register interest before trying, so a release between the try and the
            // wait is not missed.
            let notified = self.waiters.released.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(permit) = self.try_acquire(holder, worker).await? {
                return Ok(permit);
            }
            let (id, mut handed) = self.waiters.register(&self.resource, holder, worker);
            let mut registration = Registration {
                waiters: &self.waiters,
                resource: &self.resource,
                id,
                active: true,
            };
            tokio::select! {
                permit = &mut handed => {
                    registration.active = false;
                    if let Ok(permit) = permit {
                        return Ok(permit);
                    }
                }
                woken = tokio::time::timeout(self.retry_without_notice, notified) => {
                    registration.active = false;
                    if !self.waiters.withdraw(&self.resource, id) {
                        // A releaser took this waiter: its permit is on the way, unless
                        // the transfer failed (then the sender is dropped).
                        if let Ok(permit) = handed.await {
                            if woken.is_ok() {
                                // The notice this waiter took was for a slot freed
                                // elsewhere, and it holds a handed-over slot instead: pass
                                // the notice on, or that slot stands empty until some
                                // waiter's next retry (up to 250 ms; seen in `bench e2e`
                                // with three workers as a 190 ms gap in one run in three).
                                self.waiters.slot_released();
                            }
                            return Ok(permit);
                        }
                    }
                }
            }
        }
    }
}

/// Withdraws a waiter whose `acquire` was dropped while waiting.
struct Registration<'a> {
    waiters: &'a SlotWaiters,
    resource: &'a str,
    id: u64,
    active: bool,
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        if self.active {
            self.waiters.withdraw(self.resource, self.id);
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
        release(
            &self.pool,
            &self.waiters,
            &self.resource,
            self.slot,
            self.holder,
            self.lease,
        )
        .await
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if self.released {
            return;
        }
        let (pool, waiters, resource, slot, holder, lease) = (
            self.pool.clone(),
            self.waiters.clone(),
            self.resource.clone(),
            self.slot,
            self.holder,
            self.lease,
        );
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                if let Err(err) = release(&pool, &waiters, &resource, slot, holder, lease).await {
                    tracing::warn!(error = %err, %resource, slot, "could not release a limit slot; it frees itself when its lease lapses");
                }
            });
        }
    }
}

/// Hands the slot to the longest-waiting job of this process whose attempt still runs
/// (moving the holder in one fenced statement), or frees it and tells the fleet.
async fn release(
    pool: &PgPool,
    waiters: &SlotWaiters,
    resource: &Arc<str>,
    slot: i32,
    mut holder: Lease,
    lease: Duration,
) -> Result<()> {
    while let Some(waiter) = waiters.next(resource) {
        let moved = sqlx::query_scalar!(
            r#"
            update limit_slots set holder_job_id = $5, holder_attempt = $6,
                holder_worker_id = $7, lease_expires_at = now() + $8::interval,
                acquired_at = now()
            where resource = $1 and slot = $2 and holder_job_id = $3 and holder_attempt = $4
              and exists (select 1 from jobs where id = $5 and attempt = $6 and state = 'running')
            returning slot
            "#,
            &**resource,
            slot,
            holder.job_id.get(),
            holder.attempt,
            waiter.holder.job_id.get(),
            waiter.holder.attempt,
            waiter.worker.get(),
            interval(lease),
        )
        .fetch_optional(pool)
        .await?;
        if moved.is_none() {
            // The waiter's attempt ended (it retries on its own when its sender drops),
            // or this hold had already lapsed; try the next, then free.
            continue;
        }
        let permit = Permit {
            pool: pool.clone(),
            resource: resource.clone(),
            slot,
            holder: waiter.holder,
            released: false,
            lease,
            waiters: waiters.clone(),
        };
        match waiter.tx.send(permit) {
            Ok(()) => return Ok(()),
            Err(mut unwanted) => {
                // The waiter went away after the transfer: the slot is now in its name.
                unwanted.released = true;
                holder = waiter.holder;
            }
        }
    }
    free(pool, resource, slot, holder).await
}

async fn free(pool: &PgPool, resource: &str, slot: i32, holder: Lease) -> Result<()> {
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
