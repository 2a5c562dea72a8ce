//! One simulated validator: Malachite's Tendermint driver (the real state machine, fed the
//! project's `TrellisContext`), wrapped the way the engine's consensus core wraps it, over the
//! node's application ([`super::chain`]).
//!
//! What the wrapper does, after `arc-malachitebft-core-consensus` 0.8.2 (`handle/*.rs`):
//! - drops messages for past heights, buffers those for the next few, drops rounds more than
//!   [`MAX_FUTURE_ROUNDS`] ahead, and checks every signature and the proposer of every proposal;
//! - turns driver outputs into effects: sign and broadcast proposals and votes, schedule
//!   timeouts (replacing a pending one of the same kind; a new round cancels them all), build a
//!   value on `GetValue`, publish the polka certificate with a re-proposal, rebroadcast the last
//!   votes and the round certificate on the rebroadcast timeout;
//! - on `Decide`, builds the commit certificate from the precommits, commits the block, turns
//!   double votes and double proposals the driver saw into `ReportEquivocation` and
//!   `ReportDoubleProposal` transactions, and starts the next
//!   height in a separate step (the engine's `Finalized` → `StartHeight`);
//! - keeps a write-ahead log of every input of the current height (proposals with their
//!   validity, votes, timeouts, the value it proposed). A restarted validator replays it and
//!   signs nothing that differs from what it signed before (it reuses its recorded vote, or
//!   refuses to sign): the engine's `sign_or_replay_vote`;
//! - catches up by value sync: status messages, then a block and its commit certificate, fed to
//!   the driver as `CommitCertificate` then `SyncDecision`.
//!
//! Byzantine validators run the same code with a [`Coalition`]'s strategy on top: equivocation
//! (a second proposal and conflicting votes shown to some honest nodes) and proposals that the
//! honest application check rejects (a forged aggregate or a false state root), which the
//! coalition's members prevote and precommit anyway. They also cover for poisoners in verdicts.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::rc::Rc;
use std::task::{Context as TaskContext, Poll, Waker};

use arc_malachitebft_app_channel::app::types::core::{
    self as mc, Context as _, ExtendedCommitCertificate, LinearTimeouts, NilOrVal, PolkaCertificate, Round, Timeout,
    TimeoutKind, Validity, VoteType,
};
use arc_malachitebft_app_channel::{Signer, Verifier};
use arc_malachitebft_core_driver::{Driver, Input, Output, ThresholdParams};
use trellis_consensus::round_cap;
use trellis_consensus::signing::from_consensus_signature;
use trellis_consensus::{
    BlockHeight, BlockId, ConsensusVote, Proposal, TrellisContext, TrellisSigner, TrellisVerifier, ValidatorAddress,
    ValidatorSet,
};
use trellis_contracts::state::BeaconOnion;
use trellis_proto::{
    Address, Amount, Block, DoubleProposalEvidence, Encode, EquivocationEvidence, Hash, Keypair, SignedTx, Transaction,
    TxKind, Verdict, VerdictOutcome,
};
use trellis_protocol::beacon::{self, Onion};

use super::chain::{beacon_after, Executed, Ledger, Mempool};
use super::network::{NodeId, Time};
use super::rng::SimRng;
use super::workload::{finding, FEE};
use trellis_protocol::behaviour::Behaviour;

type Ctx = TrellisContext;
pub type SignedVote = mc::SignedVote<Ctx>;
pub type SignedProposal = mc::SignedProposal<Ctx>;
pub type Certificate = ExtendedCommitCertificate<Ctx>;

/// Heights beyond the current one for which messages are kept until the node gets there.
const FUTURE_HEIGHTS: u64 = 2;
/// Most messages buffered for future heights.
const MAX_BUFFERED: usize = 4_000;
/// The engine's `MAX_FUTURE_ROUND_LOOKAHEAD`.
pub const MAX_FUTURE_ROUNDS: i64 = 10;
/// How often a node tells its peers its committed height (and re-checks its duties).
pub const STATUS_INTERVAL_MS: Time = 500;
/// Least time between two sync requests.
const SYNC_RETRY_MS: Time = 250;
/// Blocks after which a validator's own transaction still not taken is gossiped again.
const RESEND_BLOCKS: u64 = 5;

/// What validators send each other.
#[derive(Debug, Clone)]
pub enum Message {
    /// A signed proposal and the block it names (the engine streams the block as a signed part;
    /// here it travels whole with the proposal).
    Proposal {
        proposal: SignedProposal,
        block: Rc<Block>,
    },
    Vote(SignedVote),
    /// The votes of a round certificate, sent on entering a round and on rebroadcast.
    RoundVotes(Vec<SignedVote>),
    PolkaCertificate(PolkaCertificate<Ctx>),
    /// "I have committed up to `height`."
    Status {
        height: u64,
    },
    SyncRequest {
        height: u64,
    },
    SyncResponse {
        block: Rc<Block>,
        certificate: Certificate,
    },
    Tx(SignedTx),
}

impl Message {
    pub fn kind(&self) -> &'static str {
        match self {
            Message::Proposal { .. } => "proposal",
            Message::Vote(_) => "vote",
            Message::RoundVotes(_) => "round-votes",
            Message::PolkaCertificate(_) => "polka-certificate",
            Message::Status { .. } => "status",
            Message::SyncRequest { .. } => "sync-request",
            Message::SyncResponse { .. } => "sync-response",
            Message::Tx(_) => "tx",
        }
    }

    /// Feeds what identifies this message into the run's trace hash.
    pub fn fingerprint(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.kind().as_bytes());
        match self {
            Message::Proposal { proposal, block } => {
                out.extend_from_slice(&proposal.signing_bytes());
                block.hash().encode_to(out);
            }
            Message::Vote(vote) => vote_fingerprint(vote, out),
            Message::RoundVotes(votes) => votes.iter().for_each(|v| vote_fingerprint(v, out)),
            Message::PolkaCertificate(cert) => {
                cert.height.0.encode_to(out);
                out.extend_from_slice(&cert.round.as_i64().to_le_bytes());
                cert.value_id.0.encode_to(out);
                (cert.polka_signatures.len() as u64).encode_to(out);
            }
            Message::Status { height } | Message::SyncRequest { height } => height.encode_to(out),
            Message::SyncResponse { block, certificate } => {
                block.hash().encode_to(out);
                out.extend_from_slice(&certificate.round.as_i64().to_le_bytes());
            }
            Message::Tx(tx) => tx.hash().encode_to(out),
        }
    }

    /// Short description for the verbose trace.
    pub fn describe(&self) -> String {
        match self {
            Message::Proposal { proposal, block } => {
                format!(
                    "proposal h{} r{} pol{} {} ({} txs)",
                    proposal.height,
                    proposal.round.as_i64(),
                    proposal.pol_round.as_i64(),
                    short(&block.hash()),
                    block.txs.len()
                )
            }
            Message::Vote(vote) => describe_vote(&vote.message),
            Message::RoundVotes(votes) => format!("{} round-certificate votes", votes.len()),
            Message::PolkaCertificate(cert) => {
                format!("polka h{} r{} {}", cert.height, cert.round.as_i64(), short(&cert.value_id.0))
            }
            Message::Status { height } => format!("status committed={height}"),
            Message::SyncRequest { height } => format!("sync-request h{height}"),
            Message::SyncResponse { block, .. } => {
                format!("sync-response h{} {}", block.header.height, short(&block.hash()))
            }
            Message::Tx(tx) => format!("tx {} nonce {}", tx.tx.kind.name(), tx.tx.nonce),
        }
    }
}

fn vote_fingerprint(vote: &SignedVote, out: &mut Vec<u8>) {
    if let Some(proto) = vote.message.to_proto() {
        proto.encode_to(out);
    }
    out.extend_from_slice(&from_consensus_signature(&vote.signature).0);
}

