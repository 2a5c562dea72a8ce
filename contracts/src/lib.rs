//! `trellis-contracts`: the chain's state machine for accounts, fees, staking, jobs, rounds,
//! verdicts, rewards and slashing.
//!
//! It is pure: no clock, socket, disk or randomness inside. Block height, time, the parent
//! block's hash (the only randomness) and the proposer arrive in a [`BlockCtx`]; state lives
//! behind the [`KvStore`] trait (RocksDB in the node, [`MemoryKv`] in tests). Every entry point
//! is deterministic, so a seeded simulator can drive it and replay any run.
//!
//! Guarantees, each held by a property test (`tests/invariants.rs`):
//! - a rejected transaction changes nothing and returns a typed [`TxError`];
//! - balances, stakes and escrows always add up to genesis + minted − burned;
//! - a round settles at most once; slashed stake never returns to its owner; unbonding stake
//!   stays slashable until released.
//!
//! Economics (parameters, sampling odds, where slashed funds go): `docs/economics.md`.

pub mod block;
pub mod error;
pub mod exec;
pub mod kv;
pub mod params;
pub mod rounds;
pub mod state;

pub use block::{Built, InvalidBlock, Parent, MAX_CLOCK_DRIFT_MS};
pub use error::TxError;
pub use exec::{total_holdings, validate_job_spec, BlockCtx, Chain, Event, Genesis, GenesisError, SlashReason};
pub use kv::{recompute_state_root, state_root, KvStore, MemoryKv, StateDigest};
pub use params::Params;
