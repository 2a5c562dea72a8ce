//! Each way of faking work is caught with the right verdict, and honest work passes.

mod common;

use common::*;
use tch::Device;
use trellis_proto::{DeltaEncoding, Hash, InvalidReason, VerdictOutcome};
use trellis_trainer::checkpoint::{self, checkpoint_hash, CheckpointData, CheckpointView};
use trellis_trainer::encoding::{self, ErrorFeedback};
use trellis_trainer::model::{Gpt, Preset};
use trellis_trainer::optim::{AdamW, AdamWConfig};
use trellis_verifier::segment::{
    check_claim_reproducing, check_delta, check_segment, offline_claim, DeltaError, Mode, Replay, MOMENT_SLACK,
};
use trellis_verifier::signals::{find_copies, COPY_COSINE_BOUND};

#[test]
fn an_honest_trail_passes_in_exact_and_tolerance_mode() {
    let data = dataset();
    let (trail, source, _) = mine(&data, honest);
    for segment in 0..3 {
        let report = check_segment(&replay(&data), &trail, segment, &source, Mode::Exact);
        assert_eq!(report.outcome, VerdictOutcome::Valid, "segment {segment}");
        assert!(report.losses_match);
        let report = check_segment(&replay(&data), &trail, segment, &source, Mode::Tolerance { max_distance: 1e-6 });
        assert_eq!(report.outcome, VerdictOutcome::Valid);
        assert_eq!(report.distance, 0.0);
    }
}

/// A checker of the last segment checks the Δ link with the weights its replay reached: they are
/// the final checkpoint's, bit for bit, only when the replay is valid in exact mode.
#[test]
fn an_exact_replay_hands_back_the_end_weights_only_when_it_reproduced_them() {
    let data = dataset();
    let (trail, source, _) = mine(&data, |segment| if segment == 1 { (99, 4) } else { (3, 4) });
    let last = trail.checkpoints.len() - 2;
    let claim = offline_claim(&trail, last).unwrap();
    let (report, reached) = check_claim_reproducing(&replay(&data), &claim, &source, Mode::Exact);
    assert_eq!(report.outcome, VerdictOutcome::Valid);
    let end = CheckpointData::parse(&source.0[&claim.end.hash]).unwrap();
    let reached = reached.expect("a valid exact replay hands back what it reached");
    assert_eq!(reached.len(), end.weights.len());
    assert!(reached.iter().zip(&end.weights).all(|(a, b)| a.to_bits() == b.to_bits()), "bit for bit");
    // Not in tolerance mode, where reaching the end approximately is valid.
    let tolerance = Mode::Tolerance { max_distance: 1e-6 };
    assert_eq!(check_claim_reproducing(&replay(&data), &claim, &source, tolerance).1, None);
    // Not when the replay fails (segment 1 trained on another schedule's batches).
    let swapped = offline_claim(&trail, 1).unwrap();
    let (report, reached) = check_claim_reproducing(&replay(&data), &swapped, &source, Mode::Exact);
    assert_eq!(reason(&report.outcome), Some(InvalidReason::CheckpointMismatch));
    assert_eq!(reached, None);
}

/// A Muon job's segments re-execute bit for bit (full checkpoints: the momentum in the first
/// moments, no second moments on the matrices), and a miner that trained with AdamW instead is
/// caught at the first segment.
#[test]
fn an_honest_muon_trail_passes_and_adamw_work_claimed_as_muon_does_not() {
    use trellis_trainer::optim::InnerRule;
    let data = dataset();
    let muon = AdamWConfig { rule: InnerRule::Muon, ..adamw() };
    let muon_replay = Replay { adamw: muon.clone(), ..replay(&data) };
    let (trail, source, _) = mine_with(&data, muon, honest);
    for segment in 0..3 {
        let report = check_segment(&muon_replay, &trail, segment, &source, Mode::Exact);
        assert_eq!(report.outcome, VerdictOutcome::Valid, "segment {segment}");
        assert!(report.losses_match);
    }
    let (adamw_trail, adamw_source, _) = mine(&data, honest);
    let report = check_segment(&muon_replay, &adamw_trail, 0, &adamw_source, Mode::Exact);
    assert_eq!(reason(&report.outcome), Some(InvalidReason::CheckpointMismatch));
}

