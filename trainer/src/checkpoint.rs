//! Canonical checkpoints: weights, AdamW moments and step in one fixed byte layout, hashed with
//! blake3, so that a checkpoint's hash is a fingerprint of the training state.
//!
//! Layout (all integers little-endian):
//!
//! ```text
//! "TRLSCKPT"            8-byte magic
//! u32 version           1: full, 3: compact
//! u64 step              optimizer steps taken
//! u32 n                 number of parameter tensors
//! n × { u16 name length, name (UTF-8), u8 rank, rank × u64 dims }
//! version 1 (12 bytes a parameter):
//!   weights:        for each tensor in order, its elements as f32 LE (row-major)
//!   first moments:  likewise
//!   second moments: likewise
//! version 3, compact (4 bytes a parameter and one per tensor; `crate::compact`):
//!   n × u8          each tensor's second-moment reference exponent, in 31..=253
//!   drift:          u16 LE bf16 bits of (weight − the round's start weight), per element
//!   first moments:  i8 per element, m / √v̂ in 127ths of the job's bound
//!   second moments: u8 code per element (0 is zero; then 5 exponent and 3 mantissa bits)
//! ```
//!
//! A compact checkpoint is read against the round's start weights and the bound of the job's
//! AdamW betas ([`CompactBase`]); a trail that takes them rounds its live state to what they hold
//! first ([`capture_compact`]), so training continues from the recorded state. Parsing refuses
//! a drift that is not finite, a reference exponent out of range, a first-moment code of -128 and
//! a first moment beside a zero second moment; whatever parses decodes to finite, normal (or
//! zero) values and non-negative second moments.
//!
//! Nothing that varies between runs (time, host, paths) is in the bytes.

use std::path::Path;

use thiserror::Error;
use trellis_proto::{Hash, HashDomain};

use crate::model::{overwrite, tensor_values, Gpt};
use crate::optim::AdamW;

const MAGIC: &[u8; 8] = b"TRLSCKPT";
const VERSION: u32 = 1;
const VERSION_COMPACT: u32 = 3;

/// What a compact checkpoint is read against: the round's start weights (the drift's base),
/// the bound of |m|/√v for the job's betas ([`crate::compact::moment_ratio_bound`]), and whether
/// the trail's inner rule is Muon (then the blocks' matrices hold a momentum and no second
/// moment, stored in bf16: [`crate::compact::round_momentum`]).
#[derive(Debug, Clone, Copy)]
pub struct CompactBase<'a> {
    pub weights: &'a [f32],
    pub bound: f32,
    pub muon: bool,
}

impl<'a> CompactBase<'a> {
    /// The base of an AdamW trail whose optimizer has `betas`; `None` when β₁² ≥ β₂ (no bound).
    pub fn new(weights: &'a [f32], beta1: f64, beta2: f64) -> Option<Self> {
        Some(Self { weights, bound: crate::compact::moment_ratio_bound(beta1, beta2)?, muon: false })
    }

    /// The same base for a trail whose inner rule is `rule`.
    pub fn for_rule(self, rule: crate::optim::InnerRule) -> Self {
        Self { muon: rule == crate::optim::InnerRule::Muon, ..self }
    }

    /// Whether the tensor `name` of rank `rank` holds a Muon momentum in this base's checkpoints.
    fn muon_tensor(&self, name: &str, rank: usize) -> bool {
        self.muon && crate::optim::is_muon_matrix(name, rank)
    }
}
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

/// The hash of checkpoint bytes, canonical or not ([`CheckpointHasher`]).
pub fn checkpoint_hash(bytes: &[u8]) -> Hash {
    let mut hasher = CheckpointHasher::default();
    hasher.update(bytes);
    hasher.finalize()
}

/// The two parts of a compact checkpoint's hash: its weights' drift section, and the rest of
/// its bytes (header, moments' reference exponents, both moments), each hashed in
/// [`HashDomain::CheckpointPart`]. The checkpoint's hash is [`CompactParts::hash`].
///
/// So a checker holding a Δ that is the negated drift and the `rest` part (32 bytes, named in the
/// trail) recomputes the final checkpoint's hash without its bytes (`docs/protocol.md` §4.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompactParts {
    pub drift: Hash,
    pub rest: Hash,
}

impl CompactParts {
    /// The checkpoint's hash: both parts, in [`HashDomain::CompactCheckpoint`].
    pub fn hash(&self) -> Hash {
        let mut hasher = HashDomain::CompactCheckpoint.hasher();
        hasher.update(&self.drift.0);
        hasher.update(&self.rest.0);
        Hash(*hasher.finalize().as_bytes())
    }
}

/// The parts of `bytes` if they hash as a compact checkpoint ([`CheckpointHasher`]).
pub fn compact_parts(bytes: &[u8]) -> Option<CompactParts> {
    let mut hasher = CheckpointHasher::default();
    hasher.update(bytes);
    hasher.parts()
}

/// The drift part of the compact checkpoint whose weights drifted by `−delta`: `Some` only when
/// every value of `delta` is the negation of a finite bf16 value (what a compact checkpoint's
/// drift holds), else `None` — no checkpoint has that drift.
pub fn drift_part_of_delta(delta: &[f32]) -> Option<Hash> {
    let mut hasher = HashDomain::CheckpointPart.hasher();
    let mut buffer = Vec::with_capacity(64 * 1024);
    for chunk in delta.chunks(32 * 1024) {
        buffer.clear();
        for value in chunk {
            let bits = (-value).to_bits();
            if bits & 0xffff != 0 || bits & 0x7f80_0000 == 0x7f80_0000 {
                return None;
            }
            buffer.extend_from_slice(&((bits >> 16) as u16).to_le_bytes());
        }
        hasher.update(&buffer);
    }
    Some(Hash(*hasher.finalize().as_bytes()))
}

