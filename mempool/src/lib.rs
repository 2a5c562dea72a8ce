//! `trellis-mempool`: signed transactions waiting for a block, sans-IO. The node keeps one
//! behind a lock; the seeded simulator runs the same code in every simulated validator.
//!
//! Admission checks the size, the signature (batched when many arrive together), the nonce
//! against the account's next nonce, that the sender can pay the fee at that nonce (its balance
//! covers the fees of its pending transactions before it and this one), and the limits; every
//! rejection has a reason the submitter sees. Part of the pool is reserved for the duties that
//! keep the chain and its jobs going (verdicts, aggregates, work commitments and reveals,
//! equivocation reports): other transactions cannot fill it. Block building takes duties first,
//! then transactions by fee, highest first, while keeping each account's nonces contiguous from
//! its next nonce. A transaction whose action fails is still included and pays its fee
//! (`trellis_contracts::Chain::include_tx`); one that cannot be included at all (its nonce or
//! fee) is evicted with its sender's later nonces ([`Mempool::evict_failed`]), so it never comes
//! back block after block.

use std::collections::{BTreeMap, BinaryHeap, HashMap};

use thiserror::Error;
use trellis_proto::crypto::{verify_batch, SignedItem};
use trellis_proto::tx::MAX_TX_BYTES;
use trellis_proto::{Address, Encode, Hash, SignatureError, SignedTx, SigningKind, TxKind};

/// Bounds on what the mempool holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MempoolLimits {
    pub max_transactions: usize,
    pub max_bytes: usize,
    /// Most pending transactions of one account (and how far ahead of its nonce they may be).
    pub max_per_account: usize,
    /// Places of `max_transactions` only duties may take ([`is_duty`]).
    pub reserved_for_duties: usize,
}

impl Default for MempoolLimits {
    fn default() -> Self {
        Self { max_transactions: 50_000, max_bytes: 64 * 1024 * 1024, max_per_account: 256, reserved_for_duties: 5_000 }
    }
}

/// What admission needs to know of a sender's committed account.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SenderAccount {
    pub next_nonce: u64,
    pub balance: u64,
}

/// Whether a transaction carries a duty of the chain's roles: what the reserved part of the pool
/// is for, so that a flood of other transactions cannot keep verdicts or aggregates out.
pub fn is_duty(kind: &TxKind) -> bool {
    matches!(
        kind,
        TxKind::Verdict(_)
            | TxKind::CommitAggregate(_)
            | TxKind::CommitWork(_)
            | TxKind::RevealWork(_)
            | TxKind::ReportEquivocation(_)
            | TxKind::ReportDoubleProposal(_)
            | TxKind::CommitBeacon { .. }
    )
}

/// An equivocation report is a duty (reserved places, first in blocks) only if its evidence
/// proves what it says: otherwise anyone could fill the duties' places with reports that fail.
fn check_evidence(chain_id: &str, kind: &TxKind) -> Result<(), MempoolError> {
    let proof = match kind {
        TxKind::ReportEquivocation(evidence) => evidence.verify(chain_id).map_err(|e| e.to_string()),
        TxKind::ReportDoubleProposal(evidence) => evidence.verify(chain_id).map_err(|e| e.to_string()),
        _ => Ok(()),
    };
    proof.map_err(MempoolError::InvalidEvidence)
}

