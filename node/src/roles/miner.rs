//! The miner: joins the jobs its stake allows, trains each round it is a worker of (H AdamW
//! steps from the canonical start state, on the batches the schedule gives its slot), stores its
//! trail checkpoints, trail and Δ as blobs (served to checkers by the blob exchange), and
//! commits before the deadline.
//!
//! A miner restarted mid-round finds the round open and its work not committed, and trains it
//! again: training is deterministic, so it reproduces the same trail. If the deadline passes
//! first, it skips the round (and is not paid for it). Nothing half-done is ever committed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use anyhow::Context as _;
use trellis_contracts::rounds::{expected_checkpoints, worker_index};
use trellis_contracts::state::{keys, read, Job, Phase, RoundState, Stake};
use trellis_proto::{DeltaEncoding, Role, TxKind, WorkCommitment};
use trellis_trainer::encoding::{self, ErrorFeedback};
use trellis_trainer::outer::pseudo_gradient;
use trellis_trainer::worker::{checkpoint_path, InnerLoop};

use super::RoleContext;
use crate::blobs::{BlobKey, BlobKind};
use crate::jobdata;

/// Commitments computed, by (job, round), so a resend never retrains.
type Finished = Arc<Mutex<HashMap<(u64, u32), WorkCommitment>>>;

/// Runs the miner until the node stops.
pub async fn run(context: Arc<RoleContext>) {
    let finished: Finished = Arc::default();
    super::drive(context, move |context, height| tick(context, height, &finished)).await;
}

fn required_stake(context: &RoleContext, job: &Job) -> u64 {
    job.spec.min_miner_stake.0.max(context.shared.ledger.params().min_miner_stake.0)
}

fn tick(context: &Arc<RoleContext>, height: u64, finished: &Finished) {
    let me = context.key.address();
    let bonded = {
        let view = context.shared.ledger.store().pending_state();
        read::<Stake>(&view, &keys::stake(Role::Miner, &me)).ok().flatten().map_or(0, |s| s.bonded)
    };
    for job in context.active_jobs() {
        if job.cancel_requested {
            continue;
        }
        let entry = job.miners.iter().find(|m| m.address == me);
        let Some(entry) = entry else {
            if bonded >= required_stake(context, &job) && context.start_once(format!("tx:join:{}", job.id)) {
                if let Err(error) = context.submit(TxKind::JoinJob { job: job.id }) {
                    tracing::warn!(target: "node::miner", job = %job.id, %error, "cannot join");
                }
            }
            continue;
        };
        if entry.ejected {
            continue;
        }
        let Some(round) = context.round(job.id, job.current_round) else { continue };
        if round.phase != Phase::Open || height > round.commit_deadline || round.commits.iter().any(|c| c.miner == me) {
            continue;
        }
        let Some(worker) = worker_index(&round, &me) else { continue };
        let key = (job.id.0, round.round);
        let done = finished.lock().unwrap_or_else(|p| p.into_inner()).get(&key).cloned();
        match done {
            Some(work) => {
                if context.start_once(format!("tx:commit:{}:{}", job.id, round.round)) {
                    if let Err(error) = context.submit(TxKind::CommitWork(work)) {
                        tracing::warn!(target: "node::miner", job = %job.id, round = round.round, %error, "cannot commit");
                    }
                }
            }
            None => {
                if context.start_once(format!("train:{}:{}", job.id, round.round)) {
                    let (context, finished) = (context.clone(), finished.clone());
                    tokio::spawn(async move {
                        let label = format!("train:{}:{}", job.id, round.round);
                        match train_round(&context, &job, &round, worker).await {
                            Ok(work) => {
                                finished.lock().unwrap_or_else(|p| p.into_inner()).insert(key, work.clone());
                                let open = context.round(job.id, round.round).is_some_and(|r| r.phase == Phase::Open)
                                    && context.height() <= round.commit_deadline;
                                if !open {
                                    tracing::warn!(target: "node::miner", job = %job.id, round = round.round, "finished after the commit deadline; skipping the round");
                                } else if context.start_once(format!("tx:commit:{}:{}", job.id, round.round)) {
                                    if let Err(error) = context.submit(TxKind::CommitWork(work)) {
                                        tracing::warn!(target: "node::miner", job = %job.id, %error, "cannot commit");
                                    }
                                }
                            }
                            Err(error) => {
                                tracing::error!(target: "node::miner", job = %job.id, round = round.round, error = format!("{error:#}"), "training failed");
                                context.forget(&label);
                            }
                        }
                    });
                }
            }
        }
    }
}

/// Where the residual left by this miner's int8 encoding of round `round` is kept.
fn residual_path(work_dir: &std::path::Path, job: u64, round: u32) -> std::path::PathBuf {
    work_dir.join(format!("residual-job{job}-round{round}.f32"))
}

