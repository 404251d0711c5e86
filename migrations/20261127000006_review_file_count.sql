-- How many files a review round sent to the model, kept on the round itself. The living
-- summary lists every round with its file count; counting them from the stored chunks meant
-- parsing every round's chunk JSON (about 1 MB for a 60-chunk MR) each time a summary was
-- written.
alter table reviews add column file_count integer check (file_count >= 0);

-- Earlier rounds, counted once from their chunks.
update reviews r set file_count = (
    select count(distinct f->>'new_path')
    from review_chunks c, json_array_elements(c.chunk->'files') f
    where c.review_id = r.id and not c.superseded
);

alter table reviews alter column file_count set default 0,
    alter column file_count set not null;
