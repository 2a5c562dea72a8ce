//! One worker's inner loop: H AdamW steps from a starting state on the worker's scheduled
//! batches, writing a checkpoint every `c` steps and the loss of every step (the trail).
//!
//! The batch of each step is `schedule.batch(round, worker, step)` where `step` is the
//! optimizer's step counter, which the checkpoint carries. So resuming from any checkpoint of a
//! trail needs nothing but that checkpoint, and reproduces the rest of the trail bit for bit.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};
use thiserror::Error;
use trellis_proto::merkle::{leaf_hash, MerkleTree};
use trellis_proto::Hash;

use crate::checkpoint::{self, checkpoint_hash, CheckpointError};
use crate::data::{BatchSchedule, DataError, Dataset};
use crate::model::Gpt;
use crate::optim::AdamW;

#[derive(Debug, Error)]
pub enum WorkerError {
    #[error(transparent)]
    Data(#[from] DataError),
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error(transparent)]
    Model(#[from] crate::model::ModelError),
    #[error("writing the trail to {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("training diverged at step {step}: loss is {loss}")]
    Diverged { step: u64, loss: f32 },
    #[error("cannot train {steps} steps with checkpoints every {interval}: {reason}")]
    BadSegments { steps: u64, interval: u64, reason: &'static str },
    #[error("worker {worker}'s Δ is not finite at value {index} (its training diverged, or an attack made it so): it has no encoding")]
    NonFiniteDelta { worker: usize, index: usize },
}

/// One trail entry: the hash of the checkpoint after `step` optimizer steps (the protocol's type).
pub use trellis_proto::TrailEntry;

/// A worker's Proof-of-Learning trail for one round.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Trail {
    pub round: u64,
    pub worker: usize,
    pub checkpoint_interval: u64,
    /// Checkpoints at the round's start, every `checkpoint_interval` steps, and at its end.
    pub checkpoints: Vec<TrailEntry>,
    /// The training loss of every step, in order (`losses[i]` is the step after `checkpoints[0].step + i`).
    pub losses: Vec<f32>,
    /// Blob hashes of one Groth16 proof per segment (`groth16` jobs only; empty otherwise, and
    /// then absent from the JSON, so other trails read and hash as before).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub proofs: Vec<Hash>,
}

impl Trail {
    /// The Merkle root over the checkpoint hashes (what a miner signs and commits).
    pub fn root(&self) -> Hash {
        MerkleTree::from_leaf_hashes(self.checkpoints.iter().map(|e| leaf_hash(&e.hash.0)).collect()).root()
    }

    pub fn hashes(&self) -> Vec<Hash> {
        self.checkpoints.iter().map(|e| e.hash).collect()
    }
}

/// Where a checkpoint file of a trail lives: `DIR/ckpt-STEP.bin`.
pub fn checkpoint_path(dir: &Path, step: u64) -> PathBuf {
    dir.join(format!("ckpt-{step:08}.bin"))
}

/// What happened in one call of [`train_steps`].
#[derive(Debug, Clone)]
pub struct StepsOutcome {
    pub trail: Trail,
    pub tokens: u64,
    /// Time spent computing (forward, backward, optimizer).
    pub compute: Duration,
    /// Time spent serialising, hashing and writing checkpoints.
    pub checkpointing: Duration,
}

/// The inner-loop settings of one worker.
#[derive(Debug, Clone)]
pub struct InnerLoop<'a> {
    pub dataset: &'a Dataset,
    pub schedule: &'a BatchSchedule,
    pub round: u64,
    pub worker: usize,
    pub checkpoint_interval: u64,
    /// Where to write checkpoint files; `None` hashes them without writing.
    pub trail_dir: Option<&'a Path>,
    /// Take compact checkpoints ([`checkpoint::capture_compact`]) against this base (the round's
    /// start weights and the job's moment bound) instead of full ones.
    pub compact_base: Option<checkpoint::CompactBase<'a>>,
}

