//! The inner optimizer: AdamW with linear warm-up, cosine decay and global-norm gradient
//! clipping, written out op by op (the same sequence as PyTorch's single-tensor AdamW) so its
//! state is ours to checkpoint and its arithmetic is the same on every run.

use tch::{Kind, Tensor};

use crate::model::Parameter;

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
        let bias_correction1 = 1.0 - c.beta1.powi(self.step as i32);
        let bias_correction2_sqrt = (1.0 - c.beta2.powi(self.step as i32)).sqrt();
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
}
