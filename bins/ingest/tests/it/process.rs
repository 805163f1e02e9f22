//! The process: documented flags, start-up failure, graceful SIGTERM.

use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use test_support::{consume, WRITE_KEY};

use super::{Ingest, WAIT};

#[test]
fn help_documents_every_flag_of_the_interface_table() {
    let out = Command::new(env!("CARGO_BIN_EXE_ingest"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    for (flag, env, default) in [
        ("--brokers", "CDP_KAFKA_BROKERS", "127.0.0.1:9092"),
        ("--topic-ingest", "CDP_TOPIC_INGEST", "cdp.ingest"),
        ("--topic-dlq", "CDP_TOPIC_DLQ", "cdp.dlq"),
        ("--topic-retry", "CDP_TOPIC_RETRY", "cdp.retry"),
        ("--metrics-listen", "CDP_METRICS_LISTEN", "0.0.0.0:9464"),
        ("--log-format", "CDP_LOG_FORMAT", "json"),
        ("--listen", "CDP_LISTEN", "0.0.0.0:8080"),
        ("--sources", "CDP_SOURCES_FILE", "sources.toml"),
    ] {
        let at = help
            .find(&format!("{flag} <"))
            .unwrap_or_else(|| panic!("{flag} missing from --help"));
        let section = &help[at..];
        let section = &section[..section[2..].find("\n      --").map_or(section.len(), |i| i + 2)];
        assert!(section.contains(&format!("[env: {env}=")), "{flag}: {section}");
        assert!(
            section.contains(&format!("[default: {default}]")),
            "{flag}: {section}"
        );
    }
}

#[test]
fn without_a_cluster_it_exits_non_zero_with_a_clear_error() {
    let sources = test_support::sources_file();
    let spool = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_ingest"))
        .env("CDP_KAFKA_BROKERS", "127.0.0.1:1")
        .env("CDP_KAFKA_PING_TIMEOUT", "2s")
        .env("CDP_SOURCES_FILE", sources.path())
        .env("CDP_SPOOL_DIR", spool.path())
        .env("CDP_LISTEN", "127.0.0.1:0")
        .env("CDP_METRICS_LISTEN", "127.0.0.1:0")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("cannot reach the Kafka cluster at 127.0.0.1:1"),
        "{stderr}"
    );
}

/// `--kafka-allow-degraded-start` (as the deploy manifests set it): a start without a cluster
/// serves into the spool, and says so in `/readyz`, the metric and the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_degraded_start_allowed_it_serves_into_the_spool_without_a_cluster() {
    let spool = Arc::new(tempfile::tempdir().unwrap());
    let topics = test_support::Topics {
        ingest: "degraded.ingest".into(),
        dlq: "degraded.dlq".into(),
        retry: "degraded.retry".into(),
    };
    let env = [("CDP_KAFKA_ALLOW_DEGRADED_START", "true")];
    let started = Instant::now();
    let ingest = Ingest::start_on("127.0.0.1:1", topics, spool, &env, test_support::sources_file()).await;
    let ready_after = started.elapsed();
    let client = reqwest::Client::new();
    let readyz = client.get(format!("{}/readyz", ingest.url)).send().await.unwrap();
    assert_eq!(readyz.status(), 200);
    let body: serde_json::Value = readyz.json().await.unwrap();
    assert_eq!(body["degraded_start"], true, "{body}");
    assert_eq!(body["kafka_state"], "unreachable", "{body}");
    let response = client
        .post(format!("{}/v1/track", ingest.url))
        .basic_auth(WRITE_KEY, Some(""))
        .json(&json!({"anonymousId": "d", "event": "e", "messageId": "degraded-1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "an event while started degraded");
    let metrics = ingest.metrics_text().await;
    assert!(
        metrics.lines().any(|l| l == "cdp_ingest_kafka_degraded_start 1"),
        "{metrics}"
    );
    let body: serde_json::Value = client
        .get(format!("{}/readyz", ingest.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        body["spool"]["records"], 1,
        "the event is not in the spool: {body}"
    );
    ingest.terminate();
    let (ok, log) = tokio::task::spawn_blocking(move || ingest.wait()).await.unwrap();
    assert!(ok, "{log}");
    assert!(
        log.contains("starting degraded") && log.contains("--kafka-allow-degraded-start is set"),
        "{log}"
    );
    eprintln!("ready {ready_after:?} after the start");
}

/// On SIGTERM `/readyz` turns 503 at once while events are still taken for the shutdown
/// delay; then the process stops accepting and exits cleanly, every accepted event delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_turns_readyz_503_and_serves_on_for_the_shutdown_delay() {
    let ingest = Ingest::start_with(&[("CDP_SHUTDOWN_DELAY", "3s")]).await;
    let client = reqwest::Client::new();
    let track = |id: String| {
        client
            .post(format!("{}/v1/track", ingest.url))
            .basic_auth(WRITE_KEY, Some(""))
            .json(&json!({"anonymousId": "sd", "event": "e", "messageId": id}))
            .send()
    };
    ingest.terminate();
    let signalled = Instant::now();
    // The signal is handled asynchronously: poll until /readyz says so.
    let body = loop {
        let response = client.get(format!("{}/readyz", ingest.url)).send().await.unwrap();
        if response.status() == 503 {
            break response.json::<serde_json::Value>().await.unwrap();
        }
        assert!(
            signalled.elapsed() < Duration::from_secs(2),
            "/readyz still 200 after SIGTERM"
        );
    };
    assert_eq!(body["error"], "shutting down", "{body}");
    let mut accepted = Vec::new();
    for i in 0..5 {
        let id = format!("delay-{i}");
        let status = track(id.clone()).await.unwrap().status();
        assert_eq!(status, 200, "an event {:?} after SIGTERM", signalled.elapsed());
        accepted.push(id);
    }
    assert!(
        signalled.elapsed() < Duration::from_secs(3),
        "the posts took the whole delay"
    );
    let topic = ingest.topics.ingest.clone();
    let (ok, log) = tokio::task::spawn_blocking(move || ingest.wait()).await.unwrap();
    let exited_after = signalled.elapsed();
    assert!(ok, "{log}");
    assert!(
        exited_after >= Duration::from_secs(3),
        "exited {exited_after:?} after SIGTERM"
    );
    assert!(log.contains("serving on for the shutdown delay"), "{log}");
    let records = consume(&topic, accepted.len(), WAIT).await;
    let ids: Vec<_> = records.iter().map(|r| r.event()["message_id"].clone()).collect();
    assert_eq!(ids, accepted);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_a_steady_stream_loses_nothing_that_got_a_200() {
    // A long linger keeps records in the producer's queue at SIGTERM: only the flush sends them.
    let ingest = Ingest::start_with(&[("CDP_KAFKA_LINGER", "1s")]).await;
    let accepted = Arc::new(Mutex::new(Vec::new()));
    let mut senders = Vec::new();
    for client_no in 0..4 {
        let (url, accepted) = (format!("{}/v1/track", ingest.url), accepted.clone());
        senders.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            for i in 0.. {
                let id = format!("c{client_no}-{i}");
                let event = json!({"anonymousId": format!("v{client_no}"), "event": "tick", "messageId": id});
                match client
                    .post(&url)
                    .basic_auth(WRITE_KEY, Some(""))
                    .json(&event)
                    .send()
                    .await
                {
                    Ok(r) if r.status() == 200 => accepted.lock().unwrap().push(id),
                    Ok(r) => panic!("unexpected {} during shutdown", r.status()),
                    Err(_) => break, // connection refused or closed: the server is gone
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    ingest.terminate();
    let topic = ingest.topics.ingest.clone();
    let (exited_ok, log) = tokio::task::spawn_blocking(move || ingest.wait()).await.unwrap();
    for sender in senders {
        sender.await.unwrap();
    }
    assert!(exited_ok, "ingest did not exit cleanly:\n{log}");
    assert!(log.contains("every record delivered"), "{log}");
    let accepted = accepted.lock().unwrap().clone();
    assert!(
        accepted.len() > 50,
        "only {} events sent before SIGTERM",
        accepted.len()
    );
    let records = consume(&topic, accepted.len(), WAIT).await;
    let mut delivered: Vec<String> = records
        .iter()
        .map(|r| r.event()["message_id"].as_str().unwrap().to_string())
        .collect();
    delivered.sort();
    delivered.dedup();
    let missing: Vec<_> = accepted
        .iter()
        .filter(|id| delivered.binary_search(id).is_err())
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {} accepted events lost: {missing:?}",
        missing.len(),
        accepted.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_sources_file_and_the_process_keeps_serving() {
    let sources = test_support::sources_file();
    let path = sources.path().to_path_buf();
    // An hour between checks: only the SIGHUP can make the new source known in time.
    let ingest = Ingest::start_custom(&[("CDP_SOURCES_RELOAD_INTERVAL", "1h")], sources).await;
    let client = reqwest::Client::new();
    let post = |key: &'static str| {
        client
            .post(format!("{}/v1/track", ingest.url))
            .basic_auth(key, Some(""))
            .json(&json!({"anonymousId": "hup", "event": "e", "messageId": key}))
            .send()
    };
    assert_eq!(post("hup-key").await.unwrap().status(), 401);
    let mut text = std::fs::read_to_string(&path).unwrap();
    text.push_str(
        "\n[[source]]\nworkspace_id = \"ws_test\"\nsource_id = \"src_hup\"\nwrite_key = \"hup-key\"\n",
    );
    std::fs::write(&path, text).unwrap();
    let status = Command::new("kill")
        .args(["-HUP", &ingest.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    // The reload runs as the signal arrives: wait for the new key to be taken.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut answer = 0;
    while answer != 200 && std::time::Instant::now() < deadline {
        answer = post("hup-key").await.unwrap().status().as_u16();
        if answer != 200 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    assert_eq!(answer, 200, "the new source after SIGHUP");
    assert_eq!(post(WRITE_KEY).await.unwrap().status(), 200, "old sources stay");
    let records = consume(&ingest.topics.ingest, 2, WAIT).await;
    let sources: Vec<_> = records.iter().filter_map(|r| r.header("source_id")).collect();
    assert!(sources.contains(&"src_hup"), "{sources:?}");
    ingest.terminate();
    let (ok, log) = ingest.wait();
    assert!(ok, "{log}");
    assert!(
        log.contains("sources file reloaded") && log.contains("SIGHUP"),
        "{log}"
    );
}
