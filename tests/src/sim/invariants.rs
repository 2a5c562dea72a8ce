//! The simulator's judges: safety invariants checked on every commit and every signature of
//! an honest node, and the liveness measure, kept apart.
//!
//! Safety (must hold in every run where Byzantine stake is below a third, whatever the network
//! and crashes do):
//! - no two honest nodes decide different blocks at one height;
//! - no honest node decides a block that an independent reference check rejects (it re-executes
//!   the block on the reference chain and recomputes every aggregate it carries);
//! - every honest node's state root is the same at each height;
//! - supply is conserved on every honest node: balances + bonded + unbonding + escrows =
//!   genesis + minted − burned; and everything burned is a fee or a slash;
//! - no balance wraps below zero (a wrapped `u64` would exceed all that exists);
//! - no miner slashed in a round is paid for that round, and a miner's stake never grows except
//!   by its own bond (slashed stake is never handed back);
//! - no honest validator signs two different votes for one (height, round, step), across crashes
//!   and restarts (what its write-ahead log must ensure).
//!
//! Liveness is measured, not judged here: see [`LivenessReport`].

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use arc_malachitebft_app_channel::app::types::core::{NilOrVal, VoteType};
use thiserror::Error;
use trellis_consensus::{BlockId, ConsensusVote};
use trellis_contracts::state::{self, keys, Account, Stake, Supply};
use trellis_contracts::{recompute_state_root, state_root, total_holdings, Event, KvStore};
use trellis_proto::{Address, Hash, JobId, Role};

use super::chain::{Executed, Ledger};
use super::network::{NodeId, Time};

/// A broken safety invariant: the first one seen ends the run.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum Violation {
    #[error("height {height}: node {first_node} decided {first}, node {second_node} decided {second}")]
    ConflictingDecisions { height: u64, first_node: NodeId, first: Hash, second_node: NodeId, second: Hash },
    #[error("height {height}: node {node} decided block {block}, which the reference check rejects: {reason}")]
    InvalidBlockDecided { height: u64, node: NodeId, block: Hash, reason: String },
    #[error("height {height}: node {node} has state root {got}, node {first_node} has {expected}")]
    StateRootMismatch { height: u64, node: NodeId, got: Hash, first_node: NodeId, expected: Hash },
    #[error("height {height}: node {node}'s incrementally kept state root is {stored}, recomputed from every entry it is {recomputed}")]
    StaleStateDigest { height: u64, node: NodeId, stored: String, recomputed: Hash },
    #[error("height {height}, node {node}: holdings {holdings} but genesis + minted - burned = {expected}")]
    SupplyNotConserved { height: u64, node: NodeId, holdings: u64, expected: u64 },
    #[error("height {height}, node {node}: burned {burned} but fees {fees} + slashes {slashes}")]
    BurnMismatch { height: u64, node: NodeId, burned: u64, fees: u64, slashes: u64 },
    #[error("height {height}, node {node}: account {account} holds {balance}, more than the whole supply (wrapped below zero)")]
    NegativeBalance { height: u64, node: NodeId, account: Address, balance: u64 },
    #[error("height {height}, node {node}: miner {miner} slashed in job {job} round {round} was paid {amount} for it")]
    SlashedMinerPaid { height: u64, node: NodeId, miner: Address, job: JobId, round: u32, amount: u64 },
    #[error(
        "height {height}, node {node}: miner {miner}'s stake grew from {before} to {after} with only {bonded} bonded"
    )]
    StakeReturned { height: u64, node: NodeId, miner: Address, before: u64, after: u64, bonded: u64 },
    #[error("honest node {node} signed two {step:?}s at height {height} round {round}: {first} and {second}")]
    HonestDoubleSign { node: NodeId, height: u64, round: u32, step: VoteType, first: VoteValue, second: VoteValue },
    #[error("height {height}: honest validator {node} ({validator}) was slashed for equivocation")]
    HonestValidatorSlashed { height: u64, node: NodeId, validator: Address },
    #[error("honest node {node} decided block {block} at height {height} and cannot execute it: {reason}")]
    DecidedUnexecutable { height: u64, node: NodeId, block: Hash, reason: String },
}

