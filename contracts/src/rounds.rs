//! The life of a job's round: sampling after the commit deadline, tallying verdicts (with
//! escalation on disagreement), slashing, settlement, and the next round or the job's end.

use std::collections::{BTreeMap, BTreeSet};

use trellis_proto::hash::{draw, weighted_index};
use trellis_proto::{Address, Aggregate, Amount, Hash, Height, JobId, JobSpec, Role, VerdictOutcome};
use trellis_protocol::trail;

use crate::error::TxError;
use crate::exec::{BlockCtx, Chain, Event, SlashReason};
use crate::kv::KvStore;
use crate::params::fraction;
use crate::state::{
    keys, read, write, AcceptedState, Assignment, Job, JobStatus, MinerEntry, Phase, RoundState, RoundSummary,
    ValidatorSet,
};

/// Blocks a settled or lapsed round keeps its full record (for clients and the devnet's table)
/// before it is pruned to a [`RoundSummary`].
pub const SETTLED_ROUND_RETENTION: u64 = 256;

/// Checkpoints in an honest trail: the start, every `c` steps, and the end.
pub fn expected_checkpoints(spec: &JobSpec) -> u32 {
    trail::checkpoint_count(spec.diloco.inner_steps, spec.verification.checkpoint_interval)
}

/// Segments of every trail of the job: `⌈H/c⌉`.
pub fn expected_segments(spec: &JobSpec) -> u32 {
    trail::segment_count(spec.diloco.inner_steps, spec.verification.checkpoint_interval)
}

/// Parameters, summed over a round's workers, for each block the aggregation window grows by.
pub const AGGREGATE_PARAMETERS_PER_BLOCK: u64 = 1 << 19;
/// The longest aggregation window, in blocks, whatever the model.
pub const MAX_AGGREGATE_WINDOW: u64 = 20_000;

/// Blocks the validators have, after the tally, to commit a round's aggregate: the chain's
/// `aggregate_blocks` plus one block per [`AGGREGATE_PARAMETERS_PER_BLOCK`] parameters of the
/// workers' Δ, because every validator fetches every Δ, combines them and writes θ_{r+1} and the
/// momentum: work that grows with workers × parameters (`nano` with 3 workers: +1 block; `small`
/// with 4: +109; `gpt2` with 4: +656), capped at [`MAX_AGGREGATE_WINDOW`]. A fixed window set for
/// small models made a `small` job's rounds lapse with the aggregate computed too late
/// (docs/benchmarks.md).
pub fn aggregate_window(params: &crate::Params, spec: &JobSpec) -> u64 {
    window_for(params, &spec.model, spec.diloco.workers_per_round)
}

fn window_for(params: &crate::Params, model: &trellis_proto::ModelConfig, workers: u32) -> u64 {
    let work = trellis_protocol::model::parameter_count(model).saturating_mul(u64::from(workers));
    params.aggregate_blocks.saturating_add(work / AGGREGATE_PARAMETERS_PER_BLOCK).min(MAX_AGGREGATE_WINDOW)
}

/// Parameters, per segment a checker checks, for each block its verification window grows by:
/// a check fetches a start checkpoint and the miner's Δ (compact checkpoints and an f32 Δ, at most
/// 24 bytes a parameter); the reference validator, on 50 Mbit/s at two blocks a second, receives
/// 3.1 MB a block: 2¹⁷ parameters' worth.
pub const VERIFY_PARAMETERS_PER_BLOCK: u64 = 1 << 17;
/// Parameter-tokens (parameters × tokens trained) a checker replays per block: the reference
/// validator (two CPU cores in the reproducible AVX2 mode, about 10¹⁰ a second on `micro`,
/// docs/benchmarks.md) at two blocks a second, rounded down.
pub const REPLAY_PARAMETER_TOKENS_PER_BLOCK: u64 = 1 << 32;
/// The longest verification floor, in blocks: the longest window a job may ask for. A lower cap
/// would bring the trap back for large loads (a checker with hundreds of `small` segments needs
/// more than 20,000 blocks); a long window costs only the job's time when checkers are silent.
pub const MAX_VERIFY_FLOOR: u64 = crate::exec::bounds::MAX_WINDOW_BLOCKS as u64;

