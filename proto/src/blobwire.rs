//! The blob exchange's wire vocabulary: blob addresses ([`BlobKind`], [`BlobKey`]) and the two
//! messages peers trade over [`PROTOCOL`] ([`BlobRequest`], [`BlobResponse`]).
//!
//! It lives here, apart from the node's libp2p transport and blob store, so that the byte codec
//! peers feed us can be unit-tested and fuzzed without building the node.
//!
//! Layout (integers little-endian; a key is `u8 kind tag ‖ 32-byte hash`):
//!
//! ```text
//! request  1 ‖ key                 the blob's manifest
//!          2 ‖ key ‖ u32 index     one chunk
//! response 1 ‖ u64 size ‖ u32 n ‖ n × 32-byte chunk hash
//!          2 ‖ chunk bytes         (the rest of the frame)
//!          3                       not found
//!          4 ‖ u8 lanes ‖ packed bytes   one chunk, packed (lanes 1, 2 or 4)
//! ```
//!
//! A packed chunk is the chunk's bytes split into `lanes` byte planes (byte `i` of every
//! `lanes`-byte group, for each `i` in turn; the bytes after the last whole group last) and then
//! compressed as one zstd frame. The node packs and unpacks (`node/src/p2p/packing.rs`); here the
//! packed bytes are opaque, and what a chunk *is* stays its unpacked bytes, which the fetcher
//! checks against the manifest's hash as before.
//!
//! Guarantees: decoding never panics and never allocates more than the input justifies (a
//! manifest's chunk count must match the bytes that follow it); unknown tags, unknown blob kinds,
//! short input and trailing bytes are errors ([`BlobWireError`]). Every message has exactly one
//! byte form, so `to_bytes(from_bytes(b)) == b` for every `b` that decodes. Frame size limits are
//! the transport's business (the node reads at most one chunk plus headroom per frame).

use std::fmt;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::hash::{Hash, HashDomain};

/// The libp2p protocol the messages travel on; its version moves with any change of their layout
/// (2: packed chunks).
pub const PROTOCOL: &str = "/trellis/blobs/2";

/// Bytes of an encoded [`BlobKey`]: its kind tag and its hash.
pub const KEY_BYTES: usize = 1 + 32;

/// How a blob's hash is computed (and so what the blob is).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BlobKind {
    /// A trainer checkpoint, hashed in the checkpoint domain.
    Checkpoint,
    /// Opaque bytes hashed in the blob domain: encoded Δ, model weights, outer momentum.
    Data,
    /// One dataset shard, hashed as a Merkle leaf.
    Shard,
    /// A dataset manifest, addressed by the dataset root (the Merkle root of its shards).
    Dataset,
    /// A trail (canonical encoding), hashed whole in the trail domain.
    Trail,
}

impl BlobKind {
    pub const ALL: [BlobKind; 5] =
        [BlobKind::Checkpoint, BlobKind::Data, BlobKind::Shard, BlobKind::Dataset, BlobKind::Trail];

    /// The kind's one-byte tag on the wire (and in the node's round lists).
    pub fn tag(self) -> u8 {
        match self {
            BlobKind::Checkpoint => 1,
            BlobKind::Data => 2,
            BlobKind::Shard => 3,
            BlobKind::Dataset => 4,
            BlobKind::Trail => 5,
        }
    }

    pub fn from_tag(tag: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.tag() == tag)
    }

    /// The domain in which the hash of a blob's whole bytes is its address; `None` for a dataset
    /// manifest, addressed by the Merkle root of the shards it lists. Every other kind can
    /// therefore be checked as its bytes stream in, without holding them. (A compact
    /// checkpoint's address is the hash of two parts, `trellis_trainer::checkpoint::CheckpointHasher`;
    /// every other checkpoint's is its whole bytes in this domain.)
    pub fn hash_domain(self) -> Option<HashDomain> {
        match self {
            BlobKind::Checkpoint => Some(HashDomain::Checkpoint),
            BlobKind::Data => Some(HashDomain::Blob),
            BlobKind::Shard => Some(HashDomain::MerkleLeaf),
            BlobKind::Dataset => None,
            BlobKind::Trail => Some(HashDomain::Trail),
        }
    }

    /// The kind's name, as in a key's display form (`checkpoint:HEX`) and the store's directories.
    pub fn name(self) -> &'static str {
        match self {
            BlobKind::Checkpoint => "checkpoint",
            BlobKind::Data => "data",
            BlobKind::Shard => "shard",
            BlobKind::Dataset => "dataset",
            BlobKind::Trail => "trail",
        }
    }
}

