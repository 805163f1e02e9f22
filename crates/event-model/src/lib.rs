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

mod batch;
mod dlq;
mod event_type;
pub mod headers;
mod limits;
mod normalize;
mod parse;
mod reject;
mod time;

pub use batch::BatchFields;
pub use dlq::{DlqEnvelope, DlqReason, MAX_RAW_PAYLOAD_BYTES};
pub use event_type::EventType;
pub use limits::{Limits, MAX_ID_BYTES, RECORD_ALLOWANCE};
pub use normalize::{normalize, Accepted, Received};
pub use parse::{message_id_of, parse_body, parse_event, Endpoint, Item, Parsed};
pub use reject::{Reason, Rejection};

/// The JSON Schema of the ingest-topic record value, for downstream teams.
pub const INGEST_EVENT_SCHEMA: &str = include_str!("../schema/ingest-event.schema.json");
