//! What an `Invalid` verdict's evidence must quote, and the part of it every validator can
//! re-derive before it votes for a block that carries the verdict.
//!
//! Evidence is `(reason, expected, reproduced, distance)`. `expected` is the **quote**: a hash the
//! miner committed to, which the checker says is wrong — the trail's address, a checkpoint or a
//! proof of the sampled segment, the hash of the segment's recorded losses, the final checkpoint,
//! the Δ or the residual. `reproduced` is what the checker computed instead. Two layers check it:
//!
//! - [`check_on_chain`] needs only the revealed work (`WorkReveal`): the chain runs it when it
//!   records the verdict, and refuses evidence that quotes nothing the miner revealed.
//! - [`rederive`] also reads the miner's trail (a small blob every validator can fetch): it
//!   re-derives the quote — the trail is not one of this round, or the quoted hash is the one the
//!   trail holds for the segment — and refutes evidence that misquotes the miner. A framing
//!   checker thus cannot put an `Invalid` about a claim the miner never made on chain; a
//!   framing checker that quotes correctly but lies about `reproduced` is overturned by the
//!   escalation committee, whose members replay the segment themselves (`rounds::tally`).
//!
//! Pure: no I/O; the caller fetches the trail.

use trellis_proto::{Hash, InvalidEvidence, InvalidReason, Trail, WorkReveal};

use crate::judge::losses_hash;
use crate::trail::{check_trail, segment_claim, TrailFrame};

/// Why evidence does not hold.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unfounded {
    #[error("{reason:?} evidence quotes {quoted}, which is not {what} of the revealed work")]
    NotQuoted { reason: InvalidReason, quoted: Hash, what: &'static str },
    #[error("{reason:?} evidence reproduces the very hash it quotes ({quoted})")]
    NoMismatch { reason: InvalidReason, quoted: Hash },
    #[error("the trail decodes and is one of this round, so it is not {0:?}")]
    TrailIsFine(InvalidReason),
}

/// The hashes of the revealed work `reason` may quote (without the trail).
fn revealed_quotes(reason: InvalidReason, reveal: &WorkReveal) -> Option<(Vec<Hash>, &'static str)> {
    match reason {
        InvalidReason::DeltaMismatch => Some((vec![reveal.delta_hash, reveal.residual_hash], "the Δ or the residual")),
        _ => None,
    }
}

/// Whether the reason compares a hash the checker computed with the quoted one (so the two
/// must differ).
fn compares_hashes(reason: InvalidReason) -> bool {
    matches!(reason, InvalidReason::StartMismatch | InvalidReason::CheckpointMismatch | InvalidReason::LossMismatch)
}

/// The checks that need only the revealed work: what the chain applies when it records a verdict.
pub fn check_on_chain(evidence: &InvalidEvidence, reveal: &WorkReveal) -> Result<(), Unfounded> {
    let (reason, quoted) = (evidence.reason, evidence.expected);
    if let Some((allowed, what)) = revealed_quotes(reason, reveal) {
        if quoted == Hash::ZERO || !allowed.contains(&quoted) {
            return Err(Unfounded::NotQuoted { reason, quoted, what });
        }
    }
    if compares_hashes(reason) && evidence.reproduced == quoted {
        return Err(Unfounded::NoMismatch { reason, quoted });
    }
    Ok(())
}

/// The miner's trail as a validator fetched it.
#[derive(Debug, Clone, Copy)]
pub enum FetchedTrail<'a> {
    /// The bytes at the revealed address do not decode as a trail.
    Undecodable,
    Decoded(&'a Trail),
}