/// A vote's value, printable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VoteValue(pub Option<Hash>);

impl fmt::Display for VoteValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            None => f.write_str("nil"),
            Some(hash) => hash.fmt(f),
        }
    }
}

impl From<&NilOrVal<BlockId>> for VoteValue {
    fn from(value: &NilOrVal<BlockId>) -> Self {
        match value {
            NilOrVal::Nil => VoteValue(None),
            NilOrVal::Val(id) => VoteValue(Some(id.0)),
        }
    }
}

/// What one honest node has seen of its own chain, for the per-node checks.
#[derive(Debug, Clone, Default)]
struct NodeBooks {
    fees: u64,
    slashes: u64,
    /// (job, round) → miners slashed in that round's tally.
    slashed_in_round: BTreeMap<(JobId, u32), BTreeSet<Address>>,
    /// Slashable stake of every miner after the last commit.
    miner_stake: BTreeMap<Address, u64>,
}

/// Checks every safety invariant as the run goes.
pub struct Checker {
    honest: Vec<bool>,
    genesis_total: u64,
    decisions: BTreeMap<u64, (Hash, NodeId)>,
    state_roots: BTreeMap<u64, (Hash, NodeId)>,
    /// The chain as first decided by honest nodes, re-checked independently of them.
    reference: Ledger,
    books: Vec<NodeBooks>,
    signed: BTreeMap<(NodeId, u64, u32, bool), VoteValue>,
    violation: Option<Violation>,
}

impl Checker {
    pub fn new(honest: Vec<bool>, genesis: &Ledger) -> Self {
        let genesis_total = total_holdings(genesis.state()).expect("genesis state decodes").0; // ok: built by the simulator
        let mut books = vec![NodeBooks::default(); honest.len()];
        let stakes = miner_stakes(genesis.state());
        for book in &mut books {
            book.miner_stake = stakes.clone();
        }
        Self {
            honest,
            genesis_total,
            decisions: BTreeMap::new(),
            state_roots: BTreeMap::new(),
            reference: genesis.clone(),
            books,
            signed: BTreeMap::new(),
            violation: None,
        }
    }

    pub fn violation(&self) -> Option<&Violation> {
        self.violation.as_ref()
    }

    fn fail(&mut self, violation: Violation) {
        if self.violation.is_none() {
            self.violation = Some(violation);
        }
    }

    /// An equivocation slash the chain applied to `node`'s validator at `height`: a violation
    /// when `node` is honest (its WAL and its durable proposals should make that impossible).
    pub fn on_equivocation_slash(&mut self, height: u64, node: NodeId, validator: Address) {
        if self.honest.get(node).copied().unwrap_or(false) {
            self.fail(Violation::HonestValidatorSlashed { height, node, validator });
        }
    }

    /// Heights decided so far (by any honest node).
    pub fn decided_heights(&self) -> u64 {
        self.decisions.keys().next_back().copied().unwrap_or(0)
    }

    /// A vote an honest node signed (fresh or replayed from its WAL).
    pub fn on_signed_vote(&mut self, node: NodeId, vote: &ConsensusVote) {
        if !self.honest[node] {
            return;
        }
        let Some(round) = vote.round.as_u32() else { return };
        let precommit = vote.vote_type == VoteType::Precommit;
        let value = VoteValue::from(&vote.value);
        match self.signed.get(&(node, vote.height.0, round, precommit)) {
            Some(first) if *first != value => {
                let first = *first;
                self.fail(Violation::HonestDoubleSign {
                    node,
                    height: vote.height.0,
                    round,
                    step: vote.vote_type,
                    first,
                    second: value,
                });
            }
            Some(_) => {}
            None => {
                self.signed.insert((node, vote.height.0, round, precommit), value);
            }
        }
    }

