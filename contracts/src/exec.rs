//! Applying transactions and block hooks to the state.
//!
//! [`Chain::apply_tx`] runs a transaction in an overlay and writes its changes only if every
//! check passed. [`Chain::begin_block`] mints the block reward and moves job rounds past their
//! deadlines; [`Chain::end_block`] releases matured unbonding and, at epoch boundaries, updates
//! the validator set.
//!
//! Preconditions the caller guarantees: transaction signatures were verified (the node checks
//! them in the mempool and, batched, for every block).

use serde::{Deserialize, Serialize};
use trellis_proto::{
    Address, Aggregate, AggregationRule, Amount, DoubleProposalEvidence, EquivocationEvidence, Hash, HashDomain,
    Height, JobId, JobSpec, PublicKey, Role, SignedTx, TxKind, Verdict, VerdictOutcome, VerificationMode,
    WorkCommitment, WorkReveal,
};

use crate::error::TxError;
use crate::kv::{apply_changes, KvStore, Overlay};
use crate::params::{fraction, Params};
use crate::rounds;
use crate::state::{
    decode_record, keys, read, write, AcceptedState, Account, BeaconOnion, Commit, Job, JobStatus, MinerEntry, Phase,
    RoundState, Stake, Supply, Unbonding, Validator, ValidatorSet, VerdictRecord,
};

/// What a block gives the state machine besides its transactions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockCtx {
    pub height: Height,
    pub time_ms: u64,
    /// The chain's beacon after this block's reveal (`trellis_protocol::beacon`): unknown to
    /// anyone but the proposer before the block is proposed, and not the proposer's to choose.
    pub randomness: Hash,
    pub proposer: Address,
}

/// Something that happened, for logs, RPC subscriptions and tests.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "event")]
pub enum Event {
    Transfer {
        from: Address,
        to: Address,
        amount: Amount,
    },
    FeeBurned {
        payer: Address,
        amount: Amount,
    },
    BlockReward {
        proposer: Address,
        amount: Amount,
    },
    Bonded {
        who: Address,
        role: Role,
        amount: Amount,
    },
    Unbonding {
        who: Address,
        role: Role,
        amount: Amount,
        release_height: Height,
    },
    Released {
        who: Address,
        role: Role,
        amount: Amount,
    },
    JobSubmitted {
        job: JobId,
        submitter: Address,
        escrow: Amount,
    },
    JobJoined {
        job: JobId,
        miner: Address,
    },
    RoundOpened {
        job: JobId,
        round: u32,
        commit_deadline: Height,
    },
    WorkCommitted {
        job: JobId,
        round: u32,
        miner: Address,
    },
    RevealsOpened {
        job: JobId,
        round: u32,
        reveal_deadline: Height,
    },
    WorkRevealed {
        job: JobId,
        round: u32,
        miner: Address,
    },
    SegmentsSampled {
        job: JobId,
        round: u32,
        assignments: usize,
    },
    VerdictRecorded {
        job: JobId,
        round: u32,
        checker: Address,
        miner: Address,
        segment: u32,
    },
    Escalated {
        job: JobId,
        round: u32,
        segments: usize,
        verify_end: Height,
    },
    /// `unchecked`: revealed work whose sampled segments no checker decided (not paid, not slashed).
    RoundTallied {
        job: JobId,
        round: u32,
        accepted: Vec<Address>,
        poisoners: Vec<Address>,
        withholders: Vec<Address>,
        freeloaders: Vec<Address>,
        unchecked: Vec<Address>,
    },
    /// `job` is the job whose round the slash settles (none for equivocation).
    Slashed {
        who: Address,
        role: Role,
        amount: Amount,
        reason: SlashReason,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        job: Option<JobId>,
    },
    Ejected {
        job: JobId,
        miner: Address,
    },
    /// `miner` held a worker slot of `job` for [`rounds::MAX_MISSED_COMMITS`] rounds in a row
    /// and committed nothing: it leaves the job (unslashed) and its place is free.
    Dropped {
        job: JobId,
        miner: Address,
    },
    AggregateCommitted {
        job: JobId,
        round: u32,
        model_hash: Hash,
    },
    Rewarded {
        job: JobId,
        round: u32,
        who: Address,
        amount: Amount,
        as_miner: bool,
    },
    RoundLapsed {
        job: JobId,
        round: u32,
    },
    JobEnded {
        job: JobId,
        status: JobStatus,
        refund: Amount,
    },
    CancelRequested {
        job: JobId,
    },
    Jailed {
        validator: Address,
    },
    BeaconCommitted {
        validator: Address,
        layers: u32,
        active_from: Height,
    },
    /// An included transaction whose action failed: its fee was burned and its nonce used,
    /// nothing else happened.
    TxFailed {
        tx: Hash,
        sender: Address,
        reason: String,
    },
    ValidatorSetChanged {
        validators: usize,
        total_power: u64,
    },
}

/// Why stake was slashed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SlashReason {
    /// A sampled segment was found `Invalid`.
    Poisoner,
    /// A sampled segment was not served (`Unavailable`).
    Withheld,
    /// A commitment was never revealed.
    Freeloader,
    MissedVerdict,
    /// A checker's verdict was overturned by the escalated committee.
    OverturnedVerdict,
    Equivocation,
}

impl SlashReason {
    /// The reason as RPC and logs name it (its JSON name).
    pub fn name(self) -> &'static str {
        match self {
            SlashReason::Poisoner => "poisoner",
            SlashReason::Withheld => "withheld",
            SlashReason::Freeloader => "freeloader",
            SlashReason::MissedVerdict => "missed-verdict",
            SlashReason::OverturnedVerdict => "overturned-verdict",
            SlashReason::Equivocation => "equivocation",
        }
    }
}

/// Where a validator may sign only one thing: a consensus step of one height and round. The
/// chain punishes an equivocation once per slot.
#[derive(Debug, Clone, Copy)]
struct EquivocationSlot {
    height: Height,
    round: u32,
    /// `VoteType as u8` for votes (0, 1), [`PROPOSAL_STEP`] for proposals.
    step: u8,
}

/// The step byte of the proposal slot in an equivocation marker (votes use 0 and 1).
const PROPOSAL_STEP: u8 = 3;

/// Genesis state: balances, initial bonds, parameters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Genesis {
    pub chain_id: String,
    pub accounts: Vec<(Address, Amount)>,
    pub validators: Vec<(PublicKey, Amount)>,
    pub miners: Vec<(PublicKey, Amount)>,
    pub params: Params,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GenesisError {
    #[error("genesis state already exists")]
    AlreadyInitialised,
    #[error("genesis has no validator with at least the minimum stake {0}")]
    NoValidators(Amount),
    #[error("genesis amounts overflow")]
    Overflow,
    #[error("genesis lists {0} twice")]
    Duplicate(Address),
    #[error("genesis parameters: {0}")]
    Params(String),
}

impl Genesis {
    /// What [`Chain::init_genesis`] checks before writing anything (also what a node checks of its
    /// genesis file at every start): valid parameters, no account or stake listed twice, amounts
    /// that add up without overflow.
    pub fn validate(&self) -> Result<(), GenesisError> {
        self.params.validate().map_err(GenesisError::Params)?;
        let mut total = Amount::ZERO;
        let mut seen = std::collections::BTreeSet::new();
        for (address, balance) in &self.accounts {
            if !seen.insert(*address) {
                return Err(GenesisError::Duplicate(*address));
            }
            total = total.checked_add(*balance).ok_or(GenesisError::Overflow)?;
        }
        for bonds in [&self.validators, &self.miners] {
            // A key listed twice in one role would count its stake twice in the supply and keep
            // one record.
            let mut seen = std::collections::BTreeSet::new();
            for (key, amount) in bonds {
                if !seen.insert(key.address()) {
                    return Err(GenesisError::Duplicate(key.address()));
                }
                total = total.checked_add(*amount).ok_or(GenesisError::Overflow)?;
            }
        }
        Ok(())
    }
}

