//! DiLoCo's outer step, in plain Rust over flat f32 vectors so that every validator computes
//! the same bits: a fixed order of operations, no fused multiply-add, no threads.
//!
//! With Δ̄ the mean pseudo-gradient (θ_global − θ_local averaged over accepted workers):
//! - Nesterov (as `torch.optim.SGD(nesterov=True)`, the DiLoCo paper's outer optimizer):
//!   `b ← μ·b + Δ̄`, `θ ← θ − η·(Δ̄ + μ·b)`;
//! - Average (FedAvg): `θ ← θ − Δ̄`, the mean of the workers' models.

use trellis_proto::{AggregationRule, JobSpec, OuterOptimizer};

use crate::aggregate::{aggregate_by_steps, AggregateError};

/// Why a round's outer update cannot be computed from its inputs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OuterError {
    #[error("the momentum has {momentum} values, the model {model}")]
    MomentumSize { model: usize, momentum: usize },
    #[error("Δ {index} has {got} values, the model {model}")]
    DeltaSize { index: usize, model: usize, got: usize },
    #[error(transparent)]
    Aggregate(#[from] AggregateError),
    /// Accepted Δs so large that the step overflows f32: no round commits a model or momentum
    /// that is not finite (it would end the job for every honest miner); the round lapses.
    #[error("the outer step makes value {index} of the model or its momentum non-finite")]
    NonFinite { index: usize },
}

/// A round's outer update: the next global model θ_{r+1} and the outer momentum after it.
#[derive(Debug, Clone, PartialEq)]
pub struct OuterUpdate {
    pub model: Vec<f32>,
    pub momentum: Vec<f32>,
}

/// The outer update of a round of `spec`: the accepted Δs (in the chain's address order), whose
/// workers trained `steps[k]` inner steps each, combined with the job's aggregation rule
/// ([`aggregate_by_steps`]), then the job's outer optimizer applied to θ_r
/// (`global`) and the momentum after the previous round. What every validator recomputes
/// before it votes for a `CommitAggregate`, and what the simulator checks aggregates against.
pub fn outer_update(
    spec: &JobSpec,
    global: &[f32],
    mut momentum: Vec<f32>,
    deltas: &[&[f32]],
    steps: &[u32],
) -> Result<OuterUpdate, OuterError> {
    let mut model = global.to_vec();
    outer_update_in_place(spec, &mut model, &mut momentum, deltas, steps)?;
    Ok(OuterUpdate { model, momentum })
}

/// Whether the job's rule combines each coordinate on its own (mean, trimmed mean), so that the
/// outer update of a block of coordinates needs only that block of every input: a validator then
/// computes it a block at a time ([`outer_update_in_place`]) and gets the same bits. Centred
/// clipping measures whole Δs and needs them whole.
pub fn coordinatewise(rule: &AggregationRule) -> bool {
    !matches!(rule, AggregationRule::CenteredClip { .. })
}

/// [`outer_update`] of the coordinates `model` (θ_r's, overwritten with θ_{r+1}'s), `momentum`
/// (overwritten with the new momentum) and `deltas` hold: all of them, or any block of them when
/// the rule is [`coordinatewise`].
pub fn outer_update_in_place(
    spec: &JobSpec,
    model: &mut [f32],
    momentum: &mut [f32],
    deltas: &[&[f32]],
    steps: &[u32],
) -> Result<(), OuterError> {
    if momentum.len() != model.len() {
        return Err(OuterError::MomentumSize { model: model.len(), momentum: momentum.len() });
    }
    if let Some((index, delta)) = deltas.iter().enumerate().find(|(_, d)| d.len() != model.len()) {
        return Err(OuterError::DeltaSize { index, model: model.len(), got: delta.len() });
    }
    let combined = aggregate_by_steps(&spec.aggregation, deltas, steps)?;
    let d = &spec.diloco;
    step_in_place(d.outer_optimizer, d.outer_learning_rate, d.outer_momentum, model, momentum, &combined);
    match model.iter().zip(momentum.iter()).position(|(theta, b)| !(theta.is_finite() && b.is_finite())) {
        Some(index) => Err(OuterError::NonFinite { index }),
        None => Ok(()),
    }
}

/// The outer optimizer's configuration and its momentum buffer.
#[derive(Debug, Clone)]
pub struct OuterStep {
    pub optimizer: OuterOptimizer,
    pub learning_rate: f32,
    pub momentum: f32,
    pub buffer: Vec<f32>,
}

impl OuterStep {
    pub fn new(optimizer: OuterOptimizer, learning_rate: f32, momentum: f32, parameters: usize) -> Self {
        Self { optimizer, learning_rate, momentum, buffer: vec![0.0; parameters] }
    }

    /// Applies the mean pseudo-gradient `delta` to `global` in place.
    pub fn apply(&mut self, global: &mut [f32], delta: &[f32]) {
        step_in_place(self.optimizer, self.learning_rate, self.momentum, global, &mut self.buffer, delta);
    }
}