/// Longest header a compact checkpoint's hash reads as a header (names and shapes of its
/// tensors: a `gpt2` header is about 6 KiB).
const MAX_HASHED_HEADER: usize = 1 << 20;

/// The most tensors a checkpoint may hold: above the largest model the chain admits (1,024
/// layers of a dozen tensors each, and the embeddings).
pub const MAX_TENSORS: usize = 1 << 16;

/// Hashes checkpoint bytes as they stream in, by a rule that depends on nothing but the bytes:
///
/// - bytes that begin with a whole compact checkpoint header (magic, version 3, step, tensor
///   count, each tensor's name and shape, within [`MAX_HASHED_HEADER`] bytes) hash as
///   [`CompactParts`]: the section where that header puts the drift (`2·total` bytes after the
///   reference exponents, cut short if the bytes end first) in one part, every other byte in
///   order in the other;
/// - every other byte string (a full checkpoint, a groth16 job's fixed-point state, garbage)
///   hashes whole in [`HashDomain::Checkpoint`].
///
/// The domains differ, so no byte string of one kind has the hash of one of the other; within
/// the compact kind the header fixes where the drift lies, so two byte strings with the same
/// parts are the same bytes.
pub struct CheckpointHasher {
    state: HashState,
}

enum HashState {
    /// Not yet known whether the bytes begin with a compact header: the bytes so far.
    Undecided(Vec<u8>),
    Whole(Box<blake3::Hasher>),
    Compact {
        /// Bytes seen so far.
        at: u64,
        /// Where the drift section lies, in bytes from the start.
        drift: std::ops::Range<u64>,
        drift_part: Box<blake3::Hasher>,
        rest_part: Box<blake3::Hasher>,
    },
}

impl Default for CheckpointHasher {
    fn default() -> Self {
        Self { state: HashState::Undecided(Vec::new()) }
    }
}

/// What hashed bytes come to: a hash of the whole, or a compact checkpoint's parts.
enum Finished {
    Whole(Hash),
    Compact(CompactParts),
}

/// What the start of some bytes says about their being a compact checkpoint.
enum HeaderScan {
    NeedMore,
    NotCompact,
    /// The drift section's place, in bytes from the start.
    Compact(std::ops::Range<u64>),
}

fn scan_compact_header(bytes: &[u8]) -> HeaderScan {
    if bytes.len() < MAGIC.len() {
        return if MAGIC.starts_with(bytes) { HeaderScan::NeedMore } else { HeaderScan::NotCompact };
    }
    match drift_section(&mut Cursor { bytes, at: 0 }) {
        Ok(Some(drift)) => HeaderScan::Compact(drift),
        Ok(None) => HeaderScan::NotCompact,
        // The bytes ended inside the header.
        Err(_) => HeaderScan::NeedMore,
    }
}

/// Reads a compact checkpoint header: where its drift section lies, `None` when the bytes are
/// not a compact checkpoint's (wrong magic or version, sizes past `u64`), an error when they end
/// inside the header.
fn drift_section(c: &mut Cursor<'_>) -> Result<Option<std::ops::Range<u64>>, CheckpointError> {
    if c.take(8, "magic")? != MAGIC || c.u32("version")? != VERSION_COMPACT {
        return Ok(None);
    }
    c.u64("step")?;
    let count = c.u32("tensor count")?;
    let mut total: u64 = 0;
    for _ in 0..count {
        let len = c.u16("name length")?;
        c.take(usize::from(len), "name")?;
        let mut numel: u64 = 1;
        for _ in 0..c.u8("rank")? {
            let Some(product) = numel.checked_mul(c.u64("dimension")?) else { return Ok(None) };
            numel = product;
        }
        let Some(sum) = total.checked_add(numel) else { return Ok(None) };
        total = sum;
    }
    let start = (c.at as u64).checked_add(u64::from(count));
    let end = start.zip(total.checked_mul(2)).and_then(|(start, drift)| start.checked_add(drift));
    Ok(start.zip(end).map(|(start, end)| start..end))
}

impl CheckpointHasher {
    pub fn update(&mut self, mut bytes: &[u8]) {
        while let HashState::Undecided(held) = &mut self.state {
            let take = bytes.len().min(MAX_HASHED_HEADER.saturating_sub(held.len()));
            held.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            let decided = match scan_compact_header(held) {
                HeaderScan::NeedMore if held.len() < MAX_HASHED_HEADER => return,
                HeaderScan::NeedMore | HeaderScan::NotCompact => {
                    HashState::Whole(Box::new(HashDomain::Checkpoint.hasher()))
                }
                HeaderScan::Compact(drift) => HashState::Compact {
                    at: 0,
                    drift,
                    drift_part: Box::new(HashDomain::CheckpointPart.hasher()),
                    rest_part: Box::new(HashDomain::CheckpointPart.hasher()),
                },
            };
            let held = std::mem::take(held);
            self.state = decided;
            self.feed(&held);
        }
        self.feed(bytes);
    }

    fn feed(&mut self, bytes: &[u8]) {
        match &mut self.state {
            HashState::Undecided(_) => unreachable!("bytes are fed once the kind is decided"),
            HashState::Whole(hasher) => {
                hasher.update(bytes);
            }
            HashState::Compact { at, drift, drift_part, rest_part } => {
                let begin = *at;
                let end = begin + bytes.len() as u64;
                // The drift section's overlap with these bytes, as offsets into them.
                let from = drift.start.clamp(begin, end) - begin;
                let to = drift.end.clamp(begin, end) - begin;
                rest_part.update(&bytes[..from as usize]);
                drift_part.update(&bytes[from as usize..to as usize]);
                rest_part.update(&bytes[to as usize..]);
                *at = end;
            }
        }
    }

