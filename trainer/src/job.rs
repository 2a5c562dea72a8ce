//! The training rules a job's spec fixes, as the trainer's values: the inner optimizer (its
//! learning-rate schedule spans every round of the job), the batch schedule (seeded by the job,
//! one slot per worker of a round), and the canonical state a round's training starts from.
//!
//! The start of every round is fixed so that checkers can check it: the global weights θ_r with
//! zero AdamW moments and the step counter at `round × H` (`trellis_protocol::trail::
//! round_start_step`). Its checkpoint hash is a pure function of the spec, the round and θ_r.
//! Miners, checkers and `trellis train` all build their start from here, so they cannot drift.

use tch::Device;
use trellis_proto::{Hash, InnerOptimizer, JobSpec};

use crate::checkpoint::{self, checkpoint_hash};
use crate::data::BatchSchedule;
use crate::model::{Gpt, ModelError};
use crate::optim::{AdamW, AdamWConfig, InnerRule};

/// Why a round's start state cannot be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StartError {
    #[error("the job's model: {0}")]
    Model(#[from] ModelError),
    #[error("the global model has {got} weights, the job's model {expected}")]
    WrongSize { expected: usize, got: usize },
}

/// The inner optimizer a job fixes: its schedule spans all rounds.
pub fn adamw_config(spec: &JobSpec) -> AdamWConfig {
    let d = &spec.diloco;
    let total = u64::from(d.inner_steps) * u64::from(d.rounds);
    let mut config = AdamWConfig::with_schedule(f64::from(d.learning_rate), u64::from(d.warmup_steps), total);
    config.beta1 = f64::from(d.beta1);
    config.beta2 = f64::from(d.beta2);
    config.weight_decay = f64::from(d.weight_decay);
    config.grad_clip = f64::from(d.grad_clip);
    config.rule = match d.inner_optimizer {
        InnerOptimizer::Adamw => InnerRule::Adamw,
        InnerOptimizer::Muon => InnerRule::Muon,
    };
    config
}

/// The batch schedule of a job: seeded by its init seed, one slot per worker of a round.
pub fn schedule(spec: &JobSpec) -> BatchSchedule {
    BatchSchedule {
        seed: spec.init_seed,
        workers: spec.diloco.workers_per_round as usize,
        batch_size: spec.diloco.batch_size as usize,
        sequence_length: spec.diloco.sequence_length as usize,
    }
}

/// The optimizer step round `round` of `spec` starts at.
pub fn round_start_step(spec: &JobSpec, round: u32) -> u64 {
    trellis_protocol::trail::round_start_step(round, spec.diloco.inner_steps)
}

/// θ_0 of a job that trains the GPT model: its initialisation from the job's seed.
pub fn initial_weights(spec: &JobSpec) -> Result<Vec<f32>, StartError> {
    Ok(Gpt::new(&spec.model, spec.init_seed, Device::Cpu)?.flat_weights())
}

/// A model and optimizer in the canonical start state of `round`, on `device`.
pub fn start_state(spec: &JobSpec, round: u32, global: &[f32], device: Device) -> Result<(Gpt, AdamW), StartError> {
    let mut model = Gpt::new(&spec.model, spec.init_seed, device)?;
    if model.numel() != global.len() {
        return Err(StartError::WrongSize { expected: model.numel(), got: global.len() });
    }
    model.set_flat_weights(global);
    let mut optimizer = AdamW::new(adamw_config(spec), model.parameters());
    optimizer.step = round_start_step(spec, round);
    Ok((model, optimizer))
}

/// The checkpoint every honest trail of `round` starts with (the start state as a trail
/// checkpoint records it: subnormal values flushed to zero). Anyone holding θ_r builds it, so the
/// checkers of a trail's first segment never download it.
pub fn start_checkpoint(spec: &JobSpec, round: u32, global: &[f32]) -> Result<Vec<u8>, StartError> {
    let (mut model, mut optimizer) = start_state(spec, round, global, Device::Cpu)?;
    Ok(match compact_base(spec, global) {
        Some(base) => checkpoint::capture_compact(&mut model, &mut optimizer, base),
        None => checkpoint::capture(&model, &optimizer),
    })
}

