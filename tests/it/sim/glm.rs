//! The simulated GLM, driven by the real `llm` client.

use std::{sync::Arc, time::Duration};

use reviewq::{
    disposition::Disposition,
    llm::{ChatRequest, ErrorKind, LlmClient, Message},
    sim::glm::{FakeGlm, GlmBehaviour, GlmFault, estimate_tokens, rules::UNANCHORED_PATH},
};
use serde_json::Value;

use crate::sim::helpers::{API_KEY, diff_line, llm_client, user_prompt};

const SYSTEM: &str = "You are reviewq. Answer with exactly one JSON object.";

/// Two files: a modified Rust file with an unwrap (new 11), a secret (new 12) and a removed
/// assert (old 11); an added JS file with console.log (new 1) and a TODO (new 2).
fn two_file_prompt() -> String {
    let rust = format!(
        "\n### File: src/app.rs (modified)\n@@ -10,3 +10,4 @@ fn run()\n{}{}{}{}{}",
        diff_line(Some(10), Some(10), ' ', "fn run() {"),
        diff_line(Some(11), None, '-', "    assert!(ready);"),
        diff_line(None, Some(11), '+', "    let v = load().unwrap();"),
        diff_line(None, Some(12), '+', "    let password = \"hunter22\";"),
        diff_line(Some(12), Some(13), ' ', "}"),
    );
    let js = format!(
        "\n### File: web/a b.js (added)\n@@ -0,0 +1,2 @@\n{}{}",
        diff_line(None, Some(1), '+', "console.log(x);"),
        diff_line(None, Some(2), '+', "// TODO: remove"),
    );
    user_prompt(&format!("{rust}{js}"))
}

fn request(user: &str) -> ChatRequest {
    ChatRequest {
        json_object: true,
        ..ChatRequest::new(vec![Message::system(SYSTEM), Message::user(user)])
    }
}

async fn glm(behaviour: GlmBehaviour) -> (FakeGlm, LlmClient) {
    let glm = FakeGlm::start(API_KEY, behaviour).await.expect("start");
    let client = llm_client(glm.base_url(), Some(API_KEY), Duration::from_secs(10));
    (glm, client)
}

