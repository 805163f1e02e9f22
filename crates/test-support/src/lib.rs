//! Integration-test helpers, against the real broker that `cargo xtask test` starts.
//!
//! - [`brokers`]: the broker address (`KAFKA_BROKERS`);
//! - [`fresh_topics`]: a new ingest/DLQ/retry topic set per test;
//! - [`consume`]: collects records (key, headers, value, partition) until a count or a timeout;
//! - [`sources_file`]: a sources file with development keys;
//! - [`assert_schema_valid`]: checks an ingest record against the published JSON Schema;
//! - [`python`]: a Python with `segment-analytics-python` installed;
//! - [`browser`]: Chromium, npm packages, esbuild bundles and a page server, for real
//!   JavaScript clients;
//! - [`mock`]: librdkafka's mock cluster with faults on cue;
//! - [`assert_nothing_lost`]: the fault tests' oracle over the three topics;
//! - [`OwnBroker`]: a tansu process of the test's own, to kill and restart.

#![allow(clippy::missing_panics_doc)]

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub mod browser;
pub mod mock;
mod own_broker;

pub use own_broker::OwnBroker;

pub use kafka_producer::Topics;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};

/// The development write key in [`sources_file`], for workspace `ws_test`, source `src_test`.
pub const WRITE_KEY: &str = "test-write-key";
/// A write key whose source is disabled.
pub const DISABLED_WRITE_KEY: &str = "disabled-write-key";

/// The broker under test: `KAFKA_BROKERS`, which `cargo xtask test` sets after starting one.
pub fn brokers() -> String {
    std::env::var("KAFKA_BROKERS").unwrap_or_else(|_| {
        panic!("KAFKA_BROKERS is not set: run the tests with `cargo xtask test`, which starts a broker, or set KAFKA_BROKERS=host:port")
    })
}

/// Creates a new topic set (`<prefix>-<id>.ingest`, `.dlq`, `.retry`); the ingest topic has
/// `partitions` partitions, the others one.
pub async fn fresh_topics(partitions: i32) -> Topics {
    let id = &uuid::Uuid::new_v4().simple().to_string()[..12];
    let topics = Topics {
        ingest: format!("t-{id}.ingest"),
        dlq: format!("t-{id}.dlq"),
        retry: format!("t-{id}.retry"),
    };
    kafka_producer::ensure_topics(
        &brokers(),
        &[(&topics.ingest, partitions), (&topics.dlq, 1), (&topics.retry, 1)],
    )
    .await
    .expect("creating test topics");
    topics
}

/// One consumed record.
#[derive(Debug, Clone)]
pub struct Record {
    /// The partition it was on.
    pub partition: i32,
    /// Its offset there.
    pub offset: i64,
    /// The record's timestamp (create time), Unix milliseconds.
    pub timestamp_ms: Option<i64>,
    /// The key, as text.
    pub key: Option<String>,
    /// Headers, as text.
    pub headers: BTreeMap<String, String>,
    /// The value bytes.
    pub value: Vec<u8>,
}

impl Record {
    /// The value parsed as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.value).expect("record value is JSON")
    }

    /// The value of an ingest-topic record: checked against the published JSON Schema, then
    /// parsed.
    pub fn event(&self) -> serde_json::Value {
        assert_schema_valid(&self.value);
        self.json()
    }

    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }
}

/// Reads `topic` from the beginning of every partition until `count` records arrived or
/// `timeout` passed, and returns what arrived (in partition order, then offset order).
/// Waits for records, never for watermarks (tansu's in-memory watermarks are approximate).
pub async fn consume(topic: &str, count: usize, timeout: Duration) -> Vec<Record> {
    consume_from(&brokers(), topic, count, timeout).await
}

/// [`consume`] from another cluster (a mock cluster, say).
pub async fn consume_from(brokers: &str, topic: &str, count: usize, timeout: Duration) -> Vec<Record> {
    let (brokers, topic) = (brokers.to_string(), topic.to_string());
    tokio::task::spawn_blocking(move || consume_blocking(&brokers, &topic, count, timeout))
        .await
        .expect("consumer thread")
}

/// A consumer of every partition of `topics` from the beginning, in a group of its own.
fn consumer_from_start(brokers: &str, topics: &[&str]) -> (BaseConsumer, TopicPartitionList) {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("test-{}", uuid::Uuid::new_v4()))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .create()
        .expect("creating test consumer");
    let mut assignment = TopicPartitionList::new();
    for topic in topics {
        let metadata = consumer
            .fetch_metadata(Some(topic), Duration::from_secs(10))
            .expect("fetching topic metadata");
        for p in metadata.topics().iter().flat_map(|t| t.partitions()) {
            assignment
                .add_partition_offset(topic, p.id(), Offset::Beginning)
                .expect("adding partition");
        }
    }
    consumer.assign(&assignment).expect("assigning partitions");
    (consumer, assignment)
}

