//! Whole jobs, told as stories: who commits, who checks, what the chain concludes, who is paid
//! and who is slashed.

mod common;

use common::*;
use trellis_contracts::state::{keys, read, AcceptedState, JobStatus, MinerEntry, Phase};
use trellis_contracts::{Event, Params, SlashReason, TxError};
use trellis_proto::*;

#[test]
fn honest_miners_are_paid_by_tokens_and_checkers_by_agreement() {
    let mut w = World::new(4, 3, params());
    let job = w.submit_and_join(30_000);
    for i in 0..3 {
        w.commit(job, 0, i).unwrap();
    }
    w.past_commit_deadline(job, 0);
    let round = w.round(job, 0);
    assert_eq!(round.phase, Phase::Verifying);
    assert_eq!(round.assignments.len(), 3 * 2, "two segments per miner");
    for a in &round.assignments {
        assert_eq!(a.checkers.len(), 2);
        assert!(!a.checkers.contains(&a.miner));
        assert!(a.segment < 4, "segments lie between the 5 checkpoints");
    }
    w.verdicts(job, 0, |_, _, _| Some(VerdictOutcome::Valid));
    w.past_verify_end(job, 0);
    let round = w.round(job, 0);
    assert_eq!(round.phase, Phase::AwaitingAggregate);
    let mut miners: Vec<Address> = w.miners.iter().map(|k| k.address()).collect();
    miners.sort();
    assert_eq!(round.accepted, miners);

    let before: Vec<u64> = w.miners.iter().map(|k| w.balance(k)).collect();
    w.aggregate(job, 0).unwrap();
    // 9,000 per round: 10% to the checkers that agreed, the rest split by tokens (equal here).
    for (i, k) in w.miners.iter().enumerate() {
        assert_eq!(w.balance(k), before[i] + 2_700, "miner {i}");
    }
    let job_state = w.job(job);
    assert_eq!(job_state.escrow, Amount(30_000 - 9_000));
    assert_eq!(job_state.model_hash, Hash([9; 32]));
    assert_eq!(job_state.current_round, 1);
    assert_eq!(w.round(job, 0).phase, Phase::Settled);
    // A second aggregate for the same round is refused: a round settles once.
    assert!(matches!(w.aggregate(job, 0), Err(TxError::WrongRound { .. })));
    w.supply_holds();
}

/// A job whose rounds take work from `min_inner_steps = 5` of H = 20 (c = 5): a straggler that
/// trained 5 steps is checked on the one segment it has and paid a quarter of a full worker's
/// share; work outside 5..=20 steps is refused at reveal.
#[test]
fn a_straggler_is_checked_on_the_segments_it_trained_and_paid_by_its_tokens() {
    let mut w = World::new(4, 3, params());
    let mut spec = w.spec();
    spec.diloco.min_inner_steps = 5;
    let job = w.submit_spec_and_join(spec, 30_000);
    let works: Vec<WorkReveal> = [20, 20, 5].iter().enumerate().map(|(i, s)| w.work_of_steps(job, 0, i, *s)).collect();
    for (i, work) in works.iter().enumerate() {
        w.commit_work(i, work).unwrap();
    }
    w.enter_reveals(job, 0);
    for (i, work) in works.into_iter().enumerate() {
        w.reveal_work(i, work).unwrap();
    }
    w.next_block();
    let straggler = w.miners[2].address();
    let round = w.round(job, 0);
    let theirs: Vec<u32> = round.assignments.iter().filter(|a| a.miner == straggler).map(|a| a.segment).collect();
    assert_eq!(theirs, vec![0], "5 steps at c = 5: one segment to check");
    assert_eq!(round.assignments.len(), 2 + 2 + 1);
    w.verdicts(job, 0, |_, _, _| Some(VerdictOutcome::Valid));
    w.past_verify_end(job, 0);
    let before: Vec<u64> = w.miners.iter().map(|k| w.balance(k)).collect();
    w.aggregate(job, 0).unwrap();
    // 8,100 for the miners, by tokens 20 : 20 : 5.
    let paid: Vec<u64> = w.miners.iter().enumerate().map(|(i, k)| w.balance(k) - before[i]).collect();
    assert_eq!(paid, vec![3_600, 3_600, 900]);
    w.supply_holds();

    // Round 1: every miner claims a step count outside 5..=20; each reveal is refused.
    let works: Vec<WorkReveal> = [4, 21, 0].iter().enumerate().map(|(i, s)| w.work_of_steps(job, 1, i, *s)).collect();
    for (i, work) in works.iter().enumerate() {
        w.commit_work(i, work).unwrap();
    }
    w.enter_reveals(job, 1);
    for (i, work) in works.into_iter().enumerate() {
        let steps = work.steps;
        assert!(
            matches!(w.reveal_work(i, work), Err(TxError::InvalidCommitment(ref m)) if m.contains("5..=20")),
            "{steps} steps"
        );
    }
}

