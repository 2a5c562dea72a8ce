//! A seeded, deterministic, in-process simulator of Trellis consensus and contracts.
//!
//! One `u64` seed fixes everything: the number of validators and their stakes, which of them are
//! Byzantine and how, the miners' behaviours, the network's delays and losses, when it
//! partitions, which validators crash and for how long, and every transaction users send. The
//! run is single-threaded over simulated time (no clock, no threads, no async runtime), so a seed
//! replays exactly; the trace hash proves it.
//!
//! Each validator drives Malachite's real Tendermint state machine (`arc-malachitebft-core-driver`)
//! with the project's own `TrellisContext`, signing with the project's signer, and executes
//! decided blocks with the real `trellis-contracts` state machine ([`validator`], [`chain`]).
//! A run has two phases: chaos (faults from the seed's [`network::FaultPlan`]) then calm (the
//! network whole, every node up). Safety is checked throughout ([`invariants::Checker`]);
//! liveness is judged over the calm phase only, and reported apart: every honest node must
//! commit a few new heights before a deadline. A run that expects liveness ends once it is
//! shown, so calm phases cost what recovery takes.
//!
//! `docs/simulator.md` says what is simulated, what is not, and how to run long campaigns.

pub mod chain;
pub mod invariants;
pub mod network;
pub mod rng;
pub mod validator;
pub mod workload;

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::rc::Rc;
use std::time::Duration;

use arc_malachitebft_app_channel::app::types::core::LinearTimeouts;
use trellis_consensus::{TrellisContext, TrellisSigner, TrellisVerifier, ValidatorAddress};
use trellis_contracts::state::{keys, Stake};
use trellis_contracts::{Event, Genesis, KvStore, Params, SlashReason};
use trellis_proto::{Address, Amount, Keypair, Role, SignedTx};

use chain::Ledger;
use invariants::{Checker, LivenessReport, Violation};
use network::{EventQueue, Fate, Fault, FaultConfig, FaultPlan, Links, NodeId, Time};
use rng::SimRng;
use trellis_protocol::behaviour::{Behaviour, SIMULATED_MINERS};
use validator::{Coalition, Dest, Identity, Message, Node, Note, Outbox, SignatureMemo, TimerKey};
use workload::{Cast, Flood, Workload};

/// The chain id of every simulated chain.
pub const SIM_CHAIN_ID: &str = "trellis-sim";
/// What each funded flooder holds at genesis: enough for a few hundred failing transactions.
const FLOODER_BALANCE: u64 = 2_000;

/// Who is Byzantine in a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ByzantinePlan {
    /// Nobody.
    None,
    /// A seeded number of validators holding less than 30% of the stake (below the one third
    /// the protocol tolerates, with room for honest validators' small slashes), with a seeded
    /// strategy.
    BelowThird,
    /// Exactly `count` validators (at most all but one), equal stakes, with this strategy: for
    /// showing the checker catches what a coalition at or above one third can do.
    Fixed { count: usize, equivocate: bool, invalid_proposals: bool },
    /// One validator of equal stake floods the rounds it proposes: `blocks` valid blocks more
    /// than its real one, sent to half the honest validators ahead of the real one (filling their
    /// per-round cap, `trellis_consensus::round_cap`), and it never sends a precommit, so a round
    /// whose block those validators could not execute ends undecided.
    ProposalFlood { blocks: usize },
}

/// What a run looks like; the seed draws everything inside these bounds.
#[derive(Debug, Clone)]
pub struct SimConfig {
    pub name: &'static str,
    /// Validators, drawn in this inclusive range.
    pub validators: (usize, usize),
    pub byzantine: ByzantinePlan,
    pub miners: usize,
    pub users: usize,
    /// Length of the chaos phase (faults happen only here).
    pub chaos_ms: Time,
    /// Longest the calm phase may last: the liveness deadline (a live run ends sooner).
    pub calm_ms: Time,
    pub faults: FaultConfig,
    pub min_delay_ms: Time,
    pub max_delay_ms: Time,
    pub timeouts: LinearTimeouts,
    pub build_ms: (Time, Time),
    pub client_interval_ms: Time,
    pub max_jobs: u32,
    /// Flooders (issue 18): empty accounts, funded accounts, and the nonces each sends ahead
    /// every client tick (see [`workload::Flood`]).
    pub flood: (usize, usize, u64),
    /// Whether a validator's WAL survives its crashes.
    pub durable_wal: bool,
    /// Heights every honest node must add in the calm phase; `None` when liveness is not
    /// expected (a coalition at or above one third).
    pub live_heights: Option<u64>,
}

