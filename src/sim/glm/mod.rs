//! A simulated Zhipu GLM chat-completions endpoint (`POST {base}/chat/completions`, base
//! `http://127.0.0.1:PORT/api/paas/v4`, as on `open.bigmodel.cn`).
//!
//! Answers are deterministic: findings from [`rules`] applied to the diff in the user message
//! (a describe request gets a description, a question an answer); `usage` is `ceil(chars / 4)`
//! of all message contents (prompt) and of the answer (completion), so tests can recompute
//! every number. The server counts requests in flight (and the peak), bills the usage of every
//! answer that carries one, logs each call, and injects GLM's failures ([`GlmFault`]).
//! Wire formats follow `reference/gitlab-glm-api.md` section B: error bodies
//! `{"error":{"code":"1302","message":"..."}}` with the code as a string; 429 for rate limit,
//! overload and arrears; 400 for parameter errors, 1261 and 1301; 401 for auth.

mod completions;
mod conversation;
mod describe;
pub mod rules;

use std::{
    collections::VecDeque,
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use axum::{Router, extract::DefaultBodyLimit, http::StatusCode, routing::post};

use self::completions::{chat, glm_error};
use super::{Error, server};

/// Where the API lives under the server root, as on `open.bigmodel.cn` (no `/v1`).
const API_PREFIX: &str = "/api/paas/v4";

/// Largest request accepted: a 200K-token prompt is under 1 MB of text; 8 MiB leaves room
/// for JSON escaping of multi-byte text and stops a runaway client.
const MAX_REQUEST_BYTES: usize = 8 * 1024 * 1024;

/// The system prompt asks for at most 10 findings; the fake model obeys by default.
pub const DEFAULT_MAX_FINDINGS: usize = 10;

/// How the fake model behaves when no fault applies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GlmBehaviour {
    /// Time to "generate" each successful answer (the bench uses 300 ms).
    pub latency: Duration,
    /// Findings per answer, most severe first.
    pub max_findings: usize,
    /// Prompts estimated above this many tokens are refused with 1261 (prompt too long), as a
    /// model with this context window would. `None`: no limit.
    pub max_prompt_tokens: Option<u64>,
}

impl Default for GlmBehaviour {
    fn default() -> Self {
        GlmBehaviour {
            latency: Duration::ZERO,
            max_findings: DEFAULT_MAX_FINDINGS,
            max_prompt_tokens: None,
        }
    }
}

impl GlmBehaviour {
    /// Default behaviour with this latency.
    pub fn with_latency(latency: Duration) -> Self {
        GlmBehaviour {
            latency,
            ..GlmBehaviour::default()
        }
    }
}

/// One injected failure. Error answers come back at once (no latency), as a provider's
/// limiter answers; answers with a body come back after the latency.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GlmFault {
    /// HTTP 429, code `1302`: concurrency or rate limit reached. Retryable.
    RateLimited,
    /// HTTP 429, code `1305`: the model is overloaded. Retryable with a longer backoff.
    Overloaded,
    /// HTTP 429, code `1113`: the account is in arrears (balance exhausted). Not retryable.
    Arrears,
    /// HTTP 500, code `500`: internal error. Retryable.
    ServerError,
    /// HTTP 400, code `1261`: the prompt is too long. Split the input.
    PromptTooLong,
    /// HTTP 400, code `1301`: moderation refused the input.
    ContentFiltered,
    /// HTTP 200, `finish_reason: "sensitive"`, empty content, usage billed.
    SensitiveOutput,
    /// HTTP 200, `finish_reason: "length"`, content cut in half (not valid JSON), usage billed.
    Truncated,
    /// HTTP 200, `finish_reason: "stop"`, content is prose instead of JSON; usage billed.
    NotJson,
    /// HTTP 200, the JSON answer wrapped in prose and a ```` ```json ```` fence (what models
    /// do despite instructions); a tolerant parser must still read it. Usage billed.
    Fenced,
    /// HTTP 200 with an HTML page instead of a completion (a wrong base URL or a proxy).
    NotCompletion,
    /// Answer normally, but after this delay instead of the latency (exceed the client's
    /// timeout to simulate a hung provider).
    Slow(Duration),
    /// Any other error answer: HTTP status, GLM code and message.
    Custom {
        /// HTTP status.
        status: u16,
        /// Business code, sent as a string.
        code: String,
        /// Message.
        message: String,
    },
}