pub fn short(hash: &Hash) -> String {
    hash.to_hex()[..8].to_string()
}

pub fn describe_vote(vote: &ConsensusVote) -> String {
    let step = match vote.vote_type {
        VoteType::Prevote => "prevote",
        VoteType::Precommit => "precommit",
    };
    let value = match vote.value {
        NilOrVal::Nil => "nil".to_string(),
        NilOrVal::Val(id) => short(&id.0),
    };
    format!("{step} h{} r{} {value} by {}", vote.height, vote.round.as_i64(), &vote.validator.0.to_string()[..8])
}

/// Where a message goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dest {
    /// Every other node.
    Others,
    Node(NodeId),
    Nodes(Vec<NodeId>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum TimerKind {
    Propose,
    Prevote,
    Precommit,
    Rebroadcast,
    /// The proposer's block is ready (block building takes simulated time).
    Build,
    Status,
}

/// A timer of one node; a newer timer with the same key replaces the older.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct TimerKey {
    pub height: u64,
    pub round: u32,
    pub kind: TimerKind,
}

impl TimerKey {
    const STATUS: TimerKey = TimerKey { height: 0, round: 0, kind: TimerKind::Status };
}

/// What a node tells the simulator besides sends and timers.
#[derive(Debug, Clone)]
pub enum Note {
    Committed(Executed),
    SignedVote(ConsensusVote),
    DecidedUnexecutable {
        height: u64,
        block: Hash,
        reason: String,
    },
    /// The driver returned an error: a harness bug, never expected.
    EngineError(String),
}

/// Effects of one step of a node.
#[derive(Debug, Default)]
pub struct Outbox {
    pub sends: Vec<(Dest, Message)>,
    /// (delay, key, generation)
    pub timers: Vec<(Time, TimerKey, u64)>,
    pub notes: Vec<Note>,
    /// The node committed a block and starts the next height in a step of its own.
    pub start_next_height: bool,
}

/// Counters for the report.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeStats {
    pub blocks_built: u64,
    pub equivocations_sent: u64,
    pub invalid_proposals: u64,
    /// Invalid proposals carrying a forged aggregate (the rest carry a false state root).
    pub forged_aggregates: u64,
    pub wal_replays: u64,
    pub replay_refusals: u64,
    pub sync_decisions: u64,
    pub evidence_reported: u64,
    /// Of those, double proposals (`ReportDoubleProposal`).
    pub proposal_reports: u64,
    /// Versions of its own block (other time, other transactions) a Byzantine proposer built
    /// to grind the beacon, and how many of them moved it (the beacon admits no such choice).
    pub grind_variants: u64,
    pub grind_moved_beacon: u64,
    /// Blocks built with a beacon reveal (an onion committed and active).
    pub beacon_reveals: u64,
    /// Transactions this node's pool refused because their sender could not pay.
    pub refused_cannot_pay: u64,
    /// Duties (verdicts, aggregates, commitments, reveals, reports) its pool refused for room.
    pub duties_refused: u64,
    /// A flooding proposer's extra blocks sent (each to half the honest validators).
    pub flood_blocks_sent: u64,
    /// Proposals this node did not execute because it held the round's cap of blocks already.
    pub proposals_not_executed: u64,
    /// The most distinct blocks of one round this node executed.
    pub most_blocks_executed_in_a_round: usize,
    /// Heights this node decided in a round after the first.
    pub decided_after_round_zero: u64,
}

/// Onion layers a simulated validator commits (runs are far shorter).
const SIM_ONION_LAYERS: u32 = 4096;
/// Versions of its block a grinding proposer tries.
const GRIND_VARIANTS: u64 = 4;

/// The Byzantine validators' shared plan.
#[derive(Debug, Default)]
pub struct Coalition {
    pub addresses: BTreeSet<Address>,
    /// Honest nodes shown the coalition's second face (the other proposal, the other votes).
    pub second_face: BTreeSet<NodeId>,
    pub equivocate: bool,
    pub invalid_proposals: bool,
    /// Valid blocks a proposer signs for its round besides its real one, sent to the second face
    /// ahead of the real one (a proposal flood).
    pub flood_blocks: usize,
    /// Members send no precommit (so a round some honest validators could not vote in stalls).
    pub withhold_precommits: bool,
    /// First-face block → the block shown to the second face in its place.
    pub(super) twin_of: BTreeMap<BlockId, Rc<Block>>,
    /// Real block → the flood sent with it.
    pub(super) flood_of: BTreeMap<BlockId, Vec<Rc<Block>>>,
}

/// Signature checks are pure, so one memo serves every node: it changes speed, not results.
#[derive(Debug, Default)]
pub struct SignatureMemo {
    verified: BTreeSet<[u8; 32]>,
}

/// Who a node is: fixed for the whole run.
pub struct Identity {
    pub id: NodeId,
    /// Nodes in the run (ids are `0..nodes`).
    pub nodes: usize,
    pub key: Keypair,
    pub address: ValidatorAddress,
    pub byzantine: bool,
    pub ctx: TrellisContext,
    pub signer: TrellisSigner,
    pub verifier: TrellisVerifier,
    pub timeouts: LinearTimeouts,
    /// Time a proposer takes to build a block, drawn in this range.
    pub build_ms: (Time, Time),
    /// Whether the WAL survives a crash (turned off only to show the checker catches it).
    pub durable_wal: bool,
    pub coalition: Rc<RefCell<Coalition>>,
    pub ground_truth: Rc<BTreeMap<Address, Behaviour>>,
    pub memo: Rc<RefCell<SignatureMemo>>,
}

#[derive(Debug, Clone)]
enum WalEntry {
    Proposal { proposal: SignedProposal, block: Rc<Block>, validity: Validity },
    Vote(SignedVote),
    Timeout(Timeout),
    ProposedValue { round: Round, block: Rc<Block> },
    PolkaCertificate(PolkaCertificate<Ctx>),
}

/// The write-ahead log of the current height: on "disk", survives a crash.
#[derive(Debug, Clone, Default)]
struct Wal {
    height: u64,
    entries: Vec<WalEntry>,
}

struct Value {
    block: Rc<Block>,
    validity: Validity,
    executed: Option<Executed>,
}

struct OwnTx {
    tx: SignedTx,
    sent_at_height: u64,
}

/// Everything a crash loses.
struct Engine {
    driver: Driver<Ctx>,
    validators: ValidatorSet,
    height: u64,
    values: BTreeMap<BlockId, Value>,
    buffered: BTreeMap<u64, Vec<(NodeId, Message)>>,
    buffered_count: usize,
    last_prevote: Option<SignedVote>,
    last_precommit: Option<SignedVote>,
    timers: BTreeMap<TimerKey, u64>,
    next_timer: u64,
    mempool: Mempool,
    own_tx: Option<OwnTx>,
    /// Equivocation reports to send: `ReportEquivocation` or `ReportDoubleProposal`.
    pending_evidence: Vec<TxKind>,
    /// (offender, height, round, step) already reported; step 0 prevote, 1 precommit, 3 proposal
    /// (the contracts' markers).
    reported: BTreeSet<(Address, u64, u32, u8)>,
    peer_heights: BTreeMap<NodeId, u64>,
    last_sync_request: Option<Time>,
    replaying: bool,
}

/// A simulated validator: its disk (ledger, WAL) and, while up, its engine.
pub struct Node {
    pub me: Identity,
    pub ledger: Ledger,
    wal: Wal,
    engine: Option<Engine>,
    pub incarnation: u32,
    rng: SimRng,
    pub stats: NodeStats,
    /// This validator's onions by generation (derived from its key, so a crash loses nothing).
    onions: BTreeMap<u32, Rc<Onion>>,
}

impl Node {
    pub fn new(me: Identity, ledger: Ledger, rng: SimRng) -> Self {
        Self {
            me,
            ledger,
            wal: Wal::default(),
            engine: None,
            incarnation: 0,
            rng,
            stats: NodeStats::default(),
            onions: BTreeMap::new(),
        }
    }

