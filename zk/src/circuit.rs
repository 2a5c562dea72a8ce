//! The R1CS circuit that proves `c` fixed-point SGD steps of the reference trainer.
//!
//! Statement (public inputs, in this order — the order of `public.json` too):
//! 1. `weights_before`: Poseidon commitment to the weights before the first step,
//! 2. `weights_after`: commitment to the weights after the last step,
//! 3. `batches`: commitment to the `c` batches, one per step,
//! 4. `steps`: `c`, which must equal the step count the circuit (and so the key) was built for.
//!
//! Witness: the weights before, the batches, and every intermediate of the steps. The circuit
//! re-derives the weights after from the weights before and the batches with exactly the
//! arithmetic of [`crate::model`] (see its module docs), so a valid proof means: *there are
//! weights and batches with these commitments such that the reference trainer, run for `c`
//! steps, maps the one to the other.*
//!
//! How each rule of the fixed-point format is enforced:
//! - every stored value (weights, features, truncated results) is defined by 32 bits of
//!   `v + 2^31`, which range-checks it and keeps every field equation an integer equation;
//! - a truncation `q = floor(x / 2^k)` is `x = q·2^k + r` with `r` defined by `k` bits;
//! - ReLU uses bit 31 of the pre-activation's range check as its sign (`s = [pre ≥ 0]`,
//!   `relu = s·pre`, derivative `s`);
//! - the softmax maximum `m` is a witness with `m − z_c ≥ 0` (32-bit range checks) and
//!   `Π_c (m − z_c) = 0` (so `m` is one of the logits); the exponential's clamp and first
//!   division by 16 are read off the bits of `m − z_c`; the four squarings are truncations;
//!   the normalisation `p = floor(e·2^16 / S)` is `p·S + r = e·2^16` with `0 ≤ r` and
//!   `0 ≤ S − 1 − r`, both range-checked;
//! - labels are one-hot booleans summing to one.

use ark_bn254::Fr;
use ark_crypto_primitives::sponge::constraints::CryptographicSpongeVar;
use ark_crypto_primitives::sponge::poseidon::constraints::PoseidonSpongeVar;
use ark_ff::{Field, Zero};
use ark_r1cs_std::fields::fp::{AllocatedFp, FpVar};
use ark_r1cs_std::GR1CSVar;
use ark_relations::gr1cs::{
    ConstraintSynthesizer, ConstraintSystem, ConstraintSystemRef, LinearCombination, SynthesisError, SynthesisMode,
    Variable,
};

use crate::commit::{self, Commitment, PACKING_OFFSET, VALUES_PER_ELEMENT};
use crate::error::ZkError;
use crate::fixed::{EXP_CLAMP_BITS, EXP_SQUARINGS, FRAC_BITS, ONE, VALUE_BITS};
use crate::gadgets::{field_of, integer_of, power_of_two, Bits, Builder, Num};
use crate::model::{self, Batch, ModelSpec, Weights};

/// Most steps one proof may cover; the circuit grows linearly with the count.
pub const MAX_STEPS: u32 = 1024;
/// Number of public inputs (see the module docs for their order).
pub const NUM_PUBLIC_INPUTS: usize = 4;

/// The public inputs of a proof: what a verifier must know and check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PublicInputs {
    /// Commitment to the weights before the first step.
    pub weights_before: Commitment,
    /// Commitment to the weights after the last step.
    pub weights_after: Commitment,
    /// Commitment to the batches, one per step.
    pub batches: Commitment,
    /// The number of steps proven.
    pub steps: u32,
}

impl PublicInputs {
    /// The statement of an honest run: commitments computed from the data.
    pub fn of_run(spec: &ModelSpec, before: &Weights, after: &Weights, batches: &[Batch]) -> Self {
        PublicInputs {
            weights_before: commit::commit_weights(before),
            weights_after: commit::commit_weights(after),
            batches: commit::commit_batches(spec, batches),
            steps: batches.len() as u32,
        }
    }

    /// The field elements the Groth16 verifier takes, in circuit order.
    pub fn to_field_elements(&self) -> [Fr; NUM_PUBLIC_INPUTS] {
        [self.weights_before.0, self.weights_after.0, self.batches.0, Fr::from(self.steps as u64)]
    }

