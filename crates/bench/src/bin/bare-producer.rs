//! A bare rdkafka producer with ingest's settings (S2), pushing payloads as fast as the queue
//! takes them, then flushing. Prints `{"events":..,"seconds":..,"cpu_seconds":..}`. The upper
//! bound of ingest's broker path on this machine.

use std::time::{Duration, Instant};

use clap::Parser;
use kafka_producer::{ProducerConfig, Topics};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};

#[derive(Parser)]
struct Args {
    /// Bootstrap servers.
    #[arg(long)]
    brokers: String,
    /// Topic to produce to.
    #[arg(long)]
    topic: String,
    /// Payloads, one per line.
    #[arg(long)]
    payloads: std::path::PathBuf,
    /// Records to send.
    #[arg(long, default_value_t = 200_000)]
    count: usize,
    /// TLS, SASL and other librdkafka settings, as the binaries take them (`CDP_KAFKA_*`).
    #[command(flatten)]
    security: ops::KafkaSecurityArgs,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let payloads: Vec<String> = std::fs::read_to_string(&args.payloads)?
        .lines()
        .map(str::to_string)
        .collect();
    anyhow::ensure!(!payloads.is_empty(), "no payloads");
    let topics = Topics {
        ingest: args.topic.clone(),
        dlq: args.topic.clone(),
        retry: args.topic.clone(),
    };
    let config = ProducerConfig::new(args.security.settings(&args.brokers), topics);
    let producer: ThreadedProducer<DefaultProducerContext> = config
        .client_config()?
        .set("statistics.interval.ms", "0")
        .create()
        .map_err(kafka_producer::config_error)?;
    let started = Instant::now();
    let cpu_before = bench::cpu_seconds();
    for i in 0..args.count {
        let payload = &payloads[i % payloads.len()];
        let key = format!("k{}", i % 1000);
        let mut record = BaseRecord::to(&args.topic).key(&key).payload(payload);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((e, r)) if e.rdkafka_error_code() == Some(RDKafkaErrorCode::QueueFull) => {
                    record = r;
                    std::thread::sleep(Duration::from_micros(200));
                }
                Err((e, _)) => anyhow::bail!("send: {e}"),
            }
        }
    }
    producer.flush(Duration::from_secs(60))?;
    let seconds = started.elapsed().as_secs_f64();
    let cpu_seconds = bench::cpu_seconds() - cpu_before;
    println!(
        "{{\"events\":{},\"seconds\":{seconds},\"cpu_seconds\":{cpu_seconds}}}",
        args.count
    );
    Ok(())
}
