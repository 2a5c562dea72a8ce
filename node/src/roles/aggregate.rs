//! The round's outer update: every validator computes it once the round is tallied (fetch the
//! accepted miners' Δ, combine them with the job's rule in address order, apply the outer step
//! to θ_r and the momentum, all in plain f32 so every validator gets the same bits), stores the
//! new model and momentum as blobs, and records their hashes in the [`AggregateBook`].
//!
//! One validator sends `CommitAggregate` (the first in an order rotated by job and round; the
//! next after a few blocks if the first has not, and so on). Consensus accepts a block with an
//! aggregate only if the validator's own computation agrees ([`AggregateBook::judge`]), so a
//! committed block is a committed, recomputed outer update.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use anyhow::{bail, Context as _};
use trellis_contracts::state::{Job, Phase, RoundState};
use trellis_proto::{Aggregate, Hash, JobId, TxKind};
use trellis_trainer::encoding;

use super::{RoleContext, Work};
use crate::roles::jobdata::{self, FETCH_PATIENCE};
use crate::storage::blobs::{BlobKey, BlobKind};

/// Blocks each validator waits after the one before it in the sending order.
const SEND_STAGGER_BLOCKS: u64 = 4;

/// The aggregates this validator computed: (model hash, momentum hash) by (job, round).
#[derive(Debug, Default)]
pub struct AggregateBook {
    computed: Mutex<HashMap<(JobId, u32), (Hash, Hash)>>,
    /// Wakes whoever waits for a computation ([`AggregateBook::judge_within`]).
    added: tokio::sync::Notify,
}

impl AggregateBook {
    pub fn get(&self, job: JobId, round: u32) -> Option<(Hash, Hash)> {
        self.computed.lock().unwrap_or_else(|p| p.into_inner()).get(&(job, round)).copied()
    }

    pub fn insert(&self, job: JobId, round: u32, hashes: (Hash, Hash)) {
        self.computed.lock().unwrap_or_else(|p| p.into_inner()).insert((job, round), hashes);
        self.added.notify_waiters();
    }

    /// Whether `aggregate` is what this node computed: `None` while it has not computed it.
    pub fn judge(&self, aggregate: &Aggregate) -> Option<bool> {
        self.get(aggregate.job, aggregate.round)
            .map(|(model, momentum)| model == aggregate.model_hash && momentum == aggregate.momentum_hash)
    }

    /// [`judge`](Self::judge), awaiting (never blocking a thread) a computation still running
    /// until `patience` has passed; `None` if it has not finished by then.
    pub async fn judge_within(&self, aggregate: &Aggregate, patience: std::time::Duration) -> Option<bool> {
        let deadline = tokio::time::Instant::now() + patience;
        loop {
            // Registered before looking, so an insert in between still wakes us.
            let added = self.added.notified();
            if let Some(verdict) = self.judge(aggregate) {
                return Some(verdict);
            }
            if tokio::time::timeout_at(deadline, added).await.is_err() {
                return self.judge(aggregate);
            }
        }
    }
}

/// Called after every block by the validator role.
pub fn tick(context: &Arc<RoleContext>, book: &Arc<AggregateBook>, height: trellis_proto::Height) {
    let me = context.key.address();
    for job in context.active_jobs() {
        let Some(round) = context.round(job.id, job.current_round) else { continue };
        if round.phase != Phase::AwaitingAggregate || height > round.aggregate_deadline {
            continue;
        }
        match book.get(job.id, round.round) {
            #[cfg(feature = "adversary")]
            None if context.behaviour == trellis_protocol::behaviour::Behaviour::ForgeAggregate => {
                // The forger does not compute anything: it puts its forgery forward at once.
                let forged = super::adversary::forged_model(job.id, round.round);
                book.insert(job.id, round.round, (forged, forged));
            }
            None => {
                if context.start_once(Work::ComputeAggregate { job: job.id, round: round.round }) {
                    let (context, book, job, round) = (context.clone(), book.clone(), job.clone(), round.clone());
                    tokio::spawn(async move {
                        match compute(&context, &job, &round).await {
                            Ok(hashes) => {
                                tracing::info!(target: "node::aggregate", job = %job.id, round = round.round, model = %hashes.0, "aggregate computed");
                                book.insert(job.id, round.round, hashes);
                            }
                            Err(error) => {
                                tracing::warn!(target: "node::aggregate", job = %job.id, round = round.round, error = format!("{error:#}"), "cannot compute the aggregate yet");
                                context.forget(&Work::ComputeAggregate { job: job.id, round: round.round });
                            }
                        }
                    });
                }
            }
            Some((model_hash, momentum_hash)) => {
                let validators = context.shared.ledger.validator_set();
                let addresses: Vec<_> = validators.validators().iter().map(|v| v.address.0).collect();
                let Some(position) = addresses.iter().position(|a| *a == me) else { continue };
                let n = addresses.len() as u64;
                let rank = (position as u64 + n - (job.id.0 + u64::from(round.round)) % n) % n;
                let window = trellis_contracts::rounds::aggregate_window(context.shared.ledger.params(), &job.spec);
                let tallied_at = round.aggregate_deadline.before(window);
                #[cfg(feature = "adversary")]
                let forger = context.behaviour == trellis_protocol::behaviour::Behaviour::ForgeAggregate;
                #[cfg(not(feature = "adversary"))]
                let forger = false;
                if height < tallied_at + rank * SEND_STAGGER_BLOCKS && !forger {
                    continue;
                }
                if context.start_once(Work::SendAggregate { job: job.id, round: round.round }) {
                    let aggregate = Aggregate {
                        job: job.id,
                        round: round.round,
                        model_hash,
                        momentum_hash,
                        accepted: round.accepted.clone(),
                    };
                    if let Err(error) = context.submit(TxKind::CommitAggregate(aggregate)) {
                        tracing::warn!(target: "node::aggregate", %error, "cannot send the aggregate");
                    }
                }
            }
        }
    }
}

