//! The producer on librdkafka's mock cluster ([`test_support::mock`], the one fault injector
//! these tests use): one test per health transition or delivery route, each saying where every
//! record ended up (on the ingest, retry or DLQ topic, read back with a consumer; in the spool;
//! or counted in `<prefix>_kafka_records_lost_total`), and what the producer's state and
//! readiness said meanwhile.
//!
//! Every test has its own mock cluster and its own metric prefix (`cdp_ingest_<test>`), so the
//! tests also hold when `cargo test` runs them as threads of one process. Nothing waits by
//! sleeping: [`Harness::until`] polls an observable condition up to a deadline.

mod close;
mod outage;
mod partition;
mod queue;
mod rebuild;
mod rejected;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use event_model::{Accepted, EventType};
use kafka_producer::spool::{self, Spool};
use kafka_producer::{Closed, EventProducer, ProducerConfig, Refused, Topics};
use test_support::mock::{mock_topics, Mock};
use test_support::{consume_from, Record};

/// How long a test waits for a condition or for records to arrive.
const WAIT: Duration = Duration::from_secs(20);
/// The workspace and source of every test event.
const WORKSPACE: &str = "ws_test";
const SOURCE: &str = "src_test";

/// Whether the producer gets a spool (in a temporary directory).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Spooled {
    Yes,
    No,
}

/// A mock cluster and a producer connected to it.
struct Harness {
    mock: Mock,
    topics: Topics,
    producer: Arc<EventProducer>,
    spool_dir: Option<tempfile::TempDir>,
    prefix: String,
}

/// A test event: key one of three visitors, value a JSON object naming its `message_id`
/// (as the DLQ envelope does, so that both read back the same way).
fn event(id: &str) -> Accepted {
    let visitor = id.bytes().map(u32::from).sum::<u32>() % 3;
    Accepted {
        message_id: id.to_string(),
        event_type: EventType::Track,
        key: format!("v{visitor}"),
        value: serde_json::to_vec(&serde_json::json!({"message_id": id, "type": "track", "event": "e"}))
            .unwrap(),
    }
}

/// `{prefix}-0` .. `{prefix}-{n-1}`.
fn ids(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i}")).collect()
}

