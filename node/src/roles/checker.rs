//! The validator's verification duty: for every sampled segment it is assigned, fetch the
//! miner's trail and checkpoints from the blob exchange, check the trail's first link (it starts
//! from the canonical state of θ_r), re-execute the segment, check the last link (Δ encodes
//! θ_r − θ_final), and send the verdict before the window closes. In a `groth16` job the
//! segment is not re-executed: its proof is checked against the commitments to the trail's
//! checkpoints and the scheduled batches (`crate::zkjob`).

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use trellis_contracts::rounds::worker_index;
use trellis_contracts::state::{Assignment, Commit, Job, Phase, RoundState};
use trellis_proto::{Hash, InvalidEvidence, InvalidReason, TxKind, Verdict, VerdictOutcome, VerificationMode};
use trellis_trainer::checkpoint::CheckpointData;
use trellis_trainer::worker::Trail;
use trellis_verifier::segment::{check_delta, check_segment, residual_within_bound, BlobError, BlobSource, Mode, Replay};

use super::RoleContext;
use crate::blobs::{BlobKey, BlobKind, BlobStore};
use crate::exchange::FetchError;
use crate::jobdata;
use crate::zkjob::{self, SegmentEvidence, ZkJob};

/// How long a checker waits for a miner's blobs before calling them unavailable.
const BLOB_PATIENCE: Duration = Duration::from_secs(20);

/// Called after every block by the validator role.
pub fn tick(context: &Arc<RoleContext>, height: u64) {
    let me = context.key.address();
    for job in context.active_jobs() {
        let Some(round) = context.round(job.id, job.current_round) else { continue };
        if round.phase != Phase::Verifying || height > round.verify_end {
            continue;
        }
        for assignment in round.assignments.iter().filter(|a| a.checkers.contains(&me)) {
            let sent = round.verdicts.iter().any(|v| v.checker == me && v.miner == assignment.miner && v.segment == assignment.segment);
            let label = format!("tx:verdict:{}:{}:{}:{}", job.id, round.round, assignment.miner, assignment.segment);
            if sent || !context.start_once(label.clone()) {
                continue;
            }
            let (context, job, round, assignment) = (context.clone(), job.clone(), round.clone(), assignment.clone());
            tokio::spawn(async move {
                let began = std::time::Instant::now();
                let outcome = check(&context, &job, &round, &assignment).await;
                let outcome = match outcome {
                    Ok(outcome) => outcome,
                    Err(error) => {
                        // Our own failure (not the miner's): try again after the next block.
                        tracing::warn!(target: "node::checker", job = %job.id, error = format!("{error:#}"), "cannot check a segment yet");
                        context.forget(&label);
                        return;
                    }
                };
                tracing::info!(
                    target: "node::checker",
                    job = %job.id, round = round.round, miner = %assignment.miner, segment = assignment.segment,
                    outcome = ?outcome, check_s = format!("{:.2}", began.elapsed().as_secs_f64()), "verdict"
                );
                let still_open = context.round(job.id, round.round).is_some_and(|r| r.phase == Phase::Verifying && context.height() <= r.verify_end);
                if !still_open {
                    tracing::warn!(target: "node::checker", job = %job.id, round = round.round, "verification window closed before our verdict");
                    return;
                }
                let verdict = Verdict { job: job.id, round: round.round, miner: assignment.miner, segment: assignment.segment, outcome };
                if let Err(error) = context.submit(TxKind::Verdict(verdict)) {
                    tracing::warn!(target: "node::checker", %error, "cannot send the verdict");
                }
            });
        }
    }
}

fn invalid(reason: InvalidReason, expected: Hash, reproduced: Hash) -> VerdictOutcome {
    VerdictOutcome::Invalid(InvalidEvidence { reason, expected, reproduced, distance: 0.0 })
}

/// Checkpoints the blob exchange already fetched into the local store.
struct StoreSource<'a>(&'a BlobStore);

impl BlobSource for StoreSource<'_> {
    fn fetch(&self, hash: &Hash) -> Result<Vec<u8>, BlobError> {
        self.0.get(&BlobKey::new(BlobKind::Checkpoint, *hash)).map_err(|_| BlobError::NotFound(*hash))
    }
}

