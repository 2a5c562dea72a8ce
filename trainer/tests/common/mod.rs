//! What the trainer's integration tests share: the repository's own text as the corpus, and a
//! small DiLoCo run of `nano` (2 workers, 8 steps, 2 rounds) for each test to vary.

#![allow(dead_code)]

use std::path::PathBuf;

use tch::Device;
use trellis_proto::{DeltaEncoding, OuterOptimizer};
use trellis_trainer::data::{repository_text, Dataset, DEFAULT_SHARD_BYTES};
use trellis_trainer::diloco::RunConfig;
use trellis_trainer::model::Preset;
use trellis_trainer::optim::AdamWConfig;

/// The repository's own docs and sources: real text that every clone holds.
pub fn corpus() -> Dataset {
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let text = repository_text(&repo).unwrap_or_else(|e| panic!("the repository's text is the test corpus: {e}"));
    Dataset::from_bytes(text, DEFAULT_SHARD_BYTES)
}

/// Two workers of `nano`, 8 inner steps, 2 rounds, batch 4 × 32 tokens, one checkpoint a round.
pub fn small_run(encoding: DeltaEncoding) -> RunConfig {
    RunConfig {
        model: Preset::Nano.config(),
        seed: 3,
        workers: 2,
        inner_steps: 8,
        rounds: 2,
        batch_size: 4,
        sequence_length: 32,
        adamw: AdamWConfig::with_schedule(3e-3, 2, 16),
        outer: OuterOptimizer::Nesterov,
        outer_learning_rate: 0.7,
        outer_momentum: 0.9,
        encoding,
        checkpoint_interval: 8,
        compact: false,
        trail_dir: None,
        device: Device::Cpu,
        initial_weights: None,
        slowdown: Vec::new(),
        min_inner_steps: 8,
    }
}
