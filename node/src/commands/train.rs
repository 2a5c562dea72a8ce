//! `trellis train`: DiLoCo on one machine with K simulated workers (no chain), optionally
//! against the compute-matched data-parallel baseline; and `trellis model eval`.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;
use tch::Device;
use trellis_proto::{AggregationRule, DeltaEncoding, OuterOptimizer};

use crate::commands::attack::Study;
use trellis_trainer::data::{validation_windows, Dataset};
use trellis_trainer::diloco::{
    run_data_parallel, run_diloco, run_streaming_diloco, Progress, RunConfig, RunReport, Streaming, VALIDATION_WINDOWS,
};
use trellis_trainer::model::{parameter_count, Preset};
use trellis_trainer::optim::{AdamWConfig, InnerRule};
use trellis_trainer::worker::evaluate;
use trellis_trainer::{model::Gpt, model_io};

use crate::commands::plot::{write_line_chart, Series};

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum InnerArg {
    Adamw,
    Muon,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum OuterArg {
    Nesterov,
    Avg,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum AggregateArg {
    Mean,
    TrimmedMean,
    CenteredClip,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum BaselineArg {
    /// Synchronous data-parallel with the same total tokens.
    Ddp,
    /// The same DiLoCo run with every round waiting for its slowest worker's H steps
    /// (--min-inner-steps = H): the loss of an all-fast run, the wall time of waiting.
    Wait,
    /// The same run as plain DiLoCo (--fragments 1): what Streaming DiLoCo's fragments cost in
    /// loss, against the largest message they save.
    Plain,
}

/// Options shared by every command that runs the trainer.
#[derive(Debug, Clone, Args)]
pub struct ComputeArgs {
    /// `cpu`, `cuda` or `cuda:N`.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// CPU threads for libtorch [default: the cores available]. Results are bit-identical for
    /// any count (docs/protocol.md).
    #[arg(long)]
    pub threads: Option<i32>,
}

impl ComputeArgs {
    /// The thread count to use: `--threads`, or every core this process may run on.
    pub fn threads(&self) -> i32 {
        self.threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get() as i32))
    }

    pub fn apply(&self) -> anyhow::Result<Device> {
        let threads = self.threads();
        if threads < 1 {
            bail!("--threads must be at least 1");
        }
        tch::set_num_threads(threads);
        Ok(trellis_trainer::device::select(&self.device)?)
    }
}

#[derive(Debug, Clone, Args)]
pub struct TrainArgs {
    /// Text file, or directory of text files, to train on (last 10% is validation).
    #[arg(long)]
    pub data: PathBuf,
    /// Model preset: nano, micro, small or gpt2.
    #[arg(long, default_value = "nano")]
    pub model: String,
    /// Number of simulated DiLoCo workers (K).
    #[arg(long, default_value_t = 4)]
    pub workers: usize,
    /// Inner AdamW steps per round (H).
    #[arg(long, default_value_t = 50)]
    pub inner_steps: u64,
    /// Outer rounds (R).
    #[arg(long, default_value_t = 10)]
    pub rounds: u64,
    /// Sequences per inner step per worker.
    #[arg(long, default_value_t = 16)]
    pub batch_size: usize,
    /// Tokens per sequence (default: the model's context length).
    #[arg(long)]
    pub sequence_length: Option<usize>,
    /// Seed for initialisation and the batch schedule.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Peak inner learning rate.
    #[arg(long, default_value_t = 3e-3)]
    pub lr: f64,
    /// Inner warm-up steps (counted per worker).
    #[arg(long, default_value_t = 20)]
    pub warmup: u64,
    /// AdamW's decoupled weight decay.
    #[arg(long, default_value_t = 0.1)]
    pub weight_decay: f64,
    /// Largest global gradient norm; larger gradients are scaled down to it.
    #[arg(long, default_value_t = 1.0)]
    pub grad_clip: f64,
    /// Streaming DiLoCo: synchronise the parameters in this many fragments, one every H/F inner
    /// steps, each once a round (1: plain DiLoCo). F must divide --inner-steps; not with
    /// --attack, --trail-dir, --verify-segments or --compact-checkpoints.
    #[arg(long, default_value_t = 1)]
    pub fragments: usize,
    /// Streaming DiLoCo with communication overlapped: the inner steps τ a worker trains on
    /// before a fragment's outer update reaches it (0: it waits for it). Below H/F; with
    /// --fragments 2 or more.
    #[arg(long, default_value_t = 0)]
    pub overlap_steps: u64,
    /// When a fragment's outer update arrives τ steps late, the share α of its own values a
    /// worker keeps (the rest comes from the update): Streaming DiLoCo's mixing factor.
    #[arg(long, default_value_t = trellis_trainer::diloco::DEFAULT_LOCAL_SHARE)]
    pub overlap_mix: f32,
    /// Streaming DiLoCo with churn: worker 0 starts afresh from the global model (new moments)
    /// every this many synchronisations, as a miner that lost its state rejoins a streaming job.
    /// With --fragments 2 or more.
    #[arg(long)]
    pub restart_every: Option<usize>,
    /// Streaming DiLoCo: merge a fragment's Δs all alike instead of weighting each by the phases
    /// of training it holds (the chain's rule; the two differ only with --restart-every).
    #[arg(long)]
    pub equal_weights: bool,
    /// Simulated stragglers: each worker's time per step relative to the fastest, comma-separated
    /// (e.g. 1,1,1,3: the last of four workers is 3× slower). A slower worker trains until the
    /// fastest have done H steps, at least --min-inner-steps; its Δ is weighted by its steps. Wall
    /// time is modelled from these factors (this is one process). Not with --fragments,
    /// --attack or --trail-dir.
    #[arg(long, value_delimiter = ',')]
    pub slowdown: Vec<f64>,
    /// The fewest inner steps a worker commits [default: H, every round waits for its slowest
    /// worker].
    #[arg(long)]
    pub min_inner_steps: Option<u64>,
    /// The inner optimizer: adamw, or muon (Muon on the blocks' weight matrices with AdamW's
    /// learning rate and weight decay, AdamW on embeddings, norms and biases: MuLoCo).
    #[arg(long, value_enum, default_value = "adamw")]
    pub inner_optimizer: InnerArg,
    /// Pseudo-gradient encoding: f32, f16, int8, q4 (4-bit codes), q2 (2-bit codes: −1, 0, 1
    /// times a scale), or topk:<density>[+int8|+q4|+q2] (the largest `density` of every 4096
    /// values, by index; e.g. topk:0.03+q2). All but f32 and f16 carry what they lose into the
    /// next round (error feedback).
    #[arg(long, default_value = "f32")]
    pub encoding: DeltaEncoding,
    /// Outer optimizer.
    #[arg(long, value_enum, default_value = "nesterov")]
    pub outer: OuterArg,
    /// The outer step's learning rate η (Nesterov).
    #[arg(long, default_value_t = 0.7)]
    pub outer_lr: f32,
    /// The outer step's momentum μ (Nesterov).
    #[arg(long, default_value_t = 0.9)]
    pub outer_momentum: f32,
    /// Also train this baseline with the same total tokens, for comparison.
    #[arg(long, value_enum)]
    pub baseline: Option<BaselineArg>,
    /// Peak learning rates of the data-parallel baseline, comma-separated [default: --lr]: each
    /// is trained, and DiLoCo is compared with the best (data-parallel tuned at its own rate,
    /// as docs/training.md compares).
    #[arg(long, value_delimiter = ',')]
    pub ddp_lr: Vec<f64>,
    /// Start DiLoCo and the baseline from one model pretrained for this many data-parallel
    /// steps (the K workers' batches together, on batches of a salted seed), as the DiLoCo paper
    /// starts from a pretrained model. Its tokens are not counted in the comparison.
    #[arg(long, default_value_t = 0, conflicts_with = "init")]
    pub warm_start_steps: u64,
    /// Start DiLoCo and the baseline from the weights in this model file (a `--out` of an
    /// earlier run, or of `trellis model export`) instead of the seed's initialisation; its shape
    /// must be --model's.
    #[arg(long, value_name = "MODEL")]
    pub init: Option<PathBuf>,
    /// Write every worker's checkpoint trail under this directory.
    #[arg(long)]
    pub trail_dir: Option<PathBuf>,
    /// Checkpoint interval c, in inner steps.
    #[arg(long, default_value_t = 10)]
    pub checkpoint_interval: u64,
    /// Take compact checkpoints, as jobs with `checkpoint_state = "compact"` do: each worker's
    /// weights rounded to a bf16 drift from the round's start and its AdamW moments to 8 bits
    /// at every checkpoint. Measures what that costs in loss.
    #[arg(long)]
    pub compact_checkpoints: bool,
    /// Where to save the final model (safetensors).
    #[arg(long, default_value = "trellis-model.safetensors")]
    pub out: PathBuf,
    /// Metrics JSON (default: next to --out, `.metrics.json`).
    #[arg(long)]
    pub metrics: Option<PathBuf>,
    /// Loss-curve PNG (default: next to --out, `.loss.png`).
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// Print the metrics as JSON on stdout instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Make the last --attackers workers misbehave.
    #[arg(long, value_enum)]
    pub attack: Option<crate::commands::attack::Attack>,
    /// How many workers attack (the last ones).
    #[arg(long, default_value_t = 1)]
    pub attackers: usize,
    /// Strength of sign-flip, scale and noise attacks.
    #[arg(long, default_value_t = 10.0)]
    pub attack_scale: f32,
    /// How the round's pseudo-gradients are combined.
    #[arg(long, value_enum, default_value = "mean")]
    pub aggregate: AggregateArg,
    /// Values dropped from each side per coordinate (trimmed mean).
    #[arg(long, default_value_t = 1)]
    pub trim: u32,
    /// Clipping radius τ of centred clipping, relative to the median distance of the Δ from
    /// their coordinate-wise median.
    #[arg(long, default_value_t = 1.0)]
    pub clip_tau: f32,
    /// Iterations of centred clipping.
    #[arg(long, default_value_t = 3)]
    pub clip_iterations: u32,
    /// Keep out of the aggregate any Δ that copies an earlier worker's.
    #[arg(long)]
    pub detect_copies: bool,
    /// Re-execute this many sampled trail segments per worker per round and keep out workers
    /// whose trail fails (needs --trail-dir).
    #[arg(long, default_value_t = 0)]
    pub verify_segments: u32,
    #[command(flatten)]
    pub compute: ComputeArgs,
}

fn sibling(out: &Path, suffix: &str) -> PathBuf {
    let stem = out.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "trellis-model".into());
    out.with_file_name(format!("{stem}{suffix}"))
}

