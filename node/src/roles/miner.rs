//! The miner: joins the best-paying jobs it can run, up to `miner.max_jobs` at once and none
//! paying a worker less than `miner.min_reward_per_round` a round, leaving a job for a better-paying
//! one ([`jobs_to_hold`]), checks
//! each job before joining it (and skips, with a logged reason, a job it cannot run), trains each round it is a worker of (H AdamW steps from the canonical start
//! state, on the batches the schedule gives its slot), commits a hash that binds its work to its
//! address before the commit deadline, and after it reveals the work and publishes its blobs
//! (trail, checkpoints, Δ), which the blob exchange then serves to checkers. In a `groth16` job
//! it trains the job's fixed-point model and publishes a proof of every segment
//! (`trellis_verifier::groth16`).
//!
//! Until the reveal, a round's blobs wait in a stage directory under the work directory, with
//! the reveal itself: nobody can read the Δ or the final checkpoint before the commit phase has
//! ended. A miner restarted mid-round finds its stage and commits or reveals from it; with no
//! stage it trains again, and training is deterministic, so it reproduces the same work. If a
//! deadline passes first, it skips the round (and is not paid for it). Nothing half-done is
//! ever committed.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context as _};
use trellis_contracts::params::fraction;
use trellis_contracts::rounds::{tokens_of, worker_index};
use trellis_contracts::state::{keys, read, AcceptedState, Job, JobStatus, Phase, RoundState, Stake};
use trellis_contracts::Params;
use trellis_proto::{
    decode, Amount, Encode, Hash, Height, JobId, JobSpec, Role, Trail, TrailEntry, TxKind, WorkCommitment, WorkReveal,
};
use trellis_protocol::outer::pseudo_gradient;
use trellis_trainer::checkpoint::{checkpoint_hash, CheckpointView};
use trellis_trainer::data::Dataset;
use trellis_trainer::encoding::{self, ErrorFeedback};
use trellis_trainer::model::Gpt;
use trellis_trainer::worker::{checkpoint_path, InnerLoop};

#[cfg(feature = "adversary")]
use super::adversary;
use super::{RoleContext, Work};
use crate::home::MinerPolicy;
use crate::roles::jobdata;
use crate::storage::blobs::{data_hash, BlobKey, BlobKind, BlobStore, MAX_BLOB_BYTES};
#[cfg(feature = "adversary")]
use trellis_protocol::behaviour::Behaviour;
use trellis_verifier::groth16::{ZkJob, ZkTraining};

/// Blocks a miner waits before checking again a job it could not run.
const RECHECK_BLOCKS: u64 = 20;

/// Blocks a sent `JoinJob` counts as a job taken ([`MinerPolicy::max_jobs`]) before it shows
/// on chain; after that it was refused (a full job) or lost, and the place is free again.
const JOIN_PATIENCE_BLOCKS: u64 = 20;

/// A job this miner is about to be in: its place is taken while the job is checked and the join
/// is on its way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Joining {
    /// Being checked ([`runnable`]); it takes no place from a job the miner works in.
    Checking,
    /// Our `JoinJob` went out at this height: the job takes its place.
    Sent(Height),
    /// The check failed or the join could not be sent: backed off ([`Miner::backoff`]).
    Failed,
}

/// Blocks a job whose check failed (or whose join did not land) is not considered again after
/// its `n`-th failure: [`RECHECK_BLOCKS`] doubled each time, at most 32 times that.
fn backoff_blocks(failures: u32) -> u64 {
    RECHECK_BLOCKS << failures.saturating_sub(1).min(5)
}

/// The miner's own bookkeeping between blocks.
struct Miner {
    policy: MinerPolicy,
    joining: Arc<std::sync::Mutex<HashMap<JobId, Joining>>>,
    /// Jobs whose pay was found too low, or that were left (said once each in the log).
    turned_down: HashSet<JobId>,
    /// Jobs not considered until a height, after failed checks or joins that did not land (and
    /// how many failed): a job nobody can run, however well it pays, does not keep a place from
    /// the next best.
    backoff: HashMap<JobId, (Height, u32)>,
    /// The jobs held or wanted at the last look at every active job ([`RECHECK_BLOCKS`] apart, or
    /// when a job was submitted): the blocks between read only these, so that jobs nobody works
    /// in cost a miner's blocks nothing either.
    known: Option<Vec<JobId>>,
    /// The chain's next job id at the last block (a new job makes every active job looked at).
    next_job: u64,
}

/// Runs the miner until the node stops, joining jobs as `policy` says.
pub async fn run(context: Arc<RoleContext>, policy: MinerPolicy) {
    if policy.max_jobs == 0 {
        tracing::warn!(target: "node::miner", "miner.max_jobs is 0 in config/node.toml: this miner joins no job");
    } else {
        tracing::info!(
            target: "node::miner", max_jobs = policy.max_jobs, min_reward_per_round = policy.min_reward_per_round,
            "joining the best-paying jobs this node can run"
        );
    }
    let mut miner = Miner {
        policy,
        joining: Arc::default(),
        turned_down: HashSet::new(),
        backoff: HashMap::new(),
        known: None,
        next_job: 0,
    };
    super::drive(context, move |context, height| tick(context, &mut miner, height)).await;
}

fn required_stake(context: &RoleContext, job: &Job) -> Amount {
    job.spec.min_miner_stake.max(context.shared.ledger.params().min_miner_stake)
}

/// What one worker is paid for one round of `spec` with every worker accepted and a full share
/// each: the round's reward less the verifiers' share, over the workers.
pub fn worker_pay(params: &Params, spec: &JobSpec) -> Amount {
    let reward = spec.reward_per_round;
    let miners = reward.0.saturating_sub(fraction(reward, params.verifier_share_ppm).0);
    Amount(miners / u64::from(spec.diloco.workers_per_round.max(1)))
}

/// A job a miner is in (or joining), or could join, and what it pays a worker a round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Offer {
    pub job: JobId,
    pub pay: Amount,
    /// Whether the miner is in the job already (or its join is on its way).
    pub held: bool,
}

