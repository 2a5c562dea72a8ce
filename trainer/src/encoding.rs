//! Pseudo-gradient encodings for the network: f32, f16, and int8 with per-chunk scales and
//! error feedback.
//!
//! Canonical layout of an encoded Δ (its blake3 hash is the `delta_hash` a miner commits):
//!
//! ```text
//! u8   encoding tag (1 = f32, 2 = f16, 3 = int8)
//! u64  n, the number of values (little-endian)
//! f32:  n × f32 LE
//! f16:  n × IEEE binary16 LE (round to nearest, ties to even)
//! int8: u32 chunk size C, then ceil(n / C) × f32 LE scales, then n × i8,
//!       where value i = q_i × scale[i / C], scale = max|x| / 127 over the chunk, and
//!       q = round-ties-even(x / scale) clamped to [-127, 127] (q = 0 when scale = 0)
//! ```

use half::f16;
use thiserror::Error;
use trellis_proto::{DeltaEncoding, Hash, HashDomain};

/// Values per int8 scale.
pub const INT8_CHUNK: usize = 4096;
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
    #[error("int8 chunk size must be positive")]
    ZeroChunk,
    #[error("encoded delta has a non-finite value at {0}")]
    NonFinite(usize),
    #[error("delta has {got} values, the model has {expected}")]
    LengthMismatch { expected: usize, got: usize },
}

fn tag(encoding: DeltaEncoding) -> u8 {
    match encoding {
        DeltaEncoding::F32 => 1,
        DeltaEncoding::F16 => 2,
        DeltaEncoding::Int8 => 3,
    }
}

/// Encodes `values` canonically.
pub fn encode(encoding: DeltaEncoding, values: &[f32]) -> Vec<u8> {
    let n = values.len();
    let mut out = Vec::with_capacity(9 + n * 4);
    out.push(tag(encoding));
    out.extend_from_slice(&(n as u64).to_le_bytes());
    match encoding {
        DeltaEncoding::F32 => values.iter().for_each(|v| out.extend_from_slice(&v.to_le_bytes())),
        DeltaEncoding::F16 => values.iter().for_each(|v| out.extend_from_slice(&f16::from_f32(*v).to_le_bytes())),
        DeltaEncoding::Int8 => {
            out.extend_from_slice(&(INT8_CHUNK as u32).to_le_bytes());
            let scales: Vec<f32> = values.chunks(INT8_CHUNK).map(int8_scale).collect();
            scales.iter().for_each(|s| out.extend_from_slice(&s.to_le_bytes()));
            for (chunk, scale) in values.chunks(INT8_CHUNK).zip(&scales) {
                out.extend(chunk.iter().map(|&v| quantize(v, *scale) as u8));
            }
        }
    }
    out
}

fn int8_scale(chunk: &[f32]) -> f32 {
    chunk.iter().fold(0.0f32, |max, v| max.max(v.abs())) / 127.0
}

fn quantize(value: f32, scale: f32) -> i8 {
    if scale == 0.0 {
        return 0;
    }
    (value / scale).round_ties_even().clamp(-127.0, 127.0) as i8
}

/// Decodes canonical bytes back to values, checking every size against the input first.
pub fn decode(bytes: &[u8]) -> Result<(DeltaEncoding, Vec<f32>), EncodingError> {
    let wrong = |expected: u64| EncodingError::WrongSize { expected, got: bytes.len() as u64 };
    if bytes.len() < 9 {
        return Err(wrong(9));
    }
    let encoding = match bytes[0] {
        1 => DeltaEncoding::F32,
        2 => DeltaEncoding::F16,
        3 => DeltaEncoding::Int8,
        other => return Err(EncodingError::UnknownTag(other)),
    };
    let n = u64::from_le_bytes(bytes[1..9].try_into().expect("8 bytes"));
    if n > MAX_VALUES {
        return Err(EncodingError::TooManyValues(n));
    }
    let body = &bytes[9..];
    let n_usize = n as usize;
    let values = match encoding {
        DeltaEncoding::F32 => {
            if body.len() as u64 != n * 4 {
                return Err(wrong(9 + n * 4));
            }
            body.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes"))).collect::<Vec<_>>()
        }
        DeltaEncoding::F16 => {
            if body.len() as u64 != n * 2 {
                return Err(wrong(9 + n * 2));
            }
            body.chunks_exact(2).map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32()).collect()
        }
        DeltaEncoding::Int8 => {
            if body.len() < 4 {
                return Err(wrong(13));
            }
            let chunk = u32::from_le_bytes(body[..4].try_into().expect("4 bytes")) as u64;
            if chunk == 0 {
                return Err(EncodingError::ZeroChunk);
            }
            let chunks = n.div_ceil(chunk);
            let expected = 9 + 4 + chunks * 4 + n;
            if bytes.len() as u64 != expected {
                return Err(wrong(expected));
            }
            let scales: Vec<f32> = body[4..4 + chunks as usize * 4]
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes")))
                .collect();
            let quantized = &body[4 + chunks as usize * 4..];
            (0..n_usize).map(|i| f32::from(quantized[i] as i8) * scales[i / chunk as usize]).collect()
        }
    };
    if let Some(index) = values.iter().position(|v| !v.is_finite()) {
        return Err(EncodingError::NonFinite(index));
    }
    Ok((encoding, values))
}

