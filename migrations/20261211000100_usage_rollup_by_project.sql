-- A second, coarser rollup of the ledger: token sums per UTC day, project, model and
-- purpose, without the merge request. Its size is bounded by days x projects x models x
-- purposes (about 220,000 rows for a year of 200 projects), not by how many merge requests
-- there were (llm_usage_daily had 1,500,000 rows for a year of 10 million calls), so
-- `reviewq usage` by day, project, model or purpose and the fleet's budget check read it;
-- only `--by mr` reads llm_usage_daily. Like that table it is derived and always equals
--   select ... from llm_calls group by (started_at at time zone 'UTC')::date, project,
--          model, purpose
-- (a test checks both after inserts, updates and deletes; all-deleted groups keep zeros).
create table llm_usage_project_daily (
    day               date not null,
    project           text not null,
    model             text not null,
    purpose           text not null,
    calls             bigint not null,
    failed_calls      bigint not null,
    prompt_tokens     bigint not null,
    completion_tokens bigint not null,
    total_tokens      bigint not null,
    cached_tokens     bigint not null,
    primary key (day, project, model, purpose)
);

-- The triggers get one function per event, each with static SQL, generated below from one
-- template: a ledger write (every LLM call makes two) then runs cached plans, where the
-- previous function's EXECUTE planned its statement on every call (0.2-0.3 ms of the
-- budget check's insert). Each statement groups the changed rows once and upserts both
-- rollups from that delta, in key order so two statements never lock groups in opposite
-- orders; a delta of zeros (an update of finished_at alone) writes nothing.
do $do$
declare
    event record;
begin
    for event in
        select * from (values
            ('insert', 'select 1 as sign, * from new_rows'),
            ('update', 'select 1 as sign, * from new_rows union all select -1, * from old_rows'),
            ('delete', 'select -1 as sign, * from old_rows')) e(name, changed)
    loop
        execute format($template$
            create function llm_usage_rollup_%1$s() returns trigger language plpgsql as $fn$
            begin
                with delta as (
                    select (started_at at time zone 'UTC')::date as day, project, mr_iid,
                           model, purpose, sum(sign) as calls,
                           sum(case when status = 'error' then sign else 0 end) as failed_calls,
                           sum(sign * coalesce(prompt_tokens, 0)) as prompt_tokens,
                           sum(sign * coalesce(completion_tokens, 0)) as completion_tokens,
                           sum(sign * coalesce(total_tokens, 0)) as total_tokens,
                           sum(sign * coalesce(cached_tokens, 0)) as cached_tokens
                    from (%2$s) changed
                    group by 1, 2, 3, 4, 5
                ), by_mr as (
                    insert into llm_usage_daily as u (day, project, mr_iid, model, purpose,
                        calls, failed_calls, prompt_tokens, completion_tokens, total_tokens,
                        cached_tokens)
                    select * from delta
                    where (calls, failed_calls, prompt_tokens, completion_tokens, total_tokens,
                           cached_tokens) <> (0, 0, 0, 0, 0, 0)
                    order by 1, 2, 3, 4, 5
                    on conflict (day, project, mr_iid, model, purpose) do update set
                        calls = u.calls + excluded.calls,
                        failed_calls = u.failed_calls + excluded.failed_calls,
                        prompt_tokens = u.prompt_tokens + excluded.prompt_tokens,
                        completion_tokens = u.completion_tokens + excluded.completion_tokens,
                        total_tokens = u.total_tokens + excluded.total_tokens,
                        cached_tokens = u.cached_tokens + excluded.cached_tokens
                )
                insert into llm_usage_project_daily as u (day, project, model, purpose, calls,
                    failed_calls, prompt_tokens, completion_tokens, total_tokens,
                    cached_tokens)
                select day, project, model, purpose, sum(calls), sum(failed_calls),
                       sum(prompt_tokens), sum(completion_tokens), sum(total_tokens),
                       sum(cached_tokens)
                from delta
                group by 1, 2, 3, 4
                having (sum(calls), sum(failed_calls), sum(prompt_tokens),
                        sum(completion_tokens), sum(total_tokens), sum(cached_tokens))
                       <> (0, 0, 0, 0, 0, 0)
                order by 1, 2, 3, 4
                on conflict (day, project, model, purpose) do update set
                    calls = u.calls + excluded.calls,
                    failed_calls = u.failed_calls + excluded.failed_calls,
                    prompt_tokens = u.prompt_tokens + excluded.prompt_tokens,
                    completion_tokens = u.completion_tokens + excluded.completion_tokens,
                    total_tokens = u.total_tokens + excluded.total_tokens,
                    cached_tokens = u.cached_tokens + excluded.cached_tokens;
                return null;
            end
            $fn$
        $template$, event.name, event.changed);
    end loop;
end
$do$;

drop trigger llm_usage_on_insert on llm_calls;
drop trigger llm_usage_on_update on llm_calls;
drop trigger llm_usage_on_delete on llm_calls;
drop function llm_usage_rollup();

create trigger llm_usage_on_insert after insert on llm_calls
    referencing new table as new_rows for each statement execute function llm_usage_rollup_insert();
create trigger llm_usage_on_update after update on llm_calls
    referencing old table as old_rows new table as new_rows
    for each statement execute function llm_usage_rollup_update();
create trigger llm_usage_on_delete after delete on llm_calls
    referencing old table as old_rows for each statement execute function llm_usage_rollup_delete();

-- The ledger so far, from the finer rollup (equal to the ledger, and smaller). Dropping the
-- old triggers locked llm_calls against writes until this transaction commits, so no call
-- is counted twice or missed.
insert into llm_usage_project_daily
select day, project, model, purpose, sum(calls), sum(failed_calls), sum(prompt_tokens),
       sum(completion_tokens), sum(total_tokens), sum(cached_tokens)
from llm_usage_daily
group by 1, 2, 3, 4;