/// A streaming job (2 fragments): a miner's work may continue only its own accepted state of
/// the round before. The chain records each accepted miner's final checkpoint at the tally; a
/// reveal naming another state — a round-0 reveal, someone else's, or the miner's own of a
/// round it was not accepted in — is refused, one naming nothing (a start from θ_r) is taken;
/// the records go when the job ends.
#[test]
fn a_streaming_miner_continues_only_its_own_accepted_state_of_the_round_before() {
    let mut w = World::new(4, 3, params());
    let mut spec = w.spec();
    spec.diloco.fragments = 2;
    spec.diloco.rounds = 2;
    let job = w.submit_spec_and_join(spec, 30_000);
    let refused = |result: Result<Vec<Event>, TxError>| matches!(result, Err(TxError::InvalidCommitment(ref m)) if m.contains("accepted work of the previous round"));
    // Round 0: nothing precedes it.
    let mut early = w.work(job, 0, 0);
    early.continues = Hash([9; 32]);
    w.commit_work(0, &early).unwrap();
    for i in 1..3 {
        w.commit(job, 0, i).unwrap();
    }
    w.enter_reveals(job, 0);
    assert!(refused(w.reveal_work(0, early)), "round 0 continues nothing");
    for i in 1..3 {
        w.reveal(job, 0, i).unwrap();
    }
    let deadline = w.round(job, 0).reveal_deadline;
    w.advance_to(Height(deadline.0 + 1));
    w.verdicts(job, 0, |_, _, _| Some(VerdictOutcome::Valid));
    w.past_verify_end(job, 0);
    let accepted = |w: &World, i: usize| -> Option<AcceptedState> {
        read(&w.kv, &keys::accepted(JobId(job), &w.miners[i].address())).unwrap()
    };
    assert_eq!(w.round(job, 0).accepted.len(), 2);
    assert_eq!(accepted(&w, 0), None, "miner 0 revealed nothing: no state to continue");
    let finals: Vec<Hash> = (0..3).map(|i| w.work(job, 0, i).final_checkpoint).collect();
    let final_of = |i: usize| finals[i];
    assert_eq!(
        accepted(&w, 1),
        Some(AcceptedState { round: 0, final_checkpoint: final_of(1), next_residual: Hash::ZERO, since: 0 })
    );
    w.aggregate(job, 0).unwrap();

    // Round 1: miner 1 continues its own state; miner 2 names miner 1's; miner 0 has none.
    let mut works: Vec<WorkReveal> = (0..3).map(|i| w.work(job, 1, i)).collect();
    works[1].continues = final_of(1);
    works[2].continues = final_of(1);
    works[0].continues = final_of(2);
    for (i, work) in works.iter().enumerate() {
        w.commit_work(i, work).unwrap();
    }
    w.enter_reveals(job, 1);
    let mut works = works.into_iter();
    let (zero, one, two) = (works.next().unwrap(), works.next().unwrap(), works.next().unwrap());
    assert!(refused(w.reveal_work(0, zero)), "a state it was never accepted with");
    w.reveal_work(1, one).unwrap();
    assert!(refused(w.reveal_work(2, two)), "another miner's state");
    // What each Δ weighs in the mean: miner 1's state began in round 0, so its Δ holds two
    // rounds of its fragment's training (F = 2); a fresh start's holds one.
    let since = |w: &World, i: usize| {
        w.round(job, 1).commits.iter().find(|c| c.miner == w.miners[i].address()).map(|c| c.since)
    };
    assert_eq!(since(&w, 1), Some(0), "a continuation keeps its state's beginning");
    assert_eq!(since(&w, 0), Some(1), "anything else began this round");
    let weight = |s: u32| trellis_protocol::fragments::merge_weight(&w.job(job).spec, 1, s, 20);
    assert_eq!((weight(0), weight(1)), (40, 20));
    let deadline = w.round(job, 1).reveal_deadline;
    w.advance_to(Height(deadline.0 + 1));
    w.verdicts(job, 1, |_, _, _| Some(VerdictOutcome::Valid));
    w.past_verify_end(job, 1);
    w.aggregate(job, 1).unwrap();
    assert_eq!(w.job(job).status, JobStatus::Finished);
    assert_eq!((accepted(&w, 1), accepted(&w, 2)), (None, None), "the records go with the job");
    w.supply_holds();
}

#[test]
fn a_poisoner_is_slashed_and_ejected_while_the_others_are_paid() {
    let mut w = World::new(4, 3, params());
    let job = w.submit_and_join(30_000);
    for i in 0..3 {
        w.commit(job, 0, i).unwrap();
    }
    w.past_commit_deadline(job, 0);
    let poisoner = w.miners[1].address();
    w.verdicts(job, 0, |miner, _, _| Some(if *miner == poisoner { invalid() } else { VerdictOutcome::Valid }));
    w.past_verify_end(job, 0);
    // Unanimous Invalid: no escalation.
    let round = w.round(job, 0);
    assert!(!round.escalated);
    assert!(!round.accepted.contains(&poisoner));
    assert_eq!(round.accepted.len(), 2);
    assert_eq!(slashed(&w, &poisoner), vec![(2_500, SlashReason::Poisoner)], "half of a 5,000 bond");
    assert_eq!(w.stake(Role::Miner, &w.miners[1]).bonded, Amount(2_500));
    assert!(w.job(job).miners.iter().any(|m| m.address == poisoner && m.ejected));
    w.aggregate(job, 0).unwrap();
    assert!(matches!(w.commit(job, 1, 1), Err(TxError::Ejected { .. })));
    w.supply_holds();
}

#[test]
fn a_split_verdict_escalates_to_a_larger_committee_which_decides() {
    let mut w = World::new(6, 2, params());
    let job = w.submit_and_join(30_000);
    for i in 0..2 {
        w.commit(job, 0, i).unwrap();
    }
    w.past_commit_deadline(job, 0);
    let target = w.miners[0].address();
    let first = w.round(job, 0).assignments.iter().find(|a| a.miner == target).cloned().unwrap();
    let dissenter = first.checkers[0];
    // One checker of one segment says Invalid, everyone else Valid.
    w.verdicts(job, 0, |miner, segment, checker| {
        Some(if *miner == target && segment == first.segment && *checker == dissenter {
            invalid()
        } else {
            VerdictOutcome::Valid
        })
    });
    w.past_verify_end(job, 0);
    let round = w.round(job, 0);
    assert!(round.escalated, "disagreement escalates");
    assert_eq!(round.phase, Phase::Verifying);
    let escalated = round.assignments.iter().find(|a| a.miner == target && a.segment == first.segment).unwrap();
    assert_eq!(escalated.checkers.len(), 4, "the escalated committee");
    assert!(w.events.iter().any(|e| matches!(e, Event::Escalated { segments: 1, .. })));
    // The new checkers all find the segment valid: the dissenter is outvoted.
    let new_checkers: Vec<Address> = escalated.checkers[2..].to_vec();
    w.verdicts(job, 0, |miner, segment, checker| {
        (*miner == target && segment == first.segment && new_checkers.contains(checker))
            .then_some(VerdictOutcome::Valid)
    });
    w.past_verify_end(job, 0);
    let round = w.round(job, 0);
    assert_eq!(round.phase, Phase::AwaitingAggregate);
    assert!(round.accepted.contains(&target));
    let given = round.verdicts.iter().filter(|v| v.checker == dissenter).count();
    let paid = round.matched_checkers.iter().filter(|c| **c == dissenter).count();
    assert_eq!(paid, given - 1, "the outvoted verdict earns no fee share");
    assert!(slashed(&w, &target).is_empty());
    w.supply_holds();
}

