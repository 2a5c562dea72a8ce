//! The node's peer-to-peer traffic besides consensus, on one libp2p swarm ([`swarm`]): the
//! blob exchange ([`exchange`], its chunks packed on the wire by [`packing`]), transaction gossip ([`gossip`]), discovery from bootnodes, and
//! the trust the node keeps in each peer ([`scores`]).

pub mod exchange;
mod frames;
pub mod gossip;
pub mod packing;
pub mod scores;
pub mod swarm;