    /// The parts of a compact checkpoint's hash, `None` for bytes that hash whole.
    pub fn parts(self) -> Option<CompactParts> {
        match self.finish() {
            Finished::Compact(parts) => Some(parts),
            Finished::Whole(_) => None,
        }
    }

    pub fn finalize(self) -> Hash {
        match self.finish() {
            Finished::Compact(parts) => parts.hash(),
            Finished::Whole(hash) => hash,
        }
    }

    fn finish(self) -> Finished {
        match self.state {
            HashState::Undecided(held) => Finished::Whole(Hash::digest(HashDomain::Checkpoint, &held)),
            HashState::Whole(hasher) => Finished::Whole(Hash(*hasher.finalize().as_bytes())),
            HashState::Compact { drift_part, rest_part, .. } => Finished::Compact(CompactParts {
                drift: Hash(*drift_part.finalize().as_bytes()),
                rest: Hash(*rest_part.finalize().as_bytes()),
            }),
        }
    }
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
    // Not two serialised states at once (12 bytes a parameter each).
    drop(bytes);
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

/// Serialises the model's weights and the optimizer's state canonically, as they are: one tensor
/// on the host at a time, written into its place in each section.
pub fn to_bytes(model: &Gpt, optimizer: &AdamW) -> Vec<u8> {
    let parameters = model.parameters();
    let total = model.numel();
    let mut out = Vec::new();
    write_header(&mut out, VERSION, optimizer.step, parameters);
    let header = out.len();
    out.resize(header + 12 * total, 0);
    let (weights, moments) = out[header..].split_at_mut(4 * total);
    let (first, second) = moments.split_at_mut(4 * total);
    let mut at = 0;
    let tensors = parameters.iter().map(|p| &p.tensor).zip(&optimizer.first_moments).zip(&optimizer.second_moments);
    for ((weight, m), v) in tensors {
        let span = at..at + 4 * weight.numel();
        for (section, tensor) in [(&mut *weights, weight), (&mut *first, m), (&mut *second, v)] {
            write_f32s(&mut section[span.clone()], &tensor_values(tensor));
        }
        at = span.end;
    }
    out
}

fn write_f32s(out: &mut [u8], values: &[f32]) {
    for (slot, value) in out.chunks_exact_mut(4).zip(values) {
        slot.copy_from_slice(&value.to_le_bytes());
    }
}

fn write_header(out: &mut Vec<u8>, version: u32, step: u64, parameters: &[crate::model::Parameter]) {
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&version.to_le_bytes());
    out.extend_from_slice(&step.to_le_bytes());
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
}

/// Rounds the live weights and moments to what a compact checkpoint holds
/// ([`crate::compact::round_state`]) and serialises them: a compact trail checkpoint. One tensor
/// is on the host at a time (the rounding is per tensor), so capturing holds the checkpoint's
/// bytes and one tensor's state beside the live model, not a copy of the whole state.
pub fn capture_compact(model: &mut Gpt, optimizer: &mut AdamW, base: CompactBase<'_>) -> Vec<u8> {
    let total = model.numel();
    assert_eq!(base.weights.len(), total, "the compact base does not match the model");
    let mut out = Vec::new();
    write_header(&mut out, VERSION_COMPACT, optimizer.step, model.parameters());
    let header = out.len();
    let count = model.parameters().len();
    out.resize(header + count + 4 * total, 0);
    let (tops, rest) = out[header..].split_at_mut(count);
    let (drift, moments) = rest.split_at_mut(2 * total);
    let (first, second) = moments.split_at_mut(total);
    let mut at = 0;
    let tensors = model.parameters().iter().zip(&optimizer.first_moments).zip(&optimizer.second_moments);
    for (index, ((parameter, m), v)) in tensors.enumerate() {
        let size = parameter.tensor.numel();
        let span = at..at + size;
        let (mut weights, mut moment, mut square) =
            (tensor_values(&parameter.tensor), tensor_values(m), tensor_values(v));
        if base.muon_tensor(&parameter.name, parameter.tensor.dim()) {
            // A Muon matrix: its momentum in bf16, high bytes in the first-moment section and
            // low bytes in the second's; no second moment; a fixed reference exponent.
            let (rounded, drift_bits) = crate::compact::round_weights(&weights, &base.weights[span.clone()]);
            weights = rounded;
            let momentum = crate::compact::round_momentum(&mut moment);
            square.iter_mut().for_each(|v| *v = 0.0);
            for (tensor, values) in [(&parameter.tensor, &weights), (m, &moment), (v, &square)] {
                overwrite(tensor, values);
            }
            tops[index] = crate::compact::MIN_TOP_EXPONENT;
            for (slot, bits) in drift[2 * span.start..2 * span.end].chunks_exact_mut(2).zip(&drift_bits) {
                slot.copy_from_slice(&bits.to_le_bytes());
            }
            for (i, bits) in span.clone().zip(&momentum) {
                let [low, high] = bits.to_le_bytes();
                (first[i], second[i]) = (high, low);
            }
            at = span.end;
            continue;
        }
        let state = crate::compact::round_state(
            &mut weights,
            &mut moment,
            &mut square,
            &base.weights[span.clone()],
            &[size],
            base.bound,
        );
        for (tensor, values) in [(&parameter.tensor, &weights), (m, &moment), (v, &square)] {
            overwrite(tensor, values);
        }
        tops[index] = state.second[0].top_exponent;
        for (slot, bits) in drift[2 * span.start..2 * span.end].chunks_exact_mut(2).zip(&state.drift) {
            slot.copy_from_slice(&bits.to_le_bytes());
        }
        for (slot, code) in first[span.clone()].iter_mut().zip(&state.first) {
            *slot = *code as u8;
        }
        second[span.clone()].copy_from_slice(&state.second[0].codes);
        at = span.end;
    }
    out
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
}

