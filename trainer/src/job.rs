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
    /// The state a streaming round would continue is not one an accepted round ends with.
    #[error("cannot continue from the previous round's final checkpoint: {0}")]
    NotContinuable(String),
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

/// The start checkpoint of a Streaming DiLoCo round `round` (a job with `fragments > 1`) that
/// continues `previous`, the miner's final checkpoint of its accepted work of round `round − 1`:
/// that state with the fragment round `round − 1` synchronised taken from θ_r (`global`), the
/// step, the other fragments' weights and every moment kept (`docs/protocol.md` §2.9). The
/// miner starts from it and every checker derives it the same way, so the trail's first link is
/// checked like a fresh round's.
pub fn continued_start_checkpoint(
    spec: &JobSpec,
    round: u32,
    global: &[f32],
    previous: &[u8],
) -> Result<Vec<u8>, StartError> {
    let not = |why: String| StartError::NotContinuable(why);
    if !trellis_protocol::fragments::is_streaming(spec) {
        return Err(not("the job is not a streaming job".into()));
    }
    let span = trellis_protocol::fragments::taken_from_global(spec, round, global.len())
        .ok_or_else(|| not("round 0 has no previous round".into()))?;
    let base = compact_base(spec, global);
    let view = checkpoint::CheckpointView::parse(previous, base).map_err(|e| not(e.to_string()))?;
    let expected = round_start_step(spec, round);
    if view.step != expected {
        return Err(not(format!("it is at step {}, the round starts at step {expected}", view.step)));
    }
    checkpoint::with_weights_from_global(previous, base, global, span).map_err(|e| not(e.to_string()))
}

