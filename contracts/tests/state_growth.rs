//! State that only grows (issue 18, item 7): settled rounds are pruned to a summary, the work
//! done every block does not grow with the jobs that have ended, and the state root follows the
//! keys a block changed.

mod common;

use std::cell::Cell;

use common::*;
use trellis_contracts::rounds::SETTLED_ROUND_RETENTION;
use trellis_contracts::state::{keys, read, JobStatus, Phase, RoundSummary};
use trellis_contracts::{KvStore, MemoryKv};
use trellis_proto::*;

/// Runs round `round` of `job` honestly to settlement: every miner commits, reveals, is checked
/// valid, and the aggregate comes.
fn honest_round(w: &mut World, job: u64, round: u32) {
    for i in 0..w.miners.len() {
        w.commit(job, round, i).unwrap();
    }
    w.past_commit_deadline(job, round);
    w.verdicts(job, round, |_, _, _| Some(VerdictOutcome::Valid));
    w.past_verify_end(job, round);
    w.aggregate(job, round).unwrap();
}

fn keys_under(kv: &MemoryKv, prefix: &[u8]) -> usize {
    kv.scan_prefix(prefix).len()
}

#[test]
fn settled_rounds_shrink_to_summaries_and_an_ended_job_leaves_no_per_block_work() {
    let mut w = World::new(4, 3, params());
    let job = w.submit_and_join(30_000);
    assert_eq!(keys_under(&w.kv, keys::ACTIVE_PREFIX), 1);
    for round in 0..3 {
        honest_round(&mut w, job, round);
    }
    assert_eq!(w.job(job).status, JobStatus::Finished);
    assert_eq!(keys_under(&w.kv, keys::ACTIVE_PREFIX), 0, "an ended job leaves the active index");
    // Full records stay readable for a while after settlement...
    let full = w.round(job, 2);
    assert_eq!(full.phase, Phase::Settled);
    assert_eq!(keys_under(&w.kv, keys::ROUND_PREFIX), 3);
    assert_eq!(keys_under(&w.kv, keys::VERDICT_PREFIX), full.verdicts.len() * 3, "each verdict under its own key");
    assert!(!full.verdicts.is_empty());
    // ...then only summaries are left.
    let height = w.height;
    w.advance_to(height + SETTLED_ROUND_RETENTION + 1);
    assert_eq!(keys_under(&w.kv, keys::ROUND_PREFIX), 0, "every round record was pruned");
    assert_eq!(keys_under(&w.kv, keys::VERDICT_PREFIX), 0, "and every verdict with it");
    assert_eq!(keys_under(&w.kv, keys::PRUNE_PREFIX), 0, "the prune queue is drained");
    assert_eq!(keys_under(&w.kv, keys::DUE_PREFIX), 0, "and so is the queue of jobs to visit");
    for round in 0..3 {
        let summary: RoundSummary = read(&w.kv, &keys::summary(JobId(job), round)).unwrap().unwrap();
        assert_eq!((summary.job, summary.round, summary.phase), (JobId(job), round, Phase::Settled));
        assert_eq!(summary.commits, 3);
        assert_eq!(summary.reveals, 3);
        assert_eq!(summary.accepted.len(), 3);
        assert_eq!(summary.valid_verdicts, summary.verdicts);
        assert!(summary.verdicts >= 6, "two segments per miner, two checkers each");
    }
    assert_eq!(RoundSummary::of(&full).accepted, full.accepted);
    w.supply_holds();
}

#[test]
fn a_round_that_is_still_running_is_never_pruned() {
    let mut w = World::new(4, 3, params());
    let job = w.submit_and_join(30_000);
    honest_round(&mut w, job, 0);
    // Round 1 is open and nobody commits for a long time: its commit window simply closes.
    let height = w.height;
    w.advance_to(height + SETTLED_ROUND_RETENTION + 2);
    assert!(read::<RoundSummary>(&w.kv, &keys::summary(JobId(job), 0)).unwrap().is_some(), "round 0 was pruned");
    let current = w.job(job).current_round;
    let record = read::<trellis_contracts::state::RoundState>(&w.kv, &keys::round(JobId(job), current)).unwrap();
    assert!(record.is_some(), "the current round {current} keeps its full record");
}

