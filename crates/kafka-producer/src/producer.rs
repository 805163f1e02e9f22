//! [`EventProducer`]: the ingest, DLQ and retry writes of the Go service, on librdkafka.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Weak};
use std::time::{Duration, Instant};

use event_model::{Accepted, DlqEnvelope};
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Message, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::statistics::Statistics;
use rdkafka::ClientContext;
use tokio::sync::oneshot;

use crate::metrics::ProducerMetrics;
use crate::retry::{header_text, unix_ms_after, RetryInfo};
use crate::Error;

/// The three topics (S9).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topics {
    /// Valid events, keyed by visitor.
    pub ingest: String,
    /// Rejected events, in the DLQ envelope.
    pub dlq: String,
    /// Records whose delivery failed transiently.
    pub retry: String,
}

/// How to build the producer.
#[derive(Debug, Clone)]
pub struct ProducerConfig {
    /// Bootstrap servers, `host:port[,host:port]`.
    pub brokers: String,
    /// The three topics.
    pub topics: Topics,
    /// `client.id` (S2: `cdp-ingest`).
    pub client_id: String,
    /// Most records held in the producer's buffer (S2: 100 000).
    pub queue_max_messages: u32,
    /// `linger.ms` (S2: 5).
    pub linger: Duration,
    /// How long an awaited write (a DLQ record, a replayed event) may take.
    pub dlq_timeout: Duration,
    /// How long the start-up metadata ping may take.
    pub ping_timeout: Duration,
    /// `message.timeout.ms`: how long librdkafka retries a record before reporting it failed.
    pub message_timeout: Duration,
    /// How long a record that failed delivery waits on the retry topic before it is forwarded.
    pub retry_delay: Duration,
    /// Metric name prefix, `cdp_<binary>`.
    pub metric_prefix: String,
}

impl ProducerConfig {
    /// The Go service's settings (S2) for `brokers` and `topics`.
    pub fn new(brokers: impl Into<String>, topics: Topics) -> Self {
        ProducerConfig {
            brokers: brokers.into(),
            topics,
            client_id: "cdp-ingest".into(),
            queue_max_messages: 100_000,
            linger: Duration::from_millis(5),
            dlq_timeout: Duration::from_secs(5),
            ping_timeout: Duration::from_secs(10),
            message_timeout: Duration::from_secs(300),
            retry_delay: Duration::from_secs(10),
            metric_prefix: "cdp_ingest".into(),
        }
    }

    /// The librdkafka settings (S2) for a producer with this configuration.
    pub fn client_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &self.brokers)
            .set("client.id", &self.client_id)
            .set("linger.ms", self.linger.as_millis().to_string())
            .set("compression.type", "zstd")
            .set(
                "queue.buffering.max.messages",
                self.queue_max_messages.to_string(),
            )
            .set("acks", "all")
            .set("enable.idempotence", "true")
            .set("message.timeout.ms", self.message_timeout.as_millis().to_string())
            .set("statistics.interval.ms", "1000");
        config
    }
}

/// What the delivery callback does with a record's outcome.
enum Delivery {
    /// Fire-and-forget (S1): log and count a failure (S7).
    Logged { message_id: String },
    /// Awaited (S8): hand the outcome to the waiting request.
    Awaited(oneshot::Sender<Result<(), KafkaError>>),
    /// The retry or DLQ copy of a record whose delivery failed: a failure now is a loss.
    Rescue { message_id: String },
}

/// An ingest record whose delivery failed, on its way to the rescue thread.
struct Failed {
    message: OwnedMessage,
    message_id: String,
    error: KafkaError,
}

/// librdkafka callbacks: delivery reports, statistics and errors.
struct Callbacks {
    metrics: Arc<ProducerMetrics>,
    healthy: Arc<AtomicBool>,
    fatal: AtomicBool,
    rescue: mpsc::Sender<Failed>,
    /// Failed records sent to the rescue thread and not yet re-enqueued.
    pending_rescues: Arc<AtomicUsize>,
}

