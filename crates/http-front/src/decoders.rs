//! The decoder threads: a fixed pool, one thread per core, that parses and validates large
//! request bodies off the runtime workers (see `ingest::OFF_WORKER_BODY_BYTES`).
//!
//! A fixed pool rather than tokio's blocking pool: that one starts a new thread whenever none
//! is idle at the instant of the call, and each thread keeps its own allocator heap; under
//! `cargo xtask bench` it grew to 8 threads and ingest's peak RSS from about 75 to 125-150 MiB.

use std::panic::AssertUnwindSafe;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use tokio::sync::{oneshot, Semaphore};

use crate::error::panic_message;
use crate::Error;

type Job = Box<dyn FnOnce() + Send>;

/// The pool. Jobs beyond one per thread wait (asynchronously) for a permit before they are
/// queued, so the queue never holds more than the threads can start.
pub(crate) struct Decoders {
    jobs: mpsc::Sender<Job>,
    permits: Arc<Semaphore>,
}

impl Decoders {
    /// Starts `threads` threads named `decode`; they end when the pool is dropped.
    pub(crate) fn start(threads: usize) -> std::io::Result<Decoders> {
        let (tx, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        for _ in 0..threads.max(1) {
            let rx = rx.clone();
            std::thread::Builder::new()
                .name("decode".into())
                .spawn(move || loop {
                    let job = rx.lock().unwrap_or_else(|e| e.into_inner()).recv();
                    let Ok(job) = job else { return };
                    // A panicking job drops its answer (its caller gets `Error::Internal`); the
                    // thread stays.
                    if let Err(panic) = std::panic::catch_unwind(AssertUnwindSafe(job)) {
                        let what = panic_message(&*panic);
                        tracing::error!(panic = what, "decoding a request body panicked");
                    }
                })?;
        }
        Ok(Decoders {
            jobs: tx,
            permits: Arc::new(Semaphore::new(threads.max(1))),
        })
    }

    /// Runs `work` on a decoder thread and returns its result; `Error::Internal` if it
    /// panicked.
    pub(crate) async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, Error> {
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| Error::Internal(e.to_string()))?;
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move || {
            let _permit = permit;
            let _ = tx.send(work());
        });
        self.jobs
            .send(job)
            .map_err(|_| Error::Internal("the decoder threads have stopped".into()))?;
        rx.await
            .map_err(|_| Error::Internal("decoding a request body panicked".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn runs_work_and_survives_a_panic() {
        let pool = Decoders::start(1).unwrap();
        assert_eq!(pool.run(|| 2 + 2).await.unwrap(), 4);
        let panicked = pool.run(|| -> u32 { panic!("boom") }).await;
        assert!(matches!(panicked, Err(Error::Internal(_))), "{panicked:?}");
        let name = pool
            .run(|| std::thread::current().name().map(str::to_string))
            .await
            .unwrap();
        assert_eq!(name.as_deref(), Some("decode"), "the one thread is still there");
    }
}
