//! The producer's one state, [`Health`], and its transitions, written down as a pure function
//! ([`Health::next`]) and tested as a table.
//!
//! ```text
//!   Delivering ── BrokersDown (no spool) ──────────────────▶ Unreachable(why)
//!   Delivering ── BrokersDown, Stalled (with a spool) ─────▶ Unreachable(why) + rebuild
//!   Delivering ── Failing / Fatal ─────────────────────────▶ Rebuilding(why) + rebuild
//!   Rebuilding ── Rebuilt ─────────────────────────────────▶ Unreachable(why)
//!   Unreachable ── ProbeOk, Acknowledged ──────────────────▶ Delivering
//!   any ── Close ──▶ Closed (final)
//! ```
//!
//! A step's `rebuild` is separate from its state: a producer that stopped delivering (a stall,
//! lost brokers) is replaced to take back what it holds while Kafka stays `Unreachable`; one
//! that failed (fatal, failing every record) is `Rebuilding`, not ready until it is replaced.
//!
//! Invariants: only the supervisor thread changes the state ([`HealthCell::set`]); everyone
//! else reads it. `Delivering` is entered only on evidence that Kafka takes records (the
//! start-up ping, a metadata probe, an acknowledgement), never on broker connection states,
//! which a hung broker keeps up. A stall or a failing producer with a spool to take its
//! records always means a rebuild, so what memory holds is never older than the ack window
//! for long.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Mutex;

/// Whether Kafka takes records now, and if not why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// Records are acknowledged within the ack window: events go to Kafka.
    Delivering,
    /// Kafka takes nothing now: events go to the spool (buffered mode) or are refused; a
    /// metadata probe every second looks for the way back.
    Unreachable(Why),
    /// A failed producer (fatal error, every record failing) is being replaced; what it held
    /// comes back and is spooled or sent again.
    Rebuilding(Why),
    /// Closed: nothing is taken any more.
    Closed,
}

/// Why Kafka is not delivering.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why {
    /// librdkafka lost every broker connection (`AllBrokersDown`).
    BrokersDown,
    /// A record waited longer than the ack window (a hung broker, say).
    Stalled,
    /// The producer failed every record, with errors a retry could fix, for a while
    /// (`ProducerFenced` after an epoch bump, say).
    Failing,
    /// The producer raised a fatal error (an idempotence error, say).
    Fatal,
}

/// What the supervisor observed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// librdkafka reported `AllBrokersDown`.
    BrokersDown,
    /// The oldest unacknowledged record is older than the ack window.
    Stalled,
    /// Every record failed for the rebuild-after time, none was acknowledged.
    Failing,
    /// The producer raised a fatal error.
    Fatal,
    /// A record was acknowledged.
    Acknowledged,
    /// The cluster answered a metadata request.
    ProbeOk,
    /// A new producer is in place; `reachable`: it got metadata.
    Rebuilt {
        /// The new producer's metadata request was answered.
        reachable: bool,
    },
    /// The producer is closing.
    Close,
}

/// The outcome of an event: the new state, and whether to replace the producer (taking back
/// what it holds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    /// The new state.
    pub health: Health,
    /// Replace the producer (its records come back and are re-routed).
    pub rebuild: bool,
}

impl Health {
    /// The transition for `event`. `spool`: a spool can take what a rebuild takes back (without
    /// one, a stall only marks Kafka unreachable: the records stay where they are).
    pub fn next(self, event: Event, spool: bool) -> Step {
        use Health::*;
        let stay = Step {
            health: self,
            rebuild: false,
        };
        let to = |health| Step {
            health,
            rebuild: false,
        };
        let rebuild = |why| Step {
            health: Rebuilding(why),
            rebuild: true,
        };
        // Kafka stopped taking records: the producer is replaced so that what it holds is
        // taken back (to the spool), while Kafka counts as unreachable throughout.
        let take_back = |why| Step {
            health: Unreachable(why),
            rebuild: true,
        };
        match (self, event) {
            (Closed, _) => stay,
            (_, Event::Close) => to(Closed),
            (Rebuilding(Why::Fatal), Event::Fatal) => stay,
            (_, Event::Fatal) => rebuild(Why::Fatal),
            (Rebuilding(why), Event::Rebuilt { reachable: false }) => to(Unreachable(why)),
            (Rebuilding(_), Event::Rebuilt { reachable: true }) => to(Delivering),
            (Rebuilding(_), _) => stay,
            (Delivering | Unreachable(_), Event::Stalled) if spool => take_back(Why::Stalled),
            (Delivering, Event::Stalled) => to(Unreachable(Why::Stalled)),
            (Delivering, Event::Failing) => rebuild(Why::Failing),
            // With a spool, what the producer holds is taken back at once, so that it is
            // spooled ahead of the events that come next.
            (Delivering, Event::BrokersDown) if spool => take_back(Why::BrokersDown),
            (Delivering, Event::BrokersDown) => to(Unreachable(Why::BrokersDown)),
            (Unreachable(_), Event::ProbeOk | Event::Acknowledged) => to(Delivering),
            (Delivering | Unreachable(_), _) => stay,
        }
    }

    /// True while events go to Kafka.
    pub fn is_delivering(self) -> bool {
        self == Health::Delivering
    }

    fn code(self) -> u8 {
        use Health::*;
        match self {
            Delivering => 0,
            Unreachable(why) => 1 + why as u8,
            Rebuilding(why) => 5 + why as u8,
            Closed => 9,
        }
    }

