//! Baselines for `cargo xtask bench`: the least each of ingest's three jobs costs on this machine.
//!
//! - `bare-http`: a hyper server that reads each body and answers 200 (the HTTP path);
//! - `bare-json`: each of the corpus's events parsed with simd-json and written back out, in
//!   process (the least a validating edge does per event);
//! - `bare-producer`: an rdkafka producer with ingest's settings pushing the same payloads (the
//!   broker path), flat out (CPU per event) or at a fixed rate (its acknowledgement latency).

/// CPU seconds (user + system) this process has used, from `/proc/self/stat`.
pub fn cpu_seconds() -> f64 {
    cpu_seconds_of("self")
}

/// CPU seconds (user + system) process `pid` (or `self`) has used, from `/proc/<pid>/stat`;
/// 0 when it is gone.
pub fn cpu_seconds_of(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may contain spaces) start after the last ')'.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace()
        .collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of the whole line: 11 and 12 after the name.
    (ticks(11) + ticks(12)) / 100.0
}

/// Reads a file of payloads, one per line, skipping empty lines; an error when there is none.
pub fn read_payloads(path: &std::path::Path) -> anyhow::Result<Vec<String>> {
    let payloads: Vec<String> = std::fs::read_to_string(path)?
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect();
    anyhow::ensure!(!payloads.is_empty(), "no payloads in {}", path.display());
    Ok(payloads)
}

/// The `q` quantile (0 to 1, nearest rank) of `sorted`, which must be sorted ascending; NaN
/// when it is empty.
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::quantile;

    #[test]
    fn quantile_is_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile(&v, 0.5), 50.0);
        assert_eq!(quantile(&v, 0.99), 99.0);
        assert_eq!(quantile(&v, 1.0), 100.0);
        assert_eq!(quantile(&v, 0.0), 1.0);
        assert!(quantile(&[], 0.5).is_nan());
    }
}
