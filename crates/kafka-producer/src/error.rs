//! The crate's one error type.

use std::path::PathBuf;
use std::time::Duration;

use rdkafka::error::KafkaError;

/// Everything that can go wrong talking to Kafka.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// librdkafka refused the configuration.
    #[error("cannot create the Kafka client: {0}")]
    Create(#[source] KafkaError),
    /// The Kafka settings do not fit together, or librdkafka refused one (never shows a secret).
    #[error("Kafka settings: {0}")]
    Settings(String),
    /// A secret file (password, key passphrase, client secret) cannot be used.
    #[error("cannot read {what} {}: {reason}", path.display())]
    SecretFile {
        /// The flag naming the file.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why (never its contents).
        reason: String,
    },
    /// The brokers refused the connection: authentication, TLS, or a protocol mismatch.
    #[error("cannot connect to the Kafka cluster at {brokers}: {failure}")]
    Connect {
        /// The bootstrap servers tried.
        brokers: String,
        /// What went wrong, naming the flag to check.
        failure: crate::ConnectFailure,
    },
    /// The start-up metadata request failed.
    #[error("cannot reach the Kafka cluster at {brokers}: {source}")]
    Unreachable {
        /// The bootstrap servers tried.
        brokers: String,
        /// librdkafka's error.
        #[source]
        source: KafkaError,
    },
    /// A configured topic does not exist on the cluster.
    #[error("topic {0:?} does not exist on the cluster: create it, or point the --topic-* flags at existing topics")]
    MissingTopic(String),
    /// Creating a topic failed.
    #[error("cannot create topic {topic:?}: {reason}")]
    CreateTopic {
        /// The topic.
        topic: String,
        /// What the cluster said.
        reason: String,
    },
    /// The producer's buffer is full: the caller should shed load (HTTP 503).
    #[error("the producer queue is full")]
    QueueFull,
    /// No broker is reachable right now: the caller should shed load (HTTP 503).
    #[error("no Kafka broker is reachable")]
    Unavailable,
    /// The cluster cannot take the event and the local spool is full: shed load (HTTP 503).
    #[error("Kafka cannot take events and the local spool is full ({cap} bytes)")]
    SpoolFull {
        /// The spool's cap, in bytes.
        cap: u64,
    },
    /// The spool did not take the events within the spool timeout (a slow or frozen disk):
    /// shed load (HTTP 503).
    #[error("the local spool did not answer within {0:?}")]
    SpoolTimeout(Duration),
    /// The local spool failed (disk error).
    #[error("the local spool failed: {0}")]
    Spool(#[source] spool::Error),
    /// The record needed the spool, and there is none.
    #[error("no spool is configured")]
    NoSpool,
    /// librdkafka refused the record at enqueue time.
    #[error("cannot enqueue a record for {topic}: {source}")]
    Enqueue {
        /// The record's topic.
        topic: String,
        /// librdkafka's error.
        #[source]
        source: KafkaError,
    },
    /// The broker did not acknowledge an awaited record.
    #[error("delivery to {topic} failed: {source}")]
    Delivery {
        /// The record's topic.
        topic: String,
        /// librdkafka's error.
        #[source]
        source: KafkaError,
    },
    /// An awaited record was not acknowledged in time.
    #[error("delivery to {topic} not acknowledged within {timeout:?}")]
    Timeout {
        /// The record's topic.
        topic: String,
        /// How long we waited.
        timeout: Duration,
    },
}

impl Error {
    /// True when Kafka refused the record for good ([`crate::route::ErrorClass::Permanent`]:
    /// too large, not authorised, invalid), at enqueue or in its delivery report: sending it
    /// again, now or later, gets the same answer.
    pub fn is_permanent(&self) -> bool {
        match self {
            Error::Enqueue { source, .. } | Error::Delivery { source, .. } => {
                crate::route::ErrorClass::of(source) == crate::route::ErrorClass::Permanent
            }
            _ => false,
        }
    }

    /// True when Kafka refuses this record itself for good, whatever the topic's state: too
    /// large, invalid, a timestamp out of range ([`crate::Unsendable`]). Not a topic's or the
    /// cluster's refusal (not authorised, an unknown topic): that is every record's fault, not
    /// one event's.
    pub fn is_unsendable(&self) -> bool {
        use rdkafka::types::RDKafkaErrorCode::*;
        match self {
            Error::Enqueue { source, .. } | Error::Delivery { source, .. } => matches!(
                source.rdkafka_error_code(),
                Some(
                    MessageSizeTooLarge
                        | InvalidMessageSize
                        | InvalidMessage
                        | InvalidRecord
                        | BadMessage
                        | InvalidTimestamp
                )
            ),
            _ => false,
        }
    }

    /// True when [`Error::is_unsendable`] says so for its size.
    pub fn is_too_large(&self) -> bool {
        use rdkafka::types::RDKafkaErrorCode::*;
        match self {
            Error::Enqueue { source, .. } | Error::Delivery { source, .. } => matches!(
                source.rdkafka_error_code(),
                Some(MessageSizeTooLarge | InvalidMessageSize)
            ),
            _ => false,
        }
    }

    /// True for an enqueue refusal the spool can take instead: the producer is gone, failed or
    /// being replaced. Not for back-pressure (a full queue: the client slows down) nor for a
    /// record Kafka would never take (too large: the client's to fix).
    pub fn spool_helps(&self) -> bool {
        match self {
            Error::Unavailable => true,
            Error::Enqueue { source, .. } => {
                crate::route::ErrorClass::of(source) != crate::route::ErrorClass::Permanent
            }
            _ => false,
        }
    }
}
