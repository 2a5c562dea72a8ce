//! Jobs with compact checkpoints (`checkpoint_state = "compact"`): the miner's trail rounds its
//! state to 4 bytes a parameter at every checkpoint, each segment re-executes bit for bit from
//! its compact start read against θ_r, and a checkpoint in the other format is not the job's.

mod common;

use common::*;
use tch::Device;
use trellis_proto::{InvalidReason, VerdictOutcome};
use trellis_trainer::checkpoint::{CheckpointData, CompactBase};
use trellis_trainer::model::{Gpt, Preset};
use trellis_trainer::optim::AdamW;
use trellis_trainer::worker::{checkpoint_path, InnerLoop};
use trellis_verifier::segment::{check_segment, Mode, Replay};

#[test]
fn a_compact_trail_re_executes_against_the_round_start_and_a_full_checkpoint_is_not_the_jobs() {
    let data = dataset();
    let dir = std::env::temp_dir().join(format!("trellis-compact-trail-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut model = Gpt::new(&Preset::Nano.config(), 9, Device::Cpu).unwrap();
    let start = model.flat_weights();
    let config = adamw();
    let base = CompactBase::new(&start, config.beta1, config.beta2).unwrap();
    let mut optimizer = AdamW::new(config, model.parameters());
    let schedule = schedule(3);
    let inner = InnerLoop {
        dataset: &data,
        schedule: &schedule,
        round: 0,
        worker: 1,
        checkpoint_interval: 4,
        trail_dir: Some(&dir),
        compact_base: Some(base),
    };
    let trail = inner.train_steps(&mut model, &mut optimizer, 12, |_, _| {}).unwrap().trail;
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