/// The chain's rules with their parameters. Holds no state: every call takes the store.
#[derive(Debug, Clone)]
pub struct Chain {
    pub chain_id: String,
    pub params: Params,
}

impl Chain {
    pub fn new(chain_id: impl Into<String>, params: Params) -> Self {
        Self { chain_id: chain_id.into(), params }
    }

    /// Writes the genesis state into an empty store.
    pub fn init_genesis<S: KvStore + ?Sized>(kv: &mut S, genesis: &Genesis) -> Result<Chain, GenesisError> {
        if kv.get(keys::SUPPLY).is_some() {
            return Err(GenesisError::AlreadyInitialised);
        }
        genesis.validate()?;
        let mut total = Amount::ZERO;
        for (address, balance) in &genesis.accounts {
            total = total.checked_add(*balance).ok_or(GenesisError::Overflow)?;
            write(kv, keys::account(address), &Account { balance: *balance, nonce: 0 });
        }
        for (role, bonds) in [(Role::Validator, &genesis.validators), (Role::Miner, &genesis.miners)] {
            for (key, amount) in bonds {
                total = total.checked_add(*amount).ok_or(GenesisError::Overflow)?;
                let stake = Stake { key: *key, bonded: *amount, unbonding: Vec::new(), jailed: false };
                write(kv, keys::stake(role, &key.address()), &stake);
            }
        }
        write(kv, keys::SUPPLY.to_vec(), &Supply { genesis: total, minted: Amount::ZERO, burned: Amount::ZERO });
        write(kv, keys::NEXT_JOB.to_vec(), &0u64);
        let chain = Chain::new(genesis.chain_id.clone(), genesis.params.clone());
        let set = chain.compute_validator_set(kv).map_err(|_| GenesisError::Overflow)?;
        if set.validators.is_empty() {
            return Err(GenesisError::NoValidators(genesis.params.min_validator_stake));
        }
        write(kv, keys::VALIDATORS.to_vec(), &set);
        kv.put(crate::kv::DIGEST_KEY.to_vec(), crate::kv::StateDigest::compute(kv).to_bytes());
        Ok(chain)
    }

    /// Applies one signed transaction, all or nothing: on error nothing is written (not even the
    /// fee; blocks use [`Chain::include_tx`]).
    pub fn apply_tx<S: KvStore + ?Sized>(
        &self,
        kv: &mut S,
        tx: &SignedTx,
        ctx: &BlockCtx,
    ) -> Result<Vec<Event>, TxError> {
        let mut overlay = Overlay::new(&*kv);
        let events = self.execute(&mut overlay, tx, ctx)?;
        let changes = overlay.into_changes();
        apply_changes(kv, changes);
        Ok(events)
    }

    /// Start of a block: mint the proposer's reward, then move every active job's round past
    /// deadlines that ended before this block.
    pub fn begin_block<S: KvStore + ?Sized>(&self, kv: &mut S, ctx: &BlockCtx) -> Result<Vec<Event>, TxError> {
        let mut events = Vec::new();
        let reward = self.params.block_reward;
        if !reward.is_zero() {
            self.credit(kv, &ctx.proposer, reward)?;
            let mut supply: Supply = read(kv, keys::SUPPLY)?.unwrap_or_default();
            supply.minted = supply.minted.checked_add(reward).ok_or(TxError::Overflow)?;
            write(kv, keys::SUPPLY.to_vec(), &supply);
            events.push(Event::BlockReward { proposer: ctx.proposer, amount: reward });
        }
        rounds::prune_due(kv, ctx.height)?;
        rounds::visit_due_jobs(self, kv, ctx, &mut events)?;
        Ok(events)
    }

    /// End of a block: release matured unbonding; at epoch boundaries recompute the validator
    /// set and return it when it changed.
    pub fn end_block<S: KvStore + ?Sized>(
        &self,
        kv: &mut S,
        ctx: &BlockCtx,
    ) -> Result<(Vec<Event>, Option<ValidatorSet>), TxError> {
        let mut events = Vec::new();
        let mut backing: Option<std::collections::BTreeSet<(Role, Address)>> = None;
        for (key, bytes) in kv.scan_prefix(keys::STAKE_PREFIX) {
            let mut stake: Stake = decode_record(&key, &bytes)?;
            if !stake.unbonding.iter().any(|u| u.release_height <= ctx.height) {
                continue;
            }
            let role = if key[keys::STAKE_PREFIX.len()] == b'v' { Role::Validator } else { Role::Miner };
            let who = stake.key.address();
            // Stake backing work that is not settled yet (a commitment, or a verdict owed, in a
            // round not yet settled, escalation included) stays slashable until it is.
            let backing = match &mut backing {
                Some(backing) => backing,
                None => backing.insert(self.backing_unsettled_work(kv)?),
            };
            if backing.contains(&(role, who)) {
                continue;
            }
            let (matured, pending): (Vec<Unbonding>, Vec<Unbonding>) =
                stake.unbonding.drain(..).partition(|u| u.release_height <= ctx.height);
            stake.unbonding = pending;
            let amount =
                matured.iter().try_fold(Amount::ZERO, |sum, u| sum.checked_add(u.amount)).ok_or(TxError::Overflow)?;
            kv.put(key, trellis_proto::Encode::to_bytes(&stake));
            self.credit(kv, &who, amount)?;
            events.push(Event::Released { who, role, amount });
        }
        let mut update = None;
        if self.params.epoch_blocks > 0 && ctx.height.0 % self.params.epoch_blocks == 0 {
            let set = self.compute_validator_set(kv)?;
            let current: ValidatorSet = read(kv, keys::VALIDATORS)?.unwrap_or_default();
            // An empty set would halt the chain: keep the old one until someone bonds.
            if set != current && !set.validators.is_empty() {
                events.push(Event::ValidatorSetChanged {
                    validators: set.validators.len(),
                    total_power: set.total_power(),
                });
                write(kv, keys::VALIDATORS.to_vec(), &set);
                update = Some(set);
            }
        }
        Ok((events, update))
    }

    /// Who backs work of an unsettled round: the miners that committed to it and the checkers
    /// assigned in it. Only a job's current round can be unsettled (rounds settle in order), and
    /// only a job someone has committed work to can have either (`working/`).
    fn backing_unsettled_work<S: KvStore + ?Sized>(
        &self,
        kv: &S,
    ) -> Result<std::collections::BTreeSet<(Role, Address)>, TxError> {
        let mut backing = std::collections::BTreeSet::new();
        for job in crate::state::working_jobs(kv)? {
            let Some(round) = RoundState::load_record(kv, job.id, job.current_round)? else { continue };
            if matches!(round.phase, Phase::Settled | Phase::Lapsed) {
                continue;
            }
            backing.extend(round.commits.iter().map(|c| (Role::Miner, c.miner)));
            backing.extend(round.assignments.iter().flat_map(|a| a.checkers.iter().map(|c| (Role::Validator, *c))));
        }
        Ok(backing)
    }

