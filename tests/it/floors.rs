//! The claim floor: a job below its priority's floor is found again, whether a fan-out
//! put it there, a parent's wake-up did, or a slow transaction committed it late.

use std::time::Duration;

use reviewq::{
    jobs::noop::NoopArgs,
    queue::{ClaimedJob, FLOOR_LAG, FLOOR_LOOKBACK, FloorReach, JobId, Lease, Queue, WorkerId},
};
use sqlx::PgPool;

const LEASE: Duration = Duration::from_secs(30);

fn ids(claimed: &[ClaimedJob]) -> Vec<JobId> {
    claimed.iter().map(|c| c.lease.job_id).collect()
}

fn leases(claimed: &[ClaimedJob]) -> Vec<Lease> {
    claimed.iter().map(|c| c.lease).collect()
}

#[sqlx::test]
async fn children_and_their_woken_parent_are_claimed_in_its_old_place_though_the_floor_passed_it(
    pool: PgPool,
) {
    let queue = Queue::new(pool.clone());
    let worker = WorkerId::random();
    let plain = NoopArgs::default().job();
    let ids_in = Queue::enqueue_many(&pool, &[plain.clone(), plain.clone(), plain.clone()])
        .await
        .unwrap();
    let parent = queue.claim(worker, 1, LEASE).await.unwrap();
    assert_eq!(ids(&parent), [ids_in[0]]);

    // With the parent running, the oldest claimable job is the second one: the floor
    // moves up to it, past the parent's `run_at`, which its children are about to take.
    queue
        .advance_claim_floors(Duration::ZERO, FloorReach::Whole)
        .await
        .unwrap();
    let mut tx = pool.begin().await.unwrap();
    let children = Queue::await_children(&mut tx, parent[0].lease, &[plain.clone(), plain])
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let claimed = queue.claim(worker, 2, LEASE).await.unwrap();
    assert_eq!(
        ids(&claimed),
        children,
        "the children's commit lowered the floor"
    );

    // And again for the parent's wake-up by its last child.
    queue
        .advance_claim_floors(Duration::ZERO, FloorReach::Whole)
        .await
        .unwrap();
    Queue::complete_many(&pool, &leases(&claimed))
        .await
        .unwrap();
    let woken = queue.claim(worker, 1, LEASE).await.unwrap();
    assert_eq!(
        ids(&woken),
        [ids_in[0]],
        "the woken parent comes before later jobs"
    );
    let rest = queue.claim(worker, 10, LEASE).await.unwrap();
    assert_eq!(ids(&rest), &ids_in[1..]);
}

/// Commits `slow` (stamped first) only after a pass that could not see it raised the floor
/// to `quick`, then claims `quick`. Returns `slow`.
async fn slow_committed_behind_a_pass(queue: &Queue, pool: &PgPool, worker: WorkerId) -> JobId {
    let plain = NoopArgs::default().job();
    // A first job makes priority 0 known; in a fresh database `slow`'s transaction would
    // otherwise hold that new priority's row and `quick` would wait for it.
    let first = Queue::enqueue(pool, &plain).await.unwrap().id();
    let claimed = queue.claim(worker, 1, LEASE).await.unwrap();
    assert_eq!(ids(&claimed), [first]);
    Queue::complete_many(pool, &leases(&claimed)).await.unwrap();

    let mut tx = pool.begin().await.unwrap();
    let slow = Queue::enqueue(&mut *tx, &plain).await.unwrap().id();
    let quick = Queue::enqueue(pool, &plain).await.unwrap().id();
    queue
        .advance_claim_floors(Duration::ZERO, FloorReach::Whole)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(
        ids(&queue.claim(worker, 10, LEASE).await.unwrap()),
        [quick],
        "`slow` is below the floor until the next pass"
    );
    slow
}

#[sqlx::test]
async fn a_job_committed_after_a_floor_pass_passed_it_is_claimed_after_the_next_pass(pool: PgPool) {
    let queue = Queue::new(pool.clone());
    let worker = WorkerId::random();
    let slow = slow_committed_behind_a_pass(&queue, &pool, worker).await;
    queue
        .advance_claim_floors(FLOOR_LAG, FloorReach::Below(FLOOR_LOOKBACK))
        .await
        .unwrap();
    assert_eq!(
        ids(&queue.claim(worker, 10, LEASE).await.unwrap()),
        [slow],
        "the pass recomputes the floor and comes down to it"
    );
}

#[sqlx::test]
async fn a_job_committed_later_than_the_lookback_is_found_by_a_pass_over_the_whole_queue(
    pool: PgPool,
) {
    let queue = Queue::new(pool.clone());
    let worker = WorkerId::random();
    let slow = slow_committed_behind_a_pass(&queue, &pool, worker).await;
    // A lookback of zero stands for a commit later than any lookback: routine passes
    // don't reach `slow`, a pass over the whole queue does.
    queue
        .advance_claim_floors(Duration::ZERO, FloorReach::Below(Duration::ZERO))
        .await
        .unwrap();
    assert!(
        queue.claim(worker, 10, LEASE).await.unwrap().is_empty(),
        "a routine pass looks only its lookback below the floor"
    );
    queue
        .advance_claim_floors(Duration::ZERO, FloorReach::Whole)
        .await
        .unwrap();
    assert_eq!(
        ids(&queue.claim(worker, 10, LEASE).await.unwrap()),
        [slow],
        "the whole-queue pass comes down to it"
    );
}

#[sqlx::test]
async fn a_floor_never_passes_a_claimable_job_nor_stays_behind_the_clock_by_more_than_the_lag(
    pool: PgPool,
) {
    let queue = Queue::new(pool.clone());
    let plain = NoopArgs::default().job();
    let id = Queue::enqueue(&pool, &plain).await.unwrap().id();
    let floor = || async {
        sqlx::query_scalar::<_, chrono::DateTime<chrono::Utc>>(
            "select claim_floor from job_priorities where priority = 0",
        )
        .fetch_one(&pool)
        .await
        .unwrap()
    };
    let run_at = queue.get(id).await.unwrap().run_at;

    queue
        .advance_claim_floors(Duration::ZERO, FloorReach::Whole)
        .await
        .unwrap();
    assert_eq!(
        floor().await,
        run_at,
        "the oldest claimable job sets the floor"
    );

    let worker = WorkerId::random();
    let claimed = queue.claim(worker, 1, LEASE).await.unwrap();
    Queue::complete_many(&pool, &leases(&claimed))
        .await
        .unwrap();
    let before = chrono::Utc::now();
    queue
        .advance_claim_floors(FLOOR_LAG, FloorReach::Whole)
        .await
        .unwrap();
    let after = chrono::Utc::now();
    let lag = chrono::Duration::from_std(FLOOR_LAG).unwrap();
    let slack = chrono::Duration::milliseconds(50);
    let set = floor().await;
    assert!(
        set >= before - lag - slack && set <= after - lag + slack,
        "with nothing claimable the floor is the clock minus the lag: {set}, clock {before}..{after}"
    );
}
