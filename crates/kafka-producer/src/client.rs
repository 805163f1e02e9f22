//! [`Client`]: the librdkafka producer in use, which the supervisor replaces, and the one
//! place records are enqueued (each takes a ticket of the memory-only window).

use std::sync::{mpsc, Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use rdkafka::error::RDKafkaErrorCode;
use rdkafka::message::OwnedHeaders;
use rdkafka::producer::{BaseRecord, Producer, PurgeConfig, ThreadedProducer};

use crate::callbacks::{Callbacks, Counters, Delivery, Failed, Job, Tracked};
use crate::metrics::ProducerMetrics;
use crate::watch::ConnectionWatch;
use crate::{Error, ProducerConfig};

/// What a metadata probe of the ingest topic found ([`Client::probe`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Probe {
    /// The cluster answered, the ingest topic has partitions: Kafka can take events.
    Answered,
    /// The cluster answered without the ingest topic: nothing can take events until it exists.
    IngestTopicMissing,
    /// No answer within the timeout.
    NoAnswer,
}

/// The producer in use; `None` before the first and after close.
pub(crate) struct Client {
    pub config: ProducerConfig,
    pub metrics: Arc<ProducerMetrics>,
    pub watch: ConnectionWatch,
    pub counters: Arc<Counters>,
    jobs: Mutex<mpsc::Sender<Job>>,
    current: RwLock<Option<ThreadedProducer<Callbacks>>>,
}

/// How long a producer being retired may take to report the records it held.
const RETIRE_PATIENCE: Duration = Duration::from_secs(30);

impl Client {
    pub(crate) fn new(
        config: ProducerConfig,
        metrics: Arc<ProducerMetrics>,
        jobs: mpsc::Sender<Job>,
    ) -> Self {
        Client {
            watch: ConnectionWatch::new(&config.metric_prefix, &config.kafka),
            counters: Arc::new(Counters::new(config.ack_window)),
            jobs: Mutex::new(jobs),
            current: RwLock::new(None),
            metrics,
            config,
        }
    }

    /// A new librdkafka producer whose callbacks feed this client's counters and the
    /// supervisor.
    pub(crate) fn build(&self) -> Result<ThreadedProducer<Callbacks>, Error> {
        let callbacks = Callbacks {
            metrics: self.metrics.clone(),
            watch: self.watch.clone(),
            counters: self.counters.clone(),
            jobs: self.jobs.lock().unwrap_or_else(|e| e.into_inner()).clone(),
            ack_window: self.config.ack_window,
        };
        self.config
            .client_config()?
            .create_with_context(callbacks)
            .map_err(crate::settings::create_error)
    }

    /// Swaps in a producer (or none); returns the old one.
    pub(crate) fn replace(
        &self,
        producer: Option<ThreadedProducer<Callbacks>>,
    ) -> Option<ThreadedProducer<Callbacks>> {
        let mut current = self.current.write().unwrap_or_else(|e| e.into_inner());
        std::mem::replace(&mut *current, producer)
    }

    /// Hands a record to librdkafka without waiting; never blocks. [`Error::QueueFull`] when
    /// its queue is full, [`Error::Unavailable`] without a producer.
    pub(crate) fn enqueue(
        &self,
        topic: &str,
        key: &[u8],
        value: &[u8],
        headers: OwnedHeaders,
        delivery: Delivery,
    ) -> Result<(), Error> {
        let current = self.current.read().unwrap_or_else(|e| e.into_inner());
        let Some(producer) = current.as_ref() else {
            return Err(Error::Unavailable);
        };
        let ticket = self.counters.unacked.enter(key.len() + value.len());
        let record = BaseRecord::with_opaque_to(topic, Box::new(Tracked { ticket, delivery }))
            .key(key)
            .payload(value)
            .headers(headers);
        producer.send(record).map_err(|(error, record)| {
            self.counters.unacked.leave(record.delivery_opaque.ticket);
            match error.rdkafka_error_code() {
                Some(RDKafkaErrorCode::QueueFull) => {
                    self.counters.queue_refused();
                    Error::QueueFull
                }
                _ => Error::Enqueue {
                    topic: topic.to_string(),
                    source: error,
                },
            }
        })
    }