/// One outer step of `optimizer` on `global` and its momentum `buffer`, in place.
fn step_in_place(
    optimizer: OuterOptimizer,
    learning_rate: f32,
    momentum: f32,
    global: &mut [f32],
    buffer: &mut [f32],
    delta: &[f32],
) {
    assert_eq!(global.len(), delta.len(), "delta and model differ in size");
    match optimizer {
        OuterOptimizer::Average => {
            for (theta, d) in global.iter_mut().zip(delta) {
                *theta -= d;
            }
        }
        OuterOptimizer::Nesterov => {
            let (lr, mu) = (learning_rate, momentum);
            for ((theta, d), b) in global.iter_mut().zip(delta).zip(buffer.iter_mut()) {
                *b = mu * *b + d;
                *theta -= lr * (d + mu * *b);
            }
        }
    }
}

/// The element-wise mean of `deltas`, summed in the given order, then divided.
pub fn mean(deltas: &[&[f32]]) -> Vec<f32> {
    assert!(!deltas.is_empty(), "the mean of no deltas is undefined");
    let n = deltas[0].len();
    let mut sum = vec![0.0f32; n];
    for delta in deltas {
        assert_eq!(delta.len(), n, "deltas differ in size");
        for (s, d) in sum.iter_mut().zip(delta.iter()) {
            *s += d;
        }
    }
    let k = deltas.len() as f32;
    sum.iter_mut().for_each(|s| *s /= k);
    sum
}