/// A blob's address: a kind and a hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct BlobKey {
    pub kind: BlobKind,
    pub hash: Hash,
}

impl fmt::Display for BlobKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.kind.name(), self.hash)
    }
}

impl BlobKey {
    pub fn new(kind: BlobKind, hash: Hash) -> Self {
        Self { kind, hash }
    }

    /// The key of opaque bytes (Δ, weights, momentum).
    pub fn data(bytes: &[u8]) -> Self {
        Self::new(BlobKind::Data, data_hash(bytes))
    }

    fn encode_to(&self, out: &mut Vec<u8>) {
        out.push(self.kind.tag());
        out.extend_from_slice(&self.hash.0);
    }

    /// Reads a key from exactly [`KEY_BYTES`] bytes.
    fn decode(bytes: [u8; KEY_BYTES]) -> Result<Self, BlobWireError> {
        let [tag, hash @ ..] = bytes;
        let kind = BlobKind::from_tag(tag).ok_or(BlobWireError::UnknownKind(tag))?;
        Ok(BlobKey::new(kind, Hash(hash)))
    }
}

/// The hash of opaque bytes: the blob domain (the same as `trainer::encoding::delta_hash`).
pub fn data_hash(bytes: &[u8]) -> Hash {
    Hash::digest(HashDomain::Blob, bytes)
}

/// A dataset's root (a job's `dataset_root`, its manifest's address): everything a reader of
/// the dataset uses, bound together — the Merkle root over its training shards' leaf hashes, the
/// size of every shard but the last, and the [`data_hash`] of its validation split.
pub fn dataset_root(shards_root: Hash, shard_bytes: u64, validation: Hash) -> Hash {
    let mut bytes = Vec::with_capacity(72);
    bytes.extend_from_slice(shards_root.as_bytes());
    bytes.extend_from_slice(&shard_bytes.to_le_bytes());
    bytes.extend_from_slice(validation.as_bytes());
    Hash::digest(HashDomain::Dataset, &bytes)
}

/// Why bytes from a peer are not a blob exchange message.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum BlobWireError {
    #[error("empty blob {0}")]
    Empty(&'static str),
    #[error("unknown blob {what} tag {tag}")]
    UnknownTag { what: &'static str, tag: u8 },
    #[error("unknown blob kind {0}")]
    UnknownKind(u8),
    #[error("blob {what} has {got} bytes after its tag, expected {expected}")]
    WrongLength { what: &'static str, expected: usize, got: usize },
    #[error("blob manifest lists {count} chunks but carries {bytes} bytes of hashes")]
    ManifestLength { count: u32, bytes: usize },
}

/// What one peer asks another.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlobRequest {
    Manifest(BlobKey),
    Chunk { key: BlobKey, index: u32 },
}

/// The answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlobResponse {
    Manifest {
        size: u64,
        chunks: Vec<Hash>,
    },
    Chunk(Vec<u8>),
    NotFound,
    /// A chunk's bytes split into `lanes` byte planes and compressed (the module's doc).
    Packed {
        lanes: u8,
        bytes: Vec<u8>,
    },
}

/// The plane counts a packed chunk may name.
pub const PACKING_LANES: [u8; 3] = [1, 2, 4];

/// `bytes` as exactly `N` bytes, or a length error naming `what`.
fn exact<const N: usize>(bytes: &[u8], what: &'static str) -> Result<[u8; N], BlobWireError> {
    bytes.try_into().map_err(|_| BlobWireError::WrongLength { what, expected: N, got: bytes.len() })
}

