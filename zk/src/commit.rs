//! Poseidon commitments to weights and batch data: the public inputs of a proof.
//!
//! A commitment is one BN254 scalar-field element, the output of the Poseidon sponge of
//! arkworks (`ark-crypto-primitives` 0.6) with these parameters, fixed for this proof-system
//! version (changing any of them changes every commitment; the golden vector test catches it):
//!
//! | parameter | value |
//! | --- | --- |
//! | field | BN254 scalar field `Fr` (254 bits) |
//! | state width | 3 = rate 2 + capacity 1 |
//! | S-box | x^5 |
//! | rounds | 8 full + 57 partial (the Poseidon paper's choice for t = 3 on a 254-bit field at 128-bit security) |
//! | round constants, MDS | Grain LFSR as in the Poseidon reference, via `find_poseidon_ark_and_mds(254, 2, 8, 57, 0)` |
//!
//! Input encoding: every Q15.16 value `v` is offset to `v + 2^31 ∈ [0, 2^32)` and seven of
//! them are packed little-endian into one field element (`Σ_k (v_k + 2^31)·2^(32k)`, 224
//! bits), which is injective because the circuit range-checks every value. The sponge absorbs
//! a domain tag (ASCII text read as a little-endian integer), the shape, then the packed
//! elements, and squeezes one element.
//!
//! - weights: `[tag "trellis-zk/weights/v1", parameter count, packed canonical flat order]`
//! - batches: `[tag "trellis-zk/batches/v1", steps, batch, inputs, packed values]`, where the
//!   values are, batch by batch and example by example, the features then the label.
//!
//! Commitments are binding, not hiding: anyone who has the weights recomputes the value,
//! which is exactly what a checker linking a proof to a trail checkpoint needs.

use std::fmt;
use std::sync::OnceLock;

use ark_bn254::Fr;
use ark_crypto_primitives::sponge::poseidon::{find_poseidon_ark_and_mds, PoseidonConfig, PoseidonSponge};
use ark_crypto_primitives::sponge::{CryptographicSponge, FieldBasedCryptographicSponge};
use ark_ff::PrimeField;

use crate::model::{Batch, ModelSpec, Weights};

/// Field elements absorbed per permutation.
pub const POSEIDON_RATE: usize = 2;
/// Field elements of state never absorbed into.
pub const POSEIDON_CAPACITY: usize = 1;
/// S-box exponent.
pub const POSEIDON_ALPHA: u64 = 5;
/// Full rounds (half before, half after the partial rounds).
pub const POSEIDON_FULL_ROUNDS: usize = 8;
/// Partial rounds.
pub const POSEIDON_PARTIAL_ROUNDS: usize = 57;
/// Q15.16 values packed into one field element (7 × 32 = 224 bits < 253).
pub const VALUES_PER_ELEMENT: usize = 7;
/// Offset that maps an `i32` to `[0, 2^32)` before packing.
pub const PACKING_OFFSET: i64 = 1 << 31;
/// Domain tag of weight commitments.
pub const WEIGHTS_DOMAIN: &str = "trellis-zk/weights/v1";
/// Domain tag of batch-data commitments.
pub const BATCHES_DOMAIN: &str = "trellis-zk/batches/v1";

/// The Poseidon parameters above, computed once.
pub fn poseidon_config() -> &'static PoseidonConfig<Fr> {
    static CONFIG: OnceLock<PoseidonConfig<Fr>> = OnceLock::new();
    CONFIG.get_or_init(|| {
        let (ark, mds) = find_poseidon_ark_and_mds::<Fr>(
            Fr::MODULUS_BIT_SIZE as u64,
            POSEIDON_RATE,
            POSEIDON_FULL_ROUNDS as u64,
            POSEIDON_PARTIAL_ROUNDS as u64,
            0,
        );
        PoseidonConfig::new(
            POSEIDON_FULL_ROUNDS,
            POSEIDON_PARTIAL_ROUNDS,
            POSEIDON_ALPHA,
            mds,
            ark,
            POSEIDON_RATE,
            POSEIDON_CAPACITY,
        )
    })
}

/// A domain tag as a field element: the ASCII bytes read little-endian (shorter than 31
/// bytes, so no reduction happens).
pub fn domain_tag(tag: &str) -> Fr {
    debug_assert!(tag.len() < 31, "a domain tag must fit a field element unreduced");
    Fr::from_le_bytes_mod_order(tag.as_bytes())
}

