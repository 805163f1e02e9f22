//! [`EventProducer`]: the ingest, DLQ and retry writes of the Go service, on librdkafka.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use event_model::{Accepted, DlqEnvelope};
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{
    BaseRecord, DeliveryResult, Producer, ProducerContext, PurgeConfig, ThreadedProducer,
};
use rdkafka::statistics::Statistics;
use rdkafka::ClientContext;
use tokio::sync::oneshot;

use spool::Spool;

use crate::metrics::ProducerMetrics;
use crate::rescue::{Drainer, Rescuer};
use crate::watch::ConnectionWatch;
use crate::{ConnectFailure, Error, KafkaSettings};

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
    /// The cluster: bootstrap servers, security, other librdkafka properties.
    pub kafka: KafkaSettings,
    /// The three topics.
    pub topics: Topics,
    /// `client.id` (S2: `cdp-ingest`).
    pub client_id: String,
    /// Most records held in the producer's buffer (S2: 100 000).
    pub queue_max_messages: u32,
    /// Most payload bytes held in the producer's buffer, in KiB: bounds memory whatever the
    /// event sizes.
    pub queue_max_kbytes: u32,
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
    /// The Go service's settings (S2) for `kafka` (a [`KafkaSettings`], or the bootstrap
    /// servers of a plaintext cluster) and `topics`.
    pub fn new(kafka: impl Into<KafkaSettings>, topics: Topics) -> Self {
        ProducerConfig {
            kafka: kafka.into(),
            topics,
            client_id: "cdp-ingest".into(),
            queue_max_messages: 100_000,
            queue_max_kbytes: 64 * 1024,
            linger: Duration::from_millis(5),
            dlq_timeout: Duration::from_secs(5),
            ping_timeout: Duration::from_secs(10),
            message_timeout: Duration::from_secs(300),
            retry_delay: Duration::from_secs(10),
            metric_prefix: "cdp_ingest".into(),
        }
    }

    /// The librdkafka settings (S2) for a producer with this configuration, then the
    /// cluster's ([`KafkaSettings::apply`]). Fails when those do not fit together.
    pub fn client_config(&self) -> Result<ClientConfig, Error> {
        let mut config = ClientConfig::new();
        config
            .set("client.id", &self.client_id)
            .set("linger.ms", self.linger.as_millis().to_string())
            .set("compression.type", "zstd")
            .set(
                "queue.buffering.max.messages",
                self.queue_max_messages.to_string(),
            )
            .set("queue.buffering.max.kbytes", self.queue_max_kbytes.to_string())
            .set("acks", "all")
            .set("enable.idempotence", "true")
            .set("message.timeout.ms", self.message_timeout.as_millis().to_string())
            .set("statistics.interval.ms", "1000");
        self.kafka.apply(&mut config)?;
        Ok(config)
    }
}

/// What the delivery callback does with a record's outcome.
pub(crate) enum Delivery {
    /// Fire-and-forget (S1): a failure goes to the rescuer.
    Logged { message_id: String },
    /// Awaited (S8): hand the outcome to the waiting request.
    Awaited(oneshot::Sender<Result<(), KafkaError>>),
    /// The retry or DLQ copy of a record whose delivery failed: a failure now spools the
    /// original record.
    Rescue { original: spool::Record },
    /// A record the drainer produced from the spool: its outcome goes back to the drainer.
    Drained {
        index: usize,
        done: mpsc::Sender<(usize, Result<(), KafkaError>)>,
    },
}

/// Which write failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stage {
    /// The ingest record itself.
    Ingest,
    /// Its retry or DLQ copy.
    Rescue,
}

/// A record whose delivery failed, on its way to the rescue thread.
pub(crate) struct Failed {
    /// The ingest record (for [`Stage::Rescue`], the original behind the failed copy).
    pub record: spool::Record,
    pub error: KafkaError,
    pub stage: Stage,
}

/// Work for the rescue thread.
pub(crate) enum Job {
    Failed(Failed),
    /// The producer reported an error: if it is fatal, build a new producer.
    CheckFatal,
    Stop,
}

