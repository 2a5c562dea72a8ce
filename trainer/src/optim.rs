//! The inner optimizer: AdamW with linear warm-up, cosine decay and global-norm gradient
//! clipping, written out op by op (the same sequence as PyTorch's single-tensor AdamW) so its
//! state is ours to checkpoint and its arithmetic is the same on every run; or Muon (MuLoCo's
//! inner optimizer) on the blocks' weight matrices with AdamW on the rest.
//!
//! Muon (Jordan et al., 2024) keeps one momentum buffer per matrix, in the first-moment slot
//! (its second moments stay zero, so a checkpoint's layout does not change): `B ← μB + g`, the
//! update is the Newton–Schulz orthogonalisation of the Nesterov direction `g + μB`, scaled by
//! `0.2·√max(rows, cols)` so its RMS matches AdamW's and AdamW's learning rate and weight decay
//! apply as they are (Liu et al., 2025, "Muon is scalable"). The iteration is five fixed
//! quintic steps in f32, plain matrix products: the same ops as the model's own forward pass,
//! so a replay on the same backend class reproduces it bit for bit.

use tch::{Kind, Tensor};

use crate::model::Parameter;

/// Which update rule the inner steps use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum InnerRule {
    #[default]
    Adamw,
    /// Muon on every 2-D weight of the transformer blocks, AdamW on embeddings, norms and biases.
    Muon,
}

/// Muon's momentum.
pub const MUON_MOMENTUM: f64 = 0.95;
/// Newton–Schulz iterations, and the quintic's coefficients (Jordan et al., 2024).
const NEWTON_SCHULZ_STEPS: usize = 5;
const NEWTON_SCHULZ: (f64, f64, f64) = (3.4445, -4.7750, 2.0315);

/// AdamW's hyper-parameters and schedule.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AdamWConfig {
    pub learning_rate: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub epsilon: f64,
    pub weight_decay: f64,
    /// Gradients are scaled so their global L2 norm is at most this.
    pub grad_clip: f64,
    pub warmup_steps: u64,
    /// Steps over which the cosine decays to `min_lr_fraction · learning_rate`.
    pub total_steps: u64,
    pub min_lr_fraction: f64,
    /// AdamW everywhere, or Muon on the blocks' matrices.
    #[serde(default)]
    pub rule: InnerRule,
}

impl AdamWConfig {
    /// The project's defaults (β = 0.9/0.95, ε = 1e-8, weight decay 0.1, clip 1.0, decay to 10%)
    /// with the given peak rate and schedule lengths.
    pub fn with_schedule(learning_rate: f64, warmup_steps: u64, total_steps: u64) -> Self {
        Self {
            learning_rate,
            beta1: 0.9,
            beta2: 0.95,
            epsilon: 1e-8,
            weight_decay: 0.1,
            grad_clip: 1.0,
            warmup_steps,
            total_steps,
            min_lr_fraction: 0.1,
            rule: InnerRule::Adamw,
        }
    }

    /// The learning rate of step `step` (0-based): linear warm-up over `warmup_steps`, then a
    /// cosine from `learning_rate` down to `min_lr_fraction · learning_rate` at `total_steps`.
    pub fn learning_rate_at(&self, step: u64) -> f64 {
        if step < self.warmup_steps {
            return self.learning_rate * (step + 1) as f64 / self.warmup_steps as f64;
        }
        let min = self.learning_rate * self.min_lr_fraction;
        let span = self.total_steps.saturating_sub(self.warmup_steps).max(1);
        let progress = ((step - self.warmup_steps) as f64 / span as f64).min(1.0);
        min + 0.5 * (self.learning_rate - min) * (1.0 + (std::f64::consts::PI * progress).cos())
    }
}

/// AdamW's state: first and second moments per parameter, and the number of steps taken.
#[derive(Debug)]
pub struct AdamW {
    pub config: AdamWConfig,
    pub first_moments: Vec<Tensor>,
    pub second_moments: Vec<Tensor>,
    pub step: u64,
}

impl AdamW {
    /// Zero moments for `parameters`.
    pub fn new(config: AdamWConfig, parameters: &[Parameter]) -> Self {
        let zeros = || parameters.iter().map(|p| p.tensor.zeros_like().set_requires_grad(false)).collect::<Vec<_>>();
        Self { config, first_moments: zeros(), second_moments: zeros(), step: 0 }
    }