impl BlobRequest {
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(1 + KEY_BYTES + 4);
        match self {
            BlobRequest::Manifest(key) => {
                out.push(1);
                key.encode_to(&mut out);
            }
            BlobRequest::Chunk { key, index } => {
                out.push(2);
                key.encode_to(&mut out);
                out.extend_from_slice(&index.to_le_bytes());
            }
        }
        out
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, BlobWireError> {
        let (&tag, rest) = bytes.split_first().ok_or(BlobWireError::Empty("request"))?;
        match tag {
            1 => Ok(BlobRequest::Manifest(BlobKey::decode(exact::<KEY_BYTES>(rest, "manifest request")?)?)),
            2 => {
                let [key @ .., i0, i1, i2, i3] = exact::<{ KEY_BYTES + 4 }>(rest, "chunk request")?;
                Ok(BlobRequest::Chunk { key: BlobKey::decode(key)?, index: u32::from_le_bytes([i0, i1, i2, i3]) })
            }
            tag => Err(BlobWireError::UnknownTag { what: "request", tag }),
        }
    }
}

impl BlobResponse {
    pub fn to_bytes(&self) -> Vec<u8> {
        match self {
            BlobResponse::Manifest { size, chunks } => {
                let mut out = Vec::with_capacity(13 + 32 * chunks.len());
                out.push(1);
                out.extend_from_slice(&size.to_le_bytes());
                let count = u32::try_from(chunks.len()).expect("a manifest lists fewer than 2^32 chunks");
                out.extend_from_slice(&count.to_le_bytes());
                chunks.iter().for_each(|c| out.extend_from_slice(&c.0));
                out
            }
            BlobResponse::Chunk(bytes) => [&[2u8][..], bytes].concat(),
            BlobResponse::NotFound => vec![3],
            BlobResponse::Packed { lanes, bytes } => [&[4u8, *lanes][..], bytes].concat(),
        }
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, BlobWireError> {
        let (&tag, rest) = bytes.split_first().ok_or(BlobWireError::Empty("response"))?;
        match tag {
            1 => {
                if rest.len() < 12 {
                    return Err(BlobWireError::WrongLength { what: "manifest header", expected: 12, got: rest.len() });
                }
                let (header, hashes) = rest.split_at(12);
                let size = u64::from_le_bytes(header[..8].try_into().expect("8 bytes"));
                let count = u32::from_le_bytes(header[8..].try_into().expect("4 bytes"));
                // Checked before anything is allocated: the count must match the bytes present.
                if (hashes.len() as u64) != u64::from(count) * 32 {
                    return Err(BlobWireError::ManifestLength { count, bytes: hashes.len() });
                }
                let chunks = hashes.chunks_exact(32).map(|c| Hash(c.try_into().expect("32 bytes"))).collect();
                Ok(BlobResponse::Manifest { size, chunks })
            }
            2 => Ok(BlobResponse::Chunk(rest.to_vec())),
            3 if rest.is_empty() => Ok(BlobResponse::NotFound),
            3 => Err(BlobWireError::WrongLength { what: "not-found response", expected: 0, got: rest.len() }),
            4 => match rest.split_first() {
                Some((&lanes, bytes)) if PACKING_LANES.contains(&lanes) => {
                    Ok(BlobResponse::Packed { lanes, bytes: bytes.to_vec() })
                }
                Some((&lanes, _)) => Err(BlobWireError::UnknownTag { what: "packing lane count", tag: lanes }),
                None => Err(BlobWireError::WrongLength { what: "packed chunk header", expected: 1, got: 0 }),
            },
            tag => Err(BlobWireError::UnknownTag { what: "response", tag }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_and_garbage_is_an_error() {
        let key = BlobKey::new(BlobKind::Checkpoint, Hash([7; 32]));
        for request in [BlobRequest::Manifest(key), BlobRequest::Chunk { key, index: 9 }] {
            assert_eq!(BlobRequest::from_bytes(&request.to_bytes()).unwrap(), request);
        }
        for response in [
            BlobResponse::Manifest { size: 5, chunks: vec![Hash([1; 32])] },
            BlobResponse::Chunk(vec![1, 2, 3]),
            BlobResponse::NotFound,
            BlobResponse::Packed { lanes: 4, bytes: vec![0x28, 0xb5] },
            BlobResponse::Packed { lanes: 1, bytes: Vec::new() },
        ] {
            assert_eq!(BlobResponse::from_bytes(&response.to_bytes()).unwrap(), response);
        }
        for garbage in [&[][..], &[1], &[9, 1, 2], &[1, 99, 0], &[3, 0], &[4], &[4, 3, 1], &[4, 0]] {
            assert!(BlobRequest::from_bytes(garbage).is_err());
            assert!(BlobResponse::from_bytes(garbage).is_err());
        }
        // A manifest claiming more chunks than it carries.
        let mut lying = BlobResponse::Manifest { size: 5, chunks: vec![Hash([1; 32])] }.to_bytes();
        lying[9] = 2;
        assert_eq!(BlobResponse::from_bytes(&lying), Err(BlobWireError::ManifestLength { count: 2, bytes: 32 }));
        // A count whose byte size overflows 32 bits is refused, not wrapped.
        lying[9..13].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(BlobResponse::from_bytes(&lying).is_err());
    }

    #[test]
    fn keys_refuse_unknown_kinds_and_wrong_lengths() {
        let key = BlobKey::new(BlobKind::Trail, Hash([2; 32]));
        let mut bytes = BlobRequest::Manifest(key).to_bytes();
        assert_eq!(bytes.len(), 1 + KEY_BYTES);
        bytes[1] = 0;
        assert_eq!(BlobRequest::from_bytes(&bytes), Err(BlobWireError::UnknownKind(0)));
        let chunk = BlobRequest::Chunk { key, index: 1 }.to_bytes();
        assert!(BlobRequest::from_bytes(&chunk[..chunk.len() - 1]).is_err());
        assert!(BlobRequest::from_bytes(&[chunk.as_slice(), &[0]].concat()).is_err());
        for kind in BlobKind::ALL {
            assert_eq!(BlobKind::from_tag(kind.tag()), Some(kind));
        }
        assert_eq!(BlobKey::data(b"x").to_string(), format!("data:{}", data_hash(b"x")));
    }

    /// The `decode_blob_wire` fuzz target's seeds in `fuzz/seeds/decode_blob_wire/` are today's
    /// encodings of every message. `TRELLIS_WRITE_FUZZ_SEEDS=1` rewrites them.
    #[test]
    fn fuzz_seeds_are_current_encodings() {
        let key = BlobKey::new(BlobKind::Dataset, Hash([4; 32]));
        let seeds = [
            ("manifest_request", BlobRequest::Manifest(key).to_bytes()),
            ("chunk_request", BlobRequest::Chunk { key, index: 3 }.to_bytes()),
            (
                "manifest",
                BlobResponse::Manifest { size: (1 << 20) + 1, chunks: vec![Hash([1; 32]), Hash([2; 32])] }.to_bytes(),
            ),
            ("chunk", BlobResponse::Chunk(b"chunk bytes".to_vec()).to_bytes()),
            ("not_found", BlobResponse::NotFound.to_bytes()),
            (
                "packed_chunk",
                BlobResponse::Packed { lanes: 4, bytes: vec![0x28, 0xb5, 0x2f, 0xfd, 0, 0x58, 1, 0, 0] }.to_bytes(),
            ),
        ];
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds/decode_blob_wire");
        let write = std::env::var_os("TRELLIS_WRITE_FUZZ_SEEDS").is_some();
        for (name, bytes) in seeds {
            let path = dir.join(name);
            if write {
                std::fs::create_dir_all(&dir).unwrap();
                std::fs::write(&path, &bytes).unwrap();
            } else {
                let stored = std::fs::read(&path).unwrap_or_default();
                assert!(
                    stored == bytes,
                    "{} is stale: run TRELLIS_WRITE_FUZZ_SEEDS=1 cargo test -p trellis-proto",
                    path.display()
                );
            }
        }
    }

    /// Fixed bytes: an accidental change of the exchange's layout fails here.
    #[test]
    fn golden_bytes() {
        let key = BlobKey::new(BlobKind::Data, Hash([0xab; 32]));
        let mut expected = vec![2, 2];
        expected.extend_from_slice(&[0xab; 32]);
        expected.extend_from_slice(&[7, 0, 0, 0]);
        assert_eq!(BlobRequest::Chunk { key, index: 7 }.to_bytes(), expected);
        let manifest = BlobResponse::Manifest { size: 1, chunks: vec![Hash([0xcd; 32])] }.to_bytes();
        assert_eq!(&manifest[..13], &[1, 1, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0]);
        assert_eq!(BlobResponse::Chunk(vec![9]).to_bytes(), vec![2, 9]);
        assert_eq!(BlobResponse::NotFound.to_bytes(), vec![3]);
        assert_eq!(BlobResponse::Packed { lanes: 2, bytes: vec![7, 8] }.to_bytes(), vec![4, 2, 7, 8]);
    }
}
