//! The Node server SDKs from npm, pointed at ingest through their ordinary `host` option:
//! `@segment/analytics-node` (one JSON `POST /v1/batch` with Basic auth) and
//! `@rudderstack/rudder-sdk-node` (gzip'd JSON labelled `application/x-www-form-urlencoded`,
//! to `/v1/batch`, Basic auth, a batch-level `timestamp`). Scripts: `tests/js/node-sdks.cjs`.

use serde_json::Value;
use test_support::{consume, WRITE_KEY};

use super::browser::{js_dir, node_tools};
use super::{Ingest, WAIT};

/// Runs `node-sdks.cjs <sdk>` against a fresh ingest; returns the ingest and what the script
/// reports it sent (type, messageId), in call order.
async fn send_with(sdk: &str) -> (Ingest, Vec<(String, String)>) {
    let tools = node_tools().await;
    let ingest = Ingest::start().await;
    let out = tools
        .node(&js_dir().join("node-sdks.cjs"))
        .args([sdk, &ingest.url, WRITE_KEY])
        .output()
        .expect("running node");
    assert!(
        out.status.success(),
        "{sdk}: the SDK script failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).expect("the script prints JSON");
    let sent = report["sent"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["type"].as_str().unwrap().to_string(),
                s["messageId"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    (ingest, sent)
}

/// Asserts that `sent` is on the ingest topic, keyed by `user`, with its headers and
/// the SDK's library name; returns the values by type.
async fn assert_landed(
    ingest: &Ingest,
    sent: &[(String, String)],
    user: &str,
    library: &str,
) -> std::collections::BTreeMap<String, Value> {
    let records = consume(&ingest.topics.ingest, sent.len(), WAIT).await;
    let got: Vec<(String, String)> = records
        .iter()
        .map(|r| {
            let value = r.event();
            (
                value["type"].as_str().unwrap().to_string(),
                value["message_id"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    // Both SDKs may have several requests in flight at once (analytics-node sends each batch
    // without waiting for the previous one), so there is no order across requests to keep:
    // compare as sets.
    let sorted = |v: &[(String, String)]| {
        let mut v = v.to_vec();
        v.sort();
        v
    };
    assert_eq!(
        sorted(&got),
        sorted(sent),
        "the ingest topic holds other events than sent"
    );
    let mut by_type = std::collections::BTreeMap::new();
    for r in &records {
        let value = r.event();
        assert_eq!(r.key.as_deref(), Some(user), "{value}");
        assert_eq!(r.header("workspace_id"), Some("ws_test"));
        assert_eq!(r.header("source_id"), Some("src_test"));
        assert_eq!(r.header("type"), value["type"].as_str());
        assert_eq!(value["user_id"], user, "{value}");
        assert_eq!(value["context"]["library"]["name"], library, "{value}");
        by_type.insert(value["type"].as_str().unwrap().to_string(), value);
    }
    by_type
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn segment_analytics_node_events_land_keyed_and_whole() {
    let (ingest, sent) = send_with("segment").await;
    // The script lists events as their callbacks run, batch by batch: in no fixed order.
    let mut types: Vec<&str> = sent.iter().map(|(t, _)| t.as_str()).collect();
    types.sort_unstable();
    assert_eq!(types, ["alias", "group", "identify", "page", "track"]);
    let by_type = assert_landed(&ingest, &sent, "node-user", "@segment/analytics-node").await;
    assert_eq!(by_type["identify"]["traits"]["email"], "node@example.com");
    assert_eq!(by_type["track"]["event"], "Signed Up");
    assert_eq!(by_type["track"]["properties"]["plan"], "pro");
    assert_eq!(by_type["page"]["name"], "Install");
    assert_eq!(by_type["page"]["category"], "Docs");
    assert_eq!(by_type["group"]["group_id"], "node-group");
    assert_eq!(by_type["alias"]["previous_id"], "node-anon");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rudder_sdk_node_gzip_form_labelled_batches_land_keyed_and_whole() {
    let (ingest, sent) = send_with("rudder").await;
    let types: Vec<&str> = sent.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(types, ["identify", "track", "page", "screen", "group", "alias"]);
    let by_type = assert_landed(&ingest, &sent, "rudder-user", "analytics-node").await;
    assert_eq!(by_type["identify"]["traits"]["email"], "rudder@example.com");
    assert_eq!(by_type["track"]["event"], "Signed Up");
    assert_eq!(by_type["page"]["name"], "Install");
    assert_eq!(by_type["screen"]["name"], "Home");
    assert_eq!(by_type["group"]["group_id"], "rudder-group");
    assert_eq!(by_type["alias"]["previous_id"], "rudder-anon");
}

/// The Node libraries (issue 26) each send a batch with one event the edge refuses: the
/// valid events land once, the invalid one is on the DLQ once, and the library sends each
/// event once (a 400 is not retried; two retries were allowed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_libraries_send_a_batch_with_an_invalid_event_once() {
    let tools = node_tools().await;
    for (sdk, field) in [("segment-mixed", "/event"), ("rudder-mixed", "/properties")] {
        let ingest = Ingest::start().await;
        let out = tools
            .node(&js_dir().join("node-sdks.cjs"))
            .args([sdk, &ingest.url, WRITE_KEY])
            .output()
            .expect("running node");
        assert!(
            out.status.success(),
            "{sdk}: the SDK script failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let report: Value = serde_json::from_slice(&out.stdout).expect("the script prints JSON");
        let errors = report["errors"].as_array().unwrap();
        assert!(
            !errors.is_empty()
                && errors
                    .iter()
                    .all(|e| e.as_str().unwrap().contains("400") || e == "Bad Request"),
            "{sdk}: the library reports the 400: {report}"
        );

        let mut sent: Vec<&str> = report["sent"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        sent.sort_unstable();
        // One more than expected is awaited: a resend would bring the same events again.
        let records = consume(
            &ingest.topics.ingest,
            sent.len() + 1,
            std::time::Duration::from_secs(3),
        )
        .await;
        let mut got: Vec<String> = records
            .iter()
            .map(|r| r.event()["message_id"].as_str().unwrap().to_string())
            .collect();
        got.sort();
        assert_eq!(got, sent, "{sdk}: each valid event exactly once");
        let dlq = consume(&ingest.topics.dlq, 2, std::time::Duration::from_secs(3)).await;
        assert_eq!(dlq.len(), 1, "{sdk}: the invalid event once on the DLQ");
        assert_eq!(dlq[0].json()["message_id"], report["invalid"], "{sdk}");
        assert_eq!(dlq[0].json()["field"], field, "{sdk}");

        // rudder-sdk-node sends its first event at once, alone: the rest is one batch. Each
        // event reached the edge once, and the batch with the invalid one was not resent.
        let metrics = ingest.metrics_text().await;
        let value = |series: &str| test_support::metrics::value(&metrics, series).unwrap_or(0.0);
        assert_eq!(
            (
                value("cdp_ingest_http_requests_total{route=\"batch\",status=\"400\"}"),
                value("cdp_ingest_events_total{type=\"track\",outcome=\"accepted\"}"),
                value("cdp_ingest_events_total{type=\"track\",outcome=\"rejected\"}"),
            ),
            (1.0, 3.0, 1.0),
            "{sdk}: every event on the wire once:\n{metrics}"
        );
    }
}
