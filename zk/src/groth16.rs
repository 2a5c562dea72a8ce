//! Setup, proving and verification with Groth16 on BN254, and canonical byte encodings.
//!
//! A key is bound to one [`ModelSpec`] and one step count `c`: the circuit's shape depends on
//! both. Keys carry them in a small header so a prover cannot pair a key with the wrong
//! model silently.
//!
//! # Trusted setup
//! [`setup`] draws the Groth16 trapdoor (α, β, γ, δ, τ and the group generators) from the
//! caller's RNG and discards it when it returns. Whoever runs it must be trusted to have
//! forgotten it: anyone holding the trapdoor can forge proofs of false statements for this
//! key (it cannot reveal witnesses, because proofs are zero-knowledge for everyone). See
//! `docs/zk.md` for who runs it in Trellis and what a multi-party ceremony would change.
//!
//! # Byte encodings (all little-endian, points in arkworks' compressed form)
//! - proof: `ark_groth16::Proof` compressed, exactly [`PROOF_BYTES`] = 128 bytes
//!   (A in G1: 32, B in G2: 64, C in G1: 32);
//! - public inputs: the four field elements of [`PublicInputs::to_field_elements`],
//!   32 bytes each (canonical, below the modulus);
//! - verifying key: `b"TRZKVK01"`, spec length (u16), spec text (canonical `Display`),
//!   steps (u32), then `ark_groth16::VerifyingKey` compressed;
//! - proving key: the same with `b"TRZKPK01"` and `ark_groth16::ProvingKey` compressed.
//!
//! Decoders reject trailing bytes, points off the curve or outside the prime-order subgroup,
//! non-canonical field elements, unknown headers and oversized specs, with an error, never a
//! panic. The proving-key decoder skips the (slow) subgroup checks, since a prover only ever
//! loads its own key and a bad one can only make proofs that fail.

use ark_bn254::{Bn254, Fr};
use ark_groth16::{prepare_verifying_key, Groth16, PreparedVerifyingKey, Proof, ProvingKey, VerifyingKey};
use ark_serialize::{CanonicalDeserialize, CanonicalSerialize, Compress, Validate};
use ark_snark::SNARK;
use rand_core::{CryptoRng, CryptoRngCore, OsRng, RngCore};

use crate::circuit::{check_steps, PublicInputs, TrainingCircuit, NUM_PUBLIC_INPUTS};
use crate::error::ZkError;
use crate::model::{self, Batch, ModelSpec, Weights, MAX_SPEC_LEN};

/// Size of an encoded proof.
pub const PROOF_BYTES: usize = 128;
/// Size of encoded public inputs.
pub const PUBLIC_INPUTS_BYTES: usize = 32 * NUM_PUBLIC_INPUTS;
const VERIFYING_KEY_MAGIC: &[u8; 8] = b"TRZKVK01";
const PROVING_KEY_MAGIC: &[u8; 8] = b"TRZKPK01";

/// A Groth16 proving key for `steps` steps of `spec`.
#[derive(Clone, Debug)]
pub struct ZkProvingKey {
    spec: ModelSpec,
    steps: u32,
    key: ProvingKey<Bn254>,
}

/// A Groth16 verifying key for `steps` steps of `spec`.
#[derive(Clone, Debug, PartialEq)]
pub struct ZkVerifyingKey {
    spec: ModelSpec,
    steps: u32,
    key: VerifyingKey<Bn254>,
}

/// A Groth16 proof.
#[derive(Clone, Debug, PartialEq)]
pub struct ZkProof {
    proof: Proof<Bn254>,
}

/// What [`prove`] returns: the proof, its statement, and the weights it proves.
#[derive(Clone, Debug)]
pub struct ProvenSteps {
    /// The proof.
    pub proof: ZkProof,
    /// The statement it proves.
    pub public_inputs: PublicInputs,
    /// The weights after the steps (committed to by `public_inputs.weights_after`).
    pub weights_after: Weights,
}

/// The caller's cryptographic RNG behind one concrete type, so that Groth16's setup and prover
/// (generic over the RNG) are compiled once, here, instead of in every crate and test that
/// calls [`setup`] or [`prove_with_rng`] with its own RNG type. The draws are the caller's own,
/// in the same order: a seeded RNG still gives the same keys and proofs.
struct CallersRng<'a>(&'a mut dyn CryptoRngCore);