pub fn train(args: TrainArgs) -> anyhow::Result<()> {
    let preset: Preset = args.model.parse().map_err(anyhow::Error::msg)?;
    let model = preset.config();
    if args.workers == 0 {
        bail!("--workers must be at least 1");
    }
    if args.inner_steps == 0 {
        bail!("--inner-steps (H) must be at least 1");
    }
    if args.rounds == 0 {
        bail!("--rounds must be at least 1");
    }
    if args.batch_size == 0 {
        bail!("--batch-size must be at least 1");
    }
    if args.checkpoint_interval == 0 {
        bail!("--checkpoint-interval must be at least 1");
    }
    let inner_rule = match args.inner_optimizer {
        InnerArg::Adamw => InnerRule::Adamw,
        InnerArg::Muon => InnerRule::Muon,
    };
    if args.fragments == 0 || args.inner_steps % args.fragments as u64 != 0 {
        bail!("--fragments must be at least 1 and divide --inner-steps ({})", args.inner_steps);
    }
    if args.fragments > 1
        && (args.attack.is_some() || args.trail_dir.is_some() || args.verify_segments > 0 || args.compact_checkpoints)
    {
        bail!("--fragments > 1 (Streaming DiLoCo) runs without --attack, --trail-dir, --verify-segments and --compact-checkpoints");
    }
    if args.overlap_steps > 0 {
        if args.fragments < 2 {
            bail!("--overlap-steps overlaps Streaming DiLoCo's synchronisations: give --fragments F (2 or more)");
        }
        let phase = args.inner_steps / args.fragments as u64;
        if args.overlap_steps >= phase {
            bail!(
                "--overlap-steps ({}) must be below the steps between two synchronisations, --inner-steps / --fragments ({phase})",
                args.overlap_steps
            );
        }
    }
    if (args.restart_every.is_some() || args.equal_weights) && args.fragments < 2 {
        bail!("--restart-every and --equal-weights are for Streaming DiLoCo: give --fragments F (2 or more)");
    }
    if args.restart_every == Some(0) {
        bail!("--restart-every counts synchronisations: at least 1");
    }
    if !(0.0..=1.0).contains(&args.overlap_mix) {
        bail!("--overlap-mix is the share of a worker's own values kept: within 0..=1");
    }
    let min_inner_steps = args.min_inner_steps.unwrap_or(args.inner_steps);
    if min_inner_steps == 0 || min_inner_steps > args.inner_steps {
        bail!("--min-inner-steps must be in 1..=--inner-steps ({})", args.inner_steps);
    }
    if !args.slowdown.is_empty() {
        if args.slowdown.len() != args.workers {
            bail!("--slowdown has {} factors for {} workers: give one per worker", args.slowdown.len(), args.workers);
        }
        if args.slowdown.iter().any(|s| !s.is_finite() || *s < 1.0) {
            bail!("--slowdown factors are step times relative to the fastest worker: each at least 1");
        }
        if args.fragments > 1 || args.attack.is_some() || args.trail_dir.is_some() {
            bail!("--slowdown runs without --fragments, --attack and --trail-dir");
        }
    }
    if !args.ddp_lr.is_empty() && !matches!(args.baseline, Some(BaselineArg::Ddp)) {
        bail!("--ddp-lr sets the rates of the data-parallel baseline: add --baseline ddp");
    }
    if args.ddp_lr.iter().any(|lr| !lr.is_finite() || *lr <= 0.0) {
        bail!("--ddp-lr rates must be positive");
    }
    if matches!(args.baseline, Some(BaselineArg::Plain)) && args.fragments < 2 {
        bail!("--baseline plain compares Streaming DiLoCo with plain DiLoCo: give --fragments F (2 or more)");
    }
    if matches!(args.baseline, Some(BaselineArg::Wait)) && min_inner_steps == args.inner_steps {
        bail!("--baseline wait compares against a run that waits: give --min-inner-steps below H (and --slowdown)");
    }
    if args.compact_checkpoints && args.trail_dir.is_some() {
        bail!(
            "--compact-checkpoints with --trail-dir: compact checkpoints are read against each round's start \
             weights, which a trail directory does not keep; `trellis verify trail` checks full ones"
        );
    }
    if args.attack.is_some() && (args.attackers == 0 || args.attackers >= args.workers) {
        bail!("--attackers must be between 1 and --workers − 1 (some workers must be honest)");
    }
    if args.verify_segments > 0 && args.trail_dir.is_none() {
        bail!("--verify-segments re-executes trails from disk: add --trail-dir DIR");
    }
    let rule = match args.aggregate {
        AggregateArg::Mean => AggregationRule::Mean,
        AggregateArg::TrimmedMean => {
            if 2 * args.trim as usize >= args.workers {
                bail!("--trim {} drops every value of {} workers", args.trim, args.workers);
            }
            AggregationRule::TrimmedMean { trim: args.trim }
        }
        AggregateArg::CenteredClip => {
            if !args.clip_tau.is_finite() || args.clip_tau <= 0.0 {
                bail!("--clip-tau must be a positive, finite radius (got {})", args.clip_tau);
            }
            AggregationRule::CenteredClip { tau: args.clip_tau, iterations: args.clip_iterations }
        }
    };
    let sequence_length = args.sequence_length.unwrap_or(model.context_length as usize);
    if sequence_length == 0 || sequence_length > model.context_length as usize {
        bail!("--sequence-length must be between 1 and the model's context length {}", model.context_length);
    }
    let device = args.compute.apply()?;
    let dataset = Dataset::load(&args.data).with_context(|| "loading the training data (--data)")?;
    dataset.check_fits(&args.data, sequence_length)?;
    if dataset.shard_count() < args.workers {
        bail!(
            "{} has {} shards of {} KiB; {} workers need at least one each: use fewer --workers or more data",
            args.data.display(),
            dataset.shard_count(),
            dataset.shard_bytes() / 1024,
            args.workers
        );
    }
    let encoding = args.encoding;
    let outer = match args.outer {
        OuterArg::Nesterov => OuterOptimizer::Nesterov,
        OuterArg::Avg => OuterOptimizer::Average,
    };
    let mut config = RunConfig {
        model: model.clone(),
        seed: args.seed,
        workers: args.workers,
        inner_steps: args.inner_steps,
        rounds: args.rounds,
        batch_size: args.batch_size,
        sequence_length,
        adamw: AdamWConfig {
            learning_rate: args.lr,
            beta1: 0.9,
            beta2: 0.95,
            epsilon: 1e-8,
            weight_decay: args.weight_decay,
            grad_clip: args.grad_clip,
            warmup_steps: args.warmup,
            total_steps: args.inner_steps * args.rounds,
            min_lr_fraction: 0.1,
            rule: inner_rule,
        },
        outer,
        outer_learning_rate: args.outer_lr,
        outer_momentum: args.outer_momentum,
        encoding,
        checkpoint_interval: args.checkpoint_interval,
        compact: args.compact_checkpoints,
        trail_dir: args.trail_dir.clone(),
        device,
        initial_weights: None,
        slowdown: args.slowdown.clone(),
        min_inner_steps,
    };
    if let Some(path) = &args.init {
        let start = model_io::load(path, Device::Cpu).with_context(|| "loading the --init model")?;
        if start.config() != &model {
            bail!(
                "--init {} holds a model of another shape than --model {} ({:?} vs {:?})",
                path.display(),
                preset.name(),
                start.config(),
                model
            );
        }
        config.initial_weights = Some(start.flat_weights());
    }
    let parameters = parameter_count(&model);
    if !args.json {
        eprintln!(
            "training {} ({} parameters) on {} ({} KiB, {} shards, root {}), K={} H={} R={}, {} threads, {:?}",
            preset.name(),
            parameters,
            args.data.display(),
            (dataset.train().len() + dataset.validation().len()) / 1024,
            dataset.shard_count(),
            &dataset.root().to_hex()[..16],
            args.workers,
            args.inner_steps,
            args.rounds,
            args.compute.threads(),
            device
        );
    }
    let diloco_steps = args.workers as u64 * args.inner_steps * args.rounds;
    let ddp_rates = if args.ddp_lr.is_empty() { vec![args.lr] } else { args.ddp_lr.clone() };
    let baseline_steps = match args.baseline {
        Some(BaselineArg::Ddp) => args.inner_steps * args.rounds * ddp_rates.len() as u64,
        Some(BaselineArg::Wait | BaselineArg::Plain) => diloco_steps,
        None => 0,
    };
    let bar = progress_bar(args.warm_start_steps + diloco_steps + baseline_steps, args.json);
    if args.warm_start_steps > 0 {
        bar.set_message("warm start");
        let weights = trellis_trainer::diloco::warm_start(&config, &dataset, args.warm_start_steps, |event| {
            report_progress(&bar, args.json, "warm", event)
        })?;
        config.initial_weights = Some(weights);
    }

    bar.set_message("diloco");
    let study = Study {
        attack: args.attack,
        attackers: args.attackers,
        scale: args.attack_scale,
        rule,
        detect_copies: args.detect_copies,
        verify_segments: args.verify_segments,
    };
    let diloco = if args.fragments > 1 {
        let streaming = Streaming {
            restart_every: args.restart_every,
            held_weights: !args.equal_weights,
            ..Streaming::overlapped(args.fragments, args.overlap_steps, args.overlap_mix)
        };
        run_streaming_diloco(&config, streaming, &dataset, |event| report_progress(&bar, args.json, "diloco", event))?
    } else {
        let mut hooks = crate::commands::attack::hooks(&study, &config, &dataset);
        run_diloco(&config, &dataset, &mut hooks, |event| report_progress(&bar, args.json, "diloco", event))?
    };
    let mut ddp_sweep: Vec<(f64, f64)> = Vec::new();
    let ddp = match args.baseline {
        Some(BaselineArg::Ddp) => {
            let mut best: Option<RunReport> = None;
            for lr in &ddp_rates {
                bar.set_message("ddp");
                let rate =
                    RunConfig { adamw: AdamWConfig { learning_rate: *lr, ..config.adamw.clone() }, ..config.clone() };
                let mut run =
                    run_data_parallel(&rate, &dataset, |event| report_progress(&bar, args.json, "ddp", event))?;
                if ddp_rates.len() > 1 {
                    run.method = format!("ddp-lr{lr}");
                }
                ddp_sweep.push((*lr, run.final_validation_loss));
                if best.as_ref().is_none_or(|b| run.final_validation_loss < b.final_validation_loss) {
                    best = Some(run);
                }
            }
            best
        }
        Some(BaselineArg::Wait) => {
            bar.set_message("wait");
            let waiting = RunConfig { min_inner_steps: config.inner_steps, ..config.clone() };
            let mut hooks = crate::commands::attack::hooks(&study, &waiting, &dataset);
            let mut report =
                run_diloco(&waiting, &dataset, &mut hooks, |event| report_progress(&bar, args.json, "wait", event))?;
            report.method = format!("{}-wait", report.method);
            Some(report)
        }
        Some(BaselineArg::Plain) => {
            bar.set_message("plain");
            let mut hooks = crate::commands::attack::hooks(&study, &config, &dataset);
            Some(run_diloco(&config, &dataset, &mut hooks, |event| report_progress(&bar, args.json, "plain", event))?)
        }
        None => None,
    };
    bar.finish_and_clear();

    let mut final_model = Gpt::new(&model, args.seed, device)?;
    final_model.set_flat_weights(&diloco.final_weights);
    model_io::save(&final_model, &args.out)?;
    let metrics_path = args.metrics.clone().unwrap_or_else(|| sibling(&args.out, ".metrics.json"));
    let plot_path = args.plot.clone().unwrap_or_else(|| sibling(&args.out, ".loss.png"));
    let mut metrics = metrics_json(&args, preset, parameters, &dataset, &diloco, ddp.as_ref());
    if ddp_sweep.len() > 1 {
        metrics["ddp_sweep"] = json!(ddp_sweep
            .iter()
            .map(|(lr, loss)| json!({"lr": lr, "final_validation_loss": loss}))
            .collect::<Vec<_>>());
    }
    std::fs::write(&metrics_path, serde_json::to_string_pretty(&metrics)?)
        .with_context(|| format!("writing {}", metrics_path.display()))?;
    let mut series = vec![curve(&diloco)];
    series.extend(ddp.iter().map(curve));
    write_line_chart(&plot_path, "validation loss", "tokens", "loss", &series)?;

    if args.json {
        println!("{}", serde_json::to_string_pretty(&metrics)?);
    } else {
        for (lr, loss) in ddp_sweep.iter().filter(|_| ddp_sweep.len() > 1) {
            println!("data-parallel at lr {lr}: validation loss {loss:.4}");
        }
        print_summary(&diloco, ddp.as_ref(), &args.out, &metrics_path, &plot_path);
    }
    Ok(())
}

