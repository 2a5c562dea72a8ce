//! `trellis-proto`: the wire and domain types of Trellis, their one canonical encoding,
//! hashing, signing and Merkle trees.
//!
//! Guarantees:
//! - every type that is hashed or signed has exactly one byte form ([`codec`]); decoding
//!   untrusted bytes bounds every length, rejects trailing bytes and unknown tags with a typed
//!   [`DecodeError`], and never panics;
//! - every hash is a domain-separated blake3 digest ([`HashDomain`]);
//! - every signature is bound to a chain id and a message kind ([`crypto::signing_preimage`]);
//! - Merkle trees never duplicate leaves and separate leaves from nodes ([`merkle`]);
//! - the blob exchange's messages have one byte form and decode without panicking ([`blobwire`]);
//! - so do the peer network's greeting and gossiped transaction batches ([`peerwire`]);
//! - a trail is addressed by the hash of its whole canonical bytes ([`trail`]), and a work
//!   commitment binds the revealed work to the committer's address ([`WorkReveal::binding`]).
//!
//! This crate does no I/O and holds no state: it is the vocabulary every other crate speaks.

pub mod blobwire;
pub mod block;
pub mod codec;
pub mod consensus;
pub mod crypto;
pub mod hash;
pub mod job;
pub mod merkle;
pub mod peerwire;
pub mod trail;
pub mod tx;

use serde::{Deserialize, Serialize};

pub use block::{Block, BlockError, BlockHeader};
pub use codec::{decode, Decode, DecodeError, Encode};
pub use consensus::{
    DoubleProposalEvidence, EquivocationEvidence, PartHeader, ProposalClaim, ProposalHeader, SignedProposalClaim,
    SignedVote, Vote, VoteType,
};
pub use crypto::{Address, Keypair, PublicKey, Signature, SignatureError, SigningKind};
pub use hash::{Hash, HashDomain};
pub use job::{
    Aggregate, AggregationRule, CheckpointState, DeltaEncoding, DilocoParams, InnerOptimizer, InvalidEvidence,
    InvalidReason, JobFaultReason, JobId, JobSpec, KeptValues, ModelConfig, OuterOptimizer, UnknownEncoding, Verdict,
    VerdictOutcome, VerificationMode, VerificationParams, WorkCommitment, WorkReveal, TOPK_CHUNK,
};
pub use merkle::{MerkleProof, MerkleTree};
pub use trail::{Trail, TrailEntry};
pub use tx::{Role, SignedTx, Transaction, TxKind};

/// An amount of the chain's token, in its smallest unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Amount(pub u64);
canonical_newtype!(Amount);

impl Amount {
    pub const ZERO: Amount = Amount(0);

    pub fn checked_add(self, other: Amount) -> Option<Amount> {
        self.0.checked_add(other.0).map(Amount)
    }

    pub fn checked_sub(self, other: Amount) -> Option<Amount> {
        self.0.checked_sub(other.0).map(Amount)
    }

    pub fn is_zero(self) -> bool {
        self.0 == 0
    }
}

/// `a - b` where the caller has checked `b <= a` (an underflow panics: every crate that
/// computes amounts keeps overflow checks on in release builds).
impl std::ops::Sub for Amount {
    type Output = Amount;

    fn sub(self, other: Amount) -> Amount {
        Amount(self.0 - other.0)
    }
}

impl std::ops::SubAssign for Amount {
    fn sub_assign(&mut self, other: Amount) {
        self.0 -= other.0;
    }
}

impl std::fmt::Display for Amount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A block height; the first block is height 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Height(pub u64);
canonical_newtype!(Height);

impl Height {
    /// The height `blocks` after this one (saturating: no chain reaches `u64::MAX`).
    pub fn after(self, blocks: u64) -> Height {
        Height(self.0.saturating_add(blocks))
    }

    /// The height `blocks` before this one, or 0.
    pub fn before(self, blocks: u64) -> Height {
        Height(self.0.saturating_sub(blocks))
    }
}

/// `height + blocks`: the height that many blocks later.
impl std::ops::Add<u64> for Height {
    type Output = Height;

    fn add(self, blocks: u64) -> Height {
        Height(self.0 + blocks)
    }
}

impl std::ops::AddAssign<u64> for Height {
    fn add_assign(&mut self, blocks: u64) {
        self.0 += blocks;
    }
}

impl std::fmt::Display for Height {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}