/// librdkafka callbacks: delivery reports, statistics and errors.
pub(crate) struct Callbacks {
    metrics: Arc<ProducerMetrics>,
    healthy: Arc<AtomicBool>,
    watch: ConnectionWatch,
    jobs: mpsc::Sender<Job>,
    /// Failed records sent to the rescue thread and not yet re-routed.
    pending: Arc<AtomicUsize>,
}

impl Callbacks {
    fn rescue(&self, failed: Failed) {
        self.pending.fetch_add(1, Ordering::SeqCst);
        if let Err(mpsc::SendError(Job::Failed(failed))) = self.jobs.send(Job::Failed(failed)) {
            self.pending.fetch_sub(1, Ordering::SeqCst);
            self.metrics.lost.increment(1);
            tracing::error!(
                message_id = failed.record.message_id,
                "record lost: delivery failed after the producer shut down"
            );
        }
    }
}

impl ClientContext for Callbacks {
    fn stats(&self, stats: Statistics) {
        let up = stats.brokers.values().filter(|b| b.state == "UP").count();
        self.metrics.brokers_up.set(up as f64);
        self.metrics.queue_messages.set(stats.msg_cnt as f64);
        self.metrics
            .rescue_pending
            .set(self.pending.load(Ordering::Relaxed) as f64);
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
        if up > 0 {
            self.healthy.store(true, Ordering::Relaxed);
        }
        self.watch.stats(&stats);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        if let Some(failure) = self.watch.observe(&error, reason) {
            // Authentication, TLS, protocol mismatch: counted, shown by readiness; librdkafka
            // keeps reconnecting.
            tracing::error!(%failure, "kafka connection failed");
            return;
        }
        match error.rdkafka_error_code() {
            Some(RDKafkaErrorCode::AllBrokersDown) => self.healthy.store(false, Ordering::Relaxed),
            Some(RDKafkaErrorCode::BrokerTransportFailure) => {}
            // A fatal error reaches this callback under its cause's code (a sequence error,
            // say): the rescuer asks the client whether it is fatal.
            _ => drop(self.jobs.send(Job::CheckFatal)),
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
        match (*delivery, outcome, result) {
            (Delivery::Logged { message_id }, Err(error), Err((_, message))) => {
                if crate::rescue::is_purged(&error) {
                    // A producer being closed or replaced: possibly many, counted at the end.
                    tracing::debug!(topic, message_id, %error, "record taken back from the producer");
                } else {
                    tracing::warn!(topic, message_id, %error, "kafka delivery failed, rescuing the record");
                }
                self.rescue(Failed {
                    record: record_of(message_id, message),
                    error,
                    stage: Stage::Ingest,
                });
            }
            (Delivery::Rescue { original }, Err(error), _) => {
                tracing::warn!(topic, message_id = original.message_id, %error, "the retry/DLQ copy failed too, spooling the record");
                self.rescue(Failed {
                    record: original,
                    error,
                    stage: Stage::Rescue,
                });
            }
            // The request may have given up waiting; then nobody listens.
            (Delivery::Awaited(tx), outcome, _) => drop(tx.send(outcome)),
            (Delivery::Drained { index, done }, outcome, _) => drop(done.send((index, outcome))),
            (Delivery::Logged { .. } | Delivery::Rescue { .. }, _, _) => {}
        }
    }
}

/// A Kafka message as a spool record.
fn record_of(message_id: String, message: &impl Message) -> spool::Record {
    let headers = message.headers().map_or_else(Vec::new, |headers| {
        headers
            .iter()
            .map(|h| (h.key.to_string(), h.value.unwrap_or_default().to_vec()))
            .collect()
    });
    spool::Record {
        message_id,
        key: message.key().unwrap_or_default().to_vec(),
        headers,
        value: message.payload().unwrap_or_default().to_vec(),
    }
}

/// Kafka headers from a spool record's.
pub(crate) fn headers_of(record: &spool::Record) -> OwnedHeaders {
    record.headers.iter().fold(
        OwnedHeaders::new_with_capacity(record.headers.len()),
        |h, (key, value)| {
            h.insert(Header {
                key,
                value: Some(value),
            })
        },
    )
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

/// What [`EventProducer::close`] did with the records it held.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Closed {
    /// Records not acknowledged within the grace period.
    pub unflushed: usize,
    /// Records written to the spool during the close (the unflushed ones, when there is a spool).
    pub spooled: u64,
    /// Records lost during the close (the unflushed ones, without a spool).
    pub lost: u64,
}

/// State shared by the producer handle, the callbacks' owner and the background threads.
pub(crate) struct Core {
    pub config: ProducerConfig,
    pub metrics: Arc<ProducerMetrics>,
    pub healthy: Arc<AtomicBool>,
    pub pending: Arc<AtomicUsize>,
    pub spool: Option<Arc<Spool>>,
    pub jobs: Mutex<mpsc::Sender<Job>>,
    /// Authentication and TLS failures the producers reported.
    pub watch: ConnectionWatch,
    /// The librdkafka producer; replaced after a fatal error, taken at close.
    current: RwLock<Option<ThreadedProducer<Callbacks>>>,
    /// Set when the flush grace is over: failed records go straight to the spool.
    pub closing: AtomicBool,
    /// Set at close: the drainer stops.
    pub stopping: AtomicBool,
    /// Set while a producer with a fatal error is being replaced.
    pub rebuilding: AtomicBool,
    /// Set from start-up until the spool a previous process left is drained.
    pub recovering: AtomicBool,
    pub spooled: AtomicU64,
    pub lost: AtomicU64,
}

impl Core {
    /// A new librdkafka producer whose callbacks feed this core.
    pub fn build(&self) -> Result<ThreadedProducer<Callbacks>, Error> {
        let callbacks = Callbacks {
            metrics: self.metrics.clone(),
            healthy: self.healthy.clone(),
            jobs: self.jobs.lock().unwrap_or_else(|e| e.into_inner()).clone(),
            pending: self.pending.clone(),
            watch: self.watch.clone(),
        };
        self.config
            .client_config()?
            .create_with_context(callbacks)
            .map_err(crate::settings::create_error)
    }

