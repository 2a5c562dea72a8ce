//! The Malachite context: Trellis heights, addresses, values, proposals, votes and validator
//! sets, each a thin wrapper over a `trellis-proto` type.
//!
//! The consensus value is the block's hash ([`BlockId`]), not the block: the block travels once,
//! in a signed proposal part ([`BlockPart`]), and proposals and votes stay small.

use std::fmt;
use std::sync::Arc;

use arc_malachitebft_app_channel::app::types::core::{
    self as mc, LinearTimeouts, NilOrVal, Round, SignedExtension, VotingPower,
};
use arc_malachitebft_signing_ed25519::Ed25519;
use bytes::Bytes;
use trellis_proto::codec::Encode;
use trellis_proto::{Address, Hash, PublicKey, Signature};

/// Chain-wide consensus context. Cheap to clone.
#[derive(Clone, Debug)]
pub struct TrellisContext {
    chain_id: Arc<str>,
}

impl TrellisContext {
    pub fn new(chain_id: &str) -> Self {
        Self { chain_id: Arc::from(chain_id) }
    }

    pub fn chain_id(&self) -> &str {
        &self.chain_id
    }
}

/// A block height. Height 0 is genesis; the first block is height 1.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BlockHeight(pub u64);

impl fmt::Display for BlockHeight {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl mc::Height for BlockHeight {
    const ZERO: Self = BlockHeight(0);
    const INITIAL: Self = BlockHeight(1);

    fn increment_by(&self, n: u64) -> Self {
        BlockHeight(self.0.saturating_add(n))
    }

    fn decrement_by(&self, n: u64) -> Option<Self> {
        self.0.checked_sub(n).map(BlockHeight)
    }

    fn as_u64(&self) -> u64 {
        self.0
    }
}

/// A validator's address: the account address of its consensus key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ValidatorAddress(pub Address);

impl fmt::Display for ValidatorAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl mc::Address for ValidatorAddress {}

/// The value consensus decides on: a block's header hash.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BlockId(pub Hash);

impl fmt::Display for BlockId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl mc::Value for BlockId {
    type Id = BlockId;

    fn id(&self) -> BlockId {
        *self
    }
}

/// `Round` as the protocol encodes it: `None` for nil, else the round number.
pub fn round_to_option(round: Round) -> Option<u32> {
    round.as_u32()
}

pub fn round_from_option(round: Option<u32>) -> Round {
    match round {
        Some(r) => Round::new(r),
        None => Round::Nil,
    }
}

/// A proposal for `value` at (height, round), signed by the engine through [`crate::TrellisSigner`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Proposal {
    pub height: BlockHeight,
    pub round: Round,
    pub value: BlockId,
    pub pol_round: Round,
    pub proposer: ValidatorAddress,
}

impl Proposal {
    /// The chain's form of this proposal: what double-proposal evidence carries.
    pub fn header(&self) -> trellis_proto::ProposalHeader {
        trellis_proto::ProposalHeader {
            height: trellis_proto::Height(self.height.0),
            round: round_to_option(self.round),
            value: self.value.0,
            pol_round: round_to_option(self.pol_round),
            proposer: self.proposer.0,
        }
    }

    /// The canonical bytes a proposal signature covers: those of [`Proposal::header`].
    pub fn signing_bytes(&self) -> Vec<u8> {
        self.header().to_bytes()
    }
}

impl mc::Proposal<TrellisContext> for Proposal {
    fn height(&self) -> BlockHeight {
        self.height
    }

    fn round(&self) -> Round {
        self.round
    }

    fn value(&self) -> &BlockId {
        &self.value
    }

    fn take_value(self) -> BlockId {
        self.value
    }

    fn pol_round(&self) -> Round {
        self.pol_round
    }

    fn validator_address(&self) -> &ValidatorAddress {
        &self.proposer
    }
}

/// A prevote or precommit. Its signature covers exactly the bytes of the equivalent
/// [`trellis_proto::Vote`], so two conflicting votes the engine reports are evidence that the
/// chain's `ReportEquivocation` transaction can check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConsensusVote {
    pub height: BlockHeight,
    pub round: Round,
    pub vote_type: mc::VoteType,
    pub value: NilOrVal<BlockId>,
    pub validator: ValidatorAddress,
    pub extension: Option<SignedExtension<TrellisContext>>,
}

impl ConsensusVote {
    /// The chain's form of this vote, or `None` for a vote without a round (never signed).
    pub fn to_proto(&self) -> Option<trellis_proto::Vote> {
        Some(trellis_proto::Vote {
            height: trellis_proto::Height(self.height.0),
            round: self.round.as_u32()?,
            vote_type: match self.vote_type {
                mc::VoteType::Prevote => trellis_proto::VoteType::Prevote,
                mc::VoteType::Precommit => trellis_proto::VoteType::Precommit,
            },
            value: match self.value {
                NilOrVal::Nil => None,
                NilOrVal::Val(id) => Some(id.0),
            },
            validator: self.validator.0,
        })
    }
}

