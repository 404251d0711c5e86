-- Reviews teams keep switched on: incremental rounds, one living summary note per merge
-- request and review type, per-project settings, findings kept back or already open.

-- What a review round covered.
alter table reviews
    -- full: the whole MR diff; incremental: only the hunks changed since since_sha.
    add column scope text not null default 'full' check (scope in ('full', 'incremental')),
    -- The head of the previous review this round builds on (incremental rounds).
    add column since_sha text,
    -- Why a `.reviewq.toml` (or the operator's override) was not used, for the summary.
    add column settings_problem text,
    -- The settings this review used (language, instructions, thresholds), as resolved at
    -- planning time, so that every chunk job renders its prompt the same way.
    add column settings jsonb not null default '{}'::jsonb;

-- The one summary note per merge request and review type, edited in place every round.
create table mr_summaries (
    project       text not null,
    mr_iid        bigint not null,
    review_type   text not null,
    gitlab_note_id bigint not null,
    updated_at    timestamptz not null default now(),
    primary key (project, mr_iid, review_type)
);

-- Operator overrides of a project's `.reviewq.toml`, key by key (the same keys).
create table project_settings (
    project       text primary key,
    overrides     jsonb not null check (jsonb_typeof(overrides) = 'object'),
    updated_at    timestamptz not null default now()
);

-- New outbox states: a finding that is still open from an earlier round at the same code
-- (open), one a person dismissed ("won't fix") in an earlier round (dismissed), one below
-- the project's minimum severity (below_threshold), one over the per-round inline limit
-- (over_limit, listed in the summary instead), and an inline comment staged as a GitLab
-- draft note awaiting the one bulk publish (drafted).
alter table outbox drop constraint outbox_state_check;
alter table outbox add constraint outbox_state_check check (state in (
    'pending', 'posted', 'downgraded', 'dry_run',
    'open', 'dismissed', 'below_threshold', 'over_limit', 'drafted'));
alter table outbox
    -- The head-independent finding fingerprint (review::Fingerprint), to recognise the
    -- same finding in later rounds.
    add column fingerprint text,
    -- The draft note holding this comment while it waits for the bulk publish.
    add column gitlab_draft_id bigint;

-- Each round's tokens and cost for the living summary are read by review.
create index llm_calls_review on llm_calls (review_id) where review_id is not null;
