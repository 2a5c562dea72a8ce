//! Pseudo-gradient encodings for the network: f32, f16, quantised codes of 8, 4 or 2 bits with
//! per-chunk scales, and top-k sparse Δs (a few values of every chunk, by index, in any of those
//! precisions), all but f32 and f16 with error feedback.
//!
//! Canonical layout of an encoded Δ (its blake3 hash is the `delta_hash` a miner commits):
//!
//! ```text
//! u8   encoding tag (1 = f32, 2 = f16, 3 = int8, 4 = q4, 5 = q2, 6 = top-k)
//! u64  n, the number of values (little-endian)
//! f32:  n × f32 LE
//! f16:  n × IEEE binary16 LE (round to nearest, ties to even)
//! int8, q4, q2 (b = 8, 4, 2 bits; m = 2^(b−1) − 1 = 127, 7, 1):
//!       u32 chunk size C, then ceil(n / C) × f32 LE scales, then ceil(n·b / 8) bytes of codes:
//!       value i's code is bits [i·b, (i+1)·b) of the codes read as one little-endian bit string
//!       (byte ⌊i·b/8⌋, lowest bits first), a b-bit two's complement q, and
//!       value i = q × scale[i / C], scale = max|x| / m over the chunk,
//!       q = round-ties-even(x / scale) clamped to [−m, m] (q = 0 when scale = 0);
//!       bits after the last code are zero
//! top-k: u32 chunk size C (4096), u32 keep k (1..=C), u8 value tag (1 = f32, 3, 4, 5 as above);
//!       chunk c (values [c·C, min((c+1)·C, n)), L_c of them) keeps k_c = min(k, L_c) values,
//!       T = Σ k_c in all: the k_c largest |x| of the chunk, ties to the lower index;
//!       for quantised values, ceil(n / C) × f32 LE scales, scale = max|kept| / m over the chunk;
//!       then T indices of w = ⌈log2 C⌉ bits (12) as one little-endian bit string, chunk by
//!       chunk, each chunk's strictly ascending and below L_c, padded with zero bits to a byte;
//!       then the T kept values in the same order: T × f32 LE, or T codes of b bits as above
//!       (padded to a byte). Every value not kept is 0.
//! ```
//!
//! For int8 that is one byte a value, the layout int8 always had. Encoding is a function of the
//! values alone (the chunk size is the encoding's), so a checker recomputes a miner's encoded Δ
//! byte for byte; decoding accepts any dense chunk size and any code, refuses indices out of
//! order, and never panics.

use half::f16;
use thiserror::Error;
use trellis_proto::{DeltaEncoding, Hash, HashDomain, KeptValues, TOPK_CHUNK};

/// Values per int8 scale.
pub const INT8_CHUNK: usize = 4096;
/// Values per q4 scale: a scale is 4 bytes, 0.8% of a q4 chunk's 512.
pub const Q4_CHUNK: usize = 1024;
/// Values per q2 scale: 2 bits leave three levels (−s, 0, s), so a chunk is kept short for its
/// scale to follow the values (a scale is 6% of a q2 chunk's 64 bytes).
pub const Q2_CHUNK: usize = 256;
/// Most values an encoded Δ may hold (a 1B-parameter model).
pub const MAX_VALUES: u64 = trellis_protocol::model::MAX_PARAMETERS;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum EncodingError {
    #[error("encoded delta is truncated or has trailing bytes: expected {expected} bytes, got {got}")]
    WrongSize { expected: u64, got: u64 },
    #[error("unknown delta encoding tag {0}")]
    UnknownTag(u8),
    #[error("encoded delta holds {0} values, more than the limit")]
    TooManyValues(u64),
    #[error("quantised chunk size must be positive")]
    ZeroChunk,
    #[error("top-k delta has chunk size {chunk} and keeps {keep} of each: expected chunk {TOPK_CHUNK}, keep 1..={TOPK_CHUNK}")]
    TopKShape { chunk: u32, keep: u32 },
    #[error("top-k delta's indices in chunk {0} are not strictly ascending within the chunk")]
    IndicesOutOfOrder(u64),
    #[error("encoded delta has a non-finite value at {0}")]
    NonFinite(usize),
    #[error("delta has {got} values, the model has {expected}")]
    LengthMismatch { expected: usize, got: usize },
}

/// How a quantised encoding rounds: `bits` a code, codes in `[−levels, levels]`, one scale per
/// `chunk` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quantizer {
    pub bits: u32,
    pub levels: i32,
    pub chunk: usize,
}

impl Quantizer {
    /// The quantiser of a dense quantised encoding; `None` for f32, f16 and top-k.
    pub fn of(encoding: DeltaEncoding) -> Option<Self> {
        let (bits, chunk) = match encoding {
            DeltaEncoding::F32 | DeltaEncoding::F16 | DeltaEncoding::TopK { .. } => return None,
            DeltaEncoding::Int8 => (8, INT8_CHUNK),
            DeltaEncoding::Q4 => (4, Q4_CHUNK),
            DeltaEncoding::Q2 => (2, Q2_CHUNK),
        };
        Some(Self { bits, levels: (1 << (bits - 1)) - 1, chunk })
    }

    /// The scale of a chunk: its largest magnitude on the top level.
    fn scale(&self, chunk: impl IntoIterator<Item = f32>) -> f32 {
        chunk.into_iter().fold(0.0f32, |max, v| max.max(v.abs())) / self.levels as f32
    }

    fn quantize(&self, value: f32, scale: f32) -> i32 {
        if scale == 0.0 {
            return 0;
        }
        let levels = self.levels as f32;
        (value / scale).round_ties_even().clamp(-levels, levels) as i32
    }

    /// Bytes holding `n` codes.
    fn code_bytes(&self, n: u64) -> u64 {
        (n * u64::from(self.bits)).div_ceil(8)
    }

    /// Code `index` of `codes`, whose first byte holds code `first` (a multiple of 8 / bits),
    /// as a signed level.
    fn code(&self, codes: &[u8], first: u64, index: u64) -> i32 {
        self.signed(read_bits(codes, (index - first) * u64::from(self.bits), self.bits))
    }

    fn signed(&self, raw: u32) -> i32 {
        if raw & (1 << (self.bits - 1)) != 0 {
            raw as i32 - (1 << self.bits)
        } else {
            raw as i32
        }
    }

    fn put(&self, out: &mut [u8], bit: u64, level: i32) {
        write_bits(out, bit, self.bits, (level as u32) & ((1 << self.bits) - 1));
    }
}

/// ORs the low `width` (≤ 32) bits of `value` into `out` at bit `bit` of its little-endian bit
/// string.
fn write_bits(out: &mut [u8], bit: u64, width: u32, value: u32) {
    let mut shifted = u64::from(value) << (bit % 8);
    let mut byte = (bit / 8) as usize;
    let mut left = width + (bit % 8) as u32;
    while left > 0 {
        out[byte] |= shifted as u8;
        shifted >>= 8;
        byte += 1;
        left = left.saturating_sub(8);
    }
}

/// The `width` (≤ 32) bits of `bytes` at bit `bit`; the caller has checked that they lie inside.
fn read_bits(bytes: &[u8], bit: u64, width: u32) -> u32 {
    let mut value = 0u64;
    let first = (bit / 8) as usize;
    let span = ((bit % 8) as u32 + width).div_ceil(8) as usize;
    for (k, byte) in bytes[first..first + span].iter().enumerate() {
        value |= u64::from(*byte) << (8 * k);
    }
    ((value >> (bit % 8)) & ((1u64 << width) - 1)) as u32
}

