//! The consume loop: one slot per partition, paused while its record is held or in flight.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use kafka_producer::retry::RetryInfo;
use kafka_producer::ProducerConfig;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::producer::FutureProducer;
use rdkafka::statistics::Statistics;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio::sync::mpsc;

use crate::job::{self, Outcome};
use crate::{metrics, Config, Error};

/// What a partition's slot holds. A partition with a slot is paused.
enum Slot {
    /// Waiting for its not-before time (Unix ms).
    Held {
        message: OwnedMessage,
        info: Option<RetryInfo>,
        due_ms: i64,
    },
    /// Being forwarded.
    Busy { offset: i64 },
}

/// A finished job.
struct Done {
    partition: i32,
    message: OwnedMessage,
    info: Option<RetryInfo>,
    outcome: Outcome,
}

/// Rebalance callbacks and statistics.
struct Context {
    topic: String,
    revoked: mpsc::UnboundedSender<Vec<i32>>,
}

impl ClientContext for Context {
    fn stats(&self, stats: Statistics) {
        if let Some(topic) = stats.topics.get(&self.topic) {
            for (p, partition) in &topic.partitions {
                if *p >= 0 && partition.consumer_lag >= 0 {
                    metrics::lag(*p, partition.consumer_lag);
                }
            }
        }
    }
}

impl ConsumerContext for Context {
    fn pre_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Revoke(tpl) | Rebalance::Assign(tpl) => {
                let partitions = tpl.elements().iter().map(|e| e.partition()).collect();
                let _ = self.revoked.send(partitions);
            }
            Rebalance::Error(error) => tracing::warn!(%error, "rebalance error"),
        }
    }
}

/// Runs the forwarder until `shutdown` resolves, then lets forwards in flight finish (up to
/// the shutdown grace) and commits the offsets of everything acknowledged.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), Error> {
    let topic = config.kafka.topic_retry.clone();
    let brokers = config.kafka.brokers.clone();
    let existing =
        tokio::task::spawn_blocking(move || kafka_producer::fetch_topics(&brokers, Duration::from_secs(10)))
            .await
            .map_err(|e| Error::Create(rdkafka::error::KafkaError::ClientCreation(e.to_string())))??;
    if !existing.iter().any(|(t, _)| *t == topic) {
        return Err(kafka_producer::Error::MissingTopic(topic).into());
    }

    let mut producer_config = ProducerConfig::new(&config.kafka.brokers, config.kafka.topics());
    producer_config.client_id = "cdp-retry-forwarder".into();
    producer_config.message_timeout = config.produce_timeout;
    let producer: Arc<FutureProducer> =
        Arc::new(producer_config.client_config().create().map_err(Error::Create)?);

    let (revoked_tx, mut revoked) = mpsc::unbounded_channel();
    let consumer: StreamConsumer<Context> = ClientConfig::new()
        .set("bootstrap.servers", &config.kafka.brokers)
        .set("group.id", &config.group_id)
        .set("client.id", "cdp-retry-forwarder")
        .set("enable.auto.commit", "true")
        .set("auto.commit.interval.ms", "1000")
        // Offsets are stored only after the forward was acknowledged.
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("statistics.interval.ms", "5000")
        .create_with_context(Context {
            topic: topic.clone(),
            revoked: revoked_tx,
        })
        .map_err(Error::Create)?;
    consumer.subscribe(&[&topic]).map_err(|source| Error::Subscribe {
        topic: topic.clone(),
        source,
    })?;
    tracing::info!(topic, group = config.group_id, "forwarding retry records");

    let config = Arc::new(config);
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Done>();
    let mut slots: HashMap<i32, Slot> = HashMap::new();
    tokio::pin!(shutdown);
    loop {
        let next_due = slots
            .values()
            .filter_map(|s| match s {
                Slot::Held { due_ms, .. } => Some(*due_ms),
                Slot::Busy { .. } => None,
            })
            .min();
        let sleep = tokio::time::sleep(next_due.map_or(Duration::from_secs(3600), until));
        tokio::select! {
            biased;
            () = &mut shutdown => break,
            Some(partitions) = revoked.recv() => {
                // Assignment changed: whatever we held there is re-read by the new owner.
                for p in partitions {
                    slots.remove(&p);
                }
            }
            Some(done) = done_rx.recv() => finish(&consumer, &topic, &mut slots, done),
            () = sleep, if next_due.is_some() => {
                let now = now_ms();
                let due: Vec<i32> = slots
                    .iter()
                    .filter(|(_, s)| matches!(s, Slot::Held { due_ms, .. } if *due_ms <= now))
                    .map(|(p, _)| *p)
                    .collect();
                for p in due {
                    if let Some(Slot::Held { message, info, .. }) = slots.remove(&p) {
                        start(&producer, &config, &done_tx, &mut slots, message, info);
                    }
                }
            }
            received = consumer.recv() => match received {
                Ok(m) => {
                    let p = m.partition();
                    if slots.contains_key(&p) {
                        continue; // read ahead of a paused partition: re-read after the seek
                    }
                    let _ = consumer.pause(&partition(&topic, p));
                    let message = m.detach();
                    let info = RetryInfo::from_headers(message.headers());
                    let due_ms = info.as_ref().map_or(0, |i| i.not_before_ms);
                    if due_ms <= now_ms() {
                        start(&producer, &config, &done_tx, &mut slots, message, info);
                    } else {
                        slots.insert(p, Slot::Held { message, info, due_ms });
                    }
                }
                Err(error) => tracing::warn!(%error, "consumer error"),
            },
        }
        metrics::held(slots.values().filter(|s| matches!(s, Slot::Held { .. })).count());
    }

    tracing::info!("shutting down: finishing forwards in flight");
    let deadline = tokio::time::Instant::now() + config.shutdown_grace;
    while slots.values().any(|s| matches!(s, Slot::Busy { .. })) {
        match tokio::time::timeout_at(deadline, done_rx.recv()).await {
            Ok(Some(done)) => finish(&consumer, &topic, &mut slots, done),
            _ => break,
        }
    }
    match consumer.commit_consumer_state(CommitMode::Sync) {
        Ok(()) => tracing::info!("offsets committed"),
        // Nothing stored since the last commit is not an error worth more than a note.
        Err(error) => tracing::info!(%error, "final commit"),
    }
    Ok(())
}

