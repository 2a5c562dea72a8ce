//! Blocks: building the next one from candidate transactions (a proposer) and checking one
//! (everyone else). Both run the same steps: begin-block, every transaction in order,
//! end-block, then the state root, updated from the keys the block changed
//! ([`crate::kv::StateDigest`]).
//!
//! Guarantees: a built block holds only transactions that could be included, in order: each
//! applied, or failed in its action and paid its fee (`Chain::include_tx`); a checked block is
//! refused if any of its transactions cannot be included (nonce, fee), so every committed
//! transaction paid its fee; both write only to the state handed in (an overlay the caller commits or drops),
//! and a refused block writes nothing to it.
//! The node's ledger and the seeded simulator call these, so the simulator tests the node's rules.

use thiserror::Error;
use trellis_proto::block::BlockError;
use trellis_proto::{Address, Block, BlockHeader, Hash, Height, SignedTx};

use trellis_protocol::beacon;

use crate::exec::{BlockCtx, Chain, Event};
use crate::kv::{apply_with_digest, digest_after, KvStore, Overlay, StateDigest};
use crate::state::{keys, read, write, BeaconOnion};
use crate::TxError;

/// How far ahead of a validator's clock a proposed block's time may be.
pub const MAX_CLOCK_DRIFT_MS: u64 = 2_000;

/// The block a new one builds on: the head of the chain (height 0, zero hash, time 0 before
/// the first block).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parent {
    pub height: Height,
    pub hash: Hash,
    pub time_ms: u64,
}

