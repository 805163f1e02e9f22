//! Bounded waits for shutdown: a frozen disk or a hung broker cannot hold
//! [`crate::EventProducer::close`] past the pod's termination grace.

use std::time::{Duration, Instant};

/// How long each step of the close after the flush may take (stopping the drainer, destroying
/// the librdkafka producer, stopping the supervisor, stopping the spool writer, the last sync).
pub(crate) const CLOSE_PATIENCE: Duration = Duration::from_secs(5);

/// Joins `thread` if it finishes within `patience`; false (the thread left running, to end
/// with the process) if not.
pub(crate) fn join_within(thread: std::thread::JoinHandle<()>, patience: Duration) -> bool {
    let deadline = Instant::now() + patience;
    while !thread.is_finished() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    let finished = thread.is_finished();
    if finished {
        let _ = thread.join();
    }
    finished
}

/// Runs `work` on a thread of its own named `name`, waiting for it at most `patience`; false
/// when it did not finish in time (or the thread could not start).
pub(crate) fn run_within(name: &str, patience: Duration, work: impl FnOnce() + Send + 'static) -> bool {
    match std::thread::Builder::new().name(name.into()).spawn(work) {
        Ok(thread) => join_within(thread, patience),
        Err(_) => false,
    }
}
