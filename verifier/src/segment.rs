//! Segment checks: fetch a trail segment's start checkpoint, confirm its hash, re-execute the
//! segment's steps with the deterministic batch schedule, and compare with the next trail
//! entry; and the last link, that the submitted Δ encodes θ_r − θ_final.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tch::Device;
use trellis_proto::{DeltaEncoding, Hash, InvalidEvidence, InvalidReason, ModelConfig, VerdictOutcome};
use trellis_trainer::checkpoint::{checkpoint_hash, CheckpointData};
use trellis_trainer::data::{BatchSchedule, Dataset};
use trellis_trainer::encoding;
use trellis_trainer::model::Gpt;
use trellis_trainer::optim::{AdamW, AdamWConfig};
use trellis_trainer::worker::{checkpoint_path, InnerLoop, Trail};

/// Where checkers get blobs (checkpoints, deltas) by hash. The node backs it with p2p.
pub trait BlobSource {
    /// The bytes claimed to hash to `hash`. The caller checks the hash.
    fn fetch(&self, hash: &Hash) -> Result<Vec<u8>, BlobError>;
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BlobError {
    #[error("blob {0} is not available")]
    NotFound(Hash),
    #[error("blob {hash}: {reason}")]
    Io { hash: Hash, reason: String },
    #[error("blob {hash} is larger than the limit of {limit} bytes")]
    TooLarge { hash: Hash, limit: u64 },
}

/// The checkpoints of a trail written by `trellis train --trail-dir`, found by hash.
pub struct TrailDirSource {
    files: HashMap<Hash, PathBuf>,
}

impl TrailDirSource {
    pub fn new(dir: &Path, trail: &Trail) -> Self {
        let files = trail.checkpoints.iter().map(|e| (e.hash, checkpoint_path(dir, e.step))).collect();
        Self { files }
    }
}

impl BlobSource for TrailDirSource {
    fn fetch(&self, hash: &Hash) -> Result<Vec<u8>, BlobError> {
        let path = self.files.get(hash).ok_or(BlobError::NotFound(*hash))?;
        let len = std::fs::metadata(path).map_err(|_| BlobError::NotFound(*hash))?.len();
        if len > trellis_trainer::checkpoint::MAX_CHECKPOINT_BYTES {
            return Err(BlobError::TooLarge { hash: *hash, limit: trellis_trainer::checkpoint::MAX_CHECKPOINT_BYTES });
        }
        std::fs::read(path).map_err(|e| BlobError::Io { hash: *hash, reason: e.to_string() })
    }
}

/// How segments are compared.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum Mode {
    /// Reproduced checkpoint hash must equal the trail's (same backend class).
    Exact,
    /// Reproduced weights within `max_distance` (relative L2) of the trail's checkpoint.
    Tolerance { max_distance: f64 },
}

/// Everything needed to replay a worker's steps: what the job fixes plus the worker's place.
#[derive(Debug, Clone)]
pub struct Replay<'a> {
    pub model: ModelConfig,
    pub adamw: AdamWConfig,
    pub dataset: &'a Dataset,
    pub schedule: BatchSchedule,
    pub round: u64,
    pub worker: usize,
    pub device: Device,
}

/// A checker's finding on one segment, with evidence a third party can re-check.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SegmentReport {
    pub segment: usize,
    pub start_step: u64,
    pub end_step: u64,
    pub outcome: VerdictOutcome,
    /// Relative L2 distance between reproduced and claimed weights (tolerance mode; 0 in exact).
    pub distance: f64,
    /// Whether the per-step losses recorded in the trail match the re-execution.
    pub losses_match: bool,
}

fn invalid(reason: InvalidReason, expected: Hash, reproduced: Hash, distance: f64) -> VerdictOutcome {
    VerdictOutcome::Invalid(InvalidEvidence { reason, expected, reproduced, distance: distance as f32 })
}