/// The shape of a top-k Δ: `keep` of every `chunk` values, indices `index_bits` wide, values
/// in f32 (`quantizer` `None`) or quantised codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct TopKShape {
    chunk: u64,
    keep: u64,
    index_bits: u32,
    values: KeptValues,
    quantizer: Option<Quantizer>,
}

impl TopKShape {
    fn new(chunk: u32, keep: u32, values: KeptValues) -> Result<Self, EncodingError> {
        if chunk != TOPK_CHUNK || keep == 0 || keep > chunk {
            return Err(EncodingError::TopKShape { chunk, keep });
        }
        let quantizer = Quantizer::of(values.dense()).map(|q| Quantizer { chunk: chunk as usize, ..q });
        let index_bits = (32 - (chunk - 1).leading_zeros()).max(1);
        Ok(Self { chunk: u64::from(chunk), keep: u64::from(keep), index_bits, values, quantizer })
    }

    fn of(encoding: DeltaEncoding) -> Option<Self> {
        match encoding {
            DeltaEncoding::TopK { keep, values } => Self::new(TOPK_CHUNK, u32::from(keep), values).ok(),
            _ => None,
        }
    }

    /// Values kept before chunk `c` (`c` ≤ the number of chunks of `n` values).
    fn kept_before(&self, c: u64, n: u64) -> u64 {
        if c * self.chunk <= n {
            c * self.keep.min(self.chunk)
        } else {
            // Only the last, partial chunk keeps fewer.
            let full = n / self.chunk;
            full * self.keep + self.keep.min(n - full * self.chunk)
        }
    }

    fn value_bits(&self) -> u64 {
        self.quantizer.map_or(32, |q| u64::from(q.bits))
    }

    /// Bytes after the header of a top-k Δ of `n` values: scales, indices, values.
    fn body_bytes(&self, n: u64) -> [u64; 3] {
        let chunks = n.div_ceil(self.chunk);
        let kept = self.kept_before(chunks, n);
        let scales = if self.quantizer.is_some() { 4 * chunks } else { 0 };
        [scales, (kept * u64::from(self.index_bits)).div_ceil(8), (kept * self.value_bits()).div_ceil(8)]
    }
}

fn tag(encoding: DeltaEncoding) -> u8 {
    match encoding {
        DeltaEncoding::F32 => 1,
        DeltaEncoding::F16 => 2,
        DeltaEncoding::Int8 => 3,
        DeltaEncoding::Q4 => 4,
        DeltaEncoding::Q2 => 5,
        DeltaEncoding::TopK { .. } => 6,
    }
}

fn dense_from_tag(tag: u8) -> Result<DeltaEncoding, EncodingError> {
    Ok(match tag {
        1 => DeltaEncoding::F32,
        2 => DeltaEncoding::F16,
        3 => DeltaEncoding::Int8,
        4 => DeltaEncoding::Q4,
        5 => DeltaEncoding::Q2,
        other => return Err(EncodingError::UnknownTag(other)),
    })
}

fn kept_from_tag(tag: u8) -> Result<KeptValues, EncodingError> {
    Ok(match tag {
        1 => KeptValues::F32,
        3 => KeptValues::Int8,
        4 => KeptValues::Q4,
        5 => KeptValues::Q2,
        other => return Err(EncodingError::UnknownTag(other)),
    })
}

/// The indices of the `keep` largest magnitudes of `chunk` (ties to the lower index), ascending.
fn top_indices(chunk: &[f32], keep: usize) -> Vec<u32> {
    let mut order: Vec<u32> = (0..chunk.len() as u32).collect();
    let keep = keep.min(chunk.len());
    if keep < chunk.len() {
        let larger_first =
            |a: &u32, b: &u32| chunk[*b as usize].abs().total_cmp(&chunk[*a as usize].abs()).then(a.cmp(b));
        order.select_nth_unstable_by(keep, larger_first);
        order.truncate(keep);
    }
    order.sort_unstable();
    order
}

/// Encodes `values` canonically, refusing values whose encoding would not decode: a value that is
/// not finite, or an f16 value beyond ±65504, which rounds to infinity ([`EncodingError::NonFinite`]
/// at the first). What a miner may send and what a checker may accept as the honest encoding:
/// a Δ the aggregators cannot decode would otherwise be judged valid and stall the round.
pub fn encode_finite(encoding: DeltaEncoding, values: &[f32]) -> Result<Vec<u8>, EncodingError> {
    check_finite(values)?;
    if values.len() as u64 > MAX_VALUES {
        return Err(EncodingError::TooManyValues(values.len() as u64));
    }
    if encoding == DeltaEncoding::F16 {
        if let Some(index) = values.iter().position(|v| f16::from_f32(*v).is_infinite()) {
            return Err(EncodingError::NonFinite(index));
        }
    }
    let encoded = encode(encoding, values);
    // A quantised value is its code times its chunk's scale, which can overflow where the input
    // did not (a scale of f32::MAX/127 rounds up): decode what was made, a block at a time.
    if Quantizer::of(encoding).is_some() || TopKShape::of(encoding).is_some() {
        decodes_finite(&encoded)?;
    }
    Ok(encoded)
}

/// Whether every value of the encoded Δ `bytes` decodes (to a finite value), checked a block of
/// values at a time so that no second copy of the whole Δ is held.
fn decodes_finite(bytes: &[u8]) -> Result<(), EncodingError> {
    const BLOCK: u64 = 1 << 20;
    let layout = Layout::parse(&bytes[..Layout::HEAD.min(bytes.len())], bytes.len() as u64)?;
    let mut start = 0;
    while start < layout.values {
        let range = start..(start + BLOCK).min(layout.values);
        let parts: Vec<&[u8]> =
            layout.spans(&range).into_iter().map(|r| &bytes[r.start as usize..r.end as usize]).collect();
        layout.decode_block(&range, &parts)?;
        start = range.end;
    }
    Ok(())
}

/// Encodes `values` canonically.
pub fn encode(encoding: DeltaEncoding, values: &[f32]) -> Vec<u8> {
    let n = values.len();
    let mut out = Vec::with_capacity(9 + n * 4);
    out.push(tag(encoding));
    out.extend_from_slice(&(n as u64).to_le_bytes());
    if let Some(shape) = TopKShape::of(encoding) {
        encode_top_k(&shape, values, &mut out);
        return out;
    }
    match Quantizer::of(encoding) {
        None if encoding == DeltaEncoding::F16 => {
            values.iter().for_each(|v| out.extend_from_slice(&f16::from_f32(*v).to_le_bytes()))
        }
        None => values.iter().for_each(|v| out.extend_from_slice(&v.to_le_bytes())),
        Some(q) => {
            out.extend_from_slice(&(q.chunk as u32).to_le_bytes());
            let scales: Vec<f32> = values.chunks(q.chunk).map(|c| q.scale(c.iter().copied())).collect();
            scales.iter().for_each(|s| out.extend_from_slice(&s.to_le_bytes()));
            let start = out.len();
            out.resize(start + q.code_bytes(n as u64) as usize, 0);
            for (i, value) in values.iter().enumerate() {
                q.put(&mut out[start..], (i * q.bits as usize) as u64, q.quantize(*value, scales[i / q.chunk]));
            }
        }
    }
    out
}