fn consume_blocking(brokers: &str, topic: &str, count: usize, timeout: Duration) -> Vec<Record> {
    let (consumer, _) = consumer_from_start(brokers, &[topic]);
    let deadline = Instant::now() + timeout;
    let mut records = Vec::new();
    while records.len() < count && Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => records.push(Record {
                partition: m.partition(),
                offset: m.offset(),
                timestamp_ms: m.timestamp().to_millis(),
                key: m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
                headers: m
                    .headers()
                    .map(|hs| {
                        hs.iter()
                            .map(|h| {
                                (
                                    h.key.to_string(),
                                    String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                                )
                            })
                            .collect()
                    })
                    .unwrap_or_default(),
                value: m.payload().unwrap_or_default().to_vec(),
            }),
            // Transport errors (a broker a test took down) are transient: keep polling.
            Some(Err(e)) => eprintln!("consuming {topic}: {e}"),
            None => {}
        }
    }
    records.sort_by_key(|r| (r.partition, r.offset));
    records
}

/// Where the events that got a 2xx ended up: the oracle of the fault tests.
#[derive(Debug)]
pub struct Landed {
    /// Records found per accepted `message_id`, over the ingest, retry and DLQ topics.
    pub counts: HashMap<String, usize>,
    /// Accepted ids found on none of them.
    pub missing: Vec<String>,
}

impl Landed {
    /// Records beyond the first of each id.
    pub fn duplicates(&self) -> usize {
        self.counts.values().map(|c| c.saturating_sub(1)).sum()
    }
}

/// Reads the ingest, retry and DLQ topics of `brokers` until every id of `accepted` was seen
/// or `timeout` passed, counting the records of each id (the `message_id` of the value).
pub async fn landed(brokers: &str, topics: &Topics, accepted: &[String], timeout: Duration) -> Landed {
    let brokers = brokers.to_string();
    let topics = [topics.ingest.clone(), topics.retry.clone(), topics.dlq.clone()];
    let accepted = accepted.to_vec();
    tokio::task::spawn_blocking(move || {
        let (consumer, assignment) = consumer_from_start(&brokers, &topics.each_ref().map(String::as_str));
        let mut counts: HashMap<String, usize> = accepted.iter().map(|id| (id.clone(), 0)).collect();
        let mut unseen = accepted.len();
        let deadline = Instant::now() + timeout;
        while unseen > 0 && Instant::now() < deadline {
            let m = match consumer.poll(Duration::from_millis(100)) {
                Some(Ok(m)) => m,
                // Transport errors (a broker a test took down) are transient: keep polling.
                Some(Err(e)) => {
                    eprintln!("consuming: {e}");
                    continue;
                }
                None => continue,
            };
            let value: serde_json::Value =
                serde_json::from_slice(m.payload().unwrap_or_default()).unwrap_or(serde_json::Value::Null);
            if let Some(count) = value["message_id"].as_str().and_then(|id| counts.get_mut(id)) {
                if *count == 0 {
                    unseen -= 1;
                }
                *count += 1;
            }
        }
        if unseen > 0 {
            // Where each partition stopped, for the failure message.
            for tp in assignment.elements() {
                let position = consumer
                    .position()
                    .ok()
                    .and_then(|p| p.find_partition(tp.topic(), tp.partition()).map(|e| e.offset()));
                let watermarks =
                    consumer.fetch_watermarks(tp.topic(), tp.partition(), Duration::from_secs(5));
                eprintln!(
                    "{} [{}]: position {position:?}, watermarks {watermarks:?}",
                    tp.topic(),
                    tp.partition()
                );
            }
        }
        let mut missing: Vec<String> = accepted.into_iter().filter(|id| counts[id] == 0).collect();
        missing.sort();
        counts.retain(|_, c| *c > 0);
        Landed { counts, missing }
    })
    .await
    .expect("consumer thread")
}

/// The fault tests' oracle: every event that got a 2xx is on the ingest, retry or DLQ topic
/// (duplicates allowed). Panics naming the missing ones; returns what landed.
pub async fn assert_nothing_lost(
    brokers: &str,
    topics: &Topics,
    accepted: &[String],
    timeout: Duration,
) -> Landed {
    assert!(
        !accepted.is_empty(),
        "no event was accepted: the test proves nothing"
    );
    let landed = landed(brokers, topics, accepted, timeout).await;
    assert!(
        landed.missing.is_empty(),
        "{} of {} events that got a 2xx are on no topic: {:?}",
        landed.missing.len(),
        accepted.len(),
        &landed.missing[..landed.missing.len().min(20)]
    );
    landed
}

