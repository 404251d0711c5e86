-- The durable job queue. Generic: nothing here knows about GitLab, LLMs or reviews.
--
-- State machine (docs/ARCHITECTURE.md):
--   queued --claim--> running --ok--> succeeded
--                       |  \--fatal / out of attempts--> failed
--                       |  \--retryable--> queued (run_at in the future)
--                       |  \--await children--> queued with pending_children > 0
--                       \--lease lapsed (rescuer) / handed back on shutdown--> queued
--   queued | running --cancel--> cancelled;  failed | cancelled --retry--> queued

create type job_state as enum ('queued', 'running', 'succeeded', 'failed', 'cancelled');

create table jobs (
    id                bigint generated always as identity primary key,
    -- Stable name of the job kind; renaming a Rust type never orphans queued rows.
    kind              text not null check (kind <> ''),
    payload           jsonb not null default '{}'::jsonb,
    state             job_state not null default 'queued',
    -- Higher runs first.
    priority          smallint not null default 0,
    -- Earliest time the job may be claimed: now for fresh jobs, later for retries.
    run_at            timestamptz not null default now(),
    -- Number of times the job has been claimed. Bumped by every claim and never reset,
    -- so (id, attempt) fences out any worker that lost its lease.
    attempt           integer not null default 0,
    -- Attempts that ended in an error (or a lost lease). Claims that merely waited for
    -- children or were handed back at shutdown do not count against max_attempts.
    failed_attempts   integer not null default 0,
    max_attempts      integer not null default 5 check (max_attempts > 0),
    lease_expires_at  timestamptz,
    -- The worker process holding the lease; a fresh id per process start.
    worker_id         uuid,
    last_error        text,
    -- At most one unfinished job per key (see jobs_dedupe_key_unfinished).
    dedupe_key        text,
    parent_id         bigint references jobs (id) on delete cascade,
    -- Children not yet finished. A job with pending children is not claimable; the child
    -- whose completion brings this to zero makes the parent runnable, exactly once.
    pending_children  integer not null default 0 check (pending_children >= 0),
    created_at        timestamptz not null default now(),
    updated_at        timestamptz not null default now(),
    started_at        timestamptz,
    finished_at       timestamptz,
    constraint jobs_running_has_lease check (state <> 'running' or (lease_expires_at is not null and worker_id is not null))
) with (
    -- Hot, update-heavy table: leave room on each page for HOT updates and vacuum
    -- it aggressively instead of waiting for 20% of it to be dead.
    fillfactor = 70,
    autovacuum_vacuum_scale_factor = 0,
    autovacuum_vacuum_threshold = 1000,
    autovacuum_vacuum_insert_scale_factor = 0,
    autovacuum_vacuum_insert_threshold = 5000,
    autovacuum_analyze_scale_factor = 0.02,
    autovacuum_vacuum_cost_limit = 2000
);

-- The claim: queued rows in claim order. Parents waiting for children stay in it (they
-- are few, one per review) so that "is anything waiting?" is an index probe too.
create index jobs_queued on jobs (priority desc, run_at, id) where state = 'queued';
-- The rescuer, the heartbeat and the hand-back: running rows are few (at most the
-- fleet's total concurrency), so one small index serves all three.
create index jobs_running_lease on jobs (lease_expires_at) where state = 'running';
create index jobs_parent on jobs (parent_id) where parent_id is not null;
create unique index jobs_dedupe_key_unfinished on jobs (dedupe_key)
    where dedupe_key is not null and state in ('queued', 'running');
-- Retention pruning.
create index jobs_finished_at on jobs (finished_at) where finished_at is not null;

-- One row per attempt that did not succeed: who ran it, when, how long, how it ended.
-- A successful last attempt is not copied here: the job row already holds its worker,
-- start and finish (`Queue::attempts` shows both), and skipping the copy saves an insert
-- on the hottest path.
create table job_attempts (
    job_id       bigint not null references jobs (id) on delete cascade,
    attempt      integer not null,
    worker_id    uuid not null,
    started_at   timestamptz not null,
    finished_at  timestamptz not null default now(),
    -- retry | failed | cancelled | awaiting_children | lease_expired | handed_back
    outcome      text not null,
    error        text,
    primary key (job_id, attempt)
) with (autovacuum_vacuum_insert_scale_factor = 0, autovacuum_vacuum_insert_threshold = 10000);

-- Wake idle workers at once. Statement-level for inserts so a bulk insert sends one
-- notification; row-level with a WHEN clause for updates so only a row that *becomes*
-- runnable (retry due now, handed back, parent released, manual retry) notifies.
create function reviewq_notify_jobs() returns trigger language plpgsql as $$
begin
    perform pg_notify('reviewq_jobs', '');
    return null;
end
$$;

create trigger jobs_notify_insert after insert on jobs
    for each statement execute function reviewq_notify_jobs();

create trigger jobs_notify_runnable after update on jobs
    for each row
    when (new.state = 'queued' and new.pending_children = 0 and new.run_at <= now()
          and (old.state <> 'queued' or old.pending_children <> 0 or old.run_at > now()))
    execute function reviewq_notify_jobs();

-- Fleet-wide concurrency limits: a named resource has `capacity` slots, one row each.
-- Taking a slot is a SKIP LOCKED update of a free row, so it is exact under concurrency;
-- a slot whose holder's lease lapsed counts as free, so a dead worker never leaks one.
create table limit_slots (
    resource          text not null,
    slot              integer not null check (slot >= 0),
    holder_job_id     bigint,
    holder_attempt    integer,
    holder_worker_id  uuid,
    lease_expires_at  timestamptz,
    acquired_at       timestamptz,
    primary key (resource, slot)
) with (fillfactor = 50);
