//! `retry-forwarder` as a library: brings records from the retry topic back to their target
//! topic once their not-before time has passed.
//!
//! [`run`] consumes the retry topic in a consumer group. Each record is held, with its
//! partition paused, until its `retry_not_before` time; then it is produced to its
//! `retry_target` topic and, once the broker acknowledged it, its offset is stored for the
//! next commit (at least once: a crash replays, never skips). A forward that fails goes back to
//! the retry topic with the attempt raised and an exponential, jittered backoff; past the
//! maximum attempts, or without valid retry headers, the record goes to the DLQ with reason
//! `retries_exhausted` or `invalid_retry_record` ([`event_model::DlqReason`]). Other partitions keep flowing meanwhile.

mod config;
mod error;
mod job;
mod metrics;
mod run;

pub use config::Config;
pub use error::Error;
pub use run::run;
