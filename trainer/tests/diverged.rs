//! A worker whose Δ is not finite (its training diverged, or a tamper hook made it so) stops the
//! run with an error that names it, for every encoding: no panic, nothing aggregated.

use std::path::PathBuf;

use tch::Device;
use trellis_proto::{DeltaEncoding, OuterOptimizer};
use trellis_trainer::data::{repository_text, Dataset, DEFAULT_SHARD_BYTES};
use trellis_trainer::diloco::{run_diloco, RoundHooks, RunConfig};
use trellis_trainer::model::Preset;
use trellis_trainer::optim::AdamWConfig;
use trellis_trainer::worker::WorkerError;

#[test]
fn a_delta_that_is_not_finite_stops_the_run_with_the_workers_name() {
    tch::set_num_threads(1);
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let dataset = Dataset::from_bytes(repository_text(&repo).unwrap(), DEFAULT_SHARD_BYTES);
    for encoding in [DeltaEncoding::F32, DeltaEncoding::Int8, "topk:0.03+q2".parse().unwrap()] {
        let config = RunConfig {
            model: Preset::Nano.config(),
            seed: 3,
            workers: 2,
            inner_steps: 2,
            rounds: 1,
            batch_size: 2,
            sequence_length: 32,
            adamw: AdamWConfig::with_schedule(3e-3, 1, 2),
            outer: OuterOptimizer::Nesterov,
            outer_learning_rate: 0.7,
            outer_momentum: 0.9,
            encoding,
            checkpoint_interval: 2,
            compact: false,
            trail_dir: None,
            device: Device::Cpu,
            initial_weights: None,
            slowdown: Vec::new(),
            min_inner_steps: 2,
        };
        let mut hooks = RoundHooks {
            tamper: Box::new(|_, output, _| {
                if output.worker == 1 {
                    output.delta[7] = f32::NAN;
                }
            }),
            ..RoundHooks::default()
        };
        let error = run_diloco(&config, &dataset, &mut hooks, |_| {}).unwrap_err();
        assert!(matches!(error, WorkerError::NonFiniteDelta { worker: 1, index: 7 }), "{encoding}: {error}");
        assert!(error.to_string().contains("worker 1's Δ is not finite"), "{error}");
    }
}
