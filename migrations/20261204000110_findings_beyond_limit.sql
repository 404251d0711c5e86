-- Findings an answer held beyond the per-answer hard limit (a runaway answer), counted apart
-- from `dropped_findings` (entries that could not be read) so the summary names each truly.
alter table review_chunks add column findings_beyond_limit integer not null default 0
    check (findings_beyond_limit >= 0);