impl InnerLoop<'_> {
    /// Trains `steps` steps from the current state of `model` and `optimizer`, checkpointing at
    /// the start, at every multiple of the interval (counted from the start) and at the end.
    /// Every checkpoint first flushes subnormal values of the state to zero
    /// ([`checkpoint::capture`]) — and with `compact_base` rounds it to a compact checkpoint's
    /// ([`checkpoint::capture_compact`]) — so the state training continues from is the one
    /// recorded.
    /// `on_step(step, loss)` is called after every step (for progress bars).
    pub fn train_steps(
        &self,
        model: &mut Gpt,
        optimizer: &mut AdamW,
        steps: u64,
        on_step: impl FnMut(u64, f32),
    ) -> Result<StepsOutcome, WorkerError> {
        self.run(model, optimizer, steps, true, None, on_step)
    }

    /// [`train_steps`](Self::train_steps) for a worker that may stop early: after each step from
    /// the `min_steps`-th on, `stop()` is asked whether to end the round there (a straggler's
    /// commit deadline has come, or every other worker has committed). The trail then ends with
    /// a checkpoint after the last step taken; its steps are `trail.losses.len()`.
    pub fn train_steps_until(
        &self,
        model: &mut Gpt,
        optimizer: &mut AdamW,
        steps: u64,
        min_steps: u64,
        mut stop: impl FnMut() -> bool,
        on_step: impl FnMut(u64, f32),
    ) -> Result<StepsOutcome, WorkerError> {
        self.run(model, optimizer, steps, true, Some((min_steps.max(1), &mut stop)), on_step)
    }

    /// [`train_steps`](Self::train_steps) for a checker re-executing a segment: the state it
    /// starts from is a checkpoint it already holds, so no start checkpoint is taken (the trail
    /// of the outcome begins after the first step).
    pub fn replay_steps(
        &self,
        model: &mut Gpt,
        optimizer: &mut AdamW,
        steps: u64,
    ) -> Result<StepsOutcome, WorkerError> {
        self.run(model, optimizer, steps, false, None, |_, _| {})
    }

    /// [`train_steps`](Self::train_steps) from a state restored from a start checkpoint the
    /// caller already holds (a streaming round continued from the previous one,
    /// `crate::job::continued_start_checkpoint`): that checkpoint is the trail's first, so none
    /// is taken here (re-capturing a restored compact state need not give the same bytes).
    pub fn train_steps_from_held_start(
        &self,
        model: &mut Gpt,
        optimizer: &mut AdamW,
        steps: u64,
        on_step: impl FnMut(u64, f32),
    ) -> Result<StepsOutcome, WorkerError> {
        self.run(model, optimizer, steps, false, None, on_step)
    }

    fn run(
        &self,
        model: &mut Gpt,
        optimizer: &mut AdamW,
        steps: u64,
        checkpoint_start: bool,
        mut stop_early: Option<(u64, &mut dyn FnMut() -> bool)>,
        mut on_step: impl FnMut(u64, f32),
    ) -> Result<StepsOutcome, WorkerError> {
        if steps == 0 {
            return Err(WorkerError::BadSegments { steps, interval: self.checkpoint_interval, reason: "zero steps" });
        }
        if self.checkpoint_interval == 0 {
            return Err(WorkerError::BadSegments { steps, interval: 0, reason: "the interval must be positive" });
        }
        let shards = self.schedule.shards_of(self.dataset, self.round, self.worker)?;
        if let Some(dir) = self.trail_dir {
            std::fs::create_dir_all(dir).map_err(|source| WorkerError::Io { path: dir.to_path_buf(), source })?;
        }
        let start = optimizer.step;
        let mut checkpointing = Duration::ZERO;
        let mut compute = Duration::ZERO;
        let mut checkpoints = Vec::new();
        if checkpoint_start {
            checkpoints.push(self.checkpoint(model, optimizer, &mut checkpointing)?);
        }
        let mut losses = Vec::with_capacity(steps as usize);
        let (b, t) = (self.schedule.batch_size as i64, self.schedule.sequence_length as i64);
        for _ in 0..steps {
            let began = Instant::now();
            let (inputs, targets) = self.schedule.batch(self.dataset, &shards, self.round, self.worker, optimizer.step);
            let loss = train_step(model, optimizer, &inputs, &targets, b, t)?;
            compute += began.elapsed();
            losses.push(loss);
            on_step(optimizer.step, loss);
            let done = optimizer.step - start;
            let stopping = done < steps && stop_early.as_mut().is_some_and(|(least, stop)| done >= *least && stop());
            if done % self.checkpoint_interval == 0 || done == steps || stopping {
                checkpoints.push(self.checkpoint(model, optimizer, &mut checkpointing)?);
            }
            if stopping {
                break;
            }
        }
        let tokens = losses.len() as u64 * (b * t) as u64;
        let trail = Trail {
            round: self.round,
            worker: self.worker,
            checkpoint_interval: self.checkpoint_interval,
            checkpoints,
            losses,
            proofs: Vec::new(),
        };
        Ok(StepsOutcome { trail, tokens, compute, checkpointing })
    }

    fn checkpoint(
        &self,
        model: &mut Gpt,
        optimizer: &mut AdamW,
        spent: &mut Duration,
    ) -> Result<TrailEntry, WorkerError> {
        let began = Instant::now();
        let bytes = match self.compact_base {
            Some(base) => checkpoint::capture_compact(model, optimizer, base),
            None => checkpoint::capture(model, optimizer),
        };
        let hash = checkpoint_hash(&bytes);
        if let Some(dir) = self.trail_dir {
            let path = checkpoint_path(dir, optimizer.step);
            std::fs::write(&path, &bytes).map_err(|source| WorkerError::Io { path, source })?;
        }
        *spent += began.elapsed();
        Ok(TrailEntry { step: optimizer.step, hash })
    }
}

