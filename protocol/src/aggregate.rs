//! Robust aggregation of pseudo-gradients: mean, coordinate-wise trimmed mean, and centred
//! clipping (Karimireddy, He and Jaggi, "Learning from History for Byzantine Robust
//! Optimization", ICML 2021).
//!
//! Every rule is bit-deterministic for a fixed input order: plain Rust arithmetic in a fixed
//! sequence, no threads, no fused multiply-add; norms accumulate in f64 in index order. Every
//! validator that recomputes an aggregate gets the same bits.

use trellis_proto::AggregationRule;

/// Why inputs cannot be aggregated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AggregateError {
    #[error("no pseudo-gradients to aggregate")]
    Empty,
    #[error("pseudo-gradient {index} has {got} values, the first has {expected}")]
    LengthMismatch { index: usize, expected: usize, got: usize },
    #[error("trimmed mean drops {trim} from each side of {count} values: nothing left")]
    TrimTooLarge { trim: u32, count: usize },
    #[error("centred clipping needs a positive radius, got {0}")]
    BadRadius(String),
    #[error("{deltas} pseudo-gradients with {steps} step counts")]
    StepCount { deltas: usize, steps: usize },
    #[error("pseudo-gradient {index} claims zero inner steps")]
    ZeroSteps { index: usize },
}

fn check(deltas: &[&[f32]]) -> Result<usize, AggregateError> {
    let first = deltas.first().ok_or(AggregateError::Empty)?;
    for (index, delta) in deltas.iter().enumerate() {
        if delta.len() != first.len() {
            return Err(AggregateError::LengthMismatch { index, expected: first.len(), got: delta.len() });
        }
    }
    Ok(first.len())
}

/// Aggregates `deltas` (in the given order) with `rule`, as a round does.
///
/// A round may accept fewer Δs than the job has slots (a slot left empty, a miner rejected), so
/// a trimmed mean drops at most `(K − 1) / 2` values from each side of K: with one or two
/// accepted Δs it is their mean. Without that, a miner who takes a slot and never delivers
/// could make every round of a `trim = 1, workers = 3` job lapse, and its honest miners go
/// unpaid (`docs/threat-model.md`, "Too few accepted Δs for the job's trim").
pub fn aggregate(rule: &AggregationRule, deltas: &[&[f32]]) -> Result<Vec<f32>, AggregateError> {
    match rule {
        AggregationRule::Mean => mean(deltas),
        AggregationRule::TrimmedMean { trim } => {
            let most = (deltas.len().saturating_sub(1) / 2) as u32;
            trimmed_mean(deltas, (*trim).min(most))
        }
        AggregationRule::CenteredClip { tau, iterations } => centered_clip(deltas, *tau, *iterations),
    }
}

/// [`aggregate`] of Δs whose workers trained `steps[k]` inner steps each (a round whose workers
/// may commit after `min_inner_steps`, docs/protocol.md §4.3): the mean weights each Δ by its
/// steps, `Σ s_k·Δ_k / Σ s_k`, so a straggler's shorter round counts for the work in it. When every
/// worker trained the same steps this is [`aggregate`], bit for bit. Trimmed mean and centred
/// clipping rank or clip values and take each Δ once, whatever its steps.
pub fn aggregate_by_steps(
    rule: &AggregationRule,
    deltas: &[&[f32]],
    steps: &[u32],
) -> Result<Vec<f32>, AggregateError> {
    if steps.len() != deltas.len() {
        return Err(AggregateError::StepCount { deltas: deltas.len(), steps: steps.len() });
    }
    if let Some(index) = steps.iter().position(|s| *s == 0) {
        return Err(AggregateError::ZeroSteps { index });
    }
    match rule {
        AggregationRule::Mean if steps.windows(2).any(|w| w[0] != w[1]) => weighted_mean(deltas, steps),
        _ => aggregate(rule, deltas),
    }
}

