//! The application side of the Malachite engine: proposes blocks from the mempool, checks the
//! blocks others propose by executing them, commits decided blocks, serves and accepts synced
//! blocks, and turns double votes and double proposals (the engine's, and two block parts one
//! proposer signed for one round) into slashing transactions.
//!
//! The engine awaits each reply inline, so every handler here is bounded: block execution is the
//! longest step, and a proposal is built within the engine's `GetValue` time budget.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_malachitebft_app_channel::app::consensus::{MisbehaviorEvidence, ProposedValue, Role};
use arc_malachitebft_app_channel::app::engine::host::{HeightParams, Next, SyncedValueOutcome};
use arc_malachitebft_app_channel::app::streaming::{StreamContent, StreamId, StreamMessage};
use arc_malachitebft_app_channel::app::types::codec::Codec;
use arc_malachitebft_app_channel::app::types::core::{
    CommitCertificate, ExtendedCommitCertificate, Height as _, LinearTimeouts, Round, Validity, VoteExtensions,
};
use arc_malachitebft_app_channel::app::types::LocallyProposedValue;
use arc_malachitebft_app_channel::{AppMsg, Channels, NetworkMsg};
use arc_malachitebft_sync::RawDecidedValue;
use bytes::Bytes;
use trellis_consensus::round_cap;
use trellis_consensus::signing::from_consensus_signature;
use trellis_consensus::{
    BlockHeight, BlockId, BlockPart, ConsensusVote, TrellisCodec, TrellisContext, TrellisSigner, TrellisVerifier,
    ValidatorAddress, ValidatorSet,
};
use trellis_proto::block::{MAX_BLOCK_BYTES, MAX_BLOCK_TXS};
use trellis_proto::{
    Address, Amount, Block, DoubleProposalEvidence, Encode, EquivocationEvidence, Hash, Height, Keypair, ProposalClaim,
    SignedProposalClaim, SignedVote, Transaction, TxKind,
};

use crate::shared::{NodeEvent, Shared};
use crate::storage::ledger::Executed;

/// Most proposal parts kept for heights this node has not reached yet.
const MAX_FUTURE_PARTS: usize = 64;
/// Rounds ahead of the current one whose proposal parts are checked (executed) on arrival; a
/// part for a later round waits among the future parts until its round is near. Otherwise a
/// proposer could send one block for each of the many rounds of a height it will propose in,
/// none a double proposal, and have every validator execute them all at once.
const MAX_ROUNDS_AHEAD: u32 = 2;
/// Most parts kept for rounds further ahead (a node that lags in rounds gets them when it
/// catches up; beyond this, a round's proposal is missed and the round times out).
const MAX_LATER_ROUND_PARTS: usize = 16;
/// Most decided blocks returned to one sync request.
const MAX_SYNC_BATCH: u64 = 64;
/// How long a validator waits for its own aggregate computation when a proposal carries one.
const AGGREGATE_WAIT: Duration = Duration::from_millis(1500);
/// Fee the node pays on the evidence transactions it submits.
const EVIDENCE_FEE: u64 = 1;

/// How the consensus timing is set.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// Shortest time from the start of a height to its commit: paces empty blocks.
    pub block_time: Duration,
    pub timeouts: LinearTimeouts,
}

/// The application state the engine drives.
pub struct ConsensusApp {
    shared: Arc<Shared>,
    ctx: TrellisContext,
    /// This node's key: signs proposal parts and evidence transactions. `None` on a full node.
    key: Option<Arc<Keypair>>,
    signer: Option<Arc<TrellisSigner>>,
    verifier: TrellisVerifier,
    timing: Timing,
    height: BlockHeight,
    round: Round,
    validators: ValidatorSet,
    /// Blocks executed but not yet committed, by hash.
    executed: HashMap<Hash, Executed>,
    /// Values known for (height, round) of the current height, for `StartedRound` replies.
    values: BTreeMap<(u64, u32), Vec<ProposedValue<TrellisContext>>>,
    /// Signed parts received or sent for the current height, by block hash, for restreaming.
    parts: HashMap<Hash, BlockPart>,
    /// Parts for heights not yet reached.
    future_parts: Vec<BlockPart>,
    /// Parts of the current height for rounds more than [`MAX_ROUNDS_AHEAD`] ahead: apart
    /// from `future_parts`, so that a proposer filling this list cannot crowd out the next
    /// height's parts.
    later_round_parts: Vec<BlockPart>,
    /// The first signed part of each round of the current height, to spot a second block.
    part_witness: PartWitness,
    stream_counter: u64,
    /// An adversary (`double-propose`): signs a second block for every round it proposes.
    #[cfg(feature = "adversary")]
    double_propose: bool,
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

impl ConsensusApp {
    pub fn new(shared: Arc<Shared>, key: Option<Arc<Keypair>>, timing: Timing) -> Self {
        let chain_id = shared.ledger.chain_id().to_string();
        let signer = key.as_ref().map(|k| Arc::new(TrellisSigner::new(&chain_id, Keypair::from_seed(k.seed()))));
        let validators = shared.ledger.validator_set();
        Self {
            ctx: TrellisContext::new(&chain_id),
            verifier: TrellisVerifier::new(&chain_id),
            shared,
            key,
            signer,
            timing,
            height: BlockHeight(0),
            round: Round::Nil,
            validators,
            executed: HashMap::new(),
            values: BTreeMap::new(),
            parts: HashMap::new(),
            future_parts: Vec::new(),
            later_round_parts: Vec::new(),
            part_witness: PartWitness::default(),
            stream_counter: 0,
            #[cfg(feature = "adversary")]
            double_propose: false,
        }
    }