    /// Swaps in a new producer, or none; returns the old one. Once the producer is stopping,
    /// a new one is refused (and returned, to be dropped).
    pub fn replace(
        &self,
        producer: Option<ThreadedProducer<Callbacks>>,
    ) -> Option<ThreadedProducer<Callbacks>> {
        let mut current = self.current.write().unwrap_or_else(|e| e.into_inner());
        if producer.is_some() && self.stopping.load(Ordering::SeqCst) {
            return producer;
        }
        std::mem::replace(&mut *current, producer)
    }

    /// Hands a record to librdkafka without waiting. Never blocks.
    pub fn enqueue(&self, record: BaseRecord<'_, [u8], Vec<u8>, Box<Delivery>>) -> Result<(), Error> {
        let current = self.current.read().unwrap_or_else(|e| e.into_inner());
        let Some(producer) = current.as_ref() else {
            return Err(Error::Unavailable);
        };
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

    /// True when the cluster answers a metadata request (within a second).
    pub fn probe(&self) -> bool {
        let current = self.current.read().unwrap_or_else(|e| e.into_inner());
        current.as_ref().is_some_and(|p| {
            p.client()
                .fetch_metadata(Some(&self.config.topics.ingest), Duration::from_secs(1))
                .is_ok()
        })
    }

    /// The fatal error the current producer raised, if it did.
    pub fn fatal_error(&self) -> Option<String> {
        let current = self.current.read().unwrap_or_else(|e| e.into_inner());
        let (code, reason) = current.as_ref()?.client().fatal_error()?;
        Some(format!("{code}: {reason}"))
    }

    /// Records librdkafka holds.
    pub fn in_flight(&self) -> usize {
        let current = self.current.read().unwrap_or_else(|e| e.into_inner());
        current
            .as_ref()
            .map_or(0, |p| usize::try_from(p.in_flight_count()).unwrap_or(0))
    }

    /// Appends a record to the spool; `from` labels the metric.
    pub fn spool(&self, record: &spool::Record, from: &'static str) -> Result<(), Error> {
        let Some(spool) = &self.spool else {
            return Err(Error::NoSpool);
        };
        spool.append(record).map_err(|error| match error {
            spool::Error::Full { cap } => Error::SpoolFull { cap },
            other => Error::Spool(other),
        })?;
        self.spooled.fetch_add(1, Ordering::Relaxed);
        self.metrics.spooled(from).increment(1);
        Ok(())
    }

    /// Spools a record that Kafka could not take, or counts and logs it as lost.
    pub fn spool_or_lose(&self, record: &spool::Record, why: &str) {
        match self.spool(record, "rescue") {
            // Counted in `cdp_ingest_spool_appended_total`; during an outage, one line per
            // record would drown the log.
            Ok(()) => tracing::debug!(message_id = record.message_id, why, "record spooled"),
            Err(error) => {
                self.lost.fetch_add(1, Ordering::Relaxed);
                self.metrics.lost.increment(1);
                tracing::error!(message_id = record.message_id, why, %error, "record lost: Kafka could not take it and the spool neither");
            }
        }
    }
}

/// The event producer shared by all requests of a process.
pub struct EventProducer {
    core: Arc<Core>,
    rescuer: Mutex<Option<std::thread::JoinHandle<()>>>,
    drainer: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl EventProducer {
    /// Creates the producer and pings the cluster (S3): fails when the cluster does not answer
    /// metadata within the ping timeout, or when one of the three topics does not exist; fails
    /// at once, naming the cause, when the brokers refuse the credentials or the TLS handshake
    /// fails ([`Error::Connect`]). Blocks for up to the ping timeout.
    ///
    /// With a `spool`, records Kafka cannot take are kept on disk and drained once the cluster
    /// is back; records already in it (a previous process's) are drained first.
    pub fn connect(config: ProducerConfig, spool: Option<Arc<Spool>>) -> Result<Self, Error> {
        let topics = [
            config.topics.ingest.clone(),
            config.topics.dlq.clone(),
            config.topics.retry.clone(),
        ];
        let metrics = Arc::new(ProducerMetrics::new(
            &config.metric_prefix,
            &topics.each_ref().map(String::as_str),
        ));
        metrics
            .queue_max_messages
            .set(f64::from(config.queue_max_messages));
        let (jobs, job_queue) = mpsc::channel();
        let watch = ConnectionWatch::new(&config.metric_prefix, &config.kafka);
        let core = Arc::new(Core {
            watch,
            metrics,
            healthy: Arc::new(AtomicBool::new(false)),
            pending: Arc::new(AtomicUsize::new(0)),
            spool,
            jobs: Mutex::new(jobs),
            current: RwLock::new(None),
            closing: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            rebuilding: AtomicBool::new(false),
            recovering: AtomicBool::new(false),
            spooled: AtomicU64::new(0),
            lost: AtomicU64::new(0),
            config,
        });
        let producer = core.build()?;
        let metadata = core.watch.ping(producer.client(), core.config.ping_timeout)?;
        for topic in topics {
            let found = metadata
                .topics()
                .iter()
                .any(|t| t.name() == topic && t.error().is_none() && !t.partitions().is_empty());
            if !found {
                return Err(Error::MissingTopic(topic));
            }
        }
        core.replace(Some(producer));
        core.healthy.store(true, Ordering::Relaxed);
        if let Some(spool) = &core.spool {
            if !spool.is_empty() {
                tracing::warn!(records = spool.records(), dir = %spool.dir().display(), "the spool holds records from before: draining them first");
                core.recovering.store(true, Ordering::Relaxed);
            }
        }
        let spawn = |name: &str, f: Box<dyn FnOnce() + Send>| {
            std::thread::Builder::new()
                .name(name.into())
                .spawn(f)
                .map_err(|e| Error::Create(KafkaError::ClientCreation(e.to_string())))
        };
        let rescuer = Rescuer::new(core.clone());
        let rescuer = spawn("kafka-rescue", Box::new(move || rescuer.run(job_queue)))?;
        let drainer = match core.spool.is_some() {
            true => {
                let drainer = Drainer::new(core.clone());
                Some(spawn("spool-drain", Box::new(move || drainer.run()))?)
            }
            false => None,
        };
        Ok(EventProducer {
            core,
            rescuer: Mutex::new(Some(rescuer)),
            drainer: Mutex::new(drainer),
        })
    }

    /// The configured topics.
    pub fn topics(&self) -> &Topics {
        &self.core.config.topics
    }

    /// True while at least one broker is connected and the producer is not being rebuilt
    /// (from librdkafka's statistics and errors).
    pub fn is_healthy(&self) -> bool {
        self.core.healthy.load(Ordering::Relaxed)
    }

    /// True from start-up until the spool a previous process left is drained (readiness waits
    /// for it, so that a restarted replica sends its backlog before new traffic).
    pub fn is_recovering(&self) -> bool {
        self.core.recovering.load(Ordering::Relaxed)
    }

    /// The authentication (SASL) or TLS failure the producer reported in the last 45 s, unless
    /// every broker has connected since (librdkafka reports a persisting failure again every
    /// 30 s); `None` while authenticated. For readiness: while `Some`, no record reaches Kafka.
    pub fn authentication_failure(&self) -> Option<ConnectFailure> {
        self.core.watch.authentication_failure()
    }

    /// True while a producer that raised a fatal error is being replaced.
    pub fn is_rebuilding(&self) -> bool {
        self.core.rebuilding.load(Ordering::Relaxed)
    }

    /// The spool, if there is one.
    pub fn spool(&self) -> Option<&Spool> {
        self.core.spool.as_deref()
    }

    /// Takes a valid event for the ingest topic without waiting (S1, S4, S5, S6).
    ///
    /// Returns as soon as librdkafka holds the record, or (with a spool, while the cluster is
    /// unreachable) the spool does; the record then lives on its own, whatever happens to the
    /// caller. Never blocks on Kafka: a full buffer is [`Error::QueueFull`], a full spool
    /// [`Error::SpoolFull`].
    pub fn send_event(&self, event: &Accepted, workspace_id: &str, source_id: &str) -> Result<(), Error> {
        let spool_it = |why: Option<&Error>| {
            let record = event_record(event, workspace_id, source_id);
            self.core.spool(&record, "request")?;
            if let Some(why) = why {
                tracing::warn!(message_id = event.message_id, %why, "event spooled");
            }
            Ok(())
        };
        if self.core.spool.is_some() && !self.is_healthy() {
            return spool_it(None);
        }
        let delivery = Delivery::Logged {
            message_id: event.message_id.clone(),
        };
        match self.enqueue_event(event, workspace_id, source_id, delivery) {
            Ok(()) => Ok(()),
            // Back-pressure, and records Kafka would never take (over `message.max.bytes`),
            // are the client's to handle.
            Err(Error::QueueFull) => Err(Error::QueueFull),
            Err(Error::Enqueue { source, topic }) if crate::rescue::is_permanent(&source) => {
                Err(Error::Enqueue { source, topic })
            }
            Err(error) if self.core.spool.is_some() => spool_it(Some(&error)),
            Err(error) => Err(error),
        }
    }

    /// Like [`EventProducer::send_event`], but the caller awaits the acknowledgement (acked
    /// delivery mode; replays, which store their offset only after it). Never spools.
    pub fn send_event_acked(
        &self,
        event: &Accepted,
        workspace_id: &str,
        source_id: &str,
    ) -> Result<Ack, Error> {
        let (tx, ack) = self.ack(&self.core.config.topics.ingest);
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
        let record = BaseRecord::with_opaque_to(&self.core.config.topics.ingest, Box::new(delivery))
            .key(event.key.as_bytes())
            .payload(&event.value)
            .headers(headers);
        self.core.enqueue(record)
    }

    /// Enqueues a rejected event for the DLQ (S8); await the returned [`Ack`] before
    /// answering the client. Enqueue several first, then await them, to write them concurrently.
    pub fn send_dlq(&self, envelope: &DlqEnvelope) -> Result<Ack, Error> {
        self.send_envelope(&self.core.config.topics.dlq, envelope)
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
        self.core.enqueue(record)?;
        Ok(ack)
    }

    fn ack(&self, topic: &str) -> (oneshot::Sender<Result<(), KafkaError>>, Ack) {
        let (tx, rx) = oneshot::channel();
        let timeout = self.core.config.dlq_timeout;
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

    /// Records held by librdkafka and not yet acknowledged.
    pub fn in_flight(&self) -> usize {
        self.core.in_flight()
    }

    /// Waits up to `grace` for every held record to be acknowledged (blocking). Returns the
    /// number of records still unacknowledged.
    pub fn flush(&self, grace: Duration) -> usize {
        let deadline = Instant::now() + grace;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            {
                let current = self.core.current.read().unwrap_or_else(|e| e.into_inner());
                if let Some(producer) = current.as_ref() {
                    if let Err(error) = producer.flush(left.min(Duration::from_millis(100))) {
                        tracing::debug!(%error, "kafka flush not finished yet");
                    }
                }
            }
            // Records whose delivery just failed are on their way to the retry topic.
            let pending = self.core.pending.load(Ordering::SeqCst);
            if (pending == 0 && self.in_flight() == 0) || Instant::now() >= deadline {
                return self.in_flight() + pending;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Shuts the producer down (blocking): waits up to `grace` for every held record to be
    /// acknowledged, then moves what is left to the spool (or, without one, drops it, logged
    /// and counted), stops the background threads and syncs the spool. Later sends fail with
    /// [`Error::Unavailable`].
    pub fn close(&self, grace: Duration) -> Closed {
        let join = |thread: &Mutex<Option<std::thread::JoinHandle<()>>>| {
            if let Some(thread) = thread.lock().unwrap_or_else(|e| e.into_inner()).take() {
                let _ = thread.join();
            }
        };
        // The drainer stops first, so that the flush is not fed new records; what it has
        // enqueued is flushed (its segment stays in the spool until a later drain).
        self.core.stopping.store(true, Ordering::SeqCst);
        join(&self.drainer);
        let unflushed = self.flush(grace);
        let (spooled, lost) = (
            self.core.spooled.load(Ordering::Relaxed),
            self.core.lost.load(Ordering::Relaxed),
        );
        self.core.closing.store(true, Ordering::SeqCst);
        self.core.healthy.store(false, Ordering::Relaxed);
        // What librdkafka still holds comes back through the delivery callback as failed, and
        // the rescuer spools it.
        if let Some(producer) = self.core.replace(None) {
            retire(&self.core, producer);
        }
        let jobs = self.core.jobs.lock().unwrap_or_else(|e| e.into_inner());
        let _ = jobs.send(Job::Stop);
        drop(jobs);
        join(&self.rescuer);
        if let Some(spool) = &self.core.spool {
            if let Err(error) = spool.sync() {
                tracing::error!(%error, "spool sync at shutdown failed");
            }
        }
        Closed {
            unflushed,
            spooled: self.core.spooled.load(Ordering::Relaxed) - spooled,
            lost: self.core.lost.load(Ordering::Relaxed) - lost,
        }
    }
}

impl Drop for EventProducer {
    fn drop(&mut self) {
        if !self.core.stopping.load(Ordering::SeqCst) {
            self.close(Duration::ZERO);
        }
    }
}

/// How long a producer being closed or replaced may take to report the records it held.
const RETIRE_PATIENCE: Duration = Duration::from_secs(30);

/// Takes back every record `producer` holds, then drops it. The purge reports each record
/// through the delivery callback as failed, to be sent again or spooled. (librdkafka's own drop
/// serves those reports for half a second only and discards the rest unreported.) Records not
/// reported within [`RETIRE_PATIENCE`] are counted and logged as lost.
pub(crate) fn retire(core: &Core, producer: ThreadedProducer<Callbacks>) {
    producer.purge(PurgeConfig::default().queue().inflight());
    let deadline = Instant::now() + RETIRE_PATIENCE;
    // The producer's polling thread serves the reports; the count includes unserved ones.
    while producer.in_flight_count() > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let left = u64::try_from(producer.in_flight_count()).unwrap_or(0);
    if left > 0 {
        core.lost.fetch_add(left, Ordering::Relaxed);
        core.metrics.lost.increment(left);
        tracing::error!(
            records = left,
            "records lost: the producer being closed did not report them within 30 s"
        );
    }
    drop(producer);
}

/// The spool record of an ingest event: the same key, headers and value as on Kafka.
fn event_record(event: &Accepted, workspace_id: &str, source_id: &str) -> spool::Record {
    spool::Record {
        message_id: event.message_id.clone(),
        key: event.key.as_bytes().to_vec(),
        headers: vec![
            ("workspace_id".into(), workspace_id.as_bytes().to_vec()),
            ("source_id".into(), source_id.as_bytes().to_vec()),
            ("type".into(), event.event_type.as_str().as_bytes().to_vec()),
        ],
        value: event.value.clone(),
    }
}
