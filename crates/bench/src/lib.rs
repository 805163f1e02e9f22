//! Baselines for `cargo xtask bench`: what the machine allows on each of ingest's two paths.
//!
//! - `bare-http`: a hyper server that reads each body and answers 200 (the HTTP path);
//! - `bare-producer`: an rdkafka producer with ingest's settings pushing the same payloads (the
//!   broker path).

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