fn encode_top_k(shape: &TopKShape, values: &[f32], out: &mut Vec<u8>) {
    out.extend_from_slice(&(shape.chunk as u32).to_le_bytes());
    out.extend_from_slice(&(shape.keep as u32).to_le_bytes());
    out.push(tag(shape.values.dense()));
    let [scale_bytes, index_bytes, value_bytes] = shape.body_bytes(values.len() as u64);
    let scales_at = out.len();
    let indices_at = scales_at + scale_bytes as usize;
    let values_at = indices_at + index_bytes as usize;
    out.resize(values_at + value_bytes as usize, 0);
    let mut kept = 0u64;
    for (c, chunk) in values.chunks(shape.chunk as usize).enumerate() {
        let indices = top_indices(chunk, shape.keep as usize);
        let scale = shape.quantizer.map(|q| q.scale(indices.iter().map(|i| chunk[*i as usize])));
        if let Some(scale) = scale {
            out[scales_at + 4 * c..scales_at + 4 * c + 4].copy_from_slice(&scale.to_le_bytes());
        }
        for index in indices {
            write_bits(&mut out[indices_at..values_at], kept * u64::from(shape.index_bits), shape.index_bits, index);
            let value = chunk[index as usize];
            match (shape.quantizer, scale) {
                (Some(q), Some(scale)) => {
                    q.put(&mut out[values_at..], kept * u64::from(q.bits), q.quantize(value, scale))
                }
                _ => {
                    let at = values_at + 4 * kept as usize;
                    out[at..at + 4].copy_from_slice(&value.to_le_bytes());
                }
            }
            kept += 1;
        }
    }
}

/// The size of `n` values encoded with `encoding`: what [`encode`] returns, without encoding.
pub fn encoded_len(encoding: DeltaEncoding, n: u64) -> u64 {
    match (TopKShape::of(encoding), Quantizer::of(encoding)) {
        (Some(shape), _) => 18 + shape.body_bytes(n).iter().sum::<u64>(),
        (None, Some(q)) => 13 + n.div_ceil(q.chunk as u64) * 4 + q.code_bytes(n),
        (None, None) if encoding == DeltaEncoding::F16 => 9 + 2 * n,
        (None, None) => 9 + 4 * n,
    }
}

/// Decodes canonical bytes back to values, checking every size against the input first.
pub fn decode(bytes: &[u8]) -> Result<(DeltaEncoding, Vec<f32>), EncodingError> {
    let layout = Layout::parse(&bytes[..Layout::HEAD.min(bytes.len())], bytes.len() as u64)?;
    let range = 0..layout.values;
    let parts: Vec<&[u8]> =
        layout.spans(&range).into_iter().map(|r| &bytes[r.start as usize..r.end as usize]).collect();
    let decoded = layout.decode_block(&range, &parts)?;
    Ok((layout.encoding, decoded))
}

/// How the values of a Δ lie in its bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Form {
    F32,
    F16,
    /// Dense codes, with the chunk size the bytes name.
    Dense(Quantizer),
    TopK(TopKShape),
}

/// An encoded Δ's layout, read from its first [`Layout::HEAD`] bytes and its size: where any run
/// of its values lies, so a reader decodes a block of values at a time ([`Layout::decode_block`])
/// instead of the whole Δ. A Δ whose every block decodes is exactly one [`decode`] accepts, with
/// the same values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    pub encoding: DeltaEncoding,
    pub values: u64,
    form: Form,
}

impl Layout {
    /// Bytes [`Layout::parse`] reads (fewer when the whole Δ is shorter).
    pub const HEAD: usize = 18;

    /// The layout of an encoded Δ of `size` bytes starting with `head`, checking every size
    /// against `size` before anything is allocated.
    pub fn parse(head: &[u8], size: u64) -> Result<Self, EncodingError> {
        let wrong = |expected: u64| EncodingError::WrongSize { expected, got: size };
        if head.len() < 9 || size < 9 {
            return Err(wrong(9));
        }
        let values = u64::from_le_bytes(head[1..9].try_into().expect("8 bytes"));
        let u32_at = |at: usize| u32::from_le_bytes(head[at..at + 4].try_into().expect("4 bytes"));
        let (encoding, form, expected) = if head[0] == 6 {
            if head.len() < 18 || size < 18 {
                return Err(wrong(18));
            }
            let kept = kept_from_tag(head[17])?;
            let shape = TopKShape::new(u32_at(9), u32_at(13), kept)?;
            if values > MAX_VALUES {
                return Err(EncodingError::TooManyValues(values));
            }
            let keep = shape.keep as u16;
            (
                DeltaEncoding::TopK { keep, values: kept },
                Form::TopK(shape),
                18 + shape.body_bytes(values).iter().sum::<u64>(),
            )
        } else {
            let encoding = dense_from_tag(head[0])?;
            if values > MAX_VALUES {
                return Err(EncodingError::TooManyValues(values));
            }
            match Quantizer::of(encoding) {
                None if encoding == DeltaEncoding::F16 => (encoding, Form::F16, 9 + values * 2),
                None => (encoding, Form::F32, 9 + values * 4),
                Some(q) => {
                    if head.len() < 13 || size < 13 {
                        return Err(wrong(13));
                    }
                    let chunk = u32_at(9);
                    if chunk == 0 {
                        return Err(EncodingError::ZeroChunk);
                    }
                    let q = Quantizer { chunk: chunk as usize, ..q };
                    let expected = 13 + values.div_ceil(u64::from(chunk)) * 4 + q.code_bytes(values);
                    (encoding, Form::Dense(q), expected)
                }
            }
        };
        if size != expected {
            return Err(wrong(expected));
        }
        Ok(Self { encoding, values, form })
    }

    /// The byte spans holding values `range`, in the order [`Layout::decode_block`] takes them:
    /// the values' bytes for f32 and f16; the scales of their chunks, then their codes, for int8,
    /// q4 and q2 (a range starting inside a byte, at a code other than the byte's first, reads
    /// that whole byte); and for top-k the scales (quantised values only), indices and values
    /// of every chunk the range touches.
    pub fn spans(&self, range: &std::ops::Range<u64>) -> Vec<std::ops::Range<u64>> {
        let chunks = |chunk: u64| {
            let first = range.start / chunk;
            // The chunks the values fall in: none for an empty range.
            (first, if range.is_empty() { first } else { (range.end - 1) / chunk + 1 })
        };
        match self.form {
            Form::F32 | Form::F16 => {
                let width = if self.form == Form::F16 { 2 } else { 4 };
                std::iter::once(9 + width * range.start..9 + width * range.end).collect()
            }
            Form::Dense(q) => {
                let chunk = q.chunk as u64;
                let scales_end = 13 + self.values.div_ceil(chunk) * 4;
                let (first, end) = chunks(chunk);
                let bits = u64::from(q.bits);
                let codes = scales_end + range.start * bits / 8..scales_end + (range.end * bits).div_ceil(8);
                vec![13 + 4 * first..13 + 4 * end, codes.start..codes.end.max(codes.start)]
            }
            Form::TopK(shape) => {
                let [scale_bytes, index_bytes, _] = shape.body_bytes(self.values);
                let (first, end) = chunks(shape.chunk);
                let (from, to) = (shape.kept_before(first, self.values), shape.kept_before(end, self.values));
                let bit_span = |base: u64, width: u64| base + from * width / 8..base + (to * width).div_ceil(8);
                let indices = bit_span(18 + scale_bytes, u64::from(shape.index_bits));
                let values = bit_span(18 + scale_bytes + index_bytes, shape.value_bits());
                let mut spans =
                    vec![indices.start..indices.end.max(indices.start), values.start..values.end.max(values.start)];
                if shape.quantizer.is_some() {
                    spans.insert(0, 18 + 4 * first..18 + 4 * end);
                }
                spans
            }
        }
    }

