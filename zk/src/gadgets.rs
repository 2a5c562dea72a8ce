//! Low-level R1CS building blocks over BN254 `Fr` for integer arithmetic.
//!
//! A [`Num`] is a linear combination of circuit variables together with the integer it is
//! meant to equal (the "shadow" value, computed natively while the witness is generated).
//! Everything here keeps one invariant: **every `Num` that a caller treats as an integer is
//! bounded by range checks well below `p/2 ≈ 2^253`**, so a field equation between such
//! numbers is the same equation over the integers. That is what makes a `floor` proven by
//! `x = q·2^k + r, 0 ≤ r < 2^k` mean the integer floor.
//!
//! Costs (R1CS constraints): a product is 1; a `k`-bit range check is `k` (booleanity) + 1
//! (the sum); additions and constant multiples are free (they only grow linear combinations).
//!
//! A shadow value outside its range (a forged witness) never panics: it produces a witness
//! that fails a constraint. Shadow arithmetic itself is checked: the range checks keep it far
//! inside `i128`, and an overflow would be a circuit bug, so it stops rather than wrap.

use ark_bn254::Fr;
use ark_ff::{Field, PrimeField, Zero};
use ark_relations::gr1cs::{ConstraintSystemRef, LinearCombination, SynthesisError, Variable};

use crate::fixed::VALUE_BITS;

/// A signed integer carried both as a linear combination and as its expected value.
#[derive(Clone, Debug)]
pub(crate) struct Num {
    pub lc: LinearCombination<Fr>,
    pub value: i128,
}

/// The field element of a (small) signed integer.
pub(crate) fn field_of(value: i128) -> Fr {
    let magnitude = Fr::from(value.unsigned_abs());
    if value < 0 {
        -magnitude
    } else {
        magnitude
    }
}

/// The signed integer of a field element, if it is within `i128` of zero.
pub(crate) fn integer_of(value: Fr) -> Option<i128> {
    let to_u128 = |f: Fr| -> Option<u128> {
        let limbs = f.into_bigint().0;
        (limbs[2] == 0 && limbs[3] == 0).then(|| limbs[0] as u128 | (limbs[1] as u128) << 64)
    };
    if let Some(v) = to_u128(value).filter(|&v| v <= i128::MAX as u128) {
        return Some(v as i128);
    }
    to_u128(-value).filter(|&v| v <= i128::MAX as u128).map(|v| -(v as i128))
}

/// `2^k` in the field.
pub(crate) fn power_of_two(k: u32) -> Fr {
    Fr::from(2u64).pow([k as u64])
}

impl Num {
    pub fn constant(value: i128) -> Num {
        let mut lc = LinearCombination::zero();
        if value != 0 {
            lc += (field_of(value), Variable::One);
        }
        Num { lc, value }
    }

    pub fn variable(variable: Variable, value: i128) -> Num {
        Num { lc: LinearCombination::from(variable), value }
    }

    pub fn add(&self, other: &Num) -> Num {
        Num { lc: self.lc.clone() + &other.lc, value: self.value + other.value }
    }

    pub fn sub(&self, other: &Num) -> Num {
        Num { lc: self.lc.clone() - &other.lc, value: self.value - other.value }
    }

    pub fn scale(&self, factor: i128) -> Num {
        Num { lc: self.lc.clone() * field_of(factor), value: self.value * factor }
    }

    /// `self · 2^k` (a shift left: free).
    pub fn shl(&self, k: u32) -> Num {
        Num { lc: self.lc.clone() * power_of_two(k), value: self.value << k }
    }

    /// Sum of many numbers as one linear combination. Concatenates then sorts once, because
    /// adding terms one by one would re-merge the growing combination each time (quadratic).
    pub fn sum<'a>(terms: impl IntoIterator<Item = &'a Num>) -> Num {
        let mut entries = Vec::new();
        let mut value = 0;
        for term in terms {
            entries.extend_from_slice(&term.lc.0);
            value += term.value;
        }
        let mut lc = LinearCombination(entries);
        lc.compactify();
        Num { lc, value }
    }
}

/// The little-endian bits of a range-checked value, as circuit variables.
pub(crate) struct Bits {
    pub vars: Vec<Variable>,
    pub value: u128,
}

impl Bits {
    /// `Σ 2^i·b_i` for the bits `range`.
    pub fn weighted_sum(&self, range: std::ops::Range<usize>) -> Num {
        let mut lc = LinearCombination::zero();
        for i in range.clone() {
            lc += (power_of_two((i - range.start) as u32), self.vars[i]);
        }
        let width = (range.end - range.start) as u32;
        let value = (self.value >> range.start) & mask(width);
        Num { lc, value: value as i128 }
    }

    /// The whole unsigned value.
    pub fn unsigned(&self) -> Num {
        self.weighted_sum(0..self.vars.len())
    }

    /// Bit `i` as a 0/1 number.
    pub fn bit(&self, i: usize) -> Num {
        Num::variable(self.vars[i], ((self.value >> i) & 1) as i128)
    }
}

