//! The partial faker: a miner that trains honestly but fakes one of its trail's n segments every
//! round (and so steers its final checkpoint, with a consistent Δ). The chain's own sampling
//! must catch it at the rate `1 − C(n−1, s)/C(n, s)` that docs/economics.md predicts, and at
//! that rate faking must lose money against honest work.

mod common;

use common::*;
use trellis_contracts::rounds::expected_segments;
use trellis_contracts::{Event, SlashReason};
use trellis_proto::hash::draw;
use trellis_proto::*;
use trellis_protocol::economics::{escape_probability, faking_advantage, Stakes};

const TRIALS: u64 = 400;

#[test]
fn a_miner_faking_one_segment_a_round_is_caught_as_often_as_predicted_and_loses() {
    let mut caught = 0u64;
    let mut segments = 0u64;
    let mut sampled = 0u64;
    for trial in 0..TRIALS {
        let mut w = World::new(4, 1, params());
        w.salt = trial;
        let job = w.submit_and_join(30_000);
        let spec = w.job(job).spec;
        segments = u64::from(expected_segments(&spec));
        sampled = u64::from(spec.verification.segments_per_miner);
        // The faked segment, chosen independently of the chain's randomness.
        let faked = (draw("faked segment", &trial.to_le_bytes(), &[]) % segments) as u32;
        w.commit(job, 0, 0).unwrap();
        w.past_commit_deadline(job, 0);
        // Honest checkers: a replay of the faked segment fails, every other segment passes.
        w.verdicts(job, 0, |_, segment, _| Some(if segment == faked { invalid() } else { VerdictOutcome::Valid }));
        w.past_verify_end(job, 0);
        let slashed = w.events.iter().any(|e| matches!(e, Event::Slashed { reason: SlashReason::Poisoner, .. }));
        let accepted = w.round(job, 0).accepted.contains(&w.miners[0].address());
        assert_ne!(slashed, accepted, "trial {trial}: caught xor paid");
        caught += u64::from(slashed);
        w.supply_holds();
    }
    let rate = caught as f64 / TRIALS as f64;
    let predicted = 1.0 - escape_probability(segments, 1, sampled);
    let std_err = (predicted * (1.0 - predicted) / TRIALS as f64).sqrt();
    eprintln!("partial faker: caught in {caught} of {TRIALS} rounds ({rate:.4}); the formula says {predicted:.4} ± {std_err:.4}");
    assert!(
        (rate - predicted).abs() <= 4.0 * std_err,
        "caught {rate:.3} of rounds, the formula says {predicted:.3} (±{std_err:.3})"
    );

    // At the measured rate, with the test job's stakes (one miner takes the round's 9,000 less
    // the checkers' 10%; a 5,000 bond, half slashed) and compute worth the reward, faking loses.
    let stakes = Stakes { reward: 8_100.0, compute: 8_100.0, bond: 5_000.0, caught_slash: 0.5, withhold_slash: 0.5 };
    let measured_advantage =
        stakes.compute / segments as f64 - rate * (stakes.reward + stakes.caught_slash * stakes.bond);
    assert!(measured_advantage < 0.0, "faking one segment gains {measured_advantage:.0} a round");
    assert!(faking_advantage(&stakes, segments, 1, sampled) < 0.0);
}