/// The jobs a miner works in: of the `offers`, the `policy.max_jobs` best-paying that pay at
/// least `policy.min_reward_per_round` (on equal pay, a job held before one not yet joined, then
/// the oldest). A held job left out is left: the miner commits no new work to it (its place
/// goes to a better-paying job; it is dropped from the job after missing two commitments, with
/// no slash), so a job posted to capture miners ahead of better-paying ones keeps them only as
/// long as nothing pays more.
pub fn jobs_to_hold(policy: &MinerPolicy, mut offers: Vec<Offer>) -> Vec<JobId> {
    offers.retain(|offer| offer.pay.0 >= policy.min_reward_per_round);
    offers.sort_by(|a, b| b.pay.cmp(&a.pay).then(b.held.cmp(&a.held)).then(a.job.cmp(&b.job)));
    offers.into_iter().take(policy.max_jobs as usize).map(|offer| offer.job).collect()
}

fn tick(context: &Arc<RoleContext>, miner: &mut Miner, height: Height) {
    let me = context.key.address();
    let bonded = {
        let view = context.shared.ledger.store().pending_state();
        read::<Stake>(&view, &keys::stake(Role::Miner, &me)).ok().flatten().map_or(Amount::ZERO, |s| s.bonded)
    };
    let params = context.shared.ledger.params().clone();
    // A job submitted since the last look is looked at at once (the next job id moved).
    let next_job: u64 = {
        let view = context.shared.ledger.store().pending_state();
        read(&view, keys::NEXT_JOB).ok().flatten().unwrap_or(0)
    };
    let look_at_all = miner.known.is_none()
        || height.0 % RECHECK_BLOCKS == 0
        || next_job != std::mem::replace(&mut miner.next_job, next_job);
    let jobs = match &miner.known {
        Some(known) if !look_at_all => known
            .iter()
            .chain(miner.joining.lock().unwrap_or_else(|p| p.into_inner()).keys())
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .filter_map(|id| context.job(*id).filter(|job| job.status == JobStatus::Active))
            .collect(),
        _ => context.active_jobs(),
    };
    // A job whose submitter asked to cancel it still runs its current round to the end: work
    // committed to it is revealed (an unrevealed commitment is a freeloader's), but nobody joins it.
    let active: Vec<Job> = jobs;
    // Joins settle: landed (we are in the job) or the job ended, and the entry goes; a failed
    // check, or a join that did not land within `JOIN_PATIENCE_BLOCKS` (a full job), backs the job
    // off and has every active job looked at again at once, for the next best.
    let mut failed_now = false;
    let joining: HashMap<JobId, Joining> = {
        let backoff = &mut miner.backoff;
        let mut joining = miner.joining.lock().unwrap_or_else(|p| p.into_inner());
        joining.retain(|job, state| {
            let pending = active.iter().any(|j| j.id == *job && !j.miners.iter().any(|m| m.address == me));
            let expired = matches!(state, Joining::Sent(at) if height.0 >= at.0.saturating_add(JOIN_PATIENCE_BLOCKS));
            if pending && (expired || *state == Joining::Failed) {
                let (until, failures) = backoff.entry(*job).or_insert((height, 0));
                *failures += 1;
                *until = Height(height.0.saturating_add(backoff_blocks(*failures)));
                context.forget(&Work::SendJoin { job: *job });
                failed_now = true;
                return false;
            }
            pending
        });
        joining.clone()
    };
    // What each job offers: those we are in (not ejected) or whose join is sent hold a place;
    // those we could join (being checked, or not yet) are candidates.
    let cap = params.max_miners_per_job as usize;
    let mut offers = Vec::new();
    for job in &active {
        let pay = worker_pay(&params, &job.spec);
        let held = match (job.miners.iter().find(|m| m.address == me), joining.get(&job.id)) {
            (Some(entry), _) if entry.ejected => continue,
            (Some(_), _) | (None, Some(Joining::Sent(_))) => true,
            (None, Some(_)) => false,
            (None, None) => {
                let backed_off = miner.backoff.get(&job.id).is_some_and(|(until, _)| height < *until);
                // The chain counts the miners still in the job (dropped and ejected ones keep
                // their records): so does the miner.
                let full = job.miners.iter().filter(|m| !m.ejected).count() >= cap;
                if job.cancel_requested || backed_off || full || bonded < required_stake(context, job) {
                    continue;
                }
                false
            }
        };
        if pay.0 < miner.policy.min_reward_per_round && miner.turned_down.insert(job.id) {
            tracing::info!(
                target: "node::miner", job = %job.id, pay = pay.0, least = miner.policy.min_reward_per_round,
                "not working in a job that pays a worker less a round than miner.min_reward_per_round"
            );
        }
        offers.push(Offer { job: job.id, pay, held });
    }
    // The jobs worked in are chosen among those held: a candidate takes a place only once its
    // check passed and its join went out, so a better-paying job nobody can run never stops work.
    let work = jobs_to_hold(&miner.policy, offers.iter().filter(|o| o.held).copied().collect());
    let wanted = jobs_to_hold(&miner.policy, offers.clone());
    if look_at_all {
        let ids: HashSet<JobId> = active.iter().map(|job| job.id).collect();
        miner.turned_down.retain(|job| ids.contains(job));
        miner.backoff.retain(|job, _| ids.contains(job));
        context.forget_jobs_other_than(&ids);
    }
    miner.known = if failed_now {
        None
    } else if look_at_all {
        Some(offers.iter().filter(|o| o.held || wanted.contains(&o.job)).map(|o| o.job).collect())
    } else {
        miner.known.take()
    };
    for offer in offers.iter().filter(|o| o.held && !work.contains(&o.job)) {
        if miner.turned_down.insert(offer.job) {
            tracing::info!(target: "node::miner", job = %offer.job, pay = offer.pay.0, "leaving a job for better-paying ones (miner.max_jobs): committing no new work to it");
        }
    }
    for job in &active {
        #[cfg(feature = "adversary")]
        if context.behaviour == Behaviour::LyingPeer {
            if let Some(round) = context.round(job.id, job.current_round).filter(|r| r.phase == Phase::Verifying) {
                adversary::hoard_trails(context, &round);
            }
        }
        let Some(entry) = job.miners.iter().find(|m| m.address == me) else {
            if wanted.contains(&job.id) && !joining.contains_key(&job.id) {
                consider_joining(context, job, height, &miner.joining);
            }
            continue;
        };
        if entry.ejected {
            continue;
        }
        let Some(round) = context.round(job.id, job.current_round) else { continue };
        let Some(worker) = worker_index(&round, &me) else { continue };
        let mine = round.commits.iter().find(|c| c.miner == me);
        match (round.phase, mine) {
            (Phase::Open, None) if height <= round.commit_deadline && work.contains(&job.id) => {
                commit_phase(context, job, &round, worker)
            }
            // Work committed is revealed whatever the policy says now (an unrevealed commitment
            // is a freeloader's).
            (Phase::Revealing, Some(commit)) if commit.reveal.is_none() && height <= round.reveal_deadline => {
                reveal_phase(context, job, &round, worker, commit.binding)
            }
            _ => {}
        }
    }
}

