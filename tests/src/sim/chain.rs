//! One simulated node's application: the chain's rules (`trellis-contracts`) over an in-memory
//! store, block building and checking, the aggregate every validator recomputes, and a mempool.
//!
//! It mirrors the node's ledger (`node/src/storage/ledger.rs`): a block is begin-block, every
//! transaction in order, end-block, then the state root; a proposer leaves failing transactions
//! out, a checker rejects a block in which any transaction fails. On top of that, like the
//! node's `check_block`, an honest validator rejects a block whose `CommitAggregate` differs
//! from the aggregate it computes itself, so a committed block is a committed outer update. The
//! aggregate is the node's own arithmetic (`trellis_protocol::outer::outer_update`) over small
//! Δ vectors the simulated miners publish in [`Vectors`], the simulation's blob exchange.
//!
//! Guarantees: execution only buffers writes; nothing changes the committed state but
//! [`Ledger::commit`], which applies one executed block on top of the head it was executed on.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;

use arc_malachitebft_app_channel::app::types::core::ExtendedCommitCertificate;
use thiserror::Error;
use trellis_consensus::{TrellisContext, Validator as ConsensusValidator, ValidatorSet as ConsensusValidatorSet};
use trellis_contracts::kv::{apply_changes, Changes, Overlay};
use trellis_contracts::state::{self, keys, Account, Job, Phase, RoundState};
use trellis_contracts::{BlockCtx, Chain, Event, Genesis, MemoryKv, Parent, TxError};
use trellis_proto::{
    Address, Aggregate, Block, Encode, Hash, HashDomain, JobId, Signature, SignedTx, Transaction, TxKind,
};

/// The beacon after an executed block (what its round sampling used).
pub fn beacon_after(executed: &Executed) -> Option<Hash> {
    let bytes = executed.changes.get(keys::BEACON)?.as_ref()?;
    trellis_proto::codec::decode(bytes).ok()
}

/// Most transactions a simulated proposer puts in one block.
pub const MAX_SIM_BLOCK_TXS: usize = 64;
/// Most transactions one simulated mempool holds.
pub const MEMPOOL_CAPACITY: usize = 512;

/// Why a block is not a valid successor of the head: the chain's own rules (the node's, from
/// `trellis_contracts::block`), or what an honest validator checks besides.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum InvalidBlock {
    #[error(transparent)]
    Rules(#[from] trellis_contracts::InvalidBlock),
    #[error("block header names proposer {got}, the proposal came from {expected}")]
    WrongProposer { expected: Address, got: Address },
    #[error("aggregate for job {job} round {round} differs from the one this validator computes")]
    AggregateMismatch { job: u64, round: u32 },
}

/// A block executed against the committed head, ready to commit.
#[derive(Debug, Clone)]
pub struct Executed {
    pub block: Rc<Block>,
    pub changes: Changes,
    pub events: Vec<Event>,
    /// Transactions the builder left out, with why (empty for a checked block).
    pub left_out: Vec<(SignedTx, TxError)>,
}

/// Values in a simulated model: the simulator does not train, so a model, a momentum buffer and
/// a Δ are short vectors, combined by the node's own outer-update code.
pub const SIM_PARAMETERS: usize = 16;

/// The simulation's blob exchange: flat f32 vectors (Δs, models, momenta) by their blob hash
/// (`trellis_protocol::model` layout, hashed like the node's data blobs). Every node sees every
/// published vector, as if the exchange always delivered; content addressing makes sharing one
/// map the same as each node holding its own copy.
#[derive(Debug, Default)]
pub struct Vectors(RefCell<BTreeMap<Hash, Rc<[f32]>>>);

impl Vectors {
    /// The blob hash of `values`.
    pub fn hash_of(values: &[f32]) -> Hash {
        trellis_proto::blobwire::data_hash(&trellis_protocol::model::weights_to_bytes(values))
    }

    /// Makes `values` available to every node; returns their hash.
    pub fn publish(&self, values: &[f32]) -> Hash {
        let hash = Self::hash_of(values);
        self.0.borrow_mut().entry(hash).or_insert_with(|| values.into());
        hash
    }

    pub fn get(&self, hash: &Hash) -> Option<Rc<[f32]>> {
        self.0.borrow().get(hash).cloned()
    }
}

/// θ_0 of a simulated job: small values drawn from its init seed.
pub fn sim_initial_model(job: &Job) -> Vec<f32> {
    small_values(&[b"initial model".as_slice(), &job.spec.init_seed.to_le_bytes()].concat())
}

