//! Nothing accepted is ever lost: an outage longer than the message timeout, a full queue under
//! a slow broker, a fatal idempotence error and a full spool, injected with librdkafka's mock
//! cluster. Each test's oracle: every event that got a 200 is on the ingest, retry or DLQ topic.

use std::time::Duration;

use rdkafka::types::RDKafkaRespErr;
use serde_json::{json, Value};
use test_support::assert_nothing_lost;

use super::{status_json, Server, WAIT};
use test_support::mock::{mock_topics, Fault, Mock};

/// Posts single events `{prefix}-0..n` (three visitors) one after the other; returns the ids
/// that got a 200 and every status.
async fn post_events(server: &Server, prefix: &str, n: usize) -> (Vec<String>, Vec<u16>) {
    let (mut accepted, mut statuses) = (Vec::new(), Vec::new());
    for i in 0..n {
        let id = format!("{prefix}-{i}");
        let event = json!({"anonymousId": format!("v{}", i % 3), "event": "e", "messageId": id});
        let status = server.post("/v1/track", &event).await.status().as_u16();
        if status == 200 {
            accepted.push(id);
        }
        statuses.push(status);
    }
    (accepted, statuses)
}

async fn readyz(server: &Server) -> (u16, Value) {
    status_json(server.client.get(server.url("/readyz")).send().await.unwrap()).await
}