#[test]
fn a_tampered_checkpoint_byte_is_a_start_mismatch() {
    let data = dataset();
    let (trail, mut source, _) = mine(&data, honest);
    let start = trail.checkpoints[1].hash;
    source.0.get_mut(&start).unwrap()[4_000] ^= 0x10;
    let report = check_segment(&replay(&data), &trail, 1, &source, Mode::Exact);
    assert_eq!(reason(&report.outcome), Some(InvalidReason::StartMismatch));
    // The evidence names the claimed and the actual hash, for anyone to re-check.
    let VerdictOutcome::Invalid(evidence) = report.outcome else { unreachable!() };
    assert_eq!(evidence.expected, start);
    assert_eq!(evidence.reproduced, checkpoint_hash(&source.0[&start]));
}

/// A checkpoint of the miner's own making with honest weights and inflated moments (so that the
/// next segment, re-executed from it, takes the large steps the miner wants; in a streaming job
/// the final one is carried into the next round) is caught by a replay of the segment ending at
/// it: exactly by its hash, in tolerance mode by the moments' distance.
#[test]
fn a_forged_end_checkpoint_is_caught_when_its_segment_is_sampled() {
    let data = dataset();
    let (mut trail, mut source, mut model) = mine(&data, honest);
    let last = trail.checkpoints.len() - 1;
    let honest_end = trail.checkpoints[last].hash;
    let mut optimizer = AdamW::new(adamw(), model.parameters());
    let view = CheckpointView::parse(&source.0[&honest_end], None).unwrap();
    assert!(view.restore(&mut model, &mut optimizer, |_| true).unwrap());
    tch::no_grad(|| {
        optimizer.first_moments.iter_mut().for_each(|m| {
            let _ = m.g_mul_scalar_(1000.0);
        })
    });
    let forged = checkpoint::capture(&model, &optimizer);
    let forged_hash = checkpoint_hash(&forged);
    assert_ne!(forged_hash, honest_end);
    source.0.insert(forged_hash, forged);
    trail.checkpoints[last].hash = forged_hash;
    let segment = last - 1;
    let exact = check_segment(&replay(&data), &trail, segment, &source, Mode::Exact);
    assert_eq!(reason(&exact.outcome), Some(InvalidReason::CheckpointMismatch));
    let tolerance = check_segment(&replay(&data), &trail, segment, &source, Mode::Tolerance { max_distance: 1e-6 });
    assert_eq!(reason(&tolerance.outcome), Some(InvalidReason::DistanceExceeded));
    assert!(tolerance.distance > 1e-3, "moments ×1000 are 0.999 away, judged at 1/{MOMENT_SLACK} of that");
    // The segments before it still check out: only sampling the last one catches this.
    assert_eq!(check_segment(&replay(&data), &trail, 0, &source, Mode::Exact).outcome, VerdictOutcome::Valid);
}

#[test]
fn a_swapped_batch_is_a_checkpoint_mismatch() {
    let data = dataset();
    // Segment 1 trained on another schedule's batches.
    let (trail, source, _) = mine(&data, |segment| if segment == 1 { (99, 4) } else { (3, 4) });
    assert_eq!(check_segment(&replay(&data), &trail, 0, &source, Mode::Exact).outcome, VerdictOutcome::Valid);
    let report = check_segment(&replay(&data), &trail, 1, &source, Mode::Exact);
    assert_eq!(reason(&report.outcome), Some(InvalidReason::CheckpointMismatch));
    assert!(!report.losses_match);
    let tolerance = check_segment(&replay(&data), &trail, 1, &source, Mode::Tolerance { max_distance: 1e-6 });
    assert_eq!(reason(&tolerance.outcome), Some(InvalidReason::DistanceExceeded));
    assert!(tolerance.distance > 1e-6);
}

#[test]
fn a_skipped_step_is_caught() {
    let data = dataset();
    // Segment 2 ran 3 steps but claims 4: its trail has 11 losses, so the claimed step 12 is
    // not where the last checkpoint of an 11-step trail sits.
    let (trail, source, _) = mine(&data, |segment| if segment == 2 { (3, 3) } else { (3, 4) });
    let report = check_segment(&replay(&data), &trail, 2, &source, Mode::Exact);
    assert_eq!(reason(&report.outcome), Some(InvalidReason::TrailMismatch));
    // With a made-up twelfth loss the shape holds, and the replay of 4 steps lands elsewhere.
    let mut padded = trail.clone();
    padded.losses.push(2.5);
    let report = check_segment(&replay(&data), &padded, 2, &source, Mode::Exact);
    assert_eq!(reason(&report.outcome), Some(InvalidReason::CheckpointMismatch));
}

