//! The records the chain keeps, their keys, and typed access over a [`KvStore`].
//!
//! Every record is stored in the canonical encoding of `trellis-proto`, so the state root is a
//! function of the records alone.

use serde::{Deserialize, Serialize};
use trellis_proto::codec::{decode, decode_seq, encode_seq, Decode, DecodeError, Encode, Reader};
use trellis_proto::{
    canonical_struct, canonical_tag_enum, Address, Amount, Hash, Height, JobId, JobSpec, PublicKey, Role,
    VerdictOutcome, WorkReveal,
};

use crate::kv::KvStore;

/// Generous bound for lists inside records we wrote ourselves.
const MAX_RECORD_LIST: usize = 1 << 20;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("state record {key} is corrupt: {source}")]
pub struct CorruptState {
    pub key: String,
    pub source: DecodeError,
}

/// A balance and the next expected nonce.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    pub balance: Amount,
    pub nonce: u64,
}
canonical_struct!(Account { balance, nonce });

/// An amount leaving a bond, slashable until `release_height`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unbonding {
    pub release_height: Height,
    pub amount: Amount,
}
canonical_struct!(Unbonding { release_height, amount });

/// One account's bond in one role.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stake {
    pub key: PublicKey,
    pub bonded: Amount,
    pub unbonding: Vec<Unbonding>,
    pub jailed: bool,
}

impl Stake {
    /// Everything that can still be slashed (`None` if it does not fit a u64, which supply
    /// conservation rules out).
    pub fn slashable(&self) -> Option<Amount> {
        self.unbonding.iter().try_fold(self.bonded, |sum, u| sum.checked_add(u.amount))
    }
}

impl Encode for Stake {
    fn encode_to(&self, out: &mut Vec<u8>) {
        self.key.encode_to(out);
        self.bonded.encode_to(out);
        encode_seq(&self.unbonding, out);
        self.jailed.encode_to(out);
    }
}

impl Decode for Stake {
    fn decode_from(reader: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Self {
            key: Decode::decode_from(reader)?,
            bonded: Decode::decode_from(reader)?,
            unbonding: decode_seq(reader, "unbonding", MAX_RECORD_LIST, 16)?,
            jailed: Decode::decode_from(reader)?,
        })
    }
}

/// A member of the active validator set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Validator {
    pub address: Address,
    pub key: PublicKey,
    pub power: u64,
}
canonical_struct!(Validator { address, key, power });

/// The active validator set, in address order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ValidatorSet {
    pub validators: Vec<Validator>,
}

impl ValidatorSet {
    pub fn total_power(&self) -> u64 {
        self.validators.iter().fold(0u64, |sum, v| sum.saturating_add(v.power))
    }

    pub fn contains(&self, address: &Address) -> bool {
        self.validators.iter().any(|v| &v.address == address)
    }
}

impl Encode for ValidatorSet {
    fn encode_to(&self, out: &mut Vec<u8>) {
        encode_seq(&self.validators, out);
    }
}

impl Decode for ValidatorSet {
    fn decode_from(reader: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Self { validators: decode_seq(reader, "validators", MAX_RECORD_LIST, 60)? })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum JobStatus {
    Active,
    /// All rounds done, or the escrow ran out.
    Finished,
    /// Cancelled by the submitter.
    Cancelled,
    /// Checkers found the job itself unusable (its dataset, model, keys or spec): the escrow went
    /// back to the submitter and nobody was paid or slashed for the round.
    Voided,
}
canonical_tag_enum!(JobStatus, "job status" { Active = 1, Finished = 2, Cancelled = 3, Voided = 4 });

impl JobStatus {
    /// The status as RPC and logs name it (its JSON name).
    pub fn name(self) -> &'static str {
        match self {
            JobStatus::Active => "active",
            JobStatus::Finished => "finished",
            JobStatus::Cancelled => "cancelled",
            JobStatus::Voided => "voided",
        }
    }
}

