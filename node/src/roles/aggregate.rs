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
use trellis_proto::{Address, Aggregate, Hash, JobId, JobSpec, TxKind};
use trellis_trainer::encoding;

use super::{RoleContext, Work};
use crate::roles::jobdata::{self, FETCH_PATIENCE};
use crate::storage::blobs::{BlobKey, BlobKind, BlobStore};

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
    for job in context.working_jobs() {
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

/// Called after every block by the validator role: every Δ revealed in a round being checked is
/// fetched now, beside the checks, so that the aggregate (which reads every accepted Δ) starts
/// with them here instead of fetching them all once the round is tallied. A Δ is fetched once
/// whoever wants it (a check of its miner, this, the aggregation: `BlobNet::ensure`), and a
/// failure here is only logged: the aggregation fetches what is missing.
///
/// It waits until this node's own checks of the round have their verdicts: a miner's uplink is
/// what a round across the internet waits for, and the Δs of miners this node does not check
/// would compete there with the checks (a `small` job across continents timed checks out); by
/// then the checkers of each miner hold its Δ and serve it too.
pub fn prefetch(context: &Arc<RoleContext>) {
    let me = context.key.address();
    for job in context.working_jobs() {
        let Some(round) = context.round(job.id, job.current_round) else { continue };
        if round.phase != Phase::Verifying {
            continue;
        }
        let checking =
            round.assignments.iter().filter(|a| a.checkers.contains(&me)).any(|a| {
                !round.verdicts.iter().any(|v| v.checker == me && v.miner == a.miner && v.segment == a.segment)
            });
        if checking {
            continue;
        }
        let Ok(limits) = super::jobdata::BlobLimits::of(&job.spec) else { continue };
        for commit in &round.commits {
            let Some(reveal) = &commit.reveal else { continue };
            let work = Work::PrefetchDelta { job: job.id, round: round.round, miner: commit.miner };
            if !context.start_once(work) {
                continue;
            }
            let (context, key, job_id, round_number) =
                (context.clone(), BlobKey::new(BlobKind::Data, reveal.delta_hash), job.id, round.round);
            tokio::spawn(async move {
                let deadline = tokio::time::Instant::now() + FETCH_PATIENCE;
                let fetched = context.net.ensure_until(key, deadline, limits.delta).await;
                let tagged = fetched.is_ok() && context.net.store().tag_round(job_id, round_number, &[key]).is_ok();
                if !tagged {
                    tracing::debug!(target: "node::aggregate", %key, "a revealed Δ was not prefetched; the aggregation fetches it");
                }
            });
        }
    }
}

/// Coordinates combined at a time when the job's rule is coordinate-wise: each accepted Δ is read
/// from the store a block at a time, so aggregating holds θ, the momentum and one block of each
/// Δ, however many miners were accepted (`docs/scaling.md`, memory per role).
const AGGREGATE_BLOCK: u64 = 1 << 20;

/// Computes round `round`'s outer update and stores the new model and momentum as blobs.
pub async fn compute(context: &Arc<RoleContext>, job: &Job, round: &RoundState) -> anyhow::Result<(Hash, Hash)> {
    let net = &context.net;
    let global = jobdata::global_weights(net, job).await.context("the global model")?;
    let momentum = jobdata::momentum(net, job, global.len()).await.context("the outer momentum")?;
    let deadline = tokio::time::Instant::now() + FETCH_PATIENCE;
    let limits = super::jobdata::BlobLimits::of(&job.spec)?;
    // Every accepted Δ at once (most are already here: `prefetch`).
    let fetches = round.accepted.iter().map(|miner| async move {
        let (reveal, since) = round
            .commits
            .iter()
            .find(|c| &c.miner == miner)
            .and_then(|c| Some((c.reveal.as_ref()?, c.since)))
            .context("an accepted miner without revealed work")?;
        let key = BlobKey::new(BlobKind::Data, reveal.delta_hash);
        net.ensure_until(key, deadline, limits.delta).await.with_context(|| format!("the Δ of {miner}"))?;
        // In a streaming job a Δ weighs the steps its fragment trained since the miner took it.
        let weight = trellis_protocol::fragments::merge_weight(&job.spec, round.round, since, reveal.steps);
        anyhow::Ok((*miner, key, weight))
    });
    let deltas = futures::future::try_join_all(fetches).await?;
    let keys: Vec<BlobKey> = deltas.iter().map(|(_, key, _)| *key).collect();
    net.store().tag_round(job.id, round.round, &keys)?;
    let (spec, round_number) = (job.spec.clone(), round.round);
    let store = net.store().clone();
    let _heavy = super::HEAVY_WORK.acquire().await?;
    tokio::task::spawn_blocking(move || -> anyhow::Result<(Hash, Hash)> {
        let (model, momentum) = outer_update_from_store(&store, &spec, round_number, global, momentum, &deltas)?;
        let model = store.put_data(&trellis_protocol::model::weights_to_bytes(&model))?;
        let momentum = store.put_data(&trellis_protocol::model::weights_to_bytes(&momentum))?;
        Ok((model.hash, momentum.hash))
    })
    .await
    .context("the aggregation thread stopped")?
}

/// The outer update of `global` and `momentum` with the Δs in the store under `deltas` (in the
/// chain's order, each with its weight in the mean: the inner steps its miner revealed, times the
/// rounds its fragment trained in a streaming job), read a block of coordinates at a time when the rule allows
/// ([`trellis_protocol::outer::coordinatewise`]), whole otherwise: the same bits either way. In
/// a streaming job the Δs, and so the update, cover the fragment round `round` synchronises
/// alone (`trellis_protocol::fragments`); the rest of θ and of the momentum stays as it is.
fn outer_update_from_store(
    store: &BlobStore,
    spec: &JobSpec,
    round: u32,
    mut model: Vec<f32>,
    mut momentum: Vec<f32>,
    deltas: &[(Address, BlobKey, u32)],
) -> anyhow::Result<(Vec<f32>, Vec<f32>)> {
    let fragment = trellis_protocol::fragments::round_span(spec, round, model.len());
    let parameters = fragment.len() as u64;
    let steps: Vec<u32> = deltas.iter().map(|(_, _, steps)| *steps).collect();
    let mut layouts = Vec::with_capacity(deltas.len());
    for (miner, key, _) in deltas {
        let size = store.size(key)?;
        let head = store.read_range(key, 0, encoding::Layout::HEAD.min(size as usize))?;
        let layout = encoding::Layout::parse(&head, size).with_context(|| format!("decoding the Δ of {miner}"))?;
        if layout.encoding != spec.diloco.encoding || layout.values != parameters {
            bail!("the Δ of {miner} is not a {:?} vector of {parameters} values", spec.diloco.encoding);
        }
        layouts.push(layout);
    }
    let block = if trellis_protocol::outer::coordinatewise(&spec.aggregation) { AGGREGATE_BLOCK } else { parameters };
    let mut start = 0;
    while start < parameters {
        let range = start..(start + block.max(1)).min(parameters);
        let mut parts = Vec::with_capacity(deltas.len());
        for ((miner, key, _), layout) in deltas.iter().zip(&layouts) {
            let read = |span: std::ops::Range<u64>| store.read_range(key, span.start, (span.end - span.start) as usize);
            let bytes = layout.spans(&range).into_iter().map(read).collect::<Result<Vec<_>, _>>()?;
            let bytes: Vec<&[u8]> = bytes.iter().map(Vec::as_slice).collect();
            let part = layout.decode_block(&range, &bytes).with_context(|| format!("decoding the Δ of {miner}"))?;
            parts.push(part);
        }
        let refs: Vec<&[f32]> = parts.iter().map(Vec::as_slice).collect();
        let span = fragment.start + range.start as usize..fragment.start + range.end as usize;
        trellis_protocol::outer::outer_update_in_place(
            spec,
            &mut model[span.clone()],
            &mut momentum[span],
            &refs,
            &steps,
        )?;
        start = range.end;
    }
    Ok((model, momentum))
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

    fn job_spec(aggregation: &str, encoding: &str) -> JobSpec {
        let file: crate::commands::job::JobFile = toml::from_str(&format!(
            "name = \"t\"\nmodel = \"nano\"\ndataset = \"d\"\nescrow = 10\nreward_per_round = 1\n\
             aggregation = \"{aggregation}\"\n[diloco]\nworkers_per_round = 3\ninner_steps = 4\nrounds = 2\n\
             encoding = \"{encoding}\"\n[verification]\ncheckpoint_interval = 2\nsegments_per_miner = 1\nmode = \"exact\"\n"
        ))
        .unwrap();
        file.spec(Hash::ZERO, 1, None).unwrap()
    }

    /// Aggregating from the store a block at a time (over more than one block, int8 chunks
    /// straddling the block's end) gives the bits of the whole-vector update every other
    /// validator and the simulator compute, for every rule and encoding.
    #[test]
    fn the_update_read_from_the_store_in_blocks_is_the_whole_update() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let n = AGGREGATE_BLOCK as usize + 4_097;
        let wave = |phase: f32| (0..n).map(|i| (i as f32 * 0.001 + phase).sin() * 0.01).collect::<Vec<f32>>();
        let (global, momentum) = (wave(0.0), wave(5.0));
        for (rule, name) in [
            ("mean", "f32"),
            ("trimmed-mean", "int8"),
            ("centered-clip", "f16"),
            ("mean", "topk:0.03+q2"),
            ("mean", "q4"),
        ] {
            let spec = job_spec(rule, name);
            let mut stored = Vec::new();
            let mut decoded = Vec::new();
            // Workers that trained different steps (a straggler's Δ weighs less in a mean).
            let steps = [4, 1, 3];
            for k in 1..=3u8 {
                let bytes = encoding::encode(spec.diloco.encoding, &wave(f32::from(k)));
                decoded.push(encoding::decode(&bytes).unwrap().1);
                stored.push((Address([k; 20]), store.put_data(&bytes).unwrap(), steps[usize::from(k) - 1]));
            }
            let refs: Vec<&[f32]> = decoded.iter().map(Vec::as_slice).collect();
            let whole = trellis_protocol::outer::outer_update(&spec, &global, momentum.clone(), &refs, &steps).unwrap();
            let (model, buffer) =
                outer_update_from_store(&store, &spec, 0, global.clone(), momentum.clone(), &stored).unwrap();
            assert!(model.iter().zip(&whole.model).all(|(a, b)| a.to_bits() == b.to_bits()), "{rule} {name}: model");
            assert!(
                buffer.iter().zip(&whole.momentum).all(|(a, b)| a.to_bits() == b.to_bits()),
                "{rule} {name}: momentum"
            );
        }
        // A Δ of another encoding or size than the job's is refused, not read.
        let spec = job_spec("mean", "f32");
        let short = store.put_data(&encoding::encode(spec.diloco.encoding, &[0.5; 10])).unwrap();
        let error = outer_update_from_store(
            &store,
            &spec,
            0,
            global.clone(),
            momentum.clone(),
            &[(Address([9; 20]), short, 4)],
        )
        .unwrap_err();
        assert!(format!("{error:#}").contains("is not a F32 vector"), "{error:#}");
    }

    /// In a streaming job a round's Δs hold its fragment alone, and the update moves that
    /// fragment of θ and of the momentum alone, with the bits of the whole-vector update of it.
    #[test]
    fn a_streaming_round_updates_the_fragment_it_synchronises_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let n = 3 * AGGREGATE_BLOCK as usize + 11;
        let wave =
            |phase: f32, len: usize| (0..len).map(|i| (i as f32 * 0.001 + phase).sin() * 0.01).collect::<Vec<f32>>();
        let (global, momentum) = (wave(0.0, n), wave(5.0, n));
        let mut spec = job_spec("mean", "f32");
        spec.diloco.fragments = 4;
        let round = 6;
        let span = trellis_protocol::fragments::round_span(&spec, round, n);
        assert_eq!(span, n / 2..3 * n / 4, "round 6 of 4 fragments synchronises fragment 2");
        let deltas: Vec<Vec<f32>> = (1..=2u8).map(|k| wave(f32::from(k), span.len())).collect();
        let stored: Vec<_> = deltas
            .iter()
            .enumerate()
            .map(|(k, d)| {
                (Address([k as u8; 20]), store.put_data(&encoding::encode(spec.diloco.encoding, d)).unwrap(), 4)
            })
            .collect();
        let refs: Vec<&[f32]> = deltas.iter().map(Vec::as_slice).collect();
        let whole = trellis_protocol::outer::outer_update(
            &spec,
            &global[span.clone()],
            momentum[span.clone()].to_vec(),
            &refs,
            &[4, 4],
        )
        .unwrap();
        let (model, buffer) =
            outer_update_from_store(&store, &spec, round, global.clone(), momentum.clone(), &stored).unwrap();
        assert_eq!(model[span.clone()], whole.model[..]);
        assert_eq!(buffer[span.clone()], whole.momentum[..]);
        for outside in [0..span.start, span.end..n] {
            assert_eq!(model[outside.clone()], global[outside.clone()], "θ outside the fragment stays");
            assert_eq!(buffer[outside.clone()], momentum[outside], "so does the momentum");
        }
        // A whole-model Δ in a streaming round is refused.
        let whole_model = store.put_data(&encoding::encode(spec.diloco.encoding, &global)).unwrap();
        let refused = outer_update_from_store(
            &store,
            &spec,
            round,
            global.clone(),
            momentum,
            &[(Address([9; 20]), whole_model, 4)],
        );
        assert!(refused.is_err());
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
