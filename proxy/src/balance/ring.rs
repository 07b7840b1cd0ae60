//! The consistent-hash tables: a Ketama ring (`RingHash`) and a Maglev
//! lookup table (`Maglev`), both built once per balancer and read without
//! locks.
//!
//! Both hash endpoint addresses (`ip:port`) with xxHash64, so the same
//! endpoint set gives the same table on every proxy and every rebuild.
//! Ring sizing departs from Envoy on purpose: Envoy gives each endpoint
//! `min_ring_size / endpoints` points, so removing one of four endpoints
//! also reshuffles about an eighth of the keys among the survivors. Here
//! each weight unit gets at least [`POINTS_PER_UNIT`] points (while the
//! ring stays under [`RING_BUDGET`]), so for small and medium sets the
//! survivors' points do not change and only the removed endpoint's keys
//! move; `min_ring_size` still raises the count, and Envoy's 8M cap still
//! bounds it. This module does not know about health or localities: it is
//! given the effective weight of each endpoint.

use std::fmt::{self, Write as _};
use std::net::SocketAddr;

use super::hash::xxh64;

/// Points per unit of (minimum-normalised) weight, when the budget allows.
const POINTS_PER_UNIT: f64 = 512.0;
/// The ring size above which points per unit shrink (12 bytes a point).
const RING_BUDGET: f64 = (1 << 17) as f64;
/// Envoy's `maximum_ring_size` default, also the cap on `min_ring_size`.
pub(super) const MAX_RING: u64 = 8 * 1024 * 1024;
/// The Maglev table size (prime; Envoy's and Istio's default).
const MAGLEV_SIZE: usize = 65_537;

/// A sorted ring of `(hash, endpoint index)` points.
pub(super) struct Ring {
    hashes: Vec<u64>,
    owners: Vec<u32>,
}

impl Ring {
    /// A ring over `addrs` with effective `weights` (same length, > 0).
    pub(super) fn new(addrs: &[SocketAddr], weights: &[f64], min_ring_size: u64) -> Self {
        let min_w = weights.iter().copied().fold(f64::INFINITY, f64::min);
        if addrs.is_empty() || !min_w.is_finite() || min_w <= 0.0 {
            return Self {
                hashes: Vec::new(),
                owners: Vec::new(),
            };
        }
        let units: f64 = weights.iter().map(|w| w / min_w).sum();
        let per_unit = points_per_unit(units, min_ring_size);
        let mut points: Vec<(u64, u32)> = Vec::new();
        let mut key = String::new();
        for (i, (addr, w)) in addrs.iter().zip(weights).enumerate() {
            let n = ((w / min_w) * per_unit).round().max(1.0) as u64;
            let owner = u32::try_from(i).unwrap_or(u32::MAX);
            for j in 0..n {
                key.clear();
                // Writing to a String cannot fail.
                let _ = write!(key, "{addr}_{j}");
                points.push((xxh64(key.as_bytes(), 0), owner));
            }
        }
        points.sort_unstable();
        Self {
            hashes: points.iter().map(|p| p.0).collect(),
            owners: points.iter().map(|p| p.1).collect(),
        }
    }

    /// The number of points.
    pub(super) fn len(&self) -> usize {
        self.hashes.len()
    }

    /// The owner of the first point at or after `hash` (wrapping) that
    /// `ok` accepts; the first owner if `ok` accepts none.
    pub(super) fn pick(&self, hash: u64, ok: impl Fn(usize) -> bool) -> Option<usize> {
        let n = self.hashes.len();
        if n == 0 {
            return None;
        }
        let start = self.hashes.partition_point(|&h| h < hash) % n;
        let first = self.owners[start] as usize;
        if ok(first) {
            return Some(first);
        }
        (1..n)
            .map(|k| self.owners[(start + k) % n] as usize)
            .find(|&i| ok(i))
            .or(Some(first))
    }
}

impl fmt::Debug for Ring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ring").field("points", &self.len()).finish()
    }
}

impl fmt::Debug for Maglev {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Maglev")
            .field("slots", &self.table.len())
            .finish()
    }
}

/// Ring points per unit of weight for `units` units in total.
fn points_per_unit(units: f64, min_ring_size: u64) -> f64 {
    let min_ring = min_ring_size.clamp(1, MAX_RING) as f64;
    (min_ring / units)
        .ceil()
        .max(POINTS_PER_UNIT.min(RING_BUDGET / units))
        .min(MAX_RING as f64 / units)
        .max(1.0)
}

