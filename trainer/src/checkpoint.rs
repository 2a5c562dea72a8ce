//! Canonical checkpoints: weights, AdamW moments and step in one fixed byte layout, hashed with
//! blake3, so that a checkpoint's hash is a fingerprint of the training state.
//!
//! Layout (all integers little-endian):
//!
//! ```text
//! "TRLSCKPT"            8-byte magic
//! u32 version = 1
//! u64 step              optimizer steps taken
//! u32 n                 number of parameter tensors
//! n × { u16 name length, name (UTF-8), u8 rank, rank × u64 dims }
//! weights:        for each tensor in order, its elements as f32 LE (row-major)
//! first moments:  likewise
//! second moments: likewise
//! ```
//!
//! Nothing that varies between runs (time, host, paths) is in the bytes.

use std::path::Path;

use thiserror::Error;
use trellis_proto::{Hash, HashDomain};

use crate::model::{flatten, unflatten_into, Gpt};
use crate::optim::AdamW;

const MAGIC: &[u8; 8] = b"TRLSCKPT";
const VERSION: u32 = 1;
/// Largest checkpoint read from disk or the network (a 1B-parameter model with moments).
pub const MAX_CHECKPOINT_BYTES: u64 = 13 * 1024 * 1024 * 1024;

#[derive(Debug, Error)]
pub enum CheckpointError {
    #[error("checkpoint is malformed: {0}")]
    Malformed(&'static str),
    #[error("checkpoint does not fit this model: {0}")]
    Mismatch(String),
    #[error("checkpoint {path}: {source}")]
    Io { path: std::path::PathBuf, source: std::io::Error },
    #[error("checkpoint {path} hashes to {actual}, expected {expected}")]
    HashMismatch { path: std::path::PathBuf, expected: Hash, actual: Hash },
}

/// The hash of canonical checkpoint bytes.
pub fn checkpoint_hash(bytes: &[u8]) -> Hash {
    Hash::digest(HashDomain::Checkpoint, bytes)
}

/// Flushes subnormal values of the weights and AdamW moments to zero, in place, then serialises
/// the state canonically: what a trail checkpoint is. Honest checkpoints therefore never hold a
/// subnormal, and a checker refuses one that does (`trellis_protocol::judge::check_state`): no
/// backend's denormal handling can make re-executions from a checkpoint differ.
pub fn capture(model: &Gpt, optimizer: &AdamW) -> Vec<u8> {
    let bytes = to_bytes(model, optimizer);
    // Subnormals are rare: scan the serialised state, and touch the tensors only when one is there.
    let state = &bytes[bytes.len() - 12 * model.numel()..];
    // Branch-free over all values (no early exit), so that the compiler vectorises the scan.
    let subnormal = state.chunks_exact(4).fold(false, |found, b| {
        let bits = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        found | ((bits & 0x7f80_0000 == 0) & (bits & 0x007f_ffff != 0))
    });
    if !subnormal {
        return bytes;
    }
    flush_subnormals(model, optimizer);
    to_bytes(model, optimizer)
}

/// Sets every subnormal value of the weights and moments to zero (signed zeros are kept).
pub fn flush_subnormals(model: &Gpt, optimizer: &AdamW) {
    tch::no_grad(|| {
        let tensors = model
            .parameters()
            .iter()
            .map(|p| &p.tensor)
            .chain(&optimizer.first_moments)
            .chain(&optimizer.second_moments);
        for tensor in tensors {
            let mask = tensor.abs().lt(f64::from(f32::MIN_POSITIVE)).logical_and(&tensor.ne(0.0));
            let _ = tensor.shallow_clone().masked_fill_(&mask, 0.0);
        }
    });
}

/// Serialises the model's weights and the optimizer's state canonically, as they are.
pub fn to_bytes(model: &Gpt, optimizer: &AdamW) -> Vec<u8> {
    let parameters = model.parameters();
    let mut out = Vec::with_capacity(32 + model.numel() * 12);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&optimizer.step.to_le_bytes());
    out.extend_from_slice(&(parameters.len() as u32).to_le_bytes());
    for parameter in parameters {
        let name = parameter.name.as_bytes();
        out.extend_from_slice(&(name.len() as u16).to_le_bytes());
        out.extend_from_slice(name);
        let dims = parameter.tensor.size();
        out.push(dims.len() as u8);
        for dim in dims {
            out.extend_from_slice(&(dim as u64).to_le_bytes());
        }
    }
    for section in [
        flatten(parameters.iter().map(|p| &p.tensor)),
        flatten(optimizer.first_moments.iter()),
        flatten(optimizer.second_moments.iter()),
    ] {
        push_f32s(&mut out, &section);
    }
    out
}

fn push_f32s(out: &mut Vec<u8>, values: &[f32]) {
    out.reserve(values.len() * 4);
    for value in values {
        out.extend_from_slice(&value.to_le_bytes());
    }
}