#[test]
fn a_silent_checker_is_slashed_a_little() {
    let mut w = World::new(4, 1, params());
    let job = w.submit_and_join(30_000);
    w.commit(job, 0, 0).unwrap();
    w.past_commit_deadline(job, 0);
    let silent = w.round(job, 0).assignments[0].checkers[0];
    w.verdicts(job, 0, |_, _, checker| (*checker != silent).then_some(VerdictOutcome::Valid));
    w.past_verify_end(job, 0);
    let owed = w.round(job, 0).assignments.iter().filter(|a| a.checkers.contains(&silent)).count();
    let got = slashed(&w, &silent);
    assert_eq!(got.len(), owed, "one fault per verdict owed");
    assert_eq!(got[0], (200, SlashReason::MissedVerdict), "1% of a 20,000 bond");
    assert!(got.iter().all(|(_, reason)| *reason == SlashReason::MissedVerdict));
    w.supply_holds();
}

#[test]
fn a_job_that_runs_out_of_escrow_ends_cleanly_with_a_refund() {
    let mut w = World::new(4, 2, params());
    let job = w.submit_and_join(13_500); // one round of 9,000 and half of another
    let submitter_before = w.balance(&w.submitter);
    for i in 0..2 {
        w.commit(job, 0, i).unwrap();
    }
    w.past_commit_deadline(job, 0);
    w.verdicts(job, 0, |_, _, _| Some(VerdictOutcome::Valid));
    w.past_verify_end(job, 0);
    let events = w.aggregate(job, 0).unwrap();
    let paid: u64 = events
        .iter()
        .filter_map(|e| match e {
            Event::Rewarded { amount, .. } => Some(amount.0),
            _ => None,
        })
        .sum();
    assert!(paid <= 9_000 && paid > 8_990, "one round's reward, less rounding dust: {paid}");
    let refund = 13_500 - paid;
    assert!(events
        .iter()
        .any(|e| matches!(e, Event::JobEnded { status: JobStatus::Finished, refund: r, .. } if r.0 == refund)));
    let state = w.job(job);
    assert_eq!(state.status, JobStatus::Finished);
    assert_eq!(state.escrow, Amount::ZERO);
    assert_eq!(w.balance(&w.submitter), submitter_before + refund);
    assert!(matches!(w.commit(job, 1, 0), Err(TxError::JobNotActive(_))));
    w.supply_holds();
}

#[test]
fn a_round_with_no_commitments_settles_empty_and_the_next_opens() {
    let mut w = World::new(4, 2, params());
    let job = w.submit_and_join(30_000);
    w.past_commit_deadline(job, 0);
    w.past_verify_end(job, 0);
    assert_eq!(w.round(job, 0).phase, Phase::Settled);
    assert_eq!(w.job(job).current_round, 1);
    assert_eq!(w.job(job).escrow, Amount(30_000), "nobody paid");
    w.commit(job, 1, 0).unwrap();
}

#[test]
fn an_aggregate_that_never_comes_lapses_the_round() {
    let mut w = World::new(4, 2, params());
    let job = w.submit_and_join(30_000);
    w.commit(job, 0, 0).unwrap();
    w.past_commit_deadline(job, 0);
    w.verdicts(job, 0, |_, _, _| Some(VerdictOutcome::Valid));
    w.past_verify_end(job, 0);
    let deadline = w.round(job, 0).aggregate_deadline;
    w.advance_to(deadline + 1);
    assert_eq!(w.round(job, 0).phase, Phase::Lapsed);
    assert_eq!(w.job(job).current_round, 1);
    assert!(matches!(w.aggregate(job, 0), Err(TxError::WrongRound { .. })));
}

#[test]
fn cancelling_refunds_the_escrow_at_the_end_of_the_round() {
    let mut w = World::new(4, 2, params());
    let job = w.submit_and_join(30_000);
    let submitter = Keypair::from_seed(w.submitter.seed());
    let before = w.balance(&submitter);
    // Before anyone commits: ends at once.
    let events = w.send(&submitter, TxKind::CancelJob { job: JobId(job) }).unwrap();
    assert!(events
        .iter()
        .any(|e| matches!(e, Event::JobEnded { status: JobStatus::Cancelled, refund: Amount(30_000), .. })));
    assert_eq!(w.balance(&submitter), before - 1 + 30_000);
    // Only the submitter may cancel.
    let job2 = w.submit_and_join(30_000);
    let miner = Keypair::from_seed(w.miners[0].seed());
    assert!(matches!(w.send(&miner, TxKind::CancelJob { job: JobId(job2) }), Err(TxError::NotSubmitter { .. })));
}

#[test]
fn unbonding_stake_stays_slashable_until_released() {
    let mut w = World::new(4, 1, params());
    let job = w.submit_and_join(30_000);
    w.commit(job, 0, 0).unwrap();
    let miner = Keypair::from_seed(w.miners[0].seed());
    w.send(&miner, TxKind::Unbond { role: Role::Miner, amount: Amount(5_000) }).unwrap();
    assert_eq!(w.stake(Role::Miner, &miner).bonded, Amount::ZERO);
    w.past_commit_deadline(job, 0);
    w.verdicts(job, 0, |_, _, _| Some(invalid()));
    w.past_verify_end(job, 0);
    let stake = w.stake(Role::Miner, &miner);
    assert_eq!(stake.unbonding.iter().map(|u| u.amount.0).sum::<u64>(), 2_500, "half the unbonding amount was slashed");
    let release = stake.unbonding[0].release_height;
    let balance = w.balance(&miner);
    w.advance_to(release);
    w.next_block();
    assert_eq!(w.balance(&miner), balance + 2_500);
    assert!(w.stake(Role::Miner, &miner).unbonding.is_empty());
    w.supply_holds();
}

