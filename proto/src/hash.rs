//! 32-byte blake3 hashes with domain separation.
//!
//! Every hash in the protocol is taken in blake3's key-derivation mode with a context string
//! naming what is hashed ([`HashDomain`]), so a transaction hash can never collide with a
//! block hash or a Merkle node over the same bytes.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::codec::Encode;

/// What a hash is of. Each domain has its own blake3 context string; changing one is a
/// protocol change and breaks the golden vectors on purpose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HashDomain {
    Transaction,
    BlockHeader,
    MerkleLeaf,
    MerkleNode,
    MerkleEmpty,
    Checkpoint,
    Blob,
    JobSpec,
    StateRoot,
    Randomness,
    Trail,
    WorkBinding,
    BeaconOnion,
    BeaconMix,
    StateEntry,
    Genesis,
    /// A compact checkpoint: the hash of its weights section beside the hash of the rest.
    CompactCheckpoint,
    /// One part of a compact checkpoint (its weights' drift, or everything else).
    CheckpointPart,
    /// A dataset: its shards' Merkle root, its shard size and its validation split.
    Dataset,
}

impl HashDomain {
    /// Every domain (the golden-vector and distinctness tests walk it).
    pub const ALL: [HashDomain; 19] = {
        use HashDomain::*;
        [
            Transaction,
            BlockHeader,
            MerkleLeaf,
            MerkleNode,
            MerkleEmpty,
            Checkpoint,
            Blob,
            JobSpec,
            StateRoot,
            Randomness,
            Trail,
            WorkBinding,
            BeaconOnion,
            BeaconMix,
            StateEntry,
            Genesis,
            CompactCheckpoint,
            CheckpointPart,
            Dataset,
        ]
    };

    /// The blake3 context string of this domain.
    pub const fn context(self) -> &'static str {
        match self {
            HashDomain::Transaction => "trellis v1 transaction",
            HashDomain::BlockHeader => "trellis v1 block header",
            HashDomain::MerkleLeaf => "trellis v1 merkle leaf",
            HashDomain::MerkleNode => "trellis v1 merkle node",
            HashDomain::MerkleEmpty => "trellis v1 merkle empty",
            HashDomain::Checkpoint => "trellis v1 checkpoint",
            HashDomain::Blob => "trellis v1 blob",
            HashDomain::JobSpec => "trellis v1 job spec",
            HashDomain::StateRoot => "trellis v1 state root",
            HashDomain::Randomness => "trellis v1 randomness",
            HashDomain::Trail => "trellis v1 trail",
            HashDomain::WorkBinding => "trellis v1 work binding",
            HashDomain::BeaconOnion => "trellis v1 beacon onion",
            HashDomain::BeaconMix => "trellis v1 beacon mix",
            HashDomain::StateEntry => "trellis v1 state entry",
            HashDomain::Genesis => "trellis v1 genesis",
            HashDomain::CompactCheckpoint => "trellis v1 compact checkpoint",
            HashDomain::CheckpointPart => "trellis v1 checkpoint part",
            HashDomain::Dataset => "trellis v1 dataset",
        }
    }

    /// A streaming hasher for this domain, for inputs too large to hold at once.
    pub fn hasher(self) -> blake3::Hasher {
        blake3::Hasher::new_derive_key(self.context())
    }
}

/// A 32-byte blake3 digest.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Hash(pub [u8; 32]);
crate::canonical_newtype!(Hash);

impl Hash {
    pub const ZERO: Hash = Hash([0; 32]);

    /// Hashes `bytes` in `domain`.
    pub fn digest(domain: HashDomain, bytes: &[u8]) -> Hash {
        let mut hasher = domain.hasher();
        hasher.update(bytes);
        Hash(*hasher.finalize().as_bytes())
    }

    /// Hashes the canonical encoding of `value` in `domain`.
    pub fn of<T: Encode>(domain: HashDomain, value: &T) -> Hash {
        Hash::digest(domain, &value.to_bytes())
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl From<blake3::Hash> for Hash {
    fn from(hash: blake3::Hash) -> Self {
        Hash(*hash.as_bytes())
    }
}

impl fmt::Display for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Hash({})", &self.to_hex()[..16])
    }
}

/// The protocol's counter-based random generator: the draw for a purpose, a seed and a tuple of
/// counters is the first 8 bytes (little-endian) of
/// `blake3-derive-key("trellis v1 randomness", len32(purpose) ‖ purpose ‖ seed ‖ counters…)`,
/// all integers little-endian. No state is carried between draws, so any draw can be computed
/// on its own, by anyone.
pub fn draw(purpose: &str, seed: &[u8], counters: &[u64]) -> u64 {
    let mut hasher = HashDomain::Randomness.hasher();
    hasher.update(&(purpose.len() as u32).to_le_bytes());
    hasher.update(purpose.as_bytes());
    hasher.update(seed);
    for counter in counters {
        hasher.update(&counter.to_le_bytes());
    }
    let digest = hasher.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest.as_bytes()[..8]);
    u64::from_le_bytes(first)
}

/// The index whose cumulative weight range holds `point` (weights in order, each owning
/// `[sum before, sum before + weight)`); `None` when `point` is at or past the total. Drawing
/// `point` uniformly below the total picks an index in proportion to its weight.
pub fn weighted_index(mut point: u64, weights: impl IntoIterator<Item = u64>) -> Option<usize> {
    weights.into_iter().position(|weight| {
        if point < weight {
            true
        } else {
            point -= weight;
            false
        }
    })
}

/// Why a hex string is not a valid fixed-size value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HexError {
    #[error("not hexadecimal: {0}")]
    NotHex(String),
    #[error("expected {expected} bytes, got {got}")]
    WrongLength { expected: usize, got: usize },
}

/// Parses hex (with or without a `0x` prefix) into exactly `N` bytes.
pub fn parse_hex_array<const N: usize>(text: &str) -> Result<[u8; N], HexError> {
    let text = text.strip_prefix("0x").unwrap_or(text);
    let bytes = hex::decode(text).map_err(|e| HexError::NotHex(e.to_string()))?;
    bytes.as_slice().try_into().map_err(|_| HexError::WrongLength { expected: N, got: bytes.len() })
}

impl FromStr for Hash {
    type Err = HexError;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        parse_hex_array(text).map(Hash)
    }
}

impl Serialize for Hash {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for Hash {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domains_separate_equal_inputs() {
        let a = Hash::digest(HashDomain::Transaction, b"x");
        let b = Hash::digest(HashDomain::BlockHeader, b"x");
        assert_ne!(a, b);
    }

    #[test]
    fn hex_round_trip_and_errors() {
        let h = Hash::digest(HashDomain::Blob, b"hello");
        assert_eq!(h.to_hex().parse::<Hash>().unwrap(), h);
        assert_eq!(format!("0x{}", h.to_hex()).parse::<Hash>().unwrap(), h);
        assert_eq!("abcd".parse::<Hash>(), Err(HexError::WrongLength { expected: 32, got: 2 }));
        assert!(matches!("zz".parse::<Hash>(), Err(HexError::NotHex(_))));
    }

    #[test]
    fn contexts_are_distinct() {
        let all = HashDomain::ALL;
        let contexts: std::collections::BTreeSet<_> = all.iter().map(|d| d.context()).collect();
        assert_eq!(contexts.len(), all.len());
    }
}
