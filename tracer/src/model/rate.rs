//! Fixed-memory sliding-window accumulators.

/// Number of buckets in a window.
pub const BUCKETS: usize = 20;
/// Bucket width: 100 ms, so a window covers 2 s.
pub const BUCKET_NS: u64 = 100_000_000;
/// Window covered by a [`SlidingSum`].
pub const WINDOW_NS: u64 = BUCKET_NS * BUCKETS as u64;

/// Sum of values over the last [`WINDOW_NS`], in constant memory.
#[derive(Clone, Debug, Default)]
pub struct SlidingSum {
    buckets: [u64; BUCKETS],
    /// Index (timestamp / BUCKET_NS) of the newest bucket.
    newest: u64,
}

impl SlidingSum {
    fn advance(&mut self, bucket: u64) {
        if bucket <= self.newest {
            return;
        }
        let gap = (bucket - self.newest).min(BUCKETS as u64);
        for step in 1..=gap {
            self.buckets[((self.newest + step) % BUCKETS as u64) as usize] = 0;
        }
        self.newest = bucket;
    }

    /// Adds `value` at time `ts_ns`. Values older than the window are ignored.
    pub fn add(&mut self, ts_ns: u64, value: u64) {
        let bucket = ts_ns / BUCKET_NS;
        self.advance(bucket);
        if bucket + (BUCKETS as u64) <= self.newest {
            return;
        }
        self.buckets[(bucket % BUCKETS as u64) as usize] += value;
    }

    /// Sum over the window ending at `now_ns`, without moving the window
    /// (what the classifier reads).
    pub fn sum_at(&self, now_ns: u64) -> u64 {
        let now = now_ns / BUCKET_NS;
        // Buckets hold indices newest-BUCKETS+1 ..= newest; of those, the
        // window ending at `now` keeps the ones after now-BUCKETS.
        (0..BUCKETS as u64)
            .filter_map(|age| self.newest.checked_sub(age))
            .filter(|index| index + BUCKETS as u64 > now && *index <= now)
            .map(|index| self.buckets[(index % BUCKETS as u64) as usize])
            .sum()
    }

    /// [`SlidingSum::sum_at`] per second.
    pub fn per_second_at(&self, now_ns: u64) -> f64 {
        self.sum_at(now_ns) as f64 / (WINDOW_NS as f64 / 1e9)
    }

    /// Sum over the window ending at `now_ns`.
    pub fn sum(&mut self, now_ns: u64) -> u64 {
        self.advance(now_ns / BUCKET_NS);
        self.buckets.iter().sum()
    }

    /// Sum per second over the window ending at `now_ns`.
    pub fn per_second(&mut self, now_ns: u64) -> f64 {
        self.sum(now_ns) as f64 / (WINDOW_NS as f64 / 1e9)
    }
}

/// Intervals kept by an [`IntervalTracker`].
const INTERVALS: usize = 32;

/// The last N intervals between occurrences, for a typical period.
#[derive(Clone, Debug, Default)]
pub struct IntervalTracker {
    last_ns: Option<u64>,
    intervals_us: [u32; INTERVALS],
    len: usize,
    next: usize,
}

impl IntervalTracker {
    /// Records an occurrence at `ts_ns`.
    pub fn record(&mut self, ts_ns: u64) {
        if let Some(last) = self.last_ns
            && ts_ns >= last
        {
            let interval = ((ts_ns - last) / 1000).min(u64::from(u32::MAX)) as u32;
            self.intervals_us[self.next] = interval;
            self.next = (self.next + 1) % self.intervals_us.len();
            self.len = (self.len + 1).min(self.intervals_us.len());
        }
        self.last_ns = Some(ts_ns);
    }

    /// Time of the last occurrence.
    pub fn last(&self) -> Option<u64> {
        self.last_ns
    }