/// Joins `job` once a check says this node can run it; logs why not otherwise (and checks again
/// after a back-off, [`backoff_blocks`]: a submitter's node may start serving its dataset later).
/// `joining` follows the job from the check until the join shows on chain or is given up.
fn consider_joining(
    context: &Arc<RoleContext>,
    job: &Job,
    height: Height,
    joining: &Arc<std::sync::Mutex<HashMap<JobId, Joining>>>,
) {
    if !context.start_once(Work::CheckRunnable { job: job.id, period: height.0 / RECHECK_BLOCKS }) {
        return;
    }
    joining.lock().unwrap_or_else(|p| p.into_inner()).insert(job.id, Joining::Checking);
    let (context, job, joining) = (context.clone(), job.clone(), joining.clone());
    tokio::spawn(async move {
        let outcome = match runnable(&context, &job).await {
            Ok(()) if context.start_once(Work::SendJoin { job: job.id }) => {
                match context.submit(TxKind::JoinJob { job: job.id }) {
                    Ok(_) => Joining::Sent(context.height()),
                    Err(error) => {
                        tracing::warn!(target: "node::miner", job = %job.id, %error, "cannot join");
                        Joining::Failed
                    }
                }
            }
            Ok(()) => {
                tracing::debug!(target: "node::miner", job = %job.id, "our join was sent before and did not land (a full job?)");
                Joining::Failed
            }
            Err(error) => {
                tracing::warn!(
                    target: "node::miner",
                    job = %job.id, reason = format!("{error:#}"),
                    "not joining a job this node cannot run (checking again later, less often each time)"
                );
                Joining::Failed
            }
        };
        joining.lock().unwrap_or_else(|p| p.into_inner()).insert(job.id, outcome);
    });
}

/// What a miner checks before joining a job: its dataset is served and can give every worker
/// slot its batches, its model can be built and its checkpoints fit the blob limit, and in a
/// groth16 job its proving key fits the spec and its verifying key is that key's (a job whose
/// verifying key belongs to another setup would reject every honest proof).
async fn runnable(context: &RoleContext, job: &Job) -> anyhow::Result<()> {
    let spec = &job.spec;
    let zk = ZkJob::of(spec)?;
    let dataset = context.dataset(spec.dataset_root).await.context("the job's dataset")?;
    let schedule = trellis_trainer::job::schedule(spec);
    for worker in 0..spec.diloco.workers_per_round as usize {
        schedule
            .shards_of(&dataset, 0, worker)
            .with_context(|| format!("the dataset cannot serve worker slot {worker}"))?;
    }
    match zk {
        Some(zk) => {
            let proving_key = context.proving_key(zk.proving_key).await?;
            let deadline = tokio::time::Instant::now() + jobdata::FETCH_PATIENCE;
            let verifying_key = context
                .net
                .fetch_until(BlobKey::new(BlobKind::Data, zk.verifying_key), deadline, jobdata::MAX_ZK_KEY_BYTES)
                .await
                .context("the job's verifying key")?;
            trellis_verifier::groth16::check_keys(spec, &zk, &proving_key, &verifying_key)?;
        }
        None => {
            // Counted before anything is built: a job's model may be gigabytes, and a job this
            // node cannot run is checked again every few blocks.
            let parameters = trellis_protocol::model::parameter_count(&spec.model);
            let checkpoint_bytes = spec.verification.checkpoint_state.bytes_per_parameter().saturating_mul(parameters);
            if checkpoint_bytes > MAX_BLOB_BYTES {
                bail!("a checkpoint of this model takes {checkpoint_bytes} bytes, over the blob limit of {MAX_BLOB_BYTES}");
            }
            let (model, seed) = (spec.model.clone(), spec.init_seed);
            tokio::task::spawn_blocking(move || Gpt::new(&model, seed, tch::Device::Cpu).map(drop))
                .await
                .context("building the job's model")?
                .context("the job's model")?;
        }
    }
    Ok(())
}

/// Open round, nothing committed yet: commit from the stage, or train to fill it.
fn commit_phase(context: &Arc<RoleContext>, job: &Job, round: &RoundState, worker: usize) {
    let me = context.key.address();
    let label = Work::SendCommit { job: job.id, round: round.round };
    #[cfg(feature = "adversary")]
    if context.behaviour == Behaviour::Copy {
        if let Some(copied) = adversary::copied_commitment(context, job, round) {
            send(context, copied);
        }
        return;
    }
    if let Some((_, reveal)) = Stage::open(&context.work_dir, job.id.0, round.round) {
        if context.start_once(label) {
            send(
                context,
                TxKind::CommitWork(WorkCommitment { job: job.id, round: round.round, binding: reveal.binding(&me) }),
            );
        }
        return;
    }
    prepare(context, job, round, worker);
}

/// Reveal phase, our commitment recorded: publish the staged blobs and reveal. With no stage
/// (a restart lost it) train again: the work is deterministic, so it fits the commitment.
fn reveal_phase(context: &Arc<RoleContext>, job: &Job, round: &RoundState, worker: usize, binding: Hash) {
    let me = context.key.address();
    let Some((stage, reveal)) = Stage::open(&context.work_dir, job.id.0, round.round) else {
        #[cfg(feature = "adversary")]
        if !context.behaviour.works() {
            return;
        }
        prepare(context, job, round, worker);
        return;
    };
    if reveal.binding(&me) != binding {
        tracing::error!(target: "node::miner", job = %job.id, round = round.round, "the staged work is not what we committed; skipping the round");
        return;
    }
    if !context.start_once(Work::SendReveal { job: job.id, round: round.round }) {
        return;
    }
    #[cfg(feature = "adversary")]
    let publishes = context.behaviour != Behaviour::Withhold;
    #[cfg(not(feature = "adversary"))]
    let publishes = true;
    if publishes {
        match stage.publish(context.net.store()) {
            Ok(keys) => {
                if let Err(error) = context.net.store().tag_round(job.id, round.round, &keys) {
                    tracing::warn!(target: "node::miner", %error, "cannot tag the round's blobs");
                }
            }
            Err(error) => {
                tracing::error!(target: "node::miner", job = %job.id, round = round.round, error = format!("{error:#}"), "cannot publish the round's blobs");
                context.forget(&Work::SendReveal { job: job.id, round: round.round });
                return;
            }
        }
    }
    send(context, TxKind::RevealWork(reveal));
}

