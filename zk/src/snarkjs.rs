//! Export (and re-import) of keys, proofs and public inputs in snarkjs's Groth16 JSON layout.
//!
//! With the three files written here, `snarkjs groth16 verify verification_key.json
//! public.json proof.json` checks a Trellis proof outside Rust. The layout is snarkjs's for
//! the `bn128` curve (BN254):
//!
//! - field elements are decimal strings of the canonical integer (no leading zeros);
//! - a G1 point is `[x, y, "1"]` (projective with `z = 1`); the point at infinity is
//!   `["0", "1", "0"]`;
//! - a G2 point is `[[x.c0, x.c1], [y.c0, y.c1], ["1", "0"]]`, each coordinate an element
//!   `c0 + c1·u` of Fq2 written **real part first** (the Solidity verifier's calldata swaps the
//!   pair; this JSON does not); infinity is `[["0","0"], ["1","0"], ["0","0"]]`;
//! - `verification_key.json`: `protocol` "groth16", `curve` "bn128", `nPublic`,
//!   `vk_alpha_1`, `vk_beta_2`, `vk_gamma_2`, `vk_delta_2`, `IC` (`nPublic + 1` G1 points);
//!   snarkjs also writes `vk_alphabeta_12`, a cache its verifier does not read, so it is
//!   omitted here;
//! - `proof.json`: `pi_a`, `pi_b`, `pi_c`, `protocol`, `curve`;
//! - `public.json`: the public inputs as an array of decimal strings, in circuit order.
//!
//! Both sides verify the same Groth16 equation `e(A, B) = e(α, β)·e(Σ xᵢ·ICᵢ, γ)·e(C, δ)`, so
//! no conversion of the math is needed, only of the encoding. Import validates every point
//! (on the curve, in the subgroup) and every number (canonical, below the modulus).

use ark_bn254::{Bn254, Fq, Fq2, Fr, G1Affine, G2Affine};
use ark_ec::AffineRepr;
use ark_ff::{PrimeField, Zero};
use ark_groth16::{Proof, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::circuit::{PublicInputs, NUM_PUBLIC_INPUTS};
use crate::error::ZkError;
use crate::groth16::{ZkProof, ZkVerifyingKey};

/// Longest decimal accepted for one field element (a 254-bit number has 77 digits).
const MAX_DECIMAL_LEN: usize = 80;

/// `verification_key.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnarkjsVerifyingKey {
    /// Always "groth16".
    pub protocol: String,
    /// Always "bn128".
    pub curve: String,
    /// Number of public inputs.
    #[serde(rename = "nPublic")]
    pub n_public: usize,
    /// α in G1.
    pub vk_alpha_1: [String; 3],
    /// β in G2.
    pub vk_beta_2: [[String; 2]; 3],
    /// γ in G2.
    pub vk_gamma_2: [[String; 2]; 3],
    /// δ in G2.
    pub vk_delta_2: [[String; 2]; 3],
    /// The public-input bases, `nPublic + 1` G1 points.
    #[serde(rename = "IC")]
    pub ic: Vec<[String; 3]>,
}

/// `proof.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnarkjsProof {
    /// A in G1.
    pub pi_a: [String; 3],
    /// B in G2.
    pub pi_b: [[String; 2]; 3],
    /// C in G1.
    pub pi_c: [String; 3],
    /// Always "groth16".
    pub protocol: String,
    /// Always "bn128".
    pub curve: String,
}

const PROTOCOL: &str = "groth16";
const CURVE: &str = "bn128";

fn g1_to_json(point: &G1Affine) -> [String; 3] {
    match point.xy() {
        Some((x, y)) => [x.to_string(), y.to_string(), "1".into()],
        None => ["0".into(), "1".into(), "0".into()],
    }
}

fn fq2_to_json(value: &Fq2) -> [String; 2] {
    [value.c0.to_string(), value.c1.to_string()]
}

fn g2_to_json(point: &G2Affine) -> [[String; 2]; 3] {
    match point.xy() {
        Some((x, y)) => [fq2_to_json(&x), fq2_to_json(&y), ["1".into(), "0".into()]],
        None => [["0".into(), "0".into()], ["1".into(), "0".into()], ["0".into(), "0".into()]],
    }
}

/// A canonical decimal below the field's modulus.
fn parse_decimal<F: PrimeField>(what: &'static str, text: &str) -> Result<F, ZkError> {
    if text.is_empty() || text.len() > MAX_DECIMAL_LEN || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ZkError::decode(what, format!("{text:?} is not a decimal field element")));
    }
    let value: F =
        text.parse().map_err(|_| ZkError::decode(what, format!("{text:?} is not a decimal field element")))?;
    // `FromStr` reduces modulo p and accepts leading zeros; only the canonical form is valid.
    if value.to_string() != text {
        return Err(ZkError::decode(what, format!("{text:?} is not canonical (reduced or leading zeros)")));
    }
    Ok(value)
}

fn g1_from_json(what: &'static str, json: &[String; 3]) -> Result<G1Affine, ZkError> {
    let x: Fq = parse_decimal(what, &json[0])?;
    let y: Fq = parse_decimal(what, &json[1])?;
    let z: Fq = parse_decimal(what, &json[2])?;
    let point = if z.is_zero() {
        G1Affine::identity()
    } else if z == Fq::from(1u64) {
        G1Affine::new_unchecked(x, y)
    } else {
        return Err(ZkError::decode(what, "only normalised points (z = 1) are supported"));
    };
    if !point.is_on_curve() || !point.is_in_correct_subgroup_assuming_on_curve() {
        return Err(ZkError::decode(what, "G1 point is not on the curve"));
    }
    Ok(point)
}

