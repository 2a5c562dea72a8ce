//! Jobs with compact checkpoints (`checkpoint_state = "compact"`): the miner's trail rounds its
//! state to 4 bytes a parameter at every checkpoint, each segment re-executes bit for bit from
//! its compact start read against θ_r, and a checkpoint in the other format is not the job's.

mod common;

use common::*;
use tch::Device;
use trellis_proto::{DeltaEncoding, Hash, InvalidReason, VerdictOutcome};
use trellis_trainer::checkpoint::{checkpoint_hash, compact_parts, CheckpointData, CheckpointView, CompactBase};
use trellis_trainer::encoding;
use trellis_trainer::model::{Gpt, Preset};
use trellis_trainer::optim::{AdamW, AdamWConfig, InnerRule};
use trellis_trainer::worker::{checkpoint_path, InnerLoop};
use trellis_verifier::segment::{check_delta_drift, check_segment, DeltaError, Mode, Replay};

/// A compact trail of `steps` steps of the inner optimizer `config` with a checkpoint every
/// `interval`, its checkpoints written under `dir`: the trail, the round's start weights and the
/// model at the trail's end.
fn compact_trail(
    data: &trellis_trainer::data::Dataset,
    dir: &std::path::Path,
    config: AdamWConfig,
    seed: u64,
    worker: usize,
    interval: u64,
    steps: u64,
) -> (trellis_trainer::worker::Trail, Vec<f32>, Gpt) {
    let _ = std::fs::remove_dir_all(dir);
    let mut model = Gpt::new(&Preset::Nano.config(), seed, Device::Cpu).unwrap();
    let start = model.flat_weights();
    let mut optimizer = AdamW::new(config.clone(), model.parameters());
    let schedule = schedule(3);
    let inner = InnerLoop {
        dataset: data,
        schedule: &schedule,
        round: 0,
        worker,
        checkpoint_interval: interval,
        trail_dir: Some(dir),
        compact_base: CompactBase::new(&start, config.beta1, config.beta2).map(|b| b.for_rule(config.rule)),
    };
    let trail = inner.train_steps(&mut model, &mut optimizer, steps, |_, _| {}).unwrap().trail;
    (trail, start, model)
}