/// The Δ an honest miner's round produces: small values drawn from (miner, job, round).
pub fn sim_honest_delta(miner: &Address, job: &Job, round: u32) -> Vec<f32> {
    let mut bytes = miner.0.to_vec();
    job.id.0.encode_to(&mut bytes);
    round.encode_to(&mut bytes);
    small_values(&bytes)
}

fn small_values(seed: &[u8]) -> Vec<f32> {
    let digest = Hash::digest(HashDomain::Blob, seed);
    digest.0.iter().take(SIM_PARAMETERS).map(|b| (f32::from(*b) - 128.0) / 1024.0).collect()
}

/// The committed chain of one node: its "disk".
#[derive(Debug, Clone)]
pub struct Ledger {
    chain: Chain,
    /// The state at height 0, kept so a prefix of the chain can be rebuilt ([`Ledger::prefix`]).
    genesis: Rc<MemoryKv>,
    /// Hashes of blocks whose transaction root and signatures checked out, shared by every
    /// clone of the genesis ledger: the check is a pure function of the block, so the memo
    /// changes speed, not results.
    verified_bodies: Rc<RefCell<BTreeSet<Hash>>>,
    /// The blob exchange, shared by every clone of the genesis ledger.
    vectors: Rc<Vectors>,
    kv: MemoryKv,
    blocks: Vec<Rc<Block>>,
    certificates: Vec<ExtendedCommitCertificate<TrellisContext>>,
}

impl Ledger {
    pub fn from_genesis(genesis: &Genesis) -> Self {
        let mut kv = MemoryKv::new();
        let chain = Chain::init_genesis(&mut kv, genesis).expect("the simulator's genesis is valid"); // ok: built by the simulator
        Self {
            chain,
            genesis: Rc::new(kv.clone()),
            verified_bodies: Rc::default(),
            vectors: Rc::default(),
            kv,
            blocks: Vec::new(),
            certificates: Vec::new(),
        }
    }

    /// This chain cut back to `height`, rebuilt by executing its blocks again from genesis.
    pub fn prefix(&self, height: u64) -> Ledger {
        let mut ledger = Ledger {
            chain: self.chain.clone(),
            genesis: self.genesis.clone(),
            verified_bodies: self.verified_bodies.clone(),
            vectors: self.vectors.clone(),
            kv: (*self.genesis).clone(),
            blocks: Vec::new(),
            certificates: Vec::new(),
        };
        for (block, certificate) in self.blocks.iter().zip(&self.certificates).take(height as usize) {
            let executed = ledger.execute(block, None, false).expect("a committed block executes again on its parent"); // ok: it did before
            ledger.commit(executed, certificate.clone());
        }
        ledger
    }

    pub fn state(&self) -> &MemoryKv {
        &self.kv
    }

    /// The simulation's blob exchange.
    pub fn vectors(&self) -> &Vectors {
        &self.vectors
    }

    /// The aggregate this node computes for `round` of `job` on its committed state
    /// ([`expected_aggregate`]).
    pub fn expected_aggregate(&self, job: JobId, round: u32) -> Option<Aggregate> {
        expected_aggregate(&self.kv, &self.vectors, job, round)
    }

    /// Height of the last committed block (0 before the first).
    pub fn height(&self) -> u64 {
        self.blocks.len() as u64
    }

    pub fn head_hash(&self) -> Hash {
        self.blocks.last().map_or(Hash::ZERO, |b| b.hash())
    }

    fn head_time(&self) -> u64 {
        self.blocks.last().map_or(0, |b| b.header.time_ms)
    }

    pub fn block(&self, height: u64) -> Option<&Rc<Block>> {
        self.blocks.get(height.checked_sub(1)? as usize)
    }

    pub fn certificate(&self, height: u64) -> Option<&ExtendedCommitCertificate<TrellisContext>> {
        self.certificates.get(height.checked_sub(1)? as usize)
    }

    pub fn next_nonce(&self, address: &Address) -> u64 {
        read_account(&self.kv, address).nonce
    }

    /// What mempool admission needs of a sender's committed account.
    pub fn sender_account(&self, address: &Address) -> trellis_mempool::SenderAccount {
        let account = read_account(&self.kv, address);
        trellis_mempool::SenderAccount { next_nonce: account.nonce, balance: account.balance.0 }
    }

    /// The validator set that signs the next height, in the engine's form.
    pub fn validator_set(&self) -> ConsensusValidatorSet {
        let set = self.chain.validator_set(&self.kv).expect("the simulated state is never corrupt"); // ok: written by contracts only
        let jailed = self.chain.jailed_among(&self.kv, &set).expect("the simulated state is never corrupt"); // ok: as above
        ConsensusValidatorSet::new(
            set.validators.iter().filter_map(|v| ConsensusValidator::new(v.key, v.power)).collect(),
        )
        .barring_proposers(&jailed.into_iter().map(trellis_consensus::ValidatorAddress).collect())
    }