    /// Makes this validator sign and send a second block for every round it proposes
    /// (`--behaviour double-propose`; test and devnet builds only).
    #[cfg(feature = "adversary")]
    pub fn double_proposing(mut self, yes: bool) -> Self {
        self.double_propose = yes;
        self
    }

    pub fn context(&self) -> &TrellisContext {
        &self.ctx
    }

    fn params(&self) -> HeightParams<TrellisContext> {
        HeightParams::new(self.validators.clone(), self.timing.timeouts, Some(self.timing.block_time))
    }

    /// Runs until the engine closes its channel.
    pub async fn run(mut self, mut channels: Channels<TrellisContext>) {
        while let Some(msg) = channels.consensus.recv().await {
            self.handle(msg, &channels).await;
        }
        tracing::info!(target: "node::consensus", "engine stopped");
    }

    async fn handle(&mut self, msg: AppMsg<TrellisContext>, channels: &Channels<TrellisContext>) {
        match msg {
            AppMsg::ConsensusReady { reply } => {
                let head = self.shared.ledger.head().unwrap_or_else(|e| crate::storage::store::fatal(e));
                self.start_height(BlockHeight(head.height.0 + 1));
                tracing::info!(target: "node::consensus", height = %self.height, validators = self.validators.validators().len(), "consensus ready");
                let _ = reply.send((self.height, self.params()));
            }
            AppMsg::StartedRound { height, round, proposer, role, reply_value } => {
                tracing::debug!(target: "node::consensus", %height, %round, %proposer, ?role, "round started");
                self.height = height;
                self.round = round;
                self.take_future_parts().await;
                let key = (height.0, round.as_u32().unwrap_or(0));
                let _ = reply_value.send(self.values.get(&key).cloned().unwrap_or_default());
                if matches!(role, Role::Proposer) {
                    self.shared.metrics.rounds_as_proposer.inc();
                }
            }
            AppMsg::GetValue { height, round, timeout, reply } => {
                let value = self.propose(height, round, timeout);
                let _ = reply.send(LocallyProposedValue::new(height, round, BlockId(value)));
                if let Some(part) = self.parts.get(&value).cloned() {
                    self.publish(part, channels).await;
                }
                #[cfg(feature = "adversary")]
                if self.double_propose {
                    if let Some(twin) = self.twin_part(height, round) {
                        self.publish(twin, channels).await;
                    }
                }
            }
            AppMsg::ExtendVote { reply, .. } => {
                let _ = reply.send(None);
            }
            AppMsg::VerifyVoteExtensions { extensions, reply, .. } => {
                let _ = reply.send(extensions.into_iter().map(|(address, _)| (address, Ok(()))).collect());
            }
            AppMsg::RestreamProposal { height, round, valid_round, address, value_id } => {
                self.restream(height, round, valid_round, address, value_id.0, channels).await;
            }
            AppMsg::GetHistoryMinHeight { reply } => {
                let _ = reply.send(BlockHeight(1));
            }
            AppMsg::ReceivedProposalPart { part, reply, .. } => {
                let value = match part.content {
                    StreamContent::Data(part) => self.receive_part(part).await,
                    StreamContent::Fin => None,
                };
                let _ = reply.send(value);
            }
            AppMsg::Decided { certificate, reply, .. } => {
                tracing::debug!(target: "node::consensus", height = %certificate.height, block = %certificate.value_id, "decided");
                let _ = reply.send(());
            }
            AppMsg::Finalized { certificate, extensions, evidence, reply } => {
                let next = self.finalize(certificate, extensions, evidence);
                let _ = reply.send(next);
            }
            AppMsg::GetDecidedValues { range, reply } => {
                let _ = reply.send(self.decided_values(range.start().0, range.end().0));
            }
            AppMsg::ProcessSyncedValue { height, round, proposer, value_bytes, reply } => {
                let _ = reply.send(self.synced_value(height, round, proposer, value_bytes).await);
            }
        }
    }

    fn start_height(&mut self, height: BlockHeight) {
        self.height = height;
        self.round = Round::Nil;
        self.validators = self.shared.ledger.validator_set();
        self.executed.retain(|_, e| e.block.header.height.0 >= height.0);
        self.values.retain(|(h, _), _| *h >= height.0);
        self.parts.retain(|_, p| p.height >= height);
        self.part_witness = PartWitness::default();
        self.later_round_parts.clear();
    }

