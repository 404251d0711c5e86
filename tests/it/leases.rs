//! A worker whose database stops answering: its attempts stop by its own clock before their
//! leases lapse, so no other worker ever runs the same job (or holds the same limit slot)
//! while one of its requests is still in flight.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use reviewq::{
    jobs::{Dispatcher, noop::NoopArgs},
    queue::{Queue, Worker, WorkerConfig},
};
use sqlx::PgPool;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use crate::support::{lapse_lease, wait_until};

/// An HTTP server that answers after a minute, counting the requests in flight; a request
/// stops counting as soon as its client hangs up, as a real server's would.
async fn hang_up_probe() -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/probe", listener.local_addr().unwrap());
    let in_flight = Arc::new(AtomicUsize::new(0));
    let counter = in_flight.clone();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            sock.set_nodelay(true).unwrap();
            let counter = counter.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut read = 0;
                while !buf[..read].windows(4).any(|w| w == b"\r\n\r\n") {
                    match sock.read(&mut buf[read..]).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => read += n,
                    }
                }
                counter.fetch_add(1, Ordering::SeqCst);
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs(60)) => {
                        let _ = sock
                            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                            .await;
                    }
                    // The client hung up (a read of 0 bytes), or the socket failed.
                    _ = sock.read(&mut buf) => {}
                }
                counter.fetch_sub(1, Ordering::SeqCst);
            });
        }
    });
    (url, in_flight)
}

#[sqlx::test]
async fn an_attempt_whose_heartbeat_cannot_get_through_stops_before_its_lease_lapses(pool: PgPool) {
    let (probe_url, in_flight) = hang_up_probe().await;
    let queue = Queue::new(pool.clone());
    let job = NoopArgs {
        resource: Some("llm".into()),
        probe_url: Some(probe_url),
        ..NoopArgs::default()
    };
    let id = Queue::enqueue(&pool, &job.job()).await.unwrap().id();
    let worker = Worker::new(
        queue.clone(),
        Dispatcher::new(),
        WorkerConfig {
            concurrency: 1,
            lease: Duration::from_secs(3),
            rescue_interval: Duration::from_millis(500),
            shutdown_grace: Duration::from_millis(200),
            limits: vec![("llm".into(), 1)],
            ..WorkerConfig::default()
        },
    );
    let stop = CancellationToken::new();
    let run = tokio::spawn(worker.run(stop.clone()));
    wait_until(
        Duration::from_secs(10),
        "the job's request in flight",
        || async { in_flight.load(Ordering::SeqCst) == 1 },
    )
    .await;

    // The job's row locked: the heartbeat's update waits behind it, as it would behind a
    // starved pool or a database that stopped answering.
    let mut blocker = pool.begin().await.unwrap();
    sqlx::query("select 1 from jobs where id = $1 for update")
        .bind(id.get())
        .execute(&mut *blocker)
        .await
        .unwrap();
    wait_until(
        Duration::from_secs(10),
        "the attempt to hang up its request",
        || async { in_flight.load(Ordering::SeqCst) == 0 },
    )
    .await;
    let lease_left: bool =
        sqlx::query_scalar("select lease_expires_at > clock_timestamp() from jobs where id = $1")
            .bind(id.get())
            .fetch_one(&mut *blocker)
            .await
            .unwrap();
    assert!(
        lease_left,
        "the request was still in flight when the database let the lease lapse"
    );
    blocker.rollback().await.unwrap();

    // Abandoned, not lost: once the database answers, the attempt is recorded as a failure
    // to retry, and the job runs again.
    wait_until(
        Duration::from_secs(20),
        "the job's second attempt in flight",
        || async {
            in_flight.load(Ordering::SeqCst) == 1 && queue.get(id).await.unwrap().attempt == 2
        },
    )
    .await;
    let attempts = queue.attempts(id).await.unwrap();
    assert_eq!(attempts.len(), 1, "{attempts:?}");
    assert_eq!(attempts[0].outcome, "retry");
    assert!(
        attempts[0]
            .error
            .as_deref()
            .is_some_and(|e| e.contains("could not extend the lease in time")),
        "{attempts:?}"
    );
    stop.cancel();
    run.await.unwrap().unwrap();
}

/// `lease_held(job, attempt)` as the job kinds' statements see it.
async fn lease_held(pool: &PgPool, lease: reviewq::queue::Lease) -> bool {
    sqlx::query_scalar("select lease_held($1, $2)")
        .bind(lease.job_id.get())
        .bind(lease.attempt)
        .fetch_one(pool)
        .await
        .unwrap()
}

#[sqlx::test]
async fn the_sql_lease_fence_holds_only_for_the_running_attempt_that_owns_the_job(pool: PgPool) {
    let queue = Queue::new(pool.clone());
    let lease_time = Duration::from_secs(30);
    let id = Queue::enqueue(&pool, &NoopArgs::default().job())
        .await
        .unwrap()
        .id();
    let claim = || async {
        queue
            .claim(reviewq::queue::WorkerId::random(), 1, lease_time)
            .await
            .unwrap()
            .pop()
            .unwrap()
            .lease
    };
    let first = claim().await;
    assert!(
        lease_held(&pool, first).await,
        "the claiming attempt holds it"
    );

    // Its lease lapses and the rescuer requeues it: a second claim owns the job now.
    lapse_lease(&pool, id).await;
    assert_eq!(queue.rescue_expired(Duration::ZERO).await.unwrap(), Some(1));
    let second = claim().await;
    assert!(
        !lease_held(&pool, first).await,
        "the rescued attempt no longer holds it"
    );
    assert!(lease_held(&pool, second).await);

    Queue::complete_many(&pool, &[second]).await.unwrap();
    assert!(
        !lease_held(&pool, second).await,
        "a finished job is held by nobody"
    );
}