    /// Inverse of [`PublicInputs::to_field_elements`]; fails if the step count is not a `u32`.
    pub fn from_field_elements(elements: &[Fr]) -> Result<Self, ZkError> {
        let [before, after, batches, steps] = elements else {
            return Err(ZkError::decode(
                "public inputs",
                format!("{} field elements, expected {NUM_PUBLIC_INPUTS}", elements.len()),
            ));
        };
        let steps = integer_of(*steps)
            .and_then(|s| u32::try_from(s).ok())
            .ok_or_else(|| ZkError::decode("public inputs", "the step count is not a 32-bit unsigned integer"))?;
        Ok(PublicInputs {
            weights_before: Commitment(*before),
            weights_after: Commitment(*after),
            batches: Commitment(*batches),
            steps,
        })
    }
}

/// The circuit for `batches.len()` steps of `spec`, with the statement it must match.
///
/// `claimed` is taken as given, not recomputed, so a circuit built with a false claim is
/// simply unsatisfiable; [`crate::prove`] builds it with the honest claim.
#[derive(Debug, Clone)]
pub struct TrainingCircuit {
    spec: ModelSpec,
    weights_before: Weights,
    batches: Vec<Batch>,
    claimed: PublicInputs,
}

impl TrainingCircuit {
    /// A circuit with a witness; shapes are checked here so synthesis cannot index out of range.
    pub fn new(
        spec: &ModelSpec,
        weights_before: &Weights,
        batches: &[Batch],
        claimed: PublicInputs,
    ) -> Result<Self, ZkError> {
        check_steps(batches.len() as u32)?;
        weights_before.check_shape(spec)?;
        for (index, batch) in batches.iter().enumerate() {
            batch.check_shape(spec, index)?;
        }
        Ok(TrainingCircuit {
            spec: spec.clone(),
            weights_before: weights_before.clone(),
            batches: batches.to_vec(),
            claimed,
        })
    }

    /// The same circuit shape with an all-zero witness, for key generation and counting
    /// (Groth16 setup only needs the constraints, not a meaningful witness).
    pub fn blank(spec: &ModelSpec, steps: u32) -> Result<Self, ZkError> {
        check_steps(steps)?;
        let zero_batch =
            Batch { examples: vec![model::Example { features: vec![0; spec.inputs()], label: 0 }; spec.batch()] };
        let batches = vec![zero_batch; steps as usize];
        let weights = Weights::zeros(spec);
        let claimed = PublicInputs::of_run(spec, &weights, &weights, &batches);
        TrainingCircuit::new(spec, &weights, &batches, claimed)
    }

    /// The model the circuit trains.
    pub fn spec(&self) -> &ModelSpec {
        &self.spec
    }

    /// Steps proven.
    pub fn steps(&self) -> u32 {
        self.batches.len() as u32
    }
}

pub(crate) fn check_steps(steps: u32) -> Result<(), ZkError> {
    if steps == 0 || steps > MAX_STEPS {
        return Err(ZkError::Steps { got: steps, max: MAX_STEPS });
    }
    Ok(())
}

impl ConstraintSynthesizer<Fr> for TrainingCircuit {
    fn generate_constraints(self, cs: ConstraintSystemRef<Fr>) -> Result<(), SynthesisError> {
        self.synthesize(&Builder::new(cs)).map(|_| ())
    }
}

/// What synthesis computed, for checks that read the assignment back.
struct Synthesized {
    weights_after: Vec<Num>,
    commitments: [FpVar<Fr>; 3],
}

/// A linear layer's parameters inside the circuit.
struct LayerVars {
    outputs: usize,
    inputs: usize,
    weight: Vec<Num>,
    bias: Vec<Num>,
}

/// One example inside the circuit.
struct ExampleVars {
    features: Vec<Num>,
    one_hot: Vec<Num>,
}

