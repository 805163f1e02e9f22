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
