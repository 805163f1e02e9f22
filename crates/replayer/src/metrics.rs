//! dlq-replayer's metrics, all defined here: `cdp_dlq_replayer_<what>_<unit>`.

use metrics::counter;

/// DLQ records by outcome: `replayed`, `still_failing`, `filtered`, `undecodable`.
pub(crate) fn record(outcome: &'static str) {
    counter!("cdp_dlq_replayer_records_total", "outcome" => outcome).increment(1);
}

/// Records that still fail, by today's reason.
pub(crate) fn still_failing(reason: &'static str) {
    counter!("cdp_dlq_replayer_still_failing_total", "reason" => reason).increment(1);
}
