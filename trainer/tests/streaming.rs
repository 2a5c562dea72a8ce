//! Streaming DiLoCo: with one fragment it is DiLoCo bit for bit; with four, a synchronisation
//! sends a quarter of a Δ, a round sends what DiLoCo sends, and the model trains.

mod common;

use common::{corpus, small_run};
use trellis_proto::DeltaEncoding;
use trellis_trainer::diloco::{run_diloco, run_streaming_diloco, RoundHooks, RunConfig};

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
        let streaming = run_streaming_diloco(&config, 1, &dataset, |_| {}).unwrap();
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
    let streaming = run_streaming_diloco(&config, 4, &dataset, |_| {}).unwrap();
    // Four headers of 9 bytes a round instead of one: otherwise the same bytes.
    let rounds = config.rounds;
    assert_eq!(streaming.bytes_sent_per_worker, plain.bytes_sent_per_worker + 3 * 9 * rounds);
    let quarter = (plain.peak_bytes_per_sync - 9).div_ceil(4) + 9;
    assert!(streaming.peak_bytes_per_sync <= quarter, "{} > {quarter}", streaming.peak_bytes_per_sync);
    assert_eq!(streaming.tokens, plain.tokens);
    assert!(streaming.final_validation_loss < streaming.initial_validation_loss - 0.3, "{streaming:?}");
    assert_ne!(streaming.final_weights, plain.final_weights);
    assert!(run_streaming_diloco(&config, 3, &dataset, |_| {}).is_err(), "3 fragments do not divide 8 steps");
    assert!(run_streaming_diloco(&config, 0, &dataset, |_| {}).is_err());
}
