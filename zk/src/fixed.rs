//! The fixed-point number format shared by the reference trainer and the circuit.
//!
//! Every quantity the trainer stores (weights, biases, features, activations, logits,
//! probabilities, back-propagated deltas) is a signed **Q15.16** number: an `i32` whose real
//! value is `raw / 2^16`. The rules below are the whole arithmetic; the circuit in
//! [`crate::circuit`] enforces exactly these rules, so anything written here is part of the
//! proof system's specification and must not change without a new circuit version.
//!
//! - **Products** are exact (`i64`/`i128`, scale 2^32) and **sums of products are exact**;
//!   a dot product is truncated once, at the end.
//! - **Truncation** is `floor` (arithmetic shift right, i.e. toward −∞), never rounding to
//!   nearest: floor is what a remainder range check `0 ≤ r < 2^k` proves directly.
//! - **Range**: a stored value must lie in `[-2^31, 2^31)`. Nothing saturates or wraps: a
//!   result outside the range is an [`OutOfRange`] error in the reference trainer and makes
//!   the circuit unsatisfiable. Silent clamping would hide a diverging run and would cost the
//!   circuit a comparison per value; a job whose learning rate overflows Q15.16 fails loudly.
//! - **Softmax** is replaced by a provable approximation, [`softmax`]: the exponential is
//!   `exp(t) ≈ (1 + t/16)^16` on `t = z − max(z)` clamped to `[-16, 0]`, computed as one
//!   floor division by 16 and four truncating squarings, then normalised with a floor
//!   division by the sum. No floating point is involved anywhere in a training step.

use std::fmt;

/// Fractional bits of every stored value: `raw = real · 2^16`.
pub const FRAC_BITS: u32 = 16;
/// The fixed-point one, 1.0 in Q15.16.
pub const ONE: i64 = 1 << FRAC_BITS;
/// Width of every stored value: values are `i32`.
pub const VALUE_BITS: u32 = 32;
/// Smallest stored value, −32768.0.
pub const MIN_VALUE: i64 = i32::MIN as i64;
/// Largest stored value, 32767.99998….
pub const MAX_VALUE: i64 = i32::MAX as i64;

/// Number of truncating squarings in the exponential approximation `(1 + t/2^k)^(2^k)`.
pub const EXP_SQUARINGS: u32 = 4;
/// Logit gaps are clamped at `2^EXP_CLAMP_BITS` raw units, i.e. at 2^EXP_SQUARINGS = 16.0,
/// where `1 + t/16` reaches zero; beyond it the approximation would grow again.
pub const EXP_CLAMP_BITS: u32 = FRAC_BITS + EXP_SQUARINGS;

/// A value that left the Q15.16 range; `what` names the quantity so an operator can tell a
/// learning rate that is too large (updates) from inputs that are too large (logits).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} = {value} (raw Q15.16) is outside the i32 range; lower the learning rate or scale the inputs")]
pub struct OutOfRange {
    /// The quantity that overflowed, e.g. "logit" or "weight update".
    pub what: &'static str,
    /// The raw value that did not fit.
    pub value: i128,
}

/// `floor(x / 2^shift)`: Rust's `>>` on signed integers is an arithmetic shift, which is floor.
pub fn floor_shift(x: i128, shift: u32) -> i128 {
    x >> shift
}

/// Narrow an exact intermediate to a stored value, or say which quantity overflowed.
pub fn checked_value(x: i128, what: &'static str) -> Result<i32, OutOfRange> {
    i32::try_from(x).map_err(|_| OutOfRange { what, value: x })
}

/// `floor(x / 2^16)` narrowed to a stored value: the single truncation of a dot product.
pub fn truncate_product_sum(x: i128, what: &'static str) -> Result<i32, OutOfRange> {
    checked_value(floor_shift(x, FRAC_BITS), what)
}

