//! The consume loop: a queue per partition, forwarded in order as records fall due.
//!
//! Records are queued as they arrive; a partition's queue is worked one batch at a time (so
//! its order holds) and only from its head, once the head is due. A queue that grows long
//! pauses its partition until it drains: a partition full of records that are not due yet
//! does not hold up the others, and memory stays bounded.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use kafka_producer::retry::RetryInfo;
use kafka_producer::{ConnectionWatch, ProducerConfig};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::statistics::Statistics;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio::sync::mpsc;

use crate::job::{self, Entry, FatalWatch, Producer};
use crate::{metrics, Config, Error};

/// The `client.id` of the forwarder's producer and consumer (broker logs and quotas).
const CLIENT_ID: &str = "cdp-retry-forwarder";
/// Queued records per partition above which the partition is paused.
const PAUSE_AT: usize = 2_000;
/// Queued records below which a paused partition resumes.
const RESUME_AT: usize = 500;
/// Most records handed to one batch.
const BATCH: usize = 500;

/// One assigned partition's records, oldest first.
struct Queue {
    entries: VecDeque<Entry>,
    /// A batch of this partition is being forwarded.
    busy: bool,
    paused: bool,
    /// Which assignment this queue belongs to: results of an older one are ignored.
    generation: u64,
    /// Set after nothing could be written: no attempt before this time (Unix ms).
    backoff_until_ms: i64,
}

impl Queue {
    /// When the head may be forwarded, if there is a head.
    fn head_due_ms(&self) -> Option<i64> {
        let (_, info) = self.entries.front()?;
        Some(
            info.as_ref()
                .map_or(0, |i| i.not_before_ms)
                .max(self.backoff_until_ms),
        )
    }
}

/// A finished batch.
struct Done {
    partition: i32,
    generation: u64,
    last_settled: Option<i64>,
    rest: Vec<Entry>,
}

/// Rebalance callbacks, statistics and connection failures.
struct Context {
    topic: String,
    watch: ConnectionWatch,
    /// Partitions taken away (`None`: all of them).
    revoked: mpsc::UnboundedSender<Option<Vec<i32>>>,
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
        self.watch.stats(&stats);
    }

    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        kafka_producer::log_client_error(&self.watch, &error, reason);
    }
}

impl ConsumerContext for Context {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Revoke(tpl) => {
                // librdkafka keeps our pause across a re-assignment: lift it with the queue.
                let _ = consumer.resume(tpl);
                metrics::assigned(0);
                let partitions = tpl.elements().iter().map(|e| e.partition()).collect();
                let _ = self.revoked.send(Some(partitions));
            }
            Rebalance::Assign(tpl) => {
                let _ = consumer.resume(tpl);
                metrics::assigned(tpl.count());
            }
            Rebalance::Error(error) => {
                // Everything is unassigned: drop every queue, as for a revoke of all.
                tracing::warn!(%error, "rebalance error");
                let _ = self.revoked.send(None);
            }
        }
    }
}