#[test]
fn a_compact_trail_re_executes_against_the_round_start_and_a_full_checkpoint_is_not_the_jobs() {
    let data = dataset();
    let dir = std::env::temp_dir().join(format!("trellis-compact-trail-{}", std::process::id()));
    let (trail, start, _) = compact_trail(&data, &dir, adamw(), 9, 1, 4, 12);
    let base = CompactBase::new(&start, adamw().beta1, adamw().beta2).unwrap();
    let mut source = MemorySource::default();
    for entry in &trail.checkpoints {
        let bytes = std::fs::read(checkpoint_path(&dir, entry.step)).unwrap();
        assert!(CheckpointData::parse_compact(&bytes, base).is_ok());
        source.0.insert(entry.hash, bytes);
    }
    let compact = Replay { compact_base: Some(base), ..replay(&data) };
    for segment in 0..3 {
        for mode in [Mode::Exact, Mode::Tolerance { max_distance: 1e-6 }] {
            let report = check_segment(&compact, &trail, segment, &source, mode);
            assert_eq!(report.outcome, VerdictOutcome::Valid, "segment {segment}, {mode:?}");
        }
        // Read as a job with full checkpoints: not the job's checkpoints.
        let report = check_segment(&replay(&data), &trail, segment, &source, Mode::Exact);
        assert_eq!(reason(&report.outcome), Some(InvalidReason::MalformedBlob));
    }
    // Read against another round's start: the replay does not reach the next checkpoint.
    let other_start: Vec<f32> = start.iter().map(|w| w + 1e-3).collect();
    let elsewhere = Replay { compact_base: CompactBase::new(&other_start, 0.9, 0.95), ..replay(&data) };
    let report = check_segment(&elsewhere, &trail, 1, &source, Mode::Exact);
    assert_eq!(reason(&report.outcome), Some(InvalidReason::CheckpointMismatch));

    // A miner that publishes full checkpoints in a compact job: refused before any replay.
    let (full_trail, full_source, _) = mine(&data, honest);
    let report = check_segment(&compact, &full_trail, 1, &full_source, Mode::Exact);
    assert_eq!(reason(&report.outcome), Some(InvalidReason::MalformedBlob));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A Muon job with compact checkpoints (the matrices' momentum in bf16): every segment
/// re-executes bit for bit from its compact start; read as an AdamW job's checkpoints, or
/// replayed with AdamW, it does not check out.
#[test]
fn a_muon_compact_trail_re_executes_and_is_not_an_adamw_jobs() {
    let data = dataset();
    let dir = std::env::temp_dir().join(format!("trellis-muon-compact-{}", std::process::id()));
    let muon = AdamWConfig { rule: InnerRule::Muon, ..adamw() };
    let (trail, start, _) = compact_trail(&data, &dir, muon.clone(), 9, 1, 4, 12);
    let base = CompactBase::new(&start, muon.beta1, muon.beta2).unwrap().for_rule(InnerRule::Muon);
    let mut source = MemorySource::default();
    for entry in &trail.checkpoints {
        source.0.insert(entry.hash, std::fs::read(checkpoint_path(&dir, entry.step)).unwrap());
    }
    std::fs::remove_dir_all(&dir).unwrap();
    let replay_muon = Replay { adamw: muon, compact_base: Some(base), ..replay(&data) };
    for segment in 0..3 {
        let report = check_segment(&replay_muon, &trail, segment, &source, Mode::Exact);
        assert_eq!(report.outcome, VerdictOutcome::Valid, "segment {segment}");
        assert!(report.losses_match);
    }
    let adamw_base = CompactBase::new(&start, 0.9, 0.95);
    let as_adamw = Replay { compact_base: adamw_base, ..replay(&data) };
    let report = check_segment(&as_adamw, &trail, 1, &source, Mode::Exact);
    assert_ne!(report.outcome, VerdictOutcome::Valid, "an AdamW job's checker does not accept it");
}

/// A job whose Δ is the final drift (compact checkpoints, f32 Δ): the miner's Δ is the final
/// checkpoint's drift, negated, and with the hash of the checkpoint's other part (named in the
/// trail) it gives the final checkpoint's hash, so a checker binds the Δ to the trail without
/// downloading the checkpoint. Any other Δ, or another part, does not give that hash.
#[test]
fn the_final_drift_is_the_delta_and_binds_it_to_the_final_checkpoint_without_its_bytes() {
    let data = dataset();
    let dir = std::env::temp_dir().join(format!("trellis-final-drift-{}", std::process::id()));
    let (trail, start, model) = compact_trail(&data, &dir, adamw(), 11, 0, 3, 6);
    let base = CompactBase::new(&start, adamw().beta1, adamw().beta2).unwrap();
    let last = trail.checkpoints.last().unwrap();
    let bytes = std::fs::read(checkpoint_path(&dir, last.step)).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(checkpoint_hash(&bytes), last.hash);
    let final_moments = compact_parts(&bytes).unwrap().rest;
    let drift = CheckpointView::parse(&bytes, Some(base)).unwrap().drift().unwrap();
    let delta: Vec<f32> = drift.iter().map(|d| -d).collect();
    let n = start.len();
    let check = |values: &[f32], encoding: DeltaEncoding, moments: &Hash| {
        let encoded = encoding::encode(encoding, values);
        check_delta_drift(&encoded, &encoding::delta_hash(&encoded), n, moments, &last.hash)
    };
    check(&delta, DeltaEncoding::F32, &final_moments).expect("the honest Δ is the final drift");

    // The plain difference θ_r − θ_final is not the drift (its rounding differs somewhere).
    let plain: Vec<f32> = start.iter().zip(&model.flat_weights()).map(|(s, w)| s - w).collect();
    assert!(plain.iter().zip(&delta).any(|(p, d)| p != d));
    assert!(matches!(check(&plain, DeltaEncoding::F32, &final_moments), Err(DeltaError::NotTheFinalDrift { .. })));
    // A poisoner's Δ: amplified (still bf16 values), or one coordinate moved.
    let amplified: Vec<f32> = delta.iter().map(|d| 2.0 * d).collect();
    assert!(matches!(check(&amplified, DeltaEncoding::F32, &final_moments), Err(DeltaError::NotTheFinalDrift { .. })));
    let mut moved = delta.clone();
    moved[n / 2] = -moved[n / 2] + 0.25;
    assert!(matches!(check(&moved, DeltaEncoding::F32, &final_moments), Err(DeltaError::NotTheFinalDrift { .. })));
    // Another part than the final checkpoint's, another encoding, another size, another hash.
    assert!(check(&delta, DeltaEncoding::F32, &Hash([7; 32])).is_err());
    assert!(matches!(check(&delta, DeltaEncoding::F16, &final_moments), Err(DeltaError::NotF32 { .. })));
    assert!(matches!(check(&delta[1..], DeltaEncoding::F32, &final_moments), Err(DeltaError::NotF32 { .. })));
    let encoded = encoding::encode(DeltaEncoding::F32, &delta);
    assert!(matches!(
        check_delta_drift(&encoded, &Hash([1; 32]), n, &final_moments, &last.hash),
        Err(DeltaError::HashMismatch { .. })
    ));
}
