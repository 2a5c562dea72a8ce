//! The verification window's floor: a job cannot set a window that only the fastest checkers
//! meet (one replay verdict in time switches on the slashing of every silent checker), because
//! the chain lengthens a window to what the reference validator needs for its model and load.

mod common;

use std::collections::BTreeMap;

use common::*;
use trellis_contracts::rounds::{verify_window, REPLAY_PARAMETER_TOKENS_PER_BLOCK, VERIFY_PARAMETERS_PER_BLOCK};
use trellis_contracts::state::RoundState;
use trellis_contracts::Event;
use trellis_proto::*;

/// The trainer's `small` preset (14,393,088 parameters).
fn small() -> ModelConfig {
    ModelConfig { vocab_size: 256, context_length: 256, width: 384, layers: 8, heads: 6 }
}

/// The floor for a checker with `load` segments of `parameters` parameters, `weight` parameters'
/// worth a token (attention counted) and `tokens` a segment: fetch and replay at the reference
/// rates, each rounded up over the whole load.
fn expected_floor(load: u64, parameters: u64, weight: u64, tokens: u64) -> u64 {
    let fetch = (load * parameters).div_ceil(VERIFY_PARAMETERS_PER_BLOCK);
    let replay = (u128::from(load) * u128::from(weight) * u128::from(tokens))
        .div_ceil(u128::from(REPLAY_PARAMETER_TOKENS_PER_BLOCK)) as u64;
    (fetch + replay).max(load)
}

/// A `small` job asking for five blocks with sequences of `sequence_length`, its three miners
/// committed and round 0 sampled: the world, the spec, the job and the sampled round.
fn sampled_small_job(sequence_length: u32) -> (World, JobSpec, u64, RoundState) {
    let mut w = World::new(4, 3, params());
    let mut spec = w.spec();
    spec.model = small();
    spec.diloco.sequence_length = sequence_length;
    spec.verify_blocks = 5;
    let job = w.submit_spec_and_join(spec.clone(), 30_000);
    for i in 0..3 {
        w.commit(job, 0, i).unwrap();
    }
    w.past_commit_deadline(job, 0);
    let round = w.round(job, 0);
    (w, spec, job, round)
}

/// Segments the busiest checker of `round` was given.
fn heaviest_load(round: &RoundState) -> u64 {
    let mut load: BTreeMap<Address, u64> = BTreeMap::new();
    for checker in round.assignments.iter().flat_map(|a| &a.checkers) {
        *load.entry(*checker).or_default() += 1;
    }
    load.into_values().max().unwrap()
}

/// A `small` job asking for five blocks: the round's window is what the busiest checker needs
/// (fetching and replaying each of its segments at the reference rate), and a checker that
/// answers after the job's five blocks but within the floor counts; nobody is slashed.
#[test]
fn a_window_too_short_for_the_model_is_lengthened_to_what_the_busiest_checker_needs() {
    let (mut w, spec, job, round) = sampled_small_job(256);
    let sampled_at = w.height;
    let parameters = trellis_protocol::model::parameter_count(&spec.model);
    let tokens = u64::from(spec.verification.checkpoint_interval * spec.diloco.batch_size * 256);
    let attention = 2 * u64::from(spec.model.layers) * 256 * u64::from(spec.model.width);
    let per_segment = expected_floor(1, parameters, parameters + attention, tokens);
    assert!(per_segment > 100, "a `small` segment needs a minute, not five blocks: {per_segment}");
    let window = expected_floor(heaviest_load(&round), parameters, parameters + attention, tokens);
    assert_eq!(verify_window(&spec, &round), window);
    assert_eq!(round.verify_end.0 - sampled_at.0, window, "the window starts at sampling and lasts the floor");

    // Every checker answers well after the job's five blocks, before the floor's end.
    w.advance_to(Height(sampled_at.0 + window / 2));
    assert_eq!(w.round(job, 0).phase, trellis_contracts::state::Phase::Verifying);
    w.verdicts(job, 0, |_, _, _| Some(VerdictOutcome::Valid));
    w.past_verify_end(job, 0);
    assert_eq!(w.round(job, 0).accepted.len(), 3, "late verdicts within the floor count");
    assert!(w.events.iter().all(|e| !matches!(e, Event::Slashed { .. })), "nobody is slashed");
}