    /// The block to propose at (height, round): the one already proposed there (after a
    /// restart, re-proposing anything else would be equivocation), else a new one.
    fn propose(&mut self, height: BlockHeight, round: Round, budget: Duration) -> Hash {
        let round_number = round.as_u32().unwrap_or(0);
        let store = self.shared.ledger.store();
        if let Some(block) = store
            .proposed(trellis_proto::Height(height.0), round_number)
            .unwrap_or_else(|e| crate::storage::store::fatal(e))
        {
            let hash = block.hash();
            if !self.executed.contains_key(&hash) {
                if let Ok(executed) = self.shared.ledger.execute(block) {
                    self.executed.insert(hash, executed);
                }
            }
            self.remember_own_part(height, round, hash);
            return hash;
        }
        let started = std::time::Instant::now();
        let proposer = self.key.as_ref().map(|k| k.address()).unwrap_or_default();
        let candidates = {
            let mempool = self.shared.mempool.lock().unwrap_or_else(|p| p.into_inner());
            let ledger = &self.shared.ledger;
            mempool.select(MAX_BLOCK_TXS, MAX_BLOCK_BYTES / 2, |a| ledger.next_nonce(a))
        };
        // Never propose an outer update this node has not recomputed identically (none at all
        // without an aggregate book).
        let book = self.shared.aggregates.clone();
        let candidates: Vec<trellis_proto::SignedTx> = candidates
            .into_iter()
            .filter(|tx| match &tx.tx.kind {
                TxKind::CommitAggregate(aggregate) => book.as_ref().is_some_and(|b| b.judge(aggregate) == Some(true)),
                _ => true,
            })
            .collect();
        let candidates = self.leave_out_unfounded(candidates);
        let reveal = self.beacon_reveal(&proposer, height);
        let (executed, left_out) = match self.shared.ledger.build_block(proposer, now_ms(), reveal, candidates) {
            Ok(built) => built,
            Err(error) => crate::storage::store::fatal(format!("building a block failed: {error}")),
        };
        if !left_out.is_empty() {
            // A transaction no block may hold now (its nonce, or a fee its sender cannot pay; a
            // failing action is included and charged) never will: it leaves the pool with the
            // nonces that could only follow it (this node's own are left to its roles to resend).
            let mut mempool = self.shared.mempool.lock().unwrap_or_else(|p| p.into_inner());
            let evicted = mempool.evict_failed(&left_out, self.key.as_ref().map(|k| k.address()).as_ref());
            self.shared.metrics.mempool_txs.set(mempool.len() as u64);
            tracing::debug!(target: "node::mempool", failed = left_out.len(), evicted, "evicted transactions that failed in block building");
        }
        let hash = executed.block.hash();
        store.put_undecided(&executed.block, Some(round_number)).unwrap_or_else(|e| crate::storage::store::fatal(e));
        tracing::info!(
            target: "node::consensus",
            %height, round = round_number, block = %hash, txs = executed.block.txs.len(),
            took_ms = started.elapsed().as_millis() as u64, budget_ms = budget.as_millis() as u64,
            "proposing"
        );
        self.executed.insert(hash, executed);
        self.remember_own_part(height, round, hash);
        self.record_value(height, round, Round::Nil, hash, Validity::Valid);
        hash
    }

    /// Leaves out `Invalid` verdicts whose evidence the miner's trail refutes (and drops them from
    /// the pool), and those not judged yet, which are judged in the background for a later block.
    fn leave_out_unfounded(&self, candidates: Vec<trellis_proto::SignedTx>) -> Vec<trellis_proto::SignedTx> {
        use crate::engine::evidence_desk::{accuses, Judgement};
        let Some(desk) = &self.shared.evidence else { return candidates };
        let mut refuted = Vec::new();
        let kept = candidates
            .into_iter()
            .filter(|tx| {
                if accuses(tx).is_none() {
                    return true;
                }
                match desk.judged(&tx.hash()) {
                    Some(Judgement::Stands) => true,
                    Some(Judgement::Refuted(_)) => {
                        refuted.push(tx.clone());
                        false
                    }
                    None => {
                        let (desk, shared, tx) = (desk.clone(), self.shared.clone(), tx.clone());
                        tokio::spawn(async move {
                            let deadline = tokio::time::Instant::now() + crate::engine::evidence_desk::EVIDENCE_WAIT;
                            desk.judge(&shared.ledger, &tx, deadline).await;
                        });
                        false
                    }
                }
            })
            .collect();
        if !refuted.is_empty() {
            let mut mempool = self.shared.mempool.lock().unwrap_or_else(|p| p.into_inner());
            let evicted = mempool.evict_failed(&refuted, self.key.as_ref().map(|k| k.address()).as_ref());
            tracing::info!(target: "node::evidence", refuted = refuted.len(), evicted, "left out verdicts whose evidence the trail refutes");
        }
        kept
    }

    /// The beacon layer `proposer` reveals in its block at `height` (zero without a beacon keeper).
    fn beacon_reveal(&self, proposer: &Address, height: BlockHeight) -> Hash {
        match &self.shared.beacon {
            Some(keeper) => keeper.reveal(self.shared.ledger.beacon_onion(proposer).as_ref(), Height(height.0)),
            None => Hash::ZERO,
        }
    }

