-- The queue's published read of how a job ended, for the tables that record job ids of
-- their own (`review_chunks.job_id`): a review joins this view, not the `jobs` table, so
-- only the queue's code and migrations name the table's columns (docs/ARCHITECTURE.md).
create view job_outcomes as
select id as job_id, state, last_error, finished_at from jobs;
