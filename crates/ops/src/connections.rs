//! Connection admission for an HTTP/1 listener: a cap on the connections held, where at the
//! cap a new connection evicts the oldest idle one, and idle timeouts that shrink under
//! pressure.
//!
//! A connection is **idle** while no request is in progress on it: from `accept` until its
//! first request's head has been read (a slowloris sending one header byte a second is idle),
//! and between the end of a response and the next request's head (keep-alive). It is **busy**
//! from the moment hyper hands a request to the service ([`Tracker::request`]) until hyper has
//! taken the response body's last frame ([`Busy`] dropped with the body, see [`track`]); hyper
//! writes and flushes the response in the same poll, so only a client that does not read its
//! socket (a full send buffer) can lose an answer to an eviction. A busy connection is never
//! evicted nor timed out here (the body read timeout and the handler bound a request). After a
//! first request, the next request's head is bounded by the keep-alive timeout.
//!
//! The rules, each a pure function tested as a table:
//! - [`decide`]: below the cap a connection is held; at the cap the oldest idle one is evicted
//!   for it (`evicted_idle`) and the new one waits until the evicted one's socket is closed;
//!   only when every held connection is busy is it refused (`refused_busy`).
//! - [`under_pressure`]: more than half the cap idle turns the pressure on; it goes off once
//!   at most a quarter is idle (hysteresis, so that it does not flap at the boundary).
//! - [`idle_limit`]: how long a connection may stay idle: the header-read timeout before its
//!   first request, the keep-alive timeout between requests, and under pressure the floor for
//!   both (at most the normal value).
//!
//! One owner: the table behind one mutex holds every connection's state; each connection's
//! task waits on [`Conn::closing`], which resolves when the table evicted it or its idle time
//! ran out (woken by the eviction, by a pressure change, or by its own deadline: an idle
//! connection wakes at its deadline, a busy one once per idle limit to look again).
//!
//! The cap counts descriptors, not bookkeeping: a connection told to close (evicted, timed
//! out) keeps its place until its task has dropped the socket ([`Conn`] dropped), and a new
//! connection is held only once the count is below the cap. So the held sockets never exceed
//! the cap (plus the one just accepted, waiting for its place, and the finishing spare
//! below), whatever the rate of arrivals, and an open-file budget computed from it holds.
//!
//! A request whose head arrives just as its connection is told to close (the eviction and
//! the head race) is still served to the end, answered with `Connection: close`
//! ([`Busy::closing`], [`Conn::finishing`], up to [`FINISH_PATIENCE`]); up to
//! [`FINISHING_SPARE`] such connections hold their place beside the cap without delaying new
//! ones. Nothing is refused for having lost that race. Callbacks and log lines run after the
//! table's lock is released.

use std::collections::{BTreeMap, HashMap};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::body::{Body, Frame, SizeHint};
use tokio::sync::{watch, Notify};
use tokio::time::Instant;

/// How long a connection may stay idle (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// From `accept` until the first request's head is read (`--header-read-timeout`).
    pub header_read: Duration,
    /// From the end of a response until the next request's head is read (`--keep-alive-timeout`).
    pub keep_alive: Duration,
    /// Both, while more than half the cap is idle (`--idle-timeout-under-pressure`).
    pub under_pressure: Duration,
}

/// Why the listener closed a connection itself: the `cause` label of the closed-connections
/// counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// The oldest idle connection, closed at the cap for a new one.
    EvictedIdle,
    /// A new connection closed at the cap because every held one was busy.
    RefusedBusy,
    /// Idle past its [`idle_limit`].
    IdleTimeout,
}

impl Cause {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Cause::EvictedIdle => "evicted_idle",
            Cause::RefusedBusy => "refused_busy",
            Cause::IdleTimeout => "idle_timeout",
        }
    }

    /// Every cause, for exporting the counter's series at 0 at start.
    pub const ALL: [Cause; 3] = [Cause::EvictedIdle, Cause::RefusedBusy, Cause::IdleTimeout];
}

