//! The validator's verification duty: for every sampled segment it is assigned, fetch the
//! miner's trail and the segment's start checkpoint from the blob exchange, check that the trail
//! is the one of this round, job and slot (its shape, from the chain's facts:
//! `trellis_protocol::trail`), check its first link (it starts from the canonical state of θ_r,
//! or in a streaming round from the start derived from the miner's accepted state it names),
//! re-execute the segment and judge its end and every step's loss, and send the verdict before
//! the window closes. In a `groth16` job the segment is not re-executed: its proof is checked
//! against the commitments to the trail's checkpoints and the scheduled batches
//! (`trellis_verifier::groth16`).
//!
//! Every check also checks the last link, that Δ encodes θ_r − θ_final. What a check downloads is
//! kept to what it cannot derive (`docs/scaling.md`): the first segment's start state is built
//! from θ_r, which every validator holds; in a job whose Δ is the final compact checkpoint's
//! drift (`trellis_protocol::trail::delta_is_drift`, the default job) the final checkpoint's hash
//! is recomputed from the Δ and the part the trail names, so it is never downloaded; in other
//! jobs a checker of the last segment in exact mode takes θ_final from its own replay, and the
//! others download the final checkpoint.
//!
//! Every assigned segment gets a verdict, and every way a check can fail has its blame
//! ([`Blame`]): the miner's data (`Invalid` with evidence, or `Unavailable` when no holder serves
//! it), the job's (its dataset, model, keys or spec cannot be used: `JobFault`, which voids the
//! job), or this node's own (its disk, its network: it tries again after the next block, and
//! after [`OWN_FAILURES`] failures abstains, so that its silence is never read as approval).

use std::sync::Arc;
use std::time::Duration;

use trellis_contracts::rounds::worker_index;
use trellis_contracts::state::{Assignment, Job, Phase, RoundState};
use trellis_proto::{Hash, InvalidReason, JobFaultReason, Trail, TxKind, Verdict, VerdictOutcome, WorkReveal};
use trellis_protocol::trail::{check_trail, segment_claim, TrailFrame};
use trellis_protocol::{Blame, Comparison};
use trellis_trainer::checkpoint::{checkpoint_hash, CheckpointView};
use trellis_verifier::segment::{
    check_claim, check_claim_reproducing, check_delta, check_delta_drift, BlobError, BlobSource, Replay,
};

use super::{RoleContext, Work};
use crate::p2p::exchange::FetchError;
use crate::roles::jobdata::{self, BlobLimits};
use crate::storage::blobs::{BlobKey, BlobKind, BlobStore};
use trellis_verifier::groth16::{self, SegmentEvidence, ZkJob};

/// How long a checker waits for a miner's blobs before calling them unavailable.
const BLOB_PATIENCE: Duration = Duration::from_secs(20);
/// How many times a checker's own failure is retried (once per block) before it abstains.
pub const OWN_FAILURES: u32 = 3;

/// Called after every block by the validator role.
/// Called after every block by the validator role: every trail revealed in a round still being
/// revealed or checked is fetched at once (a trail is small: 4 bytes a step and 40 a checkpoint),
/// so that when this node's checks are drawn, the trail is here and each check's first wait over a
/// long path is for the start checkpoint, not for the trail and then the checkpoint. A failure is
/// only logged: the check fetches what is missing.
pub fn prefetch_trails(context: &Arc<RoleContext>) {
    for job in context.working_jobs() {
        let Some(round) = context.round(job.id, job.current_round) else { continue };
        if !matches!(round.phase, Phase::Revealing | Phase::Verifying) {
            continue;
        }
        // The longest trail of the round: H steps.
        let limit =
            TrailFrame::of(&job.spec, job.id, round.round, 0, Hash::ZERO, job.spec.diloco.inner_steps).trail_bytes();
        for commit in &round.commits {
            let Some(reveal) = &commit.reveal else { continue };
            if !context.start_once(Work::PrefetchTrail { job: job.id, round: round.round, miner: commit.miner }) {
                continue;
            }
            let (context, key, job_id, round_number) =
                (context.clone(), BlobKey::new(BlobKind::Trail, reveal.trail), job.id, round.round);
            tokio::spawn(async move {
                let deadline = tokio::time::Instant::now() + jobdata::FETCH_PATIENCE;
                let fetched = context.net.ensure_until(key, deadline, limit).await;
                if fetched.is_err() || context.net.store().tag_round(job_id, round_number, &[key]).is_err() {
                    tracing::debug!(target: "node::checker", %key, "a revealed trail was not prefetched; its checks fetch it");
                }
            });
        }
    }
}

