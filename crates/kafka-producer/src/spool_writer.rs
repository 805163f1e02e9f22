//! [`SpoolWriter`]: the one thread that appends to the spool, so that a slow or frozen disk
//! never holds a runtime worker. Requests wait for their append with a timeout (then 503);
//! rescued records are handed over without waiting. The thread also watches the spool's file
//! system (free space, read-only) while idle, and publishes a [`SpoolCondition`].

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use spool::Spool;
use tokio::sync::oneshot;

use crate::metrics::ProducerMetrics;
use crate::readiness::SpoolCondition;
use crate::Error;

/// Appends waiting for the writer, at most: beyond it the disk is not keeping up (503).
const QUEUE: usize = 4096;
/// Key and value bytes of the requests' appends waiting for the writer, at most: a slow disk
/// cannot make the queue hold more than this in memory (requests beyond it get 503).
const QUEUE_MAX_BYTES: u64 = 64 << 20;
/// How often the idle writer checks the file system.
const CHECK_EVERY: Duration = Duration::from_secs(1);
/// Most key and value bytes of rescued records kept in memory while the spool cannot take
/// them ([`SpoolWriter::take_held`]); beyond it they are counted lost.
pub(crate) const HELD_MAX_BYTES: u64 = 64 << 20;

/// Where spooled records come from (the `from` label of `<prefix>_spool_appended_total`).
#[derive(Debug, Clone, Copy)]
pub(crate) enum From {
    /// A request's events (buffered mode, Kafka not delivering).
    Request,
    /// Records whose delivery failed, or taken back from a replaced producer.
    Rescue,
}

/// A request's append: queued until the writer starts it or the request gives up on it.
const QUEUED: u8 = 0;
/// The writer took it: it will be appended, so the request waits for the outcome.
const STARTED: u8 = 1;
/// The request gave up (spool timeout) before the writer took it: it is skipped.
const CANCELLED: u8 = 2;

/// Where a request's append is answered, and its [`QUEUED`] / [`STARTED`] / [`CANCELLED`] state.
type Reply = (oneshot::Sender<Result<(), Error>>, Arc<AtomicU8>);

enum Work {
    Append {
        records: Vec<spool::Record>,
        from: From,
        /// `None`: nobody waits (rescued records); a failure loses them, counted and logged.
        reply: Option<Reply>,
    },
    /// Answered once everything queued before it is appended.
    Barrier(mpsc::Sender<()>),
    Stop,
}

struct Shared {
    spool: Arc<Spool>,
    metrics: Arc<ProducerMetrics>,
    start: Instant,
    /// When the running append began (ms since `start`, +1), 0 when idle.
    busy_since: AtomicU64,
    /// The message ids of the running append's records, for a stop that cannot wait for it.
    busy_ids: Mutex<Vec<String>>,
    condition: Mutex<SpoolCondition>,
    /// The work queue's receiving end: the writer holds the lock only while it waits for work,
    /// never while it writes, so that a stop past its patience can take what is still queued.
    queue: Mutex<mpsc::Receiver<Work>>,
    /// Key and value bytes of the requests' appends queued and not yet taken by the writer.
    queued_bytes: AtomicU64,
    /// The writer thread has stopped (or was abandoned): nothing handed over now is appended.
    stopped: std::sync::atomic::AtomicBool,
    /// Set by [`SpoolWriter::stop`]: rescued records are handed over without blocking.
    closing: std::sync::atomic::AtomicBool,
    /// Rescued records the spool refused (read-only, failing), waiting in memory for the spool
    /// or Kafka to take them, with their key and value bytes (at most [`HELD_MAX_BYTES`]).
    held: Mutex<(std::collections::VecDeque<spool::Record>, u64)>,
}

/// The spool's writing thread.
pub(crate) struct SpoolWriter {
    shared: Arc<Shared>,
    work: mpsc::SyncSender<Work>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    timeout: Duration,
}