impl TrainingCircuit {
    fn synthesize(&self, b: &Builder) -> Result<Synthesized, SynthesisError> {
        // Public inputs first, so their indices match the verifier's order.
        let claimed = self.claimed.to_field_elements();
        let mut inputs = Vec::with_capacity(NUM_PUBLIC_INPUTS);
        for value in claimed {
            inputs.push(b.input(value)?);
        }

        // Weights before: each a range-checked Q15.16 value.
        let flat_before = self.weights_before.flatten();
        let mut before = Vec::with_capacity(flat_before.len());
        for &v in &flat_before {
            before.push(b.signed_value(v as i128)?.0);
        }

        // Batches: range-checked features, one-hot labels.
        let classes = self.spec.classes();
        let mut batches = Vec::with_capacity(self.batches.len());
        for batch in &self.batches {
            let mut examples = Vec::with_capacity(batch.examples.len());
            for example in &batch.examples {
                let mut features = Vec::with_capacity(example.features.len());
                for &x in &example.features {
                    features.push(b.signed_value(x as i128)?.0);
                }
                let mut one_hot = Vec::with_capacity(classes);
                for c in 0..classes {
                    let bit = b.bits((c == example.label as usize) as i128, 1)?;
                    one_hot.push(bit.bit(0));
                }
                b.enforce_equal(&Num::sum(&one_hot), &Num::constant(1))?;
                examples.push(ExampleVars { features, one_hot });
            }
            batches.push(examples);
        }

        let before_commitment = self.commit_weights(b, &before)?;
        let batches_commitment = self.commit_batches(b, &batches)?;

        let mut layers = self.unflatten(&before);
        for examples in &batches {
            layers = self.sgd_step(b, &layers, examples)?;
        }
        let after: Vec<Num> = layers.iter().flat_map(|layer| layer.weight.iter().chain(&layer.bias).cloned()).collect();
        let after_commitment = self.commit_weights(b, &after)?;

        // Bind the computed commitments and the step count to the public inputs.
        let commitments = [before_commitment, after_commitment, batches_commitment];
        for (computed, &input) in commitments.iter().zip(&inputs) {
            let difference = lc_of(computed) - (Fr::ONE, input);
            b.enforce_product(&difference, &LinearCombination::from(Variable::One), &LinearCombination::zero())?;
        }
        let steps = Num::variable(inputs[3], self.claimed.steps as i128);
        b.enforce_equal(&steps, &Num::constant(self.batches.len() as i128))?;

        Ok(Synthesized { weights_after: after, commitments })
    }

    fn unflatten(&self, flat: &[Num]) -> Vec<LayerVars> {
        let mut rest = flat;
        self.spec
            .layer_shapes()
            .into_iter()
            .map(|(outputs, inputs)| {
                let (weight, tail) = rest.split_at(outputs * inputs);
                let (bias, tail) = tail.split_at(outputs);
                rest = tail;
                LayerVars { outputs, inputs, weight: weight.to_vec(), bias: bias.to_vec() }
            })
            .collect()
    }

