//! The ingest HTTP edge: Segment-compatible endpoints in front of the Kafka producer.
//!
//! [`run`] is the whole service: it connects the producer (start-up ping, S3), serves HTTP on
//! the given listener until `shutdown` resolves, then drains requests and flushes the producer.
//!
//! - [`config`]: every flag, with its `CDP_*` variable;
//! - [`sources`]: the sources file, write key to workspace and source; `reload`: the sources
//!   in force, re-read when the file changes and on SIGHUP;
//! - `route`: which endpoint a method and path name (every path the SDKs use);
//! - `auth`: where the write key is found, and which place wins;
//! - `body`: reading bodies with limits, timeouts and gzip;
//! - `handler`: routing, probes, CORS; `ingest`: auth, validation, DLQ and produce;
//! - `carried`: a request runs to its end even when its client goes away (S6);
//! - `decoders`: the threads that decode large bodies off the runtime workers;
//! - `admission`: whole-request admission (room reserved before enqueueing);
//! - `logs`: refusal logs rate-limited per reason;
//! - `pixel`: tracking pixels' events and their GIF;
//! - [`settings`]: the analytics.js settings endpoint;
//! - `error`: the crate's error type and its one mapping to HTTP status;
//! - `server`: the open-file limit, the accept loop and graceful shutdown.

pub mod config;
pub mod settings;
pub mod sources;

mod admission;
mod auth;
mod body;
mod carried;
mod client_ip;
mod decoders;
mod dlq;
mod error;
mod handler;
mod ingest;
mod logs;
mod metrics;
mod pixel;
mod reload;
mod report;
mod route;
mod server;
mod state;

pub use config::Config;
pub use error::Error;
pub use server::run;