/// Blocks the checkers of a round have for their verdicts: the job's `verify_blocks`, but never
/// less than what the reference validator needs for the heaviest load the sampling gave one
/// checker (its segments × (fetching [`VERIFY_PARAMETERS_PER_BLOCK`] + replaying
/// [`REPLAY_PARAMETER_TOKENS_PER_BLOCK`], attention counted: `replay_weight`; rounded up, at
/// least a block a segment), capped at [`MAX_VERIFY_FLOOR`]. Without the floor a
/// submitter could set a window only the fastest checkers meet: one replay verdict in time
/// switches on the slashing of every silent checker, so the slower ones would lose 1% a round to
/// the job's choice (a review, 2026-12-03). A validator slower than the reference is on its own.
/// A Groth16 job's window is its own: a proof verifies in milliseconds.
/// After an escalation the load counted is that of the escalated segments alone.
pub fn verify_window(spec: &JobSpec, round: &RoundState) -> u64 {
    // A proof verifies in milliseconds and its blobs are small: nothing to lengthen (and the
    // job's `model` is not the circuit's).
    if matches!(spec.verification.mode, trellis_proto::VerificationMode::Groth16 { .. }) {
        return u64::from(spec.verify_blocks);
    }
    let checked =
        round.assignments.iter().enumerate().filter(|(i, _)| {
            !round.escalated || u32::try_from(*i).is_ok_and(|i| round.escalated_segments.contains(&i))
        });
    let mut load: BTreeMap<&Address, u64> = BTreeMap::new();
    for checker in checked.flat_map(|(_, a)| a.checkers.iter()) {
        *load.entry(checker).or_default() += 1;
    }
    let heaviest = u128::from(load.values().copied().max().unwrap_or(0));
    let parameters = u128::from(trellis_protocol::model::parameter_count(&spec.model));
    let tokens = u128::from(tokens_of(spec, spec.verification.checkpoint_interval.min(spec.diloco.inner_steps)));
    // Rounded up over the whole load (rounding each segment down let a model just below the
    // divisors make the floor nothing however many segments a checker drew), and at least a
    // block a segment.
    let fetch = heaviest.saturating_mul(parameters).div_ceil(u128::from(VERIFY_PARAMETERS_PER_BLOCK));
    let replay = heaviest
        .saturating_mul(u128::from(replay_weight(spec)))
        .saturating_mul(tokens)
        .div_ceil(u128::from(REPLAY_PARAMETER_TOKENS_PER_BLOCK));
    let floor = fetch.saturating_add(replay).max(heaviest).min(u128::from(MAX_VERIFY_FLOOR));
    u64::from(spec.verify_blocks).max(u64::try_from(floor).unwrap_or(MAX_VERIFY_FLOOR))
}

/// What a token costs to train, in parameters' worth: the parameters (each in a multiply-add
/// forward and two backward), plus attention's work, which grows with the sequence instead
/// (each layer's scores and their weighted sum, forward and backward: about 2 · sequence · width
/// a layer per token). Without the second term a job with long sequences and a small model would
/// take far longer to replay than its floor gives.
fn replay_weight(spec: &JobSpec) -> u64 {
    let model = &spec.model;
    let attention = 2u64
        .saturating_mul(u64::from(model.layers))
        .saturating_mul(u64::from(spec.diloco.sequence_length))
        .saturating_mul(u64::from(model.width));
    trellis_protocol::model::parameter_count(model).saturating_add(attention)
}

/// Tokens one miner trains in one round of H steps.
/// Saturates instead of wrapping: a spec that passed validation is far below (`bounds`).
pub fn expected_tokens(spec: &JobSpec) -> u64 {
    tokens_of(spec, spec.diloco.inner_steps)
}

/// Tokens a miner that revealed `steps` inner steps trained (what its reward share is
/// proportional to).
pub fn tokens_of(spec: &JobSpec, steps: u32) -> u64 {
    let d = &spec.diloco;
    u64::from(steps).saturating_mul(u64::from(d.batch_size)).saturating_mul(u64::from(d.sequence_length))
}

/// The inner steps `miner` revealed in `round` (`None` without a reveal).
pub fn revealed_steps(round: &RoundState, miner: &Address) -> Option<u32> {
    round.commits.iter().find(|c| &c.miner == miner).and_then(|c| c.reveal.as_ref()).map(|r| r.steps)
}

/// A fresh round opened at `height`, with its workers drawn from the job's miners.
pub fn new_round(job: &Job, round: u32, height: Height, randomness: &Hash) -> RoundState {
    let commit_deadline = height.after(u64::from(job.spec.commit_blocks));
    RoundState {
        workers: pick_workers(job, round, randomness),
        job: job.id,
        round,
        opened_at: height,
        commit_deadline,
        reveal_deadline: Height(0),
        verify_end: Height(0),
        aggregate_deadline: Height(0),
        phase: Phase::Open,
        escalated: false,
        commits: Vec::new(),
        assignments: Vec::new(),
        verdicts: Vec::new(),
        accepted: Vec::new(),
        matched_checkers: Vec::new(),
        escalated_segments: Vec::new(),
    }
}

/// The workers of a round: every miner that may still commit to the job when there are at most
/// `workers_per_round` of them, else that many drawn without replacement (seeded by the block
/// hash at opening), in address order.
pub fn pick_workers(job: &Job, round: u32, randomness: &Hash) -> Vec<Address> {
    let mut eligible: Vec<Address> = job.miners.iter().filter(|m| !m.ejected).map(|m| m.address).collect();
    let wanted = job.spec.diloco.workers_per_round as usize;
    let seed = [randomness.0.as_slice(), &job.id.0.to_le_bytes(), &round.to_le_bytes()].concat();
    let mut picked = Vec::new();
    while picked.len() < wanted && !eligible.is_empty() {
        let index = (draw("worker", &seed, &[picked.len() as u64]) % eligible.len() as u64) as usize;
        picked.push(eligible.remove(index));
    }
    picked.sort();
    picked
}

/// The worker index of `miner` in `round` (its batch schedule slot), if it trains this round.
pub fn worker_index(round: &RoundState, miner: &Address) -> Option<usize> {
    round.workers.iter().position(|w| w == miner)
}

