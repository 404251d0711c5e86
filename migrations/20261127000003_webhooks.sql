-- Webhook deliveries already acted on, so that a redelivery (GitLab retries a hook it
-- thinks failed, with the same Idempotency-Key) enqueues nothing. The row is written in the
-- same transaction as the job it caused: both exist or neither does.
--
-- `key` is the delivery's `Idempotency-Key` (GitLab 17.4+) prefixed `idem:`, or its
-- `X-Gitlab-Event-UUID` (older GitLab) prefixed `event:`. `job_id` has no foreign key:
-- finished jobs are pruned, deliveries are kept as the record of what GitLab sent.
create table webhook_deliveries (
    key          text primary key check (key <> ''),
    received_at  timestamptz not null default now(),
    job_id       bigint
);
create index webhook_deliveries_received_at on webhook_deliveries (received_at);
