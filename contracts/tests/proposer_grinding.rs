//! A proposer grinding the sample seed (issue 18, item 3). The seed used to be the parent
//! block's hash, so the proposer of that block could try times and transaction sets until the
//! next block's sampling spared a colluding miner. The seed is now the beacon: each proposer
//! reveals the next layer of a hash onion it committed before (`trellis_protocol::beacon`),
//! which nothing in its block can change. What is left — not proposing — is bounded in
//! `docs/threat-model.md`.

mod common;

use std::collections::BTreeSet;

use common::*;
use trellis_contracts::kv::{apply_changes, Overlay};
use trellis_contracts::state::{keys, read, Assignment, BeaconOnion, Phase};
use trellis_contracts::{InvalidBlock, Parent, TxError};
use trellis_proto::*;
use trellis_protocol::beacon::{self, Onion};

fn onion_of(_world: &World, index: usize) -> Onion {
    Onion::new(Hash([index as u8 + 40; 32]), beacon::MIN_LAYERS).unwrap()
}

/// Every validator commits an onion at height 0 (active from height 2).
fn world_with_onions() -> World {
    let mut world = World::new(4, 3, params());
    for i in 0..world.validators.len() {
        let tip = onion_of(&world, i).tip();
        let validator = Keypair::from_seed(world.validators[i].seed());
        world.send(&validator, TxKind::CommitBeacon { tip, layers: beacon::MIN_LAYERS }).unwrap();
    }
    world
}

/// Closes the world's open block and returns it as the parent of blocks built from here on.
fn close_block(world: &mut World) -> Parent {
    let ctx = world.ctx();
    world.chain.end_block(&mut world.kv, &ctx).unwrap();
    Parent { height: world.height, hash: Hash([world.height.0 as u8; 32]), time_ms: world.height.0 * 1000 }
}

/// What validator `index` must reveal when proposing on `state`.
fn reveal_for(world: &World, state: &impl trellis_contracts::KvStore, index: usize) -> Hash {
    let address = world.validators[index].address();
    match world.chain.beacon_onion(state, &address).unwrap() {
        Some(held) => onion_of(world, index).reveal(held.remaining).unwrap(),
        None => Hash::ZERO,
    }
}

#[test]
fn a_proposer_grinding_its_blocks_time_and_transactions_gets_one_sampling_outcome() {
    let mut world = world_with_onions();
    world.advance_to(Height(2));
    let job = world.submit_and_join(100_000);
    for i in 0..3 {
        world.commit(job, 0, i).unwrap();
    }
    world.enter_reveals(job, 0);
    world.reveal(job, 0, 0).unwrap();
    world.reveal(job, 0, 1).unwrap();
    let parent = close_block(&mut world);
    let last_reveal = world.signed(&world.miners[2], TxKind::RevealWork(world.work(job, 0, 2)));
    let grinder = 1;
    let next_proposer = 2;

    // The grinder tries 24 versions of its block (time and an extra transfer), each holding the
    // last reveal, so the block after it samples.
    let mut outcomes: BTreeSet<Vec<(Address, u32, Vec<Address>)>> = BTreeSet::new();
    for attempt in 0..24u64 {
        let mut state = Overlay::new(&world.kv);
        let mut candidates = vec![last_reveal.clone()];
        if attempt % 2 == 1 {
            let to = Address([attempt as u8; 20]);
            candidates.push(world.signed(&world.submitter, TxKind::Transfer { to, amount: Amount(attempt + 1) }));
        }
        let reveal = reveal_for(&world, &state, grinder);
        let time_ms = parent.time_ms + 1 + attempt * 37;
        let proposer = world.validators[grinder].address();
        let ground = world.chain.build_block(&mut state, &parent, proposer, time_ms, reveal, candidates).unwrap();
        assert!(ground.left_out.is_empty(), "{:?}", ground.left_out);
        let after = Parent { height: parent.height + 1, hash: ground.block.hash(), time_ms };

        let reveal = reveal_for(&world, &state, next_proposer);
        let proposer = world.validators[next_proposer].address();
        world.chain.build_block(&mut state, &after, proposer, time_ms + 1000, reveal, Vec::new()).unwrap();
        let round: trellis_contracts::state::RoundState = read(&state, &keys::round(JobId(job), 0)).unwrap().unwrap();
        assert_eq!(round.phase, Phase::Verifying);
        outcomes
            .insert(round.assignments.iter().map(|a: &Assignment| (a.miner, a.segment, a.checkers.clone())).collect());
    }
    assert_eq!(outcomes.len(), 1, "24 versions of the grinder's block led to {} different samples", outcomes.len());
}