    /// Typical interval in milliseconds, once at least two intervals
    /// exist: the interquartile mean (the mean of the middle half of the
    /// sorted intervals). A timer whose expiries are delivered late by
    /// bursts (e.g. 14 ms, 26 ms, 14 ms ... for 20 ms, or four 1 ms
    /// intervals then a 12 ms gap, both measured under nested
    /// virtualisation) has a bimodal spread where the median picks one
    /// mode; the interquartile mean stays at the period and still ignores
    /// outliers such as a VMM pause.
    pub fn typical_ms(&self) -> Option<f64> {
        if self.len < 2 {
            return None;
        }
        let mut sorted = self.intervals_us[..self.len].to_vec();
        sorted.sort_unstable();
        let quarter = sorted.len() / 4;
        let middle = &sorted[quarter..sorted.len() - quarter];
        let sum: f64 = middle.iter().map(|&us| f64::from(us)).sum();
        Some(sum / middle.len() as f64 / 1000.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reading_without_moving_the_window_gives_the_same_sums() {
        let mut sum = SlidingSum::default();
        let mut now = 5 * BUCKET_NS;
        for step in 0..200u64 {
            // Irregular steps: within a bucket, across a few, past the window.
            now += [7, 130, 40, 2_500, 90][(step % 5) as usize] * 1_000_000;
            sum.add(now, step % 3 + 1);
            for later in [0, BUCKET_NS / 2, 3 * BUCKET_NS, WINDOW_NS, 2 * WINDOW_NS] {
                let mut moved = sum.clone();
                assert_eq!(
                    sum.sum_at(now + later),
                    moved.sum(now + later),
                    "step {step} +{later}"
                );
            }
        }
    }

    #[test]
    fn sliding_sum_forgets_old_buckets() {
        let mut sum = SlidingSum::default();
        for i in 0..10 {
            sum.add(i * 100_000_000, 1);
        }
        assert_eq!(sum.sum(999_999_999), 10);
        assert!((sum.per_second(999_999_999) - 5.0).abs() < 1e-9);
        // At 2.05 s the window holds buckets 1..=20: the first one has left.
        assert_eq!(sum.sum(2_050_000_000), 9);
        assert_eq!(sum.sum(10_000_000_000), 0);
        // A stale value is ignored.
        sum.add(1_000, 5);
        assert_eq!(sum.sum(10_000_000_000), 0);
    }

    #[test]
    fn sliding_sum_boundary_keeps_exactly_the_window() {
        let mut sum = SlidingSum::default();
        sum.add(0, 1);
        sum.add(WINDOW_NS - 1, 1);
        assert_eq!(sum.sum(WINDOW_NS - 1), 2);
        assert_eq!(sum.sum(WINDOW_NS), 1);
    }

    #[test]
    fn median_interval() {
        let mut tracker = IntervalTracker::default();
        assert_eq!(tracker.typical_ms(), None);
        for ts in [0, 1_000_000, 2_000_000, 3_100_000, 4_000_000, 30_000_000] {
            tracker.record(ts);
        }
        // Intervals 1.0 1.0 1.1 0.9 26.0: the 26 ms outlier is ignored.
        let typical = tracker.typical_ms().unwrap();
        assert!((typical - 1.0333).abs() < 1e-3, "{typical}");
    }

    #[test]
    fn bursty_delivery_keeps_the_period() {
        // Measured on this machine (nested KVM, HZ=250): a 20 ms periodic
        // timer delivered at 14/26 ms, a 1 ms one as four 1 ms intervals then
        // a 12 ms gap. The median says 16 ms and 1 ms; the period is 20 and 1.
        let mut twenty = IntervalTracker::default();
        let mut ts = 0;
        for i in 0..33 {
            ts += if i % 2 == 0 { 14_000_000 } else { 26_000_000 };
            twenty.record(ts);
        }
        let typical = twenty.typical_ms().unwrap();
        assert!((typical - 20.0).abs() < 2.0, "{typical}");
        let mut one = IntervalTracker::default();
        let mut ts = 0;
        for i in 0..33 {
            ts += [400_000, 960_000, 1_050_000, 960_000, 12_000_000][i % 5];
            one.record(ts);
        }
        let typical = one.typical_ms().unwrap();
        assert!((typical - 1.0).abs() < 0.1, "{typical}");
    }
}
