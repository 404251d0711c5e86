-- Spend control: jobs that wait for a reason (not an error), per-project daily token
-- budgets, and the fleet-wide pause of LLM work when the provider says the account is
-- out of balance or over its quota.

-- Why a queued job is not running although it could be claimed: set by a handler that
-- chose to wait (`Queue::wait`), cleared by the next claim. Generic to the queue:
-- {"key": "<what would wake it>", "reason": "<for people>", "since": "<timestamp>"}.
-- Waiting never counts against max_attempts.
alter table jobs add column waiting jsonb;

-- Operator-set daily token budgets per project (the fleet-wide one is
-- REVIEWQ_DAILY_TOKEN_BUDGET). A day is a UTC calendar day of llm_calls.started_at.
create table project_budgets (
    -- The project as jobs name it (`group/project` or its numeric id).
    project       text primary key,
    daily_tokens  bigint not null check (daily_tokens >= 0),
    updated_at    timestamptz not null default now()
);

-- At most one row: LLM work is paused fleet-wide. Written when the provider answers with
-- an out-of-balance or quota code (GLM 1113, 1304, 1308, 1310); deleted when a probe call
-- succeeds. While it exists no LLM call starts except the one probe due at probe_at.
create table llm_pause (
    singleton     boolean primary key default true check (singleton),
    -- What the provider said, for status and the waiting jobs.
    reason        text not null,
    -- The provider's business code (e.g. "1113").
    code          text,
    since         timestamptz not null default now(),
    -- When the next probe call may start; one worker takes it by moving this forward.
    probe_at      timestamptz not null,
    -- Probe calls made so far in this pause (each is a normal ledger row too).
    probes        integer not null default 0
);