/// An encoded Δ's layout, read from its first [`Layout::HEAD`] bytes and its size: where any run
/// of its values lies, so a reader decodes a block of values at a time ([`Layout::decode_block`])
/// instead of the whole Δ. A Δ whose every block decodes is exactly one [`decode`] accepts, with
/// the same values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    pub encoding: DeltaEncoding,
    pub values: u64,
    /// Values per int8 scale (unused for the other encodings).
    chunk: u64,
}

impl Layout {
    /// Bytes [`Layout::parse`] reads (fewer when the whole Δ is shorter).
    pub const HEAD: usize = 13;

    /// The layout of an encoded Δ of `size` bytes starting with `head`, checked like [`decode`]
    /// checks sizes.
    pub fn parse(head: &[u8], size: u64) -> Result<Self, EncodingError> {
        let wrong = |expected: u64| EncodingError::WrongSize { expected, got: size };
        if head.len() < 9 || size < 9 {
            return Err(wrong(9));
        }
        let encoding = match head[0] {
            1 => DeltaEncoding::F32,
            2 => DeltaEncoding::F16,
            3 => DeltaEncoding::Int8,
            other => return Err(EncodingError::UnknownTag(other)),
        };
        let values = u64::from_le_bytes(head[1..9].try_into().expect("8 bytes"));
        if values > MAX_VALUES {
            return Err(EncodingError::TooManyValues(values));
        }
        let (chunk, expected) = match encoding {
            DeltaEncoding::F32 => (1, 9 + values * 4),
            DeltaEncoding::F16 => (1, 9 + values * 2),
            DeltaEncoding::Int8 => {
                if head.len() < 13 || size < 13 {
                    return Err(wrong(13));
                }
                let chunk = u64::from(u32::from_le_bytes(head[9..13].try_into().expect("4 bytes")));
                if chunk == 0 {
                    return Err(EncodingError::ZeroChunk);
                }
                (chunk, 13 + values.div_ceil(chunk) * 4 + values)
            }
        };
        if size != expected {
            return Err(wrong(expected));
        }
        Ok(Self { encoding, values, chunk })
    }

