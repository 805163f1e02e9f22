//! retry-forwarder's metrics, all defined here: `cdp_retry_forwarder_<what>_<unit>`.

use event_model::DlqReason;
use metrics::{counter, gauge};

/// Records forwarded to their target topic and acknowledged.
pub(crate) fn forwarded() {
    counter!("cdp_retry_forwarder_forwarded_total").increment(1);
}

/// Records whose forward failed and that went back to the retry topic.
pub(crate) fn requeued() {
    counter!("cdp_retry_forwarder_requeued_total").increment(1);
}

/// Records sent to the DLQ, by reason (`retries_exhausted`, `invalid_retry_record`).
pub(crate) fn dead_lettered(reason: DlqReason) {
    counter!("cdp_retry_forwarder_dlq_total", "reason" => reason.as_str()).increment(1);
}

/// Writes that failed everywhere; the record stays and is tried again.
pub(crate) fn stalled() {
    counter!("cdp_retry_forwarder_stalled_total").increment(1);
}

/// Records held until their not-before time (one per paused partition at most).
pub(crate) fn held(n: usize) {
    gauge!("cdp_retry_forwarder_held_records").set(n as f64);
}

/// Consumer lag of one retry-topic partition, from librdkafka's statistics.
pub(crate) fn lag(partition: i32, lag: i64) {
    gauge!("cdp_retry_forwarder_consumer_lag_records", "partition" => partition.to_string()).set(lag as f64);
}

/// Retry-topic partitions assigned to this instance.
pub(crate) fn assigned(n: usize) {
    gauge!("cdp_retry_forwarder_assigned_partitions").set(n as f64);
}
