//! The reference trainer: model specifications, weights, batches and fixed-point SGD steps.
//!
//! This is the plain-Rust definition of what a proof proves. [`sgd_step`] is pure integer
//! arithmetic in the Q15.16 format of [`crate::fixed`]; it is deterministic, independent of
//! summation order (all sums are exact integers before their single truncation) and never
//! panics on any input: a shape mismatch or an overflow is an error naming what went wrong.
//!
//! # One step, exactly
//! For a network with layers `l = 1..L` (softmax regression: `L = 1`; MLP: `L = 2` with ReLU
//! between), weights `W_l[o][i]`, biases `b_l[o]`, step size `η` (Q15.16, the learning rate
//! divided by the batch size, rounded down), and each example `(x, y)` of the batch:
//!
//! ```text
//! a_0 = x
//! pre_l[o] = floor((Σ_i W_l[o][i]·a_{l-1}[i] + b_l[o]·2^16) / 2^16)          (checked i32)
//! a_l[o]   = max(pre_l[o], 0)                       for l < L (ReLU)
//! p        = softmax(pre_L)                         (fixed::softmax)
//! δ_L[c]   = p[c] − (c == y ? 2^16 : 0)
//! back[i]  = floor(Σ_o W_l[o][i]·δ_l[o] / 2^16)     (checked i32, weights before the update)
//! δ_{l-1}[i] = pre_{l-1}[i] ≥ 0 ? back[i] : 0       (ReLU'(0) is taken as 1)
//! G_l[o][i] = Σ_examples δ_l[o]·a_{l-1}[i]          (exact, scale 2^32)
//! Gb_l[o]   = Σ_examples δ_l[o]·2^16                (exact, scale 2^32)
//! W_l'[o][i] = W_l[o][i] − floor(η·G_l[o][i] / 2^32)   (checked i32), same for biases
//! ```

use std::fmt;
use std::str::FromStr;

use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};

use crate::fixed::{self, OutOfRange, FRAC_BITS, ONE};

/// Widest layer a spec may name; keeps exact dot products far inside `i128`.
pub const MAX_WIDTH: usize = 4096;
/// Most classes a spec may name; bounds the softmax remainder range checks.
pub const MAX_CLASSES: usize = 1024;
/// Largest batch a spec may name.
pub const MAX_BATCH: usize = 1024;
/// Most parameters a spec may describe (the circuit is far too large well before this).
pub const MAX_PARAMETERS: usize = 1 << 22;
/// Longest spec string accepted by the parser and by key decoders.
pub const MAX_SPEC_LEN: usize = 128;
/// Batch size when a spec does not name one.
pub const DEFAULT_BATCH: usize = 4;
/// Learning rate when a spec does not name one (for the mean gradient over the batch).
pub const DEFAULT_LEARNING_RATE: &str = "0.5";

