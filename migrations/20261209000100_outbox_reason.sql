-- One column per meaning. A finding listed in the summary because it has no line to anchor
-- to kept that reason (review::UnanchoredReason, as JSON text) in `body`, the column that
-- holds the Markdown comment on every other row. The reason moves to a jsonb column of its
-- own, and `body` is null exactly on those rows.
alter table outbox add column unanchored_reason jsonb;
alter table outbox alter column body drop not null;

-- A reason an older version wrote that is not JSON becomes null (read as "unknown path"),
-- rather than failing the migration on a production database.
create function pg_temp.as_jsonb(text) returns jsonb language plpgsql immutable as $$
begin
    return $1::jsonb;
exception when others then
    return null;
end $$;

update outbox set unanchored_reason = pg_temp.as_jsonb(body), body = null
where kind = 'summary' and key <> 'summary';

alter table outbox add constraint outbox_body_or_reason check (
    (kind = 'summary' and key <> 'summary') = (body is null)
    and (unanchored_reason is null or (kind = 'summary' and key <> 'summary')));