/// The residual to carry into `round`: the one left by this miner's latest earlier round whose
/// work the chain recorded (a round it trained but never committed carries nothing over).
fn carried_residual(context: &RoleContext, job: &Job, round: u32, parameters: usize) -> anyhow::Result<Option<Vec<f32>>> {
    if job.spec.diloco.encoding != DeltaEncoding::Int8 {
        return Ok(None);
    }
    let me = context.key.address();
    for earlier in (0..round).rev() {
        let committed = context.round(job.id, earlier).is_some_and(|r| r.commits.iter().any(|c| c.miner == me));
        if !committed {
            continue;
        }
        let path = residual_path(&context.work_dir, job.id.0, earlier);
        let Ok(bytes) = std::fs::read(&path) else { return Ok(None) };
        let residual = jobdata::weights_from_bytes(&bytes)?;
        return Ok((residual.len() == parameters).then_some(residual));
    }
    Ok(None)
}

/// Trains one round and stores its blobs; returns the commitment.
async fn train_round(context: &Arc<RoleContext>, job: &Job, round: &RoundState, worker: usize) -> anyhow::Result<WorkCommitment> {
    let started = std::time::Instant::now();
    let dataset = context.dataset(job.spec.dataset_root).await.context("fetching the dataset")?;
    let global = jobdata::global_weights(&context.net, job).await.context("fetching the global model")?;
    let residual = carried_residual(context, job, round.round, global.len())?;
    let fetched = started.elapsed();
    let (context2, job2, round_number) = (context.clone(), job.clone(), round.round);
    let work = tokio::task::spawn_blocking(move || -> anyhow::Result<WorkCommitment> {
        let spec = &job2.spec;
        let (mut model, mut optimizer) = jobdata::start_state(spec, round_number, &global, context2.device)?;
        let dir = context2.work_dir.join(format!("job{}-round{}", job2.id, round_number));
        std::fs::create_dir_all(&context2.work_dir)?;
        let _ = std::fs::remove_dir_all(&dir);
        let schedule = jobdata::schedule(spec);
        let inner = InnerLoop {
            dataset: dataset.as_ref(),
            schedule: &schedule,
            round: u64::from(round_number),
            worker,
            checkpoint_interval: u64::from(spec.verification.checkpoint_interval),
            trail_dir: Some(&dir),
        };
        let outcome = inner.train_steps(&mut model, &mut optimizer, u64::from(spec.diloco.inner_steps), |_, _| {})?;
        let trail = outcome.trail;
        let store = context2.net.store();
        let mut keys = Vec::new();
        for entry in &trail.checkpoints {
            let bytes = std::fs::read(checkpoint_path(&dir, entry.step))?;
            let key = BlobKey::new(BlobKind::Checkpoint, entry.hash);
            store.put(&key, &bytes)?;
            keys.push(key);
        }
        let trail_key = BlobKey::new(BlobKind::Trail, trail.root());
        store.put(&trail_key, &serde_json::to_vec(&trail)?)?;
        keys.push(trail_key);
        let delta = pseudo_gradient(&global, &model.flat_weights());
        let (encoded, residual_hash) = match spec.diloco.encoding {
            DeltaEncoding::Int8 => {
                // Error feedback: what quantisation lost in our last committed round is added to
                // this round's Δ; the residual carried in is published and committed.
                let carried = residual.unwrap_or_else(|| vec![0.0; delta.len()]);
                let mut feedback = ErrorFeedback::with_residual(carried.clone());
                let encoded = feedback.encode(DeltaEncoding::Int8, &delta);
                let out_path = residual_path(&context2.work_dir, job2.id.0, round_number);
                std::fs::write(&out_path, jobdata::weights_to_bytes(feedback.residual()))?;
                let hash = if carried.iter().all(|r| *r == 0.0) {
                    trellis_proto::Hash::ZERO
                } else {
                    let key = store.put_data(&jobdata::weights_to_bytes(&carried))?;
                    keys.push(key);
                    key.hash
                };
                (encoded, hash)
            }
            other => (encoding::encode(other, &delta), trellis_proto::Hash::ZERO),
        };
        let delta_key = store.put_data(&encoded)?;
        keys.push(delta_key);
        store.tag_round(job2.id, round_number, &keys)?;
        let _ = std::fs::remove_dir_all(&dir);
        let final_checkpoint = trail.checkpoints.last().map(|e| e.hash).unwrap_or_default();
        debug_assert_eq!(trail.checkpoints.len() as u32, expected_checkpoints(spec));
        let mean_loss = trail.losses.iter().map(|l| f64::from(*l)).sum::<f64>() / trail.losses.len().max(1) as f64;
        tracing::info!(
            target: "node::miner",
            job = %job2.id, round = round_number, worker, mean_loss = format!("{mean_loss:.4}"),
            train_s = format!("{:.2}", outcome.compute.as_secs_f64()), delta_bytes = encoded.len(),
            "trained"
        );
        Ok(WorkCommitment {
            job: job2.id,
            round: round_number,
            trail_root: trail.root(),
            checkpoints: trail.checkpoints.len() as u32,
            final_checkpoint,
            delta_hash: delta_key.hash,
            residual_hash,
            tokens: outcome.tokens,
        })
    })
    .await
    .context("the training thread stopped")??;
    tracing::debug!(target: "node::miner", fetch_s = fetched.as_secs_f64(), total_s = started.elapsed().as_secs_f64(), "round work done");
    Ok(work)
}
