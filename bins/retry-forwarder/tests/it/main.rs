//! The `retry-forwarder` binary: crash safety (SIGKILL), graceful commits (SIGTERM), two
//! instances sharing one group, and Kafka security (SASL, TLS) in `security`.

mod security;

use std::collections::BTreeSet;
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::json;
use test_support::{brokers, committed, consume, fresh_topics, produce, Topics};

/// A running forwarder process.
struct Forwarder {
    child: Child,
    metrics_url: String,
}

impl Forwarder {
    fn start(topics: &Topics, group: &str) -> Forwarder {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(env!("CARGO_BIN_EXE_retry-forwarder"))
            .env("CDP_KAFKA_BROKERS", brokers())
            .env("CDP_TOPIC_INGEST", &topics.ingest)
            .env("CDP_TOPIC_DLQ", &topics.dlq)
            .env("CDP_TOPIC_RETRY", &topics.retry)
            .env("CDP_GROUP_ID", group)
            .env("CDP_METRICS_LISTEN", format!("127.0.0.1:{port}"))
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        Forwarder {
            child,
            metrics_url: format!("http://127.0.0.1:{port}/metrics"),
        }
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    fn wait(mut self) -> bool {
        self.child.wait().unwrap().success()
    }

    /// A series' value (with its labels, or a bare name); `None` when absent or the process
    /// does not answer.
    async fn series(&self, series: &str) -> Option<f64> {
        let text = test_support::metrics::scrape(&self.metrics_url).await?;
        test_support::metrics::value(&text, series)
    }

    /// [`Forwarder::series`], 0 when absent.
    async fn metric(&self, series: &str) -> f64 {
        self.series(series).await.unwrap_or(0.0)
    }

    /// Waits until the instance has retry partitions assigned.
    async fn wait_assigned(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.metric("cdp_retry_forwarder_assigned_partitions").await < 1.0 {
            assert!(Instant::now() < deadline, "no partitions assigned within 60 s");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as i64
}

/// Puts `n` retry records for the ingest topic on the retry topic, due at `due_ms`.
async fn fill(topics: &Topics, n: usize, due_ms: i64) -> BTreeSet<String> {
    let due = due_ms.to_string();
    let mut ids = BTreeSet::new();
    for i in 0..n {
        let id = format!("m-{i}");
        let value = json!({"message_id": id, "anonymous_id": format!("k{}", i % 10)});
        let headers = [
            ("retry_attempt", "1"),
            ("retry_target", topics.ingest.as_str()),
            ("retry_not_before", due.as_str()),
        ];
        produce(
            &topics.retry,
            Some(&format!("k{}", i % 10)),
            value.to_string().as_bytes(),
            &headers,
        )
        .await;
        ids.insert(id);
    }
    ids
}

/// Message ids on the ingest topic (all records, duplicates counted in the second value).
async fn forwarded_ids(topics: &Topics, expected: usize, timeout: Duration) -> (BTreeSet<String>, usize) {
    let deadline = Instant::now() + timeout;
    loop {
        let records = consume(&topics.ingest, usize::MAX, Duration::from_secs(3)).await;
        let ids: BTreeSet<String> = records
            .iter()
            .map(|r| r.json()["message_id"].as_str().unwrap().to_string())
            .collect();
        if ids.len() >= expected || Instant::now() > deadline {
            return (ids, records.len());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forwarder_killed_mid_stream_gives_duplicates_never_a_loss() {
    let topics = fresh_topics(1).await;
    let expected = fill(&topics, 300, now_ms()).await;
    let group = format!("g-{}", topics.retry);
    let first = Forwarder::start(&topics, &group);
    let seen = consume(&topics.ingest, 60, Duration::from_secs(30)).await;
    assert!(
        seen.len() >= 60,
        "the first forwarder forwarded only {}",
        seen.len()
    );
    first.signal("-KILL");
    assert!(!first.wait());

    let _second = Forwarder::start(&topics, &group);
    let (ids, total) = forwarded_ids(&topics, expected.len(), Duration::from_secs(60)).await;
    let missing: Vec<_> = expected.difference(&ids).collect();
    assert!(missing.is_empty(), "lost after SIGKILL: {missing:?}");
    eprintln!(
        "{} records forwarded for {} ids: {} duplicates",
        total,
        ids.len(),
        total - ids.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_commits_what_was_forwarded_so_a_restart_repeats_nothing() {
    let topics = fresh_topics(1).await;
    let expected = fill(&topics, 50, now_ms()).await;
    let group = format!("g-{}", topics.retry);
    let first = Forwarder::start(&topics, &group);
    let (ids, _) = forwarded_ids(&topics, expected.len(), Duration::from_secs(30)).await;
    assert_eq!(ids, expected);
    first.signal("-TERM");
    assert!(first.wait(), "forwarder did not exit cleanly on SIGTERM");
    // What it forwarded is committed: the group's offset is the retry topic's end.
    assert_eq!(committed(&group, &topics.retry).await, [(0, Some(50))]);

    let second = Forwarder::start(&topics, &group);
    second.wait_assigned().await;
    // The second instance starts at the committed offset: its lag is known and 0, and it
    // forwards nothing.
    let deadline = Instant::now() + Duration::from_secs(30);
    while second
        .series("cdp_retry_forwarder_consumer_lag_records{partition=\"0\"}")
        .await
        != Some(0.0)
    {
        assert!(Instant::now() < deadline, "no lag of 0 reported within 30 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(second.metric("cdp_retry_forwarder_forwarded_total").await, 0.0);
    let records = consume(&topics.ingest, 51, Duration::from_secs(3)).await;
    assert_eq!(
        records.len(),
        50,
        "a restart after SIGTERM forwarded records again"
    );
    drop(second);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_forwarders_in_one_group_share_the_partitions_and_deliver_each_record() {
    let topics = fresh_topics(1).await;
    let retry4 = format!("{}4", topics.retry);
    kafka_producer::ensure_topics(&brokers(), &[(&retry4, 4)])
        .await
        .unwrap();
    let topics = Topics {
        retry: retry4,
        ..topics
    };
    let group = format!("g-{}", topics.retry);
    let a = Forwarder::start(&topics, &group);
    let b = Forwarder::start(&topics, &group);
    // Both instances hold partitions before the records fall due.
    a.wait_assigned().await;
    b.wait_assigned().await;
    let expected = fill(&topics, 200, now_ms() + 2_000).await;
    let (ids, _) = forwarded_ids(&topics, expected.len(), Duration::from_secs(60)).await;
    assert_eq!(ids, expected);
    let forwarded = "cdp_retry_forwarder_forwarded_total";
    let (by_a, by_b) = (a.metric(forwarded).await, b.metric(forwarded).await);
    assert!(
        by_a > 0.0 && by_b > 0.0,
        "one instance did all the work: {by_a} and {by_b}"
    );
    assert!(by_a + by_b >= 200.0);
}