fn send(context: &RoleContext, kind: TxKind) {
    let name = kind.name();
    if let Err(error) = context.submit(kind) {
        tracing::warn!(target: "node::miner", %error, "cannot send {name}");
    }
}

/// Trains the round (once) into its stage, then commits if the round is still open.
fn prepare(context: &Arc<RoleContext>, job: &Job, round: &RoundState, worker: usize) {
    let label = Work::Train { job: job.id, round: round.round };
    if !context.start_once(label.clone()) {
        return;
    }
    let (context, job, round) = (context.clone(), job.clone(), round.clone());
    tokio::spawn(async move {
        match train_round(&context, &job, &round, worker).await {
            Ok(reveal) => {
                let open = context.round(job.id, round.round).is_some_and(|r| r.phase == Phase::Open)
                    && context.height() <= round.commit_deadline;
                if open && context.start_once(Work::SendCommit { job: job.id, round: round.round }) {
                    let binding = reveal.binding(&context.key.address());
                    send(&context, TxKind::CommitWork(WorkCommitment { job: job.id, round: round.round, binding }));
                } else if !open {
                    tracing::debug!(target: "node::miner", job = %job.id, round = round.round, "work staged after the commit phase");
                }
            }
            Err(error) => {
                let now = context.round(job.id, round.round);
                if now.as_ref().is_some_and(|r| r.phase != Phase::Open || context.height() > r.commit_deadline) {
                    // The round moved on mid-training (and its stage was collected): the error is
                    // that, whatever the failed file operation says.
                    tracing::warn!(
                        target: "node::miner",
                        job = %job.id, round = round.round, commit_deadline = round.commit_deadline.0,
                        "the round's commit window closed before its training ended; the work is dropped \
                         (this machine needs a job with a longer commit_blocks)"
                    );
                } else {
                    tracing::error!(target: "node::miner", job = %job.id, round = round.round, error = format!("{error:#}"), "training failed");
                }
                context.forget(&label);
            }
        }
    });
}

/// A round's work waiting for its reveal: `DIR/stage-jobJ-roundR/` holds the blobs as
/// `TAG-HEX` files and, once complete, the reveal (its canonical bytes) in `reveal`.
pub(super) struct Stage {
    dir: PathBuf,
}

impl Stage {
    fn dir(work_dir: &Path, job: u64, round: u32) -> PathBuf {
        work_dir.join(format!("stage-job{job}-round{round}"))
    }

    /// An empty stage (anything left from an interrupted attempt is removed).
    pub(super) fn create(work_dir: &Path, job: u64, round: u32) -> anyhow::Result<Stage> {
        let dir = Self::dir(work_dir, job, round);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Stage { dir })
    }

    /// A complete stage and its reveal.
    fn open(work_dir: &Path, job: u64, round: u32) -> Option<(Stage, WorkReveal)> {
        let dir = Self::dir(work_dir, job, round);
        let reveal = decode(&std::fs::read(dir.join("reveal")).ok()?).ok()?;
        Some((Stage { dir }, reveal))
    }

    fn blob_path(&self, key: &BlobKey) -> PathBuf {
        self.dir.join(format!("{}-{}", key.kind.tag(), key.hash.to_hex()))
    }

    /// Writes a blob durably (temporary file, sync, rename).
    pub(super) fn put(&self, key: BlobKey, bytes: &[u8]) -> anyhow::Result<BlobKey> {
        write_durably(&self.blob_path(&key), bytes)?;
        Ok(key)
    }

    fn put_data(&self, bytes: &[u8]) -> anyhow::Result<BlobKey> {
        self.put(BlobKey::new(BlobKind::Data, data_hash(bytes)), bytes)
    }

    /// Copies a file that stays where it is (a carried checkpoint) into the stage, through the disk.
    fn copy_file(&self, key: BlobKey, path: &Path) -> anyhow::Result<()> {
        std::fs::copy(path, self.blob_path(&key)).with_context(|| format!("staging a copy of {}", path.display()))?;
        Ok(())
    }

    /// Moves a file already on disk (a checkpoint the inner loop wrote) into the stage.
    fn put_file(&self, key: BlobKey, path: &Path) -> anyhow::Result<()> {
        std::fs::rename(path, self.blob_path(&key)).with_context(|| format!("staging {}", path.display()))
    }

    /// Marks the stage complete.
    pub(super) fn seal(&self, reveal: &WorkReveal) -> anyhow::Result<()> {
        write_durably(&self.dir.join("reveal"), &reveal.to_bytes())
    }

    /// Moves every staged blob into `store` (each checked against its address) and returns
    /// their keys. The reveal stays until the round is over.
    fn publish(&self, store: &BlobStore) -> anyhow::Result<Vec<BlobKey>> {
        let mut keys = Vec::new();
        for entry in std::fs::read_dir(&self.dir).with_context(|| format!("reading {}", self.dir.display()))? {
            let path = entry?.path();
            let Some(name) = path.file_name().and_then(|n| n.to_str()) else { continue };
            let Some((tag, hex)) = name.split_once('-') else { continue };
            let (Some(kind), Ok(hash)) = (tag.parse().ok().and_then(BlobKind::from_tag), hex.parse::<Hash>()) else {
                continue;
            };
            let key = BlobKey::new(kind, hash);
            store.put_file(&key, &path).with_context(|| format!("publishing {key}"))?;
            keys.push(key);
        }
        Ok(keys)
    }

    /// Removes the stages of `job`'s rounds before `keep_from`.
    fn collect(work_dir: &Path, job: u64, keep_from: u32) {
        for round in 0..keep_from {
            let _ = std::fs::remove_dir_all(Self::dir(work_dir, job, round));
        }
    }
}

fn write_durably(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write as _;
    let temporary = path.with_extension("tmp");
    let mut file = std::fs::File::create(&temporary).with_context(|| format!("creating {}", temporary.display()))?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&temporary, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// The jobs this node keeps local files of in `work_dir` (stages, residuals, carried
/// checkpoints: every name holds `-job{J}-round`), which garbage collection must visit.
pub(super) fn jobs_with_local_files(work_dir: &Path) -> HashSet<JobId> {
    std::fs::read_dir(work_dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name();
            let (_, rest) = name.to_str()?.split_once("-job")?;
            let (job, _) = rest.split_once("-round")?;
            Some(JobId(job.parse().ok()?))
        })
        .collect()
}

