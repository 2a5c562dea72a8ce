//! Property tests over random sequences of transactions and blocks: whatever happens, supply
//! is conserved, rejected transactions change nothing, every slash is burned, no balance
//! wraps, and a round is tallied and settled at most once.

mod common;

use std::collections::BTreeMap;

use common::*;
use proptest::prelude::*;
use trellis_contracts::state::{keys, read, Phase, Supply};
use trellis_contracts::{recompute_state_root, Event, KvStore, Params};
use trellis_proto::*;

#[derive(Debug, Clone)]
enum Action {
    Transfer {
        from: usize,
        to: usize,
        amount: u64,
    },
    Bond {
        who: usize,
        miner: bool,
        amount: u64,
    },
    Unbond {
        who: usize,
        miner: bool,
        amount: u64,
    },
    Submit {
        escrow: u64,
    },
    /// An adversarial submitter's spec (`common::wild_spec`): refused, or accepted and run.
    SubmitWild {
        values: [u32; 11],
        reward: u64,
        escrow: u64,
    },
    Join {
        miner: usize,
        job: u64,
    },
    /// Commits (a copy of `copy_of`'s binding, when set).
    Commit {
        miner: usize,
        job: u64,
        copy_of: Option<usize>,
    },
    /// Reveals its work (or another miner's, which cannot match its binding).
    Reveal {
        miner: usize,
        job: u64,
        other: Option<usize>,
    },
    /// Every assigned checker answers with outcome `pick % 6` (5 = stays silent), varied by miner;
    /// a job fault (which voids the job) only when `void` is set, else `Valid` instead.
    Verdicts {
        job: u64,
        pick: u8,
        void: bool,
    },
    Aggregate {
        job: u64,
    },
    Cancel {
        job: u64,
    },
    Blocks(u64),
    /// Blocks until the job's round in verification is tallied or escalated (its window's length
    /// depends on the sampling: `rounds::verify_window`). In the fixed script only.
    PastVerifyEnd {
        job: u64,
    },
}

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        (0..9usize, 0..9usize, 0..60_000u64).prop_map(|(from, to, amount)| Action::Transfer { from, to, amount }),
        (0..9usize, any::<bool>(), 0..30_000u64).prop_map(|(who, miner, amount)| Action::Bond { who, miner, amount }),
        (0..9usize, any::<bool>(), 0..30_000u64).prop_map(|(who, miner, amount)| Action::Unbond { who, miner, amount }),
        (0..40_000u64).prop_map(|escrow| Action::Submit { escrow }),
        (any::<[u32; 11]>(), prop_oneof![1..40_000u64, any::<u64>()], prop_oneof![0..40_000u64, any::<u64>()])
            .prop_map(|(values, reward, escrow)| Action::SubmitWild { values, reward, escrow }),
        (0..4usize, 0..3u64).prop_map(|(miner, job)| Action::Join { miner, job }),
        (0..4usize, 0..3u64, proptest::option::of(0..4usize)).prop_map(|(miner, job, copy_of)| Action::Commit {
            miner,
            job,
            copy_of
        }),
        (0..4usize, 0..3u64, proptest::option::weighted(0.2, 0..4usize))
            .prop_map(|(miner, job, other)| Action::Reveal { miner, job, other }),
        (0..3u64, any::<u8>(), any::<bool>()).prop_map(|(job, pick, void)| Action::Verdicts { job, pick, void }),
        (0..3u64).prop_map(|job| Action::Aggregate { job }),
        (0..3u64).prop_map(|job| Action::Cancel { job }),
        (1..8u64).prop_map(Action::Blocks),
    ]
}

/// Everyone who can send: validators 0..4, miners 4..8, the submitter 8.
fn actor(w: &World, index: usize) -> Keypair {
    let key = match index {
        0..=3 => &w.validators[index],
        4..=7 => &w.miners[index - 4],
        _ => &w.submitter,
    };
    Keypair::from_seed(key.seed())
}