    /// The bytes holding values `range` and, for int8, the bytes of their chunks' scales.
    pub fn spans(&self, range: &std::ops::Range<u64>) -> (std::ops::Range<u64>, Option<std::ops::Range<u64>>) {
        match self.encoding {
            DeltaEncoding::F32 => (9 + 4 * range.start..9 + 4 * range.end, None),
            DeltaEncoding::F16 => (9 + 2 * range.start..9 + 2 * range.end, None),
            DeltaEncoding::Int8 => {
                let scales_end = 13 + self.values.div_ceil(self.chunk) * 4;
                let (first, last) = (range.start / self.chunk, range.end.saturating_sub(1) / self.chunk);
                let scales = 13 + 4 * first..13 + 4 * (last + 1).max(first);
                (scales_end + range.start..scales_end + range.end, Some(scales))
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
        let decoded: Vec<f32> = match self.encoding {
            DeltaEncoding::F32 => {
                values.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
            }
            DeltaEncoding::F16 => values.chunks_exact(2).map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
            DeltaEncoding::Int8 => {
                let scales: Vec<f32> =
                    scales.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
                let first = range.start / self.chunk;
                (range.start..range.end)
                    .zip(values)
                    .map(|(i, q)| f32::from(*q as i8) * scales[(i / self.chunk - first) as usize])
                    .collect()
            }
        };
        match decoded.iter().position(|v| !v.is_finite()) {
            Some(index) => Err(EncodingError::NonFinite(range.start as usize + index)),
            None => Ok(decoded),
        }
    }
}

/// The chunk size and per-chunk scales of an int8-encoded Δ (`None` for other encodings or
/// malformed bytes).
pub fn int8_scales(bytes: &[u8]) -> Option<(usize, Vec<f32>)> {
    if bytes.len() < 13 || bytes[0] != 3 {
        return None;
    }
    let n = u64::from_le_bytes(bytes[1..9].try_into().ok()?);
    let chunk = u32::from_le_bytes(bytes[9..13].try_into().ok()?) as u64;
    if chunk == 0 || n > MAX_VALUES {
        return None;
    }
    let chunks = n.div_ceil(chunk) as usize;
    let scales = bytes
        .get(13..13 + chunks * 4)?
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes")))
        .collect();
    Some((chunk as usize, scales))
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
        for encoding in [DeltaEncoding::F32, DeltaEncoding::F16, DeltaEncoding::Int8] {
            let bytes = encode(encoding, &v);
            let whole = decode(&bytes).unwrap().1;
            for block in [1, 1000, INT8_CHUNK as u64, 5000, 1 << 20] {
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
    fn int8_rounds_ties_to_even_and_handles_zero_chunks() {
        let bytes = encode(DeltaEncoding::Int8, &[0.0; 10]);
        assert_eq!(decode(&bytes).unwrap().1, vec![0.0; 10]);
        assert_eq!(quantize(2.5, 1.0), 2);
        assert_eq!(quantize(3.5, 1.0), 4);
        assert_eq!(quantize(-1000.0, 1.0), -127);
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
        let mut feedback = ErrorFeedback::default();
        let mut sent_plain = vec![0.0f32; delta.len()];
        let mut sent_feedback = vec![0.0f32; delta.len()];
        for _ in 0..rounds {
            let (_, plain) = decode(&encode(DeltaEncoding::Int8, &delta)).unwrap();
            let (_, fb) = decode(&feedback.encode(DeltaEncoding::Int8, &delta)).unwrap();
            for i in 0..delta.len() {
                sent_plain[i] += plain[i];
                sent_feedback[i] += fb[i];
            }
        }
        let error = |sent: &[f32]| -> f64 {
            sent.iter().zip(&delta).map(|(s, d)| f64::from(s - d * rounds as f32).powi(2)).sum::<f64>().sqrt()
        };
        let (plain, fb) = (error(&sent_plain), error(&sent_feedback));
        assert!(fb < plain / 5.0, "feedback error {fb} vs plain {plain}");
    }

    /// Decodes `bytes` (which must not panic) and checks what a decoded Δ promises: its length,
    /// finiteness, one byte form for f32 and f16, and scales that `int8_scales` agrees on.
    fn decode_is_sound(bytes: &[u8]) -> Result<(), TestCaseError> {
        let scales = int8_scales(bytes);
        let Ok((encoding, values)) = decode(bytes) else { return Ok(()) };
        prop_assert_eq!(u64::from_le_bytes(bytes[1..9].try_into().unwrap()), values.len() as u64);
        prop_assert!(values.iter().all(|v| v.is_finite()));
        match encoding {
            DeltaEncoding::F32 | DeltaEncoding::F16 => prop_assert_eq!(encode(encoding, &values), bytes),
            DeltaEncoding::Int8 => {
                let (chunk, scales) = scales.expect("a decodable int8 Δ has scales");
                prop_assert_eq!(scales.len(), values.len().div_ceil(chunk));
            }
        }
        Ok(())
    }

    /// A header (tag, count, and for int8 a chunk size) followed by `body`.
    fn framed(tag: u8, n: u64, chunk: u32, body: &[u8]) -> Vec<u8> {
        let mut bytes = vec![tag];
        bytes.extend_from_slice(&n.to_le_bytes());
        if tag == 3 {
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
            tag in 0u8..5,
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
                _ => n.div_ceil(u64::from(chunk.max(1))).saturating_mul(4).saturating_add(n),
            };
            let len = (expected.min(4096) as i64 + slack).max(0) as usize;
            decode_is_sound(&framed(tag, n, chunk, &vec![fill; len]))?;
        }

        #[test]
        fn edited_encodings_never_panic(
            encoding in prop_oneof![Just(DeltaEncoding::F32), Just(DeltaEncoding::F16), Just(DeltaEncoding::Int8)],
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