    /// One SGD step (module docs of [`crate::model`]); returns the updated layers.
    fn sgd_step(
        &self,
        b: &Builder,
        layers: &[LayerVars],
        examples: &[ExampleVars],
    ) -> Result<Vec<LayerVars>, SynthesisError> {
        let depth = layers.len();
        // Per parameter, the per-example gradient terms (scale 2^32), summed at the end.
        let mut weight_terms: Vec<Vec<Vec<Num>>> =
            layers.iter().map(|l| vec![Vec::with_capacity(examples.len()); l.weight.len()]).collect();
        let mut bias_terms: Vec<Vec<Vec<Num>>> =
            layers.iter().map(|l| vec![Vec::with_capacity(examples.len()); l.bias.len()]).collect();

        for example in examples {
            // Forward.
            let mut activations: Vec<Vec<Num>> = vec![example.features.clone()];
            let mut signs: Vec<Vec<Num>> = Vec::with_capacity(depth);
            let mut logits = Vec::new();
            for (l, layer) in layers.iter().enumerate() {
                let input = &activations[l];
                let mut pre = Vec::with_capacity(layer.outputs);
                let mut layer_signs = Vec::with_capacity(layer.outputs);
                for o in 0..layer.outputs {
                    let mut terms = Vec::with_capacity(layer.inputs + 1);
                    let row = &layer.weight[o * layer.inputs..(o + 1) * layer.inputs];
                    for (weight, activation) in row.iter().zip(input) {
                        terms.push(b.mul(weight, activation)?);
                    }
                    terms.push(layer.bias[o].shl(FRAC_BITS));
                    let (value, bits) = b.floor_shift_signed(&Num::sum(&terms), FRAC_BITS)?;
                    layer_signs.push(non_negative(&bits));
                    pre.push(value);
                }
                if l + 1 < depth {
                    let mut next = Vec::with_capacity(layer.outputs);
                    for (value, sign) in pre.iter().zip(&layer_signs) {
                        next.push(b.mul(sign, value)?);
                    }
                    activations.push(next);
                } else {
                    logits = pre;
                }
                signs.push(layer_signs);
            }

            // Output delta: softmax − one-hot.
            let probabilities = self.softmax(b, &logits)?;
            let mut delta: Vec<Num> =
                probabilities.iter().zip(&example.one_hot).map(|(p, y)| p.sub(&y.shl(FRAC_BITS))).collect();

            // Backward.
            for l in (0..depth).rev() {
                let layer = &layers[l];
                let input = &activations[l];
                for (o, d) in delta.iter().enumerate() {
                    for (i, activation) in input.iter().enumerate() {
                        weight_terms[l][o * layer.inputs + i].push(b.mul(d, activation)?);
                    }
                    bias_terms[l][o].push(d.shl(FRAC_BITS));
                }
                if l > 0 {
                    let mut next = Vec::with_capacity(layer.inputs);
                    for (i, sign) in signs[l - 1].iter().enumerate() {
                        let mut terms = Vec::with_capacity(layer.outputs);
                        for (o, d) in delta.iter().enumerate() {
                            terms.push(b.mul(&layer.weight[o * layer.inputs + i], d)?);
                        }
                        let (back, _) = b.floor_shift_signed(&Num::sum(&terms), FRAC_BITS)?;
                        next.push(b.mul(sign, &back)?);
                    }
                    delta = next;
                }
            }
        }

        // Update: W' = W − floor(η·G / 2^32), with W' a range-checked stored value.
        let eta = self.spec.step_size_q16() as i128;
        let update = |old: &Num, terms: &[Num]| -> Result<Num, SynthesisError> {
            let scaled = Num::sum(terms).scale(eta);
            let new_value = old.value - (scaled.value >> (2 * FRAC_BITS));
            let (new, _) = b.signed_value(new_value)?;
            let change = old.sub(&new);
            let (remainder, _) = b.unsigned(scaled.value - (change.value << (2 * FRAC_BITS)), 2 * FRAC_BITS)?;
            b.enforce_equal(&scaled, &change.shl(2 * FRAC_BITS).add(&remainder))?;
            Ok(new)
        };
        let mut next = Vec::with_capacity(depth);
        for (l, layer) in layers.iter().enumerate() {
            let mut weight = Vec::with_capacity(layer.weight.len());
            for (old, terms) in layer.weight.iter().zip(&weight_terms[l]) {
                weight.push(update(old, terms)?);
            }
            let mut bias = Vec::with_capacity(layer.bias.len());
            for (old, terms) in layer.bias.iter().zip(&bias_terms[l]) {
                bias.push(update(old, terms)?);
            }
            next.push(LayerVars { outputs: layer.outputs, inputs: layer.inputs, weight, bias });
        }
        Ok(next)
    }