impl SimConfig {
    /// The CI and long-run scenario: 4 to 7 validators, a Byzantine minority, users running
    /// training jobs with cheating miners; partitions, crashes and bursts of loss for 40 s; then
    /// calm, in which every honest node must commit 5 new heights within 30 s.
    pub fn standard() -> Self {
        Self {
            name: "standard",
            validators: (4, 7),
            byzantine: ByzantinePlan::BelowThird,
            miners: 4,
            users: 3,
            chaos_ms: 40_000,
            calm_ms: 30_000,
            faults: FaultConfig {
                partitions: true,
                crashes: true,
                max_loss_ppm: 250_000,
                calm_loss_ppm: 10_000,
                mean_gap_ms: 1_500,
                max_fault_ms: 4_000,
            },
            min_delay_ms: 5,
            max_delay_ms: 60,
            timeouts: LinearTimeouts {
                propose: Duration::from_millis(800),
                propose_delta: Duration::from_millis(200),
                prevote: Duration::from_millis(300),
                prevote_delta: Duration::from_millis(100),
                precommit: Duration::from_millis(300),
                precommit_delta: Duration::from_millis(100),
                rebroadcast: Duration::from_millis(1_400),
                max_timeout: Duration::from_millis(4_000),
            },
            build_ms: (100, 300),
            client_interval_ms: 250,
            max_jobs: 3,
            flood: (4, 2, 8),
            durable_wal: true,
            live_heights: Some(5),
        }
    }

    /// Two of four equal validators equivocate in concert: half the stake, beyond what
    /// Tendermint tolerates. Used to show the checker is not vacuous.
    pub fn split_brain() -> Self {
        Self {
            name: "split-brain",
            validators: (4, 4),
            byzantine: ByzantinePlan::Fixed { count: 2, equivocate: true, invalid_proposals: false },
            chaos_ms: 0,
            calm_ms: 10_000,
            faults: FaultConfig::NONE,
            live_heights: None,
            ..Self::standard()
        }
    }

    /// Four equal validators, one flooding every round it proposes with blocks the others never
    /// see ([`ByzantinePlan::ProposalFlood`]): honest nodes must execute at most two blocks a
    /// round and still commit every height.
    pub fn proposal_flood() -> Self {
        Self {
            name: "proposal-flood",
            validators: (4, 4),
            byzantine: ByzantinePlan::ProposalFlood { blocks: 6 },
            chaos_ms: 0,
            calm_ms: 30_000,
            faults: FaultConfig::NONE,
            live_heights: Some(20),
            ..Self::standard()
        }
    }

    /// Honest validators whose WAL does not survive a crash, with frequent crashes: shows the
    /// checker catches an honest double sign, i.e. that the WAL is what prevents it.
    pub fn volatile_wal() -> Self {
        Self {
            name: "volatile-wal",
            byzantine: ByzantinePlan::None,
            durable_wal: false,
            faults: FaultConfig {
                partitions: true,
                crashes: true,
                max_loss_ppm: 300_000,
                calm_loss_ppm: 10_000,
                mean_gap_ms: 300,
                max_fault_ms: 1_500,
            },
            live_heights: None,
            ..Self::standard()
        }
    }

    pub fn by_name(name: &str) -> Option<Self> {
        match name {
            "standard" => Some(Self::standard()),
            "split-brain" => Some(Self::split_brain()),
            "volatile-wal" => Some(Self::volatile_wal()),
            "proposal-flood" => Some(Self::proposal_flood()),
            _ => None,
        }
    }

    pub const NAMES: [&'static str; 4] = ["standard", "split-brain", "volatile-wal", "proposal-flood"];
}

/// Counters of one run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunStats {
    pub events: u64,
    pub messages: u64,
    pub lost: u64,
    pub cut_by_partition: u64,
    pub to_crashed: u64,
    pub partitions: u64,
    pub crashes: u64,
    pub heights: u64,
    pub txs_committed: u64,
    pub poisoners_slashed: u64,
    pub freeloaders_slashed: u64,
    pub equivocators_slashed: u64,
    pub miner_rewards: u64,
    pub rounds_settled: u64,
    pub jobs_ended: u64,
    pub equivocations_sent: u64,
    pub invalid_proposals: u64,
    pub forged_aggregates: u64,
    pub grind_variants: u64,
    pub grind_moved_beacon: u64,
    pub beacon_reveals: u64,
    /// The flood: transactions sent, refused by honest pools because their sender could not
    /// pay, included and failed (each paying its fee), and honest validators' duties a pool
    /// refused for want of room (the "verdicts refused": must stay 0).
    pub flood_sent: u64,
    pub refused_cannot_pay: u64,
    pub txs_failed: u64,
    pub duties_refused: u64,
    pub evidence_reported: u64,
    /// Of those, double proposals.
    pub proposal_reports: u64,
    /// A flooding proposer's extra blocks sent, those an honest validator did not execute (its
    /// round's cap was full), and the most distinct blocks of one round any honest validator
    /// executed (the cap: at most `round_cap::MAX_BLOCKS_EXECUTED_PER_ROUND`).
    pub flood_blocks_sent: u64,
    pub proposals_not_executed: u64,
    pub most_blocks_executed_in_a_round: usize,
    /// Heights honest nodes committed in a round after the first (a round lost to a flood,
    /// a fault or a timeout), summed over honest nodes.
    pub decided_after_round_zero: u64,
    pub wal_replays: u64,
    pub replay_refusals: u64,
    pub sync_decisions: u64,
    /// Validators jailed at the end, on the most advanced honest node.
    pub jailed: usize,
    /// Driver errors: never expected; each one is a harness bug.
    pub engine_errors: Vec<String>,
}

