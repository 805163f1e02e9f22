//! Whole-request admission in buffered mode: a request's events are all taken or none is.
//!
//! librdkafka's queue has no reservation: a batch enqueued one record at a time can find the
//! queue full half-way, after part of it was taken (and the client, getting a 503, sends the
//! whole batch again). So before enqueueing, a request reserves room for all its records here,
//! against the queue's record cap (`--kafka-queue-max-messages`) less what librdkafka holds
//! and what other requests have reserved; while no broker is reachable (its records go to the
//! spool) it reserves room in the spool instead. The reservation is released once the request
//! has enqueued (librdkafka's own count then covers its records).
//!
//! The producer counts every record it holds, from every writer (requests, the drainer, the
//! supervisor's re-routes, DLQ writes), with its bytes, at enqueue: those are checked against
//! both of librdkafka's caps. What still races it: the producer's own threads enqueue without
//! reserving, between this check and the request's enqueue, and librdkafka counts headers too.
//! Should librdkafka's queue fill half-way through a request all the same, the producer spools
//! the rest of it ([`kafka_producer::EventProducer::send_events`]): a 503 still means none of
//! the request was taken. `cdp_ingest_partial_admissions_total` counts the requests that were
//! split that way and still refused (the spool failing too).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use event_model::Accepted;
use kafka_producer::EventProducer;

/// Room reserved by requests being enqueued.
pub(crate) struct Admission {
    /// librdkafka's record cap (`queue.buffering.max.messages`).
    max_records: usize,
    /// librdkafka's byte cap (`queue.buffering.max.kbytes`), in bytes: one request alone
    /// over it could never be taken whole.
    max_bytes: u64,
    reserved_records: AtomicUsize,
    reserved_bytes: AtomicU64,
    reserved_spool_bytes: AtomicU64,
}

/// Bytes a spool frame adds to a record's key, value and message id (frame header, lengths,
/// the three header names and their source and type values are counted separately).
const SPOOL_FRAME_OVERHEAD: u64 = 96;

/// Bytes a DLQ envelope adds to its raw payload, at most for ordinary events: ids, reason,
/// field, timestamps, the client address, and the escaping of the payload's quotes (the
/// payload is a JSON string inside the envelope). An estimate, like the frame overhead: the
/// spool's own cap still holds, and a request it refuses half-way gets its 503.
const DLQ_ENVELOPE_OVERHEAD: u64 = 1024;

impl Admission {
    pub(crate) fn new(max_records: u32, max_kbytes: u32) -> Self {
        Admission {
            max_records: max_records as usize,
            max_bytes: u64::from(max_kbytes) * 1024,
            reserved_records: AtomicUsize::new(0),
            reserved_bytes: AtomicU64::new(0),
            reserved_spool_bytes: AtomicU64::new(0),
        }
    }

    /// Reserves room for all of `events` where they will go: librdkafka's queue while a
    /// broker is reachable (or without a spool), else the spool. `Err` when they do not all
    /// fit: the request is refused whole, with the producer's error for the 503.
    ///
    /// `dlq` is the count and bytes of the request's DLQ records, written first to the same
    /// queue: reserved with the events, so that a refusal here comes before any write.
    pub(crate) fn reserve<'a>(
        &'a self,
        producer: &EventProducer,
        events: &[Accepted],
        dlq: (usize, u64),
        workspace_id: &str,
        source_id: &str,
    ) -> Result<Reservation<'a>, kafka_producer::Error> {
        let event_bytes: u64 = events.iter().map(|e| (e.value.len() + e.key.len()) as u64).sum();
        let (records, bytes) = (events.len() + dlq.0, event_bytes + dlq.1);
        match producer.spool() {
            Some(spool) if producer.spools_events() => {
                let ids: u64 = events.iter().map(|e| e.message_id.len() as u64).sum();
                let per_record = SPOOL_FRAME_OVERHEAD + (workspace_id.len() + source_id.len()) as u64;
                // The DLQ envelopes are spooled too while Kafka is not delivering (their raw
                // payload, with room for the envelope's fields).
                let dlq_need = dlq.1 + (SPOOL_FRAME_OVERHEAD + DLQ_ENVELOPE_OVERHEAD) * dlq.0 as u64;
                let need = event_bytes + ids + per_record * events.len() as u64 + dlq_need;
                let fits = |reserved: u64| spool.bytes() + reserved + need <= spool.max_bytes();
                if !reserve_u64(&self.reserved_spool_bytes, need, fits) {
                    return Err(kafka_producer::Error::SpoolFull {
                        cap: spool.max_bytes(),
                    });
                }
                Ok(Reservation {
                    admission: self,
                    records: 0,
                    bytes: 0,
                    spool_bytes: need,
                })
            }
            _ => {
                // What the producer holds (every writer's records, counted at enqueue) counts
                // those this request's concurrent peers already enqueued under their
                // reservation twice: conservative, never over the caps.
                let (held, held_bytes) = (producer.in_flight(), producer.in_flight_bytes());
                let fits_records = |reserved: usize| held + reserved + records <= self.max_records;
                if bytes > self.max_bytes || !reserve_usize(&self.reserved_records, records, fits_records) {
                    return Err(kafka_producer::Error::QueueFull);
                }
                let fits_bytes = |reserved: u64| held_bytes + reserved + bytes <= self.max_bytes;
                if !reserve_u64(&self.reserved_bytes, bytes, fits_bytes) {
                    self.reserved_records.fetch_sub(records, Ordering::AcqRel);
                    return Err(kafka_producer::Error::QueueFull);
                }
                Ok(Reservation {
                    admission: self,
                    records,
                    bytes,
                    spool_bytes: 0,
                })
            }
        }
    }
}

impl Admission {
    /// True when [`Admission::reserve`] would take one more small event for librdkafka's
    /// queue now: what `/readyz` reports as the queue's room (the spool's is the producer's
    /// [`kafka_producer::Status`]).
    pub(crate) fn has_room(&self, producer: &EventProducer) -> bool {
        let records = producer.in_flight() + self.reserved_records.load(Ordering::Acquire);
        let bytes = producer.in_flight_bytes() + self.reserved_bytes.load(Ordering::Acquire);
        records < self.max_records && bytes + SMALL_EVENT_BYTES <= self.max_bytes
    }
}

/// What [`Admission::has_room`] asks room for: an ordinary event's key and value.
const SMALL_EVENT_BYTES: u64 = 1024;

/// Room held for one request; released when dropped (after it enqueued).
pub(crate) struct Reservation<'a> {
    admission: &'a Admission,
    records: usize,
    bytes: u64,
    spool_bytes: u64,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        let a = self.admission;
        a.reserved_records.fetch_sub(self.records, Ordering::AcqRel);
        a.reserved_bytes.fetch_sub(self.bytes, Ordering::AcqRel);
        a.reserved_spool_bytes
            .fetch_sub(self.spool_bytes, Ordering::AcqRel);
    }
}

fn reserve_usize(counter: &AtomicUsize, n: usize, fits: impl Fn(usize) -> bool) -> bool {
    counter
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |reserved| {
            fits(reserved).then_some(reserved + n)
        })
        .is_ok()
}

fn reserve_u64(counter: &AtomicU64, n: u64, fits: impl Fn(u64) -> bool) -> bool {
    counter
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |reserved| {
            fits(reserved).then_some(reserved + n)
        })
        .is_ok()
}
