//! `dlq-replayer` as a library: re-validates dead letters with today's event model and replays
//! the ones that now pass.
//!
//! [`run`] reads the DLQ topic, keeps the records that match the [`Filters`], re-validates each
//! `raw_payload` with the same limits as ingest and produces the events that pass to the ingest
//! topic, with their original `message_id`, workspace, source and receipt time, the same key and
//! headers as ingest, and awaits the acknowledgement before storing the offset (at least once).
//! Records that still fail are counted by reason, and parked when a park topic is set.

mod config;
mod judge;
mod metrics;
mod run;

pub use config::Config;
pub use judge::{judge, Filters, Verdict};
pub use run::{run, Error, Summary};