/// Where the residual left by this miner's error-feedback encoding of round `round` is kept.
fn residual_path(work_dir: &Path, job: u64, round: u32) -> PathBuf {
    work_dir.join(format!("residual-job{job}-round{round}.bf16"))
}

/// Where this miner keeps its final checkpoint of a streaming job's round `round`: the state its
/// next round continues when the chain accepts this one (`docs/protocol.md` §2.9). The store's
/// copy goes with the round's blobs; this one stays until the round after next opens.
fn carry_path(work_dir: &Path, job: u64, round: u32) -> PathBuf {
    work_dir.join(format!("carry-job{job}-round{round}.ckpt"))
}

/// Deletes this node's local files of `job`'s rounds before `keep_from`: a miner's stages, and
/// its kept residuals but the one of its latest accepted round (what its next round carries);
/// all of them once the job has ended.
pub(super) fn collect_local(context: &RoleContext, job: &Job, keep_from: u32) {
    Stage::collect(&context.work_dir, job.id.0, keep_from);
    let keep = if job.status == JobStatus::Active {
        let view = context.shared.ledger.store().pending_state();
        read::<AcceptedState>(&view, &keys::accepted(job.id, &context.key.address())).ok().flatten().map(|a| a.round)
    } else {
        None
    };
    for round in 0..keep_from {
        if Some(round) != keep {
            let _ = std::fs::remove_file(residual_path(&context.work_dir, job.id.0, round));
        }
        // The latest settled round's final state is what the current round continues.
        if job.status != JobStatus::Active || round + 1 < keep_from {
            let _ = std::fs::remove_file(carry_path(&context.work_dir, job.id.0, round));
        }
    }
}

/// What a streaming round's work continues (`docs/protocol.md` §2.9): the miner's final
/// checkpoint of round `round − 1` when the chain accepted that work, its hash, and the start
/// checkpoint derived from it. `None` — a start from θ_r — in other jobs, in round 0, when the
/// previous round's work was not accepted, or when its checkpoint is not on disk any more.
struct Continued {
    previous: Hash,
    /// Where that checkpoint is on disk (verified against `previous` when read): staged from
    /// there again, so that training does not hold it in memory beside `start`.
    carry: PathBuf,
    start: Vec<u8>,
}

fn continued_start(context: &RoleContext, job: &Job, round: u32, global: &[f32]) -> Option<Continued> {
    if !trellis_protocol::fragments::is_streaming(&job.spec) {
        return None;
    }
    let accepted = {
        let view = context.shared.ledger.store().pending_state();
        read::<AcceptedState>(&view, &keys::accepted(job.id, &context.key.address())).ok().flatten()?
    };
    if Some(accepted.round) != round.checked_sub(1) {
        return None;
    }
    let path = carry_path(&context.work_dir, job.id.0, accepted.round);
    let previous_bytes = std::fs::read(&path).ok().filter(|bytes| checkpoint_hash(bytes) == accepted.final_checkpoint);
    let Some(previous_bytes) = previous_bytes else {
        tracing::warn!(target: "node::miner", job = %job.id, round, "the accepted state of the previous round is not on disk; starting from the global model");
        return None;
    };
    match trellis_trainer::job::continued_start_checkpoint(&job.spec, round, global, &previous_bytes) {
        Ok(start) => Some(Continued { previous: accepted.final_checkpoint, carry: path, start }),
        Err(error) => {
            tracing::warn!(target: "node::miner", job = %job.id, round, %error, "starting from the global model");
            None
        }
    }
}

/// The residual to carry into `round`: the one this miner's latest accepted work left
/// (`AcceptedState::next_residual`, which that work's checkers recomputed exactly), read back from
/// disk. Nothing (zeros) when that work left none, or its residual is not on disk any more or not
/// those bytes: carrying nothing is always allowed, carrying anything else is refused on chain.
fn carried_residual(
    context: &RoleContext,
    job: &Job,
    round: u32,
    parameters: usize,
) -> anyhow::Result<Option<Vec<f32>>> {
    if !job.spec.diloco.encoding.has_error_feedback() {
        return Ok(None);
    }
    let view = context.shared.ledger.store().pending_state();
    let Some(accepted) = read::<AcceptedState>(&view, &keys::accepted(job.id, &context.key.address()))? else {
        return Ok(None);
    };
    if accepted.round >= round || accepted.next_residual == Hash::ZERO {
        return Ok(None);
    }
    let bytes = std::fs::read(residual_path(&context.work_dir, job.id.0, accepted.round)).ok();
    let Some(bytes) = bytes.filter(|bytes| data_hash(bytes) == accepted.next_residual) else {
        tracing::warn!(target: "node::miner", job = %job.id, round, "the residual of the latest accepted round is not on disk; error feedback starts again from zero");
        return Ok(None);
    };
    let residual = encoding::residual_from_bytes(&bytes)?;
    Ok((residual.len() == parameters).then_some(residual))
}

