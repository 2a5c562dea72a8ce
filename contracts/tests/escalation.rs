//! Escalation as a stake vote with nothing at risk: on the old rules a checker whose verdict the
//! larger committee overturned lost only its fee share, so framing honest work (`Invalid`) or
//! waving faked work through (`Valid`) cost nothing. An overturned verdict is now slashed
//! (`overturned_verdict_slash_ppm`, 10%); ties still go to the outcome that punishes least.
//! Availability claims (`Unavailable`, `JobFault`) can differ honestly and are not slashed.

mod common;

use common::*;
use trellis_contracts::state::Assignment;
use trellis_contracts::SlashReason;
use trellis_proto::*;

/// Six validators, one miner whose work of round 0 is committed, revealed and sampled: the
/// round is waiting for verdicts. Returns the world and the job.
fn round_in_verification() -> (World, u64) {
    let mut w = World::new(6, 1, params());
    let job = w.submit_and_join(30_000);
    w.commit(job, 0, 0).unwrap();
    w.past_commit_deadline(job, 0);
    (w, job)
}

/// Commits and reveals miner 0's work, then has the first checker of its first segment say
/// `lone` while everyone else (first the other checker, then the committee) says `rest`.
fn escalate(lone: VerdictOutcome, rest: VerdictOutcome) -> (World, Assignment, Address) {
    let (mut w, job) = round_in_verification();
    let first = w.round(job, 0).assignments[0].clone();
    let lone_checker = first.checkers[0];
    w.verdicts(job, 0, |_, segment, checker| {
        Some(if segment == first.segment && *checker == lone_checker { lone.clone() } else { rest.clone() })
    });
    w.past_verify_end(job, 0);
    assert!(w.round(job, 0).escalated, "a disagreement escalates");
    w.verdicts(job, 0, |_, _, _| Some(rest.clone()));
    w.past_verify_end(job, 0);
    (w, first, lone_checker)
}

#[test]
fn a_checker_framing_honest_work_is_overturned_and_slashed() {
    let (w, _, framer) = escalate(invalid(), VerdictOutcome::Valid);
    let miner = w.miners[0].address();
    assert!(w.round(0, 0).accepted.contains(&miner), "the honest miner is accepted");
    assert!(slashed(&w, &miner).is_empty());
    assert_eq!(slashed(&w, &framer), vec![(2_000, SlashReason::OverturnedVerdict)], "10% of a 20,000 bond");
    w.supply_holds();
}

#[test]
fn a_lazy_checker_waving_faked_work_through_is_overturned_and_slashed() {
    let (w, _, lazy) = escalate(VerdictOutcome::Valid, invalid());
    let miner = w.miners[0].address();
    assert_eq!(slashed(&w, &miner), vec![(2_500, SlashReason::Poisoner)]);
    assert_eq!(slashed(&w, &lazy), vec![(2_000, SlashReason::OverturnedVerdict)]);
    w.supply_holds();
}

#[test]
fn an_abstaining_committee_member_is_never_overturned() {
    let (mut w, job) = round_in_verification();
    let first = w.round(job, 0).assignments[0].clone();
    let framer = first.checkers[0];
    w.verdicts(job, 0, |_, segment, checker| {
        Some(if segment == first.segment && *checker == framer { invalid() } else { VerdictOutcome::Valid })
    });
    w.past_verify_end(job, 0);
    let committee = w.round(job, 0).assignments[0].checkers.clone();
    let abstainer = committee[2];
    w.verdicts(job, 0, |_, _, checker| {
        Some(if *checker == abstainer { VerdictOutcome::Abstain } else { VerdictOutcome::Valid })
    });
    w.past_verify_end(job, 0);
    assert_eq!(slashed(&w, &framer), vec![(2_000, SlashReason::OverturnedVerdict)]);
    assert!(slashed(&w, &abstainer).is_empty(), "an abstain decides nothing, so nothing overturns it");
    w.supply_holds();
}

#[test]
fn an_overturned_availability_claim_costs_the_fee_share_only() {
    let (w, _, unlucky) = escalate(VerdictOutcome::Unavailable, VerdictOutcome::Valid);
    assert!(slashed(&w, &unlucky).is_empty(), "blobs can be unreachable from one checker for a while");
    let round = w.round(0, 0);
    let given = round.verdicts.iter().filter(|v| v.checker == unlucky).count();
    let paid = round.matched_checkers.iter().filter(|c| **c == unlucky).count();
    assert_eq!(paid, given - 1, "the overturned verdict earns no fee share");
    w.supply_holds();
}