/// A model and optimizer holding the state of the start checkpoint `bytes` (from
/// [`start_checkpoint`] or [`continued_start_checkpoint`]), on `device`.
pub fn state_from_checkpoint(
    spec: &JobSpec,
    global: &[f32],
    bytes: &[u8],
    device: Device,
) -> Result<(Gpt, AdamW), StartError> {
    let mut model = Gpt::new(&spec.model, spec.init_seed, device)?;
    if model.numel() != global.len() {
        return Err(StartError::WrongSize { expected: model.numel(), got: global.len() });
    }
    let mut optimizer = AdamW::new(adamw_config(spec), model.parameters());
    let view = checkpoint::CheckpointView::parse(bytes, compact_base(spec, global))
        .map_err(|e| StartError::NotContinuable(e.to_string()))?;
    view.restore(&mut model, &mut optimizer, |_| true).map_err(|e| StartError::NotContinuable(e.to_string()))?;
    Ok((model, optimizer))
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
                fragments: 1,
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

    /// A streaming job (2 fragments) with `state` checkpoints.
    fn streaming(state: CheckpointState) -> JobSpec {
        let mut spec = spec();
        spec.diloco.fragments = 2;
        spec.verification.checkpoint_state = state;
        spec
    }

    fn dataset() -> crate::data::Dataset {
        let text: Vec<u8> =
            (0..40_000u32).map(|i| b"the quick brown fox jumps over the lazy dog. "[i as usize % 45]).collect();
        crate::data::Dataset::from_bytes(text, 4_096)
    }

    /// Round 0 of worker 0 trained from θ_0: the final checkpoint's bytes and the trail's hashes.
    fn first_round(spec: &JobSpec, global: &[f32]) -> (Vec<u8>, Vec<Hash>) {
        let dataset = dataset();
        static RUNS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let run = RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("trellis-continued-start-{}-{run}", std::process::id()));
        let (mut model, mut optimizer) = start_state(spec, 0, global, Device::Cpu).unwrap();
        let schedule = schedule(spec);
        let inner = crate::worker::InnerLoop {
            dataset: &dataset,
            schedule: &schedule,
            round: 0,
            worker: 0,
            checkpoint_interval: 5,
            trail_dir: Some(&dir),
            compact_base: compact_base(spec, global),
        };
        let outcome = inner.train_steps(&mut model, &mut optimizer, 20, |_, _| {}).unwrap();
        let last = outcome.trail.checkpoints.last().unwrap();
        let bytes = std::fs::read(crate::worker::checkpoint_path(&dir, last.step)).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        (bytes, outcome.trail.checkpoints.iter().map(|e| e.hash).collect())
    }

    #[test]
    fn a_continued_start_takes_the_synced_fragment_from_theta_r_and_keeps_everything_else() {
        for state in [CheckpointState::Full, CheckpointState::Compact] {
            let spec = streaming(state);
            let theta0 = initial_weights(&spec).unwrap();
            let (previous, _) = first_round(&spec, &theta0);
            let n = theta0.len();
            let synced = trellis_protocol::fragments::round_span(&spec, 0, n);
            assert_eq!(synced, 0..n / 2, "round 0 synchronises the first fragment");
            // θ_1: the outer step moved fragment 0 alone.
            let mut theta1 = theta0.clone();
            theta1[synced.clone()].iter_mut().for_each(|w| *w += 0.01);
            let ended = checkpoint::CheckpointView::parse(&previous, compact_base(&spec, &theta0)).unwrap();
            let start = continued_start_checkpoint(&spec, 1, &theta1, &previous).unwrap();
            let view = checkpoint::CheckpointView::parse(&start, compact_base(&spec, &theta1)).unwrap();
            assert_eq!(view.step, 20, "{state:?}: the round starts where the previous one ended");
            let (weights, before) = (view.weights(), ended.weights());
            assert!(weights[synced.clone()].iter().zip(&theta1[synced.clone()]).all(|(w, g)| w == g), "{state:?}");
            assert_eq!(weights[n / 2..], before[n / 2..], "{state:?}: the other fragment trains on");
            assert_ne!(weights[..n / 2], before[..n / 2], "{state:?}: the local values of the synced fragment go");
            for index in 0..view.tensor_count() {
                let (now, then) = (view.tensor(index), ended.tensor(index));
                assert_eq!((now.first_moments, now.second_moments), (then.first_moments, then.second_moments));
            }
            assert_eq!(start, continued_start_checkpoint(&spec, 1, &theta1, &previous).unwrap(), "deterministic");
            // Round 1 from it reruns bit for bit, and a checker replaying its first segment from
            // the start it derives reaches the trail's next checkpoint.
            let (dataset, schedule) = (dataset(), schedule(&spec));
            let inner = crate::worker::InnerLoop {
                dataset: &dataset,
                schedule: &schedule,
                round: 1,
                worker: 1,
                checkpoint_interval: 5,
                trail_dir: None,
                compact_base: compact_base(&spec, &theta1),
            };
            let train = || {
                let (mut model, mut optimizer) = state_from_checkpoint(&spec, &theta1, &start, Device::Cpu).unwrap();
                inner.train_steps_from_held_start(&mut model, &mut optimizer, 20, |_, _| {}).unwrap().trail
            };
            let trail = train();
            assert_eq!(trail.checkpoints, train().checkpoints, "{state:?}: a continued round reruns bit for bit");
            assert_eq!(trail.checkpoints.len(), 4, "the held start is not captured again");
            let (mut model, mut optimizer) = state_from_checkpoint(&spec, &theta1, &start, Device::Cpu).unwrap();
            let replayed = inner.replay_steps(&mut model, &mut optimizer, 5).unwrap().trail;
            assert_eq!(replayed.checkpoints[0], trail.checkpoints[0], "{state:?}: segment 0 replays");
        }
    }

    #[test]
    fn only_a_streaming_round_after_the_first_continues_a_final_checkpoint_at_its_start_step() {
        let spec = streaming(CheckpointState::Full);
        let global = initial_weights(&spec).unwrap();
        let (previous, hashes) = first_round(&spec, &global);
        let not = |r: Result<Vec<u8>, StartError>| matches!(r, Err(StartError::NotContinuable(_)));
        assert!(not(continued_start_checkpoint(&spec, 0, &global, &previous)), "round 0 has no previous round");
        assert!(
            not(continued_start_checkpoint(&spec, 2, &global, &previous)),
            "a final checkpoint of round 0 is not round 1's"
        );
        assert!(not(continued_start_checkpoint(&spec, 1, &global, &previous[..previous.len() - 1])), "malformed");
        let compact = streaming(CheckpointState::Compact);
        assert!(not(continued_start_checkpoint(&compact, 1, &global, &previous)), "a full checkpoint in a compact job");
        assert!(not(continued_start_checkpoint(&super::tests::spec(), 1, &global, &previous)), "plain DiLoCo");
        assert_eq!(hashes.len(), 5, "the trail the round left");
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
