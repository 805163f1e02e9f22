//! Admission under attack (issue 17): work before authentication bounded by the pre-parse
//! scan, the per-request output budget, and whole-request admission in buffered mode.

use std::collections::HashSet;
use std::time::Duration;

use serde_json::{json, Value};
use test_support::mock::{mock_topics, Fault, Mock};
use test_support::{consume, consume_from};

use super::{status_json, Server, WAIT};

use test_support::metrics::expect as metric;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_keys_without_a_write_key_are_refused_by_the_scan_before_parsing() {
    let server = Server::start().await;
    // The issue's body: 102 388 copies of `"":0` in properties (512 KB), no write key.
    let copies = vec![r#""":0"#; 102_388].join(",");
    let body = format!(r#"{{"anonymousId":"a","event":"e","properties":{{{copies}}}}}"#);
    assert!(body.len() > 500_000 && body.len() <= 500 * 1024, "{}", body.len());
    let response = server
        .client
        .post(server.url("/v1/track"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    let (status, reply) = status_json(response).await;
    // Refused by the scan (before parsing, hence before authentication can be looked at).
    assert_eq!(status, 400, "{reply}");
    let rejected = &reply["rejected"][0];
    assert_eq!(rejected["reason"], "too_many_keys", "{reply}");
    assert_eq!(rejected["field"], "/properties", "{reply}");
    assert!(
        rejected["detail"]
            .as_str()
            .unwrap()
            .contains("found before parsing"),
        "{reply}"
    );
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_amplifying_batch_gets_413_and_nothing_of_it_is_written() {
    let metrics = ::ops::install_metrics();
    let server = Server::start().await;
    // 147 KB that would become 2 500 events of 30 KB each: 75 MB.
    let items: Vec<Value> = (0..2500)
        .map(|i| json!({"type": "track", "event": "e", "anonymousId": "a", "messageId": format!("amp-{i}")}))
        .collect();
    let batch = json!({"batch": items, "context": {"page": {"title": "t".repeat(30_000)}}});
    let (status, reply) = status_json(server.post("/v1/batch", &batch).await).await;
    assert_eq!(status, 413, "{reply}");
    assert!(
        reply["error"]
            .as_str()
            .unwrap()
            .contains("as normalised are over the limit of 2048000 bytes"),
        "{reply}"
    );
    // Sentinels sent after: the same key (one partition) on the ingest topic, the same
    // workspace (the DLQ's key) on the DLQ. What the refused batches wrote would be before them.
    let ok = json!({"anonymousId": "a", "event": "e", "messageId": "sentinel"});
    assert_eq!(server.post("/v1/track", &ok).await.status(), 200);
    let invalid = json!({"anonymousId": "a", "messageId": "dlq-sentinel"});
    assert_eq!(server.post("/v1/track", &invalid).await.status(), 400);
    let ingest = consume(&server.topics.ingest, 1, WAIT).await;
    assert_eq!(ingest.len(), 1);
    assert_eq!(ingest[0].event()["message_id"], "sentinel");
    let dlq = consume(&server.topics.dlq, 1, WAIT).await;
    assert_eq!(dlq.len(), 1);
    assert_eq!(dlq[0].json()["message_id"], "dlq-sentinel");
    let text = metrics.render();
    assert_eq!(
        metric(&text, "cdp_ingest_output_budget_exceeded_total"),
        1.0,
        "{text}"
    );
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_queue_that_fills_no_503_batch_has_any_event_on_the_topic() {
    let metrics = ::ops::install_metrics();
    let topics = mock_topics();
    let mock = Mock::start(&topics);
    let server = Server::start_with(&mock.bootstrap, topics.clone(), |c| {
        c.kafka_queue_max_messages = 30;
    })
    .await;
    mock.inject(Fault::Rtt(1, Duration::from_millis(300)));
    let server = std::sync::Arc::new(server);
    let mut clients = Vec::new();
    for client in 0..4 {
        let server = server.clone();
        clients.push(tokio::spawn(async move {
            let mut outcomes = Vec::new();
            for b in 0..8 {
                let ids: Vec<String> = (0..12).map(|i| format!("c{client}-b{b}-{i}")).collect();
                let items: Vec<Value> = ids
                    .iter()
                    .enumerate()
                    .map(|(i, id)| json!({"type": "track", "event": "e", "anonymousId": format!("v{}", i % 3), "messageId": id}))
                    .collect();
                let (status, reply) = status_json(server.post("/v1/batch", &json!({"batch": items})).await).await;
                outcomes.push((status, reply, ids));
            }
            outcomes
        }));
    }
    let (mut accepted, mut refused) = (Vec::new(), Vec::new());
    for client in clients {
        for (status, reply, ids) in client.await.unwrap() {
            match status {
                200 => accepted.extend(ids),
                503 => {
                    assert_eq!(reply["accepted"], 0, "{reply}");
                    refused.extend(ids);
                }
                other => panic!("status {other}: {reply}"),
            }
        }
    }
    assert!(!refused.is_empty(), "the 30-record queue never filled");
    assert!(!accepted.is_empty(), "nothing was accepted");
    mock.inject(Fault::Rtt(1, Duration::ZERO));
    // One sentinel per key, sent after every batch: on each key's partition, whatever any
    // batch enqueued comes before it.
    let sentinels: Vec<String> = (0..3).map(|k| format!("sentinel-{k}")).collect();
    for (k, id) in sentinels.iter().enumerate() {
        let event = json!({"anonymousId": format!("v{k}"), "event": "e", "messageId": id});
        assert_eq!(server.post("/v1/track", &event).await.status(), 200);
    }
    let expected: HashSet<&str> = accepted.iter().chain(&sentinels).map(String::as_str).collect();
    let records = consume_from(&mock.bootstrap, &topics.ingest, expected.len(), WAIT).await;
    let found: Vec<String> = records
        .iter()
        .map(|r| r.event()["message_id"].as_str().unwrap().to_string())
        .collect();
    let taken_from_503s: Vec<&String> = found.iter().filter(|id| refused.contains(id)).collect();
    assert!(
        taken_from_503s.is_empty(),
        "events of 503'd batches on the topic: {taken_from_503s:?}"
    );
    let found: HashSet<&str> = found.iter().map(String::as_str).collect();
    assert_eq!(
        found, expected,
        "every accepted event and every sentinel, nothing else"
    );
    let text = metrics.render();
    assert!(
        metric(&text, "cdp_ingest_admissions_refused_total{why=\"queue\"}") >= 1.0,
        "{text}"
    );
    assert!(!text.contains("cdp_ingest_partial_admissions_total"), "{text}");
    let server = std::sync::Arc::into_inner(server).unwrap();
    server.stop().await.unwrap();
}
