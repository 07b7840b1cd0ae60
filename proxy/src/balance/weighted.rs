//! Weighted choice among a fixed set: the round-robin schedule and the
//! weighted random draw that the round-robin, random and least-request
//! balancers share, both for endpoints within a locality and for
//! localities.
//!
//! Round robin follows Envoy: earliest-deadline-first over the weights,
//! precomputed once into a schedule that a shared atomic counter walks, so
//! a pick is one `fetch_add` and one index with no lock. Uniform weights
//! need no schedule at all. The schedule is at most [`MAX_SCHEDULE`]
//! entries; larger weight sums are scaled down proportionally (each entry
//! keeps at least one slot), which bends the ratios by at most one slot in
//! `MAX_SCHEDULE`. This module does not know about endpoints or health.

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

/// The longest round-robin schedule built (entries of 4 bytes).
pub(super) const MAX_SCHEDULE: u64 = 1 << 14;

/// Weighted choice among `n` items.
#[derive(Debug)]
pub(super) struct Weighted {
    n: usize,
    /// Running sums of the weights; empty when all weights are equal.
    cumulative: Vec<u64>,
    /// The EDF round-robin order; empty when uniform or not built.
    schedule: Vec<u32>,
    /// The round-robin position, shared by every caller.
    next: AtomicUsize,
}

impl Weighted {
    /// A chooser over `weights` (zeros count as 1); `round_robin` builds
    /// the schedule [`Weighted::next`] walks. `weights` must not be empty.
    pub(super) fn new(weights: &[u64], round_robin: bool) -> Self {
        let weights: Vec<u64> = weights.iter().map(|&w| w.max(1)).collect();
        let uniform = weights.windows(2).all(|w| w[0] == w[1]);
        let (cumulative, schedule) = if uniform {
            (Vec::new(), Vec::new())
        } else {
            let cumulative = weights
                .iter()
                .scan(0u64, |sum, &w| {
                    *sum = sum.saturating_add(w);
                    Some(*sum)
                })
                .collect();
            let schedule = if round_robin {
                edf_schedule(&weights)
            } else {
                Vec::new()
            };
            (cumulative, schedule)
        };
        Self {
            n: weights.len(),
            cumulative,
            schedule,
            // Start at a random place so that proxies restarted together
            // do not all send their first request to the same endpoint.
            next: AtomicUsize::new(fastrand::usize(..)),
        }
    }

    /// Whether all weights are equal.
    pub(super) fn is_uniform(&self) -> bool {
        self.cumulative.is_empty()
    }

    /// The next item in weighted round-robin order.
    pub(super) fn next(&self) -> usize {
        let i = self.next.fetch_add(1, Relaxed);
        if self.schedule.is_empty() {
            i % self.n.max(1)
        } else {
            self.schedule[i % self.schedule.len()] as usize
        }
    }

    /// A weighted random item.
    pub(super) fn random(&self) -> usize {
        match self.cumulative.last() {
            None => fastrand::usize(..self.n.max(1)),
            Some(&total) => {
                let r = fastrand::u64(..total.max(1));
                self.cumulative.partition_point(|&c| c <= r)
            }
        }
    }
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// One item's next deadline, `picks / weight`, compared exactly.
#[derive(PartialEq, Eq)]
struct Deadline {
    picks: u64,
    weight: u64,
    index: u32,
}

impl Ord for Deadline {
    fn cmp(&self, other: &Self) -> Ordering {
        let lhs = u128::from(self.picks) * u128::from(other.weight);
        let rhs = u128::from(other.picks) * u128::from(self.weight);
        lhs.cmp(&rhs).then(self.index.cmp(&other.index))
    }
}

impl PartialOrd for Deadline {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// Earliest-deadline-first order over one full cycle of `weights`: item
/// `i` appears `weights[i]` times (after reduction), spread evenly.
fn edf_schedule(weights: &[u64]) -> Vec<u32> {
    let g = weights.iter().copied().fold(0, gcd).max(1);
    let mut reduced: Vec<u64> = weights.iter().map(|w| w / g).collect();
    let total: u64 = reduced.iter().sum();
    if total > MAX_SCHEDULE {
        for w in &mut reduced {
            // u128: weight * MAX_SCHEDULE may not fit u64.
            let scaled = u128::from(*w) * u128::from(MAX_SCHEDULE) / u128::from(total);
            *w = u64::try_from(scaled).unwrap_or(u64::MAX).max(1);
        }
    }
    let total: u64 = reduced.iter().sum();
    let mut heap: BinaryHeap<Reverse<Deadline>> = reduced
        .iter()
        .enumerate()
        .map(|(i, &weight)| {
            Reverse(Deadline {
                picks: 1,
                weight,
                index: u32::try_from(i).unwrap_or(u32::MAX),
            })
        })
        .collect();
    let mut schedule = Vec::with_capacity(usize::try_from(total).unwrap_or(0));
    for _ in 0..total {
        let Some(Reverse(mut d)) = heap.pop() else {
            break;
        };
        schedule.push(d.index);
        d.picks += 1;
        heap.push(Reverse(d));
    }
    schedule
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(w: &Weighted, picks: usize, f: impl Fn(&Weighted) -> usize) -> Vec<usize> {
        let mut c = vec![0; w.n];
        for _ in 0..picks {
            c[f(w)] += 1;
        }
        c
    }

    #[test]
    fn round_robin_cycles_exactly_and_spreads_heavy_items() {
        let w = Weighted::new(&[1, 3], true);
        assert_eq!(w.schedule, vec![1, 1, 0, 1]);
        assert_eq!(counts(&w, 4000, Weighted::next), vec![1000, 3000]);
        let w = Weighted::new(&[2, 2, 2], true);
        assert!(w.is_uniform());
        assert_eq!(counts(&w, 3000, Weighted::next), vec![1000, 1000, 1000]);
    }

    #[test]
    fn huge_weights_are_scaled_into_a_bounded_schedule() {
        let w = Weighted::new(&[1, u64::MAX / 4, 7], true);
        assert!(w.schedule.len() as u64 <= MAX_SCHEDULE + 3);
        assert!(w.schedule.contains(&0) && w.schedule.contains(&2));
    }

    #[test]
    fn random_follows_weights() {
        fastrand::seed(7);
        let w = Weighted::new(&[1, 3], false);
        let c = counts(&w, 10_000, Weighted::random);
        assert!((2200..2800).contains(&c[0]), "{c:?}");
    }
}
