//! A real Segment SDK: segment-analytics-python from PyPI, used through its ordinary API.

use std::process::Command;

use test_support::{assert_schema_valid, consume, WRITE_KEY};

use super::{Ingest, WAIT};

const SCRIPT: &str = r#"
import sys
import segment.analytics as analytics

failures = []
analytics.write_key = sys.argv[1]
analytics.host = sys.argv[2]
analytics.on_error = lambda error, items: failures.append(error)

analytics.track("py-user", "Signed Up", {"plan": "pro"})
analytics.identify("py-user", {"email": "py@example.com"})
analytics.page("py-user", "Docs", "Install", {"path": "/docs/install"})
analytics.group("py-user", "py-group", {"name": "Acme"})
analytics.alias("py-anon", "py-user")
analytics.flush()
analytics.shutdown()
if failures:
    sys.exit("uploads failed: %r" % failures)
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn segment_analytics_python_calls_land_normalised_and_keyed() {
    let python = tokio::task::spawn_blocking(test_support::python).await.unwrap();
    let ingest = Ingest::start().await;
    let out = Command::new(python)
        .args(["-c", SCRIPT, WRITE_KEY, &ingest.url])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "SDK script failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let records = consume(&ingest.topics.ingest, 5, WAIT).await;
    assert_eq!(records.len(), 5);
    let mut by_type = std::collections::BTreeMap::new();
    for r in &records {
        assert_schema_valid(&r.value);
        assert_eq!(r.key.as_deref(), Some("py-user"));
        assert_eq!(r.header("workspace_id"), Some("ws_test"));
        let value = r.event();
        assert_eq!(value["context"]["library"]["name"], "analytics-python", "{value}");
        assert!(
            value["sent_at"].is_string() && value["original_timestamp"].is_string(),
            "{value}"
        );
        by_type.insert(value["type"].as_str().unwrap().to_string(), value);
    }
    assert_eq!(by_type["track"]["event"], "Signed Up");
    assert_eq!(by_type["track"]["properties"]["plan"], "pro");
    assert_eq!(by_type["identify"]["traits"]["email"], "py@example.com");
    assert_eq!(by_type["page"]["name"], "Install");
    assert_eq!(by_type["page"]["category"], "Docs");
    assert_eq!(by_type["group"]["group_id"], "py-group");
    assert_eq!(by_type["alias"]["previous_id"], "py-anon");
}