fn run(actions: Vec<Action>) -> World {
    let mut w = World::new(4, 4, Params { block_reward: Amount(7), epoch_blocks: 6, ..params() });
    let genesis_total = trellis_contracts::total_holdings(&w.kv).unwrap();
    for action in actions {
        let seen = w.events.len();
        let tx = match action {
            Action::PastVerifyEnd { job } => {
                if let Some(j) = read::<trellis_contracts::state::Job>(&w.kv, &keys::job(JobId(job))).unwrap() {
                    if w.round(job, j.current_round).phase == Phase::Verifying {
                        w.past_verify_end(job, j.current_round);
                    }
                }
                None
            }
            Action::Blocks(n) => {
                for _ in 0..n {
                    w.next_block();
                }
                None
            }
            Action::Transfer { from, to, amount } => {
                let to = actor(&w, to).address();
                Some((from, TxKind::Transfer { to, amount: Amount(amount) }))
            }
            Action::Bond { who, miner, amount } => Some((
                who,
                TxKind::Bond { role: if miner { Role::Miner } else { Role::Validator }, amount: Amount(amount) },
            )),
            Action::Unbond { who, miner, amount } => Some((
                who,
                TxKind::Unbond { role: if miner { Role::Miner } else { Role::Validator }, amount: Amount(amount) },
            )),
            Action::Submit { escrow } => Some((8, TxKind::SubmitJob { spec: w.spec(), escrow: Amount(escrow) })),
            Action::SubmitWild { values, reward, escrow } => {
                Some((8, TxKind::SubmitJob { spec: wild_spec(&w.spec(), values, reward), escrow: Amount(escrow) }))
            }
            Action::Join { miner, job } => Some((4 + miner, TxKind::JoinJob { job: JobId(job) })),
            Action::Commit { miner, job, copy_of } => {
                let round = read::<trellis_contracts::state::Job>(&w.kv, &keys::job(JobId(job)))
                    .unwrap()
                    .map_or(0, |j| j.current_round);
                Some((4 + miner, TxKind::CommitWork(w.commitment(job, round, copy_of.unwrap_or(miner)))))
            }
            Action::Reveal { miner, job, other } => {
                let round = read::<trellis_contracts::state::Job>(&w.kv, &keys::job(JobId(job)))
                    .unwrap()
                    .map_or(0, |j| j.current_round);
                Some((4 + miner, TxKind::RevealWork(w.work(job, round, other.unwrap_or(miner)))))
            }
            Action::Verdicts { job, pick, void } => {
                if let Some(j) = read::<trellis_contracts::state::Job>(&w.kv, &keys::job(JobId(job))).unwrap() {
                    let round = w.round(job, j.current_round);
                    if round.phase == Phase::Verifying {
                        w.verdicts(job, j.current_round, |miner, segment, _| {
                            match (pick as u32 + miner.0[0] as u32 + segment) % 6 {
                                0 => Some(VerdictOutcome::Valid),
                                1 => Some(VerdictOutcome::Unavailable),
                                2 => Some(invalid()),
                                3 => Some(VerdictOutcome::Abstain),
                                4 if void => {
                                    Some(VerdictOutcome::JobFault { reason: JobFaultReason::DatasetUnavailable })
                                }
                                4 => Some(VerdictOutcome::Valid),
                                _ => None,
                            }
                        });
                    }
                }
                None
            }
            Action::Aggregate { job } => {
                if let Some(j) = read::<trellis_contracts::state::Job>(&w.kv, &keys::job(JobId(job))).unwrap() {
                    let _ = w.aggregate(job, j.current_round);
                }
                None
            }
            Action::Cancel { job } => Some((8, TxKind::CancelJob { job: JobId(job) })),
        };
        if let Some((sender, kind)) = tx {
            let key = actor(&w, sender);
            let before = recompute_state_root(&w.kv);
            if w.send(&key, kind).is_err() {
                assert_eq!(recompute_state_root(&w.kv), before, "a rejected transaction changed the state");
                assert_eq!(w.events.len(), seen);
            }
        }
        check(&w, genesis_total);
    }
    w
}