    fn from_code(code: u8) -> Health {
        const WHY: [Why; 4] = [Why::BrokersDown, Why::Stalled, Why::Failing, Why::Fatal];
        match code {
            0 => Health::Delivering,
            1..=4 => Health::Unreachable(WHY[usize::from(code - 1)]),
            5..=8 => Health::Rebuilding(WHY[usize::from(code - 5)]),
            _ => Health::Closed,
        }
    }

    /// A short label for logs and the `state` metric.
    pub fn label(self) -> &'static str {
        match self {
            Health::Delivering => "delivering",
            Health::Unreachable(_) => "unreachable",
            Health::Rebuilding(_) => "rebuilding",
            Health::Closed => "closed",
        }
    }
}

impl Why {
    /// The metric label and log word.
    pub fn label(self) -> &'static str {
        match self {
            Why::BrokersDown => "brokers_down",
            Why::Stalled => "stalled",
            Why::Failing => "failing",
            Why::Fatal => "fatal",
        }
    }
}

/// The published state: one writer (the supervisor), lock-free readers (every request).
pub(crate) struct HealthCell {
    code: AtomicU8,
    /// Serialises writers (the supervisor, and `close`).
    write: Mutex<()>,
    /// Woken at every change, for those waiting on one ([`HealthCell::until_not_delivering`]).
    changed: tokio::sync::Notify,
}

impl HealthCell {
    pub(crate) fn new(health: Health) -> Self {
        HealthCell {
            code: AtomicU8::new(health.code()),
            write: Mutex::new(()),
            changed: tokio::sync::Notify::new(),
        }
    }

    pub(crate) fn get(&self) -> Health {
        Health::from_code(self.code.load(Ordering::Acquire))
    }

    /// Applies `event`; returns the step taken and the state before it.
    pub(crate) fn apply(&self, event: Event, spool: bool) -> (Health, Step) {
        let _writer = self.write.lock().unwrap_or_else(|e| e.into_inner());
        let before = self.get();
        let step = before.next(event, spool);
        self.code.store(step.health.code(), Ordering::Release);
        if step.health != before {
            self.changed.notify_waiters();
        }
        (before, step)
    }

    /// Resolves once the state is not [`Health::Delivering`] (at once if it is not now).
    pub(crate) async fn until_not_delivering(&self) {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            // Registered before the state is read: a change in between still wakes it.
            changed.as_mut().enable();
            if !self.get().is_delivering() {
                return;
            }
            changed.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Event::*;
    use super::Health::*;
    use super::*;

    #[test]
    fn transitions() {
        let w = Why::Stalled;
        #[rustfmt::skip]
        let table: &[(Health, Event, bool, Health, bool)] = &[
            // from, event, spool, to, rebuild
            (Delivering, BrokersDown, true, Unreachable(Why::BrokersDown), true),
            (Delivering, BrokersDown, false, Unreachable(Why::BrokersDown), false),
            (Delivering, Stalled, true, Unreachable(Why::Stalled), true),
            (Delivering, Stalled, false, Unreachable(Why::Stalled), false),
            (Unreachable(Why::BrokersDown), Stalled, true, Unreachable(Why::Stalled), true),
            (Unreachable(Why::BrokersDown), Stalled, false, Unreachable(Why::BrokersDown), false),
            (Delivering, Failing, true, Rebuilding(Why::Failing), true),
            (Delivering, Failing, false, Rebuilding(Why::Failing), true),
            (Unreachable(w), Failing, true, Unreachable(w), false),
            (Delivering, Fatal, false, Rebuilding(Why::Fatal), true),
            (Unreachable(w), Fatal, true, Rebuilding(Why::Fatal), true),
            (Rebuilding(Why::Stalled), Fatal, true, Rebuilding(Why::Fatal), true),
            (Rebuilding(Why::Fatal), Fatal, true, Rebuilding(Why::Fatal), false),
            (Rebuilding(w), Rebuilt { reachable: true }, true, Delivering, false),
            (Rebuilding(w), Rebuilt { reachable: false }, true, Unreachable(w), false),
            (Rebuilding(w), Stalled, true, Rebuilding(w), false),
            (Rebuilding(w), ProbeOk, true, Rebuilding(w), false),
            (Rebuilding(w), BrokersDown, true, Rebuilding(w), false),
            (Unreachable(w), ProbeOk, true, Delivering, false),
            (Unreachable(w), Acknowledged, true, Delivering, false),
            (Unreachable(w), BrokersDown, true, Unreachable(w), false),
            (Delivering, ProbeOk, true, Delivering, false),
            (Delivering, Acknowledged, true, Delivering, false),
            (Delivering, Rebuilt { reachable: false }, true, Delivering, false),
            (Delivering, Close, true, Closed, false),
            (Rebuilding(w), Close, true, Closed, false),
            (Closed, ProbeOk, true, Closed, false),
            (Closed, Fatal, true, Closed, false),
        ];
        for &(from, event, spool, to, rebuild) in table {
            assert_eq!(
                from.next(event, spool),
                Step { health: to, rebuild },
                "{from:?} + {event:?} (spool: {spool})"
            );
        }
    }

    #[test]
    fn every_state_survives_the_cell() {
        let whys = [Why::BrokersDown, Why::Stalled, Why::Failing, Why::Fatal];
        let states = [Delivering, Closed]
            .into_iter()
            .chain(whys.iter().map(|&w| Unreachable(w)))
            .chain(whys.iter().map(|&w| Rebuilding(w)));
        for state in states {
            assert_eq!(Health::from_code(state.code()), state);
        }
    }
}