fn progress_bar(total: u64, hidden: bool) -> ProgressBar {
    if hidden {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template("{msg:>7} [{elapsed_precise}] {bar:40} {pos}/{len} steps, eta {eta}")
            .expect("valid template"), // ok: a constant template
    );
    bar
}

/// Advances the bar on every step and prints a line per round (unless `quiet`, for `--json`).
fn report_progress(bar: &ProgressBar, quiet: bool, method: &str, event: Progress<'_>) {
    match event {
        Progress::Step { .. } => bar.inc(1),
        Progress::RoundDone(_) if quiet => {}
        Progress::RoundDone(round) => bar.suspend(|| {
            let excluded = if round.excluded.is_empty() { String::new() } else { format!(", excluded workers {:?}", round.excluded) };
            eprintln!(
                "{method:>7} round {:>3}: validation loss {:.4}, train loss {:.4}, {} tokens, {} sent per worker{excluded}",
                round.round + 1,
                round.validation_loss,
                round.mean_train_loss,
                round.tokens,
                human_bytes(round.bytes_sent_per_worker)
            )
        }),
    }
}

fn curve(report: &RunReport) -> Series {
    let mut points = vec![(0.0, report.initial_validation_loss)];
    points.extend(report.rounds.iter().map(|r| (r.tokens as f64, r.validation_loss)));
    Series { label: report.method.clone(), points }
}

