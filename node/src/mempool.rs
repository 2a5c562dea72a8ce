//! The mempool: signed transactions waiting for a block.
//!
//! Admission checks the size, the signature (batched when many arrive together), the nonce
//! against the account's next nonce, and the limits; every rejection has a reason the submitter
//! sees. Block building takes transactions by fee, highest first, while keeping each account's
//! nonces contiguous from its next nonce.

use std::collections::{BTreeMap, BinaryHeap, HashMap};

use thiserror::Error;
use trellis_proto::crypto::{verify_batch, SignedItem};
use trellis_proto::tx::MAX_TX_BYTES;
use trellis_proto::{Address, Encode, Hash, SignatureError, SignedTx, SigningKind};

/// Bounds on what the mempool holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MempoolLimits {
    pub max_transactions: usize,
    pub max_bytes: usize,
    /// Most pending transactions of one account (and how far ahead of its nonce they may be).
    pub max_per_account: usize,
}

impl Default for MempoolLimits {
    fn default() -> Self {
        Self { max_transactions: 50_000, max_bytes: 64 * 1024 * 1024, max_per_account: 256 }
    }
}

/// Why a transaction was not admitted.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum MempoolError {
    #[error("transaction is {size} bytes; the limit is {max}")]
    TooLarge { size: usize, max: usize },
    #[error("bad signature: {0}")]
    BadSignature(SignatureError),
    #[error("nonce {got} was already used; the account's next nonce is {next}")]
    StaleNonce { next: u64, got: u64 },
    #[error("nonce {got} is too far ahead of the account's next nonce {next} (at most {max} pending)")]
    NonceTooFarAhead { next: u64, got: u64, max: usize },
    #[error("transaction is already in the mempool")]
    AlreadyKnown,
    #[error("a transaction with nonce {nonce} and fee {existing} is pending; replacing it needs a higher fee")]
    Underpriced { nonce: u64, existing: u64 },
    #[error("the mempool is full and this fee ({fee}) does not beat the lowest pending fee")]
    Full { fee: u64 },
}

#[derive(Debug, Clone)]
struct Entry {
    tx: SignedTx,
    hash: Hash,
    size: usize,
}

/// Pending transactions, by sender and nonce.
#[derive(Debug, Default)]
pub struct Mempool {
    limits: MempoolLimits,
    by_sender: BTreeMap<Address, BTreeMap<u64, Entry>>,
    by_hash: HashMap<Hash, (Address, u64)>,
    bytes: usize,
}

impl Mempool {
    pub fn new(limits: MempoolLimits) -> Self {
        Self { limits, ..Self::default() }
    }

    pub fn len(&self) -> usize {
        self.by_hash.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_hash.is_empty()
    }

    pub fn contains(&self, hash: &Hash) -> bool {
        self.by_hash.contains_key(hash)
    }

    /// Admits a batch of transactions, verifying their signatures together. `next_nonce` gives
    /// each sender's next expected nonce from the committed state. Returns one result per input.
    pub fn insert_batch(
        &mut self,
        chain_id: &str,
        txs: Vec<SignedTx>,
        next_nonce: impl Fn(&Address) -> u64,
    ) -> Vec<Result<Hash, MempoolError>> {
        let encoded: Vec<Vec<u8>> = txs.iter().map(|t| t.tx.to_bytes()).collect();
        let items: Vec<SignedItem<'_>> = txs
            .iter()
            .zip(&encoded)
            .map(|(t, payload)| SignedItem { key: &t.tx.sender, kind: SigningKind::Transaction, payload, signature: &t.signature })
            .collect();
        let batch_ok = verify_batch(chain_id, &items).is_ok();
        txs.into_iter()
            .map(|tx| {
                if !batch_ok {
                    tx.verify(chain_id).map_err(MempoolError::BadSignature)?;
                }
                let next = next_nonce(&tx.tx.sender_address());
                self.insert_verified(tx, next)
            })
            .collect()
    }

