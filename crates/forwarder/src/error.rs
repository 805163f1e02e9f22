//! The crate's one error type.

use rdkafka::error::KafkaError;

/// What stops the forwarder.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The consumer or producer cannot be created.
    #[error("cannot create the Kafka client: {0}")]
    Create(#[source] KafkaError),
    /// The cluster does not answer, or the retry topic is missing.
    #[error(transparent)]
    Kafka(#[from] kafka_producer::Error),
    /// The producer hit a fatal error (idempotence): restart the process.
    #[error("the Kafka producer hit a fatal error; restart to resume from the committed offsets")]
    FatalProducer,
    /// Subscribing to the retry topic failed.
    #[error("cannot subscribe to {topic}: {source}")]
    Subscribe {
        /// The retry topic.
        topic: String,
        /// librdkafka's error.
        #[source]
        source: KafkaError,
    },
}