/// The outcome of one seed.
#[derive(Debug, Clone)]
pub struct SimReport {
    pub seed: u64,
    pub scenario: &'static str,
    pub validators: usize,
    pub byzantine: Vec<NodeId>,
    pub strategy: String,
    pub miners: Vec<Behaviour>,
    /// The first safety violation, if any (the run stops there).
    pub violation: Option<Violation>,
    pub liveness: LivenessReport,
    pub expects_liveness: bool,
    /// blake3 of every event the run processed, in order.
    pub trace_hash: [u8; 32],
    pub stats: RunStats,
}

impl SimReport {
    pub fn is_safe(&self) -> bool {
        self.violation.is_none() && self.stats.engine_errors.is_empty()
    }

    /// Live, or not expected to be.
    pub fn is_live(&self) -> bool {
        !self.expects_liveness || self.liveness.is_live()
    }

    /// The command that replays this seed with a full event trace.
    pub fn replay_command(&self) -> String {
        format!(
            "cargo run -p trellis-tests --release --bin simulate -- --scenario {} --seed {} --verbose",
            self.scenario, self.seed
        )
    }

    pub fn trace_hex(&self) -> String {
        self.trace_hash.iter().map(|b| format!("{b:02x}")).collect()
    }
}

impl fmt::Display for SimReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &self.stats;
        writeln!(
            f,
            "seed {} ({}): {} validators, byzantine {:?} ({}), miners {:?}",
            self.seed, self.scenario, self.validators, self.byzantine, self.strategy, self.miners
        )?;
        match (&self.violation, s.engine_errors.first()) {
            (Some(violation), _) => writeln!(f, "  SAFETY VIOLATED: {violation}")?,
            (None, Some(error)) => writeln!(f, "  HARNESS ERROR: {error}")?,
            (None, None) => writeln!(f, "  safety: held")?,
        }
        let live = &self.liveness;
        match (self.expects_liveness, live.is_live()) {
            (false, _) => writeln!(
                f,
                "  liveness not judged in this scenario: honest nodes end at {}..={}",
                live.final_min_height, live.final_max_height
            )?,
            (true, true) => writeln!(f, "  liveness held: {live}")?,
            (true, false) => writeln!(f, "  LIVENESS FAILED: {live}")?,
        }
        writeln!(
            f,
            "  {} heights, {} txs; {} events, {} messages ({} lost, {} cut by partitions, {} to crashed nodes); {} partitions, {} crashes, {} WAL replays, {} syncs, {} jailed",
            s.heights, s.txs_committed, s.events, s.messages, s.lost, s.cut_by_partition, s.to_crashed, s.partitions, s.crashes, s.wal_replays, s.sync_decisions, s.jailed
        )?;
        writeln!(
            f,
            "  slashed: {} poisoners, {} freeloaders, {} equivocators; {} miner rewards, {} rounds settled, {} jobs ended; byzantine: {} equivocations, {} invalid proposals ({} with a forged aggregate), {} grinding attempts ({} moved the beacon); {} evidence reports ({} of double proposals), {} replay refusals; proposal flood: {} blocks sent, {} not executed, at most {} executed a round, {} heights decided after round 0; {} beacon reveals; flood: {} sent, {} refused (cannot pay), {} failed in blocks, {} duties refused",
            s.poisoners_slashed,
            s.freeloaders_slashed,
            s.equivocators_slashed,
            s.miner_rewards,
            s.rounds_settled,
            s.jobs_ended,
            s.equivocations_sent,
            s.invalid_proposals,
            s.forged_aggregates,
            s.grind_variants,
            s.grind_moved_beacon,
            s.evidence_reported,
            s.proposal_reports,
            s.replay_refusals,
            s.flood_blocks_sent,
            s.proposals_not_executed,
            s.most_blocks_executed_in_a_round,
            s.decided_after_round_zero,
            s.beacon_reveals,
            s.flood_sent,
            s.refused_cannot_pay,
            s.txs_failed,
            s.duties_refused
        )?;
        write!(f, "  trace {}", self.trace_hex())
    }
}