/// Produces one record to `topic` and waits for the acknowledgement.
pub async fn produce(topic: &str, key: Option<&str>, value: &[u8], headers: &[(&str, &str)]) {
    use rdkafka::message::{Header, OwnedHeaders};
    use rdkafka::producer::{FutureProducer, FutureRecord};
    static PRODUCER: OnceLock<FutureProducer> = OnceLock::new();
    let producer = PRODUCER.get_or_init(|| {
        ClientConfig::new()
            .set("bootstrap.servers", brokers())
            .set("linger.ms", "0")
            .create()
            .expect("creating test producer")
    });
    let mut owned = OwnedHeaders::new();
    for (k, v) in headers {
        owned = owned.insert(Header {
            key: k,
            value: Some(*v),
        });
    }
    let mut record = FutureRecord::<str, [u8]>::to(topic).payload(value).headers(owned);
    if let Some(key) = key {
        record = record.key(key);
    }
    producer
        .send(record, Duration::from_secs(10))
        .await
        .expect("producing a test record");
}

/// The committed offsets of `group` on `topic`, by partition (`None`: nothing committed).
pub async fn committed(group: &str, topic: &str) -> Vec<(i32, Option<i64>)> {
    let (group, topic) = (group.to_string(), topic.to_string());
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", brokers())
            .set("group.id", &group)
            .create()
            .expect("creating test consumer");
        let metadata = consumer
            .fetch_metadata(Some(&topic), Duration::from_secs(10))
            .expect("metadata");
        let mut tpl = TopicPartitionList::new();
        for p in metadata.topics().iter().flat_map(|t| t.partitions()) {
            tpl.add_partition(&topic, p.id());
        }
        let committed = consumer
            .committed_offsets(tpl, Duration::from_secs(10))
            .expect("committed offsets");
        committed
            .elements()
            .iter()
            .map(|e| match e.offset() {
                Offset::Offset(o) => (e.partition(), Some(o)),
                _ => (e.partition(), None),
            })
            .collect()
    })
    .await
    .expect("committed-offsets thread")
}

/// A temporary sources file: [`WRITE_KEY`] (enabled, plain) and [`DISABLED_WRITE_KEY`].
pub fn sources_file() -> tempfile::NamedTempFile {
    let mut file = tempfile::Builder::new()
        .suffix(".toml")
        .tempfile()
        .expect("temp file");
    let text = format!(
        "[[source]]\nworkspace_id = \"ws_test\"\nsource_id = \"src_test\"\nwrite_key = \"{WRITE_KEY}\"\n\n\
         [[source]]\nworkspace_id = \"ws_test\"\nsource_id = \"src_off\"\nwrite_key = \"{DISABLED_WRITE_KEY}\"\nenabled = false\n"
    );
    std::io::Write::write_all(&mut file, text.as_bytes()).expect("writing sources file");
    file
}

/// Asserts that an ingest-topic value validates against the published JSON Schema.
pub fn assert_schema_valid(value: &[u8]) {
    static VALIDATOR: OnceLock<jsonschema::Validator> = OnceLock::new();
    let validator = VALIDATOR.get_or_init(|| {
        let schema: serde_json::Value =
            serde_json::from_str(event_model::INGEST_EVENT_SCHEMA).expect("schema is JSON");
        jsonschema::validator_for(&schema).expect("schema compiles")
    });
    let instance: serde_json::Value = serde_json::from_slice(value).expect("value is JSON");
    let errors: Vec<String> = validator.iter_errors(&instance).map(|e| e.to_string()).collect();
    assert!(
        errors.is_empty(),
        "{instance} does not match the schema: {errors:?}"
    );
}

/// The package installed into the test venv, pinned.
pub const SEGMENT_SDK: &str = "segment-analytics-python==2.4.0";

/// A Python interpreter with [`SEGMENT_SDK`] installed, in a venv cached outside the repo
/// (`$XDG_CACHE_HOME` or `~/.cache`, under `cdp-ingest/`). Creates it on first use.
pub fn python() -> PathBuf {
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .expect("HOME is set");
    let venv = cache.join("cdp-ingest").join("venv-segment-2.4.0");
    let python = venv.join("bin").join("python");
    let ready = || {
        Command::new(&python)
            .args(["-c", "import segment.analytics"])
            .status()
            .is_ok_and(|s| s.success())
    };
    if !ready() {
        let run = |cmd: &mut Command| {
            let status = cmd.status().unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
            assert!(status.success(), "{cmd:?} failed: {status}");
        };
        run(Command::new("python3").args(["-m", "venv"]).arg(&venv));
        run(Command::new(&python).args(["-m", "pip", "install", "--quiet", SEGMENT_SDK]));
        assert!(
            ready(),
            "{SEGMENT_SDK} installed but `import segment.analytics` fails"
        );
    }
    python
}
