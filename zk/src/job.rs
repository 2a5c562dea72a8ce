//! How a Trellis job feeds a zk model and reads it back: its global model is kept in f32 like
//! every job's, rounded to Q15.16 to start a round ([`to_fixed`]) and read back after one
//! ([`from_fixed`]); its examples are the batch schedule's byte windows ([`examples`]); its θ_0
//! is [`initial_weights`]. Pure functions, the same on every machine: a groth16 job's miners and
//! checkers both call them (`trellis_verifier::groth16`).

use crate::fixed::ONE;
use crate::{Batch, Example, ModelSpec, Weights};

/// θ_0 of a groth16 job.
pub fn initial_weights(model: &ModelSpec, seed: u64) -> Vec<f32> {
    from_fixed(&Weights::random(model, seed).flatten())
}

/// f32 weights rounded to the nearest Q15.16 value; out-of-range values saturate, NaN is 0
/// (Rust's `as` conversion, the same on every machine).
pub fn to_fixed(values: &[f32]) -> Vec<i32> {
    values.iter().map(|v| (f64::from(*v) * ONE as f64).round() as i32).collect()
}

/// Q15.16 values as f32 (exact below 2^8 in magnitude, rounded to nearest above).
pub fn from_fixed(values: &[i32]) -> Vec<f32> {
    values.iter().map(|v| (f64::from(*v) / ONE as f64) as f32).collect()
}

/// Examples from a batch schedule's byte windows: the `I` bytes of a window are the features
/// (byte / 256 in Q15.16, so raw `byte << 8`), and the class of the byte that follows is its
/// label, `next × C / 256` for C classes.
pub fn examples(model: &ModelSpec, inputs: &[i64], targets: &[i64]) -> Batch {
    let width = model.inputs();
    let classes = model.classes() as i64;
    let examples = inputs
        .chunks_exact(width)
        .zip(targets.chunks_exact(width))
        .map(|(window, next)| Example {
            features: window.iter().map(|&b| (b.clamp(0, 255) << 8) as i32).collect(),
            label: (next[width - 1].clamp(0, 255) * classes / 256) as u32,
        })
        .collect();
    Batch { examples }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MODEL: &str = "mlp:8x4x4,batch=2,lr=0.5";

    #[test]
    fn fixed_point_conversion_round_trips_and_saturates() {
        let values = [0, 1, -1, 65_536, -3_000_000, 16_777_215];
        assert_eq!(to_fixed(&from_fixed(&values)), values);
        assert_eq!(to_fixed(&[f32::NAN, 1e12, -1e12]), [0, i32::MAX, i32::MIN]);
    }

    #[test]
    fn examples_are_byte_windows_and_the_next_bytes_class() {
        let model: ModelSpec = MODEL.parse().unwrap();
        let inputs: Vec<i64> = (0..16).map(|i| 60 + i).collect();
        let targets: Vec<i64> = (0..16).map(|i| 61 + i).collect();
        let batch = examples(&model, &inputs, &targets);
        assert_eq!(batch.examples.len(), 2);
        assert_eq!(batch.examples[0].features[0], 60 << 8);
        assert_eq!(batch.examples[1].label, (76 * 4 / 256) as u32);
    }
}
