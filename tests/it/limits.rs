//! Fleet-wide limits (`limit_slots`): capacity, slots whose job ended, and the release
//! notices that hand a slot to the next waiter.

use std::time::Duration;

use crate::support::wait_until;

use reviewq::{
    jobs::noop::NoopArgs,
    queue::{Error, Queue, WorkerId},
};
use sqlx::PgPool;

const LEASE: Duration = Duration::from_secs(30);

#[sqlx::test]
async fn the_fleet_limit_admits_no_more_holders_than_its_capacity(pool: PgPool) {
    use reviewq::queue::{Limiter, SlotWaiters};
    let queue = Queue::new(pool.clone());
    Limiter::set_capacity(&pool, "llm", 2).await.unwrap();
    let jobs = Queue::enqueue_many(&pool, &vec![NoopArgs::default().job(); 3])
        .await
        .unwrap();
    let worker = WorkerId::random();
    let claimed = queue.claim(worker, 3, LEASE).await.unwrap();
    assert_eq!(claimed.len(), jobs.len());
    let limiter = Limiter::new(pool.clone(), "llm", LEASE, SlotWaiters::default());
    let a = limiter.try_acquire(claimed[0].lease, worker).await.unwrap();
    let b = limiter.try_acquire(claimed[1].lease, worker).await.unwrap();
    let c = limiter.try_acquire(claimed[2].lease, worker).await.unwrap();
    assert!(
        a.is_some() && b.is_some() && c.is_none(),
        "third holder refused"
    );
    a.unwrap().release().await.unwrap();
    assert!(
        limiter
            .try_acquire(claimed[2].lease, worker)
            .await
            .unwrap()
            .is_some()
    );

    // A holder whose lease lapsed frees its slot without releasing it.
    sqlx::query("update limit_slots set lease_expires_at = now() - interval '1 second' where holder_job_id = $1")
        .bind(claimed[1].id().get())
        .execute(&pool)
        .await
        .unwrap();
    // Forgotten, not dropped: nothing releases it, as when its worker was killed.
    std::mem::forget(b);
    let d = Queue::enqueue(&pool, &NoopArgs::default().job())
        .await
        .unwrap()
        .id();
    let job_d = queue.claim(worker, 1, LEASE).await.unwrap().pop().unwrap();
    assert_eq!(job_d.id(), d);
    assert!(
        limiter
            .try_acquire(job_d.lease, worker)
            .await
            .unwrap()
            .is_some()
    );

    // A holder that no longer runs cannot take a slot.
    Queue::complete_many(&pool, &[claimed[0].lease])
        .await
        .unwrap();
    assert!(matches!(
        limiter.try_acquire(claimed[0].lease, worker).await,
        Err(Error::LeaseLost(_))
    ));
}

#[sqlx::test]
async fn a_slot_never_released_stops_being_renewed_once_its_job_ended(pool: PgPool) {
    use reviewq::queue::{Limiter, SlotWaiters};

    let queue = Queue::new(pool.clone());
    Limiter::set_capacity(&pool, "llm", 1).await.unwrap();
    Queue::enqueue_many(&pool, &vec![NoopArgs::default().job(); 2])
        .await
        .unwrap();
    let worker = WorkerId::random();
    let claimed = queue.claim(worker, 2, LEASE).await.unwrap();
    let limiter = Limiter::new(pool.clone(), "llm", LEASE, SlotWaiters::default());
    let leaked = limiter
        .try_acquire(claimed[0].lease, worker)
        .await
        .unwrap()
        .expect("the one slot");
    // Forgotten, not dropped: nothing releases it. Its job then ends.
    std::mem::forget(leaked);
    Queue::complete_many(&pool, &[claimed[0].lease])
        .await
        .unwrap();

    // The worker lives on and heartbeats, but only its running attempts' slots are renewed.
    sqlx::query("update limit_slots set lease_expires_at = now() + interval '1 second'")
        .execute(&pool)
        .await
        .unwrap();
    queue.heartbeat(worker, LEASE, &[]).await.unwrap();
    let renewed: bool = sqlx::query_scalar(
        "select lease_expires_at > now() + interval '2 seconds' from limit_slots where resource = 'llm'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(!renewed, "the ended job's slot was not renewed");
    sqlx::query("update limit_slots set lease_expires_at = now() - interval '1 second'")
        .execute(&pool)
        .await
        .unwrap();
    assert!(
        limiter
            .try_acquire(claimed[1].lease, worker)
            .await
            .unwrap()
            .is_some(),
        "and frees itself when its lease lapses"
    );
}

#[sqlx::test]
async fn a_release_notice_taken_by_a_waiter_that_was_handed_a_slot_reaches_the_next_waiter(
    pool: PgPool,
) {
    use reviewq::queue::{Limiter, SlotWaiters};

    let queue = Queue::new(pool.clone());
    Limiter::set_capacity(&pool, "llm", 2).await.unwrap();
    Queue::enqueue_many(&pool, &vec![NoopArgs::default().job(); 4])
        .await
        .unwrap();
    let worker = WorkerId::random();
    let claimed = queue.claim(worker, 4, LEASE).await.unwrap();
    let slots = SlotWaiters::default();
    // No periodic retry: only notices and hand-overs can move a slot here.
    let limiter = Limiter::new(pool.clone(), "llm", LEASE, slots.clone())
        .retry_every(Duration::from_secs(3600));
    let local = limiter
        .try_acquire(claimed[0].lease, worker)
        .await
        .unwrap()
        .unwrap();
    let remote = limiter
        .try_acquire(claimed[1].lease, worker)
        .await
        .unwrap()
        .unwrap();
    // Two waiters, in this order (a notice wakes the longest-waiting one).
    let mut waiters = Vec::new();
    for (n, job) in claimed[2..].iter().enumerate() {
        let (limiter, lease) = (limiter.clone(), job.lease);
        waiters.push(tokio::spawn(async move {
            limiter.acquire(lease, worker).await.unwrap()
        }));
        wait_until(Duration::from_secs(10), "the waiter waits", || async {
            slots.waiting("llm") == n + 1
        })
        .await;
    }
    let [first, second] = <[_; 2]>::try_from(waiters).unwrap();

    // Another process frees its slot: the row is freed and its notice reaches the oldest
    // waiter, just as this process hands that same waiter the slot it releases.
    sqlx::query("update limit_slots set holder_job_id = null, holder_attempt = null, holder_worker_id = null, lease_expires_at = null where slot = $1")
        .bind(remote.slot())
        .execute(&pool)
        .await
        .unwrap();
    std::mem::forget(remote);
    let release = tokio::spawn(local.release());
    slots.slot_released();
    release.await.unwrap().unwrap();

    let first = tokio::time::timeout(Duration::from_secs(10), first)
        .await
        .expect("the first waiter got a slot")
        .unwrap();
    let second = tokio::time::timeout(Duration::from_secs(10), second)
        .await
        .expect("the notice the first waiter did not need woke the second")
        .unwrap();
    let mut slots = [first.slot(), second.slot()];
    slots.sort_unstable();
    assert_eq!(slots, [0, 1]);
}
