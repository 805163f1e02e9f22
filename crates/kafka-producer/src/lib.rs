//! The Kafka side of cdp-ingest: the event producer and topic administration.
//!
//! [`EventProducer`] carries the Go service's producer behaviour (brief S1-S9): one
//! librdkafka producer with a background polling thread, a non-blocking enqueue for ingest
//! records, awaited writes for DLQ records, and a delivery callback that logs and counts
//! every failure.

mod admin;
mod error;
mod metrics;
mod producer;
mod rescue;
pub mod retry;

pub use admin::{ensure_topics, fetch_topics};
pub use error::Error;
pub use producer::{Ack, Closed, EventProducer, ProducerConfig, Sent, Topics};
pub use rescue::DELIVERY_REJECTED;
pub use spool;
