//! Faults: a full producer queue (real broker), a failing DLQ and an unreachable cluster
//! (librdkafka's mock cluster, the only fault injector allowed), and start-up failures.

use std::time::Duration;

use http_front::Error;
use rdkafka::types::RDKafkaRespErr;
use serde_json::json;
use test_support::mock::{mock_topics, Fault, Mock};
use test_support::{brokers, consume, consume_from, fresh_topics};

use super::{status_json, Server, WAIT};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_dlq_write_gives_503_and_the_valid_events_are_not_produced() {
    let metrics = ::ops::install_metrics();
    let topics = mock_topics();
    let mock = Mock::start(&topics);
    let server = Server::start_with(&mock.bootstrap, topics.clone(), |c| {
        c.dlq_timeout = Duration::from_secs(3)
    })
    .await;
    mock.inject(Fault::ProduceErrors(
        RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED,
    ));
    let batch = json!({"batch": [
        {"type":"track","anonymousId":"a","event":"e","messageId":"valid"},
        {"type":"track","anonymousId":"a","messageId":"invalid"},
    ]});
    let response = server.post("/v1/batch", &batch).await;
    assert_eq!(response.headers()["retry-after"], "5");
    let (status, reply) = status_json(response).await;
    assert_eq!(status, 503, "{reply}");
    assert_eq!(reply["accepted"], 0);
    assert!(reply["error"].as_str().unwrap().contains(&topics.dlq), "{reply}");
    assert!(
        consume_from(&mock.bootstrap, &topics.ingest, 1, Duration::from_secs(3))
            .await
            .is_empty()
    );
    // The valid event was refused before it was enqueued, not enqueued and failed.
    let text = metrics.render();
    assert!(
        text.contains(r#"cdp_ingest_events_total{type="track",outcome="refused"} 2"#),
        "{text}"
    );
    assert!(
        !text.contains(r#"cdp_ingest_events_total{type="track",outcome="accepted"}"#),
        "{text}"
    );
    assert!(
        text.contains(r#"cdp_ingest_kafka_delivery_failures_total{topic="m.ingest"} 0"#),
        "{text}"
    );
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_the_producer_queue_cannot_hold_is_refused_whole_with_503() {
    let server = Server::start_with(&brokers(), fresh_topics(1).await, |c| {
        c.kafka_queue_max_messages = 5
    })
    .await;
    let batch: Vec<_> = (0..200)
        .map(|i| json!({"type":"track","anonymousId":"q","event":"e","messageId":format!("q-{i}")}))
        .collect();
    let response = server.post("/v1/batch", &json!({ "batch": batch })).await;
    assert_eq!(response.headers()["retry-after"], "5");
    let (status, reply) = status_json(response).await;
    assert_eq!(status, 503, "{reply}");
    assert_eq!(
        reply["error"],
        "cannot take events now: the producer queue is full"
    );
    assert_eq!(reply["accepted"], 0, "none of it taken: {reply}");
    // A batch that fits is taken whole; nothing of the refused one is before it.
    let batch: Vec<_> = (0..3)
        .map(|i| json!({"type":"track","anonymousId":"q","event":"e","messageId":format!("fits-{i}")}))
        .collect();
    let (status, reply) = status_json(server.post("/v1/batch", &json!({ "batch": batch })).await).await;
    assert_eq!(status, 200, "{reply}");
    let records = consume(&server.topics.ingest, 3, Duration::from_secs(20)).await;
    let ids: Vec<_> = records
        .iter()
        .map(|r| r.event()["message_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids, ["fits-0", "fits-1", "fits-2"], "only the batch that fit");
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_up_fails_clearly_without_a_cluster_or_a_topic() {
    use clap::Parser;
    let sources = test_support::sources_file();
    let spool = tempfile::tempdir().unwrap();
    let config = |brokers: &str, ingest: &str| {
        http_front::Config::parse_from([
            "ingest",
            "--brokers",
            brokers,
            "--topic-ingest",
            ingest,
            "--kafka-ping-timeout",
            "2s",
            "--sources",
            sources.path().to_str().unwrap(),
            "--spool-dir",
            spool.path().to_str().unwrap(),
        ])
    };
    let listener = || async { tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap() };

    let nobody = http_front::run(
        config("127.0.0.1:1", "cdp.ingest"),
        listener().await,
        std::future::pending(),
    )
    .await;
    let error = nobody.unwrap_err();
    assert!(
        matches!(error, Error::Kafka(kafka_producer::Error::Unreachable { .. })),
        "{error:?}"
    );
    assert!(
        error
            .to_string()
            .starts_with("cannot reach the Kafka cluster at 127.0.0.1:1"),
        "{error}"
    );

    let missing = http_front::run(
        config(&brokers(), "no-such-topic"),
        listener().await,
        std::future::pending(),
    )
    .await;
    let error = missing.unwrap_err();
    assert!(
        error
            .to_string()
            .contains("topic \"no-such-topic\" does not exist"),
        "{error}"
    );

    let no_sources = http_front::Config::parse_from(["ingest", "--sources", "/nonexistent/sources.toml"]);
    let error = http_front::run(no_sources, listener().await, std::future::pending())
        .await
        .unwrap_err();
    assert!(
        error
            .to_string()
            .starts_with("cannot read sources file /nonexistent/sources.toml"),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_whose_delivery_times_out_go_to_the_retry_topic_with_retry_headers() {
    let topics = mock_topics();
    let mock = Mock::start_with_brokers(&topics, 2);
    let server = Server::start_with(&mock.bootstrap, topics.clone(), |c| {
        c.kafka_message_timeout = Duration::from_secs(2);
        c.retry_delay = Duration::from_secs(30);
    })
    .await;
    // The ingest topic's leader goes down (and stays the leader): its records time out.
    mock.inject(Fault::BrokerDown(2));
    let started_ms = kafka_producer::retry::unix_ms_after(Duration::ZERO);
    let mut accepted = Vec::new();
    for i in 0..10 {
        let id = format!("r-{i}");
        let event = json!({"anonymousId": format!("v{}", i % 3), "event": "e", "messageId": id});
        assert_eq!(server.post("/v1/track", &event).await.status(), 200);
        accepted.push(id);
    }
    let retried = consume_from(&mock.bootstrap, &topics.retry, 10, WAIT).await;
    let mut ids: Vec<String> = retried
        .iter()
        .map(|r| r.event()["message_id"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    assert_eq!(ids, accepted, "every event that got a 200 is on the retry topic");
    for r in &retried {
        let value = r.event();
        assert_eq!(r.key.as_deref(), value["anonymous_id"].as_str(), "same key");
        assert_eq!(r.header("workspace_id"), Some("ws_test"));
        assert_eq!(r.header("source_id"), Some("src_test"));
        assert_eq!(r.header("type"), Some("track"));
        assert_eq!(r.header("retry_attempt"), Some("1"));
        assert_eq!(r.header("retry_target"), Some(topics.ingest.as_str()));
        let not_before: i64 = r.header("retry_not_before").unwrap().parse().unwrap();
        assert!(
            not_before >= started_ms + 30_000,
            "not-before {not_before} is not 30 s after {started_ms}"
        );
        assert!(
            r.header("retry_last_error").unwrap().contains("timed out"),
            "{:?}",
            r.header("retry_last_error")
        );
    }
    server.stop().await.unwrap();
}

/// An event whose record Kafka can never take (here larger than librdkafka's
/// `message.max.bytes`, lowered with `--kafka-option`) is rejected alone, in both delivery
/// modes: 400 with its item (`too_large`) and the others accepted, its DLQ envelope holding the
/// record's first KiB; the rest of the batch lands once. Never a 503 that a retry repeats.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_kafka_can_never_take_is_rejected_alone_and_the_rest_land() {
    for mode in ["buffered", "acked"] {
        let server = Server::start_with(&brokers(), fresh_topics(1).await, |c| {
            c.kafka.security.kafka_options = vec!["message.max.bytes=4000".into()];
            c.delivery_mode = clap::ValueEnum::from_str(mode, false).unwrap();
        })
        .await;
        let big = "x".repeat(6000);
        let batch = json!({"batch": [
            {"type": "track", "anonymousId": "v", "event": "a", "messageId": format!("{mode}-a")},
            {"type": "track", "anonymousId": "v", "event": "b", "messageId": format!("{mode}-b"), "properties": {"big": big}},
            {"type": "track", "anonymousId": "v", "event": "c", "messageId": format!("{mode}-c")},
        ]});
        let (status, reply) = status_json(server.post("/v1/batch", &batch).await).await;
        assert_eq!(status, 400, "{mode}: {reply}");
        assert_eq!(reply["accepted"], 2, "{mode}: {reply}");
        let items = reply["rejected"].as_array().unwrap_or_else(|| panic!("{reply}"));
        assert_eq!(items.len(), 1, "{mode}: {reply}");
        assert_eq!(items[0]["index"], 1, "{mode}: {reply}");
        assert_eq!(items[0]["reason"], "too_large", "{mode}: {reply}");
        assert_eq!(items[0]["message_id"], format!("{mode}-b"), "{mode}: {reply}");

        let records = consume(&server.topics.ingest, 2, WAIT).await;
        let ids: Vec<_> = records.iter().map(|r| r.event()["message_id"].clone()).collect();
        assert_eq!(ids, [format!("{mode}-a"), format!("{mode}-c")], "{mode}");
        let dlq = consume(&server.topics.dlq, 1, WAIT).await;
        assert_eq!(dlq.len(), 1, "{mode}: the unsendable event is not on the DLQ");
        assert_eq!(dlq[0].header("reason"), Some("too_large"), "{mode}");
        let envelope = dlq[0].json();
        assert_eq!(envelope["message_id"], format!("{mode}-b"), "{mode}: {envelope}");
        let payload = envelope["raw_payload"].as_str().unwrap_or_default();
        assert_eq!(payload.len(), 1024, "{mode}: the payload is cut to its first KiB");
        assert_eq!(envelope["raw_payload_truncated"], true, "{mode}: {envelope}");
        server.stop().await.unwrap();
    }
}

/// The DLQ topic without its leader (two brokers: broker 1 leads the DLQ and retry topics,
/// broker 2 the ingest topic) while the ingest topic delivers: the first batch with an invalid
/// event waits out the DLQ timeout and spools its envelope; the next ones are answered without
/// waiting (their envelopes spooled at once), `/readyz` says the DLQ is failing and stays 200;
/// once the leader is back every envelope is on the DLQ and every valid event on the ingest
/// topic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dlq_topic_that_does_not_acknowledge_holds_up_one_request_not_every_one() {
    let topics = test_support::Topics {
        ingest: "dlqdown.ingest".into(),
        dlq: "dlqdown.dlq".into(),
        retry: "dlqdown.retry".into(),
    };
    let mock = Mock::start_with_brokers(&topics, 2);
    let server = Server::start_with(&mock.bootstrap, topics.clone(), |c| {
        c.dlq_timeout = Duration::from_secs(3)
    })
    .await;
    mock.inject(Fault::BrokerDown(1));
    let mut answers = Vec::new();
    for i in 0..4 {
        let batch = json!({"batch": [
            {"type":"track","anonymousId":"a","event":"e","messageId":format!("ok-{i}")},
            {"type":"track","anonymousId":"a","messageId":format!("bad-{i}")},
        ]});
        let asked = std::time::Instant::now();
        let (status, reply) = status_json(server.post("/v1/batch", &batch).await).await;
        answers.push((status, reply["accepted"].clone(), asked.elapsed()));
    }
    eprintln!("{answers:?}");
    for (status, accepted, _) in &answers {
        assert_eq!((*status, accepted.as_u64()), (400, Some(1)), "{answers:?}");
    }
    for (_, _, took) in &answers[1..] {
        assert!(
            *took < Duration::from_secs(2),
            "a later batch waited on the DLQ topic: {answers:?}"
        );
    }
    let (status, body) = status_json(server.client.get(server.url("/readyz")).send().await.unwrap()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["kafka_dlq_failing"], true, "{body}");
    mock.inject(Fault::BrokerUp(1));
    // The first batch's envelope may be there twice (acknowledged after it was spooled).
    let dlq = consume_from(&mock.bootstrap, &topics.dlq, 5, Duration::from_secs(8)).await;
    let mut ids: Vec<String> = dlq
        .iter()
        .map(|r| r.json()["message_id"].as_str().unwrap_or_default().to_string())
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids, ["bad-0", "bad-1", "bad-2", "bad-3"]);
    let ingest = consume_from(&mock.bootstrap, &topics.ingest, 4, WAIT).await;
    assert_eq!(ingest.len(), 4);
    server.stop().await.unwrap();
}
