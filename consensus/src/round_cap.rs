//! How many proposed blocks of one (height, round) a validator executes.
//!
//! An honest proposer signs one block a round. One that signs many would have every validator
//! execute and store each, while its double proposal is slashed once a round however many blocks
//! it signed. So a validator executes the first [`MAX_BLOCKS_EXECUTED_PER_ROUND`] distinct blocks
//! of a round and drops the rest ([`executes_proposal`]).
//!
//! What that costs: a validator whose cap a flooder filled with blocks the others never saw cannot
//! vote for the block they locked on in that round, so with the flooder's own precommit withheld
//! the round may end undecided. The locked block comes back in a later round as a re-proposal by
//! an honest validator locked on it; that round's blocks are the honest proposer's, not the
//! flooder's, so its cap is free and the height commits. After round 0 the proposer walks the
//! address order, so a flooder proposes at most one round in every `n` of a height: a flood costs
//! rounds, never the height (`tests/tests/simulator.rs`, the `proposal-flood` scenario).

use std::collections::BTreeSet;

use crate::types::BlockId;

/// Distinct blocks of one (height, round) a validator executes: the one an honest proposer
/// signs, and a second so that a double proposal is still executed whole (either block may be
/// the one the others lock on).
pub const MAX_BLOCKS_EXECUTED_PER_ROUND: usize = 2;

/// Whether a validator holding the blocks `held` for a (height, round) executes `block` proposed
/// for it: one it holds already, or one that finds the round's cap not yet full.
pub fn executes_proposal<'a>(held: impl IntoIterator<Item = &'a BlockId>, block: &BlockId) -> bool {
    let mut distinct = BTreeSet::new();
    for id in held {
        if id == block {
            return true;
        }
        distinct.insert(*id);
    }
    distinct.len() < MAX_BLOCKS_EXECUTED_PER_ROUND
}

#[cfg(test)]
mod tests {
    use trellis_proto::Hash;

    use super::*;

    fn id(n: u8) -> BlockId {
        BlockId(Hash([n; 32]))
    }

    /// A proposer that signs block after block in one round gets two executed and no more; a
    /// block already held is always taken (repeated parts, the engine asking again).
    #[test]
    fn a_round_executes_two_distinct_blocks_and_no_more() {
        let mut held = Vec::new();
        for n in 0..MAX_BLOCKS_EXECUTED_PER_ROUND as u8 {
            assert!(executes_proposal(&held, &id(n)), "block {n} of the round");
            held.push(id(n));
        }
        assert!(!executes_proposal(&held, &id(200)), "a third distinct block is dropped");
        assert!(executes_proposal(&held, &id(0)) && executes_proposal(&held, &id(1)), "held blocks still are");
        held.push(id(0));
        assert!(!executes_proposal(&held, &id(201)), "a block held twice counts once, and the cap stays full");
        assert!(executes_proposal(&[], &id(200)), "another round starts empty");
    }
}