fn mask(width: u32) -> u128 {
    if width >= 128 {
        u128::MAX
    } else {
        (1u128 << width) - 1
    }
}

/// Allocates variables and constraints; a thin handle on the constraint system.
#[derive(Clone)]
pub(crate) struct Builder {
    pub cs: ConstraintSystemRef<Fr>,
}

impl Builder {
    pub fn new(cs: ConstraintSystemRef<Fr>) -> Self {
        Builder { cs }
    }

    /// A fresh, unconstrained witness variable.
    pub fn witness(&self, value: i128) -> Result<Num, SynthesisError> {
        let variable = self.cs.new_witness_variable(|| Ok(field_of(value)))?;
        Ok(Num::variable(variable, value))
    }

    /// A fresh witness variable with an arbitrary field value.
    pub fn witness_field(&self, value: Fr) -> Result<Variable, SynthesisError> {
        self.cs.new_witness_variable(|| Ok(value))
    }

    /// A public input variable.
    pub fn input(&self, value: Fr) -> Result<Variable, SynthesisError> {
        self.cs.new_input_variable(|| Ok(value))
    }

    /// `a · b = c`.
    pub fn enforce_product(
        &self,
        a: &LinearCombination<Fr>,
        b: &LinearCombination<Fr>,
        c: &LinearCombination<Fr>,
    ) -> Result<(), SynthesisError> {
        self.cs.enforce_r1cs_constraint(|| a.clone(), || b.clone(), || c.clone())
    }

    /// `a = b` (one constraint: `(a − b) · 1 = 0`).
    pub fn enforce_equal(&self, a: &Num, b: &Num) -> Result<(), SynthesisError> {
        let difference = a.lc.clone() - &b.lc;
        self.enforce_product(&difference, &LinearCombination::from(Variable::One), &LinearCombination::zero())
    }

    /// `a · b` as a new variable (one constraint). Callers multiply only range-checked
    /// integers (at most 2^33 in magnitude), so the product fits `i128`; a product that does
    /// not would be a circuit bug, and a wrapped shadow value would silently make the witness
    /// unsatisfiable, so it stops here instead.
    pub fn mul(&self, a: &Num, b: &Num) -> Result<Num, SynthesisError> {
        let value = a
            .value
            .checked_mul(b.value)
            .expect("circuit integers are range-checked far below 2^63, so products fit i128");
        let product = self.witness(value)?;
        self.enforce_product(&a.lc, &b.lc, &product.lc)?;
        Ok(product)
    }

    /// `width` boolean variables holding the low bits of `value` (each costs one constraint).
    ///
    /// A value outside `[0, 2^width)` still gets bits (of its residue), so the caller's sum
    /// constraint, not a panic, rejects it.
    pub fn bits(&self, value: i128, width: u32) -> Result<Bits, SynthesisError> {
        debug_assert!(width < 127);
        let residue = value.rem_euclid(1i128 << width) as u128;
        let mut vars = Vec::with_capacity(width as usize);
        for i in 0..width {
            let bit = self.witness_field(Fr::from(((residue >> i) & 1) as u64))?;
            // b · (b − 1) = 0
            self.enforce_product(
                &LinearCombination::from(bit),
                &(LinearCombination::from(bit) - (Fr::ONE, Variable::One)),
                &LinearCombination::zero(),
            )?;
            vars.push(bit);
        }
        Ok(Bits { vars, value: residue })
    }

    /// Prove `0 ≤ x < 2^width`; returns the bits.
    pub fn range_check_unsigned(&self, x: &Num, width: u32) -> Result<Bits, SynthesisError> {
        let bits = self.bits(x.value, width)?;
        self.enforce_equal(&bits.unsigned(), x)?;
        Ok(bits)
    }

    /// A new unsigned value `0 ≤ v < 2^width`, defined by its bits (no separate variable).
    pub fn unsigned(&self, value: i128, width: u32) -> Result<(Num, Bits), SynthesisError> {
        let bits = self.bits(value, width)?;
        Ok((bits.unsigned(), bits))
    }

    /// A new stored value `v ∈ [-2^31, 2^31)`, defined by the bits of `v + 2^31`.
    /// Bit 31 of those bits is 1 exactly when `v ≥ 0`.
    pub fn signed_value(&self, value: i128) -> Result<(Num, Bits), SynthesisError> {
        let offset = 1i128 << (VALUE_BITS - 1);
        let bits = self.bits(value + offset, VALUE_BITS)?;
        Ok((bits.unsigned().sub(&Num::constant(offset)), bits))
    }

    /// `floor(x / 2^shift)` as a stored value: proves `x = q·2^shift + r` with `0 ≤ r < 2^shift`
    /// and `q ∈ [-2^31, 2^31)`. Cost: `32 + shift + 1` constraints.
    pub fn floor_shift_signed(&self, x: &Num, shift: u32) -> Result<(Num, Bits), SynthesisError> {
        let q = x.value >> shift;
        let (quotient, bits) = self.signed_value(q)?;
        let (remainder, _) = self.unsigned(x.value - (q << shift), shift)?;
        self.enforce_equal(x, &quotient.shl(shift).add(&remainder))?;
        Ok((quotient, bits))
    }