    /// An honest node decided a block it could not execute.
    pub fn on_decided_unexecutable(&mut self, node: NodeId, height: u64, block: Hash, reason: String) {
        if self.honest[node] {
            self.fail(Violation::DecidedUnexecutable { height, node, block, reason });
        }
    }

    /// A node committed `executed` at `ledger.height()`; `ledger` is its state after the commit.
    pub fn on_commit(&mut self, node: NodeId, ledger: &Ledger, executed: &Executed) {
        if !self.honest[node] {
            return;
        }
        let height = ledger.height();
        let block = executed.block.hash();

        // Agreement, and the independent re-check of the first decision at each height.
        match self.decisions.get(&height) {
            Some(&(first, first_node)) if first != block => {
                return self.fail(Violation::ConflictingDecisions {
                    height,
                    first_node,
                    first,
                    second_node: node,
                    second: block,
                });
            }
            Some(_) => {}
            None => {
                self.decisions.insert(height, (block, node));
                match self.reference.execute(&executed.block, None, true) {
                    Ok(reference) => {
                        let certificate =
                            ledger.certificate(height).expect("a committed block has its certificate").clone(); // ok: committed just now
                        self.reference.commit(reference, certificate);
                    }
                    Err(error) => {
                        return self.fail(Violation::InvalidBlockDecided {
                            height,
                            node,
                            block,
                            reason: error.to_string(),
                        });
                    }
                }
            }
        }

        let root = recompute_state_root(ledger.state());
        match state_root(ledger.state()) {
            Ok(stored) if stored == root => {}
            stored => {
                let stored = stored.map_or_else(|e| e.to_string(), |h| h.to_string());
                return self.fail(Violation::StaleStateDigest { height, node, stored, recomputed: root });
            }
        }
        match self.state_roots.get(&height) {
            Some(&(expected, first_node)) if expected != root => {
                return self.fail(Violation::StateRootMismatch { height, node, got: root, first_node, expected });
            }
            Some(_) => {}
            None => {
                self.state_roots.insert(height, (root, node));
            }
        }

        if let Err(violation) = self.check_books(node, height, ledger, &executed.events) {
            self.fail(violation);
        }
    }

    fn check_books(&mut self, node: NodeId, height: u64, ledger: &Ledger, events: &[Event]) -> Result<(), Violation> {
        let kv = ledger.state();
        let book = &mut self.books[node];
        let mut bonded: BTreeMap<Address, u64> = BTreeMap::new();
        for event in events {
            match event {
                Event::FeeBurned { amount, .. } => book.fees += amount.0,
                Event::Slashed { amount, .. } => book.slashes += amount.0,
                Event::Bonded { who, role: Role::Miner, amount } => *bonded.entry(*who).or_default() += amount.0,
                Event::RoundTallied { job, round, poisoners, withholders, freeloaders, .. } => {
                    let slashed = poisoners.iter().chain(withholders).chain(freeloaders).copied();
                    book.slashed_in_round.entry((*job, *round)).or_default().extend(slashed);
                }
                Event::Rewarded { job, round, who, amount, as_miner: true }
                    if book.slashed_in_round.get(&(*job, *round)).is_some_and(|s| s.contains(who)) =>
                {
                    return Err(Violation::SlashedMinerPaid {
                        height,
                        node,
                        miner: *who,
                        job: *job,
                        round: *round,
                        amount: amount.0,
                    });
                }
                _ => {}
            }
        }

        let supply: Supply = state::read(kv, keys::SUPPLY).ok().flatten().unwrap_or_default();
        let holdings = total_holdings(kv).map_or(u64::MAX, |total| total.0);
        // Computed here rather than with `Supply::expected_total`, which would panic, not
        // report, if more were burned than ever existed.
        let expected = self.genesis_total.saturating_add(supply.minted.0).saturating_sub(supply.burned.0);
        if supply.genesis.0 != self.genesis_total || holdings != expected {
            return Err(Violation::SupplyNotConserved { height, node, holdings, expected });
        }
        if supply.burned.0 != book.fees + book.slashes {
            return Err(Violation::BurnMismatch {
                height,
                node,
                burned: supply.burned.0,
                fees: book.fees,
                slashes: book.slashes,
            });
        }
        for (key, bytes) in kv.scan_prefix(keys::ACCOUNT_PREFIX) {
            let account: Account = state::decode_record(&key, &bytes).unwrap_or_default();
            if account.balance.0 > expected {
                let account_address = Address(key[keys::ACCOUNT_PREFIX.len()..].try_into().unwrap_or_default());
                return Err(Violation::NegativeBalance {
                    height,
                    node,
                    account: account_address,
                    balance: account.balance.0,
                });
            }
        }

        let stakes = miner_stakes(kv);
        for (miner, after) in &stakes {
            let before = book.miner_stake.get(miner).copied().unwrap_or(0);
            let added = bonded.get(miner).copied().unwrap_or(0);
            if *after > before + added {
                return Err(Violation::StakeReturned {
                    height,
                    node,
                    miner: *miner,
                    before,
                    after: *after,
                    bonded: added,
                });
            }
        }
        book.miner_stake = stakes;
        Ok(())
    }
}