    /// Admits one transaction whose signature was already verified.
    pub fn insert_verified(&mut self, tx: SignedTx, next_nonce: u64) -> Result<Hash, MempoolError> {
        let size = tx.to_bytes().len();
        if size > MAX_TX_BYTES {
            return Err(MempoolError::TooLarge { size, max: MAX_TX_BYTES });
        }
        let hash = tx.hash();
        if self.by_hash.contains_key(&hash) {
            return Err(MempoolError::AlreadyKnown);
        }
        let nonce = tx.tx.nonce;
        if nonce < next_nonce {
            return Err(MempoolError::StaleNonce { next: next_nonce, got: nonce });
        }
        let max = self.limits.max_per_account;
        if nonce >= next_nonce + max as u64 {
            return Err(MempoolError::NonceTooFarAhead { next: next_nonce, got: nonce, max });
        }
        let sender = tx.tx.sender_address();
        let fee = tx.tx.fee.0;
        let pending = self.by_sender.get(&sender).and_then(|m| m.get(&nonce)).map(|e| (e.tx.tx.fee.0, e.hash));
        if let Some((existing_fee, existing_hash)) = pending {
            if fee <= existing_fee {
                return Err(MempoolError::Underpriced { nonce, existing: existing_fee });
            }
            self.remove(&existing_hash);
        }
        while self.by_hash.len() >= self.limits.max_transactions || self.bytes + size > self.limits.max_bytes {
            let Some((lowest_hash, lowest_fee)) = self.lowest_fee() else { break };
            if lowest_fee >= fee {
                return Err(MempoolError::Full { fee });
            }
            self.remove(&lowest_hash);
        }
        self.bytes += size;
        self.by_hash.insert(hash, (sender, nonce));
        self.by_sender.entry(sender).or_default().insert(nonce, Entry { tx, hash, size });
        Ok(hash)
    }

    /// The pending transaction with the lowest fee that is last in its account's queue (so
    /// evicting it leaves no gap).
    fn lowest_fee(&self) -> Option<(Hash, u64)> {
        self.by_sender
            .values()
            .filter_map(|queue| queue.values().next_back())
            .map(|e| (e.hash, e.tx.tx.fee.0))
            .min_by_key(|(hash, fee)| (*fee, *hash))
    }

    fn remove(&mut self, hash: &Hash) {
        if let Some((sender, nonce)) = self.by_hash.remove(hash) {
            if let Some(queue) = self.by_sender.get_mut(&sender) {
                if let Some(entry) = queue.remove(&nonce) {
                    self.bytes -= entry.size;
                }
                if queue.is_empty() {
                    self.by_sender.remove(&sender);
                }
            }
        }
    }

    /// Drops every pending transaction of `sender` (a node unsticking its own queue after one
    /// of its transactions could not be included). Returns how many were dropped.
    pub fn remove_sender(&mut self, sender: &Address) -> usize {
        let hashes: Vec<Hash> = self.by_sender.get(sender).map(|q| q.values().map(|e| e.hash).collect()).unwrap_or_default();
        hashes.iter().for_each(|h| self.remove(h));
        hashes.len()
    }

    /// The first nonce of `sender` not taken by a pending transaction, counting up from its
    /// committed next nonce (what a locally signed transaction should use).
    pub fn next_free_nonce(&self, sender: &Address, committed_next: u64) -> u64 {
        let mut next = committed_next;
        if let Some(queue) = self.by_sender.get(sender) {
            while queue.contains_key(&next) {
                next += 1;
            }
        }
        next
    }

    /// Transactions for a block: highest fee first, each account's nonces in order starting at
    /// its next nonce, at most `max_txs` and `max_bytes`.
    pub fn select(&self, max_txs: usize, max_bytes: usize, next_nonce: impl Fn(&Address) -> u64) -> Vec<SignedTx> {
        let mut cursors: HashMap<Address, u64> = HashMap::new();
        let mut heap = BinaryHeap::new();
        for (sender, queue) in &self.by_sender {
            let next = next_nonce(sender);
            if let Some(entry) = queue.get(&next) {
                heap.push((entry.tx.tx.fee.0, std::cmp::Reverse(*sender)));
                cursors.insert(*sender, next);
            }
        }
        let (mut chosen, mut bytes) = (Vec::new(), 0usize);
        while let Some((_, std::cmp::Reverse(sender))) = heap.pop() {
            if chosen.len() >= max_txs {
                break;
            }
            let nonce = cursors[&sender];
            let entry = &self.by_sender[&sender][&nonce];
            if bytes + entry.size > max_bytes {
                continue;
            }
            bytes += entry.size;
            chosen.push(entry.tx.clone());
            if let Some(next) = self.by_sender[&sender].get(&(nonce + 1)) {
                cursors.insert(sender, nonce + 1);
                heap.push((next.tx.tx.fee.0, std::cmp::Reverse(sender)));
            }
        }
        chosen
    }

