//! The ledger: the chain's rules (`contracts`) executed over the node's database.
//!
//! Building a block (proposer) and checking one (everyone else) run the same code: begin-block,
//! every transaction in order, end-block, then the state root. A proposer leaves out any
//! transaction that fails; a checker rejects a block in which any transaction fails, so every
//! committed transaction was applied. Execution only buffers writes ([`Executed`]); nothing
//! touches the database until [`Ledger::commit`] writes the block, its certificate, its events
//! and its state changes in one batch.

use std::path::Path;

use anyhow::Context as _;
use thiserror::Error;
use trellis_consensus::{Validator as ConsensusValidator, ValidatorSet as ConsensusValidatorSet};
use trellis_contracts::kv::Changes;
use trellis_contracts::state::{self, keys, Account};
use trellis_contracts::{state_root, BlockCtx, Chain, Event, Genesis, KvStore};
use trellis_proto::{Address, Block, BlockHeader, Hash, Height, SignedTx};

use crate::store::{Store, StoreError};

/// A block executed against the committed state, ready to commit.
#[derive(Debug, Clone)]
pub struct Executed {
    pub block: Block,
    pub changes: Changes,
    pub events: Vec<Event>,
}

/// Why a proposed or synced block is not a valid successor of the head.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum InvalidBlock {
    #[error("block is for chain '{got}', not '{expected}'")]
    WrongChain { expected: String, got: String },
    #[error("block height {got} does not follow the head {head}")]
    WrongHeight { head: u64, got: u64 },
    #[error("block parent {got} is not the head block {expected}")]
    WrongParent { expected: Hash, got: Hash },
    #[error("block time {got} ms is before its parent's {parent} ms")]
    TimeWentBack { parent: u64, got: u64 },
    #[error("block body: {0}")]
    Body(String),
    #[error("transaction {index} ({hash}) fails: {reason}")]
    FailingTx { index: usize, hash: Hash, reason: String },
    #[error("header state root {header} does not match the executed state {computed}")]
    StateRoot { header: Hash, computed: Hash },
    #[error("state machine error: {0}")]
    Execution(String),
}

/// What the head of the chain is.
#[derive(Debug, Clone)]
pub struct Head {
    pub height: Height,
    pub hash: Hash,
    pub time_ms: u64,
}

/// The chain's rules over the node's database.
pub struct Ledger {
    store: Store,
    chain: Chain,
}