#[test]
fn equivocation_is_slashed_burned_and_jailed_and_the_set_drops_the_offender() {
    let mut w = World::new(4, 0, Params { epoch_blocks: 5, ..params() });
    let offender = Keypair::from_seed(w.validators[2].seed());
    let vote = |value: u8| {
        let vote = Vote {
            height: Height(3),
            round: 0,
            vote_type: VoteType::Prevote,
            value: Some(Hash([value; 32])),
            validator: offender.address(),
        };
        let signature = offender.sign(CHAIN, SigningKind::Vote, &vote.to_bytes());
        SignedVote { vote, signature }
    };
    let evidence = EquivocationEvidence { validator: offender.public_key(), first: vote(1), second: vote(2) };
    let reporter = Keypair::from_seed(w.validators[0].seed());
    w.send(&reporter, TxKind::ReportEquivocation(evidence.clone())).unwrap();
    assert_eq!(slashed(&w, &offender.address()), vec![(4_000, SlashReason::Equivocation)]);
    assert!(w.stake(Role::Validator, &offender).jailed);
    assert!(matches!(w.send(&reporter, TxKind::ReportEquivocation(evidence)), Err(TxError::EvidenceAlreadyUsed)));
    w.advance_to(Height(5));
    let set = w.chain.validator_set(&w.kv).unwrap();
    assert_eq!(set.validators.len(), 3);
    assert!(!set.contains(&offender.address()));
    w.supply_holds();
}

#[test]
fn a_double_proposal_is_slashed_and_jailed_once_per_round_whichever_claims_prove_it() {
    let mut w = World::new(4, 0, Params { epoch_blocks: 5, ..params() });
    let offender = Keypair::from_seed(w.validators[1].seed());
    let part = |round: u32, block: u8| {
        let header = PartHeader {
            height: Height(3),
            round: Some(round),
            valid_round: None,
            proposer: offender.address(),
            block: Hash([block; 32]),
        };
        let signature = offender.sign(CHAIN, SigningKind::ProposalPart, &header.to_bytes());
        SignedProposalClaim { claim: ProposalClaim::Part(header), signature }
    };
    let proposal = |round: u32, block: u8| {
        let header = ProposalHeader {
            height: Height(3),
            round: Some(round),
            value: Hash([block; 32]),
            pol_round: None,
            proposer: offender.address(),
        };
        let signature = offender.sign(CHAIN, SigningKind::Proposal, &header.to_bytes());
        SignedProposalClaim { claim: ProposalClaim::Proposal(header), signature }
    };
    let evidence = |first, second| DoubleProposalEvidence { proposer: offender.public_key(), first, second };
    let reporter = Keypair::from_seed(w.validators[0].seed());

    // Not evidence: one block signed twice.
    assert!(matches!(
        w.send(&reporter, TxKind::ReportDoubleProposal(Box::new(evidence(part(0, 1), part(0, 1))))),
        Err(TxError::InvalidEvidence(_))
    ));
    assert!(slashed(&w, &offender.address()).is_empty());

    w.send(&reporter, TxKind::ReportDoubleProposal(Box::new(evidence(part(0, 1), part(0, 2))))).unwrap();
    assert_eq!(slashed(&w, &offender.address()), vec![(4_000, SlashReason::Equivocation)]);
    assert!(w.stake(Role::Validator, &offender).jailed);
    // The same round proven again, by other parts or by the engine's proposals: refused.
    assert!(matches!(
        w.send(&reporter, TxKind::ReportDoubleProposal(Box::new(evidence(part(0, 1), part(0, 3))))),
        Err(TxError::EvidenceAlreadyUsed)
    ));
    assert!(matches!(
        w.send(&reporter, TxKind::ReportDoubleProposal(Box::new(evidence(proposal(0, 1), proposal(0, 2))))),
        Err(TxError::EvidenceAlreadyUsed)
    ));
    // Another round is another offence.
    w.send(&reporter, TxKind::ReportDoubleProposal(Box::new(evidence(proposal(1, 1), proposal(1, 2))))).unwrap();
    assert_eq!(slashed(&w, &offender.address()).len(), 2);
    w.advance_to(Height(5));
    assert!(!w.chain.validator_set(&w.kv).unwrap().contains(&offender.address()));
    w.supply_holds();
}