/// The `message_id` in a record's JSON value (an ingest event or a DLQ envelope).
fn message_id(record: &Record) -> String {
    record.json()["message_id"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

impl Harness {
    /// A fresh mock cluster with the mock topics, and a producer for it with the metric prefix
    /// `cdp_ingest_<name>`, a spool if asked, and the test's changes to the configuration.
    async fn start(name: &str, spooled: Spooled, tweak: impl FnOnce(&mut ProducerConfig)) -> Harness {
        let topics = mock_topics();
        Harness::start_on(Mock::start(&topics), topics, name, spooled, tweak).await
    }

    /// [`Harness::start`] on `mock`, whose topics are `topics`.
    async fn start_on(
        mock: Mock,
        topics: Topics,
        name: &str,
        spooled: Spooled,
        tweak: impl FnOnce(&mut ProducerConfig),
    ) -> Harness {
        ops::install_metrics();
        if std::env::var_os("RUST_LOG").is_some() {
            static LOGGING: std::sync::Once = std::sync::Once::new();
            LOGGING.call_once(|| {
                ops::init_logging(&ops::LogArgs {
                    log_format: ops::LogFormat::Text,
                })
            });
        }
        let prefix = format!("cdp_ingest_{name}");
        let mut config = ProducerConfig::new(mock.bootstrap.clone(), topics.clone());
        config.metric_prefix = prefix.clone();
        config.ping_timeout = Duration::from_secs(5);
        if let Ok(debug) = std::env::var("RDKAFKA_DEBUG") {
            config.kafka.options.push(format!("debug={debug}"));
        }
        tweak(&mut config);
        let spool_dir = (spooled == Spooled::Yes).then(|| tempfile::tempdir().unwrap());
        let spool = spool_dir
            .as_ref()
            .map(|dir| Spool::open(dir.path(), spool::Options::default()).unwrap());
        let producer = tokio::task::spawn_blocking(move || EventProducer::connect(config, spool))
            .await
            .unwrap()
            .expect("connecting to the mock cluster");
        Harness {
            mock,
            topics,
            producer: Arc::new(producer),
            spool_dir,
            prefix,
        }
    }

    /// Sends `ids` as one request's events.
    async fn send(&self, ids: &[String], acked: bool) -> Result<(), Refused> {
        let events: Vec<Accepted> = ids.iter().map(|id| event(id)).collect();
        let unsendable = self
            .producer
            .send_events(&events, WORKSPACE, SOURCE, acked)
            .await?;
        assert!(unsendable.events.is_empty(), "{unsendable:?}");
        Ok(())
    }

    /// The spool.
    fn spool(&self) -> &Spool {
        self.producer.spool().expect("this test's producer has a spool")
    }

    /// The Prometheus text of the process.
    fn render(&self) -> String {
        ops::install_metrics().render()
    }

    /// The value of this producer's metric `<prefix>_<name>` (`name` may end in labels,
    /// `{to="dlq"}`); 0 when it was never registered.
    fn metric(&self, name: &str) -> f64 {
        test_support::metrics::value(&self.render(), &format!("{}_{name}", self.prefix)).unwrap_or(0.0)
    }

    /// Records counted lost.
    fn lost(&self) -> f64 {
        self.metric("kafka_records_lost_total")
    }

    /// Producers replaced.
    fn rebuilds(&self) -> f64 {
        self.metric("kafka_producer_rebuilds_total")
    }

    /// The producer's state, for failure messages.
    fn describe(&self) -> String {
        let spool = self.producer.spool().map(Spool::records);
        let kafka: Vec<String> = self
            .render()
            .lines()
            .filter(|l| l.starts_with(&self.prefix) && !l.contains("_bucket"))
            .map(str::to_string)
            .collect();
        format!(
            "health {:?}, status {:?}, in flight {}, spool records {spool:?}\n{}",
            self.producer.health(),
            self.producer.status(),
            self.producer.in_flight(),
            kafka.join("\n")
        )
    }

    /// Polls `check` every 10 ms until it holds; panics after `timeout`, showing the state.
    async fn until(&self, what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
        let deadline = Instant::now() + timeout;
        while !check() {
            assert!(
                Instant::now() < deadline,
                "{what}: not within {timeout:?}; {}",
                self.describe()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Reads `topic` from the start until every id of `expected` was seen (or [`WAIT`]
    /// passed); returns every record read, in offset order.
    async fn read(&self, topic: &str, expected: &[String]) -> Vec<Record> {
        let deadline = Instant::now() + WAIT;
        let mut count = expected.len().max(1);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let records = consume_from(self.mock.bootstrap.as_str(), topic, count, left).await;
            let seen: BTreeSet<String> = records.iter().map(message_id).collect();
            let missing = expected.iter().filter(|id| !seen.contains(*id)).count();
            if missing == 0 || records.len() < count || Instant::now() >= deadline {
                return records;
            }
            // Duplicates took the place of missing ids: read further.
            count = records.len() + missing;
        }
    }

    /// The ids on `topic` once every id of `expected` is there; panics naming the missing ones.
    async fn assert_on(&self, topic: &str, expected: &[String]) -> Vec<String> {
        let read: Vec<String> = self.read(topic, expected).await.iter().map(message_id).collect();
        let missing: Vec<&String> = expected.iter().filter(|id| !read.contains(*id)).collect();
        assert!(
            missing.is_empty(),
            "{} of {} records are not on {topic}: {missing:?}; read {read:?}; {}",
            missing.len(),
            expected.len(),
            self.describe()
        );
        read
    }

    /// Sends `ids` (buffered) until the producer takes them: librdkafka refuses records for a
    /// topic at once while it holds an error for it (after `TOPIC_AUTHORIZATION_FAILED`, until
    /// its next metadata refresh).
    async fn send_once_taken(&self, ids: &[String]) {
        let deadline = Instant::now() + WAIT;
        while let Err(refused) = self.send(ids, false).await {
            assert!(
                refused.taken == 0 && matches!(refused.error, kafka_producer::Error::Enqueue { .. }),
                "{refused:?}"
            );
            assert!(
                Instant::now() < deadline,
                "still refused: {refused:?}; {}",
                self.describe()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until every record is reported and every failed one routed.
    async fn settled(&self) {
        self.until("every record reported and routed", WAIT, || {
            self.producer.in_flight() == 0 && self.metric("kafka_rescue_pending_records") == 0.0
        })
        .await;
    }

    /// Closes the producer (blocking, so on a blocking thread).
    async fn close(&self, grace: Duration) -> Closed {
        let producer = self.producer.clone();
        tokio::task::spawn_blocking(move || producer.close(grace))
            .await
            .unwrap()
    }

    /// Asserts that every id of `expected` is on the ingest or the retry topic (the retry
    /// topic read up to what the producer delivered there); returns the ids on the retry topic.
    async fn assert_on_ingest_or_retry(&self, expected: &[String]) -> BTreeSet<String> {
        let retry = &self.topics.retry;
        let retried = self.metric(&format!("kafka_delivered_total{{topic=\"{retry}\"}}")) as usize;
        let records = consume_from(self.mock.bootstrap.as_str(), retry, retried, WAIT).await;
        assert_eq!(records.len(), retried, "{records:?}");
        for record in &records {
            assert_eq!(
                record.header(kafka_producer::retry::TARGET),
                Some(self.topics.ingest.as_str())
            );
        }
        let on_retry: BTreeSet<String> = records.iter().map(message_id).collect();
        let rest: Vec<String> = expected
            .iter()
            .filter(|id| !on_retry.contains(*id))
            .cloned()
            .collect();
        self.assert_on(&self.topics.ingest, &rest).await;
        on_retry
    }
}

/// The ids of `read` that occur more than once.
fn duplicates(read: &[String]) -> usize {
    let unique: BTreeSet<&String> = read.iter().collect();
    read.len() - unique.len()
}
