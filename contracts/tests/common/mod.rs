//! A small world for contract tests: a store, the chain's rules, keys, and a block clock.
#![allow(dead_code)]

use trellis_contracts::state::{keys, read, Account, Job, Phase, RoundState, Stake};
use trellis_contracts::{BlockCtx, Chain, Event, Genesis, MemoryKv, Params, TxError};
use trellis_proto::*;

pub const CHAIN: &str = "trellis-test";

pub struct World {
    pub kv: MemoryKv,
    pub chain: Chain,
    pub height: Height,
    pub validators: Vec<Keypair>,
    pub miners: Vec<Keypair>,
    pub submitter: Keypair,
    pub events: Vec<Event>,
    /// Mixed into every block's randomness, so that worlds built alike can draw differently.
    pub salt: u64,
}

pub fn key(tag: u8, index: u8) -> Keypair {
    Keypair::from_seed([
        tag, index, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ])
}

pub fn params() -> Params {
    Params { block_reward: Amount(0), ..Params::default() }
}

impl World {
    /// `v` validators (stake 20,000 each) and `m` miners (stake 5,000 each); everyone holds 100,000.
    pub fn new(v: u8, m: u8, params: Params) -> World {
        Self::with_submitter_balance(v, m, params, 1_000_000)
    }

    /// [`World::new`] with the submitter holding `balance`.
    pub fn with_submitter_balance(v: u8, m: u8, params: Params, balance: u64) -> World {
        let validators: Vec<Keypair> = (0..v).map(|i| key(1, i)).collect();
        let miners: Vec<Keypair> = (0..m).map(|i| key(2, i)).collect();
        let submitter = key(3, 0);
        let mut accounts: Vec<(Address, Amount)> =
            validators.iter().chain(&miners).map(|k| (k.address(), Amount(100_000))).collect();
        accounts.push((submitter.address(), Amount(balance)));
        let genesis = Genesis {
            chain_id: CHAIN.into(),
            accounts,
            validators: validators.iter().map(|k| (k.public_key(), Amount(20_000))).collect(),
            miners: miners.iter().map(|k| (k.public_key(), Amount(5_000))).collect(),
            params,
        };
        let mut kv = MemoryKv::new();
        let chain = Chain::init_genesis(&mut kv, &genesis).unwrap();
        World { kv, chain, height: Height(0), validators, miners, submitter, events: Vec::new(), salt: 0 }
    }

    pub fn ctx(&self) -> BlockCtx {
        let randomness =
            Hash::digest(HashDomain::BlockHeader, &[self.height.0.to_le_bytes(), self.salt.to_le_bytes()].concat());
        BlockCtx {
            height: self.height,
            time_ms: self.height.0 * 1000,
            randomness,
            proposer: self.validators[0].address(),
        }
    }

    /// Ends the current block and begins the next one.
    pub fn next_block(&mut self) {
        let ctx = self.ctx();
        let (events, _) = self.chain.end_block(&mut self.kv, &ctx).unwrap();
        self.events.extend(events);
        self.height += 1;
        let ctx = self.ctx();
        let events = self.chain.begin_block(&mut self.kv, &ctx).unwrap();
        self.events.extend(events);
    }

    pub fn advance_to(&mut self, height: Height) {
        while self.height < height {
            self.next_block();
        }
    }

    pub fn nonce(&self, who: &Keypair) -> u64 {
        self.account(&who.address()).nonce
    }

    pub fn account(&self, who: &Address) -> Account {
        read(&self.kv, &keys::account(who)).unwrap().unwrap_or_default()
    }

    pub fn balance(&self, who: &Keypair) -> u64 {
        self.account(&who.address()).balance.0
    }

    pub fn stake(&self, role: Role, who: &Keypair) -> Stake {
        read(&self.kv, &keys::stake(role, &who.address())).unwrap().unwrap()
    }

    pub fn job(&self, id: u64) -> Job {
        read(&self.kv, &keys::job(JobId(id))).unwrap().unwrap()
    }

