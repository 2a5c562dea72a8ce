//! Judging a segment, and deciding whose fault a failed check is.
//!
//! A checker re-executes a segment's steps from its start checkpoint and hands the result to
//! [`judge_replay`], which compares the end checkpoint (its hash in exact mode, its distance in
//! tolerance mode) and the loss of every step with what the trail claims. A start checkpoint
//! must be a state honest training can reach ([`check_state`]): finite, no subnormal values (the
//! trainer flushes them to zero at every checkpoint, so no backend's denormal handling can make
//! honest re-executions differ), second moments never negative.
//!
//! Every other way a check can end is a [`Blame`]: the miner's (its data is wrong or missing),
//! the job's (its dataset, model, keys or spec cannot be used: the job is voided), or the
//! checker's own (it abstains). No failure is silent.

use trellis_proto::{
    Hash, HashDomain, InvalidEvidence, InvalidReason, JobFaultReason, VerdictOutcome, VerificationMode,
};

use crate::trail::SegmentClaim;

/// How a job compares a re-execution with the trail.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Comparison {
    /// End checkpoint hashes equal, losses equal bit for bit (same backend class).
    Exact,
    /// End weights within `max_distance` (relative L2), each loss within `max_distance` of the
    /// claimed one relative to `max(|claimed|, 1)`.
    Tolerance { max_distance: f64 },
}

impl Comparison {
    /// The comparison of a job's verification mode (`None` for groth16: proofs, no replay).
    pub fn of(mode: &VerificationMode) -> Option<Comparison> {
        match mode {
            VerificationMode::Exact => Some(Comparison::Exact),
            VerificationMode::Tolerance { max_distance } => {
                Some(Comparison::Tolerance { max_distance: f64::from(*max_distance) })
            }
            VerificationMode::Groth16 { .. } => None,
        }
    }
}

/// What re-executing a segment produced.
#[derive(Debug, Clone, PartialEq)]
pub struct Replayed<'a> {
    /// Hash of the checkpoint re-execution reached.
    pub end_hash: Hash,
    /// The loss of every re-executed step.
    pub losses: &'a [f32],
    /// Relative L2 distance of the reached weights from the claimed end checkpoint's (tolerance
    /// mode; unused in exact mode).
    pub distance: f64,
}

/// The hash under which a list of losses is cited in evidence (f32 little-endian, blob domain).
pub fn losses_hash(losses: &[f32]) -> Hash {
    let bytes: Vec<u8> = losses.iter().flat_map(|l| l.to_le_bytes()).collect();
    Hash::digest(HashDomain::Blob, &bytes)
}

/// The largest difference between claimed and re-executed losses where they disagree under
/// `comparison`; `None` when they agree (same count, every step within the rule).
pub fn loss_disagreement(claimed: &[f32], replayed: &[f32], comparison: Comparison) -> Option<f64> {
    let worst = claimed.iter().zip(replayed).map(|(a, b)| (f64::from(*a) - f64::from(*b)).abs()).fold(0.0, f64::max);
    let agree = claimed.len() == replayed.len()
        && claimed.iter().zip(replayed).all(|(a, b)| match comparison {
            Comparison::Exact => a.to_bits() == b.to_bits(),
            Comparison::Tolerance { max_distance } => {
                let (a, b) = (f64::from(*a), f64::from(*b));
                a.is_finite() && b.is_finite() && (a - b).abs() <= max_distance * a.abs().max(1.0)
            }
        });
    (!agree).then_some(if claimed.len() == replayed.len() { worst } else { f64::INFINITY })
}

/// The verdict on a segment whose start checkpoint checked out and which was re-executed.
pub fn judge_replay(claim: &SegmentClaim<'_>, replayed: &Replayed<'_>, comparison: Comparison) -> VerdictOutcome {
    let end = match comparison {
        Comparison::Exact if replayed.end_hash != claim.end.hash => {
            Some(InvalidEvidence::new(InvalidReason::CheckpointMismatch, claim.end.hash, replayed.end_hash, 0.0))
        }
        Comparison::Tolerance { max_distance } if replayed.distance.is_nan() || replayed.distance > max_distance => {
            Some(InvalidEvidence::new(
                InvalidReason::DistanceExceeded,
                claim.end.hash,
                replayed.end_hash,
                replayed.distance,
            ))
        }
        _ => None,
    };
    if let Some(evidence) = end {
        return VerdictOutcome::Invalid(evidence);
    }
    match loss_disagreement(claim.losses, replayed.losses, comparison) {
        Some(worst) => VerdictOutcome::Invalid(InvalidEvidence::new(
            InvalidReason::LossMismatch,
            losses_hash(claim.losses),
            losses_hash(replayed.losses),
            worst,
        )),
        None => VerdictOutcome::Valid,
    }
}