impl Ledger {
    /// Opens the database under `data_dir`, writing `genesis` first when it is empty.
    pub fn open(data_dir: &Path, genesis: &Genesis) -> anyhow::Result<Self> {
        let store = Store::open(data_dir)?;
        let chain = Chain::new(genesis.chain_id.clone(), genesis.params.clone());
        let fresh = store.head()?.0 == 0 && store.pending_state().get(keys::SUPPLY).is_none();
        if fresh {
            let mut pending = store.pending_state();
            Chain::init_genesis(&mut pending, genesis).context("genesis is not valid")?;
            store.commit_genesis(pending.into_changes())?;
        }
        Ok(Self { store, chain })
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn params(&self) -> &trellis_contracts::Params {
        &self.chain.params
    }

    pub fn chain_id(&self) -> &str {
        &self.chain.chain_id
    }

    pub fn head(&self) -> Result<Head, StoreError> {
        let height = self.store.head()?;
        if height.0 == 0 {
            return Ok(Head { height, hash: Hash::ZERO, time_ms: 0 });
        }
        let block = self
            .store
            .block(height)?
            .ok_or(StoreError::Corrupt { what: "head block", reason: format!("block {height} missing") })?;
        Ok(Head { height, hash: block.hash(), time_ms: block.header.time_ms })
    }

    /// The account's next nonce in the committed state.
    pub fn next_nonce(&self, address: &Address) -> u64 {
        self.account(address).map(|a| a.nonce).unwrap_or(0)
    }

    pub fn account(&self, address: &Address) -> Option<Account> {
        let view = self.store.pending_state();
        state::read::<Account>(&view, &keys::account(address)).unwrap_or_else(|e| crate::store::fatal(e))
    }

    /// The validator set that signs the next height, in the engine's form.
    pub fn validator_set(&self) -> ConsensusValidatorSet {
        let view = self.store.pending_state();
        let set = self.chain.validator_set(&view).unwrap_or_else(|e| crate::store::fatal(e));
        let validators = set.validators.iter().filter_map(|v| ConsensusValidator::new(v.key, v.power)).collect();
        ConsensusValidatorSet::new(validators)
    }

    /// Builds the next block from `candidates` (in order), leaving out those that fail.
    pub fn build_block(&self, proposer: Address, time_ms: u64, candidates: Vec<SignedTx>) -> Result<Executed, InvalidBlock> {
        let head = self.head().map_err(|e| InvalidBlock::Execution(e.to_string()))?;
        let time_ms = time_ms.max(head.time_ms);
        let ctx = BlockCtx { height: head.height.0 + 1, time_ms, randomness: head.hash, proposer };
        let mut state = self.store.pending_state();
        let mut events = self.chain.begin_block(&mut state, &ctx).map_err(|e| InvalidBlock::Execution(e.to_string()))?;
        let mut txs = Vec::with_capacity(candidates.len());
        for tx in candidates {
            match self.chain.apply_tx(&mut state, &tx, &ctx) {
                Ok(tx_events) => {
                    events.extend(tx_events);
                    txs.push(tx);
                }
                Err(error) => tracing::debug!(target: "node::ledger", tx = %tx.hash(), %error, "left out of block"),
            }
        }
        let (end_events, _) = self.chain.end_block(&mut state, &ctx).map_err(|e| InvalidBlock::Execution(e.to_string()))?;
        events.extend(end_events);
        let header = BlockHeader {
            chain_id: self.chain.chain_id.clone(),
            height: Height(ctx.height),
            time_ms,
            parent: head.hash,
            tx_root: Block::compute_tx_root(&txs),
            state_root: state_root(&state),
            proposer,
        };
        Ok(Executed { block: Block { header, txs }, changes: state.into_changes(), events })
    }

    /// Checks that `block` is a valid successor of the head and executes it.
    pub fn execute(&self, block: Block) -> Result<Executed, InvalidBlock> {
        let header = &block.header;
        if header.chain_id != self.chain.chain_id {
            return Err(InvalidBlock::WrongChain { expected: self.chain.chain_id.clone(), got: header.chain_id.clone() });
        }
        let head = self.head().map_err(|e| InvalidBlock::Execution(e.to_string()))?;
        if header.height.0 != head.height.0 + 1 {
            return Err(InvalidBlock::WrongHeight { head: head.height.0, got: header.height.0 });
        }
        if header.parent != head.hash {
            return Err(InvalidBlock::WrongParent { expected: head.hash, got: header.parent });
        }
        if header.time_ms < head.time_ms {
            return Err(InvalidBlock::TimeWentBack { parent: head.time_ms, got: header.time_ms });
        }
        block.verify_body().map_err(|e| InvalidBlock::Body(e.to_string()))?;
        let ctx = BlockCtx { height: header.height.0, time_ms: header.time_ms, randomness: head.hash, proposer: header.proposer };
        let mut state = self.store.pending_state();
        let mut events = self.chain.begin_block(&mut state, &ctx).map_err(|e| InvalidBlock::Execution(e.to_string()))?;
        for (index, tx) in block.txs.iter().enumerate() {
            let tx_events = self.chain.apply_tx(&mut state, tx, &ctx).map_err(|error| InvalidBlock::FailingTx {
                index,
                hash: tx.hash(),
                reason: error.to_string(),
            })?;
            events.extend(tx_events);
        }
        let (end_events, _) = self.chain.end_block(&mut state, &ctx).map_err(|e| InvalidBlock::Execution(e.to_string()))?;
        events.extend(end_events);
        let computed = state_root(&state);
        if computed != header.state_root {
            return Err(InvalidBlock::StateRoot { header: header.state_root, computed });
        }
        let changes = state.into_changes();
        Ok(Executed { block, changes, events })
    }

    /// Writes an executed block with the certificate that decided it.
    pub fn commit(&self, executed: Executed, certificate: &[u8]) -> Result<(), StoreError> {
        let events = serde_json::to_vec(&executed.events).unwrap_or_else(|_| b"[]".to_vec());
        self.store.commit_block(&executed.block, certificate, &events, executed.changes)
    }
}