/// Asks `begin_block` of `height` to visit `job` ([`visit_due_jobs`]).
pub(crate) fn schedule_visit<S: KvStore + ?Sized>(kv: &mut S, job: JobId, height: Height) {
    kv.put(keys::due(height, job), Vec::new());
}

/// `begin_block`'s work on jobs: visits, in job order, every job due at a height up to
/// `ctx.height`, moving its round past what is over ([`advance_deadlines`]), and schedules its
/// next visit: the next block if the visit changed something (what changed may let the round
/// move again), else the block after its round's current deadline. A transaction that changes a
/// job schedules it for the next block too (`Chain::execute`). So a job is visited whenever its
/// state or its deadline could move its round — as often as when every active job was visited
/// every block, with the same outcome — and a job that waits (for its first worker, or for a
/// deadline far away) costs no block anything.
pub(crate) fn visit_due_jobs<S: KvStore + ?Sized>(
    chain: &Chain,
    kv: &mut S,
    ctx: &BlockCtx,
    events: &mut Vec<Event>,
) -> Result<(), TxError> {
    let mut due = BTreeSet::new();
    for (key, _) in kv.scan_prefix(keys::DUE_PREFIX) {
        let Some((at, job)) = keys::due_job(&key) else {
            let source = trellis_proto::codec::DecodeError::InvalidValue { what: "due key", reason: "not height/job" };
            return Err(crate::state::CorruptState { key: String::from_utf8_lossy(&key).into_owned(), source }.into());
        };
        if at > ctx.height {
            break;
        }
        kv.delete(&key);
        due.insert(job);
    }
    for id in due {
        let Some(job) = read::<Job>(kv, &keys::job(id))? else { continue };
        if job.status != JobStatus::Active {
            continue;
        }
        let next = if advance_deadlines(chain, kv, job, ctx, events)? {
            Some(ctx.height.after(1))
        } else {
            next_deadline_visit(kv, id)?
        };
        if let Some(next) = next {
            schedule_visit(kv, id, next);
        }
    }
    Ok(())
}

/// The block after the current deadline of the job's round, if the job is active and its round
/// has one (a round without workers waits for a `JoinJob` instead).
fn next_deadline_visit<S: KvStore + ?Sized>(kv: &S, id: JobId) -> Result<Option<Height>, TxError> {
    let Some(job) = read::<Job>(kv, &keys::job(id))? else { return Ok(None) };
    if job.status != JobStatus::Active {
        return Ok(None);
    }
    let Some(round) = RoundState::load_record(kv, id, job.current_round)? else { return Ok(None) };
    let deadline = match round.phase {
        Phase::Open if round.workers.is_empty() => return Ok(None),
        Phase::Open => round.commit_deadline,
        Phase::Revealing => round.reveal_deadline,
        Phase::Verifying => round.verify_end,
        Phase::AwaitingAggregate => round.aggregate_deadline,
        Phase::Settled | Phase::Lapsed => return Ok(None),
    };
    Ok(Some(deadline.after(1)))
}

/// Moves the job's current round past every deadline that ended before `ctx.height`; whether it
/// changed anything.
pub(crate) fn advance_deadlines<S: KvStore + ?Sized>(
    chain: &Chain,
    kv: &mut S,
    job: Job,
    ctx: &BlockCtx,
    events: &mut Vec<Event>,
) -> Result<bool, TxError> {
    let Some(mut round) = RoundState::load(kv, job.id, job.current_round)? else {
        return Ok(false);
    };
    match round.phase {
        // A round without workers (nobody has joined the job yet, or every miner it had was
        // ejected) waits for its first one instead of burning its commit window: the window
        // starts when that miner joins (`Chain::join_job`).
        Phase::Open if round.workers.is_empty() => Ok(false),
        Phase::Open if ctx.height > round.commit_deadline || all_workers_committed(&job, &round) => {
            let mut job = job;
            if count_missed_commits(&mut job, &round, events) {
                write(kv, keys::job(job.id), &job);
            }
            round.phase = Phase::Revealing;
            round.reveal_deadline = ctx.height.after(chain.params.reveal_blocks);
            events.push(Event::RevealsOpened {
                job: job.id,
                round: round.round,
                reveal_deadline: round.reveal_deadline,
            });
            round.store(kv);
            Ok(true)
        }
        Phase::Revealing if ctx.height > round.reveal_deadline || round.commits.iter().all(|c| c.reveal.is_some()) => {
            let validators = chain.validator_set(kv)?;
            round.assignments =
                sample(&ctx.randomness, &job, &round, &validators, chain.params.checkers_per_segment as usize);
            round.phase = Phase::Verifying;
            round.verify_end = ctx.height.after(verify_window(&job.spec, &round));
            events.push(Event::SegmentsSampled {
                job: job.id,
                round: round.round,
                assignments: round.assignments.len(),
            });
            round.store(kv);
            Ok(true)
        }
        Phase::Verifying if ctx.height > round.verify_end || all_verdicts_in(&round) => {
            tally(chain, kv, job, round, ctx, events)?;
            Ok(true)
        }
        Phase::AwaitingAggregate if ctx.height > round.aggregate_deadline => {
            round.phase = Phase::Lapsed;
            events.push(Event::RoundLapsed { job: job.id, round: round.round });
            round.store(kv);
            events.extend(next_round_or_end(chain, kv, job, ctx)?);
            Ok(true)
        }
        _ => Ok(false),
    }
}