/// What [`decide`] says of a new connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Below the cap: hold it.
    Hold,
    /// At the cap with a connection closing (evicted or timed out, its socket not yet
    /// dropped): wait for it, then decide again.
    WaitForClose,
    /// At the cap: evict the oldest idle connection, wait for it to close, decide again.
    EvictOldestIdle,
    /// At the cap and every held connection busy: refuse it.
    Refuse,
}

/// Closing connections (told to close) that are finishing a request whose head arrived as
/// they were told, which may hold their place beside the cap without making new connections
/// wait for them: within `server::MARGIN_FILES`' share of the descriptor reserve.
pub const FINISHING_SPARE: usize = 16;

/// How long a connection told to close may take to finish a request whose head arrived as it
/// was told (answered with `Connection: close`), before its socket is dropped anyway.
pub const FINISH_PATIENCE: Duration = Duration::from_secs(10);

/// The admission rule for a new connection, given the connections `held` (every socket still
/// open, `closing` ones included), the `idle` ones among them, those `closing`, the closing
/// ones `finishing` a request, and the `cap`. Up to [`FINISHING_SPARE`] finishing ones count
/// neither as held nor as closing: a request that raced its connection's eviction delays
/// nobody.
pub fn decide(held: usize, idle: usize, closing: usize, finishing: usize, cap: usize) -> Decision {
    let spare = finishing.min(FINISHING_SPARE).min(closing);
    let (held, closing) = (held - spare.min(held), closing - spare);
    if held < cap {
        Decision::Hold
    } else if closing > 0 {
        Decision::WaitForClose
    } else if idle > 0 {
        Decision::EvictOldestIdle
    } else {
        Decision::Refuse
    }
}

/// Whether the listener is under pressure with `idle` idle connections of `cap`, given whether
/// it `was`: on above half the cap, off at a quarter or less.
pub fn under_pressure(idle: usize, cap: usize, was: bool) -> bool {
    if was {
        idle.saturating_mul(4) > cap
    } else {
        idle.saturating_mul(2) > cap
    }
}

/// How long a connection may stay idle: before its first request (`served == false`) the
/// header-read timeout, after one the keep-alive timeout; under pressure the floor for both
/// (never more than the normal value).
pub fn idle_limit(timeouts: &Timeouts, served: bool, pressure: bool) -> Duration {
    let normal = if served {
        timeouts.keep_alive
    } else {
        timeouts.header_read
    };
    if pressure {
        normal.min(timeouts.under_pressure)
    } else {
        normal
    }
}

/// Called once per connection the listener closes itself, with the cause: the binary's
/// counter and, where it wants one, its log line (one call per kind, so the two stay paired).
pub type OnClose = Box<dyn Fn(Cause) + Send + Sync>;

/// The connections of one listener: the cap, every connection's state, the pressure.
/// Cloning shares the same table.
#[derive(Clone)]
pub struct Connections(Arc<Shared>);

struct Shared {
    /// The listener's name in log lines.
    what: &'static str,
    cap: usize,
    timeouts: Timeouts,
    on_close: OnClose,
    table: Mutex<Table>,
    pressure: watch::Sender<bool>,
    /// Told when a closing connection's socket is dropped (one waiter: the accept loop).
    closed: Notify,
}

#[derive(Default)]
struct Table {
    entries: HashMap<u64, Entry>,
    /// The idle connections, oldest first: the order key (from `next`) to the connection's id.
    idle: BTreeMap<u64, u64>,
    /// Entries told to close whose socket is still open.
    closing: usize,
    /// Of those, the ones finishing a request that arrived as they were told.
    finishing: usize,
    /// A pressure change to log once the lock is released.
    pressure_change: Option<(bool, usize)>,
    next: u64,
    pressure: bool,
}

struct Entry {
    /// Requests in progress (HTTP/1: at most one, but a pipelining client can overlap the end
    /// of one response with the next head).
    busy: u32,
    /// While idle: its key in `Table::idle` and since when.
    idle: Option<(u64, Instant)>,
    /// Whether a request has been served on it (keep-alive timeout, not header-read).
    served: bool,
    /// Told to close (evicted or timed out): no longer idle, not yet dropped.
    closing: bool,
    evicted: Arc<Notify>,
}

