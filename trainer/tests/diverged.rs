//! A worker whose Δ is not finite (its training diverged, or a tamper hook made it so) stops the
//! run with an error that names it, for every encoding: no panic, nothing aggregated.

mod common;

use common::{corpus, small_run};
use trellis_proto::DeltaEncoding;
use trellis_trainer::diloco::{run_diloco, RoundHooks, RunConfig};
use trellis_trainer::optim::AdamWConfig;
use trellis_trainer::worker::WorkerError;

#[test]
fn a_delta_that_is_not_finite_stops_the_run_with_the_workers_name() {
    tch::set_num_threads(1);
    let dataset = corpus();
    for encoding in [DeltaEncoding::F32, DeltaEncoding::Int8, "topk:0.03+q2".parse().unwrap()] {
        let config = RunConfig {
            inner_steps: 2,
            rounds: 1,
            batch_size: 2,
            adamw: AdamWConfig::with_schedule(3e-3, 1, 2),
            checkpoint_interval: 2,
            min_inner_steps: 2,
            ..small_run(encoding)
        };
        let mut hooks = RoundHooks {
            tamper: Box::new(|_, output, _| {
                if output.worker == 1 {
                    output.delta[7] = f32::NAN;
                }
            }),
            ..RoundHooks::default()
        };
        let error = run_diloco(&config, &dataset, &mut hooks, |_| {}).unwrap_err();
        assert!(matches!(error, WorkerError::NonFiniteDelta { worker: 1, index: 7 }), "{encoding}: {error}");
        assert!(error.to_string().contains("worker 1's Δ is not finite"), "{error}");
    }
}