#[test]
fn every_transaction_kind_rejects_bad_input_with_its_typed_error() {
    let mut w = World::new(4, 2, params());
    let job = w.submit_and_join(30_000);
    let miner = Keypair::from_seed(w.miners[0].seed());
    let validator = Keypair::from_seed(w.validators[0].seed());
    let root = trellis_contracts::recompute_state_root(&w.kv);

    // Wrong nonce.
    let mut tx = w.signed(&miner, TxKind::Transfer { to: validator.address(), amount: Amount(1) });
    tx.tx.nonce += 5;
    let tx = tx.tx.sign(CHAIN, &miner);
    assert!(matches!(w.apply(&tx), Err(TxError::BadNonce { .. })));
    // Insufficient balance (transfer and bond).
    assert!(matches!(
        w.send(&miner, TxKind::Transfer { to: validator.address(), amount: Amount(10_000_000) }),
        Err(TxError::InsufficientBalance { .. })
    ));
    assert!(matches!(
        w.send(&miner, TxKind::Bond { role: Role::Miner, amount: Amount(10_000_000) }),
        Err(TxError::InsufficientBalance { .. })
    ));
    assert!(matches!(
        w.send(&miner, TxKind::Transfer { to: validator.address(), amount: Amount(0) }),
        Err(TxError::ZeroAmount)
    ));
    // Bonds below the minimum, unbonding more than bonded.
    let newcomer_key = key(9, 9);
    w.send(&validator, TxKind::Transfer { to: newcomer_key.address(), amount: Amount(50_000) }).unwrap();
    assert!(matches!(
        w.send(&newcomer_key, TxKind::Bond { role: Role::Validator, amount: Amount(10) }),
        Err(TxError::BelowMinimumStake { .. })
    ));
    assert!(matches!(
        w.send(&miner, TxKind::Unbond { role: Role::Miner, amount: Amount(999_999) }),
        Err(TxError::InsufficientBond { .. })
    ));
    // Unknown job, for every job transaction.
    assert!(matches!(w.send(&miner, TxKind::JoinJob { job: JobId(99) }), Err(TxError::UnknownJob(JobId(99)))));
    assert!(matches!(w.send(&miner, TxKind::CommitWork(w.commitment(99, 0, 0))), Err(TxError::UnknownJob(_))));
    assert!(matches!(w.send(&miner, TxKind::RevealWork(w.work(99, 0, 0))), Err(TxError::UnknownJob(_))));
    assert!(matches!(w.send(&miner, TxKind::CancelJob { job: JobId(99) }), Err(TxError::UnknownJob(_))));
    // Already joined; not joined.
    assert!(matches!(w.send(&miner, TxKind::JoinJob { job: JobId(job) }), Err(TxError::AlreadyJoined { .. })));
    assert!(matches!(
        w.send(&newcomer_key, TxKind::CommitWork(w.commitment(job, 0, 0))),
        Err(TxError::NotJoined { .. })
    ));
    // Bad commitments and reveals: wrong round; a reveal while the round is open.
    assert!(matches!(w.send(&miner, TxKind::CommitWork(w.commitment(job, 1, 0))), Err(TxError::WrongRound { .. })));
    assert!(matches!(w.send(&miner, TxKind::RevealWork(w.work(job, 0, 0))), Err(TxError::WrongPhase { .. })));
    // A bad job spec and too little escrow.
    let mut spec = w.spec();
    spec.model.heads = 5;
    let submitter = Keypair::from_seed(w.submitter.seed());
    assert!(matches!(
        w.send(&submitter, TxKind::SubmitJob { spec, escrow: Amount(30_000) }),
        Err(TxError::InvalidJobSpec(_))
    ));
    assert!(matches!(
        w.send(&submitter, TxKind::SubmitJob { spec: w.spec(), escrow: Amount(10) }),
        Err(TxError::EscrowTooSmall { .. })
    ));
    // A verdict while the round is open, then from an unassigned validator, then twice.
    let verdict =
        Verdict { job: JobId(job), round: 0, miner: miner.address(), segment: 0, outcome: VerdictOutcome::Valid };
    assert!(matches!(w.send(&validator, TxKind::Verdict(verdict)), Err(TxError::WrongPhase { .. })));
    // Every rejection so far left the state as it was (apart from the one accepted transfer).
    assert_ne!(trellis_contracts::recompute_state_root(&w.kv), root);

    w.commit(job, 0, 0).unwrap();
    w.enter_reveals(job, 0);
    // A reveal without a commitment, not matching the binding, twice.
    let other = Keypair::from_seed(w.miners[1].seed());
    assert_eq!(
        w.send(&other, TxKind::RevealWork(w.work(job, 0, 1))),
        Err(TxError::NothingToReveal { miner: other.address() })
    );
    assert_eq!(
        w.send(&miner, TxKind::RevealWork(w.work(job, 0, 1))),
        Err(TxError::RevealMismatch { miner: miner.address() })
    );
    w.reveal(job, 0, 0).unwrap();
    assert_eq!(w.reveal(job, 0, 0), Err(TxError::AlreadyRevealed { miner: miner.address() }));
    w.next_block();
    let a = w.round(job, 0).assignments[0].clone();
    let outsider =
        w.validators.iter().find(|k| !a.checkers.contains(&k.address())).map(|k| Keypair::from_seed(k.seed())).unwrap();
    let verdict =
        Verdict { job: JobId(job), round: 0, miner: a.miner, segment: a.segment, outcome: VerdictOutcome::Valid };
    assert!(matches!(w.send(&outsider, TxKind::Verdict(verdict.clone())), Err(TxError::NotAssigned { .. })));
    let checker = Keypair::from_seed(w.validators[w.validator_index(&a.checkers[0])].seed());
    w.send(&checker, TxKind::Verdict(verdict.clone())).unwrap();
    assert!(matches!(w.send(&checker, TxKind::Verdict(verdict)), Err(TxError::DuplicateVerdict { .. })));
    // An aggregate before the tally, from a non-validator, and with the wrong set.
    assert!(matches!(w.aggregate(job, 0), Err(TxError::WrongPhase { .. })));
    w.verdicts(job, 0, |_, _, c| (*c != checker.address()).then_some(VerdictOutcome::Valid));
    w.past_verify_end(job, 0);
    let wrong =
        Aggregate { job: JobId(job), round: 0, model_hash: Hash::ZERO, momentum_hash: Hash::ZERO, accepted: vec![] };
    assert!(matches!(
        w.send(&validator, TxKind::CommitAggregate(wrong.clone())),
        Err(TxError::AggregateMismatch { .. })
    ));
    assert!(matches!(w.send(&miner, TxKind::CommitAggregate(wrong)), Err(TxError::NotAValidator(_))));
    // Fee below the minimum.
    let tx = Transaction {
        sender: miner.public_key(),
        nonce: w.nonce(&miner),
        fee: Amount(0),
        kind: TxKind::JoinJob { job: JobId(job) },
    }
    .sign(CHAIN, &miner);
    assert!(matches!(w.apply(&tx), Err(TxError::FeeTooLow { .. })));
}

#[test]
fn late_commits_are_refused() {
    let mut w = World::new(4, 2, params());
    let job = w.submit_and_join(30_000);
    let deadline = w.round(job, 0).commit_deadline;
    w.advance_to(deadline);
    w.commit(job, 0, 0).unwrap();
    w.next_block();
    // Past the deadline: refused as late.
    assert_eq!(w.commit(job, 0, 1), Err(TxError::LateCommit { deadline }));
}