/// Errors from parsing a [`ModelSpec`] string.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    /// The text does not start with a known architecture.
    #[error(
        "unknown model {0:?}: expected softmax:INxCLASSES or mlp:INxHIDDENxCLASSES, e.g. softmax:4x3 or mlp:4x8x3"
    )]
    UnknownArchitecture(String),
    /// The dimensions are not `AxB` (softmax) or `AxBxC` (mlp) positive integers.
    #[error("bad dimensions {text:?} for {architecture}: expected {expected}")]
    BadDimensions {
        /// `softmax` or `mlp`.
        architecture: &'static str,
        /// What was given.
        text: String,
        /// What the architecture needs.
        expected: &'static str,
    },
    /// A dimension exceeds its limit.
    #[error("{what} = {value} exceeds the limit {max}")]
    TooLarge {
        /// Which dimension.
        what: &'static str,
        /// The value given.
        value: usize,
        /// The largest accepted.
        max: usize,
    },
    /// Fewer than two classes, or a zero width or batch.
    #[error("{what} must be at least {min}, got {value}")]
    TooSmall {
        /// Which dimension.
        what: &'static str,
        /// The value given.
        value: usize,
        /// The smallest accepted.
        min: usize,
    },
    /// An option other than `batch=` or `lr=`.
    #[error("unknown option {0:?}: options are batch=N and lr=DECIMAL, e.g. softmax:4x3,batch=2,lr=0.5")]
    UnknownOption(String),
    /// An option given twice.
    #[error("option {0:?} given twice")]
    DuplicateOption(&'static str),
    /// `batch=` not a positive integer.
    #[error("batch {0:?} is not a positive integer")]
    BadBatch(String),
    /// `lr=` not a decimal.
    #[error("learning rate: {0}")]
    BadLearningRate(#[from] fixed::DecimalError),
    /// The learning rate divided by the batch rounds to zero, or is too large for Q15.16.
    #[error("learning rate {lr} over batch {batch} is {reason} in Q15.16 (step size must be in 1..=2^31-1 raw units of 2^-16)")]
    LearningRateOutOfRange {
        /// The text given.
        lr: String,
        /// The batch size it is divided by.
        batch: usize,
        /// "zero" or "too large".
        reason: &'static str,
    },
}

/// The shape of a network; see the module docs for the arithmetic of each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Architecture {
    /// One linear layer followed by softmax.
    Softmax {
        /// Input features.
        inputs: usize,
        /// Output classes.
        classes: usize,
    },
    /// Linear → ReLU → linear → softmax.
    Mlp {
        /// Input features.
        inputs: usize,
        /// Hidden units.
        hidden: usize,
        /// Output classes.
        classes: usize,
    },
}

/// Everything that fixes the circuit: architecture, batch size and step size.
///
/// Text form (parsed by `FromStr`, printed canonically by `Display`):
/// `softmax:4x3` or `mlp:4x8x3`, optionally followed by `,batch=N` and `,lr=DECIMAL`
/// (learning rate for the batch-mean gradient; defaults [`DEFAULT_BATCH`],
/// [`DEFAULT_LEARNING_RATE`]). `Display` always prints both options, with the learning rate
/// that the Q15.16 step size actually represents, so printing and parsing round-trip.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ModelSpec {
    architecture: Architecture,
    batch: usize,
    /// η = floor(lr · 2^16 / batch): the constant that multiplies the summed gradient.
    step_size_q16: u32,
}

