//! Topic administration, for xtask, tests and start-up checks.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::producer::{Producer, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;

use crate::watch::{ConnectionWatch, WatchedContext};
use crate::{Error, KafkaSettings};

/// Creates each `(topic, partitions)` that does not exist yet. Existing topics are left as they
/// are. `kafka` is a [`KafkaSettings`] or, for a plaintext cluster, its bootstrap servers.
pub async fn ensure_topics(kafka: impl Into<KafkaSettings>, topics: &[(&str, i32)]) -> Result<(), Error> {
    let settings: KafkaSettings = kafka.into();
    // A ping first: it names an authentication or TLS failure, where the admin call would
    // only time out.
    let ping = settings.clone();
    tokio::task::spawn_blocking(move || fetch_topics(ping, Duration::from_secs(10)))
        .await
        .map_err(|e| Error::Create(rdkafka::error::KafkaError::ClientCreation(e.to_string())))??;
    let admin: AdminClient<DefaultClientContext> = settings
        .client_config()?
        .create()
        .map_err(crate::settings::create_error)?;
    let new: Vec<NewTopic> = topics
        .iter()
        .map(|(name, partitions)| NewTopic::new(name, *partitions, TopicReplication::Fixed(1)))
        .collect();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let results = admin
        .create_topics(&new, &options)
        .await
        .map_err(|source| Error::Unreachable {
            brokers: settings.brokers.clone(),
            source,
        })?;
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => {
                return Err(Error::CreateTopic {
                    topic,
                    reason: code.to_string(),
                })
            }
        }
    }
    Ok(())
}

/// The cluster's topics and their partition counts, from one metadata request (blocking):
/// the start-up ping of clients other than [`crate::EventProducer`]. Fails at once, naming the
/// cause, when the brokers refuse the credentials or the TLS handshake fails. `kafka` is a
/// [`KafkaSettings`] or, for a plaintext cluster, its bootstrap servers.
pub fn fetch_topics(
    kafka: impl Into<KafkaSettings>,
    timeout: Duration,
) -> Result<Vec<(String, usize)>, Error> {
    let settings: KafkaSettings = kafka.into();
    // Failures reported here end the start-up: not counted in a binary's metrics.
    let watch = ConnectionWatch::uncounted(&settings);
    // A producer serves its events (errors among them) on a thread of its own.
    let client: ThreadedProducer<WatchedContext> = settings
        .client_config()?
        .create_with_context(WatchedContext::new(watch.clone()))
        .map_err(crate::settings::create_error)?;
    let metadata = watch.ping(client.client(), timeout)?;
    Ok(metadata
        .topics()
        .iter()
        .filter(|t| t.error().is_none())
        .map(|t| (t.name().to_string(), t.partitions().len()))
        .collect())
}
