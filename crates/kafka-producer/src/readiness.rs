//! Readiness as "an event sent now would be taken": a pure function of the producer's
//! [`Status`], tested as a table. `/readyz` shows the [`NotReady`] cause.

use std::fmt;

use crate::health::{Health, Why};
use crate::ConnectFailure;

/// Whether the spool can take records now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SpoolCondition {
    /// Appends succeed.
    Writable,
    /// The spool holds `--spool-max-bytes` (or nearly: less than one large request's room).
    Full,
    /// The file system refuses writes: full, read-only, I/O errors. The OS error, as text.
    Failing(String),
    /// An append has been running longer than the spool timeout (a frozen or hung disk).
    Stalled,
}

/// What readiness is derived from: a snapshot of the producer.
#[derive(Debug, Clone)]
pub struct Status {
    /// The producer's state.
    pub health: Health,
    /// The spool's condition; `None` without a spool.
    pub spool: Option<SpoolCondition>,
    /// librdkafka's queue refused a record in the last second, or (filled in by the caller)
    /// its admission has no room for one more.
    pub queue_full: bool,
    /// The spool holds records new buffered events must not overtake: they are spooled
    /// behind them even while Kafka delivers.
    pub backlog: bool,
    /// The spool a previous process left is not drained yet (shown, not a cause: its events
    /// are taken, spooled behind it).
    pub recovering: bool,
    /// Started degraded ([`crate::EventProducer::connect`]) and Kafka has not delivered yet.
    pub degraded_start: bool,
    /// The DLQ topic does not acknowledge: envelopes go to the spool (shown, not a cause).
    pub dlq_failing: bool,
    /// The brokers refuse our credentials or certificates.
    pub authentication_failure: Option<ConnectFailure>,
    /// Partitions without a reachable leader, as `topic/partition` (shown, not a cause: the
    /// events bound for them wait in librdkafka, the others deliver).
    pub failing_partitions: Vec<String>,
    /// Configured topics the cluster says do not exist (shown, not a cause: the records bound
    /// for them fail and are routed as any failed record is).
    pub missing_topics: Vec<String>,
}

/// Why an event sent now would not be taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotReady {
    /// The producer is closed.
    Closed,
    /// The producer is being replaced.
    Rebuilding(Why),
    /// The brokers refuse our credentials or certificates, and no spool takes events instead.
    AuthenticationFailing,
    /// librdkafka's queue is full.
    QueueFull,
    /// The spool is full.
    SpoolFull,
    /// The spool's file system refuses writes.
    SpoolFailing(String),
    /// The spool's disk does not answer.
    SpoolStalled,
    /// Kafka takes nothing and no spool takes events instead.
    Unreachable(Why),
}

impl Status {
    /// Why an event sent now would not be taken; `None` when it would: the same decision a
    /// request's admission makes. `spooling`: buffered mode, where events go to the spool while
    /// Kafka is not delivering or a spool backlog drains; then the spool's condition decides,
    /// and Kafka's (unreachable, refusing the credentials) does not. Else (acked mode, or no
    /// spool) Kafka must be delivering.
    pub fn not_ready(&self, spooling: bool) -> Option<NotReady> {
        let spooling = spooling && self.spool.is_some();
        match self.health {
            Health::Closed => return Some(NotReady::Closed),
            Health::Rebuilding(why) => return Some(NotReady::Rebuilding(why)),
            _ => {}
        }
        let to_spool = spooling && (!self.health.is_delivering() || self.backlog);
        if to_spool {
            return match &self.spool {
                Some(SpoolCondition::Full) => Some(NotReady::SpoolFull),
                Some(SpoolCondition::Failing(e)) => Some(NotReady::SpoolFailing(e.clone())),
                Some(SpoolCondition::Stalled) => Some(NotReady::SpoolStalled),
                _ => None,
            };
        }
        if self.authentication_failure.is_some() && !spooling {
            return Some(NotReady::AuthenticationFailing);
        }
        if self.queue_full && self.health.is_delivering() {
            return Some(NotReady::QueueFull);
        }
        match self.health {
            Health::Unreachable(why) => Some(NotReady::Unreachable(why)),
            _ => None,
        }
    }
}