fn metrics_json(
    args: &TrainArgs,
    preset: Preset,
    parameters: u64,
    dataset: &Dataset,
    diloco: &RunReport,
    ddp: Option<&RunReport>,
) -> serde_json::Value {
    let mut value = json!({
        "model": preset.name(),
        "parameters": parameters,
        "data": args.data.display().to_string(),
        "dataset_root": dataset.root(),
        "workers": args.workers,
        "inner_steps": args.inner_steps,
        "rounds": args.rounds,
        "warm_start_steps": args.warm_start_steps,
        "init": args.init.as_ref().map(|p| p.display().to_string()),
        "batch_size": args.batch_size,
        "seed": args.seed,
        "threads": args.compute.threads(),
        "device": args.compute.device,
        "attack": args.attack.map(|a| format!("{a:?}")),
        "attackers": if args.attack.is_some() { args.attackers } else { 0 },
        "aggregate": format!("{:?}", args.aggregate),
        "encoding": args.encoding.name(),
        "fragments": args.fragments,
        "overlap_steps": args.overlap_steps,
        "overlap_mix": args.overlap_mix,
        "restart_every": args.restart_every,
        "equal_weights": args.equal_weights,
        "inner_optimizer": format!("{:?}", args.inner_optimizer).to_lowercase(),
        "diloco": diloco,
    });
    value["slowdown"] = json!(args.slowdown);
    value["min_inner_steps"] = json!(args.min_inner_steps.unwrap_or(args.inner_steps));
    match (args.baseline, ddp) {
        (Some(BaselineArg::Ddp), Some(ddp)) => {
            value["ddp"] = json!(ddp);
            value["comparison"] = json!({
                "loss_ratio_diloco_over_ddp": diloco.final_validation_loss / ddp.final_validation_loss,
                "bytes_ratio_ddp_over_diloco": ddp.bytes_sent_per_worker as f64 / diloco.bytes_sent_per_worker.max(1) as f64,
            });
        }
        (Some(BaselineArg::Plain), Some(plain)) => {
            value["plain"] = json!(plain);
            value["comparison"] = json!({
                "loss_ratio_over_plain": diloco.final_validation_loss / plain.final_validation_loss,
                "peak_bytes_ratio_over_plain": diloco.peak_bytes_per_sync as f64 / plain.peak_bytes_per_sync.max(1) as f64,
            });
        }
        (Some(BaselineArg::Wait), Some(wait)) => {
            let all_fast = (args.inner_steps * args.rounds) as f64;
            value["wait"] = json!(wait);
            value["comparison"] = json!({
                "loss_ratio_over_wait": diloco.final_validation_loss / wait.final_validation_loss,
                "wall_ratio_over_all_fast": diloco.wall_steps / all_fast,
                "wait_wall_ratio_over_all_fast": wait.wall_steps / all_fast,
            });
        }
        _ => {}
    }
    value
}

