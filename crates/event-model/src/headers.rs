//! The Kafka record header names every binary reads and writes (brief S5 for the ingest
//! record, S8 for the DLQ record), in one place: `ingest` writes them, `retry-forwarder` and
//! `dlq-replayer` read them back.

/// The source's workspace (ingest and retry records).
pub const WORKSPACE_ID: &str = "workspace_id";
/// The source (ingest and retry records).
pub const SOURCE_ID: &str = "source_id";
/// The event type: `track`, `identify`, ... (ingest and retry records).
pub const TYPE: &str = "type";
/// Why a record is on the DLQ ([`crate::DlqReason::as_str`]; DLQ records).
pub const REASON: &str = "reason";
/// The event's `messageId`, where a record's value does not carry it.
pub const MESSAGE_ID: &str = "message_id";
