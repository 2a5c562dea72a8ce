//! Segment checks: fetch a trail segment's start checkpoint, confirm its hash, re-execute the
//! segment's steps with the deterministic batch schedule, and judge the end checkpoint and every
//! step's loss by the protocol's rules (`trellis-protocol`); and the last link, that the
//! submitted Δ encodes θ_r − θ_final.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::Serialize;
use tch::Device;
use trellis_proto::{DeltaEncoding, Hash, InvalidReason, JobFaultReason, ModelConfig, TrailEntry, VerdictOutcome};
use trellis_protocol::judge::{check_state, judge_replay, loss_disagreement, Replayed};
use trellis_protocol::trail::{checkpoint_count, checkpoint_offset, segment_count};
use trellis_protocol::{Blame, Comparison, SegmentClaim};
use trellis_trainer::checkpoint::{checkpoint_hash, CheckpointView, CompactBase, TensorState};
use trellis_trainer::data::{BatchSchedule, Dataset};
use trellis_trainer::encoding;
use trellis_trainer::model::Gpt;
use trellis_trainer::optim::{AdamW, AdamWConfig};
use trellis_trainer::worker::{checkpoint_path, InnerLoop, Trail, WorkerError};

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

/// How segments are compared: the protocol's rule (`trellis_protocol::Comparison`).
pub type Mode = Comparison;

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
    /// The job's checkpoints are compact, read against this base (θ_r and the moment bound); a
    /// checkpoint in the other format is malformed.
    pub compact_base: Option<CompactBase<'a>>,
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
    /// Whether the per-step losses recorded in the trail match the re-execution (also part of
    /// the outcome: a mismatch is `Invalid(LossMismatch)`).
    pub losses_match: bool,
}

fn invalid(reason: InvalidReason, expected: Hash, reproduced: Hash) -> VerdictOutcome {
    Blame::miner(reason, expected, reproduced).outcome()
}

/// Checks the segment `claim` describes: fetch its start checkpoint, confirm its hash, its step
/// and that it is a state honest training can reach, re-execute exactly `claim.steps` steps with
/// the batch schedule, and judge the end checkpoint and every step's loss
/// (`trellis_protocol::judge::judge_replay`). The claim's positions come from the chain
/// (`trellis_protocol::trail`), never from the trail alone.
pub fn check_claim(
    replay: &Replay<'_>,
    claim: &SegmentClaim<'_>,
    source: &dyn BlobSource,
    mode: Mode,
) -> SegmentReport {
    check_claim_reproducing(replay, claim, source, mode).0
}

/// [`check_claim`], also returning the weights the replay reached when the segment is `Valid` in
/// exact mode: then they are, bit for bit, the weights of the claimed end checkpoint, and the
/// checker of a trail's last segment checks the Δ link with them instead of downloading the
/// final checkpoint (`docs/scaling.md`, lever 1).
pub fn check_claim_reproducing(
    replay: &Replay<'_>,
    claim: &SegmentClaim<'_>,
    source: &dyn BlobSource,
    mode: Mode,
) -> (SegmentReport, Option<Vec<f32>>) {
    let (report, model) = replay_claim(replay, claim, source, mode);
    let reproduced = match (&report.outcome, mode, model) {
        (VerdictOutcome::Valid, Mode::Exact, Some(model)) => Some(model.flat_weights()),
        _ => None,
    };
    (report, reproduced)
}