    /// Every active job ([`crate::state::active_jobs`]).
    pub fn active_jobs<S: KvStore + ?Sized>(&self, kv: &S) -> Result<Vec<Job>, TxError> {
        Ok(crate::state::active_jobs(kv)?)
    }

    /// The active validator set as stored.
    pub fn validator_set<S: KvStore + ?Sized>(&self, kv: &S) -> Result<ValidatorSet, TxError> {
        Ok(read(kv, keys::VALIDATORS)?.unwrap_or_default())
    }

    /// The members of `set` (the active set, as read) the chain has jailed since it was
    /// installed (for equivocation). They keep their votes until the epoch ends, but propose no
    /// more: the consensus layer leaves them out of the proposer draw from the next height on.
    pub fn jailed_among<S: KvStore + ?Sized>(
        &self,
        kv: &S,
        set: &ValidatorSet,
    ) -> Result<std::collections::BTreeSet<Address>, TxError> {
        let mut jailed = std::collections::BTreeSet::new();
        for validator in &set.validators {
            if read::<Stake>(kv, &keys::stake(Role::Validator, &validator.address))?.is_some_and(|stake| stake.jailed) {
                jailed.insert(validator.address);
            }
        }
        Ok(jailed)
    }

    /// Bonded validators at or above the minimum, not jailed, the `max_validators` largest
    /// (ties by address), in address order.
    fn compute_validator_set<S: KvStore + ?Sized>(&self, kv: &S) -> Result<ValidatorSet, TxError> {
        let mut candidates = Vec::new();
        for (key, bytes) in kv.scan_prefix(&keys::stake_prefix(Role::Validator)) {
            let stake: Stake = decode_record(&key, &bytes)?;
            // A zero bond has no voting power (only reachable with parameters `validate` refuses).
            if !stake.jailed && stake.bonded >= self.params.min_validator_stake && stake.bonded > Amount::ZERO {
                candidates.push(Validator { address: stake.key.address(), key: stake.key, power: stake.bonded.0 });
            }
        }
        candidates.sort_by(|a, b| b.power.cmp(&a.power).then(a.address.cmp(&b.address)));
        candidates.truncate(self.params.max_validators as usize);
        candidates.sort_by_key(|v| v.address);
        Ok(ValidatorSet { validators: candidates })
    }

    /// Applies one signed transaction as a block does: a transaction whose action fails is still
    /// included when its sender can pay the fee at its nonce — the fee is burned and the nonce
    /// used, nothing else changes, and [`Event::TxFailed`] says why. `Err` only for a transaction
    /// no block may hold (wrong nonce, fee below the minimum or more than the balance): nothing
    /// is written. A failing transaction thus costs its sender its fee, like any other, so
    /// flooding blocks with failing ones is never free (`docs/threat-model.md`).
    pub fn include_tx<S: KvStore + ?Sized>(
        &self,
        kv: &mut S,
        tx: &SignedTx,
        ctx: &BlockCtx,
    ) -> Result<Vec<Event>, TxError> {
        let failure = match self.apply_tx(kv, tx, ctx) {
            Ok(events) => return Ok(events),
            Err(failure) => failure,
        };
        let mut overlay = Overlay::new(&*kv);
        let mut events = self.charge(&mut overlay, tx)?;
        let changes = overlay.into_changes();
        apply_changes(kv, changes);
        events.push(Event::TxFailed { tx: tx.hash(), sender: tx.tx.sender_address(), reason: failure.to_string() });
        Ok(events)
    }

    /// What every included transaction does first: checks the nonce and the fee, takes the fee
    /// (burned) and uses the nonce.
    fn charge<S: KvStore + ?Sized>(&self, kv: &mut S, signed: &SignedTx) -> Result<Vec<Event>, TxError> {
        let tx = &signed.tx;
        let sender = tx.sender_address();
        let mut account: Account = read(kv, &keys::account(&sender))?.unwrap_or_default();
        if tx.nonce != account.nonce {
            return Err(TxError::BadNonce { expected: account.nonce, got: tx.nonce });
        }
        let fee = tx.fee;
        if fee < self.params.min_fee {
            return Err(TxError::FeeTooLow { min: self.params.min_fee, got: fee });
        }
        if account.balance < fee {
            return Err(TxError::InsufficientBalance { needed: fee, available: account.balance });
        }
        account.balance -= fee;
        account.nonce = account.nonce.checked_add(1).ok_or(TxError::Overflow)?;
        write(kv, keys::account(&sender), &account);
        self.burn(kv, fee)?;
        Ok(vec![Event::FeeBurned { payer: sender, amount: fee }])
    }

    fn execute<S: KvStore + ?Sized>(
        &self,
        kv: &mut S,
        signed: &SignedTx,
        ctx: &BlockCtx,
    ) -> Result<Vec<Event>, TxError> {
        let tx = &signed.tx;
        let sender = tx.sender_address();
        let mut events = self.charge(kv, signed)?;
        match &tx.kind {
            TxKind::Transfer { to, amount } => {
                self.debit(kv, &sender, *amount)?;
                self.credit(kv, to, *amount)?;
                events.push(Event::Transfer { from: sender, to: *to, amount: *amount });
            }
            TxKind::Bond { role, amount } => events.push(self.bond(kv, &tx.sender, *role, *amount)?),
            TxKind::Unbond { role, amount } => events.push(self.unbond(kv, &sender, *role, *amount, ctx)?),
            TxKind::SubmitJob { spec, escrow } => events.extend(self.submit_job(kv, sender, spec, *escrow, ctx)?),
            TxKind::JoinJob { job } => events.push(self.join_job(kv, sender, *job, ctx)?),
            TxKind::CommitWork(work) => events.push(self.commit_work(kv, sender, work, ctx)?),
            TxKind::RevealWork(reveal) => events.push(self.reveal_work(kv, sender, reveal, ctx)?),
            TxKind::Verdict(verdict) => events.push(self.record_verdict(kv, sender, verdict, ctx)?),
            TxKind::CommitAggregate(aggregate) => events.extend(self.commit_aggregate(kv, sender, aggregate, ctx)?),
            TxKind::CancelJob { job } => events.extend(self.cancel_job(kv, sender, *job, ctx)?),
            TxKind::ReportEquivocation(evidence) => events.extend(self.report_equivocation(kv, evidence)?),
            TxKind::CommitBeacon { tip, layers } => events.push(self.commit_beacon(kv, sender, *tip, *layers, ctx)?),
            TxKind::ReportDoubleProposal(evidence) => events.extend(self.report_double_proposal(kv, evidence)?),
        }
        // What changed the job may let its round move on: `begin_block` looks at it next block.
        let changed_job = match &tx.kind {
            TxKind::JoinJob { job } | TxKind::CancelJob { job } => Some(*job),
            TxKind::CommitWork(work) => Some(work.job),
            TxKind::RevealWork(reveal) => Some(reveal.job),
            TxKind::Verdict(verdict) => Some(verdict.job),
            TxKind::CommitAggregate(aggregate) => Some(aggregate.job),
            TxKind::Transfer { .. }
            | TxKind::Bond { .. }
            | TxKind::Unbond { .. }
            | TxKind::SubmitJob { .. }
            | TxKind::ReportEquivocation(_)
            | TxKind::CommitBeacon { .. }
            | TxKind::ReportDoubleProposal(_) => None,
        };
        if let Some(job) = changed_job {
            rounds::schedule_visit(kv, job, ctx.height.after(1));
        }
        Ok(events)
    }

