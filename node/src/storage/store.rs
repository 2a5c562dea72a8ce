//! Chain storage on RocksDB.
//!
//! Column families: `blocks` (height → block), `block_index` (block hash → height), `txs`
//! (transaction hash → height ‖ index), `state` (the contracts' key-value state), `certificates`
//! (height → the commit certificate that decided the block), `events` (height → the block's
//! events as JSON), `undecided` (blocks proposed or received but not yet decided, so a restarted
//! validator re-proposes the very block it signed) and `meta` (head height). A block, its
//! certificate, events, index entries, state changes and the new head are written in **one atomic
//! write batch**, so a node killed at any moment restarts with either all of a block or none of
//! it, and the state always matches the head.
//!
//! A failed read of the local database is a storage fault, not bad input: the node cannot go on
//! safely without its state, so it stops with the error (see [`fatal`]).

use std::collections::BTreeMap;
use std::path::Path;

use rocksdb::{ColumnFamilyDescriptor, Direction, IteratorMode, Options, WriteBatch, WriteOptions, DB};
use thiserror::Error;
use trellis_contracts::kv::Changes;
use trellis_contracts::KvStore;
use trellis_proto::{decode, Block, Encode, Hash, Height, SignedTx};

const CF_BLOCKS: &str = "blocks";
const CF_BLOCK_INDEX: &str = "block_index";
const CF_TXS: &str = "txs";
const CF_STATE: &str = "state";
const CF_META: &str = "meta";
const CF_CERTIFICATES: &str = "certificates";
const CF_EVENTS: &str = "events";
const CF_UNDECIDED: &str = "undecided";
const ALL_FAMILIES: [&str; 8] =
    [CF_BLOCKS, CF_BLOCK_INDEX, CF_TXS, CF_STATE, CF_META, CF_CERTIFICATES, CF_EVENTS, CF_UNDECIDED];
const HEAD_KEY: &[u8] = b"head";

#[derive(Debug, Error)]
pub enum StoreError {
    #[error("database at {path}: {source}")]
    Open { path: String, source: rocksdb::Error },
    #[error("database write failed: {0}")]
    Write(rocksdb::Error),
    #[error("stored {what} is corrupt: {reason}")]
    Corrupt { what: &'static str, reason: String },
    #[error("block {got} does not extend the head {head}")]
    NotNext { head: u64, got: u64 },
    /// A record could not be encoded for writing: nothing was written.
    #[error("cannot encode {what} for the database: {reason}")]
    Encode { what: &'static str, reason: String },
}

/// Stops the process on a storage read failure (see the module comment).
pub fn fatal(error: impl std::fmt::Display) -> ! {
    tracing::error!(target: "node::store", %error, "storage failure; stopping to protect the chain state");
    eprintln!("fatal storage error: {error}");
    std::process::exit(70)
}

/// The node's database.
pub struct Store {
    db: DB,
}

impl Store {
    /// Opens (or creates) the database at `path`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let mut options = Options::default();
        options.create_if_missing(true);
        options.create_missing_column_families(true);
        let families = ALL_FAMILIES.into_iter().map(|name| ColumnFamilyDescriptor::new(name, Options::default()));
        let db = DB::open_cf_descriptors(&options, path, families)
            .map_err(|source| StoreError::Open { path: path.display().to_string(), source })?;
        Ok(Self { db })
    }

    fn cf(&self, name: &str) -> &rocksdb::ColumnFamily {
        // The families are created at open; a missing one is a programming error.
        self.db.cf_handle(name).unwrap_or_else(|| fatal(format!("column family {name} missing")))
    }

    fn get(&self, cf: &str, key: &[u8]) -> Option<Vec<u8>> {
        self.db.get_cf(self.cf(cf), key).unwrap_or_else(|e| fatal(e))
    }

    /// The height of the last committed block (0 before the first).
    pub fn head(&self) -> Result<Height, StoreError> {
        match self.get(CF_META, HEAD_KEY) {
            None => Ok(Height(0)),
            Some(bytes) => decode::<u64>(&bytes)
                .map(Height)
                .map_err(|e| StoreError::Corrupt { what: "head", reason: e.to_string() }),
        }
    }

    pub fn block(&self, height: Height) -> Result<Option<Block>, StoreError> {
        self.get(CF_BLOCKS, &height.0.to_be_bytes())
            .map(|bytes| decode(&bytes).map_err(|e| StoreError::Corrupt { what: "block", reason: e.to_string() }))
            .transpose()
    }

    pub fn block_by_hash(&self, hash: &Hash) -> Result<Option<Block>, StoreError> {
        match self.get(CF_BLOCK_INDEX, &hash.0) {
            None => Ok(None),
            Some(bytes) => {
                let height = decode::<u64>(&bytes)
                    .map_err(|e| StoreError::Corrupt { what: "block index", reason: e.to_string() })?;
                self.block(Height(height))
            }
        }
    }

    /// A committed transaction, with the height and position of its block.
    pub fn tx(&self, hash: &Hash) -> Result<Option<(Height, u32, SignedTx)>, StoreError> {
        let Some(bytes) = self.get(CF_TXS, &hash.0) else { return Ok(None) };
        let (height, index): (u64, u32) = decode::<[u8; 12]>(&bytes)
            .map(|b| {
                (
                    u64::from_be_bytes(b[..8].try_into().expect("8 bytes")),
                    u32::from_be_bytes(b[8..].try_into().expect("4 bytes")),
                )
            }) // ok: slices of a 12-byte array
            .map_err(|e| StoreError::Corrupt { what: "tx index", reason: e.to_string() })?;
        let block = self
            .block(Height(height))?
            .ok_or(StoreError::Corrupt { what: "tx index", reason: "block missing".into() })?;
        let tx = block
            .txs
            .get(index as usize)
            .cloned()
            .ok_or(StoreError::Corrupt { what: "tx index", reason: "index out of range".into() })?;
        Ok(Some((Height(height), index, tx)))
    }

    /// A view of the committed state that buffers writes, for executing a block.
    pub fn pending_state(&self) -> PendingState<'_> {
        PendingState { store: self, changes: BTreeMap::new() }
    }