impl RngCore for CallersRng<'_> {
    fn next_u32(&mut self) -> u32 {
        self.0.next_u32()
    }
    fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        self.0.fill_bytes(dest)
    }
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
        self.0.try_fill_bytes(dest)
    }
}

// The wrapped RNG is cryptographic: `CryptoRngCore` is only implemented for `CryptoRng`s.
impl CryptoRng for CallersRng<'_> {}

/// Generate keys for `steps` steps of `spec`, with the trapdoor drawn from `rng`.
///
/// Use an OS-seeded RNG (e.g. `rand_core::OsRng`) for real keys; a seeded RNG makes keys
/// reproducible, which is only acceptable in tests because anyone knowing the seed can
/// recompute the trapdoor and forge proofs.
pub fn setup<R: RngCore + CryptoRng>(
    spec: &ModelSpec,
    steps: u32,
    rng: &mut R,
) -> Result<(ZkProvingKey, ZkVerifyingKey), ZkError> {
    setup_from(spec, steps, &mut CallersRng(rng))
}

fn setup_from(
    spec: &ModelSpec,
    steps: u32,
    rng: &mut CallersRng<'_>,
) -> Result<(ZkProvingKey, ZkVerifyingKey), ZkError> {
    let circuit = TrainingCircuit::blank(spec, steps)?;
    let (key, verifying) = Groth16::<Bn254>::circuit_specific_setup(circuit, rng)?;
    Ok((ZkProvingKey { spec: spec.clone(), steps, key }, ZkVerifyingKey { spec: spec.clone(), steps, key: verifying }))
}

/// Run the reference trainer over `batches` (one per step) and prove the result, with
/// zero-knowledge randomness from the operating system.
pub fn prove(pk: &ZkProvingKey, weights_before: &Weights, batches: &[Batch]) -> Result<ProvenSteps, ZkError> {
    prove_with_rng(pk, weights_before, batches, &mut OsRng)
}

/// [`prove`] with the caller's randomness (tests use a seeded RNG for reproducible runs; the
/// randomness only hides the witness, it never affects soundness).
pub fn prove_with_rng<R: RngCore + CryptoRng>(
    pk: &ZkProvingKey,
    weights_before: &Weights,
    batches: &[Batch],
    rng: &mut R,
) -> Result<ProvenSteps, ZkError> {
    prove_from(pk, weights_before, batches, &mut CallersRng(rng))
}

fn prove_from(
    pk: &ZkProvingKey,
    weights_before: &Weights,
    batches: &[Batch],
    rng: &mut CallersRng<'_>,
) -> Result<ProvenSteps, ZkError> {
    if batches.len() != pk.steps as usize {
        return Err(ZkError::BatchCount { expected: pk.steps, got: batches.len() });
    }
    let weights_after = model::train(&pk.spec, weights_before, batches)?;
    let public_inputs = PublicInputs::of_run(&pk.spec, weights_before, &weights_after, batches);
    let circuit = TrainingCircuit::new(&pk.spec, weights_before, batches, public_inputs)?;
    let proof = ZkProof { proof: Groth16::<Bn254>::prove(&pk.key, circuit, rng)? };
    // A release build of the prover does not check the witness, so an unsatisfied circuit
    // would yield a proof that fails later at a checker. Verifying costs milliseconds next
    // to seconds of proving, and turns such a bug into an error here.
    match PreparedVerifier::new(&pk.verifying_key()).verify(&public_inputs, &proof) {
        Ok(()) => Ok(ProvenSteps { proof, public_inputs, weights_after }),
        Err(ZkError::Rejected) => Err(ZkError::SelfCheckFailed),
        Err(other) => Err(other),
    }
}

/// Check a proof: `Ok(())` if it proves `public_inputs` under `vk`, [`ZkError::Rejected`] if
/// not, [`ZkError::StepMismatch`] if the public inputs name another step count than the key.
pub fn verify(vk: &ZkVerifyingKey, public_inputs: &PublicInputs, proof: &ZkProof) -> Result<(), ZkError> {
    PreparedVerifier::new(vk).verify(public_inputs, proof)
}

/// A verifying key with its pairing precomputation done once, for checkers that verify many
/// proofs under one key.
#[derive(Clone, Debug)]
pub struct PreparedVerifier {
    spec: ModelSpec,
    steps: u32,
    prepared: PreparedVerifyingKey<Bn254>,
}

