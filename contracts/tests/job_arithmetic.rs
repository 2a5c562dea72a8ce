//! Unchecked job arithmetic: a spec whose numbers wrap. On the old rules `inner_steps = 2³²−1`
//! with `checkpoint_interval = 1` wrapped the checkpoint count to 0 (nothing sampled) and a huge
//! batch wrapped the token count, so a release build paid out wrapped amounts and a debug build
//! panicked inside block building on every validator. Every job parameter now has an upper bound
//! derived from the most work a round may hold, every amount is computed with checked arithmetic,
//! and whatever a spec that passes validation does, supply is conserved.

mod common;

use common::*;
use proptest::prelude::*;
use trellis_contracts::exec::bounds;
use trellis_contracts::rounds::{expected_checkpoints, expected_tokens};
use trellis_contracts::{validate_job_spec, Params};
use trellis_proto::*;

#[test]
fn specs_whose_counts_would_wrap_are_refused() {
    let params = Params::default();
    let w = World::new(4, 2, params.clone());
    type Edit = fn(&mut JobSpec);
    let cases: Vec<(&str, Edit)> = vec![
        ("inner_steps", |s| {
            s.diloco.inner_steps = u32::MAX;
            s.verification.checkpoint_interval = 1;
        }),
        ("batch_size", |s| s.diloco.batch_size = u32::MAX),
        ("tokens", |s| {
            s.diloco.inner_steps = 1 << 20;
            s.diloco.batch_size = bounds::MAX_BATCH_SIZE;
            s.model.context_length = bounds::MAX_CONTEXT;
            s.diloco.sequence_length = bounds::MAX_CONTEXT;
        }),
        ("workers_per_round", |s| s.diloco.workers_per_round = u32::MAX),
        ("rounds", |s| s.diloco.rounds = u32::MAX),
        ("commit_blocks", |s| s.commit_blocks = u32::MAX),
        ("verify_blocks", |s| s.verify_blocks = u32::MAX),
        ("model", |s| s.model.vocab_size = u32::MAX),
        ("model", |s| s.model.layers = u32::MAX),
        ("dataset_shards", |s| s.dataset_shards = u32::MAX),
    ];
    for (what, edit) in cases {
        let mut spec = w.spec();
        edit(&mut spec);
        let reason = validate_job_spec(&spec, &params).expect_err(what);
        assert!(reason.contains(what), "{what}: {reason}");
    }
}

/// A job at the edge of every bound, with an escrow near the largest amount, runs whole rounds:
/// payouts, refunds and slashes are exact and supply is conserved.
#[test]
fn a_job_at_every_bound_settles_with_supply_conserved() {
    let mut w = World::with_submitter_balance(4, 3, params(), u64::MAX / 2);
    let mut spec = w.spec();
    spec.diloco.workers_per_round = 3;
    spec.diloco.inner_steps = bounds::MAX_INNER_STEPS;
    spec.verification.checkpoint_interval = 1;
    spec.verification.segments_per_miner = bounds::MAX_SEGMENTS_PER_MINER;
    spec.diloco.rounds = bounds::MAX_ROUNDS;
    spec.reward_per_round = Amount(u64::MAX / 8);
    spec.commit_blocks = 3;
    spec.verify_blocks = 3;
    validate_job_spec(&spec, &w.chain.params).unwrap();
    assert!(expected_checkpoints(&spec) > 1);
    let job = w.submit_spec_and_join(spec, u64::MAX / 4);
    for round in 0..2 {
        // The poisoner of round 0 is ejected and works no more.
        for i in 0..if round == 0 { 3 } else { 2 } {
            w.commit(job, round, i).unwrap();
        }
        w.past_commit_deadline(job, round);
        let poisoner = w.miners[2].address();
        w.verdicts(job, round, |miner, _, _| Some(if *miner == poisoner { invalid() } else { VerdictOutcome::Valid }));
        w.past_verify_end(job, round);
        if round == 0 {
            w.aggregate(job, round).unwrap();
        }
        w.supply_holds();
    }
}

fn arb_spec() -> impl Strategy<Value = JobSpec> {
    let base = World::new(1, 0, Params::default()).spec();
    (any::<[u32; 11]>(), any::<u64>()).prop_map(move |(values, reward)| wild_spec(&base, values, reward))
}

/// Whatever passes validation has counts that fit: at least one segment, a token count whose
/// total over a round's workers fits the bound, and deadlines that do not wrap.
#[test]
fn every_accepted_spec_has_counts_that_fit() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let strategy = arb_spec();
    let mut accepted = 0;
    for _ in 0..8_192 {
        let spec = strategy.new_tree(&mut runner).unwrap().current();
        if validate_job_spec(&spec, &Params::default()).is_err() {
            continue;
        }
        accepted += 1;
        assert!(expected_checkpoints(&spec) >= 2, "{spec:?}");
        let round_tokens = u128::from(expected_tokens(&spec)) * u128::from(spec.diloco.workers_per_round);
        assert!(round_tokens <= u128::from(bounds::MAX_ROUND_TOKENS), "{spec:?}");
        assert!(spec.commit_blocks <= bounds::MAX_WINDOW_BLOCKS && spec.verify_blocks <= bounds::MAX_WINDOW_BLOCKS);
    }
    eprintln!("{accepted} of 8192 generated specs passed validation");
    assert!(
        accepted >= 100,
        "only {accepted} of 8192 generated specs passed: the generator no longer reaches valid specs"
    );
}