/// A connection refused at the cap (every held connection busy); already counted.
#[derive(Debug)]
pub struct Refused;

impl Connections {
    /// A table for at most `cap` connections (at least 1) of the listener named `what` in log
    /// lines (the pressure turning on and off). `on_close` counts what the listener closes
    /// itself.
    pub fn new(
        what: &'static str,
        cap: usize,
        timeouts: Timeouts,
        on_close: impl Fn(Cause) + Send + Sync + 'static,
    ) -> Self {
        Connections(Arc::new(Shared {
            what,
            cap: cap.max(1),
            timeouts,
            on_close: Box::new(on_close),
            table: Mutex::new(Table::default()),
            pressure: watch::Sender::new(false),
            closed: Notify::new(),
        }))
    }

    /// Admits a just-accepted connection ([`decide`]): at the cap evicts the oldest idle one
    /// (its task's [`Conn::closing`] resolves) and waits until its socket is closed, or
    /// refuses the new one if every held one is busy. The returned [`Conn`] releases its place
    /// when dropped.
    pub async fn admit(&self) -> Result<Conn, Refused> {
        let shared = &self.0;
        loop {
            {
                let mut table = shared.lock();
                let held = table.entries.len();
                match decide(held, table.idle.len(), table.closing, table.finishing, shared.cap) {
                    Decision::Hold => return Ok(shared.hold(&mut table)),
                    Decision::WaitForClose => {}
                    Decision::EvictOldestIdle => {
                        if let Some((_, victim)) = table.idle.pop_first() {
                            shared.close(&mut table, victim);
                            drop(table);
                            (shared.on_close)(Cause::EvictedIdle);
                        }
                    }
                    Decision::Refuse => {
                        drop(table);
                        (shared.on_close)(Cause::RefusedBusy);
                        return Err(Refused);
                    }
                }
            }
            // A permit stored by a close that came first makes this return at once.
            shared.closed.notified().await;
        }
    }

    /// Connections held now (busy and idle).
    pub fn held(&self) -> usize {
        self.0.lock().entries.len()
    }

    /// Connections told to close whose socket is still open.
    pub fn closing(&self) -> usize {
        self.0.lock().closing
    }

    /// Idle connections held now.
    pub fn idle(&self) -> usize {
        self.0.lock().idle.len()
    }

    /// Whether the idle timeouts are at their floor now.
    pub fn under_pressure(&self) -> bool {
        *self.0.pressure.borrow()
    }

    /// The cap in force.
    pub fn cap(&self) -> usize {
        self.0.cap
    }
}

impl Shared {
    /// The table, locked; a pressure change made meanwhile is logged once the lock is released.
    fn lock(&self) -> TableGuard<'_> {
        TableGuard {
            shared: self,
            guard: Some(self.table.lock().unwrap_or_else(|e| e.into_inner())),
        }
    }

    /// Enters a new idle connection.
    fn hold(self: &Arc<Self>, table: &mut Table) -> Conn {
        let id = table.next;
        let key = table.next + 1;
        table.next += 2;
        let evicted = Arc::new(Notify::new());
        table.idle.insert(key, id);
        table.entries.insert(
            id,
            Entry {
                busy: 0,
                idle: Some((key, Instant::now())),
                served: false,
                closing: false,
                evicted: evicted.clone(),
            },
        );
        self.update_pressure(table);
        Conn {
            tracker: Tracker {
                shared: self.clone(),
                id,
            },
            evicted,
            pressure: self.pressure.subscribe(),
        }
    }

    /// Tells connection `id` (already out of `Table::idle`) to close; it keeps its place until
    /// its [`Conn`] is dropped.
    fn close(&self, table: &mut Table, id: u64) {
        if let Some(entry) = table.entries.get_mut(&id) {
            entry.idle = None;
            entry.closing = true;
            entry.evicted.notify_one();
            table.closing += 1;
        }
        self.update_pressure(table);
    }

    /// Turns the pressure on or off by [`under_pressure`] (waking every connection waiting on
    /// [`Conn::closing`]); the log line waits for the lock's release ([`TableGuard`]).
    fn update_pressure(&self, table: &mut Table) {
        let idle = table.idle.len();
        let now = under_pressure(idle, self.cap, table.pressure);
        if now != table.pressure {
            table.pressure = now;
            self.pressure.send_replace(now);
            table.pressure_change = Some((now, idle));
        }
    }

    /// The log line of a pressure change `(on, idle connections then)`.
    fn log_pressure(&self, (now, idle): (bool, usize)) {
        {
            let floor_ms = self.timeouts.under_pressure.as_millis() as u64;
            if now {
                tracing::warn!(listener = self.what, idle, cap = self.cap, floor_ms, "connection pressure: more than half the cap idle, idle connections closed after the floor");
            } else {
                tracing::info!(
                    listener = self.what,
                    idle,
                    cap = self.cap,
                    "connection pressure over: idle timeouts back to normal"
                );
            }
        }
    }
}

