//! Browser SDKs from npm, bundled with esbuild, in a real Chromium, pointed at ingest; the pages
//! are served from another origin, so every request is a CORS request (or a no-cors beacon).
//! Two visitors (two browser contexts) visit each page; the driver closes the pages, and what
//! the SDKs send as a page closes counts too.
//!
//! - analytics.js 2.0 (`@segment/analytics-next`), pointed at ingest by `cdnURL` alone: it
//!   fetches its settings from ingest, which names ingest as the host events go to. Each
//!   visitor identifies, tracks, pages, groups and aliases, and sends one more track as the page
//!   closes: one request per event (`/v1/i`, `/v1/t`, ...), or with the batching delivery
//!   strategy two events a `POST /v1/b` (`{"writeKey","batch","sentAt"}`, Basic auth).
//! - RudderStack's browser SDK (`@rudderstack/analytics-js`, its bundled build) in beacon mode:
//!   `navigator.sendBeacon` to `/beacon/v1/batch?writeKey=KEY`, `text/plain`, no
//!   `Authorization`, `{"batch","sentAt"}`, the last beacon as the page closes. Its source
//!   config comes from the page (`getSourceConfig`), its plugins from the bundle.
//!
//! Installs (Chromium, npm packages) happen on first use: see `test_support::browser`.

use std::collections::{BTreeSet, HashMap};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::Stdio;

use serde_json::Value;
use test_support::browser::{chromium, NodeTools, PageServer};
use test_support::{consume, Record, WRITE_KEY};

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

/// What the driver reported and the records that arrived, from [`visit`].
struct Visits {
    /// The driver's report: `visitors` (`visitor`, `anonymousId`, `sent`: `type`,
    /// `messageId`), `requests` (`visitor`, `url`, `method`, `status`), `console`, `errors`.
    report: Value,
    /// The ingest topic's records, in offset order.
    records: Vec<Record>,
    /// The URL the visitors opened: `http://127.0.0.1:<port>/` and the query.
    page_url: String,
}

impl Visits {
    /// The requests the driver saw: visitor, method and URL, and the status (none when the
    /// request failed).
    fn requests(&self) -> impl Iterator<Item = (u64, &str, &str, Option<u64>)> {
        self.report["requests"].as_array().unwrap().iter().map(|r| {
            (
                r["visitor"].as_u64().unwrap(),
                r["method"].as_str().unwrap(),
                r["url"].as_str().unwrap(),
                r["status"].as_u64(),
            )
        })
    }

    /// The visitors' reports, in visitor order.
    fn visitors(&self) -> &[Value] {
        let visitors = self.report["visitors"].as_array().unwrap();
        assert_eq!(visitors.len(), VISITORS, "{:#}", self.report);
        visitors
    }

    /// The records keyed by `anonymous_id`, in offset order (the send order: one partition
    /// per key).
    fn keyed(&self, anonymous_id: &str) -> Vec<&Record> {
        self.records
            .iter()
            .filter(|r| r.key.as_deref() == Some(anonymous_id))
            .collect()
    }

    /// One line per record (key, type header, value), for failure messages.
    fn summary(&self) -> String {
        let lines: Vec<String> = self
            .records
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
        lines.join("\n")
    }
}