/// The verdict on one assignment. `Err` means this node could not do its part (its own data
/// missing), not that the miner failed.
async fn check(context: &Arc<RoleContext>, job: &Job, round: &RoundState, assignment: &Assignment) -> anyhow::Result<VerdictOutcome> {
    let Some(commit) = round.commits.iter().find(|c| c.miner == assignment.miner).cloned() else {
        anyhow::bail!("no commitment from {}", assignment.miner);
    };
    let worker = worker_index(round, &commit.miner).context("the miner is not a worker of the round")?;
    let deadline = tokio::time::Instant::now() + BLOB_PATIENCE;
    let net = &context.net;
    let trail: Trail = match served(net.fetch_until(BlobKey::new(BlobKind::Trail, commit.work.trail_root), deadline).await)? {
        Some(bytes) => match serde_json::from_slice(&bytes) {
            Ok(trail) => trail,
            Err(_) => return Ok(invalid(InvalidReason::MalformedBlob, commit.work.trail_root, Hash::ZERO)),
        },
        None => return Ok(VerdictOutcome::Unavailable),
    };
    if let Some(outcome) = trail_shape(job, round, &commit, &trail) {
        return Ok(outcome);
    }
    let zk = ZkJob::of(&job.spec)?;
    let dataset = context.dataset(job.spec.dataset_root).await.context("the job's dataset")?;
    let global = jobdata::global_weights(net, job).await.context("the global model")?;
    let start = match &zk {
        Some(zk) => zk.start_checkpoint_hash(&global)?,
        None => jobdata::start_checkpoint_hash(&job.spec, round.round, &global)?,
    };
    if trail.checkpoints[0].hash != start {
        return Ok(invalid(InvalidReason::StartMismatch, start, trail.checkpoints[0].hash));
    }
    // Everything the check and the delta check read, fetched before the blocking part.
    let segment = assignment.segment as usize;
    let mut needed = vec![trail.checkpoints[segment].hash, commit.work.final_checkpoint];
    if zk.is_some() || matches!(job.spec.verification.mode, VerificationMode::Tolerance { .. }) {
        needed.push(trail.checkpoints[segment + 1].hash);
    }
    for hash in needed {
        if served(net.fetch_until(BlobKey::new(BlobKind::Checkpoint, hash), deadline).await)?.is_none() {
            return Ok(VerdictOutcome::Unavailable);
        }
    }
    // groth16: the segment's proof and the job's verifying key.
    let zk_check = match &zk {
        Some(zk) => {
            let Some(proof_hash) = trail.proofs.get(segment).copied() else {
                return Ok(invalid(InvalidReason::MalformedBlob, commit.work.trail_root, Hash::ZERO));
            };
            let Some(proof) = served(net.fetch_until(BlobKey::new(BlobKind::Data, proof_hash), deadline).await)? else {
                return Ok(VerdictOutcome::Unavailable);
            };
            let verifier = context.verifier(zk.verifying_key).await?;
            net.store().tag_round(job.id, round.round, &[BlobKey::new(BlobKind::Data, proof_hash)])?;
            Some((zk.clone(), verifier, proof))
        }
        None => None,
    };
    let Some(delta) = served(net.fetch_until(BlobKey::new(BlobKind::Data, commit.work.delta_hash), deadline).await)? else {
        return Ok(VerdictOutcome::Unavailable);
    };
    // int8: the residual the miner says it carried in must be served, and small enough to be one
    // that honest quantisation left (docs/protocol.md §4.3).
    let residual = if commit.work.residual_hash == Hash::ZERO {
        None
    } else {
        let Some(bytes) = served(net.fetch_until(BlobKey::new(BlobKind::Data, commit.work.residual_hash), deadline).await)? else {
            return Ok(VerdictOutcome::Unavailable);
        };
        let values = jobdata::weights_from_bytes(&bytes).unwrap_or_default();
        if values.len() != global.len() || !residual_within_bound(&delta, &values) {
            return Ok(invalid(InvalidReason::DeltaMismatch, commit.work.residual_hash, Hash::ZERO));
        }
        Some(values)
    };
    // What was fetched for this round goes when the round is settled.
    let mut fetched = vec![
        BlobKey::new(BlobKind::Trail, commit.work.trail_root),
        BlobKey::new(BlobKind::Data, commit.work.delta_hash),
        BlobKey::new(BlobKind::Data, commit.work.residual_hash),
        BlobKey::new(BlobKind::Checkpoint, commit.work.final_checkpoint),
    ];
    fetched.extend(trail.checkpoints.iter().map(|e| BlobKey::new(BlobKind::Checkpoint, e.hash)));
    net.store().tag_round(job.id, round.round, &fetched)?;
    let (context, job, round_number) = (context.clone(), job.clone(), round.round);
    tokio::task::spawn_blocking(move || -> anyhow::Result<VerdictOutcome> {
        let spec = &job.spec;
        let store = context.net.store();
        let checkpoint = |hash: Hash| store.get(&BlobKey::new(BlobKind::Checkpoint, hash));
        let outcome = match &zk_check {
            Some((zk, verifier, proof)) => {
                let (start, end) = (checkpoint(trail.checkpoints[segment].hash)?, checkpoint(trail.checkpoints[segment + 1].hash)?);
                let evidence = SegmentEvidence { start_checkpoint: &start, end_checkpoint: &end, proof };
                zkjob::check_segment(spec, zk, verifier, &dataset, &trail, segment, &evidence)?
            }
            None => {
                let mode = match spec.verification.mode {
                    VerificationMode::Tolerance { max_distance } => Mode::Tolerance { max_distance: f64::from(max_distance) },
                    _ => Mode::Exact,
                };
                let replay = Replay {
                    model: spec.model.clone(),
                    adamw: jobdata::adamw_config(spec),
                    dataset: dataset.as_ref(),
                    schedule: jobdata::schedule(spec),
                    round: u64::from(round_number),
                    worker,
                    device: context.device,
                };
                check_segment(&replay, &trail, segment, &StoreSource(store), mode).outcome
            }
        };
        if outcome != VerdictOutcome::Valid {
            return Ok(outcome);
        }
        let final_bytes = checkpoint(commit.work.final_checkpoint)?;
        let final_weights = match &zk_check {
            Some((zk, _, _)) => trellis_zk::io::decode_weights(&zk.model, &final_bytes).ok().map(|w| zkjob::from_fixed(&w.flatten())),
            None => CheckpointData::parse(&final_bytes).ok().map(|state| state.weights),
        };
        let Some(final_weights) = final_weights else {
            return Ok(invalid(InvalidReason::MalformedBlob, commit.work.final_checkpoint, Hash::ZERO));
        };
        let zeros;
        let residual = match (&residual, spec.diloco.encoding) {
            (Some(values), _) => Some(values.as_slice()),
            (None, trellis_proto::DeltaEncoding::Int8) => {
                zeros = vec![0.0f32; global.len()];
                Some(zeros.as_slice())
            }
            (None, _) => None,
        };
        match check_delta(spec.diloco.encoding, &global, &final_weights, residual, &delta, &commit.work.delta_hash) {
            Ok(()) => Ok(VerdictOutcome::Valid),
            Err(_) => Ok(invalid(InvalidReason::DeltaMismatch, commit.work.delta_hash, trellis_trainer::encoding::delta_hash(&delta))),
        }
    })
    .await
    .context("the checking thread stopped")?
}

