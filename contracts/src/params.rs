//! Chain parameters. Every default is explained in `docs/economics.md`.

use serde::{Deserialize, Serialize};
use trellis_proto::Amount;

/// Parts per million, for fractions that must be exact integers.
pub const PPM: u64 = 1_000_000;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Params {
    /// Smallest validator bond that counts towards the validator set.
    pub min_validator_stake: Amount,
    /// Chain-wide floor for a miner's bond; a job may ask for more.
    pub min_miner_stake: Amount,
    /// Blocks an unbonding amount stays slashable before it returns to the balance.
    pub unbonding_blocks: u64,
    /// The validator set is recomputed at heights that are multiples of this.
    pub epoch_blocks: u64,
    /// Most validators in the active set (highest stake first).
    pub max_validators: u32,
    /// Minted to the proposer of every block.
    pub block_reward: Amount,
    /// Smallest fee a transaction may pay. Fees are burned.
    pub min_fee: Amount,
    /// Share of a miner's stake slashed for an `Invalid` segment (poisoner), in ppm.
    pub poisoner_slash_ppm: u64,
    /// Share slashed for a commitment never revealed (freeloader), in ppm.
    pub freeloader_slash_ppm: u64,
    /// Share slashed for a sampled segment no holder served (`Unavailable`), in ppm; the miner is
    /// also ejected. As much as being caught faking, so withholding is never the cheaper way out.
    pub withhold_slash_ppm: u64,
    /// Share of a validator's stake slashed for each verdict it owed and did not send, in ppm.
    pub missed_verdict_slash_ppm: u64,
    /// Share of a validator's stake slashed for each verdict the escalated committee overturned
    /// (the segment's finding went the other way), in ppm.
    pub overturned_verdict_slash_ppm: u64,
    /// Share of a validator's stake slashed for equivocation (then jailed), in ppm.
    pub equivocation_slash_ppm: u64,
    /// Share of each round's payout that goes to validators whose verdicts matched the outcome, in ppm.
    pub verifier_share_ppm: u64,
    /// Checkers per sampled segment.
    pub checkers_per_segment: u32,
    /// Checkers per sampled segment after a disagreement (the escalated committee).
    pub escalation_committee: u32,
    /// Blocks after tallying within which the aggregate must be committed, or the round lapses.
    pub aggregate_blocks: u64,
    /// Blocks after a round's commit phase within which committed work must be revealed.
    pub reveal_blocks: u64,
    /// Most miners in one job.
    pub max_miners_per_job: u32,
}

impl Default for Params {
    fn default() -> Self {
        Self {
            min_validator_stake: Amount(10_000),
            min_miner_stake: Amount(1_000),
            unbonding_blocks: 100,
            epoch_blocks: 20,
            max_validators: 100,
            block_reward: Amount(10),
            min_fee: Amount(1),
            poisoner_slash_ppm: 500_000,
            freeloader_slash_ppm: 100_000,
            withhold_slash_ppm: 500_000,
            missed_verdict_slash_ppm: 10_000,
            overturned_verdict_slash_ppm: 100_000,
            equivocation_slash_ppm: 200_000,
            verifier_share_ppm: 100_000,
            checkers_per_segment: 2,
            escalation_committee: 4,
            aggregate_blocks: 20,
            reveal_blocks: 10,
            max_miners_per_job: 64,
        }
    }
}

impl Params {
    /// Whether these parameters can run a chain: every share at most a whole (a slash of more
    /// than the stake would credit more than it took, minting from nothing; a verifier share of
    /// more than the payout would make every round fail to settle), a validator needs some stake
    /// (a set of zero-stake validators has no voting power, and consensus none to pick a proposer
    /// from), and every count and window at least one. Says which field is wrong and why.
    pub fn validate(&self) -> Result<(), String> {
        let shares = [
            ("poisoner_slash_ppm", self.poisoner_slash_ppm),
            ("freeloader_slash_ppm", self.freeloader_slash_ppm),
            ("withhold_slash_ppm", self.withhold_slash_ppm),
            ("missed_verdict_slash_ppm", self.missed_verdict_slash_ppm),
            ("overturned_verdict_slash_ppm", self.overturned_verdict_slash_ppm),
            ("equivocation_slash_ppm", self.equivocation_slash_ppm),
            ("verifier_share_ppm", self.verifier_share_ppm),
        ];
        if let Some((name, value)) = shares.iter().find(|(_, v)| *v > PPM) {
            return Err(format!("{name} is {value}: a share is at most {PPM} (the whole)"));
        }
        if self.min_validator_stake == Amount::ZERO {
            return Err("min_validator_stake is 0: a validator must have some stake to vote with".into());
        }
        let at_least_one = [
            ("max_validators", u64::from(self.max_validators)),
            ("checkers_per_segment", u64::from(self.checkers_per_segment)),
            ("escalation_committee", u64::from(self.escalation_committee)),
            ("max_miners_per_job", u64::from(self.max_miners_per_job)),
            ("reveal_blocks", self.reveal_blocks),
            ("aggregate_blocks", self.aggregate_blocks),
        ];
        if let Some((name, _)) = at_least_one.iter().find(|(_, v)| *v == 0) {
            return Err(format!("{name} is 0: it must be at least 1"));
        }
        Ok(())
    }
}

/// `amount × ppm / 1_000_000`, rounded down, without overflow.
pub fn fraction(amount: Amount, ppm: u64) -> Amount {
    Amount(((amount.0 as u128 * ppm as u128) / PPM as u128) as u64)
}
