//! dlq-replayer against a broker that requires SASL SCRAM-SHA-512, with and without TLS (set
//! through the `CDP_KAFKA_*` variables); refused credentials and certificates; `--kafka-option`.

use std::process::Command;
use std::time::Duration;

use serde_json::json;
use test_support::{
    assert_checks_kafka_options, assert_refuses_a_wrong_password_and_an_untrusted_ca, consume_from,
    fresh_topics_on, produce_with, run_until_exit, test_producer, without_inherited_security, SecureBroker,
    Tls, Topics, Via,
};

/// How long a replay or a refused start may take (the ping timeout is 10 s).
const WITHIN: Duration = Duration::from_secs(60);

/// The replayer on `topics`, to the end of the DLQ; Kafka settings to be added.
fn replayer(topics: &Topics) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_dlq-replayer"));
    command
        .env("CDP_TOPIC_INGEST", &topics.ingest)
        .env("CDP_TOPIC_DLQ", &topics.dlq)
        .env("CDP_TOPIC_RETRY", &topics.retry)
        .env("CDP_GROUP_ID", format!("g-{}", topics.dlq))
        .env("CDP_METRICS_LISTEN", "127.0.0.1:0")
        .env("CDP_LOG_FORMAT", "json")
        .arg("--until-end");
    command
}

/// The topics the refused starts are given (they never reach them).
fn default_topics() -> Topics {
    Topics {
        ingest: "cdp.ingest".into(),
        dlq: "cdp.dlq".into(),
        retry: "cdp.retry".into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replays_over_sasl_plaintext_and_sasl_ssl() {
    for tls in [Tls::Off, Tls::On] {
        let broker = SecureBroker::start(tls).await;
        let settings = broker.settings();
        let topics = fresh_topics_on(&settings, 1).await;
        let raw = json!({"type": "track", "anonymousId": "v1", "event": "e", "messageId": "d-1"}).to_string();
        let envelope = json!({"workspace_id": "w", "source_id": "s", "message_id": "d-1", "reason": "missing_field",
                              "field": "/event", "raw_payload": raw});
        produce_with(
            &test_producer(&settings),
            &topics.dlq,
            Some("w"),
            envelope.to_string().as_bytes(),
            &[("reason", "missing_field")],
        )
        .await;
        let mut command = replayer(&topics);
        without_inherited_security(&mut command)
            .envs(broker.env_with(&broker.password_file(), broker.ca().as_deref()));
        let exited = run_until_exit(&mut command, WITHIN);
        assert!(exited.status.success(), "{tls:?}: {}", exited.stderr);
        let records = consume_from(&settings, &topics.ingest, 1, Duration::from_secs(20)).await;
        assert_eq!(records.len(), 1, "{tls:?}: nothing replayed");
        assert_eq!(records[0].json()["message_id"], "d-1");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_or_an_untrusted_ca_stops_it_naming_the_cause() {
    let topics = default_topics();
    assert_refuses_a_wrong_password_and_an_untrusted_ca(Via::Env, WITHIN, || replayer(&topics)).await;
}

#[test]
fn kafka_options_reach_librdkafka_and_fixed_settings_are_refused() {
    let topics = default_topics();
    assert_checks_kafka_options(Via::Env, WITHIN, || replayer(&topics));
}
