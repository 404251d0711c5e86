//! A rolling latency window of bounded memory: one histogram per sample tick, the last
//! `span` of them merged for each report.
//!
//! The harness asks for percentiles "with bounded memory (HDR histogram or t-digest, 3
//! significant figures)" over a rolling 30 s. Keeping every event of the window (as the
//! reference adapter does) grows with the rate; a histogram per tick does not.

use std::{collections::VecDeque, time::Duration};

use hdrhistogram::Histogram;

/// Highest latency tracked exactly, in µs; longer ones count as this (one minute is far
/// past anything the harness plots, and keeps each histogram small).
const MAX_MICROS: u64 = 60_000_000;

/// An empty histogram of µs at three significant figures.
pub(super) fn histogram() -> Histogram<u32> {
    Histogram::new_with_bounds(1, MAX_MICROS, 3).expect("static histogram bounds are valid")
}

/// Milliseconds as whole µs, at least 1 (the histogram's lowest value).
pub(super) fn micros(ms: f64) -> u64 {
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let us = (ms * 1000.0).round().max(1.0) as u64;
    us.min(MAX_MICROS)
}

/// p50, p95 and p99 in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Quantiles {
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
}

/// The last `ticks` histograms.
#[derive(Debug)]
pub(super) struct Rolling {
    ticks: VecDeque<Histogram<u32>>,
    keep: usize,
    merged: Histogram<u32>,
}

impl Rolling {
    /// A window of `span`, fed once per `every`.
    pub fn new(span: Duration, every: Duration) -> Self {
        let keep = usize::try_from(span.as_millis().div_ceil(every.as_millis().max(1)))
            .unwrap_or(usize::MAX)
            .max(1);
        Self {
            ticks: VecDeque::with_capacity(keep),
            keep,
            merged: histogram(),
        }
    }

    /// Adds one tick's histogram and returns the window's quantiles (`None` while the
    /// window holds no event: the harness would read a zero as a measurement).
    pub fn push(&mut self, tick: Histogram<u32>) -> Option<Quantiles> {
        if self.ticks.len() == self.keep {
            self.ticks.pop_front();
        }
        self.ticks.push_back(tick);
        self.merged.reset();
        for h in &self.ticks {
            // Same bounds on both sides, so adding cannot fail.
            self.merged.add(h).expect("histograms share their bounds");
        }
        if self.merged.is_empty() {
            return None;
        }
        #[allow(clippy::cast_precision_loss)]
        let ms = |q: f64| self.merged.value_at_quantile(q) as f64 / 1000.0;
        Some(Quantiles {
            p50: ms(0.50),
            p95: ms(0.95),
            p99: ms(0.99),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tick(values_ms: &[f64]) -> Histogram<u32> {
        let mut h = histogram();
        for v in values_ms {
            h.saturating_record(micros(*v));
        }
        h
    }

    #[test]
    fn an_empty_window_reports_nothing() {
        let mut w = Rolling::new(Duration::from_secs(30), Duration::from_secs(5));
        assert_eq!(w.push(histogram()), None);
    }

    #[test]
    fn quantiles_cover_the_last_span_only() {
        let mut w = Rolling::new(Duration::from_secs(10), Duration::from_secs(5));
        w.push(tick(&[100.0; 100]));
        let both = w.push(tick(&[1.0; 100])).unwrap();
        assert!((both.p99 - 100.0).abs() < 0.1, "{both:?}");
        assert!((both.p50 - 1.0).abs() < 0.01, "{both:?}");
        // The 100 ms tick is now older than the 10 s span.
        let recent = w.push(tick(&[1.0; 100])).unwrap();
        assert!((recent.p99 - 1.0).abs() < 0.01, "{recent:?}");
    }

    #[test]
    fn latencies_keep_three_significant_figures_and_saturate_at_a_minute() {
        let mut w = Rolling::new(Duration::from_secs(5), Duration::from_secs(5));
        let q = w.push(tick(&[12.345])).unwrap();
        assert!((q.p50 - 12.345).abs() < 0.02, "{q:?}");
        let q = w.push(tick(&[3_600_000.0])).unwrap();
        assert!((q.p99 - 60_000.0).abs() < 60.0, "{q:?}");
    }
}