impl SpoolWriter {
    pub(crate) fn start(
        spool: Arc<Spool>,
        metrics: Arc<ProducerMetrics>,
        timeout: Duration,
    ) -> std::io::Result<Self> {
        let (work, queue) = mpsc::sync_channel(QUEUE);
        let shared = Arc::new(Shared {
            spool,
            metrics,
            start: Instant::now(),
            busy_since: AtomicU64::new(0),
            busy_ids: Mutex::new(Vec::new()),
            condition: Mutex::new(SpoolCondition::Writable),
            queue: Mutex::new(queue),
            queued_bytes: AtomicU64::new(0),
            stopped: std::sync::atomic::AtomicBool::new(false),
            closing: std::sync::atomic::AtomicBool::new(false),
            held: Mutex::new((std::collections::VecDeque::new(), 0)),
        });
        let thread = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("spool-write".into())
                .spawn(move || shared.run())?
        };
        Ok(SpoolWriter {
            shared,
            work,
            thread: Mutex::new(Some(thread)),
            timeout,
        })
    }

    /// The spool.
    pub(crate) fn spool(&self) -> &Arc<Spool> {
        &self.shared.spool
    }

    /// Queues a request's records for appending at once (so that a barrier after this call
    /// finds them appended), and returns the wait for the outcome: `Err` when the spool is
    /// full or failing ([`Error::SpoolFull`], [`Error::Spool`]), or when the writer has not
    /// started the append within the spool timeout ([`Error::SpoolTimeout`]: the append is
    /// cancelled, nothing of it is written, so the 503 that follows is true). An append the
    /// writer has started is waited for however long it takes (a disk that froze under it):
    /// answering 503 then would be a 503 that took the events. One append runs at a time, so
    /// a frozen disk holds one request this way; the others time out, cancelled.
    pub(crate) fn submit(
        &self,
        records: Vec<spool::Record>,
    ) -> impl std::future::Future<Output = Result<(), Error>> + use<> {
        let (tx, mut rx) = oneshot::channel();
        let state = Arc::new(AtomicU8::new(QUEUED));
        let bytes = record_bytes(&records);
        let shared = self.shared.clone();
        let room = shared
            .queued_bytes
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |queued| {
                (queued + bytes <= QUEUE_MAX_BYTES || queued == 0).then_some(queued + bytes)
            })
            .is_ok();
        let work = Work::Append {
            records,
            from: From::Request,
            reply: Some((tx, state.clone())),
        };
        let room = room && !shared.stopped.load(Ordering::Acquire);
        let queued = match room.then(|| self.work.try_send(work)) {
            None => Err(Error::SpoolTimeout(self.timeout)),
            Some(Ok(())) => Ok(()),
            Some(Err(mpsc::TrySendError::Full(_))) => Err(Error::SpoolTimeout(self.timeout)),
            Some(Err(mpsc::TrySendError::Disconnected(_))) => Err(Error::Unavailable),
        };
        if room && queued.is_err() {
            shared.queued_bytes.fetch_sub(bytes, Ordering::AcqRel);
        }
        let timeout = self.timeout;
        async move {
            queued?;
            let answer = match tokio::time::timeout(timeout, &mut rx).await {
                Ok(answer) => answer,
                Err(_) => {
                    let cancel =
                        state.compare_exchange(QUEUED, CANCELLED, Ordering::AcqRel, Ordering::Acquire);
                    if cancel.is_ok() {
                        shared.queued_bytes.fetch_sub(bytes, Ordering::AcqRel);
                        return Err(Error::SpoolTimeout(timeout));
                    }
                    tracing::warn!(
                        ?timeout,
                        "a spool append runs past the spool timeout: waiting for it"
                    );
                    rx.await
                }
            };
            answer.unwrap_or(Err(Error::Unavailable))
        }
    }

    /// Hands rescued records over without waiting (blocks only while the writer's queue is
    /// full, and not at all once [`SpoolWriter::stop`] began). A failure to append them is
    /// counted and logged as a loss by the writer.
    pub(crate) fn append_detached(&self, records: Vec<spool::Record>) {
        let work = Work::Append {
            records,
            from: From::Rescue,
            reply: None,
        };
        if self.shared.stopped.load(Ordering::Acquire) {
            if let Work::Append { records, .. } = work {
                for record in records {
                    self.shared
                        .metrics
                        .lose(&record.message_id, &"the spool writer has stopped");
                }
            }
            return;
        }
        let refused = match self.shared.closing.load(Ordering::Acquire) {
            false => self
                .work
                .send(work)
                .err()
                .map(|mpsc::SendError(work)| (work, "the spool writer has stopped")),
            true => match self.work.try_send(work) {
                Ok(()) => None,
                Err(mpsc::TrySendError::Full(work)) => {
                    Some((work, "the spool's disk did not answer at shutdown"))
                }
                Err(mpsc::TrySendError::Disconnected(work)) => Some((work, "the spool writer has stopped")),
            },
        };
        if let Some((Work::Append { records, .. }, why)) = refused {
            for record in records {
                self.shared.metrics.lose(&record.message_id, &why);
            }
        }
    }

    /// Waits (up to the spool timeout) until every append queued before is done; false when
    /// the writer did not get there in time.
    pub(crate) fn barrier(&self) -> bool {
        let (tx, rx) = mpsc::channel();
        self.work.try_send(Work::Barrier(tx)).is_ok() && rx.recv_timeout(self.timeout).is_ok()
    }

    /// The spool's condition: [`SpoolCondition::Stalled`] while an append has run longer than
    /// the spool timeout, else what the last append or check found.
    pub(crate) fn condition(&self) -> SpoolCondition {
        let busy = self.shared.busy_since.load(Ordering::Relaxed);
        let now = self.shared.start.elapsed().as_millis() as u64 + 1;
        if busy != 0 && now.saturating_sub(busy) > self.timeout.as_millis() as u64 {
            return SpoolCondition::Stalled;
        }
        match self.shared.current() {
            SpoolCondition::Writable if self.shared.nearly_full() => SpoolCondition::Full,
            condition => condition,
        }
    }

    /// Takes the rescued records held in memory because the spool refused them, oldest
    /// first: the drainer sends them while Kafka delivers.
    pub(crate) fn take_held(&self) -> Vec<spool::Record> {
        self.shared.take_held()
    }

    /// From now on rescued records are handed over without blocking: a shutdown must not wait
    /// on a queue that a frozen disk never empties.
    pub(crate) fn begin_close(&self) {
        self.shared.closing.store(true, Ordering::Release);
    }

    /// Appends what is queued, then stops the thread and syncs the spool, waiting at most
    /// `patience`. A disk that does not answer (frozen, hung) cannot hold the shutdown past
    /// it: what is still queued is counted lost and logged with its `message_id`, the append
    /// under way is counted lost too (it may yet reach the spool, to be drained twice at the
    /// next start, never silently missing), and the thread is left to the process exit.
    pub(crate) fn stop(&self, patience: Duration) {
        let deadline = Instant::now() + patience;
        self.shared.closing.store(true, Ordering::Release);
        let mut stop = Some(Work::Stop);
        while let Some(work) = stop.take() {
            match self.work.try_send(work) {
                Err(mpsc::TrySendError::Full(work)) if Instant::now() < deadline => {
                    stop = Some(work);
                    std::thread::sleep(Duration::from_millis(5));
                }
                _ => {}
            }
        }
        let mut thread = self.thread.lock().unwrap_or_else(|e| e.into_inner());
        while thread.as_ref().is_some_and(|t| !t.is_finished()) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        if thread.as_ref().is_some_and(|t| !t.is_finished()) {
            self.shared.abandon();
            return;
        }
        if let Some(thread) = thread.take() {
            let _ = thread.join();
        }
        self.shared.stopped.store(true, Ordering::Release);
        // Handed over after the writer took its Stop: refused (requests) or lost (rescues).
        self.shared.refuse_queued(false);
        self.shared.lose_held();
        let spool = self.shared.spool.clone();
        let synced = crate::patience::run_within("spool-sync", patience, move || {
            if let Err(error) = spool.sync() {
                tracing::error!(%error, "spool sync at shutdown failed");
            }
        });
        if !synced {
            tracing::error!("the spool's last sync did not finish (its disk does not answer): what was appended may not be on disk");
        }
    }
}

