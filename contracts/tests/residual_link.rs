//! The error-feedback residual link: a miner's reveal names the residual its encoding leaves
//! (`next_residual`, recomputed exactly by its checkers), the chain records it when the work is
//! accepted, and a later reveal may carry that residual and no other (or none).

mod common;

use common::*;
use trellis_contracts::state::{keys, read, AcceptedState, JobStatus};
use trellis_contracts::TxError;
use trellis_proto::*;

fn accepted(w: &World, job: u64, miner: usize) -> Option<AcceptedState> {
    read(&w.kv, &keys::accepted(JobId(job), &w.miners[miner].address())).unwrap()
}

/// Every miner commits to its `works` entry, then reveals it; the reveals' results.
fn commit_reveal(
    w: &mut World,
    job: u64,
    round: u32,
    works: &[WorkReveal],
) -> Vec<Result<Vec<trellis_contracts::Event>, TxError>> {
    for (i, work) in works.iter().enumerate() {
        w.commit_work(i, work).unwrap();
    }
    w.enter_reveals(job, round);
    works.iter().enumerate().map(|(i, work)| w.reveal_work(i, work.clone())).collect()
}

/// Past the reveals, every check of the round is valid; the round is tallied and aggregated.
fn settle(w: &mut World, job: u64, round: u32) {
    let reveal_deadline = w.round(job, round).reveal_deadline;
    w.advance_to(reveal_deadline + 1);
    w.verdicts(job, round, |_, _, _| Some(VerdictOutcome::Valid));
    w.past_verify_end(job, round);
    w.aggregate(job, round).unwrap();
}

fn refused_for(result: &Result<Vec<trellis_contracts::Event>, TxError>, words: &str) -> bool {
    matches!(result, Err(TxError::InvalidCommitment(reason)) if reason.contains(words))
}

#[test]
fn a_miner_carries_only_the_residual_its_latest_accepted_work_left() {
    let mut w = World::new(4, 2, params());
    let mut spec = w.spec();
    spec.diloco.encoding = DeltaEncoding::Int8;
    let job = w.submit_spec_and_join(spec, 30_000);
    let leaves = |w: &World, round: u32, i: usize, carried: Hash, left: u8| WorkReveal {
        residual_hash: carried,
        next_residual: Hash([left; 32]),
        ..w.work(job, round, i)
    };

    // Round 0: miner 0 claims to carry a residual it cannot have (no accepted work yet).
    let works = [leaves(&w, 0, 0, Hash([42; 32]), 10), leaves(&w, 0, 1, Hash::ZERO, 11)];
    let results = commit_reveal(&mut w, job, 0, &works);
    assert!(refused_for(&results[0], "latest accepted work"), "{:?}", results[0]);
    assert!(results[1].is_ok());
    assert_eq!(accepted(&w, job, 1), None, "nothing is recorded before the tally");
    settle(&mut w, job, 0);
    let first = AcceptedState {
        round: 0,
        final_checkpoint: works[1].final_checkpoint,
        next_residual: Hash([11; 32]),
        since: 0,
    };
    assert_eq!(accepted(&w, job, 1), Some(first));
    assert_eq!(accepted(&w, job, 0), None, "a refused reveal earns no record");

    // Round 1: another miner's residual is not miner 0's to carry; miner 1 carries its own.
    let works = [leaves(&w, 1, 0, Hash([11; 32]), 20), leaves(&w, 1, 1, Hash([11; 32]), 21)];
    let results = commit_reveal(&mut w, job, 1, &works);
    assert!(refused_for(&results[0], "latest accepted work"), "{:?}", results[0]);
    assert!(results[1].is_ok(), "{:?}", results[1]);
    settle(&mut w, job, 1);
    assert_eq!(accepted(&w, job, 1).map(|a| (a.round, a.next_residual)), Some((1, Hash([21; 32]))));

    // Round 2: what round 0 left was consumed by round 1: carrying it again is refused; carrying
    // nothing is always allowed.
    let works = [leaves(&w, 2, 0, Hash::ZERO, 30), leaves(&w, 2, 1, Hash([11; 32]), 31)];
    let results = commit_reveal(&mut w, job, 2, &works);
    assert!(results[0].is_ok(), "{:?}", results[0]);
    assert!(refused_for(&results[1], "latest accepted work"), "{:?}", results[1]);

    // The records go with the job.
    let submitter = Keypair::from_seed(w.submitter.seed());
    w.send(&submitter, TxKind::CancelJob { job: JobId(job) }).unwrap();
    settle(&mut w, job, 2);
    assert_eq!(w.job(job).status, JobStatus::Cancelled);
    assert_eq!((accepted(&w, job, 0), accepted(&w, job, 1)), (None, None));
}

#[test]
fn work_without_error_feedback_names_no_residual_and_keeps_no_record() {
    let mut w = World::new(4, 2, params());
    let job = w.submit_and_join(30_000);
    let leaving = WorkReveal { next_residual: Hash([7; 32]), ..w.work(job, 0, 0) };
    let works = [leaving, w.work(job, 0, 1)];
    let results = commit_reveal(&mut w, job, 0, &works);
    assert!(refused_for(&results[0], "carries a residual"), "{:?}", results[0]);
    assert!(results[1].is_ok());
    settle(&mut w, job, 0);
    assert_eq!((accepted(&w, job, 0), accepted(&w, job, 1)), (None, None), "an f32 job records no accepted state");
}
