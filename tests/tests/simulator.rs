//! The seeded consensus + contracts simulator in CI (`docs/simulator.md`).
//!
//! - A bounded number of seeds of the standard scenario (4–7 validators, a Byzantine minority,
//!   partitions, crashes, loss, users running training jobs with cheating miners): safety must
//!   hold on every seed, and liveness, judged separately, in every calm phase. A failing seed is
//!   printed with the command that replays it.
//! - The same seed replays to the same trace.
//! - The checker is not vacuous: it catches conflicting decisions when half the stake
//!   equivocates, an honest double sign when the WAL does not survive crashes, and a decided
//!   block whose aggregate was forged.
//!
//! `TRELLIS_SIM_SEEDS=N` changes the number of standard seeds (default [`CI_SEEDS`]).

use std::time::Instant;

use trellis_consensus::round_cap;
use trellis_proto::{Hash, Transaction, TxKind};
use trellis_tests::sim::chain::InvalidBlock;
use trellis_tests::sim::invariants::{Checker, Violation};
use trellis_tests::sim::{self, RunStats, SimConfig, SimReport};

/// Standard seeds CI runs: about 13 s in the test build on a 2-core machine.
const CI_SEEDS: u64 = 100;

fn ci_seeds() -> u64 {
    std::env::var("TRELLIS_SIM_SEEDS").ok().and_then(|v| v.parse().ok()).unwrap_or(CI_SEEDS)
}

fn add(total: &mut RunStats, stats: &RunStats) {
    total.crashes += stats.crashes;
    total.partitions += stats.partitions;
    total.wal_replays += stats.wal_replays;
    total.sync_decisions += stats.sync_decisions;
    total.equivocations_sent += stats.equivocations_sent;
    total.invalid_proposals += stats.invalid_proposals;
    total.forged_aggregates += stats.forged_aggregates;
    total.grind_variants += stats.grind_variants;
    total.grind_moved_beacon += stats.grind_moved_beacon;
    total.beacon_reveals += stats.beacon_reveals;
    total.flood_sent += stats.flood_sent;
    total.refused_cannot_pay += stats.refused_cannot_pay;
    total.txs_failed += stats.txs_failed;
    total.duties_refused += stats.duties_refused;
    total.evidence_reported += stats.evidence_reported;
    total.proposal_reports += stats.proposal_reports;
    total.equivocators_slashed += stats.equivocators_slashed;
    total.poisoners_slashed += stats.poisoners_slashed;
    total.freeloaders_slashed += stats.freeloaders_slashed;
    total.miner_rewards += stats.miner_rewards;
    total.rounds_settled += stats.rounds_settled;
    total.jobs_ended += stats.jobs_ended;
    total.heights += stats.heights;
    total.txs_committed += stats.txs_committed;
}