    /// The adversary's second block for (height, round): valid (the same reveal, no
    /// transactions, a millisecond later), signed, and executed here too in case it is decided.
    #[cfg(feature = "adversary")]
    fn twin_part(&mut self, height: BlockHeight, round: Round) -> Option<BlockPart> {
        let (signer, key) = (self.signer.clone()?, self.key.clone()?);
        let proposer = key.address();
        let reveal = self.beacon_reveal(&proposer, height);
        let (executed, _) = self.shared.ledger.build_block(proposer, now_ms() + 1, reveal, Vec::new()).ok()?;
        let block = executed.block.to_bytes();
        let hash = executed.block.hash();
        tracing::warn!(target: "node::consensus", %height, %round, block = %hash, "ADVERSARY: proposing a second block for the round");
        self.shared
            .ledger
            .store()
            .put_undecided(&executed.block, None)
            .unwrap_or_else(|e| crate::storage::store::fatal(e));
        self.executed.insert(hash, executed);
        let mut part = BlockPart {
            height,
            round,
            valid_round: Round::Nil,
            proposer: ValidatorAddress(proposer),
            block: Bytes::from(block),
            signature: trellis_proto::Signature([0; 64]),
        };
        part.signature = signer.sign_part(&part);
        self.parts.insert(hash, part.clone());
        Some(part)
    }

    fn remember_own_part(&mut self, height: BlockHeight, round: Round, hash: Hash) {
        let (Some(signer), Some(key)) = (&self.signer, &self.key) else { return };
        let Some(block) = self.executed.get(&hash).map(|e| e.block.to_bytes()) else { return };
        let mut part = BlockPart {
            height,
            round,
            valid_round: Round::Nil,
            proposer: ValidatorAddress(key.address()),
            block: Bytes::from(block),
            signature: trellis_proto::Signature([0; 64]),
        };
        part.signature = signer.sign_part(&part);
        self.parts.insert(hash, part);
    }

    async fn publish(&mut self, part: BlockPart, channels: &Channels<TrellisContext>) {
        self.stream_counter += 1;
        let mut id = Vec::with_capacity(20);
        id.extend_from_slice(&part.height.0.to_be_bytes());
        id.extend_from_slice(&part.round.as_u32().unwrap_or(0).to_be_bytes());
        id.extend_from_slice(&self.stream_counter.to_be_bytes());
        let stream_id = StreamId::new(Bytes::from(id));
        let messages = [
            StreamMessage::new(stream_id.clone(), 0, StreamContent::Data(part)),
            StreamMessage::new(stream_id, 1, StreamContent::Fin),
        ];
        for message in messages {
            if channels.network.send(NetworkMsg::PublishProposalPart(message)).await.is_err() {
                tracing::warn!(target: "node::consensus", "network channel closed; proposal part not sent");
            }
        }
    }

    async fn restream(
        &mut self,
        height: BlockHeight,
        round: Round,
        valid_round: Round,
        address: ValidatorAddress,
        hash: Hash,
        channels: &Channels<TrellisContext>,
    ) {
        let own = self.key.as_ref().is_some_and(|k| ValidatorAddress(k.address()) == address);
        let part = if own {
            // Re-proposing our locked block in a new round: a new part, signed for that round.
            let (Some(signer), Some(original)) = (&self.signer, self.parts.get(&hash)) else { return };
            if !self.record_own_proposal(height, round, hash, &original.block) {
                return;
            }
            // The part names us: the locked block may be another validator's proposal of an
            // earlier round, and a part naming anyone but the round's proposer is dropped.
            let mut part = BlockPart {
                height,
                round,
                valid_round,
                proposer: address,
                signature: trellis_proto::Signature([0; 64]),
                ..original.clone()
            };
            part.signature = signer.sign_part(&part);
            part
        } else {
            // Someone else's proposal: only its original signed part can be sent on.
            match self.parts.get(&hash) {
                Some(part) => part.clone(),
                None => return,
            }
        };
        self.publish(part, channels).await;
    }

    /// Writes (with an fsync) that this node proposes `hash` at (height, round) before it signs
    /// anything for it, as `propose` does for a new block, so that a restart (even one that
    /// resets the engine's WAL) re-proposes the same block. `false`, and nothing to sign, if the
    /// round already holds another block of ours: signing this one too would be a double
    /// proposal.
    fn record_own_proposal(&self, height: BlockHeight, round: Round, hash: Hash, block: &[u8]) -> bool {
        let Some(round_number) = round.as_u32() else { return false };
        let store = self.shared.ledger.store();
        match store.proposed(Height(height.0), round_number).unwrap_or_else(|e| crate::storage::store::fatal(e)) {
            Some(recorded) if recorded.hash() == hash => true,
            Some(recorded) => {
                tracing::error!(target: "node::consensus", %height, round = round_number, block = %hash, recorded = %recorded.hash(), "not re-proposing: this node already proposed another block for the round");
                false
            }
            None => match Block::from_wire(block) {
                Ok(block) => {
                    store.put_undecided(&block, Some(round_number)).unwrap_or_else(|e| crate::storage::store::fatal(e));
                    true
                }
                Err(error) => {
                    tracing::error!(target: "node::consensus", %height, block = %hash, %error, "the block to re-propose does not decode");
                    false
                }
            },
        }
    }

