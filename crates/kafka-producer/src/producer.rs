//! [`EventProducer`]: the facade requests use. It builds the [`Core`] and starts the
//! supervisor, the drainer and the spool writer; sends events to Kafka or the spool as the
//! [`Health`] says; and closes it all down in order.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use event_model::{Accepted, DlqEnvelope};
use rdkafka::error::KafkaError;
use rdkafka::producer::Producer;
use spool::Spool;
use tokio::sync::oneshot;

use crate::callbacks::Delivery;
use crate::client::{take_back_within, Client};
use crate::core::Core;
use crate::drainer::Drainer;
use crate::health::{Event, Health, HealthCell, Why};
use crate::metrics::ProducerMetrics;
use crate::outcome::{Ack, Closed, Refused, Unsendable};
use crate::patience::{join_within, run_within, CLOSE_PATIENCE};
use crate::readiness::Status;
use crate::record::{envelope_record, event_headers, event_record, headers_of};
use crate::spool_writer::SpoolWriter;
use crate::supervisor::Supervisor;
use crate::{defaults, Error, ProducerConfig, Topics};

/// The event producer shared by all requests of a process.
pub struct EventProducer {
    core: Arc<Core>,
    threads: Mutex<Vec<std::thread::JoinHandle<()>>>,
    closed: AtomicBool,
}

/// Why a start may be degraded (the log's `why`).
fn degraded_why(leftover: bool) -> &'static str {
    match leftover {
        true => "the spool holds a previous process's records",
        false => "--kafka-allow-degraded-start is set",
    }
}