pub fn tick(context: &Arc<RoleContext>, height: trellis_proto::Height) {
    let me = context.key.address();
    for job in context.working_jobs() {
        let Some(round) = context.round(job.id, job.current_round) else { continue };
        if round.phase != Phase::Verifying || height > round.verify_end {
            continue;
        }
        for assignment in round.assignments.iter().filter(|a| a.checkers.contains(&me)) {
            let sent = round
                .verdicts
                .iter()
                .any(|v| v.checker == me && v.miner == assignment.miner && v.segment == assignment.segment);
            let label = Work::SendVerdict {
                job: job.id,
                round: round.round,
                miner: assignment.miner,
                segment: assignment.segment,
            };
            if sent || !context.start_once(label.clone()) {
                continue;
            }
            let (context, job, round, assignment) = (context.clone(), job.clone(), round.clone(), assignment.clone());
            tokio::spawn(async move {
                let began = std::time::Instant::now();
                let (checked, gathering) = check(&context, &job, &round, &assignment).await;
                let outcome = match checked {
                    Ok(outcome) => outcome,
                    Err(failure) => {
                        let failures = context.count_failure(&label);
                        if failures < OWN_FAILURES {
                            tracing::warn!(
                                target: "node::checker", job = %job.id, miner = %assignment.miner, segment = assignment.segment,
                                error = format!("{:#}", failure.0), failures, "cannot check a segment yet (our own failure); trying again"
                            );
                            context.forget(&label);
                            return;
                        }
                        tracing::error!(
                            target: "node::checker", job = %job.id, miner = %assignment.miner, segment = assignment.segment,
                            error = format!("{:#}", failure.0), failures, "cannot check a segment (our own failure); abstaining"
                        );
                        Blame::Checker.outcome()
                    }
                };
                tracing::info!(
                    target: "node::checker",
                    job = %job.id, round = round.round, miner = %assignment.miner, segment = assignment.segment,
                    outcome = ?outcome, check_s = format!("{:.2}", began.elapsed().as_secs_f64()),
                    fetch_s = format!("{:.2}", gathering.as_secs_f64()), "verdict"
                );
                let still_open = context
                    .round(job.id, round.round)
                    .is_some_and(|r| r.phase == Phase::Verifying && context.height() <= r.verify_end);
                if !still_open {
                    tracing::warn!(target: "node::checker", job = %job.id, round = round.round, "verification window closed before our verdict");
                    return;
                }
                #[cfg(feature = "adversary")]
                let outcome = if context.behaviour == trellis_protocol::behaviour::Behaviour::Frame {
                    super::adversary::framed_outcome(job.id, round.round, &assignment.miner, assignment.segment)
                } else {
                    outcome
                };
                let verdict = Verdict {
                    job: job.id,
                    round: round.round,
                    miner: assignment.miner,
                    segment: assignment.segment,
                    outcome,
                };
                if let Err(error) = context.submit(TxKind::Verdict(verdict)) {
                    tracing::warn!(target: "node::checker", %error, "cannot send the verdict");
                }
            });
        }
    }
}

/// The height by which a check's blobs from the miner must have arrived: the verification window's
/// end less a quarter of the window (at least [`CUTOFF_MARGIN_BLOCKS`]), which leaves the replay
/// and the verdict's inclusion their time.
pub fn fetch_cutoff(verify_end: trellis_proto::Height, window: u64) -> trellis_proto::Height {
    verify_end.before((window / 4).max(CUTOFF_MARGIN_BLOCKS))
}

/// The least a fetch cutoff leaves of a verification window.
const CUTOFF_MARGIN_BLOCKS: u64 = 10;

/// This checker could not do its part: not the miner's fault, not the job's.
#[derive(Debug)]
pub struct OwnFailure(pub anyhow::Error);

impl<E: Into<anyhow::Error>> From<E> for OwnFailure {
    fn from(error: E) -> Self {
        OwnFailure(error.into())
    }
}

/// Checkpoints the blob exchange already fetched into the local store.
struct StoreSource<'a>(&'a BlobStore);

impl BlobSource for StoreSource<'_> {
    fn fetch(&self, hash: &Hash) -> Result<Vec<u8>, BlobError> {
        self.0.get(&BlobKey::new(BlobKind::Checkpoint, *hash)).map_err(|_| BlobError::NotFound(*hash))
    }
}

