//! Silenced checkers: failures caused by a miner's or a submitter's data used to leave the
//! checker silent, which tallied as `Valid` and slashed the checker. Now every failure has a
//! verdict: the checker's own is an explicit abstain (never approval), the job's voids the job.

mod common;

use common::*;
use trellis_contracts::state::JobStatus;
use trellis_contracts::{Event, TxError};
use trellis_proto::*;

#[test]
fn abstaining_checkers_are_not_slashed_and_their_silence_never_approves() {
    let mut w = World::new(6, 1, params());
    let job = w.submit_and_join(30_000);
    w.commit(job, 0, 0).unwrap();
    w.past_commit_deadline(job, 0);
    w.verdicts(job, 0, |_, _, _| Some(VerdictOutcome::Abstain));
    w.past_verify_end(job, 0);
    let round = w.round(job, 0);
    assert!(round.escalated, "no decisive verdict escalates to fresh checkers");
    assert!(round.assignments.iter().all(|a| a.checkers.len() == 4));
    w.verdicts(job, 0, |_, _, _| Some(VerdictOutcome::Abstain));
    w.past_verify_end(job, 0);
    let miner = w.miners[0].address();
    let tallied = w.events.iter().any(|e| matches!(e, Event::RoundTallied { unchecked, accepted, .. } if unchecked == &vec![miner] && accepted.is_empty()));
    assert!(tallied, "the miner is unchecked, not accepted");
    assert!(w.events.iter().all(|e| !matches!(e, Event::Slashed { .. })), "nobody is slashed: abstaining is an answer");
    assert_eq!(w.job(job).escrow, Amount(30_000), "unchecked work is not paid");
    w.supply_holds();
}

#[test]
fn checkers_that_find_the_job_unusable_void_it_and_refund_the_submitter() {
    let mut w = World::new(4, 2, params());
    let job = w.submit_and_join(30_000);
    let submitter_before = w.balance(&w.submitter);
    w.commit(job, 0, 0).unwrap();
    w.commit(job, 0, 1).unwrap();
    w.past_commit_deadline(job, 0);
    let fault = VerdictOutcome::JobFault { reason: JobFaultReason::DatasetUnavailable };
    w.verdicts(job, 0, |_, _, _| Some(fault.clone()));
    w.past_verify_end(job, 0);
    let state = w.job(job);
    assert_eq!(state.status, JobStatus::Voided);
    assert_eq!(state.escrow, Amount::ZERO);
    assert_eq!(w.balance(&w.submitter), submitter_before + 30_000, "the whole escrow goes back");
    assert!(w.events.iter().all(|e| !matches!(e, Event::Slashed { .. })), "nobody is slashed for the job's fault");
    assert!(matches!(w.commit(job, 1, 0), Err(TxError::JobNotActive(_))));
    w.supply_holds();
}

#[test]
fn a_lone_job_fault_claim_is_outvoted_by_the_committee() {
    let mut w = World::new(6, 1, params());
    let job = w.submit_and_join(30_000);
    w.commit(job, 0, 0).unwrap();
    w.past_commit_deadline(job, 0);
    let liar = w.round(job, 0).assignments[0].checkers[0];
    let fault = VerdictOutcome::JobFault { reason: JobFaultReason::ModelUnusable };
    w.verdicts(job, 0, |_, _, checker| Some(if *checker == liar { fault.clone() } else { VerdictOutcome::Valid }));
    w.past_verify_end(job, 0);
    assert!(w.round(job, 0).escalated);
    w.verdicts(job, 0, |_, _, _| Some(VerdictOutcome::Valid));
    w.past_verify_end(job, 0);
    assert_eq!(w.job(job).status, JobStatus::Active);
    assert_eq!(w.round(job, 0).accepted, vec![w.miners[0].address()]);
}