/// One request as the fake saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GlmCall {
    /// Model requested (empty if the body could not be read).
    pub model: String,
    /// HTTP status answered; 499 when the client went away before the answer.
    pub status: u16,
    /// GLM business code of an error answer.
    pub error_code: Option<String>,
    /// `finish_reason` of a completion.
    pub finish_reason: Option<String>,
    /// Prompt tokens billed (`None`: the answer carried no usage).
    pub prompt_tokens: Option<u64>,
    /// Completion tokens billed.
    pub completion_tokens: Option<u64>,
    /// The fault applied, if any.
    pub fault: Option<GlmFault>,
    /// The user message(s), joined.
    pub user_prompt: String,
    /// The system message(s), joined.
    pub system_prompt: String,
    /// When the request arrived (with `elapsed`, places the call on a timeline).
    pub arrived: Instant,
    /// From request arrival to answer.
    pub elapsed: Duration,
}

/// What a request asked for, told by its system message as the fake's answers are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CallPurpose {
    /// A review of a part of the diff (any other system message).
    Review,
    /// A merge request description, or the merge of partial ones.
    Describe,
    /// A question asked in a thread.
    Question,
}

impl GlmCall {
    /// What the call asked for.
    pub fn purpose(&self) -> CallPurpose {
        if self.system_prompt.contains(describe::DESCRIBE_PROMPT) {
            CallPurpose::Describe
        } else if self.system_prompt.contains(conversation::QUESTION_PROMPT) {
            CallPurpose::Question
        } else {
            CallPurpose::Review
        }
    }
}

/// A fault for requests whose messages contain a needle.
#[derive(Debug, Clone)]
struct PromptRule {
    needle: String,
    fault: GlmFault,
    /// `None`: forever.
    remaining: Option<u32>,
}

/// Mutable state; a std mutex, never held across an `.await`.
#[derive(Debug, Default)]
struct GlmState {
    behaviour: GlmBehaviour,
    /// Faults for the next requests, one each, in order.
    queue: VecDeque<GlmFault>,
    /// Fault for every request not matched by a rule or the queue.
    every_request: Option<GlmFault>,
    /// A fault for a share (per cent) of the requests no rule or queued fault covers.
    share: Option<(u32, GlmFault)>,
    /// The share's generator state (xorshift64*, fixed seed).
    share_rng: u64,
    prompt_rules: Vec<PromptRule>,
    calls: Vec<GlmCall>,
    billed_prompt: u64,
    billed_completion: u64,
    /// Completion id sequence.
    last_id: u64,
}

