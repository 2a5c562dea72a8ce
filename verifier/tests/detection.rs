//! Each way of faking work is caught with the right verdict, and honest work passes.

use std::collections::HashMap;
use std::path::PathBuf;

use tch::Device;
use trellis_proto::{DeltaEncoding, Hash, InvalidReason, VerdictOutcome};
use trellis_trainer::checkpoint::{self, checkpoint_hash};
use trellis_trainer::data::{BatchSchedule, Dataset};
use trellis_trainer::encoding::{self, ErrorFeedback};
use trellis_trainer::model::{Gpt, Preset};
use trellis_trainer::optim::{AdamW, AdamWConfig};
use trellis_trainer::worker::{InnerLoop, Trail, TrailEntry};
use trellis_verifier::segment::{check_delta, check_segment, BlobError, BlobSource, DeltaError, Mode, Replay};
use trellis_verifier::signals::{find_copies, COPY_COSINE_BOUND};

/// Checkpoints kept in memory, by hash.
#[derive(Default)]
struct MemorySource(HashMap<Hash, Vec<u8>>);

impl BlobSource for MemorySource {
    fn fetch(&self, hash: &Hash) -> Result<Vec<u8>, BlobError> {
        self.0.get(hash).cloned().ok_or(BlobError::NotFound(*hash))
    }
}

fn dataset() -> Dataset {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/tinyshakespeare.txt");
    Dataset::load(&path).unwrap_or_else(|e| panic!("the test corpus is required: {e}"))
}

fn adamw() -> AdamWConfig {
    AdamWConfig::with_schedule(3e-3, 2, 12)
}

fn schedule(seed: u64) -> BatchSchedule {
    BatchSchedule { seed, workers: 2, batch_size: 2, sequence_length: 32 }
}

fn replay(dataset: &Dataset) -> Replay<'_> {
    Replay { model: Preset::Nano.config(), adamw: adamw(), dataset, schedule: schedule(3), round: 0, worker: 1, device: Device::Cpu }
}

/// An honest miner: 12 steps in segments of 4, every checkpoint kept. `cheat(step_index)` may
/// change how a segment is trained: (schedule seed to use, steps to actually run).
fn mine(dataset: &Dataset, cheat: impl Fn(usize) -> (u64, u64)) -> (Trail, MemorySource, Gpt) {
    let mut model = Gpt::new(&Preset::Nano.config(), 9, Device::Cpu).unwrap();
    let mut optimizer = AdamW::new(adamw(), model.parameters());
    let mut source = MemorySource::default();
    let save = |model: &Gpt, optimizer: &AdamW, source: &mut MemorySource| {
        let bytes = checkpoint::to_bytes(model, optimizer);
        let hash = checkpoint_hash(&bytes);
        source.0.insert(hash, bytes);
        TrailEntry { step: optimizer.step, hash }
    };
    let mut checkpoints = vec![save(&model, &optimizer, &mut source)];
    let mut losses = Vec::new();
    for segment in 0..3 {
        let (seed, steps) = cheat(segment);
        let schedule = schedule(seed);
        let inner = InnerLoop { dataset, schedule: &schedule, round: 0, worker: 1, checkpoint_interval: 4, trail_dir: None };
        let outcome = inner.train_steps(&mut model, &mut optimizer, steps, |_, _| {}).unwrap();
        losses.extend(outcome.trail.losses);
        let mut entry = save(&model, &optimizer, &mut source);
        // A skipped step still claims the step number an honest trail would have.
        entry.step = 4 * (segment as u64 + 1);
        checkpoints.push(entry);
    }
    (Trail { round: 0, worker: 1, checkpoint_interval: 4, checkpoints, losses, proofs: Vec::new() }, source, model)
}

fn honest(_: usize) -> (u64, u64) {
    (3, 4)
}

fn reason(outcome: &VerdictOutcome) -> Option<InvalidReason> {
    match outcome {
        VerdictOutcome::Invalid(evidence) => Some(evidence.reason),
        _ => None,
    }
}

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
    // Segment 2 ran 3 steps but claims 4.
    let (trail, source, _) = mine(&data, |segment| if segment == 2 { (3, 3) } else { (3, 4) });
    let report = check_segment(&replay(&data), &trail, 2, &source, Mode::Exact);
    assert_eq!(reason(&report.outcome), Some(InvalidReason::CheckpointMismatch));
}

#[test]
fn a_trail_whose_steps_do_not_ascend_is_checked_without_panicking() {
    let data = dataset();
    let (mut trail, source, _) = mine(&data, honest);
    // The first entry claims a later step than the segment checked: segment 1 starts before it.
    trail.checkpoints[0].step = 5;
    let report = check_segment(&replay(&data), &trail, 1, &source, Mode::Exact);
    assert!(!report.losses_match, "no claimed losses exist before the trail's first step");
}

#[test]
fn a_withheld_checkpoint_is_unavailable() {
    let data = dataset();
    let (trail, mut source, _) = mine(&data, honest);
    source.0.remove(&trail.checkpoints[2].hash);
    assert_eq!(check_segment(&replay(&data), &trail, 2, &source, Mode::Exact).outcome, VerdictOutcome::Unavailable);
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
        check_delta(encoding_kind, &global, &final_weights, None, &bytes, &hash).unwrap();
        // A Δ scaled by 10 (a poisoner's) is not the encoding of its own final checkpoint.
        let fake: Vec<f32> = delta.iter().map(|d| d * 10.0).collect();
        let fake_bytes = encoding::encode(encoding_kind, &fake);
        let fake_hash = encoding::delta_hash(&fake_bytes);
        assert_eq!(
            check_delta(encoding_kind, &global, &final_weights, None, &fake_bytes, &fake_hash),
            Err(DeltaError::NotTheEncoding { encoding: encoding_kind })
        );
        assert!(matches!(
            check_delta(encoding_kind, &global, &final_weights, None, &bytes, &fake_hash),
            Err(DeltaError::HashMismatch { .. })
        ));
    }
    // int8 with error feedback: the published residual makes the encoding checkable.
    let mut feedback = ErrorFeedback::default();
    let first = feedback.encode(DeltaEncoding::Int8, &delta);
    let residual = feedback.residual().to_vec();
    let second = feedback.encode(DeltaEncoding::Int8, &delta);
    let hash = encoding::delta_hash(&second);
    check_delta(DeltaEncoding::Int8, &global, &final_weights, Some(&residual), &second, &hash).unwrap();
    assert!(check_delta(DeltaEncoding::Int8, &global, &final_weights, None, &second, &hash).is_err());
    let _ = first;
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
    assert_eq!(reason(&check_segment(&replay(&data), &forged, 0, &blobs, Mode::Exact).outcome), Some(InvalidReason::MalformedBlob));
    // Segment indices and step gaps that do not fit the trail.
    assert_eq!(reason(&check_segment(&replay(&data), &trail, 7, &source, Mode::Exact).outcome), Some(InvalidReason::MalformedBlob));
    let mut gap = trail.clone();
    gap.checkpoints[1].step = 40;
    assert_eq!(reason(&check_segment(&replay(&data), &gap, 1, &source, Mode::Exact).outcome), Some(InvalidReason::MalformedBlob));
}