    /// Values `range` from the bytes of [`Layout::spans`]; a value that is not finite is refused
    /// as [`decode`] refuses it (its index counted in the whole Δ), so are top-k indices out of
    /// order, and bytes that are not those spans' (a short read of a damaged file) are
    /// [`EncodingError::WrongSize`], never a panic.
    pub fn decode_block(&self, range: &std::ops::Range<u64>, parts: &[&[u8]]) -> Result<Vec<f32>, EncodingError> {
        let spans = self.spans(range);
        let length = |span: &std::ops::Range<u64>| span.end - span.start;
        if parts.len() != spans.len() {
            let got = parts.iter().map(|p| p.len() as u64).sum();
            return Err(EncodingError::WrongSize { expected: spans.iter().map(length).sum(), got });
        }
        for (span, part) in spans.iter().zip(parts) {
            if part.len() as u64 != length(span) {
                return Err(EncodingError::WrongSize { expected: length(span), got: part.len() as u64 });
            }
        }
        let decoded: Vec<f32> = match self.form {
            Form::F16 => parts[0].chunks_exact(2).map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
            Form::F32 => parts[0].chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
            Form::Dense(q) => {
                let scales = f32s(parts[0]);
                let chunk = q.chunk as u64;
                let first_chunk = range.start / chunk;
                // The code the first byte of the codes starts with.
                let first_code = range.start * u64::from(q.bits) / 8 * 8 / u64::from(q.bits);
                (range.start..range.end)
                    .map(|i| q.code(parts[1], first_code, i) as f32 * scales[(i / chunk - first_chunk) as usize])
                    .collect()
            }
            Form::TopK(shape) => {
                let mut out = vec![0.0f32; (range.end - range.start) as usize];
                for (position, value) in self.top_k_entries(&shape, range, parts)? {
                    if range.contains(&position) {
                        out[(position - range.start) as usize] = value;
                    }
                }
                out
            }
        };
        match decoded.iter().position(|v| !v.is_finite()) {
            Some(index) => Err(EncodingError::NonFinite(range.start as usize + index)),
            None => Ok(decoded),
        }
    }

    /// Every kept (position, value) of the chunks `range` touches, in order, checked: indices
    /// strictly ascending inside their chunk, values finite. `parts` are the spans' bytes, of
    /// the right lengths.
    fn top_k_entries(
        &self,
        shape: &TopKShape,
        range: &std::ops::Range<u64>,
        parts: &[&[u8]],
    ) -> Result<Vec<(u64, f32)>, EncodingError> {
        let (scales, indices, values) = match shape.quantizer {
            Some(_) => (f32s(parts[0]), parts[1], parts[2]),
            None => (Vec::new(), parts[0], parts[1]),
        };
        let first = range.start / shape.chunk;
        let end = if range.is_empty() { first } else { (range.end - 1) / shape.chunk + 1 };
        let from = shape.kept_before(first, self.values);
        let index_bits = u64::from(shape.index_bits);
        let (index_offset, value_offset) = (from * index_bits % 8, from * shape.value_bits() % 8);
        let mut entries = Vec::with_capacity((shape.kept_before(end, self.values) - from) as usize);
        for c in first..end {
            let length = shape.chunk.min(self.values - c * shape.chunk);
            let mut previous = None;
            for t in shape.kept_before(c, self.values)..shape.kept_before(c + 1, self.values) {
                let k = t - from;
                let index = u64::from(read_bits(indices, index_offset + k * index_bits, shape.index_bits));
                if index >= length || previous.is_some_and(|p| index <= p) {
                    return Err(EncodingError::IndicesOutOfOrder(c));
                }
                previous = Some(index);
                let value = match shape.quantizer {
                    Some(q) => {
                        let bit = value_offset + k * u64::from(q.bits);
                        q.signed(read_bits(values, bit, q.bits)) as f32 * scales[(c - first) as usize]
                    }
                    None => {
                        let at = 4 * k as usize;
                        f32::from_le_bytes(values[at..at + 4].try_into().expect("4 bytes"))
                    }
                };
                let position = c * shape.chunk + index;
                if !value.is_finite() {
                    return Err(EncodingError::NonFinite(position as usize));
                }
                entries.push((position, value));
            }
        }
        Ok(entries)
    }
}

fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
}

/// The chunk size and per-chunk scales of a dense quantised Δ (int8, q4, q2; `None` for other
/// encodings or malformed bytes).
pub fn chunk_scales(bytes: &[u8]) -> Option<(usize, Vec<f32>)> {
    let layout = Layout::parse(bytes.get(..Layout::HEAD.min(bytes.len()))?, bytes.len() as u64).ok()?;
    let Form::Dense(q) = layout.form else { return None };
    let chunks = layout.values.div_ceil(q.chunk as u64) as usize;
    Some((q.chunk, f32s(bytes.get(13..13 + chunks * 4)?)))
}

/// The largest |residual| that encoding to `bytes` can have left at each coordinate, for an
/// encoding with error feedback (`None` for f32, f16 and bytes that do not decode):
/// - int8, q4, q2: half a step of the coordinate's chunk, `scale / 2`;
/// - top-k: at a kept coordinate, half a step of its chunk (0 for f32 values); at a dropped one,
///   the chunk's smallest kept magnitude plus half a step (a dropped value is no larger than any
///   kept one, and a kept value is within half a step of what was sent).
///
/// What an encoding promises about its error feedback (tested and fuzzed here). Checkers no
/// longer bound a carried residual by it: they recompute the residual each Δ leaves exactly
/// (`docs/protocol.md` §4.3), which a bound could not make sound (a miner could grow its
/// residual round after round within the bound of its own last Δ).
pub fn residual_bounds(bytes: &[u8]) -> Option<Vec<f32>> {
    let layout = Layout::parse(bytes.get(..Layout::HEAD.min(bytes.len()))?, bytes.len() as u64).ok()?;
    let all = 0..layout.values;
    let parts: Vec<&[u8]> = layout.spans(&all).into_iter().map(|r| &bytes[r.start as usize..r.end as usize]).collect();
    match layout.form {
        Form::F32 | Form::F16 => None,
        Form::Dense(q) => {
            layout.decode_block(&all, &parts).ok()?;
            let scales = f32s(parts[0]);
            Some((0..layout.values as usize).map(|i| 0.5 * scales[i / q.chunk]).collect())
        }
        Form::TopK(shape) => {
            let entries = layout.top_k_entries(&shape, &all, &parts).ok()?;
            let half_steps = match shape.quantizer {
                Some(_) => f32s(parts[0]).iter().map(|s| 0.5 * s).collect(),
                None => vec![0.0; layout.values.div_ceil(shape.chunk) as usize],
            };
            let chunk_of = |position: u64| (position / shape.chunk) as usize;
            let mut smallest_kept = vec![f32::INFINITY; half_steps.len()];
            for (position, value) in &entries {
                let c = chunk_of(*position);
                smallest_kept[c] = smallest_kept[c].min(value.abs());
            }
            let mut bounds: Vec<f32> =
                (0..layout.values).map(|i| smallest_kept[chunk_of(i)] + half_steps[chunk_of(i)]).collect();
            for (position, _) in entries {
                bounds[position as usize] = half_steps[chunk_of(position)];
            }
            Some(bounds)
        }
    }
}

/// The hash a miner commits for an encoded Δ.
pub fn delta_hash(encoded: &[u8]) -> Hash {
    Hash::digest(HashDomain::Blob, encoded)
}