fn print_summary(diloco: &RunReport, ddp: Option<&RunReport>, out: &Path, metrics: &Path, plot: &Path) {
    println!("{:<16} {:>12} {:>12} {:>14} {:>12}", "method", "val loss", "tokens", "sent/worker", "tokens/s");
    for report in std::iter::once(diloco).chain(ddp) {
        println!(
            "{:<16} {:>12.4} {:>12} {:>14} {:>12.0}",
            report.method,
            report.final_validation_loss,
            report.tokens,
            human_bytes(report.bytes_sent_per_worker),
            report.tokens_per_second
        );
    }
    match ddp {
        Some(wait) if wait.method.ends_with("-wait") => {
            // Rounds without a straggler last H steps: what every worker of the waiting run trained.
            let all_fast = wait.rounds.iter().map(|r| r.steps.iter().copied().max().unwrap_or(0) as f64).sum::<f64>();
            println!(
                "not waiting/waiting validation loss: {:.4}; modelled wall time {:.2}x (not waiting) and {:.2}x \
                 (waiting) of rounds without a straggler",
                diloco.final_validation_loss / wait.final_validation_loss,
                diloco.wall_steps / all_fast,
                wait.wall_steps / all_fast
            );
        }
        Some(plain) if diloco.method.starts_with("streaming") && !plain.method.starts_with("ddp") => println!(
            "Streaming/plain DiLoCo validation loss: {:.4}; largest message {} against {} ({:.3}x)",
            diloco.final_validation_loss / plain.final_validation_loss,
            human_bytes(diloco.peak_bytes_per_sync),
            human_bytes(plain.peak_bytes_per_sync),
            diloco.peak_bytes_per_sync as f64 / plain.peak_bytes_per_sync.max(1) as f64
        ),
        Some(ddp) => println!(
            "DiLoCo/DDP validation loss: {:.4}; DDP sends {:.1}x the bytes of DiLoCo",
            diloco.final_validation_loss / ddp.final_validation_loss,
            ddp.bytes_sent_per_worker as f64 / diloco.bytes_sent_per_worker.max(1) as f64
        ),
        None => {}
    }
    println!(
        "checkpointing took {:.1}% of training time",
        100.0 * diloco.checkpoint_seconds / (diloco.compute_seconds + diloco.checkpoint_seconds).max(1e-9)
    );
    println!("model: {}\nmetrics: {}\nloss curve: {}", out.display(), metrics.display(), plot.display());
}

pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

#[derive(Debug, Clone, Args)]
pub struct EvalArgs {
    /// A model file written by `trellis train` (safetensors).
    #[arg(long)]
    pub model: PathBuf,
    /// Text file or directory; its last 10% is evaluated.
    #[arg(long)]
    pub data: PathBuf,
    /// Number of validation windows.
    #[arg(long, default_value_t = VALIDATION_WINDOWS)]
    pub windows: usize,
    #[command(flatten)]
    pub compute: ComputeArgs,
}

pub fn eval(args: EvalArgs) -> anyhow::Result<()> {
    let device = args.compute.apply()?;
    if args.windows == 0 {
        bail!("--windows must be at least 1");
    }
    let model = model_io::load(&args.model, device)?;
    let sequence_length = model.config().context_length as usize;
    let dataset = Dataset::load(&args.data).with_context(|| "loading the evaluation data (--data)")?;
    dataset.check_fits(&args.data, sequence_length)?;
    let (inputs, targets) = validation_windows(&dataset, sequence_length, args.windows);
    let loss = evaluate(&model, &inputs, &targets, sequence_length, 16);
    println!("validation loss: {loss:.4}");
    println!("perplexity:      {:.2}", loss.exp());
    Ok(())
}