/// A miner that joined a job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MinerEntry {
    pub address: Address,
    /// Caught cheating, or dropped for holding a worker slot round after round without
    /// committing: may not commit to this job again, and no longer counts towards its miner cap.
    pub ejected: bool,
    /// Rounds in a row in which it held a worker slot and committed nothing
    /// ([`crate::rounds::MAX_MISSED_COMMITS`] of them drop it).
    #[serde(default)]
    pub missed_commits: u8,
}
canonical_struct!(MinerEntry { address, ejected, missed_commits });

/// A training job and its progress.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    pub id: JobId,
    pub submitter: Address,
    pub spec: JobSpec,
    /// Reward still held for future rounds (slashes of this job's miners flow back in).
    pub escrow: Amount,
    pub status: JobStatus,
    pub cancel_requested: bool,
    /// The round in progress (or the last one, once the job ended).
    pub current_round: u32,
    pub rounds_settled: u32,
    /// Hash of the latest committed model (`Hash::ZERO` until round 0 commits).
    pub model_hash: Hash,
    pub momentum_hash: Hash,
    /// Joined miners in address order.
    pub miners: Vec<MinerEntry>,
}

impl Job {
    /// A job as `SubmitJob` leaves it: active, at round 0, no model yet, no miners.
    pub fn submitted(id: JobId, submitter: Address, spec: JobSpec, escrow: Amount) -> Job {
        Job {
            id,
            submitter,
            spec,
            escrow,
            status: JobStatus::Active,
            cancel_requested: false,
            current_round: 0,
            rounds_settled: 0,
            model_hash: Hash::ZERO,
            momentum_hash: Hash::ZERO,
            miners: Vec::new(),
        }
    }
}

impl Encode for Job {
    fn encode_to(&self, out: &mut Vec<u8>) {
        self.id.encode_to(out);
        self.submitter.encode_to(out);
        self.spec.encode_to(out);
        self.escrow.encode_to(out);
        self.status.encode_to(out);
        self.cancel_requested.encode_to(out);
        self.current_round.encode_to(out);
        self.rounds_settled.encode_to(out);
        self.model_hash.encode_to(out);
        self.momentum_hash.encode_to(out);
        encode_seq(&self.miners, out);
    }
}

impl Decode for Job {
    fn decode_from(reader: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Self {
            id: Decode::decode_from(reader)?,
            submitter: Decode::decode_from(reader)?,
            spec: Decode::decode_from(reader)?,
            escrow: Decode::decode_from(reader)?,
            status: Decode::decode_from(reader)?,
            cancel_requested: Decode::decode_from(reader)?,
            current_round: Decode::decode_from(reader)?,
            rounds_settled: Decode::decode_from(reader)?,
            model_hash: Decode::decode_from(reader)?,
            momentum_hash: Decode::decode_from(reader)?,
            miners: decode_seq(reader, "miners", MAX_RECORD_LIST, 21)?,
        })
    }
}

/// Where a round is in its life (DESIGN §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// Accepting `CommitWork` up to the commit deadline.
    Open,
    /// Commit phase over; accepting `RevealWork` up to the reveal deadline.
    Revealing,
    /// Segments sampled; accepting verdicts up to the end of the window.
    Verifying,
    /// Tallied; waiting for `CommitAggregate`.
    AwaitingAggregate,
    /// Paid out (possibly with no accepted miner).
    Settled,
    /// The aggregate never came: nothing paid, the model unchanged.
    Lapsed,
}
canonical_tag_enum!(Phase, "round phase" { Open = 1, Verifying = 2, AwaitingAggregate = 3, Settled = 4, Lapsed = 5, Revealing = 6 });

impl Phase {
    /// The phase as RPC and logs name it (its JSON name).
    pub fn name(self) -> &'static str {
        match self {
            Phase::Open => "open",
            Phase::Revealing => "revealing",
            Phase::Verifying => "verifying",
            Phase::AwaitingAggregate => "awaiting-aggregate",
            Phase::Settled => "settled",
            Phase::Lapsed => "lapsed",
        }
    }
}