fn g2_from_json(what: &'static str, json: &[[String; 2]; 3]) -> Result<G2Affine, ZkError> {
    let fq2 = |pair: &[String; 2]| -> Result<Fq2, ZkError> {
        Ok(Fq2::new(parse_decimal(what, &pair[0])?, parse_decimal(what, &pair[1])?))
    };
    let (x, y, z) = (fq2(&json[0])?, fq2(&json[1])?, fq2(&json[2])?);
    let point = if z.is_zero() {
        G2Affine::identity()
    } else if z == Fq2::new(Fq::from(1u64), Fq::zero()) {
        G2Affine::new_unchecked(x, y)
    } else {
        return Err(ZkError::decode(what, "only normalised points (z = 1) are supported"));
    };
    if !point.is_on_curve() || !point.is_in_correct_subgroup_assuming_on_curve() {
        return Err(ZkError::decode(what, "G2 point is not on the curve or not in the prime-order subgroup"));
    }
    Ok(point)
}

fn check_protocol(what: &'static str, protocol: &str, curve: &str) -> Result<(), ZkError> {
    if protocol != PROTOCOL || curve != CURVE {
        return Err(ZkError::decode(
            what,
            format!("protocol {protocol:?} on curve {curve:?}, expected {PROTOCOL:?} on {CURVE:?}"),
        ));
    }
    Ok(())
}

/// `verification_key.json` for a key.
pub fn verifying_key_to_snarkjs(vk: &ZkVerifyingKey) -> SnarkjsVerifyingKey {
    let key = vk.inner();
    SnarkjsVerifyingKey {
        protocol: PROTOCOL.into(),
        curve: CURVE.into(),
        n_public: key.gamma_abc_g1.len() - 1,
        vk_alpha_1: g1_to_json(&key.alpha_g1),
        vk_beta_2: g2_to_json(&key.beta_g2),
        vk_gamma_2: g2_to_json(&key.gamma_g2),
        vk_delta_2: g2_to_json(&key.delta_g2),
        ic: key.gamma_abc_g1.iter().map(g1_to_json).collect(),
    }
}

/// The arkworks key of a `verification_key.json` (the model spec is not part of snarkjs's
/// format; pair it with the spec it was exported for).
pub fn verifying_key_from_snarkjs(json: &SnarkjsVerifyingKey) -> Result<VerifyingKey<Bn254>, ZkError> {
    const WHAT: &str = "snarkjs verifying key";
    check_protocol(WHAT, &json.protocol, &json.curve)?;
    if json.n_public != NUM_PUBLIC_INPUTS || json.ic.len() != NUM_PUBLIC_INPUTS + 1 {
        return Err(ZkError::decode(
            WHAT,
            format!(
                "nPublic {} with {} IC points, expected {NUM_PUBLIC_INPUTS} and {}",
                json.n_public,
                json.ic.len(),
                NUM_PUBLIC_INPUTS + 1
            ),
        ));
    }
    Ok(VerifyingKey {
        alpha_g1: g1_from_json(WHAT, &json.vk_alpha_1)?,
        beta_g2: g2_from_json(WHAT, &json.vk_beta_2)?,
        gamma_g2: g2_from_json(WHAT, &json.vk_gamma_2)?,
        delta_g2: g2_from_json(WHAT, &json.vk_delta_2)?,
        gamma_abc_g1: json.ic.iter().map(|p| g1_from_json(WHAT, p)).collect::<Result<_, _>>()?,
    })
}

/// `proof.json` for a proof.
pub fn proof_to_snarkjs(proof: &ZkProof) -> SnarkjsProof {
    let inner = proof.inner();
    SnarkjsProof {
        pi_a: g1_to_json(&inner.a),
        pi_b: g2_to_json(&inner.b),
        pi_c: g1_to_json(&inner.c),
        protocol: PROTOCOL.into(),
        curve: CURVE.into(),
    }
}

/// The proof of a `proof.json`.
pub fn proof_from_snarkjs(json: &SnarkjsProof) -> Result<ZkProof, ZkError> {
    const WHAT: &str = "snarkjs proof";
    check_protocol(WHAT, &json.protocol, &json.curve)?;
    Ok(ZkProof::from_inner(Proof {
        a: g1_from_json(WHAT, &json.pi_a)?,
        b: g2_from_json(WHAT, &json.pi_b)?,
        c: g1_from_json(WHAT, &json.pi_c)?,
    }))
}

/// `public.json` for public inputs.
pub fn public_inputs_to_snarkjs(public_inputs: &PublicInputs) -> Vec<String> {
    public_inputs.to_field_elements().iter().map(|f| f.to_string()).collect()
}

/// The public inputs of a `public.json`.
pub fn public_inputs_from_snarkjs(json: &[String]) -> Result<PublicInputs, ZkError> {
    let elements =
        json.iter().map(|s| parse_decimal::<Fr>("snarkjs public inputs", s)).collect::<Result<Vec<_>, _>>()?;
    PublicInputs::from_field_elements(&elements)
}
