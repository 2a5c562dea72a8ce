//! Pseudo-gradient encodings for the network: f32, f16, and quantised codes of 8, 4 or 2 bits
//! with per-chunk scales and error feedback.
//!
//! Canonical layout of an encoded Δ (its blake3 hash is the `delta_hash` a miner commits):
//!
//! ```text
//! u8   encoding tag (1 = f32, 2 = f16, 3 = int8, 4 = q4, 5 = q2)
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
//! ```
//!
//! For int8 that is one byte a value, the layout int8 always had. Encoding is a function of the
//! values alone (the chunk size is the encoding's, [`Quantizer::chunk`]), so a checker recomputes
//! a miner's encoded Δ byte for byte; decoding accepts any chunk size and code and never panics.

use half::f16;
use thiserror::Error;
use trellis_proto::{DeltaEncoding, Hash, HashDomain};

/// Values per int8 scale.
pub const INT8_CHUNK: usize = 4096;
/// Values per q4 scale: a scale is 4 bytes, 0.8% of a q4 chunk's 512.
pub const Q4_CHUNK: usize = 1024;
/// Values per q2 scale: 2 bits leave three levels (−s, 0, s), so a chunk is kept short for its
/// scale to follow the values (a scale is 6% of a q2 chunk's 64 bytes).
pub const Q2_CHUNK: usize = 256;
/// Most values an encoded Δ may hold (a 1B-parameter model).
pub const MAX_VALUES: u64 = 1 << 30;

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
    /// The quantiser of a quantised encoding; `None` for f32 and f16.
    pub fn of(encoding: DeltaEncoding) -> Option<Self> {
        let (bits, chunk) = match encoding {
            DeltaEncoding::F32 | DeltaEncoding::F16 => return None,
            DeltaEncoding::Int8 => (8, INT8_CHUNK),
            DeltaEncoding::Q4 => (4, Q4_CHUNK),
            DeltaEncoding::Q2 => (2, Q2_CHUNK),
        };
        Some(Self { bits, levels: (1 << (bits - 1)) - 1, chunk })
    }

    /// The scale of a chunk: its largest magnitude on the top level.
    fn scale(&self, chunk: &[f32]) -> f32 {
        chunk.iter().fold(0.0f32, |max, v| max.max(v.abs())) / self.levels as f32
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
        let bit = (index - first) * u64::from(self.bits);
        let raw = u32::from(codes[(bit / 8) as usize] >> (bit % 8)) & ((1 << self.bits) - 1);
        let sign = 1 << (self.bits - 1);
        if raw & sign != 0 {
            raw as i32 - (1 << self.bits)
        } else {
            raw as i32
        }
    }
}

fn tag(encoding: DeltaEncoding) -> u8 {
    match encoding {
        DeltaEncoding::F32 => 1,
        DeltaEncoding::F16 => 2,
        DeltaEncoding::Int8 => 3,
        DeltaEncoding::Q4 => 4,
        DeltaEncoding::Q2 => 5,
    }
}

fn from_tag(tag: u8) -> Result<DeltaEncoding, EncodingError> {
    Ok(match tag {
        1 => DeltaEncoding::F32,
        2 => DeltaEncoding::F16,
        3 => DeltaEncoding::Int8,
        4 => DeltaEncoding::Q4,
        5 => DeltaEncoding::Q2,
        other => return Err(EncodingError::UnknownTag(other)),
    })
}