impl ModelSpec {
    /// Build a spec from parts; `learning_rate` is decimal text such as `"0.5"`.
    pub fn new(architecture: Architecture, batch: usize, learning_rate: &str) -> Result<Self, SpecError> {
        let dims: &[(&'static str, usize)] = match architecture {
            Architecture::Softmax { inputs, classes } => &[("inputs", inputs), ("classes", classes)],
            Architecture::Mlp { inputs, hidden, classes } => {
                &[("inputs", inputs), ("hidden", hidden), ("classes", classes)]
            }
        };
        for &(what, value) in dims {
            let (min, max) = if what == "classes" { (2, MAX_CLASSES) } else { (1, MAX_WIDTH) };
            if value < min {
                return Err(SpecError::TooSmall { what, value, min });
            }
            if value > max {
                return Err(SpecError::TooLarge { what, value, max });
            }
        }
        if batch == 0 {
            return Err(SpecError::TooSmall { what: "batch", value: 0, min: 1 });
        }
        if batch > MAX_BATCH {
            return Err(SpecError::TooLarge { what: "batch", value: batch, max: MAX_BATCH });
        }
        let (numerator, denominator) = fixed::parse_decimal(learning_rate)?;
        let step = (numerator << FRAC_BITS) / (denominator * batch as u128);
        let out_of_range = |reason| SpecError::LearningRateOutOfRange { lr: learning_rate.to_string(), batch, reason };
        if step == 0 {
            return Err(out_of_range("zero"));
        }
        if step > i32::MAX as u128 {
            return Err(out_of_range("too large"));
        }
        let spec = ModelSpec { architecture, batch, step_size_q16: step as u32 };
        let parameters = spec.num_parameters();
        if parameters > MAX_PARAMETERS {
            return Err(SpecError::TooLarge { what: "parameters", value: parameters, max: MAX_PARAMETERS });
        }
        Ok(spec)
    }

    /// The network shape.
    pub fn architecture(&self) -> Architecture {
        self.architecture
    }

    /// Examples per batch (per SGD step).
    pub fn batch(&self) -> usize {
        self.batch
    }

    /// η in Q15.16: the learning rate divided by the batch size, rounded down.
    pub fn step_size_q16(&self) -> u32 {
        self.step_size_q16
    }

    /// The learning rate (for the batch-mean gradient) that the step size represents, exactly.
    pub fn learning_rate(&self) -> String {
        fixed::format_q16_exact(self.step_size_q16 as u128 * self.batch as u128)
    }

    /// Input features per example.
    pub fn inputs(&self) -> usize {
        match self.architecture {
            Architecture::Softmax { inputs, .. } | Architecture::Mlp { inputs, .. } => inputs,
        }
    }

    /// Output classes.
    pub fn classes(&self) -> usize {
        match self.architecture {
            Architecture::Softmax { classes, .. } | Architecture::Mlp { classes, .. } => classes,
        }
    }

    /// `(outputs, inputs)` of each linear layer, from input to output.
    pub fn layer_shapes(&self) -> Vec<(usize, usize)> {
        match self.architecture {
            Architecture::Softmax { inputs, classes } => vec![(classes, inputs)],
            Architecture::Mlp { inputs, hidden, classes } => vec![(hidden, inputs), (classes, hidden)],
        }
    }

    /// Weights plus biases.
    pub fn num_parameters(&self) -> usize {
        self.layer_shapes().iter().map(|&(o, i)| o * i + o).sum()
    }
}

impl fmt::Display for ModelSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.architecture {
            Architecture::Softmax { inputs, classes } => write!(f, "softmax:{inputs}x{classes}")?,
            Architecture::Mlp { inputs, hidden, classes } => write!(f, "mlp:{inputs}x{hidden}x{classes}")?,
        }
        write!(f, ",batch={},lr={}", self.batch, self.learning_rate())
    }
}

impl FromStr for ModelSpec {
    type Err = SpecError;

    fn from_str(text: &str) -> Result<Self, SpecError> {
        if text.len() > MAX_SPEC_LEN {
            return Err(SpecError::TooLarge { what: "spec length", value: text.len(), max: MAX_SPEC_LEN });
        }
        let mut parts = text.trim().split(',');
        let head = parts.next().unwrap_or_default();
        let (name, dims) = head.split_once(':').ok_or_else(|| SpecError::UnknownArchitecture(head.to_string()))?;
        let numbers: Option<Vec<usize>> = dims.split('x').map(|d| d.trim().parse().ok()).collect();
        let architecture = match (name.trim(), numbers.as_deref()) {
            ("softmax", Some(&[inputs, classes])) => Architecture::Softmax { inputs, classes },
            ("softmax", _) => {
                return Err(SpecError::BadDimensions {
                    architecture: "softmax",
                    text: dims.to_string(),
                    expected: "INPUTSxCLASSES, e.g. 4x3",
                })
            }
            ("mlp", Some(&[inputs, hidden, classes])) => Architecture::Mlp { inputs, hidden, classes },
            ("mlp", _) => {
                return Err(SpecError::BadDimensions {
                    architecture: "mlp",
                    text: dims.to_string(),
                    expected: "INPUTSxHIDDENxCLASSES, e.g. 4x8x3",
                })
            }
            (other, _) => return Err(SpecError::UnknownArchitecture(other.to_string())),
        };
        let mut batch: Option<usize> = None;
        let mut learning_rate: Option<&str> = None;
        for option in parts {
            match option.trim().split_once('=') {
                Some(("batch", value)) => {
                    if batch.is_some() {
                        return Err(SpecError::DuplicateOption("batch"));
                    }
                    let value = value.trim();
                    batch = Some(value.parse().map_err(|_| SpecError::BadBatch(value.to_string()))?);
                }
                Some(("lr", value)) => {
                    if learning_rate.is_some() {
                        return Err(SpecError::DuplicateOption("lr"));
                    }
                    learning_rate = Some(value.trim());
                }
                _ => return Err(SpecError::UnknownOption(option.to_string())),
            }
        }
        ModelSpec::new(architecture, batch.unwrap_or(DEFAULT_BATCH), learning_rate.unwrap_or(DEFAULT_LEARNING_RATE))
    }
}