/// `value` rounded to bf16, to nearest with ties to even: unbiased, so what a residual that waits
/// many rounds (a top-k value not yet sent) loses to it does not pile up. It may exceed `value`
/// by half a bf16 step (2⁻⁹ of it).
fn bf16_nearest(value: f32) -> f32 {
    crate::compact::round_bf16(value)
}

/// Every value of a Δ to encode is finite: else [`EncodingError::NonFinite`] at the first that is
/// not (a round whose training diverged has no Δ to send; its encoding would not decode).
pub fn check_finite(values: &[f32]) -> Result<(), EncodingError> {
    match values.iter().position(|v| !v.is_finite()) {
        Some(index) => Err(EncodingError::NonFinite(index)),
        None => Ok(()),
    }
}

/// The canonical bytes of an error-feedback residual, which a miner publishes for its checkers
/// (`docs/protocol.md` §4.3): each value's bf16 bits, u16 little-endian. [`ErrorFeedback`] holds
/// its residual in bf16 already, so nothing is lost: half the bytes of f32.
pub fn residual_to_bytes(residual: &[f32]) -> Vec<u8> {
    residual.iter().flat_map(|r| ((bf16_nearest(*r).to_bits() >> 16) as u16).to_le_bytes()).collect()
}

/// What encoding `corrected` (a Δ plus the residual carried in) as `encoded` leaves for the next
/// round: `bf16(corrected − decode(encoded))`, value by value. The miner's [`ErrorFeedback`]
/// keeps it; every checker of the work recomputes it to check the miner's `next_residual`.
pub fn residual_left(corrected: &[f32], encoded: &[u8]) -> Result<Vec<f32>, EncodingError> {
    let (_, decoded) = decode(encoded)?;
    if decoded.len() != corrected.len() {
        return Err(EncodingError::WrongSize { expected: corrected.len() as u64, got: decoded.len() as u64 });
    }
    Ok(corrected.iter().zip(&decoded).map(|(c, q)| bf16_nearest(c - q)).collect())
}

/// The hash a reveal names for a residual (`WorkReveal::residual_hash`, `next_residual`): of its
/// [`residual_to_bytes`] in the blob domain, or `Hash::ZERO` when every value is zero (nothing
/// to carry: a miner then starts the next round from zeros).
pub fn residual_hash(residual: &[f32]) -> trellis_proto::Hash {
    if residual.iter().all(|r| *r == 0.0) {
        return trellis_proto::Hash::ZERO;
    }
    trellis_proto::blobwire::data_hash(&residual_to_bytes(residual))
}

/// A residual from [`residual_to_bytes`]' form: an odd length is [`EncodingError::WrongSize`],
/// a value that is not finite [`EncodingError::NonFinite`].
pub fn residual_from_bytes(bytes: &[u8]) -> Result<Vec<f32>, EncodingError> {
    if bytes.len() % 2 != 0 {
        return Err(EncodingError::WrongSize { expected: bytes.len() as u64 + 1, got: bytes.len() as u64 });
    }
    let values: Vec<f32> =
        bytes.chunks_exact(2).map(|b| f32::from_bits(u32::from(u16::from_le_bytes([b[0], b[1]])) << 16)).collect();
    check_finite(&values)?;
    Ok(values)
}

/// Error feedback: what encoding lost in one round (rounding, and for top-k every value not
/// sent) is added to the next round's Δ, so the error does not accumulate (Seide et al., 2014;
/// Karimireddy et al., 2019). The residual is kept in bf16, rounded to nearest (what that drops,
/// at most 2⁻⁹ of each value, is not carried), so that the residual a miner publishes for its
/// checkers is exactly the one it used, at 2 bytes a value.
#[derive(Debug, Clone, Default)]
pub struct ErrorFeedback {
    residual: Vec<f32>,
}

impl ErrorFeedback {
    /// Error feedback that carries `residual` (from an earlier round, in bf16) into the next
    /// encoding.
    pub fn with_residual(mut residual: Vec<f32>) -> Self {
        residual.iter_mut().for_each(|r| *r = bf16_nearest(*r));
        Self { residual }
    }

    /// Encodes `delta + residual` and keeps what the encoding lost as the new residual. A sum
    /// that is not finite (a diverged round's Δ) has no encoding: [`EncodingError::NonFinite`],
    /// and the residual is left as it was.
    pub fn encode(&mut self, encoding: DeltaEncoding, delta: &[f32]) -> Result<Vec<u8>, EncodingError> {
        if self.residual.len() != delta.len() {
            self.residual = vec![0.0; delta.len()];
        }
        let corrected: Vec<f32> = delta.iter().zip(&self.residual).map(|(d, r)| d + r).collect();
        check_finite(&corrected)?;
        let encoded = encode(encoding, &corrected);
        self.residual = residual_left(&corrected, &encoded)?;
        Ok(encoded)
    }