    async fn take_future_parts(&mut self) {
        let (height, round) = (self.height, self.round);
        let (now, later): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.future_parts).into_iter().partition(|p| p.height <= height);
        self.future_parts = later;
        let (near, far): (Vec<_>, Vec<_>) = std::mem::take(&mut self.later_round_parts)
            .into_iter()
            .partition(|p| p.height == height && round_is_near(p.round, round));
        self.later_round_parts = far.into_iter().filter(|p| p.height == height).collect();
        for part in now.into_iter().chain(near) {
            if part.height == self.height {
                self.receive_part(part).await;
            }
        }
    }

    /// Checks a proposal part: the expected proposer signed it and its block is valid.
    async fn receive_part(&mut self, part: BlockPart) -> Option<ProposedValue<TrellisContext>> {
        if part.height < self.height {
            return None;
        }
        if part.height > self.height {
            if self.future_parts.len() < MAX_FUTURE_PARTS {
                self.future_parts.push(part);
            }
            return None;
        }
        if !round_is_near(part.round, self.round) {
            if self.later_round_parts.len() < MAX_LATER_ROUND_PARTS {
                self.later_round_parts.push(part);
            }
            return None;
        }
        let expected = self.validators.proposer(part.height, part.round)?;
        if expected.address != part.proposer {
            tracing::warn!(target: "node::consensus", height = %part.height, round = %part.round, from = %part.proposer, "proposal part from a validator that is not the round's proposer");
            return None;
        }
        if !self.verifier.verify_part(&part, &expected.key) {
            tracing::warn!(target: "node::consensus", height = %part.height, from = %part.proposer, "proposal part with a bad signature");
            return None;
        }
        // A second block for the round is reported (the proposer loses stake for it) and still
        // executed: the others may have locked on either.
        if let Some(evidence) = self.part_witness.observe(self.ctx.chain_id(), &part, expected.key) {
            self.queue_reports(vec![TxKind::ReportDoubleProposal(Box::new(evidence))]);
        }
        let block = match Block::from_wire(&part.block) {
            Ok(block) => block,
            Err(error) => {
                tracing::warn!(target: "node::consensus", from = %part.proposer, %error, "proposed block does not decode");
                return None;
            }
        };
        let hash = block.hash();
        let held = self.values.get(&(part.height.0, part.round.as_u32().unwrap_or(0)));
        if !round_cap::executes_proposal(held.into_iter().flatten().map(|v| &v.value), &BlockId(hash)) {
            tracing::warn!(target: "node::consensus", height = %part.height, round = %part.round, from = %part.proposer, block = %hash, "the proposer signed yet another block this round; not executing it");
            return None;
        }
        // A re-proposal (a valid round) carries a block some earlier round's proposer built, so
        // its header may name another validator; the block's beacon reveal, checked when it is
        // executed, still binds it to the validator its header names.
        let builder = (part.valid_round == Round::Nil).then_some(part.proposer);
        let validity = self.check_block(block, builder, true).await;
        let value = self.record_value(part.height, part.round, part.valid_round, hash, validity);
        self.parts.insert(hash, part);
        Some(value)
    }

    /// Executes a block that is not yet known and caches the result; `Invalid` if it fails.
    /// With `recheck_aggregates`, a validator also requires every aggregate in it to match its own.
    async fn check_block(
        &mut self,
        block: Block,
        proposer: Option<ValidatorAddress>,
        recheck_aggregates: bool,
    ) -> Validity {
        let hash = block.hash();
        if self.executed.contains_key(&hash) {
            return Validity::Valid;
        }
        if let Some(proposer) = proposer {
            if block.header.proposer != proposer.0 {
                tracing::warn!(target: "node::consensus", block = %hash, "block header names another proposer");
                return Validity::Invalid;
            }
        }
        if recheck_aggregates {
            // A live proposal (not a block a quorum decided already) may not run ahead of our
            // clock: a proposer cannot push the chain's time forward to move time-based rules.
            if let Err(error) = trellis_contracts::Chain::check_proposal_time(&block.header, now_ms()) {
                tracing::warn!(target: "node::consensus", block = %hash, %error, "proposal from the future");
                return Validity::Invalid;
            }
        }
        if recheck_aggregates && self.signer.is_some() {
            match self.aggregates_agree(&block).await {
                Some(true) => {}
                Some(false) => {
                    tracing::warn!(target: "node::consensus", block = %hash, "block carries an aggregate this node computes differently");
                    return Validity::Invalid;
                }
                None => {
                    tracing::warn!(target: "node::consensus", block = %hash, "block carries an aggregate this node has not recomputed (yet, or cannot)");
                    return Validity::Invalid;
                }
            }
        }
        if recheck_aggregates && self.signer.is_some() {
            if let Some(desk) = &self.shared.evidence {
                if let Some((tx, why)) = desk.refuted_in(&self.shared.ledger, &block).await {
                    tracing::warn!(target: "node::consensus", block = %hash, %tx, %why, "block carries Invalid evidence the miner's trail refutes");
                    return Validity::Invalid;
                }
            }
        }
        let store = self.shared.ledger.store();
        match self.shared.ledger.execute(block.clone()) {
            Ok(executed) => {
                store.put_undecided(&block, None).unwrap_or_else(|e| crate::storage::store::fatal(e));
                self.executed.insert(hash, executed);
                Validity::Valid
            }
            Err(error) => {
                tracing::warn!(target: "node::consensus", block = %hash, %error, "invalid block");
                Validity::Invalid
            }
        }
    }