impl fmt::Display for NotReady {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NotReady::Closed => f.write_str("shutting down"),
            NotReady::Rebuilding(Why::Fatal) => {
                f.write_str("replacing the Kafka producer after a fatal error")
            }
            NotReady::Rebuilding(Why::Failing) => {
                f.write_str("replacing the Kafka producer: it failed every record")
            }
            NotReady::Rebuilding(_) => f.write_str("replacing the Kafka producer"),
            NotReady::AuthenticationFailing => f.write_str("Kafka authentication failing"),
            NotReady::QueueFull => f.write_str("the producer queue is full"),
            NotReady::SpoolFull => f.write_str("the local spool is full"),
            NotReady::SpoolFailing(error) => write!(f, "the local spool cannot be written: {error}"),
            NotReady::SpoolStalled => f.write_str("the local spool's disk is not answering"),
            NotReady::Unreachable(Why::Stalled) => {
                f.write_str("Kafka is not acknowledging records (a hung broker?)")
            }
            NotReady::Unreachable(_) => f.write_str("no Kafka broker reachable"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Health::*;
    use SpoolCondition::*;

    fn status(health: Health, spool: Option<SpoolCondition>) -> Status {
        Status {
            health,
            spool,
            queue_full: false,
            backlog: false,
            recovering: false,
            degraded_start: false,
            dlq_failing: false,
            authentication_failure: None,
            failing_partitions: Vec::new(),
            missing_topics: Vec::new(),
        }
    }

    #[test]
    fn readiness_table() {
        let down = Unreachable(Why::BrokersDown);
        let failing = || Some(Failing("No space left on device".into()));
        let sasl = || {
            Some(crate::ConnectFailure::Sasl {
                mechanism: None,
                principal: Some("ingest".into()),
                reason: "SASL authentication error".into(),
            })
        };
        let backlog = |status: Status| Status {
            backlog: true,
            ..status
        };
        #[rustfmt::skip]
        let table: Vec<(Status, bool, Option<NotReady>)> = vec![
            // status, buffered mode, not ready
            (status(Delivering, Some(Writable)), true, None),
            (status(Delivering, Some(Writable)), false, None),
            (status(down, Some(Writable)), true, None),
            (status(down, Some(Writable)), false, Some(NotReady::Unreachable(Why::BrokersDown))),
            (status(down, None), true, Some(NotReady::Unreachable(Why::BrokersDown))),
            (status(Unreachable(Why::Stalled), Some(Writable)), false, Some(NotReady::Unreachable(Why::Stalled))),
            (status(down, Some(Full)), true, Some(NotReady::SpoolFull)),
            (status(down, failing()), true, Some(NotReady::SpoolFailing("No space left on device".into()))),
            // Kafka delivering takes the events: the spool's condition matters only for what
            // goes to it.
            (status(Delivering, failing()), true, None),
            (backlog(status(Delivering, failing())), true, Some(NotReady::SpoolFailing("No space left on device".into()))),
            (status(Delivering, failing()), false, None),
            (status(down, Some(Stalled)), true, Some(NotReady::SpoolStalled)),
            (status(Delivering, Some(Stalled)), true, None),
            (backlog(status(Delivering, Some(Stalled))), true, Some(NotReady::SpoolStalled)),
            (backlog(status(Delivering, Some(Full))), true, Some(NotReady::SpoolFull)),
            (status(Rebuilding(Why::Failing), Some(Writable)), true, Some(NotReady::Rebuilding(Why::Failing))),
            (status(Rebuilding(Why::Fatal), Some(Writable)), false, Some(NotReady::Rebuilding(Why::Fatal))),
            (status(Closed, Some(Writable)), true, Some(NotReady::Closed)),
            (Status { queue_full: true, ..status(Delivering, Some(Writable)) }, true, Some(NotReady::QueueFull)),
            (Status { queue_full: true, ..status(Delivering, Some(Writable)) }, false, Some(NotReady::QueueFull)),
            (Status { queue_full: true, ..status(down, Some(Writable)) }, true, None),
            // A previous process's spool draining: new events are spooled behind it.
            (Status { recovering: true, ..backlog(status(Delivering, Some(Writable))) }, true, None),
            // Kafka refusing the credentials while the spool takes every event.
            (Status { authentication_failure: sasl(), ..status(down, Some(Writable)) }, true, None),
            (Status { authentication_failure: sasl(), ..status(down, Some(Writable)) }, false, Some(NotReady::AuthenticationFailing)),
            (Status { authentication_failure: sasl(), ..status(down, Some(Full)) }, true, Some(NotReady::SpoolFull)),
            (Status { authentication_failure: sasl(), ..status(Delivering, None) }, true, Some(NotReady::AuthenticationFailing)),
            // Started degraded: the spool takes events.
            (Status { degraded_start: true, recovering: true, ..backlog(status(down, Some(Writable))) }, true, None),
            // One partition failing: the others deliver.
            (Status { failing_partitions: vec!["in/2".into()], ..status(Delivering, Some(Writable)) }, true, None),
            (Status { failing_partitions: vec!["in/2".into()], ..status(Delivering, None) }, false, None),
            // A missing topic is shown, not a cause: its records fail and are routed.
            (Status { missing_topics: vec!["dlq".into()], ..status(Delivering, Some(Writable)) }, true, None),
            (Status { missing_topics: vec!["in".into()], ..status(Delivering, None) }, false, None),
        ];
        for (status, spooling, expected) in table {
            assert_eq!(
                status.not_ready(spooling),
                expected,
                "{status:?}, buffered: {spooling}"
            );
        }
    }
}