/// A check's early end: a verdict that needs no replay.
type Early = Result<VerdictOutcome, OwnFailure>;

/// The miner's blobs a check reads, fetched into the store side by side from the moment each is
/// known (a check over a long path waits for the slowest of them, not for their sum), and read
/// in the order the check judges them, so the verdict does not depend on which arrives first.
/// Dropping it stops every fetch still running (a check that ended early). Each blob is tagged
/// with its round before its fetch starts, so that a check that ends early (a withheld blob, a
/// failed link) leaves nothing behind that the round's collection misses.
struct MinersBlobs {
    context: Arc<RoleContext>,
    /// The job and round whose collection takes what this check fetches.
    round: (trellis_proto::JobId, u32),
    /// The height by which the miner's blobs must be here ([`fetch_cutoff`]).
    cutoff: trellis_proto::Height,
    began: tokio::time::Instant,
    net: crate::p2p::exchange::BlobNet,
    deadline: tokio::time::Instant,
    fetches: std::collections::HashMap<BlobKey, tokio::task::JoinHandle<Result<(), FetchError>>>,
    stored: std::collections::HashSet<BlobKey>,
}

impl MinersBlobs {
    fn new(context: &Arc<RoleContext>, round: (trellis_proto::JobId, u32), cutoff: trellis_proto::Height) -> Self {
        let began = tokio::time::Instant::now();
        let deadline = began + BLOB_PATIENCE;
        Self {
            context: context.clone(),
            round,
            cutoff,
            began,
            net: context.net.clone(),
            deadline,
            fetches: Default::default(),
            stored: Default::default(),
        }
    }

    /// The miner's patience for blobs asked for from now on starts again (after fetches of our
    /// own, which must not count against the miner).
    fn restart_patience(&mut self) {
        self.began = tokio::time::Instant::now();
        self.deadline = self.began + BLOB_PATIENCE;
    }

    /// Starts fetching `key` (at most `limit` bytes: what the job allows it) unless it already is.
    fn want(&mut self, key: BlobKey, limit: u64) {
        if self.stored.contains(&key) || self.fetches.contains_key(&key) {
            return;
        }
        // Only what this check brings in: a key the miner names may be a blob this node holds
        // for another reason (the job's validation text, a model), which must not go with the
        // round.
        let (job, round) = self.round;
        if !self.net.store().contains(&key) {
            if let Err(error) = self.net.store().tag_round(job, round, &[key]) {
                tracing::warn!(target: "node::checker", %key, %error, "cannot tag a blob with its round; it may outlive the round");
            }
        }
        let (net, deadline) = (self.net.clone(), self.deadline);
        self.fetches.insert(key, tokio::spawn(async move { net.ensure_until(key, deadline, limit).await }));
    }

    /// Waits for `key` to be in the store: the verdict when no holder served it (or it was larger
    /// than its limit: withheld, like a blob never served), or our own failure (our disk, our
    /// exchange), which must never count against the miner.
    async fn stored(&mut self, key: BlobKey, limit: u64) -> Result<(), Early> {
        self.want(key, limit);
        let Some(mut fetch) = self.fetches.remove(&key) else { return Ok(()) };
        // A holder that keeps a fetch going (answering every chunk just in time, or slower) must
        // not keep the check past its window: the checker would be slashed for the missing
        // verdict. What is not here by the cutoff was not delivered; the miner always has its
        // patience from the start of the check (a checker that starts late must not blame the
        // miner for its own lateness).
        let (context, cutoff, patience_ends) = (self.context.clone(), self.cutoff, self.began + BLOB_PATIENCE);
        let window_closing = async move {
            tokio::time::sleep_until(patience_ends).await;
            while context.height() < cutoff {
                tokio::time::sleep(std::time::Duration::from_millis(250)).await;
            }
        };
        let fetched = tokio::select! {
            biased;
            fetched = &mut fetch => fetched,
            () = window_closing => {
                fetch.abort();
                tracing::info!(target: "node::checker", %key, cutoff = self.cutoff.0, "the miner's blob did not arrive before the window's last part");
                return Err(Ok(Blame::Withheld.outcome()));
            }
        };
        match fetched {
            Ok(Ok(())) => {
                self.stored.insert(key);
                Ok(())
            }
            Ok(Err(FetchError::Unavailable(_))) => Err(Ok(Blame::Withheld.outcome())),
            Ok(Err(error)) => Err(Err(error.into())),
            Err(join) => Err(Err(OwnFailure(anyhow::anyhow!("the fetch of {key} stopped: {join}")))),
        }
    }

