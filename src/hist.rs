//! A fixed-bucket histogram of plain atomics: `observe` is a bucket search and three relaxed
//! `fetch_add`s, no lock and no allocation. A leaf module (it imports nothing of the crate), so
//! the audit writer and the metrics both use it without importing each other.
//!
//! Kept instead of the `prometheus` crate's histogram: nimgate renders its families itself (one
//! `String`, per-client slots pre-allocated at start) and needs nothing else of that crate.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

/// Request and upstream latencies, seconds.
pub const SECONDS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
/// Token counts: the OpenTelemetry GenAI `gen_ai.client.token.usage` advisory buckets.
pub const TOKENS: &[f64] = &[
    1.0,
    4.0,
    16.0,
    64.0,
    256.0,
    1024.0,
    4096.0,
    16_384.0,
    65_536.0,
    262_144.0,
    1_048_576.0,
    4_194_304.0,
];

pub struct Histogram {
    bounds: &'static [f64],
    counts: Box<[AtomicU64]>,
    count: AtomicU64,
    /// The sum in millionths of the observed unit (exact for whole tokens and microseconds).
    sum_micros: AtomicU64,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            counts: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum_micros: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, v: f64) {
        if let Some(i) = self.bounds.iter().position(|b| v <= *b) {
            self.counts[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add((v.max(0.0) * 1e6) as u64, Ordering::Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// The `_bucket`, `_sum` and `_count` samples of `name`; `labels` is empty or ends in a comma
    /// (`client="a",`).
    pub fn render(&self, o: &mut String, name: &str, labels: &str) {
        let mut cum = 0;
        for (b, c) in self.bounds.iter().zip(self.counts.iter()) {
            cum += c.load(Ordering::Relaxed);
            let _ = writeln!(o, "{name}_bucket{{{labels}le=\"{b}\"}} {cum}");
        }
        let count = self.count();
        let _ = writeln!(o, "{name}_bucket{{{labels}le=\"+Inf\"}} {count}");
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let labels = labels.trim_end_matches(',');
        if labels.is_empty() {
            let _ = writeln!(o, "{name}_sum {sum}\n{name}_count {count}");
        } else {
            let _ = writeln!(
                o,
                "{name}_sum{{{labels}}} {sum}\n{name}_count{{{labels}}} {count}"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cumulative_buckets_sum_and_count() {
        let h = Histogram::new(&[1.0, 10.0]);
        h.observe(0.5);
        h.observe(3.0);
        h.observe(99.0);
        let mut o = String::new();
        h.render(&mut o, "x", "a=\"b\",");
        assert_eq!(
            o,
            "x_bucket{a=\"b\",le=\"1\"} 1\nx_bucket{a=\"b\",le=\"10\"} 2\n\
             x_bucket{a=\"b\",le=\"+Inf\"} 3\nx_sum{a=\"b\"} 102.5\nx_count{a=\"b\"} 3\n"
        );
    }
}