/// Key and value bytes of `records`.
fn record_bytes(records: &[spool::Record]) -> u64 {
    records.iter().map(|r| (r.key.len() + r.value.len()) as u64).sum()
}

impl Shared {
    /// The writer did not finish within the stop's patience (its disk does not answer): counts
    /// what it holds as lost, naming each queued record.
    fn abandon(&self) {
        self.stopped.store(true, Ordering::Release);
        let queued = self.refuse_queued(true);
        // After the queue: the writer cannot start another append meanwhile (it needs the
        // queue's lock to take one, and `stopped` is set).
        let busy = std::mem::take(&mut *self.busy_ids.lock().unwrap_or_else(|e| e.into_inner()));
        for message_id in &busy {
            self.metrics.lose(message_id, &"in a spool append under way when the spool's disk stopped answering at shutdown (it may yet reach the spool)");
        }
        let held = self.lose_held();
        tracing::error!(
            under_way = busy.len(),
            queued,
            held,
            "the spool's disk did not answer at shutdown: what it held is counted lost"
        );
    }

    /// Empties the work queue once the writer will not take more: a request's append not
    /// started is cancelled and answered `Unavailable` (a 503 that took nothing); rescued
    /// records are counted lost, named. `wait`: the writer may still hold the queue's lock
    /// (waiting for work, at most [`CHECK_EVERY`]). Returns the rescued records lost.
    fn refuse_queued(&self, wait: bool) -> usize {
        let deadline = Instant::now()
            + if wait {
                CHECK_EVERY + Duration::from_millis(500)
            } else {
                Duration::ZERO
            };
        let queue = loop {
            match self.queue.try_lock() {
                Ok(queue) => break Some(queue),
                Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
                Err(_) => break None,
            }
        };
        let mut lost = 0;
        while let Some(Ok(work)) = queue.as_ref().map(|q| q.try_recv()) {
            match work {
                Work::Append {
                    reply: Some((reply, state)),
                    ..
                } => {
                    let cancel =
                        state.compare_exchange(QUEUED, CANCELLED, Ordering::AcqRel, Ordering::Acquire);
                    if cancel.is_ok() {
                        let _ = reply.send(Err(Error::Unavailable));
                    }
                }
                Work::Append {
                    records, reply: None, ..
                } => {
                    lost += records.len();
                    for record in &records {
                        self.metrics.lose(
                            &record.message_id,
                            &"the spool's writer stopped before appending it",
                        );
                    }
                }
                Work::Barrier(_) | Work::Stop => {}
            }
        }
        lost
    }

