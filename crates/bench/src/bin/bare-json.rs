//! Bare JSON: each payload parsed with simd-json (`to_borrowed_value` on a copy, as an edge
//! that owns its request buffer must) and written back out (`to_vec`), over and over for a few
//! seconds in one thread. Prints `{"events":..,"seconds":..,"cpu_seconds":..}`: the least CPU
//! any validating edge spends per event on this machine.

use std::hint::black_box;
use std::time::{Duration, Instant};

use clap::Parser;

#[derive(Parser)]
struct Args {
    /// Payloads (one JSON event per line).
    #[arg(long)]
    payloads: std::path::PathBuf,
    /// How long to keep going over the payloads (whole passes; at least one).
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    duration: Duration,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let payloads = bench::read_payloads(&args.payloads)?;
    // One untimed pass: page faults of the first allocations, the CPU's caches.
    black_box(pass(&payloads)?);
    let started = Instant::now();
    let cpu_before = bench::cpu_seconds();
    let mut events = 0usize;
    while events == 0 || started.elapsed() < args.duration {
        black_box(pass(&payloads)?);
        events += payloads.len();
    }
    let cpu_seconds = bench::cpu_seconds() - cpu_before;
    let seconds = started.elapsed().as_secs_f64();
    println!("{{\"events\":{events},\"seconds\":{seconds},\"cpu_seconds\":{cpu_seconds}}}");
    Ok(())
}

/// Parses and writes out every payload once; the bytes written.
fn pass(payloads: &[String]) -> anyhow::Result<usize> {
    let mut written = 0;
    for payload in payloads {
        let mut copy = payload.as_bytes().to_vec();
        let value = simd_json::to_borrowed_value(&mut copy)?;
        written += simd_json::to_vec(&value)?.len();
    }
    Ok(written)
}
