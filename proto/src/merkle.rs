//! A blake3 Merkle tree with domain-separated leaves and nodes, and inclusion proofs.
//!
//! The shape is that of RFC 9162 (Certificate Transparency 2.0): the root of `n > 1` leaves
//! is `node(root(first k), root(rest))` where `k` is the largest power of two below `n`.
//! No leaf is ever duplicated, so two different leaf lists never share a root (the flaw of
//! Bitcoin's odd-leaf duplication). Leaves, inner nodes and the empty tree each hash in their
//! own [`HashDomain`], so a leaf can never be passed off as an inner node.
//!
//! Used for checkpoint trails (leaves are checkpoint hashes), dataset shards and transaction
//! lists in blocks.

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::codec::{decode_seq, encode_seq, Decode, DecodeError, Encode, Reader};
use crate::hash::{Hash, HashDomain};

/// The most siblings a proof may carry: enough for 2^48 leaves.
pub const MAX_PROOF_DEPTH: usize = 48;

/// The hash of a leaf holding `data`.
pub fn leaf_hash(data: &[u8]) -> Hash {
    Hash::digest(HashDomain::MerkleLeaf, data)
}

/// The hash of an inner node over two children.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut hasher = HashDomain::MerkleNode.hasher();
    hasher.update(&left.0);
    hasher.update(&right.0);
    Hash(*hasher.finalize().as_bytes())
}

/// The root of a tree with no leaves.
pub fn empty_root() -> Hash {
    Hash::digest(HashDomain::MerkleEmpty, &[])
}

/// Largest power of two strictly below `n` (`n >= 2`).
fn split_point(n: usize) -> usize {
    debug_assert!(n >= 2);
    1 << (usize::BITS - 1 - (n - 1).leading_zeros())
}

/// A Merkle tree over leaf hashes, kept whole so proofs are cheap to produce.
#[derive(Debug, Clone)]
pub struct MerkleTree {
    leaves: Vec<Hash>,
}

impl MerkleTree {
    /// A tree whose leaves are the given data items (each is hashed with [`leaf_hash`]).
    pub fn from_data<T: AsRef<[u8]>>(items: &[T]) -> Self {
        Self { leaves: items.iter().map(|item| leaf_hash(item.as_ref())).collect() }
    }

    /// A tree over leaf hashes already computed with [`leaf_hash`].
    pub fn from_leaf_hashes(leaves: Vec<Hash>) -> Self {
        Self { leaves }
    }

    pub fn len(&self) -> usize {
        self.leaves.len()
    }

    pub fn is_empty(&self) -> bool {
        self.leaves.is_empty()
    }

    pub fn root(&self) -> Hash {
        if self.leaves.is_empty() {
            return empty_root();
        }
        subtree_root(&self.leaves)
    }

    /// The inclusion proof of leaf `index`, or `None` when out of range.
    pub fn proof(&self, index: usize) -> Option<MerkleProof> {
        if index >= self.leaves.len() {
            return None;
        }
        let mut siblings = Vec::new();
        collect_path(&self.leaves, index, &mut siblings);
        Some(MerkleProof { index: index as u64, tree_size: self.leaves.len() as u64, siblings })
    }
}

fn subtree_root(leaves: &[Hash]) -> Hash {
    match leaves.len() {
        1 => leaves[0],
        n => {
            let k = split_point(n);
            node_hash(&subtree_root(&leaves[..k]), &subtree_root(&leaves[k..]))
        }
    }
}

/// Pushes siblings from the leaf upward (the deepest sibling first).
fn collect_path(leaves: &[Hash], index: usize, siblings: &mut Vec<Hash>) {
    let n = leaves.len();
    if n <= 1 {
        return;
    }
    let k = split_point(n);
    if index < k {
        collect_path(&leaves[..k], index, siblings);
        siblings.push(subtree_root(&leaves[k..]));
    } else {
        collect_path(&leaves[k..], index - k, siblings);
        siblings.push(subtree_root(&leaves[..k]));
    }
}

/// Why a proof does not check out.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum MerkleError {
    #[error("leaf index {index} is outside a tree of {tree_size} leaves")]
    IndexOutOfRange { index: u64, tree_size: u64 },
    #[error("proof has {got} siblings, a tree of this size and index needs {expected}")]
    WrongLength { expected: usize, got: usize },
    #[error("proof leads to root {computed}, expected {expected}")]
    RootMismatch { computed: Hash, expected: Hash },
}

/// Proof that a leaf sits at `index` in a tree of `tree_size` leaves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MerkleProof {
    pub index: u64,
    pub tree_size: u64,
    /// Sibling hashes from the leaf's level up to the root's children.
    pub siblings: Vec<Hash>,
}

impl MerkleProof {
    /// Checks that `leaf` (a [`leaf_hash`]) is at `self.index` under `root`.
    ///
    /// This is RFC 9162 §2.1.3.2: walk up with the index and the last index, consuming one
    /// sibling per level where the node has one.
    pub fn verify(&self, leaf: &Hash, root: &Hash) -> Result<(), MerkleError> {
        let computed = self.compute_root(leaf)?;
        if &computed != root {
            return Err(MerkleError::RootMismatch { computed, expected: *root });
        }
        Ok(())
    }