impl CheckpointData {
    /// Parses the canonical bytes of a full checkpoint; every size is checked against the input
    /// before use. A compact checkpoint is refused: it needs [`CheckpointData::parse_compact`].
    pub fn parse(bytes: &[u8]) -> Result<Self, CheckpointError> {
        Self::parse_with(bytes, None)
    }

    /// Parses a compact checkpoint against its round's start weights and moment bound; a full
    /// checkpoint is refused (it is not a compact job's).
    pub fn parse_compact(bytes: &[u8], base: CompactBase<'_>) -> Result<Self, CheckpointError> {
        Self::parse_with(bytes, Some(base))
    }

    /// [`parse`](Self::parse) or [`parse_compact`](Self::parse_compact), as `base` says: every
    /// tensor of a [`CheckpointView`] decoded.
    pub fn parse_with(bytes: &[u8], base: Option<CompactBase<'_>>) -> Result<Self, CheckpointError> {
        let view = CheckpointView::parse(bytes, base)?;
        let mut weights = Vec::with_capacity(view.total);
        let mut first_moments = Vec::with_capacity(view.total);
        let mut second_moments = Vec::with_capacity(view.total);
        for index in 0..view.tensor_count() {
            let tensor = view.tensor(index);
            weights.extend(tensor.weights);
            first_moments.extend(tensor.first_moments);
            second_moments.extend(tensor.second_moments);
        }
        let CheckpointView { step, names, shapes, .. } = view;
        Ok(Self { step, names, shapes, weights, first_moments, second_moments })
    }
}

/// A checkpoint file's bytes, at most [`MAX_CHECKPOINT_BYTES`].
pub fn read_file(path: &Path) -> Result<Vec<u8>, CheckpointError> {
    let io = |source| CheckpointError::Io { path: path.to_path_buf(), source };
    let len = std::fs::metadata(path).map_err(io)?.len();
    if len > MAX_CHECKPOINT_BYTES {
        return Err(CheckpointError::Malformed("checkpoint larger than the limit"));
    }
    std::fs::read(path).map_err(io)
}

/// Whether a checkpoint's tensors are the model's, by name and shape, in order.
fn check_fits(names: &[String], shapes: &[Vec<i64>], model: &Gpt) -> Result<(), CheckpointError> {
    let parameters = model.parameters();
    if parameters.len() != names.len() {
        return Err(CheckpointError::Mismatch(format!(
            "{} tensors in the checkpoint, {} in the model",
            names.len(),
            parameters.len()
        )));
    }
    for ((parameter, name), shape) in parameters.iter().zip(names).zip(shapes) {
        if &parameter.name != name || &parameter.tensor.size() != shape {
            return Err(CheckpointError::Mismatch(format!(
                "tensor {name} {shape:?} where the model has {} {:?}",
                parameter.name,
                parameter.tensor.size()
            )));
        }
    }
    Ok(())
}

/// One tensor's state, decoded.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorState {
    pub weights: Vec<f32>,
    pub first_moments: Vec<f32>,
    pub second_moments: Vec<f32>,
}

/// A checkpoint's bytes with the header parsed and the body checked (sizes, and for a compact
/// one every code), its tensors decoded one at a time when asked: restoring a model or reading
/// the weights holds one tensor's decoded state beside the bytes, not three decoded sections.
/// Whatever parses decodes without error, to exactly what [`CheckpointData::parse_with`] gives.
pub struct CheckpointView<'a> {
    pub step: u64,
    pub names: Vec<String>,
    pub shapes: Vec<Vec<i64>>,
    /// Where each tensor starts, in values, within a section; one more entry: the total.
    starts: Vec<usize>,
    total: usize,
    /// The bytes after the header.
    body: &'a [u8],
    base: Option<CompactBase<'a>>,
}

