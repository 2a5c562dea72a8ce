//! The miner: joins the jobs its stake allows, trains each round it is a worker of (H AdamW
//! steps from the canonical start state, on the batches the schedule gives its slot), stores its
//! trail checkpoints, trail and Δ as blobs (served to checkers by the blob exchange), and
//! commits before the deadline. In a `groth16` job it trains the job's fixed-point model and
//! publishes a proof of every segment (`crate::zkjob`).
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
use trellis_trainer::checkpoint;
use trellis_trainer::model::init_normals;
use trellis_trainer::worker::{checkpoint_path, InnerLoop, Trail, TrailEntry};

use super::behaviour::Behaviour;
use super::RoleContext;
use crate::blobs::{data_hash, BlobKey, BlobKind, BlobStore};
use crate::jobdata;
use crate::zkjob::{ZkJob, ZkTraining};

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
        if let Some(work) = work_without_training(context, &job, &round) {
            if context.start_once(format!("tx:commit:{}:{}", job.id, round.round)) {
                tracing::warn!(target: "node::miner", job = %job.id, round = round.round, behaviour = %context.behaviour, "committing work never done");
                if let Err(error) = context.submit(TxKind::CommitWork(work)) {
                    tracing::warn!(target: "node::miner", job = %job.id, %error, "cannot commit");
                }
            }
            continue;
        }
        if !context.behaviour.trains() && context.behaviour != Behaviour::FakeTrail {
            continue;
        }
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

/// The commitment of a miner that does no work (`skip-work`, `copy`), when it is ready to send
/// one; `None` for every behaviour that trains or fakes a trail.
fn work_without_training(context: &RoleContext, job: &Job, round: &RoundState) -> Option<WorkCommitment> {
    match context.behaviour {
        Behaviour::SkipWork => {
            let spec = &job.spec;
            let made_up = |what: &str| {
                trellis_proto::Hash::digest(
                    trellis_proto::HashDomain::Blob,
                    format!("{what} {} {} {}", job.id, round.round, context.key.address()).as_bytes(),
                )
            };
            Some(WorkCommitment {
                job: job.id,
                round: round.round,
                trail_root: made_up("trail"),
                checkpoints: expected_checkpoints(spec),
                final_checkpoint: made_up("final"),
                delta_hash: made_up("delta"),
                residual_hash: trellis_proto::Hash::ZERO,
                tokens: u64::from(spec.diloco.inner_steps) * u64::from(spec.diloco.batch_size) * u64::from(spec.diloco.sequence_length),
            })
        }
        // The first commitment by someone else, once there is one.
        Behaviour::Copy => round.commits.iter().find(|c| c.miner != context.key.address()).map(|c| c.work.clone()),
        _ => None,
    }
}

/// Where a round's blobs go: the blob store, or nowhere for a `withhold` miner (which computes
/// the same hashes but serves nothing).
struct Publisher<'a> {
    store: &'a BlobStore,
    publish: bool,
    keys: Vec<BlobKey>,
}

impl Publisher<'_> {
    fn put(&mut self, key: BlobKey, bytes: &[u8]) -> anyhow::Result<BlobKey> {
        if self.publish {
            self.store.put(&key, bytes)?;
            self.keys.push(key);
        }
        Ok(key)
    }

    fn put_data(&mut self, bytes: &[u8]) -> anyhow::Result<BlobKey> {
        self.put(BlobKey::new(BlobKind::Data, data_hash(bytes)), bytes)
    }
}

/// A trail that hashes correctly but was never computed (`fake-trail`): the canonical start,
/// then the start weights plus growing noise at every checkpoint step, with made-up losses.
/// Returns the trail, each checkpoint's bytes and the final weights.
fn fake_trail(
    spec: &trellis_proto::JobSpec,
    round: u32,
    worker: usize,
    global: &[f32],
    device: tch::Device,
) -> anyhow::Result<(Trail, Vec<Vec<u8>>, Vec<f32>)> {
    let (mut model, mut optimizer) = jobdata::start_state(spec, round, global, device)?;
    let start_step = optimizer.step;
    let steps = u64::from(spec.diloco.inner_steps);
    let interval = u64::from(spec.verification.checkpoint_interval);
    let mut at: Vec<u64> = (0..steps).step_by(interval as usize).collect();
    at.push(steps);
    let mut checkpoints = Vec::new();
    let mut blobs = Vec::new();
    for (index, offset) in at.iter().enumerate() {
        if index > 0 {
            let noise = init_normals(u64::from(round), 7_000 + index as u64, global.len(), 1e-3 * index as f64);
            let weights: Vec<f32> = global.iter().zip(&noise).map(|(w, n)| w + n).collect();
            model.set_flat_weights(&weights);
        }
        optimizer.step = start_step + offset;
        let bytes = checkpoint::to_bytes(&model, &optimizer);
        checkpoints.push(TrailEntry { step: start_step + offset, hash: checkpoint::checkpoint_hash(&bytes) });
        blobs.push(bytes);
    }
    let losses = (0..steps).map(|step| 5.5 - step as f32 * 0.01).collect();
    let trail = Trail { round: u64::from(round), worker, checkpoint_interval: interval, checkpoints, losses, proofs: Vec::new() };
    Ok((trail, blobs, model.flat_weights()))
}

