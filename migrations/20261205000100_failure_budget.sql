-- When the current run of counted failures began: a job gives up only once it has failed
-- `max_attempts` times *and* has been failing for longer than the worker's failure budget
-- (`REVIEWQ_FAILURE_BUDGET_SECS`), so a ten-minute GitLab outage does not burn a review in
-- the first minute of backoff. Throttled attempts never set it; an operator's retry clears it.
alter table jobs add column first_failed_at timestamptz;