/// Rounds in a row a miner may hold a worker slot and commit nothing before it is dropped from
/// the job ([`Event::Dropped`]): one miss is forgiven (a crash, a slow first fetch), two are a
/// miner that cannot or will not work, holding a slot an honest miner could use.
pub const MAX_MISSED_COMMITS: u8 = 2;

/// Records of miners a job keeps per place of its miner cap: those that left (ejected or
/// dropped) stay on record, so that they cannot join again, up to this bound; past it, the
/// records of dropped miners make room (`Chain::join_job`).
pub const MINER_RECORDS_PER_PLACE: usize = 4;

/// Whether `entry` left the job by being dropped ([`count_missed_commits`]), not ejected for
/// cheating.
pub fn was_dropped(entry: &MinerEntry) -> bool {
    entry.ejected && entry.missed_commits >= MAX_MISSED_COMMITS
}

/// At the end of a round's commit window: counts, for each worker, a round with or without its
/// commitment, and drops those that missed [`MAX_MISSED_COMMITS`] in a row. Whether `job` changed.
fn count_missed_commits(job: &mut Job, round: &RoundState, events: &mut Vec<Event>) -> bool {
    let mut changed = false;
    for entry in job.miners.iter_mut().filter(|m| !m.ejected && round.workers.contains(&m.address)) {
        let before = entry.missed_commits;
        if round.commits.iter().any(|c| c.miner == entry.address) {
            entry.missed_commits = 0;
        } else {
            entry.missed_commits = entry.missed_commits.saturating_add(1);
            if entry.missed_commits >= MAX_MISSED_COMMITS {
                entry.ejected = true;
                events.push(Event::Dropped { job: job.id, miner: entry.address });
            }
        }
        changed |= entry.missed_commits != before;
    }
    changed
}

/// Every miner that can work this round has committed: every slot is filled and committed, or,
/// from the second round on (when the job's miners have had the first round to join), every
/// miner of the job still in it (not ejected) holds a slot and has committed. Reveals need not
/// wait for the deadline. A miner joining after this works from the next round on.
fn all_workers_committed(job: &Job, round: &RoundState) -> bool {
    let full = round.workers.len() == job.spec.diloco.workers_per_round as usize;
    let everyone_left =
        round.round > 0 && job.miners.iter().filter(|m| !m.ejected).all(|m| round.workers.contains(&m.address));
    !round.workers.is_empty()
        && (full || everyone_left)
        && round.workers.iter().all(|w| round.commits.iter().any(|c| &c.miner == w))
}

/// A checker and what its verdict found (`None`: no finding, an abstention).
type CheckerFinding = (Address, Option<Finding>);

/// Every assigned checker has sent its verdict: tallying need not wait for the window's end.
fn all_verdicts_in(round: &RoundState) -> bool {
    let sent: BTreeSet<(&Address, u32, &Address)> =
        round.verdicts.iter().map(|v| (&v.miner, v.segment, &v.checker)).collect();
    round.assignments.iter().all(|a| a.checkers.iter().all(|checker| sent.contains(&(&a.miner, a.segment, checker))))
}

/// For each miner that revealed its work, `segments_per_miner` distinct segments (all, if the
/// trail has fewer), each with `checkers_per_segment` distinct checkers drawn by stake from the
/// validators other than the miner. The seed is the hash of a block after the reveals, which no
/// miner knew when committing or revealing.
pub fn sample(
    randomness: &Hash,
    job: &Job,
    round: &RoundState,
    validators: &ValidatorSet,
    checkers_per_segment: usize,
) -> Vec<Assignment> {
    let seed = [randomness.0.as_slice(), &job.id.0.to_le_bytes(), &round.round.to_le_bytes()].concat();
    let mut commits: Vec<_> = round.commits.iter().filter(|c| c.reveal.is_some()).collect();
    commits.sort_by_key(|c| c.miner);
    let mut assignments = Vec::new();
    for (index, commit) in commits.iter().enumerate() {
        // A straggler's trail has the segments of the steps it revealed.
        let steps = commit.reveal.as_ref().map_or(job.spec.diloco.inner_steps, |r| r.steps);
        let segments = trail::segment_count(steps, job.spec.verification.checkpoint_interval).max(1);
        let wanted = job.spec.verification.segments_per_miner.min(segments);
        let mut chosen = BTreeSet::new();
        let mut attempt = 0u64;
        while (chosen.len() as u32) < wanted {
            chosen.insert((draw("segment", &seed, &[index as u64, attempt]) % segments as u64) as u32);
            attempt += 1;
        }
        for segment in chosen {
            let checkers = pick_checkers(&seed, &commit.miner, segment, checkers_per_segment, &[], validators);
            assignments.push(Assignment { miner: commit.miner, segment, checkers });
        }
    }
    assignments
}

