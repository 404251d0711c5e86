-- Conversations: what reviewq did with each comment people wrote on a merge request (a reply
-- in one of its threads, or a note that mentions the bot), and the merge requests whose
-- push-triggered reviews people paused.

-- One row per triggering note: the outbox of everything reviewq does about it on GitLab. The
-- key is the note id (GitLab note ids are instance-wide); the reply carries it in its hidden
-- marker, so a retried job finds its reply on GitLab before posting again. No foreign key to
-- jobs (pruned): like reviews, this is the audit record.
create table conversations (
    note_id         bigint primary key check (note_id > 0),
    project         text not null,
    mr_iid          bigint not null check (mr_iid > 0),
    -- The thread the note is in (overview notes have one of their own).
    discussion_id   text not null,
    author_id       bigint not null,
    author_username text not null,
    -- What the note asks for (`review::conversation::Intent`).
    intent          text not null check (intent in (
        'resolve', 'dismiss', 'question', 'review', 'full_review', 'pause', 'resume',
        'resolve_all', 'help')),
    -- acting: being handled; answered: done (with a reply unless the intent is resolve);
    -- refused: the author's role is below the minimum; limited: over the question rate.
    state           text not null default 'acting'
                    check (state in ('acting', 'answered', 'refused', 'limited')),
    -- The reply as rendered (marker included) before it is posted, and the note it became.
    reply           text,
    reply_note_id   bigint,
    -- The job (and attempt) that acted on it.
    job_id          bigint not null,
    job_attempt     integer not null,
    created_at      timestamptz not null default now(),
    finished_at     timestamptz,
    check ((state = 'acting') = (finished_at is null))
);

-- The rate limits count an author's and a merge request's recent questions.
create index conversations_by_author on conversations (author_id, created_at);
create index conversations_by_mr on conversations (project, mr_iid, created_at);

-- Merge requests whose reviews on push are paused (`@bot pause`) until `@bot resume`.
create table mr_pauses (
    project     text not null,
    mr_iid      bigint not null check (mr_iid > 0),
    paused_by   text not null,
    -- The note that asked for it.
    note_id     bigint not null,
    paused_at   timestamptz not null default now(),
    primary key (project, mr_iid)
);
