//! DiLoCo on one machine with K simulated workers, and the compute-matched synchronous
//! data-parallel baseline, for `trellis train`.
//!
//! One model object is reused for every worker (its weights set from θ_r before each worker's
//! round), and each worker keeps its own AdamW moments and error-feedback residual across
//! rounds, as a real miner does.
//!
//! Bytes on the network are counted per worker, as each would send them:
//! - DiLoCo: one encoded pseudo-gradient per round (to the aggregator);
//! - data-parallel: a ring all-reduce of f32 gradients every step, `2(K−1)/K · 4P` bytes.
//!
//! `docs/benchmarks.md` also reports the ratio with an all-reduce of Δ, for comparison.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::Serialize;
use tch::Device;
use trellis_proto::{AggregationRule, DeltaEncoding, ModelConfig, OuterOptimizer};

use crate::data::{validation_windows, BatchSchedule, Dataset};
use crate::encoding::{self, ErrorFeedback};
use crate::model::Gpt;
use crate::optim::{AdamW, AdamWConfig};
use crate::worker::{evaluate, train_step, InnerLoop, StepsOutcome, Trail, WorkerError};
use trellis_protocol::aggregate::aggregate_by_steps;
use trellis_protocol::outer::{mean, pseudo_gradient, OuterStep};

/// Number of validation windows evaluated after each round.
pub const VALIDATION_WINDOWS: usize = 64;

/// Everything a local DiLoCo run needs.
#[derive(Debug, Clone)]
pub struct RunConfig {
    pub model: ModelConfig,
    pub seed: u64,
    pub workers: usize,
    pub inner_steps: u64,
    pub rounds: u64,
    pub batch_size: usize,
    pub sequence_length: usize,
    pub adamw: AdamWConfig,
    pub outer: OuterOptimizer,
    pub outer_learning_rate: f32,
    pub outer_momentum: f32,
    pub encoding: DeltaEncoding,
    pub checkpoint_interval: u64,
    /// Round each worker's state to a compact checkpoint's at every checkpoint
    /// ([`crate::compact`]; the round's start model is the weights' base).
    pub compact: bool,
    pub trail_dir: Option<PathBuf>,
    pub device: Device,
    /// Weights to start from instead of the seed's initialisation (a warm start shared by DiLoCo
    /// and its baseline, as the DiLoCo paper starts both from one pretrained model).
    pub initial_weights: Option<Vec<f32>>,
    /// Each worker's time per step relative to the fastest's (`[1, 1, 1, 3]`: the last worker is
    /// 3× slower); empty when every worker is as fast. Stragglers are simulated: the run is one
    /// process, so wall time is modelled from these factors ([`RoundReport::wall_steps`]).
    pub slowdown: Vec<f64>,
    /// The fewest inner steps a worker commits. The round ends when the fastest workers have
    /// trained `inner_steps`; a slower one stops at that time, after at least this many steps
    /// ([`worker_steps`]). `inner_steps` makes every round wait for its slowest worker.
    pub min_inner_steps: u64,
}

/// The inner steps each worker trains in a round of `config` ([`RunConfig::slowdown`]): the
/// fastest train H; a worker `s` times slower trains until the fastest are done — the first
/// step at or past that time, `⌈H·s_min/s⌉` — but at least `min_inner_steps` and at most H, as a
/// miner of a job with `min_inner_steps` stops once the other workers have committed.
pub fn worker_steps(config: &RunConfig) -> Vec<u64> {
    let h = config.inner_steps;
    if config.slowdown.is_empty() {
        return vec![h; config.workers];
    }
    let fastest = config.slowdown.iter().copied().fold(f64::INFINITY, f64::min);
    config
        .slowdown
        .iter()
        .map(|s| {
            // The float division is exact for whole multiples; the small slack keeps 50·1/1 at 50.
            let reach = ((h as f64 * fastest / s) - 1e-9).ceil().max(1.0) as u64;
            reach.clamp(config.min_inner_steps.clamp(1, h), h)
        })
        .collect()
}

/// How long a round of workers training `steps` takes, in steps of the fastest worker: the
/// slowest worker's steps times its slowdown.
pub fn round_wall_steps(config: &RunConfig, steps: &[u64]) -> f64 {
    let fastest = config.slowdown.iter().copied().fold(f64::INFINITY, f64::min);
    steps
        .iter()
        .enumerate()
        .map(|(k, n)| *n as f64 * config.slowdown.get(k).map_or(1.0, |s| s / fastest))
        .fold(0.0, f64::max)
}

