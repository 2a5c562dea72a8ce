//! The attacks a node stages when it is told to misbehave (`trellis run --behaviour KIND`,
//! `trellis devnet --adversary KIND=COUNT`; the kinds are `trellis_protocol::behaviour`).
//!
//! This module, the `--behaviour` and `--adversary` flags and the node's behaviour field are
//! compiled only with the `adversary` feature (`make test`, `make devnet`): a user's build
//! (`make build`, a plain `cargo build`) holds no code that could cheat, only the honest paths
//! (checked in CI by `make build-check`). The names of the kinds stay in every build, as
//! vocabulary for `devnet.json` and the simulator.
//!
//! Each attack is the smallest deviation from the honest role that shows what the protocol does
//! to it (docs/threat-model.md names the test that runs it end to end).

use std::sync::Arc;

use trellis_contracts::state::{Job, RoundState};
use trellis_proto::{
    Hash, HashDomain, InvalidReason, JobId, Trail, TrailEntry, TxKind, VerdictOutcome, WorkCommitment, WorkReveal,
};
use trellis_protocol::behaviour::Behaviour;
use trellis_protocol::Blame;
use trellis_trainer::checkpoint;
use trellis_trainer::model::init_normals;

use super::miner::{canonical_trail, train_trail, RoundInputs, Stage};
use super::{jobdata, RoleContext, Work};
use crate::storage::blobs::{BlobKey, BlobKind};

/// `lying-peer`: fetches the other miners' revealed trails, so that its exchange holds copies to
/// serve doctored (`p2p::exchange::LyingResponder`).
pub(super) fn hoard_trails(context: &Arc<RoleContext>, round: &RoundState) {
    let me = context.key.address();
    for commit in round.commits.iter().filter(|c| c.miner != me) {
        let Some(reveal) = &commit.reveal else { continue };
        let key = BlobKey::new(BlobKind::Trail, reveal.trail);
        if context.start_once(Work::Hoard { trail: reveal.trail }) {
            let net = context.net.clone();
            tokio::spawn(async move {
                let deadline = tokio::time::Instant::now() + jobdata::FETCH_PATIENCE;
                let _ = net.fetch_until(key, deadline, crate::storage::blobs::MAX_BLOB_BYTES).await;
            });
        }
    }
}

/// `copy`: once another miner has committed, commits that binding as its own (never revealable:
/// the binding covers the original's address). Returns the commitment to send, once.
pub(super) fn copied_commitment(context: &RoleContext, job: &Job, round: &RoundState) -> Option<TxKind> {
    let me = context.key.address();
    let other = round.commits.iter().find(|c| c.miner != me)?;
    if !context.start_once(Work::SendCommit { job: job.id, round: round.round }) {
        return None;
    }
    tracing::warn!(target: "node::adversary", job = %job.id, round = round.round, "copying another miner's commitment");
    Some(TxKind::CommitWork(WorkCommitment { job: job.id, round: round.round, binding: other.binding }))
}

/// `skip-work`: a reveal of made-up hashes, staged and sealed as if the work had been done.
pub(super) fn skip_work(context: &RoleContext, job: &Job, round: u32) -> anyhow::Result<WorkReveal> {
    let made_up = |what: &str| {
        Hash::digest(HashDomain::Blob, format!("{what} {} {round} {}", job.id, context.key.address()).as_bytes())
    };
    let reveal = WorkReveal {
        job: job.id,
        round,
        trail: made_up("trail"),
        final_checkpoint: made_up("final"),
        delta_hash: made_up("delta"),
        residual_hash: Hash::ZERO,
        steps: job.spec.diloco.inner_steps,
        continues: Hash::ZERO,
        next_residual: Hash::ZERO,
    };
    Stage::create(&context.work_dir, job.id.0, round)?.seal(&reveal)?;
    tracing::warn!(target: "node::adversary", job = %job.id, round, "committing work never done");
    Ok(reveal)
}

/// The trail (and the final weights its Δ comes from) of a miner whose behaviour changes how it
/// trains: `fake-trail` and `unit-gap`. `None` for every other behaviour (they train honestly).
pub(super) fn dishonest_trail(
    behaviour: Behaviour,
    inputs: &RoundInputs<'_>,
) -> anyhow::Result<Option<(Trail, Vec<f32>)>> {
    match behaviour {
        Behaviour::FakeTrail => fake_trail(inputs).map(Some),
        Behaviour::UnitGap => unit_gap_trail(inputs).map(Some),
        Behaviour::ForgedStart => match inputs.held_start {
            Some(start) => forged_start_trail(inputs, start).map(Some),
            None => Ok(None),
        },
        _ => Ok(None),
    }
}

