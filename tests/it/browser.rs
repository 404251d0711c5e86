//! The console in a real browser: Debian's headless Chromium driven over WebDriver by
//! chromedriver, both started here on loopback and killed at the end. The browser opens
//! the overview, follows the failed count to the failed job, presses Retry, accepts the
//! confirmation dialog and sees the job queued again; the spend chart has one bar per
//! (day, model) of the seeded ledger. Every page is saved as a screenshot under
//! `target/tmp/ui-screenshots/`.
//!
//! The browser binaries are required (CI installs them): without them this test fails
//! and says how to install them.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use fantoccini::{Client, ClientBuilder, Locator};
use reviewq::queue::{JobState, Queue};
use serde_json::json;
use sqlx::PgPool;
use tokio::process::{Child, Command};

use crate::console::{Console, PASSWORD, seed};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// chromedriver on a free loopback port; killed when dropped.
struct Driver {
    child: Child,
    url: String,
}

impl Driver {
    async fn start() -> Self {
        for binary in [CHROMIUM, CHROMEDRIVER] {
            assert!(
                Path::new(binary).exists(),
                "{binary} is missing: the browser test needs Debian's chromium and chromium-driver \
                 (apt-get install chromium chromium-driver; .ci/run installs them)"
            );
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("chromedriver starts");
        let url = format!("http://127.0.0.1:{port}");
        let status = format!("{url}/status");
        crate::support::wait_until(Duration::from_secs(20), "chromedriver answers", || {
            let status = status.clone();
            async move { reqwest::get(status).await.is_ok() }
        })
        .await;
        Self { child, url }
    }

    /// A headless Chromium session with a fresh profile in `profile`.
    async fn browser(&self, profile: &Path) -> Client {
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": CHROMIUM,
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update",
                    "--disable-sync", "--disable-quic", "--window-size=1280,900",
                    format!("--user-data-dir={}", profile.display()),
                ],
            }),
        );
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        ClientBuilder::new(connector)
            .capabilities(caps)
            .connect(&self.url)
            .await
            .expect("a Chromium session")
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

fn screenshots() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("ui-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn save(browser: &Client, name: &str) {
    let png = browser.screenshot().await.expect("a screenshot");
    std::fs::write(screenshots().join(format!("{name}.png")), png).unwrap();
}

#[sqlx::test]
async fn in_chromium_an_operator_follows_a_failed_job_and_retries_it_and_sees_the_spend_chart(
    pool: PgPool,
) {
    // Arrange
    let seeded = seed(&pool).await;
    let console = Console::with_passwords(&pool).await;
    let driver = Driver::start().await;
    let profile = tempfile::tempdir().unwrap();
    let browser = driver.browser(profile.path()).await;
    // Basic credentials in the first URL; Chromium keeps them for the origin's later
    // requests (links, the stylesheet, the form post).
    let authed = console
        .base
        .replacen("http://", &format!("http://reviewq:{PASSWORD}@"), 1);

    // Act: overview → the failed count → the job → Retry → confirm.
    browser.goto(&format!("{authed}/ui")).await.unwrap();
    browser
        .wait()
        .for_element(Locator::Css("#job-counts"))
        .await
        .expect("the overview's job table");
    save(&browser, "overview").await;
    browser
        .find(Locator::Css(
            r#"#job-counts a[href="/ui/jobs?kind=review&state=failed"]"#,
        ))
        .await
        .expect("a link to the failed review jobs")
        .click()
        .await
        .unwrap();
    let row = format!(r#"tr[data-job="{}"] a"#, seeded.failed);
    browser
        .wait()
        .for_element(Locator::Css(&row))
        .await
        .expect("the failed job in the list")
        .click()
        .await
        .unwrap();
    let state = browser
        .wait()
        .for_element(Locator::Css("#job-state"))
        .await
        .expect("the job page");
    assert_eq!(state.text().await.unwrap(), "failed");
    save(&browser, "job").await;
    browser
        .find(Locator::Css("#retry"))
        .await
        .expect("a Retry button")
        .click()
        .await
        .unwrap();
    let dialog = browser
        .get_alert_text()
        .await
        .expect("a confirmation dialog");
    browser.accept_alert().await.unwrap();

    // Assert: the page after the action shows the job queued, as the database does.
    assert_eq!(dialog, format!("Retry job {}?", seeded.failed));
    let mut shown = String::new();
    for _ in 0..50 {
        if let Ok(state) = browser.find(Locator::Css("#job-state")).await {
            shown = state.text().await.unwrap_or_default();
            if shown == "queued" {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(shown, "queued", "the job page after the retry");
    let job = Queue::new(pool.clone()).get(seeded.failed).await.unwrap();
    assert_eq!(job.state, JobState::Queued);

    // The other pages render, and the spend chart has one bar per (day, model).
    for (name, path) in [
        ("jobs", "/ui/jobs".to_owned()),
        ("reviews", "/ui/reviews".to_owned()),
        ("mr", "/ui/reviews/mr?project=group%2Fapp&iid=7".to_owned()),
        ("spend", "/ui/spend".to_owned()),
    ] {
        browser
            .goto(&format!("{}{path}", console.base))
            .await
            .unwrap();
        browser
            .wait()
            .for_element(Locator::Css("main h1"))
            .await
            .unwrap_or_else(|e| panic!("{path} renders: {e}"));
        save(&browser, name).await;
    }
    let bars = browser
        .find_all(Locator::Css("#chart-models svg.chart rect.bar"))
        .await
        .unwrap();
    assert_eq!(bars.len(), seeded.model_day_bars);
    let styled = browser
        .execute(
            "return getComputedStyle(document.querySelector('header')).display",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(styled, json!("flex"), "the embedded stylesheet applies");
    browser.close().await.unwrap();
    drop(driver);
}