#[test]
fn rounds_have_fixed_worker_slots_and_close_early_once_everyone_is_in() {
    // Four miners for three slots: the fourth to join waits for a later round.
    let mut w = World::new(4, 4, params());
    let job = w.submit_and_join(30_000);
    let round = w.round(job, 0);
    let joined: Vec<Address> = w.miners.iter().map(|k| k.address()).collect();
    assert_eq!(round.workers, joined[..3].to_vec(), "slots fill in join order");
    assert!(matches!(w.commit(job, 0, 3), Err(TxError::NotAWorker { .. })));
    // All three workers in: reveals open at the next block, long before the deadline, and
    // sampling follows as soon as all three revealed.
    for i in 0..3 {
        w.commit(job, 0, i).unwrap();
    }
    let deadline = w.round(job, 0).commit_deadline;
    w.next_block();
    assert_eq!(w.round(job, 0).phase, Phase::Revealing);
    for i in 0..3 {
        w.reveal(job, 0, i).unwrap();
    }
    w.next_block();
    assert!(w.height <= deadline);
    assert_eq!(w.round(job, 0).phase, Phase::Verifying);
    // All verdicts in: the tally does not wait for the window's end either.
    w.verdicts(job, 0, |_, _, _| Some(VerdictOutcome::Valid));
    let verify_end = w.round(job, 0).verify_end;
    w.next_block();
    assert!(w.height <= verify_end);
    assert_eq!(w.round(job, 0).phase, Phase::AwaitingAggregate);
    w.aggregate(job, 0).unwrap();
    // The next round draws its three workers from all four miners, by the block hash.
    let next = w.round(job, 1);
    assert_eq!(next.workers.len(), 3);
    assert!(next.workers.windows(2).all(|p| p[0] < p[1]), "workers are kept in address order");
    assert!(next.workers.iter().all(|a| joined.contains(a)));
    w.supply_holds();
}

#[test]
fn a_round_with_free_slots_closes_early_once_every_miner_left_has_committed() {
    // Two miners for three slots. In the first round more miners may still join: it waits.
    let mut w = World::new(4, 2, params());
    let job = w.submit_and_join(30_000);
    assert_eq!(w.round(job, 0).workers.len(), 2);
    w.commit(job, 0, 0).unwrap();
    w.commit(job, 0, 1).unwrap();
    w.next_block();
    assert_eq!(w.round(job, 0).phase, Phase::Open, "the first round waits for joiners until its deadline");
    w.past_commit_deadline(job, 0);
    w.verdicts(job, 0, |_, _, _| Some(VerdictOutcome::Valid));
    w.next_block();
    w.aggregate(job, 0).unwrap();
    // From the second round on, once both committed nobody else in the job can work.
    assert_eq!(w.round(job, 1).workers.len(), 2);
    w.commit(job, 1, 0).unwrap();
    w.next_block();
    assert_eq!(w.round(job, 1).phase, Phase::Open, "one of two workers in: the round waits");
    w.commit(job, 1, 1).unwrap();
    let deadline = w.round(job, 1).commit_deadline;
    w.next_block();
    assert!(w.height <= deadline);
    assert_eq!(w.round(job, 1).phase, Phase::Revealing, "both miners of the job committed: no one else can");
    w.supply_holds();
}

#[test]
fn a_round_nobody_has_joined_waits_and_its_commit_window_starts_with_its_first_worker() {
    // Miners that take long to fetch a job's dataset and keys (a groth16 job's proving key is
    // megabytes) must not find round 0's window spent before they can join.
    let mut w = World::new(4, 2, params());
    let submitter = Keypair::from_seed(w.submitter.seed());
    w.send(&submitter, TxKind::SubmitJob { spec: w.spec(), escrow: Amount(30_000) }).unwrap();
    let job = 0;
    let window = u64::from(w.spec().commit_blocks);
    let opened = w.round(job, 0);
    w.advance_to(opened.commit_deadline + 3 * window);
    let waiting = w.round(job, 0);
    assert_eq!(waiting.phase, Phase::Open, "no worker yet: the round waits");
    assert!(waiting.workers.is_empty());
    assert!(!w.events.iter().any(|e| matches!(e, Event::RevealsOpened { .. })), "{:?}", w.events);

    let first = Keypair::from_seed(w.miners[0].seed());
    let joined_at = w.height;
    w.send(&first, TxKind::JoinJob { job: JobId(job) }).unwrap();
    assert_eq!(w.round(job, 0).commit_deadline, joined_at + window, "the window starts with the first worker");
    w.next_block();
    let second = Keypair::from_seed(w.miners[1].seed());
    w.send(&second, TxKind::JoinJob { job: JobId(job) }).unwrap();
    let round = w.round(job, 0);
    assert_eq!(round.commit_deadline, joined_at + window, "later joiners do not move the window");
    assert_eq!(round.workers.len(), 2);
    w.commit(job, 0, 0).unwrap();
    w.commit(job, 0, 1).unwrap();
    w.past_commit_deadline(job, 0);
    assert_eq!(w.round(job, 0).phase, Phase::Verifying, "both workers revealed and are checked");
    w.supply_holds();
}

#[test]
fn a_job_still_waiting_for_its_first_worker_can_be_cancelled_for_its_whole_escrow() {
    let mut w = World::new(4, 2, params());
    let submitter = Keypair::from_seed(w.submitter.seed());
    w.send(&submitter, TxKind::SubmitJob { spec: w.spec(), escrow: Amount(30_000) }).unwrap();
    let deadline = w.round(0, 0).commit_deadline;
    w.advance_to(deadline + 20);
    let events = w.send(&submitter, TxKind::CancelJob { job: JobId(0) }).unwrap();
    assert!(
        events
            .iter()
            .any(|e| matches!(e, Event::JobEnded { status: JobStatus::Cancelled, refund: Amount(30_000), .. })),
        "{events:?}"
    );
    let miner = Keypair::from_seed(w.miners[0].seed());
    assert!(w.send(&miner, TxKind::JoinJob { job: JobId(0) }).is_err(), "a cancelled job takes no miner");
    w.supply_holds();
}

