//! Nothing accepted is ever lost, with the binary as operators run it: SIGTERM under a slow
//! broker, SIGKILL during an outage, the broker process killed and restarted during load.
//! Oracle: every event that got a 200 is on the ingest, retry or DLQ topic.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use test_support::mock::{mock_topics, Fault, Mock};
use test_support::{assert_nothing_lost, consume_from, sources_file, OwnBroker, Topics, WRITE_KEY};

use super::{Ingest, WAIT};

/// Clients posting single events to `url` until `stop` is set or the server goes away.
struct Load {
    accepted: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    clients: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    /// `clients` clients, each pausing `pace` between requests.
    fn start(url: &str, clients: usize, pace: Duration) -> Load {
        let accepted = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let clients = (0..clients)
            .map(|n| {
                let (url, accepted, stop) = (format!("{url}/v1/track"), accepted.clone(), stop.clone());
                tokio::spawn(async move {
                    let client = reqwest::Client::builder()
                        .timeout(Duration::from_secs(10))
                        .build()
                        .unwrap();
                    for i in 0.. {
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                        let id = format!("c{n}-{i}");
                        let event = json!({"anonymousId": format!("v{n}"), "event": "tick", "messageId": id});
                        let sent = client
                            .post(&url)
                            .basic_auth(WRITE_KEY, Some(""))
                            .json(&event)
                            .send();
                        match sent.await.map(|r| r.status().as_u16()) {
                            Ok(200) => {
                                accepted.lock().unwrap().push(id);
                                tokio::time::sleep(pace).await;
                            }
                            // Refused (shutting down, queue full): not accepted, not counted.
                            Ok(503) => tokio::time::sleep(Duration::from_millis(20)).await,
                            Ok(other) => panic!("unexpected status {other}"),
                            Err(_) => break, // the server is gone
                        }
                    }
                })
            })
            .collect();
        Load {
            accepted,
            stop,
            clients,
        }
    }

