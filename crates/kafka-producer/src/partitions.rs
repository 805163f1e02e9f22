//! Which partitions of the producer's topics have no reachable leader: a pure function of
//! librdkafka's statistics, tested as a table. A leader is reachable when its broker is `UP`
//! and answering: a broker with requests awaiting a response and nothing received for the
//! ack window is hung (connections up, no answers) and leads no reachable partition
//! ([`answering`]). One partition failing is not Kafka failing:
//! the supervisor counts a stall only when no record at all is acknowledged within the ack
//! window, so the healthy partitions keep delivering while the failed one's records wait in
//! librdkafka (which sends them, in order, once a leader is back, or fails them after
//! `message.timeout.ms` into the retry topic or the spool). `/readyz` and
//! `<prefix>_kafka_partitions_failing{topic}` name them meanwhile.

use std::time::Duration;

use rdkafka::statistics::Statistics;

/// A topic's partition, as `/readyz` names it: `topic/partition`.
pub(crate) type Partition = (String, i32);

/// The partitions of `topics` in librdkafka's statistics whose leader is unknown, not `UP`
/// or not answering within `hung_after` ([`answering`], [`failing`]).
pub(crate) fn failing_in(stats: &Statistics, topics: &[&str], hung_after: Duration) -> Vec<Partition> {
    let up: Vec<i32> = stats
        .brokers
        .values()
        .filter(|b| answering(&b.state, b.waitresp_cnt, b.rxidle, b.stateage, hung_after))
        .map(|b| b.nodeid)
        .collect();
    let partitions: Vec<(&str, i32, i32)> = topics
        .iter()
        .filter_map(|t| stats.topics.get(*t).map(|topic| (*t, topic)))
        .flat_map(|(name, topic)| {
            topic
                .partitions
                .values()
                .map(move |p| (name, p.partition, p.leader))
        })
        .collect();
    failing(&up, &partitions)
}

/// Whether a broker (its librdkafka statistics: `state`, `waitresp_cnt` requests awaiting a
/// response, `rxidle_us` µs since the last receive or -1 before the first, `stateage_us` µs
/// in that state) can lead a reachable partition: `UP`, and not hung, i.e. not waiting on
/// answers while nothing came in for `hung_after` (the ack window).
pub(crate) fn answering(
    state: &str,
    waitresp_cnt: i64,
    rxidle_us: i64,
    stateage_us: i64,
    hung_after: Duration,
) -> bool {
    let silent_us = if rxidle_us >= 0 { rxidle_us } else { stateage_us };
    let hung = waitresp_cnt > 0 && u128::try_from(silent_us).unwrap_or(0) >= hung_after.as_micros();
    state == "UP" && !hung
}

/// Of `partitions` (`(topic, partition, leader)`), those whose leader is unknown (`-1`) or
/// not among the brokers `up`, sorted. librdkafka's internal unassigned partition (`-1`) is
/// not one of them.
pub(crate) fn failing(up: &[i32], partitions: &[(&str, i32, i32)]) -> Vec<Partition> {
    let mut failing: Vec<Partition> = partitions
        .iter()
        .filter(|(_, p, leader)| *p >= 0 && (*leader < 0 || !up.contains(leader)))
        .map(|(t, p, _)| (t.to_string(), *p))
        .collect();
    failing.sort();
    failing
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `(topic, partition, leader)`.
    type Led<'a> = (&'a str, i32, i32);

    #[test]
    fn a_broker_answers_when_up_and_not_silent_on_pending_requests_for_the_ack_window() {
        let window = Duration::from_secs(5);
        let s = 1_000_000;
        #[rustfmt::skip]
        let table = [
            // state, waiting for answers, µs since a receive, µs in the state → answering
            (("UP", 0, 60 * s, 60 * s), true),     // idle: nothing asked, nothing to hear
            (("UP", 3, s, 60 * s), true),          // answers coming
            (("UP", 3, 5 * s - 1, 60 * s), true),
            (("UP", 3, 5 * s, 60 * s), false),     // hung: asked, silent for the window
            (("UP", 1, -1, 6 * s), false),         // never answered since connecting
            (("UP", 1, -1, s), true),              // just connected
            (("DOWN", 0, 0, 0), false),
            (("CONNECT", 0, -1, 0), false),
        ];
        for ((state, waiting, rxidle, age), expected) in table {
            assert_eq!(
                answering(state, waiting, rxidle, age, window),
                expected,
                "{state} {waiting} {rxidle} {age}"
            );
        }
    }

    #[test]
    fn failing_partitions() {
        let spread = [
            ("in", -1, -1),
            ("in", 0, 1),
            ("in", 1, 2),
            ("in", 2, 3),
            ("dlq", 0, 1),
        ];
        let named =
            |p: &[(&str, i32)]| -> Vec<Partition> { p.iter().map(|&(t, p)| (t.to_string(), p)).collect() };
        #[rustfmt::skip]
        let table: Vec<(&[i32], &[Led], Vec<Partition>)> = vec![
            // brokers up, (topic, partition, leader), failing
            (&[1, 2, 3], &spread, vec![]),
            (&[1, 2], &spread, named(&[("in", 2)])),
            (&[1], &spread, named(&[("in", 1), ("in", 2)])),
            (&[2, 3], &spread, named(&[("dlq", 0), ("in", 0)])),
            (&[], &spread, named(&[("dlq", 0), ("in", 0), ("in", 1), ("in", 2)])),
            // No leader known.
            (&[1, 2, 3], &[("in", 0, 1), ("in", 1, -1)], named(&[("in", 1)])),
            (&[1, 2, 3], &[], vec![]),
        ];
        for (up, partitions, expected) in table {
            assert_eq!(failing(up, partitions), expected, "up {up:?}, {partitions:?}");
        }
    }
}