/// Draws `count` distinct checkers by stake (without replacement), never `miner`, never one of
/// `exclude`. Returns fewer when not enough validators are eligible.
fn pick_checkers(
    seed: &[u8],
    miner: &Address,
    segment: u32,
    count: usize,
    exclude: &[Address],
    validators: &ValidatorSet,
) -> Vec<Address> {
    let mut eligible: Vec<_> = validators
        .validators
        .iter()
        .filter(|v| &v.address != miner && !exclude.contains(&v.address) && v.power > 0)
        .collect();
    let mut picked = Vec::new();
    let miner_word = u64::from_le_bytes(miner.0[..8].try_into().expect("8 bytes"));
    while picked.len() < count && !eligible.is_empty() {
        let total = eligible.iter().fold(0u64, |sum, v| sum.saturating_add(v.power));
        let point = draw("checker", seed, &[miner_word, segment as u64, (exclude.len() + picked.len()) as u64]) % total;
        let index = weighted_index(point, eligible.iter().map(|v| v.power)).expect("point is below the total power");
        picked.push(eligible.remove(index).address);
    }
    picked
}

/// What a segment's verdicts decide, by stake-weighted plurality. An abstain decides nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Finding {
    // Declared in the order ties are broken: the outcome that punishes least wins a tie.
    Valid,
    JobFault,
    Unavailable,
    Invalid,
}

impl Finding {
    const ALL: [Finding; 4] = [Finding::Valid, Finding::JobFault, Finding::Unavailable, Finding::Invalid];

    fn of(outcome: &VerdictOutcome) -> Option<Finding> {
        match outcome {
            VerdictOutcome::Valid => Some(Finding::Valid),
            VerdictOutcome::Invalid(_) => Some(Finding::Invalid),
            VerdictOutcome::Unavailable => Some(Finding::Unavailable),
            VerdictOutcome::JobFault { .. } => Some(Finding::JobFault),
            VerdictOutcome::Abstain => None,
        }
    }
}

/// The finding of one segment from its verdicts `(checker power, finding)`: `None` when no
/// verdict decided anything (every checker abstained or was silent: the segment is unchecked,
/// never approved).
fn segment_finding(verdicts: &[(u64, Option<Finding>)]) -> Option<Finding> {
    let mut weight = [0u64; 4];
    let mut any = false;
    for (power, finding) in verdicts {
        if let Some(finding) = finding {
            weight[*finding as usize] = weight[*finding as usize].saturating_add(*power);
            any = true;
        }
    }
    // Highest weight; on a tie the earlier (more lenient) finding.
    any.then(|| Finding::ALL.into_iter().rev().max_by_key(|f| weight[*f as usize]).unwrap_or(Finding::Valid))
}

/// Removes `miner` from the job's future rounds.
fn eject(job: &mut Job, events: &mut Vec<Event>, miner: Address) {
    if let Ok(index) = job.miners.binary_search_by(|m| m.address.cmp(&miner)) {
        job.miners[index].ejected = true;
    }
    events.push(Event::Ejected { job: job.id, miner });
}