fn start(
    producer: &Arc<FutureProducer>,
    config: &Arc<Config>,
    done: &mpsc::UnboundedSender<Done>,
    slots: &mut HashMap<i32, Slot>,
    message: OwnedMessage,
    info: Option<RetryInfo>,
) {
    let partition = message.partition();
    slots.insert(
        partition,
        Slot::Busy {
            offset: message.offset(),
        },
    );
    let (producer, config, done) = (producer.clone(), config.clone(), done.clone());
    tokio::spawn(async move {
        let outcome = job::process(&producer, &config, &message, info.as_ref()).await;
        let _ = done.send(Done {
            partition,
            message,
            info,
            outcome,
        });
    });
}

fn finish(consumer: &StreamConsumer<Context>, topic: &str, slots: &mut HashMap<i32, Slot>, done: Done) {
    let offset = done.message.offset();
    if !matches!(slots.get(&done.partition), Some(Slot::Busy { offset: o }) if *o == offset) {
        return; // the partition was revoked meanwhile; its new owner re-reads the record
    }
    match done.outcome {
        Outcome::Done => {
            slots.remove(&done.partition);
            let mut next = TopicPartitionList::new();
            // `store_offsets` stores what it is given: the next offset to read.
            let _ = next.add_partition_offset(topic, done.partition, Offset::Offset(offset + 1));
            if let Err(error) = consumer.store_offsets(&next) {
                tracing::warn!(%error, partition = done.partition, "cannot store offset");
            }
            // Records read ahead of the pause were skipped: read again from the next one.
            if let Err(error) =
                consumer.seek(topic, done.partition, Offset::Offset(offset + 1), Duration::ZERO)
            {
                tracing::warn!(%error, partition = done.partition, "seek failed");
            }
            let _ = consumer.resume(&partition(topic, done.partition));
        }
        Outcome::RetryLater => {
            let due_ms = now_ms() + 1_000;
            slots.insert(
                done.partition,
                Slot::Held {
                    message: done.message,
                    info: done.info,
                    due_ms,
                },
            );
        }
    }
}

fn partition(topic: &str, partition: i32) -> TopicPartitionList {
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(topic, partition);
    tpl
}

fn now_ms() -> i64 {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    i64::try_from(now.as_millis()).unwrap_or(i64::MAX)
}

/// Time from now until the Unix time `ms`.
fn until(ms: i64) -> Duration {
    Duration::from_millis(u64::try_from(ms - now_ms()).unwrap_or(0))
}
