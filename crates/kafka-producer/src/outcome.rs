//! What the producer's calls give back: [`Ack`] (an awaited write's acknowledgement),
//! [`Refused`] (a request not taken, and how much of it was), [`Closed`] (what a close did).

use std::time::Duration;

use rdkafka::error::KafkaError;
use tokio::sync::oneshot;

use crate::Error;

/// The pending acknowledgement of an awaited write (DLQ records, acked and replayed events).
pub struct Ack {
    rx: oneshot::Receiver<Result<(), KafkaError>>,
    topic: String,
    timeout: Duration,
    deadline: tokio::time::Instant,
}

impl Ack {
    /// The acknowledgement of a write to `topic` enqueued now, awaited for up to `timeout`;
    /// hand the sender to the record's delivery report.
    pub(crate) fn new(topic: &str, timeout: Duration) -> (oneshot::Sender<Result<(), KafkaError>>, Ack) {
        let (tx, rx) = oneshot::channel();
        let ack = Ack {
            rx,
            topic: topic.to_string(),
            timeout,
            deadline: tokio::time::Instant::now() + timeout,
        };
        (tx, ack)
    }

    /// Waits for the broker's acknowledgement, until the DLQ timeout after the enqueue.
    pub async fn wait(self) -> Result<(), Error> {
        let topic = self.topic;
        match tokio::time::timeout_at(self.deadline, self.rx).await {
            Ok(Ok(Ok(()))) => Ok(()),
            Ok(Ok(Err(source))) => Err(Error::Delivery { topic, source }),
            // The sender is dropped only if librdkafka discarded the record without a report.
            Ok(Err(_)) => Err(Error::Delivery {
                topic,
                source: KafkaError::Canceled,
            }),
            Err(_) => Err(Error::Timeout {
                topic,
                timeout: self.timeout,
            }),
        }
    }
}

/// What [`EventProducer::close`] did with the records it held.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Closed {
    /// Records not acknowledged within the grace period.
    pub unflushed: usize,
    /// Records written to the spool during the close (the unflushed ones, when there is a spool).
    pub spooled: u64,
    /// Records lost during the close (the unflushed ones, without a spool).
    pub lost: u64,
}

/// The events of a request Kafka can never take (librdkafka refused them at enqueue for good:
/// larger than `message.max.bytes`, say), skipped while the rest were taken: each is the
/// caller's to reject alone (a 4xx item and a DLQ envelope), never the request's 503 that a
/// retry would repeat forever ([`crate::Error::is_unsendable`]).
#[derive(Debug, Default)]
pub struct Unsendable {
    /// Each skipped event's index in the request's events, with the error.
    pub events: Vec<(usize, Error)>,
}

/// A request's events were not all taken.
#[derive(Debug)]
pub struct Refused {
    /// How many, from the first, were taken (and must not be counted as refused), less the
    /// [`Refused::unsendable`] ones among them.
    pub taken: usize,
    /// Why the rest were not.
    pub error: Error,
    /// Events among the first `taken` that Kafka can never take, skipped: not taken either.
    pub unsendable: Unsendable,
}
