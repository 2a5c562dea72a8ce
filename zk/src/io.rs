//! Files: keys, proofs, public inputs, weights, batches and the snarkjs JSON trio.
//!
//! These are what `trellis zk setup|prove|verify` read and write, so those commands stay thin.
//! Every reader checks the file's size against a limit before reading it, and decodes with
//! the canonical decoders (errors, never panics). File names a directory layout uses are
//! constants here, so every tool agrees on them.
//!
//! Binary formats of the trainer's inputs (little-endian):
//! - weights: `b"TRZKWT01"`, count (u32), then `count` i32 values in the canonical flat order
//!   of [`Weights::flatten`];
//! - batches: `b"TRZKBT01"`, steps, batch, inputs (u32 each), then per example its `inputs`
//!   i32 features and its u32 label, batch by batch.

use std::fs;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::circuit::{PublicInputs, MAX_STEPS};
use crate::error::ZkError;
use crate::groth16::{ZkProof, ZkProvingKey, ZkVerifyingKey};
use crate::model::{Batch, Example, ModelSpec, Weights, MAX_PARAMETERS};
use crate::snarkjs::{self, SnarkjsProof, SnarkjsVerifyingKey};

/// Proving key file in a key directory.
pub const PROVING_KEY_FILE: &str = "proving_key.bin";
/// Verifying key file in a key directory.
pub const VERIFYING_KEY_FILE: &str = "verifying_key.bin";
/// Proof file.
pub const PROOF_FILE: &str = "proof.bin";
/// Public inputs file.
pub const PUBLIC_INPUTS_FILE: &str = "public_inputs.bin";
/// snarkjs verifying key.
pub const SNARKJS_VERIFYING_KEY_FILE: &str = "verification_key.json";
/// snarkjs proof.
pub const SNARKJS_PROOF_FILE: &str = "proof.json";
/// snarkjs public inputs.
pub const SNARKJS_PUBLIC_FILE: &str = "public.json";

/// Largest proving key file read (a key for a circuit far beyond what proves in minutes).
pub const MAX_PROVING_KEY_FILE: u64 = 16 << 30;
/// Largest verifying key file read.
pub const MAX_VERIFYING_KEY_FILE: u64 = 64 << 10;
/// Largest proof or public-inputs file read.
pub const MAX_PROOF_FILE: u64 = 4 << 10;
/// Largest snarkjs JSON file read.
pub const MAX_JSON_FILE: u64 = 64 << 10;
/// Largest batches file read (steps × batch × inputs is bounded by the spec limits).
pub const MAX_BATCHES_FILE: u64 = 1 << 30;

const WEIGHTS_MAGIC: &[u8; 8] = b"TRZKWT01";
const BATCHES_MAGIC: &[u8; 8] = b"TRZKBT01";

fn io_error(path: &Path, source: std::io::Error) -> ZkError {
    ZkError::Io { path: path.to_path_buf(), source }
}

/// Read a whole file after checking its size.
fn read_limited(path: &Path, limit: u64) -> Result<Vec<u8>, ZkError> {
    let size = fs::metadata(path).map_err(|e| io_error(path, e))?.len();
    if size > limit {
        return Err(io_error(
            path,
            std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{size} bytes exceeds the limit of {limit}")),
        ));
    }
    fs::read(path).map_err(|e| io_error(path, e))
}

fn write(path: &Path, bytes: &[u8]) -> Result<(), ZkError> {
    fs::write(path, bytes).map_err(|e| io_error(path, e))
}

fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), ZkError> {
    let mut text = serde_json::to_string_pretty(value).expect("plain structs always serialize");
    text.push('\n');
    write(path, text.as_bytes())
}

fn read_json<T: DeserializeOwned>(what: &'static str, path: &Path) -> Result<T, ZkError> {
    let bytes = read_limited(path, MAX_JSON_FILE)?;
    serde_json::from_slice(&bytes).map_err(|e| ZkError::decode(what, format!("{}: {e}", path.display())))
}

