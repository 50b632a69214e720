//! A lock-free classic Prometheus histogram for the request path.
//!
//! prometheus-client's `Histogram` takes a mutex on every observation, and
//! a cluster's or connection manager's duration histogram is shared by all
//! workers, so two contended locks were taken per request. Here each
//! bucket, the count and the sum are atomics: observing is a few atomic
//! adds (the sum a compare-and-swap on its bits). It encodes exactly like
//! prometheus-client's classic histogram (buckets with `le`, `+Inf` last,
//! `_sum`, `_count`). A scrape reads the atomics one by one, so under load
//! `_sum` may lag the buckets by in-flight observations; `_count` is the
//! sum of the buckets, so it always equals the `+Inf` bucket.

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::{MetricType, TypedMetric};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// A histogram handle; clones share the counts.
#[derive(Debug, Clone)]
pub struct Histogram(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    /// Upper bounds, finite and ascending, then `+Inf`.
    bounds: Box<[f64]>,
    /// Observations per bucket (not cumulative).
    counts: Box<[AtomicU64]>,
    /// The sum of observations, as `f64` bits.
    sum: AtomicU64,
}

impl Histogram {
    /// A histogram with these upper bounds (non-finite ones are dropped;
    /// `+Inf` is always the last bucket).
    pub fn new(bounds: impl IntoIterator<Item = f64>) -> Self {
        let bounds: Box<[f64]> = bounds
            .into_iter()
            .filter(|b| b.is_finite())
            .chain(std::iter::once(f64::INFINITY))
            .collect();
        let counts = bounds.iter().map(|_| AtomicU64::new(0)).collect();
        Histogram(Arc::new(Inner {
            bounds,
            counts,
            sum: AtomicU64::new(0f64.to_bits()),
        }))
    }

    /// Records `v` in the first bucket whose bound is at least `v` (NaN in
    /// `+Inf`).
    pub fn observe(&self, v: f64) {
        let i = self
            .0
            .bounds
            .iter()
            .position(|b| *b >= v)
            .unwrap_or(self.0.bounds.len() - 1);
        // Only these words are shared and nothing is published through
        // them: relaxed ordering is enough.
        self.0.counts[i].fetch_add(1, Ordering::Relaxed);
        let _ = self
            .0
            .sum
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
                Some((f64::from_bits(bits) + v).to_bits())
            });
    }

    /// `(sum, count, [(upper bound, observations in that bucket)])`.
    pub fn snapshot(&self) -> (f64, u64, Vec<(f64, u64)>) {
        let buckets: Vec<(f64, u64)> = self
            .0
            .bounds
            .iter()
            .zip(self.0.counts.iter())
            .map(|(b, c)| (*b, c.load(Ordering::Relaxed)))
            .collect();
        let count = buckets.iter().map(|(_, c)| c).sum();
        let sum = f64::from_bits(self.0.sum.load(Ordering::Relaxed));
        (sum, count, buckets)
    }
}

impl TypedMetric for Histogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for Histogram {
    fn encode(&self, mut encoder: MetricEncoder<'_>) -> Result<(), std::fmt::Error> {
        let (sum, count, buckets) = self.snapshot();
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::encoding::text::encode;
    use prometheus_client::registry::Registry;

    const BOUNDS: [f64; 3] = [1.0, 5.0, 10.0];

    #[test]
    fn observations_land_in_the_first_bucket_that_holds_them() {
        let h = Histogram::new(BOUNDS);
        for v in [0.5, 1.0, 1.5, 5.0, 7.0, 100.0, f64::NAN] {
            h.observe(v);
        }
        let (sum, count, buckets) = h.snapshot();
        assert_eq!(count, 7);
        assert!(sum.is_nan(), "NaN is summed as prometheus-client does");
        assert_eq!(
            buckets,
            vec![(1.0, 2), (5.0, 2), (10.0, 1), (f64::INFINITY, 2)]
        );
    }

    #[test]
    fn encodes_like_prometheus_clients_histogram() {
        let ours = Histogram::new(BOUNDS);
        let theirs = prometheus_client::metrics::histogram::Histogram::new(BOUNDS);
        for v in [0.25, 3.0, 3.0, 9.5, 11.0, 20000.0] {
            ours.observe(v);
            theirs.observe(v);
        }
        let text = |register: &dyn Fn(&mut Registry)| {
            let mut r = Registry::with_prefix("envoy");
            register(&mut r);
            let mut out = String::new();
            encode(&mut out, &r).expect("encode");
            out
        };
        let a = text(&|r| r.register("rq_time", "Request time", ours.clone()));
        let b = text(&|r| r.register("rq_time", "Request time", theirs.clone()));
        assert_eq!(a, b);
        assert!(a.contains("envoy_rq_time_bucket{le=\"+Inf\"} 6"), "{a}");
    }

    #[test]
    fn concurrent_observers_lose_nothing() {
        let h = Histogram::new(BOUNDS);
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let h = h.clone();
                std::thread::spawn(move || {
                    for i in 0..10_000u32 {
                        h.observe(f64::from((i + t) % 12));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("observer");
        }
        let (sum, count, buckets) = h.snapshot();
        assert_eq!(count, 40_000);
        // Thread t observes (i + t) % 12 for i in 0..10_000.
        let expected: f64 = (0..4u32)
            .map(|t| (0..10_000u32).map(|i| f64::from((i + t) % 12)).sum::<f64>())
            .sum();
        assert_eq!(sum, expected, "integer-valued sums are exact in f64");
        let le1: u64 = (0..4u32)
            .map(|t| (0..10_000u32).filter(|i| (i + t) % 12 <= 1).count() as u64)
            .sum();
        assert_eq!(buckets[0], (1.0, le1));
    }
}
