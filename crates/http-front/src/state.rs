//! [`State`]: what every request needs, shared by all connections; one per process.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use event_model::Limits;
use ipnet::IpNet;
use kafka_producer::EventProducer;

use crate::admission::Admission;
use crate::body::BodyLimits;
use crate::config::DeliveryMode;
use crate::decoders::Decoders;
use crate::reload::LiveSources;
use crate::settings::PublicUrl;

/// What every request needs, shared by all connections.
pub(crate) struct State {
    pub producer: EventProducer,
    pub sources: Arc<LiveSources>,
    pub limits: Limits,
    /// `--max-request-output-bytes`: most bytes a request's events may become.
    pub max_output_bytes: usize,
    /// Room reserved by requests being enqueued (buffered mode).
    pub admission: Admission,
    pub body_limits: BodyLimits,
    /// `--max-header-bytes`: the largest request head answered; larger: 431.
    pub max_header_bytes: usize,
    pub trusted_proxies: Vec<IpNet>,
    /// Where clients reach this edge, for the settings endpoint (`--public-url`).
    pub public_url: Option<PublicUrl>,
    pub retry_after_secs: u32,
    pub delivery_mode: DeliveryMode,
    /// Set at shutdown: `/readyz` answers 503.
    pub shutting_down: AtomicBool,
    /// Set when the drain time is over: requests still running enqueue nothing (503), since
    /// the producer is being flushed.
    pub closed: AtomicBool,
    /// The threads that decode large bodies off the runtime workers.
    pub decoders: Decoders,
}
