//! A GPT-style decoder in tch: token and position embeddings, pre-norm blocks with causal
//! self-attention and a GELU MLP, a final layer norm, and an output head tied to the token
//! embedding.
//!
//! Parameters live in one list in a fixed, documented order (the canonical order of
//! checkpoints and of the flat vectors the outer step works on):
//! `wte, wpe, then for each block: ln1.weight, ln1.bias, attn.qkv.weight, attn.qkv.bias,
//! attn.proj.weight, attn.proj.bias, ln2.weight, ln2.bias, mlp.fc.weight, mlp.fc.bias,
//! mlp.proj.weight, mlp.proj.bias, then lnf.weight, lnf.bias`.

use std::str::FromStr;

use tch::{Device, Kind, Tensor};
use trellis_proto::ModelConfig;

/// A named model shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Preset {
    /// About 0.22M parameters, for tests.
    Nano,
    /// About 1.2M parameters.
    Micro,
    /// About 14.4M parameters.
    Small,
    /// The GPT-2 small shape (86M parameters with the byte vocabulary, 124M with GPT-2's), for GPUs.
    Gpt2,
}

impl Preset {
    pub const ALL: [Preset; 4] = [Preset::Nano, Preset::Micro, Preset::Small, Preset::Gpt2];

    pub fn name(self) -> &'static str {
        match self {
            Preset::Nano => "nano",
            Preset::Micro => "micro",
            Preset::Small => "small",
            Preset::Gpt2 => "gpt2",
        }
    }

    pub fn config(self) -> ModelConfig {
        let (context_length, width, layers, heads) = match self {
            Preset::Nano => (64, 64, 4, 4),
            Preset::Micro => (128, 128, 6, 4),
            Preset::Small => (256, 384, 8, 6),
            Preset::Gpt2 => (1024, 768, 12, 12),
        };
        ModelConfig { vocab_size: 256, context_length, width, layers, heads }
    }
}

impl FromStr for Preset {
    type Err = String;
    fn from_str(name: &str) -> Result<Self, Self::Err> {
        Preset::ALL.into_iter().find(|p| p.name() == name).ok_or_else(|| {
            let names: Vec<_> = Preset::ALL.iter().map(|p| p.name()).collect();
            format!("unknown model preset '{name}'; choose one of: {}", names.join(", "))
        })
    }
}

/// Why a model shape is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModelError {
    #[error("model width {width} is not divisible by its {heads} heads")]
    HeadsDoNotDivideWidth { width: u32, heads: u32 },
    #[error("model field {0} must be positive")]
    Zero(&'static str),
    #[error("model is too large ({0} parameters); the limit is 2^31")]
    TooLarge(u64),
}

/// Checks a model shape before any tensor is allocated.
pub fn validate(config: &ModelConfig) -> Result<(), ModelError> {
    for (name, value) in [
        ("vocab_size", config.vocab_size),
        ("context_length", config.context_length),
        ("width", config.width),
        ("layers", config.layers),
        ("heads", config.heads),
    ] {
        if value == 0 {
            return Err(ModelError::Zero(name));
        }
    }
    if config.width % config.heads != 0 {
        return Err(ModelError::HeadsDoNotDivideWidth { width: config.width, heads: config.heads });
    }
    let count = parameter_count(config);
    if count > 1 << 31 {
        return Err(ModelError::TooLarge(count));
    }
    Ok(())
}

/// Number of parameters of a shape: `V·C + T·C + L·(12C² + 13C) + 2C` (the protocol's count,
/// which the chain scales its aggregation window with).
pub use trellis_protocol::model::parameter_count;

/// One named parameter.
#[derive(Debug)]
pub struct Parameter {
    pub name: String,
    pub tensor: Tensor,
    /// Weight decay applies to matrices (embeddings and linear weights), not to biases and norms.
    pub decays: bool,
}

/// The model: its shape and its parameters in canonical order.
#[derive(Debug)]
pub struct Gpt {
    config: ModelConfig,
    device: Device,
    parameters: Vec<Parameter>,
}

const PER_BLOCK: usize = 12;

