//! Notes and threads: a write answered with a 500 after it was stored, notes listed across
//! pages, edits, resolving, plain threads, and human replies read back.

use reviewq::{
    disposition::Disposition,
    gitlab::{Error, LineAnchor, Position},
    sim::{
        self,
        gitlab::{GitLabFault, Route},
    },
};

use super::{PROJECT, fetch, file, four_files, gitlab_with};
use crate::sim::helpers::{TOKEN, gitlab_client, project};

#[tokio::test]
async fn a_500_after_storing_leaves_the_note_stored_and_findable_by_its_marker() {
    let gitlab = gitlab_with(four_files()).await;
    let client = gitlab_client(gitlab.base_url(), TOKEN);
    gitlab.fail_next(Route::CreateNote, 1, GitLabFault::ServerErrorAfterStore);
    let marker = "<!-- reviewq:summary mr=1 -->";

    let error = client
        .post_note(&project(PROJECT), 1, &format!("Summary\n{marker}"))
        .await
        .expect_err("500");

    assert!(
        matches!(&error, Error::OutcomeUnknown { source, .. }
            if matches!(**source, Error::Server { status: 500, .. })),
        "{error:?}"
    );
    assert_eq!(error.disposition(), Disposition::Retry);
    assert_eq!(gitlab.posted_notes(), 1);
    let notes = client.notes(&project(PROJECT), 1).await.expect("notes");
    assert!(notes.iter().any(|n| n.body.contains(marker)));
    assert_eq!(gitlab.duplicate_count(PROJECT, 1).expect("MR"), 0);
}

#[tokio::test]
async fn a_500_after_storing_a_discussion_leaves_the_diff_note_stored() {
    let gitlab = gitlab_with(four_files()).await;
    let client = gitlab_client(gitlab.base_url(), TOKEN);
    let (diffs, shas) = fetch(&gitlab).await;
    let position = Position::new(
        shas,
        file(&diffs, "src/new.rs"),
        LineAnchor::Added { new_line: 1 },
    );
    gitlab.fail_next(
        Route::CreateDiscussion,
        1,
        GitLabFault::ServerErrorAfterStore,
    );

    let first = client
        .post_discussion(&project(PROJECT), 1, "f <!-- reviewq:f1 -->", &position)
        .await;
    // A careless retry posts it again: the duplicate counter sees it.
    let second = client
        .post_discussion(&project(PROJECT), 1, "f <!-- reviewq:f1 -->", &position)
        .await;

    assert!(
        matches!(&first, Err(Error::OutcomeUnknown { source, .. })
            if matches!(**source, Error::Server { status: 500, .. })),
        "{first:?}"
    );
    assert!(second.is_ok());
    let discussions = client
        .discussions(&project(PROJECT), 1)
        .await
        .expect("list");
    assert_eq!(discussions.len(), 2);
    assert!(discussions.iter().all(|d| d.notes[0].is_diff_note()));
    assert_eq!(gitlab.duplicate_count(PROJECT, 1).expect("MR"), 1);
    assert_eq!(gitlab.total_duplicate_count(), 1);
}

#[tokio::test]
async fn notes_are_listed_oldest_first_across_pages_and_system_notes_are_marked() {
    let gitlab = gitlab_with(four_files()).await;
    let client = gitlab_client(gitlab.base_url(), TOKEN);
    gitlab
        .seed_note(PROJECT, 1, "Administrator", "added 1 commit", true)
        .expect("MR");
    for n in 0..104 {
        client
            .post_note(
                &project(PROJECT),
                1,
                &format!("note {n} <!-- reviewq:n{n} -->"),
            )
            .await
            .expect("post");
    }

    let notes = client.notes(&project(PROJECT), 1).await.expect("notes");

    assert_eq!(notes.len(), 105);
    assert!(notes[0].system);
    assert!(notes[1].body.starts_with("note 0 "));
    assert!(notes[104].body.starts_with("note 103 "));
    assert_eq!(gitlab.request_count(Route::ListNotes), 2);
    let discussions = client
        .discussions(&project(PROJECT), 1)
        .await
        .expect("discussions");
    assert_eq!(discussions.len(), 105);
    assert!(discussions.iter().all(|d| d.individual_note));
    assert_eq!(gitlab.posted_notes(), 104);
}