enum SimEvent {
    Start(NodeId),
    Deliver {
        from: NodeId,
        to: NodeId,
        message: Message,
    },
    /// A user's transaction reaching a validator (users are not inside partitions).
    ClientDeliver {
        to: NodeId,
        tx: SignedTx,
    },
    Timer {
        node: NodeId,
        incarnation: u32,
        key: TimerKey,
        generation: u64,
    },
    StartHeight {
        node: NodeId,
        incarnation: u32,
    },
    Fault(Fault),
    ClientTick,
    /// The faults are over: liveness is judged from here.
    CalmBegins,
}

struct Simulation {
    config: SimConfig,
    queue: EventQueue<SimEvent>,
    links: Links,
    net_rng: SimRng,
    nodes: Vec<Node>,
    honest: Vec<bool>,
    workload: Workload,
    checker: Checker,
    trace: blake3::Hasher,
    stats: RunStats,
    verbose: bool,
    end: Time,
    /// Highest honest height when the calm phase began, once it has.
    height_at_calm: Option<u64>,
    /// When every honest node had added the required heights in the calm phase.
    live_at: Option<Time>,
}

/// Runs one seed of `config`. With `verbose`, prints every event as it happens.
pub fn run(seed: u64, config: &SimConfig, verbose: bool) -> SimReport {
    run_keeping_chain(seed, config, verbose).0
}

/// Runs one seed and also returns the chain of the most advanced honest node.
pub fn run_keeping_chain(seed: u64, config: &SimConfig, verbose: bool) -> (SimReport, Ledger) {
    let (mut sim, report) = Simulation::new(seed, config.clone(), verbose);
    sim.run();
    let chain = sim.nodes[sim.most_advanced_honest()].ledger.clone();
    (sim.finish(report), chain)
}

