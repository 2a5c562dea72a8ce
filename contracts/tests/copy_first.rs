//! Copy first: aiming the copy rule at a victim. On the old rules the second of two equal Δ
//! hashes was the "copier", so an attacker that read a victim's commitment from the mempool (or
//! recomputed its Δ from the public schedule) and committed first had the victim slashed and
//! ejected. Work is now committed as a binding to the committer's address and revealed after the
//! commit phase, and an equal Δ is judged against the revealer's own slot.

mod common;

use common::*;
use trellis_contracts::{SlashReason, TxError};
use trellis_proto::*;

/// The copy-first attack: the attacker reads a victim's commitment from the mempool and commits
/// it first. On the old rules the victim, committing the same Δ second, was the "copier". A
/// binding covers its committer's address, so the copy can never be revealed: the attacker is
/// the freeloader, the victim is paid.
#[test]
fn a_front_run_copy_of_a_commitment_punishes_the_copier_not_the_victim() {
    let mut w = World::new(4, 3, params());
    let job = w.submit_and_join(30_000);
    let victim = w.miners[0].address();
    let copier = Keypair::from_seed(w.miners[2].seed());
    let stolen = w.commitment(job, 0, 0);
    w.send(&copier, TxKind::CommitWork(stolen)).unwrap();
    w.commit(job, 0, 0).unwrap();
    w.commit(job, 0, 1).unwrap();
    w.enter_reveals(job, 0);
    w.reveal(job, 0, 0).unwrap();
    w.reveal(job, 0, 1).unwrap();
    // The copier learns the victim's work only now, and cannot make it fit its binding.
    let victims_work = w.work(job, 0, 0);
    assert_eq!(
        w.send(&copier, TxKind::RevealWork(victims_work)),
        Err(TxError::RevealMismatch { miner: copier.address() })
    );
    let deadline = w.round(job, 0).reveal_deadline;
    w.advance_to(deadline + 1);
    w.verdicts(job, 0, |_, _, _| Some(VerdictOutcome::Valid));
    w.past_verify_end(job, 0);
    assert!(slashed(&w, &victim).is_empty(), "the victim is not punished");
    assert!(w.round(job, 0).accepted.contains(&victim));
    assert_eq!(slashed(&w, &copier.address()), vec![(500, SlashReason::Freeloader)]);
    w.supply_holds();
}

/// Two reveals of the same Δ are no verdict by themselves: each miner's trail is checked
/// against its own worker slot, which a copied trail cannot pass.
#[test]
fn equal_revealed_deltas_are_each_sampled_and_judged_on_their_own_trail() {
    let mut w = World::new(4, 2, params());
    let job = w.submit_and_join(30_000);
    let twin = w.work(job, 0, 0);
    w.commit(job, 0, 0).unwrap();
    let second = Keypair::from_seed(w.miners[1].seed());
    let binding = twin.binding(&second.address());
    w.send(&second, TxKind::CommitWork(WorkCommitment { job: JobId(job), round: 0, binding })).unwrap();
    w.enter_reveals(job, 0);
    w.reveal(job, 0, 0).unwrap();
    w.send(&second, TxKind::RevealWork(twin)).unwrap();
    w.next_block();
    let round = w.round(job, 0);
    for miner in [w.miners[0].address(), second.address()] {
        assert_eq!(round.assignments.iter().filter(|a| a.miner == miner).count(), 2, "both are sampled");
    }
    // The slot-1 replay of a slot-0 trail fails: the checkers say so, and only that miner pays.
    w.verdicts(job, 0, |miner, _, _| Some(if *miner == second.address() { invalid() } else { VerdictOutcome::Valid }));
    w.past_verify_end(job, 0);
    assert!(slashed(&w, &w.miners[0].address()).is_empty());
    assert_eq!(slashed(&w, &second.address()), vec![(2_500, SlashReason::Poisoner)]);
    w.supply_holds();
}
