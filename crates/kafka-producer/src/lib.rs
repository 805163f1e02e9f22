//! The Kafka side of cdp-ingest: the event producer and topic administration.
//!
//! [`EventProducer`] carries the Go service's producer behaviour (brief S1-S9): one
//! librdkafka producer with a background polling thread, a non-blocking enqueue for ingest
//! records, awaited writes for DLQ records, and a delivery callback that hands every failure
//! to the rescue thread (retry topic, DLQ, or the local [`spool`]). A drainer thread sends
//! spooled records back; a producer that raises a fatal error is replaced.

mod admin;
mod error;
mod metrics;
mod producer;
mod rescue;
pub mod retry;

pub use admin::{ensure_topics, fetch_topics};
pub use error::Error;
pub use producer::{Ack, Closed, EventProducer, ProducerConfig, Topics};
pub use rescue::DELIVERY_REJECTED;
pub use spool;