    /// The root this proof implies for `leaf`.
    pub fn compute_root(&self, leaf: &Hash) -> Result<Hash, MerkleError> {
        if self.index >= self.tree_size {
            return Err(MerkleError::IndexOutOfRange { index: self.index, tree_size: self.tree_size });
        }
        let mut fn_ = self.index;
        let mut sn = self.tree_size - 1;
        let mut hash = *leaf;
        let mut used = 0;
        for sibling in &self.siblings {
            if sn == 0 {
                return Err(MerkleError::WrongLength { expected: used, got: self.siblings.len() });
            }
            if fn_ & 1 == 1 || fn_ == sn {
                hash = node_hash(sibling, &hash);
                if fn_ & 1 == 0 {
                    while fn_ & 1 == 0 && fn_ != 0 {
                        fn_ >>= 1;
                        sn >>= 1;
                    }
                }
            } else {
                hash = node_hash(&hash, sibling);
            }
            fn_ >>= 1;
            sn >>= 1;
            used += 1;
        }
        if sn != 0 {
            return Err(MerkleError::WrongLength { expected: used + 1, got: self.siblings.len() });
        }
        Ok(hash)
    }
}

impl Encode for MerkleProof {
    fn encode_to(&self, out: &mut Vec<u8>) {
        self.index.encode_to(out);
        self.tree_size.encode_to(out);
        encode_seq(&self.siblings, out);
    }
}

impl Decode for MerkleProof {
    fn decode_from(reader: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Self {
            index: u64::decode_from(reader)?,
            tree_size: u64::decode_from(reader)?,
            siblings: decode_seq(reader, "merkle proof", MAX_PROOF_DEPTH, 32)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn items(n: usize) -> Vec<Vec<u8>> {
        (0..n).map(|i| format!("leaf {i}").into_bytes()).collect()
    }

    #[test]
    fn every_leaf_of_trees_of_size_1_to_33_has_a_valid_proof() {
        for n in 1..=33 {
            let data = items(n);
            let tree = MerkleTree::from_data(&data);
            let root = tree.root();
            for (i, item) in data.iter().enumerate() {
                let proof = tree.proof(i).unwrap();
                proof.verify(&leaf_hash(item), &root).unwrap_or_else(|e| panic!("n={n} i={i}: {e}"));
                // Through the canonical encoding too.
                let decoded: MerkleProof = crate::codec::decode(&proof.to_bytes()).unwrap();
                assert_eq!(decoded, proof);
            }
            assert!(tree.proof(n).is_none());
        }
    }

    #[test]
    fn tampered_proofs_are_rejected() {
        for n in 1..=33 {
            let data = items(n);
            let tree = MerkleTree::from_data(&data);
            let root = tree.root();
            for (i, item) in data.iter().enumerate() {
                let leaf = leaf_hash(item);
                let proof = tree.proof(i).unwrap();
                // Wrong leaf.
                assert!(proof.verify(&leaf_hash(b"other"), &root).is_err());
                // Each sibling flipped.
                for s in 0..proof.siblings.len() {
                    let mut bad = proof.clone();
                    bad.siblings[s].0[0] ^= 1;
                    assert!(bad.verify(&leaf, &root).is_err(), "n={n} i={i} s={s}");
                }
                // Wrong index (another leaf's position).
                if n > 1 {
                    let mut bad = proof.clone();
                    bad.index = ((i + 1) % n) as u64;
                    assert!(bad.verify(&leaf, &root).is_err(), "index n={n} i={i}");
                }
                // Extra or missing sibling.
                let mut longer = proof.clone();
                longer.siblings.push(Hash::ZERO);
                assert!(longer.verify(&leaf, &root).is_err());
                if !proof.siblings.is_empty() {
                    let mut shorter = proof.clone();
                    shorter.siblings.pop();
                    assert!(shorter.verify(&leaf, &root).is_err());
                }
                // Out-of-range index.
                let mut out = proof.clone();
                out.index = n as u64;
                assert!(matches!(out.verify(&leaf, &root), Err(MerkleError::IndexOutOfRange { .. })));
            }
        }
    }

    #[test]
    fn leaves_and_nodes_are_domain_separated() {
        // A two-leaf tree's root must differ from a single leaf made of the two child hashes.
        let data = items(2);
        let tree = MerkleTree::from_data(&data);
        let mut concatenated = leaf_hash(&data[0]).0.to_vec();
        concatenated.extend_from_slice(&leaf_hash(&data[1]).0);
        assert_ne!(tree.root(), leaf_hash(&concatenated));
    }

    #[test]
    fn odd_trees_do_not_collide_with_duplicated_leaves() {
        let three = MerkleTree::from_data(&items(3));
        let mut four_items = items(3);
        four_items.push(items(3)[2].clone());
        assert_ne!(three.root(), MerkleTree::from_data(&four_items).root());
    }

    #[test]
    fn empty_tree_has_its_own_root() {
        let tree = MerkleTree::from_data::<Vec<u8>>(&[]);
        assert_eq!(tree.root(), empty_root());
        assert_ne!(empty_root(), leaf_hash(&[]));
    }
}