    /// Writes genesis state changes (height 0, no block) atomically.
    pub fn commit_genesis(&self, changes: Changes) -> Result<(), StoreError> {
        let mut batch = WriteBatch::default();
        self.stage_state(&mut batch, changes);
        batch.put_cf(self.cf(CF_META), HEAD_KEY, 0u64.to_bytes());
        self.db.write(batch).map_err(StoreError::Write)
    }

    /// The encoded commit certificate of the block at `height`.
    pub fn certificate(&self, height: Height) -> Option<Vec<u8>> {
        self.get(CF_CERTIFICATES, &height.0.to_be_bytes())
    }

    /// The events of the block at `height`, as JSON.
    pub fn events(&self, height: Height) -> Option<Vec<u8>> {
        self.get(CF_EVENTS, &height.0.to_be_bytes())
    }

    /// Remembers a block proposed (by us, `round` = `Some`) or received for `height`, until
    /// that height is decided.
    pub fn put_undecided(&self, block: &Block, round: Option<u32>) -> Result<(), StoreError> {
        let height = block.header.height.0;
        let mut batch = WriteBatch::default();
        let cf = self.cf(CF_UNDECIDED);
        batch.put_cf(cf, undecided_key(height, b'b', &block.hash().0), block.to_bytes());
        let Some(round) = round else { return self.db.write(batch).map_err(StoreError::Write) };
        batch.put_cf(cf, undecided_key(height, b'r', &round.to_be_bytes()), block.hash().0);
        // Our own proposal reaches the disk before anyone sees it: after a power loss, the
        // restarted node re-proposes this block; a different one for the same round would be a
        // double proposal, which costs 20% of the bond. One fsync per own proposal.
        let mut durable = WriteOptions::default();
        durable.set_sync(true);
        self.db.write_opt(batch, &durable).map_err(StoreError::Write)
    }

    /// An undecided block of `height` by hash.
    pub fn undecided(&self, height: Height, hash: &Hash) -> Result<Option<Block>, StoreError> {
        self.get(CF_UNDECIDED, &undecided_key(height.0, b'b', &hash.0))
            .map(|bytes| {
                decode(&bytes).map_err(|e| StoreError::Corrupt { what: "undecided block", reason: e.to_string() })
            })
            .transpose()
    }

    /// The block this node proposed at (height, round), if it did.
    pub fn proposed(&self, height: Height, round: u32) -> Result<Option<Block>, StoreError> {
        let Some(hash) = self.get(CF_UNDECIDED, &undecided_key(height.0, b'r', &round.to_be_bytes())) else {
            return Ok(None);
        };
        let hash: [u8; 32] = hash
            .try_into()
            .map_err(|_| StoreError::Corrupt { what: "proposed block index", reason: "not 32 bytes".into() })?;
        self.undecided(height, &Hash(hash))
    }