    /// One update from the gradients held by `parameters`; returns the gradient norm before
    /// clipping. Gradients are left scaled; the caller zeroes them before the next backward.
    pub fn step(&mut self, parameters: &[Parameter]) -> f64 {
        let c = &self.config;
        let lr = c.learning_rate_at(self.step);
        self.step += 1;
        // Past 2³¹ steps β^step is 0 in f64 anyway; an `as i32` would wrap to a negative power.
        let power = i32::try_from(self.step).unwrap_or(i32::MAX);
        let bias_correction1 = 1.0 - c.beta1.powi(power);
        let bias_correction2_sqrt = (1.0 - c.beta2.powi(power)).sqrt();
        tch::no_grad(|| {
            let grads: Vec<Tensor> = parameters.iter().map(|p| p.tensor.grad()).collect();
            let norms: Vec<Tensor> = grads.iter().map(|g| g.norm()).collect();
            let total_norm = Tensor::stack(&norms, 0).norm().double_value(&[]);
            let clip = (c.grad_clip / (total_norm + 1e-6)).min(1.0);
            for (((parameter, grad), m), v) in
                parameters.iter().zip(&grads).zip(self.first_moments.iter_mut()).zip(self.second_moments.iter_mut())
            {
                let mut grad = grad.shallow_clone();
                let _ = grad.g_mul_scalar_(clip);
                let mut p = parameter.tensor.shallow_clone();
                if parameter.decays && c.weight_decay != 0.0 {
                    let _ = p.g_mul_scalar_(1.0 - lr * c.weight_decay);
                }
                if c.rule == InnerRule::Muon && takes_muon(parameter) {
                    let _ = m.g_mul_scalar_(MUON_MOMENTUM);
                    let _ = m.g_add_(&grad);
                    let direction = &grad + &*m * MUON_MOMENTUM;
                    let size = parameter.tensor.size();
                    let scale = 0.2 * (size[0].max(size[1]) as f64).sqrt();
                    let _ = p.g_add_(&(newton_schulz(&direction) * (-lr * scale)));
                    continue;
                }
                let _ = m.lerp_(&grad, 1.0 - c.beta1);
                let _ = v.g_mul_scalar_(c.beta2);
                let _ = v.addcmul_(&(&grad * (1.0 - c.beta2)), &grad);
                let denom = (v.sqrt() / bias_correction2_sqrt).g_add_scalar(c.epsilon);
                let _ = p.addcdiv_(&(&*m * (-lr / bias_correction1)), &denom);
            }
            total_norm
        })
    }
}

/// Whether Muon updates `parameter` under [`InnerRule::Muon`]: the 2-D weights of the blocks
/// (attention and MLP matrices). Embeddings (the tied output layer too), norms and biases keep
/// AdamW, as Muon's authors and MuLoCo do.
pub fn takes_muon(parameter: &Parameter) -> bool {
    is_muon_matrix(&parameter.name, parameter.tensor.dim())
}

/// [`takes_muon`] by a tensor's name and rank, as a checkpoint's header lists them.
pub fn is_muon_matrix(name: &str, rank: usize) -> bool {
    name.starts_with("blocks.") && rank == 2
}

/// The nearest semi-orthogonal matrix to `matrix`, approximately (singular values brought to
/// about [0.7, 1.2]): the quintic Newton–Schulz iteration on the matrix scaled to unit
/// Frobenius norm, on its wide orientation.
fn newton_schulz(matrix: &Tensor) -> Tensor {
    let (a, b, c) = NEWTON_SCHULZ;
    let size = matrix.size();
    let tall = size[0] > size[1];
    let mut x = if tall { matrix.tr() } else { matrix.shallow_clone() };
    x = &x / (x.norm().double_value(&[]) + 1e-7);
    for _ in 0..NEWTON_SCHULZ_STEPS {
        let gram = x.matmul(&x.tr());
        let polynomial = &gram * b + gram.matmul(&gram) * c;
        x = &x * a + polynomial.matmul(&x);
    }
    if tall {
        x.tr()
    } else {
        x
    }
}

/// Zeroes the gradients of `parameters`.
pub fn zero_grad(parameters: &mut [Parameter]) {
    for parameter in parameters {
        parameter.tensor.zero_grad();
    }
}