/// A value of the wrong shape for the spec it is used with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShapeError {
    /// Wrong number of layers, or a layer of the wrong size.
    #[error("weights do not fit {spec}: {detail}")]
    Weights {
        /// The spec, printed.
        spec: String,
        /// What differs.
        detail: String,
    },
    /// Wrong batch size, feature count or label.
    #[error("batch {batch} does not fit {spec}: {detail}")]
    Batch {
        /// Index of the batch in the sequence.
        batch: usize,
        /// The spec, printed.
        spec: String,
        /// What differs.
        detail: String,
    },
}

/// Errors of the reference trainer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TrainError {
    /// Weights or batch do not fit the spec.
    #[error(transparent)]
    Shape(#[from] ShapeError),
    /// A value left Q15.16 during a step.
    #[error("step {step}: {source}")]
    Overflow {
        /// Index of the step (0-based).
        step: usize,
        /// What overflowed.
        source: OutOfRange,
    },
}

/// One linear layer: `weight` is `outputs × inputs`, row-major.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Layer {
    /// Output units.
    pub outputs: usize,
    /// Input units.
    pub inputs: usize,
    /// `weight[o * inputs + i]` is `W[o][i]`, Q15.16.
    pub weight: Vec<i32>,
    /// `bias[o]`, Q15.16.
    pub bias: Vec<i32>,
}

impl Layer {
    fn zeros(outputs: usize, inputs: usize) -> Self {
        Layer { outputs, inputs, weight: vec![0; outputs * inputs], bias: vec![0; outputs] }
    }
}

/// All parameters of a model, layers from input to output.
///
/// The canonical flat order ([`Weights::flatten`]), used by commitments and byte encodings,
/// is: layer 1 weights row-major, layer 1 biases, layer 2 weights, layer 2 biases.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Weights {
    /// The layers, input side first.
    pub layers: Vec<Layer>,
}

impl Weights {
    /// All-zero weights of the spec's shape.
    pub fn zeros(spec: &ModelSpec) -> Self {
        Weights { layers: spec.layer_shapes().into_iter().map(|(o, i)| Layer::zeros(o, i)).collect() }
    }

    /// Seeded initialisation: weights uniform in `[-1/√fan_in, 1/√fan_in]` (integer square
    /// root, small modulo bias), biases zero. Deterministic in `seed`; for tests, benchmarks
    /// and demo jobs (a job's real initial weights come with the job).
    pub fn random(spec: &ModelSpec, seed: u64) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut weights = Weights::zeros(spec);
        for layer in &mut weights.layers {
            let bound = ONE / layer.inputs.isqrt().max(1) as i64;
            for w in &mut layer.weight {
                *w = uniform(&mut rng, bound) as i32;
            }
        }
        weights
    }

    /// Rebuild from the canonical flat order.
    pub fn from_flat(spec: &ModelSpec, values: &[i32]) -> Result<Self, ShapeError> {
        if values.len() != spec.num_parameters() {
            return Err(ShapeError::Weights {
                spec: spec.to_string(),
                detail: format!("{} values, expected {}", values.len(), spec.num_parameters()),
            });
        }
        let mut rest = values;
        let mut weights = Weights::zeros(spec);
        for layer in &mut weights.layers {
            let (w, tail) = rest.split_at(layer.weight.len());
            let (b, tail) = tail.split_at(layer.bias.len());
            layer.weight.copy_from_slice(w);
            layer.bias.copy_from_slice(b);
            rest = tail;
        }
        Ok(weights)
    }

    /// The canonical flat order (see the type docs).
    pub fn flatten(&self) -> Vec<i32> {
        let mut out = Vec::new();
        for layer in &self.layers {
            out.extend_from_slice(&layer.weight);
            out.extend_from_slice(&layer.bias);
        }
        out
    }

    /// Check the shape against a spec.
    pub fn check_shape(&self, spec: &ModelSpec) -> Result<(), ShapeError> {
        let shapes = spec.layer_shapes();
        let mismatch = |detail: String| ShapeError::Weights { spec: spec.to_string(), detail };
        if shapes.len() != self.layers.len() {
            return Err(mismatch(format!("{} layers, expected {}", self.layers.len(), shapes.len())));
        }
        for (index, (layer, &(outputs, inputs))) in self.layers.iter().zip(&shapes).enumerate() {
            if layer.outputs != outputs
                || layer.inputs != inputs
                || layer.weight.len() != outputs * inputs
                || layer.bias.len() != outputs
            {
                return Err(mismatch(format!(
                    "layer {index} is {}x{} with {} weights and {} biases, expected {outputs}x{inputs}",
                    layer.outputs,
                    layer.inputs,
                    layer.weight.len(),
                    layer.bias.len()
                )));
            }
        }
        Ok(())
    }
}