    /// Commits `block` (which must be the head's successor), the certificate that decided it,
    /// its events and its state changes atomically, and forgets the height's undecided blocks.
    pub fn commit_block(
        &self,
        block: &Block,
        certificate: &[u8],
        events: &[u8],
        changes: Changes,
    ) -> Result<(), StoreError> {
        let head = self.head()?;
        if block.header.height.0 != head.0 + 1 {
            return Err(StoreError::NotNext { head: head.0, got: block.header.height.0 });
        }
        let height = block.header.height.0;
        let mut batch = WriteBatch::default();
        batch.put_cf(self.cf(CF_BLOCKS), height.to_be_bytes(), block.to_bytes());
        batch.put_cf(self.cf(CF_BLOCK_INDEX), block.hash().0, height.to_bytes());
        for (index, tx) in block.txs.iter().enumerate() {
            let mut position = [0u8; 12];
            position[..8].copy_from_slice(&height.to_be_bytes());
            position[8..].copy_from_slice(&(index as u32).to_be_bytes());
            batch.put_cf(self.cf(CF_TXS), tx.hash().0, position);
        }
        self.stage_state(&mut batch, changes);
        batch.put_cf(self.cf(CF_CERTIFICATES), height.to_be_bytes(), certificate);
        batch.put_cf(self.cf(CF_EVENTS), height.to_be_bytes(), events);
        batch.delete_range_cf(self.cf(CF_UNDECIDED), 0u64.to_be_bytes(), (height + 1).to_be_bytes());
        batch.put_cf(self.cf(CF_META), HEAD_KEY, height.to_bytes());
        self.db.write(batch).map_err(StoreError::Write)
    }

    fn stage_state(&self, batch: &mut WriteBatch, changes: Changes) {
        let cf = self.cf(CF_STATE);
        for (key, change) in changes {
            match change {
                Some(value) => batch.put_cf(cf, key, value),
                None => batch.delete_cf(cf, key),
            }
        }
    }

    fn scan_state(&self, prefix: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
        let iter = self.db.iterator_cf(self.cf(CF_STATE), IteratorMode::From(prefix, Direction::Forward));
        let mut out = Vec::new();
        for item in iter {
            let (key, value) = item.unwrap_or_else(|e| fatal(e));
            if !key.starts_with(prefix) {
                break;
            }
            out.push((key.to_vec(), value.to_vec()));
        }
        out
    }
}

fn undecided_key(height: u64, kind: u8, rest: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(9 + rest.len());
    key.extend_from_slice(&height.to_be_bytes());
    key.push(kind);
    key.extend_from_slice(rest);
    key
}

/// The committed state plus buffered writes. Reads see the buffer first; the buffer becomes the
/// block's state changes.
pub struct PendingState<'a> {
    store: &'a Store,
    changes: Changes,
}

impl PendingState<'_> {
    pub fn into_changes(self) -> Changes {
        self.changes
    }
}

