//! Why a transaction was rejected. A rejected transaction changes nothing.

use thiserror::Error;
use trellis_proto::{Address, Amount, Height, JobId, Role};

use crate::state::{CorruptState, Phase};

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TxError {
    #[error("wrong nonce: the account's next nonce is {expected}, the transaction has {got}")]
    BadNonce { expected: u64, got: u64 },
    #[error("fee {got} is below the minimum {min}")]
    FeeTooLow { min: Amount, got: Amount },
    #[error("insufficient balance: {needed} needed, {available} available")]
    InsufficientBalance { needed: Amount, available: Amount },
    #[error("amount must be positive")]
    ZeroAmount,
    #[error("a {role:?} bond must be at least {min} (it would be {got})")]
    BelowMinimumStake { role: Role, min: Amount, got: Amount },
    #[error("cannot unbond {requested}: only {bonded} is bonded as {role:?}")]
    InsufficientBond { role: Role, bonded: Amount, requested: Amount },
    #[error("unknown job {0}")]
    UnknownJob(JobId),
    #[error("job {0} is not active")]
    JobNotActive(JobId),
    #[error("invalid job spec: {0}")]
    InvalidJobSpec(String),
    #[error("escrow {escrow} does not cover one round's reward {reward}")]
    EscrowTooSmall { escrow: Amount, reward: Amount },
    #[error("{miner} has not joined job {job}")]
    NotJoined { job: JobId, miner: Address },
    #[error("miner {miner} is not a worker of round {round} of job {job} (rounds have a fixed number of worker slots; it trains from a later round)")]
    NotAWorker { job: JobId, round: u32, miner: Address },
    #[error("{miner} already joined job {job}")]
    AlreadyJoined { job: JobId, miner: Address },
    #[error("{miner} was ejected from job {job}")]
    Ejected { job: JobId, miner: Address },
    #[error("job {0} has the most miners it allows")]
    JobFull(JobId),
    #[error("job needs a miner bond of {required}, {miner} has {bonded}")]
    MinerStakeTooLow { miner: Address, required: Amount, bonded: Amount },
    #[error("job {job} is in round {current}, not {got}")]
    WrongRound { job: JobId, current: u32, got: u32 },
    #[error("round {round} of job {job} is {phase:?}, not {expected:?}")]
    WrongPhase { job: JobId, round: u32, phase: Phase, expected: Phase },
    #[error("the commit deadline (height {deadline}) has passed")]
    LateCommit { deadline: Height },
    #[error("{miner} already committed to this round")]
    AlreadyCommitted { miner: Address },
    #[error("invalid work commitment: {0}")]
    InvalidCommitment(String),
    #[error("the reveal window (until height {deadline}) has passed")]
    LateReveal { deadline: Height },
    #[error("{miner} has no commitment in this round to reveal")]
    NothingToReveal { miner: Address },
    #[error("{miner} already revealed its work for this round")]
    AlreadyRevealed { miner: Address },
    #[error("the revealed work does not hash to the binding {miner} committed")]
    RevealMismatch { miner: Address },
    #[error("the verification window (until height {end}) is closed")]
    VerdictWindowClosed { end: Height },
    #[error("segment {segment} of {miner} was decided in the first window; after the escalation only reopened segments take verdicts")]
    SegmentDecided { miner: Address, segment: u32 },
    #[error("{checker} is not assigned to segment {segment} of {miner}")]
    NotAssigned { checker: Address, miner: Address, segment: u32 },
    #[error("{checker} already gave a verdict on segment {segment} of {miner}")]
    DuplicateVerdict { checker: Address, miner: Address, segment: u32 },
    #[error("the aggregate deadline (height {deadline}) has passed")]
    LateAggregate { deadline: Height },
    #[error("aggregate names {got} accepted miners, the round accepted {expected}")]
    AggregateMismatch { expected: usize, got: usize },
    #[error("{0} is not in the active validator set")]
    NotAValidator(Address),
    #[error("only the submitter {submitter} may cancel job {job}")]
    NotSubmitter { job: JobId, submitter: Address },
    #[error("invalid equivocation evidence: {0}")]
    InvalidEvidence(String),
    #[error("unfounded Invalid evidence: {0}")]
    UnfoundedEvidence(String),
    #[error("this equivocation was already reported")]
    EvidenceAlreadyUsed,
    #[error("{0} has no validator bond")]
    UnknownValidator(Address),
    #[error("a beacon onion has {min} to {max} layers, not {got}", min = trellis_protocol::beacon::MIN_LAYERS, max = trellis_protocol::beacon::MAX_LAYERS)]
    OnionLayers { got: u32 },
    #[error("the committed beacon onion still has {remaining} layers to reveal; a new one may be committed once it is spent")]
    OnionNotSpent { remaining: u32 },
    #[error("amount overflow")]
    Overflow,
    #[error(transparent)]
    Corrupt(#[from] CorruptState),
}
