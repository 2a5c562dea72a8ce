//! Transaction gossip: transactions admitted over RPC are forwarded, in batches, to the peers
//! listed in `p2p.gossip_rpc` through their `mempool_gossip` method, so whichever validator
//! proposes next can include them. A peer admits gossiped transactions with the same checks as
//! its own submissions and does not forward them again (one hop: every validator is a peer).

use std::sync::Arc;
use std::time::Duration;

use jsonrpsee::http_client::{HttpClient, HttpClientBuilder};
use tokio::sync::mpsc;
use trellis_proto::{Encode, SignedTx};

use crate::metrics::Metrics;
use crate::rpc::api::TrellisRpcClient as _;

/// Most transactions in one gossip call.
pub const MAX_BATCH: usize = 2000;
/// Transactions waiting to be forwarded; more are dropped (peers still get them in blocks).
pub const QUEUE: usize = 20_000;
const LINGER: Duration = Duration::from_millis(20);

/// Forwards every transaction from `queue` to each peer until the queue closes, counting what
/// it sends in `metrics`.
pub async fn run(mut queue: mpsc::Receiver<SignedTx>, peers: Vec<String>, metrics: Arc<Metrics>) {
    let clients: Vec<(String, HttpClient)> = peers
        .into_iter()
        .filter_map(|url| match HttpClientBuilder::default().request_timeout(Duration::from_secs(5)).build(&url) {
            Ok(client) => Some((url, client)),
            Err(error) => {
                tracing::warn!(target: "node::gossip", %url, %error, "bad gossip peer URL; skipped");
                None
            }
        })
        .collect();
    while let Some(first) = queue.recv().await {
        let mut batch = vec![first];
        let deadline = tokio::time::Instant::now() + LINGER;
        while batch.len() < MAX_BATCH {
            match tokio::time::timeout_at(deadline, queue.recv()).await {
                Ok(Some(tx)) => batch.push(tx),
                _ => break,
            }
        }
        let encoded: Vec<String> = batch.iter().map(|tx| hex::encode(tx.to_bytes())).collect();
        let bytes: usize = encoded.iter().map(String::len).sum();
        for (url, client) in &clients {
            metrics.gossip_bytes_sent.add(bytes as u64);
            if let Err(error) = client.gossip(encoded.clone()).await {
                tracing::debug!(target: "node::gossip", %url, %error, "gossip to peer failed");
            }
        }
    }
}