/// A miner's commitment as recorded, and its work once revealed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Commit {
    pub miner: Address,
    /// `WorkReveal::binding` of the work the miner will reveal, with its address.
    pub binding: Hash,
    pub height: Height,
    /// The revealed work (after the commit phase), checked against `binding`.
    pub reveal: Option<WorkReveal>,
    /// The round the miner's training state began: this round for a fresh start; in a streaming
    /// job, for work that continues the miner's accepted state, that state's own beginning
    /// (what its Δ weighs in the mean: `trellis_protocol::fragments::merge_weight`).
    #[serde(default)]
    pub since: u32,
}
canonical_struct!(Commit { miner, binding, height, reveal, since });

/// A sampled segment and who must check it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assignment {
    pub miner: Address,
    pub segment: u32,
    pub checkers: Vec<Address>,
}

impl Encode for Assignment {
    fn encode_to(&self, out: &mut Vec<u8>) {
        self.miner.encode_to(out);
        self.segment.encode_to(out);
        encode_seq(&self.checkers, out);
    }
}

impl Decode for Assignment {
    fn decode_from(reader: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Self {
            miner: Decode::decode_from(reader)?,
            segment: Decode::decode_from(reader)?,
            checkers: decode_seq(reader, "checkers", MAX_RECORD_LIST, 20)?,
        })
    }
}

/// A verdict as recorded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VerdictRecord {
    pub checker: Address,
    pub miner: Address,
    pub segment: u32,
    pub outcome: VerdictOutcome,
}
canonical_struct!(VerdictRecord { checker, miner, segment, outcome });

/// One round of one job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoundState {
    pub job: JobId,
    pub round: u32,
    pub opened_at: Height,
    /// Last height at which `CommitWork` is accepted.
    pub commit_deadline: Height,
    /// Last height at which `RevealWork` is accepted (set when the commit phase ends).
    pub reveal_deadline: Height,
    /// Last height at which verdicts are accepted (moves on escalation).
    pub verify_end: Height,
    /// Last height for `CommitAggregate` (set at tally).
    pub aggregate_deadline: Height,
    pub phase: Phase,
    pub escalated: bool,
    /// The miners training this round, at most `workers_per_round`; a miner's position here is
    /// its worker index in the batch schedule (so workers of a round train on disjoint shards).
    pub workers: Vec<Address>,
    pub commits: Vec<Commit>,
    pub assignments: Vec<Assignment>,
    /// The verdicts sent so far, ordered by (miner, segment, checker). Each is stored under its
    /// own key ([`keys::verdict`]) and the round's record holds none ([`RoundState::store`]):
    /// a verdict costs one small write, not a rewrite of its round (which was quadratic in the
    /// largest rounds). [`RoundState::load`] fills them in.
    pub verdicts: Vec<VerdictRecord>,
    /// Miners whose work was accepted, in address order (set at tally).
    pub accepted: Vec<Address>,
    /// One entry per verdict that matched its segment's outcome, in address order: each entry
    /// earns one share of the verifiers' fee at settlement.
    pub matched_checkers: Vec<Address>,
    /// The indices in `assignments` of the segments an escalation reopened (ascending): after
    /// an escalation only they take verdicts, and only on them can a verdict be overturned.
    #[serde(default)]
    pub escalated_segments: Vec<u32>,
}

impl Encode for RoundState {
    fn encode_to(&self, out: &mut Vec<u8>) {
        self.job.encode_to(out);
        self.round.encode_to(out);
        self.opened_at.encode_to(out);
        self.commit_deadline.encode_to(out);
        self.reveal_deadline.encode_to(out);
        self.verify_end.encode_to(out);
        self.aggregate_deadline.encode_to(out);
        self.phase.encode_to(out);
        self.escalated.encode_to(out);
        encode_seq(&self.workers, out);
        encode_seq(&self.commits, out);
        encode_seq(&self.assignments, out);
        encode_seq(&self.verdicts, out);
        encode_seq(&self.accepted, out);
        encode_seq(&self.matched_checkers, out);
        encode_seq(&self.escalated_segments, out);
    }
}

