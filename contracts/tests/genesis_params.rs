//! A genesis whose parameters or lists cannot run a chain is refused, with the field named,
//! before anything is written: a hand-edited genesis file is input like any other.

mod common;

use common::{key, CHAIN};
use trellis_contracts::state::{keys, read, Supply};
use trellis_contracts::{Chain, Genesis, GenesisError, KvStore as _, MemoryKv, Params};
use trellis_proto::Amount;

fn genesis(params: Params) -> Genesis {
    let (validator, miner) = (key(1, 0), key(2, 0));
    Genesis {
        chain_id: CHAIN.into(),
        accounts: vec![(validator.address(), Amount(100)), (miner.address(), Amount(100))],
        validators: vec![(validator.public_key(), Amount(20_000))],
        miners: vec![(miner.public_key(), Amount(5_000))],
        params,
    }
}

fn refused(genesis: &Genesis) -> GenesisError {
    let mut kv = MemoryKv::new();
    let error = Chain::init_genesis(&mut kv, genesis).expect_err("the genesis is refused");
    assert!(kv.get(keys::SUPPLY).is_none(), "nothing written for a refused genesis");
    error
}

/// A slash of more than the whole stake would credit the job's escrow with more than the miner
/// lost (supply from nothing); a verifier share of more than the whole would fail every round's
/// settlement; a validator set of zero stake has no voting power to pick a proposer with.
#[test]
fn a_genesis_whose_parameters_cannot_run_a_chain_is_refused_with_the_field_named() {
    let cases: Vec<(Params, &str)> = vec![
        (Params { poisoner_slash_ppm: 1_000_001, ..Params::default() }, "poisoner_slash_ppm"),
        (Params { equivocation_slash_ppm: u64::MAX, ..Params::default() }, "equivocation_slash_ppm"),
        (Params { verifier_share_ppm: 2_000_000, ..Params::default() }, "verifier_share_ppm"),
        (Params { min_validator_stake: Amount::ZERO, ..Params::default() }, "min_validator_stake"),
        (Params { checkers_per_segment: 0, ..Params::default() }, "checkers_per_segment"),
        (Params { reveal_blocks: 0, ..Params::default() }, "reveal_blocks"),
        (Params { max_validators: 0, ..Params::default() }, "max_validators"),
    ];
    for (params, field) in cases {
        match refused(&genesis(params)) {
            GenesisError::Params(reason) => assert!(reason.starts_with(field), "{field}: {reason}"),
            other => panic!("{field}: {other}"),
        }
    }
    // The whole is allowed: a job may take all of a cheater's stake.
    let whole = Params { poisoner_slash_ppm: 1_000_000, withhold_slash_ppm: 1_000_000, ..Params::default() };
    assert_eq!(whole.validate(), Ok(()));
    assert_eq!(Params::default().validate(), Ok(()), "the defaults run a chain");
}

/// A key bonded twice in one role would count its stake twice in the supply and keep one stake
/// record: supply the chain does not hold.
#[test]
fn a_genesis_bonding_one_key_twice_in_a_role_is_refused_and_once_in_each_role_is_not() {
    let mut twice = genesis(Params::default());
    let validator = twice.validators[0];
    twice.validators.push(validator);
    assert_eq!(refused(&twice), GenesisError::Duplicate(validator.0.address()));

    let mut both_roles = genesis(Params::default());
    both_roles.miners.push(validator);
    let mut kv = MemoryKv::new();
    Chain::init_genesis(&mut kv, &both_roles).expect("a validator may also be a miner");
    let supply: Supply = read(&kv, keys::SUPPLY).unwrap().unwrap();
    assert_eq!(supply.genesis, Amount(100 + 100 + 20_000 + 5_000 + 20_000));
}