#[tokio::test]
async fn findings_parse_as_json_with_the_prompts_paths_and_line_numbers() {
    let (_glm, client) = glm(GlmBehaviour::default()).await;

    let completion = client
        .complete(&request(&two_file_prompt()))
        .await
        .expect("completion");

    assert_eq!(completion.finish_reason.as_deref(), Some("stop"));
    assert_eq!(completion.model, "glm-4.6");
    assert!(completion.request_id.is_some());
    let answer: Value = serde_json::from_str(&completion.content).expect("JSON content");
    assert!(
        answer["summary"]
            .as_str()
            .is_some_and(|s| s.contains("2 file(s)"))
    );
    let findings: Vec<(String, Option<u64>, Option<u64>, String)> = answer["findings"]
        .as_array()
        .expect("findings")
        .iter()
        .map(|f| {
            (
                f["path"].as_str().unwrap_or_default().to_owned(),
                f["line"].as_u64(),
                f["old_line"].as_u64(),
                f["severity"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        findings,
        vec![
            (
                "src/app.rs".to_owned(),
                Some(12),
                None,
                "critical".to_owned()
            ),
            ("src/app.rs".to_owned(), None, Some(11), "major".to_owned()),
            ("src/app.rs".to_owned(), Some(11), None, "major".to_owned()),
            ("web/a b.js".to_owned(), Some(1), None, "minor".to_owned()),
            ("web/a b.js".to_owned(), Some(2), None, "info".to_owned()),
        ]
    );
}

#[tokio::test]
async fn usage_is_chars_over_four_and_the_billed_totals_equal_what_the_client_saw() {
    let (glm, client) = glm(GlmBehaviour::default()).await;
    let prompt = two_file_prompt();
    glm.push_faults([
        GlmFault::Truncated,
        GlmFault::RateLimited,
        GlmFault::NotJson,
        GlmFault::SensitiveOutput,
    ]);

    let mut seen = 0;
    for _ in 0..5 {
        let usage = match client.complete(&request(&prompt)).await {
            Ok(c) => c.usage,
            Err(e) => e.usage,
        };
        seen += usage.total_tokens.unwrap_or(0);
    }

    let first = client.complete(&request(&prompt)).await.expect("ok");
    let expected_prompt = estimate_tokens(&format!("{SYSTEM}{prompt}"));
    assert_eq!(first.usage.prompt_tokens, Some(expected_prompt));
    assert_eq!(
        first.usage.completion_tokens,
        Some(estimate_tokens(&first.content))
    );
    seen += first.usage.total_tokens.unwrap_or(0);
    assert_eq!(glm.billed_total_tokens(), seen);
    assert_eq!(glm.billed_prompt_tokens(), 5 * expected_prompt);
    let calls = glm.calls();
    assert_eq!(calls.len(), 6);
    assert_eq!(calls[1].status, 429);
    assert_eq!(calls[1].prompt_tokens, None);
    assert_eq!(calls[0].finish_reason.as_deref(), Some("length"));
    assert!(calls[0].completion_tokens.is_some());
}

#[tokio::test]
async fn peak_in_flight_counts_concurrent_requests() {
    let (glm, client) = glm(GlmBehaviour::with_latency(Duration::from_millis(300))).await;
    let prompt = Arc::new(two_file_prompt());

    // Five at once.
    let calls: Vec<_> = (0..5)
        .map(|_| {
            let (client, prompt) = (client.clone(), Arc::clone(&prompt));
            tokio::spawn(async move { client.complete(&request(&prompt)).await })
        })
        .collect();
    for call in calls {
        call.await.expect("task").expect("completion");
    }
    assert_eq!(glm.peak_in_flight(), 5);
    assert_eq!(glm.in_flight(), 0);

    // Nine through a limit of three.
    glm.reset_peak_in_flight();
    let limit = Arc::new(tokio::sync::Semaphore::new(3));
    let calls: Vec<_> = (0..9)
        .map(|_| {
            let (client, prompt, limit) = (client.clone(), Arc::clone(&prompt), Arc::clone(&limit));
            tokio::spawn(async move {
                let _permit = limit.acquire().await.expect("semaphore");
                client.complete(&request(&prompt)).await
            })
        })
        .collect();
    for call in calls {
        call.await.expect("task").expect("completion");
    }
    assert_eq!(glm.peak_in_flight(), 3);
    assert_eq!(glm.request_count(), 14);
}

#[tokio::test]
async fn each_glm_fault_is_classified_as_the_llm_client_expects() {
    let (glm, client) = glm(GlmBehaviour::default()).await;
    let prompt = two_file_prompt();
    let cases = [
        (
            GlmFault::RateLimited,
            ErrorKind::RateLimited,
            Some(429),
            Some("1302"),
            Disposition::Retry,
        ),
        (
            GlmFault::Overloaded,
            ErrorKind::Overloaded,
            Some(429),
            Some("1305"),
            Disposition::Retry,
        ),
        (
            GlmFault::Arrears,
            ErrorKind::QuotaExhausted,
            Some(429),
            Some("1113"),
            Disposition::Fatal,
        ),
        (
            GlmFault::ServerError,
            ErrorKind::Server,
            Some(500),
            Some("500"),
            Disposition::Retry,
        ),
        (
            GlmFault::PromptTooLong,
            ErrorKind::ContextTooLong,
            Some(400),
            Some("1261"),
            Disposition::Fatal,
        ),
        (
            GlmFault::ContentFiltered,
            ErrorKind::ContentFiltered,
            Some(400),
            Some("1301"),
            Disposition::Fatal,
        ),
        (
            GlmFault::SensitiveOutput,
            ErrorKind::ContentFiltered,
            Some(200),
            None,
            Disposition::Fatal,
        ),
        (
            GlmFault::Truncated,
            ErrorKind::ContextTooLong,
            Some(200),
            None,
            Disposition::Fatal,
        ),
        (
            GlmFault::NotCompletion,
            ErrorKind::InvalidResponse,
            Some(200),
            None,
            Disposition::Fatal,
        ),
        (
            GlmFault::Custom {
                status: 400,
                code: "1211".to_owned(),
                message: "模型不存在".to_owned(),
            },
            ErrorKind::BadRequest,
            Some(400),
            Some("1211"),
            Disposition::Fatal,
        ),
    ];

    for (fault, kind, status, code, disposition) in cases {
        glm.push_faults([fault.clone()]);
        let error = client.complete(&request(&prompt)).await.expect_err("fault");
        assert_eq!(error.kind, kind, "{fault:?}: {error}");
        assert_eq!(error.http_status, status, "{fault:?}");
        assert_eq!(error.provider_code.as_deref(), code, "{fault:?}");
        assert_eq!(error.disposition(), disposition, "{fault:?}");
    }
}

#[tokio::test]
async fn answers_that_are_not_plain_json_still_succeed_at_the_http_level() {
    let (glm, client) = glm(GlmBehaviour::default()).await;
    glm.push_faults([GlmFault::NotJson, GlmFault::Fenced]);

    let prose = client
        .complete(&request(&two_file_prompt()))
        .await
        .expect("200");
    let fenced = client
        .complete(&request(&two_file_prompt()))
        .await
        .expect("200");

    assert!(serde_json::from_str::<Value>(&prose.content).is_err());
    let inner = fenced
        .content
        .split("```json\n")
        .nth(1)
        .and_then(|rest| rest.split("\n```").next())
        .expect("fenced JSON");
    assert!(serde_json::from_str::<Value>(inner).is_ok());
}

#[tokio::test]
async fn a_slow_answer_past_the_client_timeout_is_a_retryable_timeout() {
    let glm = FakeGlm::start(API_KEY, GlmBehaviour::default())
        .await
        .expect("start");
    let client = llm_client(glm.base_url(), Some(API_KEY), Duration::from_millis(300));
    glm.push_faults([GlmFault::Slow(Duration::from_secs(5))]);

    let error = client
        .complete(&request(&two_file_prompt()))
        .await
        .expect_err("timeout");

    assert_eq!(error.kind, ErrorKind::Timeout);
    assert_eq!(error.disposition(), Disposition::Retry);
    // The next request is answered normally.
    assert!(client.complete(&request(&two_file_prompt())).await.is_ok());
}

#[tokio::test]
async fn a_missing_or_wrong_key_gets_401_with_glm_codes() {
    let glm = FakeGlm::start(API_KEY, GlmBehaviour::default())
        .await
        .expect("start");
    let no_key = llm_client(glm.base_url(), None, Duration::from_secs(5));
    let wrong_key = llm_client(glm.base_url(), Some("other.key"), Duration::from_secs(5));

    let missing = no_key.complete(&request("x")).await.expect_err("401");
    let wrong = wrong_key.complete(&request("x")).await.expect_err("401");

    assert_eq!(
        (missing.kind, missing.provider_code.as_deref()),
        (ErrorKind::Auth, Some("1001"))
    );
    assert_eq!(
        (wrong.kind, wrong.provider_code.as_deref()),
        (ErrorKind::Auth, Some("1002"))
    );
    assert_eq!(wrong.http_status, Some(401));
}

#[tokio::test]
async fn prompt_rules_fail_only_the_chunks_that_contain_the_needle() {
    let (glm, client) = glm(GlmBehaviour::default()).await;
    glm.add_prompt_fault("web/a b.js", GlmFault::PromptTooLong, None);
    let other = user_prompt(&format!(
        "\n### File: src/other.rs (modified)\n@@ -1,1 +1,1 @@\n{}",
        diff_line(None, Some(1), '+', "x")
    ));

    for _ in 0..2 {
        let error = client
            .complete(&request(&two_file_prompt()))
            .await
            .expect_err("1261");
        assert_eq!(error.kind, ErrorKind::ContextTooLong);
    }
    assert!(client.complete(&request(&other)).await.is_ok());
    glm.clear_faults();
    assert!(client.complete(&request(&two_file_prompt())).await.is_ok());
}

#[tokio::test]
async fn prompts_above_the_context_window_get_1261() {
    let behaviour = GlmBehaviour {
        max_prompt_tokens: Some(50),
        ..GlmBehaviour::default()
    };
    let (_glm, client) = glm(behaviour).await;

    let small = client
        .complete(&ChatRequest::new(vec![Message::user("short")]))
        .await;
    let large = client
        .complete(&request(&two_file_prompt()))
        .await
        .expect_err("1261");

    assert!(small.is_ok());
    assert_eq!(large.provider_code.as_deref(), Some("1261"));
    assert_eq!(large.kind, ErrorKind::ContextTooLong);
}

#[tokio::test]
async fn max_tokens_cuts_the_answer_with_finish_reason_length_and_bills_it() {
    let (glm, client) = glm(GlmBehaviour::default()).await;
    let capped = ChatRequest {
        max_tokens: Some(10),
        ..request(&two_file_prompt())
    };

    let error = client.complete(&capped).await.expect_err("length");

    assert_eq!(error.kind, ErrorKind::ContextTooLong);
    assert_eq!(error.usage.completion_tokens, Some(10));
    assert_eq!(glm.billed_completion_tokens(), 10);
}

#[tokio::test]
async fn quick_actions_in_the_diff_are_echoed_and_a_trigger_adds_an_unanchored_finding() {
    let (_glm, client) = glm(GlmBehaviour::default()).await;
    let prompt = user_prompt(&format!(
        "\n### File: README.md (modified)\n@@ -1,1 +1,3 @@\n{}{}{}",
        diff_line(Some(1), Some(1), ' ', "# Title"),
        diff_line(None, Some(2), '+', "Ping @all and /merge"),
        diff_line(None, Some(3), '+', "REVIEWQ_UNANCHORED"),
    ));

    let completion = client.complete(&request(&prompt)).await.expect("ok");

    let answer: Value = serde_json::from_str(&completion.content).expect("json");
    let findings = answer["findings"].as_array().expect("findings");
    let hostile = findings
        .iter()
        .find(|f| f["line"] == 2)
        .expect("quick action finding");
    let body = hostile["body"].as_str().unwrap_or_default();
    assert!(body.lines().any(|l| l.starts_with("@all")), "{body}");
    assert!(body.contains("/merge"));
    assert!(findings.iter().any(|f| f["path"] == UNANCHORED_PATH));
}

#[tokio::test]
async fn an_every_request_fault_applies_until_cleared() {
    let (glm, client) = glm(GlmBehaviour::default()).await;
    glm.set_fault_for_every_request(Some(GlmFault::Overloaded));

    for _ in 0..3 {
        let error = client
            .complete(&request("x"))
            .await
            .expect_err("overloaded");
        assert_eq!(error.kind, ErrorKind::Overloaded);
    }
    glm.set_fault_for_every_request(None);
    assert!(client.complete(&request("x")).await.is_ok());
    assert_eq!(
        glm.billed_prompt_tokens(),
        estimate_tokens(&format!("{SYSTEM}x"))
    );
}

#[tokio::test]
async fn the_bench_shape_sixty_requests_at_300_ms_through_three_slots_peaks_at_three() {
    let (glm, client) = glm(GlmBehaviour::with_latency(Duration::from_millis(300))).await;
    let limit = Arc::new(tokio::sync::Semaphore::new(3));
    let prompt = Arc::new(two_file_prompt());
    let started = std::time::Instant::now();

    let calls: Vec<_> = (0..60)
        .map(|_| {
            let (client, prompt, limit) = (client.clone(), Arc::clone(&prompt), Arc::clone(&limit));
            tokio::spawn(async move {
                let _permit = limit.acquire().await.expect("semaphore");
                client.complete(&request(&prompt)).await
            })
        })
        .collect();
    for call in calls {
        call.await.expect("task").expect("completion");
    }

    assert_eq!(glm.peak_in_flight(), 3);
    assert_eq!(glm.request_count(), 60);
    // 20 waves of 300 ms.
    assert!(started.elapsed() >= Duration::from_millis(6000));
}
