//! Compact training state: the weights as the round's start weights plus a bf16 drift, and
//! AdamW's moments in 8 bits each — 4 bytes a parameter in all, an f32 Δ's size, where the
//! full state takes 12.
//!
//! A trail that checkpoints compactly rounds its live state to what the checkpoint can hold at
//! every checkpoint ([`round_state`]), and trains on from the rounded state, so a checker that
//! restores the compact checkpoint continues from exactly the miner's state. Everything here is
//! integer and IEEE-754 arithmetic on `f32` (additions, multiplications, divisions and square
//! roots, which are correctly rounded): no transcendental function, so every platform rounds the
//! same way.
//!
//! - **Weights**: `w ← base + bf16(w − base)`, round to nearest even. The drift from the round's
//!   start is small, so its bf16 rounding error (at most 2⁻⁸ of the drift) is far below a step's size.
//! - **Second moments** (`v ≥ 0`): 5 exponent bits counted down from the tensor's largest
//!   exponent and 3 mantissa bits (relative error ≤ 2⁻⁴, so ≤ 3.2% on `√v`); code 0 is zero, and
//!   a value more than 2³⁰ below the tensor's largest is raised to the smallest code (never
//!   turned into zero, which would make `m/√v` blow up).
//! - **First moments**: `m/√v̂` lies within ±B, B = (1−β₁)/√((1−β₂)(1−β₁²/β₂)) (Cauchy–Schwarz on the
//!   two running averages of the same gradients; needs β₁² < β₂), so `m` is stored as
//!   `round(127·(m/√v̂)/B)` in an `i8` and read back as `q/127 · B · √v̂`.

/// Codes of the second moments above zero: 31 exponents × 8 mantissas.
const EXPONENT_SPAN: i32 = 30;
/// The largest reference exponent: code exponent 31 (a rounding carry) must stay finite.
pub const MAX_TOP_EXPONENT: u8 = 253;
/// The smallest reference exponent: code exponent 1 must be a normal number.
pub const MIN_TOP_EXPONENT: u8 = EXPONENT_SPAN as u8 + 1;

/// Zero for a subnormal (keeping the sign), the value otherwise: decoded states hold no
/// subnormal, so no backend's denormal handling can make two replays differ.
fn flush(value: f32) -> f32 {
    if value.is_subnormal() {
        0.0f32.copysign(value)
    } else {
        value
    }
}

/// Rounds `value` to the nearest bf16 (ties to even), as an `f32`.
pub fn round_bf16(value: f32) -> f32 {
    f32::from_bits(bf16_bits(value) << 16)
}

/// The bf16 bits of `value` rounded to nearest, ties to even; a NaN, whatever its payload, is
/// bf16's quiet NaN (rounding its bits would carry some NaNs into a finite value or zero, and
/// make a diverged state look like a trained one).
pub fn bf16_bits(value: f32) -> u32 {
    if value.is_nan() {
        return 0x7fc0;
    }
    let bits = value.to_bits();
    let lsb = (bits >> 16) & 1;
    (bits.wrapping_add(0x7fff + lsb)) >> 16
}

/// The bound of |m|/√v for AdamW's running averages with these betas, if β₁² < β₂.
pub fn moment_ratio_bound(beta1: f64, beta2: f64) -> Option<f32> {
    let decay = beta1 * beta1 / beta2;
    (decay < 1.0 && beta2 < 1.0).then(|| ((1.0 - beta1) / ((1.0 - beta2) * (1.0 - decay)).sqrt()) as f32)
}

/// A tensor's second moments in 8 bits: the reference exponent and one code per value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecondMoments {
    /// The biased f32 exponent of code exponent 30 (the tensor's largest).
    pub top_exponent: u8,
    pub codes: Vec<u8>,
}

