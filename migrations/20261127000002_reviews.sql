-- The review pipeline's tables: reviews, their chunks, the comment outbox, and the LLM
-- spend ledger with its audit views. Queue rows (jobs) are pruned after a retention
-- period; nothing here references them with a foreign key, so the audit record outlives
-- them (see docs/ARCHITECTURE.md, "Retention").

-- One review of one merge request head commit with one review type.
create table reviews (
    id            bigint generated always as identity primary key,
    -- The review job (a queue row; may be pruned later).
    job_id        bigint not null unique,
    project       text not null,
    mr_iid        bigint not null check (mr_iid > 0),
    review_type   text not null check (review_type in ('general', 'security', 'performance')),
    dry_run       boolean not null,
    -- The diff version reviewed: every inline position uses these SHAs.
    head_sha      text not null,
    base_sha      text not null,
    start_sha     text not null,
    mr_title      text not null default '',
    mr_description text not null default '',
    -- reviewing: chunk jobs running (the row and its chunks are created in one
    -- transaction); posting: comments going out through the outbox; done: summary posted.
    state         text not null default 'reviewing'
                  check (state in ('reviewing', 'posting', 'done')),
    -- Files not reviewed and why ([{path, reason}]), for the summary.
    skipped       jsonb not null default '[]'::jsonb,
    chunk_count   integer not null default 0,
    created_at    timestamptz not null default now(),
    finished_at   timestamptz
);
-- "Was this head already reviewed?" (skip unless --force).
create index reviews_head on reviews (project, mr_iid, head_sha, review_type) where state = 'done' and not dry_run;

-- One prompt's worth of the diff, reviewed by one chunk job.
create table review_chunks (
    review_id     bigint not null references reviews (id) on delete cascade,
    chunk_index   integer not null check (chunk_index >= 0),
    -- The chunk job (a queue row).
    job_id        bigint not null unique,
    -- The files and hunks in this chunk (review::Chunk). `json`, not `jsonb`: it is only
    -- ever read back whole, and storing text skips parsing a large document on insert.
    chunk         json not null,
    -- Filled when the chunk job succeeds, in the same transaction as its completion.
    summary       text,
    findings      jsonb,
    dropped_findings integer,
    -- The model found the chunk too big; it was split into new chunks (later indexes).
    superseded    boolean not null default false,
    finished_at   timestamptz,
    primary key (review_id, chunk_index)
);

-- The comment outbox: every comment a review will post, keyed by a stable finding key, so
-- that a retried or re-run review posts each comment at most once.
create table outbox (
    review_id     bigint not null references reviews (id) on delete cascade,
    -- The finding key, or 'summary' for the summary note.
    key           text not null,
    kind          text not null check (kind in ('inline', 'summary')),
    severity      text,
    -- The finding as the model gave it (for the summary if the inline post is refused).
    finding       jsonb,
    -- GitLab's position fields (old_path, new_path, old_line, new_line) for inline comments.
    position      jsonb,
    body          text not null,
    -- pending: not posted yet; posted: GitLab has it (ids below); downgraded: GitLab refused
    -- the position, so the finding is listed in the summary; dry_run: never to be posted.
    state         text not null default 'pending'
                  check (state in ('pending', 'posted', 'downgraded', 'dry_run')),
    -- Set just before a POST is sent. A pending row with this set has an unknown outcome:
    -- the marker is looked up on GitLab before it is posted again.
    attempted_at  timestamptz,
    gitlab_note_id bigint,
    gitlab_discussion_id text,
    error         text,
    posted_at     timestamptz,
    created_at    timestamptz not null default now(),
    primary key (review_id, key)
);