impl Simulation {
    fn new(seed: u64, config: SimConfig, verbose: bool) -> (Self, SimReport) {
        let mut setup = SimRng::stream(seed, "setup");
        let validator_keys = draw_validator_keys(&mut setup, &config);
        let n = validator_keys.len();
        let fixed_stakes =
            matches!(config.byzantine, ByzantinePlan::Fixed { .. } | ByzantinePlan::ProposalFlood { .. });
        let stakes: Vec<u64> =
            (0..n).map(|_| if fixed_stakes { 30_000 } else { setup.between(20, 40) * 1_000 }).collect();
        let miner_keys: Vec<Keypair> = (0..config.miners).map(|_| Keypair::from_seed(setup.bytes32())).collect();
        let user_keys: Vec<Keypair> = (0..config.users).map(|_| Keypair::from_seed(setup.bytes32())).collect();
        let submitter = Keypair::from_seed(setup.bytes32());
        // Drawn from a stream of their own, so the rest of a seed's setup does not move.
        let mut flood_rng = SimRng::stream(seed, "flood");
        let (empty_flooders, funded_flooders, flood_nonces) = config.flood;
        let empty_flooders: Vec<Keypair> =
            (0..empty_flooders).map(|_| Keypair::from_seed(flood_rng.bytes32())).collect();
        let funded_flooders: Vec<Keypair> =
            (0..funded_flooders).map(|_| Keypair::from_seed(flood_rng.bytes32())).collect();

        // Byzantine validators and their strategy.
        let flood_blocks = match config.byzantine {
            ByzantinePlan::ProposalFlood { blocks } => blocks,
            _ => 0,
        };
        let (members, equivocate, invalid_proposals) = match config.byzantine {
            ByzantinePlan::None => (Vec::new(), false, false),
            ByzantinePlan::ProposalFlood { .. } => (vec![0], false, false),
            // At least one validator stays honest: the checker judges honest nodes.
            ByzantinePlan::Fixed { count, equivocate, invalid_proposals } => {
                ((0..count.min(n - 1)).collect(), equivocate, invalid_proposals)
            }
            ByzantinePlan::BelowThird => {
                let mut order: Vec<NodeId> = (0..n).collect();
                setup.shuffle(&mut order);
                let wanted = setup.between(0, ((n - 1) / 3) as u64) as usize;
                let total: u64 = stakes.iter().sum();
                let mut members: Vec<NodeId> = order.into_iter().take(wanted).collect();
                while 10 * members.iter().map(|&i| stakes[i]).sum::<u64>() >= 3 * total {
                    members.pop();
                }
                let strategy = setup.below(3);
                (members, strategy != 1, strategy != 0)
            }
        };
        let honest: Vec<bool> = (0..n).map(|i| !members.contains(&i)).collect();
        let honest_ids: Vec<NodeId> = (0..n).filter(|&i| honest[i]).collect();
        let coalition = Coalition {
            addresses: members.iter().map(|&i| validator_keys[i].address()).collect(),
            second_face: honest_ids.iter().skip(1).step_by(2).copied().collect(),
            equivocate,
            invalid_proposals,
            flood_blocks,
            withhold_precommits: flood_blocks > 0,
            ..Coalition::default()
        };
        let strategy = match (members.is_empty(), equivocate, invalid_proposals) {
            (true, _, _) => "none".to_string(),
            _ if flood_blocks > 0 => format!("proposal flood ({flood_blocks} blocks more a round, no precommits)"),
            (false, true, true) => "equivocate + invalid proposals".to_string(),
            (false, true, false) => "equivocate".to_string(),
            (false, false, _) => "invalid proposals".to_string(),
        };

        // Miners: two honest, the rest drawn, at least one cheating.
        let mut behaviours: Vec<Behaviour> = (0..config.miners)
            .map(|i| if i < 2 { Behaviour::Honest } else { *setup.pick(&SIMULATED_MINERS) })
            .collect();
        if config.miners > 2 && behaviours.iter().all(|b| *b == Behaviour::Honest) {
            let index = setup.between(2, config.miners as u64 - 1) as usize;
            behaviours[index] = *setup.pick(&SIMULATED_MINERS[1..]);
        }

        let mut accounts: Vec<(Address, Amount)> =
            validator_keys.iter().chain(&miner_keys).map(|k| (k.address(), Amount(100_000))).collect();
        accounts.extend(user_keys.iter().map(|k| (k.address(), Amount(200_000))));
        accounts.push((submitter.address(), Amount(1_000_000)));
        accounts.extend(funded_flooders.iter().map(|k| (k.address(), Amount(FLOODER_BALANCE))));
        let genesis = Genesis {
            chain_id: SIM_CHAIN_ID.to_string(),
            accounts,
            validators: validator_keys.iter().zip(&stakes).map(|(k, s)| (k.public_key(), Amount(*s))).collect(),
            miners: miner_keys.iter().map(|k| (k.public_key(), Amount(5_000))).collect(),
            params: Params {
                epoch_blocks: 10,
                unbonding_blocks: 30,
                aggregate_blocks: 10,
                block_reward: Amount(10),
                ..Params::default()
            },
        };
        let genesis_ledger = Ledger::from_genesis(&genesis);

        let coalition = Rc::new(RefCell::new(coalition));
        let ground_truth: Rc<BTreeMap<Address, Behaviour>> =
            Rc::new(miner_keys.iter().zip(&behaviours).map(|(k, b)| (k.address(), *b)).collect());
        let memo = Rc::new(RefCell::new(SignatureMemo::default()));
        let ctx = TrellisContext::new(SIM_CHAIN_ID);
        let nodes: Vec<Node> = validator_keys
            .iter()
            .enumerate()
            .map(|(id, key)| {
                let identity = Identity {
                    id,
                    nodes: n,
                    key: Keypair::from_seed(key.seed()),
                    address: ValidatorAddress(key.address()),
                    byzantine: !honest[id],
                    ctx: ctx.clone(),
                    signer: TrellisSigner::new(SIM_CHAIN_ID, Keypair::from_seed(key.seed())),
                    verifier: TrellisVerifier::new(SIM_CHAIN_ID),
                    timeouts: config.timeouts,
                    build_ms: config.build_ms,
                    durable_wal: config.durable_wal,
                    coalition: coalition.clone(),
                    ground_truth: ground_truth.clone(),
                    memo: memo.clone(),
                };
                Node::new(identity, genesis_ledger.clone(), SimRng::stream(seed, &format!("node-{id}")))
            })
            .collect();

        let validator_addresses: Vec<Address> = validator_keys.iter().map(Keypair::address).collect();
        let workload = Workload::new(
            SimRng::stream(seed, "workload"),
            SIM_CHAIN_ID,
            Cast {
                submitter,
                miners: miner_keys.iter().zip(&behaviours).map(|(k, b)| (Keypair::from_seed(k.seed()), *b)).collect(),
                users: user_keys,
            },
            &validator_addresses,
            config.max_jobs,
            Flood::new(empty_flooders, funded_flooders, flood_nonces),
        );

        let mut queue = EventQueue::default();
        let plan = FaultPlan::draw(&mut SimRng::stream(seed, "faults"), n, config.chaos_ms, &config.faults);
        for (time, fault) in plan.faults {
            queue.schedule(time, SimEvent::Fault(fault));
        }
        for id in 0..n {
            queue.schedule(setup.between(0, 50), SimEvent::Start(id));
        }
        queue.schedule(config.client_interval_ms, SimEvent::ClientTick);
        // After the plan's own events at the same instant: the network is whole by then.
        queue.schedule(config.chaos_ms, SimEvent::CalmBegins);

        let checker = Checker::new(honest.clone(), &genesis_ledger);
        let report = SimReport {
            seed,
            scenario: config.name,
            validators: n,
            byzantine: members,
            strategy,
            miners: behaviours,
            violation: None,
            liveness: LivenessReport {
                calm_from: config.chaos_ms,
                deadline: config.chaos_ms + config.calm_ms,
                height_at_calm: 0,
                required: config.live_heights.unwrap_or(0),
                reached_at: None,
                final_min_height: 0,
                final_max_height: 0,
            },
            expects_liveness: config.live_heights.is_some(),
            trace_hash: [0; 32],
            stats: RunStats::default(),
        };
        let end = config.chaos_ms + config.calm_ms;
        let sim = Simulation {
            links: Links::new(config.min_delay_ms, config.max_delay_ms, config.faults.calm_loss_ppm),
            config,
            queue,
            net_rng: SimRng::stream(seed, "network"),
            nodes,
            honest,
            workload,
            checker,
            trace: blake3::Hasher::new(),
            stats: RunStats::default(),
            verbose,
            end,
            height_at_calm: None,
            live_at: None,
        };
        (sim, report)
    }