/// Slashable stake (bonded + unbonding) of every miner.
fn miner_stakes<S: KvStore + ?Sized>(kv: &S) -> BTreeMap<Address, u64> {
    kv.scan_prefix(&keys::stake_prefix(Role::Miner))
        .into_iter()
        .filter_map(|(key, bytes)| state::decode_record::<Stake>(&key, &bytes).ok())
        .map(|stake| (stake.key.address(), stake.slashable().map_or(u64::MAX, |amount| amount.0)))
        .collect()
}

/// Whether the honest nodes recovered once the faults stopped: liveness, measured apart from
/// safety. From the start of the calm phase (network whole, every node up, low loss, Byzantine
/// validators still at work), every honest node must commit `required` heights beyond the highest
/// height any honest node had then, before `deadline`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LivenessReport {
    pub calm_from: Time,
    pub deadline: Time,
    /// Highest height any honest node had committed when the calm phase began.
    pub height_at_calm: u64,
    pub required: u64,
    /// When the last honest node reached `height_at_calm + required`, if it did in time.
    pub reached_at: Option<Time>,
    /// Lowest and highest committed height over honest nodes at the end of the run.
    pub final_min_height: u64,
    pub final_max_height: u64,
}

impl LivenessReport {
    pub fn is_live(&self) -> bool {
        self.reached_at.is_some()
    }

    /// Time from the start of the calm phase to recovery.
    pub fn recovery_ms(&self) -> Option<Time> {
        self.reached_at.map(|t| t - self.calm_from)
    }
}

impl fmt::Display for LivenessReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let target = self.height_at_calm + self.required;
        match self.recovery_ms() {
            Some(ms) => write!(
                f,
                "every honest node reached height {target} {ms} ms after the calm began at {} ms",
                self.calm_from
            )?,
            None => write!(
                f,
                "honest nodes did not all reach height {target} by {} ms (calm from {} ms)",
                self.deadline, self.calm_from
            )?,
        }
        write!(
            f,
            "; height {} at calm, honest nodes end at {}..={}",
            self.height_at_calm, self.final_min_height, self.final_max_height
        )
    }
}

#[cfg(test)]
mod tests {
    use trellis_contracts::{Genesis, Params};
    use trellis_proto::{Amount, Keypair};

    use super::*;

    fn world() -> (Ledger, Address) {
        let validator = Keypair::from_seed([1; 32]);
        let miner = Keypair::from_seed([2; 32]);
        let genesis = Genesis {
            chain_id: "invariants-test".into(),
            accounts: vec![(validator.address(), Amount(1_000)), (miner.address(), Amount(1_000))],
            validators: vec![(validator.public_key(), Amount(20_000))],
            miners: vec![(miner.public_key(), Amount(5_000))],
            params: Params::default(),
        };
        (Ledger::from_genesis(&genesis), miner.address())
    }