    pub fn round(&self, job: u64, round: u32) -> RoundState {
        RoundState::load(&self.kv, JobId(job), round).unwrap().unwrap()
    }

    pub fn signed(&self, who: &Keypair, kind: TxKind) -> SignedTx {
        Transaction { sender: who.public_key(), nonce: self.nonce(who), fee: Amount(1), kind }.sign(CHAIN, who)
    }

    pub fn send(&mut self, who: &Keypair, kind: TxKind) -> Result<Vec<Event>, TxError> {
        let tx = self.signed(who, kind);
        self.apply(&tx)
    }

    pub fn apply(&mut self, tx: &SignedTx) -> Result<Vec<Event>, TxError> {
        let tx = tx.clone();
        let ctx = self.ctx();
        let result = self.chain.apply_tx(&mut self.kv, &tx, &ctx);
        if let Ok(events) = &result {
            self.events.extend(events.clone());
        }
        result
    }

    pub fn spec(&self) -> JobSpec {
        JobSpec {
            name: "test-job".into(),
            model: ModelConfig { vocab_size: 256, context_length: 64, width: 64, layers: 4, heads: 4 },
            init_seed: 1,
            dataset_root: Hash([7; 32]),
            dataset_shards: 16,
            diloco: DilocoParams {
                workers_per_round: 3,
                inner_steps: 20,
                batch_size: 8,
                sequence_length: 64,
                learning_rate: 3e-3,
                beta1: 0.9,
                beta2: 0.95,
                weight_decay: 0.1,
                grad_clip: 1.0,
                warmup_steps: 5,
                outer_optimizer: OuterOptimizer::Nesterov,
                outer_learning_rate: 0.7,
                outer_momentum: 0.9,
                rounds: 3,
                encoding: DeltaEncoding::F32,
                inner_optimizer: Default::default(),
                min_inner_steps: 20,
                fragments: 1,
            },
            aggregation: AggregationRule::Mean,
            verification: VerificationParams {
                checkpoint_interval: 5,
                segments_per_miner: 2,
                mode: VerificationMode::Exact,
                checkpoint_state: Default::default(),
            },
            reward_per_round: Amount(9_000),
            min_miner_stake: Amount(1_000),
            commit_blocks: 5,
            verify_blocks: 5,
        }
    }

    /// Submits the default job with `escrow` and has every miner join. Returns the job id.
    pub fn submit_and_join(&mut self, escrow: u64) -> u64 {
        let spec = self.spec();
        self.submit_spec_and_join(spec, escrow)
    }

    /// Submits `spec` with `escrow` and has every miner join. Returns the job id.
    pub fn submit_spec_and_join(&mut self, spec: JobSpec, escrow: u64) -> u64 {
        let submitter = Keypair::from_seed(self.submitter.seed());
        self.send(&submitter, TxKind::SubmitJob { spec, escrow: Amount(escrow) }).unwrap();
        let id = self.chain_next_job() - 1;
        for i in 0..self.miners.len() {
            let miner = Keypair::from_seed(self.miners[i].seed());
            self.send(&miner, TxKind::JoinJob { job: JobId(id) }).unwrap();
        }
        id
    }

    fn chain_next_job(&self) -> u64 {
        read(&self.kv, keys::NEXT_JOB).unwrap().unwrap()
    }

    /// The work miner `i` reveals (distinct Δ per miner), of the job's H = 20 steps.
    pub fn work(&self, job: u64, round: u32, i: usize) -> WorkReveal {
        self.work_of_steps(job, round, i, 20)
    }

    /// [`World::work`] of a miner that trained `steps` inner steps.
    pub fn work_of_steps(&self, job: u64, round: u32, i: usize, steps: u32) -> WorkReveal {
        WorkReveal {
            job: JobId(job),
            round,
            trail: Hash([i as u8 + 1; 32]),
            final_checkpoint: Hash([i as u8 + 50; 32]),
            delta_hash: Hash([i as u8 + 100; 32]),
            residual_hash: Hash::ZERO,
            steps,
            continues: Hash::ZERO,
            next_residual: Hash::ZERO,
        }
    }