/// Tallies the round's verdicts at the end of its verification window.
fn tally<S: KvStore + ?Sized>(
    chain: &Chain,
    kv: &mut S,
    mut job: Job,
    mut round: RoundState,
    ctx: &BlockCtx,
    events: &mut Vec<Event>,
) -> Result<(), TxError> {
    let validators = chain.validator_set(kv)?;
    let power = |a: &Address| validators.validators.iter().find(|v| &v.address == a).map_or(1, |v| v.power.max(1));
    // Verdicts by segment, gathered once: a round may hold thousands of both.
    let mut by_segment: BTreeMap<(Address, u32), Vec<CheckerFinding>> = BTreeMap::new();
    for v in &round.verdicts {
        by_segment.entry((v.miner, v.segment)).or_default().push((v.checker, Finding::of(&v.outcome)));
    }
    let verdicts_for = |a: &Assignment| -> Vec<CheckerFinding> {
        by_segment
            .get(&(a.miner, a.segment))
            .into_iter()
            .flatten()
            .filter(|(checker, _)| a.checkers.contains(checker))
            .copied()
            .collect()
    };

    // A disagreement, or no decisive verdict at all, escalates once: two more checkers and a
    // fresh window.
    if !round.escalated {
        let disputed: Vec<usize> = (0..round.assignments.len())
            .filter(|&i| {
                let findings: BTreeSet<Finding> =
                    verdicts_for(&round.assignments[i]).iter().filter_map(|(_, f)| *f).collect();
                findings.len() != 1
            })
            .collect();
        if !disputed.is_empty() {
            let seed = [ctx.randomness.0.as_slice(), &job.id.0.to_le_bytes(), &round.round.to_le_bytes(), b"escalate"]
                .concat();
            let committee = chain.params.escalation_committee as usize;
            for &i in &disputed {
                let assignment = &mut round.assignments[i];
                let extra = committee.saturating_sub(assignment.checkers.len());
                let more = pick_checkers(
                    &seed,
                    &assignment.miner,
                    assignment.segment,
                    extra,
                    &assignment.checkers,
                    &validators,
                );
                assignment.checkers.extend(more);
            }
            round.escalated = true;
            round.escalated_segments = disputed.iter().map(|&i| i as u32).collect();
            round.verify_end = ctx.height.after(verify_window(&job.spec, &round));
            events.push(Event::Escalated {
                job: job.id,
                round: round.round,
                segments: disputed.len(),
                verify_end: round.verify_end,
            });
            round.store(kv);
            return Ok(());
        }
    }

    // The finding of each segment, and who agreed with it or owed a verdict and sent none.
    let mut miner_findings: BTreeMap<Address, BTreeSet<Option<Finding>>> = BTreeMap::new();
    let mut matched = Vec::new();
    let mut missed = Vec::new();
    let mut overturned = Vec::new();
    for (index, assignment) in round.assignments.iter().enumerate() {
        let verdicts = verdicts_for(assignment);
        let weighted: Vec<(u64, Option<Finding>)> = verdicts.iter().map(|(checker, f)| (power(checker), *f)).collect();
        let finding = segment_finding(&weighted);
        miner_findings.entry(assignment.miner).or_default().insert(finding);
        matched.extend(verdicts.iter().filter(|(_, f)| f.is_some() && *f == finding).map(|(checker, _)| *checker));
        missed
            .extend(assignment.checkers.iter().filter(|checker| !verdicts.iter().any(|(c, _)| c == *checker)).copied());
        // After an escalation the larger committee decided: a replay's verdict it went against
        // (a lazy `Valid`, a framing `Invalid`) is overturned. Claims about availability
        // (`Unavailable`, `JobFault`) can differ honestly between checkers and moments, so they
        // lose the fee share but are not slashed.
        // Only a replay's finding overturns: a segment found `Unavailable` (a miner serving one
        // checker only, a partition) says nothing against a checker that did replay it.
        let replay_verdict = |f: &Option<Finding>| matches!(f, Some(Finding::Valid | Finding::Invalid));
        let reopened = round.escalated_segments.contains(&(index as u32));
        if round.escalated && reopened && replay_verdict(&finding) {
            overturned.extend(
                verdicts.iter().filter(|(_, f)| replay_verdict(f) && *f != finding).map(|(checker, _)| *checker),
            );
        }
    }

    // The job itself cannot be checked: void it. Nobody is paid or slashed for the round.
    if miner_findings.values().any(|f| f.contains(&Some(Finding::JobFault))) {
        round.phase = Phase::Settled;
        round.store(kv);
        events.push(Event::RoundTallied {
            job: job.id,
            round: round.round,
            accepted: Vec::new(),
            poisoners: Vec::new(),
            withholders: Vec::new(),
            freeloaders: Vec::new(),
            unchecked: Vec::new(),
        });
        events.extend(end_job(chain, kv, job, JobStatus::Voided, ctx.height)?);
        return Ok(());
    }

    let mut accepted = Vec::new();
    let mut poisoners = Vec::new();
    let mut withholders = Vec::new();
    let mut freeloaders = Vec::new();
    let mut unchecked = Vec::new();
    for commit in &round.commits {
        let findings = miner_findings.get(&commit.miner);
        let has = |finding| findings.is_some_and(|f| f.contains(&finding));
        if commit.reveal.is_none() {
            freeloaders.push(commit.miner);
        } else if has(Some(Finding::Invalid)) {
            poisoners.push(commit.miner);
        } else if has(Some(Finding::Unavailable)) {
            withholders.push(commit.miner);
        } else if findings.is_none() || has(None) {
            // Revealed but not (fully) checked: not paid, not punished.
            unchecked.push(commit.miner);
        } else {
            accepted.push(commit.miner);
        }
    }
    accepted.sort();

    let mut pool = Amount::ZERO;
    let params = &chain.params;
    let punished = [
        (&poisoners, params.poisoner_slash_ppm, SlashReason::Poisoner, true),
        (&withholders, params.withhold_slash_ppm, SlashReason::Withheld, true),
        (&freeloaders, params.freeloader_slash_ppm, SlashReason::Freeloader, false),
    ];
    for (miners, ppm, reason, ejected) in punished {
        for miner in miners {
            let amount = chain.slash(kv, miner, Role::Miner, ppm)?;
            pool = pool.checked_add(amount).ok_or(TxError::Overflow)?;
            events.push(Event::Slashed { who: *miner, role: Role::Miner, amount, reason, job: Some(job.id) });
            if ejected {
                eject(&mut job, events, *miner);
            }
        }
    }
    // A checker is slashed once a round for each kind of fault, however many verdicts it owed:
    // a job whose window no checker can meet (or a flood of assignments) costs a validator 1% a
    // round, not 1% per assignment compounded over thousands.
    for faults in [&mut missed, &mut overturned] {
        faults.sort();
        faults.dedup();
    }
    // Not one replay verdict in the whole round, from any checker, in two windows: the window
    // could not be met (a submitter's trap: `verify_blocks` far too short for the model) or the
    // checkers were all down. Neither is one checker's fault, and a trap job must not be a way
    // to burn validators' stake round after round; its miners stay unchecked (unpaid). A single
    // replay verdict (`Valid` or `Invalid`) shows a replay fits the window, and then every silent
    // checker is slashed; claims that need no replay (`Unavailable`, a job fault, an
    // abstention) show nothing about it, so a submitter's own validator cannot switch the
    // slashing back on with one cheap verdict.
    let replayed =
        round.verdicts.iter().any(|v| matches!(Finding::of(&v.outcome), Some(Finding::Valid | Finding::Invalid)));
    if !replayed {
        missed.clear();
    }
    let checker_faults = [
        (&missed, params.missed_verdict_slash_ppm, SlashReason::MissedVerdict),
        (&overturned, params.overturned_verdict_slash_ppm, SlashReason::OverturnedVerdict),
    ];
    for (checkers, ppm, reason) in checker_faults {
        for checker in checkers {
            let amount = chain.slash(kv, checker, Role::Validator, ppm)?;
            pool = pool.checked_add(amount).ok_or(TxError::Overflow)?;
            events.push(Event::Slashed { who: *checker, role: Role::Validator, amount, reason, job: Some(job.id) });
        }
    }
    // Slashed stake is burned: nobody, accuser or job, profits from a slash.
    chain.burn(kv, pool)?;
    events.push(Event::RoundTallied {
        job: job.id,
        round: round.round,
        accepted: accepted.clone(),
        poisoners,
        withholders,
        freeloaders,
        unchecked,
    });

    if trellis_protocol::fragments::is_streaming(&job.spec) || job.spec.diloco.encoding.has_error_feedback() {
        // What later work of each accepted miner may continue from and carry: its checkers
        // checked both (the final checkpoint by replay, the residual left exactly), unlike the
        // work of a miner nobody checked or that was refused.
        for commit in round.commits.iter().filter(|c| accepted.contains(&c.miner)) {
            if let Some(reveal) = &commit.reveal {
                let state = AcceptedState {
                    round: round.round,
                    final_checkpoint: reveal.final_checkpoint,
                    next_residual: reveal.next_residual,
                    since: commit.since,
                };
                write(kv, keys::accepted(job.id, &commit.miner), &state);
            }
        }
    }
    round.accepted = accepted;
    matched.sort();
    round.matched_checkers = matched;
    if round.accepted.is_empty() {
        // Nothing to aggregate: the model stays, nobody is paid.
        round.phase = Phase::Settled;
        round.store(kv);
        events.extend(next_round_or_end(chain, kv, job, ctx)?);
    } else {
        round.phase = Phase::AwaitingAggregate;
        round.aggregate_deadline = ctx.height.after(aggregate_window(&chain.params, &job.spec));
        round.store(kv);
        write(kv, keys::job(job.id), &job);
    }
    Ok(())
}