/// What a checker needs, besides the data, to replay any step of a run: written as `run.json`
/// at the top of a trail directory.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct RunManifest {
    pub model: ModelConfig,
    pub seed: u64,
    pub workers: usize,
    pub batch_size: usize,
    pub sequence_length: usize,
    pub adamw: AdamWConfig,
    pub inner_steps: u64,
    pub rounds: u64,
    pub checkpoint_interval: u64,
    pub dataset_root: trellis_proto::Hash,
    pub shard_bytes: usize,
}

impl RunManifest {
    pub fn of(config: &RunConfig, dataset: &Dataset) -> Self {
        Self {
            model: config.model.clone(),
            seed: config.seed,
            workers: config.workers,
            batch_size: config.batch_size,
            sequence_length: config.sequence_length,
            adamw: config.adamw.clone(),
            inner_steps: config.inner_steps,
            rounds: config.rounds,
            checkpoint_interval: config.checkpoint_interval,
            dataset_root: dataset.root(),
            shard_bytes: dataset.shard_bytes(),
        }
    }

    /// The batch schedule of the run.
    pub fn schedule(&self) -> BatchSchedule {
        BatchSchedule {
            seed: self.seed,
            workers: self.workers,
            batch_size: self.batch_size,
            sequence_length: self.sequence_length,
        }
    }
}

/// Per-round figures of a run.
#[derive(Debug, Clone, Serialize)]
pub struct RoundReport {
    pub round: u64,
    pub validation_loss: f64,
    pub mean_train_loss: f64,
    /// Tokens trained so far, all workers together.
    pub tokens: u64,
    /// Bytes sent so far, per worker.
    pub bytes_sent_per_worker: u64,
    pub seconds: f64,
    /// Workers whose Δ the admission hook kept out of the aggregate.
    pub excluded: Vec<usize>,
    /// L2 norm of each worker's Δ as sent (0 for the baseline).
    pub delta_norms: Vec<f64>,
    /// Inner steps each worker trained this round (H each unless some are stragglers).
    pub steps: Vec<u64>,
    /// The round's modelled wall time, in steps of the fastest worker ([`round_wall_steps`]).
    pub wall_steps: f64,
}

/// The result of a run.
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    pub method: String,
    pub initial_validation_loss: f64,
    pub rounds: Vec<RoundReport>,
    pub final_validation_loss: f64,
    pub tokens: u64,
    pub bytes_sent_per_worker: u64,
    /// The most a worker sent at one synchronisation: a whole encoded Δ for DiLoCo, one
    /// fragment's for Streaming DiLoCo, a step's all-reduce for data-parallel.
    pub peak_bytes_per_sync: u64,
    pub compute_seconds: f64,
    pub checkpoint_seconds: f64,
    pub tokens_per_second: f64,
    /// Σ over rounds of [`RoundReport::wall_steps`]: the run's modelled wall time in steps of the
    /// fastest worker (for stragglers; H per round when every worker is as fast).
    pub wall_steps: f64,
    #[serde(skip)]
    pub final_weights: Vec<f32>,
    #[serde(skip)]
    pub trails: Vec<Trail>,
}

/// One worker's output for a round, as it would be sent: open to tampering by attack hooks.
#[derive(Debug, Clone)]
pub struct WorkerOutput {
    pub worker: usize,
    pub delta: Vec<f32>,
    pub trail: Trail,
}

/// Changes a worker's output before it is sent: (round, output, earlier outputs of the round).
pub type TamperHook<'a> = Box<dyn FnMut(u64, &mut WorkerOutput, &[WorkerOutput]) + 'a>;
/// Decides which outputs of a round enter the aggregate.
pub type AdmitHook<'a> = Box<dyn FnMut(u64, &[WorkerOutput]) -> Vec<bool> + 'a>;
/// Combines admitted pseudo-gradients, given the inner steps each one's worker trained.
pub type AggregateHook<'a> = Box<dyn Fn(&[&[f32]], &[u32]) -> Vec<f32> + 'a>;

