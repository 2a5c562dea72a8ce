//! The simulated users of the chain: a submitter posting training jobs, miners joining them and
//! committing work (some honestly, some cheating), and plain accounts moving funds, all drawn
//! from the seed.
//!
//! Miners' behaviours are the ground truth an honest checker's re-execution would find
//! ([`finding`]): the simulator does not train, it knows what a replay would
//! produce, and judges it with the protocol's own rules (`trellis_protocol::judge`). Miners commit
//! a binding and reveal their work after the commit phase; a copier commits another miner's
//! binding and can never reveal it (the chain's rule); poisoners, withholders and work-skippers
//! are caught by verdicts.
//!
//! Guarantees: one transaction in flight per account (the next waits until the chain took the
//! last or it can no longer apply), every transaction correctly signed with the account's next
//! nonce, and nothing here reads anything but the committed chain of an honest node (what a
//! client of its RPC would see).

use std::collections::BTreeMap;

use trellis_contracts::state::{Job, Phase, RoundState};
use trellis_proto::{
    Address, AggregationRule, Amount, DeltaEncoding, DilocoParams, Hash, HashDomain, JobSpec, Keypair, ModelConfig,
    OuterOptimizer, Role, SignedTx, TrailEntry, Transaction, TxKind, VerdictOutcome, VerificationMode,
    VerificationParams, WorkCommitment, WorkReveal,
};
use trellis_protocol::behaviour::Behaviour;
use trellis_protocol::judge::{judge_replay, Replayed};
use trellis_protocol::{Blame, Comparison, SegmentClaim};

use super::chain::{sim_honest_delta, Ledger, Vectors};
use super::network::Time;
use super::rng::SimRng;

/// Fee every simulated transaction pays.
pub const FEE: u64 = 1;
/// Fee a funded flooder's failing transfers pay: above the honest fee, so a pool and a block
/// that sorted by fee alone would take them first.
pub const FLOOD_FEE: u64 = 2;
/// A transaction not taken by the chain within this long is sent again.
const RESEND_MS: Time = 4_000;

/// What an honest checker finds when it re-executes a sampled segment of a miner that behaves
/// as `behaviour` (`trellis_protocol::behaviour`; the simulator stages
/// `behaviour::SIMULATED_MINERS`): the replay the simulator knows this miner's trail leads to,
/// judged by the protocol's rules.
pub fn finding(behaviour: Behaviour, miner: &Address, segment: u32) -> VerdictOutcome {
    let hash = |label: &[u8]| {
        Hash::digest(HashDomain::Checkpoint, &[miner.0.as_slice(), &segment.to_le_bytes(), label].concat())
    };
    let losses = [3.25f32];
    let claim = SegmentClaim {
        segment,
        start: TrailEntry { step: u64::from(segment), hash: hash(b"start") },
        end: TrailEntry { step: u64::from(segment) + 1, hash: hash(b"claimed") },
        steps: 1,
        losses: &losses,
    };
    let reached = match behaviour {
        Behaviour::Withhold | Behaviour::SkipWork => return Blame::Withheld.outcome(),
        // Its trail (or its Δ, which the same check covers) is not what training gives.
        // (A forged start fails the first link, which every check of a streaming round covers.)
        Behaviour::FakeTrail
        | Behaviour::UnitGap
        | Behaviour::PoisonSignFlip
        | Behaviour::PoisonNoise
        | Behaviour::ForgedStart => hash(b"reproduced"),
        Behaviour::Honest
        | Behaviour::Copy
        | Behaviour::LyingPeer
        | Behaviour::ForgeAggregate
        | Behaviour::Frame
        | Behaviour::DoublePropose
        | Behaviour::Straggler => claim.end.hash,
    };
    judge_replay(&claim, &Replayed { end_hash: reached, losses: &losses, distance: 0.0 }, Comparison::Exact)
}

/// The job every simulated submitter posts: small windows so whole rounds fit in a run.
pub fn sim_job_spec(serial: u32) -> JobSpec {
    JobSpec {
        name: format!("sim-job-{serial}"),
        model: ModelConfig { vocab_size: 256, context_length: 64, width: 64, layers: 2, heads: 4 },
        init_seed: u64::from(serial),
        dataset_root: Hash::digest(HashDomain::Blob, b"sim dataset"),
        dataset_shards: 8,
        diloco: DilocoParams {
            workers_per_round: 3,
            inner_steps: 20,
            batch_size: 4,
            sequence_length: 32,
            learning_rate: 3e-3,
            beta1: 0.9,
            beta2: 0.95,
            weight_decay: 0.1,
            grad_clip: 1.0,
            warmup_steps: 2,
            outer_optimizer: OuterOptimizer::Nesterov,
            outer_learning_rate: 0.7,
            outer_momentum: 0.9,
            rounds: 3,
            encoding: DeltaEncoding::F32,
            inner_optimizer: Default::default(),
            // Some simulated miners are stragglers (`Workload::work`): weighted aggregates and
            // rewards by tokens run through every simulated round.
            min_inner_steps: 10,
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
        commit_blocks: 4,
        verify_blocks: 8,
    }
}

struct InFlight {
    tx: SignedTx,
    sent_at: Time,
}

/// What an account of the workload does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    Submitter,
    Miner(Behaviour),
    /// Moves funds around.
    User,
}