/// Pays the round and records the aggregate. Called once per round: the phase moves to
/// `Settled`, and `commit_aggregate` only accepts rounds awaiting an aggregate.
pub(crate) fn settle<S: KvStore + ?Sized>(
    chain: &Chain,
    kv: &mut S,
    mut job: Job,
    mut round: RoundState,
    aggregate: Option<&Aggregate>,
    ctx: &BlockCtx,
) -> Result<Vec<Event>, TxError> {
    let mut events = Vec::new();
    let payout = job.spec.reward_per_round.min(job.escrow);
    let verifier_pool = if round.matched_checkers.is_empty() {
        Amount::ZERO
    } else {
        fraction(payout, chain.params.verifier_share_ppm)
    };
    let miner_pool = payout.checked_sub(verifier_pool).ok_or(TxError::Overflow)?;
    // Shares follow the tokens each accepted miner revealed it trained (equal when every one
    // trained H steps).
    let tokens: BTreeMap<Address, u64> = round
        .accepted
        .iter()
        .map(|miner| {
            let steps = revealed_steps(&round, miner).unwrap_or(job.spec.diloco.inner_steps);
            (*miner, tokens_of(&job.spec, steps))
        })
        .collect();
    let total_tokens = tokens.values().fold(0u64, |sum, t| sum.saturating_add(*t));
    let mut paid = Amount::ZERO;
    for (miner, miner_tokens) in &tokens {
        // ≤ miner_pool, since miner_tokens ≤ total_tokens: the cast cannot truncate.
        let amount =
            Amount(((u128::from(miner_pool.0) * u128::from(*miner_tokens)) / u128::from(total_tokens.max(1))) as u64);
        chain.credit(kv, miner, amount)?;
        paid = paid.checked_add(amount).ok_or(TxError::Overflow)?;
        events.push(Event::Rewarded { job: job.id, round: round.round, who: *miner, amount, as_miner: true });
    }
    if !round.matched_checkers.is_empty() {
        let share = Amount(verifier_pool.0 / round.matched_checkers.len() as u64);
        for checker in &round.matched_checkers {
            chain.credit(kv, checker, share)?;
            paid = paid.checked_add(share).ok_or(TxError::Overflow)?;
            events.push(Event::Rewarded {
                job: job.id,
                round: round.round,
                who: *checker,
                amount: share,
                as_miner: false,
            });
        }
    }
    debug_assert!(paid <= payout, "a round pays at most its payout");
    job.escrow = job.escrow.checked_sub(paid).ok_or(TxError::Overflow)?;
    if let Some(aggregate) = aggregate {
        job.model_hash = aggregate.model_hash;
        job.momentum_hash = aggregate.momentum_hash;
        events.push(Event::AggregateCommitted { job: job.id, round: round.round, model_hash: aggregate.model_hash });
    }
    job.rounds_settled = job.rounds_settled.saturating_add(1);
    round.phase = Phase::Settled;
    round.store(kv);
    events.extend(next_round_or_end(chain, kv, job, ctx)?);
    Ok(events)
}