/// Runs `tests/py/libraries.py <sdk> <mode>` with `library`'s venv against `ingest`; returns
/// the JSON line it prints.
async fn run_library(
    library: test_support::PythonSdk,
    sdk: &str,
    mode: &str,
    ingest: &Ingest,
) -> serde_json::Value {
    let python = tokio::task::spawn_blocking(move || test_support::python_with(library))
        .await
        .unwrap();
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/py/libraries.py");
    let url = ingest.url.clone();
    let (sdk, mode) = (sdk.to_string(), mode.to_string());
    let out = tokio::task::spawn_blocking({
        let (sdk, mode) = (sdk.clone(), mode.clone());
        move || {
            Command::new(python)
                .arg(script)
                .args([&sdk, &mode, WRITE_KEY, &url])
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{sdk} {mode}: the script failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{sdk} {mode}: not JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// The value of one series in the Prometheus text, 0 when absent.
fn series(text: &str, name: &str) -> f64 {
    test_support::metrics::value(text, name).unwrap_or(0.0)
}

/// The Python libraries (issue 26) each send a batch with one event the edge refuses: the
/// valid events land once, the invalid one is on the DLQ once, and the library sends the
/// batch once (it reads the 400's `code` and `message` and does not retry it; a body without
/// them made the legacy and RudderStack libraries resend it max_retries times).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_libraries_send_a_batch_with_an_invalid_event_once() {
    for (library, sdk) in [
        (test_support::SEGMENT_SDK, "segment"),
        (test_support::LEGACY_SEGMENT_SDK, "legacy"),
        (test_support::RUDDER_SDK, "rudder"),
    ] {
        let ingest = Ingest::start().await;
        let report = run_library(library, sdk, "mixed", &ingest).await;
        let errors = report["errors"].as_array().unwrap();
        assert_eq!(errors.len(), 1, "{sdk}: {report}");
        assert_eq!(errors[0]["type"], "APIError", "{sdk}: {report}");
        assert_eq!(
            (errors[0]["status"].as_u64(), errors[0]["code"].as_str()),
            (Some(400), Some("invalid_events")),
            "{sdk}: {report}"
        );
        assert_eq!(errors[0]["events"], 4, "{sdk}: one batch of four: {report}");

        let sent: Vec<&str> = report["sent"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        // Three records and no more: a resend would put each again behind them.
        let records = consume(
            &ingest.topics.ingest,
            sent.len() + 1,
            std::time::Duration::from_secs(3),
        )
        .await;
        let mut ids: Vec<String> = records
            .iter()
            .map(|r| r.event()["message_id"].as_str().unwrap().to_string())
            .collect();
        ids.sort();
        assert_eq!(ids, sent, "{sdk}: each valid event exactly once");
        let dlq = consume(&ingest.topics.dlq, 2, std::time::Duration::from_secs(3)).await;
        assert_eq!(dlq.len(), 1, "{sdk}: the invalid event once on the DLQ");
        assert_eq!(dlq[0].json()["message_id"], report["invalid"], "{sdk}");
        assert_eq!(dlq[0].json()["field"], "/event", "{sdk}");

        let metrics = ingest.metrics_text().await;
        let batches = |status: &str| {
            series(
                &metrics,
                &format!("cdp_ingest_http_requests_total{{route=\"batch\",status=\"{status}\"}}"),
            )
        };
        assert_eq!(
            (batches("400"), batches("200")),
            (1.0, 0.0),
            "{sdk}: one request on the wire:\n{metrics}"
        );
    }
}

/// An event exactly at the 32 768-byte limit as the libraries measure it (`json.dumps` of the
/// item) lands, though ingest's record of it is larger; one byte over, posted with the
/// library's own request code, is refused as `too_large` (400 for a batch item) and is on the
/// DLQ.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_libraries_events_at_the_limit_land_and_one_byte_over_is_too_large() {
    for (library, sdk) in [
        (test_support::SEGMENT_SDK, "segment"),
        (test_support::LEGACY_SEGMENT_SDK, "legacy"),
        (test_support::RUDDER_SDK, "rudder"),
    ] {
        let ingest = Ingest::start().await;
        let report = run_library(library, sdk, "limit", &ingest).await;
        assert!(report["errors"].as_array().unwrap().is_empty(), "{sdk}: {report}");
        let records = consume(&ingest.topics.ingest, 1, WAIT).await;
        assert_eq!(records.len(), 1, "{sdk}: the event at the limit: {report}");
        let value = records[0].event();
        assert_eq!(value["message_id"], report["sent"][0], "{sdk}");
        assert!(
            records[0].value.len() > 32768,
            "{sdk}: the record is larger than the event"
        );
        assert_schema_valid(&records[0].value);

        assert_eq!(report["over"]["status"], 400, "{sdk}: {report}");
        assert_eq!(report["over"]["code"], "invalid_events", "{sdk}: {report}");
        let dlq = consume(&ingest.topics.dlq, 1, WAIT).await;
        let envelope = dlq[0].json();
        assert_eq!(envelope["message_id"], report["over_id"], "{sdk}");
        assert_eq!(envelope["reason"], "too_large", "{sdk}");
        // Segment's libraries drop an item over 32 KiB themselves; RudderStack's only over
        // 4 MiB (RudderStack's servers take larger events: raise --max-event-bytes for them).
        let library_limit = if sdk == "rudder" { 4 << 20 } else { 32768 };
        assert_eq!(report["library_limit"], library_limit, "{sdk}: {report}");
    }
}