/// The report on `claim`, and the model as the replay left it (when the replay ran to its end).
fn replay_claim(
    replay: &Replay<'_>,
    claim: &SegmentClaim<'_>,
    source: &dyn BlobSource,
    mode: Mode,
) -> (SegmentReport, Option<Gpt>) {
    let (start, end) = (claim.start, claim.end);
    let report = |outcome, distance, losses_match| SegmentReport {
        segment: claim.segment as usize,
        start_step: start.step,
        end_step: end.step,
        outcome,
        distance,
        losses_match,
    };
    let Ok(mut model) = Gpt::new(&replay.model, 0, replay.device) else {
        return (report(Blame::Job(JobFaultReason::ModelUnusable).outcome(), 0.0, false), None);
    };
    let mut optimizer = AdamW::new(replay.adamw.clone(), model.parameters());
    // The start state's bytes live only until the model holds them (one tensor decoded at a time).
    let restored = {
        let bytes = match source.fetch(&start.hash) {
            Ok(bytes) => bytes,
            Err(_) => return (report(Blame::Withheld.outcome(), 0.0, false), None),
        };
        restore_start(&bytes, start, replay.compact_base, &mut model, &mut optimizer)
    };
    if let Err(outcome) = restored {
        return (report(outcome, 0.0, false), None);
    }
    let inner = InnerLoop {
        dataset: replay.dataset,
        schedule: &replay.schedule,
        round: replay.round,
        worker: replay.worker,
        checkpoint_interval: claim.steps,
        trail_dir: None,
        compact_base: replay.compact_base,
    };
    let outcome = match inner.replay_steps(&mut model, &mut optimizer, claim.steps) {
        Ok(outcome) => outcome,
        // The schedule cannot serve this slot: the job's dataset does not fit its workers.
        Err(WorkerError::Data(_)) => {
            return (report(Blame::Job(JobFaultReason::SpecUnusable).outcome(), 0.0, false), None)
        }
        // Diverging from a claimed state is as good as not reproducing it.
        Err(_) => return (report(invalid(InvalidReason::CheckpointMismatch, end.hash, Hash::ZERO), 0.0, false), None),
    };
    let reproduced = outcome.trail.checkpoints.last().map(|e| e.hash).unwrap_or(Hash::ZERO);
    let losses_match = loss_disagreement(claim.losses, &outcome.trail.losses, mode).is_none();
    let distance = match mode {
        Mode::Exact => 0.0,
        Mode::Tolerance { .. } => {
            let claimed = match source.fetch(&end.hash) {
                Ok(bytes) if checkpoint_hash(&bytes) == end.hash => bytes,
                Ok(bytes) => {
                    return (
                        report(
                            invalid(InvalidReason::StartMismatch, end.hash, checkpoint_hash(&bytes)),
                            0.0,
                            losses_match,
                        ),
                        None,
                    )
                }
                Err(_) => return (report(Blame::Withheld.outcome(), 0.0, losses_match), None),
            };
            let Ok(claimed) = CheckpointView::parse(&claimed, replay.compact_base) else {
                return (report(invalid(InvalidReason::MalformedBlob, end.hash, Hash::ZERO), 0.0, losses_match), None);
            };
            state_distance(&model, &optimizer, &claimed).judged()
        }
    };
    let replayed = Replayed { end_hash: reproduced, losses: &outcome.trail.losses, distance };
    (report(judge_replay(claim, &replayed, mode), distance, losses_match), Some(model))
}

/// Loads the start checkpoint `bytes` into the model and optimizer, or the verdict: a start that
/// is not the trail's (its hash or its step), does not parse as the job's form (a full checkpoint
/// in a compact job or the reverse), does not fit the model, or holds a state no honest trail
/// holds (`trellis_protocol::judge::check_state`, checked tensor by tensor).
fn restore_start(
    bytes: &[u8],
    start: TrailEntry,
    base: Option<CompactBase<'_>>,
    model: &mut Gpt,
    optimizer: &mut AdamW,
) -> Result<(), VerdictOutcome> {
    let actual = checkpoint_hash(bytes);
    if actual != start.hash {
        return Err(invalid(InvalidReason::StartMismatch, start.hash, actual));
    }
    let Ok(view) = CheckpointView::parse(bytes, base) else {
        return Err(invalid(InvalidReason::MalformedBlob, start.hash, actual));
    };
    if view.step != start.step {
        return Err(invalid(InvalidReason::TrailMismatch, start.hash, actual));
    }
    let canonical = |t: &TensorState| check_state(&t.weights, &t.first_moments, &t.second_moments).is_ok();
    match view.restore(model, optimizer, canonical) {
        Ok(true) => Ok(()),
        Ok(false) => Err(invalid(InvalidReason::NonCanonicalState, start.hash, actual)),
        Err(_) => Err(invalid(InvalidReason::MalformedBlob, start.hash, actual)),
    }
}

/// The claim of segment `index` of an offline trail (written by `trellis train --trail-dir`),
/// whose positions follow from its own first step, interval and loss count; `None` when its
/// checkpoints do not sit at those positions or the segment does not exist.
pub fn offline_claim(trail: &Trail, index: usize) -> Option<SegmentClaim<'_>> {
    let steps = u32::try_from(trail.losses.len()).ok()?;
    let interval = u32::try_from(trail.checkpoint_interval).ok().filter(|c| *c > 0)?;
    let first = trail.checkpoints.first()?.step;
    let positions_hold = trail.checkpoints.len() == checkpoint_count(steps, interval) as usize
        && (0u32..)
            .zip(&trail.checkpoints)
            .all(|(i, e)| Some(e.step) == first.checked_add(checkpoint_offset(i, steps, interval)));
    let index = u32::try_from(index).ok()?;
    if !positions_hold || index >= segment_count(steps, interval) {
        return None;
    }
    let (from, to) = (checkpoint_offset(index, steps, interval), checkpoint_offset(index + 1, steps, interval));
    Some(SegmentClaim {
        segment: index,
        start: trail.checkpoints[index as usize],
        end: trail.checkpoints[index as usize + 1],
        steps: to - from,
        losses: &trail.losses[from as usize..to as usize],
    })
}

