-- Fleet-wide request budgets for outside services, generic to the queue (`queue::rate`):
-- at most `per_minute` requests in any minute across every worker process, and a shared
-- pause when the service answered "slow down" (an HTTP 429 and its Retry-After).

-- One row per named resource (`gitlab`).
create table rate_limits (
    resource      text primary key,
    -- Requests allowed per minute; null: no cap (only the pause applies).
    per_minute    integer check (per_minute > 0),
    -- No request starts before this (the service's Retry-After, shared by the fleet).
    paused_until  timestamptz,
    -- What the service said, for `status` and `/metrics`.
    pause_reason  text,
    -- When the current run of pauses began.
    paused_since  timestamptz,
    -- Set by a pause, cleared by the first request that is not throttled again: when the
    -- pause ends, one request (the probe) goes first and the others wait for its answer, so
    -- a fleet does not hit a still-throttling service with every waiting request at once.
    probing       boolean not null default false,
    -- While probing: the probe in flight holds the others back until this (a probe whose
    -- worker died frees the turn when it lapses).
    probe_until   timestamptz
);

-- `per_minute` rows per capped resource, each the time a request last started on it. A
-- request takes the row used longest ago, if that was over a minute ago (SKIP LOCKED, like
-- `limit_slots`): exact under any concurrency, and never more than `per_minute` starts in
-- any minute.
create table rate_slots (
    resource  text not null references rate_limits on delete cascade,
    slot      integer not null check (slot >= 0),
    used_at   timestamptz not null default '1970-01-01 00:00:00+00',
    primary key (resource, slot)
) with (fillfactor = 50);
