-- The priorities jobs have been enqueued at, so the claim can walk them from the highest
-- down and read, for each, only the due part of the claim index (priority = p and
-- run_at <= now()). One ordered scan of jobs_queued (priority desc, run_at, id) instead
-- reads past every future job of a higher priority than the due ones: with a million jobs
-- scheduled ahead, a tenth of them at priority 5, each claim read ~900 index pages (4.5 ms)
-- to find ten due jobs at priority 0. Postgres 15 has no skip scan to do this by itself.
--
-- Rows are only ever added, by trigger in the enqueueing transaction, so a job and its
-- priority become visible together. Removing an unused priority would race an enqueue that
-- found it present; keeping it costs the claim one empty index descent.
create table job_priorities (
    priority smallint primary key
);

create function reviewq_note_priorities() returns trigger language plpgsql as $$
begin
    insert into job_priorities select distinct priority from new_rows
    on conflict do nothing;
    return null;
end
$$;

create function reviewq_note_priority() returns trigger language plpgsql as $$
begin
    insert into job_priorities values (new.priority) on conflict do nothing;
    return null;
end
$$;

create trigger jobs_note_priorities after insert on jobs
    referencing new table as new_rows for each statement
    execute function reviewq_note_priorities();

-- A transition table cannot go with a column list, and an update trigger without one would
-- copy every claim's and completion's rows; nothing in reviewq changes a priority, so this
-- one is for an operator's hand-written update.
create trigger jobs_note_priority_change after update of priority on jobs
    for each row when (old.priority is distinct from new.priority)
    execute function reviewq_note_priority();

-- The jobs so far. The triggers above were created first in this transaction, which holds
-- jobs locked against writes until it commits, so no priority is missed.
insert into job_priorities select distinct priority from jobs on conflict do nothing;