/// Checks segment `index` of `trail` (from checkpoint `index` to `index + 1`).
pub fn check_segment(replay: &Replay<'_>, trail: &Trail, index: usize, source: &dyn BlobSource, mode: Mode) -> SegmentReport {
    let report = |outcome, start_step, end_step, distance, losses_match| SegmentReport {
        segment: index,
        start_step,
        end_step,
        outcome,
        distance,
        losses_match,
    };
    let (Some(start), Some(end)) = (trail.checkpoints.get(index), trail.checkpoints.get(index + 1)) else {
        return report(invalid(InvalidReason::MalformedBlob, Hash::ZERO, Hash::ZERO, 0.0), 0, 0, 0.0, false);
    };
    let steps = end.step.saturating_sub(start.step);
    if steps == 0 || steps > trail.checkpoint_interval {
        return report(invalid(InvalidReason::MalformedBlob, end.hash, Hash::ZERO, 0.0), start.step, end.step, 0.0, false);
    }
    let bytes = match source.fetch(&start.hash) {
        Ok(bytes) => bytes,
        Err(_) => return report(VerdictOutcome::Unavailable, start.step, end.step, 0.0, false),
    };
    let actual = checkpoint_hash(&bytes);
    if actual != start.hash {
        return report(invalid(InvalidReason::StartMismatch, start.hash, actual, 0.0), start.step, end.step, 0.0, false);
    }
    let malformed = || invalid(InvalidReason::MalformedBlob, start.hash, actual, 0.0);
    let Ok(data) = CheckpointData::parse(&bytes) else {
        return report(malformed(), start.step, end.step, 0.0, false);
    };
    if data.step != start.step {
        return report(malformed(), start.step, end.step, 0.0, false);
    }
    let Ok(mut model) = Gpt::new(&replay.model, 0, replay.device) else {
        return report(malformed(), start.step, end.step, 0.0, false);
    };
    let mut optimizer = AdamW::new(replay.adamw.clone(), model.parameters());
    if data.restore(&mut model, &mut optimizer).is_err() {
        return report(malformed(), start.step, end.step, 0.0, false);
    }
    let inner = InnerLoop {
        dataset: replay.dataset,
        schedule: &replay.schedule,
        round: replay.round,
        worker: replay.worker,
        checkpoint_interval: steps,
        trail_dir: None,
    };
    let outcome = match inner.train_steps(&mut model, &mut optimizer, steps, |_, _| {}) {
        Ok(outcome) => outcome,
        // Diverging from a claimed state is as good as not reproducing it.
        Err(_) => return report(invalid(InvalidReason::CheckpointMismatch, end.hash, Hash::ZERO, 0.0), start.step, end.step, 0.0, false),
    };
    let reproduced = outcome.trail.checkpoints.last().map(|e| e.hash).unwrap_or(Hash::ZERO);
    // The trail is the miner's: its steps need not ascend, so the offset may not exist.
    let claimed_losses = start.step.checked_sub(trail.checkpoints[0].step).and_then(|offset| {
        trail.losses.get(usize::try_from(offset).ok()?..usize::try_from(offset.checked_add(steps)?).ok()?)
    });
    let losses_match = claimed_losses.is_some_and(|l| l == outcome.trail.losses.as_slice());
    match mode {
        Mode::Exact => {
            let verdict = if reproduced == end.hash {
                VerdictOutcome::Valid
            } else {
                invalid(InvalidReason::CheckpointMismatch, end.hash, reproduced, 0.0)
            };
            report(verdict, start.step, end.step, 0.0, losses_match)
        }
        Mode::Tolerance { max_distance } => {
            let claimed = match source.fetch(&end.hash) {
                Ok(bytes) if checkpoint_hash(&bytes) == end.hash => bytes,
                Ok(bytes) => {
                    let got = checkpoint_hash(&bytes);
                    return report(invalid(InvalidReason::StartMismatch, end.hash, got, 0.0), start.step, end.step, 0.0, losses_match);
                }
                Err(_) => return report(VerdictOutcome::Unavailable, start.step, end.step, 0.0, losses_match),
            };
            let Ok(claimed) = CheckpointData::parse(&claimed) else {
                return report(invalid(InvalidReason::MalformedBlob, end.hash, Hash::ZERO, 0.0), start.step, end.step, 0.0, losses_match);
            };
            let distance = relative_distance(&model.flat_weights(), &claimed.weights);
            let verdict = if distance <= max_distance {
                VerdictOutcome::Valid
            } else {
                invalid(InvalidReason::DistanceExceeded, end.hash, reproduced, distance)
            };
            report(verdict, start.step, end.step, distance, losses_match)
        }
    }
}

