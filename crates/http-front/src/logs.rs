//! Refusal logs, rate-limited per reason: a flood of refused requests (a brute force of write
//! keys, a client resending an invalid batch) must not become a flood of log lines. The first
//! [`LINES_PER_SECOND`] lines of a reason in each second are written; the rest are suppressed
//! and, once that second is over, summed up in one line (`suppressed`). The metrics count
//! every refusal whatever the log shows.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Refusal lines written per reason and second, before the rest are suppressed.
pub(crate) const LINES_PER_SECOND: u32 = 10;

const WINDOW: Duration = Duration::from_secs(1);

#[derive(Clone, Copy)]
struct Window {
    started: Instant,
    logged: u32,
    suppressed: u64,
}

fn windows() -> &'static Mutex<HashMap<&'static str, Window>> {
    static WINDOWS: OnceLock<Mutex<HashMap<&'static str, Window>>> = OnceLock::new();
    WINDOWS.get_or_init(Mutex::default)
}

/// Whether a refusal line for `reason` (from a closed set) may be written now. Counts the
/// suppressed ones, and writes the summary of a past second's before answering.
pub(crate) fn allow(reason: &'static str) -> bool {
    let now = Instant::now();
    let mut windows = windows().lock().unwrap_or_else(|e| e.into_inner());
    let window = windows.entry(reason).or_insert(Window {
        started: now,
        logged: 0,
        suppressed: 0,
    });
    if now.duration_since(window.started) >= WINDOW {
        summarise(reason, window);
        *window = Window {
            started: now,
            logged: 0,
            suppressed: 0,
        };
    }
    if window.logged < LINES_PER_SECOND {
        window.logged += 1;
        true
    } else {
        window.suppressed += 1;
        crate::metrics::log_suppressed(reason);
        false
    }
}

/// Writes the summaries of the seconds that are over (called every second, so that the last
/// burst of a flood is summed up too), or with `all` (at shutdown) of every second.
pub(crate) fn flush(all: bool) {
    let now = Instant::now();
    let mut windows = windows().lock().unwrap_or_else(|e| e.into_inner());
    for (reason, window) in windows.iter_mut() {
        if all || now.duration_since(window.started) >= WINDOW {
            summarise(reason, window);
            window.suppressed = 0;
        }
    }
    windows.retain(|_, w| now.duration_since(w.started) < WINDOW * 60);
}

fn summarise(reason: &'static str, window: &Window) {
    if window.suppressed > 0 {
        tracing::warn!(
            reason,
            suppressed = window.suppressed,
            logged = window.logged,
            "refusal log lines suppressed (the metrics count every refusal)"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_writes_the_first_lines_and_counts_the_rest() {
        let allowed = (0..1000).filter(|_| allow("test_burst")).count();
        assert_eq!(allowed, LINES_PER_SECOND as usize);
        let windows = windows().lock().unwrap();
        assert_eq!(
            windows["test_burst"].suppressed,
            1000 - u64::from(LINES_PER_SECOND)
        );
    }
}