    /// [`MinersBlobs::stored`], then its bytes.
    async fn bytes(&mut self, key: BlobKey, limit: u64) -> Result<Vec<u8>, Early> {
        self.stored(key, limit).await?;
        self.net.store().get(&key).map_err(|e| Err(e.into()))
    }
}

impl Drop for MinersBlobs {
    fn drop(&mut self) {
        for fetch in self.fetches.values() {
            fetch.abort();
        }
    }
}

fn job_fault(reason: JobFaultReason, error: anyhow::Error, job: &Job) -> VerdictOutcome {
    tracing::warn!(target: "node::checker", job = %job.id, ?reason, error = format!("{error:#}"), "the job cannot be checked as submitted");
    Blame::Job(reason).outcome()
}

/// A failure to get or read one of the job's own blobs (dataset, keys): the job's fault when no
/// peer served it or it does not parse, ours when our store or exchange failed.
fn job_blob_failure(reason: JobFaultReason, error: anyhow::Error, job: &Job) -> Early {
    let ours = error
        .chain()
        .any(|e| matches!(e.downcast_ref::<FetchError>(), Some(FetchError::Store { .. } | FetchError::Stopped)));
    if ours {
        return Err(OwnFailure(error));
    }
    Ok(job_fault(reason, error, job))
}

/// The verdict on one assignment (`Err` only for this node's own failures), and how long
/// gathering what it reads took (fetches, mostly).
async fn check(
    context: &Arc<RoleContext>,
    job: &Job,
    round: &RoundState,
    assignment: &Assignment,
) -> (Result<VerdictOutcome, OwnFailure>, Duration) {
    let began = std::time::Instant::now();
    match gather(context, job, round, assignment).await {
        Ok(gathered) => {
            let gathering = began.elapsed();
            (judge(context, job, round, gathered).await, gathering)
        }
        Err(early) => (early, began.elapsed()),
    }
}

/// Everything a segment's judgement reads, fetched before the blocking part.
struct Gathered {
    reveal: WorkReveal,
    trail: Trail,
    frame: TrailFrame,
    segment: u32,
    worker: usize,
    zk: Option<(ZkJob, Arc<trellis_zk::PreparedVerifier>, Vec<u8>)>,
    dataset: Arc<trellis_trainer::data::Dataset>,
    global: Vec<f32>,
    /// Read from the store only for the last link, after the replay has let go of its model.
    delta: BlobKey,
    residual: Option<Vec<f32>>,
}

/// The trail in `bytes` (revealed as `address`) if it is the one `frame` says this round needs;
/// otherwise the miner's `Invalid` verdict. Nothing in it is trusted: round, slot, interval and
/// positions all come from the chain.
fn read_trail(bytes: &[u8], frame: &TrailFrame, address: Hash) -> Result<Trail, VerdictOutcome> {
    let trail = Trail::from_bytes(bytes)
        .map_err(|_| Blame::miner(InvalidReason::MalformedBlob, address, Hash::ZERO).outcome())?;
    if let Err(mismatch) = check_trail(&trail, frame) {
        tracing::info!(target: "node::checker", job = %frame.job, round = frame.round, worker = frame.worker, %mismatch, "the trail is not one of this round");
        return Err(Blame::miner(InvalidReason::TrailMismatch, address, Hash::ZERO).outcome());
    }
    Ok(trail)
}