/// Trains one round and stages its blobs; returns the work to reveal.
async fn train_round(
    context: &Arc<RoleContext>,
    job: &Job,
    round: &RoundState,
    worker: usize,
) -> anyhow::Result<WorkReveal> {
    let started = std::time::Instant::now();
    #[cfg(feature = "adversary")]
    if context.behaviour == Behaviour::SkipWork {
        return adversary::skip_work(context, job, round.round);
    }
    let dataset = context.dataset(job.spec.dataset_root).await.context("fetching the dataset")?;
    let global = jobdata::global_weights(&context.net, job).await.context("fetching the global model")?;
    let carried = carried_residual(context, job, round.round, global.len())?;
    let continued = continued_start(context, job, round.round, &global);
    let zk = ZkJob::of(&job.spec)?;
    let proving_key = match &zk {
        Some(zk) => Some(context.proving_key(zk.proving_key).await?),
        None => None,
    };
    let fetched = started.elapsed();
    let (context2, job2, round2, round_number) = (context.clone(), job.clone(), round.clone(), round.round);
    #[cfg(feature = "adversary")]
    let behaviour = context.behaviour;
    let reveal = tokio::task::spawn_blocking(move || -> anyhow::Result<WorkReveal> {
        let spec = &job2.spec;
        std::fs::create_dir_all(&context2.work_dir)?;
        let stage = Stage::create(&context2.work_dir, job2.id.0, round_number)?;
        let began = std::time::Instant::now();
        let (trail, final_weights) = if let (Some(zk), Some(key)) = (&zk, &proving_key) {
            // groth16: train in fixed point and prove every segment (a fake-trail miner records
            // checkpoints it never computed next to proofs of the real steps).
            let training = ZkTraining {
                job_id: job2.id,
                spec,
                job: zk,
                proving_key: key,
                dataset: dataset.as_ref(),
                round: round_number,
                worker,
                #[cfg(feature = "adversary")]
                fake_checkpoints: behaviour == Behaviour::FakeTrail,
            };
            let done = training.run(&global)?;
            for (entry, bytes) in done.trail.checkpoints.iter().zip(&done.checkpoints) {
                stage.put(BlobKey::new(BlobKind::Checkpoint, entry.hash), bytes)?;
            }
            for proof in &done.proofs {
                stage.put_data(proof)?;
            }
            (done.trail, done.final_weights)
        } else {
            let inputs = RoundInputs {
                job: job2.id,
                spec,
                round: round_number,
                worker,
                global: &global,
                dataset: dataset.as_ref(),
                device: context2.device,
                work_dir: &context2.work_dir,
                stage: &stage,
                held_start: continued.as_ref().map(|c| c.start.as_slice()),
                #[cfg(feature = "adversary")]
                slowdown: if behaviour == Behaviour::Straggler { 3 } else { 1 },
                #[cfg(not(feature = "adversary"))]
                slowdown: 1,
            };
            #[cfg(feature = "adversary")]
            let dishonest = adversary::dishonest_trail(behaviour, &inputs)?;
            #[cfg(not(feature = "adversary"))]
            let dishonest = None;
            match dishonest {
                Some(made_up) => made_up,
                None => {
                    let steps = u64::from(spec.diloco.inner_steps);
                    let fewest = u64::from(spec.diloco.min_inner_steps);
                    let mut stop = || straggler_may_stop(&context2, &job2, &round2);
                    let stop_early: Option<(u64, &mut dyn FnMut() -> bool)> =
                        (fewest < steps).then_some((fewest, &mut stop));
                    let (checkpoints, losses, weights) =
                        train_trail(&inputs, steps, u64::from(spec.verification.checkpoint_interval), stop_early)?;
                    // An honest round's trail holds a checkpoint where each of the segments of
                    // the steps it trained ends.
                    debug_assert_eq!(
                        checkpoints.len() as u32,
                        trellis_protocol::trail::checkpoint_count(
                            losses.len() as u32,
                            spec.verification.checkpoint_interval
                        ),
                        "an honest trail has one checkpoint per segment end and the start"
                    );
                    (canonical_trail(job2.id, spec, round_number, worker, checkpoints, losses)?, weights)
                }
            }
        };
        let compute = began.elapsed();
        let continues = match &continued {
            Some(continued) => {
                // Served again this round: its checkers derive the start state from it.
                stage.copy_file(BlobKey::new(BlobKind::Checkpoint, continued.previous), &continued.carry)?;
                continued.previous
            }
            None => Hash::ZERO,
        };
        if trellis_protocol::fragments::is_streaming(spec) {
            if let Some(last) = trail.checkpoints.last() {
                let staged = stage.blob_path(&BlobKey::new(BlobKind::Checkpoint, last.hash));
                if staged.exists() {
                    std::fs::copy(&staged, carry_path(&context2.work_dir, job2.id.0, round_number))
                        .context("keeping the final state for the next round")?;
                }
            }
        }
        let mut trail = trail;
        let (delta, final_moments) = round_delta(&stage, spec, &global, &trail, final_weights)?;
        trail.final_moments = final_moments;
        let trail_key = stage.put(BlobKey::new(BlobKind::Trail, trail.hash()), &trail.to_bytes())?;
        #[cfg(feature = "adversary")]
        let delta = adversary::poison(behaviour, delta, round_number, worker);
        // A diverged round has no Δ to send: committing bytes that do not decode would be judged
        // a poisoner's work. The round is dropped with the reason (and not paid).
        encoding::check_finite(&delta).map_err(|error| {
            anyhow::anyhow!("the round's Δ is not finite ({error}): training diverged; the round is not committed")
        })?;
        let (encoded, residual_hash, next_residual) = match spec.diloco.encoding {
            quantised if quantised.has_error_feedback() => {
                // Error feedback: what quantisation lost in our latest accepted round (recorded on
                // chain, checked exactly by that round's checkers) is added to this round's Δ and
                // published; the residual this round leaves is named in the reveal, for this
                // round's checkers to recompute, and kept for the next round if this one is accepted.
                let carried = carried.unwrap_or_else(|| vec![0.0; delta.len()]);
                let mut feedback = ErrorFeedback::with_residual(carried.clone());
                let encoded = feedback.encode(quantised, &delta).context("encoding the round's Δ")?;
                std::fs::write(
                    residual_path(&context2.work_dir, job2.id.0, round_number),
                    encoding::residual_to_bytes(feedback.residual()),
                )?;
                let carried_hash = encoding::residual_hash(&carried);
                if carried_hash != Hash::ZERO {
                    stage.put_data(&encoding::residual_to_bytes(&carried))?;
                }
                (encoded, carried_hash, encoding::residual_hash(feedback.residual()))
            }
            // An f16 value beyond ±65504 rounds to infinity: no aggregator decodes it, so the
            // round is dropped like a diverged one rather than committed.
            other => (
                encoding::encode_finite(other, &delta).map_err(|error| {
                    anyhow::anyhow!("the round's Δ has no {other} encoding ({error}); the round is not committed")
                })?,
                Hash::ZERO,
                Hash::ZERO,
            ),
        };
        let delta_key = stage.put_data(&encoded)?;
        let final_checkpoint = trail.checkpoints.last().map(|e| e.hash).unwrap_or_default();
        let steps = u32::try_from(trail.losses.len()).context("more steps than a trail holds")?;
        let reveal = WorkReveal {
            job: job2.id,
            round: round_number,
            trail: trail_key.hash,
            final_checkpoint,
            delta_hash: delta_key.hash,
            residual_hash,
            steps,
            continues,
            next_residual,
        };
        stage.seal(&reveal)?;
        let mean_loss = trail.losses.iter().map(|l| f64::from(*l)).sum::<f64>() / trail.losses.len().max(1) as f64;
        tracing::info!(
            target: "node::miner",
            job = %job2.id, round = round_number, worker, mean_loss = format!("{mean_loss:.4}"),
            train_s = format!("{:.2}", compute.as_secs_f64()), delta_bytes = encoded.len(), steps,
            tokens = tokens_of(spec, steps), continued = continues != Hash::ZERO, "trained"
        );
        Ok(reveal)
    })
    .await
    .context("the training thread stopped")??;
    tracing::debug!(target: "node::miner", fetch_s = fetched.as_secs_f64(), total_s = started.elapsed().as_secs_f64(), "round work staged");
    Ok(reveal)
}

