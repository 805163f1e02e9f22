//! The Kafka side of cdp-ingest: the event producer and topic administration.
//!
//! [`EventProducer`] carries the Go service's producer behaviour (brief S1-S9): one
//! librdkafka producer with a background polling thread, a non-blocking enqueue for ingest
//! records, awaited writes for DLQ records, and a delivery callback that hands every failure
//! to the rescue thread (retry topic, DLQ, or the local [`spool`]). A drainer thread sends
//! spooled records back; a producer that raises a fatal error is replaced.
//!
//! [`KafkaSettings`] (bootstrap servers, TLS, SASL, other librdkafka properties) configures
//! every client of the workspace; [`ConnectionWatch`] turns librdkafka's authentication and TLS
//! errors into messages naming the cause, for the start-up ping, logs, a counter and readiness.

mod admin;
mod callbacks;
mod client;
mod config;
mod core;
mod drainer;
mod error;
mod health;
mod metrics;
mod outcome;
mod partitions;
mod patience;
mod producer;
mod readiness;
mod record;
pub mod retry;
mod route;
mod settings;
mod spool_writer;
mod supervisor;
mod watch;
mod window;

pub use admin::{ensure_topics, fetch_topics};
pub use config::{defaults, ProducerConfig, Topics};
pub use error::Error;
pub use health::{Event, Health, Step, Why};
pub use outcome::{Ack, Closed, Refused, Unsendable};
pub use producer::EventProducer;
pub use readiness::{NotReady, SpoolCondition, Status};
pub use route::{reroute, route, Conditions, Destination, ErrorClass, Stage};
pub use settings::{owned_property, KafkaSettings, Oidc, SaslMechanism, Secret, SecurityProtocol};
pub use spool;
pub use watch::{log_client_error, ConnectFailure, ConnectionWatch, WatchedContext};

/// Maps librdkafka's refusal to create a client to [`Error`], without the value of a secret
/// property (rdkafka's own message repeats the value).
pub fn config_error(error: rdkafka::error::KafkaError) -> Error {
    settings::create_error(error)
}
