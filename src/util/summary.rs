//! Summaries of latency samples, as the benchmark and batch reports print them.

/// Mean, median and 99th percentile of `values` (the nearest-rank sample); zeros when empty.
pub fn mean_median_p99(mut values: Vec<f64>) -> [f64; 3] {
    if values.is_empty() {
        return [0.0; 3];
    }
    values.sort_by(f64::total_cmp);
    let pick = |q: f64| values[((values.len() - 1) as f64 * q).round() as usize];
    [
        values.iter().sum::<f64>() / values.len() as f64,
        pick(0.5),
        pick(0.99),
    ]
}