#[derive(Debug)]
struct Inner {
    /// `http://127.0.0.1:PORT/api/paas/v4`.
    base_url: String,
    /// The only accepted bearer key.
    api_key: String,
    /// Cuts simulated generation short on shutdown.
    stopper: server::Stopper,
    /// Requests being handled now; atomics so the hot path measures without the lock.
    in_flight: AtomicUsize,
    /// Highest `in_flight` seen.
    peak_in_flight: AtomicUsize,
    /// Requests received.
    requests: AtomicU64,
    state: Mutex<GlmState>,
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, GlmState> {
        // A panicking handler must not poison every later request.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A running simulated GLM. Stops when dropped (or with [`FakeGlm::shutdown`]).
#[derive(Debug)]
pub struct FakeGlm {
    inner: Arc<Inner>,
    running: server::Running,
}

impl FakeGlm {
    /// Starts a server on `127.0.0.1:0` that accepts `Authorization: Bearer {api_key}`.
    ///
    /// # Errors
    /// [`Error::Bind`] when no loopback port can be bound.
    pub async fn start(api_key: &str, behaviour: GlmBehaviour) -> Result<FakeGlm, Error> {
        let (listener, addr) = server::bind("GLM").await?;
        let (stop, stopper) = server::stop_channel();
        let inner = Arc::new(Inner {
            base_url: format!("http://{addr}{API_PREFIX}"),
            api_key: api_key.to_owned(),
            stopper,
            in_flight: AtomicUsize::new(0),
            peak_in_flight: AtomicUsize::new(0),
            requests: AtomicU64::new(0),
            state: Mutex::new(GlmState {
                behaviour,
                ..GlmState::default()
            }),
        });
        let router = Router::new()
            .route(&format!("{API_PREFIX}/chat/completions"), post(chat))
            .fallback(|| async {
                glm_error(StatusCode::NOT_FOUND, "1222", "API 不存在 (no such API)")
            })
            .layer(DefaultBodyLimit::max(MAX_REQUEST_BYTES))
            .with_state(Arc::clone(&inner));
        let running = server::serve("GLM", listener, addr, router, stop);
        Ok(FakeGlm { inner, running })
    }

    /// `http://127.0.0.1:PORT/api/paas/v4` (`GLM_BASE_URL`; the client appends `/chat/completions`).
    pub fn base_url(&self) -> &str {
        &self.inner.base_url
    }

    /// Stops the server; simulated generation in progress is cut short.
    pub async fn shutdown(mut self) {
        self.running.shutdown().await;
    }

    /// Changes the latency of answers from now on.
    pub fn set_latency(&self, latency: Duration) {
        self.inner.lock().behaviour.latency = latency;
    }

    /// Changes the whole behaviour from now on.
    pub fn set_behaviour(&self, behaviour: GlmBehaviour) {
        self.inner.lock().behaviour = behaviour;
    }

    /// Queues faults for the next requests, one per request, in order.
    pub fn push_faults(&self, faults: impl IntoIterator<Item = GlmFault>) {
        self.inner.lock().queue.extend(faults);
    }

    /// A fault for every request that no prompt rule or queued fault covers (`None` clears it).
    pub fn set_fault_for_every_request(&self, fault: Option<GlmFault>) {
        self.inner.lock().every_request = fault;
    }

    /// A fault for `per_cent` of the requests that no prompt rule or queued fault covers,
    /// picked by a fixed-seed generator (`None` clears it).
    pub fn set_fault_share(&self, share: Option<(u32, GlmFault)>) {
        self.inner.lock().share = share;
    }

    /// A fault for requests whose messages contain `needle` (e.g. a file path, to fail one
    /// chunk whatever order the workers send them in); `times: None` means every time.
    /// Prompt rules take precedence over queued faults.
    pub fn add_prompt_fault(&self, needle: &str, fault: GlmFault, times: Option<u32>) {
        self.inner.lock().prompt_rules.push(PromptRule {
            needle: needle.to_owned(),
            fault,
            remaining: times,
        });
    }

    /// Removes every fault (queue, every-request fault and prompt rules).
    pub fn clear_faults(&self) {
        let mut state = self.inner.lock();
        state.queue.clear();
        state.every_request = None;
        state.share = None;
        state.prompt_rules.clear();
    }

    /// Requests being handled right now.
    pub fn in_flight(&self) -> usize {
        self.inner.in_flight.load(Ordering::SeqCst)
    }

    /// The most requests ever handled at the same time.
    pub fn peak_in_flight(&self) -> usize {
        self.inner.peak_in_flight.load(Ordering::SeqCst)
    }

    /// Forgets the peak (it restarts from the current in-flight count).
    pub fn reset_peak_in_flight(&self) {
        self.inner
            .peak_in_flight
            .store(self.in_flight(), Ordering::SeqCst);
    }

    /// Requests received (all, failed ones included).
    pub fn request_count(&self) -> u64 {
        self.inner.requests.load(Ordering::SeqCst)
    }

    /// Every finished request, in completion order.
    pub fn calls(&self) -> Vec<GlmCall> {
        self.inner.lock().calls.clone()
    }

    /// Prompt tokens of every answer that carried `usage`.
    pub fn billed_prompt_tokens(&self) -> u64 {
        self.inner.lock().billed_prompt
    }

    /// Completion tokens of every answer that carried `usage`.
    pub fn billed_completion_tokens(&self) -> u64 {
        self.inner.lock().billed_completion
    }

    /// Prompt plus completion tokens billed.
    pub fn billed_total_tokens(&self) -> u64 {
        let state = self.inner.lock();
        state.billed_prompt + state.billed_completion
    }
}

/// The fake's token count: `ceil(chars / 4)`, the usual rule of thumb.
pub fn estimate_tokens(text: &str) -> u64 {
    (text.chars().count() as u64).div_ceil(4)
}