/// Ways to change a run without touching the trainer: what attackers send, which Δ enter the
/// aggregate, and how they are combined. The default is an honest run with the mean.
pub struct RoundHooks<'a> {
    /// Called on each worker's output before it is encoded and sent, with the outputs of the
    /// workers before it in this round.
    pub tamper: TamperHook<'a>,
    /// Which outputs enter the aggregate (e.g. drop copies, or trails that fail verification).
    pub admit: AdmitHook<'a>,
    /// Combines the admitted (decoded) Δ, in worker order.
    pub aggregate: AggregateHook<'a>,
}

impl Default for RoundHooks<'_> {
    fn default() -> Self {
        Self {
            tamper: Box::new(|_, _, _| {}),
            admit: Box::new(|_, outputs| vec![true; outputs.len()]),
            aggregate: Box::new(|deltas, steps| {
                let combined = aggregate_by_steps(&AggregationRule::Mean, deltas, steps);
                combined.expect("one step count per admitted Δ") // ok: the run passes one count per Δ
            }),
        }
    }
}

/// Progress events, for a bar or a log.
#[derive(Debug, Clone)]
pub enum Progress<'a> {
    Step { round: u64, worker: usize, step: u64, loss: f32 },
    RoundDone(&'a RoundReport),
}

/// Runs DiLoCo: `rounds` rounds of K workers × H inner steps, then the outer step.
pub fn run_diloco(
    config: &RunConfig,
    dataset: &Dataset,
    hooks: &mut RoundHooks<'_>,
    mut progress: impl FnMut(Progress<'_>),
) -> Result<RunReport, WorkerError> {
    let schedule = schedule(config, config.workers);
    if let Some(dir) = &config.trail_dir {
        std::fs::create_dir_all(dir).map_err(|source| WorkerError::Io { path: dir.clone(), source })?;
        let path = dir.join("run.json");
        let json = serde_json::to_string_pretty(&RunManifest::of(config, dataset)).expect("a manifest serialises");
        std::fs::write(&path, json).map_err(|source| WorkerError::Io { path, source })?;
    }
    let (val_inputs, val_targets) = validation_windows(dataset, config.sequence_length, VALIDATION_WINDOWS);
    let mut model = start_model(config)?;
    let mut global = model.flat_weights();
    let initial_validation_loss =
        evaluate(&model, &val_inputs, &val_targets, config.sequence_length, config.batch_size);
    let mut outer = OuterStep::new(config.outer, config.outer_learning_rate, config.outer_momentum, global.len());
    let mut optimizers: Vec<AdamW> =
        (0..config.workers).map(|_| AdamW::new(config.adamw.clone(), model.parameters())).collect();
    let mut feedback: Vec<ErrorFeedback> = (0..config.workers).map(|_| ErrorFeedback::default()).collect();
    let started = Instant::now();
    let mut totals = InnerTotals::default();
    let (mut bytes_sent, mut peak_sync) = (0u64, 0u64);
    let mut rounds = Vec::new();
    let mut trails = Vec::new();
    let steps = worker_steps(config);
    let wall_steps = round_wall_steps(config, &steps);
    for round in 0..config.rounds {
        let mut outputs: Vec<WorkerOutput> = Vec::with_capacity(config.workers);
        let mut train_losses = Vec::new();
        for (worker, optimizer) in optimizers.iter_mut().enumerate() {
            model.set_flat_weights(&global);
            let trail_dir = config.trail_dir.as_ref().map(|d| worker_trail_dir(d, round, worker));
            let inner = InnerLoop {
                dataset,
                schedule: &schedule,
                round,
                worker,
                checkpoint_interval: config.checkpoint_interval,
                trail_dir: trail_dir.as_deref(),
                compact_base: if config.compact {
                    Some(
                        crate::checkpoint::CompactBase::new(&global, config.adamw.beta1, config.adamw.beta2)
                            .ok_or(WorkerError::BadSegments {
                                steps: config.inner_steps,
                                interval: config.checkpoint_interval,
                                reason: "compact checkpoints need beta1² < beta2",
                            })?
                            .for_rule(config.adamw.rule),
                    )
                } else {
                    None
                },
            };
            let outcome = inner.train_steps(&mut model, optimizer, steps[worker], |step, loss| {
                progress(Progress::Step { round, worker, step, loss })
            })?;
            totals.add(&outcome, &mut train_losses);
            let mut output =
                WorkerOutput { worker, delta: pseudo_gradient(&global, &model.flat_weights()), trail: outcome.trail };
            (hooks.tamper)(round, &mut output, &outputs);
            if let Some(dir) = &trail_dir {
                write_trail(dir, &output.trail)?;
            }
            let (sent, decoded) = send(config.encoding, &mut feedback[worker], &output.delta, worker)?;
            if worker == 0 {
                bytes_sent += sent;
                peak_sync = peak_sync.max(sent);
            }
            output.delta = decoded;
            outputs.push(output);
        }
        let delta_norms: Vec<f64> =
            outputs.iter().map(|o| o.delta.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt()).collect();
        let admitted = (hooks.admit)(round, &outputs);
        let excluded: Vec<usize> = (0..outputs.len()).filter(|&w| !admitted[w]).collect();
        let kept: Vec<&[f32]> =
            outputs.iter().zip(&admitted).filter(|(_, keep)| **keep).map(|(o, _)| o.delta.as_slice()).collect();
        let kept_steps: Vec<u32> = outputs
            .iter()
            .zip(&admitted)
            .filter(|(_, keep)| **keep)
            .map(|(o, _)| u32::try_from(o.trail.losses.len()).unwrap_or(u32::MAX))
            .collect();
        if !kept.is_empty() {
            outer.apply(&mut global, &(hooks.aggregate)(&kept, &kept_steps));
        }
        model.set_flat_weights(&global);
        trails.extend(outputs.into_iter().map(|o| o.trail));
        let report = RoundReport {
            round,
            validation_loss: evaluate(&model, &val_inputs, &val_targets, config.sequence_length, config.batch_size),
            mean_train_loss: train_losses.iter().sum::<f64>() / train_losses.len().max(1) as f64,
            tokens: totals.tokens,
            bytes_sent_per_worker: bytes_sent,
            seconds: started.elapsed().as_secs_f64(),
            excluded,
            delta_norms,
            steps: steps.clone(),
            wall_steps,
        };
        progress(Progress::RoundDone(&report));
        rounds.push(report);
    }
    let mut report = finish(
        format!("diloco-{}", config.encoding),
        initial_validation_loss,
        rounds,
        global,
        trails,
        totals.compute,
        totals.checkpointing,
    );
    report.peak_bytes_per_sync = peak_sync;
    Ok(report)
}

/// How Streaming DiLoCo synchronises: in how many fragments, and how late each fragment's outer
/// update reaches the workers.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Streaming {
    /// F: the flat parameters in this many contiguous fragments, one synchronised every H/F steps.
    pub fragments: usize,
    /// τ: the inner steps a worker takes between sending a fragment's Δ and receiving the
    /// fragment's outer-updated values (the communication overlapped with compute). 0: at once.
    pub overlap_steps: u64,
    /// α: when the outer-updated fragment arrives τ steps late, a worker keeps this share of its
    /// own values and takes the rest from the global ones (Streaming DiLoCo's mixing factor).
    /// Unused when τ = 0, where the global values replace the worker's.
    pub local_share: f32,
    /// Churn: worker 0 starts afresh from the global model (new AdamW moments, no error
    /// feedback) every this many synchronisations, as a miner that lost its state joins a
    /// streaming job again from θ_r. `None`: every worker continues throughout.
    pub restart_every: Option<usize>,
    /// How the fragment's Δs are merged: each weighted by the synchronisation phases it holds
    /// since its worker took that fragment (at most F; the chain's rule,
    /// `trellis_protocol::fragments::merge_weight`), or all alike. Without churn the two agree.
    pub held_weights: bool,
}