/// Checks segment `index` of an offline trail (from checkpoint `index` to `index + 1`); a trail
/// whose checkpoints are not at the protocol's positions is `Invalid(TrailMismatch)`.
pub fn check_segment(
    replay: &Replay<'_>,
    trail: &Trail,
    index: usize,
    source: &dyn BlobSource,
    mode: Mode,
) -> SegmentReport {
    match offline_claim(trail, index) {
        Some(claim) => check_claim(replay, &claim, source, mode),
        None => SegmentReport {
            segment: index,
            start_step: 0,
            end_step: 0,
            outcome: invalid(InvalidReason::TrailMismatch, Hash::ZERO, Hash::ZERO),
            distance: 0.0,
            losses_match: false,
        },
    }
}

/// How far moments may lie from the claimed ones, relative to how far weights may: a moment is
/// an average of the last few gradients, so a re-execution on another backend class moves it
/// more, relatively, than the weights, which change by small steps around large values
/// (`docs/benchmarks.md`, "Tolerance mode": an emulated cross-class divergence).
pub const MOMENT_SLACK: f64 = 100.0;

/// Relative L2 distances between a re-executed state and the claimed one.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StateDistance {
    /// Over the flat weights.
    pub weights: f64,
    /// The larger of the first moments' and the second moments' (each over all tensors).
    pub moments: f64,
}

impl StateDistance {
    /// The distance tolerance mode judges: the weights', or the moments' over [`MOMENT_SLACK`]
    /// when larger. Moments count because a miner carries them from one segment to the next:
    /// forged ones (inflated, to make honest-looking steps large) would otherwise pass every check.
    pub fn judged(&self) -> f64 {
        self.weights.max(self.moments / MOMENT_SLACK)
    }
}

/// The distance of the state `model` and `optimizer` reached from `claimed`, tensor by tensor (no
/// second copy of the whole state); infinite when their shapes differ.
pub fn state_distance(model: &Gpt, optimizer: &AdamW, claimed: &CheckpointView<'_>) -> StateDistance {
    let parameters = model.parameters();
    let shapes_differ = claimed.tensor_count() != parameters.len()
        || optimizer.first_moments.len() != parameters.len()
        || optimizer.second_moments.len() != parameters.len();
    if shapes_differ {
        return StateDistance { weights: f64::INFINITY, moments: f64::INFINITY };
    }
    let mut sums = [Distance::default(); 3];
    for (index, parameter) in parameters.iter().enumerate() {
        let state = claimed.tensor(index);
        let reached = [&parameter.tensor, &optimizer.first_moments[index], &optimizer.second_moments[index]];
        let wanted = [&state.weights, &state.first_moments, &state.second_moments];
        for ((sum, tensor), claimed) in sums.iter_mut().zip(reached).zip(wanted) {
            sum.add(&trellis_trainer::model::tensor_values(tensor), claimed);
        }
    }
    let [weights, first, second] = sums.map(|sum| sum.relative());
    StateDistance { weights, moments: first.max(second) }
}

/// Running sums of `‖a − b‖₂²` and `‖b‖₂²`.
#[derive(Clone, Copy, Default)]
struct Distance {
    difference: f64,
    norm: f64,
    lengths_differ: bool,
}

impl Distance {
    fn add(&mut self, a: &[f32], b: &[f32]) {
        self.lengths_differ |= a.len() != b.len();
        for (x, y) in a.iter().zip(b) {
            self.difference += f64::from(x - y).powi(2);
            self.norm += f64::from(*y).powi(2);
        }
    }

    fn relative(&self) -> f64 {
        match (self.lengths_differ, self.norm == 0.0) {
            (true, _) => f64::INFINITY,
            (false, true) => self.difference.sqrt(),
            (false, false) => (self.difference / self.norm).sqrt(),
        }
    }
}

