//! `trellis verify trail`: re-execute segments of trails written by `trellis train --trail-dir`
//! and print a verdict per segment; exit non-zero if any segment is not valid.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::{Args, Subcommand, ValueEnum};
use serde_json::json;
use trellis_proto::hash::draw;
use trellis_proto::VerdictOutcome;
use trellis_trainer::data::Dataset;
use trellis_trainer::diloco::RunManifest;
use trellis_trainer::worker::Trail;
use trellis_verifier::segment::{check_segment, Mode, Replay, SegmentReport, TrailDirSource};

use crate::commands::train::ComputeArgs;

#[derive(Debug, Subcommand)]
pub enum VerifyCommand {
    /// Re-execute trail segments and print a verdict for each.
    Trail(VerifyTrailArgs),
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ModeArg {
    Exact,
    Tolerance,
}

#[derive(Debug, Clone, Args)]
pub struct VerifyTrailArgs {
    /// A run's trail directory (with run.json), or one worker's directory inside it.
    #[arg(long)]
    pub trail_dir: PathBuf,
    /// The text the run trained on (its dataset root must match run.json).
    #[arg(long)]
    pub data: PathBuf,
    /// `all`, or the number of segments to sample per worker trail.
    #[arg(long, default_value = "all")]
    pub segments: String,
    /// Seed for choosing the sampled segments.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// `exact`: re-executed checkpoints must hash to the trail's; `tolerance`: within
    /// --tolerance relative L2 distance (another backend class).
    #[arg(long, value_enum, default_value = "exact")]
    pub mode: ModeArg,
    /// Largest relative L2 distance accepted in tolerance mode.
    #[arg(long, default_value_t = 1e-6)]
    pub max_distance: f64,
    /// Print one JSON object per segment instead of a table.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub compute: ComputeArgs,
}

/// Finds `run.json` in `dir` or its two parents (a worker directory is `round-*/worker-*`).
fn find_manifest(dir: &Path) -> anyhow::Result<(PathBuf, RunManifest)> {
    for candidate in dir.ancestors().take(3) {
        let path = candidate.join("run.json");
        if path.exists() {
            let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
            let manifest =
                serde_json::from_str(&text).with_context(|| format!("{} is not a run manifest", path.display()))?;
            return Ok((candidate.to_path_buf(), manifest));
        }
    }
    bail!(
        "no run.json in {} or its parents: is it a trail directory written by `trellis train --trail-dir`?",
        dir.display()
    )
}

/// Every worker directory (holding trail.json) under `dir`, in path order.
fn worker_dirs(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    if dir.join("trail.json").exists() {
        return Ok(vec![dir.to_path_buf()]);
    }
    let mut found = Vec::new();
    let mut rounds: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .flatten()
        .map(|e| e.path())
        .collect();
    rounds.sort();
    for round in rounds.iter().filter(|p| p.is_dir()) {
        let mut workers: Vec<_> =
            std::fs::read_dir(round)?.flatten().map(|e| e.path()).filter(|p| p.join("trail.json").exists()).collect();
        workers.sort();
        found.extend(workers);
    }
    if found.is_empty() {
        bail!("no trail.json under {}", dir.display());
    }
    Ok(found)
}

pub fn verify_trail(args: VerifyTrailArgs) -> anyhow::Result<bool> {
    let started = std::time::Instant::now();
    let mut segment_time = std::time::Duration::ZERO;
    let device = args.compute.apply()?;
    let (_, manifest) = find_manifest(&args.trail_dir)?;
    let dataset = Dataset::load(&args.data).with_context(|| "loading the training data (--data)")?;
    if dataset.root() != manifest.dataset_root {
        bail!(
            "{} has dataset root {}, the run trained on {}: pass the same --data",
            args.data.display(),
            dataset.root(),
            manifest.dataset_root
        );
    }
    let sample: Option<u64> = match args.segments.as_str() {
        "all" => None,
        n => Some(
            n.parse()
                .ok()
                .filter(|&n| n > 0)
                .with_context(|| format!("--segments must be 'all' or a positive number, not '{n}'"))?,
        ),
    };
    let mode = match args.mode {
        ModeArg::Exact => Mode::Exact,
        ModeArg::Tolerance => Mode::Tolerance { max_distance: args.max_distance },
    };
    let mut all_valid = true;
    let mut checked = 0usize;
    if !args.json {
        println!("{:<34} {:>7} {:>11} {:<10} {:>10}  detail", "trail", "segment", "steps", "verdict", "distance");
    }
    for dir in worker_dirs(&args.trail_dir)? {
        let path = dir.join("trail.json");
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        let trail: Trail = serde_json::from_str(&text).with_context(|| format!("{} is not a trail", path.display()))?;
        let replay = Replay {
            model: manifest.model.clone(),
            adamw: manifest.adamw.clone(),
            dataset: &dataset,
            schedule: manifest.schedule(),
            round: trail.round,
            worker: trail.worker,
            device,
            compact_base: None,
        };
        let source = TrailDirSource::new(&dir, &trail);
        let segments = trail.checkpoints.len().saturating_sub(1);
        let indices: Vec<usize> = match sample {
            None => (0..segments).collect(),
            Some(n) => {
                let mut chosen = std::collections::BTreeSet::new();
                let wanted = (n as usize).min(segments);
                let mut attempt = 0u64;
                while chosen.len() < wanted {
                    let seed = args.seed.to_le_bytes();
                    chosen.insert(
                        (draw("verify-segment", &seed, &[trail.round, trail.worker as u64, attempt]) % segments as u64)
                            as usize,
                    );
                    attempt += 1;
                }
                chosen.into_iter().collect()
            }
        };
        let label = format!("round {} worker {}", trail.round, trail.worker);
        for index in indices {
            let segment_started = std::time::Instant::now();
            let report = check_segment(&replay, &trail, index, &source, mode);
            segment_time += segment_started.elapsed();
            all_valid &= report.outcome == VerdictOutcome::Valid;
            checked += 1;
            print_report(&label, &dir, &report, args.json);
        }
    }
    // Segment checks (checkpoint loads and re-execution) apart from the fixed costs of start-up
    // and data loading, which a validator pays once, not per segment.
    let total = started.elapsed().as_secs_f64();
    let segments = segment_time.as_secs_f64();
    if args.json {
        println!(
            "{}",
            json!({ "summary": { "segments": checked, "all_valid": all_valid, "segment_seconds": segments, "total_seconds": total } })
        );
    } else {
        println!(
            "{checked} segments checked: {} ({segments:.2} s in segment checks, {:.2} s start-up and data loading)",
            if all_valid { "all valid" } else { "INVALID segments found" },
            total - segments
        );
    }
    Ok(all_valid)
}

fn print_report(label: &str, dir: &Path, report: &SegmentReport, as_json: bool) {
    let (verdict, detail) = match &report.outcome {
        VerdictOutcome::Valid => ("valid", String::new()),
        VerdictOutcome::Unavailable => ("unavailable", "start checkpoint not found".to_string()),
        VerdictOutcome::Invalid(e) => {
            ("INVALID", format!("{:?}: expected {}, reproduced {}", e.reason, e.expected, e.reproduced))
        }
        VerdictOutcome::JobFault { reason } => {
            ("job fault", format!("{reason:?}: the run's model or data cannot be replayed"))
        }
        VerdictOutcome::Abstain => ("abstain", "the check could not run".to_string()),
    };
    if as_json {
        println!("{}", json!({ "trail": dir.display().to_string(), "report": report }));
    } else {
        println!(
            "{label:<34} {:>7} {:>11} {verdict:<10} {:>10.3e}  {detail}",
            report.segment,
            format!("{}..{}", report.start_step, report.end_step),
            report.distance
        );
    }
}