impl ClientContext for Callbacks {
    fn stats(&self, stats: Statistics) {
        let up = stats.brokers.values().filter(|b| b.state == "UP").count();
        self.metrics.brokers_up.set(up as f64);
        self.metrics.queue_messages.set(stats.msg_cnt as f64);
        let p99 = |w: &Option<rdkafka::statistics::Window>| w.as_ref().map_or(0, |w| w.p99);
        let rtt = stats.brokers.values().map(|b| p99(&b.rtt)).max().unwrap_or(0);
        let queued = stats
            .brokers
            .values()
            .map(|b| p99(&b.int_latency))
            .max()
            .unwrap_or(0);
        self.metrics.broker_rtt_p99.set(rtt as f64 / 1e6);
        self.metrics.queue_latency_p99.set(queued as f64 / 1e6);
        // Stats only raise health; AllBrokersDown and fatal errors lower it.
        if up > 0 && !self.fatal.load(Ordering::Relaxed) {
            self.healthy.store(true, Ordering::Relaxed);
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        match error.rdkafka_error_code() {
            Some(RDKafkaErrorCode::AllBrokersDown) => self.healthy.store(false, Ordering::Relaxed),
            Some(RDKafkaErrorCode::Fatal) => {
                // The idempotent producer cannot go on: stay unready until restarted.
                self.fatal.store(true, Ordering::Relaxed);
                self.healthy.store(false, Ordering::Relaxed);
            }
            _ => {}
        }
        tracing::error!(%error, reason, "kafka client error");
    }
}

impl ProducerContext for Callbacks {
    type DeliveryOpaque = Box<Delivery>;