    pub fn residual(&self) -> &[f32] {
        &self.residual
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const ALL: [DeltaEncoding; 9] = DeltaEncoding::ALL;

    fn sample(n: usize) -> Vec<f32> {
        (0..n).map(|i| ((i as f32) * 0.37).sin() * (1.0 + (i % 7) as f32)).collect()
    }

    #[test]
    fn f32_is_lossless_and_sized() {
        let v = sample(1000);
        let bytes = encode(DeltaEncoding::F32, &v);
        assert_eq!(bytes.len(), 9 + 4000);
        assert_eq!(decode(&bytes).unwrap(), (DeltaEncoding::F32, v));
    }

    #[test]
    fn a_value_whose_encoding_would_not_decode_has_no_encoding() {
        // 65504 is f16's largest; 65520 and above round to infinity, which no aggregator decodes.
        let fits = [1.0, -65504.0, 65519.0];
        assert_eq!(encode_finite(DeltaEncoding::F16, &fits).unwrap(), encode(DeltaEncoding::F16, &fits));
        assert!(decode(&encode(DeltaEncoding::F16, &fits)).is_ok());
        assert_eq!(encode_finite(DeltaEncoding::F16, &[0.5, 1.0, -65520.0]), Err(EncodingError::NonFinite(2)));
        assert!(decode(&encode(DeltaEncoding::F16, &[65520.0])).is_err());
        // int8 of ±f32::MAX: the scale MAX/127 rounds up, and 127 of it is infinite.
        assert_eq!(encode_finite(DeltaEncoding::Int8, &[1.0, f32::MAX]), Err(EncodingError::NonFinite(1)));
        assert!(decode(&encode(DeltaEncoding::Int8, &[1.0, f32::MAX])).is_err());
        assert!(encode_finite(DeltaEncoding::Int8, &[1.0, 3e38]).is_ok());
        // f32 carries such values; neither carries a NaN.
        assert!(encode_finite(DeltaEncoding::F32, &[65520.0, 3e38]).is_ok());
        assert_eq!(encode_finite(DeltaEncoding::F32, &[0.0, f32::NAN]), Err(EncodingError::NonFinite(1)));
    }

    #[test]
    fn f16_and_int8_are_close_and_smaller() {
        let v = sample(10_000);
        let (_, h) = decode(&encode(DeltaEncoding::F16, &v)).unwrap();
        let (_, q) = decode(&encode(DeltaEncoding::Int8, &v)).unwrap();
        for i in 0..v.len() {
            assert!((h[i] - v[i]).abs() <= 8.0 * 2f32.powi(-11), "f16 at {i}");
            assert!((q[i] - v[i]).abs() <= 8.0 / 127.0 / 2.0 + 1e-6, "int8 at {i}");
        }
        assert_eq!(encode(DeltaEncoding::Int8, &v).len(), 9 + 4 + 3 * 4 + 10_000);
    }

    #[test]
    fn q4_and_q2_stay_within_half_a_step_and_take_their_bits() {
        let v = sample(10_000);
        for (encoding, levels, chunk, code_bytes) in
            [(DeltaEncoding::Q4, 7.0f32, Q4_CHUNK, 5_000), (DeltaEncoding::Q2, 1.0, Q2_CHUNK, 2_500)]
        {
            let bytes = encode(encoding, &v);
            assert_eq!(bytes.len(), 9 + 4 + 4 * 10_000usize.div_ceil(chunk) + code_bytes, "{encoding:?}");
            let (decoded_as, q) = decode(&bytes).unwrap();
            assert_eq!(decoded_as, encoding);
            let (named_chunk, scales) = chunk_scales(&bytes).unwrap();
            assert_eq!(named_chunk, chunk);
            for i in 0..v.len() {
                let scale = scales[i / chunk];
                assert!((q[i] - v[i]).abs() <= scale / 2.0 * 1.0001, "{encoding:?} at {i}");
                let level = q[i] / scale;
                assert!(
                    level.abs() <= levels * 1.0001 && (level - level.round()).abs() < 1e-4,
                    "{encoding:?} at {i}: level {level}"
                );
            }
        }
    }

    /// Fixed bytes: a change of the quantised layouts (bit order, sign, padding) fails here.
    #[test]
    fn quantised_golden_bytes() {
        // Scales that are exact in f32, so the levels are exact too.
        let values = [7.0f32, -7.0, 3.5, 0.0, -1.4];
        let scale = |s: f32| s.to_le_bytes().to_vec();
        let head = |tag: u8, chunk: usize| [&[tag][..], &5u64.to_le_bytes(), &(chunk as u32).to_le_bytes()].concat();
        // q4: scale 1; levels 7, −7, 4 (3.5, ties to even), 0, −1; 4-bit two's complement, low
        // nibble first, the last byte's high nibble zero.
        let q4 = [head(4, Q4_CHUNK), scale(1.0), vec![0x97, 0x04, 0x0f]].concat();
        assert_eq!(encode(DeltaEncoding::Q4, &values), q4);
        // q2: scale 7; levels 1, −1, 0 (0.5, ties to even), 0, 0; lowest bits first.
        let q2 = [head(5, Q2_CHUNK), scale(7.0), vec![0b0000_1101, 0x00]].concat();
        assert_eq!(encode(DeltaEncoding::Q2, &values), q2);
        // int8 keeps its byte a value.
        let int8 = [head(3, INT8_CHUNK), scale(1.0), vec![127, 129, 64, 0, 231]].concat();
        assert_eq!(encode(DeltaEncoding::Int8, &[127.0, -127.0, 64.0, 0.0, -25.0]), int8);
    }

    const TOP_K_Q2: DeltaEncoding = DeltaEncoding::TopK { keep: 2, values: KeptValues::Q2 };

    /// Fixed bytes of a top-k Δ: a change of its layout (index width, order, padding) fails here.
    #[test]
    fn top_k_golden_bytes() {
        let values = [0.5f32, -3.0, 1.0, 3.0, -0.25];
        let head = |tag: u8| {
            [&[6u8][..], &5u64.to_le_bytes(), &TOPK_CHUNK.to_le_bytes(), &2u32.to_le_bytes(), &[tag]].concat()
        };
        // Kept: indices 1 and 3 (|−3| = |3|, the two largest), 12 bits each: 0x001 | 0x003 << 12.
        let indices = [0x01, 0x30, 0x00];
        // q2: scale 3, levels −1 (0b11) then 1 (0b01).
        let q2 = [head(5), 3.0f32.to_le_bytes().to_vec(), indices.to_vec(), vec![0b0111]].concat();
        assert_eq!(encode(TOP_K_Q2, &values), q2);
        assert_eq!(decode(&q2).unwrap(), (TOP_K_Q2, vec![0.0, -3.0, 0.0, 3.0, 0.0]));
        let f32_values = DeltaEncoding::TopK { keep: 2, values: KeptValues::F32 };
        let f32_bytes =
            [head(1), indices.to_vec(), (-3.0f32).to_le_bytes().to_vec(), 3.0f32.to_le_bytes().to_vec()].concat();
        assert_eq!(encode(f32_values, &values), f32_bytes);
    }

    #[test]
    fn top_k_keeps_the_largest_of_each_chunk_ties_to_the_lower_index() {
        let v = sample(3 * TOPK_CHUNK as usize + 77);
        let encoding = DeltaEncoding::TopK { keep: 123, values: KeptValues::F32 };
        let bytes = encode(encoding, &v);
        // 3 full chunks keep 123 each, the last (77 values) keeps all 77.
        let kept = 3 * 123 + 77;
        assert_eq!(bytes.len(), 18 + (kept * 12usize).div_ceil(8) + 4 * kept);
        let (_, decoded) = decode(&bytes).unwrap();
        for (c, (chunk, sent)) in v.chunks(TOPK_CHUNK as usize).zip(decoded.chunks(TOPK_CHUNK as usize)).enumerate() {
            let smallest_sent = sent.iter().filter(|x| **x != 0.0).fold(f32::INFINITY, |m, x| m.min(x.abs()));
            for (x, y) in chunk.iter().zip(sent) {
                assert!(*y == 0.0 || y == x, "chunk {c}: a kept value is sent exactly");
                assert!(
                    *y != 0.0 || x.abs() <= smallest_sent,
                    "chunk {c}: a dropped value is no larger than a kept one"
                );
            }
            assert_eq!(sent.iter().filter(|x| **x != 0.0).count(), chunk.len().min(123), "chunk {c}");
        }
        let level = vec![1.0f32; 10];
        let (_, sent) = decode(&encode(DeltaEncoding::TopK { keep: 3, values: KeptValues::F32 }, &level)).unwrap();
        assert_eq!(sent, [1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]);
    }

    #[test]
    fn malformed_top_k_deltas_are_refused_with_their_reason() {
        let good = encode(TOP_K_Q2, &[0.5, -3.0, 1.0, 3.0, -0.25]);
        let mut swapped = good.clone();
        swapped[22..25].copy_from_slice(&[0x03, 0x10, 0x00]);
        assert_eq!(decode(&swapped), Err(EncodingError::IndicesOutOfOrder(0)));
        let mut repeated = good.clone();
        repeated[22..25].copy_from_slice(&[0x01, 0x10, 0x00]);
        assert_eq!(decode(&repeated), Err(EncodingError::IndicesOutOfOrder(0)));
        let mut past_the_end = good.clone();
        past_the_end[22..25].copy_from_slice(&[0x01, 0x50, 0x00]);
        assert_eq!(decode(&past_the_end), Err(EncodingError::IndicesOutOfOrder(0)));
        let mut other_chunk = good.clone();
        other_chunk[9..13].copy_from_slice(&8u32.to_le_bytes());
        assert_eq!(decode(&other_chunk), Err(EncodingError::TopKShape { chunk: 8, keep: 2 }));
        let mut keep_none = good.clone();
        keep_none[13..17].copy_from_slice(&0u32.to_le_bytes());
        assert_eq!(decode(&keep_none), Err(EncodingError::TopKShape { chunk: TOPK_CHUNK, keep: 0 }));
        let mut f16_values = good.clone();
        f16_values[17] = 2;
        assert_eq!(decode(&f16_values), Err(EncodingError::UnknownTag(2)));
        let mut infinite_scale = good;
        infinite_scale[18..22].copy_from_slice(&f32::INFINITY.to_le_bytes());
        assert_eq!(decode(&infinite_scale), Err(EncodingError::NonFinite(1)));
    }

    /// What error feedback leaves after an honest encoding is within [`residual_bounds`], for
    /// every encoding with feedback, and the top-k bound is tight at a dropped value.
    #[test]
    fn honest_residuals_are_within_their_bounds() {
        let v = sample(2 * TOPK_CHUNK as usize + 500);
        for encoding in ALL.into_iter().filter(|e| e.has_error_feedback()) {
            let mut feedback = ErrorFeedback::default();
            for round in 0..3 {
                let scaled: Vec<f32> = v.iter().map(|x| x * 0.1f32.powi(round)).collect();
                let encoded = feedback.encode(encoding, &scaled).unwrap();
                let bounds = residual_bounds(&encoded).unwrap();
                for (i, (r, b)) in feedback.residual().iter().zip(&bounds).enumerate() {
                    assert!(r.abs() <= b * (1.0 + 1.0 / 256.0), "{encoding}, round {round}, at {i}: |{r}| > {b}");
                }
            }
        }
        let encoded = encode(TOP_K_Q2, &[0.5, -3.0, 1.0, 3.0, -0.25]);
        // Kept: ±3 sent as ±3 exactly (half a step 1.5 is the bound); dropped: 3 + 1.5.
        assert_eq!(residual_bounds(&encoded).unwrap(), vec![4.5, 1.5, 4.5, 1.5, 4.5]);
        assert_eq!(residual_bounds(&encode(DeltaEncoding::F32, &[1.0])), None);
        assert_eq!(residual_bounds(&encoded[..20]), None);
    }

    #[test]
    fn a_delta_that_is_not_finite_has_no_encoding_and_leaves_the_residual_alone() {
        for encoding in ALL.into_iter().filter(|e| e.has_error_feedback()) {
            let mut feedback = ErrorFeedback::default();
            feedback.encode(encoding, &sample(5000)).unwrap();
            let before = feedback.residual().to_vec();
            for bad in [f32::INFINITY, f32::NAN, f32::NEG_INFINITY] {
                let mut v = sample(5000);
                v[4097] = bad;
                assert_eq!(feedback.encode(encoding, &v), Err(EncodingError::NonFinite(4097)), "{encoding} {bad}");
                assert_eq!(feedback.residual(), &before[..], "{encoding}: the residual is kept");
            }
            // A finite Δ whose sum with the residual overflows is refused too.
            let mut overflowing = ErrorFeedback::with_residual(vec![3e38; 10]);
            assert_eq!(overflowing.encode(encoding, &[3e38; 10]), Err(EncodingError::NonFinite(0)), "{encoding}");
        }
        assert_eq!(check_finite(&[0.0, 1.0, f32::NAN]), Err(EncodingError::NonFinite(2)));
        assert_eq!(check_finite(&sample(10)), Ok(()));
    }

    #[test]
    fn residuals_are_held_in_bf16_and_their_bytes_round_trip() {
        let mut feedback = ErrorFeedback::default();
        let v = sample(5000);
        feedback.encode(DeltaEncoding::Q4, &v).unwrap();
        let residual = feedback.residual().to_vec();
        assert!(residual.iter().all(|r| r.to_bits() & 0xffff == 0), "held in bf16");
        assert!(residual.iter().any(|r| *r != 0.0));
        let bytes = residual_to_bytes(&residual);
        assert_eq!(bytes.len(), 2 * residual.len());
        assert_eq!(residual_from_bytes(&bytes).unwrap(), residual);
        assert_eq!(residual_to_bytes(&[1.0 + 2f32.powi(-9), -(1.0 + 2f32.powi(-9))]), [0x80, 0x3f, 0x80, 0xbf]);
        assert!(matches!(residual_from_bytes(&bytes[..3]), Err(EncodingError::WrongSize { .. })));
        assert_eq!(residual_from_bytes(&[0x80, 0x7f]), Err(EncodingError::NonFinite(0)));
        let carried = ErrorFeedback::with_residual(vec![1.0 + 2f32.powi(-9)]);
        assert_eq!(carried.residual(), [1.0]);
    }

    /// The values of blocks at any boundaries (across int8 chunks too) are the whole decode's.
    fn decode_in_blocks(bytes: &[u8], block: u64) -> Result<Vec<f32>, EncodingError> {
        let layout = Layout::parse(&bytes[..Layout::HEAD.min(bytes.len())], bytes.len() as u64)?;
        let mut out = Vec::new();
        let mut start = 0;
        while start < layout.values {
            let range = start..(start + block).min(layout.values);
            let parts: Vec<&[u8]> =
                layout.spans(&range).into_iter().map(|r| &bytes[r.start as usize..r.end as usize]).collect();
            out.extend(layout.decode_block(&range, &parts)?);
            start = range.end;
        }
        Ok(out)
    }

    #[test]
    fn a_delta_decoded_block_by_block_is_the_whole_decode() {
        let v = sample(3 * INT8_CHUNK + 77);
        for encoding in ALL {
            let bytes = encode(encoding, &v);
            assert_eq!(bytes.len() as u64, encoded_len(encoding, v.len() as u64), "{encoding}");
            let whole = decode(&bytes).unwrap().1;
            for block in [1, 3, 1000, 1023, INT8_CHUNK as u64, 5000, 1 << 20] {
                assert_eq!(decode_in_blocks(&bytes, block).unwrap(), whole, "{encoding:?} in blocks of {block}");
            }
            // What the whole decode refuses, the blocks refuse, and with the same error.
            for cut in [bytes.len() - 1, 10, 3] {
                assert_eq!(
                    decode_in_blocks(&bytes[..cut], 1000).unwrap_err(),
                    decode(&bytes[..cut]).unwrap_err(),
                    "{encoding:?} cut at {cut}"
                );
            }
        }
        // A short read (a damaged file) is an error, not a panic.
        let bytes = encode(DeltaEncoding::Int8, &v);
        let layout = Layout::parse(&bytes[..Layout::HEAD], bytes.len() as u64).unwrap();
        let range = 0..5000;
        let spans = layout.spans(&range);
        let (scales, values) = (&spans[0], &spans[1]);
        let values = &bytes[values.start as usize..values.end as usize];
        let scales = &bytes[scales.start as usize..scales.end as usize];
        assert!(layout.decode_block(&range, &[scales, &values[1..]]).is_err());
        assert!(layout.decode_block(&range, &[&scales[..4], values]).is_err());
        assert!(layout.decode_block(&range, &[values]).is_err());
        assert!(layout.decode_block(&range, &[]).is_err());
        assert!(layout.decode_block(&(0..0), &[]).is_err());
        assert_eq!(layout.decode_block(&(0..0), &[&[], &[]]), Ok(vec![]));
        let mut infinite = encode(DeltaEncoding::F32, &v);
        let at = 9 + 4 * 5000;
        infinite[at..at + 4].copy_from_slice(&f32::INFINITY.to_le_bytes());
        assert_eq!(decode_in_blocks(&infinite, 1000).unwrap_err(), EncodingError::NonFinite(5000));
        assert_eq!(decode(&infinite).unwrap_err(), EncodingError::NonFinite(5000));
    }

    #[test]
    fn quantisers_round_ties_to_even_and_handle_zero_chunks() {
        for encoding in [DeltaEncoding::Int8, DeltaEncoding::Q4, DeltaEncoding::Q2] {
            let bytes = encode(encoding, &[0.0; 10]);
            assert_eq!(decode(&bytes).unwrap().1, vec![0.0; 10]);
        }
        let int8 = Quantizer::of(DeltaEncoding::Int8).unwrap();
        assert_eq!(int8.quantize(2.5, 1.0), 2);
        assert_eq!(int8.quantize(3.5, 1.0), 4);
        assert_eq!(int8.quantize(-1000.0, 1.0), -127);
        let q2 = Quantizer::of(DeltaEncoding::Q2).unwrap();
        assert_eq!((q2.quantize(0.5, 1.0), q2.quantize(0.51, 1.0), q2.quantize(-9.0, 1.0)), (0, 1, -1));
    }

    #[test]
    fn malformed_bytes_are_errors_not_panics() {
        let good = encode(DeltaEncoding::Int8, &sample(5000));
        for cut in 0..good.len().min(64) {
            assert!(decode(&good[..cut]).is_err());
        }
        assert!(decode(&good[..good.len() - 1]).is_err());
        let mut longer = good.clone();
        longer.push(0);
        assert!(decode(&longer).is_err());
        let mut bad_tag = good.clone();
        bad_tag[0] = 9;
        assert_eq!(decode(&bad_tag), Err(EncodingError::UnknownTag(9)));
        let mut huge = good.clone();
        huge[1..9].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(decode(&huge), Err(EncodingError::TooManyValues(_))));
        let mut zero_chunk = good;
        zero_chunk[9..13].copy_from_slice(&0u32.to_le_bytes());
        assert_eq!(decode(&zero_chunk), Err(EncodingError::ZeroChunk));
        let mut nan = encode(DeltaEncoding::F32, &[1.0, 2.0]);
        nan[13..17].copy_from_slice(&f32::NAN.to_le_bytes());
        assert_eq!(decode(&nan), Err(EncodingError::NonFinite(1)));
    }