struct Account {
    key: Keypair,
    address: Address,
    part: Part,
}

/// Accounts that flood every validator with failing transactions (issue 18's flood): empty
/// accounts sending transfers at fee `u64::MAX` (their sender can pay nothing), and funded
/// accounts sending, above the honest fee, transfers of more than they hold (each fails in a
/// block: included, it pays its fee).
pub struct Flood {
    pub empty: Vec<Keypair>,
    pub funded: Vec<Keypair>,
    /// Nonces each flooder sends ahead of its next one, every tick.
    pub nonces: u64,
    /// Signed flood transactions by (sender, nonce): signing dominates a tick otherwise.
    signed: BTreeMap<(Address, u64), SignedTx>,
    pub sent: u64,
}

impl Flood {
    pub fn new(empty: Vec<Keypair>, funded: Vec<Keypair>, nonces: u64) -> Self {
        Self { empty, funded, nonces, signed: BTreeMap::new(), sent: 0 }
    }

    fn tick(&mut self, chain_id: &str, view: &Ledger) -> Vec<SignedTx> {
        let mut out = Vec::new();
        let plans: Vec<(Keypair, u64)> = self
            .empty
            .iter()
            .map(|k| (Keypair::from_seed(k.seed()), u64::MAX))
            .chain(self.funded.iter().map(|k| (Keypair::from_seed(k.seed()), FLOOD_FEE)))
            .collect();
        for (key, fee) in plans {
            let address = key.address();
            let next = view.next_nonce(&address);
            self.signed.retain(|(sender, nonce), _| *sender != address || *nonce >= next);
            for nonce in next..next + self.nonces {
                let tx = self.signed.entry((address, nonce)).or_insert_with(|| {
                    let kind = TxKind::Transfer { to: address, amount: Amount(u64::MAX / 2) };
                    Transaction { sender: key.public_key(), nonce, fee: Amount(fee), kind }.sign(chain_id, &key)
                });
                out.push(tx.clone());
            }
        }
        self.sent += out.len() as u64;
        out
    }

    /// Whether `address` is one of the flood's senders.
    pub fn sends(&self, address: &Address) -> bool {
        self.empty.iter().chain(&self.funded).any(|k| &k.address() == address)
    }
}

/// The chain's users.
pub struct Workload {
    rng: SimRng,
    chain_id: String,
    accounts: Vec<Account>,
    /// Every address a transfer may go to.
    recipients: Vec<Address>,
    in_flight: BTreeMap<Address, InFlight>,
    jobs_submitted: u32,
    max_jobs: u32,
    pub flood: Flood,
}

/// The accounts a workload signs for: who submits jobs, the miners with how each behaves,
/// and the users sending transfers.
pub struct Cast {
    pub submitter: Keypair,
    pub miners: Vec<(Keypair, Behaviour)>,
    pub users: Vec<Keypair>,
}

impl Workload {
    pub fn new(rng: SimRng, chain_id: &str, cast: Cast, validators: &[Address], max_jobs: u32, flood: Flood) -> Self {
        let Cast { submitter, miners, users } = cast;
        let account = |key: Keypair, part| Account { address: key.address(), key, part };
        let mut accounts = vec![account(submitter, Part::Submitter)];
        accounts.extend(miners.into_iter().map(|(key, behaviour)| account(key, Part::Miner(behaviour))));
        accounts.extend(users.into_iter().map(|key| account(key, Part::User)));
        let mut recipients: Vec<Address> = accounts.iter().map(|a| a.address).collect();
        recipients.extend(validators);
        Self {
            rng,
            chain_id: chain_id.to_string(),
            accounts,
            recipients,
            in_flight: BTreeMap::new(),
            jobs_submitted: 0,
            max_jobs,
            flood,
        }
    }

    /// Transactions to gossip now, given the committed chain `view`: new ones for idle
    /// accounts, and stale ones sent again.
    pub fn tick(&mut self, now: Time, view: &Ledger) -> Vec<SignedTx> {
        let mut out = Vec::new();
        let rounds = view.active_rounds();
        for index in 0..self.accounts.len() {
            let address = self.accounts[index].address;
            // Settle what is in flight: taken, dead, or due for another send.
            match self.in_flight.get_mut(&address) {
                Some(flight)
                    if flight.tx.tx.nonce < view.next_nonce(&address) || view.dry_run(&flight.tx.tx).is_err() =>
                {
                    self.in_flight.remove(&address);
                }
                Some(flight) => {
                    if now >= flight.sent_at + RESEND_MS {
                        flight.sent_at = now;
                        out.push(flight.tx.clone());
                    }
                    continue;
                }
                None => {}
            }
            let Some(kind) = self.next_action(index, &rounds, view.vectors()) else { continue };
            let key = &self.accounts[index].key;
            let tx = Transaction { sender: key.public_key(), nonce: view.next_nonce(&address), fee: Amount(FEE), kind }
                .sign(&self.chain_id, key);
            self.in_flight.insert(address, InFlight { tx: tx.clone(), sent_at: now });
            out.push(tx);
        }
        out.extend(self.flood.tick(&self.chain_id, view));
        out
    }