/// Whether a worker of a job that takes work from `min_inner_steps` steps may stop now (asked
/// after each of its steps from that many on): once every other worker of the round has
/// committed — the round then waits only for this one, so waiting for H steps would hold it —
/// or once the chain is within [`straggler_margin`] blocks of the commit deadline (staging and
/// committing take blocks too), or the round is not open any more.
///
/// A miner that loses its stage after committing cannot re-train to the same step count (the
/// moment it stopped is not recorded elsewhere) and skips the round's reveal; a job with
/// `min_inner_steps = inner_steps` re-trains to the same H steps as before.
fn straggler_may_stop(context: &RoleContext, job: &Job, round: &RoundState) -> bool {
    if context.height().0.saturating_add(straggler_margin(&job.spec)) >= round.commit_deadline.0 {
        return true;
    }
    let Some(now) = context.round(job.id, round.round) else { return true };
    if now.phase != Phase::Open {
        return true;
    }
    let me = context.key.address();
    let mut others = now.workers.iter().filter(|w| **w != me).peekable();
    others.peek().is_some() && others.all(|w| now.commits.iter().any(|c| &c.miner == w))
}

/// Blocks before the commit deadline at which a straggler stops: a tenth of the commit window,
/// at least 2 (its Δ is encoded and staged, then its commitment must be included in a block).
pub fn straggler_margin(spec: &JobSpec) -> u64 {
    (u64::from(spec.commit_blocks) / 10).max(2)
}

/// The round's Δ and the trail's `final_moments`. In a job whose Δ is its final checkpoint's drift
/// (`delta_is_drift`): that drift, negated, read from the staged final checkpoint, and the hash of
/// the checkpoint's other part, so that checkers need not download it (`docs/protocol.md` §3.2).
/// In other jobs, and when no final checkpoint was staged (a made-up trail, whose checkers find
/// the link broken): `θ_r − θ_final` and zero. The final weights are let go of before the
/// checkpoint is read (at most the checkpoint's bytes and the Δ are held at once).
fn round_delta(
    stage: &Stage,
    spec: &JobSpec,
    global: &[f32],
    trail: &Trail,
    final_weights: Vec<f32>,
) -> anyhow::Result<(Vec<f32>, Hash)> {
    let final_checkpoint = trail.checkpoints.last().map(|e| e.hash).unwrap_or_default();
    let path = stage.blob_path(&BlobKey::new(BlobKind::Checkpoint, final_checkpoint));
    let base = trellis_trainer::job::compact_base(spec, global);
    if !trellis_protocol::trail::delta_is_drift(spec) || base.is_none() || !path.exists() {
        // A streaming round's Δ holds the fragment it synchronises alone.
        let span = trellis_protocol::fragments::round_span(spec, trail.round, global.len());
        let (global, local) =
            (global.get(span.clone()).unwrap_or_default(), final_weights.get(span).unwrap_or_default());
        return Ok((pseudo_gradient(global, local), Hash::ZERO));
    }
    drop(final_weights);
    let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    let parts = trellis_trainer::checkpoint::compact_parts(&bytes).context("the final checkpoint is not compact")?;
    let mut delta = CheckpointView::parse(&bytes, base)
        .context("reading the final checkpoint")?
        .drift()
        .context("the final checkpoint has no drift")?;
    delta.iter_mut().for_each(|d| *d = -*d);
    Ok((delta, parts.rest))
}

/// What training a round's trail needs.
pub(super) struct RoundInputs<'a> {
    pub job: JobId,
    pub spec: &'a JobSpec,
    pub round: u32,
    pub worker: usize,
    pub global: &'a [f32],
    pub dataset: &'a Dataset,
    pub device: tch::Device,
    pub work_dir: &'a Path,
    pub stage: &'a Stage,
    /// The start checkpoint this round continues from (a streaming round after an accepted one,
    /// [`continued_start`]); `None`: the canonical start from θ_r.
    pub held_start: Option<&'a [u8]>,
    /// How many times its own speed this miner takes per step: 1, or 3 for a `straggler`
    /// (a slow machine staged in devnets; it waits out the difference after each step).
    pub slowdown: u32,
}