impl Decode for RoundState {
    fn decode_from(reader: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Self {
            job: Decode::decode_from(reader)?,
            round: Decode::decode_from(reader)?,
            opened_at: Decode::decode_from(reader)?,
            commit_deadline: Decode::decode_from(reader)?,
            reveal_deadline: Decode::decode_from(reader)?,
            verify_end: Decode::decode_from(reader)?,
            aggregate_deadline: Decode::decode_from(reader)?,
            phase: Decode::decode_from(reader)?,
            escalated: Decode::decode_from(reader)?,
            workers: decode_seq(reader, "workers", MAX_RECORD_LIST, 20)?,
            commits: decode_seq(reader, "commits", MAX_RECORD_LIST, 61)?,
            assignments: decode_seq(reader, "assignments", MAX_RECORD_LIST, 28)?,
            verdicts: decode_seq(reader, "verdicts", MAX_RECORD_LIST, 45)?,
            accepted: decode_seq(reader, "accepted", MAX_RECORD_LIST, 20)?,
            matched_checkers: decode_seq(reader, "matched checkers", MAX_RECORD_LIST, 20)?,
            escalated_segments: decode_seq(reader, "escalated segments", MAX_RECORD_LIST, 4)?,
        })
    }
}

impl RoundState {
    /// Round `round` of `job` with its verdicts, or `None` if there is no such round (or it was
    /// pruned to its summary).
    pub fn load(kv: &(impl KvStore + ?Sized), job: JobId, round: u32) -> Result<Option<Self>, CorruptState> {
        let Some(mut state) = Self::load_record(kv, job, round)? else { return Ok(None) };
        if !state.verdicts.is_empty() {
            // Written by a build that kept verdicts in the record: reading on would lose them.
            let key = String::from_utf8_lossy(&keys::round(job, round)).into_owned();
            return Err(CorruptState {
                key,
                source: DecodeError::InvalidValue {
                    what: "round record",
                    reason: "it holds verdicts: an older state layout, which this build does not read",
                },
            });
        }
        state.verdicts = kv
            .scan_prefix(&keys::verdicts_of_round(job, round))
            .into_iter()
            .map(|(key, bytes)| decode_record(&key, &bytes))
            .collect::<Result<_, _>>()?;
        Ok(Some(state))
    }

    /// The round's record without its verdicts (for a verdict's checks, which need the
    /// assignments but not the other verdicts: [`RoundState::has_verdict`]).
    pub fn load_record(kv: &(impl KvStore + ?Sized), job: JobId, round: u32) -> Result<Option<Self>, CorruptState> {
        read(kv, &keys::round(job, round))
    }

    /// Writes the round's record, leaving out its verdicts (stored under their own keys).
    pub fn store(&self, kv: &mut (impl KvStore + ?Sized)) {
        if self.verdicts.is_empty() {
            write(kv, keys::round(self.job, self.round), self);
        } else {
            write(kv, keys::round(self.job, self.round), &Self { verdicts: Vec::new(), ..self.clone() });
        }
    }

    /// Whether `checker` has sent its verdict on `segment` of `miner`'s work in this round.
    pub fn has_verdict(&self, kv: &(impl KvStore + ?Sized), miner: &Address, segment: u32, checker: &Address) -> bool {
        kv.get(&keys::verdict(self.job, self.round, miner, segment, checker)).is_some()
    }

    /// Records a verdict under its own key.
    pub fn add_verdict(&self, kv: &mut (impl KvStore + ?Sized), verdict: &VerdictRecord) {
        write(kv, keys::verdict(self.job, self.round, &verdict.miner, verdict.segment, &verdict.checker), verdict);
    }

