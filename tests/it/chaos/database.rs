//! A misbehaving database: killed backends, a starved pool, an idle transaction, a restart
//! and a full connection table.

use std::time::{Duration, Instant};

use reviewq::{
    jobs::review::ReviewArgs,
    queue::{JobId, Queue},
    sim::GlmBehaviour,
};
use sqlx::{Connection, PgConnection, PgPool};

use crate::{support::PROJECT, support::url_of};

use super::fleet::Fleet;
use super::invariants::{Expect, assert_invariants, job_table};
use super::{DRAIN_TIMEOUT, Sims, enqueue, worker_url};

/// Terminates every backend of the fleet's workers; returns how many.
async fn terminate_worker_backends(conn: &mut PgConnection) -> i64 {
    sqlx::query_scalar(
        "select count(pg_terminate_backend(pid)) from pg_stat_activity
         where application_name = 'chaos-worker'",
    )
    .fetch_one(conn)
    .await
    .unwrap()
}

/// Enqueues reviews of `iids` as one wave; returns their job ids.
async fn wave(pool: &PgPool, iids: std::ops::RangeInclusive<u64>) -> Vec<JobId> {
    let mut ids = Vec::new();
    for iid in iids {
        ids.push(enqueue(pool, iid).await);
    }
    ids
}

/// Whether every job of `ids` has ended (false while the database cannot be reached).
async fn all_finished(pool: &PgPool, ids: &[JobId]) -> bool {
    let ids: Vec<i64> = ids.iter().map(|id| id.get()).collect();
    sqlx::query_scalar::<_, i64>(
        "select count(*) from jobs where id = any($1) and state in ('queued', 'running')",
    )
    .bind(&ids)
    .fetch_one(pool)
    .await
    .is_ok_and(|n| n == 0)
}

