//! The hook through which the caller admits every GitLab request and hears of every
//! throttle. A fleet-wide budget and a shared back-off need state outside this process,
//! which this module knows nothing of: the caller supplies two closures, and the client
//! asks before each request (and each retry) and reports what GitLab said.

use std::{fmt, future::Future, pin::Pin, sync::Arc, time::Duration};

/// A boxed future of the hook.
pub type HookFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// What the hook says about one request.
pub enum Admit {
    /// Send it. The ticket is held while the request is in flight (a concurrency slot,
    /// say) and dropped when its answer is in.
    Go(Ticket),
    /// Ask again after `wait`.
    Wait {
        /// How long (the client may ask sooner).
        wait: Duration,
        /// Why, for logs and the error if the request's deadline passes.
        reason: String,
    },
}

/// Held while an admitted request is in flight.
pub struct Ticket {
    /// Whatever the hook keeps for the request's duration.
    _held: Option<Box<dyn Send>>,
    /// The first request after a pause: report its answer.
    probe: bool,
}

impl Ticket {
    /// A ticket holding `held` until the request's answer is in; `probe` marks the first
    /// request after a pause, whose answer the client reports with [`Report::Recovered`].
    pub fn new(held: Option<Box<dyn Send>>, probe: bool) -> Self {
        Self { _held: held, probe }
    }

    pub(super) fn is_probe(&self) -> bool {
        self.probe
    }
}

/// What the client tells the hook about an answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Report {
    /// GitLab throttled a request: nobody should send for `wait`.
    Throttled {
        /// `Retry-After` (or the client's backoff when GitLab gave no hint).
        wait: Duration,
        /// GitLab's text.
        reason: String,
    },
    /// A probe was answered without a throttle.
    Recovered,
}

type AdmitFn = dyn Fn() -> HookFuture<Result<Admit, String>> + Send + Sync;
type ReportFn = dyn Fn(Report) -> HookFuture<()> + Send + Sync;

/// The caller's admission hook. Cheap to clone.
#[derive(Clone)]
pub struct Admission {
    admit: Arc<AdmitFn>,
    report: Arc<ReportFn>,
}

impl Admission {
    /// A hook from its two halves: `admit` before every request (an `Err` is a failure of
    /// the hook itself, e.g. its database, and is retried like a transport error), `report`
    /// after every throttle and every probe's answer.
    pub fn new<A, R>(admit: A, report: R) -> Self
    where
        A: Fn() -> HookFuture<Result<Admit, String>> + Send + Sync + 'static,
        R: Fn(Report) -> HookFuture<()> + Send + Sync + 'static,
    {
        Self {
            admit: Arc::new(admit),
            report: Arc::new(report),
        }
    }

    pub(super) async fn admit(&self) -> Result<Admit, String> {
        (self.admit)().await
    }

    pub(super) async fn report(&self, report: Report) {
        (self.report)(report).await;
    }
}

impl fmt::Debug for Admission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Admission")
    }
}