    fn next_ctx(&self, proposer: Address, time_ms: u64) -> BlockCtx {
        BlockCtx { height: trellis_proto::Height(self.height() + 1), time_ms, randomness: self.head_hash(), proposer }
    }

    fn parent(&self) -> Parent {
        Parent { height: trellis_proto::Height(self.height()), hash: self.head_hash(), time_ms: self.head_time() }
    }

    /// The beacon onion the chain holds for `validator`.
    pub fn beacon_onion(&self, validator: &Address) -> Option<state::BeaconOnion> {
        self.chain.beacon_onion(&self.kv, validator).expect("the simulated state is never corrupt")
        // ok: written by contracts only
    }

    /// Builds the next block from `candidates` in order, leaving out those no block may hold (a
    /// failing action is included and pays its fee: `Chain::include_tx`).
    pub fn build_block(
        &self,
        proposer: Address,
        time_ms: u64,
        beacon_reveal: Hash,
        candidates: Vec<SignedTx>,
    ) -> Executed {
        let mut overlay = Overlay::new(&self.kv);
        let built = self
            .chain
            .build_block(
                &mut overlay,
                &self.parent(),
                proposer,
                time_ms,
                beacon_reveal,
                candidates.into_iter().take(MAX_SIM_BLOCK_TXS),
            )
            .expect("begin-block and end-block never fail on a sound state"); // ok: see `execute`
        Executed {
            block: Rc::new(built.block),
            changes: overlay.into_changes(),
            events: built.events,
            left_out: built.left_out,
        }
    }

    /// Checks that `block` is a valid successor of the head and executes it. With
    /// `recheck_aggregates`, also recomputes every aggregate it carries (what an honest
    /// validator does before voting; a synced block already has a quorum's certificate).
    pub fn execute(
        &self,
        block: &Rc<Block>,
        proposer: Option<Address>,
        recheck_aggregates: bool,
    ) -> Result<Executed, InvalidBlock> {
        let header = &block.header;
        let parent = self.parent();
        self.chain.check_successor(&parent, header)?;
        if let Some(expected) = proposer {
            if header.proposer != expected {
                return Err(InvalidBlock::WrongProposer { expected, got: header.proposer });
            }
        }
        let hash = block.hash();
        if !self.verified_bodies.borrow().contains(&hash) {
            block.verify_body().map_err(trellis_contracts::InvalidBlock::from)?;
            self.verified_bodies.borrow_mut().insert(hash);
        }
        if recheck_aggregates {
            for tx in &block.txs {
                if let TxKind::CommitAggregate(aggregate) = &tx.tx.kind {
                    if expected_aggregate(&self.kv, &self.vectors, aggregate.job, aggregate.round).as_ref()
                        != Some(aggregate)
                    {
                        return Err(InvalidBlock::AggregateMismatch { job: aggregate.job.0, round: aggregate.round });
                    }
                }
            }
        }
        let mut overlay = Overlay::new(&self.kv);
        let events = self.chain.execute_checked_block(&mut overlay, &parent, block)?;
        Ok(Executed { block: block.clone(), changes: overlay.into_changes(), events, left_out: Vec::new() })
    }

    /// Whether `tx` would apply on top of the committed state in the next block. The rules
    /// alone are checked (the contracts never look at signatures), so nothing is signed.
    pub fn dry_run(&self, tx: &Transaction) -> Result<(), TxError> {
        let ctx = self.next_ctx(Address::default(), self.head_time());
        let mut overlay = Overlay::new(&self.kv);
        let unsigned = SignedTx { tx: tx.clone(), signature: Signature([0; 64]) };
        self.chain.apply_tx(&mut overlay, &unsigned, &ctx).map(|_| ())
    }

    /// Commits a block executed on the current head, with the certificate that decided it.
    pub fn commit(&mut self, executed: Executed, certificate: ExtendedCommitCertificate<TrellisContext>) {
        assert_eq!(executed.block.header.height.0, self.height() + 1, "a block commits on the head it was executed on");
        assert_eq!(executed.block.header.parent, self.head_hash(), "a block commits on the head it was executed on");
        apply_changes(&mut self.kv, executed.changes);
        self.blocks.push(executed.block);
        self.certificates.push(certificate);
    }

    /// Every active job with its current round.
    pub fn active_rounds(&self) -> Vec<(Job, RoundState)> {
        active_rounds(&self.kv)
    }
}

pub fn read_account(kv: &MemoryKv, address: &Address) -> Account {
    state::read::<Account>(kv, &keys::account(address))
        .expect("the simulated state is never corrupt")
        .unwrap_or_default()
    // ok: written by contracts only
}