    /// [`crate::fixed::softmax`] in constraints; returns the probabilities `p_c ∈ [0, 2^16]`.
    fn softmax(&self, b: &Builder, logits: &[Num]) -> Result<Vec<Num>, SynthesisError> {
        let max_value = logits.iter().map(|z| z.value).max().unwrap_or(0);
        let max = b.witness(max_value)?;

        // Gaps m − z_c ≥ 0, and one of them is zero.
        let mut gaps = Vec::with_capacity(logits.len());
        for z in logits {
            let gap = max.sub(z);
            let bits = b.range_check_unsigned(&gap, VALUE_BITS)?;
            gaps.push((gap, bits));
        }
        // The running product can exceed any integer type (up to 2^(32·classes)), and only
        // its residue matters: p is prime and every gap is below 2^32 < p, so the product is
        // 0 mod p exactly when some gap is 0. Its witness is therefore computed in the field.
        let mut product = gaps[0].0.lc.clone();
        let mut product_value = field_of(gaps[0].0.value);
        for (gap, _) in &gaps[1..gaps.len() - 1] {
            product_value *= field_of(gap.value);
            let next = LinearCombination::from(b.witness_field(product_value)?);
            b.enforce_product(&product, &gap.lc, &next)?;
            product = next;
        }
        let last = &gaps[gaps.len() - 1].0;
        b.enforce_product(&product, &last.lc, &LinearCombination::zero())?;

        // e_c = (1 − min(gap, 16)/16)^16 with truncations, read off the gap's bits.
        let mut exps = Vec::with_capacity(logits.len());
        for (_, bits) in &gaps {
            let within_clamp = b.is_zero(&bits.weighted_sum(EXP_CLAMP_BITS as usize..VALUE_BITS as usize))?;
            let low = bits.weighted_sum(0..EXP_SQUARINGS as usize);
            let low_is_nonzero = Num::constant(1).sub(&b.is_zero(&low)?);
            let middle = bits.weighted_sum(EXP_SQUARINGS as usize..EXP_CLAMP_BITS as usize);
            // floor((2^20 − gap) / 16) = 2^16 − middle − [low ≠ 0] when gap < 2^20, else 0.
            let base = Num::constant(ONE as i128).sub(&middle).sub(&low_is_nonzero);
            let mut e = b.mul(&within_clamp, &base)?;
            for _ in 0..EXP_SQUARINGS {
                let square = b.mul(&e, &e)?;
                e = b.floor_shift_unsigned(&square, FRAC_BITS, FRAC_BITS + 1)?;
            }
            exps.push(e);
        }

        // p_c = floor(e_c · 2^16 / S): p·S + r = e·2^16, 0 ≤ r ≤ S − 1.
        let sum = Num::sum(&exps);
        let remainder_bits = FRAC_BITS + usize::BITS - logits.len().leading_zeros();
        let mut probabilities = Vec::with_capacity(logits.len());
        for e in &exps {
            let numerator = e.shl(FRAC_BITS);
            // The shadow sum is at least ONE for an honest witness; guard a forged one.
            let divisor = sum.value.max(1);
            let p_value = numerator.value / divisor;
            let (p, _) = b.unsigned(p_value, FRAC_BITS + 1)?;
            let (remainder, _) = b.unsigned(numerator.value - p_value * divisor, remainder_bits)?;
            b.enforce_product(&p.lc, &sum.lc, &numerator.sub(&remainder).lc)?;
            let slack = sum.sub(&Num::constant(1)).sub(&remainder);
            b.range_check_unsigned(&slack, remainder_bits)?;
            probabilities.push(p);
        }
        Ok(probabilities)
    }

    fn commit_weights(&self, b: &Builder, values: &[Num]) -> Result<FpVar<Fr>, SynthesisError> {
        let header = [commit::domain_tag(commit::WEIGHTS_DOMAIN), Fr::from(values.len() as u64)];
        poseidon_commit(b, &header, values)
    }

    fn commit_batches(&self, b: &Builder, batches: &[Vec<ExampleVars>]) -> Result<FpVar<Fr>, SynthesisError> {
        let header = [
            commit::domain_tag(commit::BATCHES_DOMAIN),
            Fr::from(batches.len() as u64),
            Fr::from(self.spec.batch() as u64),
            Fr::from(self.spec.inputs() as u64),
        ];
        let mut values = Vec::new();
        for examples in batches {
            for example in examples {
                values.extend(example.features.iter().cloned());
                let label_terms: Vec<Num> =
                    example.one_hot.iter().enumerate().map(|(c, y)| y.scale(c as i128)).collect();
                values.push(Num::sum(&label_terms));
            }
        }
        poseidon_commit(b, &header, &values)
    }
}

/// `[pre ≥ 0]`: bit 31 of the bits of `pre + 2^31`.
fn non_negative(bits: &Bits) -> Num {
    bits.bit(VALUE_BITS as usize - 1)
}

/// The linear combination an `FpVar` stands for.
fn lc_of(var: &FpVar<Fr>) -> LinearCombination<Fr> {
    match var {
        FpVar::Constant(c) => LinearCombination::from((*c, Variable::One)),
        FpVar::Var(allocated) => LinearCombination::from(allocated.variable),
    }
}