    #[test]
    fn error_feedback_loses_less_than_plain_quantisation_over_rounds() {
        // The same small Δ every round: without feedback the int8 error repeats every round;
        // with feedback the sum of what was sent tracks the sum of the true Δ. Top-k sends 3% of
        // a chunk a round or fewer, so a value waits up to tens of rounds for its turn: it runs longer.
        let delta: Vec<f32> = sample(8192).iter().map(|v| v * 1e-3).collect();
        for encoding in ALL.into_iter().filter(|e| e.has_error_feedback()) {
            let rounds = if matches!(encoding, DeltaEncoding::TopK { .. }) { 300 } else { 20 };
            let mut feedback = ErrorFeedback::default();
            let mut sent_plain = vec![0.0f32; delta.len()];
            let mut sent_feedback = vec![0.0f32; delta.len()];
            for _ in 0..rounds {
                let (_, plain) = decode(&encode(encoding, &delta)).unwrap();
                let (_, fb) = decode(&feedback.encode(encoding, &delta).unwrap()).unwrap();
                for i in 0..delta.len() {
                    sent_plain[i] += plain[i];
                    sent_feedback[i] += fb[i];
                }
            }
            let error = |sent: &[f32]| -> f64 {
                sent.iter().zip(&delta).map(|(s, d)| f64::from(s - d * rounds as f32).powi(2)).sum::<f64>().sqrt()
            };
            let (plain, fb) = (error(&sent_plain), error(&sent_feedback));
            assert!(fb < plain / 5.0, "{encoding}: feedback error {fb} vs plain {plain}");
        }
    }

