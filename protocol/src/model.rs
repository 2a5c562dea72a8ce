//! How a flat f32 vector — a global model, a Δ, an int8 residual's carried values, an outer
//! momentum buffer — is laid out as bytes in a blob: little-endian f32 in parameter order and
//! nothing else (no header, no length). Hashes of these blobs are on chain, so the layout is
//! part of the protocol: every bit of every value (NaN payloads, −0.0) survives a round trip.
//! And how many parameters a job's model has, which the chain's rules scale with.

use trellis_proto::ModelConfig;

/// The most parameters a job's model may have: the most values a Δ's encoding carries (2³⁰, 4 GiB
/// of f32), so every accepted Δ can be decoded by the aggregators.
pub const MAX_PARAMETERS: u64 = 1 << 30;

/// Number of parameters of a GPT shape: `V·C + T·C + L·(12C² + 13C) + 2C` (saturating: any
/// shape the chain admits is far below `u64::MAX`).
pub fn parameter_count(config: &ModelConfig) -> u64 {
    let (v, t, c, l) = (
        u64::from(config.vocab_size),
        u64::from(config.context_length),
        u64::from(config.width),
        u64::from(config.layers),
    );
    let per_layer = c.saturating_mul(c).saturating_mul(12).saturating_add(c.saturating_mul(13));
    v.saturating_mul(c)
        .saturating_add(t.saturating_mul(c))
        .saturating_add(l.saturating_mul(per_layer))
        .saturating_add(c.saturating_mul(2))
}

/// A blob that cannot hold whole f32 values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a flat f32 blob has {len} bytes, not a multiple of 4")]
pub struct RaggedWeights {
    pub len: usize,
}

/// The bytes of `weights`.
pub fn weights_to_bytes(weights: &[f32]) -> Vec<u8> {
    weights.iter().flat_map(|w| w.to_le_bytes()).collect()
}

/// The values in `bytes`; refused unless it holds whole f32 values.
pub fn weights_from_bytes(bytes: &[u8]) -> Result<Vec<f32>, RaggedWeights> {
    if bytes.len() % 4 != 0 {
        return Err(RaggedWeights { len: bytes.len() });
    }
    Ok(bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #[test]
        fn every_bit_of_every_value_survives_a_round_trip(bits in proptest::collection::vec(any::<u32>(), 0..64)) {
            let weights: Vec<f32> = bits.iter().map(|b| f32::from_bits(*b)).collect();
            let bytes = weights_to_bytes(&weights);
            prop_assert_eq!(bytes.len(), 4 * weights.len());
            let back: Vec<u32> = weights_from_bytes(&bytes).unwrap().iter().map(|w| w.to_bits()).collect();
            prop_assert_eq!(back, bits);
        }

        #[test]
        fn ragged_blobs_are_refused(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            match weights_from_bytes(&bytes) {
                Ok(weights) => prop_assert_eq!(weights.len() * 4, bytes.len()),
                Err(error) => prop_assert_eq!(error, RaggedWeights { len: bytes.len() }),
            }
            prop_assert_eq!(weights_from_bytes(&bytes).is_ok(), bytes.len() % 4 == 0);
        }
    }

    #[test]
    fn the_layout_is_little_endian_in_parameter_order() {
        assert_eq!(weights_to_bytes(&[1.0, -0.0]), [0, 0, 0x80, 0x3f, 0, 0, 0, 0x80]);
    }
}
