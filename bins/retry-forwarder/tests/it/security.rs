//! retry-forwarder against a broker that requires SASL SCRAM-SHA-512, with and without TLS;
//! refused credentials and certificates; `--kafka-option`.

use std::process::Command;
use std::time::Duration;

use serde_json::json;
use test_support::{
    assert_checks_kafka_options, assert_refuses_a_wrong_password_and_an_untrusted_ca, consume_from,
    fresh_topics_on, produce_with, test_producer, without_inherited_security, SecureBroker, Tls, Via,
};

use crate::now_ms;

/// How long a refused start may take: the forwarder's ping timeout is 10 s.
const REFUSED_WITHIN: Duration = Duration::from_secs(20);

/// The forwarder reading `topic_retry`, with text logs; Kafka settings to be added.
fn forwarder(topic_retry: &str) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_retry-forwarder"));
    command
        .args(["--topic-retry", topic_retry, "--metrics-listen", "127.0.0.1:0"])
        .env("CDP_GROUP_ID", format!("g-{topic_retry}"))
        .env("CDP_LOG_FORMAT", "text");
    command
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwards_over_sasl_plaintext_and_sasl_ssl() {
    for tls in [Tls::Off, Tls::On] {
        let broker = SecureBroker::start(tls).await;
        let settings = broker.settings();
        let topics = fresh_topics_on(&settings, 1).await;
        let producer = test_producer(&settings);
        let id = format!("m-{tls:?}");
        let due = now_ms().to_string();
        produce_with(
            &producer,
            &topics.retry,
            Some("k"),
            json!({"message_id": id, "anonymous_id": "k"})
                .to_string()
                .as_bytes(),
            &[
                ("retry_attempt", "1"),
                ("retry_target", topics.ingest.as_str()),
                ("retry_not_before", due.as_str()),
            ],
        )
        .await;
        let mut command = forwarder(&topics.retry);
        without_inherited_security(&mut command)
            .args(broker.args())
            .args(["--topic-ingest", &topics.ingest, "--topic-dlq", &topics.dlq])
            .stderr(std::process::Stdio::inherit());
        let mut child = command.spawn().unwrap();
        let started = std::time::Instant::now();
        let records = consume_from(&settings, &topics.ingest, 1, Duration::from_secs(30)).await;
        eprintln!("{tls:?}: forwarded after {:?}", started.elapsed());
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(records.len(), 1, "{tls:?}: nothing forwarded");
        assert_eq!(records[0].json()["message_id"], id.as_str());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_or_an_untrusted_ca_stops_it_naming_the_cause() {
    assert_refuses_a_wrong_password_and_an_untrusted_ca(Via::Flags, REFUSED_WITHIN, || {
        forwarder("cdp.retry")
    })
    .await;
}

#[test]
fn kafka_options_reach_librdkafka_and_fixed_settings_are_refused() {
    assert_checks_kafka_options(Via::Flags, REFUSED_WITHIN, || forwarder("cdp.retry"));
}
