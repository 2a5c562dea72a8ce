//! Withholding: a miner that commits and then serves nothing (or withholds only the sampled
//! segment it faked), and one that commits and never reveals. Withholding a sampled segment must
//! cost what being caught faking it costs; not revealing costs the freeloader's 10%, since the
//! sample is drawn after the reveals and not revealing learns nothing.

mod common;

use common::*;
use trellis_contracts::state::Phase;
use trellis_contracts::SlashReason;
use trellis_proto::*;

#[test]
fn a_withholder_loses_what_a_caught_faker_loses() {
    let mut w = World::new(4, 3, params());
    let job = w.submit_and_join(30_000);
    for i in 0..3 {
        w.commit(job, 0, i).unwrap();
    }
    w.past_commit_deadline(job, 0);
    let withholder = w.miners[2].address();
    w.verdicts(job, 0, |miner, _, _| {
        Some(if *miner == withholder { VerdictOutcome::Unavailable } else { VerdictOutcome::Valid })
    });
    w.past_verify_end(job, 0);
    assert_eq!(
        slashed(&w, &withholder),
        vec![(2_500, SlashReason::Withheld)],
        "50% of 5,000, as for an invalid segment"
    );
    assert!(!w.round(job, 0).accepted.contains(&withholder));
    let ejected: Vec<_> = w.job(job).miners.iter().filter(|m| m.ejected).map(|m| m.address).collect();
    assert_eq!(ejected, vec![withholder], "withholding a sampled segment ejects, like faking it");
    w.supply_holds();
}

#[test]
fn a_commitment_never_revealed_is_a_freeloader() {
    let mut w = World::new(4, 3, params());
    let job = w.submit_and_join(30_000);
    for i in 0..3 {
        w.commit(job, 0, i).unwrap();
    }
    w.enter_reveals(job, 0);
    w.reveal(job, 0, 0).unwrap();
    w.reveal(job, 0, 1).unwrap();
    let deadline = w.round(job, 0).reveal_deadline;
    w.advance_to(deadline + 1);
    let round = w.round(job, 0);
    assert_eq!(round.phase, Phase::Verifying, "the reveal window closed");
    let silent = w.miners[2].address();
    assert!(round.assignments.iter().all(|a| a.miner != silent), "unrevealed work is never sampled");
    w.verdicts(job, 0, |_, _, _| Some(VerdictOutcome::Valid));
    w.past_verify_end(job, 0);
    assert_eq!(slashed(&w, &silent), vec![(500, SlashReason::Freeloader)], "10% of 5,000");
    assert!(!w.job(job).miners.iter().any(|m| m.ejected), "not ejected: it may have crashed");
    assert_eq!(w.round(job, 0).accepted.len(), 2);
    w.supply_holds();
}