/// A Maglev lookup table: slot → endpoint index.
pub(super) struct Maglev {
    table: Vec<u32>,
}

impl Maglev {
    /// A table over `addrs` with effective `weights` (same length, > 0);
    /// each endpoint fills slots in proportion to its weight.
    pub(super) fn new(addrs: &[SocketAddr], weights: &[f64]) -> Self {
        let max_w = weights.iter().copied().fold(0.0, f64::max);
        if addrs.is_empty() || max_w <= 0.0 {
            return Self { table: Vec::new() };
        }
        let m = MAGLEV_SIZE as u64;
        let perms: Vec<(u64, u64)> = addrs
            .iter()
            .map(|a| {
                let key = a.to_string();
                let offset = xxh64(key.as_bytes(), 0) % m;
                let skip = xxh64(key.as_bytes(), 1) % (m - 1) + 1;
                (offset, skip)
            })
            .collect();
        let mut next = vec![0u64; addrs.len()];
        let mut credit = vec![0.0f64; addrs.len()];
        let mut table = vec![u32::MAX; MAGLEV_SIZE];
        let mut filled = 0;
        'fill: loop {
            for i in 0..addrs.len() {
                credit[i] += weights[i] / max_w;
                while credit[i] >= 1.0 {
                    credit[i] -= 1.0;
                    let (offset, skip) = perms[i];
                    let slot = loop {
                        let c = ((offset + next[i] * skip) % m) as usize;
                        next[i] += 1;
                        if table[c] == u32::MAX {
                            break c;
                        }
                    };
                    table[slot] = u32::try_from(i).unwrap_or(u32::MAX);
                    filled += 1;
                    if filled == MAGLEV_SIZE {
                        break 'fill;
                    }
                }
            }
        }
        Self { table }
    }

    /// The endpoint for `hash`, or the next slot's that `ok` accepts; the
    /// first if `ok` accepts none.
    pub(super) fn pick(&self, hash: u64, ok: impl Fn(usize) -> bool) -> Option<usize> {
        let n = self.table.len();
        if n == 0 {
            return None;
        }
        let start = (hash % n as u64) as usize;
        let first = self.table[start] as usize;
        if ok(first) {
            return Some(first);
        }
        (1..n)
            .map(|k| self.table[(start + k) % n] as usize)
            .find(|&i| ok(i))
            .or(Some(first))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs(n: u8) -> Vec<SocketAddr> {
        (1..=n)
            .map(|i| SocketAddr::from(([10, 0, 0, i], 8080)))
            .collect()
    }

    #[test]
    fn ring_sizes_follow_weights_and_minimum() {
        let a = addrs(4);
        let ring = Ring::new(&a, &[1.0; 4], 1024);
        assert_eq!(ring.len(), 4 * 512);
        let ring = Ring::new(&a, &[1.0; 4], 1 << 14);
        assert_eq!(ring.len(), 1 << 14);
        let ring = Ring::new(&a[..2], &[1.0, 3.0], 1024);
        assert_eq!(ring.len(), 4 * 512);
        assert_eq!(points_per_unit(4.0, u64::MAX), (MAX_RING / 4) as f64);
        // Large sets shrink towards the budget, never below min_ring_size.
        assert_eq!(points_per_unit(1024.0, 1024), 128.0);
        assert_eq!(points_per_unit(1e6, 1024), 1.0);
    }

    #[test]
    fn maglev_fills_every_slot_by_weight() {
        let a = addrs(2);
        let m = Maglev::new(&a, &[1.0, 3.0]);
        assert!(m.table.iter().all(|&o| o < 2));
        let ones = m.table.iter().filter(|&&o| o == 1).count() as f64;
        let share = ones / MAGLEV_SIZE as f64;
        assert!((0.74..0.76).contains(&share), "{share}");
    }

    #[test]
    fn maglev_removal_moves_few_keys() {
        let a = addrs(4);
        let full = Maglev::new(&a, &[1.0; 4]);
        let less = Maglev::new(&a[..3], &[1.0; 3]);
        let moved = (0..1000u64)
            .map(|k| super::super::hash_key(&k.to_le_bytes()))
            .filter(|&h| full.pick(h, |_| true) != less.pick(h, |_| true))
            .count();
        assert!((150..350).contains(&moved), "{moved}");
    }
}
