-- The index of leases covers the rows that hold one, not the rows in state 'running'.
--
-- Why: the planner picks a partial index whenever the query's own conditions imply its
-- predicate, and a completion's fence (`id = any($ids) and state = 'running'`) implied
-- `state = 'running'`. Believing few rows run, it scanned the whole lease index and filtered
-- by id instead of probing the primary key. That is cheap while vacuum keeps the index small,
-- but under a held snapshot every claim and heartbeat of every job since leaves a dead entry
-- there, and each completion walked all of them: 10,000 buffers and 15 ms per completion
-- after a minute at 800 jobs/s (EXPLAIN ANALYZE BUFFERS; see BENCHMARKS.md, "The claim
-- floor"). A predicate on the lease is implied only by a condition on the lease (the
-- rescuer's `lease_expires_at < now()`), so the fences go to the primary key.
--
-- The two predicates select the same rows: every transition out of 'running' clears the
-- lease, which the new constraint enforces alongside jobs_running_has_lease.
update jobs set lease_expires_at = null where state <> 'running' and lease_expires_at is not null;

alter table jobs add constraint jobs_lease_only_while_running
    check (state = 'running' or lease_expires_at is null);

drop index jobs_running_lease;
create index jobs_leased on jobs (lease_expires_at) where lease_expires_at is not null;