/// A decoded checkpoint, held as flat vectors in canonical order.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckpointData {
    pub step: u64,
    pub names: Vec<String>,
    pub shapes: Vec<Vec<i64>>,
    pub weights: Vec<f32>,
    pub first_moments: Vec<f32>,
    pub second_moments: Vec<f32>,
}

struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], CheckpointError> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.bytes.len()).ok_or(CheckpointError::Malformed(what))?;
        let slice = &self.bytes[self.at..end];
        self.at = end;
        Ok(slice)
    }
    fn u8(&mut self, what: &'static str) -> Result<u8, CheckpointError> {
        Ok(self.take(1, what)?[0])
    }
    fn u16(&mut self, what: &'static str) -> Result<u16, CheckpointError> {
        Ok(u16::from_le_bytes(self.take(2, what)?.try_into().expect("2 bytes")))
    }
    fn u32(&mut self, what: &'static str) -> Result<u32, CheckpointError> {
        Ok(u32::from_le_bytes(self.take(4, what)?.try_into().expect("4 bytes")))
    }
    fn u64(&mut self, what: &'static str) -> Result<u64, CheckpointError> {
        Ok(u64::from_le_bytes(self.take(8, what)?.try_into().expect("8 bytes")))
    }
    fn f32s(&mut self, n: usize, what: &'static str) -> Result<Vec<f32>, CheckpointError> {
        let bytes = self.take(n.checked_mul(4).ok_or(CheckpointError::Malformed(what))?, what)?;
        Ok(bytes.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes"))).collect())
    }
}

impl CheckpointData {
    /// Parses canonical bytes; every size is checked against the input before use.
    pub fn parse(bytes: &[u8]) -> Result<Self, CheckpointError> {
        let mut c = Cursor { bytes, at: 0 };
        if c.take(8, "magic")? != MAGIC {
            return Err(CheckpointError::Malformed("not a Trellis checkpoint (bad magic)"));
        }
        if c.u32("version")? != VERSION {
            return Err(CheckpointError::Malformed("unsupported checkpoint version"));
        }
        let step = c.u64("step")?;
        let count = c.u32("tensor count")? as usize;
        // Each tensor header takes at least 3 bytes: bound the count before allocating.
        if count > bytes.len() / 3 {
            return Err(CheckpointError::Malformed("tensor count exceeds the input"));
        }
        let mut names = Vec::with_capacity(count);
        let mut shapes = Vec::with_capacity(count);
        let mut total: usize = 0;
        for _ in 0..count {
            let len = c.u16("name length")? as usize;
            let name = std::str::from_utf8(c.take(len, "name")?)
                .map_err(|_| CheckpointError::Malformed("name is not UTF-8"))?;
            names.push(name.to_string());
            let rank = c.u8("rank")? as usize;
            let mut shape = Vec::with_capacity(rank);
            let mut numel: usize = 1;
            for _ in 0..rank {
                let dim = c.u64("dimension")?;
                let dim = usize::try_from(dim)
                    .ok()
                    .filter(|&d| d <= bytes.len())
                    .ok_or(CheckpointError::Malformed("dimension exceeds the input"))?;
                numel = numel.checked_mul(dim).ok_or(CheckpointError::Malformed("tensor too large"))?;
                shape.push(dim as i64);
            }
            total = total.checked_add(numel).ok_or(CheckpointError::Malformed("tensors too large"))?;
            shapes.push(shape);
        }
        if total.checked_mul(12) != Some(bytes.len() - c.at) {
            return Err(CheckpointError::Malformed("data length does not match the tensor shapes"));
        }
        let weights = c.f32s(total, "weights")?;
        let first_moments = c.f32s(total, "first moments")?;
        let second_moments = c.f32s(total, "second moments")?;
        Ok(Self { step, names, shapes, weights, first_moments, second_moments })
    }

    /// Reads and parses a checkpoint file.
    pub fn read(path: &Path) -> Result<(Self, Hash), CheckpointError> {
        let io = |source| CheckpointError::Io { path: path.to_path_buf(), source };
        let len = std::fs::metadata(path).map_err(io)?.len();
        if len > MAX_CHECKPOINT_BYTES {
            return Err(CheckpointError::Malformed("checkpoint larger than the limit"));
        }
        let bytes = std::fs::read(path).map_err(io)?;
        Ok((Self::parse(&bytes)?, checkpoint_hash(&bytes)))
    }