#[test]
fn groth16_jobs_need_their_keys_and_whole_segments() {
    let params = Params::default();
    let w = World::new(4, 2, params.clone());
    let groth16 = |model: &str, proving_key: Hash, verifying_key: Hash| {
        let mut spec = w.spec();
        spec.verification.mode =
            trellis_proto::VerificationMode::Groth16 { model: model.into(), proving_key, verifying_key };
        spec
    };
    let key = Hash::digest(trellis_proto::HashDomain::Blob, b"key");
    let mut spec = groth16("mlp:8x8x4,batch=4", key, key);
    spec.diloco.inner_steps = spec.verification.checkpoint_interval * 3;
    spec.diloco.min_inner_steps = spec.diloco.inner_steps;
    assert_eq!(trellis_contracts::validate_job_spec(&spec, &params), Ok(()));
    let mut stragglers = spec.clone();
    stragglers.diloco.min_inner_steps = spec.verification.checkpoint_interval;
    assert!(trellis_contracts::validate_job_spec(&stragglers, &params)
        .unwrap_err()
        .contains("min_inner_steps = inner_steps"));
    spec.diloco.inner_steps += 1;
    assert!(trellis_contracts::validate_job_spec(&spec, &params)
        .unwrap_err()
        .contains("multiple of checkpoint_interval"));
    for spec in [groth16("", key, key), groth16("mlp:8x8x4", Hash::ZERO, key), groth16("mlp:8x8x4", key, Hash::ZERO)] {
        assert!(trellis_contracts::validate_job_spec(&spec, &params).unwrap_err().contains("zk model"));
    }
}

/// A world with `miners` miners and job 0 submitted (nobody joined yet): at most two miners a
/// job, two workers a round, `rounds` rounds, `escrow` held.
fn capped_job(miners: u8, rounds: u32, escrow: u64) -> World {
    let mut w = World::new(4, miners, Params { max_miners_per_job: 2, ..params() });
    let submitter = Keypair::from_seed(w.submitter.seed());
    let mut spec = w.spec();
    spec.diloco.workers_per_round = 2;
    spec.diloco.rounds = rounds;
    w.send(&submitter, TxKind::SubmitJob { spec, escrow: Amount(escrow) }).unwrap();
    w
}

#[test]
fn a_worker_that_commits_nothing_two_rounds_in_a_row_is_dropped_unslashed_and_its_place_freed() {
    // A job capped at two miners: a squatter joins, takes a worker slot every round and never
    // commits, keeping the third miner out. One miss is forgiven; two in a row drop it.
    let mut w = capped_job(3, 6, 200_000);
    let job = 0;
    let keys: Vec<Keypair> = (0..3).map(|i| Keypair::from_seed(w.miners[i].seed())).collect();
    w.send(&keys[0], TxKind::JoinJob { job: JobId(job) }).unwrap();
    w.send(&keys[1], TxKind::JoinJob { job: JobId(job) }).unwrap();
    assert!(matches!(w.send(&keys[2], TxKind::JoinJob { job: JobId(job) }), Err(TxError::JobFull(_))));
    let squatter = keys[1].address();
    let missed = |w: &World| w.job(job).miners.iter().find(|m| m.address == squatter).unwrap().missed_commits;
    let bonded = w.stake(Role::Miner, &keys[1]).bonded;
    // Round r: the miners `committing` commit, then the round is checked and aggregated.
    let run_round = |w: &mut World, round: u32, committing: &[usize]| {
        for &i in committing {
            w.commit(job, round, i).unwrap();
        }
        w.past_commit_deadline(job, round);
        w.verdicts(job, round, |_, _, _| Some(VerdictOutcome::Valid));
        w.next_block();
        w.aggregate(job, round).unwrap();
    };

    run_round(&mut w, 0, &[0]);
    assert_eq!(missed(&w), 1, "a first miss is counted");
    run_round(&mut w, 1, &[0, 1]);
    assert_eq!(missed(&w), 0, "a commitment forgives it");
    run_round(&mut w, 2, &[0]);
    assert_eq!(missed(&w), 1);
    assert!(!w.events.iter().any(|e| matches!(e, Event::Dropped { .. })));
    w.commit(job, 3, 0).unwrap();
    w.past_commit_deadline(job, 3);
    assert!(w.events.iter().any(|e| matches!(e, Event::Dropped { miner, .. } if *miner == squatter)), "{:?}", w.events);
    assert!(w.job(job).miners.iter().any(|m| m.address == squatter && m.ejected));
    assert_eq!(w.stake(Role::Miner, &keys[1]).bonded, bonded, "dropping slashes nothing");
    assert!(slashed(&w, &squatter).is_empty());
    w.verdicts(job, 3, |_, _, _| Some(VerdictOutcome::Valid));
    w.next_block();
    w.aggregate(job, 3).unwrap();

    // Its place is free: the miner it kept out joins and works from the open round; the
    // squatter may not come back.
    assert!(matches!(w.send(&keys[1], TxKind::JoinJob { job: JobId(job) }), Err(TxError::Ejected { .. })));
    w.send(&keys[2], TxKind::JoinJob { job: JobId(job) }).unwrap();
    let next = w.round(job, 4);
    assert!(next.workers.contains(&keys[2].address()));
    assert!(!next.workers.contains(&squatter));
    w.supply_holds();
}