#[test]
fn safety_holds_on_every_seed_and_liveness_in_every_calm_phase() {
    let config = SimConfig::standard();
    let seeds = ci_seeds();
    let started = Instant::now();
    let mut unsafe_runs: Vec<SimReport> = Vec::new();
    let mut stalled_runs: Vec<SimReport> = Vec::new();
    let mut total = RunStats::default();
    let mut byzantine_runs = 0;
    for seed in 0..seeds {
        let report = sim::run(seed, &config, false);
        add(&mut total, &report.stats);
        byzantine_runs += usize::from(!report.byzantine.is_empty());
        if !report.is_safe() {
            eprintln!("UNSAFE {report}\n  replay: {}", report.replay_command());
            unsafe_runs.push(report);
        } else if !report.is_live() {
            eprintln!("NOT LIVE {report}\n  replay: {}", report.replay_command());
            stalled_runs.push(report);
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    eprintln!("{seeds} seeds in {elapsed:.1} s ({:.2} seeds/s); totals: {total:?}", seeds as f64 / elapsed);

    assert!(
        total.flood_sent > 0 && total.refused_cannot_pay > 0,
        "the flood ran and empty accounts were refused: {total:?}"
    );
    assert!(total.txs_failed > 0, "funded flooders' failing transactions were included and paid their fees: {total:?}");
    assert_eq!(total.duties_refused, 0, "an honest validator's pool refused a duty during the flood: {total:?}");
    assert_eq!(
        total.grind_moved_beacon, 0,
        "a proposer moved the beacon by changing its block: the sample seed is grindable"
    );
    let unsafe_seeds: Vec<u64> = unsafe_runs.iter().map(|r| r.seed).collect();
    assert!(
        unsafe_runs.is_empty(),
        "safety broken on seeds {unsafe_seeds:?}; replay one with: {}",
        unsafe_runs[0].replay_command()
    );
    let stalled_seeds: Vec<u64> = stalled_runs.iter().map(|r| r.seed).collect();
    assert!(
        stalled_runs.is_empty(),
        "liveness lost in the calm phase on seeds {stalled_seeds:?}; replay one with: {}",
        stalled_runs[0].replay_command()
    );

    // The seeds exercised what the invariants are about (otherwise passing proves little).
    if seeds >= CI_SEEDS {
        assert!(byzantine_runs >= 5, "too few runs with Byzantine validators: {byzantine_runs}");
        let covered = [
            ("crashes", total.crashes),
            ("partitions", total.partitions),
            ("WAL replays after a crash", total.wal_replays),
            ("decisions by value sync", total.sync_decisions),
            ("Byzantine equivocations", total.equivocations_sent),
            ("invalid proposals", total.invalid_proposals),
            ("forged aggregates", total.forged_aggregates),
            ("proposer grinding attempts", total.grind_variants),
            ("blocks with a beacon reveal", total.beacon_reveals),
            ("equivocation reports", total.evidence_reported),
            ("equivocators slashed", total.equivocators_slashed),
            ("poisoners slashed", total.poisoners_slashed),
            ("freeloaders slashed", total.freeloaders_slashed),
            ("miner rewards", total.miner_rewards),
            ("rounds settled", total.rounds_settled),
            ("jobs ended", total.jobs_ended),
        ];
        for (what, count) in covered {
            assert!(count > 0, "no {what} in {seeds} seeds: the scenario no longer exercises them");
        }
    }
}

#[test]
fn a_seed_replays_to_the_same_trace() {
    let config = SimConfig::standard();
    let first = sim::run(3, &config, false);
    let again = sim::run(3, &config, false);
    assert_eq!(first.trace_hash, again.trace_hash, "seed 3 did not replay exactly");
    assert_eq!(first.stats, again.stats);
    assert_eq!(first.liveness, again.liveness);
    assert!(first.stats.events > 1_000, "a run processes thousands of events: {}", first.stats.events);
    let other = sim::run(4, &config, false);
    assert_ne!(first.trace_hash, other.trace_hash, "different seeds gave the same trace");
}

#[test]
fn the_checker_catches_conflicting_decisions_when_half_the_stake_equivocates() {
    // Two of four validators equivocating in concert split the honest ones whenever they get
    // to propose before the chain jails them; once jailed they propose no more, so on some
    // seeds the split never comes (5 of seeds 0–5 split at height 1 as of 2026-12-03).
    let config = SimConfig::split_brain();
    let split: Vec<u64> = (0..6)
        .filter(|&seed| {
            matches!(sim::run(seed, &config, false).violation, Some(Violation::ConflictingDecisions { .. }))
        })
        .collect();
    assert!(
        split.len() >= 4,
        "two of four validators equivocating in concert split the honest ones only on seeds {split:?}"
    );
}

#[test]
fn without_a_durable_wal_a_restarted_validator_double_signs_and_the_checker_sees_it() {
    let config = SimConfig::volatile_wal();
    let caught = (0..5)
        .filter(|&seed| matches!(sim::run(seed, &config, false).violation, Some(Violation::HonestDoubleSign { .. })))
        .count();
    assert!(caught >= 3, "only {caught} of 5 seeds with volatile WALs and frequent crashes showed a double sign");
}

#[test]
fn a_forged_aggregate_is_rejected_by_validators_and_flagged_if_decided() {
    // A real chain from the simulator, with at least one committed aggregate.
    let config = SimConfig::standard();
    let (seed, chain) = (0..20)
        .map(|seed| (seed, sim::run_keeping_chain(seed, &config, false).1))
        .find(|(_, chain)| {
            (1..=chain.height())
                .any(|h| chain.block(h).unwrap().txs.iter().any(|tx| matches!(tx.tx.kind, TxKind::CommitAggregate(_))))
        })
        .expect("one of 20 seeds commits an aggregate");
    let height = (1..=chain.height())
        .find(|&h| chain.block(h).unwrap().txs.iter().any(|tx| matches!(tx.tx.kind, TxKind::CommitAggregate(_))))
        .unwrap();
    let honest_block = chain.block(height).unwrap().clone();
    let aggregate_tx = honest_block.txs.iter().find(|tx| matches!(tx.tx.kind, TxKind::CommitAggregate(_))).unwrap();
    let TxKind::CommitAggregate(aggregate) = &aggregate_tx.tx.kind else { unreachable!() };

    // The same validator, the same nonce, a different model.
    let keys = sim::validator_keys(seed, &config);
    let signer =
        keys.iter().find(|k| k.public_key() == aggregate_tx.tx.sender).expect("aggregates come from validators");
    let mut forged_aggregate = aggregate.clone();
    forged_aggregate.model_hash = Hash([0xAB; 32]);
    let forged_tx = Transaction { kind: TxKind::CommitAggregate(forged_aggregate), ..aggregate_tx.tx.clone() }
        .sign(sim::SIM_CHAIN_ID, signer);

    let parent = chain.prefix(height - 1);
    assert!(parent.execute(&honest_block, None, true).is_ok(), "the committed block passes the honest check");
    let forged = parent.build_block(
        honest_block.header.proposer,
        honest_block.header.time_ms,
        honest_block.header.beacon_reveal,
        vec![forged_tx.clone()],
    );
    assert!(forged.block.txs.contains(&forged_tx), "the contracts alone accept the forged aggregate");
    assert!(parent.execute(&forged.block, None, false).is_ok(), "without recomputing, the forged block executes");
    assert!(
        matches!(parent.execute(&forged.block, None, true), Err(InvalidBlock::AggregateMismatch { .. })),
        "an honest validator recomputing the aggregate rejects it"
    );

    // Had an honest node decided it, the checker would say so.
    let mut checker = Checker::new(vec![true], &chain.prefix(0));
    for h in 1..height {
        let before = chain.prefix(h - 1);
        let executed = before.execute(chain.block(h).unwrap(), None, false).unwrap();
        checker.on_commit(0, &chain.prefix(h), &executed);
    }
    assert!(checker.violation().is_none(), "the honest prefix is clean: {:?}", checker.violation());
    let mut after = parent.clone();
    after.commit(forged.clone(), chain.certificate(height).unwrap().clone());
    checker.on_commit(0, &after, &forged);
    assert!(
        matches!(checker.violation(), Some(Violation::InvalidBlockDecided { .. })),
        "the checker flags a decided forged aggregate: {:?}",
        checker.violation()
    );
}

/// A proposer that floods the rounds it proposes (six blocks more than its real one, sent to half
/// the honest validators ahead of it) and withholds its precommits gets at most two blocks of a
/// round executed by any honest validator, and every height still commits: the cap costs rounds,
/// not the height (`trellis_consensus::round_cap`, docs/threat-model.md).
#[test]
fn a_flooding_proposer_gets_two_blocks_a_round_executed_and_every_height_still_commits() {
    let config = SimConfig::proposal_flood();
    let mut total = RunStats::default();
    for seed in 0..6 {
        let report = sim::run(seed, &config, false);
        assert!(report.is_safe(), "{report}");
        assert!(report.is_live(), "{report}\n  replay: {}", report.replay_command());
        let s = &report.stats;
        total.flood_blocks_sent += s.flood_blocks_sent;
        total.proposals_not_executed += s.proposals_not_executed;
        total.most_blocks_executed_in_a_round =
            total.most_blocks_executed_in_a_round.max(s.most_blocks_executed_in_a_round);
        total.decided_after_round_zero += s.decided_after_round_zero;
        total.proposal_reports += s.proposal_reports;
        total.jailed += s.jailed;
    }
    eprintln!("{total:?}");
    assert!(total.flood_blocks_sent > 0, "the flooder proposed no round: {total:?}");
    assert!(total.proposals_not_executed > 0, "no honest validator's cap was ever full: {total:?}");
    assert!(
        total.most_blocks_executed_in_a_round <= round_cap::MAX_BLOCKS_EXECUTED_PER_ROUND,
        "an honest validator executed {} blocks of one round",
        total.most_blocks_executed_in_a_round
    );
    assert!(total.decided_after_round_zero > 0, "no round was lost: the flood never reached the case the cap costs");
    assert!(
        total.proposal_reports > 0 && total.jailed > 0,
        "the flood was reported and its proposer jailed: {total:?}"
    );
}
