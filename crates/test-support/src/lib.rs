//! Integration-test helpers, against the real broker that `cargo xtask test` starts.
//!
//! - [`brokers`]: the broker address (`KAFKA_BROKERS`); [`kafka`]: with the `CDP_KAFKA_*`
//!   security settings, which every helper's client uses;
//! - [`fresh_topics`]: a new ingest/DLQ/retry topic set per test;
//! - [`consume`]: collects records (key, headers, value, partition) until a count or a timeout;
//! - [`sources_file`]: a sources file with development keys;
//! - [`assert_schema_valid`]: checks an ingest record against the published JSON Schema;
//! - [`python_with`]: a Python with one of the Segment or RudderStack libraries from PyPI installed;
//! - [`browser`]: Chromium, npm packages, esbuild bundles and a page server, for real
//!   JavaScript clients;
//! - [`mock`]: librdkafka's mock cluster with faults on cue;
//! - [`assert_nothing_lost`]: the fault tests' oracle over the three topics;
//! - [`OwnBroker`]: a tansu process of the test's own, to kill and restart, or hang (SIGSTOP) and thaw;
//! - [`SecureBroker`]: a tansu requiring SCRAM-SHA-512, over plaintext or behind TLS, and the
//!   refusal checks every binary passes ([`assert_refuses_a_wrong_password_and_an_untrusted_ca`],
//!   [`assert_checks_kafka_options`]).

#![allow(clippy::missing_panics_doc)]

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub mod browser;
pub mod metrics;
pub mod mock;
mod own_broker;
mod secure_broker;

pub use own_broker::OwnBroker;
pub use secure_broker::{
    assert_checks_kafka_options, assert_refuses_a_wrong_password_and_an_untrusted_ca, SecureBroker, Tls, Via,
    INHERITED_SECURITY_VARIABLES, PASSWORD, USER,
};

pub use kafka_producer::{KafkaSettings, Topics};
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

/// The broker under test with the security settings of the `CDP_KAFKA_*` variables (as the
/// binaries read them; plaintext when unset): how every helper here connects.
pub fn kafka() -> KafkaSettings {
    settings_from_env(&brokers())
}

fn settings_from_env(brokers: &str) -> KafkaSettings {
    ops::KafkaSecurityArgs::from_env()
        .unwrap_or_else(|e| panic!("reading the CDP_KAFKA_* variables: {e}"))
        .settings(brokers)
}

/// Creates a new topic set (`<prefix>-<id>.ingest`, `.dlq`, `.retry`); the ingest topic has
/// `partitions` partitions, the others one.
pub async fn fresh_topics(partitions: i32) -> Topics {
    fresh_topics_on(kafka(), partitions).await
}

/// [`fresh_topics`] on another cluster (a [`SecureBroker`], say).
pub async fn fresh_topics_on(kafka: impl Into<KafkaSettings>, partitions: i32) -> Topics {
    let id = &uuid::Uuid::new_v4().simple().to_string()[..12];
    let topics = Topics {
        ingest: format!("t-{id}.ingest"),
        dlq: format!("t-{id}.dlq"),
        retry: format!("t-{id}.retry"),
    };
    kafka_producer::ensure_topics(
        kafka,
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
    /// A consumed message as a record.
    fn of(m: &rdkafka::message::BorrowedMessage<'_>) -> Record {
        Record {
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
        }
    }

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
    consume_from(kafka(), topic, count, timeout).await
}

/// [`consume`] from another cluster (a mock cluster's bootstrap servers, a
/// [`SecureBroker`]'s settings).
pub async fn consume_from(
    kafka: impl Into<KafkaSettings>,
    topic: &str,
    count: usize,
    timeout: Duration,
) -> Vec<Record> {
    let (kafka, topic) = (kafka.into(), topic.to_string());
    tokio::task::spawn_blocking(move || consume_blocking(&kafka, &topic, count, timeout))
        .await
        .expect("consumer thread")
}

/// A consumer of every partition of `topics` from the beginning, in a group of its own.
fn consumer_from_start(kafka: &KafkaSettings, topics: &[&str]) -> (BaseConsumer, TopicPartitionList) {
    let mut config = ClientConfig::new();
    config
        .set("group.id", format!("test-{}", uuid::Uuid::new_v4()))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false");
    let consumer: BaseConsumer = kafka
        .apply(&mut config)
        .expect("test Kafka settings")
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

fn consume_blocking(kafka: &KafkaSettings, topic: &str, count: usize, timeout: Duration) -> Vec<Record> {
    let (consumer, _) = consumer_from_start(kafka, &[topic]);
    let deadline = Instant::now() + timeout;
    let mut records = Vec::new();
    while records.len() < count && Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => records.push(Record::of(&m)),
            // Transport errors (a broker a test took down) are transient: keep polling.
            Some(Err(e)) => eprintln!("consuming {topic}: {e}"),
            None => {}
        }
    }
    records.sort_by_key(|r| (r.partition, r.offset));
    records
}

