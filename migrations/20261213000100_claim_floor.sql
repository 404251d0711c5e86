-- A lower bound on `run_at` for each priority's claim, so that a snapshot held open
-- elsewhere (a forgotten `BEGIN`, a long report, pg_dump) does not slow every claim down.
--
-- Why: a claimed or finished job leaves its old index entry in `jobs_queued`. Vacuum
-- removes it once no snapshot can see the old row version; while one can, the entry stays,
-- and since claimed jobs are the oldest, those entries sort first: every claim walks past
-- all of them (one heap visit each) before it reaches a live row. 60 s into a pinned
-- snapshot at 800 jobs/s that was 48,000 entries and 11 ms per claim. With the claim's
-- index condition starting at `claim_floor`, the entries below it are never visited.
--
-- The invariant: every claimable job (queued, no pending children) of priority p has
-- run_at >= claim_floor of p, or is about to be found by the next floor pass.
--   * Raising: `Queue::advance_claim_floors` (each worker, about once a second) sets it to
--     the oldest claimable job's run_at, but never later than the clock minus a lag. It
--     locks the row first and reads the queue with a fresh snapshot after, so it sees every
--     job whose transaction lowered the floor before it (below). It recomputes from the
--     jobs each time rather than only moving up: a job whose transaction committed more
--     than the lag after it was stamped is found by the next pass, so it waits at most one
--     pass and is never lost.
--   * Lowering: a job becomes claimable with a `run_at` before its transaction's start only
--     when it is a child taking its parent's place in line or a parent woken by its last
--     child (or an operator's hand-written update). The trigger below lowers the floor
--     for those, at commit, after locking the row. Fresh enqueues, retries, rescues and
--     hand-backs stamp the current time and need nothing.
alter table job_priorities add column claim_floor timestamptz not null default '-infinity';

create function reviewq_lower_claim_floor() returns trigger language plpgsql as $$
begin
    -- Always lock, even when the floor is already low enough: otherwise a floor pass could
    -- read the queue before this transaction commits and raise the floor past this job.
    perform 1 from job_priorities where priority = new.priority for no key update;
    update job_priorities set claim_floor = new.run_at
    where priority = new.priority and claim_floor > new.run_at;
    return null;
end
$$;

-- Deferred to commit so that the floor's row lock is the last lock a transaction takes
-- (no lock-order cycle with the job rows it locked before) and is held for microseconds.
create constraint trigger jobs_lower_claim_floor after insert or update on jobs
    deferrable initially deferred
    for each row
    when (new.state = 'queued' and new.pending_children = 0 and new.run_at < now())
    execute function reviewq_lower_claim_floor();