/// Encodes non-negative finite second moments.
pub fn encode_second(values: &[f32]) -> SecondMoments {
    let top = values
        .iter()
        .map(|v| ((v.to_bits() >> 23) & 0xff) as i32)
        .max()
        .unwrap_or(0)
        .clamp(i32::from(MIN_TOP_EXPONENT), i32::from(MAX_TOP_EXPONENT));
    let floor = top - EXPONENT_SPAN; // the biased exponent of code exponent 0
    let codes = values
        .iter()
        .map(|v| {
            if *v == 0.0 {
                return 0;
            }
            let bits = v.to_bits();
            let exponent = ((bits >> 23) & 0xff) as i32 - floor;
            if exponent < 1 {
                return 1 << 3; // the smallest code above zero
            }
            let mantissa = bits & 0x7f_ffff;
            // 3 mantissa bits, rounded to nearest (ties to even); a carry moves up an exponent.
            let kept = mantissa >> 20;
            let rest = mantissa & 0xf_ffff;
            let half = 0x8_0000;
            let rounded = kept + u32::from(rest > half || (rest == half && kept & 1 == 1));
            let (exponent, kept) = if rounded == 8 { (exponent + 1, 0) } else { (exponent, rounded) };
            if exponent > EXPONENT_SPAN + 1 {
                0xff
            } else {
                ((exponent as u32) << 3 | kept) as u8
            }
        })
        .collect();
    SecondMoments { top_exponent: top as u8, codes }
}

/// Decodes second moments.
pub fn decode_second(encoded: &SecondMoments) -> Vec<f32> {
    let floor = i32::from(encoded.top_exponent) - EXPONENT_SPAN;
    encoded
        .codes
        .iter()
        .map(|&code| {
            if code == 0 {
                return 0.0;
            }
            let exponent = (i32::from(code >> 3) + floor) as u32;
            f32::from_bits(exponent << 23 | u32::from(code & 7) << 20)
        })
        .collect()
}

/// Encodes first moments against decoded second moments `v̂` (same length).
pub fn encode_first(values: &[f32], second: &[f32], bound: f32) -> Vec<i8> {
    values
        .iter()
        .zip(second)
        .map(|(m, v)| {
            let root = v.sqrt();
            if root == 0.0 {
                return 0;
            }
            let scaled = (m / root / bound * 127.0).clamp(-127.0, 127.0);
            scaled.round_ties_even() as i8
        })
        .collect()
}

/// Decodes first moments.
pub fn decode_first(codes: &[i8], second: &[f32], bound: f32) -> Vec<f32> {
    codes.iter().zip(second).map(|(q, v)| flush(f32::from(*q) / 127.0 * bound * v.sqrt())).collect()
}

/// The weights a compact checkpoint holds: `base + bf16(w − base)`, and the drift's bf16 bits.
pub fn round_weights(weights: &[f32], base: &[f32]) -> (Vec<f32>, Vec<u16>) {
    weights
        .iter()
        .zip(base)
        .map(|(w, b)| {
            let bits = bf16_bits(w - b);
            (flush(b + f32::from_bits(bits << 16)), bits as u16)
        })
        .unzip()
}

/// Rounds a Muon momentum to bf16 (round to nearest even; a result below bf16's normal range
/// becomes a signed zero), in place, and returns the bf16 bits: what a compact checkpoint holds
/// for a matrix that Muon updates (no second moment to scale an 8-bit code by), in the two
/// bytes AdamW's moments take.
pub fn round_momentum(values: &mut [f32]) -> Vec<u16> {
    values
        .iter_mut()
        .map(|value| {
            let mut bits = bf16_bits(flush(*value)) as u16;
            if bits & 0x7f80 == 0 {
                bits &= 0x8000;
            }
            *value = momentum_from_bits(bits);
            bits
        })
        .collect()
}

/// A Muon momentum from its bf16 bits.
pub fn momentum_from_bits(bits: u16) -> f32 {
    f32::from_bits(u32::from(bits) << 16)
}

/// Whether bf16 `bits` can be a rounded Muon momentum: finite, and normal or zero.
pub fn canonical_momentum(bits: u16) -> bool {
    let exponent = bits & 0x7f80;
    exponent != 0x7f80 && (exponent != 0 || bits & 0x7f == 0)
}

/// Weights from a compact checkpoint's drift.
pub fn weights_from_drift(drift: &[u16], base: &[f32]) -> Vec<f32> {
    drift.iter().zip(base).map(|(d, b)| flush(b + f32::from_bits(u32::from(*d) << 16))).collect()
}

