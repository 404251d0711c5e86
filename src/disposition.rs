//! How a failed operation should be handled, decided where the error happens.
use std::time::Duration;
/// What the caller should do about a failure. Clients classify their own errors into this;
/// the queue turns it into retry/fail decisions without looking at messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// Transient: retry with the caller's backoff policy.
    Retry,
    /// Transient, and the server said when: retry no earlier than this.
    RetryAfter(Duration),
    /// Retrying cannot help (bad credentials, not found, content refused...).
    Fatal,
}