/// The floor follows the load and the model, lets a longer window stand, leaves a Groth16 job's
/// window as it is and, after an escalation, counts only the escalated segments.
#[test]
fn the_floor_follows_load_and_model_and_never_shortens_a_window() {
    let (w, spec, _, round) = sampled_small_job(World::new(1, 0, params()).spec().diloco.sequence_length);
    let floor = verify_window(&spec, &round);

    let mut generous = spec.clone();
    generous.verify_blocks = u32::try_from(floor * 3).unwrap();
    assert_eq!(verify_window(&generous, &round), floor * 3, "a longer window than the floor stands");

    let mut tiny = spec.clone();
    tiny.model = w.spec().model;
    assert!(verify_window(&tiny, &round) < floor, "a smaller model needs less");

    let mut doubled = round.clone();
    let busiest = doubled.assignments[0].checkers[0];
    let extra: Vec<_> = doubled.assignments.clone();
    for mut assignment in extra {
        assignment.checkers = vec![busiest];
        doubled.assignments.push(assignment);
    }
    assert!(verify_window(&spec, &doubled) > floor, "more segments for one checker, a longer window");

    // A small model over long sequences: attention, not the parameters, is what the replay costs.
    let mut long = spec.clone();
    long.model = ModelConfig { vocab_size: 256, context_length: 8_192, width: 64, layers: 4, heads: 4 };
    long.diloco.sequence_length = 8_192;
    let n = trellis_protocol::model::parameter_count(&long.model);
    let attention = 2 * 4 * 8_192 * 64;
    assert!(attention > 5 * n, "attention outweighs the {n} parameters");
    let tokens = u64::from(long.verification.checkpoint_interval * long.diloco.batch_size) * 8_192;
    assert_eq!(
        verify_window(&long, &round),
        expected_floor(heaviest_load(&round), n, n + attention, tokens),
        "attention is counted"
    );

    // A model just below both divisors: each segment needs about two blocks, so a checker with
    // many segments needs many (rounding each segment down once made this floor nothing).
    let mut tiny_segments = spec.clone();
    tiny_segments.model = ModelConfig { vocab_size: 256, context_length: 64, width: 64, layers: 1, heads: 4 };
    let n = trellis_protocol::model::parameter_count(&tiny_segments.model);
    assert!(n < VERIFY_PARAMETERS_PER_BLOCK, "{n}");
    tiny_segments.verify_blocks = 1;
    let mut crowded = round.clone();
    let busiest = crowded.assignments[0].checkers[0];
    for assignment in &mut crowded.assignments {
        assignment.checkers = vec![busiest];
    }
    let load = crowded.assignments.len() as u64;
    assert!(verify_window(&tiny_segments, &crowded) >= load, "at least a block a segment");
    assert!(
        verify_window(&tiny_segments, &crowded) >= (load * n).div_ceil(VERIFY_PARAMETERS_PER_BLOCK),
        "the fetch of every segment is counted"
    );

    let mut proved = spec.clone();
    proved.verification.mode = VerificationMode::Groth16 {
        model: "mlp:16x8x4,batch=4,lr=0.5".into(),
        proving_key: Hash([1; 32]),
        verifying_key: Hash([2; 32]),
    };
    assert_eq!(verify_window(&proved, &round), 5, "a proof verifies in milliseconds: the job's window stands");

    let mut escalated = round.clone();
    escalated.escalated = true;
    escalated.escalated_segments = vec![0];
    assert_eq!(
        verify_window(&spec, &escalated),
        verify_window(&spec, &RoundState { assignments: vec![round.assignments[0].clone()], ..round.clone() }),
        "after an escalation only the escalated segments load the checkers"
    );
}