/// Runs the forwarder until `shutdown` resolves, then lets batches in flight finish (up to
/// the shutdown grace) and commits the offsets of everything acknowledged.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), Error> {
    let topic = config.kafka.topic_retry.clone();
    let settings = config.kafka.settings();
    settings.validate()?;
    // The start-up ping: fails at once naming an authentication or TLS failure.
    let ping = settings.clone();
    let existing =
        tokio::task::spawn_blocking(move || kafka_producer::fetch_topics(ping, Duration::from_secs(10)))
            .await
            .map_err(|e| Error::Create(rdkafka::error::KafkaError::ClientCreation(e.to_string())))??;
    if !existing.iter().any(|(t, _)| *t == topic) {
        return Err(kafka_producer::Error::MissingTopic(topic).into());
    }

    // Authentication and TLS failures of both clients, counted as
    // cdp_retry_forwarder_kafka_authentication_failures_total.
    let watch = ConnectionWatch::new("cdp_retry_forwarder", &settings);
    let mut producer_config = ProducerConfig::new(settings.clone(), config.kafka.topics());
    producer_config.client_id = CLIENT_ID.into();
    producer_config.message_timeout = config.produce_timeout;
    let fatal = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut producer_client = producer_config.client_config()?;
    if !settings
        .option_pairs()?
        .iter()
        .any(|(k, _)| k == "statistics.interval.ms")
    {
        producer_client.set("statistics.interval.ms", "0");
    }
    let producer: Arc<Producer> = Arc::new(
        producer_client
            .create_with_context(FatalWatch {
                fatal: fatal.clone(),
                watch: watch.clone(),
            })
            .map_err(kafka_producer::config_error)?,
    );

    let (revoked_tx, mut revoked) = mpsc::unbounded_channel();
    let mut consumer_config = ClientConfig::new();
    consumer_config
        .set("group.id", &config.group_id)
        .set("client.id", CLIENT_ID)
        .set("enable.auto.commit", "true")
        .set("auto.commit.interval.ms", "1000")
        // Offsets are stored only after the record was settled (forwarded, re-queued or DLQ).
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("statistics.interval.ms", "5000");
    let consumer: StreamConsumer<Context> = settings
        .apply(&mut consumer_config)?
        .create_with_context(Context {
            topic: topic.clone(),
            watch,
            revoked: revoked_tx,
        })
        .map_err(kafka_producer::config_error)?;
    consumer.subscribe(&[&topic]).map_err(|source| Error::Subscribe {
        topic: topic.clone(),
        source,
    })?;
    tracing::info!(topic, group = config.group_id, "forwarding retry records");

    let mut forwarder = Forwarder {
        consumer,
        producer,
        config: Arc::new(config),
        topic,
        queues: HashMap::new(),
        generations: 0,
        done: mpsc::unbounded_channel(),
        stopping: false,
    };
    tokio::pin!(shutdown);
    loop {
        let next_due = forwarder.next_due_ms();
        let sleep = tokio::time::sleep(next_due.map_or(Duration::from_secs(3600), until));
        tokio::select! {
            biased;
            () = &mut shutdown => break,
            Some(partitions) = revoked.recv() => forwarder.revoked(partitions.as_deref()),
            Some(done) = forwarder.done.1.recv() => forwarder.finish(done),
            () = sleep, if next_due.is_some() => forwarder.dispatch_due(),
            received = forwarder.consumer.recv() => match received {
                Ok(m) => {
                    let message = m.detach();
                    drop(m);
                    forwarder.push(message);
                }
                Err(error) => tracing::warn!(%error, "consumer error"),
            },
        }
        metrics::held(forwarder.queues.values().map(|q| q.entries.len()).sum());
        if fatal.load(std::sync::atomic::Ordering::SeqCst) {
            forwarder.shutdown().await;
            return Err(Error::FatalProducer);
        }
    }
    forwarder.shutdown().await;
    Ok(())
}

struct Forwarder {
    consumer: StreamConsumer<Context>,
    producer: Arc<Producer>,
    config: Arc<Config>,
    topic: String,
    queues: HashMap<i32, Queue>,
    generations: u64,
    done: (mpsc::UnboundedSender<Done>, mpsc::UnboundedReceiver<Done>),
    /// Shutting down: settle what is in flight, start nothing.
    stopping: bool,
}

impl Forwarder {
    fn push(&mut self, message: rdkafka::message::OwnedMessage) {
        let p = message.partition();
        let mut info = RetryInfo::from_headers(message.headers());
        if let Some(info) = info.as_mut() {
            // A not-before far ahead (a skewed clock where it was written) would block the
            // partition: no record waits longer than the backoff cap.
            let latest =
                now_ms() + i64::try_from(self.config.retry_backoff_cap.as_millis()).unwrap_or(i64::MAX);
            info.not_before_ms = info.not_before_ms.min(latest);
        }
        let generation = &mut self.generations;
        let queue = self.queues.entry(p).or_insert_with(|| {
            *generation += 1;
            Queue {
                entries: VecDeque::new(),
                busy: false,
                paused: false,
                generation: *generation,
                backoff_until_ms: 0,
            }
        });
        queue.entries.push_back((message, info));
        if queue.entries.len() >= PAUSE_AT && !queue.paused {
            queue.paused = true;
            let _ = self.consumer.pause(&partition(&self.topic, p));
        }
        self.dispatch(p);
    }