/// The pseudo-gradient of a worker: `global − local`.
pub fn pseudo_gradient(global: &[f32], local: &[f32]) -> Vec<f32> {
    global.iter().zip(local).map(|(g, l)| g - l).collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn an_update_that_overflows_is_an_error() {
        // Two accepted Δs near the bf16 maximum (a drift a checker accepts as finite): their sum
        // overflows the mean, and a Nesterov step of it would make θ infinite.
        let spec = spec(OuterOptimizer::Nesterov, trellis_proto::AggregationRule::Mean);
        let global = vec![1.0f32, 2.0, 3.0];
        let huge = [0.5f32, 3.3e38, -1.0];
        let result = outer_update(&spec, &global, vec![0.0; 3], &[&huge, &huge], &[1, 1]);
        assert_eq!(result, Err(OuterError::NonFinite { index: 1 }));
        let fine = [0.5f32, 1.0, -1.0];
        assert!(outer_update(&spec, &global, vec![0.0; 3], &[&fine, &fine], &[1, 1]).is_ok());
    }

    #[test]
    fn nesterov_matches_a_hand_computed_example() {
        // θ = [1, -2], lr 0.7, μ 0.9.
        // Round 1: Δ = [0.1, -0.2]: b = [0.1, -0.2]; update = Δ + 0.9 b = [0.19, -0.38];
        //          θ = [1 - 0.133, -2 + 0.266] = [0.867, -1.734].
        // Round 2: Δ = [0.1, 0.0]:  b = [0.19, -0.18]; update = [0.1 + 0.171, 0 - 0.162] = [0.271, -0.162];
        //          θ = [0.867 - 0.1897, -1.734 + 0.1134] = [0.6773, -1.6206].
        let mut theta = vec![1.0f32, -2.0];
        let mut step = OuterStep::new(OuterOptimizer::Nesterov, 0.7, 0.9, 2);
        step.apply(&mut theta, &[0.1, -0.2]);
        assert!((theta[0] - 0.867).abs() < 1e-6 && (theta[1] + 1.734).abs() < 1e-6, "{theta:?}");
        step.apply(&mut theta, &[0.1, 0.0]);
        assert!((step.buffer[0] - 0.19).abs() < 1e-6 && (step.buffer[1] + 0.18).abs() < 1e-6);
        assert!((theta[0] - 0.6773).abs() < 1e-5 && (theta[1] + 1.6206).abs() < 1e-5, "{theta:?}");
    }

    #[test]
    fn averaging_gives_the_mean_of_the_local_models() {
        let global = vec![1.0f32, 1.0, 1.0];
        let locals = [vec![0.0f32, 2.0, 1.0], vec![2.0f32, 4.0, 1.0]];
        let deltas: Vec<Vec<f32>> = locals.iter().map(|l| pseudo_gradient(&global, l)).collect();
        let refs: Vec<&[f32]> = deltas.iter().map(Vec::as_slice).collect();
        let mut theta = global.clone();
        OuterStep::new(OuterOptimizer::Average, 0.7, 0.9, 3).apply(&mut theta, &mean(&refs));
        assert_eq!(theta, vec![1.0, 3.0, 1.0]);
    }

    pub(crate) fn spec(outer_optimizer: OuterOptimizer, aggregation: trellis_proto::AggregationRule) -> JobSpec {
        use trellis_proto::*;
        JobSpec {
            name: "outer".into(),
            model: ModelConfig { vocab_size: 256, context_length: 8, width: 8, layers: 1, heads: 1 },
            init_seed: 1,
            dataset_root: Hash::ZERO,
            dataset_shards: 1,
            diloco: DilocoParams {
                workers_per_round: 3,
                inner_steps: 4,
                batch_size: 1,
                sequence_length: 8,
                learning_rate: 1e-3,
                beta1: 0.9,
                beta2: 0.95,
                weight_decay: 0.0,
                grad_clip: 1.0,
                warmup_steps: 0,
                outer_optimizer,
                outer_learning_rate: 0.7,
                outer_momentum: 0.9,
                rounds: 2,
                encoding: DeltaEncoding::F32,
                inner_optimizer: Default::default(),
                min_inner_steps: 4,
                fragments: 1,
            },
            aggregation,
            verification: VerificationParams {
                checkpoint_interval: 2,
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
    fn a_rounds_update_is_the_jobs_rule_then_its_outer_step_bit_for_bit() {
        let spec = spec(OuterOptimizer::Nesterov, trellis_proto::AggregationRule::TrimmedMean { trim: 1 });
        let global = [1.0f32, -2.0, 0.5];
        let deltas = [[0.1f32, -0.2, 9.0], [0.3, 0.0, -9.0], [0.2, -0.1, 0.25]];
        let refs: Vec<&[f32]> = deltas.iter().map(|d| d.as_slice()).collect();
        let momentum = vec![0.05f32, 0.0, -0.5];
        let update = outer_update(&spec, &global, momentum.clone(), &refs, &[4, 4, 4]).unwrap();
        // By hand: the trimmed mean keeps the middle value per coordinate.
        let combined = [0.2f32, -0.1, 0.25];
        let mut step =
            OuterStep { optimizer: OuterOptimizer::Nesterov, learning_rate: 0.7, momentum: 0.9, buffer: momentum };
        let mut model = global.to_vec();
        step.apply(&mut model, &combined);
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&update.model), bits(&model));
        assert_eq!(bits(&update.momentum), bits(&step.buffer));
    }

    #[test]
    fn a_coordinatewise_rule_updates_block_by_block_to_the_same_bits() {
        use trellis_proto::AggregationRule;
        let n = 1000;
        let wave = |phase: f32| (0..n).map(|i| (i as f32 * 0.013 + phase).sin() * 0.1).collect::<Vec<f32>>();
        let global = wave(0.0);
        let deltas: Vec<Vec<f32>> = (1..=5).map(|k| wave(k as f32)).collect();
        let refs: Vec<&[f32]> = deltas.iter().map(Vec::as_slice).collect();
        let momentum = wave(9.0);
        // Workers that trained different steps: the mean is weighted, block by block too.
        let steps = [4, 3, 4, 2, 4];
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        for (rule, optimizer) in [
            (AggregationRule::Mean, OuterOptimizer::Nesterov),
            (AggregationRule::TrimmedMean { trim: 1 }, OuterOptimizer::Nesterov),
            (AggregationRule::Mean, OuterOptimizer::Average),
        ] {
            assert!(coordinatewise(&rule));
            let spec = spec(optimizer, rule.clone());
            let whole = outer_update(&spec, &global, momentum.clone(), &refs, &steps).unwrap();
            let (mut model, mut buffer) = (global.clone(), momentum.clone());
            for block in (0..n).collect::<Vec<_>>().chunks(333) {
                let range = block[0]..block[block.len() - 1] + 1;
                let parts: Vec<&[f32]> = refs.iter().map(|d| &d[range.clone()]).collect();
                outer_update_in_place(&spec, &mut model[range.clone()], &mut buffer[range.clone()], &parts, &steps)
                    .unwrap();
            }
            assert_eq!(bits(&model), bits(&whole.model), "{rule:?}");
            assert_eq!(bits(&buffer), bits(&whole.momentum), "{rule:?}");
        }
        assert!(!coordinatewise(&AggregationRule::CenteredClip { tau: 1.0, iterations: 3 }));
    }

    #[test]
    fn an_update_whose_inputs_disagree_in_size_is_an_error_not_a_panic() {
        let spec = spec(OuterOptimizer::Average, trellis_proto::AggregationRule::Mean);
        let global = [0.0f32; 3];
        assert_eq!(
            outer_update(&spec, &global, vec![0.0; 2], &[&[0.0; 3]], &[4]),
            Err(OuterError::MomentumSize { model: 3, momentum: 2 })
        );
        assert_eq!(
            outer_update(&spec, &global, vec![0.0; 3], &[&[0.0; 3], &[0.0; 4]], &[4, 4]),
            Err(OuterError::DeltaSize { index: 1, model: 3, got: 4 })
        );
        assert_eq!(
            outer_update(&spec, &global, vec![0.0; 3], &[], &[]),
            Err(OuterError::Aggregate(AggregateError::Empty))
        );
    }

    #[test]
    fn mean_is_bit_deterministic_for_a_fixed_order() {
        let a: Vec<f32> = (0..1000).map(|i| (i as f32).sin()).collect();
        let b: Vec<f32> = (0..1000).map(|i| (i as f32).cos() * 1e-3).collect();
        let first = mean(&[&a, &b]);
        let again = mean(&[&a, &b]);
        assert_eq!(
            first.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
            again.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
        );
    }
}
