//! How often the chain's own segment sampling catches a miner that faked a fraction f of its
//! trail, against the formula in docs/economics.md; then what faking is worth at the example
//! job's parameters (docs/jobs.md), with the measured catch rate and with the withhold option.
//!   cargo run --release -p trellis-contracts --example detection_rate -- [TRIALS] [SEGMENTS]

use trellis_contracts::rounds::sample;
use trellis_contracts::state::{Commit, Job, Phase, RoundState, Validator, ValidatorSet};
use trellis_proto::hash::draw;
use trellis_proto::*;

use trellis_contracts::Params;
use trellis_protocol::economics::{binomial, faking_advantage, Stakes};

/// Fraction of `trials` rounds in which sampling `s` of `segments` segments hits one of `k` faked.
fn measured_catch_rate(trials: u64, segments: u32, k: u32, s: u32, validators: &ValidatorSet, miner: Address) -> f64 {
    let mut caught = 0u64;
    for trial in 0..trials {
        let spec_job = job(segments, s);
        let round = round_with_commit(miner, spec_job.spec.diloco.inner_steps);
        let block =
            [trial.to_le_bytes().as_slice(), &s.to_le_bytes(), &k.to_le_bytes(), &segments.to_le_bytes()].concat();
        let randomness = Hash::digest(HashDomain::BlockHeader, &block);
        let mut faked = std::collections::BTreeSet::new();
        let mut attempt = 0;
        while (faked.len() as u32) < k {
            faked.insert((draw("faked", &trial.to_le_bytes(), &[attempt]) % segments as u64) as u32);
            attempt += 1;
        }
        if sample(&randomness, &spec_job, &round, validators, 2).iter().any(|a| faked.contains(&a.segment)) {
            caught += 1;
        }
    }
    caught as f64 / trials as f64
}

/// Expected profit of faking against honest work at the example job of docs/jobs.md: 3 workers
/// share 10,000 a round less the checkers' 10%, bonds at the 1,000 minimum, compute worth the
/// reward (a job that pays what it buys), s = 2; trails of n = 4 segments (H = 40, c = 10) and,
/// for fractions a 4-segment trail cannot fake, of n = 20.
fn economics(trials: u64, validators: &ValidatorSet, miner: Address) {
    let params = Params::default();
    let reward = 10_000.0 * (1.0 - params.verifier_share_ppm as f64 / 1e6) / 3.0;
    let slash = |ppm: u64| ppm as f64 / 1e6;
    let stakes = Stakes {
        reward,
        compute: reward,
        bond: 1_000.0,
        caught_slash: slash(params.poisoner_slash_ppm),
        withhold_slash: slash(params.withhold_slash_ppm),
    };
    let old_withhold = Stakes { withhold_slash: slash(params.freeloader_slash_ppm), ..stakes };
    println!("\nexpected profit of faking minus honest work, per round (R = C = {reward:.0}, B = 1000, s = 2)");
    println!(
        "{:>5} {:>3} {:>3} {:>10} {:>10} {:>12} {:>12} {:>16}",
        "f", "n", "k", "caught", "predicted", "advantage", "(measured)", "(withhold at 10%)"
    );
    for (f, n) in [(0.1f64, 20u32), (0.25, 4), (0.25, 20), (0.5, 4), (0.5, 20), (1.0, 4), (1.0, 20)] {
        let k = (f * f64::from(n)).round() as u32;
        let rate = measured_catch_rate(trials, n, k, 2, validators, miner);
        let predicted = 1.0 - binomial(u64::from(n - k), 2) / binomial(u64::from(n), 2);
        let advantage = faking_advantage(&stakes, u64::from(n), u64::from(k), 2);
        let measured =
            stakes.compute * f - rate * (stakes.reward + stakes.caught_slash.min(stakes.withhold_slash) * stakes.bond);
        let lenient = faking_advantage(&old_withhold, u64::from(n), u64::from(k), 2);
        println!(
            "{f:>5.2} {n:>3} {k:>3} {rate:>10.4} {predicted:>10.4} {advantage:>12.0} {measured:>12.0} {lenient:>16.0}"
        );
    }
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
            let rate = measured_catch_rate(trials, segments, k, s, &validators, miner);
            let predicted =
                1.0 - binomial(u64::from(segments - k), u64::from(s)) / binomial(u64::from(segments), u64::from(s));
            let std_err = (predicted * (1.0 - predicted) / trials as f64).sqrt();
            let z = if std_err > 0.0 { (rate - predicted) / std_err } else { 0.0 };
            println!("{f:>5.2} {k:>3} {s:>3} {rate:>10.4} {predicted:>10.4} {std_err:>10.4} {z:>8.2}");
        }
    }
    economics(trials, &validators, miner);
}

fn job(segments: u32, segments_per_miner: u32) -> Job {
    let spec = JobSpec {
        name: "detection".into(),
        model: ModelConfig { vocab_size: 256, context_length: 64, width: 64, layers: 4, heads: 4 },
        init_seed: 0,
        dataset_root: Hash::ZERO,
        dataset_shards: 16,
        diloco: DilocoParams {
            workers_per_round: 4,
            inner_steps: segments * 5,
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
            inner_optimizer: Default::default(),
            min_inner_steps: segments * 5,
            fragments: 1,
        },
        aggregation: AggregationRule::Mean,
        verification: VerificationParams {
            checkpoint_interval: 5,
            segments_per_miner,
            mode: VerificationMode::Exact,
            checkpoint_state: Default::default(),
        },
        reward_per_round: Amount(1),
        min_miner_stake: Amount(1_000),
        commit_blocks: 5,
        verify_blocks: 5,
    };
    Job::submitted(JobId(1), Address([1; 20]), spec, trellis_proto::Amount(10))
}

fn round_with_commit(miner: Address, steps: u32) -> RoundState {
    let reveal = WorkReveal {
        job: JobId(1),
        round: 0,
        trail: Hash::ZERO,
        final_checkpoint: Hash::ZERO,
        delta_hash: Hash::ZERO,
        residual_hash: Hash::ZERO,
        steps,
        continues: Hash::ZERO,
        next_residual: Hash::ZERO,
    };
    RoundState {
        job: JobId(1),
        round: 0,
        opened_at: Height(0),
        commit_deadline: Height(5),
        reveal_deadline: Height(7),
        verify_end: Height(10),
        aggregate_deadline: Height(0),
        phase: Phase::Open,
        escalated: false,
        workers: vec![miner],
        commits: vec![Commit {
            miner,
            binding: reveal.binding(&miner),
            height: Height(1),
            reveal: Some(reveal),
            since: 0,
        }],
        assignments: Vec::new(),
        verdicts: Vec::new(),
        accepted: Vec::new(),
        matched_checkers: Vec::new(),
        escalated_segments: Vec::new(),
    }
}