    /// Deletes the round's record and its verdicts.
    pub fn delete(kv: &mut (impl KvStore + ?Sized), job: JobId, round: u32) {
        for (key, _) in kv.scan_prefix(&keys::verdicts_of_round(job, round)) {
            kv.delete(&key);
        }
        kv.delete(&keys::round(job, round));
    }
}

/// What is kept of a round once it has been settled (or lapsed) for
/// [`crate::rounds::SETTLED_ROUND_RETENTION`] blocks: the full [`RoundState`] (commitments,
/// assignments, verdicts) is deleted, so the state grows by this small record per round rather
/// than by every round's full history. The events of the blocks keep the details.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoundSummary {
    pub job: JobId,
    pub round: u32,
    pub phase: Phase,
    pub opened_at: Height,
    pub escalated: bool,
    pub commits: u32,
    pub reveals: u32,
    pub verdicts: u32,
    pub valid_verdicts: u32,
    /// Miners whose work was accepted, in address order.
    pub accepted: Vec<Address>,
}

impl RoundSummary {
    pub fn of(round: &RoundState) -> Self {
        let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        Self {
            job: round.job,
            round: round.round,
            phase: round.phase,
            opened_at: round.opened_at,
            escalated: round.escalated,
            commits: count(round.commits.len()),
            reveals: count(round.commits.iter().filter(|c| c.reveal.is_some()).count()),
            verdicts: count(round.verdicts.len()),
            valid_verdicts: count(round.verdicts.iter().filter(|v| v.outcome == VerdictOutcome::Valid).count()),
            accepted: round.accepted.clone(),
        }
    }
}

impl Encode for RoundSummary {
    fn encode_to(&self, out: &mut Vec<u8>) {
        self.job.encode_to(out);
        self.round.encode_to(out);
        self.phase.encode_to(out);
        self.opened_at.encode_to(out);
        self.escalated.encode_to(out);
        self.commits.encode_to(out);
        self.reveals.encode_to(out);
        self.verdicts.encode_to(out);
        self.valid_verdicts.encode_to(out);
        encode_seq(&self.accepted, out);
    }
}

impl Decode for RoundSummary {
    fn decode_from(reader: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Self {
            job: Decode::decode_from(reader)?,
            round: Decode::decode_from(reader)?,
            phase: Decode::decode_from(reader)?,
            opened_at: Decode::decode_from(reader)?,
            escalated: Decode::decode_from(reader)?,
            commits: Decode::decode_from(reader)?,
            reveals: Decode::decode_from(reader)?,
            verdicts: Decode::decode_from(reader)?,
            valid_verdicts: Decode::decode_from(reader)?,
            accepted: decode_seq(reader, "accepted", MAX_RECORD_LIST, 20)?,
        })
    }
}

/// What a miner's latest accepted work in a job leaves for its later work: that work's round, its
/// final checkpoint — where a streaming job's (`fragments > 1`) work of round `round + 1` may
/// continue from (`WorkReveal::continues`, docs/protocol.md §2.9) — and the error-feedback
/// residual its encoding left, checked exactly by its checkers: the only residual a later reveal
/// may carry (`WorkReveal::residual_hash`, §4.3). Written when a round is tallied, for every
/// miner whose work was accepted, in streaming and error-feedback jobs; deleted when the job ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AcceptedState {
    pub round: u32,
    pub final_checkpoint: Hash,
    pub next_residual: Hash,
    /// The round the state's training began ([`Commit::since`]).
    #[serde(default)]
    pub since: u32,
}
canonical_struct!(AcceptedState { round, final_checkpoint, next_residual, since });

/// Token supply accounting: `genesis + minted − burned` is what exists.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Supply {
    pub genesis: Amount,
    pub minted: Amount,
    pub burned: Amount,
}
canonical_struct!(Supply { genesis, minted, burned });

