//! Where a record whose delivery failed goes: one pure function of its error, the write that
//! failed and the producer's state, tested as a table listing every case.

use rdkafka::error::{KafkaError, RDKafkaErrorCode};

/// The kind of a delivery error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// No retry can fix it (too large, not authorised, invalid): the DLQ.
    Permanent,
    /// Taken back from a producer being replaced or closed (`Purge*`, `Fatal`): sent again.
    Purged,
    /// Anything else (timeouts, leaders moving, brokers down): a retry may succeed.
    Transient,
}

impl ErrorClass {
    /// The class of librdkafka's error.
    pub fn of(error: &KafkaError) -> Self {
        use RDKafkaErrorCode::*;
        match error.rdkafka_error_code() {
            Some(
                MessageSizeTooLarge
                | InvalidMessage
                | InvalidMessageSize
                | InvalidRecord
                | InvalidTopic
                | InvalidRequiredAcks
                | UnsupportedForMessageFormat
                | TopicAuthorizationFailed
                | ClusterAuthorizationFailed
                | BadMessage
                // The broker's verdict on the record itself: sending it again cannot change
                // it (Kafka protocol error codes 32, 18, 44).
                | InvalidTimestamp
                | MessageBatchTooLarge
                | PolicyViolation,
            ) => ErrorClass::Permanent,
            Some(Fatal | PurgeQueue | PurgeInflight) => ErrorClass::Purged,
            _ => ErrorClass::Transient,
        }
    }
}

/// Which write failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// The ingest record itself.
    Ingest,
    /// Its retry-topic copy, or the spool append that was to take it.
    Rescue,
    /// Its DLQ copy, or a rejected event's DLQ envelope drained from the spool: the last
    /// stop. Refused for good there, a record is counted lost (once), never sent round again.
    Dlq,
}

/// The producer's state as far as routing cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conditions {
    /// A spool exists.
    pub spool: bool,
    /// Kafka is delivering ([`crate::Health::Delivering`]).
    pub delivering: bool,
    /// The producer is closing: nothing more is sent to Kafka.
    pub closing: bool,
}

/// Where a failed record goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destination {
    /// The ingest topic again, as it was.
    Ingest,
    /// The retry topic, with retry headers (retry-forwarder sends it back later).
    Retry,
    /// The DLQ, as `delivery_rejected`.
    Dlq,
    /// The local spool (drained to the ingest topic once Kafka delivers).
    Spool,
    /// Nowhere: counted in `cdp_<binary>_kafka_records_lost_total` and logged with its
    /// message id, in one place ([`crate::metrics::ProducerMetrics::lose`]).
    Lost,
}

impl Destination {
    /// The stage of a write to this destination: how its own failure is routed.
    pub fn stage(self) -> Stage {
        match self {
            Destination::Ingest => Stage::Ingest,
            Destination::Dlq => Stage::Dlq,
            Destination::Retry | Destination::Spool | Destination::Lost => Stage::Rescue,
        }
    }

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Destination::Ingest => "ingest",
            Destination::Retry => "retry",
            Destination::Dlq => "dlq",
            Destination::Spool => "spool",
            Destination::Lost => "lost",
        }
    }
}

/// Where a record goes after `class` of error at `stage`. When writing it there fails, the
/// record is routed again with the stage of that write ([`Destination::stage`]) and the class
/// of that write's error, which ends in the spool or [`Destination::Lost`]: a record refused
/// for good by the DLQ is lost, counted once, and never circles spool → drainer → producer.
pub fn route(class: ErrorClass, stage: Stage, c: Conditions) -> Destination {
    use Destination::*;
    let spool_or_lost = if c.spool { Spool } else { Lost };
    match (stage, class) {
        // Escalation: the DLQ refuses it too; the spool would send it round for ever.
        (Stage::Dlq, ErrorClass::Permanent) => Lost,
        _ if c.closing => spool_or_lost,
        (Stage::Rescue | Stage::Dlq, _) => spool_or_lost,
        (Stage::Ingest, ErrorClass::Permanent) => Dlq,
        // Kafka takes nothing now: the retry topic would fail the same way.
        (Stage::Ingest, ErrorClass::Purged | ErrorClass::Transient) if c.spool && !c.delivering => Spool,
        (Stage::Ingest, ErrorClass::Purged) => Ingest,
        (Stage::Ingest, ErrorClass::Transient) => Retry,
    }
}

