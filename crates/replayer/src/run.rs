//! The replay loop: consume, judge, produce and await, store offsets; modes and the summary.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::future::Future;
use std::time::{Duration, Instant};

use chrono::{TimeZone, Utc};
use kafka_producer::{Ack, ConnectionWatch, EventProducer, ProducerConfig, WatchedContext};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer as RdStreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::{Offset, TopicPartitionList};

use crate::{judge, metrics, Config, Verdict};

/// What stops a replay.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The cluster does not answer, a topic is missing, or a write failed.
    #[error(transparent)]
    Kafka(#[from] kafka_producer::Error),
    /// The consumer failed.
    #[error("DLQ consumer: {0}")]
    Consumer(#[from] KafkaError),
}

/// What a run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    /// Events that pass today and were produced (or would be, in a dry run).
    pub replayed: u64,
    /// Records that still fail, by today's reason.
    pub still_failing: BTreeMap<String, u64>,
    /// Records not selected by the filters.
    pub filtered_out: u64,
    /// Records that are not DLQ envelopes.
    pub undecodable: u64,
    /// Nothing was produced or committed.
    pub dry_run: bool,
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verb = if self.dry_run {
            "would be replayed"
        } else {
            "replayed"
        };
        writeln!(
            f,
            "dlq-replayer summary{}",
            if self.dry_run {
                " (dry run: nothing produced or committed)"
            } else {
                ""
            }
        )?;
        writeln!(f, "  {:<28} {:>8}", verb, self.replayed)?;
        writeln!(
            f,
            "  {:<28} {:>8}",
            "still failing",
            self.still_failing.values().sum::<u64>()
        )?;
        for (reason, n) in &self.still_failing {
            writeln!(f, "    {reason:<26} {n:>8}")?;
        }
        writeln!(f, "  {:<28} {:>8}", "filtered out", self.filtered_out)?;
        writeln!(f, "  {:<28} {:>8}", "undecodable", self.undecodable)
    }
}

/// The DLQ consumer: its context counts and names authentication and TLS failures.
type StreamConsumer = RdStreamConsumer<WatchedContext>;

/// Records judged per round before their writes are awaited.
const CHUNK: usize = 500;
/// The `client.id` of the replayer's producer and consumer (broker logs and quotas).
const CLIENT_ID: &str = "cdp-dlq-replayer";
/// In `--until-end` mode: how long without records before giving up on partitions whose end
/// offset was not reached (a broker whose watermarks overstate, say).
const IDLE_END: Duration = Duration::from_secs(10);