    /// Miner `i`'s commitment to [`World::work`].
    pub fn commitment(&self, job: u64, round: u32, i: usize) -> WorkCommitment {
        WorkCommitment { job: JobId(job), round, binding: self.work(job, round, i).binding(&self.miners[i].address()) }
    }

    pub fn commit(&mut self, job: u64, round: u32, i: usize) -> Result<Vec<Event>, TxError> {
        let commitment = self.commitment(job, round, i);
        let miner = Keypair::from_seed(self.miners[i].seed());
        self.send(&miner, TxKind::CommitWork(commitment))
    }

    pub fn reveal(&mut self, job: u64, round: u32, i: usize) -> Result<Vec<Event>, TxError> {
        let work = self.work(job, round, i);
        self.reveal_work(i, work)
    }

    /// Miner `i` commits to `work`.
    pub fn commit_work(&mut self, i: usize, work: &WorkReveal) -> Result<Vec<Event>, TxError> {
        let commitment =
            WorkCommitment { job: work.job, round: work.round, binding: work.binding(&self.miners[i].address()) };
        let miner = Keypair::from_seed(self.miners[i].seed());
        self.send(&miner, TxKind::CommitWork(commitment))
    }

    /// Miner `i` reveals `work`.
    pub fn reveal_work(&mut self, i: usize, work: WorkReveal) -> Result<Vec<Event>, TxError> {
        let miner = Keypair::from_seed(self.miners[i].seed());
        self.send(&miner, TxKind::RevealWork(work))
    }

    /// Moves to the round's reveal phase (past the commit deadline, or at once when every worker
    /// committed).
    pub fn enter_reveals(&mut self, job: u64, round: u32) {
        if self.round(job, round).phase == Phase::Open {
            self.next_block();
        }
        if self.round(job, round).phase == Phase::Open {
            let deadline = self.round(job, round).commit_deadline;
            self.advance_to(deadline + 1);
        }
        assert_eq!(self.round(job, round).phase, Phase::Revealing);
    }

    /// Past the commit phase: every miner that committed reveals, and the next block samples.
    pub fn past_commit_deadline(&mut self, job: u64, round: u32) {
        self.enter_reveals(job, round);
        let committed: Vec<Address> = self.round(job, round).commits.iter().map(|c| c.miner).collect();
        for i in 0..self.miners.len() {
            if committed.contains(&self.miners[i].address()) {
                self.reveal(job, round, i).unwrap();
            }
        }
        self.next_block();
    }

    pub fn validator_index(&self, address: &Address) -> usize {
        self.validators.iter().position(|k| &k.address() == address).unwrap()
    }

    /// The key of any participant of this world (a miner may have bonded as a validator too).
    pub fn key_of(&self, address: &Address) -> Option<Keypair> {
        self.validators
            .iter()
            .chain(&self.miners)
            .chain(std::iter::once(&self.submitter))
            .find(|k| &k.address() == address)
            .map(|k| Keypair::from_seed(k.seed()))
    }

    /// Every assigned checker that has not answered yet sends `decide(miner, segment)`;
    /// `None` stays silent.
    pub fn verdicts(
        &mut self,
        job: u64,
        round: u32,
        decide: impl Fn(&Address, u32, &Address) -> Option<VerdictOutcome>,
    ) {
        let state = self.round(job, round);
        for assignment in state.assignments {
            for checker in &assignment.checkers {
                let answered = state
                    .verdicts
                    .iter()
                    .any(|v| &v.checker == checker && v.miner == assignment.miner && v.segment == assignment.segment);
                if answered {
                    continue;
                }
                let Some(outcome) = decide(&assignment.miner, assignment.segment, checker) else { continue };
                let Some(validator) = self.key_of(checker) else { continue };
                let verdict =
                    Verdict { job: JobId(job), round, miner: assignment.miner, segment: assignment.segment, outcome };
                self.send(&validator, TxKind::Verdict(verdict)).unwrap();
            }
        }
    }