/// Encodes `values` canonically.
pub fn encode(encoding: DeltaEncoding, values: &[f32]) -> Vec<u8> {
    let n = values.len();
    let mut out = Vec::with_capacity(9 + n * 4);
    out.push(tag(encoding));
    out.extend_from_slice(&(n as u64).to_le_bytes());
    match Quantizer::of(encoding) {
        None if encoding == DeltaEncoding::F16 => {
            values.iter().for_each(|v| out.extend_from_slice(&f16::from_f32(*v).to_le_bytes()))
        }
        None => values.iter().for_each(|v| out.extend_from_slice(&v.to_le_bytes())),
        Some(q) => {
            out.extend_from_slice(&(q.chunk as u32).to_le_bytes());
            let scales: Vec<f32> = values.chunks(q.chunk).map(|c| q.scale(c)).collect();
            scales.iter().for_each(|s| out.extend_from_slice(&s.to_le_bytes()));
            let start = out.len();
            out.resize(start + q.code_bytes(n as u64) as usize, 0);
            let mask = (1u32 << q.bits) - 1;
            for (i, value) in values.iter().enumerate() {
                let code = (q.quantize(*value, scales[i / q.chunk]) as u32) & mask;
                let bit = i * q.bits as usize;
                out[start + bit / 8] |= (code << (bit % 8)) as u8;
            }
        }
    }
    out
}

/// Decodes canonical bytes back to values, checking every size against the input first.
pub fn decode(bytes: &[u8]) -> Result<(DeltaEncoding, Vec<f32>), EncodingError> {
    let layout = Layout::parse(&bytes[..Layout::HEAD.min(bytes.len())], bytes.len() as u64)?;
    let range = 0..layout.values;
    let (values, scales) = layout.spans(&range);
    let slice = |r: std::ops::Range<u64>| &bytes[r.start as usize..r.end as usize];
    let decoded = layout.decode_block(&range, slice(values), scales.map(slice))?;
    Ok((layout.encoding, decoded))
}

/// An encoded Δ's layout, read from its first [`Layout::HEAD`] bytes and its size: where any run
/// of its values lies, so a reader decodes a block of values at a time ([`Layout::decode_block`])
/// instead of the whole Δ. A Δ whose every block decodes is exactly one [`decode`] accepts, with
/// the same values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    pub encoding: DeltaEncoding,
    pub values: u64,
    /// The quantiser with the chunk size the bytes name (`None` for f32 and f16).
    quantizer: Option<Quantizer>,
}

impl Layout {
    /// Bytes [`Layout::parse`] reads (fewer when the whole Δ is shorter).
    pub const HEAD: usize = 13;

    /// The layout of an encoded Δ of `size` bytes starting with `head`, checking every size
    /// against `size` before anything is allocated.
    pub fn parse(head: &[u8], size: u64) -> Result<Self, EncodingError> {
        let wrong = |expected: u64| EncodingError::WrongSize { expected, got: size };
        if head.len() < 9 || size < 9 {
            return Err(wrong(9));
        }
        let encoding = from_tag(head[0])?;
        let values = u64::from_le_bytes(head[1..9].try_into().expect("8 bytes"));
        if values > MAX_VALUES {
            return Err(EncodingError::TooManyValues(values));
        }
        let (quantizer, expected) = match Quantizer::of(encoding) {
            None if encoding == DeltaEncoding::F16 => (None, 9 + values * 2),
            None => (None, 9 + values * 4),
            Some(q) => {
                if head.len() < 13 || size < 13 {
                    return Err(wrong(13));
                }
                let chunk = u32::from_le_bytes(head[9..13].try_into().expect("4 bytes"));
                if chunk == 0 {
                    return Err(EncodingError::ZeroChunk);
                }
                let q = Quantizer { chunk: chunk as usize, ..q };
                (Some(q), 13 + values.div_ceil(u64::from(chunk)) * 4 + q.code_bytes(values))
            }
        };
        if size != expected {
            return Err(wrong(expected));
        }
        Ok(Self { encoding, values, quantizer })
    }