/// Polls `/readyz` until `check` holds on its body (20 s at most).
async fn wait_ready_body(server: &Server, what: &str, check: impl Fn(&Value) -> bool) -> Value {
    let mut last = Value::Null;
    for _ in 0..200 {
        last = readyz(server).await.1;
        if check(&last) {
            return last;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("/readyz never showed {what}: {last}");
}

use test_support::metrics::expect as metric;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_longer_than_the_message_timeout_is_spooled_then_drained() {
    let metrics = ::ops::install_metrics();
    let topics = mock_topics();
    let mock = Mock::start(&topics);
    let server = Server::start_with(&mock.bootstrap, topics.clone(), |c| {
        c.kafka_message_timeout = Duration::from_secs(2);
    })
    .await;
    let (mut accepted, _) = post_events(&server, "before", 5).await;
    mock.inject(Fault::BrokerDown(1));
    // Some of these reach librdkafka's queue before it notices and time out there; the rest
    // are spooled at once.
    for round in 0..4 {
        let (ids, statuses) = post_events(&server, &format!("down{round}"), 5).await;
        assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
        accepted.extend(ids);
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    // Everything not delivered is in the spool, and ingest stays ready: the spool has room.
    // (The five sent before the outage may be among them.)
    let body = wait_ready_body(&server, "20 spooled records", |b| {
        b["spool"]["records"].as_u64().unwrap() >= 20
    })
    .await;
    assert_eq!(body["kafka_reachable"], false, "{body}");
    assert_eq!(readyz(&server).await.0, 200);
    let spool_files = std::fs::read_dir(server.spool.path()).unwrap().count();
    assert!(spool_files >= 2, "a lock file and a segment: {spool_files}");

    mock.inject(Fault::BrokerUp(1));
    let landed = assert_nothing_lost(&mock.bootstrap, &topics, &accepted, WAIT).await;
    assert_eq!(landed.counts.len(), 25);
    wait_ready_body(&server, "an empty spool", |b| b["spool"]["records"] == 0).await;
    let text = metrics.render();
    assert!(metric(&text, "cdp_ingest_spool_drained_total") >= 20.0, "{text}");
    assert_eq!(metric(&text, "cdp_ingest_kafka_records_lost_total"), 0.0);
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_under_a_slow_broker_gives_503s_and_every_200_is_delivered() {
    let topics = mock_topics();
    let mock = Mock::start(&topics);
    let server = Server::start_with(&mock.bootstrap, topics.clone(), |c| {
        c.kafka_queue_max_messages = 5;
    })
    .await;
    mock.inject(Fault::Rtt(1, Duration::from_millis(500)));
    let server = std::sync::Arc::new(server);
    let mut clients = Vec::new();
    for client in 0..4 {
        let server = server.clone();
        clients.push(tokio::spawn(async move {
            post_events(&server, &format!("c{client}"), 25).await
        }));
    }
    let (mut accepted, mut statuses) = (Vec::new(), Vec::new());
    for client in clients {
        let (ids, s) = client.await.unwrap();
        accepted.extend(ids);
        statuses.extend(s);
    }
    assert!(
        statuses.contains(&503),
        "the 5-record queue never filled: {statuses:?}"
    );
    assert!(statuses.iter().all(|s| *s == 200 || *s == 503), "{statuses:?}");
    mock.inject(Fault::Rtt(1, Duration::ZERO));
    assert_nothing_lost(&mock.bootstrap, &topics, &accepted, WAIT).await;
    let server = std::sync::Arc::into_inner(server).unwrap();
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fatal_idempotence_error_replaces_the_producer_and_loses_nothing() {
    let metrics = ::ops::install_metrics();
    let topics = mock_topics();
    let mock = Mock::start(&topics);
    let server = Server::start_with(&mock.bootstrap, topics.clone(), |_| {}).await;
    let (mut accepted, _) = post_events(&server, "before", 5).await;
    // The head-of-line produce request fails with a sequence error: librdkafka raises a
    // fatal error, the idempotent producer cannot go on.
    mock.inject(Fault::ProduceErrorsN(
        RDKafkaRespErr::RD_KAFKA_RESP_ERR_OUT_OF_ORDER_SEQUENCE_NUMBER,
        1,
    ));
    let (ids, statuses) = post_events(&server, "fatal", 20).await;
    accepted.extend(ids);
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    let mut rebuilds = 0.0;
    for _ in 0..100 {
        rebuilds = metric(&metrics.render(), "cdp_ingest_kafka_producer_rebuilds_total");
        if rebuilds > 0.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        rebuilds,
        1.0,
        "the producer was not replaced:\n{}",
        metrics.render()
    );
    wait_ready_body(&server, "readiness back", |b| b["success"] == true).await;
    let (ids, statuses) = post_events(&server, "after", 5).await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    accepted.extend(ids);
    assert_nothing_lost(&mock.bootstrap, &topics, &accepted, WAIT).await;
    assert_eq!(
        metric(&metrics.render(), "cdp_ingest_kafka_records_lost_total"),
        0.0
    );
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_spool_gives_503_and_the_process_stays_healthy() {
    let topics = mock_topics();
    let mock = Mock::start(&topics);
    let server = Server::start_with(&mock.bootstrap, topics.clone(), |c| {
        c.spool_max_bytes = 20_000;
    })
    .await;
    mock.inject(Fault::BrokerDown(1));
    wait_ready_body(&server, "Kafka unreachable", |b| b["kafka_reachable"] == false).await;
    let mut accepted = Vec::new();
    let mut refused = None;
    for i in 0..200 {
        let id = format!("s-{i}");
        let event = json!({"anonymousId": "v", "event": "e", "messageId": id, "properties": {"pad": "x".repeat(500)}});
        let response = server.post("/v1/track", &event).await;
        match response.status().as_u16() {
            200 => accepted.push(id),
            503 => {
                assert_eq!(response.headers()["retry-after"], "5");
                refused = Some(status_json(response).await.1);
                break;
            }
            other => panic!("status {other}"),
        }
    }
    let refused = refused.expect("the 20 kB spool never filled");
    assert_eq!(
        refused["error"],
        "cannot take events now: Kafka cannot take events and the local spool is full (20000 bytes)"
    );
    assert!(accepted.len() >= 10, "only {} spooled", accepted.len());
    // Alive, but not ready: the load balancer should send events elsewhere.
    let health = server.client.get(server.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    let (status, body) = readyz(&server).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"], "the local spool is full");
    assert_eq!(body["spool"]["records"], accepted.len());

    mock.inject(Fault::BrokerUp(1));
    wait_ready_body(&server, "readiness back", |b| b["success"] == true).await;
    let (ids, statuses) = post_events(&server, "after", 5).await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    accepted.extend(ids);
    assert_nothing_lost(&mock.bootstrap, &topics, &accepted, WAIT).await;
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acked_mode_answers_200_only_after_the_broker_acknowledged_and_503_without_one() {
    let topics = mock_topics();
    let mock = Mock::start(&topics);
    let server = Server::start_with(&mock.bootstrap, topics.clone(), |c| {
        c.delivery_mode = http_front::config::DeliveryMode::Acked;
        c.dlq_timeout = Duration::from_secs(2);
    })
    .await;
    // A slow broker: each 200 comes only after the acknowledgement, so at least the RTT later.
    mock.inject(Fault::Rtt(1, Duration::from_millis(400)));
    let started = std::time::Instant::now();
    let batch: Vec<Value> = (0..5)
        .map(|i| json!({"type": "track", "anonymousId": "v", "event": "e", "messageId": format!("a-{i}")}))
        .collect();
    let (status, reply) = status_json(server.post("/v1/batch", &json!({ "batch": batch })).await).await;
    assert_eq!(status, 200, "{reply}");
    assert!(
        started.elapsed() >= Duration::from_millis(400),
        "answered before the broker could ack"
    );
    let accepted: Vec<String> = (0..5).map(|i| format!("a-{i}")).collect();
    assert_nothing_lost(&mock.bootstrap, &topics, &accepted, WAIT).await;

    // No broker: 503 with Retry-After, nothing spooled, not ready.
    mock.inject(Fault::Rtt(1, Duration::ZERO));
    mock.inject(Fault::BrokerDown(1));
    let mut refused = None;
    for _ in 0..50 {
        let response = server
            .post("/v1/track", &json!({"anonymousId": "v", "event": "e"}))
            .await;
        if response.status() == 503 {
            assert_eq!(response.headers()["retry-after"], "5");
            refused = Some(status_json(response).await.1);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let refused = refused.expect("acked mode answered 200 with the broker down");
    assert_eq!(refused["accepted"], 0, "{refused}");
    let (status, body) = readyz(&server).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"], "no Kafka broker reachable");
    assert_eq!(body["spool"]["records"], 0, "acked mode never spools a request");
    server.stop().await.unwrap();
}

/// Readiness is the admission's answer, second by second: a 100-record queue under four
/// clients posting as fast as they can, the broker slow (2 s round trips) from the 2nd to the
/// 6th second of 8, `/readyz` sampled every 200 ms. A second's readiness is what most of its
/// samples said (one sample taken just before the queue drains is right for its instant, not
/// for the second). Every second in which ≥ 90% of events got 503 was a `/readyz` 503 second,
/// and no `/readyz` 503 second had ≥ 90% of its events taken. Every 200 is delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_says_503_in_the_seconds_a_full_queue_refuses_events_and_only_then() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::time::Instant;
    let topics = mock_topics();
    let mock = Mock::start(&topics);
    let server = Server::start_with(&mock.bootstrap, topics.clone(), |c| {
        c.kafka_queue_max_messages = 100;
    })
    .await;
    let server = Arc::new(server);
    let (start, stop) = (Instant::now(), Arc::new(AtomicBool::new(false)));
    let clients: Vec<_> = (0..4)
        .map(|client| {
            let (server, stop) = (server.clone(), stop.clone());
            tokio::spawn(async move {
                let mut answers = Vec::new();
                for i in 0.. {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let id = format!("r{client}-{i}");
                    let event = json!({"anonymousId": format!("v{client}"), "event": "e", "messageId": id});
                    let status = server.post("/v1/track", &event).await.status().as_u16();
                    answers.push((Instant::now(), id, status));
                }
                answers
            })
        })
        .collect();
    let mut samples = Vec::new();
    let (mut slowed, mut restored) = (false, false);
    while start.elapsed() < Duration::from_secs(8) {
        if !slowed && start.elapsed() >= Duration::from_secs(2) {
            mock.inject(Fault::Rtt(1, Duration::from_millis(2000)));
            slowed = true;
        }
        if !restored && start.elapsed() >= Duration::from_secs(6) {
            mock.inject(Fault::Rtt(1, Duration::ZERO));
            restored = true;
        }
        let (status, _) = readyz(&server).await;
        samples.push((Instant::now(), status));
        tokio::time::sleep(Duration::from_millis(200)).await; // the sampling period
    }
    stop.store(true, Ordering::Relaxed);
    let mut answers = Vec::new();
    for client in clients {
        answers.extend(client.await.unwrap());
    }
    let second = |at: Instant| (at - start).as_secs() as usize;
    let seconds = 8;
    let (mut taken, mut refused, mut unready) =
        (vec![0usize; seconds], vec![0usize; seconds], vec![false; seconds]);
    for (at, _, status) in &answers {
        match (second(*at), status) {
            (s, _) if s >= seconds => {}
            (s, 200) => taken[s] += 1,
            (s, 503) => refused[s] += 1,
            (_, other) => panic!("status {other}"),
        }
    }
    let mut votes = vec![(0usize, 0usize); seconds];
    for (at, status) in &samples {
        if second(*at) < seconds {
            let (no, all) = &mut votes[second(*at)];
            *no += usize::from(*status == 503);
            *all += 1;
        }
    }
    for (s, (no, all)) in votes.iter().enumerate() {
        unready[s] = 2 * no > *all;
    }
    let table: Vec<String> = (0..seconds)
        .map(|s| {
            format!(
                "{s}: {} taken, {} refused, /readyz 503 in {} of {} samples",
                taken[s], refused[s], votes[s].0, votes[s].1
            )
        })
        .collect();
    eprintln!("{}", table.join("\n"));
    assert!(
        refused.iter().sum::<usize>() > 0,
        "the queue never filled:\n{}",
        table.join("\n")
    );
    assert!(
        unready.iter().any(|u| !u),
        "/readyz never 200:\n{}",
        table.join("\n")
    );
    for s in 0..seconds {
        let all = taken[s] + refused[s];
        if all == 0 {
            continue;
        }
        if refused[s] * 10 >= all * 9 {
            assert!(
                unready[s],
                "second {s}: ≥ 90% refused, /readyz never 503:\n{}",
                table.join("\n")
            );
        }
        if unready[s] {
            assert!(
                taken[s] * 10 < all * 9,
                "second {s}: /readyz 503 with ≥ 90% taken:\n{}",
                table.join("\n")
            );
        }
    }
    let accepted: Vec<String> = answers
        .into_iter()
        .filter(|(_, _, status)| *status == 200)
        .map(|(_, id, _)| id)
        .collect();
    assert_nothing_lost(&mock.bootstrap, &topics, &accepted, WAIT).await;
    let server = Arc::into_inner(server).unwrap();
    server.stop().await.unwrap();
}