#[sqlx::test]
async fn killed_backends_a_starved_pool_and_an_idle_transaction_do_not_stop_the_queue(
    pool: PgPool,
) {
    /// How long the forgotten session stays idle in its transaction.
    const IDLE_FOR: Duration = Duration::from_secs(60);
    /// How long the lock on the limit table (what every LLM call needs) is held.
    const STALL: Duration = Duration::from_secs(10);
    let began = Instant::now();
    let sims = Sims::start(GlmBehaviour::with_latency(Duration::from_millis(300))).await;
    let iids: Vec<u64> = (1..=12).collect();
    sims.add(iids.iter().copied());
    let url = url_of(&pool);

    // An operator's session left open mid-transaction, holding a snapshot and locks on
    // the queue's tables, for a minute.
    let mut idle = PgConnection::connect(&url).await.unwrap();
    let idle_pid: i32 = sqlx::query_scalar("select pg_backend_pid()")
        .fetch_one(&mut idle)
        .await
        .unwrap();
    sqlx::query("begin isolation level repeatable read")
        .execute(&mut idle)
        .await
        .unwrap();
    sqlx::query("select count(*) from jobs, limit_slots")
        .execute(&mut idle)
        .await
        .unwrap();
    let idle_since = Instant::now();

    // Four connections per worker: the stall below holds them all.
    let mut fleet = Fleet::start(
        "database",
        &pool,
        &worker_url(&url),
        &sims,
        &[("REVIEWQ_DB_POOL_SIZE", "4")],
    );
    let mut admin = PgConnection::connect(&url).await.unwrap();
    let mut waves = vec![(Instant::now(), wave(&pool, 1..=3).await, None)];
    let mut terminated = 0;
    let mut stall: Option<tokio::task::JoinHandle<()>> = None;
    let deadline = idle_since + IDLE_FOR + DRAIN_TIMEOUT;
    loop {
        let t = began.elapsed();
        // Backends killed under the workers, once a second for 8 s.
        if t >= Duration::from_secs(2) && t < Duration::from_secs(10) {
            terminated += terminate_worker_backends(&mut admin).await;
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        if waves.len() < 4 && t >= Duration::from_secs(14) * waves.len() as u32 {
            let first = 3 * waves.len() as u64 + 1;
            waves.push((Instant::now(), wave(&pool, first..=first + 2).await, None));
        }
        // A long statement holding the limit table, taken while LLM calls are in flight:
        // every LLM call and every heartbeat waits on it, each holding one of its worker's
        // four connections.
        let busy = sims.glm.in_flight() > 0 || t >= Duration::from_secs(24);
        if stall.is_none() && t >= Duration::from_secs(15) && busy {
            let url = url.clone();
            stall = Some(tokio::spawn(async move {
                let mut conn = PgConnection::connect(&url).await.unwrap();
                let mut tx = conn.begin().await.unwrap();
                sqlx::query("lock table limit_slots in exclusive mode")
                    .execute(&mut *tx)
                    .await
                    .unwrap();
                sqlx::query("select pg_sleep($1)")
                    .bind(STALL.as_secs_f64())
                    .execute(&mut *tx)
                    .await
                    .unwrap();
                tx.commit().await.unwrap();
            }));
        }
        for (enqueued, ids, done) in &mut waves {
            if done.is_none() && all_finished(&pool, ids).await {
                *done = Some(enqueued.elapsed());
            }
        }
        let all_done = waves.len() == 4 && waves.iter().all(|w| w.2.is_some());
        if all_done && idle_since.elapsed() >= IDLE_FOR {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "chaos[database]: the waves did not finish: {:?}\n{}",
            waves.iter().map(|w| w.2).collect::<Vec<_>>(),
            job_table(&pool).await
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stall.expect("the stall ran").await.unwrap();

    // The session was idle in its transaction all along, and the queue kept going: the
    // last wave, which met no other fault, took as long as an unhindered one.
    let state: String = sqlx::query_scalar("select state from pg_stat_activity where pid = $1")
        .bind(idle_pid)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(state, "idle in transaction");
    sqlx::query("rollback").execute(&mut idle).await.unwrap();
    let latencies: Vec<f64> = waves
        .iter()
        .map(|w| w.2.expect("finished").as_secs_f64())
        .collect();
    assert!(
        latencies[3] < 15.0,
        "the last wave took {:.1} s beside the idle transaction",
        latencies[3]
    );
    assert!(terminated > 0, "backends were terminated");
    fleet.stop().await;
    let tally = assert_invariants(
        &pool,
        &sims,
        &iids,
        &Expect {
            ..Expect::default()
        },
    )
    .await;
    eprintln!(
        "chaos[database]: secs={:.1} backends_terminated={terminated} stall={}s idle_in_transaction={}s \
         wave_latencies_s={latencies:.1?} kills=0 restarts=0 {tally}",
        began.elapsed().as_secs_f64(),
        STALL.as_secs(),
        IDLE_FOR.as_secs(),
    );
}

#[tokio::test]
async fn a_postgres_restart_and_a_full_connection_table_mid_run_lose_nothing() {
    /// How long every connection slot of the server stays taken.
    const FULL_FOR: Duration = Duration::from_secs(10);
    let began = Instant::now();
    // A private server: restarting it or filling its connection table must not disturb
    // the tests sharing the usual one.
    let dir = tempfile::tempdir().unwrap();
    let cluster = reviewq::localdb::Cluster::new(dir.path()).unwrap();
    let blocking = |f: fn(&reviewq::localdb::Cluster) -> Result<(), reviewq::localdb::Error>| {
        let cluster = cluster.clone();
        tokio::task::spawn_blocking(move || f(&cluster))
    };
    blocking(reviewq::localdb::Cluster::start)
        .await
        .unwrap()
        .unwrap();
    let url = cluster.url();
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(3)
        .connect(&url)
        .await
        .unwrap();
    reviewq::migrate(&pool).await.unwrap();
    let sims = Sims::start(GlmBehaviour::with_latency(Duration::from_millis(400))).await;
    let iids: Vec<u64> = (1..=12).collect();
    sims.add(iids.iter().copied());
    let mut fleet = Fleet::start("postgres", &pool, &worker_url(&url), &sims, &[]);
    let first = wave(&pool, 1..=8).await;

    // The restart, while LLM calls are in flight.
    let deadline = Instant::now() + Duration::from_secs(60);
    while sims.glm.request_count() < 3 || sims.glm.in_flight() == 0 {
        assert!(
            Instant::now() < deadline,
            "no LLM call started\n{}",
            job_table(&pool).await
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let restart_began = Instant::now();
    blocking(reviewq::localdb::Cluster::restart)
        .await
        .unwrap()
        .unwrap();
    let restart_took = restart_began.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;

    // Then every connection slot taken: the workers' connections are cut and they cannot
    // open new ones for a while. A second wave is enqueued meanwhile, on a slot we hold.
    let mut held: Vec<PgConnection> = Vec::new();
    let mut admin = PgConnection::connect(&url).await.unwrap();
    let terminated = terminate_worker_backends(&mut admin).await;
    held.push(admin);
    let fill_until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < fill_until && held.len() < 500 {
        match PgConnection::connect(&url).await {
            Ok(conn) => held.push(conn),
            // "sorry, too many clients already": keep trying for the slots workers free.
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    let slots_held = held.len();
    let mut second = Vec::new();
    for iid in 9..=12 {
        let mr = format!("{PROJECT}:{iid}").parse().unwrap();
        let options = crate::support::options();
        second.push(
            Queue::enqueue(&mut held[0], &ReviewArgs::new(mr, &options).job(0))
                .await
                .unwrap()
                .id(),
        );
    }
    tokio::time::sleep(FULL_FOR).await;
    drop(held);

    fleet.wait_idle(DRAIN_TIMEOUT, "the reviews").await;
    assert!(all_finished(&pool, &first).await && all_finished(&pool, &second).await);
    fleet.stop().await;
    let tally = assert_invariants(
        &pool,
        &sims,
        &iids,
        &Expect {
            ..Expect::default()
        },
    )
    .await;
    eprintln!(
        "chaos[postgres]: secs={:.1} restart={:.1}s backends_terminated={terminated} \
         connection_slots_held={slots_held} for {}s kills=0 restarts=0 {tally}",
        began.elapsed().as_secs_f64(),
        restart_took.as_secs_f64(),
        FULL_FOR.as_secs(),
    );
    pool.close().await;
    blocking(reviewq::localdb::Cluster::stop)
        .await
        .unwrap()
        .unwrap();
}
