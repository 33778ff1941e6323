//! Small numeric helpers: rates, percentiles, per-100k costs. No `as`
//! conversions: counts go through u32/f64 conversions that are exact for
//! the sizes a benchmark uses, and saturate beyond.

use std::time::Duration;

/// `n` as an f64 (exact up to 2^32; a benchmark counts far less).
pub fn count_f64(n: u64) -> f64 {
    u32::try_from(n)
        .map(f64::from)
        .unwrap_or(f64::from(u32::MAX))
}

/// Events per second.
pub fn rate(n: u64, elapsed: Duration) -> f64 {
    let secs = elapsed.as_secs_f64();
    if secs <= 0.0 {
        return 0.0;
    }
    count_f64(n) / secs
}

/// Milliseconds of a duration.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// p50, p99 and max of a set of latencies (nearest rank), in milliseconds;
/// `None` when there are none.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Percentiles {
    /// Median.
    pub p50_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Largest.
    pub max_ms: f64,
    /// How many samples.
    pub samples: usize,
}

/// Nearest-rank percentiles of `samples` (sorted in place).
pub fn percentiles(samples: &mut [Duration]) -> Option<Percentiles> {
    if samples.is_empty() {
        return None;
    }
    samples.sort_unstable();
    // rank = ceil(q * n), 1-based; q in parts per 10,000.
    let at = |per_10k: usize| -> Duration {
        let rank = (samples.len() * per_10k).div_ceil(10_000).max(1);
        samples[rank - 1]
    };
    Some(Percentiles {
        p50_ms: ms(at(5_000)),
        p99_ms: ms(at(9_900)),
        max_ms: ms(samples[samples.len() - 1]),
        samples: samples.len(),
    })
}

/// Seconds of CPU per 100,000 events.
pub fn per_100k(cpu_secs: f64, events: u64) -> f64 {
    if events == 0 {
        return 0.0;
    }
    cpu_secs * 100_000.0 / count_f64(events)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let mut v: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        let p = percentiles(&mut v).unwrap();
        assert_eq!(p.p50_ms, 50.0);
        assert_eq!(p.p99_ms, 99.0);
        assert_eq!(p.max_ms, 100.0);
        assert_eq!(p.samples, 100);
        let mut one = vec![Duration::from_millis(7)];
        let p = percentiles(&mut one).unwrap();
        assert_eq!((p.p50_ms, p.p99_ms, p.max_ms), (7.0, 7.0, 7.0));
        assert!(percentiles(&mut []).is_none());
    }

    #[test]
    fn rates_and_costs() {
        assert_eq!(rate(10_000, Duration::from_secs(2)), 5_000.0);
        assert_eq!(rate(1, Duration::ZERO), 0.0);
        assert_eq!(per_100k(1.5, 300_000), 0.5);
    }
}
