//! Tolerance mode: distances of honest re-executions against faked segments.
//!   cargo run --release -p trellis-verifier --example tolerance_margin -- [DATA] [SEGMENTS]
//! DATA is a text file or a folder of them (default: the repository's `docs/`, which every clone
//! has; the figures in docs/benchmarks.md name the corpus they used).
//! Trains a nano trail segment by segment, then measures, for each segment, the relative L2
//! distances (weights; moments) between the claimed end checkpoint and (a) an honest
//! re-execution on 1 and on 2 threads, (b) an emulated re-execution on another backend class:
//! the start's weights nudged by 1e-7 relative noise (a few ulps, as other reduction orders give),
//! (c) re-executions of fakes: another batch, one step skipped, the honest result with its
//! weights nudged by 1e-4 relative noise, and the honest result with its first moments ×1000
//! (a forged state that steers the next segment's steps).

use std::path::PathBuf;

use tch::Device;
use trellis_trainer::checkpoint::{self, CheckpointView};
use trellis_trainer::data::{BatchSchedule, Dataset};
use trellis_trainer::model::{init_normals, Gpt, Preset};
use trellis_trainer::optim::{AdamW, AdamWConfig};
use trellis_trainer::worker::InnerLoop;
use trellis_verifier::segment::{state_distance, StateDistance, MOMENT_SLACK};

fn adamw() -> AdamWConfig {
    AdamWConfig::with_schedule(3e-3, 5, 200)
}

/// Runs `steps` from `start` (its weights nudged by `nudge` relative noise when not 0) with the
/// schedule seeded `seed`; returns the state reached.
fn run_from(start: &[u8], dataset: &Dataset, seed: u64, steps: u64, nudge: f64) -> (Gpt, AdamW) {
    let mut model = Gpt::new(&Preset::Nano.config(), 0, Device::Cpu).expect("valid preset");
    let mut optimizer = AdamW::new(adamw(), model.parameters());
    let view = CheckpointView::parse(start, None).expect("our checkpoint");
    view.restore(&mut model, &mut optimizer, |_| true).expect("same shapes");
    if nudge != 0.0 {
        let weights = model.flat_weights();
        let noise = init_normals(seed ^ 0x5eed, 11, weights.len(), 1.0);
        let nudged: Vec<f32> =
            weights.iter().zip(&noise).map(|(w, n)| w * (1.0 + (nudge * f64::from(*n)) as f32)).collect();
        model.set_flat_weights(&nudged);
    }
    let schedule = BatchSchedule { seed, workers: 2, batch_size: 8, sequence_length: 64 };
    let inner = InnerLoop {
        dataset,
        schedule: &schedule,
        round: 0,
        worker: 0,
        checkpoint_interval: steps,
        trail_dir: None,
        compact_base: None,
    };
    inner.train_steps(&mut model, &mut optimizer, steps, |_, _| {}).expect("training runs");
    (model, optimizer)
}

/// The distances of a re-execution from the claimed end `claimed`.
fn distance(reached: &(Gpt, AdamW), claimed: &[u8]) -> StateDistance {
    state_distance(&reached.0, &reached.1, &CheckpointView::parse(claimed, None).expect("our checkpoint"))
}

fn main() {
    trellis_trainer::device::configure_reproducibility();
    let args: Vec<String> = std::env::args().collect();
    let data = args.get(1).map(PathBuf::from).unwrap_or_else(|| PathBuf::from("docs"));
    let segments: usize = args.get(2).map_or(10, |s| s.parse().expect("SEGMENTS is a number"));
    let dataset = Dataset::load(&data).expect("dataset loads");
    let c = 5u64;
    let mut model = Gpt::new(&Preset::Nano.config(), 1, Device::Cpu).expect("valid preset");
    let mut optimizer = AdamW::new(adamw(), model.parameters());
    let schedule = BatchSchedule { seed: 1, workers: 2, batch_size: 8, sequence_length: 64 };
    let columns =
        ["honest 1t", "honest 2t", "other class", "other batch", "skipped step", "noise 1e-4", "moments x1000"];
    let mut smallest = [StateDistance { weights: f64::INFINITY, moments: f64::INFINITY }; 7];
    let mut largest = [StateDistance { weights: 0.0, moments: 0.0 }; 7];
    let mut judged = [(f64::INFINITY, 0.0f64); 7];
    println!("each cell: weights' distance / moments' distance");
    println!("{:>7} {}", "segment", columns.map(|c| format!("{c:>21}")).join(" "));
    for segment in 0..segments {
        let start = checkpoint::to_bytes(&model, &optimizer);
        let inner = InnerLoop {
            dataset: &dataset,
            schedule: &schedule,
            round: 0,
            worker: 0,
            checkpoint_interval: c,
            trail_dir: None,
            compact_base: None,
        };
        inner.train_steps(&mut model, &mut optimizer, c, |_, _| {}).expect("training runs");
        let claimed = checkpoint::to_bytes(&model, &optimizer);
        tch::set_num_threads(1);
        let honest = run_from(&start, &dataset, 1, c, 0.0);
        let one = distance(&honest, &claimed);
        tch::set_num_threads(2);
        let two = distance(&run_from(&start, &dataset, 1, c, 0.0), &claimed);
        let other_class = distance(&run_from(&start, &dataset, 1, c, 1e-7), &claimed);
        let other_batch = distance(&run_from(&start, &dataset, 77, c, 0.0), &claimed);
        let skipped = distance(&run_from(&start, &dataset, 1, c - 1, 0.0), &claimed);
        let weights = model.flat_weights();
        let norm = weights.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
        let noise = init_normals(segment as u64, 7, weights.len(), 1e-4 * norm / (weights.len() as f64).sqrt());
        let (mut nudged, nudged_optimizer) = run_from(&start, &dataset, 1, c, 0.0);
        nudged.set_flat_weights(&weights.iter().zip(&noise).map(|(a, b)| a + b).collect::<Vec<f32>>());
        let noisy = distance(&(nudged, nudged_optimizer), &claimed);
        let (inflated_model, mut inflated) = run_from(&start, &dataset, 1, c, 0.0);
        tch::no_grad(|| {
            inflated.first_moments.iter_mut().for_each(|m| {
                let _ = m.g_mul_scalar_(1000.0);
            })
        });
        let forged = checkpoint::to_bytes(&inflated_model, &inflated);
        let steered = distance(&honest, &forged);
        let row = [one, two, other_class, other_batch, skipped, noisy, steered];
        for (i, d) in row.iter().enumerate() {
            smallest[i] = StateDistance {
                weights: smallest[i].weights.min(d.weights),
                moments: smallest[i].moments.min(d.moments),
            };
            judged[i] = (judged[i].0.min(d.judged()), judged[i].1.max(d.judged()));
            largest[i] = StateDistance {
                weights: largest[i].weights.max(d.weights),
                moments: largest[i].moments.max(d.moments),
            };
        }
        println!("{segment:>7} {}", row.map(|d| format!("{:>10.3e}/{:>10.3e}", d.weights, d.moments)).join(" "));
    }
    println!("\nre-execution: smallest .. largest (weights; moments); judged = max(weights, moments / {MOMENT_SLACK})");
    for (i, column) in columns.iter().enumerate() {
        let (low, high) = (smallest[i], largest[i]);
        println!(
            "{column:>14}: weights {:.3e} .. {:.3e}; moments {:.3e} .. {:.3e}; judged {:.3e} .. {:.3e}",
            low.weights,
            high.weights,
            low.moments,
            high.moments,
            low.judged(),
            high.judged()
        );
    }
}
