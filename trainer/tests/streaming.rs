//! Streaming DiLoCo: with one fragment it is DiLoCo bit for bit; with four, a synchronisation
//! sends a quarter of a Δ, a round sends what DiLoCo sends, and the model trains.

mod common;

use common::{corpus, small_run};
use trellis_proto::DeltaEncoding;
use trellis_trainer::diloco::{
    mix_arrived_fragment, run_diloco, run_streaming_diloco, RoundHooks, RunConfig, Streaming,
};

fn config(encoding: DeltaEncoding) -> RunConfig {
    small_run(encoding)
}

#[test]
fn one_fragment_is_diloco_bit_for_bit() {
    tch::set_num_threads(1);
    let dataset = corpus();
    for encoding in [DeltaEncoding::F32, "topk:0.03+q2".parse().unwrap()] {
        let config = config(encoding);
        let plain = run_diloco(&config, &dataset, &mut RoundHooks::default(), |_| {}).unwrap();
        let streaming = run_streaming_diloco(&config, Streaming::fragments(1), &dataset, |_| {}).unwrap();
        let bits = |w: &[f32]| w.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&streaming.final_weights), bits(&plain.final_weights), "{encoding}");
        assert_eq!(streaming.bytes_sent_per_worker, plain.bytes_sent_per_worker);
        assert_eq!(streaming.peak_bytes_per_sync, plain.peak_bytes_per_sync);
    }
}

#[test]
fn four_fragments_send_a_quarter_at_a_time_and_train() {
    tch::set_num_threads(1);
    let dataset = corpus();
    let config = config(DeltaEncoding::F32);
    let plain = run_diloco(&config, &dataset, &mut RoundHooks::default(), |_| {}).unwrap();
    let streaming = run_streaming_diloco(&config, Streaming::fragments(4), &dataset, |_| {}).unwrap();
    // Four headers of 9 bytes a round instead of one: otherwise the same bytes.
    let rounds = config.rounds;
    assert_eq!(streaming.bytes_sent_per_worker, plain.bytes_sent_per_worker + 3 * 9 * rounds);
    let quarter = (plain.peak_bytes_per_sync - 9).div_ceil(4) + 9;
    assert!(streaming.peak_bytes_per_sync <= quarter, "{} > {quarter}", streaming.peak_bytes_per_sync);
    assert_eq!(streaming.tokens, plain.tokens);
    assert!(streaming.final_validation_loss < streaming.initial_validation_loss - 0.3, "{streaming:?}");
    assert_ne!(streaming.final_weights, plain.final_weights);
    assert!(
        run_streaming_diloco(&config, Streaming::fragments(3), &dataset, |_| {}).is_err(),
        "3 fragments do not divide 8 steps"
    );
    assert!(run_streaming_diloco(&config, Streaming::fragments(0), &dataset, |_| {}).is_err());
}

#[test]
fn an_arrived_fragment_is_mixed_with_the_share_kept() {
    let global = [1.0f32, -2.0, 0.5, 8.0];
    let mine = [3.0f32, 2.0, 0.5, -8.0];
    let mixed = |share: f32| {
        let mut local = mine;
        mix_arrived_fragment(&mut local, &global, share);
        local
    };
    assert_eq!(mixed(0.0), global, "α = 0 takes the global values");
    assert_eq!(mixed(1.0), mine, "α = 1 keeps the worker's own");
    assert_eq!(mixed(0.5), [2.0, 0.0, 0.5, 0.0], "α = ½ is the midpoint");
    assert_eq!(mixed(0.25), [1.5, -1.0, 0.5, 4.0]);
}

#[test]
fn overlapped_synchronisations_rerun_bit_for_bit_and_differ_from_waiting_ones() {
    tch::set_num_threads(1);
    let dataset = corpus();
    let config = config(DeltaEncoding::F32);
    // 8 inner steps in 4 fragments: a synchronisation every 2 steps, its update 1 step late.
    let waiting = run_streaming_diloco(&config, Streaming::fragments(4), &dataset, |_| {}).unwrap();
    let overlapped = Streaming::overlapped(4, 1, 0.5);
    let first = run_streaming_diloco(&config, overlapped, &dataset, |_| {}).unwrap();
    let again = run_streaming_diloco(&config, overlapped, &dataset, |_| {}).unwrap();
    let bits = |w: &[f32]| w.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&first.final_weights), bits(&again.final_weights), "a rerun is bit-identical");
    assert_ne!(bits(&first.final_weights), bits(&waiting.final_weights), "late updates change the run");
    assert_eq!(first.tokens, waiting.tokens, "the overlap trains the same tokens");
    assert_eq!(first.bytes_sent_per_worker, waiting.bytes_sent_per_worker);
    assert_eq!(first.peak_bytes_per_sync, waiting.peak_bytes_per_sync);
    assert!(first.final_validation_loss < first.initial_validation_loss - 0.3, "{first:?}");
    // α = 1 never takes the arriving values: the workers drift apart from the global model, and
    // the run differs from the mixed one.
    let ignoring = run_streaming_diloco(&config, Streaming::overlapped(4, 1, 1.0), &dataset, |_| {}).unwrap();
    assert_ne!(bits(&ignoring.final_weights), bits(&first.final_weights));

    for (bad, why) in [
        (Streaming::overlapped(4, 2, 0.5), "τ = H/F leaves no step before the next synchronisation"),
        (Streaming::overlapped(4, 1, 1.5), "α above 1"),
        (Streaming::overlapped(4, 1, f32::NAN), "α not a number"),
    ] {
        assert!(run_streaming_diloco(&config, bad, &dataset, |_| {}).is_err(), "{why}");
    }
}

/// With a worker that starts afresh every few synchronisations, weighting each Δ by the phases
/// it holds (the chain's rule) merges differently from weighting all alike, reruns bit for bit,
/// and trains the same tokens; without churn the two rules are one.
#[test]
fn a_restarting_worker_is_merged_by_the_phases_it_holds() {
    tch::set_num_threads(1);
    let dataset = corpus();
    let config = config(DeltaEncoding::F32);
    let churn = |held_weights| Streaming { restart_every: Some(3), held_weights, ..Streaming::fragments(4) };
    let held = run_streaming_diloco(&config, churn(true), &dataset, |_| {}).unwrap();
    let again = run_streaming_diloco(&config, churn(true), &dataset, |_| {}).unwrap();
    let equal = run_streaming_diloco(&config, churn(false), &dataset, |_| {}).unwrap();
    let steady = run_streaming_diloco(&config, Streaming::fragments(4), &dataset, |_| {}).unwrap();
    let steady_equal =
        run_streaming_diloco(&config, Streaming { held_weights: false, ..Streaming::fragments(4) }, &dataset, |_| {})
            .unwrap();
    let bits = |w: &[f32]| w.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&held.final_weights), bits(&again.final_weights), "a rerun is bit-identical");
    assert_ne!(bits(&held.final_weights), bits(&equal.final_weights), "the weights matter under churn");
    assert_ne!(bits(&held.final_weights), bits(&steady.final_weights), "the restarts change the run");
    assert_eq!(bits(&steady.final_weights), bits(&steady_equal.final_weights), "without churn the rules agree");
    assert_eq!(held.tokens, steady.tokens, "a restart trains the same tokens");
}
