//! The processes under test: ports, CPU and peak RSS from `/proc`, and ingest's metrics.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tokio::process::Child;

use crate::stack::http;

/// A port nothing listens on now.
pub fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Waits (up to 30 s) until something accepts connections on `port`.
pub async fn wait_port(port: u16) -> Result<()> {
    for _ in 0..300 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("nothing listens on {port}")
}

/// CPU seconds (user + system) of a running child.
pub fn process_cpu(child: &Child) -> Result<f64> {
    let pid = child.id().context("process exited")?;
    Ok(bench::cpu_seconds_of(&pid.to_string()))
}

/// Peak RSS (`VmHWM`) of a running child, in MiB.
pub fn peak_rss_mib(child: &Child) -> Result<f64> {
    let pid = child.id().context("process exited")?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .context("no VmHWM")?;
    let kib: f64 = line.split_whitespace().nth(1).unwrap_or("0").parse()?;
    Ok(kib / 1024.0)
}

/// Waits (up to 60 s) until ingest's producer holds no record: after a saturation run, the
/// broker works off a backlog and takes the CPU from ingest; a latency run starting then would
/// measure that backlog, not the load it offers.
pub async fn wait_producer_drained(metrics_port: u16) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        let (_, text) = http(metrics_port, "GET", "/metrics", &[], "").await?;
        let queued = text.lines().find_map(|l| {
            l.strip_prefix("cdp_ingest_kafka_queue_messages ")?
                .parse::<f64>()
                .ok()
        });
        if queued == Some(0.0) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    println!("bench: the producer queue did not drain within 60 s; measuring anyway");
    Ok(())
}

/// `sum(cdp_ingest_events_total{outcome="accepted"})` from ingest's metrics.
pub async fn accepted_events(metrics_port: u16) -> Result<f64> {
    let (_, text) = http(metrics_port, "GET", "/metrics", &[], "").await?;
    Ok(text
        .lines()
        .filter(|l| l.starts_with("cdp_ingest_events_total{") && l.contains("outcome=\"accepted\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum())
}