fn check(w: &World, genesis_total: Amount) {
    let supply: Supply = read(&w.kv, keys::SUPPLY).unwrap().unwrap();
    assert_eq!(supply.genesis, genesis_total);
    let holdings = trellis_contracts::total_holdings(&w.kv).unwrap();
    let expected = supply.expected_total().expect("supply fits a u64");
    assert_eq!(holdings, expected, "supply: genesis + minted - burned");
    // No balance wrapped below zero (it would exceed everything that exists).
    for (_, bytes) in w.kv.scan_prefix(keys::ACCOUNT_PREFIX) {
        let account: trellis_contracts::state::Account = decode(&bytes).unwrap();
        assert!(account.balance <= expected);
    }
    // Every slash and every fee is burned, and nothing else is.
    let (mut fees, mut slashes) = (0u64, 0u64);
    let mut tallied = BTreeMap::new();
    let mut settled = BTreeMap::new();
    for event in &w.events {
        match event {
            Event::FeeBurned { amount, .. } => fees += amount.0,
            Event::Slashed { amount, .. } => slashes += amount.0,
            Event::RoundTallied { job, round, .. } => *tallied.entry((*job, *round)).or_insert(0) += 1,
            Event::AggregateCommitted { job, round, .. } => *settled.entry((*job, *round)).or_insert(0) += 1,
            _ => {}
        }
    }
    assert_eq!(supply.burned.0, fees + slashes, "slashed stake is burned, never returned");
    assert!(tallied.values().all(|&n| n == 1), "a round tallied twice: {tallied:?}");
    assert!(settled.values().all(|&n| n == 1), "a round settled twice: {settled:?}");
    for key in settled.keys() {
        assert!(tallied.contains_key(key), "settled without a tally");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn invariants_hold_under_random_transactions(actions in proptest::collection::vec(action(), 1..60)) {
        run(actions);
    }
}

#[test]
fn a_long_busy_history_keeps_the_invariants() {
    // A fixed script that exercises whole rounds, for a deterministic baseline.
    let mut script = vec![Action::Submit { escrow: 30_000 }, Action::Submit { escrow: 20_000 }];
    for miner in 0..4 {
        script.push(Action::Join { miner, job: 0 });
        script.push(Action::Join { miner, job: 1 });
    }
    for round in 0..3u8 {
        for miner in 0..4 {
            script.push(Action::Commit { miner, job: 0, copy_of: (miner == 3).then_some(0) });
            script.push(Action::Commit { miner, job: 1, copy_of: None });
        }
        script.push(Action::Blocks(6));
        for miner in 0..4 {
            script.push(Action::Reveal { miner, job: 0, other: None });
            script.push(Action::Reveal { miner, job: 1, other: None });
        }
        script.push(Action::Blocks(2));
        script.push(Action::Verdicts { job: 0, pick: round, void: false });
        script.push(Action::Verdicts { job: 1, pick: 0, void: round == 2 });
        script.push(Action::PastVerifyEnd { job: 0 });
        script.push(Action::PastVerifyEnd { job: 1 });
        script.push(Action::Verdicts { job: 0, pick: round + 1, void: false });
        script.push(Action::PastVerifyEnd { job: 0 });
        script.push(Action::Aggregate { job: 0 });
        script.push(Action::Aggregate { job: 1 });
        script.push(Action::Unbond { who: 4, miner: true, amount: 1_000 });
        script.push(Action::Blocks(3));
    }
    let w = run(script);
    let count = |f: &dyn Fn(&Event) -> bool| w.events.iter().filter(|e| f(e)).count();
    assert!(count(&|e| matches!(e, Event::RoundTallied { .. })) >= 4, "rounds were tallied");
    assert!(count(&|e| matches!(e, Event::AggregateCommitted { .. })) >= 2, "rounds were settled");
    assert!(count(&|e| matches!(e, Event::Slashed { .. })) >= 1, "someone was slashed");
    assert!(count(&|e| matches!(e, Event::Rewarded { .. })) >= 1, "someone was paid");
    assert!(count(&|e| matches!(e, Event::WorkRevealed { .. })) >= 6, "work was revealed");
}