impl mc::Vote<TrellisContext> for ConsensusVote {
    fn height(&self) -> BlockHeight {
        self.height
    }

    fn round(&self) -> Round {
        self.round
    }

    fn value(&self) -> &NilOrVal<BlockId> {
        &self.value
    }

    fn take_value(self) -> NilOrVal<BlockId> {
        self.value
    }

    fn vote_type(&self) -> mc::VoteType {
        self.vote_type
    }

    fn validator_address(&self) -> &ValidatorAddress {
        &self.validator
    }

    fn extension(&self) -> Option<&SignedExtension<TrellisContext>> {
        self.extension.as_ref()
    }

    fn take_extension(&mut self) -> Option<SignedExtension<TrellisContext>> {
        self.extension.take()
    }

    fn extend(self, extension: SignedExtension<TrellisContext>) -> Self {
        Self { extension: Some(extension), ..self }
    }
}

/// The one part of a proposal stream: the whole encoded block, signed by the proposer.
///
/// Malachite does not sign proposal parts, so the part carries its own signature over
/// [`BlockPart::signing_bytes`]; a receiver checks it against the expected proposer of
/// (height, round) before looking at the block.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockPart {
    pub height: BlockHeight,
    pub round: Round,
    pub valid_round: Round,
    pub proposer: ValidatorAddress,
    /// The block in its canonical encoding.
    pub block: Bytes,
    pub signature: Signature,
}

impl BlockPart {
    /// Every field but the signature, with the block hashed: what the proposer signs, and what
    /// double-proposal evidence carries instead of the block.
    pub fn header(&self) -> trellis_proto::PartHeader {
        trellis_proto::PartHeader {
            height: trellis_proto::Height(self.height.0),
            round: round_to_option(self.round),
            valid_round: round_to_option(self.valid_round),
            proposer: self.proposer.0,
            block: Hash::digest(trellis_proto::HashDomain::Blob, &self.block),
        }
    }

    /// The bytes the proposer signs: those of [`BlockPart::header`].
    pub fn signing_bytes(&self) -> Vec<u8> {
        self.header().to_bytes()
    }
}

impl mc::ProposalPart<TrellisContext> for BlockPart {
    fn is_first(&self) -> bool {
        true
    }

    fn is_last(&self) -> bool {
        true
    }
}

/// A validator: its address, both forms of its key, and its voting power (bonded stake).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Validator {
    pub address: ValidatorAddress,
    pub key: PublicKey,
    pub consensus_key: arc_malachitebft_signing_ed25519::PublicKey,
    pub power: VotingPower,
}

impl Validator {
    /// `None` when `key` is not a valid ed25519 point.
    pub fn new(key: PublicKey, power: VotingPower) -> Option<Self> {
        let consensus_key = arc_malachitebft_signing_ed25519::PublicKey::from_bytes(key.0).ok()?;
        Some(Self { address: ValidatorAddress(key.address()), key, consensus_key, power })
    }
}

impl mc::Validator<TrellisContext> for Validator {
    fn address(&self) -> &ValidatorAddress {
        &self.address
    }

    fn public_key(&self) -> &arc_malachitebft_signing_ed25519::PublicKey {
        &self.consensus_key
    }

    fn voting_power(&self) -> VotingPower {
        self.power
    }
}

/// The validators of a height, in address order (the same on every node), and which of them
/// may propose: all, unless the chain jailed some since the set was installed
/// ([`ValidatorSet::barring_proposers`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ValidatorSet {
    validators: Vec<Validator>,
    total_power: VotingPower,
    /// Indices into `validators` of those that may propose, in address order; never empty when
    /// `validators` is not.
    proposers: Vec<usize>,
    /// The voting power of `proposers`, which the round-0 draw is taken over.
    proposer_power: VotingPower,
}

impl ValidatorSet {
    /// Sorts by address and drops duplicate addresses and zero-power entries.
    pub fn new(mut validators: Vec<Validator>) -> Self {
        validators.retain(|v| v.power > 0);
        validators.sort_by_key(|v| v.address);
        validators.dedup_by_key(|v| v.address);
        let total_power = validators.iter().map(|v| v.power).fold(0u64, u64::saturating_add);
        let proposers = (0..validators.len()).collect();
        Self { validators, total_power, proposers, proposer_power: total_power }
    }