    fn run(&mut self) {
        while let Some((now, event)) = self.queue.pop() {
            if now > self.end {
                break;
            }
            self.stats.events += 1;
            self.handle(now, event);
            if self.checker.violation().is_some() {
                break;
            }
        }
    }

    /// The honest node with the highest committed height (the lowest id among equals).
    fn most_advanced_honest(&self) -> NodeId {
        (0..self.nodes.len())
            .filter(|&i| self.honest[i])
            .max_by_key(|&i| (self.nodes[i].ledger.height(), std::cmp::Reverse(i)))
            .expect("a run has at least one honest validator") // ok: Byzantine plans never take every validator
    }

    fn log(&self, now: Time, text: impl FnOnce() -> String) {
        if self.verbose {
            println!("{now:>7} ms  {}", text());
        }
    }

    fn record(&mut self, now: Time, tag: &[u8], parts: &[u64], payload: &[u8]) {
        self.trace.update(&now.to_le_bytes());
        self.trace.update(tag);
        for part in parts {
            self.trace.update(&part.to_le_bytes());
        }
        self.trace.update(&(payload.len() as u64).to_le_bytes());
        self.trace.update(payload);
    }

    fn handle(&mut self, now: Time, event: SimEvent) {
        match event {
            SimEvent::Start(id) => {
                self.record(now, b"start", &[id as u64], &[]);
                if self.nodes[id].is_up() {
                    return; // already started by the calm phase's restart-everyone
                }
                self.log(now, || format!("node {id} starts"));
                let mut out = Outbox::default();
                self.nodes[id].start(now, &mut out);
                self.flush(now, id, out);
            }
            SimEvent::Fault(fault) => self.fault(now, fault),
            SimEvent::Deliver { from, to, message } => {
                let mut payload = Vec::new();
                message.fingerprint(&mut payload);
                self.record(now, b"deliver", &[from as u64, to as u64], &payload);
                if !self.links.connected(from, to) {
                    self.stats.cut_by_partition += 1;
                    return;
                }
                if !self.nodes[to].is_up() {
                    self.stats.to_crashed += 1;
                    return;
                }
                self.log(now, || format!("{from} -> {to}  {}", message.describe()));
                let mut out = Outbox::default();
                self.nodes[to].on_message(now, from, message, &mut out);
                self.flush(now, to, out);
            }
            SimEvent::ClientDeliver { to, tx } => {
                self.record(now, b"client", &[to as u64], &tx.hash().0);
                if !self.nodes[to].is_up() {
                    self.stats.to_crashed += 1;
                    return;
                }
                let mut out = Outbox::default();
                self.nodes[to].on_message(now, usize::MAX, Message::Tx(tx), &mut out);
                self.flush(now, to, out);
            }
            SimEvent::Timer { node, incarnation, key, generation } => {
                if self.nodes[node].incarnation != incarnation || !self.nodes[node].timer_is_current(&key, generation) {
                    return;
                }
                self.record(
                    now,
                    b"timer",
                    &[node as u64, key.height, u64::from(key.round), key.kind as u64, generation],
                    &[],
                );
                self.log(now, || format!("node {node} timer {:?} h{} r{}", key.kind, key.height, key.round));
                let mut out = Outbox::default();
                self.nodes[node].on_timer(now, key, generation, &mut out);
                self.flush(now, node, out);
            }
            SimEvent::StartHeight { node, incarnation } => {
                if self.nodes[node].incarnation != incarnation || !self.nodes[node].is_up() {
                    return;
                }
                self.record(now, b"height", &[node as u64, self.nodes[node].ledger.height() + 1], &[]);
                let mut out = Outbox::default();
                self.nodes[node].start_next_height(now, &mut out);
                self.flush(now, node, out);
            }
            SimEvent::CalmBegins => {
                let height =
                    (0..self.nodes.len()).filter(|&i| self.honest[i]).map(|i| self.nodes[i].ledger.height()).max();
                self.record(now, b"calm", &[height.unwrap_or(0)], &[]);
                self.log(now, || format!("calm begins at height {}", height.unwrap_or(0)));
                self.height_at_calm = height;
                self.check_liveness(now);
            }
            SimEvent::ClientTick => {
                // Users read the chain from the most advanced honest node, as from its RPC.
                let view = self.most_advanced_honest();
                let txs = self.workload.tick(now, &self.nodes[view].ledger);
                for tx in txs {
                    self.record(now, b"user-tx", &[], &tx.hash().0);
                    self.log(now, || format!("user sends {} nonce {}", tx.tx.kind.name(), tx.tx.nonce));
                    for to in 0..self.nodes.len() {
                        match self.links.fate(&mut self.net_rng, usize::MAX, to) {
                            Fate::Deliver(delay) => {
                                self.queue.schedule_in(delay, SimEvent::ClientDeliver { to, tx: tx.clone() })
                            }
                            Fate::Lost => self.stats.lost += 1,
                        }
                    }
                }
                self.queue.schedule_in(self.config.client_interval_ms, SimEvent::ClientTick);
            }
        }
    }