/// The locked table: derefs to it; on drop releases the lock, then logs a pressure change made
/// meanwhile (no log line is written under the lock every request takes).
struct TableGuard<'a> {
    shared: &'a Shared,
    guard: Option<MutexGuard<'a, Table>>,
}

impl std::ops::Deref for TableGuard<'_> {
    type Target = Table;

    fn deref(&self) -> &Table {
        self.guard.as_ref().expect("held until dropped")
    }
}

impl std::ops::DerefMut for TableGuard<'_> {
    fn deref_mut(&mut self) -> &mut Table {
        self.guard.as_mut().expect("held until dropped")
    }
}

impl Drop for TableGuard<'_> {
    fn drop(&mut self) {
        let change = self.guard.as_mut().and_then(|t| t.pressure_change.take());
        self.guard = None;
        if let Some(change) = change {
            self.shared.log_pressure(change);
        }
    }
}

/// One held connection, owned by its task: wait on [`Conn::closing`] beside the connection
/// and drop both when it resolves. Dropping it releases the place.
pub struct Conn {
    tracker: Tracker,
    evicted: Arc<Notify>,
    pressure: watch::Receiver<bool>,
}

/// What a connection's service holds to mark requests busy ([`Tracker::request`]).
#[derive(Clone)]
pub struct Tracker {
    shared: Arc<Shared>,
    id: u64,
}

/// A request in progress: its connection is busy until this is dropped (with the response
/// body, see [`track`]).
pub struct Busy {
    shared: Arc<Shared>,
    id: u64,
    closing: bool,
}

impl Busy {
    /// The connection was told to close as this request arrived: answer it with
    /// `Connection: close` (the socket closes after the answer).
    pub fn closing(&self) -> bool {
        self.closing
    }
}

/// Where a connection stands, for [`Conn::closing`].
enum Standing {
    /// No longer in the table (evicted, or timed out by an earlier check).
    Gone,
    /// A request in progress: it cannot become idle before `now`, so its deadline is at least
    /// `now + limit`.
    Busy(Duration),
    /// Idle until this instant.
    IdleUntil(Instant),
}

impl Conn {
    /// The handle its service uses to mark requests busy.
    pub fn tracker(&self) -> Tracker {
        self.tracker.clone()
    }

    /// Resolves when the connection must be closed: evicted for a new connection, or idle past
    /// its [`idle_limit`] (then counted as `idle_timeout` and its place released). Never while
    /// a request is in progress.
    pub async fn closing(&mut self) {
        loop {
            let deadline = match self.standing() {
                Standing::Gone => return,
                Standing::Busy(limit) => Instant::now() + limit,
                Standing::IdleUntil(deadline) => deadline,
            };
            tokio::select! {
                () = self.evicted.notified() => return,
                // The sender lives in `Shared`, which this connection holds: never an error.
                _ = self.pressure.changed() => {}
                () = tokio::time::sleep_until(deadline) => {}
            }
        }
    }