/// The in-circuit twin of [`commit::commit_weights`] / [`commit::commit_batches`]: pack the
/// (already range-checked) values seven to a field element and hash with Poseidon.
fn poseidon_commit(b: &Builder, header: &[Fr], values: &[Num]) -> Result<FpVar<Fr>, SynthesisError> {
    let mut elements: Vec<FpVar<Fr>> = header.iter().map(|&h| FpVar::Constant(h)).collect();
    for chunk in values.chunks(VALUES_PER_ELEMENT) {
        let mut terms = Vec::with_capacity(chunk.len());
        let mut packed_value = Fr::zero();
        for (k, v) in chunk.iter().enumerate() {
            let offset_value = v.add(&Num::constant(PACKING_OFFSET as i128));
            let weight = power_of_two(32 * k as u32);
            packed_value += field_of(offset_value.value) * weight;
            terms.push(Num { lc: offset_value.lc * weight, value: 0 });
        }
        let packed = Num::sum(&terms);
        let variable = b.cs.new_lc(|| packed.lc)?;
        elements.push(FpVar::Var(AllocatedFp::new(Some(packed_value), variable, b.cs.clone())));
    }
    let mut sponge = PoseidonSpongeVar::new(b.cs.clone(), commit::poseidon_config());
    sponge.absorb(&elements)?;
    let mut out = sponge.squeeze_field_elements(1)?;
    Ok(out.remove(0))
}

/// Circuit size for a model and step count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CircuitSize {
    /// R1CS constraints.
    pub constraints: usize,
    /// Private witness variables.
    pub witness_variables: usize,
    /// Public input variables, including the constant one.
    pub instance_variables: usize,
}

/// Count the constraints of the circuit for `steps` steps of `spec` (no witness computed).
pub fn circuit_size(spec: &ModelSpec, steps: u32) -> Result<CircuitSize, ZkError> {
    let cs = ConstraintSystem::<Fr>::new_ref();
    cs.set_mode(SynthesisMode::Setup);
    TrainingCircuit::blank(spec, steps)?.generate_constraints(cs.clone())?;
    Ok(CircuitSize {
        constraints: cs.num_constraints(),
        witness_variables: cs.num_witness_variables(),
        instance_variables: cs.num_instance_variables(),
    })
}

/// The result of running the circuit on a witness without proving.
#[derive(Debug, Clone)]
pub struct WitnessCheck {
    /// Whether every constraint holds.
    pub satisfied: bool,
    /// The first failing constraint, if any (as arkworks names it).
    pub first_unsatisfied: Option<String>,
    /// Circuit size.
    pub size: CircuitSize,
    /// The weights after the steps, read back from the circuit's assignment.
    pub weights_after: Weights,
    /// The commitments the circuit computed (before, after, batches), read back likewise.
    pub computed: [Commitment; 3],
}