    /// Drops everything a committed block made stale: transactions whose nonce is below the
    /// sender's new next nonce.
    pub fn prune(&mut self, next_nonce: impl Fn(&Address) -> u64) {
        let stale: Vec<Hash> = self
            .by_sender
            .iter()
            .flat_map(|(sender, queue)| {
                let next = next_nonce(sender);
                queue.range(..next).map(|(_, e)| e.hash).collect::<Vec<_>>()
            })
            .collect();
        for hash in stale {
            self.remove(&hash);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use trellis_proto::{Amount, Keypair, Transaction, TxKind};

    const CHAIN: &str = "mempool-test";

    fn tx(key: &Keypair, nonce: u64, fee: u64) -> SignedTx {
        let kind = TxKind::Transfer { to: trellis_proto::Address([9; 20]), amount: Amount(1) };
        Transaction { sender: key.public_key(), nonce, fee: Amount(fee), kind }.sign(CHAIN, key)
    }

    #[test]
    fn admits_verifies_and_explains_rejections() {
        let alice = Keypair::from_seed([1; 32]);
        let mut pool = Mempool::new(MempoolLimits { max_transactions: 10, max_bytes: 1 << 20, max_per_account: 3 });
        let mut forged = tx(&alice, 1, 5);
        forged.tx.fee = Amount(6);
        let results = pool.insert_batch(CHAIN, vec![tx(&alice, 0, 5), forged, tx(&alice, 0, 5)], |_| 0);
        assert!(results[0].is_ok());
        assert!(matches!(results[1], Err(MempoolError::BadSignature(_))));
        assert_eq!(results[2], Err(MempoolError::AlreadyKnown));
        assert_eq!(pool.insert_verified(tx(&alice, 0, 9), 1), Err(MempoolError::StaleNonce { next: 1, got: 0 }));
        assert_eq!(pool.insert_verified(tx(&alice, 7, 9), 0), Err(MempoolError::NonceTooFarAhead { next: 0, got: 7, max: 3 }));
        assert_eq!(pool.insert_verified(tx(&alice, 0, 4), 0), Err(MempoolError::Underpriced { nonce: 0, existing: 5 }));
        // A higher fee replaces the pending transaction with the same nonce.
        pool.insert_verified(tx(&alice, 0, 8), 0).unwrap();
        assert_eq!(pool.len(), 1);
    }

    #[test]
    fn a_full_pool_evicts_the_cheapest_or_refuses() {
        let keys: Vec<Keypair> = (1..=4u8).map(|i| Keypair::from_seed([i; 32])).collect();
        let mut pool = Mempool::new(MempoolLimits { max_transactions: 3, max_bytes: 1 << 20, max_per_account: 8 });
        for (i, key) in keys.iter().take(3).enumerate() {
            pool.insert_verified(tx(key, 0, 10 + i as u64), 0).unwrap();
        }
        assert_eq!(pool.insert_verified(tx(&keys[3], 0, 10), 0), Err(MempoolError::Full { fee: 10 }));
        pool.insert_verified(tx(&keys[3], 0, 50), 0).unwrap();
        assert_eq!(pool.len(), 3);
        assert!(!pool.contains(&tx(&keys[0], 0, 10).hash()), "the cheapest was evicted");
    }

    #[test]
    fn blocks_take_the_highest_fees_with_contiguous_nonces() {
        let alice = Keypair::from_seed([1; 32]);
        let bob = Keypair::from_seed([2; 32]);
        let mut pool = Mempool::new(MempoolLimits::default());
        for t in [tx(&alice, 0, 1), tx(&alice, 1, 100), tx(&alice, 3, 500), tx(&bob, 0, 50)] {
            pool.insert_verified(t, 0).unwrap();
        }
        let chosen = pool.select(10, usize::MAX, |_| 0);
        let order: Vec<(u8, u64)> = chosen.iter().map(|t| (if t.tx.sender == alice.public_key() { b'a' } else { b'b' }, t.tx.nonce)).collect();
        // Bob's 50 beats Alice's first (fee 1); Alice's nonce 3 waits for the missing 2.
        assert_eq!(order, vec![(b'b', 0), (b'a', 0), (b'a', 1)]);
        assert_eq!(pool.select(2, usize::MAX, |_| 0).len(), 2);
        pool.prune(|a| if *a == alice.address() { 2 } else { 0 });
        assert_eq!(pool.len(), 2);
    }
}