    fn delivery(&self, result: &DeliveryResult<'_>, delivery: Box<Delivery>) {
        let (topic, outcome) = match result {
            Ok(message) => (message.topic(), Ok(())),
            Err((error, message)) => (message.topic(), Err(error.clone())),
        };
        let metrics = self.metrics.topic(topic);
        match &outcome {
            Ok(()) => metrics.delivered.increment(1),
            Err(_) => metrics.failed.increment(1),
        }
        match *delivery {
            Delivery::Logged { message_id } => {
                if let (Err(error), Err((_, message))) = (outcome, result) {
                    tracing::warn!(topic, message_id, %error, "kafka delivery failed, rescuing the record");
                    let failed = Failed {
                        message: message.detach(),
                        message_id,
                        error,
                    };
                    self.pending_rescues.fetch_add(1, Ordering::SeqCst);
                    if let Err(mpsc::SendError(failed)) = self.rescue.send(failed) {
                        self.pending_rescues.fetch_sub(1, Ordering::SeqCst);
                        self.metrics.lost.increment(1);
                        tracing::error!(
                            topic,
                            message_id = failed.message_id,
                            "record lost: the producer is shutting down"
                        );
                    }
                }
            }
            Delivery::Rescue { message_id } => {
                if let Err(error) = outcome {
                    self.metrics.lost.increment(1);
                    tracing::error!(topic, message_id, %error, "record lost: its retry/DLQ copy failed too");
                }
            }
            // The request may have given up waiting; then nobody listens.
            Delivery::Awaited(tx) => drop(tx.send(outcome)),
        }
    }
}

/// The pending acknowledgement of an awaited write (DLQ records, replayed events).
pub struct Ack {
    rx: oneshot::Receiver<Result<(), KafkaError>>,
    topic: String,
    timeout: Duration,
    deadline: tokio::time::Instant,
}

impl Ack {
    /// Waits for the broker's acknowledgement, until the DLQ timeout after the enqueue.
    pub async fn wait(self) -> Result<(), Error> {
        let topic = self.topic;
        match tokio::time::timeout_at(self.deadline, self.rx).await {
            Ok(Ok(Ok(()))) => Ok(()),
            Ok(Ok(Err(source))) => Err(Error::Delivery { topic, source }),
            // The sender is dropped only if librdkafka discarded the record without a report.
            Ok(Err(_)) => Err(Error::Delivery {
                topic,
                source: KafkaError::Canceled,
            }),
            Err(_) => Err(Error::Timeout {
                topic,
                timeout: self.timeout,
            }),
        }
    }
}

/// The event producer shared by all requests of a process.
pub struct EventProducer {
    inner: Arc<ThreadedProducer<Callbacks>>,
    pending_rescues: Arc<AtomicUsize>,
    config: ProducerConfig,
    healthy: Arc<AtomicBool>,
}

impl EventProducer {
    /// Creates the producer and pings the cluster (S3): fails when the cluster does not answer
    /// metadata within the ping timeout, or when one of the three topics does not exist.
    /// Blocks for up to the ping timeout.
    pub fn connect(config: ProducerConfig) -> Result<Self, Error> {
        let healthy = Arc::new(AtomicBool::new(false));
        let topics = [&config.topics.ingest, &config.topics.dlq, &config.topics.retry];
        let metrics = Arc::new(ProducerMetrics::new(
            &config.metric_prefix,
            &topics.map(String::as_str),
        ));
        metrics
            .queue_max_messages
            .set(f64::from(config.queue_max_messages));
        let (rescue, failed) = mpsc::channel();
        let pending_rescues = Arc::new(AtomicUsize::new(0));
        let callbacks = Callbacks {
            metrics: metrics.clone(),
            healthy: healthy.clone(),
            fatal: AtomicBool::new(false),
            rescue,
            pending_rescues: pending_rescues.clone(),
        };
        let inner: Arc<ThreadedProducer<Callbacks>> = Arc::new(
            config
                .client_config()
                .create_with_context(callbacks)
                .map_err(Error::Create)?,
        );
        let metadata = inner
            .client()
            .fetch_metadata(None, config.ping_timeout)
            .map_err(|source| Error::Unreachable {
                brokers: config.brokers.clone(),
                source,
            })?;
        for topic in topics {
            let found = metadata
                .topics()
                .iter()
                .any(|t| t.name() == topic.as_str() && t.error().is_none() && !t.partitions().is_empty());
            if !found {
                return Err(Error::MissingTopic(topic.clone()));
            }
        }
        healthy.store(true, Ordering::Relaxed);
        let rescuer = Rescuer {
            producer: Arc::downgrade(&inner),
            topics: config.topics.clone(),
            retry_delay: config.retry_delay,
            metrics,
            pending: pending_rescues.clone(),
        };
        std::thread::Builder::new()
            .name("kafka-rescue".into())
            .spawn(move || rescuer.run(failed))
            .map_err(|e| Error::Create(KafkaError::ClientCreation(e.to_string())))?;
        Ok(EventProducer {
            pending_rescues,
            inner,
            config,
            healthy,
        })
    }

    /// The configured topics.
    pub fn topics(&self) -> &Topics {
        &self.config.topics
    }

    /// True while at least one broker is connected (from librdkafka's statistics and errors).
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Enqueues a valid event for the ingest topic without waiting (S1, S4, S5, S6).
    ///
    /// Returns as soon as librdkafka holds the record; the record then lives on its own,
    /// whatever happens to the caller. Never blocks: a full buffer is [`Error::QueueFull`].
    pub fn send_event(&self, event: &Accepted, workspace_id: &str, source_id: &str) -> Result<(), Error> {
        let delivery = Delivery::Logged {
            message_id: event.message_id.clone(),
        };
        self.enqueue_event(event, workspace_id, source_id, delivery)
    }

    /// Like [`EventProducer::send_event`], but the caller awaits the acknowledgement (for
    /// replays, which store their offset only after it).
    pub fn send_event_acked(
        &self,
        event: &Accepted,
        workspace_id: &str,
        source_id: &str,
    ) -> Result<Ack, Error> {
        let (tx, ack) = self.ack(&self.config.topics.ingest);
        self.enqueue_event(event, workspace_id, source_id, Delivery::Awaited(tx))?;
        Ok(ack)
    }