#[test]
fn a_trail_whose_steps_do_not_ascend_is_a_trail_mismatch() {
    let data = dataset();
    let (mut trail, source, _) = mine(&data, honest);
    trail.checkpoints[0].step = 5;
    let report = check_segment(&replay(&data), &trail, 1, &source, Mode::Exact);
    assert_eq!(reason(&report.outcome), Some(InvalidReason::TrailMismatch));
}

#[test]
fn a_withheld_checkpoint_is_unavailable() {
    let data = dataset();
    let (trail, mut source, _) = mine(&data, honest);
    source.0.remove(&trail.checkpoints[2].hash);
    assert_eq!(check_segment(&replay(&data), &trail, 2, &source, Mode::Exact).outcome, VerdictOutcome::Unavailable);
}

#[test]
fn an_f16_delta_beyond_its_range_is_no_honest_encoding() {
    // A final state 70,000 away from the global one in a coordinate: the honest f16 encoding
    // would be infinity, which no aggregator decodes. Bytes carrying it must not pass as honest
    // (they would stall the round), and the miner's own encoder refuses to make them.
    let global = vec![0.0f32, 1.0, 70_000.0];
    let final_weights = vec![0.5f32, 1.0, 0.0];
    let expected: Vec<f32> = global.iter().zip(&final_weights).map(|(g, f)| g - f).collect();
    assert!(encoding::encode_finite(DeltaEncoding::F16, &expected).is_err());
    let overflowing = encoding::encode(DeltaEncoding::F16, &expected);
    let hash = encoding::delta_hash(&overflowing);
    assert_eq!(
        check_delta(DeltaEncoding::F16, &global, &final_weights, None, &overflowing, &hash, &Hash::ZERO),
        Err(DeltaError::NoEncoding { encoding: DeltaEncoding::F16 })
    );
    // The same state in f32 has its encoding, and it is checked as usual.
    let f32_bytes = encoding::encode(DeltaEncoding::F32, &expected);
    check_delta(
        DeltaEncoding::F32,
        &global,
        &final_weights,
        None,
        &f32_bytes,
        &encoding::delta_hash(&f32_bytes),
        &Hash::ZERO,
    )
    .unwrap();
}

#[test]
fn fake_and_honest_deltas_are_told_apart_for_every_encoding() {
    let data = dataset();
    let (_, _, model) = mine(&data, honest);
    let global = Gpt::new(&Preset::Nano.config(), 9, Device::Cpu).unwrap().flat_weights();
    let final_weights = model.flat_weights();
    let delta: Vec<f32> = global.iter().zip(&final_weights).map(|(g, f)| g - f).collect();
    for encoding_kind in [DeltaEncoding::F32, DeltaEncoding::F16] {
        let bytes = encoding::encode(encoding_kind, &delta);
        let hash = encoding::delta_hash(&bytes);
        check_delta(encoding_kind, &global, &final_weights, None, &bytes, &hash, &Hash::ZERO).unwrap();
        // A Δ scaled by 10 (a poisoner's) is not the encoding of its own final checkpoint.
        let fake: Vec<f32> = delta.iter().map(|d| d * 10.0).collect();
        let fake_bytes = encoding::encode(encoding_kind, &fake);
        let fake_hash = encoding::delta_hash(&fake_bytes);
        assert_eq!(
            check_delta(encoding_kind, &global, &final_weights, None, &fake_bytes, &fake_hash, &Hash::ZERO),
            Err(DeltaError::NotTheEncoding { encoding: encoding_kind })
        );
        assert!(matches!(
            check_delta(encoding_kind, &global, &final_weights, None, &bytes, &fake_hash, &Hash::ZERO),
            Err(DeltaError::HashMismatch { .. })
        ));
    }
    // Quantised with error feedback: the published residual makes the encoding checkable, and
    // the residual each Δ leaves is named in its reveal and recomputed exactly.
    for quantised in DeltaEncoding::ALL.into_iter().filter(|e| e.has_error_feedback()) {
        let mut feedback = ErrorFeedback::default();
        let first = feedback.encode(quantised, &delta).unwrap();
        let residual = feedback.residual().to_vec();
        let left_by_first = encoding::residual_hash(&residual);
        assert_ne!(left_by_first, Hash::ZERO, "{quantised:?} loses something");
        // The first round carried nothing: its checkers add zeros, and recompute what it left.
        let first_hash = encoding::delta_hash(&first);
        check_delta(quantised, &global, &final_weights, None, &first, &first_hash, &left_by_first).unwrap();
        let second = feedback.encode(quantised, &delta).unwrap();
        let left_by_second = encoding::residual_hash(feedback.residual());
        let hash = encoding::delta_hash(&second);
        check_delta(quantised, &global, &final_weights, Some(&residual), &second, &hash, &left_by_second).unwrap();
        assert!(check_delta(quantised, &global, &final_weights, None, &second, &hash, &left_by_second).is_err());
        // A next residual other than the one the Δ leaves — inflated to steer later rounds — is
        // refused, as is claiming to leave none.
        let inflated: Vec<f32> = feedback.residual().iter().map(|r| r * 3.0 + 1e-3).collect();
        for claimed in [encoding::residual_hash(&inflated), Hash::ZERO] {
            assert_eq!(
                check_delta(quantised, &global, &final_weights, Some(&residual), &second, &hash, &claimed),
                Err(DeltaError::NextResidualMismatch { expected: claimed, actual: left_by_second }),
                "{quantised:?}"
            );
        }
        // A tampered encoded Δ: one code flipped, its hash recomputed (so only the link catches it).
        let mut tampered = second.clone();
        let last = tampered.len() - 1;
        tampered[last] ^= 0x01;
        let tampered_hash = encoding::delta_hash(&tampered);
        assert_eq!(
            check_delta(
                quantised,
                &global,
                &final_weights,
                Some(&residual),
                &tampered,
                &tampered_hash,
                &left_by_second
            ),
            Err(DeltaError::NotTheEncoding { encoding: quantised }),
            "{quantised:?}"
        );
    }
}