    fn next_action(&mut self, index: usize, rounds: &[(Job, RoundState)], vectors: &Vectors) -> Option<TxKind> {
        let address = self.accounts[index].address;
        match self.accounts[index].part {
            Part::Submitter => {
                if rounds.is_empty() && self.jobs_submitted < self.max_jobs {
                    self.jobs_submitted += 1;
                    let spec = sim_job_spec(self.jobs_submitted);
                    let escrow = Amount(spec.reward_per_round.0 * u64::from(spec.diloco.rounds));
                    return Some(TxKind::SubmitJob { spec, escrow });
                }
                let (job, _) = rounds.first()?;
                self.rng.chance_ppm(2_000).then_some(TxKind::CancelJob { job: job.id })
            }
            Part::Miner(behaviour) => self.miner_action(&address, behaviour, rounds, vectors),
            Part::User => {
                // Now and then a transfer, sometimes of more than the account holds (rejected).
                if !self.rng.chance_ppm(250_000) {
                    return None;
                }
                let to = *self.rng.pick(&self.recipients);
                Some(TxKind::Transfer { to, amount: Amount(self.rng.between(1, 120_000)) })
            }
        }
    }

    fn miner_action(
        &mut self,
        address: &Address,
        behaviour: Behaviour,
        rounds: &[(Job, RoundState)],
        vectors: &Vectors,
    ) -> Option<TxKind> {
        for (job, round) in rounds {
            let entry = job.miners.iter().find(|m| &m.address == address);
            if entry.is_none() && !job.cancel_requested {
                return Some(TxKind::JoinJob { job: job.id });
            }
            if entry.is_some_and(|m| m.ejected) {
                continue;
            }
            let commit = round.commits.iter().find(|c| &c.miner == address);
            if round.phase == Phase::Open && round.workers.contains(address) && commit.is_none() {
                return Some(TxKind::CommitWork(self.commitment(address, behaviour, job, round)));
            }
            let own = Self::work(address, job, round);
            if round.phase == Phase::Revealing
                && commit.is_some_and(|c| c.reveal.is_none() && c.binding == own.binding(address))
            {
                // Its Δ goes to the blob exchange with the reveal, as a node's miner publishes it.
                vectors.publish(&sim_honest_delta(address, job, round.round));
                return Some(TxKind::RevealWork(own));
            }
        }
        // Between rounds: top the bond up, or start unbonding a little (which stays slashable).
        if self.rng.chance_ppm(20_000) {
            return Some(TxKind::Bond { role: Role::Miner, amount: Amount(self.rng.between(100, 1_000)) });
        }
        if self.rng.chance_ppm(10_000) {
            return Some(TxKind::Unbond { role: Role::Miner, amount: Amount(self.rng.between(100, 600)) });
        }
        None
    }

    /// The work `miner` reveals for `round` of `job`: its Δ is a short vector the validators
    /// aggregate; trail and checkpoints are made up (verdicts come from the ground truth).
    fn work(miner: &Address, job: &Job, round: &RoundState) -> WorkReveal {
        let tag = |label: &[u8]| {
            Hash::digest(
                HashDomain::Checkpoint,
                &[miner.0.as_slice(), &job.id.0.to_le_bytes(), &round.round.to_le_bytes(), label].concat(),
            )
        };
        WorkReveal {
            job: job.id,
            round: round.round,
            trail: tag(b"trail"),
            final_checkpoint: tag(b"final"),
            delta_hash: Vectors::hash_of(&sim_honest_delta(miner, job, round.round)),
            residual_hash: Hash::ZERO,
            // A third of the miners (by address) are stragglers that stop at the job's minimum.
            steps: if miner.0[0] % 3 == 0 { job.spec.diloco.min_inner_steps } else { job.spec.diloco.inner_steps },
            continues: Hash::ZERO,
            next_residual: Hash::ZERO,
        }
    }

    /// What `miner` commits: the binding of its own work, or a copier's copy of another worker's
    /// (as read from the mempool: the simulator computes it).
    fn commitment(&self, miner: &Address, behaviour: Behaviour, job: &Job, round: &RoundState) -> WorkCommitment {
        let victim = round.workers.iter().find(|w| *w != miner).filter(|_| behaviour == Behaviour::Copy);
        let owner = victim.unwrap_or(miner);
        WorkCommitment { job: job.id, round: round.round, binding: Self::work(owner, job, round).binding(owner) }
    }
}