-- One row for every HTTP request sent to the LLM, failed and retried ones included.
-- Inserted ('started') before the request; updated with what the provider reported.
-- A row left 'started' is a call cut off by a crash: it was sent, its usage is unknown.
create table llm_calls (
    id                bigint generated always as identity primary key,
    job_id            bigint not null,
    job_attempt       integer not null,
    review_id         bigint,
    chunk_index       integer,
    project           text not null,
    mr_iid            bigint not null,
    head_sha          text not null,
    review_type       text not null,
    model             text not null,
    -- started | ok | error
    status            text not null default 'started' check (status in ('started', 'ok', 'error')),
    http_status       integer,
    -- The provider's business code (GLM "1302") or error type.
    error_code        text,
    error_message     text,
    finish_reason     text,
    prompt_tokens     bigint,
    completion_tokens bigint,
    total_tokens      bigint,
    cached_tokens     bigint,
    started_at        timestamptz not null default now(),
    finished_at       timestamptz
);
create index llm_calls_started_at on llm_calls (started_at);
create index llm_calls_mr on llm_calls (project, mr_iid);

-- Prices per million tokens. Seeded with published list prices; the operator may edit it.
create table model_prices (
    model                 text primary key,
    input_usd_per_mtok    numeric(12, 6) not null,
    cached_usd_per_mtok   numeric(12, 6),
    output_usd_per_mtok   numeric(12, 6) not null,
    source                text not null,
    as_of                 date not null
);
insert into model_prices values
    ('glm-4.6', 0.60, 0.11, 2.20, 'Z.ai list price (docs.z.ai/guides/overview/pricing)', '2026-11-01'),
    ('glm-4.7', 0.60, 0.11, 2.20, 'Z.ai list price (docs.z.ai/guides/overview/pricing)', '2026-11-01'),
    ('glm-4.5', 0.60, 0.11, 2.20, 'Z.ai list price (docs.z.ai/guides/overview/pricing)', '2026-11-01'),
    ('glm-4.5-air', 0.20, 0.03, 1.10, 'Z.ai list price (unconfirmed)', '2026-11-01'),
    ('glm-4.5-flash', 0, 0, 0, 'Z.ai: free, rate-limited', '2026-11-01'),
    ('glm-5', 1.00, 0.20, 3.20, 'Z.ai list price', '2026-11-01');

-- Every call with its cost where the model's price is known (cached input, when reported,
-- is billed at the cached rate).
create view llm_call_costs as
select c.*,
       (coalesce(c.prompt_tokens, 0) - coalesce(c.cached_tokens, 0)) * p.input_usd_per_mtok / 1e6
     + coalesce(c.cached_tokens, 0) * coalesce(p.cached_usd_per_mtok, p.input_usd_per_mtok) / 1e6
     + coalesce(c.completion_tokens, 0) * p.output_usd_per_mtok / 1e6 as cost_usd
from llm_calls c
left join model_prices p on p.model = c.model;

create view llm_spend_daily as
select date_trunc('day', started_at)::date as day, model,
       count(*) as calls, count(*) filter (where status = 'error') as failed_calls,
       sum(prompt_tokens) as prompt_tokens, sum(completion_tokens) as completion_tokens,
       sum(total_tokens) as total_tokens, sum(cost_usd) as cost_usd
from llm_call_costs group by 1, 2;

create view llm_spend_by_project as
select project, count(*) as calls, sum(prompt_tokens) as prompt_tokens,
       sum(completion_tokens) as completion_tokens, sum(total_tokens) as total_tokens,
       sum(cost_usd) as cost_usd
from llm_call_costs group by 1;

create view llm_spend_by_mr as
select project, mr_iid, count(*) as calls, count(distinct head_sha) as heads_reviewed,
       sum(prompt_tokens) as prompt_tokens, sum(completion_tokens) as completion_tokens,
       sum(total_tokens) as total_tokens, sum(cost_usd) as cost_usd
from llm_call_costs group by 1, 2;

create view llm_spend_by_model as
select model, count(*) as calls, sum(prompt_tokens) as prompt_tokens,
       sum(completion_tokens) as completion_tokens, sum(total_tokens) as total_tokens,
       sum(cost_usd) as cost_usd
from llm_call_costs group by 1;