/// What a fetch says about the miner: `Some` bytes, `None` when no peer served them (the
/// miner's fault), `Err` when this node failed (its disk, its exchange), which must never count
/// against the miner.
fn served(fetched: Result<Vec<u8>, FetchError>) -> anyhow::Result<Option<Vec<u8>>> {
    match fetched {
        Ok(bytes) => Ok(Some(bytes)),
        Err(FetchError::Unavailable(_) | FetchError::TooLarge { .. }) => Ok(None),
        Err(error) => Err(error.into()),
    }
}

/// A trail that cannot be the one committed: wrong length, steps or final checkpoint.
fn trail_shape(job: &Job, round: &RoundState, commit: &Commit, trail: &Trail) -> Option<VerdictOutcome> {
    let last = trail.checkpoints.last().map(|e| e.hash).unwrap_or(Hash::ZERO);
    let first_step = trail.checkpoints.first().map(|e| e.step);
    let steps_ok = first_step == Some(jobdata::round_start_step(&job.spec, round.round))
        && trail.checkpoint_interval == u64::from(job.spec.verification.checkpoint_interval)
        && trail.losses.len() == job.spec.diloco.inner_steps as usize;
    if trail.checkpoints.len() as u32 != commit.work.checkpoints || last != commit.work.final_checkpoint || !steps_ok {
        return Some(invalid(InvalidReason::MalformedBlob, commit.work.final_checkpoint, last));
    }
    None
}
