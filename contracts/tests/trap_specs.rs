//! Trap specs: job parameters on which honest miners, who join every job they can, would be
//! slashed or could never pass a check. Each is refused at submission.

mod common;

use common::*;
use trellis_contracts::{validate_job_spec, Params};
use trellis_proto::*;

/// Trap jobs: specs on which honest miners would be slashed or could never pass a check.
#[test]
fn trap_specs_are_refused_at_submission() {
    let params = Params::default();
    let w = World::new(4, 2, params.clone());
    type Edit = fn(&mut JobSpec);
    let cases: Vec<(&str, Edit)> = vec![
        ("tolerance", |s| s.verification.mode = VerificationMode::Tolerance { max_distance: -1.0 }),
        ("tolerance", |s| s.verification.mode = VerificationMode::Tolerance { max_distance: f32::NAN }),
        ("tolerance", |s| s.verification.mode = VerificationMode::Tolerance { max_distance: f32::INFINITY }),
        ("learning_rate", |s| s.diloco.learning_rate = 1e-30),
        ("learning_rate", |s| s.diloco.learning_rate = f32::NAN),
        ("learning_rate", |s| s.diloco.learning_rate = 5.0),
        ("beta1", |s| s.diloco.beta1 = 1.0),
        ("weight_decay", |s| s.diloco.weight_decay = -0.5),
        ("grad_clip", |s| s.diloco.grad_clip = 0.0),
        ("warmup_steps", |s| s.diloco.warmup_steps = u32::MAX),
        ("inner_steps", |s| s.diloco.inner_steps = trellis_proto::trail::MAX_TRAIL_STEPS + 1),
        ("min_inner_steps", |s| s.diloco.min_inner_steps = 0),
        ("min_inner_steps", |s| s.diloco.min_inner_steps = s.diloco.inner_steps + 1),
        ("fragments", |s| s.diloco.fragments = 0),
        ("fragments", |s| s.diloco.fragments = 65),
        ("streaming job", |s| {
            // Error feedback would carry a fragment's residual over F rounds: not on chain.
            s.diloco.fragments = 2;
            s.diloco.encoding = DeltaEncoding::Int8;
        }),
        ("streaming job", |s| {
            s.diloco.fragments = 2;
            s.diloco.min_inner_steps = 5;
        }),
        ("streaming job", |s| {
            // The moments a streaming miner carries are compared only by exact re-execution.
            s.diloco.fragments = 2;
            s.verification.mode = VerificationMode::Tolerance { max_distance: 1e-3 };
        }),
        ("a Δ carries at most", |s| {
            // 65,536 wide, 24 layers: 1.2e12 parameters, whose Δ no aggregator could decode.
            s.model.width = 65_536;
            s.model.heads = 1;
            s.model.layers = 24;
        }),
        ("fragments must not exceed the model's parameters", |s| {
            // 30 parameters in 64 fragments: some rounds would pay for synchronising nothing.
            s.model = ModelConfig { vocab_size: 1, context_length: 2, width: 1, layers: 1, heads: 1 };
            s.diloco.sequence_length = 2;
            s.diloco.fragments = 64;
        }),
        ("trimmed-mean", |s| s.aggregation = AggregationRule::TrimmedMean { trim: 2 }),
        ("centered-clip", |s| s.aggregation = AggregationRule::CenteredClip { tau: -1.0, iterations: 3 }),
        ("centered-clip", |s| s.aggregation = AggregationRule::CenteredClip { tau: 1.0, iterations: u32::MAX }),
        ("outer learning rate", |s| s.diloco.outer_learning_rate = 1e9),
        ("segments_per_miner", |s| s.verification.segments_per_miner = 10_000),
        ("compact checkpoints", |s| {
            // |m|/√v has no bound when β₁² ≥ β₂: the first moments could not be stored.
            s.verification.checkpoint_state = trellis_proto::CheckpointState::Compact;
            s.diloco.beta1 = 0.99;
            s.diloco.beta2 = 0.9;
        }),
        ("muon job needs a mode that re-executes", |s| {
            // A groth16 job proves its zk model's own rule.
            s.verification.mode = VerificationMode::Groth16 {
                model: "mlp:8x8x4".into(),
                proving_key: trellis_proto::Hash([1; 32]),
                verifying_key: trellis_proto::Hash([2; 32]),
            };
            s.verification.checkpoint_state = trellis_proto::CheckpointState::Full;
            s.diloco.inner_optimizer = InnerOptimizer::Muon;
        }),
    ];
    for (what, edit) in cases {
        let mut spec = w.spec();
        edit(&mut spec);
        let reason = validate_job_spec(&spec, &params).expect_err(what);
        assert!(reason.contains(what), "{what}: {reason}");
    }
    assert_eq!(validate_job_spec(&w.spec(), &params), Ok(()));
    for state in [trellis_proto::CheckpointState::Full, trellis_proto::CheckpointState::Compact] {
        let mut streaming = w.spec();
        streaming.diloco.fragments = 4;
        streaming.diloco.encoding = DeltaEncoding::F16;
        streaming.verification.checkpoint_state = state;
        assert_eq!(validate_job_spec(&streaming, &params), Ok(()), "a streaming job with {state:?} checkpoints");
        let mut muon = w.spec();
        muon.diloco.inner_optimizer = InnerOptimizer::Muon;
        muon.verification.checkpoint_state = state;
        assert_eq!(validate_job_spec(&muon, &params), Ok(()), "a muon job with {state:?} checkpoints");
    }
}