    /// Whether a request is in progress on it (one that raced its eviction, once
    /// [`Conn::closing`] resolved): then poll the connection on, up to [`FINISH_PATIENCE`],
    /// so that the answer (with `Connection: close`) reaches the client.
    pub fn finishing(&self) -> bool {
        let table = self.tracker.shared.lock();
        table.entries.get(&self.tracker.id).is_some_and(|e| e.busy > 0)
    }

    /// Checks the connection's idle time, closing it (counted) if it ran out.
    fn standing(&self) -> Standing {
        let shared = &self.tracker.shared;
        let mut table = shared.lock();
        let pressure = table.pressure;
        let Some(entry) = table.entries.get(&self.tracker.id).filter(|e| !e.closing) else {
            return Standing::Gone;
        };
        let limit = idle_limit(&shared.timeouts, entry.served, pressure);
        let Some((key, since)) = entry.idle else {
            return Standing::Busy(limit);
        };
        let deadline = since + limit;
        if Instant::now() < deadline {
            return Standing::IdleUntil(deadline);
        }
        table.idle.remove(&key);
        shared.close(&mut table, self.tracker.id);
        drop(table);
        (shared.on_close)(Cause::IdleTimeout);
        Standing::Gone
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        let shared = &self.tracker.shared;
        let mut table = shared.lock();
        if let Some(entry) = table.entries.remove(&self.tracker.id) {
            if let Some((key, _)) = entry.idle {
                table.idle.remove(&key);
            }
            if entry.closing {
                table.closing -= 1;
                if entry.busy > 0 {
                    table.finishing -= 1;
                }
                shared.closed.notify_one();
            }
            shared.update_pressure(&mut table);
        }
    }
}

impl Tracker {
    /// Marks the connection busy for a request whose head has just been read. On a connection
    /// told to close a moment ago (its head raced the eviction or timeout) the request is still
    /// served, to the end ([`Conn::finish`]): [`Busy::closing`] says to answer with
    /// `Connection: close`. `None` only once the connection is gone.
    pub fn request(&self) -> Option<Busy> {
        let shared = &self.shared;
        let mut table = shared.lock();
        let entry = table.entries.get_mut(&self.id)?;
        entry.busy += 1;
        entry.served = true;
        let closing = entry.closing;
        let first_on_closing = closing && entry.busy == 1;
        if let Some((key, _)) = entry.idle.take() {
            table.idle.remove(&key);
            shared.update_pressure(&mut table);
        }
        if first_on_closing {
            // No longer a close to wait for: an admission waiting on it decides again.
            table.finishing += 1;
            shared.closed.notify_one();
        }
        Some(Busy {
            shared: shared.clone(),
            id: self.id,
            closing,
        })
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        let shared = &self.shared;
        let mut table = shared.lock();
        let key = table.next;
        let Some(entry) = table.entries.get_mut(&self.id) else {
            return;
        };
        entry.busy = entry.busy.saturating_sub(1);
        if entry.closing {
            if entry.busy == 0 {
                table.finishing -= 1;
            }
            return;
        }
        if entry.busy == 0 && entry.idle.is_none() {
            entry.idle = Some((key, Instant::now()));
            table.next += 1;
            table.idle.insert(key, self.id);
            shared.update_pressure(&mut table);
        }
    }
}

/// A response body that keeps its connection busy until hyper has taken its last frame (or
/// dropped it): the [`Busy`] goes with the body.
pub struct Tracked<B> {
    body: B,
    _busy: Option<Busy>,
}

/// Wraps `response`'s body so that the connection stays busy until the body has been sent; on
/// a connection told to close ([`Busy::closing`]), adds `Connection: close`.
pub fn track<B>(mut response: hyper::Response<B>, busy: Option<Busy>) -> hyper::Response<Tracked<B>> {
    if busy.as_ref().is_some_and(Busy::closing) {
        response.headers_mut().insert(
            hyper::header::CONNECTION,
            hyper::header::HeaderValue::from_static("close"),
        );
    }
    response.map(|body| Tracked { body, _busy: busy })
}