/// Serves `tests/js/<name>.html` (`__INGEST_URL__` and `__WRITE_KEY__` filled in) and the
/// esbuild bundle of `<name>.entry.js` as `/<name>.js` from another origin, has
/// `drive-browser.cjs` open `/<query>` for each of [`VISITORS`] visitors (each calls the page's
/// `window.visit(n)`, then closes the page), and waits for `expected` records on the ingest
/// topic. Asserts that the driver saw no error, that nothing was requested from anywhere but
/// the page's origin and ingest, that ingest answered every request the driver saw with 200
/// or 204, and that exactly `expected` records arrived.
async fn visit(ingest: &Ingest, name: &str, query: &str, expected: usize) -> Visits {
    let tools = node_tools().await;
    let entry = js_dir().join(format!("{name}.entry.js"));
    let (bundle, chromium) = {
        let tools = tools.clone();
        tokio::task::spawn_blocking(move || (tools.bundle(&entry), chromium()))
            .await
            .unwrap()
    };

    let html = std::fs::read_to_string(js_dir().join(format!("{name}.html")))
        .unwrap()
        .replace("__INGEST_URL__", &ingest.url)
        .replace("__WRITE_KEY__", WRITE_KEY);
    let server = PageServer::start(HashMap::from([
        (
            "/".to_string(),
            ("text/html; charset=utf-8".to_string(), html.into_bytes()),
        ),
        (
            format!("/{name}.js"),
            ("text/javascript".to_string(), std::fs::read(&bundle).unwrap()),
        ),
    ]));
    let page_url = format!("{}/{query}", server.url());
    let profile = tempfile::tempdir().unwrap();
    let mut driver = tools
        .node(&js_dir().join("drive-browser.cjs"))
        .arg(&chromium)
        .arg(profile.path())
        .arg(&page_url)
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

    let records = consume(&ingest.topics.ingest, expected, WAIT).await;
    drop(driver.stdin.take());
    let exited = tokio::task::spawn_blocking(move || driver.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(exited.success(), "the driver failed: {exited}");

    let visits = Visits {
        report,
        records,
        page_url,
    };
    // Nothing went anywhere but the page's origin and ingest (no SDK vendor's CDN, API or
    // metrics), and ingest answered every request it got.
    for (visitor, method, url, status) in visits.requests() {
        assert!(
            url.starts_with(server.url()) || url.starts_with(&ingest.url),
            "visitor {visitor}: {method} {url}, to neither the page nor ingest\n{:#}",
            visits.report
        );
        if url.starts_with(&ingest.url) {
            assert!(
                matches!(status, Some(200 | 204)),
                "visitor {visitor}: ingest answered {method} {url} with {status:?}\n{:#}",
                visits.report
            );
        }
    }
    if visits.records.len() != expected {
        // Whether ingest got the missing requests at all: a call sent as a page closes can
        // finish after the driver's report, unseen by it.
        let seen = ingest_counters(&ingest.metrics_text().await);
        panic!(
            "{} of {expected} events on the ingest topic:\n{}\ningest counted:\n{seen}\n{:#}",
            visits.records.len(),
            visits.summary(),
            visits.report
        );
    }
    visits
}

/// ingest's request, event and delivery counters in its metrics `text`, for a failure message.
fn ingest_counters(text: &str) -> String {
    test_support::metrics::lines_of(
        text,
        &[
            "cdp_ingest_http_requests_total",
            "cdp_ingest_events_total",
            "cdp_ingest_kafka_delivered_total",
            "cdp_ingest_kafka_delivery_failures_total",
        ],
    )
}

/// Asserts that each visitor's events are POSTed to ingest only at `paths` (path and query,
/// after ingest's URL), and that the driver saw `during_visit` such requests per visitor, those
/// sent during the visit (the driver waits for them; what is sent as a page closes may finish
/// unseen).
fn assert_posted_to(visits: &Visits, ingest: &Ingest, paths: &[&str], during_visit: usize) {
    for visitor in 1..=VISITORS as u64 {
        let posts: Vec<&str> = visits
            .requests()
            .filter(|(v, method, _, _)| *v == visitor && *method == "POST")
            .filter_map(|(_, _, url, _)| url.strip_prefix(ingest.url.as_str()))
            .collect();
        assert!(
            posts.len() >= during_visit && posts.iter().all(|p| paths.contains(p)),
            "visitor {visitor} POSTed {posts:?}: not {during_visit} or more, to {paths:?}\n{:#}",
            visits.report
        );
    }
}

/// What each analytics.js visitor's page sends, in order: type and, for tracks, the event
/// name.
const SENT: [(&str, Option<&str>); 6] = [
    ("identify", None),
    ("track", Some("Signed Up")),
    ("page", None),
    ("group", None),
    ("alias", None),
    // Sent from `beforeunload` as the page closes.
    ("track", Some("Page Closed")),
];

/// Runs `analytics-next.html` with `query` (its delivery strategy) against a fresh ingest and
/// asserts that every visitor loaded its settings from ingest and that every call is on the
/// ingest topic, keyed by the visitor's anonymousId, in call order, with the headers and the
/// fields it was sent with. Returns the run and the ingest.
async fn analytics_next_delivers_every_call_in_order(query: &str) -> (Visits, Ingest) {
    let ingest = Ingest::start().await;
    let visits = visit(&ingest, "analytics-next", query, VISITORS * SENT.len()).await;

    let settings = format!("{}/v1/projects/{WRITE_KEY}/settings", ingest.url);
    for visitor in 1..=VISITORS as u64 {
        assert!(
            visits
                .requests()
                .any(|(v, _, url, status)| v == visitor && url == settings && status == Some(200)),
            "visitor {visitor} did not load its settings from ingest: {:#}",
            visits.report
        );
    }

    for (index, visitor) in visits.visitors().iter().enumerate() {
        let n = index + 1;
        assert_eq!(visitor["visitor"], n);
        let anonymous_id = visitor["anonymousId"].as_str().unwrap();
        let mine = visits.keyed(anonymous_id);
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
        assert_eq!(types, want, "visitor {n} ({anonymous_id}):\n{}", visits.summary());
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
            // Every field the SDK sent was readable (its `sentAt`, batch-level or not, say).
            assert!(value.get("ignored").is_none(), "{value}");
            assert_eq!(value["context"]["library"]["name"], "analytics.js", "{value}");
            assert_eq!(value["context"]["page"]["url"], visits.page_url, "{value}");
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
    (visits, ingest)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn analytics_next_in_chromium_delivers_every_call_in_order() {
    let (visits, ingest) = analytics_next_delivers_every_call_in_order("").await;
    // One request per event, at the one-letter paths; all but the last during the visit.
    let paths = ["/v1/i", "/v1/t", "/v1/p", "/v1/g", "/v1/a"];
    assert_posted_to(&visits, &ingest, &paths, SENT.len() - 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn analytics_next_batching_in_chromium_delivers_every_call_in_order() {
    // Two events a batch: (identify, track) and (page, group) go as the second of each is
    // called, (alias, Page Closed) as the page closes.
    let (visits, ingest) = analytics_next_delivers_every_call_in_order("?batch=2").await;
    assert_posted_to(&visits, &ingest, &["/v1/b"], 2);
}

/// What each RudderStack visitor's page sends, in order: type and, for the track, its name.
const RUDDER_SENT: [(&str, Option<&str>); 3] =
    [("identify", None), ("track", Some("Signed Up")), ("page", None)];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rudderstack_beacons_in_chromium_deliver_every_call() {
    let ingest = Ingest::start().await;
    let visits = visit(&ingest, "rudderstack", "", VISITORS * RUDDER_SENT.len()).await;
    // Beacons carry the write key in the query. The first (identify, track) goes during the
    // visit, the second (page) as the page closes.
    let beacon = format!("/beacon/v1/batch?writeKey={WRITE_KEY}");
    assert_posted_to(&visits, &ingest, &[beacon.as_str()], 1);

    for (index, visitor) in visits.visitors().iter().enumerate() {
        let n = index + 1;
        assert_eq!(visitor["visitor"], n);
        let anonymous_id = visitor["anonymousId"].as_str().unwrap();
        let mine = visits.keyed(anonymous_id);
        // Beacons are not ordered with respect to one another: compare as sets.
        let got: BTreeSet<(String, Option<String>)> = mine
            .iter()
            .map(|r| {
                let value = r.event();
                (
                    r.header("type").unwrap_or("-").to_string(),
                    value["event"].as_str().map(String::from),
                )
            })
            .collect();
        let want: BTreeSet<_> = RUDDER_SENT
            .iter()
            .map(|(t, e)| (t.to_string(), e.map(String::from)))
            .collect();
        assert_eq!(
            (mine.len(), got),
            (RUDDER_SENT.len(), want),
            "visitor {n} ({anonymous_id}):\n{}",
            visits.summary()
        );
        let sent: BTreeSet<&str> = visitor["sent"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["messageId"].as_str().unwrap())
            .collect();
        let landed: BTreeSet<String> = mine
            .iter()
            .map(|r| r.event()["message_id"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(
            landed.iter().map(String::as_str).collect::<BTreeSet<_>>(),
            sent,
            "visitor {n}"
        );

        let user = format!("user-{n}");
        for record in mine {
            let value = record.event();
            assert_eq!(record.header("workspace_id"), Some("ws_test"));
            assert_eq!(record.header("source_id"), Some("src_test"));
            assert_eq!(record.header("type"), value["type"].as_str());
            assert_eq!(value["anonymous_id"], anonymous_id);
            // Every field the SDK sent was readable (its `sentAt`, batch-level or not, say).
            assert!(value.get("ignored").is_none(), "{value}");
            // Every call after identify carries the user.
            assert_eq!(value["user_id"], user.as_str(), "{value}");
            assert_eq!(
                value["context"]["library"]["name"], "RudderLabs JavaScript SDK",
                "{value}"
            );
            assert_eq!(value["context"]["page"]["url"], visits.page_url, "{value}");
            assert_eq!(
                value["context"]["traits"]["email"],
                format!("{user}@example.com"),
                "{value}"
            );
            match value["type"].as_str().unwrap() {
                "identify" => {}
                "track" => assert_eq!(value["properties"]["plan"], "pro", "{value}"),
                _ => {
                    assert_eq!(value["category"], "Docs", "{value}");
                    assert_eq!(value["name"], "Install", "{value}");
                    assert_eq!(value["properties"]["visitor"], n, "{value}");
                }
            }
        }
    }
}