async fn gather(
    context: &Arc<RoleContext>,
    job: &Job,
    round: &RoundState,
    assignment: &Assignment,
) -> Result<Gathered, Early> {
    // What the chain says: only revealed work is sampled, at the slot the chain gave the miner.
    let commit = round.commits.iter().find(|c| c.miner == assignment.miner);
    let (Some(reveal), Some(worker)) = (commit.and_then(|c| c.reveal.clone()), worker_index(round, &assignment.miner))
    else {
        return Err(Err(OwnFailure(anyhow::anyhow!(
            "the chain has no revealed work of {} in this round",
            assignment.miner
        ))));
    };
    let worker_slot = u32::try_from(worker).map_err(|e| Err(e.into()))?;
    let frame = TrailFrame::of(&job.spec, job.id, round.round, worker_slot, reveal.final_checkpoint, reveal.steps);
    let (zk, limits) =
        match ZkJob::of(&job.spec).map_err(anyhow::Error::from).and_then(|zk| Ok((zk, BlobLimits::of(&job.spec)?))) {
            Ok(found) => found,
            Err(error) => return Err(Ok(job_fault(JobFaultReason::SpecUnusable, error, job))),
        };
    let segment = assignment.segment;
    let exact = matches!(Comparison::of(&job.spec.verification.mode), Some(Comparison::Exact));
    // θ_final for the last link: in a job whose Δ is the final drift, not needed (the Δ and the
    // trail give the final checkpoint's hash); else the end of the last segment, which an exact
    // replay of it reproduces bit for bit; any other check reads the final checkpoint.
    let reproduced_by_replay = segment + 1 == frame.segments() && exact && zk.is_none();
    let final_not_needed = frame.delta_is_drift || reproduced_by_replay;
    // Everything the reveal already names is asked for at once: the trail, the Δ, θ_final.
    let mut blobs = MinersBlobs::new(
        context,
        (job.id, round.round),
        fetch_cutoff(round.verify_end, trellis_contracts::rounds::verify_window(&job.spec, round)),
    );
    let trail_key = BlobKey::new(BlobKind::Trail, reveal.trail);
    let delta_key = BlobKey::new(BlobKind::Data, reveal.delta_hash);
    let final_key = BlobKey::new(BlobKind::Checkpoint, reveal.final_checkpoint);
    blobs.want(trail_key, frame.trail_bytes());
    blobs.want(delta_key, limits.delta);
    if !final_not_needed {
        blobs.want(final_key, limits.checkpoint);
    }
    // A streaming round continuing the miner's previous accepted state: its start is derived
    // from that state's final checkpoint (the chain checked that the reveal names it).
    let continued_key = (reveal.continues != Hash::ZERO).then(|| BlobKey::new(BlobKind::Checkpoint, reveal.continues));
    if let Some(key) = continued_key {
        blobs.want(key, limits.checkpoint);
    }
    let trail_bytes = blobs.bytes(trail_key, frame.trail_bytes()).await?;
    let trail = read_trail(&trail_bytes, &frame, reveal.trail).map_err(Ok)?;
    // Our exchange works (it just served the trail): a dataset no peer serves is the job's fault.
    let dataset = match context.dataset(job.spec.dataset_root).await {
        Ok(dataset) => dataset,
        Err(error) => return Err(job_blob_failure(JobFaultReason::DatasetUnavailable, error, job)),
    };
    // θ_r is the committed model every validator computed: failing to get it is ours.
    let global = jobdata::global_weights(&context.net, job).await.map_err(|e| Err(e.into()))?;
    // The miner's patience starts again: the time our own fetches of the job's data took (the
    // dataset, θ_r: seconds over a WAN the first time) must not count against the miner.
    blobs.restart_patience();
    let start = match (&zk, continued_key) {
        (Some(zk), _) => zk.start_checkpoint(&global).map_err(anyhow::Error::from),
        (None, Some(key)) => {
            let previous = blobs.bytes(key, limits.checkpoint).await?;
            match trellis_trainer::job::continued_start_checkpoint(&job.spec, round.round, &global, &previous) {
                Ok(start) => Ok(start),
                // The state the miner says it continues is not one a round ends with: the miner's.
                // (The quote is its first checkpoint; nothing was derived, so nothing reproduced.)
                Err(_) => {
                    return Err(Ok(
                        Blame::miner(InvalidReason::StartMismatch, trail.checkpoints[0].hash, Hash::ZERO).outcome()
                    ))
                }
            }
        }
        (None, None) => {
            trellis_trainer::job::start_checkpoint(&job.spec, round.round, &global).map_err(anyhow::Error::from)
        }
    };
    let start_bytes = match start {
        Ok(bytes) => bytes,
        Err(error) => return Err(Ok(job_fault(JobFaultReason::ModelUnusable, error, job))),
    };
    let start = checkpoint_hash(&start_bytes);
    if trail.checkpoints[0].hash != start {
        // The quote is the miner's claim (its first checkpoint); what we derived is the canonical start.
        return Err(Ok(Blame::miner(InvalidReason::StartMismatch, trail.checkpoints[0].hash, start).outcome()));
    }
    let Some(claim) = segment_claim(&trail, &frame, segment) else {
        return Err(Ok(Blame::miner(InvalidReason::TrailMismatch, reveal.trail, Hash::ZERO).outcome()));
    };
    let mut needed = Vec::new();
    if segment == 0 {
        // The canonical start state, which the trail's first link was just checked against.
        let key = BlobKey::new(BlobKind::Checkpoint, start);
        if !context.net.store().contains(&key) {
            context.net.store().put(&key, &start_bytes).map_err(|e| Err(e.into()))?;
        }
    } else {
        needed.push(claim.start.hash);
    }
    // The end state is compared (tolerance) or committed to by the proof (groth16); in exact
    // mode the replay must reproduce its hash, so the bytes are not needed.
    if zk.is_some() || !exact {
        needed.push(claim.end.hash);
    }
    if !final_not_needed && !needed.contains(&reveal.final_checkpoint) {
        needed.push(reveal.final_checkpoint);
    }
    drop(start_bytes);
    for hash in &needed {
        blobs.want(BlobKey::new(BlobKind::Checkpoint, *hash), limits.checkpoint);
    }
    for hash in needed {
        blobs.stored(BlobKey::new(BlobKind::Checkpoint, hash), limits.checkpoint).await?;
    }
    // groth16: the segment's proof (the miner's) and the job's verifying key (the submitter's).
    let zk = match zk {
        Some(zk) => {
            let proof_key = BlobKey::new(BlobKind::Data, trail.proofs[segment as usize]);
            let proof = blobs.bytes(proof_key, jobdata::MAX_PROOF_BYTES).await?;
            let verifier = match context.verifier(zk.verifying_key).await {
                Ok(verifier) => verifier,
                Err(error) => return Err(job_blob_failure(JobFaultReason::KeysUnusable, error, job)),
            };
            if verifier.spec() != &zk.model || u64::from(verifier.steps()) != ZkJob::segment_steps(&job.spec) {
                let error =
                    anyhow::anyhow!("the verifying key is for {} × {} steps", verifier.spec(), verifier.steps());
                return Err(Ok(job_fault(JobFaultReason::KeysUnusable, error, job)));
            }
            Some((zk, verifier, proof))
        }
        None => None,
    };
    blobs.stored(delta_key, limits.delta).await?;
    // Error feedback: the residual the miner carried in must be served. The chain admitted its
    // hash only as the residual the miner's latest accepted work left, which that work's
    // checkers recomputed exactly (docs/protocol.md §4.3), so its bytes are all there is to check.
    let made_up = || Blame::miner(InvalidReason::DeltaMismatch, reveal.residual_hash, Hash::ZERO).outcome();
    let residual = if reveal.residual_hash == Hash::ZERO {
        None
    } else {
        let residual_key = BlobKey::new(BlobKind::Data, reveal.residual_hash);
        blobs.want(residual_key, limits.delta);
        let bytes = blobs.bytes(residual_key, limits.delta).await?;
        // A residual that is not a whole number of bf16 values, or holds one that is not finite
        // (bytes no honest miner publishes under a hash its checkers accepted), is made up.
        let Ok(values) = trellis_trainer::encoding::residual_from_bytes(&bytes) else { return Err(Ok(made_up())) };
        if values.len() != global.len() {
            return Err(Ok(made_up()));
        }
        Some(values)
    };
    // What was fetched for this round goes when the round is settled.
    let mut fetched = vec![
        BlobKey::new(BlobKind::Trail, reveal.trail),
        BlobKey::new(BlobKind::Data, reveal.delta_hash),
        BlobKey::new(BlobKind::Data, reveal.residual_hash),
        BlobKey::new(BlobKind::Checkpoint, reveal.final_checkpoint),
    ];
    fetched.extend(continued_key);
    fetched.extend(trail.checkpoints.iter().map(|e| BlobKey::new(BlobKind::Checkpoint, e.hash)));
    fetched.extend(trail.proofs.iter().map(|p| BlobKey::new(BlobKind::Data, *p)));
    context.net.store().tag_round(job.id, round.round, &fetched).map_err(|e| Err(e.into()))?;
    Ok(Gathered { reveal, trail, frame, segment, worker, zk, dataset, global, delta: delta_key, residual })
}

