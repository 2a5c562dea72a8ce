//! Transaction gossip on the peer network ([`super::swarm`]): transactions admitted over RPC or
//! made by the node's roles are published in batches ([`TxBatch`]) on the chain's gossipsub
//! topic; batches from peers are checked (decoded, every signature verified, admitted to the
//! mempool) before gossipsub forwards them. A batch with anything in it that is not a validly
//! signed transaction is rejected and costs its relay trust; a batch with nothing new for us is
//! neither forwarded nor blamed (replaying old transactions does not spread).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use trellis_mempool::MempoolError;
use trellis_proto::peerwire::{TxBatch, MAX_BATCH_TXS};
use trellis_proto::{Encode, SignedTx};

use super::swarm::{GossipHandle, GossipedBatch, Verdict};
use crate::metrics::Metrics;
use crate::shared::Shared;

/// Most transactions in one gossiped batch (also the limit of an RPC `mempool_gossip` call).
pub const MAX_BATCH: usize = MAX_BATCH_TXS;
/// A batch is published once its transactions reach this many bytes.
pub const MAX_BATCH_BYTES: usize = 512 * 1024;
const _: () = assert!(MAX_BATCH_BYTES + trellis_proto::tx::MAX_TX_BYTES + 4096 < super::swarm::MAX_GOSSIP_BYTES);
/// Transactions waiting to be published; more are dropped (peers still get them in blocks).
pub const QUEUE: usize = 20_000;
const LINGER: Duration = Duration::from_millis(20);

/// Publishes every transaction from `queue` until it closes, in batches of what arrived within
/// a few milliseconds, counting the bytes in `metrics`.
pub async fn publish(mut queue: mpsc::Receiver<SignedTx>, gossip: GossipHandle, metrics: Arc<Metrics>) {
    while let Some(first) = queue.recv().await {
        let mut bytes = first.to_bytes().len();
        let mut batch = vec![first];
        let deadline = tokio::time::Instant::now() + LINGER;
        while batch.len() < MAX_BATCH && bytes < MAX_BATCH_BYTES {
            match tokio::time::timeout_at(deadline, queue.recv()).await {
                Ok(Some(tx)) => {
                    bytes += tx.to_bytes().len();
                    batch.push(tx);
                }
                _ => break,
            }
        }
        let encoded = TxBatch::encode(&batch);
        metrics.gossip_bytes_sent.add(encoded.len() as u64);
        gossip.publish(encoded).await;
    }
}

/// Checks every gossiped batch and tells the network what to do with it.
pub async fn receive(mut gossiped: mpsc::Receiver<GossipedBatch>, gossip: GossipHandle, shared: Arc<Shared>) {
    while let Some(batch) = gossiped.recv().await {
        shared.metrics.gossip_bytes_received.add(batch.bytes.len() as u64);
        let verdict = match TxBatch::decode(&batch.bytes) {
            Err(error) => {
                tracing::debug!(target: "node::gossip", from = %batch.from, %error, "gossiped batch does not decode");
                Verdict::Invalid
            }
            Ok(TxBatch(txs)) => verdict(&shared.admit(txs)),
        };
        gossip.judge(&batch, verdict).await;
    }
}

/// What admitting a batch says about it: invalid if any signature was bad, worth forwarding if
/// any transaction was new.
pub fn verdict(admitted: &[Result<trellis_proto::Hash, MempoolError>]) -> Verdict {
    if admitted.iter().any(|r| matches!(r, Err(MempoolError::BadSignature(_) | MempoolError::TooLarge { .. }))) {
        Verdict::Invalid
    } else if admitted.iter().any(Result::is_ok) {
        Verdict::Forward
    } else {
        Verdict::Drop
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use trellis_proto::crypto::SignatureError;
    use trellis_proto::Hash;

    #[test]
    fn a_bad_signature_spoils_a_batch_and_only_news_is_forwarded() {
        let new = Ok(Hash([1; 32]));
        let known = Err(MempoolError::AlreadyKnown);
        let stale = Err(MempoolError::StaleNonce { next: 5, got: 1 });
        let forged = Err(MempoolError::BadSignature(SignatureError::BadSignature));
        assert_eq!(verdict(&[known.clone(), new.clone()]), Verdict::Forward);
        assert_eq!(verdict(&[known.clone(), stale.clone()]), Verdict::Drop, "a replay of old transactions");
        assert_eq!(verdict(&[]), Verdict::Drop);
        assert_eq!(verdict(&[new, forged]), Verdict::Invalid, "one forged transaction spoils the batch");
    }
}
