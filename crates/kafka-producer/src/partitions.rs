//! Which partitions of the producer's topics have no reachable leader: a pure function of
//! librdkafka's statistics, tested as a table. One partition failing is not Kafka failing:
//! the supervisor counts a stall only when no record at all is acknowledged within the ack
//! window, so the healthy partitions keep delivering while the failed one's records wait in
//! librdkafka (which sends them, in order, once a leader is back, or fails them after
//! `message.timeout.ms` into the retry topic or the spool). `/readyz` and
//! `<prefix>_kafka_partitions_failing{topic}` name them meanwhile.

use rdkafka::statistics::Statistics;

/// A topic's partition, as `/readyz` names it: `topic/partition`.
pub(crate) type Partition = (String, i32);

/// The partitions of `topics` in librdkafka's statistics whose leader is unknown or not `UP`
/// ([`failing`]).
pub(crate) fn failing_in(stats: &Statistics, topics: &[&str]) -> Vec<Partition> {
    let up: Vec<i32> = stats
        .brokers
        .values()
        .filter(|b| b.state == "UP")
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
