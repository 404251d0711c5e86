//! The connection to Postgres itself.

use std::os::fd::{BorrowedFd, RawFd};

use reviewq::config::DbArgs;
use socket2::SockRef;
use sqlx::PgPool;

use crate::helpers::url_of;

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
        assert!(
            socket.tcp_nodelay().unwrap(),
            "the connection to {peer} leaves Nagle's algorithm on"
        );
    }
    assert!(
        connections >= 1,
        "no TCP connection to Postgres port {port} was found in /proc/self/fd"
    );
}