/// Replays until `shutdown` resolves or, with `--until-end`, until the end offsets seen at
/// start; returns what was done.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<Summary, Error> {
    let settings = config.kafka.settings();
    let mut producer_config = ProducerConfig::new(settings.clone(), config.kafka.topics());
    producer_config.client_id = CLIENT_ID.into();
    producer_config.metric_prefix = "cdp_dlq_replayer".into();
    producer_config.dlq_timeout = config.produce_timeout;
    producer_config.message_timeout = config.produce_timeout;
    let producer = tokio::task::spawn_blocking(move || EventProducer::connect(producer_config, None))
        .await
        .map_err(|e| KafkaError::ClientCreation(e.to_string()))??;
    if let Some(park) = &config.park_topic {
        let ping = settings.clone();
        let topics =
            tokio::task::spawn_blocking(move || kafka_producer::fetch_topics(ping, Duration::from_secs(10)))
                .await
                .map_err(|e| KafkaError::ClientCreation(e.to_string()))??;
        if !topics.iter().any(|(t, _)| t == park) {
            return Err(kafka_producer::Error::MissingTopic(park.clone()).into());
        }
    }

    let topic = config.kafka.topic_dlq.clone();
    let mut consumer_config = ClientConfig::new();
    consumer_config
        .set("group.id", &config.group_id)
        .set("client.id", CLIENT_ID)
        .set(
            "enable.auto.commit",
            if config.dry_run { "false" } else { "true" },
        )
        .set("auto.commit.interval.ms", "1000")
        // Offsets are stored only after the replayed event was acknowledged.
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest");
    // Counted with the producer's, as cdp_dlq_replayer_kafka_authentication_failures_total.
    let watch = ConnectionWatch::new("cdp_dlq_replayer", &settings);
    let consumer: StreamConsumer = settings
        .apply(&mut consumer_config)?
        .create_with_context(WatchedContext::new(watch))
        .map_err(kafka_producer::config_error)?;
    let mut ends = if config.until_end || config.from_beginning {
        let ends = assign_all(&consumer, &topic, config.from_beginning).await?;
        config.until_end.then_some(ends)
    } else {
        consumer.subscribe(&[&topic])?;
        None
    };
    tracing::info!(
        topic,
        group = config.group_id,
        dry_run = config.dry_run,
        until_end = config.until_end,
        "replaying"
    );

    let filters = config.filters();
    let limits = config.limits.limits();
    let mut summary = Summary {
        dry_run: config.dry_run,
        ..Summary::default()
    };
    let started = Instant::now();
    let mut judged: u64 = 0;
    tokio::pin!(shutdown);
    loop {
        if ends.as_ref().is_some_and(HashMap::is_empty) {
            break;
        }
        let first = tokio::select! {
            () = &mut shutdown => break,
            m = tokio::time::timeout(IDLE_END, consumer.recv()) => m,
        };
        let first = match first {
            Ok(Ok(m)) => m,
            Ok(Err(error)) => {
                // Transient (a broker going away, a rebalance): librdkafka recovers; keep polling.
                tracing::warn!(%error, "DLQ consumer error");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
            Err(_) if ends.is_some() => {
                tracing::warn!(partitions = ?ends, "no records for a while before the end offsets seen at start: stopping");
                break;
            }
            Err(_) => continue,
        };
        // With a rate, a chunk is at most ~10 s of work: the consumer must poll often enough to
        // stay in its group.
        let chunk_size = match config.rate {
            0 => CHUNK,
            rate => (rate as usize * 10).clamp(1, CHUNK),
        };
        let mut chunk = vec![first];
        while chunk.len() < chunk_size {
            match tokio::time::timeout(Duration::ZERO, consumer.recv()).await {
                Ok(Ok(m)) => chunk.push(m),
                _ => break,
            }
        }

        let mut pending: Vec<(i32, i64, Option<Ack>)> = Vec::with_capacity(chunk.len());
        for m in &chunk {
            if let Some(ends) = ends.as_mut() {
                match ends.get(&m.partition()) {
                    Some(end) if m.offset() < *end => {
                        if m.offset() + 1 >= *end {
                            ends.remove(&m.partition());
                        }
                    }
                    _ => {
                        // Past the end seen at start: this partition is done.
                        ends.remove(&m.partition());
                        continue;
                    }
                }
            }
            if config.rate > 0 {
                pace(started, judged, config.rate).await;
            }
            judged += 1;
            let ack = settle(&producer, &config, &mut summary, m, &filters, &limits)?;
            pending.push((m.partition(), m.offset(), ack));
        }
        let mut next_offsets: HashMap<i32, i64> = HashMap::new();
        for (partition, offset, ack) in pending {
            if let Some(ack) = ack {
                if let Err(error) = ack.wait().await {
                    store(&consumer, &topic, &next_offsets, config.dry_run);
                    return Err(error.into());
                }
            }
            next_offsets.insert(partition, offset + 1);
        }
        store(&consumer, &topic, &next_offsets, config.dry_run);
    }
    if !config.dry_run {
        if let Err(error) = consumer.commit_consumer_state(CommitMode::Sync) {
            tracing::info!(%error, "final commit: nothing new to commit");
        }
    }
    tracing::info!(
        replayed = summary.replayed,
        filtered_out = summary.filtered_out,
        "replay finished"
    );
    Ok(summary)
}

