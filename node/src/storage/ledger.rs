//! The ledger: the chain's rules (`contracts`) executed over the node's database.
//!
//! Building a block (proposer) and checking one (everyone else) run the same code
//! (`trellis_contracts::block`, which the seeded simulator runs too): begin-block, every
//! transaction in order, end-block, then the state root. A proposer leaves out any transaction
//! that fails; a checker rejects a block in which any transaction fails, so every committed
//! transaction was applied. Execution only buffers writes ([`Executed`]); nothing
//! touches the database until [`Ledger::commit`] writes the block, its certificate, its events
//! and its state changes in one batch.

use std::path::Path;

use anyhow::Context as _;
use trellis_consensus::{Validator as ConsensusValidator, ValidatorSet as ConsensusValidatorSet};
use trellis_contracts::kv::Changes;
use trellis_contracts::state::{self, keys, Account, BeaconOnion};
pub use trellis_contracts::InvalidBlock;
use trellis_contracts::{Chain, Event, Genesis, KvStore, Parent};
use trellis_proto::{Address, Block, Hash, Height, SignedTx};

use crate::storage::store::{Store, StoreError};

/// A block executed against the committed state, ready to commit.
#[derive(Debug, Clone)]
pub struct Executed {
    pub block: Block,
    pub changes: Changes,
    pub events: Vec<Event>,
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

    /// What the mempool needs to admit a transaction of `address`: its committed next nonce and
    /// balance.
    pub fn sender_account(&self, address: &Address) -> crate::mempool::SenderAccount {
        let account = self.account(address).unwrap_or_default();
        crate::mempool::SenderAccount { next_nonce: account.nonce, balance: account.balance.0 }
    }

    pub fn account(&self, address: &Address) -> Option<Account> {
        let view = self.store.pending_state();
        state::read::<Account>(&view, &keys::account(address)).unwrap_or_else(|e| crate::storage::store::fatal(e))
    }

    /// The validator set that signs the next height, in the engine's form, without the proposer
    /// draw of the validators jailed since the set was installed.
    pub fn validator_set(&self) -> ConsensusValidatorSet {
        let view = self.store.pending_state();
        let set = self.chain.validator_set(&view).unwrap_or_else(|e| crate::storage::store::fatal(e));
        let jailed = self.chain.jailed_among(&view, &set).unwrap_or_else(|e| crate::storage::store::fatal(e));
        let validators = set.validators.iter().filter_map(|v| ConsensusValidator::new(v.key, v.power)).collect();
        ConsensusValidatorSet::new(validators)
            .barring_proposers(&jailed.into_iter().map(trellis_consensus::ValidatorAddress).collect())
    }

    /// The chain keys of the validator set that signs the next height.
    pub fn validator_keys(&self) -> Vec<trellis_proto::PublicKey> {
        let view = self.store.pending_state();
        let set = self.chain.validator_set(&view).unwrap_or_else(|e| crate::storage::store::fatal(e));
        set.validators.iter().map(|v| v.key).collect()
    }

    /// The beacon onion the chain holds for `validator` (what its next proposal reveals under).
    pub fn beacon_onion(&self, validator: &Address) -> Option<BeaconOnion> {
        let view = self.store.pending_state();
        self.chain.beacon_onion(&view, validator).unwrap_or_else(|e| crate::storage::store::fatal(e))
    }

    fn parent(&self) -> Result<Parent, InvalidBlock> {
        let head = self.head().map_err(|e| InvalidBlock::LocalStorage(e.to_string()))?;
        Ok(Parent { height: head.height, hash: head.hash, time_ms: head.time_ms })
    }

    /// Builds the next block from `candidates` (in order), leaving out those that fail; returns
    /// them too, for the mempool to evict.
    pub fn build_block(
        &self,
        proposer: Address,
        time_ms: u64,
        beacon_reveal: Hash,
        candidates: Vec<SignedTx>,
    ) -> Result<(Executed, Vec<SignedTx>), InvalidBlock> {
        let mut state = self.store.pending_state();
        let built =
            self.chain.build_block(&mut state, &self.parent()?, proposer, time_ms, beacon_reveal, candidates)?;
        for (tx, error) in &built.left_out {
            tracing::debug!(target: "node::ledger", tx = %tx.hash(), %error, "left out of block");
        }
        let left_out = built.left_out.into_iter().map(|(tx, _)| tx).collect();
        Ok((Executed { block: built.block, changes: state.into_changes(), events: built.events }, left_out))
    }

    /// Checks that `block` is a valid successor of the head and executes it.
    pub fn execute(&self, block: Block) -> Result<Executed, InvalidBlock> {
        let mut state = self.store.pending_state();
        let events = self.chain.execute_block(&mut state, &self.parent()?, &block)?;
        Ok(Executed { block, changes: state.into_changes(), events })
    }

    /// Writes an executed block with the certificate that decided it.
    pub fn commit(&self, executed: Executed, certificate: &[u8]) -> Result<(), StoreError> {
        let events = serde_json::to_vec(&executed.events)
            .map_err(|e| StoreError::Encode { what: "the block's events", reason: e.to_string() })?;
        self.store.commit_block(&executed.block, certificate, &events, executed.changes)
    }
}