/// Synthesize the circuit on a witness and report whether it is satisfied, with the weights
/// and commitments the circuit itself computed. This is the agreement check between the
/// circuit and the reference trainer, and a debugging aid for a prover.
pub fn check_witness(
    spec: &ModelSpec,
    weights_before: &Weights,
    batches: &[Batch],
    claimed: PublicInputs,
) -> Result<WitnessCheck, ZkError> {
    let circuit = TrainingCircuit::new(spec, weights_before, batches, claimed)?;
    let builder = Builder::new(ConstraintSystem::<Fr>::new_ref());
    let out = circuit.synthesize(&builder)?;
    let cs = &builder.cs;
    let unreadable = || ZkError::decode("circuit assignment", "a value the circuit computed is not a small integer");
    let mut flat_after = Vec::with_capacity(out.weights_after.len());
    for num in &out.weights_after {
        let value = builder.assigned(num).and_then(integer_of).ok_or_else(unreadable)?;
        flat_after.push(i32::try_from(value).map_err(|_| unreadable())?);
    }
    let mut computed = [Commitment(Fr::zero()); 3];
    for (slot, var) in computed.iter_mut().zip(&out.commitments) {
        *slot = Commitment(var.value()?);
    }
    let first_unsatisfied = cs.which_is_unsatisfied()?;
    Ok(WitnessCheck {
        satisfied: first_unsatisfied.is_none(),
        first_unsatisfied,
        size: CircuitSize {
            constraints: cs.num_constraints(),
            witness_variables: cs.num_witness_variables(),
            instance_variables: cs.num_instance_variables(),
        },
        weights_after: Weights::from_flat(spec, &flat_after)?,
        computed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{train, Example};
    use rand_chacha::ChaCha8Rng;
    use rand_core::{RngCore, SeedableRng};

    fn honest(spec: &ModelSpec, weights: &Weights, batches: &[Batch]) -> (Weights, PublicInputs) {
        let after = train(spec, weights, batches).unwrap();
        let public = PublicInputs::of_run(spec, weights, &after, batches);
        (after, public)
    }

    /// The heart of the agreement requirement: on seeded random models and data, the circuit
    /// is satisfied and its own after-weights and commitments equal the reference trainer's.
    #[test]
    fn circuit_and_reference_trainer_agree_on_random_runs() {
        let specs = [
            "softmax:4x3,batch=2,lr=0.5",
            "mlp:4x5x3,batch=2,lr=0.5",
            "softmax:3x2,batch=3,lr=2",
            "mlp:5x6x10,batch=2,lr=0.5",
        ];
        for (case, spec) in specs.iter().enumerate() {
            let spec: ModelSpec = spec.parse().unwrap();
            for seed in 0..3u64 {
                let mut weights = Weights::random(&spec, 100 * case as u64 + seed);
                // Exercise negative pre-activations, big logits and the exp clamp.
                if seed == 2 {
                    for v in &mut weights.layers[0].weight {
                        *v = v.saturating_mul(40);
                    }
                }
                let steps = 1 + (seed % 2) as usize;
                let batches: Vec<Batch> = (0..steps).map(|s| Batch::random(&spec, 7 * seed + s as u64)).collect();
                let (after, public) = honest(&spec, &weights, &batches);
                let check = check_witness(&spec, &weights, &batches, public).unwrap();
                assert!(check.satisfied, "{spec} seed {seed}: {:?}", check.first_unsatisfied);
                assert_eq!(check.weights_after, after, "{spec} seed {seed}");
                assert_eq!(check.computed, [public.weights_before, public.weights_after, public.batches]);
            }
        }
    }

    #[test]
    fn each_step_agrees_not_only_the_end() {
        let spec: ModelSpec = "mlp:3x4x2,batch=2,lr=1".parse().unwrap();
        let mut weights = Weights::random(&spec, 5);
        for step in 0..4u64 {
            let batch = vec![Batch::random(&spec, 50 + step)];
            let (after, public) = honest(&spec, &weights, &batch);
            let check = check_witness(&spec, &weights, &batch, public).unwrap();
            assert!(check.satisfied && check.weights_after == after, "step {step}");
            weights = after;
        }
    }

    /// Ten classes with logits far apart: the softmax gap product is far beyond any integer
    /// type (it is computed in the field), and most exponentials are clamped to zero.
    #[test]
    fn many_classes_with_large_gaps_agree() {
        let spec: ModelSpec = "softmax:3x10,batch=2,lr=0.25".parse().unwrap();
        for seed in 0..2 {
            let mut weights = Weights::random(&spec, seed);
            for v in &mut weights.layers[0].weight {
                *v = v.saturating_mul(2000);
            }
            let batches = vec![Batch::random(&spec, seed + 10)];
            let (after, public) = honest(&spec, &weights, &batches);
            let check = check_witness(&spec, &weights, &batches, public).unwrap();
            assert!(check.satisfied, "seed {seed}: {:?}", check.first_unsatisfied);
            assert_eq!(check.weights_after, after);
        }
    }

    #[test]
    fn softmax_corner_cases_agree() {
        // Ties, a gap exactly at the clamp, and gaps just inside and beyond it.
        let spec: ModelSpec = "softmax:1x4,batch=1,lr=1".parse().unwrap();
        let clamp = 1i32 << EXP_CLAMP_BITS;
        for logits in
            [[0, 0, 0, 0], [clamp, 0, 1, clamp - 1], [7, 7, -clamp - 1, 6], [i32::MAX / 2, i32::MIN / 2, 0, 1]]
        {
            // W = 0 and b = z make the logits exactly z.
            let mut values = vec![0; 4];
            values.extend_from_slice(&logits);
            let weights = Weights::from_flat(&spec, &values).unwrap();
            let batch = vec![Batch { examples: vec![Example { features: vec![ONE as i32], label: 2 }] }];
            let (after, public) = honest(&spec, &weights, &batch);
            let check = check_witness(&spec, &weights, &batch, public).unwrap();
            assert!(check.satisfied, "{logits:?}: {:?}", check.first_unsatisfied);
            assert_eq!(check.weights_after, after, "{logits:?}");
        }
    }

    #[test]
    fn a_false_claim_is_unsatisfiable() {
        let spec: ModelSpec = "softmax:4x3,batch=2".parse().unwrap();
        let weights = Weights::random(&spec, 1);
        let batches = vec![Batch::random(&spec, 2)];
        let (after, public) = honest(&spec, &weights, &batches);

        // Claim weights that differ from the true result by one unit in the last place.
        let mut nearly = after.clone();
        nearly.layers[0].weight[3] += 1;
        let forged = PublicInputs { weights_after: commit::commit_weights(&nearly), ..public };
        assert!(!check_witness(&spec, &weights, &batches, forged).unwrap().satisfied);

        // Claim a different step count or other data.
        let forged = PublicInputs { steps: 2, ..public };
        assert!(!check_witness(&spec, &weights, &batches, forged).unwrap().satisfied);
        let other = vec![Batch::random(&spec, 3)];
        let forged = PublicInputs { batches: commit::commit_batches(&spec, &other), ..public };
        assert!(!check_witness(&spec, &weights, &batches, forged).unwrap().satisfied);
    }

    /// Any single witness value changed makes the system unsatisfied: every variable the
    /// circuit allocates is pinned by some constraint.
    #[test]
    fn a_tampered_witness_is_unsatisfiable() {
        let spec: ModelSpec = "mlp:3x3x2,batch=2".parse().unwrap();
        let weights = Weights::random(&spec, 9);
        let batches = vec![Batch::random(&spec, 10)];
        let (_, public) = honest(&spec, &weights, &batches);
        let circuit = TrainingCircuit::new(&spec, &weights, &batches, public).unwrap();
        let cs = ConstraintSystem::<Fr>::new_ref();
        // Without cached linear-combination values, so the check re-evaluates every
        // constraint from the (tampered) witness.
        cs.set_mode(SynthesisMode::Prove { construct_matrices: true, generate_lc_assignments: false });
        circuit.clone().generate_constraints(cs.clone()).unwrap();
        cs.finalize();
        assert!(cs.is_satisfied().unwrap());
        let witnesses = cs.num_witness_variables();
        let mut rng = ChaCha8Rng::seed_from_u64(4);
        for _ in 0..200 {
            let index = (rng.next_u64() % witnesses as u64) as usize;
            let mut inner = cs.borrow_mut().unwrap();
            let original = inner.assignments.witness_assignment[index];
            inner.assignments.witness_assignment[index] = original + Fr::ONE;
            drop(inner);
            assert!(!cs.is_satisfied().unwrap(), "witness {index} of {witnesses} is unconstrained");
            cs.borrow_mut().unwrap().assignments.witness_assignment[index] = original;
        }
        assert!(cs.is_satisfied().unwrap());
    }

    #[test]
    fn a_result_of_slightly_different_arithmetic_is_rejected() {
        // A trainer whose step size is one unit in the last place larger produces weights
        // that differ only in low bits; the circuit for the true step size rejects them.
        let spec: ModelSpec = "softmax:4x3,batch=2,lr=0.5".parse().unwrap();
        let other: ModelSpec = "softmax:4x3,batch=2,lr=0.500030517578125".parse().unwrap();
        assert_eq!(other.step_size_q16(), spec.step_size_q16() + 1);
        let weights = Weights::random(&spec, 11);
        let batches = vec![Batch::random(&spec, 12)];
        let wrong_after = train(&other, &weights, &batches).unwrap();
        assert_ne!(wrong_after, train(&spec, &weights, &batches).unwrap());
        let claim = PublicInputs::of_run(&spec, &weights, &wrong_after, &batches);
        assert!(!check_witness(&spec, &weights, &batches, claim).unwrap().satisfied);
    }

    #[test]
    fn sizes_grow_with_steps_and_model() {
        let spec: ModelSpec = "softmax:4x3,batch=2".parse().unwrap();
        let one = circuit_size(&spec, 1).unwrap();
        let two = circuit_size(&spec, 2).unwrap();
        assert!(two.constraints > one.constraints);
        assert_eq!(one.instance_variables, NUM_PUBLIC_INPUTS + 1);
        let bigger: ModelSpec = "mlp:4x8x3,batch=2".parse().unwrap();
        assert!(circuit_size(&bigger, 1).unwrap().constraints > one.constraints);
        assert!(matches!(circuit_size(&spec, 0), Err(ZkError::Steps { .. })));
    }
}