/// Judges one record and starts its write; returns the acknowledgement to await, if any.
fn settle(
    producer: &EventProducer,
    config: &Config,
    summary: &mut Summary,
    m: &BorrowedMessage<'_>,
    filters: &crate::Filters,
    limits: &event_model::Limits,
) -> Result<Option<Ack>, Error> {
    let record_time = m
        .timestamp()
        .to_millis()
        .and_then(|ms| Utc.timestamp_millis_opt(ms).single());
    let verdict = judge(m.payload().unwrap_or_default(), record_time, filters, limits);
    Ok(match verdict {
        Verdict::Replay {
            event,
            workspace_id,
            source_id,
        } => {
            summary.replayed += 1;
            metrics::record("replayed");
            tracing::debug!(message_id = event.message_id, "replaying");
            if config.dry_run {
                None
            } else {
                Some(retry_full(|| {
                    producer.send_event_acked(&event, &workspace_id, &source_id)
                })?)
            }
        }
        Verdict::StillFailing { envelope, rejection } => {
            *summary
                .still_failing
                .entry(rejection.reason.as_str().to_string())
                .or_default() += 1;
            metrics::record("still_failing");
            metrics::still_failing(rejection.reason.as_str());
            tracing::debug!(message_id = envelope.message_id, reason = %rejection.reason, "still failing");
            match (&config.park_topic, config.dry_run) {
                (Some(park), false) => Some(retry_full(|| producer.send_envelope(park, &envelope))?),
                _ => None,
            }
        }
        Verdict::Filtered => {
            summary.filtered_out += 1;
            metrics::record("filtered");
            None
        }
        Verdict::Undecodable(error) => {
            summary.undecodable += 1;
            metrics::record("undecodable");
            tracing::warn!(
                partition = m.partition(),
                offset = m.offset(),
                error,
                "DLQ record is not an envelope; skipped"
            );
            None
        }
    })
}

/// Enqueues, waiting out a full producer queue (this is a batch job, not a request path).
fn retry_full(mut send: impl FnMut() -> Result<Ack, kafka_producer::Error>) -> Result<Ack, Error> {
    loop {
        match send() {
            Err(kafka_producer::Error::QueueFull) => std::thread::sleep(Duration::from_millis(10)),
            other => return Ok(other?),
        }
    }
}

/// Stores the next offsets to read (`store_offsets` stores what it is given).
fn store(consumer: &StreamConsumer, topic: &str, next: &HashMap<i32, i64>, dry_run: bool) {
    if dry_run || next.is_empty() {
        return;
    }
    let mut tpl = TopicPartitionList::new();
    for (p, offset) in next {
        let _ = tpl.add_partition_offset(topic, *p, Offset::Offset(*offset));
    }
    if let Err(error) = consumer.store_offsets(&tpl) {
        tracing::warn!(%error, "cannot store offsets");
    }
}

/// Assigns every partition of `topic`, from the beginning or the group's committed offsets,
/// and returns the end offsets seen now of the partitions that have records left.
async fn assign_all(
    consumer: &StreamConsumer,
    topic: &str,
    from_beginning: bool,
) -> Result<HashMap<i32, i64>, Error> {
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    let mut all = TopicPartitionList::new();
    for p in &partitions {
        all.add_partition(topic, *p);
    }
    let committed = consumer.committed_offsets(all, Duration::from_secs(10))?;
    let mut assignment = TopicPartitionList::new();
    let mut ends = HashMap::new();
    for p in partitions {
        let (low, high) = consumer.fetch_watermarks(topic, p, Duration::from_secs(10))?;
        let start = match committed.find_partition(topic, p).map(|e| e.offset()) {
            // Records below the low watermark are gone (retention): start at the first kept one.
            Some(Offset::Offset(c)) if !from_beginning => c.max(low),
            _ => low,
        };
        let offset = if from_beginning {
            Offset::Beginning
        } else {
            Offset::Offset(start)
        };
        assignment.add_partition_offset(topic, p, offset)?;
        if start < high {
            ends.insert(p, high);
        }
    }
    consumer.assign(&assignment)?;
    tracing::info!(?ends, "end offsets seen at start");
    Ok(ends)
}

/// Sleeps so that at most `rate` records per second are judged.
async fn pace(started: Instant, judged: u64, rate: u32) {
    let due = started + Duration::from_secs_f64(judged as f64 / f64::from(rate));
    tokio::time::sleep_until(due.into()).await;
}