/// A store that counts the entries it hands out (gets and scanned entries) and the bytes
/// written to it.
struct Counting<'a> {
    inner: &'a mut MemoryKv,
    entries_read: Cell<usize>,
    bytes_written: usize,
}

impl KvStore for Counting<'_> {
    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.entries_read.set(self.entries_read.get() + 1);
        self.inner.get(key)
    }

    fn put(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.bytes_written += key.len() + value.len();
        self.inner.put(key, value);
    }

    fn delete(&mut self, key: &[u8]) {
        self.inner.delete(key);
    }

    fn scan_prefix(&self, prefix: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
        let found = self.inner.scan_prefix(prefix);
        self.entries_read.set(self.entries_read.get() + found.len());
        found
    }
}

/// Entries a begin-block and end-block read in a world where `ended` jobs have come and gone,
/// `waiting` jobs wait for their first miner, and one job is running; with `maturing`, stake a
/// validator unbonded matures at that end-block (which then reads what work stake backs).
fn entries_read_per_block(ended: usize, waiting: usize, maturing: bool) -> usize {
    let mut w = World::new(4, 3, params());
    let submitter = Keypair::from_seed(w.submitter.seed());
    for _ in 0..ended {
        let job = w.submit_and_join(10_000);
        w.send(&submitter, TxKind::CancelJob { job: JobId(job) }).unwrap();
    }
    for _ in 0..waiting {
        // The cheapest job there is: one token a round, one token of escrow.
        let spec = JobSpec { reward_per_round: Amount(1), ..w.spec() };
        w.send(&submitter, TxKind::SubmitJob { spec, escrow: Amount(1) }).unwrap();
    }
    let mut spec = w.spec();
    spec.diloco.rounds = 1_000;
    let running = w.submit_spec_and_join(spec, 10_000);
    let measured_at = w.height + SETTLED_ROUND_RETENTION + 1;
    if maturing {
        w.advance_to(Height(measured_at.0 - w.chain.params.unbonding_blocks));
        let validator = Keypair::from_seed(w.validators[3].seed());
        w.send(&validator, TxKind::Unbond { role: Role::Validator, amount: Amount(1_000) }).unwrap();
    }
    w.advance_to(measured_at);
    assert_eq!(w.job(running).status, JobStatus::Active);
    let ctx = w.ctx();
    let mut counting = Counting { inner: &mut w.kv, entries_read: Cell::new(0), bytes_written: 0 };
    w.chain.end_block(&mut counting, &ctx).unwrap();
    let mut next = ctx.clone();
    next.height += 1;
    w.chain.begin_block(&mut counting, &next).unwrap();
    counting.entries_read.get()
}

#[test]
fn a_block_reads_as_much_state_with_a_thousand_ended_jobs_as_with_none() {
    let none = entries_read_per_block(0, 0, false);
    let many = entries_read_per_block(1_000, 0, false);
    assert_eq!(none, many, "begin- and end-block read {none} entries with no ended job, {many} with 1,000");
}

/// Jobs nobody joins cost a submitter only a fee each (the escrow comes back on `CancelJob`), so
/// they must not cost every block a visit: `begin_block` visits only the jobs due (a deadline
/// passes, or a transaction changed them). Until 2026-12-03 it read every active job's record
/// and round every block, 2,000 entries more here.
#[test]
fn a_block_reads_as_much_state_with_a_thousand_jobs_waiting_for_miners_as_with_none() {
    let none = entries_read_per_block(0, 0, false);
    let many = entries_read_per_block(0, 1_000, false);
    assert_eq!(none, many, "begin- and end-block read {none} entries with no waiting job, {many} with 1,000");
}

/// When unbonded stake matures, end-block reads who backs unsettled work: the jobs someone has
/// committed work to (`working/`), not the jobs waiting for miners (until 2026-12-03 every active
/// job, so a validator unbonding a little at a time could make blocks read every waiting job).
#[test]
fn maturing_stake_reads_as_much_state_with_a_thousand_jobs_waiting_for_miners_as_with_none() {
    let none = entries_read_per_block(0, 0, true);
    let many = entries_read_per_block(0, 1_000, true);
    assert!(none > entries_read_per_block(0, 0, false), "the maturing stake made end-block read more");
    assert_eq!(none, many, "a maturing block read {none} entries with no waiting job, {many} with 1,000");
}

