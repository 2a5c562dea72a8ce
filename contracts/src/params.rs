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

/// `amount × ppm / 1_000_000`, rounded down, without overflow.
pub fn fraction(amount: Amount, ppm: u64) -> Amount {
    Amount(((amount.0 as u128 * ppm as u128) / PPM as u128) as u64)
}