    pub fn is_up(&self) -> bool {
        self.engine.is_some()
    }

    /// Starts (or restarts) the engine from the disk: ledger head, then WAL replay.
    pub fn start(&mut self, now: Time, out: &mut Outbox) {
        assert!(self.engine.is_none(), "a running node is not started twice");
        let height = self.ledger.height() + 1;
        let validators = self.ledger.validator_set();
        let driver = Driver::new(
            self.me.ctx.clone(),
            BlockHeight(height),
            validators.clone(),
            self.me.address,
            ThresholdParams::default(),
        );
        self.engine = Some(Engine {
            driver,
            validators,
            height,
            values: BTreeMap::new(),
            buffered: BTreeMap::new(),
            buffered_count: 0,
            last_prevote: None,
            last_precommit: None,
            timers: BTreeMap::new(),
            next_timer: 0,
            mempool: Mempool::default(),
            own_tx: None,
            pending_evidence: Vec::new(),
            reported: BTreeSet::new(),
            peer_heights: BTreeMap::new(),
            last_sync_request: None,
            replaying: false,
        });
        if self.wal.height != height {
            self.wal = Wal { height, entries: Vec::new() };
        }
        let replay = self.wal.entries.clone();
        let mut run = self.running(now, out);
        run.schedule(TimerKey::STATUS, STATUS_INTERVAL_MS);
        run.enter_round_zero();
        if !replay.is_empty() {
            run.stats.wal_replays += 1;
            run.e.replaying = true;
            for entry in replay {
                run.replay(entry);
            }
            run.e.replaying = false;
            run.rebroadcast();
        }
        run.refresh_duties();
    }

    /// Loses everything but the disk. A WAL that is not durable is lost too.
    pub fn crash(&mut self) {
        self.engine = None;
        self.incarnation += 1;
        if !self.me.durable_wal {
            self.wal.entries.clear();
        }
    }

    /// Moves to the next height after a commit (the engine's `Finalized` → `StartHeight`).
    pub fn start_next_height(&mut self, now: Time, out: &mut Outbox) {
        if self.engine.as_ref().is_some_and(|e| e.height == self.ledger.height()) {
            self.running(now, out).enter_next_height();
        }
    }

    pub fn on_message(&mut self, now: Time, from: NodeId, message: Message, out: &mut Outbox) {
        if self.engine.is_some() {
            self.running(now, out).on_message(from, message);
        }
    }

    /// Whether a timer is still the latest of its key (a newer one, or a new round, replaces it).
    pub fn timer_is_current(&self, key: &TimerKey, generation: u64) -> bool {
        self.engine.as_ref().is_some_and(|e| e.timers.get(key) == Some(&generation))
    }

    /// A timer fired; it counts only if it is still current.
    pub fn on_timer(&mut self, now: Time, key: TimerKey, generation: u64, out: &mut Outbox) {
        if self.timer_is_current(&key, generation) {
            self.running(now, out).on_timer(key);
        }
    }

    fn running<'a>(&'a mut self, now: Time, out: &'a mut Outbox) -> Running<'a> {
        Running {
            me: &self.me,
            ledger: &mut self.ledger,
            wal: &mut self.wal,
            e: self.engine.as_mut().expect("only a running node runs"), // ok: every caller checked
            out,
            now,
            rng: &mut self.rng,
            stats: &mut self.stats,
            onions: &mut self.onions,
        }
    }
}

/// Polls a future that never waits (signing and verification are synchronous behind the
/// engine's async traits) to completion without a runtime.
fn ready<F: Future>(future: F) -> F::Output {
    let mut future = std::pin::pin!(future);
    match future.as_mut().poll(&mut TaskContext::from_waker(Waker::noop())) {
        Poll::Ready(output) => output,
        Poll::Pending => panic!("signing and verification never wait"),
    }
}

/// A running node for the length of one step.
struct Running<'a> {
    me: &'a Identity,
    ledger: &'a mut Ledger,
    wal: &'a mut Wal,
    e: &'a mut Engine,
    out: &'a mut Outbox,
    now: Time,
    rng: &'a mut SimRng,
    stats: &'a mut NodeStats,
    onions: &'a mut BTreeMap<u32, Rc<Onion>>,
}