    /// Moves past the end of verification, or to the block that tallied or escalated the round
    /// if that came first (every verdict in; an escalation's fresh window may end before the
    /// first would have, and a window lengthened to its floor may outlast the aggregation's).
    pub fn past_verify_end(&mut self, job: u64, round: u32) {
        let before = self.round(job, round);
        while self.height <= before.verify_end {
            self.next_block();
            let now = self.round(job, round);
            if now.phase != Phase::Verifying || now.escalated != before.escalated {
                return;
            }
        }
    }

    pub fn aggregate(&mut self, job: u64, round: u32) -> Result<Vec<Event>, TxError> {
        let accepted = self.round(job, round).accepted;
        let validator = Keypair::from_seed(self.validators[0].seed());
        let aggregate =
            Aggregate { job: JobId(job), round, model_hash: Hash([9; 32]), momentum_hash: Hash([8; 32]), accepted };
        self.send(&validator, TxKind::CommitAggregate(aggregate))
    }

    pub fn supply_holds(&self) {
        let supply: trellis_contracts::state::Supply = read(&self.kv, keys::SUPPLY).unwrap().unwrap();
        assert_eq!(
            trellis_contracts::total_holdings(&self.kv).unwrap(),
            supply.expected_total().expect("supply fits a u64"),
            "supply not conserved"
        );
    }
}

/// Every slash `who` received, as (amount, reason), in order.
pub fn slashed(world: &World, who: &Address) -> Vec<(u64, trellis_contracts::SlashReason)> {
    world
        .events
        .iter()
        .filter_map(|e| match e {
            Event::Slashed { who: w, amount, reason, .. } if w == who => Some((amount.0, *reason)),
            _ => None,
        })
        .collect()
}

pub fn invalid() -> VerdictOutcome {
    VerdictOutcome::Invalid(InvalidEvidence {
        reason: InvalidReason::CheckpointMismatch,
        expected: Hash([1; 32]),
        reproduced: Hash([2; 32]),
        distance: 0.0,
    })
}

/// `base` with its sizes, counts and windows taken from `values`: mostly of every magnitude up to
/// a little past each bound (log-uniform, so that many such specs pass validation), sometimes
/// anything at all. An adversarial submitter's spec.
pub fn wild_spec(base: &JobSpec, values: [u32; 11], reward: u64) -> JobSpec {
    let pick = |x: u32, bits: u32| {
        if x % 8 == 0 {
            return x;
        }
        let width = (x >> 24) % (bits + 1);
        1 + ((x >> 2) & ((1u64 << width) - 1) as u32)
    };
    let [h, c, b, t, k, s, rounds, context, commit, verify, clip] = values;
    let mut spec = base.clone();
    spec.diloco.inner_steps = pick(h, 21);
    spec.diloco.min_inner_steps = spec.diloco.inner_steps;
    spec.verification.checkpoint_interval = pick(c, 6);
    spec.diloco.batch_size = pick(b, 13);
    spec.model.context_length = pick(context, 17);
    spec.diloco.sequence_length = pick(t, 17).min(spec.model.context_length.max(1));
    spec.diloco.workers_per_round = pick(k, 7);
    spec.verification.segments_per_miner = pick(s, 7);
    spec.diloco.rounds = pick(rounds, 21);
    spec.diloco.warmup_steps = 0;
    spec.dataset_shards = spec.diloco.workers_per_round;
    spec.reward_per_round = Amount(reward.max(1));
    spec.commit_blocks = pick(commit, 21);
    spec.verify_blocks = pick(verify, 21);
    if clip % 3 == 0 {
        spec.aggregation = AggregationRule::CenteredClip { tau: 1.0, iterations: pick(clip, 8) };
    }
    spec
}
