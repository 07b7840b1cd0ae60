//! Peak-EWMA latency, as Linkerd's balancer keeps it: a new observation
//! above the estimate replaces it at once (the peak), one below pulls it
//! down exponentially with a 10 s time constant, so an endpoint that turns
//! slow is avoided immediately and one that recovers wins traffic back
//! gradually. An endpoint never observed costs nothing, so it is tried.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use super::outlier::now_ms;

/// The decay time constant.
const DECAY: Duration = Duration::from_secs(10);

/// One endpoint's estimate.
#[derive(Debug, Default)]
pub(super) struct PeakEwma {
    /// The estimate, nanoseconds (as `f64` bits).
    estimate: AtomicU64,
    /// `now_ms()` of the last observation.
    stamp: AtomicU64,
}

impl PeakEwma {
    /// Folds in one observed latency.
    pub(super) fn observe(&self, took: Duration) {
        self.observe_at(took, now_ms());
    }

    fn observe_at(&self, took: Duration, now: u64) {
        let sample = took.as_nanos() as f64;
        let current = f64::from_bits(self.estimate.load(Relaxed));
        let elapsed = now.saturating_sub(self.stamp.swap(now, Relaxed)) as f64;
        let next = if sample > current {
            sample
        } else {
            let w = (-elapsed / DECAY.as_millis() as f64).exp();
            current * w + sample * (1.0 - w)
        };
        self.estimate.store(next.to_bits(), Relaxed);
    }

    /// The cost of sending one more request: estimate × (active + 1).
    pub(super) fn cost(&self, active: u64) -> f64 {
        f64::from_bits(self.estimate.load(Relaxed)) * (active + 1) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peaks_stick_and_decay_back_slowly() {
        let e = PeakEwma::default();
        assert_eq!(e.cost(5), 0.0);
        e.observe_at(Duration::from_millis(10), 1_000);
        assert_eq!(e.cost(0), 10e6);
        // A slower answer replaces the estimate at once.
        e.observe_at(Duration::from_millis(100), 1_010);
        assert_eq!(e.cost(0), 100e6);
        // A fast one right after barely moves it...
        e.observe_at(Duration::from_millis(10), 1_020);
        assert!(e.cost(0) > 99e6, "{}", e.cost(0));
        // ...and after one time constant it has come most of the way down.
        e.observe_at(Duration::from_millis(10), 11_020);
        let c = e.cost(0);
        assert!((40e6..50e6).contains(&c), "{c}");
        // Active requests scale the cost.
        assert_eq!(e.cost(3), c * 4.0);
    }
}