impl Gpt {
    /// A freshly initialised model: matrices N(0, 0.02), residual projections N(0, 0.02/√(2L)),
    /// biases 0, norm weights 1. The normal draws come from [`init_normals`], which uses only
    /// integer arithmetic and exact float operations, so the initial weights are the same bits on
    /// every machine and independent of libtorch's global generator.
    pub fn new(config: &ModelConfig, seed: u64, device: Device) -> Result<Self, ModelError> {
        validate(config)?;
        let (v, t, c) = (config.vocab_size as i64, config.context_length as i64, config.width as i64);
        let std = 0.02;
        let residual_std = 0.02 / (2.0 * config.layers as f64).sqrt();
        let mut parameters: Vec<Parameter> = Vec::with_capacity(2 + PER_BLOCK * config.layers as usize + 2);
        let mut push = |name: String, shape: &[i64], init: Init| {
            let index = parameters.len() as u64;
            let numel: i64 = shape.iter().product();
            let values = match init {
                Init::Normal(std) => init_normals(seed, index, numel as usize, std),
                Init::Constant(value) => vec![value; numel as usize],
            };
            let tensor = Tensor::from_slice(&values).view(shape);
            parameters.push(Parameter { name, tensor, decays: matches!(init, Init::Normal(_)) });
        };
        push("wte".into(), &[v, c], Init::Normal(std));
        push("wpe".into(), &[t, c], Init::Normal(std));
        for layer in 0..config.layers {
            let p = |name: &str| format!("blocks.{layer}.{name}");
            push(p("ln1.weight"), &[c], Init::Constant(1.0));
            push(p("ln1.bias"), &[c], Init::Constant(0.0));
            push(p("attn.qkv.weight"), &[3 * c, c], Init::Normal(std));
            push(p("attn.qkv.bias"), &[3 * c], Init::Constant(0.0));
            push(p("attn.proj.weight"), &[c, c], Init::Normal(residual_std));
            push(p("attn.proj.bias"), &[c], Init::Constant(0.0));
            push(p("ln2.weight"), &[c], Init::Constant(1.0));
            push(p("ln2.bias"), &[c], Init::Constant(0.0));
            push(p("mlp.fc.weight"), &[4 * c, c], Init::Normal(std));
            push(p("mlp.fc.bias"), &[4 * c], Init::Constant(0.0));
            push(p("mlp.proj.weight"), &[c, 4 * c], Init::Normal(residual_std));
            push(p("mlp.proj.bias"), &[c], Init::Constant(0.0));
        }
        push("lnf.weight".into(), &[c], Init::Constant(1.0));
        push("lnf.bias".into(), &[c], Init::Constant(0.0));
        for parameter in &mut parameters {
            parameter.tensor = parameter.tensor.to_device(device).set_requires_grad(true);
        }
        Ok(Self { config: config.clone(), device, parameters })
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    pub fn device(&self) -> Device {
        self.device
    }

    /// The parameters in canonical order.
    pub fn parameters(&self) -> &[Parameter] {
        &self.parameters
    }

    /// Clears the gradients of every parameter.
    pub fn zero_grad(&mut self) {
        for parameter in &mut self.parameters {
            parameter.tensor.zero_grad();
        }
    }

    /// Total number of scalar parameters.
    pub fn numel(&self) -> usize {
        self.parameters.iter().map(|p| p.tensor.numel()).sum()
    }

    /// Logits `[B, T, V]` for token ids `[B, T]` (T ≤ context length).
    // `x = x + y` on purpose: `+=` would add in place into a tensor autograd still needs.
    #[allow(clippy::assign_op_pattern)]
    pub fn forward(&self, tokens: &Tensor) -> Tensor {
        let (batch, time) = tokens.size2().expect("tokens are [batch, time]");
        let c = self.config.width as i64;
        let heads = self.config.heads as i64;
        let p = |i: usize| &self.parameters[i].tensor;
        let positions = Tensor::arange(time, (Kind::Int64, self.device));
        let mut x =
            Tensor::embedding(p(0), tokens, -1, false, false) + Tensor::embedding(p(1), &positions, -1, false, false);
        for layer in 0..self.config.layers as usize {
            let b = |k: usize| p(2 + layer * PER_BLOCK + k);
            let h = layer_norm(&x, c, b(0), b(1));
            let qkv = h.linear(b(2), Some(b(3)));
            let parts = qkv.split(c, 2);
            let shape = |t: &Tensor| t.view([batch, time, heads, c / heads]).transpose(1, 2);
            let (q, k, v) = (shape(&parts[0]), shape(&parts[1]), shape(&parts[2]));
            let attention = Tensor::scaled_dot_product_attention(&q, &k, &v, None::<Tensor>, 0.0, true, None, false);
            let y = attention.transpose(1, 2).contiguous().view([batch, time, c]).linear(b(4), Some(b(5)));
            x = x + y;
            let h = layer_norm(&x, c, b(6), b(7));
            let y = h.linear(b(8), Some(b(9))).gelu("tanh").linear(b(10), Some(b(11)));
            x = x + y;
        }
        let last = 2 + self.config.layers as usize * PER_BLOCK;
        let x = layer_norm(&x, c, p(last), p(last + 1));
        x.matmul(&p(0).tr())
    }

    /// Mean cross-entropy of predicting `targets` from `tokens` (both `[B, T]`).
    pub fn loss(&self, tokens: &Tensor, targets: &Tensor) -> Tensor {
        let logits = self.forward(tokens);
        let vocab = self.config.vocab_size as i64;
        logits.view([-1, vocab]).cross_entropy_for_logits(&targets.view([-1]))
    }

    /// The weights as one flat f32 vector in canonical order.
    pub fn flat_weights(&self) -> Vec<f32> {
        flatten(self.parameters.iter().map(|p| &p.tensor))
    }

    /// Overwrites the weights from a flat vector in canonical order.
    pub fn set_flat_weights(&mut self, flat: &[f32]) {
        assert_eq!(flat.len(), self.numel(), "flat weights do not match the model");
        unflatten_into(self.parameters.iter_mut().map(|p| &mut p.tensor), flat);
    }
}

/// Layer norm with the affine part written as a broadcast multiply and add. libtorch's fused
/// kernel reduces the weight and bias gradients with per-thread buffers, so their bits depend on
/// the thread count; the broadcast form reduces them like a linear layer's bias, which does not.
fn layer_norm(x: &Tensor, width: i64, weight: &Tensor, bias: &Tensor) -> Tensor {
    bias.addcmul(&x.layer_norm([width], None::<Tensor>, None::<Tensor>, 1e-5, true), weight)
}

#[derive(Clone, Copy)]
enum Init {
    Normal(f64),
    Constant(f32),
}

/// `count` approximately normal draws with standard deviation `std` for parameter `index`:
/// each is `std·√3·(u1 + u2 + u3 + u4 − 2)` (Irwin–Hall with four uniforms, variance 1/3 before
/// scaling), where the `u` are the four 16-bit quarters of one ChaCha8 output, each mapped to
/// `(k + 0.5) / 65536`. The ChaCha8 key is `blake3-derive-key("trellis v1 randomness",
/// "init" ‖ seed ‖ index)`. Only integer arithmetic and exactly rounded float operations are
/// used, so the result is identical on every platform.
pub fn init_normals(seed: u64, index: u64, count: usize, std: f64) -> Vec<f32> {
    use rand_chacha::rand_core::{RngCore, SeedableRng};
    let mut hasher = trellis_proto::HashDomain::Randomness.hasher();
    hasher.update(b"init");
    hasher.update(&seed.to_le_bytes());
    hasher.update(&index.to_le_bytes());
    let mut rng = rand_chacha::ChaCha8Rng::from_seed(*hasher.finalize().as_bytes());
    let scale = std * 3f64.sqrt();
    (0..count)
        .map(|_| {
            let word = rng.next_u64();
            let sum: f64 = (0..4).map(|q| ((word >> (16 * q)) & 0xffff) as f64 + 0.5).sum::<f64>() / 65536.0;
            ((sum - 2.0) * scale) as f32
        })
        .collect()
}

/// Concatenates tensors into one f32 vector (copying through the CPU).
/// Sized once: growing a vector of a large model's values doubling would hold up to twice them.
pub fn flatten<'a>(tensors: impl Iterator<Item = &'a Tensor>) -> Vec<f32> {
    let tensors: Vec<&Tensor> = tensors.collect();
    let mut out = vec![0.0; tensors.iter().map(|t| t.numel()).sum()];
    let mut start = 0;
    for tensor in tensors {
        let end = start + tensor.numel();
        copy_values(tensor, &mut out[start..end]);
        start = end;
    }
    out
}

