//! Rejected events to the DLQ (S8): one envelope per event, each landed (in buffered mode
//! acknowledged or spooled bound for the DLQ; in acked mode acknowledged) before the client is
//! answered; a body rejected whole before its source is known is only reported.

use std::net::IpAddr;

use event_model::{DlqEnvelope, DlqReason, Rejection};

use crate::config::DeliveryMode;
use crate::report;
use crate::sources::Source;
use crate::state::State;
use crate::Error;

/// An event the validator rejected.
pub(crate) struct RejectedEvent {
    pub index: usize,
    pub message_id: String,
    pub event_type: &'static str,
    pub rejection: Rejection,
    pub raw: String,
    /// `raw` is a cut of the event (`raw_payload_truncated` in the envelope).
    pub cut: bool,
}

/// Where and when a request arrived, recorded in its DLQ envelopes for faithful replays.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Origin {
    pub received_at: chrono::DateTime<chrono::Utc>,
    pub client_ip: IpAddr,
    /// The type a single-event endpoint's path sets.
    pub path_type: Option<&'static str>,
}

/// A body rejected whole. Written to the DLQ when the source is known from the header;
/// without a source there is no workspace to file it under, so it is only refused and logged.
pub(crate) async fn reject_body(
    state: &State,
    source: Option<&Source>,
    origin: &Origin,
    rejection: Rejection,
    body: &[u8],
) -> Error {
    let message_id = new_message_id();
    if let Some(source) = source {
        let rejected = RejectedEvent {
            index: 0,
            message_id: message_id.clone(),
            event_type: "unknown",
            rejection,
            raw: String::from_utf8_lossy(body).into_owned(),
            cut: false,
        };
        if let Err(e) = write_dlq(state, source, origin, std::slice::from_ref(&rejected)).await {
            return e;
        }
        return Error::Rejected {
            message_id,
            rejection: rejected.rejection,
        };
    }
    report::rejected_unauthenticated(&message_id, &rejection);
    Error::Rejected {
        message_id,
        rejection,
    }
}

/// Writes rejected events to the DLQ and waits until each has landed (S8): in buffered mode
/// acknowledged or spooled bound for the DLQ ([`kafka_producer::EventProducer::land_dlq`]), in
/// acked mode acknowledged by the broker.
pub(crate) async fn write_dlq(
    state: &State,
    source: &Source,
    origin: &Origin,
    rejected: &[RejectedEvent],
) -> Result<(), Error> {
    let envelopes: Vec<DlqEnvelope> = rejected.iter().map(|r| envelope(source, origin, r)).collect();
    if state.delivery_mode == DeliveryMode::Buffered {
        return match state.producer.land_dlq(&envelopes).await {
            Ok(()) => {
                for r in rejected {
                    report::rejected(r.event_type, &r.message_id, &r.rejection);
                }
                Ok(())
            }
            Err(error) => {
                for r in rejected {
                    report::dlq_failed(r.event_type, &r.message_id, &r.rejection, &error);
                }
                Err(Error::Unavailable {
                    accepted: 0,
                    source: error,
                })
            }
        };
    }
    let acks: Vec<_> = envelopes.iter().map(|e| state.producer.send_dlq(e)).collect();
    let mut failure = None;
    for (r, ack) in rejected.iter().zip(acks) {
        let result = match ack {
            Ok(ack) => ack.wait().await,
            Err(e) => Err(e),
        };
        match result {
            Ok(()) => report::rejected(r.event_type, &r.message_id, &r.rejection),
            Err(error) => {
                report::dlq_failed(r.event_type, &r.message_id, &r.rejection, &error);
                failure.get_or_insert(error);
            }
        }
    }
    match failure {
        None => Ok(()),
        Some(source) => Err(Error::Unavailable { accepted: 0, source }),
    }
}

/// The DLQ envelope of a rejected event, with where and when it arrived.
fn envelope(source: &Source, origin: &Origin, r: &RejectedEvent) -> DlqEnvelope {
    let mut envelope = DlqEnvelope::new(
        &source.workspace_id,
        &source.source_id,
        &r.message_id,
        DlqReason::Rejected(r.rejection.reason),
        &r.rejection.field,
        r.raw.clone(),
    );
    envelope.raw_payload_truncated |= r.cut;
    envelope.received_at = Some(
        origin
            .received_at
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
    );
    envelope.client_ip = Some(origin.client_ip.to_string());
    envelope.event_type = origin.path_type.map(str::to_string);
    envelope
}

/// A fresh message id for an event that has none.
pub(crate) fn new_message_id() -> String {
    uuid::Uuid::new_v4().to_string()
}