    fn fault(&mut self, now: Time, fault: Fault) {
        let mut payload = Vec::new();
        match &fault {
            Fault::Partition(sides) => payload.extend_from_slice(sides),
            Fault::Crash(id) | Fault::Restart(id) => payload.extend_from_slice(&(*id as u64).to_le_bytes()),
            Fault::Loss(ppm) => payload.extend_from_slice(&ppm.to_le_bytes()),
            Fault::Heal => {}
        }
        self.record(now, b"fault", &[], &payload);
        match fault {
            Fault::Partition(sides) => {
                self.log(now, || format!("PARTITION {sides:?}"));
                self.stats.partitions += 1;
                self.links.partition(sides);
            }
            Fault::Heal => {
                if self.links.is_partitioned() {
                    self.log(now, || "heal".to_string());
                }
                self.links.heal();
            }
            Fault::Crash(id) => {
                if self.nodes[id].is_up() {
                    self.log(now, || format!("CRASH node {id} at height {}", self.nodes[id].ledger.height()));
                    self.stats.crashes += 1;
                    self.nodes[id].crash();
                }
            }
            Fault::Restart(id) => {
                if !self.nodes[id].is_up() {
                    self.log(now, || format!("restart node {id}"));
                    let mut out = Outbox::default();
                    self.nodes[id].start(now, &mut out);
                    self.flush(now, id, out);
                }
            }
            Fault::Loss(ppm) => self.links.loss_ppm = ppm,
        }
    }

    /// Carries out one node step's effects.
    fn flush(&mut self, now: Time, id: NodeId, out: Outbox) {
        let n = self.nodes.len();
        for (dest, message) in out.sends {
            let targets: Vec<NodeId> = match dest {
                Dest::Others => (0..n).filter(|&j| j != id).collect(),
                Dest::Node(j) => vec![j],
                Dest::Nodes(list) => list,
            };
            for to in targets {
                self.stats.messages += 1;
                match self.links.fate(&mut self.net_rng, id, to) {
                    Fate::Deliver(delay) => {
                        self.queue.schedule_in(delay, SimEvent::Deliver { from: id, to, message: message.clone() })
                    }
                    Fate::Lost => self.stats.lost += 1,
                }
            }
        }
        let incarnation = self.nodes[id].incarnation;
        for (delay, key, generation) in out.timers {
            self.queue.schedule_in(delay, SimEvent::Timer { node: id, incarnation, key, generation });
        }
        for note in out.notes {
            match note {
                Note::Committed(executed) => {
                    let height = self.nodes[id].ledger.height();
                    let block = executed.block.hash();
                    self.record(now, b"commit", &[id as u64, height], &block.0);
                    self.log(now, || {
                        format!(
                            "node {id} COMMITS h{height} {} ({} txs)",
                            validator::short(&block),
                            executed.block.txs.len()
                        )
                    });
                    let first = self.honest[id] && height > self.checker.decided_heights();
                    self.checker.on_commit(id, &self.nodes[id].ledger, &executed);
                    if first {
                        self.tally(height, &executed.events, executed.block.txs.len());
                    }
                    self.check_liveness(now);
                }
                Note::SignedVote(vote) => self.checker.on_signed_vote(id, &vote),
                Note::DecidedUnexecutable { height, block, reason } => {
                    self.log(now, || {
                        format!(
                            "node {id} decided h{height} {} and cannot execute it: {reason}",
                            validator::short(&block)
                        )
                    });
                    self.checker.on_decided_unexecutable(id, height, block, reason);
                }
                Note::EngineError(error) => {
                    self.log(now, || format!("ENGINE ERROR {error}"));
                    self.stats.engine_errors.push(error);
                }
            }
        }
        if out.start_next_height {
            self.queue.schedule(now, SimEvent::StartHeight { node: id, incarnation });
        }
    }