impl PreparedVerifier {
    /// Precompute `e(α, β)` and the prepared G2 points.
    pub fn new(vk: &ZkVerifyingKey) -> Self {
        PreparedVerifier { spec: vk.spec.clone(), steps: vk.steps, prepared: prepare_verifying_key(&vk.key) }
    }

    /// The model the key verifies steps of.
    pub fn spec(&self) -> &ModelSpec {
        &self.spec
    }

    /// Steps per proof.
    pub fn steps(&self) -> u32 {
        self.steps
    }

    /// See [`verify`].
    pub fn verify(&self, public_inputs: &PublicInputs, proof: &ZkProof) -> Result<(), ZkError> {
        if public_inputs.steps != self.steps {
            return Err(ZkError::StepMismatch { expected: self.steps, got: public_inputs.steps });
        }
        if self.verify_field_elements(&public_inputs.to_field_elements(), proof)? {
            Ok(())
        } else {
            Err(ZkError::Rejected)
        }
    }

    /// The bare Groth16 check on raw public inputs (exactly [`NUM_PUBLIC_INPUTS`] of them:
    /// arkworks would silently ignore extra ones, so the count is checked here).
    pub fn verify_field_elements(&self, public_inputs: &[Fr], proof: &ZkProof) -> Result<bool, ZkError> {
        if public_inputs.len() != NUM_PUBLIC_INPUTS {
            return Err(ZkError::decode(
                "public inputs",
                format!("{} field elements, expected {NUM_PUBLIC_INPUTS}", public_inputs.len()),
            ));
        }
        Ok(Groth16::<Bn254>::verify_proof(&self.prepared, &proof.proof, public_inputs)?)
    }
}

impl ZkProvingKey {
    /// The model this key proves steps of.
    pub fn spec(&self) -> &ModelSpec {
        &self.spec
    }

    /// Steps per proof.
    pub fn steps(&self) -> u32 {
        self.steps
    }

    /// The matching verifying key (a proving key contains it).
    pub fn verifying_key(&self) -> ZkVerifyingKey {
        ZkVerifyingKey { spec: self.spec.clone(), steps: self.steps, key: self.key.vk.clone() }
    }

    /// The arkworks key.
    pub fn inner(&self) -> &ProvingKey<Bn254> {
        &self.key
    }

    /// Canonical bytes (module docs).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = header(PROVING_KEY_MAGIC, &self.spec, self.steps);
        self.key.serialize_compressed(&mut out).expect("writing to a Vec cannot fail");
        out
    }

    /// Decode [`ZkProvingKey::to_bytes`] output.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, ZkError> {
        const WHAT: &str = "proving key";
        let (spec, steps, mut rest) = read_header(WHAT, PROVING_KEY_MAGIC, bytes)?;
        let key = ProvingKey::<Bn254>::deserialize_with_mode(&mut rest, Compress::Yes, Validate::No)
            .map_err(|e| ZkError::decode(WHAT, e))?;
        expect_end(WHAT, rest)?;
        if key.vk.gamma_abc_g1.len() != NUM_PUBLIC_INPUTS + 1 {
            return Err(ZkError::decode(WHAT, "wrong number of public-input points"));
        }
        Ok(ZkProvingKey { spec, steps, key })
    }
}

impl ZkVerifyingKey {
    /// The model this key checks steps of.
    pub fn spec(&self) -> &ModelSpec {
        &self.spec
    }

    /// Steps per proof.
    pub fn steps(&self) -> u32 {
        self.steps
    }

    /// The arkworks key.
    pub fn inner(&self) -> &VerifyingKey<Bn254> {
        &self.key
    }

    /// Canonical bytes (module docs).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = header(VERIFYING_KEY_MAGIC, &self.spec, self.steps);
        self.key.serialize_compressed(&mut out).expect("writing to a Vec cannot fail");
        out
    }

    /// Decode [`ZkVerifyingKey::to_bytes`] output, validating every point.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, ZkError> {
        const WHAT: &str = "verifying key";
        let (spec, steps, mut rest) = read_header(WHAT, VERIFYING_KEY_MAGIC, bytes)?;
        let key = VerifyingKey::<Bn254>::deserialize_compressed(&mut rest).map_err(|e| ZkError::decode(WHAT, e))?;
        expect_end(WHAT, rest)?;
        if key.gamma_abc_g1.len() != NUM_PUBLIC_INPUTS + 1 {
            return Err(ZkError::decode(WHAT, "wrong number of public-input points"));
        }
        Ok(ZkVerifyingKey { spec, steps, key })
    }
}

