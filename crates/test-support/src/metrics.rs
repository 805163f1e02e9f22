//! Reading the Prometheus text exposition in tests: one series' value, the sum of a metric's
//! series, a scrape. The one place tests parse metrics text.

use std::time::Duration;

/// The value of `series` in `text`: a metric name with its labels exactly as exposed
/// (`cdp_ingest_events_total{type="track",outcome="accepted"}`), or a bare name for an
/// unlabelled metric. Matches the whole series, never a prefix (`x` is not `x_total` nor
/// `x{...}`). `None` when absent (a counter appears with its first increment).
pub fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}

/// [`value`], panicking with the text when the series is absent.
pub fn expect(text: &str, series: &str) -> f64 {
    value(text, series).unwrap_or_else(|| panic!("{series} missing from:\n{text}"))
}

/// The sum of every series of the metric `name` (any labels, or none) in `text`; 0 when there
/// is none.
pub fn sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The lines of `text` whose metric is one of `names` (any labels), for a failure message.
pub fn lines_of(text: &str, names: &[&str]) -> String {
    text.lines()
        .filter(|l| {
            names.iter().any(|name| {
                l.strip_prefix(name)
                    .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
            })
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// GETs `url` (a `/metrics` address) within 5 s and returns the text; `None` when it does not
/// answer (the process is gone, say).
pub async fn scrape(url: &str) -> Option<String> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .ok()?;
    client.get(url).send().await.ok()?.text().await.ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "# TYPE x counter\nx 1\nx_total 2\nx{a=\"1\"} 3\nx{a=\"2\"} 4\ny 5\n";

    #[test]
    fn a_series_is_matched_whole_and_a_metric_summed_over_its_labels() {
        assert_eq!(value(TEXT, "x"), Some(1.0));
        assert_eq!(value(TEXT, "x_total"), Some(2.0));
        assert_eq!(value(TEXT, "x{a=\"2\"}"), Some(4.0));
        assert_eq!(value(TEXT, "x{a=\"3\"}"), None);
        assert_eq!(value(TEXT, "z"), None);
        assert_eq!(sum(TEXT, "x"), 8.0);
        assert_eq!(sum(TEXT, "y"), 5.0);
        assert_eq!(sum(TEXT, "z"), 0.0);
        assert_eq!(lines_of(TEXT, &["y", "x_total"]), "x_total 2\ny 5");
    }
}