    /// Whether every `CommitAggregate` in `block` matches this node's own computation, awaiting
    /// a computation still running for up to [`AGGREGATE_WAIT`]. A validator that cannot
    /// recompute aggregates (no blob exchange) accepts none: it never votes for an outer update
    /// it has not recomputed.
    /// `Some(true)` when every aggregate matches, `Some(false)` when one differs, `None` when one
    /// could not be judged in time (or at all).
    async fn aggregates_agree(&self, block: &Block) -> Option<bool> {
        let mut aggregates = block.txs.iter().filter_map(|tx| match &tx.tx.kind {
            TxKind::CommitAggregate(aggregate) => Some(aggregate),
            _ => None,
        });
        let Some(book) = &self.shared.aggregates else { return aggregates.next().is_none().then_some(true) };
        let deadline = tokio::time::Instant::now() + AGGREGATE_WAIT;
        for aggregate in aggregates {
            let patience = deadline.saturating_duration_since(tokio::time::Instant::now());
            match book.judge_within(aggregate, patience).await {
                Some(true) => {}
                other => return other,
            }
        }
        Some(true)
    }

    fn record_value(
        &mut self,
        height: BlockHeight,
        round: Round,
        valid_round: Round,
        hash: Hash,
        validity: Validity,
    ) -> ProposedValue<TrellisContext> {
        let proposer =
            self.validators.proposer(height, round).map(|v| v.address).unwrap_or(ValidatorAddress(Default::default()));
        let value = ProposedValue { height, round, valid_round, proposer, value: BlockId(hash), validity };
        let entry = self.values.entry((height.0, round.as_u32().unwrap_or(0))).or_default();
        if !entry.iter().any(|v| v.value == value.value) {
            entry.push(value.clone());
        }
        value
    }

    /// Commits the decided block and says which height comes next.
    fn finalize(
        &mut self,
        certificate: CommitCertificate<TrellisContext>,
        extensions: VoteExtensions<TrellisContext>,
        evidence: MisbehaviorEvidence<TrellisContext>,
    ) -> Next<TrellisContext> {
        let height = certificate.height;
        let hash = certificate.value_id.0;
        let executed = match self.executed.remove(&hash) {
            Some(executed) => executed,
            None => {
                let stored = self
                    .shared
                    .ledger
                    .store()
                    .undecided(trellis_proto::Height(height.0), &hash)
                    .unwrap_or_else(|e| crate::storage::store::fatal(e));
                match stored.map(|block| self.shared.ledger.execute(block)) {
                    Some(Ok(executed)) => executed,
                    Some(Err(error)) => crate::storage::store::fatal(format!(
                        "decided block {hash} at {height} does not execute: {error}"
                    )),
                    None => {
                        tracing::error!(target: "node::consensus", %height, block = %hash, "decided block is unknown here; restarting the height");
                        return Next::Restart(height, self.params());
                    }
                }
            }
        };
        let extended = ExtendedCommitCertificate::from_commit_certificate_and_extensions(certificate, extensions);
        let certificate_bytes = match TrellisCodec.encode(&extended) {
            Ok(bytes) => bytes.to_vec(),
            // A block is never stored without the certificate that proves it was decided.
            Err(error) => crate::storage::store::fatal(format!("encoding the certificate of block {height}: {error}")),
        };
        let block = Arc::new(executed.block.clone());
        let events = Arc::new(executed.events.clone());
        let tx_count = executed.block.txs.len();
        if let Err(error) = self.shared.ledger.commit(executed, &certificate_bytes) {
            crate::storage::store::fatal(format!("committing block {height}: {error}"));
        }
        self.shared.metrics.observe_commit(&block, tx_count);
        tracing::info!(target: "node::consensus", %height, block = %hash, txs = tx_count, "committed");
        {
            let mut mempool = self.shared.mempool.lock().unwrap_or_else(|p| p.into_inner());
            let ledger = &self.shared.ledger;
            mempool.prune(|a| ledger.next_nonce(a));
        }
        self.report_evidence(&evidence);
        let _ = self.shared.events.send(NodeEvent::Committed { block, events });
        self.start_height(height.increment());
        Next::Start(self.height, self.params())
    }

    /// Turns each double vote and double proposal the engine saw into a report.
    /// A round whose block parts this node already reported is left out: the chain slashes a
    /// round once, and a second report would only burn its fee.
    fn report_evidence(&self, evidence: &MisbehaviorEvidence<TrellisContext>) {
        let reports = evidence_reports(self.ctx.chain_id(), &self.validators, evidence)
            .into_iter()
            .filter(|kind| match kind {
                TxKind::ReportDoubleProposal(evidence) => !self.part_witness.has_reported(evidence.slot()),
                _ => true,
            })
            .collect();
        self.queue_reports(reports);
    }