/// One AdamW step on `rows × time` token rows; returns the loss, or an error if it is not finite.
pub fn train_step(
    model: &mut Gpt,
    optimizer: &mut AdamW,
    inputs: &[i64],
    targets: &[i64],
    rows: i64,
    time: i64,
) -> Result<f32, WorkerError> {
    let device = model.device();
    let inputs = Tensor::from_slice(inputs).view([rows, time]).to_device(device);
    let targets = Tensor::from_slice(targets).view([rows, time]).to_device(device);
    model.zero_grad();
    let loss = model.loss(&inputs, &targets);
    loss.backward();
    optimizer.step(model.parameters());
    let loss = loss.double_value(&[]) as f32;
    if !loss.is_finite() {
        return Err(WorkerError::Diverged { step: optimizer.step, loss });
    }
    Ok(loss)
}

/// Restores `model` and `optimizer` from a checkpoint file, checking its hash first.
pub fn resume_from(path: &Path, expected: &Hash, model: &mut Gpt, optimizer: &mut AdamW) -> Result<(), WorkerError> {
    resume_from_with(path, expected, model, optimizer, None)
}

/// [`resume_from`] a full checkpoint, or a compact one read against `base`.
pub fn resume_from_with(
    path: &Path,
    expected: &Hash,
    model: &mut Gpt,
    optimizer: &mut AdamW,
    base: Option<checkpoint::CompactBase<'_>>,
) -> Result<(), WorkerError> {
    let bytes = checkpoint::read_file(path)?;
    let actual = checkpoint_hash(&bytes);
    if &actual != expected {
        return Err(CheckpointError::HashMismatch { path: path.to_path_buf(), expected: *expected, actual }.into());
    }
    checkpoint::CheckpointView::parse(&bytes, base)?.restore(model, optimizer, |_| true)?;
    Ok(())
}

/// Mean loss over fixed token windows (`[N·T]` inputs and targets), evaluated in batches of
/// `batch` rows without tracking gradients.
pub fn evaluate(model: &Gpt, inputs: &[i64], targets: &[i64], sequence_length: usize, batch: usize) -> f64 {
    let rows = inputs.len() / sequence_length;
    let device: Device = model.device();
    let mut total = 0.0;
    tch::no_grad(|| {
        for first in (0..rows).step_by(batch) {
            let n = batch.min(rows - first);
            let range = first * sequence_length..(first + n) * sequence_length;
            let x =
                Tensor::from_slice(&inputs[range.clone()]).view([n as i64, sequence_length as i64]).to_device(device);
            let y = Tensor::from_slice(&targets[range]).view([n as i64, sequence_length as i64]).to_device(device);
            total += model.loss(&x, &y).to_kind(Kind::Double).double_value(&[]) * n as f64;
        }
    });
    total / rows as f64
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn sample() -> Vec<u8> {
        let trail = Trail {
            round: 2,
            worker: 1,
            checkpoint_interval: 4,
            checkpoints: (0..3).map(|i| TrailEntry { step: 40 + 4 * i, hash: Hash([i as u8; 32]) }).collect(),
            losses: vec![3.5, 3.25, 3.0, 2.75, 2.5, 2.25, 2.0, 1.75],
            proofs: Vec::new(),
        };
        serde_json::to_vec(&trail).unwrap()
    }

    /// Parses `bytes` as a trail (which must not panic); a parsed trail has a root, and writing
    /// its checkpoints out and reading them back gives the same root. (Losses need not round-trip:
    /// `1e39` reads as an infinite f32, which JSON writes as `null`; no replay ever matches it.)
    fn parse_is_sound(bytes: &[u8]) -> Result<(), TestCaseError> {
        if let Ok(trail) = serde_json::from_slice::<Trail>(bytes) {
            let checkpoints: Vec<TrailEntry> =
                serde_json::from_slice(&serde_json::to_vec(&trail.checkpoints).unwrap()).unwrap();
            prop_assert_eq!(&checkpoints, &trail.checkpoints);
            prop_assert_eq!(trail.hashes().len(), trail.checkpoints.len());
            let _ = trail.root();
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2048, ..ProptestConfig::default() })]

        // A trail comes from a miner: no bytes may panic the checker that reads it.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            parse_is_sound(&bytes)?;
        }

        #[test]
        fn edited_trails_never_panic(
            edits in proptest::collection::vec((any::<usize>(), prop::sample::select(b"0123456789-+.eE,:[]{}\"x ".to_vec())), 1..4),
            cut in any::<usize>(),
        ) {
            let mut bytes = sample();
            for (at, byte) in edits {
                let at = at % bytes.len();
                bytes[at] = byte;
            }
            parse_is_sound(&bytes)?;
            parse_is_sound(&bytes[..cut % (bytes.len() + 1)])?;
        }
    }
}
