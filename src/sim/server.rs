//! The lifecycle both simulators share: an axum server on `127.0.0.1:0` that stops
//! gracefully when its handle is shut down or dropped.

use std::{net::SocketAddr, time::Duration};

use axum::Router;
use tokio::{net::TcpListener, sync::watch, task::JoinHandle};

use super::Error;

/// After the stop signal, in-flight requests get this long to finish before the server task
/// ends regardless. Simulated delays also watch the signal (see [`Stopper::sleep`]), so this
/// only bounds a client that keeps a connection busy.
const GRACE: Duration = Duration::from_secs(2);

/// A running server: its address and the means to stop it.
#[derive(Debug)]
pub(super) struct Running {
    /// Sends the stop signal; also held by handlers through [`Stopper`].
    stop: watch::Sender<bool>,
    /// The server task; `None` once awaited by [`Running::shutdown`].
    task: Option<JoinHandle<()>>,
}

/// A cheap handle handlers use to cut simulated delays short when the server stops, so a
/// "slow" fault cannot keep the process alive after a test ends.
#[derive(Debug, Clone)]
pub(super) struct Stopper(watch::Receiver<bool>);

impl Stopper {
    /// Sleeps for `duration`, or less if the server is stopping. Returns `false` when cut short.
    pub(super) async fn sleep(&self, duration: Duration) -> bool {
        if duration.is_zero() {
            return true;
        }
        let mut rx = self.0.clone();
        tokio::select! {
            () = tokio::time::sleep(duration) => true,
            _ = rx.wait_for(|stopped| *stopped) => false,
        }
    }
}

/// Binds `127.0.0.1:0` and returns the address plus a [`Stopper`] for the router's state;
/// [`serve`] then starts the router. Two steps because the router's state needs the address
/// (pagination `Link` headers carry absolute URLs).
pub(super) async fn bind(what: &'static str) -> Result<(TcpListener, SocketAddr), Error> {
    let listener = TcpListener::bind(("127.0.0.1", 0))
        .await
        .map_err(|source| Error::Bind { what, source })?;
    let addr = listener
        .local_addr()
        .map_err(|source| Error::Bind { what, source })?;
    Ok((listener, addr))
}

/// A stop channel whose receiver goes into the router's state before [`serve`] is called.
pub(super) fn stop_channel() -> (watch::Sender<bool>, Stopper) {
    let (tx, rx) = watch::channel(false);
    (tx, Stopper(rx))
}

/// Spawns the server on the current tokio runtime.
pub(super) fn serve(
    what: &'static str,
    listener: TcpListener,
    addr: SocketAddr,
    router: Router,
    stop: watch::Sender<bool>,
) -> Running {
    let mut graceful = stop.subscribe();
    let mut hard = stop.subscribe();
    let task = tokio::spawn(async move {
        let server = axum::serve(listener, router).with_graceful_shutdown(async move {
            let _ = graceful.wait_for(|stopped| *stopped).await;
        });
        tokio::select! {
            result = server => {
                if let Err(error) = result {
                    tracing::warn!(%error, server = what, "simulated server failed");
                }
            }
            () = async {
                let _ = hard.wait_for(|stopped| *stopped).await;
                tokio::time::sleep(GRACE).await;
            } => {
                tracing::debug!(server = what, "simulated server stopped after the grace period");
            }
        }
    });
    tracing::debug!(server = what, %addr, "simulated server listening");
    Running {
        stop,
        task: Some(task),
    }
}

impl Running {
    /// Signals the stop and waits for the server task to end (at most [`GRACE`] plus a little).
    pub(super) async fn shutdown(&mut self) {
        self.stop.send_replace(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        // Handlers and the serve loop see this and wind down on their own; nothing to await
        // here (drop cannot be async), and the task is detached, not aborted, so in-flight
        // answers still complete.
        self.stop.send_replace(true);
    }
}