    /// The bytes holding values `range` and, for quantised encodings, the bytes of their chunks'
    /// scales. A quantised range's bytes start at the byte holding its first code (a range
    /// starting inside a byte, at a code other than the byte's first, reads that whole byte).
    pub fn spans(&self, range: &std::ops::Range<u64>) -> (std::ops::Range<u64>, Option<std::ops::Range<u64>>) {
        match self.quantizer {
            None => {
                let width = if self.encoding == DeltaEncoding::F16 { 2 } else { 4 };
                (9 + width * range.start..9 + width * range.end, None)
            }
            Some(q) => {
                let chunk = q.chunk as u64;
                let scales_end = 13 + self.values.div_ceil(chunk) * 4;
                let first = range.start / chunk;
                // The chunks the values fall in: none for an empty range.
                let end = if range.is_empty() { first } else { (range.end - 1) / chunk + 1 };
                let scales = 13 + 4 * first..13 + 4 * end;
                let bits = u64::from(q.bits);
                let codes = scales_end + range.start * bits / 8..scales_end + (range.end * bits).div_ceil(8);
                (codes.start..codes.end.max(codes.start), Some(scales))
            }
        }
    }

    /// Values `range` from the bytes of [`Layout::spans`]; a value that is not finite is refused
    /// as [`decode`] refuses it (its index counted in the whole Δ), and bytes that are not those
    /// spans' (a short read of a damaged file) are [`EncodingError::WrongSize`], never a panic.
    pub fn decode_block(
        &self,
        range: &std::ops::Range<u64>,
        values: &[u8],
        scales: Option<&[u8]>,
    ) -> Result<Vec<f32>, EncodingError> {
        let (value_span, scale_span) = self.spans(range);
        let length = |span: &std::ops::Range<u64>| span.end - span.start;
        let wrong = |span: &std::ops::Range<u64>, got: usize| EncodingError::WrongSize {
            expected: length(span),
            got: got as u64,
        };
        if values.len() as u64 != length(&value_span) {
            return Err(wrong(&value_span, values.len()));
        }
        let scales = match (&scale_span, scales) {
            (Some(span), Some(bytes)) if bytes.len() as u64 == length(span) => bytes,
            (Some(span), bytes) => return Err(wrong(span, bytes.map_or(0, <[u8]>::len))),
            (None, _) => &[],
        };
        let decoded: Vec<f32> = match self.quantizer {
            None if self.encoding == DeltaEncoding::F16 => {
                values.chunks_exact(2).map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32()).collect()
            }
            None => values.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
            Some(q) => {
                let scales: Vec<f32> =
                    scales.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
                let chunk = q.chunk as u64;
                let first_chunk = range.start / chunk;
                // The code the first byte of `values` starts with.
                let first_code = range.start * u64::from(q.bits) / 8 * 8 / u64::from(q.bits);
                (range.start..range.end)
                    .map(|i| q.code(values, first_code, i) as f32 * scales[(i / chunk - first_chunk) as usize])
                    .collect()
            }
        };
        match decoded.iter().position(|v| !v.is_finite()) {
            Some(index) => Err(EncodingError::NonFinite(range.start as usize + index)),
            None => Ok(decoded),
        }
    }
}

/// The chunk size and per-chunk scales of a quantised Δ (int8, q4, q2; `None` for other
/// encodings or malformed bytes).
pub fn chunk_scales(bytes: &[u8]) -> Option<(usize, Vec<f32>)> {
    let layout = Layout::parse(bytes.get(..Layout::HEAD)?, bytes.len() as u64).ok()?;
    let chunk = layout.quantizer?.chunk;
    let chunks = layout.values.div_ceil(chunk as u64) as usize;
    let scales = bytes
        .get(13..13 + chunks * 4)?
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes")))
        .collect();
    Some((chunk, scales))
}

/// The hash a miner commits for an encoded Δ.
pub fn delta_hash(encoded: &[u8]) -> Hash {
    Hash::digest(HashDomain::Blob, encoded)
}

/// Error feedback: what quantisation lost in one round is added to the next round's Δ, so the
/// error does not accumulate (Seide et al., 2014; Karimireddy et al., 2019).
#[derive(Debug, Clone, Default)]
pub struct ErrorFeedback {
    residual: Vec<f32>,
}

impl ErrorFeedback {
    /// Error feedback that carries `residual` (from an earlier round) into the next encoding.
    pub fn with_residual(residual: Vec<f32>) -> Self {
        Self { residual }
    }

