//! Blocks per second on a state that holds many finished jobs, and on one that holds many active
//! jobs waiting for their first miner, against the same chain with none, in one invocation
//! (issue 18, item 7). Each block is built by a proposer and checked by a validator (signatures,
//! execution, state root) on the chain's real rules over an in-memory store; the finished jobs
//! are what pruning leaves of them (the job record and one summary per round), the waiting ones a
//! job record, its active index entry and an open round without workers (what one `SubmitJob` of
//! one token leaves). Also prints what the linear state root this chain used before would cost per
//! block at that size, and what visiting every active job (as `begin_block` did until
//! 2026-12-03, instead of the jobs due) would cost per block.
//!   cargo run --release -p trellis-contracts --example state_growth -- [JOBS] [BLOCKS] [TXS]

use std::time::Instant;

use trellis_contracts::kv::{apply_changes_digested, Overlay};
use trellis_contracts::state::{active_jobs, keys, write, Job, JobStatus, MinerEntry, Phase, RoundState, RoundSummary};
use trellis_contracts::{recompute_state_root, state_root, Chain, Genesis, KvStore, MemoryKv, Params, Parent};
use trellis_proto::*;

const ROUNDS_PER_JOB: u32 = 10;
const MINERS_PER_JOB: u8 = 4;

fn spec() -> JobSpec {
    JobSpec {
        name: "finished".into(),
        model: ModelConfig { vocab_size: 256, context_length: 64, width: 64, layers: 4, heads: 4 },
        init_seed: 1,
        dataset_root: Hash([7; 32]),
        dataset_shards: 16,
        diloco: DilocoParams {
            workers_per_round: MINERS_PER_JOB as u32,
            inner_steps: 40,
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
            rounds: ROUNDS_PER_JOB,
            encoding: DeltaEncoding::F32,
            inner_optimizer: Default::default(),
            min_inner_steps: 40,
            fragments: 1,
        },
        aggregation: AggregationRule::Mean,
        verification: VerificationParams {
            checkpoint_interval: 10,
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

/// What a block holds besides its transfers.
#[derive(Clone, Copy)]
enum Jobs {
    None,
    Finished(u64),
    Waiting(u64),
}

/// Writes `count` active jobs of one token a round that nobody has joined, as `SubmitJob` leaves
/// them, then refreshes the stored digest.
fn add_waiting_jobs(kv: &mut MemoryKv, count: u64) {
    let mut changes = trellis_contracts::kv::Changes::new();
    {
        let mut overlay = Overlay::new(&*kv);
        for id in 0..count {
            let job = Job::submitted(
                JobId(id),
                Address([9; 20]),
                JobSpec { reward_per_round: Amount(1), ..spec() },
                Amount(1),
            );
            trellis_contracts::rounds::new_round(&job, 0, Height(0), &Hash::ZERO).store(&mut overlay);
            write(&mut overlay, keys::job(job.id), &job);
            overlay.put(keys::active(job.id), Vec::new());
        }
        write(&mut overlay, keys::NEXT_JOB.to_vec(), &count);
        changes.extend(overlay.into_changes());
    }
    apply_changes_digested(kv, changes).expect("the digest was written at genesis");
}

/// Milliseconds to read every active job and its current round once: what each block cost when
/// `begin_block` visited every active job.
fn visiting_every_active_job_ms(kv: &MemoryKv) -> f64 {
    let started = Instant::now();
    for job in active_jobs(kv).expect("the state decodes") {
        let round = RoundState::load(kv, job.id, job.current_round).expect("the state decodes");
        assert!(round.is_some_and(|r| r.workers.is_empty()), "a waiting job's round has no workers");
    }
    started.elapsed().as_secs_f64() * 1e3
}

/// Writes `count` finished jobs as pruning leaves them, then refreshes the stored digest.
fn add_finished_jobs(kv: &mut MemoryKv, count: u64) {
    let mut changes = trellis_contracts::kv::Changes::new();
    {
        let mut overlay = Overlay::new(&*kv);
        let miners: Vec<Address> = (0..MINERS_PER_JOB).map(|i| Address([i + 1; 20])).collect();
        for id in 0..count {
            let job = Job {
                id: JobId(id),
                submitter: Address([9; 20]),
                spec: spec(),
                escrow: Amount::ZERO,
                status: JobStatus::Finished,
                cancel_requested: false,
                current_round: ROUNDS_PER_JOB - 1,
                rounds_settled: ROUNDS_PER_JOB,
                model_hash: Hash([id as u8; 32]),
                momentum_hash: Hash([id as u8 ^ 0xff; 32]),
                miners: miners.iter().map(|m| MinerEntry { address: *m, ejected: false, missed_commits: 0 }).collect(),
            };
            write(&mut overlay, keys::job(job.id), &job);
            for round in 0..ROUNDS_PER_JOB {
                let summary = RoundSummary {
                    job: job.id,
                    round,
                    phase: Phase::Settled,
                    opened_at: Height(id * 100 + u64::from(round) * 10),
                    escalated: false,
                    commits: 4,
                    reveals: 4,
                    verdicts: 16,
                    valid_verdicts: 16,
                    accepted: miners.clone(),
                };
                write(&mut overlay, keys::summary(job.id, round), &summary);
            }
        }
        write(&mut overlay, keys::NEXT_JOB.to_vec(), &count);
        changes.extend(overlay.into_changes());
    }
    apply_changes_digested(kv, changes).expect("the digest was written at genesis");
}

struct Measured {
    blocks_per_s: f64,
    entries: usize,
    linear_root_ms: f64,
    visiting_every_active_job_ms: f64,
}

fn run(jobs: Jobs, blocks: u64, txs_per_block: usize) -> Measured {
    let validator = Keypair::from_seed([1; 32]);
    let senders: Vec<Keypair> = (0..txs_per_block)
        .map(|i| {
            Keypair::from_seed([
                2,
                (i % 256) as u8,
                (i / 256) as u8,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
            ])
        })
        .collect();
    let mut accounts: Vec<(Address, Amount)> = senders.iter().map(|k| (k.address(), Amount(1_000_000_000))).collect();
    accounts.push((validator.address(), Amount(1_000_000)));
    let genesis = Genesis {
        chain_id: "state-growth".into(),
        accounts,
        validators: vec![(validator.public_key(), Amount(20_000))],
        miners: Vec::new(),
        params: Params::default(),
    };
    let mut kv = MemoryKv::new();
    let chain = Chain::init_genesis(&mut kv, &genesis).expect("genesis");
    match jobs {
        Jobs::None => {}
        Jobs::Finished(count) => add_finished_jobs(&mut kv, count),
        Jobs::Waiting(count) => add_waiting_jobs(&mut kv, count),
    }
    let entries = kv.len();
    let mut parent = Parent { height: Height(0), hash: Hash::ZERO, time_ms: 0 };
    let started = Instant::now();
    for height in 1..=blocks {
        let txs: Vec<SignedTx> = senders
            .iter()
            .map(|k| {
                let kind = TxKind::Transfer { to: validator.address(), amount: Amount(1) };
                Transaction { sender: k.public_key(), nonce: height - 1, fee: Amount(1), kind }.sign("state-growth", k)
            })
            .collect();
        let mut proposer_view = Overlay::new(&kv);
        let built = chain
            .build_block(&mut proposer_view, &parent, validator.address(), height * 1_000, Hash::ZERO, txs)
            .expect("builds");
        assert!(built.left_out.is_empty(), "every transfer applies");
        let mut checker_view = Overlay::new(&kv);
        chain.execute_block(&mut checker_view, &parent, &built.block).expect("the built block checks");
        let changes = checker_view.into_changes();
        trellis_contracts::kv::apply_changes(&mut kv, changes);
        assert_eq!(state_root(&kv).expect("digest"), built.block.header.state_root);
        parent = Parent { height: Height(height), hash: built.block.hash(), time_ms: built.block.header.time_ms };
    }
    let blocks_per_s = blocks as f64 / started.elapsed().as_secs_f64();
    let timing = Instant::now();
    let linear = recompute_state_root(&kv);
    let linear_root_ms = timing.elapsed().as_secs_f64() * 1e3;
    assert_eq!(linear, state_root(&kv).expect("digest"), "the incremental root is the one computed from scratch");
    let visiting_every_active_job_ms = visiting_every_active_job_ms(&kv);
    Measured { blocks_per_s, entries, linear_root_ms, visiting_every_active_job_ms }
}

fn main() {
    let mut args = std::env::args().skip(1).map(|a| a.parse::<u64>().expect("numbers: JOBS BLOCKS TXS"));
    let jobs = args.next().unwrap_or(10_000);
    let blocks = args.next().unwrap_or(200);
    let txs = args.next().unwrap_or(100) as usize;
    println!(
        "{blocks} blocks of {txs} transfers, each built by a proposer and checked by a validator (in-memory store)"
    );
    let baseline = run(Jobs::None, blocks, txs);
    let grown = run(Jobs::Finished(jobs), blocks, txs);
    let waiting = run(Jobs::Waiting(jobs), blocks, txs);
    for (label, m) in [
        ("no jobs", &baseline),
        (&*format!("{jobs} finished jobs"), &grown),
        (&*format!("{jobs} waiting jobs"), &waiting),
    ] {
        println!(
            "{label:>22}: {:>8} state entries, {:>7.1} blocks/s; a linear state root would cost {:.1} ms per block (twice: build and check); visiting every active job {:.1} ms",
            m.entries, m.blocks_per_s, m.linear_root_ms, m.visiting_every_active_job_ms
        );
    }
    println!("ratio (finished / baseline): {:.3}", grown.blocks_per_s / baseline.blocks_per_s);
    println!("ratio (waiting / baseline): {:.3}", waiting.blocks_per_s / baseline.blocks_per_s);
}
