//! Freeloader signals: a Δ equal or nearly equal to another miner's in the same round.
//!
//! Honest workers train on disjoint shards, so their pseudo-gradients point in related but
//! clearly different directions (cosine similarity measured on honest runs is in
//! `docs/benchmarks.md`); a copy, even with a little noise added, is almost parallel.

use trellis_protocol::aggregate::cosine;

/// Cosine similarity above which two Δ of one round count as copies. Honest `nano` and `micro`
/// workers measured far below it (`docs/benchmarks.md`).
pub const COPY_COSINE_BOUND: f64 = 0.99;

/// A pair of workers whose Δ look copied: `later` copied `earlier` (by submission order).
#[derive(Debug, Clone, PartialEq)]
pub struct CopySuspect {
    pub earlier: usize,
    pub later: usize,
    pub cosine: f64,
}

/// Every pair (in submission order) whose Δ are identical or have cosine ≥ `bound`.
pub fn find_copies(deltas: &[&[f32]], bound: f64) -> Vec<CopySuspect> {
    let mut suspects = Vec::new();
    for later in 1..deltas.len() {
        for earlier in 0..later {
            let similarity =
                if deltas[earlier] == deltas[later] { 1.0 } else { cosine(deltas[earlier], deltas[later]) };
            if similarity >= bound {
                suspects.push(CopySuspect { earlier, later, cosine: similarity });
                break;
            }
        }
    }
    suspects
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_and_noisy_copies_are_found_and_distinct_deltas_are_not() {
        let a: Vec<f32> = (0..1000).map(|i| (i as f32 * 0.37).sin()).collect();
        let b: Vec<f32> = (0..1000).map(|i| (i as f32 * 0.11).cos()).collect();
        let noisy: Vec<f32> =
            a.iter().enumerate().map(|(i, x)| x + 0.01 * ((i * 7919 % 13) as f32 - 6.0) / 6.0).collect();
        let exact = a.clone();
        let found = find_copies(&[&a, &b, &exact, &noisy], COPY_COSINE_BOUND);
        assert_eq!(found.iter().map(|s| (s.earlier, s.later)).collect::<Vec<_>>(), vec![(0, 2), (0, 3)]);
        assert!(find_copies(&[&a, &b], COPY_COSINE_BOUND).is_empty());
    }
}
