//! A poisoned start state: a checkpoint holding NaN, an infinity, a subnormal (to split checkers
//! whose hardware handles denormals differently) or a negative second moment. No honest
//! checkpoint holds one, so it is the miner's fault, and the verdict always encodes.

mod common;

use common::*;
use trellis_proto::{InvalidReason, VerdictOutcome};
use trellis_trainer::checkpoint::checkpoint_hash;
use trellis_verifier::segment::{check_segment, Mode};

#[test]
fn nan_infinite_and_subnormal_checkpoints_are_invalid_and_their_verdicts_encode() {
    use trellis_proto::{decode, Encode};
    let data = dataset();
    let (trail, source, model) = mine(&data, honest);
    let good = source.0[&trail.checkpoints[1].hash].clone();
    let weights_at = good.len() - 12 * model.numel();
    let second_moments_at = good.len() - 4 * model.numel();
    for (at, value) in [
        (weights_at, f32::NAN),
        (weights_at + 40, f32::INFINITY),
        (weights_at + 8, f32::from_bits(3)),
        (second_moments_at + 4, -1.0),
    ] {
        let mut bytes = good.clone();
        bytes[at..at + 4].copy_from_slice(&value.to_le_bytes());
        let mut forged = trail.clone();
        forged.checkpoints[1].hash = checkpoint_hash(&bytes);
        let mut blobs = MemorySource::default();
        blobs.0.insert(forged.checkpoints[1].hash, bytes);
        let outcome = check_segment(&replay(&data), &forged, 1, &blobs, Mode::Exact).outcome;
        assert_eq!(reason(&outcome), Some(InvalidReason::NonCanonicalState), "{value} at {at}");
        let back: VerdictOutcome = decode(&outcome.to_bytes()).unwrap();
        assert_eq!(back, outcome);
    }
}