#[tokio::test]
async fn a_note_is_edited_in_place_and_a_thread_can_be_resolved() {
    let gitlab = gitlab_with(four_files()).await;
    let client = gitlab_client(gitlab.base_url(), TOKEN);
    let (diffs, shas) = fetch(&gitlab).await;
    let summary = client
        .post_note(&project(PROJECT), 1, "draft")
        .await
        .expect("note");
    let position = Position::new(
        shas,
        file(&diffs, "src/app.rs"),
        LineAnchor::Added { new_line: 3 },
    );
    let thread = client
        .post_discussion(&project(PROJECT), 1, "inline", &position)
        .await
        .expect("discussion");

    let edited = client
        .update_note(&project(PROJECT), 1, summary.id, "final")
        .await
        .expect("edit");
    let resolved = client
        .resolve_discussion(&project(PROJECT), 1, &thread.discussion_id, true)
        .await
        .expect("resolve");

    assert_eq!(edited.id, summary.id);
    assert_eq!(edited.body, "final");
    assert!(resolved.notes[0].resolved);
    let notes = gitlab.notes(PROJECT, 1).expect("MR");
    assert_eq!(notes.len(), 2);
    assert_eq!(notes[0].body, "final");
    let missing = client
        .update_note(&project(PROJECT), 1, 999_999, "x")
        .await
        .expect_err("404");
    assert!(matches!(missing, Error::NotFound { .. }), "{missing:?}");
}

#[tokio::test]
async fn a_plain_thread_instead_of_an_inline_one_is_reported_as_not_diff_note() {
    let gitlab = gitlab_with(four_files()).await;
    let client = gitlab_client(gitlab.base_url(), TOKEN);
    let (diffs, shas) = fetch(&gitlab).await;
    let position = Position::new(
        shas,
        file(&diffs, "src/app.rs"),
        LineAnchor::Added { new_line: 2 },
    );
    gitlab.fail_next(Route::CreateDiscussion, 1, GitLabFault::NotInline);

    let error = client
        .post_discussion(&project(PROJECT), 1, "x", &position)
        .await
        .expect_err("not inline");

    assert!(
        matches!(&error, Error::NotDiffNote { note_type: Some(t), .. } if t == "DiscussionNote"),
        "{error:?}"
    );
    assert_eq!(gitlab.discussions(PROJECT, 1).expect("MR").len(), 1);
}

#[tokio::test]
async fn a_human_reply_and_resolution_in_a_bot_thread_are_read_back_with_author_and_state() {
    let gitlab = gitlab_with(four_files()).await;
    let client = gitlab_client(gitlab.base_url(), TOKEN);
    let (diffs, shas) = fetch(&gitlab).await;
    let position = Position::new(
        shas,
        file(&diffs, "src/app.rs"),
        LineAnchor::Added { new_line: 2 },
    );
    let thread = client
        .post_discussion(
            &project(PROJECT),
            1,
            "finding <!-- reviewq:f1 -->",
            &position,
        )
        .await
        .expect("posted");
    let summary = client
        .post_note(&project(PROJECT), 1, "summary <!-- reviewq:summary -->")
        .await
        .expect("posted");
    let summary_thread = gitlab.discussions(PROJECT, 1).expect("MR")[1].id.clone();

    gitlab
        .seed_reply(PROJECT, 1, &thread.discussion_id, "alice", "Fixed, thanks.")
        .expect("reply");
    gitlab
        .set_discussion_resolved(PROJECT, 1, &thread.discussion_id, true)
        .expect("resolve");
    gitlab
        .seed_reply(PROJECT, 1, &summary_thread, "bob", "Why?")
        .expect("reply");
    let missing = gitlab.seed_reply(PROJECT, 1, "nope", "alice", "x");

    let discussions = client
        .discussions(&project(PROJECT), 1)
        .await
        .expect("discussions");
    let notes = &discussions[0].notes;
    assert_eq!(notes.len(), 2);
    assert_eq!(
        notes[1].author.as_ref().map(|a| a.username.as_str()),
        Some("alice")
    );
    assert_eq!(notes[1].body, "Fixed, thanks.");
    assert!(notes[1].is_diff_note() && !notes[1].system);
    assert_eq!(notes[1].position, notes[0].position);
    assert!(notes.iter().all(|n| n.resolvable && n.resolved));
    // A reply turns an overview note into a resolvable thread.
    let summary_notes = &discussions[1].notes;
    assert!(!discussions[1].individual_note);
    assert_eq!(summary_notes[0].id, summary.id);
    assert_eq!(
        summary_notes[0].note_type.as_deref(),
        Some("DiscussionNote")
    );
    assert!(summary_notes.iter().all(|n| n.resolvable && !n.resolved));
    assert!(
        matches!(missing, Err(sim::Error::UnknownDiscussion { .. })),
        "{missing:?}"
    );
}