/// Every active job with its current round, in job order.
pub fn active_rounds<S: trellis_contracts::KvStore + ?Sized>(kv: &S) -> Vec<(Job, RoundState)> {
    let mut out = Vec::new();
    for job in state::active_jobs(kv).expect("the simulated state is never corrupt") {
        // ok: written by contracts only
        if let Some(round) =
            RoundState::load(kv, job.id, job.current_round).expect("the simulated state is never corrupt")
        {
            out.push((job, round));
        }
    }
    out
}

/// The aggregate an honest validator computes for `round` of `job` on `kv`, as the node's
/// `roles::aggregate::compute` does: θ_r and the outer momentum (the job's initial model and
/// zeros before its first aggregate), the accepted miners' Δs in the round's order, then
/// `trellis_protocol::outer::outer_update`; the new model and momentum are published. `None`
/// while the round awaits no aggregate, or when a blob it needs was never published (the node
/// would keep fetching, and the round lapse).
pub fn expected_aggregate<S: trellis_contracts::KvStore + ?Sized>(
    kv: &S,
    vectors: &Vectors,
    job: JobId,
    round: u32,
) -> Option<Aggregate> {
    let state = RoundState::load(kv, job, round).ok()??;
    if state.phase != Phase::AwaitingAggregate {
        return None;
    }
    let job_state: Job = state::read(kv, &keys::job(job)).ok()??;
    let global = match job_state.model_hash {
        Hash::ZERO => sim_initial_model(&job_state).into(),
        hash => vectors.get(&hash)?,
    };
    let momentum = match job_state.momentum_hash {
        Hash::ZERO => vec![0.0; global.len()],
        hash => vectors.get(&hash)?.to_vec(),
    };
    let mut deltas = Vec::with_capacity(state.accepted.len());
    let mut steps = Vec::with_capacity(state.accepted.len());
    for miner in &state.accepted {
        let reveal = state.commits.iter().find(|c| &c.miner == miner)?.reveal.as_ref()?;
        deltas.push(vectors.get(&reveal.delta_hash)?);
        steps.push(reveal.steps);
    }
    let refs: Vec<&[f32]> = deltas.iter().map(|d| &d[..]).collect();
    let update = trellis_protocol::outer::outer_update(&job_state.spec, &global, momentum, &refs, &steps).ok()?;
    let model_hash = vectors.publish(&update.model);
    let momentum_hash = vectors.publish(&update.momentum);
    Some(Aggregate { job, round, model_hash, momentum_hash, accepted: state.accepted.clone() })
}

/// Pending transactions of one simulated validator: the node's own pool
/// (`trellis_mempool`: admission by what the sender can pay, room kept for duties, selection by
/// fee with contiguous nonces, eviction of what fails with the sender's later nonces), sized for
/// the simulation. Signatures are checked when blocks are executed.
#[derive(Debug)]
pub struct Mempool {
    pool: trellis_mempool::Mempool,
}

impl Default for Mempool {
    fn default() -> Self {
        let limits = trellis_mempool::MempoolLimits {
            max_transactions: MEMPOOL_CAPACITY,
            max_bytes: 4 * 1024 * 1024,
            max_per_account: 64,
            reserved_for_duties: MEMPOOL_CAPACITY / 8,
        };
        Self { pool: trellis_mempool::Mempool::new(limits) }
    }
}

impl Mempool {
    /// Admits `tx` against the committed state of `ledger`; why not, if refused.
    pub fn insert(&mut self, tx: SignedTx, ledger: &Ledger) -> Result<(), trellis_mempool::MempoolError> {
        let account = ledger.sender_account(&tx.tx.sender_address());
        self.pool.insert_verified(tx, account).map(|_| ())
    }

    pub fn candidates(&self, ledger: &Ledger) -> Vec<SignedTx> {
        self.pool.select(MAX_SIM_BLOCK_TXS, usize::MAX, |a| ledger.next_nonce(a))
    }

    /// Drops what the committed state made stale.
    pub fn prune(&mut self, ledger: &Ledger) {
        self.pool.prune(|a| ledger.next_nonce(a));
    }

    /// Drops transactions that failed in block building, with their senders' later nonces
    /// (but `keep`'s, the validator's own, which it resends itself).
    pub fn evict_failed(&mut self, failed: &[SignedTx], keep: Option<&Address>) -> usize {
        self.pool.evict_failed(failed, keep)
    }

    /// Drops the validator's own stale transaction (and what follows it).
    pub fn evict_own(&mut self, tx: &SignedTx) {
        self.pool.evict_failed(std::slice::from_ref(tx), None);
    }

    pub fn len(&self) -> usize {
        self.pool.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pool.is_empty()
    }
}