    pub(crate) fn credit<S: KvStore + ?Sized>(&self, kv: &mut S, who: &Address, amount: Amount) -> Result<(), TxError> {
        let mut account: Account = read(kv, &keys::account(who))?.unwrap_or_default();
        account.balance = account.balance.checked_add(amount).ok_or(TxError::Overflow)?;
        write(kv, keys::account(who), &account);
        Ok(())
    }

    fn debit<S: KvStore + ?Sized>(&self, kv: &mut S, who: &Address, amount: Amount) -> Result<(), TxError> {
        if amount.is_zero() {
            return Err(TxError::ZeroAmount);
        }
        let mut account: Account = read(kv, &keys::account(who))?.unwrap_or_default();
        if account.balance < amount {
            return Err(TxError::InsufficientBalance { needed: amount, available: account.balance });
        }
        account.balance -= amount;
        write(kv, keys::account(who), &account);
        Ok(())
    }

    pub(crate) fn burn<S: KvStore + ?Sized>(&self, kv: &mut S, amount: Amount) -> Result<(), TxError> {
        let mut supply: Supply = read(kv, keys::SUPPLY)?.unwrap_or_default();
        supply.burned = supply.burned.checked_add(amount).ok_or(TxError::Overflow)?;
        write(kv, keys::SUPPLY.to_vec(), &supply);
        Ok(())
    }

    fn bond<S: KvStore + ?Sized>(
        &self,
        kv: &mut S,
        key: &PublicKey,
        role: Role,
        amount: Amount,
    ) -> Result<Event, TxError> {
        let who = key.address();
        self.debit(kv, &who, amount)?;
        let mut stake: Stake = read(kv, &keys::stake(role, &who))?.unwrap_or(Stake {
            key: *key,
            bonded: Amount::ZERO,
            unbonding: Vec::new(),
            jailed: false,
        });
        let bonded = stake.bonded.checked_add(amount).ok_or(TxError::Overflow)?;
        let min = self.min_stake(role);
        if bonded < min {
            return Err(TxError::BelowMinimumStake { role, min, got: bonded });
        }
        stake.bonded = bonded;
        write(kv, keys::stake(role, &who), &stake);
        Ok(Event::Bonded { who, role, amount })
    }

    /// A bonded validator commits a beacon onion, once its last one is spent (or it has none).
    /// It counts from two blocks on: the block that holds it is proposed by someone who has
    /// seen the beacon before it, so a fresh onion never mixes into a beacon its owner knew.
    fn commit_beacon<S: KvStore + ?Sized>(
        &self,
        kv: &mut S,
        sender: Address,
        tip: Hash,
        layers: u32,
        ctx: &BlockCtx,
    ) -> Result<Event, TxError> {
        if !(trellis_protocol::beacon::MIN_LAYERS..=trellis_protocol::beacon::MAX_LAYERS).contains(&layers) {
            return Err(TxError::OnionLayers { got: layers });
        }
        let bonded =
            read::<Stake>(kv, &keys::stake(Role::Validator, &sender))?.is_some_and(|stake| !stake.bonded.is_zero());
        if !bonded {
            return Err(TxError::UnknownValidator(sender));
        }
        let previous: Option<BeaconOnion> = read(kv, &keys::onion(&sender))?;
        if let Some(onion) = &previous {
            if onion.remaining > 0 {
                return Err(TxError::OnionNotSpent { remaining: onion.remaining });
            }
        }
        let generation = match previous {
            Some(onion) => onion.generation.checked_add(1).ok_or(TxError::Overflow)?,
            None => 0,
        };
        let active_from = Height(ctx.height.0.checked_add(2).ok_or(TxError::Overflow)?);
        write(kv, keys::onion(&sender), &BeaconOnion { held: tip, layers, remaining: layers, generation, active_from });
        Ok(Event::BeaconCommitted { validator: sender, layers, active_from })
    }

    fn unbond<S: KvStore + ?Sized>(
        &self,
        kv: &mut S,
        who: &Address,
        role: Role,
        amount: Amount,
        ctx: &BlockCtx,
    ) -> Result<Event, TxError> {
        if amount.is_zero() {
            return Err(TxError::ZeroAmount);
        }
        let mut stake: Stake = read(kv, &keys::stake(role, who))?.ok_or(TxError::InsufficientBond {
            role,
            bonded: Amount::ZERO,
            requested: amount,
        })?;
        if stake.bonded < amount {
            return Err(TxError::InsufficientBond { role, bonded: stake.bonded, requested: amount });
        }
        let remaining = stake.bonded - amount;
        let min = self.min_stake(role);
        if !remaining.is_zero() && remaining < min {
            return Err(TxError::BelowMinimumStake { role, min, got: remaining });
        }
        let release_height = ctx.height.after(self.params.unbonding_blocks);
        stake.bonded = remaining;
        stake.unbonding.push(Unbonding { release_height, amount });
        write(kv, keys::stake(role, who), &stake);
        Ok(Event::Unbonding { who: *who, role, amount, release_height })
    }

    fn min_stake(&self, role: Role) -> Amount {
        match role {
            Role::Validator => self.params.min_validator_stake,
            Role::Miner => self.params.min_miner_stake,
        }
    }

    /// Takes `ppm` of everything `who` has at stake in `role` (bonded first, then unbonding,
    /// oldest first). Returns the amount taken, which the caller sends to a pool or burns.
    pub(crate) fn slash<S: KvStore + ?Sized>(
        &self,
        kv: &mut S,
        who: &Address,
        role: Role,
        ppm: u64,
    ) -> Result<Amount, TxError> {
        let Some(mut stake) = read::<Stake>(kv, &keys::stake(role, who))? else {
            return Ok(Amount::ZERO);
        };
        let mut remaining = fraction(stake.slashable().ok_or(TxError::Overflow)?, ppm);
        let taken = remaining;
        let from_bond = remaining.min(stake.bonded);
        stake.bonded -= from_bond;
        remaining -= from_bond;
        for entry in stake.unbonding.iter_mut() {
            let part = remaining.min(entry.amount);
            entry.amount -= part;
            remaining -= part;
        }
        stake.unbonding.retain(|u| !u.amount.is_zero());
        write(kv, keys::stake(role, who), &stake);
        Ok(taken)
    }

    fn submit_job<S: KvStore + ?Sized>(
        &self,
        kv: &mut S,
        submitter: Address,
        spec: &JobSpec,
        escrow: Amount,
        ctx: &BlockCtx,
    ) -> Result<Vec<Event>, TxError> {
        validate_job_spec(spec, &self.params).map_err(TxError::InvalidJobSpec)?;
        if escrow < spec.reward_per_round {
            return Err(TxError::EscrowTooSmall { escrow, reward: spec.reward_per_round });
        }
        self.debit(kv, &submitter, escrow)?;
        let id: u64 = read(kv, keys::NEXT_JOB)?.unwrap_or(0);
        write(kv, keys::NEXT_JOB.to_vec(), &id.checked_add(1).ok_or(TxError::Overflow)?);
        let job = Job::submitted(JobId(id), submitter, spec.clone(), escrow);
        let round = rounds::new_round(&job, 0, ctx.height, &ctx.randomness);
        let mut events = vec![Event::JobSubmitted { job: job.id, submitter, escrow }];
        events.push(Event::RoundOpened { job: job.id, round: 0, commit_deadline: round.commit_deadline });
        round.store(kv);
        write(kv, keys::job(job.id), &job);
        kv.put(keys::active(job.id), Vec::new());
        Ok(events)
    }