    /// Ends a run that expects liveness as soon as every honest node has added the required
    /// heights in the calm phase: what follows would only cost time.
    fn check_liveness(&mut self, now: Time) {
        let (Some(required), Some(at_calm), None) = (self.config.live_heights, self.height_at_calm, self.live_at)
        else {
            return;
        };
        let target = at_calm + required;
        if (0..self.nodes.len()).filter(|&i| self.honest[i]).all(|i| self.nodes[i].ledger.height() >= target) {
            self.log(now, || format!("LIVE: every honest node reached height {target}"));
            self.live_at = Some(now);
            self.end = now;
        }
    }

    /// Counts what the chain did, once per height.
    fn tally(&mut self, height: u64, events: &[Event], txs: usize) {
        self.stats.heights += 1;
        self.stats.txs_committed += txs as u64;
        for event in events {
            match event {
                Event::Slashed { reason: SlashReason::Poisoner | SlashReason::Withheld, .. } => {
                    self.stats.poisoners_slashed += 1
                }
                Event::Slashed { reason: SlashReason::Freeloader, .. } => self.stats.freeloaders_slashed += 1,
                Event::Slashed { reason: SlashReason::Equivocation, who, .. } => {
                    self.stats.equivocators_slashed += 1;
                    if let Some(node) = self.nodes.iter().position(|n| n.me.address.0 == *who) {
                        self.checker.on_equivocation_slash(height, node, *who);
                    }
                }
                Event::Rewarded { as_miner: true, .. } => self.stats.miner_rewards += 1,
                Event::AggregateCommitted { .. } => self.stats.rounds_settled += 1,
                Event::JobEnded { .. } => self.stats.jobs_ended += 1,
                Event::TxFailed { .. } => self.stats.txs_failed += 1,
                _ => {}
            }
        }
    }

    fn finish(mut self, mut report: SimReport) -> SimReport {
        let final_heights: Vec<u64> =
            (0..self.nodes.len()).filter(|&i| self.honest[i]).map(|i| self.nodes[i].ledger.height()).collect();
        report.liveness.height_at_calm = self.height_at_calm.unwrap_or(0);
        report.liveness.reached_at = self.live_at;
        report.liveness.final_min_height = final_heights.iter().copied().min().unwrap_or(0);
        report.liveness.final_max_height = final_heights.iter().copied().max().unwrap_or(0);
        for node in &self.nodes {
            self.stats.equivocations_sent += node.stats.equivocations_sent;
            self.stats.invalid_proposals += node.stats.invalid_proposals;
            self.stats.forged_aggregates += node.stats.forged_aggregates;
            self.stats.grind_variants += node.stats.grind_variants;
            self.stats.grind_moved_beacon += node.stats.grind_moved_beacon;
            self.stats.beacon_reveals += node.stats.beacon_reveals;
            self.stats.refused_cannot_pay += node.stats.refused_cannot_pay;
            self.stats.duties_refused += node.stats.duties_refused;
            self.stats.evidence_reported += node.stats.evidence_reported;
            self.stats.proposal_reports += node.stats.proposal_reports;
            self.stats.flood_blocks_sent += node.stats.flood_blocks_sent;
            if self.honest[node.me.id] {
                self.stats.proposals_not_executed += node.stats.proposals_not_executed;
                self.stats.most_blocks_executed_in_a_round =
                    self.stats.most_blocks_executed_in_a_round.max(node.stats.most_blocks_executed_in_a_round);
                self.stats.decided_after_round_zero += node.stats.decided_after_round_zero;
            }
            self.stats.wal_replays += node.stats.wal_replays;
            self.stats.replay_refusals += node.stats.replay_refusals;
            self.stats.sync_decisions += node.stats.sync_decisions;
        }
        self.stats.flood_sent = self.workload.flood.sent;
        self.stats.jailed = jailed_validators(&self.nodes[self.most_advanced_honest()].ledger).len();
        report.violation = self.checker.violation().cloned();
        report.trace_hash = *self.trace.finalize().as_bytes();
        report.stats = self.stats;
        report
    }
}

/// The first draws of a run: how many validators, and their keys.
fn draw_validator_keys(setup: &mut SimRng, config: &SimConfig) -> Vec<Keypair> {
    let n = setup.between(config.validators.0 as u64, config.validators.1 as u64) as usize;
    (0..n).map(|_| Keypair::from_seed(setup.bytes32())).collect()
}

/// The keys of a seed's validators, in node order: for tests that forge what a validator signs.
pub fn validator_keys(seed: u64, config: &SimConfig) -> Vec<Keypair> {
    draw_validator_keys(&mut SimRng::stream(seed, "setup"), config)
}

/// Validators jailed in a ledger's state (for tests and reports).
pub fn jailed_validators(ledger: &Ledger) -> BTreeSet<Address> {
    ledger
        .state()
        .scan_prefix(&keys::stake_prefix(Role::Validator))
        .into_iter()
        .filter_map(|(key, bytes)| trellis_contracts::state::decode_record::<Stake>(&key, &bytes).ok())
        .filter(|stake| stake.jailed)
        .map(|stake| stake.key.address())
        .collect()
}