impl<'a> CheckpointView<'a> {
    /// Parses the header and checks the body; a full checkpoint with `base` (or a compact one
    /// without) is refused, as is anything whose sizes do not add up or whose codes a compact
    /// checkpoint never holds.
    pub fn parse(bytes: &'a [u8], base: Option<CompactBase<'a>>) -> Result<Self, CheckpointError> {
        let mut c = Cursor { bytes, at: 0 };
        if c.take(8, "magic")? != MAGIC {
            return Err(CheckpointError::Malformed("not a Trellis checkpoint (bad magic)"));
        }
        match (c.u32("version")?, base.is_some()) {
            (VERSION, false) | (VERSION_COMPACT, true) => {}
            (VERSION, true) => return Err(CheckpointError::Malformed("a full checkpoint where a compact one belongs")),
            (VERSION_COMPACT, false) => {
                return Err(CheckpointError::Malformed(
                    "a compact checkpoint is read against its round's start weights",
                ))
            }
            _ => return Err(CheckpointError::Malformed("unsupported checkpoint version")),
        }
        let step = c.u64("step")?;
        let count = c.u32("tensor count")? as usize;
        // Each tensor header takes at least 3 bytes, and no model the chain admits has more than
        // MAX_TENSORS tensors: bound the count before allocating (56 bytes of bookkeeping a
        // tensor, so a header of millions of empty tensors would cost checkers 19× its size).
        if count > bytes.len() / 3 || count > MAX_TENSORS {
            return Err(CheckpointError::Malformed("tensor count exceeds the input or the largest model"));
        }
        let mut names = Vec::with_capacity(count);
        let mut shapes = Vec::with_capacity(count);
        let mut starts = Vec::with_capacity(count + 1);
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
            starts.push(total);
            total = total.checked_add(numel).ok_or(CheckpointError::Malformed("tensors too large"))?;
            shapes.push(shape);
        }
        starts.push(total);
        let body = &bytes[c.at..];
        let view = Self { step, names, shapes, starts, total, body, base };
        match base {
            None if total.checked_mul(12) != Some(body.len()) => {
                Err(CheckpointError::Malformed("data length does not match the tensor shapes"))
            }
            None => Ok(view),
            Some(base) => view.check_compact(base).map(|()| view),
        }
    }

    /// The body of a compact checkpoint holds only codes that decode to finite, normal (or
    /// zero) values with non-negative second moments.
    fn check_compact(&self, base: CompactBase<'_>) -> Result<(), CheckpointError> {
        let (total, count) = (self.total, self.tensor_count());
        if total.checked_mul(4).and_then(|b| b.checked_add(count)) != Some(self.body.len()) {
            return Err(CheckpointError::Malformed("data length does not match the tensor shapes"));
        }
        if base.weights.len() != total {
            return Err(CheckpointError::Mismatch(format!(
                "{total} parameters in the checkpoint, {} in the round's start weights",
                base.weights.len()
            )));
        }
        let (tops, drift, first, codes) = self.compact_sections();
        if tops.iter().any(|t| !(crate::compact::MIN_TOP_EXPONENT..=crate::compact::MAX_TOP_EXPONENT).contains(t)) {
            return Err(CheckpointError::Malformed("a second-moment reference exponent out of range"));
        }
        if drift.chunks_exact(2).any(|b| u16::from_le_bytes([b[0], b[1]]) & 0x7f80 == 0x7f80) {
            return Err(CheckpointError::Malformed("a drift that is not finite"));
        }
        for (index, top) in tops.iter().enumerate() {
            let span = self.starts[index]..self.starts[index + 1];
            let (first, codes) = (&first[span.clone()], &codes[span]);
            if self.muon_tensor(base, index) {
                if *top != crate::compact::MIN_TOP_EXPONENT {
                    return Err(CheckpointError::Malformed("a Muon matrix with a second-moment reference exponent"));
                }
                if first
                    .iter()
                    .zip(codes)
                    .any(|(high, low)| !crate::compact::canonical_momentum(u16::from_le_bytes([*low, *high])))
                {
                    return Err(CheckpointError::Malformed("a Muon momentum that is not finite, or subnormal"));
                }
            } else if first.iter().zip(codes).any(|(q, v)| *v == 0 && *q != 0) || first.contains(&(i8::MIN as u8)) {
                return Err(CheckpointError::Malformed("a first moment that its second moment cannot hold"));
            } else if codes.iter().any(|code| (1..8).contains(code)) {
                // Capture writes 0 or a code of 8 and above (the smallest non-zero moment rounds up
                // to 8): one byte pattern for each state.
                return Err(CheckpointError::Malformed("a second-moment code below the smallest capture writes"));
            }
        }
        Ok(())
    }

    /// Whether tensor `index` holds a Muon momentum (in bf16) rather than AdamW's moments.
    fn muon_tensor(&self, base: CompactBase<'_>, index: usize) -> bool {
        base.muon_tensor(&self.names[index], self.shapes[index].len())
    }

    /// A compact body's sections: reference exponents, drift, first-moment and second-moment codes.
    fn compact_sections(&self) -> (&'a [u8], &'a [u8], &'a [u8], &'a [u8]) {
        let (tops, rest) = self.body.split_at(self.tensor_count());
        let (drift, rest) = rest.split_at(2 * self.total);
        let (first, codes) = rest.split_at(self.total);
        (tops, drift, first, codes)
    }

    pub fn tensor_count(&self) -> usize {
        self.names.len()
    }

    /// Tensor `index`'s weights and moments, decoded.
    pub fn tensor(&self, index: usize) -> TensorState {
        let span = self.starts[index]..self.starts[index + 1];
        let Some(base) = self.base else {
            let section =
                |s: usize| f32s(&self.body[4 * (s * self.total + span.start)..4 * (s * self.total + span.end)]);
            return TensorState { weights: section(0), first_moments: section(1), second_moments: section(2) };
        };
        use crate::compact::{decode_first, decode_second, momentum_from_bits, SecondMoments};
        let (tops, _, first, codes) = self.compact_sections();
        if self.muon_tensor(base, index) {
            let momentum = first[span.clone()]
                .iter()
                .zip(&codes[span.clone()])
                .map(|(high, low)| momentum_from_bits(u16::from_le_bytes([*low, *high])))
                .collect();
            return TensorState {
                weights: self.weights_of(span.clone()),
                first_moments: momentum,
                second_moments: vec![0.0; span.len()],
            };
        }
        let second = decode_second(&SecondMoments { top_exponent: tops[index], codes: codes[span.clone()].to_vec() });
        let first: Vec<i8> = first[span.clone()].iter().map(|b| *b as i8).collect();
        TensorState {
            weights: self.weights_of(span),
            first_moments: decode_first(&first, &second, base.bound),
            second_moments: second,
        }
    }

    /// Every weight, in canonical order (without decoding a moment).
    pub fn weights(&self) -> Vec<f32> {
        self.weights_of(0..self.total)
    }

    /// A compact checkpoint's drift from the round's start weights, every value a bf16 value as
    /// an `f32` (`None` for a full checkpoint): negated, the Δ of a job whose Δ is its final drift.
    pub fn drift(&self) -> Option<Vec<f32>> {
        self.base?;
        let (_, drift, _, _) = self.compact_sections();
        Some(drift.chunks_exact(2).map(|b| f32::from_bits(u32::from(u16::from_le_bytes([b[0], b[1]])) << 16)).collect())
    }

    fn weights_of(&self, span: std::ops::Range<usize>) -> Vec<f32> {
        match self.base {
            None => f32s(&self.body[4 * span.start..4 * span.end]),
            Some(base) => {
                let (_, drift, _, _) = self.compact_sections();
                let drift: Vec<u16> = drift[2 * span.start..2 * span.end]
                    .chunks_exact(2)
                    .map(|b| u16::from_le_bytes([b[0], b[1]]))
                    .collect();
                crate::compact::weights_from_drift(&drift, &base.weights[span])
            }
        }
    }

    /// Loads the checkpoint into `model` and `optimizer` (which must have its tensors) one tensor
    /// at a time, after `accept` has seen every tensor's decoded state and said yes.
    pub fn restore(
        &self,
        model: &mut Gpt,
        optimizer: &mut AdamW,
        mut accept: impl FnMut(&TensorState) -> bool,
    ) -> Result<bool, CheckpointError> {
        check_fits(&self.names, &self.shapes, model)?;
        if !(0..self.tensor_count()).all(|index| accept(&self.tensor(index))) {
            return Ok(false);
        }
        let tensors = model.parameters().iter().zip(&optimizer.first_moments).zip(&optimizer.second_moments);
        for (index, ((parameter, m), v)) in tensors.enumerate() {
            let state = self.tensor(index);
            overwrite(&parameter.tensor, &state.weights);
            overwrite(m, &state.first_moments);
            overwrite(v, &state.second_moments);
        }
        optimizer.step = self.step;
        Ok(true)
    }
}

