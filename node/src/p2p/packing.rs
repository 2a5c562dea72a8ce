//! Packing of blob chunks on the wire: a chunk's bytes split into byte planes, then compressed
//! with zstd ([`trellis_proto::blobwire::BlobResponse::Packed`]).
//!
//! What the exchange moves is mostly little-endian floats and byte codes: an f32 Δ whose values
//! are bf16 values (two of its four bytes always zero), a compact checkpoint's bf16 drift and
//! 8-bit moment codes, model weights. Their high bytes (sign and exponent) repeat a few values;
//! their low bytes are close to random. Split into planes, the repeating bytes sit together
//! where zstd's entropy coder finds them (a Δ of the default job packs to about a third).
//!
//! Guarantees: packing is only an encoding on the wire — the fetcher unpacks to exactly the
//! bytes the holder read and checks them against the manifest as before, so a lying holder gains
//! nothing it could not gain with raw bytes. Unpacking never holds more than the chunk's expected
//! size: a frame that would inflate beyond it (a decompression bomb), or to any other size, or
//! is not zstd, is an error. A chunk that would not shrink by at least [`MIN_SAVING`] is sent raw.

use std::sync::atomic::{AtomicU64, Ordering};

use thiserror::Error;
use trellis_proto::blobwire::{BlobKind, BlobResponse, PACKING_LANES};

/// Per blob kind (in [`BlobKind::ALL`]'s order): bytes of the chunks [`pack`] was given, and of
/// what it sent for them (the process's, like the transport's counters): `/metrics` shows what
/// packing saves on each kind.
static SERVED: [[AtomicU64; 2]; BlobKind::ALL.len()] =
    [const { [AtomicU64::new(0), AtomicU64::new(0)] }; BlobKind::ALL.len()];

/// Bytes served since the process started, per blob kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Served {
    pub kind: BlobKind,
    /// The chunks' bytes as stored.
    pub stored: u64,
    /// What was sent for them, packed or raw.
    pub wire: u64,
}

/// What [`pack`] served since the process started, per blob kind.
pub fn served() -> Vec<Served> {
    BlobKind::ALL
        .iter()
        .zip(&SERVED)
        .map(|(kind, [stored, wire])| Served {
            kind: *kind,
            stored: stored.load(Ordering::Relaxed),
            wire: wire.load(Ordering::Relaxed),
        })
        .collect()
}

/// The zstd level: level 3 packs a MiB of floats in a few milliseconds on one core, well below
/// what the bytes it saves take on a 100 Mbit/s link (about 30 ms a MiB).
const LEVEL: i32 = 3;
/// The planes chunks are split into: four, the width of an f32 (a bf16's two bytes fall in
/// planes of their own as well).
pub const LANES: u8 = 4;
/// A packed chunk must be at least this fraction smaller than the raw one (1/16), else the raw
/// bytes go (the unpacking would cost the fetcher for nothing).
const MIN_SAVING: usize = 16;

/// Why a packed chunk cannot be unpacked.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum UnpackError {
    #[error("packed chunk names {0} planes")]
    Lanes(u8),
    #[error("packed chunk is not a zstd frame of at most {limit} bytes: {reason}")]
    Frame { limit: usize, reason: String },
    #[error("packed chunk unpacks to {got} bytes, expected {expected}")]
    Size { expected: usize, got: usize },
}

/// The response carrying `chunk` (of a blob of `kind`): packed when that saves at least
/// 1/[`MIN_SAVING`] of its bytes, raw otherwise.
pub fn pack(kind: BlobKind, chunk: Vec<u8>) -> BlobResponse {
    let raw = chunk.len() as u64;
    let packed = (chunk.len() >= 64)
        .then(|| zstd::bulk::compress(&split_planes(&chunk, LANES), LEVEL).ok())
        .flatten()
        .filter(|bytes| bytes.len() + chunk.len() / MIN_SAVING <= chunk.len());
    let (response, sent) = match packed {
        Some(bytes) => {
            let sent = bytes.len() as u64;
            (BlobResponse::Packed { lanes: LANES, bytes }, sent)
        }
        None => (BlobResponse::Chunk(chunk), raw),
    };
    let counters = &SERVED[BlobKind::ALL.iter().position(|k| *k == kind).unwrap_or(0)];
    counters[0].fetch_add(raw, Ordering::Relaxed);
    counters[1].fetch_add(sent, Ordering::Relaxed);
    response
}