#[test]
fn a_reveal_must_be_the_next_onion_layer_and_is_used_once() {
    let mut world = world_with_onions();
    world.advance_to(Height(2));
    let parent = close_block(&mut world);
    let proposer = world.validators[0].address();
    let onion = onion_of(&world, 0);
    let build = |state: &mut Overlay<'_, _>, parent: &Parent, reveal: Hash| {
        world.chain.build_block(state, parent, proposer, parent.time_ms + 1, reveal, Vec::new())
    };

    for wrong in [Hash::ZERO, onion.tip(), onion.reveal(beacon::MIN_LAYERS - 1).unwrap(), Hash([1; 32])] {
        let refused = build(&mut Overlay::new(&world.kv), &parent, wrong);
        assert!(matches!(refused, Err(InvalidBlock::WrongBeaconReveal { .. })), "{wrong:?}: {refused:?}");
    }

    let mut state = Overlay::new(&world.kv);
    let first = build(&mut state, &parent, onion.reveal(beacon::MIN_LAYERS).unwrap()).unwrap();
    let held: BeaconOnion = world.chain.beacon_onion(&state, &proposer).unwrap().unwrap();
    assert_eq!((held.held, held.remaining), (onion.reveal(beacon::MIN_LAYERS).unwrap(), beacon::MIN_LAYERS - 1));
    let changes = state.into_changes();
    apply_changes(&mut world.kv, changes);

    // Checking a block runs the same rule: a replayed reveal is refused, the next layer passes.
    let after = Parent { height: parent.height + 1, hash: first.block.hash(), time_ms: parent.time_ms + 1 };
    let replayed = build(&mut Overlay::new(&world.kv), &after, onion.reveal(beacon::MIN_LAYERS).unwrap());
    assert!(matches!(replayed, Err(InvalidBlock::WrongBeaconReveal { .. })));
    let mut checker = Overlay::new(&world.kv);
    let next = build(&mut Overlay::new(&world.kv), &after, onion.reveal(beacon::MIN_LAYERS - 1).unwrap()).unwrap();
    world.chain.execute_block(&mut checker, &after, &next.block).unwrap();
    let mut forged = next.block.clone();
    forged.header.beacon_reveal = Hash([9; 32]);
    let refused = world.chain.execute_block(&mut Overlay::new(&world.kv), &after, &forged);
    assert!(matches!(refused, Err(InvalidBlock::WrongBeaconReveal { .. })), "{refused:?}");

    // A proposer without an onion mixes in nothing: any other reveal is refused.
    let plain = Address([77; 20]);
    let with_reveal =
        world.chain.build_block(&mut Overlay::new(&world.kv), &after, plain, after.time_ms, Hash([3; 32]), Vec::new());
    assert!(matches!(with_reveal, Err(InvalidBlock::WrongBeaconReveal { .. })));
    world
        .chain
        .build_block(&mut Overlay::new(&world.kv), &after, plain, after.time_ms, Hash::ZERO, Vec::new())
        .unwrap();
}

#[test]
fn onions_are_long_committed_by_bonded_validators_once_the_last_is_spent_and_count_two_blocks_later() {
    let mut world = World::new(2, 1, params());
    let validator = Keypair::from_seed(world.validators[0].seed());
    let miner = Keypair::from_seed(world.miners[0].seed());
    let layers = beacon::MIN_LAYERS;
    let onion = Onion::new(Hash([5; 32]), layers).unwrap();
    let tip = onion.tip();

    assert_eq!(
        world.send(&miner, TxKind::CommitBeacon { tip, layers }),
        Err(TxError::UnknownValidator(miner.address()))
    );
    assert_eq!(world.send(&validator, TxKind::CommitBeacon { tip, layers: 0 }), Err(TxError::OnionLayers { got: 0 }));
    // Short onions would let a validator swap onions often, each time choosing a seed after
    // seeing the beacon: the chain refuses them.
    let short = layers - 1;
    assert_eq!(
        world.send(&validator, TxKind::CommitBeacon { tip, layers: short }),
        Err(TxError::OnionLayers { got: short })
    );
    let too_many = beacon::MAX_LAYERS + 1;
    assert_eq!(
        world.send(&validator, TxKind::CommitBeacon { tip, layers: too_many }),
        Err(TxError::OnionLayers { got: too_many })
    );
    world.advance_to(Height(5));
    world.send(&validator, TxKind::CommitBeacon { tip, layers }).unwrap();
    let other = Onion::new(Hash([6; 32]), layers).unwrap().tip();
    assert_eq!(
        world.send(&validator, TxKind::CommitBeacon { tip: other, layers }),
        Err(TxError::OnionNotSpent { remaining: layers })
    );
    let held: BeaconOnion = read(&world.kv, &keys::onion(&validator.address())).unwrap().unwrap();
    assert_eq!((held.active_from, held.generation), (Height(7), 0));

    // At height 6 the fresh onion does not count yet: the proposer reveals nothing.
    let parent = close_block(&mut world);
    let proposer = validator.address();
    let mut state = Overlay::new(&world.kv);
    let six = world.chain.build_block(&mut state, &parent, proposer, parent.time_ms, Hash::ZERO, Vec::new()).unwrap();
    let changes = state.into_changes();
    apply_changes(&mut world.kv, changes);
    let mut parent = Parent { height: Height(6), hash: six.block.hash(), time_ms: parent.time_ms };
    // From height 7 on every block peels a layer; once all are, a new onion may be committed.
    for remaining in (1..=layers).rev() {
        let reveal = onion.reveal(remaining).unwrap();
        let mut state = Overlay::new(&world.kv);
        let built = world.chain.build_block(&mut state, &parent, proposer, parent.time_ms, reveal, Vec::new()).unwrap();
        let changes = state.into_changes();
        apply_changes(&mut world.kv, changes);
        parent = Parent { height: parent.height + 1, hash: built.block.hash(), time_ms: parent.time_ms };
    }
    let spent: BeaconOnion = read(&world.kv, &keys::onion(&proposer)).unwrap().unwrap();
    assert_eq!(spent.remaining, 0);
    world.height = parent.height;
    world.next_block();
    world.send(&validator, TxKind::CommitBeacon { tip: other, layers }).unwrap();
    let renewed: BeaconOnion = read(&world.kv, &keys::onion(&proposer)).unwrap().unwrap();
    assert_eq!((renewed.generation, renewed.remaining, renewed.held), (1, layers, other));
}