    /// Signs equivocation reports with this node's key (nonces after its pending transactions)
    /// and queues them in the mempool. A full node has no key and reports nothing.
    fn queue_reports(&self, reports: Vec<TxKind>) {
        let Some(key) = &self.key else { return };
        if reports.is_empty() {
            return;
        }
        let mut mempool = self.shared.mempool.lock().unwrap_or_else(|p| p.into_inner());
        let account = self.shared.ledger.sender_account(&key.address());
        let first = mempool.next_free_nonce(&key.address(), account.next_nonce);
        for tx in sign_reports(self.ctx.chain_id(), reports, key, first) {
            let offender = reported_offender(&tx.tx.kind);
            let what = tx.tx.kind.name();
            match mempool.insert_verified(tx, account) {
                Ok(hash) => {
                    tracing::warn!(target: "node::consensus", ?offender, tx = %hash, what, "equivocation seen; reported")
                }
                Err(error) => {
                    tracing::warn!(target: "node::consensus", ?offender, %error, what, "could not queue the equivocation report")
                }
            }
        }
    }

    fn decided_values(&self, start: u64, end: u64) -> Vec<RawDecidedValue<TrellisContext>> {
        let store = self.shared.ledger.store();
        let head = store.head().unwrap_or_else(|e| crate::storage::store::fatal(e)).0;
        let end = end.min(head).min(start.saturating_add(MAX_SYNC_BATCH - 1));
        let mut values = Vec::new();
        for height in start.max(1)..=end {
            let height = trellis_proto::Height(height);
            let (Some(block), Some(certificate)) =
                (store.block(height).unwrap_or_else(|e| crate::storage::store::fatal(e)), store.certificate(height))
            else {
                break;
            };
            let Ok(certificate) =
                Codec::<ExtendedCommitCertificate<TrellisContext>>::decode(&TrellisCodec, Bytes::from(certificate))
            else {
                crate::storage::store::fatal(format!("stored certificate of block {height} does not decode"));
            };
            values.push(RawDecidedValue::new(Bytes::from(block.to_bytes()), certificate));
        }
        values
    }

    async fn synced_value(
        &mut self,
        height: BlockHeight,
        round: Round,
        proposer: ValidatorAddress,
        bytes: Bytes,
    ) -> SyncedValueOutcome<TrellisContext> {
        let block = match Block::from_wire(&bytes) {
            Ok(block) => block,
            Err(error) => {
                tracing::warn!(target: "node::sync", %height, %error, "synced block does not decode");
                return SyncedValueOutcome::PeerFault;
            }
        };
        if block.header.height.0 != height.0 || block.header.chain_id != self.ctx.chain_id() {
            return SyncedValueOutcome::PeerFault;
        }
        let hash = block.hash();
        let head = self.shared.ledger.head().unwrap_or_else(|e| crate::storage::store::fatal(e)).height.0;
        let validity = if height.0 == head + 1 {
            // Decided by a quorum already: aggregates are not recomputed for a synced block.
            self.check_block(block, None, false).await
        } else {
            // A later height of the same batch: its parent is not committed yet, so it cannot
            // run now. A quorum's certificate decided it; check what can be checked alone, keep
            // it, and execute it when its height is finalized.
            if let Err(error) = block.verify_body() {
                tracing::warn!(target: "node::sync", %height, %error, "synced block has a bad body");
                return SyncedValueOutcome::PeerFault;
            }
            self.shared.ledger.store().put_undecided(&block, None).unwrap_or_else(|e| crate::storage::store::fatal(e));
            Validity::Valid
        };
        SyncedValueOutcome::Verdict(ProposedValue {
            height,
            round,
            valid_round: Round::Nil,
            proposer,
            value: BlockId(hash),
            validity,
        })
    }
}

/// Whether a part for round `part` of the current height is checked now, the engine being in
/// round `current`: at most [`MAX_ROUNDS_AHEAD`] rounds ahead (a part without a round is judged
/// as before, by its proposer and signature).
fn round_is_near(part: Round, current: Round) -> bool {
    part.as_u32().is_none_or(|r| r <= current.as_u32().unwrap_or(0).saturating_add(MAX_ROUNDS_AHEAD))
}

/// The first block part of each round, to spot a proposer that signs a second block for the
/// same round: the proposal flood every validator would otherwise execute for free.
#[derive(Debug, Default)]
pub struct PartWitness {
    first: HashMap<(Height, u32), SignedProposalClaim>,
    reported: HashSet<(Height, u32)>,
}

impl PartWitness {
    /// Whether the double proposal of (height, round) was reported already.
    pub fn has_reported(&self, slot: (Height, u32)) -> bool {
        self.reported.contains(&slot)
    }

    /// Notes `part`, whose signature by the round's proposer `proposer` was checked, and returns
    /// the evidence of a double proposal if its round's first part carried another block: once
    /// per round, however many more blocks the proposer signs.
    pub fn observe(
        &mut self,
        chain_id: &str,
        part: &BlockPart,
        proposer: trellis_proto::PublicKey,
    ) -> Option<DoubleProposalEvidence> {
        let round = part.round.as_u32()?;
        let slot = (Height(part.height.0), round);
        let claim = SignedProposalClaim { claim: ProposalClaim::Part(part.header()), signature: part.signature };
        let Some(first) = self.first.get(&slot) else {
            self.first.insert(slot, claim);
            return None;
        };
        if first.claim == claim.claim || self.reported.contains(&slot) {
            return None;
        }
        let evidence = DoubleProposalEvidence { proposer, first: first.clone(), second: claim };
        match evidence.verify(chain_id) {
            Ok(()) => {
                self.reported.insert(slot);
                Some(evidence)
            }
            // The same block re-signed with another valid round: one block, not two.
            Err(error) => {
                tracing::debug!(target: "node::consensus", height = %part.height, round, %error, "a second part of the round is no double proposal");
                None
            }
        }
    }
}