    pub(crate) fn load_job<S: KvStore + ?Sized>(&self, kv: &S, id: JobId) -> Result<Job, TxError> {
        read(kv, &keys::job(id))?.ok_or(TxError::UnknownJob(id))
    }

    fn load_active_job<S: KvStore + ?Sized>(&self, kv: &S, id: JobId) -> Result<Job, TxError> {
        let job = self.load_job(kv, id)?;
        if job.status != JobStatus::Active {
            return Err(TxError::JobNotActive(id));
        }
        Ok(job)
    }

    fn load_round<S: KvStore + ?Sized>(&self, kv: &S, job: &Job, round: u32) -> Result<RoundState, TxError> {
        if round != job.current_round {
            return Err(TxError::WrongRound { job: job.id, current: job.current_round, got: round });
        }
        RoundState::load_record(kv, job.id, round)?.ok_or(TxError::WrongRound {
            job: job.id,
            current: job.current_round,
            got: round,
        })
    }

    fn miner_bond<S: KvStore + ?Sized>(&self, kv: &S, miner: &Address) -> Result<Amount, TxError> {
        Ok(read::<Stake>(kv, &keys::stake(Role::Miner, miner))?.map_or(Amount::ZERO, |s| s.bonded))
    }

    fn join_job<S: KvStore + ?Sized>(
        &self,
        kv: &mut S,
        miner: Address,
        id: JobId,
        ctx: &BlockCtx,
    ) -> Result<Event, TxError> {
        let mut job = self.load_active_job(kv, id)?;
        if job.cancel_requested {
            return Err(TxError::JobNotActive(id));
        }
        match job.miners.binary_search_by(|m| m.address.cmp(&miner)) {
            Ok(index) if job.miners[index].ejected => Err(TxError::Ejected { job: id, miner }),
            Ok(_) => Err(TxError::AlreadyJoined { job: id, miner }),
            Err(_) => {
                // Miners that left (ejected or dropped) free their place, so that slot squatters
                // cannot keep a job full.
                let active = job.miners.iter().filter(|m| !m.ejected).count();
                let cap = self.params.max_miners_per_job as usize;
                if active >= cap {
                    return Err(TxError::JobFull(id));
                }
                let required = job.spec.min_miner_stake.max(self.params.min_miner_stake);
                let bonded = self.miner_bond(kv, &miner)?;
                if bonded < required {
                    return Err(TxError::MinerStakeTooLow { miner, required, bonded });
                }
                // The record stays bounded: at the bound, the record of a dropped miner (not of a
                // cheater) goes to make room, so that squatters cycling identities through drops
                // cannot lock the job for good; that miner may join again, as a newcomer would.
                if job.miners.len() >= cap.saturating_mul(rounds::MINER_RECORDS_PER_PLACE) {
                    let dropped = job.miners.iter().position(rounds::was_dropped).ok_or(TxError::JobFull(id))?;
                    job.miners.remove(dropped);
                }
                let index = job.miners.binary_search_by(|m| m.address.cmp(&miner)).unwrap_or_else(|at| at);
                job.miners.insert(index, MinerEntry { address: miner, ejected: false, missed_commits: 0 });
                write(kv, keys::job(id), &job);
                // A miner joining an open round with a free slot and at least half its commit
                // window ahead trains in it; otherwise from the next round on. Its slot is the
                // next free worker index. A round nobody could work in yet has been waiting for
                // its first worker (`rounds::advance_deadlines`): its commit window starts now, so
                // a job submitted before its miners were up (or before they had fetched its
                // dataset and keys) loses no round to the wait. A joiner given a slot with the
                // window nearly over could not have committed, and its miss would count towards
                // dropping it (a review, 2026-12-03).
                if let Some(mut round) = RoundState::load_record(kv, id, job.current_round)? {
                    let window = u64::from(job.spec.commit_blocks);
                    let blocks_left = round.commit_deadline.0.saturating_sub(ctx.height.0).saturating_add(1);
                    let in_time = round.workers.is_empty() || blocks_left.saturating_mul(2) >= window;
                    if round.phase == Phase::Open
                        && round.workers.len() < job.spec.diloco.workers_per_round as usize
                        && in_time
                    {
                        if round.workers.is_empty() {
                            round.commit_deadline = ctx.height.after(window);
                        }
                        round.workers.push(miner);
                        round.store(kv);
                    }
                }
                Ok(Event::JobJoined { job: id, miner })
            }
        }
    }

    fn commit_work<S: KvStore + ?Sized>(
        &self,
        kv: &mut S,
        miner: Address,
        work: &WorkCommitment,
        ctx: &BlockCtx,
    ) -> Result<Event, TxError> {
        let job = self.load_active_job(kv, work.job)?;
        let entry = job.miners.iter().find(|m| m.address == miner).ok_or(TxError::NotJoined { job: job.id, miner })?;
        if entry.ejected {
            return Err(TxError::Ejected { job: job.id, miner });
        }
        let mut round = self.load_round(kv, &job, work.round)?;
        if rounds::worker_index(&round, &miner).is_none() {
            return Err(TxError::NotAWorker { job: job.id, round: round.round, miner });
        }
        // Past the deadline the round has moved on (or is about to): either way, too late.
        if round.phase != Phase::Open || ctx.height > round.commit_deadline {
            return Err(TxError::LateCommit { deadline: round.commit_deadline });
        }
        if round.commits.iter().any(|c| c.miner == miner) {
            return Err(TxError::AlreadyCommitted { miner });
        }
        let required = job.spec.min_miner_stake.max(self.params.min_miner_stake);
        let bonded = self.miner_bond(kv, &miner)?;
        if bonded < required {
            return Err(TxError::MinerStakeTooLow { miner, required, bonded });
        }
        // Equal bindings are allowed: a binding covers its committer's address, so a copied one
        // can never be revealed, and refusing it would let a front-runner block the original.
        round.commits.push(Commit {
            miner,
            binding: work.binding,
            height: ctx.height,
            reveal: None,
            since: round.round,
        });
        round.store(kv);
        kv.put(keys::working(job.id), Vec::new());
        Ok(Event::WorkCommitted { job: job.id, round: round.round, miner })
    }