/// The state a compact checkpoint holds, per tensor for the moments.
#[derive(Debug, Clone, PartialEq)]
pub struct CompactState {
    pub drift: Vec<u16>,
    pub first: Vec<i8>,
    pub second: Vec<SecondMoments>,
}

/// Rounds a flat state (weights, first and second moments; `sizes` are the tensors' element
/// counts, in order) to what a compact checkpoint holds, in place, and returns the encoding.
pub fn round_state(
    weights: &mut [f32],
    first: &mut [f32],
    second: &mut [f32],
    base: &[f32],
    sizes: &[usize],
    bound: f32,
) -> CompactState {
    let (rounded, drift) = round_weights(weights, base);
    weights.copy_from_slice(&rounded);
    let mut offset = 0;
    let mut seconds = Vec::with_capacity(sizes.len());
    let mut firsts = Vec::with_capacity(first.len());
    for &size in sizes {
        let range = offset..offset + size;
        let encoded = encode_second(&second[range.clone()]);
        let decoded = decode_second(&encoded);
        let codes = encode_first(&first[range.clone()], &decoded, bound);
        first[range.clone()].copy_from_slice(&decode_first(&codes, &decoded, bound));
        second[range].copy_from_slice(&decoded);
        firsts.extend(codes);
        seconds.push(encoded);
        offset += size;
    }
    CompactState { drift, first: firsts, second: seconds }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nan_never_rounds_to_a_finite_value() {
        // CUDA's canonical NaN 0x7fffffff would wrap to −0.0, 0xffffffff to +0.0.
        for bits in [0x7fff_ffffu32, 0xffff_ffff, 0x7fc0_0000, 0xffc0_0000, 0x7f80_0001] {
            let value = f32::from_bits(bits);
            assert!(round_bf16(value).is_nan(), "{bits:#x}");
            let (weights, drift) = round_weights(&[value], &[1.0]);
            assert!(weights[0].is_nan() && f32::from_bits(u32::from(drift[0]) << 16).is_nan(), "{bits:#x}");
            let mut momentum = [value];
            round_momentum(&mut momentum);
            assert!(momentum[0].is_nan(), "{bits:#x}");
        }
        assert_eq!(round_bf16(f32::INFINITY), f32::INFINITY);
        assert_eq!(round_bf16(-0.0).to_bits(), (-0.0f32).to_bits());
    }

    #[test]
    fn bf16_rounds_to_nearest_even_and_is_exact_on_bf16_values() {
        assert_eq!(round_bf16(1.0), 1.0);
        assert_eq!(round_bf16(-0.15625), -0.15625);
        // 1 + 2⁻⁸ is halfway between 1 and 1 + 2⁻⁷: ties go to the even one (1).
        assert_eq!(round_bf16(1.0 + 2f32.powi(-8)), 1.0);
        assert_eq!(round_bf16(1.0 + 3.0 * 2f32.powi(-8)), 1.0 + 2.0 * 2f32.powi(-7));
        for x in [0.3f32, -7.7, 1e-6, 123_456.7] {
            let r = round_bf16(x);
            assert!(((r - x) / x).abs() <= 2f32.powi(-8), "{x} → {r}");
            assert_eq!(round_bf16(r), r, "idempotent");
        }
    }

    #[test]
    fn second_moments_keep_three_percent_on_their_root_and_never_become_zero() {
        let values: Vec<f32> = (0..2000).map(|i| 1e-3 * 1.013f32.powi(-i)).chain([0.0, 1e-30, 5e-4]).collect();
        let decoded = decode_second(&encode_second(&values));
        for (v, d) in values.iter().zip(&decoded) {
            if *v == 0.0 {
                assert_eq!(*d, 0.0);
                continue;
            }
            assert!(*d > 0.0, "{v} became zero");
            if *v > 1e-3 * 2f32.powi(-29) {
                assert!((d.sqrt() / v.sqrt() - 1.0).abs() < 0.032, "{v} → {d}");
            }
        }
        // Encoding what was decoded changes nothing: a restored state rounds to itself.
        let again = encode_second(&decoded);
        assert_eq!(decode_second(&again), decoded);
    }

    #[test]
    fn first_moments_within_the_bound_round_to_within_a_step() {
        let bound = moment_ratio_bound(0.9, 0.95).unwrap();
        assert!((bound - 1.1645).abs() < 1e-3, "{bound}");
        assert_eq!(moment_ratio_bound(0.99, 0.95), None, "β₁² ≥ β₂ has no bound");
        let second: Vec<f32> = (0..500).map(|i| 1e-4 * (1.0 + i as f32 / 100.0)).collect();
        let decoded_second = decode_second(&encode_second(&second));
        let first: Vec<f32> =
            decoded_second.iter().enumerate().map(|(i, v)| v.sqrt() * bound * ((i as f32 / 250.0) - 1.0)).collect();
        let codes = encode_first(&first, &decoded_second, bound);
        let decoded = decode_first(&codes, &decoded_second, bound);
        for ((m, d), v) in first.iter().zip(&decoded).zip(&decoded_second) {
            assert!((m - d).abs() <= bound * v.sqrt() / 127.0 * 0.5001, "{m} → {d}");
        }
        assert_eq!(decode_first(&encode_first(&decoded, &decoded_second, bound), &decoded_second, bound), decoded);
        // A value beyond the bound is clamped, a zero second moment gives a zero first moment.
        assert_eq!(encode_first(&[1.0, 1.0], &[1e-4, 0.0], bound), vec![127, 0]);
    }

    #[test]
    fn muon_momenta_round_to_bf16_and_read_back_as_rounded() {
        let mut values = vec![0.3f32, -1e-3, 1e-39, -1e-40, 0.0, 5e4, 1.0 + 2f32.powi(-8)];
        let bits = round_momentum(&mut values);
        assert_eq!(values[0], round_bf16(0.3));
        assert_eq!((values[2], values[3].to_bits()), (0.0, (-0.0f32).to_bits()), "subnormals become signed zeros");
        assert_eq!(values[6], 1.0, "ties to even");
        assert_eq!(bits.iter().map(|b| momentum_from_bits(*b)).collect::<Vec<_>>(), values);
        assert!(bits.iter().all(|b| canonical_momentum(*b)));
        let mut again = values.clone();
        assert_eq!(round_momentum(&mut again), bits, "a restored momentum rounds to itself");
        // Infinity, NaN and a subnormal bf16 are never written.
        assert!(!canonical_momentum(0x7f80) && !canonical_momentum(0x7fc1) && !canonical_momentum(0x0001));
        assert!(canonical_momentum(0x8000));
    }

    #[test]
    fn the_rounded_live_state_is_what_its_encoding_decodes_to() {
        let base: Vec<f32> = (0..64).map(|i| (i as f32 * 0.37).sin() * 0.1).collect();
        let mut weights: Vec<f32> = base.iter().enumerate().map(|(i, b)| b + 1e-3 * (i as f32).cos()).collect();
        let mut second: Vec<f32> = (0..64).map(|i| 1e-6 * (1.0 + i as f32)).collect();
        let mut first: Vec<f32> = second.iter().map(|v| 0.3 * v.sqrt()).collect();
        let bound = moment_ratio_bound(0.9, 0.95).unwrap();
        let sizes = [40, 24];
        let state = round_state(&mut weights, &mut first, &mut second, &base, &sizes, bound);
        assert_eq!(weights_from_drift(&state.drift, &base), weights);
        let decoded_second: Vec<f32> = state.second.iter().flat_map(decode_second).collect();
        assert_eq!(decoded_second, second);
        assert_eq!(decode_first(&state.first, &decoded_second, bound), first);
        // Rounding a restored state again changes neither moment.
        let (m, v) = (first.clone(), second.clone());
        let again = round_state(&mut weights, &mut first, &mut second, &base, &sizes, bound);
        assert_eq!((again.first, again.second), (state.first, state.second));
        assert_eq!((first, second), (m, v));
    }
}