/// Computes round `round`'s outer update and stores the new model and momentum as blobs.
pub async fn compute(context: &Arc<RoleContext>, job: &Job, round: &RoundState) -> anyhow::Result<(Hash, Hash)> {
    let net = &context.net;
    let global = jobdata::global_weights(net, job).await.context("the global model")?;
    let momentum = jobdata::momentum(net, job, global.len()).await.context("the outer momentum")?;
    let deadline = tokio::time::Instant::now() + FETCH_PATIENCE;
    let limits = super::jobdata::BlobLimits::of(&job.spec)?;
    let mut deltas = Vec::with_capacity(round.accepted.len());
    for miner in &round.accepted {
        let reveal = round
            .commits
            .iter()
            .find(|c| &c.miner == miner)
            .and_then(|c| c.reveal.as_ref())
            .context("an accepted miner without revealed work")?;
        let bytes = net
            .fetch_until(BlobKey::new(BlobKind::Data, reveal.delta_hash), deadline, limits.delta)
            .await
            .with_context(|| format!("the Δ of {miner}"))?;
        net.store().tag_round(job.id, round.round, &[BlobKey::new(BlobKind::Data, reveal.delta_hash)])?;
        let (encoding, values) = encoding::decode(&bytes).with_context(|| format!("decoding the Δ of {miner}"))?;
        if encoding != job.spec.diloco.encoding || values.len() != global.len() {
            bail!("the Δ of {miner} is not a {:?} vector of {} values", job.spec.diloco.encoding, global.len());
        }
        deltas.push(values);
    }
    let spec = job.spec.clone();
    let store = net.store().clone();
    tokio::task::spawn_blocking(move || -> anyhow::Result<(Hash, Hash)> {
        let refs: Vec<&[f32]> = deltas.iter().map(Vec::as_slice).collect();
        let update = trellis_protocol::outer::outer_update(&spec, &global, momentum, &refs)?;
        let model = store.put_data(&trellis_protocol::model::weights_to_bytes(&update.model))?;
        let momentum = store.put_data(&trellis_protocol::model::weights_to_bytes(&update.momentum))?;
        Ok((model.hash, momentum.hash))
    })
    .await
    .context("the aggregation thread stopped")?
}

#[cfg(test)]
mod tests {
    use super::*;

    fn aggregate(model: u8) -> Aggregate {
        Aggregate {
            job: JobId(1),
            round: 2,
            model_hash: Hash([model; 32]),
            momentum_hash: Hash([9; 32]),
            accepted: Vec::new(),
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_recheck_awaits_a_computation_in_progress_without_blocking_the_thread() {
        let book = Arc::new(AggregateBook::default());
        let computing = book.clone();
        // On a single-threaded runtime a blocking wait would starve this task forever.
        tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            computing.insert(JobId(1), 2, (Hash([7; 32]), Hash([9; 32])));
        });
        assert_eq!(book.judge_within(&aggregate(7), std::time::Duration::from_secs(5)).await, Some(true));
        assert_eq!(book.judge_within(&aggregate(8), std::time::Duration::from_secs(5)).await, Some(false));
        let unknown = Aggregate { round: 3, ..aggregate(7) };
        assert_eq!(
            book.judge_within(&unknown, std::time::Duration::from_millis(30)).await,
            None,
            "no computation: no verdict"
        );
    }
}