    /// At shutdown: the held records are counted lost, named. Returns how many.
    fn lose_held(&self) -> usize {
        let held = self.take_held();
        for record in &held {
            self.metrics.lose(
                &record.message_id,
                &"held in memory at shutdown: neither the spool nor Kafka took it",
            );
        }
        held.len()
    }

    fn run(&self) {
        self.metrics.spool_max_bytes.set(self.spool.max_bytes() as f64);
        loop {
            self.publish();
            let next = self
                .queue
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .recv_timeout(CHECK_EVERY);
            match next {
                Ok(Work::Append {
                    records,
                    from: _,
                    reply,
                }) if self.stopped.load(Ordering::Acquire) => {
                    // Abandoned meanwhile: `refuse_queued` answers or counts such work.
                    match reply {
                        Some((reply, _)) => drop(reply.send(Err(Error::Unavailable))),
                        None => {
                            for record in &records {
                                self.metrics.lose(
                                    &record.message_id,
                                    &"the spool's writer stopped before appending it",
                                );
                            }
                        }
                    }
                }
                Ok(Work::Append { records, from, reply }) => {
                    if let Some((_, state)) = &reply {
                        let start =
                            state.compare_exchange(QUEUED, STARTED, Ordering::AcqRel, Ordering::Acquire);
                        if start.is_err() {
                            continue; // cancelled: its request answered 503
                        }
                        self.queued_bytes
                            .fetch_sub(record_bytes(&records), Ordering::AcqRel);
                    }
                    let result = self.append(&records, from);
                    if result.is_ok() && !self.held.lock().unwrap_or_else(|e| e.into_inner()).0.is_empty() {
                        self.retry_held();
                    }
                    match reply {
                        Some((reply, _)) => drop(reply.send(result.map_err(|(_, e)| e))),
                        None => {
                            if let Err((appended, error)) = result {
                                self.hold(records.into_iter().skip(appended), &error);
                            }
                        }
                    }
                }
                Ok(Work::Barrier(done)) => drop(done.send(())),
                Ok(Work::Stop) | Err(mpsc::RecvTimeoutError::Disconnected) => {
                    // A last chance for what is held, before `stop` counts it lost.
                    if self.current() == SpoolCondition::Writable {
                        self.retry_held();
                    }
                    return;
                }
                Err(mpsc::RecvTimeoutError::Timeout) => self.check(),
            }
        }
    }

    /// A spool directory deleted or replaced since the last look: what it held is counted
    /// lost, and appends go on in the re-created one.
    fn check_dir(&self) -> Result<(), spool::Error> {
        match self.spool.check_dir() {
            Ok(None) => Ok(()),
            Ok(Some(lost)) => {
                self.metrics
                    .lose_unknown(lost, &"the spool directory was deleted or replaced");
                Ok(())
            }
            Err(error) => {
                tracing::error!(%error, "the spool directory is gone and cannot be re-created");
                Err(error)
            }
        }
    }

