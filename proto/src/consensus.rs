//! Consensus votes as the chain sees them, and equivocation evidence built from them.
//!
//! The node's consensus engine signs these exact bytes, so a double vote the engine reports
//! can be turned into a `ReportEquivocation` transaction that anyone can re-check.

use serde::{Deserialize, Serialize};

use crate::codec::Encode;
use crate::crypto::{Address, PublicKey, Signature, SignatureError, SigningKind};
use crate::hash::Hash;
use crate::{canonical_struct, canonical_tag_enum, Height};

/// The two voting steps of Tendermint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum VoteType {
    Prevote,
    Precommit,
}
canonical_tag_enum!(VoteType, "vote type" { Prevote = 1, Precommit = 2 });

/// One validator's vote for a block (`Some(hash)`) or for nil (`None`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Vote {
    pub height: Height,
    pub round: u32,
    pub vote_type: VoteType,
    pub value: Option<Hash>,
    pub validator: Address,
}
canonical_struct!(Vote { height, round, vote_type, value, validator });

/// A vote and its signature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedVote {
    pub vote: Vote,
    pub signature: Signature,
}
canonical_struct!(SignedVote { vote, signature });

impl SignedVote {
    pub fn verify(&self, chain_id: &str, key: &PublicKey) -> Result<(), SignatureError> {
        key.verify(chain_id, SigningKind::Vote, &self.vote.to_bytes(), &self.signature)
    }
}

/// Why equivocation evidence does not prove a double vote.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EvidenceError {
    #[error("the two votes are not by the key's address")]
    WrongValidator,
    #[error("the two votes are not for the same height, round and step")]
    DifferentSlot,
    #[error("the two votes are for the same value: no equivocation")]
    SameValue,
    #[error("vote signature: {0}")]
    Signature(#[from] SignatureError),
}

/// Two signed votes by one validator for different values in the same height, round and step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EquivocationEvidence {
    pub validator: PublicKey,
    pub first: SignedVote,
    pub second: SignedVote,
}
canonical_struct!(EquivocationEvidence { validator, first, second });

impl EquivocationEvidence {
    /// Checks that the evidence really proves a double vote on `chain_id`.
    pub fn verify(&self, chain_id: &str) -> Result<(), EvidenceError> {
        let (a, b) = (&self.first.vote, &self.second.vote);
        let address = self.validator.address();
        if a.validator != address || b.validator != address {
            return Err(EvidenceError::WrongValidator);
        }
        if (a.height, a.round, a.vote_type) != (b.height, b.round, b.vote_type) {
            return Err(EvidenceError::DifferentSlot);
        }
        if a.value == b.value {
            return Err(EvidenceError::SameValue);
        }
        self.first.verify(chain_id, &self.validator)?;
        self.second.verify(chain_id, &self.validator)?;
        Ok(())
    }
}