/// The sum of squares of all elements, for tests and diagnostics.
pub fn squared_norm(tensors: &[Tensor]) -> f64 {
    tensors.iter().map(|t| t.to_kind(Kind::Double).square().sum(Kind::Double).double_value(&[])).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> AdamWConfig {
        AdamWConfig {
            learning_rate: 1e-2,
            beta1: 0.9,
            beta2: 0.95,
            epsilon: 1e-8,
            weight_decay: 0.1,
            grad_clip: 1.0,
            warmup_steps: 10,
            total_steps: 110,
            min_lr_fraction: 0.1,
            rule: InnerRule::Adamw,
        }
    }

    #[test]
    fn schedule_warms_up_then_decays_to_the_floor() {
        let c = config();
        assert!((c.learning_rate_at(0) - 1e-3).abs() < 1e-12);
        assert!((c.learning_rate_at(9) - 1e-2).abs() < 1e-12);
        assert!((c.learning_rate_at(10) - 1e-2).abs() < 1e-12);
        assert!((c.learning_rate_at(60) - 5.5e-3).abs() < 1e-9);
        assert!((c.learning_rate_at(110) - 1e-3).abs() < 1e-12);
        assert!((c.learning_rate_at(10_000) - 1e-3).abs() < 1e-12);
    }

    #[test]
    fn a_step_past_two_to_the_31_stays_finite() {
        // The chain admits 2⁴⁰ steps of a job (2²⁰ rounds of 2²⁰); the bias correction's power
        // must not wrap there.
        let p = vec![Parameter {
            name: "w".into(),
            tensor: Tensor::from_slice(&[3.0f32, -1.0]).set_requires_grad(true),
            decays: true,
        }];
        (&p[0].tensor * Tensor::from_slice(&[2.0f32, 1.0])).sum(Kind::Float).backward();
        let mut adam = AdamW::new(config(), &p);
        adam.step = 1 << 31;
        adam.step(&p);
        let values = crate::model::tensor_values(&p[0].tensor);
        assert!(values.iter().all(|v| v.is_finite()), "{values:?}");
    }

    #[test]
    fn one_step_matches_the_adamw_formula() {
        // A single scalar parameter with gradient 2 (clipped to 1 by the norm): after the first
        // step the bias-corrected update is lr · g/|g| = lr, plus decoupled decay lr·wd·p.
        let mut p = vec![Parameter {
            name: "w".into(),
            tensor: Tensor::from_slice(&[3.0f32, 0.0]).set_requires_grad(true),
            decays: true,
        }];
        let loss = (&p[0].tensor * Tensor::from_slice(&[2.0f32, 0.0])).sum(Kind::Float);
        loss.backward();
        let mut c = config();
        c.warmup_steps = 0;
        let mut adam = AdamW::new(c, &p);
        let norm = adam.step(&p);
        assert!((norm - 2.0).abs() < 1e-6);
        let lr = 1e-2;
        let expected = 3.0 * (1.0 - lr * 0.1) - lr;
        let got = p[0].tensor.double_value(&[0]);
        assert!((got - expected).abs() < 1e-6, "got {got}, expected {expected}");
        zero_grad(&mut p);
        assert_eq!(p[0].tensor.grad().double_value(&[0]), 0.0);
    }

    /// Singular values about 1, 2, …, min(rows, cols): a diagonal with small off-diagonal noise.
    fn spread_matrix(rows: i64, cols: i64) -> Tensor {
        let values: Vec<f32> = (0..rows * cols)
            .map(|i| {
                let (r, c) = (i / cols, i % cols);
                if r == c {
                    1.0 + r as f32
                } else {
                    ((i * 7919 % 101) as f32 - 50.0) / 1000.0
                }
            })
            .collect();
        Tensor::from_slice(&values).view([rows, cols])
    }

    #[test]
    fn newton_schulz_brings_every_singular_value_near_one() {
        for (rows, cols) in [(12, 4), (4, 12), (8, 8)] {
            let matrix = spread_matrix(rows, cols);
            let before = Vec::<f32>::try_from(matrix.svd(true, true).1).unwrap();
            assert!(before[0] / before[before.len() - 1] > 3.0, "the input's singular values are spread");
            let singular = Vec::<f32>::try_from(newton_schulz(&matrix).svd(true, true).1).unwrap();
            for s in singular {
                assert!((0.55..=1.25).contains(&s), "{rows}×{cols}: singular value {s}");
            }
        }
    }

    #[test]
    fn muon_updates_the_blocks_matrices_and_leaves_the_rest_to_adamw() {
        let parameter = |name: &str, rows: i64, cols: i64| Parameter {
            name: name.into(),
            tensor: spread_matrix(rows, cols).set_requires_grad(true),
            decays: true,
        };
        let p = vec![parameter("blocks.0.mlp.fc.weight", 16, 4), parameter("wte", 16, 4)];
        let targets = [spread_matrix(16, 4) * 0.3, spread_matrix(16, 4) * -0.2];
        let loss = p
            .iter()
            .zip(&targets)
            .map(|(p, t)| (&p.tensor * t).sum(Kind::Float))
            .fold(Tensor::from(0.0f32), |a, b| a + b);
        loss.backward();
        let before: Vec<Tensor> = p.iter().map(|p| p.tensor.detach().copy()).collect();
        let mut c = config();
        c.warmup_steps = 0;
        c.weight_decay = 0.0;
        c.grad_clip = 1e9;
        c.rule = InnerRule::Muon;
        let lr = c.learning_rate;
        let mut muon = AdamW::new(c, &p);
        muon.step(&p);
        // The matrix: momentum = its gradient, no second moment, an update of RMS ≈ 0.2·lr.
        assert!(muon.first_moments[0].allclose(&targets[0], 1e-6, 1e-6, false));
        assert_eq!(muon.second_moments[0].abs().sum(Kind::Float).double_value(&[]), 0.0);
        let step = (&p[0].tensor - &before[0]).square().mean(Kind::Float).sqrt().double_value(&[]);
        assert!((0.1 * lr..=0.3 * lr).contains(&step), "Muon's update RMS {step} for lr {lr}");
        // The embedding: AdamW (first step: every coordinate moves by lr).
        assert!(muon.second_moments[1].abs().sum(Kind::Float).double_value(&[]) > 0.0);
        let moved = (&p[1].tensor - &before[1]).abs().max().double_value(&[]);
        assert!((moved - lr).abs() < 1e-6, "AdamW's first step moves by lr, got {moved}");
    }
}