impl Supply {
    /// `genesis + minted − burned`; `None` if that does not fit (a corrupt record).
    pub fn expected_total(&self) -> Option<Amount> {
        self.genesis.checked_add(self.minted)?.checked_sub(self.burned)
    }
}

/// A validator's committed beacon onion (`trellis_protocol::beacon`): `held` is the layer it
/// revealed last (the tip, right after committing); its next proposal must reveal the layer
/// under it. Usable from `active_from` on, so nobody chooses a fresh onion after seeing the
/// beacon it would mix into.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BeaconOnion {
    pub held: Hash,
    /// Layers the onion was committed with.
    pub layers: u32,
    /// Layers not revealed yet; 0 = spent (the validator may commit a new onion).
    pub remaining: u32,
    /// How many onions this validator committed before this one (its node derives each seed).
    pub generation: u32,
    pub active_from: Height,
}
canonical_struct!(BeaconOnion { held, layers, remaining, generation, active_from });

impl BeaconOnion {
    /// Whether a block at `height` by this onion's owner must reveal its next layer.
    pub fn active_at(&self, height: Height) -> bool {
        self.active_from <= height && self.remaining > 0
    }

    /// The generation of the onion a validator holding `held` should commit next: the first
    /// when it holds none, the next when its onion is spent, none while it has layers left.
    pub fn due_generation(held: Option<&BeaconOnion>) -> Option<u32> {
        match held {
            None => Some(0),
            Some(onion) if onion.remaining == 0 => onion.generation.checked_add(1),
            Some(_) => None,
        }
    }
}

/// Keys of every record kind.
pub mod keys {
    use super::*;

    pub const SUPPLY: &[u8] = b"meta/supply";
    pub const VALIDATORS: &[u8] = b"meta/validators";
    pub const NEXT_JOB: &[u8] = b"meta/next-job";
    /// The beacon after the last block (absent before the first).
    pub const BEACON: &[u8] = b"meta/beacon";
    pub const ONION_PREFIX: &[u8] = b"onion/";
    pub const ACCOUNT_PREFIX: &[u8] = b"acct/";
    pub const STAKE_PREFIX: &[u8] = b"stake/";
    pub const JOB_PREFIX: &[u8] = b"job/";
    pub const ROUND_PREFIX: &[u8] = b"round/";
    /// `verdict/<job>/<round>/…`: verdicts, each under its own key ([`verdict`]).
    pub const VERDICT_PREFIX: &[u8] = b"verdict/";
    /// `active/<job>`: present while the job is active, so per-block work visits active jobs
    /// only, however many have ended.
    pub const ACTIVE_PREFIX: &[u8] = b"active/";
    /// `prune/<height>/<job>/<round>`: the round is pruned to its summary at that height.
    pub const PRUNE_PREFIX: &[u8] = b"prune/";
    /// `due/<height>/<job>`: `begin_block` of that height visits the job (a deadline of its round
    /// passes, or a transaction or the last visit changed it), so per-block work is in the jobs
    /// due, not in the jobs active.
    pub const DUE_PREFIX: &[u8] = b"due/";
    /// `working/<job>`: present from the job's first `CommitWork` until it ends, so that what
    /// reads the work being backed by stake (end-block, when unbonded stake matures) visits the
    /// jobs someone works on, not every job waiting for miners.
    pub const WORKING_PREFIX: &[u8] = b"working/";
    pub const SUMMARY_PREFIX: &[u8] = b"summary/";
    /// `accepted/<job>/<miner>`: a streaming job's miner's latest accepted state.
    pub const ACCEPTED_PREFIX: &[u8] = b"accepted/";

    pub fn account(address: &Address) -> Vec<u8> {
        [ACCOUNT_PREFIX, &address.0].concat()
    }

    pub fn stake(role: Role, address: &Address) -> Vec<u8> {
        [STAKE_PREFIX, &[role_byte(role)], b"/", &address.0].concat()
    }

    pub fn stake_prefix(role: Role) -> Vec<u8> {
        [STAKE_PREFIX, &[role_byte(role)], b"/"].concat()
    }