/// The exponential approximation applied to a logit gap `gap = max(z) − z ≥ 0`.
///
/// `u = floor((2^20 − min(gap, 2^20)) / 16)` is `1 − gap/16` in Q15.16 (so in `[0, 2^16]`),
/// then `u ← floor(u² / 2^16)` four times gives `(1 − gap/16)^16 ≈ exp(−gap)`. The result is
/// in `[0, ONE]`, and exactly `ONE` for `gap = 0`.
pub fn exp_of_negative_gap(gap: i64) -> i64 {
    debug_assert!(gap >= 0, "a gap to the maximum logit is never negative");
    let clamp = 1i64 << EXP_CLAMP_BITS;
    let mut e = (clamp - gap.min(clamp)) >> EXP_SQUARINGS;
    for _ in 0..EXP_SQUARINGS {
        e = (e * e) >> FRAC_BITS;
    }
    e
}

/// Softmax in Q15.16: `p_c = floor(e_c · 2^16 / Σ e)` with `e_c = exp_of_negative_gap(max − z_c)`.
///
/// The class with the largest logit has `e = ONE`, so the denominator is at least `ONE` and
/// never zero. Each `p_c` is in `[0, ONE]` and the `p_c` sum to at most `ONE` (floor).
pub fn softmax(logits: &[i32]) -> Vec<i32> {
    let max = logits.iter().copied().max().unwrap_or(0) as i64;
    let exps: Vec<i64> = logits.iter().map(|&z| exp_of_negative_gap(max - z as i64)).collect();
    let sum: i64 = exps.iter().sum();
    exps.iter()
        .map(|&e| {
            // e ≤ ONE ≤ sum, so the quotient is in [0, ONE] and fits an i32.
            ((e << FRAC_BITS) / sum) as i32
        })
        .collect()
}

/// Errors of [`parse_decimal_q16`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecimalError {
    /// Not of the form `123`, `0.5` or `.25`.
    #[error("{0:?} is not a non-negative decimal number such as 0.5")]
    Syntax(String),
    /// More digits than can be converted exactly.
    #[error("{0:?} has too many digits (at most {MAX_DECIMAL_DIGITS})")]
    TooLong(String),
}

/// Longest decimal accepted by [`parse_decimal_q16`]; keeps the exact conversion in `u128`.
pub const MAX_DECIMAL_DIGITS: usize = 30;

/// Parse a non-negative decimal exactly as the rational `numerator / 10^digits`.
///
/// Returned as `(numerator, 10^fraction_digits)` so callers can fold further factors in
/// before the single floor; no binary floating point ever touches a learning rate.
pub fn parse_decimal(text: &str) -> Result<(u128, u128), DecimalError> {
    let syntax = || DecimalError::Syntax(text.to_string());
    let (int_part, frac_part) = match text.split_once('.') {
        Some((i, f)) => (i, f),
        None => (text, ""),
    };
    if int_part.is_empty() && frac_part.is_empty() {
        return Err(syntax());
    }
    if !int_part.bytes().chain(frac_part.bytes()).all(|b| b.is_ascii_digit()) {
        return Err(syntax());
    }
    if int_part.len() + frac_part.len() > MAX_DECIMAL_DIGITS {
        return Err(DecimalError::TooLong(text.to_string()));
    }
    let digits: String = [int_part, frac_part].concat();
    let numerator = if digits.is_empty() { 0 } else { digits.parse::<u128>().map_err(|_| syntax())? };
    let denominator = 10u128.pow(frac_part.len() as u32);
    Ok((numerator, denominator))
}

/// `floor(decimal · 2^16)`, exact.
pub fn parse_decimal_q16(text: &str) -> Result<u128, DecimalError> {
    let (numerator, denominator) = parse_decimal(text)?;
    Ok((numerator << FRAC_BITS) / denominator)
}

/// Exact decimal text of a non-negative Q15.16-scaled integer (`raw / 2^16`), shortest form.
///
/// Exact because `1 / 2^16 = 5^16 / 10^16` has a finite decimal expansion.
pub fn format_q16_exact(raw: u128) -> String {
    let int_part = raw >> FRAC_BITS;
    let frac = raw & ((1u128 << FRAC_BITS) - 1);
    if frac == 0 {
        return int_part.to_string();
    }
    let frac_digits = format!("{:016}", frac * 5u128.pow(FRAC_BITS));
    format!("{int_part}.{}", frac_digits.trim_end_matches('0'))
}