/// A validator's duties (checks, prefetches, aggregates) look at the jobs someone has committed
/// work to (`state::working_jobs`), so a thousand jobs waiting for miners add nothing to what a
/// validator reads each block; a job enters with its first commitment (and leaves when it ends).
#[test]
fn a_validators_duties_read_as_much_state_with_a_thousand_jobs_waiting_for_miners_as_with_none() {
    let read_by_duties = |waiting: usize| {
        let mut w = World::new(4, 3, params());
        let submitter = Keypair::from_seed(w.submitter.seed());
        for _ in 0..waiting {
            let spec = JobSpec { reward_per_round: Amount(1), ..w.spec() };
            w.send(&submitter, TxKind::SubmitJob { spec, escrow: Amount(1) }).unwrap();
        }
        let joined = w.submit_and_join(10_000);
        assert!(trellis_contracts::state::working_jobs(&w.kv).unwrap().is_empty(), "nobody committed yet");
        w.commit(joined, 0, 0).unwrap();
        let counting = Counting { inner: &mut w.kv, entries_read: Cell::new(0), bytes_written: 0 };
        let working = trellis_contracts::state::working_jobs(&counting).unwrap();
        assert_eq!(working.iter().map(|j| j.id).collect::<Vec<_>>(), vec![JobId(joined)]);
        let read = counting.entries_read.get();
        let active = trellis_contracts::state::active_jobs(&w.kv).unwrap().len();
        assert_eq!(active, waiting + 1);
        read
    };
    let (none, many) = (read_by_duties(0), read_by_duties(1_000));
    assert_eq!(none, many, "the duties read {none} entries with no waiting job, {many} with 1,000");
}

/// Bytes one verdict writes in a round where each of three miners has `segments` segments
/// checked.
fn bytes_a_verdict_writes(segments: u32) -> usize {
    let mut w = World::new(4, 3, params());
    let mut spec = w.spec();
    spec.diloco.inner_steps = 64;
    spec.diloco.min_inner_steps = 64;
    spec.verification.checkpoint_interval = 1;
    spec.verification.segments_per_miner = segments;
    let job = w.submit_spec_and_join(spec, 30_000);
    for i in 0..3 {
        let work = w.work_of_steps(job, 0, i, 64);
        w.commit_work(i, &work).unwrap();
    }
    w.enter_reveals(job, 0);
    for i in 0..3 {
        let work = w.work_of_steps(job, 0, i, 64);
        w.reveal_work(i, work).unwrap();
    }
    w.next_block();
    let round = w.round(job, 0);
    assert_eq!(round.assignments.len(), 3 * segments as usize);
    let first = &round.assignments[0];
    let checker = w.key_of(&first.checkers[0]).unwrap();
    let verdict = Verdict {
        job: JobId(job),
        round: 0,
        miner: first.miner,
        segment: first.segment,
        outcome: VerdictOutcome::Valid,
    };
    let tx = w.signed(&checker, TxKind::Verdict(verdict));
    let ctx = w.ctx();
    let mut counting = Counting { inner: &mut w.kv, entries_read: Cell::new(0), bytes_written: 0 };
    w.chain.apply_tx(&mut counting, &tx, &ctx).unwrap();
    let written = counting.bytes_written;
    assert_eq!(w.round(job, 0).verdicts.len(), 1, "the verdict is in the round's view");
    written
}

/// A verdict writes its own small record: as many bytes in a round of 192 checked segments as
/// in one of 3 (its round was decoded, extended and rewritten whole for every verdict before
/// 2026-12-03, quadratic in the largest rounds).
#[test]
fn a_verdict_writes_as_much_in_a_large_round_as_in_a_small_one() {
    let small = bytes_a_verdict_writes(1);
    let large = bytes_a_verdict_writes(64);
    assert_eq!(small, large, "a verdict wrote {small} bytes in a round of 3 segments, {large} in one of 192");
    assert!(small < 1_024, "a verdict, its fee and its nonce: {small} bytes");
}