/// Where a record goes when writing it to `to` failed with `class`: routed again with that
/// write's stage ([`Destination::stage`]); the same destination again (a purged enqueue to a
/// producer that failed, say, which could fail the same way for ever) ends on the rescue path
/// instead (spool or lost). Every chain of re-routes ends in a few steps (tested).
pub fn reroute(class: ErrorClass, to: Destination, c: Conditions) -> Destination {
    match route(class, to.stage(), c) {
        same if same == to => route(class, Stage::Rescue, c),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::Destination::*;
    use super::ErrorClass::*;
    use super::*;

    /// Whatever fails how often, a record's re-routes end in the spool or lost within three
    /// writes: no loop drainer → producer → spool, no unbounded recursion.
    #[test]
    fn every_chain_of_reroutes_ends() {
        for spool in [false, true] {
            for delivering in [false, true] {
                for closing in [false, true] {
                    let c = Conditions {
                        spool,
                        delivering,
                        closing,
                    };
                    for class in [Permanent, Purged, Transient] {
                        for stage in [Stage::Ingest, Stage::Rescue, Stage::Dlq] {
                            let mut to = route(class, stage, c);
                            let mut writes = 0;
                            while !matches!(to, Spool | Lost) {
                                writes += 1;
                                assert!(writes <= 3, "{class:?} at {stage:?} with {c:?} does not end");
                                to = reroute(class, to, c);
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn every_case() {
        let c = |spool, delivering, closing| Conditions {
            spool,
            delivering,
            closing,
        };
        let mut rows = Vec::new();
        #[rustfmt::skip]
        let expected = |stage: Stage, class: ErrorClass, c: Conditions| -> Destination {
            match (stage, class, c.spool, c.delivering, c.closing) {
                (Stage::Dlq, Permanent, _, _, _) => Lost,
                (_, _, true, _, true) => Spool,
                (_, _, false, _, true) => Lost,
                (Stage::Rescue | Stage::Dlq, _, true, _, _) => Spool,
                (Stage::Rescue | Stage::Dlq, _, false, _, _) => Lost,
                (Stage::Ingest, Permanent, _, _, _) => Dlq,
                (Stage::Ingest, Purged, true, false, _) => Spool,
                (Stage::Ingest, Purged, _, _, _) => Ingest,
                (Stage::Ingest, Transient, true, false, _) => Spool,
                (Stage::Ingest, Transient, _, _, _) => Retry,
            }
        };
        for stage in [Stage::Ingest, Stage::Rescue, Stage::Dlq] {
            for class in [Permanent, Purged, Transient] {
                for spool in [false, true] {
                    for delivering in [false, true] {
                        for closing in [false, true] {
                            let conditions = c(spool, delivering, closing);
                            rows.push((stage, class, conditions, expected(stage, class, conditions)));
                        }
                    }
                }
            }
        }
        assert_eq!(rows.len(), 72);
        for (stage, class, conditions, to) in rows {
            assert_eq!(
                route(class, stage, conditions),
                to,
                "{stage:?} {class:?} {conditions:?}"
            );
        }
    }

    #[test]
    fn error_classes() {
        use rdkafka::error::RDKafkaErrorCode as Code;
        let produce = |code| KafkaError::MessageProduction(code);
        assert_eq!(ErrorClass::of(&produce(Code::MessageSizeTooLarge)), Permanent);
        assert_eq!(
            ErrorClass::of(&produce(Code::TopicAuthorizationFailed)),
            Permanent
        );
        assert_eq!(ErrorClass::of(&produce(Code::InvalidTimestamp)), Permanent);
        assert_eq!(ErrorClass::of(&produce(Code::MessageBatchTooLarge)), Permanent);
        assert_eq!(ErrorClass::of(&produce(Code::PolicyViolation)), Permanent);
        assert_eq!(ErrorClass::of(&produce(Code::PurgeQueue)), Purged);
        assert_eq!(ErrorClass::of(&produce(Code::PurgeInflight)), Purged);
        assert_eq!(ErrorClass::of(&produce(Code::Fatal)), Purged);
        assert_eq!(ErrorClass::of(&produce(Code::MessageTimedOut)), Transient);
        assert_eq!(ErrorClass::of(&produce(Code::ProducerFenced)), Transient);
        assert_eq!(ErrorClass::of(&produce(Code::NotEnoughReplicas)), Transient);
    }
}