    #[test]
    fn a_miner_paid_for_a_round_it_was_slashed_in_is_caught() {
        let (ledger, miner) = world();
        let mut checker = Checker::new(vec![true], &ledger);
        let job = JobId(0);
        let tallied = Event::RoundTallied {
            job,
            round: 1,
            accepted: vec![],
            poisoners: vec![miner],
            withholders: vec![],
            freeloaders: vec![],
            unchecked: vec![],
        };
        assert_eq!(checker.check_books(0, 5, &ledger, &[tallied]), Ok(()));
        let paid_other_round = Event::Rewarded { job, round: 2, who: miner, amount: Amount(10), as_miner: true };
        assert_eq!(checker.check_books(0, 6, &ledger, &[paid_other_round]), Ok(()));
        let paid = Event::Rewarded { job, round: 1, who: miner, amount: Amount(10), as_miner: true };
        assert!(matches!(
            checker.check_books(0, 7, &ledger, &[paid]),
            Err(Violation::SlashedMinerPaid { round: 1, .. })
        ));
    }

    #[test]
    fn stake_growing_without_a_bond_is_caught() {
        let (ledger, miner) = world();
        let mut checker = Checker::new(vec![true], &ledger);
        // As if the last block had slashed 1,000 of the miner's 5,000, yet the state still holds 5,000.
        checker.books[0].miner_stake.insert(miner, 4_000);
        let bonded_500 = Event::Bonded { who: miner, role: Role::Miner, amount: Amount(500) };
        assert!(matches!(
            checker.check_books(0, 3, &ledger, &[bonded_500]),
            Err(Violation::StakeReturned { before: 4_000, after: 5_000, bonded: 500, .. })
        ));
        checker.books[0].miner_stake.insert(miner, 4_000);
        let bonded_1000 = Event::Bonded { who: miner, role: Role::Miner, amount: Amount(1_000) };
        assert_eq!(checker.check_books(0, 3, &ledger, &[bonded_1000]), Ok(()), "a bond explains the growth");
    }

    #[test]
    fn burns_must_be_fees_and_slashes() {
        let (ledger, _) = world();
        let mut checker = Checker::new(vec![true], &ledger);
        // Genesis burned nothing; an event claiming a fee burn that the supply does not show is a mismatch.
        let fee = Event::FeeBurned { payer: Address::default(), amount: Amount(1) };
        assert!(matches!(
            checker.check_books(0, 1, &ledger, &[fee]),
            Err(Violation::BurnMismatch { burned: 0, fees: 1, .. })
        ));
    }

    #[test]
    fn an_honest_double_sign_is_caught_and_a_byzantine_one_is_not_judged() {
        let (ledger, _) = world();
        let mut checker = Checker::new(vec![true, false], &ledger);
        let ctx = trellis_consensus::TrellisContext::new("invariants-test");
        let address = trellis_consensus::ValidatorAddress(Address([9; 20]));
        let height = trellis_consensus::BlockHeight(4);
        let round = arc_malachitebft_app_channel::app::types::core::Round::new(2);
        use arc_malachitebft_app_channel::app::types::core::Context as _;
        let for_block = ctx.new_prevote(height, round, NilOrVal::Val(BlockId(Hash([1; 32]))), address);
        let for_nil = ctx.new_prevote(height, round, NilOrVal::Nil, address);
        checker.on_signed_vote(1, &for_block);
        checker.on_signed_vote(1, &for_nil);
        checker.on_signed_vote(0, &for_block);
        checker.on_signed_vote(0, &for_block);
        assert!(checker.violation().is_none(), "the same vote twice is no double sign");
        checker.on_signed_vote(0, &for_nil);
        assert!(matches!(checker.violation(), Some(Violation::HonestDoubleSign { node: 0, height: 4, round: 2, .. })));
    }
}
