//! [`Carried`]: a request's handler, polled in place on its connection's task, and carried on
//! as a task of its own if the connection drops it before the end. A client that goes away
//! (a reset, a timeout) never cancels a request half-way: it is read, validated, written to
//! the DLQ and enqueued whole, or not at all (S6).
//!
//! hyper's HTTP/1 connection goes on polling a handler whose client has reset the connection
//! (it notices when it writes the answer), so today the guard fires only if the connection's
//! future itself is dropped; it makes S6 hold whatever the connection does.
//!
//! The handler is boxed once here, so the connection's own future stays small (the handler's
//! is a few KiB).
//!
//! Spawning every request as a task gave the same guarantee, but cost each request a task
//! allocation, a trip through the scheduler (often waking the other worker to steal it) and a
//! second poll of the connection to collect the answer: under `cargo xtask bench`'s
//! single-event load, with the pipeline after the body read cut out, about 3 µs of CPU per
//! request, 12% of the HTTP path (4 paired runs: 23.3/25.6/26.4/26.9 µs spawned against
//! 20.0/23.3/23.2/22.1 µs polled in place).

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::Full;
use hyper::Response;
use tokio_util::task::TaskTracker;

use crate::error::panic_message;
use crate::Error;

/// The answer to a request.
type Answer = Response<Full<Bytes>>;

/// A request's handler that runs to its end even if dropped: see the module docs.
pub(crate) struct Carried<F: Future<Output = Answer> + Send + 'static> {
    /// `None` once it has answered.
    handler: Option<Pin<Box<F>>>,
    /// Where a handler left behind by its connection goes on (waited for at shutdown).
    tasks: TaskTracker,
}

impl<F: Future<Output = Answer> + Send + 'static> Carried<F> {
    /// Wraps `handler`; if dropped unfinished, it is spawned on `tasks`.
    pub(crate) fn new(handler: F, tasks: TaskTracker) -> Self {
        Carried {
            handler: Some(Box::pin(handler)),
            tasks,
        }
    }
}

impl<F: Future<Output = Answer> + Send + 'static> Future for Carried<F> {
    type Output = Answer;

    /// The handler's answer; a panicking handler is logged and answered 500, as a request
    /// task's panic was.
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Answer> {
        let Some(handler) = self.handler.as_mut() else {
            return Poll::Ready(Error::Internal("request answered twice".into()).into_response(0));
        };
        let polled = std::panic::catch_unwind(AssertUnwindSafe(|| handler.as_mut().poll(cx)));
        let answer = match polled {
            Ok(Poll::Pending) => return Poll::Pending,
            Ok(Poll::Ready(answer)) => answer,
            Err(panic) => {
                let what = panic_message(&*panic);
                tracing::error!(panic = what, "request handler failed");
                Error::Internal("request handler failed".into()).into_response(0)
            }
        };
        self.handler = None;
        Poll::Ready(answer)
    }
}

impl<F: Future<Output = Answer> + Send + 'static> Drop for Carried<F> {
    fn drop(&mut self) {
        let Some(handler) = self.handler.take() else {
            return;
        };
        // Outside a runtime (only as the process ends) nothing can run it: say so rather than
        // panic in a destructor.
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => drop(self.tasks.spawn_on(handler, &runtime)),
            Err(_) => tracing::error!("a request left unfinished as the runtime stopped"),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    use hyper::StatusCode;
    use tokio::sync::oneshot;

    use super::*;

    fn answer(status: StatusCode) -> Answer {
        let mut response = Response::new(Full::new(Bytes::new()));
        *response.status_mut() = status;
        response
    }

    #[tokio::test]
    async fn answers_in_place() {
        let tasks = TaskTracker::new();
        let carried = Carried::new(async { answer(StatusCode::ACCEPTED) }, tasks.clone());
        assert_eq!(carried.await.status(), StatusCode::ACCEPTED);
        assert!(tasks.is_empty(), "nothing was spawned");
    }

    #[tokio::test]
    async fn a_dropped_handler_runs_to_its_end() {
        let tasks = TaskTracker::new();
        let (go, wait) = oneshot::channel::<()>();
        let finished = Arc::new(AtomicBool::new(false));
        let done = finished.clone();
        let mut carried = Box::pin(Carried::new(
            async move {
                let _ = wait.await;
                done.store(true, Ordering::SeqCst);
                answer(StatusCode::OK)
            },
            tasks.clone(),
        ));
        // Polled once (it waits), then dropped as a connection that went away drops it.
        let polled = futures_poll_once(carried.as_mut()).await;
        assert!(polled.is_none());
        drop(carried);
        assert_eq!(tasks.len(), 1, "the handler goes on as a task");
        go.send(()).unwrap();
        tasks.close();
        tasks.wait().await;
        assert!(finished.load(Ordering::SeqCst), "the handler ran to its end");
    }

    #[tokio::test]
    async fn a_panicking_handler_is_answered_500() {
        let tasks = TaskTracker::new();
        let carried = Carried::new(
            async {
                if true {
                    panic!("boom");
                }
                answer(StatusCode::OK)
            },
            tasks.clone(),
        );
        assert_eq!(carried.await.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert!(tasks.is_empty());
    }

    /// Polls `future` once: its output if it was ready.
    async fn futures_poll_once<F: Future + Unpin>(mut future: F) -> Option<F::Output> {
        std::future::poll_fn(|cx| {
            Poll::Ready(match Pin::new(&mut future).poll(cx) {
                Poll::Ready(out) => Some(out),
                Poll::Pending => None,
            })
        })
        .await
    }
}