    pub fn onion(validator: &Address) -> Vec<u8> {
        [ONION_PREFIX, &validator.0].concat()
    }

    pub fn job(id: JobId) -> Vec<u8> {
        [JOB_PREFIX, &id.0.to_be_bytes()].concat()
    }

    pub fn round(job: JobId, round: u32) -> Vec<u8> {
        [ROUND_PREFIX, &job.0.to_be_bytes(), b"/", &round.to_be_bytes()].concat()
    }

    /// `verdict/<job>/<round>/`: the verdicts of one round.
    pub fn verdicts_of_round(job: JobId, round: u32) -> Vec<u8> {
        [VERDICT_PREFIX, &job.0.to_be_bytes(), b"/", &round.to_be_bytes(), b"/"].concat()
    }

    /// `verdict/<job>/<round>/<miner><segment><checker>`: one checker's verdict on one segment.
    pub fn verdict(job: JobId, round: u32, miner: &Address, segment: u32, checker: &Address) -> Vec<u8> {
        [verdicts_of_round(job, round).as_slice(), &miner.0, &segment.to_be_bytes(), &checker.0].concat()
    }

    pub fn active(job: JobId) -> Vec<u8> {
        [ACTIVE_PREFIX, &job.0.to_be_bytes()].concat()
    }

    /// The job an `active/` key names.
    pub fn active_job(key: &[u8]) -> Option<JobId> {
        let bytes = key.strip_prefix(ACTIVE_PREFIX)?;
        Some(JobId(u64::from_be_bytes(bytes.try_into().ok()?)))
    }

    pub fn prune(height: Height, job: JobId, round: u32) -> Vec<u8> {
        [PRUNE_PREFIX, &height.0.to_be_bytes(), b"/", &job.0.to_be_bytes(), b"/", &round.to_be_bytes()].concat()
    }

    /// The height, job and round a `prune/` key names.
    pub fn pruned_round(key: &[u8]) -> Option<(Height, JobId, u32)> {
        let bytes = key.strip_prefix(PRUNE_PREFIX)?;
        if bytes.len() != 8 + 1 + 8 + 1 + 4 {
            return None;
        }
        let height = u64::from_be_bytes(bytes[..8].try_into().ok()?);
        let job = u64::from_be_bytes(bytes[9..17].try_into().ok()?);
        let round = u32::from_be_bytes(bytes[18..22].try_into().ok()?);
        Some((Height(height), JobId(job), round))
    }

    pub fn working(job: JobId) -> Vec<u8> {
        [WORKING_PREFIX, &job.0.to_be_bytes()].concat()
    }

    /// The job a `working/` key names.
    pub fn working_job(key: &[u8]) -> Option<JobId> {
        let bytes = key.strip_prefix(WORKING_PREFIX)?;
        Some(JobId(u64::from_be_bytes(bytes.try_into().ok()?)))
    }

    pub fn due(height: Height, job: JobId) -> Vec<u8> {
        [DUE_PREFIX, &height.0.to_be_bytes(), b"/", &job.0.to_be_bytes()].concat()
    }

    /// The height and job a `due/` key names.
    pub fn due_job(key: &[u8]) -> Option<(Height, JobId)> {
        let bytes = key.strip_prefix(DUE_PREFIX)?;
        if bytes.len() != 8 + 1 + 8 || bytes[8] != b'/' {
            return None;
        }
        let height = u64::from_be_bytes(bytes[..8].try_into().ok()?);
        let job = u64::from_be_bytes(bytes[9..].try_into().ok()?);
        Some((Height(height), JobId(job)))
    }

    pub fn summary(job: JobId, round: u32) -> Vec<u8> {
        [SUMMARY_PREFIX, &job.0.to_be_bytes(), b"/", &round.to_be_bytes()].concat()
    }

