//! dlq-replayer in-process against the real broker, with DLQ records written by a real ingest.

use std::time::Duration;

use clap::Parser;
use replayer::Summary;
use serde_json::json;
use test_support::{brokers, committed, consume, fresh_topics, produce, sources_file, Topics, WRITE_KEY};

const WAIT: Duration = Duration::from_secs(20);

/// Runs a one-shot replay with `extra` flags and returns its summary.
async fn replay(topics: &Topics, group: &str, extra: &[&str]) -> Summary {
    let brokers = brokers();
    let mut args = vec![
        "dlq-replayer",
        "--brokers",
        &brokers,
        "--topic-ingest",
        &topics.ingest,
        "--topic-dlq",
        &topics.dlq,
        "--topic-retry",
        &topics.retry,
        "--group-id",
        group,
        "--until-end",
    ];
    args.extend_from_slice(extra);
    let config = replayer::Config::parse_from(args);
    tokio::time::timeout(
        Duration::from_secs(60),
        replayer::run(config, std::future::pending()),
    )
    .await
    .expect("the replay did not end on its own")
    .unwrap()
}

/// Posts events to a real ingest (default limits) so that it writes the DLQ records.
async fn ingest_rejects(topics: &Topics, requests: &[(&str, serde_json::Value)]) {
    use clap::Parser as _;
    let sources = sources_file();
    let spool = tempfile::tempdir().unwrap();
    let config = http_front::Config::parse_from([
        "ingest",
        "--brokers",
        &brokers(),
        "--topic-ingest",
        &topics.ingest,
        "--topic-dlq",
        &topics.dlq,
        "--topic-retry",
        &topics.retry,
        "--sources",
        sources.path().to_str().unwrap(),
        "--spool-dir",
        spool.path().to_str().unwrap(),
    ]);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(http_front::run(config, listener, async {
        let _ = stopped.await;
    }));
    let client = reqwest::Client::new();
    for (path, body) in requests {
        let mut tries = 0;
        let response = loop {
            match client
                .post(format!("{url}{path}"))
                .basic_auth(WRITE_KEY, Some(""))
                .json(body)
                .send()
                .await
            {
                Ok(r) => break r,
                Err(_) if tries < 100 => {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("{e}"),
            }
        };
        assert!(
            response.status().is_client_error(),
            "{path} {body} was not rejected"
        );
    }
    let _ = stop.send(());
    server.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_rejected_for_its_size_is_replayed_once_the_limit_is_raised() {
    let topics = fresh_topics(3).await;
    let blob = "x".repeat(40 * 1024);
    ingest_rejects(
        &topics,
        &[
            ("/v1/track", json!({"anonymousId": "v-big", "event": "Big", "messageId": "big-1", "properties": {"blob": blob}})),
            ("/v1/batch", json!({"batch": [{"type": "identify", "userId": "u-big", "traits": {"blob": blob}}]})),
            ("/v1/track", json!({"anonymousId": "v-bad", "messageId": "bad-1"})),
        ],
    )
    .await;
    let dlq = consume(&topics.dlq, 3, WAIT).await;
    assert_eq!(dlq.len(), 3);
    let generated_id = dlq[1].json()["message_id"].as_str().unwrap().to_string();
    let received_at = dlq[0].json()["received_at"].as_str().unwrap().to_string();

    let summary = replay(&topics, "g-raise", &["--max-event-bytes", "65536"]).await;
    assert_eq!(summary.replayed, 2, "{summary}");
    assert_eq!(summary.still_failing.get("missing_field"), Some(&1), "{summary}");

    let records = consume(&topics.ingest, 2, WAIT).await;
    assert_eq!(records.len(), 2);
    let big = records
        .iter()
        .find(|r| r.key.as_deref() == Some("v-big"))
        .expect("the track event");
    let value = big.event();
    assert_eq!(value["message_id"], "big-1");
    assert_eq!(value["type"], "track", "the type the path set is kept");
    assert_eq!(
        value["received_at"], received_at,
        "the original receipt time is kept"
    );
    assert_eq!(value["context"]["ip"], "127.0.0.1");
    assert_eq!(big.header("workspace_id"), Some("ws_test"));
    assert_eq!(big.header("source_id"), Some("src_test"));
    assert_eq!(big.header("type"), Some("track"));
    let identify = records
        .iter()
        .find(|r| r.key.as_deref() == Some("u-big"))
        .expect("the batch item");
    assert_eq!(
        identify.event()["message_id"],
        generated_id,
        "the id ingest generated is kept"
    );

    // Replayed records are committed: a second run finds nothing to do.
    let again = replay(&topics, "g-raise", &["--max-event-bytes", "65536"]).await;
    assert_eq!(again, Summary::default());
}

/// One synthetic DLQ record: id, reason, workspace, source, received at.
type Row = (String, String, &'static str, &'static str, &'static str);
/// Flags, and which rows they select.
type Case = (Vec<&'static str>, Box<dyn Fn(&Row) -> bool>);

/// A DLQ envelope whose raw payload is valid today.
fn envelope(id: &str, reason: &str, workspace: &str, source: &str, received_at: &str) -> serde_json::Value {
    json!({
        "workspace_id": workspace, "source_id": source, "message_id": id, "reason": reason, "field": "",
        "raw_payload": json!({"type": "track", "anonymousId": format!("v-{id}"), "event": "e"}).to_string(),
        "received_at": received_at,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_filter_selects_exactly_its_records_and_a_dry_run_changes_nothing() {
    let topics = fresh_topics(1).await;
    let mut all = Vec::new();
    for (i, reason) in ["missing_field", "too_large"].iter().enumerate() {
        for workspace in ["w1", "w2"] {
            for source in ["s1", "s2"] {
                for received in ["2024-01-01T00:00:00.000Z", "2024-06-01T00:00:00.000Z"] {
                    let id = format!("{i}-{workspace}-{source}-{}", &received[5..7]);
                    let value = envelope(&id, reason, workspace, source, received);
                    produce(
                        &topics.dlq,
                        Some(workspace),
                        value.to_string().as_bytes(),
                        &[("reason", reason)],
                    )
                    .await;
                    all.push((id, reason.to_string(), workspace, source, received));
                }
            }
        }
    }
    produce(&topics.dlq, None, b"not an envelope", &[]).await;

    let cases: Vec<Case> = vec![
        (vec![], Box::new(|_| true)),
        (vec!["--reason", "too_large"], Box::new(|r| r.1 == "too_large")),
        (vec!["--reason", "too_large,missing_field"], Box::new(|_| true)),
        (vec!["--workspace-id", "w2"], Box::new(|r| r.2 == "w2")),
        (vec!["--source-id", "s1"], Box::new(|r| r.3 == "s1")),
        (
            vec!["--received-after", "2024-03-01T00:00:00Z"],
            Box::new(|r| r.4 > "2024-03"),
        ),
        (
            vec!["--received-before", "2024-03-01T00:00:00Z"],
            Box::new(|r| r.4 < "2024-03"),
        ),
        (
            vec![
                "--workspace-id",
                "w1",
                "--source-id",
                "s2",
                "--reason",
                "missing_field",
            ],
            Box::new(|r| r.2 == "w1" && r.3 == "s2" && r.1 == "missing_field"),
        ),
    ];
    for (flags, selects) in &cases {
        let mut args = vec!["--dry-run", "--from-beginning"];
        args.extend_from_slice(flags);
        let summary = replay(&topics, "g-dry", &args).await;
        let expected = all.iter().filter(|r| selects(r)).count() as u64;
        assert_eq!(summary.replayed, expected, "{flags:?}: {summary}");
        assert_eq!(
            summary.filtered_out,
            all.len() as u64 - expected,
            "{flags:?}: {summary}"
        );
        assert_eq!(summary.undecodable, 1);
        assert!(summary.dry_run);
    }
    assert!(
        consume(&topics.ingest, 1, Duration::from_secs(2))
            .await
            .is_empty(),
        "a dry run produced"
    );
    assert_eq!(
        committed("g-dry", &topics.dlq).await,
        [(0, None)],
        "a dry run committed offsets"
    );

    // For real, with one filter: exactly its records land.
    let summary = replay(
        &topics,
        "g-real",
        &["--workspace-id", "w2", "--received-after", "2024-03-01T00:00:00Z"],
    )
    .await;
    let expected: Vec<String> = all
        .iter()
        .filter(|r| r.2 == "w2" && r.4 > "2024-03")
        .map(|r| r.0.clone())
        .collect();
    assert_eq!(summary.replayed, expected.len() as u64);
    let records = consume(&topics.ingest, expected.len() + 1, Duration::from_secs(5)).await;
    let mut ids: Vec<String> = records
        .iter()
        .map(|r| r.event()["message_id"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    let mut expected = expected;
    expected.sort();
    assert_eq!(ids, expected);
    assert_eq!(
        committed("g-real", &topics.dlq).await,
        [(0, Some(all.len() as i64 + 1))]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_that_still_fail_are_parked_when_a_park_topic_is_set() {
    let topics = fresh_topics(1).await;
    let park = format!("{}.park", topics.dlq);
    kafka_producer::ensure_topics(&brokers(), &[(&park, 1)])
        .await
        .unwrap();
    let mut bad = envelope(
        "still-bad",
        "missing_field",
        "w1",
        "s1",
        "2024-01-01T00:00:00.000Z",
    );
    bad["raw_payload"] = json!(json!({"type": "track", "anonymousId": "v"}).to_string());
    produce(
        &topics.dlq,
        Some("w1"),
        bad.to_string().as_bytes(),
        &[("reason", "missing_field")],
    )
    .await;
    let summary = replay(&topics, "g-park", &["--park-topic", &park]).await;
    assert_eq!(summary.still_failing.get("missing_field"), Some(&1));
    let parked = consume(&park, 1, WAIT).await;
    assert_eq!(parked.len(), 1);
    assert_eq!(parked[0].header("reason"), Some("missing_field"));
    assert_eq!(parked[0].json()["field"], "/event");
    assert_eq!(parked[0].json()["message_id"], "still-bad");
}