/// A value no honest checkpoint holds, and where.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum StateDefect {
    #[error("{section} value {index} is not finite")]
    NonFinite { section: &'static str, index: usize },
    #[error("{section} value {index} is subnormal (checkpoints flush subnormals to zero)")]
    Subnormal { section: &'static str, index: usize },
    #[error("second moment {index} is negative")]
    NegativeSecondMoment { index: usize },
}

/// Whether weights and AdamW moments are a state honest training can checkpoint.
pub fn check_state(weights: &[f32], first_moments: &[f32], second_moments: &[f32]) -> Result<(), StateDefect> {
    // A branch-free pass first (the compiler vectorises it); the defect is located only if any.
    let defective = |v: &f32| {
        let exponent = v.to_bits() & 0x7f80_0000;
        (exponent == 0x7f80_0000) | ((exponent == 0) & (v.to_bits() & 0x007f_ffff != 0))
    };
    let any_defect =
        [weights, first_moments].iter().flat_map(|s| s.iter()).fold(false, |found, v| found | defective(v))
            | second_moments.iter().fold(false, |found, v| found | defective(v) | (*v < 0.0));
    if !any_defect {
        return Ok(());
    }
    for (section, values) in [("weight", weights), ("first moment", first_moments), ("second moment", second_moments)] {
        for (index, value) in values.iter().enumerate() {
            if !value.is_finite() {
                return Err(StateDefect::NonFinite { section, index });
            }
            if value.is_subnormal() {
                return Err(StateDefect::Subnormal { section, index });
            }
        }
    }
    match second_moments.iter().position(|v| *v < 0.0) {
        Some(index) => Err(StateDefect::NegativeSecondMoment { index }),
        None => Ok(()),
    }
}

/// Whose fault a check that could not reach a replay verdict is, which decides what the checker
/// sends (STYLE: errors map to policy).
#[derive(Debug, Clone, PartialEq)]
pub enum Blame {
    /// The miner's data is wrong: `Invalid` with this evidence.
    Miner(InvalidEvidence),
    /// No holder served the miner's blobs in time: `Unavailable`.
    Withheld,
    /// The job cannot be checked as submitted: the job is voided.
    Job(JobFaultReason),
    /// This checker failed (its disk, its network, a crash): it abstains.
    Checker,
}

impl Blame {
    /// The miner's fault, with evidence built from these hashes.
    pub fn miner(reason: InvalidReason, expected: Hash, reproduced: Hash) -> Blame {
        Blame::Miner(InvalidEvidence::new(reason, expected, reproduced, 0.0))
    }

    /// The verdict a checker sends for this failure.
    pub fn outcome(&self) -> VerdictOutcome {
        match self {
            Blame::Miner(evidence) => VerdictOutcome::Invalid(evidence.clone()),
            Blame::Withheld => VerdictOutcome::Unavailable,
            Blame::Job(reason) => VerdictOutcome::JobFault { reason: *reason },
            Blame::Checker => VerdictOutcome::Abstain,
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use trellis_proto::{decode, Encode, TrailEntry};

    use super::*;

    fn claim(losses: &[f32]) -> SegmentClaim<'_> {
        SegmentClaim {
            segment: 0,
            start: TrailEntry { step: 0, hash: Hash([1; 32]) },
            end: TrailEntry { step: losses.len() as u64, hash: Hash([2; 32]) },
            steps: losses.len() as u64,
            losses,
        }
    }

    #[test]
    fn an_exact_replay_must_match_the_end_hash_and_every_loss_bit_for_bit() {
        let losses = [3.5f32, 3.25, 3.0];
        let honest = Replayed { end_hash: Hash([2; 32]), losses: &losses, distance: 0.0 };
        assert_eq!(judge_replay(&claim(&losses), &honest, Comparison::Exact), VerdictOutcome::Valid);
        let other_end = Replayed { end_hash: Hash([3; 32]), ..honest.clone() };
        assert!(matches!(
            judge_replay(&claim(&losses), &other_end, Comparison::Exact),
            VerdictOutcome::Invalid(InvalidEvidence { reason: InvalidReason::CheckpointMismatch, .. })
        ));
        // Same end, one loss off by one ulp: the losses do not follow from the start.
        let nudged = [3.5f32, f32::from_bits(3.25f32.to_bits() + 1), 3.0];
        let VerdictOutcome::Invalid(evidence) = judge_replay(&claim(&nudged), &honest, Comparison::Exact) else {
            panic!("a nudged loss is not valid")
        };
        assert_eq!(evidence.reason, InvalidReason::LossMismatch);
        assert_eq!(evidence.expected, losses_hash(&nudged));
        assert!(evidence.distance > 0.0);
        // Fewer losses than steps (a padded or cut trail) never agrees.
        assert_eq!(loss_disagreement(&losses[..2], &losses, Comparison::Exact), Some(f64::INFINITY));
    }

    #[test]
    fn tolerance_mode_bounds_the_distance_and_each_loss() {
        let losses = [3.5f32, 3.25];
        let close = [3.5000002f32, 3.2499998];
        let cmp = Comparison::Tolerance { max_distance: 1e-5 };
        let replay = |distance| Replayed { end_hash: Hash([7; 32]), losses: &close, distance };
        assert_eq!(judge_replay(&claim(&losses), &replay(5e-6), cmp), VerdictOutcome::Valid);
        for distance in [2e-5, f64::NAN, f64::INFINITY] {
            let VerdictOutcome::Invalid(evidence) = judge_replay(&claim(&losses), &replay(distance), cmp) else {
                panic!()
            };
            assert_eq!(evidence.reason, InvalidReason::DistanceExceeded);
            assert!(evidence.distance.is_finite(), "a distance of {distance} still encodes");
        }
        let far = [3.5f32, 3.3];
        let loose = Replayed { end_hash: Hash([7; 32]), losses: &far, distance: 0.0 };
        assert!(matches!(
            judge_replay(&claim(&losses), &loose, cmp),
            VerdictOutcome::Invalid(InvalidEvidence { reason: InvalidReason::LossMismatch, .. })
        ));
    }

    #[test]
    fn canonical_states_refuse_nan_infinities_subnormals_and_negative_second_moments() {
        assert_eq!(check_state(&[0.5, -0.0, 0.0], &[1e-30], &[0.0, 1e-20]), Ok(()));
        assert_eq!(check_state(&[f32::NAN], &[], &[]), Err(StateDefect::NonFinite { section: "weight", index: 0 }));
        assert_eq!(
            check_state(&[], &[1.0, f32::INFINITY], &[]),
            Err(StateDefect::NonFinite { section: "first moment", index: 1 })
        );
        let subnormal = f32::from_bits(1);
        assert_eq!(check_state(&[subnormal], &[], &[]), Err(StateDefect::Subnormal { section: "weight", index: 0 }));
        assert_eq!(check_state(&[], &[], &[0.5, -1e-3]), Err(StateDefect::NegativeSecondMoment { index: 1 }));
    }

    #[test]
    fn each_blame_has_its_outcome() {
        assert_eq!(Blame::Withheld.outcome(), VerdictOutcome::Unavailable);
        assert_eq!(Blame::Checker.outcome(), VerdictOutcome::Abstain);
        assert_eq!(
            Blame::Job(JobFaultReason::DatasetUnavailable).outcome(),
            VerdictOutcome::JobFault { reason: JobFaultReason::DatasetUnavailable }
        );
        assert!(matches!(
            Blame::miner(InvalidReason::TrailMismatch, Hash::ZERO, Hash::ZERO).outcome(),
            VerdictOutcome::Invalid(_)
        ));
    }

    proptest! {
        // Whatever the replay's arithmetic produced, the verdict is encodable and decodes back.
        #[test]
        fn verdicts_from_any_replay_encode(
            claimed in proptest::collection::vec(any::<u32>().prop_map(f32::from_bits).prop_filter("finite", |x| x.is_finite()), 0..6),
            replayed in proptest::collection::vec(any::<u32>().prop_map(f32::from_bits).prop_filter("finite", |x| x.is_finite()), 0..6),
            distance in any::<f64>(),
            exact in any::<bool>(),
        ) {
            let comparison = if exact { Comparison::Exact } else { Comparison::Tolerance { max_distance: 1e-3 } };
            let outcome = judge_replay(&claim(&claimed), &Replayed { end_hash: Hash([2; 32]), losses: &replayed, distance }, comparison);
            let back: VerdictOutcome = decode(&outcome.to_bytes()).unwrap();
            prop_assert_eq!(back.to_bytes(), outcome.to_bytes());
        }
    }
}