/// `fake-trail`: a trail that hashes correctly but was never computed: the canonical start,
/// then the start weights plus growing noise at every checkpoint position, with made-up losses.
fn fake_trail(inputs: &RoundInputs<'_>) -> anyhow::Result<(Trail, Vec<f32>)> {
    let spec = inputs.spec;
    let (mut model, mut optimizer) =
        trellis_trainer::job::start_state(spec, inputs.round, inputs.global, inputs.device)?;
    let start_step = optimizer.step;
    let mut entries = Vec::new();
    for index in 0..trellis_contracts::rounds::expected_checkpoints(spec) {
        if index > 0 {
            let noise = init_normals(
                u64::from(inputs.round),
                7_000 + u64::from(index),
                inputs.global.len(),
                1e-3 * f64::from(index),
            );
            let weights: Vec<f32> = inputs.global.iter().zip(&noise).map(|(w, n)| w + n).collect();
            model.set_flat_weights(&weights);
        }
        optimizer.step = start_step
            + trellis_protocol::trail::checkpoint_offset(
                index,
                spec.diloco.inner_steps,
                spec.verification.checkpoint_interval,
            );
        let bytes = match trellis_trainer::job::compact_base(spec, inputs.global) {
            Some(base) => checkpoint::capture_compact(&mut model, &mut optimizer, base),
            None => checkpoint::capture(&model, &optimizer),
        };
        let entry = TrailEntry { step: optimizer.step, hash: checkpoint::checkpoint_hash(&bytes) };
        inputs.stage.put(BlobKey::new(BlobKind::Checkpoint, entry.hash), &bytes)?;
        entries.push(entry);
    }
    let losses = (0..spec.diloco.inner_steps).map(|step| 5.5 - step as f32 * 0.01).collect();
    let trail = canonical_trail(inputs.job, spec, inputs.round, inputs.worker, entries, losses)?;
    Ok((trail, model.flat_weights()))
}

/// `forged-start`: the round continues the miner's accepted state, as `start` (derived from it)
/// says, but from that state with every weight shifted by 10⁻³; then H honest steps.
fn forged_start_trail(inputs: &RoundInputs<'_>, start: &[u8]) -> anyhow::Result<(Trail, Vec<f32>)> {
    let spec = inputs.spec;
    let (mut model, mut optimizer) =
        trellis_trainer::job::state_from_checkpoint(spec, inputs.global, start, inputs.device)?;
    let shifted: Vec<f32> = model.flat_weights().iter().map(|w| w + 1e-3).collect();
    model.set_flat_weights(&shifted);
    let forged = match trellis_trainer::job::compact_base(spec, inputs.global) {
        Some(base) => checkpoint::capture_compact(&mut model, &mut optimizer, base),
        None => checkpoint::capture(&model, &optimizer),
    };
    drop((model, optimizer));
    let forged_inputs = RoundInputs { held_start: Some(&forged), ..*inputs };
    let (steps, interval) = (u64::from(spec.diloco.inner_steps), u64::from(spec.verification.checkpoint_interval));
    let (checkpoints, losses, weights) = train_trail(&forged_inputs, steps, interval, None)?;
    tracing::warn!(target: "node::adversary", job = %inputs.job, round = inputs.round, "continuing a forged start state");
    Ok((canonical_trail(inputs.job, spec, inputs.round, inputs.worker, checkpoints, losses)?, weights))
}

/// `unit-gap`: trains only ⌈H/c⌉ steps with a checkpoint after each, and pads the losses to H.
fn unit_gap_trail(inputs: &RoundInputs<'_>) -> anyhow::Result<(Trail, Vec<f32>)> {
    let spec = inputs.spec;
    let steps = u64::from(trellis_contracts::rounds::expected_segments(spec));
    let (checkpoints, mut losses, weights) = train_trail(inputs, steps, 1, None)?;
    let last = losses.last().copied().unwrap_or(0.0);
    losses.resize(spec.diloco.inner_steps as usize, last);
    Ok((canonical_trail(inputs.job, spec, inputs.round, inputs.worker, checkpoints, losses)?, weights))
}

/// `poison-sign-flip` and `poison-noise`: what a poisoner sends instead of its Δ.
pub(super) fn poison(behaviour: Behaviour, mut delta: Vec<f32>, round: u32, worker: usize) -> Vec<f32> {
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
    delta
}

/// `frame`: a made-up mismatch instead of the checker's real outcome: a checkpoint hash the
/// miner never claimed.
pub(super) fn framed_outcome(job: JobId, round: u32, miner: &trellis_proto::Address, segment: u32) -> VerdictOutcome {
    let made_up = Hash::digest(HashDomain::Blob, format!("framed {miner} {segment}").as_bytes());
    tracing::warn!(target: "node::adversary", %job, round, %miner, "framing honest work");
    Blame::miner(InvalidReason::CheckpointMismatch, made_up, Hash::ZERO).outcome()
}

/// `forge-aggregate`: the model hash a forger puts forward (nobody computed it).
pub(super) fn forged_model(job: JobId, round: u32) -> Hash {
    let forged = Hash::digest(HashDomain::Blob, format!("forged aggregate {job} {round}").as_bytes());
    tracing::warn!(target: "node::adversary", %job, round, model = %forged, "putting a forged aggregate forward");
    forged
}
