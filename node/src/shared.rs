//! What the node's long-lived parts share: the ledger, the mempool, the event stream and the
//! optional validator desks. The consensus application, the RPC server, the roles and the beacon
//! all hold one [`Shared`]; none of them owns it, so none of them imports another for it.

use std::sync::{Arc, Mutex};

use tokio::sync::broadcast;
use trellis_contracts::Event;
use trellis_proto::Block;

use crate::mempool::Mempool;
use crate::storage::ledger::Ledger;

/// What the node tells RPC subscribers.
#[derive(Debug, Clone)]
pub enum NodeEvent {
    /// A block was committed, with its events.
    Committed { block: Arc<Block>, events: Arc<Vec<Event>> },
}

/// Things the app shares with the RPC server and metrics.
pub struct Shared {
    pub ledger: Ledger,
    pub mempool: Mutex<Mempool>,
    pub events: broadcast::Sender<NodeEvent>,
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Transactions admitted over RPC or made by the roles, to publish to peers
    /// ([`crate::p2p::gossip`]).
    pub gossip: tokio::sync::mpsc::Sender<trellis_proto::SignedTx>,
    /// The outer updates this validator computed; when set, a block carrying an aggregate this
    /// node did not compute identically is not voted for.
    pub aggregates: Option<Arc<crate::roles::aggregate::AggregateBook>>,
    /// This validator's beacon onions (what its proposals reveal); `None` on a full node.
    pub beacon: Option<Arc<crate::engine::beacon::BeaconKeeper>>,
    /// Re-derives `Invalid` evidence from miners' trails before this validator votes (a
    /// validator with a blob exchange); `None` otherwise.
    pub evidence: Option<Arc<crate::engine::evidence_desk::EvidenceDesk>>,
}

impl Shared {
    /// Admits transactions to the mempool (signatures checked in one batch), one result each.
    pub fn admit(
        &self,
        txs: Vec<trellis_proto::SignedTx>,
    ) -> Vec<Result<trellis_proto::Hash, crate::mempool::MempoolError>> {
        let mut mempool = self.mempool.lock().unwrap_or_else(|p| p.into_inner());
        let results = mempool.insert_batch(self.ledger.chain_id(), txs, |a| self.ledger.sender_account(a));
        self.metrics.mempool_txs.set(mempool.len() as u64);
        results
    }
}
