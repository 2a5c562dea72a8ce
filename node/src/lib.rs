//! `trellis-node`: the `trellis` binary's library. Command-line parsing and the commands
//! users run; the node itself (consensus, storage, RPC, roles) grows here.

pub mod attack;
pub mod cli;
pub mod home;
pub mod mempool;
pub mod store;
pub mod plot;
pub mod train;
pub mod verify;