/// Why a proposed or synced block is not a valid successor of its parent.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum InvalidBlock {
    #[error("block is for chain '{got}', not '{expected}'")]
    WrongChain { expected: String, got: String },
    #[error("block height {got} does not follow the head {head}")]
    WrongHeight { head: Height, got: Height },
    #[error("block parent {got} is not the head block {expected}")]
    WrongParent { expected: Hash, got: Hash },
    #[error("block time {got} ms is before its parent's {parent} ms")]
    TimeWentBack { parent: u64, got: u64 },
    #[error("block body: {0}")]
    Body(#[from] BlockError),
    #[error("transaction {index} ({hash}) fails: {reason}")]
    FailingTx { index: usize, hash: Hash, reason: TxError },
    #[error("header state root {header} does not match the executed state {computed}")]
    StateRoot { header: Hash, computed: Hash },
    #[error("block time {got} ms is more than {drift} ms ahead of this node's clock ({now} ms)")]
    TimeTooFarAhead { got: u64, now: u64, drift: u64 },
    #[error("beacon reveal {got} is not the next layer of {proposer}'s onion")]
    WrongBeaconReveal { proposer: Address, got: Hash },
    /// The block's begin or end (rewards, round transitions, settlement) fails.
    #[error("state machine error: {0}")]
    Execution(TxError),
    /// A state record the block reads does not decode: this node's state is damaged.
    #[error(transparent)]
    CorruptState(#[from] crate::state::CorruptState),
    /// The stored state digest does not decode: this node's state is damaged.
    #[error(transparent)]
    CorruptDigest(#[from] crate::kv::CorruptDigest),
    /// This node cannot read its own chain head (the block is not at fault).
    #[error("this node's storage: {0}")]
    LocalStorage(String),
}

/// A block built by [`Chain::build_block`].
#[derive(Debug, Clone)]
pub struct Built {
    pub block: Block,
    pub events: Vec<Event>,
    /// Candidates that failed, with why, in the order they were tried.
    pub left_out: Vec<(SignedTx, TxError)>,
}

impl Chain {
    /// Opens the block after `parent`: checks the proposer's beacon reveal against its onion,
    /// peels that layer off, mixes the reveal into the beacon and returns the block's context,
    /// whose randomness is the new beacon. A proposer without an active onion reveals
    /// `Hash::ZERO` (it mixes in nothing it could choose).
    fn open_block<S: KvStore + ?Sized>(
        &self,
        state: &mut S,
        parent: &Parent,
        proposer: Address,
        time_ms: u64,
        reveal: Hash,
    ) -> Result<BlockCtx, InvalidBlock> {
        let height = parent.height.after(1);
        let wrong = InvalidBlock::WrongBeaconReveal { proposer, got: reveal };
        match read::<BeaconOnion>(state, &keys::onion(&proposer))? {
            Some(mut onion) if onion.active_at(height) => {
                if beacon::step(&reveal) != onion.held {
                    return Err(wrong);
                }
                onion.held = reveal;
                onion.remaining -= 1;
                write(state, keys::onion(&proposer), &onion);
            }
            _ if reveal != Hash::ZERO => return Err(wrong),
            _ => {}
        }
        let previous = read::<Hash>(state, keys::BEACON)?.unwrap_or(Hash::ZERO);
        let randomness = beacon::mix(&previous, height.0, &proposer, &reveal);
        write(state, keys::BEACON.to_vec(), &randomness);
        Ok(BlockCtx { height, time_ms, randomness, proposer })
    }

    /// The onion `validator` committed, if any: what its next block must reveal under.
    pub fn beacon_onion<S: KvStore + ?Sized>(
        &self,
        state: &S,
        validator: &Address,
    ) -> Result<Option<BeaconOnion>, TxError> {
        Ok(read(state, &keys::onion(validator))?)
    }

    /// Builds the block after `parent` from `candidates`, in order, leaving out those that fail.
    /// `time_ms` is raised to the parent's time if it is earlier; `beacon_reveal` is the
    /// proposer's next onion layer ([`Chain::beacon_onion`]), or `Hash::ZERO` without one.
    pub fn build_block<S: KvStore + ?Sized>(
        &self,
        state: &mut S,
        parent: &Parent,
        proposer: Address,
        time_ms: u64,
        beacon_reveal: Hash,
        candidates: impl IntoIterator<Item = SignedTx>,
    ) -> Result<Built, InvalidBlock> {
        let time_ms = time_ms.max(parent.time_ms);
        let mut overlay = Overlay::new(&*state);
        let ctx = self.open_block(&mut overlay, parent, proposer, time_ms, beacon_reveal)?;
        let mut events = self.begin_block(&mut overlay, &ctx).map_err(InvalidBlock::Execution)?;
        let mut txs = Vec::new();
        let mut left_out = Vec::new();
        for tx in candidates {
            match self.include_tx(&mut overlay, &tx, &ctx) {
                Ok(tx_events) => {
                    events.extend(tx_events);
                    txs.push(tx);
                }
                Err(error) => left_out.push((tx, error)),
            }
        }
        let (end_events, _) = self.end_block(&mut overlay, &ctx).map_err(InvalidBlock::Execution)?;
        events.extend(end_events);
        let changes = overlay.into_changes();
        let digest = digested(state, &changes)?;
        apply_with_digest(state, changes, &digest);
        let header = BlockHeader {
            chain_id: self.chain_id.clone(),
            height: ctx.height,
            time_ms,
            parent: parent.hash,
            tx_root: Block::compute_tx_root(&txs),
            state_root: digest.root(),
            proposer,
            beacon_reveal,
        };
        Ok(Built { block: Block { header, txs }, events, left_out })
    }

    /// Whether `header` can follow `parent`: chain, height, parent hash, time.
    pub fn check_successor(&self, parent: &Parent, header: &BlockHeader) -> Result<(), InvalidBlock> {
        if header.chain_id != self.chain_id {
            return Err(InvalidBlock::WrongChain { expected: self.chain_id.clone(), got: header.chain_id.clone() });
        }
        if header.height != parent.height.after(1) {
            return Err(InvalidBlock::WrongHeight { head: parent.height, got: header.height });
        }
        if header.parent != parent.hash {
            return Err(InvalidBlock::WrongParent { expected: parent.hash, got: header.parent });
        }
        if header.time_ms < parent.time_ms {
            return Err(InvalidBlock::TimeWentBack { parent: parent.time_ms, got: header.time_ms });
        }
        Ok(())
    }

    /// Whether a *proposed* header's time is plausible on this node's clock `now_ms`: at most
    /// [`MAX_CLOCK_DRIFT_MS`] ahead (a quorum of honest clocks thus bounds every committed time
    /// from above; [`Chain::check_successor`] bounds it from below by the parent's). Decided
    /// blocks received by sync are not checked: a quorum already judged them.
    pub fn check_proposal_time(header: &BlockHeader, now_ms: u64) -> Result<(), InvalidBlock> {
        if header.time_ms > now_ms.saturating_add(MAX_CLOCK_DRIFT_MS) {
            return Err(InvalidBlock::TimeTooFarAhead { got: header.time_ms, now: now_ms, drift: MAX_CLOCK_DRIFT_MS });
        }
        Ok(())
    }

    /// Checks `block` against `parent` (header, transaction root and signatures) and executes it.
    pub fn execute_block<S: KvStore + ?Sized>(
        &self,
        state: &mut S,
        parent: &Parent,
        block: &Block,
    ) -> Result<Vec<Event>, InvalidBlock> {
        self.check_successor(parent, &block.header)?;
        block.verify_body()?;
        self.execute_checked_block(state, parent, block)
    }

    /// Executes a block whose header and body a caller has already checked
    /// ([`Chain::check_successor`], `Block::verify_body`): every transaction must apply, and the
    /// state root must be the header's.
    pub fn execute_checked_block<S: KvStore + ?Sized>(
        &self,
        state: &mut S,
        parent: &Parent,
        block: &Block,
    ) -> Result<Vec<Event>, InvalidBlock> {
        let header = &block.header;
        let mut overlay = Overlay::new(&*state);
        let ctx = self.open_block(&mut overlay, parent, header.proposer, header.time_ms, header.beacon_reveal)?;
        let mut events = self.begin_block(&mut overlay, &ctx).map_err(InvalidBlock::Execution)?;
        for (index, tx) in block.txs.iter().enumerate() {
            let tx_events = self.include_tx(&mut overlay, tx, &ctx).map_err(|error| InvalidBlock::FailingTx {
                index,
                hash: tx.hash(),
                reason: error,
            })?;
            events.extend(tx_events);
        }
        let (end_events, _) = self.end_block(&mut overlay, &ctx).map_err(InvalidBlock::Execution)?;
        events.extend(end_events);
        let changes = overlay.into_changes();
        let digest = digested(state, &changes)?;
        let computed = digest.root();
        if computed != header.state_root {
            return Err(InvalidBlock::StateRoot { header: header.state_root, computed });
        }
        apply_with_digest(state, changes, &digest);
        Ok(events)
    }
}

/// The state digest after a block's `changes` (the state root is its root).
fn digested<S: KvStore + ?Sized>(state: &S, changes: &crate::kv::Changes) -> Result<StateDigest, InvalidBlock> {
    Ok(digest_after(state, changes)?)
}

#[cfg(test)]
mod tests {
    use trellis_proto::{Amount, Keypair, Transaction, TxKind};

    use super::*;
    use crate::kv::{apply_changes, Overlay};
    use crate::{Genesis, MemoryKv, Params};

    fn chain_with_one_account() -> (Chain, MemoryKv, Keypair) {
        let rich = Keypair::from_seed([3; 32]);
        let validator = Keypair::from_seed([4; 32]);
        let genesis = Genesis {
            chain_id: "block-test".into(),
            accounts: vec![(rich.address(), Amount(1_000_000)), (validator.address(), Amount(1_000_000))],
            validators: vec![(validator.public_key(), Amount(20_000))],
            miners: Vec::new(),
            params: Params::default(),
        };
        let mut kv = MemoryKv::new();
        let chain = Chain::init_genesis(&mut kv, &genesis).unwrap();
        (chain, kv, rich)
    }

    fn transfer(from: &Keypair, nonce: u64, amount: u64) -> SignedTx {
        let kind = TxKind::Transfer { to: Address([9; 20]), amount: Amount(amount) };
        Transaction { sender: from.public_key(), nonce, fee: Amount(1), kind }.sign("block-test", from)
    }

    #[test]
    fn a_proposed_time_may_run_ahead_of_the_local_clock_by_the_drift_only() {
        let (chain, kv, _) = chain_with_one_account();
        let genesis = Parent { height: Height(0), hash: Hash::ZERO, time_ms: 0 };
        let mut header = chain
            .build_block(&mut Overlay::new(&kv), &genesis, Address([1; 20]), 10_000, Hash::ZERO, Vec::new())
            .unwrap()
            .block
            .header;
        assert_eq!(Chain::check_proposal_time(&header, 10_000 - MAX_CLOCK_DRIFT_MS), Ok(()));
        header.time_ms = 10_001 + MAX_CLOCK_DRIFT_MS;
        assert!(matches!(Chain::check_proposal_time(&header, 10_000), Err(InvalidBlock::TimeTooFarAhead { .. })));
        header.time_ms = u64::MAX;
        assert!(Chain::check_proposal_time(&header, u64::MAX - 1).is_ok(), "no overflow at the end of time");
        let mut early = header.clone();
        early.time_ms = 5;
        let parent = Parent { height: Height(0), hash: Hash::ZERO, time_ms: 6 };
        assert!(matches!(chain.check_successor(&parent, &early), Err(InvalidBlock::TimeWentBack { .. })));
    }

    #[test]
    fn a_built_block_checks_out_and_a_tampered_one_does_not() {
        let (chain, mut kv, rich) = chain_with_one_account();
        let genesis = Parent { height: Height(0), hash: Hash::ZERO, time_ms: 0 };
        // The second candidate reuses nonce 0 and fails: it is left out, with its reason.
        let candidates = vec![transfer(&rich, 0, 10), transfer(&rich, 0, 20), transfer(&rich, 1, 30)];
        let mut overlay = Overlay::new(&kv);
        let built = chain.build_block(&mut overlay, &genesis, Address([1; 20]), 5, Hash::ZERO, candidates).unwrap();
        let built_changes = overlay.into_changes();
        assert_eq!(built.block.txs.len(), 2);
        assert_eq!(built.left_out.len(), 1);

        let mut check = Overlay::new(&kv);
        let events = chain.execute_block(&mut check, &genesis, &built.block).unwrap();
        assert_eq!(events.len(), built.events.len());
        assert_eq!(check.into_changes(), built_changes, "checking writes what building wrote");

        let mut wrong_root = built.block.clone();
        wrong_root.header.state_root = Hash([1; 32]);
        assert!(matches!(
            chain.execute_block(&mut Overlay::new(&kv), &genesis, &wrong_root),
            Err(InvalidBlock::StateRoot { .. })
        ));
        let mut dropped_tx = built.block.clone();
        dropped_tx.txs.remove(0);
        assert!(matches!(
            chain.execute_block(&mut Overlay::new(&kv), &genesis, &dropped_tx),
            Err(InvalidBlock::Body(_))
        ));
        let mut late = built.block.clone();
        late.header.height = Height(2);
        assert!(matches!(
            chain.execute_block(&mut Overlay::new(&kv), &genesis, &late),
            Err(InvalidBlock::WrongHeight { head: Height(0), got: Height(2) })
        ));

        // A block whose transaction fails is refused as a whole.
        apply_changes(&mut kv, built_changes);
        let next = Parent { height: Height(1), hash: built.block.hash(), time_ms: 5 };
        let mut replayed = chain
            .build_block(&mut Overlay::new(&kv), &next, Address([1; 20]), 6, Hash::ZERO, Vec::new())
            .unwrap()
            .block;
        replayed.txs = vec![transfer(&rich, 0, 10)];
        replayed.header.tx_root = Block::compute_tx_root(&replayed.txs);
        let refused = chain.execute_block(&mut Overlay::new(&kv), &next, &replayed);
        assert!(matches!(refused, Err(InvalidBlock::FailingTx { index: 0, .. })), "{refused:?}");
    }

    #[test]
    fn a_transaction_whose_action_fails_is_included_and_pays_its_fee() {
        let (chain, kv, rich) = chain_with_one_account();
        let genesis = Parent { height: Height(0), hash: Hash::ZERO, time_ms: 0 };
        let before: crate::state::Account = read(&kv, &keys::account(&rich.address())).unwrap().unwrap();
        // More than the account holds: the transfer fails, its fee does not.
        let failing = transfer(&rich, 0, 10_000_000);
        let mut overlay = Overlay::new(&kv);
        let built = chain
            .build_block(
                &mut overlay,
                &genesis,
                Address([1; 20]),
                5,
                Hash::ZERO,
                vec![failing.clone(), transfer(&rich, 1, 7)],
            )
            .unwrap();
        assert_eq!(built.block.txs, vec![failing.clone(), transfer(&rich, 1, 7)], "both are included");
        assert!(built.left_out.is_empty());
        let failed: Vec<_> = built.events.iter().filter(|e| matches!(e, Event::TxFailed { .. })).collect();
        assert!(
            matches!(failed.as_slice(), [Event::TxFailed { tx, reason, .. }] if *tx == failing.hash() && reason.contains("insufficient balance")),
            "{failed:?}"
        );
        let after: crate::state::Account = read(&overlay, &keys::account(&rich.address())).unwrap().unwrap();
        assert_eq!(after.nonce, 2, "the failed transaction used its nonce");
        assert_eq!(after.balance.0, before.balance.0 - 1 - 1 - 7, "two fees and the one transfer that applied");
        let changes = overlay.into_changes();
        let mut check = Overlay::new(&kv);
        chain.execute_block(&mut check, &genesis, &built.block).unwrap();
        assert_eq!(check.into_changes(), changes, "validators charge the failure alike");
    }
}