/// A Q15.16 value shown as a decimal, for logs and reports (never used in arithmetic).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Q16(pub i32);

impl fmt::Display for Q16 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = if self.0 < 0 { "-" } else { "" };
        write!(f, "{sign}{}", format_q16_exact(self.0.unsigned_abs() as u128))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floor_shift_rounds_toward_negative_infinity() {
        assert_eq!(floor_shift(3 * ONE as i128 + 1, FRAC_BITS), 3);
        assert_eq!(floor_shift(-1, FRAC_BITS), -1);
        assert_eq!(floor_shift(-(ONE as i128), FRAC_BITS), -1);
        assert_eq!(floor_shift(-(ONE as i128) - 1, FRAC_BITS), -2);
    }

    #[test]
    fn checked_value_names_the_overflowing_quantity() {
        assert_eq!(checked_value(MAX_VALUE as i128, "logit"), Ok(i32::MAX));
        assert_eq!(checked_value(MIN_VALUE as i128, "logit"), Ok(i32::MIN));
        let err = checked_value(MAX_VALUE as i128 + 1, "weight update").unwrap_err();
        assert_eq!(err.what, "weight update");
    }

    #[test]
    fn exponential_approximation_is_one_at_zero_and_zero_past_the_clamp() {
        assert_eq!(exp_of_negative_gap(0), ONE);
        assert_eq!(exp_of_negative_gap(16 * ONE), 0);
        assert_eq!(exp_of_negative_gap(i32::MAX as i64 * 2), 0);
        // (1 - 1/16)^16 = 0.3561…; floors along the way may only lower it.
        let e1 = exp_of_negative_gap(ONE);
        assert!((23_000..=23_340).contains(&e1), "e(-1) = {e1}");
        // Monotone non-increasing in the gap.
        let mut previous = ONE;
        for gap in (0..17 * ONE).step_by(997) {
            let e = exp_of_negative_gap(gap);
            assert!(e <= previous && e >= 0);
            previous = e;
        }
    }

    #[test]
    fn softmax_is_a_distribution_that_favours_the_largest_logit() {
        let p = softmax(&[ONE as i32, 0, -(ONE as i32)]);
        let sum: i64 = p.iter().map(|&v| v as i64).sum();
        assert!(sum <= ONE && sum > ONE - 3, "sum {sum}");
        assert!(p[0] > p[1] && p[1] > p[2]);
        assert_eq!(softmax(&[5, 5]), vec![(ONE / 2) as i32, (ONE / 2) as i32]);
        // Extreme logits neither overflow nor divide by zero.
        let p = softmax(&[i32::MAX, i32::MIN]);
        assert_eq!(p, vec![ONE as i32, 0]);
    }

    #[test]
    fn decimals_convert_exactly() {
        assert_eq!(parse_decimal_q16("0.5"), Ok(32768));
        assert_eq!(parse_decimal_q16(".25"), Ok(16384));
        assert_eq!(parse_decimal_q16("2"), Ok(131072));
        // 0.1 · 2^16 = 6553.6 → floor.
        assert_eq!(parse_decimal_q16("0.1"), Ok(6553));
        assert!(parse_decimal_q16("1e-3").is_err());
        assert!(parse_decimal_q16("-1").is_err());
        assert!(parse_decimal_q16(".").is_err());
        assert!(parse_decimal_q16("").is_err());
        assert!(parse_decimal_q16(&"1".repeat(40)).is_err());
        assert_eq!(format_q16_exact(32768), "0.5");
        assert_eq!(format_q16_exact(1), "0.0000152587890625");
        assert_eq!(format_q16_exact(3 << 16), "3");
        for raw in [1u128, 7, 6553, 32768, 65535, 65536, 1 << 30] {
            assert_eq!(parse_decimal_q16(&format_q16_exact(raw)), Ok(raw));
        }
        assert_eq!(Q16(-(ONE as i32) / 4).to_string(), "-0.25");
    }
}
