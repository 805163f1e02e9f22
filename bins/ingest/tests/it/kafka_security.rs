//! ingest against a broker that requires SASL SCRAM-SHA-512, with and without TLS (set through
//! the `CDP_KAFKA_*` variables); refused credentials and certificates, at start and at run time;
//! `--kafka-option`.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use test_support::{
    assert_checks_kafka_options, assert_refuses_a_wrong_password_and_an_untrusted_ca, consume_from,
    fresh_topics_on, SecureBroker, Tls, Via, PASSWORD, USER, WRITE_KEY,
};

use crate::{Ingest, WAIT};
use test_support::Topics;

/// How long a refused start may take: the ping timeout is 10 s.
const REFUSED_WITHIN: Duration = Duration::from_secs(30);

/// `ingest` with `sources` and `spool`, listening on free ports; Kafka settings to be added.
fn ingest(sources: &Path, spool: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_ingest"));
    command
        .env("CDP_SOURCES_FILE", sources)
        .env("CDP_SPOOL_DIR", spool)
        .env("CDP_LISTEN", "127.0.0.1:0")
        .env("CDP_METRICS_LISTEN", "127.0.0.1:0");
    command
}

/// ingest on `broker` and `topics`, with the broker's password file and `ca`, as variables.
async fn start_secured(broker: &SecureBroker, topics: &Topics, ca: Option<&Path>) -> Ingest {
    let env = broker.env_with(&broker.password_file(), ca);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let spool = std::sync::Arc::new(tempfile::tempdir().unwrap());
    Ingest::start_on(
        &broker.address(),
        topics.clone(),
        spool,
        &env,
        test_support::sources_file(),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn takes_events_over_sasl_plaintext_and_sasl_ssl() {
    for tls in [Tls::Off, Tls::On] {
        let broker = SecureBroker::start(tls).await;
        let settings = broker.settings();
        let topics = fresh_topics_on(&settings, 1).await;
        let ingest = start_secured(&broker, &topics, broker.ca().as_deref()).await;
        let response = reqwest::Client::new()
            .post(format!("{}/v1/track", ingest.url))
            .basic_auth(WRITE_KEY, Some(""))
            .json(&serde_json::json!({"anonymousId": "v1", "event": "Signed Up", "messageId": "sec-1"}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{tls:?}");
        let records = consume_from(&settings, &topics.ingest, 1, WAIT).await;
        assert_eq!(records.len(), 1, "{tls:?}: the event is not on the ingest topic");
        assert_eq!(records[0].json()["message_id"], "sec-1");
    }
}

/// The series counting refused SASL credentials.
const SASL_FAILURES: &str = "cdp_ingest_kafka_authentication_failures_total{cause=\"sasl\"}";

/// The value of `series` (with its labels) on `ingest`'s metrics endpoint, if it is there.
async fn metric(ingest: &Ingest, series: &str) -> Option<f64> {
    let text = test_support::metrics::scrape(&ingest.metrics_url).await?;
    test_support::metrics::value(&text, series)
}

/// Credentials rotated away from a running ingest (its password file is read at start): the
/// broker refuses its reconnections and the SASL failure counter rises. In buffered mode the
/// spool takes every event meanwhile, so `/readyz` stays 200 and names the cause (a fleet-wide
/// credential fault must not leave every replica without endpoints); what it took lands once
/// the password is changed back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_changed_at_run_time_is_named_in_readyz_while_the_spool_takes_events() {
    const ROTATED: &str = "rotated-password";
    let mut broker = SecureBroker::start(Tls::Off).await;
    let settings = broker.settings();
    let topics = fresh_topics_on(&settings, 1).await;
    let ingest = start_secured(&broker, &topics, None).await;
    let client = reqwest::Client::new();
    let track = |id: &str| {
        client
            .post(format!("{}/v1/track", ingest.url))
            .basic_auth(WRITE_KEY, Some(""))
            .json(&serde_json::json!({"anonymousId": "v1", "event": "Signed Up", "messageId": id}))
            .send()
    };
    assert_eq!(track("rot-1").await.unwrap().status(), 200);
    let records = consume_from(&settings, &topics.ingest, 1, WAIT).await;
    assert_eq!(records.len(), 1, "the event is not on the ingest topic");
    let before = metric(&ingest, SASL_FAILURES)
        .await
        .unwrap_or_else(|| panic!("{SASL_FAILURES} is not registered at start"));
    assert_eq!(before, 0.0, "SASL failures counted while authenticated");

    broker.change_password(ROTATED).await;
    let changed = Instant::now();

    // librdkafka reconnects (backing off up to 10 s) and is refused.
    let deadline = Instant::now() + Duration::from_secs(60);
    let (mut status, mut body, mut failures) = (None, serde_json::Value::Null, before);
    loop {
        if let Ok(response) = client.get(format!("{}/readyz", ingest.url)).send().await {
            status = Some(response.status());
            body = response.json().await.unwrap_or_default();
        }
        failures = metric(&ingest, SASL_FAILURES).await.unwrap_or(failures);
        let cause = body["kafka_authentication_failure"].as_str().unwrap_or_default();
        if cause.contains(&format!(
            "SASL authentication failed for user {USER} (SCRAM-SHA-512)"
        )) && failures > before
        {
            eprintln!(
                "refused after {:?}: /readyz {status:?} {body}, {SASL_FAILURES} {failures}",
                changed.elapsed()
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "after the password change: /readyz {status:?} {body}, {SASL_FAILURES} {failures}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for password in [PASSWORD, ROTATED] {
        assert!(
            !body.to_string().contains(password),
            "/readyz shows a password: {body}"
        );
    }
    // Taken while the credentials are refused (into the spool), and ready throughout.
    assert_eq!(track("rot-2").await.unwrap().status(), 200);
    let response = client.get(format!("{}/readyz", ingest.url)).send().await.unwrap();
    let (status, body) = (response.status(), response.text().await.unwrap());
    assert_eq!(status, 200, "/readyz while the spool takes every event: {body}");
    assert!(body.contains("kafka_authentication_failure"), "{body}");

    broker.change_password(PASSWORD).await;
    let records = consume_from(&settings, &topics.ingest, 2, Duration::from_secs(90)).await;
    let ids: Vec<_> = records.iter().map(|r| r.json()["message_id"].clone()).collect();
    assert_eq!(ids, ["rot-1", "rot-2"], "what the spool took while refused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_or_an_untrusted_ca_stops_it_naming_the_cause() {
    let (sources, spool) = (test_support::sources_file(), tempfile::tempdir().unwrap());
    assert_refuses_a_wrong_password_and_an_untrusted_ca(Via::Env, REFUSED_WITHIN, || {
        ingest(sources.path(), spool.path())
    })
    .await;
}

#[test]
fn kafka_options_reach_librdkafka_and_fixed_settings_are_refused() {
    let (sources, spool) = (test_support::sources_file(), tempfile::tempdir().unwrap());
    assert_checks_kafka_options(Via::Env, REFUSED_WITHIN, || ingest(sources.path(), spool.path()));
}

#[test]
fn help_shows_the_connection_flags_and_no_secret() {
    let mut command = Command::new(env!("CARGO_BIN_EXE_ingest"));
    let output = command
        .arg("--help")
        .env("CDP_KAFKA_OPTIONS", "ssl.keystore.password=hunter2")
        .output()
        .unwrap();
    let help = String::from_utf8(output.stdout).unwrap();
    for flag in [
        "--kafka-security-protocol",
        "--kafka-sasl-mechanism",
        "--kafka-sasl-username",
        "--kafka-sasl-password-file",
        "--kafka-ssl-ca-location",
        "--kafka-ssl-certificate-location",
        "--kafka-ssl-key-location",
        "--kafka-ssl-key-password-file",
        "--kafka-sasl-oauthbearer-token-endpoint-url",
        "--kafka-sasl-oauthbearer-client-id",
        "--kafka-sasl-oauthbearer-client-secret-file",
        "--kafka-sasl-oauthbearer-scope",
        "--kafka-option",
        "CDP_KAFKA_OPTIONS",
    ] {
        assert!(help.contains(flag), "--help lacks {flag}");
    }
    assert!(!help.contains("hunter2"), "--help shows a secret");
}