/// `bytes` (a checkpoint parsed against `base`) with the weights at `span` set to `global`'s
/// (θ_r's) there, and everything else — the step, the other weights, every moment — kept byte
/// for byte: in a full checkpoint `global`'s values (a subnormal one as zero, as [`capture`]
/// writes it), in a compact one a zero drift (read against θ_r, `global`'s values themselves).
/// The start state of a Streaming DiLoCo round that continues a miner's previous final state
/// (`trellis_protocol::fragments`); in a compact job `base` is θ_r's, and the previous final's
/// drift outside `span` is from the same values, since θ moved only inside it.
pub fn with_weights_from_global(
    bytes: &[u8],
    base: Option<CompactBase<'_>>,
    global: &[f32],
    span: std::ops::Range<usize>,
) -> Result<Vec<u8>, CheckpointError> {
    let view = CheckpointView::parse(bytes, base)?;
    if global.len() != view.total || span.end > view.total || span.start > span.end {
        return Err(CheckpointError::Mismatch(format!(
            "{} parameters in the checkpoint, {} in the global model, fragment {span:?}",
            view.total,
            global.len()
        )));
    }
    let body = bytes.len() - view.body.len();
    let mut out = bytes.to_vec();
    match base {
        None => {
            let at = body + 4 * span.start;
            for (slot, value) in out[at..body + 4 * span.end].chunks_exact_mut(4).zip(&global[span]) {
                let value = if value.is_subnormal() { 0.0 } else { *value };
                slot.copy_from_slice(&value.to_le_bytes());
            }
        }
        Some(_) => {
            let drift = body + view.tensor_count();
            out[drift + 2 * span.start..drift + 2 * span.end].fill(0);
        }
    }
    Ok(out)
}

fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use crate::model::flatten;

    use super::*;

    fn push_f32s(out: &mut Vec<u8>, values: &[f32]) {
        out.reserve(values.len() * 4);
        for value in values {
            out.extend_from_slice(&value.to_le_bytes());
        }
    }

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
    fn a_header_of_more_tensors_than_any_model_is_refused_before_allocating() {
        // A full-checkpoint header declaring MAX_TENSORS + 1 empty, rank-0 tensors (3 bytes each),
        // followed by exactly those entries: well formed but for the count.
        let entries = MAX_TENSORS + 1;
        let mut bytes = MAGIC.to_vec();
        bytes.extend_from_slice(&VERSION.to_le_bytes());
        bytes.extend_from_slice(&0u64.to_le_bytes());
        bytes.extend_from_slice(&(entries as u32).to_le_bytes());
        bytes.extend(std::iter::repeat_n([0u8, 0, 0], entries).flatten());
        let refused = CheckpointView::parse(&bytes, None).err().map(|e| e.to_string());
        assert!(refused.as_ref().is_some_and(|e| e.contains("largest model")), "{refused:?}");
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
    fn a_compact_checkpoint_is_the_live_state_and_refuses_what_no_trail_writes() {
        use crate::model::Preset;
        let mut model = Gpt::new(&Preset::Nano.config(), 1, tch::Device::Cpu).unwrap();
        let start = model.flat_weights();
        let mut optimizer = AdamW::new(crate::optim::AdamWConfig::with_schedule(1e-3, 0, 10), model.parameters());
        // Some drift and some moments, as after a few steps.
        let drifted: Vec<f32> = start.iter().enumerate().map(|(i, w)| w + 1e-3 * ((i % 7) as f32 - 3.0)).collect();
        model.set_flat_weights(&drifted);
        for (i, (m, v)) in optimizer.first_moments.iter().zip(&optimizer.second_moments).enumerate() {
            let _ = v.shallow_clone().fill_(1e-6 * (i + 1) as f64);
            let _ = m.shallow_clone().fill_(2e-4 * if i % 2 == 0 { 1.0 } else { -1.0 });
        }
        optimizer.step = 17;
        let base = CompactBase::new(&start, 0.9, 0.95).unwrap();
        let bytes = capture_compact(&mut model, &mut optimizer, base);
        let n = model.parameters().len();
        let header = to_bytes(&model, &optimizer).len() - 12 * start.len();
        assert_eq!(bytes.len(), header + n + 4 * start.len(), "4 bytes a parameter and one a tensor");
        let data = CheckpointData::parse_compact(&bytes, base).unwrap();
        assert_eq!(data.step, 17);
        assert_eq!(data.weights, model.flat_weights(), "the live weights are the recorded ones");
        assert_eq!(data.first_moments, flatten(optimizer.first_moments.iter()));
        assert_eq!(data.second_moments, flatten(optimizer.second_moments.iter()));
        assert!(data.weights.iter().zip(&drifted).all(|(a, b)| (a - b).abs() <= 1e-5), "bf16 drift");
        // Read as a full checkpoint, or against another model's base: refused.
        assert!(CheckpointData::parse(&bytes).is_err());
        assert!(CheckpointData::parse_compact(&bytes, CompactBase { weights: &start[1..], ..base }).is_err());
        assert!(CheckpointData::parse_compact(&to_bytes(&model, &optimizer), base).is_err(), "a full one");
        for cut in [0, 20, bytes.len() - 1] {
            assert!(CheckpointData::parse_compact(&bytes[..cut], base).is_err());
        }
        assert!(CheckpointData::parse_compact(&[bytes.as_slice(), &[0]].concat(), base).is_err());
        // What no trail writes: a reference exponent out of range, a drift that is not finite,
        // a first-moment code of -128, a first moment beside a zero second moment.
        let body = bytes.len() - 4 * start.len() - n;
        let total = start.len();
        let tamper = |at: usize, value: u8| {
            let mut bad = bytes.clone();
            bad[at] = value;
            CheckpointData::parse_compact(&bad, base)
        };
        assert!(tamper(body, 0).is_err(), "reference exponent 0");
        assert!(tamper(body, 254).is_err(), "reference exponent 254");
        let mut nan_drift = bytes.clone();
        nan_drift[body + n] = 0x80;
        nan_drift[body + n + 1] = 0x7f;
        assert!(CheckpointData::parse_compact(&nan_drift, base).is_err());
        let first = body + n + 2 * total;
        assert!(tamper(first, 0x80).is_err(), "first-moment code -128");
        let second = first + total;
        let mut orphan = bytes.clone();
        orphan[second] = 0;
        orphan[first] = 5;
        assert!(CheckpointData::parse_compact(&orphan, base).is_err());
        for code in 1..8 {
            assert!(tamper(second, code).is_err(), "second-moment code {code} (capture writes 0 or 8 and above)");
        }
        assert!(tamper(second, 8).is_ok(), "the smallest code capture writes");
        // A start state (no drift, zero moments) is compact too.
        let mut fresh = AdamW::new(crate::optim::AdamWConfig::with_schedule(1e-3, 0, 10), model.parameters());
        model.set_flat_weights(&start);
        let zero = CheckpointData::parse_compact(&capture_compact(&mut model, &mut fresh, base), base).unwrap();
        assert_eq!(zero.weights, start);
        assert!(zero.first_moments.iter().chain(&zero.second_moments).all(|x| *x == 0.0));
    }

    /// A Muon trail's compact checkpoint: each Muon matrix's momentum in bf16 (high bytes in the
    /// first-moment section, low bytes in the second's), no second moment, reference exponent 31;
    /// the other tensors as AdamW's. What no Muon trail writes is refused.
    #[test]
    fn a_muon_compact_checkpoint_holds_the_momentum_in_bf16_and_refuses_what_no_trail_writes() {
        use crate::model::Preset;
        use crate::optim::{takes_muon, AdamWConfig, InnerRule};
        let mut model = Gpt::new(&Preset::Nano.config(), 1, tch::Device::Cpu).unwrap();
        let start = model.flat_weights();
        let config = AdamWConfig { rule: InnerRule::Muon, ..AdamWConfig::with_schedule(1e-3, 0, 10) };
        let mut optimizer = AdamW::new(config, model.parameters());
        let muon: Vec<bool> = model.parameters().iter().map(takes_muon).collect();
        assert!(muon.iter().any(|m| *m) && muon.iter().any(|m| !*m));
        for (i, (m, v)) in optimizer.first_moments.iter().zip(&optimizer.second_moments).enumerate() {
            let _ = m.shallow_clone().fill_(3.3e-4 * if i % 2 == 0 { 1.0 } else { -1.0 });
            let _ = v.shallow_clone().fill_(if muon[i] { 0.0 } else { 1e-6 });
        }
        let base = CompactBase::new(&start, 0.9, 0.95).unwrap().for_rule(InnerRule::Muon);
        let bytes = capture_compact(&mut model, &mut optimizer, base);
        let data = CheckpointData::parse_compact(&bytes, base).unwrap();
        assert_eq!(
            data.first_moments,
            flatten(optimizer.first_moments.iter()),
            "the live momentum is the recorded one"
        );
        assert_eq!(data.second_moments, flatten(optimizer.second_moments.iter()));
        let view = CheckpointView::parse(&bytes, Some(base)).unwrap();
        let index = muon.iter().position(|m| *m).unwrap();
        let matrix = view.tensor(index);
        assert!(matrix
            .first_moments
            .iter()
            .all(|m| *m == crate::compact::round_bf16(3.3e-4f32.copysign(if index % 2 == 0 { 1.0 } else { -1.0 }))));
        assert!(matrix.second_moments.iter().all(|v| *v == 0.0));
        // Rounding the restored state again changes nothing.
        assert_eq!(capture_compact(&mut model, &mut optimizer, base), bytes);

        let n = start.len();
        let body = bytes.len() - 4 * n - muon.len();
        let offset: usize = model.parameters()[..index].iter().map(|p| p.tensor.numel()).sum();
        let (first, second) = (body + muon.len() + 2 * n + offset, body + muon.len() + 3 * n + offset);
        let tamper = |edits: &[(usize, u8)]| {
            let mut bad = bytes.clone();
            edits.iter().for_each(|(at, value)| bad[*at] = *value);
            CheckpointData::parse_compact(&bad, base)
        };
        assert!(tamper(&[(body + index, 100)]).is_err(), "a Muon matrix with a reference exponent");
        assert!(tamper(&[(first, 0x7f), (second, 0x80)]).is_err(), "an infinite momentum");
        assert!(tamper(&[(first, 0x00), (second, 0x01)]).is_err(), "a subnormal momentum");
        assert!(tamper(&[(first, 0x80), (second, 0x00)]).is_ok(), "a negative zero is a momentum");
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

    /// A compact checkpoint of 10 parameters in two tensors, built by hand: `drift` is its
    /// drift section's bf16 bits.
    fn compact_sample(drift: &[u16; 10]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&VERSION_COMPACT.to_le_bytes());
        out.extend_from_slice(&40u64.to_le_bytes());
        out.extend_from_slice(&2u32.to_le_bytes());
        for (name, shape) in [("wte", &[2u64, 3][..]), ("ln.bias", &[4])] {
            out.extend_from_slice(&(name.len() as u16).to_le_bytes());
            out.extend_from_slice(name.as_bytes());
            out.push(shape.len() as u8);
            shape.iter().for_each(|d| out.extend_from_slice(&d.to_le_bytes()));
        }
        out.extend_from_slice(&[100, 101]); // reference exponents
        drift.iter().for_each(|d| out.extend_from_slice(&d.to_le_bytes()));
        out.extend((0..10).map(|i| i as u8)); // first moments
        out.extend((0..10).map(|i| 8 + i as u8)); // second moments
        out
    }

    const DRIFT: [u16; 10] = [0x3c00, 0xbc00, 0, 0x8000, 0x3a80, 0x0001, 0x4000, 0xc000, 0x3f80, 0x1234];

    #[test]
    fn a_compact_checkpoint_hashes_as_its_drift_and_the_rest_and_the_delta_gives_the_drift_part() {
        let bytes = compact_sample(&DRIFT);
        let parts = compact_parts(&bytes).expect("a compact checkpoint hashes in parts");
        assert_eq!(checkpoint_hash(&bytes), parts.hash());
        // The parts are the drift section and everything else, in order.
        let header = bytes.len() - 2 - 4 * 10;
        let drift = header + 2..header + 22;
        assert_eq!(parts.drift, Hash::digest(HashDomain::CheckpointPart, &bytes[drift.clone()]));
        let rest = [&bytes[..drift.start], &bytes[drift.end..]].concat();
        assert_eq!(parts.rest, Hash::digest(HashDomain::CheckpointPart, &rest));
        // The Δ that is the negated drift gives the drift part; any other Δ does not.
        let delta: Vec<f32> = DRIFT.iter().map(|d| -f32::from_bits(u32::from(*d) << 16)).collect();
        assert_eq!(drift_part_of_delta(&delta), Some(parts.drift));
        let mut other = delta.clone();
        other[4] = -other[4];
        assert_ne!(drift_part_of_delta(&other), Some(parts.drift), "another drift");
        other[4] = f32::from_bits(delta[4].to_bits() + 1);
        assert_eq!(drift_part_of_delta(&other), None, "not a bf16 value");
        other[4] = f32::NAN;
        assert_eq!(drift_part_of_delta(&other), None, "not finite");
        other[4] = f32::NEG_INFINITY;
        assert_eq!(drift_part_of_delta(&other), None, "not finite");
        // Every byte counts, in whichever part it lies.
        for at in [0, 13, header, drift.start, drift.end - 1, bytes.len() - 1] {
            let mut edited = bytes.clone();
            edited[at] ^= 1;
            assert_ne!(checkpoint_hash(&edited), checkpoint_hash(&bytes), "byte {at}");
        }
    }

    #[test]
    fn other_bytes_hash_whole_in_the_checkpoint_domain() {
        let full = sample();
        assert_eq!(compact_parts(&full), None);
        assert_eq!(checkpoint_hash(&full), Hash::digest(HashDomain::Checkpoint, &full));
        for bytes in [&b""[..], b"TRLS", b"not a checkpoint at all", &compact_sample(&DRIFT)[..30]] {
            assert_eq!(checkpoint_hash(bytes), Hash::digest(HashDomain::Checkpoint, bytes), "{bytes:?}");
        }
        // A compact header whose sizes overflow is not a compact checkpoint's.
        let mut huge = compact_sample(&DRIFT);
        // magic, version, step, count (24 bytes), then "wte": its name length, name and rank.
        let dim = 24 + 2 + 3 + 1;
        huge[dim..dim + 8].copy_from_slice(&u64::MAX.to_le_bytes());
        assert_eq!(compact_parts(&huge), None);
        assert_eq!(checkpoint_hash(&huge), Hash::digest(HashDomain::Checkpoint, &huge));
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        // The blob store hashes a checkpoint as its chunks arrive: however the bytes are cut,
        // the hash is the one of the whole (compact, full, cut short, edited).
        #[test]
        fn a_checkpoint_hashes_the_same_however_its_bytes_stream_in(
            compact in any::<bool>(),
            cuts in proptest::collection::vec(any::<usize>(), 0..6),
            edit in proptest::option::of((any::<usize>(), any::<u8>())),
            end in any::<usize>(),
        ) {
            let mut bytes = if compact { compact_sample(&DRIFT) } else { sample() };
            if let Some((at, byte)) = edit {
                let at = at % bytes.len();
                bytes[at] = byte;
            }
            bytes.truncate(end % (bytes.len() + 1) + if end % 2 == 0 { bytes.len() } else { 0 });
            let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
            cuts.sort_unstable();
            let mut hasher = CheckpointHasher::default();
            let mut from = 0;
            for cut in cuts.into_iter().chain([bytes.len()]) {
                hasher.update(&bytes[from..cut]);
                from = cut;
            }
            prop_assert_eq!(hasher.finalize(), checkpoint_hash(&bytes));
        }
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