#[test]
fn invalid_evidence_that_quotes_nothing_the_miner_revealed_is_refused() {
    let (mut w, job) = round_in_verification();
    let first = w.round(job, 0).assignments[0].clone();
    let checker = w.key_of(&first.checkers[0]).unwrap();
    let reveal = w.work(job, 0, 0);
    let verdict = |evidence: InvalidEvidence| Verdict {
        job: JobId(job),
        round: 0,
        miner: first.miner,
        segment: first.segment,
        outcome: VerdictOutcome::Invalid(evidence),
    };
    // A Δ the miner never revealed, a zero residual, a "mismatch" that reproduces its own quote.
    for evidence in [
        InvalidEvidence::new(InvalidReason::DeltaMismatch, Hash([77; 32]), Hash([1; 32]), 0.0),
        InvalidEvidence::new(InvalidReason::DeltaMismatch, Hash::ZERO, Hash([1; 32]), 0.0),
        InvalidEvidence::new(InvalidReason::CheckpointMismatch, Hash([3; 32]), Hash([3; 32]), 0.0),
    ] {
        let refused = w.send(&checker, TxKind::Verdict(verdict(evidence.clone())));
        assert!(matches!(refused, Err(trellis_contracts::TxError::UnfoundedEvidence(_))), "{evidence:?}: {refused:?}");
    }
    // Quoting the revealed Δ is founded (whether it holds is the committee's to say).
    let founded = InvalidEvidence::new(InvalidReason::DeltaMismatch, reveal.delta_hash, Hash([1; 32]), 0.0);
    w.send(&checker, TxKind::Verdict(verdict(founded))).unwrap();
}

/// The reverse: a checker that replayed the segment (`Valid`) while the committee could not reach
/// the miner's blobs (`Unavailable`, a miner serving one checker only or a partition) is not
/// slashed: an availability finding says nothing against a replay.
#[test]
fn a_replay_outvoted_by_unavailability_is_not_slashed() {
    let (w, _, replayer) = escalate(VerdictOutcome::Valid, VerdictOutcome::Unavailable);
    assert!(slashed(&w, &replayer).is_empty(), "{:?}", slashed(&w, &replayer));
    w.supply_holds();
}

/// A checker that owed many verdicts in a round and sent none is slashed once for the round, not
/// once per verdict: a job whose window nobody can meet must not burn validators' stake by the
/// thousands of assignments.
#[test]
fn a_checker_silent_on_many_segments_is_slashed_once_a_round() {
    let (mut w, job) = round_in_verification();
    let assignments = w.round(job, 0).assignments;
    let owed = |checker: &Address| assignments.iter().filter(|a| a.checkers.contains(checker)).count();
    let silent = *assignments
        .iter()
        .flat_map(|a| &a.checkers)
        .max_by_key(|checker| owed(checker))
        .expect("assignments have checkers");
    assert!(owed(&silent) > 1, "the silent checker owes several verdicts");
    w.verdicts(job, 0, |_, _, checker| (*checker != silent).then_some(VerdictOutcome::Valid));
    w.past_verify_end(job, 0);
    let missed: Vec<_> = slashed(&w, &silent).into_iter().filter(|(_, r)| *r == SlashReason::MissedVerdict).collect();
    assert_eq!(missed.len(), 1, "{missed:?}");
    w.supply_holds();
}

/// A checker that stayed silent on a segment its co-checker decided cannot decide it late: after
/// an escalation only the reopened segments take verdicts (on the old rules its late
/// `Unavailable` or `Invalid` decided the segment alone and overturned the co-checker).
#[test]
fn a_late_verdict_on_an_undisputed_segment_is_refused() {
    let (mut w, job) = round_in_verification();
    let assignments = w.round(job, 0).assignments;
    assert!(assignments.len() >= 2, "two segments to play with");
    let (disputed, decided) = (assignments[0].clone(), assignments[1].clone());
    let (replayer, late) = (decided.checkers[0], decided.checkers[1]);
    let framer = *disputed.checkers.iter().find(|c| **c != replayer).expect("two checkers");
    // Segment 0: the checkers disagree. Segment 1: one `Valid`, one silence.
    w.verdicts(job, 0, |_, segment, checker| {
        if segment == disputed.segment {
            Some(if *checker == framer { invalid() } else { VerdictOutcome::Valid })
        } else {
            (*checker != late).then_some(VerdictOutcome::Valid)
        }
    });
    w.past_verify_end(job, 0);
    let round = w.round(job, 0);
    assert!(round.escalated);
    assert_eq!(round.escalated_segments, vec![0], "only the disputed segment is reopened");
    let verdict = Verdict {
        job: JobId(job),
        round: 0,
        miner: decided.miner,
        segment: decided.segment,
        outcome: VerdictOutcome::Unavailable,
    };
    let refused = w.send(&w.key_of(&late).unwrap(), TxKind::Verdict(verdict));
    assert!(matches!(refused, Err(trellis_contracts::TxError::SegmentDecided { .. })), "{refused:?}");
    w.verdicts(job, 0, |_, segment, _| (segment == disputed.segment).then_some(VerdictOutcome::Valid));
    w.past_verify_end(job, 0);
    let miner = w.miners[0].address();
    assert!(w.round(job, 0).accepted.contains(&miner), "the honest miner is accepted");
    assert!(slashed(&w, &replayer).is_empty(), "the checker who replayed is not overturned");
    assert_eq!(slashed(&w, &late).iter().filter(|(_, r)| *r == SlashReason::MissedVerdict).count(), 1);
    w.supply_holds();
}