/// One tensor's values in row-major order, on the host.
pub fn tensor_values(tensor: &Tensor) -> Vec<f32> {
    let mut out = vec![0.0; tensor.numel()];
    copy_values(tensor, &mut out);
    out
}

fn copy_values(tensor: &Tensor, out: &mut [f32]) {
    let cpu = tensor.detach().to_device(Device::Cpu).contiguous();
    cpu.copy_data(out, out.len());
}

/// Overwrites one tensor in place, without tracking gradients, with `values` (as many as it has).
pub fn overwrite(tensor: &Tensor, values: &[f32]) {
    assert_eq!(values.len(), tensor.numel(), "values do not match the tensor");
    tch::no_grad(|| {
        let source = Tensor::from_slice(values).view(tensor.size().as_slice()).to_device(tensor.device());
        tensor.shallow_clone().copy_(&source);
    });
}

/// Copies consecutive slices of `flat` into `tensors`, in place and without tracking gradients.
pub fn unflatten_into<'a>(tensors: impl Iterator<Item = &'a mut Tensor>, flat: &[f32]) {
    let mut offset = 0;
    for tensor in tensors {
        let numel = tensor.numel();
        overwrite(tensor, &flat[offset..offset + numel]);
        offset += numel;
    }
    assert_eq!(offset, flat.len(), "flat vector longer than the tensors");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_have_the_advertised_sizes() {
        let count = |p: Preset| parameter_count(&p.config());
        assert!((150_000..300_000).contains(&count(Preset::Nano)), "{}", count(Preset::Nano));
        assert!((1_000_000..2_000_000).contains(&count(Preset::Micro)), "{}", count(Preset::Micro));
        assert!((10_000_000..20_000_000).contains(&count(Preset::Small)), "{}", count(Preset::Small));
        let gpt2_with_bpe = ModelConfig { vocab_size: 50257, ..Preset::Gpt2.config() };
        assert!((123_000_000..126_000_000).contains(&parameter_count(&gpt2_with_bpe)));
    }

    #[test]
    fn the_formula_counts_the_tensors() {
        let model = Gpt::new(&Preset::Nano.config(), 1, Device::Cpu).unwrap();
        assert_eq!(model.numel() as u64, parameter_count(&Preset::Nano.config()));
        assert_eq!(model.parameters().len(), 2 + 12 * 4 + 2);
    }

    #[test]
    fn unknown_presets_and_bad_shapes_are_errors() {
        assert!("huge".parse::<Preset>().unwrap_err().contains("nano, micro, small, gpt2"));
        let bad = ModelConfig { heads: 5, ..Preset::Nano.config() };
        assert_eq!(validate(&bad), Err(ModelError::HeadsDoNotDivideWidth { width: 64, heads: 5 }));
        let zero = ModelConfig { layers: 0, ..Preset::Nano.config() };
        assert_eq!(validate(&zero), Err(ModelError::Zero("layers")));
    }

    #[test]
    fn same_seed_same_weights_and_flat_round_trip() {
        let a = Gpt::new(&Preset::Nano.config(), 7, Device::Cpu).unwrap();
        let mut b = Gpt::new(&Preset::Nano.config(), 7, Device::Cpu).unwrap();
        let c = Gpt::new(&Preset::Nano.config(), 8, Device::Cpu).unwrap();
        assert_eq!(a.flat_weights(), b.flat_weights());
        assert_ne!(a.flat_weights(), c.flat_weights());
        b.set_flat_weights(&c.flat_weights());
        assert_eq!(b.flat_weights(), c.flat_weights());
    }

    #[test]
    fn initial_loss_is_near_uniform() {
        let model = Gpt::new(&Preset::Nano.config(), 3, Device::Cpu).unwrap();
        let tokens = Tensor::from_slice(&(0..128).map(|i| i % 256).collect::<Vec<i64>>()).view([2, 64]);
        let targets = Tensor::from_slice(&(0..128).map(|i| (i * 7 + 3) % 256).collect::<Vec<i64>>()).view([2, 64]);
        let loss = model.loss(&tokens, &targets).double_value(&[]);
        assert!((loss - (256f64).ln()).abs() < 0.5, "initial loss {loss}");
    }

    #[test]
    fn init_draws_have_the_requested_spread_and_fixed_bits() {
        let draws = init_normals(1, 0, 100_000, 0.02);
        let mean = draws.iter().map(|&x| f64::from(x)).sum::<f64>() / draws.len() as f64;
        let var = draws.iter().map(|&x| (f64::from(x) - mean).powi(2)).sum::<f64>() / draws.len() as f64;
        assert!(mean.abs() < 1e-3, "mean {mean}");
        assert!((var.sqrt() - 0.02).abs() < 5e-4, "std {}", var.sqrt());
        // Golden: the first draw never changes (a change breaks every job's round-0 model).
        assert_eq!(init_normals(1, 0, 1, 0.02)[0].to_bits(), GOLDEN_FIRST_INIT_BITS);
    }

    const GOLDEN_FIRST_INIT_BITS: u32 = 3144790204;
}
