//! The int8 residual link: a miner's carried residual is bounded by the Δ it revealed before, so
//! the chain keeps which Δ that was and refuses a residual that cannot have come from any.

mod common;

use common::*;
use trellis_contracts::state::{keys, read, JobStatus, MinerDeltas, RevealedDelta};
use trellis_contracts::TxError;
use trellis_proto::*;

fn deltas(w: &World, job: u64, miner: usize) -> Option<MinerDeltas> {
    read(&w.kv, &keys::deltas(JobId(job), &w.miners[miner].address())).unwrap()
}

/// Miner `i` commits to and reveals `work` in `round` (all miners commit so the phase moves).
fn commit_reveal(
    w: &mut World,
    job: u64,
    round: u32,
    works: &[WorkReveal],
) -> Vec<Result<Vec<trellis_contracts::Event>, TxError>> {
    for (i, work) in works.iter().enumerate() {
        let binding = work.binding(&w.miners[i].address());
        let miner = Keypair::from_seed(w.miners[i].seed());
        w.send(&miner, TxKind::CommitWork(WorkCommitment { job: JobId(job), round, binding })).unwrap();
    }
    w.enter_reveals(job, round);
    works
        .iter()
        .enumerate()
        .map(|(i, work)| {
            let miner = Keypair::from_seed(w.miners[i].seed());
            w.send(&miner, TxKind::RevealWork(work.clone()))
        })
        .collect()
}

#[test]
fn a_residual_needs_an_earlier_revealed_delta_and_the_chain_keeps_the_last_two() {
    let mut w = World::new(4, 2, params());
    let mut spec = w.spec();
    spec.diloco.encoding = DeltaEncoding::Int8;
    let job = w.submit_spec_and_join(spec, 30_000);

    // Round 0: miner 0 claims a residual it cannot have (no earlier Δ); miner 1 is honest.
    let mut made_up = w.work(job, 0, 0);
    made_up.residual_hash = Hash([42; 32]);
    let works = [made_up, w.work(job, 0, 1)];
    let results = commit_reveal(&mut w, job, 0, &works);
    assert!(
        matches!(&results[0], Err(TxError::InvalidCommitment(reason)) if reason.contains("earlier revealed")),
        "{:?}",
        results[0]
    );
    assert!(results[1].is_ok());
    assert_eq!(deltas(&w, job, 0), None, "a refused reveal records nothing");
    let first = RevealedDelta { round: 0, delta_hash: w.work(job, 0, 1).delta_hash };
    assert_eq!(deltas(&w, job, 1), Some(MinerDeltas { latest: first, previous: None }));
    let reveal_deadline = w.round(job, 0).reveal_deadline;
    w.advance_to(reveal_deadline + 1);
    w.verdicts(job, 0, |_, _, _| Some(VerdictOutcome::Valid));
    w.past_verify_end(job, 0);
    w.aggregate(job, 0).unwrap();

    // Round 1: miner 1 carries a residual now, and the chain names the Δ it must come from.
    let mut carried = w.work(job, 1, 1);
    carried.delta_hash = Hash([201; 32]);
    carried.residual_hash = Hash([43; 32]);
    let works = [w.work(job, 1, 0), carried];
    let results = commit_reveal(&mut w, job, 1, &works);
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    let second = RevealedDelta { round: 1, delta_hash: Hash([201; 32]) };
    assert_eq!(deltas(&w, job, 1), Some(MinerDeltas { latest: second, previous: Some(first) }));
    assert_eq!(deltas(&w, job, 0).map(|d| d.previous), Some(None), "miner 0's first revealed Δ is from round 1");

    // The records go with the job.
    let submitter = Keypair::from_seed(w.submitter.seed());
    w.send(&submitter, TxKind::CancelJob { job: JobId(job) }).unwrap();
    w.next_block();
    w.verdicts(job, 1, |_, _, _| Some(VerdictOutcome::Valid));
    w.past_verify_end(job, 1);
    w.aggregate(job, 1).unwrap();
    assert_eq!(w.job(job).status, JobStatus::Cancelled);
    assert_eq!((deltas(&w, job, 0), deltas(&w, job, 1)), (None, None));
}

#[test]
fn jobs_of_other_encodings_keep_no_delta_records() {
    let mut w = World::new(4, 2, params());
    let job = w.submit_and_join(30_000);
    let works = [w.work(job, 0, 0), w.work(job, 0, 1)];
    let results = commit_reveal(&mut w, job, 0, &works);
    assert!(results.iter().all(Result::is_ok));
    assert_eq!((deltas(&w, job, 0), deltas(&w, job, 1)), (None, None));
}