/// What a poisoner sends instead of its Δ.
fn poison(behaviour: Behaviour, delta: &mut [f32], round: u32, worker: usize) {
    match behaviour {
        Behaviour::PoisonSignFlip => delta.iter_mut().for_each(|x| *x = -*x),
        Behaviour::PoisonNoise => {
            let norm = delta.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
            let std = norm / (delta.len().max(1) as f64).sqrt();
            let noise = init_normals(u64::from(round), 9_000 + worker as u64, delta.len(), std);
            delta.copy_from_slice(&noise);
        }
        _ => {}
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
    let zk = ZkJob::of(&job.spec)?;
    let proving_key = match &zk {
        Some(zk) => Some(context.proving_key(zk.proving_key).await?),
        None => None,
    };
    let fetched = started.elapsed();
    let (context2, job2, round_number) = (context.clone(), job.clone(), round.round);
    let behaviour = context.behaviour;
    let work = tokio::task::spawn_blocking(move || -> anyhow::Result<WorkCommitment> {
        let spec = &job2.spec;
        let store = context2.net.store();
        let mut publisher = Publisher { store, publish: behaviour != Behaviour::Withhold, keys: Vec::new() };
        std::fs::create_dir_all(&context2.work_dir)?;
        let (trail, final_weights, tokens, compute) = if let (Some(zk), Some(key)) = (&zk, &proving_key) {
            // groth16: train in fixed point and prove every segment (a fake-trail miner records
            // checkpoints it never computed next to proofs of the real steps).
            let began = std::time::Instant::now();
            let training = ZkTraining {
                spec,
                job: zk,
                proving_key: key,
                dataset: dataset.as_ref(),
                round: round_number,
                worker,
                fake_checkpoints: behaviour == Behaviour::FakeTrail,
            };
            let done = training.run(&global)?;
            for (entry, bytes) in done.trail.checkpoints.iter().zip(&done.checkpoints) {
                publisher.put(BlobKey::new(BlobKind::Checkpoint, entry.hash), bytes)?;
            }
            for proof in &done.proofs {
                publisher.put_data(proof)?;
            }
            (done.trail, done.final_weights, trellis_contracts::rounds::expected_tokens(spec), began.elapsed())
        } else if behaviour == Behaviour::FakeTrail {
            let (trail, blobs, final_weights) = fake_trail(spec, round_number, worker, &global, context2.device)?;
            for (entry, bytes) in trail.checkpoints.iter().zip(&blobs) {
                publisher.put(BlobKey::new(BlobKind::Checkpoint, entry.hash), bytes)?;
            }
            let tokens = u64::from(spec.diloco.inner_steps) * u64::from(spec.diloco.batch_size) * u64::from(spec.diloco.sequence_length);
            (trail, final_weights, tokens, std::time::Duration::ZERO)
        } else {
            let (mut model, mut optimizer) = jobdata::start_state(spec, round_number, &global, context2.device)?;
            let dir = context2.work_dir.join(format!("job{}-round{}", job2.id, round_number));
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
            for entry in &outcome.trail.checkpoints {
                let bytes = std::fs::read(checkpoint_path(&dir, entry.step))?;
                publisher.put(BlobKey::new(BlobKind::Checkpoint, entry.hash), &bytes)?;
            }
            let _ = std::fs::remove_dir_all(&dir);
            (outcome.trail, model.flat_weights(), outcome.tokens, outcome.compute)
        };
        let trail_key = publisher.put(BlobKey::new(BlobKind::Trail, trail.root()), &serde_json::to_vec(&trail)?)?;
        let mut delta = pseudo_gradient(&global, &final_weights);
        poison(behaviour, &mut delta, round_number, worker);
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
                    publisher.put_data(&jobdata::weights_to_bytes(&carried))?.hash
                };
                (encoded, hash)
            }
            other => (encoding::encode(other, &delta), trellis_proto::Hash::ZERO),
        };
        let delta_key = publisher.put_data(&encoded)?;
        store.tag_round(job2.id, round_number, &publisher.keys)?;
        let final_checkpoint = trail.checkpoints.last().map(|e| e.hash).unwrap_or_default();
        debug_assert_eq!(trail.checkpoints.len() as u32, expected_checkpoints(spec));
        let mean_loss = trail.losses.iter().map(|l| f64::from(*l)).sum::<f64>() / trail.losses.len().max(1) as f64;
        tracing::info!(
            target: "node::miner",
            job = %job2.id, round = round_number, worker, mean_loss = format!("{mean_loss:.4}"),
            train_s = format!("{:.2}", compute.as_secs_f64()), delta_bytes = encoded.len(),
            "trained"
        );
        Ok(WorkCommitment {
            job: job2.id,
            round: round_number,
            trail_root: trail_key.hash,
            checkpoints: trail.checkpoints.len() as u32,
            final_checkpoint,
            delta_hash: delta_key.hash,
            residual_hash,
            tokens,
        })
    })
    .await
    .context("the training thread stopped")??;
    tracing::debug!(target: "node::miner", fetch_s = fetched.as_secs_f64(), total_s = started.elapsed().as_secs_f64(), "round work done");
    Ok(work)
}
