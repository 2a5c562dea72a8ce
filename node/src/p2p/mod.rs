//! The node's peer-to-peer traffic besides consensus: the blob exchange over libp2p
//! ([`exchange`]) and transaction gossip to the peers' RPC ([`gossip`]).

pub mod exchange;
pub mod gossip;