/// One training example: Q15.16 features and a class index.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Example {
    /// `inputs` features, Q15.16.
    pub features: Vec<i32>,
    /// Class index in `0..classes`.
    pub label: u32,
}

/// The examples of one SGD step.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Batch {
    /// Exactly `spec.batch()` examples.
    pub examples: Vec<Example>,
}

impl Batch {
    /// Seeded batch: features uniform in `[-1, 1]`, labels uniform. For tests and benchmarks.
    pub fn random(spec: &ModelSpec, seed: u64) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let examples = (0..spec.batch())
            .map(|_| Example {
                features: (0..spec.inputs()).map(|_| uniform(&mut rng, ONE) as i32).collect(),
                label: (rng.next_u64() % spec.classes() as u64) as u32,
            })
            .collect();
        Batch { examples }
    }

    /// Check the shape against a spec; `index` is the batch's position, for the message.
    pub fn check_shape(&self, spec: &ModelSpec, index: usize) -> Result<(), ShapeError> {
        let mismatch = |detail: String| ShapeError::Batch { batch: index, spec: spec.to_string(), detail };
        if self.examples.len() != spec.batch() {
            return Err(mismatch(format!("{} examples, expected {}", self.examples.len(), spec.batch())));
        }
        for (e, example) in self.examples.iter().enumerate() {
            if example.features.len() != spec.inputs() {
                return Err(mismatch(format!(
                    "example {e} has {} features, expected {}",
                    example.features.len(),
                    spec.inputs()
                )));
            }
            if example.label as usize >= spec.classes() {
                return Err(mismatch(format!(
                    "example {e} has label {}, expected < {}",
                    example.label,
                    spec.classes()
                )));
            }
        }
        Ok(())
    }
}

/// A value in `[-bound, bound]` from a seeded generator.
fn uniform(rng: &mut ChaCha8Rng, bound: i64) -> i64 {
    (rng.next_u64() % (2 * bound as u64 + 1)) as i64 - bound
}

/// What the forward pass of one example leaves for the backward pass.
struct ForwardPass {
    /// `activations[l]` is the input of layer `l` (so `activations[0]` is the features).
    activations: Vec<Vec<i32>>,
    /// Pre-activations of each layer (the last layer's are the logits).
    pre_activations: Vec<Vec<i32>>,
}

fn forward(weights: &Weights, features: &[i32]) -> Result<ForwardPass, OutOfRange> {
    let mut activations = vec![features.to_vec()];
    let mut pre_activations = Vec::with_capacity(weights.layers.len());
    for (l, layer) in weights.layers.iter().enumerate() {
        let input = &activations[l];
        let mut pre = Vec::with_capacity(layer.outputs);
        for o in 0..layer.outputs {
            let row = &layer.weight[o * layer.inputs..(o + 1) * layer.inputs];
            let sum: i128 = row.iter().zip(input).map(|(&w, &a)| w as i128 * a as i128).sum::<i128>()
                + ((layer.bias[o] as i128) << FRAC_BITS);
            let what = if l + 1 == weights.layers.len() { "logit" } else { "hidden pre-activation" };
            pre.push(fixed::truncate_product_sum(sum, what)?);
        }
        if l + 1 < weights.layers.len() {
            activations.push(pre.iter().map(|&v| v.max(0)).collect());
        }
        pre_activations.push(pre);
    }
    Ok(ForwardPass { activations, pre_activations })
}

