//! Stragglers: a worker that may stop early ends its trail with a checkpoint after its last step
//! (the same state a run of exactly that many steps reaches); a run with a slow worker gives it
//! the steps it reaches while the others train H, weights its Δ by them, and models the round's
//! wall time; equal slowdowns change nothing.

mod common;

use std::cell::RefCell;

use common::{corpus, small_run};
use tch::Device;
use trellis_proto::{AggregationRule, DeltaEncoding};
use trellis_protocol::aggregate::aggregate_by_steps;
use trellis_trainer::data::{BatchSchedule, Dataset};
use trellis_trainer::diloco::{round_wall_steps, run_diloco, worker_steps, RoundHooks, RunConfig};
use trellis_trainer::model::{Gpt, Preset};
use trellis_trainer::optim::{AdamW, AdamWConfig};
use trellis_trainer::worker::{InnerLoop, Trail};

fn config(slowdown: Vec<f64>, min_inner_steps: u64) -> RunConfig {
    RunConfig { checkpoint_interval: 4, slowdown, min_inner_steps, ..small_run(DeltaEncoding::F32) }
}

#[test]
fn a_slow_worker_trains_what_it_reaches_while_the_fast_ones_train_h() {
    let k4 = |slowdown: Vec<f64>, min: u64| RunConfig { workers: 4, ..config(slowdown, min) };
    let straggling = k4(vec![1.0, 1.0, 1.0, 3.0], 2);
    // ⌈8/3⌉ = 3 steps: the first step at or past the fast workers' 8.
    assert_eq!(worker_steps(&straggling), vec![8, 8, 8, 3]);
    assert_eq!(round_wall_steps(&straggling, &worker_steps(&straggling)), 9.0);
    let waiting = k4(vec![1.0, 1.0, 1.0, 3.0], 8);
    assert_eq!(worker_steps(&waiting), vec![8; 4], "min = H: every round waits for the slowest");
    assert_eq!(round_wall_steps(&waiting, &worker_steps(&waiting)), 24.0);
    let floor = k4(vec![1.0, 1.0, 1.0, 3.0], 4);
    assert_eq!(worker_steps(&floor), vec![8, 8, 8, 4], "never fewer than min_inner_steps");
    let all_fast = k4(Vec::new(), 2);
    assert_eq!(worker_steps(&all_fast), vec![8; 4]);
    assert_eq!(round_wall_steps(&all_fast, &worker_steps(&all_fast)), 8.0);
    // Only the ratios matter.
    assert_eq!(worker_steps(&k4(vec![2.0, 2.0, 2.0, 6.0], 2)), vec![8, 8, 8, 3]);
}

#[test]
fn a_run_with_a_straggler_weights_its_delta_by_its_steps() {
    tch::set_num_threads(1);
    let dataset = corpus();
    let seen: RefCell<Vec<Vec<u32>>> = RefCell::new(Vec::new());
    let mut hooks = RoundHooks {
        aggregate: Box::new(|deltas, steps| {
            seen.borrow_mut().push(steps.to_vec());
            aggregate_by_steps(&AggregationRule::Mean, deltas, steps).unwrap()
        }),
        ..RoundHooks::default()
    };
    let straggling = config(vec![1.0, 3.0], 2);
    let report = run_diloco(&straggling, &dataset, &mut hooks, |_| {}).unwrap();
    drop(hooks);
    assert_eq!(seen.into_inner(), vec![vec![8, 3], vec![8, 3]], "the merge is given each Δ's steps");
    assert!(report.rounds.iter().all(|r| r.steps == vec![8, 3] && r.wall_steps == 9.0), "{:?}", report.rounds);
    assert_eq!(report.tokens, 2 * (8 + 3) * 4 * 32, "tokens follow the steps trained");
    assert_eq!(report.trails[1].losses.len(), 3, "the straggler's trail holds its 3 steps");
    assert_eq!(report.trails[1].checkpoints.iter().map(|c| c.step).collect::<Vec<_>>(), vec![0, 3]);

    let bits = |w: &[f32]| w.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    let plain = run_diloco(&config(Vec::new(), 2), &dataset, &mut RoundHooks::default(), |_| {}).unwrap();
    let equal = run_diloco(&config(vec![2.0, 2.0], 2), &dataset, &mut RoundHooks::default(), |_| {}).unwrap();
    assert_eq!(bits(&equal.final_weights), bits(&plain.final_weights), "equal slowdowns: the plain run, bit for bit");
    assert_ne!(bits(&report.final_weights), bits(&plain.final_weights));
    assert!(report.final_validation_loss < report.initial_validation_loss, "the run with a straggler trains");
}

fn inner<'a>(dataset: &'a Dataset, schedule: &'a BatchSchedule) -> InnerLoop<'a> {
    InnerLoop { dataset, schedule, round: 0, worker: 1, checkpoint_interval: 4, trail_dir: None, compact_base: None }
}

fn fresh() -> (Gpt, AdamW) {
    let model = Gpt::new(&Preset::Nano.config(), 5, Device::Cpu).unwrap();
    let optimizer = AdamW::new(AdamWConfig::with_schedule(3e-3, 2, 10), model.parameters());
    (model, optimizer)
}

#[test]
fn a_worker_stopped_early_ends_where_a_run_of_that_many_steps_ends() {
    tch::set_num_threads(1);
    let dataset = corpus();
    let schedule = BatchSchedule { seed: 11, workers: 2, batch_size: 4, sequence_length: 32 };
    let stopped: Trail = {
        let (mut model, mut optimizer) = fresh();
        // Asked after steps 3, 4, 5, …: says stop from the third time on, i.e. after step 5.
        let mut asked = 0;
        let stop = || {
            asked += 1;
            asked >= 3
        };
        inner(&dataset, &schedule).train_steps_until(&mut model, &mut optimizer, 10, 3, stop, |_, _| {}).unwrap().trail
    };
    let exact: Trail = {
        let (mut model, mut optimizer) = fresh();
        inner(&dataset, &schedule).train_steps(&mut model, &mut optimizer, 5, |_, _| {}).unwrap().trail
    };
    assert_eq!(stopped.losses.len(), 5);
    assert_eq!(stopped.checkpoints.iter().map(|c| c.step).collect::<Vec<_>>(), vec![0, 4, 5]);
    assert_eq!(stopped, exact, "the same checkpoints, hashes and losses");
    let never = {
        let (mut model, mut optimizer) = fresh();
        inner(&dataset, &schedule)
            .train_steps_until(&mut model, &mut optimizer, 6, 1, || false, |_, _| {})
            .unwrap()
            .trail
    };
    assert_eq!(never.losses.len(), 6, "a worker never told to stop trains H");
}
