//! Consensus votes and proposals as the chain sees them, and equivocation evidence built from them.
//!
//! The node's consensus engine signs these exact bytes, so a double vote the engine reports
//! can be turned into a `ReportEquivocation` transaction, and two blocks one proposer signed for
//! the same height and round into a `ReportDoubleProposal` transaction, that anyone can re-check.

use serde::{Deserialize, Serialize};

use crate::codec::{Decode, DecodeError, Encode, Reader};
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

/// What the consensus engine's proposal message says: `value` (a block hash) proposed at
/// (height, round), with the round of its proof of lock. Its bytes are exactly what the engine
/// signs for a proposal (`SigningKind::Proposal`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ProposalHeader {
    pub height: Height,
    pub round: Option<u32>,
    pub value: Hash,
    pub pol_round: Option<u32>,
    pub proposer: Address,
}
canonical_struct!(ProposalHeader { height, round, value, pol_round, proposer });

/// What a signed block part says: the block whose canonical bytes hash to `block`
/// (`HashDomain::Blob`) streamed for (height, round). Its bytes are exactly what a proposer signs
/// for a part (`SigningKind::ProposalPart`); the block itself is not needed to check it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PartHeader {
    pub height: Height,
    pub round: Option<u32>,
    pub valid_round: Option<u32>,
    pub proposer: Address,
    pub block: Hash,
}
canonical_struct!(PartHeader { height, round, valid_round, proposer, block });

/// One of the two statements a proposer signs about the block it proposes at (height, round).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum ProposalClaim {
    /// The consensus engine's proposal message.
    Proposal(ProposalHeader),
    /// The block part streamed beside it, which the validators execute.
    Part(PartHeader),
}

impl ProposalClaim {
    /// (height, round, proposer): the slot a proposer may fill with one block.
    fn slot(&self) -> (Height, Option<u32>, Address) {
        match self {
            ProposalClaim::Proposal(p) => (p.height, p.round, p.proposer),
            ProposalClaim::Part(p) => (p.height, p.round, p.proposer),
        }
    }

    /// The block the claim is about, in the claim's own terms (block id or bytes' hash).
    fn block(&self) -> Hash {
        match self {
            ProposalClaim::Proposal(p) => p.value,
            ProposalClaim::Part(p) => p.block,
        }
    }

    /// The signing kind and the exact bytes the proposer's signature covers.
    fn signed_bytes(&self) -> (SigningKind, Vec<u8>) {
        match self {
            ProposalClaim::Proposal(p) => (SigningKind::Proposal, p.to_bytes()),
            ProposalClaim::Part(p) => (SigningKind::ProposalPart, p.to_bytes()),
        }
    }
}

impl Encode for ProposalClaim {
    fn encode_to(&self, out: &mut Vec<u8>) {
        match self {
            ProposalClaim::Proposal(header) => {
                out.push(1);
                header.encode_to(out);
            }
            ProposalClaim::Part(header) => {
                out.push(2);
                header.encode_to(out);
            }
        }
    }
}

impl Decode for ProposalClaim {
    fn decode_from(reader: &mut Reader<'_>) -> Result<Self, DecodeError> {
        match u8::decode_from(reader)? {
            1 => Ok(ProposalClaim::Proposal(Decode::decode_from(reader)?)),
            2 => Ok(ProposalClaim::Part(Decode::decode_from(reader)?)),
            tag => Err(DecodeError::UnknownTag { what: "proposal claim", tag }),
        }
    }
}

/// A proposal claim and the proposer's signature over it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedProposalClaim {
    pub claim: ProposalClaim,
    pub signature: Signature,
}
canonical_struct!(SignedProposalClaim { claim, signature });

impl SignedProposalClaim {
    pub fn verify(&self, chain_id: &str, key: &PublicKey) -> Result<(), SignatureError> {
        let (kind, bytes) = self.claim.signed_bytes();
        key.verify(chain_id, kind, &bytes, &self.signature)
    }
}

/// Why double-proposal evidence does not prove a double proposal.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DoubleProposalError {
    #[error("the two claims are not by the key's address")]
    WrongProposer,
    #[error("the two claims are not of one kind for the same height and round")]
    DifferentSlot,
    #[error("the two claims are for the same block: no double proposal")]
    SameBlock,
    #[error("claim signature: {0}")]
    Signature(#[from] SignatureError),
}

/// Two signed claims by one proposer, of the same kind, for different blocks at the same height
/// and round: every validator would execute both, so signing them costs the proposer its stake.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DoubleProposalEvidence {
    pub proposer: PublicKey,
    pub first: SignedProposalClaim,
    pub second: SignedProposalClaim,
}
canonical_struct!(DoubleProposalEvidence { proposer, first, second });

impl DoubleProposalEvidence {
    /// Checks that the evidence really proves a double proposal on `chain_id`.
    pub fn verify(&self, chain_id: &str) -> Result<(), DoubleProposalError> {
        let (a, b) = (&self.first.claim, &self.second.claim);
        let address = self.proposer.address();
        let (slot_a, slot_b) = (a.slot(), b.slot());
        if slot_a.2 != address || slot_b.2 != address {
            return Err(DoubleProposalError::WrongProposer);
        }
        let same_kind = std::mem::discriminant(a) == std::mem::discriminant(b);
        // A claim without a round is never signed by an honest engine; it fills no slot.
        if !same_kind || slot_a.0 != slot_b.0 || slot_a.1 != slot_b.1 || slot_a.1.is_none() {
            return Err(DoubleProposalError::DifferentSlot);
        }
        if a.block() == b.block() {
            return Err(DoubleProposalError::SameBlock);
        }
        self.first.verify(chain_id, &self.proposer)?;
        self.second.verify(chain_id, &self.proposer)?;
        Ok(())
    }

    /// (height, round) of the double proposal.
    pub fn slot(&self) -> (Height, u32) {
        let (height, round, _) = self.first.claim.slot();
        (height, round.unwrap_or(0))
    }
}
