//! How often the chain's own segment sampling catches a miner that faked a fraction f of its
//! trail, against the formula in docs/economics.md.
//!   cargo run --release -p trellis-contracts --example detection_rate -- [TRIALS] [SEGMENTS]

use trellis_contracts::rounds::sample;
use trellis_contracts::state::{Commit, Job, JobStatus, Phase, RoundState, Validator, ValidatorSet};
use trellis_proto::hash::draw;
use trellis_proto::*;

fn binomial(n: u64, k: u64) -> f64 {
    if k > n {
        return 0.0;
    }
    (0..k).fold(1.0, |acc, i| acc * (n - i) as f64 / (i + 1) as f64)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let trials: u64 = args.get(1).map_or(2000, |s| s.parse().expect("TRIALS is a number"));
    let segments: u32 = args.get(2).map_or(20, |s| s.parse().expect("SEGMENTS is a number"));
    let validators = ValidatorSet {
        validators: (0..4u8)
            .map(|i| {
                let key = Keypair::from_seed([i + 1; 32]);
                Validator { address: key.address(), key: key.public_key(), power: 10_000 + i as u64 * 1_000 }
            })
            .collect(),
    };
    let miner = Keypair::from_seed([99; 32]).address();
    println!("{trials} trials per cell, a trail of {segments} segments, checkers drawn as on chain");
    println!("{:>5} {:>3} {:>3} {:>10} {:>10} {:>10} {:>8}", "f", "k", "s", "caught", "predicted", "std err", "z");
    for s in [1u32, 2, 4] {
        for f in [0.05f64, 0.1, 0.25] {
            let k = (f * segments as f64).round() as u32;
            let mut caught = 0u64;
            for trial in 0..trials {
                let spec_job = job(s);
                let round = round_with_commit(miner, segments + 1);
                let block = [trial.to_le_bytes().as_slice(), &s.to_le_bytes(), &k.to_le_bytes()].concat();
                let randomness = Hash::digest(HashDomain::BlockHeader, &block);
                // The faked segments: k distinct ones, chosen independently of the sampling.
                let mut faked = std::collections::BTreeSet::new();
                let mut attempt = 0;
                while (faked.len() as u32) < k {
                    faked.insert((draw("faked", &trial.to_le_bytes(), &[attempt]) % segments as u64) as u32);
                    attempt += 1;
                }
                let assignments = sample(&randomness, &spec_job, &round, &validators, 2);
                if assignments.iter().any(|a| faked.contains(&a.segment)) {
                    caught += 1;
                }
            }
            let rate = caught as f64 / trials as f64;
            let predicted = 1.0 - binomial((segments - k) as u64, s as u64) / binomial(segments as u64, s as u64);
            let std_err = (predicted * (1.0 - predicted) / trials as f64).sqrt();
            let z = if std_err > 0.0 { (rate - predicted) / std_err } else { 0.0 };
            println!("{f:>5.2} {k:>3} {s:>3} {rate:>10.4} {predicted:>10.4} {std_err:>10.4} {z:>8.2}");
        }
    }
}

fn job(segments_per_miner: u32) -> Job {
    Job {
        id: JobId(1),
        submitter: Address([1; 20]),
        spec: JobSpec {
            name: "detection".into(),
            model: ModelConfig { vocab_size: 256, context_length: 64, width: 64, layers: 4, heads: 4 },
            init_seed: 0,
            dataset_root: Hash::ZERO,
            dataset_shards: 16,
            diloco: DilocoParams {
                workers_per_round: 4,
                inner_steps: 100,
                batch_size: 8,
                sequence_length: 64,
                learning_rate: 3e-3,
                beta1: 0.9,
                beta2: 0.95,
                weight_decay: 0.1,
                grad_clip: 1.0,
                warmup_steps: 10,
                outer_optimizer: OuterOptimizer::Nesterov,
                outer_learning_rate: 0.7,
                outer_momentum: 0.9,
                rounds: 10,
                encoding: DeltaEncoding::F32,
            },
            aggregation: AggregationRule::Mean,
            verification: VerificationParams { checkpoint_interval: 5, segments_per_miner, mode: VerificationMode::Exact },
            reward_per_round: Amount(1),
            min_miner_stake: Amount(1_000),
            commit_blocks: 5,
            verify_blocks: 5,
        },
        escrow: 10,
        status: JobStatus::Active,
        cancel_requested: false,
        current_round: 0,
        rounds_settled: 0,
        model_hash: Hash::ZERO,
        momentum_hash: Hash::ZERO,
        miners: Vec::new(),
    }
}

fn round_with_commit(miner: Address, checkpoints: u32) -> RoundState {
    RoundState {
        job: JobId(1),
        round: 0,
        opened_at: 0,
        commit_deadline: 5,
        verify_end: 10,
        aggregate_deadline: 0,
        phase: Phase::Open,
        escalated: false,
        workers: vec![miner],
        commits: vec![Commit {
            miner,
            work: WorkCommitment {
                job: JobId(1),
                round: 0,
                trail_root: Hash::ZERO,
                checkpoints,
                final_checkpoint: Hash::ZERO,
                delta_hash: Hash::ZERO,
                residual_hash: Hash::ZERO,
                tokens: 1,
            },
            height: 1,
            copied: false,
        }],
        assignments: Vec::new(),
        verdicts: Vec::new(),
        accepted: Vec::new(),
        matched_checkers: Vec::new(),
    }
}
