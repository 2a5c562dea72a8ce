//! Tolerance mode: distances of honest re-executions against faked segments.
//!   cargo run --release -p trellis-verifier --example tolerance_margin -- [DATA] [SEGMENTS]
//! DATA is a text file or a folder of them (default: the repository's `docs/`, which every clone
//! has; the figures in docs/benchmarks.md name the corpus they used).
//! Trains a nano trail segment by segment, then measures, for each segment, the relative L2
//! distance between the claimed end checkpoint and (a) an honest re-execution on 1 and on 2
//! threads, (b) re-executions of three fakes: another batch, one step skipped, and the honest
//! result with its weights nudged by 1e-4 relative noise.

use std::path::PathBuf;

use tch::Device;
use trellis_trainer::checkpoint::{self, CheckpointView};
use trellis_trainer::data::{BatchSchedule, Dataset};
use trellis_trainer::model::{init_normals, Gpt, Preset};
use trellis_trainer::optim::{AdamW, AdamWConfig};
use trellis_trainer::worker::InnerLoop;
use trellis_verifier::segment::relative_distance;

fn adamw() -> AdamWConfig {
    AdamWConfig::with_schedule(3e-3, 5, 200)
}

/// Runs `steps` from `start` with the schedule seeded `seed`; returns the final weights.
fn run_from(start: &[u8], dataset: &Dataset, seed: u64, steps: u64) -> Vec<f32> {
    let mut model = Gpt::new(&Preset::Nano.config(), 0, Device::Cpu).expect("valid preset");
    let mut optimizer = AdamW::new(adamw(), model.parameters());
    let view = CheckpointView::parse(start, None).expect("our checkpoint");
    view.restore(&mut model, &mut optimizer, |_| true).expect("same shapes");
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
    model.flat_weights()
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
    let (mut honest_max, mut fake_min) = (0.0f64, f64::INFINITY);
    println!(
        "{:>7} {:>12} {:>12} {:>12} {:>12} {:>12}",
        "segment", "honest 1t", "honest 2t", "other batch", "skipped step", "noise 1e-4"
    );
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
        let claimed = model.flat_weights();
        tch::set_num_threads(1);
        let one = relative_distance(&run_from(&start, &dataset, 1, c), &claimed);
        tch::set_num_threads(2);
        let two = relative_distance(&run_from(&start, &dataset, 1, c), &claimed);
        let other_batch = relative_distance(&run_from(&start, &dataset, 77, c), &claimed);
        let skipped = relative_distance(&run_from(&start, &dataset, 1, c - 1), &claimed);
        let norm = claimed.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
        let noise = init_normals(segment as u64, 7, claimed.len(), 1e-4 * norm / (claimed.len() as f64).sqrt());
        let nudged: Vec<f32> = claimed.iter().zip(&noise).map(|(a, b)| a + b).collect();
        let noisy = relative_distance(&nudged, &claimed);
        honest_max = honest_max.max(one).max(two);
        fake_min = fake_min.min(other_batch).min(skipped).min(noisy);
        println!("{segment:>7} {one:>12.3e} {two:>12.3e} {other_batch:>12.3e} {skipped:>12.3e} {noisy:>12.3e}");
    }
    println!("largest honest distance {honest_max:.3e}; smallest faked distance {fake_min:.3e}");
}