/// A consumer of every partition of a topic from the beginning, on a thread of its own,
/// recording when each record arrived: a delay from request to topic is its arrival less the
/// request's time. Stops when dropped.
pub struct Arrivals {
    seen: std::sync::Arc<std::sync::Mutex<Vec<(Record, Instant)>>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Arrivals {
    /// Starts consuming `topic` on `kafka`.
    pub fn start(kafka: impl Into<KafkaSettings>, topic: &str) -> Arrivals {
        let (kafka, topic) = (kafka.into(), topic.to_string());
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let thread = std::thread::spawn({
            let (seen, stop) = (seen.clone(), stop.clone());
            move || {
                let (consumer, _) = consumer_from_start(&kafka, &[&topic]);
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    // An error (a broker a test took down) is transient: keep polling.
                    if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
                        seen.lock().unwrap().push((Record::of(&m), Instant::now()));
                    }
                }
            }
        });
        Arrivals {
            seen,
            stop,
            thread: Some(thread),
        }
    }

    /// The records seen so far, with when each arrived, in arrival order.
    pub fn seen(&self) -> Vec<(Record, Instant)> {
        self.seen.lock().unwrap().clone()
    }

    /// How many records have arrived.
    pub fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }
}

impl Drop for Arrivals {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
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
pub async fn landed(
    kafka: impl Into<KafkaSettings>,
    topics: &Topics,
    accepted: &[String],
    timeout: Duration,
) -> Landed {
    let kafka: KafkaSettings = kafka.into();
    let topics = [topics.ingest.clone(), topics.retry.clone(), topics.dlq.clone()];
    let accepted = accepted.to_vec();
    tokio::task::spawn_blocking(move || {
        let (consumer, assignment) = consumer_from_start(&kafka, &topics.each_ref().map(String::as_str));
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
    kafka: impl Into<KafkaSettings>,
    topics: &Topics,
    accepted: &[String],
    timeout: Duration,
) -> Landed {
    assert!(
        !accepted.is_empty(),
        "no event was accepted: the test proves nothing"
    );
    let landed = landed(kafka, topics, accepted, timeout).await;
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
    use rdkafka::producer::FutureProducer;
    static PRODUCER: OnceLock<FutureProducer> = OnceLock::new();
    let producer = PRODUCER.get_or_init(|| test_producer(&kafka()));
    produce_with(producer, topic, key, value, headers).await;
}

/// A producer for test records on `kafka`'s cluster.
pub fn test_producer(kafka: &KafkaSettings) -> rdkafka::producer::FutureProducer {
    let mut config = ClientConfig::new();
    config.set("linger.ms", "0");
    kafka
        .apply(&mut config)
        .expect("test Kafka settings")
        .create()
        .expect("creating test producer")
}

/// [`produce`] with a producer of the caller's ([`test_producer`]).
pub async fn produce_with(
    producer: &rdkafka::producer::FutureProducer,
    topic: &str,
    key: Option<&str>,
    value: &[u8],
    headers: &[(&str, &str)],
) {
    use rdkafka::message::{Header, OwnedHeaders};
    use rdkafka::producer::FutureRecord;
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
        let mut config = ClientConfig::new();
        config.set("group.id", &group);
        let consumer: BaseConsumer = kafka()
            .apply(&mut config)
            .expect("test Kafka settings")
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

/// A Python analytics library from PyPI, pinned, and the package it is imported as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PythonSdk {
    /// The pip requirement.
    pub requirement: &'static str,
    /// The module that must import once it is installed.
    pub module: &'static str,
}

/// Segment's current Python library.
pub const SEGMENT_SDK: PythonSdk = PythonSdk {
    requirement: "segment-analytics-python==2.4.0",
    module: "segment.analytics",
};

/// Segment's legacy Python library (`import analytics`), still in wide use: it reads
/// `code` and `message` from every error body.
pub const LEGACY_SEGMENT_SDK: PythonSdk = PythonSdk {
    requirement: "analytics-python==1.4.post1",
    module: "analytics",
};

/// RudderStack's Python library, which reads error bodies as the legacy Segment one does.
pub const RUDDER_SDK: PythonSdk = PythonSdk {
    requirement: "rudder-sdk-python==2.1.9",
    module: "rudderstack.analytics",
};

/// A Python interpreter with [`SEGMENT_SDK`] installed ([`python_with`]).
pub fn python() -> PathBuf {
    python_with(SEGMENT_SDK)
}

/// A Python interpreter with `sdk` installed, in a venv of its own (the libraries' pinned
/// dependencies conflict, and two of them install a `segment.analytics` package), cached
/// outside the repo (`$XDG_CACHE_HOME` or `~/.cache`, under `cdp-ingest/`). Creates it on
/// first use, in a scratch directory renamed into place, so that tests running at once
/// never see a half-made venv.
pub fn python_with(sdk: PythonSdk) -> PathBuf {
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .expect("HOME is set")
        .join("cdp-ingest");
    let name = format!("venv-{}", sdk.requirement.replace("==", "-"));
    let ready = |venv: &Path| {
        Command::new(venv.join("bin").join("python"))
            .args(["-c", &format!("import {}", sdk.module)])
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    let venv = cache.join(&name);
    if !ready(&venv) {
        let run = |cmd: &mut Command| {
            let status = cmd.status().unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
            assert!(status.success(), "{cmd:?} failed: {status}");
        };
        std::fs::create_dir_all(&cache).expect("creating the tools cache");
        let scratch = cache.join(format!("{name}.{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&scratch);
        run(Command::new("python3").args(["-m", "venv"]).arg(&scratch));
        let python = scratch.join("bin").join("python");
        run(Command::new(&python).args(["-m", "pip", "install", "--quiet", sdk.requirement]));
        assert!(
            ready(&scratch),
            "{} installed but `import {}` fails",
            sdk.requirement,
            sdk.module
        );
        // Another test may have put its venv in place meanwhile: either one will do.
        if std::fs::rename(&scratch, &venv).is_err() {
            let _ = std::fs::remove_dir_all(&scratch);
        }
        assert!(ready(&venv), "no usable venv at {}", venv.display());
    }
    venv.join("bin").join("python")
}

/// What a process printed and how it ended.
#[derive(Debug)]
pub struct Exited {
    /// Its exit status.
    pub status: std::process::ExitStatus,
    /// Its standard error (logs, the final error).
    pub stderr: String,
    /// How long it ran.
    pub after: Duration,
}

/// Runs `command` (its stderr piped) until it exits; panics if it is still running after
/// `timeout` (then killed), showing what it printed.
pub fn run_until_exit(command: &mut Command, timeout: Duration) -> Exited {
    use std::io::Read;
    let started = Instant::now();
    let mut child = command
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {command:?}: {e}"));
    let mut stderr = child.stderr.take().expect("piped stderr");
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    let waiter = std::thread::spawn(move || {
        let status = child.wait();
        let _ = tx.send(());
        status
    });
    if rx.recv_timeout(timeout).is_err() {
        let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).status();
        let _ = waiter.join();
        panic!(
            "{command:?} still ran after {timeout:?}; its stderr:\n{}",
            reader.join().unwrap_or_default()
        );
    }
    let status = waiter
        .join()
        .expect("waiter thread")
        .expect("waiting for the process");
    Exited {
        status,
        stderr: reader.join().unwrap_or_default(),
        after: started.elapsed(),
    }
}

/// Removes the `CDP_KAFKA_*` security variables `command` would inherit from the test process
/// (the suite's own cluster's), for a test that connects it to a cluster of its own.
pub fn without_inherited_security(command: &mut Command) -> &mut Command {
    for variable in INHERITED_SECURITY_VARIABLES {
        command.env_remove(variable);
    }
    command
}
