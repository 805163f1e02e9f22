//! analytics.js 2.0 (`@segment/analytics-next` from npm, bundled with esbuild) in a real
//! Chromium, pointed at ingest by `cdnURL` alone: it fetches its settings from ingest, which
//! names ingest as the host events go to. The page is served from another origin, so every
//! request is a CORS request. Two visitors (two browser contexts) identify, track, page, group
//! and alias, and send one more track as their page closes. Installs (Chromium, npm packages)
//! happen on first use: see `test_support::browser`.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::Stdio;

use serde_json::Value;
use test_support::browser::{chromium, NodeTools, PageServer};
use test_support::{consume, WRITE_KEY};

use super::{Ingest, WAIT};

/// The JavaScript side: `package.json`, the lock file, pages, entry files, driver scripts.
pub(crate) fn js_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests").join("js")
}

/// The packages of [`js_dir`], installed (on first use) in a blocking task.
pub(crate) async fn node_tools() -> NodeTools {
    tokio::task::spawn_blocking(|| NodeTools::install(&js_dir()))
        .await
        .expect("installing the npm packages")
}

/// Visitors, each in a browser context of its own.
const VISITORS: usize = 2;

/// What each visitor's page sends, in order: type and, for tracks, the event name.
const SENT: [(&str, Option<&str>); 6] = [
    ("identify", None),
    ("track", Some("Signed Up")),
    ("page", None),
    ("group", None),
    ("alias", None),
    // Sent from `beforeunload` as the page closes.
    ("track", Some("Page Closed")),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn analytics_next_in_chromium_delivers_every_call_in_order() {
    let tools = node_tools().await;
    let (bundle, chromium) = {
        let tools = tools.clone();
        tokio::task::spawn_blocking(move || {
            (
                tools.bundle(&js_dir().join("analytics-next.entry.js")),
                chromium(),
            )
        })
        .await
        .unwrap()
    };
    let ingest = Ingest::start_public().await;

    let html = std::fs::read_to_string(js_dir().join("analytics-next.html"))
        .unwrap()
        .replace("__INGEST_URL__", &ingest.url)
        .replace("__WRITE_KEY__", WRITE_KEY);
    let server = PageServer::start(HashMap::from([
        (
            "/".to_string(),
            ("text/html; charset=utf-8".to_string(), html.into_bytes()),
        ),
        (
            "/analytics-next.js".to_string(),
            ("text/javascript".to_string(), std::fs::read(&bundle).unwrap()),
        ),
    ]));
    let profile = tempfile::tempdir().unwrap();
    let mut driver = tools
        .node(&js_dir().join("drive-browser.cjs"))
        .arg(&chromium)
        .arg(profile.path())
        .arg(format!("{}/", server.url()))
        .arg(VISITORS.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("starting node");

    // The driver reports once every page is closed, then keeps the browser open (requests sent
    // as the pages closed may still be in flight) until its stdin closes.
    let stdout = driver.stdout.take().unwrap();
    let line = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).unwrap();
        line
    })
    .await
    .unwrap();
    let report: Value =
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("the driver printed {line:?}: {e}"));
    assert_eq!(report["errors"], serde_json::json!([]), "{report:#}");

    // Nothing went anywhere but the page's origin and ingest (no Segment CDN, API or metrics),
    // and ingest answered every request it got.
    for request in report["requests"].as_array().unwrap() {
        let url = request["url"].as_str().unwrap();
        assert!(
            url.starts_with(server.url()) || url.starts_with(&ingest.url),
            "a request to neither the page nor ingest: {request}\n{report:#}"
        );
        if url.starts_with(&ingest.url) {
            let status = request["status"].as_u64();
            assert!(
                matches!(status, Some(200 | 204)),
                "ingest answered {request}\n{report:#}"
            );
        }
    }
    let settings = format!("{}/v1/projects/{WRITE_KEY}/settings", ingest.url);
    for visitor in 1..=VISITORS {
        assert!(
            report["requests"]
                .as_array()
                .unwrap()
                .iter()
                .any(|r| r["visitor"] == visitor && r["url"] == settings.as_str() && r["status"] == 200),
            "visitor {visitor} did not load its settings from ingest: {report:#}"
        );
    }

    let expected = VISITORS * SENT.len();
    let records = consume(&ingest.topics.ingest, expected, WAIT).await;
    drop(driver.stdin.take());
    let exited = tokio::task::spawn_blocking(move || driver.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(exited.success(), "the driver failed: {exited}");

    let visitors = report["visitors"].as_array().unwrap();
    assert_eq!(visitors.len(), VISITORS, "{report:#}");
    let summary: Vec<String> = records
        .iter()
        .map(|r| {
            format!(
                "{:?} {:?} {}",
                r.key,
                r.header("type"),
                String::from_utf8_lossy(&r.value)
            )
        })
        .collect();
    assert_eq!(
        records.len(),
        expected,
        "{} of {expected} events on the ingest topic:\n{}",
        records.len(),
        summary.join("\n")
    );

    for (index, visitor) in visitors.iter().enumerate() {
        let n = index + 1;
        assert_eq!(visitor["visitor"], n);
        let anonymous_id = visitor["anonymousId"].as_str().unwrap();
        // Records keep the send order per key (one partition, offsets in order).
        let mine: Vec<_> = records
            .iter()
            .filter(|r| r.key.as_deref() == Some(anonymous_id))
            .collect();
        let types: Vec<_> = mine
            .iter()
            .map(|r| {
                (
                    r.header("type").unwrap_or("-"),
                    r.event()["event"].as_str().map(String::from),
                )
            })
            .collect();
        let want: Vec<_> = SENT.iter().map(|(t, e)| (*t, e.map(String::from))).collect();
        assert_eq!(
            types,
            want,
            "visitor {n} ({anonymous_id}):\n{}",
            summary.join("\n")
        );
        let sent_ids: Vec<&str> = visitor["sent"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["messageId"].as_str().unwrap())
            .collect();

        let user = format!("user-{n}");
        for (i, record) in mine.iter().enumerate() {
            let value = record.event();
            assert_eq!(record.header("workspace_id"), Some("ws_test"));
            assert_eq!(record.header("source_id"), Some("src_test"));
            assert_eq!(record.header("type"), value["type"].as_str());
            assert_eq!(value["anonymous_id"], anonymous_id);
            assert_eq!(value["context"]["library"]["name"], "analytics.js", "{value}");
            assert_eq!(
                value["context"]["page"]["url"],
                format!("{}/", server.url()),
                "{value}"
            );
            if let Some(id) = sent_ids.get(i) {
                assert_eq!(value["message_id"], *id, "{value}");
            }
            match i {
                0 => {
                    assert_eq!(value["user_id"], user.as_str());
                    assert_eq!(value["traits"]["email"], format!("{user}@example.com"));
                }
                1 => assert_eq!(value["properties"]["plan"], "pro", "{value}"),
                2 => {
                    assert_eq!(value["category"], "Docs", "{value}");
                    assert_eq!(value["name"], "Install", "{value}");
                }
                3 => {
                    assert_eq!(value["group_id"], format!("group-{n}"), "{value}");
                    assert_eq!(value["traits"]["name"], "Acme", "{value}");
                }
                // analytics-next 1.84.3 sends `alias(to, from)` with `previousId: from` and the
                // identified user as `userId` (not `to`): ingest keeps what it was sent.
                4 => assert_eq!(value["previous_id"], user.as_str(), "{value}"),
                _ => assert_eq!(value["properties"]["visitor"], n, "{value}"),
            }
        }
    }
}
