//! What the verifier's tests share: an in-memory blob source, the test corpus, and a miner that
//! trains a 12-step trail in segments of 4 (honestly, or as a cheat says).
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::PathBuf;

use tch::Device;
use trellis_proto::{Hash, InvalidReason, VerdictOutcome};
use trellis_trainer::checkpoint::{self, checkpoint_hash};
use trellis_trainer::data::{repository_text, BatchSchedule, Dataset, DEFAULT_SHARD_BYTES};
use trellis_trainer::model::{Gpt, Preset};
use trellis_trainer::optim::{AdamW, AdamWConfig};
use trellis_trainer::worker::{InnerLoop, Trail, TrailEntry};
use trellis_verifier::segment::{BlobError, BlobSource, Replay};

/// Checkpoints kept in memory, by hash.
#[derive(Default)]
pub struct MemorySource(pub HashMap<Hash, Vec<u8>>);

impl BlobSource for MemorySource {
    fn fetch(&self, hash: &Hash) -> Result<Vec<u8>, BlobError> {
        self.0.get(hash).cloned().ok_or(BlobError::NotFound(*hash))
    }
}

/// The repository's own docs and sources: real text that every clone holds.
pub fn dataset() -> Dataset {
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let text = repository_text(&repo).unwrap_or_else(|e| panic!("the repository's text is the test corpus: {e}"));
    Dataset::from_bytes(text, DEFAULT_SHARD_BYTES)
}

pub fn adamw() -> AdamWConfig {
    AdamWConfig::with_schedule(3e-3, 2, 12)
}

pub fn schedule(seed: u64) -> BatchSchedule {
    BatchSchedule { seed, workers: 2, batch_size: 2, sequence_length: 32 }
}

pub fn replay(dataset: &Dataset) -> Replay<'_> {
    Replay {
        model: Preset::Nano.config(),
        adamw: adamw(),
        dataset,
        schedule: schedule(3),
        round: 0,
        worker: 1,
        device: Device::Cpu,
        compact_base: None,
    }
}

/// An honest miner: 12 steps in segments of 4, every checkpoint kept. `cheat(step_index)` may
/// change how a segment is trained: (schedule seed to use, steps to actually run).
pub fn mine(dataset: &Dataset, cheat: impl Fn(usize) -> (u64, u64)) -> (Trail, MemorySource, Gpt) {
    mine_with(dataset, adamw(), cheat)
}

/// [`mine`] with the inner optimizer `config`.
#[allow(dead_code)]
pub fn mine_with(
    dataset: &Dataset,
    config: AdamWConfig,
    cheat: impl Fn(usize) -> (u64, u64),
) -> (Trail, MemorySource, Gpt) {
    let mut model = Gpt::new(&Preset::Nano.config(), 9, Device::Cpu).unwrap();
    let mut optimizer = AdamW::new(config, model.parameters());
    let mut source = MemorySource::default();
    let save = |model: &Gpt, optimizer: &AdamW, source: &mut MemorySource| {
        let bytes = checkpoint::capture(model, optimizer);
        let hash = checkpoint_hash(&bytes);
        source.0.insert(hash, bytes);
        TrailEntry { step: optimizer.step, hash }
    };
    let mut checkpoints = vec![save(&model, &optimizer, &mut source)];
    let mut losses = Vec::new();
    for segment in 0..3 {
        let (seed, steps) = cheat(segment);
        let schedule = schedule(seed);
        let inner = InnerLoop {
            dataset,
            schedule: &schedule,
            round: 0,
            worker: 1,
            checkpoint_interval: 4,
            trail_dir: None,
            compact_base: None,
        };
        let outcome = inner.train_steps(&mut model, &mut optimizer, steps, |_, _| {}).unwrap();
        losses.extend(outcome.trail.losses);
        let mut entry = save(&model, &optimizer, &mut source);
        // A skipped step still claims the step number an honest trail would have.
        entry.step = 4 * (segment as u64 + 1);
        checkpoints.push(entry);
    }
    (Trail { round: 0, worker: 1, checkpoint_interval: 4, checkpoints, losses, proofs: Vec::new() }, source, model)
}

pub fn honest(_: usize) -> (u64, u64) {
    (3, 4)
}

pub fn reason(outcome: &VerdictOutcome) -> Option<InvalidReason> {
    match outcome {
        VerdictOutcome::Invalid(evidence) => Some(evidence.reason),
        _ => None,
    }
}