impl KvStore for PendingState<'_> {
    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        match self.changes.get(key) {
            Some(change) => change.clone(),
            None => self.store.get(CF_STATE, key),
        }
    }

    fn put(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.changes.insert(key, Some(value));
    }

    fn delete(&mut self, key: &[u8]) {
        self.changes.insert(key.to_vec(), None);
    }

    fn scan_prefix(&self, prefix: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
        let mut merged: BTreeMap<Vec<u8>, Vec<u8>> = self.store.scan_state(prefix).into_iter().collect();
        for (key, change) in self.changes.range(prefix.to_vec()..).take_while(|(k, _)| k.starts_with(prefix)) {
            match change {
                Some(value) => merged.insert(key.clone(), value.clone()),
                None => merged.remove(key),
            };
        }
        merged.into_iter().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use trellis_contracts::{recompute_state_root, state_root, BlockCtx, Chain, Genesis, MemoryKv, Params};
    use trellis_proto::{Amount, BlockHeader, Keypair, Transaction, TxKind};

    const CHAIN: &str = "store-test";

    fn genesis(validator: &Keypair, user: &Keypair) -> Genesis {
        Genesis {
            chain_id: CHAIN.into(),
            accounts: vec![(user.address(), trellis_proto::Amount(1_000_000))],
            validators: vec![(validator.public_key(), trellis_proto::Amount(20_000))],
            miners: vec![],
            params: Params::default(),
        }
    }

    /// Executes `txs` on the store's state as block `height` and returns the block and changes.
    fn build(
        store: &Store,
        chain: &Chain,
        height: u64,
        parent: Hash,
        proposer: &Keypair,
        txs: Vec<SignedTx>,
    ) -> (Block, Changes) {
        let base = store.pending_state();
        let mut overlay = trellis_contracts::kv::Overlay::new(&base);
        let ctx = BlockCtx {
            height: Height(height),
            time_ms: height * 1000,
            randomness: parent,
            proposer: proposer.address(),
        };
        chain.begin_block(&mut overlay, &ctx).unwrap();
        for tx in &txs {
            chain.apply_tx(&mut overlay, tx, &ctx).unwrap();
        }
        chain.end_block(&mut overlay, &ctx).unwrap();
        let changes = overlay.into_changes();
        let mut state = store.pending_state();
        let root = trellis_contracts::kv::apply_changes_digested(&mut state, changes).unwrap();
        let header = BlockHeader {
            chain_id: CHAIN.into(),
            height: Height(height),
            time_ms: ctx.time_ms,
            parent,
            tx_root: Block::compute_tx_root(&txs),
            state_root: root,
            proposer: proposer.address(),
            beacon_reveal: Hash::ZERO,
        };
        (Block { header, txs }, state.into_changes())
    }

    #[test]
    fn blocks_and_state_survive_a_reopen_and_match_an_in_memory_replay() {
        let dir = std::env::temp_dir().join(format!("trellis-store-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let validator = Keypair::from_seed([1; 32]);
        let user = Keypair::from_seed([2; 32]);
        let genesis = genesis(&validator, &user);
        let mut memory = MemoryKv::new();
        let chain = Chain::init_genesis(&mut memory, &genesis).unwrap();
        let mut committed_txs = Vec::new();
        let head_hash;
        {
            let store = Store::open(&dir).unwrap();
            let mut pending = store.pending_state();
            Chain::init_genesis(&mut pending, &genesis).unwrap();
            store.commit_genesis(pending.into_changes()).unwrap();
            assert_eq!(state_root(&store.pending_state()).unwrap(), recompute_state_root(&memory));
            assert_eq!(state_root(&store.pending_state()), state_root(&memory));
            let mut parent = Hash::ZERO;
            for height in 1..=5u64 {
                let tx = Transaction {
                    sender: user.public_key(),
                    nonce: height - 1,
                    fee: Amount(1),
                    kind: TxKind::Transfer { to: validator.address(), amount: Amount(10 * height) },
                }
                .sign(CHAIN, &user);
                committed_txs.push(tx.hash());
                let (block, changes) = build(&store, &chain, height, parent, &validator, vec![tx]);
                parent = block.hash();
                store.commit_block(&block, b"cert", b"[]", changes).unwrap();
                // The same block built on the in-memory store reaches the same root.
                let memory_changes = {
                    let mut overlay = trellis_contracts::kv::Overlay::new(&memory);
                    let ctx = BlockCtx {
                        height: Height(height),
                        time_ms: height * 1000,
                        randomness: block.header.parent,
                        proposer: validator.address(),
                    };
                    chain.begin_block(&mut overlay, &ctx).unwrap();
                    chain.apply_tx(&mut overlay, &block.txs[0], &ctx).unwrap();
                    chain.end_block(&mut overlay, &ctx).unwrap();
                    overlay.into_changes()
                };
                let root = trellis_contracts::kv::apply_changes_digested(&mut memory, memory_changes).unwrap();
                assert_eq!(block.header.state_root, root, "height {height}");
                assert_eq!(root, recompute_state_root(&memory), "height {height}");
            }
            // Out-of-order commits are refused.
            let (stale, changes) = build(&store, &chain, 3, parent, &validator, vec![]);
            assert!(matches!(
                store.commit_block(&stale, b"", b"", changes),
                Err(StoreError::NotNext { head: 5, got: 3 })
            ));
            head_hash = parent;
        }
        let store = Store::open(&dir).unwrap();
        assert_eq!(store.head().unwrap(), Height(5));
        assert_eq!(store.block(Height(5)).unwrap().unwrap().hash(), head_hash);
        assert_eq!(store.block_by_hash(&head_hash).unwrap().unwrap().header.height, Height(5));
        assert_eq!(state_root(&store.pending_state()).unwrap(), recompute_state_root(&memory));
        assert_eq!(state_root(&store.pending_state()), state_root(&memory));
        let (height, index, tx) = store.tx(&committed_txs[2]).unwrap().unwrap();
        assert_eq!((height, index), (Height(3), 0));
        assert_eq!(tx.hash(), committed_txs[2]);
        assert!(store.tx(&Hash([7; 32])).unwrap().is_none());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
