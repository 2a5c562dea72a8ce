//! `trellis-contracts`: the chain's state machine for accounts, staking, jobs, rounds,
//! rewards and slashing.
//!
//! It must stay pure: no clock, socket, disk or randomness inside. Everything it needs
//! (block height, time, randomness from the block hash) arrives as input, so a seeded
//! simulator can drive it and replay any run.
//!
//! Status: the crate is reserved in the workspace; its state machine is the contracts issue.
