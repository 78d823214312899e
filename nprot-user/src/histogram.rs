//! Latency histograms: fixed memory, percentiles good to about 3 %.

use std::time::Duration;

/// Sub-buckets per power of two; 32 keeps the relative error near 3 %.
const SUB_BUCKETS: u64 = 32;
/// Powers of two covered: up to 2^40 ns (about 18 minutes).
const OCTAVES: u64 = 40;

/// A log-linear histogram of durations in nanoseconds.
#[derive(Debug, Clone)]
pub struct Histogram {
    counts: Vec<u64>,
    total: u64,
    /// Sum of the samples, in ns.
    sum: u128,
    /// Largest sample, in ns.
    pub max: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: vec![0; (SUB_BUCKETS * OCTAVES) as usize],
            total: 0,
            sum: 0,
            max: 0,
        }
    }
}

impl Histogram {
    /// Records one sample of `ns` nanoseconds.
    pub fn record(&mut self, ns: u64) {
        let i = bucket(ns).min(self.counts.len() - 1);
        self.counts[i] += 1;
        self.total += 1;
        self.sum += u128::from(ns);
        self.max = self.max.max(ns);
    }

    /// Number of samples.
    pub fn count(&self) -> u64 {
        self.total
    }

    /// Sum of the samples, in seconds.
    pub fn sum_s(&self) -> f64 {
        self.sum as f64 / 1e9
    }

    /// Samples per bucket of `bounds_ns` (ascending upper bounds), then those above the
    /// last (bound +Inf), as Prometheus histogram buckets in seconds. A sample counts in
    /// the first bound its whole bucket lies under (bounds are rounded to bucket edges,
    /// ≈ 3 %).
    pub fn buckets(&self, bounds_ns: &[u64]) -> Vec<(f64, u64)> {
        let mut out = Vec::with_capacity(bounds_ns.len() + 1);
        let mut i = 0;
        for &b in bounds_ns {
            let mut n = 0;
            while i < self.counts.len() && upper_bound(i) <= b {
                n += self.counts[i];
                i += 1;
            }
            out.push((b as f64 / 1e9, n));
        }
        out.push((
            f64::INFINITY,
            self.counts[i.min(self.counts.len())..].iter().sum(),
        ));
        out
    }

    /// The `q`-quantile (0.0–1.0), or `None` without samples.
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        if self.total == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Some(Duration::from_nanos(upper_bound(i).min(self.max)));
            }
        }
        Some(Duration::from_nanos(self.max))
    }

    /// "p50=… p99=… p99.9=… max=… n=…" in microseconds.
    pub fn summary(&self) -> String {
        let us = |q: f64| {
            self.quantile(q)
                .map_or("-".to_owned(), |d| format!("{:.1}", d.as_secs_f64() * 1e6))
        };
        format!(
            "p50={}us p99={}us p99.9={}us max={:.1}us n={}",
            us(0.5),
            us(0.99),
            us(0.999),
            self.max as f64 / 1e3,
            self.total
        )
    }
}

fn bucket(ns: u64) -> usize {
    if ns < SUB_BUCKETS {
        return ns as usize;
    }
    let octave = 63 - u64::from(ns.leading_zeros()) - u64::from(SUB_BUCKETS.trailing_zeros());
    let sub = (ns >> octave) - SUB_BUCKETS;
    ((octave + 1) * SUB_BUCKETS + sub) as usize
}

fn upper_bound(i: usize) -> u64 {
    let i = i as u64;
    if i < SUB_BUCKETS {
        return i;
    }
    let octave = i / SUB_BUCKETS - 1;
    let sub = i % SUB_BUCKETS;
    ((SUB_BUCKETS + sub + 1) << octave) - 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_monotonic_and_tight() {
        let mut last = 0;
        for ns in [0u64, 1, 31, 32, 33, 63, 64, 1000, 50_000, 1 << 30] {
            let b = bucket(ns);
            assert!(b >= last);
            last = b;
            let ub = upper_bound(b);
            assert!(ub >= ns, "{ns} -> bucket {b} ub {ub}");
            assert!(ub as f64 <= ns as f64 * 1.07 + 1.0, "{ns} -> {ub}");
        }
    }

    #[test]
    fn quantiles() {
        let mut h = Histogram::default();
        assert_eq!(h.quantile(0.5), None);
        for ns in 1..=1000u64 {
            h.record(ns * 1000);
        }
        let p50 = h.quantile(0.5).unwrap().as_nanos() as f64;
        let p99 = h.quantile(0.99).unwrap().as_nanos() as f64;
        assert!((p50 - 500_000.0).abs() / 500_000.0 < 0.05, "{p50}");
        assert!((p99 - 990_000.0).abs() / 990_000.0 < 0.05, "{p99}");
        assert_eq!(h.quantile(1.0).unwrap().as_nanos(), 1_000_000);
        assert_eq!(h.count(), 1000);
    }
}

/// Percentiles of a histogram in microseconds, for reports.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LatencySummary {
    /// Number of values recorded.
    pub count: u64,
    /// Median.
    pub p50_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// 99.9th percentile.
    pub p999_us: f64,
    /// Largest value recorded.
    pub max_us: f64,
}

impl From<&Histogram> for LatencySummary {
    fn from(h: &Histogram) -> LatencySummary {
        let us = |q: f64| h.quantile(q).map_or(0.0, |d| d.as_secs_f64() * 1e6);
        LatencySummary {
            count: h.count(),
            p50_us: us(0.5),
            p99_us: us(0.99),
            p999_us: us(0.999),
            max_us: h.max as f64 / 1e3,
        }
    }
}