/// Re-derives the quote of `evidence` about segment `segment` from the miner's trail, as every
/// validator can before voting: `Ok` when the evidence holds as far as the trail can tell (a trail
/// that is not one of this round makes any `Invalid` hold: the miner is at fault either way).
pub fn rederive(
    evidence: &InvalidEvidence,
    reveal: &WorkReveal,
    frame: &TrailFrame,
    segment: u32,
    trail: FetchedTrail<'_>,
) -> Result<(), Unfounded> {
    check_on_chain(evidence, reveal)?;
    let trail = match trail {
        FetchedTrail::Undecodable => return Ok(()),
        FetchedTrail::Decoded(trail) => trail,
    };
    let Some(claim) = check_trail(trail, frame).ok().and_then(|()| segment_claim(trail, frame, segment)) else {
        return Ok(());
    };
    let (reason, quoted) = (evidence.reason, evidence.expected);
    let (allowed, what): (Vec<Hash>, &'static str) = match reason {
        // About the trail itself, which decodes and is one of this round.
        InvalidReason::TrailMismatch | InvalidReason::MalformedBlob if quoted == reveal.trail => {
            return Err(Unfounded::TrailIsFine(reason))
        }
        // A checkpoint whose own step is not the trail's says so only when fetched.
        InvalidReason::TrailMismatch => (vec![claim.start.hash, claim.end.hash], "a checkpoint of the segment"),
        InvalidReason::MalformedBlob => {
            (vec![claim.start.hash, claim.end.hash, reveal.final_checkpoint], "a checkpoint of the segment")
        }
        // Quoting the segment's checkpoints, or the round's start (`trail.checkpoints[0]`, which
        // must be the canonical start of the round).
        InvalidReason::StartMismatch | InvalidReason::NonCanonicalState => {
            let round_start = trail.checkpoints.first().map(|e| e.hash).unwrap_or_default();
            (vec![claim.start.hash, claim.end.hash, round_start], "a checkpoint of the segment or the round's start")
        }
        InvalidReason::CheckpointMismatch | InvalidReason::DistanceExceeded => {
            (vec![claim.end.hash], "the segment's end checkpoint")
        }
        InvalidReason::LossMismatch => (vec![losses_hash(claim.losses)], "the hash of the segment's recorded losses"),
        InvalidReason::ProofRejected => {
            (trail.proofs.get(segment as usize).copied().into_iter().collect(), "the segment's proof")
        }
        InvalidReason::DeltaMismatch => return Ok(()),
    };
    if allowed.contains(&quoted) {
        Ok(())
    } else {
        Err(Unfounded::NotQuoted { reason, quoted, what })
    }
}

#[cfg(test)]
mod tests {
    use trellis_proto::{JobId, TrailEntry};

    use super::*;

    const STEPS: u32 = 20;
    const INTERVAL: u32 = 5;

    fn trail() -> Trail {
        let checkpoints = (0..=STEPS / INTERVAL)
            .map(|i| TrailEntry { step: u64::from(i * INTERVAL) + u64::from(STEPS), hash: Hash([i as u8 + 10; 32]) })
            .collect();
        Trail {
            job: JobId(3),
            round: 1,
            worker: 0,
            checkpoint_interval: INTERVAL,
            checkpoints,
            losses: (0..STEPS).map(|i| i as f32).collect(),
            proofs: Vec::new(),
            final_moments: Hash::ZERO,
        }
    }

    fn frame(trail: &Trail) -> TrailFrame {
        TrailFrame {
            job: JobId(3),
            round: 1,
            worker: 0,
            inner_steps: STEPS,
            steps: STEPS,
            interval: INTERVAL,
            proofs: 0,
            final_checkpoint: trail.checkpoints.last().unwrap().hash,
            delta_is_drift: false,
        }
    }

    fn reveal(trail: &Trail) -> WorkReveal {
        WorkReveal {
            job: JobId(3),
            round: 1,
            trail: trail.hash(),
            final_checkpoint: trail.checkpoints.last().unwrap().hash,
            delta_hash: Hash([1; 32]),
            residual_hash: Hash::ZERO,
            steps: STEPS,
            continues: Hash::ZERO,
            next_residual: Hash::ZERO,
        }
    }

    fn evidence(reason: InvalidReason, expected: Hash, reproduced: Hash) -> InvalidEvidence {
        InvalidEvidence::new(reason, expected, reproduced, 0.0)
    }