/// Trains `steps` AdamW steps of the round from its canonical start state, checkpointing every
/// `interval` steps into the stage: the trail's checkpoints, the losses and the final weights.
/// With `stop_early = Some((min, stop))`, training ends after the first step from the `min`-th
/// on at which `stop()` says so (a straggler, [`straggler_may_stop`]).
pub(super) fn train_trail(
    inputs: &RoundInputs<'_>,
    steps: u64,
    interval: u64,
    stop_early: Option<(u64, &mut dyn FnMut() -> bool)>,
) -> anyhow::Result<(Vec<TrailEntry>, Vec<f32>, Vec<f32>)> {
    let spec = inputs.spec;
    let (mut model, mut optimizer) = match inputs.held_start {
        Some(start) => trellis_trainer::job::state_from_checkpoint(spec, inputs.global, start, inputs.device)?,
        None => trellis_trainer::job::start_state(spec, inputs.round, inputs.global, inputs.device)?,
    };
    let start_step = optimizer.step;
    let dir = inputs.work_dir.join(format!("job{}-round{}", inputs.job, inputs.round));
    let _ = std::fs::remove_dir_all(&dir);
    let schedule = trellis_trainer::job::schedule(spec);
    let inner = InnerLoop {
        dataset: inputs.dataset,
        schedule: &schedule,
        round: u64::from(inputs.round),
        worker: inputs.worker,
        checkpoint_interval: interval,
        trail_dir: Some(&dir),
        compact_base: trellis_trainer::job::compact_base(spec, inputs.global),
    };
    let mut last = std::time::Instant::now();
    let mut pace = |_: u64, _: f32| {
        if inputs.slowdown > 1 {
            std::thread::sleep(last.elapsed() * (inputs.slowdown - 1));
        }
        last = std::time::Instant::now();
    };
    let outcome = match (stop_early, inputs.held_start) {
        (_, Some(start)) => {
            // The held start is the trail's first checkpoint, as its checkers derive it.
            let mut outcome = inner.train_steps_from_held_start(&mut model, &mut optimizer, steps, &mut pace)?;
            let entry = TrailEntry { step: start_step, hash: checkpoint_hash(start) };
            inputs.stage.put(BlobKey::new(BlobKind::Checkpoint, entry.hash), start)?;
            outcome.trail.checkpoints.insert(0, entry);
            outcome
        }
        (Some((min, stop)), None) => {
            inner.train_steps_until(&mut model, &mut optimizer, steps, min, stop, &mut pace)?
        }
        (None, None) => inner.train_steps(&mut model, &mut optimizer, steps, &mut pace)?,
    };
    let held = usize::from(inputs.held_start.is_some());
    for entry in &outcome.trail.checkpoints[held..] {
        inputs.stage.put_file(BlobKey::new(BlobKind::Checkpoint, entry.hash), &checkpoint_path(&dir, entry.step))?;
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok((outcome.trail.checkpoints, outcome.trail.losses, model.flat_weights()))
}

/// The trail a miner publishes: the job, round and slot as the chain has them, the job's
/// interval, and the checkpoints and losses of the inner loop.
pub(super) fn canonical_trail(
    job: trellis_proto::JobId,
    spec: &JobSpec,
    round: u32,
    worker: usize,
    checkpoints: Vec<TrailEntry>,
    losses: Vec<f32>,
) -> anyhow::Result<Trail> {
    Ok(Trail {
        job,
        round,
        worker: u32::try_from(worker).context("worker slot out of range")?,
        checkpoint_interval: spec.verification.checkpoint_interval,
        checkpoints,
        losses,
        proofs: Vec::new(),
        final_moments: Hash::ZERO,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offer(job: u64, pay: u64, held: bool) -> Offer {
        Offer { job: JobId(job), pay: Amount(pay), held }
    }

    /// A flood of cheap jobs (a token of escrow each) takes no place from a job that pays: the
    /// best-paying are held, none below the least, no more than `max_jobs`; a job held already
    /// keeps its place against one paying the same, and gives it up to one paying more.
    #[test]
    fn a_miner_holds_the_best_paying_jobs_it_has_places_for_and_none_below_its_least() {
        let policy = MinerPolicy { max_jobs: 2, min_reward_per_round: 10 };
        let mut offers: Vec<Offer> = (0..50).map(|id| offer(id, 1, false)).collect();
        offers.extend([offer(60, 300, false), offer(61, 10, false), offer(62, 300, false)]);
        assert_eq!(jobs_to_hold(&policy, offers.clone()), vec![JobId(60), JobId(62)], "best pay, then oldest");

        // Held since before: a cheap job joined first (the flood came before the paying job).
        let mut captured = offers.clone();
        captured[3].held = true;
        assert_eq!(jobs_to_hold(&policy, captured.clone()), vec![JobId(60), JobId(62)], "the cheap job is left");
        let any = MinerPolicy::default();
        assert_eq!(any, MinerPolicy { max_jobs: 1, min_reward_per_round: 0 });
        assert_eq!(jobs_to_hold(&any, captured[..10].to_vec()), vec![JobId(3)], "held beats equal pay");
        assert_eq!(jobs_to_hold(&any, captured), vec![JobId(60)], "more pay beats held");
        assert_eq!(jobs_to_hold(&any, offers[..3].to_vec()), vec![JobId(0)], "by default any pay, one job");
        assert!(jobs_to_hold(&MinerPolicy { max_jobs: 0, ..any }, offers.clone()).is_empty());
        let held_below = vec![offer(7, 9, true), offer(8, 500, true)];
        assert_eq!(jobs_to_hold(&policy, held_below), vec![JobId(8)], "a held job below the least is left");
    }

    #[test]
    fn a_job_that_fails_its_check_is_looked_at_less_often_each_time() {
        let blocks: Vec<u64> = [1, 2, 3, 6, 7, 1_000].iter().map(|&n| backoff_blocks(n)).collect();
        assert_eq!(
            blocks,
            vec![
                RECHECK_BLOCKS,
                2 * RECHECK_BLOCKS,
                4 * RECHECK_BLOCKS,
                32 * RECHECK_BLOCKS,
                32 * RECHECK_BLOCKS,
                32 * RECHECK_BLOCKS
            ]
        );
    }

    #[test]
    fn the_jobs_of_local_files_are_read_from_their_names() {
        let dir = tempfile::tempdir().unwrap();
        Stage::create(dir.path(), 7, 2).unwrap();
        std::fs::write(residual_path(dir.path(), 12, 0), b"r").unwrap();
        std::fs::write(carry_path(dir.path(), 12, 3), b"c").unwrap();
        std::fs::write(dir.path().join("unrelated-file"), b"u").unwrap();
        std::fs::write(dir.path().join("stage-jobX-round1"), b"x").unwrap();
        let found = jobs_with_local_files(dir.path());
        assert_eq!(found, HashSet::from([JobId(7), JobId(12)]));
        assert!(jobs_with_local_files(&dir.path().join("missing")).is_empty());
    }

    #[test]
    fn a_workers_pay_is_the_miners_part_of_the_round_over_the_workers() {
        let params = Params::default(); // verifiers take 10%
        let file: crate::commands::job::JobFile = toml::from_str(
            "name = \"t\"\nmodel = \"nano\"\ndataset = \"d\"\nescrow = 10\nreward_per_round = 1000\n\
             [diloco]\nworkers_per_round = 3\ninner_steps = 4\nrounds = 2\n\
             [verification]\ncheckpoint_interval = 2\nsegments_per_miner = 1\nmode = \"exact\"\n",
        )
        .unwrap();
        let mut spec = file.spec(Hash::ZERO, 1, None).unwrap();
        assert_eq!(worker_pay(&params, &spec), Amount(300));
        spec.reward_per_round = Amount(u64::MAX);
        assert_eq!(worker_pay(&params, &spec), Amount((u64::MAX - u64::MAX / 10) / 3));
        spec.diloco.workers_per_round = 0;
        assert!(worker_pay(&params, &spec) > Amount::ZERO, "a spec the chain refuses still has a pay, not a panic");
    }
}