/// The logits of one example (no softmax): for predictions and accuracy checks.
pub fn logits(spec: &ModelSpec, weights: &Weights, features: &[i32]) -> Result<Vec<i32>, TrainError> {
    weights.check_shape(spec)?;
    if features.len() != spec.inputs() {
        return Err(ShapeError::Batch {
            batch: 0,
            spec: spec.to_string(),
            detail: format!("{} features, expected {}", features.len(), spec.inputs()),
        }
        .into());
    }
    let pass = forward(weights, features).map_err(|source| TrainError::Overflow { step: 0, source })?;
    Ok(pass.pre_activations.last().cloned().unwrap_or_default())
}

/// One SGD step over a batch, exactly as specified in the module docs.
pub fn sgd_step(spec: &ModelSpec, weights: &Weights, batch: &Batch) -> Result<Weights, TrainError> {
    weights.check_shape(spec)?;
    batch.check_shape(spec, 0)?;
    step_unchecked(spec, weights, batch).map_err(|source| TrainError::Overflow { step: 0, source })
}

/// `batches.len()` SGD steps, one per batch, in order.
pub fn train(spec: &ModelSpec, weights: &Weights, batches: &[Batch]) -> Result<Weights, TrainError> {
    weights.check_shape(spec)?;
    for (index, batch) in batches.iter().enumerate() {
        batch.check_shape(spec, index)?;
    }
    let mut current = weights.clone();
    for (step, batch) in batches.iter().enumerate() {
        current = step_unchecked(spec, &current, batch).map_err(|source| TrainError::Overflow { step, source })?;
    }
    Ok(current)
}

