//! Outlier detection (DestinationRule `outlierDetection`, Envoy's
//! consecutive-5xx and consecutive-gateway-failure detectors): an endpoint
//! that answers too many errors in a row is ejected from balancing for
//! `baseEjectionTime` × the number of times it has been ejected (capped at
//! 300 s, as Envoy does), then returns. One [`State`] per endpoint address
//! is shared by the balancers of later endpoint versions.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

/// Envoy's cap on an ejection's length.
pub(super) const MAX_EJECTION: Duration = Duration::from_secs(300);

/// What an attempt at an endpoint came to, for outlier detection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Anything but an error (including 4xx).
    Success,
    /// A 5xx answer, or no answer; `gateway` for 502/503/504 and failures
    /// to get an answer (Envoy counts those as gateway errors).
    Error {
        /// 502, 503, 504, or no answer.
        gateway: bool,
    },
}

/// Milliseconds since the first call: a clock for ejection deadlines that
/// fits an atomic.
pub(super) fn now_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    let start = *START.get_or_init(Instant::now);
    u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// One endpoint's streaks and ejection.
#[derive(Debug, Default)]
pub(super) struct State {
    consecutive_5xx: AtomicU32,
    consecutive_gateway: AtomicU32,
    /// `now_ms()` when the ejection ends; 0 when never ejected.
    ejected_until: AtomicU64,
    /// Ejections so far, decayed by one per `interval` spent back in.
    ejections: AtomicU32,
}

/// What recording an outcome asks of the balancer.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Verdict {
    /// Nothing to do.
    Keep,
    /// A detector tripped: eject, if the ejection limits allow.
    Eject,
}

impl State {
    /// Whether the endpoint is ejected at `now` (from [`now_ms`]).
    pub(super) fn is_ejected(&self, now: u64) -> bool {
        now < self.ejected_until.load(Relaxed)
    }

    /// Counts an outcome; says whether a detector tripped.
    pub(super) fn record(
        &self,
        outcome: Outcome,
        consecutive_5xx: (u32, u32),
        consecutive_gateway: (u32, u32),
    ) -> Verdict {
        let Outcome::Error { gateway } = outcome else {
            self.consecutive_5xx.store(0, Relaxed);
            self.consecutive_gateway.store(0, Relaxed);
            return Verdict::Keep;
        };
        let n5 = self.consecutive_5xx.fetch_add(1, Relaxed) + 1;
        let ngw = if gateway {
            self.consecutive_gateway.fetch_add(1, Relaxed) + 1
        } else {
            self.consecutive_gateway.store(0, Relaxed);
            0
        };
        // `(threshold, enforcing percent)`; a threshold of 0 is off.
        let trips = |n: u32, (threshold, enforcing): (u32, u32)| {
            threshold > 0 && n >= threshold && fastrand::u32(..100) < enforcing
        };
        if trips(n5, consecutive_5xx) || trips(ngw, consecutive_gateway) {
            Verdict::Eject
        } else {
            Verdict::Keep
        }
    }

    /// Ejects the endpoint from `now` for `base` × its ejection count
    /// (after decaying the count by one per `interval` it has spent back
    /// in); returns how long.
    pub(super) fn eject(&self, now: u64, base: Duration, interval: Duration) -> Duration {
        let ended = self.ejected_until.load(Relaxed);
        let mut times = self.ejections.load(Relaxed);
        if ended > 0 && !interval.is_zero() {
            let back_for = now.saturating_sub(ended);
            let decay = back_for
                / u64::try_from(interval.as_millis())
                    .unwrap_or(u64::MAX)
                    .max(1);
            times = times.saturating_sub(u32::try_from(decay).unwrap_or(u32::MAX));
        }
        times = times.saturating_add(1);
        self.ejections.store(times, Relaxed);
        let length = base.saturating_mul(times).min(MAX_EJECTION);
        let until = now.saturating_add(u64::try_from(length.as_millis()).unwrap_or(u64::MAX));
        self.ejected_until.store(until.max(1), Relaxed);
        self.consecutive_5xx.store(0, Relaxed);
        self.consecutive_gateway.store(0, Relaxed);
        length
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ERR: Outcome = Outcome::Error { gateway: false };
    const GW: Outcome = Outcome::Error { gateway: true };

    #[test]
    fn streaks_trip_their_detector_and_successes_reset_them() {
        let s = State::default();
        let five = (3, 100);
        let off = (0, 0);
        assert_eq!(s.record(ERR, five, off), Verdict::Keep);
        assert_eq!(s.record(ERR, five, off), Verdict::Keep);
        assert_eq!(s.record(Outcome::Success, five, off), Verdict::Keep);
        assert_eq!(s.record(ERR, five, off), Verdict::Keep);
        assert_eq!(s.record(ERR, five, off), Verdict::Keep);
        assert_eq!(s.record(ERR, five, off), Verdict::Eject);
        // Gateway streaks: a plain 500 breaks them.
        let g = State::default();
        let gw = (2, 100);
        assert_eq!(g.record(GW, off, gw), Verdict::Keep);
        assert_eq!(g.record(ERR, off, gw), Verdict::Keep);
        assert_eq!(g.record(GW, off, gw), Verdict::Keep);
        assert_eq!(g.record(GW, off, gw), Verdict::Eject);
        // Not enforced: never trips.
        let n = State::default();
        for _ in 0..10 {
            assert_eq!(n.record(ERR, (1, 0), off), Verdict::Keep);
        }
    }

    #[test]
    fn ejections_grow_with_repeats_decay_while_back_and_end() {
        let s = State::default();
        let base = Duration::from_secs(30);
        let interval = Duration::from_secs(10);
        assert!(!s.is_ejected(1_000));
        assert_eq!(s.eject(1_000, base, interval), Duration::from_secs(30));
        assert!(s.is_ejected(30_999));
        assert!(!s.is_ejected(31_000));
        // Ejected again right after: twice as long.
        assert_eq!(s.eject(31_000, base, interval), Duration::from_secs(60));
        // Back for three intervals after that ends: the count decays by
        // three (2 → 0), so the next ejection is one base again.
        assert_eq!(
            s.eject(91_000 + 30_000, base, interval),
            Duration::from_secs(30)
        );
        // Never longer than 300 s.
        let long = State::default();
        let mut last = Duration::ZERO;
        for i in 0..20 {
            last = long.eject(i, base, interval);
        }
        assert_eq!(last, MAX_EJECTION);
    }
}
