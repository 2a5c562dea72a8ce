//! Where the node keeps what it must not lose: the chain on RocksDB ([`store`]), the chain's
//! rules executed over it ([`ledger`]), and content-addressed blobs checked against their hash
//! before they are stored ([`blobs`]).

pub mod blobs;
pub mod ledger;
pub mod store;
