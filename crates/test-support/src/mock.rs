//! librdkafka's mock cluster, the one fault injector the tests use: broker outages, slow
//! brokers, produce errors.
//!
//! One way it differs from Kafka matters to tests that inject produce errors: it does not check
//! an idempotent producer's sequence numbers (librdkafka 2.10's `rd_kafka_mock_validate_records`
//! checks them for transactional producers only). When a produce request fails with an injected
//! retriable error and the request sent after it on the same partition succeeds, the mock
//! stores the second, and librdkafka reports the first one's records delivered too
//! (`rd_kafka_dr_implicit_ack`: against Kafka, which refuses a sequence gap, the second could
//! only succeed if the first was stored). Those records were acknowledged and are on no topic.
//! A test whose injected errors stop while records flow therefore keeps one produce request in
//! flight ([`ONE_IN_FLIGHT`]).

use std::sync::mpsc;
use std::time::Duration;

use rdkafka::mocking::MockCluster;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};

use crate::Topics;

/// A mock cluster on its own thread (it is neither `Send` nor `Sync`), driven by commands.
pub struct Mock {
    /// Its bootstrap address.
    pub bootstrap: String,
    commands: mpsc::Sender<(Fault, mpsc::Sender<()>)>,
}

/// A fault to inject.
pub enum Fault {
    /// The next 50 produce requests fail with this error.
    ProduceErrors(RDKafkaRespErr),
    /// The next `n` produce requests fail with this error.
    ProduceErrorsN(RDKafkaRespErr, usize),
    /// Produce requests no longer fail: the errors still queued by `ProduceErrors*` are
    /// dropped.
    ClearProduceErrors,
    /// The broker stops answering (connections refused).
    BrokerDown(i32),
    /// The broker is back.
    BrokerUp(i32),
    /// Every request to this broker takes this long.
    Rtt(i32, Duration),
}

impl Mock {
    /// A one-broker cluster with the three topics.
    pub fn start(topics: &Topics) -> Mock {
        Mock::start_with_brokers(topics, 1)
    }

    /// A cluster of `brokers` brokers; the ingest topic's leader is the last one, the other
    /// topics' the first, so that taking the last one down fails only the ingest topic.
    pub fn start_with_brokers(topics: &Topics, brokers: i32) -> Mock {
        Mock::start_on(topics, brokers, 1)
    }

    /// Three brokers and a 3-partition ingest topic whose partition `p` is led by broker
    /// `p + 1` (the DLQ and retry topics by broker 1): taking broker 3 down fails only
    /// partition 2 of the ingest topic.
    pub fn start_spread(topics: &Topics) -> Mock {
        Mock::start_on(topics, 3, 3)
    }

    fn start_on(topics: &Topics, brokers: i32, ingest_partitions: i32) -> Mock {
        let topics = topics.clone();
        let (bootstrap_tx, bootstrap_rx) = mpsc::channel();
        let (commands, received) = mpsc::channel::<(Fault, mpsc::Sender<()>)>();
        std::thread::spawn(move || {
            let cluster = MockCluster::new(brokers).unwrap();
            for topic in [&topics.dlq, &topics.retry] {
                cluster.create_topic(topic, 1, 1).unwrap();
                cluster.partition_leader(topic, 0, Some(1)).unwrap();
            }
            cluster
                .create_topic(&topics.ingest, ingest_partitions, 1)
                .unwrap();
            for p in 0..ingest_partitions {
                // One partition: the last broker leads it; several: broker p + 1 leads p.
                let leader = if ingest_partitions == 1 { brokers } else { p + 1 };
                cluster.partition_leader(&topics.ingest, p, Some(leader)).unwrap();
            }
            bootstrap_tx.send(cluster.bootstrap_servers()).unwrap();
            // Runs until the test drops its `Mock`.
            for (fault, done) in received {
                match fault {
                    Fault::ProduceErrors(error) => {
                        cluster.request_errors(RDKafkaApiKey::Produce, &[error; 50])
                    }
                    Fault::ProduceErrorsN(error, n) => {
                        cluster.request_errors(RDKafkaApiKey::Produce, &vec![error; n])
                    }
                    Fault::ClearProduceErrors => cluster.clear_request_errors(RDKafkaApiKey::Produce),
                    Fault::BrokerDown(id) => cluster.broker_down(id).unwrap(),
                    Fault::BrokerUp(id) => cluster.broker_up(id).unwrap(),
                    Fault::Rtt(id, rtt) => cluster.broker_round_trip_time(id, rtt).unwrap(),
                }
                let _ = done.send(());
            }
        });
        Mock {
            bootstrap: bootstrap_rx.recv().unwrap(),
            commands,
        }
    }

    /// Applies a fault and waits until it is in effect.
    pub fn inject(&self, fault: Fault) {
        let (done, wait) = mpsc::channel();
        self.commands.send((fault, done)).unwrap();
        wait.recv().unwrap();
    }
}

/// The librdkafka setting that keeps one produce request in flight per connection, so that no
/// request succeeds past one that failed (see the module documentation).
pub const ONE_IN_FLIGHT: &str = "max.in.flight.requests.per.connection=1";

/// The topic names of [`Mock::start`]'s tests.
pub fn mock_topics() -> Topics {
    Topics {
        ingest: "m.ingest".into(),
        dlq: "m.dlq".into(),
        retry: "m.retry".into(),
    }
}