#[test]
fn a_copied_delta_is_flagged() {
    let data = dataset();
    let (_, _, a) = mine(&data, honest);
    let (_, _, b) = mine(&data, |_| (5, 4));
    let global = Gpt::new(&Preset::Nano.config(), 9, Device::Cpu).unwrap().flat_weights();
    let delta = |m: &Gpt| -> Vec<f32> { global.iter().zip(m.flat_weights()).map(|(g, f)| g - f).collect() };
    let (da, db) = (delta(&a), delta(&b));
    let copy = da.clone();
    let found = find_copies(&[&da, &db, &copy], COPY_COSINE_BOUND);
    assert_eq!(found.len(), 1);
    assert_eq!((found[0].earlier, found[0].later), (0, 2));
}

#[test]
fn truncated_and_malformed_blobs_get_verdicts_not_panics() {
    let data = dataset();
    let (trail, source, _) = mine(&data, honest);
    let good = source.0[&trail.checkpoints[0].hash].clone();
    let cuts = [0, 1, 7, 8, 12, 20, 24, 100, good.len() / 2, good.len() - 1];
    for cut in cuts {
        // A trail that commits to the truncated bytes, so the hash check passes and parsing runs.
        let bytes = good[..cut].to_vec();
        let mut forged = trail.clone();
        forged.checkpoints[0].hash = checkpoint_hash(&bytes);
        let mut blobs = MemorySource::default();
        blobs.0.insert(forged.checkpoints[0].hash, bytes);
        let report = check_segment(&replay(&data), &forged, 0, &blobs, Mode::Exact);
        assert_eq!(reason(&report.outcome), Some(InvalidReason::MalformedBlob), "cut at {cut}");
    }
    // Garbage with a valid header prefix and absurd sizes.
    let mut garbage = good[..24].to_vec();
    garbage.extend_from_slice(&u32::MAX.to_le_bytes());
    let mut forged = trail.clone();
    forged.checkpoints[0].hash = checkpoint_hash(&garbage);
    let mut blobs = MemorySource::default();
    blobs.0.insert(forged.checkpoints[0].hash, garbage);
    assert_eq!(
        reason(&check_segment(&replay(&data), &forged, 0, &blobs, Mode::Exact).outcome),
        Some(InvalidReason::MalformedBlob)
    );
    // Segment indices and step gaps that do not fit the trail.
    assert_eq!(
        reason(&check_segment(&replay(&data), &trail, 7, &source, Mode::Exact).outcome),
        Some(InvalidReason::TrailMismatch)
    );
    let mut gap = trail.clone();
    gap.checkpoints[1].step = 40;
    assert_eq!(
        reason(&check_segment(&replay(&data), &gap, 1, &source, Mode::Exact).outcome),
        Some(InvalidReason::TrailMismatch)
    );
}