    /// Loads this checkpoint into `model` and `optimizer`, which must have the same tensors.
    pub fn restore(&self, model: &mut Gpt, optimizer: &mut AdamW) -> Result<(), CheckpointError> {
        let parameters = model.parameters();
        if parameters.len() != self.names.len() {
            return Err(CheckpointError::Mismatch(format!(
                "{} tensors in the checkpoint, {} in the model",
                self.names.len(),
                parameters.len()
            )));
        }
        for ((parameter, name), shape) in parameters.iter().zip(&self.names).zip(&self.shapes) {
            if &parameter.name != name || &parameter.tensor.size() != shape {
                return Err(CheckpointError::Mismatch(format!(
                    "tensor {name} {shape:?} where the model has {} {:?}",
                    parameter.name,
                    parameter.tensor.size()
                )));
            }
        }
        model.set_flat_weights(&self.weights);
        unflatten_into(optimizer.first_moments.iter_mut(), &self.first_moments);
        unflatten_into(optimizer.second_moments.iter_mut(), &self.second_moments);
        optimizer.step = self.step;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// The canonical bytes of `data` (the layout of [`to_bytes`], without needing a model).
    fn encode(data: &CheckpointData) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&data.step.to_le_bytes());
        out.extend_from_slice(&(data.names.len() as u32).to_le_bytes());
        for (name, shape) in data.names.iter().zip(&data.shapes) {
            out.extend_from_slice(&(name.len() as u16).to_le_bytes());
            out.extend_from_slice(name.as_bytes());
            out.push(shape.len() as u8);
            shape.iter().for_each(|&d| out.extend_from_slice(&(d as u64).to_le_bytes()));
        }
        for section in [&data.weights, &data.first_moments, &data.second_moments] {
            push_f32s(&mut out, section);
        }
        out
    }

    fn sample() -> Vec<u8> {
        let values = |offset: f32| (0..10).map(|i| i as f32 * 0.5 + offset).collect::<Vec<_>>();
        encode(&CheckpointData {
            step: 40,
            names: vec!["wte".into(), "ln.bias".into()],
            shapes: vec![vec![2, 3], vec![4]],
            weights: values(0.0),
            first_moments: values(1.0),
            second_moments: values(2.0),
        })
    }

    /// Parses `bytes` (which must not panic); whatever parses has exactly these bytes.
    fn parse_is_canonical(bytes: &[u8]) -> Result<(), TestCaseError> {
        if let Ok(data) = CheckpointData::parse(bytes) {
            prop_assert_eq!(encode(&data), bytes);
        }
        Ok(())
    }

    #[test]
    fn capturing_flushes_subnormals_in_the_state_itself() {
        use crate::model::Preset;
        let mut model = Gpt::new(&Preset::Nano.config(), 1, tch::Device::Cpu).unwrap();
        let optimizer = AdamW::new(crate::optim::AdamWConfig::with_schedule(1e-3, 0, 10), model.parameters());
        let mut weights = model.flat_weights();
        let subnormal = f32::from_bits(7);
        (weights[3], weights[5], weights[8]) = (subnormal, -subnormal, -0.0);
        model.set_flat_weights(&weights);
        let _ = optimizer.second_moments[0].shallow_clone().fill_(f64::from(f32::from_bits(1)));
        let data = CheckpointData::parse(&capture(&model, &optimizer)).unwrap();
        assert_eq!((data.weights[3].to_bits(), data.weights[5].to_bits()), (0, 0), "subnormal weights become +0");
        assert_eq!(data.weights[8].to_bits(), (-0.0f32).to_bits(), "signed zeros are kept");
        assert!(data.second_moments.iter().all(|v| !v.is_subnormal()));
        assert_eq!(
            model.flat_weights()[3].to_bits(),
            0,
            "the live state is flushed too, so training continues from it"
        );
        assert_eq!(data.weights[9], weights[9], "normal values are untouched");
    }

    #[test]
    fn a_checkpoint_parses_and_its_prefixes_do_not() {
        let bytes = sample();
        let data = CheckpointData::parse(&bytes).unwrap();
        assert_eq!((data.step, data.weights.len()), (40, 10));
        assert_eq!(encode(&data), bytes);
        for cut in 0..bytes.len() {
            assert!(CheckpointData::parse(&bytes[..cut]).is_err(), "a prefix of {cut} bytes parsed");
        }
        assert!(CheckpointData::parse(&[bytes.as_slice(), &[0]].concat()).is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2048, ..ProptestConfig::default() })]

        // A checkpoint comes from a miner: no bytes may panic the checker that parses it.
        #[test]
        fn arbitrary_bytes_never_panic(tail in proptest::collection::vec(any::<u8>(), 0..256)) {
            parse_is_canonical(&tail)?;
            // Past the magic and version, where the sizes are read.
            let mut bytes = sample()[..12].to_vec();
            bytes.extend_from_slice(&tail);
            parse_is_canonical(&bytes)?;
        }

        #[test]
        fn edited_checkpoints_never_panic(
            edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..6),
            cut in any::<usize>(),
        ) {
            let mut bytes = sample();
            for (at, byte) in edits {
                let at = at % bytes.len();
                bytes[at] = byte;
            }
            parse_is_canonical(&bytes)?;
            parse_is_canonical(&bytes[..cut % (bytes.len() + 1)])?;
        }
    }
}