/// What the job's compact checkpoints are read against — the round's start weights θ_r and the
/// moment bound of its betas — or `None` for a job with full checkpoints (or betas without a
/// bound, which the chain refuses for compact jobs).
pub fn compact_base<'a>(spec: &JobSpec, global: &'a [f32]) -> Option<checkpoint::CompactBase<'a>> {
    let rule = adamw_config(spec).rule;
    (spec.verification.checkpoint_state == trellis_proto::CheckpointState::Compact)
        .then(|| checkpoint::CompactBase::new(global, f64::from(spec.diloco.beta1), f64::from(spec.diloco.beta2)))
        .flatten()
        .map(|base| base.for_rule(rule))
}

/// The hash of [`start_checkpoint`].
pub fn start_checkpoint_hash(spec: &JobSpec, round: u32, global: &[f32]) -> Result<Hash, StartError> {
    Ok(checkpoint_hash(&start_checkpoint(spec, round, global)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Preset;
    use trellis_proto::*;

    fn spec() -> JobSpec {
        JobSpec {
            name: "rules".into(),
            model: Preset::Nano.config(),
            init_seed: 11,
            dataset_root: Hash::ZERO,
            dataset_shards: 1,
            diloco: DilocoParams {
                workers_per_round: 2,
                inner_steps: 20,
                batch_size: 2,
                sequence_length: 16,
                learning_rate: 3e-3,
                beta1: 0.8,
                beta2: 0.9,
                weight_decay: 0.05,
                grad_clip: 0.5,
                warmup_steps: 3,
                outer_optimizer: OuterOptimizer::Nesterov,
                outer_learning_rate: 0.7,
                outer_momentum: 0.9,
                rounds: 4,
                encoding: DeltaEncoding::F32,
                inner_optimizer: Default::default(),
                min_inner_steps: 20,
            },
            aggregation: AggregationRule::Mean,
            verification: VerificationParams {
                checkpoint_interval: 5,
                segments_per_miner: 1,
                mode: VerificationMode::Exact,
                checkpoint_state: Default::default(),
            },
            reward_per_round: Amount(1),
            min_miner_stake: Amount(1),
            commit_blocks: 4,
            verify_blocks: 4,
        }
    }

    #[test]
    fn the_inner_schedule_spans_every_round_of_the_job() {
        let config = adamw_config(&spec());
        assert_eq!((config.warmup_steps, config.total_steps), (3, 80));
        assert_eq!((config.beta1, config.beta2), (f64::from(0.8f32), f64::from(0.9f32)));
        assert_eq!((config.weight_decay, config.grad_clip), (f64::from(0.05f32), 0.5));
        let schedule = schedule(&spec());
        assert_eq!((schedule.seed, schedule.workers, schedule.batch_size, schedule.sequence_length), (11, 2, 2, 16));
    }

    #[test]
    fn a_rounds_start_is_theta_r_at_step_round_times_h_and_its_hash_is_a_function_of_both() {
        let spec = spec();
        let global = initial_weights(&spec).unwrap();
        let (_, optimizer) = start_state(&spec, 3, &global, Device::Cpu).unwrap();
        assert_eq!(optimizer.step, 60);
        let round_one = start_checkpoint_hash(&spec, 1, &global).unwrap();
        assert_eq!(round_one, start_checkpoint_hash(&spec, 1, &global).unwrap(), "deterministic");
        assert_ne!(round_one, start_checkpoint_hash(&spec, 2, &global).unwrap(), "the step is part of the state");
        let mut moved = global.clone();
        moved[0] += 1.0;
        assert_ne!(round_one, start_checkpoint_hash(&spec, 1, &moved).unwrap(), "so is θ_r");
    }

    #[test]
    fn a_global_model_of_the_wrong_size_is_an_error() {
        let spec = spec();
        let expected = initial_weights(&spec).unwrap().len();
        assert_eq!(start_checkpoint_hash(&spec, 0, &[0.0; 7]).err(), Some(StartError::WrongSize { expected, got: 7 }));
        let bad = JobSpec { model: ModelConfig { heads: 5, ..spec.model }, ..spec };
        assert!(matches!(initial_weights(&bad), Err(StartError::Model(ModelError::HeadsDoNotDivideWidth { .. }))));
    }
}