    fn reveal_work<S: KvStore + ?Sized>(
        &self,
        kv: &mut S,
        miner: Address,
        reveal: &WorkReveal,
        ctx: &BlockCtx,
    ) -> Result<Event, TxError> {
        let job = self.load_active_job(kv, reveal.job)?;
        let mut round = self.load_round(kv, &job, reveal.round)?;
        if round.phase != Phase::Revealing {
            return Err(TxError::WrongPhase {
                job: job.id,
                round: round.round,
                phase: round.phase,
                expected: Phase::Revealing,
            });
        }
        if ctx.height > round.reveal_deadline {
            return Err(TxError::LateReveal { deadline: round.reveal_deadline });
        }
        let round_number = round.round;
        let commit = round.commits.iter_mut().find(|c| c.miner == miner).ok_or(TxError::NothingToReveal { miner })?;
        if commit.reveal.is_some() {
            return Err(TxError::AlreadyRevealed { miner });
        }
        if reveal.binding(&miner) != commit.binding {
            return Err(TxError::RevealMismatch { miner });
        }
        let (fewest, most) = (job.spec.diloco.min_inner_steps, job.spec.diloco.inner_steps);
        if !(fewest..=most).contains(&reveal.steps) {
            return Err(TxError::InvalidCommitment(format!(
                "the work claims {} inner steps; the job takes {fewest}..={most}",
                reveal.steps
            )));
        }
        if reveal.continues != Hash::ZERO {
            // A streaming job's work continues only the miner's own accepted state of the
            // round before (docs/protocol.md §2.9).
            let carried: Option<AcceptedState> = if trellis_protocol::fragments::is_streaming(&job.spec) {
                read(kv, &keys::accepted(job.id, &miner))?
            } else {
                None
            };
            let previous = carried.filter(|state| {
                state.final_checkpoint == reveal.continues && Some(state.round) == round_number.checked_sub(1)
            });
            let Some(previous) = previous else {
                return Err(TxError::InvalidCommitment(
                    "the work continues a state that is not this miner's accepted work of the previous round of a streaming job".into(),
                ));
            };
            commit.since = previous.since;
        } else {
            commit.since = round_number;
        }
        let feedback = job.spec.diloco.encoding.has_error_feedback();
        if !feedback && (reveal.residual_hash != Hash::ZERO || reveal.next_residual != Hash::ZERO) {
            return Err(TxError::InvalidCommitment(
                "only work with error feedback (int8, q4, q2, top-k) carries a residual".into(),
            ));
        }
        if feedback && reveal.residual_hash != Hash::ZERO {
            // The residual carried in is the one the miner's latest accepted work left, which its
            // checkers recomputed exactly (docs/protocol.md §4.3); or none (a fresh start).
            let accepted: Option<AcceptedState> = read(kv, &keys::accepted(job.id, &miner))?;
            if accepted.map(|state| state.next_residual) != Some(reveal.residual_hash) {
                return Err(TxError::InvalidCommitment(
                    "the residual carried in is not the one this miner's latest accepted work left".into(),
                ));
            }
        }
        commit.reveal = Some(reveal.clone());
        round.store(kv);
        Ok(Event::WorkRevealed { job: job.id, round: round.round, miner })
    }

    fn record_verdict<S: KvStore + ?Sized>(
        &self,
        kv: &mut S,
        checker: Address,
        verdict: &Verdict,
        ctx: &BlockCtx,
    ) -> Result<Event, TxError> {
        let job = self.load_active_job(kv, verdict.job)?;
        let round = self.load_round(kv, &job, verdict.round)?;
        if round.phase != Phase::Verifying {
            return Err(TxError::WrongPhase {
                job: job.id,
                round: round.round,
                phase: round.phase,
                expected: Phase::Verifying,
            });
        }
        if ctx.height > round.verify_end {
            return Err(TxError::VerdictWindowClosed { end: round.verify_end });
        }
        let (miner, segment) = (verdict.miner, verdict.segment);
        let assigned = round
            .assignments
            .iter()
            .position(|a| a.miner == miner && a.segment == segment && a.checkers.contains(&checker));
        let Some(index) = assigned else {
            return Err(TxError::NotAssigned { checker, miner, segment });
        };
        // After an escalation only the reopened segments take verdicts: a segment decided in the
        // first window is not decided again by a checker that stayed silent there.
        if round.escalated && !round.escalated_segments.contains(&(index as u32)) {
            return Err(TxError::SegmentDecided { miner, segment });
        }
        if round.has_verdict(kv, &miner, segment, &checker) {
            return Err(TxError::DuplicateVerdict { checker, miner, segment });
        }
        if let VerdictOutcome::Invalid(evidence) = &verdict.outcome {
            // The evidence must quote what the miner revealed (docs/protocol.md §4.4).
            let reveal = round.commits.iter().find(|c| c.miner == miner).and_then(|c| c.reveal.as_ref());
            if let Some(reveal) = reveal {
                trellis_protocol::evidence::check_on_chain(evidence, reveal)
                    .map_err(|e| TxError::UnfoundedEvidence(e.to_string()))?;
            }
        }
        round.add_verdict(kv, &VerdictRecord { checker, miner, segment, outcome: verdict.outcome.clone() });
        Ok(Event::VerdictRecorded { job: job.id, round: round.round, checker, miner, segment })
    }

    fn commit_aggregate<S: KvStore + ?Sized>(
        &self,
        kv: &mut S,
        sender: Address,
        aggregate: &Aggregate,
        ctx: &BlockCtx,
    ) -> Result<Vec<Event>, TxError> {
        if !self.validator_set(kv)?.contains(&sender) {
            return Err(TxError::NotAValidator(sender));
        }
        let job = self.load_active_job(kv, aggregate.job)?;
        let round = self.load_round(kv, &job, aggregate.round)?;
        if round.phase != Phase::AwaitingAggregate {
            return Err(TxError::WrongPhase {
                job: job.id,
                round: round.round,
                phase: round.phase,
                expected: Phase::AwaitingAggregate,
            });
        }
        if ctx.height > round.aggregate_deadline {
            return Err(TxError::LateAggregate { deadline: round.aggregate_deadline });
        }
        if aggregate.accepted != round.accepted {
            return Err(TxError::AggregateMismatch { expected: round.accepted.len(), got: aggregate.accepted.len() });
        }
        rounds::settle(self, kv, job, round, Some(aggregate), ctx)
    }

    fn cancel_job<S: KvStore + ?Sized>(
        &self,
        kv: &mut S,
        sender: Address,
        id: JobId,
        ctx: &BlockCtx,
    ) -> Result<Vec<Event>, TxError> {
        let mut job = self.load_active_job(kv, id)?;
        if job.submitter != sender {
            return Err(TxError::NotSubmitter { job: id, submitter: job.submitter });
        }
        job.cancel_requested = true;
        let round = RoundState::load_record(kv, id, job.current_round)?.ok_or(TxError::WrongRound {
            job: id,
            current: job.current_round,
            got: job.current_round,
        })?;
        let mut events = vec![Event::CancelRequested { job: id }];
        if round.phase == Phase::Open && round.commits.is_empty() {
            // Nobody has worked on this round yet: end now.
            events.extend(rounds::end_job(self, kv, job, JobStatus::Cancelled, ctx.height)?);
        } else {
            write(kv, keys::job(id), &job);
        }
        Ok(events)
    }

    fn report_equivocation<S: KvStore + ?Sized>(
        &self,
        kv: &mut S,
        evidence: &EquivocationEvidence,
    ) -> Result<Vec<Event>, TxError> {
        evidence.verify(&self.chain_id).map_err(|e| TxError::InvalidEvidence(e.to_string()))?;
        let vote = &evidence.first.vote;
        let slot = EquivocationSlot { height: vote.height, round: vote.round, step: vote.vote_type as u8 };
        self.punish_equivocation(kv, &evidence.validator.address(), slot, &trellis_proto::Encode::to_bytes(evidence))
    }

    /// Two blocks signed by one proposer for one height and round: punished as a double vote is.
    /// One slot (height, round, proposal) whichever claims prove it, so a proposer that signed
    /// two engine proposals and two block parts for the same round is slashed once.
    fn report_double_proposal<S: KvStore + ?Sized>(
        &self,
        kv: &mut S,
        evidence: &DoubleProposalEvidence,
    ) -> Result<Vec<Event>, TxError> {
        evidence.verify(&self.chain_id).map_err(|e| TxError::InvalidEvidence(e.to_string()))?;
        let (height, round) = evidence.slot();
        let slot = EquivocationSlot { height, round, step: PROPOSAL_STEP };
        self.punish_equivocation(kv, &evidence.proposer.address(), slot, &trellis_proto::Encode::to_bytes(evidence))
    }

