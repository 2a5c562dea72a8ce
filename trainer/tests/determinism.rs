//! The determinism contract: same-seed runs, resumed runs and runs on different thread counts
//! produce identical checkpoint hashes; and training on real text makes the loss fall.

use std::path::PathBuf;

use tch::Device;
use trellis_trainer::checkpoint::{CheckpointData, CompactBase};
use trellis_trainer::data::{repository_text, BatchSchedule, Dataset, DEFAULT_SHARD_BYTES};
use trellis_trainer::model::{Gpt, Preset};
use trellis_trainer::optim::{AdamW, AdamWConfig, InnerRule};
use trellis_trainer::worker::{checkpoint_path, resume_from, resume_from_with, InnerLoop, Trail};

/// The repository's own docs and sources: real text that every clone holds.
fn corpus() -> Dataset {
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let text = repository_text(&repo).unwrap_or_else(|e| panic!("the repository's text is the test corpus: {e}"));
    Dataset::from_bytes(text, DEFAULT_SHARD_BYTES)
}

fn adamw(total_steps: u64) -> AdamWConfig {
    AdamWConfig::with_schedule(3e-3, 5, total_steps)
}

fn schedule() -> BatchSchedule {
    BatchSchedule { seed: 11, workers: 2, batch_size: 8, sequence_length: 64 }
}

/// Trains `steps` nano steps for worker 1 of round 0 and returns the trail.
fn run(dataset: &Dataset, steps: u64, dir: Option<&std::path::Path>) -> Trail {
    run_with(dataset, adamw(steps), steps, dir)
}

/// Worker 1's inner loop in round 0 with a checkpoint every 5 steps.
fn inner_loop<'a>(
    dataset: &'a Dataset,
    schedule: &'a BatchSchedule,
    dir: Option<&'a std::path::Path>,
    compact_base: Option<CompactBase<'a>>,
) -> InnerLoop<'a> {
    InnerLoop { dataset, schedule, round: 0, worker: 1, checkpoint_interval: 5, trail_dir: dir, compact_base }
}

fn run_with(dataset: &Dataset, config: AdamWConfig, steps: u64, dir: Option<&std::path::Path>) -> Trail {
    let mut model = Gpt::new(&Preset::Nano.config(), 5, Device::Cpu).unwrap();
    let mut optimizer = AdamW::new(config, model.parameters());
    let schedule = schedule();
    let inner = inner_loop(dataset, &schedule, dir, None);
    inner.train_steps(&mut model, &mut optimizer, steps, |_, _| {}).unwrap().trail
}

/// A fresh model and optimizer resumed from `first`'s checkpoint at step 10 (written under
/// `dir`), then trained to step 20: the model, the optimizer and the trail of those 10 steps.
fn resume_at_ten(dataset: &Dataset, config: AdamWConfig, dir: &std::path::Path, first: &Trail) -> (Gpt, AdamW, Trail) {
    let mut model = Gpt::new(&Preset::Nano.config(), 999, Device::Cpu).unwrap();
    let mut optimizer = AdamW::new(config, model.parameters());
    resume_from(&checkpoint_path(dir, 10), &first.checkpoints[2].hash, &mut model, &mut optimizer).unwrap();
    let schedule = schedule();
    let inner = inner_loop(dataset, &schedule, None, None);
    let resumed = inner.train_steps(&mut model, &mut optimizer, 10, |_, _| {}).unwrap().trail;
    (model, optimizer, resumed)
}

