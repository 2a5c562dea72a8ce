//! The unit-gap attack: a miner trains ⌈H/c⌉ of its H steps, checkpointing after each (steps
//! rH, rH+1, …), and pads its losses to H. On the old checker every one-step segment replayed
//! and the miner was paid in full; the protocol's fixed checkpoint positions refuse the trail.

mod common;

use common::*;
use tch::Device;
use trellis_proto::InvalidReason;
use trellis_trainer::model::{Gpt, Preset};
use trellis_trainer::optim::AdamW;
use trellis_trainer::worker::{InnerLoop, Trail};
use trellis_verifier::segment::{check_segment, Mode};

/// The unit-gap attack: checkpoints at steps 0, 1, 2, 3 (one step apart) for a 12-step trail
/// with padded losses. Every one-step segment would replay; the positions give it away.
#[test]
fn a_unit_gap_trail_is_a_trail_mismatch() {
    let data = dataset();
    let mut model = Gpt::new(&Preset::Nano.config(), 9, Device::Cpu).unwrap();
    let mut optimizer = AdamW::new(adamw(), model.parameters());
    let schedule = schedule(3);
    let inner = InnerLoop {
        dataset: &data,
        schedule: &schedule,
        round: 0,
        worker: 1,
        checkpoint_interval: 1,
        trail_dir: None,
        compact_base: None,
    };
    let short = inner.train_steps(&mut model, &mut optimizer, 3, |_, _| {}).unwrap().trail;
    let mut losses = short.losses.clone();
    losses.resize(12, 3.0);
    let gap = Trail {
        round: 0,
        worker: 1,
        checkpoint_interval: 4,
        checkpoints: short.checkpoints,
        losses,
        proofs: Vec::new(),
    };
    for segment in 0..3 {
        let report = check_segment(&replay(&data), &gap, segment, &MemorySource::default(), Mode::Exact);
        assert_eq!(reason(&report.outcome), Some(InvalidReason::TrailMismatch), "segment {segment}");
    }
}