/// Opens the next round, or ends the job: cancelled, all rounds done, or escrow exhausted.
fn next_round_or_end<S: KvStore + ?Sized>(
    chain: &Chain,
    kv: &mut S,
    mut job: Job,
    ctx: &BlockCtx,
) -> Result<Vec<Event>, TxError> {
    if job.cancel_requested {
        return end_job(chain, kv, job, JobStatus::Cancelled, ctx.height);
    }
    if job.current_round.saturating_add(1) >= job.spec.diloco.rounds || job.escrow < job.spec.reward_per_round {
        return end_job(chain, kv, job, JobStatus::Finished, ctx.height);
    }
    retire_round(kv, job.id, job.current_round, ctx.height);
    job.current_round += 1;
    let round = new_round(&job, job.current_round, ctx.height, &ctx.randomness);
    let event = Event::RoundOpened { job: job.id, round: round.round, commit_deadline: round.commit_deadline };
    round.store(kv);
    write(kv, keys::job(job.id), &job);
    Ok(vec![event])
}

/// Ends the job at `height` and refunds what is left of the escrow to the submitter. The job
/// leaves the active index, its last round is queued for pruning, and the per-miner Δ and
/// accepted-state records (needed only while rounds are checked) go.
pub(crate) fn end_job<S: KvStore + ?Sized>(
    chain: &Chain,
    kv: &mut S,
    mut job: Job,
    status: JobStatus,
    height: Height,
) -> Result<Vec<Event>, TxError> {
    kv.delete(&keys::active(job.id));
    kv.delete(&keys::working(job.id));
    retire_round(kv, job.id, job.current_round, height);
    for (key, _) in kv.scan_prefix(&keys::accepted_of_job(job.id)) {
        kv.delete(&key);
    }
    let refund = job.escrow;
    chain.credit(kv, &job.submitter, refund)?;
    job.escrow = Amount::ZERO;
    job.status = status;
    let event = Event::JobEnded { job: job.id, status, refund };
    write(kv, keys::job(job.id), &job);
    Ok(vec![event])
}

/// Queues a round that is over (settled, lapsed, or the last of an ended job) to be pruned to its
/// summary [`SETTLED_ROUND_RETENTION`] blocks after `height`.
fn retire_round<S: KvStore + ?Sized>(kv: &mut S, job: trellis_proto::JobId, round: u32, height: Height) {
    kv.put(keys::prune(height.after(SETTLED_ROUND_RETENTION), job, round), Vec::new());
}

/// Prunes every round queued for a height up to `height` to its [`RoundSummary`]. Costs time
/// in the rounds due, not in the rounds ever held.
pub(crate) fn prune_due<S: KvStore + ?Sized>(kv: &mut S, height: Height) -> Result<(), TxError> {
    for (key, _) in kv.scan_prefix(keys::PRUNE_PREFIX) {
        let Some((due, job, round)) = keys::pruned_round(&key) else {
            let source =
                trellis_proto::codec::DecodeError::InvalidValue { what: "prune key", reason: "not height/job/round" };
            return Err(crate::state::CorruptState { key: String::from_utf8_lossy(&key).into_owned(), source }.into());
        };
        if due > height {
            break;
        }
        if let Some(state) = RoundState::load(kv, job, round)? {
            write(kv, keys::summary(job, round), &RoundSummary::of(&state));
            RoundState::delete(kv, job, round);
        }
        kv.delete(&key);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use trellis_proto::ModelConfig;

    /// The window grows with workers × parameters, from the chain's 20 blocks for `nano`-sized
    /// jobs, and is capped for any shape the chain admits.
    #[test]
    fn the_aggregation_window_grows_with_the_work_of_aggregating() {
        let params = crate::Params::default();
        // The trainer's presets `nano` (220,544 parameters) and `small` (14,393,088).
        let nano = ModelConfig { vocab_size: 256, context_length: 64, width: 64, layers: 4, heads: 4 };
        let small = ModelConfig { vocab_size: 256, context_length: 256, width: 384, layers: 8, heads: 6 };
        let widest =
            ModelConfig { vocab_size: 1 << 20, context_length: 1 << 16, width: 1 << 16, layers: 1_024, heads: 1 };
        assert_eq!(window_for(&params, &nano, 3), params.aggregate_blocks + 1);
        assert_eq!(window_for(&params, &small, 4), params.aggregate_blocks + 109);
        let small_window = window_for(&params, &small, 4);
        let expected = params.aggregate_blocks
            + trellis_protocol::model::parameter_count(&small) * 4 / AGGREGATE_PARAMETERS_PER_BLOCK;
        assert_eq!(small_window, expected);
        assert!(small_window > params.aggregate_blocks);
        assert!(window_for(&params, &small, 8) > small_window, "more workers, more to fetch");
        assert_eq!(window_for(&params, &widest, u32::MAX), MAX_AGGREGATE_WINDOW);
    }
}