impl Running<'_> {
    /// Onion `generation` of this validator, seeded from its key.
    fn onion(&mut self, generation: u32) -> Rc<Onion> {
        let seed = beacon::onion_seed(&self.me.key.seed(), generation);
        self.onions
            .entry(generation)
            .or_insert_with(|| Rc::new(Onion::new(seed, SIM_ONION_LAYERS).expect("a valid layer count"))) // ok: constant
            .clone()
    }

    /// What this validator's next block reveals: its onion's next layer, once active.
    fn beacon_reveal(&mut self) -> Hash {
        let height = self.ledger.height() + 1;
        match self.ledger.beacon_onion(&self.me.address.0) {
            Some(held) if held.active_at(trellis_proto::Height(height)) => {
                self.onion(held.generation).reveal(held.remaining).unwrap_or(Hash::ZERO)
            }
            _ => Hash::ZERO,
        }
    }

    fn is_validator(&self) -> bool {
        self.e.validators.contains(&self.me.address)
    }

    fn send(&mut self, dest: Dest, message: Message) {
        // Replaying the WAL re-derives what was already sent before the crash.
        if !self.e.replaying {
            self.out.sends.push((dest, message));
        }
    }

    fn wal_append(&mut self, entry: WalEntry) {
        // Between a commit and the next height's start, inputs for the decided height still
        // arrive; they no longer matter and must not enter the next height's log.
        if !self.e.replaying && self.wal.height == self.e.height {
            self.wal.entries.push(entry);
        }
    }

    fn schedule(&mut self, key: TimerKey, delay: Time) {
        self.e.next_timer += 1;
        self.e.timers.insert(key, self.e.next_timer);
        self.out.timers.push((delay, key, self.e.next_timer));
    }

    fn cancel(&mut self, key: &TimerKey) {
        self.e.timers.remove(key);
    }

    fn proposer_of(&self, round: Round) -> ValidatorAddress {
        self.me.ctx.select_proposer(&self.e.validators, BlockHeight(self.e.height), round).address
    }

    // ---- inputs -------------------------------------------------------------------------

    fn on_message(&mut self, from: NodeId, message: Message) {
        match message {
            Message::Proposal { proposal, block } => self.on_proposal(from, proposal, block),
            Message::Vote(vote) => self.on_vote(from, vote),
            Message::RoundVotes(votes) => self.on_round_votes(from, votes),
            Message::PolkaCertificate(certificate) => self.on_polka_certificate(certificate),
            Message::Status { height } => self.on_status(from, height),
            Message::SyncRequest { height } => {
                if let (Some(block), Some(certificate)) = (self.ledger.block(height), self.ledger.certificate(height)) {
                    let response = Message::SyncResponse { block: block.clone(), certificate: certificate.clone() };
                    self.send(Dest::Node(from), response);
                }
            }
            Message::SyncResponse { block, certificate } => self.on_synced_value(block, certificate),
            Message::Tx(tx) => {
                let duty = trellis_mempool::is_duty(&tx.tx.kind);
                let result = self.e.mempool.insert(tx, self.ledger);
                self.count_refusal(duty, result);
            }
        }
    }

    fn count_refusal(&mut self, duty: bool, result: Result<(), trellis_mempool::MempoolError>) {
        match result {
            Err(trellis_mempool::MempoolError::CannotPay { .. }) => self.stats.refused_cannot_pay += 1,
            Err(trellis_mempool::MempoolError::Full { .. }) if duty && !self.me.byzantine => {
                self.stats.duties_refused += 1
            }
            _ => {}
        }
    }

    /// Keeps a message for a later height; a message from ahead also means a peer is ahead.
    fn buffer(&mut self, from: NodeId, height: u64, message: Message) {
        if height <= self.e.height + FUTURE_HEIGHTS && self.e.buffered_count < MAX_BUFFERED {
            self.e.buffered.entry(height).or_default().push((from, message));
            self.e.buffered_count += 1;
        }
        self.request_sync(from);
    }

    fn on_vote(&mut self, from: NodeId, vote: SignedVote) {
        let height = vote.height.0;
        if height < self.e.height {
            return;
        }
        if height > self.e.height {
            return self.buffer(from, height, Message::Vote(vote));
        }
        if vote.round.as_i64() > self.e.driver.round().as_i64() + MAX_FUTURE_ROUNDS {
            return;
        }
        self.accept_vote(vote);
    }

    /// A vote of the current height, within reach: checked, logged, fed to the driver.
    fn accept_vote(&mut self, vote: SignedVote) {
        let keeper = self.e.driver.votes();
        if keeper.has_vote(&vote) || keeper.is_saturated_conflict(&vote) {
            return;
        }
        let Some(validator) = self.e.validators.get(&vote.validator) else { return };
        let key = validator.consensus_key;
        if !self.verify_vote(&vote.message, &vote.signature, &key) {
            return;
        }
        self.wal_append(WalEntry::Vote(vote.clone()));
        self.apply(Input::Vote(vote));
    }

    /// A round certificate's votes (the engine's `on_round_certificate`): unlike single votes,
    /// they are not bounded by the future-round lookahead, since a certificate holding more than
    /// a third of the power proves honest validators are in that round; each vote is then
    /// applied on its own.
    fn on_round_votes(&mut self, from: NodeId, votes: Vec<SignedVote>) {
        let Some(first) = votes.first() else { return };
        let (height, round) = (first.height, first.round);
        if height.0 > self.e.height {
            return self.request_sync(from);
        }
        if height.0 < self.e.height || votes.iter().any(|v| v.height != height || v.round != round) {
            return;
        }
        let keeper = self.e.driver.votes();
        let absorbed = |v: &SignedVote| {
            keeper.has_vote(v) || keeper.is_saturated_conflict(v) || keeper.has_equivocation_evidence(v)
        };
        if votes.iter().all(absorbed) {
            return;
        }
        let mut signers = BTreeSet::new();
        let mut power: u64 = 0;
        for vote in &votes {
            let Some(validator) = self.e.validators.get(&vote.validator) else { return };
            if !self.verify_vote(&vote.message, &vote.signature, &validator.consensus_key) {
                return;
            }
            if signers.insert(vote.validator) {
                power += validator.power;
            }
        }
        if 3 * u128::from(power) <= u128::from(self.total_power()) {
            return;
        }
        for vote in votes {
            self.accept_vote(vote);
        }
    }

    fn on_proposal(&mut self, from: NodeId, proposal: SignedProposal, block: Rc<Block>) {
        let height = proposal.height.0;
        if height < self.e.height {
            return;
        }
        if height > self.e.height {
            return self.buffer(from, height, Message::Proposal { proposal, block });
        }
        let round = proposal.round;
        if round.as_i64() > self.e.driver.round().as_i64() + MAX_FUTURE_ROUNDS {
            return;
        }
        if proposal.pol_round.is_defined() && proposal.pol_round >= round {
            return;
        }
        if self.e.driver.proposals_and_validities_for_round(round).iter().any(|(held, _)| held == &proposal) {
            return;
        }
        if proposal.proposer != self.proposer_of(round) || block.hash() != proposal.value.0 {
            return;
        }
        let Some(validator) = self.e.validators.get(&proposal.proposer) else { return };
        let key = validator.consensus_key;
        if !self.verify_proposal(&proposal, &key) {
            return;
        }
        // As the node: at most the round's cap of distinct blocks is executed.
        let held: Vec<BlockId> =
            self.e.driver.proposals_and_validities_for_round(round).iter().map(|(held, _)| held.value).collect();
        if !round_cap::executes_proposal(&held, &proposal.value) {
            self.stats.proposals_not_executed += 1;
            return;
        }
        let distinct = held.iter().chain([&proposal.value]).collect::<BTreeSet<_>>().len();
        self.stats.most_blocks_executed_in_a_round = self.stats.most_blocks_executed_in_a_round.max(distinct);
        let builder = if proposal.pol_round.is_nil() { Some(proposal.proposer.0) } else { None };
        let validity = self.validity(&block, builder);
        self.wal_append(WalEntry::Proposal { proposal: proposal.clone(), block, validity });
        self.apply(Input::Proposal(proposal, validity));
    }

    fn on_polka_certificate(&mut self, certificate: PolkaCertificate<Ctx>) {
        if certificate.height.0 != self.e.height
            || self.e.driver.polka_certificate(certificate.round, &certificate.value_id).is_some()
            || !self.certified(
                certificate.height,
                certificate.round,
                VoteType::Prevote,
                &certificate.value_id,
                certificate.polka_signatures.iter().map(|s| (s.address, s.signature)),
            )
        {
            return;
        }
        self.wal_append(WalEntry::PolkaCertificate(certificate.clone()));
        self.apply(Input::PolkaCertificate(certificate));
    }

    fn on_status(&mut self, from: NodeId, height: u64) {
        self.e.peer_heights.insert(from, height);
        if height >= self.e.height {
            self.request_sync(from);
        }
    }

    fn request_sync(&mut self, peer: NodeId) {
        if self.e.last_sync_request.is_some_and(|at| self.now < at + SYNC_RETRY_MS) {
            return;
        }
        if self.e.peer_heights.get(&peer).is_some_and(|&h| h < self.e.height) {
            return;
        }
        self.e.last_sync_request = Some(self.now);
        self.send(Dest::Node(peer), Message::SyncRequest { height: self.e.height });
    }

    /// A decided block and its certificate from a peer: the engine's sync decision path.
    fn on_synced_value(&mut self, block: Rc<Block>, certificate: Certificate) {
        let id = certificate.value_id;
        if certificate.height.0 != self.e.height || self.e.driver.step_is_commit() || block.hash() != id.0 {
            return;
        }
        let signatures = certificate.commit_signatures.iter().map(|s| (s.address, s.signature));
        if !self.certified(certificate.height, certificate.round, VoteType::Precommit, &id, signatures) {
            return;
        }
        if !self.e.values.contains_key(&id) {
            // Decided by a quorum already: the aggregates are not recomputed (the node does the same).
            let (validity, executed) = match self.ledger.execute(&block, None, false) {
                Ok(executed) => (Validity::Valid, Some(executed)),
                Err(_) => (Validity::Invalid, None),
            };
            self.e.values.insert(id, Value { block, validity, executed });
        }
        if self.e.values[&id].validity.is_invalid() {
            return;
        }
        let round = certificate.round;
        self.apply(Input::CommitCertificate(certificate));
        if !self.e.driver.step_is_commit() {
            let proposer = self.proposer_of(round);
            let proposal = self.me.ctx.new_proposal(BlockHeight(self.e.height), round, id, Round::Nil, proposer);
            self.apply(Input::SyncDecision(proposal));
        }
        if self.e.driver.step_is_commit() {
            self.stats.sync_decisions += 1;
        }
    }

    fn on_timer(&mut self, key: TimerKey) {
        self.e.timers.remove(&key);
        if key.kind == TimerKind::Status {
            let height = self.ledger.height();
            self.send(Dest::Others, Message::Status { height });
            self.refresh_duties();
            return self.schedule(TimerKey::STATUS, STATUS_INTERVAL_MS);
        }
        let round = Round::new(key.round);
        if key.height != self.e.height || self.e.driver.round() != round {
            return;
        }
        let kind = match key.kind {
            TimerKind::Propose => TimeoutKind::Propose,
            TimerKind::Prevote => TimeoutKind::Prevote,
            TimerKind::Precommit => TimeoutKind::Precommit,
            TimerKind::Rebroadcast => {
                self.rebroadcast();
                let delay = self.duration(Timeout::rebroadcast(round));
                return self.schedule(key, delay);
            }
            TimerKind::Build => return self.build_and_propose(round),
            TimerKind::Status => unreachable!("handled above"),
        };
        let timeout = Timeout::new(round, kind);
        self.wal_append(WalEntry::Timeout(timeout));
        self.apply(Input::TimeoutElapsed(timeout));
    }

    fn replay(&mut self, entry: WalEntry) {
        match entry {
            WalEntry::Proposal { proposal, block, validity } => {
                if !self
                    .e
                    .driver
                    .proposals_and_validities_for_round(proposal.round)
                    .iter()
                    .any(|(held, _)| held == &proposal)
                {
                    self.e.values.entry(proposal.value).or_insert(Value { block, validity, executed: None });
                    self.apply(Input::Proposal(proposal, validity));
                }
            }
            WalEntry::Vote(vote) => {
                if !self.e.driver.votes().has_vote(&vote) {
                    self.apply(Input::Vote(vote));
                }
            }
            WalEntry::Timeout(timeout) => {
                if self.e.driver.round() == timeout.round {
                    self.apply(Input::TimeoutElapsed(timeout));
                }
            }
            WalEntry::ProposedValue { round, block } => self.propose_value(round, block),
            WalEntry::PolkaCertificate(certificate) => {
                if self.e.driver.polka_certificate(certificate.round, &certificate.value_id).is_none() {
                    self.apply(Input::PolkaCertificate(certificate));
                }
            }
        }
    }

    // ---- the driver ---------------------------------------------------------------------

    fn enter_round_zero(&mut self) {
        let proposer = self.proposer_of(Round::new(0));
        self.apply(Input::NewRound(BlockHeight(self.e.height), Round::new(0), proposer));
    }

    /// Feeds one input to the driver and carries out its outputs (`apply_driver_input`).
    fn apply(&mut self, input: Input<Ctx>) {
        match &input {
            Input::NewRound(_, round, _) => {
                self.e.last_prevote = None;
                self.e.last_precommit = None;
                self.e.timers.retain(|key, _| key.kind == TimerKind::Status);
                let round = *round;
                if round > Round::new(0) && self.is_validator() {
                    if let Some(certificate) = self.e.driver.round_certificate() {
                        if certificate.enter_round == round {
                            let votes = certificate.certificate.votes(&self.me.ctx).collect();
                            self.send(Dest::Others, Message::RoundVotes(votes));
                        }
                    }
                }
                let key = TimerKey {
                    height: self.e.height,
                    round: round.as_u32().unwrap_or(0),
                    kind: TimerKind::Rebroadcast,
                };
                let delay = self.duration(Timeout::rebroadcast(round));
                self.schedule(key, delay);
            }
            Input::ProposeValue(round, _) => {
                let key =
                    TimerKey { height: self.e.height, round: round.as_u32().unwrap_or(0), kind: TimerKind::Propose };
                self.cancel(&key);
            }
            _ => {}
        }
        let was_prevote = self.e.driver.step_is_prevote();
        let outputs = match self.e.driver.process(input) {
            Ok(outputs) => outputs,
            Err(error) => return self.out.notes.push(Note::EngineError(format!("node {}: {error}", self.me.id))),
        };
        if !was_prevote && self.e.driver.step_is_prevote() {
            let key = TimerKey {
                height: self.e.height,
                round: self.e.driver.round().as_u32().unwrap_or(0),
                kind: TimerKind::Propose,
            };
            self.cancel(&key);
        }
        for output in outputs {
            self.on_output(output);
        }
    }

    fn on_output(&mut self, output: Output<Ctx>) {
        match output {
            Output::NewRound(height, round) => {
                let proposer = self.proposer_of(round);
                self.apply(Input::NewRound(height, round, proposer));
            }
            Output::Propose(proposal) => self.publish_proposal(proposal),
            Output::Vote(vote) => self.publish_vote(vote),
            Output::Decide(_, proposal) => self.decide(proposal),
            Output::ScheduleTimeout(timeout) => {
                let kind = match timeout.kind {
                    TimeoutKind::Propose => TimerKind::Propose,
                    TimeoutKind::Prevote => TimerKind::Prevote,
                    TimeoutKind::Precommit => TimerKind::Precommit,
                    TimeoutKind::Rebroadcast => TimerKind::Rebroadcast,
                    TimeoutKind::FinalizeHeight(_) => return,
                };
                let key = TimerKey { height: self.e.height, round: timeout.round.as_u32().unwrap_or(0), kind };
                let delay = self.duration(timeout);
                self.schedule(key, delay);
            }
            Output::GetValue(_, round, _) => {
                if !self.is_validator() {
                    return;
                }
                let recorded = self.wal.entries.iter().find_map(|entry| match entry {
                    WalEntry::ProposedValue { round: r, block } if *r == round => Some(block.clone()),
                    _ => None,
                });
                match recorded {
                    // The value proposed before a crash is proposed again, never a new one.
                    Some(block) if !self.e.replaying => self.propose_value(round, block),
                    Some(_) => {} // the WAL's own ProposedValue entry follows in the replay
                    None => {
                        let delay = self.rng.between(self.me.build_ms.0, self.me.build_ms.1);
                        let key = TimerKey {
                            height: self.e.height,
                            round: round.as_u32().unwrap_or(0),
                            kind: TimerKind::Build,
                        };
                        self.schedule(key, delay);
                    }
                }
            }
        }
    }

    fn duration(&self, timeout: Timeout) -> Time {
        self.me.timeouts.duration_for(timeout).as_millis() as Time
    }

    // ---- proposing ----------------------------------------------------------------------

    fn build_and_propose(&mut self, round: Round) {
        if !self.e.driver.step_is_propose() || self.proposer_of(round) != self.me.address {
            return;
        }
        // As the node: never propose an outer update this validator has not recomputed
        // identically (a failing one would be included too, and refused by honest validators).
        let candidates: Vec<SignedTx> = self
            .e
            .mempool
            .candidates(self.ledger)
            .into_iter()
            .filter(|tx| match &tx.tx.kind {
                TxKind::CommitAggregate(aggregate) => {
                    self.ledger.expected_aggregate(aggregate.job, aggregate.round).as_ref() == Some(aggregate)
                }
                _ => true,
            })
            .collect();
        let reveal = self.beacon_reveal();
        let executed = self.ledger.build_block(self.me.address.0, self.now, reveal, candidates.clone());
        self.stats.beacon_reveals += u64::from(reveal != Hash::ZERO);
        if self.me.byzantine {
            self.grind(reveal, &candidates, &executed);
        }
        // As the node: what failed leaves the pool with its sender's later nonces.
        let failed: Vec<SignedTx> = executed.left_out.iter().map(|(tx, _)| tx.clone()).collect();
        self.e.mempool.evict_failed(&failed, Some(&self.me.address.0));
        self.stats.blocks_built += 1;
        let (invalid, equivocate) = {
            let coalition = self.me.coalition.borrow();
            (self.me.byzantine && coalition.invalid_proposals, self.me.byzantine && coalition.equivocate)
        };
        let block = if invalid {
            self.stats.invalid_proposals += 1;
            self.forge_invalid_block(&executed)
        } else {
            executed.block.clone()
        };
        if equivocate {
            // The second face: another block for the same height and round.
            let twin = self.ledger.build_block(self.me.address.0, self.now + 1, reveal, Vec::new()).block;
            self.me.coalition.borrow_mut().twin_of.insert(BlockId(block.hash()), twin);
        }
        let flood_blocks = if self.me.byzantine { self.me.coalition.borrow().flood_blocks } else { 0 };
        if flood_blocks > 0 {
            // Other valid blocks of the same height and round: other times, no transactions.
            let flood = (1..=flood_blocks as u64)
                .map(|k| self.ledger.build_block(self.me.address.0, self.now + k, reveal, Vec::new()).block)
                .collect();
            self.me.coalition.borrow_mut().flood_of.insert(BlockId(block.hash()), flood);
        }
        let executed = (!invalid).then_some(executed);
        self.e
            .values
            .insert(BlockId(block.hash()), Value { block: block.clone(), validity: Validity::Valid, executed });
        self.propose_value(round, block);
    }

    /// A Byzantine proposer grinds: it builds other versions of its block (later times, fewer
    /// transactions) looking for a beacon that samples in the coalition's favour. Counted: how
    /// many versions moved the beacon (the protocol says none can).
    fn grind(&mut self, reveal: Hash, candidates: &[SignedTx], proposed: &Executed) {
        let beacon = beacon_after(proposed);
        for variant in 1..=GRIND_VARIANTS {
            let kept = candidates.len() * (GRIND_VARIANTS - variant) as usize / GRIND_VARIANTS as usize;
            let other =
                self.ledger.build_block(self.me.address.0, self.now + variant * 7, reveal, candidates[..kept].to_vec());
            self.stats.grind_variants += 1;
            self.stats.grind_moved_beacon += u64::from(beacon_after(&other) != beacon);
        }
    }

    /// A block the honest check rejects: a forged aggregate where a round awaits one (the
    /// contracts accept it; recomputing it does not), else a false state root.
    fn forge_invalid_block(&mut self, honest: &Executed) -> Rc<Block> {
        let me = self.me.address.0;
        for (job, round) in self.ledger.active_rounds() {
            let Some(mut aggregate) = self.ledger.expected_aggregate(job.id, round.round) else { continue };
            aggregate.model_hash = Hash(self.rng.bytes32());
            let tx = Transaction {
                sender: self.me.key.public_key(),
                nonce: self.ledger.next_nonce(&me),
                fee: Amount(FEE),
                kind: TxKind::CommitAggregate(aggregate),
            }
            .sign(self.me.ctx.chain_id(), &self.me.key);
            let mut candidates = vec![tx.clone()];
            candidates
                .extend(self.e.mempool.candidates(self.ledger).into_iter().filter(|t| t.tx.sender_address() != me));
            let reveal = self.beacon_reveal();
            let forged = self.ledger.build_block(me, self.now, reveal, candidates);
            if forged.block.txs.contains(&tx) {
                self.stats.forged_aggregates += 1;
                return forged.block;
            }
        }
        let mut block = (*honest.block).clone();
        block.header.state_root = Hash(self.rng.bytes32());
        Rc::new(block)
    }

    fn propose_value(&mut self, round: Round, block: Rc<Block>) {
        let id = BlockId(block.hash());
        self.e.values.entry(id).or_insert_with(|| Value {
            block: block.clone(),
            validity: Validity::Valid,
            executed: None,
        });
        self.wal_append(WalEntry::ProposedValue { round, block });
        self.apply(Input::ProposeValue(round, id));
    }

    fn publish_proposal(&mut self, proposal: Proposal) {
        if !self.is_validator() {
            return;
        }
        let recorded = self.wal.entries.iter().find_map(|entry| match entry {
            WalEntry::Proposal { proposal: p, .. }
                if p.proposer == self.me.address && p.height == proposal.height && p.round == proposal.round =>
            {
                Some(p.clone())
            }
            _ => None,
        });
        let signed = match recorded {
            Some(recorded) if recorded.message == proposal => recorded,
            Some(_) => {
                self.stats.replay_refusals += 1;
                return;
            }
            None => ready(self.me.signer.sign_proposal(proposal.clone())).expect("signing a proposal never fails"), // ok: TrellisSigner's proposal signing is infallible
        };
        let Some(value) = self.e.values.get(&proposal.value) else {
            return self.out.notes.push(Note::EngineError(format!("node {}: proposing an unknown value", self.me.id)));
        };
        let block = value.block.clone();
        if proposal.pol_round.is_defined() {
            if let Some(certificate) = self.e.driver.polka_certificate(proposal.pol_round, &proposal.value).cloned() {
                self.send(Dest::Others, Message::PolkaCertificate(certificate));
            }
        }
        let flood = if self.me.byzantine && proposal.pol_round.is_nil() {
            self.me.coalition.borrow().flood_of.get(&proposal.value).cloned().unwrap_or_default()
        } else {
            Vec::new()
        };
        let (_, second_face) = self.faces();
        for other in flood {
            let extra = self.sign_in_place_of(&proposal, &other);
            self.send(Dest::Nodes(second_face.clone()), Message::Proposal { proposal: extra, block: other });
            self.stats.flood_blocks_sent += 1;
        }
        let twin =
            if self.me.byzantine { self.me.coalition.borrow().twin_of.get(&proposal.value).cloned() } else { None };
        match twin {
            Some(twin) => {
                let second = self.sign_in_place_of(&proposal, &twin);
                let (first_face, second_face) = self.faces();
                self.send(
                    Dest::Nodes(first_face),
                    Message::Proposal { proposal: signed.clone(), block: block.clone() },
                );
                self.send(Dest::Nodes(second_face), Message::Proposal { proposal: second, block: twin });
                self.stats.equivocations_sent += 1;
            }
            None => self.send(Dest::Others, Message::Proposal { proposal: signed.clone(), block: block.clone() }),
        }
        // Our own proposal goes through the same path as anyone's (the engine's `on_proposal`).
        self.wal_append(WalEntry::Proposal { proposal: signed.clone(), block, validity: Validity::Valid });
        self.apply(Input::Proposal(signed, Validity::Valid));
    }

    /// A Byzantine proposer's signed proposal of `block` for the height, round and proof-of-lock
    /// round of `proposal`: a second (or further) block for one round.
    fn sign_in_place_of(&self, proposal: &Proposal, block: &Block) -> SignedProposal {
        let other = self.me.ctx.new_proposal(
            proposal.height,
            proposal.round,
            BlockId(block.hash()),
            proposal.pol_round,
            proposal.proposer,
        );
        ready(self.me.signer.sign_proposal(other)).expect("signing a proposal never fails")
        // ok: TrellisSigner's proposal signing is infallible
    }

    /// (first face, second face) of a Byzantine node: who sees which of its two versions.
    fn faces(&self) -> (Vec<NodeId>, Vec<NodeId>) {
        let coalition = self.me.coalition.borrow();
        let everyone = 0..self.me.nodes;
        let (second, first): (Vec<NodeId>, Vec<NodeId>) =
            everyone.filter(|&n| n != self.me.id).partition(|n| coalition.second_face.contains(n));
        (first, second)
    }

    // ---- voting -------------------------------------------------------------------------

    fn publish_vote(&mut self, vote: ConsensusVote) {
        if !self.is_validator() {
            return;
        }
        if let (VoteType::Precommit, NilOrVal::Val(_)) = (vote.vote_type, vote.value) {
            // Earlier rounds' votes can no longer matter (the engine prunes them here too).
            self.e.driver.prune_votes_and_certificates(vote.round);
        }
        let withhold = self.me.byzantine && self.me.coalition.borrow().withhold_precommits;
        if withhold && vote.vote_type == VoteType::Precommit {
            // Never signed: the others must decide without it (nor can it hand them a
            // certificate holding its precommit by sync).
            return;
        }
        let Some(signed) = self.sign_or_replay_vote(vote.clone()) else { return };
        self.out.notes.push(Note::SignedVote(vote.clone()));
        let equivocate = self.me.byzantine && self.me.coalition.borrow().equivocate;
        if equivocate {
            let second = self.second_face_vote(&vote);
            if second.value != vote.value {
                let second = ready(self.me.signer.sign_vote(second)).expect("signing a vote with a round never fails"); // ok: votes always have a round here
                let (first_face, second_face) = self.faces();
                self.send(Dest::Nodes(first_face), Message::Vote(signed.clone()));
                self.send(Dest::Nodes(second_face), Message::Vote(second));
                self.stats.equivocations_sent += 1;
            } else {
                self.send(Dest::Others, Message::Vote(signed.clone()));
            }
        } else {
            self.send(Dest::Others, Message::Vote(signed.clone()));
        }
        match vote.vote_type {
            VoteType::Prevote => self.e.last_prevote = Some(signed.clone()),
            VoteType::Precommit => self.e.last_precommit = Some(signed.clone()),
        }
        let key = TimerKey {
            height: self.e.height,
            round: self.e.driver.round().as_u32().unwrap_or(0),
            kind: TimerKind::Rebroadcast,
        };
        let delay = self.duration(Timeout::rebroadcast(self.e.driver.round()));
        self.schedule(key, delay);
        // Our own vote goes through the same path as anyone's (the engine's `on_vote`).
        self.wal_append(WalEntry::Vote(signed.clone()));
        self.apply(Input::Vote(signed));
    }

    /// The vote a Byzantine node shows its second face: for the twin of a coalition block, or
    /// nil instead of a value (and the current twin instead of nil).
    fn second_face_vote(&self, vote: &ConsensusVote) -> ConsensusVote {
        let coalition = self.me.coalition.borrow();
        let value = match vote.value {
            NilOrVal::Val(id) => match coalition.twin_of.get(&id) {
                Some(twin) => NilOrVal::Val(BlockId(twin.hash())),
                None => NilOrVal::Nil,
            },
            NilOrVal::Nil => NilOrVal::Nil,
        };
        ConsensusVote { value, ..vote.clone() }
    }

    /// The engine's `sign_or_replay_vote`: a vote recorded in the WAL for this round and step is
    /// reused; a different one is refused (never double-sign); otherwise sign afresh.
    fn sign_or_replay_vote(&mut self, vote: ConsensusVote) -> Option<SignedVote> {
        let recorded = self.wal.entries.iter().find_map(|entry| match entry {
            WalEntry::Vote(v)
                if v.validator == self.me.address
                    && v.height == vote.height
                    && v.round == vote.round
                    && v.vote_type == vote.vote_type =>
            {
                Some(v.clone())
            }
            _ => None,
        });
        match recorded {
            Some(recorded) if recorded.value == vote.value => Some(recorded),
            Some(_) => {
                self.stats.replay_refusals += 1;
                None
            }
            None => Some(ready(self.me.signer.sign_vote(vote)).expect("signing a vote with a round never fails")), // ok: driver votes carry a round
        }
    }

    fn rebroadcast(&mut self) {
        if !self.is_validator() {
            return;
        }
        for vote in [self.e.last_prevote.clone(), self.e.last_precommit.clone()].into_iter().flatten() {
            self.send(Dest::Others, Message::Vote(vote));
        }
        let round = self.e.driver.round();
        if let Some(certificate) = self.e.driver.round_certificate() {
            if certificate.enter_round == round {
                let votes = certificate.certificate.votes(&self.me.ctx).collect();
                self.send(Dest::Others, Message::RoundVotes(votes));
            }
        }
    }

    // ---- deciding -----------------------------------------------------------------------

    fn decide(&mut self, proposal: Proposal) {
        let height = self.e.height;
        // The round whose precommits decided (the engine's `decided_value`), which may be
        // earlier than the round the node is in.
        let (round, id) = match self.e.driver.decided_value() {
            Some((round, value)) => (round, value),
            None => (proposal.round, proposal.value),
        };
        self.stats.decided_after_round_zero += u64::from(round.as_i64() > 0);
        let certificate = match self.e.driver.commit_certificate(round, &id) {
            Some(certificate) => certificate.clone(),
            None => ExtendedCommitCertificate::from_votes(
                BlockHeight(height),
                round,
                id,
                self.e.driver.restore_precommits(round, &id),
            ),
        };
        let signatures = certificate.commit_signatures.iter().map(|s| (s.address, s.signature));
        if !self.certified(certificate.height, round, VoteType::Precommit, &id, signatures) {
            self.out.notes.push(Note::EngineError(format!(
                "node {}: decided at {height} without a valid certificate",
                self.me.id
            )));
        }
        let executed = match self.e.values.get(&id) {
            Some(Value { executed: Some(executed), .. }) => Ok(executed.clone()),
            Some(value) => self.ledger.execute(&value.block, None, false).map_err(|e| e.to_string()),
            None => Err("the decided block is unknown here".to_string()),
        };
        let executed = match executed {
            Ok(executed) => executed,
            Err(reason) => {
                self.out.notes.push(Note::DecidedUnexecutable { height, block: id.0, reason });
                // The node's `Next::Restart`: run the height again from scratch.
                self.wal.entries.clear();
                let validators = self.ledger.validator_set();
                self.e.driver.move_to_height(BlockHeight(height), validators);
                self.e.values.clear();
                return self.enter_round_zero();
            }
        };
        self.collect_evidence();
        self.ledger.commit(executed.clone(), certificate);
        *self.wal = Wal { height: height + 1, entries: Vec::new() };
        self.e.mempool.prune(self.ledger);
        self.e.last_sync_request = None;
        self.out.notes.push(Note::Committed(executed));
        self.out.start_next_height = true;
    }

    /// Double votes and double proposals the driver saw this height become reports.
    fn collect_evidence(&mut self) {
        let votes = self.e.driver.take_vote_evidence();
        let proposals = self.e.driver.take_proposal_evidence();
        if self.me.byzantine {
            return;
        }
        let chain_id = self.me.ctx.chain_id().to_string();
        for (address, pairs) in votes.iter() {
            let Some(validator) = self.e.validators.get(address) else { continue };
            for (first, second) in pairs {
                let proto = |v: &SignedVote| {
                    Some(trellis_proto::SignedVote {
                        vote: v.message.to_proto()?,
                        signature: from_consensus_signature(&v.signature),
                    })
                };
                let (Some(a), Some(b)) = (proto(first), proto(second)) else { continue };
                let step = u8::from(a.vote.vote_type == trellis_proto::VoteType::Precommit);
                let slot = (address.0, a.vote.height.0, a.vote.round, step);
                let evidence = EquivocationEvidence { validator: validator.key, first: a, second: b };
                if evidence.verify(&chain_id).is_ok() && self.e.reported.insert(slot) {
                    self.e.pending_evidence.push(TxKind::ReportEquivocation(evidence));
                }
            }
        }
        for (address, pairs) in proposals.iter() {
            let Some(validator) = self.e.validators.get(address) else { continue };
            for (first, second) in pairs {
                let claim = |p: &SignedProposal| trellis_proto::SignedProposalClaim {
                    claim: trellis_proto::ProposalClaim::Proposal(p.message.header()),
                    signature: from_consensus_signature(&p.signature),
                };
                let evidence =
                    DoubleProposalEvidence { proposer: validator.key, first: claim(first), second: claim(second) };
                let (height, round) = evidence.slot();
                if evidence.verify(&chain_id).is_ok() && self.e.reported.insert((address.0, height.0, round, 3)) {
                    self.e.pending_evidence.push(TxKind::ReportDoubleProposal(Box::new(evidence)));
                }
            }
        }
    }

    fn enter_next_height(&mut self) {
        let height = self.ledger.height() + 1;
        let validators = self.ledger.validator_set();
        self.e.driver.move_to_height(BlockHeight(height), validators.clone());
        self.e.validators = validators;
        self.e.height = height;
        self.e.values.clear();
        self.enter_round_zero();
        let buffered = self.e.buffered.remove(&height).unwrap_or_default();
        self.e.buffered.retain(|h, _| *h > height);
        self.e.buffered_count = self.e.buffered.values().map(Vec::len).sum();
        for (from, message) in buffered {
            self.on_message(from, message);
        }
        self.refresh_duties();
        if let Some((&peer, _)) = self.e.peer_heights.iter().find(|(_, &h)| h >= height) {
            self.request_sync(peer);
        }
    }

    // ---- the validator's own transactions -----------------------------------------------

    /// Sends the validator's next duty when nothing of its own is in flight: equivocation
    /// reports, verdicts it owes, and the aggregate of a round awaiting one.
    fn refresh_duties(&mut self) {
        let me = self.me.address.0;
        let next = self.ledger.next_nonce(&me);
        if let Some(own) = &self.e.own_tx {
            if own.tx.tx.nonce < next || self.ledger.dry_run(&own.tx.tx).is_err() {
                let stale = own.tx.clone();
                self.e.mempool.evict_own(&stale);
                self.e.own_tx = None;
            } else if self.ledger.height() >= own.sent_at_height + RESEND_BLOCKS {
                let tx = own.tx.clone();
                self.e.own_tx = Some(OwnTx { tx: tx.clone(), sent_at_height: self.ledger.height() });
                self.send(Dest::Others, Message::Tx(tx));
                return;
            } else {
                return;
            }
        }
        let Some(kind) = self.next_duty() else { return };
        let tx = Transaction { sender: self.me.key.public_key(), nonce: next, fee: Amount(FEE), kind }
            .sign(self.me.ctx.chain_id(), &self.me.key);
        if matches!(tx.tx.kind, TxKind::ReportEquivocation(_) | TxKind::ReportDoubleProposal(_)) {
            self.stats.evidence_reported += 1;
        }
        if matches!(tx.tx.kind, TxKind::ReportDoubleProposal(_)) {
            self.stats.proposal_reports += 1;
        }
        let refused = self.e.mempool.insert(tx.clone(), self.ledger);
        self.count_refusal(true, refused);
        self.e.own_tx = Some(OwnTx { tx: tx.clone(), sent_at_height: self.ledger.height() });
        self.send(Dest::Others, Message::Tx(tx));
    }

    fn next_duty(&mut self) -> Option<TxKind> {
        let me = self.me.address.0;
        let next = self.ledger.next_nonce(&me);
        let sender = self.me.key.public_key();
        let applies = |ledger: &Ledger, kind: &TxKind| {
            ledger.dry_run(&Transaction { sender, nonce: next, fee: Amount(FEE), kind: kind.clone() }).is_ok()
        };
        while let Some(kind) = self.e.pending_evidence.first().cloned() {
            self.e.pending_evidence.remove(0);
            if applies(self.ledger, &kind) {
                return Some(kind);
            }
        }
        let due = BeaconOnion::due_generation(self.ledger.beacon_onion(&me).as_ref());
        if let Some(generation) = due {
            let kind = TxKind::CommitBeacon { tip: self.onion(generation).tip(), layers: SIM_ONION_LAYERS };
            if applies(self.ledger, &kind) {
                return Some(kind);
            }
        }
        for (job, round) in self.ledger.active_rounds() {
            for assignment in &round.assignments {
                if !assignment.checkers.contains(&me)
                    || round
                        .verdicts
                        .iter()
                        .any(|v| v.checker == me && v.miner == assignment.miner && v.segment == assignment.segment)
                {
                    continue;
                }
                let outcome = if self.me.byzantine {
                    VerdictOutcome::Valid // the coalition covers for cheaters
                } else {
                    let behaviour = self.me.ground_truth.get(&assignment.miner).copied().unwrap_or(Behaviour::Honest);
                    finding(behaviour, &assignment.miner, assignment.segment)
                };
                let kind = TxKind::Verdict(Verdict {
                    job: job.id,
                    round: round.round,
                    miner: assignment.miner,
                    segment: assignment.segment,
                    outcome,
                });
                if applies(self.ledger, &kind) {
                    return Some(kind);
                }
            }
            if !self.me.byzantine {
                if let Some(aggregate) = self.ledger.expected_aggregate(job.id, round.round) {
                    let kind = TxKind::CommitAggregate(aggregate);
                    if applies(self.ledger, &kind) {
                        return Some(kind);
                    }
                }
            }
        }
        None
    }

    // ---- checks -------------------------------------------------------------------------

    /// The application's verdict on a proposed block. Coalition members call their own
    /// blocks valid whatever they hold.
    fn validity(&mut self, block: &Rc<Block>, builder: Option<Address>) -> Validity {
        let id = BlockId(block.hash());
        if let Some(value) = self.e.values.get(&id) {
            return value.validity;
        }
        if self.me.byzantine && self.me.coalition.borrow().addresses.contains(&block.header.proposer) {
            self.e.values.insert(id, Value { block: block.clone(), validity: Validity::Valid, executed: None });
            return Validity::Valid;
        }
        let (validity, executed) = match self.ledger.execute(block, builder, true) {
            Ok(executed) => (Validity::Valid, Some(executed)),
            Err(_) => (Validity::Invalid, None),
        };
        self.e.values.insert(id, Value { block: block.clone(), validity, executed });
        validity
    }

    fn verify_vote(&self, vote: &ConsensusVote, signature: &mc::Signature<Ctx>, key: &mc::PublicKey<Ctx>) -> bool {
        let Some(proto) = vote.to_proto() else { return false };
        let memo_key = memo_key(b"vote", &proto.to_bytes(), signature, key);
        if self.me.memo.borrow().verified.contains(&memo_key) {
            return true;
        }
        let valid = ready(self.me.verifier.verify_signed_vote(vote, signature, key)).is_ok_and(|r| r.is_valid());
        if valid {
            self.me.memo.borrow_mut().verified.insert(memo_key);
        }
        valid
    }

    fn verify_proposal(&self, proposal: &SignedProposal, key: &mc::PublicKey<Ctx>) -> bool {
        let memo_key = memo_key(b"proposal", &proposal.signing_bytes(), &proposal.signature, key);
        if self.me.memo.borrow().verified.contains(&memo_key) {
            return true;
        }
        let valid = ready(self.me.verifier.verify_signed_proposal(&proposal.message, &proposal.signature, key))
            .is_ok_and(|r| r.is_valid());
        if valid {
            self.me.memo.borrow_mut().verified.insert(memo_key);
        }
        valid
    }

    /// Whether `signatures` are valid votes of `step` for `value` at (height, round) by distinct
    /// validators holding more than two thirds of the power.
    fn certified(
        &self,
        height: BlockHeight,
        round: Round,
        step: VoteType,
        value: &BlockId,
        signatures: impl Iterator<Item = (ValidatorAddress, mc::Signature<Ctx>)>,
    ) -> bool {
        let mut seen = BTreeSet::new();
        let mut power: u64 = 0;
        for (address, signature) in signatures {
            let Some(validator) = self.e.validators.get(&address) else { return false };
            if !seen.insert(address) {
                return false;
            }
            let vote = match step {
                VoteType::Prevote => self.me.ctx.new_prevote(height, round, NilOrVal::Val(*value), address),
                VoteType::Precommit => self.me.ctx.new_precommit(height, round, NilOrVal::Val(*value), address),
            };
            if !self.verify_vote(&vote, &signature, &validator.consensus_key) {
                return false;
            }
            power += validator.power;
        }
        3 * u128::from(power) > 2 * u128::from(self.total_power())
    }

    fn total_power(&self) -> u64 {
        self.e.validators.validators().iter().map(|v| v.power).sum()
    }
}

fn memo_key(kind: &[u8], payload: &[u8], signature: &mc::Signature<Ctx>, key: &mc::PublicKey<Ctx>) -> [u8; 32] {
    let mut hasher = blake3::Hasher::new();
    hasher.update(kind);
    hasher.update(&(payload.len() as u64).to_le_bytes());
    hasher.update(payload);
    hasher.update(&from_consensus_signature(signature).0);
    hasher.update(key.as_bytes());
    *hasher.finalize().as_bytes()
}