/// `Σ s_k·Δ_k / Σ s_k`, summed in input order (each product rounded to f32, then added), the
/// total of the steps converted to f32 once.
pub fn weighted_mean(deltas: &[&[f32]], steps: &[u32]) -> Result<Vec<f32>, AggregateError> {
    let n = check(deltas)?;
    if steps.len() != deltas.len() {
        return Err(AggregateError::StepCount { deltas: deltas.len(), steps: steps.len() });
    }
    let mut sum = vec![0.0f32; n];
    for (delta, weight) in deltas.iter().zip(steps) {
        let weight = *weight as f32;
        for (s, d) in sum.iter_mut().zip(delta.iter()) {
            *s += weight * d;
        }
    }
    let total = steps.iter().map(|s| u64::from(*s)).sum::<u64>() as f32;
    sum.iter_mut().for_each(|s| *s /= total);
    Ok(sum)
}

/// The element-wise mean, summed in input order.
pub fn mean(deltas: &[&[f32]]) -> Result<Vec<f32>, AggregateError> {
    check(deltas)?;
    Ok(crate::outer::mean(deltas))
}

/// Per coordinate: sort the K values, drop the `trim` smallest and `trim` largest, average the
/// rest in sorted order.
pub fn trimmed_mean(deltas: &[&[f32]], trim: u32) -> Result<Vec<f32>, AggregateError> {
    let n = check(deltas)?;
    let k = deltas.len();
    if 2 * trim as usize >= k {
        return Err(AggregateError::TrimTooLarge { trim, count: k });
    }
    let kept = (k - 2 * trim as usize) as f32;
    let mut column = vec![0.0f32; k];
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        for (slot, delta) in column.iter_mut().zip(deltas) {
            *slot = delta[i];
        }
        column.sort_by(f32::total_cmp);
        let sum: f32 = column[trim as usize..k - trim as usize].iter().sum();
        out.push(sum / kept);
    }
    Ok(out)
}

/// The coordinate-wise median (the mean of the two middle values for an even count).
pub fn coordinate_median(deltas: &[&[f32]]) -> Result<Vec<f32>, AggregateError> {
    let n = check(deltas)?;
    let k = deltas.len();
    let mut column = vec![0.0f32; k];
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        for (slot, delta) in column.iter_mut().zip(deltas) {
            *slot = delta[i];
        }
        column.sort_by(f32::total_cmp);
        out.push(if k % 2 == 1 { column[k / 2] } else { (column[k / 2 - 1] + column[k / 2]) / 2.0 });
    }
    Ok(out)
}

/// Centred clipping: starting from the coordinate-wise median `v`, repeat `iterations` times
/// `v ← v + (1/K) Σᵢ (xᵢ − v) · min(1, r / ‖xᵢ − v‖)`. An input far from the centre moves it by
/// at most `r/K` per iteration, however large it is.
///
/// The radius is relative: `r = τ · median_i ‖xᵢ − median‖`, so one τ fits every round even
/// as pseudo-gradients shrink with the learning rate (an absolute radius that suits the first
/// rounds lets an attacker through in the last ones, measured in `docs/benchmarks.md`).
pub fn centered_clip(deltas: &[&[f32]], tau: f32, iterations: u32) -> Result<Vec<f32>, AggregateError> {
    let n = check(deltas)?;
    if !(tau.is_finite() && tau > 0.0) {
        return Err(AggregateError::BadRadius(tau.to_string()));
    }
    let mut center = coordinate_median(deltas)?;
    let mut distances: Vec<f64> = deltas.iter().map(|x| distance(x, &center)).collect();
    distances.sort_by(f64::total_cmp);
    let middle = distances.len() / 2;
    let spread =
        if distances.len() % 2 == 1 { distances[middle] } else { (distances[middle - 1] + distances[middle]) / 2.0 };
    let radius = f64::from(tau) * spread;
    if radius == 0.0 {
        // At least half the inputs sit on the median: it is the answer.
        return Ok(center);
    }
    let k = deltas.len() as f64;
    let mut step = vec![0.0f64; n];
    for _ in 0..iterations {
        step.iter_mut().for_each(|s| *s = 0.0);
        for delta in deltas {
            let norm = distance(delta, &center);
            let scale = if norm > radius { radius / norm } else { 1.0 };
            for ((s, x), c) in step.iter_mut().zip(delta.iter()).zip(&center) {
                *s += f64::from(x - c) * scale;
            }
        }
        for (c, s) in center.iter_mut().zip(&step) {
            *c = (f64::from(*c) + s / k) as f32;
        }
    }
    Ok(center)
}