    /// The same set with the validators in `barred` left out of the proposer draw; they keep
    /// their votes (the set is fixed until the epoch ends). The chain passes the validators it
    /// jailed since the set was installed: a validator caught signing two blocks for a round
    /// proposes no more from the next height on, instead of flooding again in every round it
    /// would propose until the epoch ends. Every node computes `barred` from the same committed
    /// state, so every node agrees on the proposer. If the validators left hold no voting power
    /// (every one barred), none is barred: a height always has a proposer.
    pub fn barring_proposers(mut self, barred: &std::collections::BTreeSet<ValidatorAddress>) -> Self {
        let proposers: Vec<usize> =
            (0..self.validators.len()).filter(|&i| !barred.contains(&self.validators[i].address)).collect();
        let power = proposers.iter().map(|&i| self.validators[i].power).fold(0u64, u64::saturating_add);
        if power > 0 {
            self.proposers = proposers;
            self.proposer_power = power;
        }
        self
    }

    /// Whether `address` may propose in this set.
    pub fn may_propose(&self, address: &ValidatorAddress) -> bool {
        self.proposers.iter().any(|&i| self.validators[i].address == *address)
    }

    pub fn validators(&self) -> &[Validator] {
        &self.validators
    }

    pub fn contains(&self, address: &ValidatorAddress) -> bool {
        self.get(address).is_some()
    }

    pub fn get(&self, address: &ValidatorAddress) -> Option<&Validator> {
        self.validators.binary_search_by_key(address, |v| v.address).ok().map(|i| &self.validators[i])
    }

    /// The proposer of (height, round), among the validators that may propose. Round 0 is drawn
    /// by voting power from a counter-based draw on the height alone (`trellis_proto::hash::draw`),
    /// so a validator proposes in proportion to its stake and nobody can steer the draw; every
    /// later round moves one step along the address order from there, so within `n` rounds every
    /// proposer has proposed and a silent proposer delays a height by at most one round per
    /// silent validator.
    pub fn proposer(&self, height: BlockHeight, round: Round) -> Option<&Validator> {
        if self.proposers.is_empty() || self.proposer_power == 0 {
            return None;
        }
        let point = trellis_proto::hash::draw("proposer", &[], &[height.0]) % self.proposer_power;
        let first =
            trellis_proto::hash::weighted_index(point, self.proposers.iter().map(|&i| self.validators[i].power))
                .unwrap_or(0);
        let round = u64::from(round.as_u32().unwrap_or(0));
        let index = (first as u64).wrapping_add(round) % self.proposers.len() as u64;
        self.proposers.get(index as usize).and_then(|&i| self.validators.get(i))
    }
}

impl mc::ValidatorSet<TrellisContext> for ValidatorSet {
    fn count(&self) -> usize {
        self.validators.len()
    }

    fn total_voting_power(&self) -> VotingPower {
        self.total_power
    }

    fn get_by_address(&self, address: &ValidatorAddress) -> Option<&Validator> {
        self.get(address)
    }

    fn get_by_index(&self, index: usize) -> Option<&Validator> {
        self.validators.get(index)
    }
}

impl mc::Context for TrellisContext {
    type Address = ValidatorAddress;
    type Height = BlockHeight;
    type ProposalPart = BlockPart;
    type Proposal = Proposal;
    type Validator = Validator;
    type ValidatorSet = ValidatorSet;
    type Timeouts = LinearTimeouts;
    type Value = BlockId;
    type Vote = ConsensusVote;
    type Extension = Bytes;
    type SigningScheme = Ed25519;

    fn select_proposer<'a>(&self, validator_set: &'a ValidatorSet, height: BlockHeight, round: Round) -> &'a Validator {
        // The engine never starts a height with an empty set: the chain keeps the old set
        // rather than install an empty one (contracts `end_block`), and start-up refuses it.
        validator_set.proposer(height, round).expect("validator set is never empty")
        // ok: see comment above
    }

    fn new_proposal(
        &self,
        height: BlockHeight,
        round: Round,
        value: BlockId,
        pol_round: Round,
        address: ValidatorAddress,
    ) -> Proposal {
        Proposal { height, round, value, pol_round, proposer: address }
    }

    fn new_prevote(
        &self,
        height: BlockHeight,
        round: Round,
        value_id: NilOrVal<BlockId>,
        address: ValidatorAddress,
    ) -> ConsensusVote {
        ConsensusVote {
            height,
            round,
            vote_type: mc::VoteType::Prevote,
            value: value_id,
            validator: address,
            extension: None,
        }
    }

    fn new_precommit(
        &self,
        height: BlockHeight,
        round: Round,
        value_id: NilOrVal<BlockId>,
        address: ValidatorAddress,
    ) -> ConsensusVote {
        ConsensusVote {
            height,
            round,
            vote_type: mc::VoteType::Precommit,
            value: value_id,
            validator: address,
            extension: None,
        }
    }
}