    /// Decodes `bytes` (which must not panic) and checks what a decoded Δ promises: its length,
    /// finiteness, one byte form for f32 and f16, and scales that `chunk_scales` agrees on.
    fn decode_is_sound(bytes: &[u8]) -> Result<(), TestCaseError> {
        let scales = chunk_scales(bytes);
        let Ok((encoding, values)) = decode(bytes) else { return Ok(()) };
        prop_assert_eq!(u64::from_le_bytes(bytes[1..9].try_into().unwrap()), values.len() as u64);
        prop_assert!(values.iter().all(|v| v.is_finite()));
        match encoding {
            DeltaEncoding::F32 | DeltaEncoding::F16 => prop_assert_eq!(encode(encoding, &values), bytes),
            DeltaEncoding::Int8 | DeltaEncoding::Q4 | DeltaEncoding::Q2 => {
                let (chunk, scales) = scales.expect("a decodable quantised Δ has scales");
                prop_assert_eq!(scales.len(), values.len().div_ceil(chunk));
            }
            DeltaEncoding::TopK { .. } => {
                let bounds = residual_bounds(bytes).expect("a decodable top-k Δ has residual bounds");
                prop_assert_eq!(bounds.len(), values.len());
            }
        }
        Ok(())
    }

    /// A header (tag, count, and for a quantised encoding a chunk size) followed by `body`.
    fn framed(tag: u8, n: u64, chunk: u32, body: &[u8]) -> Vec<u8> {
        let mut bytes = vec![tag];
        bytes.extend_from_slice(&n.to_le_bytes());
        if (3..=6).contains(&tag) {
            bytes.extend_from_slice(&chunk.to_le_bytes());
        }
        bytes.extend_from_slice(body);
        bytes
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2048, ..ProptestConfig::default() })]

        // An encoded Δ comes from a miner: no bytes may panic the validator or checker decoding it.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            decode_is_sound(&bytes)?;
        }

        // Headers that agree or nearly agree with the body, where random bytes rarely land.
        #[test]
        fn near_valid_encodings_never_panic(
            tag in 0u8..7,
            n in 0u64..40,
            chunk in 0u32..9,
            slack in -3i64..4,
            fill in any::<u8>(),
            huge in any::<bool>(),
        ) {
            let n = if huge { u64::MAX - n } else { n };
            let expected = match tag {
                1 => n.saturating_mul(4),
                2 => n.saturating_mul(2),
                4 => n.div_ceil(u64::from(chunk.max(1))).saturating_mul(4).saturating_add(n.div_ceil(2)),
                5 => n.div_ceil(u64::from(chunk.max(1))).saturating_mul(4).saturating_add(n.div_ceil(4)),
                _ => n.div_ceil(u64::from(chunk.max(1))).saturating_mul(4).saturating_add(n),
            };
            let len = (expected.min(4096) as i64 + slack).max(0) as usize;
            decode_is_sound(&framed(tag, n, chunk, &vec![fill; len]))?;
        }

        // Top-k headers of the right shape over bodies of about the right size.
        #[test]
        fn near_valid_top_k_deltas_never_panic(
            n in 0u64..9000,
            keep in 0u32..6,
            value_tag in prop::sample::select(vec![1u8, 2, 3, 4, 5]),
            slack in -3i64..4,
            fill in any::<u8>(),
        ) {
            let mut head = framed(6, n, TOPK_CHUNK, &keep.to_le_bytes());
            head.push(value_tag);
            let shape = TopKShape::new(TOPK_CHUNK, keep.max(1), kept_from_tag(value_tag).unwrap_or(KeptValues::F32)).unwrap();
            let expected: u64 = shape.body_bytes(n).iter().sum();
            let len = (expected as i64 + slack).max(0) as usize;
            head.extend(std::iter::repeat_n(fill, len));
            decode_is_sound(&head)?;
        }

        #[test]
        fn edited_encodings_never_panic(
            encoding in prop::sample::select(ALL.to_vec()),
            values in proptest::collection::vec(-1e3f32..1e3, 0..50),
            edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..4),
        ) {
            let mut bytes = encode(encoding, &values);
            for (at, byte) in edits {
                let at = at % bytes.len();
                bytes[at] = byte;
            }
            decode_is_sound(&bytes)?;
        }
    }
}
