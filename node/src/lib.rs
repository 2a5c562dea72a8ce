//! `trellis-node`: the `trellis` binary's library — command-line parsing, the commands users
//! run, and the node: storage ([`store`], [`ledger`]), mempool, the state its services share
//! ([`shared`]), the consensus application ([`consensus_app`]), JSON-RPC ([`rpc`]), metrics, and
//! the local devnet launcher.

pub mod attack;
pub mod beacon;
pub mod blobs;
pub mod cli;
pub mod client;
pub mod consensus_app;
pub mod devnet;
pub mod devnet_job;
pub mod evidence_desk;
pub mod exchange;
pub mod gossip;
pub mod home;
pub mod jobdata;
pub mod jobs;
pub mod ledger;
pub mod metrics;
pub mod plot;
pub mod roles;
pub mod rpc;
pub mod run;
pub mod shared;
pub mod store;
pub mod supervisor;
pub mod train;
pub mod verify;
pub mod zk_cli;
pub mod zkjob;

/// The transaction pool lives in its own sans-IO crate, shared with the simulator.
pub use trellis_mempool as mempool;
