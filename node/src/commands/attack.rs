//! Attacks and defences for `trellis train`: some workers misbehave, and the run can drop
//! copies, verify sampled trail segments, and aggregate robustly, to study what each attack
//! does to training and what stops it.

use clap::ValueEnum;
use tch::Device;
use trellis_proto::hash::draw;
use trellis_proto::{AggregationRule, Hash, HashDomain, VerdictOutcome};
use trellis_protocol::aggregate::aggregate_by_steps;
use trellis_trainer::data::Dataset;
use trellis_trainer::diloco::{worker_trail_dir, RoundHooks, RunConfig, RunManifest, WorkerOutput};
use trellis_trainer::model::init_normals;
use trellis_trainer::worker::TrailEntry;
use trellis_verifier::segment::{check_segment, Mode, Replay, TrailDirSource};
use trellis_verifier::signals::{find_copies, COPY_COSINE_BOUND};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Attack {
    /// Send −scale·Δ (a poisoner pushing the model backwards).
    SignFlip,
    /// Send scale·Δ.
    Scale,
    /// Send noise with scale times the norm of the honest Δ.
    Noise,
    /// Send the Δ of worker 0 (a freeloader).
    Copy,
    /// Publish a trail whose checkpoints were not computed (hashes made up) and a noise Δ.
    FakeTrail,
}

/// How the attack study is set up.
#[derive(Debug, Clone)]
pub struct Study {
    pub attack: Option<Attack>,
    /// The last `attackers` workers misbehave.
    pub attackers: usize,
    pub scale: f32,
    pub rule: AggregationRule,
    pub detect_copies: bool,
    /// Segments re-executed per worker per round (needs a trail directory).
    pub verify_segments: u32,
}

/// Builds the hooks that carry out `study` on a run.
pub fn hooks<'a>(study: &'a Study, config: &'a RunConfig, dataset: &'a Dataset) -> RoundHooks<'a> {
    let workers = config.workers;
    let first_attacker = workers.saturating_sub(study.attackers);
    let tamper = move |round: u64, output: &mut WorkerOutput, earlier: &[WorkerOutput]| {
        let Some(attack) = study.attack else { return };
        if output.worker < first_attacker {
            return;
        }
        let norm = output.delta.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
        let noise = |scale: f64| {
            init_normals(
                round,
                1_000 + output.worker as u64,
                output.delta.len(),
                scale * norm / (output.delta.len() as f64).sqrt(),
            )
        };
        match attack {
            Attack::SignFlip => output.delta.iter_mut().for_each(|x| *x *= -study.scale),
            Attack::Scale => output.delta.iter_mut().for_each(|x| *x *= study.scale),
            Attack::Noise => output.delta = noise(f64::from(study.scale)),
            Attack::Copy => {
                if let Some(victim) = earlier.first() {
                    output.delta = victim.delta.clone();
                }
            }
            Attack::FakeTrail => {
                output.delta = noise(1.0);
                for (i, entry) in output.trail.checkpoints.iter_mut().enumerate().skip(1) {
                    let made_up =
                        [round.to_le_bytes(), (output.worker as u64).to_le_bytes(), (i as u64).to_le_bytes()].concat();
                    *entry = TrailEntry { step: entry.step, hash: Hash::digest(HashDomain::Blob, &made_up) };
                }
            }
        }
    };
    let manifest = RunManifest::of(config, dataset);
    let admit = move |round: u64, outputs: &[WorkerOutput]| -> Vec<bool> {
        let mut admitted = vec![true; outputs.len()];
        if study.detect_copies {
            let deltas: Vec<&[f32]> = outputs.iter().map(|o| o.delta.as_slice()).collect();
            for suspect in find_copies(&deltas, COPY_COSINE_BOUND) {
                admitted[suspect.later] = false;
            }
        }
        if study.verify_segments > 0 {
            if let Some(root) = &config.trail_dir {
                for output in outputs {
                    let dir = worker_trail_dir(root, round, output.worker);
                    if !trail_passes(&manifest, dataset, config.device, &dir, output, study.verify_segments, round) {
                        admitted[output.worker] = false;
                    }
                }
            }
        }
        admitted
    };
    let rule = study.rule.clone();
    RoundHooks {
        tamper: Box::new(tamper),
        admit: Box::new(admit),
        aggregate: Box::new(move |deltas, steps| {
            let combined = aggregate_by_steps(&rule, deltas, steps);
            combined.expect("admitted deltas have one length and a step count each")
            // ok: the run checks shapes first
        }),
    }
}

/// Re-executes `segments` sampled segments of a worker's trail (exact mode).
fn trail_passes(
    manifest: &RunManifest,
    dataset: &Dataset,
    device: Device,
    dir: &std::path::Path,
    output: &WorkerOutput,
    segments: u32,
    round: u64,
) -> bool {
    let replay = Replay {
        model: manifest.model.clone(),
        adamw: manifest.adamw.clone(),
        dataset,
        schedule: manifest.schedule(),
        round,
        worker: output.worker,
        device,
        compact_base: None,
    };
    let source = TrailDirSource::new(dir, &output.trail);
    let count = output.trail.checkpoints.len().saturating_sub(1) as u64;
    (0..segments.min(count as u32)).all(|j| {
        let index = (draw("verify-segment", &manifest.seed.to_le_bytes(), &[round, output.worker as u64, j as u64])
            % count) as usize;
        check_segment(&replay, &output.trail, index, &source, Mode::Exact).outcome == VerdictOutcome::Valid
    })
}