/// The chunk a packed response holds, which must be exactly `expected` bytes long.
pub fn unpack(lanes: u8, packed: &[u8], expected: usize) -> Result<Vec<u8>, UnpackError> {
    if !PACKING_LANES.contains(&lanes) {
        return Err(UnpackError::Lanes(lanes));
    }
    // The capacity bounds what zstd writes: a frame inflating beyond it is an error, not an
    // allocation.
    let planes = zstd::bulk::decompress(packed, expected)
        .map_err(|e| UnpackError::Frame { limit: expected, reason: e.to_string() })?;
    if planes.len() != expected {
        return Err(UnpackError::Size { expected, got: planes.len() });
    }
    Ok(join_planes(&planes, lanes))
}

/// `bytes` as `lanes` planes: byte `i` of every whole `lanes`-byte group, for `i` in
/// `0..lanes`, then the bytes after the last whole group.
fn split_planes(bytes: &[u8], lanes: u8) -> Vec<u8> {
    let lanes = usize::from(lanes);
    let whole = bytes.len() / lanes * lanes;
    let mut out = Vec::with_capacity(bytes.len());
    for lane in 0..lanes {
        out.extend(bytes[..whole].iter().skip(lane).step_by(lanes));
    }
    out.extend_from_slice(&bytes[whole..]);
    out
}

/// The inverse of [`split_planes`].
fn join_planes(planes: &[u8], lanes: u8) -> Vec<u8> {
    let lanes = usize::from(lanes);
    let groups = planes.len() / lanes;
    let whole = groups * lanes;
    let mut out = vec![0u8; planes.len()];
    for (lane, plane) in planes[..whole].chunks_exact(groups.max(1)).enumerate().take(lanes) {
        for (group, byte) in plane.iter().enumerate() {
            out[group * lanes + lane] = *byte;
        }
    }
    out[whole..].copy_from_slice(&planes[whole..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// f32 values that are bf16 values, as the default job's Δ holds them.
    fn bf16_floats(count: usize, seed: u32) -> Vec<u8> {
        let mut state = seed.wrapping_mul(2_654_435_761).max(1);
        (0..count)
            .flat_map(|_| {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                let value = (state as f32 / u32::MAX as f32 - 0.5) * 1e-3;
                f32::from_bits(value.to_bits() & 0xffff_0000).to_le_bytes()
            })
            .collect()
    }

    #[test]
    fn a_delta_of_bf16_values_packs_to_under_half_and_unpacks_to_itself() {
        let chunk = bf16_floats(1 << 18, 7);
        let BlobResponse::Packed { lanes, bytes } = pack(BlobKind::Data, chunk.clone()) else { panic!("not packed") };
        assert!(bytes.len() * 2 < chunk.len(), "packed {} of {} bytes", bytes.len(), chunk.len());
        assert_eq!(unpack(lanes, &bytes, chunk.len()).unwrap(), chunk);
    }

    #[test]
    fn random_bytes_and_tiny_chunks_go_raw() {
        let mut state = 1u64;
        let noise: Vec<u8> = (0..100_000)
            .map(|_| {
                state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
                (state >> 56) as u8
            })
            .collect();
        assert_eq!(pack(BlobKind::Data, noise.clone()), BlobResponse::Chunk(noise));
        assert_eq!(pack(BlobKind::Data, vec![0; 10]), BlobResponse::Chunk(vec![0; 10]));
    }

    #[test]
    fn frames_that_inflate_past_the_chunk_or_short_of_it_are_refused() {
        // A bomb: a MiB of zeros packs to a few bytes; the fetcher expecting a smaller chunk
        // refuses it without inflating it.
        let BlobResponse::Packed { lanes, bytes } = pack(BlobKind::Data, vec![0; 1 << 20]) else {
            panic!("not packed")
        };
        assert!(bytes.len() < 1024);
        assert!(matches!(unpack(lanes, &bytes, 4096), Err(UnpackError::Frame { limit: 4096, .. })));
        assert_eq!(
            unpack(lanes, &bytes, (1 << 20) + 1),
            Err(UnpackError::Size { expected: (1 << 20) + 1, got: 1 << 20 })
        );
        assert!(matches!(unpack(4, b"not zstd at all", 1 << 20), Err(UnpackError::Frame { .. })));
        assert_eq!(unpack(3, &bytes, 1 << 20), Err(UnpackError::Lanes(3)));
        assert_eq!(unpack(lanes, &bytes, 1 << 20).unwrap(), vec![0; 1 << 20]);
    }

    proptest! {
        #[test]
        fn planes_join_back_to_the_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..600), lanes in prop::sample::select(PACKING_LANES.to_vec())) {
            prop_assert_eq!(join_planes(&split_planes(&bytes, lanes), lanes), bytes.clone());
            let packed = zstd::bulk::compress(&split_planes(&bytes, lanes), LEVEL).unwrap();
            prop_assert_eq!(unpack(lanes, &packed, bytes.len()).unwrap(), bytes);
        }
    }
}
