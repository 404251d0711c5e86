//! Draft notes: invisible until bulk publish, refused positions, and 500s or hangs around
//! storing and publishing.

use std::time::Duration;

use reviewq::{
    disposition::Disposition,
    gitlab::{DiffShas, Error, GitLabClient, GitLabConfig, LineAnchor, Position},
    sim::gitlab::{BOT_USERNAME, GitLabFault, Route, fake_sha},
};
use secrecy::SecretString;
use url::Url;

use super::{PROJECT, fetch, file, four_files, gitlab_with};
use crate::sim::helpers::{TOKEN, gitlab_client, project};

#[tokio::test]
async fn drafts_stay_invisible_until_bulk_publish_turns_them_into_threads_in_order() {
    let gitlab = gitlab_with(four_files()).await;
    let client = gitlab_client(gitlab.base_url(), TOKEN);
    let (diffs, shas) = fetch(&gitlab).await;
    let position = Position::new(
        shas.clone(),
        file(&diffs, "src/app.rs"),
        LineAnchor::Added { new_line: 3 },
    );
    let inline = client
        .create_draft_note(
            &project(PROJECT),
            1,
            "inline <!-- reviewq:f1 -->",
            Some(&position),
        )
        .await
        .expect("draft");
    let overview = client
        .create_draft_note(&project(PROJECT), 1, "overview <!-- reviewq:f2 -->", None)
        .await
        .expect("draft");
    let dropped = client
        .create_draft_note(&project(PROJECT), 1, "dropped <!-- reviewq:f3 -->", None)
        .await
        .expect("draft");
    client
        .delete_draft_note(&project(PROJECT), 1, dropped.id)
        .await
        .expect("deleted");

    let listed = client
        .draft_notes(&project(PROJECT), 1)
        .await
        .expect("drafts");
    assert_eq!(listed, [inline.clone(), overview.clone()]);
    assert_eq!(
        listed[0].diff_position().map(|p| (p.old_line, p.new_line)),
        Some((None, Some(3)))
    );
    assert_eq!(listed[1].diff_position(), None);
    assert!(gitlab.discussions(PROJECT, 1).expect("MR").is_empty());
    assert!(gitlab.marker_counts(PROJECT, 1).expect("MR").is_empty());

    client
        .bulk_publish_draft_notes(&project(PROJECT), 1)
        .await
        .expect("published");

    assert!(
        client
            .draft_notes(&project(PROJECT), 1)
            .await
            .expect("drafts")
            .is_empty()
    );
    let discussions = client
        .discussions(&project(PROJECT), 1)
        .await
        .expect("discussions");
    assert_eq!(discussions.len(), 2);
    let diff_note = &discussions[0].notes[0];
    assert!(diff_note.is_diff_note());
    assert!(diff_note.body.contains("reviewq:f1"));
    assert!(diff_note.resolvable && !diff_note.resolved);
    assert_eq!(
        diff_note.author.as_ref().map(|a| a.username.as_str()),
        Some(BOT_USERNAME)
    );
    let anchor = diff_note.position.as_ref().expect("position");
    assert_eq!(anchor.new_path.as_deref(), Some("src/app.rs"));
    assert_eq!((anchor.old_line, anchor.new_line), (None, Some(3)));
    assert_eq!(anchor.head_sha.as_deref(), Some(shas.head_sha.as_str()));
    let thread = &discussions[1];
    assert!(!thread.individual_note);
    assert_eq!(thread.notes[0].note_type.as_deref(), Some("DiscussionNote"));
    assert!(thread.notes[0].body.contains("reviewq:f2"));
    assert_eq!(gitlab.published_draft_notes(), 2);
    assert_eq!(gitlab.posted_discussions(), 0);
    assert_eq!(gitlab.marker_counts(PROJECT, 1).expect("MR").len(), 2);
    let gone = client
        .delete_draft_note(&project(PROJECT), 1, inline.id)
        .await
        .expect_err("published drafts are gone");
    assert!(matches!(gone, Error::NotFound { .. }), "{gone:?}");
}

#[tokio::test]
async fn an_invalid_draft_position_is_refused_like_a_discussion_and_nothing_is_stored() {
    let gitlab = gitlab_with(four_files()).await;
    let client = gitlab_client(gitlab.base_url(), TOKEN);
    let (diffs, shas) = fetch(&gitlab).await;
    let app = file(&diffs, "src/app.rs");
    let stale = DiffShas {
        head_sha: fake_sha("not the head"),
        ..shas.clone()
    };

    for position in [
        Position::new(shas.clone(), app, LineAnchor::Added { new_line: 50 }),
        Position::new(shas.clone(), app, LineAnchor::Added { new_line: 4 }),
        Position::new(stale, app, LineAnchor::Added { new_line: 2 }),
    ] {
        let error = client
            .create_draft_note(
                &project(PROJECT),
                1,
                "x <!-- reviewq:x -->",
                Some(&position),
            )
            .await
            .expect_err("rejected");
        assert!(
            matches!(&error, Error::PositionRejected { message } if message.contains("line_code")),
            "{position:?}: {error:?}"
        );
        assert_eq!(error.disposition(), Disposition::Fatal);
    }
    assert!(gitlab.draft_notes(PROJECT, 1).expect("MR").is_empty());
    assert_eq!(gitlab.request_count(Route::CreateDraftNote), 3);
}

