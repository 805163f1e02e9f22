//! The age of the oldest record the producer holds unacknowledged: the memory-only window.
//!
//! A hung broker keeps its TCP connections up, so librdkafka's broker states say nothing; what
//! tells is that records stop being acknowledged. Every record enqueued takes a ticket (the
//! current 250 ms slot of a ring) and gives it back when its delivery report arrives (success
//! or failure). The oldest slot still holding tickets gives the age of the oldest
//! unacknowledged record, within one slot. Two atomic additions per record; the supervisor
//! scans the ring every tick.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The width of one slot.
const SLOT: Duration = Duration::from_millis(250);

/// Unacknowledged records by the slot they were enqueued in.
pub(crate) struct Unacked {
    start: Instant,
    slots: Box<[AtomicU64]>,
    /// Tickets out: records enqueued and not reported.
    count: AtomicU64,
    /// Their key and value bytes.
    bytes: AtomicU64,
}

/// What a record carries from [`Unacked::enter`] to [`Unacked::leave`]: its slot and bytes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ticket(u64, u32);

impl Unacked {
    /// A ring covering at least twice `window` (and 16 s), so that ages up to the window are
    /// exact; a record older than the ring would alias a younger slot, but it was reported
    /// stalled long before.
    pub(crate) fn new(window: Duration) -> Self {
        let slots = (2 * window.as_millis() / SLOT.as_millis()).max(64) as usize;
        Unacked {
            start: Instant::now(),
            slots: (0..slots).map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
        }
    }

    fn now(&self) -> u64 {
        (self.start.elapsed().as_millis() / SLOT.as_millis()) as u64
    }

    fn slot(&self, index: u64) -> &AtomicU64 {
        &self.slots[(index % self.slots.len() as u64) as usize]
    }

    /// A record of `bytes` (key and value) is being enqueued. Give the ticket back with
    /// [`Unacked::leave`], also when the enqueue fails.
    pub(crate) fn enter(&self, bytes: usize) -> Ticket {
        let index = self.now();
        let bytes = u32::try_from(bytes).unwrap_or(u32::MAX);
        self.slot(index).fetch_add(1, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(u64::from(bytes), Ordering::Relaxed);
        Ticket(index, bytes)
    }

    /// The record's delivery was reported (or its enqueue failed).
    pub(crate) fn leave(&self, ticket: Ticket) {
        self.slot(ticket.0).fetch_sub(1, Ordering::Relaxed);
        self.count.fetch_sub(1, Ordering::Relaxed);
        self.bytes.fetch_sub(u64::from(ticket.1), Ordering::Relaxed);
    }

    /// The key and value bytes of the records out.
    pub(crate) fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Records enqueued and not reported yet (librdkafka's own count also holds its queued
    /// statistics and log events).
    pub(crate) fn count(&self) -> usize {
        self.count.load(Ordering::Relaxed) as usize
    }

    /// How long the oldest unacknowledged record has waited (rounded down to a slot); `None`
    /// when none waits.
    pub(crate) fn oldest_age(&self) -> Option<Duration> {
        let now = self.now();
        let n = self.slots.len() as u64;
        (0..n.min(now + 1))
            .rev()
            .find(|age| self.slot(now - age).load(Ordering::Relaxed) > 0)
            .map(|age| SLOT * age as u32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_ticket_gives_the_age() {
        let window = Unacked::new(Duration::from_secs(5));
        assert_eq!(window.oldest_age(), None);
        let first = window.enter(10);
        let second = window.enter(20);
        assert_eq!(window.oldest_age(), Some(Duration::ZERO));
        assert_eq!((window.count(), window.bytes()), (2, 30));
        window.leave(first);
        assert_eq!(window.oldest_age(), Some(Duration::ZERO));
        window.leave(second);
        assert_eq!(window.oldest_age(), None);
        assert_eq!((window.count(), window.bytes()), (0, 0));
    }

    #[test]
    fn an_old_ticket_is_found_across_the_ring() {
        // A ring that started 100 s ago (it has wrapped around), with a ticket from 3 s ago.
        let mut window = Unacked::new(Duration::from_secs(5));
        window.start = Instant::now() - Duration::from_secs(100);
        let old = Ticket(window.now() - 12, 0);
        window.slot(old.0).fetch_add(1, Ordering::Relaxed);
        let new = window.enter(0);
        let age = window.oldest_age().unwrap();
        assert!(
            age >= Duration::from_millis(2750) && age <= Duration::from_secs(3),
            "{age:?}"
        );
        window.leave(old);
        assert!(window.oldest_age().unwrap() < Duration::from_millis(500));
        window.leave(new);
        assert_eq!(window.oldest_age(), None);
    }
}
