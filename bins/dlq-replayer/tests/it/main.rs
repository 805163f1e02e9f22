//! The `dlq-replayer` binary: a one-shot job's summary, a replay killed mid-run, and Kafka
//! security (SASL, TLS) in `security`.

mod security;

use std::collections::BTreeSet;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;
use test_support::{brokers, consume, fresh_topics, produce, Topics};

fn replayer(topics: &Topics, group: &str, extra: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_dlq-replayer"));
    command
        .env("CDP_KAFKA_BROKERS", brokers())
        .env("CDP_TOPIC_INGEST", &topics.ingest)
        .env("CDP_TOPIC_DLQ", &topics.dlq)
        .env("CDP_TOPIC_RETRY", &topics.retry)
        .env("CDP_GROUP_ID", group)
        .env("CDP_METRICS_LISTEN", "127.0.0.1:0")
        .args(extra);
    command
}

/// `n` DLQ envelopes whose raw payload passes today, one record each.
async fn fill(topics: &Topics, n: usize) -> BTreeSet<String> {
    let mut ids = BTreeSet::new();
    for i in 0..n {
        let id = format!("d-{i}");
        let raw = json!({"type": "track", "anonymousId": format!("v{}", i % 7), "event": "e"}).to_string();
        let envelope = json!({"workspace_id": "w", "source_id": "s", "message_id": id, "reason": "missing_field",
                              "field": "/event", "raw_payload": raw});
        produce(
            &topics.dlq,
            Some("w"),
            envelope.to_string().as_bytes(),
            &[("reason", "missing_field")],
        )
        .await;
        ids.insert(id);
    }
    ids
}

#[test]
fn help_documents_every_flag() {
    let out = Command::new(env!("CARGO_BIN_EXE_dlq-replayer"))
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8(out.stdout).unwrap();
    for flag in [
        "--brokers",
        "--topic-ingest",
        "--topic-dlq",
        "--topic-retry",
        "--metrics-listen",
        "--log-format",
        "--group-id",
        "--from-beginning",
        "--until-end",
        "--dry-run",
        "--rate",
        "--park-topic",
        "--reason",
        "--workspace-id",
        "--source-id",
        "--received-after",
        "--received-before",
        "--max-event-bytes",
    ] {
        assert!(
            help.contains(&format!("{flag} ")) || help.contains(&format!("{flag}\n")),
            "{flag} missing:\n{help}"
        );
    }
    assert_eq!(
        help.matches("[env: CDP_").count(),
        help.matches("\n      --").count() + usize::from(help.starts_with("      --"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn until_end_exits_on_its_own_with_a_correct_summary() {
    let topics = fresh_topics(1).await;
    fill(&topics, 20).await;
    let bad = json!({"workspace_id": "w", "source_id": "s", "message_id": "bad", "reason": "missing_field",
                     "field": "/event", "raw_payload": "{\"type\":\"track\",\"userId\":\"u\"}"});
    produce(&topics.dlq, Some("w"), bad.to_string().as_bytes(), &[]).await;
    let group = format!("g-{}", topics.dlq);
    let out =
        tokio::task::spawn_blocking(move || replayer(&topics, &group, &["--until-end"]).output().unwrap())
            .await
            .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let line = |label: &str| -> u64 {
        let l = stdout
            .lines()
            .find(|l| l.trim_start().starts_with(label))
            .unwrap_or_else(|| panic!("{label}: {stdout}"));
        l.split_whitespace().last().unwrap().parse().unwrap()
    };
    assert_eq!(line("replayed"), 20, "{stdout}");
    assert_eq!(line("still failing"), 1, "{stdout}");
    assert_eq!(line("missing_field"), 1, "{stdout}");
    assert_eq!(line("filtered out"), 0, "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayer_killed_mid_run_and_restarted_gives_duplicates_never_a_loss() {
    let topics = fresh_topics(1).await;
    let expected = fill(&topics, 600).await;
    let group = format!("g-{}", topics.dlq);
    let mut first = replayer(&topics, &group, &["--until-end", "--rate", "200"])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let seen = consume(&topics.ingest, 100, Duration::from_secs(30)).await;
    assert!(seen.len() >= 100);
    first.kill().unwrap();
    first.wait().unwrap();

    let restart = replayer(&topics, &group, &["--until-end"]);
    let out = tokio::task::spawn_blocking(move || {
        let mut c = restart;
        c.output().unwrap()
    })
    .await
    .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let records = consume(&topics.ingest, usize::MAX, Duration::from_secs(3)).await;
        let ids: BTreeSet<String> = records
            .iter()
            .map(|r| r.event()["message_id"].as_str().unwrap().to_string())
            .collect();
        let missing: Vec<_> = expected.difference(&ids).collect();
        if missing.is_empty() {
            eprintln!("{} records for {} events", records.len(), ids.len());
            break;
        }
        assert!(
            Instant::now() < deadline,
            "lost after a kill and restart: {} missing",
            missing.len()
        );
    }
}
