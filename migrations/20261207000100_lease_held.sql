-- The lease fence as one function: true while attempt $2 of job $1 still owns the job (it
-- is running and no later claim happened). Every write the job kinds make after a claim
-- checks it, so the rule is written once. It depends only on its arguments, so a statement
-- evaluates it once (a one-time filter), not per row: one primary-key lookup on jobs.
create function lease_held(job_id bigint, attempt integer) returns boolean
language sql stable parallel safe
return exists (select 1 from jobs j where j.id = $1 and j.attempt = $2 and j.state = 'running');