    /// The one place ingest records are built: key (S4) and headers (S5).
    fn enqueue_event(
        &self,
        event: &Accepted,
        workspace_id: &str,
        source_id: &str,
        delivery: Delivery,
    ) -> Result<(), Error> {
        if !self.is_healthy() {
            return Err(Error::Unavailable);
        }
        let headers = OwnedHeaders::new_with_capacity(3)
            .insert(Header {
                key: "workspace_id",
                value: Some(workspace_id),
            })
            .insert(Header {
                key: "source_id",
                value: Some(source_id),
            })
            .insert(Header {
                key: "type",
                value: Some(event.event_type.as_str()),
            });
        let record = BaseRecord::with_opaque_to(&self.config.topics.ingest, Box::new(delivery))
            .key(event.key.as_bytes())
            .payload(&event.value)
            .headers(headers);
        self.enqueue(record)
    }

    /// Enqueues a rejected event for the DLQ (S8); await the returned [`Ack`] before
    /// answering the client. Enqueue several first, then await them, to write them concurrently.
    pub fn send_dlq(&self, envelope: &DlqEnvelope) -> Result<Ack, Error> {
        self.send_envelope(&self.config.topics.dlq, envelope)
    }

    /// Enqueues a DLQ envelope for `topic` (the DLQ, or a park topic): key `workspace_id`,
    /// header `reason`.
    pub fn send_envelope(&self, topic: &str, envelope: &DlqEnvelope) -> Result<Ack, Error> {
        let (tx, ack) = self.ack(topic);
        let payload = envelope.to_json();
        let headers = OwnedHeaders::new_with_capacity(1).insert(Header {
            key: "reason",
            value: Some(envelope.reason.as_str()),
        });
        let record = BaseRecord::with_opaque_to(topic, Box::new(Delivery::Awaited(tx)))
            .key(envelope.workspace_id.as_bytes())
            .payload(&payload)
            .headers(headers);
        self.enqueue(record)?;
        Ok(ack)
    }

    fn ack(&self, topic: &str) -> (oneshot::Sender<Result<(), KafkaError>>, Ack) {
        let (tx, rx) = oneshot::channel();
        let timeout = self.config.dlq_timeout;
        let deadline = tokio::time::Instant::now() + timeout;
        (
            tx,
            Ack {
                rx,
                topic: topic.to_string(),
                timeout,
                deadline,
            },
        )
    }

    fn enqueue(&self, record: BaseRecord<'_, [u8], Vec<u8>, Box<Delivery>>) -> Result<(), Error> {
        enqueue(&self.inner, record)
    }

    /// Records held by librdkafka and not yet acknowledged.
    pub fn in_flight(&self) -> usize {
        usize::try_from(self.inner.in_flight_count()).unwrap_or(0)
    }