impl ZkProof {
    /// The arkworks proof.
    pub fn inner(&self) -> &Proof<Bn254> {
        &self.proof
    }

    /// Wrap an arkworks proof (e.g. one read from snarkjs JSON).
    pub fn from_inner(proof: Proof<Bn254>) -> Self {
        ZkProof { proof }
    }

    /// Canonical bytes: the compressed arkworks proof, [`PROOF_BYTES`] long.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(PROOF_BYTES);
        self.proof.serialize_compressed(&mut out).expect("writing to a Vec cannot fail");
        out
    }

    /// Decode untrusted bytes: exact length, points on the curve and in the subgroup.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, ZkError> {
        const WHAT: &str = "proof";
        if bytes.len() != PROOF_BYTES {
            return Err(ZkError::decode(WHAT, format!("{} bytes, expected {PROOF_BYTES}", bytes.len())));
        }
        let proof = Proof::<Bn254>::deserialize_compressed(bytes).map_err(|e| ZkError::decode(WHAT, e))?;
        Ok(ZkProof { proof })
    }
}

impl PublicInputs {
    /// Canonical bytes (module docs), [`PUBLIC_INPUTS_BYTES`] long.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(PUBLIC_INPUTS_BYTES);
        for element in self.to_field_elements() {
            element.serialize_compressed(&mut out).expect("writing to a Vec cannot fail");
        }
        out
    }

    /// Decode untrusted bytes: exact length, canonical field elements, a `u32` step count.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, ZkError> {
        const WHAT: &str = "public inputs";
        if bytes.len() != PUBLIC_INPUTS_BYTES {
            return Err(ZkError::decode(WHAT, format!("{} bytes, expected {PUBLIC_INPUTS_BYTES}", bytes.len())));
        }
        let mut elements = Vec::with_capacity(NUM_PUBLIC_INPUTS);
        for chunk in bytes.chunks(32) {
            elements.push(Fr::deserialize_compressed(chunk).map_err(|e| ZkError::decode(WHAT, e))?);
        }
        PublicInputs::from_field_elements(&elements)
    }
}

fn header(magic: &[u8; 8], spec: &ModelSpec, steps: u32) -> Vec<u8> {
    let text = spec.to_string();
    let mut out = Vec::with_capacity(8 + 2 + text.len() + 4);
    out.extend_from_slice(magic);
    out.extend_from_slice(&(text.len() as u16).to_le_bytes());
    out.extend_from_slice(text.as_bytes());
    out.extend_from_slice(&steps.to_le_bytes());
    out
}

fn read_header<'a>(
    what: &'static str,
    magic: &[u8; 8],
    bytes: &'a [u8],
) -> Result<(ModelSpec, u32, &'a [u8]), ZkError> {
    let short = || ZkError::decode(what, "truncated header");
    let rest = bytes
        .strip_prefix(magic.as_slice())
        .ok_or_else(|| ZkError::decode(what, format!("does not start with {:?}", String::from_utf8_lossy(magic))))?;
    let (length, rest) = rest.split_first_chunk::<2>().ok_or_else(short)?;
    let length = u16::from_le_bytes(*length) as usize;
    if length > MAX_SPEC_LEN {
        return Err(ZkError::decode(what, format!("model spec of {length} bytes exceeds {MAX_SPEC_LEN}")));
    }
    if rest.len() < length {
        return Err(short());
    }
    let (text, rest) = rest.split_at(length);
    let text = std::str::from_utf8(text).map_err(|_| ZkError::decode(what, "model spec is not UTF-8"))?;
    let spec: ModelSpec = text.parse()?;
    let (steps, rest) = rest.split_first_chunk::<4>().ok_or_else(short)?;
    let steps = u32::from_le_bytes(*steps);
    check_steps(steps)?;
    Ok((spec, steps, rest))
}

fn expect_end(what: &'static str, rest: &[u8]) -> Result<(), ZkError> {
    if rest.is_empty() {
        Ok(())
    } else {
        Err(ZkError::decode(what, format!("{} trailing bytes", rest.len())))
    }
}