impl<B: Body + Unpin> Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// The pause after a failed `accept` (out of file descriptors, say), before the next try: the
/// pending connections wait in the kernel's backlog rather than spin the loop.
pub const ACCEPT_PAUSE: Duration = Duration::from_millis(100);

/// A listener's accept loop half: [`Acceptor::accept`] returns the next connection, pausing
/// [`ACCEPT_PAUSE`] after each failure, and writes one log line when a run of failures (a
/// pause) starts and one when accepting works again, not one per failure.
pub struct Acceptor {
    listener: tokio::net::TcpListener,
    what: &'static str,
    on_error: Box<dyn Fn() + Send + Sync>,
    /// The run of failures in progress: when it started and how many.
    failing: Option<(Instant, u64)>,
}

impl Acceptor {
    /// Accepts on `listener` (`what` names it in the log); `on_error` counts each failure.
    pub fn new(
        listener: tokio::net::TcpListener,
        what: &'static str,
        on_error: impl Fn() + Send + Sync + 'static,
    ) -> Self {
        Acceptor {
            listener,
            what,
            on_error: Box::new(on_error),
            failing: None,
        }
    }

    /// The listener's address.
    pub fn local_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.listener.local_addr()
    }

    /// The next connection and its peer address; failures are counted, logged once per pause
    /// and retried after [`ACCEPT_PAUSE`].
    pub async fn accept(&mut self) -> (tokio::net::TcpStream, std::net::SocketAddr) {
        loop {
            match self.listener.accept().await {
                Ok(accepted) => {
                    if let Some((since, failures)) = self.failing.take() {
                        tracing::info!(
                            listener = self.what,
                            failures,
                            paused_ms = since.elapsed().as_millis() as u64,
                            "accepting connections again"
                        );
                    }
                    return accepted;
                }
                Err(error) => {
                    (self.on_error)();
                    match &mut self.failing {
                        Some((_, failures)) => *failures += 1,
                        None => {
                            tracing::warn!(
                                listener = self.what,
                                %error,
                                pause_ms = ACCEPT_PAUSE.as_millis() as u64,
                                "accept failed: pausing accepts (one line per pause; the accept-errors counter counts each failure)"
                            );
                            self.failing = Some((Instant::now(), 1));
                        }
                    }
                    tokio::time::sleep(ACCEPT_PAUSE).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[test]
    fn admission_holds_below_the_cap_evicts_idle_at_it_and_refuses_only_when_all_are_busy() {
        // (held, idle, closing, finishing, cap) → decision
        let table = [
            ((0, 0, 0, 0, 10), Decision::Hold),
            ((9, 0, 0, 0, 10), Decision::Hold),
            ((9, 9, 0, 0, 10), Decision::Hold),
            ((9, 0, 3, 0, 10), Decision::Hold),
            ((10, 1, 0, 0, 10), Decision::EvictOldestIdle),
            ((10, 10, 0, 0, 10), Decision::EvictOldestIdle),
            // One told to close is still open: wait for it rather than evict another.
            ((10, 5, 1, 0, 10), Decision::WaitForClose),
            ((10, 0, 1, 0, 10), Decision::WaitForClose),
            ((10, 0, 0, 0, 10), Decision::Refuse),
            // One told to close finishes a request that raced it: it delays nobody.
            ((10, 0, 1, 1, 10), Decision::Hold),
            ((11, 3, 2, 1, 10), Decision::WaitForClose),
            ((11, 3, 1, 1, 10), Decision::EvictOldestIdle),
            // ... up to the spare.
            (
                (10 + FINISHING_SPARE, 0, FINISHING_SPARE, FINISHING_SPARE, 10),
                Decision::Refuse,
            ),
            (
                (
                    10 + FINISHING_SPARE + 1,
                    2,
                    FINISHING_SPARE + 1,
                    FINISHING_SPARE + 1,
                    10,
                ),
                Decision::WaitForClose,
            ),
            // A cap below what is held (never here, but the rule still holds).
            ((12, 0, 0, 0, 10), Decision::Refuse),
            ((12, 3, 0, 0, 10), Decision::EvictOldestIdle),
        ];
        for ((held, idle, closing, finishing, cap), expected) in table {
            assert_eq!(
                decide(held, idle, closing, finishing, cap),
                expected,
                "held {held}, idle {idle}, closing {closing}, finishing {finishing}, cap {cap}"
            );
        }
    }

    #[test]
    fn pressure_goes_on_above_half_the_cap_and_off_at_a_quarter() {
        // (idle, cap, was) → is
        let table = [
            ((0, 100, false), false),
            ((50, 100, false), false),
            ((51, 100, false), true),
            ((51, 100, true), true),
            ((26, 100, true), true),
            ((25, 100, true), false),
            ((0, 100, true), false),
            ((1, 1, false), true),
        ];
        for ((idle, cap, was), expected) in table {
            assert_eq!(
                under_pressure(idle, cap, was),
                expected,
                "idle {idle}, cap {cap}, was {was}"
            );
        }
    }

    #[test]
    fn the_idle_limit_is_header_read_then_keep_alive_and_the_floor_under_pressure() {
        let timeouts = Timeouts {
            header_read: Duration::from_secs(10),
            keep_alive: Duration::from_secs(75),
            under_pressure: Duration::from_secs(1),
        };
        let short = Timeouts {
            header_read: Duration::from_millis(500),
            ..timeouts
        };
        // (timeouts, served, pressure) → limit
        let table = [
            ((timeouts, false, false), Duration::from_secs(10)),
            ((timeouts, true, false), Duration::from_secs(75)),
            ((timeouts, false, true), Duration::from_secs(1)),
            ((timeouts, true, true), Duration::from_secs(1)),
            // The floor never lengthens a shorter normal value.
            ((short, false, true), Duration::from_millis(500)),
        ];
        for ((timeouts, served, pressure), expected) in table {
            assert_eq!(
                idle_limit(&timeouts, served, pressure),
                expected,
                "served {served}, pressure {pressure}"
            );
        }
    }

    static CLOSED: [AtomicUsize; 3] = [AtomicUsize::new(0), AtomicUsize::new(0), AtomicUsize::new(0)];

    fn count(cause: Cause) {
        CLOSED[cause as usize].fetch_add(1, Ordering::Relaxed);
    }

    fn timeouts() -> Timeouts {
        Timeouts {
            header_read: Duration::from_secs(10),
            keep_alive: Duration::from_secs(75),
            under_pressure: Duration::from_secs(1),
        }
    }

    /// Admits a connection at the cap: the evicted one (`victim`) is told to close, and the new
    /// one is held once the victim's task has dropped it.
    async fn admit_evicting(connections: &Connections, mut victim: Conn) -> Conn {
        let admitting = tokio::spawn({
            let connections = connections.clone();
            async move { connections.admit().await }
        });
        tokio::time::timeout(Duration::from_millis(1), victim.closing())
            .await
            .expect("the victim is told to close");
        assert_eq!(connections.closing(), 1);
        assert!(
            !admitting.is_finished(),
            "held before the victim's socket is closed"
        );
        drop(victim);
        admitting.await.unwrap().unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_that_races_its_eviction_is_served_with_connection_close_and_delays_nobody() {
        let connections = Connections::new("test", 1, timeouts(), count);
        let mut raced = connections.admit().await.unwrap();
        let admitting = tokio::spawn({
            let connections = connections.clone();
            async move { connections.admit().await }
        });
        raced.closing().await;
        // Its head arrived as it was evicted: served, answered `Connection: close`.
        let busy = raced.tracker().request().expect("served");
        assert!(busy.closing());
        assert!(raced.finishing());
        let response = track(hyper::Response::new(()), Some(busy));
        assert_eq!(response.headers()[hyper::header::CONNECTION], "close");
        // The new connection is held meanwhile: one socket over the cap, within the spare.
        let new = admitting.await.unwrap().unwrap();
        assert_eq!(connections.held(), 2);
        drop(response);
        assert!(!raced.finishing());
        drop(raced);
        assert_eq!((connections.held(), connections.closing()), (1, 0));
        drop(new);
    }

    #[tokio::test(start_paused = true)]
    async fn at_the_cap_the_oldest_idle_is_evicted_a_busy_one_never_and_all_busy_refuses() {
        let connections = Connections::new("test", 3, timeouts(), count);
        let first = connections.admit().await.unwrap();
        let second = connections.admit().await.unwrap();
        let third = connections.admit().await.unwrap();
        // The second is busy, the third served a request and is idle again (the newest idle).
        let busy = second.tracker().request().unwrap();
        drop(third.tracker().request().unwrap());
        let evicted_before = CLOSED[Cause::EvictedIdle as usize].load(Ordering::Relaxed);

        let fourth = admit_evicting(&connections, first).await;
        assert_eq!(
            CLOSED[Cause::EvictedIdle as usize].load(Ordering::Relaxed),
            evicted_before + 1
        );
        assert_eq!(connections.held(), 3);
        // Then the third (idle longer than the fourth), then the fourth; the busy second stays.
        let fifth = admit_evicting(&connections, third).await;
        let sixth = admit_evicting(&connections, fourth).await;
        let _busy = (
            fifth.tracker().request().unwrap(),
            sixth.tracker().request().unwrap(),
        );
        // The second, fifth and sixth busy: a seventh is refused.
        let refused_before = CLOSED[Cause::RefusedBusy as usize].load(Ordering::Relaxed);
        assert!(connections.admit().await.is_err());
        assert_eq!(
            CLOSED[Cause::RefusedBusy as usize].load(Ordering::Relaxed),
            refused_before + 1
        );
        assert_eq!(connections.held(), 3);
        drop(busy);
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_connection_times_out_at_the_header_read_timeout_then_the_floor_under_pressure() {
        let connections = Connections::new("test", 4, timeouts(), count);
        let mut quiet = connections.admit().await.unwrap();
        let started = Instant::now();
        quiet.closing().await;
        assert_eq!(started.elapsed(), Duration::from_secs(10));
        // Its place is kept until the socket is dropped.
        assert_eq!((connections.held(), connections.closing()), (1, 1));
        drop(quiet);
        assert_eq!((connections.held(), connections.closing()), (0, 0));

        // `a` waits on its 10 s deadline; 3 s later three of four are idle: pressure, and the
        // waiting `a` is woken to find itself past the 1 s floor.
        let mut a = connections.admit().await.unwrap();
        let started = Instant::now();
        let waiting = tokio::spawn(async move {
            a.closing().await;
            a
        });
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert!(!waiting.is_finished());
        let b = connections.admit().await.unwrap();
        let mut c = connections.admit().await.unwrap();
        assert!(connections.under_pressure());
        let a = waiting.await.unwrap();
        assert_eq!(started.elapsed(), Duration::from_secs(3));
        drop(a);
        // Two of four idle: still under pressure (off only at a quarter).
        assert!(connections.under_pressure());
        // One of four: off, and the floor no longer applies: `c`, held at 3 s, lasts its 10 s.
        drop(b);
        assert!(!connections.under_pressure());
        c.closing().await;
        assert_eq!(started.elapsed(), Duration::from_secs(13));
    }

    #[tokio::test(start_paused = true)]
    async fn a_busy_connection_is_never_timed_out_and_after_it_the_keep_alive_timeout_counts() {
        let connections = Connections::new("test", 100, timeouts(), count);
        let mut conn = connections.admit().await.unwrap();
        let busy = conn.tracker().request().unwrap();
        assert!(tokio::time::timeout(Duration::from_secs(600), conn.closing())
            .await
            .is_err());
        drop(busy);
        let idle_from = Instant::now();
        conn.closing().await;
        assert_eq!(idle_from.elapsed(), Duration::from_secs(75));
    }
}
