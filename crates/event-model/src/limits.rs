//! Size and count limits applied while parsing and validating, with their defaults.

/// Size and count limits applied while parsing and validating.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest event, in bytes of its JSON as the client sent it ([`crate::Item::sent_bytes`]:
    /// a single-event body, or a batch item's bytes in the body). Segment's documented limit
    /// (HTTP Tracking API, "Max request size": 32 KB per event), measured as the libraries
    /// measure it before sending. The record ingest writes for an event may be larger, by at
    /// most [`RECORD_ALLOWANCE`] ([`Limits::max_record_bytes`]).
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

/// Bytes an event's ingest record may exceed [`Limits::max_event_bytes`] by: room for what
/// ingest adds to an event, so that an event within the client's limit always fits in its
/// record. What ingest adds is bounded: a generated `message_id` (36 characters), `type`,
/// `workspace_id` and `source_id` (each at most [`MAX_ID_BYTES`]), `received_at`,
/// `timestamp`, `original_timestamp` and `sent_at` in their full form (24 characters each),
/// `context.ip` (at most 45), one character per renamed key (`messageId` to `message_id`,
/// ...), and up to five `ignored` notes (each value at most 1 KiB,
/// `batch::MAX_IGNORED_VALUE_BYTES`): about 6.5 KiB at worst. The rest of the allowance is
/// for a batch's `context` and `integrations`, which are merged into each of its events: an
/// event whose record is over [`Limits::max_record_bytes`] all the same (a large batch-level
/// context) is refused as `too_large`, naming both sizes.
pub const RECORD_ALLOWANCE: usize = 8 * 1024;

/// Longest `workspace_id` or `source_id` a sources file may give, in bytes: bounds what
/// ingest adds to each record ([`RECORD_ALLOWANCE`]).
pub const MAX_ID_BYTES: usize = 256;

impl Limits {
    /// Largest ingest record value for one event: [`Limits::max_event_bytes`] plus
    /// [`RECORD_ALLOWANCE`].
    pub const fn max_record_bytes(&self) -> usize {
        self.max_event_bytes + RECORD_ALLOWANCE
    }

    /// The defaults, in one place: [`Limits::default`] and the defaults of the flags
    /// `--max-event-bytes` and `--max-batch-events` (`ops::LimitArgs`) read them. The README's
    /// limits table lists them.
    pub const DEFAULT: Limits = Limits {
        max_event_bytes: 32 * 1024,
        max_batch_events: 2_500,
        max_depth: 64,
        max_object_keys: 1_000,
        max_total_keys: 200_000,
    };
}

impl Default for Limits {
    /// [`Limits::DEFAULT`].
    fn default() -> Self {
        Limits::DEFAULT
    }
}