/// Write both keys into `dir` (created if missing) as [`PROVING_KEY_FILE`] and
/// [`VERIFYING_KEY_FILE`], plus the snarkjs [`SNARKJS_VERIFYING_KEY_FILE`]. Returns the paths.
pub fn write_keys(dir: &Path, pk: &ZkProvingKey, vk: &ZkVerifyingKey) -> Result<Vec<PathBuf>, ZkError> {
    fs::create_dir_all(dir).map_err(|e| io_error(dir, e))?;
    let paths = vec![dir.join(PROVING_KEY_FILE), dir.join(VERIFYING_KEY_FILE), dir.join(SNARKJS_VERIFYING_KEY_FILE)];
    write(&paths[0], &pk.to_bytes())?;
    write(&paths[1], &vk.to_bytes())?;
    write_json(&paths[2], &snarkjs::verifying_key_to_snarkjs(vk))?;
    Ok(paths)
}

/// Read a proving key file.
pub fn read_proving_key(path: &Path) -> Result<ZkProvingKey, ZkError> {
    ZkProvingKey::from_bytes(&read_limited(path, MAX_PROVING_KEY_FILE)?)
}

/// Write a verifying key file.
pub fn write_verifying_key(path: &Path, vk: &ZkVerifyingKey) -> Result<(), ZkError> {
    write(path, &vk.to_bytes())
}

/// Read a verifying key file.
pub fn read_verifying_key(path: &Path) -> Result<ZkVerifyingKey, ZkError> {
    ZkVerifyingKey::from_bytes(&read_limited(path, MAX_VERIFYING_KEY_FILE)?)
}

/// Write a proof file.
pub fn write_proof(path: &Path, proof: &ZkProof) -> Result<(), ZkError> {
    write(path, &proof.to_bytes())
}

/// Read a proof file.
pub fn read_proof(path: &Path) -> Result<ZkProof, ZkError> {
    ZkProof::from_bytes(&read_limited(path, MAX_PROOF_FILE)?)
}

/// Write a public-inputs file.
pub fn write_public_inputs(path: &Path, public_inputs: &PublicInputs) -> Result<(), ZkError> {
    write(path, &public_inputs.to_bytes())
}

/// Read a public-inputs file.
pub fn read_public_inputs(path: &Path) -> Result<PublicInputs, ZkError> {
    PublicInputs::from_bytes(&read_limited(path, MAX_PROOF_FILE)?)
}

/// Write the snarkjs trio (`verification_key.json`, `proof.json`, `public.json`) into `dir`
/// (created if missing). Returns the paths.
pub fn write_snarkjs(
    dir: &Path,
    vk: &ZkVerifyingKey,
    proof: &ZkProof,
    public_inputs: &PublicInputs,
) -> Result<Vec<PathBuf>, ZkError> {
    fs::create_dir_all(dir).map_err(|e| io_error(dir, e))?;
    let paths = vec![dir.join(SNARKJS_VERIFYING_KEY_FILE), dir.join(SNARKJS_PROOF_FILE), dir.join(SNARKJS_PUBLIC_FILE)];
    write_json(&paths[0], &snarkjs::verifying_key_to_snarkjs(vk))?;
    write_json(&paths[1], &snarkjs::proof_to_snarkjs(proof))?;
    write_json(&paths[2], &snarkjs::public_inputs_to_snarkjs(public_inputs))?;
    Ok(paths)
}

/// Read a snarkjs `verification_key.json` (the arkworks key; snarkjs files carry no spec).
pub fn read_snarkjs_verifying_key(path: &Path) -> Result<ark_groth16::VerifyingKey<ark_bn254::Bn254>, ZkError> {
    let json: SnarkjsVerifyingKey = read_json("snarkjs verifying key", path)?;
    snarkjs::verifying_key_from_snarkjs(&json)
}

/// Read a snarkjs `proof.json`.
pub fn read_snarkjs_proof(path: &Path) -> Result<ZkProof, ZkError> {
    let json: SnarkjsProof = read_json("snarkjs proof", path)?;
    snarkjs::proof_from_snarkjs(&json)
}

/// Read a snarkjs `public.json`.
pub fn read_snarkjs_public_inputs(path: &Path) -> Result<PublicInputs, ZkError> {
    let json: Vec<String> = read_json("snarkjs public inputs", path)?;
    snarkjs::public_inputs_from_snarkjs(&json)
}