#[tokio::test]
async fn a_draft_stored_before_a_500_is_found_among_the_drafts_and_is_not_a_comment() {
    let gitlab = gitlab_with(four_files()).await;
    let client = gitlab_client(gitlab.base_url(), TOKEN);
    gitlab.fail_next(
        Route::CreateDraftNote,
        1,
        GitLabFault::ServerErrorAfterStore,
    );
    let marker = "<!-- reviewq:f1 -->";

    let error = client
        .create_draft_note(&project(PROJECT), 1, &format!("finding {marker}"), None)
        .await
        .expect_err("500");

    assert!(
        matches!(&error, Error::OutcomeUnknown { source, .. }
            if matches!(**source, Error::Server { status: 500, .. })),
        "{error:?}"
    );
    assert_eq!(error.disposition(), Disposition::Retry);
    let drafts = client
        .draft_notes(&project(PROJECT), 1)
        .await
        .expect("drafts");
    assert_eq!(drafts.len(), 1);
    assert!(drafts[0].note.contains(marker));
    assert!(gitlab.marker_counts(PROJECT, 1).expect("MR").is_empty());
}

#[tokio::test]
async fn a_500_after_bulk_publish_leaves_the_drafts_published_and_a_retry_publishes_nothing_twice()
{
    let gitlab = gitlab_with(four_files()).await;
    let client = gitlab_client(gitlab.base_url(), TOKEN);
    for n in 1..=2 {
        client
            .create_draft_note(
                &project(PROJECT),
                1,
                &format!("finding <!-- reviewq:f{n} -->"),
                None,
            )
            .await
            .expect("draft");
    }
    gitlab.fail_next(
        Route::BulkPublishDraftNotes,
        1,
        GitLabFault::ServerErrorAfterStore,
    );

    let error = client
        .bulk_publish_draft_notes(&project(PROJECT), 1)
        .await
        .expect_err("500");

    assert!(
        matches!(error, Error::Server { status: 500, .. }),
        "{error:?}"
    );
    assert_eq!(error.disposition(), Disposition::Retry);
    assert!(
        client
            .draft_notes(&project(PROJECT), 1)
            .await
            .expect("drafts")
            .is_empty()
    );
    let discussions = client
        .discussions(&project(PROJECT), 1)
        .await
        .expect("discussions");
    assert_eq!(discussions.len(), 2);
    assert!(discussions[1].notes[0].body.contains("reviewq:f2"));
    // Nothing is pending, so the retry succeeds without posting anything again.
    client
        .bulk_publish_draft_notes(&project(PROJECT), 1)
        .await
        .expect("retry");
    assert_eq!(gitlab.discussions(PROJECT, 1).expect("MR").len(), 2);
    assert_eq!(gitlab.duplicate_count(PROJECT, 1).expect("MR"), 0);
    assert_eq!(gitlab.published_draft_notes(), 2);
}

#[tokio::test]
async fn a_bulk_publish_that_hangs_after_publishing_times_out_with_the_work_done() {
    let gitlab = gitlab_with(four_files()).await;
    let mut config = GitLabConfig::new(
        Url::parse(gitlab.base_url()).expect("sim URL"),
        SecretString::from(TOKEN),
    );
    config.timeout = Duration::from_millis(300);
    config.retry_for = Duration::ZERO;
    let client = GitLabClient::new(config).expect("client");
    client
        .create_draft_note(&project(PROJECT), 1, "finding <!-- reviewq:f1 -->", None)
        .await
        .expect("draft");
    gitlab.fail_next(
        Route::BulkPublishDraftNotes,
        1,
        GitLabFault::StoreThenHang(Duration::from_secs(5)),
    );

    let error = client
        .bulk_publish_draft_notes(&project(PROJECT), 1)
        .await
        .expect_err("timeout");

    assert!(matches!(error, Error::Timeout { .. }), "{error:?}");
    assert!(gitlab.draft_notes(PROJECT, 1).expect("MR").is_empty());
    assert_eq!(gitlab.discussions(PROJECT, 1).expect("MR").len(), 1);
}