/// Re-executes (or checks the proof of) the segment and checks the last link, on a blocking
/// thread.
async fn judge(
    context: &Arc<RoleContext>,
    job: &Job,
    round: &RoundState,
    gathered: Gathered,
) -> Result<VerdictOutcome, OwnFailure> {
    let (context, job, round_number) = (context.clone(), job.clone(), round.round);
    // One replay at a time: each holds a whole training state, and the checks a node is assigned
    // in a round would otherwise hold one each (`docs/scaling.md`, memory per role).
    let _heavy = super::HEAVY_WORK.acquire().await.map_err(|e| OwnFailure(e.into()))?;
    let outcome = tokio::task::spawn_blocking(move || -> Result<VerdictOutcome, OwnFailure> {
        let Gathered { reveal, trail, frame, segment, worker, zk, dataset, global, delta, residual } = gathered;
        let spec = &job.spec;
        let store = context.net.store();
        let checkpoint = |hash: Hash| store.get(&BlobKey::new(BlobKind::Checkpoint, hash));
        let claim =
            segment_claim(&trail, &frame, segment).ok_or_else(|| anyhow::anyhow!("segment {segment} vanished"))?;
        let (outcome, reproduced) = match (&zk, Comparison::of(&spec.verification.mode)) {
            (Some((zk, verifier, proof)), _) => {
                let (start, end) = (checkpoint(claim.start.hash)?, checkpoint(claim.end.hash)?);
                let evidence = SegmentEvidence { start_checkpoint: &start, end_checkpoint: &end, proof };
                let outcome = groth16::check_segment(
                    spec,
                    zk,
                    verifier,
                    &dataset,
                    &trail,
                    (round_number, worker),
                    segment as usize,
                    &evidence,
                );
                (outcome, None)
            }
            (None, Some(comparison)) => {
                let replay = Replay {
                    model: spec.model.clone(),
                    adamw: trellis_trainer::job::adamw_config(spec),
                    dataset: dataset.as_ref(),
                    schedule: trellis_trainer::job::schedule(spec),
                    round: u64::from(round_number),
                    worker,
                    device: context.device,
                    compact_base: trellis_trainer::job::compact_base(spec, &global),
                };
                // Only the last segment's replay ends at θ_final: only it keeps what it reached
                // (when the last link needs it).
                let source = StoreSource(store);
                if claim.end.hash == reveal.final_checkpoint && !frame.delta_is_drift {
                    let (report, reproduced) = check_claim_reproducing(&replay, &claim, &source, comparison);
                    (report.outcome, reproduced)
                } else {
                    (check_claim(&replay, &claim, &source, comparison).outcome, None)
                }
            }
            (None, None) => (Blame::Job(JobFaultReason::SpecUnusable).outcome(), None),
        };
        if outcome != VerdictOutcome::Valid {
            return Ok(outcome);
        }
        let delta_mismatch = |delta: &[u8]| {
            Blame::miner(InvalidReason::DeltaMismatch, reveal.delta_hash, trellis_trainer::encoding::delta_hash(delta))
                .outcome()
        };
        if frame.delta_is_drift {
            let delta = store.get(&delta)?;
            return Ok(
                match check_delta_drift(
                    &delta,
                    &reveal.delta_hash,
                    global.len(),
                    &trail.final_moments,
                    &reveal.final_checkpoint,
                ) {
                    Ok(()) => VerdictOutcome::Valid,
                    Err(_) => delta_mismatch(&delta),
                },
            );
        }
        // θ_final: reproduced bit for bit by an exact replay of the last segment, else the final
        // checkpoint, which the check fetched.
        let final_weights = match (reproduced, &zk) {
            (Some(weights), _) => Some(weights),
            (None, Some((zk, _, _))) => {
                trellis_zk::io::decode_weights(&zk.model, &checkpoint(reveal.final_checkpoint)?)
                    .ok()
                    .map(|w| trellis_zk::job::from_fixed(&w.flatten()))
            }
            (None, None) => {
                let bytes = checkpoint(reveal.final_checkpoint)?;
                CheckpointView::parse(&bytes, trellis_trainer::job::compact_base(spec, &global))
                    .ok()
                    .map(|view| view.weights())
            }
        };
        let Some(final_weights) = final_weights else {
            return Ok(Blame::miner(InvalidReason::MalformedBlob, reveal.final_checkpoint, Hash::ZERO).outcome());
        };
        // None carried: `check_delta` adds zeros where the encoding has error feedback.
        let residual = residual.as_deref();
        let delta = store.get(&delta)?;
        // A streaming round's Δ is the fragment it synchronises alone.
        let span = trellis_protocol::fragments::round_span(spec, round_number, global.len());
        let (global, final_weights) =
            (global.get(span.clone()).unwrap_or_default(), final_weights.get(span).unwrap_or_default());
        let delta_link = check_delta(
            spec.diloco.encoding,
            global,
            final_weights,
            residual,
            &delta,
            &reveal.delta_hash,
            &reveal.next_residual,
        );
        Ok(match delta_link {
            Ok(()) => VerdictOutcome::Valid,
            Err(_) => delta_mismatch(&delta),
        })
    })
    .await;
    match outcome {
        Ok(result) => result,
        Err(join) => Err(OwnFailure(anyhow::anyhow!("the checking thread stopped: {join}"))),
    }
}