    /// `partitions` (`None`: all) were taken away: what was queued there is re-read by whoever
    /// owns them next, from the committed offset.
    fn revoked(&mut self, partitions: Option<&[i32]>) {
        match partitions {
            Some(partitions) => {
                for p in partitions {
                    self.queues.remove(p);
                }
            }
            None => self.queues.clear(),
        }
    }

    fn next_due_ms(&self) -> Option<i64> {
        self.queues
            .values()
            .filter(|q| !q.busy)
            .filter_map(Queue::head_due_ms)
            .min()
    }

    fn dispatch_due(&mut self) {
        let partitions: Vec<i32> = self.queues.keys().copied().collect();
        for p in partitions {
            self.dispatch(p);
        }
    }

    /// Starts a batch of `p`'s due head records, unless one is running.
    fn dispatch(&mut self, p: i32) {
        let Some(queue) = self.queues.get_mut(&p) else {
            return;
        };
        if self.stopping {
            return;
        }
        let now = now_ms();
        if queue.busy || queue.head_due_ms().is_none_or(|due| due > now) {
            return;
        }
        let mut batch = Vec::new();
        while batch.len() < BATCH {
            match queue.entries.front() {
                Some((_, info)) if info.as_ref().map_or(0, |i| i.not_before_ms) <= now => {
                    batch.extend(queue.entries.pop_front());
                }
                _ => break,
            }
        }
        queue.busy = true;
        let generation = queue.generation;
        let (producer, config, done) = (self.producer.clone(), self.config.clone(), self.done.0.clone());
        tokio::spawn(async move {
            let (last_settled, rest) = job::process_batch(&producer, &config, batch).await;
            let _ = done.send(Done {
                partition: p,
                generation,
                last_settled,
                rest,
            });
        });
    }

    fn finish(&mut self, done: Done) {
        let Some(queue) = self.queues.get_mut(&done.partition) else {
            return;
        };
        if queue.generation != done.generation {
            return; // from before a rebalance; the partition's records are re-read
        }
        queue.busy = false;
        if let Some(offset) = done.last_settled {
            let mut next = TopicPartitionList::new();
            // `store_offsets` stores what it is given: the next offset to read.
            let _ = next.add_partition_offset(&self.topic, done.partition, Offset::Offset(offset + 1));
            if let Err(error) = self.consumer.store_offsets(&next) {
                tracing::warn!(%error, partition = done.partition, "cannot store offset");
            }
        }
        if !done.rest.is_empty() {
            queue.backoff_until_ms = now_ms() + 1_000;
            for entry in done.rest.into_iter().rev() {
                queue.entries.push_front(entry);
            }
        } else {
            queue.backoff_until_ms = 0;
        }
        if queue.paused && queue.entries.len() < RESUME_AT {
            queue.paused = false;
            let _ = self.consumer.resume(&partition(&self.topic, done.partition));
        }
        self.dispatch(done.partition);
    }

    async fn shutdown(mut self) {
        tracing::info!("shutting down: finishing batches in flight");
        self.stopping = true;
        let deadline = tokio::time::Instant::now() + self.config.shutdown_grace;
        while self.queues.values().any(|q| q.busy) {
            match tokio::time::timeout_at(deadline, self.done.1.recv()).await {
                Ok(Some(done)) => self.finish(done),
                _ => break,
            }
        }
        match self.consumer.commit_consumer_state(CommitMode::Sync) {
            Ok(()) => tracing::info!("offsets committed"),
            Err(error) => tracing::info!(%error, "final commit: nothing new to commit"),
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
