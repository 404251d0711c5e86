//! The connection to Postgres itself.

use std::os::fd::{BorrowedFd, RawFd};

use reviewq::config::DbArgs;
use socket2::SockRef;
use sqlx::PgPool;

use crate::support::url_of;

/// Nagle's algorithm holds the tail of any statement longer than one TCP segment until
/// the server acknowledges what came before, and servers delay that acknowledgement by
/// 40 ms or more. sqlx 0.9.0 stopped disabling it (see `vendor/README.md`); this pins the
/// patch, and fails the day an upgrade drops it again.
#[sqlx::test]
async fn every_tcp_connection_to_postgres_disables_nagles_algorithm(pool: PgPool) {
    let url = url_of(&pool);
    let port = pool.connect_options().get_port();
    let db = DbArgs {
        database_url: Some(url),
        db_pool_size: None,
    };
    // reviewq's own pool, as a worker opens it, with a connection held while we look.
    let ours = db.pool(4).await.unwrap();
    let _held = ours.acquire().await.unwrap();

    let mut connections = 0;
    for entry in std::fs::read_dir("/proc/self/fd").unwrap() {
        let Ok(fd) = entry
            .unwrap()
            .file_name()
            .to_string_lossy()
            .parse::<RawFd>()
        else {
            continue;
        };
        // SAFETY: only read-only socket options are queried. Tests running in parallel may
        // close this descriptor (or reuse its number) meanwhile; the calls then fail or
        // read another socket's options, which the peer-port filter rejects.
        let fd = unsafe { BorrowedFd::borrow_raw(fd) };
        let socket = SockRef::from(&fd);
        let Some(peer) = socket.peer_addr().ok().and_then(|a| a.as_socket()) else {
            continue;
        };
        if peer.port() != port {
            continue;
        }
        connections += 1;
        if socket.tcp_nodelay().unwrap_or(true) {
            continue;
        }
        // Another test's connection may be caught between its connect() and its
        // setsockopt(): look again a moment later, at the same socket (same local address).
        let local = socket.local_addr().ok().and_then(|a| a.as_socket());
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        let same = socket.local_addr().ok().and_then(|a| a.as_socket()) == local;
        assert!(
            !same || socket.tcp_nodelay().unwrap_or(true),
            "the connection to {peer} leaves Nagle's algorithm on"
        );
    }
    assert!(
        connections >= 1,
        "no TCP connection to Postgres port {port} was found in /proc/self/fd"
    );
}

/// The outbox migration that gave the summary's "why no line" its own column, applied to a
/// database written by the version before it.
#[sqlx::test(migrations = false)]
async fn an_older_outbox_keeps_each_listed_findings_reason_in_its_own_column(pool: PgPool) {
    const SPLIT: i64 = 20_261_209_000_100;
    let mut conn = pool.acquire().await.unwrap();
    let apply = |after: i64, before: i64| {
        reviewq::MIGRATOR
            .iter()
            .filter(move |m| m.version >= after && m.version < before)
            .map(|m| m.sql.clone())
    };
    for sql in apply(0, SPLIT) {
        sqlx::raw_sql(sql).execute(&mut *conn).await.unwrap();
    }
    sqlx::raw_sql(
        r#"insert into reviews (job_id, project, mr_iid, review_type, dry_run, head_sha,
               base_sha, start_sha, state, chunk_count)
             values (1, 'g/p', 1, 'general', false, repeat('a', 40), 'b', 's', 'done', 1);
           insert into outbox (review_id, key, kind, body) select id, k, kind, body from reviews,
             (values ('f1', 'summary', '"UnknownPath"'), ('f2', 'summary', 'not json'),
                     ('f3', 'inline', 'a **comment**'), ('summary', 'summary', '## Summary'))
             as v (k, kind, body)"#,
    )
    .execute(&mut *conn)
    .await
    .unwrap();
    for sql in apply(SPLIT, i64::MAX) {
        sqlx::raw_sql(sql).execute(&mut *conn).await.unwrap();
    }

    let rows: Vec<(String, Option<String>, Option<serde_json::Value>)> =
        sqlx::query_as("select key, body, unanchored_reason from outbox order by key")
            .fetch_all(&mut *conn)
            .await
            .unwrap();
    assert_eq!(
        rows,
        [
            ("f1".into(), None, Some(serde_json::json!("UnknownPath"))),
            ("f2".into(), None, None),
            ("f3".into(), Some("a **comment**".into()), None),
            ("summary".into(), Some("## Summary".into()), None),
        ]
    );
    // From now on the two meanings cannot share the column again.
    let mixed = sqlx::query("update outbox set body = 'markdown' where key = 'f1'")
        .execute(&mut *conn)
        .await;
    assert!(mixed.is_err(), "a listed finding refuses a body");
}