/// A Poseidon commitment (one field element). `Display` prints it in decimal, as snarkjs does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Commitment(pub Fr);

impl fmt::Display for Commitment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0.into_bigint())
    }
}

/// Pack Q15.16 values, [`VALUES_PER_ELEMENT`] per field element, little-endian.
pub fn pack_values(values: &[i32]) -> Vec<Fr> {
    values
        .chunks(VALUES_PER_ELEMENT)
        .map(|chunk| {
            let mut bytes = Vec::with_capacity(4 * VALUES_PER_ELEMENT);
            for &v in chunk {
                let offset = (v as i64 + PACKING_OFFSET) as u32;
                bytes.extend_from_slice(&offset.to_le_bytes());
            }
            Fr::from_le_bytes_mod_order(&bytes)
        })
        .collect()
}

fn squeeze_one(elements: &[Fr]) -> Commitment {
    let mut sponge = PoseidonSponge::new(poseidon_config());
    sponge.absorb(&elements.to_vec());
    Commitment(sponge.squeeze_native_field_elements(1)[0])
}

/// The values a batch commitment packs, in order (features then label, per example).
pub fn batch_values(batches: &[Batch]) -> Vec<i32> {
    let mut values = Vec::new();
    for batch in batches {
        for example in &batch.examples {
            values.extend_from_slice(&example.features);
            // Labels are below MAX_CLASSES, so they fit an i32.
            values.push(example.label as i32);
        }
    }
    values
}

/// Commitment to a model's weights (shape taken from the weights themselves).
pub fn commit_weights(weights: &Weights) -> Commitment {
    let flat = weights.flatten();
    let mut elements = vec![domain_tag(WEIGHTS_DOMAIN), Fr::from(flat.len() as u64)];
    elements.extend(pack_values(&flat));
    squeeze_one(&elements)
}

/// Commitment to the batches of consecutive steps, one batch per step.
pub fn commit_batches(spec: &ModelSpec, batches: &[Batch]) -> Commitment {
    let mut elements = vec![
        domain_tag(BATCHES_DOMAIN),
        Fr::from(batches.len() as u64),
        Fr::from(spec.batch() as u64),
        Fr::from(spec.inputs() as u64),
    ];
    elements.extend(pack_values(&batch_values(batches)));
    squeeze_one(&elements)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ark_ff::Field;

    #[test]
    fn packing_is_offset_little_endian() {
        let packed = pack_values(&[i32::MIN, 0, -1, 5, 0, 0, 0, 7]);
        assert_eq!(packed.len(), 2);
        let expected = Fr::from(0u64)
            + Fr::from(1u64 << 31) * Fr::from(1u64 << 32)
            + Fr::from((1u64 << 31) - 1) * Fr::from(1u64 << 32).square()
            + Fr::from((1u64 << 31) + 5) * Fr::from(1u64 << 32).square() * Fr::from(1u64 << 32)
            + (4..7).map(|k| Fr::from(1u64 << 31) * Fr::from(1u64 << 32).pow([k as u64])).sum::<Fr>();
        assert_eq!(packed[0], expected);
        assert_eq!(packed[1], Fr::from((1u64 << 31) + 7));
    }

    /// Golden vector: any change to the Poseidon parameters or the encoding changes this.
    #[test]
    fn weight_commitment_golden_vector() {
        let spec: ModelSpec = "softmax:2x2,batch=1".parse().unwrap();
        let weights = Weights::from_flat(&spec, &[1, -1, 65536, -65536, 0, 7]).unwrap();
        let commitment = commit_weights(&weights);
        assert_eq!(commitment.to_string(), GOLDEN_WEIGHTS_COMMITMENT);
    }

    const GOLDEN_WEIGHTS_COMMITMENT: &str =
        "5621335287763715889733872688858017245979555709134973536705226123801800347580";

    #[test]
    fn commitments_separate_weights_from_data_and_steps() {
        let spec: ModelSpec = "softmax:2x2,batch=1".parse().unwrap();
        let weights = Weights::zeros(&spec);
        let batch = Batch::random(&spec, 1);
        assert_ne!(commit_weights(&weights), commit_batches(&spec, std::slice::from_ref(&batch)));
        assert_ne!(
            commit_batches(&spec, std::slice::from_ref(&batch)),
            commit_batches(&spec, &[batch.clone(), batch.clone()])
        );
        let mut other = batch.clone();
        other.examples[0].label ^= 1;
        assert_ne!(commit_batches(&spec, &[batch]), commit_batches(&spec, &[other]));
    }
}