impl EventProducer {
    /// Creates the producer and pings the cluster (S3): fails when the cluster does not answer
    /// metadata within the ping timeout, or when one of the three topics does not exist; fails
    /// at once, naming the cause, when the brokers refuse the credentials or the TLS handshake
    /// fails ([`Error::Connect`]). Blocks for up to the ping timeout.
    ///
    /// With a `spool`, events Kafka cannot take are kept on disk and drained once it delivers
    /// again; records already in it (a previous process's) are drained first.
    ///
    /// A degraded start: with a `spool` that holds a previous process's records, or with
    /// [`ProducerConfig::allow_degraded_start`], a cluster that does not answer the ping (or
    /// refuses the credentials) does not end the start-up: the producer starts
    /// [`Health::Unreachable`], buffered events go to the spool, the supervisor probes the
    /// cluster every second and the drainer empties the spool once it answers. The ping then
    /// waits at most [`defaults::DEGRADED_START_PING_TIMEOUT`]. A replica
    /// restarted during an outage then serves instead of crash-looping with its spool stranded.
    /// [`Status::degraded_start`] and `<prefix>_kafka_degraded_start` say so until Kafka first
    /// delivers. A configured topic the cluster says does not exist fails a start that may
    /// not be degraded; one that may be starts anyway, names the topic (log,
    /// [`Status::missing_topics`], `<prefix>_kafka_topic_missing{topic}`) and checks again
    /// every [`crate::supervisor::TOPIC_RECHECK`]: records bound for a missing DLQ or retry
    /// topic fail and are routed as any failed record is; with the ingest topic missing the
    /// producer stays unreachable after the first stall (the probe needs the ingest topic) and
    /// events wait in the spool until it exists. A replica restarted after a topic was deleted
    /// does not crash-loop with its spool stranded.
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
        for aside in spool.iter().flat_map(|s| s.set_aside_at_open()) {
            metrics.segment_set_aside(aside, None);
        }
        let leftover = spool.as_ref().is_some_and(|s| !s.is_empty());
        let may_start_degraded = spool.is_some() && (leftover || config.allow_degraded_start);
        let (jobs, job_queue) = mpsc::channel();
        let client = Client::new(config, metrics.clone(), jobs);
        let producer = client.build()?;
        let ping_timeout = match may_start_degraded {
            true => client
                .config
                .ping_timeout
                .min(defaults::duration(defaults::DEGRADED_START_PING_TIMEOUT)),
            false => client.config.ping_timeout,
        };
        let mut missing = Vec::new();
        let health = match client.watch.ping(producer.client(), ping_timeout) {
            Ok(metadata) => {
                missing = topics
                    .into_iter()
                    .filter(|topic| {
                        !metadata
                            .topics()
                            .iter()
                            .any(|t| t.name() == topic && t.error().is_none() && !t.partitions().is_empty())
                    })
                    .collect();
                match missing.first() {
                    Some(topic) if !may_start_degraded => return Err(Error::MissingTopic(topic.clone())),
                    Some(_) => tracing::warn!(
                        ?missing,
                        why = degraded_why(leftover),
                        "starting with configured topics missing: records bound for them fail and are routed as failed records are, until the topics exist"
                    ),
                    None => {}
                }
                Health::Delivering
            }
            Err(error @ (Error::Unreachable { .. } | Error::Connect { .. })) if may_start_degraded => {
                tracing::warn!(%error, why = degraded_why(leftover), "starting degraded: events go to the spool until Kafka answers");
                Health::Unreachable(Why::BrokersDown)
            }
            Err(error) => return Err(error),
        };
        let degraded = !health.is_delivering();
        metrics.degraded_start.set(if degraded { 1.0 } else { 0.0 });
        client.replace(Some(producer));
        let spawn_error = |e: std::io::Error| Error::Create(KafkaError::ClientCreation(e.to_string()));
        let writer = match spool {
            Some(spool) => Some(
                SpoolWriter::start(spool, metrics.clone(), client.config.spool_timeout)
                    .map_err(spawn_error)?,
            ),
            None => None,
        };
        if let Some(spool) = writer.as_ref().map(SpoolWriter::spool).filter(|_| leftover) {
            tracing::warn!(records = spool.records(), dir = %spool.dir().display(), "the spool holds records from before: draining them first");
        }
        metrics.health(health);
        let core = Arc::new(Core {
            client,
            health: HealthCell::new(health),
            writer,
            backlog: AtomicBool::new(leftover),
            gate: tokio::sync::RwLock::new(()),
            recovering: AtomicBool::new(leftover),
            degraded_start: AtomicBool::new(degraded),
            dlq_failing_at: std::sync::atomic::AtomicU64::new(0),
            stopping: AtomicBool::new(false),
            missing_topics: std::sync::Mutex::new(Vec::new()),
        });
        core.set_missing_topics(missing);
        let spawn = |name: &str, f: Box<dyn FnOnce() + Send>| {
            std::thread::Builder::new()
                .name(name.into())
                .spawn(f)
                .map_err(spawn_error)
        };
        let supervisor = Supervisor::new(core.clone());
        let mut threads = vec![spawn(
            "kafka-supervise",
            Box::new(move || supervisor.run(job_queue)),
        )?];
        if core.writer.is_some() {
            let drainer = Drainer::new(core.clone());
            threads.push(spawn("spool-drain", Box::new(move || drainer.run()))?);
        }
        Ok(EventProducer {
            core,
            threads: Mutex::new(threads),
            closed: AtomicBool::new(false),
        })
    }

    /// The configured topics.
    pub fn topics(&self) -> &Topics {
        &self.core.client.config.topics
    }

    /// The producer's state.
    pub fn health(&self) -> Health {
        self.core.health.get()
    }

    /// What readiness is derived from ([`Status::not_ready`]).
    pub fn status(&self) -> Status {
        self.core.status()
    }

    /// The spool, if there is one.
    pub fn spool(&self) -> Option<&Spool> {
        self.core.spool().map(|s| &**s)
    }

    /// True while buffered-mode events go to the spool: Kafka is not delivering, or a spool
    /// backlog drains (new events queue behind it).
    pub fn spools_events(&self) -> bool {
        self.core.writer.is_some()
            && (!self.core.health.get().is_delivering() || self.core.backlog.load(Ordering::Acquire))
    }

    /// Records enqueued (by requests, the drainer, the supervisor, DLQ writes) and not yet
    /// reported by librdkafka.
    pub fn in_flight(&self) -> usize {
        self.core.client.in_flight()
    }

    /// The key and value bytes of those records (what librdkafka's byte cap,
    /// `queue.buffering.max.kbytes`, counts, less headers).
    pub fn in_flight_bytes(&self) -> u64 {
        self.core.client.in_flight_bytes()
    }

    /// Takes a request's valid events for the ingest topic (S1, S4, S5, S6), all of them or
    /// from the first on none (`Refused::taken` says how many were).
    ///
    /// Buffered (`acked` false): returns once librdkafka holds them, or the spool does while
    /// Kafka is not delivering or a spool backlog drains (so that they do not overtake it).
    /// Never waits on Kafka; waits on the spool up to the spool timeout. A full librdkafka
    /// queue is [`Error::QueueFull`], a full spool [`Error::SpoolFull`].
    ///
    /// Acked: returns once the broker acknowledged every event (within the DLQ timeout);
    /// never spools, and refuses at once while Kafka is not delivering.
    ///
    /// An event Kafka can never take ([`Error::is_unsendable`] at enqueue, or in acked mode in
    /// its acknowledgement) is skipped and returned in [`Unsendable`]: the rest are taken.
    pub async fn send_events(
        &self,
        events: &[Accepted],
        workspace_id: &str,
        source_id: &str,
        acked: bool,
    ) -> Result<Unsendable, Refused> {
        let refused = |taken, error| Refused {
            taken,
            error,
            unsendable: Unsendable::default(),
        };
        if self.core.health.get() == Health::Closed {
            return Err(refused(0, Error::Unavailable));
        }
        if acked {
            return self.send_acked(events, workspace_id, source_id).await;
        }
        let core = &self.core;
        let timeout = core.client.config.spool_timeout;
        // Uncontended (no drain handoff or rebuild under way) the gate is taken without
        // arming a timer.
        let gate = match core.gate.try_read() {
            Ok(gate) => gate,
            Err(_) => tokio::time::timeout(timeout, core.gate.read())
                .await
                .map_err(|_| refused(0, Error::SpoolTimeout(timeout)))?,
        };
        let spooling = !core.health.get().is_delivering() || core.backlog.load(Ordering::Acquire);
        let spool = |from: usize| {
            let writer = core.writer.as_ref()?;
            core.backlog.store(true, Ordering::Release);
            let records = events[from..]
                .iter()
                .map(|e| event_record(e, workspace_id, source_id))
                .collect();
            Some(writer.submit(records))
        };
        let mut unsendable = Unsendable::default();
        let (taken, appended) = match spooling.then(|| spool(0)).flatten() {
            Some(appended) => (0, appended),
            None => match self.enqueue_events(events, workspace_id, source_id, &mut unsendable) {
                Ok(()) => return Ok(unsendable),
                // Kafka refused for a reason the spool can help with (a producer that failed
                // or is being replaced), or its queue filled half-way through the request (a
                // 503 now would make the client send the taken part again): the rest of the
                // request is spooled. A request is refused whole or taken whole.
                Err((taken, error))
                    if error.spool_helps() || (taken > 0 && matches!(error, Error::QueueFull)) =>
                {
                    match spool(taken) {
                        Some(appended) => {
                            tracing::warn!(%error, spooled = events.len() - taken, "enqueue failed, spooling the rest of the request");
                            (taken, appended)
                        }
                        None => {
                            return Err(Refused {
                                unsendable,
                                ..refused(taken, error)
                            })
                        }
                    }
                }
                Err((taken, error)) => {
                    return Err(Refused {
                        unsendable,
                        ..refused(taken, error)
                    })
                }
            },
        };
        drop(gate);
        if let Err(error) = appended.await {
            return Err(Refused {
                unsendable,
                ..refused(taken, error)
            });
        }
        Ok(unsendable)
    }

    /// Enqueues every event for the ingest topic, skipping (into `unsendable`) those Kafka
    /// can never take; on a refusal, how many were taken.
    fn enqueue_events(
        &self,
        events: &[Accepted],
        workspace_id: &str,
        source_id: &str,
        unsendable: &mut Unsendable,
    ) -> Result<(), (usize, Error)> {
        for (i, event) in events.iter().enumerate() {
            let delivery = Delivery::Logged {
                message_id: event.message_id.clone(),
            };
            match self.enqueue_event(event, workspace_id, source_id, delivery) {
                Ok(()) => {}
                Err(error) if error.is_unsendable() => unsendable.events.push((i, error)),
                Err(error) => return Err((i, error)),
            }
        }
        Ok(())
    }

    async fn send_acked(
        &self,
        events: &[Accepted],
        workspace_id: &str,
        source_id: &str,
    ) -> Result<Unsendable, Refused> {
        let mut acks = Vec::with_capacity(events.len());
        let mut unsendable = Unsendable::default();
        let mut failure = None;
        for (i, event) in events.iter().enumerate() {
            match self.send_event_acked(event, workspace_id, source_id) {
                Ok(ack) => acks.push((i, ack)),
                Err(error) if error.is_unsendable() => unsendable.events.push((i, error)),
                Err(error) => {
                    failure = Some((i, error));
                    break;
                }
            }
        }
        for (i, ack) in acks {
            match ack.wait().await {
                Ok(()) => {}
                Err(error) if error.is_unsendable() => unsendable.events.push((i, error)),
                Err(error) => {
                    if failure.as_ref().is_none_or(|(first, _)| i < *first) {
                        failure = Some((i, error));
                    }
                }
            }
        }
        unsendable.events.sort_by_key(|(i, _)| *i);
        match failure {
            None => Ok(unsendable),
            Some((taken, error)) => {
                unsendable.events.retain(|(i, _)| *i < taken);
                Err(Refused {
                    taken,
                    error,
                    unsendable,
                })
            }
        }
    }

    /// Enqueues one event for the ingest topic; await the returned [`Ack`] (replays store
    /// their offset only after it). Never spools; [`Error::Unavailable`] while Kafka is not
    /// delivering.
    pub fn send_event_acked(
        &self,
        event: &Accepted,
        workspace_id: &str,
        source_id: &str,
    ) -> Result<Ack, Error> {
        let (tx, ack) = self.ack(&self.core.client.config.topics.ingest);
        self.enqueue_event(event, workspace_id, source_id, Delivery::Awaited(tx))?;
        Ok(ack)
    }

    fn enqueue_event(
        &self,
        event: &Accepted,
        workspace_id: &str,
        source_id: &str,
        delivery: Delivery,
    ) -> Result<(), Error> {
        if !self.core.health.get().is_delivering() {
            return Err(Error::Unavailable);
        }
        let headers = event_headers(event, workspace_id, source_id);
        let topic = &self.core.client.config.topics.ingest;
        self.core
            .client
            .enqueue(topic, event.key.as_bytes(), &event.value, headers, delivery)
    }

    /// Enqueues a rejected event for the DLQ (S8); await the returned [`Ack`] before
    /// answering the client. Enqueue several first, then await them, to write them concurrently.
    pub fn send_dlq(&self, envelope: &DlqEnvelope) -> Result<Ack, Error> {
        self.send_envelope(&self.core.client.config.topics.dlq, envelope)
    }

    /// Enqueues a DLQ envelope for `topic` (the DLQ, or a park topic): key `workspace_id`,
    /// header `reason`.
    pub fn send_envelope(&self, topic: &str, envelope: &DlqEnvelope) -> Result<Ack, Error> {
        let (tx, ack) = self.ack(topic);
        let record = envelope_record(envelope);
        let headers = headers_of(&record);
        self.core
            .client
            .enqueue(topic, &record.key, &record.value, headers, Delivery::Awaited(tx))?;
        Ok(ack)
    }

    /// Lands a request's DLQ envelopes in buffered mode (S8). A DLQ topic that did not
    /// acknowledge the last request's envelopes (its leader down, the topic deleted) is skipped
    /// for 10 s at a time: envelopes are spooled at once, their request not held up for the
    /// DLQ timeout (`/readyz` `kafka_dlq_failing`, `<prefix>_kafka_dlq_failing`). `Ok` once every one is durable,
    /// that is acknowledged by the DLQ topic or appended to the spool bound for the DLQ (the
    /// drainer sends it there once Kafka delivers), the same durability a valid event's 200
    /// gets. While Kafka is not delivering they go to the spool at once, so that an outage
    /// never makes a request wait on a broker that is not there, and no DLQ record ages in
    /// librdkafka into a producer rebuild. While it delivers they are enqueued and awaited;
    /// those that fail, or are still unacknowledged when Kafka stops delivering or at the DLQ
    /// timeout, are spooled (one acknowledged late as well is on the DLQ twice). One the DLQ
    /// refuses for good ([`Error::is_permanent`]: not authorised, too large) is that error:
    /// spooling would not help it.
    ///
    /// Without a spool, the acknowledgement is the only landing ([`EventProducer::send_dlq`]).
    /// `Err`: the first failure: an acknowledgement's without a spool, else the spool's
    /// ([`Error::SpoolFull`], [`Error::SpoolTimeout`], ...).
    pub async fn land_dlq(&self, envelopes: &[DlqEnvelope]) -> Result<(), Error> {
        let core = &self.core;
        let Some(writer) = core.writer.as_ref() else {
            let acks: Vec<_> = envelopes.iter().map(|e| self.send_dlq(e)).collect();
            let mut first = Ok(());
            for ack in acks {
                let landed = match ack {
                    Ok(ack) => ack.wait().await,
                    Err(error) => Err(error),
                };
                if let (Err(error), Ok(())) = (landed, &first) {
                    first = Err(error);
                }
            }
            return first;
        };
        if core.health.get() == Health::Closed {
            return Err(Error::Unavailable);
        }
        let mut acked = vec![false; envelopes.len()];
        let mut refused = None;
        if core.health.get().is_delivering() && !core.dlq_failing() {
            let acks: Vec<_> = envelopes.iter().map(|e| self.send_dlq(e)).collect();
            let all_acked = async {
                for (slot, ack) in acked.iter_mut().zip(acks) {
                    match ack.map(Ack::wait) {
                        Ok(wait) => match wait.await {
                            Ok(()) => *slot = true,
                            Err(error) if error.is_permanent() => {
                                refused.get_or_insert(error);
                            }
                            Err(_) => {}
                        },
                        Err(error) if error.is_permanent() => {
                            refused.get_or_insert(error);
                        }
                        Err(_) => {}
                    }
                }
            };
            let waited = tokio::select! {
                () = all_acked => true,
                () = core.health.until_not_delivering() => false,
            };
            if waited && refused.is_none() {
                core.dlq_outcome(acked.iter().all(|&a| a));
            }
        }
        // The DLQ refuses them for good (not authorised, say): spooling would not help.
        if let Some(error) = refused {
            return Err(error);
        }
        let records: Vec<spool::Record> = envelopes
            .iter()
            .zip(&acked)
            .filter(|(_, &acked)| !acked)
            .map(|(envelope, _)| envelope_record(envelope))
            .collect();
        if records.is_empty() {
            return Ok(());
        }
        tracing::debug!(records = records.len(), "DLQ records spooled");
        writer.submit(records).await
    }

    fn ack(&self, topic: &str) -> (oneshot::Sender<Result<(), KafkaError>>, Ack) {
        Ack::new(topic, self.core.client.config.dlq_timeout)
    }

    /// Waits up to `grace` for every held record to be acknowledged and every failed one to
    /// be routed (blocking). Returns the number of records still held.
    pub fn flush(&self, grace: Duration) -> usize {
        let deadline = Instant::now() + grace;
        let counters = &self.core.client.counters;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            self.core.client.flush(left.min(Duration::from_millis(100)));
            let pending = counters.pending.load(Ordering::SeqCst);
            if (pending == 0 && self.in_flight() == 0) || Instant::now() >= deadline {
                return self.in_flight() + pending;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Shuts the producer down (blocking): stops the drainer, waits up to `grace` for every
    /// held record to be acknowledged, then moves what is left to the spool (or, without one,
    /// drops it, counted and logged), stops the supervisor and the spool writer, and syncs the
    /// spool. Later sends fail with [`Error::Unavailable`]. Takes at most `grace` plus a few
    /// [`CLOSE_PATIENCE`]s whatever the disk and the brokers do: what a disk that does not answer
    /// still holds is counted lost, named by `message_id` where known.
    pub fn close(&self, grace: Duration) -> Closed {
        if self.closed.swap(true, Ordering::SeqCst) {
            return Closed::default();
        }
        let core = &self.core;
        let mut threads = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|e| e.into_inner()));
        if let Some(writer) = &core.writer {
            writer.begin_close();
        }
        // The drainer stops first, so that the flush is not fed new records; what it has
        // enqueued is flushed (its segment stays in the spool until a later drain). A drainer
        // stuck on a disk that does not answer is left behind.
        core.stopping.store(true, Ordering::SeqCst);
        if threads.len() > 1 && !join_within(threads.remove(1), CLOSE_PATIENCE) {
            tracing::error!("the spool drainer did not stop (its disk does not answer): left behind");
        }
        let unflushed = self.flush(grace);
        let before = core.metrics().outcomes();
        // From here failures go to the spool (or are lost), and nothing new is taken.
        core.apply(Event::Close);
        // Under the gate, so that a rebuild in progress sees `Closed` before it swaps a new
        // producer in.
        // (`try_write` in a loop, not `blocking_write`: `close` may run on a runtime thread, from
        // `Drop`.)
        let deadline = Instant::now() + Duration::from_secs(5);
        let gate = loop {
            match core.gate.try_write() {
                Ok(gate) => break Some(gate),
                Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(1)),
                Err(_) => break None,
            }
        };
        let producer = core.client.replace(None);
        drop(gate);
        if let Some(producer) = producer {
            let producer = take_back_within(core.metrics(), producer, CLOSE_PATIENCE);
            // Destroying a producer can wait on a hung broker's connections.
            if !run_within("kafka-retire", CLOSE_PATIENCE, move || drop(producer)) {
                tracing::warn!("the closed producer is still being destroyed (a hung broker?): left behind");
            }
        }
        core.client.stop_supervisor();
        for thread in threads {
            if !join_within(thread, CLOSE_PATIENCE) {
                tracing::error!(
                    "the supervisor did not stop (the spool's disk does not answer?): left behind"
                );
            }
        }
        if let Some(writer) = &core.writer {
            writer.stop(CLOSE_PATIENCE);
        }
        let after = core.metrics().outcomes();
        Closed {
            unflushed,
            spooled: after.0 - before.0,
            lost: after.1 - before.1,
        }
    }
}

impl Drop for EventProducer {
    fn drop(&mut self) {
        self.close(Duration::ZERO);
    }
}