fn distance(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(x, y)| f64::from(x - y).powi(2)).sum::<f64>().sqrt()
}

/// Cosine similarity of two vectors (f64 accumulation); 0 when either is zero.
pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let (mut dot, mut na, mut nb) = (0.0f64, 0.0f64, 0.0f64);
    for (x, y) in a.iter().zip(b) {
        dot += f64::from(*x) * f64::from(*y);
        na += f64::from(*x).powi(2);
        nb += f64::from(*y).powi(2);
    }
    if na == 0.0 || nb == 0.0 {
        return 0.0;
    }
    dot / (na.sqrt() * nb.sqrt())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rounds_trimmed_mean_trims_what_the_accepted_count_allows() {
        let rule = AggregationRule::TrimmedMean { trim: 2 };
        assert_eq!(aggregate(&rule, &[&[4.0]]).unwrap(), vec![4.0], "one Δ: itself");
        assert_eq!(aggregate(&rule, &[&[4.0], &[2.0]]).unwrap(), vec![3.0], "two: their mean");
        assert_eq!(aggregate(&rule, &[&[4.0], &[2.0], &[100.0]]).unwrap(), vec![4.0], "three: trim 1");
        assert_eq!(aggregate(&rule, &[&[4.0], &[2.0], &[100.0], &[-50.0], &[3.0]]).unwrap(), vec![3.0], "five: trim 2");
        assert!(
            matches!(trimmed_mean(&[&[4.0], &[2.0]], 1), Err(AggregateError::TrimTooLarge { .. })),
            "the bare rule stays strict"
        );
    }

    #[test]
    fn trimmed_mean_matches_a_hand_computed_example() {
        // Column values: [1, 2, 3, 100] → trim 1 → mean(2, 3) = 2.5; [-5, 0, 0, 5] → 0.
        let a = [1.0f32, -5.0];
        let b = [2.0f32, 0.0];
        let c = [3.0f32, 0.0];
        let d = [100.0f32, 5.0];
        assert_eq!(trimmed_mean(&[&a, &b, &c, &d], 1).unwrap(), vec![2.5, 0.0]);
        assert_eq!(trimmed_mean(&[&a, &b], 1), Err(AggregateError::TrimTooLarge { trim: 1, count: 2 }));
    }

    #[test]
    fn mean_and_median_match_hand_computed_examples() {
        let a = [1.0f32, 4.0];
        let b = [3.0f32, 8.0];
        let c = [8.0f32, 0.0];
        assert_eq!(mean(&[&a, &b, &c]).unwrap(), vec![4.0, 4.0]);
        assert_eq!(coordinate_median(&[&a, &b, &c]).unwrap(), vec![3.0, 4.0]);
        assert_eq!(coordinate_median(&[&a, &b]).unwrap(), vec![2.0, 6.0]);
    }

    #[test]
    fn centered_clipping_matches_a_hand_computed_example() {
        // Three 1-D inputs 0, 1, 10: median 1, distances 1, 0, 9, median distance 1, so τ = 2
        // gives radius 2. Offsets -1, 0, 9 → clipped -1, 0, 2. One iteration: v = 1 + 1/3 = 4/3.
        let got = centered_clip(&[&[0.0], &[1.0], &[10.0]], 2.0, 1).unwrap();
        assert!((got[0] - 4.0 / 3.0).abs() < 1e-6, "{got:?}");
    }

    #[test]
    fn the_mean_weights_each_delta_by_its_steps_and_equal_steps_give_the_plain_mean() {
        // 30 steps of Δ = 1 and 10 steps of Δ = 5: (30 + 50) / 40 = 2.
        assert_eq!(aggregate_by_steps(&AggregationRule::Mean, &[&[1.0], &[5.0]], &[30, 10]).unwrap(), vec![2.0]);
        let a: Vec<f32> = (0..257).map(|i| (i as f32 * 0.37).sin() * 1e-3).collect();
        let b: Vec<f32> = (0..257).map(|i| (i as f32 * 0.11).cos() * 3e-2).collect();
        let c: Vec<f32> = (0..257).map(|i| (i as f32).sqrt() * 1e-4).collect();
        let bits = |v: Vec<f32>| v.into_iter().map(f32::to_bits).collect::<Vec<_>>();
        assert_eq!(
            bits(aggregate_by_steps(&AggregationRule::Mean, &[&a, &b, &c], &[50, 50, 50]).unwrap()),
            bits(mean(&[&a, &b, &c]).unwrap()),
            "equal steps: the plain mean, bit for bit (jobs without stragglers keep their aggregates)"
        );
        let trim = AggregationRule::TrimmedMean { trim: 1 };
        assert_eq!(
            aggregate_by_steps(&trim, &[&[1.0], &[5.0], &[100.0]], &[50, 10, 50]).unwrap(),
            vec![5.0],
            "a trimmed mean ranks values and takes each Δ once"
        );
        assert_eq!(
            aggregate_by_steps(&AggregationRule::Mean, &[&[1.0], &[5.0]], &[30]),
            Err(AggregateError::StepCount { deltas: 2, steps: 1 })
        );
        assert_eq!(
            aggregate_by_steps(&AggregationRule::Mean, &[&[1.0], &[5.0]], &[30, 0]),
            Err(AggregateError::ZeroSteps { index: 1 })
        );
    }

    #[test]
    fn centered_clipping_bounds_a_huge_attacker_where_the_mean_does_not() {
        let honest: Vec<Vec<f32>> =
            (0..3).map(|i| (0..100).map(|j| ((i * 100 + j) as f32 * 0.1).sin() * 0.01).collect()).collect();
        let attacker: Vec<f32> = honest[0].iter().map(|x| -x * 1e4).collect();
        let mut inputs: Vec<&[f32]> = honest.iter().map(Vec::as_slice).collect();
        let clean = mean(&inputs).unwrap();
        inputs.push(&attacker);
        let distance = |v: &[f32]| v.iter().zip(&clean).map(|(a, b)| f64::from(a - b).powi(2)).sum::<f64>().sqrt();
        let by_mean = distance(&mean(&inputs).unwrap());
        let by_clip = distance(&centered_clip(&inputs, 1.0, 3).unwrap());
        assert!(by_clip * 100.0 < by_mean, "clip {by_clip} vs mean {by_mean}");
    }

    #[test]
    fn rules_are_bit_deterministic() {
        let a: Vec<f32> = (0..1000).map(|i| (i as f32).sin()).collect();
        let b: Vec<f32> = (0..1000).map(|i| (i as f32 * 0.3).cos()).collect();
        let c: Vec<f32> = (0..1000).map(|i| (i as f32 * 0.7).sin() * 3.0).collect();
        let inputs: [&[f32]; 3] = [&a, &b, &c];
        for rule in [
            AggregationRule::Mean,
            AggregationRule::TrimmedMean { trim: 1 },
            AggregationRule::CenteredClip { tau: 1.0, iterations: 3 },
        ] {
            let bits = |v: Vec<f32>| v.into_iter().map(f32::to_bits).collect::<Vec<_>>();
            assert_eq!(bits(aggregate(&rule, &inputs).unwrap()), bits(aggregate(&rule, &inputs).unwrap()));
        }
    }

    #[test]
    fn bad_inputs_are_errors() {
        assert_eq!(mean(&[]), Err(AggregateError::Empty));
        assert!(matches!(mean(&[&[1.0], &[1.0, 2.0]]), Err(AggregateError::LengthMismatch { index: 1, .. })));
        assert!(matches!(centered_clip(&[&[1.0]], 0.0, 1), Err(AggregateError::BadRadius(_))));
    }

    #[test]
    fn cosine_flags_copies() {
        let a: Vec<f32> = (0..100).map(|i| (i as f32).sin()).collect();
        let b: Vec<f32> = (0..100).map(|i| (i as f32 * 1.7).cos()).collect();
        assert!((cosine(&a, &a) - 1.0).abs() < 1e-12);
        assert!(cosine(&a, &b).abs() < 0.3);
        assert_eq!(cosine(&a, &[0.0; 100]), 0.0);
    }
}
