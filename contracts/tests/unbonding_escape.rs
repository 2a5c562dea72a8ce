//! Escaping a slash by unbonding: a miner commits, unbonds everything at once, and waits for the
//! unbonding delay to pass before its round is judged. On the old rules unbonding took a fixed
//! 100 blocks while a job's windows (plus escalation) could be longer, so the stake was back in
//! the miner's balance when the slash came and the slash found nothing. Stake that backs work of
//! an unsettled round now stays slashable until the round settles; the same holds for a
//! checker's stake while it owes verdicts.

mod common;

use common::*;
use trellis_contracts::{Params, SlashReason};
use trellis_proto::*;

/// A chain whose unbonding delay (3 blocks) is far shorter than the job's windows.
fn short_unbonding() -> Params {
    Params { unbonding_blocks: 3, ..params() }
}

#[test]
fn a_miner_cannot_unbond_out_of_a_round_it_committed_to() {
    let mut w = World::new(4, 1, short_unbonding());
    let job = w.submit_and_join(30_000);
    let miner = key_of_miner(&w, 0);
    w.commit(job, 0, 0).unwrap();
    w.send(&miner, TxKind::Unbond { role: Role::Miner, amount: Amount(5_000) }).unwrap();
    let release = w.stake(Role::Miner, &miner).unbonding[0].release_height;
    w.past_commit_deadline(job, 0);
    // Long past the unbonding delay, the round is still being verified: nothing is released.
    w.advance_to(release + 4);
    assert_eq!(w.stake(Role::Miner, &miner).unbonding.iter().map(|u| u.amount.0).sum::<u64>(), 5_000);
    let balance = w.balance(&miner);
    w.verdicts(job, 0, |_, _, _| Some(invalid()));
    w.past_verify_end(job, 0);
    assert_eq!(
        slashed(&w, &miner.address()),
        vec![(2_500, SlashReason::Poisoner)],
        "the slash found the unbonding stake"
    );
    // Once the round is settled, what is left is released.
    w.next_block();
    assert_eq!(w.balance(&miner), balance + 2_500);
    assert!(w.stake(Role::Miner, &miner).unbonding.is_empty());
    w.supply_holds();
}

#[test]
fn a_checker_cannot_unbond_out_of_the_verdicts_it_owes() {
    let mut w = World::new(4, 1, short_unbonding());
    let job = w.submit_and_join(30_000);
    w.commit(job, 0, 0).unwrap();
    w.past_commit_deadline(job, 0);
    let silent = w.round(job, 0).assignments[0].checkers[0];
    let checker = w.key_of(&silent).unwrap();
    w.send(&checker, TxKind::Unbond { role: Role::Validator, amount: Amount(20_000) }).unwrap();
    let release = w.stake(Role::Validator, &checker).unbonding[0].release_height;
    w.advance_to(release + 1);
    assert_eq!(w.stake(Role::Validator, &checker).unbonding.len(), 1, "still owes verdicts: not released");
    w.verdicts(job, 0, |_, _, c| (*c != silent).then_some(VerdictOutcome::Valid));
    w.past_verify_end(job, 0);
    assert!(!slashed(&w, &silent).is_empty(), "the missed verdicts were slashed from the unbonding stake");
    w.supply_holds();
}

/// Unbonding without unsettled work is released after the usual delay.
#[test]
fn unbonding_with_nothing_unsettled_is_released_on_time() {
    let mut w = World::new(4, 1, short_unbonding());
    let miner = key_of_miner(&w, 0);
    let balance = w.balance(&miner);
    w.send(&miner, TxKind::Unbond { role: Role::Miner, amount: Amount(5_000) }).unwrap();
    let release = w.stake(Role::Miner, &miner).unbonding[0].release_height;
    w.advance_to(release);
    w.next_block();
    assert_eq!(w.balance(&miner), balance - 1 + 5_000);
    w.supply_holds();
}

fn key_of_miner(w: &World, i: usize) -> Keypair {
    Keypair::from_seed(w.miners[i].seed())
}
