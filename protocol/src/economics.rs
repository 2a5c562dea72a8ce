//! The odds and the worth of faking work (`docs/economics.md`).
//!
//! A miner that fakes `k` of its trail's `n` segments is caught when one of the `s` sampled
//! segments is faked: it escapes with probability `C(n−k, s)/C(n, s)`. Against working honestly,
//! faking saves the compute of the faked fraction and, when caught, costs the round's reward and
//! the slashed share of its bond. Withholding a sampled faked segment instead of serving it is
//! slashed as much as being caught (`withhold_slash_ppm` = `poisoner_slash_ppm` by default), so
//! it is never the cheaper way out.

/// `C(n, k)` as a float (exact for the sizes trails have).
pub fn binomial(n: u64, k: u64) -> f64 {
    if k > n {
        return 0.0;
    }
    (0..k).fold(1.0, |acc, i| acc * (n - i) as f64 / (i + 1) as f64)
}

/// Probability that none of `sampled` distinct segments out of `segments` is one of the `faked`.
pub fn escape_probability(segments: u64, faked: u64, sampled: u64) -> f64 {
    let sampled = sampled.min(segments);
    if faked == 0 || sampled == 0 {
        return 1.0;
    }
    binomial(segments.saturating_sub(faked), sampled) / binomial(segments, sampled)
}

/// One miner's stakes in one round of a job, in tokens.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Stakes {
    /// The miner's share of the round's reward when accepted.
    pub reward: f64,
    /// What honest work on the round costs the miner (its compute).
    pub compute: f64,
    /// The miner's bond.
    pub bond: f64,
    /// Fraction of the bond slashed when a sampled segment is caught faked.
    pub caught_slash: f64,
    /// Fraction of the bond slashed when a sampled segment is withheld.
    pub withhold_slash: f64,
}

/// Expected profit of faking `faked` of `segments` segments, minus that of honest work, when
/// `sampled` are checked. When a faked segment is sampled the miner takes the cheaper of being
/// caught and withholding: both lose the reward, and the slash of the one it picks.
pub fn faking_advantage(stakes: &Stakes, segments: u64, faked: u64, sampled: u64) -> f64 {
    let escape = escape_probability(segments, faked, sampled);
    let saved = stakes.compute * faked as f64 / segments.max(1) as f64;
    let slash = stakes.caught_slash.min(stakes.withhold_slash) * stakes.bond;
    saved - (1.0 - escape) * (stakes.reward + slash)
}

/// Probability that a faked round is caught when colluding validators hold a share `f` of the
/// proposer draw and grind the beacon the only way left to them (ADR 0004): a colluding proposer
/// of the sampling block sees the beacon its reveal makes and, if that sample catches the faker,
/// does not propose, handing the block to the next proposer (colluding again with probability
/// `f`). An honest proposer's beacon is taken whatever it draws. With `p` the catch probability
/// of one draw: `P = Σₖ fᵏ(1−f)·pᵏ⁺¹ = p(1−f)/(1−f·p)`.
pub fn catch_probability_under_grinding(catch: f64, colluding_share: f64) -> f64 {
    catch * (1.0 - colluding_share) / (1.0 - colluding_share * catch)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_odds_follow_the_hypergeometric_formula() {
        assert_eq!(escape_probability(4, 1, 2), 0.5);
        assert!((escape_probability(4, 2, 2) - 1.0 / 6.0).abs() < 1e-12);
        assert_eq!(escape_probability(4, 4, 2), 0.0);
        assert_eq!(escape_probability(5, 1, 2), 0.6);
        assert_eq!(escape_probability(3, 0, 2), 1.0);
        assert_eq!(escape_probability(2, 1, 9), 0.0, "sampling more than there is checks everything");
    }

    #[test]
    fn withholding_is_never_cheaper_than_being_caught_at_equal_slashes() {
        let stakes =
            Stakes { reward: 3_000.0, compute: 3_000.0, bond: 1_000.0, caught_slash: 0.5, withhold_slash: 0.5 };
        let lenient = Stakes { withhold_slash: 0.1, ..stakes };
        for faked in 1..=4 {
            assert!(faking_advantage(&stakes, 4, faked, 2) < 0.0, "faking {faked} of 4 loses");
            assert!(
                faking_advantage(&lenient, 4, faked, 2) > faking_advantage(&stakes, 4, faked, 2),
                "a cheap withhold helps the cheater"
            );
        }
    }

    /// The closed form against a played grinding: 200,000 sampling blocks whose proposers and
    /// draws come from the beacon mix itself, a coalition skipping every block whose draw
    /// catches its faker.
    #[test]
    fn grinding_by_not_proposing_lowers_the_catch_rate_as_predicted() {
        use trellis_proto::{Address, Hash};

        use crate::beacon::mix;

        let unit = |hash: Hash| u64::from_le_bytes(hash.0[..8].try_into().unwrap()) as f64 / u64::MAX as f64;
        for (catch, share) in [(0.5, 0.0), (0.5, 0.25), (0.5, 0.33), (0.75, 0.33), (0.2, 0.1)] {
            let trials = 200_000u64;
            let mut caught = 0u64;
            for trial in 0..trials {
                let mut previous = Hash::digest(trellis_proto::HashDomain::BeaconMix, &trial.to_le_bytes());
                for round in 0u8.. {
                    let proposer = Address([round; 20]);
                    let beacon = mix(&previous, trial, &proposer, &Hash([round; 32]));
                    let colluding = unit(mix(&beacon, 0, &proposer, &Hash::ZERO)) < share;
                    let catches = unit(beacon) < catch;
                    if !(colluding && catches) {
                        caught += u64::from(catches);
                        break;
                    }
                    previous = beacon;
                }
            }
            let measured = caught as f64 / trials as f64;
            let predicted = catch_probability_under_grinding(catch, share);
            let sd = (predicted * (1.0 - predicted) / trials as f64).sqrt();
            assert!(
                (measured - predicted).abs() < 5.0 * sd,
                "p {catch}, f {share}: measured {measured:.4}, predicted {predicted:.4}"
            );
        }
        assert_eq!(catch_probability_under_grinding(0.5, 0.0), 0.5);
        assert!((catch_probability_under_grinding(0.5, 1.0 / 3.0) - 0.4).abs() < 1e-12);
    }
}