#[test]
fn reruns_resumes_and_thread_counts_reproduce_the_trail() {
    let dataset = corpus();
    let dir = std::env::temp_dir().join(format!("trellis-determinism-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);

    tch::set_num_threads(1);
    let first = run(&dataset, 20, Some(&dir));
    assert_eq!(first.checkpoints.iter().map(|e| e.step).collect::<Vec<_>>(), vec![0, 5, 10, 15, 20]);
    for attempt in 0..2 {
        assert_eq!(run(&dataset, 20, None), first, "same-seed rerun {attempt} differs");
    }

    tch::set_num_threads(2);
    assert_eq!(run(&dataset, 20, None).hashes(), first.hashes(), "two threads differ from one");
    tch::set_num_threads(1);

    // Resume from the checkpoint at step 10 in a fresh model and optimizer.
    let (mut model, mut optimizer, resumed) = resume_at_ten(&dataset, adamw(20), &dir, &first);
    assert_eq!(resumed.hashes(), first.hashes()[2..].to_vec(), "resumed run differs");
    assert_eq!(resumed.losses, first.losses[10..].to_vec());

    // A tampered checkpoint file is refused on resume.
    let path = checkpoint_path(&dir, 15);
    let mut bytes = std::fs::read(&path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&path, bytes).unwrap();
    assert!(resume_from(&path, &first.checkpoints[3].hash, &mut model, &mut optimizer).is_err());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Muon's Newton–Schulz iteration is plain f32 matrix products: its trails rerun, run on two
/// threads and resume from a mid-trail checkpoint to the same hashes, and they are not AdamW's.
#[test]
fn muon_trails_rerun_and_resume_bit_for_bit() {
    let dataset = corpus();
    let dir = std::env::temp_dir().join(format!("trellis-determinism-muon-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let muon = || AdamWConfig { rule: InnerRule::Muon, ..adamw(20) };
    tch::set_num_threads(1);
    let first = run_with(&dataset, muon(), 20, Some(&dir));
    assert_eq!(run_with(&dataset, muon(), 20, None), first, "a Muon rerun differs");
    tch::set_num_threads(2);
    assert_eq!(run_with(&dataset, muon(), 20, None).hashes(), first.hashes(), "two threads differ from one");
    tch::set_num_threads(1);
    assert_ne!(run(&dataset, 20, None).hashes()[1..], first.hashes()[1..], "Muon's trail is AdamW's");

    let (_, _, resumed) = resume_at_ten(&dataset, muon(), &dir, &first);
    assert_eq!(resumed.hashes(), first.hashes()[2..].to_vec(), "a resumed Muon run differs");
    let head: f32 = first.losses[..5].iter().sum::<f32>() / 5.0;
    let tail: f32 = first.losses[15..].iter().sum::<f32>() / 5.0;
    assert!(tail < head - 0.5, "Muon's loss went from {head} to {tail}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// At `micro` width the MLP matrices (128 × 512) pass ATen's parallel grain of 32,768 elements,
/// so Muon's Newton–Schulz products and norms take their multi-threaded paths, which `nano`'s
/// matrices never reach: still the same hashes on one thread and on two.
#[test]
fn muon_on_micro_gives_the_same_hashes_on_one_and_two_threads() {
    let dataset = corpus();
    let run_on = |threads: i32| {
        tch::set_num_threads(threads);
        let mut model = Gpt::new(&Preset::Micro.config(), 5, Device::Cpu).unwrap();
        let mut optimizer = AdamW::new(AdamWConfig { rule: InnerRule::Muon, ..adamw(4) }, model.parameters());
        let schedule = schedule();
        let inner = inner_loop(&dataset, &schedule, None, None);
        inner.train_steps(&mut model, &mut optimizer, 4, |_, _| {}).unwrap().trail
    };
    let one = run_on(1);
    assert_eq!(run_on(2).hashes(), one.hashes(), "Muon on micro differs between one and two threads");
    tch::set_num_threads(1);
}

#[test]
fn loss_falls_on_real_text_within_a_few_dozen_steps() {
    let dataset = corpus();
    let trail = run(&dataset, 40, None);
    let head: f32 = trail.losses[..5].iter().sum::<f32>() / 5.0;
    let tail: f32 = trail.losses[35..].iter().sum::<f32>() / 5.0;
    assert!(tail < head - 1.0, "loss went from {head} to {tail}");
}

/// A trail of compact checkpoints is as reproducible as any, for AdamW and for Muon (whose
/// matrices' momentum a compact checkpoint holds in bf16): reruns and a resume from a mid-trail
/// compact checkpoint (read against the round's start weights) give the same hashes; the
/// checkpoints are 4 bytes a parameter; a compact checkpoint is not read as a full one.
#[test]
fn compact_checkpoints_rerun_and_resume_bit_for_bit() {
    let dataset = corpus();
    tch::set_num_threads(1);
    let adamw_trail = compact_rerun_and_resume(&dataset, InnerRule::Adamw);
    let muon_trail = compact_rerun_and_resume(&dataset, InnerRule::Muon);
    assert_ne!(adamw_trail.hashes()[1..], muon_trail.hashes()[1..], "Muon trains otherwise");
}

fn compact_rerun_and_resume(dataset: &Dataset, rule: InnerRule) -> Trail {
    let dir = std::env::temp_dir().join(format!("trellis-compact-{rule:?}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let start = Gpt::new(&Preset::Nano.config(), 5, Device::Cpu).unwrap().flat_weights();
    let config = AdamWConfig { rule, ..adamw(20) };
    let base = CompactBase::new(&start, config.beta1, config.beta2).unwrap().for_rule(rule);
    let schedule = schedule();
    let run_compact = |dir: Option<&std::path::Path>| {
        let mut model = Gpt::new(&Preset::Nano.config(), 5, Device::Cpu).unwrap();
        let mut optimizer = AdamW::new(config.clone(), model.parameters());
        let inner = inner_loop(dataset, &schedule, dir, Some(base));
        inner.train_steps(&mut model, &mut optimizer, 20, |_, _| {}).unwrap().trail
    };
    let trail = run_compact(Some(&dir));
    assert_eq!(run_compact(None), trail, "{rule:?}: a rerun differs");
    let full = run_with(dataset, config.clone(), 20, None);
    assert_ne!(trail.hashes()[1..], full.hashes()[1..], "{rule:?}: the rounding changes the trail");
    let path = checkpoint_path(&dir, 10);
    let size = std::fs::metadata(&path).unwrap().len() as usize;
    assert!(size < 4 * start.len() + 4096, "{rule:?}: {size} bytes for {} parameters", start.len());
    assert!(CheckpointData::parse(&std::fs::read(&path).unwrap()).is_err(), "not a full checkpoint");

    let mut model = Gpt::new(&Preset::Nano.config(), 999, Device::Cpu).unwrap();
    let mut optimizer = AdamW::new(config.clone(), model.parameters());
    resume_from_with(&path, &trail.checkpoints[2].hash, &mut model, &mut optimizer, Some(base)).unwrap();
    let resumed =
        inner_loop(dataset, &schedule, None, Some(base)).replay_steps(&mut model, &mut optimizer, 10).unwrap().trail;
    assert_eq!(resumed.hashes(), trail.hashes()[3..].to_vec(), "{rule:?}: the resumed trail differs");
    std::fs::remove_dir_all(&dir).unwrap();
    trail
}