    /// Encodes `delta + residual` and keeps what the encoding lost as the new residual.
    pub fn encode(&mut self, encoding: DeltaEncoding, delta: &[f32]) -> Vec<u8> {
        if self.residual.len() != delta.len() {
            self.residual = vec![0.0; delta.len()];
        }
        let corrected: Vec<f32> = delta.iter().zip(&self.residual).map(|(d, r)| d + r).collect();
        let encoded = encode(encoding, &corrected);
        let (_, decoded) = decode(&encoded).expect("our own encoding decodes");
        for ((r, c), q) in self.residual.iter_mut().zip(&corrected).zip(&decoded) {
            *r = c - q;
        }
        encoded
    }

    pub fn residual(&self) -> &[f32] {
        &self.residual
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const ALL: [DeltaEncoding; 5] =
        [DeltaEncoding::F32, DeltaEncoding::F16, DeltaEncoding::Int8, DeltaEncoding::Q4, DeltaEncoding::Q2];

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

    /// The values of blocks at any boundaries (across int8 chunks too) are the whole decode's.
    fn decode_in_blocks(bytes: &[u8], block: u64) -> Result<Vec<f32>, EncodingError> {
        let layout = Layout::parse(&bytes[..Layout::HEAD.min(bytes.len())], bytes.len() as u64)?;
        let mut out = Vec::new();
        let mut start = 0;
        while start < layout.values {
            let range = start..(start + block).min(layout.values);
            let (values, scales) = layout.spans(&range);
            let slice = |r: std::ops::Range<u64>| &bytes[r.start as usize..r.end as usize];
            out.extend(layout.decode_block(&range, slice(values), scales.map(slice))?);
            start = range.end;
        }
        Ok(out)
    }

    #[test]
    fn a_delta_decoded_block_by_block_is_the_whole_decode() {
        let v = sample(3 * INT8_CHUNK + 77);
        for encoding in ALL {
            let bytes = encode(encoding, &v);
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
        let (values, scales) = layout.spans(&range);
        let values = &bytes[values.start as usize..values.end as usize];
        let scales = scales.unwrap();
        let scales = &bytes[scales.start as usize..scales.end as usize];
        assert!(layout.decode_block(&range, &values[1..], Some(scales)).is_err());
        assert!(layout.decode_block(&range, values, Some(&scales[..4])).is_err());
        assert!(layout.decode_block(&range, values, None).is_err());
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
        // with feedback the sum of what was sent tracks the sum of the true Δ.
        let delta: Vec<f32> = sample(8192).iter().map(|v| v * 1e-3).collect();
        let rounds = 20;
        for encoding in [DeltaEncoding::Int8, DeltaEncoding::Q4, DeltaEncoding::Q2] {
            let mut feedback = ErrorFeedback::default();
            let mut sent_plain = vec![0.0f32; delta.len()];
            let mut sent_feedback = vec![0.0f32; delta.len()];
            for _ in 0..rounds {
                let (_, plain) = decode(&encode(encoding, &delta)).unwrap();
                let (_, fb) = decode(&feedback.encode(encoding, &delta)).unwrap();
                for i in 0..delta.len() {
                    sent_plain[i] += plain[i];
                    sent_feedback[i] += fb[i];
                }
            }
            let error = |sent: &[f32]| -> f64 {
                sent.iter().zip(&delta).map(|(s, d)| f64::from(s - d * rounds as f32).powi(2)).sum::<f64>().sqrt()
            };
            let (plain, fb) = (error(&sent_plain), error(&sent_feedback));
            assert!(fb < plain / 5.0, "{encoding:?}: feedback error {fb} vs plain {plain}");
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
        }
        Ok(())
    }

    /// A header (tag, count, and for a quantised encoding a chunk size) followed by `body`.
    fn framed(tag: u8, n: u64, chunk: u32, body: &[u8]) -> Vec<u8> {
        let mut bytes = vec![tag];
        bytes.extend_from_slice(&n.to_le_bytes());
        if (3..=5).contains(&tag) {
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