    /// Jails and slashes `offender` once per slot it equivocated in; a second report of the same
    /// slot (whatever pair of messages it carries) is refused.
    fn punish_equivocation<S: KvStore + ?Sized>(
        &self,
        kv: &mut S,
        offender: &Address,
        slot: EquivocationSlot,
        evidence_bytes: &[u8],
    ) -> Result<Vec<Event>, TxError> {
        let marker = [
            b"evidence/".as_slice(),
            &offender.0,
            &slot.height.0.to_be_bytes(),
            &slot.round.to_be_bytes(),
            &[slot.step],
        ]
        .concat();
        if kv.get(&marker).is_some() {
            return Err(TxError::EvidenceAlreadyUsed);
        }
        let key = keys::stake(Role::Validator, offender);
        let Some(mut stake) = read::<Stake>(kv, &key)? else {
            return Err(TxError::UnknownValidator(*offender));
        };
        stake.jailed = true;
        write(kv, key, &stake);
        let amount = self.slash(kv, offender, Role::Validator, self.params.equivocation_slash_ppm)?;
        self.burn(kv, amount)?;
        kv.put(marker, Hash::digest(HashDomain::Blob, evidence_bytes).0.to_vec());
        Ok(vec![
            Event::Slashed {
                who: *offender,
                role: Role::Validator,
                amount,
                reason: SlashReason::Equivocation,
                job: None,
            },
            Event::Jailed { validator: *offender },
        ])
    }
}

/// Bounds on every job parameter (`docs/jobs.md`). Outside them a spec is a trap for the miners
/// that join it (every Δ equal, checks no honest trail passes), cannot be checked, or holds more
/// work than a round's state and its validators can: the bounds on sizes follow from a most work
/// per round, [`MAX_ROUND_TOKENS`](bounds::MAX_ROUND_TOKENS), and every count derived from a
/// spec that passes (tokens, checkpoints, assignments, deadlines) fits its integer type.
pub mod bounds {
    use trellis_proto::job::MAX_MINERS_PER_ROUND;
    use trellis_proto::trail::MAX_TRAIL_STEPS;

    /// Most tokens all workers of a round train together (≈ 1.1·10¹²): what a round's rewards
    /// are split over and what its checkers may be asked to re-execute a share of.
    pub const MAX_ROUND_TOKENS: u64 = 1 << 40;
    /// Most inner steps (a trail holds one loss per step).
    pub const MAX_INNER_STEPS: u32 = MAX_TRAIL_STEPS;
    /// Most worker slots in a round.
    pub const MAX_WORKERS: u32 = MAX_MINERS_PER_ROUND as u32;
    /// Most sequences per batch.
    pub const MAX_BATCH_SIZE: u32 = 4_096;
    /// Longest context (and sequence).
    pub const MAX_CONTEXT: u32 = 1 << 16;
    /// Largest vocabulary.
    pub const MAX_VOCAB: u32 = 1 << 20;
    /// Widest model.
    pub const MAX_WIDTH: u32 = 1 << 16;
    /// Deepest model.
    pub const MAX_LAYERS: u32 = 1_024;
    /// Most rounds in a job.
    pub const MAX_ROUNDS: u32 = 1 << 20;
    /// Longest commit or verification window, in blocks.
    pub const MAX_WINDOW_BLOCKS: u32 = 1_000_000;
    /// Most dataset shards.
    pub const MAX_DATASET_SHARDS: u32 = 1 << 24;
    /// Smallest and largest inner (AdamW) learning rate.
    pub const LEARNING_RATE: (f32, f32) = (1e-6, 1.0);
    /// Largest outer learning rate.
    pub const MAX_OUTER_LEARNING_RATE: f32 = 10.0;
    /// Largest gradient-clipping norm.
    pub const MAX_GRAD_CLIP: f32 = 1e6;
    /// Largest tolerance-mode distance (relative L2).
    pub const MAX_TOLERANCE: f32 = 1.0;
    /// Most centred-clipping iterations.
    pub const MAX_CLIP_ITERATIONS: u32 = 100;
    /// Most segments sampled per miner.
    pub const MAX_SEGMENTS_PER_MINER: u32 = 64;
}