/// `‖a − b‖₂ / ‖b‖₂` (f64 accumulation); infinite when the lengths differ.
pub fn relative_distance(a: &[f32], b: &[f32]) -> f64 {
    if a.len() != b.len() {
        return f64::INFINITY;
    }
    let (mut diff, mut norm) = (0.0f64, 0.0f64);
    for (x, y) in a.iter().zip(b) {
        diff += f64::from(x - y).powi(2);
        norm += f64::from(*y).powi(2);
    }
    if norm == 0.0 {
        return diff.sqrt();
    }
    (diff / norm).sqrt()
}

/// Why a submitted Δ is not the encoding of θ_r − θ_final.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeltaError {
    #[error("delta bytes hash to {actual}, the commitment says {expected}")]
    HashMismatch { expected: Hash, actual: Hash },
    #[error("delta is not the {encoding:?} encoding of the global model minus the final checkpoint")]
    NotTheEncoding { encoding: DeltaEncoding },
    #[error("model sizes differ: global {global}, final {final_weights}, residual {residual}")]
    SizeMismatch { global: usize, final_weights: usize, residual: usize },
}

/// The last link of every trail: `delta` must hash to `delta_hash` and be exactly the job's
/// encoding of `global − final_weights` (+ the miner's error-feedback `residual` for int8,
/// which the miner publishes beside Δ; see `docs/protocol.md`).
pub fn check_delta(
    encoding: DeltaEncoding,
    global: &[f32],
    final_weights: &[f32],
    residual: Option<&[f32]>,
    delta: &[u8],
    delta_hash: &Hash,
) -> Result<(), DeltaError> {
    let actual = encoding::delta_hash(delta);
    if &actual != delta_hash {
        return Err(DeltaError::HashMismatch { expected: *delta_hash, actual });
    }
    let residual_len = residual.map_or(global.len(), <[f32]>::len);
    if global.len() != final_weights.len() || residual_len != global.len() {
        return Err(DeltaError::SizeMismatch { global: global.len(), final_weights: final_weights.len(), residual: residual_len });
    }
    let mut expected: Vec<f32> = global.iter().zip(final_weights).map(|(g, f)| g - f).collect();
    if let Some(residual) = residual {
        expected.iter_mut().zip(residual).for_each(|(e, r)| *e += r);
    }
    if encoding::encode(encoding, &expected) != delta {
        return Err(DeltaError::NotTheEncoding { encoding });
    }
    Ok(())
}

/// Whether an int8 error-feedback `residual` is one honest quantisation could have left: every
/// value at most two of this Δ's quantisation steps (its chunk's scale) in magnitude. An honest
/// residual is at most half a step of the previous round's Δ, whose steps are of the same size;
/// the bound caps what a miner can slip into Δ through a made-up residual at two steps per value
/// (`docs/protocol.md` §4.3).
pub fn residual_within_bound(delta: &[u8], residual: &[f32]) -> bool {
    let Some((chunk, scales)) = encoding::int8_scales(delta) else { return false };
    residual.len() <= scales.len() * chunk
        && residual.iter().enumerate().all(|(i, r)| r.is_finite() && r.abs() <= 2.0 * scales[i / chunk])
}

#[cfg(test)]
mod residual_tests {
    use super::*;

    #[test]
    fn honest_residuals_pass_and_made_up_ones_do_not() {
        let values: Vec<f32> = (0..10_000).map(|i| ((i * 37 % 101) as f32 - 50.0) * 1e-3).collect();
        let mut feedback = encoding::ErrorFeedback::default();
        let first = feedback.encode(DeltaEncoding::Int8, &values);
        let carried = feedback.residual().to_vec();
        let second = feedback.encode(DeltaEncoding::Int8, &values);
        assert!(residual_within_bound(&second, &carried), "an honest residual is within the bound");
        let mut poisoned = carried.clone();
        poisoned[17] += 1.0;
        assert!(!residual_within_bound(&second, &poisoned));
        assert!(!residual_within_bound(&encoding::encode(DeltaEncoding::F32, &values), &carried), "int8 only");
        assert!(!residual_within_bound(&first[..5], &carried), "malformed Δ");
    }
}
