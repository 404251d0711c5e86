//! Keeping leases: the heartbeat that extends a worker's leases and stops attempts it lost,
//! and the local clock that stops an attempt before its lease can lapse when no heartbeat
//! gets through.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::{
    JobId, Lease, Queue, WorkerId,
    worker::{Abandoned, InFlight},
};

/// The part of a lease an attempt does not use: it stops this long before its lease's
/// expiry by its own clock, so that its requests are gone before another worker can take
/// the job or its limit slots.
pub(super) const LEASE_MARGIN_DIVISOR: u32 = 10;

/// Extends this worker's leases every lease/3, whatever its jobs are doing, and cancels
/// local attempts whose lease is no longer held.
pub(super) async fn heartbeat(
    queue: Queue,
    worker: WorkerId,
    lease: Duration,
    in_flight: InFlight,
    abandoned: Abandoned,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(lease / 3);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let started = Instant::now();
        let skip: Vec<Lease> = abandoned
            .lock()
            .expect("abandoned map")
            .iter()
            .copied()
            .collect();
        match queue.heartbeat(worker, lease, &skip).await {
            Ok(held) => {
                let held: HashMap<JobId, i32> =
                    held.into_iter().map(|l| (l.job_id, l.attempt)).collect();
                // The database's new expiry is its clock at the statement plus the lease:
                // never before `started + lease` by this process's clock.
                let extended = started + lease;
                for (id, running) in in_flight.lock().expect("in-flight map").iter() {
                    let lost = held.get(id) != Some(&running.attempt);
                    if lost && running.claimed < started {
                        tracing::warn!(job.id = %id, "lease no longer held (cancelled or rescued): stopping the attempt");
                        running.cancel.cancel();
                    } else if !lost {
                        running.valid_until.send_if_modified(|until| {
                            let later = extended > *until;
                            if later {
                                *until = extended;
                            }
                            later
                        });
                    }
                }
            }
            Err(err) => tracing::warn!(error = %err, "heartbeat failed; retrying"),
        }
    }
}

/// Resolves once the lease's expiry by this process's clock, less `margin`, has passed
/// without a heartbeat moving it later.
pub(super) async fn lease_may_lapse(mut valid_until: watch::Receiver<Instant>, margin: Duration) {
    loop {
        let deadline = *valid_until.borrow_and_update() - margin;
        tokio::select! {
            () = tokio::time::sleep_until(deadline.into()) => {
                if *valid_until.borrow() - margin <= deadline {
                    return;
                }
            }
            changed = valid_until.changed() => {
                if changed.is_err() {
                    // The job ended: nothing left to stop.
                    std::future::pending::<()>().await;
                }
            }
        }
    }
}