/// Why a transaction was not admitted.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum MempoolError {
    #[error("transaction is {size} bytes; the limit is {max}")]
    TooLarge { size: usize, max: usize },
    #[error("equivocation evidence that proves nothing: {0}")]
    InvalidEvidence(String),
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
    #[error("the sender cannot pay: fees of {needed} up to this nonce, balance {balance}")]
    CannotPay { needed: u128, balance: u64 },
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

    /// Admits a batch of transactions, verifying their signatures together. `account` gives
    /// each sender's committed next nonce and balance. Returns one result per input.
    /// Transactions already in the pool or whose nonce is spent are answered before any
    /// signature is checked: a peer replaying old batches costs a hash and a state read each,
    /// not a signature verification.
    pub fn insert_batch(
        &mut self,
        chain_id: &str,
        txs: Vec<SignedTx>,
        account: impl Fn(&Address) -> SenderAccount,
    ) -> Vec<Result<Hash, MempoolError>> {
        let screened: Vec<Result<SenderAccount, MempoolError>> = txs
            .iter()
            .map(|tx| {
                if self.by_hash.contains_key(&tx.hash()) {
                    return Err(MempoolError::AlreadyKnown);
                }
                let sender = account(&tx.tx.sender_address());
                if tx.tx.nonce < sender.next_nonce {
                    return Err(MempoolError::StaleNonce { next: sender.next_nonce, got: tx.tx.nonce });
                }
                Ok(sender)
            })
            .collect();
        let encoded: Vec<Option<Vec<u8>>> =
            txs.iter().zip(&screened).map(|(t, s)| s.is_ok().then(|| t.tx.to_bytes())).collect();
        let items: Vec<SignedItem<'_>> = txs
            .iter()
            .zip(&encoded)
            .filter_map(|(t, payload)| {
                payload.as_ref().map(|payload| SignedItem {
                    key: &t.tx.sender,
                    kind: SigningKind::Transaction,
                    payload,
                    signature: &t.signature,
                })
            })
            .collect();
        let batch_ok = items.is_empty() || verify_batch(chain_id, &items).is_ok();
        txs.into_iter()
            .zip(screened)
            .map(|(tx, screened)| {
                let sender = screened?;
                if !batch_ok {
                    tx.verify(chain_id).map_err(MempoolError::BadSignature)?;
                }
                check_evidence(chain_id, &tx.tx.kind)?;
                self.insert_verified(tx, sender)
            })
            .collect()
    }

    /// Admits one transaction whose signature was already verified.
    pub fn insert_verified(&mut self, tx: SignedTx, account: SenderAccount) -> Result<Hash, MempoolError> {
        let size = tx.to_bytes().len();
        if size > MAX_TX_BYTES {
            return Err(MempoolError::TooLarge { size, max: MAX_TX_BYTES });
        }
        let hash = tx.hash();
        if self.by_hash.contains_key(&hash) {
            return Err(MempoolError::AlreadyKnown);
        }
        let (nonce, next_nonce) = (tx.tx.nonce, account.next_nonce);
        if nonce < next_nonce {
            return Err(MempoolError::StaleNonce { next: next_nonce, got: nonce });
        }
        let max = self.limits.max_per_account;
        if nonce >= next_nonce.saturating_add(max as u64) {
            return Err(MempoolError::NonceTooFarAhead { next: next_nonce, got: nonce, max });
        }
        let sender = tx.tx.sender_address();
        let fee = tx.tx.fee.0;
        // The fees this sender owes up to and including this nonce must fit its balance (a
        // transaction it cannot pay for would fail in every block it is tried in).
        let queue = self.by_sender.get(&sender);
        let earlier: u128 =
            queue.map_or(0, |q| q.range(next_nonce..nonce).map(|(_, e)| u128::from(e.tx.tx.fee.0)).sum());
        let needed = earlier + u128::from(fee);
        if needed > u128::from(account.balance) {
            return Err(MempoolError::CannotPay { needed, balance: account.balance });
        }
        let pending = queue.and_then(|m| m.get(&nonce)).map(|e| (e.tx.tx.fee.0, e.hash));
        if let Some((existing_fee, existing_hash)) = pending {
            if fee <= existing_fee {
                return Err(MempoolError::Underpriced { nonce, existing: existing_fee });
            }
            self.remove(&existing_hash);
        }
        // Only duties may use the reserved places; making room evicts the cheapest transaction
        // that may be evicted for this one (never a duty for something else).
        let duty = is_duty(&tx.tx.kind);
        let capacity = if duty {
            self.limits.max_transactions
        } else {
            self.limits.max_transactions.saturating_sub(self.limits.reserved_for_duties)
        };
        while self.by_hash.len() >= capacity || self.bytes + size > self.limits.max_bytes {
            let Some((lowest_hash, lowest_fee)) = self.lowest_fee(duty) else {
                return Err(MempoolError::Full { fee });
            };
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

    /// Removes transactions that failed when a block was built, each with every later nonce of
    /// its sender (they could only follow it), except those of `keep` (this node's own sender,
    /// whose roles resend what they need). Returns how many were removed.
    pub fn evict_failed(&mut self, failed: &[SignedTx], keep: Option<&Address>) -> usize {
        let mut removed = 0;
        for tx in failed {
            let sender = tx.tx.sender_address();
            if Some(&sender) == keep {
                continue;
            }
            let hashes: Vec<Hash> = self
                .by_sender
                .get(&sender)
                .map(|q| q.range(tx.tx.nonce..).map(|(_, e)| e.hash).collect())
                .unwrap_or_default();
            removed += hashes.len();
            hashes.iter().for_each(|h| self.remove(h));
        }
        removed
    }

    /// The pending transaction with the lowest fee that is last in its account's queue (so
    /// evicting it leaves no gap).
    /// `duties_too`: whether a duty may be the one evicted.
    fn lowest_fee(&self, duties_too: bool) -> Option<(Hash, u64)> {
        self.by_sender
            .values()
            .filter_map(|queue| queue.values().next_back())
            .filter(|e| duties_too || !is_duty(&e.tx.tx.kind))
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
        let hashes: Vec<Hash> =
            self.by_sender.get(sender).map(|q| q.values().map(|e| e.hash).collect()).unwrap_or_default();
        hashes.iter().for_each(|h| self.remove(h));
        hashes.len()
    }

    /// `sender`'s pending transactions in nonce order (what a node gossips again when its own
    /// were not included).
    pub fn pending_of(&self, sender: &Address) -> Vec<SignedTx> {
        self.by_sender.get(sender).map(|q| q.values().map(|e| e.tx.clone()).collect()).unwrap_or_default()
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

    /// Transactions for a block: duties first ([`is_duty`]: a flood paying higher fees cannot
    /// keep verdicts or aggregates out of blocks), then highest fee first, each account's nonces
    /// in order starting at its next nonce, at most `max_txs` and `max_bytes`.
    pub fn select(&self, max_txs: usize, max_bytes: usize, next_nonce: impl Fn(&Address) -> u64) -> Vec<SignedTx> {
        let mut cursors: HashMap<Address, u64> = HashMap::new();
        let mut heap = BinaryHeap::new();
        for (sender, queue) in &self.by_sender {
            let next = next_nonce(sender);
            if let Some(entry) = queue.get(&next) {
                heap.push((is_duty(&entry.tx.tx.kind), entry.tx.tx.fee.0, std::cmp::Reverse(*sender)));
                cursors.insert(*sender, next);
            }
        }
        let (mut chosen, mut bytes) = (Vec::new(), 0usize);
        while let Some((_, _, std::cmp::Reverse(sender))) = heap.pop() {
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
                heap.push((is_duty(&next.tx.tx.kind), next.tx.tx.fee.0, std::cmp::Reverse(sender)));
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

    /// A committed account with `next_nonce` and plenty to pay fees with.
    fn at(next_nonce: u64) -> SenderAccount {
        SenderAccount { next_nonce, balance: 1_000_000 }
    }

    fn tx(key: &Keypair, nonce: u64, fee: u64) -> SignedTx {
        let kind = TxKind::Transfer { to: trellis_proto::Address([9; 20]), amount: Amount(1) };
        Transaction { sender: key.public_key(), nonce, fee: Amount(fee), kind }.sign(CHAIN, key)
    }

    #[test]
    fn admits_verifies_and_explains_rejections() {
        let alice = Keypair::from_seed([1; 32]);
        let mut pool = Mempool::new(MempoolLimits {
            max_transactions: 10,
            max_bytes: 1 << 20,
            max_per_account: 3,
            reserved_for_duties: 0,
        });
        let mut forged = tx(&alice, 1, 5);
        forged.tx.fee = Amount(6);
        let results = pool.insert_batch(CHAIN, vec![tx(&alice, 0, 5), forged, tx(&alice, 0, 5)], |_| at(0));
        assert!(results[0].is_ok());
        assert!(matches!(results[1], Err(MempoolError::BadSignature(_))));
        assert_eq!(results[2], Err(MempoolError::AlreadyKnown));
        assert_eq!(pool.insert_verified(tx(&alice, 0, 9), at(1)), Err(MempoolError::StaleNonce { next: 1, got: 0 }));
        assert_eq!(
            pool.insert_verified(tx(&alice, 7, 9), at(0)),
            Err(MempoolError::NonceTooFarAhead { next: 0, got: 7, max: 3 })
        );
        assert_eq!(
            pool.insert_verified(tx(&alice, 0, 4), at(0)),
            Err(MempoolError::Underpriced { nonce: 0, existing: 5 })
        );
        // A higher fee replaces the pending transaction with the same nonce.
        pool.insert_verified(tx(&alice, 0, 8), at(0)).unwrap();
        assert_eq!(pool.len(), 1);
    }

    /// A replayed batch is answered from the pool and the committed nonces alone: a spent nonce
    /// is `StaleNonce` and a pooled transaction `AlreadyKnown` before any signature is checked
    /// (a forged one among them would otherwise be `BadSignature`), so a peer replaying old
    /// batches makes no node verify signatures.
    #[test]
    fn replays_are_answered_before_any_signature_is_checked() {
        let alice = Keypair::from_seed([1; 32]);
        let mut pool = Mempool::new(MempoolLimits {
            max_transactions: 10,
            max_bytes: 1 << 20,
            max_per_account: 8,
            reserved_for_duties: 0,
        });
        let pooled = tx(&alice, 5, 5);
        pool.insert_batch(CHAIN, vec![pooled.clone()], |_| at(5))[0].as_ref().unwrap();
        let mut spent_and_forged = tx(&alice, 2, 5);
        spent_and_forged.signature = pooled.signature;
        let results = pool.insert_batch(CHAIN, vec![spent_and_forged, pooled.clone()], |_| at(5));
        assert_eq!(results[0], Err(MempoolError::StaleNonce { next: 5, got: 2 }));
        assert_eq!(results[1], Err(MempoolError::AlreadyKnown));
        // A fresh transaction with a forged signature is still refused for it.
        let mut forged = tx(&alice, 6, 5);
        forged.tx.fee = Amount(7);
        assert!(matches!(pool.insert_batch(CHAIN, vec![forged], |_| at(5))[0], Err(MempoolError::BadSignature(_))));
    }

    #[test]
    fn a_full_pool_evicts_the_cheapest_or_refuses() {
        let keys: Vec<Keypair> = (1..=4u8).map(|i| Keypair::from_seed([i; 32])).collect();
        let mut pool = Mempool::new(MempoolLimits {
            max_transactions: 3,
            max_bytes: 1 << 20,
            max_per_account: 8,
            reserved_for_duties: 0,
        });
        for (i, key) in keys.iter().take(3).enumerate() {
            pool.insert_verified(tx(key, 0, 10 + i as u64), at(0)).unwrap();
        }
        assert_eq!(pool.insert_verified(tx(&keys[3], 0, 10), at(0)), Err(MempoolError::Full { fee: 10 }));
        pool.insert_verified(tx(&keys[3], 0, 50), at(0)).unwrap();
        assert_eq!(pool.len(), 3);
        assert!(!pool.contains(&tx(&keys[0], 0, 10).hash()), "the cheapest was evicted");
    }

    #[test]
    fn blocks_take_the_highest_fees_with_contiguous_nonces() {
        let alice = Keypair::from_seed([1; 32]);
        let bob = Keypair::from_seed([2; 32]);
        let mut pool = Mempool::new(MempoolLimits::default());
        for t in [tx(&alice, 0, 1), tx(&alice, 1, 100), tx(&alice, 3, 500), tx(&bob, 0, 50)] {
            pool.insert_verified(t, at(0)).unwrap();
        }
        let chosen = pool.select(10, usize::MAX, |_| 0);
        let order: Vec<(u8, u64)> =
            chosen.iter().map(|t| (if t.tx.sender == alice.public_key() { b'a' } else { b'b' }, t.tx.nonce)).collect();
        // Bob's 50 beats Alice's first (fee 1); Alice's nonce 3 waits for the missing 2.
        assert_eq!(order, vec![(b'b', 0), (b'a', 0), (b'a', 1)]);
        assert_eq!(pool.select(2, usize::MAX, |_| 0).len(), 2);
        pool.prune(|a| if *a == alice.address() { 2 } else { 0 });
        assert_eq!(pool.len(), 2);
    }
}

/// The mempool flood: many empty accounts push transactions at the highest fee (no balance to
/// pay it), a funded account pushes transactions that fail, all to crowd out honest transfers
/// and validators' verdicts. Admission refuses what cannot be paid, failing transactions leave
/// the pool when a block is built, and duties keep a reserved part of the pool.
#[cfg(test)]
mod flood {
    use super::*;
    use trellis_proto::{Amount, InvalidEvidence, InvalidReason, JobId, Keypair, Transaction, Verdict, VerdictOutcome};

    const CHAIN: &str = "flood-test";

    fn transfer(key: &Keypair, nonce: u64, fee: u64) -> SignedTx {
        let kind = TxKind::Transfer { to: Address([9; 20]), amount: Amount(1) };
        Transaction { sender: key.public_key(), nonce, fee: Amount(fee), kind }.sign(CHAIN, key)
    }

    fn verdict(key: &Keypair, nonce: u64) -> SignedTx {
        let outcome = VerdictOutcome::Invalid(InvalidEvidence::new(
            InvalidReason::CheckpointMismatch,
            Hash::ZERO,
            Hash::ZERO,
            0.0,
        ));
        let kind = TxKind::Verdict(Verdict { job: JobId(0), round: 0, miner: Address([1; 20]), segment: 0, outcome });
        Transaction { sender: key.public_key(), nonce, fee: Amount(1), kind }.sign(CHAIN, key)
    }

    #[test]
    fn equivocation_reports_are_admitted_only_with_evidence_that_proves_it() {
        use trellis_proto::{
            DoubleProposalEvidence, Height, PartHeader, ProposalClaim, SignedProposalClaim, SigningKind,
        };
        let offender = Keypair::from_seed([7; 32]);
        let part = |block: u8| {
            let header = PartHeader {
                height: Height(3),
                round: Some(0),
                valid_round: None,
                proposer: offender.address(),
                block: Hash([block; 32]),
            };
            let signature = offender.sign(CHAIN, SigningKind::ProposalPart, &header.to_bytes());
            SignedProposalClaim { claim: ProposalClaim::Part(header), signature }
        };
        let reporter = Keypair::from_seed([8; 32]);
        let report = |nonce: u64, second: u8| {
            let evidence =
                DoubleProposalEvidence { proposer: offender.public_key(), first: part(1), second: part(second) };
            let kind = TxKind::ReportDoubleProposal(Box::new(evidence));
            Transaction { sender: reporter.public_key(), nonce, fee: Amount(1), kind }.sign(CHAIN, &reporter)
        };
        let mut pool = Mempool::new(MempoolLimits::default());
        let funded = |_: &Address| SenderAccount { next_nonce: 0, balance: 10 };
        // One block signed twice proves nothing: refused before it can take a duty's place.
        let results = pool.insert_batch(CHAIN, vec![report(0, 1)], funded);
        assert!(matches!(results[0], Err(MempoolError::InvalidEvidence(_))), "{results:?}");
        // Evidence signed for another chain proves nothing here either.
        let other_chain = Transaction { ..report(0, 2).tx }.sign("another-chain", &reporter);
        let results = pool.insert_batch("another-chain", vec![other_chain], funded);
        assert!(matches!(results[0], Err(MempoolError::InvalidEvidence(_))), "{results:?}");
        assert!(pool.insert_batch(CHAIN, vec![report(0, 2)], funded)[0].is_ok());
        assert_eq!(pool.len(), 1);
    }

    #[test]
    fn empty_accounts_at_the_highest_fee_are_refused_and_honest_transfers_get_in() {
        let mut pool = Mempool::new(MempoolLimits::default());
        let empty = SenderAccount { next_nonce: 0, balance: 0 };
        let mut refused = 0;
        for account in 0..40u8 {
            let key = Keypair::from_seed([account + 100; 32]);
            let batch: Vec<SignedTx> = (0..256).map(|nonce| transfer(&key, nonce, u64::MAX)).collect();
            refused += pool
                .insert_batch(CHAIN, batch, |_| empty)
                .into_iter()
                .filter(|r| matches!(r, Err(MempoolError::CannotPay { .. })))
                .count();
        }
        assert_eq!(refused, 40 * 256);
        assert!(pool.is_empty());
        let honest = Keypair::from_seed([1; 32]);
        pool.insert_verified(transfer(&honest, 0, 2), SenderAccount { next_nonce: 0, balance: 10 }).unwrap();
        // Fees add up along a sender's queue: the sixth fee of 2 no longer fits a balance of 10.
        for nonce in 1..5 {
            pool.insert_verified(transfer(&honest, nonce, 2), SenderAccount { next_nonce: 0, balance: 10 }).unwrap();
        }
        assert!(matches!(
            pool.insert_verified(transfer(&honest, 5, 2), SenderAccount { next_nonce: 0, balance: 10 }),
            Err(MempoolError::CannotPay { needed: 12, balance: 10 })
        ));
    }

    #[test]
    fn a_transaction_no_block_may_hold_leaves_with_its_later_nonces() {
        let mut pool = Mempool::new(MempoolLimits::default());
        let (spammer, honest, own) =
            (Keypair::from_seed([7; 32]), Keypair::from_seed([8; 32]), Keypair::from_seed([9; 32]));
        let rich = SenderAccount { next_nonce: 0, balance: u64::MAX };
        for nonce in 0..10 {
            pool.insert_verified(transfer(&spammer, nonce, 1_000), rich).unwrap();
        }
        pool.insert_verified(transfer(&honest, 0, 1), rich).unwrap();
        pool.insert_verified(transfer(&own, 0, 1), rich).unwrap();
        // The builder found that no block may hold the spammer's nonce 3 (say, its fee outgrew its
        // balance) nor this node's own transaction.
        let failed = vec![transfer(&spammer, 3, 1_000), transfer(&own, 0, 1)];
        assert_eq!(pool.evict_failed(&failed, Some(&own.address())), 7, "nonces 3..=9 leave");
        assert_eq!(pool.len(), 3 + 1 + 1);
        assert_eq!(pool.next_free_nonce(&spammer.address(), 0), 3);
        assert_eq!(pool.next_free_nonce(&own.address(), 0), 1, "this node's own queue is left to its roles");
        let left: Vec<u64> = pool.pending_of(&spammer.address()).iter().map(|tx| tx.tx.nonce).collect();
        assert_eq!(left, vec![0, 1, 2], "what is left pending, in nonce order");
        assert_eq!(pool.pending_of(&own.address()), vec![transfer(&own, 0, 1)]);
        assert!(pool.pending_of(&Keypair::from_seed([10; 32]).address()).is_empty());
    }

    #[test]
    fn verdicts_get_in_when_other_transactions_fill_the_pool() {
        let limits =
            MempoolLimits { max_transactions: 20, max_bytes: 1 << 20, max_per_account: 256, reserved_for_duties: 5 };
        let mut pool = Mempool::new(limits);
        let rich = SenderAccount { next_nonce: 0, balance: u64::MAX };
        let flooder = Keypair::from_seed([3; 32]);
        let results =
            pool.insert_batch(CHAIN, (0..30).map(|n| transfer(&flooder, n, u64::MAX / 64)).collect(), |_| rich);
        assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 15, "other transactions stop at the reserve");
        assert!(matches!(results[15], Err(MempoolError::Full { .. })));
        let checker = Keypair::from_seed([4; 32]);
        for nonce in 0..4 {
            pool.insert_verified(verdict(&checker, nonce), rich).unwrap();
        }
        // A validator's beacon commitment is a duty too: a flood cannot keep it out.
        let validator = Keypair::from_seed([5; 32]);
        let kind = TxKind::CommitBeacon { tip: Hash([1; 32]), layers: 16 };
        let commitment =
            Transaction { sender: validator.public_key(), nonce: 0, fee: Amount(1), kind }.sign(CHAIN, &validator);
        pool.insert_verified(commitment, rich).unwrap();
        assert_eq!(pool.len(), 20);
        // And blocks take the duties first, whatever the flood pays.
        let block = pool.select(6, 1 << 20, |_| 0);
        assert!(block[..5].iter().all(|tx| is_duty(&tx.tx.kind)), "duties lead the block");
        assert!(!is_duty(&block[5].tx.kind));
    }
}
