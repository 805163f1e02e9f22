//! The Segment Tracking API event model: parsing, validation, enrichment and serialisation.
//!
//! This crate does no I/O. It turns request bytes into [`Accepted`] events (with the record
//! key and the ingest-topic value) or [`Rejection`]s (a [`Reason`] from a closed set and the
//! offending field as a JSON Pointer), and it serialises the DLQ envelope.
//!
//! The flow used by the HTTP front:
//!
//! 1. [`parse_body`] parses the body of one endpoint into [`Parsed`] items and the
//!    batch-level `context`, `integrations` and `sentAt` that apply to them;
//! 2. the caller authenticates the write key ([`Parsed::write_key`] or HTTP Basic auth);
//! 3. [`normalize`] validates and enriches each item with a [`Received`] context.

mod dlq;
mod normalize;
mod parse;
mod reject;
mod time;

pub use dlq::{DlqEnvelope, MAX_RAW_PAYLOAD_BYTES};
pub use normalize::{normalize, Accepted, EventType, Received};
pub use parse::{message_id_of, parse_body, parse_event, BatchFields, Endpoint, Parsed};
pub use reject::{Reason, Rejection};

/// The JSON Schema of the ingest-topic record value, for downstream teams.
pub const INGEST_EVENT_SCHEMA: &str = include_str!("../schema/ingest-event.schema.json");

/// Size and count limits applied while parsing and validating.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest serialised event, in bytes.
    pub max_event_bytes: usize,
    /// Most events in one batch.
    pub max_batch_events: usize,
    /// Deepest nesting of JSON objects and arrays.
    pub max_depth: usize,
    /// Most keys in one JSON object (checked before parsing).
    pub max_object_keys: usize,
    /// Most keys in all the objects of one body (checked before parsing): bounds the parser's
    /// allocations whatever `--max-request-bytes` is.
    pub max_total_keys: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_event_bytes: 32 * 1024,
            max_batch_events: 2_500,
            max_depth: 64,
            max_object_keys: 1_000,
            max_total_keys: 200_000,
        }
    }
}