/// Checks a job spec before any funds move; the message says what to fix.
pub fn validate_job_spec(spec: &JobSpec, params: &Params) -> Result<(), String> {
    let d = &spec.diloco;
    let m = &spec.model;
    let v = &spec.verification;
    let within = |x: f32, low: f32, high: f32| x.is_finite() && x >= low && x <= high;
    let (groth16_incomplete, groth16_partial_segment) = match &v.mode {
        VerificationMode::Groth16 { model, proving_key, verifying_key } => (
            model.is_empty() || *proving_key == Hash::ZERO || *verifying_key == Hash::ZERO,
            v.checkpoint_interval != 0 && d.inner_steps % v.checkpoint_interval != 0,
        ),
        _ => (false, false),
    };
    let bad_tolerance = match v.mode {
        VerificationMode::Tolerance { max_distance } => !within(max_distance, 0.0, bounds::MAX_TOLERANCE),
        _ => false,
    };
    let bad_aggregation = match spec.aggregation {
        AggregationRule::Mean => false,
        AggregationRule::TrimmedMean { trim } => u64::from(trim) * 2 >= u64::from(d.workers_per_round),
        AggregationRule::CenteredClip { tau, iterations } => {
            !(tau.is_finite() && tau > 0.0) || iterations == 0 || iterations > bounds::MAX_CLIP_ITERATIONS
        }
    };
    let (lr_low, lr_high) = bounds::LEARNING_RATE;
    let max_workers = bounds::MAX_WORKERS.min(params.max_miners_per_job);
    let round_tokens = u128::from(d.inner_steps)
        * u128::from(d.batch_size)
        * u128::from(d.sequence_length)
        * u128::from(d.workers_per_round);
    let model_bad = !(1..=bounds::MAX_VOCAB).contains(&m.vocab_size)
        || !(1..=bounds::MAX_WIDTH).contains(&m.width)
        || !(1..=bounds::MAX_LAYERS).contains(&m.layers)
        || !(1..=m.width.max(1)).contains(&m.heads)
        || !(1..=bounds::MAX_CONTEXT).contains(&m.context_length);
    let checks: Vec<(bool, String)> = vec![
        (spec.name.is_empty(), "name is empty".into()),
        (
            model_bad,
            format!(
                "model dimensions must be positive with vocabulary ≤ {}, width ≤ {}, layers ≤ {}, heads ≤ width, context ≤ {}",
                bounds::MAX_VOCAB,
                bounds::MAX_WIDTH,
                bounds::MAX_LAYERS,
                bounds::MAX_CONTEXT
            ),
        ),
        (m.heads != 0 && m.width % m.heads != 0, "model width must be divisible by heads".into()),
        (d.workers_per_round == 0 || d.workers_per_round > max_workers, format!("workers_per_round must be in 1..={max_workers}")),
        (d.inner_steps == 0 || d.inner_steps > bounds::MAX_INNER_STEPS, format!("inner_steps must be in 1..={}", bounds::MAX_INNER_STEPS)),
        (d.min_inner_steps == 0 || d.min_inner_steps > d.inner_steps, "min_inner_steps must be in 1..=inner_steps".into()),
        (
            d.fragments == 0 || d.fragments > trellis_protocol::fragments::MAX_FRAGMENTS,
            format!("fragments must be in 1..={}", trellis_protocol::fragments::MAX_FRAGMENTS),
        ),
        (
            // A streaming miner carries its final state, moments included, into the next round:
            // only exact re-execution compares moments (tolerance mode compares weights alone,
            // so forged moments would steer every later round unseen).
            d.fragments > 1
                && (!matches!(v.mode, VerificationMode::Exact)
                    || d.encoding.has_error_feedback()
                    || d.min_inner_steps != d.inner_steps),
            "a streaming job (fragments > 1) needs exact re-execution (verification.mode = \"exact\"), an encoding without error feedback (f32, f16) and min_inner_steps = inner_steps".into(),
        ),
        (
            trellis_protocol::model::parameter_count(m) > trellis_protocol::model::MAX_PARAMETERS,
            format!(
                "the model has {} parameters; a Δ carries at most {} (2^30)",
                trellis_protocol::model::parameter_count(m),
                trellis_protocol::model::MAX_PARAMETERS
            ),
        ),
        (
            u64::from(d.fragments) > trellis_protocol::model::parameter_count(m),
            "fragments must not exceed the model's parameters (an empty fragment synchronises nothing)".into(),
        ),
        (d.batch_size == 0 || d.batch_size > bounds::MAX_BATCH_SIZE, format!("batch_size must be in 1..={}", bounds::MAX_BATCH_SIZE)),
        (
            round_tokens > u128::from(bounds::MAX_ROUND_TOKENS),
            format!("a round trains {round_tokens} tokens (workers × inner_steps × batch × sequence); at most {} (2^40)", bounds::MAX_ROUND_TOKENS),
        ),
        (d.rounds > bounds::MAX_ROUNDS, format!("rounds must be at most {}", bounds::MAX_ROUNDS)),
        (spec.commit_blocks > bounds::MAX_WINDOW_BLOCKS, format!("commit_blocks must be at most {}", bounds::MAX_WINDOW_BLOCKS)),
        (spec.verify_blocks > bounds::MAX_WINDOW_BLOCKS, format!("verify_blocks must be at most {}", bounds::MAX_WINDOW_BLOCKS)),
        (spec.dataset_shards > bounds::MAX_DATASET_SHARDS, format!("dataset_shards must be at most {}", bounds::MAX_DATASET_SHARDS)),
        (d.sequence_length == 0 || d.sequence_length > m.context_length, "sequence_length must be in 1..=context_length".into()),
        (!within(d.learning_rate, lr_low, lr_high), format!("learning_rate must be in [{lr_low:e}, {lr_high}]")),
        (!within(d.beta1, 0.0, 1.0) || d.beta1 == 1.0 || !within(d.beta2, 0.0, 1.0) || d.beta2 == 1.0, "beta1 and beta2 must be in [0, 1)".into()),
        (!within(d.weight_decay, 0.0, 1.0), "weight_decay must be in [0, 1]".into()),
        (!within(d.grad_clip, f32::MIN_POSITIVE, bounds::MAX_GRAD_CLIP), format!("grad_clip must be positive and at most {:e}", bounds::MAX_GRAD_CLIP)),
        (u64::from(d.warmup_steps) > u64::from(d.inner_steps) * u64::from(d.rounds), "warmup_steps must not exceed the job's steps (inner_steps × rounds)".into()),
        (d.rounds == 0, "rounds must be positive".into()),
        (v.checkpoint_interval == 0 || v.checkpoint_interval > d.inner_steps, "checkpoint_interval must be in 1..=inner_steps".into()),
        (v.segments_per_miner == 0 || v.segments_per_miner > bounds::MAX_SEGMENTS_PER_MINER, format!("segments_per_miner must be in 1..={}", bounds::MAX_SEGMENTS_PER_MINER)),
        (bad_tolerance, format!("tolerance max_distance must be finite and in [0, {}]", bounds::MAX_TOLERANCE)),
        (
            v.checkpoint_state == trellis_proto::CheckpointState::Compact
                && (matches!(v.mode, trellis_proto::VerificationMode::Groth16 { .. })
                    || f64::from(d.beta1) * f64::from(d.beta1) >= f64::from(d.beta2)),
            "compact checkpoints need beta1² < beta2 and a mode that re-executes (not groth16)".into(),
        ),
        (
            d.inner_optimizer == trellis_proto::InnerOptimizer::Muon
                && matches!(v.mode, trellis_proto::VerificationMode::Groth16 { .. }),
            "a muon job needs a mode that re-executes (not groth16)".into(),
        ),
        (bad_aggregation, format!("trimmed-mean needs 2 × trim < workers_per_round; centered-clip needs tau > 0 and 1..={} iterations", bounds::MAX_CLIP_ITERATIONS)),
        (spec.reward_per_round.0 == 0, "reward_per_round must be positive".into()),
        (spec.min_miner_stake.0 < params.min_miner_stake.0, "min_miner_stake is below the chain minimum".into()),
        (spec.commit_blocks == 0, "commit_blocks must be positive".into()),
        (spec.verify_blocks == 0, "verify_blocks must be positive".into()),
        (spec.dataset_shards < d.workers_per_round, "the dataset needs at least one shard per worker".into()),
        (
            !within(d.outer_learning_rate, f32::MIN_POSITIVE, bounds::MAX_OUTER_LEARNING_RATE) || !(0.0..1.0).contains(&d.outer_momentum),
            format!("outer learning rate must be in (0, {}] and momentum in [0, 1)", bounds::MAX_OUTER_LEARNING_RATE),
        ),
        (groth16_incomplete, "a groth16 job needs its zk model and the hashes of its proving and verifying keys".into()),
        // A proof covers exactly the key's step count, so every segment must be full.
        (groth16_partial_segment, "a groth16 job needs inner_steps to be a multiple of checkpoint_interval".into()),
        (
            groth16_partial_segment || (matches!(v.mode, VerificationMode::Groth16 { .. }) && d.min_inner_steps != d.inner_steps),
            "a groth16 job needs min_inner_steps = inner_steps (its proofs cover whole segments)".into(),
        ),
    ];
    match checks.into_iter().find(|(bad, _)| *bad) {
        Some((_, reason)) => Err(reason),
        None => Ok(()),
    }
}

/// Everything held in any form (balances, stakes, escrows): must equal `Supply::expected_total`.
pub fn total_holdings<S: KvStore + ?Sized>(kv: &S) -> Result<Amount, TxError> {
    let mut total = Amount::ZERO;
    let mut add = |amount: Amount| -> Result<(), TxError> {
        total = total.checked_add(amount).ok_or(TxError::Overflow)?;
        Ok(())
    };
    for (key, bytes) in kv.scan_prefix(keys::ACCOUNT_PREFIX) {
        add(decode_record::<Account>(&key, &bytes)?.balance)?;
    }
    for (key, bytes) in kv.scan_prefix(keys::STAKE_PREFIX) {
        add(decode_record::<Stake>(&key, &bytes)?.slashable().ok_or(TxError::Overflow)?)?;
    }
    for (key, bytes) in kv.scan_prefix(keys::JOB_PREFIX) {
        add(decode_record::<Job>(&key, &bytes)?.escrow)?;
    }
    Ok(total)
}
