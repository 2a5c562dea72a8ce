//! DiLoCo's outer step, in plain Rust over flat f32 vectors so that every validator computes
//! the same bits: a fixed order of operations, no fused multiply-add, no threads.
//!
//! With Δ̄ the mean pseudo-gradient (θ_global − θ_local averaged over accepted workers):
//! - Nesterov (as `torch.optim.SGD(nesterov=True)`, the DiLoCo paper's outer optimizer):
//!   `b ← μ·b + Δ̄`, `θ ← θ − η·(Δ̄ + μ·b)`;
//! - Average (FedAvg): `θ ← θ − Δ̄`, the mean of the workers' models.

use trellis_proto::OuterOptimizer;

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
        assert_eq!(global.len(), delta.len(), "delta and model differ in size");
        match self.optimizer {
            OuterOptimizer::Average => {
                for (theta, d) in global.iter_mut().zip(delta) {
                    *theta -= d;
                }
            }
            OuterOptimizer::Nesterov => {
                let (lr, mu) = (self.learning_rate, self.momentum);
                for ((theta, d), b) in global.iter_mut().zip(delta).zip(self.buffer.iter_mut()) {
                    *b = mu * *b + d;
                    *theta -= lr * (d + mu * *b);
                }
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
mod tests {
    use super::*;

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