    /// Waits (up to a minute) until `n` events in all got a 200.
    async fn until_accepted(&self, n: usize) {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while self.accepted.lock().unwrap().len() < n {
            assert!(
                std::time::Instant::now() < deadline,
                "fewer than {n} accepted within 60 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// How many events got a 200 so far.
    fn count(&self) -> usize {
        self.accepted.lock().unwrap().len()
    }

    /// Stops the clients and returns the ids that got a 200.
    async fn finish(self) -> Vec<String> {
        self.stop.store(true, Ordering::Relaxed);
        for client in self.clients {
            client.await.unwrap();
        }
        let accepted = self.accepted.lock().unwrap().clone();
        accepted
    }
}

/// Awaits `step`, failing the test with its name if it takes over a minute.
async fn within<T>(step: &str, future: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(60), future)
        .await
        .unwrap_or_else(|_| panic!("{step} did not finish within 60 s"))
}

async fn readyz(ingest: &Ingest) -> Value {
    let response = reqwest::get(format!("{}/readyz", ingest.url)).await.unwrap();
    response.json().await.unwrap()
}

async fn wait_readyz(ingest: &Ingest, what: &str, check: impl Fn(&Value) -> bool) {
    let mut last = Value::Null;
    for _ in 0..200 {
        last = readyz(ingest).await;
        if check(&last) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("/readyz never showed {what}: {last}");
}

/// SIGTERMs `ingest` while `load` runs, waits for a clean exit and stops the clients; returns
/// the log and the ids that got a 200.
async fn terminate_under_load(ingest: Ingest, load: Load) -> (String, Vec<String>) {
    ingest.terminate();
    let exit = tokio::task::spawn_blocking(move || ingest.wait());
    let (exited_ok, log) = within("ingest's exit", exit).await.unwrap();
    let accepted = within("the clients' end", load.finish()).await;
    assert!(exited_ok, "ingest did not exit cleanly:\n{log}");
    (log, accepted)
}

fn spool_segments(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "spool")
        })
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_a_slow_broker_spools_what_it_could_not_flush_and_the_next_start_sends_it() {
    let topics = mock_topics();
    let mock = Mock::start(&topics);
    let spool = Arc::new(tempfile::tempdir().unwrap());
    let env = [("CDP_FLUSH_GRACE", "1s"), ("CDP_DRAIN_TIMEOUT", "2s")];
    let ingest = Ingest::start_on(
        &mock.bootstrap,
        topics.clone(),
        spool.clone(),
        &env,
        sources_file(),
    )
    .await;
    // Each produce request now takes 3 s: records pile up in the producer.
    mock.inject(Fault::Rtt(1, Duration::from_secs(3)));
    let load = Load::start(&ingest.url, 4, Duration::ZERO);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (log, accepted) = terminate_under_load(ingest, load).await;
    assert!(log.contains("records not delivered are in the spool"), "{log}");
    assert!(spool_segments(spool.path()) > 0, "nothing was spooled");

    mock.inject(Fault::Rtt(1, Duration::ZERO));
    let restart = Ingest::start_on(
        &mock.bootstrap,
        topics.clone(),
        spool.clone(),
        &[],
        sources_file(),
    );
    let again = within("the restart", restart).await;
    let oracle = assert_nothing_lost(&mock.bootstrap, &topics, &accepted, WAIT);
    let landed = within("the oracle", oracle).await;
    eprintln!("{} accepted, {} duplicates", accepted.len(), landed.duplicates());
    let drained = wait_readyz(&again, "an empty spool", |b| b["spool"]["records"] == 0);
    within("the drain", drained).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_an_outage_keeps_the_spool_and_the_restart_drains_it_in_key_order() {
    let topics = mock_topics();
    let mock = Mock::start(&topics);
    let spool = Arc::new(tempfile::tempdir().unwrap());
    let ingest = Ingest::start_on(
        &mock.bootstrap,
        topics.clone(),
        spool.clone(),
        &[],
        sources_file(),
    )
    .await;
    mock.inject(Fault::BrokerDown(1));
    wait_readyz(&ingest, "Kafka unreachable", |b| b["kafka_reachable"] == false).await;
    let client = reqwest::Client::new();
    let mut accepted = Vec::new();
    for i in 0..30 {
        let id = format!("k-{i:02}");
        let event = json!({"anonymousId": format!("v{}", i % 3), "event": "e", "messageId": id});
        let response = client
            .post(format!("{}/v1/track", ingest.url))
            .basic_auth(WRITE_KEY, Some(""))
            .json(&event)
            .send()
            .await
            .unwrap();
        assert_eq!(
            response.status(),
            200,
            "buffered mode takes events during an outage"
        );
        accepted.push(id);
    }
    wait_readyz(&ingest, "30 spooled records", |b| b["spool"]["records"] == 30).await;
    drop(ingest); // SIGKILL

    mock.inject(Fault::BrokerUp(1));
    let again = Ingest::start_on(
        &mock.bootstrap,
        topics.clone(),
        spool.clone(),
        &[],
        sources_file(),
    )
    .await;
    let landed = assert_nothing_lost(&mock.bootstrap, &topics, &accepted, WAIT).await;
    assert_eq!(landed.duplicates(), 0);
    // Per visitor, in the order they were sent.
    let records = consume_from(&mock.bootstrap, &topics.ingest, 30, WAIT).await;
    let mut per_key: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for r in &records {
        let id = r.event()["message_id"].as_str().unwrap().to_string();
        per_key.entry(r.key.clone().unwrap()).or_default().push(id);
    }
    for (key, ids) in &per_key {
        let mut sorted = ids.clone();
        sorted.sort();
        assert_eq!(ids, &sorted, "visitor {key} out of order");
    }
    assert_eq!(per_key.len(), 3);
    wait_readyz(&again, "an empty spool", |b| b["spool"]["records"] == 0).await;
    assert_eq!(spool_segments(spool.path()), 0, "drained segments are deleted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_broker_process_killed_and_restarted_during_load_loses_nothing() {
    let mut broker = OwnBroker::start().await;
    let topics = Topics {
        ingest: "own.ingest".into(),
        dlq: "own.dlq".into(),
        retry: "own.retry".into(),
    };
    kafka_producer::ensure_topics(
        &broker.address(),
        &[(&topics.ingest, 3), (&topics.dlq, 1), (&topics.retry, 1)],
    )
    .await
    .unwrap();
    let spool = Arc::new(tempfile::tempdir().unwrap());
    let env = [("CDP_DRAIN_TIMEOUT", "2s"), ("CDP_FLUSH_GRACE", "5s")];
    let ingest = Ingest::start_on(
        &broker.address(),
        topics.clone(),
        spool.clone(),
        &env,
        sources_file(),
    )
    .await;
    // Paced: tansu's SQLite storage, restarted after a SIGKILL, is slow to serve a large backlog.
    let load = Load::start(&ingest.url, 4, Duration::from_millis(2));
    load.until_accepted(500).await;
    broker.kill();
    // The kill was noticed under load: Kafka unreachable, what librdkafka held at the kill
    // taken back to the spool, and the events that followed spooled.
    wait_readyz(&ingest, "Kafka unreachable", |b| b["kafka_reachable"] == false).await;
    load.until_accepted(load.count() + 200).await;
    let text = test_support::metrics::scrape(&ingest.metrics_url).await.unwrap();
    let spooled = |from: &str| {
        test_support::metrics::value(
            &text,
            &format!("cdp_ingest_spool_appended_total{{from=\"{from}\"}}"),
        )
        .unwrap_or(0.0)
    };
    eprintln!(
        "at the kill: {} taken back to the spool; {} spooled by requests since",
        spooled("rescue"),
        spooled("request")
    );
    // At 2 000 events/s librdkafka always holds a linger's worth (5 ms) unacknowledged.
    assert!(
        spooled("rescue") >= 1.0,
        "no record was in flight at the kill: {text}"
    );
    assert!(spooled("request") >= 1.0, "{text}");
    broker.restart().await;
    wait_readyz(&ingest, "Kafka delivering again", |b| {
        b["kafka_state"] == "delivering"
    })
    .await;
    load.until_accepted(load.count() + 200).await;
    let (_log, accepted) = terminate_under_load(ingest, load).await;
    // What the flush grace could not deliver (the cluster was back only seconds before) is in
    // the spool: the next start sends it.
    let _again = Ingest::start_on(&broker.address(), topics.clone(), spool, &[], sources_file()).await;
    let landed = assert_nothing_lost(&broker.address(), &topics, &accepted, Duration::from_secs(60)).await;
    eprintln!("{} accepted, {} duplicates", accepted.len(), landed.duplicates());
}