impl Streaming {
    /// F fragments, each merged at once (τ = 0).
    pub fn fragments(fragments: usize) -> Self {
        Self::overlapped(fragments, 0, DEFAULT_LOCAL_SHARE)
    }

    /// F fragments whose outer updates arrive `overlap_steps` late, mixed with share `local_share`.
    pub fn overlapped(fragments: usize, overlap_steps: u64, local_share: f32) -> Self {
        Self { fragments, overlap_steps, local_share, restart_every: None, held_weights: true }
    }

    /// Inner steps between two synchronisations (H/F), or why this schedule cannot run for H.
    fn phase(&self, inner_steps: u64) -> Result<u64, WorkerError> {
        let bad =
            |interval: u64, reason: &'static str| WorkerError::BadSegments { steps: inner_steps, interval, reason };
        if self.fragments == 0 || inner_steps % self.fragments as u64 != 0 {
            return Err(bad(
                self.fragments as u64,
                "Streaming DiLoCo needs a number of fragments that divides the inner steps",
            ));
        }
        let phase = inner_steps / self.fragments as u64;
        if self.overlap_steps >= phase {
            return Err(bad(
                self.overlap_steps,
                "the overlap must be shorter than the steps between two synchronisations (H/F)",
            ));
        }
        if !(0.0..=1.0).contains(&self.local_share) {
            return Err(bad(self.overlap_steps, "the local share α must be within 0..=1"));
        }
        Ok(phase)
    }
}