/// The step itself; shapes are already checked.
fn step_unchecked(spec: &ModelSpec, weights: &Weights, batch: &Batch) -> Result<Weights, OutOfRange> {
    let layers = &weights.layers;
    // Exact gradient sums at scale 2^32, accumulated over the batch.
    let mut weight_grads: Vec<Vec<i128>> = layers.iter().map(|l| vec![0; l.weight.len()]).collect();
    let mut bias_grads: Vec<Vec<i128>> = layers.iter().map(|l| vec![0; l.bias.len()]).collect();

    for example in &batch.examples {
        let pass = forward(weights, &example.features)?;
        let logits = pass.pre_activations.last().map(Vec::as_slice).unwrap_or_default();
        let probabilities = fixed::softmax(logits);
        let mut delta: Vec<i32> = probabilities
            .iter()
            .enumerate()
            .map(|(c, &p)| if c == example.label as usize { p - ONE as i32 } else { p })
            .collect();

        for l in (0..layers.len()).rev() {
            let layer = &layers[l];
            let input = &pass.activations[l];
            for o in 0..layer.outputs {
                let d = delta[o] as i128;
                for i in 0..layer.inputs {
                    weight_grads[l][o * layer.inputs + i] += d * input[i] as i128;
                }
                bias_grads[l][o] += d << FRAC_BITS;
            }
            if l > 0 {
                let below = &pass.pre_activations[l - 1];
                let mut next = Vec::with_capacity(layer.inputs);
                for (i, &pre) in below.iter().enumerate() {
                    let sum: i128 =
                        (0..layer.outputs).map(|o| layer.weight[o * layer.inputs + i] as i128 * delta[o] as i128).sum();
                    let back = fixed::truncate_product_sum(sum, "back-propagated delta")?;
                    next.push(if pre >= 0 { back } else { 0 });
                }
                delta = next;
            }
        }
    }

    let step = spec.step_size_q16() as i128;
    let update = |value: i32, grad: i128| -> Result<i32, OutOfRange> {
        let change = fixed::floor_shift(step * grad, 2 * FRAC_BITS);
        fixed::checked_value(value as i128 - change, "updated parameter")
    };
    let mut next = weights.clone();
    for (l, layer) in next.layers.iter_mut().enumerate() {
        for (w, &g) in layer.weight.iter_mut().zip(&weight_grads[l]) {
            *w = update(*w, g)?;
        }
        for (b, &g) in layer.bias.iter_mut().zip(&bias_grads[l]) {
            *b = update(*b, g)?;
        }
    }
    Ok(next)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_and_print_canonically() {
        let spec: ModelSpec = "softmax:4x3".parse().unwrap();
        assert_eq!(spec.architecture(), Architecture::Softmax { inputs: 4, classes: 3 });
        assert_eq!(spec.batch(), DEFAULT_BATCH);
        assert_eq!(spec.to_string(), "softmax:4x3,batch=4,lr=0.5");
        assert_eq!(spec.num_parameters(), 15);

        let spec: ModelSpec = "mlp:4x8x3,batch=2,lr=0.1".parse().unwrap();
        assert_eq!(spec.num_parameters(), 4 * 8 + 8 + 8 * 3 + 3);
        // floor(0.1 · 2^16 / 2) = 3276, which is lr 0.0999755859375 exactly.
        assert_eq!(spec.step_size_q16(), 3276);
        assert_eq!(spec.to_string(), "mlp:4x8x3,batch=2,lr=0.0999755859375");
        assert_eq!(spec.to_string().parse::<ModelSpec>().unwrap(), spec);
        assert_eq!(" softmax:2x2, lr=1 ,batch=1".parse::<ModelSpec>().unwrap().to_string(), "softmax:2x2,batch=1,lr=1");
    }

    #[test]
    fn bad_specs_say_what_is_wrong() {
        let err = |text: &str| text.parse::<ModelSpec>().unwrap_err();
        assert!(matches!(err("cnn:4x3"), SpecError::UnknownArchitecture(_)));
        assert!(matches!(err("softmax"), SpecError::UnknownArchitecture(_)));
        assert!(matches!(err("softmax:4x3x2"), SpecError::BadDimensions { .. }));
        assert!(matches!(err("mlp:4x3"), SpecError::BadDimensions { .. }));
        assert!(matches!(err("softmax:4xq"), SpecError::BadDimensions { .. }));
        assert!(matches!(err("softmax:4x1"), SpecError::TooSmall { what: "classes", .. }));
        assert!(matches!(err("softmax:0x3"), SpecError::TooSmall { what: "inputs", .. }));
        assert!(matches!(err("softmax:5000x3"), SpecError::TooLarge { what: "inputs", .. }));
        assert!(matches!(err("mlp:4096x4096x1024"), SpecError::TooLarge { what: "parameters", .. }));
        assert!(matches!(err("softmax:4x3,batch=0"), SpecError::TooSmall { what: "batch", .. }));
        assert!(matches!(err("softmax:4x3,batch=two"), SpecError::BadBatch(_)));
        assert!(matches!(err("softmax:4x3,batch=2,batch=2"), SpecError::DuplicateOption("batch")));
        assert!(matches!(err("softmax:4x3,momentum=0.9"), SpecError::UnknownOption(_)));
        assert!(matches!(err("softmax:4x3,lr=fast"), SpecError::BadLearningRate(_)));
        assert!(matches!(err("softmax:4x3,lr=0"), SpecError::LearningRateOutOfRange { reason: "zero", .. }));
        assert!(matches!(
            err("softmax:4x3,lr=99999999"),
            SpecError::LearningRateOutOfRange { reason: "too large", .. }
        ));
        assert!(matches!(err(&"x".repeat(500)), SpecError::TooLarge { what: "spec length", .. }));
        // The message tells the user the expected form.
        assert!(err("cnn:4x3").to_string().contains("softmax:4x3"));
    }

    #[test]
    fn flat_order_round_trips_and_shapes_are_checked() {
        let spec: ModelSpec = "mlp:3x4x2,batch=2".parse().unwrap();
        let weights = Weights::random(&spec, 7);
        assert_eq!(Weights::from_flat(&spec, &weights.flatten()).unwrap(), weights);
        assert!(Weights::from_flat(&spec, &[0; 3]).is_err());
        let other: ModelSpec = "softmax:3x2".parse().unwrap();
        assert!(weights.check_shape(&other).is_err());
        let mut batch = Batch::random(&spec, 1);
        assert!(batch.check_shape(&spec, 0).is_ok());
        batch.examples[1].label = 2;
        assert!(matches!(sgd_step(&spec, &weights, &batch), Err(TrainError::Shape(_))));
    }

    #[test]
    fn a_step_moves_the_correct_class_logit_up() {
        let spec: ModelSpec = "softmax:2x2,batch=1,lr=1".parse().unwrap();
        let weights = Weights::zeros(&spec);
        let batch = Batch { examples: vec![Example { features: vec![ONE as i32, 0], label: 1 }] };
        let after = sgd_step(&spec, &weights, &batch).unwrap();
        // p = [0.5, 0.5], δ = [0.5, -0.5]; W[c][0] -= δ_c · x_0 = ∓0.5; biases likewise.
        let half = (ONE / 2) as i32;
        assert_eq!(after.layers[0].weight, vec![-half, 0, half, 0]);
        assert_eq!(after.layers[0].bias, vec![-half, half]);
        let z = logits(&spec, &after, &[ONE as i32, 0]).unwrap();
        assert!(z[1] > z[0]);
    }

    #[test]
    fn overflow_is_an_error_naming_the_step_and_quantity() {
        let spec: ModelSpec = "softmax:2x2,batch=1,lr=30000".parse().unwrap();
        let weights = Weights::zeros(&spec);
        let big = i32::MAX;
        let batch = Batch { examples: vec![Example { features: vec![big, big], label: 0 }] };
        match train(&spec, &weights, &[batch.clone(), batch]) {
            Err(TrainError::Overflow { step, source }) => {
                assert_eq!(step, 0);
                assert_eq!(source.what, "updated parameter");
            }
            other => panic!("expected an overflow, got {other:?}"),
        }
    }

    /// Fixed-point SGD must actually learn: a planted linear rule becomes predictable.
    #[test]
    fn training_on_a_planted_rule_raises_accuracy() {
        for spec in ["softmax:6x3,batch=8,lr=0.5", "mlp:6x12x3,batch=8,lr=0.5"] {
            let spec: ModelSpec = spec.parse().unwrap();
            let teacher = Weights::random(&"softmax:6x3".parse().unwrap(), 99);
            let teacher_spec: ModelSpec = "softmax:6x3".parse().unwrap();
            let label = |features: &[i32]| {
                let z = logits(&teacher_spec, &teacher, features).unwrap();
                (0..z.len()).max_by_key(|&c| z[c]).unwrap() as u32
            };
            let make_batch = |seed: u64| {
                let mut batch = Batch::random(&spec, seed);
                for example in &mut batch.examples {
                    example.label = label(&example.features);
                }
                batch
            };
            let test_set: Vec<Example> = (1000..1020).flat_map(|s| make_batch(s).examples).collect();
            let accuracy = |weights: &Weights| {
                test_set
                    .iter()
                    .filter(|e| {
                        let z = logits(&spec, weights, &e.features).unwrap();
                        (0..z.len()).max_by_key(|&c| z[c]).unwrap() as u32 == e.label
                    })
                    .count() as f64
                    / test_set.len() as f64
            };
            let initial = Weights::random(&spec, 3);
            let batches: Vec<Batch> = (0..300).map(make_batch).collect();
            let trained = train(&spec, &initial, &batches).unwrap();
            let (before, after) = (accuracy(&initial), accuracy(&trained));
            assert!(after >= 0.85 && after > before, "{spec}: accuracy {before} -> {after}");
        }
    }
}