#[cfg(test)]
mod cutoff {
    use trellis_proto::Height;

    use super::*;

    #[test]
    fn a_checks_fetches_end_a_quarter_of_the_window_before_its_end_and_never_later_than_ten_blocks() {
        assert_eq!(fetch_cutoff(Height(1_000), 340), Height(915));
        assert_eq!(fetch_cutoff(Height(1_000), 120), Height(970));
        assert_eq!(fetch_cutoff(Height(1_000), 8), Height(990), "at least ten blocks are left");
        assert_eq!(fetch_cutoff(Height(5), 40), Height(0), "no underflow near genesis");
    }
}

/// Silencing trails: trail fields a checker cannot use must get the miner a verdict, never leave
/// the checker silent.
#[cfg(test)]
mod silencing_trails {
    use trellis_proto::{decode, Encode, JobId, TrailEntry};

    use super::*;

    fn frame() -> TrailFrame {
        TrailFrame {
            job: JobId(3),
            round: 1,
            worker: 0,
            inner_steps: 4,
            steps: 4,
            interval: 2,
            proofs: 2,
            final_checkpoint: Hash([2; 32]),
            delta_is_drift: false,
        }
    }

    fn honest() -> Trail {
        let f = frame();
        Trail {
            job: f.job,
            round: f.round,
            worker: f.worker,
            checkpoint_interval: f.interval,
            checkpoints: (0..3).map(|i| TrailEntry { step: f.step(i), hash: Hash([i as u8; 32]) }).collect(),
            losses: vec![1.0; 4],
            proofs: vec![Hash([7; 32]), Hash([8; 32])],
            final_moments: Hash::ZERO,
        }
    }