    pub fn accepted_of_job(job: JobId) -> Vec<u8> {
        [ACCEPTED_PREFIX, &job.0.to_be_bytes(), b"/"].concat()
    }

    pub fn accepted(job: JobId, miner: &Address) -> Vec<u8> {
        [accepted_of_job(job).as_slice(), &miner.0].concat()
    }

    fn role_byte(role: Role) -> u8 {
        match role {
            Role::Validator => b'v',
            Role::Miner => b'm',
        }
    }
}

/// Every active job, in id order, read through the `active/` index: the cost is in the jobs
/// running, not in every job the chain has seen.
pub fn active_jobs(kv: &(impl KvStore + ?Sized)) -> Result<Vec<Job>, CorruptState> {
    indexed_jobs(kv, keys::ACTIVE_PREFIX, keys::active_job, "active job")
}

/// Every active job someone has committed work to, in id order, read through the `working/`
/// index (from a job's first `CommitWork` until it ends): the jobs that can have trails to check
/// and aggregates to compute. A job waiting for its first commitment is not among them, so jobs
/// nobody works in cost a validator's duties nothing.
pub fn working_jobs(kv: &(impl KvStore + ?Sized)) -> Result<Vec<Job>, CorruptState> {
    indexed_jobs(kv, keys::WORKING_PREFIX, keys::working_job, "working job")
}

fn indexed_jobs(
    kv: &(impl KvStore + ?Sized),
    prefix: &[u8],
    job_of: fn(&[u8]) -> Option<JobId>,
    what: &'static str,
) -> Result<Vec<Job>, CorruptState> {
    let mut jobs = Vec::new();
    for (key, _) in kv.scan_prefix(prefix) {
        let corrupt = |reason| CorruptState {
            key: String::from_utf8_lossy(&key).into_owned(),
            source: DecodeError::InvalidValue { what, reason },
        };
        let id = job_of(&key).ok_or_else(|| corrupt("not a job id"))?;
        let job: Job = read(kv, &keys::job(id))?.ok_or_else(|| corrupt("indexes a job that does not exist"))?;
        if job.status != JobStatus::Active {
            return Err(corrupt("indexes a job that ended"));
        }
        jobs.push(job);
    }
    Ok(jobs)
}

/// Reads a record; `None` when absent.
pub fn read<T: Decode>(kv: &(impl KvStore + ?Sized), key: &[u8]) -> Result<Option<T>, CorruptState> {
    match kv.get(key) {
        None => Ok(None),
        Some(bytes) => decode(&bytes)
            .map(Some)
            .map_err(|source| CorruptState { key: String::from_utf8_lossy(key).into_owned(), source }),
    }
}

/// Decodes a record read from a scan.
pub fn decode_record<T: Decode>(key: &[u8], bytes: &[u8]) -> Result<T, CorruptState> {
    decode(bytes).map_err(|source| CorruptState { key: String::from_utf8_lossy(key).into_owned(), source })
}

/// Writes a record.
pub fn write<T: Encode>(kv: &mut (impl KvStore + ?Sized), key: Vec<u8>, value: &T) {
    kv.put(key, value.to_bytes());
}

#[cfg(test)]
mod names {
    use super::*;

    #[test]
    fn phase_status_and_slash_reason_names_are_their_json_names() {
        for phase in
            [Phase::Open, Phase::Revealing, Phase::Verifying, Phase::AwaitingAggregate, Phase::Settled, Phase::Lapsed]
        {
            assert_eq!(serde_json::to_value(phase).unwrap(), phase.name());
        }
        for status in [JobStatus::Active, JobStatus::Finished, JobStatus::Cancelled, JobStatus::Voided] {
            assert_eq!(serde_json::to_value(status).unwrap(), status.name());
        }
        use crate::SlashReason::*;
        for reason in [Poisoner, Withheld, Freeloader, MissedVerdict, OverturnedVerdict, Equivocation] {
            assert_eq!(serde_json::to_value(reason).unwrap(), reason.name());
        }
    }
}