    /// Appends `records` in order; on failure, how many were appended and the error.
    fn append(&self, records: &[spool::Record], from: From) -> Result<(), (usize, Error)> {
        if let Err(error) = self.check_dir() {
            self.set(SpoolCondition::Failing(error.to_string()));
            return Err((0, Error::Spool(error)));
        }
        let started = self.start.elapsed().as_millis() as u64 + 1;
        *self.busy_ids.lock().unwrap_or_else(|e| e.into_inner()) =
            records.iter().map(|r| r.message_id.clone()).collect();
        self.busy_since.store(started, Ordering::Relaxed);
        let mut result = Ok(());
        for (i, record) in records.iter().enumerate() {
            if let Err(error) = self.spool.append(record) {
                result = Err((i, error));
                break;
            }
        }
        self.busy_since.store(0, Ordering::Relaxed);
        self.busy_ids.lock().unwrap_or_else(|e| e.into_inner()).clear();
        let appended = result.as_ref().map_or_else(|(i, _)| *i, |()| records.len());
        let label = match from {
            From::Request => "request",
            From::Rescue => "rescue",
        };
        self.metrics.spooled(label, appended as u64);
        let condition = match &result {
            Ok(()) => SpoolCondition::Writable,
            Err((_, spool::Error::Full { .. })) => SpoolCondition::Full,
            // One record too large for a segment says nothing about the disk.
            Err((_, spool::Error::TooLarge(_))) => self.current(),
            Err((_, error)) => SpoolCondition::Failing(error.to_string()),
        };
        self.set(condition);
        result.map_err(|(i, error)| {
            let error = match error {
                spool::Error::Full { cap } => Error::SpoolFull { cap },
                other => Error::Spool(other),
            };
            (i, error)
        })
    }

    /// The held records, taken out.
    fn take_held(&self) -> Vec<spool::Record> {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        held.1 = 0;
        let records: Vec<spool::Record> = held.0.drain(..).collect();
        self.metrics.spool_held_records.set(0.0);
        records
    }

    /// Keeps rescued records the spool refused in memory, up to [`HELD_MAX_BYTES`], for the
    /// spool (once writable) or the drainer (once Kafka delivers); beyond it, for a record no
    /// segment can hold, or once closing, they are counted lost and named.
    fn hold(&self, records: impl Iterator<Item = spool::Record>, error: &Error) {
        let too_large = matches!(error, Error::Spool(spool::Error::TooLarge(_)));
        let closing = self.closing.load(Ordering::Acquire);
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        for record in records {
            let bytes = (record.key.len() + record.value.len()) as u64;
            if too_large || closing || held.1 + bytes > HELD_MAX_BYTES {
                self.metrics.lose(&record.message_id, error);
                continue;
            }
            held.1 += bytes;
            held.0.push_back(record);
        }
        if !held.0.is_empty() {
            tracing::warn!(records = held.0.len(), bytes = held.1, %error, "the spool refused rescued records: held in memory until the spool or Kafka takes them");
        }
        self.metrics.spool_held_records.set(held.0.len() as f64);
    }

    /// Appends the held records once the spool takes records again.
    fn retry_held(&self) {
        let records = self.take_held();
        if records.is_empty() {
            return;
        }
        if let Err((appended, error)) = self.append(&records, From::Rescue) {
            self.hold(records.into_iter().skip(appended), &error);
        }
    }

    /// While idle: is the file system writable, and (after a failure) does a probe write pass?
    fn check(&self) {
        let _ = self.check_dir();
        let current = self.current();
        let probe = matches!(current, SpoolCondition::Failing(_));
        let condition = match self.spool.check_writable(probe) {
            Err(error) => SpoolCondition::Failing(error.to_string()),
            Ok(()) if current == SpoolCondition::Full && self.nearly_full() => SpoolCondition::Full,
            Ok(()) => SpoolCondition::Writable,
        };
        if condition != current {
            match &condition {
                SpoolCondition::Writable => tracing::info!("the spool can be written again"),
                other => tracing::error!(condition = ?other, "the spool cannot be written"),
            }
        }
        self.set(condition);
        if self.current() == SpoolCondition::Writable {
            self.retry_held();
        }
    }

    /// Less room than a large request (1 MiB) or an eighth of a small spool.
    fn nearly_full(&self) -> bool {
        let max = self.spool.max_bytes();
        self.spool.bytes() + (max / 8).min(1 << 20) >= max
    }

    fn current(&self) -> SpoolCondition {
        self.condition.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn set(&self, condition: SpoolCondition) {
        let writable = condition == SpoolCondition::Writable && !self.nearly_full();
        self.metrics.spool_writable.set(if writable { 1.0 } else { 0.0 });
        *self.condition.lock().unwrap_or_else(|e| e.into_inner()) = condition;
    }

    fn publish(&self) {
        self.metrics.spool_bytes.set(self.spool.bytes() as f64);
        self.metrics.spool_records.set(self.spool.records() as f64);
    }
}