/// `‖a − b‖₂ / ‖b‖₂` (f64 accumulation); infinite when the lengths differ.
pub fn relative_distance(a: &[f32], b: &[f32]) -> f64 {
    let mut distance = Distance::default();
    distance.add(a, b);
    distance.relative()
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
    #[error("the residual the Δ leaves hashes to {actual}, the reveal says {expected}")]
    NextResidualMismatch { expected: Hash, actual: Hash },
    #[error("the global model minus the final checkpoint has no {encoding:?} encoding (values beyond its range)")]
    NoEncoding { encoding: DeltaEncoding },
    #[error("delta is not an f32 Δ of {parameters} values")]
    NotF32 { parameters: usize },
    #[error("delta is not the negated drift of the final checkpoint {final_checkpoint}")]
    NotTheFinalDrift { final_checkpoint: Hash },
}

/// The last link of a trail whose Δ is its final checkpoint's drift
/// (`trellis_protocol::trail::delta_is_drift`): `delta` must hash to `delta_hash`, be an f32 Δ of
/// `parameters` values, and, read as the negated drift of a compact checkpoint whose other part
/// hashes to `final_moments` (named in the trail), give that checkpoint the hash
/// `final_checkpoint`. Nothing of the final checkpoint is downloaded: the hash binds the Δ to it
/// as tightly as reading its weights would.
pub fn check_delta_drift(
    delta: &[u8],
    delta_hash: &Hash,
    parameters: usize,
    final_moments: &Hash,
    final_checkpoint: &Hash,
) -> Result<(), DeltaError> {
    let actual = encoding::delta_hash(delta);
    if &actual != delta_hash {
        return Err(DeltaError::HashMismatch { expected: *delta_hash, actual });
    }
    let values = match encoding::decode(delta) {
        Ok((DeltaEncoding::F32, values)) if values.len() == parameters => values,
        _ => return Err(DeltaError::NotF32 { parameters }),
    };
    let parts = trellis_trainer::checkpoint::drift_part_of_delta(&values)
        .map(|drift| trellis_trainer::checkpoint::CompactParts { drift, rest: *final_moments });
    match parts {
        Some(parts) if &parts.hash() == final_checkpoint => Ok(()),
        _ => Err(DeltaError::NotTheFinalDrift { final_checkpoint: *final_checkpoint }),
    }
}

/// The last link of every trail: `delta` must hash to `delta_hash` and be exactly the job's
/// encoding of `global − final_weights` (+ the miner's error-feedback `residual` for int8, q4, q2 and top-k,
/// which the miner publishes beside Δ; see `docs/protocol.md`).
pub fn check_delta(
    encoding: DeltaEncoding,
    global: &[f32],
    final_weights: &[f32],
    residual: Option<&[f32]>,
    delta: &[u8],
    delta_hash: &Hash,
    next_residual: &Hash,
) -> Result<(), DeltaError> {
    let actual = encoding::delta_hash(delta);
    if &actual != delta_hash {
        return Err(DeltaError::HashMismatch { expected: *delta_hash, actual });
    }
    let residual_len = residual.map_or(global.len(), <[f32]>::len);
    if global.len() != final_weights.len() || residual_len != global.len() {
        return Err(DeltaError::SizeMismatch {
            global: global.len(),
            final_weights: final_weights.len(),
            residual: residual_len,
        });
    }
    let feedback = encoding.has_error_feedback();
    let mut expected: Vec<f32> = global.iter().zip(final_weights).map(|(g, f)| g - f).collect();
    // With error feedback the miner adds what it carried, zeros when nothing (as its
    // `ErrorFeedback` does: −0.0 + 0.0 is +0.0, which top-k's f32 values would tell apart).
    match residual {
        Some(residual) => expected.iter_mut().zip(residual).for_each(|(e, r)| *e += r),
        None if feedback => expected.iter_mut().for_each(|e| *e += 0.0),
        None => {}
    }
    match encoding::encode_finite(encoding, &expected) {
        Ok(honest) if honest == delta => {}
        Ok(_) => return Err(DeltaError::NotTheEncoding { encoding }),
        // Values beyond the encoding's range: no Δ an aggregator can decode is honest here.
        Err(_) => return Err(DeltaError::NoEncoding { encoding }),
    }
    // The residual this Δ leaves, which the miner may carry into its next accepted round, is
    // named in its reveal: checked exactly here, so no later round carries one it did not earn.
    let left = if feedback {
        let left = encoding::residual_left(&expected, delta).map_err(|_| DeltaError::NotTheEncoding { encoding })?;
        encoding::residual_hash(&left)
    } else {
        Hash::ZERO
    };
    if &left != next_residual {
        return Err(DeltaError::NextResidualMismatch { expected: *next_residual, actual: left });
    }
    Ok(())
}
