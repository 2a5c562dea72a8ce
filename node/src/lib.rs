//! `trellis-node`: the `trellis` binary's library — the commands users run and the node's
//! services, grouped by concern:
//!
//! - [`commands`]: the command line, one module per command;
//! - [`engine`]: the Malachite application, the beacon, the evidence desk;
//! - [`storage`]: RocksDB chain storage, the ledger, the blob store;
//! - [`p2p`]: the blob exchange and transaction gossip;
//! - [`rpc`]: the JSON-RPC server and the CLI's client;
//! - [`roles`]: miner and validator duties, and the job data they fetch;
//! - [`devnet`]: the local devnet launcher and its demo job;
//! - [`shared`] (the state services share), [`supervisor`] (watched tasks), [`home`] (a node's
//!   home directory and configuration), [`metrics`], [`memory`] (freed memory handed back).
//!
//! Protocol rules live in the sans-IO crates (`contracts`, `protocol`, `mempool`) and in
//! `trainer::job`/`zk::job`; the node moves bytes, keeps state and runs the trainer.

pub mod commands;
pub mod devnet;
pub mod engine;
pub mod home;
pub mod memory;
pub mod metrics;
pub mod p2p;
pub mod roles;
pub mod rpc;
pub mod shared;
pub mod storage;
pub mod supervisor;

/// The transaction pool lives in its own sans-IO crate, shared with the simulator.
pub use trellis_mempool as mempool;