    /// Hands a failed record to the supervisor; false when it has stopped.
    pub(crate) fn hand_over(&self, failed: Failed) -> bool {
        self.counters
            .pending
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let jobs = self.jobs.lock().unwrap_or_else(|e| e.into_inner());
        let sent = jobs.send(Job::Failed(Box::new(failed))).is_ok();
        if !sent {
            self.counters
                .pending
                .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        }
        sent
    }

    /// Asks the supervisor to stop once it has routed what is queued.
    pub(crate) fn stop_supervisor(&self) {
        let _ = self
            .jobs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .send(Job::Stop);
    }

    /// Asks the cluster for the ingest topic's metadata, waiting up to `timeout`.
    pub(crate) fn probe(&self, timeout: Duration) -> Probe {
        let current = self.current.read().unwrap_or_else(|e| e.into_inner());
        let ingest = &self.config.topics.ingest;
        match current
            .as_ref()
            .map(|p| p.client().fetch_metadata(Some(ingest), timeout))
        {
            Some(Ok(metadata)) => {
                let found = metadata.topics().iter().any(|t| {
                    t.name() == ingest.as_str() && t.error().is_none() && !t.partitions().is_empty()
                });
                match found {
                    true => Probe::Answered,
                    false => Probe::IngestTopicMissing,
                }
            }
            _ => Probe::NoAnswer,
        }
    }

    /// The configured topics the cluster says do not exist (or have no partition); `None`
    /// when the metadata request fails (nothing is known).
    pub(crate) fn missing_topics(&self, timeout: Duration) -> Option<Vec<String>> {
        let current = self.current.read().unwrap_or_else(|e| e.into_inner());
        let Some(Ok(metadata)) = current.as_ref().map(|p| p.client().fetch_metadata(None, timeout)) else {
            return None;
        };
        let topics = &self.config.topics;
        [&topics.ingest, &topics.dlq, &topics.retry]
            .into_iter()
            .filter(|topic| {
                !metadata
                    .topics()
                    .iter()
                    .any(|t| t.name() == topic.as_str() && t.error().is_none() && !t.partitions().is_empty())
            })
            .cloned()
            .collect::<Vec<_>>()
            .into()
    }

    /// The fatal error the current producer raised, if it did.
    pub(crate) fn fatal_error(&self) -> Option<String> {
        let current = self.current.read().unwrap_or_else(|e| e.into_inner());
        let (code, reason) = current.as_ref()?.client().fatal_error()?;
        Some(format!("{code}: {reason}"))
    }

    /// Records enqueued and not yet reported (by this producer or a retired one).
    pub(crate) fn in_flight(&self) -> usize {
        self.counters.unacked.count()
    }

    /// The key and value bytes of those records.
    pub(crate) fn in_flight_bytes(&self) -> u64 {
        self.counters.unacked.bytes()
    }

    /// Waits up to `timeout` for the current producer's records to be acknowledged.
    pub(crate) fn flush(&self, timeout: Duration) {
        let current = self.current.read().unwrap_or_else(|e| e.into_inner());
        if let Some(producer) = current.as_ref() {
            if let Err(error) = producer.flush(timeout) {
                tracing::debug!(%error, "kafka flush not finished yet");
            }
        }
    }
}

/// Takes back every record `producer` holds and returns it, to be dropped: the purge reports
/// each record as failed (`PurgeQueue`/`PurgeInflight`), handing it to the supervisor; when
/// this returns, every report has been handed over. (librdkafka's own drop serves those
/// reports for half a second only and discards the rest unreported.) Records not reported
/// within [`RETIRE_PATIENCE`] are counted and logged as lost.
pub(crate) fn take_back(
    metrics: &ProducerMetrics,
    producer: ThreadedProducer<Callbacks>,
) -> ThreadedProducer<Callbacks> {
    take_back_within(metrics, producer, RETIRE_PATIENCE)
}

/// [`take_back`], waiting at most `patience` for the reports (a shutdown's bound).
pub(crate) fn take_back_within(
    metrics: &ProducerMetrics,
    producer: ThreadedProducer<Callbacks>,
    patience: Duration,
) -> ThreadedProducer<Callbacks> {
    producer.purge(PurgeConfig::default().queue().inflight());
    let deadline = Instant::now() + patience;
    // The producer's polling thread serves the reports; the count includes unserved ones.
    while producer.in_flight_count() > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    let left = u64::try_from(producer.in_flight_count()).unwrap_or(0);
    if left > 0 {
        metrics.lose_unknown(
            left,
            &format!("the producer being closed did not report them within {patience:?}"),
        );
    }
    producer
}