    /// `floor(x / 2^shift)` for an `x` known to be in `[0, 2^(shift+quotient_bits))`:
    /// proves `x = q·2^shift + r`, `0 ≤ r < 2^shift`, `0 ≤ q < 2^quotient_bits`.
    pub fn floor_shift_unsigned(&self, x: &Num, shift: u32, quotient_bits: u32) -> Result<Num, SynthesisError> {
        let q = x.value >> shift;
        let (quotient, _) = self.unsigned(q, quotient_bits)?;
        let (remainder, _) = self.unsigned(x.value - (q << shift), shift)?;
        self.enforce_equal(x, &quotient.shl(shift).add(&remainder))?;
        Ok(quotient)
    }

    /// `1` if `x = 0`, else `0`. Three constraints: `x·inv = 1 − z` and `x·z = 0` decide
    /// `z`; `inv·z = 0` also pins `inv` to 0 when `x = 0`, so that no witness variable of the
    /// circuit is ever free (tests rely on every single-value change breaking a constraint).
    pub fn is_zero(&self, x: &Num) -> Result<Num, SynthesisError> {
        let field_value = field_of(x.value);
        let inverse = LinearCombination::from(self.witness_field(field_value.inverse().unwrap_or(Fr::zero()))?);
        let zero = self.witness((x.value == 0) as i128)?;
        let one_minus_zero = Num::constant(1).sub(&zero);
        self.enforce_product(&x.lc, &inverse, &one_minus_zero.lc)?;
        self.enforce_product(&x.lc, &zero.lc, &LinearCombination::zero())?;
        self.enforce_product(&inverse, &zero.lc, &LinearCombination::zero())?;
        Ok(zero)
    }

    /// Evaluate a number's linear combination on the current assignment (tests and checks:
    /// this reads what the constraint system holds, not the shadow value).
    pub fn assigned(&self, x: &Num) -> Option<Fr> {
        let mut total = Fr::zero();
        for (coefficient, variable) in x.lc.iter() {
            total += *coefficient * self.cs.assigned_value(*variable)?;
        }
        Some(total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ark_relations::gr1cs::ConstraintSystem;

    fn builder() -> Builder {
        Builder::new(ConstraintSystem::<Fr>::new_ref())
    }

    #[test]
    fn integers_round_trip_through_the_field() {
        for v in [0i128, 1, -1, i32::MIN as i128, i64::MAX as i128, -(1i128 << 100)] {
            assert_eq!(integer_of(field_of(v)), Some(v));
        }
    }

    #[test]
    fn floor_shift_matches_integer_floor_and_costs_what_it_says() {
        for x in [0i128, 1, -1, 65535, 65536, -65537, (1i128 << 47) - 1, -(1i128 << 47)] {
            let b = builder();
            let input = b.witness(x).unwrap();
            let before = b.cs.num_constraints();
            let (q, _) = b.floor_shift_signed(&input, 16).unwrap();
            assert_eq!(b.cs.num_constraints() - before, 32 + 16 + 1);
            assert_eq!(q.value, x >> 16);
            assert_eq!(integer_of(b.assigned(&q).unwrap()), Some(x >> 16));
            assert!(b.cs.is_satisfied().unwrap(), "x = {x}");
        }
    }

    #[test]
    fn an_out_of_range_quotient_is_unsatisfiable_not_a_panic() {
        let b = builder();
        let input = b.witness(1i128 << 50).unwrap();
        b.floor_shift_signed(&input, 16).unwrap();
        assert!(!b.cs.is_satisfied().unwrap());
    }

    #[test]
    fn a_shifted_remainder_cannot_fake_a_different_floor() {
        // Claim q+1 with remainder r − 2^16 (negative): the bits cannot represent it.
        let b = builder();
        let x = b.witness(70_000).unwrap();
        let fake_q = (70_000i128 >> 16) + 1;
        let (quotient, _) = b.signed_value(fake_q).unwrap();
        let (remainder, _) = b.unsigned(70_000 - (fake_q << 16), 16).unwrap();
        b.enforce_equal(&x, &quotient.shl(16).add(&remainder)).unwrap();
        assert!(!b.cs.is_satisfied().unwrap());
    }

    #[test]
    fn is_zero_and_signed_sign_bit() {
        for x in [0i128, 5, -5] {
            let b = builder();
            let n = b.witness(x).unwrap();
            let z = b.is_zero(&n).unwrap();
            let (value, bits) = b.signed_value(x).unwrap();
            b.enforce_equal(&value, &n).unwrap();
            assert_eq!(z.value, (x == 0) as i128);
            assert_eq!(bits.bit(31).value, (x >= 0) as i128);
            assert!(b.cs.is_satisfied().unwrap());
        }
    }
}
