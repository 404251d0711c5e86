-- Token sums per UTC day, merge request, model and purpose, kept by triggers on llm_calls in
-- the transaction of every ledger write, so `reviewq usage` and the console's spend page read
-- one row per group and day instead of every call of the period. The ledger stays the
-- record (audit it with plain SQL); this table is derived from it and always equals
--   select ... from llm_calls group by (started_at at time zone 'UTC')::date, project,
--          mr_iid, model, purpose
-- (a test checks that after inserts, updates and deletes; a group whose calls were all
-- deleted keeps a row of zeros, which readers skip with `calls > 0`). Costs are not stored: prices are
-- applied when read, so editing model_prices re-prices history as the llm_call_costs view
-- does.
create table llm_usage_daily (
    -- The UTC date of the calls' started_at (the daily token budget's day too).
    day               date not null,
    project           text not null,
    mr_iid            bigint not null,
    model             text not null,
    purpose           text not null,
    calls             bigint not null,
    failed_calls      bigint not null,
    prompt_tokens     bigint not null,
    completion_tokens bigint not null,
    total_tokens      bigint not null,
    cached_tokens     bigint not null,
    primary key (day, project, mr_iid, model, purpose)
);

-- Adds the statement's changed rows (new rows count +1, old rows -1) to their groups.
-- Statement-level, over transition tables: a bulk insert of a million calls is one grouped
-- upsert, not a million. Groups are upserted in key order so that two statements never
-- lock the same groups in opposite orders.
create function llm_usage_rollup() returns trigger language plpgsql as $fn$
begin
    execute format($q$
        insert into llm_usage_daily as u (day, project, mr_iid, model, purpose, calls,
            failed_calls, prompt_tokens, completion_tokens, total_tokens, cached_tokens)
        select * from (
            select (started_at at time zone 'UTC')::date as day, project, mr_iid, model,
                   purpose, sum(sign) as calls,
                   sum(case when status = 'error' then sign else 0 end) as failed_calls,
                   sum(sign * coalesce(prompt_tokens, 0)) as prompt_tokens,
                   sum(sign * coalesce(completion_tokens, 0)) as completion_tokens,
                   sum(sign * coalesce(total_tokens, 0)) as total_tokens,
                   sum(sign * coalesce(cached_tokens, 0)) as cached_tokens
            from (%s) changed
            group by 1, 2, 3, 4, 5
        ) delta
        -- An update that changed nothing counted (finished_at alone, say) writes nothing.
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
        $q$,
        case tg_op
            when 'INSERT' then 'select 1 as sign, * from new_rows'
            when 'UPDATE' then 'select 1 as sign, * from new_rows union all select -1, * from old_rows'
            else 'select -1 as sign, * from old_rows'
        end);
    return null;
end
$fn$;

-- A trigger with transition tables takes one event, hence three.
create trigger llm_usage_on_insert after insert on llm_calls
    referencing new table as new_rows for each statement execute function llm_usage_rollup();
create trigger llm_usage_on_update after update on llm_calls
    referencing old table as old_rows new table as new_rows
    for each statement execute function llm_usage_rollup();
create trigger llm_usage_on_delete after delete on llm_calls
    referencing old table as old_rows for each statement execute function llm_usage_rollup();

-- The ledger so far. The triggers above were created first in this transaction, which holds
-- llm_calls locked against writes until it commits, so no call is counted twice or missed.
insert into llm_usage_daily
select (started_at at time zone 'UTC')::date, project, mr_iid, model, purpose, count(*),
       count(*) filter (where status = 'error'), coalesce(sum(prompt_tokens), 0),
       coalesce(sum(completion_tokens), 0), coalesce(sum(total_tokens), 0),
       coalesce(sum(cached_tokens), 0)
from llm_calls
group by 1, 2, 3, 4, 5;

-- The audit view's days are UTC days too, like the report's and the daily budget's (they
-- were the session time zone's, which is UTC unless the server is configured otherwise).
create or replace view llm_spend_daily as
select (started_at at time zone 'UTC')::date as day, model,
       count(*) as calls, count(*) filter (where status = 'error') as failed_calls,
       sum(prompt_tokens) as prompt_tokens, sum(completion_tokens) as completion_tokens,
       sum(total_tokens) as total_tokens, sum(cost_usd) as cost_usd
from llm_call_costs group by 1, 2;