    /// Waits up to `grace` for every held record to be acknowledged (blocking). Returns the
    /// number of records still unacknowledged. Call before dropping: a dropped producer
    /// discards what it holds.
    pub fn flush(&self, grace: Duration) -> usize {
        let deadline = Instant::now() + grace;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if let Err(error) = self.inner.flush(left) {
                tracing::warn!(%error, "kafka flush did not finish");
            }
            // Records whose delivery just failed are on their way to the retry topic.
            let pending = self.pending_rescues.load(Ordering::SeqCst);
            if (pending == 0 && self.in_flight() == 0) || Instant::now() >= deadline {
                return self.in_flight() + pending;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

fn enqueue(
    producer: &ThreadedProducer<Callbacks>,
    record: BaseRecord<'_, [u8], Vec<u8>, Box<Delivery>>,
) -> Result<(), Error> {
    let topic = record.topic;
    producer
        .send(record)
        .map_err(|(error, _)| match error.rdkafka_error_code() {
            Some(RDKafkaErrorCode::QueueFull) => Error::QueueFull,
            _ => Error::Enqueue {
                topic: topic.to_string(),
                source: error,
            },
        })
}

/// Delivery errors that no retry can fix: the record goes to the DLQ instead.
fn is_permanent(error: &KafkaError) -> bool {
    use RDKafkaErrorCode::*;
    matches!(
        error.rdkafka_error_code(),
        Some(
            MessageSizeTooLarge
                | InvalidMessage
                | InvalidMessageSize
                | InvalidRecord
                | InvalidTopic
                | InvalidRequiredAcks
                | UnsupportedForMessageFormat
                | TopicAuthorizationFailed
                | ClusterAuthorizationFailed
                | BadMessage
        )
    )
}

/// The DLQ reason of records whose delivery failed permanently.
pub const DELIVERY_REJECTED: &str = "delivery_rejected";

/// Writes failed ingest records to the retry topic (transient errors) or the DLQ (permanent
/// ones), on its own thread: the delivery callback must not block.
struct Rescuer {
    producer: Weak<ThreadedProducer<Callbacks>>,
    topics: Topics,
    retry_delay: Duration,
    metrics: Arc<ProducerMetrics>,
    pending: Arc<AtomicUsize>,
}

impl Rescuer {
    fn run(self, failed: mpsc::Receiver<Failed>) {
        for f in failed {
            let Some(producer) = self.producer.upgrade() else {
                self.lost(&f, "the producer is shut down");
                self.pending.fetch_sub(1, Ordering::SeqCst);
                continue;
            };
            let to = if is_permanent(&f.error) { "dlq" } else { "retry" };
            match self.write(&producer, &f, to) {
                Ok(()) => {
                    self.metrics.rescued(to).increment(1);
                    tracing::info!(message_id = f.message_id, to, error = %f.error, "failed record re-routed");
                }
                Err(error) => self.lost(&f, &error.to_string()),
            }
            // Enqueued (in flight now) or lost: either way no longer pending.
            self.pending.fetch_sub(1, Ordering::SeqCst);
        }
    }

    fn write(&self, producer: &ThreadedProducer<Callbacks>, f: &Failed, to: &str) -> Result<(), Error> {
        let key = f.message.key().unwrap_or_default().to_vec();
        let value = f.message.payload().unwrap_or_default().to_vec();
        let (topic, headers, key, value) = if to == "retry" {
            let info = RetryInfo {
                attempt: 1,
                target: f.message.topic().to_string(),
                not_before_ms: unix_ms_after(self.retry_delay),
                last_error: f.error.to_string(),
            };
            (
                &self.topics.retry,
                info.to_headers(f.message.headers()),
                key,
                value,
            )
        } else {
            let text = |name| header_text(f.message.headers(), name).unwrap_or_default();
            // `new` cuts the raw payload: a record too large for Kafka still fits as a DLQ record.
            let rejection =
                event_model::Rejection::new(event_model::Reason::TooLarge, "", f.error.to_string());
            let mut envelope = DlqEnvelope::new(
                &text("workspace_id"),
                &text("source_id"),
                &f.message_id,
                &rejection,
                String::from_utf8_lossy(&value).into_owned(),
            );
            envelope.reason = DELIVERY_REJECTED.to_string();
            let headers = OwnedHeaders::new().insert(Header {
                key: "reason",
                value: Some(DELIVERY_REJECTED),
            });
            (
                &self.topics.dlq,
                headers,
                envelope.workspace_id.clone().into_bytes(),
                envelope.to_json(),
            )
        };
        // A full queue is waited out here: this thread is not on the request path, and the
        // record already got its 200.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let delivery = Box::new(Delivery::Rescue {
                message_id: f.message_id.clone(),
            });
            let record = BaseRecord::with_opaque_to(topic, delivery)
                .key(&key[..])
                .payload(&value)
                .headers(headers.clone());
            match enqueue(producer, record) {
                Err(Error::QueueFull) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                other => return other,
            }
        }
    }

    fn lost(&self, f: &Failed, why: &str) {
        self.metrics.lost.increment(1);
        tracing::error!(topic = f.message.topic(), message_id = f.message_id, error = %f.error, why, "record lost: delivery failed and it could not be re-routed");
    }
}
