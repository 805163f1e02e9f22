//! A bare rdkafka producer with ingest's settings (S2). The upper bound of ingest's broker path
//! on this machine, in one of two modes:
//!
//! - flat out (no `--rate`): `--count` records pushed as fast as the queue takes them, then
//!   flushed: the CPU per event;
//! - paced (`--rate`): records enqueued at that many per second for `--duration`, then
//!   flushed: the acknowledgement latency (enqueue to delivery report) at that load, which an
//!   edge answering only once a record is acknowledged (ingest's invalid events, S8) cannot beat.
//!
//! Prints `{"events":..,"seconds":..,"cpu_seconds":..,"ack_p50_ms":..,"ack_p99_ms":..}`.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use clap::Parser;
use kafka_producer::{ProducerConfig, Topics};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::ClientContext;

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
    /// Records to send flat out (without `--rate`).
    #[arg(long, default_value_t = 200_000)]
    count: usize,
    /// Records per second to enqueue, paced, instead of flat out.
    #[arg(long)]
    rate: Option<f64>,
    /// How long to send at `--rate`.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// TLS, SASL and other librdkafka settings, as the binaries take them (`CDP_KAFKA_*`).
    #[command(flatten)]
    security: ops::KafkaSecurityArgs,
}

/// Delivery reports: each acknowledged record's time from enqueue, in milliseconds.
#[derive(Default)]
struct Acks {
    latencies_ms: Mutex<Vec<f64>>,
}

impl ClientContext for Acks {}

impl ProducerContext for Acks {
    /// When the record was enqueued.
    type DeliveryOpaque = Box<Instant>;

    fn delivery(&self, result: &DeliveryResult<'_>, enqueued: Box<Instant>) {
        if result.is_ok() {
            let ms = enqueued.elapsed().as_secs_f64() * 1000.0;
            self.latencies_ms
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(ms);
        }
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let payloads = bench::read_payloads(&args.payloads)?;
    let topics = Topics {
        ingest: args.topic.clone(),
        dlq: args.topic.clone(),
        retry: args.topic.clone(),
    };
    let config = ProducerConfig::new(args.security.settings(&args.brokers), topics);
    let producer: ThreadedProducer<Acks> = config
        .client_config()?
        .set("statistics.interval.ms", "0")
        .create_with_context(Acks::default())
        .map_err(kafka_producer::config_error)?;
    let send = |i: usize| -> anyhow::Result<()> {
        let payload = &payloads[i % payloads.len()];
        let key = format!("k{}", i % 1000);
        let mut record = BaseRecord::with_opaque_to(&args.topic, Box::new(Instant::now()))
            .key(&key)
            .payload(payload);
        loop {
            match producer.send(record) {
                Ok(()) => return Ok(()),
                Err((e, r)) if e.rdkafka_error_code() == Some(RDKafkaErrorCode::QueueFull) => {
                    record = r;
                    std::thread::sleep(Duration::from_micros(200));
                }
                Err((e, _)) => anyhow::bail!("send: {e}"),
            }
        }
    };
    // One record delivered first, untimed: the connection and the topic's metadata, which
    // the first records would otherwise wait for (half a second against a fresh tansu).
    send(0)?;
    producer.flush(Duration::from_secs(30))?;
    producer
        .context()
        .latencies_ms
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clear();
    let started = Instant::now();
    let cpu_before = bench::cpu_seconds();
    let mut sent = 0usize;
    match args.rate {
        None => {
            for i in 0..args.count {
                send(i)?;
            }
            sent = args.count;
        }
        Some(rate) => {
            // Whatever is due by now, every millisecond: bursts of rate/1000 records, far
            // shorter than linger.ms.
            while started.elapsed() < args.duration {
                let due = (started.elapsed().as_secs_f64() * rate) as usize;
                while sent < due {
                    send(sent)?;
                    sent += 1;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }
    producer.flush(Duration::from_secs(60))?;
    let seconds = started.elapsed().as_secs_f64();
    let cpu_seconds = bench::cpu_seconds() - cpu_before;
    let mut acks = std::mem::take(
        &mut *producer
            .context()
            .latencies_ms
            .lock()
            .unwrap_or_else(|e| e.into_inner()),
    );
    anyhow::ensure!(!acks.is_empty(), "no record was acknowledged");
    acks.sort_by(f64::total_cmp);
    println!(
        "{{\"events\":{sent},\"acknowledged\":{},\"seconds\":{seconds},\"cpu_seconds\":{cpu_seconds},\"ack_p50_ms\":{},\"ack_p99_ms\":{}}}",
        acks.len(),
        bench::quantile(&acks, 0.5),
        bench::quantile(&acks, 0.99)
    );
    Ok(())
}