    fn reason(outcome: &VerdictOutcome) -> Option<InvalidReason> {
        match outcome {
            VerdictOutcome::Invalid(evidence) => Some(evidence.reason),
            _ => None,
        }
    }

    /// On the old JSON trail a groth16 miner could claim round 2⁴⁰: the checker failed converting
    /// it, took that for its own failure and stayed silent, and was slashed for the missed
    /// verdict while the miner tallied as valid. Now the round is the chain's, and such a trail
    /// gets an `Invalid` verdict like any trail that is not the round's.
    #[test]
    fn a_groth16_trail_with_round_two_to_the_forty_gets_an_invalid_verdict() {
        let trail = honest();
        let address = trail.hash();
        assert!(read_trail(&trail.to_bytes(), &frame(), address).is_ok());
        // The same trail with a 64-bit round of 2^40 where the 32-bit round goes.
        let mut forged = trail.job.to_bytes();
        forged.extend_from_slice(&(1u64 << 40).to_le_bytes());
        forged.extend_from_slice(&trail.to_bytes()[12..]);
        let outcome = read_trail(&forged, &frame(), Trail::hash_bytes(&forged)).unwrap_err();
        assert_eq!(reason(&outcome), Some(InvalidReason::MalformedBlob));
        // The largest round the encoding can hold, but not this one.
        let mut far = trail.clone();
        far.round = u32::MAX;
        let outcome = read_trail(&far.to_bytes(), &frame(), far.hash()).unwrap_err();
        assert_eq!(reason(&outcome), Some(InvalidReason::TrailMismatch));
        let back: VerdictOutcome = decode(&outcome.to_bytes()).unwrap();
        assert_eq!(back, outcome, "the verdict encodes");
        // An out-of-range worker slot, and a proof left out.
        let mut slot = trail.clone();
        slot.worker = u32::MAX;
        assert_eq!(
            reason(&read_trail(&slot.to_bytes(), &frame(), slot.hash()).unwrap_err()),
            Some(InvalidReason::TrailMismatch)
        );
        let mut bare = trail;
        bare.proofs.pop();
        assert_eq!(
            reason(&read_trail(&bare.to_bytes(), &frame(), bare.hash()).unwrap_err()),
            Some(InvalidReason::TrailMismatch)
        );
    }
}
