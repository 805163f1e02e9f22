//! retry-forwarder in-process against the real broker: timing, order, re-queues, the DLQ.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::Parser;
use serde_json::json;
use test_support::{brokers, consume, fresh_topics, produce, Topics};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

const WAIT: Duration = Duration::from_secs(30);

/// An in-process forwarder.
struct Forwarder {
    stop: oneshot::Sender<()>,
    task: JoinHandle<Result<(), forwarder::Error>>,
}

impl Forwarder {
    fn start(topics: &Topics, extra: &[&str]) -> Forwarder {
        let (brokers, group) = (brokers(), format!("g-{}", topics.retry));
        let mut args = vec![
            "retry-forwarder",
            "--brokers",
            &brokers,
            "--topic-ingest",
            &topics.ingest,
            "--topic-dlq",
            &topics.dlq,
            "--topic-retry",
            &topics.retry,
            "--group-id",
            &group,
        ];
        args.extend_from_slice(extra);
        let config = forwarder::Config::parse_from(args);
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(forwarder::run(config, async {
            let _ = stopped.await;
        }));
        Forwarder { stop, task }
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        self.task.await.unwrap().unwrap();
    }
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as i64
}

/// Puts a retry record on the retry topic.
async fn retry_record(
    topics: &Topics,
    key: &str,
    value: &serde_json::Value,
    attempt: &str,
    not_before_ms: i64,
) {
    let not_before = not_before_ms.to_string();
    let headers = [
        ("workspace_id", "ws_test"),
        ("source_id", "src_test"),
        ("type", "track"),
        ("retry_attempt", attempt),
        ("retry_target", topics.ingest.as_str()),
        ("retry_not_before", not_before.as_str()),
        ("retry_last_error", "Local: Message timed out"),
    ];
    produce(&topics.retry, Some(key), value.to_string().as_bytes(), &headers).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_are_forwarded_at_or_after_their_not_before_time_in_key_order() {
    let topics = fresh_topics(1).await;
    let start = now_ms();
    for seq in 0..12 {
        // Due times spread over 0-3 s, not monotonic, all on one key.
        let not_before = start + [0, 2500, 1000, 3000][seq % 4];
        let value = json!({"message_id": format!("m-{seq}"), "seq": seq, "not_before": not_before});
        retry_record(&topics, "visitor-1", &value, "1", not_before).await;
    }
    let forwarder = Forwarder::start(&topics, &[]);
    let records = consume(&topics.ingest, 12, WAIT).await;
    assert_eq!(records.len(), 12);
    for (i, r) in records.iter().enumerate() {
        let value = r.json();
        assert_eq!(value["seq"], i, "key order kept");
        let not_before = value["not_before"].as_i64().unwrap();
        let forwarded_at = r.timestamp_ms.unwrap();
        assert!(
            forwarded_at >= not_before,
            "record {i} forwarded at {forwarded_at}, before {not_before}"
        );
        assert_eq!(r.key.as_deref(), Some("visitor-1"));
        assert_eq!(r.header("workspace_id"), Some("ws_test"));
        assert_eq!(r.header("type"), Some("track"));
        assert!(
            r.headers.keys().all(|k| !k.starts_with("retry_")),
            "retry headers left: {:?}",
            r.headers
        );
    }
    forwarder.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_target_is_requeued_with_a_higher_attempt_then_dead_lettered() {
    let topics = fresh_topics(1).await;
    let value = json!({"message_id": "m-fail", "anonymous_id": "v"});
    let headers_target = "invalid/topic name";
    let not_before = now_ms().to_string();
    let headers = [
        ("workspace_id", "ws_test"),
        ("source_id", "src_test"),
        ("retry_attempt", "1"),
        ("retry_target", headers_target),
        ("retry_not_before", not_before.as_str()),
    ];
    produce(&topics.retry, Some("v"), value.to_string().as_bytes(), &headers).await;
    let forwarder = Forwarder::start(
        &topics,
        &[
            "--retry-max-attempts",
            "3",
            "--retry-backoff-base",
            "200ms",
            "--retry-backoff-cap",
            "1s",
            "--produce-timeout",
            "2s",
        ],
    );
    let dlq = consume(&topics.dlq, 1, WAIT).await;
    assert_eq!(dlq.len(), 1, "no DLQ record");
    assert_eq!(dlq[0].header("reason"), Some("retries_exhausted"));
    assert_eq!(dlq[0].key.as_deref(), Some("ws_test"));
    let envelope = dlq[0].json();
    assert_eq!(envelope["reason"], "retries_exhausted");
    assert_eq!(envelope["message_id"], "m-fail");
    assert_eq!(envelope["workspace_id"], "ws_test");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(envelope["raw_payload"].as_str().unwrap()).unwrap(),
        value
    );

    let trail = consume(&topics.retry, 3, WAIT).await;
    let attempts: Vec<_> = trail
        .iter()
        .map(|r| r.header("retry_attempt").unwrap().to_string())
        .collect();
    assert_eq!(attempts, ["1", "2", "3"]);
    for pair in trail.windows(2) {
        let before: i64 = pair[0].header("retry_not_before").unwrap().parse().unwrap();
        let after: i64 = pair[1].header("retry_not_before").unwrap().parse().unwrap();
        assert!(after > before, "backoff did not move not-before forward");
        assert!(!pair[1].header("retry_last_error").unwrap().is_empty());
        assert_eq!(pair[1].header("retry_target"), Some(headers_target));
        assert_eq!(pair[1].key.as_deref(), Some("v"));
    }
    forwarder.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_without_valid_retry_headers_are_dead_lettered_as_invalid() {
    let topics = fresh_topics(1).await;
    produce(&topics.retry, Some("k"), br#"{"message_id":"no-headers"}"#, &[]).await;
    produce(
        &topics.retry,
        Some("k"),
        br#"{"message_id":"bad-attempt"}"#,
        &[
            ("retry_attempt", "x"),
            ("retry_target", "t"),
            ("retry_not_before", "0"),
        ],
    )
    .await;
    produce(
        &topics.retry,
        Some("k"),
        b"not json",
        &[("workspace_id", "ws_test")],
    )
    .await;
    let forwarder = Forwarder::start(&topics, &[]);
    let dlq = consume(&topics.dlq, 3, WAIT).await;
    let ids: Vec<_> = dlq
        .iter()
        .map(|r| r.json()["message_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids[..2], ["no-headers", "bad-attempt"]);
    assert!(ids[2].starts_with(&format!("{}/0@", topics.retry)), "{}", ids[2]);
    assert!(dlq
        .iter()
        .all(|r| r.header("reason") == Some("invalid_retry_record")));
    assert_eq!(dlq[2].json()["raw_payload"], "not json");
    assert_eq!(dlq[2].json()["workspace_id"], "ws_test");
    forwarder.stop().await;
}
