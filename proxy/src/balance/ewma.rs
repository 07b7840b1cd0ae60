//! Peak-EWMA latency, as Linkerd's balancer keeps it: a new observation
//! above the estimate replaces it at once (the peak), one below pulls it
//! down exponentially with a 10 s time constant, and the estimate also
//! decays towards zero while nothing is observed, so an endpoint that turns
//! slow is avoided immediately, and one that was avoided is tried again
//! once its estimate has decayed below the others'. An endpoint never
//! observed costs nothing, so it is tried.

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
        let w = (-elapsed / DECAY.as_millis() as f64).exp();
        // The estimate as it has decayed since the last observation.
        let decayed = current * w;
        let next = if sample > decayed {
            sample
        } else {
            current * w + sample * (1.0 - w)
        };
        self.estimate.store(next.to_bits(), Relaxed);
    }

    /// The cost of sending one more request: the estimate, decayed for the
    /// time since the last observation, × (active + 1).
    pub(super) fn cost(&self, active: u64) -> f64 {
        self.cost_at(active, now_ms())
    }

    fn cost_at(&self, active: u64, now: u64) -> f64 {
        let estimate = f64::from_bits(self.estimate.load(Relaxed));
        let idle = now.saturating_sub(self.stamp.load(Relaxed)) as f64;
        estimate * (-idle / DECAY.as_millis() as f64).exp() * (active + 1) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peaks_stick_and_decay_back_slowly() {
        let e = PeakEwma::default();
        assert_eq!(e.cost_at(5, 0), 0.0);
        e.observe_at(Duration::from_millis(10), 1_000);
        assert_eq!(e.cost_at(0, 1_000), 10e6);
        // A slower answer replaces the estimate at once.
        e.observe_at(Duration::from_millis(100), 1_010);
        assert!((e.cost_at(0, 1_010) - 100e6).abs() < 1.0);
        // A fast one right after barely moves it...
        e.observe_at(Duration::from_millis(10), 1_020);
        assert!(e.cost_at(0, 1_020) > 99e6, "{}", e.cost_at(0, 1_020));
        // Active requests scale the cost.
        assert!((e.cost_at(3, 1_020) - 4.0 * e.cost_at(0, 1_020)).abs() < 1.0);
    }

    #[test]
    fn an_avoided_endpoint_becomes_cheap_again_without_observations() {
        // A spike makes an endpoint look slow; nothing is sent to it, so
        // nothing is observed; its cost still decays, so it is tried again.
        let e = PeakEwma::default();
        e.observe_at(Duration::from_millis(50), 1_000);
        let at = |s: u64| e.cost_at(0, 1_000 + s * 1_000);
        assert!(at(0) > 49e6);
        assert!(at(10) < 20e6, "{}", at(10));
        assert!(at(30) < 3e6, "{}", at(30));
    }
}