/// A miner that joins with less than half of the open round's commit window left could not train
/// in time: it is given no slot in that round (so no miss counts against it) and works from the
/// next one; a joiner with half the window ahead is given its slot at once.
#[test]
fn a_miner_joining_late_in_a_commit_window_works_from_the_next_round_and_misses_nothing() {
    let mut w = World::new(4, 3, params());
    let submitter = Keypair::from_seed(w.submitter.seed());
    let mut spec = w.spec();
    spec.commit_blocks = 10;
    w.send(&submitter, TxKind::SubmitJob { spec, escrow: Amount(30_000) }).unwrap();
    let job = 0;
    let keys: Vec<Keypair> = (0..3).map(|i| Keypair::from_seed(w.miners[i].seed())).collect();
    w.send(&keys[0], TxKind::JoinJob { job: JobId(job) }).unwrap();
    let deadline = w.round(job, 0).commit_deadline;
    // Five blocks of ten left (heights deadline − 4 ..= deadline): half the window, in time.
    w.advance_to(deadline.before(4));
    w.send(&keys[1], TxKind::JoinJob { job: JobId(job) }).unwrap();
    w.next_block();
    // Four left: too late for this round.
    w.send(&keys[2], TxKind::JoinJob { job: JobId(job) }).unwrap();
    let round = w.round(job, 0);
    assert_eq!(round.workers, vec![keys[0].address(), keys[1].address()], "the late joiner has no slot");
    w.commit(job, 0, 0).unwrap();
    w.commit(job, 0, 1).unwrap();
    w.past_commit_deadline(job, 0);
    let late = keys[2].address();
    let entry = w.job(job).miners.into_iter().find(|m| m.address == late).unwrap();
    assert_eq!(entry.missed_commits, 0, "no miss for a round it could not work in");
    w.verdicts(job, 0, |_, _, _| Some(VerdictOutcome::Valid));
    w.next_block();
    w.aggregate(job, 0).unwrap();
    assert!(w.round(job, 1).workers.contains(&late), "it works from the next round on");
    w.supply_holds();
}

#[test]
fn a_round_in_which_no_checker_sent_a_verdict_slashes_nobody_for_silence() {
    // A submitter's trap: a verification window of one block, which no checker of a real model
    // meets. Before, every drawn validator lost 1% each round the job ran.
    let mut w = World::new(4, 2, params());
    let mut spec = w.spec();
    spec.verify_blocks = 1;
    let job = w.submit_spec_and_join(spec, 30_000);
    let validators: Vec<Address> = w.validators.iter().map(|k| k.address()).collect();
    let stakes =
        |w: &World| -> Vec<u64> { w.validators.iter().map(|k| w.stake(Role::Validator, k).bonded.0).collect() };
    let before = stakes(&w);
    w.commit(job, 0, 0).unwrap();
    w.commit(job, 0, 1).unwrap();
    w.past_commit_deadline(job, 0);
    // One checker (the submitter's own validator, say) sends a claim that needs no replay on one
    // of miner 1's segments: it shows nothing about whether a replay fits the window.
    let claimant = w.round(job, 0).assignments.iter().find(|a| a.miner == w.miners[1].address()).unwrap().checkers[0];
    let miner_one = w.miners[1].address();
    w.verdicts(job, 0, |miner, _, checker| {
        (*miner == miner_one && *checker == claimant).then_some(VerdictOutcome::Unavailable)
    });
    w.past_verify_end(job, 0);
    assert!(w.round(job, 0).escalated, "no decisive verdict escalates");
    w.past_verify_end(job, 0);
    assert!(
        w.events.iter().any(|e| matches!(e, Event::RoundTallied { round: 0, unchecked, .. } if unchecked.contains(&w.miners[0].address()))),
        "{:?}",
        w.events
    );
    assert_eq!(stakes(&w), before, "nobody is slashed for a window no replay met");
    assert!(validators.iter().all(|v| slashed(&w, v).is_empty()));

    // One verdict shows the window could be met: then the silent checkers pay for their silence.
    w.next_block();
    w.aggregate(job, 0).ok();
    let round = w.job(job).current_round;
    // (Miner 1 was found withholding and ejected; miner 0 works on.)
    w.commit(job, round, 0).unwrap();
    w.past_commit_deadline(job, round);
    let speaker = w.round(job, round).assignments[0].checkers[0];
    w.verdicts(job, round, |_, _, checker| (*checker == speaker).then_some(VerdictOutcome::Valid));
    w.past_verify_end(job, round);
    w.past_verify_end(job, round);
    let silent: Vec<Address> =
        w.round(job, round).assignments.iter().flat_map(|a| a.checkers.clone()).filter(|c| *c != speaker).collect();
    assert!(!silent.is_empty());
    for checker in silent {
        assert!(slashed(&w, &checker).iter().any(|(_, r)| *r == SlashReason::MissedVerdict), "{checker} was silent");
    }
    w.supply_holds();
}

#[test]
fn at_the_record_bound_a_dropped_miners_record_makes_room_and_a_cheaters_does_not() {
    // Squatters cycling identities through drops once filled a job's records for good: every
    // later joiner was refused `JobFull` though every place was free.
    let mut w = capped_job(2, 3, 30_000);
    let bound = 2 * trellis_contracts::rounds::MINER_RECORDS_PER_PLACE;
    let fill = |w: &mut World, missed_commits: u8| {
        let mut job = w.job(0);
        job.miners = (0..bound as u8)
            .map(|i| MinerEntry { address: Address([200 + (i % 50); 20]), ejected: true, missed_commits })
            .collect();
        job.miners.sort_by_key(|m| m.address);
        trellis_contracts::state::write(&mut w.kv, keys::job(JobId(0)), &job);
    };
    let miner = Keypair::from_seed(w.miners[0].seed());
    fill(&mut w, 0);
    assert!(
        matches!(w.send(&miner, TxKind::JoinJob { job: JobId(0) }), Err(TxError::JobFull(_))),
        "cheaters' records stay: they may never come back"
    );
    fill(&mut w, trellis_contracts::rounds::MAX_MISSED_COMMITS);
    w.send(&miner, TxKind::JoinJob { job: JobId(0) }).unwrap();
    let job = w.job(0);
    assert_eq!(job.miners.len(), bound, "one dropped miner's record made room");
    assert!(job.miners.iter().any(|m| m.address == miner.address() && !m.ejected));
    assert!(job.miners.windows(2).all(|p| p[0].address < p[1].address), "still in address order");
}