    #[test]
    fn evidence_quoting_the_miners_own_claims_holds() {
        let t = trail();
        let (f, r) = (frame(&t), reveal(&t));
        let claim = segment_claim(&t, &f, 2).unwrap();
        let decoded = FetchedTrail::Decoded(&t);
        let holds = [
            evidence(InvalidReason::CheckpointMismatch, claim.end.hash, Hash([99; 32])),
            evidence(InvalidReason::DistanceExceeded, claim.end.hash, Hash([99; 32])),
            evidence(InvalidReason::LossMismatch, losses_hash(claim.losses), Hash([98; 32])),
            evidence(InvalidReason::StartMismatch, claim.start.hash, Hash([97; 32])),
            evidence(InvalidReason::NonCanonicalState, claim.start.hash, Hash::ZERO),
            evidence(InvalidReason::MalformedBlob, claim.end.hash, Hash::ZERO),
            evidence(InvalidReason::DeltaMismatch, r.delta_hash, Hash([96; 32])),
            // The start checkpoint's own step is not the trail's (found when it is fetched).
            evidence(InvalidReason::TrailMismatch, claim.start.hash, Hash([95; 32])),
            // The round's first checkpoint is not the canonical start.
            evidence(InvalidReason::StartMismatch, t.checkpoints[0].hash, Hash([94; 32])),
        ];
        for e in &holds {
            assert_eq!(rederive(e, &r, &f, 2, decoded), Ok(()), "{e:?}");
        }
    }

    #[test]
    fn evidence_misquoting_the_miner_is_refuted() {
        let t = trail();
        let (f, r) = (frame(&t), reveal(&t));
        let claim = segment_claim(&t, &f, 2).unwrap();
        let other_segment = segment_claim(&t, &f, 0).unwrap();
        let decoded = FetchedTrail::Decoded(&t);
        let refuted = [
            // A hash the miner never claimed for this segment.
            evidence(InvalidReason::CheckpointMismatch, Hash([55; 32]), Hash([99; 32])),
            evidence(InvalidReason::CheckpointMismatch, other_segment.end.hash, Hash([99; 32])),
            evidence(InvalidReason::LossMismatch, losses_hash(other_segment.losses), Hash([98; 32])),
            // "The trail is not of this round" about a trail that is.
            evidence(InvalidReason::TrailMismatch, r.trail, Hash::ZERO),
            evidence(InvalidReason::MalformedBlob, r.trail, Hash::ZERO),
            // A mismatch that reproduces what it quotes.
            evidence(InvalidReason::CheckpointMismatch, claim.end.hash, claim.end.hash),
            // A Δ the miner did not reveal.
            evidence(InvalidReason::DeltaMismatch, Hash([77; 32]), Hash([96; 32])),
            evidence(InvalidReason::ProofRejected, Hash([5; 32]), Hash::ZERO),
        ];
        for e in &refuted {
            assert!(rederive(e, &r, &f, 2, decoded).is_err(), "{e:?} should be refuted");
        }
    }

    #[test]
    fn a_trail_that_is_not_of_this_round_makes_any_invalid_hold() {
        let mut t = trail();
        t.worker = 1;
        let r = reveal(&t);
        let f = frame(&trail());
        let e = evidence(InvalidReason::TrailMismatch, r.trail, Hash::ZERO);
        assert_eq!(rederive(&e, &r, &f, 2, FetchedTrail::Decoded(&t)), Ok(()));
        let e = evidence(InvalidReason::MalformedBlob, r.trail, Hash::ZERO);
        assert_eq!(rederive(&e, &r, &f, 2, FetchedTrail::Undecodable), Ok(()));
    }

    #[test]
    fn the_chain_refuses_what_the_revealed_work_alone_refutes() {
        let t = trail();
        let r = reveal(&t);
        assert!(check_on_chain(&evidence(InvalidReason::DeltaMismatch, Hash([4; 32]), Hash::ZERO), &r).is_err());
        assert!(
            check_on_chain(&evidence(InvalidReason::DeltaMismatch, Hash::ZERO, Hash([1; 32])), &r).is_err(),
            "a zero residual is no quote"
        );
        assert!(check_on_chain(&evidence(InvalidReason::StartMismatch, Hash([4; 32]), Hash([4; 32])), &r).is_err());
        assert!(check_on_chain(&evidence(InvalidReason::TrailMismatch, r.trail, Hash::ZERO), &r).is_ok());
        assert!(
            check_on_chain(&evidence(InvalidReason::CheckpointMismatch, Hash([4; 32]), Hash([5; 32])), &r).is_ok(),
            "needs the trail"
        );
    }
}