/// Canonical bytes of weights (module docs).
pub fn encode_weights(weights: &Weights) -> Vec<u8> {
    let flat = weights.flatten();
    let mut out = Vec::with_capacity(12 + 4 * flat.len());
    out.extend_from_slice(WEIGHTS_MAGIC);
    out.extend_from_slice(&(flat.len() as u32).to_le_bytes());
    for v in flat {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

/// Decode weights for `spec`; the count must match the spec exactly.
pub fn decode_weights(spec: &ModelSpec, bytes: &[u8]) -> Result<Weights, ZkError> {
    const WHAT: &str = "weights";
    let rest = bytes
        .strip_prefix(WEIGHTS_MAGIC.as_slice())
        .ok_or_else(|| ZkError::decode(WHAT, "does not start with \"TRZKWT01\""))?;
    let (count, rest) = rest.split_first_chunk::<4>().ok_or_else(|| ZkError::decode(WHAT, "truncated header"))?;
    let count = u32::from_le_bytes(*count) as usize;
    if count != spec.num_parameters() || rest.len() != 4 * count {
        return Err(ZkError::decode(
            WHAT,
            format!("{count} values in {} bytes, but {spec} has {} parameters", rest.len(), spec.num_parameters()),
        ));
    }
    let flat: Vec<i32> = rest.chunks_exact(4).map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
    Ok(Weights::from_flat(spec, &flat)?)
}

/// Write weights.
pub fn write_weights(path: &Path, weights: &Weights) -> Result<(), ZkError> {
    write(path, &encode_weights(weights))
}

/// Read weights for `spec`.
pub fn read_weights(path: &Path, spec: &ModelSpec) -> Result<Weights, ZkError> {
    decode_weights(spec, &read_limited(path, 12 + 4 * MAX_PARAMETERS as u64)?)
}

/// Canonical bytes of the batches of consecutive steps (module docs).
pub fn encode_batches(spec: &ModelSpec, batches: &[Batch]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(BATCHES_MAGIC);
    for header in [batches.len(), spec.batch(), spec.inputs()] {
        out.extend_from_slice(&(header as u32).to_le_bytes());
    }
    for batch in batches {
        for example in &batch.examples {
            for x in &example.features {
                out.extend_from_slice(&x.to_le_bytes());
            }
            out.extend_from_slice(&example.label.to_le_bytes());
        }
    }
    out
}

/// Decode batches for `spec`: the header must match the spec, labels must be classes.
pub fn decode_batches(spec: &ModelSpec, bytes: &[u8]) -> Result<Vec<Batch>, ZkError> {
    const WHAT: &str = "batches";
    let rest = bytes
        .strip_prefix(BATCHES_MAGIC.as_slice())
        .ok_or_else(|| ZkError::decode(WHAT, "does not start with \"TRZKBT01\""))?;
    let mut words = rest.chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]));
    if rest.len() % 4 != 0 || rest.len() < 12 {
        return Err(ZkError::decode(WHAT, "truncated"));
    }
    let mut next = || words.next().expect("length checked above");
    let (steps, batch, inputs) = (next(), next() as usize, next() as usize);
    if steps == 0 || steps > MAX_STEPS || batch != spec.batch() || inputs != spec.inputs() {
        return Err(ZkError::decode(
            WHAT,
            format!("{steps} steps of batch {batch} × {inputs} inputs does not fit {spec} (at most {MAX_STEPS} steps)"),
        ));
    }
    let expected_words = 3 + steps as usize * batch * (inputs + 1);
    if rest.len() / 4 != expected_words {
        return Err(ZkError::decode(WHAT, format!("{} bytes, expected {}", bytes.len(), 8 + 4 * expected_words)));
    }
    let mut batches = Vec::with_capacity(steps as usize);
    for index in 0..steps as usize {
        let mut examples = Vec::with_capacity(batch);
        for _ in 0..batch {
            let features = (0..inputs).map(|_| next() as i32).collect();
            examples.push(Example { features, label: next() });
        }
        let batch = Batch { examples };
        batch.check_shape(spec, index)?;
        batches.push(batch);
    }
    Ok(batches)
}

/// Write batches.
pub fn write_batches(path: &Path, spec: &ModelSpec, batches: &[Batch]) -> Result<(), ZkError> {
    write(path, &encode_batches(spec, batches))
}

/// Read batches for `spec`.
pub fn read_batches(path: &Path, spec: &ModelSpec) -> Result<Vec<Batch>, ZkError> {
    decode_batches(spec, &read_limited(path, MAX_BATCHES_FILE)?)
}