/// The Streaming DiLoCo paper's α for τ > 0: half the worker's values, half the global ones.
pub const DEFAULT_LOCAL_SHARE: f32 = 0.5;

/// A worker's fragment when the outer-updated values arrive late: `α·local + (1 − α)·global`,
/// element by element in f32 (one rounding order, so reruns agree bit for bit).
pub fn mix_arrived_fragment(local: &mut [f32], global: &[f32], local_share: f32) {
    let global_share = 1.0 - local_share;
    for (mine, theirs) in local.iter_mut().zip(global) {
        *mine = local_share * *mine + global_share * *theirs;
    }
}

/// Streaming DiLoCo (Douillard et al., 2025): the flat parameters in `streaming.fragments`
/// contiguous fragments of about equal size; every worker trains on without resetting, and after
/// every H/F inner steps one fragment, in turn, is synchronised: each worker sends that fragment's
/// Δ (global − its own, encoded as `config.encoding`, with error feedback per fragment), the
/// fragment's own outer step applies their mean, and every worker takes the new global
/// fragment. Each fragment is synchronised once every H steps, as in DiLoCo, at staggered
/// times, so a synchronisation sends 1/F of a Δ. With `overlap_steps` τ > 0 the workers do not
/// wait for the outer step: they train τ more steps, then mix the arrived fragment into their
/// own ([`mix_arrived_fragment`]); τ = 0 replaces their fragment at once. (What the overlap saves
/// is wall time, which this single process does not model; what it costs in loss, it measures.)
pub fn run_streaming_diloco(
    config: &RunConfig,
    streaming: Streaming,
    dataset: &Dataset,
    mut progress: impl FnMut(Progress<'_>),
) -> Result<RunReport, WorkerError> {
    let phase = streaming.phase(config.inner_steps)?;
    let (fragments, overlap) = (streaming.fragments, streaming.overlap_steps);
    let schedule = schedule(config, config.workers);
    let (val_inputs, val_targets) = validation_windows(dataset, config.sequence_length, VALIDATION_WINDOWS);
    let mut model = start_model(config)?;
    let mut global = model.flat_weights();
    let n = global.len();
    let span = |f: usize| f * n / fragments..(f + 1) * n / fragments;
    let initial_validation_loss =
        evaluate(&model, &val_inputs, &val_targets, config.sequence_length, config.batch_size);
    let mut outer: Vec<OuterStep> = (0..fragments)
        .map(|f| OuterStep::new(config.outer, config.outer_learning_rate, config.outer_momentum, span(f).len()))
        .collect();
    let mut optimizers: Vec<AdamW> =
        (0..config.workers).map(|_| AdamW::new(config.adamw.clone(), model.parameters())).collect();
    let mut feedback: Vec<Vec<ErrorFeedback>> =
        (0..config.workers).map(|_| (0..fragments).map(|_| ErrorFeedback::default()).collect()).collect();
    let mut locals: Vec<Vec<f32>> = vec![global.clone(); config.workers];
    // The synchronisation at which each worker last started from the global model.
    let mut since = vec![0usize; config.workers];
    // The fragment whose outer-updated values are on their way to the workers (τ > 0 only).
    let mut in_flight: Option<usize> = None;
    let started = Instant::now();
    let mut totals = InnerTotals::default();
    let (mut bytes_sent, mut peak_sync) = (0u64, 0u64);
    let mut rounds = Vec::new();
    for round in 0..config.rounds {
        let mut train_losses = Vec::new();
        let mut delta_norms = vec![0.0f64; config.workers];
        for fragment in 0..fragments {
            let range = span(fragment);
            let sync = round as usize * fragments + fragment;
            let mut deltas = Vec::with_capacity(config.workers);
            let mut held = Vec::with_capacity(config.workers);
            for (worker, optimizer) in optimizers.iter_mut().enumerate() {
                if worker == 0 && sync > 0 && streaming.restart_every.is_some_and(|every| sync % every == 0) {
                    locals[0] = global.clone();
                    model.set_flat_weights(&locals[0]);
                    *optimizer = AdamW::new(config.adamw.clone(), model.parameters());
                    feedback[0] = (0..fragments).map(|_| ErrorFeedback::default()).collect();
                    since[0] = sync;
                }
                // Phases of this fragment's training the worker's Δ holds: since it last took
                // the fragment (F phases ago) or since it started afresh, whichever is later.
                held.push((sync - since[worker] + 1).min(fragments) as u32);
                model.set_flat_weights(&locals[worker]);
                let mut train = |model: &mut Gpt, steps: u64| -> Result<(), WorkerError> {
                    let inner = InnerLoop {
                        dataset,
                        schedule: &schedule,
                        round,
                        worker,
                        checkpoint_interval: steps,
                        trail_dir: None,
                        compact_base: None,
                    };
                    let outcome = inner.train_steps(model, optimizer, steps, |step, loss| {
                        progress(Progress::Step { round, worker, step, loss })
                    })?;
                    totals.add(&outcome, &mut train_losses);
                    Ok(())
                };
                match in_flight {
                    Some(arrived) => {
                        train(&mut model, overlap)?;
                        let mut weights = model.flat_weights();
                        let arrived = span(arrived);
                        mix_arrived_fragment(&mut weights[arrived.clone()], &global[arrived], streaming.local_share);
                        model.set_flat_weights(&weights);
                        train(&mut model, phase - overlap)?;
                    }
                    None => train(&mut model, phase)?,
                }
                locals[worker] = model.flat_weights();
                let delta = pseudo_gradient(&global[range.clone()], &locals[worker][range.clone()]);
                let (sent, decoded) = send(config.encoding, &mut feedback[worker][fragment], &delta, worker)?;
                if worker == 0 {
                    bytes_sent += sent;
                    peak_sync = peak_sync.max(sent);
                }
                delta_norms[worker] += decoded.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>();
                deltas.push(decoded);
            }
            let refs: Vec<&[f32]> = deltas.iter().map(Vec::as_slice).collect();
            let merged = if streaming.held_weights && held.iter().any(|&h| h != held[0]) {
                // ok: one weight per Δ, every Δ the fragment's length
                trellis_protocol::aggregate::weighted_mean(&refs, &held).expect("one weight per Δ of one length")
            } else {
                mean(&refs)
            };
            outer[fragment].apply(&mut global[range.clone()], &merged);
            if overlap == 0 {
                for local in &mut locals {
                    local[range.clone()].copy_from_slice(&global[range.clone()]);
                }
            } else {
                in_flight = Some(fragment);
            }
        }
        model.set_flat_weights(&global);
        let report = RoundReport {
            round,
            validation_loss: evaluate(&model, &val_inputs, &val_targets, config.sequence_length, config.batch_size),
            mean_train_loss: train_losses.iter().sum::<f64>() / train_losses.len().max(1) as f64,
            tokens: totals.tokens,
            bytes_sent_per_worker: bytes_sent,
            seconds: started.elapsed().as_secs_f64(),
            excluded: Vec::new(),
            delta_norms: delta_norms.into_iter().map(f64::sqrt).collect(),
            steps: vec![config.inner_steps; config.workers],
            wall_steps: config.inner_steps as f64,
        };
        progress(Progress::RoundDone(&report));
        rounds.push(report);
    }
    let method = match overlap {
        0 => format!("streaming-diloco-{fragments}-{}", config.encoding),
        _ => format!("streaming-diloco-{fragments}-overlap{overlap}-{}", config.encoding),
    };
    let mut report =
        finish(method, initial_validation_loss, rounds, global, Vec::new(), totals.compute, totals.checkpointing);
    report.peak_bytes_per_sync = peak_sync;
    Ok(report)
}

/// What a run's inner loops add up to.
#[derive(Default)]
struct InnerTotals {
    tokens: u64,
    compute: Duration,
    checkpointing: Duration,
}

impl InnerTotals {
    /// Counts one inner loop's tokens and time, and adds its losses to the round's.
    fn add(&mut self, outcome: &StepsOutcome, round_losses: &mut Vec<f64>) {
        self.tokens += outcome.tokens;
        self.compute += outcome.compute;
        self.checkpointing += outcome.checkpointing;
        round_losses.extend(outcome.trail.losses.iter().map(|&l| f64::from(l)));
    }
}

/// What worker `worker` sends of `delta` in `encoding` (with its error feedback `feedback`
/// where the encoding has it): the bytes' count, and the Δ the aggregator decodes from them.
fn send(
    encoding: DeltaEncoding,
    feedback: &mut ErrorFeedback,
    delta: &[f32],
    worker: usize,
) -> Result<(u64, Vec<f32>), WorkerError> {
    let non_finite = |error| match error {
        encoding::EncodingError::NonFinite(index) => WorkerError::NonFiniteDelta { worker, index },
        _ => WorkerError::NonFiniteDelta { worker, index: delta.len() },
    };
    let encoded = if encoding.has_error_feedback() {
        feedback.encode(encoding, delta).map_err(non_finite)?
    } else {
        encoding::encode_finite(encoding, delta).map_err(non_finite)?
    };
    let (_, decoded) = encoding::decode(&encoded).map_err(non_finite)?;
    Ok((encoded.len() as u64, decoded))
}

/// Synchronous data-parallel with the same total tokens: every step trains on the K workers'
/// batches of that step at once (the global batch split across workers, averaged gradients),
/// for `rounds × H` steps, reporting at the same token counts as DiLoCo.
pub fn run_data_parallel(
    config: &RunConfig,
    dataset: &Dataset,
    mut progress: impl FnMut(Progress<'_>),
) -> Result<RunReport, WorkerError> {
    let worker_schedule = schedule(config, config.workers);
    let (val_inputs, val_targets) = validation_windows(dataset, config.sequence_length, VALIDATION_WINDOWS);
    let mut model = start_model(config)?;
    let initial_validation_loss =
        evaluate(&model, &val_inputs, &val_targets, config.sequence_length, config.batch_size);
    let mut optimizer = AdamW::new(config.adamw.clone(), model.parameters());
    let parameters = model.numel() as u64;
    let k = config.workers as u64;
    let allreduce_bytes = 2 * (k - 1) * 4 * parameters / k;
    let started = Instant::now();
    let (mut tokens, mut bytes_sent, mut compute) = (0u64, 0u64, Duration::ZERO);
    let (b, t) = (config.batch_size as i64, config.sequence_length as i64);
    let mut rounds = Vec::new();
    for round in 0..config.rounds {
        let shards: Vec<Vec<usize>> =
            (0..config.workers).map(|w| worker_schedule.shards_of(dataset, round, w)).collect::<Result<_, _>>()?;
        let mut losses = Vec::new();
        for local in 0..config.inner_steps {
            let began = Instant::now();
            let mut inputs = Vec::new();
            let mut targets = Vec::new();
            for (worker, worker_shards) in shards.iter().enumerate() {
                // Worker w's batch at its step `round·H + local`, as DiLoCo's worker would draw it.
                let step = round * config.inner_steps + local;
                let (x, y) = worker_schedule.batch(dataset, worker_shards, round, worker, step);
                inputs.extend(x);
                targets.extend(y);
            }
            let loss = train_step(&mut model, &mut optimizer, &inputs, &targets, k as i64 * b, t)?;
            compute += began.elapsed();
            losses.push(f64::from(loss));
            tokens += (k as i64 * b * t) as u64;
            bytes_sent += allreduce_bytes;
            progress(Progress::Step { round, worker: 0, step: optimizer.step, loss });
        }
        let report = RoundReport {
            round,
            validation_loss: evaluate(&model, &val_inputs, &val_targets, config.sequence_length, config.batch_size),
            mean_train_loss: losses.iter().sum::<f64>() / losses.len().max(1) as f64,
            tokens,
            bytes_sent_per_worker: bytes_sent,
            seconds: started.elapsed().as_secs_f64(),
            excluded: Vec::new(),
            delta_norms: Vec::new(),
            steps: vec![config.inner_steps],
            wall_steps: config.inner_steps as f64,
        };
        progress(Progress::RoundDone(&report));
        rounds.push(report);
    }
    let weights = model.flat_weights();
    let mut report =
        finish("ddp".into(), initial_validation_loss, rounds, weights, Vec::new(), compute, Duration::ZERO);
    report.peak_bytes_per_sync = allreduce_bytes;
    Ok(report)
}

/// The seed-salt of a warm start's batch schedule and initialisation, so that its batches are
/// not the ones the compared runs draw afterwards.
pub const WARM_START_SEED_SALT: u64 = 0x5741_524d; // "WARM"

/// A warm start: `steps` steps of data-parallel training (the K workers' batches together, a
/// warm-up and cosine schedule of its own over `steps`) from the seed's initialisation, on
/// batches drawn with the seed salted by [`WARM_START_SEED_SALT`]. Returns the weights.
pub fn warm_start(
    config: &RunConfig,
    dataset: &Dataset,
    steps: u64,
    progress: impl FnMut(Progress<'_>),
) -> Result<Vec<f32>, WorkerError> {
    let mut warm = config.clone();
    warm.seed = config.seed ^ WARM_START_SEED_SALT;
    warm.initial_weights = Some(Gpt::new(&config.model, config.seed, Device::Cpu)?.flat_weights());
    warm.rounds = 1;
    warm.inner_steps = steps;
    warm.adamw.total_steps = steps;
    warm.adamw.warmup_steps = config.adamw.warmup_steps.min(steps);
    Ok(run_data_parallel(&warm, dataset, progress)?.final_weights)
}

fn start_model(config: &RunConfig) -> Result<Gpt, WorkerError> {
    let mut model = Gpt::new(&config.model, config.seed, config.device)?;
    if let Some(weights) = &config.initial_weights {
        model.set_flat_weights(weights);
    }
    Ok(model)
}

fn finish(
    method: String,
    initial_validation_loss: f64,
    rounds: Vec<RoundReport>,
    final_weights: Vec<f32>,
    trails: Vec<Trail>,
    compute: Duration,
    checkpointing: Duration,
) -> RunReport {
    let last = rounds.last();
    let tokens = last.map_or(0, |r| r.tokens);
    RunReport {
        method,
        initial_validation_loss,
        final_validation_loss: last.map_or(initial_validation_loss, |r| r.validation_loss),
        tokens,
        bytes_sent_per_worker: last.map_or(0, |r| r.bytes_sent_per_worker),
        peak_bytes_per_sync: 0,
        compute_seconds: compute.as_secs_f64(),
        checkpoint_seconds: checkpointing.as_secs_f64(),
        tokens_per_second: tokens as f64 / compute.as_secs_f64().max(1e-9),
        wall_steps: rounds.iter().map(|r| r.wall_steps).sum(),
        rounds,
        final_weights,
        trails,
    }
}

fn schedule(config: &RunConfig, workers: usize) -> BatchSchedule {
    BatchSchedule { seed: config.seed, workers, batch_size: config.batch_size, sequence_length: config.sequence_length }
}

/// Where worker `worker`'s trail of round `round` lives under a run's trail directory.
pub fn worker_trail_dir(root: &std::path::Path, round: u64, worker: usize) -> PathBuf {
    root.join(format!("round-{round:04}")).join(format!("worker-{worker:02}"))
}

/// Writes `trail.json` (steps, hashes, losses, root) beside the checkpoints.
pub fn write_trail(dir: &std::path::Path, trail: &Trail) -> Result<(), WorkerError> {
    let path = dir.join("trail.json");
    let json = serde_json::json!({
        "round": trail.round,
        "worker": trail.worker,
        "checkpoint_interval": trail.checkpoint_interval,
        "root": trail.root(),
        "checkpoints": trail.checkpoints,
        "losses": trail.losses,
    });
    let text = serde_json::to_string_pretty(&json).expect("a trail serialises");
    std::fs::write(&path, text).map_err(|source| WorkerError::Io { path, source })
}
