-- Merge request descriptions written by reviewq (the `describe` job), and what each LLM call
-- was for.

-- What an LLM call was for: a review chunk (every row before this migration), an MR
-- description, or (later) a reply in a conversation. `review_type` keeps its meaning for
-- reviews; describe calls write 'describe' there too.
alter table llm_calls add column purpose text not null default 'review'
    check (purpose in ('review', 'describe', 'conversation'));

-- The cost view gains the purpose as its last column (`create or replace` may only append);
-- every other column, and every documented view built on it, is unchanged.
create or replace view llm_call_costs as
select c.id, c.job_id, c.job_attempt, c.review_id, c.chunk_index, c.project, c.mr_iid,
       c.head_sha, c.review_type, c.model, c.status, c.http_status, c.error_code,
       c.error_message, c.finish_reason, c.prompt_tokens, c.completion_tokens, c.total_tokens,
       c.cached_tokens, c.started_at, c.finished_at,
       (coalesce(c.prompt_tokens, 0) - coalesce(c.cached_tokens, 0)) * p.input_usd_per_mtok / 1e6
     + coalesce(c.cached_tokens, 0) * coalesce(p.cached_usd_per_mtok, p.input_usd_per_mtok) / 1e6
     + coalesce(c.completion_tokens, 0) * p.output_usd_per_mtok / 1e6 as cost_usd,
       c.purpose
from llm_calls c
left join model_prices p on p.model = c.model;

-- One description of one merge request head: the outbox of the one description edit it
-- makes. No foreign key to jobs (pruned); kept as the audit record like reviews.
create table mr_descriptions (
    id            bigint generated always as identity primary key,
    -- The describe job (a queue row; may be pruned later).
    job_id        bigint not null unique,
    project       text not null,
    mr_iid        bigint not null check (mr_iid > 0),
    -- The diff version described.
    head_sha      text not null,
    -- What the prompts quote, as read when the description was planned: the title, the
    -- author's text (the description without reviewq's block) and the language to write in.
    mr_title      text not null default '',
    author_text   text not null default '',
    language      text,
    -- describing: LLM answers coming in (stored part by part with their usage);
    -- written: the block is in the MR description; skipped: not written, `outcome` says why.
    state         text not null default 'describing'
                  check (state in ('describing', 'written', 'skipped')),
    -- The MR's `updated_at` as last read. The description is written only right after a
    -- read that saw it unchanged, so an author's edit in between is never overwritten.
    seen_updated_at timestamptz,
    -- The changed files for the walkthrough ([{path, change, skipped}]), in GitLab's order.
    files         jsonb not null default '[]'::jsonb,
    part_count    integer not null check (part_count >= 0),
    -- The block as rendered from the answers: what the edit writes between the markers.
    block         text,
    -- Set just before a PUT is sent: its outcome is unknown until recorded, so the next
    -- attempt reads the description and writes only if the block is not there yet.
    attempted_at  timestamptz,
    written_at    timestamptz,
    outcome       text,
    created_at    timestamptz not null default now()
);
create index mr_descriptions_mr on mr_descriptions (project, mr_iid);

-- The LLM answers of a description: one per chunk of the diff, and for a description of
-- several parts one more (index = part_count) merging them. Each answer is stored in the
-- transaction that records its call's usage in llm_calls.
create table mr_description_parts (
    description_id bigint not null references mr_descriptions (id) on delete cascade,
    part_index     integer not null check (part_index >= 0),
    -- The chunk (review::Chunk); null for the merge part.
    chunk          json,
    -- The parsed answer (review::describe::Description).
    answer         jsonb,
    answered_at    timestamptz,
    primary key (description_id, part_index)
);

-- Findings kept for the Code Quality report only (`output = "codequality"`): not posted.
alter table outbox drop constraint outbox_state_check;
alter table outbox add constraint outbox_state_check check (state in (
    'pending', 'posted', 'downgraded', 'dry_run',
    'open', 'dismissed', 'below_threshold', 'over_limit', 'drafted', 'codequality'));
