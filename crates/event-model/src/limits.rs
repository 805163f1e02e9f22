//! Size and count limits applied while parsing and validating, with their defaults.

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

impl Limits {
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