/// Signed `ReportEquivocation` and `ReportDoubleProposal` transactions, nonces from
/// `first_nonce` up, one for each double vote or double proposal in `evidence` by a member of
/// `validators` that the chain will accept as proof.
pub fn evidence_transactions(
    chain_id: &str,
    validators: &ValidatorSet,
    evidence: &MisbehaviorEvidence<TrellisContext>,
    reporter: &Keypair,
    first_nonce: u64,
) -> Vec<trellis_proto::SignedTx> {
    sign_reports(chain_id, evidence_reports(chain_id, validators, evidence), reporter, first_nonce)
}

/// The reports `evidence` supports, unsigned: evidence that would not verify on chain (a
/// validator outside the set, a pair the chain does not count) is logged and left out.
fn evidence_reports(
    chain_id: &str,
    validators: &ValidatorSet,
    evidence: &MisbehaviorEvidence<TrellisContext>,
) -> Vec<TxKind> {
    let mut reports = Vec::new();
    for (address, pairs) in evidence.votes.iter() {
        let Some(validator) = validators.get(address) else { continue };
        for (first, second) in pairs {
            let (Some(a), Some(b)) =
                (proto_signed(&first.message, &first.signature), proto_signed(&second.message, &second.signature))
            else {
                continue;
            };
            let evidence = EquivocationEvidence { validator: validator.key, first: a, second: b };
            match evidence.verify(chain_id) {
                Ok(()) => reports.push(TxKind::ReportEquivocation(evidence)),
                Err(error) => {
                    tracing::warn!(target: "node::consensus", %address, %error, "engine evidence does not verify; not reported")
                }
            }
        }
    }
    // The chain slashes a double proposal once per round whatever pair proves it.
    let mut proposal_rounds = HashSet::new();
    for (address, pairs) in evidence.proposals.iter() {
        let Some(validator) = validators.get(address) else { continue };
        for (first, second) in pairs {
            let claim = |signed: &arc_malachitebft_app_channel::app::types::core::SignedProposal<TrellisContext>| {
                SignedProposalClaim {
                    claim: ProposalClaim::Proposal(signed.message.header()),
                    signature: from_consensus_signature(&signed.signature),
                }
            };
            let evidence =
                DoubleProposalEvidence { proposer: validator.key, first: claim(first), second: claim(second) };
            match evidence.verify(chain_id) {
                Ok(()) if proposal_rounds.insert((address.0, evidence.slot())) => {
                    reports.push(TxKind::ReportDoubleProposal(Box::new(evidence)))
                }
                Ok(()) => {}
                Err(error) => {
                    tracing::warn!(target: "node::consensus", %address, %error, "engine proposal evidence does not verify; not reported")
                }
            }
        }
    }
    reports
}

/// `reports` as transactions signed by `reporter`, nonces from `first_nonce` up.
fn sign_reports(
    chain_id: &str,
    reports: Vec<TxKind>,
    reporter: &Keypair,
    first_nonce: u64,
) -> Vec<trellis_proto::SignedTx> {
    reports
        .into_iter()
        .zip(first_nonce..)
        .map(|(kind, nonce)| {
            Transaction { sender: reporter.public_key(), nonce, fee: Amount(EVIDENCE_FEE), kind }
                .sign(chain_id, reporter)
        })
        .collect()
}

/// The validator an equivocation report accuses.
fn reported_offender(kind: &TxKind) -> Option<Address> {
    match kind {
        TxKind::ReportEquivocation(evidence) => Some(evidence.validator.address()),
        TxKind::ReportDoubleProposal(evidence) => Some(evidence.proposer.address()),
        _ => None,
    }
}

/// The chain's form of a signed consensus vote.
fn proto_signed(vote: &ConsensusVote, signature: &arc_malachitebft_signing_ed25519::Signature) -> Option<SignedVote> {
    Some(SignedVote { vote: vote.to_proto()?, signature: from_consensus_signature(signature) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_of_rounds_far_ahead_wait_until_their_round_is_near() {
        let (zero, three) = (Round::new(0), Round::new(3));
        assert!(round_is_near(Round::new(0), zero));
        assert!(round_is_near(Round::new(MAX_ROUNDS_AHEAD), zero));
        assert!(!round_is_near(Round::new(MAX_ROUNDS_AHEAD + 1), zero));
        assert!(!round_is_near(Round::new(u32::MAX), three), "a proposer's far future rounds are not executed now");
        assert!(round_is_near(Round::new(1), three), "an earlier round's part is still checked");
        assert!(round_is_near(Round::new(2), Round::Nil), "before the first round starts, round 0 is current");
        assert!(!round_is_near(Round::new(3), Round::Nil));
        assert!(round_is_near(Round::Nil, three));
    }
}
